//! Tests of the accumulator: a few scenarios spelled out, then a property
//! test that drives it with random appends, clock steps, drains and
//! outcomes and checks it against a simple model of what a broker log
//! should end up holding; and the same for an idempotent producer against
//! a model leader that checks sequence numbers as a broker does.

use std::collections::BTreeMap;

use proptest::prelude::*;

mod idempotence;

use super::*;
use crate::record::Header;

fn config() -> AccumulatorConfig {
    AccumulatorConfig {
        batch_bytes_max: 200,
        linger_ms: 10,
        buffer_memory_bytes: 1_000,
        record_bytes_max: 1_000,
        retries_max: 3,
        delivery_timeout_ms: 1_000,
        in_flight_per_partition_max: 1,
        idempotent: false,
    }
}

fn record(value: &[u8]) -> RecordData<'_> {
    RecordData {
        timestamp_ms: 0,
        key: None,
        value: Some(value),
        headers: &[] as &[Header],
    }
}

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new("t", partition)
}

#[test]
fn a_small_batch_waits_for_linger() {
    let mut acc = Accumulator::new(config());
    acc.append(&tp(0), &record(b"a"), 1u64, || 100).unwrap();
    acc.append(&tp(0), &record(b"b"), 2u64, || 105).unwrap();
    assert!(acc.drain(109, |_| true).is_empty());
    assert_eq!(acc.next_deadline_ms(|_| true), Some(110));
    let batches = acc.drain(110, |_| true);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].deliveries, vec![1, 2]);
}

#[test]
fn a_full_batch_goes_at_once_and_the_next_record_starts_another() {
    let mut acc = Accumulator::new(config());
    let value = [7u8; 60];
    let ids: Vec<u64> = (0..4)
        .map(|i| acc.append(&tp(0), &record(&value), i, || 0).unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![0, 0, 1, 1],
        "two records of ~70 bytes fill a 200-byte batch"
    );
    let first = acc.drain(0, |_| true);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].deliveries, vec![0, 1]);
    assert!(first[0].builder.size_bytes() <= 200);
}

#[test]
fn an_oversized_record_is_refused_and_a_big_one_sails_alone() {
    let mut acc = Accumulator::new(config());
    let huge = vec![0u8; 1_000];
    let (error, delivery) = acc.append(&tp(0), &record(&huge), 9u64, || 0).unwrap_err();
    assert!(matches!(error, AppendError::RecordTooLarge { .. }));
    assert_eq!(delivery, 9);
    let big = vec![0u8; 300];
    acc.append(&tp(0), &record(&big), 1, || 0).unwrap();
    assert_eq!(
        acc.drain(0, |_| true).len(),
        1,
        "a batch over the size limit is full"
    );
    assert!(!acc.is_idle(), "the big batch is in flight");
}

#[test]
fn a_full_buffer_refuses_until_a_batch_completes() {
    let mut acc = Accumulator::new(config());
    let value = [1u8; 150];
    let mut accepted = 0;
    let refused = loop {
        match acc.append(&tp(accepted % 3), &record(&value), accepted as u64, || 0) {
            Ok(_) => accepted += 1,
            Err((error, _)) => break error,
        }
        assert!(accepted < 100, "the buffer must fill up");
    };
    assert_eq!(refused, AppendError::BufferFull);
    assert!(acc.buffer_bytes_used() <= 1_000);
    let sent = acc.drain(0, |_| true);
    for batch in sent {
        acc.complete(batch);
    }
    acc.append(&tp(0), &record(&value), 99, || 0)
        .expect("memory came back");
}

#[test]
fn out_of_memory_a_lingering_batch_goes_at_once() {
    let mut acc = Accumulator::new(AccumulatorConfig {
        batch_bytes_max: 1_000,
        buffer_memory_bytes: 300,
        ..config()
    });
    let value = [5u8; 20];
    let mut accepted = 0u64;
    while acc.append(&tp(0), &record(&value), accepted, || 0).is_ok() {
        accepted += 1;
        assert!(accepted < 100, "the buffer must fill up");
    }
    assert!(acc.take_sender_news(), "the sender hears of it");
    let sent = acc.drain(0, |_| true);
    assert_eq!(
        sent.iter().map(|b| b.deliveries.len() as u64).sum::<u64>(),
        accepted,
        "the open batch left before its linger ran out"
    );
}

#[test]
fn a_retried_batch_is_not_overtaken() {
    let mut acc = Accumulator::new(config());
    let value = [3u8; 120];
    acc.append(&tp(0), &record(&value), 1u64, || 0).unwrap();
    acc.append(&tp(0), &record(&value), 2u64, || 0).unwrap();
    let first = acc.drain(0, |_| true).pop().unwrap();
    assert_eq!(first.deliveries, vec![1]);
    assert!(
        acc.drain(0, |_| true).is_empty(),
        "one batch in flight per partition"
    );
    assert!(matches!(
        acc.retry_or_give_up(first, 5, Failure::Retriable, 50),
        Retry::Scheduled
    ));
    assert!(
        acc.drain(54, |_| true).is_empty(),
        "backing off, and the second must wait"
    );
    let again = acc.drain(55, |_| true).pop().unwrap();
    assert_eq!((again.deliveries.clone(), again.attempts()), (vec![1], 1));
    acc.complete(again);
    assert_eq!(acc.drain(55, |_| true).pop().unwrap().deliveries, vec![2]);
}

#[test]
fn retries_stop_at_the_limit_and_at_the_delivery_timeout() {
    let mut acc = Accumulator::new(config());
    acc.append(&tp(0), &record(b"x"), 1u64, || 0).unwrap();
    for attempt in 0..3 {
        let batch = acc.drain(10 + attempt * 100, |_| true).pop().unwrap();
        assert!(matches!(
            acc.retry_or_give_up(batch, 10 + attempt * 100, Failure::Retriable, 1),
            Retry::Scheduled
        ));
    }
    let batch = acc.drain(400, |_| true).pop().unwrap();
    assert!(
        matches!(acc.retry_or_give_up(batch, 400, Failure::Retriable, 1), Retry::GaveUp(d) if d == vec![1])
    );
    acc.append(&tp(1), &record(b"y"), 2u64, || 0).unwrap();
    let batch = acc.drain(10, |_| true).pop().unwrap();
    assert!(matches!(
        acc.retry_or_give_up(batch, 1_000, Failure::Retriable, 1),
        Retry::GaveUp(_)
    ));
    assert!(acc.is_idle());
    assert_eq!(acc.buffer_bytes_used(), 0);
}

#[test]
fn flush_skips_the_linger_and_tracks_completion() {
    let mut acc = Accumulator::new(config());
    acc.append(&tp(0), &record(b"x"), 1u64, || 0).unwrap();
    let mark = acc.begin_flush();
    assert!(!acc.is_flushed(mark));
    let batch = acc
        .drain(0, |_| true)
        .pop()
        .expect("ready without lingering");
    acc.append(&tp(1), &record(b"later"), 2u64, || 0).unwrap();
    acc.complete(batch);
    assert!(
        acc.is_flushed(mark),
        "a batch created after the flush does not hold it up"
    );
}

#[test]
fn queued_batches_expire_and_leaderless_partitions_wait() {
    let mut acc = Accumulator::new(config());
    acc.append(&tp(0), &record(b"x"), 1u64, || 0).unwrap();
    assert!(acc.drain(50, |_| false).is_empty());
    assert_eq!(
        acc.next_deadline_ms(|_| false),
        Some(1_000),
        "only the expiry is due"
    );
    assert!(acc.expire(999).is_empty());
    let expired = acc.expire(1_000);
    assert_eq!(expired, vec![(tp(0), vec![1])]);
    assert!(acc.is_idle());
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Append { partition: i32, bytes: usize },
    Advance { ms: u64 },
    Drain { sendable_mask: u8 },
    Answer { pick: usize, outcome: Outcome },
    Flush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    Retriable,
    Fatal,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3i32, 1..150usize).prop_map(|(partition, bytes)| Step::Append { partition, bytes }),
        2 => (0..30u64).prop_map(|ms| Step::Advance { ms }),
        2 => any::<u8>().prop_map(|sendable_mask| Step::Drain { sendable_mask }),
        3 => (any::<usize>(), prop_oneof![
            6 => Just(Outcome::Written),
            3 => Just(Outcome::Retriable),
            1 => Just(Outcome::Fatal),
        ]).prop_map(|(pick, outcome)| Step::Answer { pick, outcome }),
        1 => Just(Step::Flush),
    ]
}

/// What a broker would hold: per partition, record ids in log order.
#[derive(Default)]
struct Model {
    appended: BTreeMap<i32, Vec<u64>>,
    log: BTreeMap<i32, Vec<u64>>,
    failed: Vec<u64>,
}

struct Harness {
    acc: Accumulator<u64>,
    model: Model,
    in_flight: Vec<ProducerBatch<u64>>,
    now_ms: u64,
    id_next: u64,
    retries_on: bool,
}

impl Harness {
    fn run(&mut self, step: &Step) {
        match *step {
            Step::Append { partition, bytes } => self.append(partition, bytes),
            Step::Advance { ms } => {
                self.now_ms += ms;
                for (_, deliveries) in self.acc.expire(self.now_ms) {
                    self.model.failed.extend(deliveries);
                }
            }
            Step::Drain { sendable_mask } => self.drain(sendable_mask),
            Step::Answer { pick, outcome } => self.answer(pick, outcome),
            Step::Flush => {
                self.acc.begin_flush();
            }
        }
        self.check_invariants();
    }

    fn append(&mut self, partition: i32, bytes: usize) {
        let id = self.id_next;
        let value = vec![0u8; bytes];
        if self
            .acc
            .append(&tp(partition), &record(&value), id, || self.now_ms)
            .is_ok()
        {
            self.id_next += 1;
            self.model.appended.entry(partition).or_default().push(id);
        }
    }

    fn drain(&mut self, sendable_mask: u8) {
        let config = self.acc.config.clone();
        let now_ms = self.now_ms;
        let before: BTreeMap<TopicPartition, (usize, bool)> = self
            .acc
            .queues
            .iter()
            .filter_map(|(tp, q)| Some((tp.clone(), (q.batches.len(), q.batches.front()?.sealed))))
            .collect();
        let batches = self
            .acc
            .drain(now_ms, |tp| sendable_mask & (1 << tp.partition) != 0);
        for batch in &batches {
            assert!(sendable_mask & (1 << batch.topic_partition.partition) != 0);
            let single = batch.deliveries.len() == 1;
            assert!(single || batch.builder.size_bytes() <= config.batch_bytes_max);
            let lingered = now_ms >= batch.created_ms + config.linger_ms;
            let (queued, full) = before[&batch.topic_partition];
            let pushed =
                queued > 1 || full || batch.attempts() > 0 || batch.id < self.acc.flush_before_id;
            assert!(lingered || pushed, "batch {} left early", batch.id);
        }
        let drained: Vec<TopicPartition> =
            batches.iter().map(|b| b.topic_partition.clone()).collect();
        self.in_flight.extend(batches);
        self.check_nothing_ready_left(sendable_mask, &drained);
    }

    /// After a drain, no sendable partition may still hold a batch that the
    /// rules call ready: full, followed by another, lingered, retried after
    /// its backoff, or covered by a flush. (A drain takes at most one batch
    /// per partition, since a request carries one batch per partition.)
    fn check_nothing_ready_left(&self, sendable_mask: u8, drained: &[TopicPartition]) {
        let acc = &self.acc;
        for (tp, queue) in &acc.queues {
            let blocked =
                queue.in_flight >= acc.config.in_flight_per_partition_max || drained.contains(tp);
            let sendable = sendable_mask & (1 << tp.partition) != 0;
            let Some(front) = queue.batches.front().filter(|_| sendable && !blocked) else {
                continue;
            };
            let backing_off = self.now_ms < front.retry_at_ms;
            let ready = front.sealed
                || queue.batches.len() > 1
                || self.now_ms >= front.created_ms + acc.config.linger_ms
                || front.attempts() > 0
                || front.id < acc.flush_before_id;
            assert!(
                backing_off || !ready,
                "batch {} was ready but left behind",
                front.id
            );
        }
    }

    fn answer(&mut self, pick: usize, outcome: Outcome) {
        if self.in_flight.is_empty() {
            return;
        }
        let batch = self.in_flight.remove(pick % self.in_flight.len());
        let partition = batch.topic_partition.partition;
        match outcome {
            Outcome::Written => {
                let deliveries = self.acc.complete(batch);
                self.model
                    .log
                    .entry(partition)
                    .or_default()
                    .extend(deliveries);
            }
            Outcome::Retriable | Outcome::Fatal => {
                let failure = if outcome == Outcome::Retriable {
                    Failure::Retriable
                } else {
                    Failure::Refused
                };
                match self.acc.retry_or_give_up(batch, self.now_ms, failure, 5) {
                    Retry::Scheduled => assert!(self.retries_on),
                    Retry::GaveUp(deliveries) => self.model.failed.extend(deliveries),
                }
            }
        }
    }

    fn check_invariants(&self) {
        let acc = &self.acc;
        assert!(acc.buffer_bytes_used <= acc.config.buffer_memory_bytes);
        let queued: usize = acc
            .queues
            .values()
            .flat_map(|q| q.batches.iter())
            .chain(self.in_flight.iter())
            .map(|b| b.reserved_bytes)
            .sum();
        assert_eq!(queued, acc.buffer_bytes_used, "memory accounting drifted");
        for (tp, queue) in &acc.queues {
            assert!(queue.in_flight <= acc.config.in_flight_per_partition_max);
            let flying = self
                .in_flight
                .iter()
                .filter(|b| &b.topic_partition == tp)
                .count();
            assert_eq!(flying, queue.in_flight, "{tp}");
        }
    }

    /// Sends everything left successfully, then compares with the model.
    fn finish(mut self) {
        for _ in 0..10_000 {
            while !self.in_flight.is_empty() {
                self.answer(0, Outcome::Written);
            }
            self.now_ms += 10;
            self.acc
                .expire(self.now_ms)
                .into_iter()
                .for_each(|(_, d)| self.model.failed.extend(d));
            self.drain(u8::MAX);
            if self.acc.is_idle() {
                break;
            }
        }
        assert!(self.acc.is_idle());
        assert_eq!(self.acc.buffer_bytes_used, 0);
        for (partition, appended) in &self.model.appended {
            let expected: Vec<u64> = appended
                .iter()
                .copied()
                .filter(|id| !self.model.failed.contains(id))
                .collect();
            let log = self.model.log.get(partition).cloned().unwrap_or_default();
            if self.retries_on {
                assert_eq!(
                    log, expected,
                    "partition {partition}: order or content differs"
                );
            } else {
                let mut sorted = log.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, expected, "partition {partition}: content differs");
            }
        }
    }
}

proptest! {
    #[test]
    fn accumulator_keeps_order_memory_and_limits(
        steps in proptest::collection::vec(step(), 1..200),
        retries_on in any::<bool>(),
    ) {
        let mut config = config();
        if !retries_on {
            config.retries_max = 0;
            config.in_flight_per_partition_max = PARTITION_IN_FLIGHT_MAX;
        }
        let mut harness = Harness {
            acc: Accumulator::new(config),
            model: Model::default(),
            in_flight: Vec::new(),
            now_ms: 0,
            id_next: 0,
            retries_on,
        };
        for step in &steps {
            harness.run(step);
        }
        harness.finish();
    }
}
