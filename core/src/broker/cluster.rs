//! The broker in a cluster: topics are the controller quorum's, not this
//! node's. A change (create, delete, add partitions) is turned into
//! metadata records, proposed by the active controller, and answered once
//! committed; every node opens or removes its partition logs when it
//! applies the committed records. Partitions are placed on the unfenced
//! brokers; each partition's leader serves it, and the others answer
//! NOT_LEADER_OR_FOLLOWER. Replication (more than one replica) is the next
//! step: until then each partition has one replica, and every node keeps
//! an empty log for the partitions it does not lead.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{Broker, ClusterView, Written};
use crate::image::{PartitionRegistration, RESOURCE_TYPE_TOPIC};
use crate::metadata::TopicRecord as LocalTopic;
use crate::metadata_records::{
    ConfigRecord, MetadataRecord, PartitionRecord, RemoveTopicRecord, TopicRecord,
};
use crate::storage::{Storage, SyncTarget};
use crate::types::TopicPartition;

/// A change proposed to the controller quorum, and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Waiting for the node to propose it.
    Queued,
    /// Proposed: its last record at `offset`, in the leader's `epoch`.
    Proposed {
        offset: i64,
        epoch: i32,
    },
    Committed,
    /// Not proposed (not the controller), or lost with a leader change.
    Failed,
}

/// Tickets kept after they are settled, for the replies still reading them.
const SETTLED_TICKETS_KEPT: u64 = 256;

impl ClusterView {
    /// Queues records for the node to propose; the ticket to wait on.
    pub fn submit(&mut self, records: Vec<MetadataRecord>) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.outbox.push((ticket, records));
        self.tickets.insert(ticket, Ticket::Queued);
        ticket
    }

    pub fn ticket(&self, ticket: u64) -> Ticket {
        // A ticket forgotten long ago settled one way or the other; a reply
        // still waiting on it is answered as failed.
        self.tickets.get(&ticket).copied().unwrap_or(Ticket::Failed)
    }

    pub fn settle(&mut self, ticket: u64, state: Ticket) {
        if matches!(state, Ticket::Committed | Ticket::Failed) {
            self.pending_replicas.remove(&ticket);
        }
        self.tickets.insert(ticket, state);
        let floor = self.next_ticket.saturating_sub(SETTLED_TICKETS_KEPT);
        self.tickets.retain(|t, state| {
            *t > floor || matches!(state, Ticket::Queued | Ticket::Proposed { .. })
        });
    }
}

impl<S: Storage> Broker<S> {
    /// True when this node is part of a controller quorum.
    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The roles this broker's image gives it may act: alone, always; in
    /// a cluster, while it is registered, unfenced and within its lease.
    pub fn acting(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.serving)
    }

    /// How clients reach `coordinator`, the broker an image names for a
    /// group or a transactional id. This broker while it does not act is
    /// not available: clients ask again, maybe another broker.
    pub(super) fn coordinator_address_of(
        &self,
        coordinator: i32,
    ) -> Result<super::BrokerAddress, ResponseError> {
        if coordinator == self.config.node_id && !self.acting() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        self.live_brokers()
            .into_iter()
            .find(|b| b.id == coordinator)
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    /// True when a topic exists here, or its creation is under way.
    pub fn topic_exists(&self, name: &str) -> bool {
        self.topics.contains(name)
            || self.creations.creating(name)
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.pending_topics.contains(name))
    }

    /// Why this node refuses a cluster change: not the active controller.
    fn controller_refusal(&self) -> Option<ResponseError> {
        match &self.cluster {
            Some(cluster) if !cluster.is_controller => Some(ResponseError::NotController),
            _ => None,
        }
    }

    /// The brokers partitions may be placed on: unfenced, by id.
    pub fn placeable_brokers(&self) -> Vec<i32> {
        match &self.cluster {
            Some(cluster) => cluster.image.unfenced_brokers().map(|b| b.id).collect(),
            None => vec![self.config.node_id],
        }
    }

    /// The partition replicas each broker hosts or is about to: for a node
    /// alone, every partition of its topics; in a cluster, the committed
    /// image's replicas plus those of changes proposed and not settled.
    /// What `max.broker.partitions` bounds.
    pub fn broker_partition_loads(&self) -> BTreeMap<i32, i64> {
        let mut loads = BTreeMap::new();
        let Some(cluster) = &self.cluster else {
            let hosted = self
                .topics
                .names()
                .map(|name| i64::from(self.topics.partition_count(name)))
                .sum::<i64>();
            let pending = self.creations.pending_partitions();
            loads.insert(self.config.node_id, hosted + pending);
            return loads;
        };
        for topic in cluster.image.topics() {
            for partition in topic.partitions.values() {
                for &broker in &partition.replicas {
                    *loads.entry(broker).or_insert(0) += 1;
                }
            }
        }
        for placed in cluster.pending_replicas.values() {
            for (&broker, &count) in placed {
                *loads.entry(broker).or_insert(0) += count;
            }
        }
        loads
    }

    /// Replica lists for `count` partitions from `first`: round robin over
    /// the unfenced brokers from a seeded start, `factor` each.
    fn place(
        &mut self,
        first: i32,
        count: i32,
        factor: i16,
    ) -> Result<Vec<Vec<i32>>, ResponseError> {
        let brokers = self.placeable_brokers();
        if brokers.is_empty() || factor as usize > brokers.len() {
            return Err(ResponseError::InvalidReplicationFactor);
        }
        let start = (self.rng.next_u64() % brokers.len() as u64) as usize;
        Ok((first..first + count)
            .map(|p| {
                (0..factor as usize)
                    .map(|r| brokers[(start + p as usize + r) % brokers.len()])
                    .collect()
            })
            .collect())
    }

    /// Proposes a new topic: its record, its config overrides, and its
    /// partitions placed on the unfenced brokers (or as `assignments` say).
    pub(super) fn propose_topic(
        &mut self,
        name: &str,
        partitions: i32,
        factor: i16,
        configs: BTreeMap<String, String>,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<Written, ResponseError> {
        if let Some(refusal) = self.controller_refusal() {
            return Err(refusal);
        }
        let replicas = match assignments {
            Some(assignments) => assignments,
            None => self.place(0, partitions, factor)?,
        };
        let topic_id = Uuid::from_bytes(self.rng.uuid());
        let mut records = vec![MetadataRecord::Topic(TopicRecord {
            name: name.to_string(),
            topic_id,
        })];
        for (key, value) in configs {
            records.push(MetadataRecord::Config(ConfigRecord {
                resource_type: RESOURCE_TYPE_TOPIC,
                resource_name: name.to_string(),
                name: key,
                value: Some(value),
            }));
        }
        let placed = replicas_by_broker(&replicas);
        records.extend(partition_records(topic_id, 0, replicas));
        let cluster = self.cluster.as_mut().expect("in a cluster");
        cluster.pending_topics.insert(name.to_string());
        tracing::info!(topic = name, partitions, "proposing a topic");
        let ticket = cluster.submit(records);
        cluster.pending_replicas.insert(ticket, placed);
        Ok(Written::Committed(ticket))
    }

    pub(super) fn propose_delete(&mut self, name: &str) -> Result<Written, ResponseError> {
        if let Some(refusal) = self.controller_refusal() {
            return Err(refusal);
        }
        let cluster = self.cluster.as_mut().expect("in a cluster");
        let Some(topic) = cluster.image.topic_by_name(name) else {
            return Err(ResponseError::UnknownTopicOrPartition);
        };
        let record = MetadataRecord::RemoveTopic(RemoveTopicRecord { topic_id: topic.id });
        tracing::info!(topic = name, "proposing a topic's deletion");
        Ok(Written::Committed(cluster.submit(vec![record])))
    }

    pub(super) fn propose_partitions(
        &mut self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<Written, (ResponseError, String)> {
        if let Some(refusal) = self.controller_refusal() {
            return Err((refusal, "this node is not the active controller".into()));
        }
        let cluster = self.cluster.as_ref().expect("in a cluster");
        let Some(topic) = cluster.image.topic_by_name(name) else {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("The topic '{name}' does not exist."),
            ));
        };
        let (topic_id, current) = (topic.id, topic.partitions.len() as i32);
        let factor = topic
            .partitions
            .values()
            .next()
            .map_or(1, |p| p.replicas.len() as i16);
        let replicas = match assignments {
            Some(assignments) => assignments,
            None => self
                .place(current, count - current, factor)
                .map_err(|e| (e, "not enough unfenced brokers".into()))?,
        };
        let placed = replicas_by_broker(&replicas);
        let records = partition_records(topic_id, current, replicas);
        let cluster = self.cluster.as_mut().expect("in a cluster");
        let ticket = cluster.submit(records);
        cluster.pending_replicas.insert(ticket, placed);
        Ok(Written::Committed(ticket))
    }

    /// A committed record applied to the image: open, grow or remove the
    /// local logs it describes.
    pub fn apply_metadata(&mut self, now: crate::types::Now, record: &MetadataRecord) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        match record {
            MetadataRecord::Topic(topic) => {
                cluster.pending_topics.remove(&topic.name);
            }
            MetadataRecord::Partition(partition) => {
                let Some(topic) = cluster.image.topic_by_id(partition.topic_id) else {
                    return;
                };
                let name = topic.name.clone();
                let configs = cluster
                    .image
                    .topic_configs(&name)
                    .cloned()
                    .unwrap_or_default();
                let hosted = partition.replicas.contains(&self.config.node_id);
                self.open_cluster_partition(
                    &name,
                    partition.topic_id,
                    partition.partition_id,
                    configs,
                    hosted,
                );
                // The leader of a partition of the offsets topic loads its
                // groups and commits as it takes the partition.
                self.refresh_role(now, &name, partition.partition_id);
            }
            MetadataRecord::PartitionChange(change) => {
                let Some(topic) = cluster.image.topic_by_id(change.topic_id) else {
                    return;
                };
                let name = topic.name.clone();
                self.refresh_role(now, &name, change.partition_id);
            }
            MetadataRecord::RemoveTopic(removed) => {
                let name = self
                    .topics
                    .names()
                    .find(|n| {
                        self.topics
                            .get(n)
                            .is_some_and(|t| Uuid::from_bytes(t.id) == removed.topic_id)
                    })
                    .cloned();
                if let Some(name) = name {
                    self.remove_local_topic(&name);
                }
            }
            _ => {}
        }
    }

    /// Opens a partition's log here when this broker holds one of its
    /// replicas (`hosted`); otherwise the topic only counts the partition,
    /// with no log, as a Kafka broker keeps none for it.
    fn open_cluster_partition(
        &mut self,
        name: &str,
        topic_id: Uuid,
        partition: i32,
        configs: BTreeMap<String, String>,
        hosted: bool,
    ) {
        let clean = self.clean_start;
        if !self.topics.contains(name) {
            let record = LocalTopic {
                name: name.to_string(),
                id: *topic_id.as_bytes(),
                partitions: 0,
                configs,
            };
            if let Err(error) = self.open_topic(&record, clean) {
                tracing::error!(topic = name, %error, "cannot open a topic's logs");
                return;
            }
        }
        let have = self.topics.partition_count(name);
        if partition < have {
            return;
        }
        if partition > have {
            tracing::error!(
                topic = name,
                partition,
                have,
                "a partition record out of order; skipped"
            );
            return;
        }
        match self.topics.grow(&mut self.storage, name, clean, hosted) {
            Ok(_) if !hosted => {}
            Ok(opened) => {
                if opened.created_dirs {
                    self.durability
                        .note_other_write(SyncTarget::Dir(String::new()));
                }
                self.note_partition_write(name, partition);
                self.moved.insert(TopicPartition::new(name, partition));
            }
            Err(error) => {
                tracing::error!(topic = name, partition, %error, "cannot open a partition log")
            }
        }
    }

    fn remove_local_topic(&mut self, name: &str) {
        for partition in 0..self.topics.partition_count(name) {
            self.moved.insert(TopicPartition::new(name, partition));
        }
        self.known_high_watermarks.retain(|tp, _| tp.topic != name);
        if let Err(error) = self.topics.remove(&mut self.storage, name) {
            tracing::error!(topic = name, %error, "cannot remove the files of a deleted topic");
        }
        self.durability.forget_topic(name);
        self.durability
            .note_other_write(SyncTarget::Dir(String::new()));
        tracing::info!(topic = name, "deleted topic");
    }

    /// A partition as the committed metadata describes it (in a cluster).
    pub fn registration(&self, topic: &str, partition: i32) -> Option<&PartitionRegistration> {
        let image = &self.cluster.as_ref()?.image;
        let topic = image.topic_by_name(topic)?;
        topic.partitions.get(&partition)
    }

    /// Why this node may not serve a partition's reads and writes: in a
    /// cluster, another broker leads it (or none does).
    pub fn not_leader(&self, topic: &str, partition: i32) -> Option<ResponseError> {
        self.cluster.as_ref()?;
        match self.registration(topic, partition) {
            None => Some(ResponseError::UnknownTopicOrPartition),
            // Named leader, and acting as one (caught up with the metadata).
            Some(p) if p.leader == self.config.node_id && self.leads(topic, partition) => None,
            Some(p) if p.leader == self.config.node_id => Some(ResponseError::NotLeaderOrFollower),
            Some(p) if p.leader < 0 => Some(ResponseError::LeaderNotAvailable),
            Some(_) => Some(ResponseError::NotLeaderOrFollower),
        }
    }

    /// The partitions of the offsets topic, which place each group. In a
    /// cluster, `offsets.topic.num.partitions` (the committed metadata may
    /// hold only the first of them while their records apply one by one),
    /// or more if the topic was created with more; alone, as this node
    /// holds them.
    pub fn offsets_partition_count(&self) -> i32 {
        match &self.cluster {
            Some(cluster) => cluster
                .image
                .topic_by_name(super::OFFSETS_TOPIC)
                .map_or(0, |t| t.partitions.len() as i32)
                .max(self.config.offsets_topic_partitions),
            None => self.topics.partition_count(super::OFFSETS_TOPIC),
        }
    }

    /// This broker acts as the partition's leader.
    fn leads(&self, topic: &str, partition: i32) -> bool {
        self.topics
            .partition(topic, partition)
            .is_some_and(|p| p.role.leading().is_some())
    }

    /// The node that coordinates a group: the leader of its partition of
    /// the offsets topic (this node, alone).
    pub fn coordinator_of(&self, offsets_partition: i32) -> Result<i32, ResponseError> {
        if self.cluster.is_none() {
            return Ok(self.config.node_id);
        }
        match self.registration(super::OFFSETS_TOPIC, offsets_partition) {
            Some(p) if p.leader >= 0 => Ok(p.leader),
            _ => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Why this node may not coordinate a group: in a cluster, the leader
    /// of the group's offsets partition coordinates it.
    pub fn not_coordinator(&mut self, group_id: &str) -> Option<ResponseError> {
        self.cluster.as_ref()?;
        if !self.topics.contains(super::OFFSETS_TOPIC) {
            self.request_offsets_topic();
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let partitions = self.offsets_partition_count();
        let partition = super::groups::offsets_partition(group_id, partitions);
        match self.coordinator_of(partition) {
            // Its lease ended: the group may have moved already.
            Ok(leader) if leader == self.config.node_id && !self.acting() => {
                Some(ResponseError::NotCoordinator)
            }
            Ok(leader)
                if leader == self.config.node_id && self.leads(super::OFFSETS_TOPIC, partition) =>
            {
                None
            }
            // Named, not acting yet: its groups are not loaded.
            Ok(leader) if leader == self.config.node_id => {
                Some(ResponseError::CoordinatorLoadInProgress)
            }
            Ok(_) => Some(ResponseError::NotCoordinator),
            Err(error) => Some(error),
        }
    }

    /// The coordinator of a group as clients reach it, in a cluster.
    pub fn coordinator_address(
        &mut self,
        group_id: &str,
    ) -> Result<super::BrokerAddress, ResponseError> {
        if !self.topics.contains(super::OFFSETS_TOPIC) {
            self.request_offsets_topic();
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let partitions = self.offsets_partition_count();
        let leader = self.coordinator_of(super::groups::offsets_partition(group_id, partitions))?;
        self.coordinator_address_of(leader)
    }

    /// A producer id from the block the controller gave this broker (ids of
    /// a cluster are unique across brokers); when there is none left, a new
    /// block is asked for and the client is told to retry.
    pub fn cluster_producer_id(&mut self) -> Result<i64, ResponseError> {
        let cluster = self.cluster.as_mut().expect("in a cluster");
        match &mut cluster.producer_block {
            Some((next, end)) if *next < *end => {
                let id = *next;
                *next += 1;
                Ok(id)
            }
            _ => {
                cluster.wants_producer_block = true;
                Err(ResponseError::CoordinatorLoadInProgress)
            }
        }
    }

    /// Names whose auto-creation this node asked the controller for and
    /// that still wait to be sent.
    pub fn take_forwarded_creations(&mut self) -> BTreeSet<String> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.forward))
            .unwrap_or_default()
    }
}

/// How many of `replicas` (one list per partition) each broker holds.
fn replicas_by_broker(replicas: &[Vec<i32>]) -> BTreeMap<i32, i64> {
    let mut placed = BTreeMap::new();
    for &broker in replicas.iter().flatten() {
        *placed.entry(broker).or_insert(0) += 1;
    }
    placed
}

fn partition_records(topic_id: Uuid, first: i32, replicas: Vec<Vec<i32>>) -> Vec<MetadataRecord> {
    replicas
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| {
            MetadataRecord::Partition(PartitionRecord {
                partition_id: first + i as i32,
                topic_id,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                ..PartitionRecord::default()
            })
        })
        .collect()
}
