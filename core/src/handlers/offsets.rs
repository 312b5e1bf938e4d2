//! Committed offsets: OffsetCommit (written to `__consumer_offsets`,
//! answered once durable) and OffsetFetch (answered once every commit made
//! before it is durable).

use std::collections::BTreeMap;

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::group::{str_of, strb};
use super::{code, now, Context, Handled, Pending};
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

pub(super) fn offset_fetch<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: OffsetFetchRequest,
) -> Handled {
    let mut response = OffsetFetchResponse::default();
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
            let topics = committed_for(broker, &str_of(&group.group_id.0), wanted)
                .into_iter()
                .map(|(topic, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(p, found)| {
                            let (offset, leader_epoch, metadata) = committed_fields(found);
                            offset_fetch_response::OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(leader_epoch)
                                .with_metadata(Some(strb(metadata)))
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
        response.topics = committed_for(broker, &str_of(&request.group_id.0), wanted)
            .into_iter()
            .map(|(topic, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|(p, found)| {
                        let (offset, leader_epoch, metadata) = committed_fields(found);
                        offset_fetch_response::OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(leader_epoch)
                            .with_metadata(Some(strb(metadata)))
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

/// A topic's partitions, each with its commit if there is one.
type TopicCommits = (String, Vec<(i32, Option<Committed>)>);

/// A group's committed offsets, by topic, for the partitions asked for
/// (every committed one when the request names no topics).
fn committed_for<S: Storage>(
    broker: &Broker<S>,
    group_id: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
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
                    let entry = committed.and_then(|o| o.get(&(topic.clone(), p))).cloned();
                    (p, entry)
                })
                .collect();
            (topic, found)
        })
        .collect()
}

/// Offset, leader epoch and metadata of a commit, or Kafka's "none" values.
fn committed_fields(found: Option<Committed>) -> (i64, i32, String) {
    found.map_or((-1, -1, String::new()), |c| {
        (c.offset, c.leader_epoch, c.metadata)
    })
}
