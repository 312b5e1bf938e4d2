//! Whole-system tests of the habits `sluice` shares with Kafka's tools and
//! kcat, against a real broker:
//!
//! - the bootstrap comes from `-b`, else `SLUICE_BOOTSTRAP_SERVERS`, else
//!   `KAFKA_BOOTSTRAP_SERVERS`;
//! - `consume --offset earliest|latest|-2|-1|N` and `--from-timestamp MS`
//!   start where they say, on batches written with known timestamps;
//! - `produce -K`, `-k`, `-H` and `-Z` write the keys, headers and nulls
//!   (tombstones) that `consume -Z -f` and `--json` print back, and kcat
//!   reads the same nulls;
//! - `cluster info` lists the broker's ApiVersions as the core serves them.
//!
//! Every test starts its own broker. kcat comes from
//! `scripts/install-test-deps`.

use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitStatus;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use serde_json::Value;
use sluice_tests::wire::{batch_of, Wire};
use sluice_tests::{kcat, run_sluice_with_env, run_tool, Broker, BrokerOptions};

/// Bound on one `sluice` command in these tests.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(60);

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
}

/// `sluice args…` with `env` (the bootstrap variables unset otherwise).
fn sluice_env(args: &[&str], env: &[(&str, Option<&str>)], stdin: Option<&[u8]>) -> Outcome {
    let run = run_sluice_with_env(args, env, stdin, SLUICE_TIMEOUT);
    Outcome {
        status: run.status,
        stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        command_line: run.command_line,
    }
}

/// `sluice args… -b BROKER`.
fn sluice(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    let bootstrap = broker.bootstrap();
    let mut all = args.to_vec();
    all.extend(["-b", &bootstrap]);
    sluice_env(&all, &[], stdin)
}

/// An address on 127.0.0.1 where nothing listens (it was free a moment ago).
fn dead_address() -> String {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn the_bootstrap_comes_from_the_flag_then_sluice_then_kafka_variables() {
    let broker = Broker::start(BrokerOptions::default());
    let live = broker.bootstrap();
    let dead = dead_address();
    sluice(&broker, &["topics", "create", "env-topic"], None).ok();
    let list = ["topics", "list"];
    let sluice_var = "SLUICE_BOOTSTRAP_SERVERS";
    let kafka_var = "KAFKA_BOOTSTRAP_SERVERS";
    for (env, flag, reaches) in [
        (vec![(sluice_var, Some(live.as_str()))], None, true),
        (vec![(kafka_var, Some(live.as_str()))], None, true),
        // A blank variable counts as unset.
        (
            vec![(sluice_var, Some(" ")), (kafka_var, Some(live.as_str()))],
            None,
            true,
        ),
        // SLUICE_ wins over KAFKA_.
        (
            vec![
                (sluice_var, Some(dead.as_str())),
                (kafka_var, Some(live.as_str())),
            ],
            None,
            false,
        ),
        (
            vec![
                (sluice_var, Some(live.as_str())),
                (kafka_var, Some(dead.as_str())),
            ],
            None,
            true,
        ),
        // The flag wins over both.
        (
            vec![
                (sluice_var, Some(dead.as_str())),
                (kafka_var, Some(dead.as_str())),
            ],
            Some(live.as_str()),
            true,
        ),
        (
            vec![(sluice_var, Some(live.as_str()))],
            Some(dead.as_str()),
            false,
        ),
    ] {
        let mut args = list.to_vec();
        if let Some(flag) = flag {
            args.extend(["-b", flag]);
        }
        let outcome = sluice_env(&args, &env, None);
        if reaches {
            let outcome = outcome.ok();
            assert_eq!(outcome.stdout, "env-topic\n", "{env:?} {flag:?}");
        } else {
            assert_eq!(outcome.status.code(), Some(1), "{}", outcome.describe());
            assert!(
                outcome.stderr.contains("no broker reachable") && outcome.stderr.contains(&dead),
                "{env:?} {flag:?}: {}",
                outcome.describe()
            );
        }
    }
    // A bad list is blamed on the variable it came from.
    let outcome = sluice_env(&list, &[(kafka_var, Some("nohost"))], None);
    assert_eq!(outcome.status.code(), Some(2), "{}", outcome.describe());
    assert_eq!(
        outcome.stderr,
        "sluice: KAFKA_BOOTSTRAP_SERVERS wants HOST:PORT[,HOST:PORT...], got `nohost`\n"
    );
}

/// Writes 8 records to the one partition of `topic`: offsets 0-2 at
/// `base_ms`, 3-5 at `base_ms + 1000`, 6-7 at `base_ms + 2000`.
fn write_stamped(broker: &Broker, topic: &str, base_ms: i64) {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect to the broker");
    assert_eq!(wire.create_topic(topic, 1).expect("CreateTopics"), 0);
    for (values, timestamp) in [
        (["a", "b", "c"].as_slice(), base_ms),
        (["d", "e", "f"].as_slice(), base_ms + 1000),
        (["g", "h"].as_slice(), base_ms + 2000),
    ] {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let (error, _) = wire
            .produce(topic, 0, -1, batch_of(&values, timestamp))
            .expect("Produce");
        assert_eq!(error, 0);
    }
}

#[test]
fn consume_starts_at_named_offsets_sentinels_numbers_and_timestamps() {
    let broker = Broker::start(BrokerOptions::default().config("log.retention.ms", -1));
    let topic = "stamped";
    // An hour ago, so that no timestamp bound of the broker is near.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = now_ms - 3_600_000;
    write_stamped(&broker, topic, base);
    // `-f %o:%s` of what a consume printed; records not there within the
    // idle bound end the run, so an empty answer is quick.
    let read = |start: &[&str], count: Option<usize>| -> String {
        let mut args = vec!["consume", "-t", topic, "-f", "%o:%s\\n", "-q"];
        args.extend(start);
        let count = count.map(|c| c.to_string());
        match &count {
            Some(count) => args.extend(["-c", count]),
            None => args.extend(["--timeout-ms", "1000"]),
        }
        sluice(&broker, &args, None).ok().stdout
    };
    let all = "0:a\n1:b\n2:c\n3:d\n4:e\n5:f\n6:g\n7:h\n";
    assert_eq!(read(&["-o", "earliest"], Some(8)), all);
    assert_eq!(read(&["--offset", "-2"], Some(8)), all);
    assert_eq!(read(&["-o", "beginning"], Some(8)), all);
    assert_eq!(read(&["-o", "5"], Some(3)), "5:f\n6:g\n7:h\n");
    assert_eq!(read(&["-o", "0"], Some(1)), "0:a\n");
    // The end: nothing until a new record comes.
    assert_eq!(read(&["-o", "latest"], None), "");
    assert_eq!(read(&["-o", "-1"], None), "");
    assert_eq!(read(&[], None), "", "the default is the end");
    // The first record at or after the timestamp.
    for (target, expected) in [
        (0, all),
        (base, all),
        (base + 1, "3:d\n4:e\n5:f\n6:g\n7:h\n"),
        (base + 1000, "3:d\n4:e\n5:f\n6:g\n7:h\n"),
        (base + 1001, "6:g\n7:h\n"),
        (base + 2000, "6:g\n7:h\n"),
    ] {
        let lines = expected.lines().count();
        let target = target.to_string();
        assert_eq!(
            read(&["--from-timestamp", &target], Some(lines)),
            expected,
            "--from-timestamp {target} (base {base})"
        );
    }
    // None that late: the end, so nothing is printed.
    let late = (base + 2001).to_string();
    assert_eq!(read(&["--from-timestamp", &late], None), "");
    // An offset past the end is the user's mistake, said in one line.
    let outcome = sluice(&broker, &["consume", "-t", topic, "-o", "9"], None);
    assert_eq!(outcome.status.code(), Some(1), "{}", outcome.describe());
    assert!(
        outcome
            .stderr
            .contains("offset 9 is past the end of stamped-0"),
        "{}",
        outcome.describe()
    );
    let outcome = sluice(&broker, &["consume", "-t", topic, "-o", "-3"], None);
    assert_eq!(outcome.status.code(), Some(2), "{}", outcome.describe());
}

#[test]
fn keys_headers_and_nulls_round_trip_through_produce_and_consume() {
    let broker = Broker::start(BrokerOptions::default());
    let topic = "tombstones";
    sluice(
        &broker,
        &["topics", "create", topic, "--partitions", "1"],
        None,
    )
    .ok();
    // -K splits keys, -H adds headers to every record, -Z sends an empty
    // value as null (a tombstone) and an empty key as none.
    sluice(
        &broker,
        &[
            "produce",
            "-t",
            topic,
            "-K",
            ":",
            "-Z",
            "-H",
            "trace=t-1",
            "-H",
            "empty=",
            "-q",
        ],
        Some(b"k1:v1\nk2:\n:v3\n"),
    )
    .ok();
    // Without -Z an empty value stays an empty value; -k keys every record.
    sluice(
        &broker,
        &["produce", "-t", topic, "-K", ":", "-q"],
        Some(b"k4:\n"),
    )
    .ok();
    sluice(
        &broker,
        &["produce", "-t", topic, "-k", "fixed", "-q"],
        Some(b"a\nb\n"),
    )
    .ok();
    let printed = sluice(
        &broker,
        &[
            "consume",
            "-t",
            topic,
            "-o",
            "earliest",
            "-c",
            "6",
            "-Z",
            "-f",
            "%o %k|%s|%h|%K|%S\\n",
            "-q",
        ],
        None,
    )
    .ok()
    .stdout;
    assert_eq!(
        printed,
        "0 k1|v1|trace=t-1,empty=|2|2\n\
         1 k2|NULL|trace=t-1,empty=|2|-1\n\
         2 NULL|v3|trace=t-1,empty=|-1|2\n\
         3 k4|||2|0\n\
         4 fixed|a||5|1\n\
         5 fixed|b||5|1\n"
    );
    // The same records as JSON: nulls are null, headers keep their order.
    let json = sluice(
        &broker,
        &["consume", "-t", topic, "-o", "0", "-c", "3", "--json", "-q"],
        None,
    )
    .ok()
    .stdout;
    let records: Vec<Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 3, "{json}");
    assert_eq!(records[1]["key"], "k2");
    assert_eq!(records[1]["value"], Value::Null, "a tombstone: {json}");
    assert_eq!(records[2]["key"], Value::Null, "{json}");
    assert_eq!(
        records[0]["headers"],
        serde_json::json!([{"key": "trace", "value": "t-1"}, {"key": "empty", "value": ""}])
    );
    // kcat sees the same nulls: -1 is its length of a null.
    let kcat_view = run_tool(
        kcat(),
        [
            "-C",
            "-b",
            &broker.bootstrap(),
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o %K %S\\n",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(kcat_view, "0 2 2\n1 2 -1\n2 -1 2\n3 2 0\n4 5 1\n5 5 1\n");
}

#[test]
fn cluster_info_lists_the_api_versions_the_broker_serves() {
    let broker = Broker::start(BrokerOptions::default());
    let text = sluice(&broker, &["cluster", "info"], None).ok().stdout;
    assert!(
        text.starts_with(&format!("Broker:  {}\n\nAPI ", broker.bootstrap())),
        "{text}"
    );
    let json: Value = serde_json::from_str(
        &sluice(&broker, &["cluster", "info", "--json"], None)
            .ok()
            .stdout,
    )
    .expect("JSON");
    let apis = json["apis"].as_array().expect("an apis array");
    for api in [ApiKey::Produce, ApiKey::Fetch, ApiKey::ApiVersions] {
        let (min, max) = sluice_core::wire::versions::supported_versions(api).unwrap();
        let row = apis
            .iter()
            .find(|row| row["key"] == api as i16)
            .unwrap_or_else(|| panic!("{api:?} is not listed: {json}"));
        assert_eq!(row["api"], format!("{api:?}"));
        assert_eq!(
            (&row["min_version"], &row["max_version"]),
            (&min.into(), &max.into())
        );
        let line = format!("{api:?} ");
        let listed = text
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("no {api:?} row: {text}"));
        let cells: Vec<&str> = listed.split_whitespace().collect();
        assert_eq!(
            cells[1..4],
            [(api as i16).to_string(), min.to_string(), max.to_string()]
        );
    }
}
