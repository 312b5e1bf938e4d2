//! Record batch v2 on the client side: the producer's encoder and the
//! consumer's reading of fetched bytes.
//!
//! Both are the core's: batches are built with `sluice_core::batch::builder`,
//! the encoder the broker uses for its own records, and read with
//! `sluice_core::batch`, the parser the broker trusts. This module adapts
//! them to the client's record types.

use std::collections::BTreeSet;

use sluice_core::batch as core_batch;
use sluice_core::batch::builder::RecordHeader;

use crate::error::Error;
use crate::record::{ConsumerRecord, Header, TimestampType, TopicPartition};

pub use sluice_core::batch::builder::{compress, BatchBuilder, BuildError, ProducerIdentity};

/// The parts of a record that go into a batch.
pub type RecordData<'a> = core_batch::builder::RecordData<'a, Header>;

impl RecordHeader for Header {
    fn key(&self) -> &[u8] {
        &self.key
    }

    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

/// What one partition's fetched bytes held.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Records at or after the fetch position, in offset order.
    pub records: Vec<ConsumerRecord>,
    /// The offset after the last complete batch, when any batch ended at or
    /// after the position (control batches included).
    pub next_offset: Option<i64>,
    /// Whole batches seen; zero with non-empty bytes means only a partial batch came.
    pub batch_count: usize,
}

/// A transaction a read_committed fetch answer names as aborted: the
/// producer's transactional records from `first_offset` up to its ABORT
/// marker are not to be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: i64,
}

/// The control record type of an ABORT marker (key: int16 version, int16 type).
const CONTROL_TYPE_ABORT: i16 = 0;

/// Kafka's filter of aborted transactions (`CompletedFetch`), over the
/// batches of one fetch answer in order. A producer joins the aborted set
/// once a batch reaches the first offset of one of its aborted
/// transactions, and leaves it at its ABORT marker; its transactional
/// batches in between are skipped.
#[derive(Debug)]
struct AbortedFilter {
    /// Not reached yet, the highest first offset first (popped from the end).
    pending: Vec<AbortedTransaction>,
    producers: BTreeSet<i64>,
}

impl AbortedFilter {
    fn new(aborted: &[AbortedTransaction]) -> AbortedFilter {
        let mut pending = aborted.to_vec();
        pending.sort_by_key(|t| std::cmp::Reverse(t.first_offset));
        AbortedFilter {
            pending,
            producers: BTreeSet::new(),
        }
    }

    /// Whether the batch's records are skipped, after updating the
    /// aborted set with it. `batch` holds the whole batch.
    fn skips(
        &mut self,
        tp: &TopicPartition,
        header: &core_batch::BatchHeader,
        batch: &[u8],
    ) -> Result<bool, Error> {
        if header.producer_id < 0 {
            return Ok(false);
        }
        while let Some(next) = self.pending.last() {
            if next.first_offset > header.last_offset() {
                break;
            }
            self.producers.insert(next.producer_id);
            self.pending.pop();
        }
        if header.is_control() {
            if is_abort_marker(tp, header, batch)? {
                self.producers.remove(&header.producer_id);
            }
            return Ok(true);
        }
        Ok(header.is_transactional() && self.producers.contains(&header.producer_id))
    }
}

fn is_abort_marker(
    tp: &TopicPartition,
    header: &core_batch::BatchHeader,
    batch: &[u8],
) -> Result<bool, Error> {
    let records = core_batch::decode_records(batch).map_err(|error| Error::CorruptBatch {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset: header.base_offset,
        detail: format!("{error:?}"),
    })?;
    let control_type = records
        .first()
        .and_then(|record| record.key.as_deref())
        .filter(|key| key.len() >= 4)
        .map(|key| i16::from_be_bytes([key[2], key[3]]));
    Ok(control_type == Some(CONTROL_TYPE_ABORT))
}

/// Reads the complete batches of a fetch answer, skipping records below
/// `position` and control batches; a partial batch at the end (cut by the
/// size limit) is ignored, as the protocol allows.
pub fn read_fetched(tp: &TopicPartition, bytes: &[u8], position: i64) -> Result<Fetched, Error> {
    read_fetched_isolated(tp, bytes, position, None)
}

/// As `read_fetched`; at read_committed (`aborted` holds the answer's
/// aborted transactions, maybe none) the records of aborted transactions
/// are skipped too.
pub fn read_fetched_isolated(
    tp: &TopicPartition,
    bytes: &[u8],
    position: i64,
    aborted: Option<&[AbortedTransaction]>,
) -> Result<Fetched, Error> {
    let mut filter = aborted.map(AbortedFilter::new);
    let mut fetched = Fetched::default();
    for (header, range) in core_batch::headers_in(bytes) {
        fetched.batch_count += 1;
        let skipped = match &mut filter {
            Some(filter) => filter.skips(tp, &header, &bytes[range.clone()])?,
            None => false,
        };
        if header.next_offset() <= position {
            continue;
        }
        fetched.next_offset = Some(header.next_offset());
        if header.is_control() || skipped {
            continue;
        }
        let views =
            core_batch::decode_records(&bytes[range]).map_err(|error| Error::CorruptBatch {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: header.base_offset,
                detail: format!("{error:?}"),
            })?;
        let timestamp_type = if header.is_log_append_time() {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        };
        let records = views.into_iter().filter(|view| view.offset >= position);
        fetched.records.extend(records.map(|view| {
            ConsumerRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: view.offset,
                timestamp_ms: view.timestamp,
                timestamp_type,
                key: view.key,
                value: view.value,
                headers: view
                    .headers
                    .into_iter()
                    .map(|(key, value)| Header { key, value })
                    .collect(),
            }
        }));
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;
    use bytes::Bytes;
    use proptest::prelude::*;
    use sluice_core::batch::HEADER_BYTES;

    fn data<'a>(
        timestamp_ms: i64,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: &'a [Header],
    ) -> RecordData<'a> {
        RecordData {
            timestamp_ms,
            key,
            value,
            headers,
        }
    }

    #[test]
    fn later_builds_of_a_batch_built_in_place_agree_with_it() {
        let mut builder = BatchBuilder::with_capacity(4_096);
        for n in 0..20u8 {
            builder.append(&data(1_000 + n as i64, Some(&[n]), Some(&[n; 100]), &[]));
        }
        let size = builder.size_bytes();
        let first = builder
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap();
        assert_eq!((first.len(), builder.size_bytes()), (size, size));
        let again = builder
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap();
        assert_eq!(first, again, "a second build copies the same bytes");
        let tp = TopicPartition::new("t", 0);
        let plain = read_fetched(&tp, &first, 0).unwrap().records;
        for compression in [Compression::Gzip, Compression::Lz4] {
            let compressed = builder.build(compression, ProducerIdentity::NONE).unwrap();
            assert!(compressed.len() < first.len(), "{compression:?} compresses");
            let records = read_fetched(&tp, &compressed, 0).unwrap().records;
            assert_eq!(records, plain, "{compression:?} holds the same records");
        }
    }

    #[test]
    fn a_built_batch_passes_the_broker_checks() {
        let headers = [Header::new("h", "x"), Header::new("h", "y")];
        let mut builder = BatchBuilder::new();
        builder.append(&data(1_000, Some(b"k"), Some(b"v"), &headers));
        builder.append(&data(990, None, None, &[]));
        let batch = builder
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap();
        assert_eq!(batch.len(), builder.size_bytes());
        let header = core_batch::check_framing(&batch).expect("framing and CRC");
        core_batch::validate_produced(&batch, &header, None).expect("valid produce");
        assert_eq!(
            (header.base_timestamp, header.max_timestamp),
            (1_000, 1_000)
        );
        assert_eq!((header.producer_id, header.base_sequence), (-1, -1));
        let records = core_batch::decode_records(&batch).unwrap();
        assert_eq!(records[1].timestamp, 990);
        assert_eq!(records[0].headers.len(), 2, "duplicate header keys survive");
        assert_eq!(records[1].value, None);
    }

    #[test]
    fn reading_skips_records_below_the_position_and_control_batches() {
        let tp = TopicPartition::new("t", 0);
        let mut first = BatchBuilder::new();
        for value in [b"a", b"b", b"c"] {
            first.append(&data(5, None, Some(value), &[]));
        }
        let mut bytes = first
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap()
            .to_vec();
        let mut control = BatchBuilder::new();
        control.append(&data(
            5,
            Some(&[0, 0, 0, 1]),
            Some(&[0, 0, 0, 0, 0, 0]),
            &[],
        ));
        let mut control = control
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap()
            .to_vec();
        core_batch::assign_offset(&mut control, 3, 0);
        control[core_batch::ATTRIBUTES_OFFSET..core_batch::LAST_OFFSET_DELTA_OFFSET]
            .copy_from_slice(&(0x30i16).to_be_bytes());
        core_batch::write_crc(&mut control);
        bytes.extend_from_slice(&control);
        let fetched = read_fetched(&tp, &bytes, 1).unwrap();
        let offsets: Vec<i64> = fetched.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1, 2]);
        assert_eq!(
            fetched.next_offset,
            Some(4),
            "the control batch moves the position"
        );
        let cut = &bytes[..bytes.len() - 5];
        assert_eq!(read_fetched(&tp, cut, 1).unwrap().next_offset, Some(3));
    }

    #[test]
    fn a_flipped_bit_is_reported_as_corrupt() {
        let mut builder = BatchBuilder::new();
        builder.append(&data(5, None, Some(b"value"), &[]));
        let mut bytes = builder
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let result = read_fetched(&TopicPartition::new("t", 0), &bytes, 0);
        assert!(
            matches!(result, Err(Error::CorruptBatch { .. })),
            "{result:?}"
        );
    }

    /// A transactional batch of `pid` at `base_offset`, one record per value.
    fn transactional(pid: i64, base_offset: i64, values: &[&str]) -> Vec<u8> {
        let specs: Vec<core_batch::RecordSpec<'_>> = values
            .iter()
            .map(|value| (None, Some(value.as_bytes()), vec![], 0))
            .collect();
        let identity = ProducerIdentity {
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: 0,
        };
        let mut batch = core_batch::build_transactional_batch(5, identity, &specs);
        core_batch::assign_offset(&mut batch, base_offset, 0);
        batch
    }

    fn plain(base_offset: i64, values: &[&str]) -> Vec<u8> {
        let specs: Vec<core_batch::RecordSpec<'_>> = values
            .iter()
            .map(|value| (None, Some(value.as_bytes()), vec![], 0))
            .collect();
        let mut batch = core_batch::build_batch(5, &specs);
        core_batch::assign_offset(&mut batch, base_offset, 0);
        batch
    }

    /// A COMMIT or ABORT marker of `pid` at `offset`, in Kafka's layout.
    fn marker(pid: i64, offset: i64, commit: bool) -> Vec<u8> {
        let key = [0, 0, 0, u8::from(commit)];
        let value = [0, 0, 0, 0, 0, 0];
        let identity = ProducerIdentity {
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: -1,
        };
        let specs: Vec<core_batch::RecordSpec<'_>> = vec![(Some(&key), Some(&value), vec![], 0)];
        let mut batch = core_batch::build_transactional_batch(5, identity, &specs);
        let at = core_batch::ATTRIBUTES_OFFSET;
        let attributes =
            i16::from_be_bytes([batch[at], batch[at + 1]]) | core_batch::ATTRIBUTE_CONTROL;
        batch[at..at + 2].copy_from_slice(&attributes.to_be_bytes());
        core_batch::write_crc(&mut batch);
        core_batch::assign_offset(&mut batch, offset, 0);
        batch
    }

    fn values(fetched: &Fetched) -> Vec<String> {
        fetched
            .records
            .iter()
            .map(|r| String::from_utf8(r.value.as_ref().unwrap().to_vec()).unwrap())
            .collect()
    }

    const P1: i64 = 1_000;
    const P2: i64 = 2_000;

    /// P1 aborts at 0-1 and 4 (marker 6) and then commits at 7; P2
    /// commits at 2-3 (marker 5) in between; a plain batch closes.
    fn interleaved() -> Vec<u8> {
        [
            transactional(P1, 0, &["p1-aborted-0", "p1-aborted-1"]),
            transactional(P2, 2, &["p2-committed-2", "p2-committed-3"]),
            transactional(P1, 4, &["p1-aborted-4"]),
            marker(P2, 5, true),
            marker(P1, 6, false),
            transactional(P1, 7, &["p1-committed-7"]),
            plain(8, &["plain-8"]),
        ]
        .concat()
    }

    #[test]
    fn read_committed_drops_aborted_transactions_of_interleaved_producers() {
        let tp = TopicPartition::new("t", 0);
        let bytes = interleaved();
        let aborted = [AbortedTransaction {
            producer_id: P1,
            first_offset: 0,
        }];
        let committed = read_fetched_isolated(&tp, &bytes, 0, Some(&aborted)).unwrap();
        assert_eq!(
            values(&committed),
            [
                "p2-committed-2",
                "p2-committed-3",
                "p1-committed-7",
                "plain-8"
            ]
        );
        assert_eq!(committed.next_offset, Some(9));
        let offsets: Vec<i64> = committed.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [2, 3, 7, 8]);
        let everything = read_fetched(&tp, &bytes, 0).unwrap();
        assert_eq!(
            everything.records.len(),
            7,
            "read_uncommitted keeps all records"
        );
        let nothing_aborted = read_fetched_isolated(&tp, &bytes, 0, Some(&[])).unwrap();
        assert_eq!(nothing_aborted.records, everything.records);
    }

    #[test]
    fn read_committed_from_the_middle_of_an_aborted_transaction() {
        let tp = TopicPartition::new("t", 0);
        let bytes = interleaved();
        let aborted = [AbortedTransaction {
            producer_id: P1,
            first_offset: 0,
        }];
        let fetched = read_fetched_isolated(&tp, &bytes, 1, Some(&aborted)).unwrap();
        assert_eq!(
            values(&fetched),
            [
                "p2-committed-2",
                "p2-committed-3",
                "p1-committed-7",
                "plain-8"
            ]
        );
    }

    #[test]
    fn an_aborted_transaction_starts_at_its_first_offset_not_before() {
        let tp = TopicPartition::new("t", 0);
        // P1 commits at 0 (marker 1), then aborts at 2-3 (marker 4), then
        // P2 aborts at 5 with no marker in this answer yet.
        let bytes = [
            transactional(P1, 0, &["p1-committed-0"]),
            marker(P1, 1, true),
            transactional(P1, 2, &["p1-aborted-2", "p1-aborted-3"]),
            marker(P1, 4, false),
            transactional(P2, 5, &["p2-aborted-5"]),
            transactional(P1, 6, &["p1-committed-6"]),
        ]
        .concat();
        let aborted = [
            AbortedTransaction {
                producer_id: P2,
                first_offset: 5,
            },
            AbortedTransaction {
                producer_id: P1,
                first_offset: 2,
            },
        ];
        let fetched = read_fetched_isolated(&tp, &bytes, 0, Some(&aborted)).unwrap();
        assert_eq!(values(&fetched), ["p1-committed-0", "p1-committed-6"]);
        assert_eq!(fetched.next_offset, Some(7));
    }

    type ArbitraryRecord = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(Vec<u8>, Option<Vec<u8>>)>,
    );

    fn arbitrary_record() -> impl Strategy<Value = ArbitraryRecord> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        (
            -10_000i64..10_000,
            proptest::option::of(bytes()),
            proptest::option::of(bytes()),
            proptest::collection::vec((bytes(), proptest::option::of(bytes())), 0..4),
        )
    }

    fn arbitrary_compression() -> impl Strategy<Value = Compression> {
        proptest::sample::select(Compression::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn batches_round_trip_through_the_broker_decoder(
            base_ms in 0i64..2_000_000_000_000,
            records in proptest::collection::vec(arbitrary_record(), 1..30),
            compression in arbitrary_compression(),
            base_offset in 0i64..1_000_000,
        ) {
            let mut builder = BatchBuilder::new();
            let mut expected_size = HEADER_BYTES;
            for (delta, key, value, headers) in &records {
                let headers: Vec<Header> = headers.iter().map(|(k, v)| Header {
                    key: Bytes::from(k.clone()), value: v.clone().map(Bytes::from),
                }).collect();
                let record = data(base_ms + delta, key.as_deref(), value.as_deref(), &headers);
                let predicted = builder.next_record_bytes(&record);
                prop_assert_eq!(builder.append(&record), predicted);
                expected_size += predicted;
            }
            prop_assert_eq!(builder.size_bytes(), expected_size);
            let mut batch = builder.build(compression, ProducerIdentity::NONE).unwrap().to_vec();
            core_batch::assign_offset(&mut batch, base_offset, 3);
            let header = core_batch::check_framing(&batch).unwrap();
            prop_assert_eq!(header.compression(), compression.code());
            prop_assert_eq!(header.record_count as usize, records.len());
            core_batch::validate_produced(&batch, &header, None).unwrap();
            let tp = TopicPartition::new("t", 0);
            let fetched = read_fetched(&tp, &batch, base_offset).unwrap();
            prop_assert_eq!(fetched.records.len(), records.len());
            prop_assert_eq!(fetched.next_offset, Some(base_offset + records.len() as i64));
            for (i, (got, (delta, key, value, headers))) in fetched.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base_offset + i as i64);
                prop_assert_eq!(got.timestamp_ms, base_ms + delta);
                prop_assert_eq!(got.key.as_deref(), key.as_deref());
                prop_assert_eq!(got.value.as_deref(), value.as_deref());
                let got_headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = got.headers.iter()
                    .map(|h| (h.key.to_vec(), h.value.as_ref().map(|v| v.to_vec()))).collect();
                prop_assert_eq!(&got_headers, headers);
            }
            prop_assert_eq!(header.max_timestamp, records.iter().map(|r| base_ms + r.0).max().unwrap());
        }
    }
}
