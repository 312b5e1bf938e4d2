//! Property tests of the partition log against a plain in-memory model:
//! appends, reads at any offset, rolls, retention, syncs, crashes with torn
//! unsynced tails, and clean restarts; the leader epoch cache checked
//! against the one the log's batches give. Then unit tests of the epoch
//! cache in the log (checkpoint, reopen) and of `append_replicated`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::batch::tests::build_batch;
use crate::config::BrokerConfig;
use crate::storage::MemStorage;

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: u8,
        value_bytes: u16,
        timestamp: i64,
    },
    Sync,
    Crash {
        keep_unsynced_bytes: u16,
    },
    CleanRestart,
    Read {
        offset_pick: u16,
        bytes_max: u16,
    },
    Retention {
        retention_bytes: u16,
    },
    Lookup {
        timestamp: i64,
    },
    Truncate {
        offset_pick: u16,
    },
    /// A new leader epoch: the log's own leadership again, or a term whose
    /// leader wrote nothing here.
    NewEpoch {
        assign: bool,
    },
    /// A batch of one of three producers' transactions.
    TxnAppend {
        producer: u8,
        value_bytes: u16,
    },
    /// A marker for one of them, open transaction or not.
    Marker {
        producer: u8,
        commit: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..4, 0u16..300, 0i64..1000).prop_map(|(records, value_bytes, timestamp)| Op::Append { records, value_bytes, timestamp }),
        3 => Just(Op::Sync),
        1 => (0u16..400).prop_map(|keep_unsynced_bytes| Op::Crash { keep_unsynced_bytes }),
        1 => Just(Op::CleanRestart),
        3 => (any::<u16>(), 0u16..2000).prop_map(|(offset_pick, bytes_max)| Op::Read { offset_pick, bytes_max }),
        1 => (500u16..3000).prop_map(|retention_bytes| Op::Retention { retention_bytes }),
        1 => (0i64..1100).prop_map(|timestamp| Op::Lookup { timestamp }),
        1 => any::<u16>().prop_map(|offset_pick| Op::Truncate { offset_pick }),
        1 => any::<bool>().prop_map(|assign| Op::NewEpoch { assign }),
        3 => (0u8..3, 0u16..200).prop_map(|(producer, value_bytes)| Op::TxnAppend { producer, value_bytes }),
        2 => (0u8..3, any::<bool>()).prop_map(|(producer, commit)| Op::Marker { producer, commit }),
    ]
}

fn config(retention_bytes: i64) -> TopicConfig {
    let pairs = [
        ("segment.bytes", "700".to_string()),
        ("index.interval.bytes", "150".into()),
        ("retention.bytes", retention_bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    TopicConfig::new(&BrokerConfig::defaults(), &pairs).expect("valid")
}

/// The model: every batch ever appended and not lost, by base offset.
struct Model {
    batches: BTreeMap<i64, Vec<u8>>,
    /// Batches removed by retention: a crash before the directory sync may bring them back.
    deleted: BTreeMap<i64, Vec<u8>>,
    /// Batches cut by truncation: a crash before the next sync may bring
    /// back the synced ones, where nothing newer was synced over them.
    truncated: BTreeMap<i64, Vec<u8>>,
    durable_end: i64,
    log_start: i64,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches
            .iter()
            .next_back()
            .map_or(self.log_start, |(_, b)| BatchHeader::parse(b).next_offset())
    }
}

/// The epoch cache the log's batches give: each batch's epoch assigned in
/// order, from the log start.
fn rebuilt_epochs<S: Storage + ?Sized>(log: &PartitionLog, storage: &mut S) -> EpochCache {
    let mut epochs = EpochCache::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log
            .read(storage, offset, i64::MAX, 1 << 16, true)
            .expect("read");
        for (header, _) in batch::headers_in(&bytes) {
            epochs.assign(header.partition_leader_epoch, header.base_offset);
            offset = header.next_offset();
        }
    }
    epochs.truncate_from_start(log.log_start_offset());
    epochs
}

/// The log's cache is the one its batches give, but for an epoch that
/// starts at the log end (a new leader's, or one whose records retention
/// deleted); right after open not even that.
fn check_epochs<S: Storage + ?Sized>(log: &PartitionLog, storage: &mut S, just_opened: bool) {
    let mut cut = log.epochs().clone();
    if !just_opened {
        cut.truncate_from_end(log.log_end_offset());
    }
    assert_eq!(
        cut,
        rebuilt_epochs(log, storage),
        "the epochs differ from the log's"
    );
}

fn sync(log: &mut PartitionLog, storage: &mut MemStorage) {
    let end = log.log_end_offset();
    for target in log.take_dirty() {
        storage.sync(&target);
    }
    log.mark_durable(end);
}

/// Checks that the log holds exactly the model's batches.
fn check_contents(log: &PartitionLog, storage: &mut MemStorage, model: &Model) {
    assert_eq!(log.log_start_offset(), model.log_start);
    assert_eq!(log.log_end_offset(), model.end());
    let mut offset = model.log_start;
    while offset < model.end() {
        let bytes = log.read(storage, offset, i64::MAX, 1, true).expect("read");
        let (header, range) = batch::headers_in(&bytes)
            .next()
            .expect("a batch at every offset");
        assert_eq!(header.base_offset, offset);
        assert_eq!(
            &bytes[range],
            &model.batches[&offset][..],
            "batch at {offset} differs"
        );
        offset = header.next_offset();
    }
}

fn run(ops: Vec<Op>) {
    let mut storage = MemStorage::new();
    let mut retention_bytes = -1i64;
    let (mut log, _) =
        PartitionLog::open(&mut storage, "t-0", config(retention_bytes), false).expect("open");
    sync(&mut log, &mut storage);
    let mut model = Model {
        batches: BTreeMap::new(),
        deleted: BTreeMap::new(),
        truncated: BTreeMap::new(),
        durable_end: 0,
        log_start: 0,
    };
    let mut counter = 0u8;
    let mut epoch = 0i32;
    for op in ops {
        match op {
            Op::Append {
                records,
                value_bytes,
                timestamp,
            } => {
                counter = counter.wrapping_add(1);
                let value = vec![counter; value_bytes as usize];
                let recs: Vec<_> = (0..records)
                    .map(|_| (None, Some(&value[..]), vec![], 0))
                    .collect();
                let mut batch = build_batch(timestamp, &recs);
                let appended = log.append(&mut storage, &batch, epoch, 0).expect("append");
                assert_eq!(appended.base_offset, model.end());
                assert_eq!(log.epochs().latest_epoch(), Some(epoch));
                // What the log writes: the batch with its offsets assigned.
                batch::assign_offset(&mut batch, appended.base_offset, epoch);
                model.batches.insert(appended.base_offset, batch);
            }
            Op::Sync => {
                sync(&mut log, &mut storage);
                model.durable_end = model.end();
                model.truncated.clear();
            }
            Op::Crash {
                keep_unsynced_bytes,
            } => {
                log.close(&mut storage);
                storage.crash(keep_unsynced_bytes as usize);
                let (reopened, _) =
                    PartitionLog::open(&mut storage, "t-0", config(retention_bytes), false)
                        .expect("reopen");
                log = reopened;
                let end = log.log_end_offset();
                if log.log_start_offset() < model.log_start {
                    // Unsynced retention deletions came back: they are live
                    // again (and a later truncation may replace them).
                    let start = log.log_start_offset();
                    let back: Vec<i64> = model
                        .deleted
                        .range(start..model.log_start)
                        .map(|(k, _)| *k)
                        .collect();
                    for base in back {
                        let batch = model.deleted.remove(&base).expect("listed");
                        model.batches.insert(base, batch);
                    }
                    model.log_start = start;
                }
                assert!(
                    end >= model.durable_end,
                    "lost durable data: end {end} < {}",
                    model.durable_end
                );
                // What survived beyond the durable end is a prefix of what
                // was appended, or of what a truncation cut.
                let mut offset = model.durable_end.max(log.log_start_offset());
                let mut survived = BTreeMap::new();
                while offset < end {
                    let bytes = log
                        .read(&mut storage, offset, i64::MAX, 1, true)
                        .expect("read");
                    let (header, range) = batch::headers_in(&bytes).next().expect("a batch");
                    assert_eq!(header.base_offset, offset);
                    let found = &bytes[range];
                    assert!(
                        model.batches.get(&offset).is_some_and(|b| b == found)
                            || model.truncated.get(&offset).is_some_and(|b| b == found),
                        "batch at {offset} was never written there"
                    );
                    survived.insert(offset, found.to_vec());
                    offset = header.next_offset();
                }
                model.batches.retain(|&base, _| base < model.durable_end);
                model.batches.extend(survived);
                model.truncated.clear();
                assert_eq!(model.end(), end, "a batch survived partially");
                assert_eq!(log.log_start_offset(), model.log_start);
                check_epochs(&log, &mut storage, true);
                sync(&mut log, &mut storage);
                model.durable_end = end;
                check_contents(&log, &mut storage, &model);
            }
            Op::CleanRestart => {
                sync(&mut log, &mut storage);
                for target in log.all_files() {
                    storage.sync(&target);
                }
                log.close(&mut storage);
                storage.crash(0);
                let (reopened, recovery) =
                    PartitionLog::open(&mut storage, "t-0", config(retention_bytes), true)
                        .expect("reopen");
                assert_eq!(
                    recovery,
                    Recovery::default(),
                    "a clean restart needs no repair"
                );
                log = reopened;
                check_epochs(&log, &mut storage, true);
                let file = read_file(&mut storage, "t-0/leader-epoch-checkpoint");
                if !log.epochs().is_empty() {
                    assert_eq!(
                        file.as_deref(),
                        Some(log.epochs().encode().as_bytes()),
                        "a clean start finds the checkpoint it would write"
                    );
                }
                sync(&mut log, &mut storage);
                model.durable_end = model.end();
                model.truncated.clear();
                check_contents(&log, &mut storage, &model);
            }
            Op::Read {
                offset_pick,
                bytes_max,
            } => {
                let span = (model.end() - model.log_start + 1).max(1);
                let offset = model.log_start + offset_pick as i64 % span;
                let limit = log.durable_offset();
                let bytes = log
                    .read(&mut storage, offset, limit, bytes_max as usize, true)
                    .expect("read");
                let mut expected_next = None;
                for (index, (header, range)) in batch::headers_in(&bytes).enumerate() {
                    if index == 0 {
                        assert!(header.base_offset <= offset && header.last_offset() >= offset);
                    } else {
                        assert!(
                            range.end <= bytes_max as usize,
                            "extra batches must fit bytes_max"
                        );
                    }
                    assert!(header.last_offset() < limit, "read beyond the limit");
                    assert_eq!(&bytes[range], &model.batches[&header.base_offset][..]);
                    if let Some(next) = expected_next {
                        assert_eq!(header.base_offset, next);
                    }
                    expected_next = Some(header.next_offset());
                }
                if offset < limit {
                    assert!(!bytes.is_empty(), "nothing returned for a readable offset");
                }
            }
            Op::Retention {
                retention_bytes: limit,
            } => {
                retention_bytes = limit as i64;
                log.set_config(config(retention_bytes));
                log.apply_retention(&mut storage, 0).expect("retention");
                assert!(log.log_start_offset() <= log.durable_offset().max(model.log_start));
                model.log_start = log.log_start_offset();
                let kept = model.batches.split_off(&model.log_start);
                model
                    .deleted
                    .extend(std::mem::replace(&mut model.batches, kept));
                check_contents(&log, &mut storage, &model);
                check_epochs(&log, &mut storage, false);
            }
            Op::Truncate { offset_pick } => {
                let span = (model.end() - model.log_start + 1).max(1);
                let offset = model.log_start + offset_pick as i64 % span;
                let end_before = log.log_end_offset();
                let end = log.truncate_to(&mut storage, offset).expect("truncate");
                let cut: Vec<i64> = model
                    .batches
                    .iter()
                    .filter(|(_, b)| BatchHeader::parse(b).last_offset() >= offset)
                    .map(|(&base, _)| base)
                    .collect();
                for base in cut {
                    let batch = model.batches.remove(&base).expect("listed");
                    model.truncated.entry(base).or_insert(batch);
                }
                assert_eq!(end, model.end(), "truncation ends after the batch before");
                assert!(end <= offset);
                model.durable_end = model.durable_end.min(end);
                assert!(log.durable_offset() <= end);
                check_contents(&log, &mut storage, &model);
                check_epochs(&log, &mut storage, false);
                if offset < end_before {
                    assert!(
                        log.epochs().entries().iter().all(|e| e.start_offset < end),
                        "a truncation keeps no epoch starting at or past the new end"
                    );
                }
            }
            Op::NewEpoch { assign } => {
                epoch += 1;
                if assign {
                    let end = log.log_end_offset();
                    log.assign_epoch(&mut storage, epoch).expect("assign");
                    assert_eq!(log.end_offset_for_epoch(epoch), (epoch, end));
                    assert_eq!(log.epochs().latest().map(|e| e.start_offset), Some(end));
                }
            }
            Op::TxnAppend {
                producer,
                value_bytes,
            } => {
                counter = counter.wrapping_add(1);
                let value = vec![counter; value_bytes as usize];
                let mut batch = txn_batch(producer as i64, 0, counter as i32, &value);
                let appended = log.append(&mut storage, &batch, epoch, 0).expect("append");
                assert_eq!(appended.base_offset, model.end());
                batch::assign_offset(&mut batch, appended.base_offset, epoch);
                model.batches.insert(appended.base_offset, batch);
            }
            Op::Marker { producer, commit } => {
                let marker = txn_marker(producer as i64, 0, 0, commit);
                let appended = log
                    .append_marker(&mut storage, &marker, epoch, 0)
                    .expect("marker");
                assert_eq!(appended.base_offset, model.end());
                let mut batch = batch::build_control_batch(0, producer as i64, 0, 0, commit);
                batch::assign_offset(&mut batch, appended.base_offset, epoch);
                model.batches.insert(appended.base_offset, batch);
            }
            Op::Lookup { timestamp } => {
                let limit = log.durable_offset();
                let found = log
                    .offset_for_timestamp(&mut storage, timestamp, limit)
                    .expect("lookup");
                let expected = model
                    .batches
                    .values()
                    .map(|b| BatchHeader::parse(b))
                    .filter(|h| h.last_offset() < limit && h.max_timestamp >= timestamp)
                    .map(|h| (h.base_offset, h.base_timestamp))
                    .next();
                assert_eq!(found, expected);
            }
        }
        log.invariants();
        check_txn_index(&log, &mut storage, model.log_start == 0);
        // What the log wrote last is what it holds.
        if let Some(file) = read_file(&mut storage, "t-0/leader-epoch-checkpoint") {
            assert_eq!(file, log.epochs().encode().into_bytes());
        }
    }
}

/// The aborted transactions a replay of the log's batches from its start gives.
fn replayed_aborts(log: &PartitionLog, storage: &mut MemStorage) -> Vec<AbortedTxn> {
    let mut producers = ProducerStates::default();
    let mut found = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log
            .read(storage, offset, i64::MAX, 1 << 16, true)
            .expect("read");
        for (header, range) in batch::headers_in(&bytes) {
            let control = header
                .is_control()
                .then(|| batch::parse_control_record(&bytes[range]).expect("a marker"))
                .flatten();
            found.extend(record_producer(&mut producers, &header, control));
            offset = header.next_offset();
        }
    }
    found
}

/// Each segment's `.txnindex` holds the segment's entries, each entry
/// lies in its segment; with the whole log still there (no retention
/// yet), the entries are those a replay of it gives.
fn check_txn_index(log: &PartitionLog, storage: &mut MemStorage, whole_log: bool) {
    log.producers().invariants();
    let mut held = Vec::new();
    for segment in &log.segments {
        let path = format!(
            "{}/{}",
            log.dir(),
            segment_name(segment.base_offset, TXN_INDEX_SUFFIX)
        );
        let file = read_file(storage, &path).expect("a txnindex per segment");
        let entries: Vec<u8> = segment
            .aborted_txns
            .iter()
            .flat_map(AbortedTxn::encode)
            .collect();
        assert_eq!(file, entries, "{path} holds what the log holds");
        for entry in &segment.aborted_txns {
            assert!((segment.base_offset..segment.next_offset).contains(&entry.last_offset));
        }
        held.extend(segment.aborted_txns.iter().copied());
    }
    if whole_log {
        assert_eq!(held, replayed_aborts(log, storage));
    }
}

fn read_file(storage: &mut MemStorage, path: &str) -> Option<Vec<u8>> {
    if !storage.exists(path) {
        return None;
    }
    let file = storage.open(path, false).expect("open");
    let mut bytes = vec![0u8; storage.len(file).expect("len") as usize];
    read_exact_at(storage, file, 0, &mut bytes).expect("read");
    storage.close(file);
    Some(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

/// The log patches a copy of the header, not the batch it was given, and
/// the batch on disk (offsets assigned, LogAppendTime with its new CRC)
/// passes the CRC scan of an unclean start.
#[test]
fn appended_batches_are_stamped_on_disk_and_the_given_bytes_are_untouched() {
    let mut storage = MemStorage::new();
    let pairs = [("message.timestamp.type", "LogAppendTime".to_string())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let config = TopicConfig::new(&BrokerConfig::defaults(), &pairs).expect("valid");
    let (mut log, _) =
        PartitionLog::open(&mut storage, "t-0", config.clone(), false).expect("open");
    let batch = build_batch(
        0,
        &[(None, Some(b"a"), vec![], 5), (None, Some(b"b"), vec![], 6)],
    );
    let given = batch.clone();
    log.append(&mut storage, &batch, 0, 1_000).expect("first");
    let appended = log.append(&mut storage, &batch, 3, 2_000).expect("second");
    assert_eq!(batch, given, "the caller's bytes are not written to");
    assert_eq!(
        (appended.base_offset, appended.log_append_time_ms),
        (2, 2_000)
    );
    log.close(&mut storage);
    let (log, recovery) = PartitionLog::open(&mut storage, "t-0", config, false).expect("reopen");
    assert_eq!((log.log_end_offset(), recovery.truncated_bytes), (4, 0));
    let read = log.read(&mut storage, 2, 4, 10_000, true).expect("read");
    let header = batch::check_framing(&read).expect("a valid CRC on disk");
    assert_eq!(
        (
            header.base_offset,
            header.partition_leader_epoch,
            header.max_timestamp
        ),
        (2, 3, 2_000)
    );
    assert!(header.is_log_append_time());
}

#[test]
fn a_flipped_bit_in_the_middle_cuts_the_log_there() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    for n in 0..5u8 {
        let batch = build_batch(0, &[(None, Some(&[n; 100]), vec![], 0)]);
        log.append(&mut storage, &batch, 0, 0).expect("append");
    }
    sync(&mut log, &mut storage);
    log.close(&mut storage);
    // Corrupt the third batch's value.
    let file = storage
        .open("t-0/00000000000000000000.log", false)
        .expect("exists");
    let position = 2 * 175 + 100;
    let mut byte = [0u8; 1];
    storage.read_at(file, position, &mut byte).expect("read");
    storage
        .write_at(file, position, &[byte[0] ^ 0x10])
        .expect("write");
    let (log, recovery) =
        PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("reopen");
    assert_eq!(log.log_end_offset(), 2);
    assert!(recovery.truncated_bytes > 0);
}

/// Segment files removed by hand are reported, not passed over: a first
/// segment without its `.log` leaves index files that are removed with a
/// WARN each (the log then starts at the next segment), and a partition
/// without any `.log` whose leader epoch checkpoint names batches is
/// reported gone before it starts again empty.
#[test]
fn segment_files_removed_by_hand_are_reported() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    for n in 0..5u8 {
        let batch = build_batch(0, &[(None, Some(&[n; 100]), vec![], 0)]);
        log.append(&mut storage, &batch, 3, 0).expect("append");
    }
    sync(&mut log, &mut storage);
    log.close(&mut storage);
    let logs = |storage: &mut MemStorage| -> Vec<String> {
        (storage.list_dir("t-0").expect("listed").into_iter())
            .filter(|name| name.ends_with(".log"))
            .collect()
    };
    let first = logs(&mut storage).remove(0);
    storage
        .remove_file(&format!("t-0/{first}"))
        .expect("remove");
    let (mut log, recovery) =
        PartitionLog::open(&mut storage, "t-0", config(-1), true).expect("reopen");
    assert!(log.log_start_offset() > 0);
    assert_eq!(recovery.orphan_indexes_removed, 3, "{recovery:?}");
    assert!(!recovery.log_files_gone, "{recovery:?}");
    log.close(&mut storage);

    for name in logs(&mut storage) {
        storage.remove_file(&format!("t-0/{name}")).expect("remove");
    }
    let (log, recovery) =
        PartitionLog::open(&mut storage, "t-0", config(-1), true).expect("reopen");
    assert_eq!(log.log_end_offset(), 0);
    assert!(recovery.log_files_gone, "{recovery:?}");
    assert!(recovery.orphan_indexes_removed > 0, "{recovery:?}");
    // A new empty log is not gone.
    let (_, fresh) = PartitionLog::open(&mut storage, "u-0", config(-1), false).expect("open");
    assert!(!fresh.log_files_gone);
    assert_eq!(fresh.orphan_indexes_removed, 0);
}

#[test]
fn missing_index_files_are_rebuilt_on_a_clean_start() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    for n in 0..20u8 {
        let batch = build_batch(n as i64 * 10, &[(None, Some(&[n; 100]), vec![], 0)]);
        log.append(&mut storage, &batch, 0, 0).expect("append");
    }
    log.close(&mut storage);
    storage
        .remove_file("t-0/00000000000000000000.index")
        .expect("remove");
    let (log, recovery) =
        PartitionLog::open(&mut storage, "t-0", config(-1), true).expect("reopen");
    assert_eq!(recovery.indexes_rebuilt, 1);
    assert_eq!(log.log_end_offset(), 20);
    assert!(storage.exists("t-0/00000000000000000000.index"));
    assert_eq!(
        log.offset_for_timestamp(&mut storage, 95, 20)
            .expect("lookup"),
        Some((10, 100))
    );
}

/// `MemStorage` whose next write to an offset index file fails: a full disk
/// between a batch's log write and its index write.
struct IndexWriteFails {
    inner: MemStorage,
    paths: BTreeMap<FileId, String>,
    armed: bool,
}

impl Storage for IndexWriteFails {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn exists(&mut self, path: &str) -> bool {
        self.inner.exists(path)
    }
    fn open(&mut self, path: &str, create: bool) -> io::Result<FileId> {
        let file = self.inner.open(path, create)?;
        self.paths.insert(file, path.to_string());
        Ok(file)
    }
    fn close(&mut self, file: FileId) {
        self.inner.close(file)
    }
    fn len(&mut self, file: FileId) -> io::Result<u64> {
        self.inner.len(file)
    }
    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(file, position, buf)
    }
    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        if self.armed && self.paths[&file].ends_with(".index") {
            self.armed = false;
            return Err(io::ErrorKind::StorageFull.into());
        }
        self.inner.write_at(file, position, bytes)
    }
    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.inner.truncate(file, len)
    }
    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&mut self, path: &str) -> io::Result<()> {
        self.inner.remove_dir(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
}

/// A batch whose index write failed is still in its segment; if the next
/// batch rolls the log, the next sync must still cover that segment, or a
/// crash loses a batch below the durable end (and the segments after it).
#[test]
fn a_failed_index_write_then_a_roll_loses_nothing_synced() {
    let mut storage = IndexWriteFails {
        inner: MemStorage::new(),
        paths: BTreeMap::new(),
        armed: false,
    };
    let pairs = [("segment.bytes", "150"), ("index.interval.bytes", "0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = TopicConfig::new(&BrokerConfig::defaults(), &pairs).expect("valid");
    let (mut log, _) =
        PartitionLog::open(&mut storage, "t-0", config.clone(), false).expect("open");
    let batch = |n: u8| build_batch(0, &[(None, Some(&[n][..]), vec![], 0)]);
    let sync = |log: &mut PartitionLog, storage: &mut IndexWriteFails| {
        let end = log.log_end_offset();
        for target in log.take_dirty() {
            storage.inner.sync(&target);
        }
        log.mark_durable(end);
        end
    };
    log.append(&mut storage, &batch(0), 0, 0).expect("first");
    sync(&mut log, &mut storage);
    storage.armed = true;
    assert!(
        log.append(&mut storage, &batch(1), 0, 0).is_err(),
        "the index write fails"
    );
    log.append(&mut storage, &batch(2), 0, 0)
        .expect("third, in a new segment");
    assert_eq!(log.segments.len(), 2, "the third batch rolled the log");
    assert_eq!(sync(&mut log, &mut storage), 3);
    storage.inner.crash(0);
    let (log, recovery) = PartitionLog::open(&mut storage, "t-0", config, false).expect("reopen");
    assert_eq!(
        (log.log_end_offset(), recovery.segments_removed),
        (3, 0),
        "everything below the durable end survived"
    );
}

fn topic_config(pairs: &[(&str, &str)]) -> TopicConfig {
    let pairs = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TopicConfig::new(&BrokerConfig::defaults(), &pairs).expect("valid")
}

fn one_record(n: u8, timestamp: i64) -> Vec<u8> {
    build_batch(timestamp, &[(None, Some(&[n; 40][..]), vec![], 0)])
}

/// A log whose batches span epochs 1, 2 (after an epoch that wrote
/// nothing) and 5, over several segments.
fn leader_log(storage: &mut MemStorage, dir: &str, config: TopicConfig) -> PartitionLog {
    let (mut log, _) = PartitionLog::open(storage, dir, config, false).expect("open");
    let mut n = 0u8;
    for (epoch, batches) in [(1, 4), (2, 0), (3, 3), (5, 5)] {
        log.assign_epoch(storage, epoch).expect("assign");
        for _ in 0..batches {
            n += 1;
            log.append(
                storage,
                &one_record(n, 1_000 + n as i64),
                epoch,
                5_000 + n as i64,
            )
            .expect("append");
        }
    }
    log
}

fn pairs(cache: &EpochCache) -> Vec<(i32, i64)> {
    cache
        .entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

#[test]
fn appends_and_leaders_assign_epochs_and_the_checkpoint_follows() {
    let mut storage = MemStorage::new();
    let log = leader_log(&mut storage, "t-0", config(-1));
    assert_eq!(pairs(log.epochs()), [(1, 0), (3, 4), (5, 7)]);
    assert_eq!(log.log_end_offset(), 12);
    // Kafka's answers: the latest epoch ends at the log end, an epoch that
    // wrote nothing answers the one below it.
    assert_eq!(log.end_offset_for_epoch(5), (5, 12));
    assert_eq!(log.end_offset_for_epoch(1), (1, 4));
    assert_eq!(log.end_offset_for_epoch(2), (1, 4));
    assert_eq!(log.end_offset_for_epoch(4), (3, 7));
    assert_eq!(log.end_offset_for_epoch(6), (-1, -1));
    assert_eq!(log.end_offset_for_epoch(UNDEFINED_EPOCH), (-1, -1));
    assert_eq!(log.epochs().epoch_for(6), Some(3));
    assert_eq!(
        read_file(&mut storage, "t-0/leader-epoch-checkpoint"),
        Some(b"0\n3\n1 0\n3 4\n5 7\n".to_vec())
    );
    assert!(!storage.exists("t-0/leader-epoch-checkpoint.tmp"));
}

#[test]
fn a_changed_cache_is_written_through_a_rename_and_synced_with_its_directory() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    sync(&mut log, &mut storage);
    log.append(&mut storage, &one_record(1, 0), 0, 0)
        .expect("append");
    let dirty = log.take_dirty();
    assert!(dirty.contains(&SyncTarget::File("t-0/leader-epoch-checkpoint".into())));
    assert!(dirty.contains(&SyncTarget::Dir("t-0".into())));
    // The same epoch again changes nothing, and writes nothing.
    log.append(&mut storage, &one_record(2, 0), 0, 0)
        .expect("append");
    assert!(!log
        .take_dirty()
        .contains(&SyncTarget::File("t-0/leader-epoch-checkpoint".into())));
    for target in &dirty {
        storage.sync(target);
    }
    log.assign_epoch(&mut storage, 4).expect("assign");
    let written = b"0\n2\n0 0\n4 2\n".to_vec();
    assert_eq!(
        read_file(&mut storage, "t-0/leader-epoch-checkpoint"),
        Some(written.clone())
    );
    // Before the next sync a crash leaves the old file, whole.
    let mut crashed = storage.clone();
    crashed.crash(usize::MAX);
    assert_eq!(
        read_file(&mut crashed, "t-0/leader-epoch-checkpoint"),
        Some(b"0\n1\n0 0\n".to_vec())
    );
    // After it, the new one.
    sync(&mut log, &mut storage);
    storage.crash(0);
    assert_eq!(
        read_file(&mut storage, "t-0/leader-epoch-checkpoint"),
        Some(written)
    );
}

/// How the files are left before a reopen.
#[derive(Debug, Clone, Copy)]
enum Damage {
    None,
    NoCheckpoint,
    GarbageCheckpoint,
    /// The file as it was before the latest epochs, whole.
    StaleCheckpoint,
    /// A checkpoint that claims epochs the log never had.
    WrongCheckpoint,
    LeftoverTmp,
}

#[test]
fn reopen_gives_the_cache_the_batches_give_whatever_the_checkpoint_says() {
    for clean in [true, false] {
        for damage in [
            Damage::None,
            Damage::NoCheckpoint,
            Damage::GarbageCheckpoint,
            Damage::StaleCheckpoint,
            Damage::WrongCheckpoint,
            Damage::LeftoverTmp,
        ] {
            let mut storage = MemStorage::new();
            let mut log = leader_log(&mut storage, "t-0", config(-1));
            // An epoch that wrote nothing is not kept across a restart.
            log.assign_epoch(&mut storage, 7).expect("assign");
            assert_eq!(log.epochs().latest_epoch(), Some(7));
            let path = "t-0/leader-epoch-checkpoint";
            let write = |storage: &mut MemStorage, path: &str, bytes: &[u8]| {
                let file = storage.open(path, true).expect("open");
                storage.truncate(file, 0).expect("truncate");
                storage.write_at(file, 0, bytes).expect("write");
                storage.close(file);
            };
            match damage {
                Damage::None => {}
                Damage::NoCheckpoint => storage.remove_file(path).expect("remove"),
                Damage::GarbageCheckpoint => write(&mut storage, path, b"0\n3\n1 0\n3 4\n5"),
                Damage::StaleCheckpoint => write(&mut storage, path, b"0\n1\n1 0\n"),
                Damage::WrongCheckpoint => write(&mut storage, path, b"0\n2\n0 0\n9 3\n"),
                Damage::LeftoverTmp => {
                    write(&mut storage, "t-0/leader-epoch-checkpoint.tmp", b"0\n")
                }
            }
            log.close(&mut storage);
            let (log, _) =
                PartitionLog::open(&mut storage, "t-0", config(-1), clean).expect("reopen");
            let case = format!("clean {clean}, {damage:?}");
            assert_eq!(pairs(log.epochs()), [(1, 0), (3, 4), (5, 7)], "{case}");
            assert_eq!(log.epochs(), &rebuilt_epochs(&log, &mut storage), "{case}");
            assert_eq!(
                read_file(&mut storage, path),
                Some(log.epochs().encode().into_bytes()),
                "{case}: the checkpoint is rewritten to match"
            );
            assert!(!storage.exists("t-0/leader-epoch-checkpoint.tmp"), "{case}");
        }
    }
}

#[test]
fn a_crash_that_tears_the_log_tail_cuts_the_cache_with_it() {
    for keep in [0usize, 30, 61, 70, 200, usize::MAX] {
        let mut storage = MemStorage::new();
        let mut log = leader_log(&mut storage, "t-0", config(-1));
        sync(&mut log, &mut storage);
        // Epoch 6 starts in a tail that is not synced.
        log.assign_epoch(&mut storage, 6).expect("assign");
        for n in 0..3 {
            log.append(&mut storage, &one_record(n, 0), 6, 0)
                .expect("append");
        }
        log.close(&mut storage);
        storage.crash(keep);
        let (log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("reopen");
        assert_eq!(
            log.epochs(),
            &rebuilt_epochs(&log, &mut storage),
            "keep {keep}"
        );
        let expected_latest = if log.log_end_offset() > 12 { 6 } else { 5 };
        assert_eq!(
            log.epochs().latest_epoch(),
            Some(expected_latest),
            "keep {keep}"
        );
        // The tail's batches may survive while the renamed checkpoint did
        // not: the headers win either way.
        let mut torn = storage.clone();
        torn.crash_with(|_, tail| tail.to_vec());
        let (again, _) = PartitionLog::open(&mut torn, "t-0", config(-1), false).expect("reopen");
        assert_eq!(again.epochs(), &rebuilt_epochs(&again, &mut torn));
    }
}

#[test]
fn truncation_and_retention_cut_the_cache_and_rewrite_the_checkpoint() {
    let mut storage = MemStorage::new();
    let small =
        |retention: &str| topic_config(&[("segment.bytes", "250"), ("retention.bytes", retention)]);
    let mut log = leader_log(&mut storage, "t-0", small("-1"));
    assert!(log.segment_count() > 2, "small segments: several of them");
    assert_eq!(log.truncate_to(&mut storage, 8).expect("truncate"), 8);
    assert_eq!(pairs(log.epochs()), [(1, 0), (3, 4), (5, 7)]);
    assert_eq!(log.truncate_to(&mut storage, 7).expect("truncate"), 7);
    assert_eq!(pairs(log.epochs()), [(1, 0), (3, 4)]);
    assert_eq!(log.end_offset_for_epoch(3), (3, 7));
    assert_eq!(
        read_file(&mut storage, "t-0/leader-epoch-checkpoint"),
        Some(b"0\n2\n1 0\n3 4\n".to_vec())
    );
    sync(&mut log, &mut storage);
    log.set_config(small("300"));
    let deleted = log.apply_retention(&mut storage, 0).expect("retention");
    assert!(deleted > 0);
    let start = log.log_start_offset();
    assert!(start > 0);
    let first = log.epochs().entries()[0];
    assert_eq!(
        first.start_offset, start,
        "the first epoch now starts at the log start"
    );
    assert_eq!(log.epochs(), &rebuilt_epochs(&log, &mut storage));
    assert_eq!(
        read_file(&mut storage, "t-0/leader-epoch-checkpoint"),
        Some(log.epochs().encode().into_bytes())
    );
    log.truncate_to(&mut storage, start).expect("truncate");
    assert!(log.epochs().is_empty());
    assert_eq!(log.end_offset_for_epoch(3), (-1, -1));
}

/// Copies `leader` to `follower` the way fetches would: from the
/// follower's end, `bytes_max` at a time, answers that stop mid-batch
/// included.
fn replicate(
    leader: &PartitionLog,
    follower: &mut PartitionLog,
    storage: &mut MemStorage,
    bytes_max: usize,
) {
    let mut rounds = 0;
    while follower.log_end_offset() < leader.log_end_offset() {
        rounds += 1;
        assert!(rounds < 1000, "replication makes progress");
        let from = follower.log_end_offset();
        let whole = leader
            .read(storage, from, i64::MAX, bytes_max, true)
            .expect("read");
        // A fetch answer cut at `bytes_max`, as Kafka may send it.
        let mut answer = whole.to_vec();
        let more = leader
            .read(storage, from, i64::MAX, bytes_max + 100, true)
            .expect("read");
        answer.extend_from_slice(&more[whole.len()..more.len().min(whole.len() + 50)]);
        let end = follower
            .append_replicated(storage, &answer)
            .expect("replicated");
        assert_eq!(end, follower.log_end_offset());
        assert!(end > from);
    }
}

#[test]
fn replicated_batches_are_kept_byte_for_byte_with_their_epochs() {
    let mut storage = MemStorage::new();
    let appended_time = topic_config(&[
        ("segment.bytes", "400"),
        ("index.interval.bytes", "150"),
        ("message.timestamp.type", "LogAppendTime"),
    ]);
    let leader = leader_log(&mut storage, "t-0", appended_time.clone());
    for bytes_max in [1, 150, 10_000] {
        let dir = format!("copy-{bytes_max}");
        let (mut follower, _) =
            PartitionLog::open(&mut storage, &dir, appended_time.clone(), false).expect("open");
        replicate(&leader, &mut follower, &mut storage, bytes_max);
        let all = |log: &PartitionLog, storage: &mut MemStorage| {
            let mut bytes = Vec::new();
            let mut offset = 0;
            while offset < log.log_end_offset() {
                let read = log
                    .read(storage, offset, i64::MAX, 1 << 20, true)
                    .expect("read");
                offset = batch::headers_in(&read)
                    .last()
                    .expect("a batch")
                    .0
                    .next_offset();
                bytes.extend_from_slice(&read);
            }
            bytes
        };
        assert_eq!(all(&follower, &mut storage), all(&leader, &mut storage));
        assert_eq!(follower.epochs(), leader.epochs());
        assert!(follower.segment_count() > 1, "the follower rolled");
        assert_eq!(
            follower
                .offset_for_timestamp(&mut storage, 5_005, 12)
                .expect("lookup"),
            leader
                .offset_for_timestamp(&mut storage, 5_005, 12)
                .expect("lookup"),
            "indexed alike, on the leader's append times"
        );
        assert_eq!(
            read_file(&mut storage, &format!("{dir}/leader-epoch-checkpoint")),
            read_file(&mut storage, "t-0/leader-epoch-checkpoint")
        );
        // The follower's files pass an unclean start's full scan.
        follower.close(&mut storage);
        let (reopened, recovery) =
            PartitionLog::open(&mut storage, &dir, appended_time.clone(), false).expect("reopen");
        assert_eq!(recovery.truncated_bytes, 0);
        assert_eq!(reopened.epochs(), leader.epochs());
    }
}

#[test]
fn replicated_batches_out_of_place_or_damaged_are_refused_whole() {
    let mut storage = MemStorage::new();
    let leader = leader_log(&mut storage, "t-0", config(-1));
    let from = |offset: i64, storage: &mut MemStorage| {
        leader
            .read(storage, offset, i64::MAX, 1 << 20, true)
            .expect("read")
            .to_vec()
    };
    let (mut follower, _) =
        PartitionLog::open(&mut storage, "f-0", config(-1), false).expect("open");
    let first_two = {
        let bytes = from(0, &mut storage);
        let second_end = batch::headers_in(&bytes).nth(1).expect("two").1.end;
        bytes[..second_end].to_vec()
    };
    let refused = |follower: &mut PartitionLog, storage: &mut MemStorage, bytes: &[u8]| {
        let end = follower.log_end_offset();
        let error = follower
            .append_replicated(storage, bytes)
            .expect_err("refused");
        assert_eq!(follower.log_end_offset(), end, "nothing appended");
        error
    };
    // Not where the log ends.
    let later = from(2, &mut storage);
    assert!(matches!(
        refused(&mut follower, &mut storage, &later),
        ReplicaAppendError::OutOfOrder {
            expected: 0,
            got: 2
        }
    ));
    // A flipped bit in the second batch refuses the first too.
    let mut flipped = first_two.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    assert!(matches!(
        refused(&mut follower, &mut storage, &flipped),
        ReplicaAppendError::Corrupt(_)
    ));
    // An old message format, a length below a header's.
    let mut old_magic = first_two.clone();
    old_magic[batch::MAGIC_OFFSET] = 1;
    assert!(matches!(
        refused(&mut follower, &mut storage, &old_magic),
        ReplicaAppendError::Corrupt(_)
    ));
    let mut short = first_two.clone();
    short[batch::LENGTH_OFFSET..batch::LOG_OVERHEAD].copy_from_slice(&3i32.to_be_bytes());
    assert!(matches!(
        refused(&mut follower, &mut storage, &short),
        ReplicaAppendError::Corrupt(_)
    ));
    // Nothing whole: nothing appended, no error.
    for cut in [0, 5, 12, 61, first_two.len() / 2 - 1] {
        assert_eq!(
            follower
                .append_replicated(&mut storage, &first_two[..cut])
                .expect("partial"),
            0
        );
    }
    assert_eq!(
        follower
            .append_replicated(&mut storage, &first_two)
            .expect("whole"),
        2
    );
    assert!(follower
        .take_dirty()
        .contains(&SyncTarget::File("f-0/leader-epoch-checkpoint".into())));
    // Records of an earlier epoch after later ones: the logs parted.
    follower.truncate_to(&mut storage, 0).expect("truncate");
    let mut epoch_five = one_record(9, 0);
    batch::assign_offset(&mut epoch_five, 0, 5);
    follower
        .append_replicated(&mut storage, &epoch_five)
        .expect("epoch 5");
    let mut epoch_three = one_record(9, 0);
    batch::assign_offset(&mut epoch_three, 1, 3);
    assert!(matches!(
        refused(&mut follower, &mut storage, &epoch_three),
        ReplicaAppendError::EpochBelowLatest { latest: 5, got: 3 }
    ));
    // Epochs that go back inside one answer, each of them at least the
    // log's: no leader's log holds them, whatever this one does.
    let mut epoch_six = one_record(9, 0);
    batch::assign_offset(&mut epoch_six, 1, 6);
    let mut epoch_five_again = one_record(9, 0);
    batch::assign_offset(&mut epoch_five_again, 2, 5);
    assert!(matches!(
        refused(
            &mut follower,
            &mut storage,
            &[epoch_six, epoch_five_again].concat()
        ),
        ReplicaAppendError::Corrupt(_)
    ));
}

/// The bytes of `log` from its start, read as a fetch would.
fn all_bytes(log: &PartitionLog, storage: &mut MemStorage) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log
            .read(storage, offset, i64::MAX, 1 << 20, true)
            .expect("read");
        offset = batch::headers_in(&read)
            .last()
            .expect("a batch")
            .0
            .next_offset();
        bytes.extend_from_slice(&read);
    }
    bytes
}

/// One fetch of `follower` from `leader`, which leads in `leading_epoch`,
/// decided as the broker decides it (`read_for_follower` on the leader,
/// `follower_answer` on the follower): a divergence the follower cuts its
/// log to, or the leader's batches from the follower's end, appended, or
/// refused for an older epoch than the follower's last records, which
/// the follower then cuts (the broker cuts only above the high watermark
/// it knows, which a log alone has no notion of). Returns whether the
/// follower cut its log.
fn fetch_once(
    leader: &PartitionLog,
    leading_epoch: i32,
    follower: &mut PartitionLog,
    storage: &mut MemStorage,
) -> bool {
    let fetch_offset = follower.log_end_offset();
    let last_fetched_epoch = follower.epochs().latest_epoch().unwrap_or(UNDEFINED_EPOCH);
    if let Some((epoch, end_offset)) =
        leader.divergence(last_fetched_epoch, fetch_offset, leading_epoch)
    {
        assert!(epoch >= 0 && end_offset >= 0, "a divergence is placed");
        let target = follower.diverged_end(epoch, end_offset);
        follower.truncate_to(storage, target).expect("truncate");
        return true;
    }
    let records = leader
        .read(storage, fetch_offset, i64::MAX, 1 << 20, true)
        .expect("read");
    match follower.append_replicated(storage, &records) {
        Ok(_) => false,
        Err(ReplicaAppendError::EpochBelowLatest { latest, got }) => {
            let cut = follower.start_of_epochs_after(got);
            assert!(cut.is_some(), "records of epoch {latest}, after {got}");
            follower
                .truncate_to(storage, cut.expect("found"))
                .expect("truncate");
            true
        }
        Err(error) => panic!("the follower refused its leader's batches: {error}"),
    }
}

/// A crash leaves the last batch of a follower with its leader epoch
/// raised: the field lies outside the batch CRC, so recovery keeps the
/// batch, and the follower's epoch cache runs ahead of its leader's.
/// Fetching from the leader brings the follower back to the leader's bytes
/// and epochs, by a divergence the leader answers or by the follower's
/// own cut when the leader's older batches follow. An epoch the leader has
/// from later on, or one after all of the leader's, used to leave the
/// follower refused, or answered nothing, for ever.
#[test]
fn a_follower_whose_epochs_run_ahead_of_its_leaders_cuts_them_and_converges() {
    let mut storage = MemStorage::new();
    // Epoch 1 at 0..4, epoch 3 at 4..7, epoch 5, the leader's own, from 7.
    let leader = leader_log(&mut storage, "t-0", config(-1));
    assert_eq!(pairs(leader.epochs()), [(1, 0), (3, 4), (5, 7)]);
    // The last batch the follower got, at offset 5, is of epoch 3.
    let position = leader
        .read(&mut storage, 0, 5, 1 << 20, true)
        .expect("read")
        .len() as u64
        + batch::PARTITION_LEADER_EPOCH_OFFSET as u64;
    for damaged in [
        5i32,        // the leader's own epoch, which starts there at 7
        4,           // between the leader's epochs
        7,           // after every epoch of the leader
        3 | 1 << 20, // far after
    ] {
        let dir = format!("f-{damaged}");
        let (mut follower, _) =
            PartitionLog::open(&mut storage, &dir, config(-1), false).expect("open");
        let first_six = leader
            .read(&mut storage, 0, 6, 1 << 20, true)
            .expect("read");
        follower
            .append_replicated(&mut storage, &first_six)
            .expect("replicated");
        follower.close(&mut storage);
        let segment = format!("{dir}/00000000000000000000.log");
        let file = storage.open(&segment, false).expect("exists");
        storage
            .write_at(file, position, &damaged.to_be_bytes())
            .expect("write");
        storage.close(file);
        let (mut follower, recovery) =
            PartitionLog::open(&mut storage, &dir, config(-1), false).expect("reopen");
        assert_eq!(recovery.truncated_bytes, 0, "{damaged}: the CRC passes");
        assert_eq!(follower.log_end_offset(), 6);
        assert_eq!(pairs(follower.epochs()), [(1, 0), (3, 4), (damaged, 5)]);
        // The leader places the damaged epoch when it lacks it: below it,
        // epoch 3 ends at 7; above all, its own ends at its log end. Its own
        // epoch is on its log up to there: only its batches tell.
        let placed = match damaged {
            5 => None,
            4 => Some((3, 7)),
            _ => Some((5, 12)),
        };
        assert_eq!(leader.divergence(damaged, 6, 5), placed, "{damaged}");
        let mut cuts = 0;
        for _ in 0..10 {
            if follower.log_end_offset() == leader.log_end_offset() {
                break;
            }
            cuts += fetch_once(&leader, 5, &mut follower, &mut storage) as usize;
        }
        assert_eq!(
            all_bytes(&follower, &mut storage),
            all_bytes(&leader, &mut storage),
            "{damaged}: the follower holds the leader's batches"
        );
        assert_eq!(follower.epochs(), leader.epochs(), "{damaged}");
        assert_eq!(cuts, 1, "{damaged}: one cut, to offset 5");
    }
}

/// A leader of epoch 7 that wrote nothing becomes a follower of a leader
/// whose log holds epoch 6 records past its end: as in Kafka, the empty
/// epoch gives way.
#[test]
fn an_epoch_that_wrote_nothing_gives_way_to_replicated_records() {
    let mut storage = MemStorage::new();
    let (mut follower, _) =
        PartitionLog::open(&mut storage, "f-0", config(-1), false).expect("open");
    follower
        .append(&mut storage, &one_record(1, 0), 5, 0)
        .expect("append");
    follower.assign_epoch(&mut storage, 7).expect("assign");
    assert_eq!(pairs(follower.epochs()), [(5, 0), (7, 1)]);
    let mut epoch_six = one_record(2, 0);
    batch::assign_offset(&mut epoch_six, 1, 6);
    assert_eq!(
        follower
            .append_replicated(&mut storage, &epoch_six)
            .expect("accepted"),
        2
    );
    assert_eq!(pairs(follower.epochs()), [(5, 0), (6, 1)]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Whatever bytes come, append_replicated answers: appended (a prefix
    /// of whole, valid batches) or refused, never a panic, and the log
    /// stays whole.
    #[test]
    fn append_replicated_never_panics(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
        cut in any::<u16>(),
        random in proptest::collection::vec(any::<u8>(), 0..300),
        use_random in any::<bool>(),
    ) {
        let mut storage = MemStorage::new();
        let (mut source, _) =
            PartitionLog::open(&mut storage, "s-0", config(-1), false).expect("open");
        for (n, epoch) in [(1u8, 0), (2, 0), (3, 2)] {
            source.append(&mut storage, &one_record(n, 0), epoch, 0).expect("append");
        }
        let mut bytes = source.read(&mut storage, 0, i64::MAX, 1 << 20, true).expect("read").to_vec();
        for (at, byte) in edits {
            let at = at as usize % bytes.len();
            bytes[at] = byte;
        }
        bytes.truncate(cut as usize % (bytes.len() + 1));
        let input = if use_random { random } else { bytes };
        let (mut follower, _) =
            PartitionLog::open(&mut storage, "f-0", config(-1), false).expect("open");
        match follower.append_replicated(&mut storage, &input) {
            Ok(end) => {
                prop_assert_eq!(end, follower.log_end_offset());
                let stored = follower.read(&mut storage, 0, i64::MAX, 1 << 20, true).expect("read");
                prop_assert_eq!(&stored[..], &input[..stored.len()]);
            }
            Err(ReplicaAppendError::Io(error)) => panic!("no storage error here: {error}"),
            Err(_) => prop_assert_eq!(follower.log_end_offset(), 0),
        }
        follower.invariants();
        check_epochs(&follower, &mut storage, false);
    }
}

/// A follower whose log ends before its leader's log start empties it and
/// starts again there: no segment, epoch or producer of the old log is
/// left, the next replicated batch lands at the new start, and a restart
/// finds the log where it was left.
#[test]
fn a_log_emptied_to_start_at_a_later_offset_continues_from_there() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "f-0", config(-1), false).expect("open");
    for n in 0..3u8 {
        let mut batch = one_record(n, 0);
        batch::assign_offset(&mut batch, n as i64, 2);
        log.append_replicated(&mut storage, &batch).expect("append");
    }
    sync(&mut log, &mut storage);
    assert_eq!(log.epochs().latest_epoch(), Some(2));
    log.truncate_fully_and_start_at(&mut storage, 50)
        .expect("restart");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (50, 50));
    assert!(log.epochs().is_empty());
    assert!(!storage.exists("f-0/00000000000000000000.log"));
    assert!(storage.exists("f-0/00000000000000000050.log"));
    let mut next = one_record(7, 0);
    batch::assign_offset(&mut next, 50, 4);
    assert_eq!(
        log.append_replicated(&mut storage, &next).expect("append"),
        51
    );
    assert_eq!(log.end_offset_for_epoch(4), (4, 51));
    sync(&mut log, &mut storage);
    log.close(&mut storage);
    let (log, _) = PartitionLog::open(&mut storage, "f-0", config(-1), true).expect("reopen");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (50, 51));
    assert_eq!(log.epochs().latest_epoch(), Some(4));
}

// Transactions: markers, the last stable offset and `.txnindex`.

/// A transactional batch of one record, as a producer in a transaction
/// sends it.
fn txn_batch(producer_id: i64, epoch: i16, sequence: i32, value: &[u8]) -> Vec<u8> {
    use crate::batch::builder::{BatchBuilder, Compression, ProducerIdentity, RecordData};
    let none: &[(&[u8], Option<&[u8]>)] = &[];
    let mut builder = BatchBuilder::new();
    builder.append(&RecordData {
        timestamp_ms: 1_000,
        key: None,
        value: Some(value),
        headers: none,
    });
    let identity = ProducerIdentity {
        producer_id,
        producer_epoch: epoch,
        base_sequence: sequence,
    };
    let built = builder.build(Compression::None, identity).expect("built");
    let mut bytes = built.to_vec();
    bytes[batch::ATTRIBUTES_OFFSET..batch::LAST_OFFSET_DELTA_OFFSET]
        .copy_from_slice(&batch::ATTRIBUTE_TRANSACTIONAL.to_be_bytes());
    batch::write_crc(&mut bytes);
    bytes
}

fn txn_marker(
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    commit: bool,
) -> TxnMarker {
    TxnMarker {
        producer_id,
        producer_epoch,
        coordinator_epoch,
        commit,
    }
}

fn txn_index_bytes(storage: &mut MemStorage, dir: &str, base: i64) -> Vec<u8> {
    read_file(
        storage,
        &format!("{dir}/{}", segment_name(base, TXN_INDEX_SUFFIX)),
    )
    .expect("a txnindex per segment")
}

fn encoded(entries: &[AbortedTxn]) -> Vec<u8> {
    entries.iter().flat_map(AbortedTxn::encode).collect()
}

#[test]
fn markers_close_transactions_and_the_lso_follows_them_and_the_hw() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    log.append(&mut storage, &one_record(0, 0), 0, 0)
        .expect("plain");
    log.append(&mut storage, &txn_batch(1, 0, 0, b"a"), 0, 0)
        .expect("pid 1 at 1");
    log.append(&mut storage, &txn_batch(2, 0, 0, b"b"), 0, 0)
        .expect("pid 2 at 2");
    log.append(&mut storage, &txn_batch(1, 0, 1, b"c"), 0, 0)
        .expect("pid 1 at 3");
    assert_eq!(log.last_stable_offset(1), 1);
    assert_eq!(log.last_stable_offset(4), 1);
    let commit = log
        .append_marker(&mut storage, &txn_marker(1, 0, 0, true), 0, 7)
        .expect("commit");
    assert_eq!((commit.base_offset, commit.last_offset), (4, 4));
    assert_eq!(
        log.last_stable_offset(4),
        1,
        "the commit is not under the HW yet"
    );
    assert_eq!(log.last_stable_offset(5), 2, "pid 2 is still open");
    assert!(
        !log.take_dirty()
            .iter()
            .any(|t| matches!(t, SyncTarget::File(p) if p.ends_with(".txnindex"))),
        "a commit adds no index entry"
    );
    let abort = log
        .append_marker(&mut storage, &txn_marker(2, 0, 0, false), 0, 8)
        .expect("abort");
    assert_eq!(abort.base_offset, 5);
    assert_eq!(log.last_stable_offset(5), 2);
    assert_eq!(log.last_stable_offset(6), 6);
    // The entry is in the file, in Kafka's layout, and in the next sync
    // with the marker's segment.
    let entry = AbortedTxn {
        producer_id: 2,
        first_offset: 2,
        last_offset: 5,
        last_stable_offset: 6,
    };
    assert_eq!(txn_index_bytes(&mut storage, "t-0", 0), encoded(&[entry]));
    let dirty = log.take_dirty();
    for suffix in [LOG_SUFFIX, TXN_INDEX_SUFFIX] {
        let path = format!("t-0/{}", segment_name(0, suffix));
        assert!(dirty.contains(&SyncTarget::File(path)), "{suffix}");
    }
    // The marker's stored batch is Kafka's, stamped with offset and epoch.
    let stored = log.read(&mut storage, 5, 6, 1 << 10, true).expect("read");
    let mut expected = batch::build_control_batch(8, 2, 0, 0, false);
    batch::assign_offset(&mut expected, 5, 0);
    assert_eq!(&stored[..], &expected[..]);
    // Markers again: no open transaction, only epochs; the LSO stays.
    log.append_marker(&mut storage, &txn_marker(2, 0, 0, false), 0, 9)
        .expect("resent");
    assert_eq!(log.last_stable_offset(7), 7);
    assert_eq!(
        txn_index_bytes(&mut storage, "t-0", 0).len(),
        ABORTED_TXN_BYTES
    );
    let end = log.log_end_offset();
    assert_eq!(log.last_stable_offset(4), 1);
    log.forget_completed_txns(5);
    assert_eq!(
        log.last_stable_offset(4),
        2,
        "the commit under HW 5 is forgotten"
    );
    // A producer fenced by a bumped epoch, and a coordinator by a newer one.
    log.append_marker(&mut storage, &txn_marker(1, 3, 5, false), 0, 9)
        .expect("fence");
    assert!(matches!(
        log.append_marker(&mut storage, &txn_marker(1, 2, 5, true), 0, 9),
        Err(MarkerAppendError::Refused(MarkerError::StaleEpoch))
    ));
    assert!(matches!(
        log.append_marker(&mut storage, &txn_marker(1, 3, 4, true), 0, 9),
        Err(MarkerAppendError::Refused(MarkerError::CoordinatorFenced))
    ));
    assert_eq!(
        log.log_end_offset(),
        end + 1,
        "refused markers write nothing"
    );
    assert_eq!(
        log.producers()
            .check(&BatchHeader::parse(&txn_batch(1, 2, 2, b"late"))),
        Err(crate::producers::SequenceError::StaleEpoch),
        "the fencing marker fenced the old epoch's batches"
    );
}

/// The aborted transactions of a log with several segments, for every
/// fetch range, against the plain rule: every entry whose marker is at or
/// after the fetch offset and whose first offset is below the bound.
#[test]
fn aborted_transactions_are_exactly_the_aborts_overlapping_a_range() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    let mut sequences = BTreeMap::new();
    let mut all = Vec::new();
    // Four producers interleave; each transaction spans a few batches.
    let plan: &[(i64, Option<bool>)] = &[
        (1, None),
        (2, None),
        (1, None),
        (3, None),
        (2, Some(false)),
        (1, None),
        (4, None),
        (1, Some(false)),
        (3, None),
        (4, Some(true)),
        (3, Some(false)),
        (2, None),
        (2, None),
        (1, None),
        (2, Some(false)),
        (1, Some(true)),
        (4, None),
        (4, Some(false)),
    ];
    for &(producer_id, end) in plan {
        match end {
            None => {
                let sequence = sequences.entry(producer_id).or_insert(0);
                let batch = txn_batch(producer_id, 0, *sequence, &[7u8; 120]);
                *sequence += 1;
                log.append(&mut storage, &batch, 0, 0).expect("append");
            }
            Some(commit) => {
                let at = log
                    .append_marker(&mut storage, &txn_marker(producer_id, 0, 0, commit), 0, 0)
                    .expect("marker");
                if !commit {
                    let entry = log
                        .aborted_txns(at.base_offset, at.base_offset + 1)
                        .into_iter()
                        .find(|e| e.last_offset == at.base_offset)
                        .expect("an entry per abort");
                    all.push(entry);
                }
            }
        }
    }
    assert!(log.segment_count() >= 3, "{} segments", log.segment_count());
    assert_eq!(all.len(), 5);
    let end = log.log_end_offset();
    for fetch in 0..=end {
        for bound in fetch..=end + 1 {
            let expected: Vec<AbortedTxn> = all
                .iter()
                .filter(|e| e.last_offset >= fetch && e.first_offset < bound)
                .copied()
                .collect();
            assert_eq!(
                log.aborted_txns(fetch, bound),
                expected,
                "fetch {fetch}, bound {bound}"
            );
        }
    }
    // Each segment's file holds the entries of its own markers.
    let mut from_files = Vec::new();
    for base in log
        .segments
        .iter()
        .map(|s| s.base_offset)
        .collect::<Vec<_>>()
    {
        let bytes = txn_index_bytes(&mut storage, "t-0", base);
        for chunk in bytes.chunks_exact(ABORTED_TXN_BYTES) {
            let entry = AbortedTxn::decode(chunk.try_into().expect("whole")).expect("v0");
            let segment = log
                .segments
                .iter()
                .find(|s| s.base_offset == base)
                .expect("held");
            assert!((segment.base_offset..segment.next_offset).contains(&entry.last_offset));
            from_files.push(entry);
        }
    }
    assert_eq!(from_files, all);
}

/// A log with a synced abort, then an unsynced transaction and abort; the
/// crash keeps or loses the tails of the log and of the index apart. The
/// reopened index holds exactly the entries of the markers that survived,
/// whatever survived of its own file, and the producer state agrees.
#[test]
fn recovery_rebuilds_the_txn_index_of_a_torn_tail() {
    let cases: [(&str, usize, usize); 4] = [
        ("both tails kept", usize::MAX, usize::MAX),
        (
            "log torn inside the marker, index entry kept",
            100,
            usize::MAX,
        ),
        ("log kept, index entry lost", usize::MAX, 0),
        ("index entry torn", usize::MAX, 20),
    ];
    for (case, log_keep, index_keep) in cases {
        let mut storage = MemStorage::new();
        let (mut log, _) =
            PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
        log.append(&mut storage, &txn_batch(1, 0, 0, b"a"), 0, 0)
            .expect("append");
        log.append_marker(&mut storage, &txn_marker(1, 0, 0, false), 0, 0)
            .expect("abort");
        sync(&mut log, &mut storage);
        let synced = txn_index_bytes(&mut storage, "t-0", 0);
        assert_eq!(synced.len(), ABORTED_TXN_BYTES);
        log.append(&mut storage, &txn_batch(2, 0, 0, b"b"), 0, 0)
            .expect("append");
        log.append(&mut storage, &txn_batch(2, 0, 1, &[9u8; 60]), 0, 0)
            .expect("append");
        let marker = log
            .append_marker(&mut storage, &txn_marker(2, 0, 0, false), 0, 0)
            .expect("abort");
        drop(log);
        storage.crash_with(|path, tail| {
            let keep = if path.ends_with(".txnindex") {
                index_keep
            } else if path.ends_with(".log") {
                log_keep
            } else {
                0
            };
            tail[..keep.min(tail.len())].to_vec()
        });
        let (log, recovery) =
            PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("reopen");
        let marker_survived = log.log_end_offset() > marker.base_offset;
        assert_eq!(marker_survived, log_keep == usize::MAX, "{case}");
        let mut expected = vec![AbortedTxn {
            producer_id: 1,
            first_offset: 0,
            last_offset: 1,
            last_stable_offset: 2,
        }];
        if marker_survived {
            expected.push(AbortedTxn {
                producer_id: 2,
                first_offset: 2,
                last_offset: marker.base_offset,
                last_stable_offset: marker.base_offset + 1,
            });
            assert_eq!(
                log.last_stable_offset(log.log_end_offset()),
                log.log_end_offset()
            );
        } else {
            assert!(recovery.truncated_bytes > 0, "{case}");
            assert!(log.log_end_offset() <= marker.base_offset);
            if log.log_end_offset() > 2 {
                assert_eq!(
                    log.last_stable_offset(log.log_end_offset()),
                    2,
                    "{case}: open again"
                );
            }
        }
        assert_eq!(
            txn_index_bytes(&mut storage, "t-0", 0),
            encoded(&expected),
            "{case}"
        );
        assert_eq!(
            log.aborted_txns(0, log.log_end_offset()),
            expected,
            "{case}"
        );
        log.producers().invariants();
        // What the open rewrote joins its first sync, and a clean reopen
        // finds the same index.
        let mut log = log;
        sync(&mut log, &mut storage);
        storage.crash(0);
        assert_eq!(
            txn_index_bytes(&mut storage, "t-0", 0),
            encoded(&expected),
            "{case}"
        );
        let (log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), true).expect("reopen");
        assert_eq!(
            log.aborted_txns(0, log.log_end_offset()),
            expected,
            "{case}"
        );
        assert_eq!(
            txn_index_bytes(&mut storage, "t-0", 0),
            encoded(&expected),
            "{case}"
        );
    }
}

#[test]
fn truncation_reopens_cut_transactions_and_drops_their_index_entries() {
    let mut storage = MemStorage::new();
    let small = topic_config(&[("segment.bytes", "300")]);
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", small, false).expect("open");
    log.append(&mut storage, &txn_batch(1, 0, 0, &[1u8; 100]), 0, 0)
        .expect("append");
    log.append(&mut storage, &txn_batch(2, 0, 0, &[2u8; 100]), 0, 0)
        .expect("append");
    log.append_marker(&mut storage, &txn_marker(1, 0, 0, false), 0, 0)
        .expect("abort at 2");
    log.append(&mut storage, &txn_batch(3, 0, 0, &[3u8; 100]), 0, 0)
        .expect("append");
    log.append(&mut storage, &txn_batch(3, 0, 1, &[3u8; 100]), 0, 0)
        .expect("append");
    log.append_marker(&mut storage, &txn_marker(3, 0, 0, false), 0, 0)
        .expect("abort at 5");
    assert!(log.segment_count() >= 2);
    let last_base = log.segments.last().expect("a segment").base_offset;
    assert!(
        last_base > 2 && last_base <= 5,
        "the second abort is in a later segment"
    );
    assert_eq!(log.aborted_txns(0, 6).len(), 2);
    assert_eq!(log.last_stable_offset(6), 1, "pid 2 is open");
    log.truncate_to(&mut storage, 4).expect("truncate");
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.producers().open_txn(3), Some(3), "its marker is gone");
    assert_eq!(
        log.aborted_txns(0, 4),
        vec![AbortedTxn {
            producer_id: 1,
            first_offset: 0,
            last_offset: 2,
            last_stable_offset: 1,
        }]
    );
    log.truncate_to(&mut storage, 2).expect("truncate");
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.producers().open_txn(1), Some(0), "the abort is cut");
    assert_eq!(log.aborted_txns(0, 2), vec![]);
    assert_eq!(log.last_stable_offset(2), 0);
    for segment in &log.segments {
        assert_eq!(
            txn_index_bytes(&mut storage, "t-0", segment.base_offset),
            Vec::<u8>::new()
        );
    }
    let gone = format!("t-0/{}", segment_name(last_base, TXN_INDEX_SUFFIX));
    assert!(
        !storage.exists(&gone),
        "a removed segment's index goes with it"
    );
    log.producers().invariants();
}

/// A follower gets markers byte for byte and ends with the leader's
/// producer state, last stable offset and index.
#[test]
fn replicated_markers_update_the_followers_state_and_index() {
    let mut storage = MemStorage::new();
    let (mut leader, _) = PartitionLog::open(&mut storage, "l-0", config(-1), false).expect("open");
    let (mut follower, _) =
        PartitionLog::open(&mut storage, "f-0", config(-1), false).expect("open");
    leader
        .append(&mut storage, &txn_batch(1, 0, 0, b"a"), 3, 0)
        .expect("append");
    leader
        .append(&mut storage, &txn_batch(2, 0, 0, b"b"), 3, 0)
        .expect("append");
    leader
        .append_marker(&mut storage, &txn_marker(1, 0, 4, false), 3, 0)
        .expect("abort");
    replicate(&leader, &mut follower, &mut storage, 1 << 10);
    assert_eq!(follower.last_stable_offset(3), 1);
    assert_eq!(follower.aborted_txns(0, 3), leader.aborted_txns(0, 3));
    assert_eq!(
        txn_index_bytes(&mut storage, "f-0", 0),
        txn_index_bytes(&mut storage, "l-0", 0)
    );
    let views: Vec<_> = follower.producers().views().collect();
    assert_eq!(views, leader.producers().views().collect::<Vec<_>>());
    assert_eq!(views[0].coordinator_epoch, 4);
    assert!(matches!(
        follower.append_marker(&mut storage, &txn_marker(1, 0, 3, true), 3, 0),
        Err(MarkerAppendError::Refused(MarkerError::CoordinatorFenced))
    ));
}

#[test]
fn retention_deletes_a_segments_txn_index_with_it() {
    let mut storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut storage, "t-0", config(-1), false).expect("open");
    for round in 0..4i64 {
        for n in 0..3 {
            log.append(&mut storage, &txn_batch(round, 0, n, &[1u8; 120]), 0, 0)
                .expect("append");
        }
        log.append_marker(&mut storage, &txn_marker(round, 0, 0, false), 0, 0)
            .expect("abort");
    }
    sync(&mut log, &mut storage);
    let first = log.segments[0].base_offset;
    let first_path = format!("t-0/{}", segment_name(first, TXN_INDEX_SUFFIX));
    assert!(storage.exists(&first_path));
    let before = log.aborted_txns(0, log.log_end_offset());
    assert_eq!(before.len(), 4);
    log.set_config(config(900));
    assert!(log.apply_retention(&mut storage, 0).expect("retention") > 0);
    assert!(!storage.exists(&first_path), "deleted with its segment");
    let start = log.log_start_offset();
    let after = log.aborted_txns(start, log.log_end_offset());
    assert_eq!(
        after,
        before
            .into_iter()
            .filter(|e| e.last_offset >= start)
            .collect::<Vec<_>>()
    );
}
