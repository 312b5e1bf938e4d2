//! Whole-system tests of what the `sluice` commands do with Kafka
//! transactions, against a real broker: `sluice consume --isolation-level`
//! hides an aborted transaction at read_committed and shows it at
//! read_uncommitted; `sluice transactions list` and `describe` show a
//! transactional id as its coordinator holds it, committed and open;
//! `sluice produce --transactional-id` commits a run's lines as one
//! transaction, and aborts them all when the input turns out bad.
//!
//! The transactions are written with the client's `TransactionalProducer`
//! on a runtime of the test's own, so that each one ends exactly as the
//! test says (committed, aborted, or left open).

use std::time::Duration;

use serde_json::Value;
use sluice_client::{
    system_clock, Client, ClientConfig, ProducerRecord, TokioConnector, TopicPartition,
    TransactionalConfig, TransactionalProducer,
};
use sluice_tests::{run_sluice, Broker, BrokerOptions, SluiceRun};

/// Bound on one `sluice` command in these tests.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `sluice consume` waits for one more record before it stops.
const IDLE_MS: &str = "3000";

fn txn_broker() -> Broker {
    Broker::start(BrokerOptions::default().config("group.initial.rebalance.delay.ms", 0))
}

/// Runs `sluice args…` and panics unless it succeeded.
fn sluice_ok(args: &[&str]) -> SluiceRun {
    let run = run_sluice(args, None, SLUICE_TIMEOUT);
    assert!(
        run.status.success(),
        "`{}` ended with {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
        run.command_line,
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

fn stdout_lines(run: &SluiceRun) -> Vec<String> {
    String::from_utf8(run.stdout.clone())
        .expect("sluice printed UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// A runtime for the test's own producer.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A transactional producer with id `transactional_id` on `bootstrap`.
async fn producer(
    bootstrap: &str,
    transactional_id: &str,
) -> TransactionalProducer<TokioConnector> {
    let client = Client::new(TokioConnector, ClientConfig::new([bootstrap]))
        .expect("a client for the broker");
    TransactionalProducer::init(
        client,
        TransactionalConfig::new(transactional_id),
        system_clock(),
    )
    .await
    .expect("init the transactional producer")
}

/// One transaction writing `values` to partition 0 of `topic`, then
/// committed or aborted.
async fn transaction(
    producer: &mut TransactionalProducer<TokioConnector>,
    topic: &str,
    values: &[&str],
    commit: bool,
) {
    let tp = TopicPartition::new(topic, 0);
    let records: Vec<ProducerRecord> = values
        .iter()
        .map(|value| ProducerRecord::new(topic, value.to_string()))
        .collect();
    producer.begin().expect("begin");
    producer.send(&tp, &records).await.expect("send");
    if commit {
        producer.commit().await.expect("commit");
    } else {
        producer.abort().await.expect("abort");
    }
}

/// `sluice consume` of the whole topic at `isolation`: the values printed.
fn consume_all(bootstrap: &str, topic: &str, isolation: &str) -> Vec<String> {
    let run = sluice_ok(&[
        "consume",
        "--topic",
        topic,
        "--from-beginning",
        "--timeout-ms",
        IDLE_MS,
        "--isolation-level",
        isolation,
        "--bootstrap-server",
        bootstrap,
    ]);
    stdout_lines(&run)
}

#[test]
fn consume_at_read_committed_hides_an_aborted_transaction() {
    let broker = txn_broker();
    let bootstrap = broker.bootstrap();
    let topic = "isolation";
    sluice_ok(&[
        "topics",
        "create",
        topic,
        "--partitions",
        "1",
        "--bootstrap-server",
        &bootstrap,
    ]);
    runtime().block_on(async {
        let mut producer = producer(&bootstrap, "cli-isolation").await;
        transaction(&mut producer, topic, &["kept-1", "kept-2"], true).await;
        transaction(&mut producer, topic, &["dropped-1", "dropped-2"], false).await;
        transaction(&mut producer, topic, &["kept-3"], true).await;
    });
    assert_eq!(
        consume_all(&bootstrap, topic, "read_committed"),
        ["kept-1", "kept-2", "kept-3"]
    );
    assert_eq!(
        consume_all(&bootstrap, topic, "read_uncommitted"),
        ["kept-1", "kept-2", "dropped-1", "dropped-2", "kept-3"]
    );
}

/// `sluice transactions ARGS… --json --bootstrap-server B`, parsed.
fn transactions_json(bootstrap: &str, args: &[&str]) -> Value {
    let mut all = vec!["transactions"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--bootstrap-server", bootstrap]);
    let run = sluice_ok(&all);
    serde_json::from_slice(&run.stdout).expect("sluice printed JSON")
}

/// The listing of `transactional_id` in `sluice transactions list --json`.
fn listed(bootstrap: &str, transactional_id: &str) -> Value {
    let listings = transactions_json(bootstrap, &["list"]);
    listings
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|listing| listing["transactional_id"] == transactional_id)
        .cloned()
        .unwrap_or_else(|| panic!("{transactional_id} is not listed in {listings}"))
}

#[test]
fn transactions_list_and_describe_show_committed_and_open_transactions() {
    let broker = txn_broker();
    let bootstrap = broker.bootstrap();
    let topic = "payments";
    let id = "cli-payments";
    sluice_ok(&[
        "topics",
        "create",
        topic,
        "--partitions",
        "1",
        "--bootstrap-server",
        &bootstrap,
    ]);
    let runtime = runtime();
    let mut producer = runtime.block_on(async {
        let mut producer = producer(&bootstrap, id).await;
        transaction(&mut producer, topic, &["one"], true).await;
        producer
    });
    let producer_id = producer.producer_id();

    let listing = listed(&bootstrap, id);
    assert_eq!(listing["state"], "CompleteCommit", "{listing}");
    assert_eq!(listing["producer_id"], producer_id, "{listing}");
    assert_eq!(listing["coordinator"], 1, "{listing}");
    let committed = transactions_json(&bootstrap, &["describe", "--transactional-id", id]);
    assert_eq!(committed["state"], "CompleteCommit", "{committed}");
    assert_eq!(committed["producer_id"], producer_id, "{committed}");
    assert_eq!(
        committed["producer_epoch"],
        producer.producer_epoch(),
        "{committed}"
    );
    assert_eq!(committed["transaction_timeout_ms"], 60_000, "{committed}");
    assert_eq!(
        committed["partitions"],
        serde_json::json!([]),
        "{committed}"
    );

    // A transaction left open: Ongoing, with its partition and start time.
    runtime.block_on(async {
        producer.begin().expect("begin");
        let tp = TopicPartition::new(topic, 0);
        producer
            .send(&tp, &[ProducerRecord::new(topic, "two")])
            .await
            .expect("send");
    });
    assert_eq!(listed(&bootstrap, id)["state"], "Ongoing");
    let open = transactions_json(&bootstrap, &["describe", "--transactional-id", id]);
    assert_eq!(open["state"], "Ongoing", "{open}");
    assert_eq!(
        open["partitions"],
        serde_json::json!([{"topic": topic, "partition": 0}]),
        "{open}"
    );
    assert!(
        open["transaction_start_time_ms"].as_i64().unwrap_or(-1) > 0,
        "{open}"
    );
    let text = sluice_ok(&[
        "transactions",
        "describe",
        "--transactional-id",
        id,
        "--bootstrap-server",
        &bootstrap,
    ]);
    let lines = stdout_lines(&text);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("COORDINATOR  TRANSACTIONAL-ID"),
        "{lines:?}"
    );
    assert!(lines[1].contains(" Ongoing "), "{lines:?}");
    assert!(lines[1].ends_with(" payments-0"), "{lines:?}");
    runtime.block_on(async { producer.abort().await.expect("abort") });
    assert_eq!(listed(&bootstrap, id)["state"], "CompleteAbort");

    let unknown = run_sluice(
        &[
            "transactions",
            "describe",
            "--transactional-id",
            "nobody",
            "--bootstrap-server",
            &bootstrap,
        ],
        None,
        SLUICE_TIMEOUT,
    );
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("TRANSACTIONAL_ID_NOT_FOUND") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn produce_with_a_transactional_id_commits_a_good_run_and_aborts_a_bad_one() {
    let broker = txn_broker();
    let bootstrap = broker.bootstrap();
    let topic = "imports";
    let id = "cli-import";
    sluice_ok(&[
        "topics",
        "create",
        topic,
        "--partitions",
        "3",
        "--bootstrap-server",
        &bootstrap,
    ]);
    let produce = |input: &[u8]| {
        run_sluice(
            &[
                "produce",
                "--topic",
                topic,
                "-K",
                ":",
                "--transactional-id",
                id,
                "--bootstrap-server",
                &bootstrap,
            ],
            Some(input),
            SLUICE_TIMEOUT,
        )
    };
    let good = produce(b"a:good-1\nb:good-2\nc:good-3\n");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(listed(&bootstrap, id)["state"], "CompleteCommit");
    // The third line has no separator: the two before it were sent, then
    // the transaction was aborted.
    let bad = produce(b"a:bad-1\nb:bad-2\nno separator\n");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("line 3 has no key separator") && stderr.contains("aborted"),
        "{stderr}"
    );
    assert_eq!(listed(&bootstrap, id)["state"], "CompleteAbort");

    let sorted = |mut values: Vec<String>| {
        values.sort();
        values
    };
    assert_eq!(
        sorted(consume_all(&bootstrap, topic, "read_committed")),
        ["good-1", "good-2", "good-3"]
    );
    assert_eq!(
        sorted(consume_all(&bootstrap, topic, "read_uncommitted")),
        ["bad-1", "bad-2", "good-1", "good-2", "good-3"]
    );
}
