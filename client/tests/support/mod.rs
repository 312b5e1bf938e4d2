//! A real broker for the client's integration tests: the driver of
//! `sluice-driver` over a `FileDisk`, run in this process on a thread and a
//! current-thread runtime of its own, as `sluice serve` runs it (the node
//! task does blocking disk IO, which must not stall the test's runtime).
//! Each broker listens on a free loopback port and keeps its data in its own
//! temporary directory; it logs to `broker.log` there, whose tail is printed
//! if a test fails while the broker runs. Stopping it is a kill, as of a
//! process: nothing more is written or synced, and what was written stays in
//! the files for a restart on the same data.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_client::{Client, ClientConfig, TokioConnector};

// Not every test file loses answers.
#[allow(dead_code)]
pub mod lossy;
use sluice_core::config::BrokerConfig;
use sluice_driver::{serve_on_thread, Environment, FileDisk, ServedOnThread};

/// A running broker; killed on drop. Its log is printed if a test fails
/// while it runs.
pub struct Broker {
    running: Option<ServedOnThread>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a port the system picks.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (running, port) = launch(dir.path(), 0);
        Broker {
            running: Some(running),
            port,
            dir,
        }
    }

    /// Kills the broker and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let (running, port) = launch(self.dir.path(), self.port);
        assert_eq!(port, self.port, "the broker restarts on its port");
        self.running = Some(running);
    }

    /// Kills the broker, as a crash of its process would, and waits until
    /// its sockets are closed. A broker that had failed on its own fails
    /// the test here (unless it is already failing).
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let outcome = running.kill();
        if std::thread::panicking() {
            return;
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the broker failed: {error}"),
            Err(_) => panic!("the broker's thread panicked (see its log above)"),
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

/// Binds 127.0.0.1:`port` (0 for a free one) here, so a port in use fails
/// at once, then serves from `dir/data` on a new thread until killed.
/// Returns the running broker and the port it listens on.
fn launch(dir: &Path, port: u16) -> (ServedOnThread, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|error| panic!("cannot listen on 127.0.0.1:{port}: {error}"));
    let port = listener.local_addr().expect("local address").port();
    let data = dir.join("data");
    let pairs: BTreeMap<String, String> = [
        ("log.dirs", data.display().to_string()),
        ("listeners", format!("PLAINTEXT://127.0.0.1:{port}")),
        // A group's first rebalance would otherwise wait 3 s for more members.
        ("group.initial.rebalance.delay.ms", "0".to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect();
    let config = BrokerConfig::from_pairs(&pairs).expect("valid broker config");
    let disk = FileDisk::open(&data).expect("open the data directory");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("broker log file");
    let prepare = move || {
        // This thread's own subscriber: the broker's tasks all run there.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_ansi(false)
            .with_writer(Arc::new(log))
            .finish();
        tracing::subscriber::set_default(subscriber)
    };
    let build = move |listener| Environment {
        config,
        listener,
        disk,
        advertised: ("127.0.0.1".to_string(), port),
        clock: sluice_driver::system_clock(),
        seed: fresh_seed(),
        peers: BTreeMap::new(),
        connector: sluice_driver::TokioConnector,
        peer_status: None,
        metrics_listener: None,
    };
    // Killed, not shut down: a dropped `Broker` kills it too.
    let running = serve_on_thread(format!("sluice-broker-{port}"), listener, prepare, build)
        .expect("broker thread");
    (running, port)
}

/// A seed for the node's generator, new on every start as in `sluice
/// serve`: only ids (topic, cluster) depend on it.
fn fresh_seed() -> u64 {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ STARTS.fetch_add(1, Ordering::Relaxed).rotate_left(32)
}
