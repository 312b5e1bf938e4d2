//! Replicated partitions on three nodes: followers fetch from the leader,
//! acks=all is answered once the ISR has the records synced, a leader's
//! crash moves leadership to an ISR member that has every acknowledged
//! record, and the replicas' logs end up identical.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::batch::{build_batch, decode_records, headers_in};
use sluice_core::NodeId;
use sluice_sim::{ClientId, Cluster, ClusterConfig, CrashLoss};

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const TOPIC: &str = "replicated";

fn formed(seed: u64) -> Cluster {
    formed_with(seed, &[])
}

/// Three formed nodes whose brokers also take `extra` settings.
fn formed_with(seed: u64, extra: &[(&str, &str)]) -> Cluster {
    let mut config = ClusterConfig::new(seed, 3);
    config.broker = sluice_sim::quorum::quorum_broker_config(3);
    config
        .broker
        .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
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

fn create(cluster: &mut Cluster, client: ClientId, factor: i16, min_insync: &str) -> i16 {
    create_with(
        cluster,
        client,
        factor,
        &[("min.insync.replicas", min_insync)],
    )
}

/// Creates the one-partition topic with `factor` replicas and `configs`;
/// the error code of the answer.
fn create_with(
    cluster: &mut Cluster,
    client: ClientId,
    factor: i16,
    configs: &[(&str, &str)],
) -> i16 {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            create_topics_request::CreatableTopicConfig::default()
                .with_name(StrBytes::from_string((*k).into()))
                .with_value(Some(StrBytes::from_string((*v).into())))
        })
        .collect();
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_num_partitions(1)
            .with_replication_factor(factor)
            .with_configs(configs)])
        .with_timeout_ms(5_000);
    let response: CreateTopicsResponse = cluster
        .request(client, ApiKey::CreateTopics, 7, &request)
        .expect("create answered");
    response.topics[0].error_code
}

/// The partition as node `at` answers Metadata: leader, epoch, ISR.
fn partition_state(cluster: &mut Cluster, at: NodeId) -> (i32, i32, Vec<i32>) {
    let client = cluster.connect(at);
    let request = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))]))
        .with_allow_auto_topic_creation(false);
    let answer: MetadataResponse = cluster
        .request(client, ApiKey::Metadata, 12, &request)
        .expect("metadata answered");
    let p = &answer.topics[0].partitions[0];
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    (p.leader_id.0, p.leader_epoch, isr)
}

/// A Produce of one record with value `value` to the topic's partition 0.
fn one_record(value: &str, acks: i16, timeout_ms: i32) -> ProduceRequest {
    let records = Bytes::from(build_batch(0, &[(None, Some(value.as_bytes()), vec![], 0)]));
    let data = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(records));
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_data(vec![data])])
}

/// Produces one record with value `value` at acks=all; the error code and
/// base offset.
fn produce(cluster: &mut Cluster, client: ClientId, value: &str) -> (i16, i64) {
    let response: ProduceResponse = cluster
        .request(client, ApiKey::Produce, 9, &one_record(value, -1, 10_000))
        .expect("produce answered");
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Every record value readable from `at` from offset 0, by Fetch.
fn read_all(cluster: &mut Cluster, at: NodeId) -> Vec<(i64, String)> {
    let client = cluster.connect(at);
    let mut out = Vec::new();
    loop {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(out.len() as i64)
                    .with_partition_max_bytes(1 << 20)])]);
        let response: FetchResponse = cluster
            .request(client, ApiKey::Fetch, 11, &request)
            .expect("fetch answered");
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch from n{at}");
        let records = p.records.clone().unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        for (_, range) in headers_in(&records) {
            let decoded = decode_records(&records[range]).expect("a stored batch decodes");
            for record in decoded {
                let value = record.value.expect("a value");
                out.push((record.offset, String::from_utf8_lossy(&value).into_owned()));
            }
        }
    }
}

#[test]
fn acknowledged_records_survive_the_leaders_crash() {
    for seed in 0..4u64 {
        let mut cluster = formed(100 + seed);
        let client = cluster.connect(IDS[0]);
        assert_eq!(create(&mut cluster, client, 3, "2"), 0);
        cluster.run_until(|c| {
            IDS.iter()
                .all(|&id| c.node(id).broker().topic_exists(TOPIC))
        });
        let (leader, epoch, isr) = partition_state(&mut cluster, IDS[0]);
        assert_eq!(isr, [1, 2, 3], "every replica starts in the ISR");
        let at_leader = cluster.connect(NodeId(leader));
        let mut acknowledged = Vec::new();
        for i in 0..20 {
            let value = format!("a{i}");
            let (error, offset) = produce(&mut cluster, at_leader, &value);
            assert_eq!(error, 0, "seed {seed}: produce {i}");
            acknowledged.push((offset, value));
        }
        // Every replica has the acknowledged records on disk: the leader
        // answered only once the ISR synced them.
        cluster.crash(NodeId(leader), CrashLoss::LoseUnsynced);
        cluster.run_until(|c| c.node(NodeId(leader)).is_ready());
        // A new leader, in a newer epoch, takes writes again.
        let survivor = *IDS.iter().find(|id| id.0 != leader).expect("another node");
        let mut tries = 0;
        let (new_leader, new_epoch) = loop {
            let (l, e, _) = partition_state(&mut cluster, survivor);
            if l >= 0 && e > epoch {
                break (l, e);
            }
            tries += 1;
            assert!(tries < 400, "seed {seed}: no new leader");
            cluster.run_for(50);
        };
        assert!(new_epoch > epoch);
        let at_new = cluster.connect(NodeId(new_leader));
        let mut tries = 0;
        for i in 0..20 {
            let value = format!("b{i}");
            loop {
                let (error, offset) = produce(&mut cluster, at_new, &value);
                if error == 0 {
                    acknowledged.push((offset, value));
                    break;
                }
                assert!(
                    error == ResponseError::NotEnoughReplicas.code()
                        || error == ResponseError::NotLeaderOrFollower.code(),
                    "seed {seed}: produce after failover: {error}"
                );
                tries += 1;
                assert!(tries < 400, "seed {seed}: produce never accepted");
                cluster.run_for(50);
            }
        }
        // Read back from the leader: every acknowledged record, at its
        // offset, once.
        let read = read_all(&mut cluster, NodeId(new_leader));
        for (offset, value) in &acknowledged {
            assert_eq!(
                read.get(*offset as usize),
                Some(&(*offset, value.clone())),
                "seed {seed}: acknowledged record at {offset}"
            );
        }
        // The replicas converge on the same log.
        cluster.run_until(|c| {
            let ends: Vec<i64> = IDS
                .iter()
                .map(|&id| {
                    c.node(id)
                        .broker()
                        .topics
                        .partition(TOPIC, 0)
                        .map_or(-1, |p| p.log.durable_offset())
                })
                .collect();
            ends.iter()
                .all(|&e| e == ends[0] && e >= acknowledged.len() as i64)
        });
    }
}

#[test]
fn the_replication_campaign_holds_on_three_nodes() {
    for seed in 0..20 {
        let stats =
            sluice_sim::replication::run_replication(&sluice_sim::replication::ReplicationRun {
                seed,
                nodes: 3,
                broker: Vec::new(),
                faults: true,
            })
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(
            stats.acknowledged > 0,
            "seed {seed}: nothing acknowledged: {stats:?}"
        );
    }
}

/// A broker asked to stop first has the controller move its leaderships
/// (BrokerHeartbeat with want_shut_down): by the time it stopped, another
/// ISR member leads each of its partitions in a newer epoch and it is out
/// of their ISRs, so clients never wait a session timeout for them.
#[test]
fn a_controlled_shutdown_moves_leadership_before_the_broker_stops() {
    let mut cluster = formed(300);
    let client = cluster.connect(IDS[0]);
    assert_eq!(create(&mut cluster, client, 3, "2"), 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).broker().topic_exists(TOPIC))
    });
    let (leader, epoch, _) = partition_state(&mut cluster, IDS[0]);
    let at_leader = cluster.connect(NodeId(leader));
    let (error, _) = produce(&mut cluster, at_leader, "before");
    assert_eq!(error, 0);
    cluster.input(NodeId(leader), |node, now| node.begin_shutdown(now));
    cluster.run_until(|c| c.node(NodeId(leader)).is_stopped());
    let other = *IDS.iter().find(|id| id.0 != leader).expect("another node");
    let (now_leader, now_epoch, isr) = partition_state(&mut cluster, other);
    assert_ne!(now_leader, leader, "the stopped broker still leads");
    assert!(now_leader >= 0, "no leader after the controlled shutdown");
    assert!(now_epoch > epoch);
    assert!(
        !isr.contains(&leader),
        "the stopped broker is still in the ISR {isr:?}"
    );
}

/// A leader cut off from its followers cannot move its high watermark: an
/// acks=all produce is answered REQUEST_TIMED_OUT at its `timeout_ms`, as
/// Kafka's delayed produce is, not left waiting.
#[test]
fn acks_all_times_out_when_the_isr_cannot_follow() {
    let mut cluster = formed(400);
    let client = cluster.connect(IDS[0]);
    assert_eq!(create(&mut cluster, client, 3, "2"), 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).broker().topic_exists(TOPIC))
    });
    let (leader, _, _) = partition_state(&mut cluster, IDS[0]);
    let at_leader = cluster.connect(NodeId(leader));
    assert_eq!(produce(&mut cluster, at_leader, "before").0, 0);
    for id in IDS.iter().filter(|id| id.0 != leader) {
        cluster.cut(NodeId(leader), *id);
    }
    let sent_ms = cluster.now_ms();
    let request = one_record("cut off", -1, 1_000);
    let response: ProduceResponse = cluster
        .request(at_leader, ApiKey::Produce, 9, &request)
        .expect("answered");
    let waited = cluster.now_ms() - sent_ms;
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        ResponseError::RequestTimedOut.code()
    );
    assert!(
        (1_000..2_000).contains(&waited),
        "answered after {waited} ms"
    );
}

/// Kafka answers an acks=all produce NOT_ENOUGH_REPLICAS_AFTER_APPEND when
/// the high watermark reached its records but the ISR shrank below
/// `min.insync.replicas` before the answer was settled. Here the answer
/// waits behind a long-polling fetch on the same connection (answers keep
/// request order) while a follower is cut off and leaves the ISR.
#[test]
fn acks_all_settled_after_the_isr_shrank_is_not_enough_replicas_after_append() {
    let mut cluster = formed_with(500, &[("replica.lag.time.max.ms", "2000")]);
    let client = cluster.connect(IDS[0]);
    assert_eq!(create(&mut cluster, client, 3, "3"), 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).broker().topic_exists(TOPIC))
    });
    let (leader, _, isr) = partition_state(&mut cluster, IDS[0]);
    assert_eq!(isr, [1, 2, 3]);
    let at_leader = cluster.connect(NodeId(leader));
    let (error, _) = produce(&mut cluster, at_leader, "before");
    assert_eq!(error, 0, "with the whole ISR an acks=all produce succeeds");
    // A fetch that waits long for more than will come, then the produce.
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(60_000)
        .with_min_bytes(1 << 20)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1)
                .with_partition_max_bytes(1 << 20)])]);
    let fetch_correlation = cluster.send(at_leader, ApiKey::Fetch, 11, &fetch);
    let request = one_record("after", -1, 60_000);
    let produce_correlation = cluster.send(at_leader, ApiKey::Produce, 9, &request);
    let leader_high_watermark = |c: &Cluster| {
        c.node(NodeId(leader))
            .broker()
            .topics
            .partition(TOPIC, 0)
            .and_then(|p| p.role.leading())
            .map_or(-1, |l| l.high_watermark)
    };
    cluster.run_until(|c| leader_high_watermark(c) >= 2);
    assert!(!cluster.has_response(at_leader, produce_correlation));
    // Cut off a follower that is not the active controller: the leader
    // still reaches the controller, which commits the shrink.
    let controller = cluster
        .node(NodeId(leader))
        .broker()
        .cluster
        .as_ref()
        .and_then(|c| c.controller_id)
        .expect("a controller");
    let cut = *IDS
        .iter()
        .find(|id| id.0 != leader && id.0 != controller)
        .expect("a follower that does not control");
    cluster.cut(NodeId(leader), cut);
    // A follower at the leader's log end counts as caught up however long
    // it is silent: a record written with acks=1 leaves it behind.
    let other = cluster.connect(NodeId(leader));
    assert_eq!(produce_acks_one(&mut cluster, other, "acks=1"), 0);
    let isr_of_leader = |c: &Cluster| {
        c.node(NodeId(leader))
            .broker()
            .topics
            .partition(TOPIC, 0)
            .and_then(|p| p.role.leading())
            .map_or(0, |l| l.isr.len())
    };
    cluster.run_until(|c| isr_of_leader(c) == 2);
    assert!(
        !cluster.has_response(at_leader, produce_correlation),
        "the produce is still behind the fetch"
    );
    cluster.run_until(|c| c.has_response(at_leader, produce_correlation));
    let _: FetchResponse = cluster
        .take_response(at_leader, ApiKey::Fetch, 11, fetch_correlation)
        .expect("the fetch answered first");
    let response: ProduceResponse = cluster
        .take_response(at_leader, ApiKey::Produce, 9, produce_correlation)
        .expect("the produce answered");
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(
        p.error_code,
        ResponseError::NotEnoughReplicasAfterAppend.code()
    );
    assert_eq!(p.base_offset, 1, "the records stay, at their offset");
    // The same produce now, with the ISR below min.insync, is refused
    // before it is appended.
    let (error, _) = produce(&mut cluster, at_leader, "refused");
    assert_eq!(error, ResponseError::NotEnoughReplicas.code());
}

/// Creates the test topic with one partition on two replicas,
/// min.insync.replicas 1, and `unclean.leader.election.enable` as given.
fn create_two_replicas(cluster: &mut Cluster, client: ClientId, unclean: bool) -> i16 {
    let unclean = if unclean { "true" } else { "false" };
    create_with(
        cluster,
        client,
        2,
        &[
            ("min.insync.replicas", "1"),
            ("unclean.leader.election.enable", unclean),
        ],
    )
}

/// The partition's registration in node `at`'s metadata image.
fn registration(
    cluster: &Cluster,
    at: NodeId,
) -> Option<sluice_core::image::PartitionRegistration> {
    let image = &cluster.node(at).broker().cluster.as_ref()?.image;
    let id = image.topic_by_name(TOPIC)?.id;
    image.partition(id, 0).cloned()
}

fn log_end(cluster: &Cluster, at: NodeId) -> i64 {
    cluster
        .node(at)
        .broker()
        .topics
        .partition(TOPIC, 0)
        .map_or(-1, |p| p.log.log_end_offset())
}

/// Produces one record at acks=1 (the leader's own sync is enough).
fn produce_acks_one(cluster: &mut Cluster, client: ClientId, value: &str) -> i16 {
    let response: ProduceResponse = cluster
        .request(client, ApiKey::Produce, 9, &one_record(value, 1, 10_000))
        .expect("produce answered");
    response.responses[0].partition_responses[0].error_code
}

/// A partition on two replicas whose follower fell out of the ISR, then
/// whose leader is lost: with `unclean.leader.election.enable` the
/// controller elects the follower (its ISR just itself, recovering) and
/// counts the election, and the records only the old leader had are gone;
/// without it the partition stays without a leader. Returns the third
/// node, which is neither replica.
fn lose_the_only_isr_member(unclean: bool) -> (Cluster, NodeId, NodeId, NodeId) {
    let mut cluster = formed_with(600, &[("replica.lag.time.max.ms", "2000")]);
    let client = cluster.connect(IDS[0]);
    assert_eq!(create_two_replicas(&mut cluster, client, unclean), 0);
    cluster.run_until(|c| registration(c, IDS[0]).is_some_and(|r| r.leader >= 0));
    let r = registration(&cluster, IDS[0]).expect("registered");
    let leader = NodeId(r.leader);
    let follower = NodeId(*r.replicas.iter().find(|&&id| id != r.leader).expect("two"));
    let third = *IDS
        .iter()
        .find(|&&id| id != leader && id != follower)
        .expect("three nodes");
    cluster.run_until(|c| c.node(leader).broker().topic_exists(TOPIC));
    let at_leader = cluster.connect(leader);
    assert_eq!(produce_acks_one(&mut cluster, at_leader, "both have it"), 0);
    cluster.run_until(|c| log_end(c, follower) == 1);
    // The follower loses the leader and falls behind: it leaves the ISR.
    cluster.cut(leader, follower);
    assert_eq!(produce_acks_one(&mut cluster, at_leader, "leader only"), 0);
    cluster.run_until(|c| registration(c, third).is_some_and(|r| r.isr == [leader.0]));
    // Then the leader is lost to everyone.
    cluster.cut(leader, third);
    (cluster, leader, follower, third)
}

#[test]
fn unclean_election_elects_a_replica_outside_the_isr_only_when_enabled() {
    let (mut cluster, leader, _, third) = lose_the_only_isr_member(false);
    let before = registration(&cluster, third).expect("registered");
    cluster.run_for(30_000);
    let after = registration(&cluster, third).expect("registered");
    assert_eq!(after.leader, -1, "no replica of the ISR is live: no leader");
    assert_eq!(after.isr, [leader.0], "the ISR keeps its last member");
    assert!(after.leader_epoch > before.leader_epoch);
    assert_eq!(
        cluster
            .node(third)
            .broker()
            .cluster
            .as_ref()
            .map(|c| c.image.unclean_elections()),
        Some(0)
    );

    let (mut cluster, leader, follower, third) = lose_the_only_isr_member(true);
    cluster.run_until(|c| registration(c, third).is_some_and(|r| r.leader == follower.0));
    let r = registration(&cluster, third).expect("registered");
    assert_eq!(r.isr, [follower.0], "the unclean leader is the ISR alone");
    assert_eq!(
        r.leader_recovery_state,
        sluice_core::image::LeaderRecoveryState::Recovering
    );
    for id in [follower, third] {
        cluster.run_until(|c| {
            c.node(id)
                .broker()
                .cluster
                .as_ref()
                .is_some_and(|v| v.image.unclean_elections() == 1)
        });
    }
    // The record only the old leader had is not on the new one.
    assert_eq!(log_end(&cluster, leader), 2);
    assert_eq!(log_end(&cluster, follower), 1);
    let at_new = cluster.connect(follower);
    let mut tries = 0;
    while produce_acks_one(&mut cluster, at_new, "after the election") != 0 {
        tries += 1;
        assert!(tries < 100, "the new leader never takes writes");
        cluster.run_for(100);
    }
    // The old leader comes back, follows, and cuts its own record; the
    // new leader takes it back into the ISR, recovered.
    cluster.link_up(leader, follower);
    cluster.link_up(leader, third);
    cluster.run_until(|c| {
        registration(c, third).is_some_and(|r| {
            r.isr.len() == 2
                && r.leader_recovery_state == sluice_core::image::LeaderRecoveryState::Recovered
        })
    });
    cluster.run_until(|c| log_end(c, leader) == log_end(c, follower));
    let read = read_all(&mut cluster, follower);
    let values: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["both have it", "after the election"]);
}

fn log_start(cluster: &Cluster, at: NodeId) -> i64 {
    cluster
        .node(at)
        .broker()
        .topics
        .partition(TOPIC, 0)
        .map_or(-1, |p| p.log.log_start_offset())
}

/// A follower cut off while retention on the leader deleted everything it
/// would fetch next gets OFFSET_OUT_OF_RANGE when it comes back: it empties
/// its log, starts it again at the leader's log start (Kafka's
/// `truncateFullyAndStartAt`), catches up and rejoins the ISR.
#[test]
fn a_follower_behind_the_leaders_log_start_restarts_its_log_there() {
    let mut cluster = formed_with(
        700,
        &[
            ("replica.lag.time.max.ms", "2000"),
            ("log.retention.check.interval.ms", "500"),
        ],
    );
    let client = cluster.connect(IDS[0]);
    let created = create_with(
        &mut cluster,
        client,
        3,
        &[
            ("min.insync.replicas", "1"),
            ("segment.bytes", "200"),
            ("retention.bytes", "400"),
        ],
    );
    assert_eq!(created, 0);
    cluster.run_until(|c| registration(c, IDS[0]).is_some_and(|r| r.leader >= 0));
    let leader = NodeId(registration(&cluster, IDS[0]).expect("registered").leader);
    cluster.run_until(|c| c.node(leader).broker().topic_exists(TOPIC));
    let at_leader = cluster.connect(leader);
    assert_eq!(produce_acks_one(&mut cluster, at_leader, "first"), 0);
    cluster.run_until(|c| IDS.iter().all(|&id| log_end(c, id) == 1));
    let controller = cluster
        .node(leader)
        .broker()
        .cluster
        .as_ref()
        .and_then(|c| c.controller_id)
        .expect("a controller");
    let follower = *IDS
        .iter()
        .find(|id| id.0 != leader.0 && id.0 != controller)
        .expect("a follower that does not control");
    cluster.cut(leader, follower);
    for i in 0..40 {
        assert_eq!(
            produce_acks_one(&mut cluster, at_leader, &format!("while cut off {i}")),
            0
        );
    }
    cluster.run_for(2_000);
    let behind_end = log_end(&cluster, follower);
    assert_eq!(behind_end, 1, "the follower got nothing while cut off");
    let leader_start = log_start(&cluster, leader);
    assert!(
        leader_start > behind_end,
        "retention on the leader deleted the follower's next offsets (log start {leader_start})"
    );
    cluster.link_up(leader, follower);
    cluster.run_until(|c| {
        log_start(c, follower) >= leader_start && log_end(c, follower) == log_end(c, leader)
    });
    cluster.run_until(|c| {
        c.node(leader)
            .broker()
            .topics
            .partition(TOPIC, 0)
            .and_then(|p| p.role.leading())
            .is_some_and(|l| l.isr.len() == 3)
    });
    // Its log restarted: nothing of what it held before is left.
    assert!(log_start(&cluster, follower) > behind_end);
    let epochs_at = |c: &Cluster, id: NodeId| {
        let node = c.node(id);
        let p = node.broker().topics.partition(TOPIC, 0).expect("held");
        p.log
            .end_offset_for_epoch(p.log.epochs().latest_epoch().unwrap_or(-1))
    };
    // It goes on following: a record written now lands on it, in the
    // leader's epoch.
    assert_eq!(produce_acks_one(&mut cluster, at_leader, "after"), 0);
    cluster.run_until(|c| log_end(c, follower) == log_end(c, leader));
    assert_eq!(epochs_at(&cluster, follower), epochs_at(&cluster, leader));
    assert!(epochs_at(&cluster, follower).0 >= 0);
}

/// Every broker keeps its high watermarks in `replication-offset-checkpoint`
/// (written every `replica.high.watermark.checkpoint.interval.ms`): after
/// the whole cluster restarts, the partition's new leader starts from the
/// high watermark it had, not from its log start, so consumers read the
/// acknowledged records before any follower fetched.
#[test]
fn a_restarted_leader_starts_from_its_checkpointed_high_watermark() {
    let mut cluster = formed_with(
        800,
        &[("replica.high.watermark.checkpoint.interval.ms", "1000")],
    );
    let client = cluster.connect(IDS[0]);
    assert_eq!(create(&mut cluster, client, 3, "2"), 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| c.node(id).broker().topic_exists(TOPIC))
    });
    let (leader, epoch, _) = partition_state(&mut cluster, IDS[0]);
    let at_leader = cluster.connect(NodeId(leader));
    for i in 0..10 {
        assert_eq!(produce(&mut cluster, at_leader, &format!("r{i}")).0, 0);
    }
    // Long enough for a checkpoint on every broker and its sync.
    cluster.run_for(3_000);
    for id in IDS {
        cluster.crash(id, CrashLoss::LoseUnsynced);
    }
    let leading = |c: &Cluster| {
        IDS.iter().find_map(|&id| {
            c.node(id)
                .broker()
                .topics
                .partition(TOPIC, 0)
                .and_then(|p| p.role.leading())
                .map(|l| (l.leader_epoch, l.high_watermark))
        })
    };
    // The first moment a broker leads again.
    cluster.run_until(|c| leading(c).is_some_and(|(e, _)| e > epoch));
    let (_, high_watermark) = leading(&cluster).expect("a leader");
    assert_eq!(
        high_watermark, 10,
        "the new leader starts from the checkpoint"
    );
}

/// A broker keeps no log for a partition it holds no replica of (Kafka's
/// brokers create logs only for their replicas): no directory on its disk,
/// yet it knows the partition from the metadata, lists it in Metadata and
/// sends producers to the leader.
#[test]
fn a_broker_keeps_no_log_for_a_partition_it_holds_no_replica_of() {
    let mut cluster = formed(900);
    let client = cluster.connect(IDS[0]);
    assert_eq!(create_two_replicas(&mut cluster, client, false), 0);
    cluster.run_until(|c| {
        IDS.iter()
            .all(|&id| registration(c, id).is_some_and(|r| r.leader >= 0))
    });
    let r = registration(&cluster, IDS[0]).expect("registered");
    let outsider = *IDS
        .iter()
        .find(|id| !r.replicas.contains(&id.0))
        .expect("a broker without a replica");
    cluster.run_until(|c| r.replicas.iter().all(|&id| log_end(c, NodeId(id)) == 0));
    assert!(cluster.node(outsider).broker().topic_exists(TOPIC));
    assert!(cluster
        .node(outsider)
        .broker()
        .topics
        .partition(TOPIC, 0)
        .is_none());
    for id in IDS {
        let has_dir = cluster.input(id, |node, _| {
            sluice_core::Storage::exists(node.storage_mut(), "replicated-0")
        });
        assert_eq!(has_dir, r.replicas.contains(&id.0), "n{id}");
    }
    let (leader, _, isr) = partition_state(&mut cluster, outsider);
    assert_eq!(leader, r.leader);
    assert_eq!(isr.len(), 2);
    let at_outsider = cluster.connect(outsider);
    assert_eq!(
        produce_acks_one(&mut cluster, at_outsider, "misdirected"),
        ResponseError::NotLeaderOrFollower.code()
    );
}

/// The leader's epochs as a follower or leader `at` holds them.
fn epochs(cluster: &Cluster, at: NodeId) -> Vec<(i32, i64)> {
    let node = cluster.node(at);
    let p = node.broker().topics.partition(TOPIC, 0).expect("held");
    (p.log.epochs().entries().iter())
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

/// Sets the leader epoch field of the batch at `offset` of node `at`'s
/// log to `epoch`, on its disk, and crashes it: the field lies outside the
/// batch CRC, so the node comes back with the batch and the epoch (as a
/// crash that flips a bit of an unsynced batch's epoch field may leave it).
fn damage_epoch_and_crash(cluster: &mut Cluster, at: NodeId, offset: i64, epoch: i32) {
    use sluice_core::Storage;
    cluster.input(at, |node, _| {
        let path = "replicated-0/00000000000000000000.log";
        let storage = node.storage_mut();
        let file = storage.open(path, false).expect("the segment");
        let mut bytes = vec![0u8; storage.len(file).expect("len") as usize];
        storage.read_at(file, 0, &mut bytes).expect("read");
        let (_, range) = headers_in(&bytes)
            .find(|(header, _)| header.base_offset == offset)
            .expect("the batch");
        let at = range.start + sluice_core::batch::PARTITION_LEADER_EPOCH_OFFSET;
        storage
            .write_at(file, at as u64, &epoch.to_be_bytes())
            .expect("write");
        storage.close(file);
        storage.sync(&sluice_core::SyncTarget::File(path.into()));
    });
    cluster.crash(at, CrashLoss::LoseUnsynced);
}

/// A follower left behind comes back from a crash with its last batch in
/// the epoch its next leader is about to lead in: recovery keeps the
/// batch (its epoch field lies outside the batch CRC). Its fetches name
/// that epoch, which the leader has, from a later offset on, so the leader
/// sends the batches of the older epoch that follow the follower's end,
/// and the follower refuses them. It cuts its records of the newer epoch
/// and fetches them again, ending with the leader's log and epochs; it
/// used to refuse them for good.
#[test]
fn a_follower_whose_last_epoch_its_leader_has_only_later_cuts_it_and_catches_up() {
    // No high watermark checkpoint in the run: the follower comes back
    // knowing none above its damaged batch, as it would for a batch it
    // had not synced.
    let mut cluster = formed_with(
        1_000,
        &[
            ("replica.lag.time.max.ms", "2000"),
            ("replica.high.watermark.checkpoint.interval.ms", "3600000"),
        ],
    );
    let client = cluster.connect(IDS[0]);
    assert_eq!(create(&mut cluster, client, 3, "1"), 0);
    cluster.run_until(|c| registration(c, IDS[0]).is_some_and(|r| r.leader >= 0));
    let first = registration(&cluster, IDS[0]).expect("registered");
    let leader = NodeId(first.leader);
    let (follower, other) = {
        let others: Vec<NodeId> = IDS.iter().copied().filter(|&id| id != leader).collect();
        (others[0], others[1])
    };
    cluster.run_until(|c| c.node(leader).broker().topic_exists(TOPIC));
    let at_leader = cluster.connect(leader);
    for value in ["a", "b"] {
        assert_eq!(produce_acks_one(&mut cluster, at_leader, value), 0);
    }
    cluster.run_until(|c| IDS.iter().all(|&id| log_end(c, id) == 2));
    // The follower falls behind and leaves the ISR.
    cluster.cut(leader, follower);
    for value in ["c", "d"] {
        assert_eq!(produce_acks_one(&mut cluster, at_leader, value), 0);
    }
    cluster.run_until(|c| {
        registration(c, other).is_some_and(|r| !r.isr.contains(&follower.0))
            && log_end(c, other) == 4
    });
    // Its last batch comes back in the next leader epoch.
    let next_epoch = first.leader_epoch + 1;
    damage_epoch_and_crash(&mut cluster, follower, 1, next_epoch);
    cluster.run_until(|c| log_end(c, follower) >= 0);
    assert_eq!(log_end(&cluster, follower), 2);
    assert_eq!(
        epochs(&cluster, follower),
        [(first.leader_epoch, 0), (next_epoch, 1)]
    );
    // The leader is lost; the other replica leads in that epoch, from
    // offset 4.
    cluster.cut(leader, other);
    cluster.run_until(|c| registration(c, other).is_some_and(|r| r.leader == other.0));
    assert_eq!(
        registration(&cluster, other).map(|r| r.leader_epoch),
        Some(next_epoch)
    );
    let at_other = cluster.connect(other);
    let mut tries = 0;
    while produce_acks_one(&mut cluster, at_other, "e") != 0 {
        tries += 1;
        assert!(tries < 100, "the new leader never takes writes");
        cluster.run_for(100);
    }
    assert_eq!(
        epochs(&cluster, other),
        [(first.leader_epoch, 0), (next_epoch, 4)]
    );
    cluster.run_until(|c| log_end(c, follower) == 5 && epochs(c, follower) == epochs(c, other));
}
