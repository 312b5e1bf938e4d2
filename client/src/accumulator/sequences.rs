//! Sequence numbers of an idempotent producer (Kafka's `TxnPartitionMap`
//! and the idempotent half of its `TransactionManager`), kept by the
//! accumulator beside its queues. No IO: the accumulator reports what
//! happened to each batch and asks what may be drained.
//!
//! A batch gets its partition's next sequence when it is drained the first
//! time and keeps it, bytes and all, on every retry, so a leader that wrote
//! it before answers the retry as a duplicate. The leader remembers the
//! last five batches of each producer, so a partition's batches from its
//! oldest unacknowledged one to its newest are at most five, however the
//! answers come back (answers heard out of order would otherwise let later
//! batches push a lost one out of the leader's memory). Once one is
//! retried, the partition sends only its oldest unacknowledged batch until
//! the retries are through, so a retry never lands behind a later batch.
//!
//! A gap in a partition's sequences (a batch refused for good, or
//! OUT_OF_ORDER_SEQUENCE_NUMBER for the batch that should have been next)
//! is closed with a new epoch, which the leader takes from sequence 0. The
//! partition waits until none of its batches is on the wire and those older
//! than the gap, whose outcome may be unknown, are through (retried with
//! their old epoch, so the leader can still answer them as duplicates);
//! then the batches queued from the gap on, which the leader cannot have
//! written, get new sequences from 0 under the new epoch. The epoch is
//! bumped here, as Java's idempotent producer does (the leader accepts any
//! newer epoch); past epoch 32767 the producer asks for a new id instead.
//!
//! A batch given up with its outcome unknown (it expired, or ran out of
//! retries after a lost answer) leaves its partition unresolved: no new
//! batch gets a sequence until the partition has nothing unacknowledged.
//! If the leader acknowledged a batch after the lost one, that one was
//! written and nothing changes; if not, the partition restarts with a new
//! epoch.
//!
//! Other partitions keep their epoch until their own unacknowledged
//! batches are through; their next batch then starts at sequence 0 of the
//! current epoch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use sluice_core::batch::increment_sequence;

use super::Failure;
use crate::batch::ProducerIdentity;
use crate::producer_id::ProducerEpoch;
use crate::record::TopicPartition;

/// Batches of a partition from its oldest unacknowledged one to its newest:
/// the leader recognises a retry only among the last five batches of a
/// producer.
pub const UNACKED_PER_PARTITION_MAX: usize = 5;

/// One partition's sequences.
#[derive(Debug, Clone)]
struct PartitionSequences {
    /// The id and epoch the sequences belong to.
    producer: ProducerEpoch,
    sequence_next: i32,
    /// The last sequence the leader acknowledged (-1: none yet).
    sequence_acked_last: i32,
    /// The batch whose acknowledgement set `sequence_acked_last`.
    acked_batch_last: Option<u64>,
    /// Batches given a sequence and neither acknowledged nor given up (on
    /// the wire, or queued for a retry): id → (first, last sequence).
    unacked: BTreeMap<u64, (i32, i32)>,
    /// The last batches given sequences, oldest first, at most
    /// `UNACKED_PER_PARTITION_MAX`.
    assigned_recent: VecDeque<u64>,
    /// The latest batch given up with an unknown outcome, and the sequence
    /// after it.
    unresolved: Option<(u64, i32)>,
}

impl PartitionSequences {
    fn new(producer: ProducerEpoch) -> PartitionSequences {
        PartitionSequences {
            producer,
            sequence_next: 0,
            sequence_acked_last: -1,
            acked_batch_last: None,
            unacked: BTreeMap::new(),
            assigned_recent: VecDeque::new(),
            unresolved: None,
        }
    }

    /// The sequence the leader expects next, as far as its answers tell.
    fn sequence_after_acked(&self) -> i32 {
        if self.sequence_acked_last < 0 {
            0
        } else {
            increment_sequence(self.sequence_acked_last, 1)
        }
    }

    /// Whether one more batch would put the oldest unacknowledged one out
    /// of the leader's memory.
    fn window_full(&self) -> bool {
        self.unacked.keys().next().is_some_and(|oldest| {
            let since_oldest = self.assigned_recent.iter().filter(|id| *id >= oldest);
            since_oldest.count() >= UNACKED_PER_PARTITION_MAX
        })
    }

    fn take(&mut self, batch_id: u64, record_count: i32) -> ProducerIdentity {
        assert!(record_count > 0, "a batch has records");
        assert!(
            !self.window_full(),
            "batch {batch_id} would outrun the leader's memory"
        );
        let first = self.sequence_next;
        let last = increment_sequence(first, record_count - 1);
        assert!(
            self.unacked.insert(batch_id, (first, last)).is_none(),
            "batch {batch_id} given a sequence twice"
        );
        assert!(self.unacked.len() <= UNACKED_PER_PARTITION_MAX);
        self.assigned_recent.push_back(batch_id);
        if self.assigned_recent.len() > UNACKED_PER_PARTITION_MAX {
            self.assigned_recent.pop_front();
        }
        self.sequence_next = increment_sequence(first, record_count);
        ProducerIdentity {
            producer_id: self.producer.producer_id,
            producer_epoch: self.producer.epoch,
            base_sequence: first,
        }
    }
}

/// The producer's id and epoch and every partition's sequences.
#[derive(Debug, Clone, Default)]
pub struct Sequences {
    /// `None` until InitProducerId answers, and after the epoch ran out.
    producer: Option<ProducerEpoch>,
    partitions: BTreeMap<TopicPartition, PartitionSequences>,
    /// Partitions that need a new epoch, with the first batch the leader
    /// cannot have written: it and the batches after it get new sequences.
    restart_wanted: BTreeMap<TopicPartition, u64>,
    /// Partitions ready to restart once the producer has an id again.
    restart_pending: BTreeSet<TopicPartition>,
}

impl Sequences {
    pub fn producer(&self) -> Option<ProducerEpoch> {
        self.producer
    }

    /// The id and epoch InitProducerId granted.
    pub fn set_producer(&mut self, producer: ProducerEpoch) {
        assert!(producer.producer_id >= 0 && producer.epoch >= 0);
        assert!(
            self.producer.is_none(),
            "a producer id is asked only when missing"
        );
        self.producer = Some(producer);
    }

    /// Whether the front batch of `tp` (`front_id`, with a sequence
    /// already or not) may be drained now.
    pub fn may_drain(&self, tp: &TopicPartition, front_id: u64, front_sequenced: bool) -> bool {
        let Some(producer) = self.producer else {
            return false;
        };
        if self.restart_pending.contains(tp) {
            return false;
        }
        let entry = self.partitions.get(tp);
        if front_sequenced {
            let entry = entry.expect("a batch with a sequence has its partition's sequences");
            let oldest = entry.unacked.keys().next() == Some(&front_id);
            let before_gap = self
                .restart_wanted
                .get(tp)
                .is_none_or(|&gap| front_id < gap);
            return oldest && before_gap;
        }
        if self.restart_wanted.contains_key(tp) {
            return false;
        }
        entry.is_none_or(|entry| {
            // A partition left on an older epoch restarts only once its
            // batches are through.
            let room = if entry.producer == producer {
                !entry.window_full()
            } else {
                entry.unacked.is_empty()
            };
            entry.unresolved.is_none() && room
        })
    }

    /// Gives a batch drained for the first time the partition's next
    /// sequences; a partition left on an older epoch starts again at 0.
    pub fn assign(
        &mut self,
        tp: &TopicPartition,
        batch_id: u64,
        record_count: i32,
    ) -> ProducerIdentity {
        let producer = self.producer.expect("drained only with a producer id");
        let entry = self
            .partitions
            .entry(tp.clone())
            .or_insert_with(|| PartitionSequences::new(producer));
        if entry.producer != producer {
            assert!(entry.unacked.is_empty(), "{tp} restarted with batches out");
            *entry = PartitionSequences::new(producer);
        }
        entry.take(batch_id, record_count)
    }

    /// The leader acknowledged a batch (wrote it, or had it already).
    pub fn acknowledged(&mut self, tp: &TopicPartition, batch_id: u64) {
        let entry = self.entry(tp);
        let (_, last) = entry
            .unacked
            .remove(&batch_id)
            .expect("an acknowledged batch was unacknowledged");
        if entry.acked_batch_last.is_none_or(|id| id < batch_id) {
            entry.sequence_acked_last = last;
            entry.acked_batch_last = Some(batch_id);
        }
    }

    /// Whether a failed batch is worth another try, as Java's
    /// `TransactionManager.canRetry` decides for an idempotent producer;
    /// asks for a new epoch when the failure shows a gap.
    pub fn retry_wanted(
        &mut self,
        tp: &TopicPartition,
        batch_id: u64,
        sequence_reset: bool,
        failure: Failure,
    ) -> bool {
        match failure {
            Failure::Retriable => true,
            Failure::Refused => false,
            // The leader lost the producer's state: start again.
            Failure::UnknownProducer => {
                self.want_restart(tp, batch_id);
                true
            }
            Failure::OutOfOrderSequence => {
                let entry = self.entry(tp);
                let (first, _) = entry.unacked[&batch_id];
                let expected = entry.sequence_after_acked();
                let gap = match entry.unresolved {
                    // An earlier batch failed: this one waits for its retry.
                    None if sequence_reset || first != expected => false,
                    // The leader wants another sequence than the next one:
                    // something it acknowledged is gone.
                    None => true,
                    // The batch right after one given up: that one was not
                    // written.
                    Some((_, next)) => next == first,
                };
                if gap {
                    self.want_restart(tp, batch_id);
                }
                true
            }
        }
    }

    /// A batch sent at least once failed for good. A refusal leaves a gap
    /// (a new epoch closes it); otherwise the outcome is unknown.
    pub fn given_up(&mut self, tp: &TopicPartition, batch_id: u64, failure: Failure) {
        let entry = self.entry(tp);
        let (_, last) = entry
            .unacked
            .remove(&batch_id)
            .expect("a batch given up was unacknowledged");
        match failure {
            Failure::Retriable => {
                let next = increment_sequence(last, 1);
                // The latest batch given up is the one a gap would follow.
                if entry.unresolved.is_none_or(|(id, _)| id < batch_id) {
                    entry.unresolved = Some((batch_id, next));
                }
            }
            Failure::Refused | Failure::OutOfOrderSequence | Failure::UnknownProducer => {
                self.want_restart(tp, batch_id)
            }
        }
    }

    /// Resolves partitions whose unacknowledged batches are through, bumps
    /// the epoch for the partitions whose restart is due, and returns the
    /// partitions to restart now (`on_wire` counts a partition's batches
    /// waiting for an answer).
    pub fn restarts_due(
        &mut self,
        on_wire: impl Fn(&TopicPartition) -> usize,
    ) -> Vec<TopicPartition> {
        let mut gaps = Vec::new();
        for (tp, entry) in &mut self.partitions {
            if entry.unresolved.is_some() && entry.unacked.is_empty() {
                if entry.sequence_after_acked() != entry.sequence_next {
                    gaps.push(tp.clone());
                }
                entry.unresolved = None;
            }
        }
        for tp in gaps {
            self.want_restart(&tp, u64::MAX);
        }
        let ready: Vec<TopicPartition> = self
            .restart_wanted
            .iter()
            .filter(|(tp, &gap)| {
                on_wire(tp) == 0
                    && self
                        .partitions
                        .get(*tp)
                        .is_none_or(|entry| entry.unacked.range(..gap).next().is_none())
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        // A partition whose sequences are already older than the producer's
        // epoch restarts in the current one; one on the current epoch needs
        // the next.
        let bump = ready.iter().any(|tp| {
            self.producer
                .is_some_and(|p| self.partitions[tp].producer == p)
        });
        if bump {
            self.producer = self.producer.and_then(|p| {
                p.epoch.checked_add(1).map(|epoch| ProducerEpoch {
                    producer_id: p.producer_id,
                    epoch,
                })
            });
            tracing::debug!(producer = ?self.producer, "bumped the producer epoch");
        }
        for tp in ready {
            self.restart_wanted.remove(&tp);
            self.restart_pending.insert(tp);
        }
        if self.producer.is_none() {
            return Vec::new();
        }
        std::mem::take(&mut self.restart_pending)
            .into_iter()
            .collect()
    }

    /// New sequences from 0, under the current epoch, for the partition's
    /// queued batches (ids and record counts, in queue order): exactly its
    /// unacknowledged ones.
    pub fn restart(
        &mut self,
        tp: &TopicPartition,
        batches: &[(u64, i32)],
    ) -> Vec<ProducerIdentity> {
        let producer = self.producer.expect("a restart waits for a producer id");
        let mut entry = PartitionSequences::new(producer);
        if let Some(old) = self.partitions.get(tp) {
            let queued: Vec<u64> = batches.iter().map(|&(id, _)| id).collect();
            let unacked: Vec<u64> = old.unacked.keys().copied().collect();
            assert_eq!(
                queued, unacked,
                "{tp} restarts with every unacknowledged batch queued"
            );
        }
        let identities = batches
            .iter()
            .map(|&(id, count)| entry.take(id, count))
            .collect();
        self.partitions.insert(tp.clone(), entry);
        identities
    }

    /// Batches of `tp` unacknowledged now.
    pub fn unacked_count(&self, tp: &TopicPartition) -> usize {
        self.partitions
            .get(tp)
            .map_or(0, |entry| entry.unacked.len())
    }

    fn want_restart(&mut self, tp: &TopicPartition, gap_batch_id: u64) {
        let gap = self
            .restart_wanted
            .entry(tp.clone())
            .or_insert(gap_batch_id);
        *gap = (*gap).min(gap_batch_id);
    }

    fn entry(&mut self, tp: &TopicPartition) -> &mut PartitionSequences {
        self.partitions
            .get_mut(tp)
            .expect("a batch with a sequence has its partition's sequences")
    }
}
