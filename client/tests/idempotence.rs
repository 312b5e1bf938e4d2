//! The idempotent producer against a real `sluice` process: a retry after
//! a lost answer writes once (where a producer without idempotence writes
//! twice), batches carry the producer id and contiguous sequences per
//! partition, order holds with several batches in flight across a cut
//! connection, and a batch refused for good makes the producer bump its
//! epoch and go on from sequence 0.
//!
//! Lost answers come from `support::lossy::LossyConnector`.

// Not every test file uses every helper (this one never restarts).
#[allow(dead_code)]
mod support;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_client::connection::Connection;
use sluice_client::*;
use sluice_core::batch::{headers_in, BatchHeader};
use support::lossy::LossyConnector;
use support::Broker;

/// Client logs for a failing test: `RUST_LOG=sluice_client=debug`.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn create_topic(broker: &Broker, topic: NewTopic) {
    logs();
    Admin::new(broker.client())
        .create_topic(&topic)
        .await
        .unwrap();
}

fn lossy_client(broker: &Broker) -> (Client<LossyConnector>, LossyConnector) {
    LossyConnector::client(broker.client_config())
}

/// Every batch of a partition, read with Fetch (named topics: v12),
/// with the values of its records.
async fn log_of(broker: &Broker, tp: &TopicPartition) -> Vec<(BatchHeader, Vec<Bytes>)> {
    let mut config = broker.client_config();
    config.api_version_caps = vec![(ApiKey::Fetch, 12)];
    let connection = Connection::open(&TokioConnector, &broker.address(), &config)
        .await
        .unwrap();
    let version = connection.version(ApiKey::Fetch).unwrap();
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(64 * 1024 * 1024)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(tp.partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(64 * 1024 * 1024)])]);
        let response = connection.send(&request, version, 10_000).await.unwrap();
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "fetch {tp}");
        let bytes = partition.records.clone().unwrap_or_default();
        for (header, range) in headers_in(&bytes) {
            if header.next_offset() <= offset {
                continue;
            }
            let records = sluice_core::batch::decode_records(&bytes[range]).unwrap();
            let values = records
                .into_iter()
                .map(|r| Bytes::from(r.value.unwrap_or_default().to_vec()))
                .collect();
            offset = header.next_offset();
            batches.push((header, values));
        }
        if offset >= partition.high_watermark {
            return batches;
        }
    }
}

fn values(log: &[(BatchHeader, Vec<Bytes>)]) -> Vec<Bytes> {
    log.iter().flat_map(|(_, values)| values.clone()).collect()
}

/// Each epoch's batches start at sequence 0 and follow each other.
fn assert_contiguous(log: &[(BatchHeader, Vec<Bytes>)], producer_id: i64) {
    let mut expected = None;
    for (header, _) in log {
        assert_eq!(
            header.producer_id, producer_id,
            "batch at {}",
            header.base_offset
        );
        let epoch = header.producer_epoch;
        let next = match expected {
            Some((e, next)) if e == epoch => next,
            _ => 0,
        };
        assert_eq!(
            header.base_sequence, next,
            "batch at {} of epoch {epoch}",
            header.base_offset
        );
        expected = Some((epoch, header.last_sequence() + 1));
    }
}

fn idempotent_config() -> ProducerConfig {
    ProducerConfig {
        linger_ms: 0,
        ..ProducerConfig::idempotent()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_a_lost_answer_writes_the_record_twice() {
    let broker = Broker::start();
    create_topic(&broker, NewTopic::new("plain-lost", 1, 1)).await;
    let (client, connector) = lossy_client(&broker);
    connector.lose_produce_answers(0, 1);
    let producer = Producer::new(client, ProducerConfig::default(), system_clock()).unwrap();
    let delivered = producer
        .send_and_wait(ProducerRecord::new("plain-lost", "once"))
        .await
        .unwrap();
    assert_eq!(connector.lost(), 1, "the answer was lost");
    assert_eq!(delivered.offset, 1, "the retry was written after the first");
    let log = log_of(&broker, &TopicPartition::new("plain-lost", 0)).await;
    assert_eq!(values(&log), vec![Bytes::from("once"), Bytes::from("once")]);
    assert!(log.iter().all(|(h, _)| h.producer_id == -1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_answer_is_written_once() {
    let broker = Broker::start();
    create_topic(&broker, NewTopic::new("idem-lost", 1, 1)).await;
    let tp = TopicPartition::new("idem-lost", 0);
    let (client, connector) = lossy_client(&broker);
    connector.lose_produce_answers(0, 1);
    let producer = Producer::new(client, idempotent_config(), system_clock()).unwrap();
    let first = producer
        .send_and_wait(ProducerRecord::new("idem-lost", "once"))
        .await
        .unwrap();
    assert_eq!(connector.lost(), 1, "the answer was lost");
    assert_eq!(
        first.offset, 0,
        "the retry was answered with the first write's offset"
    );
    let second = producer
        .send_and_wait(ProducerRecord::new("idem-lost", "then"))
        .await
        .unwrap();
    assert_eq!(second.offset, 1);
    let producer_epoch = producer.producer_epoch().expect("a producer id");
    assert!(producer_epoch.producer_id >= 0);
    producer.close().await.unwrap();
    let log = log_of(&broker, &tp).await;
    assert_eq!(values(&log), vec![Bytes::from("once"), Bytes::from("then")]);
    assert_contiguous(&log, producer_epoch.producer_id);
    assert_eq!(log[1].0.base_sequence, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_gets_contiguous_sequences_of_one_producer_id() {
    const PARTITIONS: i32 = 3;
    const RECORDS: usize = 3_000;
    let broker = Broker::start();
    create_topic(&broker, NewTopic::new("idem-seq", PARTITIONS, 1)).await;
    let config = ProducerConfig {
        batch_bytes_max: 1_024,
        ..idempotent_config()
    };
    let producer = Producer::new(broker.client(), config, system_clock()).unwrap();
    let mut futures = Vec::new();
    for i in 0..RECORDS {
        let record = ProducerRecord::new("idem-seq", format!("{i:0>40}"))
            .with_partition(i as i32 % PARTITIONS);
        futures.push(producer.send(record).await.unwrap());
    }
    for future in futures {
        future.await.unwrap();
    }
    let producer_id = producer.producer_epoch().unwrap().producer_id;
    producer.close().await.unwrap();
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let log = log_of(&broker, &TopicPartition::new("idem-seq", partition)).await;
        assert!(log.len() > 1, "partition {partition} got several batches");
        assert!(log.iter().all(|(h, _)| h.producer_epoch == 0));
        assert_contiguous(&log, producer_id);
        let expected: Vec<Bytes> = (0..RECORDS)
            .filter(|i| *i as i32 % PARTITIONS == partition)
            .map(|i| Bytes::from(format!("{i:0>40}")))
            .collect();
        assert_eq!(values(&log), expected, "partition {partition}");
        total += log
            .iter()
            .map(|(h, _)| h.record_count as usize)
            .sum::<usize>();
    }
    assert_eq!(total, RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_with_five_batches_in_flight_across_a_cut_connection() {
    const RECORDS: usize = 2_000;
    let broker = Broker::start();
    create_topic(&broker, NewTopic::new("idem-order", 1, 1)).await;
    let tp = TopicPartition::new("idem-order", 0);
    let (client, connector) = lossy_client(&broker);
    // The third request's answer is lost while later ones are in flight.
    connector.lose_produce_answers(2, 1);
    let config = ProducerConfig {
        batch_bytes_max: 1_024,
        ..idempotent_config()
    };
    let producer = Producer::new(client, config, system_clock()).unwrap();
    let mut futures = Vec::new();
    for i in 0..RECORDS {
        let record = ProducerRecord::new("idem-order", format!("{i:0>64}"));
        futures.push(producer.send(record).await.unwrap());
    }
    let mut offsets = Vec::new();
    for future in futures {
        offsets.push(future.await.unwrap().offset);
    }
    producer.close().await.unwrap();
    assert_eq!(connector.lost(), 1, "an answer was lost");
    let in_flight = connector.produce_outstanding_max();
    assert!(
        (2..=sluice_client::accumulator::PARTITION_IN_FLIGHT_MAX).contains(&in_flight),
        "{in_flight} produce requests in flight at most"
    );
    assert_eq!(offsets, (0..RECORDS as i64).collect::<Vec<i64>>());
    let log = log_of(&broker, &tp).await;
    let expected: Vec<Bytes> = (0..RECORDS)
        .map(|i| Bytes::from(format!("{i:0>64}")))
        .collect();
    assert_eq!(values(&log), expected, "each record once, in send order");
    assert_contiguous(&log, log[0].0.producer_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_good_bumps_the_epoch_and_later_records_follow() {
    let broker = Broker::start();
    let topic = NewTopic::new("idem-refused", 1, 1).with_config("max.message.bytes", "2000");
    create_topic(&broker, topic).await;
    let tp = TopicPartition::new("idem-refused", 0);
    let config = ProducerConfig {
        batch_bytes_max: 1_000,
        ..idempotent_config()
    };
    let producer = Producer::new(broker.client(), config, system_clock()).unwrap();
    let record = |value: String| ProducerRecord::new("idem-refused", value).with_partition(0);
    let before = producer.send(record("before".into())).await.unwrap();
    let too_large = producer.send(record("x".repeat(3_000))).await.unwrap();
    let after: Vec<DeliveryFuture> = {
        let mut after = Vec::new();
        for i in 0..3 {
            after.push(producer.send(record(format!("after-{i}"))).await.unwrap());
        }
        after
    };
    assert_eq!(before.await.unwrap().offset, 0);
    let refused = too_large.await.expect_err("larger than max.message.bytes");
    assert_eq!(
        refused.response_error(),
        Some(ResponseError::MessageTooLarge),
        "{refused}"
    );
    let mut offsets = Vec::new();
    for future in after {
        offsets.push(future.await.unwrap().offset);
    }
    assert_eq!(offsets, vec![1, 2, 3]);
    let producer_epoch = producer.producer_epoch().unwrap();
    assert_eq!(
        producer_epoch.epoch, 1,
        "the gap was closed with a new epoch"
    );
    producer.close().await.unwrap();
    let log = log_of(&broker, &tp).await;
    let expected: Vec<Bytes> = ["before", "after-0", "after-1", "after-2"]
        .into_iter()
        .map(Bytes::from)
        .collect();
    assert_eq!(values(&log), expected);
    assert_eq!(log[0].0.producer_epoch, 0);
    assert!(log[1..].iter().all(|(h, _)| h.producer_epoch == 1));
    assert_contiguous(&log, producer_epoch.producer_id);
}

#[test]
fn idempotence_without_acks_all_or_retries_is_refused() {
    let broker_less = ClientConfig::new(["127.0.0.1:1"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let client = Client::new(TokioConnector, broker_less).unwrap();
    for config in [
        ProducerConfig {
            acks: Acks::Leader,
            ..ProducerConfig::idempotent()
        },
        ProducerConfig {
            retries_max: 0,
            ..ProducerConfig::idempotent()
        },
    ] {
        let refused = Producer::new(client.clone(), config, system_clock());
        assert!(matches!(refused, Err(Error::Config(_))));
    }
    assert!(Producer::new(client, ProducerConfig::idempotent(), system_clock()).is_ok());
}
