//! Harness for Sluice's whole-system tests.
//!
//! [`Broker`] runs a real `sluice` process (built once per test process, or
//! taken from `SLUICE_BIN`) on a free loopback port, with its own config,
//! data directory and log file in a temporary directory. [`run_tool`] and
//! [`Tool`] run an external client (kcat, or a Python or Node script from
//! `tests/interop/`) with a time bound. The locators ([`kcat`],
//! [`venv_python`], [`node`], [`interop_node_modules`]) fail with a message
//! that says how to install what is missing. [`cluster::Cluster`] runs
//! three brokers as one cluster.
//!
//! Everything here panics on failure, with enough context to debug from the
//! test output alone: a broker dropped while its test is panicking prints
//! the tail of its log and keeps its directory.

use std::collections::VecDeque;
use std::env;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod cluster;
pub mod wire;

/// What to tell someone whose machine lacks a client tool.
pub const INSTALL_HINT: &str = "run scripts/install-test-deps (or scripts/test)";

/// Config keys the harness sets itself; options may not override them.
const HARNESS_KEYS: [&str; 2] = ["listeners", "log.dirs"];

/// How many lines of the broker's log a failing test prints.
const LOG_TAIL_LINES: usize = 300;

/// How much of a failing tool's stdout and stderr goes into the panic message.
const TOOL_OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// How often the readiness probe and the exit waits poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Fresh ports tried when the one picked was taken before the broker bound it.
const PORT_ATTEMPTS: u32 = 3;

// ---------------------------------------------------------------------------
// Paths and tool locators
// ---------------------------------------------------------------------------

/// The cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the sluice-tests crate lives inside the workspace")
        .to_path_buf()
}

/// `tests/interop/`: the Python and Node client scripts and their manifests.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// A script in `tests/interop/`, checked to exist.
pub fn interop_script(name: &str) -> PathBuf {
    let path = interop_dir().join(name);
    assert!(
        path.is_file(),
        "interop script {} does not exist",
        path.display()
    );
    path
}

/// The Python of the test venv, `<workspace>/.venv/bin/python`.
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join(".venv").join("bin").join("python");
    if !is_executable(&python) {
        panic!(
            "the test venv's Python ({}) is missing: {INSTALL_HINT}",
            python.display()
        );
    }
    python
}

/// `tests/interop/node_modules`, checked to hold KafkaJS.
pub fn interop_node_modules() -> PathBuf {
    let modules = interop_dir().join("node_modules");
    if !modules.join("kafkajs").join("package.json").is_file() {
        panic!(
            "KafkaJS is not installed in {}: {INSTALL_HINT}",
            modules.display()
        );
    }
    modules
}

/// The `node` executable on `PATH`.
pub fn node() -> PathBuf {
    find_in_path("node")
        .unwrap_or_else(|| panic!("`node` is not on PATH: install Node.js, then {INSTALL_HINT}"))
}

/// The `kcat` executable on `PATH`.
pub fn kcat() -> PathBuf {
    find_in_path("kcat").unwrap_or_else(|| panic!("`kcat` is not on PATH: {INSTALL_HINT}"))
}

/// The first executable file called `name` in a `PATH` directory.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// The sluice binary
// ---------------------------------------------------------------------------

/// The `sluice` binary under test.
///
/// `SLUICE_BIN` wins when set. Otherwise the first call in a test process
/// runs `$CARGO build -p sluice-server --bin sluice` (`cargo` when `CARGO` is
/// unset) in the workspace root and takes the executable cargo reports
/// (normally `target/debug/sluice`); later calls reuse that answer, and a
/// failed build fails every test that needs the binary.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_or_build_sluice) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn locate_or_build_sluice() -> Result<PathBuf, String> {
    if let Some(bin) = env::var_os("SLUICE_BIN") {
        return fs::canonicalize(&bin)
            .ok()
            .filter(|path| is_executable(path))
            .ok_or_else(|| format!("SLUICE_BIN={bin:?} is not an executable file"));
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let args = [
        "build",
        "-p",
        "sluice-server",
        "--bin",
        "sluice",
        "--message-format=json-render-diagnostics",
    ];
    let output = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("could not run {cargo:?} to build sluice: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build -p sluice-server --bin sluice` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = executable_from_cargo_messages(&stdout, "sluice")
        .unwrap_or_else(|| workspace_root().join("target").join("debug").join("sluice"));
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(format!(
            "cargo built sluice but {} is not an executable file",
            path.display()
        ))
    }
}

/// Finds the executable called `name` in cargo's `--message-format=json`
/// output (one JSON object per line).
fn executable_from_cargo_messages(stdout: &str, name: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter_map(|line| json_string_field(line, "executable"))
        .map(PathBuf::from)
        .rfind(|path| path.file_name() == Some(OsStr::new(name)))
}

/// The value of the first string field `field` in a line of JSON. Enough for
/// cargo's messages, where `executable` is a top-level string or `null`.
fn json_string_field(line: &str, field: &str) -> Option<String> {
    let pattern = format!("\"{field}\":\"");
    let start = line.find(&pattern)? + pattern.len();
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => {
                let escaped = match chars.next()? {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                    }
                    other => other,
                };
                out.push(escaped);
            }
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Broker configuration
// ---------------------------------------------------------------------------

/// A value in the broker's TOML config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl ConfigValue {
    fn to_toml(&self) -> String {
        match self {
            ConfigValue::Str(s) => toml_string(s),
            ConfigValue::Int(i) => i.to_string(),
            ConfigValue::Bool(b) => b.to_string(),
        }
    }
}

impl From<&str> for ConfigValue {
    fn from(value: &str) -> Self {
        ConfigValue::Str(value.to_owned())
    }
}

impl From<String> for ConfigValue {
    fn from(value: String) -> Self {
        ConfigValue::Str(value)
    }
}

impl From<bool> for ConfigValue {
    fn from(value: bool) -> Self {
        ConfigValue::Bool(value)
    }
}

impl From<i64> for ConfigValue {
    fn from(value: i64) -> Self {
        ConfigValue::Int(value)
    }
}

impl From<i32> for ConfigValue {
    fn from(value: i32) -> Self {
        ConfigValue::Int(value.into())
    }
}

impl From<u32> for ConfigValue {
    fn from(value: u32) -> Self {
        ConfigValue::Int(value.into())
    }
}

impl From<u16> for ConfigValue {
    fn from(value: u16) -> Self {
        ConfigValue::Int(value.into())
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How to run a [`Broker`]: config entries (Kafka's key names) and time bounds.
///
/// The defaults are `auto.create.topics.enable = true`, `num.partitions = 1`
/// and `node.id = 1`; `listeners` and `log.dirs` are always set by the
/// harness.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    config: Vec<(String, ConfigValue)>,
    ready_timeout: Duration,
    stop_timeout: Duration,
    /// Soft and hard `RLIMIT_NOFILE` of the process, as `ulimit -n` sets.
    open_files_limit: Option<u64>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            config: vec![
                ("auto.create.topics.enable".into(), ConfigValue::Bool(true)),
                ("num.partitions".into(), ConfigValue::Int(1)),
                ("node.id".into(), ConfigValue::Int(1)),
            ],
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            open_files_limit: None,
        }
    }
}

impl BrokerOptions {
    /// Sets a config entry, replacing an earlier value (or default) of `key`.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<ConfigValue>) -> Self {
        let key = key.into();
        assert!(
            !HARNESS_KEYS.contains(&key.as_str()),
            "`{key}` is set by the harness and cannot be overridden"
        );
        let value = value.into();
        match self.config.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.config.push((key, value)),
        }
        self
    }

    /// How long to wait for the port to accept connections (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Runs the broker with at most `limit` open descriptors, soft and
    /// hard alike (`ulimit -n limit`): it cannot raise them.
    pub fn open_files_limit(mut self, limit: u64) -> Self {
        self.open_files_limit = Some(limit);
        self
    }

    /// How long [`Broker::stop`] waits after SIGTERM (default 30 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The config file for a broker on `port` keeping its data in `data_dir`.
    pub fn render(&self, port: u16, data_dir: &Path) -> String {
        let data_dir = data_dir
            .to_str()
            .expect("the broker's data directory path is UTF-8");
        let mut out = String::from("# Written by the sluice-tests harness.\n");
        let fixed = [
            (
                "listeners",
                ConfigValue::Str(format!("PLAINTEXT://127.0.0.1:{port}")),
            ),
            ("log.dirs", ConfigValue::Str(data_dir.to_owned())),
        ];
        let entries = fixed
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(self.config.iter().map(|(k, v)| (k.as_str(), v)));
        for (key, value) in entries {
            let _ = writeln!(out, "{} = {}", toml_string(key), value.to_toml());
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

/// A running `sluice` process for one test.
///
/// Its temporary directory holds `sluice.toml`, the data directory `data/`
/// and `sluice.log` (the process's stdout and stderr, appended across
/// restarts). Dropping the broker kills the process and removes the
/// directory, except while the thread is panicking: then the log's tail is
/// printed and the directory is kept for inspection.
///
/// On Linux the process is also killed if the thread that started it dies,
/// so a test process killed from outside leaves no broker behind; keep a
/// broker on the thread that started it.
pub struct Broker {
    bin: PathBuf,
    options: BrokerOptions,
    dir: Option<TempDir>,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

enum StartError {
    AddrInUse(String),
    Other(String),
}

impl Broker {
    /// Builds or locates `sluice`, writes its config and starts it, returning
    /// once its port accepts connections.
    pub fn start(options: BrokerOptions) -> Broker {
        let mut broker = Broker::unstarted(options);
        for attempt in 1..=PORT_ATTEMPTS {
            broker.port = free_port();
            match broker.spawn_and_wait_ready() {
                Ok(()) => return broker,
                Err(StartError::AddrInUse(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(StartError::AddrInUse(message) | StartError::Other(message)) => {
                    panic!("{message}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// As [`Broker::start`], on a port chosen beforehand (see
    /// [`free_ports`]): one that other brokers' configs name, such as a
    /// voter's in `controller.quorum.voters`. If it was taken meanwhile the
    /// start fails, since no other port would do.
    pub fn start_on(port: u16, options: BrokerOptions) -> Broker {
        let mut broker = Broker::unstarted(options);
        broker.port = port;
        if let Err(StartError::AddrInUse(message) | StartError::Other(message)) =
            broker.spawn_and_wait_ready()
        {
            panic!("{message}");
        }
        broker
    }

    /// A broker with its directories made and no process yet.
    fn unstarted(options: BrokerOptions) -> Broker {
        let bin = sluice_bin();
        let dir = tempfile::Builder::new()
            .prefix("sluice-test-")
            .tempdir()
            .expect("create the broker's temporary directory");
        fs::create_dir(dir.path().join("data")).expect("create the broker's data directory");
        Broker {
            bin,
            options,
            dir: Some(dir),
            port: 0,
            child: None,
            starts: 0,
        }
    }

    /// `127.0.0.1:PORT`, for a client's bootstrap servers.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's listening port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, when running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the broker")
            .path()
    }

    /// The data directory (`log.dirs`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The config file the broker runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("sluice.toml")
    }

    /// The file holding the broker's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("sluice.log")
    }

    /// Everything the broker has logged so far, across restarts.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Kills the process with SIGKILL and waits for it: a crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: the broker is not running");
        let _ = child.kill();
        child.wait().expect("wait for the killed broker");
    }

    /// Sends SIGTERM and waits (bounded by the stop timeout) for the process
    /// to exit, returning its exit status; panics if it does not exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stop: the broker is not running");
        send_signal(child.id(), libc::SIGTERM);
        match wait_with_timeout(&mut child, self.options.stop_timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice did not exit within {:?} of SIGTERM (killed it)",
                    self.options.stop_timeout
                );
            }
        }
    }

    /// Starts the broker again on the same port with the same data directory
    /// and config. A running broker is stopped first with [`Broker::stop`],
    /// and must exit successfully.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(
                status.success(),
                "sluice exited with {status} after SIGTERM"
            );
        }
        if let Err(StartError::AddrInUse(message) | StartError::Other(message)) =
            self.spawn_and_wait_ready()
        {
            panic!("restart: {message}");
        }
    }

    /// The last `lines` lines of the log, framed for a test's output.
    pub fn log_tail(&self, lines: usize) -> String {
        format_log_tail(&self.log_path(), lines)
    }

    fn spawn_and_wait_ready(&mut self) -> Result<(), StartError> {
        self.starts += 1;
        let config = self.options.render(self.port, &self.data_dir());
        fs::write(self.config_path(), config).expect("write the broker's config");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the broker's log file");
        writeln!(
            log,
            "==== sluice-tests: start #{} on port {} ====",
            self.starts, self.port
        )
        .expect("write to the broker's log file");
        let stdout = log.try_clone().expect("clone the log file handle");

        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir())
            // The log is a file: no terminal colour codes in it.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        die_with_parent_thread(&mut command);
        if let Some(limit) = self.options.open_files_limit {
            limit_open_files(&mut command, limit);
        }
        let mut child = command.spawn().unwrap_or_else(|err| {
            panic!("could not start {}: {err}", self.bin.display());
        });

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            if let Some(status) = child.try_wait().expect("poll the broker process") {
                let log = self.log();
                let message = format!(
                    "sluice exited with {status} before accepting connections on {addr}\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
                let start_log = log
                    .rsplit_once("==== sluice-tests: start #")
                    .map_or(log.as_str(), |(_, tail)| tail);
                return Err(if looks_like_addr_in_use(start_log) {
                    StartError::AddrInUse(message)
                } else {
                    StartError::Other(message)
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::Other(format!(
                    "sluice did not accept connections on {addr} within {:?} (killed it)\n{}",
                    self.options.ready_timeout,
                    self.log_tail(LOG_TAIL_LINES)
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "{}\n(broker directory kept at {})",
                    format_log_tail(&path.join("sluice.log"), LOG_TAIL_LINES),
                    path.display()
                );
            }
        }
    }
}

fn looks_like_addr_in_use(log: &str) -> bool {
    let lower = log.to_ascii_lowercase();
    lower.contains("address already in use") || lower.contains("addrinuse")
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// `count` distinct ports on 127.0.0.1 that were free a moment ago (all
/// held at once while picked, so no two are the same), for brokers that
/// must know each other's addresses before they start.
/// A memory figure of a process from `/proc/PID/status`, in KiB: `VmRSS`
/// (resident now) or `VmHWM` (the highest resident so far).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .expect("bind an ephemeral port on 127.0.0.1")
        })
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener's address")
                .port()
        })
        .collect()
}

fn format_log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|err| format!("(could not read the log: {err})"));
    let mut tail: VecDeque<&str> = VecDeque::with_capacity(lines + 1);
    let mut total = 0usize;
    for line in text.lines() {
        total += 1;
        if tail.len() == lines {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let mut out = format!(
        "---- sluice log {} (last {} of {} lines) ----\n",
        path.display(),
        tail.len(),
        total
    );
    for line in tail {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("---- end of sluice log ----");
    out
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits for `child` to exit, for at most `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent_thread(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent_thread(_command: &mut Command) {}

/// Sets the child's soft and hard limits on open descriptors to `limit`.
fn limit_open_files(command: &mut Command, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe and reads only a struct on
    // the child's stack.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------
// The sluice command
// ---------------------------------------------------------------------------

/// What a finished `sluice` command did, whatever its exit status.
pub struct SluiceRun {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
    pub command_line: String,
}

/// Runs `sluice args…` with `RUST_BACKTRACE=1` (a panic could not hide its
/// backtrace) and `RUST_LOG` unset, feeding it `stdin` or closing its stdin;
/// kills it and panics if it has not finished within `timeout`.
pub fn run_sluice(args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> SluiceRun {
    run_sluice_with_env(args, &[], stdin, timeout)
}

/// Bound on one [`sluice_stdout`] command.
const SLUICE_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `sluice args… --bootstrap-server BOOTSTRAP`, which must succeed
/// within 30 s (else it panics with its output); its stdout.
pub fn sluice_stdout(bootstrap: &str, args: &[&str]) -> Vec<u8> {
    Tool::new(sluice_bin())
        .args(args)
        .args(["--bootstrap-server", bootstrap])
        .timeout(SLUICE_COMMAND_TIMEOUT)
        .run()
        .stdout
}

/// The environment variables that give `sluice` client commands their
/// default bootstrap servers.
pub const BOOTSTRAP_ENV_VARS: [&str; 2] = ["SLUICE_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"];

/// [`run_sluice`] with `env` set (`None` removes a variable). The bootstrap
/// variables are removed unless `env` names them, so the test's own
/// environment cannot steer a command.
pub fn run_sluice_with_env(
    args: &[&str],
    env: &[(&str, Option<&str>)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> SluiceRun {
    let command_line = format!("sluice {}", args.join(" "));
    let started = Instant::now();
    let mut command = Command::new(sluice_bin());
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG");
    for name in BOOTSTRAP_ENV_VARS {
        command.env_remove(name);
    }
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("could not start `{command_line}`: {err}"));
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_in_background(child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_with_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{command_line}` did not finish within {timeout:?} (killed it)");
    };
    if let Some(feeder) = feeder {
        feeder.join().expect("stdin feeder");
    }
    SluiceRun {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        elapsed: started.elapsed(),
        command_line,
    }
}

/// Starts `sluice args…` with stdin closed, stdout and stderr piped to the
/// caller, `RUST_LOG` and the bootstrap variables unset; it dies with the
/// test's thread. For commands a test watches while they run.
pub fn spawn_sluice(args: &[&str]) -> Child {
    let mut command = Command::new(sluice_bin());
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in BOOTSTRAP_ENV_VARS {
        command.env_remove(name);
    }
    die_with_parent_thread(&mut command);
    command
        .spawn()
        .unwrap_or_else(|err| panic!("could not start `sluice {}`: {err}", args.join(" ")))
}

// ---------------------------------------------------------------------------
// Long-running members
// ---------------------------------------------------------------------------

/// A client process that runs until told to stop (a `sluice consume
/// --group` or a `kcat -G` member), its stdout and stderr in files under
/// the test's directory. It dies with the test's thread, and is killed when
/// dropped.
pub struct Member {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Member {
    /// Starts `program args…` as member `name`, writing `dir/NAME.out` and
    /// `dir/NAME.err`.
    pub fn spawn(program: impl AsRef<OsStr>, args: &[String], dir: &Path, name: &str) -> Member {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let mut command = Command::new(program.as_ref());
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create the member's stdout file"))
            .stderr(File::create(&stderr).expect("create the member's stderr file"));
        die_with_parent_thread(&mut command);
        let child = command.spawn().unwrap_or_else(|err| {
            panic!(
                "could not start {}: {err}",
                program.as_ref().to_string_lossy()
            )
        });
        Member {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    /// Panics, with its stderr, if it has exited.
    pub fn fail_if_exited(&mut self) {
        let child = self.child.as_mut().expect("the member is running");
        if let Some(status) = child.try_wait().expect("poll the member") {
            panic!(
                "member {} exited early with {status}; its stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Waits for the member to exit on its own; kills it and panics, with
    /// its stderr, if that takes longer than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the member is running");
        if let Some(status) = wait_with_timeout(&mut child, timeout) {
            return status;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "member {} did not exit within {timeout:?}; its stderr:\n{}",
            self.name,
            self.stderr()
        );
    }

    /// Kills the member with SIGKILL (a crash: nothing of it runs after)
    /// and waits for it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the member is running");
        let _ = child.kill();
        child.wait().expect("wait for the killed member");
    }

    /// Sends SIGTERM and waits for the exit; kills it and panics if it
    /// takes longer than `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the member is running");
        send_signal(child.id(), libc::SIGTERM);
        if let Some(status) = wait_with_timeout(&mut child, timeout) {
            return status;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "member {} did not exit within {timeout:?} of SIGTERM; its stderr:\n{}",
            self.name,
            self.stderr()
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Client tools
// ---------------------------------------------------------------------------

/// What a tool wrote, once it exited successfully.
#[derive(Debug)]
pub struct ToolOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

/// An external command run with a time bound, stdin closed and its output
/// captured. On a non-zero exit, a signal or the timeout, [`Tool::run`]
/// panics with the command line and the tool's stdout and stderr.
#[derive(Clone, Debug)]
pub struct Tool {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    timeout: Duration,
}

impl Tool {
    /// A tool with a 60 s time bound.
    pub fn new(program: impl AsRef<OsStr>) -> Tool {
        Tool {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            timeout: Duration::from_secs(60),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Tool {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Tool {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Tool {
        self.current_dir = Some(dir.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Tool {
        self.timeout = timeout;
        self
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|part| shell_quote(&part.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the tool; panics unless it exits with status 0 in time.
    pub fn run(&self) -> ToolOutput {
        self.try_run().unwrap_or_else(|message| panic!("{message}"))
    }

    /// Runs the tool; the error describes a failure to start, a non-zero
    /// exit, a signal or the timeout, with the tool's output.
    pub fn try_run(&self) -> Result<ToolOutput, String> {
        let started = Instant::now();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|err| format!("could not start `{}`: {err}", self.command_line()))?;
        let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
        let stderr = read_in_background(child.stderr.take().expect("piped stderr"));
        let status = wait_with_timeout(&mut child, self.timeout);
        // Also reaps anything the tool left running in its process group,
        // which would otherwise hold the pipes open.
        send_signal_to_group(child.id(), libc::SIGKILL);
        let status = match status {
            Some(status) => Some(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        };
        let stdout = stdout.join().expect("stdout reader");
        let stderr = stderr.join().expect("stderr reader");
        let elapsed = started.elapsed();
        let failure = match status {
            Some(status) if status.success() => {
                return Ok(ToolOutput {
                    stdout,
                    stderr,
                    elapsed,
                })
            }
            Some(status) => format!("failed with {status} after {elapsed:.1?}"),
            None => format!("timed out after {:?} (killed it)", self.timeout),
        };
        Err(format!(
            "`{}` {failure}\n---- its stdout ----\n{}\n---- its stderr ----\n{}\n---- end of its output ----",
            self.command_line(),
            lossy_tail(&stdout, TOOL_OUTPUT_TAIL_BYTES),
            lossy_tail(&stderr, TOOL_OUTPUT_TAIL_BYTES),
        ))
    }
}

/// Runs `program args…` with a time bound and returns its stdout as UTF-8;
/// panics with the tool's stdout and stderr if it fails or times out.
pub fn run_tool<I, S>(program: impl AsRef<OsStr>, args: I, timeout: Duration) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let tool = Tool::new(program).args(args).timeout(timeout);
    let output = tool.run();
    String::from_utf8(output.stdout)
        .unwrap_or_else(|err| panic!("`{}` wrote non-UTF-8 stdout: {err}", tool.command_line()))
}

/// [`run_tool`], returning stdout as bytes.
pub fn run_tool_bytes<I, S>(program: impl AsRef<OsStr>, args: I, timeout: Duration) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Tool::new(program).args(args).timeout(timeout).run().stdout
}

fn read_in_background(mut source: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = source.read_to_end(&mut buffer);
        buffer
    })
}

fn send_signal_to_group(pgid: u32, signal: libc::c_int) {
    let pgid = libc::pid_t::try_from(pgid).expect("pid fits in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn lossy_tail(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "[… {} earlier bytes left out …]\n{}",
        bytes.len() - max,
        String::from_utf8_lossy(&bytes[bytes.len() - max..])
    )
}

fn shell_quote(part: &str) -> String {
    let plain = !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        part.to_owned()
    } else {
        format!("'{}'", part.replace('\'', r"'\''"))
    }
}

/// Creates a file with `contents` in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file =
        File::create(&path).unwrap_or_else(|err| panic!("create {}: {err}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    path
}

// ---------------------------------------------------------------------------
// Shared by the interop and cluster tests
// ---------------------------------------------------------------------------

/// `count` distinct `key:value` lines. 101 keys repeat across the lines;
/// values hold the key separator, tabs, non-ASCII text and varying padding.
pub fn keyed_lines(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!(
                "k{:03}:line {i:05}: colon inside\tand a tab; ünïcødé ☃ {}",
                i % 101,
                "x".repeat(i * 7 % 61)
            )
        })
        .collect()
}

/// The lines, each ended by a newline, as one file's bytes.
pub fn lines_file(lines: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

/// The complete lines of a text still being written (a running client's
/// output): the last one is left out unless a newline ends it.
pub fn complete_lines(text: &str) -> Vec<&str> {
    text.rfind('\n')
        .map_or("", |end| &text[..end])
        .lines()
        .collect()
}

/// Bound on one [`kcat_read_all`].
const KCAT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Every record of `topic` read with kcat at an isolation level
/// (`read_committed` or `read_uncommitted`), from the beginning to each
/// partition's end (the last stable offset at read_committed):
/// (partition, offset, value), the value as kcat's `value_format` prints
/// it (`%s`, or `%k:%s` for key and value). Records must be UTF-8 without
/// newlines.
pub fn kcat_read_all(
    bootstrap: &str,
    topic: &str,
    isolation: &str,
    value_format: &str,
) -> Vec<(i32, i64, String)> {
    let isolation = format!("isolation.level={isolation}");
    let format = format!("%p %o {value_format}\n");
    let args = [
        "-C",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-X",
        &isolation,
        "-f",
        &format,
    ];
    let stdout = String::from_utf8(run_tool_bytes(kcat(), args, KCAT_READ_TIMEOUT))
        .expect("the records are UTF-8");
    complete_lines(&stdout)
        .into_iter()
        .map(|line| {
            partition_offset_value(line)
                .unwrap_or_else(|| panic!("kcat printed {line:?}, not `partition offset value`"))
        })
        .collect()
}

/// A `PARTITION OFFSET VALUE` line (as kcat's `-f '%p %o %s\n'` prints
/// one; the value may hold spaces), or `None` when it is not one.
pub fn partition_offset_value(line: &str) -> Option<(i32, i64, String)> {
    let mut words = line.splitn(3, ' ');
    let partition = words.next()?.parse().ok()?;
    let offset = words.next()?.parse().ok()?;
    Some((partition, offset, words.next()?.to_string()))
}

/// The partitions a `kcat -G` member last reported as assigned in its
/// stderr (eager rebalancing: an `assigned:` line lists them all,
/// `revoked:` takes them all away).
pub fn kcat_assigned(stderr: &str) -> std::collections::BTreeSet<i32> {
    let mut owned = std::collections::BTreeSet::new();
    for line in stderr.lines() {
        if let Some((_, list)) = line.split_once("assigned: ") {
            owned = list
                .split(", ")
                .filter_map(|item| {
                    let (_, partition) = item.trim().rsplit_once(" [")?;
                    partition.strip_suffix(']')?.parse().ok()
                })
                .collect();
        } else if line.contains("revoked: ") {
            owned.clear();
        }
    }
    owned
}

/// One poll of `sluice cluster quorum --json` against these addresses
/// (each asked with a 500 ms bound): the leader's answer, or why there was
/// none (no leader yet, nobody reachable).
pub fn poll_quorum(bootstrap: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    let run = run_sluice(
        &[
            "cluster",
            "quorum",
            "--json",
            "--bootstrap-server",
            bootstrap,
            "--request-timeout-ms",
            "500",
        ],
        None,
        timeout,
    );
    if !run.status.success() {
        return Err(String::from_utf8_lossy(&run.stderr).trim().to_string());
    }
    serde_json::from_slice(&run.stdout)
        .map_err(|error| format!("not JSON ({error}): {:?}", run.stdout))
}

// ---------------------------------------------------------------------------
// sarama (Go)
// ---------------------------------------------------------------------------

/// Where Debian's golang-*-dev packages put Go source: a GOPATH tree holding
/// sarama and its dependencies.
pub const DEBIAN_GOCODE: &str = "/usr/share/gocode";

/// Bound on building the sarama program (a cold build takes seconds).
pub const GO_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The sarama program, built on first use in this test process into
/// `target/sarama-interop/` (Go's build cache is there too, so later
/// processes rebuild in a fraction of a second). Panics with the install
/// hint when Go or sarama's source is missing: CI installs both.
pub fn sarama_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| build_sarama_program("sarama", "sarama-interop")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The program of `tests/interop/go/sarama_failover` (one sarama client
/// across a partition leader's death), built as [`sarama_bin`] builds its
/// own, beside it.
pub fn sarama_failover_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| build_sarama_program("sarama_failover", "sarama-failover")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Builds the Go program in `tests/interop/go/<source>` against Debian's
/// sarama into `target/sarama-interop/<name>`.
fn build_sarama_program(source: &str, name: &str) -> Result<PathBuf, String> {
    let go = find_in_path("go")
        .ok_or_else(|| format!("`go` is not on PATH (Debian's golang-go): {INSTALL_HINT}"))?;
    let sarama = Path::new(DEBIAN_GOCODE).join("src/github.com/Shopify/sarama");
    if !sarama.is_dir() {
        return Err(format!(
            "sarama's source is not in {} (Debian's golang-github-shopify-sarama-dev): {INSTALL_HINT}",
            sarama.display()
        ));
    }
    let build = workspace_root().join("target").join("sarama-interop");
    let gopath = build.join("gopath");
    fs::create_dir_all(&gopath).map_err(|err| format!("create {}: {err}", gopath.display()))?;
    let bin = build.join(name);
    // Built under a name of its own, then renamed: another test process may
    // be running the previous binary.
    let fresh = build.join(format!("{name}.{}", std::process::id()));
    let mut search_path = gopath.into_os_string();
    search_path.push(":");
    search_path.push(DEBIAN_GOCODE);
    Tool::new(go)
        .arg("build")
        .arg("-o")
        .arg(&fresh)
        .arg(".")
        .current_dir(interop_dir().join("go").join(source))
        // GOPATH mode over Debian's tree: no go.mod, no module proxy, no
        // network. Without cgo, sarama builds without DataDog/zstd's C code
        // (and without zstd, which no test uses), and no C compiler is needed.
        .env("GO111MODULE", "off")
        .env("GOPATH", search_path)
        .env("GOCACHE", build.join("gocache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOENV", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .timeout(GO_BUILD_TIMEOUT)
        .try_run()?;
    fs::rename(&fresh, &bin)
        .map_err(|err| format!("rename {} to {}: {err}", fresh.display(), bin.display()))?;
    Ok(bin)
}

// ---------------------------------------------------------------------------
// The metrics listener
// ---------------------------------------------------------------------------

/// One HTTP/1.0 GET on 127.0.0.1 (so no chunked answer): the status code
/// and the body, or why it failed.
pub fn http_get(port: u16, target: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect :{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no blank line after the head: {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of the one sample of Prometheus text whose name and labels
/// are exactly `series` (as in `sluice_partitions` or
/// `sluice_topic_records_in_total{topic="t"}`).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The `/metrics` text of a broker's metrics listener on `port`.
pub fn scrape_metrics(port: u16) -> Result<String, String> {
    match http_get(port, "/metrics")? {
        (200, text) => Ok(text),
        (status, body) => Err(format!("/metrics answered {status}: {body}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let stdout = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"sluice_core"},"executable":null,"fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"sluice"},"executable":"/w/t\"x\\y/debug/sluice","fresh":false}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n",
        );
        assert_eq!(
            executable_from_cargo_messages(stdout, "sluice"),
            Some(PathBuf::from("/w/t\"x\\y/debug/sluice"))
        );
        assert_eq!(executable_from_cargo_messages(stdout, "other"), None);
    }

    #[test]
    fn json_string_field_unescapes() {
        assert_eq!(
            json_string_field(r#"{"a":"x\u00e9\n\/"}"#, "a").as_deref(),
            Some("xé\n/")
        );
        assert_eq!(json_string_field(r#"{"a":null}"#, "a"), None);
        assert_eq!(json_string_field(r#"{"a":"unterminated"#, "a"), None);
    }

    #[test]
    fn renders_config_as_toml_with_quoted_keys() {
        let options = BrokerOptions::default()
            .config("num.partitions", 3)
            .config("log.segment.bytes", 1_048_576)
            .config("advertised.note", "a \"quoted\"\tvalue\\");
        let rendered = options.render(9092, Path::new("/tmp/data dir"));
        assert_eq!(
            rendered,
            concat!(
                "# Written by the sluice-tests harness.\n",
                "\"listeners\" = \"PLAINTEXT://127.0.0.1:9092\"\n",
                "\"log.dirs\" = \"/tmp/data dir\"\n",
                "\"auto.create.topics.enable\" = true\n",
                "\"num.partitions\" = 3\n",
                "\"node.id\" = 1\n",
                "\"log.segment.bytes\" = 1048576\n",
                "\"advertised.note\" = \"a \\\"quoted\\\"\\tvalue\\\\\"\n",
            )
        );
    }

    #[test]
    #[should_panic(expected = "set by the harness")]
    fn refuses_to_override_listeners() {
        let _ = BrokerOptions::default().config("listeners", "PLAINTEXT://0.0.0.0:1");
    }

    #[test]
    fn tool_returns_stdout() {
        let out = run_tool(
            "sh",
            ["-c", "printf 'a\\nb'; echo err >&2"],
            Duration::from_secs(10),
        );
        assert_eq!(out, "a\nb");
    }

    #[test]
    fn tool_failure_reports_output() {
        let err = Tool::new("sh")
            .args(["-c", "echo to-out; echo to-err >&2; exit 3"])
            .try_run()
            .unwrap_err();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("to-out") && err.contains("to-err"), "{err}");
    }

    #[test]
    fn tool_timeout_kills_the_process_group() {
        let started = Instant::now();
        let err = Tool::new("sh")
            .args(["-c", "echo started; sleep 30 & sleep 30"])
            .timeout(Duration::from_millis(300))
            .try_run()
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(err.contains("started"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote("-b"), "-b");
        assert_eq!(shell_quote("%k:%s\n"), "'%k:%s\n'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
