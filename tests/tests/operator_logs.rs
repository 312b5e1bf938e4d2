//! What `sluice serve` tells an operator on stderr: start-up lines naming
//! the version and commit, the node, where it listens and is reached, its
//! log directory, the configuration file and the overrides, and what
//! opening the log directory found; no colour codes when stderr is not a
//! terminal (here a file); and one JSON object per line with
//! `--log-format json`.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{run_sluice, sluice_bin, wait_with_timeout};

const READY_WITHIN: Duration = Duration::from_secs(30);
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A `sluice serve` whose stderr goes to a file, killed if dropped.
struct Serve {
    child: Option<Child>,
    stderr: std::path::PathBuf,
}

impl Serve {
    /// Starts `sluice serve ARGS` with NO_COLOR unset (the broker itself must
    /// see that stderr is no terminal) and waits for `port` to accept.
    fn start(args: &[&str], port: u16, stderr: &Path) -> Serve {
        let log = std::fs::File::create(stderr).expect("create the stderr file");
        let child = Command::new(sluice_bin())
            .arg("serve")
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice serve");
        let mut serve = Serve {
            child: Some(child),
            stderr: stderr.to_path_buf(),
        };
        let deadline = Instant::now() + READY_WITHIN;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            let child = serve.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("poll the broker") {
                panic!("the broker exited with {status}:\n{}", serve.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "not listening within {READY_WITHIN:?}:\n{}",
                serve.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then the exit; its stderr.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the pid of a child this test started and has
        // not reaped; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_with_timeout(&mut child, STOP_WITHIN).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no exit within {STOP_WITHIN:?} of SIGTERM:\n{}",
                self.stderr()
            )
        });
        assert!(status.success(), "{status}:\n{}", self.stderr());
        self.stderr()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The one line of `log` holding `message`.
fn line_with<'a>(log: &'a str, message: &str) -> &'a str {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(message)).collect();
    assert_eq!(lines.len(), 1, "one line with `{message}` in:\n{log}");
    lines[0]
}

#[test]
fn start_up_lines_name_what_an_operator_needs_without_colour_codes() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let data = work.path().join("data");
    let config = work.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "\"listeners\" = \"PLAINTEXT://127.0.0.1:{port}\"\n\"log.dirs\" = \"{}\"\n",
            data.display()
        ),
    )
    .expect("write the config");
    let config_arg = config.display().to_string();
    let args = ["--config", config_arg.as_str(), "--override", "node.id=7"];
    let first = Serve::start(&args, port, &work.path().join("first.err"));
    let bootstrap = format!("127.0.0.1:{port}");
    let produced = run_sluice(
        &["produce", "-b", &bootstrap, "-t", "logged", "-q"],
        Some(b"a\nb\nc\n"),
        Duration::from_secs(60),
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let log = first.stop();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
    let version = format!("version=\"{} (commit ", env!("CARGO_PKG_VERSION"));
    let starting = line_with(&log, "starting sluice");
    assert!(
        starting.contains(&version) && starting.contains("node_id=7"),
        "{starting}"
    );
    let configuration = line_with(&log, " configuration ");
    assert!(
        configuration.contains(&format!("config={config_arg}"))
            && configuration.contains("overrides=node.id=7"),
        "{configuration}"
    );
    let listening = line_with(&log, "listening for clients");
    assert!(
        listening.contains(&format!("listener=127.0.0.1:{port}"))
            && listening.contains(&format!("advertised=127.0.0.1:{port}")),
        "{listening}"
    );
    let data_canonical = std::fs::canonicalize(&data).expect("the data directory exists");
    let directory = line_with(&log, ": log directory log_dir=");
    assert!(
        directory.contains(&format!("log_dir={}", data_canonical.display())),
        "{directory}"
    );
    let opened = line_with(&log, "opened the log directory");
    assert!(opened.contains("partitions=0"), "{opened}");
    line_with(&log, "clean shutdown complete");

    // Started again: the summary counts what the first run left, cleanly.
    let second = Serve::start(&args, port, &work.path().join("second.err"));
    let log = second.stop();
    let opened = line_with(&log, "opened the log directory");
    assert!(
        opened.contains("clean_shutdown=true")
            && opened.contains("partitions=1")
            && opened.contains("segments=1")
            && opened.contains("truncated_bytes=0"),
        "{opened}"
    );
    let bytes: u64 = opened
        .split_whitespace()
        .find_map(|field| field.strip_prefix("bytes="))
        .and_then(|value| value.parse().ok())
        .expect("a bytes field");
    assert!(bytes > 0, "{opened}");
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let listeners = format!("listeners=127.0.0.1:{port}");
    let log_dirs = format!("log.dirs={}", work.path().join("data").display());
    let serve = Serve::start(
        &[
            "--log-format",
            "json",
            "--override",
            &listeners,
            "--override",
            &log_dirs,
        ],
        port,
        &work.path().join("json.err"),
    );
    let log = serve.stop();
    let objects: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(objects.len() >= 5, "{log}");
    for object in &objects {
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{object}"
        );
    }
    let starting = objects
        .iter()
        .find(|o| o["message"] == "starting sluice")
        .expect("a start-up line");
    assert_eq!(starting["node_id"], 1);
    let listening = objects
        .iter()
        .find(|o| o["message"] == "listening for clients")
        .expect("a listening line");
    assert_eq!(listening["listener"], format!("127.0.0.1:{port}"));
}
