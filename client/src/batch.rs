//! Record batch v2 on the client side: the producer's encoder and the
//! consumer's reading of fetched bytes.
//!
//! The encoder writes each record as it is appended (so the batch's size is
//! always exact), and on `build` compresses the records as one block, writes
//! the 61-byte header and the CRC-32C over bytes 21..end (PROTOCOL.md §3).
//! The base offset and the partition leader epoch are left for the broker.
//! Reading uses `sluice_core::batch`, the same parser the broker trusts.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_core::batch::{self as core_batch, HEADER_BYTES, LOG_OVERHEAD};

use crate::config::Compression;
use crate::error::Error;
use crate::record::{ConsumerRecord, Header, TimestampType, TopicPartition};

/// The CRC covers the batch from the attributes field to its end.
const CRC_START: usize = 21;
const CRC_OFFSET: usize = 17;
const MAGIC: i8 = 2;

/// Producer id, epoch and base sequence of a batch. Idempotence will fill
/// them in; until then every batch carries "no producer" (-1s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerIdentity {
    pub const NONE: ProducerIdentity = ProducerIdentity {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// The parts of a record that go into a batch.
#[derive(Debug, Clone, Copy)]
pub struct RecordData<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [Header],
}

/// Builds one batch record by record.
///
/// The records are encoded after room left for the batch header, so an
/// uncompressed batch is finished in place: its header and CRC are written
/// into that room and the buffer is handed over without a copy.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// Room for the header, then the encoded records, uncompressed; empty
    /// until the first record, and after an uncompressed build.
    buffer: BytesMut,
    /// The batch an uncompressed build made of `buffer`.
    built: Option<Bytes>,
    /// Capacity to reserve at the first record.
    capacity: usize,
    size_bytes: usize,
    record_count: i32,
    timestamp_first_ms: i64,
    timestamp_max_ms: i64,
}

impl Default for BatchBuilder {
    fn default() -> BatchBuilder {
        BatchBuilder::with_capacity(0)
    }
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_capacity(0)
    }

    /// A builder that reserves `bytes` at its first record, so a buffer
    /// that stays within them does not grow by copying.
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        BatchBuilder {
            buffer: BytesMut::new(),
            built: None,
            capacity: bytes,
            size_bytes: HEADER_BYTES,
            record_count: 0,
            timestamp_first_ms: 0,
            timestamp_max_ms: 0,
        }
    }

    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Size of the batch if built now without compression.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The encoded records, uncompressed.
    fn records(&self) -> &[u8] {
        match &self.built {
            Some(batch) => &batch[HEADER_BYTES..],
            None => &self.buffer[HEADER_BYTES..],
        }
    }

    /// Bytes the record would add as the next record of this batch.
    pub fn next_record_bytes(&self, record: &RecordData<'_>) -> usize {
        let body = self.record_body_bytes(record);
        varint_bytes(body as i64) + body
    }

    fn timestamp_delta(&self, record: &RecordData<'_>) -> i64 {
        if self.is_empty() {
            0
        } else {
            record.timestamp_ms.wrapping_sub(self.timestamp_first_ms)
        }
    }

    fn record_body_bytes(&self, record: &RecordData<'_>) -> usize {
        let headers: usize = record
            .headers
            .iter()
            .map(|h| nullable_bytes(Some(&h.key)) + nullable_bytes(h.value.as_deref()))
            .sum();
        1 + varint_bytes(self.timestamp_delta(record))
            + varint_bytes(self.record_count as i64)
            + nullable_bytes(record.key)
            + nullable_bytes(record.value)
            + varint_bytes(record.headers.len() as i64)
            + headers
    }

    /// Appends a record; returns the bytes it added.
    pub fn append(&mut self, record: &RecordData<'_>) -> usize {
        assert!(
            self.record_count < i32::MAX,
            "record count overflows the batch"
        );
        assert!(self.built.is_none(), "append to a built batch");
        let body = self.record_body_bytes(record);
        let timestamp_delta = self.timestamp_delta(record);
        let offset_delta = self.record_count as i64;
        if self.buffer.is_empty() {
            self.buffer.reserve(
                self.capacity
                    .max(HEADER_BYTES + varint_bytes(body as i64) + body),
            );
            self.buffer.put_bytes(0, HEADER_BYTES);
        }
        let before = self.buffer.len();
        let out = &mut self.buffer;
        put_varint(out, body as i64);
        let body_start = out.len();
        out.put_u8(0); // record attributes: unused in v2
        put_varint(out, timestamp_delta);
        put_varint(out, offset_delta);
        put_nullable(out, record.key);
        put_nullable(out, record.value);
        put_varint(out, record.headers.len() as i64);
        for header in record.headers {
            put_nullable(out, Some(&header.key));
            put_nullable(out, header.value.as_deref());
        }
        assert_eq!(
            out.len() - body_start,
            body,
            "record size estimate is exact"
        );
        if self.record_count == 0 {
            self.timestamp_first_ms = record.timestamp_ms;
            self.timestamp_max_ms = record.timestamp_ms;
        }
        self.timestamp_max_ms = self.timestamp_max_ms.max(record.timestamp_ms);
        self.record_count += 1;
        let added = self.buffer.len() - before;
        self.size_bytes += added;
        added
    }

    /// The finished batch: header, compressed records, CRC. The first
    /// uncompressed build takes the builder's buffer as the batch; later
    /// builds copy.
    pub fn build(
        &mut self,
        compression: Compression,
        identity: ProducerIdentity,
    ) -> Result<Bytes, String> {
        assert!(self.record_count > 0, "an empty batch is never built");
        if compression == Compression::None && self.built.is_none() {
            let length = i32::try_from(self.buffer.len() - LOG_OVERHEAD)
                .map_err(|_| "batch larger than 2 GiB".to_string())?;
            let mut header = [0u8; HEADER_BYTES];
            self.put_header(&mut &mut header[..], length, compression, identity);
            self.buffer[..HEADER_BYTES].copy_from_slice(&header);
            let crc = crc32c::crc32c(&self.buffer[CRC_START..]);
            self.buffer[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
            let batch = self.buffer.split().freeze();
            self.built = Some(batch.clone());
            return Ok(batch);
        }
        let records = compress(compression, self.records())?;
        let length = HEADER_BYTES - LOG_OVERHEAD + records.len();
        let length = i32::try_from(length).map_err(|_| "batch larger than 2 GiB".to_string())?;
        let mut batch = BytesMut::with_capacity(HEADER_BYTES + records.len());
        self.put_header(&mut batch, length, compression, identity);
        batch.extend_from_slice(&records);
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        Ok(batch.freeze())
    }

    /// The batch header, with a zero CRC (it covers what follows).
    fn put_header(
        &self,
        out: &mut impl BufMut,
        length: i32,
        compression: Compression,
        identity: ProducerIdentity,
    ) {
        let batch = out;
        batch.put_i64(0); // base offset: the broker assigns it
        batch.put_i32(length);
        batch.put_i32(-1); // partition leader epoch: the leader stamps it
        batch.put_i8(MAGIC);
        batch.put_u32(0); // CRC, filled in below
        batch.put_i16(compression.code());
        batch.put_i32(self.record_count - 1);
        batch.put_i64(self.timestamp_first_ms);
        batch.put_i64(self.timestamp_max_ms);
        batch.put_i64(identity.producer_id);
        batch.put_i16(identity.producer_epoch);
        batch.put_i32(identity.base_sequence);
        batch.put_i32(self.record_count);
    }
}

/// Compresses the records of a batch as one block.
pub fn compress(compression: Compression, plain: &[u8]) -> Result<Bytes, String> {
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let mut out = BytesMut::new();
    let result = match compression {
        Compression::None => {
            out.extend_from_slice(plain);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(&mut out, |b: &mut BytesMut| {
            b.extend_from_slice(plain);
            Ok(())
        }),
        Compression::Snappy => Snappy::compress(&mut out, |b: &mut BytesMut| {
            b.extend_from_slice(plain);
            Ok(())
        }),
        Compression::Lz4 => Lz4::compress(&mut out, |b: &mut BytesMut| {
            b.extend_from_slice(plain);
            Ok(())
        }),
        Compression::Zstd => Zstd::compress(&mut out, |b: &mut BytesMut| {
            b.extend_from_slice(plain);
            Ok(())
        }),
    };
    result.map_err(|e| format!("{compression:?} compression failed: {e}"))?;
    Ok(out.freeze())
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Bytes of a zigzag varint (varints and varlongs share the encoding).
pub fn varint_bytes(value: i64) -> usize {
    let bits = 64 - zigzag(value).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

pub fn put_varint(out: &mut BytesMut, value: i64) {
    let mut rest = zigzag(value);
    while rest >= 0x80 {
        out.put_u8((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

fn nullable_bytes(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_bytes(-1),
        Some(b) => varint_bytes(b.len() as i64) + b.len(),
    }
}

fn put_nullable(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
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

/// Reads the complete batches of a fetch answer, skipping records below
/// `position` and control batches; a partial batch at the end (cut by the
/// size limit) is ignored, as the protocol allows.
pub fn read_fetched(tp: &TopicPartition, bytes: &[u8], position: i64) -> Result<Fetched, Error> {
    let mut fetched = Fetched::default();
    for (header, range) in core_batch::headers_in(bytes) {
        fetched.batch_count += 1;
        if header.next_offset() <= position {
            continue;
        }
        fetched.next_offset = Some(header.next_offset());
        if header.is_control() {
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
    use proptest::prelude::*;

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
    fn varint_sizes_match_the_encoding() {
        for value in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_bytes(value), "{value}");
            let mut read: &[u8] = &out;
            assert_eq!(core_batch::read_varlong(&mut read), Some(value));
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
        control[21..23].copy_from_slice(&(0x30i16).to_be_bytes());
        let crc = core_batch::compute_crc(&control);
        control[17..21].copy_from_slice(&crc.to_be_bytes());
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
