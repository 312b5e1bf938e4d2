//! One simulated run: `Spec::nodes` nodes (the real driver and core) on
//! turmoil, each with its own `SimDisk`, kill switch, wall clock and count
//! of starts; client processes running a workload against node 1; the
//! nemesis (`nemesis.rs`) injecting the scenario's faults during the safety
//! phase, then a healed liveness phase that must converge, then the
//! checkers over node 1's disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_core::config::BrokerConfig;
use sluice_core::log::PartitionLog;
use sluice_core::storage::Storage;
use sluice_core::NodeId;
use sluice_driver::{self as driver, Connector, Environment, Listener, PeerStatuses};
use tracing::Instrument;

use crate::check::{self, FinalLogs, Violation};
use crate::disk::{CrashFault, DiskFaults, SimDisk};
use crate::history::History;
use crate::nemesis::{Nemesis, Scheduled};
use crate::trace::{Trace, TraceLayer};
use crate::workload::{self, Workload};

/// The node the clients bootstrap from and the checkers read: node 1.
pub const NODE: &str = "node1";
pub const PORT: u16 = 9092;
/// Simulated wall clock at the start of every run (2026-01-01T00:00:00Z).
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// The host name of node `number` (numbered from 1).
pub fn node_host(number: u32) -> String {
    format!("node{number}")
}

/// Everything a run needs, drawn by a scenario from its seed.
#[derive(Debug, Clone)]
pub struct Spec {
    pub scenario: &'static str,
    pub seed: u64,
    /// Nodes in the cluster, hosts `node1`..; each has its own disk with
    /// the faults of `disk`. They do not talk to each other yet.
    pub nodes: u32,
    pub broker: Vec<(String, String)>,
    pub disk: DiskFaults,
    pub workload: Workload,
    pub faults: Vec<Scheduled>,
    pub safety_ms: u64,
    pub liveness_ms: u64,
    pub max_message_latency_ms: u64,
}

pub struct Report {
    pub spec: Spec,
    pub violations: Vec<Violation>,
    /// The run did not converge in the liveness phase, or a host failed.
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub simulated: Duration,
    pub wall: Duration,
    pub history: History,
    pub trace: Trace,
    /// Produces acknowledged.
    pub acknowledged: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.failure.is_none()
    }
}

/// A turmoil listener for the driver.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;
    /// The peer is the client host's turmoil address, which turmoil hands
    /// out in the order hosts are registered: the same on every run of a seed.
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, std::net::SocketAddr)> {
        self.0.accept().await
    }
}

/// A turmoil connector for the driver's links to other nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConnector;

impl Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;
    async fn connect(&self, address: &(String, u16)) -> std::io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect((address.0.as_str(), address.1)).await
    }
}

/// The simulated wall clock, in milliseconds since the Unix epoch: true
/// time, as the clients see it.
fn sim_wall_ms() -> i64 {
    turmoil::since_epoch().map_or(EPOCH_MS as i64, |d| d.as_millis() as i64)
}

/// The simulated wall clock of the clients, which never jumps.
pub fn sim_clock() -> driver::Clock {
    Arc::new(sim_wall_ms)
}

fn broker_config(pairs: &[(String, String)], node: u32) -> BrokerConfig {
    let mut pairs: BTreeMap<String, String> = pairs.iter().cloned().collect();
    pairs.insert("node.id".into(), node.to_string());
    pairs.insert("listeners".into(), format!("PLAINTEXT://0.0.0.0:{PORT}"));
    pairs.insert("log.dirs".into(), "sim".into());
    BrokerConfig::from_pairs(&pairs).expect("scenario broker config is valid")
}

/// Turns a node off as a crash would, but with its sockets closed in a
/// fixed order (see `driver::serve_until`).
#[derive(Clone)]
pub struct KillSwitch(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for KillSwitch {
    fn default() -> KillSwitch {
        KillSwitch::new()
    }
}

impl KillSwitch {
    pub fn new() -> KillSwitch {
        KillSwitch(Arc::new(tokio::sync::watch::channel(false).0))
    }

    pub fn armed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            let _ = receiver.wait_for(|killed| *killed).await;
        }
    }

    /// Kills a host's software and stops the host (for a later bounce).
    pub fn stop(&self, sim: &mut turmoil::Sim<'_>, host: &str) {
        self.0.send_replace(true);
        for _ in 0..KILL_STEPS_MAX {
            if !sim.is_host_running(host) {
                break;
            }
            if sim.step().is_err() {
                break;
            }
        }
        sim.crash(host);
        self.0.send_replace(false);
    }
}

/// Steps a killed node gets to drop its connections before the host stops.
const KILL_STEPS_MAX: usize = 5;

/// SplitMix64's finalizer: a bijection of `u64` that spreads every input
/// bit over the whole output.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const INCARNATION_SALT: u64 = 0x1ca2_4a71_0b00_7500;
const DISK_SALT: u64 = 0x5eed_d15c;

/// The seed of one incarnation of a node: its `boot`-th start (from 0) in
/// the run of `run_seed`. A restarted node draws fresh topic and member ids
/// instead of replaying the ones of its earlier lives, and no two nodes
/// share a sequence; the same run still draws the same seeds.
pub fn incarnation_seed(run_seed: u64, node: u32, boot: u64) -> u64 {
    mix64(mix64(mix64(run_seed ^ INCARNATION_SALT) ^ node as u64) ^ boot)
}

/// The seed of the faults of node `node`'s disk in the run of `run_seed`.
fn disk_seed(run_seed: u64, node: u32) -> u64 {
    mix64(mix64(run_seed ^ DISK_SALT) ^ node as u64)
}

/// One node of the run, with what outlives its host across crashes: its
/// disk, its kill switch, how far its wall clock is off true time, and how
/// many times it has started. Clones share all of it.
#[derive(Clone)]
pub(crate) struct SimNode {
    pub(crate) number: u32,
    /// Nodes in the run; each links to all the others.
    cluster_size: u32,
    pub(crate) host: String,
    pub(crate) disk: SimDisk,
    kill: KillSwitch,
    run_seed: u64,
    clock_offset_ms: Arc<AtomicI64>,
    /// Starts so far; each start is an incarnation with its own seed.
    boots: Arc<AtomicU64>,
    /// The driver's view of the node's links to the others, across incarnations.
    peer_status: tokio::sync::watch::Sender<PeerStatuses>,
}

impl SimNode {
    pub(crate) fn new(run_seed: u64, number: u32, cluster_size: u32, disk: DiskFaults) -> SimNode {
        assert!(
            (1..=cluster_size).contains(&number),
            "nodes are numbered from 1"
        );
        SimNode {
            number,
            cluster_size,
            host: node_host(number),
            disk: SimDisk::new(disk_seed(run_seed, number), disk),
            kill: KillSwitch::new(),
            run_seed,
            clock_offset_ms: Arc::default(),
            boots: Arc::default(),
            peer_status: tokio::sync::watch::Sender::new(PeerStatuses::default()),
        }
    }

    /// True when the node's link to every other node is up and the node
    /// knows what that peer serves.
    pub(crate) fn links_converged(&self) -> bool {
        let statuses = self.peer_status.borrow();
        let others = self.cluster_size as usize - 1;
        statuses.len() == others && statuses.values().all(|s| s.up && s.api_versions_known)
    }

    /// Crashes the node: kill, let it drop its connections, stop the host,
    /// then apply the crash to its disk.
    pub(crate) fn crash(&self, sim: &mut turmoil::Sim<'_>, damage: CrashFault) {
        self.kill.stop(sim, &self.host);
        self.disk.crash(damage);
    }

    /// Steps the node's wall clock by `delta_ms`; returns how far it is off
    /// true time now.
    pub(crate) fn jump_clock(&self, delta_ms: i64) -> i64 {
        self.clock_offset_ms.fetch_add(delta_ms, Ordering::SeqCst) + delta_ms
    }

    pub(crate) fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::SeqCst)
    }

    /// The node's wall clock: simulated time plus the offset the nemesis
    /// sets. Its monotonic clock is tokio's (simulated) and never jumps.
    fn wall_clock(&self) -> driver::Clock {
        let offset_ms = self.clock_offset_ms.clone();
        Arc::new(move || sim_wall_ms() + offset_ms.load(Ordering::SeqCst))
    }

    /// What the driver needs for the node's next incarnation; the one
    /// place an `Environment` is built.
    fn environment(
        &self,
        config: BrokerConfig,
        listener: turmoil::net::TcpListener,
    ) -> Environment<SimListener, SimDisk, SimConnector> {
        let boot = self.boots.fetch_add(1, Ordering::SeqCst);
        let seed = incarnation_seed(self.run_seed, self.number, boot);
        tracing::info!(boot, seed = %format_args!("{seed:#018x}"), "a new incarnation");
        Environment {
            config,
            listener: SimListener(listener),
            disk: self.disk.clone(),
            advertised: (self.host.clone(), PORT),
            clock: self.wall_clock(),
            seed,
            peers: (1..=self.cluster_size)
                .filter(|&number| number != self.number)
                .map(|number| (NodeId(number as i32), (node_host(number), PORT)))
                .collect(),
            connector: SimConnector,
            peer_status: Some(self.peer_status.clone()),
            metrics_listener: None,
        }
    }
}

/// Registers a node's host. Like a service manager, the host starts the
/// node again after a pause when it stops with an error (a failed start-up
/// sync); turmoil starts it again after a crash.
fn add_node(sim: &mut turmoil::Sim<'_>, config: &BrokerConfig, node: &SimNode) {
    let (config, node) = (config.clone(), node.clone());
    sim.host(node.host.clone(), move || {
        let (config, node) = (config.clone(), node.clone());
        let span = tracing::info_span!("node", host = node.host.as_str());
        async move {
            loop {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let environment = node.environment(config.clone(), listener);
                match driver::serve_until(environment, std::future::pending(), node.kill.armed())
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        tracing::error!(%error, "the node stopped; starting it again in 1 s")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        .instrument(span)
    });
}

/// Runs a scenario's spec to the end and checks it.
pub fn run(spec: Spec, keep_trace: bool) -> Report {
    let trace = Trace::new(keep_trace);
    let subscriber = {
        use tracing_subscriber::layer::SubscriberExt;
        tracing_subscriber::registry().with(TraceLayer {
            trace: trace.clone(),
        })
    };
    let started = Instant::now();
    let (violations, failure, simulated, history, acknowledged) =
        tracing::subscriber::with_default(subscriber, || run_inner(&spec, &trace));
    Report {
        spec,
        violations,
        failure,
        trace_hash: trace.hash(),
        simulated,
        wall: started.elapsed(),
        history,
        trace,
        acknowledged,
    }
}

type Outcome = (Vec<Violation>, Option<String>, Duration, History, usize);

fn simulation(spec: &Spec) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(spec.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_millis(
            spec.safety_ms + spec.liveness_ms + 60_000,
        ))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(max_message_latency(spec))
        .enable_random_order()
        .build()
}

/// The longest a message takes when no fault slows it.
pub(crate) fn max_message_latency(spec: &Spec) -> Duration {
    Duration::from_millis(spec.max_message_latency_ms.max(1))
}

fn run_inner(spec: &Spec, trace: &Trace) -> Outcome {
    assert!(spec.nodes >= 1, "a cluster has at least one node");
    let mut sim = simulation(spec);
    // Nodes first: turmoil hands out addresses in registration order.
    let nodes: Vec<SimNode> = (1..=spec.nodes)
        .map(|number| SimNode::new(spec.seed, number, spec.nodes, spec.disk.clone()))
        .collect();
    for node in &nodes {
        add_node(&mut sim, &broker_config(&spec.broker, node.number), node);
    }
    let history = History::default();
    let (done, controls) = workload::start(&mut sim, spec, &history);
    let mut nemesis = Nemesis::new(
        spec,
        nodes.clone(),
        controls,
        history.clone(),
        trace.clone(),
    );
    let safety_end = Duration::from_millis(spec.safety_ms);
    let deadline = Duration::from_millis(spec.safety_ms + spec.liveness_ms);
    let mut failure = None;
    loop {
        let now = sim.elapsed();
        if now < safety_end {
            nemesis.apply_due(&mut sim, now);
        } else if !nemesis.healed {
            nemesis.heal_all(&mut sim, now);
        }
        match sim.step() {
            Ok(_) if done.all_finished() && now >= safety_end => break,
            Ok(_) => {}
            Err(error) => {
                failure = Some(format!("a host or client failed: {error}"));
                break;
            }
        }
        if sim.elapsed() > deadline {
            failure = Some(format!(
                "not converged {} ms after the faults healed: {}",
                spec.liveness_ms,
                done.describe()
            ));
            break;
        }
    }
    if failure.is_none() {
        failure = converge_links(&mut sim, &nodes);
    }
    let replicated = spec.workload.replication_factor > 1;
    if failure.is_none() && replicated {
        failure = converge_replicas(&mut sim, &nodes, spec);
    }
    let simulated = sim.elapsed();
    drop(sim);
    let logs = final_logs(&nodes[0].disk, spec);
    let entries = history.entries();
    let mut violations = check::check_all(&entries, &logs);
    if replicated {
        // Every replica holds what node 1 holds, record for record, and
        // its own durable data is intact.
        for node in &nodes[1..] {
            let theirs = final_logs(&node.disk, spec);
            violations.extend(check::replicas_agree(&node.host, &logs, &theirs));
        }
    }
    violations.extend(eos_violations(&nodes[0].disk, spec, &entries, &logs));
    let acknowledged = entries
        .iter()
        .filter(|e| {
            matches!(
                (&e.operation, &e.outcome),
                (
                    crate::history::Operation::Produce { .. },
                    crate::history::Outcome::Ok
                )
            )
        })
        .count();
    (violations, failure, simulated, history, acknowledged)
}

/// How long after the workload ended every node must be linked to every
/// other (links reconnect within a second of a peer coming back).
const PEER_LINKS_CONVERGE_MS: u64 = 10_000;

/// Runs on until every node is linked to every other and knows what it
/// serves; a failure when that takes longer than `PEER_LINKS_CONVERGE_MS`.
fn converge_links(sim: &mut turmoil::Sim<'_>, nodes: &[SimNode]) -> Option<String> {
    let deadline = sim.elapsed() + Duration::from_millis(PEER_LINKS_CONVERGE_MS);
    while !nodes.iter().all(SimNode::links_converged) {
        if sim.elapsed() > deadline {
            let stuck: Vec<String> = nodes
                .iter()
                .filter(|n| !n.links_converged())
                .map(|n| format!("{}: {:?}", n.host, *n.peer_status.borrow()))
                .collect();
            return Some(format!(
                "peer links not converged {PEER_LINKS_CONVERGE_MS} ms after the workload: {}",
                stuck.join("; ")
            ));
        }
        if let Err(error) = sim.step() {
            return Some(format!("a host failed: {error}"));
        }
    }
    None
}

/// How long after the workload ended the replicas of every partition must
/// hold the same durable log end.
const REPLICAS_CONVERGE_MS: u64 = 30_000;
/// Simulated time between two looks at the replicas' disks.
const REPLICAS_LOOK_MS: u64 = 250;

/// A copy of `disk` after a crash that loses everything unsynced: what a
/// node would find durable.
fn durable_copy(disk: &SimDisk) -> sluice_core::storage::MemStorage {
    let mut storage = disk.snapshot();
    storage.crash(0);
    storage
}

/// Opens partition `partition` of `topic` on `storage` with a
/// full recovery scan and the checker's own settings (the defaults, whatever
/// mutation the node ran); its directory and the outcome, or None when the
/// directory is missing.
fn open_partition(
    storage: &mut sluice_core::storage::MemStorage,
    topic: &str,
    partition: i32,
) -> Option<(
    String,
    std::io::Result<(PartitionLog, sluice_core::log::Recovery)>,
)> {
    let dir = format!("{topic}-{partition}");
    if !storage.exists(&dir) {
        return None;
    }
    let config = sluice_core::config::TopicConfig::new(&BrokerConfig::defaults(), &BTreeMap::new())
        .expect("defaults");
    let opened = PartitionLog::open(storage, &dir, config, false);
    Some((dir, opened))
}

/// The durable log end of each partition of the workload's topic on a
/// node's disk (None for a partition whose log is missing or unreadable).
fn durable_ends(disk: &SimDisk, spec: &Spec) -> Vec<Option<i64>> {
    let mut storage = durable_copy(disk);
    // The workload's topic, then the pipelines' output topic if any.
    let output = spec.workload.eos.as_ref().map(|eos| {
        (
            crate::eos::output_topic(&spec.workload),
            eos.output_partitions,
        )
    });
    let topics = [(spec.workload.topic.clone(), spec.workload.partitions)]
        .into_iter()
        .chain(output);
    topics
        .flat_map(|(topic, partitions)| (0..partitions).map(move |p| (topic.clone(), p)))
        .map(|(topic, partition)| {
            let (_, opened) = open_partition(&mut storage, &topic, partition)?;
            opened.ok().map(|(log, _)| log.log_end_offset())
        })
        .collect()
}

/// Runs on until every node's durable log of every partition ends at the
/// same offset (followers fetched and synced all the leader has); a
/// failure when that takes longer than `REPLICAS_CONVERGE_MS`.
fn converge_replicas(sim: &mut turmoil::Sim<'_>, nodes: &[SimNode], spec: &Spec) -> Option<String> {
    let deadline = sim.elapsed() + Duration::from_millis(REPLICAS_CONVERGE_MS);
    loop {
        let ends: Vec<Vec<Option<i64>>> =
            nodes.iter().map(|n| durable_ends(&n.disk, spec)).collect();
        if ends
            .iter()
            .all(|e| e == &ends[0] && e.iter().all(Option::is_some))
        {
            return None;
        }
        if sim.elapsed() > deadline {
            return Some(format!(
                "replicas not converged {REPLICAS_CONVERGE_MS} ms after the workload: durable ends by node {ends:?}"
            ));
        }
        let look = sim.elapsed() + Duration::from_millis(REPLICAS_LOOK_MS);
        while sim.elapsed() < look {
            if let Err(error) = sim.step() {
                return Some(format!("a host failed: {error}"));
            }
        }
    }
}

/// Reads every partition of the workload's topic straight from a copy of
/// the disk after a crash that loses everything unsynced, with a full
/// recovery scan: durable data must be intact.
fn final_logs(disk: &SimDisk, spec: &Spec) -> FinalLogs {
    let mut storage = durable_copy(disk);
    let mut logs = FinalLogs::default();
    for partition in 0..spec.workload.partitions {
        let Some((dir, opened)) = open_partition(&mut storage, &spec.workload.topic, partition)
        else {
            continue;
        };
        let (log, recovery) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                logs.scan_problems
                    .push(format!("{dir}: cannot open: {error}"));
                continue;
            }
        };
        if recovery.truncated_bytes > 0 || recovery.segments_removed > 0 {
            logs.scan_problems
                .push(format!("{dir}: durable data damaged: {recovery:?}"));
        }
        let records = workload::read_log(&log, &mut storage);
        logs.partitions
            .insert(partition, (log.log_start_offset(), records));
    }
    logs
}

/// The exactly-once checkers over the pipelines' output, read from a
/// node's durable logs as a read_committed consumer would.
fn eos_violations(
    disk: &SimDisk,
    spec: &Spec,
    entries: &[crate::history::Entry],
    logs: &FinalLogs,
) -> Vec<check::Violation> {
    let Some(eos) = &spec.workload.eos else {
        return Vec::new();
    };
    let mut storage = durable_copy(disk);
    let topic = crate::eos::output_topic(&spec.workload);
    let mut outputs = BTreeMap::new();
    let mut found = Vec::new();
    for partition in 0..eos.output_partitions {
        match open_partition(&mut storage, &topic, partition) {
            Some((_, Ok((log, _)))) => {
                outputs.insert(
                    partition,
                    crate::eos::read_committed_view(&log, &mut storage),
                );
            }
            Some((dir, Err(error))) => found.push(check::Violation {
                checker: "durable-data-intact",
                detail: format!("{dir}: cannot open: {error}"),
            }),
            None => {}
        }
    }
    let inputs = logs
        .partitions
        .iter()
        .map(|(partition, (_, records))| (*partition, records.clone()))
        .collect();
    found.extend(crate::eos::check(entries, &inputs, &outputs, &topic));
    found
}

/// Milliseconds of the host's wall clock; only for progress output.
pub fn wall_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU32;

    use sluice_client::{Admin, Client, ClientConfig, NewTopic};
    use sluice_core::metadata::MetadataLog;

    use super::*;
    use crate::workload::SimConnector;

    #[test]
    fn every_incarnation_of_every_node_gets_its_own_seed() {
        for run_seed in [0, 1, 42, u64::MAX] {
            let mut seen = BTreeSet::new();
            for node in 1..=5 {
                for boot in 0..200 {
                    let seed = incarnation_seed(run_seed, node, boot);
                    assert!(
                        seen.insert(seed),
                        "run {run_seed} node {node} boot {boot}: seed {seed:#x} drawn twice"
                    );
                    assert_eq!(seed, incarnation_seed(run_seed, node, boot));
                }
            }
        }
        assert_ne!(disk_seed(7, 1), disk_seed(7, 2));
        assert_eq!(node_host(1), NODE);
    }

    #[test]
    fn a_clock_jump_moves_the_wall_clock_of_one_node_only() {
        let (one, two) = (
            SimNode::new(7, 1, 2, DiskFaults::default()),
            SimNode::new(7, 2, 2, DiskFaults::default()),
        );
        let (clock_one, clock_two) = (one.wall_clock(), two.wall_clock());
        // Outside a simulation the true time stands at EPOCH_MS.
        assert_eq!(clock_one(), EPOCH_MS as i64);
        assert_eq!(one.jump_clock(3_600_000), 3_600_000);
        assert_eq!(clock_one(), EPOCH_MS as i64 + 3_600_000);
        assert_eq!(one.jump_clock(-7_200_000), -3_600_000);
        assert_eq!(clock_one(), EPOCH_MS as i64 - 3_600_000);
        assert_eq!(clock_two(), EPOCH_MS as i64);
        assert_eq!(sim_clock()(), EPOCH_MS as i64);
    }

    /// Lives of the node in `a_restarted_node_draws_fresh_topic_ids`.
    const LIVES: u32 = 3;

    /// Creates topic `name`, retrying while the node is down.
    async fn create(admin: &Admin<SimConnector>, name: &str) {
        for _ in 0..100 {
            match admin.create_topic(&NewTopic::new(name, 1, 1)).await {
                Ok(()) => return,
                Err(error) => tracing::debug!(%error, "create topic failed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("topic {name} was never created");
    }

    /// Three lives of one node, each creating a topic; the node crashes
    /// between them. With one seed for every life, the second and third
    /// would both draw their topic's id first (the first life draws the
    /// cluster id before its topic's), and so give two topics one id.
    #[test]
    fn a_restarted_node_draws_fresh_topic_ids() {
        let spec_seed = 11;
        let mut sim = turmoil::Builder::new()
            .rng_seed(spec_seed)
            .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
            .simulation_duration(Duration::from_secs(120))
            .tick_duration(Duration::from_millis(1))
            .build();
        let node = SimNode::new(spec_seed, 1, 1, DiskFaults::default());
        add_node(&mut sim, &broker_config(&[], 1), &node);
        let (created, restarted) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (created_by_client, restarted_seen) = (created.clone(), restarted.clone());
        sim.client("admin", async move {
            let mut config = ClientConfig::new([format!("{NODE}:{PORT}")]).with_seed(1);
            config.request_timeout_ms = 2_000;
            let admin = Admin::new(Client::new(SimConnector, config)?);
            for life in 1..=LIVES {
                while restarted_seen.load(Ordering::SeqCst) < life - 1 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                create(&admin, &format!("t{life}")).await;
                created_by_client.store(life, Ordering::SeqCst);
            }
            Ok(())
        });
        loop {
            let life = created.load(Ordering::SeqCst);
            if life < LIVES && restarted.load(Ordering::SeqCst) < life {
                node.crash(&mut sim, CrashFault::LoseUnsynced);
                sim.bounce(NODE);
                restarted.store(life, Ordering::SeqCst);
            }
            if sim.step().expect("the node and the client run") {
                break;
            }
        }
        assert_eq!(node.boots.load(Ordering::SeqCst), LIVES as u64);
        let metadata = MetadataLog::open(&mut node.disk.snapshot()).expect("metadata log");
        let ids: BTreeSet<[u8; 16]> = (1..=LIVES)
            .map(|life| metadata.topics[&format!("t{life}")].id)
            .collect();
        assert_eq!(
            ids.len(),
            LIVES as usize,
            "topics of different lives share an id: {:?}",
            metadata.topics
        );
    }
}
