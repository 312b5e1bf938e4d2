//! Group commit: which changes must reach the disk, which sync covers them,
//! and what became durable when a sync completed.
//!
//! Every change that must survive a crash takes the next write sequence
//! number and marks what it touched dirty (a partition, or another file or
//! directory). At most one sync is in flight; it covers every file dirty
//! when it was issued, and records each synced partition's log end with the
//! log's incarnation. When it completes, every sequence up to the one it was
//! issued at is durable; the caller marks those log ends durable, on the
//! logs of the same incarnation only. After a failed sync nothing more is
//! ever acknowledged: the page cache may have dropped what it covered.

use std::collections::BTreeSet;

use crate::metadata::MetadataLog;
use crate::storage::SyncTarget;
use crate::topics::Topics;
use crate::types::TopicPartition;

/// A partition's log end when a sync of it was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEnd {
    pub partition: TopicPartition,
    pub incarnation: u64,
    pub end_offset: i64,
}

/// Why a sync was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPurpose {
    /// The changes made since the last sync.
    Changes,
    /// Everything, before the clean-shutdown marker is written.
    ShutdownFlush,
    /// The clean-shutdown marker's directory entry.
    ShutdownMarker,
}

/// A sync to hand to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub id: u64,
    pub targets: Vec<SyncTarget>,
}

/// What a completed sync made durable.
#[derive(Debug)]
pub struct Completed {
    pub purpose: SyncPurpose,
    /// The first sync of this process (the start-up sync).
    pub startup: bool,
    /// Empty when the sync failed.
    pub ends: Vec<PartitionEnd>,
    pub ok: bool,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    write_seq: u64,
    ends: Vec<PartitionEnd>,
    purpose: SyncPurpose,
}

#[derive(Debug)]
pub struct Durability {
    /// Taken by every change that must reach the disk.
    write_seq: u64,
    /// Every change up to this sequence is durable.
    durable_seq: u64,
    dirty_partitions: BTreeSet<TopicPartition>,
    dirty_other: BTreeSet<SyncTarget>,
    in_flight: Option<InFlight>,
    next_sync_id: u64,
    failed: bool,
}

impl Durability {
    /// Starts with the start-up changes pending: nothing is durable (and
    /// so nothing served) until the first sync completes.
    pub fn new(dirty_other: BTreeSet<SyncTarget>) -> Durability {
        Durability {
            write_seq: 1,
            durable_seq: 0,
            dirty_partitions: BTreeSet::new(),
            dirty_other,
            in_flight: None,
            next_sync_id: 1,
            failed: false,
        }
    }

    /// A change to a partition's log; returns its sequence.
    pub fn note_partition_write(&mut self, partition: TopicPartition) -> u64 {
        self.dirty_partitions.insert(partition);
        self.next_write_seq()
    }

    /// A change to another file or directory; returns its sequence.
    pub fn note_other_write(&mut self, target: SyncTarget) -> u64 {
        self.dirty_other.insert(target);
        self.next_write_seq()
    }

    /// A change whose files their owner reports as dirty itself (the
    /// metadata log); returns its sequence.
    pub fn note_write(&mut self) -> u64 {
        self.next_write_seq()
    }

    fn next_write_seq(&mut self) -> u64 {
        self.write_seq += 1;
        self.write_seq
    }

    /// The partitions of a removed topic need no sync any more.
    pub fn forget_topic(&mut self, name: &str) {
        self.dirty_partitions.retain(|p| p.topic != name);
    }

    pub fn write_seq(&self) -> u64 {
        self.write_seq
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn is_durable(&self, seq: u64) -> bool {
        seq <= self.durable_seq
    }

    /// A sync failed: the log directory is offline until a restart.
    pub fn failed(&self) -> bool {
        self.failed
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The sync of everything dirty, unless one is in flight, storage
    /// failed, or nothing waits.
    pub fn next_sync(
        &mut self,
        topics: &mut Topics,
        metadata: &mut MetadataLog,
    ) -> Option<SyncRequest> {
        if self.in_flight.is_some() || self.failed {
            return None;
        }
        let mut targets: BTreeSet<SyncTarget> = std::mem::take(&mut self.dirty_other);
        targets.extend(metadata.take_dirty());
        let mut ends = Vec::new();
        for partition in std::mem::take(&mut self.dirty_partitions) {
            let Some(held) = topics.partition_mut(&partition.topic, partition.partition) else {
                continue;
            };
            targets.extend(held.log.take_dirty());
            ends.push(PartitionEnd {
                end_offset: held.log.log_end_offset(),
                incarnation: held.incarnation,
                partition,
            });
        }
        if targets.is_empty() && ends.is_empty() && self.durable_seq == self.write_seq {
            return None;
        }
        Some(self.issue(targets, ends, SyncPurpose::Changes))
    }

    /// The sync of every file, for a clean shutdown.
    pub fn flush_all(&mut self, topics: &mut Topics, metadata: &mut MetadataLog) -> SyncRequest {
        assert!(self.in_flight.is_none(), "one sync in flight at a time");
        let mut targets: BTreeSet<SyncTarget> = std::mem::take(&mut self.dirty_other);
        targets.extend(metadata.all_files());
        metadata.take_dirty();
        targets.insert(SyncTarget::Dir(String::new()));
        let mut ends = Vec::new();
        for (partition, held) in topics.partitions_mut() {
            held.log.take_dirty();
            targets.extend(held.log.all_files());
            ends.push(PartitionEnd {
                end_offset: held.log.log_end_offset(),
                incarnation: held.incarnation,
                partition,
            });
        }
        self.dirty_partitions.clear();
        self.issue(targets, ends, SyncPurpose::ShutdownFlush)
    }

    /// The sync of the log dir's entries, after the shutdown marker was written.
    pub fn sync_marker(&mut self) -> SyncRequest {
        assert!(self.in_flight.is_none(), "one sync in flight at a time");
        let targets = BTreeSet::from([SyncTarget::Dir(String::new())]);
        self.issue(targets, Vec::new(), SyncPurpose::ShutdownMarker)
    }

    fn issue(
        &mut self,
        targets: BTreeSet<SyncTarget>,
        ends: Vec<PartitionEnd>,
        purpose: SyncPurpose,
    ) -> SyncRequest {
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        self.in_flight = Some(InFlight {
            id,
            write_seq: self.write_seq,
            ends,
            purpose,
        });
        SyncRequest {
            id,
            targets: targets.into_iter().collect(),
        }
    }

    /// The sync `id` completed (`ok`) or failed.
    pub fn complete(&mut self, id: u64, ok: bool) -> Completed {
        let sync = self
            .in_flight
            .take()
            .unwrap_or_else(|| panic!("sync {id} completed but none is in flight"));
        assert_eq!(sync.id, id, "syncs complete in the order they were issued");
        assert!(sync.write_seq >= self.durable_seq);
        let startup = sync.id == 1;
        if !ok {
            self.failed = true;
            return Completed {
                purpose: sync.purpose,
                startup,
                ends: Vec::new(),
                ok,
            };
        }
        self.durable_seq = sync.write_seq;
        Completed {
            purpose: sync.purpose,
            startup,
            ends: sync.ends,
            ok,
        }
    }

    pub fn invariants(&self) {
        assert!(self.durable_seq <= self.write_seq, "durable beyond written");
        assert!(self.write_seq >= 1);
        if let Some(sync) = &self.in_flight {
            assert!(sync.id < self.next_sync_id);
            assert!(sync.write_seq <= self.write_seq && sync.write_seq >= self.durable_seq);
        }
    }
}
