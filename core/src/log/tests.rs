//! Property tests of the partition log against a plain in-memory model:
//! appends, reads at any offset, rolls, retention, syncs, crashes with torn
//! unsynced tails, and clean restarts.

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
                let appended = log.append(&mut storage, &batch, 0, 0).expect("append");
                assert_eq!(appended.base_offset, model.end());
                // What the log writes: the batch with its offsets assigned.
                batch::assign_offset(&mut batch, appended.base_offset, 0);
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
            }
            Op::Truncate { offset_pick } => {
                let span = (model.end() - model.log_start + 1).max(1);
                let offset = model.log_start + offset_pick as i64 % span;
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
    }
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
