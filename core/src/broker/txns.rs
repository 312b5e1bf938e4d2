//! The transaction coordinator's persistence and its markers.
//!
//! Each transactional id lives in partition `abs(javaHashCode(id)) % N` of
//! `__transaction_state`, whose leader coordinates it (this node, alone).
//! Every change of an id is a record appended there before the answer that
//! depends on it, and every answer about an id waits until the id's last
//! record is durable (and, with followers, under the high watermark).
//!
//! Ending a transaction: its PREPARE record is written (EndTxn is answered
//! once it is durable), then a marker goes to every partition of the
//! transaction; once every marker is durable (and replicated), COMPLETE is
//! written. A coordinator that loads an id found in a prepare state writes
//! its markers again (they are idempotent) and completes it.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;

use super::groups::{offsets_partition, GroupWrite};
use super::Broker;
use crate::batch;
use crate::config::Mutation;
use crate::handlers::{Wait, WaitState};
use crate::storage::Storage;
use crate::txn::records::{parse_txn_key, parse_txn_value, txn_key, txn_value};
use crate::txn::{TxnMetadata, TxnState, TXN_TOPIC};
use crate::types::{Now, TopicPartition};

/// How long a marker that could not be written waits before it is tried
/// again (a partition without a leader, a storage error).
pub const MARKER_RETRY_MS: i64 = 100;

/// Where one partition's marker of an ending transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerProgress {
    /// To be written (again).
    ToWrite,
    /// Appended; counts once this write is durable and replicated.
    Writing(GroupWrite),
    /// Sent to the partition's leader as WriteTxnMarkers; its answer says.
    Sent,
    /// Durable on the partition (or the partition is gone).
    Written,
    /// Refused for good (a newer producer epoch or coordinator there):
    /// this coordinator stops, as Kafka's does.
    Refused,
}

/// One transactional id as the coordinator holds it.
#[derive(Debug, Clone)]
pub struct TxnEntry {
    pub meta: TxnMetadata,
    /// Its partition of `__transaction_state`.
    pub partition: i32,
    /// Its last record: every answer about it waits for this write.
    pub written: Option<GroupWrite>,
    /// While it ends: each partition's marker (not recorded; a load redoes them).
    pub markers: BTreeMap<TopicPartition, MarkerProgress>,
    /// While a transaction is open: when this coordinator saw it open
    /// (monotonic; for one loaded open, the first sweep after the load).
    /// A wall clock set back must not keep a transaction open past its
    /// timeout, so the timeout counts on this clock too.
    pub open_since_ms: Option<i64>,
}

/// Every transactional id this node coordinates.
#[derive(Debug, Default)]
pub struct Transactions {
    pub ids: BTreeMap<String, TxnEntry>,
    /// The partitions of `__transaction_state` whose ids are loaded here.
    pub loaded: BTreeSet<i32>,
    /// Ids whose markers are being written.
    pub ending: BTreeSet<String>,
    /// When markers that failed are tried again (monotonic).
    pub retry_ms: Option<i64>,
    /// When idle ids were last looked at for expiry (wall clock).
    pub expiry_checked_ms: i64,
    /// Markers for partitions other brokers lead, for the node to send.
    pub outbox: Vec<RemoteMarker>,
    /// A transaction completed since the node last looked: requests held
    /// for it can go on.
    pub completed: bool,
}

/// A marker bound for the broker that leads its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMarker {
    pub transactional_id: String,
    pub leader: i32,
    pub partition: TopicPartition,
    pub marker: crate::producers::TxnMarker,
}

impl Transactions {
    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.ids.get(transactional_id).map(|e| &e.meta)
    }

    /// Checks that every id in a prepare state, and only those, is ending.
    pub fn invariants(&self) {
        for (id, entry) in &self.ids {
            assert_eq!(
                entry.meta.state.preparing(),
                self.ending.contains(id),
                "an id ends exactly while it is in a prepare state"
            );
            assert!(self.loaded.contains(&entry.partition));
            if !entry.meta.state.preparing() {
                assert!(entry.markers.is_empty(), "markers only while ending");
            }
        }
        assert!(self.ending.iter().all(|id| self.ids.contains_key(id)));
    }
}

/// The `__transaction_state` partition of a transactional id.
pub fn txn_partition(transactional_id: &str, partitions: i32) -> i32 {
    offsets_partition(transactional_id, partitions)
}

impl<S: Storage> Broker<S> {
    /// The partitions of `__transaction_state`, which place each id.
    pub fn txn_partition_count(&self) -> i32 {
        match &self.cluster {
            Some(cluster) => cluster
                .image
                .topic_by_name(TXN_TOPIC)
                .map_or(0, |t| t.partitions.len() as i32)
                .max(self.config.txn_topic_partitions),
            None => self
                .topics
                .partition_count(TXN_TOPIC)
                .max(self.config.txn_topic_partitions),
        }
    }

    /// Why this node may not coordinate a transactional id, if it may not:
    /// the leader of the id's partition of `__transaction_state` does, once
    /// it has loaded that partition.
    pub fn not_txn_coordinator(&mut self, transactional_id: &str) -> Option<ResponseError> {
        if self.storage_offline() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(error) = self.ensure_txn_topic() {
            return Some(error);
        }
        let partition = txn_partition(transactional_id, self.txn_partition_count());
        if self.cluster.is_some() {
            match self.registration(TXN_TOPIC, partition) {
                // Its lease ended: the id may have moved already.
                Some(p) if p.leader == self.config.node_id && !self.acting() => {
                    return Some(ResponseError::NotCoordinator)
                }
                Some(p) if p.leader == self.config.node_id => {}
                Some(p) if p.leader >= 0 => return Some(ResponseError::NotCoordinator),
                _ => return Some(ResponseError::CoordinatorNotAvailable),
            }
        }
        if !self.transactions.loaded.contains(&partition) {
            return Some(ResponseError::CoordinatorLoadInProgress);
        }
        None
    }

    /// The coordinator of a transactional id as clients reach it, in a cluster.
    pub fn txn_coordinator_address(
        &mut self,
        transactional_id: &str,
    ) -> Result<super::BrokerAddress, ResponseError> {
        self.ensure_txn_topic()?;
        let partition = txn_partition(transactional_id, self.txn_partition_count());
        let leader = match self.registration(TXN_TOPIC, partition) {
            Some(p) if p.leader >= 0 => p.leader,
            _ => return Err(ResponseError::CoordinatorNotAvailable),
        };
        self.coordinator_address_of(leader)
    }

    /// Creates `__transaction_state` on first use, like Kafka's internal
    /// topic (in a cluster, has the controller create it).
    pub fn ensure_txn_topic(&mut self) -> Result<(), ResponseError> {
        let exists = match &self.cluster {
            // In a cluster, whether or not this node holds a replica.
            Some(cluster) => cluster.image.topic_by_name(TXN_TOPIC).is_some(),
            None => self.topics.contains(TXN_TOPIC),
        };
        if exists {
            return Ok(());
        }
        if self.in_cluster() {
            self.request_internal_topic(TXN_TOPIC);
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let spec = self.internal_topic(TXN_TOPIC).expect("an internal topic");
        let partitions = spec.partitions;
        self.create_topic(TXN_TOPIC, partitions, spec.configs, 1, None)?;
        // Alone, this node leads every partition: all of them are loaded
        // (and empty).
        self.transactions.loaded.extend(0..partitions);
        Ok(())
    }

    /// The write an answer about this id waits for.
    pub fn txn_written(&self, transactional_id: &str) -> Option<GroupWrite> {
        self.transactions
            .ids
            .get(transactional_id)
            .and_then(|e| e.written.clone())
    }

    /// Whether the id's last record is durable (and replicated): only
    /// then may a partition it added be confirmed to a leader, as Kafka
    /// adds partitions to a transaction only once their record persisted.
    pub fn txn_settled(&self, transactional_id: &str) -> bool {
        self.txn_written(transactional_id)
            .is_none_or(|written| self.write_state(&written) == WaitState::Done)
    }

    /// Whether the id's last transaction is writing its markers.
    pub fn txn_completing(&self, transactional_id: &str) -> bool {
        self.transactions.get(transactional_id).is_some_and(|meta| {
            matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
        })
    }

    /// Whether a transaction completed since the last call.
    pub fn take_txn_completed(&mut self) -> bool {
        std::mem::take(&mut self.transactions.completed)
    }

    /// Records an id's new state in its partition of `__transaction_state`
    /// and keeps it; returns the write its answers wait for.
    pub fn write_txn(
        &mut self,
        now: Now,
        transactional_id: &str,
        next: TxnMetadata,
    ) -> Result<GroupWrite, ResponseError> {
        let partition = txn_partition(transactional_id, self.txn_partition_count());
        if let Some(entry) = self.transactions.ids.get(transactional_id) {
            entry.meta.assert_transition(&next);
        }
        let value = txn_value(&next);
        let written = self.append_txn_record(now, partition, transactional_id, Some(&value))?;
        let written = match self.txn_written(transactional_id) {
            Some(before) => before.and(written),
            None => written,
        };
        let markers = if next.state.preparing() {
            self.transactions
                .ending
                .insert(transactional_id.to_string());
            next.partitions
                .iter()
                .map(|tp| (tp.clone(), MarkerProgress::ToWrite))
                .collect()
        } else {
            if self.transactions.ending.remove(transactional_id) {
                self.transactions.completed = true;
            }
            BTreeMap::new()
        };
        tracing::debug!(
            transactional_id,
            producer_id = next.producer_id,
            epoch = next.epoch,
            state = next.state.name(),
            "transaction state recorded"
        );
        let open_since_ms = match self.transactions.ids.get(transactional_id) {
            _ if next.state != TxnState::Ongoing => None,
            Some(entry) if entry.meta.state == TxnState::Ongoing => entry.open_since_ms,
            _ => Some(now.monotonic_ms),
        };
        self.transactions.ids.insert(
            transactional_id.to_string(),
            TxnEntry {
                meta: next,
                partition,
                written: Some(written.clone()),
                markers,
                open_since_ms,
            },
        );
        Ok(written)
    }

    /// Removes an idle id (a tombstone).
    fn remove_txn(&mut self, now: Now, transactional_id: &str) -> Result<(), ResponseError> {
        let partition = txn_partition(transactional_id, self.txn_partition_count());
        self.append_txn_record(now, partition, transactional_id, None)?;
        self.transactions.ids.remove(transactional_id);
        Ok(())
    }

    fn append_txn_record(
        &mut self,
        now: Now,
        partition: i32,
        transactional_id: &str,
        value: Option<&[u8]>,
    ) -> Result<GroupWrite, ResponseError> {
        let key = txn_key(transactional_id);
        let bytes = batch::build_batch(now.wall_ms, &[(Some(&key[..]), value, Vec::new(), 0)]);
        self.append_internal_batch(now, TXN_TOPIC, partition, &bytes, transactional_id)
            .map(|(written, _)| written)
    }

    /// The coordinator epoch markers carry: the leader epoch of the id's
    /// partition of `__transaction_state`, which grows each time another
    /// node (or this one again) takes it over.
    pub fn coordinator_epoch(&self, partition: i32) -> i32 {
        self.append_epoch(TXN_TOPIC, partition).max(0)
    }

    /// How a coordinator's write stands.
    pub fn write_state(&self, written: &GroupWrite) -> WaitState {
        let wait = if written.marks.is_empty() {
            Wait::Durable(written.seq)
        } else {
            Wait::HighWatermarks(written.marks.clone())
        };
        wait.state(self)
    }

    /// Reads the ids of one partition of `__transaction_state` (the last
    /// record of each id wins; a tombstone removes it), or of all of them.
    /// Ids found ending get their markers written again.
    pub(super) fn load_txn_partitions(&mut self, only: Option<i32>) {
        let Some(topic) = self.topics.get(TXN_TOPIC) else {
            return;
        };
        let count = topic.partitions.len() as i32;
        let mut found: BTreeMap<String, (i32, Option<TxnMetadata>)> = BTreeMap::new();
        let mut partitions = Vec::new();
        for (index, held) in topic.partitions.iter().enumerate() {
            let index = index as i32;
            if only.is_some_and(|p| p != index) {
                continue;
            }
            let Some(held) = held else { continue };
            partitions.push(index);
            super::groups::for_each_record(&held.log, &mut self.storage, |record| {
                let (key, value) = (record.key, record.value);
                let Some(id) = key.and_then(parse_txn_key) else {
                    return;
                };
                let meta = value.and_then(parse_txn_value);
                if value.is_some() && meta.is_none() {
                    tracing::error!(transactional_id = %id, "unreadable transaction state record");
                    return;
                }
                found.insert(id, (index, meta));
            });
        }
        let (mut ids, mut ending) = (0usize, 0usize);
        for (id, (partition, meta)) in found {
            if txn_partition(&id, count) != partition {
                tracing::warn!(transactional_id = %id, partition, "transaction state in a partition that does not place it; ignored");
                continue;
            }
            let Some(meta) = meta else {
                self.transactions.ids.remove(&id);
                continue;
            };
            ids += 1;
            let markers: BTreeMap<TopicPartition, MarkerProgress> = if meta.state.preparing() {
                ending += 1;
                self.transactions.ending.insert(id.clone());
                meta.partitions
                    .iter()
                    .map(|tp| (tp.clone(), MarkerProgress::ToWrite))
                    .collect()
            } else {
                BTreeMap::new()
            };
            self.transactions.ids.insert(
                id,
                TxnEntry {
                    meta,
                    partition,
                    written: None,
                    markers,
                    open_since_ms: None,
                },
            );
        }
        self.transactions.loaded.extend(partitions);
        tracing::info!(ids, ending, "loaded transaction state");
    }

    /// This node no longer leads a partition of `__transaction_state`:
    /// its ids are another coordinator's now.
    pub(super) fn unload_txn_partition(&mut self, partition: i32) {
        if !self.transactions.loaded.remove(&partition) {
            return;
        }
        let gone: Vec<String> = self
            .transactions
            .ids
            .iter()
            .filter(|(_, e)| e.partition == partition)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.transactions.ids.remove(&id);
            self.transactions.ending.remove(&id);
        }
    }

    /// Moves ending transactions on: writes the markers of those whose
    /// PREPARE is durable, and completes those whose markers all are.
    /// Call after every input.
    pub fn tend_transactions(&mut self, now: Now) {
        // A retry that came due is over even when nothing is left to end
        // (the ids moved to another coordinator) or the disk is offline:
        // left set, it would arm the retry timer in the past for good.
        if self
            .transactions
            .retry_ms
            .is_some_and(|at| at <= now.monotonic_ms)
        {
            self.transactions.retry_ms = None;
        }
        if self.transactions.ending.is_empty() || self.storage_offline() {
            return;
        }
        let ending: Vec<String> = self.transactions.ending.iter().cloned().collect();
        for id in ending {
            self.tend_transaction(now, &id);
        }
    }

    fn tend_transaction(&mut self, now: Now, id: &str) {
        let Some(entry) = self.transactions.ids.get(id) else {
            return;
        };
        if let Some(written) = &entry.written {
            match self.write_state(written) {
                WaitState::Done => {}
                // No marker before the PREPARE is durable and replicated.
                WaitState::Waiting | WaitState::Failed => return,
            }
        }
        let meta = entry.meta.clone();
        let coordinator_epoch = self.coordinator_epoch(entry.partition);
        let markers: Vec<(TopicPartition, MarkerProgress)> = entry
            .markers
            .iter()
            .map(|(tp, m)| (tp.clone(), m.clone()))
            .collect();
        let mut progress = Vec::new();
        for (tp, marker) in markers {
            let next = match marker {
                MarkerProgress::ToWrite if self.transactions.retry_ms.is_none() => {
                    self.write_marker_for(now, id, &meta, coordinator_epoch, &tp)
                }
                MarkerProgress::Writing(written) => match self.write_state(&written) {
                    WaitState::Done => MarkerProgress::Written,
                    WaitState::Waiting => MarkerProgress::Writing(written),
                    // The partition moved or was cut: write it again.
                    WaitState::Failed => MarkerProgress::ToWrite,
                },
                other => other,
            };
            // A marker that waits for a retry already pending keeps that
            // deadline: moving it on each input would starve the retry
            // while a client keeps asking (as librdkafka does every 20 ms
            // while the transaction ends).
            if next == MarkerProgress::ToWrite && self.transactions.retry_ms.is_none() {
                self.transactions.retry_ms = Some(now.monotonic_ms + MARKER_RETRY_MS);
            }
            progress.push((tp, next));
        }
        let entry = self.transactions.ids.get_mut(id).expect("looked up above");
        entry.markers = progress.into_iter().collect();
        if entry
            .markers
            .values()
            .all(|m| *m == MarkerProgress::Written)
        {
            let done = entry.meta.completed(now.wall_ms);
            let result = if done.state == TxnState::CompleteCommit {
                "committed"
            } else {
                "aborted"
            };
            match self.write_txn(now, id, done) {
                Ok(_) => tracing::debug!(transactional_id = id, result, "transaction complete"),
                Err(error) => {
                    tracing::warn!(
                        transactional_id = id,
                        ?error,
                        "cannot record a transaction's end yet"
                    );
                    self.transactions.retry_ms = Some(now.monotonic_ms + MARKER_RETRY_MS);
                }
            }
        }
    }

    /// Writes one marker of an ending transaction on a partition this node
    /// leads (markers for other leaders go as WriteTxnMarkers).
    fn write_marker_for(
        &mut self,
        now: Now,
        id: &str,
        meta: &TxnMetadata,
        coordinator_epoch: i32,
        tp: &TopicPartition,
    ) -> MarkerProgress {
        let outcome = meta.state == TxnState::PrepareCommit;
        let commit = if self.config.mutated(Mutation::AbortMarkersCommit) {
            true
        } else if self.config.mutated(Mutation::CommitMarkersAbort) {
            false
        } else if self.config.mutated(Mutation::CommitSplitsLastPartition) && outcome {
            meta.partitions.last() != Some(tp)
        } else {
            outcome
        };
        let marker = crate::producers::TxnMarker {
            producer_id: meta.producer_id,
            producer_epoch: meta.epoch,
            coordinator_epoch,
            commit,
        };
        if self.in_cluster() {
            match self.registration(&tp.topic, tp.partition).map(|r| r.leader) {
                Some(leader) if leader >= 0 && leader != self.config.node_id => {
                    self.transactions.outbox.push(RemoteMarker {
                        transactional_id: id.to_string(),
                        leader,
                        partition: tp.clone(),
                        marker,
                    });
                    return MarkerProgress::Sent;
                }
                Some(leader) if leader < 0 => return MarkerProgress::ToWrite,
                // Gone from the metadata: nothing to mark.
                None if !self.topic_exists(&tp.topic) => return MarkerProgress::Written,
                _ => {}
            }
        }
        match self.write_txn_marker(now, &tp.topic, tp.partition, marker) {
            Ok(write) => MarkerProgress::Writing(GroupWrite {
                seq: write.seq,
                marks: write.mark.into_iter().collect(),
            }),
            // A deleted topic needs no marker.
            Err(ResponseError::UnknownTopicOrPartition) if !self.topic_exists(&tp.topic) => {
                MarkerProgress::Written
            }
            Err(
                error @ (ResponseError::InvalidProducerEpoch
                | ResponseError::TransactionCoordinatorFenced),
            ) => {
                tracing::error!(partition = %tp, ?error, producer_id = meta.producer_id, "a transaction marker was refused; this coordinator stops ending the transaction");
                MarkerProgress::Refused
            }
            Err(error) => {
                tracing::debug!(partition = %tp, ?error, "a transaction marker waits for its partition");
                MarkerProgress::ToWrite
            }
        }
    }

    /// A leader answered a marker this coordinator sent (`None`: it is
    /// durable and replicated there; an error, or `lost` when no answer
    /// will come).
    pub fn marker_answered(
        &mut self,
        now: Now,
        transactional_id: &str,
        producer_id: i64,
        partition: &TopicPartition,
        error: Option<ResponseError>,
    ) {
        let topic_gone = !self.topic_exists(&partition.topic);
        let Some(entry) = self.transactions.ids.get_mut(transactional_id) else {
            return;
        };
        if entry.meta.producer_id != producer_id {
            return;
        }
        let Some(progress) = entry.markers.get_mut(partition) else {
            return;
        };
        if *progress != MarkerProgress::Sent {
            return;
        }
        *progress = match error {
            None => MarkerProgress::Written,
            Some(ResponseError::UnknownTopicOrPartition) if topic_gone => MarkerProgress::Written,
            Some(
                error @ (ResponseError::InvalidProducerEpoch
                | ResponseError::TransactionCoordinatorFenced),
            ) => {
                tracing::error!(%partition, ?error, producer_id, "a transaction marker was refused; this coordinator stops ending the transaction");
                MarkerProgress::Refused
            }
            Some(error) => {
                tracing::debug!(%partition, ?error, "a transaction marker waits for its partition");
                self.transactions.retry_ms = Some(now.monotonic_ms + MARKER_RETRY_MS);
                MarkerProgress::ToWrite
            }
        };
    }

    /// Aborts open transactions past their timeout (fencing their producer)
    /// and removes ids idle past `transactional.id.expiration.ms`. A
    /// transaction times out by its recorded start on the wall clock, as
    /// Kafka's does, or by the monotonic clock since this coordinator saw it
    /// open, whichever comes first: a wall clock set back cannot keep it
    /// open.
    pub fn sweep_transactions(&mut self, now: Now) {
        if self.storage_offline() {
            return;
        }
        for entry in self.transactions.ids.values_mut() {
            if entry.meta.state == TxnState::Ongoing && entry.open_since_ms.is_none() {
                entry.open_since_ms = Some(now.monotonic_ms);
            }
        }
        let wall_clock_only = self.config.mutated(Mutation::TxnTimeoutWallClockOnly);
        let open_too_long = |e: &TxnEntry| {
            !wall_clock_only
                && e.open_since_ms.is_some_and(|since| {
                    now.monotonic_ms.saturating_sub(since) > i64::from(e.meta.timeout_ms)
                })
        };
        let timed_out: Vec<(String, TxnMetadata)> = self
            .transactions
            .ids
            .iter()
            .filter(|(_, e)| {
                e.meta.state == TxnState::Ongoing
                    && (e.meta.timed_out(now.wall_ms) || open_too_long(e))
            })
            .map(|(id, e)| (id.clone(), e.meta.fenced_abort(now.wall_ms)))
            .collect();
        for (id, next) in timed_out {
            tracing::info!(transactional_id = %id, producer_id = next.producer_id, "aborting a transaction past its timeout");
            if let Err(error) = self.write_txn(now, &id, next) {
                tracing::warn!(transactional_id = %id, ?error, "cannot abort a timed-out transaction yet");
            }
        }
        let interval = self.config.txn_expiry_check_interval_ms;
        if now
            .wall_ms
            .saturating_sub(self.transactions.expiry_checked_ms)
            < interval
        {
            return;
        }
        self.transactions.expiry_checked_ms = now.wall_ms;
        let expiration = self.config.txn_id_expiration_ms;
        let expired: Vec<String> = self
            .transactions
            .ids
            .iter()
            .filter(|(_, e)| e.meta.expired(now.wall_ms, expiration))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            match self.remove_txn(now, &id) {
                Ok(()) => {
                    tracing::info!(transactional_id = %id, "removed an expired transactional id")
                }
                Err(error) => {
                    tracing::warn!(transactional_id = %id, ?error, "cannot remove an expired transactional id")
                }
            }
        }
    }
}
