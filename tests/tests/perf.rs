//! Whole-system tests of `sluice perf` against a real broker process:
//!
//! - its progress lines reach a pipe while it runs (no terminal needed);
//! - a broker killed mid-run (SIGKILL) stops the run within its
//!   `--request-timeout-ms`, plus a margin for the monitor's tick and the
//!   process's exit: it exits non-zero, counts what it lost (acknowledged,
//!   failed, unknown, not sent; together every record asked for), gives
//!   its rate only up to the last acknowledgement, and ends with the
//!   latency line Kafka's perf tool ends with.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sluice_tests::{spawn_sluice, wait_with_timeout, Broker, BrokerOptions};

/// The run's `--request-timeout-ms`.
const REQUEST_TIMEOUT_MS: u64 = 2_000;

/// What the run may take beyond its request timeout to stop once the
/// broker is gone: the monitor looks every 100 ms, and a debug build on a
/// shared machine needs time to wind down and print.
const STOP_MARGIN: Duration = Duration::from_secs(3);

/// Bound on the first acknowledgements showing in a progress line.
const FIRST_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The records asked for: far more than the run gets through.
const RECORDS: u64 = 100_000_000;

/// The number before `records acknowledged` in a progress line.
fn acknowledged_in(line: &str) -> Option<u64> {
    let (head, _) = line.split_once(" records acknowledged")?;
    head.rsplit(' ').next()?.parse().ok()
}

/// `produce: A of N records acknowledged, F failed, U unknown (no answer),
/// S not sent` as (A, N, F, U, S).
fn counts(line: &str) -> Option<(u64, u64, u64, u64, u64)> {
    let rest = line.strip_prefix("produce: ")?;
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect();
    match numbers[..] {
        [a, n, f, u, s] if rest.contains(" records acknowledged, ") => Some((a, n, f, u, s)),
        _ => None,
    }
}

#[test]
fn perf_stops_within_its_request_timeout_when_the_broker_dies_and_counts_the_loss() {
    let mut broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let records = RECORDS.to_string();
    let request_timeout = REQUEST_TIMEOUT_MS.to_string();
    let mut child = spawn_sluice(&[
        "perf",
        "produce",
        "-t",
        "load",
        "-b",
        &bootstrap,
        "--partitions",
        "2",
        "--records",
        &records,
        "--record-size",
        "100",
        "--throughput",
        "5000",
        "--request-timeout-ms",
        &request_timeout,
        "--reporting-interval-ms",
        "200",
    ]);
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines, arriving) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let errors = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    // Progress lines come through the pipe; wait for acknowledgements.
    let deadline = Instant::now() + FIRST_PROGRESS_TIMEOUT;
    let mut before_kill = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = arriving.recv_timeout(left).unwrap_or_else(|_| {
            panic!("no acknowledged progress within {FIRST_PROGRESS_TIMEOUT:?}: {before_kill:?}")
        });
        let acknowledged = acknowledged_in(&line);
        before_kill.push(line);
        if acknowledged.is_some_and(|n| n > 0) {
            break;
        }
    }

    broker.kill9();
    let killed_at = Instant::now();
    let bound = Duration::from_millis(REQUEST_TIMEOUT_MS) + STOP_MARGIN;
    let status = wait_with_timeout(&mut child, bound);
    let stopped_after = killed_at.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("perf still ran {bound:?} after the broker was killed");
    };
    reader.join().expect("the stdout reader");
    let after: Vec<String> = arriving.try_iter().collect();
    let stderr = errors.join().expect("the stderr reader");
    let report = after.join("\n");
    assert_eq!(status.code(), Some(1), "{report}\n{stderr}");
    assert!(
        stopped_after >= Duration::from_millis(REQUEST_TIMEOUT_MS) - Duration::from_millis(200),
        "stopped {stopped_after:?} after the kill, before its request timeout could pass:\n{report}"
    );

    let stopped = after
        .iter()
        .find(|l| l.starts_with("produce: stopped after "))
        .unwrap_or_else(|| panic!("no stop line:\n{report}"));
    assert!(
        stopped.contains("no record acknowledged for 2000 ms (--request-timeout-ms)"),
        "{stopped}"
    );
    let (acknowledged, total, failed, unknown, not_sent) = after
        .iter()
        .find_map(|l| counts(l))
        .unwrap_or_else(|| panic!("no counts line:\n{report}"));
    assert_eq!(total, RECORDS);
    assert!(acknowledged > 0, "{report}");
    assert!(
        failed + unknown > 0,
        "records were in flight at the kill:\n{report}"
    );
    assert_eq!(
        acknowledged + failed + unknown + not_sent,
        total,
        "{report}"
    );
    assert!(
        after.iter().any(|l| l.starts_with(&format!(
            "produce: {acknowledged} records ({} bytes) until the last record acknowledged, ",
            acknowledged * 100
        ))),
        "the rate is over the time until the last acknowledgement:\n{report}"
    );
    let last = after.last().expect("a report");
    assert!(
        last.starts_with(&format!(
            "send_to_ack latency (ms, {acknowledged} samples): mean "
        )) && ["p50", "p95", "p99", "p99.9", "max"]
            .iter()
            .all(|q| last.contains(&format!(", {q} "))),
        "{last}"
    );
    assert!(
        stderr.starts_with("sluice: produce: stopped: no record acknowledged for 2000 ms")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}
