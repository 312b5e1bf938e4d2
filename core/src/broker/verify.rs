//! KIP-890 part 1 on the partition side: before a producer's first
//! transactional batch opens a transaction on a partition this broker
//! leads (or its first transactional offsets open one on a group's
//! `__consumer_offsets` partition), the producer's transaction coordinator
//! confirms that the partition was added to the ongoing transaction of
//! that producer id and epoch. A write that comes too late (its
//! transaction ended) or from a fenced producer is refused before it is
//! appended, so it can never open a transaction no coordinator will end.
//!
//! A coordinator in this node is asked directly. One on another broker is
//! asked over the `verify` peer link (AddPartitionsToTxn v4, verify only):
//! the request waits, with the requests behind it on its connection, and is
//! handled again once every partition has its verdict. A marker for the
//! producer written to the partition in between voids the verdict (Kafka's
//! verification guard): the transaction it confirmed is over.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use super::txns::txn_partition;
use super::Broker;
use crate::config::Mutation;
use crate::group::Token;
use crate::storage::Storage;
use crate::txn::TXN_TOPIC;
use crate::types::TopicPartition;

/// What the coordinator says of a producer's write to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// In the producer's ongoing transaction: the write may go on.
    Verified,
    /// Not: the coordinator's error (or why it could not be asked).
    Refused(ResponseError),
    /// The coordinator is this broker, which must ask it first.
    Ask { coordinator: i32 },
}

/// The question a request waits on: are `partitions` in the ongoing
/// transaction of `producer_id` at `producer_epoch`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    pub coordinator: i32,
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VerdictState {
    Waiting,
    Verified,
    Refused(ResponseError),
    /// A marker for the producer was written since the question was
    /// asked: whatever the answer, the transaction it speaks of is over.
    Voided,
}

#[derive(Debug, Clone)]
struct Verdict {
    producer_id: i64,
    /// The partition's leader epoch when asked: a verdict counts only
    /// within it (markers may have come by replication since).
    leader_epoch: i32,
    state: VerdictState,
}

/// The verdicts of requests waiting on a remote coordinator, by the
/// request's token and partition.
#[derive(Debug, Default)]
pub struct Verifications {
    verdicts: BTreeMap<(Token, TopicPartition), Verdict>,
}

impl Verifications {
    /// The key range of one request's verdicts (tokens count up from 1,
    /// far from the top of `u64`).
    fn range_of(token: Token) -> std::ops::Range<(Token, TopicPartition)> {
        let first = |token| (token, TopicPartition::new("", i32::MIN));
        first(token)..first(token + 1)
    }

    fn of(&self, token: Token) -> impl Iterator<Item = (&TopicPartition, &Verdict)> {
        self.verdicts
            .range(Self::range_of(token))
            .map(|((_, tp), verdict)| (tp, verdict))
    }

    /// True while some partition of the request waits for its verdict.
    pub fn waiting(&self, token: Token) -> bool {
        self.of(token)
            .any(|(_, v)| v.state == VerdictState::Waiting)
    }

    /// Forgets the verdicts of a request that was handled (or is gone).
    pub fn end(&mut self, token: Token) {
        self.verdicts.retain(|(t, _), _| *t != token);
    }

    /// Keeps only the verdicts of the requests in `live`.
    pub fn retain(&mut self, live: impl Fn(Token) -> bool) {
        self.verdicts.retain(|(t, _), _| live(*t));
    }

    /// The coordinator answered for `partition` (`None`: it is in the
    /// transaction).
    pub fn answered(
        &mut self,
        token: Token,
        partition: &TopicPartition,
        error: Option<ResponseError>,
    ) {
        if let Some(verdict) = self.verdicts.get_mut(&(token, partition.clone())) {
            if verdict.state == VerdictState::Waiting {
                verdict.state = match error {
                    None => VerdictState::Verified,
                    Some(error) => VerdictState::Refused(error),
                };
            }
        }
    }

    /// No answer will come for the request's partitions still waiting.
    pub fn lost(&mut self, token: Token) {
        for verdict in self
            .verdicts
            .range_mut(Self::range_of(token))
            .map(|(_, v)| v)
        {
            if verdict.state == VerdictState::Waiting {
                verdict.state = VerdictState::Refused(ResponseError::NetworkException);
            }
        }
    }

    /// Checks that every verdict belongs to a request in `waiting` (those
    /// whose slots wait for verification) and names a producer.
    pub fn invariants(&self, waiting: &std::collections::BTreeSet<Token>) {
        for ((token, tp), verdict) in &self.verdicts {
            assert!(
                verdict.producer_id >= 0,
                "a verdict on {tp} names a producer"
            );
            assert!(
                waiting.contains(token),
                "a verdict on {tp} outlived the request that waited for it"
            );
        }
    }
}

impl<S: Storage> Broker<S> {
    /// Whether `producer_id` at `epoch` may open a transaction on
    /// `partition` with request `token`'s write (see the module
    /// documentation).
    pub fn verify_txn(
        &self,
        token: Token,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partition: &TopicPartition,
    ) -> Verification {
        if let Some(verdict) = self.verifications.verdicts.get(&(token, partition.clone())) {
            if verdict.producer_id != producer_id
                || verdict.leader_epoch != self.append_epoch(&partition.topic, partition.partition)
            {
                return Verification::Refused(ResponseError::NotEnoughReplicas);
            }
            return match verdict.state {
                VerdictState::Verified => Verification::Verified,
                VerdictState::Refused(error) => Verification::Refused(error),
                VerdictState::Voided => Verification::Refused(ResponseError::InvalidTxnState),
                VerdictState::Waiting => {
                    unreachable!("a request is handled again only once its verdicts are in")
                }
            };
        }
        let txn_partition = txn_partition(transactional_id, self.txn_partition_count());
        if self.transactions.loaded.contains(&txn_partition) {
            return match self.transactions.get(transactional_id) {
                None => Verification::Refused(ResponseError::InvalidProducerIdMapping),
                // Its last change is not safe yet: asked again shortly.
                Some(_) if !self.txn_settled(transactional_id) => {
                    Verification::Refused(ResponseError::ConcurrentTransactions)
                }
                Some(meta) => match meta.verify(producer_id, epoch, partition) {
                    Ok(()) => Verification::Verified,
                    Err(error) => Verification::Refused(error),
                },
            };
        }
        if self.cluster.is_none() {
            // A single node whose `__transaction_state` is not there (no
            // transactional id was ever initialised): no coordinator to
            // ask, and the write is taken as Kafka took it before 3.6.
            return Verification::Verified;
        }
        let leader = self
            .registration(TXN_TOPIC, txn_partition)
            .map(|r| r.leader)
            .filter(|&leader| leader >= 0 && leader != self.config.node_id);
        match leader {
            // Kafka before 3.6: the write is taken unverified.
            Some(_) if self.config.mutated(Mutation::NoRemoteVerification) => {
                Verification::Verified
            }
            Some(coordinator) => Verification::Ask { coordinator },
            // No coordinator to ask (none elected, or this broker's is
            // still loading): the producer retries.
            None => Verification::Refused(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Request `token` waits for the coordinator's verdict on `partitions`
    /// (each led here) for `producer_id`.
    pub fn begin_verification(
        &mut self,
        token: Token,
        producer_id: i64,
        partitions: &[TopicPartition],
    ) {
        for tp in partitions {
            let leader_epoch = self.append_epoch(&tp.topic, tp.partition);
            self.verifications.verdicts.insert(
                (token, tp.clone()),
                Verdict {
                    producer_id,
                    leader_epoch,
                    state: VerdictState::Waiting,
                },
            );
        }
    }

    /// A marker for `producer_id` was written to `partition`: verdicts
    /// given before it speak of a transaction that is over.
    pub(super) fn void_verifications(&mut self, producer_id: i64, partition: &TopicPartition) {
        for ((_, tp), verdict) in self.verifications.verdicts.iter_mut() {
            if tp == partition && verdict.producer_id == producer_id {
                verdict.state = VerdictState::Voided;
            }
        }
    }
}
