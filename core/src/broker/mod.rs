//! The broker's state: storage, configuration, the metadata log, the topics
//! and their logs, group commit, and the group coordinator, with the
//! operations handlers ask of them. Handlers take `&mut Broker`; they never
//! see connections, reply slots or encoded frames, which the node owns.
//!
//! Each part keeps its own invariants (`Topics`, `Durability`, the group
//! `Coordinator`); `invariants` here checks them and how they fit together.

pub mod cluster;
pub mod creations;
pub mod groups;
pub mod internal;
pub mod markers;
pub mod replicas;
pub mod txns;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use kafka_protocol::ResponseError;

use crate::config::{BrokerConfig, Mutation};
use crate::durability::{Completed, Durability, SyncRequest};
use crate::group::Coordinator;
use crate::metadata::{Change, MetadataLog, TopicRecord, METADATA_DIR};
use crate::replication::Role;
use crate::rng::{base64_url, Rng};
use crate::storage::{Storage, SyncTarget};
use crate::topics::{remove_dir_all, topic_name_problem, Partition, Topics};
use crate::types::{Now, TopicPartition};

pub use groups::{GroupAnswer, GroupWrite, Recorded, OFFSETS_TOPIC};
pub use markers::MarkerWrite;

/// Marks a clean stop: the next start may skip the recovery scan.
pub const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
/// Producer ids reserved at a time, as Kafka's controller hands them out.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

pub struct Broker<S: Storage> {
    pub storage: S,
    pub config: BrokerConfig,
    /// Where clients reach this broker.
    pub advertised: (String, u16),
    pub rng: Rng,
    pub cluster_id: String,
    pub metadata: MetadataLog,
    pub topics: Topics,
    pub durability: Durability,
    /// The coordinator of every group (this is the only broker).
    pub groups: Coordinator,
    /// The transactional ids this broker coordinates.
    pub transactions: txns::Transactions,
    /// Requests waiting for a remote transaction coordinator's verdict.
    pub verifications: verify::Verifications,
    /// Next producer id to hand out, and the sequence that made its block durable.
    next_producer_id: i64,
    producer_block_seq: u64,
    /// Partitions whose readable end, start or existence changed since the
    /// last `take_moved`: fetches parked on them may now be answered.
    moved: BTreeSet<TopicPartition>,
    /// Coordinator answers ready for their waiting requests.
    group_answers: Vec<GroupAnswer>,
    /// The last stop was clean (its marker was found at start).
    clean_start: bool,
    /// What the controller quorum committed, when this node is part of one.
    pub cluster: Option<ClusterView>,
    /// ISR changes this broker's led partitions ask of the controller.
    isr_changes: Vec<replicas::IsrChange>,
    /// The leader epoch each partition was last led in by this process.
    led_epochs: BTreeMap<TopicPartition, i32>,
    /// The high watermark last known of each partition whatever its role:
    /// read from `replication-offset-checkpoint` at start, raised as roles
    /// change and at each checkpoint, dropped when its log is truncated.
    /// A partition that neither leads nor follows starts from it.
    pub(crate) known_high_watermarks: BTreeMap<TopicPartition, i64>,
    /// What the checkpoint file holds now, so an unchanged one is not
    /// written again.
    checkpointed_high_watermarks: BTreeMap<TopicPartition, i64>,
    /// What operators read: traffic per topic, errors answered, ISR changes.
    pub metrics: crate::metrics::Counters,
    /// Topics and partitions being created over the node's steps.
    pub creations: creations::Creations,
}

/// A node's view of the cluster from the committed metadata log: the
/// image every node applies, and the active controller.
#[derive(Debug, Default)]
pub struct ClusterView {
    pub image: crate::image::MetadataImage,
    /// The quorum's leader, when known: the active controller.
    pub controller_id: Option<i32>,
    /// This node is the active controller: it may propose changes.
    pub is_controller: bool,
    /// Changes for the node to propose, by ticket, in order.
    pub outbox: Vec<(u64, Vec<crate::metadata_records::MetadataRecord>)>,
    pub tickets: BTreeMap<u64, cluster::Ticket>,
    pub next_ticket: u64,
    /// Topics proposed and not yet applied: their names are taken.
    pub pending_topics: BTreeSet<String>,
    /// Partition replicas each proposed change places, by ticket and
    /// broker, until it settles (committed, they are in the image; failed,
    /// nowhere): counted against `max.broker.partitions` meanwhile.
    pub pending_replicas: BTreeMap<u64, BTreeMap<i32, i64>>,
    /// Topics to auto-create that this node (not the controller) asks the
    /// controller for.
    pub forward: BTreeSet<String>,
    /// The producer ids the controller gave this broker: next, end.
    pub producer_block: Option<(i64, i64)>,
    /// This broker needs a block of producer ids from the controller.
    pub wants_producer_block: bool,
    /// Registered and unfenced: caught up with the metadata log, so the
    /// roles it derives from it may act (a restarted broker replays old
    /// leaderships before it reaches the current ones).
    pub serving: bool,
}

/// What a change waits for before it is answered: a sync of this node's
/// disk (a node alone), or a commit of the controller quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Written {
    Durable(u64),
    Committed(u64),
}

/// A broker as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The cluster id of a quorum: a 128-bit FNV-1a of its voter list, as
/// Kafka writes ids (URL-safe base64 of 16 bytes).
pub fn cluster_id_of_voters(voters: &[crate::config::Voter]) -> String {
    let text: Vec<String> = voters
        .iter()
        .map(|v| format!("{}@{}:{}", v.id, v.host, v.port))
        .collect();
    let mut bytes = [0u8; 16];
    for (half, offset) in [
        (0usize, 0xcbf2_9ce4_8422_2325u64),
        (8, 0x6c62_272e_07bb_0142),
    ] {
        let mut hash = offset;
        for byte in text.join(",").bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        bytes[half..half + 8].copy_from_slice(&hash.to_be_bytes());
    }
    base64_url(&bytes)
}

impl<S: Storage> Broker<S> {
    /// Opens the log directory: replays the metadata log, recovers every
    /// partition log and the groups. Returns the broker and whether the
    /// last stop was clean.
    pub fn open(
        mut storage: S,
        config: BrokerConfig,
        advertised: (String, u16),
        seed: u64,
        now: Now,
    ) -> io::Result<Broker<S>> {
        let clean = storage.exists(CLEAN_SHUTDOWN_FILE);
        let mut dirty_other = BTreeSet::new();
        if clean {
            storage.remove_file(CLEAN_SHUTDOWN_FILE)?;
            dirty_other.insert(SyncTarget::Dir(String::new()));
        }
        tracing::info!(clean, "opening the log directory");
        let mut metadata = MetadataLog::open(&mut storage)?;
        let mut rng = Rng::from_seed(seed);
        let cluster_id = match metadata.cluster_id.clone() {
            Some(id) => id,
            None => {
                // The voters of a quorum agree on its id without talking:
                // it is derived from their list. A node alone draws one.
                let id = match config.quorum_voters.as_slice() {
                    [] => base64_url(&rng.uuid()),
                    voters => cluster_id_of_voters(voters),
                };
                metadata.append(&mut storage, Change::Cluster { id: id.clone() })?;
                id
            }
        };
        let known_high_watermarks = crate::offset_checkpoint::read(&mut storage);
        let mut groups = Coordinator::new(config.group_initial_rebalance_delay_ms);
        groups.same_assignment_for_all = config.mutated(Mutation::SameAssignmentForAll);
        // Ids of the last reserved block may have been handed out before a crash.
        let next_producer_id = metadata.producer_id_block_end;
        let mut broker = Broker {
            storage,
            config,
            advertised,
            rng,
            cluster_id,
            metadata,
            topics: Topics::default(),
            durability: Durability::new(dirty_other),
            groups,
            transactions: txns::Transactions::default(),
            verifications: verify::Verifications::default(),
            next_producer_id,
            producer_block_seq: 0,
            moved: BTreeSet::new(),
            group_answers: Vec::new(),
            clean_start: clean,
            cluster: None,
            isr_changes: Vec::new(),
            led_epochs: BTreeMap::new(),
            checkpointed_high_watermarks: known_high_watermarks.clone(),
            known_high_watermarks,
            metrics: crate::metrics::Counters::default(),
            creations: creations::Creations::default(),
        };
        if broker.config.quorum_voters.is_empty() {
            broker.remove_orphan_dirs()?;
            let records: Vec<TopicRecord> = broker.metadata.topics.values().cloned().collect();
            for record in records {
                // Creation makes a partition's directory before the topic
                // is recorded: one gone now was removed from outside.
                for partition in 0..record.partitions {
                    let dir = crate::topics::partition_dir(&record.name, partition);
                    if !broker.storage.exists(&dir) {
                        tracing::warn!(%dir, "a partition's directory is gone; it starts again empty at offset 0");
                        broker.topics.opened.dirs_gone += 1;
                    }
                }
                broker.open_topic(&record, clean)?;
            }
        } else if !broker.metadata.topics.is_empty() {
            // A node's own topics from before it joined a quorum: the
            // quorum's metadata decides what exists now.
            tracing::warn!(
                topics = broker.metadata.topics.len(),
                "topics of this node from before it joined the quorum are not served"
            );
        }
        broker.load_groups(now);
        if broker.config.quorum_voters.is_empty() {
            broker.load_txn_partitions(None);
        }
        broker.topics.invariants();
        broker.invariants();
        Ok(broker)
    }

    /// The brokers clients may use: in a cluster, every unfenced broker the
    /// committed metadata lists (and this one until it is listed); alone,
    /// this one.
    pub fn live_brokers(&self) -> Vec<BrokerAddress> {
        let me = BrokerAddress {
            id: self.config.node_id,
            host: self.advertised.0.clone(),
            port: self.advertised.1,
            rack: None,
        };
        let Some(cluster) = &self.cluster else {
            return vec![me];
        };
        let mut brokers: Vec<BrokerAddress> = cluster
            .image
            .unfenced_brokers()
            .filter_map(|b| {
                let endpoint = b.endpoints.values().next()?;
                Some(BrokerAddress {
                    id: b.id,
                    host: endpoint.host.clone(),
                    port: endpoint.port,
                    rack: b.rack.clone(),
                })
            })
            .collect();
        if !brokers.iter().any(|b| b.id == me.id) {
            brokers.push(me);
            brokers.sort_by_key(|b| b.id);
        }
        brokers
    }

    /// Every registered broker and whether it is fenced, by id (a node
    /// alone: itself, unfenced).
    pub fn registered_brokers(&self) -> Vec<(BrokerAddress, bool)> {
        let Some(cluster) = &self.cluster else {
            return self
                .live_brokers()
                .into_iter()
                .map(|b| (b, false))
                .collect();
        };
        cluster
            .image
            .brokers()
            .filter_map(|b| {
                let endpoint = b.endpoints.values().next()?;
                let address = BrokerAddress {
                    id: b.id,
                    host: endpoint.host.clone(),
                    port: endpoint.port,
                    rack: b.rack.clone(),
                };
                Some((address, b.fenced))
            })
            .collect()
    }

    /// The broker clients should send controller requests to: the active
    /// controller when it is a live broker, else this one.
    pub fn controller_id(&self) -> i32 {
        let me = self.config.node_id;
        match &self.cluster {
            Some(ClusterView {
                controller_id: Some(id),
                image,
                ..
            }) if *id == me || image.broker(*id).is_some_and(|b| !b.fenced) => *id,
            _ => me,
        }
    }

    /// True when the last stop was clean: logs need no recovery scan.
    pub fn clean_start(&self) -> bool {
        self.clean_start
    }

    /// Removes partition directories no topic owns (a crash during a deletion).
    fn remove_orphan_dirs(&mut self) -> io::Result<()> {
        for name in self.storage.list_dir("")? {
            let Some((topic, partition)) = name.rsplit_once('-') else {
                continue;
            };
            let Ok(partition) = partition.parse::<i32>() else {
                continue;
            };
            if name == METADATA_DIR {
                continue;
            }
            let owned = self
                .metadata
                .topics
                .get(topic)
                .is_some_and(|t| partition < t.partitions);
            if !owned && self.storage.list_dir(&name).is_ok() {
                tracing::warn!(dir = %name, "removing a partition directory no topic owns");
                remove_dir_all(&mut self.storage, &name)?;
                self.durability
                    .note_other_write(SyncTarget::Dir(String::new()));
            }
        }
        Ok(())
    }

    /// Opens a recorded topic's logs; their files join the next sync.
    fn open_topic(&mut self, record: &TopicRecord, clean: bool) -> io::Result<()> {
        let opened = self
            .topics
            .open(&mut self.storage, &self.config, record, clean)?;
        if opened.created_dirs {
            self.durability
                .note_other_write(SyncTarget::Dir(String::new()));
        }
        for partition in 0..record.partitions {
            self.note_partition_write(&record.name, partition);
            self.moved
                .insert(TopicPartition::new(record.name.clone(), partition));
        }
        Ok(())
    }

    /// Set when a sync failed: acknowledged state can no longer be trusted
    /// to reach the disk, so nothing more is acknowledged until a restart.
    pub fn storage_offline(&self) -> bool {
        self.durability.failed()
    }

    /// The offset below which a partition's records are acknowledged and
    /// may be read: what every replica in the ISR has durable. On one node
    /// that is the synced end of the log.
    pub fn high_watermark(&self, partition: &Partition) -> i64 {
        let log = &partition.log;
        match &partition.role {
            Role::Alone => log.durable_offset(),
            Role::Leader(leading) => leading.high_watermark,
            Role::Follower(following) => following.high_watermark(log.durable_offset()),
            Role::Offline { .. } => log.log_start_offset(),
        }
    }

    /// Records that a partition's log changed; returns the sequence after
    /// which the change is durable.
    pub fn note_partition_write(&mut self, topic: &str, partition: i32) -> u64 {
        let tp = TopicPartition::new(topic, partition);
        let followed = self
            .topics
            .partition(topic, partition)
            .and_then(|p| p.role.leading())
            .is_some_and(|l| !l.followers.is_empty());
        if followed {
            // Followers' fetches parked on it read the new records.
            self.moved.insert(tp.clone());
        }
        self.forget_completed_txns(topic, partition);
        self.durability.note_partition_write(tp)
    }

    /// Lets a partition's log forget the transactions completed below its
    /// high watermark: they no longer hold the last stable offset back.
    /// Done at every write and sync, so the completed transactions kept
    /// are those of the writes since the high watermark last moved.
    fn forget_completed_txns(&mut self, topic: &str, partition: i32) {
        let Some(high_watermark) = self
            .topics
            .partition(topic, partition)
            .map(|held| self.high_watermark(held))
        else {
            return;
        };
        if let Some(held) = self.topics.partition_mut(topic, partition) {
            held.log.forget_completed_txns(high_watermark);
        }
    }

    /// Records a new topic and opens its logs; durable after the next sync.
    /// Returns the sequence to wait for.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        factor: i16,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<Written, ResponseError> {
        assert!(
            topic_name_problem(name).is_none(),
            "created names are checked"
        );
        assert!(partitions > 0, "created topics have partitions");
        assert!(!self.topic_exists(name));
        if self.storage_offline() {
            return Err(ResponseError::KafkaStorageError);
        }
        if self.in_cluster() {
            return self.propose_topic(name, partitions, factor, configs, assignments);
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: self.rng.uuid(),
            partitions,
            configs,
        };
        // The logs first, then the record: a creation that fails part way
        // is undone whole, and a crash before the record leaves only
        // directories no topic owns, which the next start removes.
        if let Err(error) = self.open_topic(&record, true) {
            tracing::error!(topic = name, %error, "cannot create the logs of a new topic; removing what was created");
            self.discard_topic(name, partitions);
            return Err(ResponseError::KafkaStorageError);
        }
        if let Err(error) = self
            .metadata
            .append(&mut self.storage, Change::CreateTopic(record.clone()))
        {
            tracing::error!(topic = name, %error, "cannot record a new topic; removing its logs");
            self.discard_topic(name, partitions);
            return Err(ResponseError::KafkaStorageError);
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(Written::Durable(
            self.durability
                .note_other_write(SyncTarget::Dir(String::new())),
        ))
    }

    /// Undoes the creation of a topic not recorded: its logs closed and
    /// directories removed, nothing of it left to sync or wake.
    fn discard_topic(&mut self, name: &str, partitions: i32) {
        self.topics.discard(&mut self.storage, name, partitions);
        self.durability.forget_topic(name);
        self.moved.retain(|tp| tp.topic != name);
        self.durability
            .note_other_write(SyncTarget::Dir(String::new()));
        assert!(!self.topics.contains(name));
    }

    /// Creates an unknown topic with the broker defaults if auto-creation is
    /// on: the sequence to wait for on a node alone; in a cluster, None
    /// (the creation is under way at the controller, asked by this node
    /// if it is not the controller itself: clients see LEADER_NOT_AVAILABLE
    /// and retry, as Kafka's do).
    pub fn auto_create(&mut self, name: &str) -> Result<Option<u64>, ResponseError> {
        if !self.config.auto_create_topics || self.storage_offline() {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        if topic_name_problem(name).is_some() || self.topics.collision(name).is_some() {
            return Err(ResponseError::InvalidTopicException);
        }
        if self.topic_exists(name) {
            return Ok(None);
        }
        let factor = self.config.default_replication_factor;
        if let Some(cluster) = self.cluster.as_mut() {
            if !cluster.is_controller {
                cluster.forward.insert(name.to_string());
                return Ok(None);
            }
        }
        if !self.auto_create_fits(factor) {
            tracing::warn!(
                topic = name,
                max_broker_partitions = self.config.broker_partitions_max,
                "not auto-creating a topic: it would pass max.broker.partitions"
            );
            return Err(ResponseError::PolicyViolation);
        }
        match self.create_topic(
            name,
            self.config.num_partitions,
            BTreeMap::new(),
            factor,
            None,
        )? {
            Written::Durable(seq) => Ok(Some(seq)),
            Written::Committed(_) => Ok(None),
        }
    }

    /// An auto-created topic (num.partitions of `factor` replicas, placed
    /// round robin) keeps every broker within `max.broker.partitions`.
    fn auto_create_fits(&self, factor: i16) -> bool {
        let brokers = self.placeable_brokers().len().max(1) as i64;
        let replicas = i64::from(self.config.num_partitions) * i64::from(factor);
        let share = (replicas + brokers - 1) / brokers;
        let busiest = self
            .broker_partition_loads()
            .into_values()
            .max()
            .unwrap_or(0);
        busiest + share <= self.config.broker_partitions_max
    }

    /// Records a topic's deletion, then removes its files; returns the
    /// sequence to wait for.
    pub fn delete_topic(&mut self, name: &str) -> Result<Written, ResponseError> {
        assert!(self.topics.contains(name), "deleted topics exist");
        if self.storage_offline() {
            return Err(ResponseError::KafkaStorageError);
        }
        if self.in_cluster() {
            return self.propose_delete(name);
        }
        let change = Change::DeleteTopic {
            name: name.to_string(),
        };
        self.metadata
            .append(&mut self.storage, change)
            .map_err(|error| {
                tracing::error!(topic = name, %error, "cannot record a topic deletion");
                ResponseError::KafkaStorageError
            })?;
        // Its growths under way end first: their logs go with it.
        self.cancel_growths(name);
        for partition in 0..self.topics.partition_count(name) {
            self.moved.insert(TopicPartition::new(name, partition));
        }
        // The deletion is recorded first: a crash from here on leaves orphan
        // directories, which the next start removes.
        self.known_high_watermarks.retain(|tp, _| tp.topic != name);
        if let Err(error) = self.topics.remove(&mut self.storage, name) {
            tracing::error!(topic = name, %error, "cannot remove the files of a deleted topic; the next start removes them");
        }
        self.durability.forget_topic(name);
        assert!(!self.topics.contains(name));
        tracing::info!(topic = name, "deleted topic");
        Ok(Written::Durable(
            self.durability
                .note_other_write(SyncTarget::Dir(String::new())),
        ))
    }

    /// Grows a topic to `count` partitions; returns the sequence to wait for.
    pub fn add_partitions(
        &mut self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<Written, (ResponseError, String)> {
        let current = self.topics.partition_count(name);
        assert!(count > current, "partitions only grow");
        if self.storage_offline() {
            return Err((ResponseError::KafkaStorageError, "storage offline".into()));
        }
        if self.in_cluster() {
            return self.propose_partitions(name, count, assignments);
        }
        let change = Change::SetPartitions {
            name: name.to_string(),
            partitions: count,
        };
        self.metadata
            .append(&mut self.storage, change)
            .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
        for index in current..count {
            self.topics
                .grow(&mut self.storage, name, true, true)
                .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
            self.note_partition_write(name, index);
            self.moved.insert(TopicPartition::new(name, index));
        }
        assert_eq!(self.topics.partition_count(name), count);
        Ok(Written::Durable(
            self.durability
                .note_other_write(SyncTarget::Dir(String::new())),
        ))
    }

    /// Hands out a producer id that was never handed out before, even across
    /// restarts: ids come from blocks reserved in the metadata log. Returns
    /// the id and the sequence after which its block is durable.
    pub fn allocate_producer_id(&mut self) -> io::Result<(i64, u64)> {
        if self.next_producer_id >= self.metadata.producer_id_block_end {
            let block_end = self.next_producer_id + PRODUCER_ID_BLOCK_SIZE;
            self.metadata
                .append(&mut self.storage, Change::ProducerIds { block_end })?;
            self.producer_block_seq = self.durability.note_write();
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        assert!(id < self.metadata.producer_id_block_end);
        Ok((id, self.producer_block_seq))
    }

    /// Deletes segments past their topic's retention.
    pub fn apply_retention(&mut self, now: Now) {
        if self.storage_offline() {
            return;
        }
        let mut changed = Vec::new();
        for (partition, held) in self.topics.partitions_mut() {
            match held.log.apply_retention(&mut self.storage, now.wall_ms) {
                Ok(0) => {}
                Ok(_) => changed.push(partition),
                Err(error) => {
                    tracing::error!(%partition, %error, "retention failed")
                }
            }
        }
        for partition in changed {
            self.note_partition_write(&partition.topic, partition.partition);
            self.moved.insert(partition);
        }
    }

    /// The sync of everything changed, if one is due.
    pub fn next_sync(&mut self) -> Option<SyncRequest> {
        self.durability
            .next_sync(&mut self.topics, &mut self.metadata)
    }

    /// The sync of every file, before a clean shutdown.
    pub fn flush_all(&mut self) -> SyncRequest {
        self.durability
            .flush_all(&mut self.topics, &mut self.metadata)
    }

    /// Writes the clean-shutdown marker; its directory entry needs a sync.
    pub fn write_shutdown_marker(&mut self) -> io::Result<SyncRequest> {
        let file = self.storage.open(CLEAN_SHUTDOWN_FILE, true)?;
        self.storage.close(file);
        Ok(self.durability.sync_marker())
    }

    /// A sync completed or failed: marks the synced log ends durable on the
    /// logs they were taken from.
    pub fn handle_synced(&mut self, now: Now, id: u64, result: Result<(), String>) -> Completed {
        if let Err(why) = &result {
            // After a failed fsync the page cache may have dropped the
            // data: nothing it covered may be acknowledged, ever.
            tracing::error!(%why, "sync failed; the log directory is offline until a restart");
        }
        let completed = self.durability.complete(id, result.is_ok());
        if !completed.ok {
            // The node wakes every parked fetch: they answer the storage error.
            return completed;
        }
        if completed.startup && self.config.mutated(Mutation::ForgetHighWatermark) {
            return completed;
        }
        for end in &completed.ends {
            let Some(held) = self
                .topics
                .partition_mut(&end.partition.topic, end.partition.partition)
            else {
                continue;
            };
            if held.incarnation != end.incarnation {
                // The topic was deleted and created again since the sync
                // was issued: its end says nothing about the new log.
                continue;
            }
            assert!(
                end.end_offset <= held.log.log_end_offset(),
                "a synced end is never past the log end of its incarnation"
            );
            if end.end_offset > held.log.durable_offset() {
                held.log.mark_durable(end.end_offset);
                self.moved.insert(end.partition.clone());
                if matches!(held.role, Role::Leader(_)) {
                    self.update_high_watermark(now, &end.partition.topic, end.partition.partition);
                }
                self.forget_completed_txns(&end.partition.topic, end.partition.partition);
            }
        }
        self.topics.invariants();
        completed
    }

    /// Partitions that moved since the last call.
    pub fn take_moved(&mut self) -> BTreeSet<TopicPartition> {
        std::mem::take(&mut self.moved)
    }

    /// Coordinator answers ready since the last call.
    pub fn take_group_answers(&mut self) -> Vec<GroupAnswer> {
        std::mem::take(&mut self.group_answers)
    }

    /// Checked after every input. The logs are checked by themselves after
    /// every append, and all of them after every sync completes
    /// (`handle_synced`): a walk over every partition on every input would
    /// cost a large broker more than its requests.
    pub fn invariants(&self) {
        self.durability.invariants();
        self.groups.invariants();
        self.transactions.invariants();
        self.creations.invariants(self.config.broker_partitions_max);
        if self.cluster.is_some() {
            assert!(
                !self.creations.is_busy(),
                "a cluster creates through its quorum"
            );
        }
        assert!(self.next_producer_id <= self.metadata.producer_id_block_end);
        assert!(self.producer_block_seq <= self.durability.write_seq());
        for name in self.topics.names() {
            // Recorded in this node's metadata log, or in a cluster's image.
            let recorded = match &self.cluster {
                None => self.metadata.topics.contains_key(name),
                Some(cluster) => cluster.image.topic_by_name(name).is_some(),
            };
            assert!(recorded, "every open topic is recorded");
        }
        if let Some(cluster) = &self.cluster {
            for name in &cluster.pending_topics {
                assert!(
                    !self.topics.contains(name),
                    "a topic is pending only until it opens"
                );
            }
        }
        for answer in &self.group_answers {
            if let Recorded::After(written) = &answer.recorded {
                assert!(written.seq <= self.durability.write_seq());
            }
        }
    }
}
