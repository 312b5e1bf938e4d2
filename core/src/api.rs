//! Request handlers: one function per Kafka API the node serves, and the
//! table of versions it advertises.
//!
//! Each handler decodes its request body, acts on the node, and returns the
//! state of the reply slot: ready now, ready after a sync, a long-polling
//! fetch, or no reply at all (acks=0).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::batch::{self, BatchError};
use crate::config::{self, Kind, Mutation, Source, TopicConfig};
use crate::metadata::{Change, TopicRecord};
use crate::node::{ConnectionId, Node, ReplyHeader, SlotState};
use crate::producers::{SequenceError, Verdict};
use crate::storage::{Storage, SyncTarget};

/// The versions served, per API: (min, max). See PROTOCOL.md §2.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
];

pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

pub(crate) fn code(error: ResponseError) -> i16 {
    error.code()
}

/// A response body of any served API.
#[derive(Debug)]
pub enum Reply {
    ApiVersions(ApiVersionsResponse),
    Metadata(MetadataResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    CreatePartitions(CreatePartitionsResponse),
    DescribeConfigs(DescribeConfigsResponse),
    DescribeCluster(DescribeClusterResponse),
    InitProducerId(InitProducerIdResponse),
    FindCoordinator(FindCoordinatorResponse),
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ListGroups(ListGroupsResponse),
    DescribeGroups(DescribeGroupsResponse),
    DeleteGroups(DeleteGroupsResponse),
}

impl Reply {
    pub fn encode(&self, buf: &mut bytes::BytesMut, version: i16) -> Result<(), String> {
        let result = match self {
            Reply::ApiVersions(r) => r.encode(buf, version),
            Reply::Metadata(r) => r.encode(buf, version),
            Reply::Produce(r) => r.encode(buf, version),
            Reply::Fetch(r) => r.encode(buf, version),
            Reply::ListOffsets(r) => r.encode(buf, version),
            Reply::CreateTopics(r) => r.encode(buf, version),
            Reply::DeleteTopics(r) => r.encode(buf, version),
            Reply::CreatePartitions(r) => r.encode(buf, version),
            Reply::DescribeConfigs(r) => r.encode(buf, version),
            Reply::DescribeCluster(r) => r.encode(buf, version),
            Reply::InitProducerId(r) => r.encode(buf, version),
            Reply::FindCoordinator(r) => r.encode(buf, version),
            Reply::JoinGroup(r) => r.encode(buf, version),
            Reply::SyncGroup(r) => r.encode(buf, version),
            Reply::Heartbeat(r) => r.encode(buf, version),
            Reply::LeaveGroup(r) => r.encode(buf, version),
            Reply::OffsetCommit(r) => r.encode(buf, version),
            Reply::OffsetFetch(r) => r.encode(buf, version),
            Reply::ListGroups(r) => r.encode(buf, version),
            Reply::DescribeGroups(r) => r.encode(buf, version),
            Reply::DeleteGroups(r) => r.encode(buf, version),
        };
        result.map_err(|e| e.to_string())
    }
}

pub(crate) fn decode<T: Decodable>(buf: &mut Bytes, version: i16) -> Result<T, String> {
    T::decode(buf, version).map_err(|e| format!("bad request body: {e}"))
}

/// A reply that waits for the sync covering `wait_seq` (if any); should the
/// storage fail first, `on_failure` builds what the client gets instead.
pub(crate) fn reply_after(
    header: ReplyHeader,
    wait_seq: Option<u64>,
    reply: Reply,
    on_failure: impl FnOnce() -> Reply,
) -> Result<Option<SlotState>, String> {
    match wait_seq {
        None => ready(header, reply),
        Some(seq) => Ok(Some(SlotState::AfterSync {
            seq,
            reply: Box::new(reply),
            on_failure: Box::new(on_failure()),
        })),
    }
}

/// The error code of a result whose change never became durable: the
/// successes turn into KAFKA_STORAGE_ERROR, other errors stay.
pub(crate) fn storage_error(error_code: i16) -> i16 {
    if error_code == 0 {
        code(ResponseError::KafkaStorageError)
    } else {
        error_code
    }
}

pub(crate) fn ready(header: ReplyHeader, reply: Reply) -> Result<Option<SlotState>, String> {
    crate::node::encode_reply(header, &reply).map(|frame| Some(SlotState::Ready(frame)))
}

/// Runs the handler of a request whose header was parsed, which arrived
/// on `connection`.
pub(crate) fn dispatch<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    connection: ConnectionId,
    header: ReplyHeader,
    client_id: &str,
    body: &mut Bytes,
) -> Result<Option<SlotState>, String> {
    let version = header.version;
    match header.api_key {
        ApiKey::ApiVersions => ready(header, Reply::ApiVersions(api_versions_response(0))),
        ApiKey::Metadata => handle_metadata(node, header, decode(body, version)?),
        ApiKey::Produce => handle_produce(node, now_ms, header, decode(body, version)?),
        ApiKey::Fetch => handle_fetch(node, now_ms, header, decode(body, version)?),
        ApiKey::ListOffsets => handle_list_offsets(node, header, decode(body, version)?),
        ApiKey::CreateTopics => handle_create_topics(node, header, decode(body, version)?),
        ApiKey::DeleteTopics => handle_delete_topics(node, header, decode(body, version)?),
        ApiKey::CreatePartitions => handle_create_partitions(node, header, decode(body, version)?),
        ApiKey::DescribeConfigs => handle_describe_configs(node, header, decode(body, version)?),
        ApiKey::DescribeCluster => handle_describe_cluster(node, header, decode(body, version)?),
        ApiKey::InitProducerId => handle_init_producer_id(node, header, decode(body, version)?),
        other => crate::api_group::dispatch(node, now_ms, connection, header, client_id, body)
            .unwrap_or_else(|| Err(format!("api {other:?} is not served"))),
    }
}

pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            api_versions_response::ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Some("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > 249 {
        return Some(format!(
            "Topic name is illegal, it can't be longer than 249 characters, topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Some(format!("Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"));
    }
    None
}

impl<S: Storage> Node<S> {
    pub(crate) fn broker_endpoint(&self) -> (i32, StrBytes, i32) {
        (
            self.config.node_id,
            StrBytes::from_string(self.advertised.0.clone()),
            self.advertised.1 as i32,
        )
    }

    fn topic_collision(&self, name: &str) -> Option<String> {
        let folded = name.replace('.', "_");
        self.topics
            .keys()
            .find(|existing| existing.replace('.', "_") == folded && existing.as_str() != name)
            .map(|existing| format!("Topic '{name}' collides with existing topic: {existing}"))
    }

    /// Records a new topic and opens its logs; durable after the next sync.
    /// Returns the sequence to wait for.
    pub(crate) fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<u64, ResponseError> {
        let record = TopicRecord {
            name: name.to_string(),
            id: self.rng.uuid(),
            partitions,
            configs,
        };
        self.metadata
            .append(&mut self.storage, Change::CreateTopic(record.clone()))
            .map_err(|error| {
                tracing::error!(topic = name, %error, "cannot record a new topic");
                ResponseError::KafkaStorageError
            })?;
        if let Err(error) = self.open_topic(&record, true) {
            tracing::error!(topic = name, %error, "cannot create the logs of a new topic");
            return Err(ResponseError::KafkaStorageError);
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(self.note_other_write(SyncTarget::Dir(String::new())))
    }

    /// Creates an unknown topic with the broker defaults if auto-creation is on.
    fn auto_create(&mut self, name: &str) -> Result<Option<u64>, ResponseError> {
        if !self.config.auto_create_topics || self.storage_failed {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        if topic_name_problem(name).is_some() || self.topic_collision(name).is_some() {
            return Err(ResponseError::InvalidTopicException);
        }
        self.create_topic(name, self.config.num_partitions, BTreeMap::new())
            .map(Some)
    }

    fn topic_name_by_id(&self, id: &uuid::Uuid) -> Option<String> {
        self.topics
            .iter()
            .find(|(_, t)| t.id == *id.as_bytes())
            .map(|(name, _)| name.clone())
    }
}

fn handle_metadata<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: MetadataRequest,
) -> Result<Option<SlotState>, String> {
    let all = match &request.topics {
        None => true,
        Some(list) => list.is_empty() && header.version == 0,
    };
    let may_create = header.version < 4 || request.allow_auto_topic_creation;
    let mut wait_seq = None;
    let mut names: Vec<(Option<String>, Option<uuid::Uuid>, Option<ResponseError>)> = Vec::new();
    if all {
        names = node
            .topics
            .keys()
            .map(|n| (Some(n.clone()), None, None))
            .collect();
    } else {
        for topic in request.topics.iter().flatten() {
            let name = topic.name.as_ref().map(|n| n.0.to_string());
            let name = name.or_else(|| node.topic_name_by_id(&topic.topic_id));
            match name {
                None => names.push((
                    None,
                    Some(topic.topic_id),
                    Some(ResponseError::UnknownTopicId),
                )),
                Some(name) if node.topics.contains_key(&name) => {
                    names.push((Some(name), None, None))
                }
                Some(name) if topic_name_problem(&name).is_some() => {
                    names.push((Some(name), None, Some(ResponseError::InvalidTopicException)))
                }
                Some(name) => {
                    let created = if may_create {
                        node.auto_create(&name)
                    } else {
                        Err(ResponseError::UnknownTopicOrPartition)
                    };
                    match created {
                        Ok(seq) => {
                            wait_seq = wait_seq.max(seq);
                            names.push((Some(name), None, None));
                        }
                        Err(error) => names.push((Some(name), None, Some(error))),
                    }
                }
            }
        }
    }
    let (node_id, host, port) = node.broker_endpoint();
    let topics = names
        .into_iter()
        .map(|(name, id, error)| metadata_topic(node, name, id, error))
        .collect();
    let response = MetadataResponse::default()
        .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
            .with_node_id(BrokerId(node_id))
            .with_host(host)
            .with_port(port)])
        .with_cluster_id(Some(StrBytes::from_string(node.cluster_id.clone())))
        .with_controller_id(BrokerId(node_id))
        .with_topics(topics)
        .with_cluster_authorized_operations(i32::MIN);
    reply_after(header, wait_seq, Reply::Metadata(response), || {
        Reply::Metadata(MetadataResponse::default().with_error_code(storage_error(0)))
    })
}

fn metadata_topic<S: Storage>(
    node: &Node<S>,
    name: Option<String>,
    id: Option<uuid::Uuid>,
    error: Option<ResponseError>,
) -> metadata_response::MetadataResponseTopic {
    let mut topic = metadata_response::MetadataResponseTopic::default()
        .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_authorized_operations(i32::MIN);
    if let Some(id) = id {
        topic.topic_id = id;
    }
    if let Some(error) = error {
        return topic.with_error_code(code(error));
    }
    let Some(found) = name.as_ref().and_then(|n| node.topics.get(n)) else {
        return topic.with_error_code(code(ResponseError::UnknownTopicOrPartition));
    };
    let me = BrokerId(node.config.node_id);
    let partitions = (0..found.partitions.len() as i32)
        .map(|index| {
            metadata_response::MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(me)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![me])
                .with_isr_nodes(vec![me])
        })
        .collect();
    topic
        .with_topic_id(uuid::Uuid::from_bytes(found.id))
        .with_is_internal(name.as_deref() == Some(crate::api_group::OFFSETS_TOPIC))
        .with_partitions(partitions)
}

fn batch_error_code(error: &BatchError) -> (ResponseError, &'static str) {
    match error {
        BatchError::Corrupt(why) => (ResponseError::CorruptMessage, why),
        BatchError::Invalid(why) => (ResponseError::InvalidRecord, why),
        BatchError::InvalidTimestamp(why) => (ResponseError::InvalidTimestamp, why),
    }
}

fn handle_produce<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: ProduceRequest,
) -> Result<Option<SlotState>, String> {
    let acks = request.acks;
    let acks_valid = matches!(acks, -1..=1);
    let mut response = ProduceResponse::default();
    let mut wait_seq = None;
    let mut any_error = false;
    let mut appended = Vec::new();
    for topic_data in request.topic_data {
        let name = if header.version >= 13 {
            node.topic_name_by_id(&topic_data.topic_id)
        } else {
            Some(topic_data.name.0.to_string())
        };
        let mut topic_response = produce_response::TopicProduceResponse::default()
            .with_name(topic_data.name.clone())
            .with_topic_id(topic_data.topic_id);
        let mut topic_error = None;
        if !acks_valid {
            topic_error = Some(ResponseError::InvalidRequiredAcks);
        } else if node.storage_failed {
            topic_error = Some(ResponseError::KafkaStorageError);
        } else {
            match &name {
                None => topic_error = Some(ResponseError::UnknownTopicId),
                Some(name) if node.topics.contains_key(name) => {}
                Some(name) if topic_name_problem(name).is_some() => {
                    topic_error = Some(ResponseError::InvalidTopicException)
                }
                Some(name) => match node.auto_create(name) {
                    Ok(seq) => wait_seq = wait_seq.max(seq),
                    Err(error) => topic_error = Some(error),
                },
            }
        }
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let result = match (topic_error, &name) {
                (Some(error), _) => Err((error, None)),
                (None, Some(name)) => {
                    produce_partition(node, now_ms, name, index, partition_data.records)
                }
                (None, None) => Err((ResponseError::UnknownTopicId, None)),
            };
            let partition_response = match result {
                Ok((appended_at, log_start, seq)) => {
                    wait_seq = wait_seq.max(Some(seq));
                    appended.push((
                        response.responses.len(),
                        topic_response.partition_responses.len(),
                    ));
                    produce_response::PartitionProduceResponse::default()
                        .with_index(index)
                        .with_base_offset(appended_at.base_offset)
                        .with_log_append_time_ms(appended_at.log_append_time_ms)
                        .with_log_start_offset(log_start)
                }
                Err((error, message)) => {
                    any_error = true;
                    produce_response::PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(code(error))
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(message.map(StrBytes::from_static_str))
                }
            };
            topic_response.partition_responses.push(partition_response);
        }
        response.responses.push(topic_response);
    }
    if acks == 0 {
        if any_error {
            return Err("an acks=0 produce failed; closing so the client notices".into());
        }
        return Ok(None);
    }
    let wait_seq = wait_seq.filter(|_| !node.config.mutated(Mutation::AckBeforeSync));
    // The failure variant is built only when the reply waits for a sync.
    let mut failed = wait_seq.map(|_| response.clone()).unwrap_or_default();
    reply_after(header, wait_seq, Reply::Produce(response), || {
        for &(t, p) in &appended {
            let partition = &mut failed.responses[t].partition_responses[p];
            partition.error_code = code(ResponseError::KafkaStorageError);
            partition.base_offset = -1;
        }
        Reply::Produce(failed)
    })
}

type ProduceResult =
    Result<(crate::log::Appended, i64, u64), (ResponseError, Option<&'static str>)>;

fn produce_partition<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    name: &str,
    index: i32,
    records: Option<Bytes>,
) -> ProduceResult {
    let Some(log) = node
        .topics
        .get_mut(name)
        .and_then(|t| t.partitions.get_mut(index.max(0) as usize))
        .filter(|_| index >= 0)
    else {
        return Err((ResponseError::UnknownTopicOrPartition, None));
    };
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Err((ResponseError::InvalidRecord, Some("no record batch")));
    };
    let header = batch::check_framing_first(&records).map_err(|e| {
        let (error, why) = batch_error_code(&e);
        (error, Some(why))
    })?;
    if header.size_bytes() != records.len() {
        return Err((
            ResponseError::InvalidRecord,
            Some("exactly one record batch is allowed per partition"),
        ));
    }
    if records.len() > log.config().max_message_bytes {
        return Err((
            ResponseError::MessageTooLarge,
            Some("batch larger than max.message.bytes"),
        ));
    }
    let config = log.config();
    let create_time_bounds = (!config.log_append_time).then(|| {
        (
            now_ms.saturating_sub(config.timestamp_before_max_ms),
            now_ms.saturating_add(config.timestamp_after_max_ms),
        )
    });
    let max_timestamp =
        batch::validate_produced(&records, &header, create_time_bounds).map_err(|e| {
            let (error, why) = batch_error_code(&e);
            (error, Some(why))
        })?;
    match log.producers().check(&header) {
        Ok(Verdict::Append) => {}
        Ok(Verdict::Duplicate {
            base_offset,
            last_offset,
            max_timestamp,
        }) => {
            // A retry: answer with the original offsets (and append time,
            // as Kafka does) once they are durable.
            let log_start = log.log_start_offset();
            let log_append_time_ms = if log.config().log_append_time {
                max_timestamp
            } else {
                -1
            };
            let seq = node.note_partition_write(name, index);
            let appended = crate::log::Appended {
                base_offset,
                last_offset,
                log_append_time_ms,
            };
            return Ok((appended, log_start, seq));
        }
        Err(SequenceError::OutOfOrder) => {
            return Err((
                ResponseError::OutOfOrderSequenceNumber,
                Some("sequence does not follow the last batch"),
            ))
        }
        Err(SequenceError::StaleEpoch) => {
            return Err((
                ResponseError::InvalidProducerEpoch,
                Some("producer epoch is stale"),
            ))
        }
    }
    let appended = log
        .append_with_max_timestamp(&mut node.storage, &records, 0, now_ms, max_timestamp)
        .map_err(|error| {
            tracing::error!(topic = name, partition = index, %error, "append failed");
            (ResponseError::KafkaStorageError, None)
        })?;
    let log_start = log.log_start_offset();
    let seq = node.note_partition_write(name, index);
    Ok((appended, log_start, seq))
}

fn handle_fetch<S: Storage>(
    node: &mut Node<S>,
    now_ms: i64,
    header: ReplyHeader,
    request: FetchRequest,
) -> Result<Option<SlotState>, String> {
    let immediate = request.max_wait_ms <= 0;
    if let Some(response) = fetch_response(node, header, &request, immediate) {
        return ready(header, Reply::Fetch(response));
    }
    let deadline_ms = now_ms.saturating_add(request.max_wait_ms as i64);
    Ok(Some(SlotState::Fetch {
        request: Box::new(request),
        deadline_ms,
    }))
}

/// Builds a fetch response, or None when the request should keep waiting
/// (fewer than `min_bytes` readable, no error, deadline not reached).
pub(crate) fn fetch_response<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: &FetchRequest,
    deadline_passed: bool,
) -> Option<FetchResponse> {
    if request.session_id != 0 {
        return Some(
            FetchResponse::default().with_error_code(code(ResponseError::FetchSessionIdNotFound)),
        );
    }
    let by_id = header.version >= 13;
    let mut bytes_left = request.max_bytes.max(0) as usize;
    let mut bytes_read = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = if by_id {
            node.topic_name_by_id(&topic.topic_id)
        } else {
            Some(topic.topic.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let mut data = fetch_response::PartitionData::default()
                .with_partition_index(partition.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let read = match &name {
                None => Err(ResponseError::UnknownTopicId),
                Some(name) => read_partition(node, name, partition, bytes_left, bytes_read == 0),
            };
            match read {
                Ok((records, high_watermark, log_start)) => {
                    bytes_left = bytes_left.saturating_sub(records.len());
                    bytes_read += records.len();
                    data = data
                        .with_high_watermark(high_watermark)
                        .with_last_stable_offset(high_watermark)
                        .with_log_start_offset(log_start)
                        .with_records(Some(records));
                    if request.isolation_level == 1 {
                        data.aborted_transactions = Some(Vec::new());
                    }
                }
                Err(error) => {
                    any_error = true;
                    data = data
                        .with_error_code(code(error))
                        .with_records(Some(Bytes::new()));
                }
            }
            partitions.push(data);
        }
        responses.push(
            fetch_response::FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    let enough = bytes_read >= request.min_bytes.max(0) as usize
        && (bytes_read > 0 || request.min_bytes <= 0);
    if !(deadline_passed || any_error || enough || request.topics.is_empty() || node.storage_failed)
    {
        return None;
    }
    Some(FetchResponse::default().with_responses(responses))
}

fn read_partition<S: Storage>(
    node: &mut Node<S>,
    name: &str,
    partition: &fetch_request::FetchPartition,
    bytes_left: usize,
    first: bool,
) -> Result<(Bytes, i64, i64), ResponseError> {
    if node.storage_failed {
        return Err(ResponseError::KafkaStorageError);
    }
    let topic = node
        .topics
        .get(name)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let log = topic
        .partitions
        .get(partition.partition.max(0) as usize)
        .filter(|_| partition.partition >= 0);
    let log = log.ok_or(ResponseError::UnknownTopicOrPartition)?;
    let offset = partition.fetch_offset;
    if offset < log.log_start_offset() || offset > log.log_end_offset() {
        return Err(ResponseError::OffsetOutOfRange);
    }
    let high_watermark = if node.config.mutated(Mutation::ReadBeforeSync) {
        log.log_end_offset()
    } else {
        log.durable_offset()
    };
    let bytes_max = (partition.partition_max_bytes.max(0) as usize).min(bytes_left);
    let records = log
        .read(&mut node.storage, offset, high_watermark, bytes_max, first)
        .map_err(|error| {
            tracing::error!(topic = name, partition = partition.partition, %error, "read failed");
            ResponseError::KafkaStorageError
        })?;
    Ok((records, high_watermark, log.log_start_offset()))
}

fn handle_list_offsets<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: ListOffsetsRequest,
) -> Result<Option<SlotState>, String> {
    let mut topics = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let base = list_offsets_response::ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1);
                match list_offset(node, &name, p.partition_index, p.timestamp) {
                    Ok((offset, timestamp)) => {
                        // The leader epoch field exists from v4 on.
                        let epoch = if header.version >= 4 && offset >= 0 {
                            0
                        } else {
                            -1
                        };
                        base.with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(epoch)
                    }
                    Err(error) => base.with_error_code(code(error)),
                }
            })
            .collect();
        topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    ready(
        header,
        Reply::ListOffsets(ListOffsetsResponse::default().with_topics(topics)),
    )
}

/// Offset and timestamp for a ListOffsets target: -1 latest, -2 earliest,
/// -3 max timestamp, -4 earliest local, -5 latest tiered, else by timestamp.
fn list_offset<S: Storage>(
    node: &mut Node<S>,
    name: &str,
    partition: i32,
    target: i64,
) -> Result<(i64, i64), ResponseError> {
    if node.storage_failed {
        return Err(ResponseError::KafkaStorageError);
    }
    let topic = node
        .topics
        .get(name)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let log = topic
        .partitions
        .get(partition.max(0) as usize)
        .filter(|_| partition >= 0);
    let log = log.ok_or(ResponseError::UnknownTopicOrPartition)?;
    let high_watermark = log.durable_offset();
    let storage_error = |error: std::io::Error| {
        tracing::error!(topic = name, partition, %error, "offset lookup failed");
        ResponseError::KafkaStorageError
    };
    match target {
        -1 => Ok((high_watermark, -1)),
        -2 | -4 => Ok((log.log_start_offset(), -1)),
        -5 => Ok((-1, -1)),
        -3 => Ok(log
            .offset_of_max_timestamp(&mut node.storage, high_watermark)
            .map_err(storage_error)?
            .unwrap_or((-1, -1))),
        t if t >= 0 => Ok(log
            .offset_for_timestamp(&mut node.storage, t, high_watermark)
            .map_err(storage_error)?
            .unwrap_or((-1, -1))),
        _ => Err(ResponseError::InvalidRequest),
    }
}

fn handle_create_topics<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: CreateTopicsRequest,
) -> Result<Option<SlotState>, String> {
    let mut seen = BTreeMap::new();
    for topic in &request.topics {
        *seen.entry(topic.name.0.to_string()).or_insert(0) += 1;
    }
    let mut results = Vec::new();
    let mut wait_seq = None;
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let mut result = create_topics_response::CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let outcome = if seen[&name] > 1 {
            Err((
                ResponseError::InvalidRequest,
                format!("Duplicate topic name: {name}"),
            ))
        } else {
            create_one_topic(node, topic, request.validate_only)
        };
        match outcome {
            Ok((partitions, configs, seq)) => {
                wait_seq = wait_seq.max(seq);
                let found = node.topics.get(&name);
                result = result
                    .with_num_partitions(partitions)
                    .with_replication_factor(1)
                    .with_topic_id(
                        found.map_or(uuid::Uuid::nil(), |t| uuid::Uuid::from_bytes(t.id)),
                    )
                    .with_configs(Some(configs));
            }
            Err((error, message)) => {
                result = result
                    .with_error_code(code(error))
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
        }
        results.push(result);
    }
    let reply = Reply::CreateTopics(CreateTopicsResponse::default().with_topics(results.clone()));
    reply_after(header, wait_seq, reply, || {
        let failed = results.into_iter().map(|r| {
            let error_code = storage_error(r.error_code);
            r.with_error_code(error_code)
        });
        Reply::CreateTopics(CreateTopicsResponse::default().with_topics(failed.collect()))
    })
}

type CreateOutcome = Result<
    (
        i32,
        Vec<create_topics_response::CreatableTopicConfigs>,
        Option<u64>,
    ),
    (ResponseError, String),
>;

fn create_one_topic<S: Storage>(
    node: &mut Node<S>,
    topic: &create_topics_request::CreatableTopic,
    validate_only: bool,
) -> CreateOutcome {
    let name = topic.name.0.to_string();
    if let Some(problem) = topic_name_problem(&name) {
        return Err((ResponseError::InvalidTopicException, problem));
    }
    if node.storage_failed {
        // What the node holds in memory may never reach the disk: claiming
        // the topic exists (or creating it) would be a promise it cannot keep.
        return Err((
            ResponseError::KafkaStorageError,
            "the log directory is offline".into(),
        ));
    }
    if node.topics.contains_key(&name) {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    if let Some(collision) = node.topic_collision(&name) {
        return Err((ResponseError::InvalidTopicException, collision));
    }
    let partitions = match (topic.num_partitions, topic.assignments.len()) {
        (-1, 0) => node.config.num_partitions,
        (-1, assigned) => assigned as i32,
        (n, 0) if n > 0 => n,
        (n, _) if n > 0 => {
            return Err((
                ResponseError::InvalidRequest,
                "Both numPartitions and replicaAssignments were set".into(),
            ))
        }
        (n, _) => {
            return Err((
                ResponseError::InvalidPartitions,
                format!("Number of partitions was set to an invalid non-positive value: {n}."),
            ))
        }
    };
    let factor = match topic.replication_factor {
        -1 => node.config.default_replication_factor,
        n => n,
    };
    if factor <= 0 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0.".into(),
        ));
    }
    if factor > 1 {
        return Err((ResponseError::InvalidReplicationFactor, format!("Unable to replicate the partition {factor} time(s): The target replication factor of {factor} cannot be reached because only 1 broker(s) are registered.")));
    }
    for assignment in &topic.assignments {
        if assignment
            .broker_ids
            .iter()
            .map(|b| b.0)
            .collect::<Vec<_>>()
            != vec![node.config.node_id]
        {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "Replica assignments must name this broker once".into(),
            ));
        }
    }
    let mut configs = BTreeMap::new();
    for entry in &topic.configs {
        let Some(value) = &entry.value else {
            return Err((
                ResponseError::InvalidConfig,
                format!(
                    "Null value not supported for topic configs: {}",
                    entry.name.as_str()
                ),
            ));
        };
        configs.insert(entry.name.to_string(), value.to_string());
    }
    let topic_config = TopicConfig::new(&node.config, &configs)
        .map_err(|e| (ResponseError::InvalidConfig, e.to_string()))?;
    let described = topic_config
        .describe(&node.config)
        .into_iter()
        .map(|(key, value, source)| {
            create_topics_response::CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(key))
                .with_value(Some(StrBytes::from_string(value)))
                .with_config_source(config_source_code(source))
        })
        .collect();
    if validate_only {
        return Ok((partitions, described, None));
    }
    let seq = node
        .create_topic(&name, partitions, topic_config.overrides.explicit)
        .map_err(|e| (e, "cannot write the topic".into()))?;
    Ok((partitions, described, Some(seq)))
}

fn config_source_code(source: Source) -> i8 {
    match source {
        Source::Topic => 1,
        Source::Broker => 4,
        Source::Default => 5,
    }
}

fn handle_delete_topics<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: DeleteTopicsRequest,
) -> Result<Option<SlotState>, String> {
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut results = Vec::new();
    let mut wait_seq = None;
    for (name, id) in wanted {
        let resolved = name.clone().or_else(|| node.topic_name_by_id(&id));
        let mut result = delete_topics_response::DeletableTopicResult::default()
            .with_name(
                resolved
                    .clone()
                    .map(|n| TopicName(StrBytes::from_string(n))),
            )
            .with_topic_id(id);
        let outcome = match resolved {
            None => Err(ResponseError::UnknownTopicId),
            Some(name) if !node.topics.contains_key(&name) => {
                Err(ResponseError::UnknownTopicOrPartition)
            }
            Some(name) => delete_topic(node, &name),
        };
        match outcome {
            Ok(seq) => wait_seq = wait_seq.max(Some(seq)),
            Err(error) => result = result.with_error_code(code(error)),
        }
        results.push(result);
    }
    let reply =
        Reply::DeleteTopics(DeleteTopicsResponse::default().with_responses(results.clone()));
    reply_after(header, wait_seq, reply, || {
        let failed = results.into_iter().map(|r| {
            let error_code = storage_error(r.error_code);
            r.with_error_code(error_code)
        });
        Reply::DeleteTopics(DeleteTopicsResponse::default().with_responses(failed.collect()))
    })
}

fn delete_topic<S: Storage>(node: &mut Node<S>, name: &str) -> Result<u64, ResponseError> {
    if node.storage_failed {
        return Err(ResponseError::KafkaStorageError);
    }
    node.metadata
        .append(
            &mut node.storage,
            Change::DeleteTopic {
                name: name.to_string(),
            },
        )
        .map_err(|error| {
            tracing::error!(topic = name, %error, "cannot record a topic deletion");
            ResponseError::KafkaStorageError
        })?;
    let topic = node.topics.remove(name).expect("checked by the caller");
    // The deletion is recorded first: a crash from here on leaves orphan
    // directories, which the next start removes.
    if let Err(error) = node.drop_topic_files(name, topic) {
        tracing::error!(topic = name, %error, "cannot remove the files of a deleted topic; the next start removes them");
    }
    tracing::info!(topic = name, "deleted topic");
    Ok(node.note_other_write(SyncTarget::Dir(String::new())))
}

fn handle_create_partitions<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: CreatePartitionsRequest,
) -> Result<Option<SlotState>, String> {
    let mut results = Vec::new();
    let mut wait_seq = None;
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let outcome = add_partitions(node, &name, topic, request.validate_only);
        let mut result = create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(topic.name.clone());
        match outcome {
            Ok(seq) => wait_seq = wait_seq.max(seq),
            Err((error, message)) => {
                result = result
                    .with_error_code(code(error))
                    .with_error_message(Some(StrBytes::from_string(message)))
            }
        }
        results.push(result);
    }
    let reply =
        Reply::CreatePartitions(CreatePartitionsResponse::default().with_results(results.clone()));
    reply_after(header, wait_seq, reply, || {
        let failed = results.into_iter().map(|r| {
            let error_code = storage_error(r.error_code);
            r.with_error_code(error_code)
        });
        Reply::CreatePartitions(CreatePartitionsResponse::default().with_results(failed.collect()))
    })
}

fn add_partitions<S: Storage>(
    node: &mut Node<S>,
    name: &str,
    request: &create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<Option<u64>, (ResponseError, String)> {
    let Some(topic) = node.topics.get(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        ));
    };
    let current = topic.partitions.len() as i32;
    if request.count < current {
        return Err((ResponseError::InvalidPartitions, format!("The topic {name} currently has {current} partition(s); {} would not be an increase.", request.count)));
    }
    if request.count == current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    if let Some(assignments) = request.assignments.as_ref().filter(|a| !a.is_empty()) {
        if assignments.len() as i32 != request.count - current {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "Assignments must cover exactly the new partitions".into(),
            ));
        }
        if assignments.iter().any(|a| {
            a.broker_ids.iter().map(|b| b.0).collect::<Vec<_>>() != vec![node.config.node_id]
        }) {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "Replica assignments must name this broker once".into(),
            ));
        }
    }
    if validate_only || node.storage_failed {
        return if node.storage_failed {
            Err((ResponseError::KafkaStorageError, "storage offline".into()))
        } else {
            Ok(None)
        };
    }
    let change = Change::SetPartitions {
        name: name.to_string(),
        partitions: request.count,
    };
    node.metadata
        .append(&mut node.storage, change)
        .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
    let topic = node.topics.get_mut(name).expect("checked above");
    for index in current..request.count {
        let dir = format!("{name}-{index}");
        let (log, _) =
            crate::log::PartitionLog::open(&mut node.storage, &dir, topic.config.clone(), true)
                .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
        topic.partitions.push(log);
    }
    for index in current..request.count {
        node.note_partition_write(name, index);
    }
    Ok(Some(node.note_other_write(SyncTarget::Dir(String::new()))))
}

fn handle_describe_configs<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: DescribeConfigsRequest,
) -> Result<Option<SlotState>, String> {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            describe_resource(
                node,
                resource,
                request.include_synonyms,
                request.include_documentation,
            )
        })
        .collect();
    ready(
        header,
        Reply::DescribeConfigs(DescribeConfigsResponse::default().with_results(results)),
    )
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn config_type_code(kind: Kind) -> i8 {
    match kind {
        Kind::Bool => 1,
        Kind::String | Kind::Choice(_) => 2,
        Kind::Int => 3,
        Kind::Long => 5,
    }
}

fn describe_resource<S: Storage>(
    node: &Node<S>,
    resource: &describe_configs_request::DescribeConfigsResource,
    include_synonyms: bool,
    include_documentation: bool,
) -> describe_configs_response::DescribeConfigsResult {
    let name = resource.resource_name.to_string();
    let result = describe_configs_response::DescribeConfigsResult::default()
        .with_resource_type(resource.resource_type)
        .with_resource_name(resource.resource_name.clone());
    let wanted = |key: &str| {
        resource
            .configuration_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
    };
    let entry = |key: &config::Key, value: String, source: i8, read_only: bool| {
        let mut item = describe_configs_response::DescribeConfigsResourceResult::default()
            .with_name(StrBytes::from_static_str(key.name))
            .with_value(Some(StrBytes::from_string(value.clone())))
            .with_read_only(read_only)
            .with_config_source(source)
            .with_config_type(config_type_code(key.kind));
        if include_synonyms {
            item.synonyms = vec![describe_configs_response::DescribeConfigsSynonym::default()
                .with_name(StrBytes::from_static_str(key.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_source(source)];
        }
        if include_documentation && !key.doc.is_empty() {
            item.documentation = Some(StrBytes::from_static_str(key.doc));
        }
        item
    };
    match resource.resource_type {
        RESOURCE_TOPIC => {
            let Some(topic) = node.topics.get(&name) else {
                return result
                    .with_error_code(code(ResponseError::UnknownTopicOrPartition))
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "Topic {name} does not exist."
                    ))));
            };
            let configs = topic
                .config
                .describe(&node.config)
                .into_iter()
                .filter(|(key, _, _)| wanted(key))
                .filter_map(|(key, value, source)| {
                    let spec = config::TOPIC_KEYS.iter().find(|k| k.name == key)?;
                    Some(entry(spec, value, config_source_code(source), false))
                })
                .collect();
            result.with_configs(configs)
        }
        RESOURCE_BROKER if name.is_empty() || name == node.config.node_id.to_string() => {
            let configs = config::BROKER_KEYS
                .iter()
                .filter(|key| wanted(key.name))
                .map(|key| {
                    let explicit = node.config.values.explicit.contains_key(key.name);
                    entry(
                        key,
                        node.config.get(key.name),
                        if explicit { 4 } else { 5 },
                        true,
                    )
                })
                .collect();
            result.with_configs(configs)
        }
        RESOURCE_BROKER => result
            .with_error_code(code(ResponseError::InvalidRequest))
            .with_error_message(Some(StrBytes::from_string(format!(
                "Unexpected broker id, expected {}",
                node.config.node_id
            )))),
        other => result
            .with_error_code(code(ResponseError::InvalidRequest))
            .with_error_message(Some(StrBytes::from_string(format!(
                "Unsupported resource type {other}"
            )))),
    }
}

fn handle_describe_cluster<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: DescribeClusterRequest,
) -> Result<Option<SlotState>, String> {
    let (node_id, host, port) = node.broker_endpoint();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(node.cluster_id.clone()))
        .with_controller_id(BrokerId(node_id))
        .with_endpoint_type(1)
        .with_cluster_authorized_operations(i32::MIN);
    if header.version >= 1 && request.endpoint_type != 1 {
        response = response
            .with_error_code(code(ResponseError::UnsupportedEndpointType))
            .with_error_message(Some(StrBytes::from_static_str(
                "only broker endpoints are served",
            )));
    } else {
        response.brokers = vec![describe_cluster_response::DescribeClusterBroker::default()
            .with_broker_id(BrokerId(node_id))
            .with_host(host)
            .with_port(port)];
    }
    ready(header, Reply::DescribeCluster(response))
}

fn handle_init_producer_id<S: Storage>(
    node: &mut Node<S>,
    header: ReplyHeader,
    request: InitProducerIdRequest,
) -> Result<Option<SlotState>, String> {
    let failed = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code(error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
    {
        // Transactions need a transaction coordinator, which this broker does not run yet.
        return ready(
            header,
            Reply::InitProducerId(failed(ResponseError::CoordinatorNotAvailable)),
        );
    }
    if node.storage_failed {
        return ready(
            header,
            Reply::InitProducerId(failed(ResponseError::KafkaStorageError)),
        );
    }
    match node.allocate_producer_id() {
        Ok((id, seq)) => {
            let reply = Reply::InitProducerId(
                InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0),
            );
            reply_after(header, Some(seq), reply, || {
                Reply::InitProducerId(failed(ResponseError::KafkaStorageError))
            })
        }
        Err(error) => {
            tracing::error!(%error, "cannot reserve producer ids");
            ready(
                header,
                Reply::InitProducerId(failed(ResponseError::KafkaStorageError)),
            )
        }
    }
}
