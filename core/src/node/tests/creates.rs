//! Creates are bounded and atomic per topic: `max.topic.partitions` and
//! `max.broker.partitions` refuse a CreateTopics or CreatePartitions before
//! anything is created, and a topic whose creation fails part way (out of
//! descriptors) leaves no directory behind.

use super::*;

fn creatable(name: &str, partitions: i32) -> create_topics_request::CreatableTopic {
    create_topics_request::CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
}

/// Sends one CreateTopics; each topic's name and error code.
fn create_topics(
    h: &mut Harness,
    topics: Vec<create_topics_request::CreatableTopic>,
    validate_only: bool,
) -> Vec<(String, i16)> {
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_validate_only(validate_only);
    let c = h.send(ApiKey::CreateTopics, 7, &request);
    h.sync_all();
    let response: CreateTopicsResponse = h.take(ApiKey::CreateTopics, 7, c);
    response
        .topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.error_code))
        .collect()
}

fn create_partitions(h: &mut Harness, name: &str, count: i32) -> i16 {
    let topic = create_partitions_request::CreatePartitionsTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_count(count);
    let request = CreatePartitionsRequest::default().with_topics(vec![topic]);
    let c = h.send(ApiKey::CreatePartitions, 3, &request);
    h.sync_all();
    let response: CreatePartitionsResponse = h.take(ApiKey::CreatePartitions, 3, c);
    response.results[0].error_code
}

/// The partition directories of a topic that exist now.
fn dirs_of(h: &Harness, topic: &str) -> Vec<String> {
    let prefix = format!("{topic}-");
    h.node
        .broker
        .storage
        .dirs()
        .into_iter()
        .filter(|d| {
            d.strip_prefix(&prefix)
                .is_some_and(|rest| rest.parse::<i32>().is_ok())
        })
        .collect()
}

const INVALID_PARTITIONS: i16 = 37;
const POLICY_VIOLATION: i16 = 44;

#[test]
fn the_error_codes_are_kafkas() {
    assert_eq!(ResponseError::InvalidPartitions.code(), INVALID_PARTITIONS);
    assert_eq!(ResponseError::PolicyViolation.code(), POLICY_VIOLATION);
}

#[test]
fn a_topic_of_two_to_the_31_partitions_is_refused_at_once_with_nothing_created() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    let dirs_before = h.node.broker.storage.dirs();
    for validate_only in [true, false] {
        let answers = create_topics(&mut h, vec![creatable("huge", i32::MAX)], validate_only);
        assert_eq!(answers, vec![("huge".to_string(), INVALID_PARTITIONS)]);
    }
    assert_eq!(h.node.broker.storage.dirs(), dirs_before);
    assert!(!h.node.broker.topics.contains("huge"));
    assert!(!h.node.broker.metadata.topics.contains_key("huge"));
}

#[test]
fn a_topic_over_max_topic_partitions_is_refused_and_one_at_it_is_created() {
    let mut h = Harness::new(MemStorage::new(), &[("max.topic.partitions", "4")]);
    let answers = create_topics(
        &mut h,
        vec![creatable("five", 5), creatable("four", 4)],
        false,
    );
    assert_eq!(
        answers,
        vec![
            ("five".to_string(), INVALID_PARTITIONS),
            ("four".to_string(), 0)
        ]
    );
    assert!(dirs_of(&h, "five").is_empty());
    assert_eq!(dirs_of(&h, "four").len(), 4);
    // Growing past the bound is refused the same way, with nothing added.
    assert_eq!(create_partitions(&mut h, "four", 5), INVALID_PARTITIONS);
    assert_eq!(h.node.broker.topics.partition_count("four"), 4);
    assert_eq!(dirs_of(&h, "four").len(), 4);
}

#[test]
fn creates_past_max_broker_partitions_are_refused_with_policy_violation() {
    let mut h = Harness::new(MemStorage::new(), &[("max.broker.partitions", "10")]);
    // Within one request, each topic counts against what the ones before
    // it took: 4 + 4 fit, the third does not, a smaller fourth does.
    let answers = create_topics(
        &mut h,
        vec![
            creatable("a", 4),
            creatable("b", 4),
            creatable("c", 3),
            creatable("d", 2),
        ],
        false,
    );
    assert_eq!(
        answers,
        vec![
            ("a".to_string(), 0),
            ("b".to_string(), 0),
            ("c".to_string(), POLICY_VIOLATION),
            ("d".to_string(), 0)
        ]
    );
    assert!(dirs_of(&h, "c").is_empty());
    // The broker is full: any more is refused, by CreatePartitions too.
    assert_eq!(
        create_topics(&mut h, vec![creatable("e", 1)], false),
        vec![("e".to_string(), POLICY_VIOLATION)]
    );
    assert_eq!(create_partitions(&mut h, "a", 5), POLICY_VIOLATION);
    assert_eq!(h.node.broker.topics.partition_count("a"), 4);
    // Deleting a topic frees its share.
    let c = h.send(
        ApiKey::DeleteTopics,
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_static_str("b"))]),
    );
    h.sync_all();
    let _: DeleteTopicsResponse = h.take(ApiKey::DeleteTopics, 4, c);
    assert_eq!(create_partitions(&mut h, "a", 8), 0);
    assert_eq!(dirs_of(&h, "a").len(), 8);
}

#[test]
fn ten_thousand_one_partition_topics_fill_the_budget_and_no_more() {
    let mut h = Harness::new(MemStorage::new(), &[("max.broker.partitions", "100")]);
    let topics = (0..10_000)
        .map(|i| creatable(&format!("t{i}"), 1))
        .collect();
    let answers = create_topics(&mut h, topics, false);
    let created = answers.iter().filter(|(_, code)| *code == 0).count();
    let refused = answers
        .iter()
        .filter(|(_, code)| *code == POLICY_VIOLATION)
        .count();
    assert_eq!((created, refused), (100, 9_900));
    let partition_dirs = h
        .node
        .broker
        .storage
        .dirs()
        .into_iter()
        .filter(|d| d.starts_with('t'))
        .count();
    assert_eq!(
        partition_dirs, 100,
        "a directory for each topic created, no more"
    );
}

#[test]
fn a_creation_out_of_descriptors_part_way_leaves_no_directory_behind() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    assert_eq!(h.create_topic("first", 1, &[]), 0);
    // Room for two partitions' four files each, and a little of a third.
    let open = h.node.broker.storage.open_files();
    h.node.broker.storage.open_files_max = Some(open + 9);
    let dirs_before = h.node.broker.storage.dirs();
    let answers = create_topics(&mut h, vec![creatable("cut", 5)], false);
    assert_eq!(
        answers,
        vec![("cut".to_string(), ResponseError::KafkaStorageError.code())]
    );
    assert_eq!(
        h.node.broker.storage.dirs(),
        dirs_before,
        "the partitions created before the failure were removed"
    );
    assert_eq!(
        h.node.broker.storage.open_files(),
        open,
        "the files the creation opened were closed"
    );
    assert!(!h.node.broker.topics.contains("cut"));
    assert!(!h.node.broker.metadata.topics.contains_key("cut"));
    // With descriptors again, the same name is free and created whole.
    h.node.broker.storage.open_files_max = None;
    assert_eq!(h.create_topic("cut", 5, &[]), 0);
    assert_eq!(dirs_of(&h, "cut").len(), 5);
}

#[test]
fn a_failed_creation_is_not_recorded_and_a_restart_finds_nothing_of_it() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    let open = h.node.broker.storage.open_files();
    h.node.broker.storage.open_files_max = Some(open + 2);
    assert_eq!(
        h.create_topic("cut", 3, &[]),
        ResponseError::KafkaStorageError.code()
    );
    h.node.broker.storage.open_files_max = None;
    let storage = h.node.broker.storage.clone();
    let h = Harness::new(storage, &[]);
    assert!(!h.node.broker.topics.contains("cut"));
    assert!(dirs_of(&h, "cut").is_empty());
}
