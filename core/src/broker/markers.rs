//! Transaction markers on the partitions this broker leads: the partition
//! side of ending a transaction. The transaction coordinator (through
//! WriteTxnMarkers, or in the same node) asks each partition of a
//! transaction to append a COMMIT or ABORT marker; the log checks it
//! against the producer state (`PartitionLog::append_marker`), and the
//! marker counts as written once it is durable here and, with followers,
//! under the partition's high watermark (Kafka appends markers with
//! acks=all).

use kafka_protocol::ResponseError;

use super::{Broker, OFFSETS_TOPIC};
use crate::broker::replicas::HighWatermark;
use crate::log::MarkerAppendError;
use crate::producers::{MarkerError, TxnMarker};
use crate::storage::Storage;
use crate::types::{Now, TopicPartition};

/// What a marker written waits for before it counts as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerWrite {
    /// The write sequence after which the marker is durable here.
    pub seq: u64,
    /// When the partition has followers: its high watermark must pass the
    /// marker (None alone, where the sync is enough).
    pub mark: Option<HighWatermark>,
    /// The marker's offset.
    pub offset: i64,
}

impl<S: Storage> Broker<S> {
    /// Appends a transaction marker to a partition this broker leads.
    /// UNKNOWN_TOPIC_OR_PARTITION when it is not held here,
    /// NOT_LEADER_OR_FOLLOWER when another broker leads it,
    /// NOT_ENOUGH_REPLICAS when its ISR is below `min.insync.replicas`,
    /// INVALID_PRODUCER_EPOCH / TRANSACTION_COORDINATOR_FENCED when the
    /// producer state refuses it, KAFKA_STORAGE_ERROR when storage fails.
    pub fn write_txn_marker(
        &mut self,
        now: Now,
        topic: &str,
        partition: i32,
        marker: TxnMarker,
    ) -> Result<MarkerWrite, ResponseError> {
        if self.storage_offline() {
            return Err(ResponseError::KafkaStorageError);
        }
        if self.topics.partition(topic, partition).is_none() {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        if let Some(error) = self.not_leader(topic, partition) {
            return Err(error);
        }
        let leader_epoch = self.append_epoch(topic, partition);
        let held = self
            .topics
            .partition_mut(topic, partition)
            .expect("looked up above");
        if held.role.leading().is_some_and(|l| !l.enough_replicas()) {
            return Err(ResponseError::NotEnoughReplicas);
        }
        let appended = held
            .log
            .append_marker(&mut self.storage, &marker, leader_epoch, now.wall_ms)
            .map_err(|error| match error {
                MarkerAppendError::Refused(MarkerError::StaleEpoch) => {
                    ResponseError::InvalidProducerEpoch
                }
                MarkerAppendError::Refused(MarkerError::CoordinatorFenced) => {
                    ResponseError::TransactionCoordinatorFenced
                }
                MarkerAppendError::Io(error) => {
                    tracing::error!(topic, partition, %error, "cannot append a transaction marker");
                    ResponseError::KafkaStorageError
                }
            })?;
        tracing::debug!(
            topic,
            partition,
            producer_id = marker.producer_id,
            commit = marker.commit,
            offset = appended.base_offset,
            "wrote a transaction marker"
        );
        let seq = self.note_partition_write(topic, partition);
        self.void_verifications(marker.producer_id, &TopicPartition::new(topic, partition));
        // Fetches parked at read_committed look again: the LSO moves with
        // the marker once the high watermark passes it.
        self.moved.insert(TopicPartition::new(topic, partition));
        let mark = self.replication_mark(topic, partition, appended.last_offset + 1);
        if topic == OFFSETS_TOPIC {
            self.apply_offsets_marker(partition, marker.producer_id, marker.commit);
        }
        Ok(MarkerWrite {
            seq,
            mark,
            offset: appended.base_offset,
        })
    }
}
