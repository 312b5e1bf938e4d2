//! Whole-system tests of what the `sluice` commands do with Kafka
//! transactions, against a real broker: `sluice consume --isolation-level`
//! hides an aborted transaction at read_committed and shows it at
//! read_uncommitted.
//!
//! The transactions are written with the client's `TransactionalProducer`
//! on a runtime of the test's own, so that each one ends exactly as the
//! test says (committed, aborted, or left open).

use std::time::Duration;

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
