//! File descriptors are a budget, not a cliff: a real broker process under
//! `ulimit -n 256` (soft and hard) hosts ten times as many partitions as
//! it has descriptors, takes a record in every one of them, serves them
//! all back, and does so again after a restart and after a crash. A create
//! too big for its descriptors at once fails on its own, with the log
//! directory still online.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_tests::wire::{batch_of, Wire};
use sluice_tests::{Broker, BrokerOptions};

const DESCRIPTORS: u64 = 256;
const PARTITIONS: usize = 10 * DESCRIPTORS as usize;
const TOPICS: usize = 20;
const PARTITIONS_PER_TOPIC: usize = PARTITIONS / TOPICS;
/// Produce requests one connection has in flight at once.
const PRODUCE_WINDOW: usize = 32;
/// How long a restarted broker may take to serve reads.
const READ_READY_TIMEOUT: Duration = Duration::from_secs(180);

fn topic(index: usize) -> String {
    format!("fd-{index:02}")
}

fn value(topic: &str, partition: i32) -> Vec<u8> {
    format!("{topic}/{partition}").into_bytes()
}

fn partitions() -> impl Iterator<Item = (String, i32)> {
    (0..TOPICS).flat_map(|t| (0..PARTITIONS_PER_TOPIC as i32).map(move |p| (topic(t), p)))
}

/// Produces one record to every partition, `PRODUCE_WINDOW` requests in
/// flight, and checks each is acknowledged (acks=all) at offset 0.
fn produce_to_all(broker: &Broker) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    let mut in_flight: VecDeque<(i32, String, i32)> = VecDeque::new();
    let acknowledge = |wire: &mut Wire, (correlation, topic, partition): (i32, String, i32)| {
        let (error, base_offset) = wire.produce_result(correlation).expect("a produce answer");
        assert_eq!(
            (error, base_offset),
            (0, 0),
            "produce to {topic}/{partition}"
        );
    };
    for (topic, partition) in partitions() {
        let records = batch_of(&[&value(&topic, partition)], 1_700_000_000_000);
        let correlation = wire
            .send_produce(&topic, partition, -1, records)
            .expect("send a produce");
        in_flight.push_back((correlation, topic, partition));
        if in_flight.len() >= PRODUCE_WINDOW {
            let oldest = in_flight.pop_front().expect("one in flight");
            acknowledge(&mut wire, oldest);
        }
    }
    while let Some(oldest) = in_flight.pop_front() {
        acknowledge(&mut wire, oldest);
    }
}

/// Reads every partition back: its one record, as produced. A broker just
/// started may still be syncing what it recovered: a read it refuses is
/// tried again until `READ_READY_TIMEOUT`.
fn read_all_back(broker: &Broker) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    let deadline = Instant::now() + READ_READY_TIMEOUT;
    for (topic, partition) in partitions() {
        let records = loop {
            match wire.read_all(&topic, partition, 0) {
                Ok(records) => break records,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                    wire = Wire::connect(&broker.bootstrap()).expect("connect");
                }
                Err(error) => panic!("read {topic}/{partition}: {error}\n{}", broker.log_tail(20)),
            }
        };
        assert_eq!(
            records,
            vec![(0, value(&topic, partition))],
            "{topic}/{partition}"
        );
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

#[test]
fn ten_times_more_partitions_than_descriptors_are_served_and_survive_restarts() {
    let mut broker = Broker::start(
        BrokerOptions::default()
            .open_files_limit(DESCRIPTORS)
            .ready_timeout(Duration::from_secs(180))
            .stop_timeout(Duration::from_secs(180))
            .config("max.broker.partitions", 3 * PARTITIONS as i64)
            .config("max.topic.partitions", 3 * PARTITIONS as i64),
    );
    let log = broker.log();
    assert!(
        log.contains("soft raised to the hard limit")
            && log.contains(&format!("soft={DESCRIPTORS}"))
            && log.contains(&format!("hard={DESCRIPTORS}")),
        "the limits are logged at start:\n{}",
        broker.log_tail(30)
    );
    assert!(
        log.contains(&format!("open_files_max={}", DESCRIPTORS / 2)),
        "the derived bound is logged:\n{}",
        broker.log_tail(30)
    );

    let started = Instant::now();
    let mut admin = Wire::connect(&broker.bootstrap()).expect("connect");
    for t in 0..TOPICS {
        let code = admin
            .create_topic(&topic(t), PARTITIONS_PER_TOPIC as i32)
            .expect("create answered");
        assert_eq!(code, 0, "create {}:\n{}", topic(t), broker.log_tail(30));
    }
    let created = started.elapsed();
    produce_to_all(&broker);
    let produced = started.elapsed() - created;
    read_all_back(&broker);
    let read = started.elapsed() - created - produced;
    let pid = broker.pid().expect("running");
    let held = open_descriptors(pid);
    assert!(held <= DESCRIPTORS as usize, "{held} descriptors");
    eprintln!(
        "{PARTITIONS} partitions under ulimit -n {DESCRIPTORS}: created in {created:?}, \
         one record each produced in {produced:?}, read back in {read:?}; \
         {held} descriptors open after"
    );

    // A clean stop and start: recovery opens every partition again.
    let restarting = Instant::now();
    broker.restart();
    read_all_back(&broker);
    let restarted = restarting.elapsed();
    // A crash and start: the unclean recovery scans every segment.
    broker.kill9();
    let restarting = Instant::now();
    broker.restart();
    read_all_back(&broker);
    let recovered = restarting.elapsed();
    eprintln!(
        "stopped, started and read back in {restarted:?}; \
         after a crash, started and read back in {recovered:?}"
    );

    let log = broker.log();
    assert!(
        !log.contains("offline"),
        "nothing took the log directory offline:\n{}",
        broker.log_tail(40)
    );
    let accept_warnings = log.matches("accept failed").count();
    assert!(
        accept_warnings <= 3,
        "{accept_warnings} accept warnings:\n{}",
        broker.log_tail(40)
    );
}

/// Connections that take every descriptor left: accepts fail (EMFILE) for
/// as long as they are held. The broker backs off with a warning or two
/// rather than a line every few milliseconds, what it was doing waits or
/// fails on its own, nothing takes the log directory offline, and once the
/// connections go it serves again.
#[test]
fn running_out_of_descriptors_to_connections_neither_floods_the_log_nor_fails_the_disk() {
    const LIMIT: u64 = 128;
    // Fewer than the listen backlog holds, so that no connect waits.
    const HOGS: usize = LIMIT as usize;
    const HOLD: Duration = Duration::from_secs(3);
    let broker = Broker::start(
        BrokerOptions::default()
            .open_files_limit(LIMIT)
            .config("max.broker.partitions", 10 * LIMIT as i64),
    );
    let mut admin = Wire::connect(&broker.bootstrap()).expect("connect");
    let partitions = 2 * LIMIT as i32;
    assert_eq!(admin.create_topic("busy", partitions).expect("answered"), 0);
    for partition in 0..partitions {
        let records = batch_of(&[&value("busy", partition)], 1_700_000_000_000);
        let answer = admin
            .produce("busy", partition, -1, records)
            .expect("answered");
        assert_eq!(answer, (0, 0), "busy/{partition}");
    }

    let mut hogs = Vec::new();
    for _ in 0..HOGS {
        match std::net::TcpStream::connect(broker.bootstrap()) {
            Ok(stream) => hogs.push(stream),
            Err(_) => break,
        }
    }
    std::thread::sleep(HOLD);
    // Meanwhile, on a connection already open: a produce to every
    // partition, whose files were long evicted.
    let mut sent = Vec::new();
    for partition in 0..partitions {
        let records = batch_of(&[b"while starved"], 1_700_000_000_000);
        let correlation = admin
            .send_produce("busy", partition, -1, records)
            .expect("send");
        sent.push((partition, correlation));
        if sent.len() >= PRODUCE_WINDOW {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(hogs);
    for (partition, correlation) in sent {
        let (error, offset) = admin.produce_result(correlation).expect("answered");
        // A produce that could not open its files is refused on its own;
        // one that could is acknowledged once its sync went through.
        assert!(
            error != 0 || offset == 1,
            "busy/{partition}: ({error}, {offset})"
        );
    }
    // Served again, each partition readable and writable.
    let started = Instant::now();
    for partition in 0..partitions {
        let records = batch_of(&[b"after"], 1_700_000_000_000);
        let (error, _) = loop {
            let answer = admin
                .produce("busy", partition, -1, records.clone())
                .expect("answered");
            if answer.0 == 0 || started.elapsed() > READ_READY_TIMEOUT {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(error, 0, "busy/{partition}:\n{}", broker.log_tail(20));
        let read = admin.read_all("busy", partition, 0).expect("read");
        assert_eq!(read[0], (0, value("busy", partition)));
        assert_eq!(read.last().map(|r| r.1.clone()), Some(b"after".to_vec()));
    }

    let log = broker.log();
    let warnings = log.matches("accept failed").count();
    assert!(
        (1..=2).contains(&warnings),
        "the accepts failed, and said so once or twice, not every few ms: {warnings}\n{}",
        broker.log_tail(20)
    );
    assert!(
        !log.contains("offline") && !log.contains("sync failed"),
        "{}",
        broker.log_tail(20)
    );
}
