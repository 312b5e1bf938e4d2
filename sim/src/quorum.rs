//! A fault campaign for the controller quorum: N real nodes
//! (`Node<MemStorage>`, all voters) on the in-process `Cluster`, their
//! Raft traffic in Kafka's frames over the harness's links, the quorum
//! state and metadata log on each node's storage. A seed draws a schedule
//! of crashes (unsynced writes lost or torn), links cut and healed, and
//! wall-clock jumps; then every fault heals and the quorum must converge.
//!
//! Checked after every step of the harness:
//! - at most one leader per epoch, over the whole run and across restarts;
//! - a voter's durable vote in an epoch never changes, across restarts;
//! - committed entries are never lost or changed: every node's committed
//!   prefix agrees with every other's, and each committed entry is held
//!   by a majority of the voters (whose logs, after a crash, are what was
//!   durable);
//! - no node hands out an entry above its commit point.
//!
//! And once healed: one leader that every voter follows, with every
//! voter's log committed up to the leader's end, within
//! `HEALED_CONVERGENCE_MS`.

use std::collections::BTreeMap;

use bytes::Bytes;
use sluice_core::metadata_records::{ConfigRecord, MetadataRecord};
use sluice_core::raft::{Entry, QuorumState, Role};
use sluice_core::rng::Rng;
use sluice_core::NodeId;

use crate::cluster::{Cluster, ClusterConfig, CrashLoss};

/// Simulated time with faults.
pub const CHAOS_MS: i64 = 15_000;
/// After the faults heal, the quorum must have converged within this.
pub const HEALED_CONVERGENCE_MS: i64 = 15_000;
/// The slowest sync of a seed on slow disks.
const SLOW_SYNC_MS_MAX: i64 = 200;
/// How often the campaign proposes a record to the leader.
const PROPOSE_INTERVAL_MS: i64 = 50;
/// Steps one run may take before it fails as a livelock.
const STEPS_MAX: u64 = 2_000_000;

/// One run's settings.
#[derive(Debug, Clone)]
pub struct QuorumRun {
    pub seed: u64,
    pub voters: i32,
    /// Extra broker config pairs (a mutation, under the feature).
    pub broker: Vec<(String, String)>,
    pub faults: bool,
}

/// What a run saw, for the sweep's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumStats {
    pub epochs: usize,
    pub committed: usize,
    pub crashes: u64,
    pub cuts: u64,
    pub steps: u64,
    /// From the heal to convergence.
    pub convergence_ms: i64,
}

struct Checker {
    voters: Vec<NodeId>,
    leaders: BTreeMap<i32, NodeId>,
    votes: BTreeMap<(NodeId, i32), NodeId>,
    committed: Vec<Entry>,
}

impl Checker {
    fn check_vote(&mut self, at: i64, id: NodeId, durable: QuorumState) -> Result<(), String> {
        if let Some(voted) = durable.voted_id {
            let first = *self
                .votes
                .entry((id, durable.leader_epoch))
                .or_insert(voted);
            if first != voted {
                return Err(format!(
                    "[one-vote-per-epoch] at {at} ms: n{id} voted for n{first} and then n{voted} in epoch {}",
                    durable.leader_epoch
                ));
            }
        }
        Ok(())
    }

    fn check(&mut self, cluster: &Cluster) -> Result<(), String> {
        let at = cluster.now_ms();
        let mut logs: BTreeMap<NodeId, &[Entry]> = BTreeMap::new();
        for id in self.voters.clone() {
            let node = cluster.node(id);
            let quorum = node.quorum().expect("every node is a voter");
            let Some(replica) = quorum.replica() else {
                // Restarting: its log and vote are what it read from disk.
                logs.insert(id, quorum.entries());
                self.check_vote(at, id, quorum.durable_state())?;
                continue;
            };
            let epoch = replica.leader_epoch();
            if replica.role() == Role::Leader {
                let leader = *self.leaders.entry(epoch).or_insert(id);
                if leader != id {
                    return Err(format!(
                        "[one-leader-per-epoch] at {at} ms: n{id} and n{leader} both lead epoch {epoch}"
                    ));
                }
            }
            self.check_vote(at, id, replica.quorum_state_durable())?;
            let entries = replica.entries();
            let high_watermark = replica.high_watermark() as usize;
            if node.quorum_committed() > replica.high_watermark() {
                return Err(format!(
                    "[applied-below-commit] at {at} ms: n{id} applied {} entries above its commit point {high_watermark}",
                    node.quorum_committed()
                ));
            }
            let overlap = high_watermark.min(self.committed.len());
            if entries[..overlap] != self.committed[..overlap] {
                let offset = (0..overlap)
                    .find(|&i| entries[i] != self.committed[i])
                    .unwrap_or(0);
                return Err(format!(
                    "[committed-kept] at {at} ms: n{id}'s committed entry {offset} is {:?}, committed before as {:?}",
                    entries[offset], self.committed[offset]
                ));
            }
            if high_watermark > self.committed.len() {
                self.committed = entries[..high_watermark].to_vec();
            }
            logs.insert(id, entries);
        }
        let majority = self.voters.len() / 2 + 1;
        for (offset, entry) in self.committed.iter().enumerate() {
            let holders = logs
                .values()
                .filter(|log| log.get(offset) == Some(entry))
                .count();
            if holders < majority {
                return Err(format!(
                    "[committed-on-majority] at {at} ms: committed entry {offset} ({entry:?}) is on {holders} voters, fewer than a majority"
                ));
            }
        }
        Ok(())
    }
}

fn voters_value(voters: i32) -> String {
    (1..=voters)
        .map(|id| format!("{id}@node{id}:9092"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The broker config of a run's nodes: every node a voter.
pub fn quorum_broker_config(voters: i32) -> Vec<(String, String)> {
    vec![("controller.quorum.voters".into(), voters_value(voters))]
}

/// Runs one seed; the first violation, with the seed, on failure.
pub fn run_quorum(run: &QuorumRun) -> Result<QuorumStats, String> {
    let mut config = ClusterConfig::new(run.seed, run.voters);
    config.broker = quorum_broker_config(run.voters);
    config.broker.extend(run.broker.iter().cloned());
    config.steps_max = STEPS_MAX;
    // Some seeds run on slow disks: a leader's own sync then often ends
    // after its followers synced and fetched again.
    if run.seed.is_multiple_of(3) {
        config.sync_latency_ms_max = SLOW_SYNC_MS_MAX;
    }
    let voters: Vec<NodeId> = (1..=run.voters).map(NodeId).collect();
    let mut cluster = Cluster::new(config);
    let mut rng = Rng::from_seed(run.seed ^ 0x71_756f_7275_6d00);
    for (i, &a) in voters.iter().enumerate() {
        for &b in &voters[i + 1..] {
            cluster.link_up(a, b);
        }
    }
    let mut checker = Checker {
        voters: voters.clone(),
        leaders: BTreeMap::new(),
        votes: BTreeMap::new(),
        committed: Vec::new(),
    };
    let mut stats = QuorumStats::default();
    let fail = |why: String| format!("seed {} ({} voters): {why}", run.seed, run.voters);
    let mut cut: Vec<(NodeId, NodeId)> = Vec::new();
    let mut proposals = 0u64;
    let mut next_proposal_ms = 0;
    let mut next_fault_ms = cluster.now_ms() + 500 + (rng.next_u64() % 1_000) as i64;
    while cluster.now_ms() < CHAOS_MS {
        if run.faults && cluster.now_ms() >= next_fault_ms {
            match draw_fault(&mut cluster, &mut rng, &voters, &mut cut, 5) {
                Some(Drawn::Crash) => stats.crashes += 1,
                Some(Drawn::Cut) => stats.cuts += 1,
                None => {}
            }
            next_fault_ms = cluster.now_ms() + 100 + (rng.next_u64() % 1_500) as i64;
        }
        if cluster.now_ms() >= next_proposal_ms {
            proposals += propose(&mut cluster, &voters, proposals);
            next_proposal_ms = cluster.now_ms() + PROPOSE_INTERVAL_MS;
        }
        let fault_ms = if run.faults { next_fault_ms } else { CHAOS_MS };
        let until = next_proposal_ms.min(fault_ms).min(CHAOS_MS);
        cluster.step_until(until);
        stats.steps += 1;
        if stats.steps > STEPS_MAX {
            return Err(fail(format!("still running after {STEPS_MAX} steps")));
        }
        checker.check(&cluster).map_err(fail)?;
    }
    for (a, b) in cut.drain(..) {
        cluster.link_up(a, b);
    }
    let healed_ms = cluster.now_ms();
    loop {
        if converged(&cluster, &voters) {
            break;
        }
        if cluster.now_ms() - healed_ms > HEALED_CONVERGENCE_MS {
            return Err(fail(format!(
                "[converges] no convergence within {HEALED_CONVERGENCE_MS} ms of the heal: {}",
                describe(&cluster, &voters)
            )));
        }
        if !cluster.step() {
            return Err(fail("the cluster went idle".into()));
        }
        stats.steps += 1;
        checker.check(&cluster).map_err(fail)?;
    }
    stats.convergence_ms = cluster.now_ms() - healed_ms;
    stats.epochs = checker.leaders.len();
    stats.committed = checker.committed.len();
    Ok(stats)
}

/// A fault drawn by `draw_fault` that the campaigns count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drawn {
    Crash,
    Cut,
}

/// Draws one fault from `rng` among `kinds` equally likely outcomes: 0 a
/// crash of a node (unsynced writes lost or torn), 1 and 2 a cut between
/// two nodes, 3 up to `kinds - 2` the heal of a cut, the last a wall-clock
/// jump of up to an hour either way. `cut` holds the links cut now.
pub fn draw_fault(
    cluster: &mut Cluster,
    rng: &mut Rng,
    nodes: &[NodeId],
    cut: &mut Vec<(NodeId, NodeId)>,
    kinds: u64,
) -> Option<Drawn> {
    assert!(kinds >= 5, "every kind of fault has a draw");
    let pick = |rng: &mut Rng| nodes[(rng.next_u64() % nodes.len() as u64) as usize];
    match rng.next_u64() % kinds {
        0 => {
            let loss = if rng.next_u64().is_multiple_of(2) {
                CrashLoss::LoseUnsynced
            } else {
                CrashLoss::TearUnsynced
            };
            cluster.crash(pick(rng), loss);
            Some(Drawn::Crash)
        }
        1 | 2 => {
            let (a, b) = (pick(rng), pick(rng));
            if a != b && !cut.contains(&(a.min(b), a.max(b))) {
                cluster.cut(a, b);
                cut.push((a.min(b), a.max(b)));
                return Some(Drawn::Cut);
            }
            None
        }
        drawn if drawn < kinds - 1 => {
            if !cut.is_empty() {
                let (a, b) = cut.remove((rng.next_u64() % cut.len() as u64) as usize);
                cluster.link_up(a, b);
            }
            None
        }
        _ => {
            let delta = (rng.next_u64() % 7_200_000) as i64 - 3_600_000;
            cluster.jump_wall_clock(pick(rng), delta);
            None
        }
    }
}

/// Proposes one record (numbered, so every entry differs) to whichever
/// node leads now; 1 when one took it.
fn propose(cluster: &mut Cluster, voters: &[NodeId], number: u64) -> u64 {
    let leader = voters
        .iter()
        .copied()
        .find(|&id| cluster.node(id).quorum().and_then(|q| q.role()) == Some(Role::Leader));
    let Some(leader) = leader else {
        return 0;
    };
    // A broker config record, numbered so every entry differs; each node
    // applies it to its image like any committed record.
    let record = MetadataRecord::Config(ConfigRecord {
        resource_type: 4,
        resource_name: String::new(),
        name: "sluice.sim.counter".into(),
        value: Some(number.to_string()),
    });
    let record = Bytes::from(record.encode().expect("a small record encodes"));
    let taken = cluster.input(leader, |node, now| node.quorum_propose(now, vec![record]));
    u64::from(taken.is_ok())
}

/// One leader, followed by every voter in its epoch, every log committed
/// to the leader's end, every broker registered and unfenced.
pub fn converged(cluster: &Cluster, voters: &[NodeId]) -> bool {
    let replicas: Vec<_> = voters
        .iter()
        .filter_map(|&id| cluster.node(id).quorum().and_then(|q| q.replica()))
        .collect();
    if replicas.len() != voters.len() {
        return false;
    }
    let Some(leader) = replicas.iter().find(|r| r.role() == Role::Leader) else {
        return false;
    };
    let end = leader.entries().len() as i64;
    let quorum_converged = replicas.iter().all(|r| {
        r.leader_epoch() == leader.leader_epoch()
            && r.leader_id() == Some(leader.id())
            && r.high_watermark() == end
            && r.entries().len() as i64 == end
    });
    // Every broker registered and unfenced, as every node's image says.
    quorum_converged
        && voters.iter().all(|&id| {
            let node = cluster.node(id);
            node.is_unfenced()
                && node.broker().live_brokers().len() == voters.len()
                && node.broker().controller_id() == leader.id().0
        })
}

fn describe(cluster: &Cluster, voters: &[NodeId]) -> String {
    voters
        .iter()
        .map(
            |&id| match cluster.node(id).quorum().and_then(|q| q.replica()) {
                Some(r) => format!(
                    "n{id} {:?} epoch {} leader {:?} end {} hw {}",
                    r.role(),
                    r.leader_epoch(),
                    r.leader_id(),
                    r.entries().len(),
                    r.high_watermark()
                ),
                None => format!("n{id} not started"),
            } + &format!(
                " unfenced {} sees brokers {:?}",
                cluster.node(id).is_unfenced(),
                cluster.node(id).broker().live_brokers().iter().map(|b| b.id).collect::<Vec<_>>()
            ),
        )
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs seeds `start..start + count` of `voters` voters; the stats, or
/// the first failure.
pub fn sweep_quorum(voters: i32, start: u64, count: u64) -> Result<Vec<QuorumStats>, String> {
    (start..start + count)
        .map(|seed| {
            run_quorum(&QuorumRun {
                seed,
                voters,
                broker: Vec::new(),
                faults: true,
            })
        })
        .collect()
}

/// Entries the first leader of the Figure 8 script writes while only one
/// follower fetches: more than two fetches' worth, so a follower catching
/// up later holds some of them, and not the next leader's own entry,
/// across two of its fetches.
const FIGURE_EIGHT_ENTRIES: usize = 40;
/// Each stage of the script must come about within this.
const FIGURE_EIGHT_STAGE_MS: i64 = 30_000;

/// Raft's Figure 8 on five voters, scripted with links cut and healed
/// (no crash: a node cut from every other is as good as down, and keeps
/// its log for the checkers), with the campaign's checkers after every
/// step. Voter `a` is the leader once the cluster has converged; `b`..`e`
/// the others in id order.
///
/// 1. `a` leads with only `b` linked: it writes `FIGURE_EIGHT_ENTRIES`
///    entries of its epoch, which only `b` fetches.
/// 2. `c`, `d` and `e` are linked to each other by way of `e` only, so
///    only `e` can gather three votes: it leads a later epoch (its
///    leader-change entry where `a`'s entries start) and is cut from
///    every node at once, before `c` or `d` fetch that entry.
/// 3. `a`, `b`, `c` and `d` are linked: `a` or `b` (whose logs are the
///    most up to date) leads a later epoch still; the other fetches, as do
///    `c` and `d`, catching up on `a`'s entries 16 at a time. As soon as
///    the leader counts a majority holding some of them, and before `c`
///    or `d` hold its own leader-change entry, `a` and `b` are cut off.
///    A leader that commits older epochs by counting has committed them.
/// 4. `c`, `d` and `e` are linked: only `e` can win (its last epoch is
///    later than theirs), and it truncates `a`'s entries from `c` and `d`.
///    Entries committed in 3 are then on two voters: the checkers say so.
/// 5. Every link heals and the quorum converges, as in the campaign.
///
/// A script step that does not come about (a leader that is not the one
/// the script needs) fails with `[figure-8 script]`; a checker's failure
/// names the checker.
pub fn run_figure_eight(seed: u64, broker: &[(String, String)]) -> Result<FigureEight, String> {
    let voters: Vec<NodeId> = (1..=5).map(NodeId).collect();
    let mut config = ClusterConfig::new(seed, 5);
    config.broker = quorum_broker_config(5);
    config.broker.extend(broker.iter().cloned());
    config.steps_max = STEPS_MAX;
    let mut cluster = Cluster::new(config);
    for (i, &x) in voters.iter().enumerate() {
        for &y in &voters[i + 1..] {
            cluster.link_up(x, y);
        }
    }
    let mut script = Script {
        checker: Checker {
            voters: voters.clone(),
            leaders: BTreeMap::new(),
            votes: BTreeMap::new(),
            committed: Vec::new(),
        },
        stats: QuorumStats::default(),
    };
    let fail = |why: String| format!("figure 8, seed {seed}: {why}");
    script
        .run_until(&mut cluster, "the first convergence", |c| {
            converged(c, &voters)
        })
        .map_err(fail)?;
    let a = leader_of(&cluster, &voters).expect("converged under a leader");
    let others: Vec<NodeId> = voters.iter().copied().filter(|&id| id != a).collect();
    let (b, c, d, e) = (others[0], others[1], others[2], others[3]);
    figure_eight_stage_one(&mut cluster, &mut script, [a, b, c, d, e]).map_err(fail)?;
    let epoch_third =
        figure_eight_stage_two(&mut cluster, &mut script, [a, b, c, d, e]).map_err(fail)?;
    let (older_offset_first, high_watermark_at_cut) =
        figure_eight_stage_three(&mut cluster, &mut script, [a, b, c, d, e], epoch_third)
            .map_err(fail)?;
    // 4: `e` back with `c` and `d`.
    cluster.link_up(e, c);
    cluster.link_up(e, d);
    script
        .run_until(&mut cluster, "e leading c and d", |cluster| {
            let leader = replica_of(cluster, e);
            leader.is_some_and(|r| r.role() == Role::Leader)
                && [c, d].iter().all(|&id| {
                    replica_of(cluster, id).is_some_and(|r| {
                        r.leader_id() == Some(e)
                            && r.high_watermark() == leader.map_or(0, |l| l.high_watermark())
                            && r.entries().len() == leader.map_or(0, |l| l.entries().len())
                    })
                })
        })
        .map_err(fail)?;
    // 5: everything heals.
    for (i, &x) in voters.iter().enumerate() {
        for &y in &voters[i + 1..] {
            cluster.link_up(x, y);
        }
    }
    let healed_ms = cluster.now_ms();
    script
        .run_until(&mut cluster, "convergence after the heal", |c| {
            converged(c, &voters)
        })
        .map_err(fail)?;
    let mut stats = script.stats;
    stats.convergence_ms = cluster.now_ms() - healed_ms;
    stats.epochs = script.checker.leaders.len();
    stats.committed = script.checker.committed.len();
    Ok(FigureEight {
        stats,
        older_offset_first,
        high_watermark_at_cut,
    })
}

/// What a Figure 8 script that passed saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FigureEight {
    pub stats: QuorumStats,
    /// The offset of the first entry `a` wrote with only `b` fetching.
    pub older_offset_first: i64,
    /// The high watermark of the third leader when it was cut off, with a
    /// majority holding entries from `older_offset_first` on.
    pub high_watermark_at_cut: i64,
}

/// The checkers, run after every step of a script.
struct Script {
    checker: Checker,
    stats: QuorumStats,
}

impl Script {
    fn run_until(
        &mut self,
        cluster: &mut Cluster,
        what: &str,
        done: impl Fn(&Cluster) -> bool,
    ) -> Result<(), String> {
        let start_ms = cluster.now_ms();
        while !done(cluster) {
            if cluster.now_ms() - start_ms > FIGURE_EIGHT_STAGE_MS {
                return Err(format!(
                    "[figure-8 script] no {what} within {FIGURE_EIGHT_STAGE_MS} ms: {}",
                    describe(cluster, &self.checker.voters)
                ));
            }
            if !cluster.step() {
                return Err(format!("[figure-8 script] idle before {what}"));
            }
            self.stats.steps += 1;
            if self.stats.steps > STEPS_MAX {
                return Err(format!("still running after {STEPS_MAX} steps"));
            }
            self.checker.check(cluster)?;
        }
        Ok(())
    }
}

fn replica_of(cluster: &Cluster, id: NodeId) -> Option<&sluice_core::raft::RaftReplica> {
    cluster.node(id).quorum().and_then(|q| q.replica())
}

fn leader_of(cluster: &Cluster, voters: &[NodeId]) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .find(|&id| replica_of(cluster, id).is_some_and(|r| r.role() == Role::Leader))
}

fn last_epoch(cluster: &Cluster, id: NodeId) -> i32 {
    replica_of(cluster, id)
        .and_then(|r| r.entries().last())
        .map_or(0, |entry| entry.epoch)
}

/// 1: `a` writes entries that only `b` fetches; `c` and `d` are each
/// linked to `e` alone. Ends once `b` holds all of them.
fn figure_eight_stage_one(
    cluster: &mut Cluster,
    script: &mut Script,
    [a, b, c, d, e]: [NodeId; 5],
) -> Result<(), String> {
    for (x, y) in [(a, c), (a, d), (a, e), (b, c), (b, d), (b, e), (c, d)] {
        cluster.cut(x, y);
    }
    let offset_first = replica_of(cluster, a).map_or(0, |r| r.entries().len());
    let records = (0..FIGURE_EIGHT_ENTRIES)
        .map(|number| {
            let record = MetadataRecord::Config(ConfigRecord {
                resource_type: 4,
                resource_name: String::new(),
                name: "sluice.sim.figure-eight".into(),
                value: Some(number.to_string()),
            });
            Bytes::from(record.encode().expect("a small record encodes"))
        })
        .collect();
    cluster
        .input(a, |node, now| node.quorum_propose(now, records))
        .map_err(|why| format!("[figure-8 script] n{a} refused the entries: {why:?}"))?;
    let end_offset = offset_first + FIGURE_EIGHT_ENTRIES;
    script.run_until(cluster, "b holding a's entries", |cluster| {
        replica_of(cluster, b).is_some_and(|r| r.entries().len() >= end_offset)
    })
}

/// 2: `e` leads a later epoch with the votes of `c` and `d`, and is cut
/// off before they fetch from it; then `a` (cut off from the majority)
/// stops leading and `b` holds all of its log. Returns `e`'s epoch.
fn figure_eight_stage_two(
    cluster: &mut Cluster,
    script: &mut Script,
    [a, b, c, d, e]: [NodeId; 5],
) -> Result<i32, String> {
    script.run_until(cluster, "e leading", |cluster| {
        replica_of(cluster, e).is_some_and(|r| r.role() == Role::Leader)
    })?;
    cluster.cut(e, c);
    cluster.cut(e, d);
    let epoch = replica_of(cluster, e).map_or(0, |r| r.leader_epoch());
    if last_epoch(cluster, e) != epoch || [c, d].iter().any(|&id| last_epoch(cluster, id) >= epoch)
    {
        return Err(format!(
            "[figure-8 script] e's epoch {epoch} entry is not on e alone: {}",
            describe(cluster, &script.checker.voters)
        ));
    }
    script.run_until(
        cluster,
        "a stepping down with b holding its log",
        |cluster| {
            let (Some(first), Some(second)) = (replica_of(cluster, a), replica_of(cluster, b))
            else {
                return false;
            };
            first.role() != Role::Leader && first.entries() == second.entries()
        },
    )?;
    Ok(epoch)
}

/// 3: `a` or `b` leads a later epoch; once it counts a majority holding
/// entries past the ones `c` and `d` had, `a` and `b` are cut off, before
/// `c` or `d` hold an entry of the new epoch. Returns the offset `c`'s
/// log ended at, and the leader's high watermark when it was cut off.
fn figure_eight_stage_three(
    cluster: &mut Cluster,
    script: &mut Script,
    [a, b, c, d, e]: [NodeId; 5],
    epoch_third: i32,
) -> Result<(i64, i64), String> {
    let offset_first = replica_of(cluster, c).map_or(0, |r| r.entries().len()) as i64;
    for (x, y) in [(a, c), (a, d), (b, c), (b, d), (c, d)] {
        cluster.link_up(x, y);
    }
    let majority = 3;
    script.run_until(cluster, "a majority counted past c's log", |cluster| {
        [a, b].iter().any(|&id| {
            replica_of(cluster, id)
                .filter(|r| r.role() == Role::Leader && r.leader_epoch() > epoch_third)
                .and_then(|r| r.voter_progress())
                .is_some_and(|progress| {
                    let past = progress
                        .iter()
                        .filter(|(_, end)| end.is_some_and(|end| end > offset_first))
                        .count();
                    past >= majority
                })
        })
    })?;
    let high_watermark = leader_of(cluster, &[a, b])
        .and_then(|id| replica_of(cluster, id))
        .map_or(0, |r| r.high_watermark());
    for x in [a, b] {
        for y in [c, d, e] {
            cluster.cut(x, y);
        }
    }
    cluster.cut(a, b);
    if [c, d]
        .iter()
        .any(|&id| last_epoch(cluster, id) > epoch_third)
    {
        return Err(format!(
            "[figure-8 script] c or d holds an entry of the epoch after e's: {}",
            describe(cluster, &script.checker.voters)
        ));
    }
    Ok((offset_first, high_watermark))
}
