//! Transactions against a real `sluice` process: a committed transaction
//! becomes visible at read_committed and an aborted one never does (while
//! read_uncommitted sees both), an open one holds the last stable offset
//! back, a second instance with the same transactional id fences the first,
//! and a group's offsets sent in a transaction become its committed offsets
//! on commit and are dropped on abort; calls out of order are refused, and
//! after a failed send only an abort is, which bumps the epoch. `send_all`
//! writes many batches over several partitions at once, each once and in
//! order even when an answer is lost mid-way.

// Not every test file uses every helper (this one never restarts).
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_client::*;
use support::lossy::LossyConnector;
use support::Broker;
use tokio::time::Instant;

/// Upper bound on waiting for a transaction's markers, or for records.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Client logs for a failing test: `RUST_LOG=sluice_client=debug`.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn create_topic(broker: &Broker, topic: &str, partitions: i32) -> Vec<TopicPartition> {
    logs();
    Admin::new(broker.client())
        .create_topic(&NewTopic::new(topic, partitions, 1))
        .await
        .unwrap();
    (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect()
}

async fn producer(
    broker: &Broker,
    transactional_id: &str,
) -> TransactionalProducer<TokioConnector> {
    let config = TransactionalConfig {
        max_block_ms: 20_000,
        delivery_timeout_ms: 20_000,
        ..TransactionalConfig::new(transactional_id)
    };
    TransactionalProducer::init(broker.client(), config, system_clock())
        .await
        .expect("init")
}

fn records(tp: &TopicPartition, values: &[&str]) -> Vec<ProducerRecord> {
    values
        .iter()
        .map(|value| ProducerRecord::new(tp.topic.clone(), value.to_string()))
        .collect()
}

fn consumer(broker: &Broker, isolation_level: IsolationLevel) -> Consumer<TokioConnector> {
    let config = ConsumerConfig {
        isolation_level,
        auto_offset_reset: OffsetReset::Earliest,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    };
    Consumer::new(broker.client(), config).unwrap()
}

/// The end offset of each partition at `isolation_level`: the high
/// watermark, or at read_committed the last stable offset.
async fn ends(
    broker: &Broker,
    tps: &[TopicPartition],
    isolation_level: IsolationLevel,
) -> BTreeMap<TopicPartition, i64> {
    let listed = consumer(broker, isolation_level)
        .list_offsets(tps, OffsetSpec::Latest)
        .await
        .unwrap();
    listed.into_iter().map(|(tp, l)| (tp, l.offset)).collect()
}

/// Waits until no transaction holds the partitions' last stable offsets
/// back: every marker is written.
async fn settle(broker: &Broker, tps: &[TopicPartition]) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let committed = ends(broker, tps, IsolationLevel::ReadCommitted).await;
        let uncommitted = ends(broker, tps, IsolationLevel::ReadUncommitted).await;
        if committed == uncommitted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "last stable offsets {committed:?} stay below the high watermarks {uncommitted:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every value a consumer at `isolation_level` reads from the beginning
/// up to the end offsets at that level, by partition.
async fn read_all(
    broker: &Broker,
    tps: &[TopicPartition],
    isolation_level: IsolationLevel,
) -> BTreeMap<i32, Vec<String>> {
    let ends = ends(broker, tps, isolation_level).await;
    let mut consumer = consumer(broker, isolation_level);
    consumer.assign(tps.iter().cloned());
    consumer.seek_to_beginning(tps).await.unwrap();
    let mut read: BTreeMap<i32, Vec<String>> =
        tps.iter().map(|tp| (tp.partition, vec![])).collect();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while tps
        .iter()
        .any(|tp| consumer.position(tp).unwrap_or(0) < ends[tp])
    {
        assert!(
            Instant::now() < deadline,
            "reading up to {ends:?} took too long"
        );
        for record in consumer.poll(POLL).await.unwrap() {
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            read.entry(record.partition).or_default().push(value);
        }
    }
    read
}

fn by_partition(pairs: &[(i32, &[&str])]) -> BTreeMap<i32, Vec<String>> {
    pairs
        .iter()
        .map(|(p, values)| (*p, values.iter().map(|v| v.to_string()).collect()))
        .collect()
}

async fn committed_offsets(
    broker: &Broker,
    group: &str,
    tps: &[TopicPartition],
) -> BTreeMap<TopicPartition, i64> {
    Admin::new(broker.client())
        .list_consumer_group_offsets(group, Some(tps))
        .await
        .unwrap()
}

fn is_fenced(error: &Error) -> bool {
    matches!(
        error.response_error(),
        Some(ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_is_visible_at_read_committed_once_committed() {
    let broker = Broker::start();
    let tps = create_topic(&broker, "committed", 2).await;
    let mut producer = producer(&broker, "committer").await;
    assert!(producer.producer_id() >= 0 && producer.producer_epoch() >= 0);
    producer.begin().unwrap();
    let first = producer.send(&tps[0], &records(&tps[0], &["a", "b"])).await;
    assert_eq!(first.unwrap(), 0);
    let second = producer.send(&tps[1], &records(&tps[1], &["c"])).await;
    assert_eq!(second.unwrap(), 0);
    let third = producer.send(&tps[0], &records(&tps[0], &["d"])).await;
    assert_eq!(third.unwrap(), 2, "the partition's second batch");

    // Open: read_committed stops at the transaction's first offset.
    let stable = ends(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(stable.values().copied().collect::<Vec<_>>(), [0, 0]);
    let nothing = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(nothing, by_partition(&[(0, &[]), (1, &[])]));
    let open = read_all(&broker, &tps, IsolationLevel::ReadUncommitted).await;
    assert_eq!(open, by_partition(&[(0, &["a", "b", "d"]), (1, &["c"])]));

    producer.commit().await.unwrap();
    assert_eq!(producer.state(), TransactionState::Ready);
    settle(&broker, &tps).await;
    let read = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(read, by_partition(&[(0, &["a", "b", "d"]), (1, &["c"])]));

    // The next transaction of the same epoch goes on with the sequences.
    producer.begin().unwrap();
    let next = producer.send(&tps[1], &records(&tps[1], &["e"])).await;
    assert_eq!(next.unwrap(), 2, "after the record and the marker");
    producer.commit().await.unwrap();
    settle(&broker, &tps).await;
    let read = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(
        read,
        by_partition(&[(0, &["a", "b", "d"]), (1, &["c", "e"])])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_is_seen_only_at_read_uncommitted() {
    let broker = Broker::start();
    let tps = create_topic(&broker, "aborted", 2).await;
    let mut producer = producer(&broker, "aborter").await;
    producer.begin().unwrap();
    producer
        .send(&tps[0], &records(&tps[0], &["x1", "x2"]))
        .await
        .unwrap();
    producer
        .send(&tps[1], &records(&tps[1], &["x3"]))
        .await
        .unwrap();
    producer.abort().await.unwrap();
    assert_eq!(producer.state(), TransactionState::Ready);
    producer.begin().unwrap();
    producer
        .send(&tps[0], &records(&tps[0], &["kept"]))
        .await
        .unwrap();
    producer.commit().await.unwrap();
    settle(&broker, &tps).await;

    let committed = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(committed, by_partition(&[(0, &["kept"]), (1, &[])]));
    let uncommitted = read_all(&broker, &tps, IsolationLevel::ReadUncommitted).await;
    assert_eq!(
        uncommitted,
        by_partition(&[(0, &["x1", "x2", "kept"]), (1, &["x3"])])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_init_fences_the_first_instance() {
    let broker = Broker::start();
    let tps = create_topic(&broker, "fenced", 1).await;
    let tp = &tps[0];

    // Fenced before its commit.
    let mut old = producer(&broker, "worker-1").await;
    old.begin().unwrap();
    old.send(tp, &records(tp, &["zombie-1"])).await.unwrap();
    let mut new = producer(&broker, "worker-1").await;
    assert_eq!(new.producer_id(), old.producer_id());
    assert!(new.producer_epoch() > old.producer_epoch());
    let error = old.commit().await.expect_err("a fenced commit");
    assert!(is_fenced(&error), "{error}");
    assert_eq!(old.state(), TransactionState::FatalError);
    assert!(old.begin().is_err() && old.abort().await.is_err());

    // Fenced before its next send to a partition it already wrote to.
    new.begin().unwrap();
    new.send(tp, &records(tp, &["zombie-2"])).await.unwrap();
    let mut newest = producer(&broker, "worker-1").await;
    let error = new
        .send(tp, &records(tp, &["zombie-3"]))
        .await
        .expect_err("a fenced send");
    assert!(is_fenced(&error), "{error}");
    assert_eq!(new.state(), TransactionState::FatalError);

    newest.begin().unwrap();
    newest.send(tp, &records(tp, &["survivor"])).await.unwrap();
    newest.commit().await.unwrap();
    settle(&broker, &tps).await;
    let read = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(read, by_partition(&[(0, &["survivor"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_in_a_transaction_are_committed_with_it_and_dropped_on_abort() {
    let broker = Broker::start();
    let input = create_topic(&broker, "input", 2).await;
    let group = "pipeline";
    // The group committed before, outside transactions.
    let earlier: BTreeMap<TopicPartition, i64> = input.iter().map(|tp| (tp.clone(), 1)).collect();
    Admin::new(broker.client())
        .alter_consumer_group_offsets(group, &earlier)
        .await
        .unwrap();
    transactional_offsets(&broker, &input, group, earlier).await;
}

/// On a broker where no group ever committed, `__consumer_offsets` does not
/// exist yet when the first AddOffsetsToTxn and TxnOffsetCommit arrive:
/// both must still name the partition the group will have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_in_a_transaction_on_a_fresh_broker() {
    let broker = Broker::start();
    let input = create_topic(&broker, "input", 2).await;
    transactional_offsets(&broker, &input, "pipeline", BTreeMap::new()).await;
}

/// A transaction commits offsets of `group` for `input`, then an aborted
/// one tries to move them: the first ones stay. `earlier` is what the
/// group had committed before.
async fn transactional_offsets(
    broker: &Broker,
    input: &[TopicPartition],
    group: &str,
    earlier: BTreeMap<TopicPartition, i64>,
) {
    let output = create_topic(broker, "output", 1).await;
    let mut producer = producer(broker, "pipeline-1").await;

    producer.begin().unwrap();
    producer
        .send(&output[0], &records(&output[0], &["derived-1"]))
        .await
        .unwrap();
    let offsets = [(input[0].clone(), 5), (input[1].clone(), 3)];
    producer.send_offsets(group, &offsets).await.unwrap();
    assert_eq!(
        committed_offsets(broker, group, input).await,
        earlier,
        "offsets of an open transaction are not the group's yet"
    );
    producer.commit().await.unwrap();
    settle(broker, &output).await;
    let expected: BTreeMap<TopicPartition, i64> = offsets.iter().cloned().collect();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let committed = committed_offsets(broker, group, input).await;
        if committed == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets: {committed:?}"
        );
        tokio::time::sleep(POLL).await;
    }

    producer.begin().unwrap();
    producer
        .send(&output[0], &records(&output[0], &["derived-2"]))
        .await
        .unwrap();
    producer
        .send_offsets(group, &[(input[0].clone(), 9)])
        .await
        .unwrap();
    producer.abort().await.unwrap();
    // The next transaction starts once the abort completed.
    producer.begin().unwrap();
    producer
        .send(&output[0], &records(&output[0], &["derived-3"]))
        .await
        .unwrap();
    producer.commit().await.unwrap();
    settle(broker, &output).await;
    assert_eq!(committed_offsets(broker, group, input).await, expected);
    let read = read_all(broker, &output, IsolationLevel::ReadCommitted).await;
    assert_eq!(read, by_partition(&[(0, &["derived-1", "derived-3"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_out_of_order_are_refused_without_reaching_the_broker() {
    let broker = Broker::start();
    let tps = create_topic(&broker, "order", 1).await;
    let tp = &tps[0];
    let mut producer = producer(&broker, "orderly").await;
    let refused = |result: Result<()>, operation| match result {
        Err(Error::TransactionState {
            operation: o,
            state: TransactionState::Ready,
            ..
        }) => assert_eq!(o, operation),
        other => panic!("{operation} outside a transaction: {other:?}"),
    };
    refused(producer.commit().await, Operation::Commit);
    refused(producer.abort().await, Operation::Abort);
    refused(
        producer.send_offsets("g", &[(tp.clone(), 1)]).await,
        Operation::SendOffsets,
    );
    let send = producer.send(tp, &records(tp, &["v"])).await;
    assert!(
        matches!(send, Err(Error::TransactionState { .. })),
        "{send:?}"
    );
    producer.begin().unwrap();
    assert!(producer.begin().is_err(), "one transaction at a time");
    let elsewhere = [ProducerRecord::new("order", "v").with_partition(3)];
    let refused = producer.send(tp, &elsewhere).await;
    assert!(
        matches!(refused, Err(Error::InvalidRecords(_))),
        "{refused:?}"
    );
    assert_eq!(producer.state(), TransactionState::InTransaction);
    // Nothing was added: the commit sends no EndTxn and succeeds.
    producer.commit().await.unwrap();
    assert_eq!(
        ends(&broker, &tps, IsolationLevel::ReadUncommitted).await[tp],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_leaves_only_abort_which_bumps_the_epoch() {
    let broker = Broker::start();
    let tps = create_topic(&broker, "refused", 1).await;
    let tp = &tps[0];
    let mut producer = producer(&broker, "refused-1").await;
    let (producer_id, epoch) = (producer.producer_id(), producer.producer_epoch());
    producer.begin().unwrap();
    producer.send(tp, &records(tp, &["before"])).await.unwrap();
    // Above the broker's message.max.bytes (1 MiB by default).
    let huge = "x".repeat(2 * 1024 * 1024);
    let error = producer
        .send(tp, &records(tp, &[huge.as_str()]))
        .await
        .expect_err("too large for the broker");
    assert_eq!(
        error.response_error(),
        Some(ResponseError::MessageTooLarge),
        "{error}"
    );
    assert_eq!(producer.state(), TransactionState::AbortableError);
    let refused = producer.commit().await;
    assert!(
        matches!(refused, Err(Error::TransactionState { cause: Some(_), .. })),
        "{refused:?}"
    );
    producer.abort().await.unwrap();
    assert_eq!(producer.state(), TransactionState::Ready);
    assert_eq!(producer.producer_id(), producer_id);
    assert_eq!(
        producer.producer_epoch(),
        epoch + 1,
        "the abort bumped the epoch"
    );

    producer.begin().unwrap();
    producer.send(tp, &records(tp, &["after"])).await.unwrap();
    producer.commit().await.unwrap();
    settle(&broker, &tps).await;
    let read = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(read, by_partition(&[(0, &["after"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_writes_many_batches_once_and_in_order_despite_a_lost_answer() {
    let broker = Broker::start();
    let tps = create_topic(&broker, "send-all", 2).await;
    let (client, connector) = LossyConnector::client(broker.client_config());
    let config = TransactionalConfig {
        max_block_ms: 20_000,
        delivery_timeout_ms: 20_000,
        ..TransactionalConfig::new("send-all-1")
    };
    let mut producer = TransactionalProducer::init(client, config, system_clock())
        .await
        .unwrap();
    // Seven batches for partition 0 (more than the five a leader takes in
    // flight from one producer) and three for partition 1, interleaved.
    let mut batches = Vec::new();
    for i in 0..10 {
        let tp = &tps[usize::from(i >= 7)];
        let values: Vec<String> = (0..3).map(|r| format!("b{i}-r{r}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        batches.push((tp.clone(), records(tp, &refs)));
    }
    batches.swap(3, 8);
    let mut expected: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (tp, records) in &batches {
        let values = records
            .iter()
            .map(|r| String::from_utf8(r.value.as_ref().unwrap().to_vec()).unwrap());
        expected.entry(tp.partition).or_default().extend(values);
    }
    // The answer of the second request is lost with later ones in flight.
    connector.lose_produce_answers(1, 1);
    producer.begin().unwrap();
    let offsets = producer.send_all(&batches).await.unwrap();
    assert_eq!(connector.lost(), 1, "an answer was lost");
    assert!(
        connector.produce_outstanding_max() > 1,
        "the requests were pipelined"
    );
    assert_eq!(offsets.len(), batches.len());
    let again = records(&tps[0], &["last"]);
    producer.send_all(&[(tps[0].clone(), again)]).await.unwrap();
    producer.commit().await.unwrap();
    expected.get_mut(&0).unwrap().push("last".into());
    settle(&broker, &tps).await;
    let read = read_all(&broker, &tps, IsolationLevel::ReadCommitted).await;
    assert_eq!(
        read, expected,
        "each record once, in send order per partition"
    );
}
