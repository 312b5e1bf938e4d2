//! A fault campaign for replicated partitions: N real nodes (every one a
//! voter and a broker) on the in-process `Cluster`, a topic of two
//! partitions with three replicas and `min.insync.replicas=2`, producers
//! at acks=all sending to whichever broker the metadata names leader, and
//! a consumer per partition reading from the leader. A seed draws crashes
//! (unsynced writes lost or torn), links between brokers cut and healed
//! (clients still reach every broker: an isolated leader keeps taking
//! produces), wall-clock jumps and slow disks; then every fault heals and
//! the replicas must converge.
//!
//! Checked after every step:
//! - `[one-leader-per-epoch]`: one broker leads a partition in an epoch;
//! - `[epochs-monotonic]`: a broker's leader epoch of a partition never
//!   moves back (across its restarts too);
//! - `[hw-within-isr]`: a leader's high watermark is never above the synced
//!   log end of a member of its ISR;
//! - `[hw-frozen-below-min-isr]`: a leader's high watermark does not move
//!   while its ISR is below `min.insync.replicas`;
//! - `[isr-valid]`: the committed ISR is never empty, stays within the
//!   replicas and holds the leader;
//! - `[acked-unique]`: no offset is acknowledged for two records.
//!
//! And once healed and converged (one leader per partition, every replica
//! in the ISR with the leader's log end): `[acked-kept]` every acknowledged
//! record is at its offset in the leader's log; `[read-kept]` every record
//! a consumer read is still there; `[replicas-agree]` every replica holds
//! the same batches.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{build_batch, decode_records, headers_in};
use sluice_core::replication::Role;
use sluice_core::rng::Rng;
use sluice_core::NodeId;

use crate::cluster::{ClientId, Cluster, ClusterConfig};
use crate::quorum::{draw_fault, quorum_broker_config, Drawn};

pub const TOPIC: &str = "chaos";
const PARTITIONS: i32 = 2;
const MIN_INSYNC: usize = 2;
/// Simulated time with faults.
pub const CHAOS_MS: i64 = 12_000;
/// After the faults heal, the replicas must have converged within this.
pub const HEALED_CONVERGENCE_MS: i64 = 40_000;
const SLOW_SYNC_MS_MAX: i64 = 200;
const PRODUCE_INTERVAL_MS: i64 = 10;
const CONSUME_INTERVAL_MS: i64 = 50;
/// Produces one client may have unanswered before the producer waits.
const IN_FLIGHT_MAX: usize = 16;
const STEPS_MAX: u64 = 3_000_000;
const REPLICA_LAG_MS: i64 = 1_500;
/// A broker's session and heartbeat in the campaign.
const SESSION_TIMEOUT_MS: i64 = 2_000;
const HEARTBEAT_INTERVAL_MS: i64 = 500;

/// One run's settings.
#[derive(Debug, Clone)]
pub struct ReplicationRun {
    pub seed: u64,
    pub nodes: i32,
    /// Extra broker config pairs (a mutation, under the feature).
    pub broker: Vec<(String, String)>,
    pub faults: bool,
}

/// What a run saw, for the sweep's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    pub acknowledged: usize,
    pub read: usize,
    pub leader_epochs: usize,
    pub crashes: u64,
    pub cuts: u64,
    pub steps: u64,
    pub convergence_ms: i64,
}

#[derive(Default)]
struct Checker {
    /// (partition, epoch) -> the broker that led it.
    leaders: BTreeMap<(i32, i32), NodeId>,
    /// (node, partition) -> the largest leader epoch it acted in.
    epochs: BTreeMap<(NodeId, i32), i32>,
    /// (node, partition) -> its high watermark as leader, and in which epoch.
    high_watermarks: BTreeMap<(NodeId, i32), (i32, i64)>,
    /// partition -> offset -> value acknowledged there.
    acked: BTreeMap<i32, BTreeMap<i64, String>>,
    /// partition -> offset -> value a consumer read.
    read: BTreeMap<i32, BTreeMap<i64, String>>,
}

impl Checker {
    fn check(&mut self, cluster: &Cluster, nodes: &[NodeId]) -> Result<(), String> {
        let at = cluster.now_ms();
        for &id in nodes {
            let broker = cluster.node(id).broker();
            for partition in 0..PARTITIONS {
                let Some(held) = broker.topics.partition(TOPIC, partition) else {
                    continue;
                };
                if let Some(r) = broker.registration(TOPIC, partition) {
                    if r.isr.is_empty()
                        || r.isr.iter().any(|m| !r.replicas.contains(m))
                        || (r.leader >= 0 && !r.isr.contains(&r.leader))
                    {
                        return Err(format!(
                            "[isr-valid] at {at} ms: n{id} sees partition {partition} with leader {} ISR {:?} replicas {:?}",
                            r.leader, r.isr, r.replicas
                        ));
                    }
                }
                let epoch = match &held.role {
                    Role::Leader(l) => l.leader_epoch,
                    Role::Follower(f) => f.leader_epoch,
                    _ => continue,
                };
                let seen = self.epochs.entry((id, partition)).or_insert(epoch);
                if epoch < *seen {
                    return Err(format!(
                        "[epochs-monotonic] at {at} ms: n{id} acts in epoch {epoch} of partition {partition} after epoch {seen}"
                    ));
                }
                *seen = epoch;
                let Role::Leader(leading) = &held.role else {
                    continue;
                };
                let leader = *self.leaders.entry((partition, epoch)).or_insert(id);
                if leader != id {
                    return Err(format!(
                        "[one-leader-per-epoch] at {at} ms: n{id} and n{leader} both lead partition {partition} in epoch {epoch}"
                    ));
                }
                let high_watermark = leading.high_watermark;
                for &member in &leading.isr {
                    // A member restarting has not opened its log yet: what
                    // it synced is on its disk, and it is checked once open.
                    // What it found on disk at its last start is on disk
                    // (a crash keeps only synced writes), though its first
                    // sync since may not have completed yet.
                    let Some(synced) = cluster
                        .node(NodeId(member))
                        .broker()
                        .topics
                        .partition(TOPIC, partition)
                        .map(|p| {
                            p.log
                                .durable_offset()
                                .max(p.opened_end.min(p.log.log_end_offset()))
                        })
                    else {
                        continue;
                    };
                    if synced < high_watermark {
                        return Err(format!(
                            "[hw-within-isr] at {at} ms: n{id} leads partition {partition} with high watermark {high_watermark}, above ISR member n{member}'s synced end {synced}"
                        ));
                    }
                }
                let before = self
                    .high_watermarks
                    .insert((id, partition), (epoch, high_watermark));
                if let Some((before_epoch, before)) = before {
                    let moved = before_epoch == epoch && high_watermark > before;
                    if moved && leading.isr_size_at_last_move < MIN_INSYNC {
                        return Err(format!(
                            "[hw-frozen-below-min-isr] at {at} ms: n{id}'s high watermark of partition {partition} moved {before} -> {high_watermark} with {} in its ISR",
                            leading.isr_size_at_last_move
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn acknowledge(
        &mut self,
        at: i64,
        partition: i32,
        offset: i64,
        value: String,
    ) -> Result<(), String> {
        match self.acked.entry(partition).or_default().insert(offset, value.clone()) {
            Some(other) if other != value => Err(format!(
                "[acked-unique] at {at} ms: offset {offset} of partition {partition} acknowledged for {other} and then {value}"
            )),
            _ => Ok(()),
        }
    }
}

/// A produce or fetch waiting for its answer.
#[derive(Debug, Clone)]
enum Pending {
    Produce { partition: i32, value: String },
    Fetch { partition: i32 },
}

struct Driver {
    nodes: Vec<NodeId>,
    clients: BTreeMap<NodeId, ClientId>,
    pending: BTreeMap<(ClientId, i32), Pending>,
    produced: u64,
    /// partition -> the next offset the consumer reads.
    positions: BTreeMap<i32, i64>,
}

impl Driver {
    /// The broker the freshest metadata names leader of a partition.
    fn leader(cluster: &Cluster, nodes: &[NodeId], partition: i32) -> Option<NodeId> {
        nodes
            .iter()
            .filter_map(|&id| cluster.node(id).broker().registration(TOPIC, partition))
            .max_by_key(|r| r.leader_epoch)
            .filter(|r| r.leader >= 0)
            .map(|r| NodeId(r.leader))
    }

    fn client(&mut self, cluster: &mut Cluster, id: NodeId) -> Option<ClientId> {
        if let Some(&client) = self.clients.get(&id) {
            if cluster.is_connected(client) {
                return Some(client);
            }
            self.pending.retain(|(c, _), _| *c != client);
        }
        if !cluster.is_ready(id) {
            return None;
        }
        let client = cluster.connect(id);
        self.clients.insert(id, client);
        Some(client)
    }

    fn in_flight(&self, client: ClientId) -> usize {
        self.pending.keys().filter(|(c, _)| *c == client).count()
    }

    fn produce(&mut self, cluster: &mut Cluster) {
        for partition in 0..PARTITIONS {
            let Some(leader) = Self::leader(cluster, &self.nodes, partition) else {
                continue;
            };
            let Some(client) = self.client(cluster, leader) else {
                continue;
            };
            if self.in_flight(client) >= IN_FLIGHT_MAX {
                continue;
            }
            self.produced += 1;
            let value = format!("v{}", self.produced);
            let records = Bytes::from(build_batch(
                cluster.now_ms(),
                &[(None, Some(value.as_bytes()), vec![], 0)],
            ));
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(records)),
                    ])]);
            let correlation = cluster.send(client, ApiKey::Produce, 9, &request);
            self.pending
                .insert((client, correlation), Pending::Produce { partition, value });
        }
    }

    fn consume(&mut self, cluster: &mut Cluster) {
        for partition in 0..PARTITIONS {
            let Some(leader) = Self::leader(cluster, &self.nodes, partition) else {
                continue;
            };
            let Some(client) = self.client(cluster, leader) else {
                continue;
            };
            let waiting = self.pending.iter().any(|((c, _), p)| {
                *c == client && matches!(p, Pending::Fetch { partition: q } if *q == partition)
            });
            if waiting {
                continue;
            }
            let request = fetch_request(
                partition,
                self.positions.get(&partition).copied().unwrap_or(0),
            );
            let correlation = cluster.send(client, ApiKey::Fetch, 11, &request);
            self.pending
                .insert((client, correlation), Pending::Fetch { partition });
        }
    }

    /// Takes every answer that arrived.
    fn collect(&mut self, cluster: &mut Cluster, checker: &mut Checker) -> Result<(), String> {
        let arrived: Vec<((ClientId, i32), Pending)> = self
            .pending
            .iter()
            .filter(|((client, correlation), _)| cluster.has_response(*client, *correlation))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((client, correlation), pending) in arrived {
            self.pending.remove(&(client, correlation));
            match pending {
                Pending::Produce { partition, value } => {
                    let response: ProduceResponse = cluster
                        .take_response(client, ApiKey::Produce, 9, correlation)
                        .expect("arrived");
                    let p = &response.responses[0].partition_responses[0];
                    if p.error_code == 0 {
                        checker.acknowledge(cluster.now_ms(), partition, p.base_offset, value)?;
                    }
                }
                Pending::Fetch { partition } => {
                    let response: FetchResponse = cluster
                        .take_response(client, ApiKey::Fetch, 11, correlation)
                        .expect("arrived");
                    let p = &response.responses[0].partitions[0];
                    if p.error_code != 0 {
                        continue;
                    }
                    let position = self.positions.entry(partition).or_insert(0);
                    for (offset, value) in values(&p.records.clone().unwrap_or_default()) {
                        if offset >= *position {
                            checker
                                .read
                                .entry(partition)
                                .or_default()
                                .insert(offset, value);
                            *position = offset + 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn fetch_request(partition: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

/// Each record's offset and value in fetched batches.
fn values(records: &[u8]) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for (_, range) in headers_in(records) {
        let Ok(decoded) = decode_records(&records[range]) else {
            continue;
        };
        for record in decoded {
            let value = record.value.unwrap_or_default();
            out.push((record.offset, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    out
}

/// Every batch of a replica's log: (base offset, leader epoch, CRC).
fn batches(cluster: &mut Cluster, id: NodeId, partition: i32) -> Vec<(i64, i32, u32)> {
    cluster.input(id, |node, _| {
        let Some(end) = node
            .broker()
            .topics
            .partition(TOPIC, partition)
            .map(|p| p.log.log_end_offset())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut offset = node
            .broker()
            .topics
            .partition(TOPIC, partition)
            .map_or(0, |p| p.log.log_start_offset());
        while offset < end {
            let bytes = node
                .read_log(TOPIC, partition, offset, end, 1 << 20)
                .expect("a replica's log reads");
            let before = offset;
            for (header, _) in headers_in(&bytes) {
                out.push((
                    header.base_offset,
                    header.partition_leader_epoch,
                    header.crc,
                ));
                offset = header.last_offset() + 1;
            }
            if offset == before {
                break;
            }
        }
        out
    })
}

/// Runs one seed; the first violation, with the seed, on failure.
pub fn run_replication(run: &ReplicationRun) -> Result<ReplicationStats, String> {
    let fail = |why: String| format!("replication seed {} ({} nodes): {why}", run.seed, run.nodes);
    let mut config = ClusterConfig::new(run.seed, run.nodes);
    config.broker = quorum_broker_config(run.nodes);
    // Followers behind for a second and a half leave the ISR, so cuts shrink
    // and heals grow it within the run.
    config
        .broker
        .push(("replica.lag.time.max.ms".into(), REPLICA_LAG_MS.to_string()));
    // Brokers cut off from the controller for two seconds are fenced, so a
    // cut-off leader loses its partitions within a run (Kafka's default is
    // nine seconds, longer than most cuts drawn here).
    config.broker.extend([
        (
            "broker.session.timeout.ms".to_string(),
            SESSION_TIMEOUT_MS.to_string(),
        ),
        (
            "broker.heartbeat.interval.ms".to_string(),
            HEARTBEAT_INTERVAL_MS.to_string(),
        ),
    ]);
    config.broker.extend(run.broker.iter().cloned());
    config.steps_max = STEPS_MAX;
    if run.seed.is_multiple_of(3) {
        config.sync_latency_ms_max = SLOW_SYNC_MS_MAX;
    }
    let nodes: Vec<NodeId> = (1..=run.nodes).map(NodeId).collect();
    let mut cluster = Cluster::new(config);
    let mut rng = Rng::from_seed(run.seed ^ 0x7265_706c_6963_6173);
    for (i, &a) in nodes.iter().enumerate() {
        for &b in &nodes[i + 1..] {
            cluster.link_up(a, b);
        }
    }
    cluster.run_until(|c| {
        nodes.iter().all(|&id| {
            c.node(id).is_unfenced() && c.node(id).broker().live_brokers().len() == nodes.len()
        })
    });
    create_topic(&mut cluster, nodes[0]);
    cluster.run_until(|c| {
        nodes.iter().all(|&id| {
            (0..PARTITIONS).all(|p| {
                c.node(id)
                    .broker()
                    .registration(TOPIC, p)
                    .is_some_and(|r| r.isr.len() == 3)
            })
        })
    });
    let mut checker = Checker::default();
    let mut driver = Driver {
        nodes: nodes.clone(),
        clients: BTreeMap::new(),
        pending: BTreeMap::new(),
        produced: 0,
        positions: BTreeMap::new(),
    };
    let mut stats = ReplicationStats::default();
    let start = cluster.now_ms();
    let chaos_end = start + CHAOS_MS;
    let mut cut: Vec<(NodeId, NodeId)> = Vec::new();
    let mut next_fault_ms = start + 500;
    let mut next_produce_ms = start;
    let mut next_consume_ms = start;
    while cluster.now_ms() < chaos_end {
        if run.faults && cluster.now_ms() >= next_fault_ms {
            // Heals draw twice as often as in the quorum's campaign.
            match draw_fault(&mut cluster, &mut rng, &nodes, &mut cut, 6) {
                Some(Drawn::Crash) => stats.crashes += 1,
                Some(Drawn::Cut) => stats.cuts += 1,
                None => {}
            }
            next_fault_ms = cluster.now_ms() + 200 + (rng.next_u64() % 1_500) as i64;
        }
        if cluster.now_ms() >= next_produce_ms {
            driver.produce(&mut cluster);
            next_produce_ms = cluster.now_ms() + PRODUCE_INTERVAL_MS;
        }
        if cluster.now_ms() >= next_consume_ms {
            driver.consume(&mut cluster);
            next_consume_ms = cluster.now_ms() + CONSUME_INTERVAL_MS;
        }
        let fault_ms = if run.faults { next_fault_ms } else { chaos_end };
        let until = next_produce_ms
            .min(next_consume_ms)
            .min(fault_ms)
            .min(chaos_end);
        cluster.step_until(until);
        stats.steps += 1;
        if stats.steps > STEPS_MAX {
            return Err(fail(format!("still running after {STEPS_MAX} steps")));
        }
        driver.collect(&mut cluster, &mut checker).map_err(fail)?;
        checker.check(&cluster, &nodes).map_err(|why| {
            let events: Vec<&str> = cluster
                .trace()
                .filter(|l| l.contains("crash") || l.contains("cut") || l.contains("link"))
                .collect();
            fail(format!(
                "{why}; {}; events: {events:?}",
                describe(&cluster, &nodes)
            ))
        })?;
    }
    for (a, b) in cut.drain(..) {
        cluster.link_up(a, b);
    }
    let healed_ms = cluster.now_ms();
    loop {
        if converged(&cluster, &nodes) {
            break;
        }
        if cluster.now_ms() - healed_ms > HEALED_CONVERGENCE_MS {
            return Err(fail(format!(
                "[converges] the replicas did not converge within {HEALED_CONVERGENCE_MS} ms of the heal: {}",
                describe(&cluster, &nodes)
            )));
        }
        if !cluster.step() {
            return Err(fail("the cluster went idle".into()));
        }
        stats.steps += 1;
        driver.collect(&mut cluster, &mut checker).map_err(fail)?;
        checker
            .check(&cluster, &nodes)
            .map_err(|why| fail(format!("{why}; {}", describe(&cluster, &nodes))))?;
    }
    stats.convergence_ms = cluster.now_ms() - healed_ms;
    for partition in 0..PARTITIONS {
        let leader = Driver::leader(&cluster, &nodes, partition).expect("converged");
        let client = cluster.connect(leader);
        let mut log: BTreeMap<i64, String> = BTreeMap::new();
        loop {
            let next = log.keys().next_back().map_or(0, |o| o + 1);
            let response: FetchResponse = cluster
                .request(client, ApiKey::Fetch, 11, &fetch_request(partition, next))
                .ok_or_else(|| fail("the final read lost its connection".into()))?;
            let p = &response.responses[0].partitions[0];
            let read = values(&p.records.clone().unwrap_or_default());
            if p.error_code != 0 || read.is_empty() {
                break;
            }
            log.extend(read);
        }
        // Both checkers report: a record lost after it was acknowledged
        // and read breaks both promises, and each is named.
        let mut broken = Vec::new();
        for (what, records) in [
            ("acked-kept", checker.acked.get(&partition)),
            ("read-kept", checker.read.get(&partition)),
        ] {
            let gone = records
                .into_iter()
                .flatten()
                .find(|&(offset, value)| log.get(offset) != Some(value));
            if let Some((offset, value)) = gone {
                broken.push(format!(
                    "[{what}] partition {partition}: {value} at offset {offset} is gone (now {:?})",
                    log.get(offset)
                ));
            }
        }
        if !broken.is_empty() {
            return Err(fail(format!(
                "{}; {}",
                broken.join("; "),
                describe(&cluster, &nodes)
            )));
        }
        let reference = batches(&mut cluster, leader, partition);
        let replicas: Vec<NodeId> = cluster
            .node(leader)
            .broker()
            .registration(TOPIC, partition)
            .map(|r| r.replicas.iter().map(|&id| NodeId(id)).collect())
            .unwrap_or_default();
        for id in replicas {
            let replica = batches(&mut cluster, id, partition);
            if replica != reference {
                let at = replica
                    .iter()
                    .zip(&reference)
                    .position(|(a, b)| a != b)
                    .unwrap_or(replica.len().min(reference.len()));
                return Err(fail(format!(
                    "[replicas-agree] partition {partition}: n{id} and the leader n{leader} differ at batch {at}: {:?} vs {:?}",
                    replica.get(at),
                    reference.get(at)
                )));
            }
        }
    }
    stats.acknowledged = checker.acked.values().map(BTreeMap::len).sum();
    stats.read = checker.read.values().map(BTreeMap::len).sum();
    stats.leader_epochs = checker.leaders.len();
    Ok(stats)
}

fn create_topic(cluster: &mut Cluster, at: NodeId) {
    let client = cluster.connect(at);
    let config = create_topics_request::CreatableTopicConfig::default()
        .with_name(StrBytes::from_static_str("min.insync.replicas"))
        .with_value(Some(StrBytes::from_string(MIN_INSYNC.to_string())));
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_num_partitions(PARTITIONS)
            .with_replication_factor(3)
            .with_configs(vec![config])])
        .with_timeout_ms(10_000);
    loop {
        let response: CreateTopicsResponse = cluster
            .request(client, ApiKey::CreateTopics, 7, &request)
            .expect("create answered");
        if response.topics[0].error_code == 0 {
            return;
        }
        cluster.run_for(100);
    }
}

/// Every broker unfenced; each partition led, its ISR all its replicas,
/// every replica synced to the leader's log end, which is under the high
/// watermark.
fn converged(cluster: &Cluster, nodes: &[NodeId]) -> bool {
    if !nodes.iter().all(|&id| cluster.node(id).is_unfenced()) {
        return false;
    }
    (0..PARTITIONS).all(|partition| {
        let Some(leader) = Driver::leader(cluster, nodes, partition) else {
            return false;
        };
        let leader_broker = cluster.node(leader).broker();
        let Some(held) = leader_broker.topics.partition(TOPIC, partition) else {
            return false;
        };
        let Role::Leader(leading) = &held.role else {
            return false;
        };
        let end = held.log.log_end_offset();
        leading.isr.len() == leading.replicas.len()
            && leading.high_watermark == end
            && leading.replicas.iter().all(|&r| {
                cluster
                    .node(NodeId(r))
                    .broker()
                    .topics
                    .partition(TOPIC, partition)
                    .is_some_and(|p| p.log.durable_offset() == end && p.log.log_end_offset() == end)
            })
    })
}

fn describe(cluster: &Cluster, nodes: &[NodeId]) -> String {
    let mut parts = Vec::new();
    for &id in nodes {
        let broker = cluster.node(id).broker();
        let roles: Vec<String> = (0..PARTITIONS)
            .map(|p| match broker.topics.partition(TOPIC, p) {
                Some(held) => {
                    let role = match &held.role {
                        Role::Leader(l) => format!(
                            "leader e{} isr {:?} hw {} followers {:?}",
                            l.leader_epoch,
                            l.isr,
                            l.high_watermark,
                            l.followers
                                .iter()
                                .map(|(id, p)| (*id, p.end_offset))
                                .collect::<Vec<_>>()
                        ),
                        Role::Follower(f) => {
                            format!("follower of n{} e{}", f.leader, f.leader_epoch)
                        }
                        Role::Offline { leader_epoch } => format!("offline e{leader_epoch}"),
                        Role::Alone => "alone".into(),
                    };
                    let epochs: Vec<(i32, i64)> = held
                        .log
                        .epochs()
                        .entries()
                        .iter()
                        .map(|e| (e.epoch, e.start_offset))
                        .collect();
                    format!(
                        "p{p} {role} end {} synced {} epochs {epochs:?}",
                        held.log.log_end_offset(),
                        held.log.durable_offset()
                    )
                }
                None => format!("p{p} none"),
            })
            .collect();
        parts.push(format!(
            "n{id} unfenced {} [{}]",
            cluster.node(id).is_unfenced(),
            roles.join("; ")
        ));
    }
    parts.join(" | ")
}

/// Runs seeds `start..start + count` of `nodes` nodes; the stats, or the
/// first failure.
pub fn sweep_replication(
    nodes: i32,
    start: u64,
    count: u64,
) -> Result<Vec<ReplicationStats>, String> {
    (start..start + count)
        .map(|seed| {
            run_replication(&ReplicationRun {
                seed,
                nodes,
                broker: Vec::new(),
                faults: true,
            })
        })
        .collect()
}
