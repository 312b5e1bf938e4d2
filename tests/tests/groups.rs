//! Consumer-group interop tests: real Kafka clients in groups against a real
//! `sluice` process.
//!
//! The Python and Node scripts in `tests/interop/groups/` carry most of the
//! checks and print one `<name>: OK ...` line when every check passed:
//! - `confluent_group.py`: three confluent-kafka members (each its own
//!   process) share a 6-partition topic while records are produced; one
//!   closes (LeaveGroup), one is killed with SIGKILL; the survivor takes
//!   everything within the session timeout, every record is consumed at
//!   least once and the committed offsets end at the log end. Run with the
//!   eager `range` and the incremental `cooperative-sticky` assignors.
//! - `kafka_python_group.py`: auto, synchronous and asynchronous commits; a
//!   member that left rejoins and resumes at the committed offsets.
//! - `kafkajs_group.js`: three runs of one KafkaJS group (auto-commit,
//!   manual commitOffsets, auto-commit again), each resuming where the last
//!   committed, checked against admin fetchOffsets/describeGroups/listGroups.
//! - `kafka_python_admin.py`: list, describe and delete groups; deleting an
//!   active group fails with NON_EMPTY_GROUP, an empty one succeeds.
//!
//! The kcat test is driven from here: two `kcat -G` balanced consumers split
//! a topic and leave, then a third run of the group resumes at the offsets
//! they committed; offsets and membership are also read over the wire
//! (OffsetFetch, DescribeGroups).
//!
//! Every test starts its own broker, with the initial rebalance delay off so
//! that groups form at once. Install the clients with
//! `scripts/install-test-deps`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    offset_fetch_request, ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_tests::wire::Wire;
use sluice_tests::{
    interop_node_modules, interop_script, kcat, node, run_tool, venv_python, write_file, Broker,
    BrokerOptions, Member, Tool,
};

/// Bound on one script (each also has its own, shorter, deadline).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The scripts' own deadline, in seconds.
const SCRIPT_DEADLINE_SECS: &str = "240";

/// Bound on one kcat run, and on waiting for the kcat members to get somewhere.
const KCAT_TIMEOUT: Duration = Duration::from_secs(90);

/// The smallest session timeout the broker accepts, so that a dead member
/// is noticed quickly.
const SESSION_TIMEOUT_MS: &str = "6000";

/// A broker whose groups rebalance as soon as the first member joins.
fn group_broker() -> Broker {
    Broker::start(BrokerOptions::default().config("group.initial.rebalance.delay.ms", 0))
}

/// Runs `script` (a path under `tests/interop/`) with `program` against a
/// fresh broker and returns its OK line, after checking it contains each of
/// `expect`.
fn run_group_script(
    program: &Path,
    script: &str,
    topic: &str,
    extra: &[&str],
    expect: &[&str],
) -> String {
    let broker = group_broker();
    let bootstrap = broker.bootstrap();
    let group = format!("{topic}-group");
    let tool = Tool::new(program)
        .arg(interop_script(script))
        .args([
            "--bootstrap",
            &bootstrap,
            "--topic",
            topic,
            "--group",
            &group,
            "--timeout",
            SCRIPT_DEADLINE_SECS,
        ])
        .args(extra)
        .timeout(SCRIPT_TIMEOUT);
    let output = tool.run();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let name = Path::new(script)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .expect("script names are UTF-8");
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
    for part in expect {
        assert!(
            summary.contains(part),
            "`{name}` summary lacks `{part}`: {summary}"
        );
    }
    println!("{summary} ({:.1?})", output.elapsed);
    summary
}

// ---------------------------------------------------------------------------
// confluent-kafka: three members, a clean leave and a crash
// ---------------------------------------------------------------------------

#[test]
fn confluent_three_members_survive_leave_and_crash_range() {
    run_group_script(
        &venv_python(),
        "groups/confluent_group.py",
        "confluent-group-range",
        &["--records", "6000", "--assignor", "range"],
        &["6000 records", "assignor range"],
    );
}

#[test]
fn confluent_three_members_survive_leave_and_crash_cooperative_sticky() {
    run_group_script(
        &venv_python(),
        "groups/confluent_group.py",
        "confluent-group-coop",
        &["--records", "6000", "--assignor", "cooperative-sticky"],
        &["6000 records", "assignor cooperative-sticky"],
    );
}

// ---------------------------------------------------------------------------
// kafka-python: commit styles, leave and rejoin
// ---------------------------------------------------------------------------

#[test]
fn kafka_python_auto_commit_then_rejoin_resumes() {
    run_group_script(
        &venv_python(),
        "groups/kafka_python_group.py",
        "kafka-python-group-auto",
        &["--mode", "auto"],
        &["mode auto", "0 uncommitted records read again"],
    );
}

#[test]
fn kafka_python_sync_commit_then_rejoin_resumes() {
    run_group_script(
        &venv_python(),
        "groups/kafka_python_group.py",
        "kafka-python-group-sync",
        &["--mode", "sync"],
        &["mode sync"],
    );
}

#[test]
fn kafka_python_async_commit_then_rejoin_resumes() {
    run_group_script(
        &venv_python(),
        "groups/kafka_python_group.py",
        "kafka-python-group-async",
        &["--mode", "async"],
        &["mode async", "0 uncommitted records read again"],
    );
}

#[test]
fn kafka_python_admin_lists_describes_and_deletes_groups() {
    run_group_script(
        &venv_python(),
        "groups/kafka_python_admin.py",
        "kafka-python-admin",
        &[],
        &[],
    );
}

// ---------------------------------------------------------------------------
// KafkaJS
// ---------------------------------------------------------------------------

#[test]
fn kafkajs_group_runs_resume_at_committed_offsets() {
    interop_node_modules();
    run_group_script(
        &node(),
        "groups/kafkajs_group.js",
        "kafkajs-group",
        &[],
        &["1800 records in three runs"],
    );
}

// ---------------------------------------------------------------------------
// kcat -G
// ---------------------------------------------------------------------------

const KCAT_PARTITIONS: i32 = 4;

/// Lines `from..to` as `key:value`; 37 keys, so every partition gets some.
fn kcat_lines(from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| format!("k{:02}:line {i:05}", i % 37))
        .collect()
}

fn kcat_produce(broker: &Broker, topic: &str, dir: &Path, name: &str, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    let file = write_file(dir, name, text.as_bytes());
    let bootstrap = broker.bootstrap();
    let file = file.to_str().expect("temporary paths are UTF-8");
    run_tool(
        kcat(),
        [
            "-P",
            "-b",
            &bootstrap,
            "-t",
            topic,
            "-K:",
            "-X",
            "message.timeout.ms=30000",
            "-l",
            file,
        ],
        KCAT_TIMEOUT,
    );
}

/// The arguments of a `kcat -G` balanced consumer printing `%p %o %k:%s`.
fn kcat_group_args(broker: &Broker, group: &str, topic: &str) -> Vec<String> {
    [
        "-b",
        &broker.bootstrap(),
        "-G",
        group,
        topic,
        "-u",
        "-f",
        "%p %o %k:%s\n",
        "-X",
        "auto.offset.reset=earliest",
        "-X",
        &format!("session.timeout.ms={SESSION_TIMEOUT_MS}"),
        "-X",
        "heartbeat.interval.ms=1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One consumed message: partition, offset, `key:value`.
type Consumed = (i32, i64, String);

/// The complete `%p %o %k:%s` lines of `text`.
fn parse_consumed(text: &str) -> Vec<Consumed> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let partition = parts.next().and_then(|p| p.parse().ok());
            let offset = parts.next().and_then(|o| o.parse().ok());
            match (partition, offset, parts.next()) {
                (Some(p), Some(o), Some(rest)) => (p, o, rest.to_owned()),
                _ => panic!("kcat printed {line:?}, not `partition offset key:value`"),
            }
        })
        .collect()
}

/// A `kcat -G` process that runs until told to stop, its stdout and stderr
/// in files.
struct KcatMember(Member);

impl KcatMember {
    fn spawn(name: &'static str, dir: &Path, args: &[String]) -> KcatMember {
        KcatMember(Member::spawn(kcat(), args, dir, name))
    }

    fn consumed(&self) -> Vec<Consumed> {
        parse_consumed(&self.0.stdout())
    }

    fn log(&self) -> String {
        self.0.stderr()
    }

    /// The partitions kcat last reported as assigned.
    fn owned(&self) -> BTreeSet<i32> {
        sluice_tests::kcat_assigned(&self.log())
    }

    fn fail_if_exited(&mut self) {
        self.0.fail_if_exited();
    }

    /// SIGTERM, which kcat answers by closing its consumer (a final commit
    /// and LeaveGroup); waits for it to exit.
    fn terminate(&mut self) -> ExitStatus {
        self.0.terminate(Duration::from_secs(30))
    }
}

/// Polls `probe` every 100 ms for up to `timeout` until it answers `Ok`;
/// panics with its last answer if it never does.
fn wait_until(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}: {last}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The committed offsets of `group` for partitions `0..partitions` of
/// `topic`, read with OffsetFetch v7 (-1 where nothing is committed).
fn committed_offsets(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
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
    assert_eq!(
        response.error_code, 0,
        "OffsetFetch of {group}: {response:?}"
    );
    let mut offsets = vec![i64::MIN; partitions as usize];
    for topic_answer in &response.topics {
        assert_eq!(topic_answer.name.0.as_str(), topic, "{response:?}");
        for partition in &topic_answer.partitions {
            assert_eq!(partition.error_code, 0, "OffsetFetch: {response:?}");
            offsets[partition.partition_index as usize] = partition.committed_offset;
        }
    }
    assert!(
        !offsets.contains(&i64::MIN),
        "OffsetFetch left out partitions: {response:?}"
    );
    offsets
}

/// The state of `group` and its member ids, from DescribeGroups v5.
fn describe_group(broker: &Broker, group: &str) -> (String, Vec<String>) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.into()))]);
    let response: DescribeGroupsResponse = wire
        .call(ApiKey::DescribeGroups, 5, &request)
        .expect("DescribeGroups v5");
    assert_eq!(response.groups.len(), 1, "DescribeGroups: {response:?}");
    let described = &response.groups[0];
    assert_eq!(described.error_code, 0, "DescribeGroups: {response:?}");
    (
        described.group_state.to_string(),
        described
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect(),
    )
}

/// The high watermark of each partition, from Fetch.
fn log_end_offsets(broker: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    (0..partitions)
        .map(|p| {
            let (error, high_watermark, _) = wire.fetch(topic, p, 0).expect("Fetch");
            assert_eq!(error, 0, "Fetch of {topic}/{p} failed with {error}");
            high_watermark
        })
        .collect()
}

/// Checks that `consumed` holds each of `lines` exactly once and nothing
/// else, each key in one partition, each partition in offset order; returns
/// the next offset after the last message of each partition (`start` where
/// nothing was consumed).
fn check_consumed_once(consumed: &[Consumed], lines: &[String], start: &[i64]) -> Vec<i64> {
    let wanted: HashMap<&str, usize> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| (line.as_str(), i))
        .collect();
    let mut seen = vec![false; lines.len()];
    let mut key_partition: HashMap<&str, i32> = HashMap::new();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset, line) in consumed {
        let index = *wanted.get(line.as_str()).unwrap_or_else(|| {
            panic!("{partition}/{offset}: consumed {line:?}, which is not expected here")
        });
        assert!(
            !seen[index],
            "{line:?} consumed twice (again at {partition}/{offset})"
        );
        seen[index] = true;
        let key = line.split_once(':').expect("key:value").0;
        let first = *key_partition.entry(key).or_insert(*partition);
        assert_eq!(
            first, *partition,
            "key {key} in partitions {first} and {partition}"
        );
        by_partition.entry(*partition).or_default().push(*offset);
    }
    let missing: Vec<&String> = lines
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(line, _)| line)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} lines not consumed, first {:?}",
        missing.len(),
        lines.len(),
        &missing[..missing.len().min(5)]
    );
    let mut next = start.to_vec();
    for (partition, mut offsets) in by_partition {
        offsets.sort_unstable();
        let from = start[partition as usize];
        let dense: Vec<i64> = (from..from + offsets.len() as i64).collect();
        assert_eq!(
            offsets, dense,
            "partition {partition}: consumed offsets are not dense from {from}"
        );
        next[partition as usize] = from + offsets.len() as i64;
    }
    next
}

#[test]
fn kcat_balanced_consumers_split_the_topic_and_resume() {
    let broker = group_broker();
    let work = tempfile::tempdir().unwrap();
    let topic = "kcat-group";
    let group = "kcat-group-members";
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    assert_eq!(
        wire.create_topic(topic, KCAT_PARTITIONS)
            .expect("CreateTopics"),
        0,
        "CreateTopics failed"
    );
    let first = kcat_lines(0, 2000);
    let second = kcat_lines(2000, 3000);
    let third = kcat_lines(3000, 3500);
    let args = kcat_group_args(&broker, group, topic);
    let all: BTreeSet<i32> = (0..KCAT_PARTITIONS).collect();

    // One member reads what is already there.
    kcat_produce(&broker, topic, work.path(), "first.txt", &first);
    let mut a = KcatMember::spawn("a", work.path(), &args);
    wait_until(
        KCAT_TIMEOUT,
        "member a reading the first 2000 lines",
        || {
            a.fail_if_exited();
            let read = a.consumed().len();
            if read >= first.len() {
                Ok(())
            } else {
                Err(format!("a read {read} lines; its stderr:\n{}", a.log()))
            }
        },
    );
    assert_eq!(a.owned(), all, "the only member should own every partition");

    // A second member joins; the two split the partitions.
    let mut b = KcatMember::spawn("b", work.path(), &args);
    wait_until(
        KCAT_TIMEOUT,
        "an even split between members a and b",
        || {
            a.fail_if_exited();
            b.fail_if_exited();
            let (owned_a, owned_b) = (a.owned(), b.owned());
            let union: BTreeSet<i32> = owned_a.union(&owned_b).copied().collect();
            if owned_a.len() == 2 && owned_b.len() == 2 && union == all {
                Ok(())
            } else {
                Err(format!(
                    "a's stderr:\n{}\nb's stderr:\n{}",
                    a.log(),
                    b.log()
                ))
            }
        },
    );
    let (owned_a, owned_b) = (a.owned(), b.owned());
    let read_by_a_alone = a.consumed().len();
    kcat_produce(&broker, topic, work.path(), "second.txt", &second);
    let total = first.len() + second.len();
    wait_until(
        KCAT_TIMEOUT,
        "members a and b reading all 3000 lines",
        || {
            let (read_a, read_b) = (a.consumed().len(), b.consumed().len());
            if read_a + read_b >= total {
                Ok(())
            } else {
                Err(format!("a read {read_a}, b read {read_b}"))
            }
        },
    );
    // Anything extra (a line read twice) would show up now.
    thread::sleep(Duration::from_secs(2));
    let (from_a, from_b) = (a.consumed(), b.consumed());
    for (member, consumed, owned) in [
        ("a", &from_a[read_by_a_alone..], &owned_a),
        ("b", &from_b[..], &owned_b),
    ] {
        assert!(
            !consumed.is_empty(),
            "member {member} read nothing of the second batch"
        );
        for (partition, offset, line) in consumed {
            assert!(
                owned.contains(partition),
                "member {member} read {line:?} at {partition}/{offset} but owns {owned:?}"
            );
        }
    }
    let both: Vec<Consumed> = from_a.iter().chain(&from_b).cloned().collect();
    let mut produced = first.clone();
    produced.extend(second.iter().cloned());
    let ends = check_consumed_once(&both, &produced, &[0; KCAT_PARTITIONS as usize]);
    assert_eq!(
        ends,
        log_end_offsets(&broker, topic, KCAT_PARTITIONS),
        "the consumed offsets do not end at the high watermarks"
    );

    // Both leave; their last commits are the log end.
    let (state, members) = describe_group(&broker, group);
    assert_eq!(
        (state.as_str(), members.len()),
        ("Stable", 2),
        "DescribeGroups while a and b run: {members:?}"
    );
    for member in [&mut a, &mut b] {
        let status = member.terminate();
        assert!(
            status.success(),
            "kcat member {} exited with {status}",
            member.0.name()
        );
    }
    let (state, members) = describe_group(&broker, group);
    assert_eq!(
        (state.as_str(), members.len()),
        ("Empty", 0),
        "DescribeGroups after a and b left (kcat closes with LeaveGroup): {members:?}"
    );
    assert_eq!(
        committed_offsets(&broker, group, topic, KCAT_PARTITIONS),
        ends,
        "after both members left, the committed offsets are not the log end"
    );

    // A third run of the group gets exactly the new lines.
    kcat_produce(&broker, topic, work.path(), "third.txt", &third);
    let count = third.len().to_string();
    let mut args = args;
    args.extend(["-c".to_string(), count, "-q".to_string()]);
    let output = run_tool(kcat(), &args, KCAT_TIMEOUT);
    let resumed = parse_consumed(&output);
    let new_ends = check_consumed_once(&resumed, &third, &ends);
    assert_eq!(
        new_ends,
        log_end_offsets(&broker, topic, KCAT_PARTITIONS),
        "the resumed run does not end at the high watermarks"
    );
    assert_eq!(
        committed_offsets(&broker, group, topic, KCAT_PARTITIONS),
        new_ends,
        "after the resumed run the committed offsets are not the log end"
    );
}
