//! Idempotent producer state of one partition: for each producer id, its
//! epoch and its last five batches, so the leader can recognise a retried
//! batch (answer with the original offset, append nothing) and refuse gaps
//! and stale epochs.
//!
//! The state is derived from the log: the partition rebuilds it from the
//! batch headers at start, and updates it on every append.

use std::collections::{BTreeMap, VecDeque};

use crate::batch::{increment_sequence, BatchHeader};

/// Batches remembered per producer, as Kafka does.
pub const BATCHES_KEPT_MAX: usize = 5;

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

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
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
}

#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
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

    /// Records a batch that is now in the log (offsets assigned).
    pub fn record(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 || header.is_control() {
            return;
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
    }

    /// Forgets batches at or above `offset` (the log was cut there).
    pub fn truncate_from(&mut self, offset: i64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
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
        states.record(&first);
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
        states.record(&second);
        assert_eq!(
            states.check(&header(7, 1, 5, 1, 0)),
            Err(SequenceError::OutOfOrder),
            "a new epoch starts at 0"
        );
        let bumped = header(7, 1, 0, 1, 15);
        assert_eq!(states.check(&bumped), Ok(Verdict::Append));
        states.record(&bumped);
        assert_eq!(
            states.check(&header(7, 0, 5, 1, 0)),
            Err(SequenceError::StaleEpoch)
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for n in 0..7 {
            states.record(&header(1, 0, n, 1, n as i64));
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
        states.record(&header(1, 0, i32::MAX - 1, 2, 0));
        assert_eq!(states.check(&header(1, 0, 0, 1, 0)), Ok(Verdict::Append));
    }

    #[test]
    fn unknown_producers_start_anywhere_and_plain_batches_pass() {
        let states = ProducerStates::default();
        assert_eq!(states.check(&header(9, 3, 42, 1, 0)), Ok(Verdict::Append));
        assert_eq!(states.check(&header(-1, -1, -1, 1, 0)), Ok(Verdict::Append));
    }
}
