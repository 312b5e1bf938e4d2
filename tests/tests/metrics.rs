//! Whole-system test of the metrics listener (`metrics.listener`): a real
//! broker serves `/metrics`, `/health` and `/ready`; records produced and
//! consumed with `sluice produce` and `sluice consume --group` show up in
//! its counters and gauges; and a real Prometheus server (Debian's
//! `prometheus` package, installed by `scripts/install-test-deps`) scrapes
//! it, and its query API reports the records the test produced.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{
    find_in_path, free_ports, http_get, metric_sample, run_sluice, Broker, BrokerOptions,
};

/// Records the test produces, and the topic it writes them to.
const RECORDS: usize = 250;
const TOPIC: &str = "metered";
const GROUP: &str = "metered-readers";

/// Bound on one `sluice` client command.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Prometheus may take to start and scrape the produced count
/// (it scrapes every second).
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a condition awaited is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Polls `check` until it returns Some, or panics with `what` and the
/// last failure after `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {why}")
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// `text` percent-encoded for a URL's query.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "prometheus log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    }
}

impl Prometheus {
    /// Starts Prometheus on a free port, scraping `127.0.0.1:target_port`
    /// every second.
    fn start(binary: PathBuf, port: u16, target_port: u16) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("sluice-prometheus-")
            .tempdir()
            .expect("create Prometheus's directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: sluice\n    static_configs:\n      \
             - targets: ['127.0.0.1:{target_port}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .expect("create prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    /// The value of an instant query that must return one sample.
    fn query_one(&self, query: &str) -> Result<f64, String> {
        let target = format!("/api/v1/query?query={}", url_encode(query));
        let (status, body) = http_get(self.port, &target)?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let results = json["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no result array: {body}"))?;
        match results.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no value: {body}")),
            _ => Err(format!("{} samples: {body}", results.len())),
        }
    }
}

/// The PromQL of every panel of `deploy/grafana/sluice.json`.
fn dashboard_queries() -> Vec<String> {
    let path = sluice_tests::workspace_root().join("deploy/grafana/sluice.json");
    let text = std::fs::read_to_string(&path).expect("read the Grafana dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("the dashboard has panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect()
}

/// The `sluice_…` names a query reads.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("sluice_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn prometheus_scrapes_the_records_produced() {
    let ports = free_ports(2);
    let (metrics_port, prometheus_port) = (ports[0], ports[1]);
    let broker = Broker::start(
        BrokerOptions::default().config("metrics.listener", format!("127.0.0.1:{metrics_port}")),
    );

    // The listener answers as an operator's probes expect.
    let (status, body) = poll(
        Duration::from_secs(20),
        "/ready answers 200",
        || match http_get(metrics_port, "/ready")? {
            (200, body) => Ok((200, body)),
            (status, body) => Err(format!("{status} {body}")),
        },
    );
    assert_eq!((status, body.trim()), (200, "ready"));
    assert_eq!(http_get(metrics_port, "/health").unwrap().0, 200);
    assert_eq!(http_get(metrics_port, "/nothing-here").unwrap().0, 404);

    let lines: String = (0..RECORDS).map(|i| format!("record-{i}\n")).collect();
    let produced = run_sluice(
        &["produce", "-b", &broker.bootstrap(), "-t", TOPIC],
        Some(lines.as_bytes()),
        SLUICE_TIMEOUT,
    );
    assert!(
        produced.status.success(),
        "{}: {}",
        produced.command_line,
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = run_sluice(
        &[
            "consume",
            "-b",
            &broker.bootstrap(),
            "-t",
            TOPIC,
            "--group",
            GROUP,
            "--from-beginning",
            "-c",
            &RECORDS.to_string(),
            "-q",
        ],
        None,
        SLUICE_TIMEOUT,
    );
    assert!(
        consumed.status.success(),
        "{}: {}",
        consumed.command_line,
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(consumed.stdout, lines.as_bytes());

    // The broker's own text: counters, gauges and the group's progress.
    let text = sluice_tests::scrape_metrics(metrics_port).expect("scrape /metrics");
    let expect = |series: &str, value: f64| {
        assert_eq!(
            metric_sample(&text, series),
            Some(value),
            "{series} in:\n{text}"
        );
    };
    let records = RECORDS as f64;
    expect(
        &format!("sluice_topic_records_in_total{{topic=\"{TOPIC}\"}}"),
        records,
    );
    expect(
        &format!("sluice_topic_records_out_total{{topic=\"{TOPIC}\"}}"),
        records,
    );
    expect(
        &format!("sluice_log_end_offset{{topic=\"{TOPIC}\",partition=\"0\"}}"),
        records,
    );
    expect(
        &format!(
            "sluice_consumer_group_committed_offset{{group=\"{GROUP}\",topic=\"{TOPIC}\",partition=\"0\"}}"
        ),
        records,
    );
    expect(
        &format!(
            "sluice_consumer_group_lag{{group=\"{GROUP}\",topic=\"{TOPIC}\",partition=\"0\"}}"
        ),
        0.0,
    );
    let bytes_in = metric_sample(
        &text,
        &format!("sluice_topic_bytes_in_total{{topic=\"{TOPIC}\"}}"),
    )
    .expect("bytes in");
    assert!(bytes_in >= lines.len() as f64, "{bytes_in} bytes in");
    let produce_requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{api=\"Produce\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        produce_requests >= 1.0,
        "no Produce request counted:\n{text}"
    );
    expect("sluice_controller_active", 1.0);
    expect("sluice_under_replicated_partitions", 0.0);

    // Every metric the shipped Grafana dashboard reads is one the broker serves.
    let dashboard = dashboard_queries();
    assert!(dashboard.len() >= 20, "{} queries", dashboard.len());
    for name in dashboard.iter().flat_map(|q| metric_names(q)) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard reads {name}, which /metrics does not serve"
        );
    }

    // Prometheus itself, through its query API.
    let Some(binary) = find_in_path("prometheus") else {
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(
            !in_ci,
            "prometheus is not installed, and CI must run this test: run scripts/install-test-deps"
        );
        // Straight to stderr: a passing test's output is captured, and a
        // skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED the Prometheus half: `prometheus` is not on PATH.\n\
             !!! Run scripts/install-test-deps (Debian's prometheus package).\n"
        );
        return;
    };
    let prometheus = Prometheus::start(binary, prometheus_port, metrics_port);
    let query = format!("sluice_topic_records_in_total{{job=\"sluice\",topic=\"{TOPIC}\"}}");
    let seen = poll(
        PROMETHEUS_TIMEOUT,
        "Prometheus reports the records produced",
        || match prometheus.query_one(&query)? {
            value if value == records => Ok(value),
            value => Err(format!("{query} = {value}")),
        },
    );
    assert_eq!(seen, records);
    let up = prometheus
        .query_one("up{job=\"sluice\"}")
        .expect("query up");
    assert_eq!(up, 1.0, "the scrape target is down");
    // And Prometheus accepts every query of the dashboard, its variables
    // filled in as Grafana would.
    for query in &dashboard {
        let filled = query
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$topic", ".*");
        let target = format!("/api/v1/query?query={}", url_encode(&filled));
        let (status, body) = http_get(prometheus.port, &target).expect("query Prometheus");
        assert_eq!(
            status, 200,
            "the dashboard's query {filled} is refused: {body}"
        );
    }
    drop(broker);
}
