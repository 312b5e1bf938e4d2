//! Choosing a partition: Kafka's key hash and the sticky choice for records
//! without a key.
//!
//! A keyed record goes where Kafka's Java client would put it:
//! `(murmur2(key) & 0x7fffffff) % partitions`, with murmur2 seeded by
//! `0x9747b28c` exactly as `org.apache.kafka.common.utils.Utils.murmur2`.
//! A record without a key sticks to one partition until the batch it went
//! into is sent, so small records fill batches instead of spreading one
//! record per partition; the next partition is drawn from the producer's
//! seeded generator.

use std::collections::BTreeMap;

use sluice_core::rng::Rng;

use crate::record::TopicPartition;

const MURMUR2_SEED: u32 = 0x9747_b28c;
const MURMUR2_M: u32 = 0x5bd1_e995;
const MURMUR2_R: u32 = 24;

/// Kafka's murmur2 (32-bit, seed 0x9747b28c, little-endian words).
pub fn murmur2(data: &[u8]) -> i32 {
    let mut h = MURMUR2_SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(MURMUR2_M);
        k ^= k >> MURMUR2_R;
        k = k.wrapping_mul(MURMUR2_M);
        h = h.wrapping_mul(MURMUR2_M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= (byte as u32) << (8 * i);
        }
        h = h.wrapping_mul(MURMUR2_M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(MURMUR2_M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a key.
pub fn key_partition(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// The current partition of each topic for records without a key.
#[derive(Debug)]
pub struct StickyPartitioner {
    current: BTreeMap<String, i32>,
    rng: Rng,
}

impl StickyPartitioner {
    pub fn new(seed: u64) -> StickyPartitioner {
        StickyPartitioner {
            current: BTreeMap::new(),
            rng: Rng::from_seed(seed),
        }
    }

    /// The partition for a record without a key. `available` lists the
    /// partitions with a leader; when none has one, any partition will do.
    pub fn partition(
        &mut self,
        topic: &str,
        partitions: i32,
        available: impl FnOnce() -> Vec<i32>,
    ) -> i32 {
        assert!(partitions > 0, "a topic has at least one partition");
        if let Some(&current) = self.current.get(topic) {
            if current < partitions {
                return current;
            }
        }
        let available = available();
        let chosen = if available.is_empty() {
            (self.rng.next_u64() % partitions as u64) as i32
        } else {
            available[(self.rng.next_u64() % available.len() as u64) as usize]
        };
        self.current.insert(topic.to_string(), chosen);
        chosen
    }

    /// A batch of `tp` left for the broker: if it was the sticky partition,
    /// the next keyless record picks a new one (another one, when there is
    /// a choice).
    pub fn batch_sent(&mut self, tp: &TopicPartition, partitions: i32, available: &[i32]) {
        if self.current.get(&tp.topic) != Some(&tp.partition) {
            return;
        }
        let others: Vec<i32> = if available.is_empty() {
            (0..partitions).filter(|&p| p != tp.partition).collect()
        } else {
            available
                .iter()
                .copied()
                .filter(|&p| p != tp.partition)
                .collect()
        };
        match others.len() {
            0 => {}
            n => {
                let next = others[(self.rng.next_u64() % n as u64) as usize];
                self.current.insert(tp.topic.clone(), next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka's `UtilsTest.testMurmur2` vectors.
    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn key_partition_is_positive_and_in_range() {
        // murmur2("foobar") is negative: the mask, not abs(), makes it positive.
        let masked = (-790_332_482i32 & 0x7fff_ffff) % 7;
        assert_eq!(key_partition(b"foobar", 7), masked);
        for n in 1..50 {
            let key = format!("key-{n}");
            let p = key_partition(key.as_bytes(), 3);
            assert!((0..3).contains(&p));
            assert_eq!(p, key_partition(key.as_bytes(), 3));
        }
    }

    #[test]
    fn sticky_partition_holds_until_its_batch_is_sent() {
        let mut sticky = StickyPartitioner::new(11);
        let first = sticky.partition("t", 4, || vec![0, 1, 2, 3]);
        for _ in 0..10 {
            assert_eq!(sticky.partition("t", 4, || vec![0, 1, 2, 3]), first);
        }
        sticky.batch_sent(&TopicPartition::new("t", (first + 1) % 4), 4, &[0, 1, 2, 3]);
        assert_eq!(
            sticky.partition("t", 4, || vec![0, 1, 2, 3]),
            first,
            "another partition's batch"
        );
        sticky.batch_sent(&TopicPartition::new("t", first), 4, &[0, 1, 2, 3]);
        assert_ne!(sticky.partition("t", 4, || vec![0, 1, 2, 3]), first);
    }

    #[test]
    fn sticky_choice_prefers_partitions_with_a_leader_and_replays_by_seed() {
        let picks = |seed| {
            let mut sticky = StickyPartitioner::new(seed);
            (0..20)
                .map(|_| {
                    let p = sticky.partition("t", 8, || vec![2, 5]);
                    sticky.batch_sent(&TopicPartition::new("t", p), 8, &[2, 5]);
                    p
                })
                .collect::<Vec<_>>()
        };
        let run = picks(5);
        assert!(run.iter().all(|p| *p == 2 || *p == 5));
        assert_eq!(run, picks(5));
    }
}
