//! Whole-cluster tests on the in-process `Cluster` harness: peer links and
//! what the nodes learn over them, acknowledged produces surviving crashes
//! at seeded points, and replay of a seed.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{build_batch, decode_records, headers_in};
use sluice_core::image::METADATA_VERSION_LEVEL_WRITTEN;
use sluice_core::metadata_records::MetadataRecord;
use sluice_core::raft::Record;
use sluice_core::wire::versions::SUPPORTED;
use sluice_core::{Channel, NodeId};
use sluice_sim::quorum::{converged, quorum_broker_config};
use sluice_sim::{ClientId, Cluster, ClusterConfig, CrashLoss};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;

fn ready(seed: u64, nodes: i32) -> Cluster {
    ready_with(ClusterConfig::new(seed, nodes))
}

fn ready_with(config: ClusterConfig) -> Cluster {
    let nodes = config.nodes;
    let mut cluster = Cluster::new(config);
    cluster.run_until(|c| (1..=nodes).all(|id| c.is_ready(NodeId(id))));
    cluster
}

fn produce_request(topic: &str, acks: i16, value: &[u8]) -> ProduceRequest {
    let records = Bytes::from(build_batch(0, &[(Some(b"key"), Some(value), vec![], 0)]));
    let data = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(records));
    let topic = produce_request::TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![data]);
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(1000)
        .with_topic_data(vec![topic])
}

/// The values in partition 0 of `topic` from offset 0, read with a fetch
/// that does not wait.
fn read_values(cluster: &mut Cluster, client: ClientId, topic: &str) -> Vec<Vec<u8>> {
    let partition = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    let topic = fetch_request::FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![partition]);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 24)
        .with_topics(vec![topic]);
    let response: FetchResponse = cluster
        .request(client, ApiKey::Fetch, FETCH_VERSION, &request)
        .expect("a fetch answered");
    let partition = &response.responses[0].partitions[0];
    let records = partition.records.clone().unwrap_or_default();
    headers_in(&records)
        .flat_map(|(_, range)| decode_records(&records[range]).expect("valid batches"))
        .map(|record| record.value.expect("a value").to_vec())
        .collect()
}

#[test]
fn a_link_up_teaches_each_node_the_versions_of_the_other_and_a_cut_forgets_them() {
    let mut cluster = ready(7, 2);
    assert!(cluster
        .node(N1)
        .peer_api_versions(N2, Channel::Raft)
        .is_none());
    cluster.link_up(N1, N2);
    cluster.run_until(|c| {
        c.node(N1).peer_api_versions(N2, Channel::Raft).is_some()
            && c.node(N2).peer_api_versions(N1, Channel::Raft).is_some()
    });
    let known = cluster
        .node(N1)
        .peer_api_versions(N2, Channel::Raft)
        .expect("learned");
    let produce = known
        .iter()
        .find(|(key, _, _)| *key == ApiKey::Produce as i16)
        .expect("the peer serves Produce");
    let (_, min, max) = SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == ApiKey::Produce)
        .expect("in the table");
    assert_eq!((produce.1, produce.2), (*min, *max));
    assert_eq!(known.len(), SUPPORTED.len());

    cluster.cut(N1, N2);
    assert!(!cluster.is_link_up(N1, N2));
    assert!(cluster
        .node(N1)
        .peer_api_versions(N2, Channel::Raft)
        .is_none());
    assert!(cluster
        .node(N2)
        .peer_api_versions(N1, Channel::Raft)
        .is_none());

    // Cut again while the questions are in flight: none of them arrives.
    cluster.link_up(N1, N2);
    assert!(cluster.is_link_up(N1, N2));
    cluster.cut(N1, N2);
    let cut_at_ms = cluster.now_ms();
    cluster.run_for(1_000);
    let delivered_after_cut = cluster.trace().filter(|line| {
        let at_ms: i64 = line
            .split(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("stamped");
        at_ms >= cut_at_ms && line.contains(" request ") && line.contains(" <- ")
    });
    assert_eq!(delivered_after_cut.count(), 0);
    assert!(cluster
        .node(N1)
        .peer_api_versions(N2, Channel::Raft)
        .is_none());

    cluster.link_up(N1, N2);
    cluster.run_until(|c| c.node(N1).peer_api_versions(N2, Channel::Raft).is_some());
}

/// One produce (acks=1, to a topic created on the way), a crash of node 1
/// at a seeded time, then a read after restart. Returns whether the
/// produce was acknowledged before the crash, and panics when an
/// acknowledged record is lost or was acknowledged before any sync.
fn produce_then_crash(seed: u64, broker: &[(&str, &str)]) -> bool {
    let mut config = ClusterConfig::new(seed, 2);
    config.broker = (broker.iter())
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let mut cluster = ready_with(config);
    cluster.link_up(N1, N2);
    let client = cluster.connect(N1);
    let syncs_before = cluster.syncs_ok(N1);
    let value = format!("value of seed {seed}");
    let request = produce_request("events", 1, value.as_bytes());
    let correlation = cluster.send(client, ApiKey::Produce, PRODUCE_VERSION, &request);
    // The produce needs a request (1..=5 ms), a sync (2..=20 ms) and a
    // response (1..=5 ms): crash before, during or after.
    let crash_after_ms = (seed * 7919) % 40;
    cluster.run_for(crash_after_ms as i64);
    let response: Option<ProduceResponse> =
        cluster.take_response(client, ApiKey::Produce, PRODUCE_VERSION, correlation);
    let acknowledged =
        response.is_some_and(|r| r.responses[0].partition_responses[0].error_code == 0);
    if acknowledged {
        assert!(
            cluster.syncs_ok(N1) > syncs_before,
            "seed {seed}: acknowledged before a sync"
        );
    }
    let loss = if seed.is_multiple_of(2) {
        CrashLoss::LoseUnsynced
    } else {
        CrashLoss::TearUnsynced
    };
    cluster.crash(N1, loss);
    assert!(!cluster.is_connected(client));
    cluster.run_until(|c| c.is_ready(N1) && c.is_link_up(N1, N2));
    let reader = cluster.connect(N1);
    let values = read_values(&mut cluster, reader, "events");
    if acknowledged {
        assert_eq!(
            values,
            vec![value.into_bytes()],
            "seed {seed}: an acknowledged record is lost"
        );
    }
    acknowledged
}

#[test]
fn an_acknowledged_produce_survives_a_crash_at_any_point() {
    let acknowledged = (0..50u64)
        .filter(|seed| produce_then_crash(*seed, &[]))
        .count();
    // Both sides of the sync were crashed at, or the test shows nothing.
    assert!(
        acknowledged > 0 && acknowledged < 50,
        "{acknowledged} of 50 acknowledged"
    );
}

/// The check above fails on a broker that acknowledges before the sync.
#[cfg(feature = "mutations")]
#[test]
fn the_crash_check_catches_an_acknowledgement_before_the_sync() {
    let mutation = [(sluice_core::config::MUTATION_KEY, "ack-before-sync")];
    let caught = (0..50u64)
        .filter(|seed| {
            let run = std::panic::AssertUnwindSafe(|| produce_then_crash(*seed, &mutation));
            std::panic::catch_unwind(run).is_err()
        })
        .count();
    assert!(caught > 0, "no seed of 50 caught the mutation");
}

/// A small run touching every kind of event: links, produces, a wall
/// clock jump, a cut, a crash, timers.
fn scenario_hash(seed: u64) -> u64 {
    let mut cluster = ready(seed, 3);
    cluster.link_up(N1, N2);
    cluster.link_up(N2, NodeId(3));
    let client = cluster.connect(N2);
    for i in 0..5 {
        let request = produce_request("replayed", 1, format!("v{i}").as_bytes());
        let response: Option<ProduceResponse> =
            cluster.request(client, ApiKey::Produce, PRODUCE_VERSION, &request);
        assert!(response.is_some());
    }
    cluster.jump_wall_clock(NodeId(3), -60_000);
    cluster.cut(N1, N2);
    cluster.crash(N2, CrashLoss::TearUnsynced);
    cluster.link_up(N1, N2);
    cluster.run_for(600_000);
    assert!(cluster.is_link_up(N1, N2) && cluster.is_link_up(N2, NodeId(3)));
    cluster.trace_hash()
}

#[test]
fn a_seed_replays_exactly_and_another_seed_differs() {
    let first = scenario_hash(11);
    assert_eq!(first, scenario_hash(11));
    assert_ne!(first, scenario_hash(12));
}

#[test]
fn a_livelock_fails_instead_of_hanging() {
    let mut config = ClusterConfig::new(3, 1);
    config.steps_max = 50;
    let mut cluster = Cluster::new(config);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cluster.run_until(|_| false);
    }));
    let message = outcome.expect_err("an endless run fails");
    let message = message.downcast_ref::<String>().expect("a formatted panic");
    assert!(
        message.contains("seed 3: still running after 50 steps"),
        "{message}"
    );
}

// ---- metadata.version ----

/// The FeatureLevelRecords of `metadata.version` in a node's metadata log,
/// by offset, with their levels.
fn metadata_version_records(cluster: &Cluster, id: NodeId) -> Vec<(usize, i16)> {
    let replica = cluster
        .node(id)
        .quorum()
        .and_then(|q| q.replica())
        .expect("a started voter");
    replica
        .entries()
        .iter()
        .enumerate()
        .filter_map(|(offset, entry)| match &entry.record {
            Record::Data(bytes) => match MetadataRecord::decode(bytes) {
                Ok(MetadataRecord::FeatureLevel(feature)) if feature.name == "metadata.version" => {
                    Some((offset, feature.feature_level))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn image_metadata_version(cluster: &Cluster, id: NodeId) -> Option<i16> {
    let view = cluster.node(id).broker().cluster.as_ref()?;
    view.image.metadata_version()
}

/// A new cluster's first active controller finalizes metadata.version
/// once, before any other record of its own; every node applies it and
/// ApiVersions names it with its epoch; a new controller after restarts
/// finds it and writes no other.
#[test]
fn a_new_cluster_finalizes_metadata_version_once() {
    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut config = ClusterConfig::new(7, 3);
    config.broker = quorum_broker_config(3);
    let mut cluster = Cluster::new(config);
    cluster.link_up(N1, N2);
    cluster.link_up(N1, NodeId(3));
    cluster.link_up(N2, NodeId(3));
    cluster.run_until(|c| converged(c, &voters));
    let level = METADATA_VERSION_LEVEL_WRITTEN;
    for &id in &voters {
        let records = metadata_version_records(&cluster, id);
        assert_eq!(records.len(), 1, "n{id}: {records:?}");
        assert_eq!(records[0].1, level, "n{id}");
        assert_eq!(image_metadata_version(&cluster, id), Some(level), "n{id}");
    }
    // Right after the first leader's leader-change entry (offset 0).
    let (offset, _) = metadata_version_records(&cluster, N1)[0];
    assert_eq!(offset, 1, "the controller's first record");

    let client = cluster.connect(N2);
    let response: ApiVersionsResponse = cluster
        .request(
            client,
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        )
        .expect("an answer");
    let finalized: Vec<_> = response
        .finalized_features
        .iter()
        .map(|f| (f.name.as_str(), f.min_version_level, f.max_version_level))
        .collect();
    assert_eq!(finalized, [("metadata.version", level, level)]);
    assert!(
        response.finalized_features_epoch >= offset as i64,
        "the epoch is an offset the image applied: {}",
        response.finalized_features_epoch
    );
    let supported: Vec<_> = response
        .supported_features
        .iter()
        .map(|f| (f.name.as_str(), f.min_version, f.max_version))
        .collect();
    assert_eq!(supported, [("metadata.version", 1, level)]);

    // Every node restarts, losing what it had not synced; the quorum
    // elects new leaders, whose controllers find the level committed.
    let epoch_before = leader_epoch(&cluster, &voters);
    for &id in &voters {
        cluster.crash(id, CrashLoss::LoseUnsynced);
        cluster.run_until(|c| converged(c, &voters));
    }
    assert!(leader_epoch(&cluster, &voters) > epoch_before);
    for &id in &voters {
        let records = metadata_version_records(&cluster, id);
        assert_eq!(records, [(offset, level)], "n{id}");
        assert_eq!(image_metadata_version(&cluster, id), Some(level), "n{id}");
    }
}

fn leader_epoch(cluster: &Cluster, voters: &[NodeId]) -> i32 {
    voters
        .iter()
        .filter_map(|&id| cluster.node(id).quorum().and_then(|q| q.replica()))
        .map(|r| r.leader_epoch())
        .max()
        .unwrap_or(0)
}
