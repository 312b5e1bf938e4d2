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

/// What the default `max.broker.partitions` allows one topic to have.
const WIDE: usize = 2_000;

/// Asks for the topic `wide` without creating it: None while it does not
/// exist, else its partition count.
fn wide_partitions(bystander: &mut Wire) -> Option<usize> {
    let topic = metadata_request::MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_static_str("wide"))));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![topic]))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = bystander
        .call(ApiKey::Metadata, 12, &request)
        .expect("the bystander is answered");
    let topic = &response.topics[0];
    if topic.error_code == ResponseError::UnknownTopicOrPartition.code() {
        return None;
    }
    assert_eq!(
        topic.error_code, 0,
        "the topic is answered whole or not at all"
    );
    Some(topic.partitions.len())
}

#[test]
fn a_bystander_is_answered_between_the_steps_of_a_two_thousand_partition_create() {
    let broker = Broker::start(BrokerOptions::default());
    let mut creator = Wire::connect(&broker.bootstrap()).expect("connect");
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(wide_partitions(&mut bystander), None);

    let request = CreateTopicsRequest::default()
        .with_topics(vec![creatable("wide".into(), WIDE as i32)])
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
    // The bystander asks until the topic appears; each answer before it
    // says the topic does not exist, none lists it part made.
    let mut round_trips = Vec::new();
    let listed = loop {
        assert!(round_trips.len() < 1_000_000, "the topic never appeared");
        let asked = Instant::now();
        let found = wide_partitions(&mut bystander);
        round_trips.push(asked.elapsed());
        if let Some(partitions) = found {
            break partitions;
        }
    };
    let appeared = sent.elapsed();
    let (response, create_elapsed) = creating.join().expect("the creator");
    assert_eq!(response.topics[0].error_code, 0);
    assert_eq!(listed, WIDE, "the topic appears whole");
    let answered_while_creating = round_trips.len() - 1;
    round_trips.sort();
    let max_ms = round_trips.last().expect("asked").as_millis();
    let median_ms = round_trips[round_trips.len() / 2].as_micros() as f64 / 1000.0;
    eprintln!(
        "{WIDE}-partition CreateTopics answered in {} ms (topic visible after {} ms); the bystander was answered {answered_while_creating} times meanwhile, round trips median {median_ms:.1} ms, max {max_ms} ms",
        create_elapsed.as_millis(),
        appeared.as_millis(),
    );
    // Answered in one step, the create would let the bystander in once at
    // most (before the step, or after it, with the topic there).
    assert!(
        answered_while_creating >= 3,
        "the bystander was answered {answered_while_creating} times during the create"
    );
    assert_eq!(partition_dirs(&broker, "wide-"), WIDE);
    assert!(!broker.log().contains("Too many open files"));
}
