//! Interop tests: real Kafka clients against a real `sluice` process.
//!
//! kcat (Debian's, on librdkafka 2.0) produces and consumes text files, plain
//! and compressed; the scripts in `tests/interop/` drive confluent-kafka,
//! kafka-python and KafkaJS through topic creation, a keyed produce with
//! headers and timestamps, and a read-back by manual assignment. The Go
//! client sarama (1.22, Debian's; `tests/interop/go/sarama`, built here on
//! first use) produces records that `sluice consume` reads back, reads back
//! what `sluice produce` wrote byte for byte, and runs a consumer group whose
//! commits `sluice groups describe` checks. Every test starts its own broker.
//! Install the clients with `scripts/install-test-deps`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_client::partitioner::key_partition;
use sluice_tests::wire::Wire;
use sluice_tests::{
    interop_node_modules, interop_script, kcat, keyed_lines, lines_file, node, run_tool,
    run_tool_bytes, sarama_bin, sluice_bin, venv_python, write_file, Broker, BrokerOptions, Tool,
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

// ---------------------------------------------------------------------------
// sarama (Go): tests/interop/go/sarama, built against Debian's golang-go and
// golang-github-shopify-sarama-dev (sarama 1.22.1) in GOPATH mode, offline.
// ---------------------------------------------------------------------------

/// Bound on one run of the sarama program, and its own deadline in seconds.
const SARAMA_TIMEOUT: Duration = Duration::from_secs(120);
const SARAMA_DEADLINE_SECS: &str = "100";

/// Bound on one `sluice` client command.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Partitions of every sarama test's topic.
const SARAMA_PARTITIONS: i32 = 3;

/// One record as the sarama program reads and prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GoRecord {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl GoRecord {
    /// The program's JSON line: bytes as hex, null kept apart from empty.
    fn to_json(&self) -> Value {
        let hex_or_null = |bytes: &Option<Vec<u8>>| bytes.as_deref().map(hex);
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(key, value)| json!({"key": hex(key), "value": hex_or_null(value)}))
            .collect();
        json!({
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": hex_or_null(&self.key),
            "value": hex_or_null(&self.value),
            "headers": headers,
        })
    }

    fn from_json(line: &str) -> GoRecord {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("sarama printed {line:?}, not JSON: {err}"));
        let int = |field: &str| {
            json[field]
                .as_i64()
                .unwrap_or_else(|| panic!("no integer `{field}` in {line}"))
        };
        let bytes = |value: &Value| match value {
            Value::Null => None,
            Value::String(text) => Some(unhex(text)),
            other => panic!("{other} is neither hex nor null in {line}"),
        };
        let headers = json["headers"]
            .as_array()
            .unwrap_or_else(|| panic!("no `headers` array in {line}"))
            .iter()
            .map(|header| {
                let key =
                    bytes(&header["key"]).unwrap_or_else(|| panic!("null header key: {line}"));
                (key, bytes(&header["value"]))
            })
            .collect();
        GoRecord {
            partition: i32::try_from(int("partition")).expect("a partition number"),
            offset: int("offset"),
            timestamp_ms: int("timestamp_ms"),
            key: bytes(&json["key"]),
            value: bytes(&json["value"]),
            headers,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd-length hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(&text[at..at + 2], 16)
                .unwrap_or_else(|err| panic!("bad hex {text:?}: {err}"))
        })
        .collect()
}

/// Runs `sarama SUBCOMMAND --bootstrap B ARGS…` and parses the records it printed.
fn sarama_run(broker: &Broker, subcommand: &str, args: &[&str]) -> Vec<GoRecord> {
    let tool = Tool::new(sarama_bin())
        .arg(subcommand)
        .args([
            "--bootstrap",
            &broker.bootstrap(),
            "--timeout",
            SARAMA_DEADLINE_SECS,
        ])
        .args(args)
        .timeout(SARAMA_TIMEOUT);
    let output = tool.run();
    let stdout = String::from_utf8(output.stdout)
        .unwrap_or_else(|err| panic!("`{}` printed non-UTF-8: {err}", tool.command_line()));
    stdout.lines().map(GoRecord::from_json).collect()
}

/// Runs `sluice ARGS… --bootstrap-server B` and returns its stdout.
fn sluice(broker: &Broker, args: &[&str]) -> Vec<u8> {
    Tool::new(sluice_bin())
        .args(args)
        .args(["--bootstrap-server", &broker.bootstrap()])
        .timeout(SLUICE_TIMEOUT)
        .run()
        .stdout
}

fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    let error = wire.create_topic(topic, partitions).expect("CreateTopics");
    assert_eq!(error, 0, "CreateTopics {topic} failed with {error}");
}

/// The high watermark of each partition, from Fetch.
fn log_end_offsets(broker: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    (0..partitions)
        .map(|partition| {
            let (error, high_watermark, _) = wire.fetch(topic, partition, 0).expect("Fetch");
            assert_eq!(error, 0, "Fetch of {topic}/{partition} failed with {error}");
            high_watermark
        })
        .collect()
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_millis()).expect("milliseconds fit in i64")
}

/// The records sarama is given: 101 keys; values with quotes, backslashes,
/// tabs, newlines, non-ASCII text, varying padding, and now and then empty;
/// headers with a repeated name, a null value and an empty value; timestamps
/// out of send order, so deltas within a batch go negative.
fn sarama_input(count: usize) -> Vec<GoRecord> {
    const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;
    (0..count)
        .map(|i| {
            let value = if i % 50 == 0 {
                Vec::new()
            } else {
                format!(
                    "value {i:04}: \"quoted\", back\\slash, tab\t, newline\n, ünïcødé ☃ {}",
                    "x".repeat(i * 7 % 61)
                )
                .into_bytes()
            };
            let mut headers = vec![
                (b"index".to_vec(), Some(i.to_string().into_bytes())),
                (b"source".to_vec(), Some("sarama ☃".as_bytes().to_vec())),
            ];
            if i % 7 == 0 {
                headers.push((b"null-value".to_vec(), None));
            }
            if i % 11 == 0 {
                headers.push((b"empty-value".to_vec(), Some(Vec::new())));
            }
            if i % 13 == 0 {
                headers.push((b"index".to_vec(), Some(b"again".to_vec())));
            }
            GoRecord {
                partition: -1,
                offset: -1,
                timestamp_ms: TIMESTAMP_BASE_MS + (i as i64 * 7919) % 1000,
                key: Some(format!("key-{:03}", i % 101).into_bytes()),
                value: Some(value),
                headers,
            }
        })
        .collect()
}

/// A record of `sluice consume --json` as a [`GoRecord`]. The test's bytes
/// are all UTF-8, so sluice prints them as strings.
fn record_from_sluice_json(line: &[u8]) -> GoRecord {
    let json: Value = serde_json::from_slice(line).unwrap_or_else(|err| {
        panic!(
            "`sluice consume --json` printed {:?}, not JSON: {err}",
            String::from_utf8_lossy(line)
        )
    });
    assert_eq!(json["timestamp_type"], "CreateTime", "{json}");
    let bytes = |value: &Value| match value {
        Value::Null => None,
        Value::String(text) => Some(text.as_bytes().to_vec()),
        other => panic!("sarama sent UTF-8 text, but sluice printed {other} in {json}"),
    };
    let headers = json["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no `headers` array in {json}"))
        .iter()
        .map(|header| {
            let key = bytes(&header["key"]).unwrap_or_else(|| panic!("null header key: {json}"));
            (key, bytes(&header["value"]))
        })
        .collect();
    GoRecord {
        partition: json["partition"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no partition in {json}")),
        offset: json["offset"].as_i64().expect("an offset"),
        timestamp_ms: json["timestamp"].as_i64().expect("a timestamp"),
        key: bytes(&json["key"]),
        value: bytes(&json["value"]),
        headers,
    }
}

/// Asserts that two sets of records, keyed by (partition, offset), are equal,
/// naming the first difference.
fn assert_same_records(
    what: &str,
    got: &BTreeMap<(i32, i64), GoRecord>,
    expected: &BTreeMap<(i32, i64), GoRecord>,
) {
    for (position, wanted) in expected {
        match got.get(position) {
            Some(record) => assert_eq!(
                record, wanted,
                "{what}: the record at {position:?} differs from the one sent"
            ),
            None => panic!("{what}: nothing at {position:?}, where {wanted:?} was sent"),
        }
    }
    let extra: Vec<&(i32, i64)> = got.keys().filter(|p| !expected.contains_key(p)).collect();
    assert!(extra.is_empty(), "{what}: records nobody sent at {extra:?}");
}

#[test]
fn sarama_produces_keyed_records_with_headers_that_sluice_reads_back() {
    const RECORDS: usize = 1_000;
    let broker = Broker::start(BrokerOptions::default());
    let topic = "sarama-produced";
    create_topic(&broker, topic, SARAMA_PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let sent = sarama_input(RECORDS);
    let mut input = String::new();
    for record in &sent {
        input.push_str(&record.to_json().to_string());
        input.push('\n');
    }
    let input = write_file(work.path(), "records.jsonl", input.as_bytes());

    let produced = sarama_run(
        &broker,
        "produce",
        &["--topic", topic, "--input", input.to_str().unwrap()],
    );
    assert_eq!(
        produced.len(),
        RECORDS,
        "sarama acknowledged {} records",
        produced.len()
    );
    // Each partition's offsets are dense from 0, in send order.
    let mut next = vec![0i64; SARAMA_PARTITIONS as usize];
    let mut expected = BTreeMap::new();
    for (index, (record, sent)) in produced.iter().zip(&sent).enumerate() {
        let slot = usize::try_from(record.partition)
            .ok()
            .filter(|&p| p < next.len())
            .unwrap_or_else(|| panic!("record {index} went to partition {}", record.partition));
        assert_eq!(
            record.offset, next[slot],
            "record {index} on partition {} got offset {}: not dense, or not in send order",
            record.partition, record.offset
        );
        next[slot] += 1;
        let mut sent = sent.clone();
        (sent.partition, sent.offset) = (record.partition, record.offset);
        expected.insert((record.partition, record.offset), sent);
    }
    assert!(
        next.iter().all(|&count| count > 0),
        "101 keys should reach every partition, got {next:?} records per partition"
    );
    assert_eq!(
        log_end_offsets(&broker, topic, SARAMA_PARTITIONS),
        next,
        "the log ends are not the acknowledged records per partition"
    );

    let printed = sluice(
        &broker,
        &[
            "consume",
            "--topic",
            topic,
            "--from-beginning",
            "--json",
            "--max-messages",
            &RECORDS.to_string(),
            "--timeout-ms",
            "30000",
        ],
    );
    let consumed: BTreeMap<(i32, i64), GoRecord> = printed
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(record_from_sluice_json)
        .map(|record| ((record.partition, record.offset), record))
        .collect();
    assert_same_records("sluice consume", &consumed, &expected);
}

/// A record's key and value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Lines `key|value` of raw bytes: 37 keys holding NUL and bytes that are not
/// UTF-8; values holding every byte but `\n` (the separator and `\r` too).
fn binary_keyed_lines(count: usize) -> Vec<KeyValue> {
    (0..count)
        .map(|i| {
            let key = vec![b'k', 0x00, 0xff, 0x80 + (i % 37) as u8];
            let mut value = format!("value {i:04} ").into_bytes();
            value.extend(
                (0..i % 300)
                    .map(|j| ((i * 31 + j * 7) % 256) as u8)
                    .filter(|&b| b != b'\n'),
            );
            (key, value)
        })
        .collect()
}

#[test]
fn sarama_reads_what_sluice_produce_wrote_byte_for_byte() {
    let broker = Broker::start(BrokerOptions::default());
    let work = tempfile::tempdir().unwrap();
    let lines = binary_keyed_lines(600);
    let mut input = Vec::new();
    for (key, value) in &lines {
        input.extend_from_slice(key);
        input.push(b'|');
        input.extend_from_slice(value);
        input.push(b'\n');
    }
    let file = write_file(work.path(), "lines.bin", &input);
    let mut expected: BTreeMap<i32, Vec<&KeyValue>> = BTreeMap::new();
    for line in &lines {
        expected
            .entry(key_partition(&line.0, SARAMA_PARTITIONS))
            .or_default()
            .push(line);
    }
    assert_eq!(
        expected.len(),
        SARAMA_PARTITIONS as usize,
        "37 keys should reach every partition"
    );

    // sluice's producer compresses with Rust codecs; sarama decompresses with
    // Go ones. (No zstd: sarama is built without cgo, and Fetch v4 could not
    // carry zstd batches anyway.)
    for codec in ["none", "gzip", "snappy", "lz4"] {
        let topic = format!("sarama-reads-{codec}");
        create_topic(&broker, &topic, SARAMA_PARTITIONS);
        let started_ms = now_ms();
        sluice(
            &broker,
            &[
                "produce",
                "--topic",
                &topic,
                "--file",
                file.to_str().unwrap(),
                "--key-separator",
                "|",
                "--compression",
                codec,
                "--quiet",
            ],
        );
        let finished_ms = now_ms();
        let ends = log_end_offsets(&broker, &topic, SARAMA_PARTITIONS);
        for (&partition, lines) in &expected {
            let what = format!("{codec}: partition {partition}");
            assert_eq!(
                ends[partition as usize],
                lines.len() as i64,
                "{what}: log end after `sluice produce`"
            );
            let read = sarama_run(
                &broker,
                "consume",
                &[
                    "--topic",
                    &topic,
                    "--partition",
                    &partition.to_string(),
                    "--count",
                    &lines.len().to_string(),
                ],
            );
            assert_eq!(read.len(), lines.len(), "{what}: records sarama read");
            for (index, (record, (key, value))) in read.iter().zip(lines).enumerate() {
                assert_eq!(
                    (record.partition, record.offset),
                    (partition, index as i64),
                    "{what}: record {index}"
                );
                assert!(
                    record.key.as_ref() == Some(key) && record.value.as_ref() == Some(value),
                    "{what}, offset {index}: sarama read key {:?} value {:?}, sluice wrote key {key:?} value {value:?}",
                    record.key,
                    record.value
                );
                assert!(
                    record.headers.is_empty(),
                    "{what}, offset {index}: {record:?}"
                );
                assert!(
                    (started_ms..=finished_ms).contains(&record.timestamp_ms),
                    "{what}, offset {index}: timestamp {} is outside the produce run \
                     ({started_ms}..={finished_ms})",
                    record.timestamp_ms
                );
            }
        }
    }
}

#[test]
fn sarama_consumer_group_reads_every_record_and_commits_the_log_end() {
    let broker =
        Broker::start(BrokerOptions::default().config("group.initial.rebalance.delay.ms", 0));
    let work = tempfile::tempdir().unwrap();
    let topic = "sarama-group";
    let group = "sarama-group-members";
    create_topic(&broker, topic, SARAMA_PARTITIONS);
    let lines: Vec<String> = (0..1_200)
        .map(|i| format!("k{:02}:line {i:05}", i % 37))
        .collect();
    let mut ends = vec![0i64; SARAMA_PARTITIONS as usize];

    // A first run reads the 900 records there are and commits the log end; a
    // second starts at those offsets and reads exactly the 300 new ones.
    for (run, batch) in [&lines[..900], &lines[900..]].into_iter().enumerate() {
        let file = write_file(
            work.path(),
            &format!("run-{run}.txt"),
            format!("{}\n", batch.join("\n")).as_bytes(),
        );
        sluice(
            &broker,
            &[
                "produce",
                "--topic",
                topic,
                "--file",
                file.to_str().unwrap(),
                "--key-separator",
                ":",
                "--quiet",
            ],
        );
        let new_ends = log_end_offsets(&broker, topic, SARAMA_PARTITIONS);
        assert_eq!(
            new_ends.iter().sum::<i64>() - ends.iter().sum::<i64>(),
            batch.len() as i64,
            "run {run}: the log ends did not move by the lines produced"
        );

        let seen = sarama_run(
            &broker,
            "group",
            &[
                "--topic",
                topic,
                "--group",
                group,
                "--count",
                &batch.len().to_string(),
            ],
        );
        let mut positions = BTreeSet::new();
        for record in &seen {
            let line = format!(
                "{}:{}",
                String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
            );
            assert!(
                batch.contains(&line),
                "run {run}: sarama read {line:?} at {}/{}, which is not a line of this run",
                record.partition,
                record.offset
            );
            assert!(
                positions.insert((record.partition, record.offset)),
                "run {run}: sarama read {}/{} twice",
                record.partition,
                record.offset
            );
        }
        let wanted: BTreeSet<(i32, i64)> = (0..SARAMA_PARTITIONS)
            .flat_map(|p| (ends[p as usize]..new_ends[p as usize]).map(move |o| (p, o)))
            .collect();
        assert_eq!(
            positions, wanted,
            "run {run}: sarama did not read exactly the records between the commits and the log ends"
        );
        ends = new_ends;

        let described: Value =
            serde_json::from_slice(&sluice(&broker, &["groups", "describe", group, "--json"]))
                .expect("`sluice groups describe --json` prints JSON");
        assert_eq!(
            described["state"], "Empty",
            "run {run}: sarama left: {described}"
        );
        let rows = described["partitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no partitions array: {described}"));
        let mut committed = vec![-1i64; SARAMA_PARTITIONS as usize];
        for row in rows.iter().filter(|row| row["topic"] == topic) {
            let partition = row["partition"].as_i64().expect("a partition") as usize;
            committed[partition] = row["committed_offset"].as_i64().unwrap_or(-1);
            assert_eq!(
                (&row["log_end_offset"], &row["lag"]),
                (&json!(ends[partition]), &json!(0)),
                "run {run}: log end and lag of partition {partition}: {described}"
            );
        }
        assert_eq!(
            committed, ends,
            "run {run}: the committed offsets are not the log ends: {described}"
        );
    }
}
