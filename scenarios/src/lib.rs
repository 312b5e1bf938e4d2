//! Named scenarios: each turns a seed into a simulation spec (cluster
//! settings, workload, disk and fault schedule), so one seed names one
//! exact run. Adding a scenario is one function and one line in `ALL`.

use std::time::Duration;

use sluice_client::Acks;
use sluice_core::rng::Rng;
use sluice_sim::disk::{CrashFault, DiskFaults};
use sluice_sim::eos::EosWorkload;
use sluice_sim::tap::LATE_KINDS;
use sluice_sim::workload::Workload;
use sluice_sim::{ApiKey, Fault, Scheduled, Spec};

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub build: fn(u64) -> Spec,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "crash-restart",
        about: "one node under produce load, crashed and restarted; unsynced writes lost, torn or corrupted",
        build: crash_restart,
    },
    Scenario {
        name: "network",
        about: "clients cut off, slowed and reconnecting; the node's wall clock jumping; up to two more nodes whose links are cut, slowed and crashed",
        build: network,
    },
    Scenario {
        name: "roll-retention",
        about: "small segments rolling and deleted by retention while the node crashes",
        build: roll_retention,
    },
    Scenario {
        name: "groups",
        about: "a consumer group of 2-3 members reading while members and the coordinator crash, get cut off and see its clock jump",
        build: groups,
    },
    Scenario {
        name: "replicated",
        about: "three brokers forming a cluster, a topic with three replicas and min.insync.replicas=2 at acks=all; brokers crash, are cut off from each other and from producers, slow their disks and jump their clocks",
        build: replicated,
    },
    Scenario {
        name: "eos",
        about: "exactly-once pipelines: 1-3 transactional workers copy the topic to another, committing their input offsets in each transaction and aborting some on purpose, while workers crash and come back, get cut off, turn zombie (held off while a second instance takes over), have requests delivered late after their retries, and the node crashes and jumps its clock",
        build: eos,
    },
    Scenario {
        name: "eos-replicated",
        about: "the eos pipelines on three brokers (every topic with three replicas, min.insync.replicas=2): transaction coordinators and partition leaders move as brokers crash and are cut off, markers travel between brokers, workers crash and come back",
        build: eos_replicated,
    },
    Scenario {
        name: "eos-replicated-late",
        about: "eos-replicated with the zombie workers and late requests of eos: a late write reaches a leader or group coordinator on another broker than its transaction's coordinator",
        build: eos_replicated_late,
    },
    Scenario {
        name: "disk-trouble",
        about: "a disk that fills up, slows down and fails syncs",
        build: disk_trouble,
    },
];

/// Scenarios that run by name (`sweep --scenario NAME`, `replay`) but not
/// in the campaign of every test run, each until the bug it found is fixed.
/// None today.
pub const PENDING: &[Scenario] = &[];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().chain(PENDING).find(|s| s.name == name)
}

fn pick(rng: &mut Rng, low: u64, high: u64) -> u64 {
    low + rng.next_u64() % (high - low + 1)
}

fn base(scenario: &'static str, seed: u64, rng: &mut Rng) -> Spec {
    let safety_ms = 10_000;
    let records_per_producer = pick(rng, 200, 1_000) as usize;
    let burst = pick(rng, 1, 40) as usize;
    // Spread the sends over most of the safety phase, so faults hit them.
    let send_interval_ms = (safety_ms * 8 / 10 * burst as u64 / records_per_producer as u64).max(1);
    Spec {
        scenario,
        seed,
        nodes: 1,
        // The workload creates its topic; auto-creation could race it with
        // the default partition count when a creation was lost in a crash.
        broker: vec![
            ("log.retention.check.interval.ms".into(), "1000".into()),
            ("auto.create.topics.enable".into(), "false".into()),
        ],
        disk: DiskFaults {
            sync_latency: Duration::from_micros(pick(rng, 200, 10_000)),
            ..DiskFaults::default()
        },
        workload: Workload {
            topic: "events".into(),
            partitions: pick(rng, 1, 3) as i32,
            producers: pick(rng, 1, 4) as usize,
            records_per_producer,
            padding_bytes: pick(rng, 0, 200) as usize,
            burst,
            send_interval_ms,
            acks: Acks::All,
            group_members: 0,
            replication_factor: 1,
            min_insync_replicas: None,
            bootstrap_nodes: 1,
            eos: None,
        },
        faults: Vec::new(),
        safety_ms,
        liveness_ms: 60_000,
        max_message_latency_ms: 1,
    }
}

fn crashes(rng: &mut Rng, count: u64, safety_ms: u64) -> Vec<Scheduled> {
    (0..count)
        .map(|_| Scheduled {
            at_ms: pick(rng, 200, safety_ms - 500),
            fault: Fault::Crash {
                node: 1,
                damage: CrashFault::ALL[(rng.next_u64() % 4) as usize],
                down_ms: pick(rng, 10, 1_000),
            },
        })
        .collect()
}

/// Jumps of a node's wall clock, forward or back by up to an hour: record
/// times (LogAppendTime, commit times, retention) move with it, deadlines
/// do not. A node an hour or more behind its producers refuses their
/// records as INVALID_TIMESTAMP (`log.message.timestamp.after.max.ms`).
/// Each jump is of node 1, or of a node drawn among `nodes` when there are
/// more.
fn clock_jumps(rng: &mut Rng, count: u64, safety_ms: u64, nodes: u32) -> Vec<Scheduled> {
    (0..count)
        .map(|_| {
            let at_ms = pick(rng, 100, safety_ms - 1_000);
            let size_ms = pick(rng, 1_000, 3_600_000) as i64;
            let forward = rng.next_u64().is_multiple_of(2);
            let delta_ms = if forward { size_ms } else { -size_ms };
            let node = if nodes > 1 {
                pick(rng, 1, nodes as u64) as u32
            } else {
                1
            };
            Scheduled {
                at_ms,
                fault: Fault::ClockJump { node, delta_ms },
            }
        })
        .collect()
}

pub fn crash_restart(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("crash-restart", seed, &mut rng);
    // A slower disk leaves more unsynced data for the crashes to damage.
    spec.disk.sync_latency = Duration::from_micros(pick(&mut rng, 1_000, 30_000));
    let count = pick(&mut rng, 1, 4);
    spec.faults = crashes(&mut rng, count, spec.safety_ms);
    spec
}

pub fn network(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("network", seed, &mut rng);
    for _ in 0..pick(&mut rng, 2, 6) {
        let at_ms = pick(&mut rng, 100, spec.safety_ms - 1_000);
        let client = format!(
            "producer{}",
            rng.next_u64() % spec.workload.producers as u64
        );
        let fault = match rng.next_u64() % 3 {
            0 => Fault::Partition {
                client,
                node: 1,
                for_ms: pick(&mut rng, 50, 3_000),
            },
            1 => Fault::Latency {
                max_ms: pick(&mut rng, 5, 200),
                for_ms: pick(&mut rng, 100, 3_000),
            },
            _ => Fault::Crash {
                node: 1,
                damage: CrashFault::KeepPrefix,
                down_ms: pick(&mut rng, 10, 500),
            },
        };
        spec.faults.push(Scheduled { at_ms, fault });
    }
    let jumps = pick(&mut rng, 1, 2);
    spec.faults
        .extend(clock_jumps(&mut rng, jumps, spec.safety_ms, 1));
    // Up to two more nodes, linked to node 1 and to each other, whose links
    // are cut and slowed and who crash: their links must come back.
    spec.nodes = pick(&mut rng, 1, 3) as u32;
    if spec.nodes > 1 {
        for _ in 0..pick(&mut rng, 1, 4) {
            let at_ms = pick(&mut rng, 100, spec.safety_ms - 1_000);
            let other = pick(&mut rng, 2, spec.nodes as u64) as u32;
            let fault = match rng.next_u64() % 3 {
                0 => Fault::PartitionNodes {
                    a: 1,
                    b: other,
                    for_ms: pick(&mut rng, 50, 3_000),
                },
                1 => Fault::SlowLink {
                    a: 1,
                    b: other,
                    max_ms: pick(&mut rng, 5, 200),
                    for_ms: pick(&mut rng, 100, 3_000),
                },
                _ => Fault::Crash {
                    node: other,
                    damage: CrashFault::KeepPrefix,
                    down_ms: pick(&mut rng, 10, 500),
                },
            };
            spec.faults.push(Scheduled { at_ms, fault });
        }
    }
    spec
}

pub fn roll_retention(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("roll-retention", seed, &mut rng);
    spec.broker.push((
        "log.segment.bytes".into(),
        pick(&mut rng, 2_048, 16_384).to_string(),
    ));
    spec.broker.push((
        "log.retention.bytes".into(),
        pick(&mut rng, 20_000, 80_000).to_string(),
    ));
    spec.broker.push((
        "log.index.interval.bytes".into(),
        pick(&mut rng, 100, 1_000).to_string(),
    ));
    spec.workload.padding_bytes = pick(&mut rng, 50, 400) as usize;
    let count = pick(&mut rng, 1, 3);
    spec.faults = crashes(&mut rng, count, spec.safety_ms);
    spec
}

pub fn disk_trouble(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("disk-trouble", seed, &mut rng);
    spec.disk.sync_failure_per_million = [0, 0, 2_000, 20_000][(rng.next_u64() % 4) as usize];
    for _ in 0..pick(&mut rng, 1, 4) {
        let at_ms = pick(&mut rng, 100, spec.safety_ms - 1_000);
        let fault = match rng.next_u64() % 3 {
            0 => Fault::DiskFull {
                node: 1,
                room_bytes: pick(&mut rng, 0, 20_000),
                for_ms: pick(&mut rng, 100, 2_000),
            },
            1 => Fault::SlowDisk {
                node: 1,
                latency_ms: pick(&mut rng, 5, 300),
                for_ms: pick(&mut rng, 100, 3_000),
            },
            _ => Fault::Crash {
                node: 1,
                damage: CrashFault::TearLastSector,
                down_ms: pick(&mut rng, 10, 500),
            },
        };
        spec.faults.push(Scheduled { at_ms, fault });
    }
    spec
}

pub fn groups(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("groups", seed, &mut rng);
    spec.workload.partitions = pick(&mut rng, 2, 6) as i32;
    spec.workload.group_members = pick(&mut rng, 2, 3) as usize;
    spec.broker
        .push(("group.initial.rebalance.delay.ms".into(), "0".into()));
    spec.broker
        .push(("offsets.topic.num.partitions".into(), "5".into()));
    for _ in 0..pick(&mut rng, 1, 4) {
        let at_ms = pick(&mut rng, 500, spec.safety_ms - 1_000);
        let member = format!(
            "member{}",
            rng.next_u64() % spec.workload.group_members as u64
        );
        let fault = match rng.next_u64() % 3 {
            0 => Fault::CrashHost {
                host: member,
                down_ms: pick(&mut rng, 100, 3_000),
            },
            1 => Fault::Partition {
                client: member,
                node: 1,
                for_ms: pick(&mut rng, 100, 8_000),
            },
            _ => Fault::Crash {
                node: 1,
                damage: CrashFault::ALL[(rng.next_u64() % 4) as usize],
                down_ms: pick(&mut rng, 10, 1_000),
            },
        };
        spec.faults.push(Scheduled { at_ms, fault });
    }
    let jumps = pick(&mut rng, 0, 2);
    spec.faults
        .extend(clock_jumps(&mut rng, jumps, spec.safety_ms, 1));
    spec
}

pub fn eos(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("eos", seed, &mut rng);
    let workers = with_pipelines(&mut spec, &mut rng);
    let count = pick(&mut rng, 0, 3);
    spec.faults = crashes(&mut rng, count, spec.safety_ms);
    worker_faults(&mut spec, &mut rng, workers, 1);
    let jumps = pick(&mut rng, 0, 1);
    spec.faults
        .extend(clock_jumps(&mut rng, jumps, spec.safety_ms, 1));
    zombies_and_late_requests(&mut spec, workers);
    kills_mid_commit(&mut spec, workers);
    spec
}

/// The `replicated` cluster and its faults, with the pipelines on it.
pub fn eos_replicated(seed: u64) -> Spec {
    let mut spec = replicated(seed);
    spec.scenario = "eos-replicated";
    let mut rng = Rng::from_seed(seed ^ 0xe05);
    let workers = with_pipelines(&mut spec, &mut rng);
    worker_faults(&mut spec, &mut rng, workers, REPLICATED_NODES);
    spec
}

/// `eos-replicated` with zombie workers and late requests too.
pub fn eos_replicated_late(seed: u64) -> Spec {
    let mut spec = eos_replicated(seed);
    spec.scenario = "eos-replicated-late";
    let workers = spec.workload.eos.as_ref().map_or(1, |eos| eos.workers);
    zombies_and_late_requests(&mut spec, workers);
    spec
}

/// Zombies and late requests, drawn from a generator of their own so the
/// other faults of a seed stay as they were: now and then a worker cut off
/// (its messages held, not lost) while a second instance with its
/// transactional id takes over, and up to three requests of a worker held
/// back and delivered late, after the client retried them (EndTxn twice
/// as often as the others: Jepsen's case).
fn zombies_and_late_requests(spec: &mut Spec, workers: usize) {
    let mut rng = Rng::from_seed(spec.seed ^ 0x20b1_e5de_1a7e);
    let worker = |rng: &mut Rng| format!("eos{}", rng.next_u64() % workers as u64);
    if rng.next_u64().is_multiple_of(2) {
        let at_ms = pick(&mut rng, 500, spec.safety_ms - 2_000);
        spec.faults.push(Scheduled {
            at_ms,
            fault: Fault::Zombie {
                worker: worker(&mut rng),
                for_ms: pick(&mut rng, 500, 4_000),
                overlap_ms: pick(&mut rng, 0, 1_500),
            },
        });
    }
    for _ in 0..pick(&mut rng, 0, 3) {
        let at_ms = pick(&mut rng, 300, spec.safety_ms - 1_000);
        let api = LATE_KINDS[(rng.next_u64() % LATE_KINDS.len() as u64) as usize];
        spec.faults.push(Scheduled {
            at_ms,
            fault: Fault::DelayRequest {
                host: worker(&mut rng),
                api,
                delay_ms: pick(&mut rng, 20, 2_000),
            },
        });
    }
}

/// Now and then a worker killed right after its EndTxn left, so it never
/// learns the outcome (`[eos-atomic]` checks those transactions), drawn
/// from a generator of its own so the other faults of a seed stay as they
/// were.
fn kills_mid_commit(spec: &mut Spec, workers: usize) {
    let mut rng = Rng::from_seed(spec.seed ^ 0xdead_e17d);
    for _ in 0..pick(&mut rng, 0, 2) {
        let at_ms = pick(&mut rng, 300, spec.safety_ms - 2_000);
        spec.faults.push(Scheduled {
            at_ms,
            fault: Fault::KillAfterRequest {
                host: format!("eos{}", rng.next_u64() % workers as u64),
                api: ApiKey::EndTxn,
                down_ms: pick(&mut rng, 100, 1_500),
            },
        });
    }
}

/// Crashes of the pipelines' workers, cuts between a worker and a node,
/// and a spell of latency that reorders what travels on different
/// connections (a worker's AddPartitionsToTxn, Produce and EndTxn each go
/// on their own).
fn worker_faults(spec: &mut Spec, rng: &mut Rng, workers: usize, nodes: u32) {
    if rng.next_u64().is_multiple_of(2) {
        let at_ms = pick(rng, 300, spec.safety_ms - 2_000);
        spec.faults.push(Scheduled {
            at_ms,
            fault: Fault::Latency {
                max_ms: pick(rng, 20, 300),
                for_ms: pick(rng, 500, 4_000),
            },
        });
    }
    for _ in 0..pick(rng, 0, 4) {
        let at_ms = pick(rng, 300, spec.safety_ms - 1_000);
        let worker = format!("eos{}", rng.next_u64() % workers as u64);
        let fault = if rng.next_u64().is_multiple_of(2) {
            Fault::CrashHost {
                host: worker,
                down_ms: pick(rng, 100, 3_000),
            }
        } else {
            Fault::Partition {
                client: worker,
                node: pick(rng, 1, nodes as u64) as u32,
                for_ms: pick(rng, 100, 5_000),
            }
        };
        spec.faults.push(Scheduled { at_ms, fault });
    }
}

/// Adds 1-3 exactly-once workers over a smaller input, and the broker
/// settings their transactions need in a ten-second run; returns how
/// many workers.
fn with_pipelines(spec: &mut Spec, rng: &mut Rng) -> usize {
    spec.workload.partitions = pick(rng, 1, 4) as i32;
    spec.workload.records_per_producer = pick(rng, 50, 300) as usize;
    spec.workload.send_interval_ms = (spec.safety_ms * 8 / 10 * spec.workload.burst as u64
        / spec.workload.records_per_producer as u64)
        .max(1);
    let workers = pick(rng, 1, 3).min(spec.workload.partitions as u64) as usize;
    spec.workload.eos = Some(EosWorkload {
        workers,
        output_partitions: pick(rng, 1, 3) as i32,
        abort_percent: pick(rng, 0, 20),
        records_per_transaction: pick(rng, 5, 40) as usize,
        transaction_timeout_ms: 3_000,
    });
    for (key, value) in [
        ("transaction.state.log.num.partitions", "5"),
        ("offsets.topic.num.partitions", "5"),
        (
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            "500",
        ),
    ] {
        spec.broker.push((key.into(), value.into()));
    }
    workers
}

/// Nodes of the `replicated` scenario.
const REPLICATED_NODES: u32 = 3;

pub fn replicated(seed: u64) -> Spec {
    let mut rng = Rng::from_seed(seed);
    let mut spec = base("replicated", seed, &mut rng);
    spec.nodes = REPLICATED_NODES;
    let voters: Vec<String> = (1..=REPLICATED_NODES)
        .map(|n| format!("{n}@node{n}:9092"))
        .collect();
    spec.broker.extend([
        ("controller.quorum.voters".into(), voters.join(",")),
        // Short enough for the faults of a ten-second run to fence
        // brokers, move leaders and shrink and grow ISRs.
        ("broker.session.timeout.ms".into(), "2000".into()),
        ("broker.heartbeat.interval.ms".into(), "500".into()),
        ("replica.lag.time.max.ms".into(), "1500".into()),
    ]);
    spec.workload.replication_factor = REPLICATED_NODES as i16;
    spec.workload.min_insync_replicas = Some(2);
    spec.workload.bootstrap_nodes = REPLICATED_NODES;
    let node = |rng: &mut Rng| pick(rng, 1, REPLICATED_NODES as u64) as u32;
    for _ in 0..pick(&mut rng, 2, 7) {
        let at_ms = pick(&mut rng, 500, spec.safety_ms - 1_000);
        let fault = match rng.next_u64() % 5 {
            0 | 1 => Fault::Crash {
                node: node(&mut rng),
                damage: CrashFault::ALL[(rng.next_u64() % 4) as usize],
                down_ms: pick(&mut rng, 10, 2_500),
            },
            2 => {
                let a = node(&mut rng);
                let b = a % REPLICATED_NODES + 1;
                Fault::PartitionNodes {
                    a,
                    b,
                    for_ms: pick(&mut rng, 100, 4_000),
                }
            }
            3 => Fault::Partition {
                client: format!(
                    "producer{}",
                    rng.next_u64() % spec.workload.producers as u64
                ),
                node: node(&mut rng),
                for_ms: pick(&mut rng, 100, 3_000),
            },
            _ => Fault::SlowDisk {
                node: node(&mut rng),
                latency_ms: pick(&mut rng, 5, 300),
                for_ms: pick(&mut rng, 100, 3_000),
            },
        };
        spec.faults.push(Scheduled { at_ms, fault });
    }
    let jumps = pick(&mut rng, 0, 2);
    spec.faults.extend(clock_jumps(
        &mut rng,
        jumps,
        spec.safety_ms,
        REPLICATED_NODES,
    ));
    spec
}

/// The spec of a scenario's seed, with a mutation of the node selected
/// (it takes effect only when built with the `mutations` feature).
pub fn with_mutation(mut spec: Spec, mutation: Option<&str>) -> Spec {
    if let Some(name) = mutation {
        spec.broker.push((
            sluice_core::config::MUTATION_KEY.to_string(),
            name.to_string(),
        ));
    }
    spec
}

/// The one command that reruns a seed exactly, with its mutation and the
/// feature build a mutation needs.
pub fn replay_command(scenario: &str, seed: u64, mutation: Option<&str>) -> String {
    match mutation {
        Some(name) => format!(
            "cargo run --release -p sluice-scenarios --features mutations --bin sluice-sim -- replay --scenario {scenario} --seed {seed:#x} --mutation {name}"
        ),
        None => format!(
            "cargo run --release -p sluice-scenarios --bin sluice-sim -- replay --scenario {scenario} --seed {seed:#x}"
        ),
    }
}

/// Refuses a mutation this build cannot run, in one line: without the
/// `mutations` feature it says how to build with it (`arguments` are the
/// command's own, to repeat), and with it it lists the known names.
pub fn check_mutation(mutation: Option<&str>, arguments: &[String]) -> Result<(), String> {
    let Some(name) = mutation else {
        return Ok(());
    };
    if !cfg!(feature = "mutations") {
        let arguments: Vec<String> = arguments
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                    format!("'{}'", a.replace('\'', r"'\''"))
                } else {
                    a.clone()
                }
            })
            .collect();
        return Err(format!(
            "mutation `{name}` needs a build with the mutations feature, which this one lacks; run: cargo run --release -p sluice-scenarios --features mutations --bin sluice-sim -- {}",
            arguments.join(" ")
        ));
    }
    let known: Vec<&str> = sluice_core::config::Mutation::ALL
        .iter()
        .map(|m| m.name())
        .collect();
    if known.contains(&name) {
        Ok(())
    } else {
        Err(format!("no mutation `{name}`; known: {}", known.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutation_is_checked_before_any_run() {
        assert_eq!(check_mutation(None, &[]), Ok(()));
        let arguments = [
            "sweep".to_string(),
            "--mutation".into(),
            "offset-gap".into(),
        ];
        let checked = check_mutation(Some("offset-gap"), &arguments);
        if cfg!(feature = "mutations") {
            assert_eq!(checked, Ok(()));
        } else {
            let why = checked.expect_err("refused without the feature");
            assert!(
                why.ends_with(
                    "--features mutations --bin sluice-sim -- sweep --mutation offset-gap"
                ),
                "{why}"
            );
            assert!(!why.contains('\n'), "{why}");
        }
        let unknown = check_mutation(Some("no-such"), &arguments).expect_err("refused");
        assert!(unknown.contains("no-such"), "{unknown}");
    }

    #[test]
    fn a_mutated_replay_command_builds_the_feature() {
        assert_eq!(
            replay_command("groups", 42, None),
            "cargo run --release -p sluice-scenarios --bin sluice-sim -- replay --scenario groups --seed 0x2a"
        );
        assert!(replay_command("groups", 42, Some("offset-gap"))
            .contains("--features mutations --bin sluice-sim -- replay --scenario groups --seed 0x2a --mutation offset-gap"));
    }
}
