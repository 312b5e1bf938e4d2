//! Single rules of the replica, driven by hand: a driver that persists
//! everything at once and delivers every message in order, and scenarios
//! small enough to state their expected outputs.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{
    Entry, Message, Mutation, Persisted, QuorumState, RaftOutput, RaftReplica, Record, Role,
};
use crate::types::NodeId;

const OUTPUTS_PER_SETTLE_MAX: usize = 10_000;

fn entries_of(epochs: &[i32]) -> Vec<Entry> {
    epochs
        .iter()
        .map(|&epoch| Entry {
            epoch,
            record: Record::Data(Bytes::from(vec![epoch as u8])),
        })
        .collect()
}

fn quorum_at(epoch: i32) -> QuorumState {
    QuorumState {
        leader_epoch: epoch,
        ..QuorumState::default()
    }
}

/// Replicas whose disks are instant and whose network is perfect.
struct Instant {
    replicas: Vec<RaftReplica>,
    now_ms: i64,
    in_flight: VecDeque<(NodeId, NodeId, Message)>,
    truncations: Vec<(NodeId, i64)>,
}

impl Instant {
    fn new(logs: &[(&[i32], i32)]) -> Instant {
        let voters: Vec<NodeId> = (1..=logs.len() as i32).map(NodeId).collect();
        let replicas = logs
            .iter()
            .zip(&voters)
            .map(|(&(epochs, quorum_epoch), &id)| {
                let quorum = quorum_at(quorum_epoch);
                RaftReplica::new(id, &voters, quorum, entries_of(epochs), id.0 as u64, 0)
            })
            .collect();
        Instant {
            replicas,
            now_ms: 0,
            in_flight: VecDeque::new(),
            truncations: Vec::new(),
        }
    }

    fn replica(&mut self, id: i32) -> &mut RaftReplica {
        &mut self.replicas[(id - 1) as usize]
    }

    /// Carries out a replica's outputs, reporting every write durable at once.
    fn drain(&mut self, id: i32) {
        let now_ms = self.now_ms;
        for _ in 0..OUTPUTS_PER_SETTLE_MAX {
            let Some(output) = self.replica(id).poll_output() else {
                return;
            };
            let persisted = match output {
                RaftOutput::PersistQuorumState(quorum) => Persisted::QuorumState(quorum),
                RaftOutput::Append {
                    offset_first,
                    entries,
                } => Persisted::LogUpTo(offset_first + entries.len() as i64),
                RaftOutput::Truncate { offset } => {
                    self.truncations.push((NodeId(id), offset));
                    continue;
                }
                RaftOutput::Send { to, message } => {
                    self.in_flight.push_back((NodeId(id), to, message));
                    continue;
                }
                RaftOutput::Committed { .. } => continue,
            };
            self.replica(id).handle_persisted(now_ms, persisted);
        }
        panic!("replica {id} never stopped producing outputs");
    }

    /// Delivers until no message is left.
    fn settle(&mut self) {
        for id in 1..=self.replicas.len() as i32 {
            self.drain(id);
        }
        for _ in 0..OUTPUTS_PER_SETTLE_MAX {
            let Some((from, to, message)) = self.in_flight.pop_front() else {
                return;
            };
            let now_ms = self.now_ms;
            self.replica(to.0).handle_message(now_ms, from, message);
            self.drain(to.0);
        }
        panic!("messages never stopped");
    }

    /// Replica `id` stands at its election deadline; nobody else's timer runs.
    fn stand(&mut self, id: i32) {
        self.now_ms = self.replica(id).poll_timeout().expect("an election timer");
        let now_ms = self.now_ms;
        self.replica(id).handle_timeout(now_ms);
        self.settle();
    }
}

fn vote_request(candidate: i32, epoch: i32, last: (i32, i64)) -> Message {
    Message::VoteRequest {
        candidate_epoch: epoch,
        candidate_id: NodeId(candidate),
        last_offset_epoch: last.0,
        last_offset: last.1,
    }
}

/// Every output of `replica` until it has none.
fn outputs(replica: &mut RaftReplica) -> Vec<RaftOutput> {
    std::iter::from_fn(|| replica.poll_output()).collect()
}

fn granted(output: &RaftOutput) -> Option<(NodeId, bool)> {
    match *output {
        RaftOutput::Send {
            to,
            message: Message::VoteResponse { vote_granted, .. },
        } => Some((to, vote_granted)),
        _ => None,
    }
}

#[test]
fn a_voter_grants_once_per_epoch_and_only_after_the_vote_is_durable() {
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    let mut voter = RaftReplica::new(NodeId(1), &voters, quorum_at(2), entries_of(&[1, 1]), 1, 0);
    // Behind by offset: refused, but the epoch is taken in.
    voter.handle_message(10, NodeId(2), vote_request(2, 3, (1, 1)));
    // As far along: granted.
    voter.handle_message(11, NodeId(3), vote_request(3, 3, (1, 2)));
    let written = outputs(&mut voter);
    assert_eq!(
        written,
        [
            RaftOutput::PersistQuorumState(quorum_at(3)),
            RaftOutput::PersistQuorumState(QuorumState {
                voted_id: Some(NodeId(3)),
                ..quorum_at(3)
            }),
        ],
        "no answer leaves before the vote is durable"
    );
    voter.handle_persisted(12, Persisted::QuorumState(quorum_at(3)));
    assert!(
        outputs(&mut voter).is_empty(),
        "the vote itself is not durable yet"
    );
    let RaftOutput::PersistQuorumState(with_vote) = written[1] else {
        unreachable!()
    };
    voter.handle_persisted(13, Persisted::QuorumState(with_vote));
    let answers: Vec<_> = outputs(&mut voter).iter().filter_map(granted).collect();
    assert_eq!(answers, [(NodeId(2), false), (NodeId(3), true)]);
    // A better log, same epoch: refused; the same candidate again: granted.
    voter.handle_message(14, NodeId(2), vote_request(2, 3, (9, 99)));
    voter.handle_message(15, NodeId(3), vote_request(3, 3, (1, 2)));
    let answers: Vec<_> = outputs(&mut voter).iter().filter_map(granted).collect();
    assert_eq!(answers, [(NodeId(2), false), (NodeId(3), true)]);
    assert_eq!(voter.role(), Role::Voted);
}

#[test]
fn a_later_last_epoch_beats_a_longer_log() {
    let voters = [NodeId(1), NodeId(2)];
    let mut voter = RaftReplica::new(
        NodeId(1),
        &voters,
        quorum_at(2),
        entries_of(&[1, 1, 2]),
        1,
        0,
    );
    voter.handle_message(10, NodeId(2), vote_request(2, 3, (1, 9)));
    voter.handle_message(11, NodeId(2), vote_request(2, 4, (3, 1)));
    let written = outputs(&mut voter);
    let mut persisted = written.iter().filter_map(|output| match output {
        RaftOutput::PersistQuorumState(quorum) => Some(*quorum),
        _ => None,
    });
    assert_eq!(
        persisted.next_back().and_then(|quorum| quorum.voted_id),
        Some(NodeId(2))
    );
    assert_eq!(voter.leader_epoch(), 4);
}

#[test]
fn a_new_leader_truncates_a_diverging_follower_and_commits_through_its_own_epoch() {
    // Replica 2 wrote an entry of epoch 3 that the others never saw;
    // replica 1 kept two entries of epoch 2 from a leader that lost.
    let mut cluster = Instant::new(&[(&[1, 1, 2, 2, 2], 3), (&[1, 1, 1, 3], 3), (&[1, 1], 3)]);
    cluster.stand(2);
    let leader = &cluster.replicas[1];
    assert_eq!((leader.role(), leader.leader_epoch()), (Role::Leader, 4));
    let expected: Vec<i32> = vec![1, 1, 1, 3, 4];
    for replica in &cluster.replicas {
        let epochs: Vec<i32> = replica.entries().iter().map(|entry| entry.epoch).collect();
        assert_eq!(epochs, expected, "replica {}", replica.id());
        assert_eq!(replica.entries(), cluster.replicas[1].entries());
        assert_eq!(replica.high_watermark(), 5, "replica {}", replica.id());
    }
    // Replica 1's epoch 2 is not on the leader, whose epoch 1 ends at 3; its
    // own epoch 1 ends at 2, so it truncates to 2, not 3.
    assert_eq!(cluster.truncations, [(NodeId(1), 2)]);
    assert!(matches!(
        cluster.replicas[1].entries()[4].record,
        Record::LeaderChange {
            leader_id: NodeId(2),
            ..
        }
    ));
}

#[test]
fn proposals_commit_on_a_majority_and_followers_learn_the_high_watermark() {
    let mut cluster = Instant::new(&[(&[], 0), (&[], 0), (&[], 0)]);
    cluster.stand(3);
    let now_ms = cluster.now_ms;
    let records = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
    let offset = cluster.replica(3).propose(now_ms, records).expect("leads");
    assert_eq!(offset, 1, "after the leader-change entry");
    cluster.settle();
    for replica in &cluster.replicas {
        assert_eq!(replica.high_watermark(), 3, "replica {}", replica.id());
    }
    let refused = cluster.replica(1).propose(now_ms, vec![Bytes::new()]);
    assert_eq!(
        refused,
        Err(super::ProposeError::NotLeader {
            leader_hint: Some(NodeId(3)),
            leader_epoch: 1
        })
    );
}

#[test]
fn a_restarted_leader_resigns_and_a_restarted_voter_keeps_its_vote() {
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    let led = QuorumState {
        leader_epoch: 5,
        leader_id: Some(NodeId(1)),
        voted_id: Some(NodeId(1)),
    };
    let leader = RaftReplica::new(NodeId(1), &voters, led, entries_of(&[5]), 1, 0);
    assert_eq!(leader.role(), Role::Resigned);
    let voted = QuorumState {
        voted_id: Some(NodeId(3)),
        ..quorum_at(5)
    };
    let mut voter = RaftReplica::new(NodeId(2), &voters, voted, Vec::new(), 2, 0);
    voter.handle_message(1, NodeId(1), vote_request(1, 5, (5, 1)));
    let answers: Vec<_> = outputs(&mut voter).iter().filter_map(granted).collect();
    assert_eq!(answers, [(NodeId(1), false)]);
}

fn fetch(correlation_id: u64, epoch: i32, fetch_offset: i64, last_fetched_epoch: i32) -> Message {
    Message::FetchRequest {
        correlation_id,
        current_leader_epoch: epoch,
        fetch_offset,
        last_fetched_epoch,
    }
}

fn committed(outputs: &[RaftOutput]) -> Vec<i64> {
    outputs
        .iter()
        .filter_map(|output| match *output {
            RaftOutput::Committed { high_watermark } => Some(high_watermark),
            _ => None,
        })
        .collect()
}

/// Replica 1 of three, holding two entries of epoch 1, elected leader of
/// epoch 2 with replica 2's vote; its leader-change entry is at offset 2.
fn leader_of_epoch_two(mutation: Mutation) -> (RaftReplica, i64) {
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    let mut leader = RaftReplica::new(NodeId(1), &voters, quorum_at(1), entries_of(&[1, 1]), 1, 0)
        .with_mutation(mutation);
    let now_ms = leader.poll_timeout().expect("an election timer");
    leader.handle_timeout(now_ms);
    let candidacy = QuorumState {
        voted_id: Some(NodeId(1)),
        ..quorum_at(2)
    };
    leader.handle_persisted(now_ms, Persisted::QuorumState(candidacy));
    let granted = Message::VoteResponse {
        leader_epoch: 2,
        leader_id: None,
        vote_granted: true,
    };
    leader.handle_message(now_ms, NodeId(2), granted);
    assert_eq!(leader.role(), Role::Leader);
    let leading = QuorumState {
        leader_id: Some(NodeId(1)),
        ..candidacy
    };
    leader.handle_persisted(now_ms, Persisted::QuorumState(leading));
    outputs(&mut leader);
    (leader, now_ms)
}

#[test]
fn earlier_epochs_commit_only_under_the_leaders_own_durable_entry() {
    let (mut leader, now_ms) = leader_of_epoch_two(Mutation::None);
    // Follower 2 holds both entries of epoch 1 durably, so a majority holds
    // them; yet nothing commits while the epoch's own entry (offset 2) is
    // durable on the leader alone.
    leader.handle_message(now_ms, NodeId(2), fetch(1, 2, 2, 1));
    leader.handle_persisted(now_ms, Persisted::LogUpTo(3));
    assert_eq!(committed(&outputs(&mut leader)), Vec::<i64>::new());
    assert_eq!(leader.high_watermark(), 0);
    leader.handle_message(now_ms, NodeId(2), fetch(2, 2, 3, 2));
    assert_eq!(committed(&outputs(&mut leader)), [3]);
}

#[test]
fn a_leader_counting_earlier_epochs_commits_them_without_its_own_entry() {
    // Mutation `commit-older-epoch`: the same exchange commits epoch 1's
    // entries as soon as follower 2 reports them, with the epoch's own
    // entry on the leader alone (what Raft's Figure 8 loses).
    let (mut leader, now_ms) = leader_of_epoch_two(Mutation::CommitOlderEpochByCounting);
    leader.handle_message(now_ms, NodeId(2), fetch(1, 2, 2, 1));
    assert_eq!(committed(&outputs(&mut leader)), [2]);
    assert_eq!(leader.high_watermark(), 2);
}

#[test]
fn the_leader_counts_its_own_log_only_as_far_as_it_is_durable() {
    let mut cluster = Instant::new(&[(&[], 0), (&[], 0), (&[], 0)]);
    cluster.stand(1);
    let now_ms = cluster.now_ms;
    let leader = cluster.replica(1);
    assert_eq!(leader.high_watermark(), 1);
    leader
        .propose(now_ms, vec![Bytes::from_static(b"x")])
        .expect("leads");
    let appended = outputs(leader);
    assert!(matches!(
        appended[0],
        RaftOutput::Append {
            offset_first: 1,
            ..
        }
    ));
    // Follower 2 reports offset 2 durable; the leader's own copy is not
    // synced, and follower 3 is silent: one of three.
    leader.handle_message(now_ms, NodeId(2), fetch(99, 1, 1, 1));
    outputs(leader);
    leader.handle_message(now_ms, NodeId(2), fetch(100, 1, 2, 1));
    assert_eq!(committed(&outputs(leader)), Vec::<i64>::new());
    leader.handle_persisted(now_ms, Persisted::LogUpTo(2));
    assert_eq!(committed(&outputs(leader)), [2]);
}
