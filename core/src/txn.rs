//! The transaction coordinator's state machine: for each transactional id,
//! its producer id and epoch, its state and the partitions of its open
//! transaction, with the transitions Kafka's coordinator allows.
//!
//! Pure: a transition takes the current metadata and a request and gives
//! the metadata to record (or an error, or "nothing to record"). The
//! broker writes the record to the id's partition of `__transaction_state`
//! and keeps the new metadata; every answer about an id waits for that
//! id's last record to be durable (and replicated), so nothing answered
//! depends on a record a crash could lose.

pub mod records;

use std::collections::BTreeSet;

use kafka_protocol::ResponseError;

use crate::types::TopicPartition;

/// The topic that holds every transactional id's state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// "No producer epoch", as batches and requests write it.
pub const NO_EPOCH: i16 = -1;

/// A transaction's state, with Kafka's ids (the record's status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions give.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// Markers are being written: the transaction's end is decided.
    pub fn preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }

    /// No transaction is open and none is ending.
    pub fn idle(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }
}

/// An epoch this high leaves no room for the bump a fence needs: the next
/// InitProducerId moves the id to a new producer id.
pub fn epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

/// One transactional id's state, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer id before the last rotation (not recorded: -1 after a load).
    pub prev_producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last bump by InitProducerId, so a retry of that
    /// init is recognised (not recorded: -1 after a load).
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions of the open (or ending) transaction.
    pub partitions: BTreeSet<TopicPartition>,
    /// When the open transaction started; -1 with none.
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// What an InitProducerId does to an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Record this and answer its producer id and epoch once written.
    Write(TxnMetadata),
    /// A retry of the init that made the current epoch: answer it again.
    Again {
        producer_id: i64,
        epoch: i16,
    },
    /// A previous instance left a transaction open: record this (the open
    /// transaction aborting under a bumped epoch, which fences that
    /// instance), write its markers, and have the client retry
    /// (CONCURRENT_TRANSACTIONS).
    FenceOpen(TxnMetadata),
    Refused(ResponseError),
}

impl TxnMetadata {
    /// A new id: a fresh producer id at epoch 0, no transaction.
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
        TxnMetadata {
            producer_id,
            prev_producer_id: -1,
            epoch: 0,
            last_epoch: NO_EPOCH,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now_ms,
        }
    }

    /// `next` with this id's state changed to `state`, stamped `now_ms`.
    fn moved_to(&self, state: TxnState, now_ms: i64) -> TxnMetadata {
        let mut next = self.clone();
        next.state = state;
        next.last_update_ms = now_ms;
        next
    }

    /// InitProducerId for this id (Kafka's `handleInitProducerId` and
    /// `prepareIncrementProducerEpoch`). `expected` is the producer id and
    /// epoch the client names (KIP-360), if any; `new_producer_id` hands
    /// out a fresh one when the epoch is exhausted.
    pub fn init(
        &self,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
        new_producer_id: impl FnOnce() -> Result<i64, ResponseError>,
    ) -> Init {
        if let Some((producer_id, epoch)) = expected {
            let known = self.epoch == NO_EPOCH
                || producer_id == self.producer_id
                || (producer_id == self.prev_producer_id && epoch_exhausted(epoch));
            if !known {
                return Init::Refused(ResponseError::ProducerFenced);
            }
        }
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                Init::Refused(ResponseError::ConcurrentTransactions)
            }
            TxnState::Dead => Init::Refused(ResponseError::ConcurrentTransactions),
            TxnState::Ongoing => {
                // Abort under a bumped epoch; the client's retry, once the
                // abort completes, bumps again.
                Init::FenceOpen(self.fenced_abort(now_ms))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let retry_of_this_epoch = expected.is_none_or(|(_, epoch)| epoch == self.epoch);
                if epoch_exhausted(self.epoch) && retry_of_this_epoch {
                    let producer_id = match new_producer_id() {
                        Ok(id) => id,
                        Err(error) => return Init::Refused(error),
                    };
                    let mut next = self.moved_to(TxnState::Empty, now_ms);
                    next.prev_producer_id = self.producer_id;
                    next.producer_id = producer_id;
                    next.epoch = 0;
                    next.last_epoch = if expected.is_some() {
                        self.epoch
                    } else {
                        NO_EPOCH
                    };
                    next.timeout_ms = timeout_ms;
                    next.partitions.clear();
                    next.start_ms = -1;
                    return Init::Write(next);
                }
                let (epoch, last_epoch) = match expected {
                    None => (self.epoch + 1, NO_EPOCH),
                    Some((_, expected)) if self.epoch == NO_EPOCH || expected == self.epoch => {
                        (self.epoch + 1, self.epoch)
                    }
                    Some((_, expected)) if expected == self.last_epoch => {
                        return Init::Again {
                            producer_id: self.producer_id,
                            epoch: self.epoch,
                        }
                    }
                    Some(_) => return Init::Refused(ResponseError::ProducerFenced),
                };
                let mut next = self.moved_to(TxnState::Empty, now_ms);
                next.epoch = epoch;
                next.last_epoch = last_epoch;
                next.timeout_ms = timeout_ms;
                next.partitions.clear();
                next.start_ms = -1;
                Init::Write(next)
            }
        }
    }

    /// The open transaction, aborting under a bumped epoch (a fence: the
    /// instance that opened it can no longer write or end it). Kafka goes
    /// through PrepareEpochFence, which it never records, to PrepareAbort.
    pub fn fenced_abort(&self, now_ms: i64) -> TxnMetadata {
        assert_eq!(
            self.state,
            TxnState::Ongoing,
            "only an open transaction is fenced"
        );
        let mut next = self.moved_to(TxnState::PrepareAbort, now_ms);
        if self.epoch < i16::MAX {
            next.epoch = self.epoch + 1;
        }
        next.last_epoch = NO_EPOCH;
        next
    }

    /// Checks a request naming this id's producer id and epoch
    /// (AddPartitionsToTxn, AddOffsetsToTxn, EndTxn).
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if self.state == TxnState::Dead || producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != self.epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(())
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, for the group's offsets
    /// partition): `None` when they are all in the open transaction already.
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        partitions: &BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Option<TxnMetadata>, ResponseError> {
        self.check_producer(producer_id, epoch)?;
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                Err(ResponseError::ConcurrentTransactions)
            }
            TxnState::Ongoing if partitions.is_subset(&self.partitions) => Ok(None),
            TxnState::Dead => Err(ResponseError::InvalidProducerIdMapping),
            TxnState::Ongoing
            | TxnState::Empty
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort => {
                let mut next = self.moved_to(TxnState::Ongoing, now_ms);
                if self.state != TxnState::Ongoing {
                    next.start_ms = now_ms;
                    next.partitions.clear();
                }
                next.partitions.extend(partitions.iter().cloned());
                Ok(Some(next))
            }
        }
    }

    /// EndTxn from the client: `None` when it repeats an end already
    /// complete (answered with success).
    pub fn end(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<Option<TxnMetadata>, ResponseError> {
        self.check_producer(producer_id, epoch)?;
        match (self.state, commit) {
            (TxnState::Ongoing, true) => Ok(Some(self.moved_to(TxnState::PrepareCommit, now_ms))),
            (TxnState::Ongoing, false) => Ok(Some(self.moved_to(TxnState::PrepareAbort, now_ms))),
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(None),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(ResponseError::ConcurrentTransactions)
            }
            (TxnState::PrepareEpochFence, _) => Err(ResponseError::ConcurrentTransactions),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Every marker of a preparing transaction is written: it is complete.
    pub fn completed(&self, now_ms: i64) -> TxnMetadata {
        let state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            other => panic!("a transaction completes only from a prepare state, not {other:?}"),
        };
        let mut next = self.moved_to(state, now_ms);
        next.partitions.clear();
        next
    }

    /// An open transaction past its timeout (Kafka's check: start plus
    /// timeout before now).
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && self.start_ms.saturating_add(self.timeout_ms as i64) < now_ms
    }

    /// An id idle for `transactional.id.expiration.ms`: it may be removed.
    pub fn expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        self.state.idle() && self.last_update_ms <= now_ms.saturating_sub(expiration_ms)
    }

    /// Whether a transactional batch of this producer may open (or join)
    /// the transaction on `partition` (KIP-890 part 1): the partition was
    /// added to the open transaction of this epoch.
    pub fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        partition: &TopicPartition,
    ) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < self.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if self.state == TxnState::Ongoing
            && epoch == self.epoch
            && self.partitions.contains(partition)
        {
            Ok(())
        } else {
            Err(ResponseError::InvalidTxnState)
        }
    }

    /// Checks that a transition is one Kafka's coordinator could record.
    pub fn assert_transition(&self, next: &TxnMetadata) {
        use TxnState::*;
        let allowed: &[TxnState] = match next.state {
            Empty => &[Empty, CompleteCommit, CompleteAbort],
            Ongoing => &[Empty, Ongoing, CompleteCommit, CompleteAbort],
            PrepareCommit => &[Ongoing],
            PrepareAbort => &[Ongoing, PrepareEpochFence],
            CompleteCommit => &[PrepareCommit],
            CompleteAbort => &[PrepareAbort],
            Dead => &[Empty, CompleteCommit, CompleteAbort],
            PrepareEpochFence => &[Ongoing],
        };
        assert!(
            allowed.contains(&self.state),
            "a transaction may not go from {:?} to {:?}",
            self.state,
            next.state
        );
        assert!(
            next.producer_id != self.producer_id || next.epoch >= self.epoch,
            "a producer's epoch never goes back"
        );
    }
}

#[cfg(test)]
mod tests;
