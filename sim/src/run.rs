//! One simulated run: a node (the real driver and core) on turmoil with a
//! `SimDisk`, client processes running a workload, the nemesis injecting
//! the scenario's faults during the safety phase, then a healed liveness
//! phase that must converge, then the checkers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_core::config::BrokerConfig;
use sluice_core::log::PartitionLog;
use sluice_core::storage::Storage;
use sluice_server::driver::{self, Environment, Listener};
use tracing::Instrument;

use crate::check::{self, FinalLogs, Violation};
use crate::disk::{CrashFault, DiskFaults, SimDisk};
use crate::history::History;
use crate::trace::{Trace, TraceLayer};
use crate::workload::{self, Workload};

pub const NODE: &str = "node1";
pub const PORT: u16 = 9092;
/// Simulated wall clock at the start of every run (2026-01-01T00:00:00Z).
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// One fault, at a simulated time in the safety phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Kill the node; its disk loses or damages what was not synced; it
    /// restarts `down_ms` later.
    Crash { damage: CrashFault, down_ms: u64 },
    /// Crash a client host (a group member) and start it again later.
    CrashHost { host: String, down_ms: u64 },
    /// Cut a client off from the node for a while.
    Partition { client: String, for_ms: u64 },
    /// Make every message take up to `max_ms` for a while.
    Latency { max_ms: u64, for_ms: u64 },
    /// Make syncs take `latency_ms` for a while.
    SlowDisk { latency_ms: u64, for_ms: u64 },
    /// Let the disk hold no more than it holds now plus `room_bytes`, for a while.
    DiskFull { room_bytes: u64, for_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Scheduled {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Everything a run needs, drawn by a scenario from its seed.
#[derive(Debug, Clone)]
pub struct Spec {
    pub scenario: &'static str,
    pub seed: u64,
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

/// The simulated wall clock, in milliseconds.
pub fn sim_clock() -> driver::Clock {
    std::sync::Arc::new(|| turmoil::since_epoch().map_or(EPOCH_MS as i64, |d| d.as_millis() as i64))
}

fn broker_config(spec: &Spec) -> BrokerConfig {
    let mut pairs: BTreeMap<String, String> = spec.broker.iter().cloned().collect();
    pairs.insert("listeners".into(), format!("PLAINTEXT://0.0.0.0:{PORT}"));
    pairs.insert("log.dirs".into(), "sim".into());
    BrokerConfig::from_pairs(&pairs).expect("scenario broker config is valid")
}

/// Turns a node off as a crash would, but with its sockets closed in a
/// fixed order (see `driver::serve_until`).
#[derive(Clone)]
pub struct KillSwitch(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Default for KillSwitch {
    fn default() -> KillSwitch {
        KillSwitch::new()
    }
}

impl KillSwitch {
    pub fn new() -> KillSwitch {
        KillSwitch(std::sync::Arc::new(tokio::sync::watch::channel(false).0))
    }

    pub fn armed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            let _ = receiver.wait_for(|killed| *killed).await;
        }
    }

    /// Crashes the node: kill, let it drop its connections, stop the host,
    /// then apply the crash to its disk.
    fn crash(&self, sim: &mut turmoil::Sim<'_>, disk: &SimDisk, damage: CrashFault) {
        self.stop(sim, NODE);
        disk.crash(damage);
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

fn add_node(sim: &mut turmoil::Sim<'_>, spec: &Spec, disk: &SimDisk, kill: &KillSwitch) {
    let config = broker_config(spec);
    let disk = disk.clone();
    let seed = spec.seed;
    let kill = kill.clone();
    sim.host(NODE, move || {
        let config = config.clone();
        let disk = disk.clone();
        let kill = kill.clone();
        async move {
            // Like a service manager: a node that stops with an error (a
            // failed start-up sync) is started again after a pause.
            loop {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let environment = Environment {
                    config: config.clone(),
                    listener: SimListener(listener),
                    disk: disk.clone(),
                    advertised: (NODE.to_string(), PORT),
                    clock: sim_clock(),
                    seed,
                };
                match driver::serve_until(environment, std::future::pending(), kill.armed()).await {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        tracing::error!(%error, "the node stopped; starting it again in 1 s")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        .instrument(tracing::info_span!("node", host = NODE))
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

fn run_inner(spec: &Spec, trace: &Trace) -> Outcome {
    let mut sim = turmoil::Builder::new()
        .rng_seed(spec.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_millis(
            spec.safety_ms + spec.liveness_ms + 60_000,
        ))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(spec.max_message_latency_ms.max(1)))
        .enable_random_order()
        .build();
    let disk = SimDisk::new(spec.seed ^ 0x5eed_d15c, spec.disk.clone());
    let history = History::default();
    let kill = KillSwitch::new();
    add_node(&mut sim, spec, &disk, &kill);
    let (done, member_kills) = workload::start(&mut sim, spec, &history);
    let mut nemesis = Nemesis::new(spec.faults.clone(), spec.disk.clone(), kill);
    nemesis.member_kills = member_kills;
    let safety_end = Duration::from_millis(spec.safety_ms);
    let deadline = Duration::from_millis(spec.safety_ms + spec.liveness_ms);
    let mut failure = None;
    loop {
        let now = sim.elapsed();
        if now < safety_end {
            nemesis.apply_due(&mut sim, &disk, &history, trace, now);
        } else if !nemesis.healed {
            nemesis.heal_all(&mut sim, &disk, &history, trace, now);
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
    let simulated = sim.elapsed();
    drop(sim);
    let logs = final_logs(&disk, spec);
    let entries = history.entries();
    let violations = check::check_all(&entries, &logs);
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

/// Applies the schedule: each fault at its time, each heal when it is due.
struct Nemesis {
    pending: Vec<Scheduled>,
    /// Heals due, as (time, what).
    heals: Vec<(Duration, Heal)>,
    base_disk: DiskFaults,
    healed: bool,
    kill: KillSwitch,
    /// Kill switches of the group members, by host name.
    member_kills: BTreeMap<String, KillSwitch>,
}

#[derive(Debug, Clone)]
enum Heal {
    RestartHost(String),
    Restart,
    Repair(String),
    Latency,
    Disk,
}

impl Nemesis {
    fn new(mut pending: Vec<Scheduled>, base_disk: DiskFaults, kill: KillSwitch) -> Nemesis {
        pending.sort_by_key(|s| s.at_ms);
        pending.reverse();
        Nemesis {
            pending,
            heals: Vec::new(),
            base_disk,
            healed: false,
            kill,
            member_kills: BTreeMap::new(),
        }
    }

    fn note(history: &History, trace: &Trace, now: Duration, what: String) {
        trace.record(
            now.as_micros(),
            &format!("FAULT harness      nemesis: {what}"),
        );
        history.fault(now.as_micros(), what);
    }

    fn apply_due(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disk: &SimDisk,
        history: &History,
        trace: &Trace,
        now: Duration,
    ) {
        let due: Vec<Heal> = self
            .heals
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, h)| h.clone())
            .collect();
        self.heals.retain(|(at, _)| *at > now);
        for heal in due {
            self.heal(sim, disk, history, trace, now, heal);
        }
        while self
            .pending
            .last()
            .is_some_and(|s| Duration::from_millis(s.at_ms) <= now)
        {
            let scheduled = self.pending.pop().expect("checked");
            self.inject(sim, disk, history, trace, now, scheduled.fault);
        }
    }

    fn inject(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disk: &SimDisk,
        history: &History,
        trace: &Trace,
        now: Duration,
        fault: Fault,
    ) {
        let node_down = self.heals.iter().any(|(_, h)| matches!(h, Heal::Restart));
        let until = |ms: u64| now + Duration::from_millis(ms);
        match fault {
            Fault::Crash { damage, down_ms } if !node_down => {
                self.kill.crash(sim, disk, damage);
                Self::note(
                    history,
                    trace,
                    now,
                    format!("crash {NODE}, unsynced writes: {damage:?}"),
                );
                self.heals.push((until(down_ms), Heal::Restart));
            }
            Fault::Crash { .. } => {}
            Fault::CrashHost { host, down_ms } => {
                let running = !self
                    .heals
                    .iter()
                    .any(|(_, h)| matches!(h, Heal::RestartHost(name) if *name == host));
                if let Some(kill) = self.member_kills.get(&host).filter(|_| running) {
                    kill.stop(sim, &host);
                    Self::note(history, trace, now, format!("crash {host}"));
                    self.heals.push((until(down_ms), Heal::RestartHost(host)));
                }
            }
            Fault::Partition { client, for_ms } => {
                sim.partition(client.as_str(), NODE);
                Self::note(
                    history,
                    trace,
                    now,
                    format!("partition {client} from {NODE}"),
                );
                self.heals.push((until(for_ms), Heal::Repair(client)));
            }
            Fault::Latency { max_ms, for_ms } => {
                sim.set_max_message_latency(Duration::from_millis(max_ms));
                Self::note(
                    history,
                    trace,
                    now,
                    format!("message latency up to {max_ms} ms"),
                );
                self.heals.push((until(for_ms), Heal::Latency));
            }
            Fault::SlowDisk { latency_ms, for_ms } => {
                disk.set_faults(DiskFaults {
                    sync_latency: Duration::from_millis(latency_ms),
                    ..self.base_disk.clone()
                });
                Self::note(history, trace, now, format!("syncs take {latency_ms} ms"));
                self.heals.push((until(for_ms), Heal::Disk));
            }
            Fault::DiskFull { room_bytes, for_ms } => {
                let used = disk.snapshot().volatile_bytes();
                disk.set_faults(DiskFaults {
                    capacity_bytes: Some(used + room_bytes),
                    ..self.base_disk.clone()
                });
                Self::note(
                    history,
                    trace,
                    now,
                    format!("disk full after {room_bytes} more bytes"),
                );
                self.heals.push((until(for_ms), Heal::Disk));
            }
        }
    }

    fn heal(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disk: &SimDisk,
        history: &History,
        trace: &Trace,
        now: Duration,
        heal: Heal,
    ) {
        match heal {
            Heal::RestartHost(host) => {
                sim.bounce(host.as_str());
                Self::note(history, trace, now, format!("restart {host}"));
            }
            Heal::Restart => {
                sim.bounce(NODE);
                Self::note(history, trace, now, format!("restart {NODE}"));
            }
            Heal::Repair(client) => {
                sim.repair(client.as_str(), NODE);
                Self::note(history, trace, now, format!("repair {client} to {NODE}"));
            }
            Heal::Latency => {
                sim.set_max_message_latency(Duration::from_millis(1));
                Self::note(history, trace, now, "message latency back to normal".into());
            }
            Heal::Disk => {
                disk.set_faults(self.base_disk.clone());
                Self::note(history, trace, now, "disk back to normal".into());
            }
        }
    }

    fn heal_all(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disk: &SimDisk,
        history: &History,
        trace: &Trace,
        now: Duration,
    ) {
        for (_, heal) in std::mem::take(&mut self.heals) {
            self.heal(sim, disk, history, trace, now, heal);
        }
        // Failed syncs take the node offline until a restart; the liveness
        // phase starts from a healthy node.
        let mut base = self.base_disk.clone();
        base.sync_failure_per_million = 0;
        disk.set_faults(base);
        if disk.syncs_failed() > 0 {
            self.kill.crash(sim, disk, CrashFault::LoseUnsynced);
            sim.bounce(NODE);
            Self::note(
                history,
                trace,
                now,
                format!("restart {NODE} after failed syncs"),
            );
        }
        self.healed = true;
    }
}

/// Reads every partition of the workload's topic straight from a copy of
/// the disk after a crash that loses everything unsynced, with a full
/// recovery scan: durable data must be intact.
fn final_logs(disk: &SimDisk, spec: &Spec) -> FinalLogs {
    let mut storage = disk.snapshot();
    storage.crash(0);
    // The checker's own reading: default settings, whatever mutation the node ran.
    let config = sluice_core::config::TopicConfig::new(&BrokerConfig::defaults(), &BTreeMap::new())
        .expect("defaults");
    let mut logs = FinalLogs::default();
    for partition in 0..spec.workload.partitions {
        let dir = format!("{}-{partition}", spec.workload.topic);
        if !storage.exists(&dir) {
            continue;
        }
        let (log, recovery) = match PartitionLog::open(&mut storage, &dir, config.clone(), false) {
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

/// Milliseconds of the host's wall clock; only for progress output.
pub fn wall_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
