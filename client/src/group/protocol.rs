//! The consumer protocol's bytes inside the classic group protocol: what a
//! member puts in JoinGroup's protocol metadata (its subscription) and what
//! the leader puts in SyncGroup for each member (its assignment).
//!
//! The coordinator keeps both opaque; only consumers read them, so they
//! must match what Kafka's Java client writes and reads: a big-endian `i16`
//! version, then the `ConsumerProtocolSubscription` or
//! `ConsumerProtocolAssignment` struct at that version. This client writes
//! version 3, as Java does. It reads any version: a newer one only adds
//! fields at the end, so it is decoded as the newest known version and the
//! rest ignored, as Java does.
//!
//! Writing uses the `kafka-protocol` messages; reading uses a small reader
//! of its own that checks every declared count against the bytes left,
//! because another member's metadata is untrusted input and the crate's
//! decoder reserves memory for whatever count it reads.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::record::TopicPartition;

/// JoinGroup's protocol type for consumers.
pub const PROTOCOL_TYPE: &str = "consumer";

/// The version of subscriptions and assignments this client writes (the
/// newest the consumer protocol defines, as Java writes).
pub const CONSUMER_PROTOCOL_VERSION: i16 = 3;

/// The generation a subscription names when the member has none.
pub const NO_GENERATION: i32 = -1;

/// What a member asks for when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic names, sorted.
    pub topics: Vec<String>,
    pub user_data: Option<Bytes>,
    /// Partitions the member holds while joining (empty under eager
    /// rebalancing, which gives everything up before joining).
    pub owned_partitions: Vec<TopicPartition>,
    /// The generation the member last belonged to (version 2+).
    pub generation: i32,
    /// The member's rack (version 3+).
    pub rack_id: Option<String>,
}

impl Subscription {
    pub fn new(topics: impl IntoIterator<Item = String>) -> Subscription {
        let mut topics: Vec<String> = topics.into_iter().collect();
        topics.sort();
        topics.dedup();
        Subscription {
            topics,
            user_data: None,
            owned_partitions: Vec::new(),
            generation: NO_GENERATION,
            rack_id: None,
        }
    }
}

/// What the leader hands a member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// Sorted by topic, then partition.
    pub partitions: Vec<TopicPartition>,
    pub user_data: Option<Bytes>,
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Partitions grouped by topic, both in order.
fn by_topic(partitions: &[TopicPartition]) -> BTreeMap<&str, Vec<i32>> {
    let mut grouped: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        grouped.entry(&tp.topic).or_default().push(tp.partition);
    }
    for numbers in grouped.values_mut() {
        numbers.sort_unstable();
        numbers.dedup();
    }
    grouped
}

fn with_version<E: Encodable>(message: &E, version: i16) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(version);
    message
        .encode(&mut out, version)
        .expect("every field of the consumer protocol exists at the version written");
    out.freeze()
}

/// Reads the version prefix; the body is decoded at the newest version this
/// client knows that is not above it.
fn split_version(bytes: &[u8]) -> Result<(i16, &[u8]), String> {
    if bytes.len() < 2 {
        return Err(format!("{} bytes: no version", bytes.len()));
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version < 0 {
        return Err(format!("negative version {version}"));
    }
    Ok((version.min(CONSUMER_PROTOCOL_VERSION), &bytes[2..]))
}

pub fn encode_subscription(subscription: &Subscription) -> Bytes {
    let owned = by_topic(&subscription.owned_partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            OwnedTopic::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    let message = ConsumerProtocolSubscription::default()
        .with_topics(subscription.topics.iter().map(|t| str_bytes(t)).collect())
        .with_user_data(subscription.user_data.clone())
        .with_owned_partitions(owned)
        .with_generation_id(subscription.generation)
        .with_rack_id(subscription.rack_id.as_deref().map(str_bytes));
    with_version(&message, CONSUMER_PROTOCOL_VERSION)
}

pub fn decode_subscription(bytes: &[u8]) -> Result<Subscription, String> {
    let (version, body) = split_version(bytes)?;
    let mut reader = Reader { bytes: body };
    let read = |reader: &mut Reader<'_>| -> Result<Subscription, String> {
        let count = reader.array_len(STRING_BYTES_MIN)?;
        let topics = (0..count)
            .map(|_| reader.string())
            .collect::<Result<Vec<_>, _>>()?;
        let mut subscription = Subscription::new(topics);
        subscription.user_data = reader.nullable_bytes()?;
        if version >= 1 {
            subscription.owned_partitions = reader.topic_partitions()?;
        }
        if version >= 2 {
            subscription.generation = reader.i32()?;
        }
        if version >= 3 {
            subscription.rack_id = reader.nullable_string()?;
        }
        Ok(subscription)
    };
    read(&mut reader).map_err(|error| format!("subscription v{version}: {error}"))
}

pub fn encode_assignment(assignment: &Assignment) -> Bytes {
    let assigned = by_topic(&assignment.partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            AssignedTopic::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    let message = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(assigned)
        .with_user_data(assignment.user_data.clone());
    with_version(&message, CONSUMER_PROTOCOL_VERSION)
}

/// An empty answer means the leader assigned this member nothing (the
/// coordinator sends empty bytes for a member the leader left out).
pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment, String> {
    if bytes.is_empty() {
        return Ok(Assignment::default());
    }
    let (version, body) = split_version(bytes)?;
    let mut reader = Reader { bytes: body };
    let read = |reader: &mut Reader<'_>| -> Result<Assignment, String> {
        let mut partitions = reader.topic_partitions()?;
        partitions.dedup();
        let user_data = reader.nullable_bytes()?;
        Ok(Assignment {
            partitions,
            user_data,
        })
    };
    read(&mut reader).map_err(|error| format!("assignment v{version}: {error}"))
}

/// Smallest encoding of a string (its length) and of a partition number.
const STRING_BYTES_MIN: usize = 2;
const PARTITION_BYTES: usize = 4;

/// Reads the consumer protocol's (non-flexible) encoding. Every count is
/// checked against the bytes left before anything is reserved for it.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, length: usize) -> Result<&[u8], String> {
        if length > self.bytes.len() {
            return Err(format!("{length} bytes needed, {} left", self.bytes.len()));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let raw = self.take(2)?;
        Ok(i16::from_be_bytes([raw[0], raw[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let raw = self.take(4)?;
        Ok(i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, String> {
        let length = self.i16()?;
        if length < 0 {
            return Ok(None);
        }
        let raw = self.take(length as usize)?;
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| "a string is not UTF-8".to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        self.nullable_string()?
            .ok_or_else(|| "a null string where one is required".to_string())
    }

    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, String> {
        let length = self.i32()?;
        if length < 0 {
            return Ok(None);
        }
        Ok(Some(Bytes::copy_from_slice(self.take(length as usize)?)))
    }

    /// An array's count, refused when its elements cannot fit in the bytes
    /// left; a null array (-1) reads as empty, as Java reads it.
    fn array_len(&mut self, element_bytes_min: usize) -> Result<usize, String> {
        let count = self.i32()?;
        if count == -1 {
            return Ok(0);
        }
        let count = usize::try_from(count).map_err(|_| format!("array count {count}"))?;
        if count.saturating_mul(element_bytes_min) > self.bytes.len() {
            return Err(format!(
                "array of {count} cannot fit in {} bytes",
                self.bytes.len()
            ));
        }
        Ok(count)
    }

    /// `[topic, [partition]]`, flattened and sorted.
    fn topic_partitions(&mut self) -> Result<Vec<TopicPartition>, String> {
        let topics = self.array_len(STRING_BYTES_MIN + 4)?;
        let mut partitions = Vec::new();
        for _ in 0..topics {
            let topic = self.string()?;
            let count = self.array_len(PARTITION_BYTES)?;
            for _ in 0..count {
                partitions.push(TopicPartition::new(topic.clone(), self.i32()?));
            }
        }
        partitions.sort();
        Ok(partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    /// Bytes as Java's `ConsumerProtocol.serializeSubscription` writes a
    /// version 3 subscription to `["a", "bc"]` with no owned partitions, no
    /// user data, generation 7 and no rack.
    #[test]
    fn subscription_bytes_match_the_java_layout() {
        let mut subscription = Subscription::new(["bc".to_string(), "a".to_string()]);
        subscription.generation = 7;
        let bytes = encode_subscription(&subscription);
        let expected: &[u8] = &[
            0, 3, // version
            0, 0, 0, 2, // topics: 2
            0, 1, b'a', // "a"
            0, 2, b'b', b'c', // "bc"
            0xff, 0xff, 0xff, 0xff, // user data: null
            0, 0, 0, 0, // owned partitions: none
            0, 0, 0, 7, // generation
            0xff, 0xff, // rack: null
        ];
        assert_eq!(&bytes[..], expected);
        assert_eq!(decode_subscription(&bytes).unwrap(), subscription);
    }

    #[test]
    fn assignment_bytes_match_the_java_layout() {
        let assignment = Assignment {
            partitions: vec![tp("t", 2), tp("t", 0)],
            user_data: None,
        };
        let bytes = encode_assignment(&assignment);
        let expected: &[u8] = &[
            0, 3, // version
            0, 0, 0, 1, // topics: 1
            0, 1, b't', // "t"
            0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, // partitions [0, 2]
            0xff, 0xff, 0xff, 0xff, // user data: null
        ];
        assert_eq!(&bytes[..], expected);
        let decoded = decode_assignment(&bytes).unwrap();
        assert_eq!(decoded.partitions, vec![tp("t", 0), tp("t", 2)]);
    }

    #[test]
    fn older_versions_decode_and_newer_ones_keep_the_known_prefix() {
        // Version 0, as old clients (and librdkafka) write it: topics and
        // user data only.
        let v0: &[u8] = &[0, 0, 0, 0, 0, 1, 0, 1, b'x', 0, 0, 0, 1, 9];
        let decoded = decode_subscription(v0).unwrap();
        assert_eq!(decoded.topics, vec!["x".to_string()]);
        assert_eq!(decoded.user_data.as_deref(), Some(&[9u8][..]));
        assert_eq!(decoded.generation, NO_GENERATION);
        // A future version 4 with an extra trailing field.
        let mut v4 = encode_subscription(&Subscription::new(["x".to_string()])).to_vec();
        v4[1] = 4;
        v4.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(decode_subscription(&v4).unwrap().topics, vec!["x"]);
        assert!(decode_subscription(&[0xff, 0xff]).is_err());
        assert!(decode_subscription(&[0]).is_err());
        assert!(decode_subscription(&[0, 3, 0, 0, 0, 9]).is_err());
        assert_eq!(decode_assignment(&[]).unwrap(), Assignment::default());
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 1]).is_err());
        // A huge declared count is refused before anything is reserved.
        assert!(decode_subscription(&[0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 1, b'x']).is_err());
        assert!(decode_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]).is_err());
    }

    fn topic_name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9._-]{0,12}"
    }

    fn partitions() -> impl Strategy<Value = Vec<TopicPartition>> {
        proptest::collection::btree_set((topic_name(), 0..64i32), 0..20).prop_map(|set| {
            set.into_iter()
                .map(|(t, p)| TopicPartition::new(t, p))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn subscriptions_round_trip(
            topics in proptest::collection::btree_set(topic_name(), 0..10),
            owned in partitions(),
            generation in -1..1000i32,
            user_data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            rack_id in proptest::option::of(topic_name()),
        ) {
            let subscription = Subscription {
                topics: topics.into_iter().collect(),
                user_data: user_data.map(Bytes::from),
                owned_partitions: owned,
                generation,
                rack_id,
            };
            let bytes = encode_subscription(&subscription);
            prop_assert_eq!(decode_subscription(&bytes).unwrap(), subscription);
        }

        #[test]
        fn assignments_round_trip(
            assigned in partitions(),
            user_data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        ) {
            let assignment = Assignment { partitions: assigned, user_data: user_data.map(Bytes::from) };
            let bytes = encode_assignment(&assignment);
            prop_assert_eq!(decode_assignment(&bytes).unwrap(), assignment);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_subscription(&bytes);
            let _ = decode_assignment(&bytes);
        }
    }
}
