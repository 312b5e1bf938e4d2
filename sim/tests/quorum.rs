//! The controller quorum on the in-process harness: real nodes electing
//! and replicating the metadata log in Kafka's frames, with and without
//! faults (see `sluice_sim::quorum` for what is checked), and
//! DescribeQuorum asked of its leader and its followers.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::raft::Role;
use sluice_core::NodeId;
use sluice_sim::cluster::WALL_EPOCH_MS;
use sluice_sim::quorum::{
    quorum_broker_config, run_figure_eight, run_quorum, sweep_quorum, QuorumRun,
};
use sluice_sim::{Cluster, ClusterConfig};

#[test]
fn three_voters_elect_one_leader_and_commit_without_faults() {
    let stats = run_quorum(&QuorumRun {
        seed: 1,
        voters: 3,
        broker: Vec::new(),
        faults: false,
    })
    .unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(stats.epochs, 1, "one election, no faults: {stats:?}");
    assert!(stats.committed >= 1, "the leader's first entry commits");
    assert_eq!(stats.convergence_ms, 0, "already converged at the heal");
}

#[test]
fn three_voters_stay_safe_and_converge_under_faults() {
    let stats = sweep_quorum(3, 1_000, 40).unwrap_or_else(|why| panic!("{why}"));
    let crashes: u64 = stats.iter().map(|s| s.crashes).sum();
    let epochs: usize = stats.iter().map(|s| s.epochs).sum();
    assert!(crashes >= 40, "the faults ran: {crashes} crashes");
    assert!(epochs > stats.len(), "leaders changed: {epochs} epochs");
}

#[test]
fn five_voters_stay_safe_and_converge_under_faults() {
    sweep_quorum(5, 2_000, 15).unwrap_or_else(|why| panic!("{why}"));
}

/// Raft's Figure 8, scripted (`run_figure_eight`): entries of an older
/// epoch that reach a majority only while a later leader catches them up
/// are not committed by counting, so the leader that overwrites them
/// afterwards loses nothing committed, and the quorum converges.
#[test]
fn an_older_epoch_on_a_majority_is_not_committed_by_counting() {
    for seed in 1..=3 {
        let run = run_figure_eight(seed, &[]).unwrap_or_else(|why| panic!("{why}"));
        assert!(run.stats.epochs >= 4, "seed {seed}: four leaders: {run:?}");
        assert!(
            run.high_watermark_at_cut <= run.older_offset_first,
            "seed {seed}: the older entries stayed uncommitted: {run:?}"
        );
    }
}

#[test]
#[ignore]
fn print_stats() {
    for stats in sweep_quorum(3, 1_000, 10).unwrap() {
        println!("{stats:?}");
    }
}

// ---- DescribeQuorum on three voters ----

const DESCRIBE_QUORUM_VERSION: i16 = 2;

fn describe_quorum_request() -> DescribeQuorumRequest {
    let partition = describe_quorum_request::PartitionData::default().with_partition_index(0);
    let topic = describe_quorum_request::TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![partition]);
    DescribeQuorumRequest::default().with_topics(vec![topic])
}

/// Asks `node` DescribeQuorum over a fresh client connection; its one
/// partition's answer.
fn describe_quorum(cluster: &mut Cluster, node: NodeId) -> describe_quorum_response::PartitionData {
    let client = cluster.connect(node);
    let response: DescribeQuorumResponse = cluster
        .request(
            client,
            ApiKey::DescribeQuorum,
            DESCRIBE_QUORUM_VERSION,
            &describe_quorum_request(),
        )
        .expect("DescribeQuorum answered");
    assert_eq!(response.error_code, 0);
    assert_eq!(response.topics.len(), 1);
    assert_eq!(response.topics[0].topic_name.as_str(), "__cluster_metadata");
    assert_eq!(response.topics[0].partitions.len(), 1);
    response.topics[0].partitions[0].clone()
}

/// The leader among `voters` whose every voter's durable end it knows to
/// be its own: one leader, all caught up.
fn leader_with_all_caught_up(cluster: &Cluster, voters: &[NodeId]) -> Option<NodeId> {
    voters.iter().copied().find(|&id| {
        let Some(replica) = cluster.node(id).quorum().and_then(|q| q.replica()) else {
            return false;
        };
        let end = replica.entries().len() as i64;
        replica
            .voter_progress()
            .is_some_and(|progress| progress.iter().all(|(_, e)| *e == Some(end)))
            && replica.high_watermark() == end
    })
}

#[test]
fn describe_quorum_on_three_voters_lists_them_at_the_leader_and_refuses_elsewhere() {
    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut config = ClusterConfig::new(11, 3);
    config.broker = quorum_broker_config(3);
    let mut cluster = Cluster::new(config);
    for (i, &a) in voters.iter().enumerate() {
        for &b in &voters[i + 1..] {
            cluster.link_up(a, b);
        }
    }
    cluster.run_until(|c| leader_with_all_caught_up(c, &voters).is_some());
    // One more round of fetches, so each follower's times are set.
    cluster.run_for(1_000);
    let leader = leader_with_all_caught_up(&cluster, &voters).expect("still leading");
    let replica = cluster
        .node(leader)
        .quorum()
        .and_then(|q| q.replica())
        .expect("started");
    let (epoch, end) = (replica.leader_epoch(), replica.entries().len() as i64);
    let wall_asked_ms = WALL_EPOCH_MS + cluster.now_ms();
    let answer = describe_quorum(&mut cluster, leader);
    let wall_answered_ms = WALL_EPOCH_MS + cluster.now_ms();
    assert_eq!(answer.error_code, 0);
    assert_eq!(answer.leader_id, BrokerId(leader.0));
    assert_eq!(answer.leader_epoch, epoch);
    assert_eq!(answer.high_watermark, end);
    assert!(answer.observers.is_empty());
    let ids: Vec<i32> = answer
        .current_voters
        .iter()
        .map(|v| v.replica_id.0)
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    for voter in &answer.current_voters {
        assert_eq!(voter.log_end_offset, end, "voter {}", voter.replica_id.0);
        let (fetched, caught_up) = (voter.last_fetch_timestamp, voter.last_caught_up_timestamp);
        assert!(
            (WALL_EPOCH_MS..=wall_answered_ms).contains(&caught_up) && caught_up <= fetched,
            "voter {}: fetched {fetched}, caught up {caught_up}, answered {wall_answered_ms}",
            voter.replica_id.0
        );
        if voter.replica_id.0 == leader.0 {
            // The leader shows itself caught up at the time it answered.
            assert_eq!(fetched, caught_up);
            assert!((wall_asked_ms..=wall_answered_ms).contains(&fetched));
        } else {
            // A follower fetches at least every FETCH_WAIT_MS_MAX while
            // caught up, so the leader saw it within the last second.
            assert!(
                fetched >= wall_asked_ms - 1_000,
                "voter {}",
                voter.replica_id.0
            );
        }
    }

    for &follower in voters.iter().filter(|&&id| id != leader) {
        let refused = describe_quorum(&mut cluster, follower);
        // Kafka names no leader here: the field keeps its default.
        assert_eq!(
            refused,
            describe_quorum_response::PartitionData::default()
                .with_error_code(ResponseError::NotLeaderOrFollower.code()),
            "n{follower}"
        );
    }

    // Cut the leader off: the other two elect a leader of a later epoch,
    // which has heard nothing from the old one in its epoch.
    for &other in voters.iter().filter(|&&id| id != leader) {
        cluster.cut(leader, other);
    }
    let others: Vec<NodeId> = voters.iter().copied().filter(|&id| id != leader).collect();
    cluster.run_until(|c| {
        others.iter().any(|&id| {
            c.node(id)
                .quorum()
                .and_then(|q| q.replica())
                .is_some_and(|r| {
                    r.role() == Role::Leader && r.leader_epoch() > epoch && r.high_watermark() > end
                })
        })
    });
    let new_leader = others
        .iter()
        .copied()
        .find(|&id| cluster.node(id).quorum().and_then(|q| q.role()) == Some(Role::Leader))
        .expect("a new leader");
    let answer = describe_quorum(&mut cluster, new_leader);
    assert_eq!(answer.leader_id, BrokerId(new_leader.0));
    assert!(answer.leader_epoch > epoch);
    let old = answer
        .current_voters
        .iter()
        .find(|v| v.replica_id.0 == leader.0)
        .expect("the old leader is still a voter");
    assert_eq!(
        (
            old.log_end_offset,
            old.last_fetch_timestamp,
            old.last_caught_up_timestamp
        ),
        (-1, -1, -1),
        "not heard from in the new epoch"
    );
}

/// The active controller fences a broker it has not heard from for
/// `broker.session.timeout.ms`, not before, and unfences it once it is
/// back and caught up.
#[test]
fn a_silent_broker_is_fenced_after_its_session_and_unfenced_when_back() {
    use sluice_core::raft::Role;
    use sluice_core::NodeId;
    use sluice_sim::{Cluster, ClusterConfig};

    const SESSION_MS: i64 = 9_000;
    let mut config = ClusterConfig::new(7, 3);
    config.broker = sluice_sim::quorum::quorum_broker_config(3);
    let mut cluster = Cluster::new(config);
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        cluster.link_up(ids[a], ids[b]);
    }
    let leader_of = |cluster: &Cluster| {
        ids.iter()
            .copied()
            .find(|&id| cluster.node(id).quorum().and_then(|q| q.role()) == Some(Role::Leader))
    };
    let unfenced_on = |cluster: &Cluster, at: NodeId| -> Vec<i32> {
        let brokers = cluster.node(at).broker().live_brokers();
        brokers.iter().map(|b| b.id).collect()
    };
    cluster.run_until(|c| {
        leader_of(c).is_some_and(|leader| unfenced_on(c, leader) == [1, 2, 3])
            && ids.iter().all(|&id| c.node(id).is_unfenced())
    });
    let leader = leader_of(&cluster).expect("a leader");
    let silent = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let others: Vec<NodeId> = ids.iter().copied().filter(|&id| id != silent).collect();
    for &other in &others {
        cluster.cut(silent, other);
    }
    let cut_at = cluster.now_ms();
    // Its last heartbeat was at most one interval before the cut: it stays
    // unfenced until a whole session after that.
    cluster.run_for(SESSION_MS - 2_000 - 100);
    assert_eq!(
        leader_of(&cluster),
        Some(leader),
        "the majority keeps its leader"
    );
    assert!(
        unfenced_on(&cluster, leader).contains(&silent.0),
        "fenced {} ms after the cut, before its session ended",
        cluster.now_ms() - cut_at
    );
    cluster.run_until(|c| !unfenced_on(c, leader).contains(&silent.0));
    let fenced_after = cluster.now_ms() - cut_at;
    assert!(
        (SESSION_MS - 2_000..=SESSION_MS + 1_000).contains(&fenced_after),
        "fenced {fenced_after} ms after the cut"
    );
    // The other survivor learns it from the committed record too.
    let survivor = *others.iter().find(|&&id| id != leader).expect("another");
    cluster.run_until(|c| !unfenced_on(c, survivor).contains(&silent.0));
    // DescribeCluster v2 lists it, flagged, when asked for fenced brokers.
    let client = cluster.connect(survivor);
    for include in [false, true] {
        let request = kafka_protocol::messages::DescribeClusterRequest::default()
            .with_endpoint_type(1)
            .with_include_fenced_brokers(include);
        let answer: kafka_protocol::messages::DescribeClusterResponse = cluster
            .request(
                client,
                kafka_protocol::messages::ApiKey::DescribeCluster,
                2,
                &request,
            )
            .expect("answered");
        let listed: Vec<(i32, bool)> = answer
            .brokers
            .iter()
            .map(|b| (b.broker_id.0, b.is_fenced))
            .collect();
        assert_eq!(
            listed.iter().any(|&(id, fenced)| id == silent.0 && fenced),
            include,
            "{listed:?}"
        );
        assert_eq!(listed.len(), if include { 3 } else { 2 });
    }
    for &other in &others {
        cluster.link_up(silent, other);
    }
    cluster
        .run_until(|c| c.node(silent).is_unfenced() && unfenced_on(c, leader).contains(&silent.0));
}

/// Check-quorum: a leader cut off from every other voter stops leading
/// once no majority has fetched from it for 1.5 fetch timeouts, while the
/// others elect a new leader; healed, the cluster has one leader again.
#[test]
fn a_leader_cut_off_from_the_majority_resigns() {
    use sluice_core::raft::Role;
    use sluice_core::NodeId;
    use sluice_sim::{Cluster, ClusterConfig};

    const CHECK_QUORUM_MS: i64 = 3_000;
    let mut config = ClusterConfig::new(21, 3);
    config.broker = sluice_sim::quorum::quorum_broker_config(3);
    let mut cluster = Cluster::new(config);
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        cluster.link_up(ids[a], ids[b]);
    }
    let role = |cluster: &Cluster, id: NodeId| cluster.node(id).quorum().and_then(|q| q.role());
    cluster.run_until(|c| ids.iter().any(|&id| role(c, id) == Some(Role::Leader)));
    cluster.run_for(1_000);
    let old = *ids
        .iter()
        .find(|&&id| role(&cluster, id) == Some(Role::Leader))
        .expect("a leader");
    for other in ids.iter().copied().filter(|&id| id != old) {
        cluster.cut(old, other);
    }
    let cut_at = cluster.now_ms();
    cluster.run_until(|c| role(c, old) != Some(Role::Leader));
    let resigned_after = cluster.now_ms() - cut_at;
    assert!(
        resigned_after <= CHECK_QUORUM_MS + 1_000,
        "still leading {resigned_after} ms after the cut"
    );
    for other in ids.iter().copied().filter(|&id| id != old) {
        cluster.link_up(old, other);
    }
    cluster.run_until(|c| {
        let leaders: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|&id| role(c, id) == Some(Role::Leader))
            .collect();
        leaders.len() == 1
            && ids.iter().all(|&id| {
                c.node(id)
                    .quorum()
                    .and_then(|q| q.replica())
                    .and_then(|r| r.leader_id())
                    == Some(leaders[0])
            })
    });
}
