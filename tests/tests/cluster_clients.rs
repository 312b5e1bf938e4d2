//! Real Kafka clients against a real cluster: three `sluice serve`
//! processes forming one controller quorum (the harness's `Cluster`),
//! each partition served by its leader only, groups
//! coordinated by the leader of their `__consumer_offsets` partition.
//!
//! Every client is given the address of ONE node and must find the rest
//! of the cluster from Metadata: the partition leaders, the controller
//! (CreateTopics elsewhere answers NOT_CONTROLLER) and the group
//! coordinator (FindCoordinator). The node is chosen by its role in the
//! cluster (a node that is not the controller, mostly), so what is tested
//! does not depend on which node won the election. Topics are checked to
//! be spread over all three brokers, so a round trip crosses all of them.
//!
//! kcat (librdkafka) lists the brokers and round-trips 10,000 keyed lines,
//! and runs a consumer group whose members start from different nodes;
//! the round-trip scripts of `tests/interop/` (confluent-kafka,
//! kafka-python, KafkaJS) run unchanged; sarama (Go) produces and reads
//! back through a consumer group. Commits are checked with `sluice groups
//! describe --json` through a node that does not coordinate the group,
//! after DescribeGroups and DeleteGroups sent there are seen to answer
//! NOT_COORDINATOR. The last test creates, grows and deletes a topic with
//! `sluice topics` through a node that is not the controller, which
//! forwards to it.
//!
//! Nothing waits a fixed time: the cluster's formation, a topic reaching
//! every node and a group's progress are polled against deadlines. The
//! clients come from `scripts/install-test-deps`; a missing one fails its
//! test with [`INSTALL_HINT`], as in `interop.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::{json, Value};
use sluice_tests::cluster::{find_coordinator, partition_views, Cluster, GROUP_KEY, NODES};
use sluice_tests::wire::Wire;
use sluice_tests::{
    complete_lines, interop_node_modules, interop_script, kcat, kcat_assigned, kcat_read_all,
    keyed_lines, lines_file, node, partition_offset_value, run_tool, sarama_bin, sluice_stdout,
    venv_python, write_file, Member, Tool,
};

/// From a topic change committed to every node serving it.
const SPREAD_WITHIN: Duration = Duration::from_secs(10);

/// Bound on one kcat run.
const KCAT_TIMEOUT: Duration = Duration::from_secs(60);

/// Records in the kcat and script round trips.
const RECORDS: usize = 10_000;

/// Bound on one round-trip script, and the script's own deadline.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const SCRIPT_DEADLINE_SECS: &str = "50";

/// Partitions of the topics the round-trip scripts create.
const SCRIPT_PARTITIONS: i32 = 3;

/// Kafka error codes the tests name.
const NOT_COORDINATOR: i16 = 16;

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Creates a topic with `sluice topics create`, sent to the controller
/// (see `sluice_topics_create_through_a_node_that_is_not_the_controller`
/// for why not to another node), and waits until every node serves it.
fn create_topic(cluster: &Cluster, topic: &str, partitions: i32) -> Vec<i32> {
    sluice_stdout(
        &cluster.bootstrap(cluster.controller),
        &[
            "topics",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ],
    );
    wait_for_topic(cluster, topic, partitions)
}

/// Polls every node until each reports the same leader for every one of
/// the topic's `partitions` partitions; those leaders, by partition.
fn wait_for_topic(cluster: &Cluster, topic: &str, partitions: i32) -> Vec<i32> {
    let views = cluster.wait_until(
        SPREAD_WITHIN,
        &format!("every node serving the {partitions} partitions of {topic}"),
        |cluster| cluster.partitions(topic, partitions),
    );
    views.iter().map(|view| view.leader).collect()
}

/// The coordinator of `group`, from FindCoordinator asked of the
/// controller, polled while `__consumer_offsets` is being created.
fn coordinator(cluster: &Cluster, group: &str) -> i32 {
    let bootstrap = cluster.bootstrap(cluster.controller);
    cluster.wait_until(SPREAD_WITHIN, &format!("a coordinator for {group}"), |_| {
        find_coordinator(&bootstrap, group, GROUP_KEY)
    })
}

/// Asserts that round robin gave every broker the same number of the
/// topic's partitions (`partitions` is a multiple of three here).
fn assert_spread_evenly(topic: &str, leaders: &[i32]) {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for &leader in leaders {
        *led.entry(leader).or_default() += 1;
    }
    let each = leaders.len() / NODES;
    let even: BTreeMap<i32, usize> = (1..=NODES as i32).map(|id| (id, each)).collect();
    assert_eq!(
        led, even,
        "{topic}: partitions led per broker (leaders by partition: {leaders:?})"
    );
}

/// `sluice groups describe GROUP --json` through `bootstrap`.
fn describe_group(bootstrap: &str, group: &str) -> Value {
    serde_json::from_slice(&sluice_stdout(
        bootstrap,
        &["groups", "describe", group, "--json"],
    ))
    .expect("`sluice groups describe --json` prints JSON")
}

/// Asserts that `group` is empty and has committed `ends` (the log end of
/// each partition of `topic`) with no lag, as `sluice groups describe`
/// reports it through `bootstrap`.
fn assert_committed_log_ends(bootstrap: &str, group: &str, topic: &str, ends: &[i64]) {
    let described = describe_group(bootstrap, group);
    assert_eq!(described["state"], "Empty", "{described}");
    let rows = described["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions array: {described}"));
    let mut committed = vec![-1i64; ends.len()];
    for row in rows.iter().filter(|row| row["topic"] == topic) {
        let partition = row["partition"].as_u64().expect("a partition number") as usize;
        committed[partition] = row["committed_offset"].as_i64().unwrap_or(-1);
        assert_eq!(
            (&row["log_end_offset"], &row["lag"]),
            (&json!(ends[partition]), &json!(0)),
            "log end and lag of {topic}/{partition}: {described}"
        );
    }
    assert_eq!(
        committed, ends,
        "{group}'s commits are not the log ends: {described}"
    );
}

/// Asserts that `node` does not coordinate `group`: DescribeGroups and
/// DeleteGroups sent there answer NOT_COORDINATOR (and delete nothing),
/// so a describe through `node` has to find the coordinator.
fn assert_not_coordinator(cluster: &Cluster, node: i32, group: &str) {
    let mut wire = Wire::connect(&cluster.bootstrap(node)).expect("connect to the node");
    let group_id = GroupId(StrBytes::from_string(group.to_string()));
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id.clone()]);
    let described: DescribeGroupsResponse = wire
        .call(ApiKey::DescribeGroups, 5, &request)
        .expect("DescribeGroups v5");
    assert_eq!(
        described
            .groups
            .iter()
            .map(|g| g.error_code)
            .collect::<Vec<_>>(),
        [NOT_COORDINATOR],
        "DescribeGroups of {group} at node {node}: {described:?}"
    );
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id]);
    let deleted: DeleteGroupsResponse = wire
        .call(ApiKey::DeleteGroups, 2, &request)
        .expect("DeleteGroups v2");
    assert_eq!(
        deleted
            .results
            .iter()
            .map(|g| g.error_code)
            .collect::<Vec<_>>(),
        [NOT_COORDINATOR],
        "DeleteGroups of {group} at node {node}: {deleted:?}"
    );
}

// ---------------------------------------------------------------------------
// kcat
// ---------------------------------------------------------------------------

/// `kcat -L` through one node, optionally for one topic.
fn kcat_metadata(bootstrap: &str, topic: Option<&str>) -> String {
    let mut args = vec!["-L", "-m", "15", "-b", bootstrap];
    if let Some(topic) = topic {
        args.extend(["-t", topic]);
    }
    run_tool(kcat(), args, KCAT_TIMEOUT)
}

/// Produces the lines of `file` as keyed messages (`key:value`) through
/// one node.
fn kcat_produce_keyed(bootstrap: &str, topic: &str, file: &Path) {
    let mut args: Vec<OsString> = ["-P", "-b", bootstrap, "-t", topic, "-K:"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(["-X", "message.timeout.ms=30000", "-l"].map(OsString::from));
    args.push(file.into());
    run_tool(kcat(), args, KCAT_TIMEOUT);
}

/// One message as kcat printed it: partition, offset, `key:value`.
type Consumed = (i32, i64, String);

/// The complete `%p %o %k:%s` lines of `text`.
fn parse_consumed(text: &str) -> Vec<Consumed> {
    complete_lines(text)
        .into_iter()
        .map(|line| {
            partition_offset_value(line).unwrap_or_else(|| {
                panic!("kcat printed {line:?}, not `partition offset key:value`")
            })
        })
        .collect()
}

/// Consumes every partition of `topic` from the beginning to its end
/// through one node.
fn kcat_consume_all(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    kcat_read_all(bootstrap, topic, "read_committed", "%k:%s")
}

/// Asserts that `consumed` holds each of `lines` exactly once and nothing
/// else: each key in one partition, each partition's offsets dense from
/// `start` and its lines in produce order. Returns the next offset of
/// each partition.
fn check_consumed_once(consumed: &[Consumed], lines: &[String], start: &[i64]) -> Vec<i64> {
    let index_of: HashMap<&str, usize> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| (line.as_str(), i))
        .collect();
    let mut by_partition: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    let mut seen = vec![false; lines.len()];
    let mut key_partition: HashMap<&str, i32> = HashMap::new();
    for (partition, offset, line) in consumed {
        let index = *index_of.get(line.as_str()).unwrap_or_else(|| {
            panic!("{partition}/{offset}: consumed {line:?}, which is not expected here")
        });
        assert!(
            !seen[index],
            "line {index} consumed twice (again at {partition}/{offset})"
        );
        seen[index] = true;
        let key = line.split_once(':').expect("key:value").0;
        let first = *key_partition.entry(key).or_insert(*partition);
        assert_eq!(
            first, *partition,
            "key {key} is in partitions {first} and {partition}"
        );
        by_partition
            .entry(*partition)
            .or_default()
            .push((*offset, index));
    }
    let missing: Vec<usize> = (0..lines.len()).filter(|&i| !seen[i]).collect();
    assert!(
        missing.is_empty(),
        "{} of {} lines were not consumed (first: {:?})",
        missing.len(),
        lines.len(),
        &missing[..missing.len().min(10)]
    );
    let mut next = start.to_vec();
    for (partition, mut entries) in by_partition {
        let slot = usize::try_from(partition)
            .ok()
            .filter(|&p| p < next.len())
            .unwrap_or_else(|| panic!("a message from partition {partition}"));
        entries.sort_unstable();
        let from = start[slot];
        let offsets: Vec<i64> = entries.iter().map(|&(offset, _)| offset).collect();
        let dense: Vec<i64> = (from..from + entries.len() as i64).collect();
        assert_eq!(
            offsets, dense,
            "partition {partition}: consumed offsets are not dense from {from}"
        );
        for pair in entries.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "partition {partition}: line {} at offset {} follows line {}: \
                 order within the partition differs from the produce order",
                pair[1].1,
                pair[1].0,
                pair[0].1
            );
        }
        next[slot] = from + entries.len() as i64;
    }
    next
}

#[test]
fn kcat_lists_three_brokers_and_round_trips_10k_keyed_lines_across_them() {
    let cluster = Cluster::start(|options| options);
    let [producer_node, consumer_node] = cluster.followers()[..] else {
        panic!("two nodes are not the controller")
    };
    let listing = kcat_metadata(&cluster.bootstrap(consumer_node), None);
    assert!(
        listing.contains(" 3 brokers:"),
        "kcat -L through node {consumer_node} does not list three brokers:\n{listing}"
    );
    for id in cluster.ids() {
        let mut line = format!("broker {id} at {}", cluster.bootstrap(id));
        if id == cluster.controller {
            line.push_str(" (controller)");
        }
        assert!(
            listing.lines().any(|l| l.trim() == line),
            "kcat -L does not show `{line}`:\n{listing}"
        );
    }

    let topic = "kcat-cluster-lines";
    let partitions = 6;
    let leaders = create_topic(&cluster, topic, partitions);
    assert_spread_evenly(topic, &leaders);
    let listing = kcat_metadata(&cluster.bootstrap(producer_node), Some(topic));
    for (partition, leader) in leaders.iter().enumerate() {
        let line =
            format!("partition {partition}, leader {leader}, replicas: {leader}, isrs: {leader}");
        assert!(
            listing.contains(&line),
            "kcat -L -t {topic} does not show `{line}`:\n{listing}"
        );
    }

    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(RECORDS);
    let file = write_file(work.path(), "lines.txt", &lines_file(&lines));
    let started = Instant::now();
    kcat_produce_keyed(&cluster.bootstrap(producer_node), topic, &file);
    let produced_in = started.elapsed();
    let consumed = kcat_consume_all(&cluster.bootstrap(consumer_node), topic);
    eprintln!(
        "kcat: {RECORDS} lines produced through node {producer_node} in {produced_in:.1?}, \
         consumed through node {consumer_node} in {:.1?}",
        started.elapsed() - produced_in
    );
    let ends = check_consumed_once(&consumed, &lines, &[0; 6]);
    assert!(
        ends.iter().all(|&end| end > 0),
        "101 keys should reach all 6 partitions: {ends:?} lines each"
    );
}

#[test]
fn kcat_auto_creates_a_topic_through_a_node_that_is_not_the_controller() {
    let cluster = Cluster::start(|options| options.config("num.partitions", 6));
    let [producer_node, consumer_node] = cluster.followers()[..] else {
        panic!("two nodes are not the controller")
    };
    let topic = "kcat-cluster-auto";
    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(2_000);
    let file = write_file(work.path(), "lines.txt", &lines_file(&lines));
    // Node `producer_node` asks the controller to create the topic and
    // answers LEADER_NOT_AVAILABLE until it exists; librdkafka retries.
    kcat_produce_keyed(&cluster.bootstrap(producer_node), topic, &file);
    let leaders = wait_for_topic(&cluster, topic, 6);
    assert_spread_evenly(topic, &leaders);
    let consumed = kcat_consume_all(&cluster.bootstrap(consumer_node), topic);
    check_consumed_once(&consumed, &lines, &[0; 6]);
}

// ---------------------------------------------------------------------------
// kcat -G
// ---------------------------------------------------------------------------

/// Lines `from..to` as `key:value`; 37 keys, so every partition gets some.
fn group_lines(from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| format!("k{:02}:line {i:05}", i % 37))
        .collect()
}

/// The arguments of a `kcat -G` balanced consumer through one node.
fn kcat_group_args(bootstrap: &str, group: &str, topic: &str) -> Vec<String> {
    [
        "-b",
        bootstrap,
        "-G",
        group,
        topic,
        "-u",
        "-f",
        "%p %o %k:%s\n",
        "-X",
        "auto.offset.reset=earliest",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The partitions a `kcat -G` member last reported as assigned.
fn owned(member: &Member) -> BTreeSet<i32> {
    kcat_assigned(&member.stderr())
}

/// The lines `members` printed, all together.
fn consumed_by(members: &[&Member]) -> Vec<Consumed> {
    members
        .iter()
        .flat_map(|member| parse_consumed(&member.stdout()))
        .collect()
}

#[test]
fn kcat_group_members_on_different_nodes_split_partitions_led_by_different_brokers() {
    let cluster = Cluster::start(|options| options);
    let topic = "kcat-cluster-group";
    let group = "kcat-cluster-members";
    let partitions = 6;
    let leaders = create_topic(&cluster, topic, partitions);
    assert_spread_evenly(topic, &leaders);
    let coordinator = coordinator(&cluster, group);
    let elsewhere: Vec<i32> = cluster.ids().filter(|&id| id != coordinator).collect();
    eprintln!(
        "group {group}: coordinator {coordinator}, controller {}",
        cluster.controller
    );
    let work = tempfile::tempdir().unwrap();
    let first = group_lines(0, 3_000);
    let second = group_lines(3_000, 4_000);
    let file = write_file(work.path(), "first.txt", &lines_file(&first));
    kcat_produce_keyed(&cluster.bootstrap(elsewhere[0]), topic, &file);

    // Two members, each knowing one node: neither of them the coordinator
    // for the first, and the coordinator itself for the second.
    let started = Instant::now();
    let mut a = Member::spawn(
        kcat(),
        &kcat_group_args(&cluster.bootstrap(elsewhere[1]), group, topic),
        work.path(),
        "a",
    );
    let mut b = Member::spawn(
        kcat(),
        &kcat_group_args(&cluster.bootstrap(coordinator), group, topic),
        work.path(),
        "b",
    );
    let all: BTreeSet<i32> = (0..partitions).collect();
    cluster.wait_until(
        Duration::from_secs(30),
        "members a and b splitting the partitions 3/3 and reading the first 3000 lines",
        |_| {
            a.fail_if_exited();
            b.fail_if_exited();
            let (owned_a, owned_b) = (owned(&a), owned(&b));
            let union: BTreeSet<i32> = owned_a.union(&owned_b).copied().collect();
            let read = consumed_by(&[&a, &b]).len();
            if owned_a.len() == 3 && owned_b.len() == 3 && union == all && read >= first.len() {
                Ok(())
            } else {
                Err(format!(
                    "a owns {owned_a:?}, b owns {owned_b:?}, {read} lines read;\n\
                     a's stderr:\n{}\nb's stderr:\n{}",
                    a.stderr(),
                    b.stderr()
                ))
            }
        },
    );
    let (owned_a, owned_b) = (owned(&a), owned(&b));
    let file = write_file(work.path(), "second.txt", &lines_file(&second));
    kcat_produce_keyed(&cluster.bootstrap(elsewhere[1]), topic, &file);
    let total = first.len() + second.len();
    cluster.wait_until(
        Duration::from_secs(30),
        "members a and b reading all 4000 lines",
        |_| {
            let read = consumed_by(&[&a, &b]).len();
            if read >= total {
                Ok(())
            } else {
                Err(format!("{read} of {total} lines read"))
            }
        },
    );
    for member in [&mut a, &mut b] {
        let status = member.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "kcat member {} exited with {status}; its stderr:\n{}",
            member.name(),
            member.stderr()
        );
    }
    eprintln!(
        "kcat -G: two members read {total} lines and left {:.1?} after starting",
        started.elapsed()
    );
    // The second batch went to the members that owned its partitions then
    // (kcat's own rebalances all happened before it was produced).
    let second_at: BTreeSet<&str> = second.iter().map(String::as_str).collect();
    for (member, owned) in [(&a, &owned_a), (&b, &owned_b)] {
        for (partition, offset, line) in parse_consumed(&member.stdout()) {
            assert!(
                !second_at.contains(line.as_str()) || owned.contains(&partition),
                "member {} read {line:?} at {partition}/{offset} but owned {owned:?}",
                member.name()
            );
        }
    }
    let mut produced = first;
    produced.extend(second);
    let ends = check_consumed_once(&consumed_by(&[&a, &b]), &produced, &[0; 6]);

    // kcat commits on close and leaves; the commits are the log ends, as a
    // node that does not coordinate the group reports them.
    assert_not_coordinator(&cluster, elsewhere[0], group);
    assert_committed_log_ends(&cluster.bootstrap(elsewhere[0]), group, topic, &ends);

    // A third member, through the remaining node, resumes at the commits
    // and reads exactly the new lines.
    let third = group_lines(4_000, 4_600);
    let file = write_file(work.path(), "third.txt", &lines_file(&third));
    kcat_produce_keyed(&cluster.bootstrap(coordinator), topic, &file);
    let mut args = kcat_group_args(&cluster.bootstrap(elsewhere[0]), group, topic);
    args.extend(["-c".to_string(), third.len().to_string(), "-q".to_string()]);
    let resumed = parse_consumed(&run_tool(kcat(), &args, KCAT_TIMEOUT));
    let new_ends = check_consumed_once(&resumed, &third, &ends);
    assert_committed_log_ends(&cluster.bootstrap(elsewhere[1]), group, topic, &new_ends);
}

// ---------------------------------------------------------------------------
// Client libraries: the round-trip scripts of tests/interop/, unchanged.
// Each creates a 3-partition topic through the node it is given, produces
// keyed records with headers and timestamps, reads them all back by
// assignment and checks them; it prints one `<name>: OK ...` line.
// ---------------------------------------------------------------------------

/// Runs a round-trip script against a fresh cluster, bootstrapping from
/// follower number `follower` (a node that is not the controller).
fn script_roundtrip(program: &Path, script: &str, topic: &str, follower: usize) {
    let cluster = Cluster::start(|options| options);
    let via = cluster.followers()[follower];
    let bootstrap = cluster.bootstrap(via);
    let records = RECORDS.to_string();
    let tool = Tool::new(program)
        .arg(interop_script(script))
        .args([
            "--bootstrap",
            &bootstrap,
            "--topic",
            topic,
            "--records",
            &records,
            "--timeout",
            SCRIPT_DEADLINE_SECS,
        ])
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
        });
    assert!(
        summary.contains(&format!(" {RECORDS} records")),
        "unexpected summary: {summary}"
    );
    // The topic it created through a node that is not the controller has
    // one partition on each broker: the round trip went through all three.
    let leaders = wait_for_topic(&cluster, topic, SCRIPT_PARTITIONS);
    assert_spread_evenly(topic, &leaders);
    eprintln!(
        "{summary} through node {via} (controller {}, leaders {leaders:?}) in {:.1?}",
        cluster.controller, output.elapsed
    );
}

#[test]
fn confluent_kafka_roundtrip_through_one_node() {
    script_roundtrip(
        &venv_python(),
        "confluent_roundtrip.py",
        "confluent-cluster-roundtrip",
        0,
    );
}

#[test]
fn kafka_python_roundtrip_through_one_node() {
    script_roundtrip(
        &venv_python(),
        "kafka_python_roundtrip.py",
        "kafka-python-cluster-roundtrip",
        1,
    );
}

#[test]
fn kafkajs_roundtrip_through_one_node() {
    interop_node_modules();
    script_roundtrip(
        &node(),
        "kafkajs_roundtrip.js",
        "kafkajs-cluster-roundtrip",
        0,
    );
}

// ---------------------------------------------------------------------------
// sarama (Go): tests/interop/go/sarama, built as interop.rs builds it.
// ---------------------------------------------------------------------------

/// Bound on one run of the sarama program, and its own deadline.
const SARAMA_TIMEOUT: Duration = Duration::from_secs(60);
const SARAMA_DEADLINE_SECS: &str = "50";

/// Runs `sarama SUBCOMMAND --bootstrap B ARGS…`; the records it printed,
/// one JSON object each.
fn sarama_run(bootstrap: &str, subcommand: &str, args: &[&str]) -> Vec<Value> {
    let tool = Tool::new(sarama_bin())
        .arg(subcommand)
        .args(["--bootstrap", bootstrap, "--timeout", SARAMA_DEADLINE_SECS])
        .args(args)
        .timeout(SARAMA_TIMEOUT);
    let output = tool.run();
    let stdout = String::from_utf8(output.stdout)
        .unwrap_or_else(|err| panic!("`{}` printed non-UTF-8: {err}", tool.command_line()));
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("sarama printed {line:?}, not JSON: {err}"))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The records sarama is given, in its JSON shape (bytes as hex): 101
/// keys, values of every byte with varying length, now and then a null
/// value, headers with a repeated name and a null value; timestamps set.
fn sarama_input(count: usize) -> Vec<Value> {
    const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;
    (0..count)
        .map(|i| {
            let value = (i % 97 != 0).then(|| {
                let mut bytes = format!("value {i:04} ").into_bytes();
                bytes.extend((0..i % 200).map(|j| ((i * 31 + j * 7) % 256) as u8));
                hex(&bytes)
            });
            let mut headers =
                vec![json!({"key": hex(b"index"), "value": hex(i.to_string().as_bytes())})];
            if i % 7 == 0 {
                headers.push(json!({"key": hex(b"null-value"), "value": null}));
            }
            if i % 13 == 0 {
                headers.push(json!({"key": hex(b"index"), "value": hex(b"again")}));
            }
            json!({
                "partition": -1,
                "offset": -1,
                "timestamp_ms": TIMESTAMP_BASE_MS + (i as i64 * 7919) % 1000,
                "key": hex(format!("key-{:03}", i % 101).as_bytes()),
                "value": value,
                "headers": headers,
            })
        })
        .collect()
}

/// A record's partition and offset.
fn position(record: &Value) -> (i32, i64) {
    let partition = record["partition"].as_i64().expect("a partition");
    let offset = record["offset"].as_i64().expect("an offset");
    (
        i32::try_from(partition).expect("a partition number"),
        offset,
    )
}

/// A record without its position: what was sent.
fn contents(record: &Value) -> Value {
    json!({
        "timestamp_ms": record["timestamp_ms"],
        "key": record["key"],
        "value": record["value"],
        "headers": record["headers"],
    })
}

#[test]
fn sarama_produces_through_one_node_and_a_sarama_group_reads_back_through_another() {
    const SENT: usize = 1_500;
    let cluster = Cluster::start(|options| options);
    let [producer_node, group_node] = cluster.followers()[..] else {
        panic!("two nodes are not the controller")
    };
    let topic = "sarama-cluster";
    let group = "sarama-cluster-members";
    let partitions = 3;
    let leaders = create_topic(&cluster, topic, partitions);
    assert_spread_evenly(topic, &leaders);

    let work = tempfile::tempdir().unwrap();
    let sent = sarama_input(SENT);
    let mut input = String::new();
    for record in &sent {
        input.push_str(&record.to_string());
        input.push('\n');
    }
    let input = write_file(work.path(), "records.jsonl", input.as_bytes());
    let started = Instant::now();
    let produced = sarama_run(
        &cluster.bootstrap(producer_node),
        "produce",
        &["--topic", topic, "--input", input.to_str().unwrap()],
    );
    assert_eq!(produced.len(), SENT, "records sarama acknowledged");
    // Each partition's offsets are dense from 0, in send order.
    let mut ends = vec![0i64; partitions as usize];
    let mut expected: BTreeMap<(i32, i64), Value> = BTreeMap::new();
    for (index, (record, sent)) in produced.iter().zip(&sent).enumerate() {
        let (partition, offset) = position(record);
        let slot = usize::try_from(partition)
            .ok()
            .filter(|&p| p < ends.len())
            .unwrap_or_else(|| panic!("record {index} went to partition {partition}"));
        assert_eq!(
            offset, ends[slot],
            "record {index} on partition {partition}: not dense, or not in send order"
        );
        ends[slot] += 1;
        assert_eq!(
            contents(record),
            contents(sent),
            "record {index} as sarama echoed it"
        );
        expected.insert((partition, offset), contents(sent));
    }
    assert!(
        ends.iter().all(|&end| end > 0),
        "101 keys should reach every partition: {ends:?}"
    );
    let produced_in = started.elapsed();

    let read = sarama_run(
        &cluster.bootstrap(group_node),
        "group",
        &[
            "--topic",
            topic,
            "--group",
            group,
            "--count",
            &SENT.to_string(),
        ],
    );
    let mut got: BTreeMap<(i32, i64), Value> = BTreeMap::new();
    for record in &read {
        let at = position(record);
        assert!(
            got.insert(at, contents(record)).is_none(),
            "sarama's group read {at:?} twice"
        );
    }
    for (at, wanted) in &expected {
        match got.get(at) {
            Some(record) => assert_eq!(record, wanted, "the record at {at:?}"),
            None => panic!("sarama's group did not read {at:?}"),
        }
    }
    let extra: Vec<&(i32, i64)> = got.keys().filter(|at| !expected.contains_key(at)).collect();
    assert!(extra.is_empty(), "records nobody sent at {extra:?}");
    eprintln!(
        "sarama: {SENT} records produced through node {producer_node} in {produced_in:.1?}, \
         read by a group through node {group_node} in {:.1?}",
        started.elapsed() - produced_in
    );

    let coordinator = coordinator(&cluster, group);
    let describe_via = cluster
        .ids()
        .find(|&id| id != coordinator)
        .expect("a node that does not coordinate the group");
    assert_not_coordinator(&cluster, describe_via, group);
    assert_committed_log_ends(&cluster.bootstrap(describe_via), group, topic, &ends);
}

// ---------------------------------------------------------------------------
// Topic administration through any node
// ---------------------------------------------------------------------------

/// A node that is not the controller forwards topic administration to it
/// (KIP-590), so `sluice topics` works through any node.
#[test]
fn sluice_topics_create_through_a_node_that_is_not_the_controller() {
    let cluster = Cluster::start(|options| options);
    let via = cluster.bootstrap(cluster.followers()[0]);
    let topic = "created-elsewhere";
    sluice_stdout(&via, &["topics", "create", topic, "--partitions", "3"]);
    assert_spread_evenly(topic, &wait_for_topic(&cluster, topic, 3));
    sluice_stdout(&via, &["topics", "alter", topic, "--partitions", "6"]);
    assert_spread_evenly(topic, &wait_for_topic(&cluster, topic, 6));
    sluice_stdout(&via, &["topics", "delete", topic]);
    cluster.wait_until(SPREAD_WITHIN, "the topic gone from every node", |cluster| {
        for id in cluster.ids() {
            if partition_views(&cluster.bootstrap(id), topic, 6).is_ok() {
                return Err(format!("node {id} still serves {topic}"));
            }
        }
        Ok(())
    });
}
