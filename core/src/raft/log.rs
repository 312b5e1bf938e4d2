//! The replica's view of its log: the entries, the epoch cache (the first
//! offset of each leader epoch on the log, Kafka's leader-epoch checkpoint),
//! and how much of the log the owner has confirmed durable.
//!
//! The entries are held in memory because the leader answers fetches from
//! them; the metadata log is small, and trimming it behind snapshots is
//! later work. The owner of the files mirrors every change through the
//! replica's `Append` and `Truncate` outputs.

use std::collections::BTreeMap;

use super::message::Entry;

#[derive(Debug)]
pub struct RaftLog {
    entries: Vec<Entry>,
    /// Leader epoch -> the offset of its first entry on this log.
    epoch_start_offsets: BTreeMap<i32, i64>,
    /// The first `persisted_end_offset` entries are durable.
    persisted_end_offset: i64,
}

impl RaftLog {
    /// A log read back from disk: all of it is durable.
    pub fn recovered(entries: Vec<Entry>) -> RaftLog {
        let mut log = RaftLog {
            entries: Vec::new(),
            epoch_start_offsets: BTreeMap::new(),
            persisted_end_offset: 0,
        };
        log.append(entries);
        log.persisted_end_offset = log.end_offset();
        log.invariants();
        log
    }

    pub fn end_offset(&self) -> i64 {
        self.entries.len() as i64
    }

    pub fn persisted_end_offset(&self) -> i64 {
        self.persisted_end_offset
    }

    /// The epoch of the last entry; 0 for an empty log.
    pub fn last_epoch(&self) -> i32 {
        self.entries.last().map_or(0, |entry| entry.epoch)
    }

    /// The first offset of `epoch` on this log, if it has entries of it.
    pub fn epoch_start_offset(&self, epoch: i32) -> Option<i64> {
        self.epoch_start_offsets.get(&epoch).copied()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Up to `count_max` entries from `offset_first`.
    pub fn read(&self, offset_first: i64, count_max: usize) -> Vec<Entry> {
        let first = offset_first.clamp(0, self.end_offset()) as usize;
        let last = (first + count_max).min(self.entries.len());
        self.entries[first..last].to_vec()
    }

    pub fn append(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            // Epochs never go down along a log (KIP-101's epoch cache is
            // strictly increasing), so a fetch can be checked by epoch.
            assert!(
                entry.epoch >= self.last_epoch(),
                "entry of epoch {} after epoch {}",
                entry.epoch,
                self.last_epoch()
            );
            if entry.epoch > self.last_epoch() || self.entries.is_empty() {
                self.epoch_start_offsets
                    .insert(entry.epoch, self.end_offset());
            }
            self.entries.push(entry);
        }
    }

    /// Drops every entry from `offset` on; the durable prefix shrinks with it.
    pub fn truncate(&mut self, offset: i64) {
        assert!(offset >= 0 && offset <= self.end_offset());
        self.entries.truncate(offset as usize);
        self.epoch_start_offsets.retain(|_, start| *start < offset);
        self.persisted_end_offset = self.persisted_end_offset.min(offset);
    }

    /// The owner made the first `end_offset` entries durable.
    pub fn mark_persisted(&mut self, end_offset: i64) {
        assert!(
            end_offset <= self.end_offset(),
            "persisted up to {end_offset} beyond the log end {}",
            self.end_offset()
        );
        self.persisted_end_offset = self.persisted_end_offset.max(end_offset);
    }

    /// The largest epoch on this log at or below `epoch`, and the offset
    /// where it ends here (Kafka's `endOffsetForEpoch`); `(0, 0)` when the
    /// log has no such epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let Some((&found, _)) = self.epoch_start_offsets.range(..=epoch).next_back() else {
            return (0, 0);
        };
        let end = self
            .epoch_start_offsets
            .range(found + 1..)
            .next()
            .map_or(self.end_offset(), |(_, &start)| start);
        (found, end)
    }

    /// Whether this log holds the entry at `end_offset - 1` with epoch
    /// `last_epoch`, so that a log ending there matches this one: Raft's
    /// log-matching check, done by epoch as Kafka does.
    pub fn matches(&self, end_offset: i64, last_epoch: i32) -> bool {
        if end_offset == 0 {
            return true;
        }
        let (epoch, epoch_end_offset) = self.end_offset_for_epoch(last_epoch);
        epoch == last_epoch
            && end_offset <= epoch_end_offset
            && self
                .epoch_start_offset(epoch)
                .is_some_and(|start| start < end_offset)
    }

    pub fn invariants(&self) {
        assert!(self.persisted_end_offset <= self.end_offset());
        let mut previous: Option<(i32, i64)> = None;
        for (&epoch, &start) in &self.epoch_start_offsets {
            assert!(
                start < self.end_offset(),
                "epoch {epoch} starts past the end"
            );
            assert_eq!(self.entries[start as usize].epoch, epoch);
            if let Some((previous_epoch, previous_start)) = previous {
                assert!(epoch > previous_epoch && start > previous_start);
                assert!(self.entries[start as usize - 1].epoch == previous_epoch);
            }
            previous = Some((epoch, start));
        }
        assert_eq!(self.epoch_start_offsets.is_empty(), self.entries.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::Record;
    use bytes::Bytes;

    fn log_of(epochs: &[i32]) -> RaftLog {
        let entries = epochs
            .iter()
            .map(|&epoch| Entry {
                epoch,
                record: Record::Data(Bytes::new()),
            })
            .collect();
        RaftLog::recovered(entries)
    }

    #[test]
    fn the_epoch_cache_answers_where_each_epoch_ends() {
        let log = log_of(&[1, 1, 3, 3, 3, 5]);
        assert_eq!(log.end_offset_for_epoch(0), (0, 0));
        assert_eq!(log.end_offset_for_epoch(1), (1, 2));
        // Epoch 2 is not on this log: the largest below it, and its end.
        assert_eq!(log.end_offset_for_epoch(2), (1, 2));
        assert_eq!(log.end_offset_for_epoch(3), (3, 5));
        assert_eq!(log.end_offset_for_epoch(9), (5, 6));
    }

    #[test]
    fn a_position_matches_only_inside_its_epoch() {
        let log = log_of(&[1, 1, 3, 3, 3, 5]);
        assert!(log.matches(0, 0));
        assert!(log.matches(2, 1));
        assert!(!log.matches(3, 1), "offset 2 is of epoch 3");
        assert!(log.matches(4, 3) && log.matches(5, 3));
        assert!(!log.matches(6, 3));
        assert!(!log.matches(3, 2), "no epoch 2 here");
        assert!(log.matches(6, 5) && !log.matches(7, 5));
    }

    #[test]
    fn truncation_drops_epochs_and_shrinks_the_durable_prefix() {
        let mut log = log_of(&[1, 1, 3, 3]);
        assert_eq!(log.persisted_end_offset(), 4);
        log.truncate(2);
        assert_eq!((log.end_offset(), log.last_epoch()), (2, 1));
        assert_eq!(log.epoch_start_offset(3), None);
        assert_eq!(log.persisted_end_offset(), 2);
        log.append(vec![Entry {
            epoch: 4,
            record: Record::Data(Bytes::new()),
        }]);
        assert_eq!(log.epoch_start_offset(4), Some(2));
        assert_eq!(log.persisted_end_offset(), 2);
        log.mark_persisted(3);
        log.invariants();
    }

    #[test]
    #[should_panic(expected = "entry of epoch 1 after epoch 3")]
    fn epochs_never_go_down_along_the_log() {
        log_of(&[1, 3, 1]);
    }
}
