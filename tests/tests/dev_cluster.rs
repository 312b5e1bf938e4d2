//! `scripts/dev-cluster`, run as a newcomer runs it: it starts three nodes
//! and reports their leader, refuses to start a second time over them,
//! kills the leader and reports the new one, and stops every node it
//! started. And the example configs of `config/cluster/` describe one
//! cluster of three that `sluice serve` accepts.
//!
//! The script runs with the harness's `sluice` (`SLUICE_BIN`), so no
//! release build happens, on consecutive free ports and in a temporary
//! directory. What it reports is checked against `sluice cluster quorum
//! --json` and against the processes themselves.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{free_ports, poll_quorum, sluice_bin, workspace_root, Member, Tool, ToolOutput};
use tempfile::TempDir;

const NODES: u16 = 3;
/// The script's bound on each of its waits for the quorum
/// (`DEV_CLUSTER_WAIT_S`): the first election and catching up take about
/// 1-2 s, a re-election about 2-4 s (`tests/tests/cluster.rs`).
const SCRIPT_WAIT_S: &str = "12";
/// One run of the script: its wait, plus starting or stopping processes.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(16);
/// The whole script test, from the first start to the last stop.
const TEST_WITHIN: Duration = Duration::from_secs(30);
/// Polls of the quorum, as in `tests/tests/cluster.rs`.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the script's ports are picked: below Linux's ephemeral range, so
/// no outgoing connection takes one between the pick and the start.
const PORT_FIRST: u16 = 20_000;
const PORT_LAST: u16 = 32_000;
const PORT_ATTEMPTS_MAX: u32 = 200;

fn script() -> PathBuf {
    workspace_root().join("scripts").join("dev-cluster")
}

/// `scripts/dev-cluster args… --data DIR`, bounded, with the harness's
/// binary; its output, or the failure with the script's output.
fn dev_cluster(dir: &Path, args: &[&str]) -> Result<ToolOutput, String> {
    Tool::new(script())
        .args(args)
        .arg("--data")
        .arg(dir)
        .env("SLUICE_BIN", sluice_bin())
        .env("DEV_CLUSTER_WAIT_S", SCRIPT_WAIT_S)
        .timeout(SCRIPT_TIMEOUT)
        .try_run()
}

fn stdout_of(output: &ToolOutput) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first of `count` consecutive ports on 127.0.0.1, all free a moment
/// ago (held together while checked).
fn free_port_run(count: u16) -> u16 {
    let span = u32::from(PORT_LAST - PORT_FIRST - count);
    let seed = std::process::id();
    for attempt in 0..PORT_ATTEMPTS_MAX {
        let offset = seed.wrapping_add(attempt.wrapping_mul(7_919)) % span;
        let base = PORT_FIRST + u16::try_from(offset).expect("offset below the span");
        let held: Result<Vec<TcpListener>, _> = (0..count)
            .map(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no {count} consecutive free ports in {PORT_FIRST}..{PORT_LAST}");
}

/// Process `pid` exists and is not a zombie (this machine's init may reap
/// late; a zombie holds no port, file or lock).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Every live process whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && alive(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn pid_of(dir: &Path, node: u16) -> u32 {
    let path = dir.join(format!("node-{node}.pid"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// The integer after `label` on the first line holding it, as in
/// `LeaderId:  3` or `Node 2 leads`.
fn number_after(text: &str, label: &str) -> i64 {
    text.lines()
        .find_map(|line| {
            let rest = &line[line.find(label)? + label.len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no number after {label:?} in:\n{text}"))
}

fn quorum(bootstrap: &str) -> Result<Value, String> {
    poll_quorum(bootstrap, POLL_TIMEOUT)
}

/// Polls the quorum until `done`; panics past `within` with the last answer.
fn wait_for_quorum(bootstrap: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let last = match quorum(bootstrap) {
            Ok(answer) if done(&answer) => return answer,
            Ok(answer) => answer.to_string(),
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "not within {within:?}; last poll: {last}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The uncommented `"key" = value` lines of a config file.
fn config_entries(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (key, value) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("{}: not `key = value`: {line}", path.display()));
            (
                key.trim_matches('"').to_string(),
                value.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

/// The script's directory; on drop, SIGKILLs whatever of its nodes still
/// runs, and while panicking prints the nodes' logs and keeps the directory.
struct ClusterDir {
    dir: Option<TempDir>,
}

impl ClusterDir {
    fn path(&self) -> &Path {
        self.dir.as_ref().expect("the directory").path()
    }
}

impl Drop for ClusterDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        for (pid, _) in processes_mentioning(dir.path()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::pid_t::try_from(pid).expect("pid fits"), libc::SIGKILL);
            }
        }
        if std::thread::panicking() {
            for node in 1..=NODES {
                let log = dir.path().join(format!("node-{node}.log"));
                let text = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!("---- the end of {} ----", log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

#[test]
fn the_script_starts_a_cluster_kills_its_leader_and_stops_it() {
    let base_port = free_port_run(NODES);
    let cluster = ClusterDir {
        dir: Some(TempDir::new().expect("a temporary directory")),
    };
    let dir = cluster.path().to_path_buf();
    let addresses: Vec<String> = (0..NODES)
        .map(|i| format!("127.0.0.1:{}", base_port + i))
        .collect();
    let bootstrap = addresses.join(",");
    sluice_bin(); // a build, if any, before the clock starts
    let started = Instant::now();

    // Start: the script waits for a leader and every voter caught up.
    let base_port_text = base_port.to_string();
    let start_args = ["--nodes", "3", "--base-port", base_port_text.as_str()];
    let output = dev_cluster(&dir, &start_args).unwrap_or_else(|e| panic!("{e}"));
    let start = stdout_of(&output);
    assert!(
        start.contains(&format!("Bootstrap servers: {bootstrap}")),
        "{start}"
    );
    assert!(start.contains("all 3 voters caught up"), "{start}");
    let leader = number_after(&start, "LeaderId:");
    assert!((1..=3).contains(&leader), "{start}");
    let answer = quorum(&bootstrap).expect("the quorum answers once the script says so");
    assert_eq!(answer["leader_id"], leader, "{answer}");
    assert_eq!(
        answer["voters"].as_array().map(Vec::len),
        Some(3),
        "{answer}"
    );
    let epoch = answer["leader_epoch"].as_i64().expect("an epoch");
    let pids: Vec<u32> = (1..=NODES).map(|node| pid_of(&dir, node)).collect();
    assert!(pids.iter().all(|&pid| alive(pid)), "{pids:?}");
    eprintln!("{start}");

    // The configs it wrote have the keys the examples explain.
    let written = config_entries(&dir.join("node-1.toml"));
    let example = config_entries(&workspace_root().join("config/cluster/node-1.toml"));
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        example.keys().collect::<Vec<_>>()
    );

    // A second start over the running cluster is refused in one line, and
    // leaves the nodes alone.
    let refused = dev_cluster(&dir, &start_args).expect_err("a second start must fail");
    assert!(refused.contains("exit status: 1"), "{refused}");
    assert!(refused.contains("a cluster already runs in"), "{refused}");
    assert_eq!(refused.matches("dev-cluster:").count(), 1, "{refused}");
    assert_eq!(
        (1..=NODES)
            .map(|node| pid_of(&dir, node))
            .collect::<Vec<_>>(),
        pids
    );

    // Kill the leader: the script waits for the others to elect another.
    let leader_text = leader.to_string();
    let output =
        dev_cluster(&dir, &["kill", leader_text.as_str()]).unwrap_or_else(|e| panic!("{e}"));
    let kill = stdout_of(&output);
    let leader_pid = pids[usize::try_from(leader - 1).expect("a node number")];
    assert!(
        kill.contains(&format!("Killed node {leader} (pid {leader_pid})")),
        "{kill}"
    );
    assert!(!alive(leader_pid), "{kill}");
    let reported = number_after(&kill, "Node ");
    assert_ne!(reported, leader, "{kill}");
    assert!((1..=3).contains(&reported), "{kill}");
    eprintln!("{kill}");
    // And the survivors agree, asked directly.
    let survivors = (1..=i64::from(NODES))
        .filter(|&node| node != leader)
        .map(|node| addresses[usize::try_from(node - 1).expect("a node number")].clone())
        .collect::<Vec<_>>()
        .join(",");
    let elected = wait_for_quorum(&survivors, SCRIPT_TIMEOUT, |answer| {
        answer["leader_id"]
            .as_i64()
            .is_some_and(|id| id != leader && id >= 1)
            && answer["leader_epoch"].as_i64() > Some(epoch)
    });
    eprintln!(
        "new leader {} in epoch {} (was {leader} in {epoch})",
        elected["leader_id"], elected["leader_epoch"]
    );

    // Stop: every node it started is gone, and so are the pid files.
    let output = dev_cluster(&dir, &["stop"]).unwrap_or_else(|e| panic!("{e}"));
    let stop = stdout_of(&output);
    assert!(stop.starts_with("Stopped nodes "), "{stop}");
    for &pid in &pids {
        assert!(!alive(pid), "pid {pid} outlived `dev-cluster stop`: {stop}");
    }
    assert_eq!(processes_mentioning(&dir), Vec::new(), "{stop}");
    for node in 1..=NODES {
        assert!(!dir.join(format!("node-{node}.pid")).exists(), "{stop}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < TEST_WITHIN, "took {elapsed:?}");
}

#[test]
fn the_example_configs_describe_one_cluster_of_three() {
    let examples = workspace_root().join("config").join("cluster");
    let voters = "1@127.0.0.1:9092,2@127.0.0.1:9093,3@127.0.0.1:9094";
    for node in 1..=NODES {
        let path = examples.join(format!("node-{node}.toml"));
        let entries = config_entries(&path);
        let expect = |key: &str, value: String| {
            assert_eq!(entries.get(key), Some(&value), "{}: {key}", path.display());
        };
        expect("node.id", node.to_string());
        expect("process.roles", "broker,controller".into());
        expect(
            "listeners",
            format!("PLAINTEXT://127.0.0.1:{}", 9091 + node),
        );
        expect("log.dirs", format!("./cluster-data/node-{node}"));
        expect("controller.quorum.voters", voters.into());
        assert_eq!(entries.len(), 5, "{}: {entries:?}", path.display());
    }

    // `sluice serve` accepts node 1's file, with its commented-out timings
    // switched on too; on a free port and alone, so that it cannot reach a
    // cluster that may run on 9092-9094.
    let dir = TempDir::new().expect("a temporary directory");
    let text = fs::read_to_string(examples.join("node-1.toml")).expect("node-1.toml");
    let uncommented = text.replace("# \"", "\"");
    assert!(
        uncommented.matches("timeout.ms\" =").count() >= 3,
        "{uncommented}"
    );
    let config = dir.path().join("node-1.toml");
    fs::write(&config, uncommented).expect("write the config");
    let port = free_ports(1)[0];
    let args: Vec<String> = [
        "serve".to_string(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--override".into(),
        format!("listeners=PLAINTEXT://127.0.0.1:{port}"),
        "--override".into(),
        format!("log.dirs={}", dir.path().join("data").display()),
        "--override".into(),
        format!("controller.quorum.voters=1@127.0.0.1:{port}"),
    ]
    .into();
    let mut node = Member::spawn(sluice_bin(), &args, dir.path(), "node-1");
    let deadline = Instant::now() + POLL_TIMEOUT;
    while !node.stderr().contains("serving") {
        node.fail_if_exited();
        assert!(Instant::now() < deadline, "not serving:\n{}", node.stderr());
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(node.terminate(POLL_TIMEOUT).success(), "{}", node.stderr());
}
