//! The messages replicas exchange, and the log entries they carry.
//!
//! Each message keeps the fields of the Kafka request or response it will
//! travel as once wired (Vote, BeginQuorumEpoch, EndQuorumEpoch, Fetch on
//! `__cluster_metadata-0`), so the wiring is a field-by-field mapping. The
//! one addition is `correlation_id` on Fetch, which Kafka carries in the
//! request header: a follower accepts only the answer to its latest fetch.

use bytes::Bytes;

use crate::types::NodeId;

/// One record of the replicated log, with the leader epoch it was written in
/// (a record batch's partition leader epoch, in Kafka's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub epoch: i32,
    pub record: Record,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The first entry of every leader's epoch (Kafka's LEADER_CHANGE
    /// control record): nothing of the epoch commits before it does.
    LeaderChange {
        leader_id: NodeId,
        voters: Vec<NodeId>,
    },
    /// A proposed record, opaque here (a metadata record, once wired).
    Data(Bytes),
}

/// Why a fetch was refused (Kafka's error codes of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// The fetcher's epoch is older than the receiver's.
    FencedLeaderEpoch,
    /// The receiver is not the leader of the fetcher's epoch.
    NotLeaderOrFollower,
}

/// What a fetch returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    /// The fetcher's log matches the leader's up to the fetch offset; these
    /// entries follow it (the records' base offset is `offset_first`).
    Entries {
        offset_first: i64,
        entries: Vec<Entry>,
    },
    /// The fetcher's last fetched epoch or offset is not on the leader's
    /// log: the largest epoch the leader has at or below it, and where that
    /// epoch ends on the leader. The fetcher truncates there and fetches again.
    DivergingEpoch {
        epoch: i32,
        end_offset: i64,
    },
    Error(FetchError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    VoteRequest {
        candidate_epoch: i32,
        candidate_id: NodeId,
        last_offset_epoch: i32,
        /// The candidate's log end offset (exclusive, as Kafka's `LastOffset`).
        last_offset: i64,
    },
    VoteResponse {
        leader_epoch: i32,
        leader_id: Option<NodeId>,
        vote_granted: bool,
    },
    BeginQuorumEpochRequest {
        leader_epoch: i32,
        leader_id: NodeId,
    },
    BeginQuorumEpochResponse {
        leader_epoch: i32,
        leader_id: Option<NodeId>,
    },
    EndQuorumEpochRequest {
        leader_epoch: i32,
        leader_id: NodeId,
        /// Voters in the order the resigning leader would like them to
        /// stand: the most caught up first.
        preferred_successors: Vec<NodeId>,
    },
    EndQuorumEpochResponse {
        leader_epoch: i32,
        leader_id: Option<NodeId>,
    },
    FetchRequest {
        correlation_id: u64,
        current_leader_epoch: i32,
        fetch_offset: i64,
        last_fetched_epoch: i32,
    },
    FetchResponse {
        correlation_id: u64,
        leader_epoch: i32,
        leader_id: Option<NodeId>,
        high_watermark: i64,
        result: FetchResult,
    },
}

impl Message {
    /// The epoch the sender was in, and the leader it knew of in that epoch
    /// (`None` for requests, whose senders are not claiming a leader).
    pub fn epoch_and_leader(&self) -> (i32, Option<NodeId>) {
        match *self {
            Message::VoteRequest {
                candidate_epoch, ..
            } => (candidate_epoch, None),
            Message::BeginQuorumEpochRequest {
                leader_epoch,
                leader_id,
            } => (leader_epoch, Some(leader_id)),
            Message::EndQuorumEpochRequest { leader_epoch, .. } => (leader_epoch, None),
            Message::FetchRequest {
                current_leader_epoch,
                ..
            } => (current_leader_epoch, None),
            Message::VoteResponse {
                leader_epoch,
                leader_id,
                ..
            }
            | Message::BeginQuorumEpochResponse {
                leader_epoch,
                leader_id,
            }
            | Message::EndQuorumEpochResponse {
                leader_epoch,
                leader_id,
            }
            | Message::FetchResponse {
                leader_epoch,
                leader_id,
                ..
            } => (leader_epoch, leader_id),
        }
    }
}
