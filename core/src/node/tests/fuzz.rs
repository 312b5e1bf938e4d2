//! The node's decoding paths under generated hostile input: request frames
//! of every supported key and version whose bodies are arbitrary bytes or
//! a valid request with bytes flipped, cut or inserted, and Produce
//! requests whose record batches (built with every codec) are damaged and
//! then given a correct CRC again, so validation and decompression see
//! them. Whatever a frame holds, it may cost its own connection and
//! nothing else: the node never panics (its invariants are asserts), an
//! acknowledged record stays readable, and a fresh connection is served.
//!
//! The test command runs proptest's default number of cases; a longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p sluice-core fuzz_`.

use proptest::prelude::*;

use super::*;
use crate::batch::builder::{BatchBuilder, Compression, ProducerIdentity, RecordData};
use crate::batch::write_crc;

/// Partitions the fuzzed node may hold: a create decoded from random bytes
/// may ask for any number, which the broker's limits refuse before
/// anything is built.
const PARTITIONS_MAX: &str = "64";

/// One change to a frame or batch: positions and lengths wrap around the
/// bytes they apply to.
#[derive(Debug, Clone)]
enum Damage {
    Flip {
        at: usize,
        with: u8,
    },
    Cut {
        keep: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// A 32-bit field set to an extreme (counts and lengths).
    Extreme {
        at: usize,
        value: i32,
    },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, with)| Damage::Flip { at, with }),
        any::<usize>().prop_map(|keep| Damage::Cut { keep }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (
            any::<usize>(),
            prop_oneof![
                Just(-1),
                Just(0),
                Just(i32::MAX),
                Just(i32::MIN),
                Just(1 << 20)
            ]
        )
            .prop_map(|(at, value)| Damage::Extreme { at, value }),
    ]
}

/// Applies `damages` to `bytes` from byte `from` on (a frame's length
/// prefix, or a batch's framing, stays as the caller wants it).
fn apply(bytes: &mut Vec<u8>, from: usize, damages: &[Damage]) {
    for damage in damages {
        let span = bytes.len().saturating_sub(from);
        if span == 0 {
            return;
        }
        match damage {
            Damage::Flip { at, with } => bytes[from + at % span] ^= with | 1,
            Damage::Cut { keep } => bytes.truncate(from + keep % span),
            Damage::Insert { at, bytes: more } => {
                let at = from + at % (span + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Damage::Extreme { at, value } if span >= 4 => {
                let at = from + at % (span - 3);
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            Damage::Extreme { .. } => {}
        }
    }
}

/// A frame: request header of `key` at `version`, then `body`.
fn frame(key: ApiKey, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")))
        .encode(&mut buf, key.request_header_version(version))
        .expect("header encodes");
    buf.extend_from_slice(body);
    buf.to_vec()
}

/// A Produce of `batch` to partition 0 of "t" at `version` (by name; by
/// topic id from v13), encoded whole.
fn produce_frame(h: &Harness, version: i16, acks: i16, batch: Bytes) -> Vec<u8> {
    let data = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(batch));
    let mut topic = produce_request::TopicProduceData::default().with_partition_data(vec![data]);
    if version >= 13 {
        topic.topic_id = uuid::Uuid::from_bytes(h.node.broker.topics.get("t").expect("t").id);
    } else {
        topic.name = TopicName(StrBytes::from_static_str("t"));
    }
    let mut body = BytesMut::new();
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(1000)
        .with_topic_data(vec![topic])
        .encode(&mut body, version)
        .expect("produce encodes");
    frame(ApiKey::Produce, version, 7, &body)
}

/// A batch of `values` with `compression`.
fn batch_of(values: &[Vec<u8>], compression: Compression) -> Vec<u8> {
    let mut builder = BatchBuilder::new().with_base_timestamp(1_000_000);
    for value in values {
        builder.append(&RecordData::<(&[u8], Option<&[u8]>)> {
            timestamp_ms: 1_000_000,
            key: Some(b"k"),
            value: Some(value),
            headers: &[],
        });
    }
    builder
        .build(compression, ProducerIdentity::NONE)
        .expect("builds")
        .to_vec()
}

/// A node with topic "t" holding one acknowledged record, "kept".
fn seeded() -> Harness {
    let mut h = Harness::new(
        MemStorage::new(),
        &[
            ("max.broker.partitions", PARTITIONS_MAX),
            ("max.topic.partitions", PARTITIONS_MAX),
        ],
    );
    assert_eq!(h.create_topic("t", 1, &[]), 0);
    let c = h.produce("t", 0, 1, one_record(b"kept"));
    h.sync_all();
    assert_eq!(h.produce_result(c), (0, 0));
    h
}

/// Sends `bytes` as one frame (its length prefix added) on a fresh
/// connection, then lets every sync the node asks for complete.
fn offer(h: &mut Harness, round: u64, bytes: &[u8]) {
    h.connection = ConnectionId(1_000 + round);
    h.node.handle_connect(Now::at(h.now_ms), h.connection, PEER);
    let _ = h.send_raw(Bytes::copy_from_slice(bytes));
    h.sync_all();
    h.now_ms += 1;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
}

/// After the hostile frames: a fresh connection is served, and the
/// acknowledged record is still the partition's first.
fn still_sound(h: &mut Harness) {
    h.connection = ConnectionId(999_999);
    h.node.handle_connect(Now::at(h.now_ms), h.connection, PEER);
    h.sent.clear();
    h.closed = false;
    let c = h.fetch("t", 0, 0, 0);
    h.sync_all();
    let data = h.fetch_result(c);
    assert_eq!(data.error_code, 0);
    let values = values_in(data.records.as_deref().unwrap_or_default());
    assert_eq!(values.first().map(|v| v.as_slice()), Some(&b"kept"[..]));
    assert!(!h.closed, "a well-formed fetch was served");
}

fn fuzzed_kinds() -> Vec<(ApiKey, i16)> {
    crate::wire::versions::SUPPORTED
        .iter()
        .flat_map(|&(key, min, max)| (min..=max).map(move |v| (key, v)))
        .collect()
}

proptest! {
    /// Arbitrary bodies behind valid headers of every supported kind and
    /// version.
    #[test]
    fn fuzz_request_bodies(
        cases in proptest::collection::vec(
            (any::<proptest::sample::Index>(), proptest::collection::vec(any::<u8>(), 0..256)),
            1..6,
        )
    ) {
        let kinds = fuzzed_kinds();
        let mut h = seeded();
        for (round, (kind, body)) in cases.iter().enumerate() {
            let (key, version) = kinds[kind.index(kinds.len())];
            offer(&mut h, round as u64, &frame(key, version, round as i32, body));
        }
        still_sound(&mut h);
    }

    /// Valid Produce requests of every version, damaged anywhere after the
    /// length prefix: header, request fields, batch.
    #[test]
    fn fuzz_damaged_produce_frames(
        version in 3i16..=13,
        acks in prop_oneof![Just(-1i16), Just(0), Just(1)],
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..5),
        codec in 0usize..5,
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let mut h = seeded();
        let batch = batch_of(&values, Compression::ALL[codec]);
        let mut bytes = produce_frame(&h, version, acks, Bytes::from(batch));
        apply(&mut bytes, 0, &damages);
        offer(&mut h, 0, &bytes);
        still_sound(&mut h);
    }

    /// Record batches of every codec damaged past the CRC field and given
    /// a correct CRC again: the node's validation and decompression see
    /// every damaged length, count, varint and compressed stream.
    #[test]
    fn fuzz_batches_with_correct_crcs(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
        codec in 0usize..5,
        damages in proptest::collection::vec(damage(), 1..4),
        attributes in proptest::option::of(any::<i16>()),
    ) {
        let mut h = seeded();
        let mut batch = batch_of(&values, Compression::ALL[codec]);
        if let Some(attributes) = attributes {
            batch[crate::batch::ATTRIBUTES_OFFSET..crate::batch::ATTRIBUTES_OFFSET + 2]
                .copy_from_slice(&attributes.to_be_bytes());
        }
        // Past the batch length, epoch, magic and CRC fields.
        apply(&mut batch, crate::batch::CRC_START, &damages);
        // The length field says what is there, as a client's would.
        let length = (batch.len() - crate::batch::LOG_OVERHEAD) as i32;
        batch[crate::batch::LENGTH_OFFSET..crate::batch::LOG_OVERHEAD]
            .copy_from_slice(&length.to_be_bytes());
        write_crc(&mut batch);
        let bytes = produce_frame(&h, 9, 1, Bytes::from(batch));
        offer(&mut h, 0, &bytes);
        still_sound(&mut h);
    }
}
