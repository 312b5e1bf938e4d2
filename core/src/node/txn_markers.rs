//! The transaction coordinator's markers for partitions other brokers
//! lead: WriteTxnMarkers over their own peer link ("txn"), one request per
//! leader, answered once the markers are durable and replicated there.
//! Retriable errors and lost links put the markers back to be sent again.

use std::collections::BTreeMap;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{Node, SentRequest};
use crate::broker::txns::RemoteMarker;
use crate::storage::Storage;
use crate::types::{Channel, NodeId, Now, TopicPartition};
use crate::wire::reply::decode_response;

/// WriteTxnMarkers as brokers speak it since Kafka 4.0 (v0 is gone).
pub(super) const WRITE_TXN_MARKERS_VERSION: i16 = 1;

/// What a WriteTxnMarkers request carries, to read its answer by: the
/// transactional id, producer id and partition of each marker.
pub(super) type MarkersSent = Vec<(String, i64, TopicPartition)>;

impl<S: Storage> Node<S> {
    /// Sends the markers the coordinator queued, one request per leader;
    /// those that cannot go now are put back for a retry.
    pub(super) fn send_txn_markers(&mut self, now: Now) {
        let outbox = std::mem::take(&mut self.broker.transactions.outbox);
        if outbox.is_empty() {
            return;
        }
        let mut by_leader: BTreeMap<i32, Vec<RemoteMarker>> = BTreeMap::new();
        for marker in outbox {
            by_leader.entry(marker.leader).or_default().push(marker);
        }
        for (leader, markers) in by_leader {
            let link = (NodeId(leader), Channel::Markers);
            let up = self.peers.get(&link).is_some_and(|l| l.up);
            let sent = up && {
                let request = write_txn_markers_request(&markers);
                let carried = markers
                    .iter()
                    .map(|m| {
                        (
                            m.transactional_id.clone(),
                            m.marker.producer_id,
                            m.partition.clone(),
                        )
                    })
                    .collect();
                self.send_peer_markers(now, link, &request, carried)
            };
            if !sent {
                for m in &markers {
                    self.broker.marker_answered(
                        now,
                        &m.transactional_id,
                        m.marker.producer_id,
                        &m.partition,
                        Some(ResponseError::NetworkException),
                    );
                }
            }
        }
    }

    /// A leader's answer to markers this node sent.
    pub(super) fn txn_markers_response(
        &mut self,
        now: Now,
        peer: NodeId,
        sent: SentRequest,
        frame: bytes::Bytes,
    ) {
        let answers: Vec<(i64, TopicPartition, i16)> =
            match decode_response::<WriteTxnMarkersResponse>(sent.api_key, sent.version, frame) {
                Ok((_, response)) => response
                    .markers
                    .iter()
                    .flat_map(|m| {
                        m.topics.iter().flat_map(move |t| {
                            t.partitions.iter().map(move |p| {
                                (
                                    m.producer_id.0,
                                    TopicPartition::new(t.name.0.to_string(), p.partition_index),
                                    p.error_code,
                                )
                            })
                        })
                    })
                    .collect(),
                Err(error) => {
                    tracing::warn!(%peer, %error, "bad WriteTxnMarkers response");
                    Vec::new()
                }
            };
        for (id, producer_id, partition) in sent.markers {
            let error = match answers
                .iter()
                .find(|(pid, tp, _)| *pid == producer_id && *tp == partition)
            {
                Some((_, _, 0)) => None,
                Some((_, _, code)) => Some(
                    ResponseError::try_from_code(*code)
                        .unwrap_or(ResponseError::UnknownServerError),
                ),
                // Not answered for: send it again.
                None => Some(ResponseError::NetworkException),
            };
            self.broker
                .marker_answered(now, &id, producer_id, &partition, error);
        }
    }

    /// Markers whose request will get no answer (its link went down).
    pub(super) fn txn_markers_lost(&mut self, now: Now, lost: &[SentRequest]) {
        for sent in lost {
            for (id, producer_id, partition) in &sent.markers {
                self.broker.marker_answered(
                    now,
                    id,
                    *producer_id,
                    partition,
                    Some(ResponseError::NetworkException),
                );
            }
        }
    }
}

/// One request for a leader: a marker entry per transaction, with its
/// partitions by topic.
fn write_txn_markers_request(markers: &[RemoteMarker]) -> WriteTxnMarkersRequest {
    // Producer id, epoch, result and coordinator epoch: one entry each.
    type Entry = (i64, i16, bool, i32);
    let mut entries: BTreeMap<Entry, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for m in markers {
        let key = (
            m.marker.producer_id,
            m.marker.producer_epoch,
            m.marker.commit,
            m.marker.coordinator_epoch,
        );
        entries
            .entry(key)
            .or_default()
            .entry(m.partition.topic.clone())
            .or_default()
            .push(m.partition.partition);
    }
    let markers = entries
        .into_iter()
        .map(
            |((producer_id, epoch, commit, coordinator_epoch), topics)| {
                write_txn_markers_request::WritableTxnMarker::default()
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(epoch)
                    .with_transaction_result(commit)
                    .with_coordinator_epoch(coordinator_epoch)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(name, partitions)| {
                                write_txn_markers_request::WritableTxnMarkerTopic::default()
                                    .with_name(TopicName(StrBytes::from_string(name)))
                                    .with_partition_indexes(partitions)
                            })
                            .collect(),
                    )
            },
        )
        .collect();
    WriteTxnMarkersRequest::default().with_markers(markers)
}
