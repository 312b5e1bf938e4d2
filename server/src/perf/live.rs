//! What the tasks of one `sluice perf` run share while it goes: counters
//! they bump as records are sent, acknowledged and read, the stop signal
//! every task watches, and the monitor that reads the counters.
//!
//! The monitor is one task per run. It stops the run on Ctrl-C or SIGTERM
//! (so an interrupted run still reports), and every `MONITOR_TICK_MS` it
//! checks the run's two bounds and stops the run when one is passed:
//! - `--timeout-ms` for the whole run;
//! - `--request-timeout-ms` without any record acknowledged while records
//!   wait for an answer: a broker that went away, or stopped answering,
//!   ends the run within that bound instead of leaving it waiting for the
//!   client's own delivery timeouts. Failures are no progress: a producer
//!   whose batches fail now and then while it tries to reconnect is as
//!   stuck as one that hears nothing.
//!
//! Every `--reporting-interval-ms` it prints one progress line about that
//! interval, as Kafka's perf tools do, to stdout (stderr with `--json`,
//! whose stdout is the one JSON document). Lines, not a redrawn bar, so
//! they reach a pipe or a file as well as a terminal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How often the monitor looks at the counters and the bounds.
pub const MONITOR_TICK_MS: u64 = 100;

/// Counters of one run and its stop signal.
pub struct Live {
    pub started: Instant,
    /// Records handed to a producer, counted before `send`.
    pub sent: AtomicU64,
    /// Records the broker acknowledged.
    pub acknowledged: AtomicU64,
    /// Records sent whose outcome was not an acknowledgement (failed, or
    /// unknown: an answer that never came).
    pub unacknowledged: AtomicU64,
    /// Records a consumer read, and their value bytes.
    pub read: AtomicU64,
    pub read_bytes: AtomicU64,
    /// The run's main latency, summed since the last progress line.
    latency_us_sum: AtomicU64,
    latency_samples: AtomicU64,
    latency_us_max: AtomicU64,
    /// Why the run stopped early; `None` while it goes on.
    stop: watch::Sender<Option<String>>,
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live {
            started: Instant::now(),
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            unacknowledged: AtomicU64::new(0),
            read: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            latency_us_sum: AtomicU64::new(0),
            latency_samples: AtomicU64::new(0),
            latency_us_max: AtomicU64::new(0),
            stop: watch::channel(None).0,
        })
    }

    /// One sample of the run's main latency, for the progress lines.
    pub fn record_latency(&self, micros: u64) {
        self.latency_us_sum.fetch_add(micros, Ordering::Relaxed);
        self.latency_samples.fetch_add(1, Ordering::Relaxed);
        self.latency_us_max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Stops the run for `reason`; the first reason given is kept.
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.stop.send_if_modified(|stopped| {
            if stopped.is_some() {
                return false;
            }
            *stopped = Some(reason);
            true
        });
    }

    /// Why the run was stopped, if it was.
    pub fn stop_reason(&self) -> Option<String> {
        self.stop.borrow().clone()
    }

    /// Resolves once the run is stopped.
    pub async fn stopped(self: Arc<Self>) {
        let mut receiver = self.stop.subscribe();
        let _ = receiver.wait_for(Option::is_some).await;
    }
}

/// What the progress lines say the run does with its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Acknowledged records of `record_bytes` each.
    Produce { record_bytes: u64 },
    /// Records read, counted with their value bytes.
    Consume,
    /// Records read back after being produced.
    EndToEnd,
}

/// The monitor's settings.
#[derive(Debug, Clone)]
pub struct MonitorPlan {
    pub mode: &'static str,
    pub activity: Activity,
    pub request_timeout: Duration,
    pub reporting_interval: Duration,
    /// When the whole run must be over (`--timeout-ms` after it began,
    /// setting up the topic and the consumer included).
    pub deadline: Instant,
    pub run_timeout: Duration,
    /// Progress lines to stdout (else stderr).
    pub to_stdout: bool,
}

/// One progress line's worth of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Since the run's start, at the end of the window.
    pub elapsed: Duration,
    pub span: Duration,
    pub records: u64,
    pub bytes: u64,
    pub latency_avg_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Records not acknowledged so far, over the whole run.
    pub unacknowledged_total: u64,
}

/// A progress line: what the window did, at what rate, with which latency.
pub fn progress_line(mode: &str, activity: Activity, window: &Window) -> String {
    let verb = match activity {
        Activity::Produce { .. } => "acknowledged",
        Activity::Consume => "read",
        Activity::EndToEnd => "delivered",
    };
    let seconds = window.span.as_secs_f64().max(1e-9);
    let mut line = format!(
        "{mode} {:.1} s: {} records {verb}, {:.1} records/s ({:.2} MB/s)",
        window.elapsed.as_secs_f64(),
        window.records,
        window.records as f64 / seconds,
        window.bytes as f64 / 1e6 / seconds,
    );
    if let (Some(avg), Some(max)) = (window.latency_avg_ms, window.latency_max_ms) {
        line += &format!(", {avg:.1} ms avg latency, {max:.1} ms max latency");
    }
    if window.unacknowledged_total > 0 {
        line += &format!(", {} not acknowledged so far", window.unacknowledged_total);
    }
    line
}

/// The counters at one moment, to take differences of.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    records: u64,
    bytes: u64,
}

impl Snapshot {
    fn take(live: &Live, activity: Activity, at: Instant) -> Snapshot {
        let (records, bytes) = match activity {
            Activity::Produce { record_bytes } => {
                let acknowledged = live.acknowledged.load(Ordering::Relaxed);
                (acknowledged, acknowledged * record_bytes)
            }
            Activity::Consume | Activity::EndToEnd => (
                live.read.load(Ordering::Relaxed),
                live.read_bytes.load(Ordering::Relaxed),
            ),
        };
        Snapshot { at, records, bytes }
    }
}

/// Watches the run until it is stopped (or the caller aborts the task at
/// the run's end): stops it at a bound or on a signal, prints progress
/// lines.
pub async fn monitor(live: Arc<Live>, plan: MonitorPlan) {
    let mut tick = tokio::time::interval(Duration::from_millis(MONITOR_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = Snapshot::take(&live, plan.activity, live.started);
    let mut stall = Stall::new(live.started);
    let interrupted = crate::cli::consume::interrupted();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut interrupted => {
                live.stop("interrupted (Ctrl-C or SIGTERM)");
                return;
            }
        }
        if live.stop_reason().is_some() {
            return;
        }
        let now = Instant::now();
        if now >= plan.deadline {
            live.stop(format!(
                "the run did not finish within {} ms (--timeout-ms)",
                plan.run_timeout.as_millis()
            ));
            return;
        }
        if let Some(reason) = stall.check(&live, now, plan.request_timeout) {
            live.stop(reason);
            return;
        }
        if now - last.at >= plan.reporting_interval {
            let current = Snapshot::take(&live, plan.activity, now);
            let line = progress_line(plan.mode, plan.activity, &window(&live, last, current));
            if plan.to_stdout {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
            last = current;
        }
    }
}

/// The window between two snapshots, taking the latency sums since the
/// last line (and resetting them for the next).
fn window(live: &Live, from: Snapshot, to: Snapshot) -> Window {
    let samples = live.latency_samples.swap(0, Ordering::Relaxed);
    let sum_us = live.latency_us_sum.swap(0, Ordering::Relaxed);
    let max_us = live.latency_us_max.swap(0, Ordering::Relaxed);
    let (latency_avg_ms, latency_max_ms) = if samples > 0 {
        (
            Some(sum_us as f64 / samples as f64 / 1000.0),
            Some(max_us as f64 / 1000.0),
        )
    } else {
        (None, None)
    };
    Window {
        elapsed: to.at - live.started,
        span: to.at - from.at,
        records: to.records - from.records,
        bytes: to.bytes - from.bytes,
        latency_avg_ms,
        latency_max_ms,
        unacknowledged_total: live.unacknowledged.load(Ordering::Relaxed),
    }
}

/// Tells a broker that stopped answering: records wait for an outcome and
/// none has been acknowledged for the request timeout.
struct Stall {
    since: Instant,
    acknowledged: u64,
}

impl Stall {
    fn new(now: Instant) -> Stall {
        Stall {
            since: now,
            acknowledged: 0,
        }
    }

    /// Why the run must stop, if it must.
    fn check(&mut self, live: &Live, now: Instant, request_timeout: Duration) -> Option<String> {
        let acknowledged = live.acknowledged.load(Ordering::Relaxed);
        let settled = acknowledged + live.unacknowledged.load(Ordering::Relaxed);
        let sent = live.sent.load(Ordering::Relaxed);
        // Nothing waiting (paced, or not producing at all), or progress:
        // the clock starts again.
        if sent <= settled || acknowledged != self.acknowledged {
            self.since = now;
            self.acknowledged = acknowledged;
            return None;
        }
        (now - self.since >= request_timeout).then(|| {
            format!(
                "no record acknowledged for {} ms (--request-timeout-ms) \
                 while {} waited for an answer",
                request_timeout.as_millis(),
                sent - settled
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_what_the_interval_did() {
        let window = Window {
            elapsed: Duration::from_millis(10_000),
            span: Duration::from_secs(5),
            records: 50_000,
            bytes: 51_200_000,
            latency_avg_ms: Some(3.25),
            latency_max_ms: Some(12.0),
            unacknowledged_total: 0,
        };
        let produce = Activity::Produce { record_bytes: 1024 };
        assert_eq!(
            progress_line("produce", produce, &window),
            "produce 10.0 s: 50000 records acknowledged, 10000.0 records/s (10.24 MB/s), \
             3.2 ms avg latency, 12.0 ms max latency"
        );
        let quiet = Window {
            latency_avg_ms: None,
            latency_max_ms: None,
            unacknowledged_total: 7,
            ..window
        };
        assert_eq!(
            progress_line("consume", Activity::Consume, &quiet),
            "consume 10.0 s: 50000 records read, 10000.0 records/s (10.24 MB/s), \
             7 not acknowledged so far"
        );
    }

    #[tokio::test]
    async fn a_stall_is_records_waiting_without_an_acknowledgement() {
        let live = Live::new();
        let timeout = Duration::from_secs(2);
        let start = live.started;
        let mut stall = Stall::new(start);
        // Nothing sent: never a stall, however long.
        assert_eq!(
            stall.check(&live, start + Duration::from_secs(60), timeout),
            None
        );
        live.sent.store(10, Ordering::Relaxed);
        let at = start + Duration::from_secs(60);
        assert_eq!(stall.check(&live, at, timeout), None);
        // An acknowledgement restarts the clock; a failure does not.
        live.acknowledged.store(4, Ordering::Relaxed);
        assert_eq!(
            stall.check(&live, at + Duration::from_millis(1_900), timeout),
            None
        );
        live.unacknowledged.store(1, Ordering::Relaxed);
        assert_eq!(
            stall.check(&live, at + Duration::from_millis(3_800), timeout),
            None
        );
        let reason = stall
            .check(&live, at + Duration::from_millis(3_900), timeout)
            .expect("a stall after 2 s without an acknowledgement");
        assert!(
            reason.contains("2000 ms") && reason.contains("while 5 waited"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn the_first_stop_reason_is_kept_and_wakes_the_waiters() {
        let live = Live::new();
        let waiter = tokio::spawn(live.clone().stopped());
        live.stop("first");
        live.stop("second");
        waiter.await.unwrap();
        assert_eq!(live.stop_reason().as_deref(), Some("first"));
        // A waiter that comes later returns at once.
        live.clone().stopped().await;
    }
}
