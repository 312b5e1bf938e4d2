//! A Raft replica in KIP-595's pull-based form (KRaft), as a sans-IO state
//! machine: the controller quorum's consensus on `__cluster_metadata-0`.
//!
//! Inputs, each taking the monotonic `now_ms` and each ending with
//! `invariants()`: `handle_message`, `handle_timeout`, `propose`, `resign`
//! and `handle_persisted`. After every input the driver drains
//! `poll_output` until `None`, carrying the outputs out in order, then asks
//! `poll_timeout` for the next deadline.
//!
//! Durability is the driver's: `PersistQuorumState` must be written (Kafka's
//! `quorum-state` file) and `Append`/`Truncate` applied to the log, and the
//! driver reports each as durable through `handle_persisted`. Messages never
//! leave before the quorum state they depend on is durable: the replica holds
//! every send while a quorum-state write is outstanding (`send`, in
//! `election.rs`), so a vote, a candidacy or an epoch is never announced and
//! then forgotten by a crash. The leader counts its own log toward the high
//! watermark only up to what `LogUpTo` confirmed, and a follower fetches its
//! next offset only once the entries before it are durable, so every offset
//! the leader counts is on disk.
//!
//! The protocol rules live in `election.rs` (epochs, votes, the states'
//! transitions) and `replication.rs` (fetch, divergence, the high
//! watermark); `log.rs` is the replica's view of its log and epoch cache.
//! Not yet wired into `Node`: the messages map one to one onto Kafka's Vote,
//! BeginQuorumEpoch, EndQuorumEpoch and Fetch (see `message.rs`), whose
//! frames `wire.rs` writes and reads (entries as record batches), and
//! `quorum_file.rs` is the quorum state as Kafka's `quorum-state` file.

mod election;
mod log;
pub mod message;
pub mod quorum_file;
mod replication;
#[cfg(test)]
mod rule_tests;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::rng::Rng;
use crate::types::NodeId;
use log::RaftLog;
pub use message::{Entry, FetchError, FetchResult, Message, Record};

/// `controller.quorum.election.timeout.ms`: the least wait before standing.
pub const ELECTION_TIMEOUT_MS: i64 = 1000;
/// The random part added to every election timeout, so that replicas that
/// lost their leader together do not stand together forever.
pub const ELECTION_JITTER_MS_MAX: i64 = 1000;
/// `controller.quorum.fetch.timeout.ms`: a follower with no good fetch
/// answer for this long stands for election.
pub const FETCH_TIMEOUT_MS: i64 = 2000;
/// How long the leader holds a caught-up fetch before answering it empty.
pub const FETCH_WAIT_MS_MAX: i64 = 500;
/// A follower sends its fetch again when no answer came for this long.
pub const FETCH_RESEND_MS: i64 = 1000;
/// A follower waits this long after a refused fetch before the next one.
pub const FETCH_RETRY_BACKOFF_MS: i64 = 50;
/// The leader repeats BeginQuorumEpoch to voters not yet heard from.
pub const BEGIN_QUORUM_EPOCH_RESEND_MS: i64 = 500;
/// A voter named n-th among a resigning leader's successors waits n steps.
pub const END_QUORUM_EPOCH_BACKOFF_STEP_MS: i64 = 200;
pub const ENTRIES_PER_FETCH_MAX: usize = 16;
pub const RECORDS_PER_PROPOSAL_MAX: usize = 64;
/// Proposals are refused while this many entries wait for commit.
pub const UNCOMMITTED_ENTRIES_MAX: i64 = 1024;
pub const VOTERS_MAX: usize = 16;
/// Outputs one input can produce, at most, before the driver drains them.
pub const OUTPUTS_MAX: usize = 1024;
/// Sends held for a quorum-state write; more are dropped as a lossy
/// network would.
pub const HELD_SENDS_MAX: usize = 256;

/// The election timers, from `controller.quorum.election.timeout.ms` and
/// `controller.quorum.fetch.timeout.ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The least wait before standing; a random part up to
    /// `election_jitter_ms` is added.
    pub election_ms: i64,
    pub election_jitter_ms: i64,
    /// A follower with no good fetch answer for this long stands.
    pub fetch_ms: i64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            election_ms: ELECTION_TIMEOUT_MS,
            election_jitter_ms: ELECTION_JITTER_MS_MAX,
            fetch_ms: FETCH_TIMEOUT_MS,
        }
    }
}

/// The durable election state (Kafka's `quorum-state` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuorumState {
    pub leader_epoch: i32,
    pub leader_id: Option<NodeId>,
    pub voted_id: Option<NodeId>,
}

/// What the driver made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// This quorum state, the latest the replica asked for or an earlier
    /// one (writes complete in the order they were asked for).
    QuorumState(QuorumState),
    /// The log's first `end_offset` entries, as the replica's `Append` and
    /// `Truncate` outputs described them, are durable. A sync issued before
    /// a `Truncate` output covers at most the truncation offset: the
    /// entries written after it are not the ones it synced.
    LogUpTo(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftOutput {
    /// Write this quorum state durably, then report `Persisted::QuorumState`.
    PersistQuorumState(QuorumState),
    /// Write these entries at `offset_first` (the log's end), then report
    /// `Persisted::LogUpTo` once they are durable.
    Append {
        offset_first: i64,
        entries: Vec<Entry>,
    },
    /// Drop every entry from `offset` on.
    Truncate {
        offset: i64,
    },
    Send {
        to: NodeId,
        message: Message,
    },
    /// Every entry below `high_watermark` is committed: it may be applied.
    Committed {
        high_watermark: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    NotLeader {
        leader_hint: Option<NodeId>,
        leader_epoch: i32,
    },
    /// None, or more than `RECORDS_PER_PROPOSAL_MAX`, records.
    RecordCount { count: usize },
    /// `UNCOMMITTED_ENTRIES_MAX` entries already wait for commit.
    Backlog { uncommitted: i64 },
}

/// KIP-595's states, as the replica reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unattached,
    Voted,
    Candidate,
    Leader,
    Follower,
    Resigned,
}

/// Deliberately broken variants, for the tests that show the checkers
/// bite: the replica's own tests, and the node's under the `mutations`
/// feature (never selectable without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "mutations")), allow(dead_code))]
pub enum Mutation {
    None,
    /// A voter grants every candidate of an epoch whose log is good enough.
    VoteTwice,
    /// The leader counts its unsynced entries toward the high watermark.
    HighWatermarkCountsUnpersisted,
    /// The leader answers any fetch with entries, never with DivergingEpoch.
    SkipDivergenceCheck,
    /// The leader commits entries of earlier epochs once a majority holds
    /// them, before its own epoch's first entry is on a majority (Raft's
    /// Figure 8).
    CommitOlderEpochByCounting,
    /// Every later epoch seen restarts the election timer (the liveness bug
    /// the recovery checker found, kept to show that checker bites).
    RestartElectionTimerOnNewEpoch,
}

/// A fetch the leader holds until there is something new to answer with.
#[derive(Debug, Clone, Copy)]
struct ParkedFetch {
    correlation_id: u64,
    fetch_offset: i64,
    deadline_ms: i64,
}

#[derive(Debug)]
struct LeaderState {
    /// The offset of this epoch's leader-change entry.
    epoch_start_offset: i64,
    /// Each follower's last fetch offset that matched this log: durable there.
    follower_end_offsets: BTreeMap<NodeId, i64>,
    /// Voters heard from in this epoch: no more BeginQuorumEpoch for them.
    acknowledged: BTreeSet<NodeId>,
    /// The high watermark each follower was last told: a caught-up fetch
    /// is held only if it would tell the follower nothing new.
    high_watermark_sent: BTreeMap<NodeId, i64>,
    begin_quorum_epoch_resend_ms: i64,
    parked_fetches: BTreeMap<NodeId, ParkedFetch>,
    /// When each follower last fetched in this epoch (check-quorum).
    fetched_ms: BTreeMap<NodeId, i64>,
    /// The leader resigns if, at this time, a majority has not fetched
    /// within the last `check_quorum_ms()` (KAFKA-15489).
    check_quorum_deadline_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct FetchInFlight {
    correlation_id: u64,
    resend_ms: i64,
}

#[derive(Debug)]
struct FollowerState {
    leader_id: NodeId,
    /// Stand for election if no good fetch answer comes before this.
    fetch_timeout_deadline_ms: i64,
    in_flight: Option<FetchInFlight>,
    retry_ms: Option<i64>,
}

#[derive(Debug)]
enum State {
    Unattached {
        election_deadline_ms: i64,
    },
    Voted {
        voted_id: NodeId,
        election_deadline_ms: i64,
    },
    Candidate {
        votes_granted: BTreeSet<NodeId>,
        election_deadline_ms: i64,
    },
    Leader(LeaderState),
    Follower(FollowerState),
    Resigned {
        election_deadline_ms: i64,
    },
}

#[derive(Debug)]
pub struct RaftReplica {
    id: NodeId,
    voters: BTreeSet<NodeId>,
    /// The quorum state in force, maybe not yet durable.
    quorum: QuorumState,
    /// The latest quorum state the driver reported durable.
    quorum_persisted: QuorumState,
    state: State,
    log: RaftLog,
    high_watermark: i64,
    rng: Rng,
    outputs: VecDeque<RaftOutput>,
    /// Sends waiting for `quorum` to become durable.
    held_sends: Vec<(NodeId, Message)>,
    next_correlation_id: u64,
    timeouts: Timeouts,
    mutation: Mutation,
}

impl RaftReplica {
    /// A replica restarting from its durable quorum state and log (empty
    /// and `QuorumState::default()` on first start).
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        persisted: QuorumState,
        log: Vec<Entry>,
        seed: u64,
        now_ms: i64,
    ) -> RaftReplica {
        RaftReplica::with_timeouts(
            id,
            voters,
            persisted,
            log,
            seed,
            now_ms,
            Timeouts::default(),
        )
    }

    /// `new`, with the election timers given.
    pub fn with_timeouts(
        id: NodeId,
        voters: &[NodeId],
        persisted: QuorumState,
        log: Vec<Entry>,
        seed: u64,
        now_ms: i64,
        timeouts: Timeouts,
    ) -> RaftReplica {
        assert!(
            timeouts.election_ms > 0 && timeouts.election_jitter_ms > 0 && timeouts.fetch_ms > 0
        );
        let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
        assert!(voters.contains(&id), "replica {id} is not a voter");
        assert!(voters.len() <= VOTERS_MAX);
        let log = RaftLog::recovered(log);
        // An entry of an epoch is written only after that epoch is durable
        // in the quorum state; a log ahead of it means a lost quorum state.
        assert!(
            log.last_epoch() <= persisted.leader_epoch,
            "log epoch {} ahead of quorum epoch {}",
            log.last_epoch(),
            persisted.leader_epoch
        );
        let mut replica = RaftReplica {
            id,
            voters,
            quorum: persisted,
            quorum_persisted: persisted,
            state: State::Unattached {
                election_deadline_ms: now_ms,
            },
            log,
            high_watermark: 0,
            rng: Rng::from_seed(seed),
            outputs: VecDeque::new(),
            held_sends: Vec::new(),
            next_correlation_id: 1,
            timeouts,
            mutation: Mutation::None,
        };
        replica.state = replica.restarted_state(now_ms);
        replica.pump(now_ms);
        replica.invariants();
        replica
    }

    #[cfg(any(test, feature = "mutations"))]
    pub fn with_mutation(mut self, mutation: Mutation) -> RaftReplica {
        self.mutation = mutation;
        self
    }

    fn mutated(&self, mutation: Mutation) -> bool {
        self.mutation == mutation
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// How long a leader goes on without fetches from a majority before it
    /// resigns: 1.5 fetch timeouts, as Kafka's check-quorum timer.
    fn check_quorum_ms(&self) -> i64 {
        self.timeouts.fetch_ms * 3 / 2
    }

    pub fn leader_epoch(&self) -> i32 {
        self.quorum.leader_epoch
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.quorum.leader_id
    }

    /// The quorum state in force (perhaps not yet durable).
    pub fn quorum_state(&self) -> QuorumState {
        self.quorum
    }

    /// The latest quorum state the driver reported durable: what a crash
    /// now would restart from.
    pub fn quorum_state_durable(&self) -> QuorumState {
        self.quorum_persisted
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The replica's log, as its `Append`/`Truncate` outputs described it.
    pub fn entries(&self) -> &[Entry] {
        self.log.entries()
    }

    /// The leader's view of how far each voter's log is durable, in voter
    /// id order: for itself, its own log as far as the driver reported it
    /// synced; for a follower, the fetch offset of its last fetch in this
    /// epoch that matched this log (`None` until one came). `None` when this
    /// replica does not lead. Read-only, for DescribeQuorum.
    pub fn voter_progress(&self) -> Option<Vec<(NodeId, Option<i64>)>> {
        let State::Leader(leader) = &self.state else {
            return None;
        };
        let progress = self.voters.iter().map(|&voter| {
            let end_offset = if voter == self.id {
                Some(self.log.persisted_end_offset())
            } else {
                leader.follower_end_offsets.get(&voter).copied()
            };
            (voter, end_offset)
        });
        Some(progress.collect())
    }

    pub fn role(&self) -> Role {
        match self.state {
            State::Unattached { .. } => Role::Unattached,
            State::Voted { .. } => Role::Voted,
            State::Candidate { .. } => Role::Candidate,
            State::Leader(_) => Role::Leader,
            State::Follower(_) => Role::Follower,
            State::Resigned { .. } => Role::Resigned,
        }
    }

    pub fn handle_message(&mut self, now_ms: i64, from: NodeId, message: Message) {
        // Observers (brokers fetching the metadata log) come with the wiring.
        if from == self.id || !self.voters.contains(&from) {
            tracing::debug!(from = from.0, "raft message from a non-voter ignored");
            return;
        }
        let (epoch, leader_id) = message.epoch_and_leader();
        if epoch > self.quorum.leader_epoch {
            self.enter_epoch(now_ms, epoch, leader_id);
        } else if let (true, Some(leader_id)) = (epoch == self.quorum.leader_epoch, leader_id) {
            self.learn_leader(now_ms, leader_id);
        }
        self.dispatch(now_ms, from, message);
        self.pump(now_ms);
        self.invariants();
    }

    fn dispatch(&mut self, now_ms: i64, from: NodeId, message: Message) {
        match message {
            Message::VoteRequest { candidate_id, .. } if candidate_id != from => {
                tracing::warn!(
                    from = from.0,
                    "raft vote request for another candidate ignored"
                );
            }
            Message::VoteRequest {
                candidate_epoch,
                last_offset_epoch,
                last_offset,
                ..
            } => self.handle_vote_request(
                now_ms,
                from,
                candidate_epoch,
                (last_offset_epoch, last_offset),
            ),
            Message::VoteResponse {
                leader_epoch,
                vote_granted,
                ..
            } => self.handle_vote_response(now_ms, from, leader_epoch, vote_granted),
            Message::BeginQuorumEpochRequest { .. } => self.handle_begin_quorum_epoch(from),
            Message::BeginQuorumEpochResponse { leader_epoch, .. } => {
                self.note_acknowledged(from, leader_epoch)
            }
            Message::EndQuorumEpochRequest {
                leader_epoch,
                preferred_successors,
                ..
            } => self.handle_end_quorum_epoch(now_ms, from, leader_epoch, &preferred_successors),
            Message::EndQuorumEpochResponse { .. } => {}
            Message::FetchRequest {
                correlation_id,
                current_leader_epoch,
                fetch_offset,
                last_fetched_epoch,
            } => self.handle_fetch_request(
                now_ms,
                from,
                correlation_id,
                current_leader_epoch,
                (fetch_offset, last_fetched_epoch),
            ),
            Message::FetchResponse {
                correlation_id,
                leader_epoch,
                high_watermark,
                result,
                ..
            } => self.handle_fetch_response(
                now_ms,
                from,
                correlation_id,
                leader_epoch,
                high_watermark,
                result,
            ),
        }
    }

    pub fn handle_timeout(&mut self, now_ms: i64) {
        let stand = match &self.state {
            State::Follower(follower) => now_ms >= follower.fetch_timeout_deadline_ms,
            State::Leader(_) => false,
            _ => self
                .election_deadline_ms()
                .is_some_and(|deadline| now_ms >= deadline),
        };
        if stand {
            self.become_candidate(now_ms);
        } else if let State::Follower(follower) = &mut self.state {
            follower_timers_expire(follower, now_ms);
        } else if let State::Leader(_) = self.state {
            self.leader_timeouts(now_ms);
        }
        self.pump(now_ms);
        self.invariants();
    }

    /// When a replica that follows no leader stands for election.
    fn election_deadline_ms(&self) -> Option<i64> {
        match self.state {
            State::Unattached {
                election_deadline_ms,
            }
            | State::Voted {
                election_deadline_ms,
                ..
            }
            | State::Candidate {
                election_deadline_ms,
                ..
            }
            | State::Resigned {
                election_deadline_ms,
            } => Some(election_deadline_ms),
            State::Leader(_) | State::Follower(_) => None,
        }
    }

    /// Appends `records` as the leader; returns the offset of the first.
    pub fn propose(&mut self, now_ms: i64, records: Vec<Bytes>) -> Result<i64, ProposeError> {
        let result = self.append_as_leader(records);
        self.pump(now_ms);
        self.invariants();
        result
    }

    /// The leader steps down (a graceful shutdown): EndQuorumEpoch names
    /// the voters most caught up as its preferred successors.
    pub fn resign(&mut self, now_ms: i64) {
        if let State::Leader(_) = self.state {
            self.become_resigned(now_ms);
        }
        self.pump(now_ms);
        self.invariants();
    }

    pub fn handle_persisted(&mut self, now_ms: i64, persisted: Persisted) {
        match persisted {
            Persisted::QuorumState(quorum) => self.quorum_state_persisted(now_ms, quorum),
            Persisted::LogUpTo(end_offset) => {
                self.log.mark_persisted(end_offset);
                if let State::Leader(_) = self.state {
                    self.advance_leader_high_watermark();
                }
            }
        }
        self.pump(now_ms);
        self.invariants();
    }

    pub fn poll_output(&mut self) -> Option<RaftOutput> {
        self.outputs.pop_front()
    }

    /// The earliest deadline at which `handle_timeout` has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<i64> {
        match &self.state {
            State::Unattached { .. }
            | State::Voted { .. }
            | State::Candidate { .. }
            | State::Resigned { .. } => self.election_deadline_ms(),
            State::Follower(follower) => [
                Some(follower.fetch_timeout_deadline_ms),
                follower.in_flight.map(|in_flight| in_flight.resend_ms),
                follower.retry_ms,
            ]
            .into_iter()
            .flatten()
            .min(),
            State::Leader(leader) => {
                let resend = (leader.acknowledged.len() + 1 < self.voters.len())
                    .then_some(leader.begin_quorum_epoch_resend_ms);
                let parked = leader.parked_fetches.values().map(|p| p.deadline_ms).min();
                let check = (self.voters.len() > 1).then_some(leader.check_quorum_deadline_ms);
                [resend, parked, check].into_iter().flatten().min()
            }
        }
    }

    fn push_output(&mut self, output: RaftOutput) {
        assert!(self.outputs.len() < OUTPUTS_MAX, "outputs not drained");
        self.outputs.push_back(output);
    }

    /// Work every input may have enabled: a follower's next fetch.
    fn pump(&mut self, now_ms: i64) {
        self.maybe_send_fetch(now_ms);
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    pub fn invariants(&self) {
        self.log.invariants();
        let quorum = self.quorum;
        assert!(quorum.leader_epoch >= self.quorum_persisted.leader_epoch);
        assert!(
            self.log.last_epoch() <= self.quorum_persisted.leader_epoch,
            "an entry of an epoch not yet durable in the quorum state"
        );
        assert!(self.high_watermark <= self.log.end_offset());
        assert!(self.held_sends.len() <= HELD_SENDS_MAX);
        assert!(self.held_sends.is_empty() || quorum != self.quorum_persisted);
        match &self.state {
            State::Unattached { .. } => assert!(quorum.leader_id.is_none()),
            State::Voted { voted_id, .. } => {
                assert!(quorum.leader_id.is_none() && quorum.voted_id == Some(*voted_id))
            }
            State::Candidate { votes_granted, .. } => {
                assert!(quorum.leader_id.is_none() && quorum.voted_id == Some(self.id));
                assert!(votes_granted.is_subset(&self.voters));
            }
            State::Leader(leader) => {
                assert_eq!(quorum.leader_id, Some(self.id));
                assert!(leader.epoch_start_offset < self.log.end_offset());
                assert!(leader.parked_fetches.len() < self.voters.len());
            }
            State::Follower(follower) => {
                assert_eq!(quorum.leader_id, Some(follower.leader_id));
                assert_ne!(follower.leader_id, self.id);
            }
            State::Resigned { .. } => assert_eq!(quorum.leader_id, Some(self.id)),
        }
    }
}

/// A follower's resend and retry deadlines that passed clear the way for
/// the next fetch (sent by `pump`).
fn follower_timers_expire(follower: &mut FollowerState, now_ms: i64) {
    if follower
        .in_flight
        .is_some_and(|in_flight| now_ms >= in_flight.resend_ms)
    {
        follower.in_flight = None;
    }
    if follower.retry_ms.is_some_and(|retry_ms| now_ms >= retry_ms) {
        follower.retry_ms = None;
    }
}
