//! The group coordinator's persistence: every group change and committed
//! offset is a record in the group's partition of `__consumer_offsets`
//! (Kafka's formats, `group_records`), appended before the answer that
//! depends on it and released only once a sync covers it; all of it is
//! read back at start.
//!
//! A transaction's offsets (TxnOffsetCommit) go in as one transactional
//! batch of the producer, held apart as pending until the transaction's
//! marker in the same partition commits or aborts them; replay at load
//! follows the markers in log order, and leaves pending what no marker
//! ended yet.
//!
//! This node is the coordinator of every group (one broker); the group's
//! partition of `__consumer_offsets` is `abs(javaHashCode(group)) % N`, as
//! Kafka places it, so the layout stays right when partitions get leaders
//! on several brokers.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use super::replicas::HighWatermark;
use super::{Broker, Written};
use crate::batch::{self, builder::ProducerIdentity, BatchHeader};
use crate::config::Mutation;
use crate::group::{Committed, Group, Resolved, Token};
use crate::group_records::{
    group_key, group_value, offset_key, offset_value, parse_group_key, parse_group_value,
    parse_marker_key, parse_offset_key, parse_offset_value,
};
use crate::log::PartitionLog;
use crate::storage::Storage;
use crate::types::Now;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Java's `String.hashCode` over UTF-16 code units, wrapping.
pub fn java_hash(text: &str) -> i32 {
    text.encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

/// The `__consumer_offsets` partition of a group, as Kafka computes it
/// (`Utils.abs` maps `i32::MIN` to 0).
pub fn offsets_partition(group_id: &str, partitions: i32) -> i32 {
    let hash = java_hash(group_id);
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

/// Where a coordinator's records went: the write sequence that makes them
/// durable here and, when `__consumer_offsets` is replicated, the high
/// watermark they need (Kafka's coordinator appends with acks=all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupWrite {
    pub seq: u64,
    pub marks: Vec<HighWatermark>,
}

impl GroupWrite {
    pub fn and(mut self, other: GroupWrite) -> GroupWrite {
        self.seq = self.seq.max(other.seq);
        self.marks.extend(other.marks);
        self
    }
}

/// How the group changes behind an answer were recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Nothing changed: the answer may go at once.
    Nothing,
    /// Appended: the answer waits until the write is durable (and
    /// replicated).
    After(GroupWrite),
    /// The append failed: the answer is an error and nothing was recorded.
    Failed,
}

impl Recorded {
    fn and(self, other: Recorded) -> Recorded {
        match (self, other) {
            (Recorded::Failed, _) | (_, Recorded::Failed) => Recorded::Failed,
            (Recorded::After(a), Recorded::After(b)) => Recorded::After(a.and(b)),
            (Recorded::After(a), Recorded::Nothing) | (Recorded::Nothing, Recorded::After(a)) => {
                Recorded::After(a)
            }
            (Recorded::Nothing, Recorded::Nothing) => Recorded::Nothing,
        }
    }
}

/// A coordinator answer to a request that waits for it by token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAnswer {
    pub token: Token,
    pub resolved: Resolved,
    pub recorded: Recorded,
}

impl<S: Storage> Broker<S> {
    /// Call after every input to the coordinator: records the groups it
    /// changed, and queues the answers it resolved behind that record.
    /// Returns how the record went, for an answer given right away.
    pub fn record_group_changes(&mut self, now: Now) -> Recorded {
        let mut recorded = Recorded::Nothing;
        for group_id in self.groups.take_changed() {
            let outcome = match self.write_group_record(now, &group_id) {
                Ok(written) => Recorded::After(written),
                Err(error) => {
                    tracing::error!(group = %group_id, ?error, "cannot record a group's state");
                    Recorded::Failed
                }
            };
            recorded = recorded.and(outcome);
        }
        for (token, resolved) in self.groups.take_resolved() {
            self.group_answers.push(GroupAnswer {
                token,
                resolved,
                recorded: recorded.clone(),
            });
        }
        recorded
    }

    /// Records a group's state, or a tombstone when it no longer exists;
    /// returns the sequence to wait for.
    pub fn write_group_record(
        &mut self,
        now: Now,
        group_id: &str,
    ) -> Result<GroupWrite, ResponseError> {
        let value = self
            .groups
            .groups
            .get(group_id)
            .map(|g| group_value(g, now.wall_ms));
        let key = group_key(group_id);
        let (written, _) = self.append_group_records(now, group_id, &[(key, value)])?;
        Ok(written)
    }

    /// Appends commits (or tombstones, `None`) of a group to its
    /// `__consumer_offsets` partition and applies them; returns the
    /// sequence to wait for.
    pub fn write_offsets(
        &mut self,
        now: Now,
        group_id: &str,
        records: &[(String, i32, Option<Committed>)],
    ) -> Result<GroupWrite, ResponseError> {
        assert!(!records.is_empty());
        let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = records
            .iter()
            .map(|(topic, index, committed)| {
                (
                    offset_key(group_id, topic, *index),
                    committed.as_ref().map(offset_value),
                )
            })
            .collect();
        let (written, base_offset) = self.append_group_records(now, group_id, &encoded)?;
        for (record_offset, (topic, index, committed)) in (base_offset..).zip(records) {
            match committed {
                Some(committed) => {
                    let committed = Committed {
                        record_offset,
                        ..committed.clone()
                    };
                    self.groups.commit(group_id, topic, *index, committed)
                }
                None => self.groups.forget_offset(group_id, topic, *index),
            }
        }
        Ok(written)
    }

    /// Appends a transaction's offsets of a group (TxnOffsetCommit) to its
    /// `__consumer_offsets` partition as one transactional batch of the
    /// producer, and holds them pending until the transaction's marker
    /// there; returns the sequence to wait for. A producer epoch older than
    /// the partition last saw from that producer is fenced
    /// (INVALID_PRODUCER_EPOCH), as Kafka's coordinator appends.
    pub fn write_transactional_offsets(
        &mut self,
        now: Now,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        records: &[(String, i32, Committed)],
    ) -> Result<GroupWrite, ResponseError> {
        assert!(!records.is_empty());
        if producer_id < 0 || producer_epoch < 0 {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(topic, index, committed)| {
                (offset_key(group_id, topic, *index), offset_value(committed))
            })
            .collect();
        let specs: Vec<batch::RecordSpec<'_>> = encoded
            .iter()
            .map(|(key, value)| (Some(&key[..]), Some(&value[..]), Vec::new(), 0))
            .collect();
        // Sequence 0 on every such batch: Kafka's coordinator appends them
        // without the sequence checks of a client's batch.
        let producer = ProducerIdentity {
            producer_id,
            producer_epoch,
            base_sequence: 0,
        };
        let bytes = batch::build_transactional_batch(now.wall_ms, producer, &specs);
        let (written, base_offset) = self.append_group_batch(now, group_id, &bytes)?;
        for (record_offset, (topic, index, committed)) in (base_offset..).zip(records) {
            let committed = Committed {
                record_offset,
                ..committed.clone()
            };
            if self.config.mutated(Mutation::TxnOffsetsBeforeMarker) {
                self.groups.commit(group_id, topic, *index, committed);
            } else {
                self.groups
                    .stage(group_id, producer_id, topic, *index, committed);
            }
        }
        Ok(written)
    }

    /// A transaction marker of `producer_id` was appended to partition
    /// `partition` of `__consumer_offsets`: the producer's pending offsets
    /// of the groups living there become committed (`commit`) or are
    /// dropped. Offsets of the producer's transaction in other partitions
    /// wait for their own marker.
    pub fn apply_offsets_marker(&mut self, partition: i32, producer_id: i64, commit: bool) {
        let partitions = self.offsets_partition_count();
        let applied = self.groups.end_transaction(producer_id, commit, |group| {
            offsets_partition(group, partitions) == partition
        });
        tracing::debug!(
            partition,
            producer_id,
            commit,
            applied,
            "a transaction's offsets ended"
        );
    }

    /// The tombstones that delete every offset of a group: its committed
    /// ones, and those only an open transaction holds (whose tombstone
    /// keeps a later commit marker from bringing them back).
    pub fn group_offset_tombstones(&self, group_id: &str) -> Vec<(String, i32, Option<Committed>)> {
        let mut partitions: Vec<(String, i32)> = self
            .groups
            .offsets
            .get(group_id)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        partitions.extend(self.groups.pending_partitions(group_id));
        partitions.sort();
        partitions.dedup();
        partitions
            .into_iter()
            .map(|(topic, partition)| (topic, partition, None))
            .collect()
    }

    /// Appends keyed records (a `None` value is a tombstone) to a group's
    /// `__consumer_offsets` partition, as one batch; returns the sequence
    /// that makes them durable and the offset of the first record.
    fn append_group_records(
        &mut self,
        now: Now,
        group_id: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(GroupWrite, i64), ResponseError> {
        let specs: Vec<batch::RecordSpec<'_>> = records
            .iter()
            .map(|(key, value)| (Some(&key[..]), value.as_deref(), Vec::new(), 0))
            .collect();
        let bytes = batch::build_batch(now.wall_ms, &specs);
        self.append_group_batch(now, group_id, &bytes)
    }

    /// Appends one batch the coordinator built to a group's
    /// `__consumer_offsets` partition; returns the sequence that makes it
    /// durable and the offset of its first record. A transactional batch
    /// is checked for its producer's epoch only.
    fn append_group_batch(
        &mut self,
        now: Now,
        group_id: &str,
        bytes: &[u8],
    ) -> Result<(GroupWrite, i64), ResponseError> {
        if self.storage_offline() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let created = self.ensure_offsets_topic()?;
        let partition = offsets_partition(group_id, self.offsets_partition_count());
        let (mut written, base_offset) =
            self.append_internal_batch(now, OFFSETS_TOPIC, partition, bytes, group_id)?;
        written.seq = written.seq.max(created);
        Ok((written, base_offset))
    }

    /// Creates `__consumer_offsets` on first use, like Kafka's internal topic.
    /// Without compaction its records are kept forever (no retention).
    fn ensure_offsets_topic(&mut self) -> Result<u64, ResponseError> {
        if self.topics.contains(OFFSETS_TOPIC) {
            return Ok(0);
        }
        if self.in_cluster() {
            // The coordinator is the leader of the group's partition: with
            // no such topic yet, there is none.
            self.request_offsets_topic();
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let spec = self
            .internal_topic(OFFSETS_TOPIC)
            .expect("an internal topic");
        match self.create_topic(OFFSETS_TOPIC, spec.partitions, spec.configs, 1, None)? {
            Written::Durable(seq) => Ok(seq),
            Written::Committed(_) => unreachable!("a node alone writes its own topics"),
        }
    }

    /// The `__consumer_offsets` partition of a group, also before the
    /// topic exists (it will have `offsets.topic.num.partitions`).
    pub fn group_offsets_partition(&self, group_id: &str) -> crate::types::TopicPartition {
        let count = match self.offsets_partition_count() {
            0 => self.config.offsets_topic_partitions,
            count => count,
        };
        crate::types::TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group_id, count))
    }

    /// In a cluster: has the controller create `__consumer_offsets`.
    pub fn request_offsets_topic(&mut self) {
        self.request_internal_topic(OFFSETS_TOPIC);
    }

    /// Removes committed offsets past `offsets.retention.minutes` (tombstones).
    pub fn expire_offsets(&mut self, now: Now) {
        let expired = self
            .groups
            .expired_offsets(now.wall_ms, self.config.offsets_retention_ms);
        let mut by_group: BTreeMap<String, Vec<(String, i32, Option<Committed>)>> = BTreeMap::new();
        for (group, topic, partition) in expired {
            by_group
                .entry(group)
                .or_default()
                .push((topic, partition, None));
        }
        for (group, tombstones) in by_group {
            match self.write_offsets(now, &group, &tombstones) {
                Ok(_) => {
                    tracing::info!(group = %group, partitions = tombstones.len(), "expired committed offsets")
                }
                Err(error) => {
                    tracing::error!(group = %group, ?error, "cannot expire committed offsets")
                }
            }
        }
    }

    /// Expires silent members and overdue rebalances, and records what changed.
    pub fn expire_groups(&mut self, now: Now) {
        self.groups.expire(now.monotonic_ms);
        self.record_group_changes(now);
    }

    /// Rebuilds groups and committed offsets from `__consumer_offsets` at start.
    pub(super) fn load_groups(&mut self, now: Now) {
        self.load_groups_of(now, None);
    }

    /// In a cluster, `__consumer_offsets` opens partition by partition as
    /// the node applies the metadata log: each one's groups load then.
    pub(super) fn load_group_partition(&mut self, now: Now, partition: i32) {
        self.load_groups_of(now, Some(partition));
    }

    /// Loads the groups and commits of one partition of the offsets topic,
    /// or of all of them. Offsets in transactional batches become pending
    /// for their producer; markers commit or drop them in log order; what
    /// no marker ended yet stays pending (the transaction is still open).
    fn load_groups_of(&mut self, now: Now, only: Option<i32>) {
        if self.config.mutated(Mutation::ForgetCommittedOffsets) {
            return;
        }
        let Some(topic) = self.topics.get(OFFSETS_TOPIC) else {
            return;
        };
        let partitions = self.offsets_partition_count();
        let mut events = Vec::new();
        let mut groups: BTreeMap<String, Option<Group>> = BTreeMap::new();
        for (index, partition) in topic.partitions.iter().enumerate() {
            if only.is_some_and(|p| p != index as i32) {
                continue;
            }
            let Some(partition) = partition else {
                continue;
            };
            for_each_record(&partition.log, &mut self.storage, |record| {
                replay_record(index as i32, record, &mut events, &mut groups)
            });
        }
        // The groups this load saw (a group lives in one partition).
        let touched: std::collections::BTreeSet<String> = groups
            .keys()
            .cloned()
            .chain(events.iter().filter_map(|e| e.group().map(str::to_string)))
            .collect();
        // The log says which transactions are open in the partitions loaded.
        self.groups.forget_pending_where(|group| {
            only.is_none_or(|p| offsets_partition(group, partitions) == p)
        });
        let mut recorded = Vec::new();
        for (group_id, group) in groups {
            if let Some(group) = group {
                self.groups.restore(now.monotonic_ms, &group_id, group);
                recorded.push(group_id);
            }
        }
        let loaded = events.len();
        for event in events {
            self.replay_offsets_event(event, partitions);
        }
        // A group whose record was tombstoned (deleted) and whose offsets all
        // were too is gone; replaying its old commits must not bring it back.
        // Loading one partition, the groups of the others stay as they are.
        match only {
            None => self.groups.forget_unrecorded_empty(&recorded),
            Some(_) => self
                .groups
                .forget_unrecorded_empty_where(&recorded, |group| touched.contains(group)),
        }
        tracing::info!(
            records = loaded,
            groups = self.groups.offsets.len(),
            "loaded committed offsets"
        );
    }

    fn replay_offsets_event(&mut self, event: OffsetsEvent, partitions: i32) {
        match event {
            OffsetsEvent::Commit {
                group,
                topic,
                partition,
                committed: Some(committed),
            } => self.groups.commit(&group, &topic, partition, committed),
            OffsetsEvent::Commit {
                group,
                topic,
                partition,
                committed: None,
            } => self.groups.forget_offset(&group, &topic, partition),
            OffsetsEvent::Staged {
                producer_id,
                group,
                topic,
                partition,
                committed,
            } => self
                .groups
                .stage(&group, producer_id, &topic, partition, committed),
            OffsetsEvent::Marker {
                partition,
                producer_id,
                commit,
            } => {
                self.groups.end_transaction(producer_id, commit, |group| {
                    offsets_partition(group, partitions) == partition
                });
            }
        }
    }
}

/// What an offsets record or a marker does, in log order.
#[derive(Debug)]
enum OffsetsEvent {
    /// A plain commit, or a tombstone (`None`), of any batch.
    Commit {
        group: String,
        topic: String,
        partition: i32,
        committed: Option<Committed>,
    },
    /// A transaction's commit, pending until its marker.
    Staged {
        producer_id: i64,
        group: String,
        topic: String,
        partition: i32,
        committed: Committed,
    },
    /// A marker in `partition` of `__consumer_offsets`.
    Marker {
        partition: i32,
        producer_id: i64,
        commit: bool,
    },
}

impl OffsetsEvent {
    fn group(&self) -> Option<&str> {
        match self {
            OffsetsEvent::Commit { group, .. } | OffsetsEvent::Staged { group, .. } => Some(group),
            OffsetsEvent::Marker { .. } => None,
        }
    }
}

/// One record of `__consumer_offsets`, with what its batch says of it.
pub(super) struct StoredRecord<'a> {
    pub header: &'a BatchHeader,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Reads one record of partition `index` of `__consumer_offsets` into
/// `events` (offsets and markers) or `groups` (the last record per group
/// wins). A control batch holds a marker, never offsets.
fn replay_record(
    index: i32,
    record: StoredRecord<'_>,
    events: &mut Vec<OffsetsEvent>,
    groups: &mut BTreeMap<String, Option<Group>>,
) {
    let Some(key) = record.key else { return };
    let header = record.header;
    if header.is_control() {
        match parse_marker_key(key) {
            Some(commit) => events.push(OffsetsEvent::Marker {
                partition: index,
                producer_id: header.producer_id,
                commit,
            }),
            None => tracing::warn!(
                offset = record.offset,
                "a control record that is no transaction marker in {OFFSETS_TOPIC}"
            ),
        }
        return;
    }
    if let Some((group, topic, partition)) = parse_offset_key(key) {
        let committed = record
            .value
            .and_then(parse_offset_value)
            .map(|c| Committed {
                record_offset: record.offset,
                ..c
            });
        let event = match committed {
            Some(committed) if header.is_transactional() && header.producer_id >= 0 => {
                OffsetsEvent::Staged {
                    producer_id: header.producer_id,
                    group,
                    topic,
                    partition,
                    committed,
                }
            }
            committed => OffsetsEvent::Commit {
                group,
                topic,
                partition,
                committed,
            },
        };
        events.push(event);
    } else if let Some(group) = parse_group_key(key) {
        groups.insert(group, record.value.and_then(parse_group_value));
    }
}

pub(super) fn for_each_record<S: Storage>(
    log: &PartitionLog,
    storage: &mut S,
    mut visit: impl FnMut(StoredRecord<'_>),
) {
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let Ok(bytes) = log.read(storage, offset, end, 1 << 20, true) else {
            return;
        };
        let before = offset;
        for (header, range) in batch::headers_in(&bytes) {
            offset = header.next_offset();
            match batch::decode_records(&bytes[range]) {
                Ok(records) => records.iter().for_each(|r| {
                    visit(StoredRecord {
                        header: &header,
                        offset: r.offset,
                        key: r.key.as_deref(),
                        value: r.value.as_deref(),
                    })
                }),
                Err(error) => tracing::error!(%error, "unreadable batch in {OFFSETS_TOPIC}"),
            }
        }
        if offset == before {
            return;
        }
    }
}
