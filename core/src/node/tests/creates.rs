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

/// Every topic the node lists in a Metadata answer on the current
/// connection, answered at once.
fn listed_topics(h: &mut Harness) -> Vec<String> {
    let c = h.send(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    let response: MetadataResponse = h.take(ApiKey::Metadata, 12, c);
    response
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect()
}

/// One step the node asked for at once; true while creations remain.
fn step(h: &mut Harness) -> bool {
    assert_eq!(
        h.node.poll_timeout(),
        Some(h.now_ms),
        "a step is due at once"
    );
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.node.broker.creations.is_busy()
}

const OTHER: ConnectionId = ConnectionId(2);

#[test]
fn a_large_create_is_spread_over_steps_and_other_connections_are_answered_between_them() {
    use crate::broker::creations::PARTITION_OPENS_PER_STEP_MAX as PER_STEP;
    let mut h = Harness::new(MemStorage::new(), &[]);
    assert_eq!(h.create_topic("existing", 1, &[]), 0);
    h.node.handle_connect(Now::at(h.now_ms), OTHER, PEER);
    h.hold_steps = true;

    // 100 + 3 partitions: three full steps and a fourth of 7.
    let request = CreateTopicsRequest::default()
        .with_topics(vec![creatable("big", 100), creatable("small", 3)]);
    let create = h.send(ApiKey::CreateTopics, 7, &request);
    assert!(h.sent.is_empty(), "nothing is answered before the work");
    assert!(dirs_of(&h, "big").is_empty(), "no log opened while handled");

    let mut steps = 0;
    loop {
        // Another connection between two steps: a Metadata answered at
        // once, listing no part-made topic; a Produce to an existing topic
        // answered after its sync; a create of a name under way refused.
        h.connection = OTHER;
        let listed = listed_topics(&mut h);
        assert!(listed.contains(&"existing".to_string()));
        assert!(
            !listed.iter().any(|t| t == "big" || t == "small"),
            "{listed:?}"
        );
        let produce = h.produce("existing", 0, 1, one_record(b"between"));
        h.sync_all();
        assert_eq!(h.produce_result(produce), (0, steps));
        assert_eq!(
            create_topics(&mut h, vec![creatable("big", 1)], false),
            vec![("big".to_string(), ResponseError::TopicAlreadyExists.code())]
        );
        assert!(h.sent.is_empty(), "the create is not answered yet");
        h.connection = CONN;

        steps += 1;
        let busy = step(&mut h);
        let opened = (steps as usize * PER_STEP).min(103);
        assert_eq!(
            dirs_of(&h, "big").len() + dirs_of(&h, "small").len(),
            opened,
            "{PER_STEP} logs opened a step"
        );
        if !busy {
            break;
        }
        assert!(!h.node.broker.topics.contains("big"));
        assert!(!h.node.broker.metadata.topics.contains_key("big"));
    }
    assert_eq!(steps as usize, 103_usize.div_ceil(PER_STEP));

    // Whole and recorded, and answered once durable.
    for (name, count) in [("big", 100), ("small", 3)] {
        assert_eq!(h.node.broker.topics.partition_count(name), count);
        assert_eq!(h.node.broker.metadata.topics[name].partitions, count);
        assert_eq!(dirs_of(&h, name).len(), count as usize);
    }
    assert!(h.sent.is_empty(), "answered only once durable");
    h.sync_all();
    let response: CreateTopicsResponse = h.take(ApiKey::CreateTopics, 7, create);
    for topic in &response.topics {
        assert_eq!(topic.error_code, 0);
        let held = h.node.broker.topics.get(&topic.name.0).expect("created");
        assert_eq!(topic.topic_id, uuid::Uuid::from_bytes(held.id));
    }
    assert_eq!(response.topics[0].num_partitions, 100);
    assert!(!h.node.broker.creations.holds_outcomes());
    h.connection = OTHER;
    let listed = listed_topics(&mut h);
    assert!(listed.contains(&"big".to_string()) && listed.contains(&"small".to_string()));
    // A restart finds them whole.
    let storage = h.node.broker.storage.clone();
    let h = Harness::new(storage, &[]);
    assert_eq!(h.node.broker.topics.partition_count("big"), 100);
}

#[test]
fn a_deletion_during_a_growth_undoes_it_and_leaves_the_name_free() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    assert_eq!(h.create_topic("g", 2, &[]), 0);
    let open_before = h.node.broker.storage.open_files();
    h.node.handle_connect(Now::at(h.now_ms), OTHER, PEER);
    h.hold_steps = true;
    let topic = create_partitions_request::CreatePartitionsTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("g")))
        .with_count(80);
    let grow = h.send(
        ApiKey::CreatePartitions,
        3,
        &CreatePartitionsRequest::default().with_topics(vec![topic]),
    );
    assert!(step(&mut h), "more steps to go");
    assert!(dirs_of(&h, "g").len() > 2, "some new logs are open");
    assert_eq!(h.node.broker.topics.partition_count("g"), 2, "none visible");

    // A second growth counts from where the first one ends.
    h.connection = OTHER;
    assert_eq!(create_partitions(&mut h, "g", 80), INVALID_PARTITIONS);
    let c = h.send(
        ApiKey::DeleteTopics,
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_static_str("g"))]),
    );
    // The growth is undone at once, and answered so.
    let grown: CreatePartitionsResponse = h.take(ApiKey::CreatePartitions, 3, grow);
    assert_eq!(
        grown.results[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    h.sync_all();
    let deleted: DeleteTopicsResponse = h.take(ApiKey::DeleteTopics, 4, c);
    assert_eq!(deleted.responses[0].error_code, 0);
    assert!(dirs_of(&h, "g").is_empty(), "the growth's logs went too");
    assert!(!h.node.broker.creations.is_busy());
    assert!(h.node.broker.storage.open_files() < open_before);

    // The name is free, and a new topic of it is created whole.
    h.hold_steps = false;
    assert_eq!(h.create_topic("g", 40, &[]), 0);
    assert_eq!(dirs_of(&h, "g").len(), 40);
    assert_eq!(h.node.broker.topics.partition_count("g"), 40);
}

#[test]
fn a_creation_whose_client_left_completes_and_keeps_no_outcome() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.hold_steps = true;
    let _ = h.send(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![creatable("left", 50)]),
    );
    assert!(step(&mut h));
    h.node.handle_disconnect(Now::at(h.now_ms), CONN);
    while step(&mut h) {}
    assert!(!h.node.broker.creations.holds_outcomes());
    assert_eq!(h.node.broker.topics.partition_count("left"), 50);
}

#[test]
fn a_shutdown_undoes_the_creations_under_way_and_answers_them() {
    let mut h = Harness::new(MemStorage::new(), &[]);
    h.hold_steps = true;
    let c = h.send(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![creatable("cut", 50)]),
    );
    assert!(step(&mut h));
    h.node.begin_shutdown(Now::at(h.now_ms));
    h.drain();
    let response: CreateTopicsResponse = h.take(ApiKey::CreateTopics, 7, c);
    assert_eq!(
        response.topics[0].error_code,
        ResponseError::NotController.code()
    );
    assert!(dirs_of(&h, "cut").is_empty());
    // One that comes after the shutdown began is undone at its first step.
    let late = h.send(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![creatable("late", 5)]),
    );
    assert!(!step(&mut h));
    let response: CreateTopicsResponse = h.take(ApiKey::CreateTopics, 7, late);
    assert_eq!(
        response.topics[0].error_code,
        ResponseError::NotController.code()
    );
    assert!(dirs_of(&h, "late").is_empty());
    h.sync_all();
    assert!(h.node.is_stopped());
    assert!(!h.node.broker.metadata.topics.contains_key("cut"));
}
