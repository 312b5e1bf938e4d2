//! Replication by fetch, and the high watermark: each rule once, with its
//! assertion beside it.
//!
//! - A follower fetches (fetch offset, last fetched epoch) from its leader,
//!   one fetch at a time, and only once everything before the fetch offset
//!   is durable, so the offset it reports is on disk (`maybe_send_fetch`).
//! - The leader answers DivergingEpoch when that position is not on its log
//!   (`handle_fetch_request`); the follower truncates there and fetches
//!   again, never below its high watermark (`truncate_to_divergence`).
//! - The leader's high watermark is the largest offset durable on a
//!   majority of voters, counting its own log only as far as it is synced,
//!   and it moves only once it passes the epoch's leader-change entry
//!   (`advance_leader_high_watermark`); followers take it from fetch answers,
//!   capped at what they hold (`set_high_watermark`).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{
    Entry, FetchError, FetchInFlight, FetchResult, Message, Mutation, ParkedFetch, ProposeError,
    RaftOutput, RaftReplica, Record, State, BEGIN_QUORUM_EPOCH_RESEND_MS, ENTRIES_PER_FETCH_MAX,
    FETCH_RESEND_MS, FETCH_RETRY_BACKOFF_MS, FETCH_WAIT_MS_MAX, RECORDS_PER_PROPOSAL_MAX,
    UNCOMMITTED_ENTRIES_MAX,
};
use crate::types::NodeId;

impl RaftReplica {
    pub(super) fn append_as_leader(&mut self, records: Vec<Bytes>) -> Result<i64, ProposeError> {
        if !matches!(self.state, State::Leader(_)) {
            return Err(ProposeError::NotLeader {
                leader_hint: self.quorum.leader_id.filter(|&leader| leader != self.id),
                leader_epoch: self.quorum.leader_epoch,
            });
        }
        if records.is_empty() || records.len() > RECORDS_PER_PROPOSAL_MAX {
            return Err(ProposeError::RecordCount {
                count: records.len(),
            });
        }
        let uncommitted = self.log.end_offset() - self.high_watermark;
        if uncommitted >= UNCOMMITTED_ENTRIES_MAX {
            return Err(ProposeError::Backlog { uncommitted });
        }
        let offset_first = self.log.end_offset();
        let epoch = self.quorum.leader_epoch;
        let entries = records
            .into_iter()
            .map(|data| Entry {
                epoch,
                record: Record::Data(data),
            })
            .collect();
        self.append_entries(entries);
        self.answer_parked_fetches();
        Ok(offset_first)
    }

    /// Appends to the log and tells its owner.
    pub(super) fn append_entries(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let offset_first = self.log.end_offset();
        self.log.append(entries.clone());
        self.push_output(RaftOutput::Append {
            offset_first,
            entries,
        });
    }

    /// A follower's next fetch, when none is out, no backoff runs, and its
    /// log is durable to its end.
    pub(super) fn maybe_send_fetch(&mut self, now_ms: i64) {
        let durable = self.log.persisted_end_offset() == self.log.end_offset();
        let correlation_id = self.next_correlation_id;
        let State::Follower(follower) = &mut self.state else {
            return;
        };
        if follower.in_flight.is_some() || follower.retry_ms.is_some() || !durable {
            return;
        }
        follower.in_flight = Some(FetchInFlight {
            correlation_id,
            resend_ms: now_ms + FETCH_RESEND_MS,
        });
        let leader_id = follower.leader_id;
        // Ids stay within what a request header carries (`wire.rs`).
        self.next_correlation_id = super::wire::next_fetch_correlation_id(correlation_id);
        let request = Message::FetchRequest {
            correlation_id,
            current_leader_epoch: self.quorum.leader_epoch,
            fetch_offset: self.log.end_offset(),
            last_fetched_epoch: self.log.last_epoch(),
        };
        self.send(leader_id, request);
    }

    pub(super) fn handle_fetch_request(
        &mut self,
        now_ms: i64,
        from: NodeId,
        correlation_id: u64,
        epoch: i32,
        position: (i64, i32),
    ) {
        let refusal = if epoch < self.quorum.leader_epoch {
            Some(FetchError::FencedLeaderEpoch)
        } else if !matches!(self.state, State::Leader(_)) {
            Some(FetchError::NotLeaderOrFollower)
        } else {
            None
        };
        if let Some(error) = refusal {
            self.send_fetch_response(from, correlation_id, FetchResult::Error(error));
            return;
        }
        if let State::Leader(leader) = &mut self.state {
            leader.acknowledged.insert(from);
            leader.fetched_ms.insert(from, now_ms);
        }
        let (fetch_offset, last_fetched_epoch) = position;
        let on_log = self.log.matches(fetch_offset, last_fetched_epoch)
            || (self.mutated(Mutation::SkipDivergenceCheck)
                && (0..=self.log.end_offset()).contains(&fetch_offset));
        if on_log {
            self.serve_fetch(now_ms, from, correlation_id, fetch_offset);
        } else {
            // Where the fetcher's log last agrees with this one, by epoch:
            // never an epoch above the one it named.
            let (epoch, end_offset) = self.log.end_offset_for_epoch(last_fetched_epoch);
            assert!(epoch <= last_fetched_epoch.max(0) && end_offset <= self.log.end_offset());
            let result = FetchResult::DivergingEpoch { epoch, end_offset };
            self.send_fetch_response(from, correlation_id, result);
        }
    }

    /// A fetch whose position is on this log: count it, then answer it, or
    /// hold it while there is nothing new to tell.
    fn serve_fetch(&mut self, now_ms: i64, from: NodeId, correlation_id: u64, fetch_offset: i64) {
        let end_offset = self.log.end_offset();
        let State::Leader(leader) = &mut self.state else {
            return;
        };
        // The follower fetches only from a durable log end, and its log
        // matches this one up to there: the prefix is on its disk.
        assert!(
            fetch_offset <= end_offset,
            "a matching fetch past the log end"
        );
        leader.follower_end_offsets.insert(from, fetch_offset);
        let told = leader.high_watermark_sent.get(&from).copied();
        if fetch_offset == end_offset && told == Some(self.high_watermark) {
            let parked = ParkedFetch {
                correlation_id,
                fetch_offset,
                deadline_ms: now_ms + FETCH_WAIT_MS_MAX,
            };
            leader.parked_fetches.insert(from, parked);
        } else {
            self.send_entries(from, correlation_id, fetch_offset);
        }
        self.advance_leader_high_watermark();
    }

    fn send_entries(&mut self, to: NodeId, correlation_id: u64, offset_first: i64) {
        if let State::Leader(leader) = &mut self.state {
            leader.high_watermark_sent.insert(to, self.high_watermark);
        }
        let entries = self.log.read(offset_first, ENTRIES_PER_FETCH_MAX);
        let result = FetchResult::Entries {
            offset_first,
            entries,
        };
        self.send_fetch_response(to, correlation_id, result);
    }

    fn send_fetch_response(&mut self, to: NodeId, correlation_id: u64, result: FetchResult) {
        let response = Message::FetchResponse {
            correlation_id,
            leader_epoch: self.quorum.leader_epoch,
            leader_id: self.quorum.leader_id,
            high_watermark: self.high_watermark,
            result,
        };
        self.send(to, response);
    }

    /// Answers every held fetch: there are new entries or a new high watermark.
    fn answer_parked_fetches(&mut self) {
        let State::Leader(leader) = &mut self.state else {
            return;
        };
        let parked = std::mem::take(&mut leader.parked_fetches);
        for (follower, fetch) in parked {
            self.send_entries(follower, fetch.correlation_id, fetch.fetch_offset);
        }
    }

    pub(super) fn leader_timeouts(&mut self, now_ms: i64) {
        if self.check_quorum(now_ms) {
            return;
        }
        let State::Leader(leader) = &mut self.state else {
            return;
        };
        let parked = std::mem::take(&mut leader.parked_fetches);
        let (due_fetches, waiting): (BTreeMap<NodeId, ParkedFetch>, _) = parked
            .into_iter()
            .partition(|(_, fetch)| now_ms >= fetch.deadline_ms);
        leader.parked_fetches = waiting;
        let resend_due = now_ms >= leader.begin_quorum_epoch_resend_ms;
        if resend_due {
            leader.begin_quorum_epoch_resend_ms = now_ms + BEGIN_QUORUM_EPOCH_RESEND_MS;
        }
        for (follower, fetch) in due_fetches {
            self.send_entries(follower, fetch.correlation_id, fetch.fetch_offset);
        }
        if resend_due {
            self.send_begin_quorum_epoch();
        }
    }

    /// Check-quorum: at its deadline, a leader that a majority (itself
    /// included) has not fetched from within `check_quorum_ms` resigns, so
    /// a leader cut off from the majority stops claiming to lead. True when
    /// it resigned.
    fn check_quorum(&mut self, now_ms: i64) -> bool {
        let window_ms = self.check_quorum_ms();
        let majority = self.majority();
        let State::Leader(leader) = &mut self.state else {
            return false;
        };
        if self.voters.len() == 1 || now_ms < leader.check_quorum_deadline_ms {
            return false;
        }
        let mut recent: Vec<i64> = leader
            .fetched_ms
            .values()
            .copied()
            .filter(|&at| now_ms - at < window_ms)
            .collect();
        // The leader counts itself.
        if recent.len() + 1 >= majority {
            // Next check when the majority's oldest fetch leaves the window.
            recent.sort_unstable_by(|a, b| b.cmp(a));
            let oldest_needed = recent[majority - 2];
            leader.check_quorum_deadline_ms = oldest_needed + window_ms;
            assert!(leader.check_quorum_deadline_ms > now_ms);
            return false;
        }
        tracing::warn!(
            epoch = self.quorum.leader_epoch,
            window_ms,
            "no fetch from a majority of the voters; resigning"
        );
        self.become_resigned(now_ms);
        true
    }

    /// The largest offset durable on a majority of voters, once it passes
    /// the start of this epoch: every entry below it is committed.
    pub(super) fn advance_leader_high_watermark(&mut self) {
        let own_end_offset = if self.mutated(Mutation::HighWatermarkCountsUnpersisted) {
            self.log.end_offset()
        } else {
            self.log.persisted_end_offset()
        };
        let State::Leader(leader) = &self.state else {
            return;
        };
        let mut end_offsets: Vec<i64> = self
            .voters
            .iter()
            .map(|voter| {
                if *voter == self.id {
                    own_end_offset
                } else {
                    leader.follower_end_offsets.get(voter).copied().unwrap_or(0)
                }
            })
            .collect();
        end_offsets.sort_unstable_by(|a, b| b.cmp(a));
        let majority_end_offset = end_offsets[self.majority() - 1];
        // Entries of earlier epochs commit only under this epoch's own
        // leader-change entry (Raft's rule against the Figure 8 loss): a
        // majority holding an older entry may still elect a leader whose
        // log lacks it, unless that majority also holds this epoch's entry.
        let counts_older_epochs = self.mutated(Mutation::CommitOlderEpochByCounting);
        if (majority_end_offset <= leader.epoch_start_offset && !counts_older_epochs)
            || majority_end_offset <= self.high_watermark
        {
            return;
        }
        assert!(majority_end_offset > leader.epoch_start_offset || counts_older_epochs);
        self.set_high_watermark(majority_end_offset);
        self.answer_parked_fetches();
    }

    /// The high watermark never moves back within an incarnation and never
    /// passes the end of this replica's log.
    fn set_high_watermark(&mut self, high_watermark: i64) {
        if high_watermark <= self.high_watermark {
            return;
        }
        assert!(
            high_watermark <= self.log.end_offset(),
            "committed {high_watermark} beyond the log end {}",
            self.log.end_offset()
        );
        self.high_watermark = high_watermark;
        self.push_output(RaftOutput::Committed { high_watermark });
    }

    pub(super) fn handle_fetch_response(
        &mut self,
        now_ms: i64,
        from: NodeId,
        correlation_id: u64,
        epoch: i32,
        high_watermark: i64,
        result: FetchResult,
    ) {
        let State::Follower(follower) = &mut self.state else {
            return;
        };
        let expected = follower.in_flight.map(|in_flight| in_flight.correlation_id);
        let current = epoch == self.quorum.leader_epoch && from == follower.leader_id;
        // Only the answer to the latest fetch: a late or repeated one may
        // describe a log this replica no longer has.
        if !current || expected != Some(correlation_id) {
            return;
        }
        follower.in_flight = None;
        match result {
            FetchResult::Entries {
                offset_first,
                entries,
            } => {
                follower.fetch_timeout_deadline_ms = now_ms + self.timeouts.fetch_ms;
                self.append_fetched(offset_first, entries, high_watermark);
            }
            FetchResult::DivergingEpoch { end_offset, .. } if end_offset < 0 => {
                tracing::warn!(
                    end_offset,
                    "raft diverging epoch with a negative end ignored"
                );
            }
            FetchResult::DivergingEpoch { epoch, end_offset } => {
                follower.fetch_timeout_deadline_ms = now_ms + self.timeouts.fetch_ms;
                self.truncate_to_divergence(epoch, end_offset);
            }
            FetchResult::Error(_) => follower.retry_ms = Some(now_ms + FETCH_RETRY_BACKOFF_MS),
        }
    }

    fn append_fetched(&mut self, offset_first: i64, entries: Vec<Entry>, high_watermark: i64) {
        let epoch = self.quorum.leader_epoch;
        let well_formed = offset_first == self.log.end_offset()
            && entries.len() <= ENTRIES_PER_FETCH_MAX
            && entries.iter().all(|entry| entry.epoch <= epoch)
            && entries
                .windows(2)
                .all(|pair| pair[0].epoch <= pair[1].epoch)
            && entries
                .first()
                .is_none_or(|entry| entry.epoch >= self.log.last_epoch());
        if !well_formed {
            tracing::warn!(
                offset_first,
                "raft fetch answer that does not fit the log ignored"
            );
            return;
        }
        let fetched_end_offset = offset_first + entries.len() as i64;
        self.append_entries(entries);
        // What the leader committed, as far as this log now matches its log.
        self.set_high_watermark(high_watermark.min(fetched_end_offset));
    }

    /// Truncates where the leader's log and this one last agree by epoch
    /// (the smaller of the two logs' ends of that epoch; the next fetch
    /// checks again, as KIP-279 iterates).
    fn truncate_to_divergence(&mut self, epoch: i32, end_offset: i64) {
        let (_, own_end_offset) = self.log.end_offset_for_epoch(epoch);
        let offset = end_offset.min(own_end_offset).min(self.log.end_offset());
        if offset >= self.log.end_offset() {
            // Nothing past the divergence point; the leader's answer was
            // about a position this log no longer holds.
            return;
        }
        // Committed entries are on the leader's log: never truncated.
        assert!(
            offset >= self.high_watermark,
            "truncating to {offset} below the high watermark {}",
            self.high_watermark
        );
        self.log.truncate(offset);
        self.push_output(RaftOutput::Truncate { offset });
    }
}
