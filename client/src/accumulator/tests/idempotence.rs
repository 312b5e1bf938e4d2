//! The accumulator of an idempotent producer: sequence numbers given at the
//! first drain and kept on retries, five batches in flight, epoch bumps
//! after gaps and unknown outcomes; then a property test against a model
//! leader that checks sequences as a broker does (the last five batches of
//! each producer, epochs, gaps), with requests lost before it, answers
//! lost after it, refusals and answers settled in any order. Whatever
//! happens, each record is in the log at most once, in the order it was
//! appended, every acknowledged record is there and no refused one is.

use std::collections::VecDeque;

use super::*;

const PRODUCER: ProducerEpoch = ProducerEpoch {
    producer_id: 7,
    epoch: 0,
};

fn idempotent_config() -> AccumulatorConfig {
    AccumulatorConfig {
        in_flight_per_partition_max: PARTITION_IN_FLIGHT_MAX,
        idempotent: true,
        // One record per batch unless a test says otherwise.
        batch_bytes_max: 80,
        ..config()
    }
}

/// An accumulator with a producer id and `count` one-record batches
/// queued on partition 0, sealed so they are ready at once.
fn with_batches(count: u64) -> Accumulator<u64> {
    let mut acc = Accumulator::new(idempotent_config());
    acc.set_producer(PRODUCER);
    let value = [9u8; 40];
    for id in 0..count {
        acc.append(&tp(0), &record(&value), id, || 0).unwrap();
    }
    acc.begin_flush();
    acc
}

/// Drains until nothing more comes: the batches that went, in order.
fn drain_all(acc: &mut Accumulator<u64>, now_ms: u64) -> Vec<ProducerBatch<u64>> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let batches = acc.drain(now_ms, |_| true);
        if batches.is_empty() {
            break;
        }
        out.extend(batches);
    }
    out
}

fn sequences(batches: &[ProducerBatch<u64>]) -> Vec<(i16, i32)> {
    batches
        .iter()
        .map(|b| (b.identity.producer_epoch, b.identity.base_sequence))
        .collect()
}

#[test]
fn nothing_is_drained_before_the_producer_id() {
    let mut acc = Accumulator::new(idempotent_config());
    acc.append(&tp(0), &record(b"x"), 1u64, || 0).unwrap();
    assert!(acc.needs_producer_id());
    assert!(acc.drain(100, |_| true).is_empty());
    assert_eq!(
        acc.next_deadline_ms(|_| true),
        Some(1_000),
        "only the expiry is due: the sender must not spin"
    );
    acc.set_producer(PRODUCER);
    assert!(!acc.needs_producer_id());
    let batch = acc.drain(100, |_| true).pop().expect("drained with an id");
    assert_eq!(
        batch.identity,
        ProducerIdentity {
            producer_id: 7,
            producer_epoch: 0,
            base_sequence: 0
        }
    );
}

#[test]
fn five_batches_go_at_once_with_contiguous_sequences() {
    let mut acc = Accumulator::new(AccumulatorConfig {
        batch_bytes_max: 200,
        buffer_memory_bytes: 2_000,
        ..idempotent_config()
    });
    acc.set_producer(PRODUCER);
    let value = [1u8; 60];
    for id in 0..14 {
        acc.append(&tp(0), &record(&value), id, || 0).unwrap();
    }
    acc.begin_flush();
    let sent = drain_all(&mut acc, 0);
    assert_eq!(sent.len(), 5, "five in flight, the rest wait");
    let counts: Vec<i32> = sent.iter().map(|b| b.builder.record_count()).collect();
    assert_eq!(counts, vec![2, 2, 2, 2, 2]);
    assert_eq!(
        sequences(&sent),
        vec![(0, 0), (0, 2), (0, 4), (0, 6), (0, 8)]
    );
    let mut sent = sent.into_iter();
    acc.complete(sent.next().unwrap());
    let next = drain_all(&mut acc, 0);
    assert_eq!(
        sequences(&next),
        vec![(0, 10)],
        "one answer frees one place"
    );
}

#[test]
fn a_retry_keeps_its_sequence_and_goes_alone_in_order() {
    let mut acc = with_batches(4);
    let sent = drain_all(&mut acc, 0);
    assert_eq!(sent.len(), 4);
    let mut sent = VecDeque::from(sent);
    let first = sent.pop_front().unwrap();
    let second = sent.pop_front().unwrap();
    // The second's answer is lost before the first's: both are retried.
    assert!(matches!(
        acc.retry_or_give_up(second, 1, Failure::Retriable, 0),
        Retry::Scheduled
    ));
    assert!(
        drain_all(&mut acc, 2).is_empty(),
        "the retry waits for the older batch on the wire"
    );
    assert!(matches!(
        acc.retry_or_give_up(first, 2, Failure::Retriable, 0),
        Retry::Scheduled
    ));
    let again = drain_all(&mut acc, 3);
    assert_eq!(
        sequences(&again),
        vec![(0, 0)],
        "the oldest goes first, alone"
    );
    for batch in sent {
        acc.complete(batch);
    }
    assert!(drain_all(&mut acc, 3).is_empty());
    acc.complete(again.into_iter().next().unwrap());
    let last = drain_all(&mut acc, 3);
    assert_eq!(sequences(&last), vec![(0, 1)], "then the next retry");
    assert_eq!(last[0].deliveries, vec![1]);
    assert!(last[0].encoded.is_none() && last[0].attempts() == 1);
}

#[test]
fn a_refused_batch_bumps_the_epoch_and_the_batches_behind_it_start_at_zero() {
    let mut acc = with_batches(4);
    let mut sent = VecDeque::from(drain_all(&mut acc, 0));
    for batch in sent.iter_mut() {
        batch.encoded = Some(Bytes::from_static(b"sent"));
    }
    let written = sent.pop_front().unwrap();
    acc.complete(written);
    let refused = sent.pop_front().unwrap();
    let gave_up = acc.retry_or_give_up(refused, 1, Failure::Refused, 0);
    assert!(matches!(gave_up, Retry::GaveUp(d) if d == vec![1]));
    // The leader refused the batches after the gap.
    for batch in sent {
        let retry = acc.retry_or_give_up(batch, 1, Failure::OutOfOrderSequence, 0);
        assert!(matches!(retry, Retry::Scheduled));
    }
    let restarted = drain_all(&mut acc, 2);
    assert_eq!(
        acc.producer().unwrap().epoch,
        1,
        "the epoch was bumped here"
    );
    assert_eq!(
        sequences(&restarted),
        vec![(1, 0)],
        "the first after the gap starts the new epoch, alone"
    );
    assert!(restarted[0].encoded.is_none(), "encoded again");
    assert!(restarted[0].sequence_reset);
    acc.complete(restarted.into_iter().next().unwrap());
    let next = drain_all(&mut acc, 2);
    assert_eq!(sequences(&next), vec![(1, 1)]);
    assert_eq!(next[0].deliveries, vec![3]);
}

#[test]
fn a_gap_waits_for_older_batches_with_the_old_epoch() {
    let mut acc = with_batches(3);
    let mut sent = VecDeque::from(drain_all(&mut acc, 0));
    let first = sent.pop_front().unwrap();
    let second = sent.pop_front().unwrap();
    let third = sent.pop_front().unwrap();
    // The first's answer is lost (it may be written), the second is refused.
    acc.retry_or_give_up(second, 1, Failure::Refused, 0);
    acc.retry_or_give_up(first, 1, Failure::Retriable, 0);
    acc.retry_or_give_up(third, 1, Failure::OutOfOrderSequence, 0);
    let retried = drain_all(&mut acc, 2);
    assert_eq!(
        sequences(&retried),
        vec![(0, 0)],
        "the batch older than the gap is retried first, under its old epoch"
    );
    assert_eq!(acc.producer().unwrap().epoch, 0, "no bump yet");
    acc.complete(retried.into_iter().next().unwrap());
    let restarted = drain_all(&mut acc, 2);
    assert_eq!(sequences(&restarted), vec![(1, 0)]);
    assert_eq!(restarted[0].deliveries, vec![2]);
}

#[test]
fn an_expired_batch_is_resolved_by_a_later_acknowledgement() {
    let mut acc = with_batches(2);
    let mut sent = VecDeque::from(drain_all(&mut acc, 0));
    let first = sent.pop_front().unwrap();
    let second = sent.pop_front().unwrap();
    acc.retry_or_give_up(first, 10, Failure::Retriable, 1_000);
    // Queued for a retry past the delivery timeout: expired, outcome unknown.
    assert_eq!(acc.expire(1_000), vec![(tp(0), vec![0])]);
    let value = [9u8; 40];
    acc.append(&tp(0), &record(&value), 2, || 1_000).unwrap();
    acc.begin_flush();
    assert!(
        drain_all(&mut acc, 1_000).is_empty(),
        "no new sequence while the partition is unresolved"
    );
    acc.complete(second);
    let next = drain_all(&mut acc, 1_000);
    assert_eq!(
        sequences(&next),
        vec![(0, 2)],
        "the later batch was written, so the expired one was too"
    );
}

#[test]
fn an_expired_batch_without_a_later_acknowledgement_bumps_the_epoch() {
    let mut acc = with_batches(1);
    let sent = drain_all(&mut acc, 0).pop().unwrap();
    acc.retry_or_give_up(sent, 10, Failure::Retriable, 1_000);
    assert_eq!(acc.expire(1_000).len(), 1);
    let value = [9u8; 40];
    acc.append(&tp(0), &record(&value), 1, || 1_000).unwrap();
    acc.begin_flush();
    let next = drain_all(&mut acc, 1_000);
    assert_eq!(sequences(&next), vec![(1, 0)]);
}

#[test]
fn the_last_epoch_asks_for_a_new_producer_id() {
    let mut acc = Accumulator::new(idempotent_config());
    acc.set_producer(ProducerEpoch {
        producer_id: 3,
        epoch: i16::MAX,
    });
    let value = [9u8; 40];
    for id in 0..2 {
        acc.append(&tp(0), &record(&value), id, || 0).unwrap();
    }
    acc.begin_flush();
    let mut sent = VecDeque::from(drain_all(&mut acc, 0));
    acc.retry_or_give_up(sent.pop_front().unwrap(), 1, Failure::Refused, 0);
    acc.retry_or_give_up(sent.pop_front().unwrap(), 1, Failure::OutOfOrderSequence, 0);
    assert!(drain_all(&mut acc, 1).is_empty());
    assert!(acc.needs_producer_id(), "no epoch left to bump to");
    acc.set_producer(ProducerEpoch {
        producer_id: 4,
        epoch: 0,
    });
    let restarted = drain_all(&mut acc, 1);
    assert_eq!(restarted.len(), 1);
    assert_eq!(
        restarted[0].identity,
        ProducerIdentity {
            producer_id: 4,
            producer_epoch: 0,
            base_sequence: 0
        }
    );
}

#[test]
fn other_partitions_move_to_the_new_epoch_once_their_batches_are_through() {
    let mut acc = with_batches(2);
    let value = [9u8; 40];
    acc.append(&tp(1), &record(&value), 10, || 0).unwrap();
    acc.append(&tp(1), &record(&value), 11, || 0).unwrap();
    acc.begin_flush();
    let sent = drain_all(&mut acc, 0);
    let (mut on_0, mut on_1): (VecDeque<_>, VecDeque<_>) =
        sent.into_iter().partition(|b| b.topic_partition == tp(0));
    acc.retry_or_give_up(on_0.pop_front().unwrap(), 1, Failure::Refused, 0);
    acc.retry_or_give_up(on_0.pop_front().unwrap(), 1, Failure::OutOfOrderSequence, 0);
    let restarted = drain_all(&mut acc, 1);
    assert_eq!(sequences(&restarted), vec![(1, 0)]);
    acc.append(&tp(1), &record(&value), 12, || 1).unwrap();
    acc.begin_flush();
    assert!(
        drain_all(&mut acc, 1).is_empty(),
        "partition 1 still has batches of epoch 0 on the wire"
    );
    acc.complete(on_1.pop_front().unwrap());
    acc.complete(on_1.pop_front().unwrap());
    let moved = drain_all(&mut acc, 1);
    assert_eq!(sequences(&moved), vec![(1, 0)]);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum IdempotentStep {
    Append {
        partition: i32,
        bytes: usize,
    },
    Advance {
        ms: u64,
    },
    Drain {
        sendable_mask: u8,
    },
    /// The leader takes the oldest request on the wire.
    Process {
        fate: Fate,
    },
    /// The producer hears one of the answers, any of them.
    Answer {
        pick: usize,
    },
    Flush,
}

/// What becomes of a request that reaches the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Checked and answered.
    Answered,
    /// Lost before the leader read it (a connection cut).
    LostBefore,
    /// Checked, and the answer lost (a connection cut).
    AnswerLost,
    /// Refused without being checked, for good (too large, say).
    Refused,
    /// Refused without being checked, for now (not the leader, say).
    RefusedRetriable,
}

fn idempotent_step() -> impl Strategy<Value = IdempotentStep> {
    prop_oneof![
        4 => (0..2i32, 1..120usize)
            .prop_map(|(partition, bytes)| IdempotentStep::Append { partition, bytes }),
        1 => (0..40u64).prop_map(|ms| IdempotentStep::Advance { ms }),
        3 => any::<u8>().prop_map(|sendable_mask| IdempotentStep::Drain { sendable_mask }),
        4 => prop_oneof![
            8 => Just(Fate::Answered),
            1 => Just(Fate::LostBefore),
            2 => Just(Fate::AnswerLost),
            1 => Just(Fate::Refused),
            1 => Just(Fate::RefusedRetriable),
        ].prop_map(|fate| IdempotentStep::Process { fate }),
        4 => any::<usize>().prop_map(|pick| IdempotentStep::Answer { pick }),
        1 => Just(IdempotentStep::Flush),
    ]
}

/// The leader's view of one producer on one partition.
#[derive(Debug)]
struct LeaderProducer {
    epoch: i16,
    last_sequence: i32,
    /// (first, last sequence) of its last five batches.
    batches: VecDeque<(i32, i32)>,
}

/// What the leader answers a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Appended,
    Duplicate,
    OutOfOrder,
}

/// A partition's log and the leader's producer state, strict as Kafka's:
/// a producer it does not know and a new epoch must start at sequence 0.
#[derive(Debug, Default)]
struct ModelPartition {
    log: Vec<u64>,
    producers: BTreeMap<i64, LeaderProducer>,
}

impl ModelPartition {
    fn check(&mut self, batch: &ProducerBatch<u64>) -> Verdict {
        let identity = batch.identity;
        assert!(identity.producer_id >= 0 && identity.base_sequence >= 0);
        let count = batch.builder.record_count();
        let first = identity.base_sequence;
        let last = first + count - 1;
        let verdict = match self.producers.get(&identity.producer_id) {
            None if first == 0 => Verdict::Appended,
            None => Verdict::OutOfOrder,
            Some(known) => {
                assert!(
                    identity.producer_epoch >= known.epoch,
                    "a batch of epoch {} reached a leader at epoch {}",
                    identity.producer_epoch,
                    known.epoch
                );
                if identity.producer_epoch > known.epoch {
                    if first == 0 {
                        Verdict::Appended
                    } else {
                        Verdict::OutOfOrder
                    }
                } else if known.batches.contains(&(first, last)) {
                    Verdict::Duplicate
                } else if first == known.last_sequence + 1 {
                    Verdict::Appended
                } else {
                    Verdict::OutOfOrder
                }
            }
        };
        if verdict == Verdict::Appended {
            let known = self
                .producers
                .entry(identity.producer_id)
                .or_insert(LeaderProducer {
                    epoch: identity.producer_epoch,
                    last_sequence: -1,
                    batches: VecDeque::new(),
                });
            if known.epoch != identity.producer_epoch {
                known.epoch = identity.producer_epoch;
                known.batches.clear();
            }
            known.last_sequence = last;
            known.batches.push_back((first, last));
            if known.batches.len() > 5 {
                known.batches.pop_front();
            }
            self.log.extend(batch.deliveries.iter().copied());
        }
        verdict
    }
}

/// The answer a producer hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    Written,
    Failed(Failure),
}

struct IdempotentHarness {
    acc: Accumulator<u64>,
    now_ms: u64,
    id_next: u64,
    producer_id_next: i64,
    first_epoch: i16,
    appended: BTreeMap<i32, Vec<u64>>,
    partitions: BTreeMap<i32, ModelPartition>,
    /// Requests on the wire, in the order they were sent.
    wire: VecDeque<ProducerBatch<u64>>,
    /// Answers the producer has not heard yet.
    answers: Vec<(ProducerBatch<u64>, Heard)>,
    acked: BTreeSet<u64>,
    refused: BTreeSet<u64>,
    unknown: BTreeSet<u64>,
    /// Batches the leader has checked at least once.
    checked: BTreeSet<u64>,
}

impl IdempotentHarness {
    fn new(first_epoch: i16) -> IdempotentHarness {
        IdempotentHarness {
            acc: Accumulator::new(AccumulatorConfig {
                batch_bytes_max: 200,
                ..idempotent_config()
            }),
            now_ms: 0,
            id_next: 0,
            producer_id_next: 1,
            first_epoch,
            appended: BTreeMap::new(),
            partitions: BTreeMap::new(),
            wire: VecDeque::new(),
            answers: Vec::new(),
            acked: BTreeSet::new(),
            refused: BTreeSet::new(),
            unknown: BTreeSet::new(),
            checked: BTreeSet::new(),
        }
    }

    fn run(&mut self, step: &IdempotentStep) {
        self.grant_producer_id();
        match *step {
            IdempotentStep::Append { partition, bytes } => {
                let value = vec![0u8; bytes];
                let id = self.id_next;
                let now_ms = self.now_ms;
                if self
                    .acc
                    .append(&tp(partition), &record(&value), id, || now_ms)
                    .is_ok()
                {
                    self.id_next += 1;
                    self.appended.entry(partition).or_default().push(id);
                }
            }
            IdempotentStep::Advance { ms } => {
                self.now_ms += ms;
                self.expire();
            }
            IdempotentStep::Drain { sendable_mask } => {
                let batches = self
                    .acc
                    .drain(self.now_ms, |tp| sendable_mask & (1 << tp.partition) != 0);
                self.send(batches);
            }
            IdempotentStep::Process { fate } => self.process(fate),
            IdempotentStep::Answer { pick } => {
                if !self.answers.is_empty() {
                    let (batch, heard) = self.answers.remove(pick % self.answers.len());
                    self.hear(batch, heard);
                }
            }
            IdempotentStep::Flush => {
                self.acc.begin_flush();
            }
        }
    }

    /// InitProducerId, answered at once: a new id each time.
    fn grant_producer_id(&mut self) {
        if self.acc.needs_producer_id() {
            let epoch = if self.producer_id_next == 1 {
                self.first_epoch
            } else {
                0
            };
            self.acc.set_producer(ProducerEpoch {
                producer_id: self.producer_id_next,
                epoch,
            });
            self.producer_id_next += 1;
        }
    }

    fn send(&mut self, batches: Vec<ProducerBatch<u64>>) {
        for batch in batches {
            assert!(batch.has_sequence(), "an idempotent batch has a sequence");
            let on_wire = self
                .wire
                .iter()
                .chain(self.answers.iter().map(|(b, _)| b))
                .filter(|b| b.topic_partition == batch.topic_partition)
                .count();
            assert!(
                on_wire < UNACKED_PER_PARTITION_MAX,
                "more than five in flight"
            );
            self.wire.push_back(batch);
        }
    }

    fn process(&mut self, fate: Fate) {
        let Some(batch) = self.wire.pop_front() else {
            return;
        };
        // A refusal for good (too large, say) comes the first time the
        // leader checks a batch or never.
        let fate = match fate {
            Fate::Refused if self.checked.contains(&batch.id) => Fate::Answered,
            fate => fate,
        };
        if matches!(fate, Fate::Answered | Fate::AnswerLost | Fate::Refused) {
            self.checked.insert(batch.id);
        }
        let heard = match fate {
            Fate::LostBefore | Fate::RefusedRetriable => Heard::Failed(Failure::Retriable),
            Fate::Refused => Heard::Failed(Failure::Refused),
            Fate::Answered | Fate::AnswerLost => {
                let partition = self
                    .partitions
                    .entry(batch.topic_partition.partition)
                    .or_default();
                let verdict = partition.check(&batch);
                match (fate, verdict) {
                    (Fate::AnswerLost, _) => Heard::Failed(Failure::Retriable),
                    (_, Verdict::Appended | Verdict::Duplicate) => Heard::Written,
                    (_, Verdict::OutOfOrder) => Heard::Failed(Failure::OutOfOrderSequence),
                }
            }
        };
        self.answers.push((batch, heard));
    }

    fn hear(&mut self, batch: ProducerBatch<u64>, heard: Heard) {
        match heard {
            Heard::Written => self.acked.extend(self.acc.complete(batch)),
            Heard::Failed(failure) => {
                match self.acc.retry_or_give_up(batch, self.now_ms, failure, 3) {
                    Retry::Scheduled => {}
                    Retry::GaveUp(deliveries) if failure == Failure::Retriable => {
                        self.unknown.extend(deliveries)
                    }
                    Retry::GaveUp(deliveries) => self.refused.extend(deliveries),
                }
            }
        }
    }

    fn expire(&mut self) {
        for (_, deliveries) in self.acc.expire(self.now_ms) {
            self.unknown.extend(deliveries);
        }
    }

    /// Runs everything left without faults, then checks the logs.
    fn finish(mut self) {
        for _ in 0..10_000 {
            self.grant_producer_id();
            while !self.wire.is_empty() {
                self.process(Fate::Answered);
            }
            while let Some((batch, heard)) = self.answers.pop() {
                self.hear(batch, heard);
            }
            self.now_ms += 10;
            self.expire();
            let batches = self.acc.drain(self.now_ms, |_| true);
            self.send(batches);
            if self.acc.is_idle() && self.wire.is_empty() {
                break;
            }
        }
        assert!(self.acc.is_idle(), "the producer never finished");
        assert_eq!(self.acc.buffer_bytes_used, 0);
        for (partition, appended) in &self.appended {
            let log = self
                .partitions
                .get(partition)
                .map(|p| p.log.clone())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for id in &log {
                assert!(
                    seen.insert(*id),
                    "partition {partition}: record {id} written twice"
                );
                assert!(
                    !self.refused.contains(id),
                    "record {id} refused yet written"
                );
            }
            let in_order: Vec<u64> = appended
                .iter()
                .copied()
                .filter(|id| seen.contains(id))
                .collect();
            assert_eq!(log, in_order, "partition {partition}: out of append order");
            for id in appended {
                let settled = [&self.acked, &self.refused, &self.unknown]
                    .iter()
                    .filter(|set| set.contains(id))
                    .count();
                assert_eq!(settled, 1, "record {id} settled {settled} times");
                if self.acked.contains(id) {
                    assert!(
                        seen.contains(id),
                        "record {id} acknowledged but not written"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_idempotent_producer_writes_each_record_once_and_in_order(
        steps in proptest::collection::vec(idempotent_step(), 1..300),
        near_the_last_epoch in any::<bool>(),
    ) {
        let first_epoch = if near_the_last_epoch { i16::MAX - 1 } else { 0 };
        let mut harness = IdempotentHarness::new(first_epoch);
        for step in &steps {
            harness.run(step);
        }
        harness.finish();
    }
}
