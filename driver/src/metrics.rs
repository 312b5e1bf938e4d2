//! Metrics for Prometheus: what the driver measures itself (request
//! latency per API and version, syncs, connections), the node's counters
//! and gauges (`sluice_core::metrics::Snapshot`), rendered as Prometheus's
//! text format (version 0.0.4), and a small HTTP/1.1 listener serving
//! `/metrics`, `/health` and `/ready` (`metrics.listener`).
//!
//! The node task owns every number: the listener asks it for a scrape
//! through the node's event channel, so nothing is shared or locked.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use sluice_core::metrics::{api_name, error_name, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::serve::Event;

/// Upper bounds of latency buckets, in seconds: 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the files-per-sync buckets.
const FILES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
/// Requests of one connection whose answer is awaited for timing; acks=0
/// produces are never answered, so the oldest go past this bound.
pub(crate) const IN_FLIGHT_TRACKED_MAX: usize = 1_024;
/// Metrics connections answered at once; further ones wait to be accepted.
const HTTP_CONNECTIONS_MAX: usize = 16;
/// Bytes of an HTTP request head read at most.
const HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a metrics client has to send its request, and the node task
/// to answer a scrape.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// A request waiting for its answer, for timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight {
    correlation_id: i32,
    api_key: i16,
    version: i16,
    received: Instant,
}

/// The numbers the driver measures.
#[derive(Debug)]
pub(crate) struct DriverMetrics {
    /// Requests received, by (API key, version).
    requests: BTreeMap<(i16, i16), u64>,
    /// Time from a request's arrival to its answer leaving the node task.
    latency: BTreeMap<(i16, i16), Histogram>,
    pub(crate) connections_accepted: u64,
    /// Bytes of requests being read or waiting to be handled, as of the
    /// scrape (`RequestMemory`).
    pub(crate) request_memory_bytes: usize,
    sync_seconds: Histogram,
    sync_files: Histogram,
    sync_failures: u64,
    started: Instant,
}

impl Default for DriverMetrics {
    fn default() -> DriverMetrics {
        DriverMetrics {
            requests: BTreeMap::new(),
            latency: BTreeMap::new(),
            connections_accepted: 0,
            request_memory_bytes: 0,
            sync_seconds: Histogram::new(SECONDS_BUCKETS),
            sync_files: Histogram::new(FILES_BUCKETS),
            sync_failures: 0,
            started: Instant::now(),
        }
    }
}

/// A request frame's API key, version and correlation id (the frame
/// without its length prefix); None if it is too short to hold them.
fn request_header(frame: &[u8]) -> Option<(i16, i16, i32)> {
    let head: &[u8; 8] = frame.get(..8)?.try_into().ok()?;
    Some((
        i16::from_be_bytes([head[0], head[1]]),
        i16::from_be_bytes([head[2], head[3]]),
        i32::from_be_bytes([head[4], head[5], head[6], head[7]]),
    ))
}

impl DriverMetrics {
    /// A request frame arrived on a connection whose awaited requests are
    /// `in_flight`.
    pub(crate) fn request(&mut self, in_flight: &mut VecDeque<InFlight>, frame: &[u8]) {
        let Some((api_key, version, correlation_id)) = request_header(frame) else {
            return;
        };
        *self.requests.entry((api_key, version)).or_default() += 1;
        if in_flight.len() >= IN_FLIGHT_TRACKED_MAX {
            in_flight.pop_front();
        }
        in_flight.push_back(InFlight {
            correlation_id,
            api_key,
            version,
            received: Instant::now(),
        });
    }

    /// A response frame (with its length prefix) left for the connection.
    /// Answers go out in request order, so requests ahead of it in
    /// `in_flight` had none (acks=0) and are dropped.
    pub(crate) fn response(&mut self, in_flight: &mut VecDeque<InFlight>, frame: &[u8]) {
        let Some(head) = frame.get(4..8) else {
            return;
        };
        let correlation_id = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if !in_flight.iter().any(|r| r.correlation_id == correlation_id) {
            return;
        }
        while let Some(request) = in_flight.pop_front() {
            if request.correlation_id == correlation_id {
                self.latency
                    .entry((request.api_key, request.version))
                    .or_insert_with(|| Histogram::new(SECONDS_BUCKETS))
                    .observe(request.received.elapsed().as_secs_f64());
                return;
            }
        }
    }

    /// A sync of `files` files or directories completed after `took`.
    pub(crate) fn synced(&mut self, files: usize, took: Duration, ok: bool) {
        self.sync_seconds.observe(took.as_secs_f64());
        self.sync_files.observe(files as f64);
        if !ok {
            self.sync_failures += 1;
        }
    }
}

/// A scrape as the node task answers it.
pub(crate) struct Scraped {
    pub(crate) ready: bool,
    pub(crate) text: String,
}

/// Prometheus text: each family's HELP and TYPE once, then its samples.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{} {value}", braces(labels));
    }

    /// A family with one sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// `{a="x",b="y"}`, escaped as the format asks; empty for no labels.
fn braces(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    format!("{{{}}}", label_list(labels))
}

fn label_list(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(name, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders everything as Prometheus text.
pub(crate) fn render(
    snapshot: &Snapshot,
    driver: &DriverMetrics,
    connections_open: usize,
    ready: bool,
) -> String {
    let mut t = Text { out: String::new() };
    let node = snapshot.node_id.to_string();
    t.family(
        "sluice_build_info",
        "gauge",
        "Always 1; labels name the version and the node.",
    );
    t.sample(
        "sluice_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("node_id", node.as_str()),
        ],
        1,
    );
    t.single(
        "sluice_uptime_seconds",
        "gauge",
        "Seconds since the broker started serving.",
        driver.started.elapsed().as_secs_f64(),
    );
    t.single(
        "sluice_ready",
        "gauge",
        "1 when the broker serves (started, and registered in a cluster).",
        u8::from(ready),
    );
    t.single(
        "sluice_log_dir_offline",
        "gauge",
        "1 when a sync failed and the log directory is offline until a restart.",
        u8::from(snapshot.storage_offline),
    );
    render_requests(&mut t, snapshot, driver);
    render_connections_and_syncs(&mut t, driver, connections_open);
    render_topics(&mut t, snapshot);
    render_partitions(&mut t, snapshot);
    render_groups(&mut t, snapshot);
    render_cluster(&mut t, snapshot);
    t.out
}

fn render_requests(t: &mut Text, snapshot: &Snapshot, driver: &DriverMetrics) {
    t.family(
        "sluice_requests_total",
        "counter",
        "Requests received, by API and version.",
    );
    for ((key, version), count) in &driver.requests {
        let (api, version) = (api_name(*key), version.to_string());
        t.sample(
            "sluice_requests_total",
            &[("api", &api), ("version", &version)],
            count,
        );
    }
    let name = "sluice_request_duration_seconds";
    t.family(
        name,
        "histogram",
        "Time from a request's arrival to its answer, by API and version.",
    );
    for ((key, version), histogram) in &driver.latency {
        let (api, version) = (api_name(*key), version.to_string());
        histogram.render(
            &mut t.out,
            name,
            &label_list(&[("api", &api), ("version", &version)]),
        );
    }
    t.family(
        "sluice_errors_total",
        "counter",
        "Error codes answered (one per partition, group or member that carries one), by API and error.",
    );
    for ((key, code), count) in &snapshot.counters.errors {
        let (api, error, code) = (api_name(*key), error_name(*code), code.to_string());
        t.sample(
            "sluice_errors_total",
            &[("api", &api), ("error", &error), ("code", &code)],
            count,
        );
    }
}

fn render_connections_and_syncs(t: &mut Text, driver: &DriverMetrics, connections_open: usize) {
    t.single(
        "sluice_connections",
        "gauge",
        "Client and peer connections open.",
        connections_open,
    );
    t.single(
        "sluice_connections_accepted_total",
        "counter",
        "Connections accepted.",
        driver.connections_accepted,
    );
    t.single(
        "sluice_request_memory_bytes",
        "gauge",
        "Bytes held for client requests being read or waiting to be handled (bounded by queued.max.request.bytes).",
        driver.request_memory_bytes,
    );
    t.family(
        "sluice_log_flush_duration_seconds",
        "histogram",
        "Time one sync (fsync of every file and directory it covers) took.",
    );
    driver
        .sync_seconds
        .render(&mut t.out, "sluice_log_flush_duration_seconds", "");
    t.family(
        "sluice_log_flush_files",
        "histogram",
        "Files and directories made durable by one sync.",
    );
    driver
        .sync_files
        .render(&mut t.out, "sluice_log_flush_files", "");
    t.single(
        "sluice_log_flush_failures_total",
        "counter",
        "Syncs that failed.",
        driver.sync_failures,
    );
}

fn render_topics(t: &mut Text, snapshot: &Snapshot) {
    type Pick = fn(&sluice_core::metrics::TopicTraffic) -> u64;
    let families: [(&str, &str, Pick); 4] = [
        (
            "sluice_topic_records_in_total",
            "Records producers appended, by topic.",
            |c| c.records_in,
        ),
        (
            "sluice_topic_bytes_in_total",
            "Record batch bytes producers appended, by topic.",
            |c| c.bytes_in,
        ),
        (
            "sluice_topic_records_out_total",
            "Records handed to consumers, by topic.",
            |c| c.records_out,
        ),
        (
            "sluice_topic_bytes_out_total",
            "Record batch bytes handed to consumers, by topic.",
            |c| c.bytes_out,
        ),
    ];
    for (name, help, pick) in families {
        t.family(name, "counter", help);
        for (topic, traffic) in &snapshot.counters.topics {
            t.sample(name, &[("topic", topic)], pick(traffic));
        }
    }
}

fn render_partitions(t: &mut Text, snapshot: &Snapshot) {
    type Pick = fn(&sluice_core::metrics::PartitionGauges) -> i64;
    let families: [(&str, &str, Pick); 7] = [
        (
            "sluice_log_start_offset",
            "First offset of the partition's log.",
            |p| p.log_start_offset,
        ),
        (
            "sluice_log_end_offset",
            "Offset the next record appended will get.",
            |p| p.log_end_offset,
        ),
        (
            "sluice_log_high_watermark",
            "Offset below which records are acknowledged and readable.",
            |p| p.high_watermark,
        ),
        (
            "sluice_log_size_bytes",
            "Bytes of the partition's segments.",
            |p| p.size_bytes as i64,
        ),
        (
            "sluice_log_segments",
            "Segments of the partition's log.",
            |p| p.segments as i64,
        ),
        (
            "sluice_partition_leader",
            "1 where this broker leads the partition (or holds it alone).",
            |p| i64::from(p.leader),
        ),
        (
            "sluice_partition_isr_size",
            "In-sync replicas of a partition this broker leads.",
            |p| p.isr as i64,
        ),
    ];
    for (name, help, pick) in families {
        t.family(name, "gauge", help);
        for p in &snapshot.partitions {
            let index = p.partition.to_string();
            t.sample(name, &[("topic", &p.topic), ("partition", &index)], pick(p));
        }
    }
    let count = |f: fn(&sluice_core::metrics::PartitionGauges) -> bool| {
        snapshot.partitions.iter().filter(|p| f(p)).count()
    };
    t.single(
        "sluice_partitions",
        "gauge",
        "Partitions this broker holds a replica of.",
        snapshot.partitions.len(),
    );
    t.single(
        "sluice_leader_partitions",
        "gauge",
        "Partitions this broker leads.",
        count(|p| p.leader),
    );
    t.single(
        "sluice_under_replicated_partitions",
        "gauge",
        "Partitions led here with fewer in-sync replicas than replicas.",
        count(|p| p.under_replicated),
    );
    t.single(
        "sluice_under_min_isr_partitions",
        "gauge",
        "Partitions led here with fewer in-sync replicas than min.insync.replicas.",
        count(|p| p.under_min_isr),
    );
}

fn render_groups(t: &mut Text, snapshot: &Snapshot) {
    const STATES: [&str; 4] = [
        "Empty",
        "PreparingRebalance",
        "CompletingRebalance",
        "Stable",
    ];
    t.family(
        "sluice_consumer_group_state",
        "gauge",
        "1 for the state each group coordinated here is in, 0 for the others.",
    );
    for g in &snapshot.groups {
        for state in STATES {
            t.sample(
                "sluice_consumer_group_state",
                &[("group", &g.group), ("state", state)],
                u8::from(g.state == state),
            );
        }
    }
    t.family(
        "sluice_consumer_groups",
        "gauge",
        "Groups coordinated here, by state.",
    );
    for state in STATES {
        let count = snapshot.groups.iter().filter(|g| g.state == state).count();
        t.sample("sluice_consumer_groups", &[("state", state)], count);
    }
    t.family(
        "sluice_consumer_group_members",
        "gauge",
        "Members of each group coordinated here.",
    );
    for g in &snapshot.groups {
        t.sample(
            "sluice_consumer_group_members",
            &[("group", &g.group)],
            g.members,
        );
    }
    t.family(
        "sluice_consumer_group_generation",
        "gauge",
        "Generation of each group coordinated here.",
    );
    for g in &snapshot.groups {
        t.sample(
            "sluice_consumer_group_generation",
            &[("group", &g.group)],
            g.generation,
        );
    }
    for (name, help, offset) in [
        (
            "sluice_consumer_group_committed_offset",
            "A group's committed offset of a partition this broker leads.",
            true,
        ),
        (
            "sluice_consumer_group_lag",
            "High watermark minus the committed offset, for partitions this broker leads.",
            false,
        ),
    ] {
        t.family(name, "gauge", help);
        for lag in &snapshot.lags {
            let index = lag.partition.to_string();
            let labels = [
                ("group", lag.group.as_str()),
                ("topic", lag.topic.as_str()),
                ("partition", index.as_str()),
            ];
            let value = if offset {
                lag.committed_offset
            } else {
                lag.lag
            };
            t.sample(name, &labels, value);
        }
    }
}

fn render_cluster(t: &mut Text, snapshot: &Snapshot) {
    let c = &snapshot.controller;
    let counters = &snapshot.counters;
    t.single(
        "sluice_isr_shrinks_total",
        "counter",
        "Committed ISR shrinks of partitions this broker leads.",
        counters.isr_shrinks,
    );
    t.single(
        "sluice_isr_expands_total",
        "counter",
        "Committed ISR expansions of partitions this broker leads.",
        counters.isr_expands,
    );
    t.single(
        "sluice_controller_active",
        "gauge",
        "1 when this node is the active controller.",
        u8::from(c.active),
    );
    t.single(
        "sluice_controller_active_id",
        "gauge",
        "Node id of the active controller as this node knows it; -1 when unknown.",
        c.active_id.unwrap_or(-1),
    );
    t.single(
        "sluice_quorum_leader_epoch",
        "gauge",
        "Leader epoch of the controller quorum (0 for a node alone).",
        c.leader_epoch,
    );
    t.single(
        "sluice_quorum_high_watermark",
        "gauge",
        "Metadata log entries the controller quorum committed.",
        c.high_watermark,
    );
    t.single(
        "sluice_quorum_voters",
        "gauge",
        "Voters of the controller quorum.",
        c.voters,
    );
    t.single(
        "sluice_brokers_live",
        "gauge",
        "Brokers registered and not fenced, as this node knows.",
        c.live_brokers,
    );
    t.single(
        "sluice_unclean_leader_elections_total",
        "counter",
        "Partition leaders the committed metadata elected outside the ISR (unclean.leader.election.enable).",
        c.unclean_elections,
    );
}

/// Serves `/metrics`, `/health` and `/ready` on `listener` until the node
/// task is gone. Each connection answers one request and closes.
pub(crate) async fn http_loop(
    listener: tokio::net::TcpListener,
    events: mpsc::UnboundedSender<Event>,
) {
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        let events = events.clone();
        tokio::spawn(async move {
            answer(stream, events).await;
            drop(place);
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, events: mpsc::UnboundedSender<Event>) {
    let Ok(Some(head)) = tokio::time::timeout(HTTP_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let (status, content_type, body) = respond(&head, &events).await;
    let head_only = head.starts_with("HEAD ");
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The request head up to its blank line; None if it does not come whole
/// within `HTTP_HEAD_BYTES_MAX`.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let read = stream.read(&mut buf).await.ok()?;
        if read == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..read]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() > HTTP_HEAD_BYTES_MAX {
            return None;
        }
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn respond(
    head: &str,
    events: &mpsc::UnboundedSender<Event>,
) -> (&'static str, &'static str, String) {
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            PLAIN,
            "only GET and HEAD\n".into(),
        );
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/health" => ("200 OK", PLAIN, "ok\n".into()),
        "/metrics" | "/ready" => {
            let render = path == "/metrics";
            let (reply, answer) = oneshot::channel();
            let scraped = match events.send(Event::Scrape { render, reply }) {
                Ok(()) => tokio::time::timeout(HTTP_TIMEOUT, answer)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            match (scraped, render) {
                (None, _) => (
                    "503 Service Unavailable",
                    PLAIN,
                    "the broker did not answer\n".into(),
                ),
                (Some(s), true) => ("200 OK", EXPOSITION, s.text),
                (Some(s), false) if s.ready => ("200 OK", PLAIN, "ready\n".into()),
                (Some(_), false) => ("503 Service Unavailable", PLAIN, "not ready\n".into()),
            }
        }
        _ => (
            "404 Not Found",
            PLAIN,
            "not found: try /metrics, /health or /ready\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let mut histogram = Histogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.5, 0.7, 3.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "api=\"Fetch\"");
        assert_eq!(
            out,
            "x_seconds_bucket{api=\"Fetch\",le=\"0.1\"} 1\n\
             x_seconds_bucket{api=\"Fetch\",le=\"1\"} 3\n\
             x_seconds_bucket{api=\"Fetch\",le=\"+Inf\"} 4\n\
             x_seconds_sum{api=\"Fetch\"} 4.25\n\
             x_seconds_count{api=\"Fetch\"} 4\n"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(braces(&[("a", "x\"y\\z\n")]), "{a=\"x\\\"y\\\\z\\n\"}");
        assert_eq!(braces(&[]), "");
    }

    #[test]
    fn answers_match_requests_in_order_and_skip_unanswered_ones() {
        let mut metrics = DriverMetrics::default();
        let mut in_flight = VecDeque::new();
        // Produce v9 acks=0 (correlation 1, never answered), then Fetch v12 (2).
        metrics.request(&mut in_flight, &[0, 0, 0, 9, 0, 0, 0, 1, 0xff]);
        metrics.request(&mut in_flight, &[0, 1, 0, 12, 0, 0, 0, 2]);
        metrics.request(&mut in_flight, &[0, 1]);
        assert_eq!(in_flight.len(), 2);
        // A response whose correlation is unknown changes nothing.
        metrics.response(&mut in_flight, &[0, 0, 0, 4, 0, 0, 0, 9]);
        assert_eq!(in_flight.len(), 2);
        metrics.response(&mut in_flight, &[0, 0, 0, 4, 0, 0, 0, 2]);
        assert!(in_flight.is_empty());
        assert_eq!(metrics.requests[&(0, 9)], 1);
        assert_eq!(metrics.requests[&(1, 12)], 1);
        assert!(!metrics.latency.contains_key(&(0, 9)));
        assert_eq!(metrics.latency[&(1, 12)].count, 1);
    }

    /// Serves `http_loop` on a free port, with a stand-in node task that
    /// answers scrapes as `ready`; returns the port.
    async fn serve_http(ready: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (events, mut received) = mpsc::unbounded_channel();
        tokio::spawn(http_loop(listener, events));
        tokio::spawn(async move {
            while let Some(event) = received.recv().await {
                if let Event::Scrape { reply, .. } = event {
                    let text = "sluice_ready 1\n".to_string();
                    let _ = reply.send(Scraped { ready, text });
                }
            }
        });
        port
    }

    async fn get(port: u16, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn the_listener_answers_each_path() {
        let port = serve_http(false).await;
        assert!(get(port, "/health")
            .await
            .starts_with("HTTP/1.1 200 OK\r\n"));
        let ready = get(port, "/ready").await;
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        let metrics = get(port, "/metrics?x=1").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(metrics.ends_with("\r\n\r\nsluice_ready 1\n"), "{metrics}");
        assert!(get(port, "/other").await.starts_with("HTTP/1.1 404 "));
        let port = serve_http(true).await;
        assert!(get(port, "/ready").await.starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_bound_wait_for_a_place() {
        let port = serve_http(true).await;
        let mut idle = Vec::new();
        for _ in 0..HTTP_CONNECTIONS_MAX {
            idle.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
        }
        // Every place is held: one more request is not answered...
        let mut waiting = tokio::spawn(get(port, "/health"));
        let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
        assert!(early.is_err(), "answered while every place was held");
        // ...until one is given back.
        drop(idle.pop());
        let answer = tokio::time::timeout(HTTP_TIMEOUT, waiting)
            .await
            .expect("answered once a place is free")
            .expect("the request task");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }

    #[test]
    fn a_snapshot_renders_families_once_with_their_samples() {
        let mut snapshot = Snapshot::default();
        snapshot.counters.produced("orders", 7, 700);
        snapshot.counters.error(0, 6);
        let text = render(&snapshot, &DriverMetrics::default(), 3, true);
        assert!(text.contains("sluice_topic_records_in_total{topic=\"orders\"} 7\n"));
        assert!(text.contains("sluice_topic_bytes_in_total{topic=\"orders\"} 700\n"));
        assert!(text.contains(
            "sluice_errors_total{api=\"Produce\",error=\"NOT_LEADER_OR_FOLLOWER\",code=\"6\"} 1\n"
        ));
        assert!(text.contains("sluice_connections 3\n"));
        assert!(text.contains("sluice_request_memory_bytes 0\n"));
        assert!(text.contains("sluice_ready 1\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "a family declared twice");
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                types
                    .iter()
                    .any(|t| t.split(' ').nth(2) == Some(family)
                        || t.split(' ').nth(2) == Some(name)),
                "{line} has no TYPE line"
            );
        }
    }
}
