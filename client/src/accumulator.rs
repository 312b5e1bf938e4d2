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
//!   the front, and with retries on a partition has at most one batch in
//!   flight, so a retry can never be overtaken by a later batch.
//! - A batch older than `delivery_timeout_ms` is not retried and, while
//!   queued, expires.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use sluice_core::batch::HEADER_BYTES;

use crate::batch::{BatchBuilder, RecordData};
use crate::config::ProducerConfig;
use crate::record::TopicPartition;

/// Batches one partition may have in flight when retries are off (with
/// retries on, the limit is one, to keep order).
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
            in_flight_per_partition_max: if config.retries_max > 0 {
                1
            } else {
                PARTITION_IN_FLIGHT_MAX
            },
        }
    }
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
    /// The bytes sent the first time, sent again unchanged on a retry.
    pub encoded: Option<Bytes>,
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
}

impl<T> Accumulator<T> {
    pub fn new(config: AccumulatorConfig) -> Accumulator<T> {
        assert!(config.batch_bytes_max > 0 && config.buffer_memory_bytes > 0);
        assert!(config.in_flight_per_partition_max > 0);
        assert!(
            config.retries_max == 0 || config.in_flight_per_partition_max == 1,
            "retries with several batches in flight per partition could reorder records"
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
        }
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
    pub fn drain(
        &mut self,
        now_ms: u64,
        mut sendable: impl FnMut(&TopicPartition) -> bool,
    ) -> Vec<ProducerBatch<T>> {
        let ready: Vec<TopicPartition> = self
            .queues
            .iter()
            .filter(|(_, q)| q.in_flight < self.config.in_flight_per_partition_max)
            .filter(|(_, q)| {
                q.batches
                    .front()
                    .is_some_and(|b| self.ready(b, q.batches.len(), now_ms))
            })
            .map(|(tp, _)| tp.clone())
            .filter(|tp| sendable(tp))
            .collect();
        let mut drained = Vec::with_capacity(ready.len());
        for tp in ready {
            let queue = self.queues.get_mut(&tp).expect("listed above");
            let mut batch = queue.batches.pop_front().expect("has a front batch");
            batch.sealed = true;
            queue.in_flight += 1;
            drained.push(batch);
        }
        drained
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
            if queue.in_flight < self.config.in_flight_per_partition_max && sendable(tp) {
                let send_at = self
                    .send_at_ms(front, queue.batches.len())
                    .max(front.retry_at_ms);
                candidate = candidate.min(send_at);
            }
            deadline = Some(deadline.map_or(candidate, |d| d.min(candidate)));
        }
        deadline
    }

    /// A sent batch succeeded (or failed for good): releases its memory and
    /// returns its deliveries.
    pub fn complete(&mut self, batch: ProducerBatch<T>) -> Vec<T> {
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

    /// A sent batch failed: puts it back at the front of its queue to be
    /// sent again after `backoff_ms`, or gives up on it.
    pub fn retry_or_give_up(
        &mut self,
        mut batch: ProducerBatch<T>,
        now_ms: u64,
        retriable: bool,
        backoff_ms: u64,
    ) -> Retry<T> {
        let expired = now_ms
            >= batch
                .created_ms
                .saturating_add(self.config.delivery_timeout_ms);
        if !retriable || expired || batch.attempts >= self.config.retries_max {
            return Retry::GaveUp(self.complete(batch));
        }
        let queue = self
            .queues
            .get_mut(&batch.topic_partition)
            .expect("an in-flight batch has a queue");
        assert!(
            queue.in_flight > 0,
            "retrying a batch that is not in flight"
        );
        queue.in_flight -= 1;
        assert_eq!(
            queue.in_flight, 0,
            "a retry with another batch in flight could reorder"
        );
        batch.attempts += 1;
        batch.retry_at_ms = now_ms.saturating_add(backoff_ms);
        queue.batches.push_front(batch);
        Retry::Scheduled
    }

    /// Removes queued batches older than the delivery timeout; returns the
    /// deliveries to fail, per partition.
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
