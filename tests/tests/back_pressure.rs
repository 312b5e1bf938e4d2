//! Back-pressure against a real broker process: a client that sends
//! requests and never reads its answers, and clients that send most of a
//! large frame and stop, cost the broker a bounded amount of memory
//! (`queued.max.requests`, `queued.max.response.bytes`,
//! `queued.max.request.bytes`), and the broker keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_tests::wire::{batch_of, still_serves, Wire};
use sluice_tests::{
    free_ports, metric_sample, proc_status_kib, scrape_metrics, Broker, BrokerOptions,
};

/// Bound on any one wait: far above what each step needs, so that a
/// broken broker fails the test instead of hanging it.
const WAIT_MAX: Duration = Duration::from_secs(120);

/// A Fetch of the whole partition from offset 0, answered at once.
fn fetch_all(topic: &str) -> FetchRequest {
    let wanted = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_bytes(1 << 20)
        .with_max_wait_ms(0)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![wanted])])
}

/// 800 Fetch requests answered with about 480 KiB each would be 375 MiB of
/// answers; a client sends them all and reads none. The broker reads no
/// more of them once `queued.max.response.bytes` (16 MiB) of answers wait
/// to be written, or `queued.max.requests` (64) answers are owed, so its
/// memory stays within 64 MiB of where it was, while another client is
/// answered; and once the client reads, it gets every answer, in order.
#[test]
fn a_client_that_reads_no_answers_is_read_no_further_and_others_are_answered() {
    const TOPIC: &str = "unread";
    const PIPELINED: usize = 800;
    const RECORDS: usize = 8;
    const RECORD_BYTES: usize = 60 * 1024;
    const GROWTH_KIB_MAX: u64 = 64 * 1024;
    let broker = Broker::start(BrokerOptions::default());
    let pid = broker.pid().expect("a broker process");
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(bystander.create_topic(TOPIC, 1).expect("create"), 0);
    let values: Vec<Vec<u8>> = (0..RECORDS).map(|i| vec![i as u8; RECORD_BYTES]).collect();
    let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let (error, _) = bystander
        .produce(TOPIC, 0, 1, batch_of(&values, 0))
        .expect("produce");
    assert_eq!(error, 0);
    let (error, _, records) = bystander.fetch(TOPIC, 0, 0).expect("fetch");
    assert_eq!(error, 0);
    assert!(records.len() > RECORDS * RECORD_BYTES);
    let before = proc_status_kib(pid, "VmRSS");

    let mut hoarder = Wire::connect(&broker.bootstrap()).expect("connect");
    let request = fetch_all(TOPIC);
    let correlations: Vec<i32> = (0..PIPELINED)
        .map(|_| hoarder.send(ApiKey::Fetch, 12, &request).expect("send"))
        .collect();
    // Each answer to the other client comes after the broker handled what
    // it had read before; its memory is looked at after each.
    let mut highest = before;
    for _ in 0..50 {
        let response: MetadataResponse = bystander
            .call(
                ApiKey::Metadata,
                12,
                &MetadataRequest::default().with_topics(None),
            )
            .expect("the other client is answered");
        assert_eq!(response.brokers.len(), 1);
        highest = highest.max(proc_status_kib(pid, "VmRSS"));
    }
    eprintln!("RSS {before} KiB before, {highest} KiB at most with {PIPELINED} answers unread");
    assert!(
        highest < before + GROWTH_KIB_MAX,
        "RSS went from {before} KiB to {highest} KiB with {PIPELINED} Fetch answers unread"
    );

    for correlation in correlations {
        let response: FetchResponse = hoarder
            .receive(ApiKey::Fetch, 12, correlation)
            .expect("every answer, in order");
        let data = &response.responses[0].partitions[0];
        assert_eq!(data.error_code, 0);
        assert_eq!(data.records.as_ref().map(|r| r.len()), Some(records.len()));
    }
    still_serves(&broker.bootstrap());
}

/// Twelve connections each announce a 32 MiB frame and send 30 MiB of it
/// (360 MiB if all were read). With `queued.max.request.bytes` at 64 MiB,
/// the broker reads no more of them than fits, but for the frame with the
/// fewest bytes left (so that one is always read through), which may go
/// up to one largest frame past the bound: the frames hold at most
/// 64 + 32 MiB, and a small request is still read and answered. Then every
/// frame is sent whole: each is read in turn as space is freed (and, not
/// being a request, refused with a close), and the broker's peak memory
/// stays within the same bound.
#[test]
fn frames_sent_in_part_hold_no_more_than_the_request_memory() {
    const CONNECTIONS: usize = 12;
    const CHUNK_BYTES: usize = 1 << 20;
    const FRAME_BYTES: usize = 32 << 20;
    const PART_BYTES: usize = 30 << 20;
    const MEMORY_BYTES: usize = 64 << 20;
    const HELD_BYTES_MAX: usize = MEMORY_BYTES + FRAME_BYTES;
    /// The broker's own memory beyond the frames' bytes: buffers, the
    /// allocator's rounding.
    const SLACK_KIB: u64 = 16 * 1024;
    let metrics_port = free_ports(1)[0];
    let broker = Broker::start(
        BrokerOptions::default()
            .config("socket.request.max.bytes", FRAME_BYTES as i64)
            .config("queued.max.request.bytes", MEMORY_BYTES as i64)
            .config("metrics.listener", format!("127.0.0.1:{metrics_port}")),
    );
    let pid = broker.pid().expect("a broker process");
    still_serves(&broker.bootstrap());
    let before = proc_status_kib(pid, "VmHWM");
    let bound_kib = before + (HELD_BYTES_MAX / 1024) as u64 + SLACK_KIB;

    let (sent, sent_part) = mpsc::channel();
    let mut finish = Vec::new();
    let mut writers = Vec::new();
    for index in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(broker.bootstrap()).expect("connect");
        stream.set_read_timeout(Some(WAIT_MAX)).expect("timeout");
        let sent = sent.clone();
        let (go, gone) = mpsc::channel::<()>();
        finish.push(go);
        writers.push(std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![0x5au8; CHUNK_BYTES];
            stream.write_all(&(FRAME_BYTES as i32).to_be_bytes())?;
            for _ in 0..PART_BYTES / CHUNK_BYTES {
                stream.write_all(&chunk)?;
            }
            let _ = sent.send(index);
            gone.recv().map_err(std::io::Error::other)?;
            for _ in PART_BYTES / CHUNK_BYTES..FRAME_BYTES / CHUNK_BYTES {
                stream.write_all(&chunk)?;
            }
            // An unknown API key: the broker closes the connection.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest)?;
            Ok(())
        }));
    }
    // The frame with the fewest bytes left is read through: its writer
    // sends its 30 MiB.
    sent_part
        .recv_timeout(WAIT_MAX)
        .expect("one connection's 30 MiB were read");
    // A small request has fewer left: it is read though the bound is full.
    still_serves(&broker.bootstrap());
    let metrics = scrape_metrics(metrics_port).expect("metrics");
    let held = metric_sample(&metrics, "sluice_request_memory_bytes").expect("the gauge") as usize;
    let rss = proc_status_kib(pid, "VmRSS");
    eprintln!("peak RSS {before} KiB before; RSS {rss} KiB with {held} bytes held for frames");
    assert!(
        (PART_BYTES..=HELD_BYTES_MAX).contains(&held),
        "{held} bytes held for frames, outside {PART_BYTES}..={HELD_BYTES_MAX}"
    );
    assert!(
        rss < bound_kib,
        "RSS went from {before} KiB to {rss} KiB with {CONNECTIONS} frames of 30 MiB"
    );

    for go in finish {
        go.send(()).expect("a writer waits");
    }
    for writer in writers {
        writer
            .join()
            .expect("a writer")
            .expect("a frame sent whole, and its connection closed");
    }
    let peak = proc_status_kib(pid, "VmHWM");
    eprintln!("peak RSS {peak} KiB once every frame was read");
    assert!(
        peak < bound_kib,
        "peak RSS went from {before} KiB to {peak} KiB reading {CONNECTIONS} frames of 32 MiB"
    );
    still_serves(&broker.bootstrap());
}
