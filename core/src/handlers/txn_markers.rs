//! The partition side of transactions, as brokers and tools ask for it:
//! WriteTxnMarkers (a transaction coordinator has each partition leader
//! append COMMIT or ABORT markers; broker-to-broker, v1 only) and
//! DescribeProducers (the producer state of partitions this broker leads,
//! as `kafka-transactions.sh describe-producers` shows it).

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::{code, now, Context, Handled, HighWatermark, Pending, Wait};
use crate::broker::Broker;
use crate::producers::TxnMarker;
use crate::storage::Storage;
use crate::types::TopicPartition;
use crate::wire::Reply;

/// Appends every marker on every partition it names, and answers once each
/// appended marker is durable here and, where the partition has followers,
/// under its high watermark: the coordinator may then count it as written.
/// Each partition answers its own error, as Kafka's do.
pub(super) fn write_txn_markers<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: WriteTxnMarkersRequest,
) -> Handled {
    let mut response = WriteTxnMarkersResponse::default();
    let mut seq = None;
    // Per written marker: its partition, its offset and its mark if any.
    let mut written: Vec<(TopicPartition, i64, Option<HighWatermark>)> = Vec::new();
    for marker in &request.markers {
        let txn_marker = TxnMarker {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            coordinator_epoch: marker.coordinator_epoch,
            commit: marker.transaction_result,
        };
        let mut result = write_txn_markers_response::WritableTxnMarkerResult::default()
            .with_producer_id(marker.producer_id);
        for topic in &marker.topics {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|&index| {
                    let outcome = if txn_marker.producer_id < 0 {
                        Err(ResponseError::InvalidRequest)
                    } else {
                        broker.write_txn_marker(context.now, &name, index, txn_marker)
                    };
                    let error_code = match outcome {
                        Ok(write) => {
                            seq = seq.max(Some(write.seq));
                            let partition = TopicPartition::new(name.clone(), index);
                            written.push((partition, write.offset, write.mark));
                            0
                        }
                        Err(error) => code(error),
                    };
                    write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(error_code)
                })
                .collect();
            result.topics.push(
                write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_partitions(partitions),
            );
        }
        response.markers.push(result);
    }
    let reply = Reply::WriteTxnMarkers(response);
    let Some(seq) = seq else {
        return now(reply);
    };
    if written.iter().all(|(_, _, mark)| mark.is_none()) {
        return Ok(Pending::after_durable(Some(seq), reply));
    }
    // Some partitions wait for their followers: every partition then waits
    // for its high watermark, which on a partition without followers is
    // its synced end.
    let marks = written
        .into_iter()
        .map(|(partition, offset, mark)| {
            mark.unwrap_or_else(|| {
                let held = broker
                    .topics
                    .partition(&partition.topic, partition.partition);
                HighWatermark {
                    incarnation: held.map_or(0, |p| p.incarnation),
                    leader_epoch: held.and_then(|p| p.role.leading()).map(|l| l.leader_epoch),
                    offset: offset + 1,
                    deadline_ms: None,
                    partition,
                }
            })
        })
        .collect();
    Ok(Pending::After {
        wait: Wait::HighWatermarks(marks),
        reply: Box::new(reply),
    })
}

/// The producers of each asked partition this broker leads: epoch, last
/// sequence and timestamp, coordinator epoch, open transaction's start.
/// NOT_LEADER_OR_FOLLOWER where another broker leads it,
/// UNKNOWN_TOPIC_OR_PARTITION where no such partition exists.
pub(super) fn describe_producers<S: Storage>(
    broker: &mut Broker<S>,
    request: DescribeProducersRequest,
) -> Handled {
    let mut response = DescribeProducersResponse::default();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let partitions = topic
            .partition_indexes
            .iter()
            .map(|&index| {
                let answer = describe_producers_response::PartitionResponse::default()
                    .with_partition_index(index);
                let refusal = if broker.storage_offline() {
                    Some(ResponseError::KafkaStorageError)
                } else {
                    broker.not_leader(&name, index)
                };
                let held = broker.topics.partition(&name, index);
                match (refusal, held) {
                    (Some(error), _) => answer.with_error_code(code(error)),
                    (None, None) => {
                        answer.with_error_code(code(ResponseError::UnknownTopicOrPartition))
                    }
                    (None, Some(held)) => answer.with_active_producers(
                        held.log
                            .producers()
                            .views()
                            .map(|view| {
                                describe_producers_response::ProducerState::default()
                                    .with_producer_id(ProducerId(view.producer_id))
                                    .with_producer_epoch(view.epoch as i32)
                                    .with_last_sequence(view.last_sequence)
                                    .with_last_timestamp(view.last_timestamp)
                                    .with_coordinator_epoch(view.coordinator_epoch)
                                    .with_current_txn_start_offset(view.txn_start_offset)
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        response.topics.push(
            describe_producers_response::TopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    now(Reply::DescribeProducers(response))
}
