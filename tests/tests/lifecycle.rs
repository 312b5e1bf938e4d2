//! Broker lifecycle through the harness: a clean stop on SIGTERM, a restart
//! on the same port and data directory, and a crash (SIGKILL) followed by a
//! restart, with kcat checking that every acknowledged record is still there
//! and in order each time.

use std::path::Path;
use std::time::Duration;

use sluice_tests::{kcat, run_tool, write_file, Broker, BrokerOptions};

const KCAT_TIMEOUT: Duration = Duration::from_secs(60);

fn lines(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("k{}:record {i:05}\n", i % 13))
        .collect()
}

fn produce(broker: &Broker, topic: &str, file: &Path) {
    let bootstrap = broker.bootstrap();
    let file = file.to_str().expect("UTF-8 temp path");
    run_tool(
        kcat(),
        [
            "-P",
            "-b",
            &bootstrap,
            "-t",
            topic,
            "-K:",
            "-X",
            "message.timeout.ms=30000",
            "-l",
            file,
        ],
        KCAT_TIMEOUT,
    );
}

/// Every record of the (one-partition) topic as `offset key:value` lines.
fn consume(broker: &Broker, topic: &str) -> String {
    let bootstrap = broker.bootstrap();
    run_tool(
        kcat(),
        [
            "-C",
            "-b",
            &bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k:%s\n",
        ],
        KCAT_TIMEOUT,
    )
}

#[test]
fn data_survives_clean_restart_and_crash() {
    let mut broker = Broker::start(BrokerOptions::default());
    let port = broker.port();
    let work = tempfile::tempdir().unwrap();
    let first = lines(0..1000);
    produce(
        &broker,
        "lifecycle",
        &write_file(work.path(), "first.txt", first.as_bytes()),
    );
    assert!(
        consume(&broker, "lifecycle") == first,
        "read-back before any restart differs"
    );

    let status = broker.stop();
    assert!(
        status.success(),
        "sluice should exit 0 on SIGTERM, got {status}"
    );
    broker.restart();
    assert_eq!(broker.port(), port);
    assert!(
        consume(&broker, "lifecycle") == first,
        "records acknowledged before a clean stop differ after the restart"
    );

    let second = lines(1000..2000);
    produce(
        &broker,
        "lifecycle",
        &write_file(work.path(), "second.txt", second.as_bytes()),
    );
    broker.kill9();
    broker.restart();
    let all = format!("{first}{second}");
    let after_crash = consume(&broker, "lifecycle");
    assert!(
        after_crash == all,
        "records acknowledged before SIGKILL differ after the restart: read {} lines, expected {}",
        after_crash.lines().count(),
        all.lines().count()
    );

    // The restarted broker keeps appending after what it recovered.
    let third = lines(2000..2500);
    produce(
        &broker,
        "lifecycle",
        &write_file(work.path(), "third.txt", third.as_bytes()),
    );
    assert!(
        consume(&broker, "lifecycle") == format!("{all}{third}"),
        "appends after crash recovery are not where they belong"
    );
    let status = broker.stop();
    assert!(
        status.success(),
        "sluice should exit 0 on SIGTERM, got {status}"
    );
}
