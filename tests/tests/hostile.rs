//! Hostile clients against a real broker process, each bounded in what it
//! can cost: a decompression bomb, and hundreds of connections that send
//! nothing. (Unread answers and partial frames: `back_pressure.rs`; huge
//! creates: `huge_creates.rs`; broken frames and batches: `bad_input.rs`;
//! generated frames and batches: `core/src/node/tests/fuzz.rs`.) The bounds
//! are properties: memory under a stated figure, another client answered
//! meanwhile, every descriptor given back; the times are printed, not
//! asserted.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use sluice_core::batch::{
    build_batch, write_crc, ATTRIBUTES_OFFSET, HEADER_BYTES, LENGTH_OFFSET, LOG_OVERHEAD,
};
use sluice_tests::wire::Wire;
use sluice_tests::{proc_status_kib, Broker, BrokerOptions};

/// Bound on any one wait: far above what each case needs.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// A zigzag varint, as record fields are written.
fn varint(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A zstd batch of one record whose value is `expands_to` zero bytes,
/// made of concatenated zstd frames of `CHUNK` zeros each (a decoder reads
/// them as one stream), so the bomb costs this test little to build.
fn zstd_bomb(expands_to: usize) -> Bytes {
    const CHUNK: usize = 1 << 20;
    assert_eq!(expands_to % CHUNK, 0);
    let mut head = Vec::new();
    let mut fields = vec![0u8]; // attributes
    varint(0, &mut fields); // timestamp delta
    varint(0, &mut fields); // offset delta
    varint(-1, &mut fields); // no key
    varint(expands_to as i64, &mut fields);
    // The record's length: its fields, the value, and the header count.
    varint((fields.len() + expands_to + 1) as i64, &mut head);
    head.extend_from_slice(&fields);
    let zeros = vec![0u8; CHUNK];
    let zero_frame = zstd::bulk::compress(&zeros, 3).expect("zstd");
    let mut body = zstd::bulk::compress(&head, 3).expect("zstd");
    for _ in 0..expands_to / CHUNK {
        body.extend_from_slice(&zero_frame);
    }
    body.extend_from_slice(&zstd::bulk::compress(&[0u8], 3).expect("zstd")); // no headers
                                                                             // A one-record batch's header over that body, its codec zstd (4).
    let plain = build_batch(1_700_000_000_000, &[(None, Some(b"v"), vec![], 0)]);
    let mut batch = plain[..HEADER_BYTES].to_vec();
    batch.extend_from_slice(&body);
    let length = (batch.len() - LOG_OVERHEAD) as i32;
    batch[LENGTH_OFFSET..LOG_OVERHEAD].copy_from_slice(&length.to_be_bytes());
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&4i16.to_be_bytes());
    write_crc(&mut batch);
    Bytes::from(batch)
}

/// A 40 KB batch that expands to 1 GiB is refused once the decompressor
/// passed the bound (`message.decompression.ratio.max` 64 times
/// `max.message.bytes` 1 MiB: 64 MiB): INVALID_RECORD, nothing appended,
/// the broker's peak memory up by less than twice the bound (unbounded,
/// it would hold the whole gigabyte), and a client on another connection
/// answered meanwhile.
#[test]
fn a_decompression_bomb_costs_at_most_its_bound() {
    const EXPANDS_TO: usize = 1 << 30;
    const BOUND_MIB: u64 = 64;
    let broker = Broker::start(BrokerOptions::default());
    let pid = broker.pid().expect("a broker process");
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(wire.create_topic("t", 1).expect("create"), 0);
    let bomb = zstd_bomb(EXPANDS_TO);
    assert!(bomb.len() < 1 << 20, "within max.message.bytes");
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");
    let before = proc_status_kib(pid, "VmHWM");
    let sent = Instant::now();
    let produce = wire.send_produce("t", 0, -1, bomb).expect("send");
    // Asked right behind the bomb, on its own connection.
    let asked = Instant::now();
    let metadata: MetadataResponse = bystander
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
        .expect("the bystander is answered");
    let bystander_ms = asked.elapsed().as_secs_f64() * 1e3;
    assert_eq!(metadata.brokers.len(), 1);
    let (error, _) = wire.produce_result(produce).expect("the bomb is answered");
    let refused_ms = sent.elapsed().as_secs_f64() * 1e3;
    assert_eq!(error, ResponseError::InvalidRecord.code());
    let peak = proc_status_kib(pid, "VmHWM");
    println!(
        "bomb of {} bytes refused in {refused_ms:.1} ms; a Metadata sent behind it answered in {bystander_ms:.1} ms; peak RSS {before} -> {peak} KiB",
        EXPANDS_TO
    );
    assert!(
        peak < before + 2 * BOUND_MIB * 1024,
        "peak RSS went from {before} KiB to {peak} KiB"
    );
    assert_eq!(
        wire.read_all("t", 0, 0).expect("read").len(),
        0,
        "nothing appended"
    );
    assert!(
        broker.log().contains("decompression"),
        "the refusal is logged"
    );
}

/// Connections that send nothing are closed after `connections.max.idle.ms`
/// and give their descriptors back; a client that talks is served
/// throughout.
#[test]
fn silent_connections_are_closed_and_give_their_descriptors_back() {
    const SILENT: usize = 300;
    let broker = Broker::start(BrokerOptions::default().config("connections.max.idle.ms", 3_000));
    let pid = broker.pid().expect("a broker process");
    let baseline = open_descriptors(pid);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(broker.bootstrap()).expect("connect"))
        .collect();
    // A client that talks is answered while they are held.
    let mut talker = Wire::connect(&broker.bootstrap()).expect("connect");
    let mut held = 0;
    for _ in 0..20 {
        let response: ApiVersionsResponse = talker
            .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
            .expect("the talker is answered");
        assert_eq!(response.error_code, 0);
        held = held.max(open_descriptors(pid));
    }
    assert!(
        held >= baseline + SILENT / 2,
        "the broker held the silent connections ({baseline} -> {held} descriptors)"
    );
    // Each silent connection is closed by the broker: EOF or a reset.
    for stream in &mut silent {
        stream.set_read_timeout(Some(WAIT_MAX)).expect("timeout");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("a silent connection got bytes"),
            Err(error) => assert!(
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a silent connection was kept past {WAIT_MAX:?}"
            ),
        }
    }
    let closed_after = started.elapsed();
    drop(silent);
    drop(talker);
    // A fresh connection is served, and every silent one's descriptor is
    // back (the talker's may still be closing).
    let mut talker = Wire::connect(&broker.bootstrap()).expect("connect");
    let response: ApiVersionsResponse = talker
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .expect("served after");
    assert_eq!(response.error_code, 0);
    let after = open_descriptors(pid);
    println!(
        "{SILENT} silent connections: descriptors {baseline} -> {held} -> {after}, all closed within {closed_after:?}"
    );
    assert!(
        after <= baseline + 2,
        "descriptors given back: {baseline} before, {after} after"
    );
}

/// A request trickled in a byte at a time (slowloris) is cut off once it
/// has taken `connections.max.idle.ms` since its first byte, though bytes
/// keep coming; a client on another connection is answered meanwhile.
#[test]
fn a_trickled_request_is_cut_off_after_the_idle_bound() {
    let broker = Broker::start(BrokerOptions::default().config("connections.max.idle.ms", 1_000));
    let mut slow = TcpStream::connect(broker.bootstrap()).expect("connect");
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");
    // A frame of 200 bytes, sent one byte every 50 ms: 10 s if let be.
    let mut frame = 200i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 200]);
    let started = Instant::now();
    let mut sent = 0;
    let cut = loop {
        if sent == frame.len() {
            break false;
        }
        if std::io::Write::write_all(&mut slow, &frame[sent..sent + 1]).is_err() {
            break true;
        }
        sent += 1;
        let response: ApiVersionsResponse = bystander
            .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
            .expect("the bystander is answered");
        assert_eq!(response.error_code, 0);
        // A closed connection shows on a read before a write fails.
        slow.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match slow.read(&mut byte) {
            Ok(0) => break true,
            Ok(_) => panic!("a partial frame got an answer"),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
    };
    println!(
        "a trickled request was cut off after {:?}, {sent} of {} bytes sent",
        started.elapsed(),
        frame.len()
    );
    assert!(cut, "the whole trickled frame was taken");
    assert!(sent < frame.len());
}
