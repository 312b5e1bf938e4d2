//! The result of a `sluice perf` run, as text for a person or one JSON
//! object, and the latency histograms it is built from.
//!
//! A run that finished prints its rate over the whole run, then its
//! latency: mean, p50, p95, p99, p99.9 and max, as
//! `kafka-producer-perf-test.sh` ends. A run that was stopped (a bound
//! passed, the broker gone) says why, how many records were acknowledged,
//! failed, unknown (no answer: the broker may or may not hold them) and
//! never sent, and gives its rate only up to the last record that made
//! progress: the time the run spent waiting on a dead broker is not
//! averaged in.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Latencies are recorded in microseconds, from 1 µs to this, with three
/// significant digits; longer ones are clamped to it.
pub const LATENCY_US_MAX: u64 = 60_000_000;

pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// The latency in microseconds, clamped to the histogram's range.
pub fn latency_micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX)
}

/// The result of a run.
pub struct Report {
    pub mode: &'static str,
    pub topic: String,
    pub settings: serde_json::Value,
    /// The records asked for (`--records`).
    pub records_total: u64,
    /// Acknowledged (produce) or read (consume, e2e).
    pub records: u64,
    /// Acknowledged by the broker (produce, e2e; 0 in consume).
    pub acknowledged: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// From the start to the last record acknowledged (or read).
    pub active: Duration,
    /// What `latency` measures: `send_to_ack`, `send_to_commit`, `poll` or
    /// `send_to_consume`.
    pub latency_name: &'static str,
    pub latency: Histogram<u64>,
    /// For e2e, the producer's send-to-ack latency beside the main one.
    pub ack_latency: Option<Histogram<u64>>,
    /// Records sent that the broker refused or that could not be sent.
    pub failed: u64,
    /// Records sent without an answer: timed out, their connection lost,
    /// or still in flight when the run stopped.
    pub unknown: u64,
    pub first_error: Option<String>,
    /// Why the run stopped before its end, if it did.
    pub stopped: Option<String>,
}

impl Report {
    /// Records with an error or no outcome.
    pub fn errors(&self) -> u64 {
        self.failed + self.unknown
    }

    /// What the rates are over: the whole run, or for a stopped run only
    /// the time until the last progress.
    pub fn rate_elapsed(&self) -> Duration {
        if self.stopped.is_some() {
            self.active
        } else {
            self.elapsed
        }
    }

    pub fn records_per_s(&self) -> f64 {
        rate(self.records as f64, self.rate_elapsed())
    }

    pub fn mb_per_s(&self) -> f64 {
        rate(self.bytes as f64 / 1e6, self.rate_elapsed())
    }

    /// The records never sent (produce, e2e) or never read (consume).
    pub fn not_done(&self) -> u64 {
        let done = match self.mode {
            "consume" => self.records,
            _ => self.acknowledged + self.failed + self.unknown,
        };
        self.records_total.saturating_sub(done)
    }

    /// The one line the command fails with, if it fails.
    pub fn failure(&self) -> Option<String> {
        if let Some(reason) = &self.stopped {
            return Some(format!("{}: stopped: {reason}", self.mode));
        }
        (self.errors() > 0).then(|| {
            format!(
                "{} records failed; the first: {}",
                self.errors(),
                self.first_error.as_deref().unwrap_or("unknown")
            )
        })
    }

    pub fn json(&self) -> serde_json::Value {
        let mut object = json!({
            "mode": self.mode,
            "topic": self.topic,
            "settings": self.settings,
            "records_total": self.records_total,
            "records": self.records,
            "acknowledged": self.acknowledged,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed.as_secs_f64(), 6),
            "active_s": round(self.active.as_secs_f64(), 6),
            "records_per_s": round(self.records_per_s(), 1),
            "mb_per_s": round(self.mb_per_s(), 3),
            "latency": latency_json(self.latency_name, &self.latency),
            "failed": self.failed,
            "unknown": self.unknown,
            "errors": self.errors(),
            "first_error": self.first_error,
            "stopped": self.stopped,
        });
        let not_done = match self.mode {
            "consume" => "not_read",
            _ => "not_sent",
        };
        object[not_done] = json!(self.not_done());
        if let Some(ack) = &self.ack_latency {
            object["ack_latency"] = latency_json("send_to_ack", ack);
        }
        object
    }

    pub fn text(&self) -> String {
        let mut text = String::new();
        if let Some(reason) = &self.stopped {
            text += &format!(
                "{}: stopped after {:.3} s: {reason}\n",
                self.mode,
                self.elapsed.as_secs_f64()
            );
        }
        if self.stopped.is_some() || self.errors() > 0 {
            text += &self.counts_line();
        }
        let span = if self.stopped.is_some() {
            format!(
                "until the last record {}, {:.3} s in",
                self.done_verb(),
                self.active.as_secs_f64()
            )
        } else {
            format!("in {:.3} s", self.elapsed.as_secs_f64())
        };
        text += &format!(
            "{}: {} records ({} bytes) {span}: {:.1} records/s, {:.2} MB/s\n",
            self.mode,
            self.records,
            self.bytes,
            self.records_per_s(),
            self.mb_per_s(),
        );
        text += &latency_text(self.latency_name, &self.latency);
        if let Some(ack) = &self.ack_latency {
            text += &latency_text("send_to_ack", ack);
        }
        text
    }

    fn done_verb(&self) -> &'static str {
        match self.mode {
            "produce" => "acknowledged",
            _ => "read",
        }
    }

    /// `48000 of 100000 records acknowledged, 12 failed, 7 unknown (no
    /// answer), 51981 not sent` (and in e2e, how many were read back).
    fn counts_line(&self) -> String {
        let (mode, total) = (self.mode, self.records_total);
        let line = match mode {
            "consume" => format!("{mode}: {} of {total} records read", self.records),
            _ => {
                let mut line = format!(
                    "{mode}: {} of {total} records acknowledged, {} failed, \
                     {} unknown (no answer), {} not sent",
                    self.acknowledged,
                    self.failed,
                    self.unknown,
                    self.not_done()
                );
                if mode == "e2e" {
                    line += &format!(", {} read back", self.records);
                }
                line
            }
        };
        line + "\n"
    }
}

fn rate(amount: f64, elapsed: Duration) -> f64 {
    if amount == 0.0 {
        return 0.0;
    }
    amount / elapsed.as_secs_f64().max(1e-9)
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn latency_json(name: &str, histogram: &Histogram<u64>) -> serde_json::Value {
    json!({
        "what": name,
        "unit": "ms",
        "count": histogram.len(),
        "mean": round(histogram.mean() / 1000.0, 3),
        "p50": millis(histogram, 0.5),
        "p95": millis(histogram, 0.95),
        "p99": millis(histogram, 0.99),
        "p99_9": millis(histogram, 0.999),
        "max": histogram.max() as f64 / 1000.0,
    })
}

fn latency_text(name: &str, histogram: &Histogram<u64>) -> String {
    format!(
        "{name} latency (ms, {} samples): mean {:.3}, p50 {:.3}, p95 {:.3}, p99 {:.3}, \
         p99.9 {:.3}, max {:.3}\n",
        histogram.len(),
        histogram.mean() / 1000.0,
        millis(histogram, 0.5),
        millis(histogram, 0.95),
        millis(histogram, 0.99),
        millis(histogram, 0.999),
        histogram.max() as f64 / 1000.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
        histogram.saturating_record(latency_micros(latency));
    }

    fn report(latency: Histogram<u64>) -> Report {
        Report {
            mode: "produce",
            topic: "t".into(),
            settings: json!({}),
            records_total: 2_000,
            records: 2_000,
            acknowledged: 2_000,
            bytes: 2_000_000,
            elapsed: Duration::from_secs(2),
            active: Duration::from_secs(2),
            latency_name: "send_to_ack",
            latency,
            ack_latency: None,
            failed: 0,
            unknown: 0,
            first_error: None,
            stopped: None,
        }
    }

    #[test]
    fn reports_give_rates_and_quantiles_in_milliseconds() {
        let mut latency = latency_histogram();
        for micros in 1..=1_000u64 {
            record_latency(&mut latency, Duration::from_micros(micros));
        }
        record_latency(&mut latency, Duration::from_secs(3_600)); // clamped
        let report = report(latency);
        let object = report.json();
        assert_eq!(object["records_per_s"], 1_000.0);
        assert_eq!(object["mb_per_s"], 1.0);
        assert_eq!(object["latency"]["count"], 1_001);
        assert_eq!(object["latency"]["p50"], 0.501);
        assert_eq!(object["latency"]["p95"], 0.951);
        assert_eq!(object["stopped"], serde_json::Value::Null);
        // Clamped to 60 s, give or take the histogram's 3 significant digits.
        let max_ms = object["latency"]["max"].as_f64().unwrap();
        assert!((60_000.0..60_100.0).contains(&max_ms), "{max_ms}");
        let text = report.text();
        assert!(
            text.starts_with(
                "produce: 2000 records (2000000 bytes) in 2.000 s: 1000.0 records/s, 1.00 MB/s\n"
            ),
            "{text}"
        );
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with("send_to_ack latency (ms, 1001 samples): mean 60.4")
                && last.contains(", p50 0.501, p95 0.951, p99 0.991, p99.9 1.000, max 60"),
            "{last}"
        );
        assert_eq!(report.failure(), None);
    }

    #[test]
    fn a_stopped_run_counts_outcomes_and_rates_only_its_active_time() {
        let mut latency = latency_histogram();
        record_latency(&mut latency, Duration::from_millis(2));
        let report = Report {
            records_total: 10_000,
            records: 3_000,
            acknowledged: 3_000,
            bytes: 3_000_000,
            elapsed: Duration::from_secs(9),
            active: Duration::from_millis(1_500),
            failed: 40,
            unknown: 60,
            first_error: Some("connection lost".into()),
            stopped: Some("no record acknowledged for 2000 ms".into()),
            ..report(latency)
        };
        let text = report.text();
        assert_eq!(
            text.lines().take(3).collect::<Vec<_>>(),
            [
                "produce: stopped after 9.000 s: no record acknowledged for 2000 ms",
                "produce: 3000 of 10000 records acknowledged, 40 failed, 60 unknown (no answer), \
                 6900 not sent",
                "produce: 3000 records (3000000 bytes) until the last record acknowledged, 1.500 s in: \
                 2000.0 records/s, 2.00 MB/s",
            ]
        );
        let object = report.json();
        assert_eq!(
            object["records_per_s"], 2_000.0,
            "over the active 1.5 s, not 9 s"
        );
        assert_eq!(
            (&object["failed"], &object["unknown"], &object["not_sent"]),
            (&json!(40), &json!(60), &json!(6_900))
        );
        assert_eq!(
            report.failure().unwrap(),
            "produce: stopped: no record acknowledged for 2000 ms"
        );
    }
}
