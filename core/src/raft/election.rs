//! Epochs, votes and the states' transitions (KIP-595's QuorumState):
//! each rule once, with its assertion beside it.
//!
//! - A higher epoch in any message moves the replica to it (`enter_epoch`).
//! - One leader per epoch, one vote per voter per epoch (`set_quorum`).
//! - A vote goes only to a candidate whose log is at least as up to date,
//!   by (last epoch, end offset), and only while no leader is known
//!   (`decide_vote`).
//! - Nothing leaves before the quorum state it depends on is durable
//!   (`send`, `quorum_state_persisted`).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    LeaderState, Message, Mutation, QuorumState, RaftOutput, RaftReplica, Record, State,
    BEGIN_QUORUM_EPOCH_RESEND_MS, END_QUORUM_EPOCH_BACKOFF_STEP_MS, HELD_SENDS_MAX,
};
use crate::types::NodeId;

impl RaftReplica {
    /// The state to resume in after a restart, from the durable quorum state.
    pub(super) fn restarted_state(&mut self, now_ms: i64) -> State {
        let election_deadline_ms = self.election_deadline_from(now_ms);
        match (self.quorum.leader_id, self.quorum.voted_id) {
            // A leader that restarts has lost its followers' progress: it
            // resigns and lets the epoch end.
            (Some(leader_id), _) if leader_id == self.id => State::Resigned {
                election_deadline_ms,
            },
            (Some(leader_id), _) => State::Follower(self.new_follower(leader_id, now_ms)),
            (None, Some(voted_id)) => State::Voted {
                voted_id,
                election_deadline_ms,
            },
            (None, None) => State::Unattached {
                election_deadline_ms,
            },
        }
    }

    /// The election timeout, drawn afresh from the seeded generator.
    fn election_deadline_from(&mut self, now_ms: i64) -> i64 {
        let jitter_ms = (self.rng.next_u64() % self.timeouts.election_jitter_ms as u64) as i64;
        now_ms + self.timeouts.election_ms + jitter_ms
    }

    pub(super) fn new_follower(&self, leader_id: NodeId, now_ms: i64) -> super::FollowerState {
        super::FollowerState {
            leader_id,
            fetch_timeout_deadline_ms: now_ms + self.timeouts.fetch_ms,
            in_flight: None,
            retry_ms: None,
        }
    }

    /// The one place the quorum state changes. Epochs never go back; within
    /// an epoch the vote and the leader, once set, never change.
    fn set_quorum(&mut self, quorum: QuorumState) {
        let current = self.quorum;
        assert!(
            quorum.leader_epoch >= current.leader_epoch,
            "epoch went back"
        );
        if quorum.leader_epoch == current.leader_epoch {
            let revote = current.voted_id.is_some() && quorum.voted_id != current.voted_id;
            assert!(
                !revote || self.mutated(Mutation::VoteTwice),
                "voted twice in epoch {}: {:?} then {:?}",
                quorum.leader_epoch,
                current.voted_id,
                quorum.voted_id
            );
            let releader = current.leader_id.is_some() && quorum.leader_id != current.leader_id;
            assert!(!releader, "two leaders in epoch {}", quorum.leader_epoch);
        }
        if quorum != current {
            self.quorum = quorum;
            self.push_output(RaftOutput::PersistQuorumState(quorum));
        }
    }

    /// Every message goes out here. While a quorum-state write is
    /// outstanding it is held: what it says may depend on that state.
    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        if self.quorum == self.quorum_persisted {
            self.push_output(RaftOutput::Send { to, message });
        } else if self.held_sends.len() < HELD_SENDS_MAX {
            self.held_sends.push((to, message));
        } else {
            tracing::debug!(to = to.0, "raft send dropped: too many held");
        }
    }

    pub(super) fn quorum_state_persisted(&mut self, now_ms: i64, quorum: QuorumState) {
        if quorum.leader_epoch >= self.quorum_persisted.leader_epoch {
            self.quorum_persisted = quorum;
        }
        if self.quorum != self.quorum_persisted {
            return;
        }
        for (to, message) in std::mem::take(&mut self.held_sends) {
            self.push_output(RaftOutput::Send { to, message });
        }
        // A candidate's own vote counts once it is durable.
        let id = self.id;
        if let State::Candidate { votes_granted, .. } = &mut self.state {
            votes_granted.insert(id);
            self.maybe_become_leader(now_ms);
        }
    }

    /// A message of a later epoch: move to it, following its leader if the
    /// message names one.
    pub(super) fn enter_epoch(&mut self, now_ms: i64, epoch: i32, leader_id: Option<NodeId>) {
        assert!(epoch > self.quorum.leader_epoch);
        assert_ne!(
            leader_id,
            Some(self.id),
            "named leader of an epoch never stood in"
        );
        self.set_quorum(QuorumState {
            leader_epoch: epoch,
            leader_id,
            voted_id: None,
        });
        // Seeing a later epoch does not restart a running election timer
        // (Raft's rule): a voter whose log is behind, standing again and
        // again, would otherwise hold back the voters that could win.
        let running_ms = self
            .election_deadline_ms()
            .filter(|_| !self.mutated(Mutation::RestartElectionTimerOnNewEpoch));
        let election_deadline_ms = match running_ms {
            Some(running_ms) => running_ms,
            None => self.election_deadline_from(now_ms),
        };
        self.state = match leader_id {
            Some(leader_id) => State::Follower(self.new_follower(leader_id, now_ms)),
            None => State::Unattached {
                election_deadline_ms,
            },
        };
    }

    /// A message of the current epoch names its leader.
    pub(super) fn learn_leader(&mut self, now_ms: i64, leader_id: NodeId) {
        match &self.state {
            State::Leader(_) | State::Resigned { .. } => {
                // One leader per epoch: this replica is the epoch's leader.
                assert_eq!(leader_id, self.id, "two leaders in one epoch");
            }
            State::Follower(follower) => {
                assert_eq!(leader_id, follower.leader_id, "two leaders in one epoch");
            }
            State::Unattached { .. } | State::Voted { .. } | State::Candidate { .. } => {
                self.set_quorum(QuorumState {
                    leader_id: Some(leader_id),
                    ..self.quorum
                });
                self.state = State::Follower(self.new_follower(leader_id, now_ms));
            }
        }
    }

    /// No leader heard from in time: a new epoch, voting for itself.
    pub(super) fn become_candidate(&mut self, now_ms: i64) {
        let epoch = self.quorum.leader_epoch + 1;
        self.set_quorum(QuorumState {
            leader_epoch: epoch,
            leader_id: None,
            voted_id: Some(self.id),
        });
        self.state = State::Candidate {
            votes_granted: BTreeSet::new(),
            election_deadline_ms: self.election_deadline_from(now_ms),
        };
        let request = Message::VoteRequest {
            candidate_epoch: epoch,
            candidate_id: self.id,
            last_offset_epoch: self.log.last_epoch(),
            last_offset: self.log.end_offset(),
        };
        // Held until the self-vote is durable; a quorum of one wins then,
        // in `quorum_state_persisted`.
        for voter in self.other_voters() {
            self.send(voter, request.clone());
        }
    }

    pub(super) fn other_voters(&self) -> Vec<NodeId> {
        self.voters
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect()
    }

    pub(super) fn handle_vote_request(
        &mut self,
        now_ms: i64,
        from: NodeId,
        candidate_epoch: i32,
        candidate_last: (i32, i64),
    ) {
        let vote_granted = candidate_epoch == self.quorum.leader_epoch
            && self.decide_vote(now_ms, from, candidate_last);
        self.send(
            from,
            Message::VoteResponse {
                leader_epoch: self.quorum.leader_epoch,
                leader_id: self.quorum.leader_id,
                vote_granted,
            },
        );
    }

    /// Grants at most one candidate per epoch (the same one again, for a
    /// duplicated request), only while no leader is known, and only if the
    /// candidate's log is at least as up to date as this one.
    fn decide_vote(&mut self, now_ms: i64, candidate: NodeId, candidate_last: (i32, i64)) -> bool {
        let own_last = (self.log.last_epoch(), self.log.end_offset());
        let log_up_to_date = candidate_last >= own_last;
        let may_vote = match self.state {
            State::Unattached { .. } => true,
            State::Voted { voted_id, .. } => {
                voted_id == candidate || self.mutated(Mutation::VoteTwice)
            }
            _ => false,
        };
        if !(may_vote && log_up_to_date) {
            return false;
        }
        assert!(
            self.quorum.leader_id.is_none(),
            "a vote while a leader is known"
        );
        self.set_quorum(QuorumState {
            voted_id: Some(candidate),
            ..self.quorum
        });
        // The timer restarts only for a new vote, so a repeated request
        // cannot hold a voter back from standing forever.
        if !matches!(self.state, State::Voted { voted_id, .. } if voted_id == candidate) {
            self.state = State::Voted {
                voted_id: candidate,
                election_deadline_ms: self.election_deadline_from(now_ms),
            };
        }
        true
    }

    pub(super) fn handle_vote_response(
        &mut self,
        now_ms: i64,
        from: NodeId,
        epoch: i32,
        vote_granted: bool,
    ) {
        if epoch != self.quorum.leader_epoch || !vote_granted {
            return;
        }
        if let State::Candidate { votes_granted, .. } = &mut self.state {
            votes_granted.insert(from);
            self.maybe_become_leader(now_ms);
        }
    }

    fn maybe_become_leader(&mut self, now_ms: i64) {
        let won = match &self.state {
            State::Candidate { votes_granted, .. } => {
                votes_granted.contains(&self.id) && votes_granted.len() >= self.majority()
            }
            _ => false,
        };
        if won {
            self.become_leader(now_ms);
        }
    }

    /// A majority voted: lead, opening the epoch with a leader-change entry.
    fn become_leader(&mut self, now_ms: i64) {
        let epoch = self.quorum.leader_epoch;
        // The candidacy of this epoch is durable, so no entry of it can
        // outlive a quorum state that forgot the epoch.
        assert_eq!(self.quorum_persisted.leader_epoch, epoch);
        self.set_quorum(QuorumState {
            leader_id: Some(self.id),
            ..self.quorum
        });
        let epoch_start_offset = self.log.end_offset();
        self.state = State::Leader(LeaderState {
            epoch_start_offset,
            follower_end_offsets: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            high_watermark_sent: BTreeMap::new(),
            begin_quorum_epoch_resend_ms: now_ms + BEGIN_QUORUM_EPOCH_RESEND_MS,
            parked_fetches: BTreeMap::new(),
            fetched_ms: BTreeMap::new(),
            check_quorum_deadline_ms: now_ms + self.check_quorum_ms(),
        });
        let voters = self.voters.iter().copied().collect();
        self.append_entries(vec![super::Entry {
            epoch,
            record: Record::LeaderChange {
                leader_id: self.id,
                voters,
            },
        }]);
        // The leader-change entry opens the epoch on this log.
        assert_eq!(self.log.epoch_start_offset(epoch), Some(epoch_start_offset));
        self.send_begin_quorum_epoch();
        // A quorum of one commits on its own log.
        self.advance_leader_high_watermark();
    }

    pub(super) fn send_begin_quorum_epoch(&mut self) {
        let State::Leader(leader) = &self.state else {
            return;
        };
        let waiting: Vec<NodeId> = self
            .other_voters()
            .into_iter()
            .filter(|voter| !leader.acknowledged.contains(voter))
            .collect();
        let request = Message::BeginQuorumEpochRequest {
            leader_epoch: self.quorum.leader_epoch,
            leader_id: self.id,
        };
        for voter in waiting {
            self.send(voter, request.clone());
        }
    }

    /// The epoch and its leader were taken in by `handle_message` already
    /// (`enter_epoch` or `learn_leader`): only the answer is left.
    pub(super) fn handle_begin_quorum_epoch(&mut self, from: NodeId) {
        self.send(
            from,
            Message::BeginQuorumEpochResponse {
                leader_epoch: self.quorum.leader_epoch,
                leader_id: self.quorum.leader_id,
            },
        );
    }

    pub(super) fn note_acknowledged(&mut self, from: NodeId, epoch: i32) {
        if epoch != self.quorum.leader_epoch {
            return;
        }
        if let State::Leader(leader) = &mut self.state {
            leader.acknowledged.insert(from);
        }
    }

    /// The leader steps down, naming the voters most caught up first.
    pub(super) fn become_resigned(&mut self, now_ms: i64) {
        let State::Leader(leader) = &self.state else {
            return;
        };
        let mut successors: Vec<(i64, NodeId)> = self
            .other_voters()
            .into_iter()
            .map(|voter| {
                (
                    leader
                        .follower_end_offsets
                        .get(&voter)
                        .copied()
                        .unwrap_or(0),
                    voter,
                )
            })
            .collect();
        successors.sort_by(|a, b| b.cmp(a));
        let request = Message::EndQuorumEpochRequest {
            leader_epoch: self.quorum.leader_epoch,
            leader_id: self.id,
            preferred_successors: successors.iter().map(|&(_, voter)| voter).collect(),
        };
        self.state = State::Resigned {
            election_deadline_ms: self.election_deadline_from(now_ms),
        };
        for (_, voter) in successors {
            self.send(voter, request.clone());
        }
    }

    /// The leader of this epoch resigned: stand after a wait set by this
    /// replica's place among its preferred successors.
    pub(super) fn handle_end_quorum_epoch(
        &mut self,
        now_ms: i64,
        from: NodeId,
        epoch: i32,
        preferred_successors: &[NodeId],
    ) {
        if epoch == self.quorum.leader_epoch {
            let rank = preferred_successors
                .iter()
                .position(|&voter| voter == self.id)
                .unwrap_or(preferred_successors.len()) as i64;
            let deadline_ms = now_ms + rank * END_QUORUM_EPOCH_BACKOFF_STEP_MS;
            match &mut self.state {
                State::Follower(follower) if follower.leader_id == from => {
                    follower.fetch_timeout_deadline_ms =
                        follower.fetch_timeout_deadline_ms.min(deadline_ms);
                }
                State::Unattached {
                    election_deadline_ms,
                }
                | State::Voted {
                    election_deadline_ms,
                    ..
                } => *election_deadline_ms = (*election_deadline_ms).min(deadline_ms),
                _ => {}
            }
        }
        self.send(
            from,
            Message::EndQuorumEpochResponse {
                leader_epoch: self.quorum.leader_epoch,
                leader_id: self.quorum.leader_id,
            },
        );
    }
}
