//! Reply bodies of every served API and their framing: length prefix,
//! response header, body.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

/// What a response frame needs from its request: which API and version
/// to encode, and the correlation id to echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

/// A response body of any served API.
#[derive(Debug, Clone)]
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
    AddPartitionsToTxn(AddPartitionsToTxnResponse),
    AddOffsetsToTxn(AddOffsetsToTxnResponse),
    EndTxn(EndTxnResponse),
    DescribeTransactions(DescribeTransactionsResponse),
    ListTransactions(ListTransactionsResponse),
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ListGroups(ListGroupsResponse),
    DescribeGroups(DescribeGroupsResponse),
    DeleteGroups(DeleteGroupsResponse),
    DescribeQuorum(DescribeQuorumResponse),
    OffsetForLeaderEpoch(OffsetForLeaderEpochResponse),
    TxnOffsetCommit(TxnOffsetCommitResponse),
    WriteTxnMarkers(WriteTxnMarkersResponse),
    DescribeProducers(DescribeProducersResponse),
}

impl Reply {
    pub fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), String> {
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
            Reply::AddPartitionsToTxn(r) => r.encode(buf, version),
            Reply::AddOffsetsToTxn(r) => r.encode(buf, version),
            Reply::EndTxn(r) => r.encode(buf, version),
            Reply::DescribeTransactions(r) => r.encode(buf, version),
            Reply::ListTransactions(r) => r.encode(buf, version),
            Reply::JoinGroup(r) => r.encode(buf, version),
            Reply::SyncGroup(r) => r.encode(buf, version),
            Reply::Heartbeat(r) => r.encode(buf, version),
            Reply::LeaveGroup(r) => r.encode(buf, version),
            Reply::OffsetCommit(r) => r.encode(buf, version),
            Reply::OffsetFetch(r) => r.encode(buf, version),
            Reply::ListGroups(r) => r.encode(buf, version),
            Reply::DescribeGroups(r) => r.encode(buf, version),
            Reply::DeleteGroups(r) => r.encode(buf, version),
            Reply::DescribeQuorum(r) => r.encode(buf, version),
            Reply::OffsetForLeaderEpoch(r) => r.encode(buf, version),
            Reply::TxnOffsetCommit(r) => r.encode(buf, version),
            Reply::WriteTxnMarkers(r) => r.encode(buf, version),
            Reply::DescribeProducers(r) => r.encode(buf, version),
        };
        result.map_err(|e| e.to_string())
    }
}

impl Reply {
    /// Calls `each` with every error code the reply carries, top-level and
    /// per topic, partition, group or member (zeros included: callers skip
    /// them).
    pub fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        match self {
            Reply::ApiVersions(r) => each(r.error_code),
            Reply::Metadata(r) => {
                each(r.error_code);
                for t in &r.topics {
                    each(t.error_code);
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::Produce(r) => {
                for t in &r.responses {
                    t.partition_responses
                        .iter()
                        .for_each(|p| each(p.error_code));
                }
            }
            Reply::Fetch(r) => {
                each(r.error_code);
                for t in &r.responses {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::ListOffsets(r) => {
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::CreateTopics(r) => r.topics.iter().for_each(|t| each(t.error_code)),
            Reply::DeleteTopics(r) => r.responses.iter().for_each(|t| each(t.error_code)),
            Reply::CreatePartitions(r) => r.results.iter().for_each(|t| each(t.error_code)),
            Reply::DescribeConfigs(r) => r.results.iter().for_each(|t| each(t.error_code)),
            Reply::DescribeCluster(r) => each(r.error_code),
            Reply::InitProducerId(r) => each(r.error_code),
            Reply::FindCoordinator(r) => {
                each(r.error_code);
                r.coordinators.iter().for_each(|c| each(c.error_code));
            }
            Reply::AddPartitionsToTxn(r) => {
                each(r.error_code);
                for t in &r.results_by_topic_v3_and_below {
                    t.results_by_partition
                        .iter()
                        .for_each(|p| each(p.partition_error_code));
                }
            }
            Reply::AddOffsetsToTxn(r) => each(r.error_code),
            Reply::EndTxn(r) => each(r.error_code),
            Reply::DescribeTransactions(r) => {
                r.transaction_states.iter().for_each(|t| each(t.error_code))
            }
            Reply::ListTransactions(r) => each(r.error_code),
            Reply::JoinGroup(r) => each(r.error_code),
            Reply::SyncGroup(r) => each(r.error_code),
            Reply::Heartbeat(r) => each(r.error_code),
            Reply::LeaveGroup(r) => {
                each(r.error_code);
                r.members.iter().for_each(|m| each(m.error_code));
            }
            Reply::OffsetCommit(r) => {
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::OffsetFetch(r) => {
                each(r.error_code);
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
                for g in &r.groups {
                    each(g.error_code);
                    for t in &g.topics {
                        t.partitions.iter().for_each(|p| each(p.error_code));
                    }
                }
            }
            Reply::ListGroups(r) => each(r.error_code),
            Reply::DescribeGroups(r) => r.groups.iter().for_each(|g| each(g.error_code)),
            Reply::DeleteGroups(r) => r.results.iter().for_each(|g| each(g.error_code)),
            Reply::DescribeQuorum(r) => {
                each(r.error_code);
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::OffsetForLeaderEpoch(r) => {
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::TxnOffsetCommit(r) => {
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::WriteTxnMarkers(r) => {
                for t in r.markers.iter().flat_map(|m| m.topics.iter()) {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
            Reply::DescribeProducers(r) => {
                for t in &r.topics {
                    t.partitions.iter().for_each(|p| each(p.error_code));
                }
            }
        }
    }
}

/// Decodes a request body; a body that does not parse closes the connection.
pub fn decode<T: Decodable>(buf: &mut Bytes, version: i16) -> Result<T, String> {
    T::decode(buf, version).map_err(|e| format!("bad request body: {e}"))
}

/// Encodes a response frame: length, header, body.
pub fn encode_reply(header: ReplyHeader, reply: &Reply) -> Result<Bytes, String> {
    frame_reply(header, |buf| reply.encode(buf, header.version))
}

/// `encode_reply` of a body outside `Reply` (the requests of other nodes).
pub fn encode_reply_body<T: Encodable>(header: ReplyHeader, body: &T) -> Result<Bytes, String> {
    frame_reply(header, |buf| {
        body.encode(buf, header.version).map_err(|e| e.to_string())
    })
}

fn frame_reply(
    header: ReplyHeader,
    body: impl FnOnce(&mut BytesMut) -> Result<(), String>,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    let header_version = header.api_key.response_header_version(header.version);
    response_header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body(&mut buf).map_err(|e| {
        format!(
            "cannot encode the {:?} v{} response: {e}",
            header.api_key, header.version
        )
    })?;
    let length = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&length.to_be_bytes());
    Ok(buf.freeze())
}

/// Encodes a request frame to a peer: length, header, body.
pub fn encode_request<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &T,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_string(
            client_id.to_string(),
        )));
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("cannot encode the {api_key:?} v{version} request: {e}"))?;
    let length = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&length.to_be_bytes());
    Ok(buf.freeze())
}

/// The correlation id of a response frame (without its length prefix);
/// None when the frame is too short to hold one.
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    let bytes: [u8; 4] = frame.get(..4)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

/// Decodes a response frame (without its length prefix) of a known API and version.
pub fn decode_response<T: Decodable>(
    api_key: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(i32, T), String> {
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| format!("bad response header: {e}"))?;
    let body = T::decode(&mut frame, version)
        .map_err(|e| format!("bad {api_key:?} v{version} response: {e}"))?;
    Ok((header.correlation_id, body))
}

/// The error code of a result whose change never became durable: the
/// successes turn into KAFKA_STORAGE_ERROR, other errors stay.
pub fn unsynced_error_code(error_code: i16) -> i16 {
    if error_code == 0 {
        kafka_protocol::ResponseError::KafkaStorageError.code()
    } else {
        error_code
    }
}

impl Reply {
    /// What the client gets instead of this reply when the controller
    /// quorum never committed the change behind it (the controller lost
    /// its leadership first): successes turn into NOT_CONTROLLER, which
    /// clients answer by finding the controller again and retrying.
    pub fn uncommitted(self) -> Reply {
        let not_controller = kafka_protocol::ResponseError::NotController.code();
        let replace = |code: &mut i16| {
            if *code == 0 {
                *code = not_controller;
            }
        };
        match self {
            Reply::CreateTopics(mut response) => {
                response
                    .topics
                    .iter_mut()
                    .for_each(|t| replace(&mut t.error_code));
                Reply::CreateTopics(response)
            }
            Reply::DeleteTopics(mut response) => {
                response
                    .responses
                    .iter_mut()
                    .for_each(|t| replace(&mut t.error_code));
                Reply::DeleteTopics(response)
            }
            Reply::CreatePartitions(mut response) => {
                response
                    .results
                    .iter_mut()
                    .for_each(|t| replace(&mut t.error_code));
                Reply::CreatePartitions(response)
            }
            other => other.unsynced(),
        }
    }

    /// A produce answered after the partition's leadership moved away while
    /// it waited for the high watermark: its successes turn into
    /// NOT_LEADER_OR_FOLLOWER (the client finds the new leader and retries;
    /// an idempotent retry finds its batch if it was kept).
    pub fn leadership_lost(self) -> Reply {
        match self {
            Reply::Produce(mut response) => {
                for partition in response
                    .responses
                    .iter_mut()
                    .flat_map(|t| t.partition_responses.iter_mut())
                {
                    if partition.error_code == 0 {
                        partition.error_code =
                            kafka_protocol::ResponseError::NotLeaderOrFollower.code();
                        partition.base_offset = -1;
                    }
                }
                Reply::Produce(response)
            }
            Reply::WriteTxnMarkers(response) => Reply::WriteTxnMarkers(markers_failed(
                response,
                kafka_protocol::ResponseError::NotLeaderOrFollower,
            )),
            other => other.unsynced(),
        }
    }

    /// A produce whose `timeout_ms` passed before the high watermark of
    /// some of its partitions reached their records: those answer
    /// REQUEST_TIMED_OUT (the records stay, and may still be replicated;
    /// an idempotent retry finds them), the others keep their success.
    pub fn timed_out(self, unreached: &[(String, [u8; 16], i32)]) -> Reply {
        let code = kafka_protocol::ResponseError::RequestTimedOut.code();
        self.produce_partitions_failed(unreached, code, true)
    }

    /// An acks=all produce whose partitions named in `short` reached the
    /// high watermark while their ISR is now below `min.insync.replicas`:
    /// those answer NOT_ENOUGH_REPLICAS_AFTER_APPEND. The records stay in
    /// the log, and Kafka keeps their base offset in the answer.
    pub fn not_enough_replicas_after_append(self, short: &[(String, [u8; 16], i32)]) -> Reply {
        let code = kafka_protocol::ResponseError::NotEnoughReplicasAfterAppend.code();
        self.produce_partitions_failed(short, code, false)
    }

    /// A produce reply whose successful partitions named in `failed` get
    /// `error_code` instead (and no base offset when `clear_offset`).
    fn produce_partitions_failed(
        self,
        failed: &[(String, [u8; 16], i32)],
        error_code: i16,
        clear_offset: bool,
    ) -> Reply {
        match self {
            Reply::Produce(mut response) => {
                for topic in response.responses.iter_mut() {
                    for partition in topic.partition_responses.iter_mut() {
                        let named = failed.iter().any(|(name, id, index)| {
                            *index == partition.index
                                && (*topic.name == **name
                                    || (!topic.topic_id.is_nil()
                                        && topic.topic_id.as_bytes() == id))
                        });
                        if named && partition.error_code == 0 {
                            partition.error_code = error_code;
                            if clear_offset {
                                partition.base_offset = -1;
                            }
                        }
                    }
                }
                Reply::Produce(response)
            }
            other => other,
        }
    }

    /// What the client gets instead of this reply when the change behind it
    /// never became durable (a sync failed first): every success turns into
    /// the error Kafka gives for storage it cannot trust, errors stay.
    pub fn unsynced(self) -> Reply {
        let coordinator_not_available =
            kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
        match self {
            Reply::Produce(mut response) => {
                for partition in response
                    .responses
                    .iter_mut()
                    .flat_map(|t| t.partition_responses.iter_mut())
                {
                    if partition.error_code == 0 {
                        partition.error_code = unsynced_error_code(0);
                        partition.base_offset = -1;
                    }
                }
                Reply::Produce(response)
            }
            Reply::Metadata(_) => {
                Reply::Metadata(MetadataResponse::default().with_error_code(unsynced_error_code(0)))
            }
            Reply::WriteTxnMarkers(response) => Reply::WriteTxnMarkers(markers_failed(
                response,
                kafka_protocol::ResponseError::KafkaStorageError,
            )),
            Reply::CreateTopics(mut response) => {
                for topic in response.topics.iter_mut() {
                    topic.error_code = unsynced_error_code(topic.error_code);
                }
                Reply::CreateTopics(response)
            }
            Reply::DeleteTopics(mut response) => {
                for topic in response.responses.iter_mut() {
                    topic.error_code = unsynced_error_code(topic.error_code);
                }
                Reply::DeleteTopics(response)
            }
            Reply::CreatePartitions(mut response) => {
                for topic in response.results.iter_mut() {
                    topic.error_code = unsynced_error_code(topic.error_code);
                }
                Reply::CreatePartitions(response)
            }
            Reply::InitProducerId(_) => Reply::InitProducerId(
                InitProducerIdResponse::default()
                    .with_error_code(unsynced_error_code(0))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ),
            Reply::OffsetCommit(mut response) => {
                for partition in response
                    .topics
                    .iter_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                {
                    partition.error_code = unsynced_error_code(partition.error_code);
                }
                Reply::OffsetCommit(response)
            }
            Reply::TxnOffsetCommit(mut response) => {
                for partition in response
                    .topics
                    .iter_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                {
                    partition.error_code = unsynced_error_code(partition.error_code);
                }
                Reply::TxnOffsetCommit(response)
            }
            Reply::OffsetFetch(_) => Reply::OffsetFetch(
                OffsetFetchResponse::default().with_error_code(coordinator_not_available),
            ),
            Reply::DeleteGroups(mut response) => {
                for group in response.results.iter_mut() {
                    group.error_code = unsynced_error_code(group.error_code);
                }
                Reply::DeleteGroups(response)
            }
            // A transaction change that was not recorded: the producer
            // finds its coordinator again and retries.
            Reply::AddPartitionsToTxn(mut response) => {
                for partition in response
                    .results_by_topic_v3_and_below
                    .iter_mut()
                    .flat_map(|t| t.results_by_partition.iter_mut())
                {
                    if partition.partition_error_code == 0 {
                        partition.partition_error_code = coordinator_not_available;
                    }
                }
                Reply::AddPartitionsToTxn(response)
            }
            Reply::AddOffsetsToTxn(response) => {
                Reply::AddOffsetsToTxn(response.with_error_code(coordinator_not_available))
            }
            Reply::EndTxn(response) => {
                Reply::EndTxn(response.with_error_code(coordinator_not_available))
            }
            // A group change that was not recorded: the member finds the
            // coordinator again and rejoins.
            Reply::JoinGroup(response) => {
                Reply::JoinGroup(response.with_error_code(coordinator_not_available))
            }
            Reply::SyncGroup(response) => Reply::SyncGroup(
                SyncGroupResponse::default()
                    .with_throttle_time_ms(response.throttle_time_ms)
                    .with_error_code(coordinator_not_available),
            ),
            other => other,
        }
    }
}

/// A WriteTxnMarkers answer whose markers did not all count as written:
/// the partitions that succeeded answer `error` (retriable: the
/// coordinator writes them again, and a marker written twice is harmless).
fn markers_failed(
    mut response: WriteTxnMarkersResponse,
    error: kafka_protocol::ResponseError,
) -> WriteTxnMarkersResponse {
    for partition in response
        .markers
        .iter_mut()
        .flat_map(|m| m.topics.iter_mut())
        .flat_map(|t| t.partitions.iter_mut())
    {
        if partition.error_code == 0 {
            partition.error_code = error.code();
        }
    }
    response
}
