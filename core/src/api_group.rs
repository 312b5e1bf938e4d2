//! Handlers of the group coordinator's APIs, and the persistence of
//! committed offsets in the internal topic `__consumer_offsets` (Kafka's
//! record formats: key version 1, value version 3), rebuilt at start.
//!
//! This node is the coordinator of every group (one broker); the group's
//! partition of `__consumer_offsets` is `abs(javaHashCode(group)) % N`, as
//! Kafka places it, so the layout stays right when partitions get leaders
//! on several brokers.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::api::{code, ready, reply_after, Reply};
use crate::batch;
use crate::group::{Committed, Join, Resolved, SyncAnswer};
use crate::log::PartitionLog;
use crate::node::{ConnectionId, Node, ReplyHeader, SlotState};
use crate::storage::Storage;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
const GROUP_KEY_TYPE: i8 = 0;

/// Java's `String.hashCode` over UTF-16 code units, wrapping.
pub fn java_hash(text: &str) -> i32 {
    text.encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

/// The `__consumer_offsets` partition of a group, as Kafka computes it
/// (`Utils.abs` maps `i32::MIN` to 0).
pub fn offsets_partition(group_id: &str, partitions: i32) -> i32 {
    let hash = java_hash(group_id);
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

fn str_of(text: &StrBytes) -> String {
    text.as_str().to_string()
}

fn strb(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Handles a group API that arrived on `connection`; None when the key is
/// not a group API.
pub(crate) fn dispatch<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    connection: ConnectionId,
    header: ReplyHeader,
    client_id: &str,
    body: &mut Bytes,
) -> Option<Result<Option<SlotState>, String>> {
    use crate::api::decode;
    let version = header.version;
    let outcome = match header.api_key {
        ApiKey::FindCoordinator => {
            decode(body, version).and_then(|r| find_coordinator(node, header, r))
        }
        ApiKey::JoinGroup => decode(body, version)
            .and_then(|r| join_group(node, now_ms, connection, header, client_id, r)),
        ApiKey::SyncGroup => {
            decode(body, version).and_then(|r| sync_group(node, now_ms, header, r))
        }
        ApiKey::Heartbeat => decode(body, version).and_then(|r| heartbeat(node, now_ms, header, r)),
        ApiKey::LeaveGroup => {
            decode(body, version).and_then(|r| leave_group(node, now_ms, header, r))
        }
        ApiKey::OffsetCommit => {
            decode(body, version).and_then(|r| offset_commit(node, now_ms, header, r))
        }
        ApiKey::OffsetFetch => decode(body, version).and_then(|r| offset_fetch(node, header, r)),
        ApiKey::ListGroups => decode(body, version).and_then(|r| list_groups(node, header, r)),
        ApiKey::DescribeGroups => {
            decode(body, version).and_then(|r| describe_groups(node, header, r))
        }
        ApiKey::DeleteGroups => {
            decode(body, version).and_then(|r| delete_groups(node, now_ms, header, r))
        }
        _ => return None,
    };
    Some(outcome)
}

fn find_coordinator<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: FindCoordinatorRequest,
) -> Result<Option<SlotState>, String> {
    let (node_id, host, port) = node.broker_endpoint();
    let error = if request.key_type != GROUP_KEY_TYPE || node.storage_failed {
        // Transactions need a transaction coordinator, which is not served yet.
        Some(ResponseError::CoordinatorNotAvailable)
    } else {
        None
    };
    let mut response = FindCoordinatorResponse::default();
    if header.version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let found = find_coordinator_response::Coordinator::default().with_key(key.clone());
                match error {
                    Some(e) => found
                        .with_error_code(code(e))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                    None => found
                        .with_node_id(BrokerId(node_id))
                        .with_host(host.clone())
                        .with_port(port),
                }
            })
            .collect();
    } else {
        response = match error {
            Some(e) => response
                .with_error_code(code(e))
                .with_node_id(BrokerId(-1))
                .with_port(-1),
            None => response
                .with_node_id(BrokerId(node_id))
                .with_host(host)
                .with_port(port),
        };
    }
    ready(header, Reply::FindCoordinator(response))
}

fn join_group<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    connection: ConnectionId,
    header: ReplyHeader,
    client_id: &str,
    request: JoinGroupRequest,
) -> Result<Option<SlotState>, String> {
    let client_host = node
        .client_host_of(connection)
        .expect("requests are dispatched only on registered connections")
        .to_string();
    let join = Join {
        group_id: str_of(&request.group_id.0),
        member_id: str_of(&request.member_id),
        group_instance_id: request.group_instance_id.as_ref().map(str_of),
        client_id: client_id.to_string(),
        client_host,
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if header.version == 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        },
        protocol_type: str_of(&request.protocol_type),
        protocols: request
            .protocols
            .iter()
            .map(|p| (str_of(&p.name), p.metadata.clone()))
            .collect(),
        require_known_member_id: header.version >= 4,
    };
    let token = node.next_token();
    let Node { groups, rng, .. } = node;
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    let answer = groups.join(now_ms, token, join, || {
        format!("{prefix}-{}", crate::metadata::hex(&rng.uuid()))
    });
    node.collect_group_answers(now_ms);
    match answer {
        Some(answer) => ready(header, join_reply(Resolved::Join(answer), header.version)),
        None => Ok(Some(SlotState::Deferred(token))),
    }
}

/// The reply of a (possibly deferred) group answer at the request's version.
pub(crate) fn join_reply(resolved: Resolved, version: i16) -> Reply {
    match resolved {
        Resolved::Join(answer) => {
            let protocol_name = match (&answer.protocol, version >= 7) {
                (Some(name), _) => Some(strb(name.clone())),
                (None, true) => None,
                (None, false) => Some(StrBytes::default()),
            };
            let mut response = JoinGroupResponse::default()
                .with_error_code(answer.error.map_or(0, code))
                .with_generation_id(answer.generation)
                .with_protocol_name(protocol_name)
                .with_leader(strb(answer.leader))
                .with_member_id(strb(answer.member_id))
                .with_members(
                    answer
                        .members
                        .into_iter()
                        .map(|(id, instance, metadata)| {
                            let member = join_group_response::JoinGroupResponseMember::default()
                                .with_member_id(strb(id))
                                .with_metadata(metadata);
                            if version >= 5 {
                                member.with_group_instance_id(instance.map(strb))
                            } else {
                                member
                            }
                        })
                        .collect(),
                );
            if version >= 7 && !answer.protocol_type.is_empty() {
                response.protocol_type = Some(strb(answer.protocol_type));
            }
            Reply::JoinGroup(response)
        }
        Resolved::Sync(answer) => Reply::SyncGroup(sync_response(answer, version)),
    }
}

fn sync_response(answer: SyncAnswer, version: i16) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default()
        .with_error_code(answer.error.map_or(0, code))
        .with_assignment(answer.assignment);
    if version >= 5 {
        response.protocol_type = Some(strb(answer.protocol_type)).filter(|t| !t.is_empty());
        response.protocol_name = answer.protocol.map(strb);
    }
    response
}

fn sync_group<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: SyncGroupRequest,
) -> Result<Option<SlotState>, String> {
    let token = node.next_token();
    let assignments = request
        .assignments
        .iter()
        .map(|a| (str_of(&a.member_id), a.assignment.clone()))
        .collect();
    let group_id = str_of(&request.group_id.0);
    let member_id = str_of(&request.member_id);
    let instance = request.group_instance_id.as_ref().map(str_of);
    if node
        .groups
        .fenced(&group_id, &member_id, instance.as_deref())
    {
        let answer = SyncAnswer {
            error: Some(ResponseError::FencedInstanceId),
            protocol_type: String::new(),
            protocol: None,
            assignment: Bytes::new(),
        };
        return ready(
            header,
            Reply::SyncGroup(sync_response(answer, header.version)),
        );
    }
    let answer = node.groups.sync(
        now_ms,
        token,
        &group_id,
        request.generation_id,
        &member_id,
        assignments,
    );
    node.collect_group_answers(now_ms);
    match answer {
        Some(answer) => ready(
            header,
            Reply::SyncGroup(sync_response(answer, header.version)),
        ),
        None => Ok(Some(SlotState::Deferred(token))),
    }
}

fn heartbeat<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: HeartbeatRequest,
) -> Result<Option<SlotState>, String> {
    let (group_id, member_id) = (str_of(&request.group_id.0), str_of(&request.member_id));
    let instance = request.group_instance_id.as_ref().map(str_of);
    let error = if node
        .groups
        .fenced(&group_id, &member_id, instance.as_deref())
    {
        Some(ResponseError::FencedInstanceId)
    } else {
        node.groups
            .heartbeat(now_ms, &group_id, request.generation_id, &member_id)
    };
    node.collect_group_answers(now_ms);
    ready(
        header,
        Reply::Heartbeat(HeartbeatResponse::default().with_error_code(error.map_or(0, code))),
    )
}

fn leave_group<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: LeaveGroupRequest,
) -> Result<Option<SlotState>, String> {
    let group_id = str_of(&request.group_id.0);
    let ids: Vec<String> = if header.version >= 3 {
        request
            .members
            .iter()
            .map(|m| str_of(&m.member_id))
            .collect()
    } else {
        vec![str_of(&request.member_id)]
    };
    let errors = node.groups.leave(now_ms, &group_id, &ids);
    node.collect_group_answers(now_ms);
    let mut response = LeaveGroupResponse::default();
    if header.version >= 3 {
        response.members = request
            .members
            .iter()
            .zip(&errors)
            .map(|(m, e)| {
                leave_group_response::MemberResponse::default()
                    .with_member_id(m.member_id.clone())
                    .with_group_instance_id(m.group_instance_id.clone())
                    .with_error_code(e.map_or(0, code))
            })
            .collect();
    } else {
        response.error_code = errors.first().copied().flatten().map_or(0, code);
    }
    ready(header, Reply::LeaveGroup(response))
}

fn offset_commit<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: OffsetCommitRequest,
) -> Result<Option<SlotState>, String> {
    let group_id = str_of(&request.group_id.0);
    let allowed = if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if node.storage_failed {
        Err(ResponseError::CoordinatorNotAvailable)
    } else if node.groups.fenced(
        &group_id,
        &str_of(&request.member_id),
        request.group_instance_id.as_ref().map(str_of).as_deref(),
    ) {
        Err(ResponseError::FencedInstanceId)
    } else {
        node.groups.may_commit(
            &group_id,
            request.generation_id_or_member_epoch,
            &str_of(&request.member_id),
        )
    };
    let mut records = Vec::new();
    let mut topics = Vec::new();
    for topic in &request.topics {
        let name = str_of(&topic.name.0);
        let partition_count = node
            .topics
            .get(&name)
            .map_or(0, |t| t.partitions.len() as i32);
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
                        commit_timestamp_ms: now_ms,
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
        return ready(header, Reply::OffsetCommit(response));
    }
    let seq = match write_offsets(node, now_ms, &group_id, &records) {
        Ok(seq) => seq,
        Err(error) => {
            let mut failed = response;
            for partition in failed
                .topics
                .iter_mut()
                .flat_map(|t| t.partitions.iter_mut())
            {
                partition.error_code = code(error);
            }
            return ready(header, Reply::OffsetCommit(failed));
        }
    };
    let mut failed = response.clone();
    reply_after(header, Some(seq), Reply::OffsetCommit(response), || {
        for partition in failed
            .topics
            .iter_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            partition.error_code = crate::api::storage_error(partition.error_code);
        }
        Reply::OffsetCommit(failed)
    })
}

/// Appends commits (or tombstones, `None`) of a group to its
/// `__consumer_offsets` partition and applies them; returns the sequence to
/// wait for.
fn write_offsets<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    group_id: &str,
    records: &[(String, i32, Option<Committed>)],
) -> Result<u64, ResponseError> {
    let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = records
        .iter()
        .map(|(topic, index, committed)| {
            (
                offset_key(group_id, topic, *index),
                committed.as_ref().map(offset_value),
            )
        })
        .collect();
    let seq = append_records(node, now_ms, group_id, &encoded)?;
    for (topic, index, committed) in records {
        match committed {
            Some(committed) => node
                .groups
                .commit(group_id, topic, *index, committed.clone()),
            None => {
                if let Some(offsets) = node.groups.offsets.get_mut(group_id) {
                    offsets.remove(&(topic.clone(), *index));
                }
            }
        }
    }
    Ok(seq)
}

/// Appends keyed records (a `None` value is a tombstone) to a group's
/// `__consumer_offsets` partition, as one batch; returns the sequence that
/// makes them durable.
fn append_records<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    group_id: &str,
    records: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<u64, ResponseError> {
    if node.storage_failed {
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    let created = ensure_offsets_topic(node)?;
    let partitions = node
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(1, |t| t.partitions.len() as i32);
    let partition = offsets_partition(group_id, partitions);
    let specs: Vec<batch::RecordSpec<'_>> = records
        .iter()
        .map(|(key, value)| (Some(&key[..]), value.as_deref(), Vec::new(), 0))
        .collect();
    let bytes = batch::build_batch(now_ms, &specs);
    let log = node
        .topics
        .get_mut(OFFSETS_TOPIC)
        .and_then(|t| t.partitions.get_mut(partition as usize))
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    log.append(&mut node.storage, &bytes, 0, now_ms)
        .map_err(|error| {
            tracing::error!(%error, group = group_id, "cannot write to {OFFSETS_TOPIC}");
            ResponseError::KafkaStorageError
        })?;
    Ok(created.max(node.note_partition_write(OFFSETS_TOPIC, partition)))
}

/// Creates `__consumer_offsets` on first use, like Kafka's internal topic.
/// Without compaction its records are kept forever (no retention).
fn ensure_offsets_topic<S: Storage>(node: &mut Node<S>) -> Result<u64, ResponseError> {
    if node.topics.contains_key(OFFSETS_TOPIC) {
        return Ok(0);
    }
    let partitions = node.config.offsets_topic_partitions;
    let configs: BTreeMap<String, String> = [
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("segment.bytes", "104857600"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    node.create_topic(OFFSETS_TOPIC, partitions, configs)
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.put_i16(text.len() as i16);
    out.put_slice(text.as_bytes());
}

/// Kafka's offset commit key, version 1: group, topic, partition.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(1);
    put_string(&mut out, group);
    put_string(&mut out, topic);
    out.put_i32(partition);
    out
}

/// Kafka's offset commit value, version 3.
pub fn offset_value(committed: &Committed) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(3);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    put_string(&mut out, &committed.metadata);
    out.put_i64(committed.commit_timestamp_ms);
    out
}

fn get_string(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let length = buf.get_i16();
    if length < 0 {
        return Some(String::new());
    }
    let length = length as usize;
    if buf.remaining() < length {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..length]).into_owned();
    buf.advance(length);
    Some(text)
}

/// Decodes an offset commit key (versions 0 and 1); None for other keys
/// (group metadata, version 2) or garbage.
pub fn parse_offset_key(mut key: &[u8]) -> Option<(String, String, i32)> {
    if key.remaining() < 2 || !matches!(key.get_i16(), 0 | 1) {
        return None;
    }
    let group = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    (key.remaining() >= 4).then(|| (group, topic, key.get_i32()))
}

/// Decodes an offset commit value of versions 0 to 3.
pub fn parse_offset_value(mut value: &[u8]) -> Option<Committed> {
    if value.remaining() < 10 {
        return None;
    }
    let version = value.get_i16();
    let offset = value.get_i64();
    let leader_epoch = if version >= 3 && value.remaining() >= 4 {
        value.get_i32()
    } else {
        -1
    };
    let metadata = get_string(&mut value)?;
    let commit_timestamp_ms = if value.remaining() >= 8 {
        value.get_i64()
    } else {
        -1
    };
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

/// Removes committed offsets past `offsets.retention.minutes` (tombstones).
pub(crate) fn expire_offsets<S: Storage>(node: &mut Node<S>, now_ms: i64) {
    let expired = node
        .groups
        .expired_offsets(now_ms, node.config.offsets_retention_ms);
    let mut by_group: BTreeMap<String, Vec<(String, i32, Option<Committed>)>> = BTreeMap::new();
    for (group, topic, partition) in expired {
        by_group
            .entry(group)
            .or_default()
            .push((topic, partition, None));
    }
    for (group, tombstones) in by_group {
        match write_offsets(node, now_ms, &group, &tombstones) {
            Ok(_) => {
                tracing::info!(group = %group, partitions = tombstones.len(), "expired committed offsets")
            }
            Err(error) => {
                tracing::error!(group = %group, ?error, "cannot expire committed offsets")
            }
        }
    }
}

/// Rebuilds committed offsets from `__consumer_offsets` at start.
pub(crate) fn load_offsets<S: Storage>(node: &mut Node<S>, now_ms: i64) {
    if node
        .config
        .mutated(crate::config::Mutation::ForgetCommittedOffsets)
    {
        return;
    }
    let Some(topic) = node.topics.get(OFFSETS_TOPIC) else {
        return;
    };
    let mut loaded = 0usize;
    let mut commits = Vec::new();
    let mut groups: BTreeMap<String, Option<crate::group::Group>> = BTreeMap::new();
    for log in &topic.partitions {
        for_each_record(log, &mut node.storage, |key, value| {
            let Some(key) = key else { return };
            if let Some((group, topic, partition)) = parse_offset_key(key) {
                commits.push((group, topic, partition, value.and_then(parse_offset_value)));
            } else if let Some(group) = parse_group_key(key) {
                groups.insert(group, value.and_then(parse_group_value));
            }
        });
    }
    for (group_id, group) in groups {
        if let Some(group) = group {
            node.groups.restore(now_ms, &group_id, group);
        }
    }
    for (group, topic, partition, committed) in commits {
        loaded += 1;
        match committed {
            Some(committed) => node.groups.commit(&group, &topic, partition, committed),
            None => {
                if let Some(offsets) = node.groups.offsets.get_mut(&group) {
                    offsets.remove(&(topic, partition));
                }
            }
        }
    }
    tracing::info!(
        records = loaded,
        groups = node.groups.offsets.len(),
        "loaded committed offsets"
    );
}

fn for_each_record<S: Storage>(
    log: &PartitionLog,
    storage: &mut S,
    mut visit: impl FnMut(Option<&[u8]>, Option<&[u8]>),
) {
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let Ok(bytes) = log.read(storage, offset, end, 1 << 20, true) else {
            return;
        };
        let before = offset;
        for (header, range) in batch::headers_in(&bytes) {
            offset = header.next_offset();
            match batch::decode_records(&bytes[range]) {
                Ok(records) => records
                    .iter()
                    .for_each(|r| visit(r.key.as_deref(), r.value.as_deref())),
                Err(error) => tracing::error!(%error, "unreadable batch in {OFFSETS_TOPIC}"),
            }
        }
        if offset == before {
            return;
        }
    }
}

fn offset_fetch<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: OffsetFetchRequest,
) -> Result<Option<SlotState>, String> {
    let committed_in = |node: &Node<S>, group: &str, topic: &str, partition: i32| {
        node.groups
            .offsets
            .get(group)
            .and_then(|o| o.get(&(topic.to_string(), partition)))
            .cloned()
    };
    let mut response = OffsetFetchResponse::default();
    if header.version >= 8 {
        for group in &request.groups {
            let group_id = str_of(&group.group_id.0);
            let wanted: Vec<(String, Vec<i32>)> = match &group.topics {
                Some(topics) => topics
                    .iter()
                    .map(|t| (str_of(&t.name.0), t.partition_indexes.clone()))
                    .collect(),
                None => all_committed(node, &group_id),
            };
            let topics = wanted
                .into_iter()
                .map(|(topic, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|p| {
                            let found = committed_in(node, &group_id, &topic, p);
                            offset_fetch_response::OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(found.as_ref().map_or(-1, |c| c.offset))
                                .with_committed_leader_epoch(
                                    found.as_ref().map_or(-1, |c| c.leader_epoch),
                                )
                                .with_metadata(Some(strb(
                                    found.map(|c| c.metadata).unwrap_or_default(),
                                )))
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
    } else {
        let group_id = str_of(&request.group_id.0);
        let wanted: Vec<(String, Vec<i32>)> = match &request.topics {
            Some(topics) => topics
                .iter()
                .map(|t| (str_of(&t.name.0), t.partition_indexes.clone()))
                .collect(),
            None => all_committed(node, &group_id),
        };
        response.topics = wanted
            .into_iter()
            .map(|(topic, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|p| {
                        let found = committed_in(node, &group_id, &topic, p);
                        let partition =
                            offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(found.as_ref().map_or(-1, |c| c.offset))
                                .with_metadata(Some(strb(
                                    found
                                        .as_ref()
                                        .map(|c| c.metadata.clone())
                                        .unwrap_or_default(),
                                )));
                        if header.version >= 5 {
                            partition
                                .with_committed_leader_epoch(found.map_or(-1, |c| c.leader_epoch))
                        } else {
                            partition
                        }
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
    let seq = node.write_seq();
    reply_after(header, Some(seq), Reply::OffsetFetch(response), || {
        Reply::OffsetFetch(
            OffsetFetchResponse::default()
                .with_error_code(code(ResponseError::CoordinatorNotAvailable)),
        )
    })
}

fn all_committed<S: Storage>(node: &Node<S>, group_id: &str) -> Vec<(String, Vec<i32>)> {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in node
        .groups
        .offsets
        .get(group_id)
        .map(|o| o.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        by_topic.entry(topic).or_default().push(partition);
    }
    by_topic.into_iter().collect()
}

fn list_groups<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: ListGroupsRequest,
) -> Result<Option<SlotState>, String> {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.as_str().to_lowercase())
        .collect();
    let groups = node
        .groups
        .groups
        .iter()
        .filter(|(_, g)| states.is_empty() || states.contains(&g.state.name().to_lowercase()))
        .map(|(id, g)| {
            let listed = list_groups_response::ListedGroup::default()
                .with_group_id(GroupId(strb(id.clone())))
                .with_protocol_type(strb(g.protocol_type.clone()));
            let listed = if header.version >= 4 {
                listed.with_group_state(strb(g.state.name()))
            } else {
                listed
            };
            if header.version >= 5 {
                listed.with_group_type(strb("classic"))
            } else {
                listed
            }
        })
        .collect();
    ready(
        header,
        Reply::ListGroups(ListGroupsResponse::default().with_groups(groups)),
    )
}

fn describe_groups<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: DescribeGroupsRequest,
) -> Result<Option<SlotState>, String> {
    let groups = request
        .groups
        .iter()
        .map(|id| {
            let described = describe_groups_response::DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(i32::MIN);
            let Some(group) = node.groups.groups.get(id.0.as_str()) else {
                let described = described.with_group_state(strb("Dead"));
                return if header.version >= 6 {
                    described.with_error_code(code(ResponseError::GroupIdNotFound))
                } else {
                    described
                };
            };
            let members = group
                .members
                .values()
                .map(|m| {
                    let metadata = group.metadata_of(m);
                    let member = describe_groups_response::DescribedGroupMember::default()
                        .with_member_id(strb(m.member_id.clone()))
                        .with_client_id(strb(m.client_id.clone()))
                        .with_client_host(strb(m.client_host.clone()))
                        .with_member_metadata(metadata)
                        .with_member_assignment(m.assignment.clone());
                    if header.version >= 4 {
                        member.with_group_instance_id(m.group_instance_id.clone().map(strb))
                    } else {
                        member
                    }
                })
                .collect();
            described
                .with_group_state(strb(group.state.name()))
                .with_protocol_type(strb(group.protocol_type.clone()))
                .with_protocol_data(strb(group.protocol.clone().unwrap_or_default()))
                .with_members(members)
        })
        .collect();
    ready(
        header,
        Reply::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups)),
    )
}

fn delete_groups<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: DeleteGroupsRequest,
) -> Result<Option<SlotState>, String> {
    let mut wait_seq = None;
    let mut results = Vec::new();
    for id in &request.groups_names {
        let group_id = str_of(&id.0);
        let tombstones: Vec<(String, i32, Option<Committed>)> = node
            .groups
            .offsets
            .get(&group_id)
            .map(|o| o.keys().map(|(t, p)| (t.clone(), *p, None)).collect())
            .unwrap_or_default();
        let outcome = node.groups.delete(&group_id).and_then(|()| {
            // Tombstones for the group's record and every committed offset.
            let group_seq = write_group_metadata(node, now_ms, std::slice::from_ref(&group_id));
            if tombstones.is_empty() {
                Ok(Some(group_seq))
            } else {
                write_offsets(node, now_ms, &group_id, &tombstones)
                    .map(|seq| Some(seq.max(group_seq)))
            }
        });
        let error = match outcome {
            Ok(seq) => {
                wait_seq = wait_seq.max(seq);
                None
            }
            Err(e) => Some(e),
        };
        results.push(
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(error.map_or(0, code)),
        );
    }
    let response = DeleteGroupsResponse::default().with_results(results.clone());
    reply_after(header, wait_seq, Reply::DeleteGroups(response), || {
        let failed = results.into_iter().map(|r| {
            let error_code = crate::api::storage_error(r.error_code);
            r.with_error_code(error_code)
        });
        Reply::DeleteGroups(DeleteGroupsResponse::default().with_results(failed.collect()))
    })
}

/// The answer to a deferred group request, at its version; when the group's
/// record could not be made durable, the member is told to find the
/// coordinator again instead.
pub(crate) fn deferred_reply(resolved: Resolved, version: i16, unrecorded: bool) -> Reply {
    if !unrecorded {
        return join_reply(resolved, version);
    }
    let error = ResponseError::CoordinatorNotAvailable;
    match resolved {
        Resolved::Join(mut answer) => {
            answer.error = Some(error);
            join_reply(Resolved::Join(answer), version)
        }
        Resolved::Sync(_) => Reply::SyncGroup(sync_response(
            SyncAnswer {
                error: Some(error),
                protocol_type: String::new(),
                protocol: None,
                assignment: Bytes::new(),
            },
            version,
        )),
    }
}

/// Kafka's group metadata key, version 2.
pub fn group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(2);
    put_string(&mut out, group);
    out
}

fn put_nullable_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

/// Kafka's group metadata value, version 3.
pub fn group_value(group: &crate::group::Group, now_ms: i64) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(3);
    put_string(&mut out, &group.protocol_type);
    out.put_i32(group.generation);
    put_nullable_string(&mut out, group.protocol.as_deref());
    put_nullable_string(&mut out, group.leader.as_deref());
    out.put_i64(now_ms);
    out.put_i32(group.members.len() as i32);
    for member in group.members.values() {
        put_string(&mut out, &member.member_id);
        put_nullable_string(&mut out, member.group_instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        put_bytes(&mut out, &group.metadata_of(member));
        put_bytes(&mut out, &member.assignment);
    }
    out
}

fn get_nullable_string(buf: &mut &[u8]) -> Option<Option<String>> {
    if buf.remaining() < 2 {
        return None;
    }
    if i16::from_be_bytes([buf[0], buf[1]]) < 0 {
        buf.advance(2);
        return Some(None);
    }
    get_string(buf).map(Some)
}

fn get_bytes(buf: &mut &[u8]) -> Option<Bytes> {
    if buf.remaining() < 4 {
        return None;
    }
    let length = buf.get_i32().max(0) as usize;
    if buf.remaining() < length {
        return None;
    }
    let bytes = Bytes::copy_from_slice(&buf[..length]);
    buf.advance(length);
    Some(bytes)
}

/// Decodes a group metadata key (version 2).
pub fn parse_group_key(mut key: &[u8]) -> Option<String> {
    if key.remaining() < 2 || key.get_i16() != 2 {
        return None;
    }
    get_string(&mut key)
}

/// Decodes a group metadata value of versions 0 to 3.
pub fn parse_group_value(mut value: &[u8]) -> Option<crate::group::Group> {
    if value.remaining() < 2 {
        return None;
    }
    let version = value.get_i16();
    let mut group = crate::group::Group::new();
    group.protocol_type = get_string(&mut value)?;
    if value.remaining() < 4 {
        return None;
    }
    group.generation = value.get_i32();
    group.protocol = get_nullable_string(&mut value)?;
    group.leader = get_nullable_string(&mut value)?;
    if version >= 2 {
        if value.remaining() < 8 {
            return None;
        }
        value.get_i64();
    }
    if value.remaining() < 4 {
        return None;
    }
    let count = value.get_i32().clamp(0, crate::group::MEMBERS_MAX as i32);
    for _ in 0..count {
        let member_id = get_string(&mut value)?;
        let group_instance_id = if version >= 3 {
            get_nullable_string(&mut value)?
        } else {
            None
        };
        let client_id = get_string(&mut value)?;
        let client_host = get_string(&mut value)?;
        let rebalance_timeout_ms = if version >= 1 && value.remaining() >= 4 {
            value.get_i32()
        } else {
            0
        };
        if value.remaining() < 4 {
            return None;
        }
        let session_timeout_ms = value.get_i32();
        let subscription = get_bytes(&mut value)?;
        let assignment = get_bytes(&mut value)?;
        let protocols = vec![(group.protocol.clone().unwrap_or_default(), subscription)];
        group.members.insert(
            member_id.clone(),
            crate::group::Member {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms: if rebalance_timeout_ms > 0 {
                    rebalance_timeout_ms
                } else {
                    session_timeout_ms
                },
                protocols,
                assignment,
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline_ms: 0,
            },
        );
    }
    Some(group)
}

/// Records the state of changed groups (or a tombstone for deleted ones)
/// in their `__consumer_offsets` partitions; returns the sequence to wait for.
pub(crate) fn write_group_metadata<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    groups: &[String],
) -> u64 {
    let mut seq = 0;
    for group_id in groups {
        let value = node
            .groups
            .groups
            .get(group_id)
            .map(|g| group_value(g, now_ms));
        let key = group_key(group_id);
        match append_records(node, now_ms, group_id, &[(key, value)]) {
            Ok(written) => seq = seq.max(written),
            Err(error) => {
                tracing::error!(group = %group_id, ?error, "cannot record a group's state")
            }
        }
    }
    seq
}
