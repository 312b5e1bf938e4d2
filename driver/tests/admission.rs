//! The bounds on client connections, against a real broker on loopback
//! TCP: `max.connections.per.ip` closes one connection too many at once,
//! `connections.max.idle.ms` closes a silent connection, a request that
//! trickles in and a client that takes none of its answers, and keeps a
//! connection that waits for an answer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_core::config::BrokerConfig;
use sluice_driver::{serve_on_thread, Environment, FileDisk, ServedOnThread, TokioConnector};

/// Bound on any one wait of these tests: far above what each case needs.
const WAIT_MAX: Duration = Duration::from_secs(20);

struct Running {
    port: u16,
    node: ServedOnThread,
}

impl Running {
    fn stop(self) {
        let outcome = self.node.kill().expect("the broker's thread ran");
        outcome.expect("the broker ran until killed");
    }
}

fn start(dir: &Path, settings: &[(&str, &str)]) -> Running {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let port = listener.local_addr().expect("address").port();
    let mut pairs: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.insert("log.dirs".into(), dir.join("data").display().to_string());
    pairs.insert("listeners".into(), format!("PLAINTEXT://127.0.0.1:{port}"));
    let config = BrokerConfig::from_pairs(&pairs).expect("valid config");
    let disk = FileDisk::open(&dir.join("data")).expect("data directory");
    let build = move |listener| Environment {
        config,
        listener,
        disk,
        advertised: ("127.0.0.1".to_string(), port),
        clock: sluice_driver::system_clock(),
        seed: 1,
        peers: BTreeMap::new(),
        connector: TokioConnector,
        peer_status: None,
        metrics_listener: None,
    };
    let node = serve_on_thread("broker".into(), listener, || (), build).expect("broker thread");
    Running { port, node }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    stream.set_read_timeout(Some(WAIT_MAX)).expect("timeout");
    stream
}

fn request<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("admission-test")))
        .encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let length = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&length.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame; None when the broker closed the connection.
/// Creates topic "t" of one partition with the request's `correlation_id`.
fn create_topic_t(client: &mut TcpStream, correlation_id: i32) {
    let topic = create_topics_request::CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("t")))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let create = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(5_000);
    client
        .write_all(&request(ApiKey::CreateTopics, 5, correlation_id, &create))
        .expect("create");
    response(client).expect("created");
}

fn response(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("no answer and no close within {WAIT_MAX:?}")
        }
        Err(_) => return None,
    }
    let mut frame = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// True when the broker answers ApiVersions on `stream`.
fn answers(stream: &mut TcpStream) -> bool {
    let ask = request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    stream.write_all(&ask).is_ok() && response(stream).is_some()
}

/// Waits for the broker to close `stream`; how long that took.
fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the broker to close the connection, got {other:?}"),
    }
    started.elapsed()
}

#[test]
fn one_connection_past_max_connections_per_ip_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(dir.path(), &[("max.connections.per.ip", "2")]);
    let mut first = connect(broker.port);
    let mut second = connect(broker.port);
    assert!(answers(&mut first) && answers(&mut second));
    let mut third = connect(broker.port);
    closed_after(&mut third);
    assert!(answers(&mut first), "the others keep being served");
    broker.stop();
}

#[test]
fn a_silent_connection_and_a_trickling_request_are_closed_after_the_idle_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(dir.path(), &[("connections.max.idle.ms", "300")]);
    let mut silent = connect(broker.port);
    // Timed from before the request: the broker's idle clock starts at its
    // last activity on the connection, at or after this moment (timing
    // from the answer's arrival would start after the broker's clock).
    let asked = Instant::now();
    assert!(answers(&mut silent), "answered while it talks");
    closed_after(&mut silent);
    assert!(asked.elapsed() >= Duration::from_millis(300));
    let mut trickling = connect(broker.port);
    trickling
        .write_all(&[0, 0, 0, 100, 1, 2, 3])
        .expect("a request's first bytes");
    closed_after(&mut trickling);
    broker.stop();
}

#[test]
fn a_connection_waiting_for_an_answer_is_not_idle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(dir.path(), &[("connections.max.idle.ms", "300")]);
    let mut client = connect(broker.port);
    create_topic_t(&mut client, 2);
    // A long poll three times the idle bound, on an empty partition.
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(900)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let asked = Instant::now();
    client
        .write_all(&request(ApiKey::Fetch, 12, 3, &fetch))
        .expect("fetch");
    let mut frame = response(&mut client).expect("the long poll is answered, not cut off");
    assert!(asked.elapsed() >= Duration::from_millis(900));
    let mut body = bytes::Bytes::from(std::mem::take(&mut frame));
    let header = ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(12))
        .expect("header");
    assert_eq!(header.correlation_id, 3);
    broker.stop();
}

#[test]
fn a_client_that_takes_no_answer_is_closed_after_the_idle_bound() {
    const RECORD_BYTES: usize = 512 * 1024;
    // 64 answers of half a MiB: more than the sockets' buffers hold.
    const PIPELINED: i32 = 64;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(dir.path(), &[("connections.max.idle.ms", "300")]);
    let mut client = connect(broker.port);
    create_topic_t(&mut client, 1);
    let records =
        sluice_core::batch::build_batch(0, &[(None, Some(&[7u8; RECORD_BYTES][..]), vec![], 0)]);
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records.into())),
            ])]);
    client
        .write_all(&request(ApiKey::Produce, 9, 2, &produce))
        .expect("produce");
    response(&mut client).expect("produced");
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    client.set_write_timeout(Some(WAIT_MAX)).expect("timeout");
    for correlation in 3..3 + PIPELINED {
        client
            .write_all(&request(ApiKey::Fetch, 12, correlation, &fetch))
            .expect("a fetch");
    }
    // It reads nothing, and keeps asking: once the broker closed the
    // connection, a write fails (the broker's unread requests reset it).
    let ask = request(ApiKey::ApiVersions, 3, 0, &ApiVersionsRequest::default());
    let failed = loop {
        if let Err(error) = client.write_all(&ask) {
            break error;
        }
    };
    assert!(
        matches!(
            failed.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "expected the broker to close the connection, got {failed:?}"
    );
    assert!(answers(&mut connect(broker.port)), "others are served");
    broker.stop();
}
