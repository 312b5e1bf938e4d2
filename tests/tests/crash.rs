//! Crash recovery of a real broker process: SIGKILL in the middle of
//! acknowledged produces, restart, and check that every acknowledged record
//! is there, at the offset it was acknowledged at, in order, once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::wire::{batch_of, Wire};
use sluice_tests::{Broker, BrokerOptions};

/// Acknowledged (offset, value) pairs, shared by the producer threads.
type Acked = Arc<Mutex<Vec<(i64, Vec<u8>)>>>;

const PRODUCERS: usize = 4;
const ROUNDS: usize = 5;
/// Acknowledgements to wait for in a round before the kill.
const ACKS_BEFORE_KILL: usize = 1000;

/// Produces until the connection dies, recording each acknowledged value.
fn produce_until_killed(bootstrap: String, name: String, acked: Acked, stop: Arc<AtomicBool>) {
    let Ok(mut wire) = Wire::connect(&bootstrap) else {
        return;
    };
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let value = format!("{name}-{sequence}").into_bytes();
        let padding = vec![b'.'; (sequence % 700) as usize];
        let batch = batch_of(&[&value, &padding], 1_700_000_000_000);
        match wire.produce("crash", 0, -1, batch) {
            Ok((0, offset)) => acked.lock().expect("lock").push((offset, value)),
            Ok((error, _)) => panic!("produce failed with error {error}"),
            Err(_) => return,
        }
    }
}

#[test]
fn sigkill_during_acknowledged_produces_loses_nothing() {
    let options = BrokerOptions::default().config("log.segment.bytes", 64 * 1024);
    let mut broker = Broker::start(options);
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(wire.create_topic("crash", 1).expect("create"), 0);
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (bootstrap, acked, stop) = (broker.bootstrap(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    produce_until_killed(bootstrap, format!("r{round}p{p}"), acked, stop)
                })
            })
            .collect();
        let target = ACKS_BEFORE_KILL * (round + 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().expect("lock").len() < target {
            assert!(
                Instant::now() < deadline,
                "producers stalled:\n{}",
                broker.log_tail(40)
            );
            std::thread::yield_now();
        }
        broker.kill9();
        stop.store(true, Ordering::Relaxed);
        for producer in producers {
            producer.join().expect("producer thread");
        }
        broker.restart();
        check_log(&broker, &acked.lock().expect("lock"));
    }
    assert!(
        broker.log().contains("opening the log directory"),
        "restarts were logged"
    );
}

/// Every acknowledged value sits at its offset; offsets are dense from 0;
/// no value appears twice.
fn check_log(broker: &Broker, acked: &[(i64, Vec<u8>)]) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect after restart");
    let records = wire.read_all("crash", 0, 0).expect("read back");
    let by_offset: BTreeMap<i64, &Vec<u8>> = records.iter().map(|(o, v)| (*o, v)).collect();
    for (index, (offset, _)) in records.iter().enumerate() {
        assert_eq!(*offset, index as i64, "offsets are dense");
    }
    for (offset, value) in acked {
        assert_eq!(
            by_offset.get(offset).copied(),
            Some(value),
            "acknowledged record at {offset} lost or changed"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (_, value) in records.iter().filter(|(_, v)| !v.starts_with(b".")) {
        if !value.is_empty() {
            assert!(seen.insert(value.clone()), "a record appears twice");
        }
    }
}
