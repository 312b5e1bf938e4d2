//! Producer state of one partition: for each producer id, its epoch and
//! its last five batches, so the leader can recognise a retried batch
//! (answer with the original offset, append nothing) and refuse gaps and
//! stale epochs; and its transaction here, if one is open, with the epoch
//! of the transaction coordinator that last wrote a marker for it.
//!
//! Transactions (Kafka's `ProducerAppendInfo`): a producer's first
//! transactional batch opens one at its offset; a marker (a control
//! batch) closes it, committed or aborted, and makes its epochs the
//! producer's. The last stable offset (LSO) is the first offset of the
//! oldest transaction not yet decided below the high watermark: the open
//! ones, and the completed ones whose marker the high watermark has not
//! passed yet, which are kept until it has.
//!
//! The state is derived from the log: the partition rebuilds it from the
//! batches at start (reading the record of each control batch), and
//! updates it on every append.

use std::collections::{BTreeMap, VecDeque};

use crate::batch::{increment_sequence, BatchHeader, ControlRecord};

/// Batches remembered per producer, as Kafka does.
pub const BATCHES_KEPT_MAX: usize = 5;

/// A coordinator epoch before any marker.
pub const NO_COORDINATOR_EPOCH: i32 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
    /// The batch's max timestamp as stored (the append time with
    /// LogAppendTime), which a retry is answered with.
    max_timestamp: i64,
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Epoch of the coordinator that wrote this producer's last marker.
    coordinator_epoch: i32,
    /// First offset of the producer's open transaction here.
    txn_first_offset: Option<i64>,
    /// Timestamp of the producer's last batch or marker.
    last_timestamp: i64,
}

impl Default for ProducerEntry {
    fn default() -> ProducerEntry {
        ProducerEntry {
            epoch: 0,
            batches: VecDeque::new(),
            coordinator_epoch: NO_COORDINATOR_EPOCH,
            txn_first_offset: None,
            last_timestamp: -1,
        }
    }
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// A retry of a batch already in the log at these offsets, stored with
    /// this max timestamp.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
    },
}

/// Why a batch is refused; each maps to the Kafka error the producer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder,
    /// INVALID_PRODUCER_EPOCH.
    StaleEpoch,
    /// INVALID_TXN_STATE: a plain batch from a producer whose transaction
    /// is open here.
    TxnOpen,
}

/// A transaction marker to write: Kafka's WriteTxnMarkers entry for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub commit: bool,
}

/// Why a marker is refused (only a leader's own appends are checked; a
/// replicated or recovered marker is applied whatever it says, as Kafka does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerError {
    /// INVALID_PRODUCER_EPOCH: the producer has a newer epoch already.
    StaleEpoch,
    /// TRANSACTION_COORDINATOR_FENCED: a newer coordinator wrote a marker.
    CoordinatorFenced,
}

/// A transaction a marker closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub aborted: bool,
}

/// One producer as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerView {
    pub producer_id: i64,
    pub epoch: i16,
    /// Sequence of the last record of its last batch (-1 without batches).
    pub last_sequence: i32,
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
    /// First offset of its open transaction (-1 without one).
    pub txn_start_offset: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
    /// Open transactions: first offset → producer id.
    open_txns: BTreeMap<i64, i64>,
    /// Completed transactions whose marker may not be below the high
    /// watermark yet, by marker offset.
    completed_txns: BTreeMap<i64, CompletedTxn>,
}

impl ProducerStates {
    /// Decides on a batch a producer sent (before offsets are assigned).
    pub fn check(&self, header: &BatchHeader) -> Result<Verdict, SequenceError> {
        if header.producer_id < 0 {
            return Ok(Verdict::Append);
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // No state left (new producer, or expired): any sequence starts it.
            return Ok(Verdict::Append);
        };
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch);
        }
        let verdict = Self::check_sequence(entry, header)?;
        if verdict == Verdict::Append
            && !header.is_transactional()
            && entry.txn_first_offset.is_some()
        {
            return Err(SequenceError::TxnOpen);
        }
        Ok(verdict)
    }

    fn check_sequence(
        entry: &ProducerEntry,
        header: &BatchHeader,
    ) -> Result<Verdict, SequenceError> {
        if header.producer_epoch > entry.epoch {
            return if header.base_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::OutOfOrder)
            };
        }
        let last_sequence = header.last_sequence();
        if let Some(batch) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == header.base_sequence && b.last_sequence == last_sequence)
        {
            return Ok(Verdict::Duplicate {
                base_offset: batch.base_offset,
                last_offset: batch.last_offset,
                max_timestamp: batch.max_timestamp,
            });
        }
        match entry.batches.back() {
            Some(last) if increment_sequence(last.last_sequence, 1) != header.base_sequence => {
                Err(SequenceError::OutOfOrder)
            }
            _ => Ok(Verdict::Append),
        }
    }

    /// Decides on a marker this partition's leader is asked to write
    /// (Kafka's `ProducerAppendInfo.appendEndTxnMarker` checks).
    pub fn check_marker(&self, marker: &TxnMarker) -> Result<(), MarkerError> {
        let Some(entry) = self.producers.get(&marker.producer_id) else {
            return Ok(());
        };
        if marker.producer_epoch < entry.epoch {
            return Err(MarkerError::StaleEpoch);
        }
        if marker.coordinator_epoch < entry.coordinator_epoch {
            return Err(MarkerError::CoordinatorFenced);
        }
        Ok(())
    }

    /// Records a batch that is now in the log (offsets assigned). A
    /// control batch comes with its record (None for a control record
    /// that is no marker); returns the transaction a marker closed.
    pub fn record(
        &mut self,
        header: &BatchHeader,
        control: Option<ControlRecord>,
    ) -> Option<CompletedTxn> {
        if header.producer_id < 0 {
            return None;
        }
        if header.is_control() {
            return control.and_then(|marker| self.record_marker(header, marker));
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = header.producer_epoch;
        }
        entry.batches.push_back(BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
        });
        while entry.batches.len() > BATCHES_KEPT_MAX {
            entry.batches.pop_front();
        }
        entry.last_timestamp = header.max_timestamp;
        if header.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(header.base_offset);
            let previous = self
                .open_txns
                .insert(header.base_offset, header.producer_id);
            assert!(previous.is_none(), "two transactions open at one offset");
        }
        None
    }

    /// A marker in the log: the producer takes its epochs (a newer
    /// producer epoch fences older batches) and its open transaction, if
    /// any, is complete. Without one only the epochs change, so a marker
    /// sent again changes nothing.
    fn record_marker(
        &mut self,
        header: &BatchHeader,
        marker: ControlRecord,
    ) -> Option<CompletedTxn> {
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = header.producer_epoch;
        }
        entry.coordinator_epoch = marker.coordinator_epoch;
        entry.last_timestamp = header.max_timestamp;
        let first_offset = entry.txn_first_offset.take()?;
        let removed = self.open_txns.remove(&first_offset);
        assert_eq!(
            removed,
            Some(header.producer_id),
            "an open transaction is listed"
        );
        assert!(
            first_offset < header.base_offset,
            "a marker follows its transaction"
        );
        let completed = CompletedTxn {
            producer_id: header.producer_id,
            first_offset,
            last_offset: header.base_offset,
            aborted: !marker.commit,
        };
        self.completed_txns.insert(header.base_offset, completed);
        Some(completed)
    }

    /// What a `.txnindex` entry for `completed` (just recorded) holds as
    /// its last stable offset: the first offset of the oldest transaction
    /// still open, else the offset after the marker (Kafka's
    /// `ProducerStateManager.lastStableOffset(CompletedTxn)`).
    pub fn stable_offset_after(&self, completed: &CompletedTxn) -> i64 {
        self.open_txns
            .keys()
            .next()
            .copied()
            .unwrap_or(completed.last_offset + 1)
    }

    /// The last stable offset under `high_watermark`: the first offset of
    /// the oldest open transaction, or of a completed one whose marker is
    /// not below the high watermark yet, else the high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let open = self.open_txns.keys().next().copied();
        let undecided = self
            .completed_txns
            .range(high_watermark..)
            .map(|(_, txn)| txn.first_offset)
            .min();
        let stable = [open, undecided]
            .into_iter()
            .flatten()
            .fold(high_watermark, i64::min);
        assert!(stable <= high_watermark, "the LSO is never above the HW");
        stable
    }

    /// Forgets the completed transactions whose marker is below the high
    /// watermark: they hold the last stable offset back no more.
    pub fn forget_completed_below(&mut self, high_watermark: i64) {
        self.completed_txns = self.completed_txns.split_off(&high_watermark);
    }

    /// The first offset of the producer's open transaction here.
    pub fn open_txn(&self, producer_id: i64) -> Option<i64> {
        self.producers.get(&producer_id)?.txn_first_offset
    }

    /// Every producer, by id, as DescribeProducers shows them.
    pub fn views(&self) -> impl Iterator<Item = ProducerView> + '_ {
        self.producers
            .iter()
            .map(|(&producer_id, entry)| ProducerView {
                producer_id,
                epoch: entry.epoch,
                last_sequence: entry.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp: entry.last_timestamp,
                coordinator_epoch: entry.coordinator_epoch,
                txn_start_offset: entry.txn_first_offset.unwrap_or(-1),
            })
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    pub fn invariants(&self) {
        for (&first_offset, producer_id) in &self.open_txns {
            let entry = self
                .producers
                .get(producer_id)
                .expect("an open txn has a producer");
            assert_eq!(entry.txn_first_offset, Some(first_offset));
        }
        let open = self
            .producers
            .values()
            .filter(|e| e.txn_first_offset.is_some())
            .count();
        assert_eq!(open, self.open_txns.len(), "each open txn is listed once");
        for (&last_offset, txn) in &self.completed_txns {
            assert_eq!(txn.last_offset, last_offset);
            assert!(txn.first_offset < txn.last_offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        records: i32,
        base_offset: i64,
    ) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            // Distinct per batch, so a duplicate's answer shows whose it is.
            max_timestamp: base_offset * 1_000 + 5,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            record_count: records,
        }
    }

    #[test]
    fn retries_are_duplicates_and_gaps_are_refused() {
        let mut states = ProducerStates::default();
        let first = header(7, 0, 0, 3, 10);
        assert_eq!(states.check(&first), Ok(Verdict::Append));
        states.record(&first, None);
        assert_eq!(
            states.check(&first),
            Ok(Verdict::Duplicate {
                base_offset: 10,
                last_offset: 12,
                max_timestamp: 10_005,
            })
        );
        assert_eq!(
            states.check(&header(7, 0, 4, 1, 0)),
            Err(SequenceError::OutOfOrder)
        );
        let second = header(7, 0, 3, 2, 13);
        assert_eq!(states.check(&second), Ok(Verdict::Append));
        states.record(&second, None);
        assert_eq!(
            states.check(&header(7, 1, 5, 1, 0)),
            Err(SequenceError::OutOfOrder),
            "a new epoch starts at 0"
        );
        let bumped = header(7, 1, 0, 1, 15);
        assert_eq!(states.check(&bumped), Ok(Verdict::Append));
        states.record(&bumped, None);
        assert_eq!(
            states.check(&header(7, 0, 5, 1, 0)),
            Err(SequenceError::StaleEpoch)
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for n in 0..7 {
            states.record(&header(1, 0, n, 1, n as i64), None);
        }
        assert_eq!(
            states.check(&header(1, 0, 6, 1, 0)),
            Ok(Verdict::Duplicate {
                base_offset: 6,
                last_offset: 6,
                max_timestamp: 6_005,
            })
        );
        assert_eq!(
            states.check(&header(1, 0, 1, 1, 0)),
            Err(SequenceError::OutOfOrder)
        );
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut states = ProducerStates::default();
        states.record(&header(1, 0, i32::MAX - 1, 2, 0), None);
        assert_eq!(states.check(&header(1, 0, 0, 1, 0)), Ok(Verdict::Append));
    }

    #[test]
    fn unknown_producers_start_anywhere_and_plain_batches_pass() {
        let states = ProducerStates::default();
        assert_eq!(states.check(&header(9, 3, 42, 1, 0)), Ok(Verdict::Append));
        assert_eq!(states.check(&header(-1, -1, -1, 1, 0)), Ok(Verdict::Append));
    }

    fn transactional(header: BatchHeader) -> BatchHeader {
        BatchHeader {
            attributes: crate::batch::ATTRIBUTE_TRANSACTIONAL,
            ..header
        }
    }

    fn marker_header(producer_id: i64, epoch: i16, offset: i64) -> BatchHeader {
        BatchHeader {
            attributes: crate::batch::ATTRIBUTE_TRANSACTIONAL | crate::batch::ATTRIBUTE_CONTROL,
            base_sequence: -1,
            ..header(producer_id, epoch, -1, 1, offset)
        }
    }

    fn marker(commit: bool, coordinator_epoch: i32) -> Option<ControlRecord> {
        Some(ControlRecord {
            commit,
            coordinator_epoch,
        })
    }

    #[test]
    fn a_marker_closes_the_open_transaction_and_a_resent_one_changes_nothing() {
        let mut states = ProducerStates::default();
        assert_eq!(
            states.record(&transactional(header(5, 0, 0, 2, 10)), None),
            None
        );
        assert_eq!(states.open_txn(5), Some(10));
        // A later batch of the same transaction keeps its first offset.
        states.record(&transactional(header(5, 0, 2, 1, 14)), None);
        assert_eq!(states.open_txn(5), Some(10));
        let completed = states.record(&marker_header(5, 0, 20), marker(false, 3));
        assert_eq!(
            completed,
            Some(CompletedTxn {
                producer_id: 5,
                first_offset: 10,
                last_offset: 20,
                aborted: true,
            })
        );
        assert_eq!(states.open_txn(5), None);
        assert_eq!(
            states.record(&marker_header(5, 0, 21), marker(false, 3)),
            None
        );
        let view = states.views().next().expect("one producer");
        assert_eq!(
            (
                view.epoch,
                view.coordinator_epoch,
                view.txn_start_offset,
                view.last_sequence
            ),
            (0, 3, -1, 2)
        );
        states.invariants();
    }

    #[test]
    fn markers_adopt_epochs_and_refuse_stale_producers_and_fenced_coordinators() {
        let mut states = ProducerStates::default();
        states.record(&transactional(header(5, 2, 0, 1, 0)), None);
        let at = |producer_epoch, coordinator_epoch| TxnMarker {
            producer_id: 5,
            producer_epoch,
            coordinator_epoch,
            commit: true,
        };
        assert_eq!(states.check_marker(&at(1, 0)), Err(MarkerError::StaleEpoch));
        assert_eq!(states.check_marker(&at(2, 0)), Ok(()));
        assert_eq!(
            states.check_marker(&at(9, 0)),
            Ok(()),
            "unknown producers too"
        );
        // A fencing marker (epoch 3) from coordinator epoch 4.
        states.record(&marker_header(5, 3, 1), marker(false, 4));
        assert_eq!(
            states.check_marker(&at(3, 3)),
            Err(MarkerError::CoordinatorFenced)
        );
        assert_eq!(states.check_marker(&at(2, 4)), Err(MarkerError::StaleEpoch));
        assert_eq!(states.check_marker(&at(3, 4)), Ok(()));
        // The old epoch's batches are fenced; the new epoch starts at 0.
        assert_eq!(
            states.check(&transactional(header(5, 2, 1, 1, 0))),
            Err(SequenceError::StaleEpoch)
        );
        assert_eq!(
            states.check(&transactional(header(5, 3, 0, 1, 0))),
            Ok(Verdict::Append)
        );
        assert_eq!(
            states.check_marker(&TxnMarker {
                producer_id: 6,
                ..at(0, 0)
            }),
            Ok(())
        );
    }

    #[test]
    fn a_plain_batch_inside_an_open_transaction_is_refused() {
        let mut states = ProducerStates::default();
        states.record(&transactional(header(5, 0, 0, 1, 0)), None);
        assert_eq!(
            states.check(&header(5, 0, 1, 1, 0)),
            Err(SequenceError::TxnOpen)
        );
        assert_eq!(
            states.check(&transactional(header(5, 0, 1, 1, 0))),
            Ok(Verdict::Append)
        );
        // A retry of the transactional batch is still a duplicate.
        assert!(matches!(
            states.check(&transactional(header(5, 0, 0, 1, 0))),
            Ok(Verdict::Duplicate { .. })
        ));
        states.record(&marker_header(5, 0, 1), marker(true, 0));
        assert_eq!(states.check(&header(5, 0, 1, 1, 0)), Ok(Verdict::Append));
    }

    #[test]
    fn the_lso_waits_for_open_transactions_and_for_markers_under_the_hw() {
        let mut states = ProducerStates::default();
        assert_eq!(states.last_stable_offset(7), 7);
        states.record(&header(1, 0, 0, 3, 0), None);
        states.record(&transactional(header(2, 0, 0, 2, 3)), None);
        states.record(&transactional(header(3, 0, 0, 2, 5)), None);
        assert_eq!(states.last_stable_offset(2), 2, "never above the HW");
        assert_eq!(states.last_stable_offset(7), 3);
        // Producer 2 commits at 7: still holds the LSO until the HW passes 7.
        let completed = states
            .record(&marker_header(2, 0, 7), marker(true, 0))
            .expect("closed");
        assert_eq!(
            states.stable_offset_after(&completed),
            5,
            "producer 3 is open"
        );
        assert_eq!(states.last_stable_offset(7), 3);
        assert_eq!(states.last_stable_offset(8), 5);
        // Producer 3 aborts at 8.
        let completed = states
            .record(&marker_header(3, 0, 8), marker(false, 0))
            .expect("closed");
        assert_eq!(states.stable_offset_after(&completed), 9);
        assert_eq!(states.last_stable_offset(7), 3);
        assert_eq!(states.last_stable_offset(8), 5);
        assert_eq!(states.last_stable_offset(9), 9);
        states.forget_completed_below(8);
        assert_eq!(states.last_stable_offset(7), 5, "the commit is forgotten");
        assert_eq!(states.last_stable_offset(8), 5, "the abort is not");
        states.forget_completed_below(9);
        assert_eq!(states.last_stable_offset(8), 8);
        states.invariants();
    }
}
