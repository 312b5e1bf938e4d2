//! A real `sluice` broker for the client's integration tests: built with
//! cargo (or taken from `SLUICE_BIN`), started on a free loopback port with
//! its own temporary data directory, and killed when dropped.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_client::{Client, ClientConfig, TokioConnector};

/// How long a started broker may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when the one picked was taken before the broker bound it.
const PORT_ATTEMPTS_MAX: u32 = 3;

/// The `sluice` executable, built once per test process.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SLUICE_BIN") {
            return PathBuf::from(bin);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args([
                "build",
                "-p",
                "sluice-server",
                "--bin",
                "sluice",
                "--message-format=json",
            ])
            .current_dir(workspace)
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building sluice failed");
        let stdout = String::from_utf8_lossy(&output.stdout);
        executable_path(&stdout).expect("cargo reports the sluice executable")
    })
    .clone()
}

/// The `"executable"` of the last compiler artifact named `sluice`.
fn executable_path(cargo_json: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    cargo_json
        .lines()
        .filter_map(|line| {
            let start = line.find(KEY)? + KEY.len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .rfind(|path| path.file_name().is_some_and(|name| name == "sluice"))
}

/// A running broker; killed on drop. Its log is printed if a test fails
/// while it runs.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        for _ in 0..PORT_ATTEMPTS_MAX {
            let port = free_port();
            if let Some(child) = spawn(dir.path(), port) {
                return Broker {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("the broker did not start on any of {PORT_ATTEMPTS_MAX} ports");
    }

    /// Stops the broker and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let child = spawn(self.dir.path(), self.port).expect("the broker restarts on its port");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new([self.address()]).with_seed(42);
        config.request_timeout_ms = 10_000;
        config
    }

    pub fn client(&self) -> Client<TokioConnector> {
        Client::new(TokioConnector, self.client_config()).expect("valid config")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let mut log = String::new();
            let path = self.dir.path().join("broker.log");
            if let Ok(mut file) = std::fs::File::open(&path) {
                let _ = file.read_to_string(&mut log);
            }
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- broker log tail ({}) ---", path.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Starts the broker and waits until it accepts connections; `None` if it
/// exited first (most likely the port was taken).
fn spawn(dir: &Path, port: u16) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("broker log file");
    let data = dir.join("data");
    let mut child = Command::new(sluice_bin())
        .arg("serve")
        .arg("--override")
        .arg(format!("log.dirs={}", data.display()))
        .arg("--override")
        .arg(format!("listeners=PLAINTEXT://127.0.0.1:{port}"))
        // A group's first rebalance would otherwise wait 3 s for more members.
        .arg("--override")
        .arg("group.initial.rebalance.delay.ms=0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("sluice starts");
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if child.try_wait().expect("child status").is_some() {
            return None;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the broker did not accept connections within {READY_TIMEOUT:?}");
}
