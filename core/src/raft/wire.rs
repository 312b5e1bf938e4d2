//! Kafka's frames for the replica's messages, and record batches for its
//! log entries.
//!
//! `Message` maps field by field onto the Vote, BeginQuorumEpoch,
//! EndQuorumEpoch and Fetch requests and responses on
//! `__cluster_metadata-0`, filled as Kafka's `KafkaRaftClient` fills them
//! (`RaftUtil.singleton*`): one topic holding one partition, the cluster id
//! on every request, the receiver's id (`VoterId`) on Vote and
//! BeginQuorumEpoch, the sender's in Fetch's `ReplicaState`, errors at the
//! partition level (the top level only for a wrong cluster or topic).
//! Directory ids stay zero (Sluice has none) and endpoints stay empty (peers
//! know each other's addresses from their configuration).
//!
//! A Fetch response carries the entries in `records` as record batches v2,
//! written by the project's one batch encoder (`batch::builder`): a leader
//! change as a control batch of one LEADER_CHANGE record, each run of data
//! entries of one epoch as one ordinary batch of null-keyed records. Every
//! batch's partition leader epoch is its entries' epoch, its base offset the
//! offset of its first entry; batches carry no timestamps (-1), since the
//! core reads no clock and entries hold none.
//!
//! Frames leave length-prefixed, as `wire::encode_request` writes them, and
//! come in without the prefix, as the driver hands them over. Decoding never
//! panics: a frame that does not parse, names another cluster, topic or
//! receiver, or holds values no replica sends is a `WireError`, whose
//! `error_code` is Kafka's answer to such a request (`None`: close the
//! connection).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    begin_quorum_epoch_request, begin_quorum_epoch_response, end_quorum_epoch_request,
    end_quorum_epoch_response, fetch_request, fetch_response, leader_change_message, vote_request,
    vote_response, ApiKey, BeginQuorumEpochRequest, BeginQuorumEpochResponse, BrokerId,
    EndQuorumEpochRequest, EndQuorumEpochResponse, FetchRequest, FetchResponse,
    LeaderChangeMessage, RequestHeader, ResponseHeader, TopicName, VoteRequest, VoteResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::message::{Entry, FetchError, FetchResult, Message, Record};
use super::{ENTRIES_PER_FETCH_MAX, FETCH_WAIT_MS_MAX, VOTERS_MAX};
use crate::batch::builder::{BatchBuilder, Compression, ProducerIdentity, RecordData};
use crate::batch::{
    assign_offset, check_framing_first, decode_records, write_crc, BatchHeader, RecordView,
    ATTRIBUTES_OFFSET, ATTRIBUTE_CONTROL, LAST_OFFSET_DELTA_OFFSET, NO_TIMESTAMP,
};
use crate::types::NodeId;
use crate::wire::{encode_request, ReplyHeader, Request};

/// The replicated log's topic and partition.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
pub const METADATA_PARTITION: i32 = 0;
/// `__cluster_metadata`'s fixed topic id, `AAAAAAAAAAAAAAAAAAAAAQ` (Kafka's
/// `Uuid.METADATA_TOPIC_ID`, the uuid 0..01).
pub const METADATA_TOPIC_ID: Uuid = Uuid::from_u128(1);
/// A fetch's `MaxBytes`: Kafka's `KafkaRaftClient.MAX_FETCH_SIZE_BYTES`.
pub const FETCH_BYTES_MAX: i32 = 8 * 1024 * 1024;
/// The largest Fetch correlation id that travels: the header's i32 holds
/// ids 0..=u32::MAX bit for bit (ids from 2^31 on are negative there).
pub const FETCH_CORRELATION_ID_MAX: u64 = u32::MAX as u64;

/// The key of every LEADER_CHANGE control record: key version 0, type 2.
const LEADER_CHANGE_KEY: [u8; 4] = [0, 0, 0, 2];
const CONTROL_TYPE_LEADER_CHANGE: i16 = 2;
/// `ControlRecordUtils.LEADER_CHANGE_CURRENT_VERSION`: Kafka writes and
/// reads the LeaderChangeMessage value at version 0 only.
const LEADER_CHANGE_VERSION: i16 = 0;
/// Bytes of a control record key: version and type, both i16.
const CONTROL_KEY_BYTES: usize = 4;
const NO_HEADERS: &[(&[u8], Option<&[u8]>)] = &[];

/// The version a replica sends of each API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub vote: i16,
    pub begin_quorum_epoch: i16,
    pub end_quorum_epoch: i16,
    pub fetch: i16,
}

impl Versions {
    /// What Sluice sends: the newest versions of Kafka 3.9 and 4.0's
    /// controllers (KIP-853) without pre-vote. Vote and BeginQuorumEpoch
    /// v1 name their receiver, so a request that reached the wrong replica
    /// is refused; Fetch v17 names its sender in `ReplicaState` (v15+).
    pub const SENT: Versions = Versions {
        vote: 1,
        begin_quorum_epoch: 1,
        end_quorum_epoch: 1,
        fetch: 17,
    };

    pub fn of(&self, api_key: ApiKey) -> Option<i16> {
        match api_key {
            ApiKey::Vote => Some(self.vote),
            ApiKey::BeginQuorumEpoch => Some(self.begin_quorum_epoch),
            ApiKey::EndQuorumEpoch => Some(self.end_quorum_epoch),
            ApiKey::Fetch => Some(self.fetch),
            _ => None,
        }
    }
}

/// The versions read and written, per API: (min, max). Vote v2 is left
/// out: it adds pre-vote, which read as a vote would be granted for real.
/// Fetch starts at v13, the first with topic ids; v18 (Kafka 4.1) is left
/// out, its follower high watermark having no place in `Message`.
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Vote, 0, 1),
    (ApiKey::BeginQuorumEpoch, 0, 1),
    (ApiKey::EndQuorumEpoch, 0, 1),
    (ApiKey::Fetch, 13, 17),
];

/// The (min, max) versions of an API; None when it is not a Raft API.
pub fn versions(api_key: ApiKey) -> Option<(i16, i16)> {
    VERSIONS
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|&(_, min, max)| (min, max))
}

fn check_version(api_key: ApiKey, version: i16) -> Result<(), WireError> {
    match versions(api_key) {
        Some((min, max)) if (min..=max).contains(&version) => Ok(()),
        _ => Err(WireError::Unsupported {
            api_key: api_key as i16,
            version,
        }),
    }
}

/// Why a frame could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Not a Raft API, or a version outside `VERSIONS`.
    Unsupported { api_key: i16, version: i16 },
    /// The header or body does not parse, or bytes follow the body.
    Malformed(String),
    /// A request naming another cluster.
    InconsistentClusterId,
    /// A Vote or BeginQuorumEpoch addressed to another replica.
    InvalidVoterKey { voter_id: i32 },
    /// Well formed, but not what a replica sends: another topic or
    /// partition, a negative offset or epoch, a snapshot.
    Invalid(&'static str),
    /// A response holding an error code no `Message` expresses.
    Refused { error_code: i16 },
    /// A Fetch response's records are not batches of entries.
    Records(String),
    /// A Fetch correlation id above `FETCH_CORRELATION_ID_MAX`, or a
    /// response answering another fetch.
    CorrelationId { correlation_id: u64 },
    /// A message of the wrong kind: a response given as a request, or
    /// the reverse, or another API's.
    Kind(&'static str),
    /// The encoder refused the body.
    Encode(String),
}

impl WireError {
    /// The error code Kafka answers a request with for this; None when the
    /// connection is closed instead (undecodable frames, as Kafka's
    /// SocketServer does) or the error is not about a request.
    pub fn error_code(&self) -> Option<i16> {
        let error = match self {
            WireError::Unsupported { .. } => ResponseError::UnsupportedVersion,
            WireError::InconsistentClusterId => ResponseError::InconsistentClusterId,
            WireError::InvalidVoterKey { .. } => ResponseError::InvalidVoterKey,
            WireError::Invalid(_) => ResponseError::InvalidRequest,
            _ => return None,
        };
        Some(error.code())
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Unsupported { api_key, version } => {
                write!(f, "api {api_key} v{version} is not a Raft API version read")
            }
            WireError::Malformed(why) => write!(f, "malformed frame: {why}"),
            WireError::InconsistentClusterId => f.write_str("request of another cluster"),
            WireError::InvalidVoterKey { voter_id } => {
                write!(f, "request addressed to voter {voter_id}")
            }
            WireError::Invalid(why) => write!(f, "invalid: {why}"),
            WireError::Refused { error_code } => write!(f, "answered with error {error_code}"),
            WireError::Records(why) => write!(f, "bad records: {why}"),
            WireError::CorrelationId { correlation_id } => {
                write!(
                    f,
                    "fetch correlation id {correlation_id} does not match or fit"
                )
            }
            WireError::Kind(why) => write!(f, "wrong message kind: {why}"),
            WireError::Encode(why) => write!(f, "cannot encode: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A Fetch correlation id as the request header carries it; None above
/// `FETCH_CORRELATION_ID_MAX`.
pub fn fetch_correlation_id_to_wire(correlation_id: u64) -> Option<i32> {
    u32::try_from(correlation_id).ok().map(|id| id as i32)
}

/// The inverse of `fetch_correlation_id_to_wire`, defined for every i32.
pub fn fetch_correlation_id_from_wire(correlation_id: i32) -> u64 {
    u64::from(correlation_id as u32)
}

/// The id of the fetch after one with `correlation_id`: the replica counts
/// within what travels, wrapping after `FETCH_CORRELATION_ID_MAX` (an answer
/// 2^32 fetches late is the only one it could mistake).
pub fn next_fetch_correlation_id(correlation_id: u64) -> u64 {
    if correlation_id >= FETCH_CORRELATION_ID_MAX {
        0
    } else {
        correlation_id + 1
    }
}

/// The API a message travels as.
pub fn api_key_of(message: &Message) -> ApiKey {
    match message {
        Message::VoteRequest { .. } | Message::VoteResponse { .. } => ApiKey::Vote,
        Message::BeginQuorumEpochRequest { .. } | Message::BeginQuorumEpochResponse { .. } => {
            ApiKey::BeginQuorumEpoch
        }
        Message::EndQuorumEpochRequest { .. } | Message::EndQuorumEpochResponse { .. } => {
            ApiKey::EndQuorumEpoch
        }
        Message::FetchRequest { .. } | Message::FetchResponse { .. } => ApiKey::Fetch,
    }
}

pub fn is_request(message: &Message) -> bool {
    matches!(
        message,
        Message::VoteRequest { .. }
            | Message::BeginQuorumEpochRequest { .. }
            | Message::EndQuorumEpochRequest { .. }
            | Message::FetchRequest { .. }
    )
}

/// What a request says beside its message: the cluster, its sender (Fetch's
/// `ReplicaState`) and its receiver (Vote's and BeginQuorumEpoch's
/// `VoterId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub cluster_id: &'a str,
    pub sender: NodeId,
    pub receiver: NodeId,
}

/// A request body of a Raft API.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    Vote(VoteRequest),
    BeginQuorumEpoch(BeginQuorumEpochRequest),
    EndQuorumEpoch(EndQuorumEpochRequest),
    Fetch(FetchRequest),
}

/// A response body of a Raft API.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseBody {
    Vote(VoteResponse),
    BeginQuorumEpoch(BeginQuorumEpochResponse),
    EndQuorumEpoch(EndQuorumEpochResponse),
    Fetch(FetchResponse),
}

impl ResponseBody {
    fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), WireError> {
        let result = match self {
            ResponseBody::Vote(body) => body.encode(buf, version),
            ResponseBody::BeginQuorumEpoch(body) => body.encode(buf, version),
            ResponseBody::EndQuorumEpoch(body) => body.encode(buf, version),
            ResponseBody::Fetch(body) => body.encode(buf, version),
        };
        result.map_err(|e| WireError::Encode(e.to_string()))
    }
}

/// A request frame ready to send, with what its answer is matched by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub version: i16,
    /// The header's: the caller's for Vote, BeginQuorumEpoch and
    /// EndQuorumEpoch, the message's own for Fetch.
    pub correlation_id: i32,
    /// Length-prefixed.
    pub frame: Bytes,
}

/// A request as received: its sender and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRequest {
    pub sender: NodeId,
    pub message: Message,
}

fn metadata_topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(METADATA_TOPIC))
}

fn broker_id(node: NodeId) -> BrokerId {
    BrokerId(node.0)
}

/// -1 (or any negative id) is "no leader", as Kafka's `optionalLeaderId`.
fn optional_node(id: i32) -> Option<NodeId> {
    (id >= 0).then_some(NodeId(id))
}

fn node_or_none(node: Option<NodeId>) -> BrokerId {
    BrokerId(node.map_or(-1, |node| node.0))
}

/// A request's body, at `version` of its API.
pub fn request_body(
    version: i16,
    route: &Route<'_>,
    message: &Message,
) -> Result<RequestBody, WireError> {
    check_version(api_key_of(message), version)?;
    let cluster_id = Some(StrBytes::from_string(route.cluster_id.to_owned()));
    let body = match message {
        Message::VoteRequest {
            candidate_epoch,
            candidate_id,
            last_offset_epoch,
            last_offset,
        } => RequestBody::Vote(
            VoteRequest::default()
                .with_cluster_id(cluster_id)
                .with_voter_id(if version >= 1 {
                    broker_id(route.receiver)
                } else {
                    BrokerId(-1)
                })
                .with_topics(vec![vote_request::TopicData::default()
                    .with_topic_name(metadata_topic_name())
                    .with_partitions(vec![vote_request::PartitionData::default()
                        .with_partition_index(METADATA_PARTITION)
                        .with_replica_epoch(*candidate_epoch)
                        .with_replica_id(broker_id(*candidate_id))
                        .with_last_offset_epoch(*last_offset_epoch)
                        .with_last_offset(*last_offset)])]),
        ),
        Message::BeginQuorumEpochRequest {
            leader_epoch,
            leader_id,
        } => RequestBody::BeginQuorumEpoch(
            BeginQuorumEpochRequest::default()
                .with_cluster_id(cluster_id)
                .with_voter_id(if version >= 1 {
                    broker_id(route.receiver)
                } else {
                    BrokerId(-1)
                })
                .with_topics(vec![begin_quorum_epoch_request::TopicData::default()
                    .with_topic_name(metadata_topic_name())
                    .with_partitions(vec![
                        begin_quorum_epoch_request::PartitionData::default()
                            .with_partition_index(METADATA_PARTITION)
                            .with_leader_id(broker_id(*leader_id))
                            .with_leader_epoch(*leader_epoch),
                    ])]),
        ),
        Message::EndQuorumEpochRequest {
            leader_epoch,
            leader_id,
            preferred_successors,
        } => RequestBody::EndQuorumEpoch(end_quorum_epoch_request(
            version,
            cluster_id,
            *leader_epoch,
            *leader_id,
            preferred_successors,
        )),
        Message::FetchRequest {
            current_leader_epoch,
            fetch_offset,
            last_fetched_epoch,
            ..
        } => RequestBody::Fetch(
            fetch_request(version, route.sender)
                .with_cluster_id(cluster_id)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic_id(METADATA_TOPIC_ID)
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(METADATA_PARTITION)
                        .with_current_leader_epoch(*current_leader_epoch)
                        .with_fetch_offset(*fetch_offset)
                        .with_last_fetched_epoch(*last_fetched_epoch)
                        .with_partition_max_bytes(FETCH_BYTES_MAX)])]),
        ),
        _ => return Err(WireError::Kind("a response is not a request")),
    };
    Ok(body)
}

/// v0 names the successors; v1 names them as candidates with (zero)
/// directory ids. Kafka fills both; each version writes its own.
fn end_quorum_epoch_request(
    version: i16,
    cluster_id: Option<StrBytes>,
    leader_epoch: i32,
    leader_id: NodeId,
    preferred_successors: &[NodeId],
) -> EndQuorumEpochRequest {
    let mut partition = end_quorum_epoch_request::PartitionData::default()
        .with_partition_index(METADATA_PARTITION)
        .with_leader_id(broker_id(leader_id))
        .with_leader_epoch(leader_epoch);
    if version == 0 {
        partition.preferred_successors = preferred_successors.iter().map(|id| id.0).collect();
    } else {
        partition.preferred_candidates = preferred_successors
            .iter()
            .map(|id| {
                end_quorum_epoch_request::ReplicaInfo::default().with_candidate_id(broker_id(*id))
            })
            .collect();
    }
    EndQuorumEpochRequest::default()
        .with_cluster_id(cluster_id)
        .with_topics(vec![end_quorum_epoch_request::TopicData::default()
            .with_topic_name(metadata_topic_name())
            .with_partitions(vec![partition])])
}

/// A fetch's top level as `KafkaRaftClient.buildFetchRequest` fills it: the
/// sender in `ReplicaState` (v15+, top-level `ReplicaId` before), a wait
/// of `FETCH_WAIT_MS_MAX` (Kafka's 500 ms too), 8 MiB at most.
fn fetch_request(version: i16, sender: NodeId) -> FetchRequest {
    let request = FetchRequest::default()
        .with_max_wait_ms(FETCH_WAIT_MS_MAX as i32)
        .with_max_bytes(FETCH_BYTES_MAX);
    if version >= 15 {
        request.with_replica_state(
            fetch_request::ReplicaState::default().with_replica_id(broker_id(sender)),
        )
    } else {
        request.with_replica_id(broker_id(sender))
    }
}

/// A request frame, length-prefixed, at the version `versions` names.
/// `correlation_id` goes into the header of Vote, BeginQuorumEpoch and
/// EndQuorumEpoch; a Fetch travels with its own id, mapped by
/// `fetch_correlation_id_to_wire`. The result says which was used.
pub fn request_frame(
    versions: &Versions,
    route: &Route<'_>,
    correlation_id: i32,
    client_id: &str,
    message: &Message,
) -> Result<RequestFrame, WireError> {
    let api_key = api_key_of(message);
    let version = versions.of(api_key).expect("every message has a Raft API");
    let body = request_body(version, route, message)?;
    let correlation_id = match message {
        Message::FetchRequest { correlation_id, .. } => {
            fetch_correlation_id_to_wire(*correlation_id).ok_or(WireError::CorrelationId {
                correlation_id: *correlation_id,
            })?
        }
        _ => correlation_id,
    };
    let encoded = match &body {
        RequestBody::Vote(b) => encode_request(api_key, version, correlation_id, client_id, b),
        RequestBody::BeginQuorumEpoch(b) => {
            encode_request(api_key, version, correlation_id, client_id, b)
        }
        RequestBody::EndQuorumEpoch(b) => {
            encode_request(api_key, version, correlation_id, client_id, b)
        }
        RequestBody::Fetch(b) => encode_request(api_key, version, correlation_id, client_id, b),
    };
    Ok(RequestFrame {
        api_key,
        version,
        correlation_id,
        frame: encoded.map_err(WireError::Encode)?,
    })
}

/// Reads the header of a Raft API request frame (without its length
/// prefix). `wire::parse_request` does the same for the APIs clients use.
pub fn parse_request_frame(frame: Bytes) -> Result<Request, WireError> {
    let Some(fixed) = frame.get(..8) else {
        return Err(WireError::Malformed("shorter than a request header".into()));
    };
    let api_key_raw = i16::from_be_bytes([fixed[0], fixed[1]]);
    let version = i16::from_be_bytes([fixed[2], fixed[3]]);
    let unsupported = WireError::Unsupported {
        api_key: api_key_raw,
        version,
    };
    let api_key = ApiKey::try_from(api_key_raw).map_err(|_| unsupported.clone())?;
    check_version(api_key, version).map_err(|_| unsupported)?;
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, api_key.request_header_version(version))
        .map_err(|e| WireError::Malformed(format!("request header: {e}")))?;
    Ok(Request {
        header: ReplyHeader {
            api_key,
            version,
            correlation_id: header.correlation_id,
        },
        client_id: header.client_id.map_or(String::new(), |c| c.to_string()),
        body,
    })
}

/// Decodes a whole body: bytes left after it make the frame malformed.
fn decode_body<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, WireError> {
    let decoded =
        T::decode(&mut body, version).map_err(|e| WireError::Malformed(format!("body: {e}")))?;
    if !body.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the body",
            body.len()
        )));
    }
    Ok(decoded)
}

/// A request's sender and message, checked as `KafkaRaftClient` checks
/// it: the cluster id (absent is accepted), one topic with one partition,
/// values a replica can send, and the receiver named (if named) is
/// `local_id`.
pub fn message_from_request(
    header: &ReplyHeader,
    body: Bytes,
    cluster_id: &str,
    local_id: NodeId,
) -> Result<InboundRequest, WireError> {
    check_version(header.api_key, header.version)?;
    let version = header.version;
    match header.api_key {
        ApiKey::Vote => vote_from_request(decode_body(body, version)?, cluster_id, local_id),
        ApiKey::BeginQuorumEpoch => {
            begin_quorum_epoch_from_request(decode_body(body, version)?, cluster_id, local_id)
        }
        ApiKey::EndQuorumEpoch => {
            end_quorum_epoch_from_request(decode_body(body, version)?, version, cluster_id)
        }
        ApiKey::Fetch => fetch_from_request(
            decode_body(body, version)?,
            version,
            header.correlation_id,
            cluster_id,
        ),
        other => Err(WireError::Unsupported {
            api_key: other as i16,
            version,
        }),
    }
}

fn check_cluster(sent: &Option<StrBytes>, cluster_id: &str) -> Result<(), WireError> {
    match sent {
        Some(sent) if &**sent != cluster_id => Err(WireError::InconsistentClusterId),
        _ => Ok(()),
    }
}

/// The one partition of the one topic a Raft request or response holds.
fn the_partition<'a, T, P>(
    topics: &'a [T],
    is_metadata_topic: impl Fn(&T) -> bool,
    partitions: impl Fn(&'a T) -> &'a [P],
    partition_index: impl Fn(&P) -> i32,
) -> Result<&'a P, WireError> {
    let [topic] = topics else {
        return Err(WireError::Invalid("not exactly one topic"));
    };
    if !is_metadata_topic(topic) {
        return Err(WireError::Invalid("not the metadata topic"));
    }
    let [partition] = partitions(topic) else {
        return Err(WireError::Invalid("not exactly one partition"));
    };
    if partition_index(partition) != METADATA_PARTITION {
        return Err(WireError::Invalid("not the metadata partition"));
    }
    Ok(partition)
}

fn is_metadata_name(name: &TopicName) -> bool {
    &***name == METADATA_TOPIC
}

/// Vote and BeginQuorumEpoch v1 name their receiver; -1 (v0) names none.
fn check_receiver(voter_id: i32, local_id: NodeId) -> Result<(), WireError> {
    if voter_id >= 0 && voter_id != local_id.0 {
        return Err(WireError::InvalidVoterKey { voter_id });
    }
    Ok(())
}

fn sender_id(id: i32) -> Result<NodeId, WireError> {
    optional_node(id).ok_or(WireError::Invalid("no sender id"))
}

fn vote_from_request(
    request: VoteRequest,
    cluster_id: &str,
    local_id: NodeId,
) -> Result<InboundRequest, WireError> {
    check_cluster(&request.cluster_id, cluster_id)?;
    let partition = the_partition(
        &request.topics,
        |t| is_metadata_name(&t.topic_name),
        |t| &t.partitions,
        |p| p.partition_index,
    )?;
    // Kafka's checks: a candidate's last entry is of an earlier epoch.
    if partition.last_offset < 0
        || partition.last_offset_epoch < 0
        || partition.last_offset_epoch >= partition.replica_epoch
    {
        return Err(WireError::Invalid(
            "vote with an impossible last offset or epoch",
        ));
    }
    check_receiver(request.voter_id.0, local_id)?;
    let candidate_id = sender_id(partition.replica_id.0)?;
    Ok(InboundRequest {
        sender: candidate_id,
        message: Message::VoteRequest {
            candidate_epoch: partition.replica_epoch,
            candidate_id,
            last_offset_epoch: partition.last_offset_epoch,
            last_offset: partition.last_offset,
        },
    })
}

fn begin_quorum_epoch_from_request(
    request: BeginQuorumEpochRequest,
    cluster_id: &str,
    local_id: NodeId,
) -> Result<InboundRequest, WireError> {
    check_cluster(&request.cluster_id, cluster_id)?;
    let partition = the_partition(
        &request.topics,
        |t| is_metadata_name(&t.topic_name),
        |t| &t.partitions,
        |p| p.partition_index,
    )?;
    if partition.leader_epoch < 0 {
        return Err(WireError::Invalid("negative leader epoch"));
    }
    check_receiver(request.voter_id.0, local_id)?;
    let leader_id = sender_id(partition.leader_id.0)?;
    Ok(InboundRequest {
        sender: leader_id,
        message: Message::BeginQuorumEpochRequest {
            leader_epoch: partition.leader_epoch,
            leader_id,
        },
    })
}

fn end_quorum_epoch_from_request(
    request: EndQuorumEpochRequest,
    version: i16,
    cluster_id: &str,
) -> Result<InboundRequest, WireError> {
    check_cluster(&request.cluster_id, cluster_id)?;
    let partition = the_partition(
        &request.topics,
        |t| is_metadata_name(&t.topic_name),
        |t| &t.partitions,
        |p| p.partition_index,
    )?;
    let successors: Vec<i32> = if version == 0 {
        partition.preferred_successors.clone()
    } else {
        let candidates = partition.preferred_candidates.iter();
        candidates.map(|c| c.candidate_id.0).collect()
    };
    if successors.len() > VOTERS_MAX || successors.iter().any(|id| *id < 0) {
        return Err(WireError::Invalid(
            "preferred successors that are no voters",
        ));
    }
    if partition.leader_epoch < 0 {
        return Err(WireError::Invalid("negative leader epoch"));
    }
    let leader_id = sender_id(partition.leader_id.0)?;
    Ok(InboundRequest {
        sender: leader_id,
        message: Message::EndQuorumEpochRequest {
            leader_epoch: partition.leader_epoch,
            leader_id,
            preferred_successors: successors.into_iter().map(NodeId).collect(),
        },
    })
}

fn fetch_from_request(
    request: FetchRequest,
    version: i16,
    correlation_id: i32,
    cluster_id: &str,
) -> Result<InboundRequest, WireError> {
    check_cluster(&request.cluster_id, cluster_id)?;
    let partition = the_partition(
        &request.topics,
        |t| t.topic_id == METADATA_TOPIC_ID,
        |t| &t.partitions,
        |p| p.partition,
    )?;
    // Kafka's checks, in `KafkaRaftClient.handleFetchRequest`.
    if request.max_wait_ms < 0
        || partition.fetch_offset < 0
        || partition.last_fetched_epoch < 0
        || partition.last_fetched_epoch > partition.current_leader_epoch
    {
        return Err(WireError::Invalid(
            "fetch with an impossible offset or epoch",
        ));
    }
    let replica_id = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    Ok(InboundRequest {
        sender: sender_id(replica_id)?,
        message: Message::FetchRequest {
            correlation_id: fetch_correlation_id_from_wire(correlation_id),
            current_leader_epoch: partition.current_leader_epoch,
            fetch_offset: partition.fetch_offset,
            last_fetched_epoch: partition.last_fetched_epoch,
        },
    })
}

/// A response's body, at `version` of its API: no error at either level,
/// the epoch and leader the responder knows, no endpoints.
pub fn response_body(version: i16, message: &Message) -> Result<ResponseBody, WireError> {
    check_version(api_key_of(message), version)?;
    let body = match message {
        Message::VoteResponse {
            leader_epoch,
            leader_id,
            vote_granted,
        } => ResponseBody::Vote(VoteResponse::default().with_topics(
            vec![vote_response::TopicData::default()
                .with_topic_name(metadata_topic_name())
                .with_partitions(vec![vote_response::PartitionData::default()
                    .with_partition_index(METADATA_PARTITION)
                    .with_leader_id(node_or_none(*leader_id))
                    .with_leader_epoch(*leader_epoch)
                    .with_vote_granted(*vote_granted)])],
        )),
        Message::BeginQuorumEpochResponse {
            leader_epoch,
            leader_id,
        } => ResponseBody::BeginQuorumEpoch(BeginQuorumEpochResponse::default().with_topics(
            vec![begin_quorum_epoch_response::TopicData::default()
                .with_topic_name(metadata_topic_name())
                .with_partitions(vec![begin_quorum_epoch_response::PartitionData::default()
                    .with_partition_index(METADATA_PARTITION)
                    .with_leader_id(node_or_none(*leader_id))
                    .with_leader_epoch(*leader_epoch)])],
        )),
        Message::EndQuorumEpochResponse {
            leader_epoch,
            leader_id,
        } => ResponseBody::EndQuorumEpoch(EndQuorumEpochResponse::default().with_topics(vec![
            end_quorum_epoch_response::TopicData::default()
                .with_topic_name(metadata_topic_name())
                .with_partitions(vec![end_quorum_epoch_response::PartitionData::default()
                    .with_partition_index(METADATA_PARTITION)
                    .with_leader_id(node_or_none(*leader_id))
                    .with_leader_epoch(*leader_epoch)]),
        ])),
        Message::FetchResponse {
            leader_epoch,
            leader_id,
            high_watermark,
            result,
            ..
        } => ResponseBody::Fetch(fetch_response(
            *leader_epoch,
            *leader_id,
            *high_watermark,
            result,
        )?),
        _ => return Err(WireError::Kind("a request is not a response")),
    };
    Ok(body)
}

/// A fetch answer as `KafkaRaftClient.buildFetchResponse` fills it: the
/// leader in `CurrentLeader`, a divergence in `DivergingEpoch` (no
/// records), refusals as the partition's error code. The log start offset
/// is -1 (unknown): `Message` does not carry it.
fn fetch_response(
    leader_epoch: i32,
    leader_id: Option<NodeId>,
    high_watermark: i64,
    result: &FetchResult,
) -> Result<FetchResponse, WireError> {
    let mut partition = fetch_response::PartitionData::default()
        .with_partition_index(METADATA_PARTITION)
        .with_high_watermark(high_watermark)
        .with_current_leader(
            fetch_response::LeaderIdAndEpoch::default()
                .with_leader_id(node_or_none(leader_id))
                .with_leader_epoch(leader_epoch),
        )
        .with_records(Some(Bytes::new()));
    match result {
        FetchResult::Entries {
            offset_first,
            entries,
        } => partition.records = Some(encode_entries(*offset_first, entries)?),
        FetchResult::DivergingEpoch { epoch, end_offset } => {
            if *epoch < 0 {
                return Err(WireError::Invalid("a diverging epoch is never negative"));
            }
            partition.diverging_epoch = fetch_response::EpochEndOffset::default()
                .with_epoch(*epoch)
                .with_end_offset(*end_offset);
        }
        FetchResult::Error(error) => {
            let error = match error {
                FetchError::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
                FetchError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
            };
            partition.error_code = error.code();
        }
    }
    Ok(FetchResponse::default().with_responses(vec![
        fetch_response::FetchableTopicResponse::default()
            .with_topic_id(METADATA_TOPIC_ID)
            .with_partitions(vec![partition]),
    ]))
}

/// Frames a response: length, header, body.
fn frame_response(header: &ReplyHeader, body: &ResponseBody) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(
            &mut buf,
            header.api_key.response_header_version(header.version),
        )
        .map_err(|e| WireError::Encode(e.to_string()))?;
    body.encode(&mut buf, header.version)?;
    let length =
        i32::try_from(buf.len() - 4).map_err(|_| WireError::Encode("frame over 2 GiB".into()))?;
    buf[..4].copy_from_slice(&length.to_be_bytes());
    Ok(buf.freeze())
}

/// The response frame (length-prefixed) answering the request `header`
/// describes with `message`, which must be that API's response (and, for
/// a Fetch, answer that fetch).
pub fn response_frame(header: &ReplyHeader, message: &Message) -> Result<Bytes, WireError> {
    if is_request(message) || api_key_of(message) != header.api_key {
        return Err(WireError::Kind("not a response of the request's API"));
    }
    if let Message::FetchResponse { correlation_id, .. } = message {
        if fetch_correlation_id_to_wire(*correlation_id) != Some(header.correlation_id) {
            return Err(WireError::CorrelationId {
                correlation_id: *correlation_id,
            });
        }
    }
    frame_response(header, &response_body(header.version, message)?)
}

/// A response that refuses the request `header` describes as a whole
/// (Kafka's `RaftUtil.errorResponse`): the error code at the top level,
/// nothing else. For the requests `message_from_request` refused with an
/// `error_code`.
pub fn error_response_frame(header: &ReplyHeader, error_code: i16) -> Result<Bytes, WireError> {
    check_version(header.api_key, header.version)?;
    let body = match header.api_key {
        ApiKey::Vote => ResponseBody::Vote(VoteResponse::default().with_error_code(error_code)),
        ApiKey::BeginQuorumEpoch => ResponseBody::BeginQuorumEpoch(
            BeginQuorumEpochResponse::default().with_error_code(error_code),
        ),
        ApiKey::EndQuorumEpoch => ResponseBody::EndQuorumEpoch(
            EndQuorumEpochResponse::default().with_error_code(error_code),
        ),
        _ => ResponseBody::Fetch(FetchResponse::default().with_error_code(error_code)),
    };
    frame_response(header, &body)
}

/// The message a response frame (without its length prefix) holds, read
/// at `version` as the answer to `request`, the message that was sent.
/// A Fetch answer must carry that fetch's correlation id; its entries
/// start at that fetch's offset.
pub fn message_from_response(
    request: &Message,
    version: i16,
    mut frame: Bytes,
) -> Result<Message, WireError> {
    if !is_request(request) {
        return Err(WireError::Kind("a response answers a request"));
    }
    let api_key = api_key_of(request);
    check_version(api_key, version)?;
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| WireError::Malformed(format!("response header: {e}")))?;
    match request {
        Message::VoteRequest { .. } => vote_from_response(decode_body(frame, version)?),
        Message::BeginQuorumEpochRequest { .. } => {
            let response: BeginQuorumEpochResponse = decode_body(frame, version)?;
            refuse_unless_none(response.error_code)?;
            let partition = the_partition(
                &response.topics,
                |t| is_metadata_name(&t.topic_name),
                |t| &t.partitions,
                |p| p.partition_index,
            )?;
            refuse_unless_none(partition.error_code)?;
            Ok(Message::BeginQuorumEpochResponse {
                leader_epoch: partition.leader_epoch,
                leader_id: optional_node(partition.leader_id.0),
            })
        }
        Message::EndQuorumEpochRequest { .. } => {
            let response: EndQuorumEpochResponse = decode_body(frame, version)?;
            refuse_unless_none(response.error_code)?;
            let partition = the_partition(
                &response.topics,
                |t| is_metadata_name(&t.topic_name),
                |t| &t.partitions,
                |p| p.partition_index,
            )?;
            refuse_unless_none(partition.error_code)?;
            Ok(Message::EndQuorumEpochResponse {
                leader_epoch: partition.leader_epoch,
                leader_id: optional_node(partition.leader_id.0),
            })
        }
        Message::FetchRequest {
            correlation_id,
            fetch_offset,
            ..
        } => {
            if fetch_correlation_id_to_wire(*correlation_id) != Some(header.correlation_id) {
                return Err(WireError::CorrelationId {
                    correlation_id: fetch_correlation_id_from_wire(header.correlation_id),
                });
            }
            fetch_from_response(decode_body(frame, version)?, *correlation_id, *fetch_offset)
        }
        _ => Err(WireError::Kind("a response answers a request")),
    }
}

fn refuse_unless_none(error_code: i16) -> Result<(), WireError> {
    match error_code {
        0 => Ok(()),
        error_code => Err(WireError::Refused { error_code }),
    }
}

/// A vote refused for a stale epoch (FENCED_LEADER_EPOCH, as Kafka answers
/// it) is a vote not granted, with the epoch that fenced it; other errors
/// have no message.
fn vote_from_response(response: VoteResponse) -> Result<Message, WireError> {
    refuse_unless_none(response.error_code)?;
    let partition = the_partition(
        &response.topics,
        |t| is_metadata_name(&t.topic_name),
        |t| &t.partitions,
        |p| p.partition_index,
    )?;
    let fenced = ResponseError::FencedLeaderEpoch.code();
    if partition.error_code != fenced {
        refuse_unless_none(partition.error_code)?;
    }
    Ok(Message::VoteResponse {
        leader_epoch: partition.leader_epoch,
        leader_id: optional_node(partition.leader_id.0),
        vote_granted: partition.vote_granted && partition.error_code == 0,
    })
}

fn fetch_from_response(
    response: FetchResponse,
    correlation_id: u64,
    fetch_offset: i64,
) -> Result<Message, WireError> {
    refuse_unless_none(response.error_code)?;
    let partition = the_partition(
        &response.responses,
        |t| t.topic_id == METADATA_TOPIC_ID,
        |t| &t.partitions,
        |p| p.partition_index,
    )?;
    let snapshot = &partition.snapshot_id;
    if snapshot.epoch != -1 || snapshot.end_offset != -1 {
        return Err(WireError::Invalid("snapshots are not fetched yet"));
    }
    let records = partition.records.as_deref().unwrap_or_default();
    let diverging = &partition.diverging_epoch;
    let result = match partition.error_code {
        _ if partition.error_code != 0 && !records.is_empty() => {
            return Err(WireError::Invalid("records beside an error"))
        }
        0 if diverging.epoch != -1 || diverging.end_offset != -1 => {
            if diverging.epoch < 0 || !records.is_empty() {
                return Err(WireError::Invalid("a divergence with records or no epoch"));
            }
            FetchResult::DivergingEpoch {
                epoch: diverging.epoch,
                end_offset: diverging.end_offset,
            }
        }
        0 => FetchResult::Entries {
            offset_first: fetch_offset,
            entries: decode_entries(records, fetch_offset, ENTRIES_PER_FETCH_MAX)?,
        },
        code if code == ResponseError::FencedLeaderEpoch.code() => {
            FetchResult::Error(FetchError::FencedLeaderEpoch)
        }
        code if code == ResponseError::NotLeaderOrFollower.code() => {
            FetchResult::Error(FetchError::NotLeaderOrFollower)
        }
        error_code => return Err(WireError::Refused { error_code }),
    };
    Ok(Message::FetchResponse {
        correlation_id,
        leader_epoch: partition.current_leader.leader_epoch,
        leader_id: optional_node(partition.current_leader.leader_id.0),
        high_watermark: partition.high_watermark,
        result,
    })
}

/// The entries as record batches, the first at `offset_first`: a control
/// batch per leader change, a batch per run of data entries of one epoch.
pub fn encode_entries(offset_first: i64, entries: &[Entry]) -> Result<Bytes, WireError> {
    let mut records = BytesMut::new();
    let mut base_offset = offset_first;
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let run = match first.record {
            Record::LeaderChange { .. } => 1,
            Record::Data(_) => rest
                .iter()
                .take_while(|e| e.epoch == first.epoch && matches!(e.record, Record::Data(_)))
                .count(),
        };
        let (batch_entries, tail) = rest.split_at(run);
        records.extend_from_slice(&encode_batch(base_offset, first.epoch, batch_entries)?);
        base_offset = base_offset
            .checked_add(run as i64)
            .ok_or(WireError::Encode("offsets past i64::MAX".into()))?;
        rest = tail;
    }
    Ok(records.freeze())
}

/// One batch of entries of one epoch: all data, or one leader change.
fn encode_batch(base_offset: i64, epoch: i32, entries: &[Entry]) -> Result<Vec<u8>, WireError> {
    let mut builder = BatchBuilder::new().with_base_timestamp(NO_TIMESTAMP);
    let mut control = false;
    for entry in entries {
        assert_eq!(entry.epoch, epoch, "one epoch per batch");
        match &entry.record {
            Record::LeaderChange { leader_id, voters } => {
                assert!(entries.len() == 1, "a leader change has a batch of its own");
                let value = leader_change_value(*leader_id, voters)?;
                builder.append(&RecordData {
                    timestamp_ms: NO_TIMESTAMP,
                    key: Some(&LEADER_CHANGE_KEY),
                    value: Some(&value),
                    headers: NO_HEADERS,
                });
                control = true;
            }
            Record::Data(value) => {
                builder.append(&RecordData {
                    timestamp_ms: NO_TIMESTAMP,
                    key: None,
                    value: Some(value),
                    headers: NO_HEADERS,
                });
            }
        }
    }
    let built = builder
        .build(Compression::None, ProducerIdentity::NONE)
        .map_err(|e| WireError::Encode(e.to_string()))?;
    drop(builder);
    let mut batch = Vec::from(built);
    if control {
        // The builder writes data batches; the control bit is under the CRC.
        let field = ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET;
        let attributes = i16::from_be_bytes([batch[field.start], batch[field.start + 1]]);
        batch[field].copy_from_slice(&(attributes | ATTRIBUTE_CONTROL).to_be_bytes());
        write_crc(&mut batch);
    }
    assign_offset(&mut batch, base_offset, epoch);
    Ok(batch)
}

fn leader_change_value(leader_id: NodeId, voters: &[NodeId]) -> Result<Bytes, WireError> {
    let voters = voters
        .iter()
        .map(|voter| leader_change_message::Voter::default().with_voter_id(voter.0))
        .collect();
    let message = LeaderChangeMessage::default()
        .with_version(LEADER_CHANGE_VERSION)
        .with_leader_id(broker_id(leader_id))
        .with_voters(voters);
    let mut value = BytesMut::new();
    message
        .encode(&mut value, LEADER_CHANGE_VERSION)
        .map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(value.freeze())
}

fn records_error(why: impl Into<String>) -> WireError {
    WireError::Records(why.into())
}

/// The entries in `records`, which must be whole, uncompressed,
/// non-transactional v2 batches with good CRCs, the first at
/// `offset_first` and each right after the one before, holding at most
/// `entries_max` records of known kinds in all.
pub fn decode_entries(
    records: &[u8],
    offset_first: i64,
    entries_max: usize,
) -> Result<Vec<Entry>, WireError> {
    let mut entries = Vec::new();
    let mut rest = records;
    let mut next_offset = offset_first;
    while !rest.is_empty() {
        let header = check_framing_first(rest).map_err(|e| records_error(e.to_string()))?;
        let (batch, tail) = rest.split_at(header.size_bytes());
        rest = tail;
        check_batch_header(&header, next_offset)?;
        let count = header.record_count as usize;
        if count > entries_max.saturating_sub(entries.len()) {
            return Err(records_error(format!("more than {entries_max} entries")));
        }
        let views = decode_records(batch).map_err(|e| records_error(e.to_string()))?;
        for (delta, view) in views.iter().enumerate() {
            if view.offset != header.base_offset.wrapping_add(delta as i64) {
                return Err(records_error("record offsets are not consecutive"));
            }
            let record = if header.is_control() {
                control_record(view)?
            } else {
                data_record(view)?
            };
            entries.push(Entry {
                epoch: header.partition_leader_epoch,
                record,
            });
        }
        next_offset =
            batch_end_offset(&header).ok_or_else(|| records_error("offsets past i64::MAX"))?;
    }
    Ok(entries)
}

fn check_batch_header(header: &BatchHeader, expected_offset: i64) -> Result<(), WireError> {
    if header.base_offset != expected_offset {
        return Err(records_error(format!(
            "batch at offset {} where {expected_offset} was next",
            header.base_offset
        )));
    }
    if header.record_count <= 0 || header.last_offset_delta != header.record_count - 1 {
        return Err(records_error(
            "record count does not match the last offset delta",
        ));
    }
    if header.partition_leader_epoch < 0 {
        return Err(records_error("batch without a leader epoch"));
    }
    if header.compression() != 0 {
        return Err(records_error("compressed batch (Sluice writes none)"));
    }
    if header.is_transactional() {
        return Err(records_error("transactional batch in the metadata log"));
    }
    Ok(())
}

/// The offset after a batch's last record; None past i64::MAX.
fn batch_end_offset(header: &BatchHeader) -> Option<i64> {
    header
        .base_offset
        .checked_add(i64::from(header.last_offset_delta))?
        .checked_add(1)
}

/// A control record: a LEADER_CHANGE (key version >= 0, type 2, as Kafka's
/// `ControlRecordType.parse` reads keys) whose value is a whole
/// LeaderChangeMessage v0. Any other control type is refused.
fn control_record(view: &RecordView) -> Result<Record, WireError> {
    let key = view.key.as_deref().unwrap_or_default();
    if key.len() < CONTROL_KEY_BYTES {
        return Err(records_error("control record key shorter than 4 bytes"));
    }
    let key_version = i16::from_be_bytes([key[0], key[1]]);
    let control_type = i16::from_be_bytes([key[2], key[3]]);
    if key_version < 0 {
        return Err(records_error("negative control record key version"));
    }
    if control_type != CONTROL_TYPE_LEADER_CHANGE {
        return Err(records_error(format!(
            "control record of type {control_type}"
        )));
    }
    let mut value = view
        .value
        .clone()
        .ok_or_else(|| records_error("leader change without a value"))?;
    let message = LeaderChangeMessage::decode(&mut value, LEADER_CHANGE_VERSION)
        .map_err(|e| records_error(format!("leader change: {e}")))?;
    if !value.is_empty() {
        return Err(records_error("bytes after the leader change"));
    }
    let leader_id = optional_node(message.leader_id.0)
        .ok_or_else(|| records_error("leader change without a leader"))?;
    if message.voters.len() > VOTERS_MAX || message.voters.iter().any(|v| v.voter_id < 0) {
        return Err(records_error("leader change with impossible voters"));
    }
    Ok(Record::LeaderChange {
        leader_id,
        voters: message.voters.iter().map(|v| NodeId(v.voter_id)).collect(),
    })
}

/// A data record: a value, no key, no headers (an entry has no place
/// for them, so they would be lost).
fn data_record(view: &RecordView) -> Result<Record, WireError> {
    if view.key.is_some() || !view.headers.is_empty() {
        return Err(records_error("data record with a key or headers"));
    }
    let value = view
        .value
        .clone()
        .ok_or_else(|| records_error("data record without a value"))?;
    Ok(Record::Data(value))
}

#[cfg(test)]
pub(super) mod tests {
    use kafka_protocol::records::RecordBatchDecoder;
    use proptest::prelude::*;

    use super::*;
    use crate::batch::{ATTRIBUTE_TRANSACTIONAL, CRC_OFFSET, HEADER_BYTES};

    const CLUSTER: &str = "sluice-test";

    fn route(sender: i32, receiver: i32) -> Route<'static> {
        Route {
            cluster_id: CLUSTER,
            sender: NodeId(sender),
            receiver: NodeId(receiver),
        }
    }

    /// Every API at `version`, for trying each version read.
    fn all_at(version_of: impl Fn(ApiKey) -> i16) -> Versions {
        Versions {
            vote: version_of(ApiKey::Vote),
            begin_quorum_epoch: version_of(ApiKey::BeginQuorumEpoch),
            end_quorum_epoch: version_of(ApiKey::EndQuorumEpoch),
            fetch: version_of(ApiKey::Fetch),
        }
    }

    /// The request the way it went out and came in: (header, sender, message).
    fn request_round_trip(
        versions: &Versions,
        route: &Route<'_>,
        message: &Message,
    ) -> Result<(ReplyHeader, InboundRequest), WireError> {
        let sent = request_frame(versions, route, -7, "raft-client-1", message)?;
        let length = i32::from_be_bytes(sent.frame[..4].try_into().unwrap());
        assert_eq!(length as usize, sent.frame.len() - 4);
        let request = parse_request_frame(sent.frame.slice(4..))?;
        assert_eq!(request.client_id, "raft-client-1");
        assert_eq!(
            (request.header.api_key, request.header.version),
            (sent.api_key, sent.version)
        );
        assert_eq!(request.header.correlation_id, sent.correlation_id);
        let inbound = message_from_request(&request.header, request.body, CLUSTER, route.receiver)?;
        Ok((request.header, inbound))
    }

    /// The response the way it went out and came in, answering `request`.
    fn response_round_trip(
        request: &Message,
        version: i16,
        message: &Message,
    ) -> Result<Message, WireError> {
        let correlation_id = match request {
            Message::FetchRequest { correlation_id, .. } => {
                fetch_correlation_id_to_wire(*correlation_id).unwrap()
            }
            _ => 41,
        };
        let header = ReplyHeader {
            api_key: api_key_of(message),
            version,
            correlation_id,
        };
        let frame = response_frame(&header, message)?;
        let length = i32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(length as usize, frame.len() - 4);
        message_from_response(request, version, frame.slice(4..))
    }

    /// A request a response could answer; for a fetch answer, the fetch
    /// its entries follow.
    fn request_answered(response: &Message) -> Message {
        match response {
            Message::VoteResponse { .. } => Message::VoteRequest {
                candidate_epoch: 3,
                candidate_id: NodeId(1),
                last_offset_epoch: 2,
                last_offset: 10,
            },
            Message::BeginQuorumEpochResponse { .. } => Message::BeginQuorumEpochRequest {
                leader_epoch: 3,
                leader_id: NodeId(1),
            },
            Message::EndQuorumEpochResponse { .. } => Message::EndQuorumEpochRequest {
                leader_epoch: 3,
                leader_id: NodeId(1),
                preferred_successors: vec![],
            },
            Message::FetchResponse {
                correlation_id,
                result,
                ..
            } => Message::FetchRequest {
                correlation_id: *correlation_id,
                current_leader_epoch: 3,
                fetch_offset: match result {
                    FetchResult::Entries { offset_first, .. } => *offset_first,
                    _ => 17,
                },
                last_fetched_epoch: 2,
            },
            request => panic!("{request:?} is not a response"),
        }
    }

    /// A message of the simulation, through the frames it would travel
    /// in at the versions Sluice sends, asserted unchanged. A response goes
    /// through as the answer to a request made up to fit it.
    pub(in crate::raft) fn through_frames(from: NodeId, to: NodeId, message: &Message) {
        let route = Route {
            cluster_id: CLUSTER,
            sender: from,
            receiver: to,
        };
        let through = if is_request(message) {
            let (_, inbound) = request_round_trip(&Versions::SENT, &route, message)
                .unwrap_or_else(|e| panic!("{message:?}: {e}"));
            assert_eq!(inbound.sender, from);
            inbound.message
        } else {
            let version = Versions::SENT.of(api_key_of(message)).unwrap();
            response_round_trip(&request_answered(message), version, message)
                .unwrap_or_else(|e| panic!("{message:?}: {e}"))
        };
        assert_eq!(&through, message);
    }

    fn data(epoch: i32, value: &str) -> Entry {
        Entry {
            epoch,
            record: Record::Data(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    fn leader_change(epoch: i32, leader: i32, voters: &[i32]) -> Entry {
        Entry {
            epoch,
            record: Record::LeaderChange {
                leader_id: NodeId(leader),
                voters: voters.iter().copied().map(NodeId).collect(),
            },
        }
    }

    fn mixed_entries() -> Vec<Entry> {
        vec![
            leader_change(1, 1, &[1, 2, 3]),
            data(1, "a"),
            data(1, ""),
            leader_change(2, 3, &[1, 2, 3]),
            leader_change(3, 2, &[1, 2, 3]),
            data(3, "b"),
            data(4, "c"),
            data(4, "d"),
        ]
    }

    #[test]
    fn every_request_round_trips_at_every_version_read() {
        let requests = [
            Message::VoteRequest {
                candidate_epoch: 5,
                candidate_id: NodeId(2),
                last_offset_epoch: 4,
                last_offset: 99,
            },
            Message::BeginQuorumEpochRequest {
                leader_epoch: 5,
                leader_id: NodeId(2),
            },
            Message::EndQuorumEpochRequest {
                leader_epoch: 5,
                leader_id: NodeId(2),
                preferred_successors: vec![NodeId(3), NodeId(1)],
            },
            Message::FetchRequest {
                correlation_id: u64::from(u32::MAX),
                current_leader_epoch: 5,
                fetch_offset: 12,
                last_fetched_epoch: 4,
            },
        ];
        for &(api_key, min, max) in VERSIONS {
            for version in min..=max {
                let versions = all_at(|_| version);
                let message = requests.iter().find(|m| api_key_of(m) == api_key).unwrap();
                let (header, inbound) = request_round_trip(&versions, &route(2, 1), message)
                    .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
                assert_eq!(header.version, version);
                assert_eq!(
                    inbound,
                    InboundRequest {
                        sender: NodeId(2),
                        message: message.clone()
                    }
                );
            }
        }
    }

    #[test]
    fn every_response_round_trips_at_every_version_read() {
        let responses = [
            Message::VoteResponse {
                leader_epoch: 5,
                leader_id: None,
                vote_granted: true,
            },
            Message::VoteResponse {
                leader_epoch: 6,
                leader_id: Some(NodeId(3)),
                vote_granted: false,
            },
            Message::BeginQuorumEpochResponse {
                leader_epoch: 5,
                leader_id: Some(NodeId(2)),
            },
            Message::EndQuorumEpochResponse {
                leader_epoch: 5,
                leader_id: None,
            },
            Message::FetchResponse {
                correlation_id: 1 << 31,
                leader_epoch: 4,
                leader_id: Some(NodeId(1)),
                high_watermark: 3,
                result: FetchResult::Entries {
                    offset_first: 40,
                    entries: mixed_entries(),
                },
            },
            Message::FetchResponse {
                correlation_id: 0,
                leader_epoch: 4,
                leader_id: Some(NodeId(1)),
                high_watermark: 3,
                result: FetchResult::Entries {
                    offset_first: 7,
                    entries: vec![],
                },
            },
            Message::FetchResponse {
                correlation_id: 9,
                leader_epoch: 4,
                leader_id: Some(NodeId(1)),
                high_watermark: 3,
                result: FetchResult::DivergingEpoch {
                    epoch: 2,
                    end_offset: 11,
                },
            },
            Message::FetchResponse {
                correlation_id: 9,
                leader_epoch: 6,
                leader_id: None,
                high_watermark: -1,
                result: FetchResult::Error(FetchError::FencedLeaderEpoch),
            },
            Message::FetchResponse {
                correlation_id: 9,
                leader_epoch: 4,
                leader_id: Some(NodeId(3)),
                high_watermark: 0,
                result: FetchResult::Error(FetchError::NotLeaderOrFollower),
            },
        ];
        for message in &responses {
            let api_key = api_key_of(message);
            let (min, max) = versions(api_key).unwrap();
            for version in min..=max {
                let through = response_round_trip(&request_answered(message), version, message)
                    .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
                assert_eq!(&through, message, "{api_key:?} v{version}");
            }
        }
    }

    /// The fields `KafkaRaftClient` fills, read back with kafka-protocol's
    /// own types.
    #[test]
    fn requests_carry_what_kafka_fills() {
        let fetch = Message::FetchRequest {
            correlation_id: 77,
            current_leader_epoch: 5,
            fetch_offset: 12,
            last_fetched_epoch: 4,
        };
        let sent = request_frame(&Versions::SENT, &route(2, 1), 0, "c", &fetch).unwrap();
        assert_eq!(
            (sent.api_key, sent.version, sent.correlation_id),
            (ApiKey::Fetch, 17, 77)
        );
        let request = parse_request_frame(sent.frame.slice(4..)).unwrap();
        let body: FetchRequest = decode_body(request.body, 17).unwrap();
        assert_eq!(body.cluster_id.as_deref(), Some(CLUSTER));
        assert_eq!(body.replica_state.replica_id, BrokerId(2));
        assert_eq!((body.max_wait_ms, body.max_bytes), (500, 8 << 20));
        assert_eq!(body.topics[0].topic_id.as_u128(), 1);
        let partition = &body.topics[0].partitions[0];
        assert_eq!(
            (
                partition.current_leader_epoch,
                partition.fetch_offset,
                partition.last_fetched_epoch
            ),
            (5, 12, 4)
        );

        let vote = Message::VoteRequest {
            candidate_epoch: 5,
            candidate_id: NodeId(2),
            last_offset_epoch: 4,
            last_offset: 99,
        };
        let sent = request_frame(&Versions::SENT, &route(2, 3), 55, "c", &vote).unwrap();
        assert_eq!((sent.version, sent.correlation_id), (1, 55));
        let request = parse_request_frame(sent.frame.slice(4..)).unwrap();
        let body: VoteRequest = decode_body(request.body, 1).unwrap();
        assert_eq!(body.voter_id, BrokerId(3));
        assert_eq!(body.cluster_id.as_deref(), Some(CLUSTER));
        assert_eq!(&*body.topics[0].topic_name.0, "__cluster_metadata");
        assert_eq!(body.topics[0].partitions[0].replica_id, BrokerId(2));
    }

    #[test]
    fn correlation_ids_map_onto_the_header_and_back() {
        for id in [0u64, 1, (1 << 31) - 1, 1 << 31, u64::from(u32::MAX)] {
            let wire = fetch_correlation_id_to_wire(id).unwrap();
            assert_eq!(fetch_correlation_id_from_wire(wire), id);
        }
        assert_eq!(fetch_correlation_id_to_wire(1 << 31), Some(i32::MIN));
        assert_eq!(fetch_correlation_id_to_wire(1 << 32), None);
        assert_eq!(next_fetch_correlation_id(u64::from(u32::MAX)), 0);
        assert_eq!(next_fetch_correlation_id(5), 6);
        let fetch = Message::FetchRequest {
            correlation_id: 1 << 32,
            current_leader_epoch: 1,
            fetch_offset: 0,
            last_fetched_epoch: 0,
        };
        assert_eq!(
            request_frame(&Versions::SENT, &route(2, 1), 0, "c", &fetch),
            Err(WireError::CorrelationId {
                correlation_id: 1 << 32
            })
        );
    }

    #[test]
    fn an_answer_to_another_fetch_is_refused() {
        let response = Message::FetchResponse {
            correlation_id: 8,
            leader_epoch: 1,
            leader_id: Some(NodeId(1)),
            high_watermark: 0,
            result: FetchResult::Error(FetchError::NotLeaderOrFollower),
        };
        let request = Message::FetchRequest {
            correlation_id: 9,
            current_leader_epoch: 1,
            fetch_offset: 0,
            last_fetched_epoch: 0,
        };
        assert_eq!(
            response_round_trip(&request, 17, &response),
            Err(WireError::CorrelationId { correlation_id: 8 })
        );
        let header = ReplyHeader {
            api_key: ApiKey::Fetch,
            version: 17,
            correlation_id: 3,
        };
        assert!(matches!(
            response_frame(&header, &response),
            Err(WireError::CorrelationId { .. })
        ));
    }

    #[test]
    fn requests_for_another_cluster_receiver_or_topic_are_refused() {
        let vote = Message::VoteRequest {
            candidate_epoch: 5,
            candidate_id: NodeId(2),
            last_offset_epoch: 4,
            last_offset: 99,
        };
        let other_cluster = Route {
            cluster_id: "other",
            ..route(2, 1)
        };
        let refused = request_round_trip(&Versions::SENT, &other_cluster, &vote).unwrap_err();
        assert_eq!(refused, WireError::InconsistentClusterId);
        assert_eq!(refused.error_code(), Some(104));
        // Addressed to 3, read by 1.
        let sent = request_frame(&Versions::SENT, &route(2, 3), 1, "c", &vote).unwrap();
        let request = parse_request_frame(sent.frame.slice(4..)).unwrap();
        let refused = message_from_request(&request.header, request.body, CLUSTER, NodeId(1));
        assert_eq!(refused, Err(WireError::InvalidVoterKey { voter_id: 3 }));
        // No cluster id is accepted, as Kafka accepts it.
        let body = match request_body(1, &route(2, 1), &vote).unwrap() {
            RequestBody::Vote(body) => body.with_cluster_id(None),
            other => panic!("{other:?}"),
        };
        let mut buf = BytesMut::new();
        body.encode(&mut buf, 1).unwrap();
        let header = ReplyHeader {
            api_key: ApiKey::Vote,
            version: 1,
            correlation_id: 1,
        };
        let inbound = message_from_request(&header, buf.freeze(), CLUSTER, NodeId(1)).unwrap();
        assert_eq!(inbound.message, vote);
        // Another topic.
        let mut body = body;
        body.topics[0].topic_name = TopicName(StrBytes::from_static_str("other"));
        let mut buf = BytesMut::new();
        body.encode(&mut buf, 1).unwrap();
        let refused = message_from_request(&header, buf.freeze(), CLUSTER, NodeId(1));
        assert_eq!(refused, Err(WireError::Invalid("not the metadata topic")));
    }

    #[test]
    fn values_no_replica_sends_are_refused() {
        let stale_log = Message::VoteRequest {
            candidate_epoch: 5,
            candidate_id: NodeId(2),
            last_offset_epoch: 5,
            last_offset: 99,
        };
        let refused = request_round_trip(&Versions::SENT, &route(2, 1), &stale_log).unwrap_err();
        assert_eq!(refused.error_code(), Some(42));
        let ahead = Message::FetchRequest {
            correlation_id: 1,
            current_leader_epoch: 3,
            fetch_offset: 0,
            last_fetched_epoch: 4,
        };
        assert!(matches!(
            request_round_trip(&Versions::SENT, &route(2, 1), &ahead),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn unsupported_versions_and_error_responses() {
        let header = ReplyHeader {
            api_key: ApiKey::Vote,
            version: 2,
            correlation_id: 1,
        };
        let refused = message_from_request(&header, Bytes::new(), CLUSTER, NodeId(1)).unwrap_err();
        assert_eq!(refused.error_code(), Some(35));
        // A request refused as a whole, and its answer read back.
        for (api_key, request) in [
            (
                ApiKey::Vote,
                request_answered(&Message::VoteResponse {
                    leader_epoch: 0,
                    leader_id: None,
                    vote_granted: false,
                }),
            ),
            (
                ApiKey::Fetch,
                Message::FetchRequest {
                    correlation_id: 5,
                    current_leader_epoch: 0,
                    fetch_offset: 0,
                    last_fetched_epoch: 0,
                },
            ),
        ] {
            let header = ReplyHeader {
                api_key,
                version: Versions::SENT.of(api_key).unwrap(),
                correlation_id: 5,
            };
            let frame = error_response_frame(&header, 104).unwrap();
            assert_eq!(
                message_from_response(&request, header.version, frame.slice(4..)),
                Err(WireError::Refused { error_code: 104 })
            );
        }
    }

    #[test]
    fn entries_round_trip_through_batches() {
        let entries = mixed_entries();
        let records = encode_entries(100, &entries).unwrap();
        assert_eq!(decode_entries(&records, 100, 64), Ok(entries.clone()));
        // A leader change and each run of data of one epoch: 6 batches.
        let batches = RecordBatchDecoder::decode_all(&mut records.clone()).unwrap();
        assert_eq!(batches.len(), 6);
        assert_eq!(decode_entries(&[], 5, 64), Ok(vec![]));
        assert!(matches!(
            decode_entries(&records, 100, 7),
            Err(WireError::Records(_))
        ));
    }

    /// kafka-protocol's decoder reads a leader change as Kafka writes it:
    /// a control batch whose one record has key (0, 2) and a
    /// LeaderChangeMessage v0 as value, at the entry's offset and epoch.
    #[test]
    fn a_leader_change_is_a_control_batch_to_kafka_protocol() {
        let records = encode_entries(42, &[leader_change(7, 3, &[1, 2, 3]), data(7, "x")]).unwrap();
        let mut buf = records.clone();
        let control = RecordBatchDecoder::decode(&mut buf).unwrap();
        let [record] = &control.records[..] else {
            panic!("{control:?}")
        };
        assert!(record.control && !record.transactional);
        assert_eq!((record.offset, record.partition_leader_epoch), (42, 7));
        assert_eq!(record.key.as_deref(), Some(&[0u8, 0, 0, 2][..]));
        let mut value = record.value.clone().unwrap();
        let message = LeaderChangeMessage::decode(&mut value, 0).unwrap();
        assert_eq!((message.version, message.leader_id), (0, BrokerId(3)));
        let voters: Vec<i32> = message.voters.iter().map(|v| v.voter_id).collect();
        assert_eq!(voters, [1, 2, 3]);
        let data = RecordBatchDecoder::decode(&mut buf).unwrap();
        let [record] = &data.records[..] else {
            panic!("{data:?}")
        };
        assert!(!record.control && record.key.is_none());
        assert_eq!((record.offset, record.partition_leader_epoch), (43, 7));
        assert_eq!(record.value.as_deref(), Some(&b"x"[..]));
    }

    /// A control batch of one record with this key, as `encode_batch`
    /// builds a leader change.
    fn control_batch(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut builder = BatchBuilder::new().with_base_timestamp(NO_TIMESTAMP);
        builder.append(&RecordData {
            timestamp_ms: NO_TIMESTAMP,
            key: Some(key),
            value: Some(value),
            headers: NO_HEADERS,
        });
        let mut batch = Vec::from(
            builder
                .build(Compression::None, ProducerIdentity::NONE)
                .unwrap(),
        );
        set_attribute(&mut batch, ATTRIBUTE_CONTROL);
        batch
    }

    fn set_attribute(batch: &mut [u8], bit: i16) {
        let field = ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET;
        let attributes = i16::from_be_bytes([batch[field.start], batch[field.start + 1]]) | bit;
        batch[field].copy_from_slice(&attributes.to_be_bytes());
        write_crc(batch);
    }

    #[test]
    fn bad_batches_are_refused() {
        let good = encode_entries(10, &[data(2, "value")]).unwrap().to_vec();
        assert!(decode_entries(&good, 10, 64).is_ok());
        let refused = |records: &[u8], offset_first: i64, why: &str| match decode_entries(
            records,
            offset_first,
            64,
        ) {
            Err(WireError::Records(text)) => assert!(text.contains(why), "{text} lacks {why}"),
            other => panic!("{other:?} where {why} was expected"),
        };
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        refused(&flipped, 10, "CRC");
        refused(&good, 11, "where 11 was next");
        refused(&good[..good.len() - 1], 10, "exceeds");
        // A gap between two batches.
        let mut gap = good.clone();
        let mut second = good.clone();
        assign_offset(&mut second, 12, 2);
        gap.extend_from_slice(&second);
        refused(&gap, 10, "where 11 was next");
        // KRAFT_VERSION (5) and an unknown type: control types Sluice does not write.
        for control_type in [5u8, 99] {
            let mut unknown = control_batch(&[0, 0, 0, control_type], b"");
            assign_offset(&mut unknown, 10, 2);
            refused(&unknown, 10, "control record of type");
        }
        let mut short_key = control_batch(&[0, 2], b"");
        assign_offset(&mut short_key, 10, 2);
        refused(&short_key, 10, "shorter than 4 bytes");
        let mut bad_value = control_batch(&LEADER_CHANGE_KEY, b"\x00");
        assign_offset(&mut bad_value, 10, 2);
        refused(&bad_value, 10, "leader change");
        let mut keyed =
            crate::batch::build_batch(NO_TIMESTAMP, &[(Some(b"k"), Some(b"v"), vec![], 0)]);
        assign_offset(&mut keyed, 10, 2);
        refused(&keyed, 10, "key or headers");
        let mut no_epoch = good.clone();
        assign_offset(&mut no_epoch, 10, -1);
        refused(&no_epoch, 10, "leader epoch");
        let mut transactional = good.clone();
        set_attribute(&mut transactional, ATTRIBUTE_TRANSACTIONAL);
        refused(&transactional, 10, "transactional");
        let mut compressed = crate::batch::tests::gzip_batch(&good);
        assign_offset(&mut compressed, 10, 2);
        refused(&compressed, 10, "compressed");
        // The CRC does not cover the header before the attributes, so a
        // record count field is checked too.
        assert_eq!(CRC_OFFSET + 4, ATTRIBUTES_OFFSET);
        let mut miscounted = good.clone();
        miscounted[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&2i32.to_be_bytes());
        write_crc(&mut miscounted);
        refused(&miscounted, 10, "record count");
    }

    fn node() -> impl Strategy<Value = NodeId> {
        (0..=i32::MAX).prop_map(NodeId)
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let record = prop_oneof![
            (node(), proptest::collection::vec(node(), 0..=VOTERS_MAX))
                .prop_map(|(leader_id, voters)| Record::LeaderChange { leader_id, voters }),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|value| Record::Data(Bytes::from(value))),
        ];
        (0..6i32, record).prop_map(|(epoch, record)| Entry { epoch, record })
    }

    fn request() -> impl Strategy<Value = Message> {
        prop_oneof![
            (1..=i32::MAX, node(), 0..=i64::MAX).prop_flat_map(
                |(epoch, candidate_id, last_offset)| {
                    (0..epoch).prop_map(move |last_offset_epoch| Message::VoteRequest {
                        candidate_epoch: epoch,
                        candidate_id,
                        last_offset_epoch,
                        last_offset,
                    })
                }
            ),
            (0..=i32::MAX, node()).prop_map(|(leader_epoch, leader_id)| {
                Message::BeginQuorumEpochRequest {
                    leader_epoch,
                    leader_id,
                }
            }),
            (
                0..=i32::MAX,
                node(),
                proptest::collection::vec(node(), 0..=VOTERS_MAX)
            )
                .prop_map(|(leader_epoch, leader_id, preferred_successors)| {
                    Message::EndQuorumEpochRequest {
                        leader_epoch,
                        leader_id,
                        preferred_successors,
                    }
                }),
            (0..=u64::from(u32::MAX), 0..=i32::MAX, 0..=i64::MAX).prop_flat_map(
                |(correlation_id, epoch, fetch_offset)| {
                    (0..=epoch).prop_map(move |last_fetched_epoch| Message::FetchRequest {
                        correlation_id,
                        current_leader_epoch: epoch,
                        fetch_offset,
                        last_fetched_epoch,
                    })
                }
            ),
        ]
    }

    fn response() -> impl Strategy<Value = Message> {
        let leader = || proptest::option::of(node());
        let result = prop_oneof![
            (
                0..i64::MAX / 2,
                proptest::collection::vec(entry(), 0..=ENTRIES_PER_FETCH_MAX)
            )
                .prop_map(|(offset_first, entries)| FetchResult::Entries {
                    offset_first,
                    entries
                }),
            (0..=i32::MAX, any::<i64>())
                .prop_map(|(epoch, end_offset)| FetchResult::DivergingEpoch { epoch, end_offset }),
            Just(FetchResult::Error(FetchError::FencedLeaderEpoch)),
            Just(FetchResult::Error(FetchError::NotLeaderOrFollower)),
        ];
        prop_oneof![
            (any::<i32>(), leader(), any::<bool>()).prop_map(
                |(leader_epoch, leader_id, vote_granted)| Message::VoteResponse {
                    leader_epoch,
                    leader_id,
                    vote_granted,
                }
            ),
            (any::<i32>(), leader()).prop_map(|(leader_epoch, leader_id)| {
                Message::BeginQuorumEpochResponse {
                    leader_epoch,
                    leader_id,
                }
            }),
            (any::<i32>(), leader()).prop_map(|(leader_epoch, leader_id)| {
                Message::EndQuorumEpochResponse {
                    leader_epoch,
                    leader_id,
                }
            }),
            (
                0..=u64::from(u32::MAX),
                any::<i32>(),
                leader(),
                any::<i64>(),
                result
            )
                .prop_map(
                    |(correlation_id, leader_epoch, leader_id, high_watermark, result)| {
                        Message::FetchResponse {
                            correlation_id,
                            leader_epoch,
                            leader_id,
                            high_watermark,
                            result,
                        }
                    }
                ),
        ]
    }

    /// Every (API, version) read, with a request of that API.
    fn api_versions() -> impl Strategy<Value = (ApiKey, i16)> {
        proptest::sample::select(
            VERSIONS
                .iter()
                .flat_map(|&(key, min, max)| (min..=max).map(move |v| (key, v)))
                .collect::<Vec<_>>(),
        )
    }

    fn a_request_of(api_key: ApiKey) -> Message {
        let response = match api_key {
            ApiKey::Vote => Message::VoteResponse {
                leader_epoch: 0,
                leader_id: None,
                vote_granted: false,
            },
            ApiKey::BeginQuorumEpoch => Message::BeginQuorumEpochResponse {
                leader_epoch: 0,
                leader_id: None,
            },
            ApiKey::EndQuorumEpoch => Message::EndQuorumEpochResponse {
                leader_epoch: 0,
                leader_id: None,
            },
            _ => Message::FetchResponse {
                correlation_id: 0,
                leader_epoch: 0,
                leader_id: None,
                high_watermark: 0,
                result: FetchResult::Entries {
                    offset_first: 0,
                    entries: vec![],
                },
            },
        };
        request_answered(&response)
    }

    proptest! {
        #[test]
        fn any_request_round_trips(message in request(), version_pick in any::<prop::sample::Index>(), receiver in node()) {
            let api_key = api_key_of(&message);
            let (min, max) = versions(api_key).unwrap();
            let version = min + version_pick.index((max - min + 1) as usize) as i16;
            let sender = match &message {
                Message::VoteRequest { candidate_id, .. } => *candidate_id,
                Message::BeginQuorumEpochRequest { leader_id, .. }
                | Message::EndQuorumEpochRequest { leader_id, .. } => *leader_id,
                _ => NodeId(4),
            };
            let route = Route { cluster_id: CLUSTER, sender, receiver };
            let (_, inbound) = request_round_trip(&all_at(|_| version), &route, &message).unwrap();
            prop_assert_eq!(inbound, InboundRequest { sender, message });
        }

        #[test]
        fn any_response_round_trips(message in response(), version_pick in any::<prop::sample::Index>()) {
            let (min, max) = versions(api_key_of(&message)).unwrap();
            let version = min + version_pick.index((max - min + 1) as usize) as i16;
            let through = response_round_trip(&request_answered(&message), version, &message).unwrap();
            prop_assert_eq!(through, message);
        }

        #[test]
        fn any_entries_round_trip(offset_first in 0..i64::MAX / 2, entries in proptest::collection::vec(entry(), 0..40)) {
            let records = encode_entries(offset_first, &entries).unwrap();
            prop_assert_eq!(decode_entries(&records, offset_first, entries.len()), Ok(entries));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(
            (api_key, version) in api_versions(),
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            correlation_id in any::<i32>(),
        ) {
            let bytes = Bytes::from(bytes);
            let header = ReplyHeader { api_key, version, correlation_id };
            let _ = message_from_request(&header, bytes.clone(), CLUSTER, NodeId(1));
            let _ = message_from_response(&a_request_of(api_key), version, bytes.clone());
            let _ = parse_request_frame(bytes.clone());
            let _ = decode_entries(&bytes, 0, ENTRIES_PER_FETCH_MAX);
        }

        /// Valid frames with a few bytes changed reach past the first
        /// length checks that arbitrary bytes rarely pass.
        #[test]
        fn damaged_frames_never_panic_the_decoders(
            request in request(),
            response in response(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let damaged = |frame: &Bytes| {
                let mut bytes = frame[4..].to_vec();
                for (at, byte) in &damage {
                    if !bytes.is_empty() {
                        let at = at.index(bytes.len());
                        bytes[at] = *byte;
                    }
                }
                Bytes::from(bytes)
            };
            let sent = request_frame(&Versions::SENT, &route(4, 1), 3, "c", &request).unwrap();
            if let Ok(parsed) = parse_request_frame(damaged(&sent.frame)) {
                let _ = message_from_request(&parsed.header, parsed.body, CLUSTER, NodeId(1));
            }
            let api_key = api_key_of(&response);
            let version = Versions::SENT.of(api_key).unwrap();
            let answered = request_answered(&response);
            let header = ReplyHeader { api_key, version, correlation_id: 0 };
            let header = match &answered {
                Message::FetchRequest { correlation_id, .. } => ReplyHeader {
                    correlation_id: fetch_correlation_id_to_wire(*correlation_id).unwrap(),
                    ..header
                },
                _ => header,
            };
            let frame = response_frame(&header, &response).unwrap();
            let _ = message_from_response(&answered, version, damaged(&frame));
        }
    }
}
