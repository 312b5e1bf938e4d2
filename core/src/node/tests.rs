//! Node tests: requests in as frames, responses and syncs out, on `MemStorage`,
//! with the driver's part (performing syncs, crashing the disk) played here.

// Peer addresses as values for `handle_connect`; no sockets are opened.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use super::*;
use crate::batch::tests::build_batch;
use crate::batch::HEADER_BYTES;
use crate::broker::OFFSETS_TOPIC;
use crate::storage::MemStorage;
use crate::types::{NodeId, Now};

const CONN: ConnectionId = ConnectionId(1);
/// The peer `CONN` connects from (a documentation address, RFC 5737).
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

struct Harness {
    node: Node<MemStorage>,
    now_ms: i64,
    correlation: i32,
    /// Syncs requested and not yet performed.
    pending_syncs: Vec<(u64, Vec<SyncTarget>)>,
    sent: Vec<Bytes>,
    closed: bool,
    /// The connection requests are sent on.
    connection: ConnectionId,
    /// Steps the node asks for at once (creations) are left for the test
    /// to hand in; by default each input is followed by them.
    hold_steps: bool,
}

impl Harness {
    fn new(storage: MemStorage, pairs: &[(&str, &str)]) -> Harness {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = BrokerConfig::from_pairs(&pairs).expect("valid config");
        let node = Node::open(
            storage,
            config,
            ("localhost".into(), 9092),
            1,
            Now::at(1_000_000),
        )
        .expect("opens");
        let mut harness = Harness {
            node,
            now_ms: 1_000_000,
            correlation: 0,
            pending_syncs: Vec::new(),
            sent: Vec::new(),
            closed: false,
            connection: CONN,
            hold_steps: false,
        };
        harness.drain();
        harness.sync_all();
        assert!(harness.node.is_ready());
        harness
            .node
            .handle_connect(Now::at(harness.now_ms), CONN, PEER);
        harness
    }

    fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Send { frame, .. } => self.sent.push(frame),
                Output::Close { .. } => self.closed = true,
                Output::Sync { id, targets } => self.pending_syncs.push((id, targets)),
                Output::SendPeer { peer, .. } | Output::ResetPeer { peer, .. } => {
                    panic!("no peers here, yet an output for {peer}")
                }
            }
        }
    }

    /// Performs every requested sync, including those requested meanwhile.
    /// Steps creations under way too (a deadline due now), as a driver
    /// does.
    fn sync_all(&mut self) {
        loop {
            if !self.hold_steps {
                self.run_due_steps();
            }
            if self.pending_syncs.is_empty() {
                break;
            }
            for (id, targets) in std::mem::take(&mut self.pending_syncs) {
                for target in &targets {
                    self.node.broker.storage.sync(target);
                }
                self.node.handle_synced(Now::at(self.now_ms), id, Ok(()));
                self.drain();
            }
        }
    }

    /// Hands the node the steps it asked for at once (creations), without
    /// moving the clock.
    fn run_due_steps(&mut self) {
        while self.node.broker.creations.is_busy() {
            assert_eq!(self.node.poll_timeout(), Some(self.now_ms), "due at once");
            self.node.handle_timeout(Now::at(self.now_ms));
            self.drain();
        }
    }

    fn send_raw(&mut self, frame: Bytes) -> FrameOutcome {
        let outcome = self
            .node
            .handle_frame(Now::at(self.now_ms), self.connection, frame);
        self.drain();
        if !self.hold_steps {
            self.run_due_steps();
        }
        outcome
    }

    fn send<T: Encodable>(&mut self, key: ApiKey, version: i16, body: &T) -> i32 {
        self.correlation += 1;
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        header
            .encode(&mut buf, key.request_header_version(version))
            .expect("header encodes");
        body.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("{key:?} v{version} request: {e}"));
        let _ = self.send_raw(buf.freeze());
        self.correlation
    }

    /// Takes the next response, checking its correlation id.
    fn take<T: Decodable>(&mut self, key: ApiKey, version: i16, correlation: i32) -> T {
        assert!(!self.sent.is_empty(), "no response was sent");
        let mut frame = self.sent.remove(0);
        let length = i32::from_be_bytes(frame[..4].try_into().expect("length"));
        assert_eq!(length as usize, frame.len() - 4);
        let _ = frame.split_to(4);
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .expect("header");
        assert_eq!(header.correlation_id, correlation);
        T::decode(&mut frame, version).expect("body decodes")
    }

    fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
        let configs = configs
            .iter()
            .map(|(k, v)| {
                create_topics_request::CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.to_string()))
                    .with_value(Some(StrBytes::from_string(v.to_string())))
            })
            .collect();
        let topic = create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(configs);
        let c = self.send(
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default().with_topics(vec![topic]),
        );
        self.sync_all();
        let response: CreateTopicsResponse = self.take(ApiKey::CreateTopics, 7, c);
        response.topics[0].error_code
    }

    /// A Produce of one batch; a transactional batch goes with the
    /// transactional id "tx", as clients send it.
    fn produce(&mut self, topic: &str, partition: i32, acks: i16, records: Bytes) -> i32 {
        let transactional = records.len() > HEADER_BYTES
            && i16::from_be_bytes([records[21], records[22]]) & 0x10 != 0;
        let data = produce_request::PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(records));
        let topic = produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![data]);
        let request = ProduceRequest::default()
            .with_transactional_id(
                transactional.then(|| TransactionalId(StrBytes::from_static_str("tx"))),
            )
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_topic_data(vec![topic]);
        self.send(ApiKey::Produce, 9, &request)
    }

    fn produce_result(&mut self, correlation: i32) -> (i16, i64) {
        let response: ProduceResponse = self.take(ApiKey::Produce, 9, correlation);
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    fn fetch(&mut self, topic: &str, offset: i64, max_wait_ms: i32, min_bytes: i32) -> i32 {
        self.fetch_at(topic, offset, max_wait_ms, min_bytes, 0)
    }

    /// A Fetch v12 of partition 0 at an isolation level (0 read_uncommitted,
    /// 1 read_committed).
    fn fetch_at(
        &mut self,
        topic: &str,
        offset: i64,
        max_wait_ms: i32,
        min_bytes: i32,
        isolation: i8,
    ) -> i32 {
        let partition = fetch_request::FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20);
        let topic = fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![partition]);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(1 << 24)
            .with_isolation_level(isolation)
            .with_topics(vec![topic]);
        self.send(ApiKey::Fetch, 12, &request)
    }

    fn fetch_result(&mut self, correlation: i32) -> fetch_response::PartitionData {
        let response: FetchResponse = self.take(ApiKey::Fetch, 12, correlation);
        response.responses[0].partitions[0].clone()
    }
}

fn one_record(value: &[u8]) -> Bytes {
    Bytes::from(build_batch(
        1_000_000,
        &[(Some(b"key"), Some(value), vec![], 0)],
    ))
}

fn values_in(records: &[u8]) -> Vec<Vec<u8>> {
    crate::batch::headers_in(records)
        .flat_map(|(_, range)| crate::batch::decode_records(&records[range]).expect("valid"))
        .map(|r| r.value.expect("value").to_vec())
        .collect()
}

#[test]
fn api_versions_response_bytes_are_stable() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    let c = h.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let frame = h.sent[0].clone();
    let response: ApiVersionsResponse = h.take(ApiKey::ApiVersions, 3, c);
    assert_eq!(response.error_code, 0);
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    insta::assert_snapshot!(hex);
}

#[test]
fn a_too_new_api_versions_gets_error_35_as_v0() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    let mut buf = BytesMut::new();
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(99);
    buf.put_i32(7);
    buf.put_i16(-1);
    let _ = h.send_raw(buf.freeze());
    let response: ApiVersionsResponse = h.take(ApiKey::ApiVersions, 0, 7);
    assert_eq!(response.error_code, 35);
    assert!(response
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 4));
}

#[test]
fn unknown_api_keys_and_versions_close_the_connection() {
    for (key, version) in [
        (999i16, 0i16),
        (ApiKey::Produce as i16, 2),
        (ApiKey::JoinGroup as i16, 0),
    ] {
        let mut h = Harness::new(MemStorage::new(), &[]);
        let mut buf = BytesMut::new();
        buf.put_i16(key);
        buf.put_i16(version);
        buf.put_i32(1);
        buf.put_i16(-1);
        let _ = h.send_raw(buf.freeze());
        assert!(h.closed, "key {key} version {version} should close");
        assert!(h.sent.is_empty());
    }
}

#[test]
fn produce_is_answered_only_after_the_sync() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    assert_eq!(h.create_topic("t", 1, &[]), 0);
    let c = h.produce("t", 0, -1, one_record(b"a"));
    assert!(h.sent.is_empty(), "answered before the sync");
    assert_eq!(h.pending_syncs.len(), 1);
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
}

#[test]
fn one_sync_covers_many_produces() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let first = h.produce("t", 0, 1, one_record(b"a"));
    let rest: Vec<i32> = (0..10)
        .map(|i| h.produce("t", 0, 1, one_record(&[i])))
        .collect();
    // One sync is in flight for the first produce; the other ten share the next.
    assert_eq!(h.pending_syncs.len(), 1);
    let (id, targets) = h.pending_syncs.remove(0);
    for target in &targets {
        h.node.broker.storage.sync(target);
    }
    h.node.handle_synced(Now::at(h.now_ms), id, Ok(()));
    h.drain();
    assert_eq!(
        h.pending_syncs.len(),
        1,
        "the ten waiting appends share one sync"
    );
    h.sync_all();
    assert_eq!(h.produce_result(first), (0, 0));
    for (n, c) in rest.into_iter().enumerate() {
        assert_eq!(h.produce_result(c), (0, n as i64 + 1));
    }
}

#[test]
fn a_failed_sync_fails_the_produce_and_later_ones() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let c = h.produce("t", 0, 1, one_record(b"a"));
    let (id, _) = h.pending_syncs.remove(0);
    h.node
        .handle_synced(Now::at(h.now_ms), id, Err("EIO".into()));
    h.drain();
    assert_eq!(
        h.produce_result(c).0,
        ResponseError::KafkaStorageError.code()
    );
    let c = h.produce("t", 0, 1, one_record(b"b"));
    assert_eq!(
        h.produce_result(c).0,
        ResponseError::KafkaStorageError.code()
    );
}

#[test]
fn acks_zero_gets_no_response_and_bad_acks_zero_closes() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let outcome = {
        h.produce("t", 0, 0, one_record(b"a"));
        h.sync_all();
        h.sent.len()
    };
    assert_eq!(outcome, 0);
    let mut bad = one_record(b"b").to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    h.produce("t", 0, 0, Bytes::from(bad));
    assert!(h.closed);
}

#[test]
fn bad_batches_get_kafkas_errors_and_append_nothing() {
    let mut h = Harness::new(MemStorage::new(), &[("message.max.bytes", "200")]);
    h.create_topic("t", 1, &[]);
    let good = one_record(b"a").to_vec();
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let mut old_magic = good.clone();
    old_magic[16] = 1;
    let big = build_batch(0, &[(None, Some(&[0u8; 300]), vec![], 0)]);
    let mut two = good.clone();
    two.extend_from_slice(&good);
    let truncated = good[..good.len() - 3].to_vec();
    let cases: Vec<(Vec<u8>, ResponseError)> = vec![
        (bad_crc, ResponseError::CorruptMessage),
        (old_magic, ResponseError::InvalidRecord),
        (big, ResponseError::MessageTooLarge),
        (two, ResponseError::InvalidRecord),
        (truncated, ResponseError::CorruptMessage),
    ];
    for (records, expected) in cases {
        let c = h.produce("t", 0, 1, Bytes::from(records));
        h.sync_all();
        assert_eq!(
            h.produce_result(c).0,
            expected.code(),
            "expected {expected:?}"
        );
    }
    let c = h.produce("t", 0, 1, one_record(b"ok"));
    h.sync_all();
    assert_eq!(
        h.produce_result(c),
        (0, 0),
        "rejected batches consumed no offsets"
    );
}

#[test]
fn invalid_and_unknown_topics() {
    let mut h = Harness::new(MemStorage::new(), &[("auto.create.topics.enable", "false")]);
    let c = h.produce("bad/name", 0, 1, one_record(b"a"));
    assert_eq!(
        h.produce_result(c).0,
        ResponseError::InvalidTopicException.code()
    );
    let c = h.produce("missing", 0, 1, one_record(b"a"));
    assert_eq!(
        h.produce_result(c).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(h.create_topic("a.b", 1, &[]), 0);
    assert_eq!(
        h.create_topic("a_b", 1, &[]),
        ResponseError::InvalidTopicException.code()
    );
    assert_eq!(
        h.create_topic("a.b", 1, &[]),
        ResponseError::TopicAlreadyExists.code()
    );
    assert_eq!(
        h.create_topic("c", 1, &[("no.such", "1")]),
        ResponseError::InvalidConfig.code()
    );
}

#[test]
fn auto_creation_on_produce_when_enabled() {
    let mut h = Harness::new(MemStorage::new(), &[("num.partitions", "2")]);
    let c = h.produce("fresh", 1, 1, one_record(b"a"));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
    assert_eq!(
        h.node
            .broker
            .topics
            .get("fresh")
            .expect("topic")
            .partitions
            .len(),
        2
    );
}

#[test]
fn fetch_long_polls_until_data_is_durable_or_the_deadline() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let waiting = h.fetch("t", 0, 500, 1);
    assert!(h.sent.is_empty());
    assert_eq!(h.node.poll_timeout(), Some(h.now_ms + 500));
    let p = h.produce("t", 0, 1, one_record(b"hello"));
    assert!(
        h.sent.is_empty(),
        "fetch answered before the data was durable"
    );
    h.sync_all();
    let data = h.fetch_result(waiting);
    assert_eq!(data.high_watermark, 1);
    assert_eq!(
        values_in(data.records.as_deref().unwrap_or_default()),
        vec![b"hello".to_vec()]
    );
    assert_eq!(h.produce_result(p), (0, 0));
    // Nothing new: the deadline answers with no records.
    let c = h.fetch("t", 1, 200, 1);
    h.now_ms += 200;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    let data = h.fetch_result(c);
    assert_eq!(data.records.as_deref().map(|r| r.len()), Some(0));
}

#[test]
fn responses_keep_request_order_behind_a_waiting_fetch() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let fetch = h.fetch("t", 0, 1000, 1);
    let metadata = h.send(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    assert!(h.sent.is_empty(), "metadata overtook the fetch");
    h.now_ms += 1000;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.fetch_result(fetch);
    let response: MetadataResponse = h.take(ApiKey::Metadata, 12, metadata);
    assert_eq!(response.topics.len(), 1);
}

#[test]
fn fetch_returns_one_whole_batch_even_above_max_bytes() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let c = h.produce(
        "t",
        0,
        1,
        Bytes::from(build_batch(0, &[(None, Some(&[7u8; 5000]), vec![], 0)])),
    );
    h.sync_all();
    h.produce_result(c);
    let partition = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(100);
    let topic = fetch_request::FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_static_str("t")))
        .with_partitions(vec![partition]);
    let request = FetchRequest::default()
        .with_max_bytes(100)
        .with_topics(vec![topic]);
    let c = h.send(ApiKey::Fetch, 12, &request);
    let data = h.fetch_result(c);
    assert_eq!(
        values_in(data.records.as_deref().unwrap_or_default()),
        vec![vec![7u8; 5000]]
    );
}

#[test]
fn fetch_out_of_range_and_list_offsets() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    for (n, ts) in [(0u8, 100i64), (1, 300), (2, 200)] {
        let c = h.produce(
            "t",
            0,
            1,
            Bytes::from(build_batch(ts, &[(None, Some(&[n]), vec![], 0)])),
        );
        h.sync_all();
        h.produce_result(c);
    }
    let c = h.fetch("t", 9, 0, 1);
    assert_eq!(
        h.fetch_result(c).error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    let lookup = |h: &mut Harness, timestamp: i64| {
        let partition = list_offsets_request::ListOffsetsPartition::default()
            .with_partition_index(0)
            .with_timestamp(timestamp);
        let topic = list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![partition]);
        let c = h.send(
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![topic]),
        );
        let response: ListOffsetsResponse = h.take(ApiKey::ListOffsets, 7, c);
        let p = &response.topics[0].partitions[0];
        (p.offset, p.timestamp)
    };
    assert_eq!(lookup(&mut h, -1).0, 3);
    assert_eq!(lookup(&mut h, -2).0, 0);
    assert_eq!(lookup(&mut h, -3), (1, 300));
    assert_eq!(lookup(&mut h, 150), (1, 300));
    assert_eq!(lookup(&mut h, 100), (0, 100));
    assert_eq!(lookup(&mut h, 301), (-1, -1));
}

/// Some clients (sarama) leave a batch's max timestamp at -1; like Kafka,
/// the broker writes the largest record timestamp there, so time lookups,
/// the time index and time retention see the records' times.
#[test]
fn the_max_timestamp_of_a_batch_is_what_its_records_hold() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let mut batch = build_batch(
        1_000,
        &[
            (None, Some(b"a"), vec![], 0),
            (None, Some(b"b"), vec![], 700),
            (None, Some(b"c"), vec![], 400),
        ],
    );
    batch[35..43].copy_from_slice(&(-1i64).to_be_bytes());
    let crc = crate::batch::compute_crc(&batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let c = h.produce("t", 0, 1, Bytes::from(batch));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
    let c = h.send(
        ApiKey::ListOffsets,
        7,
        &ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(1_500),
                ])]),
    );
    let response: ListOffsetsResponse = h.take(ApiKey::ListOffsets, 7, c);
    let p = &response.topics[0].partitions[0];
    assert_eq!((p.offset, p.timestamp), (1, 1_700));
    let c = h.fetch("t", 0, 0, 1);
    let records = h.fetch_result(c).records.expect("records");
    let header = crate::batch::check_framing(&records).expect("a valid CRC");
    assert_eq!(header.max_timestamp, 1_700);
}

#[test]
fn acknowledged_records_survive_a_crash_and_unsynced_ones_may_not() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let c = h.produce("t", 0, 1, one_record(b"kept"));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
    h.produce("t", 0, 1, one_record(b"unsynced"));
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(7);
    let mut h = Harness::new(storage, &[]);
    let c = h.fetch("t", 0, 0, 1);
    let data = h.fetch_result(c);
    assert_eq!(
        data.high_watermark, 1,
        "the torn unsynced batch was cut off"
    );
    assert_eq!(
        values_in(data.records.as_deref().unwrap_or_default()),
        vec![b"kept".to_vec()]
    );
    let c = h.produce("t", 0, 1, one_record(b"next"));
    h.sync_all();
    assert_eq!(
        h.produce_result(c),
        (0, 1),
        "the lost offset is reused only because it was never acknowledged"
    );
}

#[test]
fn clean_shutdown_writes_the_marker_and_restart_uses_it() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let c = h.produce("t", 0, 1, one_record(b"x"));
    h.sync_all();
    h.produce_result(c);
    h.node.begin_shutdown(Now::at(h.now_ms));
    h.drain();
    h.sync_all();
    assert!(h.node.is_stopped());
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    assert!(
        storage.exists(CLEAN_SHUTDOWN_FILE),
        "marker must be durable"
    );
    let mut h = Harness::new(storage, &[]);
    assert!(
        !h.node.broker.storage.exists(CLEAN_SHUTDOWN_FILE),
        "marker is consumed at start"
    );
    let c = h.fetch("t", 0, 0, 1);
    assert_eq!(
        values_in(h.fetch_result(c).records.as_deref().unwrap_or_default()),
        vec![b"x".to_vec()]
    );
}

#[test]
fn deleted_topics_leave_no_files_and_stay_deleted() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("gone", 2, &[]);
    let request = DeleteTopicsRequest::default()
        .with_topic_names(vec![TopicName(StrBytes::from_static_str("gone"))]);
    let c = h.send(ApiKey::DeleteTopics, 5, &request);
    h.sync_all();
    let response: DeleteTopicsResponse = h.take(ApiKey::DeleteTopics, 5, c);
    assert_eq!(response.responses[0].error_code, 0);
    assert!(!h.node.broker.storage.exists("gone-0"));
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let h = Harness::new(storage, &[]);
    assert!(!h.node.broker.topics.contains("gone"));
}

/// A partition whose whole directory was removed from outside is counted
/// (and logged) at start, and starts again empty; its sibling keeps its
/// records.
#[test]
fn a_partition_directory_removed_by_hand_is_reported_at_start() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 2, &[]);
    for partition in 0..2 {
        let c = h.produce("t", partition, 1, one_record(b"v"));
        h.sync_all();
        assert_eq!(h.produce_result(c), (0, 0));
    }
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    for name in storage.list_dir("t-1").expect("listed") {
        storage.remove_file(&format!("t-1/{name}")).expect("remove");
    }
    storage.sync(&SyncTarget::Dir("t-1".into()));
    storage.remove_dir("t-1").expect("remove dir");
    storage.sync(&SyncTarget::Dir(String::new()));
    storage.crash(0);
    let mut h = Harness::new(storage, &[]);
    assert_eq!(h.node.broker.topics.opened.dirs_gone, 1);
    assert_eq!(h.node.recovery().1.dirs_gone, 1);
    let kept = h.node.broker.topics.partition("t", 0).expect("held");
    assert_eq!(kept.log.log_end_offset(), 1);
    let gone = h.node.broker.topics.partition("t", 1).expect("held again");
    assert_eq!(gone.log.log_end_offset(), 0);
    assert!(h.node.broker.storage.exists("t-1"));
    let c = h.produce("t", 1, 1, one_record(b"w"));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
}

#[test]
fn create_partitions_grows_a_topic() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let grow = |h: &mut Harness, count: i32| {
        let topic = create_partitions_request::CreatePartitionsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_count(count);
        let c = h.send(
            ApiKey::CreatePartitions,
            3,
            &CreatePartitionsRequest::default().with_topics(vec![topic]),
        );
        h.sync_all();
        let response: CreatePartitionsResponse = h.take(ApiKey::CreatePartitions, 3, c);
        response.results[0].error_code
    };
    assert_eq!(grow(&mut h, 3), 0);
    assert_eq!(
        h.node
            .broker
            .topics
            .get("t")
            .expect("topic")
            .partitions
            .len(),
        3
    );
    assert_eq!(grow(&mut h, 2), ResponseError::InvalidPartitions.code());
}

/// Every served API at every advertised version answers a plain request
/// with a response that encodes and decodes at that version.
#[test]
fn every_api_answers_at_every_version() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let c = h.produce("t", 0, 1, one_record(b"a"));
    h.sync_all();
    h.produce_result(c);
    let name = || TopicName(StrBytes::from_static_str("t"));
    let nobody = || TransactionalId(StrBytes::from_static_str("nobody"));
    let id = uuid::Uuid::from_bytes(h.node.broker.topics.get("t").expect("topic").id);
    for &(key, min, max) in crate::wire::versions::SUPPORTED {
        for version in min..=max {
            let c = match key {
                ApiKey::ApiVersions => h.send(key, version, &ApiVersionsRequest::default()),
                ApiKey::Metadata => {
                    h.send(key, version, &MetadataRequest::default().with_topics(None))
                }
                ApiKey::Produce => {
                    let data = produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(one_record(b"v")));
                    let mut topic = produce_request::TopicProduceData::default()
                        .with_partition_data(vec![data]);
                    if version >= 13 {
                        topic.topic_id = id
                    } else {
                        topic.name = name()
                    }
                    h.send(
                        key,
                        version,
                        &ProduceRequest::default()
                            .with_acks(1)
                            .with_topic_data(vec![topic]),
                    )
                }
                ApiKey::Fetch => {
                    let partition =
                        fetch_request::FetchPartition::default().with_partition_max_bytes(1000);
                    let mut topic =
                        fetch_request::FetchTopic::default().with_partitions(vec![partition]);
                    if version >= 13 {
                        topic.topic_id = id
                    } else {
                        topic.topic = name()
                    }
                    h.send(
                        key,
                        version,
                        &FetchRequest::default()
                            .with_max_bytes(1000)
                            .with_topics(vec![topic]),
                    )
                }
                ApiKey::ListOffsets => {
                    let partition =
                        list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1);
                    let topic = list_offsets_request::ListOffsetsTopic::default()
                        .with_name(name())
                        .with_partitions(vec![partition]);
                    h.send(
                        key,
                        version,
                        &ListOffsetsRequest::default().with_topics(vec![topic]),
                    )
                }
                ApiKey::CreateTopics => {
                    let topic = create_topics_request::CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(format!("c{version}"))))
                        .with_num_partitions(1)
                        .with_replication_factor(1);
                    h.send(
                        key,
                        version,
                        &CreateTopicsRequest::default().with_topics(vec![topic]),
                    )
                }
                ApiKey::DeleteTopics => {
                    let gone = TopicName(StrBytes::from_static_str("missing"));
                    let request = if version >= 6 {
                        DeleteTopicsRequest::default()
                            .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(gone))])
                    } else {
                        DeleteTopicsRequest::default().with_topic_names(vec![gone])
                    };
                    h.send(key, version, &request)
                }
                ApiKey::CreatePartitions => {
                    let topic = create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(name())
                        .with_count(1);
                    h.send(
                        key,
                        version,
                        &CreatePartitionsRequest::default().with_topics(vec![topic]),
                    )
                }
                ApiKey::DescribeConfigs => {
                    let resources = vec![
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("t")),
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(4)
                            .with_resource_name(StrBytes::from_static_str("1")),
                    ];
                    h.send(
                        key,
                        version,
                        &DescribeConfigsRequest::default()
                            .with_resources(resources)
                            .with_include_synonyms(version >= 1),
                    )
                }
                ApiKey::DescribeCluster => h.send(
                    key,
                    version,
                    &DescribeClusterRequest::default().with_endpoint_type(1),
                ),
                ApiKey::InitProducerId => h.send(
                    key,
                    version,
                    &InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000),
                ),
                ApiKey::FindCoordinator => {
                    let request = if version >= 4 {
                        FindCoordinatorRequest::default()
                            .with_coordinator_keys(vec![StrBytes::from_static_str("g")])
                    } else {
                        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"))
                    };
                    h.send(key, version, &request)
                }
                ApiKey::JoinGroup => {
                    let protocol = join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"m"));
                    let request = JoinGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(format!("join{version}"))))
                        .with_session_timeout_ms(10_000)
                        .with_rebalance_timeout_ms(if version >= 1 { 10_000 } else { -1 })
                        .with_protocol_type(StrBytes::from_static_str("consumer"))
                        .with_protocols(vec![protocol]);
                    h.send(key, version, &request)
                }
                ApiKey::SyncGroup => h.send(
                    key,
                    version,
                    &SyncGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("none"))),
                ),
                ApiKey::Heartbeat => h.send(
                    key,
                    version,
                    &HeartbeatRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("none"))),
                ),
                ApiKey::LeaveGroup => {
                    let member = leave_group_request::MemberIdentity::default()
                        .with_member_id(StrBytes::from_static_str("m"));
                    let request = LeaveGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("none")))
                        .with_member_id(if version < 3 {
                            StrBytes::from_static_str("m")
                        } else {
                            StrBytes::default()
                        })
                        .with_members(if version >= 3 { vec![member] } else { vec![] });
                    h.send(key, version, &request)
                }
                ApiKey::OffsetCommit => {
                    let partition = offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(1);
                    let topic = offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(name())
                        .with_partitions(vec![partition]);
                    let request = OffsetCommitRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("simple")))
                        .with_generation_id_or_member_epoch(-1)
                        .with_topics(vec![topic]);
                    h.send(key, version, &request)
                }
                ApiKey::OffsetFetch => {
                    let request = if version >= 8 {
                        let group = offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(GroupId(StrBytes::from_static_str("simple")))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopics::default()
                                    .with_name(name())
                                    .with_partition_indexes(vec![0]),
                            ]));
                        OffsetFetchRequest::default().with_groups(vec![group])
                    } else {
                        OffsetFetchRequest::default()
                            .with_group_id(GroupId(StrBytes::from_static_str("simple")))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopic::default()
                                    .with_name(name())
                                    .with_partition_indexes(vec![0]),
                            ]))
                    };
                    h.send(key, version, &request)
                }
                ApiKey::ListGroups => h.send(key, version, &ListGroupsRequest::default()),
                ApiKey::DescribeGroups => h.send(
                    key,
                    version,
                    &DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(StrBytes::from_static_str("simple"))]),
                ),
                ApiKey::DeleteGroups => h.send(
                    key,
                    version,
                    &DeleteGroupsRequest::default()
                        .with_groups_names(vec![GroupId(StrBytes::from_static_str("nosuch"))]),
                ),
                ApiKey::DescribeQuorum => h.send(key, version, &describe_quorum_request()),
                ApiKey::OffsetForLeaderEpoch => {
                    let partition =
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(-1)
                            .with_leader_epoch(0);
                    let topic = offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                        .with_topic(name())
                        .with_partitions(vec![partition]);
                    h.send(
                        key,
                        version,
                        &OffsetForLeaderEpochRequest::default()
                            .with_replica_id(BrokerId(-2))
                            .with_topics(vec![topic]),
                    )
                }
                ApiKey::AddPartitionsToTxn => {
                    let topic = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(name())
                        .with_partitions(vec![0]);
                    let request = AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(nobody())
                        .with_v3_and_below_producer_id(ProducerId(5))
                        .with_v3_and_below_producer_epoch(0)
                        .with_v3_and_below_topics(vec![topic]);
                    h.send(key, version, &request)
                }
                ApiKey::AddOffsetsToTxn => {
                    let request = AddOffsetsToTxnRequest::default()
                        .with_transactional_id(nobody())
                        .with_producer_id(ProducerId(5))
                        .with_group_id(GroupId(StrBytes::from_static_str("g")));
                    h.send(key, version, &request)
                }
                ApiKey::EndTxn => {
                    let request = EndTxnRequest::default()
                        .with_transactional_id(nobody())
                        .with_producer_id(ProducerId(5))
                        .with_committed(true);
                    h.send(key, version, &request)
                }
                ApiKey::DescribeTransactions => h.send(
                    key,
                    version,
                    &DescribeTransactionsRequest::default().with_transactional_ids(vec![nobody()]),
                ),
                ApiKey::ListTransactions => h.send(
                    key,
                    version,
                    &ListTransactionsRequest::default().with_duration_filter(-1),
                ),
                ApiKey::TxnOffsetCommit => {
                    h.send(key, version, &txn_offsets("simple", 0, 0, "t", 0, 1))
                }
                ApiKey::DescribeProducers => {
                    let topic = describe_producers_request::TopicRequest::default()
                        .with_name(name())
                        .with_partition_indexes(vec![0]);
                    h.send(
                        key,
                        version,
                        &DescribeProducersRequest::default().with_topics(vec![topic]),
                    )
                }
                other => panic!("no request written for {other:?}"),
            };
            h.sync_all();
            if key == ApiKey::JoinGroup && version < 4 {
                // The first join of an empty group waits for the initial rebalance delay.
                assert!(
                    h.sent.is_empty(),
                    "JoinGroup v{version} answered before the delay"
                );
                h.now_ms += 3_001;
                h.node.handle_timeout(Now::at(h.now_ms));
                h.drain();
            }
            assert!(!h.closed, "{key:?} v{version} closed the connection");
            assert_eq!(h.sent.len(), 1, "{key:?} v{version} got no response");
            let mut frame = h.sent.remove(0).slice(4..);
            let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
                .expect("header");
            assert_eq!(header.correlation_id, c);
            let decoded = match key {
                ApiKey::ApiVersions => {
                    ApiVersionsResponse::decode(&mut frame, version).map(|r| r.error_code)
                }
                ApiKey::Metadata => {
                    MetadataResponse::decode(&mut frame, version).map(|r| r.error_code)
                }
                ApiKey::Produce => ProduceResponse::decode(&mut frame, version)
                    .map(|r| r.responses[0].partition_responses[0].error_code),
                ApiKey::Fetch => FetchResponse::decode(&mut frame, version)
                    .map(|r| r.responses[0].partitions[0].error_code),
                ApiKey::ListOffsets => ListOffsetsResponse::decode(&mut frame, version)
                    .map(|r| r.topics[0].partitions[0].error_code),
                ApiKey::CreateTopics => CreateTopicsResponse::decode(&mut frame, version)
                    .map(|r| r.topics[0].error_code),
                ApiKey::DeleteTopics => DeleteTopicsResponse::decode(&mut frame, version)
                    .map(|r| r.responses[0].error_code - 3),
                ApiKey::CreatePartitions => CreatePartitionsResponse::decode(&mut frame, version)
                    .map(|r| r.results[0].error_code - 37),
                ApiKey::DescribeConfigs => DescribeConfigsResponse::decode(&mut frame, version)
                    .map(|r| r.results[0].error_code + r.results[1].error_code),
                ApiKey::DescribeCluster => {
                    DescribeClusterResponse::decode(&mut frame, version).map(|r| r.error_code)
                }
                ApiKey::InitProducerId => {
                    InitProducerIdResponse::decode(&mut frame, version).map(|r| r.error_code)
                }
                // An id the coordinator never saw.
                ApiKey::AddPartitionsToTxn => {
                    AddPartitionsToTxnResponse::decode(&mut frame, version).map(|r| {
                        r.results_by_topic_v3_and_below[0].results_by_partition[0]
                            .partition_error_code
                            - ResponseError::InvalidProducerIdMapping.code()
                    })
                }
                ApiKey::AddOffsetsToTxn => AddOffsetsToTxnResponse::decode(&mut frame, version)
                    .map(|r| r.error_code - ResponseError::InvalidProducerIdMapping.code()),
                ApiKey::EndTxn => EndTxnResponse::decode(&mut frame, version)
                    .map(|r| r.error_code - ResponseError::InvalidProducerIdMapping.code()),
                ApiKey::DescribeTransactions => {
                    DescribeTransactionsResponse::decode(&mut frame, version).map(|r| {
                        r.transaction_states[0].error_code
                            - ResponseError::TransactionalIdNotFound.code()
                    })
                }
                ApiKey::ListTransactions => {
                    ListTransactionsResponse::decode(&mut frame, version).map(|r| r.error_code)
                }
                ApiKey::FindCoordinator => FindCoordinatorResponse::decode(&mut frame, version)
                    .map(|r| {
                        r.error_code + r.coordinators.iter().map(|c| c.error_code).sum::<i16>()
                    }),
                ApiKey::JoinGroup => JoinGroupResponse::decode(&mut frame, version).map(|r| {
                    if version >= 4 {
                        r.error_code - ResponseError::MemberIdRequired.code()
                    } else {
                        r.error_code + (r.generation_id - 1) as i16
                    }
                }),
                ApiKey::SyncGroup => SyncGroupResponse::decode(&mut frame, version)
                    .map(|r| r.error_code - ResponseError::UnknownMemberId.code()),
                ApiKey::Heartbeat => HeartbeatResponse::decode(&mut frame, version)
                    .map(|r| r.error_code - ResponseError::UnknownMemberId.code()),
                ApiKey::LeaveGroup => LeaveGroupResponse::decode(&mut frame, version).map(|r| {
                    r.error_code + r.members.iter().map(|m| m.error_code).sum::<i16>()
                        - ResponseError::UnknownMemberId.code()
                }),
                ApiKey::OffsetCommit => OffsetCommitResponse::decode(&mut frame, version)
                    .map(|r| r.topics[0].partitions[0].error_code),
                ApiKey::OffsetFetch => OffsetFetchResponse::decode(&mut frame, version).map(|r| {
                    let offset = if version >= 8 {
                        r.groups[0].topics[0].partitions[0].committed_offset
                    } else {
                        r.topics[0].partitions[0].committed_offset
                    };
                    (offset - 1) as i16
                }),
                ApiKey::ListGroups => {
                    ListGroupsResponse::decode(&mut frame, version).map(|r| r.error_code)
                }
                ApiKey::DescribeGroups => DescribeGroupsResponse::decode(&mut frame, version)
                    .map(|r| r.groups[0].error_code),
                ApiKey::DeleteGroups => DeleteGroupsResponse::decode(&mut frame, version)
                    .map(|r| r.results[0].error_code - ResponseError::GroupIdNotFound.code()),
                // A node without a quorum has no metadata partition.
                ApiKey::DescribeQuorum => {
                    DescribeQuorumResponse::decode(&mut frame, version).map(|r| {
                        r.topics[0].partitions[0].error_code
                            - ResponseError::UnknownTopicOrPartition.code()
                    })
                }
                ApiKey::OffsetForLeaderEpoch => {
                    OffsetForLeaderEpochResponse::decode(&mut frame, version)
                        .map(|r| r.topics[0].partitions[0].error_code)
                }
                // Verified with the coordinator, which never saw the id.
                ApiKey::TxnOffsetCommit => TxnOffsetCommitResponse::decode(&mut frame, version)
                    .map(|r| {
                        r.topics[0].partitions[0].error_code
                            - ResponseError::InvalidProducerIdMapping.code()
                    }),
                ApiKey::DescribeProducers => DescribeProducersResponse::decode(&mut frame, version)
                    .map(|r| r.topics[0].partitions[0].error_code),
                _ => unreachable!(),
            };
            assert_eq!(
                decoded.expect("response decodes"),
                0,
                "{key:?} v{version} answered with an unexpected error"
            );
            assert!(
                frame.is_empty(),
                "{key:?} v{version} left bytes after the body"
            );
        }
    }
}

#[test]
fn a_full_disk_fails_the_produce_and_keeps_what_was_acknowledged() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let c = h.produce("t", 0, 1, one_record(b"before"));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
    h.node.broker.storage.fail_writes = Some(std::io::ErrorKind::StorageFull);
    let c = h.produce("t", 0, 1, one_record(b"no room"));
    h.sync_all();
    assert_eq!(
        h.produce_result(c).0,
        ResponseError::KafkaStorageError.code()
    );
    h.node.broker.storage.fail_writes = None;
    let c = h.produce("t", 0, 1, one_record(b"after"));
    h.sync_all();
    assert_eq!(
        h.produce_result(c),
        (0, 1),
        "the failed append took no offset"
    );
    let c = h.fetch("t", 0, 0, 1);
    let values = values_in(h.fetch_result(c).records.as_deref().unwrap_or_default());
    assert_eq!(values, vec![b"before".to_vec(), b"after".to_vec()]);
}

#[test]
fn retention_by_time_deletes_old_segments_on_the_timer() {
    let mut h = Harness::new(
        MemStorage::new(),
        &[("log.retention.check.interval.ms", "1000")],
    );
    h.create_topic(
        "t",
        1,
        &[("retention.ms", "60000"), ("segment.ms", "10000")],
    );
    let start = h.now_ms;
    for (n, age_ms) in [(0u8, 0i64), (1, 20_000), (2, 40_000)] {
        let batch = build_batch(start + age_ms, &[(None, Some(&[n]), vec![], 0)]);
        let c = h.produce("t", 0, 1, Bytes::from(batch));
        h.sync_all();
        h.produce_result(c);
    }
    assert_eq!(
        h.node
            .broker
            .topics
            .partition("t", 0)
            .expect("held")
            .log
            .segment_count(),
        3,
        "segment.ms rolled by record time"
    );
    h.now_ms = start + 70_000;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.sync_all();
    let log = &h.node.broker.topics.partition("t", 0).expect("held").log;
    assert_eq!(
        log.log_start_offset(),
        1,
        "only the segment older than retention.ms went"
    );
    assert!(!h.node.broker.storage.exists("t-0/00000000000000000000.log"));
    let c = h.fetch("t", 0, 0, 1);
    assert_eq!(
        h.fetch_result(c).error_code,
        ResponseError::OffsetOutOfRange.code()
    );
}

#[test]
fn log_append_time_topics_stamp_the_broker_time() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[("message.timestamp.type", "LogAppendTime")]);
    let c = h.produce("t", 0, 1, one_record(b"a"));
    h.sync_all();
    let response: ProduceResponse = h.take(ApiKey::Produce, 9, c);
    assert_eq!(
        response.responses[0].partition_responses[0].log_append_time_ms,
        h.now_ms
    );
    let c = h.fetch("t", 0, 0, 1);
    let records = h.fetch_result(c).records.unwrap_or_default();
    let decoded = crate::batch::decode_records(&records).expect("valid CRC after the rewrite");
    assert_eq!(decoded[0].timestamp, h.now_ms);
}

/// A one-record batch from an idempotent producer.
fn idempotent_record(producer_id: i64, epoch: i16, sequence: i32, value: &[u8]) -> Bytes {
    let mut batch = build_batch(1_000_000, &[(None, Some(value), vec![], 0)]);
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = crate::batch::compute_crc(&batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

fn init_producer_id(h: &mut Harness) -> i64 {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let c = h.send(ApiKey::InitProducerId, 4, &request);
    h.sync_all();
    let response: InitProducerIdResponse = h.take(ApiKey::InitProducerId, 4, c);
    assert_eq!((response.error_code, response.producer_epoch), (0, 0));
    response.producer_id.0
}

#[test]
fn producer_ids_never_repeat_across_crashes() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    assert_eq!(init_producer_id(&mut h), 0);
    assert_eq!(init_producer_id(&mut h), 1);
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[]);
    assert_eq!(
        init_producer_id(&mut h),
        PRODUCER_ID_BLOCK_SIZE,
        "the reserved block is skipped after a restart"
    );
}

#[test]
fn idempotent_retries_are_appended_once_even_after_a_crash() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let id = init_producer_id(&mut h);
    for sequence in 0..3 {
        let c = h.produce("t", 0, -1, idempotent_record(id, 0, sequence, b"v"));
        h.sync_all();
        assert_eq!(h.produce_result(c), (0, sequence as i64));
    }
    let c = h.produce("t", 0, -1, idempotent_record(id, 0, 1, b"v"));
    h.sync_all();
    assert_eq!(
        h.produce_result(c),
        (0, 1),
        "a retry gets its original offset"
    );
    let c = h.produce("t", 0, -1, idempotent_record(id, 0, 5, b"v"));
    h.sync_all();
    assert_eq!(
        h.produce_result(c).0,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    for clean in [false, true] {
        if clean {
            h.node.begin_shutdown(Now::at(h.now_ms));
            h.drain();
            h.sync_all();
        }
        let mut storage = std::mem::take(&mut h.node.broker.storage);
        storage.crash(0);
        h = Harness::new(storage, &[]);
        let c = h.produce("t", 0, -1, idempotent_record(id, 0, 2, b"v"));
        h.sync_all();
        assert_eq!(
            h.produce_result(c),
            (0, 2),
            "the state was rebuilt from the log (clean: {clean})"
        );
    }
    let c = h.produce("t", 0, -1, idempotent_record(id, 0, 3, b"v"));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 3));
}

/// A start whose first sync failed left files and directories only in the
/// page cache; the next start must make them durable before relying on them.
#[test]
fn a_start_after_a_failed_first_sync_makes_the_namespace_durable() {
    let config = BrokerConfig::defaults();
    let mut node = Node::open(
        MemStorage::new(),
        config,
        ("localhost".into(), 9092),
        1,
        Now::at(0),
    )
    .expect("opens");
    let Some(Output::Sync { id, .. }) = node.poll_output() else {
        panic!("a start-up sync")
    };
    node.handle_synced(Now::at(0), id, Err("EIO".into()));
    assert!(!node.is_ready());
    // The process stops and starts again; the page cache is intact.
    let storage = std::mem::take(&mut node.broker.storage);
    let mut h = Harness::new(storage, &[]);
    assert_eq!(h.create_topic("kept", 1, &[]), 0);
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let h = Harness::new(storage, &[]);
    assert!(
        h.node.broker.topics.contains("kept"),
        "the acknowledged topic survived the crash"
    );
}

#[test]
fn after_a_failed_sync_topic_changes_get_storage_errors() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    let c = h.send(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]),
    );
    let (id, _) = h.pending_syncs.remove(0);
    h.node
        .handle_synced(Now::at(h.now_ms), id, Err("EIO".into()));
    h.drain();
    let response: CreateTopicsResponse = h.take(ApiKey::CreateTopics, 7, c);
    assert_eq!(
        response.topics[0].error_code,
        ResponseError::KafkaStorageError.code()
    );
    // The topic exists only in memory now; a retry must not hear "already exists".
    assert_eq!(
        h.create_topic("t", 1, &[]),
        ResponseError::KafkaStorageError.code()
    );
}

fn commit(
    h: &mut Harness,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offset: i64,
) -> i16 {
    let partition = offset_commit_request::OffsetCommitRequestPartition::default()
        .with_committed_offset(offset);
    let topic = offset_commit_request::OffsetCommitRequestTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![partition]);
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_topics(vec![topic]);
    let c = h.send(ApiKey::OffsetCommit, 8, &request);
    let answered_before_sync = !h.sent.is_empty();
    h.sync_all();
    let response: OffsetCommitResponse = h.take(ApiKey::OffsetCommit, 8, c);
    let error = response.topics[0].partitions[0].error_code;
    assert!(
        error != 0 || !answered_before_sync,
        "a commit is answered only once durable"
    );
    error
}

fn committed(h: &mut Harness, group: &str, topic: &str) -> i64 {
    let topics = offset_fetch_request::OffsetFetchRequestTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_indexes(vec![0]);
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_topics(Some(vec![topics]));
    let c = h.send(ApiKey::OffsetFetch, 7, &request);
    h.sync_all();
    let response: OffsetFetchResponse = h.take(ApiKey::OffsetFetch, 7, c);
    response.topics[0].partitions[0].committed_offset
}

/// A JoinGroup v7 of `member` (empty for a new one) to `group`, answered at once.
fn join_group(h: &mut Harness, group: &str, member: &str) -> JoinGroupResponse {
    let protocol = join_group_request::JoinGroupRequestProtocol::default()
        .with_name(StrBytes::from_static_str("range"))
        .with_metadata(Bytes::from_static(b"m"));
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![protocol]);
    let c = h.send(ApiKey::JoinGroup, 7, &request);
    h.take::<JoinGroupResponse>(ApiKey::JoinGroup, 7, c)
}

/// The SyncGroup of a group's only member, its leader, giving itself `assignment`.
fn leader_sync(
    group: &str,
    generation: i32,
    member: &str,
    assignment: &'static [u8],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id(generation)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(StrBytes::from_string(member.into()))
                .with_assignment(Bytes::from_static(assignment)),
        ])
}

/// Each member's client host in a DescribeGroups v5 of `groups`, by group.
fn described_hosts(h: &mut Harness, groups: &[&str]) -> Vec<(String, Vec<String>)> {
    let request = DescribeGroupsRequest::default().with_groups(
        groups
            .iter()
            .map(|g| GroupId(StrBytes::from_string(g.to_string())))
            .collect(),
    );
    let c = h.send(ApiKey::DescribeGroups, 5, &request);
    let response: DescribeGroupsResponse = h.take(ApiKey::DescribeGroups, 5, c);
    response
        .groups
        .iter()
        .map(|g| {
            let hosts = g.members.iter().map(|m| m.client_host.to_string());
            (g.group_id.to_string(), hosts.collect())
        })
        .collect()
}

/// DescribeGroups names a member's host as Kafka does, "/" and the peer
/// address its connection was registered with, and the group's record in
/// `__consumer_offsets` keeps it across a coordinator restart.
#[test]
fn a_members_host_is_the_peer_of_its_connection_and_survives_a_restart() {
    let mut h = Harness::new(
        MemStorage::new(),
        &[("group.initial.rebalance.delay.ms", "0")],
    );
    let peers = [
        ("g", CONN, PEER),
        // A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6.
        (
            "mapped",
            ConnectionId(2),
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped()),
        ),
        (
            "v6",
            ConnectionId(3),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ),
    ];
    for (group, connection, peer) in peers {
        if connection != CONN {
            h.node.handle_connect(Now::at(h.now_ms), connection, peer);
        }
        h.connection = connection;
        let member = join_group(&mut h, group, "").member_id.to_string();
        let joined = join_group(&mut h, group, &member);
        assert_eq!((joined.error_code, joined.generation_id), (0, 1), "{group}");
        // The leader's assignment makes the group Stable and records it.
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_generation_id(1)
            .with_member_id(StrBytes::from_string(member));
        let c = h.send(ApiKey::SyncGroup, 5, &sync);
        h.sync_all();
        let synced: SyncGroupResponse = h.take(ApiKey::SyncGroup, 5, c);
        assert_eq!(synced.error_code, 0, "{group}");
    }
    h.connection = CONN;
    let expected = vec![
        ("g".to_string(), vec!["/192.0.2.7".to_string()]),
        ("mapped".to_string(), vec!["/10.0.0.9".to_string()]),
        ("v6".to_string(), vec!["/2001:db8:0:0:0:0:0:1".to_string()]),
    ];
    assert_eq!(described_hosts(&mut h, &["g", "mapped", "v6"]), expected);
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[]);
    assert_eq!(
        described_hosts(&mut h, &["g", "mapped", "v6"]),
        expected,
        "restored from the groups' records in __consumer_offsets"
    );
}

#[test]
fn a_group_forms_commits_and_its_offsets_survive_a_crash() {
    let mut h = Harness::new(
        MemStorage::new(),
        &[
            ("group.initial.rebalance.delay.ms", "0"),
            ("offsets.topic.num.partitions", "3"),
        ],
    );
    h.create_topic("t", 1, &[]);
    let join = |h: &mut Harness, member: &str| join_group(h, "g", member);
    let first = join(&mut h, "");
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    let member = first.member_id.to_string();
    let joined = join(&mut h, &member);
    assert_eq!(
        (
            joined.error_code,
            joined.generation_id,
            joined.leader.as_str()
        ),
        (0, 1, member.as_str())
    );
    let sync = leader_sync("g", 1, &member, b"t-0");
    let c = h.send(ApiKey::SyncGroup, 5, &sync);
    assert!(
        h.sent.is_empty(),
        "the assignment is handed out once the group's record is durable"
    );
    h.sync_all();
    let synced: SyncGroupResponse = h.take(ApiKey::SyncGroup, 5, c);
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (0, &b"t-0"[..])
    );
    assert_eq!(commit(&mut h, "g", 1, &member, "t", 42), 0);
    assert_eq!(
        commit(&mut h, "g", 9, &member, "t", 43),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(committed(&mut h, "g", "t"), 42);
    assert_eq!(committed(&mut h, "other", "t"), -1);
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[("offsets.topic.num.partitions", "3")]);
    assert_eq!(
        committed(&mut h, "g", "t"),
        42,
        "rebuilt from __consumer_offsets"
    );
    // The group was restored with its generation: the member carries on.
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_string(member));
    let c = h.send(ApiKey::Heartbeat, 4, &heartbeat);
    let response: HeartbeatResponse = h.take(ApiKey::Heartbeat, 4, c);
    assert_eq!(
        response.error_code, 0,
        "the member survived the coordinator's restart"
    );
    // Silent past its session, it is removed.
    h.now_ms += 10_001;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.sync_all();
    let c = h.send(ApiKey::Heartbeat, 4, &heartbeat);
    let response: HeartbeatResponse = h.take(ApiKey::Heartbeat, 4, c);
    assert_eq!(response.error_code, ResponseError::UnknownMemberId.code());
}

#[test]
fn groups_land_on_the_partition_kafka_picks() {
    // abs(javaHashCode) % 50, with Java's hash over UTF-16 units.
    assert_eq!(crate::broker::groups::java_hash("abc"), 96354);
    assert_eq!(
        crate::broker::groups::offsets_partition("abc", 50),
        96354 % 50
    );
    assert_eq!(crate::broker::groups::java_hash(""), 0);
    let negative = crate::broker::groups::java_hash("polygenelubricants");
    assert_eq!(negative, i32::MIN, "a string whose Java hash is i32::MIN");
    assert_eq!(
        crate::broker::groups::offsets_partition("polygenelubricants", 50),
        0
    );
}

/// A request that claims billions of array elements must not size an
/// allocation from that claim (it used to abort the process).
#[test]
fn a_huge_array_count_closes_the_connection_and_nothing_else() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    for (round, (key, version)) in [(ApiKey::Metadata, 1i16), (ApiKey::Produce, 9)]
        .into_iter()
        .enumerate()
    {
        let mut buf = BytesMut::new();
        buf.put_i16(key as i16);
        buf.put_i16(version);
        buf.put_i32(1);
        buf.put_i16(-1);
        if version >= 9 {
            buf.put_u8(0); // header tagged fields
            buf.put_u8(0); // transactional id: null (compact)
            buf.put_i16(1);
            buf.put_i32(1000);
            buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // topics: 2^31 - 1 (compact)
        } else {
            buf.put_i32(i32::MAX);
        }
        // A fresh connection each round: the driver never reuses an id.
        h.connection = ConnectionId(100 + round as u64);
        h.node.handle_connect(Now::at(h.now_ms), h.connection, PEER);
        h.closed = false;
        let _ = h.send_raw(buf.freeze());
        assert!(
            h.closed,
            "{key:?} with a huge array count closes the connection"
        );
    }
}

/// A retried idempotent batch is answered with the original offsets and,
/// on a LogAppendTime topic, the original append time (as Kafka does).
#[test]
fn a_retry_gets_the_original_append_time() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[("message.timestamp.type", "LogAppendTime")]);
    let producer_id = init_producer_id(&mut h);
    let answer = |h: &mut Harness, now_ms: i64| {
        h.now_ms = now_ms;
        let c = h.produce("t", 0, -1, idempotent_record(producer_id, 0, 0, b"v"));
        h.sync_all();
        let response: ProduceResponse = h.take(ApiKey::Produce, 9, c);
        let p = &response.responses[0].partition_responses[0];
        (p.error_code, p.base_offset, p.log_append_time_ms)
    };
    let first = answer(&mut h, 5_000);
    assert_eq!(first, (0, 0, 5_000));
    assert_eq!(answer(&mut h, 9_000), first, "the retry is the same append");
}

/// CreateTime records more than `message.timestamp.after.max.ms` (Kafka 4's
/// default: an hour) ahead of the broker's clock, or more than
/// `before.max.ms` behind it, are refused with INVALID_TIMESTAMP; -1 and
/// LogAppendTime topics are not checked.
#[test]
fn record_timestamps_far_from_the_broker_clock_are_refused() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    h.create_topic("wide", 1, &[("message.timestamp.after.max.ms", "10000000")]);
    h.create_topic("recent", 1, &[("message.timestamp.before.max.ms", "1000")]);
    h.create_topic(
        "appended",
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    let now = h.now_ms;
    let in_two_hours = now + 2 * 3_600_000;
    let produce = |h: &mut Harness, topic: &str, timestamp: i64| {
        let batch = build_batch(timestamp, &[(None, Some(b"v"), vec![], 0)]);
        let c = h.produce(topic, 0, 1, Bytes::from(batch));
        h.sync_all();
        h.produce_result(c).0
    };
    let invalid = ResponseError::InvalidTimestamp.code();
    assert_eq!(produce(&mut h, "t", in_two_hours), invalid);
    assert_eq!(produce(&mut h, "t", now + 3_000_000), 0);
    assert_eq!(produce(&mut h, "t", -1), 0);
    assert_eq!(
        produce(&mut h, "t", 0),
        0,
        "the past is unbounded by default"
    );
    assert_eq!(produce(&mut h, "wide", in_two_hours), 0);
    assert_eq!(produce(&mut h, "recent", now - 5_000), invalid);
    assert_eq!(produce(&mut h, "recent", now - 500), 0);
    assert_eq!(produce(&mut h, "appended", in_two_hours), 0);
}

/// A sync issued before a topic was deleted and created again (auto-create)
/// must not mark the new log durable up to the old log's end: a consumer
/// would read records no sync covered, and a crash would then put other
/// records at those offsets.
#[test]
fn a_sync_issued_before_a_topic_was_created_again_marks_nothing_of_the_new_log_durable() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    for value in [&b"o1"[..], b"o2", b"o3"] {
        h.produce("t", 0, 1, one_record(value));
    }
    // The first produce's sync is in flight; its fsyncs happen (covering
    // the bytes of all three), its completion is held back.
    assert_eq!(h.pending_syncs.len(), 1);
    let (held, targets) = h.pending_syncs.remove(0);
    for target in &targets {
        h.node.broker.storage.sync(target);
    }
    let delete = DeleteTopicsRequest::default()
        .with_topic_names(vec![TopicName(StrBytes::from_static_str("t"))]);
    h.send(ApiKey::DeleteTopics, 5, &delete);
    h.produce("t", 0, 1, one_record(b"n1"));
    h.produce("t", 0, 1, one_record(b"n2"));
    h.node.handle_synced(Now::at(h.now_ms), held, Ok(()));
    h.drain();
    assert_eq!(
        h.sent.len(),
        1,
        "only the produce the held sync was issued for is answered"
    );
    h.sent.clear();
    h.connection = ConnectionId(2);
    h.node.handle_connect(Now::at(h.now_ms), h.connection, PEER);
    let c = h.fetch("t", 0, 0, 1);
    let read = h.fetch_result(c);
    assert_eq!(
        read.high_watermark, 0,
        "nothing of the new log is durable yet"
    );
    assert!(values_in(read.records.as_deref().unwrap_or_default()).is_empty());
    // A crash before the next sync: the deletion never became durable, so
    // the old records are back, and no consumer saw others at their offsets.
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[]);
    let c = h.fetch("t", 0, 0, 1);
    assert_eq!(
        values_in(h.fetch_result(c).records.as_deref().unwrap_or_default()),
        vec![b"o1".to_vec(), b"o2".to_vec(), b"o3".to_vec()]
    );
}

/// The log end of each partition of `__consumer_offsets`.
fn offsets_log_ends(h: &Harness) -> Vec<i64> {
    let topic = h
        .node
        .broker
        .topics
        .get(OFFSETS_TOPIC)
        .expect("offsets topic");
    topic
        .partitions
        .iter()
        .map(|p| p.as_ref().expect("held alone").log.log_end_offset())
        .collect()
}

/// A group change that cannot be recorded (a full disk) must not be
/// answered as a success: the members are told to find the coordinator
/// again, and nothing is recorded.
#[test]
fn a_group_change_that_cannot_be_recorded_is_answered_coordinator_not_available() {
    let mut h = Harness::new(
        MemStorage::new(),
        &[
            ("group.initial.rebalance.delay.ms", "0"),
            ("offsets.topic.num.partitions", "3"),
        ],
    );
    h.create_topic("t", 1, &[]);
    // The offsets topic exists before the disk fills: the failure is in the
    // append of the group's record itself.
    assert_eq!(commit(&mut h, "other", -1, "", "t", 1), 0);
    let first = join_group(&mut h, "g", "");
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    let member = first.member_id.to_string();
    let joined = join_group(&mut h, "g", &member);
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    let ends_before = offsets_log_ends(&h);
    h.node.broker.storage.fail_writes = Some(std::io::ErrorKind::StorageFull);
    let sync = leader_sync("g", 1, &member, b"t-0");
    let c = h.send(ApiKey::SyncGroup, 5, &sync);
    h.sync_all();
    let synced: SyncGroupResponse = h.take(ApiKey::SyncGroup, 5, c);
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (ResponseError::CoordinatorNotAvailable.code(), &b""[..])
    );
    h.node.broker.storage.fail_writes = None;
    let ends_after = offsets_log_ends(&h);
    assert_eq!(ends_before, ends_after, "nothing was recorded");
}

/// A long-polling fetch is read again only when one of its partitions
/// moved: syncs of other partitions leave it alone.
#[test]
fn a_parked_fetch_is_woken_only_by_its_own_partitions() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("a", 1, &[]);
    h.create_topic("b", 1, &[]);
    h.produce("a", 0, 1, one_record(b"a1"));
    h.sync_all();
    h.sent.clear();
    // More bytes than `a` holds: the fetch parks after its first read.
    let c = h.fetch("a", 0, 60_000, 1 << 20);
    assert!(h.sent.is_empty(), "the fetch waits for more bytes");
    let reads_parked = h.node.broker.storage.reads_performed;
    h.connection = ConnectionId(2);
    h.node.handle_connect(Now::at(h.now_ms), h.connection, PEER);
    for round in 0..3 {
        h.produce("b", 0, 1, one_record(format!("b{round}").as_bytes()));
        h.sync_all();
    }
    assert_eq!(h.sent.len(), 3, "the produces to b are answered");
    assert_eq!(
        h.node.broker.storage.reads_performed, reads_parked,
        "syncs of b do not read the fetch of a again"
    );
    h.sent.clear();
    h.produce("a", 0, 1, one_record(b"a2"));
    h.sync_all();
    assert!(
        h.node.broker.storage.reads_performed > reads_parked,
        "a move of a reads the fetch again"
    );
    assert_eq!(
        h.sent.len(),
        1,
        "still too few bytes: only the produce is answered"
    );
    h.sent.clear();
    h.now_ms += 60_000;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    let read = h.fetch_result(c);
    assert_eq!(
        values_in(read.records.as_deref().unwrap_or_default()),
        vec![b"a1".to_vec(), b"a2".to_vec()],
        "at its deadline the fetch answers what there is"
    );
}

/// A frame the driver read before it saw the node close the connection is
/// dropped: no answer, no panic.
#[test]
fn a_frame_on_a_connection_the_node_closed_is_dropped() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    let outcome = h.send_raw(Bytes::from_static(&[0, 0]));
    assert!(h.closed && !outcome.response_queued);
    let c = h.send(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("t"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    );
    assert!(
        c > 0 && h.sent.is_empty(),
        "nothing answers on a closed connection"
    );
}

/// A request to a peer that goes unanswered (a network that lost it, a
/// peer that froze) resets the link after `PEER_REQUEST_TIMEOUT_MS`; once
/// the link is up again the node asks again, and learns the answer.
#[test]
fn an_unanswered_peer_request_resets_the_link() {
    let config = BrokerConfig::from_pairs(&[("node.id".to_string(), "1".to_string())].into())
        .expect("valid config");
    let mut node = Node::open(
        MemStorage::new(),
        config,
        ("n1".into(), 9092),
        1,
        Now::at(0),
    )
    .expect("opens");
    let drain = |node: &mut Node<MemStorage>| -> Vec<Output> {
        std::iter::from_fn(|| node.poll_output()).collect()
    };
    let peer = NodeId(2);
    let channel = Channel::Control;
    let sent = |outputs: &[Output]| {
        outputs
            .iter()
            .filter(|o| matches!(o, Output::SendPeer { peer: p, .. } if *p == peer))
            .count()
    };
    drain(&mut node);
    node.handle_peer_link(Now::at(10), peer, channel, true);
    assert_eq!(sent(&drain(&mut node)), 1, "ApiVersions on link up");
    let deadline = node.poll_timeout().expect("a deadline");
    assert!(deadline <= 10 + PEER_REQUEST_TIMEOUT_MS);
    node.handle_timeout(Now::at(10 + PEER_REQUEST_TIMEOUT_MS - 1));
    assert!(
        !drain(&mut node).contains(&Output::ResetPeer { peer, channel }),
        "not before the timeout"
    );
    node.handle_timeout(Now::at(10 + PEER_REQUEST_TIMEOUT_MS));
    assert!(drain(&mut node).contains(&Output::ResetPeer { peer, channel }));
    // The driver closes the connection, reconnects, and reports both.
    node.handle_peer_link(Now::at(3_000), peer, channel, false);
    node.handle_peer_link(Now::at(3_100), peer, channel, true);
    let outputs = drain(&mut node);
    let Some(Output::SendPeer { frame, .. }) = outputs
        .into_iter()
        .find(|o| matches!(o, Output::SendPeer { .. }))
    else {
        panic!("ApiVersions again once the link is back");
    };
    // Answer it as a peer would: correlation id from the request.
    let mut request = frame.slice(4..);
    let header = RequestHeader::decode(&mut request, 2).expect("request header");
    let mut answer = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(&mut answer, 0)
        .expect("response header");
    crate::wire::versions::api_versions_response(0)
        .encode(&mut answer, 3)
        .expect("body");
    node.handle_peer_frame(Now::at(3_200), peer, channel, answer.freeze());
    let known = node
        .peer_api_versions(peer, channel)
        .expect("versions known");
    assert_eq!(known.len(), crate::wire::versions::SUPPORTED.len());
    node.handle_timeout(Now::at(3_200 + PEER_REQUEST_TIMEOUT_MS));
    assert!(
        !drain(&mut node).contains(&Output::ResetPeer { peer, channel }),
        "an answered request does not reset the link"
    );
}

/// A small produced batch whose records expand past
/// `message.decompression.ratio.max` times `max.message.bytes` is refused
/// with INVALID_RECORD, and nothing is appended.
#[test]
fn a_decompression_bomb_is_refused_and_appends_nothing() {
    use crate::batch::builder::{compress, Compression};
    let mut h = Harness::new(
        MemStorage::new(),
        &[("message.decompression.ratio.max", "2")],
    );
    h.create_topic("t", 1, &[("max.message.bytes", "65536")]);
    let zeros = vec![0u8; 1 << 20];
    let plain = build_batch(0, &[(None, Some(&zeros[..]), vec![], 0)]);
    let body = compress(Compression::Zstd, &plain[HEADER_BYTES..]).expect("zstd");
    let mut bomb = plain[..HEADER_BYTES].to_vec();
    bomb.extend_from_slice(&body);
    let length = (bomb.len() - crate::batch::LOG_OVERHEAD) as i32;
    bomb[crate::batch::LENGTH_OFFSET..crate::batch::LOG_OVERHEAD]
        .copy_from_slice(&length.to_be_bytes());
    bomb[crate::batch::ATTRIBUTES_OFFSET..crate::batch::LAST_OFFSET_DELTA_OFFSET]
        .copy_from_slice(&Compression::Zstd.code().to_be_bytes());
    crate::batch::write_crc(&mut bomb);
    assert!(bomb.len() < 65536, "the bomb itself is allowed in");
    let c = h.produce("t", 0, 1, Bytes::from(bomb));
    h.sync_all();
    assert_eq!(h.produce_result(c).0, ResponseError::InvalidRecord.code());
    let log = &h.node.broker.topics.partition("t", 0).expect("held").log;
    assert_eq!(log.log_end_offset(), 0);
}

/// The attribute rules of Kafka's produce validation a client can break:
/// a delete-horizon bit set by a producer is refused with INVALID_RECORD
/// (Kafka keeps it; the bit is the cleaner's), a zstd batch in a Produce
/// before v7 with UNSUPPORTED_COMPRESSION_TYPE, a control batch with
/// INVALID_RECORD; none of them takes an offset.
#[test]
fn batches_with_attributes_a_producer_may_not_set_are_refused() {
    use crate::batch::builder::{compress, Compression};
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    let with_attributes = |attributes: i16, body: Option<Bytes>| {
        let plain = build_batch(1_000, &[(Some(b"k"), Some(b"v"), vec![], 0)]);
        let mut batch = plain[..HEADER_BYTES].to_vec();
        match body {
            Some(body) => batch.extend_from_slice(&body),
            None => batch.extend_from_slice(&plain[HEADER_BYTES..]),
        }
        let length = (batch.len() - crate::batch::LOG_OVERHEAD) as i32;
        batch[crate::batch::LENGTH_OFFSET..crate::batch::LOG_OVERHEAD]
            .copy_from_slice(&length.to_be_bytes());
        batch[crate::batch::ATTRIBUTES_OFFSET..crate::batch::LAST_OFFSET_DELTA_OFFSET]
            .copy_from_slice(&attributes.to_be_bytes());
        crate::batch::write_crc(&mut batch);
        Bytes::from(batch)
    };
    let horizon = with_attributes(crate::batch::ATTRIBUTE_DELETE_HORIZON, None);
    let c = h.produce("t", 0, 1, horizon);
    h.sync_all();
    assert_eq!(h.produce_result(c).0, ResponseError::InvalidRecord.code());
    let control = with_attributes(crate::batch::ATTRIBUTE_CONTROL, None);
    let c = h.produce("t", 0, 1, control);
    h.sync_all();
    assert_eq!(h.produce_result(c).0, ResponseError::InvalidRecord.code());

    let plain = build_batch(1_000, &[(Some(b"k"), Some(b"v"), vec![], 0)]);
    let body = compress(Compression::Zstd, &plain[HEADER_BYTES..]).expect("zstd");
    let zstd = with_attributes(Compression::Zstd.code(), Some(body));
    let produce_at = |h: &mut Harness, version: i16| {
        let data = produce_request::PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(zstd.clone()));
        let topic = produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_data(vec![data]);
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![topic]);
        let c = h.send(ApiKey::Produce, version, &request);
        h.sync_all();
        let response: ProduceResponse = h.take(ApiKey::Produce, version, c);
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    };
    assert_eq!(
        produce_at(&mut h, 6).0,
        ResponseError::UnsupportedCompressionType.code()
    );
    assert_eq!(
        produce_at(&mut h, 7),
        (0, 0),
        "nothing refused took an offset"
    );
}

/// A deleted group stays deleted across a restart: replaying its old
/// commits before their tombstones must not bring it back empty.
#[test]
fn a_deleted_group_stays_deleted_after_a_restart() {
    let configs = [("offsets.topic.num.partitions", "1")];
    let mut h = Harness::new(MemStorage::new(), &configs);
    h.create_topic("t", 1, &[]);
    for group in ["kept", "gone"] {
        assert_eq!(commit(&mut h, group, -1, "", "t", 5), 0);
    }
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(StrBytes::from_static_str("gone"))]);
    let c = h.send(ApiKey::DeleteGroups, 2, &request);
    h.sync_all();
    let deleted: DeleteGroupsResponse = h.take(ApiKey::DeleteGroups, 2, c);
    assert_eq!(deleted.results[0].error_code, 0);
    let listed = |h: &mut Harness| -> Vec<String> {
        let c = h.send(ApiKey::ListGroups, 4, &ListGroupsRequest::default());
        let response: ListGroupsResponse = h.take(ApiKey::ListGroups, 4, c);
        response
            .groups
            .iter()
            .map(|g| g.group_id.to_string())
            .collect()
    };
    assert_eq!(listed(&mut h), ["kept"]);
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &configs);
    assert_eq!(listed(&mut h), ["kept"], "after a restart");
}

// ---- DescribeQuorum ----

const SINGLE_VOTER: [(&str, &str); 1] = [("controller.quorum.voters", "1@localhost:9092")];

/// DescribeQuorum of `__cluster_metadata` partition 0, as Kafka's admin
/// client asks it.
fn describe_quorum_request() -> DescribeQuorumRequest {
    describe_quorum_of(&[("__cluster_metadata", &[0])])
}

fn describe_quorum_of(topics: &[(&str, &[i32])]) -> DescribeQuorumRequest {
    let topics = topics
        .iter()
        .map(|(name, partitions)| {
            describe_quorum_request::TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&index| {
                            describe_quorum_request::PartitionData::default()
                                .with_partition_index(index)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeQuorumRequest::default().with_topics(topics)
}

fn describe_quorum(
    h: &mut Harness,
    version: i16,
    request: &DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let c = h.send(ApiKey::DescribeQuorum, version, request);
    h.take(ApiKey::DescribeQuorum, version, c)
}

/// Runs the node's timers and syncs until `done` holds of its replica.
fn run_quorum_until(h: &mut Harness, done: impl Fn(&crate::raft::RaftReplica) -> bool) {
    for _ in 0..1_000 {
        let replica = h.node.quorum().and_then(|q| q.replica());
        if replica.is_some_and(&done) {
            return;
        }
        h.sync_all();
        if let Some(deadline) = h.node.poll_timeout() {
            h.now_ms = h.now_ms.max(deadline);
            h.node.handle_timeout(Now::at(h.now_ms));
            h.drain();
        }
    }
    panic!("the quorum did not get there within 1000 steps");
}

#[test]
fn a_single_voter_answers_describe_quorum_as_its_leader() {
    let mut h = Harness::new(MemStorage::new(), &SINGLE_VOTER);
    // Quiet once its broker registered and was unfenced: four entries
    // (the leader change, metadata.version and the two registration
    // records), all committed.
    run_quorum_until(&mut h, |r| {
        r.role() == crate::raft::Role::Leader
            && r.entries().len() >= 4
            && r.high_watermark() == r.entries().len() as i64
    });
    assert!(h.node.is_unfenced());
    let replica = h.node.quorum().and_then(|q| q.replica()).expect("started");
    let (epoch, high_watermark) = (replica.leader_epoch(), replica.high_watermark());
    let log_end_offset = replica.entries().len() as i64;
    assert!(epoch >= 1 && high_watermark >= 1);
    for version in 0..=2 {
        let response = describe_quorum(&mut h, version, &describe_quorum_request());
        assert_eq!(response.error_code, 0);
        assert_eq!(response.topics.len(), 1);
        assert_eq!(response.topics[0].topic_name.as_str(), "__cluster_metadata");
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.partition_index, 0);
        assert_eq!(partition.error_code, 0);
        assert_eq!(partition.leader_id, BrokerId(1));
        assert_eq!(partition.leader_epoch, epoch);
        assert_eq!(partition.high_watermark, high_watermark);
        assert!(partition.observers.is_empty());
        // The timestamps came with v1; a v0 answer decodes them as -1.
        let leader_wall_ms = if version >= 1 { h.now_ms } else { -1 };
        let voter = describe_quorum_response::ReplicaState::default()
            .with_replica_id(BrokerId(1))
            .with_log_end_offset(log_end_offset)
            .with_last_fetch_timestamp(leader_wall_ms)
            .with_last_caught_up_timestamp(leader_wall_ms);
        assert_eq!(partition.current_voters, vec![voter], "v{version}");
        if version >= 2 {
            let listener = describe_quorum_response::Listener::default()
                .with_name(StrBytes::from_static_str("CONTROLLER"))
                .with_host(StrBytes::from_static_str("localhost"))
                .with_port(9092);
            let node = describe_quorum_response::Node::default()
                .with_node_id(BrokerId(1))
                .with_listeners(vec![listener]);
            assert_eq!(response.nodes, vec![node]);
        } else {
            assert!(response.nodes.is_empty());
        }
    }
}

/// The metadata.version FeatureLevelRecords in a node's metadata log:
/// (offset, level).
fn metadata_version_records(h: &Harness) -> Vec<(usize, i16)> {
    let replica = h.node.quorum().and_then(|q| q.replica()).expect("started");
    let decoded = replica
        .entries()
        .iter()
        .enumerate()
        .filter_map(|(offset, entry)| {
            let crate::raft::Record::Data(bytes) = &entry.record else {
                return None;
            };
            match crate::metadata_records::MetadataRecord::decode(bytes) {
                Ok(crate::metadata_records::MetadataRecord::FeatureLevel(record))
                    if record.name == crate::image::METADATA_VERSION_FEATURE =>
                {
                    Some((offset, record.feature_level))
                }
                _ => None,
            }
        });
    decoded.collect()
}

#[test]
fn a_new_quorum_finalizes_metadata_version_first_and_api_versions_names_it() {
    let level = crate::image::METADATA_VERSION_LEVEL_WRITTEN;
    let mut h = Harness::new(MemStorage::new(), &SINGLE_VOTER);
    let c = h.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let before: ApiVersionsResponse = h.take(ApiKey::ApiVersions, 3, c);
    assert!(before.finalized_features.is_empty(), "nothing applied yet");
    assert_eq!(before.finalized_features_epoch, -1);
    run_quorum_until(&mut h, |r| {
        r.role() == crate::raft::Role::Leader
            && r.entries().len() >= 4
            && r.high_watermark() == r.entries().len() as i64
    });
    // Right after the leader-change entry, before the broker's registration.
    assert_eq!(metadata_version_records(&h), [(1, level)]);
    let image = &h.node.broker().cluster.as_ref().expect("a cluster").image;
    assert_eq!(image.metadata_version(), Some(level));
    let applied = image.last_offset().expect("records applied");
    let c = h.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let response: ApiVersionsResponse = h.take(ApiKey::ApiVersions, 3, c);
    let finalized: Vec<_> = (response.finalized_features.iter())
        .map(|f| (f.name.as_str(), f.min_version_level, f.max_version_level))
        .collect();
    assert_eq!(finalized, [("metadata.version", level, level)]);
    assert_eq!(response.finalized_features_epoch, applied);
    let supported: Vec<_> = (response.supported_features.iter())
        .map(|f| (f.name.as_str(), f.min_version, f.max_version))
        .collect();
    assert_eq!(supported, [("metadata.version", 1, level)]);
}

#[test]
fn a_voter_that_does_not_lead_answers_not_leader_or_follower_without_a_hint() {
    // Node 1 of two, with no link to node 2: it stands, and never wins.
    let voters = [(
        "controller.quorum.voters",
        "1@localhost:9092,2@localhost:9093",
    )];
    let mut h = Harness::new(MemStorage::new(), &voters);
    for version in 0..=2 {
        let response = describe_quorum(&mut h, version, &describe_quorum_request());
        let partition = &response.topics[0].partitions[0];
        assert_eq!(
            partition.error_code,
            ResponseError::NotLeaderOrFollower.code(),
            "v{version} before it started"
        );
    }
    run_quorum_until(&mut h, |r| r.role() == crate::raft::Role::Candidate);
    let response = describe_quorum(&mut h, 1, &describe_quorum_request());
    assert_eq!(response.error_code, 0);
    assert_eq!(response.topics[0].topic_name.as_str(), "__cluster_metadata");
    let partition = &response.topics[0].partitions[0];
    assert_eq!(
        partition.error_code,
        ResponseError::NotLeaderOrFollower.code()
    );
    // Kafka's singletonErrorResponse: every other field at its default.
    assert_eq!(
        *partition,
        describe_quorum_response::PartitionData::default()
            .with_error_code(ResponseError::NotLeaderOrFollower.code())
    );
}

#[test]
fn describe_quorum_of_another_partition_or_on_a_node_alone_is_unknown() {
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    let codes = |response: &DescribeQuorumResponse| -> Vec<(String, i32, i16)> {
        response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic_name.to_string(), p.partition_index, p.error_code))
            })
            .collect()
    };
    let mut alone = Harness::new(MemStorage::new(), &[]);
    let response = describe_quorum(&mut alone, 2, &describe_quorum_request());
    assert_eq!(
        codes(&response),
        [("__cluster_metadata".into(), 0, unknown)]
    );
    assert!(response.nodes.is_empty());

    let mut h = Harness::new(MemStorage::new(), &SINGLE_VOTER);
    run_quorum_until(&mut h, |r| r.role() == crate::raft::Role::Leader);
    let cases: [&[(&str, &[i32])]; 4] = [
        &[("other", &[0, 1])],
        &[("__cluster_metadata", &[1])],
        &[("__cluster_metadata", &[0, 0])],
        &[("__cluster_metadata", &[0]), ("other", &[0])],
    ];
    for topics in cases {
        let response = describe_quorum(&mut h, 1, &describe_quorum_of(topics));
        let expected: Vec<(String, i32, i16)> = topics
            .iter()
            .flat_map(|(name, partitions)| {
                partitions.iter().map(|&p| (name.to_string(), p, unknown))
            })
            .collect();
        assert_eq!(codes(&response), expected, "{topics:?}");
    }
    let response = describe_quorum(&mut h, 1, &describe_quorum_of(&[]));
    assert!(response.topics.is_empty());
}

#[test]
fn a_describe_quorum_body_that_does_not_decode_closes_the_connection() {
    let mut h = Harness::new(MemStorage::new(), &SINGLE_VOTER);
    let version = 1;
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::DescribeQuorum as i16)
        .with_request_api_version(version)
        .with_correlation_id(9)
        .encode(
            &mut buf,
            ApiKey::DescribeQuorum.request_header_version(version),
        )
        .expect("header encodes");
    // A topic count of 2 (compact, so 3) and then nothing.
    buf.put_u8(3);
    let outcome = h.send_raw(buf.freeze());
    assert!(!outcome.response_queued);
    assert!(h.closed);
    assert!(h.sent.is_empty());
}

// ---- Transactional offsets ----

/// A TxnOffsetCommit v3 of `offset` for one partition, from a producer
/// outside the group (no member, generation -1).
fn txn_offsets(
    group: &str,
    producer_id: i64,
    producer_epoch: i16,
    topic: &str,
    partition: i32,
    offset: i64,
) -> TxnOffsetCommitRequest {
    let partition = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
        .with_partition_index(partition)
        .with_committed_offset(offset)
        .with_committed_metadata(Some(StrBytes::from_static_str("m")));
    let topic = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![partition]);
    TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
        .with_topics(vec![topic])
}

/// Hands a TxnOffsetCommit to its handler as the node does. The API is
/// not in the versions table yet (the transaction coordinator is served
/// later), so a frame would close the connection; here the request skips
/// the header check and everything after it is the node's own path. A
/// success is answered only once its write is durable.
fn txn_commit(
    h: &mut Harness,
    request: &TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let mut buf = BytesMut::new();
    request.encode(&mut buf, version).expect("encodes");
    let context = crate::handlers::Context {
        now: Now::at(h.now_ms),
        header: ReplyHeader {
            api_key: ApiKey::TxnOffsetCommit,
            version,
            correlation_id: 0,
        },
        client_id: "test",
        client_host: "/192.0.2.7",
        token: 0,
    };
    let pending =
        crate::handlers::dispatch(&mut h.node.broker, context, &mut buf.freeze()).expect("handled");
    let reply = match pending {
        Pending::Now(reply) => reply,
        Pending::After { wait, reply } => {
            assert_eq!(
                wait.state(&h.node.broker),
                WaitState::Waiting,
                "answered only once durable"
            );
            h.node.handle_timeout(Now::at(h.now_ms));
            h.drain();
            h.sync_all();
            assert_eq!(wait.state(&h.node.broker), WaitState::Done);
            *reply
        }
        other => panic!("unexpected {other:?}"),
    };
    let Reply::TxnOffsetCommit(response) = reply else {
        panic!("a TxnOffsetCommit answer")
    };
    // The answer encodes at the version asked.
    let mut encoded = BytesMut::new();
    response.encode(&mut encoded, version).expect("encodes");
    response
}

fn txn_commit_error(h: &mut Harness, request: &TxnOffsetCommitRequest) -> i16 {
    txn_commit(h, request, 3).topics[0].partitions[0].error_code
}

/// A transaction marker as a partition leader writes it: a control batch
/// of the producer (transactional and control bits, sequence -1) holding
/// one record, key (version 0, type 0 ABORT or 1 COMMIT) and value
/// (version 0, coordinator epoch 0).
fn marker_batch(now_ms: i64, producer_id: i64, producer_epoch: i16, commit: bool) -> Vec<u8> {
    let key = [0, 0, 0, u8::from(commit)];
    let value = [0u8; 6];
    let producer = crate::batch::builder::ProducerIdentity {
        producer_id,
        producer_epoch,
        base_sequence: -1,
    };
    let records = [(Some(&key[..]), Some(&value[..]), vec![], 0)];
    let mut batch = crate::batch::build_transactional_batch(now_ms, producer, &records);
    let attributes = crate::batch::ATTRIBUTE_TRANSACTIONAL | crate::batch::ATTRIBUTE_CONTROL;
    let at = crate::batch::ATTRIBUTES_OFFSET;
    batch[at..at + 2].copy_from_slice(&attributes.to_be_bytes());
    crate::batch::write_crc(&mut batch);
    batch
}

/// Appends a transaction marker to a group's `__consumer_offsets`
/// partition and applies it to the coordinator, as the marker writer does.
fn write_offsets_marker(h: &mut Harness, group: &str, producer_id: i64, commit: bool) {
    let broker = &mut h.node.broker;
    let partition =
        crate::broker::groups::offsets_partition(group, broker.offsets_partition_count());
    let batch = marker_batch(h.now_ms, producer_id, 0, commit);
    let held = broker
        .topics
        .partition_mut(OFFSETS_TOPIC, partition)
        .expect("the offsets partition");
    held.log
        .append(&mut broker.storage, &batch, 0, h.now_ms)
        .expect("appended");
    broker.note_partition_write(OFFSETS_TOPIC, partition);
    broker.apply_offsets_marker(partition, producer_id, commit);
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.sync_all();
}

/// A plain OffsetCommit v8 of one partition, outside the group.
fn plain_commit(h: &mut Harness, group: &str, topic: &str, partition: i32, offset: i64) {
    let partition = offset_commit_request::OffsetCommitRequestPartition::default()
        .with_partition_index(partition)
        .with_committed_offset(offset);
    let topic = offset_commit_request::OffsetCommitRequestTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![partition]);
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![topic]);
    let c = h.send(ApiKey::OffsetCommit, 8, &request);
    h.sync_all();
    let response: OffsetCommitResponse = h.take(ApiKey::OffsetCommit, 8, c);
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
}

/// OffsetFetch of one partition: (error code, committed offset), at v7
/// (one group) or v8 (groups), with or without require_stable.
fn fetched(
    h: &mut Harness,
    version: i16,
    require_stable: bool,
    group: &str,
    topic: &str,
    partition: i32,
) -> (i16, i64) {
    let name = TopicName(StrBytes::from_string(topic.into()));
    let group = GroupId(StrBytes::from_string(group.into()));
    let request = if version >= 8 {
        let topics = offset_fetch_request::OffsetFetchRequestTopics::default()
            .with_name(name)
            .with_partition_indexes(vec![partition]);
        OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(group)
                .with_topics(Some(vec![topics])),
        ])
    } else {
        let topics = offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(name)
            .with_partition_indexes(vec![partition]);
        OffsetFetchRequest::default()
            .with_group_id(group)
            .with_topics(Some(vec![topics]))
    }
    .with_require_stable(require_stable);
    let c = h.send(ApiKey::OffsetFetch, version, &request);
    h.sync_all();
    let response: OffsetFetchResponse = h.take(ApiKey::OffsetFetch, version, c);
    if version >= 8 {
        let group = &response.groups[0];
        assert_eq!(group.error_code, 0, "no group-level error");
        let p = &group.topics[0].partitions[0];
        (p.error_code, p.committed_offset)
    } else {
        assert_eq!(response.error_code, 0, "no top-level error");
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.committed_offset)
    }
}

const UNSTABLE: i16 = 88;

#[test]
fn a_transactions_offsets_show_only_after_its_commit_marker() {
    let configs = [("offsets.topic.num.partitions", "3")];
    let mut h = Harness::new(MemStorage::new(), &configs);
    h.create_topic("t", 1, &[]);
    plain_commit(&mut h, "g", "t", 0, 5);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 0, "t", 0, 42)),
        0
    );
    for version in [7, 8] {
        assert_eq!(
            fetched(&mut h, version, false, "g", "t", 0),
            (0, 5),
            "v{version}: the committed offset, not the pending one"
        );
        assert_eq!(
            fetched(&mut h, version, true, "g", "t", 0),
            (UNSTABLE, -1),
            "v{version}: require_stable while the transaction is open"
        );
    }
    // Another group in the same partition has nothing pending.
    assert_eq!(fetched(&mut h, 7, true, "other", "t", 0), (0, -1));
    write_offsets_marker(&mut h, "g", 7, true);
    for version in [7, 8] {
        assert_eq!(fetched(&mut h, version, true, "g", "t", 0), (0, 42));
        assert_eq!(fetched(&mut h, version, false, "g", "t", 0), (0, 42));
    }
}

#[test]
fn an_aborted_transactions_offsets_are_never_visible() {
    let mut h = Harness::new(MemStorage::new(), &[("offsets.topic.num.partitions", "1")]);
    h.create_topic("t", 1, &[]);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 0, "t", 0, 42)),
        0
    );
    write_offsets_marker(&mut h, "g", 7, false);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 0), (0, -1));
    // A commit marker of the same producer after the abort finds nothing.
    write_offsets_marker(&mut h, "g", 7, true);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 0), (0, -1));
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[("offsets.topic.num.partitions", "1")]);
    assert_eq!(
        fetched(&mut h, 7, true, "g", "t", 0),
        (0, -1),
        "after a restart"
    );
}

#[test]
fn a_stale_producer_epoch_is_fenced_and_writes_nothing() {
    let mut h = Harness::new(MemStorage::new(), &[("offsets.topic.num.partitions", "1")]);
    h.create_topic("t", 1, &[]);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 1, "t", 0, 42)),
        0
    );
    // A second batch of the same epoch starts at sequence 0 again: taken.
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 1, "t", 0, 43)),
        0
    );
    let ends = offsets_log_ends(&h);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 0, "t", 0, 44)),
        ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(offsets_log_ends(&h), ends, "nothing was appended");
    write_offsets_marker(&mut h, "g", 7, true);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 0), (0, 43));
}

#[test]
fn a_transactions_commit_does_not_replace_a_later_plain_commit() {
    let mut h = Harness::new(MemStorage::new(), &[("offsets.topic.num.partitions", "1")]);
    h.create_topic("t", 1, &[]);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 0, "t", 0, 42)),
        0
    );
    plain_commit(&mut h, "g", "t", 0, 50);
    write_offsets_marker(&mut h, "g", 7, true);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 0), (0, 50));
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[("offsets.topic.num.partitions", "1")]);
    assert_eq!(
        fetched(&mut h, 7, true, "g", "t", 0),
        (0, 50),
        "after a restart"
    );
}

/// Replay at load: committed and aborted transactions as logged, an open
/// one still pending (its marker, written after the restart, commits it),
/// and a plain commit newer than a transaction's record kept.
#[test]
fn transactional_offsets_replay_as_logged_after_a_restart() {
    let configs = [("offsets.topic.num.partitions", "1")];
    let mut h = Harness::new(MemStorage::new(), &configs);
    h.create_topic("t", 4, &[]);
    for (producer_id, partition) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
        let request = txn_offsets("g", producer_id, 0, "t", partition, 10 * producer_id);
        assert_eq!(txn_commit_error(&mut h, &request), 0);
    }
    plain_commit(&mut h, "g", "t", 3, 45);
    write_offsets_marker(&mut h, "g", 1, true);
    write_offsets_marker(&mut h, "g", 2, false);
    write_offsets_marker(&mut h, "g", 4, true);
    let expected = [(0, 10), (0, -1), (UNSTABLE, -1), (0, 45)];
    let seen = |h: &mut Harness| -> Vec<(i16, i64)> {
        (0..4)
            .map(|partition| fetched(h, 7, true, "g", "t", partition))
            .collect()
    };
    assert_eq!(seen(&mut h), expected);
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &configs);
    assert_eq!(seen(&mut h), expected, "rebuilt from __consumer_offsets");
    assert_eq!(h.node.broker.groups.open_transactions("g"), [3]);
    write_offsets_marker(&mut h, "g", 3, true);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 2), (0, 30));
}

#[test]
fn a_deleted_groups_pending_offsets_do_not_come_back() {
    let configs = [("offsets.topic.num.partitions", "1")];
    let mut h = Harness::new(MemStorage::new(), &configs);
    h.create_topic("t", 1, &[]);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("g", 7, 0, "t", 0, 42)),
        0
    );
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(StrBytes::from_static_str("g"))]);
    let c = h.send(ApiKey::DeleteGroups, 2, &request);
    h.sync_all();
    let deleted: DeleteGroupsResponse = h.take(ApiKey::DeleteGroups, 2, c);
    assert_eq!(deleted.results[0].error_code, 0);
    write_offsets_marker(&mut h, "g", 7, true);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 0), (0, -1));
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &configs);
    assert_eq!(
        fetched(&mut h, 7, true, "g", "t", 0),
        (0, -1),
        "after a restart"
    );
    assert!(!h.node.broker.groups.groups.contains_key("g"));
}

#[test]
fn txn_offset_commit_checks_members_and_partitions_like_kafka() {
    let mut h = Harness::new(
        MemStorage::new(),
        &[
            ("group.initial.rebalance.delay.ms", "0"),
            ("offsets.topic.num.partitions", "1"),
        ],
    );
    h.create_topic("t", 1, &[]);
    let member = join_group(&mut h, "g", "").member_id.to_string();
    let joined = join_group(&mut h, "g", &member);
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    let named = |generation: i32, member: &str| {
        txn_offsets("g", 7, 0, "t", 0, 42)
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member.into()))
    };
    assert_eq!(
        txn_commit_error(&mut h, &named(2, &member)),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        txn_commit_error(&mut h, &named(1, "stranger")),
        ResponseError::UnknownMemberId.code()
    );
    // Between join and sync: a transactional commit is not held back.
    assert_eq!(txn_commit_error(&mut h, &named(1, &member)), 0);
    // v2 names no member: accepted by a group with members.
    let old = txn_commit(&mut h, &txn_offsets("g", 7, 0, "t", 0, 43), 2);
    assert_eq!(old.topics[0].partitions[0].error_code, 0);
    // An unknown partition is refused alone; an empty group id everywhere.
    let mut request = txn_offsets("g", 7, 0, "t", 0, 44);
    let mut unknown = request.topics[0].clone();
    unknown.partitions[0].partition_index = 5;
    request.topics.push(unknown);
    let response = txn_commit(&mut h, &request, 3);
    let errors: Vec<i16> = response
        .topics
        .iter()
        .map(|t| t.partitions[0].error_code)
        .collect();
    assert_eq!(errors, [0, ResponseError::UnknownTopicOrPartition.code()]);
    assert_eq!(
        txn_commit_error(&mut h, &txn_offsets("", 7, 0, "t", 0, 1)),
        ResponseError::InvalidGroupId.code()
    );
    write_offsets_marker(&mut h, "g", 7, true);
    assert_eq!(fetched(&mut h, 7, true, "g", "t", 0), (0, 44));
}

mod creates;
mod fuzz;
mod txn;
// Transactions, partition side: markers, read_committed, producers.

/// A transactional batch of one record.
fn txn_record(producer_id: i64, epoch: i16, sequence: i32, value: &[u8]) -> Bytes {
    let mut batch = idempotent_record(producer_id, epoch, sequence, value).to_vec();
    batch[crate::batch::ATTRIBUTES_OFFSET..crate::batch::LAST_OFFSET_DELTA_OFFSET]
        .copy_from_slice(&crate::batch::ATTRIBUTE_TRANSACTIONAL.to_be_bytes());
    crate::batch::write_crc(&mut batch);
    Bytes::from(batch)
}

impl Harness {
    fn produce_synced(&mut self, topic: &str, records: Bytes) -> (i16, i64) {
        let c = self.produce(topic, 0, 1, records);
        self.sync_all();
        self.produce_result(c)
    }

    /// Sends WriteTxnMarkers for one marker on partitions of `topic`.
    fn write_markers(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        topic: &str,
        partitions: Vec<i32>,
    ) -> i32 {
        let marker = write_txn_markers_request::WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_coordinator_epoch(coordinator_epoch)
            .with_transaction_result(commit)
            .with_topics(vec![
                write_txn_markers_request::WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_partition_indexes(partitions),
            ]);
        let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
        self.send(ApiKey::WriteTxnMarkers, 1, &request)
    }

    fn markers_result(&mut self, correlation: i32) -> Vec<(i32, i16)> {
        let response: WriteTxnMarkersResponse = self.take(ApiKey::WriteTxnMarkers, 1, correlation);
        response.markers[0].topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect()
    }

    fn marker_synced(&mut self, producer_id: i64, commit: bool) {
        let c = self.write_markers(producer_id, 0, 0, commit, "t", vec![0]);
        assert!(self.sent.is_empty(), "answered once durable");
        self.sync_all();
        assert_eq!(self.markers_result(c), vec![(0, 0)]);
    }

    fn latest_offset(&mut self, isolation: i8) -> i64 {
        let partition = list_offsets_request::ListOffsetsPartition::default()
            .with_partition_index(0)
            .with_timestamp(-1);
        let topic = list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![partition]);
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation)
            .with_topics(vec![topic]);
        let c = self.send(ApiKey::ListOffsets, 5, &request);
        let response: ListOffsetsResponse = self.take(ApiKey::ListOffsets, 5, c);
        response.topics[0].partitions[0].offset
    }
}

fn aborted_in(data: &fetch_response::PartitionData) -> Option<Vec<(i64, i64)>> {
    data.aborted_transactions.as_ref().map(|list| {
        list.iter()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect()
    })
}

/// Offsets of the batches in a fetch answer.
fn batch_offsets(data: &fetch_response::PartitionData) -> Vec<i64> {
    let records = data.records.clone().unwrap_or_default();
    crate::batch::headers_in(&records)
        .map(|(header, _)| header.base_offset)
        .collect()
}

#[test]
fn read_committed_fetches_stop_at_the_lso_and_name_the_aborted_transactions() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    assert_eq!(h.produce_synced("t", one_record(b"plain")), (0, 0));
    assert_eq!(h.produce_synced("t", txn_record(7, 0, 0, b"a")), (0, 1));
    assert_eq!(h.produce_synced("t", txn_record(8, 0, 0, b"b")), (0, 2));
    assert_eq!(h.produce_synced("t", txn_record(7, 0, 1, b"c")), (0, 3));
    let c = h.fetch_at("t", 0, 0, 1, 1);
    let data = h.fetch_result(c);
    assert_eq!((data.high_watermark, data.last_stable_offset), (4, 1));
    assert_eq!(batch_offsets(&data), vec![0]);
    assert_eq!(aborted_in(&data), Some(vec![]));
    let c = h.fetch_at("t", 0, 0, 1, 0);
    let data = h.fetch_result(c);
    assert_eq!((data.high_watermark, data.last_stable_offset), (4, 1));
    assert_eq!(batch_offsets(&data), vec![0, 1, 2, 3]);
    assert_eq!(aborted_in(&data), None, "read_uncommitted gets no list");
    assert_eq!((h.latest_offset(0), h.latest_offset(1)), (4, 1));

    h.marker_synced(7, false);
    let c = h.fetch_at("t", 0, 0, 1, 1);
    let data = h.fetch_result(c);
    assert_eq!((data.high_watermark, data.last_stable_offset), (5, 2));
    assert_eq!(batch_offsets(&data), vec![0, 1]);
    assert_eq!(aborted_in(&data), Some(vec![(7, 1)]));
    assert_eq!(h.latest_offset(1), 2);

    h.marker_synced(8, true);
    let c = h.fetch_at("t", 0, 0, 1, 1);
    let data = h.fetch_result(c);
    assert_eq!((data.high_watermark, data.last_stable_offset), (6, 6));
    assert_eq!(batch_offsets(&data), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(aborted_in(&data), Some(vec![(7, 1)]));
    // From past the abort's marker, it is named no more.
    let c = h.fetch_at("t", 5, 0, 1, 1);
    let data = h.fetch_result(c);
    assert_eq!(batch_offsets(&data), vec![5]);
    assert_eq!(aborted_in(&data), Some(vec![]));
    // The abort is named to a fetch from inside it, not to one before it
    // that returns nothing of it.
    let c = h.fetch_at("t", 3, 0, 1, 1);
    assert_eq!(aborted_in(&h.fetch_result(c)), Some(vec![(7, 1)]));
    assert_eq!((h.latest_offset(0), h.latest_offset(1)), (6, 6));
}

#[test]
fn a_parked_read_committed_fetch_wakes_when_a_marker_moves_the_lso() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    assert_eq!(h.produce_synced("t", txn_record(7, 0, 0, b"a")), (0, 0));
    let committed = h.fetch_at("t", 0, 60_000, 1, 1);
    let uncommitted = h.fetch_at("t", 1, 60_000, 1, 0);
    assert!(
        h.sent.is_empty(),
        "nothing below the LSO yet, nothing past the HW"
    );
    let c = h.write_markers(7, 0, 0, true, "t", vec![0]);
    assert!(h.sent.is_empty(), "the marker is not under the HW yet");
    h.sync_all();
    let data = h.fetch_result(committed);
    assert_eq!(data.last_stable_offset, 2);
    assert_eq!(batch_offsets(&data), vec![0, 1]);
    assert_eq!(aborted_in(&data), Some(vec![]));
    let data = h.fetch_result(uncommitted);
    assert_eq!(batch_offsets(&data), vec![1], "the marker itself");
    assert_eq!(h.markers_result(c), vec![(0, 0)]);
}

#[test]
fn markers_are_refused_as_kafka_refuses_them_and_fence_the_producer() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 2, &[]);
    assert_eq!(h.produce_synced("t", txn_record(7, 0, 0, b"a")), (0, 0));
    // A plain batch while its transaction is open; a transactional batch
    // without a producer id.
    assert_eq!(
        h.produce_synced("t", idempotent_record(7, 0, 1, b"plain"))
            .0,
        ResponseError::InvalidTxnState.code()
    );
    let mut no_producer = build_batch(1_000_000, &[(None, Some(b"x"), vec![], 0)]);
    no_producer[crate::batch::ATTRIBUTES_OFFSET..crate::batch::LAST_OFFSET_DELTA_OFFSET]
        .copy_from_slice(&crate::batch::ATTRIBUTE_TRANSACTIONAL.to_be_bytes());
    crate::batch::write_crc(&mut no_producer);
    assert_eq!(
        h.produce_synced("t", Bytes::from(no_producer)).0,
        ResponseError::InvalidRecord.code()
    );
    // A fencing abort with producer epoch 1, from coordinator epoch 3;
    // partition 1 has no transaction: the marker only records the epochs;
    // partition 5 does not exist.
    let c = h.write_markers(7, 1, 3, false, "t", vec![0, 1, 5]);
    h.sync_all();
    assert_eq!(
        h.markers_result(c),
        vec![
            (0, 0),
            (1, 0),
            (5, ResponseError::UnknownTopicOrPartition.code())
        ]
    );
    let c = h.write_markers(7, 0, 3, true, "t", vec![0]);
    assert_eq!(
        h.markers_result(c),
        vec![(0, ResponseError::InvalidProducerEpoch.code())]
    );
    let c = h.write_markers(7, 1, 2, true, "t", vec![0]);
    assert_eq!(
        h.markers_result(c),
        vec![(0, ResponseError::TransactionCoordinatorFenced.code())]
    );
    let c = h.write_markers(7, 1, 3, false, "unknown", vec![0]);
    assert_eq!(
        h.markers_result(c),
        vec![(0, ResponseError::UnknownTopicOrPartition.code())]
    );
    // The old epoch's batches are fenced.
    assert_eq!(
        h.produce_synced("t", txn_record(7, 0, 1, b"zombie")).0,
        ResponseError::InvalidProducerEpoch.code()
    );
    // DescribeProducers shows the state, on both partitions.
    let request = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_indexes(vec![0, 1, 9]),
    ]);
    let c = h.send(ApiKey::DescribeProducers, 0, &request);
    let response: DescribeProducersResponse = h.take(ApiKey::DescribeProducers, 0, c);
    let partitions = &response.topics[0].partitions;
    let state = |p: &describe_producers_response::PartitionResponse| {
        p.active_producers
            .iter()
            .map(|s| {
                (
                    s.producer_id.0,
                    s.producer_epoch,
                    s.last_sequence,
                    s.coordinator_epoch,
                    s.current_txn_start_offset,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(partitions[0].error_code, 0);
    assert_eq!(state(&partitions[0]), vec![(7, 1, -1, 3, -1)]);
    assert_eq!(state(&partitions[1]), vec![(7, 1, -1, 3, -1)]);
    assert_eq!(
        partitions[2].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    // A new transaction of the new epoch shows its start.
    assert_eq!(h.produce_synced("t", txn_record(7, 1, 0, b"next")).0, 0);
    let c = h.send(ApiKey::DescribeProducers, 0, &request);
    let response: DescribeProducersResponse = h.take(ApiKey::DescribeProducers, 0, c);
    assert_eq!(
        state(&response.topics[0].partitions[0]),
        vec![(7, 1, 0, 3, 2)]
    );
}

/// The transaction state survives a crash: the log gives it back, and the
/// `.txnindex` with it.
#[test]
fn transactions_and_their_aborts_survive_a_crash() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.create_topic("t", 1, &[]);
    h.produce_synced("t", txn_record(7, 0, 0, b"a"));
    h.marker_synced(7, false);
    h.produce_synced("t", txn_record(8, 0, 0, b"b"));
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(0);
    let mut h = Harness::new(storage, &[]);
    let c = h.fetch_at("t", 0, 0, 1, 1);
    let data = h.fetch_result(c);
    assert_eq!((data.high_watermark, data.last_stable_offset), (3, 2));
    assert_eq!(batch_offsets(&data), vec![0, 1]);
    assert_eq!(aborted_in(&data), Some(vec![(7, 0)]));
}
