//! Topics in a cluster: created, grown and deleted through the active
//! controller, placed across the brokers, served by each partition's
//! leader only, seen alike by every node.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::batch::build_batch;
use sluice_core::raft::Role;
use sluice_core::NodeId;
use sluice_sim::{ClientId, Cluster, ClusterConfig};

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn formed(seed: u64) -> Cluster {
    let mut config = ClusterConfig::new(seed, 3);
    config.broker = sluice_sim::quorum::quorum_broker_config(3);
    config
        .broker
        .push(("auto.create.topics.enable".into(), "true".into()));
    let mut cluster = Cluster::new(config);
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        cluster.link_up(IDS[a], IDS[b]);
    }
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).is_unfenced() && c.node(id).broker().live_brokers().len() == 3)
    });
    cluster
}

fn controller(cluster: &Cluster) -> NodeId {
    *IDS.iter()
        .find(|&&id| cluster.node(id).quorum().and_then(|q| q.role()) == Some(Role::Leader))
        .expect("a leader")
}

fn metadata(cluster: &mut Cluster, client: ClientId, topic: &str) -> MetadataResponse {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]))
        .with_allow_auto_topic_creation(false);
    cluster
        .request(client, ApiKey::Metadata, 12, &request)
        .expect("metadata answered")
}

fn create(cluster: &mut Cluster, client: ClientId, topic: &str, partitions: i32) -> i16 {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)])
        .with_timeout_ms(5_000);
    let response: CreateTopicsResponse = cluster
        .request(client, ApiKey::CreateTopics, 7, &request)
        .expect("create answered");
    response.topics[0].error_code
}

fn produce(cluster: &mut Cluster, client: ClientId, topic: &str, partition: i32) -> i16 {
    let records = Bytes::from(build_batch(0, &[(None, Some(&b"v"[..]), vec![], 0)]));
    let data = produce_request::PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(records));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![data])]);
    let response: ProduceResponse = cluster
        .request(client, ApiKey::Produce, 9, &request)
        .expect("produce answered");
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn topics_go_through_the_controller_and_partitions_are_served_by_their_leaders() {
    let mut cluster = formed(11);
    let active = controller(&cluster);
    let other = *IDS.iter().find(|&&id| id != active).expect("another node");

    // A node that is not the controller forwards to it (KIP-590) and
    // hands back its answer.
    let at_other = cluster.connect(other);
    assert_eq!(create(&mut cluster, at_other, "events", 3), 0);
    let at_active = cluster.connect(active);
    assert_eq!(
        create(&mut cluster, at_active, "events", 3),
        ResponseError::TopicAlreadyExists.code()
    );
    assert_eq!(
        create(&mut cluster, at_other, "events", 3),
        ResponseError::TopicAlreadyExists.code(),
        "the controller's refusal, forwarded"
    );

    // Every node sees the same placement once it applied the records:
    // three partitions over three brokers, one each.
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).broker().topic_exists("events"))
    });
    let mut seen = Vec::new();
    for id in IDS {
        let client = cluster.connect(id);
        let answer = metadata(&mut cluster, client, "events");
        assert_eq!(answer.brokers.len(), 3, "n{id} lists every broker");
        assert_eq!(answer.controller_id.0, active.0);
        let leaders: Vec<i32> = answer.topics[0]
            .partitions
            .iter()
            .map(|p| p.leader_id.0)
            .collect();
        seen.push(leaders);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "one view: {seen:?}");
    let mut leaders = seen[0].clone();
    leaders.sort_unstable();
    assert_eq!(leaders, [1, 2, 3], "partitions spread over the brokers");

    // Each partition takes writes at its leader only.
    for (partition, &leader) in seen[0].iter().enumerate() {
        let partition = partition as i32;
        let at_leader = cluster.connect(NodeId(leader));
        assert_eq!(produce(&mut cluster, at_leader, "events", partition), 0);
        let follower = IDS
            .iter()
            .copied()
            .find(|id| id.0 != leader)
            .expect("another");
        let elsewhere = cluster.connect(follower);
        assert_eq!(
            produce(&mut cluster, elsewhere, "events", partition),
            ResponseError::NotLeaderOrFollower.code()
        );
    }

    // Auto-creation at a node that is not the controller: asked of the
    // controller; the client is told to retry, then finds the topic.
    let request = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(StrBytes::from_static_str("auto"))))]))
        .with_allow_auto_topic_creation(true);
    let first: MetadataResponse = cluster
        .request(at_other, ApiKey::Metadata, 12, &request)
        .expect("answered");
    assert_eq!(
        first.topics[0].error_code,
        ResponseError::LeaderNotAvailable.code()
    );
    cluster.run_until(|c| c.node(other).broker().topic_exists("auto"));
    let again = metadata(&mut cluster, at_other, "auto");
    assert_eq!(again.topics[0].error_code, 0);

    // Deleted through the controller, gone everywhere.
    let request = DeleteTopicsRequest::default()
        .with_topic_names(vec![TopicName(StrBytes::from_static_str("events"))])
        .with_timeout_ms(5_000);
    let deleted: DeleteTopicsResponse = cluster
        .request(at_active, ApiKey::DeleteTopics, 4, &request)
        .expect("answered");
    assert_eq!(deleted.responses[0].error_code, 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| !c.node(id).broker().topic_exists("events"))
    });
}

/// An idempotent producer's id from a node, retried while the node waits
/// for its block of ids (COORDINATOR_LOAD_IN_PROGRESS), at most
/// `attempts_max` times.
fn producer_id(cluster: &mut Cluster, client: ClientId, attempts_max: u32) -> i64 {
    let request = InitProducerIdRequest::default()
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    for _ in 0..attempts_max {
        let response: InitProducerIdResponse = cluster
            .request(client, ApiKey::InitProducerId, 4, &request)
            .expect("answered");
        if response.error_code == 0 {
            return response.producer_id.0;
        }
        assert_eq!(
            response.error_code,
            ResponseError::CoordinatorLoadInProgress.code(),
            "retriable while the block is allocated"
        );
        cluster.run_for(20);
    }
    panic!("no block of producer ids within {attempts_max} tries");
}

/// Producer ids come from blocks the controller commits per broker, so
/// idempotent producers on different brokers never share an id.
#[test]
fn producer_ids_are_unique_across_the_brokers() {
    let mut cluster = formed(12);
    let mut ids = Vec::new();
    for node in IDS {
        let client = cluster.connect(node);
        for _ in 0..3 {
            let id = producer_id(&mut cluster, client, 100);
            ids.push((node, id));
        }
    }
    // A restarted broker replays the blocks it had: it must take a new one.
    cluster.crash(IDS[0], sluice_sim::CrashLoss::LoseUnsynced);
    // Asked at once, before it replayed its metadata log.
    cluster.run_until(|c| c.node(IDS[0]).is_ready());
    let client = cluster.connect(IDS[0]);
    for _ in 0..3 {
        let id = producer_id(&mut cluster, client, 200);
        ids.push((IDS[0], id));
    }
    let mut distinct: Vec<i64> = ids.iter().map(|(_, id)| *id).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "ids handed out twice: {ids:?}");
}

/// A fenced broker's partitions lose their leader (one replica: nobody
/// else may take over) and get it back when the broker is unfenced.
#[test]
fn a_fenced_brokers_partitions_go_offline_and_come_back() {
    let mut cluster = formed(13);
    let active = controller(&cluster);
    let client = cluster.connect(active);
    assert_eq!(create(&mut cluster, client, "spread", 6), 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).broker().topic_exists("spread"))
    });
    let silent = *IDS.iter().find(|&&id| id != active).expect("a follower");
    let leaders = |cluster: &mut Cluster, client: ClientId| -> Vec<i32> {
        let answer = metadata(cluster, client, "spread");
        answer.topics[0]
            .partitions
            .iter()
            .map(|p| p.leader_id.0)
            .collect()
    };
    let before = leaders(&mut cluster, client);
    assert_eq!(
        before.iter().filter(|&&l| l == silent.0).count(),
        2,
        "{before:?}"
    );
    for other in IDS.iter().copied().filter(|&id| id != silent) {
        cluster.cut(silent, other);
    }
    cluster.run_until(|c| {
        !c.node(active)
            .broker()
            .live_brokers()
            .iter()
            .any(|b| b.id == silent.0)
    });
    cluster.run_for(500);
    let during = leaders(&mut cluster, client);
    for (partition, (was, now)) in before.iter().zip(&during).enumerate() {
        if *was == silent.0 {
            assert_eq!(
                *now, -1,
                "partition {partition} still led by the fenced broker"
            );
        } else {
            assert_eq!(now, was, "partition {partition} moved");
        }
    }
    for other in IDS.iter().copied().filter(|&id| id != silent) {
        cluster.link_up(silent, other);
    }
    // Unfenced in the committed metadata, with its leaderships in the same
    // proposal.
    cluster.run_until(|c| {
        c.node(active)
            .broker()
            .live_brokers()
            .iter()
            .any(|b| b.id == silent.0)
    });
    assert_eq!(leaders(&mut cluster, client), before, "leaders back");
}

/// A group's commits outlive a crash of its coordinator: they were
/// acknowledged once the replicas of its `__consumer_offsets` partition had
/// them, and whichever broker leads that partition next (the restarted one
/// or another) loads them and answers for the group.
#[test]
fn committed_offsets_survive_a_restart_of_their_coordinator() {
    let mut cluster = formed(14);
    let active = controller(&cluster);
    let client = cluster.connect(active);
    assert_eq!(create(&mut cluster, client, "orders", 1), 0);
    let find = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_static_str("billing"))
        .with_key_type(0);
    // The offsets topic is created on first use: retry until there is one.
    let mut tries = 0;
    let coordinator = loop {
        let answer: FindCoordinatorResponse = cluster
            .request(client, ApiKey::FindCoordinator, 3, &find)
            .expect("answered");
        if answer.error_code == 0 {
            break NodeId(answer.node_id.0);
        }
        tries += 1;
        assert!(tries < 100, "no coordinator: {answer:?}");
        cluster.run_for(50);
    };
    let at_coordinator = cluster.connect(coordinator);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("billing")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(42),
                ]),
        ]);
    // The coordinator named may not have applied the offsets topic yet
    // (each node learns of a commit on its own): clients retry, as here.
    let mut tries = 0;
    loop {
        let committed: OffsetCommitResponse = cluster
            .request(at_coordinator, ApiKey::OffsetCommit, 8, &commit)
            .expect("answered");
        let error = committed.topics[0].partitions[0].error_code;
        if error == 0 {
            break;
        }
        // COORDINATOR_LOAD_IN_PROGRESS or COORDINATOR_NOT_AVAILABLE only.
        assert!(matches!(error, 14 | 15), "offset commit refused: {error}");
        tries += 1;
        assert!(tries < 100, "the coordinator never took the commit");
        cluster.run_for(50);
    }

    cluster.crash(coordinator, sluice_sim::CrashLoss::LoseUnsynced);
    cluster.run_until(|c| {
        c.node(coordinator).is_ready()
            && c.node(coordinator).broker().topic_exists("orders")
            && c.node(coordinator).broker().live_brokers().len() == 3
    });
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("billing")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_indexes(vec![0]),
        ]));
    let mut tries = 0;
    let answer = loop {
        let found: FindCoordinatorResponse = cluster
            .request(client, ApiKey::FindCoordinator, 3, &find)
            .expect("answered");
        if found.error_code == 0 {
            let at = cluster.connect(NodeId(found.node_id.0));
            let answer: OffsetFetchResponse = cluster
                .request(at, ApiKey::OffsetFetch, 7, &fetch)
                .expect("answered");
            if answer.error_code == 0 {
                break answer;
            }
        }
        tries += 1;
        assert!(tries < 400, "no answer from a coordinator");
        cluster.run_for(50);
    };
    assert_eq!(answer.topics[0].partitions[0].committed_offset, 42);
}
