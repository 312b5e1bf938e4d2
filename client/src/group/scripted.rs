//! Tests of the group driver (`member`) and the consumer's group side
//! against a scripted coordinator in memory: errors a single Sluice node
//! never sends (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS,
//! FENCED_INSTANCE_ID, ...) can be queued per API, and every request is
//! logged for the assertions. Time is tokio's paused clock, so heartbeats
//! and timeouts run instantly and the same way every time.
//!
//! The scripted broker is node 1 and coordinator of every group; it has
//! one topic `t` of two partitions, no records, and a group of whoever
//! joins (the member id is `m-<n>`, the first JoinGroup without one gets
//! MEMBER_ID_REQUIRED).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::client::Client;
use crate::config::{ClientConfig, ConsumerConfig, OffsetReset};
use crate::connector::Connector;
use crate::consumer::Consumer;
use crate::error::Error;
use crate::group::member::{CommitIdentity, GroupMember, GroupSettings};
use crate::group::Assignor;
use crate::record::TopicPartition;

const TOPIC: &str = "t";
/// The topic's id, so Fetch v13+ (topics by id, as Sluice serves it) works.
const TOPIC_ID: uuid::Uuid = uuid::Uuid::from_u128(0x5c12_1ced);
const PARTITIONS: i32 = 2;

/// What the scripted broker serves, and what it was asked.
#[derive(Default)]
struct Script {
    /// Error codes to answer, per API, before answering normally.
    errors: BTreeMap<i16, VecDeque<i16>>,
    /// Every request: its API and a short description.
    log: Vec<(ApiKey, String)>,
    members: BTreeMap<String, Bytes>,
    generation: i32,
    next_member: u32,
    committed: BTreeMap<(String, i32), i64>,
}

impl Script {
    fn fail_next(&mut self, api: ApiKey, errors: &[ResponseError]) {
        let queue = self.errors.entry(api as i16).or_default();
        queue.extend(errors.iter().map(|e| e.code()));
    }

    fn next_error(&mut self, api: ApiKey) -> i16 {
        self.errors
            .get_mut(&(api as i16))
            .and_then(VecDeque::pop_front)
            .unwrap_or(0)
    }

    fn count(&self, api: ApiKey) -> usize {
        self.log.iter().filter(|(a, _)| *a == api).count()
    }
}

type Shared = Arc<Mutex<Script>>;

#[derive(Clone)]
struct ScriptedConnector {
    script: Shared,
}

impl Connector for ScriptedConnector {
    type Stream = DuplexStream;

    fn connect(
        &self,
        _address: &str,
    ) -> impl std::future::Future<Output = std::io::Result<DuplexStream>> + Send {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(server, self.script.clone()));
        async move { Ok(client) }
    }
}

async fn serve(mut socket: DuplexStream, script: Shared) {
    loop {
        let mut length = [0u8; 4];
        if socket.read_exact(&mut length).await.is_err() {
            return;
        }
        let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
        if socket.read_exact(&mut frame).await.is_err() {
            return;
        }
        let mut frame = Bytes::from(frame);
        let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let header =
            RequestHeader::decode(&mut frame, api.request_header_version(version)).unwrap();
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut body, api.response_header_version(version))
            .unwrap();
        let hold_ms = answer(api, version, frame, &mut body, &mut script.lock().unwrap());
        // A fetch with nothing to return waits out its max wait, as a
        // broker's long poll does (and lets the paused clock move).
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        let mut out = BytesMut::new();
        out.put_u32(body.len() as u32);
        out.extend_from_slice(&body);
        if socket.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn decode<T: Decodable>(mut body: Bytes, version: i16) -> T {
    let decoded = T::decode(&mut body, version).unwrap();
    assert!(!body.has_remaining(), "trailing request bytes");
    decoded
}

fn put<T: Encodable>(out: &mut BytesMut, version: i16, response: T) {
    response.encode(out, version).unwrap();
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// Encodes the answer to one request into `out`; returns how long to hold
/// it back.
fn answer(api: ApiKey, version: i16, body: Bytes, out: &mut BytesMut, script: &mut Script) -> u64 {
    let error = if api == ApiKey::ApiVersions {
        0
    } else {
        script.next_error(api)
    };
    match api {
        ApiKey::ApiVersions => put(out, version, api_versions()),
        ApiKey::Metadata => put(out, version, metadata()),
        ApiKey::FindCoordinator => {
            let _: FindCoordinatorRequest = decode(body, version);
            script.log.push((api, format!("error {error}")));
            put(out, version, find_coordinator(error));
        }
        ApiKey::JoinGroup => {
            let request: JoinGroupRequest = decode(body, version);
            let response = join(script, &request, error);
            put(out, version, response);
        }
        ApiKey::SyncGroup => {
            let request: SyncGroupRequest = decode(body, version);
            script
                .log
                .push((api, format!("{} error {error}", request.member_id.as_str())));
            let assignment = request
                .assignments
                .iter()
                .find(|a| a.member_id == request.member_id)
                .map(|a| a.assignment.clone())
                .unwrap_or_default();
            put(
                out,
                version,
                SyncGroupResponse::default()
                    .with_error_code(error)
                    .with_assignment(assignment),
            );
        }
        ApiKey::Heartbeat => {
            let request: HeartbeatRequest = decode(body, version);
            script
                .log
                .push((api, format!("{} error {error}", request.member_id.as_str())));
            put(
                out,
                version,
                HeartbeatResponse::default().with_error_code(error),
            );
        }
        ApiKey::LeaveGroup => {
            let request: LeaveGroupRequest = decode(body, version);
            let ids: Vec<String> = request
                .members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect();
            for id in &ids {
                script.members.remove(id);
            }
            script.log.push((api, ids.join(",")));
            put(out, version, LeaveGroupResponse::default());
        }
        ApiKey::OffsetCommit => {
            let request: OffsetCommitRequest = decode(body, version);
            put(out, version, commit(script, &request, error));
        }
        ApiKey::OffsetFetch => {
            let request: OffsetFetchRequest = decode(body, version);
            put(out, version, offset_fetch(script, &request, error));
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode(body, version);
            put(out, version, empty_fetch(&request));
            return request.max_wait_ms.max(0) as u64;
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = decode(body, version);
            put(out, version, offsets_at_zero(&request));
        }
        other => panic!("the scripted broker does not serve {other:?}"),
    }
    0
}

/// The real broker's version table (the core's), so the client negotiates
/// what it would with Sluice. An API advertised here but not answered by
/// `answer` fails the test loudly there.
fn api_versions() -> ApiVersionsResponse {
    sluice_core::wire::versions::api_versions_response(0)
}

fn metadata() -> MetadataResponse {
    let partitions = (0..PARTITIONS)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(1))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(1))
            .with_host(text("scripted"))
            .with_port(1)])
        .with_controller_id(BrokerId(1))
        .with_topics(vec![MetadataResponseTopic::default()
            .with_name(Some(TopicName(text(TOPIC))))
            .with_topic_id(TOPIC_ID)
            .with_partitions(partitions)])
}

fn find_coordinator(error: i16) -> FindCoordinatorResponse {
    let found = find_coordinator_response::Coordinator::default()
        .with_key(text("g"))
        .with_error_code(error)
        .with_node_id(BrokerId(1))
        .with_host(text("scripted"))
        .with_port(1);
    FindCoordinatorResponse::default().with_coordinators(vec![found])
}

/// A group of everyone who joins; each JoinGroup forms a new generation at
/// once (the scripted tests have one member).
fn join(script: &mut Script, request: &JoinGroupRequest, error: i16) -> JoinGroupResponse {
    let sent = request.member_id.to_string();
    script
        .log
        .push((ApiKey::JoinGroup, format!("{sent:?} error {error}")));
    if error != 0 {
        return JoinGroupResponse::default()
            .with_error_code(error)
            .with_member_id(request.member_id.clone());
    }
    if sent.is_empty() && request.group_instance_id.is_none() {
        script.next_member += 1;
        return JoinGroupResponse::default()
            .with_error_code(ResponseError::MemberIdRequired.code())
            .with_member_id(text(&format!("m-{}", script.next_member)));
    }
    let member_id = if sent.is_empty() {
        script.next_member += 1;
        format!("m-{}", script.next_member)
    } else {
        sent
    };
    let metadata = request.protocols[0].metadata.clone();
    script.members.insert(member_id.clone(), metadata);
    script.generation += 1;
    let members = script
        .members
        .iter()
        .map(|(id, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(text(id))
                .with_metadata(metadata.clone())
        })
        .collect();
    JoinGroupResponse::default()
        .with_generation_id(script.generation)
        .with_protocol_type(Some(text("consumer")))
        .with_protocol_name(Some(request.protocols[0].name.clone()))
        .with_leader(text(&member_id))
        .with_member_id(text(&member_id))
        .with_members(members)
}

fn commit(script: &mut Script, request: &OffsetCommitRequest, error: i16) -> OffsetCommitResponse {
    let mut described = Vec::new();
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    described.push(format!(
                        "{}-{}@{}",
                        topic.name.as_str(),
                        p.partition_index,
                        p.committed_offset
                    ));
                    if error == 0 {
                        let key = (topic.name.to_string(), p.partition_index);
                        script.committed.insert(key, p.committed_offset);
                    }
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let who = format!(
        "generation {} member {:?} {} error {error}",
        request.generation_id_or_member_epoch,
        request.member_id.as_str(),
        described.join(" ")
    );
    script.log.push((ApiKey::OffsetCommit, who));
    OffsetCommitResponse::default().with_topics(topics)
}

fn offset_fetch(
    script: &mut Script,
    request: &OffsetFetchRequest,
    error: i16,
) -> OffsetFetchResponse {
    script
        .log
        .push((ApiKey::OffsetFetch, format!("error {error}")));
    let group = &request.groups[0];
    let topics = group
        .topics
        .iter()
        .flatten()
        .map(|topic| {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|&p| {
                    let key = (topic.name.to_string(), p);
                    OffsetFetchResponsePartitions::default()
                        .with_partition_index(p)
                        .with_committed_offset(script.committed.get(&key).copied().unwrap_or(-1))
                })
                .collect();
            OffsetFetchResponseTopics::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_groups(vec![OffsetFetchResponseGroup::default()
        .with_group_id(group.group_id.clone())
        .with_error_code(error)
        .with_topics(topics)])
}

/// No records anywhere: every partition answers empty at high watermark 0.
fn empty_fetch(request: &FetchRequest) -> FetchResponse {
    let responses = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(0)
                        .with_records(Some(Bytes::new()))
                })
                .collect();
            // Named before v13, by id from v13: echo whichever came.
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}

/// Every log is empty: earliest and latest are both 0.
fn offsets_at_zero(request: &ListOffsetsRequest) -> ListOffsetsResponse {
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_offset(0)
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn client(script: &Shared) -> Client<ScriptedConnector> {
    let config = ClientConfig::new(["scripted:1"]);
    let connector = ScriptedConnector {
        script: script.clone(),
    };
    Client::new(connector, config).unwrap()
}

fn settings(instance: Option<&str>) -> GroupSettings {
    GroupSettings {
        require_stable: true,
        group_id: "g".into(),
        group_instance_id: instance.map(str::to_string),
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 1_000,
        max_poll_interval_ms: 60_000,
        assignors: vec![Assignor::Range, Assignor::RoundRobin],
    }
}

fn member(script: &Shared) -> Arc<GroupMember<ScriptedConnector>> {
    Arc::new(GroupMember::new(client(script), settings(None)))
}

fn tps() -> Vec<TopicPartition> {
    (0..PARTITIONS)
        .map(|p| TopicPartition::new(TOPIC, p))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_join_takes_the_required_member_id_and_leads() {
    let script = Shared::default();
    let member = member(&script);
    let joined = member.join(&[TOPIC.to_string()]).await.unwrap();
    assert_eq!((joined.generation, joined.member_id.as_str()), (1, "m-1"));
    assert_eq!(joined.assignment, tps());
    assert_eq!(
        joined.partition_counts,
        Some(BTreeMap::from([(TOPIC.to_string(), PARTITIONS)]))
    );
    let script = script.lock().unwrap();
    let joins: Vec<&str> = script
        .log
        .iter()
        .filter(|(api, _)| *api == ApiKey::JoinGroup)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(joins, ["\"\" error 0", "\"m-1\" error 0"]);
}

#[tokio::test(start_paused = true)]
async fn coordinator_errors_find_the_coordinator_again_and_loading_waits() {
    let script = Shared::default();
    script.lock().unwrap().fail_next(
        ApiKey::JoinGroup,
        &[
            ResponseError::NotCoordinator,
            ResponseError::CoordinatorLoadInProgress,
            ResponseError::CoordinatorNotAvailable,
        ],
    );
    script.lock().unwrap().fail_next(
        ApiKey::FindCoordinator,
        &[ResponseError::CoordinatorNotAvailable],
    );
    let member = member(&script);
    // The first lookup fails with COORDINATOR_NOT_AVAILABLE: retriable.
    let joined = member.join(&[TOPIC.to_string()]).await.unwrap();
    assert_eq!(joined.member_id, "m-1");
    let script = script.lock().unwrap();
    // Initial lookup (refused), lookup again, then one per coordinator error.
    assert_eq!(script.count(ApiKey::FindCoordinator), 4, "{:?}", script.log);
    assert_eq!(script.count(ApiKey::JoinGroup), 5, "{:?}", script.log);
}

#[tokio::test(start_paused = true)]
async fn fatal_join_errors_reach_the_caller_at_once() {
    let script = Shared::default();
    script
        .lock()
        .unwrap()
        .fail_next(ApiKey::JoinGroup, &[ResponseError::GroupMaxSizeReached]);
    let error = member(&script)
        .join(&[TOPIC.to_string()])
        .await
        .unwrap_err();
    assert_eq!(
        error.response_error(),
        Some(ResponseError::GroupMaxSizeReached)
    );
    assert_eq!(script.lock().unwrap().count(ApiKey::JoinGroup), 1);
}

#[tokio::test(start_paused = true)]
async fn sync_errors_rejoin_and_unknown_members_start_over() {
    let script = Shared::default();
    script.lock().unwrap().fail_next(
        ApiKey::SyncGroup,
        &[
            ResponseError::RebalanceInProgress,
            ResponseError::UnknownMemberId,
        ],
    );
    let joined = member(&script).join(&[TOPIC.to_string()]).await.unwrap();
    // m-1 rejoins after REBALANCE_IN_PROGRESS, starts over as m-2 after
    // UNKNOWN_MEMBER_ID.
    assert_eq!(joined.member_id, "m-2");
    let script = script.lock().unwrap();
    let syncs: Vec<&str> = script
        .log
        .iter()
        .filter(|(api, _)| *api == ApiKey::SyncGroup)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(syncs, ["m-1 error 27", "m-1 error 25", "m-2 error 0"]);
}

#[tokio::test(start_paused = true)]
async fn commits_retry_coordinator_errors_only() {
    let script = Shared::default();
    let member = member(&script);
    let joined = member.join(&[TOPIC.to_string()]).await.unwrap();
    let identity = || CommitIdentity {
        generation: joined.generation,
        member_id: joined.member_id.clone(),
        group_instance_id: None,
    };
    let offsets = BTreeMap::from([
        (TopicPartition::new(TOPIC, 0), 7),
        (TopicPartition::new(TOPIC, 1), 9),
    ]);
    script.lock().unwrap().fail_next(
        ApiKey::OffsetCommit,
        &[
            ResponseError::NotCoordinator,
            ResponseError::CoordinatorLoadInProgress,
        ],
    );
    member
        .commit_sync(offsets.clone(), identity())
        .await
        .unwrap();
    assert_eq!(script.lock().unwrap().count(ApiKey::OffsetCommit), 3);
    assert_eq!(
        member.committed(&tps()).await.unwrap(),
        BTreeMap::from([
            (TopicPartition::new(TOPIC, 0), Some(7)),
            (TopicPartition::new(TOPIC, 1), Some(9))
        ])
    );
    // Not retried: the topic is unknown, or the group moved on.
    for error in [
        ResponseError::UnknownTopicOrPartition,
        ResponseError::RebalanceInProgress,
    ] {
        script
            .lock()
            .unwrap()
            .fail_next(ApiKey::OffsetCommit, &[error]);
        let before = script.lock().unwrap().count(ApiKey::OffsetCommit);
        let failed = member
            .commit_sync(offsets.clone(), identity())
            .await
            .unwrap_err();
        assert_eq!(failed.response_error(), Some(error));
        assert_eq!(
            script.lock().unwrap().count(ApiKey::OffsetCommit),
            before + 1
        );
    }
    assert!(
        member.membership().needs_rejoin(),
        "REBALANCE_IN_PROGRESS asks for a rejoin"
    );
}

#[tokio::test(start_paused = true)]
async fn offset_fetch_waits_out_loading_and_unstable_offsets() {
    let script = Shared::default();
    script.lock().unwrap().fail_next(
        ApiKey::OffsetFetch,
        &[
            ResponseError::CoordinatorLoadInProgress,
            ResponseError::UnstableOffsetCommit,
        ],
    );
    let member = member(&script);
    let committed = member.committed(&tps()).await.unwrap();
    assert!(committed.values().all(Option::is_none));
    assert_eq!(script.lock().unwrap().count(ApiKey::OffsetFetch), 3);
    script.lock().unwrap().fail_next(
        ApiKey::OffsetFetch,
        &[ResponseError::GroupAuthorizationFailed],
    );
    let error = member.committed(&tps()).await.unwrap_err();
    assert_eq!(
        error.response_error(),
        Some(ResponseError::GroupAuthorizationFailed)
    );
}

fn group_consumer(script: &Shared, config: ConsumerConfig) -> Consumer<ScriptedConnector> {
    let config = ConsumerConfig {
        group_id: Some("g".into()),
        auto_offset_reset: OffsetReset::Earliest,
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 1_000,
        fetch_max_wait_ms: 100,
        ..config
    };
    let mut consumer = Consumer::new(client(script), config).unwrap();
    consumer.subscribe([TOPIC]).unwrap();
    consumer
}

async fn poll_until_assigned(consumer: &mut Consumer<ScriptedConnector>) {
    for _ in 0..100 {
        consumer.poll(Duration::from_millis(200)).await.unwrap();
        if consumer.generation().is_some() {
            return;
        }
    }
    panic!("never assigned");
}

#[tokio::test(start_paused = true)]
async fn a_fenced_member_loses_its_partitions_and_keeps_failing() {
    let script = Shared::default();
    let mut consumer = group_consumer(&script, ConsumerConfig::default());
    poll_until_assigned(&mut consumer).await;
    assert_eq!(consumer.assignment(), tps());
    script
        .lock()
        .unwrap()
        .fail_next(ApiKey::Heartbeat, &[ResponseError::FencedInstanceId]);
    let mut failed = None;
    for _ in 0..50 {
        if let Err(error) = consumer.poll(Duration::from_millis(500)).await {
            failed = Some(error);
            break;
        }
    }
    let error = failed.expect("the fencing reaches poll");
    assert_eq!(
        error.response_error(),
        Some(ResponseError::FencedInstanceId)
    );
    assert!(
        consumer.assignment().is_empty(),
        "a fenced member keeps nothing"
    );
    let again = consumer.poll(Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(
        again.response_error(),
        Some(ResponseError::FencedInstanceId)
    );
    // Those polls fail without waiting for anything; a caller that keeps
    // polling must still let other tasks run (this runtime has one thread:
    // the spawned task runs only when the polling task yields).
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    for _ in 0..1_000 {
        if other_ran.load(Ordering::SeqCst) {
            break;
        }
        let error = consumer.poll(Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(
            error.response_error(),
            Some(ResponseError::FencedInstanceId)
        );
    }
    assert!(
        other_ran.load(Ordering::SeqCst),
        "a thousand failing polls never yielded"
    );
    let commits_after = script.lock().unwrap().count(ApiKey::OffsetCommit);
    consumer.unsubscribe().await.unwrap();
    assert_eq!(
        script.lock().unwrap().count(ApiKey::OffsetCommit),
        commits_after,
        "nothing is committed for lost partitions"
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_that_stops_polling_leaves_and_rejoins_at_its_next_poll() {
    let script = Shared::default();
    let config = ConsumerConfig {
        max_poll_interval_ms: 5_000,
        ..ConsumerConfig::default()
    };
    let mut consumer = group_consumer(&script, config);
    poll_until_assigned(&mut consumer).await;
    assert_eq!(consumer.member_id().as_deref(), Some("m-1"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    {
        let script = script.lock().unwrap();
        assert_eq!(script.count(ApiKey::LeaveGroup), 1, "{:?}", script.log);
    }
    // The next poll finds the partitions lost and joins as a new member.
    for _ in 0..20 {
        consumer.poll(Duration::from_millis(200)).await.unwrap();
        if consumer.member_id().as_deref() == Some("m-2") && consumer.generation().is_some() {
            break;
        }
    }
    assert_eq!(consumer.member_id().as_deref(), Some("m-2"));
    assert_eq!(consumer.assignment(), tps());
}

#[tokio::test(start_paused = true)]
async fn rebalances_commit_consumed_positions_before_giving_partitions_up() {
    let script = Shared::default();
    // Positions come from OffsetFetch, else from the reset (0 here).
    script
        .lock()
        .unwrap()
        .committed
        .insert((TOPIC.into(), 1), 5);
    let mut consumer = group_consumer(&script, ConsumerConfig::default());
    poll_until_assigned(&mut consumer).await;
    script
        .lock()
        .unwrap()
        .fail_next(ApiKey::Heartbeat, &[ResponseError::RebalanceInProgress]);
    let generation = consumer.generation().unwrap();
    for _ in 0..50 {
        consumer.poll(Duration::from_millis(500)).await.unwrap();
        if consumer.generation().is_some_and(|g| g > generation) {
            break;
        }
    }
    assert!(consumer.generation().unwrap() > generation);
    let script = script.lock().unwrap();
    let told = script
        .log
        .iter()
        .position(|(api, d)| *api == ApiKey::Heartbeat && d.ends_with("error 27"))
        .expect("the heartbeat that said rebalance");
    let rejoined = told
        + script.log[told..]
            .iter()
            .position(|(api, _)| *api == ApiKey::JoinGroup)
            .expect("a rejoin");
    // Between the two: a commit of the consumed positions (partition 1 from
    // its committed offset, partition 0 from the reset) in the old generation.
    let expected = format!("generation {generation} member \"m-1\" t-0@0 t-1@5 error 0");
    let between: Vec<&str> = script.log[told..rejoined]
        .iter()
        .filter(|(api, _)| *api == ApiKey::OffsetCommit)
        .map(|(_, d)| d.as_str())
        .collect();
    assert!(between.contains(&expected.as_str()), "{between:?}");
}

#[tokio::test(start_paused = true)]
async fn static_members_skip_the_member_id_round_and_send_no_leave() {
    let script = Shared::default();
    let member = Arc::new(GroupMember::new(
        client(&script),
        settings(Some("static-1")),
    ));
    let joined = member.join(&[TOPIC.to_string()]).await.unwrap();
    assert_eq!(joined.member_id, "m-1");
    member.leave("closing").await.unwrap();
    let script = script.lock().unwrap();
    assert_eq!(script.count(ApiKey::JoinGroup), 1);
    assert_eq!(script.count(ApiKey::LeaveGroup), 0);
}

#[tokio::test(start_paused = true)]
async fn a_commit_without_a_stable_generation_is_refused_locally() {
    let script = Shared::default();
    let consumer = group_consumer(&script, ConsumerConfig::default());
    let error = consumer.commit_sync().await.unwrap_err();
    assert!(matches!(error, Error::NotInGroup { .. }), "{error}");
    assert_eq!(script.lock().unwrap().count(ApiKey::OffsetCommit), 0);
}
