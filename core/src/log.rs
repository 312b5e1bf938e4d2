//! The partition log: segments of record batches on a `Storage`, with a
//! sparse offset index and a time index per segment, roll, retention and
//! crash recovery.
//!
//! Layout of one partition directory, as Kafka names it:
//! `<base offset, 20 digits>.log` holds batches back to back;
//! `.index` holds 8-byte entries (offset relative to the base, u32; byte
//! position, u32), one per `index.interval.bytes` of log, keyed by the last
//! offset of the batch at that position; `.timeindex` holds 12-byte entries
//! (max timestamp so far, i64; relative offset of that batch's last record, u32).
//! `format` defines these bytes, for this module and for `sluice dump-log`.
//!
//! `.txnindex` holds 34-byte entries, one per transaction an abort marker
//! in the segment closed (`format::AbortedTxn`), for read_committed
//! fetches to name the aborted transactions in what they return.
//!
//! The indexes are kept in memory and appended to their files as they grow;
//! they are derived data, rebuilt by a full scan after an unclean stop.
//! The `.txnindex` is rebuilt by every open (the producer state needs the
//! same walk over the batches) and rewritten when its file disagrees; an
//! entry appended joins the same sync as its marker's batch. The log never
//! syncs by itself: every file it changes is reported by `take_dirty`, and
//! the owner turns that into a sync request.
//!
//! The log also keeps Kafka's leader epoch cache (`epochs`): the first
//! offset of every leader epoch in it, from the batch headers, kept in
//! `leader-epoch-checkpoint`. That file is derived data too: at open the
//! cache is checked against the headers (which open walks anyway, for the
//! producer state), so a lost, stale or torn checkpoint costs nothing.
//!
//! Batches come in two ways: `append` takes a produced batch and gives it
//! its offsets, epoch and (with LogAppendTime) timestamp; `append_replicated`
//! takes batches a leader already stored and keeps them byte for byte.

use std::collections::BTreeSet;
use std::io;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchError, BatchHeader, ControlRecord, HEADER_BYTES};
use crate::config::TopicConfig;
use crate::producers::{MarkerError, ProducerStates, TxnMarker};
use crate::storage::{read_exact_at, FileId, Storage, SyncTarget};

mod epochs;
pub mod format;

pub use epochs::{
    EpochCache, EpochEntry, CHECKPOINT_BYTES_MAX, CHECKPOINT_ENTRIES_MAX, CHECKPOINT_FILE,
    CHECKPOINT_TMP_FILE, CHECKPOINT_VERSION, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET,
};
pub use format::segment_name;
pub use format::AbortedTxn;
use format::{
    OffsetEntry, TimeEntry, ABORTED_TXN_BYTES, BATCH_BYTES_MAX, INDEX_SUFFIX, LOG_SUFFIX,
    OFFSET_ENTRY_BYTES, SEGMENT_SUFFIXES, TIME_ENTRY_BYTES, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX,
};

/// Read size when scanning a segment during recovery.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug)]
struct Segment {
    base_offset: i64,
    log_file: FileId,
    index_file: FileId,
    time_file: FileId,
    txn_file: FileId,
    size_bytes: u64,
    next_offset: i64,
    offset_index: Vec<OffsetEntry>,
    time_index: Vec<TimeEntry>,
    /// The `.txnindex` entries: transactions aborted by markers in this
    /// segment, in marker order.
    aborted_txns: Vec<AbortedTxn>,
    /// Largest batch max timestamp in the segment (-1 when empty).
    max_timestamp: i64,
    /// Max timestamp of the first batch: segment.ms counts from it.
    first_batch_timestamp: Option<i64>,
    bytes_since_index_entry: u64,
}

impl Segment {
    fn files(&self) -> [FileId; 4] {
        [
            self.log_file,
            self.index_file,
            self.time_file,
            self.txn_file,
        ]
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!(
            (0..=u32::MAX as i64).contains(&relative),
            "offset outside its segment"
        );
        relative as u32
    }

    /// Byte position from which a scan finds the batch holding `offset`.
    fn position_for(&self, offset: i64) -> u64 {
        let relative = (offset - self.base_offset).clamp(0, u32::MAX as i64) as u32;
        let at = self
            .offset_index
            .partition_point(|e| e.relative_offset <= relative);
        match at {
            0 => 0,
            n => self.offset_index[n - 1].position as u64,
        }
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Broker time written into the batch, or -1 for CreateTime topics.
    pub log_append_time_ms: i64,
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: String,
    config: TopicConfig,
    segments: Vec<Segment>,
    log_start_offset: i64,
    /// Everything below this offset is covered by a completed sync.
    durable_offset: i64,
    dirty: BTreeSet<SyncTarget>,
    /// Idempotent producers seen in this log, rebuilt from it at open.
    producers: ProducerStates,
    /// The first offset of each leader epoch, checked against the log at open.
    epochs: EpochCache,
    /// The cache changed since `leader-epoch-checkpoint` was last written
    /// (or the write failed): the next `flush_checkpoint` writes it.
    checkpoint_stale: bool,
}

/// Why `append_replicated` refused a leader's batches. Every batch is
/// checked before the first is written: only `Io` may leave some in the log.
#[derive(Debug)]
pub enum ReplicaAppendError {
    /// Storage failed; the batches before the failing one may be in the log.
    Io(io::Error),
    /// A batch is damaged: bad framing, CRC or offset delta, or a leader
    /// epoch below that of a batch before it in the same input (no log
    /// holds such a run, so it cannot be a leader's).
    Corrupt(&'static str),
    /// A batch does not start where the log (or the batch before it) ends.
    OutOfOrder { expected: i64, got: i64 },
    /// A batch's leader epoch is below `latest`, the epoch of the records
    /// already at the end of this log: the leader's log and this one
    /// parted, truncate first.
    EpochBelowLatest { latest: i32, got: i32 },
}

impl std::fmt::Display for ReplicaAppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaAppendError::Io(error) => write!(f, "storage error: {error}"),
            ReplicaAppendError::Corrupt(why) => write!(f, "corrupt batch: {why}"),
            ReplicaAppendError::OutOfOrder { expected, got } => {
                write!(f, "batch at offset {got} where {expected} was expected")
            }
            ReplicaAppendError::EpochBelowLatest { latest, got } => {
                write!(f, "batch of leader epoch {got} after epoch {latest}")
            }
        }
    }
}

impl std::error::Error for ReplicaAppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplicaAppendError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for ReplicaAppendError {
    fn from(error: io::Error) -> ReplicaAppendError {
        ReplicaAppendError::Io(error)
    }
}

/// Why `append_marker` wrote nothing.
#[derive(Debug)]
pub enum MarkerAppendError {
    /// The producer state refuses it: INVALID_PRODUCER_EPOCH or
    /// TRANSACTION_COORDINATOR_FENCED.
    Refused(MarkerError),
    /// Storage failed (the marker may be in the log, as for `append`).
    Io(io::Error),
}

impl std::fmt::Display for MarkerAppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarkerAppendError::Refused(MarkerError::StaleEpoch) => {
                f.write_str("the producer has a newer epoch")
            }
            MarkerAppendError::Refused(MarkerError::CoordinatorFenced) => {
                f.write_str("a newer transaction coordinator wrote a marker")
            }
            MarkerAppendError::Io(error) => write!(f, "storage error: {error}"),
        }
    }
}

impl std::error::Error for MarkerAppendError {}

/// What open found in `leader-epoch-checkpoint`.
enum Checkpoint {
    Missing,
    Unreadable(String),
    Read(EpochCache),
}

/// Result of opening a log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub truncated_bytes: u64,
    pub segments_removed: usize,
    pub indexes_rebuilt: usize,
    /// Index files found without their segment's `.log`, removed.
    pub orphan_indexes_removed: usize,
    /// The log's files were gone (its leader epoch checkpoint names
    /// batches, yet no segment is left): it starts again empty.
    pub log_files_gone: bool,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`. After an unclean stop every
    /// segment is scanned: a torn or corrupt tail is cut off, later segments
    /// are removed, and the indexes are rebuilt.
    ///
    /// The epoch cache starts from `leader-epoch-checkpoint`, then every
    /// batch header met on the way (all of them, clean start or not) is
    /// assigned over it, as Kafka's recovery does for the segments it
    /// scans, and the result is cut to the log's [start, end): a crash may
    /// have lost the tail the checkpoint describes, or the checkpoint may
    /// miss an epoch whose batches survived. The cache is thus the one the
    /// headers give; the checkpoint is rewritten when it says otherwise.
    pub fn open<S: Storage + ?Sized>(
        storage: &mut S,
        dir: &str,
        config: TopicConfig,
        clean: bool,
    ) -> io::Result<(PartitionLog, Recovery)> {
        storage.create_dir_all(dir)?;
        let mut log = PartitionLog {
            dir: dir.to_string(),
            config,
            segments: Vec::new(),
            log_start_offset: 0,
            durable_offset: 0,
            dirty: BTreeSet::new(),
            producers: ProducerStates::default(),
            epochs: EpochCache::new(),
            checkpoint_stale: false,
        };
        match Self::load(&mut log, storage, clean) {
            Ok(recovery) => {
                log.invariants();
                Ok((log, recovery))
            }
            Err(error) => {
                // A log that failed to open holds no file open (a create
                // cut short by a lack of descriptors would leak more).
                log.close(storage);
                Err(error)
            }
        }
    }

    /// The body of `open`: reads what `log`'s directory holds, recovering
    /// it; whatever it opened is in `log.segments`.
    fn load<S: Storage + ?Sized>(
        log: &mut PartitionLog,
        storage: &mut S,
        clean: bool,
    ) -> io::Result<Recovery> {
        let dir = log.dir.clone();
        let dir = dir.as_str();
        let mut recovery = Recovery::default();
        let checkpoint_path = log.checkpoint_path();
        let checkpoint = read_checkpoint(storage, &checkpoint_path);
        if let Checkpoint::Read(cache) = &checkpoint {
            log.epochs = cache.clone();
        }
        let names = storage.list_dir(dir)?;
        let bases: Vec<i64> = names
            .iter()
            .filter_map(|n| match n.rsplit_once('.') {
                Some((stem, LOG_SUFFIX)) => stem.parse::<i64>().ok(),
                _ => None,
            })
            .collect();
        for name in &names {
            let path = format!("{dir}/{name}");
            let orphan = match name.rsplit_once('.') {
                Some((stem, INDEX_SUFFIX | TIME_INDEX_SUFFIX | TXN_INDEX_SUFFIX)) => {
                    let alone = stem.parse::<i64>().map_or(true, |b| !bases.contains(&b));
                    if alone {
                        // Deletion removes the segment's files log first,
                        // so a crash can leave its indexes behind; but so
                        // can a `.log` removed by hand.
                        tracing::warn!(%path, "an index file without its segment's log; removing it");
                        recovery.orphan_indexes_removed += 1;
                    }
                    alone
                }
                Some((_, "deleted" | "cleaned" | "swap")) => true,
                // A checkpoint written but not renamed before a crash.
                _ => name == CHECKPOINT_TMP_FILE,
            };
            if orphan {
                storage.remove_file(&path)?;
                log.dirty.insert(SyncTarget::Dir(dir.to_string()));
            }
        }
        let mut expected_next: Option<i64> = None;
        for (position, &base) in bases.iter().enumerate() {
            if expected_next.is_some_and(|next| next != base) {
                tracing::warn!(
                    dir,
                    base,
                    "segment does not continue the log; removing it and later segments"
                );
                recovery.segments_removed += log.remove_files_from(storage, &bases[position..])?;
                break;
            }
            let mut segment = log.open_segment(storage, base)?;
            let intact = if clean && load_indexes(storage, &mut segment)? {
                let (producers, epochs) = (&mut log.producers, &mut log.epochs);
                let mut aborted_txns = Vec::new();
                scan_batches(storage, &segment, |header, control| {
                    aborted_txns.extend(record_producer(producers, header, control));
                    epochs.assign(header.partition_leader_epoch, header.base_offset);
                })?;
                segment.aborted_txns = aborted_txns;
                true
            } else {
                if clean {
                    // After a clean stop the indexes were whole: someone
                    // or something removed or damaged them.
                    tracing::warn!(
                        path = %format!("{dir}/{}", segment_name(base, INDEX_SUFFIX)),
                        "index files missing or inconsistent after a clean stop; rebuilding them from the segment"
                    );
                }
                recovery.indexes_rebuilt += 1;
                log.recover_segment(storage, &mut segment, &mut recovery)?
            };
            log.keep_txn_index(storage, &segment)?;
            expected_next = Some(segment.next_offset);
            log.segments.push(segment);
            if !intact {
                recovery.segments_removed +=
                    log.remove_files_from(storage, &bases[position + 1..])?;
                break;
            }
        }
        if log.segments.is_empty() {
            if matches!(&checkpoint, Checkpoint::Read(epochs) if !epochs.is_empty()) {
                tracing::warn!(
                    dir,
                    "the partition's log files are gone though its leader epoch checkpoint names batches; it starts again empty at offset 0"
                );
                recovery.log_files_gone = true;
            }
            let segment = log.open_segment(storage, 0)?;
            log.segments.push(segment);
            log.dirty.insert(SyncTarget::Dir(dir.to_string()));
        }
        log.log_start_offset = log.segments[0].base_offset;
        log.open_epochs(storage, checkpoint, clean)?;
        // Recovered bytes, and the directory entries of the segments, may
        // still sit only in the page cache (an earlier run may have stopped
        // before its sync): nothing counts as durable until the first sync
        // of this log, which covers them all, completes.
        log.durable_offset = log.log_start_offset;
        log.dirty.insert(SyncTarget::Dir(log.dir.clone()));
        for segment in &log.segments {
            log.dirty.insert(SyncTarget::File(format!(
                "{}/{}",
                log.dir,
                segment_name(segment.base_offset, LOG_SUFFIX)
            )));
        }
        Ok(recovery)
    }

    /// The end of `open` for the epoch cache, once the segments are
    /// loaded and every header assigned: cuts the cache to the log, and
    /// rewrites the checkpoint when it differs.
    fn open_epochs<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        checkpoint: Checkpoint,
        clean: bool,
    ) -> io::Result<()> {
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        self.epochs.truncate_from_start(start);
        self.epochs.truncate_from_end(end);
        let path = self.checkpoint_path();
        match checkpoint {
            Checkpoint::Missing => {
                if !self.epochs.is_empty() {
                    tracing::warn!(%path, entries = self.epochs.entries().len(),
                        "no leader epoch checkpoint; rebuilt the cache from the batch headers");
                    self.checkpoint_stale = true;
                }
            }
            Checkpoint::Unreadable(why) => {
                tracing::warn!(%path, why, entries = self.epochs.entries().len(),
                    "unreadable leader epoch checkpoint; rebuilt the cache from the batch headers");
                self.checkpoint_stale = true;
            }
            Checkpoint::Read(read) => {
                let mut cut = read.clone();
                cut.truncate_from_start(start);
                cut.truncate_from_end(end);
                if cut != self.epochs {
                    // Expected after a crash that kept batches whose
                    // checkpoint was not renamed yet; not after a clean stop.
                    let first_difference = (cut.entries().iter())
                        .zip(self.epochs.entries())
                        .position(|(a, b)| a != b)
                        .unwrap_or(cut.entries().len().min(self.epochs.entries().len()));
                    tracing::warn!(%path, clean, first_difference,
                        checkpoint_entries = cut.entries().len(), log_entries = self.epochs.entries().len(),
                        "the leader epoch checkpoint disagrees with the batch headers; rewriting it");
                }
                self.checkpoint_stale = read != self.epochs;
                if !self.checkpoint_stale {
                    // It may sit only in the page cache, like the segments.
                    self.dirty.insert(SyncTarget::File(path));
                }
            }
        }
        self.flush_checkpoint(storage)
    }

    fn checkpoint_path(&self) -> String {
        format!("{}/{CHECKPOINT_FILE}", self.dir)
    }

    /// Writes `leader-epoch-checkpoint` if the cache changed since it was
    /// last written: to `leader-epoch-checkpoint.tmp`, then renamed over
    /// it, as Kafka does; the next sync covers the file and the directory.
    ///
    /// Why a crash leaves the old file or the new one, whole: the file
    /// under the real name is never written in place, the rename swaps
    /// whole files, and every rename joins the dirty set with both the
    /// file and its directory. The file goes in under its final name: once
    /// renamed, the temporary name is gone (a sync skips a missing file)
    /// and the final name reaches the same data. Within one sync request
    /// the driver syncs file data before any directory (`SyncJob::run`),
    /// so when that sync completes, name and contents are both on disk.
    /// A crash before then finds the directory as the last completed sync
    /// left it, naming the previous file, whose contents that same sync
    /// covered. The one gap is the file system's own: the rename sits in
    /// the page cache before the data sync, and a file system may write a
    /// directory change back ahead of the file's data, bringing the file
    /// back short or empty. The format is strict enough to see that (an
    /// entry count, a final newline), and open rebuilds the cache from the
    /// batch headers whatever the file says, so no crash leaves a wrong
    /// cache.
    fn flush_checkpoint<S: Storage + ?Sized>(&mut self, storage: &mut S) -> io::Result<()> {
        if !self.checkpoint_stale {
            return Ok(());
        }
        let tmp = format!("{}/{CHECKPOINT_TMP_FILE}", self.dir);
        let path = self.checkpoint_path();
        let text = self.epochs.encode();
        let file = storage.open(&tmp, true)?;
        let written = storage
            .truncate(file, 0)
            .and_then(|()| storage.write_at(file, 0, text.as_bytes()));
        storage.close(file);
        // The temporary name is in the directory now, whatever follows.
        self.dirty.insert(SyncTarget::Dir(self.dir.clone()));
        written?;
        storage.rename(&tmp, &path)?;
        self.dirty.insert(SyncTarget::File(path));
        self.checkpoint_stale = false;
        Ok(())
    }

    fn open_segment<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        base: i64,
    ) -> io::Result<Segment> {
        let path = |suffix: &str| format!("{}/{}", self.dir, segment_name(base, suffix));
        let mut files = Vec::with_capacity(4);
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            match storage.open(&path(suffix), true) {
                Ok(file) => files.push(file),
                Err(error) => {
                    // The files opened so far belong to no segment yet.
                    for file in files {
                        storage.close(file);
                    }
                    return Err(error);
                }
            }
        }
        let [log_file, index_file, time_file, txn_file] = files[..] else {
            unreachable!("four files were opened")
        };
        let size_bytes = match storage.len(log_file) {
            Ok(len) => len,
            Err(error) => {
                for file in files {
                    storage.close(file);
                }
                return Err(error);
            }
        };
        Ok(Segment {
            base_offset: base,
            log_file,
            index_file,
            time_file,
            txn_file,
            size_bytes,
            next_offset: base,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            aborted_txns: Vec::new(),
            max_timestamp: -1,
            first_batch_timestamp: None,
            bytes_since_index_entry: 0,
        })
    }

    fn remove_files_from<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        bases: &[i64],
    ) -> io::Result<usize> {
        for &base in bases {
            for suffix in SEGMENT_SUFFIXES {
                let path = format!("{}/{}", self.dir, segment_name(base, suffix));
                if storage.exists(&path) {
                    storage.remove_file(&path)?;
                }
            }
        }
        self.dirty.insert(SyncTarget::Dir(self.dir.clone()));
        Ok(bases.len())
    }

    /// Scans a whole segment, checking every batch, and rebuilds its indexes.
    /// Returns false when it had to cut a bad tail off.
    fn recover_segment<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        segment: &mut Segment,
        recovery: &mut Recovery,
    ) -> io::Result<bool> {
        let file_len = storage.len(segment.log_file)?;
        segment.size_bytes = 0;
        segment.aborted_txns.clear();
        let mut position = 0u64;
        let mut chunk = Vec::new();
        let mut intact = true;
        while position < file_len {
            let want = ((file_len - position) as usize).min(SCAN_CHUNK_BYTES);
            chunk.resize(want, 0);
            read_exact_at(storage, segment.log_file, position, &mut chunk)?;
            let mut consumed = 0usize;
            let mut stop = None;
            while consumed < chunk.len() {
                match check_stored_batch(
                    &chunk[consumed..],
                    segment.next_offset,
                    file_len - position - consumed as u64,
                    !self.config.skip_recovery_crc,
                ) {
                    Scan::Batch(header) => {
                        index_batch(
                            segment,
                            &header,
                            position + consumed as u64,
                            self.config.index_interval_bytes,
                        );
                        let control = header.is_control().then(|| {
                            control_record(&chunk[consumed..consumed + header.size_bytes()])
                        });
                        segment.aborted_txns.extend(record_producer(
                            &mut self.producers,
                            &header,
                            control.flatten(),
                        ));
                        self.epochs
                            .assign(header.partition_leader_epoch, header.base_offset);
                        consumed += header.size_bytes();
                    }
                    Scan::NeedMore(bytes) => {
                        if consumed == 0 {
                            chunk.resize(bytes, 0);
                            read_exact_at(storage, segment.log_file, position, &mut chunk)?;
                            continue;
                        }
                        break;
                    }
                    Scan::Bad(why) => {
                        stop = Some(why);
                        break;
                    }
                }
            }
            position += consumed as u64;
            if let Some(why) = stop {
                let cut = file_len - position;
                tracing::warn!(dir = %self.dir, segment = segment.base_offset, position, cut_bytes = cut, why,
                    "truncating a corrupt or torn tail");
                storage.truncate(segment.log_file, position)?;
                self.dirty.insert(SyncTarget::File(format!(
                    "{}/{}",
                    self.dir,
                    segment_name(segment.base_offset, LOG_SUFFIX)
                )));
                recovery.truncated_bytes += cut;
                intact = false;
                break;
            }
        }
        segment.size_bytes = position;
        write_indexes(storage, segment)?;
        Ok(intact)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// The offset below which every record is durable; on a single node this
    /// is the high watermark.
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset
    }

    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    pub fn producers(&self) -> &ProducerStates {
        &self.producers
    }

    pub fn set_config(&mut self, config: TopicConfig) {
        self.config = config;
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    /// Files and directories changed since the last call (segments, their
    /// directory, the epoch checkpoint); a sync of them makes everything
    /// below `log_end_offset()` (at the time of the call) durable.
    pub fn take_dirty(&mut self) -> Vec<SyncTarget> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// A sync of what `take_dirty` returned when the log ended at `offset` completed.
    pub fn mark_durable(&mut self, offset: i64) {
        assert!(
            offset <= self.log_end_offset(),
            "durable offset beyond the log end"
        );
        self.durable_offset = self.durable_offset.max(offset);
    }

    /// Appends one validated batch: assigns its offsets, rolls the segment if
    /// needed, writes it and indexes it. The batch is visible to reads at
    /// once; it is durable only after the next sync of `take_dirty()`.
    ///
    /// The batch is not copied: its header is, and patched (offsets, and the
    /// append time with its CRC), then header and records go to the segment
    /// in one vectored write.
    pub fn append<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        batch: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> io::Result<Appended> {
        let max_timestamp = BatchHeader::parse(batch).max_timestamp;
        self.append_with_max_timestamp(storage, batch, leader_epoch, now_ms, max_timestamp)
    }

    /// `append` of a produced batch whose records' largest timestamp is
    /// `max_timestamp` (as validation found it): with CreateTime that is
    /// what the header gets, whatever the producer wrote there, as Kafka
    /// does (some clients send -1).
    pub fn append_with_max_timestamp<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        batch: &[u8],
        leader_epoch: i32,
        now_ms: i64,
        max_timestamp: i64,
    ) -> io::Result<Appended> {
        let header = BatchHeader::parse(batch);
        assert_eq!(
            header.size_bytes(),
            batch.len(),
            "append of a partial batch"
        );
        // The header the batch will carry: the segment's age (whether to
        // roll) counts its timestamp.
        let stamped = BatchHeader {
            max_timestamp: if self.config.log_append_time {
                now_ms
            } else {
                max_timestamp
            },
            ..header
        };
        let mut base_offset = self.log_end_offset();
        if self.config.offset_gap && base_offset % 97 == 13 {
            base_offset += 1;
        }
        let (head_bytes, records) = batch.split_at(HEADER_BYTES);
        let mut head = [0u8; HEADER_BYTES];
        head.copy_from_slice(head_bytes);
        batch::assign_offset(&mut head, base_offset, leader_epoch);
        let log_append_time_ms = if self.config.log_append_time {
            batch::set_log_append_time_split(&mut head, records, now_ms);
            now_ms
        } else {
            if header.max_timestamp != max_timestamp {
                batch::set_max_timestamp_split(&mut head, records, max_timestamp);
            }
            -1
        };
        let original = header;
        let header = BatchHeader::parse(&head);
        // Pair assertion: the patched header says what was meant, and
        // nothing else in it moved.
        assert_eq!(header.base_offset, base_offset);
        assert_eq!(header.partition_leader_epoch, leader_epoch);
        assert_eq!(header.max_timestamp, stamped.max_timestamp);
        assert_eq!(
            (header.batch_length, header.magic, header.last_offset_delta),
            (
                original.batch_length,
                original.magic,
                original.last_offset_delta
            )
        );
        assert_eq!(
            (
                header.base_timestamp,
                header.record_count,
                header.base_sequence
            ),
            (
                original.base_timestamp,
                original.record_count,
                original.base_sequence
            )
        );
        assert_eq!(
            (header.producer_id, header.producer_epoch),
            (original.producer_id, original.producer_epoch)
        );
        assert_eq!(
            header.attributes & !batch::ATTRIBUTE_TIMESTAMP_LOG_APPEND,
            original.attributes & !batch::ATTRIBUTE_TIMESTAMP_LOG_APPEND
        );
        assert_eq!(
            header.is_log_append_time(),
            self.config.log_append_time || original.is_log_append_time()
        );
        if header.max_timestamp == original.max_timestamp
            && header.attributes == original.attributes
        {
            assert_eq!(header.crc, original.crc, "an unpatched batch keeps its CRC");
        }
        self.append_stored(storage, &header, &[&head, records])?;
        Ok(Appended {
            base_offset,
            last_offset: header.last_offset(),
            log_append_time_ms,
        })
    }

    /// Appends batches a leader stored, as they are: offsets, leader
    /// epochs, timestamps and CRCs stay byte for byte. `batches` is what a
    /// fetch answered: whole batches back to back, the first starting at
    /// `log_end_offset()`, each where the one before ends, each with a
    /// valid CRC and a leader epoch not below that of the records already
    /// here (a new leader's epoch that wrote nothing yet gives way, as in
    /// Kafka). A batch cut short at the end (an answer may stop mid-batch)
    /// is left for the next fetch. Everything is checked before anything
    /// is written; then each batch is appended as `append` does (roll,
    /// indexes, producer state, epoch cache, dirty files). Returns the new
    /// log end. Bad input is an error, never a panic.
    pub fn append_replicated<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        batches: &[u8],
    ) -> Result<i64, ReplicaAppendError> {
        let checked = self.check_replicated(batches)?;
        for (header, range) in &checked {
            self.append_stored(storage, header, &[&batches[range.clone()]])?;
        }
        Ok(self.log_end_offset())
    }

    /// The whole batches at the start of `batches` and where each lies, if
    /// all of them may follow this log; see `append_replicated`. One pass
    /// over the input, so bounded by its length.
    fn check_replicated(
        &self,
        batches: &[u8],
    ) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, ReplicaAppendError> {
        let mut expected = self.log_end_offset();
        let records_epoch = self.records_epoch();
        let mut previous_epoch: Option<i32> = None;
        let mut position = 0usize;
        let mut checked = Vec::new();
        while batches.len() - position >= batch::LOG_OVERHEAD {
            let rest = &batches[position..];
            let length = i32::from_be_bytes(
                rest[batch::LENGTH_OFFSET..batch::LOG_OVERHEAD]
                    .try_into()
                    .expect("four bytes"),
            );
            let size = length as i64 + batch::LOG_OVERHEAD as i64;
            if size < HEADER_BYTES as i64 || size > BATCH_BYTES_MAX as i64 {
                return Err(ReplicaAppendError::Corrupt("bad batch length"));
            }
            if rest.len() > batch::MAGIC_OFFSET && rest[batch::MAGIC_OFFSET] as i8 != batch::MAGIC {
                return Err(ReplicaAppendError::Corrupt("not a v2 record batch"));
            }
            if size > rest.len() as i64 {
                break;
            }
            let whole = &rest[..size as usize];
            let header = batch::check_framing(whole).map_err(|error| match error {
                BatchError::Corrupt(why)
                | BatchError::Invalid(why)
                | BatchError::InvalidTimestamp(why) => ReplicaAppendError::Corrupt(why),
            })?;
            if header.last_offset_delta < 0 {
                return Err(ReplicaAppendError::Corrupt("negative offset delta"));
            }
            if header.base_offset != expected {
                return Err(ReplicaAppendError::OutOfOrder {
                    expected,
                    got: header.base_offset,
                });
            }
            let epoch = header.partition_leader_epoch;
            if previous_epoch.is_some_and(|previous| epoch < previous) {
                return Err(ReplicaAppendError::Corrupt("leader epochs go back"));
            }
            if let Some(latest) = records_epoch.filter(|&latest| epoch < latest) {
                return Err(ReplicaAppendError::EpochBelowLatest { latest, got: epoch });
            }
            if epoch >= 0 {
                previous_epoch = Some(epoch);
            }
            expected = header.next_offset();
            checked.push((header, position..position + whole.len()));
            position += whole.len();
        }
        Ok(checked)
    }

    /// The leader epoch of the last records in the log (None without
    /// any): a new leader's epoch that wrote nothing does not count.
    fn records_epoch(&self) -> Option<i32> {
        let end = self.log_end_offset();
        if end <= self.log_start_offset {
            return None;
        }
        self.epochs.epoch_for(end - 1)
    }

    /// Writes one batch in its final form (`parts`, header first, make up
    /// the batch `header` describes) at the log end, rolling first if the
    /// active segment must not take it, and indexes it and records it in
    /// the producer state and the epoch cache. Both append paths end here.
    /// Once its bytes are written the batch is in the log: a later failure
    /// (an index or checkpoint write) is returned, but the next sync still
    /// covers the batch.
    fn append_stored<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        header: &BatchHeader,
        parts: &[&[u8]],
    ) -> io::Result<()> {
        let batch_bytes = header.size_bytes();
        assert_eq!(
            parts.iter().map(|p| p.len()).sum::<usize>(),
            batch_bytes,
            "append of a partial batch"
        );
        assert!(
            header.base_offset >= self.log_end_offset(),
            "append below the log end"
        );
        if self.should_roll(header, batch_bytes) {
            self.roll(storage)?;
        }
        let interval = self.config.index_interval_bytes;
        let dir = self.dir.clone();
        let segment = self
            .segments
            .last_mut()
            .expect("a log always has a segment");
        let position = segment.size_bytes;
        if let Err(error) = storage.write_vectored_at(segment.log_file, position, parts) {
            // Nothing was appended: put the file back to its old length so a
            // partial write cannot linger; the next append overwrites it anyway.
            let _ = storage.truncate(segment.log_file, position);
            return Err(error);
        }
        let (index_before, time_before) = (segment.offset_index.len(), segment.time_index.len());
        index_batch(segment, header, position, interval);
        segment.size_bytes = position + batch_bytes as u64;
        let control = header.is_control().then(|| control_record(&parts.concat()));
        let aborted = record_producer(&mut self.producers, header, control.flatten());
        if self
            .epochs
            .assign(header.partition_leader_epoch, header.base_offset)
        {
            self.checkpoint_stale = true;
        }
        // The batch is in the log now, whatever happens to its index
        // entries: the next sync must cover its segment, or a roll after a
        // failed index write would leave it unsynced below a durable end.
        self.dirty.insert(SyncTarget::File(format!(
            "{dir}/{}",
            segment_name(segment.base_offset, LOG_SUFFIX)
        )));
        if let Some(aborted) = aborted {
            // The entry goes to the marker's segment, and into the sync
            // that makes the marker durable.
            segment.aborted_txns.push(aborted);
            self.dirty.insert(SyncTarget::File(format!(
                "{dir}/{}",
                segment_name(segment.base_offset, TXN_INDEX_SUFFIX)
            )));
            let position = (segment.aborted_txns.len() - 1) * ABORTED_TXN_BYTES;
            storage.write_at(segment.txn_file, position as u64, &aborted.encode())?;
        }
        append_index_entries(storage, segment, index_before, time_before)?;
        self.flush_checkpoint(storage)?;
        self.invariants();
        Ok(())
    }

    /// A new leader's first step, before any write in `epoch`: its epoch
    /// starts at the log end (Kafka's `makeLeader`), so that followers
    /// asking for the end of an earlier epoch learn it ends here. The
    /// caller makes the partition's next sync cover the checkpoint.
    pub fn assign_epoch<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        epoch: i32,
    ) -> io::Result<()> {
        assert!(epoch >= 0, "a leader epoch is never negative ({epoch})");
        if let Some(latest) = self.records_epoch() {
            assert!(
                epoch >= latest,
                "leader epoch {epoch} below epoch {latest} of records already in the log"
            );
        }
        if self.epochs.assign(epoch, self.log_end_offset()) {
            self.checkpoint_stale = true;
        }
        self.flush_checkpoint(storage)?;
        self.invariants();
        Ok(())
    }

    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// Kafka's answer to OffsetsForLeaderEpoch for `epoch`: the largest
    /// epoch at most it, and where that epoch ends (see
    /// `EpochCache::end_offset_for`), with this log's end.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// A leader's check of a follower's fetch (Kafka's
    /// `validateFetchOffsetAndMaybeGetDivergingEpoch`): the follower's log
    /// ends at `fetch_offset` with records of `last_fetched_epoch` (-1
    /// names none, and leaves nothing to check). None when this log holds
    /// that epoch up to there; else the divergence to answer: the largest
    /// epoch here at most the follower's, and where it ends.
    /// `leading_epoch` is the epoch this log's leader leads in.
    pub fn divergence(
        &self,
        last_fetched_epoch: i32,
        fetch_offset: i64,
        leading_epoch: i32,
    ) -> Option<(i32, i64)> {
        if last_fetched_epoch < 0 {
            return None;
        }
        let (mut epoch, mut end_offset) = self.end_offset_for_epoch(last_fetched_epoch);
        if epoch == UNDEFINED_EPOCH {
            // The follower's last epoch is after every epoch here, the
            // leader's own included, so no leader of the partition wrote
            // the records its log ends with: a crash flipped a bit in the
            // epoch field of an unsynced batch there, which the batch CRC
            // does not cover. Kafka's leader answers OFFSET_OUT_OF_RANGE,
            // after which its follower fetches from where it stands for
            // ever; the undefined epoch end would go out as no divergence
            // at all (-1 is the field's default), an empty answer. The
            // largest epoch here at most the follower's is the leader's
            // own, which ends at this log's end: answered, it has the
            // follower cut its records of later epochs.
            (epoch, end_offset) = (leading_epoch, self.log_end_offset());
            tracing::warn!(dir = %self.dir, last_fetched_epoch, fetch_offset, epoch, end_offset,
                "a follower's last epoch is after every epoch of this log; answering the leader's own as the divergence");
        }
        (epoch != last_fetched_epoch || end_offset < fetch_offset).then_some((epoch, end_offset))
    }

    /// Where a follower cuts its log when the leader answers that they
    /// parted after the leader's `epoch`, which ends at `end_offset` on
    /// the leader (Kafka's truncation on DivergingEpoch): at the earlier of
    /// the two ends of that epoch if this log has it too; else at the end
    /// of this log's largest epoch below it, and the next fetch checks
    /// again (KIP-279). Never past this log's end nor before its start.
    pub fn diverged_end(&self, epoch: i32, end_offset: i64) -> i64 {
        let log_end = self.log_end_offset();
        let (own_epoch, own_end) = self.end_offset_for_epoch(epoch);
        if own_end < 0 {
            end_offset.min(log_end)
        } else if own_epoch == epoch {
            end_offset.min(own_end).min(log_end)
        } else {
            own_end.min(log_end)
        }
        .max(self.log_start_offset)
    }

    /// Where this log's records of epochs after `epoch` start: None when
    /// every record here is of `epoch` or earlier. A follower whose leader
    /// sends batches of `epoch` at this log's end (`EpochBelowLatest`)
    /// cuts its log there: a leader's log does not go back in epoch, so
    /// every record the leader holds below this end is of `epoch` or
    /// earlier, and records here of a later epoch are not the leader's.
    pub fn start_of_epochs_after(&self, epoch: i32) -> Option<i64> {
        if self.records_epoch().is_none_or(|latest| latest <= epoch) {
            return None;
        }
        let start = self
            .epochs
            .start_after(epoch)
            .expect("the records' epoch is in the cache");
        assert!(
            (self.log_start_offset..self.log_end_offset()).contains(&start),
            "the epochs after {epoch} start at {start}, outside the log's records"
        );
        Some(start)
    }

    fn should_roll(&self, incoming: &BatchHeader, batch_bytes: usize) -> bool {
        let active = self.active();
        if active.size_bytes == 0 {
            return false;
        }
        let full = active.size_bytes + batch_bytes as u64 > self.config.segment_bytes;
        let aged = active.first_batch_timestamp.is_some_and(|first| {
            incoming.max_timestamp.saturating_sub(first) > self.config.segment_ms
        });
        let offsets_overflow = self.log_end_offset() + incoming.last_offset_delta as i64
            - active.base_offset
            > i32::MAX as i64;
        full || aged || offsets_overflow
    }

    /// Starts a new, empty segment at the log end.
    pub fn roll<S: Storage + ?Sized>(&mut self, storage: &mut S) -> io::Result<()> {
        let base = self.log_end_offset();
        if self.active().base_offset == base {
            return Ok(());
        }
        let segment = self.open_segment(storage, base)?;
        self.segments.push(segment);
        self.dirty.insert(SyncTarget::Dir(self.dir.clone()));
        Ok(())
    }

    /// Reads whole batches starting with the one holding `offset`, below
    /// `limit_offset`, up to `bytes_max` bytes, from one segment. With
    /// `at_least_one`, the first batch is returned whole even when larger.
    pub fn read<S: Storage + ?Sized>(
        &self,
        storage: &mut S,
        offset: i64,
        limit_offset: i64,
        bytes_max: usize,
        at_least_one: bool,
    ) -> io::Result<Bytes> {
        if offset >= limit_offset || offset < self.log_start_offset {
            return Ok(Bytes::new());
        }
        let at = self.segments.partition_point(|s| s.base_offset <= offset);
        let segment = &self.segments[at.max(1) - 1];
        if offset >= segment.next_offset {
            return Ok(Bytes::new());
        }
        let mut position = segment.position_for(offset);
        // Skip the batches that end before `offset`.
        let mut header_bytes = [0u8; HEADER_BYTES];
        loop {
            if position >= segment.size_bytes {
                return Ok(Bytes::new());
            }
            read_exact_at(storage, segment.log_file, position, &mut header_bytes)?;
            let header = BatchHeader::parse(&header_bytes);
            if header.last_offset() >= offset {
                break;
            }
            position += header.size_bytes() as u64;
        }
        let available = (segment.size_bytes - position) as usize;
        let mut want = bytes_max.min(available);
        let first = BatchHeader::parse(&header_bytes);
        if first.base_offset >= limit_offset {
            return Ok(Bytes::new());
        }
        if at_least_one && first.size_bytes() > want {
            want = first.size_bytes().min(available);
        }
        let mut buffer = BytesMut::zeroed(want);
        read_exact_at(storage, segment.log_file, position, &mut buffer)?;
        let end = batch::headers_in(&buffer)
            .take_while(|(header, _)| header.last_offset() < limit_offset)
            .map(|(_, range)| range.end)
            .last()
            .unwrap_or(0);
        buffer.truncate(end);
        Ok(buffer.freeze())
    }

    /// Offset and timestamp of the first record whose timestamp is at least
    /// `timestamp`, below `limit_offset`; None when there is none.
    pub fn offset_for_timestamp<S: Storage + ?Sized>(
        &self,
        storage: &mut S,
        timestamp: i64,
        limit_offset: i64,
    ) -> io::Result<Option<(i64, i64)>> {
        for segment in self
            .segments
            .iter()
            .filter(|s| s.max_timestamp >= timestamp)
        {
            let at = segment
                .time_index
                .partition_point(|e| e.timestamp < timestamp);
            let from_offset = match at {
                0 => segment.base_offset,
                n => segment.base_offset + segment.time_index[n - 1].relative_offset as i64,
            };
            let found =
                self.scan_records(storage, segment, from_offset, limit_offset, |header| {
                    header.max_timestamp >= timestamp
                })?;
            for record in found {
                if record.timestamp >= timestamp && record.offset >= self.log_start_offset {
                    return Ok(Some((record.offset, record.timestamp)));
                }
            }
        }
        Ok(None)
    }

    /// Offset and timestamp of the record with the largest timestamp below
    /// `limit_offset` (the first such record), or None for an empty log.
    pub fn offset_of_max_timestamp<S: Storage + ?Sized>(
        &self,
        storage: &mut S,
        limit_offset: i64,
    ) -> io::Result<Option<(i64, i64)>> {
        let Some(max) = self
            .segments
            .iter()
            .map(|s| s.max_timestamp)
            .max()
            .filter(|&m| m >= 0)
        else {
            return Ok(None);
        };
        self.offset_for_timestamp(storage, max, limit_offset)
    }

    /// Decodes the records of the first batch from `from_offset` on whose
    /// header `wanted` accepts, below `limit_offset`.
    fn scan_records<S: Storage + ?Sized>(
        &self,
        storage: &mut S,
        segment: &Segment,
        from_offset: i64,
        limit_offset: i64,
        wanted: impl Fn(&BatchHeader) -> bool,
    ) -> io::Result<Vec<batch::RecordView>> {
        let mut position = segment.position_for(from_offset);
        let mut header_bytes = [0u8; HEADER_BYTES];
        while position < segment.size_bytes {
            read_exact_at(storage, segment.log_file, position, &mut header_bytes)?;
            let header = BatchHeader::parse(&header_bytes);
            if header.last_offset() >= limit_offset {
                break;
            }
            if header.last_offset() >= from_offset && wanted(&header) {
                let mut whole = vec![0u8; header.size_bytes()];
                read_exact_at(storage, segment.log_file, position, &mut whole)?;
                return batch::decode_records(&whole)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")));
            }
            position += header.size_bytes() as u64;
        }
        Ok(Vec::new())
    }

    /// Deletes whole segments past `retention.ms` or beyond `retention.bytes`,
    /// never data at or above `durable_offset`. Returns how many were deleted.
    pub fn apply_retention<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        now_ms: i64,
    ) -> io::Result<usize> {
        let expired = |s: &Segment, retention_ms: i64| {
            retention_ms >= 0
                && s.max_timestamp >= 0
                && now_ms.saturating_sub(s.max_timestamp) > retention_ms
        };
        let active = self.active();
        if self.segments.len() == 1
            && active.size_bytes > 0
            && active.next_offset <= self.durable_offset
            && expired(active, self.config.retention_ms)
        {
            self.roll(storage)?;
        }
        let mut excess = match self.config.retention_bytes {
            limit if limit >= 0 => self.size_bytes() as i64 - limit,
            _ => 0,
        };
        let mut count = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let by_time = expired(oldest, self.config.retention_ms);
            let by_size = excess - oldest.size_bytes as i64 >= 0 && excess > 0;
            if !(by_time || by_size) || oldest.next_offset > self.durable_offset {
                break;
            }
            excess -= oldest.size_bytes as i64;
            self.delete_oldest_segment(storage)?;
            count += 1;
        }
        self.flush_checkpoint(storage)?;
        self.invariants();
        Ok(count)
    }

    fn delete_oldest_segment<S: Storage + ?Sized>(&mut self, storage: &mut S) -> io::Result<()> {
        let segment = self.segments.remove(0);
        self.log_start_offset = self.segments[0].base_offset;
        if self.epochs.truncate_from_start(self.log_start_offset) {
            self.checkpoint_stale = true;
        }
        for file in segment.files() {
            storage.close(file);
        }
        let log_path = format!(
            "{}/{}",
            self.dir,
            segment_name(segment.base_offset, LOG_SUFFIX)
        );
        self.dirty.remove(&SyncTarget::File(log_path));
        self.remove_files_from(storage, &[segment.base_offset])?;
        tracing::info!(dir = %self.dir, base = segment.base_offset, "deleted segment by retention");
        Ok(())
    }

    /// Drops every batch whose last offset is at or above `offset`, as
    /// Kafka's `truncateTo` does: a batch holding `offset` goes whole, so
    /// the new end (returned) may lie below `offset`. Later segments are
    /// removed, the cut segment's indexes rebuilt from its headers, and the
    /// producer state rebuilt from the whole log. What was durable above the
    /// new end no longer counts; the next sync covers the cut.
    pub fn truncate_to<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        offset: i64,
    ) -> io::Result<i64> {
        assert!(
            offset >= self.log_start_offset,
            "truncation below the log start ({offset} < {})",
            self.log_start_offset
        );
        if offset >= self.log_end_offset() {
            // No record goes, but an epoch this log started at its end and
            // wrote nothing in (a leader that led without appending) does:
            // the log's last fetched epoch is then the one its records
            // have, which a leader that diverged from it can place.
            if self.epochs.truncate_from_end(offset) {
                self.checkpoint_stale = true;
                self.flush_checkpoint(storage)?;
            }
            return Ok(self.log_end_offset());
        }
        // Every batch starting at or after `offset` goes; the cache forgets
        // their epochs before any IO, so that a failure below cannot leave
        // it describing records that are gone.
        if self.epochs.truncate_from_end(offset) {
            self.checkpoint_stale = true;
        }
        // The segment that keeps the cut: the last one starting below
        // `offset`, or the first when the whole log goes.
        let keep = self
            .segments
            .partition_point(|s| s.base_offset < offset)
            .max(1);
        let removed: Vec<Segment> = self.segments.drain(keep..).collect();
        for segment in &removed {
            for file in segment.files() {
                storage.close(file);
            }
            let log_path = format!(
                "{}/{}",
                self.dir,
                segment_name(segment.base_offset, LOG_SUFFIX)
            );
            self.dirty.remove(&SyncTarget::File(log_path));
        }
        let bases: Vec<i64> = removed.iter().map(|s| s.base_offset).collect();
        self.remove_files_from(storage, &bases)?;
        let interval = self.config.index_interval_bytes;
        let dir = self.dir.clone();
        let segment = self
            .segments
            .last_mut()
            .expect("a log always has a segment");
        // The position of the first batch reaching `offset`.
        let mut position = segment.position_for(offset);
        let mut header_bytes = [0u8; HEADER_BYTES];
        while position < segment.size_bytes {
            read_exact_at(storage, segment.log_file, position, &mut header_bytes)?;
            let header = BatchHeader::parse(&header_bytes);
            if header.last_offset() >= offset {
                break;
            }
            position += header.size_bytes() as u64;
        }
        storage.truncate(segment.log_file, position)?;
        segment.size_bytes = position;
        segment.next_offset = segment.base_offset;
        segment.offset_index.clear();
        segment.time_index.clear();
        segment.max_timestamp = -1;
        segment.first_batch_timestamp = None;
        segment.bytes_since_index_entry = 0;
        let mut headers = Vec::new();
        let mut at = 0u64;
        scan_batches(storage, segment, |header, _| {
            headers.push((*header, at));
            at += header.size_bytes() as u64;
        })?;
        for (header, at) in &headers {
            index_batch(segment, header, *at, interval);
        }
        assert_eq!(at, position, "the cut falls on a batch boundary");
        write_indexes(storage, segment)?;
        let log_path = format!("{dir}/{}", segment_name(segment.base_offset, LOG_SUFFIX));
        self.dirty.insert(SyncTarget::File(log_path));
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            let path = format!("{dir}/{}", segment_name(segment.base_offset, suffix));
            self.dirty.insert(SyncTarget::File(path));
        }
        let end = self.log_end_offset();
        assert!(end <= offset, "truncation left {end} above {offset}");
        self.durable_offset = self.durable_offset.min(end);
        if self.epochs.truncate_from_end(end) {
            self.checkpoint_stale = true;
        }
        self.rebuild_producers(storage)?;
        self.flush_checkpoint(storage)?;
        tracing::info!(dir = %self.dir, offset, end, segments_removed = removed.len(), "truncated the log");
        self.invariants();
        Ok(end)
    }

    /// Rebuilds the producer state and every segment's aborted
    /// transactions from the batches, after a truncation; a `.txnindex`
    /// that no longer matches (the cut segment's) is rewritten.
    fn rebuild_producers<S: Storage + ?Sized>(&mut self, storage: &mut S) -> io::Result<()> {
        self.producers = ProducerStates::default();
        let mut segments = std::mem::take(&mut self.segments);
        let rebuilt = (|| {
            for segment in &mut segments {
                let producers = &mut self.producers;
                let mut aborted_txns = Vec::new();
                scan_batches(storage, segment, |header, control| {
                    aborted_txns.extend(record_producer(producers, header, control));
                })?;
                segment.aborted_txns = aborted_txns;
                self.keep_txn_index(storage, segment)?;
            }
            Ok(())
        })();
        self.segments = segments;
        rebuilt
    }

    /// Makes a segment's `.txnindex` file hold its entries, rewriting it
    /// (and marking it for the next sync) when it says anything else: a
    /// crash may have kept entries of markers it cut, or lost some.
    fn keep_txn_index<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        segment: &Segment,
    ) -> io::Result<()> {
        let expected: Vec<u8> = segment
            .aborted_txns
            .iter()
            .flat_map(AbortedTxn::encode)
            .collect();
        let len = storage.len(segment.txn_file)?;
        if len == expected.len() as u64 {
            let mut found = vec![0u8; expected.len()];
            read_exact_at(storage, segment.txn_file, 0, &mut found)?;
            if found == expected {
                return Ok(());
            }
        }
        tracing::info!(dir = %self.dir, segment = segment.base_offset, file_bytes = len,
            entries = segment.aborted_txns.len(), "rewriting the aborted transaction index");
        storage.truncate(segment.txn_file, 0)?;
        storage.write_at(segment.txn_file, 0, &expected)?;
        self.dirty.insert(SyncTarget::File(format!(
            "{}/{}",
            self.dir,
            segment_name(segment.base_offset, TXN_INDEX_SUFFIX)
        )));
        Ok(())
    }

    /// Appends a transaction marker as this partition's leader, in
    /// `leader_epoch`, after Kafka's checks: a producer epoch below the
    /// producer's, or a coordinator epoch below the last marker's, is
    /// refused. The marker closes the producer's open transaction here (an
    /// abort adds a `.txnindex` entry); with none open it only records
    /// the epochs. Durable, like any append, after the next sync.
    pub fn append_marker<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        marker: &TxnMarker,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<Appended, MarkerAppendError> {
        self.producers
            .check_marker(marker)
            .map_err(MarkerAppendError::Refused)?;
        let bytes = batch::build_control_batch(
            now_ms,
            marker.producer_id,
            marker.producer_epoch,
            marker.coordinator_epoch,
            marker.commit,
        );
        let appended = self
            .append(storage, &bytes, leader_epoch, now_ms)
            .map_err(MarkerAppendError::Io)?;
        assert_eq!(
            appended.base_offset, appended.last_offset,
            "a marker is one record"
        );
        assert_eq!(self.producers.open_txn(marker.producer_id), None);
        Ok(appended)
    }

    /// Kafka's last stable offset under `high_watermark`: below it every
    /// transaction is decided, and decided below the high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let stable = self.producers.last_stable_offset(high_watermark);
        assert!(stable <= high_watermark);
        stable
    }

    /// The high watermark passed `high_watermark`: completed transactions
    /// whose marker is below it no longer hold the last stable offset.
    pub fn forget_completed_txns(&mut self, high_watermark: i64) {
        self.producers.forget_completed_below(high_watermark);
    }

    /// The aborted transactions a read_committed fetch from `fetch_offset`
    /// that returned records up to `upper_bound_offset` (exclusive) must
    /// name: those whose marker is at or after the fetch offset and whose
    /// first offset is below the bound. As Kafka's
    /// `LocalLog.collectAbortedTransactions`, the scan starts at the segment
    /// holding the fetch offset and stops at the first entry whose last
    /// stable offset reaches the bound (no later abort can concern the range).
    pub fn aborted_txns(&self, fetch_offset: i64, upper_bound_offset: i64) -> Vec<AbortedTxn> {
        let from = self
            .segments
            .partition_point(|s| s.base_offset <= fetch_offset);
        let mut found = Vec::new();
        for segment in &self.segments[from.max(1) - 1..] {
            for txn in &segment.aborted_txns {
                if txn.last_offset >= fetch_offset && txn.first_offset < upper_bound_offset {
                    found.push(*txn);
                }
                if txn.last_stable_offset >= upper_bound_offset {
                    return found;
                }
            }
        }
        found
    }

    /// Empties the log and restarts it, empty, at `offset`: Kafka's
    /// `truncateFullyAndStartAt`, for a follower whose whole log lies below
    /// its leader's log start (retention there deleted what it would fetch
    /// next). Every segment goes, the epoch cache and the producer state
    /// are cleared, and one empty segment starts at `offset`. Until the
    /// next sync covers the directory, a crash may bring the old segments
    /// back, which only puts the follower back where it was.
    pub fn truncate_fully_and_start_at<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        offset: i64,
    ) -> io::Result<()> {
        assert!(offset >= 0, "a log starts at a real offset ({offset})");
        // The cache forgets first, so that a failure below cannot leave it
        // describing records that are gone.
        if !self.epochs.is_empty() {
            self.epochs = EpochCache::new();
            self.checkpoint_stale = true;
        }
        let removed: Vec<Segment> = std::mem::take(&mut self.segments);
        for segment in &removed {
            for file in segment.files() {
                storage.close(file);
            }
            for suffix in SEGMENT_SUFFIXES {
                let path = format!("{}/{}", self.dir, segment_name(segment.base_offset, suffix));
                self.dirty.remove(&SyncTarget::File(path));
            }
        }
        let bases: Vec<i64> = removed.iter().map(|s| s.base_offset).collect();
        self.remove_files_from(storage, &bases)?;
        let segment = self.open_segment(storage, offset)?;
        self.segments.push(segment);
        self.log_start_offset = offset;
        self.durable_offset = offset;
        self.dirty.insert(SyncTarget::Dir(self.dir.clone()));
        self.producers = ProducerStates::default();
        self.flush_checkpoint(storage)?;
        tracing::info!(dir = %self.dir, offset, segments_removed = removed.len(), "emptied the log; it starts again at the leader's log start");
        self.invariants();
        Ok(())
    }

    /// Closes every file, for a clean shutdown or a topic deletion.
    pub fn close<S: Storage + ?Sized>(&mut self, storage: &mut S) {
        for segment in &self.segments {
            for file in segment.files() {
                storage.close(file);
            }
        }
    }

    /// Every file of the log, for a sync before a clean shutdown (the
    /// checkpoint too, whether written yet or not: a sync skips a missing file).
    pub fn all_files(&self) -> Vec<SyncTarget> {
        let mut files = vec![
            SyncTarget::Dir(self.dir.clone()),
            SyncTarget::File(self.checkpoint_path()),
        ];
        for segment in &self.segments {
            for suffix in SEGMENT_SUFFIXES {
                files.push(SyncTarget::File(format!(
                    "{}/{}",
                    self.dir,
                    segment_name(segment.base_offset, suffix)
                )));
            }
        }
        files
    }

    pub fn invariants(&self) {
        assert!(!self.segments.is_empty());
        assert_eq!(self.log_start_offset, self.segments[0].base_offset);
        assert!(self.durable_offset <= self.log_end_offset());
        for pair in self.segments.windows(2) {
            assert_eq!(
                pair[0].next_offset, pair[1].base_offset,
                "segments must be contiguous"
            );
        }
        // The epochs describe this log: none starts before it, and only a
        // new leader's (or one whose records retention deleted) at its end.
        self.epochs.invariants();
        if let Some(first) = self.epochs.entries().first() {
            assert!(
                first.start_offset >= self.log_start_offset,
                "epoch {first:?} starts before the log"
            );
        }
        if let Some(latest) = self.epochs.latest() {
            assert!(
                latest.start_offset <= self.log_end_offset(),
                "epoch {latest:?} starts after the log end"
            );
        }
    }
}

enum Scan {
    Batch(BatchHeader),
    /// The batch is complete in the file but needs this many bytes in the buffer.
    NeedMore(usize),
    Bad(&'static str),
}

/// Checks the stored batch at the start of `bytes` (with `file_rest` bytes
/// left in the file from there), expecting it to start at `expected_offset`.
fn check_stored_batch(bytes: &[u8], expected_offset: i64, file_rest: u64, check_crc: bool) -> Scan {
    if (file_rest as usize) < HEADER_BYTES {
        return Scan::Bad("incomplete batch header at the end");
    }
    if bytes.len() < HEADER_BYTES {
        return Scan::NeedMore(HEADER_BYTES);
    }
    let header = BatchHeader::parse(bytes);
    let size = header.batch_length as i64 + batch::LOG_OVERHEAD as i64;
    if header.magic != batch::MAGIC || size < HEADER_BYTES as i64 || size as usize > BATCH_BYTES_MAX
    {
        return Scan::Bad("bad batch header");
    }
    if size as u64 > file_rest {
        return Scan::Bad("batch cut short at the end");
    }
    if size as usize > bytes.len() {
        return Scan::NeedMore(size as usize);
    }
    let whole = &bytes[..size as usize];
    let checked = if check_crc {
        batch::check_framing(whole)
    } else {
        Ok(BatchHeader::parse(whole))
    };
    match checked {
        Err(_) => Scan::Bad("CRC mismatch"),
        Ok(header) if header.base_offset != expected_offset => {
            Scan::Bad("offset does not follow the previous batch")
        }
        Ok(header) if header.last_offset_delta < 0 => Scan::Bad("negative offset delta"),
        Ok(header) => Scan::Batch(header),
    }
}

/// Calls `visit` with the header of every batch of a segment, reading in
/// large chunks, and with the record of every control batch (the marker
/// it holds; None for another control record or a damaged one). Only for
/// segments whose structure was already checked.
fn scan_batches<S: Storage + ?Sized>(
    storage: &mut S,
    segment: &Segment,
    mut visit: impl FnMut(&BatchHeader, Option<ControlRecord>),
) -> io::Result<()> {
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    let mut position = 0u64;
    while position + HEADER_BYTES as u64 <= segment.size_bytes {
        let want = ((segment.size_bytes - position) as usize).min(SCAN_CHUNK_BYTES);
        read_exact_at(storage, segment.log_file, position, &mut chunk[..want])?;
        let mut at = 0usize;
        while at + HEADER_BYTES <= want {
            let header = BatchHeader::parse(&chunk[at..]);
            let mut control = None;
            if header.is_control() {
                // Markers are small; one that straddles the chunk is read alone.
                let end = at + header.size_bytes();
                control = if end <= want {
                    control_record(&chunk[at..end])
                } else {
                    let mut whole = vec![0u8; header.size_bytes().min(BATCH_BYTES_MAX)];
                    read_exact_at(storage, segment.log_file, position + at as u64, &mut whole)?;
                    control_record(&whole)
                };
            }
            visit(&header, control);
            at += header.size_bytes();
        }
        position += at as u64;
    }
    Ok(())
}

/// The marker a stored control batch holds, if it holds one and is intact.
fn control_record(batch: &[u8]) -> Option<ControlRecord> {
    match batch::parse_control_record(batch) {
        Ok(marker) => marker,
        Err(error) => {
            tracing::warn!(%error, "a control batch without a readable record; not applied to the producer state");
            None
        }
    }
}

/// Records a batch in the producer state; for a marker that aborted a
/// transaction, returns the `.txnindex` entry it adds to its segment.
fn record_producer(
    producers: &mut ProducerStates,
    header: &BatchHeader,
    control: Option<ControlRecord>,
) -> Option<AbortedTxn> {
    let completed = producers.record(header, control)?;
    completed.aborted.then(|| AbortedTxn {
        producer_id: completed.producer_id,
        first_offset: completed.first_offset,
        last_offset: completed.last_offset,
        last_stable_offset: producers.stable_offset_after(&completed),
    })
}

/// Updates a segment's in-memory indexes for a batch written at `position`.
fn index_batch(segment: &mut Segment, header: &BatchHeader, position: u64, interval_bytes: u64) {
    let new_max = header.max_timestamp > segment.max_timestamp;
    if segment.first_batch_timestamp.is_none() {
        segment.first_batch_timestamp = Some(header.max_timestamp);
    }
    if segment.bytes_since_index_entry >= interval_bytes || segment.offset_index.is_empty() {
        let relative_offset = segment.relative(header.last_offset());
        segment.offset_index.push(OffsetEntry {
            relative_offset,
            position: position as u32,
        });
        let timestamp = segment.max_timestamp.max(header.max_timestamp);
        if segment
            .time_index
            .last()
            .is_none_or(|e| timestamp > e.timestamp)
        {
            segment.time_index.push(TimeEntry {
                timestamp,
                relative_offset,
            });
        }
        segment.bytes_since_index_entry = 0;
    }
    if new_max {
        segment.max_timestamp = header.max_timestamp;
    }
    segment.bytes_since_index_entry += header.size_bytes() as u64;
    segment.next_offset = header.next_offset();
}

/// Writes index entries added since the given counts to the index files.
fn append_index_entries<S: Storage + ?Sized>(
    storage: &mut S,
    segment: &Segment,
    offset_from: usize,
    time_from: usize,
) -> io::Result<()> {
    for (n, entry) in segment.offset_index.iter().enumerate().skip(offset_from) {
        storage.write_at(
            segment.index_file,
            (n * OFFSET_ENTRY_BYTES) as u64,
            &entry.encode(),
        )?;
    }
    for (n, entry) in segment.time_index.iter().enumerate().skip(time_from) {
        storage.write_at(
            segment.time_file,
            (n * TIME_ENTRY_BYTES) as u64,
            &entry.encode(),
        )?;
    }
    Ok(())
}

/// Rewrites both index files from the in-memory indexes.
fn write_indexes<S: Storage + ?Sized>(storage: &mut S, segment: &Segment) -> io::Result<()> {
    let offsets: Vec<u8> = segment
        .offset_index
        .iter()
        .flat_map(OffsetEntry::encode)
        .collect();
    let times: Vec<u8> = segment
        .time_index
        .iter()
        .flat_map(TimeEntry::encode)
        .collect();
    storage.truncate(segment.index_file, 0)?;
    storage.write_at(segment.index_file, 0, &offsets)?;
    storage.truncate(segment.time_file, 0)?;
    storage.write_at(segment.time_file, 0, &times)
}

/// Loads a segment's indexes after a clean stop and finds its end by
/// scanning from the last index entry. Returns false when the index files are
/// missing or inconsistent, so the caller rebuilds them.
fn load_indexes<S: Storage + ?Sized>(storage: &mut S, segment: &mut Segment) -> io::Result<bool> {
    let offset_len = storage.len(segment.index_file)? as usize;
    let time_len = storage.len(segment.time_file)? as usize;
    if !offset_len.is_multiple_of(OFFSET_ENTRY_BYTES) || !time_len.is_multiple_of(TIME_ENTRY_BYTES)
    {
        return Ok(false);
    }
    let mut raw = vec![0u8; offset_len];
    read_exact_at(storage, segment.index_file, 0, &mut raw)?;
    let offsets: Vec<OffsetEntry> = raw
        .chunks_exact(OFFSET_ENTRY_BYTES)
        .map(|c| OffsetEntry::decode(c.try_into().expect("whole entries")))
        .collect();
    let mut raw = vec![0u8; time_len];
    read_exact_at(storage, segment.time_file, 0, &mut raw)?;
    let times: Vec<TimeEntry> = raw
        .chunks_exact(TIME_ENTRY_BYTES)
        .map(|c| TimeEntry::decode(c.try_into().expect("whole entries")))
        .collect();
    let ordered = offsets
        .windows(2)
        .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position)
        && times.windows(2).all(|w| {
            w[0].timestamp < w[1].timestamp && w[0].relative_offset <= w[1].relative_offset
        });
    let within = offsets
        .last()
        .is_none_or(|e| (e.position as u64) < segment.size_bytes);
    if !ordered || !within || (segment.size_bytes > 0 && offsets.is_empty()) {
        return Ok(false);
    }
    // Walk the tail from the last index entry to learn the segment's end.
    let mut position = offsets.last().map_or(0, |e| e.position as u64);
    let mut header_bytes = [0u8; HEADER_BYTES];
    let mut next_offset = segment.base_offset;
    let mut max_timestamp = times.last().map_or(-1, |e| e.timestamp);
    let mut bytes_since = 0u64;
    while position < segment.size_bytes {
        if read_exact_at(storage, segment.log_file, position, &mut header_bytes).is_err() {
            return Ok(false);
        }
        let header = BatchHeader::parse(&header_bytes);
        if header.magic != batch::MAGIC
            || header.batch_length < (HEADER_BYTES - batch::LOG_OVERHEAD) as i32
        {
            return Ok(false);
        }
        next_offset = header.next_offset();
        max_timestamp = max_timestamp.max(header.max_timestamp);
        bytes_since += header.size_bytes() as u64;
        position += header.size_bytes() as u64;
    }
    if position != segment.size_bytes {
        return Ok(false);
    }
    if segment.size_bytes > 0 {
        read_exact_at(storage, segment.log_file, 0, &mut header_bytes)?;
        segment.first_batch_timestamp = Some(BatchHeader::parse(&header_bytes).max_timestamp);
    }
    segment.offset_index = offsets;
    segment.time_index = times;
    segment.next_offset = next_offset;
    segment.max_timestamp = max_timestamp;
    segment.bytes_since_index_entry = bytes_since;
    Ok(true)
}

/// Reads `leader-epoch-checkpoint`. A read error is reported as unreadable,
/// not returned: the file is derived data, rebuilt from the log.
fn read_checkpoint<S: Storage + ?Sized>(storage: &mut S, path: &str) -> Checkpoint {
    if !storage.exists(path) {
        return Checkpoint::Missing;
    }
    let read = |storage: &mut S| -> io::Result<Result<Vec<u8>, String>> {
        let file = storage.open(path, false)?;
        let bytes = storage.len(file).and_then(|len| {
            if len > CHECKPOINT_BYTES_MAX as u64 {
                return Ok(Err(format!("{len} bytes, more than a checkpoint holds")));
            }
            let mut bytes = vec![0u8; len as usize];
            read_exact_at(storage, file, 0, &mut bytes)?;
            Ok(Ok(bytes))
        });
        storage.close(file);
        bytes
    };
    let bytes = match read(storage) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(why)) => return Checkpoint::Unreadable(why),
        Err(error) => return Checkpoint::Unreadable(format!("read failed: {error}")),
    };
    let decoded = std::str::from_utf8(&bytes)
        .map_err(|_| "not UTF-8 text".to_string())
        .and_then(EpochCache::decode);
    match decoded {
        Ok(cache) => Checkpoint::Read(cache),
        Err(why) => Checkpoint::Unreadable(why),
    }
}

#[cfg(test)]
mod tests;
