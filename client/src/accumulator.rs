//! The producer's record accumulator: per-partition queues of batches, with
//! no IO, no clock and no tasks, so it is tested on its own against a model.
//!
//! Time comes in as `now_ms` (any monotonic millisecond count). The producer
//! appends records; its sender drains the batches that are ready, sends
//! them, and reports each outcome back (`complete`, `retry_or_give_up`).
//!
//! Rules it keeps:
//! - A batch is ready when it is full (the next record did not fit, or it
//!   reached `batch_bytes_max`), has lingered `linger_ms`, is being retried,
//!   is covered by a flush, or the producer is closing.
//! - Memory: every appended byte counts against `buffer_memory_bytes` until
//!   its batch completes, fails or expires; an append that does not fit is
//!   refused (`BufferFull`) and the producer waits, so nothing queues
//!   without bound.
//! - Order: a drained batch leaves its queue; a retried batch goes back to
//!   its place by creation order. Without idempotence, a partition with
//!   retries on has at most one batch in flight, so a retry can never be
//!   overtaken by a later batch. With idempotence it may have five, and
//!   sequence numbers keep the order (see `sequences`): a retried batch is
//!   sent again only once it is the partition's oldest unacknowledged one.
//! - A batch older than `delivery_timeout_ms` is not retried and, while
//!   queued, expires.

mod sequences;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use sluice_core::batch::HEADER_BYTES;

use crate::batch::{BatchBuilder, ProducerIdentity, RecordData};
use crate::config::ProducerConfig;
use crate::producer_id::ProducerEpoch;
use crate::record::TopicPartition;
use sequences::Sequences;
pub use sequences::UNACKED_PER_PARTITION_MAX;

/// Batches one partition may have in flight when retries are off or the
/// producer is idempotent (with retries on and without idempotence, the
/// limit is one, to keep order).
pub const PARTITION_IN_FLIGHT_MAX: usize = 5;

/// Most a new batch reserves up front (Kafka's default `batch.size`):
/// buffer memory counts the bytes records take, so what is reserved beyond
/// them must stay small; a larger batch grows by doubling.
pub const FIRST_RESERVE_BYTES_MAX: usize = 16_384;

#[derive(Debug, Clone)]
pub struct AccumulatorConfig {
    pub batch_bytes_max: usize,
    pub linger_ms: u64,
    pub buffer_memory_bytes: usize,
    /// Largest single record (with its batch header) that can be sent.
    pub record_bytes_max: usize,
    pub retries_max: u32,
    pub delivery_timeout_ms: u64,
    pub in_flight_per_partition_max: usize,
    /// Batches carry a producer id, epoch and sequence numbers.
    pub idempotent: bool,
}

impl AccumulatorConfig {
    pub fn from_producer(config: &ProducerConfig) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_bytes_max: config.batch_bytes_max,
            linger_ms: config.linger_ms,
            buffer_memory_bytes: config.buffer_memory_bytes,
            record_bytes_max: config.request_bytes_max,
            retries_max: config.retries_max,
            delivery_timeout_ms: config.delivery_timeout_ms,
            in_flight_per_partition_max: if config.retries_max > 0 && !config.idempotence {
                1
            } else {
                PARTITION_IN_FLIGHT_MAX
            },
            idempotent: config.idempotence,
        }
    }
}

/// How a sent batch failed, as far as its fate in the log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth another try; the batch may be in the log (a lost connection,
    /// a timeout) or not (a retriable refusal).
    Retriable,
    /// Refused for good: not in the log.
    Refused,
    /// OUT_OF_ORDER_SEQUENCE_NUMBER: the leader expected another sequence.
    OutOfOrderSequence,
    /// UNKNOWN_PRODUCER_ID: the leader has no state for the producer.
    UnknownProducer,
}

/// Why a record was not appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// Not enough buffer memory now; try again after batches complete.
    BufferFull,
    /// The record can never be sent under the configured limits.
    RecordTooLarge {
        bytes: usize,
        limit_name: &'static str,
        limit: usize,
    },
}

/// A batch of one partition, with one delivery handle per record (in
/// offset-delta order).
#[derive(Debug)]
pub struct ProducerBatch<T> {
    pub id: u64,
    pub topic_partition: TopicPartition,
    pub builder: BatchBuilder,
    pub deliveries: Vec<T>,
    /// The bytes sent the first time, sent again unchanged on a retry
    /// (unless an epoch bump gave the batch new sequences).
    pub encoded: Option<Bytes>,
    /// Producer id, epoch and base sequence; `ProducerIdentity::NONE`
    /// without idempotence and until the batch is first drained.
    pub identity: ProducerIdentity,
    /// An epoch bump gave the batch new sequences after it was sent.
    sequence_reset: bool,
    created_ms: u64,
    attempts: u32,
    retry_at_ms: u64,
    reserved_bytes: usize,
    /// No more records: it was full or it has been sent once.
    sealed: bool,
}

impl<T> ProducerBatch<T> {
    /// Retries so far (0 on the first send).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the batch has sequence numbers (it was drained by an
    /// idempotent producer).
    pub fn has_sequence(&self) -> bool {
        self.identity.base_sequence >= 0
    }
}

/// What happened to a failed batch.
#[derive(Debug)]
pub enum Retry<T> {
    /// Back at the front of its queue, ready after the backoff.
    Scheduled,
    /// Not retried (error not retriable, retries or time used up): the
    /// deliveries to fail. Its memory is released.
    GaveUp(Vec<T>),
}

#[derive(Debug)]
struct PartitionQueue<T> {
    batches: VecDeque<ProducerBatch<T>>,
    in_flight: usize,
}

#[derive(Debug)]
pub struct Accumulator<T> {
    config: AccumulatorConfig,
    /// Only partitions with queued or in-flight batches have an entry.
    queues: BTreeMap<TopicPartition, PartitionQueue<T>>,
    buffer_bytes_used: usize,
    batch_id_next: u64,
    /// Batches not yet completed, failed or expired.
    incomplete: BTreeSet<u64>,
    /// Batches with a lower id are sent without lingering (a flush).
    flush_before_id: u64,
    closing: bool,
    /// Set when an append created or sealed a batch: only then can the
    /// sender have something new to do or a new linger deadline.
    sender_news: bool,
    /// The idempotent producer's id, epoch and sequences.
    sequences: Sequences,
}

impl<T> Accumulator<T> {
    pub fn new(config: AccumulatorConfig) -> Accumulator<T> {
        assert!(config.batch_bytes_max > 0 && config.buffer_memory_bytes > 0);
        assert!(config.in_flight_per_partition_max > 0);
        assert!(
            config.retries_max == 0 || config.in_flight_per_partition_max == 1 || config.idempotent,
            "retries with several batches in flight per partition could reorder records"
        );
        assert!(
            !config.idempotent || config.in_flight_per_partition_max <= UNACKED_PER_PARTITION_MAX,
            "the leader recognises a retry only among a producer's last five batches"
        );
        Accumulator {
            config,
            queues: BTreeMap::new(),
            buffer_bytes_used: 0,
            batch_id_next: 0,
            incomplete: BTreeSet::new(),
            flush_before_id: 0,
            closing: false,
            sender_news: false,
            sequences: Sequences::default(),
        }
    }

    /// The idempotent producer's current id and epoch.
    pub fn producer(&self) -> Option<ProducerEpoch> {
        self.sequences.producer()
    }

    /// An idempotent producer without an id (InitProducerId is due).
    pub fn needs_producer_id(&self) -> bool {
        self.config.idempotent && self.sequences.producer().is_none()
    }

    /// The id and epoch InitProducerId granted.
    pub fn set_producer(&mut self, producer: ProducerEpoch) {
        assert!(self.config.idempotent);
        self.sequences.set_producer(producer);
    }

    pub fn buffer_bytes_used(&self) -> usize {
        self.buffer_bytes_used
    }

    /// No batch is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.incomplete.is_empty()
    }

    /// Appends a record to the partition's open batch, or to a new one.
    /// Returns the batch id. On refusal the delivery handle comes back.
    pub fn append(
        &mut self,
        tp: &TopicPartition,
        record: &RecordData<'_>,
        delivery: T,
        now_ms: impl FnOnce() -> u64,
    ) -> Result<u64, (AppendError, T)> {
        let alone_bytes = HEADER_BYTES + BatchBuilder::new().next_record_bytes(record);
        if let Some(error) = self.too_large(alone_bytes) {
            return Err((error, delivery));
        }
        let batch_bytes_max = self.config.batch_bytes_max;
        let memory_left = self.config.buffer_memory_bytes - self.buffer_bytes_used;
        if !self.queues.contains_key(tp) {
            self.queues.insert(
                tp.clone(),
                PartitionQueue {
                    batches: VecDeque::new(),
                    in_flight: 0,
                },
            );
        }
        let queue = self.queues.get_mut(tp).expect("inserted above");
        if let Some(open) = queue.batches.back_mut().filter(|b| !b.sealed) {
            let bytes = open.builder.next_record_bytes(record);
            if open.builder.size_bytes() + bytes <= batch_bytes_max {
                if bytes > memory_left {
                    // Out of memory: the open batch goes now rather than
                    // after its linger, so its memory comes back sooner
                    // (Kafka sends everything while memory is exhausted).
                    open.sealed = true;
                    self.sender_news = true;
                    return Err((AppendError::BufferFull, delivery));
                }
                open.builder.append(record);
                open.deliveries.push(delivery);
                open.reserved_bytes += bytes;
                open.sealed = open.builder.size_bytes() >= batch_bytes_max;
                self.sender_news |= open.sealed;
                self.buffer_bytes_used += bytes;
                return Ok(open.id);
            }
        }
        if alone_bytes > memory_left {
            if let Some(open) = queue.batches.back_mut().filter(|b| !b.sealed) {
                open.sealed = true;
                self.sender_news = true;
            }
            self.drop_queue_if_idle(tp);
            return Err((AppendError::BufferFull, delivery));
        }
        if let Some(open) = queue.batches.back_mut() {
            open.sealed = true;
        }
        let mut builder = BatchBuilder::with_capacity(batch_bytes_max.min(FIRST_RESERVE_BYTES_MAX));
        builder.append(record);
        let now_ms = now_ms();
        let id = self.batch_id_next;
        self.batch_id_next += 1;
        queue.batches.push_back(ProducerBatch {
            id,
            topic_partition: tp.clone(),
            sealed: builder.size_bytes() >= batch_bytes_max,
            builder,
            deliveries: vec![delivery],
            encoded: None,
            identity: ProducerIdentity::NONE,
            sequence_reset: false,
            created_ms: now_ms,
            attempts: 0,
            retry_at_ms: now_ms,
            reserved_bytes: alone_bytes,
        });
        self.buffer_bytes_used += alone_bytes;
        self.incomplete.insert(id);
        self.sender_news = true;
        Ok(id)
    }

    /// Whether an append since the last call created or sealed a batch
    /// (and so the sender must look again); clears the flag.
    pub fn take_sender_news(&mut self) -> bool {
        std::mem::take(&mut self.sender_news)
    }

    fn too_large(&self, bytes: usize) -> Option<AppendError> {
        let limits = [
            ("request_bytes_max", self.config.record_bytes_max),
            ("buffer_memory_bytes", self.config.buffer_memory_bytes),
        ];
        limits
            .into_iter()
            .find(|&(_, limit)| bytes > limit)
            .map(|(limit_name, limit)| AppendError::RecordTooLarge {
                bytes,
                limit_name,
                limit,
            })
    }

    fn ready(&self, batch: &ProducerBatch<T>, queued: usize, now_ms: u64) -> bool {
        now_ms >= batch.retry_at_ms && now_ms >= self.send_at_ms(batch, queued)
    }

    /// When the batch may be sent, ignoring the retry backoff.
    fn send_at_ms(&self, batch: &ProducerBatch<T>, queued: usize) -> u64 {
        let urgent = batch.attempts > 0
            || batch.sealed
            || queued > 1
            || batch.id < self.flush_before_id
            || self.closing;
        if urgent {
            batch.retry_at_ms
        } else {
            batch.created_ms.saturating_add(self.config.linger_ms)
        }
    }

    /// Takes at most one ready batch from each partition that `sendable`
    /// accepts (the sender passes "has a known leader") and marks it in
    /// flight. The batches are sealed: later records go to new batches.
    /// With idempotence, a batch drained the first time gets its sequence
    /// numbers, and partitions whose sequences forbid sending wait.
    pub fn drain(
        &mut self,
        now_ms: u64,
        mut sendable: impl FnMut(&TopicPartition) -> bool,
    ) -> Vec<ProducerBatch<T>> {
        if self.config.idempotent {
            self.restart_sequences();
        }
        let mut ready = Vec::new();
        for (tp, queue) in &self.queues {
            if queue.in_flight >= self.config.in_flight_per_partition_max {
                continue;
            }
            let Some(front) = queue.batches.front() else {
                continue;
            };
            if self.ready(front, queue.batches.len(), now_ms)
                && sendable(tp)
                && self.sequences_allow(tp, front)
            {
                ready.push(tp.clone());
            }
        }
        let mut drained = Vec::with_capacity(ready.len());
        for tp in ready {
            let queue = self.queues.get_mut(&tp).expect("listed above");
            let mut batch = queue.batches.pop_front().expect("has a front batch");
            batch.sealed = true;
            queue.in_flight += 1;
            if self.config.idempotent && !batch.has_sequence() {
                let count = batch.builder.record_count();
                batch.identity = self.sequences.assign(&tp, batch.id, count);
            }
            drained.push(batch);
        }
        if self.config.idempotent {
            self.check_sequences();
        }
        drained
    }

    /// Whether the partition's sequences let its front batch go (always,
    /// without idempotence).
    fn sequences_allow(&self, tp: &TopicPartition, front: &ProducerBatch<T>) -> bool {
        !self.config.idempotent || self.sequences.may_drain(tp, front.id, front.has_sequence())
    }

    /// Restarts the sequences of the partitions whose restart is due: their
    /// queued batches get new sequences, and are encoded again.
    fn restart_sequences(&mut self) {
        let queues = &self.queues;
        let due = self
            .sequences
            .restarts_due(|tp| queues.get(tp).map_or(0, |q| q.in_flight));
        for tp in due {
            let Some(queue) = self.queues.get_mut(&tp) else {
                self.sequences.restart(&tp, &[]);
                continue;
            };
            assert_eq!(queue.in_flight, 0, "{tp} restarts with batches on the wire");
            let batches: Vec<(u64, i32)> = queue
                .batches
                .iter()
                .filter(|b| b.has_sequence())
                .map(|b| (b.id, b.builder.record_count()))
                .collect();
            let identities = self.sequences.restart(&tp, &batches);
            let sequenced = queue.batches.iter_mut().filter(|b| b.has_sequence());
            for (batch, identity) in sequenced.zip(identities) {
                tracing::debug!(%tp, batch = batch.id, ?identity, "new sequence after an epoch bump");
                batch.identity = identity;
                batch.encoded = None;
                batch.sequence_reset = true;
            }
        }
    }

    /// Every partition's unacknowledged batches are exactly its queued
    /// batches with sequences and those on the wire.
    fn check_sequences(&self) {
        for (tp, queue) in &self.queues {
            let queued = queue.batches.iter().filter(|b| b.has_sequence()).count();
            assert_eq!(
                self.sequences.unacked_count(tp),
                queued + queue.in_flight,
                "{tp}: sequences and queues disagree"
            );
        }
    }

    /// The earliest time something changes on its own: a batch becomes
    /// ready (lingered, backed off) on a sendable partition, or a queued
    /// batch expires.
    pub fn next_deadline_ms(
        &self,
        mut sendable: impl FnMut(&TopicPartition) -> bool,
    ) -> Option<u64> {
        let mut deadline: Option<u64> = None;
        for (tp, queue) in &self.queues {
            let Some(front) = queue.batches.front() else {
                continue;
            };
            let mut candidate = front
                .created_ms
                .saturating_add(self.config.delivery_timeout_ms);
            if queue.in_flight < self.config.in_flight_per_partition_max
                && sendable(tp)
                && self.sequences_allow(tp, front)
            {
                let send_at = self
                    .send_at_ms(front, queue.batches.len())
                    .max(front.retry_at_ms);
                candidate = candidate.min(send_at);
            }
            deadline = Some(deadline.map_or(candidate, |d| d.min(candidate)));
        }
        deadline
    }

    /// A sent batch was written (or the leader had it already): releases
    /// its memory and returns its deliveries.
    pub fn complete(&mut self, batch: ProducerBatch<T>) -> Vec<T> {
        if batch.has_sequence() {
            self.sequences
                .acknowledged(&batch.topic_partition, batch.id);
        }
        self.finish(batch)
    }

    /// Takes a batch that was in flight out for good.
    fn finish(&mut self, batch: ProducerBatch<T>) -> Vec<T> {
        let tp = batch.topic_partition.clone();
        let queue = self
            .queues
            .get_mut(&tp)
            .expect("an in-flight batch has a queue");
        assert!(
            queue.in_flight > 0,
            "completing a batch that is not in flight"
        );
        queue.in_flight -= 1;
        self.release(batch.id, batch.reserved_bytes);
        self.drop_queue_if_idle(&tp);
        batch.deliveries
    }

    /// A sent batch failed: puts it back in its queue, in creation order,
    /// to be sent again after `backoff_ms`, or gives up on it.
    pub fn retry_or_give_up(
        &mut self,
        mut batch: ProducerBatch<T>,
        now_ms: u64,
        failure: Failure,
        backoff_ms: u64,
    ) -> Retry<T> {
        let tp = batch.topic_partition.clone();
        let expired = now_ms
            >= batch
                .created_ms
                .saturating_add(self.config.delivery_timeout_ms);
        let retriable = if batch.has_sequence() {
            self.sequences
                .retry_wanted(&tp, batch.id, batch.sequence_reset, failure)
        } else {
            failure == Failure::Retriable
        };
        if !retriable || expired || batch.attempts >= self.config.retries_max {
            if batch.has_sequence() {
                self.sequences.given_up(&tp, batch.id, failure);
            }
            return Retry::GaveUp(self.finish(batch));
        }
        let queue = self
            .queues
            .get_mut(&tp)
            .expect("an in-flight batch has a queue");
        assert!(
            queue.in_flight > 0,
            "retrying a batch that is not in flight"
        );
        queue.in_flight -= 1;
        assert!(
            self.config.idempotent || queue.in_flight == 0,
            "a retry with another batch in flight could reorder"
        );
        batch.attempts += 1;
        batch.retry_at_ms = now_ms.saturating_add(backoff_ms);
        let place = queue
            .batches
            .iter()
            .position(|queued| queued.id > batch.id)
            .unwrap_or(queue.batches.len());
        queue.batches.insert(place, batch);
        Retry::Scheduled
    }

    /// Removes queued batches older than the delivery timeout; returns the
    /// deliveries to fail, per partition. An expired batch that was sent
    /// before may be in the log: its partition's sequences are unresolved.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(TopicPartition, Vec<T>)> {
        let timeout_ms = self.config.delivery_timeout_ms;
        let mut expired = Vec::new();
        let mut released = Vec::new();
        for (tp, queue) in self.queues.iter_mut() {
            while queue
                .batches
                .front()
                .is_some_and(|b| now_ms >= b.created_ms.saturating_add(timeout_ms))
            {
                let batch = queue.batches.pop_front().expect("checked");
                if batch.has_sequence() {
                    self.sequences.given_up(tp, batch.id, Failure::Retriable);
                }
                released.push((batch.id, batch.reserved_bytes));
                expired.push((tp.clone(), batch.deliveries));
            }
        }
        for (id, bytes) in released {
            self.release(id, bytes);
        }
        for (tp, _) in &expired {
            self.drop_queue_if_idle(tp);
        }
        expired
    }

    /// Removes every queued batch (those in flight stay): the producer
    /// cannot go on. Returns the deliveries to fail.
    pub fn abort_queued(&mut self) -> Vec<(TopicPartition, Vec<T>)> {
        let mut aborted = Vec::new();
        let mut released = Vec::new();
        for (tp, queue) in self.queues.iter_mut() {
            for batch in queue.batches.drain(..) {
                if batch.has_sequence() {
                    self.sequences.given_up(tp, batch.id, Failure::Retriable);
                }
                released.push((batch.id, batch.reserved_bytes));
                aborted.push((tp.clone(), batch.deliveries));
            }
        }
        for (id, bytes) in released {
            self.release(id, bytes);
        }
        for (tp, _) in &aborted {
            self.drop_queue_if_idle(tp);
        }
        aborted
    }

    /// Makes every batch that exists now ready at once; returns the mark to
    /// pass to `is_flushed`.
    pub fn begin_flush(&mut self) -> u64 {
        self.flush_before_id = self.batch_id_next;
        self.batch_id_next
    }

    /// Every batch created before the flush mark has completed or failed.
    pub fn is_flushed(&self, mark: u64) -> bool {
        self.incomplete.range(..mark).next().is_none()
    }

    /// From now on every batch is ready at once.
    pub fn close(&mut self) {
        self.closing = true;
    }

    fn release(&mut self, id: u64, bytes: usize) {
        assert!(self.incomplete.remove(&id), "batch {id} released twice");
        assert!(
            bytes <= self.buffer_bytes_used,
            "releasing more memory than reserved"
        );
        self.buffer_bytes_used -= bytes;
    }

    fn drop_queue_if_idle(&mut self, tp: &TopicPartition) {
        if self
            .queues
            .get(tp)
            .is_some_and(|q| q.batches.is_empty() && q.in_flight == 0)
        {
            self.queues.remove(tp);
        }
    }
}

#[cfg(test)]
mod tests;
