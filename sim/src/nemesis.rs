//! The nemesis: applies a run's fault schedule to the simulated cluster
//! during the safety phase (crashes, partitions, slow links and disks, a
//! full disk, clock jumps, zombie workers, delayed requests), heals each
//! fault when it is due, and heals everything when the liveness phase
//! starts. Every fault and heal goes to the trace and the history.

use std::time::Duration;

use kafka_protocol::messages::ApiKey;

use crate::disk::{CrashFault, DiskFaults};
use crate::eos::{twin_host, Controls};
use crate::history::History;
use crate::run::{max_message_latency, SimNode, Spec};
use crate::trace::Trace;

/// One fault, at a simulated time in the safety phase. Nodes are named by
/// their number, 1 to `Spec::nodes` (host `node1` is node 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Kill a node; its disk loses or damages what was not synced; it
    /// restarts `down_ms` later.
    Crash {
        node: u32,
        damage: CrashFault,
        down_ms: u64,
    },
    /// Crash a client host (a group member) and start it again later.
    CrashHost { host: String, down_ms: u64 },
    /// Cut a client off from a node for a while.
    Partition {
        client: String,
        node: u32,
        for_ms: u64,
    },
    /// Cut two nodes off from each other for a while.
    PartitionNodes { a: u32, b: u32, for_ms: u64 },
    /// Make every message take up to `max_ms` for a while.
    Latency { max_ms: u64, for_ms: u64 },
    /// Make every message between two nodes take up to `max_ms` for a
    /// while. turmoil gives the link its own latency settings from then on,
    /// so a later `Latency` fault no longer slows this link.
    SlowLink {
        a: u32,
        b: u32,
        max_ms: u64,
        for_ms: u64,
    },
    /// Make a node's syncs take `latency_ms` for a while.
    SlowDisk {
        node: u32,
        latency_ms: u64,
        for_ms: u64,
    },
    /// Let a node's disk hold no more than it holds now plus `room_bytes`,
    /// for a while.
    DiskFull {
        node: u32,
        room_bytes: u64,
        for_ms: u64,
    },
    /// Step a node's wall clock by `delta_ms`, forward or back, as a bad
    /// time source would; its monotonic clock (deadlines) runs on. Jumps add
    /// up; the clock returns to true time when the faults heal.
    ClockJump { node: u32, delta_ms: i64 },
    /// Make an exactly-once worker a zombie: hold every message between it
    /// and the nodes for `for_ms` (delivered when released, so what it
    /// sent meanwhile lands late), and meanwhile wake its stand-in, a
    /// second instance with the same transactional id that fences it and
    /// takes over; the stand-in is killed `overlap_ms` after the release,
    /// so for a while both run.
    Zombie {
        worker: String,
        for_ms: u64,
        overlap_ms: u64,
    },
    /// Hold back a worker's next request of kind `api` (see `tap.rs`): its
    /// connection breaks, the client retries, and the held copy reaches the
    /// node `delay_ms` later on a connection of its own.
    DelayRequest {
        host: String,
        api: ApiKey,
        delay_ms: u64,
    },
    /// Kill a worker once its next request of kind `api` has left (see
    /// `tap.rs`), and start it again `down_ms` later: a process that dies
    /// right after it asked to commit never learns whether it did.
    KillAfterRequest {
        host: String,
        api: ApiKey,
        down_ms: u64,
    },
}

impl Fault {
    /// The nodes the fault names.
    pub fn nodes(&self) -> Vec<u32> {
        match self {
            Fault::Crash { node, .. }
            | Fault::Partition { node, .. }
            | Fault::SlowDisk { node, .. }
            | Fault::DiskFull { node, .. }
            | Fault::ClockJump { node, .. } => vec![*node],
            Fault::PartitionNodes { a, b, .. } | Fault::SlowLink { a, b, .. } => vec![*a, *b],
            Fault::CrashHost { .. }
            | Fault::Latency { .. }
            | Fault::Zombie { .. }
            | Fault::DelayRequest { .. }
            | Fault::KillAfterRequest { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scheduled {
    pub at_ms: u64,
    pub fault: Fault,
}

#[derive(Debug, Clone)]
enum Heal {
    RestartHost(String),
    Restart(u32),
    /// Repair the link between two hosts (client or node).
    Repair {
        a: String,
        b: String,
    },
    Latency,
    LinkLatency {
        a: u32,
        b: u32,
    },
    Disk(u32),
    /// Deliver what was held between a zombie worker and every node.
    Release(String),
    /// Kill a worker's stand-in and put it back to sleep.
    RetireTwin(String),
}

/// Applies the schedule: each fault at its time, each heal when it is due.
pub(crate) struct Nemesis {
    /// Faults still to come, latest first.
    pending: Vec<Scheduled>,
    /// Heals due, as (time, what).
    heals: Vec<(Duration, Heal)>,
    /// The cluster's nodes, node `n` at index `n - 1`.
    nodes: Vec<SimNode>,
    base_disk: DiskFaults,
    base_latency: Duration,
    /// Kill switches of the group members and workers, by host name, the
    /// workers' stand-ins and the tap of their connections.
    controls: Controls,
    history: History,
    trace: Trace,
    pub(crate) healed: bool,
}

impl Nemesis {
    pub(crate) fn new(
        spec: &Spec,
        nodes: Vec<SimNode>,
        controls: Controls,
        history: History,
        trace: Trace,
    ) -> Nemesis {
        for scheduled in &spec.faults {
            let named = scheduled.fault.nodes();
            for node in &named {
                assert!(
                    (1..=nodes.len() as u32).contains(node),
                    "{:?} names node {node} of a cluster of {}",
                    scheduled.fault,
                    nodes.len()
                );
            }
            assert!(
                named.len() < 2 || named[0] != named[1],
                "{:?} names one node as both ends of a link",
                scheduled.fault
            );
        }
        let mut pending = spec.faults.clone();
        pending.sort_by_key(|s| s.at_ms);
        pending.reverse();
        Nemesis {
            pending,
            heals: Vec::new(),
            nodes,
            base_disk: spec.disk.clone(),
            base_latency: max_message_latency(spec),
            controls,
            history,
            trace,
            healed: false,
        }
    }

    fn node(&self, node: u32) -> &SimNode {
        &self.nodes[node as usize - 1]
    }

    fn note(&self, now: Duration, what: String) {
        self.trace.record(
            now.as_micros(),
            &format!("FAULT harness      nemesis: {what}"),
        );
        self.history.fault(now.as_micros(), what);
    }

    fn is_down(&self, node: u32) -> bool {
        self.heals
            .iter()
            .any(|(_, h)| matches!(h, Heal::Restart(n) if *n == node))
    }

    /// Heals what is due, then injects what is due.
    pub(crate) fn apply_due(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        let due: Vec<Heal> = self
            .heals
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, h)| h.clone())
            .collect();
        self.heals.retain(|(at, _)| *at > now);
        for heal in due {
            self.heal(sim, now, heal);
        }
        for (host, down_ms) in self.controls.tap.take_kills() {
            self.inject(sim, now, Fault::CrashHost { host, down_ms });
        }
        while self
            .pending
            .last()
            .is_some_and(|s| Duration::from_millis(s.at_ms) <= now)
        {
            let scheduled = self.pending.pop().expect("checked");
            self.inject(sim, now, scheduled.fault);
        }
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, fault: Fault) {
        let until = |ms: u64| now + Duration::from_millis(ms);
        match fault {
            Fault::Crash {
                node,
                damage,
                down_ms,
            } if !self.is_down(node) => {
                self.node(node).crash(sim, damage);
                let host = &self.node(node).host;
                self.note(now, format!("crash {host}, unsynced writes: {damage:?}"));
                self.heals.push((until(down_ms), Heal::Restart(node)));
            }
            Fault::Crash { .. } => {}
            Fault::CrashHost { host, down_ms } => {
                let running = !self
                    .heals
                    .iter()
                    .any(|(_, h)| matches!(h, Heal::RestartHost(name) if *name == host));
                if let Some(kill) = self.controls.kills.get(&host).filter(|_| running) {
                    kill.stop(sim, &host);
                    self.note(now, format!("crash {host}"));
                    self.heals.push((until(down_ms), Heal::RestartHost(host)));
                }
            }
            Fault::Partition {
                client,
                node,
                for_ms,
            } => {
                let host = self.node(node).host.clone();
                self.partition(sim, now, client, host, until(for_ms));
            }
            Fault::PartitionNodes { a, b, for_ms } => {
                let (a, b) = (self.node(a).host.clone(), self.node(b).host.clone());
                self.partition(sim, now, a, b, until(for_ms));
            }
            Fault::Latency { max_ms, for_ms } => {
                sim.set_max_message_latency(Duration::from_millis(max_ms));
                self.note(now, format!("message latency up to {max_ms} ms"));
                self.heals.push((until(for_ms), Heal::Latency));
            }
            Fault::SlowLink {
                a,
                b,
                max_ms,
                for_ms,
            } => {
                let (host_a, host_b) = (&self.node(a).host, &self.node(b).host);
                sim.set_link_max_message_latency(
                    host_a.as_str(),
                    host_b.as_str(),
                    Duration::from_millis(max_ms),
                );
                self.note(
                    now,
                    format!("latency between {host_a} and {host_b} up to {max_ms} ms"),
                );
                self.heals.push((until(for_ms), Heal::LinkLatency { a, b }));
            }
            Fault::SlowDisk {
                node,
                latency_ms,
                for_ms,
            } => {
                let target = self.node(node);
                target.disk.set_faults(DiskFaults {
                    sync_latency: Duration::from_millis(latency_ms),
                    ..self.base_disk.clone()
                });
                let host = &target.host;
                self.note(now, format!("syncs of {host} take {latency_ms} ms"));
                self.heals.push((until(for_ms), Heal::Disk(node)));
            }
            Fault::DiskFull {
                node,
                room_bytes,
                for_ms,
            } => {
                let target = self.node(node);
                let used = target.disk.snapshot().volatile_bytes();
                target.disk.set_faults(DiskFaults {
                    capacity_bytes: Some(used + room_bytes),
                    ..self.base_disk.clone()
                });
                let host = &target.host;
                self.note(
                    now,
                    format!("disk of {host} full after {room_bytes} more bytes"),
                );
                self.heals.push((until(for_ms), Heal::Disk(node)));
            }
            Fault::Zombie {
                worker,
                for_ms,
                overlap_ms,
            } => self.zombie(sim, now, worker, for_ms, overlap_ms),
            Fault::DelayRequest {
                host,
                api,
                delay_ms,
            } => {
                self.controls.tap.arm(&host, api, delay_ms);
                self.note(
                    now,
                    format!("the next {api:?} of {host} is to be held back {delay_ms} ms"),
                );
            }
            Fault::KillAfterRequest { host, api, down_ms } => {
                self.controls.tap.arm_kill(&host, api, down_ms);
                self.note(
                    now,
                    format!("{host} is to be killed once its next {api:?} has left"),
                );
            }
            Fault::ClockJump { node, delta_ms } => {
                let offset_ms = self.node(node).jump_clock(delta_ms);
                let host = &self.node(node).host;
                self.note(
                    now,
                    format!(
                        "clock of {host} jumps {delta_ms:+} ms, {offset_ms:+} ms off true time"
                    ),
                );
            }
        }
    }

    /// Holds every message between `worker` and the nodes and wakes its
    /// stand-in, unless it is already a zombie.
    fn zombie(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        worker: String,
        for_ms: u64,
        overlap_ms: u64,
    ) {
        let Some(twin) = self.controls.twins.get(&worker) else {
            return;
        };
        if twin.is_awake() {
            return;
        }
        for node in &self.nodes {
            sim.hold(worker.as_str(), node.host.as_str());
        }
        twin.wake();
        self.note(
            now,
            format!(
                "{worker} becomes a zombie: its messages to and from every node are held; {} takes over",
                twin_host(&worker)
            ),
        );
        let release = now + Duration::from_millis(for_ms);
        self.heals.push((release, Heal::Release(worker.clone())));
        let retire = release + Duration::from_millis(overlap_ms);
        self.heals.push((retire, Heal::RetireTwin(worker)));
    }

    fn partition(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        a: String,
        b: String,
        until: Duration,
    ) {
        sim.partition(a.as_str(), b.as_str());
        self.note(now, format!("partition {a} from {b}"));
        self.heals.push((until, Heal::Repair { a, b }));
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, heal: Heal) {
        match heal {
            Heal::RestartHost(host) => {
                sim.bounce(host.as_str());
                self.note(now, format!("restart {host}"));
            }
            Heal::Restart(node) => {
                let host = &self.node(node).host;
                sim.bounce(host.as_str());
                self.note(now, format!("restart {host}"));
            }
            Heal::Repair { a, b } => {
                sim.repair(a.as_str(), b.as_str());
                self.note(now, format!("repair {a} to {b}"));
            }
            Heal::Latency => {
                sim.set_max_message_latency(self.base_latency);
                self.note(now, "message latency back to normal".into());
            }
            Heal::LinkLatency { a, b } => {
                let (a, b) = (&self.node(a).host, &self.node(b).host);
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), self.base_latency);
                self.note(now, format!("latency between {a} and {b} back to normal"));
            }
            Heal::Disk(node) => {
                let node = self.node(node);
                node.disk.set_faults(self.base_disk.clone());
                self.note(now, format!("disk of {} back to normal", node.host));
            }
            Heal::Release(worker) => {
                for node in &self.nodes {
                    sim.release(worker.as_str(), node.host.as_str());
                }
                self.note(
                    now,
                    format!("release what was held between {worker} and the nodes"),
                );
            }
            Heal::RetireTwin(worker) => {
                let Some(twin) = self.controls.twins.get(&worker) else {
                    return;
                };
                let host = twin_host(&worker);
                twin.sleep();
                twin.kill.stop(sim, &host);
                sim.bounce(host.as_str());
                self.note(now, format!("kill {host}"));
            }
        }
    }

    /// Heals every fault, so the liveness phase starts from a healthy cluster.
    pub(crate) fn heal_all(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        // Releases first: a stand-in is retired after its zombie wakes.
        let mut heals = std::mem::take(&mut self.heals);
        heals.sort_by_key(|(_, heal)| matches!(heal, Heal::RetireTwin(_)));
        for (_, heal) in heals {
            self.heal(sim, now, heal);
        }
        self.controls.tap.disarm_all();
        // Failed syncs take a node offline until a restart; the liveness
        // phase starts from healthy nodes.
        let mut base = self.base_disk.clone();
        base.sync_failure_per_million = 0;
        for node in &self.nodes {
            node.disk.set_faults(base.clone());
            if node.disk.syncs_failed() > 0 {
                node.crash(sim, CrashFault::LoseUnsynced);
                sim.bounce(node.host.as_str());
                self.note(now, format!("restart {} after failed syncs", node.host));
            }
            let offset_ms = node.clock_offset_ms();
            if offset_ms != 0 {
                node.jump_clock(-offset_ms);
                self.note(
                    now,
                    format!(
                        "clock of {} back to true time ({:+} ms)",
                        node.host, -offset_ms
                    ),
                );
            }
        }
        self.healed = true;
    }
}
