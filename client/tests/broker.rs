//! The client against a real `sluice` process: topic administration, a
//! keyed round trip of 5000 records across every compression, partition
//! placement as Kafka's Java client would choose it, seeking by timestamp,
//! offset reset, older protocol versions, and reconnecting after a restart.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use sluice_client::partitioner::key_partition;
use sluice_client::*;
use support::Broker;

const PARTITIONS: i32 = 3;
const RECORDS_PER_COMPRESSION: usize = 1_000;
/// Upper bound on waiting for the records of one test to come back.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);

/// What was sent, by where it landed.
#[derive(Debug, Clone)]
struct Sent {
    key: Bytes,
    value: Bytes,
    headers: Vec<Header>,
    timestamp_ms: i64,
}

fn record(topic: &str, index: usize, timestamp_ms: i64) -> ProducerRecord {
    let key = format!("key-{}", index % 97);
    let value = format!("value-{index}-{}", "x".repeat(index % 50));
    let mut record = ProducerRecord::new(topic, value)
        .with_key(key)
        .with_timestamp_ms(timestamp_ms)
        .with_header("index", index.to_string())
        .with_header("index", "duplicate keys are kept");
    record.headers.push(Header {
        key: Bytes::from_static(b"null-valued"),
        value: None,
    });
    record
}

async fn produce_all(
    client: &Client<TokioConnector>,
    topic: &str,
    base_ms: i64,
) -> BTreeMap<(i32, i64), Sent> {
    let mut sent = BTreeMap::new();
    for (round, compression) in Compression::ALL.into_iter().enumerate() {
        let config = ProducerConfig {
            compression,
            linger_ms: 5,
            batch_bytes_max: 8_192,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config, system_clock()).unwrap();
        let mut pending = Vec::new();
        for i in 0..RECORDS_PER_COMPRESSION {
            let index = round * RECORDS_PER_COMPRESSION + i;
            let record = record(topic, index, base_ms + index as i64);
            let future = producer.send(record.clone()).await.expect("queued");
            pending.push((record, future));
        }
        producer.flush().await.unwrap();
        let mut last_offset = BTreeMap::new();
        for (record, future) in pending {
            let delivered = future
                .await
                .unwrap_or_else(|e| panic!("{compression:?}: {e}"));
            let key = record.key.clone().unwrap();
            let partition = delivered.topic_partition.partition;
            assert_eq!(
                partition,
                key_partition(&key, PARTITIONS),
                "Java's partition"
            );
            let previous = last_offset.insert(partition, delivered.offset);
            assert!(
                previous < Some(delivered.offset),
                "offsets follow send order"
            );
            let entry = Sent {
                key,
                value: record.value.unwrap(),
                headers: record.headers,
                timestamp_ms: record.timestamp_ms.unwrap(),
            };
            assert!(sent.insert((partition, delivered.offset), entry).is_none());
        }
        producer.close().await.unwrap();
    }
    sent
}

async fn consume(consumer: &mut Consumer<TokioConnector>, count: usize) -> Vec<ConsumerRecord> {
    let deadline = tokio::time::Instant::now() + CONSUME_TIMEOUT;
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} records came back",
            records.len()
        );
        records.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    }
    records
}

fn topic_partitions(topic: &str) -> Vec<TopicPartition> {
    (0..PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_round_trip_across_compressions() {
    let broker = Broker::start();
    let client = broker.client();
    let admin = Admin::new(client.clone());
    let topic = "round-trip";
    admin
        .create_topic(&NewTopic::new(topic, PARTITIONS, 1).with_config("retention.ms", "86400000"))
        .await
        .unwrap();
    check_description(&admin, topic).await;

    let base_ms = system_clock()();
    let sent = produce_all(&client, topic, base_ms).await;
    assert_eq!(sent.len(), 5 * RECORDS_PER_COMPRESSION);

    let consumer_config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), consumer_config).unwrap();
    consumer.assign(topic_partitions(topic));
    let received = consume(&mut consumer, sent.len()).await;
    assert_eq!(received.len(), sent.len(), "nothing extra, nothing twice");
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for got in &received {
        let expected = &sent[&(got.partition, got.offset)];
        assert_eq!(got.key.as_ref(), Some(&expected.key));
        assert_eq!(got.value.as_ref(), Some(&expected.value));
        assert_eq!(got.headers, expected.headers);
        assert_eq!(got.timestamp_ms, expected.timestamp_ms);
        assert_eq!(got.timestamp_type, TimestampType::CreateTime);
        let previous = last_offset.insert(got.partition, got.offset);
        assert!(
            previous < Some(got.offset),
            "offset order within a partition"
        );
    }
    assert!(consumer
        .poll(Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());

    check_offsets(&mut consumer, &sent, topic).await;
    check_seek_by_timestamp(&mut consumer, &sent, topic).await;

    admin
        .create_partitions(topic, PARTITIONS + 1)
        .await
        .unwrap();
    let grown = admin.describe_topics(&[topic.to_string()]).await.unwrap();
    assert_eq!(grown[0].partitions.len(), (PARTITIONS + 1) as usize);

    admin.delete_topic(topic).await.unwrap();
    let listed = admin.list_topics().await.unwrap();
    assert!(listed.iter().all(|t| t.name != topic), "{listed:?}");
    let gone = admin
        .describe_topics(&[topic.to_string()])
        .await
        .unwrap_err();
    assert_eq!(
        gone.response_error(),
        Some(ResponseError::UnknownTopicOrPartition),
        "{gone}"
    );
}

async fn check_description(admin: &Admin<TokioConnector>, topic: &str) {
    let listed = admin.list_topics().await.unwrap();
    assert!(
        listed.iter().any(|t| t.name == topic && !t.id.is_nil()),
        "{listed:?}"
    );
    let cluster = admin.describe_cluster().await.unwrap();
    assert_eq!(cluster.brokers.len(), 1);
    // The broker's ApiVersions answer, as the core's table states it.
    let versions = admin.api_versions().await.unwrap();
    let produce = versions
        .apis
        .iter()
        .find(|api| api.api_key == ApiKey::Produce as i16)
        .expect("Produce is served");
    let (min, max) = sluice_core::wire::versions::supported_versions(ApiKey::Produce).unwrap();
    assert_eq!((produce.min_version, produce.max_version), (min, max));
    assert!(versions
        .apis
        .windows(2)
        .all(|w| w[0].api_key < w[1].api_key));
    let node = cluster.brokers[0].node_id;
    assert_eq!(cluster.controller_id, Some(node));
    let described = admin.describe_topics(&[topic.to_string()]).await.unwrap();
    let description = &described[0];
    assert_eq!(description.partitions.len(), PARTITIONS as usize);
    for partition in &description.partitions {
        assert_eq!(partition.leader, Some(node));
        assert_eq!(partition.replicas, vec![node]);
        assert_eq!(partition.isr, vec![node]);
    }
    let retention = description
        .configs
        .iter()
        .find(|c| c.name == "retention.ms")
        .expect("retention.ms is described");
    assert_eq!(retention.value.as_deref(), Some("86400000"));
    assert_eq!(retention.source, ConfigSource::Topic);
    let again = admin
        .create_topic(&NewTopic::new(topic, 1, 1))
        .await
        .unwrap_err();
    assert_eq!(
        again.response_error(),
        Some(ResponseError::TopicAlreadyExists),
        "{again}"
    );
    let bad = admin
        .create_topic(&NewTopic::new("bad/name", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(
        bad.response_error(),
        Some(ResponseError::InvalidTopicException),
        "{bad}"
    );
}

async fn check_offsets(
    consumer: &mut Consumer<TokioConnector>,
    sent: &BTreeMap<(i32, i64), Sent>,
    topic: &str,
) {
    let tps = topic_partitions(topic);
    let earliest = consumer
        .list_offsets(&tps, OffsetSpec::Earliest)
        .await
        .unwrap();
    let latest = consumer
        .list_offsets(&tps, OffsetSpec::Latest)
        .await
        .unwrap();
    for tp in &tps {
        let count = sent.keys().filter(|(p, _)| *p == tp.partition).count() as i64;
        assert_eq!(earliest[tp].offset, 0);
        assert_eq!(latest[tp].offset, count, "{tp}");
        assert_eq!(
            consumer.position(tp),
            Some(count),
            "the consumer read to the end"
        );
    }
}

async fn check_seek_by_timestamp(
    consumer: &mut Consumer<TokioConnector>,
    sent: &BTreeMap<(i32, i64), Sent>,
    topic: &str,
) {
    let tp = TopicPartition::new(topic, 1);
    let in_partition: Vec<(i64, i64)> = sent
        .iter()
        .filter(|((p, _), _)| *p == 1)
        .map(|((_, offset), s)| (*offset, s.timestamp_ms))
        .collect();
    // Just after a record's timestamp, so the answer is the next record.
    let target_ms = in_partition[in_partition.len() / 2].1 + 1;
    let expected = in_partition
        .iter()
        .find(|(_, ts)| *ts >= target_ms)
        .map(|(offset, _)| *offset)
        .expect("a later record");
    let found = consumer.seek_to_timestamp(&tp, target_ms).await.unwrap();
    assert_eq!(found, Some(expected));
    let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        records.first().map(|r| (r.partition, r.offset)),
        Some((1, expected))
    );
    let beyond = consumer.seek_to_timestamp(&tp, i64::MAX / 2).await.unwrap();
    assert_eq!(beyond, None);
    assert_eq!(consumer.position(&tp), Some(in_partition.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_records_stick_to_a_partition_per_batch_with_every_acks() {
    let broker = Broker::start();
    let client = broker.client();
    let topic = "unkeyed";
    Admin::new(client.clone())
        .create_topic(&NewTopic::new(topic, PARTITIONS, 1))
        .await
        .unwrap();
    let mut total = 0;
    for acks in [Acks::All, Acks::Leader, Acks::None] {
        let config = ProducerConfig {
            acks,
            linger_ms: 50,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config, system_clock()).unwrap();
        let mut futures = Vec::new();
        for i in 0..20 {
            futures.push(
                producer
                    .send(ProducerRecord::new(topic, format!("{acks:?}-{i}")))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        let mut partitions = Vec::new();
        for future in futures {
            let delivered = future.await.unwrap();
            partitions.push(delivered.topic_partition.partition);
            assert_eq!(delivered.offset < 0, acks == Acks::None, "{delivered:?}");
        }
        assert!(
            partitions.iter().all(|p| *p == partitions[0]),
            "one batch, one partition: {partitions:?}"
        );
        total += 20;
        producer.close().await.unwrap();
    }
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).unwrap();
    consumer.assign(topic_partitions(topic));
    let records = consume(&mut consumer, total).await;
    assert_eq!(records.len(), total);
    assert!(records.iter().all(|r| r.key.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_positions_follow_the_reset_policy() {
    let broker = Broker::start();
    let client = broker.client();
    let topic = "reset";
    Admin::new(client.clone())
        .create_topic(&NewTopic::new(topic, 1, 1))
        .await
        .unwrap();
    let producer =
        Producer::new(client.clone(), ProducerConfig::default(), system_clock()).unwrap();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new(topic, format!("v{i}")))
            .await
            .unwrap();
    }
    let tp = TopicPartition::new(topic, 0);
    let policies = [
        (OffsetReset::Earliest, Some(0)),
        (OffsetReset::Latest, None),
        (OffsetReset::None, None),
    ];
    for (policy, first_offset) in policies {
        let config = ConsumerConfig {
            auto_offset_reset: policy,
            fetch_max_wait_ms: 100,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(client.clone(), config).unwrap();
        consumer.assign([tp.clone()]);
        consumer.seek(&tp, 1_000).unwrap();
        let polled = consumer.poll(Duration::from_millis(500)).await;
        match policy {
            OffsetReset::None => assert!(
                matches!(polled, Err(Error::OffsetOutOfRange { offset: 1_000, .. })),
                "{polled:?}"
            ),
            _ => {
                let records = polled.unwrap();
                assert_eq!(
                    records.first().map(|r| r.offset),
                    first_offset,
                    "{policy:?}"
                );
                if policy == OffsetReset::Latest {
                    assert_eq!(consumer.position(&tp), Some(10));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_protocol_versions_name_topics_instead_of_ids() {
    let broker = Broker::start();
    let mut config = broker.client_config();
    config.api_version_caps = vec![
        (ApiKey::ApiVersions, 2),
        (ApiKey::Metadata, 4),
        (ApiKey::Produce, 7),
        (ApiKey::Fetch, 11),
        (ApiKey::ListOffsets, 3),
        (ApiKey::CreateTopics, 3),
        (ApiKey::DeleteTopics, 3),
        (ApiKey::DescribeConfigs, 1),
        (ApiKey::DescribeCluster, 0),
    ];
    let client = Client::new(TokioConnector, config).unwrap();
    let admin = Admin::new(client.clone());
    let topic = "old-versions";
    admin
        .create_topic(&NewTopic::new(topic, 2, 1))
        .await
        .unwrap();
    assert_eq!(admin.describe_cluster().await.unwrap().brokers.len(), 1);
    let described = admin.describe_topics(&[topic.to_string()]).await.unwrap();
    assert!(described[0].id.is_nil(), "Metadata v4 carries no topic ids");
    let producer_config = ProducerConfig {
        compression: Compression::Gzip,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), producer_config, system_clock()).unwrap();
    for i in 0..50 {
        let record = ProducerRecord::new(topic, format!("v{i}")).with_key(format!("k{i}"));
        producer.send(record).await.unwrap();
    }
    producer.close().await.unwrap();
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).unwrap();
    consumer.assign([TopicPartition::new(topic, 0), TopicPartition::new(topic, 1)]);
    let records = consume(&mut consumer, 50).await;
    for record in records {
        let key = record.key.unwrap();
        assert_eq!(record.partition, key_partition(&key, 2));
    }
    admin.delete_topic(topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_reconnects_after_a_broker_restart() {
    let mut broker = Broker::start();
    let client = broker.client();
    let topic = "restart";
    Admin::new(client.clone())
        .create_topic(&NewTopic::new(topic, 1, 1))
        .await
        .unwrap();
    let producer =
        Producer::new(client.clone(), ProducerConfig::default(), system_clock()).unwrap();
    let first = producer
        .send_and_wait(ProducerRecord::new(topic, "before"))
        .await
        .unwrap();
    assert_eq!(first.offset, 0);
    broker.restart();
    let second = producer
        .send_and_wait(ProducerRecord::new(topic, "after"))
        .await
        .unwrap();
    assert_eq!(
        second.offset, 1,
        "the restart kept the log and the retry wrote once"
    );
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).unwrap();
    consumer.assign([TopicPartition::new(topic, 0)]);
    let values: Vec<Bytes> = consume(&mut consumer, 2)
        .await
        .into_iter()
        .filter_map(|r| r.value)
        .collect();
    assert_eq!(values, vec![Bytes::from("before"), Bytes::from("after")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_waits_for_data_and_wakes_when_it_arrives() {
    let broker = Broker::start();
    let client = broker.client();
    let admin = Admin::new(client.clone());
    for topic in ["wait-a", "wait-b"] {
        admin
            .create_topic(&NewTopic::new(topic, 1, 1))
            .await
            .unwrap();
    }
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Latest,
        fetch_max_wait_ms: 400,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config).unwrap();
    consumer.assign([
        TopicPartition::new("wait-a", 0),
        TopicPartition::new("wait-b", 0),
    ]);
    let started = tokio::time::Instant::now();
    assert!(consumer
        .poll(Duration::from_millis(350))
        .await
        .unwrap()
        .is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the broker held the fetch: {waited:?}"
    );

    let producer =
        Producer::new(client.clone(), ProducerConfig::default(), system_clock()).unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = producer
            .send(ProducerRecord::new("wait-a", "a"))
            .await
            .unwrap();
        let b = producer
            .send(ProducerRecord::new("wait-b", "b"))
            .await
            .unwrap();
        (a.await.unwrap(), b.await.unwrap())
    });
    let started = tokio::time::Instant::now();
    let mut values = Vec::new();
    while values.len() < 2 {
        let records = consumer.poll(Duration::from_secs(10)).await.unwrap();
        values.extend(records.into_iter().filter_map(|r| r.value));
    }
    values.sort();
    assert_eq!(values, vec![Bytes::from("a"), Bytes::from("b")]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll woke on new data"
    );
    let (a, b) = writer.await.unwrap();
    assert_eq!((a.offset, b.offset), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_limit_below_one_batch_still_returns_the_whole_batch() {
    let broker = Broker::start();
    let client = broker.client();
    let topic = "big-batches";
    Admin::new(client.clone())
        .create_topic(&NewTopic::new(topic, 1, 1))
        .await
        .unwrap();
    let config = ProducerConfig {
        linger_ms: 1_000,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config, system_clock()).unwrap();
    for i in 0..100 {
        let value = format!("{i:0>100}");
        producer
            .send(ProducerRecord::new(topic, value))
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        fetch_max_bytes: 100,
        partition_fetch_bytes_max: 100,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).unwrap();
    consumer.assign([TopicPartition::new(topic, 0)]);
    let records = consume(&mut consumer, 100).await;
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_topic_limit_fails_alone() {
    let broker = Broker::start();
    let client = broker.client();
    let topic = "limits";
    Admin::new(client.clone())
        .create_topic(&NewTopic::new(topic, 1, 1).with_config("max.message.bytes", "10000"))
        .await
        .unwrap();
    let producer = Producer::new(client, ProducerConfig::default(), system_clock()).unwrap();
    let big = producer
        .send(ProducerRecord::new(topic, vec![7u8; 20_000]))
        .await
        .unwrap();
    let error = big.await.unwrap_err();
    assert_eq!(
        error.response_error(),
        Some(ResponseError::MessageTooLarge),
        "{error}"
    );
    let small = producer
        .send_and_wait(ProducerRecord::new(topic, "fits"))
        .await
        .unwrap();
    assert_eq!(small.offset, 0, "the refused batch took no offset");
    let too_big_to_queue = producer
        .send(ProducerRecord::new(topic, vec![0u8; 2 * 1024 * 1024]))
        .await;
    assert!(matches!(
        too_big_to_queue,
        Err(Error::RecordTooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_metadata_is_refreshed_after_a_topic_is_recreated() {
    let broker = Broker::start();
    let client = broker.client();
    let admin = Admin::new(client.clone());
    let topic = "recreated";
    admin
        .create_topic(&NewTopic::new(topic, 2, 1))
        .await
        .unwrap();
    let producer =
        Producer::new(client.clone(), ProducerConfig::default(), system_clock()).unwrap();
    for i in 0..5 {
        let record = ProducerRecord::new(topic, format!("old-{i}")).with_partition(1);
        producer.send_and_wait(record).await.unwrap();
    }
    let tp = TopicPartition::new(topic, 1);
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config).unwrap();
    consumer.assign([tp.clone()]);
    assert_eq!(consume(&mut consumer, 5).await.len(), 5);
    let old_id = client.metadata().topics[topic].id;

    // Another admin (its own connections and cache) replaces the topic, so
    // the producer's and consumer's cached topic id goes stale.
    let other = Admin::new(broker.client());
    other.delete_topic(topic).await.unwrap();
    other
        .create_topic(&NewTopic::new(topic, 2, 1))
        .await
        .unwrap();
    let record = ProducerRecord::new(topic, "new").with_partition(1);
    let delivered = producer.send_and_wait(record).await.unwrap();
    assert_eq!(delivered.offset, 0, "written to the new topic");
    assert_ne!(
        client.metadata().topics[topic].id,
        old_id,
        "metadata was refreshed"
    );
    let records = consume(&mut consumer, 1).await;
    assert_eq!(records[0].value.as_deref(), Some(&b"new"[..]));
    assert_eq!(
        records[0].offset, 0,
        "the position was reset on the new log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_keep_their_order() {
    let broker = Broker::start();
    let client = broker.client();
    let topic = "pipelined";
    Admin::new(client.clone())
        .create_topic(&NewTopic::new(topic, 1, 1))
        .await
        .unwrap();
    // Without retries a partition may have several batches in flight, so
    // several produce requests share the connection at once.
    let config = ProducerConfig {
        retries_max: 0,
        linger_ms: 0,
        batch_bytes_max: 1_024,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config, system_clock()).unwrap();
    let mut futures = Vec::new();
    for i in 0..2_000 {
        let record = ProducerRecord::new(topic, format!("{i:0>64}")).with_partition(0);
        futures.push(producer.send(record).await.unwrap());
    }
    let mut offsets = Vec::new();
    for future in futures {
        offsets.push(future.await.unwrap().offset);
    }
    assert_eq!(offsets, (0..2_000).collect::<Vec<i64>>());
    producer.close().await.unwrap();
}
