//! Committed offsets: OffsetCommit (written to `__consumer_offsets`,
//! answered once durable), TxnOffsetCommit (a transaction's offsets,
//! written the same way inside the producer's transaction and pending
//! until its marker) and OffsetFetch (answered once every commit made
//! before it is durable; with require_stable, a partition an open
//! transaction holds an offset of answers UNSTABLE_OFFSET_COMMIT).

use std::collections::BTreeMap;

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::group::{str_of, strb};
use super::{code, now, Context, Handled, Pending};
use crate::broker::verify::{Verification, VerifyRequest};
use crate::broker::Broker;
use crate::group::Committed;
use crate::storage::Storage;
use crate::wire::Reply;

pub(super) fn offset_commit<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: OffsetCommitRequest,
) -> Handled {
    let group_id = str_of(&request.group_id.0);
    let not_coordinator = if group_id.is_empty() {
        None
    } else {
        broker.not_coordinator(&group_id)
    };
    let allowed = if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if broker.storage_offline() {
        Err(ResponseError::CoordinatorNotAvailable)
    } else if let Some(error) = not_coordinator {
        Err(error)
    } else if broker.groups.fenced(
        &group_id,
        &str_of(&request.member_id),
        request.group_instance_id.as_ref().map(str_of).as_deref(),
    ) {
        Err(ResponseError::FencedInstanceId)
    } else {
        broker.groups.may_commit(
            &group_id,
            request.generation_id_or_member_epoch,
            &str_of(&request.member_id),
        )
    };
    let mut records = Vec::new();
    let mut topics = Vec::new();
    for topic in &request.topics {
        let name = str_of(&topic.name.0);
        let partition_count = broker.topics.partition_count(&name);
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let error = match allowed {
                    Err(e) => Some(e),
                    Ok(()) if !(0..partition_count).contains(&p.partition_index) => {
                        Some(ResponseError::UnknownTopicOrPartition)
                    }
                    Ok(()) => None,
                };
                if error.is_none() {
                    let committed = Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(str_of)
                            .unwrap_or_default(),
                        commit_timestamp_ms: context.now.wall_ms,
                        record_offset: -1,
                    };
                    records.push((name.clone(), p.partition_index, Some(committed)));
                }
                offset_commit_response::OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error.map_or(0, code))
            })
            .collect();
        topics.push(
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    let response = OffsetCommitResponse::default().with_topics(topics);
    if records.is_empty() {
        return now(Reply::OffsetCommit(response));
    }
    let written = match broker.write_offsets(context.now, &group_id, &records) {
        Ok(written) => written,
        Err(error) => {
            let mut failed = response;
            for partition in failed
                .topics
                .iter_mut()
                .flat_map(|t| t.partitions.iter_mut())
            {
                partition.error_code = code(error);
            }
            return now(Reply::OffsetCommit(failed));
        }
    };
    Ok(Pending::after_group_write(
        Some(written),
        Reply::OffsetCommit(response),
    ))
}

/// What TxnOffsetCommit answers when its transaction could not be
/// verified (Kafka's coordinator runtime mapping): a coordinator that could
/// not be reached, or a transaction whose last change is not safe yet, is
/// retried as loading or unavailable; the rest as the transaction
/// coordinator said.
fn offsets_verification_error(error: ResponseError) -> ResponseError {
    match error {
        // A transaction whose last change is not safe yet is asked about
        // again: Java's client retries a loading coordinator.
        ResponseError::NetworkException | ResponseError::ConcurrentTransactions => {
            ResponseError::CoordinatorLoadInProgress
        }
        ResponseError::NotEnoughReplicas | ResponseError::RequestTimedOut => {
            ResponseError::CoordinatorNotAvailable
        }
        error => error,
    }
}

/// TxnOffsetCommit. As Kafka's request handler does, partitions of
/// unknown topics answer UNKNOWN_TOPIC_OR_PARTITION before the coordinator
/// sees the rest; the coordinator's error (group, member, generation,
/// producer epoch, storage) then goes to every other partition. The
/// offsets are answered once their batch is durable (and replicated).
pub(super) fn txn_offset_commit<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: TxnOffsetCommitRequest,
) -> Handled {
    let group_id = str_of(&request.group_id.0);
    let mut records = Vec::new();
    let mut errors: Vec<Vec<Option<ResponseError>>> = Vec::new();
    for topic in &request.topics {
        let name = str_of(&topic.name.0);
        let partition_count = broker.topics.partition_count(&name);
        let topic_errors = topic
            .partitions
            .iter()
            .map(|p| {
                if !(0..partition_count).contains(&p.partition_index) {
                    return Some(ResponseError::UnknownTopicOrPartition);
                }
                let committed = Committed {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(str_of)
                        .unwrap_or_default(),
                    commit_timestamp_ms: context.now.wall_ms,
                    record_offset: -1,
                };
                records.push((name.clone(), p.partition_index, committed));
                None
            })
            .collect();
        errors.push(topic_errors);
    }
    if !records.is_empty() {
        let outcome = txn_offsets_allowed(broker, &request, &group_id).and_then(|()| {
            // KIP-890 verification: the transaction coordinator confirms,
            // before anything is appended, that this transactional id's
            // producer (id and epoch) added the group's
            // `__consumer_offsets` partition to its ongoing transaction
            // (AddOffsetsToTxn); if not, nothing is written and the
            // partitions not refused already get the error. A coordinator
            // on another broker is asked first (`broker::verify`).
            let offsets_partition = broker.group_offsets_partition(&group_id);
            let transactional_id = request.transactional_id.0.as_str();
            match broker.verify_txn(
                context.token,
                transactional_id,
                request.producer_id.0,
                request.producer_epoch,
                &offsets_partition,
            ) {
                Verification::Verified => {}
                Verification::Refused(error) => return Err(offsets_verification_error(error)),
                Verification::Ask { coordinator } => {
                    return Ok(Err(VerifyRequest {
                        coordinator,
                        transactional_id: transactional_id.to_string(),
                        producer_id: request.producer_id.0,
                        producer_epoch: request.producer_epoch,
                        partitions: vec![offsets_partition],
                    }))
                }
            }
            broker
                .write_transactional_offsets(
                    context.now,
                    &group_id,
                    request.producer_id.0,
                    request.producer_epoch,
                    &records,
                )
                .map(Ok)
        });
        let outcome = match outcome {
            Ok(Err(ask)) => {
                broker.begin_verification(context.token, ask.producer_id, &ask.partitions);
                return Ok(Pending::Verify(ask));
            }
            Ok(Ok(written)) => Ok(written),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(written) => {
                let response = txn_offset_commit_response(&request, &errors, None);
                return Ok(Pending::after_group_write(
                    Some(written),
                    Reply::TxnOffsetCommit(response),
                ));
            }
            Err(mut error) => {
                // Clients before v2 (Kafka 2.0) do not expect the loading error.
                if context.header.version < 2 && error == ResponseError::CoordinatorLoadInProgress {
                    error = ResponseError::CoordinatorNotAvailable;
                }
                let response = txn_offset_commit_response(&request, &errors, Some(error));
                return now(Reply::TxnOffsetCommit(response));
            }
        }
    }
    now(Reply::TxnOffsetCommit(txn_offset_commit_response(
        &request, &errors, None,
    )))
}

/// The coordinator's checks of a TxnOffsetCommit before its offsets are
/// written: the group id, this node's role, and the member (v3+).
fn txn_offsets_allowed<S: Storage>(
    broker: &mut Broker<S>,
    request: &TxnOffsetCommitRequest,
    group_id: &str,
) -> Result<(), ResponseError> {
    if broker.storage_offline() {
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    if group_id.is_empty() {
        return Err(ResponseError::InvalidGroupId);
    }
    if let Some(error) = broker.not_coordinator(group_id) {
        return Err(error);
    }
    broker.groups.may_commit_transactional(
        group_id,
        request.generation_id,
        &str_of(&request.member_id),
        request.group_instance_id.as_ref().map(str_of).as_deref(),
    )
}

/// The answer of a TxnOffsetCommit: each partition's own error (an unknown
/// topic or partition), else `error` (the coordinator's) or none.
fn txn_offset_commit_response(
    request: &TxnOffsetCommitRequest,
    errors: &[Vec<Option<ResponseError>>],
    error: Option<ResponseError>,
) -> TxnOffsetCommitResponse {
    let topics = request
        .topics
        .iter()
        .zip(errors)
        .map(|(topic, topic_errors)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(topic_errors)
                .map(|(p, own)| {
                    txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(own.or(error).map_or(0, code))
                })
                .collect();
            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(super) fn offset_fetch<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: OffsetFetchRequest,
) -> Handled {
    let mut response = OffsetFetchResponse::default();
    // v7+: Java consumers always set it.
    let require_stable = request.require_stable;
    if context.header.version >= 8 {
        for group in &request.groups {
            if let Some(error) = broker.not_coordinator(&str_of(&group.group_id.0)) {
                response.groups.push(
                    offset_fetch_response::OffsetFetchResponseGroup::default()
                        .with_group_id(group.group_id.clone())
                        .with_error_code(error.code()),
                );
                continue;
            }
            let wanted = group.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| (str_of(&t.name.0), t.partition_indexes.clone()))
                    .collect()
            });
            let group_id = str_of(&group.group_id.0);
            let topics = committed_for(broker, &group_id, wanted, require_stable)
                .into_iter()
                .map(|(topic, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(p, found)| {
                            let (offset, leader_epoch, metadata, error) = committed_fields(found);
                            offset_fetch_response::OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(leader_epoch)
                                .with_metadata(Some(strb(metadata)))
                                .with_error_code(error)
                        })
                        .collect();
                    offset_fetch_response::OffsetFetchResponseTopics::default()
                        .with_name(TopicName(strb(topic)))
                        .with_partitions(partitions)
                })
                .collect();
            response.groups.push(
                offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id.clone())
                    .with_topics(topics),
            );
        }
    } else if let Some(error) = broker.not_coordinator(&str_of(&request.group_id.0)) {
        // Below v2 there is no top-level error; the client retries on
        // what its partitions say, which is left empty.
        response.error_code = error.code();
    } else {
        let wanted = request.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|t| (str_of(&t.name.0), t.partition_indexes.clone()))
                .collect()
        });
        // The leader epoch field exists from v5 on; below, it is not encoded.
        let group_id = str_of(&request.group_id.0);
        response.topics = committed_for(broker, &group_id, wanted, require_stable)
            .into_iter()
            .map(|(topic, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|(p, found)| {
                        let (offset, leader_epoch, metadata, error) = committed_fields(found);
                        offset_fetch_response::OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(leader_epoch)
                            .with_metadata(Some(strb(metadata)))
                            .with_error_code(error)
                    })
                    .collect();
                offset_fetch_response::OffsetFetchResponseTopic::default()
                    .with_name(TopicName(strb(topic)))
                    .with_partitions(partitions)
            })
            .collect();
    }
    // Answered once every commit made before it is durable, so a commit
    // seen here can never vanish in a crash.
    let seq = broker.durability.write_seq();
    Ok(Pending::after_durable(
        Some(seq),
        Reply::OffsetFetch(response),
    ))
}

/// What OffsetFetch answers for one partition: its commit if there is
/// one, or UNSTABLE_OFFSET_COMMIT while an open transaction holds an
/// offset of it (asked with require_stable).
type Found = Result<Option<Committed>, ResponseError>;

/// A topic's partitions, each with what was found.
type TopicCommits = (String, Vec<(i32, Found)>);

/// A group's committed offsets, by topic, for the partitions asked for
/// (every committed one when the request names no topics). With
/// `require_stable`, a partition with a pending transactional offset is
/// UNSTABLE_OFFSET_COMMIT instead, as Kafka's `fetchOffsets` answers: per
/// partition, so the client retries those alone.
fn committed_for<S: Storage>(
    broker: &Broker<S>,
    group_id: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Vec<TopicCommits> {
    let committed = broker.groups.offsets.get(group_id);
    let wanted = wanted.unwrap_or_else(|| {
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in committed.into_iter().flat_map(|o| o.keys()) {
            by_topic.entry(topic.clone()).or_default().push(*partition);
        }
        by_topic.into_iter().collect()
    });
    wanted
        .into_iter()
        .map(|(topic, partitions)| {
            let found = partitions
                .into_iter()
                .map(|p| {
                    if require_stable && broker.groups.has_pending(group_id, &topic, p) {
                        return (p, Err(ResponseError::UnstableOffsetCommit));
                    }
                    let entry = committed.and_then(|o| o.get(&(topic.clone(), p))).cloned();
                    (p, Ok(entry))
                })
                .collect();
            (topic, found)
        })
        .collect()
}

/// Offset, leader epoch, metadata and error code of what was found, with
/// Kafka's "none" values when there is no commit to give.
fn committed_fields(found: Found) -> (i64, i32, String, i16) {
    match found {
        Ok(Some(c)) => (c.offset, c.leader_epoch, c.metadata, 0),
        Ok(None) => (-1, -1, String::new(), 0),
        Err(error) => (-1, -1, String::new(), code(error)),
    }
}
