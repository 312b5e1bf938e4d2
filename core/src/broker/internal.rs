//! Kafka's internal topics, `__consumer_offsets` and `__transaction_state`:
//! created on first use with their own partition counts and settings,
//! kept whole (no compaction yet), and in a cluster with three replicas
//! (as many as there are brokers, if fewer) of which two must be in sync.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use super::groups::GroupWrite;
use super::{Broker, OFFSETS_TOPIC};
use crate::batch::BatchHeader;
use crate::producers::SequenceError;
use crate::storage::Storage;
use crate::txn::TXN_TOPIC;
use crate::types::Now;

/// How an internal topic is created.
pub struct InternalTopic {
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

impl<S: Storage> Broker<S> {
    /// How `name` is created if it is an internal topic.
    pub fn internal_topic(&self, name: &str) -> Option<InternalTopic> {
        let partitions = match name {
            OFFSETS_TOPIC => self.config.offsets_topic_partitions,
            TXN_TOPIC => self.config.txn_topic_partitions,
            _ => return None,
        };
        let mut configs: BTreeMap<String, String> = [
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "104857600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let replication_factor = if self.cluster.is_some() {
            configs.insert("min.insync.replicas".into(), "2".into());
            self.placeable_brokers().len().clamp(1, 3) as i16
        } else {
            1
        };
        Some(InternalTopic {
            partitions,
            replication_factor,
            configs,
        })
    }

    /// In a cluster: has the controller create an internal topic (this
    /// node proposes it if it is the controller, else asks for it).
    pub fn request_internal_topic(&mut self, name: &str) {
        if self.topic_exists(name) {
            return;
        }
        let Some(spec) = self.internal_topic(name) else {
            return;
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if !cluster.is_controller {
            cluster.forward.insert(name.to_string());
            return;
        }
        let created = self.create_topic(
            name,
            spec.partitions,
            spec.configs,
            spec.replication_factor,
            None,
        );
        if let Err(error) = created {
            tracing::warn!(?error, "cannot create {name} yet");
        }
    }

    /// Appends a coordinator's batch to a partition of an internal topic
    /// this node leads, at the partition's leader epoch: the write to wait
    /// for (its sync, and its replication where the partition has
    /// followers) and the batch's base offset. `owner` (a group or a
    /// transactional id) names the write in the log line of a failure.
    pub(super) fn append_internal_batch(
        &mut self,
        now: Now,
        topic: &str,
        partition: i32,
        bytes: &[u8],
        owner: &str,
    ) -> Result<(GroupWrite, i64), ResponseError> {
        if self.storage_offline() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let epoch = self.append_epoch(topic, partition);
        let held = self
            .topics
            .partition_mut(topic, partition)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        // Kafka appends the coordinators' batches without the sequence
        // checks a client's batch gets (`AppendOrigin.COORDINATOR`): every
        // transactional offsets batch starts at sequence 0. The epoch check
        // stays: a fenced producer's offsets are refused.
        let header = BatchHeader::parse(bytes);
        if header.is_transactional()
            && held.log.producers().check(&header) == Err(SequenceError::StaleEpoch)
        {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        let appended = held
            .log
            .append(&mut self.storage, bytes, epoch, now.wall_ms)
            .map_err(|error| {
                tracing::error!(%error, owner, "cannot write to {topic}");
                ResponseError::KafkaStorageError
            })?;
        let seq = self.note_partition_write(topic, partition);
        let marks = self
            .replication_mark(topic, partition, appended.last_offset + 1)
            .into_iter()
            .collect();
        Ok((GroupWrite { seq, marks }, appended.base_offset))
    }
}
