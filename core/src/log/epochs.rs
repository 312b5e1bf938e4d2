//! The leader epoch cache of a partition log: for every leader epoch that
//! wrote records, the offset of its first record, with Kafka's semantics
//! (`LeaderEpochFileCache`), and the text of its checkpoint file,
//! `leader-epoch-checkpoint` (`LeaderEpochCheckpointFile`).
//!
//! A follower compares its last fetched epoch with the leader's cache to
//! find where their logs part (`end_offset_for`, OffsetsForLeaderEpoch,
//! DivergingEpoch); a consumer does the same after a leader change. The
//! cache is derived from the batch headers: `PartitionLog` updates it on
//! every append, truncation and retention, writes the checkpoint, and
//! checks the checkpoint against the headers at open. This module does no
//! IO: it holds the entries and turns them into text and back.

use std::fmt::Write as _;

/// Kafka's `UNDEFINED_EPOCH`: no epoch asked for, or none known.
pub const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's `UNDEFINED_EPOCH_OFFSET`: the end offset that goes with it.
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;
/// The checkpoint's name in the partition directory, as Kafka names it.
pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// Where a new checkpoint is written before it is renamed over the old one.
pub const CHECKPOINT_TMP_FILE: &str = "leader-epoch-checkpoint.tmp";
/// The only checkpoint version Kafka writes and reads.
pub const CHECKPOINT_VERSION: i32 = 0;
/// Most entries a checkpoint may hold (one per leader epoch that wrote
/// records): a larger count is damage, refused before anything is kept.
pub const CHECKPOINT_ENTRIES_MAX: usize = 1 << 20;
/// Longest checkpoint read: `CHECKPOINT_ENTRIES_MAX` lines of the longest
/// entry (an i32, a space, an i64, a newline), and the two header lines.
pub const CHECKPOINT_BYTES_MAX: usize = CHECKPOINT_ENTRIES_MAX * 33 + 32;

/// The first offset written in a leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// Entries strictly increasing in both epoch and start offset, epochs and
/// offsets not negative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub fn new() -> EpochCache {
        EpochCache::default()
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// The latest epoch known, even one that has written nothing yet (a
    /// new leader's).
    pub fn latest_epoch(&self) -> Option<i32> {
        self.latest().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset`, as Kafka's `assign`:
    /// a negative epoch or offset is ignored (Kafka refuses it; batches
    /// without an epoch carry -1), and so is the latest epoch again at the
    /// same or a later offset. Otherwise every entry that the new one would
    /// not follow (epoch at least as large, or start at least as late) is
    /// dropped first. Returns whether the entries changed.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if let Some(latest) = self.latest() {
            if latest.epoch == epoch && start_offset >= latest.start_offset {
                return false;
            }
        }
        let keep = self
            .entries
            .partition_point(|e| e.epoch < epoch && e.start_offset < start_offset);
        let removed = self.entries.split_off(keep);
        // Dropping only an entry that starts where the new one does is
        // expected (an epoch that wrote nothing); anything more means the
        // log went back under an epoch, which Kafka also reports.
        if removed.len() > 1
            || removed
                .first()
                .is_some_and(|e| e.start_offset != start_offset)
        {
            tracing::warn!(
                epoch,
                start_offset,
                ?removed,
                "a new epoch entry dropped conflicting ones"
            );
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Kafka's `endOffsetFor`: the largest epoch at most `requested_epoch`
    /// and the offset where it ended (the start of the next epoch), or the
    /// log end for the latest epoch. Below every epoch: the requested
    /// epoch and the first start offset (the data before it is gone);
    /// above every epoch, or nothing known: undefined.
    pub fn end_offset_for(&self, requested_epoch: i32, log_end_offset: i64) -> (i32, i64) {
        if requested_epoch == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        }
        if self.latest_epoch() == Some(requested_epoch) {
            return (requested_epoch, log_end_offset);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested_epoch);
        match (higher.checked_sub(1), self.entries.get(higher)) {
            (_, None) => (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET),
            (None, Some(next)) => (requested_epoch, next.start_offset),
            (Some(floor), Some(next)) => (self.entries[floor].epoch, next.start_offset),
        }
    }

    /// The start of the first epoch after `epoch`, None when no later
    /// epoch is known.
    pub fn start_after(&self, epoch: i32) -> Option<i64> {
        let after = self.entries.partition_point(|e| e.epoch <= epoch);
        self.entries.get(after).map(|e| e.start_offset)
    }

    /// The epoch of the record at `offset`: that of the last entry starting
    /// at or before it (Kafka's `epochForOffset`); None below every entry.
    pub fn epoch_for(&self, offset: i64) -> Option<i32> {
        let after = self.entries.partition_point(|e| e.start_offset <= offset);
        after.checked_sub(1).map(|at| self.entries[at].epoch)
    }

    /// Drops the entries starting at or after `end_offset`, the new log end
    /// (Kafka's `truncateFromEnd`; a negative end changes nothing). Returns
    /// whether the entries changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        if end_offset < 0 {
            return false;
        }
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Forgets what lies before `start_offset`, the new log start (Kafka's
    /// `truncateFromStart`): the entry covering it now starts there, the
    /// earlier ones go. Returns whether the entries changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let covered = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        let Some(covering) = covered.checked_sub(1) else {
            return false;
        };
        let changed = covering > 0 || self.entries[covering].start_offset != start_offset;
        self.entries.drain(..covering);
        self.entries[0].start_offset = start_offset;
        changed
    }

    /// The checkpoint's text, as Kafka writes it: the version, the count,
    /// then `epoch start_offset` per entry, each line ending in a newline.
    pub fn encode(&self) -> String {
        let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for entry in &self.entries {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{} {}", entry.epoch, entry.start_offset);
        }
        text
    }

    /// Reads a checkpoint. Kafka's reader takes an empty file, or one with
    /// only the version line, as no entries, and so does this one. Beyond
    /// that it is strict, so that a torn write is seen rather than
    /// half-read: the count must match the entry lines, the text must end
    /// with a newline, and the entries must be valid and strictly increasing.
    /// Never panics.
    pub fn decode(text: &str) -> Result<EpochCache, String> {
        if text.len() > CHECKPOINT_BYTES_MAX {
            return Err(format!(
                "{} bytes, more than a checkpoint holds",
                text.len()
            ));
        }
        if text.is_empty() {
            return Ok(EpochCache::new());
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err("the last line has no newline: a torn write".to_string());
        };
        let mut lines = body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let version = lines.next().unwrap_or_default();
        match version.parse::<i32>() {
            Ok(CHECKPOINT_VERSION) => {}
            Ok(other) => return Err(format!("unknown version {other}")),
            Err(_) => return Err(format!("malformed version line {version:?}")),
        }
        let Some(count) = lines.next() else {
            return Ok(EpochCache::new());
        };
        let count = match count.parse::<i32>() {
            Ok(n) if n >= 0 && n as usize <= CHECKPOINT_ENTRIES_MAX => n as usize,
            _ => return Err(format!("malformed entry count {count:?}")),
        };
        // No capacity from the count: a damaged count must not allocate.
        let mut cache = EpochCache::new();
        for line in lines {
            if cache.entries.len() == count {
                return Err(format!("more than the {count} entries announced"));
            }
            let entry = parse_entry(line).ok_or_else(|| format!("malformed entry {line:?}"))?;
            if cache
                .latest()
                .is_some_and(|l| l.epoch >= entry.epoch || l.start_offset >= entry.start_offset)
            {
                return Err(format!("entry {line:?} does not follow the one before"));
            }
            cache.entries.push(entry);
        }
        if cache.entries.len() != count {
            return Err(format!(
                "{} entries where {count} were announced",
                cache.entries.len()
            ));
        }
        cache.invariants();
        Ok(cache)
    }

    pub fn invariants(&self) {
        for entry in &self.entries {
            assert!(
                entry.epoch >= 0 && entry.start_offset >= 0,
                "negative epoch entry {entry:?}"
            );
        }
        for pair in self.entries.windows(2) {
            assert!(
                pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset,
                "epoch entries not strictly increasing: {:?}",
                self.entries
            );
        }
    }
}

/// Java's `\s`, which Kafka splits an entry line on.
fn is_java_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// One entry line, as Kafka reads it: two fields separated by whitespace
/// (trailing whitespace allowed, leading not), an i32 epoch and an i64
/// offset, here also not negative.
fn parse_entry(line: &str) -> Option<EpochEntry> {
    if line.starts_with(is_java_space) {
        return None;
    }
    let mut fields = line.split(is_java_space).filter(|f| !f.is_empty());
    let epoch = fields.next()?.parse::<i32>().ok()?;
    let start_offset = fields.next()?.parse::<i64>().ok()?;
    if fields.next().is_some() || epoch < 0 || start_offset < 0 {
        return None;
    }
    Some(EpochEntry {
        epoch,
        start_offset,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut cache = EpochCache::new();
        for &(epoch, start) in entries {
            assert!(cache.assign(epoch, start), "({epoch}, {start}) is new");
        }
        cache
    }

    fn pairs(cache: &EpochCache) -> Vec<(i32, i64)> {
        cache
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    // The cases of Kafka's LeaderEpochFileCacheTest for endOffsetFor.

    #[test]
    fn the_latest_epoch_ends_at_the_log_end() {
        let cache = cache(&[(2, 6), (3, 8), (4, 9)]);
        assert_eq!(cache.end_offset_for(4, 11), (4, 11));
    }

    #[test]
    fn an_undefined_epoch_gets_undefined() {
        assert_eq!(
            EpochCache::new().end_offset_for(UNDEFINED_EPOCH, 73),
            (-1, -1)
        );
        let cache = cache(&[(2, 6)]);
        assert_eq!(cache.end_offset_for(UNDEFINED_EPOCH, 73), (-1, -1));
    }

    #[test]
    fn an_empty_cache_knows_no_epoch() {
        let empty = EpochCache::new();
        assert_eq!(empty.end_offset_for(0, 73), (-1, -1));
        assert_eq!(empty.end_offset_for(5, 73), (-1, -1));
        assert_eq!(empty.latest_epoch(), None);
        assert_eq!(empty.epoch_for(0), None);
    }

    #[test]
    fn an_earlier_epoch_ends_where_the_next_starts() {
        let mut cache = EpochCache::new();
        for (epoch, offset) in [(1, 0), (1, 1), (1, 2), (2, 3), (2, 4), (2, 5)] {
            cache.assign(epoch, offset);
        }
        assert_eq!(pairs(&cache), [(1, 0), (2, 3)]);
        assert_eq!(cache.end_offset_for(1, 6), (1, 3));
    }

    #[test]
    fn a_missing_epoch_answers_the_largest_epoch_below_it() {
        let cache = cache(&[(0, 10), (2, 13), (4, 17)]);
        assert_eq!(cache.end_offset_for(0, 20), (0, 13));
        assert_eq!(cache.end_offset_for(1, 20), (0, 13));
        assert_eq!(cache.end_offset_for(2, 20), (2, 17));
        assert_eq!(cache.end_offset_for(3, 20), (2, 17));
        assert_eq!(cache.end_offset_for(4, 20), (4, 20));
    }

    #[test]
    fn the_epochs_after_one_start_where_the_first_of_them_does() {
        let cache = cache(&[(0, 10), (2, 13), (4, 17)]);
        assert_eq!(cache.start_after(0), Some(13));
        assert_eq!(cache.start_after(1), Some(13));
        assert_eq!(cache.start_after(3), Some(17));
        assert_eq!(cache.start_after(4), None);
        assert_eq!(cache.start_after(-1), Some(10));
        assert_eq!(EpochCache::new().start_after(0), None);
    }

    #[test]
    fn an_epoch_below_all_gets_the_first_start_offset() {
        let cache = cache(&[(5, 11), (6, 12)]);
        assert_eq!(cache.end_offset_for(4, 13), (4, 11));
        assert_eq!(cache.end_offset_for(0, 13), (0, 11));
    }

    #[test]
    fn an_epoch_above_all_gets_undefined() {
        let cache = cache(&[(2, 5)]);
        assert_eq!(cache.end_offset_for(3, 100), (-1, -1));
    }

    #[test]
    fn the_latest_epoch_again_is_ignored_unless_earlier() {
        let mut cache = cache(&[(2, 6)]);
        assert!(!cache.assign(2, 7));
        assert!(!cache.assign(2, 6));
        assert_eq!(pairs(&cache), [(2, 6)]);
        assert!(cache.assign(2, 5), "the same epoch earlier replaces it");
        assert_eq!(pairs(&cache), [(2, 5)]);
        assert!(!cache.assign(-1, 9), "batches without an epoch");
        assert!(!cache.assign(3, -1));
        assert_eq!(pairs(&cache), [(2, 5)]);
    }

    #[test]
    fn assign_drops_the_entries_it_would_not_follow() {
        // A later epoch at an earlier offset: the log was cut below the
        // entries that start at or after it.
        let mut cached = cache(&[(2, 6), (3, 8), (4, 11)]);
        assert!(cached.assign(5, 8));
        assert_eq!(pairs(&cached), [(2, 6), (5, 8)]);
        // An earlier epoch at a later offset drops the larger epochs.
        let mut cached = cache(&[(2, 6), (3, 8), (4, 11)]);
        assert!(cached.assign(3, 12));
        assert_eq!(pairs(&cached), [(2, 6), (3, 12)]);
        // A new leader's empty epoch gives way to the records that follow.
        let mut cached = cache(&[(2, 6), (5, 10)]);
        assert!(cached.assign(4, 10));
        assert_eq!(pairs(&cached), [(2, 6), (4, 10)]);
        // Everything goes.
        let mut cached = cache(&[(2, 6), (3, 8)]);
        assert!(cached.assign(1, 0));
        assert_eq!(pairs(&cached), [(1, 0)]);
    }

    #[test]
    fn epoch_for_finds_the_covering_entry() {
        let cached = cache(&[(1, 0), (2, 10), (4, 15)]);
        let found: Vec<Option<i32>> = [0, 5, 9, 10, 11, 14, 15, 16, 1000]
            .into_iter()
            .map(|o| cached.epoch_for(o))
            .collect();
        assert_eq!(
            found,
            [
                Some(1),
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(2),
                Some(4),
                Some(4),
                Some(4)
            ]
        );
        let later = cache(&[(1, 10)]);
        assert_eq!(later.epoch_for(5), None);
    }

    #[test]
    fn truncate_from_end_drops_entries_at_or_after_the_end() {
        let mut cached = cache(&[(2, 6), (3, 8), (4, 11)]);
        assert!(!cached.truncate_from_end(12));
        assert!(!cached.truncate_from_end(-1), "undefined changes nothing");
        assert_eq!(pairs(&cached), [(2, 6), (3, 8), (4, 11)]);
        assert!(cached.truncate_from_end(11));
        assert_eq!(pairs(&cached), [(2, 6), (3, 8)]);
        assert!(cached.truncate_from_end(8));
        assert_eq!(pairs(&cached), [(2, 6)]);
        assert!(cached.truncate_from_end(0));
        assert!(cached.is_empty());
    }

    #[test]
    fn truncate_from_start_moves_the_covering_entry_up() {
        let mut cached = cache(&[(2, 6), (3, 8), (4, 11)]);
        assert!(!cached.truncate_from_start(5), "nothing before 6");
        assert!(
            !cached.truncate_from_start(6),
            "the first entry starts there"
        );
        assert_eq!(pairs(&cached), [(2, 6), (3, 8), (4, 11)]);
        assert!(cached.truncate_from_start(9));
        assert_eq!(pairs(&cached), [(3, 9), (4, 11)]);
        assert!(cached.truncate_from_start(11));
        assert_eq!(pairs(&cached), [(4, 11)]);
        assert!(cached.truncate_from_start(12));
        assert_eq!(pairs(&cached), [(4, 12)]);
        let mut empty = EpochCache::new();
        assert!(!empty.truncate_from_start(3));
        assert!(empty.is_empty());
    }

    #[test]
    fn the_checkpoint_is_kafkas_text() {
        let cached = cache(&[(0, 0), (3, 120), (7, 9_000_000_000)]);
        assert_eq!(cached.encode(), "0\n3\n0 0\n3 120\n7 9000000000\n");
        assert_eq!(EpochCache::new().encode(), "0\n0\n");
        assert_eq!(EpochCache::decode(&cached.encode()), Ok(cached));
        // What Kafka's reader takes: no entries, extra spaces between and
        // after the fields, CRLF line ends.
        for empty in ["", "0\n", "0\n0\n"] {
            assert_eq!(
                EpochCache::decode(empty),
                Ok(EpochCache::new()),
                "{empty:?}"
            );
        }
        assert_eq!(
            EpochCache::decode("0\r\n2\r\n1  5\t\r\n2 9 \r\n").map(|c| pairs(&c)),
            Ok(vec![(1, 5), (2, 9)])
        );
    }

    #[test]
    fn a_bad_checkpoint_is_refused() {
        for bad in [
            "1\n0\n",               // unknown version
            "0\n1\n0 0",            // torn: no final newline
            "0\n2\n0 0\n",          // fewer entries than announced
            "0\n1\n0 0\n1 5\n",     // more entries than announced
            "0\n2\n3 5\n2 9\n",     // epochs not increasing
            "0\n2\n2 5\n3 5\n",     // offsets not increasing
            "0\n2\n2 5\n2 9\n",     // the same epoch twice
            "0\n1\n-1 5\n",         // negative epoch
            "0\n1\n1 -5\n",         // negative offset
            "0\n1\n 1 5\n",         // leading whitespace
            "0\n1\n1 5 7\n",        // a third field
            "0\n1\n1\n",            // one field
            "0\n1\n2147483648 5\n", // epoch beyond i32
            "0\n-1\n",              // negative count
            "0\n99999999999\n",     // count beyond i32
            "x\n0\n",               // not a number
            " 0\n0\n",              // Kafka's parseInt takes no space
            "\0\0\0\0\0\0\0\0",     // zeroed blocks after a crash
            "0\n1\n\n",             // an empty entry line
        ] {
            assert!(EpochCache::decode(bad).is_err(), "{bad:?} was taken");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(cache) = EpochCache::decode(&text) {
                cache.invariants();
                prop_assert_eq!(EpochCache::decode(&cache.encode()), Ok(cache));
            }
        }

        #[test]
        fn decode_never_panics_on_near_checkpoints(
            entries in proptest::collection::vec((0i32..50, 0i64..1000), 0..8),
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
            cut in any::<u16>(),
        ) {
            let mut cache = EpochCache::new();
            for (epoch, start) in entries {
                cache.assign(epoch, start);
            }
            cache.invariants();
            let mut bytes = cache.encode().into_bytes();
            for (at, byte) in edits {
                if !bytes.is_empty() {
                    let at = at as usize % bytes.len();
                    bytes[at] = b"0123456789 -\n\r+x"[byte as usize % 16];
                }
            }
            bytes.truncate(cut as usize % (bytes.len() + 1));
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(decoded) = EpochCache::decode(&text) {
                decoded.invariants();
                prop_assert_eq!(EpochCache::decode(&decoded.encode()), Ok(decoded));
            }
        }

        /// Against a model of Kafka's TreeMap: the entries stay strictly
        /// increasing, and what each operation keeps is what Kafka keeps.
        #[test]
        fn operations_keep_the_entries_ordered(
            ops in proptest::collection::vec((0u8..3, 0i32..10, 0i64..100), 0..40),
        ) {
            let mut cache = EpochCache::new();
            for (op, epoch, offset) in ops {
                let before = cache.clone();
                let changed = match op {
                    0 => cache.assign(epoch, offset),
                    1 => cache.truncate_from_end(offset),
                    _ => cache.truncate_from_start(offset),
                };
                cache.invariants();
                prop_assert_eq!(changed, cache != before);
                match op {
                    0 if changed => prop_assert_eq!(
                        cache.latest(),
                        Some(EpochEntry { epoch, start_offset: offset })
                    ),
                    1 => prop_assert!(cache.entries().iter().all(|e| e.start_offset < offset)),
                    2 if !before.is_empty() && before.entries()[0].start_offset <= offset => {
                        prop_assert_eq!(cache.entries()[0].start_offset, offset);
                        prop_assert_eq!(cache.epoch_for(offset), before.epoch_for(offset));
                    }
                    _ => {}
                }
                prop_assert_eq!(EpochCache::decode(&cache.encode()), Ok(cache.clone()));
            }
        }
    }
}
