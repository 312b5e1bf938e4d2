//! The partition leader's side of KIP-890 verification across brokers
//! (see `broker::verify`): the question to a transaction coordinator on
//! another broker, over the `verify` peer link (AddPartitionsToTxn v4,
//! verify only), its answer or loss, and the requests handled again once
//! their verdicts are in: the one that waited, then those deferred behind
//! it on its connection, in order.

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{Node, SentRequest};
use crate::broker::verify::VerifyRequest;
use crate::group::Token;
use crate::session::{ConnectionId, Slot, SlotState};
use crate::storage::Storage;
use crate::types::{Channel, NodeId, Now, TopicPartition};
use crate::wire::reply::decode_response;
use crate::wire::{decode, Request};

/// The version of AddPartitionsToTxn brokers verify with (Kafka 3.6+).
pub(super) const VERIFY_VERSION: i16 = 4;

/// An acks=0 produce: it has no answer, so it never waits in a queue.
pub(super) fn acks_zero_produce(request: &Request) -> bool {
    request.header.api_key == ApiKey::Produce
        && decode::<ProduceRequest>(&mut request.body.clone(), request.header.version)
            .is_ok_and(|produce| produce.acks == 0)
}

impl<S: Storage> Node<S> {
    /// Asks the coordinator `ask` names; if it cannot be asked now, the
    /// verdicts are that it was not reachable.
    pub(super) fn ask_coordinator(&mut self, now: Now, token: Token, ask: &VerifyRequest) {
        let link = (NodeId(ask.coordinator), Channel::Verify);
        let up = self.peers.get(&link).is_some_and(|l| l.up);
        let sent = up && {
            let request = verify_request(ask);
            self.send_peer_verifying(now, link, &request, token)
        };
        if !sent {
            tracing::debug!(
                coordinator = ask.coordinator,
                "cannot ask a transaction coordinator now"
            );
            self.broker.verifications.lost(token);
        }
    }

    /// The coordinator's answer to the question of the request `token`.
    pub(super) fn verification_answer(
        &mut self,
        now: Now,
        peer: NodeId,
        token: Token,
        sent: &SentRequest,
        frame: bytes::Bytes,
    ) {
        match decode_response::<AddPartitionsToTxnResponse>(sent.api_key, sent.version, frame) {
            Ok((_, response)) => {
                let whole = ResponseError::try_from_code(response.error_code);
                for result in &response.results_by_transaction {
                    for topic in &result.topic_results {
                        for partition in &topic.results_by_partition {
                            let tp = TopicPartition::new(
                                topic.name.0.to_string(),
                                partition.partition_index,
                            );
                            let error = whole.or_else(|| {
                                ResponseError::try_from_code(partition.partition_error_code)
                            });
                            tracing::debug!(%peer, partition = %tp, ?error, "a transaction coordinator's verdict");
                            self.broker.verifications.answered(token, &tp, error);
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%peer, %error, "bad AddPartitionsToTxn response"),
        }
        // Partitions the answer did not name get no verdict from it.
        self.broker.verifications.lost(token);
        if let Some(connection) = self.sessions.verifying_connection(token) {
            self.resume_held(now, connection);
        }
    }

    /// Questions whose link went down: no answer will come.
    pub(super) fn verifications_lost(&mut self, now: Now, lost: &[SentRequest]) {
        for sent in lost {
            if let Some(token) = sent.verifying {
                self.broker.verifications.lost(token);
                if let Some(connection) = self.sessions.verifying_connection(token) {
                    self.resume_held(now, connection);
                }
            }
        }
    }

    /// Forgets the verdicts of requests whose connection closed.
    pub(super) fn forget_orphan_verifications(&mut self) {
        let live = self.sessions.verifying_tokens();
        self.broker
            .verifications
            .retain(|token| live.contains(&token));
    }

    /// Handles again, in order, a connection's requests from the first
    /// that waited for verification: each whose verdicts are in, and those
    /// deferred behind it, until one waits (again) for a coordinator.
    pub(super) fn resume_held(&mut self, now: Now, connection: ConnectionId) {
        loop {
            let held = self.sessions.take_held(connection);
            if held.is_empty() {
                return;
            }
            let mut waiting_on = None;
            for Slot { header, state } in held {
                if waiting_on.is_some() {
                    self.sessions.push(connection, Slot { header, state });
                    continue;
                }
                let (request, token) = match state {
                    SlotState::Verifying { token, request }
                        if !self.broker.verifications.waiting(token) =>
                    {
                        (request, token)
                    }
                    SlotState::Verifying { token, request } => {
                        waiting_on = Some(token);
                        let state = SlotState::Verifying { token, request };
                        self.sessions.push(connection, Slot { header, state });
                        continue;
                    }
                    SlotState::Deferred(request) => {
                        self.next_token += 1;
                        (request, self.next_token)
                    }
                    state => {
                        self.sessions.push(connection, Slot { header, state });
                        continue;
                    }
                };
                match self.handle_request(now, connection, *request, token) {
                    Ok(Some(state)) => {
                        if let SlotState::Verifying { token, .. } = &state {
                            waiting_on = Some(*token);
                        }
                        self.sessions.push(connection, Slot { header, state });
                    }
                    // Only an acks=0 produce has no answer, and it is
                    // never deferred.
                    Ok(None) => {}
                    Err(why) => {
                        tracing::warn!(connection = connection.0, %why, "closing connection after a bad request");
                        self.close(connection);
                        return;
                    }
                }
            }
            // A question that could not be sent has its verdicts at once.
            match waiting_on {
                Some(token) if !self.broker.verifications.waiting(token) => continue,
                _ => return,
            }
        }
    }
}

/// The question, as a broker asks it.
fn verify_request(ask: &VerifyRequest) -> AddPartitionsToTxnRequest {
    let mut topics: Vec<AddPartitionsToTxnTopic> = Vec::new();
    for tp in &ask.partitions {
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(topic) => topic.partitions.push(tp.partition),
            None => topics.push(
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                ask.transactional_id.clone(),
            )))
            .with_producer_id(ProducerId(ask.producer_id))
            .with_producer_epoch(ask.producer_epoch)
            .with_verify_only(true)
            .with_topics(topics),
    ])
}
