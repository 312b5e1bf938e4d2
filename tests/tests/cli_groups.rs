//! Whole-system tests of `sluice consume --group` and `sluice groups`
//! against a real broker.
//!
//! - `consume --group` reads every record once, commits exactly what it
//!   printed (also when it stops at `--max-messages` in the middle of a
//!   fetched batch), leaves the group on the way out, and a later run
//!   resumes at the committed offsets.
//! - `groups list|describe` show the group, its members with their hosts
//!   and decoded assignments (also one written by librdkafka) and the lag per
//!   partition; the committed offsets agree with a raw OffsetFetch.
//! - `groups reset-offsets` prints its plan and commits nothing unless
//!   `--execute` is given (checked with a raw OffsetFetch), moves the
//!   offsets (earliest, latest, offset:N kept within the log, timestamp:MS
//!   to the first record at or after MS) and is refused while the group
//!   has a member, as is `groups delete` (NON_EMPTY_GROUP); both work once
//!   the member left on SIGTERM.
//!
//! Every test starts its own broker, with the initial rebalance delay off
//! so that groups form at once. kcat comes from `scripts/install-test-deps`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    offset_fetch_request, ApiKey, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;
use sluice_tests::wire::{batch_of, Wire};
use sluice_tests::{kcat, run_sluice, sluice_bin, Broker, BrokerOptions, Member};

/// Bound on one `sluice` command in these tests.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound on a group forming or emptying, and on a member's exit.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker whose groups rebalance as soon as the first member joins.
fn group_broker() -> Broker {
    Broker::start(BrokerOptions::default().config("group.initial.rebalance.delay.ms", 0))
}

// ---------------------------------------------------------------------------
// Running sluice
// ---------------------------------------------------------------------------

/// What one `sluice` run did.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    command_line: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "`{}` ended with {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
            self.command_line, self.status, self.stdout, self.stderr
        )
    }

    /// Panics unless the run succeeded.
    fn ok(self) -> Outcome {
        assert!(self.status.success(), "{}", self.describe());
        self
    }

    /// The one line on stderr of a run that failed with `code`.
    fn failed_with_one_line(&self, code: i32) -> String {
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
        assert!(
            self.stderr.ends_with('\n') && self.stderr.lines().count() == 1,
            "stderr is not one line:\n{}",
            self.describe()
        );
        assert!(
            self.stderr.starts_with("sluice: ") && !self.stderr.contains("panicked"),
            "{}",
            self.describe()
        );
        self.stderr.trim_end().to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}):\n{}", self.describe()))
    }
}

/// Runs `sluice args… --bootstrap-server B` with a time bound.
fn sluice(broker: &Broker, args: &[&str]) -> Outcome {
    let bootstrap = broker.bootstrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--bootstrap-server", &bootstrap]);
    let run = run_sluice(&all, None, SLUICE_TIMEOUT);
    Outcome {
        status: run.status,
        stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        command_line: run.command_line,
    }
}

/// Polls `probe` every 100 ms until it answers `Ok`; panics with its last
/// answer after `SETTLE_TIMEOUT`.
fn wait_until(what: &str, mut probe: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let last = match probe() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {SETTLE_TIMEOUT:?}: {last}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Reading what the commands print
// ---------------------------------------------------------------------------

/// `groups describe G --json`.
fn describe(broker: &Broker, group: &str) -> Value {
    sluice(broker, &["groups", "describe", group, "--json"])
        .ok()
        .json()
}

/// `(committed offset, log end offset, lag)` of each partition of `topic`
/// in a `describe --json` document.
fn offsets_of(described: &Value, topic: &str) -> BTreeMap<i64, (Value, Value, Value)> {
    described["partitions"]
        .as_array()
        .expect("a partitions array")
        .iter()
        .filter(|row| row["topic"] == topic)
        .map(|row| {
            (
                row["partition"].as_i64().expect("a partition number"),
                (
                    row["committed_offset"].clone(),
                    row["log_end_offset"].clone(),
                    row["lag"].clone(),
                ),
            )
        })
        .collect()
}

/// The committed offsets of `partitions` partitions, from `describe --json`
/// (every one must have one).
fn committed(described: &Value, topic: &str, partitions: i64) -> Vec<i64> {
    let offsets = offsets_of(described, topic);
    (0..partitions)
        .map(|p| {
            offsets
                .get(&p)
                .and_then(|(committed, _, _)| committed.as_i64())
                .unwrap_or_else(|| panic!("no committed offset for {topic}-{p}: {described}"))
        })
        .collect()
}

/// The committed offsets of `group`, read with a raw OffsetFetch v7 (-1
/// where nothing is committed): a check that does not go through sluice.
fn fetched_offsets(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    let request = OffsetFetchRequest::default()
        .with_group_id(StrBytes::from_string(group.into()).into())
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partition_indexes((0..partitions).collect()),
        ]));
    let response: OffsetFetchResponse = wire
        .call(ApiKey::OffsetFetch, 7, &request)
        .expect("OffsetFetch v7");
    assert_eq!(response.error_code, 0, "{response:?}");
    let mut offsets = vec![i64::MIN; partitions as usize];
    for partition in response.topics.iter().flat_map(|t| &t.partitions) {
        offsets[partition.partition_index as usize] = partition.committed_offset;
    }
    assert!(!offsets.contains(&i64::MIN), "{response:?}");
    offsets
}

/// `count` lines `k<i % 7>:v<first + i>`.
fn keyed_lines(first: usize, count: usize) -> Vec<String> {
    (first..first + count)
        .map(|i| format!("k{}:v{i:04}", i % 7))
        .collect()
}

/// `sluice produce --key-separator :` of `lines`.
fn produce(broker: &Broker, topic: &str, lines: &[String]) {
    let work = tempfile::tempdir().expect("a temporary directory");
    let mut text = lines.join("\n");
    text.push('\n');
    let file = sluice_tests::write_file(work.path(), "lines.txt", text.as_bytes());
    let file = file.to_str().expect("temporary paths are UTF-8");
    let args = [
        "produce",
        "--topic",
        topic,
        "--file",
        file,
        "--key-separator",
        ":",
        "-q",
    ];
    sluice(broker, &args).ok();
}

/// `consume --group G --format %k:%s\n` with `extra` flags; its lines.
fn consume_group(broker: &Broker, topic: &str, group: &str, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "consume", "--topic", topic, "--group", group, "--format", "%k:%s\\n",
    ];
    args.extend(extra);
    sluice(broker, &args)
}

fn lines_of(outcome: &Outcome) -> Vec<String> {
    outcome.stdout.lines().map(str::to_string).collect()
}

fn sorted(lines: &[String]) -> Vec<String> {
    let mut lines = lines.to_vec();
    lines.sort();
    lines
}

// ---------------------------------------------------------------------------
// consume --group, describe, list, reset
// ---------------------------------------------------------------------------

#[test]
fn a_group_reads_everything_once_commits_what_it_printed_and_resumes_there() {
    let broker = group_broker();
    let (topic, group, partitions) = ("orders", "billing", 3);
    sluice(&broker, &["topics", "create", topic, "--partitions", "3"]).ok();
    let lines = keyed_lines(0, 30);
    produce(&broker, topic, &lines);

    // The first run reads all 30 (with --from-beginning: the group has no
    // offsets yet), commits them and leaves.
    let first = consume_group(
        &broker,
        topic,
        group,
        &["--from-beginning", "-c", "30", "--timeout-ms", "30000"],
    )
    .ok();
    assert_eq!(
        sorted(&lines_of(&first)),
        sorted(&lines),
        "{}",
        first.describe()
    );
    assert_eq!(
        first.stderr,
        format!("Consumed 30 records from {topic} as group {group}.\n")
    );
    let described = describe(&broker, group);
    assert_eq!(described["state"], "Empty", "the member left: {described}");
    assert_eq!(described["members"], Value::Array(vec![]), "{described}");
    let offsets = offsets_of(&described, topic);
    assert_eq!(offsets.len(), partitions as usize, "{described}");
    let mut ends = Vec::new();
    for (partition, (committed, log_end, lag)) in &offsets {
        assert_eq!(committed, log_end, "{topic}-{partition}: {described}");
        assert_eq!(lag, &Value::from(0), "{topic}-{partition}: {described}");
        ends.push(log_end.as_i64().expect("a log end offset"));
    }
    assert_eq!(ends.iter().sum::<i64>(), 30, "{described}");
    assert!(
        ends.iter().filter(|&&end| end > 0).count() > 1,
        "seven keys should use more than one partition: {described}"
    );
    assert_eq!(fetched_offsets(&broker, group, topic, partitions), ends);

    // The group is listed, in both forms.
    let listed = sluice(&broker, &["groups", "list", "--json"]).ok().json();
    assert_eq!(
        listed,
        serde_json::json!([{"group_id": group, "protocol_type": "consumer", "state": "Empty"}])
    );
    let listed = sluice(&broker, &["groups", "list"]).ok().stdout;
    assert_eq!(
        listed,
        "GROUP    PROTOCOL-TYPE  STATE\nbilling  consumer       Empty\n"
    );

    // A second run starts at the committed offsets (--from-beginning only
    // applies where there are none): only the record written since.
    let late = vec!["late:one".to_string()];
    produce(&broker, topic, &late);
    let second = consume_group(
        &broker,
        topic,
        group,
        &["--from-beginning", "--timeout-ms", "3000"],
    )
    .ok();
    assert_eq!(lines_of(&second), late, "{}", second.describe());
    assert_eq!(
        second.stderr,
        format!("Consumed 1 record from {topic} as group {group}.\n")
    );
    let ends_now = committed(&describe(&broker, group), topic, partitions.into());
    assert_eq!(ends_now.iter().sum::<i64>(), 31);

    // Without --execute the reset is only planned.
    let plan = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to",
            "earliest",
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(plan["executed"], false);
    for (index, row) in plan["partitions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(row["new_offset"], 0, "{plan}");
        assert_eq!(row["current_offset"], ends_now[index], "{plan}");
    }
    assert_eq!(
        committed(&describe(&broker, group), topic, partitions.into()),
        ends_now
    );

    // Reset to the earliest: everything is read again.
    let reset = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to",
            "earliest",
            "--execute",
        ],
    )
    .ok();
    assert!(
        reset.stdout.starts_with(
            "GROUP    TOPIC   PARTITION  CURRENT-OFFSET  NEW-OFFSET\nbilling  orders  0  "
        ),
        "{}",
        reset.describe()
    );
    assert!(reset.stderr.is_empty(), "{}", reset.describe());
    let described = describe(&broker, group);
    assert_eq!(
        committed(&described, topic, partitions.into()),
        vec![0, 0, 0]
    );
    let lags: i64 = offsets_of(&described, topic)
        .values()
        .map(|(_, _, lag)| lag.as_i64().unwrap())
        .sum();
    assert_eq!(lags, 31, "{described}");
    let again = consume_group(
        &broker,
        topic,
        group,
        &["-c", "31", "--timeout-ms", "30000"],
    )
    .ok();
    let mut everything = lines.clone();
    everything.extend(late);
    assert_eq!(sorted(&lines_of(&again)), sorted(&everything));

    // Stopping at a count in the middle of what was fetched commits only
    // what was printed: the next run starts right after it.
    sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to",
            "earliest",
            "--execute",
        ],
    )
    .ok();
    let five = consume_group(&broker, topic, group, &["-c", "5", "--timeout-ms", "30000"]).ok();
    assert_eq!(lines_of(&five).len(), 5);
    let after_five = committed(&describe(&broker, group), topic, partitions.into());
    assert_eq!(
        after_five.iter().sum::<i64>(),
        5,
        "committed {after_five:?}"
    );
    assert_eq!(
        fetched_offsets(&broker, group, topic, partitions),
        after_five
    );
    let rest = consume_group(
        &broker,
        topic,
        group,
        &["-c", "26", "--timeout-ms", "30000"],
    )
    .ok();
    let mut read_twice: Vec<String> = lines_of(&five);
    read_twice.extend(lines_of(&rest));
    assert_eq!(
        sorted(&read_twice),
        sorted(&everything),
        "the two runs together read every record exactly once"
    );
}

#[test]
fn reset_offsets_moves_to_offsets_and_timestamps_within_the_log() {
    let broker = Broker::start(
        BrokerOptions::default()
            .config("group.initial.rebalance.delay.ms", 0)
            .config("log.retention.ms", -1),
    );
    let (topic, group) = ("stamped", "rewinder");
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    assert_eq!(wire.create_topic(topic, 1).expect("CreateTopics"), 0);
    // Three batches a second apart: offsets 0-2 at base, 3-5 at base + 1000,
    // 6-7 at base + 2000 (an hour ago, so no broker bound is near).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = now_ms - 3_600_000;
    for (values, timestamp) in [
        (["a", "b", "c"].as_slice(), base),
        (["d", "e", "f"].as_slice(), base + 1000),
        (["g", "h"].as_slice(), base + 2000),
    ] {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let (error, _) = wire
            .produce(topic, 0, -1, batch_of(&values, timestamp))
            .expect("Produce");
        assert_eq!(error, 0);
    }
    let reset = |to: &str| -> (i64, Outcome) {
        let outcome = sluice(
            &broker,
            &[
                "groups",
                "reset-offsets",
                group,
                "--topic",
                topic,
                "--to",
                to,
                "--execute",
                "--json",
            ],
        )
        .ok();
        let value = outcome.json();
        let new = value["partitions"][0]["new_offset"]
            .as_i64()
            .unwrap_or_else(|| panic!("{}", outcome.describe()));
        let fetched = fetched_offsets(&broker, group, topic, 1)[0];
        assert_eq!(new, fetched, "printed and committed differ for --to {to}");
        (new, outcome)
    };
    // The first offset whose timestamp is at or after the target.
    for (target, expected) in [
        (0, 0),
        (base, 0),
        (base + 1, 3),
        (base + 999, 3),
        (base + 1000, 3),
        (base + 1001, 6),
        (base + 2000, 6),
        // Nothing that late: the log end, as Kafka's tool does.
        (base + 2001, 8),
    ] {
        let (new, _) = reset(&format!("timestamp:{target}"));
        assert_eq!(new, expected, "timestamp:{target} (base {base})");
    }
    assert_eq!(reset("offset:5").0, 5);
    assert_eq!(reset("earliest").0, 0);
    assert_eq!(reset("latest").0, 8);
    let (clamped, outcome) = reset("offset:100");
    assert_eq!(clamped, 8);
    assert_eq!(
        outcome.stderr,
        format!("sluice: offset 100 is outside {topic}-0 (0..8); using 8\n")
    );
    // The group reads from where the reset put it.
    reset("offset:6");
    let tail = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "--group",
            group,
            "-c",
            "2",
            "--timeout-ms",
            "30000",
        ],
    )
    .ok();
    assert_eq!(tail.stdout, "g\nh\n", "{}", tail.describe());
    // Mistakes: a partition the topic lacks, a topic that does not exist.
    let outcome = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--partition",
            "1",
            "--to",
            "latest",
        ],
    );
    let line = outcome.failed_with_one_line(1);
    assert!(line.contains("partition 1 does not exist"), "{line}");
    let outcome = sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            "nosuch",
            "--to",
            "latest",
        ],
    );
    let line = outcome.failed_with_one_line(1);
    assert!(line.contains("does not exist"), "{line}");
}

/// `reset-offsets` without `--execute` (or with `--dry-run`) prints the plan
/// and leaves the group's offsets as they were, read back with a raw
/// OffsetFetch; with `--execute` it commits exactly the plan.
#[test]
fn reset_offsets_commits_only_with_execute() {
    let broker = group_broker();
    let (topic, group) = ("planned", "planners");
    sluice(&broker, &["topics", "create", topic, "--partitions", "2"]).ok();
    produce(&broker, topic, &keyed_lines(0, 20));
    consume_group(
        &broker,
        topic,
        group,
        &["--from-beginning", "-c", "20", "--timeout-ms", "30000"],
    )
    .ok();
    let before = fetched_offsets(&broker, group, topic, 2);
    assert_eq!(before.iter().sum::<i64>(), 20, "{before:?}");

    let reset = |extra: &[&str]| {
        let mut args = vec![
            "groups",
            "reset-offsets",
            group,
            "-t",
            topic,
            "--to",
            "earliest",
        ];
        args.extend(extra);
        sluice(&broker, &args).ok()
    };
    for extra in [&[][..], &["--dry-run"]] {
        let plan = reset(extra);
        let mut expected =
            String::from("GROUP     TOPIC    PARTITION  CURRENT-OFFSET  NEW-OFFSET\n");
        for (partition, current) in before.iter().enumerate() {
            let current = format!("{current:<14}");
            expected += &format!("{group}  {topic}  {partition:<9}  {current}  0\n");
        }
        assert_eq!(plan.stdout, expected, "{}", plan.describe());
        assert_eq!(
            plan.stderr,
            "Nothing was committed: this is the plan. Add --execute to commit it.\n"
        );
        assert_eq!(
            fetched_offsets(&broker, group, topic, 2),
            before,
            "{extra:?} committed the plan"
        );
    }

    let executed = reset(&["--execute", "--json"]).json();
    assert_eq!(executed["executed"], true, "{executed}");
    assert_eq!(fetched_offsets(&broker, group, topic, 2), vec![0, 0]);
}

// ---------------------------------------------------------------------------
// Active members
// ---------------------------------------------------------------------------

/// Waits until `group` is Stable with exactly one member that owns both
/// partitions of `topic`; returns the description.
fn wait_for_one_member(broker: &Broker, member: &mut Member, group: &str, topic: &str) -> Value {
    let mut described = Value::Null;
    wait_until("the member to own every partition", || {
        member.fail_if_exited();
        // Until the member's JoinGroup arrives the group does not exist.
        let outcome = sluice(broker, &["groups", "describe", group, "--json"]);
        if !outcome.status.success() {
            return Err(outcome.stderr);
        }
        described = outcome.json();
        let owns = &described["members"][0]["assignment"];
        if described["state"] == "Stable"
            && described["members"].as_array().map(Vec::len) == Some(1)
            && *owns == serde_json::json!([{"topic": topic, "partitions": [0, 1]}])
        {
            Ok(())
        } else {
            Err(described.to_string())
        }
    });
    described
}

/// Reset and delete are refused while `group` has a member.
fn refused_while_active(broker: &Broker, group: &str, topic: &str) {
    let outcome = sluice(
        broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to",
            "earliest",
        ],
    );
    let line = outcome.failed_with_one_line(1);
    assert!(
        line.contains("the group is Stable with 1 member") && line.contains("inactive"),
        "{line}"
    );
    assert!(outcome.stdout.is_empty());
    let outcome = sluice(broker, &["groups", "delete", group]);
    let line = outcome.failed_with_one_line(1);
    assert_eq!(
        line,
        format!("sluice: delete group {group}: NON_EMPTY_GROUP (the group has active members)")
    );
}

#[test]
fn a_member_blocks_reset_and_delete_until_it_leaves_on_sigterm() {
    let broker = group_broker();
    let work = tempfile::tempdir().unwrap();
    let (topic, group) = ("events", "auditors");
    sluice(&broker, &["topics", "create", topic, "--partitions", "2"]).ok();
    let lines = keyed_lines(0, 10);
    produce(&broker, topic, &lines);

    let args: Vec<String> = [
        "consume",
        "--topic",
        topic,
        "--group",
        group,
        "--from-beginning",
        "--format",
        "%k:%s\\n",
        "--bootstrap-server",
        &broker.bootstrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut member = Member::spawn(sluice_bin(), &args, work.path(), "member");
    let described = wait_for_one_member(&broker, &mut member, group, topic);
    let record = &described["members"][0];
    assert_eq!(record["client_id"], "sluice-cli", "{described}");
    assert_eq!(record["group_instance_id"], Value::Null, "{described}");
    // Kafka's client host: "/" and the peer address of the member's
    // connection (the broker listens on 127.0.0.1 only).
    assert_eq!(record["host"], "/127.0.0.1", "{described}");
    let member_id = record["member_id"].as_str().unwrap().to_string();
    let text = sluice(&broker, &["groups", "describe", group]).ok().stdout;
    assert!(text.contains("  /127.0.0.1  "), "{text}");
    assert!(text.contains("Protocol:  consumer (range)\n"), "{text}");
    assert!(text.contains(&format!("{member_id}  -  ")), "{text}");
    assert!(text.contains("events(0,1)"), "{text}");
    wait_until("the member to print every record", || {
        let printed = member.stdout().lines().count();
        (printed == lines.len())
            .then_some(())
            .ok_or(format!("{printed} lines"))
    });

    refused_while_active(&broker, group, topic);

    // SIGTERM: a final commit, a LeaveGroup (the group is Empty at once, not
    // after the 45 s session timeout) and status 0.
    let status = member.terminate(SETTLE_TIMEOUT);
    assert!(status.success(), "{status}; stderr:\n{}", member.stderr());
    assert_eq!(
        member.stderr(),
        format!("Consumed 10 records from {topic} as group {group}.\n")
    );
    assert_eq!(sorted(&lines_of_text(&member.stdout())), sorted(&lines));
    let described = describe(&broker, group);
    assert_eq!(described["state"], "Empty", "{described}");
    let offsets = offsets_of(&described, topic);
    for (partition, (committed, log_end, _)) in &offsets {
        assert_eq!(committed, log_end, "{topic}-{partition}: {described}");
    }

    // Now both work.
    sluice(
        &broker,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to",
            "latest",
            "--execute",
        ],
    )
    .ok();
    let deleted = sluice(&broker, &["groups", "delete", group]).ok();
    assert_eq!(deleted.stdout, format!("Deleted group {group}.\n"));
    assert_eq!(sluice(&broker, &["groups", "list"]).ok().stdout, "");
    let outcome = sluice(&broker, &["groups", "describe", group]);
    let line = outcome.failed_with_one_line(1);
    assert_eq!(
        line,
        format!("sluice: describe group {group}: GROUP_ID_NOT_FOUND (the group does not exist)")
    );
    let outcome = sluice(&broker, &["groups", "delete", group, "--json"]);
    let line = outcome.failed_with_one_line(1);
    assert!(line.contains("GROUP_ID_NOT_FOUND"), "{line}");
}

fn lines_of_text(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

#[test]
fn describe_decodes_the_assignment_a_librdkafka_leader_wrote() {
    let broker = group_broker();
    let work = tempfile::tempdir().unwrap();
    let (topic, group) = ("rdkafka-owned", "rdkafka-group");
    sluice(&broker, &["topics", "create", topic, "--partitions", "2"]).ok();
    produce(&broker, topic, &keyed_lines(0, 4));
    let args: Vec<String> = [
        "-b",
        &broker.bootstrap(),
        "-G",
        group,
        topic,
        "-q",
        "-X",
        "auto.offset.reset=earliest",
        "-X",
        "client.id=kcat-member",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut member = Member::spawn(kcat(), &args, work.path(), "kcat");
    let described = wait_for_one_member(&broker, &mut member, group, topic);
    assert_eq!(
        described["members"][0]["client_id"], "kcat-member",
        "{described}"
    );
    assert_eq!(described["protocol_type"], "consumer", "{described}");
    refused_while_active(&broker, group, topic);
    let status = member.terminate(SETTLE_TIMEOUT);
    assert!(
        status.success(),
        "kcat: {status}; stderr:\n{}",
        member.stderr()
    );
    wait_until("the group to empty", || {
        let described = describe(&broker, group);
        (described["state"] == "Empty")
            .then_some(())
            .ok_or(described.to_string())
    });
    sluice(&broker, &["groups", "delete", group]).ok();
    let listed: BTreeSet<String> = sluice(&broker, &["groups", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!listed.contains(group), "{listed:?}");
}
