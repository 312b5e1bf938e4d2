//! The node's side of the controller quorum: Raft requests from peers
//! arrive on client connections and wait in their slots for this node's
//! replica to answer; the replica's requests go out over the peer links,
//! and their answers come back to it.
//!
//! A replica answers most requests at once, but a vote or an epoch waits
//! for the quorum state to be durable and a caught-up fetch is held by the
//! leader, and some requests get no answer at all (a stale candidate's).
//! So each waiting request has a deadline (`RAFT_ANSWER_MS`, below the
//! peer's own request timeout): past it, or when a newer request of the
//! same kind from the same peer arrives, it is answered REQUEST_TIMED_OUT,
//! which the peer's replica takes as a lost message.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchRequest};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

use super::describe_quorum::leader_end_offset;
use super::{Node, Output, SentRequest, PEER_REQUESTS_IN_FLIGHT_MAX, PEER_REQUEST_TIMEOUT_MS};
use crate::group::Token;
use crate::quorum::QuorumOutput;
use crate::raft::wire::{self, Route, Versions};
use crate::raft::Message;
use crate::session::{ConnectionId, Slot, SlotState};
use crate::storage::Storage;
use crate::timer::Timer;
use crate::types::{Channel, NodeId, Now};
use crate::wire::ReplyHeader;

/// How long a Raft request from a peer may wait for this replica's answer:
/// longer than the leader holds a caught-up fetch, shorter than the peer's
/// request timeout, so a link is never reset for a request the replica
/// chose not to answer.
pub const RAFT_ANSWER_MS: i64 = 1_000;
const _: () = assert!(RAFT_ANSWER_MS > crate::raft::FETCH_WAIT_MS_MAX);
const _: () = assert!(RAFT_ANSWER_MS < PEER_REQUEST_TIMEOUT_MS);

/// A peer's Raft request waiting for this replica's answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct RaftWaiting {
    from: NodeId,
    header: ReplyHeader,
    /// A fetch is answered by the response that carries its id.
    fetch_correlation_id: Option<u64>,
    deadline_ms: i64,
}

/// True when a frame is a request only the quorum serves: Vote,
/// BeginQuorumEpoch, EndQuorumEpoch, or a Fetch of the metadata log.
pub(super) fn is_raft_api(frame: &[u8]) -> bool {
    let Some(key) = frame.get(..2) else {
        return false;
    };
    let key = i16::from_be_bytes([key[0], key[1]]);
    [
        ApiKey::Vote,
        ApiKey::BeginQuorumEpoch,
        ApiKey::EndQuorumEpoch,
    ]
    .iter()
    .any(|api| *api as i16 == key)
}

/// True when a Fetch request (of any version) reads the metadata log:
/// a Raft follower's fetch, for the quorum rather than the broker.
pub(super) fn is_metadata_fetch(header: &ReplyHeader, body: &Bytes) -> bool {
    let mut body = body.clone();
    let Ok(request) = FetchRequest::decode(&mut body, header.version) else {
        // The broker's handler answers what does not decode.
        return false;
    };
    request.topics.iter().any(|topic| {
        topic.topic_id == wire::METADATA_TOPIC_ID || &*topic.topic.0 == wire::METADATA_TOPIC
    })
}

impl<S: Storage> Node<S> {
    /// Forgets waiting Raft requests and answers whose connection closed.
    pub(super) fn forget_orphan_raft(&mut self) {
        if self.raft_waiting.is_empty() && self.raft_answers.is_empty() {
            return;
        }
        let live = self.sessions.raft_tokens();
        self.raft_waiting.retain(|token, _| live.contains(token));
        self.raft_answers.retain(|token, _| live.contains(token));
    }

    /// The cluster id Raft requests carry and check.
    fn raft_cluster_id(&self) -> String {
        self.broker.cluster_id.clone()
    }

    /// A Raft request from a peer, on one of its connections to this node.
    /// Err closes the connection (an undecodable frame).
    pub(super) fn raft_request(
        &mut self,
        now: Now,
        connection: ConnectionId,
        header: ReplyHeader,
        body: Bytes,
    ) -> Result<bool, String> {
        let cluster_id = self.raft_cluster_id();
        let Some(quorum) = &self.quorum else {
            return Err(format!("{:?} on a node without a quorum", header.api_key));
        };
        if !quorum.is_started() {
            // Still opening: the peer retries as after a lost message.
            let frame = wire::error_response_frame(&header, ResponseError::RequestTimedOut.code())
                .map_err(|e| e.to_string())?;
            self.push_ready(connection, header, frame);
            return Ok(true);
        }
        let inbound = match wire::message_from_request(&header, body, &cluster_id, self.node_id) {
            Ok(inbound) => inbound,
            Err(error) => {
                let Some(code) = error.error_code() else {
                    return Err(error.to_string());
                };
                tracing::warn!(%error, "refusing a raft request");
                let frame = wire::error_response_frame(&header, code).map_err(|e| e.to_string())?;
                self.push_ready(connection, header, frame);
                return Ok(true);
            }
        };
        let from = inbound.sender;
        // One waiting request per peer and kind: an older one is answered
        // now, as lost.
        let older: Vec<Token> = self
            .raft_waiting
            .iter()
            .filter(|(_, w)| w.from == from && w.header.api_key == header.api_key)
            .map(|(token, _)| *token)
            .collect();
        for token in older {
            self.decline_raft(token);
        }
        self.next_token += 1;
        let token = self.next_token;
        let (fetch_correlation_id, fetch_offset) = match inbound.message {
            Message::FetchRequest {
                correlation_id,
                fetch_offset,
                ..
            } => (Some(correlation_id), Some(fetch_offset)),
            _ => (None, None),
        };
        self.raft_waiting.insert(
            token,
            RaftWaiting {
                from,
                header,
                fetch_correlation_id,
                deadline_ms: now.monotonic_ms + RAFT_ANSWER_MS,
            },
        );
        self.sessions.push(
            connection,
            Slot {
                header,
                state: SlotState::Raft(token),
            },
        );
        let quorum = self.quorum.as_mut().expect("checked above");
        let leader_end_offset = quorum.replica().and_then(leader_end_offset);
        quorum.handle_message(
            &mut self.broker.storage,
            &mut self.broker.durability,
            now.monotonic_ms,
            from,
            inbound.message,
        );
        if let (Some(fetch_offset), Some(leader_end_offset)) = (fetch_offset, leader_end_offset) {
            self.note_voter_fetch(now, from, fetch_offset, leader_end_offset);
        }
        Ok(true)
    }

    fn push_ready(&mut self, connection: ConnectionId, header: ReplyHeader, frame: Bytes) {
        self.sessions.push(
            connection,
            Slot {
                header,
                state: SlotState::Ready(frame),
            },
        );
    }

    /// Answers a waiting Raft request as lost.
    fn decline_raft(&mut self, token: Token) {
        let Some(waiting) = self.raft_waiting.remove(&token) else {
            return;
        };
        let code = ResponseError::RequestTimedOut.code();
        match wire::error_response_frame(&waiting.header, code) {
            Ok(frame) => {
                self.raft_answers.insert(token, frame);
            }
            Err(error) => tracing::error!(%error, "cannot encode a raft error answer"),
        }
    }

    /// Answers the waiting Raft requests past their deadline.
    pub(super) fn decline_overdue_raft(&mut self, now: Now) {
        let overdue: Vec<Token> = self
            .raft_waiting
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now.monotonic_ms)
            .map(|(token, _)| *token)
            .collect();
        for token in overdue {
            self.decline_raft(token);
        }
    }

    /// A Raft response from a peer, to the request `sent` with this node's
    /// replica's `request`.
    pub(super) fn raft_response(
        &mut self,
        now: Now,
        peer: NodeId,
        sent: &SentRequest,
        request: &Message,
        frame: Bytes,
    ) {
        match wire::message_from_response(request, sent.version, frame) {
            Ok(message) => {
                if let Some(quorum) = &mut self.quorum {
                    quorum.handle_message(
                        &mut self.broker.storage,
                        &mut self.broker.durability,
                        now.monotonic_ms,
                        peer,
                        message,
                    );
                }
            }
            // Taken as a lost message: the replica resends or moves on.
            Err(error) => tracing::debug!(%peer, %error, "raft answer not taken"),
        }
    }

    /// Carries out what the quorum asked: messages to peers (requests over
    /// the links, answers into the slots waiting for them) and committed
    /// entries. Arms the quorum's timers.
    /// True when entries were committed (replies waiting for a commit may
    /// be ready).
    pub(super) fn drain_quorum(&mut self, now: Now) -> bool {
        let Some(quorum) = &mut self.quorum else {
            return false;
        };
        let mut committed = false;
        let mut outputs = Vec::new();
        while let Some(output) = quorum.poll_output() {
            outputs.push(output);
        }
        let deadline = quorum.poll_timeout();
        for output in outputs {
            match output {
                QuorumOutput::Send { to, message } if wire::is_request(&message) => {
                    self.send_raft_request(now, to, &message)
                }
                QuorumOutput::Send { to, message } => self.answer_raft(to, &message),
                QuorumOutput::Committed { offset, entry } => {
                    tracing::debug!(offset, epoch = entry.epoch, "metadata entry committed");
                    assert_eq!(offset, self.quorum_committed, "committed entries in order");
                    self.quorum_committed = offset + 1;
                    self.apply_committed(now, offset, entry.epoch, &entry.record);
                    committed = true;
                }
            }
        }
        match deadline {
            Some(deadline) => self.timers.set(Timer::Quorum, deadline),
            None => self.timers.stop(Timer::Quorum),
        }
        match self.raft_waiting.values().map(|w| w.deadline_ms).min() {
            Some(deadline) => self.timers.set(Timer::RaftAnswers, deadline),
            None => self.timers.stop(Timer::RaftAnswers),
        }
        committed
    }

    /// An answer of this replica: into the slot of the request it answers,
    /// if that still waits.
    fn answer_raft(&mut self, to: NodeId, message: &Message) {
        let api_key = wire::api_key_of(message);
        let fetch_correlation_id = match message {
            Message::FetchResponse { correlation_id, .. } => Some(*correlation_id),
            _ => None,
        };
        let token = self
            .raft_waiting
            .iter()
            .find(|(_, w)| {
                w.from == to
                    && w.header.api_key == api_key
                    && w.fetch_correlation_id == fetch_correlation_id
            })
            .map(|(token, _)| *token);
        let Some(token) = token else {
            tracing::debug!(peer = %to, ?api_key, "raft answer for a request no longer waiting");
            return;
        };
        let waiting = self.raft_waiting.remove(&token).expect("found above");
        match wire::response_frame(&waiting.header, message) {
            Ok(frame) => {
                self.raft_answers.insert(token, frame);
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode a raft answer");
                self.raft_waiting.insert(token, waiting);
                self.decline_raft(token);
            }
        }
    }

    /// A request of this replica, over the link to `to` if it is up; lost
    /// otherwise, as the replica allows.
    fn send_raft_request(&mut self, now: Now, to: NodeId, message: &Message) {
        let cluster_id = self.raft_cluster_id();
        let client_id = format!("sluice-node-{}", self.node_id);
        let route = Route {
            cluster_id: &cluster_id,
            sender: self.node_id,
            receiver: to,
        };
        let link = self.peers.entry((to, Channel::Raft)).or_default();
        if !link.up {
            tracing::trace!(peer = %to, "raft request dropped: link down");
            return;
        }
        if link.in_flight.len() >= PEER_REQUESTS_IN_FLIGHT_MAX {
            tracing::debug!(peer = %to, "raft request dropped: too many in flight");
            return;
        }
        let correlation_id = link.take_correlation_id();
        let request =
            match wire::request_frame(&Versions::SENT, &route, correlation_id, &client_id, message)
            {
                Ok(request) => request,
                Err(error) => {
                    tracing::error!(peer = %to, %error, "cannot encode a raft request");
                    return;
                }
            };
        if link.in_flight.contains_key(&request.correlation_id) {
            // A fetch id equal to one still in flight: dropped, as lost.
            tracing::debug!(peer = %to, "raft request dropped: correlation id in use");
            return;
        }
        link.in_flight.insert(
            request.correlation_id,
            SentRequest {
                api_key: request.api_key,
                version: request.version,
                deadline_ms: now.monotonic_ms + PEER_REQUEST_TIMEOUT_MS,
                raft: Some(message.clone()),
                forwarded: None,
                markers: Vec::new(),
                verifying: None,
            },
        );
        self.outputs.push_back(Output::SendPeer {
            peer: to,
            channel: Channel::Raft,
            frame: request.frame,
            after_sync: None,
        });
        self.arm_peer_timer(to, Channel::Raft);
    }
}
