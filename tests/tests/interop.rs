//! Interop tests: real Kafka clients against a real `sluice` process.
//!
//! kcat (Debian's, on librdkafka 2.0) produces and consumes text files, plain
//! and compressed; the scripts in `tests/interop/` drive confluent-kafka,
//! kafka-python and KafkaJS through topic creation, a keyed produce with
//! headers and timestamps, and a read-back by manual assignment. Every test
//! starts its own broker. Install the clients with `scripts/install-test-deps`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use sluice_tests::{
    interop_node_modules, interop_script, kcat, node, run_tool, run_tool_bytes, venv_python,
    write_file, Broker, BrokerOptions, Tool,
};

/// Bound on one kcat run.
const KCAT_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound on one round-trip script (each also has its own, shorter, deadline).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The scripts' own deadline, in seconds.
const SCRIPT_DEADLINE_SECS: &str = "240";

/// Records per produce in the big round trips.
const RECORDS: usize = 10_000;

// ---------------------------------------------------------------------------
// kcat
// ---------------------------------------------------------------------------

/// `count` distinct `key:value` lines. 101 keys repeat across the lines;
/// values hold the key separator, tabs, non-ASCII text and varying padding.
fn keyed_lines(count: usize) -> Vec<String> {
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

fn lines_file(lines: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

/// `kcat -L`, optionally for one topic.
fn kcat_metadata(broker: &Broker, topic: Option<&str>) -> String {
    let mut args = vec!["-L", "-m", "15"];
    let bootstrap = broker.bootstrap();
    args.extend(["-b", &bootstrap]);
    if let Some(topic) = topic {
        args.extend(["-t", topic]);
    }
    run_tool(kcat(), args, KCAT_TIMEOUT)
}

/// Produces the lines of `file` as keyed messages (`key:value`) with kcat.
fn kcat_produce_keyed(broker: &Broker, topic: &str, file: &Path, extra: &[&str]) {
    let mut args: Vec<OsString> = ["-P", "-b", &broker.bootstrap(), "-t", topic, "-K:"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(["-X", "message.timeout.ms=60000"].map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args.push("-l".into());
    args.push(file.into());
    run_tool(kcat(), args, KCAT_TIMEOUT);
}

/// One message as kcat printed it.
#[derive(Debug)]
struct KcatMessage {
    partition: i32,
    offset: i64,
    /// `key:value`, as in the produced file.
    line: String,
}

/// Consumes every partition of `topic` from the beginning to its end.
fn kcat_consume_all(broker: &Broker, topic: &str) -> Vec<KcatMessage> {
    let bootstrap = broker.bootstrap();
    let args = [
        "-C",
        "-b",
        &bootstrap,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        "%p %o %k:%s\n",
    ];
    let stdout = run_tool_bytes(kcat(), args, KCAT_TIMEOUT);
    let text = String::from_utf8(stdout).expect("kcat printed UTF-8: the input was UTF-8");
    text.lines()
        .map(|line| {
            let (partition, rest) = line.split_once(' ').expect("`%p %o ...` line");
            let (offset, line) = rest.split_once(' ').expect("`%p %o ...` line");
            KcatMessage {
                partition: partition.parse().expect("partition number"),
                offset: offset.parse().expect("offset"),
                line: line.to_owned(),
            }
        })
        .collect()
}

/// Asserts that a one-partition topic holds exactly `lines`, in order, at
/// offsets 0, 1, 2, …
fn assert_single_partition_identical(consumed: &[KcatMessage], lines: &[String], sent: &[u8]) {
    for (index, message) in consumed.iter().enumerate() {
        assert_eq!(
            message.partition, 0,
            "message {index} came from partition {}",
            message.partition
        );
        assert_eq!(
            message.offset, index as i64,
            "message {index} has offset {}: offsets are not dense from 0",
            message.offset
        );
        if let Some(expected) = lines.get(index) {
            assert_eq!(
                &message.line, expected,
                "message at offset {index} differs from line {index} of the input"
            );
        }
    }
    assert_eq!(
        consumed.len(),
        lines.len(),
        "consumed {} messages, produced {}",
        consumed.len(),
        lines.len()
    );
    let received: Vec<String> = consumed.iter().map(|m| m.line.clone()).collect();
    assert!(
        lines_file(&received) == sent,
        "the consumed lines are not byte-identical to the input file"
    );
}

/// Asserts that a multi-partition topic holds every line once, each
/// partition dense from offset 0 and in input order, and each key in one
/// partition.
fn assert_partitioned_identical(consumed: &[KcatMessage], lines: &[String], partitions: i32) {
    let index_of: HashMap<&str, usize> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| (line.as_str(), i))
        .collect();
    let mut by_partition: BTreeMap<i32, Vec<&KcatMessage>> = BTreeMap::new();
    for message in consumed {
        assert!(
            (0..partitions).contains(&message.partition),
            "message from partition {} of a {partitions}-partition topic",
            message.partition
        );
        by_partition
            .entry(message.partition)
            .or_default()
            .push(message);
    }
    let mut seen = vec![false; lines.len()];
    let mut key_partition: HashMap<&str, i32> = HashMap::new();
    for (partition, messages) in &by_partition {
        let mut previous: Option<usize> = None;
        for (position, message) in messages.iter().enumerate() {
            assert_eq!(
                message.offset, position as i64,
                "partition {partition}: message {position} has offset {}: not dense from 0",
                message.offset
            );
            let index = *index_of.get(message.line.as_str()).unwrap_or_else(|| {
                panic!(
                    "partition {partition} offset {}: {:?} is not a line of the input",
                    message.offset, message.line
                )
            });
            assert!(
                !seen[index],
                "line {index} was consumed twice (again at partition {partition} offset {})",
                message.offset
            );
            seen[index] = true;
            if let Some(previous) = previous {
                assert!(
                    previous < index,
                    "partition {partition}: line {index} at offset {} follows line {previous}: \
                     order within the partition differs from the produce order",
                    message.offset
                );
            }
            previous = Some(index);
            let key = message.line.split_once(':').expect("key:value").0;
            let first = *key_partition.entry(key).or_insert(*partition);
            assert_eq!(
                first, *partition,
                "key {key} is in partitions {first} and {partition}"
            );
        }
    }
    let missing: Vec<usize> = (0..lines.len()).filter(|&i| !seen[i]).collect();
    assert!(
        missing.is_empty(),
        "{} of {} lines were not consumed (first: {:?})",
        missing.len(),
        lines.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn kcat_lists_broker_and_topics() {
    let broker = Broker::start(BrokerOptions::default());
    let listing = kcat_metadata(&broker, None);
    assert!(
        listing.contains("1 brokers:"),
        "kcat -L does not list exactly one broker:\n{listing}"
    );
    let broker_line = format!("broker 1 at {}", broker.bootstrap());
    assert!(
        listing.contains(&broker_line),
        "kcat -L does not show `{broker_line}`:\n{listing}"
    );
    assert!(
        !listing.contains("topic \"kcat-listing\""),
        "the topic is listed before anything created it:\n{listing}"
    );

    let work = tempfile::tempdir().unwrap();
    let file = write_file(work.path(), "one.txt", b"key:value\n");
    kcat_produce_keyed(&broker, "kcat-listing", &file, &[]);

    for listing in [
        kcat_metadata(&broker, None),
        kcat_metadata(&broker, Some("kcat-listing")),
    ] {
        assert!(
            listing.contains(&broker_line),
            "kcat -L does not show `{broker_line}`:\n{listing}"
        );
        assert!(
            listing.contains("topic \"kcat-listing\" with 1 partitions:"),
            "kcat -L does not show the topic with num.partitions = 1 partition:\n{listing}"
        );
        assert!(
            listing.contains("partition 0, leader 1, replicas: 1, isrs: 1"),
            "kcat -L does not show partition 0 led by broker 1:\n{listing}"
        );
    }
}

#[test]
fn kcat_roundtrip_10k_keyed_lines_one_partition() {
    let broker = Broker::start(BrokerOptions::default());
    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(RECORDS);
    let sent = lines_file(&lines);
    let file = write_file(work.path(), "lines.txt", &sent);

    kcat_produce_keyed(&broker, "kcat-lines", &file, &[]);
    let consumed = kcat_consume_all(&broker, "kcat-lines");
    assert_single_partition_identical(&consumed, &lines, &sent);
}

#[test]
fn kcat_roundtrip_10k_keyed_lines_three_partitions() {
    let broker = Broker::start(BrokerOptions::default().config("num.partitions", 3));
    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(RECORDS);
    let file = write_file(work.path(), "lines.txt", &lines_file(&lines));

    kcat_produce_keyed(&broker, "kcat-lines-3", &file, &[]);
    let listing = kcat_metadata(&broker, Some("kcat-lines-3"));
    assert!(
        listing.contains("topic \"kcat-lines-3\" with 3 partitions:"),
        "the auto-created topic should have num.partitions = 3 partitions:\n{listing}"
    );
    let consumed = kcat_consume_all(&broker, "kcat-lines-3");
    assert_partitioned_identical(&consumed, &lines, 3);
    let used: std::collections::BTreeSet<i32> = consumed.iter().map(|m| m.partition).collect();
    assert_eq!(
        used.len(),
        3,
        "101 keys should spread over all 3 partitions, got {used:?}"
    );
}

fn kcat_compressed_roundtrip(codec: &str) {
    let broker = Broker::start(BrokerOptions::default());
    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(RECORDS);
    let sent = lines_file(&lines);
    let file = write_file(work.path(), "lines.txt", &sent);
    let topic = format!("kcat-{codec}");

    kcat_produce_keyed(&broker, &topic, &file, &["-z", codec]);
    let consumed = kcat_consume_all(&broker, &topic);
    assert_single_partition_identical(&consumed, &lines, &sent);
}

#[test]
fn kcat_roundtrip_gzip() {
    kcat_compressed_roundtrip("gzip");
}

#[test]
fn kcat_roundtrip_snappy() {
    kcat_compressed_roundtrip("snappy");
}

#[test]
fn kcat_roundtrip_lz4() {
    kcat_compressed_roundtrip("lz4");
}

#[test]
fn kcat_roundtrip_zstd() {
    kcat_compressed_roundtrip("zstd");
}

// ---------------------------------------------------------------------------
// Client libraries: each script creates a 3-partition topic, produces keyed
// records with headers and timestamps, reads them all back by manual
// assignment and checks them; it prints one `<name>: OK ...` line.
// ---------------------------------------------------------------------------

fn run_roundtrip_script(program: &Path, script: &str, topic: &str) {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
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
    let name = script.split('.').next().unwrap();
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
    println!("{summary} ({:.1?})", output.elapsed);
}

#[test]
fn confluent_kafka_roundtrip() {
    run_roundtrip_script(
        &venv_python(),
        "confluent_roundtrip.py",
        "confluent-roundtrip",
    );
}

#[test]
fn kafka_python_roundtrip() {
    run_roundtrip_script(
        &venv_python(),
        "kafka_python_roundtrip.py",
        "kafka-python-roundtrip",
    );
}

#[test]
fn kafkajs_roundtrip() {
    interop_node_modules();
    run_roundtrip_script(&node(), "kafkajs_roundtrip.js", "kafkajs-roundtrip");
}
