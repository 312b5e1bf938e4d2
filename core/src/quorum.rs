//! The controller quorum's durable side: a `RaftReplica` over the
//! `__cluster_metadata-0` log and Kafka's `quorum-state` file, on the
//! node's `Storage` and its group commit (`Durability`).
//!
//! The replica asks; this module carries out and reports back:
//! - `PersistQuorumState`: the state is written to `quorum-state.tmp`, that
//!   file synced, renamed over `quorum-state`, the directory synced, and
//!   only then reported durable (a crash leaves the old file or the new,
//!   never a torn one). Writes run one at a time; a newer state asked for
//!   meanwhile replaces any older one still waiting, which the replica's
//!   contract allows (it learns of the latest state it asked for).
//! - `Append`: each entry becomes one record batch at its offset (one
//!   entry per batch keeps every truncation point a batch boundary), the
//!   log's files join the next sync, and the new end is reported durable
//!   once a sync issued after the write completed.
//! - `Truncate`: the log is cut; an end reported by a sync issued before
//!   the cut is never above it.
//! - `Send`: handed to the node, which carries it to the peer.
//! - `Committed`: entries below the high watermark are handed to the node
//!   once each, in order.
//!
//! The replica starts only after the node's first sync made the recovered
//! log durable (`start`), so every entry it reads at start is on disk.

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;

use crate::config::Mutation;
use crate::durability::Durability;
use crate::log::PartitionLog;
use crate::metadata::METADATA_DIR;
use crate::raft::{
    quorum_file, wire, Entry, Message, Persisted, ProposeError, QuorumState, RaftOutput,
    RaftReplica, Role, Timeouts,
};
use crate::storage::{read_exact_at, Storage, SyncTarget};
use crate::types::NodeId;

#[cfg(feature = "mutations")]
use crate::raft::Mutation as RaftMutation;

pub const QUORUM_STATE_FILE: &str = "__cluster_metadata-0/quorum-state";
const QUORUM_STATE_TMP: &str = "__cluster_metadata-0/quorum-state.tmp";
/// Bytes read per call when loading the log at start.
const LOAD_CHUNK_BYTES: usize = 1 << 20;
/// Largest `quorum-state` file read (Kafka's are a few hundred bytes).
const QUORUM_STATE_BYTES_MAX: u64 = 64 * 1024;

/// How a node's quorum is set up.
#[derive(Debug, Clone)]
pub struct QuorumSettings {
    pub id: NodeId,
    pub voters: Vec<NodeId>,
    pub timeouts: Timeouts,
    /// Seeds the replica's generator (election jitter).
    pub seed: u64,
    /// The last stop was clean: the log needs no recovery scan.
    pub clean: bool,
    /// A deliberately broken variant (feature `mutations` only).
    pub mutation: Option<Mutation>,
}

/// What the node must do for the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumOutput {
    /// Carry this message to that voter.
    Send { to: NodeId, message: Message },
    /// The entry at `offset` is committed: apply it.
    Committed { offset: i64, entry: Entry },
}

/// Where the current quorum-state write stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateWrite {
    Idle,
    /// The temporary file is written; its sync has sequence `seq`.
    TmpWritten {
        seq: u64,
        state: QuorumState,
    },
    /// Renamed into place; the directory's sync has sequence `seq`.
    Renamed {
        seq: u64,
        state: QuorumState,
    },
}

#[derive(Debug)]
struct Started {
    replica: RaftReplica,
    /// Entries below this offset were handed out as committed.
    applied: i64,
}

#[derive(Debug)]
pub struct Quorum {
    id: NodeId,
    voters: Vec<NodeId>,
    timeouts: Timeouts,
    seed: u64,
    log: PartitionLog,
    /// The entries read at open, until `start` hands them to the replica.
    recovered: Option<(QuorumState, Vec<Entry>)>,
    started: Option<Started>,
    /// Log syncs asked for, oldest first: (durability sequence, the log end
    /// that sync covers).
    log_syncs: VecDeque<(u64, i64)>,
    state_write: StateWrite,
    state_next: Option<QuorumState>,
    outputs: VecDeque<QuorumOutput>,
    /// A write failed: nothing more is reported durable until a restart.
    failed: bool,
    /// A deliberately broken variant (feature `mutations` only).
    #[cfg_attr(not(feature = "mutations"), allow(dead_code))]
    mutation: Option<Mutation>,
}

impl Quorum {
    /// Opens the quorum's log and state file. The recovered files join the
    /// start-up sync through `durability`.
    pub fn open<S: Storage + ?Sized>(
        storage: &mut S,
        durability: &mut Durability,
        settings: QuorumSettings,
    ) -> io::Result<Quorum> {
        let QuorumSettings {
            id,
            voters,
            timeouts,
            seed,
            clean,
            mutation,
        } = settings;
        assert!(voters.contains(&id), "node {id} is not among the voters");
        let config = crate::config::TopicConfig::new(
            &crate::config::BrokerConfig::defaults(),
            &Default::default(),
        )
        .expect("the defaults are valid");
        let (log, recovery) = PartitionLog::open(storage, METADATA_DIR, config, clean)?;
        if recovery.truncated_bytes > 0 || recovery.segments_removed > 0 {
            tracing::warn!(?recovery, "the metadata log's tail was cut at start");
        }
        let entries = load_entries(storage, &log)?;
        let mut state = read_quorum_state(storage)?;
        if mutation == Some(Mutation::ForgetQuorumState) {
            state = QuorumState {
                leader_epoch: entries.last().map_or(0, |e| e.epoch),
                leader_id: None,
                voted_id: None,
            };
        }
        if storage.exists(QUORUM_STATE_TMP) {
            storage.remove_file(QUORUM_STATE_TMP)?;
        }
        let mut quorum = Quorum {
            id,
            voters,
            timeouts,
            seed,
            log,
            recovered: Some((state, entries)),
            mutation,
            started: None,
            log_syncs: VecDeque::new(),
            state_write: StateWrite::Idle,
            state_next: None,
            outputs: VecDeque::new(),
            failed: false,
        };
        for target in quorum.log.all_files() {
            durability.note_other_write(target);
        }
        quorum.log.take_dirty();
        durability.note_other_write(SyncTarget::Dir(METADATA_DIR.to_string()));
        tracing::info!(
            %id,
            voters = ?quorum.voters,
            epoch = state.leader_epoch,
            log_end = quorum.log.log_end_offset(),
            "controller quorum opened"
        );
        Ok(quorum)
    }

    /// Starts the replica, once the start-up sync made the log durable.
    pub fn start<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        now_ms: i64,
    ) {
        let Some((state, entries)) = self.recovered.take() else {
            return;
        };
        self.log.mark_durable(self.log.log_end_offset());
        let replica = RaftReplica::with_timeouts(
            self.id,
            &self.voters,
            state,
            entries,
            self.seed,
            now_ms,
            self.timeouts,
        );
        #[cfg(feature = "mutations")]
        let replica = match self.mutation {
            Some(Mutation::VoteTwice) => replica.with_mutation(RaftMutation::VoteTwice),
            Some(Mutation::CommitUnsyncedEntries) => {
                replica.with_mutation(RaftMutation::HighWatermarkCountsUnpersisted)
            }
            Some(Mutation::SkipDivergenceCheck) => {
                replica.with_mutation(RaftMutation::SkipDivergenceCheck)
            }
            Some(Mutation::CommitOlderEpoch) => {
                replica.with_mutation(RaftMutation::CommitOlderEpochByCounting)
            }
            _ => replica,
        };
        self.started = Some(Started {
            replica,
            applied: 0,
        });
        self.drain(storage, durability);
    }

    pub fn is_started(&self) -> bool {
        self.started.is_some()
    }

    pub fn replica(&self) -> Option<&RaftReplica> {
        self.started.as_ref().map(|s| &s.replica)
    }

    /// The log as the replica sees it, or as read at open before it starts.
    pub fn entries(&self) -> &[Entry] {
        match (&self.started, &self.recovered) {
            (Some(started), _) => started.replica.entries(),
            (None, Some((_, entries))) => entries,
            (None, None) => &[],
        }
    }

    /// The durable quorum state: the replica's, or as read at open.
    pub fn durable_state(&self) -> QuorumState {
        match (&self.started, &self.recovered) {
            (Some(started), _) => started.replica.quorum_state_durable(),
            (None, Some((state, _))) => *state,
            (None, None) => QuorumState::default(),
        }
    }

    pub fn role(&self) -> Option<Role> {
        self.replica().map(RaftReplica::role)
    }

    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    pub fn handle_message<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        now_ms: i64,
        from: NodeId,
        message: Message,
    ) {
        let Some(started) = &mut self.started else {
            return;
        };
        started.replica.handle_message(now_ms, from, message);
        self.drain(storage, durability);
    }

    pub fn handle_timeout<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        now_ms: i64,
    ) {
        let Some(started) = &mut self.started else {
            return;
        };
        if started
            .replica
            .poll_timeout()
            .is_some_and(|deadline| deadline <= now_ms)
        {
            started.replica.handle_timeout(now_ms);
        }
        self.drain(storage, durability);
    }

    /// Proposes records (as the active controller); the offset of the last
    /// one, committed once `Committed` hands it out.
    pub fn propose<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        now_ms: i64,
        records: Vec<Bytes>,
    ) -> Result<i64, ProposeError> {
        let Some(started) = &mut self.started else {
            return Err(ProposeError::NotLeader {
                leader_hint: None,
                leader_epoch: 0,
            });
        };
        let result = started.replica.propose(now_ms, records);
        self.drain(storage, durability);
        result
    }

    /// A graceful stop: a leader hands over first.
    pub fn resign<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        now_ms: i64,
    ) {
        if let Some(started) = &mut self.started {
            started.replica.resign(now_ms);
            self.drain(storage, durability);
        }
    }

    /// A sync completed: report what it made durable, and move the
    /// quorum-state write along.
    pub fn synced<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        now_ms: i64,
    ) {
        if durability.failed() {
            self.failed = true;
        }
        if self.failed || self.started.is_none() {
            return;
        }
        let mut log_end = None;
        while let Some(&(seq, end)) = self.log_syncs.front() {
            if !durability.is_durable(seq) {
                break;
            }
            self.log_syncs.pop_front();
            log_end = Some(end);
        }
        if let Some(end) = log_end {
            self.log.mark_durable(end);
            self.replica_mut()
                .handle_persisted(now_ms, Persisted::LogUpTo(end));
        }
        match self.state_write {
            StateWrite::TmpWritten { seq, state } if durability.is_durable(seq) => {
                match storage.rename(QUORUM_STATE_TMP, QUORUM_STATE_FILE) {
                    Ok(()) => {
                        let seq =
                            durability.note_other_write(SyncTarget::Dir(METADATA_DIR.to_string()));
                        self.state_write = StateWrite::Renamed { seq, state };
                    }
                    Err(error) => self.fail("cannot rename the quorum-state file", &error),
                }
            }
            StateWrite::Renamed { seq, state } if durability.is_durable(seq) => {
                self.state_write = StateWrite::Idle;
                self.replica_mut()
                    .handle_persisted(now_ms, Persisted::QuorumState(state));
                if let Some(next) = self.state_next.take() {
                    self.write_state(storage, durability, next);
                }
            }
            _ => {}
        }
        self.drain(storage, durability);
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<QuorumOutput> {
        self.outputs.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<i64> {
        self.replica()?.poll_timeout()
    }

    fn replica_mut(&mut self) -> &mut RaftReplica {
        &mut self.started.as_mut().expect("started").replica
    }

    fn fail(&mut self, what: &str, error: &io::Error) {
        tracing::error!(%error, "{what}; the controller quorum stops until a restart");
        self.failed = true;
    }

    /// Carries out the replica's outputs, then hands out newly committed
    /// entries.
    fn drain<S: Storage + ?Sized>(&mut self, storage: &mut S, durability: &mut Durability) {
        while let Some(output) = self.started.as_mut().and_then(|s| s.replica.poll_output()) {
            match output {
                RaftOutput::PersistQuorumState(state) => {
                    if self.state_write == StateWrite::Idle {
                        self.write_state(storage, durability, state);
                    } else {
                        self.state_next = Some(state);
                    }
                }
                RaftOutput::Append {
                    offset_first,
                    entries,
                } => self.append(storage, durability, offset_first, &entries),
                RaftOutput::Truncate { offset } => self.truncate(storage, durability, offset),
                RaftOutput::Send { to, message } => {
                    self.outputs.push_back(QuorumOutput::Send { to, message })
                }
                RaftOutput::Committed { high_watermark } => self.hand_out(high_watermark),
            }
        }
        self.invariants();
    }

    fn write_state<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        state: QuorumState,
    ) {
        if self.failed {
            return;
        }
        let bytes = quorum_file::encode(&state);
        let written = (|| {
            let file = storage.open(QUORUM_STATE_TMP, true)?;
            let result = storage
                .truncate(file, 0)
                .and_then(|()| storage.write_at(file, 0, &bytes));
            storage.close(file);
            result
        })();
        match written {
            Ok(()) => {
                durability.note_other_write(SyncTarget::Dir(METADATA_DIR.to_string()));
                let seq = durability.note_other_write(SyncTarget::File(QUORUM_STATE_TMP.into()));
                self.state_write = StateWrite::TmpWritten { seq, state };
            }
            Err(error) => self.fail("cannot write the quorum-state file", &error),
        }
    }

    fn append<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        offset_first: i64,
        entries: &[Entry],
    ) {
        if self.failed {
            return;
        }
        assert_eq!(
            offset_first,
            self.log.log_end_offset(),
            "entries are appended at the log end"
        );
        for (index, entry) in entries.iter().enumerate() {
            let offset = offset_first + index as i64;
            let batch = match wire::encode_entries(offset, std::slice::from_ref(entry)) {
                Ok(batch) => batch,
                Err(error) => {
                    // The replica's own entries always encode.
                    panic!("cannot encode metadata entry {offset}: {error}")
                }
            };
            match self.log.append(storage, &batch, entry.epoch, 0) {
                Ok(appended) => assert_eq!(appended.base_offset, offset),
                Err(error) => return self.fail("cannot append to the metadata log", &error),
            }
        }
        self.note_log_write(durability);
    }

    fn truncate<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        durability: &mut Durability,
        offset: i64,
    ) {
        if self.failed {
            return;
        }
        let applied = self.started.as_ref().map_or(0, |s| s.applied);
        assert!(
            offset >= applied,
            "truncation to {offset} below the committed entries handed out ({applied})"
        );
        match self.log.truncate_to(storage, offset) {
            Ok(end) => {
                assert_eq!(
                    end, offset,
                    "one entry per batch: every offset is a boundary"
                );
                for sync in &mut self.log_syncs {
                    sync.1 = sync.1.min(end);
                }
                self.note_log_write(durability);
            }
            Err(error) => self.fail("cannot truncate the metadata log", &error),
        }
    }

    fn note_log_write(&mut self, durability: &mut Durability) {
        let mut seq = None;
        for target in self.log.take_dirty() {
            seq = Some(durability.note_other_write(target));
        }
        let seq = seq.unwrap_or_else(|| durability.note_write());
        self.log_syncs.push_back((seq, self.log.log_end_offset()));
    }

    fn hand_out(&mut self, high_watermark: i64) {
        let started = self.started.as_mut().expect("started");
        while started.applied < high_watermark {
            let offset = started.applied;
            let entry = started.replica.entries()[offset as usize].clone();
            self.outputs
                .push_back(QuorumOutput::Committed { offset, entry });
            started.applied += 1;
        }
    }

    pub fn invariants(&self) {
        self.log.invariants();
        for pair in self.log_syncs.iter().collect::<Vec<_>>().windows(2) {
            assert!(pair[0].0 <= pair[1].0, "log syncs in sequence order");
        }
        if let Some(started) = &self.started {
            let replica = &started.replica;
            assert!(started.applied <= replica.high_watermark());
            if !self.failed {
                assert_eq!(
                    self.log.log_end_offset(),
                    replica.entries().len() as i64,
                    "the log on disk mirrors the replica's"
                );
            }
            assert!(self.recovered.is_none());
        }
        if self.state_next.is_some() {
            assert_ne!(self.state_write, StateWrite::Idle);
        }
    }
}

/// Reads every entry of the metadata log, in order.
fn load_entries<S: Storage + ?Sized>(
    storage: &mut S,
    log: &PartitionLog,
) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    assert_eq!(offset, 0, "the metadata log is never trimmed yet");
    while offset < end {
        let bytes = log.read(storage, offset, end, LOAD_CHUNK_BYTES, true)?;
        if bytes.is_empty() {
            break;
        }
        let decoded = wire::decode_entries(&bytes, offset, usize::MAX).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{METADATA_DIR}: an entry at or after offset {offset} cannot be read: {error}"
                ),
            )
        })?;
        offset += decoded.len() as i64;
        entries.extend(decoded);
    }
    Ok(entries)
}

/// The durable quorum state; the default (epoch 0, no leader, no vote) when
/// the file does not exist yet.
fn read_quorum_state<S: Storage + ?Sized>(storage: &mut S) -> io::Result<QuorumState> {
    if !storage.exists(QUORUM_STATE_FILE) {
        return Ok(QuorumState::default());
    }
    let file = storage.open(QUORUM_STATE_FILE, false)?;
    let len = storage.len(file)?;
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{QUORUM_STATE_FILE}: {why}"),
        )
    };
    if len > QUORUM_STATE_BYTES_MAX {
        storage.close(file);
        return Err(bad(format!("{len} bytes, more than a quorum state holds")));
    }
    let mut bytes = vec![0u8; len as usize];
    let read = read_exact_at(storage, file, 0, &mut bytes);
    storage.close(file);
    read?;
    quorum_file::decode(&bytes).map_err(|error| bad(error.to_string()))
}
