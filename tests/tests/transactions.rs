//! Kafka transactions with real clients against real `sluice` processes.
//!
//! The scripts in `tests/interop/transactions/` drive the clients; each
//! checks what it can see and prints one `<name>: OK ...` line whose counts
//! the tests here compare with their own reckoning, so a broker that
//! shows a wrong record, or the right ones in the wrong number, fails:
//! - commit seen, abort hidden: confluent-kafka, kafka-python and KafkaJS
//!   each run the same plan of committed and aborted transactions over
//!   three partitions and read it back at read_committed (the committed
//!   records only) and at read_uncommitted (every record, proving the
//!   aborted ones were written); each partition ends after its records
//!   plus one marker per transaction;
//! - consume-transform-produce (confluent-kafka): a copier reads a group at
//!   read_committed and writes copies with the group's offsets in each
//!   transaction, aborting every third on purpose and seeking back; every
//!   input record is copied exactly once and the group's offsets end at the
//!   input's end (also checked with `sluice groups describe`);
//! - consume-transform-produce through kills (confluent-kafka, on one
//!   node and on three): a worker with a stable transactional id copies
//!   100,000 records, each transaction one consume batch with the group's
//!   offsets; its first instance is killed with SIGKILL holding a
//!   transaction open (which the broker shows open, its offsets not
//!   visible to the group), the second is killed wherever it is, the third
//!   runs to the end; read_committed then holds every input exactly once,
//!   read_uncommitted the held transaction's aborted copies too, and the
//!   group's offsets are the input's ends;
//! - fencing (confluent-kafka): a second instance of a transactional id
//!   makes the first one's commit fail with a fatal _FENCED error; a
//!   producer killed with SIGKILL mid-transaction holds the last stable
//!   offset until the next instance's init_transactions aborts its
//!   transaction, after which read_committed consumers read past it;
//! - timeout: a killed producer's transaction is aborted by the broker once
//!   its transaction.timeout.ms passed (the sweep runs every 500 ms here),
//!   and a read_committed consumer waiting behind it gets through;
//! - on three brokers (the harness's `Cluster`, with short sessions), a
//!   transactional producer writes every partition of a topic whose
//!   partitions are led by all three brokers, so markers travel as
//!   WriteTxnMarkers, and keeps going while the transaction coordinator,
//!   or the leader of one of the partitions, is killed with SIGKILL; no
//!   committed transaction is lost or torn and no aborted one is visible.
//!   A test of the transaction log's creation through a node that is not
//!   the controller stands apart.
//!
//! Single steps of a producer that the test kills, or that must outlive a
//! broker, come from `confluent_txn_tool.py`, one process each. Nothing
//! waits a fixed time: every wait polls for its event against a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_core::broker::txns::txn_partition;
use sluice_tests::cluster::{
    find_coordinator, metadata, short_sessions, Cluster, PartitionView, NODES, TRANSACTION_KEY,
};
use sluice_tests::wire::Wire;
use sluice_tests::{
    complete_lines, interop_node_modules, interop_script, kcat_read_all, metric_sample, node,
    partition_offset_value, run_sluice, sluice_stdout, venv_python, Broker, BrokerOptions, Member,
    Tool,
};

/// Bound on one script, and the script's own deadline in seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const SCRIPT_DEADLINE_SECS: &str = "50";

/// Bound on one `sluice` command.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Partitions of every topic here.
const PARTITIONS: i32 = 3;

/// The plan the three clients run: committed and aborted transactions of
/// various sizes, two aborts in a row, and an abort last.
const PLAN: &str = "commit:100,abort:100,commit:50,abort:20,abort:10,commit:30,abort:25";

/// From a commit (or abort) being answered to its markers written on every
/// partition, so that the last stable offset is the high watermark.
const MARKERS_WITHIN: Duration = Duration::from_secs(15);

/// From a tool's start to the line it is waited for.
const TOOL_WITHIN: Duration = Duration::from_secs(30);

/// The pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// ListOffsets isolation levels.
const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A single broker whose groups form at once.
fn txn_broker(options: BrokerOptions) -> Broker {
    Broker::start(options.config("group.initial.rebalance.delay.ms", 0))
}

/// Runs a script of `tests/interop/transactions/` and returns its OK line.
fn run_script(program: &Path, script: &str, args: &[&str]) -> String {
    let tool = Tool::new(program)
        .arg(interop_script(&format!("transactions/{script}")))
        .args(args)
        .args(["--timeout", SCRIPT_DEADLINE_SECS])
        .timeout(SCRIPT_TIMEOUT);
    let output = tool.run();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let name = script.split('.').next().expect("a script name");
    let summary = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{name}: OK")))
        .unwrap_or_else(|| {
            panic!(
                "`{}` exited 0 without its OK line; stdout:\n{stdout}\nstderr:\n{}",
                tool.command_line(),
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned();
    println!("{summary} ({:.1?})", output.elapsed);
    summary
}

/// What [`PLAN`] must show, reckoned here: the transactions, the records of
/// the committed ones and of all, and each partition's log end (records
/// round robin over the partitions, plus a marker per transaction that
/// wrote there).
fn plan_summary(plan: &str) -> String {
    let mut committed_txns = 0;
    let mut committed_records = 0;
    let mut records = 0;
    let mut ends = vec![0usize; PARTITIONS as usize];
    for item in plan.split(',') {
        let (outcome, count) = item.split_once(':').expect("outcome:count");
        let count: usize = count.parse().expect("a record count");
        let mut touched = BTreeSet::new();
        for index in records..records + count {
            let partition = index % PARTITIONS as usize;
            ends[partition] += 1;
            touched.insert(partition);
        }
        for partition in touched {
            ends[partition] += 1;
        }
        records += count;
        if outcome == "commit" {
            committed_txns += 1;
            committed_records += count;
        }
    }
    let txns = plan.split(',').count();
    format!(
        "{txns} transactions ({committed_txns} committed, {} aborted): read_committed \
         {committed_records} read_uncommitted {records} log_ends {ends:?}",
        txns - committed_txns
    )
}

fn create_topic(broker: &Broker, topic: &str) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    let error = wire.create_topic(topic, PARTITIONS).expect("CreateTopics");
    assert_eq!(error, 0, "CreateTopics {topic} failed with {error}");
}

/// Each partition's end at an isolation level, asked of `bootstrap` (which
/// must lead every partition).
fn end_offsets(bootstrap: &str, topic: &str, partitions: &[i32], isolation: i8) -> Vec<i64> {
    let mut wire = Wire::connect(bootstrap).expect("connect to the broker");
    wire.end_offsets(topic, partitions, isolation)
        .expect("ListOffsets")
        .into_iter()
        .zip(partitions)
        .map(|((error, offset), partition)| {
            assert_eq!(
                error, 0,
                "ListOffsets of {topic}/{partition}: error {error}"
            );
            offset
        })
        .collect()
}

fn all_partitions() -> Vec<i32> {
    (0..PARTITIONS).collect()
}

/// Polls `probe` until it answers `Ok`; panics past `within` with its last
/// error.
fn wait_until<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; last poll: {last}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until no transaction holds any partition back (the last stable
/// offset is the high watermark everywhere); the high watermarks then.
fn wait_until_stable(broker: &Broker, topic: &str) -> Vec<i64> {
    let partitions = all_partitions();
    wait_until(
        MARKERS_WITHIN,
        &format!("{topic}: last stable offsets at the high watermarks"),
        || {
            let high = end_offsets(&broker.bootstrap(), topic, &partitions, READ_UNCOMMITTED);
            let stable = end_offsets(&broker.bootstrap(), topic, &partitions, READ_COMMITTED);
            if high == stable {
                Ok(high)
            } else {
                Err(format!(
                    "high watermarks {high:?}, last stable offsets {stable:?}"
                ))
            }
        },
    )
}

/// `confluent_txn_tool.py STEP --bootstrap B --topic T ARGS…`.
fn tool_args(step: &str, bootstrap: &str, topic: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        interop_script("transactions/confluent_txn_tool.py")
            .display()
            .to_string(),
        step.to_string(),
        "--bootstrap".into(),
        bootstrap.to_string(),
        "--topic".into(),
        topic.to_string(),
        "--partitions".into(),
        PARTITIONS.to_string(),
    ];
    all.extend(args.iter().map(|arg| arg.to_string()));
    all
}

/// Runs a step of the tool to its end; its stdout lines.
fn run_tool_step(bootstrap: &str, topic: &str, step: &str, args: &[&str]) -> Vec<String> {
    let output = Tool::new(venv_python())
        .args(tool_args(step, bootstrap, topic, args))
        .timeout(SCRIPT_TIMEOUT)
        .run();
    String::from_utf8(output.stdout)
        .expect("the tool prints UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// A record as the tool printed it: (partition, offset, value).
type Printed = (i32, i64, String);

/// The `record P OFFSET VALUE` lines among a tool's lines.
fn printed_records(lines: &[String]) -> Vec<Printed> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("record "))
        .map(|rest| {
            partition_offset_value(rest)
                .unwrap_or_else(|| panic!("the tool printed `record {rest}`"))
        })
        .collect()
}

/// The `eof P OFFSET` lines of a read, by partition.
fn printed_eofs(lines: &[String]) -> Vec<i64> {
    let mut eofs = vec![-1; PARTITIONS as usize];
    for rest in lines.iter().filter_map(|line| line.strip_prefix("eof ")) {
        let (partition, offset) = rest.split_once(' ').expect("eof P OFFSET");
        eofs[partition.parse::<usize>().expect("a partition")] = offset.parse().expect("an offset");
    }
    eofs
}

/// Reads the whole topic at an isolation level with the tool; the records
/// and where each partition's read ended.
fn read_topic(bootstrap: &str, topic: &str, isolation: &str) -> (Vec<Printed>, Vec<i64>) {
    let lines = run_tool_step(
        bootstrap,
        topic,
        "read",
        &["--isolation", isolation, "--max-seconds", "30"],
    );
    (printed_records(&lines), printed_eofs(&lines))
}

/// The values of each partition, in the order read.
fn values_by_partition<'a>(records: impl IntoIterator<Item = &'a Printed>) -> Vec<Vec<String>> {
    let mut by_partition = vec![Vec::new(); PARTITIONS as usize];
    for (partition, _, value) in records {
        by_partition[*partition as usize].push(value.clone());
    }
    by_partition
}

/// Records per partition.
fn counts(records: &[Printed]) -> Vec<i64> {
    let mut counts = vec![0; PARTITIONS as usize];
    for (partition, _, _) in records {
        counts[*partition as usize] += 1;
    }
    counts
}

/// Polls a member's stdout until a line equals `line`; its complete lines
/// then. Panics if the member exits first or the bound passes.
fn wait_for_line(member: &mut Member, line: &str, within: Duration) -> Vec<String> {
    wait_until(within, &format!("`{line}` from {}", member.name()), || {
        member.fail_if_exited();
        let stdout = member.stdout();
        let lines = complete_lines(&stdout);
        if lines.contains(&line) {
            Ok(lines.into_iter().map(str::to_string).collect())
        } else {
            Err(format!("{} lines so far", lines.len()))
        }
    })
}

/// A test's directory for its clients' output, kept (and named) when the
/// test fails.
struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    fn new() -> WorkDir {
        WorkDir(Some(
            tempfile::Builder::new()
                .prefix("sluice-txn-clients-")
                .tempdir()
                .expect("a work directory"),
        ))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("kept until dropped").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("(the clients' output is kept in {})", dir.keep().display());
            }
        }
    }
}

/// The first offset of the records on each partition.
fn first_offsets(records: &[Printed]) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            records
                .iter()
                .filter(|(partition, _, _)| *partition == p)
                .map(|(_, offset, _)| *offset)
                .min()
                .unwrap_or_else(|| panic!("no record on partition {p}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Commit seen, abort hidden: three clients
// ---------------------------------------------------------------------------

fn commit_abort(program: &Path, script: &str, topic: &str) {
    let broker = txn_broker(BrokerOptions::default());
    let summary = run_script(
        program,
        script,
        &[
            "--bootstrap",
            &broker.bootstrap(),
            "--topic",
            topic,
            "--partitions",
            &PARTITIONS.to_string(),
            "--plan",
            PLAN,
        ],
    );
    let wanted = plan_summary(PLAN);
    assert!(
        summary.contains(&wanted),
        "{script} did not see what the plan must show ({wanted}): {summary}"
    );
    // The broker agrees: nothing left open, the log ends where reckoned.
    let ends = wait_until_stable(&broker, topic);
    assert!(
        wanted.ends_with(&format!("log_ends {ends:?}")),
        "the log ends at {ends:?}; the plan: {wanted}"
    );
}

#[test]
fn confluent_kafka_commit_is_seen_and_abort_hidden() {
    commit_abort(
        &venv_python(),
        "confluent_commit_abort.py",
        "confluent-commit-abort",
    );
}

#[test]
fn kafka_python_commit_is_seen_and_abort_hidden() {
    commit_abort(
        &venv_python(),
        "kafka_python_commit_abort.py",
        "kafka-python-commit-abort",
    );
}

#[test]
fn kafkajs_commit_is_seen_and_abort_hidden() {
    interop_node_modules();
    commit_abort(&node(), "kafkajs_commit_abort.js", "kafkajs-commit-abort");
}

// ---------------------------------------------------------------------------
// Consume-transform-produce
// ---------------------------------------------------------------------------

#[test]
fn confluent_kafka_copier_copies_each_record_exactly_once_through_aborts() {
    const RECORDS: usize = 900;
    let broker = txn_broker(BrokerOptions::default());
    let (input, output, group) = ("copier-input", "copier-output", "copier");
    let summary = run_script(
        &venv_python(),
        "confluent_copier.py",
        &[
            "--bootstrap",
            &broker.bootstrap(),
            "--input",
            input,
            "--output",
            output,
            "--group",
            group,
            "--partitions",
            &PARTITIONS.to_string(),
            "--records",
            &RECORDS.to_string(),
            "--batch",
            "40",
            "--abort-every",
            "3",
        ],
    );
    let per_partition = (RECORDS / PARTITIONS as usize) as i64;
    let input_ends = vec![per_partition; PARTITIONS as usize];
    for part in [
        format!("{RECORDS} input records copied exactly once"),
        format!("output read_committed {RECORDS} "),
        format!("committed offsets {input_ends:?} = input log ends"),
    ] {
        assert!(
            summary.contains(&part),
            "the summary lacks `{part}`: {summary}"
        );
    }
    assert!(
        !summary.contains(" 0 aborted"),
        "the copier aborted nothing: {summary}"
    );

    // The broker's own view of the group: empty, committed at the input's
    // end, no lag; and nothing open on the output.
    let described: Value = serde_json::from_slice(&sluice_stdout(
        &broker.bootstrap(),
        &["groups", "describe", group, "--json"],
    ))
    .expect("`sluice groups describe --json` prints JSON");
    assert_eq!(described["state"], "Empty", "{described}");
    let rows: Vec<&Value> = described["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions array: {described}"))
        .iter()
        .filter(|row| row["topic"] == input)
        .collect();
    assert_eq!(rows.len(), PARTITIONS as usize, "{described}");
    for row in rows {
        assert_eq!(
            (
                &row["committed_offset"],
                &row["log_end_offset"],
                &row["lag"]
            ),
            (&json!(per_partition), &json!(per_partition), &json!(0)),
            "{input}/{}: {described}",
            row["partition"]
        );
    }
    wait_until_stable(&broker, output);
}

// ---------------------------------------------------------------------------
// Consume-transform-produce through worker kills
// ---------------------------------------------------------------------------

/// Input records of the worker runs, round robin over [`PARTITIONS`].
const CTP_RECORDS: usize = 100_000;

/// Most records in one of the worker's transactions (one consume batch).
const CTP_BATCH: usize = 1_000;

/// The first instance leaves its transaction of this number open (after
/// as many commits) and is killed while it is.
const CTP_HOLD_AT: usize = 20;

/// The second instance is killed wherever it is once it has committed
/// this many transactions.
const CTP_COMMITS_BEFORE_KILL: usize = 20;

/// Bound on the fill, and its own deadline in seconds.
const CTP_FILL_TIMEOUT: Duration = Duration::from_secs(120);
const CTP_FILL_DEADLINE_SECS: &str = "110";

/// Bound on an instance reaching the point it is waited for (the last one:
/// its exit), and its own deadline in seconds.
const CTP_INSTANCE_WITHIN: Duration = Duration::from_secs(150);
const CTP_INSTANCE_DEADLINE_SECS: &str = "140";

/// What one instance of `confluent_ctp_worker.py work` printed.
#[derive(Debug, Default)]
struct WorkerReport {
    /// Each commit: its number, its records and the positions committed.
    commits: Vec<(usize, usize, BTreeMap<i32, i64>)>,
    /// The transaction left open: its number, records and positions sent.
    holding: Option<(usize, usize, BTreeMap<i32, i64>)>,
    /// The closing line: transactions and records of the instance.
    done: Option<(usize, usize)>,
}

fn parse_worker_report(stdout: &str) -> WorkerReport {
    let bad = |line: &str| -> ! { panic!("the worker printed {line:?}") };
    let mut report = WorkerReport::default();
    for line in complete_lines(stdout) {
        let words: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| -> usize {
            words
                .get(i)
                .and_then(|word| word.parse().ok())
                .unwrap_or_else(|| bad(line))
        };
        let positions = || -> BTreeMap<i32, i64> {
            let list = words.get(3).unwrap_or_else(|| bad(line));
            list.split(',')
                .map(|pair| {
                    let (partition, offset) = pair.split_once(':').unwrap_or_else(|| bad(line));
                    match (partition.parse(), offset.parse()) {
                        (Ok(p), Ok(o)) => (p, o),
                        _ => bad(line),
                    }
                })
                .collect()
        };
        match words[0] {
            "commit" => report.commits.push((number(1), number(2), positions())),
            "holding" => report.holding = Some((number(1), number(2), positions())),
            "done" => report.done = Some((number(1), number(2))),
            _ => bad(line),
        }
    }
    report
}

/// Where the worker runs: its brokers' addresses, the replicas of its
/// topics, whether its instances are static group members, and how to wait
/// until no transaction holds a topic back (the high watermarks then).
struct CtpTarget<'a> {
    bootstrap: String,
    replication: i32,
    static_member: bool,
    wait_until_stable: &'a dyn Fn(&str) -> Vec<i64>,
}

/// `confluent_ctp_worker.py STEP --bootstrap B --input I --output O ARGS…`.
fn ctp_args(
    step: &str,
    target: &CtpTarget,
    input: &str,
    output: &str,
    args: &[&str],
) -> Vec<String> {
    let mut all = vec![
        interop_script("transactions/confluent_ctp_worker.py")
            .display()
            .to_string(),
        step.to_string(),
        "--bootstrap".into(),
        target.bootstrap.clone(),
        "--input".into(),
        input.to_string(),
        "--output".into(),
        output.to_string(),
        "--partitions".into(),
        PARTITIONS.to_string(),
    ];
    all.extend(args.iter().map(|arg| arg.to_string()));
    all
}

/// Polls an instance's report until `ready` accepts it; panics if the
/// instance exits first or the bound passes.
fn wait_for_report(
    worker: &mut Member,
    what: &str,
    ready: impl Fn(&WorkerReport) -> bool,
) -> WorkerReport {
    wait_until(CTP_INSTANCE_WITHIN, what, || {
        worker.fail_if_exited();
        let report = parse_worker_report(&worker.stdout());
        if ready(&report) {
            Ok(report)
        } else {
            Err(format!("{} commits so far", report.commits.len()))
        }
    })
}

/// The group's committed offsets on `topic`, by partition, as `sluice
/// groups describe --json` shows them (partitions without one left out),
/// and the lag of each.
fn described_offsets(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let described: Value = serde_json::from_slice(&sluice_stdout(
        bootstrap,
        &["groups", "describe", group, "--json"],
    ))
    .expect("`sluice groups describe --json` prints JSON");
    described["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions array: {described}"))
        .iter()
        .filter(|row| row["topic"] == topic)
        .filter_map(|row| {
            let partition = row["partition"].as_i64()? as i32;
            let committed = row["committed_offset"].as_i64().filter(|&o| o >= 0)?;
            Some((partition, (committed, row["lag"].as_i64().unwrap_or(-1))))
        })
        .collect()
}

/// The input record `(partition, offset)` a copy names, checked to sit in
/// the partition of its input and to carry that input's value.
fn copied_input(isolation: &str, (partition, offset, value): &Printed) -> (i32, i64) {
    let parsed = value.strip_prefix("copy ").and_then(|rest| {
        let (position, input) = rest.split_once(' ')?;
        let (p, o) = position.split_once('/')?;
        let (p, o): (i32, i64) = (p.parse().ok()?, o.parse().ok()?);
        let (input_p, input_o) = input.strip_prefix("in-")?.split_once('-')?;
        let same = input_p.parse() == Ok(p) && input_o.parse() == Ok(o);
        same.then_some((p, o))
    });
    match parsed {
        Some((p, o)) if p == *partition => (p, o),
        _ => panic!(
            "{isolation}: output {partition}/{offset} holds {value:?}, not the copy of an input \
             record of partition {partition}"
        ),
    }
}

/// How many copies of each input record `records` hold.
fn copies_by_input(isolation: &str, records: &[Printed]) -> BTreeMap<(i32, i64), usize> {
    let mut copies = BTreeMap::new();
    for record in records {
        *copies.entry(copied_input(isolation, record)).or_default() += 1;
    }
    copies
}

/// The transaction the first instance held open when it was killed: its
/// records and the positions it sent, and the positions committed before.
struct Held {
    records: usize,
    positions: BTreeMap<i32, i64>,
    committed_before: BTreeMap<i32, i64>,
}

impl Held {
    /// The input records it copied, by partition and offset.
    fn inputs(&self) -> Vec<(i32, i64)> {
        self.positions
            .iter()
            .flat_map(|(&p, &end)| {
                let start = self.committed_before.get(&p).copied().unwrap_or(0);
                (start..end).map(move |o| (p, o))
            })
            .collect()
    }
}

/// One run of the worker over an input topic: three instances of one
/// transactional id and group, their output kept in a work directory.
struct CtpRun<'a> {
    target: &'a CtpTarget<'a>,
    name: &'a str,
    input: String,
    output: String,
    group: String,
    transactional_id: String,
    work: WorkDir,
}

impl CtpRun<'_> {
    /// Creates the topics and fills the input; its ends.
    fn fill(&self) -> BTreeMap<i32, i64> {
        let args = [
            "--replication",
            &self.target.replication.to_string(),
            "--records",
            &CTP_RECORDS.to_string(),
            "--timeout",
            CTP_FILL_DEADLINE_SECS,
        ];
        let fill = Tool::new(venv_python())
            .args(ctp_args(
                "fill",
                self.target,
                &self.input,
                &self.output,
                &args,
            ))
            .timeout(CTP_FILL_TIMEOUT)
            .run();
        let filled = String::from_utf8(fill.stdout).expect("the fill prints UTF-8");
        let ends: BTreeMap<i32, i64> = complete_lines(&filled)
            .iter()
            .map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
                ["filled", p, end] => (
                    p.parse().expect("a partition"),
                    end.parse().expect("an end"),
                ),
                _ => panic!("the fill printed {line:?}"),
            })
            .collect();
        let (records, partitions) = (CTP_RECORDS as i64, i64::from(PARTITIONS));
        let wanted: BTreeMap<i32, i64> = (0..PARTITIONS)
            .map(|p| {
                let first = i64::from(p) < records % partitions;
                (p, records / partitions + i64::from(first))
            })
            .collect();
        assert_eq!(ends, wanted, "the input's ends after the fill");
        eprintln!(
            "{}: {CTP_RECORDS} input records in {:.1?}",
            self.name, fill.elapsed
        );
        ends
    }

    fn spawn(&self, instance: usize, hold_at: Option<usize>) -> Member {
        let batch = CTP_BATCH.to_string();
        let hold_at = hold_at.map(|n| n.to_string());
        let mut args = vec![
            "--group",
            &self.group,
            "--transactional-id",
            &self.transactional_id,
            "--batch",
            &batch,
            "--timeout",
            CTP_INSTANCE_DEADLINE_SECS,
        ];
        if self.target.static_member {
            args.push("--static-member");
        }
        if let Some(n) = &hold_at {
            args.extend(["--hold-at", n]);
        }
        Member::spawn(
            venv_python(),
            &ctp_args("work", self.target, &self.input, &self.output, &args),
            self.work.path(),
            &format!("worker-{instance}"),
        )
    }

    /// The first instance, killed while it holds a transaction open: the
    /// broker shows it open on the partitions it wrote, and the group the
    /// offsets of the last commit. The held transaction, and the records
    /// the instance committed.
    fn first_instance(&self) -> (Held, usize) {
        let mut first = self.spawn(1, Some(CTP_HOLD_AT));
        let report = wait_for_report(
            &mut first,
            "the first instance holding a transaction",
            |r| r.holding.is_some(),
        );
        let (number, records, positions) = report.holding.clone().expect("waited for");
        let numbers: Vec<usize> = report.commits.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(
            (numbers, number),
            ((0..CTP_HOLD_AT).collect(), CTP_HOLD_AT),
            "the first instance commits transactions 0 to {} and holds the next",
            CTP_HOLD_AT - 1
        );
        let committed_before = report.commits.last().expect("commits").2.clone();
        let held = Held {
            records,
            positions,
            committed_before,
        };
        let described = transactions_describe(&self.target.bootstrap, &self.transactional_id);
        assert_eq!(described["state"], "Ongoing", "{described}");
        let open: BTreeSet<i32> = described["partitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no partitions: {described}"))
            .iter()
            .filter(|tp| tp["topic"] == self.output.as_str())
            .filter_map(|tp| tp["partition"].as_i64().map(|p| p as i32))
            .collect();
        let written: BTreeSet<i32> = held.inputs().iter().map(|(p, _)| *p).collect();
        assert_eq!(
            open, written,
            "the open transaction's output partitions, wanted those of its inputs: {described}"
        );
        let visible: BTreeMap<i32, i64> = self
            .described_offsets()
            .into_iter()
            .map(|(p, (offset, _))| (p, offset))
            .collect();
        assert_eq!(
            visible, held.committed_before,
            "while a transaction with offsets {:?} is open, the group shows the last commit's",
            held.positions
        );
        first.kill();
        eprintln!(
            "{}: killed the first instance after {} commits, holding {} copies",
            self.name,
            report.commits.len(),
            held.records
        );
        (held, committed_records(&report))
    }

    /// The second instance, killed wherever it is once it has committed
    /// some; it must have started where the first one's last commit left
    /// the group. The records it reported committed.
    fn second_instance(&self, held: &Held) -> usize {
        let mut second = self.spawn(2, None);
        wait_for_report(&mut second, "commits of the second instance", |r| {
            r.commits.len() >= CTP_COMMITS_BEFORE_KILL
        });
        second.kill();
        let at_kill = transactions_describe(&self.target.bootstrap, &self.transactional_id);
        let report = parse_worker_report(&second.stdout());
        eprintln!(
            "{}: killed the second instance after {} commits; its transaction then: {}",
            self.name,
            report.commits.len(),
            at_kill["state"]
        );
        for (partition, resumed) in &report.commits[0].2 {
            let before = held.committed_before.get(partition).copied().unwrap_or(0);
            assert!(
                *resumed > before,
                "the second instance's first commit moved {partition} to {resumed}, not past \
                 {before}"
            );
        }
        committed_records(&report)
    }

    /// The third instance, run to its end. The records it committed.
    fn third_instance(&self) -> usize {
        let mut third = self.spawn(3, None);
        let status = third.wait(CTP_INSTANCE_WITHIN);
        assert!(
            status.success(),
            "the third instance exited with {status}; its stderr:\n{}",
            third.stderr()
        );
        let report = parse_worker_report(&third.stdout());
        let (transactions, records) = report.done.unwrap_or_else(|| {
            panic!(
                "the third instance ended without its closing line:\n{}",
                third.stderr()
            )
        });
        assert_eq!(records, committed_records(&report), "{report:?}");
        eprintln!(
            "{}: the third instance copied {records} records in {transactions} transactions",
            self.name
        );
        records
    }

    /// The group's committed offsets and lags on the input.
    fn described_offsets(&self) -> BTreeMap<i32, (i64, i64)> {
        described_offsets(&self.target.bootstrap, &self.group, &self.input)
    }

    /// The output read back at both isolation levels: every input copied
    /// exactly once at read_committed; the held transaction's copies there
    /// at read_uncommitted too, beside their committed ones (they were
    /// acknowledged before the kill). The record counts.
    fn check_output(&self, ends: &BTreeMap<i32, i64>, held: &Held) -> (usize, usize) {
        (self.target.wait_until_stable)(&self.output);
        let committed = kcat_read_all(&self.target.bootstrap, &self.output, "read_committed", "%s");
        let uncommitted = kcat_read_all(
            &self.target.bootstrap,
            &self.output,
            "read_uncommitted",
            "%s",
        );
        let copies = copies_by_input("read_committed", &committed);
        let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "read_committed: inputs copied more than once: {twice:?}"
        );
        let missing: Vec<(i32, i64)> = ends
            .iter()
            .flat_map(|(&p, &end)| (0..end).map(move |o| (p, o)))
            .filter(|input| !copies.contains_key(input))
            .collect();
        assert!(
            missing.is_empty() && copies.len() == CTP_RECORDS,
            "read_committed: {} copies, {} inputs never copied (first {:?})",
            copies.len(),
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let written = copies_by_input("read_uncommitted", &uncommitted);
        let inputs = held.inputs();
        assert_eq!(inputs.len(), held.records, "the held transaction's inputs");
        let once: Vec<&(i32, i64)> = inputs
            .iter()
            .filter(|input| written.get(input).copied().unwrap_or(0) < 2)
            .take(5)
            .collect();
        assert!(
            once.is_empty(),
            "read_uncommitted: inputs of the killed open transaction not copied twice: {once:?}"
        );
        assert!(
            uncommitted.len() >= committed.len() + held.records,
            "read_uncommitted shows {} records, read_committed {}, and {} were aborted",
            uncommitted.len(),
            committed.len(),
            held.records
        );
        (committed.len(), uncommitted.len())
    }
}

/// The records of an instance's reported commits.
fn committed_records(report: &WorkerReport) -> usize {
    report.commits.iter().map(|(_, records, _)| records).sum()
}

/// Fills an input topic, then runs a consume-transform-produce worker over
/// it in three instances of one transactional id and group: the first is
/// killed (SIGKILL) with a transaction open, its copies acknowledged and
/// its offsets sent; the second is killed wherever it is once it has
/// committed some; the third runs to the end. Every input record must then
/// be copied exactly once at read_committed, the aborted copies of the
/// first kill must be in the log at read_uncommitted, and the group's
/// offsets must be the input's ends.
fn copy_through_worker_kills(target: &CtpTarget, name: &str) {
    let started = Instant::now();
    let run = CtpRun {
        target,
        name,
        input: format!("{name}-input"),
        output: format!("{name}-output"),
        group: format!("{name}-group"),
        transactional_id: format!("{name}-worker"),
        work: WorkDir::new(),
    };
    let ends = run.fill();
    let (held, first) = run.first_instance();
    let second = run.second_instance(&held);
    let third = run.third_instance();
    // A kill can come between a commit and its line: one transaction at
    // most is committed unreported.
    let reported = first + second + third;
    assert!(
        reported <= CTP_RECORDS && reported + CTP_BATCH >= CTP_RECORDS,
        "the instances reported commits of {reported} records of {CTP_RECORDS}"
    );
    let (committed, uncommitted) = run.check_output(&ends, &held);
    let caught_up: BTreeMap<i32, (i64, i64)> =
        ends.iter().map(|(&p, &end)| (p, (end, 0))).collect();
    assert_eq!(
        run.described_offsets(),
        caught_up,
        "the group's committed offsets and lags, wanted the input's ends"
    );
    eprintln!(
        "{name}: read_committed {committed} copies, each input once; read_uncommitted \
         {uncommitted} ({} aborted, {} of them held open at the first kill); committed offsets \
         {ends:?}; {:.1?} in all",
        uncommitted - committed,
        held.records,
        started.elapsed()
    );
}

/// `sluice transactions describe --transactional-id ID --json`.
fn transactions_describe(bootstrap: &str, transactional_id: &str) -> Value {
    let stdout = sluice_stdout(
        bootstrap,
        &[
            "transactions",
            "describe",
            "--transactional-id",
            transactional_id,
            "--json",
        ],
    );
    serde_json::from_slice(&stdout).expect("`sluice transactions describe --json` prints JSON")
}

#[test]
fn confluent_kafka_worker_copies_100k_records_exactly_once_through_kills() {
    let broker = txn_broker(BrokerOptions::default());
    let wait_until_stable = |topic: &str| wait_until_stable(&broker, topic);
    copy_through_worker_kills(
        &CtpTarget {
            bootstrap: broker.bootstrap(),
            replication: 1,
            static_member: false,
            wait_until_stable: &wait_until_stable,
        },
        "ctp",
    );
}

/// The same on three brokers: topics with three replicas led by all of
/// them, markers sent as WriteTxnMarkers, the worker a static group
/// member whose restart takes the killed instance's place at once.
#[test]
fn confluent_kafka_worker_copies_100k_records_exactly_once_through_kills_on_three_brokers() {
    let cluster = Cluster::start(|options| options);
    let wait_until_stable = |topic: &str| wait_until_stable_on(&cluster, topic, PARTITIONS);
    copy_through_worker_kills(
        &CtpTarget {
            bootstrap: cluster.bootstrap_all(),
            replication: NODES as i32,
            static_member: true,
            wait_until_stable: &wait_until_stable,
        },
        "ctp-cluster",
    );
}

// ---------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------

#[test]
fn confluent_kafka_second_instance_fences_the_first() {
    let broker = txn_broker(BrokerOptions::default());
    let summary = run_script(
        &venv_python(),
        "confluent_fencing.py",
        &[
            "--bootstrap",
            &broker.bootstrap(),
            "--topic",
            "fenced",
            "--partitions",
            &PARTITIONS.to_string(),
            "--records",
            "30",
        ],
    );
    // 10 records of each instance per partition, an abort marker and a
    // commit marker.
    let wanted = "the fenced commit failed with _FENCED (fatal: True): read_committed 30 \
                  read_uncommitted 60 log_ends [22, 22, 22]";
    assert!(summary.contains(wanted), "wanted `{wanted}`: {summary}");
}

#[test]
fn confluent_kafka_killed_producer_s_transaction_is_aborted_by_the_next_instance() {
    let broker = txn_broker(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let topic = "killed-mid-transaction";
    let id = "killed-mid-transaction-txn";
    create_topic(&broker, topic);
    let partitions = all_partitions();
    let work = WorkDir::new();

    let before = printed_records(&run_tool_step(
        &bootstrap,
        topic,
        "commit",
        &[
            "--transactional-id",
            id,
            "--records",
            "6",
            "--prefix",
            "before",
        ],
    ));
    assert_eq!(counts(&before), [2, 2, 2], "{before:?}");
    wait_until_stable(&broker, topic);

    let mut open = Member::spawn(
        venv_python(),
        &tool_args(
            "open",
            &bootstrap,
            topic,
            &[
                "--transactional-id",
                id,
                "--records",
                "9",
                "--prefix",
                "open",
            ],
        ),
        work.path(),
        "open",
    );
    let opened = printed_records(&wait_for_line(&mut open, "holding", TOOL_WITHIN));
    assert_eq!(counts(&opened), [3, 3, 3], "{opened:?}");
    let open_first = first_offsets(&opened);
    let high = end_offsets(&bootstrap, topic, &partitions, READ_UNCOMMITTED);
    let stable = end_offsets(&bootstrap, topic, &partitions, READ_COMMITTED);
    assert_eq!(
        (stable.clone(), high.clone()),
        (open_first.clone(), vec![6, 6, 6]),
        "while the transaction is open: last stable offsets at its first records \
         ({open_first:?}), high watermarks after them"
    );

    open.kill();
    eprintln!("killed the producer with its transaction open");
    // Nothing ends the transaction yet: its timeout (librdkafka's default,
    // a minute) is far off, and no other instance has started.
    assert_eq!(
        end_offsets(&bootstrap, topic, &partitions, READ_COMMITTED),
        open_first,
        "the last stable offsets moved after the kill, before any new instance"
    );
    let (held, held_eofs) = read_topic(&bootstrap, topic, "read_committed");
    assert_eq!(
        (values_by_partition(&held), held_eofs),
        (values_by_partition(&before), open_first.clone()),
        "read_committed behind the open transaction: the committed records, then the end at \
         the last stable offset"
    );

    // The next instance's init_transactions aborts the open transaction.
    let after = printed_records(&run_tool_step(
        &bootstrap,
        topic,
        "commit",
        &[
            "--transactional-id",
            id,
            "--records",
            "6",
            "--prefix",
            "after",
        ],
    ));
    let high = wait_until_stable(&broker, topic);
    // 2 before, a marker, 3 open, the abort marker, 2 after, a marker.
    assert_eq!(high, [10, 10, 10], "log ends");
    for (what, records) in [("before", &before), ("after", &after)] {
        for (partition, offset, value) in records.iter() {
            assert!(
                (0..high[*partition as usize]).contains(offset),
                "{what} record {value} at {partition}/{offset}"
            );
        }
    }
    let (committed, committed_eofs) = read_topic(&bootstrap, topic, "read_committed");
    assert_eq!(
        (values_by_partition(&committed), committed_eofs,),
        (
            values_by_partition(before.iter().chain(&after)),
            high.clone()
        ),
        "read_committed: the records before and after, none of the killed transaction's, to \
         the end"
    );
    let (everything, _) = read_topic(&bootstrap, topic, "read_uncommitted");
    assert_eq!(
        values_by_partition(&everything),
        values_by_partition(before.iter().chain(&opened).chain(&after)),
        "read_uncommitted: the killed transaction's records were written"
    );
}

// ---------------------------------------------------------------------------
// Timeout
// ---------------------------------------------------------------------------

/// The transaction timeout of the producer that is killed.
const TRANSACTION_TIMEOUT_MS: u64 = 3_000;

/// How often the broker aborts transactions past their timeout.
const ABORT_SWEEP_MS: i64 = 500;

/// From the kill to a read_committed consumer past the killed transaction:
/// the timeout and a sweep, with room for a loaded machine.
const TIMEOUT_ABORT_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn confluent_kafka_transaction_of_a_killed_producer_is_aborted_at_its_timeout() {
    let broker = txn_broker(BrokerOptions::default().config(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        ABORT_SWEEP_MS,
    ));
    let bootstrap = broker.bootstrap();
    let topic = "timed-out";
    create_topic(&broker, topic);
    let partitions = all_partitions();
    let work = WorkDir::new();

    let timeout_ms = TRANSACTION_TIMEOUT_MS.to_string();
    let mut open = Member::spawn(
        venv_python(),
        &tool_args(
            "open",
            &bootstrap,
            topic,
            &[
                "--transactional-id",
                "timed-out-txn",
                "--transaction-timeout-ms",
                &timeout_ms,
                "--records",
                "9",
                "--prefix",
                "open",
            ],
        ),
        work.path(),
        "open",
    );
    let opened = printed_records(&wait_for_line(&mut open, "holding", TOOL_WITHIN));
    let holding_at = Instant::now();
    open.kill();
    let killed_at = Instant::now();
    let stable = end_offsets(&bootstrap, topic, &partitions, READ_COMMITTED);
    // The transaction began before `holding`; while its timeout cannot
    // have passed yet, it must still hold the last stable offset back.
    if holding_at.elapsed() < Duration::from_millis(TRANSACTION_TIMEOUT_MS / 2) {
        assert_eq!(
            stable,
            first_offsets(&opened),
            "the last stable offsets moved right after the kill, long before the timeout"
        );
    } else {
        eprintln!(
            "skipped the held-back check: {:.1?} passed since `holding`",
            holding_at.elapsed()
        );
    }

    // A record written after the open transaction, outside any.
    let written = run_sluice(
        &[
            "produce",
            "--topic",
            topic,
            "--partition",
            "1",
            "--quiet",
            "--bootstrap-server",
            &bootstrap,
        ],
        Some(b"after-timeout\n"),
        SLUICE_TIMEOUT,
    );
    assert!(
        written.status.success(),
        "`{}`: {}",
        written.command_line,
        String::from_utf8_lossy(&written.stderr)
    );

    let lines = run_tool_step(
        &bootstrap,
        topic,
        "read",
        &[
            "--isolation",
            "read_committed",
            "--until",
            "after-timeout",
            "--max-seconds",
            &TIMEOUT_ABORT_WITHIN.as_secs().to_string(),
        ],
    );
    let through_after = killed_at.elapsed();
    assert!(
        lines.iter().any(|line| line == "found after-timeout"),
        "the read_committed consumer did not get past the timed-out transaction: {lines:?}"
    );
    let read = printed_records(&lines);
    assert!(
        read.iter().all(|(_, _, value)| !value.starts_with("open-")),
        "read_committed delivered records of the aborted transaction: {read:?}"
    );
    eprintln!(
        "a read_committed consumer read past the killed transaction {through_after:.1?} after \
         the kill (transaction timeout {TRANSACTION_TIMEOUT_MS} ms, sweep every {ABORT_SWEEP_MS} ms)"
    );

    // 3 records, the abort marker; on partition 1 the record after too.
    let high = wait_until_stable(&broker, topic);
    assert_eq!(high, [4, 5, 4], "log ends");
    let (everything, _) = read_topic(&bootstrap, topic, "read_uncommitted");
    assert_eq!(
        everything
            .iter()
            .filter(|(_, _, v)| v.starts_with("open-"))
            .count(),
        opened.len(),
        "read_uncommitted: the timed-out transaction's records were written: {everything:?}"
    );
}

// ---------------------------------------------------------------------------
// Three brokers
// ---------------------------------------------------------------------------

/// From a topic's creation to every node reporting its partitions led with
/// a full ISR.
const SPREAD_WITHIN: Duration = Duration::from_secs(15);

/// From a kill to the killed broker's leaderships (and coordinatorships)
/// held by others: the session timeout, an election when the controller
/// died, room for a loaded machine.
const FAILOVER_WITHIN: Duration = Duration::from_secs(25);

/// From one point of the producer's progress to the next one asked for,
/// through a failover.
const PROGRESS_WITHIN: Duration = Duration::from_secs(45);

/// Bound on the producer's exit after SIGTERM (it ends its transaction).
const STOP_TIMEOUT: Duration = Duration::from_secs(70);

/// How much of the producer's stderr a failure shows.
const STDERR_TAIL_BYTES: usize = 4000;

/// Transactions the producer is to commit before the kill, and again after.
const COMMITS_PER_STEP: usize = 5;

/// The transaction log, whose partition leaders coordinate transactions.
const TXN_STATE_TOPIC: &str = "__transaction_state";

/// The topic's partitions as every running node reports them, once each
/// is led by a running node.
fn led_by_running(cluster: &Cluster, topic: &str) -> Result<Vec<PartitionView>, String> {
    let running = cluster.running();
    let views = cluster.partitions(topic, PARTITIONS)?;
    match views.iter().find(|view| !running.contains(&view.leader)) {
        Some(view) => Err(format!("{view:?} is led by a dead node")),
        None => Ok(views),
    }
}

/// The coordinator of a transactional id as node `id` names it
/// (FindCoordinator key type 1, which creates the transaction log on
/// first use).
fn txn_coordinator_at(cluster: &Cluster, id: i32, transactional_id: &str) -> Result<i32, String> {
    find_coordinator(&cluster.bootstrap(id), transactional_id, TRANSACTION_KEY)
}

/// The coordinator of a transactional id as every running node names it,
/// once that is a running node.
fn txn_coordinator(cluster: &Cluster, transactional_id: &str) -> Result<i32, String> {
    let running = cluster.running();
    let mut named = BTreeSet::new();
    for &id in &running {
        named.insert(txn_coordinator_at(cluster, id, transactional_id)?);
    }
    match named.len() {
        1 => {
            let coordinator = *named.first().expect("one coordinator");
            if running.contains(&coordinator) {
                Ok(coordinator)
            } else {
                Err(format!(
                    "the coordinator is node {coordinator}, which is dead"
                ))
            }
        }
        _ => Err(format!("the nodes name coordinators {named:?}")),
    }
}

/// Waits until no transaction holds a partition of the topic back: at
/// each partition's leader, the last stable offset is the high watermark.
/// The high watermarks then.
fn wait_until_stable_on(cluster: &Cluster, topic: &str, partitions: i32) -> Vec<i64> {
    cluster.wait_until(MARKERS_WITHIN, &format!("{topic} stable"), |cluster| {
        let views = cluster.partitions(topic, partitions)?;
        let mut high = Vec::new();
        for view in &views {
            let bootstrap = cluster.bootstrap(view.leader);
            let mut wire = Wire::connect(&bootstrap).map_err(|e| e.to_string())?;
            let mut ends = Vec::new();
            for isolation in [READ_UNCOMMITTED, READ_COMMITTED] {
                let answer = wire
                    .end_offsets(topic, &[view.partition], isolation)
                    .map_err(|e| e.to_string())?;
                match answer[0] {
                    (0, offset) => ends.push(offset),
                    (error, _) => {
                        return Err(format!(
                            "{topic}/{}: ListOffsets error {error}",
                            view.partition
                        ))
                    }
                }
            }
            if ends[0] != ends[1] {
                return Err(format!(
                    "{topic}/{}: high watermark {}, last stable offset {}",
                    view.partition, ends[0], ends[1]
                ));
            }
            high.push(ends[0]);
        }
        Ok(high)
    })
}

/// What the `loop` step reported.
#[derive(Debug, Default)]
struct LoopReport {
    /// Transactions whose commit returned.
    committed: Vec<u64>,
    /// Transactions aborted on purpose once all their records were
    /// acknowledged.
    aborted: Vec<u64>,
    /// Transactions aborted after an abortable error, with it.
    aborted_after_error: Vec<(u64, String)>,
    /// Transactions whose outcome a fatal error hid, with it.
    unknown: Vec<(u64, String)>,
    instances: usize,
    done: Option<String>,
}

fn parse_loop_report(stdout: &str) -> LoopReport {
    let mut report = LoopReport::default();
    for line in complete_lines(stdout) {
        let mut words = line.splitn(3, ' ');
        let kind = words.next().unwrap_or_default();
        let number = words.next().and_then(|n| n.parse::<u64>().ok());
        let rest = words.next().map(str::to_string);
        match (kind, number, rest) {
            ("commit", Some(n), None) => report.committed.push(n),
            ("abort", Some(n), None) => report.aborted.push(n),
            ("abort", Some(n), Some(error)) => report.aborted_after_error.push((n, error)),
            ("unknown", Some(n), Some(error)) => report.unknown.push((n, error)),
            ("instance", Some(_), None) => report.instances += 1,
            ("done", _, _) => report.done = Some(line.to_string()),
            _ => panic!("the loop printed {line:?}"),
        }
    }
    report
}

/// Records each transaction of the loop writes: two on every partition.
const LOOP_RECORDS_PER_PARTITION: usize = 2;

/// The transaction number of a loop record `t<N>-p<P>-r<J>`.
fn loop_transaction(value: &str) -> Option<u64> {
    value.strip_prefix('t')?.split('-').next()?.parse().ok()
}

/// Checks the topic a loop wrote against its report: every committed
/// transaction whole at read_committed, each record once; no aborted one
/// there (and the ones aborted on purpose whole at read_uncommitted); one
/// whose outcome is unknown whole or absent; nothing else.
fn check_loop_outcome(report: &LoopReport, committed: &[Printed], uncommitted: &[Printed]) {
    let whole = LOOP_RECORDS_PER_PARTITION * PARTITIONS as usize;
    let tally = |records: &[Printed], isolation: &str| {
        let mut seen = BTreeSet::new();
        let mut by_txn: BTreeMap<u64, usize> = BTreeMap::new();
        for (partition, offset, value) in records {
            let txn = loop_transaction(value).unwrap_or_else(|| {
                panic!("{isolation}: {partition}/{offset} holds {value:?}, which nobody wrote")
            });
            assert!(
                value.contains(&format!("-p{partition}-")),
                "{isolation}: {value} is in partition {partition}"
            );
            assert!(
                seen.insert(value.clone()),
                "{isolation}: {value} is in the log twice (again at {partition}/{offset})"
            );
            *by_txn.entry(txn).or_default() += 1;
        }
        by_txn
    };
    let visible = tally(committed, "read_committed");
    let written = tally(uncommitted, "read_uncommitted");
    for &txn in &report.committed {
        assert_eq!(
            visible.get(&txn).copied().unwrap_or(0),
            whole,
            "committed transaction {txn}: records visible at read_committed (lost or torn)"
        );
    }
    for &txn in &report.aborted {
        assert_eq!(
            visible.get(&txn),
            None,
            "transaction {txn}, aborted, is visible at read_committed"
        );
        assert_eq!(
            written.get(&txn).copied().unwrap_or(0),
            whole,
            "transaction {txn} was aborted after all its records were acknowledged, \
             but read_uncommitted does not show them all"
        );
    }
    for (txn, error) in &report.aborted_after_error {
        assert_eq!(
            visible.get(txn),
            None,
            "transaction {txn}, aborted after `{error}`, is visible at read_committed"
        );
    }
    for (txn, error) in &report.unknown {
        let count = visible.get(txn).copied().unwrap_or(0);
        assert!(
            count == 0 || count == whole,
            "transaction {txn} (outcome hidden by `{error}`) is torn: {count} of {whole} visible"
        );
    }
    let reported: BTreeSet<u64> = report
        .committed
        .iter()
        .copied()
        .chain(report.unknown.iter().map(|(txn, _)| *txn))
        .collect();
    let strays: Vec<&u64> = visible
        .keys()
        .filter(|txn| !reported.contains(txn))
        .collect();
    assert!(
        strays.is_empty(),
        "read_committed shows transactions never committed: {strays:?}"
    );
}

/// The partition of `__transaction_state` that places a transactional id
/// (Kafka's hash of the id over the topic's partitions), as every running
/// node reports it.
fn txn_state_partition(cluster: &Cluster, transactional_id: &str) -> Result<PartitionView, String> {
    let running = cluster.running();
    let mut seen: Option<PartitionView> = None;
    // What the nodes must agree on; epochs and the rest may lag a moment.
    let placement = |view: &PartitionView| (view.partition, view.leader, view.isr_set());
    for &id in &running {
        let answer = metadata(&cluster.bootstrap(id), Some(&[TXN_STATE_TOPIC]))?;
        let described = answer
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(TXN_STATE_TOPIC))
            .filter(|t| t.error_code == 0)
            .ok_or_else(|| format!("node {id} does not describe {TXN_STATE_TOPIC}"))?;
        let count = described.partitions.len() as i32;
        let wanted = txn_partition(transactional_id, count);
        let view = described
            .partitions
            .iter()
            .find(|p| p.partition_index == wanted)
            .map(PartitionView::of)
            .ok_or_else(|| format!("node {id}: no {TXN_STATE_TOPIC}/{wanted} of {count}"))?;
        match &seen {
            Some(earlier) if placement(earlier) != placement(&view) => {
                return Err(format!("nodes disagree: {earlier:?} and {view:?}"))
            }
            Some(_) => {}
            None => seen = Some(view),
        }
    }
    seen.ok_or_else(|| "no node is running".to_string())
}

/// A transactional confluent-kafka producer runs transactions over every
/// partition of a topic led by all three brokers; once it has committed
/// (and aborted) some, the node `pick` names (given the topic's partitions
/// and the id's partition of `__transaction_state`, led by its
/// coordinator) is killed; once it has committed more, it is stopped and
/// the topic checked against what it reported.
fn transactions_through_a_kill(
    topic: &str,
    pick: impl Fn(&Cluster, &[PartitionView], &PartitionView) -> i32,
) {
    let mut cluster = Cluster::start(short_sessions);
    let views = cluster.create_topic(topic, PARTITIONS);
    let leaders: BTreeSet<i32> = views.iter().map(|view| view.leader).collect();
    assert_eq!(
        leaders.len(),
        NODES,
        "the partitions of {topic} are not led by all three brokers: {views:?}"
    );
    let id = format!("{topic}-txn");
    // Whichever node is asked first has the transaction log created.
    cluster.wait_until(
        SPREAD_WITHIN,
        &format!("every node naming the coordinator of {id}"),
        |cluster| txn_coordinator(cluster, &id),
    );
    let work = WorkDir::new();
    let mut producer = Member::spawn(
        venv_python(),
        &tool_args(
            "loop",
            &cluster.bootstrap_all(),
            topic,
            &[
                "--transactional-id",
                &id,
                "--per-partition",
                &LOOP_RECORDS_PER_PARTITION.to_string(),
                "--abort-every",
                "3",
                "--max-seconds",
                "100",
            ],
        ),
        work.path(),
        "loop",
    );
    let started = Instant::now();
    let progress = |producer: &mut Member, cluster: &Cluster, after: u64, what: &str| {
        cluster.wait_until(PROGRESS_WITHIN, what, |_| {
            producer.fail_if_exited();
            let report = parse_loop_report(&producer.stdout());
            let commits = report.committed.iter().filter(|&&n| n >= after).count();
            let aborts = report.aborted.iter().filter(|&&n| n >= after).count();
            if commits >= COMMITS_PER_STEP && aborts >= 1 {
                Ok(report)
            } else {
                let stderr = producer.stderr();
                let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL_BYTES)..];
                Err(format!(
                    "{commits} commits and {aborts} aborts from transaction {after} on; the \
                     producer's stderr ends:\n{tail}"
                ))
            }
        })
    };
    let before = progress(
        &mut producer,
        &cluster,
        0,
        "commits and aborts before the kill",
    );
    let coordinator =
        txn_coordinator(&cluster, &id).unwrap_or_else(|e| panic!("the coordinator of {id}: {e}"));
    let txn_state = txn_state_partition(&cluster, &id)
        .unwrap_or_else(|e| panic!("the {TXN_STATE_TOPIC} partition of {id}: {e}"));
    assert_eq!(
        txn_state.leader, coordinator,
        "FindCoordinator names node {coordinator} for {id}, but {txn_state:?} of \
         {TXN_STATE_TOPIC} places it"
    );
    let victim = pick(&cluster, &views, &txn_state);
    eprintln!(
        "{topic}: leaders {views:?}, coordinator {coordinator} ({TXN_STATE_TOPIC} {txn_state:?}), \
         controller {}; killing node {victim} after {} transactions",
        cluster.controller,
        before.committed.len() + before.aborted.len()
    );
    let next = before
        .committed
        .iter()
        .chain(&before.aborted)
        .max()
        .map_or(0, |n| n + 1);
    cluster.kill(victim);
    let killed_at = Instant::now();
    let moved_to = cluster.wait_until(
        FAILOVER_WITHIN,
        "the coordinator and every leader on a running node",
        |cluster| {
            led_by_running(cluster, topic)?;
            txn_coordinator(cluster, &id)
        },
    );
    eprintln!(
        "{topic}: coordinator {moved_to}, leaders {:?}, {:.1?} after the kill",
        led_by_running(&cluster, topic),
        killed_at.elapsed()
    );
    progress(
        &mut producer,
        &cluster,
        next + 1,
        "commits and aborts after the kill",
    );
    eprintln!(
        "{topic}: committing again {:.1?} after the kill",
        killed_at.elapsed()
    );

    let status = producer.terminate(STOP_TIMEOUT);
    assert!(
        status.success(),
        "the producer exited with {status}; its stderr:\n{}",
        producer.stderr()
    );
    let report = parse_loop_report(&producer.stdout());
    assert!(
        report.done.is_some(),
        "the producer stopped without its closing line:\n{}",
        producer.stderr()
    );
    eprintln!(
        "{topic}: {} in {:.1?}; aborted after an error: {:?}; unknown: {:?}",
        report.done.as_deref().unwrap_or_default(),
        started.elapsed(),
        report.aborted_after_error,
        report.unknown
    );
    wait_until_stable_on(&cluster, topic, PARTITIONS);
    // The leaders other than the coordinator asked it (AddPartitionsToTxn
    // v4, verify only) before each transaction's first batch on their
    // partitions (KIP-890 part 1).
    let verifications: f64 = cluster
        .running()
        .iter()
        .filter_map(|&id| cluster.metrics(id).ok())
        .filter_map(|text| {
            metric_sample(
                &text,
                "sluice_requests_total{api=\"AddPartitionsToTxn\",version=\"4\"}",
            )
        })
        .sum();
    assert!(
        verifications > 0.0,
        "no leader asked a transaction coordinator on another broker to verify a partition"
    );
    eprintln!("{topic}: {verifications} verifications answered by running coordinators");
    let live = cluster
        .running()
        .iter()
        .map(|&id| cluster.bootstrap(id))
        .collect::<Vec<_>>()
        .join(",");
    let committed = kcat_read_all(&live, topic, "read_committed", "%s");
    let uncommitted = kcat_read_all(&live, topic, "read_uncommitted", "%s");
    check_loop_outcome(&report, &committed, &uncommitted);
    eprintln!(
        "{topic}: {} records visible at read_committed, {} written",
        committed.len(),
        uncommitted.len()
    );
}

#[test]
fn cluster_transactions_survive_the_coordinator_s_death() {
    transactions_through_a_kill("txn-coordinator-killed", |cluster, _, txn_state| {
        // The coordinator can only move if its partition of the
        // transaction log lives on other brokers too.
        let everyone: BTreeSet<i32> = cluster.ids().collect();
        assert_eq!(
            txn_state.isr_set(),
            everyone,
            "{TXN_STATE_TOPIC}/{} is not replicated on all three brokers: the coordinator's \
             death would leave its transactional ids without one",
            txn_state.partition
        );
        txn_state.leader
    });
}

#[test]
fn cluster_transactions_survive_a_partition_leader_s_death() {
    transactions_through_a_kill("txn-leader-killed", |cluster, views, txn_state| {
        views
            .iter()
            .map(|view| view.leader)
            .find(|&leader| leader != txn_state.leader && leader != cluster.controller)
            .expect("three leaders: one is neither the coordinator nor the controller")
    });
}

/// `transaction.state.log.num.partitions` as the brokers run with it.
const TXN_STATE_PARTITIONS: usize = 50;

/// The transaction log created because a client asked a node that is not
/// the controller for a transaction coordinator: the controller must create
/// it as Kafka creates it (`transaction.state.log.num.partitions`
/// partitions, three replicas), and every node must then find the
/// coordinator of an id.
#[test]
fn cluster_transaction_log_created_through_any_node_is_replicated_and_found_everywhere() {
    let cluster = Cluster::start(short_sessions);
    let asked = *cluster
        .ids()
        .collect::<Vec<_>>()
        .iter()
        .find(|&&id| id != cluster.controller)
        .expect("a node that is not the controller");
    let id = "asked-elsewhere-txn";
    // The first ask creates the log; it is answered COORDINATOR_NOT_AVAILABLE.
    let _ = txn_coordinator_at(&cluster, asked, id);
    let partitions = cluster.wait_until(
        SPREAD_WITHIN,
        &format!("{TXN_STATE_TOPIC} in every node's metadata"),
        |cluster| {
            let mut seen = BTreeSet::new();
            for node in cluster.running() {
                let answer = metadata(&cluster.bootstrap(node), Some(&[TXN_STATE_TOPIC]))?;
                let described = answer
                    .topics
                    .iter()
                    .find(|t| t.error_code == 0)
                    .ok_or_else(|| format!("node {node} does not describe {TXN_STATE_TOPIC}"))?;
                let replicas: Vec<(i32, Vec<i32>)> = described
                    .partitions
                    .iter()
                    .map(|p| {
                        (
                            p.partition_index,
                            p.replica_nodes.iter().map(|b| b.0).collect(),
                        )
                    })
                    .collect();
                seen.insert(replicas);
            }
            match seen.len() {
                1 => Ok(seen.pop_first().expect("one description")),
                _ => Err(format!("the nodes disagree: {seen:?}")),
            }
        },
    );
    let thin: Vec<&(i32, Vec<i32>)> = partitions
        .iter()
        .filter(|(_, r)| r.len() != NODES)
        .collect();
    assert!(
        partitions.len() == TXN_STATE_PARTITIONS && thin.is_empty(),
        "{TXN_STATE_TOPIC} created through node {asked} (the controller is {}) has {} \
         partitions, wanted {TXN_STATE_PARTITIONS}, and these without three replicas: {thin:?}",
        cluster.controller,
        partitions.len()
    );
    let coordinator = cluster.wait_until(
        SPREAD_WITHIN,
        &format!("every node naming the coordinator of {id}"),
        |cluster| txn_coordinator(cluster, id),
    );
    eprintln!("{TXN_STATE_TOPIC} created through node {asked}; {id} coordinated by {coordinator}");
}
