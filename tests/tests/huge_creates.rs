//! Huge creates against a real broker process: a topic asking 2^31-1
//! partitions is refused at once, a CreateTopics of 10,000 one-partition
//! topics creates what `max.broker.partitions` allows and refuses the rest
//! with Kafka's code, no refused or failed topic leaves a directory, the
//! broker's descriptors stay within its budget, and a client on another
//! connection is answered meanwhile: a create is worked on a bounded
//! number of partition logs per step, and a bystander asking again and
//! again while one topic of 2,000 partitions is made is answered between
//! the steps, never seeing the topic part made.

use std::time::Instant;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_tests::wire::Wire;
use sluice_tests::{Broker, BrokerOptions};

const BROKER_PARTITIONS_MAX: usize = 500;
const TOPICS: usize = 10_000;

fn creatable(name: String, partitions: i32) -> create_topics_request::CreatableTopic {
    create_topics_request::CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name)))
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
}

/// The partition directories in the broker's data directory whose topic
/// name starts with `prefix`.
fn partition_dirs(broker: &Broker, prefix: &str) -> usize {
    std::fs::read_dir(broker.data_dir())
        .expect("data dir")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .count()
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// A Metadata round trip on its own connection; how long it took.
fn bystander_round_trip(bystander: &mut Wire) -> std::time::Duration {
    let asked = Instant::now();
    let response: MetadataResponse = bystander
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(Vec::new())),
        )
        .expect("the bystander is answered");
    assert_eq!(response.brokers.len(), 1);
    asked.elapsed()
}

#[test]
fn huge_creates_are_refused_or_bounded_and_leave_nothing_behind() {
    let broker = Broker::start(
        BrokerOptions::default().config("max.broker.partitions", BROKER_PARTITIONS_MAX as i64),
    );
    let pid = broker.pid().expect("a broker process");
    let mut creator = Wire::connect(&broker.bootstrap()).expect("connect");
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");

    // One topic of 2^31-1 partitions: INVALID_PARTITIONS, no directory.
    let request = CreateTopicsRequest::default()
        .with_topics(vec![creatable("huge".into(), i32::MAX)])
        .with_timeout_ms(30_000);
    let response: CreateTopicsResponse = creator
        .call(ApiKey::CreateTopics, 7, &request)
        .expect("answered");
    assert_eq!(
        response.topics[0].error_code,
        ResponseError::InvalidPartitions.code()
    );
    assert_eq!(partition_dirs(&broker, "huge-"), 0);

    // 10,000 one-partition topics, sent; a bystander asks while the
    // broker works on them, and is answered.
    let topics = (0..TOPICS).map(|i| creatable(format!("t{i}"), 1)).collect();
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(60_000);
    let sent = Instant::now();
    let correlation = creator
        .send(ApiKey::CreateTopics, 7, &request)
        .expect("send");
    let bystander_ms = bystander_round_trip(&mut bystander).as_millis();
    let response: CreateTopicsResponse = creator
        .receive(ApiKey::CreateTopics, 7, correlation)
        .expect("the create is answered");
    let create_ms = sent.elapsed().as_millis();
    let created = response.topics.iter().filter(|t| t.error_code == 0).count();
    let refused = response
        .topics
        .iter()
        .filter(|t| t.error_code == ResponseError::PolicyViolation.code())
        .count();
    assert_eq!(
        (created, refused),
        (BROKER_PARTITIONS_MAX, TOPICS - BROKER_PARTITIONS_MAX),
        "the budget is filled, and every other topic refused with POLICY_VIOLATION"
    );
    assert_eq!(
        partition_dirs(&broker, "t"),
        created,
        "a directory for each topic created and none for a refused one"
    );
    // Four files per one-segment partition, plus the broker's own.
    let descriptors = open_descriptors(pid);
    assert!(
        descriptors < 4 * BROKER_PARTITIONS_MAX + 200,
        "{descriptors} descriptors open"
    );
    eprintln!(
        "10,000-topic CreateTopics answered in {create_ms} ms; a bystander's Metadata sent meanwhile took {bystander_ms} ms"
    );
    bystander_round_trip(&mut bystander);
    assert!(!broker.log().contains("Too many open files"));
}

/// Two topics of the default `max.topic.partitions` fill the default
/// `max.broker.partitions`: a request creating 2,000 partitions.
const WIDE: [&str; 2] = ["wide0", "wide1"];
const WIDE_PARTITIONS: usize = 1_000;

/// Asks for the `WIDE` topics without creating them: how many partitions
/// each lists (0 while it does not exist). A topic is listed whole or not
/// at all.
fn wide_partitions(bystander: &mut Wire) -> Vec<usize> {
    let topics = WIDE
        .iter()
        .map(|name| {
            metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(name))))
        })
        .collect();
    let request = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = bystander
        .call(ApiKey::Metadata, 12, &request)
        .expect("the bystander is answered");
    response
        .topics
        .iter()
        .map(|topic| {
            if topic.error_code == ResponseError::UnknownTopicOrPartition.code() {
                return 0;
            }
            assert_eq!(topic.error_code, 0);
            assert_eq!(topic.partitions.len(), WIDE_PARTITIONS, "listed whole");
            topic.partitions.len()
        })
        .collect()
}

#[test]
fn a_bystander_is_answered_between_the_steps_of_a_two_thousand_partition_create() {
    let broker = Broker::start(BrokerOptions::default());
    let mut creator = Wire::connect(&broker.bootstrap()).expect("connect");
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(wide_partitions(&mut bystander), vec![0, 0]);

    let topics = WIDE
        .iter()
        .map(|name| creatable(name.to_string(), WIDE_PARTITIONS as i32))
        .collect();
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(60_000);
    let sent = Instant::now();
    let correlation = creator
        .send(ApiKey::CreateTopics, 7, &request)
        .expect("send");
    let creating = std::thread::spawn(move || {
        let response: CreateTopicsResponse = creator
            .receive(ApiKey::CreateTopics, 7, correlation)
            .expect("the create is answered");
        (response, sent.elapsed())
    });
    // The bystander asks until both topics are listed (or the create is
    // answered without them); each answer lists a topic whole or not at all.
    let mut round_trips = Vec::new();
    let mut listings = Vec::new();
    loop {
        let asked = Instant::now();
        let listed = wide_partitions(&mut bystander);
        round_trips.push(asked.elapsed());
        let done = listed.iter().all(|&n| n > 0) || creating.is_finished();
        listings.push(listed);
        if done {
            break;
        }
    }
    let (response, create_elapsed) = creating.join().expect("the creator");
    for topic in &response.topics {
        assert_eq!(topic.error_code, 0, "{:?}", topic.error_message);
    }
    // Asked while neither topic was whole yet: the bystander got in
    // between the steps of the create.
    let answered_while_creating = listings.iter().filter(|l| l.contains(&0)).count();
    round_trips.sort();
    let max_ms = round_trips.last().expect("asked").as_millis();
    let median_ms = round_trips[round_trips.len() / 2].as_micros() as f64 / 1000.0;
    eprintln!(
        "2,000-partition CreateTopics answered in {} ms; a bystander asking meanwhile was answered {} times before both topics were listed, round trips median {median_ms:.1} ms, max {max_ms} ms",
        create_elapsed.as_millis(),
        answered_while_creating,
    );
    // Done in one step, the create would let the bystander in once at
    // most (before the step; after it, both topics are there).
    assert!(
        answered_while_creating >= 3,
        "the bystander was answered {answered_while_creating} times during the create"
    );
    for name in WIDE {
        assert_eq!(
            partition_dirs(&broker, &format!("{name}-")),
            WIDE_PARTITIONS
        );
    }
    assert!(!broker.log().contains("Too many open files"));
}
