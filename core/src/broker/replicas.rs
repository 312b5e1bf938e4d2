//! The broker's replicated partitions: each partition's role follows the
//! committed metadata (leader, follower, or neither); the leader serves its
//! followers' fetches, tracks their synced log ends and moves the high
//! watermark; a follower appends what its leader sends, truncates where its
//! log diverged from the leader's (by leader epoch, never by high
//! watermark), and learns the high watermark.
//!
//! A follower fetches from an offset only after everything below it is
//! synced on its own disk, so the log ends the leader counts are durable:
//! a record below the high watermark is on the disk of every ISR member.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::Broker;
use crate::config::Mutation;
use crate::image::PartitionRegistration;
use crate::log::ReplicaAppendError;
use crate::replication::{Following, Leading, Role};
use crate::storage::Storage;
use crate::types::{Now, TopicPartition};

/// A partition's high watermark to wait for, on the log it was appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HighWatermark {
    pub partition: TopicPartition,
    pub incarnation: u64,
    pub offset: i64,
    /// The leader epoch it was appended in (in a cluster): the wait fails
    /// once this broker no longer leads the partition in that epoch.
    pub leader_epoch: Option<i32>,
    /// A produce's `timeout_ms`, as a monotonic deadline: past it the
    /// partitions still waiting answer REQUEST_TIMED_OUT, as Kafka's
    /// delayed produce does. None for the coordinator's own writes.
    pub deadline_ms: Option<i64>,
}

/// The tag of a Sluice follower's own field in each partition of its
/// Fetch (an int64, tagged so that the request stays Kafka's): the offset
/// below which its log is synced. Kafka followers report only their log
/// end; a Sluice follower may fetch again while its last records sync, so
/// it says how far it synced, and only that counts for the high watermark.
/// Without the field, the fetch offset is taken as synced.
pub const SYNCED_END_TAG: i32 = 8_000;

/// A follower's fetch of one partition, as the leader reads it.
#[derive(Debug, Clone, Copy)]
pub struct FollowerFetch {
    pub replica_id: i32,
    pub current_leader_epoch: i32,
    pub fetch_offset: i64,
    /// The offset below which the follower's log is synced, as it reported
    /// it (`SYNCED_END_TAG`); at most `fetch_offset`.
    pub synced_offset: i64,
    pub last_fetched_epoch: i32,
    pub bytes_max: usize,
}

impl FollowerFetch {
    /// The synced end a follower's fetch partition reports: the tagged
    /// field when present and well formed, else the fetch offset. A value
    /// past the fetch offset is taken as the fetch offset (a follower
    /// cannot have synced what it does not have).
    pub fn synced_end(partition: &kafka_protocol::messages::fetch_request::FetchPartition) -> i64 {
        let reported = partition
            .unknown_tagged_fields
            .get(&SYNCED_END_TAG)
            .and_then(|value| <[u8; 8]>::try_from(value.as_ref()).ok())
            .map(i64::from_be_bytes);
        match reported {
            Some(synced) => synced.min(partition.fetch_offset),
            None => partition.fetch_offset,
        }
    }
}

/// What the leader answers a follower for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForFollower {
    Records {
        records: Bytes,
        high_watermark: i64,
        log_start: i64,
    },
    /// The follower's log diverged: the end of the largest epoch the leader
    /// has at or below the follower's last fetched epoch.
    Diverging {
        epoch: i32,
        end_offset: i64,
        high_watermark: i64,
        log_start: i64,
    },
    /// OFFSET_OUT_OF_RANGE: the follower asked from below this log's start
    /// (retention deleted it) or past its end. The answer carries the log
    /// start, where a follower behind it restarts its log.
    OutOfRange { high_watermark: i64, log_start: i64 },
}

/// One partition this broker follows, ready to fetch (its log synced).
#[derive(Debug, Clone)]
pub struct ToFetch {
    pub partition: TopicPartition,
    pub topic_id: Uuid,
    pub leader_epoch: i32,
    pub fetch_offset: i64,
    /// The offset below which this follower's log is synced.
    pub synced_offset: i64,
    pub last_fetched_epoch: i32,
    pub log_start: i64,
}

/// An ISR change a leader asks of the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub partition: TopicPartition,
    pub topic_id: Uuid,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// How long an ISR change may stay unanswered before it may be asked again.
pub const ISR_CHANGE_TIMEOUT_MS: i64 = 5_000;

impl<S: Storage> Broker<S> {
    /// The leader epoch batches appended here get: the partition's, or 0
    /// for a node alone.
    pub fn append_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.topics
            .partition(topic, partition)
            .and_then(|p| p.role.leader_epoch())
            .unwrap_or(0)
            .max(0)
    }

    /// Sets a partition's role from its committed registration. Called as
    /// every partition record applies (at start, replaying them all).
    pub(super) fn refresh_role(&mut self, now: Now, name: &str, partition: i32) {
        self.refresh_role_of(now, name, partition);
        // A transaction coordinator that no longer leads its partition of
        // `__transaction_state` hands its ids over (a change that keeps
        // this node the leader, such as an ISR change, keeps them).
        let leads = self
            .topics
            .partition(name, partition)
            .is_some_and(|p| p.role.leading().is_some());
        if name == crate::txn::TXN_TOPIC && !leads {
            self.unload_txn_partition(partition);
        }
    }

    fn refresh_role_of(&mut self, now: Now, name: &str, partition: i32) {
        let me = self.config.node_id;
        let registration: Option<PartitionRegistration> =
            self.registration(name, partition).cloned();
        let Some(held) = self.topics.partition_mut(name, partition) else {
            return;
        };
        let log_end = held.log.log_end_offset();
        let synced = held.log.durable_offset();
        let tp = TopicPartition::new(name, partition);
        // Neither leading nor following: what was known before, as the
        // checkpoint kept it (Kafka's log keeps its high watermark across
        // role changes and restarts), within this log.
        let restored = self
            .known_high_watermarks
            .get(&tp)
            .copied()
            .unwrap_or(-1)
            .max(held.log.log_start_offset());
        let known_high_watermark = match &held.role {
            Role::Leader(l) => l.high_watermark,
            Role::Follower(f) => f.high_watermark(synced),
            Role::Alone | Role::Offline { .. } => restored,
        }
        .min(synced);
        let known = self.known_high_watermarks.entry(tp.clone()).or_insert(-1);
        *known = (*known).max(known_high_watermark);
        let held = self
            .topics
            .partition_mut(name, partition)
            .expect("found above");
        let was_leader = matches!(held.role, Role::Leader(_));
        let Some(r) = registration else {
            held.role = Role::Offline { leader_epoch: -1 };
            return;
        };
        let serving = self.cluster.as_ref().is_some_and(|c| c.serving);
        if !serving {
            if was_leader {
                self.moved.insert(TopicPartition::new(name, partition));
            }
            held.role = Role::Offline {
                leader_epoch: r.leader_epoch,
            };
            return;
        }
        let min_insync = held.log.config().min_insync_replicas;
        let mut became_leader = false;
        let mut truncated = false;
        match &mut held.role {
            Role::Leader(l) if r.leader == me && l.leader_epoch == r.leader_epoch => {
                // A change committed after the one this leader asked for
                // (if any) settles it: the controller proposes one change
                // of a partition at a time, so the asked one is either
                // this or refused for good.
                if r.partition_epoch > l.partition_epoch {
                    if l.isr != r.isr {
                        tracing::info!(partition = %tp, isr = ?r.isr, "ISR changed");
                        self.metrics.isr_changed(l.isr.len(), r.isr.len());
                    }
                    l.set_isr(r.partition_epoch, &r.replicas, &r.isr);
                }
            }
            _ if r.leader == me
                && self.led_epochs.get(&tp) != Some(&r.leader_epoch)
                && held
                    .log
                    .epochs()
                    .latest_epoch()
                    .is_some_and(|latest| latest >= r.leader_epoch) =>
            {
                // This log already has the epoch, and not from this process:
                // a record replayed at start, or this broker led the epoch
                // before it restarted and may have lost writes its followers
                // hold. It leads again only in a newer epoch (the controller
                // moves a restarted broker's leaderships). The same process
                // leading again after a pause (fenced, then unfenced) lost
                // nothing and goes on.
                held.role = Role::Offline {
                    leader_epoch: r.leader_epoch,
                };
            }
            _ if r.leader == me => {
                // A new leader epoch: it starts at this log's end.
                if let Err(error) = held.log.assign_epoch(&mut self.storage, r.leader_epoch) {
                    tracing::error!(partition = %tp, %error, "cannot record the leader epoch");
                }
                let mut leading = Leading::new(
                    me,
                    r.leader_epoch,
                    r.partition_epoch,
                    &r.replicas,
                    &r.isr,
                    log_end,
                    known_high_watermark,
                    min_insync,
                    now.monotonic_ms,
                );
                // Leading this epoch again after a pause (fenced, then
                // unfenced): an ISR change it asked for before may still
                // commit, so until a commit settles it every replica counts
                // for the high watermark.
                leading.unsettled = self.led_epochs.get(&tp) == Some(&r.leader_epoch);
                held.role = Role::Leader(leading);
                became_leader = true;
                self.led_epochs.insert(tp.clone(), r.leader_epoch);
                tracing::info!(partition = %tp, epoch = r.leader_epoch, isr = ?r.isr, log_end, "leading");
            }
            Role::Follower(f) if r.leader == f.leader && r.leader_epoch == f.leader_epoch => {}
            _ if r.leader >= 0 && r.replicas.contains(&me) => {
                if self.config.mutated(Mutation::TruncateToHighWatermark)
                    && known_high_watermark < log_end
                {
                    if let Err(error) = held
                        .log
                        .truncate_to(&mut self.storage, known_high_watermark)
                    {
                        tracing::error!(partition = %tp, %error, "cannot truncate");
                    }
                    truncated = true;
                }
                held.role = Role::Follower(Following {
                    leader: r.leader,
                    leader_epoch: r.leader_epoch,
                    leader_high_watermark: known_high_watermark,
                });
                tracing::info!(partition = %tp, leader = r.leader, epoch = r.leader_epoch, "following");
            }
            _ => {
                held.role = Role::Offline {
                    leader_epoch: r.leader_epoch,
                };
            }
        }
        if truncated {
            self.topics.renew_incarnation(name, partition);
            self.note_partition_write(name, partition);
        }
        if was_leader || became_leader {
            // Waits on this partition (acks=all, parked fetches) look again.
            self.moved.insert(tp.clone());
            self.note_partition_write(name, partition);
        }
        if became_leader {
            self.update_high_watermark(now, name, partition);
            if name == super::OFFSETS_TOPIC {
                self.load_group_partition(now, partition);
            }
            if name == crate::txn::TXN_TOPIC {
                self.load_txn_partitions(Some(partition));
            }
        }
    }

    /// This broker became (or stopped being) caught up and unfenced: every
    /// partition's role follows.
    pub fn set_serving(&mut self, now: Now, serving: bool) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if cluster.serving == serving {
            return;
        }
        cluster.serving = serving;
        tracing::info!(serving, "partition roles follow this broker's registration");
        let partitions: Vec<TopicPartition> =
            self.topics.partitions_mut().map(|(tp, _)| tp).collect();
        for tp in partitions {
            self.refresh_role(now, &tp.topic, tp.partition);
        }
    }

    /// Recomputes a led partition's high watermark; true when it moved.
    pub fn update_high_watermark(&mut self, now: Now, name: &str, partition: i32) -> bool {
        let lag_ms = self.config.replica_lag_time_max_ms;
        let below_min_insync = self.config.mutated(Mutation::AcksBelowMinInsync);
        let ineligible: Vec<i32> = match &self.cluster {
            Some(cluster) => cluster
                .image
                .brokers()
                .filter(|b| b.fenced || b.in_controlled_shutdown)
                .map(|b| b.id)
                .collect(),
            None => Vec::new(),
        };
        let Some(held) = self.topics.partition_mut(name, partition) else {
            return false;
        };
        let (synced, log_end) = (held.log.durable_offset(), held.log.log_end_offset());
        let Some(leading) = held.role.leading_mut() else {
            return false;
        };
        if below_min_insync {
            leading.min_insync = 1;
        }
        let moved =
            leading.update_high_watermark(synced, log_end, now.monotonic_ms, lag_ms, &ineligible);
        if moved {
            self.moved.insert(TopicPartition::new(name, partition));
        }
        moved
    }

    /// Why a request naming `current_leader_epoch` is refused here (-1
    /// names none): FENCED_LEADER_EPOCH when it is older than this
    /// replica's, UNKNOWN_LEADER_EPOCH when newer.
    pub fn epoch_refusal(
        &self,
        name: &str,
        partition: i32,
        current_leader_epoch: i32,
    ) -> Option<ResponseError> {
        if current_leader_epoch < 0 {
            return None;
        }
        let epoch = self
            .topics
            .partition(name, partition)?
            .role
            .leader_epoch()?;
        match current_leader_epoch.cmp(&epoch) {
            std::cmp::Ordering::Less => Some(ResponseError::FencedLeaderEpoch),
            std::cmp::Ordering::Greater => Some(ResponseError::UnknownLeaderEpoch),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// A follower's fetch of a partition this broker leads: its progress
    /// counts for the high watermark and the ISR, and it gets the records
    /// from its offset up to this log's end (or where its log diverged).
    pub fn read_for_follower(
        &mut self,
        now: Now,
        name: &str,
        partition: i32,
        fetch: FollowerFetch,
        at_least_one: bool,
    ) -> Result<ForFollower, ResponseError> {
        if self.storage_offline() {
            return Err(ResponseError::KafkaStorageError);
        }
        if let Some(error) = self.not_leader(name, partition) {
            return Err(error);
        }
        if let Some(error) = self.epoch_refusal(name, partition, fetch.current_leader_epoch) {
            return Err(error);
        }
        let lag_ms = self.config.replica_lag_time_max_ms;
        let skip_epoch_check = self.config.mutated(Mutation::SkipFetchEpochCheck);
        let held = self
            .topics
            .partition_mut(name, partition)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let log_end = held.log.log_end_offset();
        let log_start = held.log.log_start_offset();
        let Role::Leader(leading) = &mut held.role else {
            return Err(ResponseError::NotLeaderOrFollower);
        };
        if !leading.replicas.contains(&fetch.replica_id) {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
        let high_watermark = leading.high_watermark;
        let divergence = held.log.divergence(
            fetch.last_fetched_epoch,
            fetch.fetch_offset,
            leading.leader_epoch,
        );
        if let Some((epoch, end_offset)) = divergence.filter(|_| !skip_epoch_check) {
            return Ok(ForFollower::Diverging {
                epoch,
                end_offset,
                high_watermark,
                log_start,
            });
        }
        if fetch.fetch_offset < log_start || fetch.fetch_offset > log_end {
            return Ok(ForFollower::OutOfRange {
                high_watermark,
                log_start,
            });
        }
        leading.on_fetch(
            fetch.replica_id,
            fetch.fetch_offset,
            fetch.synced_offset.min(fetch.fetch_offset),
            log_end,
            now.monotonic_ms,
        );
        let expansion = leading
            .expansion(fetch.replica_id)
            .filter(|_| leading.caught_up(fetch.replica_id, log_end, now.monotonic_ms, lag_ms));
        let records = held
            .log
            .read(
                &mut self.storage,
                fetch.fetch_offset,
                log_end,
                fetch.bytes_max,
                at_least_one,
            )
            .map_err(|error| {
                tracing::error!(topic = name, partition, %error, "read for a follower failed");
                ResponseError::KafkaStorageError
            })?;
        if let Some(isr) = expansion {
            self.ask_isr_change(now, name, partition, isr);
        }
        self.update_high_watermark(now, name, partition);
        let held = self.topics.partition(name, partition).expect("read above");
        let high_watermark = held
            .role
            .leading()
            .map_or(high_watermark, |l| l.high_watermark);
        Ok(ForFollower::Records {
            records,
            high_watermark,
            log_start,
        })
    }

    /// Queues an ISR change for the node to send the controller; the
    /// partition holds it as pending until the controller answers.
    fn ask_isr_change(&mut self, now: Now, name: &str, partition: i32, isr: Vec<i32>) {
        let Some(topic_id) = self.registration_topic_id(name) else {
            return;
        };
        let Some(held) = self.topics.partition_mut(name, partition) else {
            return;
        };
        let Some(leading) = held.role.leading_mut() else {
            return;
        };
        if leading.pending_isr.is_some() {
            return;
        }
        tracing::info!(topic = name, partition, from = ?leading.isr, to = ?isr, "asking the controller to change the ISR");
        leading.pending_isr = Some(isr.clone());
        leading.pending_since_ms = now.monotonic_ms;
        self.isr_changes.push(IsrChange {
            partition: TopicPartition::new(name, partition),
            topic_id,
            leader_epoch: leading.leader_epoch,
            partition_epoch: leading.partition_epoch,
            isr,
        });
    }

    fn registration_topic_id(&self, name: &str) -> Option<Uuid> {
        Some(self.cluster.as_ref()?.image.topic_by_name(name)?.id)
    }

    /// The periodic ISR check (every half `replica.lag.time.max.ms`): ISR
    /// members behind for the lag time are dropped, and changes asked too
    /// long ago without an answer may be asked again.
    pub fn check_isr(&mut self, now: Now) {
        let lag_ms = self.config.replica_lag_time_max_ms;
        let mut shrinks = Vec::new();
        let mut again = Vec::new();
        for (tp, held) in self.topics.partitions_mut() {
            let log_end = held.log.log_end_offset();
            let Some(leading) = held.role.leading_mut() else {
                continue;
            };
            match &leading.pending_isr {
                // Unanswered for long: asked again (it stays pending: it
                // may have been proposed, and only a commit settles it).
                Some(isr)
                    if now.monotonic_ms - leading.pending_since_ms >= ISR_CHANGE_TIMEOUT_MS =>
                {
                    leading.pending_since_ms = now.monotonic_ms;
                    again.push(IsrChange {
                        partition: tp.clone(),
                        topic_id: Uuid::nil(),
                        leader_epoch: leading.leader_epoch,
                        partition_epoch: leading.partition_epoch,
                        isr: isr.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    if let Some(isr) = leading.shrink(log_end, now.monotonic_ms, lag_ms) {
                        shrinks.push((tp, isr));
                    }
                }
            }
        }
        for mut change in again {
            if let Some(topic_id) = self.registration_topic_id(&change.partition.topic) {
                change.topic_id = topic_id;
                self.isr_changes.push(change);
            }
        }
        for (tp, isr) in shrinks {
            tracing::warn!(partition = %tp, ?isr, lag_ms, "followers fell behind; shrinking the ISR");
            self.ask_isr_change(now, &tp.topic, tp.partition, isr);
        }
    }

    /// ISR changes for the node to send.
    pub fn take_isr_changes(&mut self) -> Vec<IsrChange> {
        std::mem::take(&mut self.isr_changes)
    }

    /// The controller refused an ISR change for good: it may be asked
    /// again.
    pub fn isr_change_failed(&mut self, change: &IsrChange) {
        if let Some(leading) = self
            .topics
            .partition_mut(&change.partition.topic, change.partition.partition)
            .and_then(|p| p.role.leading_mut())
        {
            // Only the pending change's own refusal: an older one's says
            // nothing of it.
            let same = leading.leader_epoch == change.leader_epoch
                && leading.partition_epoch == change.partition_epoch
                && leading.pending_isr.as_ref() == Some(&change.isr);
            if same {
                leading.pending_isr = None;
            }
        }
    }

    /// The partitions this broker follows, by leader, whose logs are
    /// synced to their end (a follower reports only synced offsets).
    pub fn partitions_to_fetch(&self) -> Vec<(i32, ToFetch)> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let truncate_to_hw = self.config.mutated(Mutation::TruncateToHighWatermark);
        let mut out = Vec::new();
        for name in self.topics.names() {
            let Some(topic_id) = cluster.image.topic_by_name(name).map(|t| t.id) else {
                continue;
            };
            let count = self.topics.partition_count(name);
            for index in 0..count {
                // None: no replica here.
                let Some(held) = self.topics.partition(name, index) else {
                    continue;
                };
                let Role::Follower(f) = &held.role else {
                    continue;
                };
                let log = &held.log;
                out.push((
                    f.leader,
                    ToFetch {
                        partition: TopicPartition::new(name.clone(), index),
                        topic_id,
                        leader_epoch: f.leader_epoch,
                        fetch_offset: log.log_end_offset(),
                        synced_offset: log.durable_offset(),
                        last_fetched_epoch: if truncate_to_hw {
                            -1
                        } else {
                            log.epochs().latest_epoch().unwrap_or(-1)
                        },
                        log_start: log.log_start_offset(),
                    },
                ));
            }
        }
        out
    }

    /// What an append to a partition that has followers must wait for
    /// besides its sync: the high watermark passing `end`. None for a
    /// partition without followers (its sync is enough).
    pub fn replication_mark(&self, name: &str, partition: i32, end: i64) -> Option<HighWatermark> {
        let held = self.topics.partition(name, partition)?;
        let leading = held.role.leading()?;
        if leading.followers.is_empty() {
            return None;
        }
        Some(HighWatermark {
            partition: TopicPartition::new(name, partition),
            incarnation: held.incarnation,
            offset: end,
            leader_epoch: Some(leading.leader_epoch),
            deadline_ms: None,
        })
    }

    /// Appends what the leader sent for a followed partition, and learns its
    /// high watermark. Returns the write sequence that makes it durable, or
    /// None when nothing was appended.
    pub fn append_from_leader(
        &mut self,
        partition: &TopicPartition,
        leader_epoch: i32,
        records: &[u8],
        leader_high_watermark: i64,
    ) -> Result<Option<u64>, String> {
        let Some(held) = self
            .topics
            .partition_mut(&partition.topic, partition.partition)
        else {
            return Err("the partition is gone".into());
        };
        match &held.role {
            Role::Follower(f) if f.leader_epoch == leader_epoch => {}
            _ => return Err("no longer a follower in that epoch".into()),
        }
        let before = held.log.log_end_offset();
        if !records.is_empty() {
            match held.log.append_replicated(&mut self.storage, records) {
                Ok(_) => {}
                Err(ReplicaAppendError::EpochBelowLatest { latest, got }) if got >= 0 => {
                    // The leader's next records are of an older epoch than
                    // this log's last ones: the logs parted where the
                    // leader's divergence check cannot see it (it has this
                    // log's last epoch, only from later on). Nothing is
                    // appended, nor the answer's high watermark taken: the
                    // log is cut back, and fetches again. A negative epoch
                    // places nothing, and stays refused.
                    self.truncate_epochs_after(partition, latest, got)?;
                    return Ok(None);
                }
                Err(error) => return Err(format!("{error:?}")),
            }
        }
        let appended = held.log.log_end_offset() > before;
        if let Role::Follower(f) = &mut held.role {
            f.leader_high_watermark = f.leader_high_watermark.max(leader_high_watermark);
        }
        if !appended {
            return Ok(None);
        }
        Ok(Some(self.note_partition_write(
            &partition.topic,
            partition.partition,
        )))
    }

    /// Mutation `follow-hinted-leader`: a refused follower takes the leader
    /// the refusing broker names, in whatever epoch it names. The right
    /// thing is to wait for the metadata log, which names leaders in order.
    pub fn follow_hinted_leader(&mut self, partition: &TopicPartition, leader: i32, epoch: i32) {
        let me = self.config.node_id;
        let Some(held) = self
            .topics
            .partition_mut(&partition.topic, partition.partition)
        else {
            return;
        };
        if let Role::Follower(f) = &mut held.role {
            if leader >= 0 && leader != me && (leader, epoch) != (f.leader, f.leader_epoch) {
                tracing::info!(%partition, leader, epoch, "following the leader a refusal names");
                f.leader = leader;
                f.leader_epoch = epoch;
            }
        }
    }

    /// Writes every partition's high watermark to
    /// `replication-offset-checkpoint` (Kafka's `checkpointHighWatermarks`,
    /// every `replica.high.watermark.checkpoint.interval.ms` and at a clean
    /// stop), unless it holds them already; the next sync makes it durable.
    pub fn checkpoint_high_watermarks(&mut self) {
        if self.storage_offline() {
            return;
        }
        // Partitions whose logs are not open yet (a start replays the
        // metadata before it opens them) keep what was known of them.
        let mut offsets = self.known_high_watermarks.clone();
        for (tp, held) in self.topics.partitions_mut() {
            let log = &held.log;
            let known = self.known_high_watermarks.get(&tp).copied().unwrap_or(-1);
            let high_watermark = match &held.role {
                Role::Leader(l) => l.high_watermark,
                Role::Follower(f) => f.high_watermark(log.durable_offset()),
                Role::Alone => log.durable_offset(),
                Role::Offline { .. } => known.min(log.log_end_offset()),
            }
            .max(known.min(log.log_end_offset()))
            .max(log.log_start_offset());
            offsets.insert(tp, high_watermark);
        }
        self.known_high_watermarks = offsets.clone();
        if offsets == self.checkpointed_high_watermarks {
            return;
        }
        match crate::offset_checkpoint::write(&mut self.storage, &offsets) {
            Ok(()) => {
                let file = crate::storage::SyncTarget::File(crate::offset_checkpoint::FILE.into());
                self.durability.note_other_write(file);
                self.durability
                    .note_other_write(crate::storage::SyncTarget::Dir(String::new()));
                self.checkpointed_high_watermarks = offsets;
            }
            Err(error) => {
                // The directory entries may have changed all the same.
                self.durability
                    .note_other_write(crate::storage::SyncTarget::Dir(String::new()));
                tracing::error!(%error, "cannot write the high watermark checkpoint");
            }
        }
    }

    /// The leader answered OFFSET_OUT_OF_RANGE and its log starts at
    /// `leader_log_start`: when this whole log lies below it (retention on
    /// the leader deleted what this follower would fetch next), the log is
    /// emptied and starts again there, as Kafka's fetcher does
    /// (`truncateFullyAndStartAt`). True when it did.
    pub fn restart_below_leader_start(
        &mut self,
        partition: &TopicPartition,
        leader_log_start: i64,
    ) -> Result<bool, String> {
        let Some(held) = self
            .topics
            .partition_mut(&partition.topic, partition.partition)
        else {
            return Err("the partition is gone".into());
        };
        if !matches!(held.role, Role::Follower(_)) {
            return Err("no longer a follower".into());
        }
        let log_end = held.log.log_end_offset();
        if leader_log_start <= log_end {
            return Ok(false);
        }
        tracing::warn!(%partition, log_end, leader_log_start, "this log ends before the leader's log start; emptying it to start there");
        held.log
            .truncate_fully_and_start_at(&mut self.storage, leader_log_start)
            .map_err(|e| e.to_string())?;
        self.known_high_watermarks.remove(partition);
        self.topics
            .renew_incarnation(&partition.topic, partition.partition);
        self.note_partition_write(&partition.topic, partition.partition);
        Ok(true)
    }

    /// This follower's log ends in records of epochs up to `latest`
    /// where its leader's log goes on in the older epoch `leader_epoch`:
    /// the records of the later epochs are not the leader's, and go (see
    /// `PartitionLog::start_of_epochs_after`); the next fetch takes the
    /// leader's from the cut. Kafka's follower never meets this (it takes
    /// the older epoch and drops the newer ones from its cache, keeping
    /// their records). It follows from a crash that flipped a bit in the
    /// epoch field of an unsynced batch here, which the batch CRC does not
    /// cover, to an epoch the leader has from later on; that batch lies
    /// above every high watermark this follower learned, since it was not
    /// synced and no answer since could be appended after it. A cut below
    /// the high watermark this follower knows would drop records it knows
    /// were acknowledged, on the word of a leader whose own log goes back
    /// in epoch (damaged where recovery cannot see it): it is refused, and
    /// the follower stays where it is.
    fn truncate_epochs_after(
        &mut self,
        partition: &TopicPartition,
        latest: i32,
        leader_epoch: i32,
    ) -> Result<(), String> {
        let Some(held) = self
            .topics
            .partition_mut(&partition.topic, partition.partition)
        else {
            return Err("the partition is gone".into());
        };
        let log = &held.log;
        let log_end = log.log_end_offset();
        let high_watermark = match &held.role {
            Role::Follower(f) => f.high_watermark(log.durable_offset()),
            _ => return Err("no longer a follower".into()),
        };
        let Some(cut) = log.start_of_epochs_after(leader_epoch) else {
            return Err(format!(
                "leader epoch {leader_epoch} below {latest}, yet no record here is of a later epoch"
            ));
        };
        let dropped: Vec<(i32, i64)> = (log.epochs().entries().iter())
            .filter(|e| e.epoch > leader_epoch)
            .map(|e| (e.epoch, e.start_offset))
            .collect();
        if cut < high_watermark {
            return Err(format!(
                "the records of epochs {dropped:?} after the leader's {leader_epoch} start at {cut}, below the high watermark {high_watermark}: not cut"
            ));
        }
        tracing::warn!(%partition, latest, leader_epoch, ?dropped, cut, log_end, high_watermark,
            "this log's last epochs are newer than the leader's records that follow them; truncating to where they start");
        held.log
            .truncate_to(&mut self.storage, cut)
            .map_err(|e| e.to_string())?;
        if let Some(known) = self.known_high_watermarks.get_mut(partition) {
            *known = (*known).min(cut);
        }
        self.topics
            .renew_incarnation(&partition.topic, partition.partition);
        self.note_partition_write(&partition.topic, partition.partition);
        Ok(())
    }

    /// The leader says this log diverged from its own after `epoch`, whose
    /// end is `end_offset`: cut this log where they agree (Kafka's
    /// truncation by leader epoch; the next fetch checks again).
    pub fn truncate_diverged(
        &mut self,
        partition: &TopicPartition,
        epoch: i32,
        end_offset: i64,
    ) -> Result<(), String> {
        let Some(held) = self
            .topics
            .partition_mut(&partition.topic, partition.partition)
        else {
            return Err("the partition is gone".into());
        };
        let log = &held.log;
        let log_end = log.log_end_offset();
        let target = log.diverged_end(epoch, end_offset);
        if let Role::Follower(f) = &held.role {
            let high_watermark = f.high_watermark(log.durable_offset());
            if target < high_watermark {
                tracing::error!(%partition, target, high_watermark, "truncating below the high watermark");
            }
        }
        tracing::info!(%partition, epoch, end_offset, target, log_end, "the log diverged from the leader's; truncating");
        held.log
            .truncate_to(&mut self.storage, target)
            .map_err(|e| e.to_string())?;
        // As Kafka's truncation lowers the log's high watermark: what was
        // known above the cut no longer describes this log.
        if let Some(known) = self.known_high_watermarks.get_mut(partition) {
            *known = (*known).min(target);
        }
        self.topics
            .renew_incarnation(&partition.topic, partition.partition);
        self.note_partition_write(&partition.topic, partition.partition);
        Ok(())
    }
}
