//! Whole-system tests of the `sluice topics|produce|consume` commands
//! against a real broker, with kcat and confluent-kafka (librdkafka) on the
//! other side.
//!
//! - What `sluice produce` writes with keys sits on the partition Kafka's
//!   Java client would pick (checked with the client's murmur2 partitioner)
//!   and kcat and confluent-kafka read exactly those records.
//! - What kcat (murmur2_random, every codec) and confluent-kafka (keys,
//!   headers, timestamps) write, `sluice consume` prints byte for byte, in
//!   offset order per partition.
//! - The topic commands do what they say, in text and JSON.
//! - Mistakes a user can make end with one line on stderr, a non-zero
//!   status and no panic, within a few seconds when no broker listens.
//!
//! Every test starts its own broker. kcat and the venv come from
//! `scripts/install-test-deps`; `tests/interop/cli_interop.py` is the
//! confluent-kafka side.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitStatus;
use std::time::Duration;

use sluice_client::partitioner::key_partition;
use sluice_tests::{
    interop_script, kcat, run_sluice, run_tool_bytes, venv_python, write_file, Broker,
    BrokerOptions, Tool,
};

/// Bound on one `sluice` client command in these tests.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound on one kcat or Python run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// Partitions of the topics written with keys.
const PARTITIONS: i32 = 6;

/// Lines per keyed produce.
const LINES: usize = 3_000;

/// How fast a command must give up when nothing listens on the port.
const NO_BROKER_FAILS_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Running sluice
// ---------------------------------------------------------------------------

/// What one `sluice` run did.
struct Outcome {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    elapsed: Duration,
    command_line: String,
}

impl Outcome {
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("sluice printed UTF-8")
    }

    fn describe(&self) -> String {
        format!(
            "`{}` ended with {} after {:.1?}\n---- stdout ----\n{}\n---- stderr ----\n{}",
            self.command_line,
            self.status,
            self.elapsed,
            String::from_utf8_lossy(&self.stdout),
            self.stderr_text()
        )
    }

    /// Panics unless the run succeeded.
    fn ok(self) -> Outcome {
        assert!(self.status.success(), "{}", self.describe());
        self
    }

    /// Panics unless the run failed with `code` and said why in exactly one
    /// line of stderr, without a panic or a backtrace; returns that line.
    fn failed_with_one_line(&self, code: i32) -> String {
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
        let stderr = self.stderr_text();
        assert!(
            stderr.ends_with('\n') && stderr.lines().count() == 1,
            "stderr is not one line:\n{}",
            self.describe()
        );
        for sign in ["panicked", "backtrace", "RUST_BACKTRACE", "thread '"] {
            assert!(
                !stderr.contains(sign),
                "{sign} on stderr:\n{}",
                self.describe()
            );
        }
        assert!(
            stderr.starts_with("sluice: "),
            "the line does not start with `sluice: `:\n{}",
            self.describe()
        );
        stderr.trim_end().to_string()
    }
}

/// Runs `sluice args…`, feeding `stdin` (or closing it), with a time bound.
fn sluice(args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    let run = run_sluice(args, stdin, SLUICE_TIMEOUT);
    Outcome {
        status: run.status,
        stdout: run.stdout,
        stderr: run.stderr,
        elapsed: run.elapsed,
        command_line: run.command_line,
    }
}

/// `sluice topics create NAME --partitions N`.
fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let partitions = partitions.to_string();
    let bootstrap = broker.bootstrap();
    sluice(
        &[
            "topics",
            "create",
            topic,
            "--partitions",
            &partitions,
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
    )
    .ok();
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
fn dead_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// `count` lines `key:value`: 101 keys; values hold the separator again,
/// tabs, non-ASCII text, a carriage return now and then, and varying padding.
fn keyed_lines(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut line = format!(
                "k{:03}:line {i:05}: more:colons\tand a tab; ünïcødé ☃ {}",
                i % 101,
                "x".repeat(i * 7 % 61)
            )
            .into_bytes();
            if i % 17 == 0 {
                line.push(b'\r');
            }
            line
        })
        .collect()
}

fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    bytes
}

/// The key of a `key:value` line.
fn key_of(line: &[u8]) -> &[u8] {
    let at = line
        .iter()
        .position(|&b| b == b':')
        .unwrap_or_else(|| panic!("no key separator in {:?}", String::from_utf8_lossy(line)));
    &line[..at]
}

/// The lines of each partition, in input order, where Kafka's Java client
/// would put them by key.
fn expected_by_partition(lines: &[Vec<u8>], partitions: i32) -> BTreeMap<i32, Vec<Vec<u8>>> {
    let mut by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for line in lines {
        by_partition
            .entry(key_partition(key_of(line), partitions))
            .or_default()
            .push(line.clone());
    }
    by_partition
}

/// Splits output on `\n` (the last line must end with one).
fn output_lines(output: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        output.is_empty() || output.ends_with(b"\n"),
        "output does not end in a newline"
    );
    let mut lines: Vec<Vec<u8>> = output.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    lines.pop();
    lines
}

/// Asserts that `got` (lines printed per partition, in order) equals
/// `expected`, naming the first difference.
fn assert_same_partitions(
    what: &str,
    got: &BTreeMap<i32, Vec<Vec<u8>>>,
    expected: &BTreeMap<i32, Vec<Vec<u8>>>,
) {
    for partition in 0..PARTITIONS {
        let got = got.get(&partition).map_or(&[][..], Vec::as_slice);
        let expected = expected.get(&partition).map_or(&[][..], Vec::as_slice);
        if let Some(index) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
            panic!(
                "{what}: partition {partition} offset {index} holds {:?}, expected {:?}",
                String::from_utf8_lossy(&got[index]),
                String::from_utf8_lossy(&expected[index])
            );
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "{what}: partition {partition} holds {} records, expected {}",
            got.len(),
            expected.len()
        );
    }
}

/// One record as `cli_interop.py` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PyRecord {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn unhex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII hex");
            assert_eq!(pair.len(), 2, "odd hex length: {text}");
            u8::from_str_radix(pair, 16).expect("hex digit")
        })
        .collect()
}

fn nullable_hex(text: &str) -> Option<Vec<u8>> {
    (text != "-").then(|| unhex(text))
}

fn parse_py_records(stdout: &[u8]) -> Vec<PyRecord> {
    let text = std::str::from_utf8(stdout).expect("the script prints ASCII");
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 6, "bad line from cli_interop.py: {line:?}");
            let headers = match fields[5] {
                "-" => Vec::new(),
                list => list
                    .split(',')
                    .map(|pair| {
                        let (name, value) = pair.split_once('=').expect("name=hex");
                        (name.as_bytes().to_vec(), nullable_hex(value))
                    })
                    .collect(),
            };
            PyRecord {
                partition: fields[0].parse().expect("partition"),
                offset: fields[1].parse().expect("offset"),
                timestamp_ms: fields[2].parse().expect("timestamp"),
                key: nullable_hex(fields[3]),
                value: nullable_hex(fields[4]),
                headers,
            }
        })
        .collect()
}

fn run_script(args: &[&str]) -> Vec<PyRecord> {
    let output = Tool::new(venv_python())
        .arg(interop_script("cli_interop.py"))
        .args(args)
        .timeout(TOOL_TIMEOUT)
        .run();
    parse_py_records(&output.stdout)
}

// ---------------------------------------------------------------------------
// sluice produce → kcat, confluent-kafka
// ---------------------------------------------------------------------------

#[test]
fn sluice_produce_with_keys_lands_where_java_would_and_others_read_it() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let topic = "cli-keyed";
    create_topic(&broker, topic, PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(LINES);
    let file = write_file(work.path(), "lines.txt", &join_lines(&lines));
    let file = file.to_str().unwrap();

    let produced = sluice(
        &[
            "produce",
            "--topic",
            topic,
            "--file",
            file,
            "--key-separator",
            ":",
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
    )
    .ok();
    assert!(produced.stdout.is_empty(), "{}", produced.describe());
    let summary = produced.stderr_text();
    assert!(
        summary.starts_with(&format!("Produced {LINES} records ("))
            && summary.contains("records/s"),
        "{}",
        produced.describe()
    );
    let expected = expected_by_partition(&lines, PARTITIONS);
    assert_eq!(
        expected.len(),
        PARTITIONS as usize,
        "101 keys should spread over every partition"
    );

    // kcat: partition, offset, then the line as produced.
    let kcat_out = run_tool_bytes(
        kcat(),
        [
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
        ],
        TOOL_TIMEOUT,
    );
    let mut by_kcat: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for line in output_lines(&kcat_out) {
        let text = String::from_utf8_lossy(&line).into_owned();
        let (partition, rest) = text.split_once(' ').expect("`%p %o ...`");
        let (offset, record) = rest.split_once(' ').expect("`%p %o ...`");
        let partition: i32 = partition.parse().expect("partition");
        let records = by_kcat.entry(partition).or_default();
        assert_eq!(
            offset.parse::<usize>().expect("offset"),
            records.len(),
            "kcat: partition {partition} offsets are not dense from 0"
        );
        records.push(record.as_bytes().to_vec());
    }
    assert_same_partitions("kcat", &by_kcat, &expected);

    // confluent-kafka: every record with its key, no headers.
    let records = run_script(&[
        "read",
        "--bootstrap",
        &bootstrap,
        "--topic",
        topic,
        "--partitions",
        &PARTITIONS.to_string(),
        "--expect",
        &LINES.to_string(),
    ]);
    let mut by_confluent: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for record in records {
        let line = by_confluent.entry(record.partition).or_default();
        assert_eq!(record.offset as usize, line.len(), "{record:?}");
        assert!(record.headers.is_empty(), "{record:?}");
        let mut joined = record.key.expect("every record has a key");
        joined.push(b':');
        joined.extend(record.value.expect("every record has a value"));
        line.push(joined);
    }
    assert_same_partitions("confluent-kafka", &by_confluent, &expected);
}

#[test]
fn sluice_round_trip_through_stdin_is_byte_identical_with_every_codec() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    // Empty lines, carriage returns, bytes that are not UTF-8, NUL.
    let mut input = join_lines(&keyed_lines(500));
    input.extend_from_slice(b"\n\r\n\xff\xfe raw \x00 bytes\n\nlast line without a newline");
    let mut expected_output = input.clone();
    expected_output.push(b'\n');
    let records = input.split(|&b| b == b'\n').count().to_string();
    for (codec, acks) in [
        ("none", "1"),
        ("gzip", "all"),
        ("snappy", "1"),
        ("lz4", "all"),
        ("zstd", "0"),
    ] {
        let topic = format!("cli-stdin-{codec}");
        create_topic(&broker, &topic, 1);
        let produced = sluice(
            &[
                "produce",
                "--topic",
                &topic,
                "--compression",
                codec,
                "--acks",
                acks,
                "--json",
                "--bootstrap-server",
                &bootstrap,
            ],
            Some(&input),
        )
        .ok();
        let summary = produced.stdout_text();
        assert!(
            summary.contains(&format!("\"records\":{records}")),
            "{}",
            produced.describe()
        );
        let consumed = sluice(
            &[
                "consume",
                "--topic",
                &topic,
                "--from-beginning",
                "--max-messages",
                &records,
                "--timeout-ms",
                "20000",
                "--bootstrap-server",
                &bootstrap,
            ],
            None,
        )
        .ok();
        assert!(
            consumed.stdout == expected_output,
            "{codec}: `sluice consume` did not print the input back byte for byte\n{}",
            consumed.describe()
        );
        assert_eq!(
            consumed.stderr_text(),
            format!("Consumed {records} records from {topic}.\n")
        );
    }
}

// ---------------------------------------------------------------------------
// kcat, confluent-kafka → sluice consume
// ---------------------------------------------------------------------------

/// Reads `count` records of every partition with `--format FORMAT`.
fn sluice_consume_all(broker: &Broker, topic: &str, count: usize, format: &str) -> Vec<u8> {
    let bootstrap = broker.bootstrap();
    let count = count.to_string();
    sluice(
        &[
            "consume",
            "--topic",
            topic,
            "--from-beginning",
            "--format",
            format,
            "--max-messages",
            &count,
            "--timeout-ms",
            "20000",
            "--quiet",
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
    )
    .ok()
    .stdout
}

#[test]
fn kcat_writes_with_every_codec_and_sluice_reads_it_back() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let work = tempfile::tempdir().unwrap();
    let lines = keyed_lines(LINES);
    let file = write_file(work.path(), "lines.txt", &join_lines(&lines));
    let expected = expected_by_partition(&lines, PARTITIONS);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("cli-kcat-{codec}");
        create_topic(&broker, &topic, PARTITIONS);
        Tool::new(kcat())
            .args(["-P", "-b", &bootstrap, "-t", &topic, "-K:"])
            .args(["-X", "partitioner=murmur2_random", "-z", codec])
            .args(["-X", "message.timeout.ms=60000", "-l"])
            .arg(&file)
            .timeout(TOOL_TIMEOUT)
            .run();

        // Keys and values exactly, grouped by the partition each key hashes to.
        let output = sluice_consume_all(&broker, &topic, LINES, "%k:%s\\n");
        let mut by_key_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
        for line in output_lines(&output) {
            by_key_partition
                .entry(key_partition(key_of(&line), PARTITIONS))
                .or_default()
                .push(line);
        }
        assert_same_partitions(&format!("kcat -z {codec}"), &by_key_partition, &expected);

        // And the records really are on those partitions, offsets dense.
        let output = sluice_consume_all(&broker, &topic, LINES, "%p %o %k\\n");
        let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
        for line in output_lines(&output) {
            let text = String::from_utf8(line).expect("ASCII");
            let mut fields = text.split(' ');
            let partition: i32 = fields.next().unwrap().parse().unwrap();
            let offset: i64 = fields.next().unwrap().parse().unwrap();
            let key = fields.next().unwrap();
            assert_eq!(
                partition,
                key_partition(key.as_bytes(), PARTITIONS),
                "kcat -z {codec}: key {key} at partition {partition}"
            );
            let next = next_offset.entry(partition).or_insert(0);
            assert_eq!(offset, *next, "kcat -z {codec}: partition {partition}");
            *next += 1;
        }
    }
}

#[test]
fn confluent_writes_keys_and_headers_and_sluice_reads_them_back() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let topic = "cli-confluent";
    let count = 2_000;
    create_topic(&broker, topic, PARTITIONS);
    let written = run_script(&[
        "write",
        "--bootstrap",
        &bootstrap,
        "--topic",
        topic,
        "--records",
        &count.to_string(),
    ]);
    assert_eq!(written.len(), count);
    let mut expected: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for record in &written {
        let key = record.key.clone().expect("keyed");
        assert_eq!(
            record.partition,
            key_partition(&key, PARTITIONS),
            "librdkafka's murmur2_random put {record:?} elsewhere than Java would"
        );
        let mut line = key;
        line.push(b':');
        line.extend(record.value.clone().expect("a value"));
        expected.entry(record.partition).or_default().push(line);
    }

    // `%k:%s` byte for byte, per partition in offset order.
    let output = sluice_consume_all(&broker, topic, count, "%k:%s\\n");
    let mut got: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for line in output_lines(&output) {
        got.entry(key_partition(key_of(&line), PARTITIONS))
            .or_default()
            .push(line);
    }
    assert_same_partitions("confluent-kafka", &got, &expected);

    // Offsets, timestamps and headers as librdkafka reported them, one
    // partition at a time so binary header values (a newline among them)
    // are compared as whole output, not split into lines.
    let mut wanted: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    for record in &written {
        let line = wanted.entry(record.partition).or_default();
        line.extend(format!("{} {} ", record.offset, record.timestamp_ms).into_bytes());
        for (index, (name, value)) in record.headers.iter().enumerate() {
            if index > 0 {
                line.push(b',');
            }
            line.extend_from_slice(name);
            if let Some(value) = value {
                line.push(b'=');
                line.extend_from_slice(value);
            }
        }
        line.push(b'\n');
    }
    for (partition, wanted) in wanted {
        let partition_text = partition.to_string();
        let records = expected[&partition].len().to_string();
        let printed = sluice(
            &[
                "consume",
                "--topic",
                topic,
                "--partition",
                &partition_text,
                "--from-beginning",
                "--format",
                "%o %t %h\\n",
                "--max-messages",
                &records,
                "--timeout-ms",
                "20000",
                "--bootstrap-server",
                &bootstrap,
            ],
            None,
        )
        .ok()
        .stdout;
        assert!(
            printed == wanted,
            "partition {partition}: `%o %t %h` printed\n{}\nlibrdkafka wrote\n{}",
            String::from_utf8_lossy(&printed),
            String::from_utf8_lossy(&wanted)
        );
    }
}

// ---------------------------------------------------------------------------
// Topic administration
// ---------------------------------------------------------------------------

#[test]
fn topic_commands_create_list_describe_alter_and_delete() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let b = ["--bootstrap-server", bootstrap.as_str()];
    let with_b = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(&b)
            .map(|s| (*s).to_string())
            .collect::<Vec<_>>()
    };
    let run = |args: &[&str]| {
        let args = with_b(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&args, None)
    };

    let created = run(&[
        "topics",
        "create",
        "admin-t",
        "--partitions",
        "3",
        "--replication-factor",
        "1",
        "--config",
        "retention.ms=3600000",
    ])
    .ok();
    assert_eq!(created.stdout_text(), "Created topic admin-t.\n");
    let again = run(&["topics", "create", "admin-t"]);
    let line = again.failed_with_one_line(1);
    assert!(line.contains("already exists"), "{line}");

    let listed = run(&["topics", "list"]).ok();
    assert_eq!(listed.stdout_text(), "admin-t\n");
    let listed = run(&["topics", "list", "--json"]).ok().stdout_text();
    assert!(
        listed.starts_with("[{") && listed.contains("\"name\":\"admin-t\""),
        "{listed}"
    );
    assert!(listed.contains("\"partitions\":3"), "{listed}");

    // Four records on partition 1, so its log end offset says 4.
    let produce_args = with_b(&["produce", "-t", "admin-t", "-p", "1", "-q"]);
    let produce_args: Vec<&str> = produce_args.iter().map(String::as_str).collect();
    sluice(&produce_args, Some(b"a\nb\nc\nd\n")).ok();
    let described = run(&["topics", "describe", "admin-t"]).ok().stdout_text();
    for expected in [
        "Topic:              admin-t\n",
        "Partitions:         3\n",
        "Replication factor: 1\n",
        "Configs (set):      retention.ms=3600000\n",
        "PARTITION  LEADER  REPLICAS  ISR  OFFLINE  LOG-START-OFFSET  LOG-END-OFFSET\n",
        "1          1       1         1    -        0                 4\n",
        "2          1       1         1    -        0                 0\n",
    ] {
        assert!(
            described.contains(expected),
            "no {expected:?} in:\n{described}"
        );
    }
    // The text and JSON forms show the same id, in Kafka's base64 form.
    let id = described
        .lines()
        .find_map(|l| l.strip_prefix("Topic id:           "))
        .expect("a topic id line")
        .to_string();
    assert_eq!(id.len(), 22, "a topic id is 22 base64 characters: {id}");
    let json = run(&["topics", "describe", "admin-t", "--json"])
        .ok()
        .stdout_text();
    assert!(json.contains(&format!("\"id\":\"{id}\"")), "{json}");
    assert!(
        json.contains(
            r#""log_end_offset":4,"log_start_offset":0,"offline_replicas":[],"partition":1"#
        ),
        "{json}"
    );
    assert!(
        json.contains(
            r#"{"name":"retention.ms","read_only":false,"sensitive":false,"source":"TOPIC_CONFIG","value":"3600000"}"#
        ),
        "{json}"
    );

    let altered = run(&["topics", "alter", "admin-t", "--partitions", "5"]).ok();
    assert_eq!(
        altered.stdout_text(),
        "Topic admin-t now has 5 partitions.\n"
    );
    let described = run(&["topics", "describe", "admin-t"]).ok().stdout_text();
    assert!(described.contains("Partitions:         5\n"), "{described}");
    let shrink = run(&["topics", "alter", "admin-t", "--partitions", "2"]);
    shrink.failed_with_one_line(1);
    let configs = run(&["topics", "alter", "admin-t", "--config", "retention.ms=1"]);
    let line = configs.failed_with_one_line(1);
    assert!(line.contains("not supported yet"), "{line}");

    let deleted = run(&["topics", "delete", "admin-t", "--json"]).ok();
    assert_eq!(deleted.stdout_text(), "{\"deleted\":\"admin-t\"}\n");
    assert_eq!(run(&["topics", "list"]).ok().stdout_text(), "");
    let gone = run(&["topics", "describe", "admin-t"]);
    let line = gone.failed_with_one_line(1);
    assert!(line.contains("does not exist"), "{line}");
}

// ---------------------------------------------------------------------------
// Mistakes
// ---------------------------------------------------------------------------

#[test]
fn describing_an_unknown_topic_fails_with_one_line() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    let outcome = sluice(
        &[
            "topics",
            "describe",
            "nosuch",
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
    );
    let line = outcome.failed_with_one_line(1);
    assert_eq!(
        line,
        "sluice: describe topic nosuch: the topic does not exist (UNKNOWN_TOPIC_OR_PARTITION)"
    );
    assert!(outcome.stdout.is_empty());
    let outcome = sluice(
        &[
            "consume",
            "--topic",
            "nosuch",
            "--timeout-ms",
            "1000",
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
    );
    let line = outcome.failed_with_one_line(1);
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn no_broker_fails_fast_with_one_line() {
    let bootstrap = format!("127.0.0.1:{}", dead_port());
    let work = tempfile::tempdir().unwrap();
    let file = write_file(work.path(), "lines.txt", b"k:v\n");
    let file = file.to_str().unwrap();
    for args in [
        &["produce", "--topic", "t", "--file", file][..],
        &["consume", "--topic", "t"],
        &["consume", "--topic", "t", "--group", "g"],
        &["topics", "list"],
        &["topics", "create", "t"],
        &["groups", "list"],
        &["groups", "describe", "g"],
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "earliest",
        ],
        &["groups", "delete", "g"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--bootstrap-server", &bootstrap]);
        let outcome = sluice(&args, Some(b"k:v\n"));
        let line = outcome.failed_with_one_line(1);
        assert!(
            line.contains("no broker reachable") && line.contains(&bootstrap),
            "{line}"
        );
        assert!(
            outcome.elapsed < NO_BROKER_FAILS_WITHIN,
            "`{}` took {:?} to give up",
            outcome.command_line,
            outcome.elapsed
        );
    }
}

#[test]
fn bad_arguments_and_bad_input_fail_with_one_line() {
    let broker = Broker::start(BrokerOptions::default());
    let bootstrap = broker.bootstrap();
    create_topic(&broker, "mistakes", 2);
    for (args, code, says) in [
        (
            &["produce", "--topic", "mistakes", "--acks", "2"][..],
            2,
            "expected 0, 1 or all",
        ),
        (
            &["produce", "--topic", "mistakes", "--compression", "brotli"],
            2,
            "gzip",
        ),
        (&["produce"], 2, "--topic <TOPIC>"),
        (
            &["consume", "--topic", "mistakes", "--format", "%x"],
            2,
            "unknown placeholder %x",
        ),
        (
            &[
                "consume",
                "--topic",
                "mistakes",
                "--from-beginning",
                "--offset",
                "1",
            ],
            2,
            "cannot be used with",
        ),
        (
            &[
                "consume",
                "--topic",
                "mistakes",
                "--group",
                "g",
                "--partition",
                "1",
            ],
            2,
            "'--group <GROUP>' cannot be used with '--partition <P>'",
        ),
        (
            &[
                "consume", "--topic", "mistakes", "--group", "g", "--offset", "1",
            ],
            2,
            "'--group <GROUP>' cannot be used with '--offset <OFFSET>'",
        ),
        (
            &["topics", "create", "x", "--partitions", "0"],
            2,
            "--partitions",
        ),
        (&["topics", "frobnicate"], 2, "frobnicate"),
        (
            &["consume", "--topic", "mistakes", "--partition", "7"],
            1,
            "has 2 partitions",
        ),
        (
            &[
                "consume",
                "--topic",
                "mistakes",
                "--partition",
                "1",
                "--offset",
                "5",
            ],
            1,
            "past the end of mistakes-1",
        ),
        (
            &["produce", "--topic", "mistakes", "--partition", "2"],
            1,
            "has 2 partitions",
        ),
        (
            &[
                "produce",
                "--topic",
                "mistakes",
                "--file",
                "/nonexistent/lines",
            ],
            1,
            "cannot read /nonexistent/lines",
        ),
        (
            &["produce", "--topic", "mistakes", "--key-separator", "="],
            1,
            "line 2 has no key separator",
        ),
        (
            &[
                "consume",
                "--topic",
                "mistakes",
                "--from-beginning",
                "--max-messages",
                "5",
                "--timeout-ms",
                "500",
            ],
            1,
            "read 1 of 5 records",
        ),
    ] {
        let mut args = args.to_vec();
        args.extend(["--bootstrap-server", &bootstrap]);
        let outcome = sluice(&args, Some(b"a=1\nno separator\n"));
        let line = outcome.failed_with_one_line(code);
        assert!(line.contains(says), "`{}`: {line}", outcome.command_line);
    }
}

#[test]
fn serve_refuses_a_bad_override_with_one_line() {
    // config_file::parse_override decides, before anything binds or opens:
    // a pair needs an `=` and a key before it.
    for argument in ["num.partitions", "=3", " =3"] {
        let outcome = sluice(&["serve", "--override", argument], None);
        let line = outcome.failed_with_one_line(1);
        assert_eq!(
            line,
            format!("sluice: bad override `{argument}`: expected key=value"),
            "`{}`",
            outcome.command_line
        );
    }
}

/// A log directory that cannot be one, and a replication factor no
/// broker count here could place, stop the start with one line naming
/// what is wrong and where.
#[test]
fn serve_refuses_a_bad_log_directory_and_replication_factor_with_one_line() {
    let work = tempfile::tempdir().unwrap();
    let file = write_file(work.path(), "not-a-dir", b"x");
    for log_dirs in [file.clone(), file.join("below")] {
        let log_dirs_arg = format!("log.dirs={}", log_dirs.display());
        let outcome = sluice(
            &[
                "serve",
                "--override",
                &log_dirs_arg,
                "--override",
                "listeners=PLAINTEXT://127.0.0.1:0",
            ],
            None,
        );
        let line = outcome.failed_with_one_line(1);
        assert!(
            line.starts_with("sluice: log.dirs: ")
                && line.contains("log directory")
                && line.contains(&log_dirs.display().to_string()),
            "{line}"
        );
    }
    let outcome = sluice(
        &[
            "serve",
            "--override",
            "default.replication.factor=3",
            "--override",
            "listeners=PLAINTEXT://127.0.0.1:0",
        ],
        None,
    );
    let line = outcome.failed_with_one_line(1);
    assert!(
        line.contains("`default.replication.factor`") && line.contains("larger than the 1 broker"),
        "{line}"
    );
}

/// `serve --config server.properties` reads Kafka's format: the broker
/// serves, and logs one line for each Kafka key it ignores.
#[test]
fn serve_reads_kafkas_server_properties() {
    let work = tempfile::tempdir().unwrap();
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let properties = format!(
        "# Kafka's habits\nprocess.roles=broker,controller\nnode.id=1\n\
         listeners=PLAINTEXT://127.0.0.1:{port}\nnum.network.threads=3\n\
         num.io.threads=8\nlog.dirs={}\nlog.retention.hours=168\n",
        work.path().join("data").display()
    );
    let config = write_file(work.path(), "server.properties", properties.as_bytes());
    let mut broker = sluice_tests::Member::spawn(
        sluice_tests::sluice_bin(),
        &[
            "serve".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ],
        work.path(),
        "broker",
    );
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&bootstrap).is_err() {
        broker.fail_if_exited();
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not listen: {}",
            broker.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let created = sluice(
        &[
            "topics",
            "create",
            "from-properties",
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
    );
    assert!(created.status.success(), "{}", created.describe());
    let log = broker.stderr();
    let config_name = config.display().to_string();
    for (line, key) in [(5, "num.network.threads"), (6, "num.io.threads")] {
        let said = format!(
            "{config_name}:{line}: `{key}` is a Kafka setting Sluice does not use; ignored"
        );
        assert_eq!(log.matches(&said).count(), 1, "{said} in:\n{log}");
    }
    assert!(
        log.contains("`log.retention.hours=168` read as `log.retention.ms=604800000`"),
        "{log}"
    );
    assert!(broker.terminate(Duration::from_secs(30)).success());
}

/// A second broker on a data directory another one holds refuses to start,
/// with one line naming the directory, and the first keeps serving.
#[test]
fn a_second_serve_on_the_same_data_directory_is_refused() {
    let broker = Broker::start(BrokerOptions::default());
    let data_dir = broker.data_dir();
    let log_dirs = format!("log.dirs={}", data_dir.display());
    let outcome = sluice(
        &[
            "serve",
            "--override",
            &log_dirs,
            "--override",
            "listeners=PLAINTEXT://127.0.0.1:0",
        ],
        None,
    );
    let line = outcome.failed_with_one_line(1);
    assert!(
        line.contains("is in use by another process")
            && line.contains(&data_dir.display().to_string()),
        "{line}"
    );
    let listed = sluice(
        &["topics", "list", "--bootstrap-server", &broker.bootstrap()],
        None,
    );
    assert!(listed.status.success(), "the first broker still answers");
}
