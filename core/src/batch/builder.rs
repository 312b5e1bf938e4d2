//! The record batch v2 encoder: the one writer of batches in Sluice. The
//! client's producer builds every batch it sends with it; the broker builds
//! its own records (`__consumer_offsets`, through `batch::build_batch`), and
//! tools and tests theirs.
//!
//! Records are encoded as they are appended, after room left for the
//! header, so the batch's size is always exact. An uncompressed batch is
//! finished in place: the header and the CRC-32C over bytes `CRC_START..`
//! are written into that room and the buffer is handed over without a copy.
//! A compressed build compresses the records as one block behind a new
//! header. The base offset and the partition leader epoch are left for the
//! broker to assign.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    nullable_bytes, put_nullable, put_varint, varint_bytes, write_crc, ATTRIBUTE_COMPRESSION_MASK,
    HEADER_BYTES, LOG_OVERHEAD, MAGIC,
};

/// Producer id, epoch and base sequence of a batch. Idempotence fills them
/// in; without it every batch carries "no producer" (-1s).
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

/// Compression of a record batch; the code is the batch's attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn code(self) -> i16 {
        let code = match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        };
        assert_eq!(code & ATTRIBUTE_COMPRESSION_MASK, code);
        code
    }
}

/// Why a batch could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// The batch length does not fit the header's i32.
    TooLarge,
    /// The codec failed; the text is its error.
    Compression(Compression, String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::TooLarge => f.write_str("batch larger than 2 GiB"),
            BuildError::Compression(codec, why) => write!(f, "{codec:?} compression failed: {why}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// A record header as the encoder reads it (Kafka allows a key twice).
pub trait RecordHeader {
    fn key(&self) -> &[u8];
    /// None is Kafka's null.
    fn value(&self) -> Option<&[u8]>;
}

impl RecordHeader for (&[u8], Option<&[u8]>) {
    fn key(&self) -> &[u8] {
        self.0
    }

    fn value(&self) -> Option<&[u8]> {
        self.1
    }
}

/// The parts of a record that go into a batch, with headers of any type
/// the encoder can read.
#[derive(Debug)]
pub struct RecordData<'a, H> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [H],
}

// By hand: a derive would ask for `H: Copy`, which borrowed headers need not be.
impl<H> Clone for RecordData<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H> Copy for RecordData<'_, H> {}

/// Builds one batch record by record.
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
    /// Record timestamps are deltas from it: the first record's timestamp,
    /// unless set before.
    timestamp_base_ms: Option<i64>,
    /// Largest of the base and the records' timestamps.
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
            timestamp_base_ms: None,
            timestamp_max_ms: 0,
        }
    }

    /// Sets the batch's base timestamp instead of taking the first
    /// record's; it also bounds the max timestamp from below.
    pub fn with_base_timestamp(mut self, timestamp_ms: i64) -> BatchBuilder {
        assert!(
            self.is_empty(),
            "the base timestamp comes before any record"
        );
        self.timestamp_base_ms = Some(timestamp_ms);
        self.timestamp_max_ms = timestamp_ms;
        self
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
    pub fn next_record_bytes<H: RecordHeader>(&self, record: &RecordData<'_, H>) -> usize {
        let body = self.record_body_bytes(record);
        varint_bytes(body as i64) + body
    }

    fn timestamp_delta<H>(&self, record: &RecordData<'_, H>) -> i64 {
        let base = self.timestamp_base_ms.unwrap_or(record.timestamp_ms);
        record.timestamp_ms.wrapping_sub(base)
    }

    fn record_body_bytes<H: RecordHeader>(&self, record: &RecordData<'_, H>) -> usize {
        let headers: usize = record
            .headers
            .iter()
            .map(|h| nullable_bytes(Some(h.key())) + nullable_bytes(h.value()))
            .sum();
        1 + varint_bytes(self.timestamp_delta(record))
            + varint_bytes(self.record_count as i64)
            + nullable_bytes(record.key)
            + nullable_bytes(record.value)
            + varint_bytes(record.headers.len() as i64)
            + headers
    }

    /// Appends a record; returns the bytes it added.
    pub fn append<H: RecordHeader>(&mut self, record: &RecordData<'_, H>) -> usize {
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
            put_nullable(out, Some(header.key()));
            put_nullable(out, header.value());
        }
        assert_eq!(
            out.len() - body_start,
            body,
            "record size estimate is exact"
        );
        if self.timestamp_base_ms.is_none() {
            self.timestamp_base_ms = Some(record.timestamp_ms);
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
    ) -> Result<Bytes, BuildError> {
        assert!(self.record_count > 0, "an empty batch is never built");
        if compression == Compression::None && self.built.is_none() {
            let length = batch_length(self.buffer.len() - HEADER_BYTES)?;
            let mut header = [0u8; HEADER_BYTES];
            self.put_header(&mut &mut header[..], length, compression, identity);
            self.buffer[..HEADER_BYTES].copy_from_slice(&header);
            write_crc(&mut self.buffer);
            let batch = self.buffer.split().freeze();
            self.built = Some(batch.clone());
            return Ok(batch);
        }
        let records = compress(compression, self.records())?;
        let length = batch_length(records.len())?;
        let mut batch = BytesMut::with_capacity(HEADER_BYTES + records.len());
        self.put_header(&mut batch, length, compression, identity);
        batch.extend_from_slice(&records);
        write_crc(&mut batch);
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
        let timestamp_base_ms = self.timestamp_base_ms.expect("set by the first record");
        out.put_i64(0); // base offset: the broker assigns it
        out.put_i32(length);
        out.put_i32(-1); // partition leader epoch: the leader stamps it
        out.put_i8(MAGIC);
        out.put_u32(0); // CRC, written once the batch is complete
        out.put_i16(compression.code());
        out.put_i32(self.record_count - 1);
        out.put_i64(timestamp_base_ms);
        out.put_i64(self.timestamp_max_ms);
        out.put_i64(identity.producer_id);
        out.put_i16(identity.producer_epoch);
        out.put_i32(identity.base_sequence);
        out.put_i32(self.record_count);
    }
}

/// The header's `batchLength` for records of `records_bytes`: what follows
/// the length field.
fn batch_length(records_bytes: usize) -> Result<i32, BuildError> {
    i32::try_from(HEADER_BYTES - LOG_OVERHEAD + records_bytes).map_err(|_| BuildError::TooLarge)
}

/// Compresses the records of a batch as one block.
pub fn compress(compression: Compression, plain: &[u8]) -> Result<Bytes, BuildError> {
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let mut out = BytesMut::new();
    let write_plain = |b: &mut BytesMut| {
        b.extend_from_slice(plain);
        Ok(())
    };
    let result = match compression {
        Compression::None => write_plain(&mut out),
        Compression::Gzip => Gzip::compress(&mut out, write_plain),
        Compression::Snappy => Snappy::compress(&mut out, write_plain),
        Compression::Lz4 => Lz4::compress(&mut out, write_plain),
        Compression::Zstd => Zstd::compress(&mut out, write_plain),
    };
    result.map_err(|e| BuildError::Compression(compression, e.to_string()))?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::super::{build_batch, read_varlong};
    use super::*;

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
            assert_eq!(read_varlong(&mut read), Some(value));
        }
    }

    /// The bytes `build_batch` wrote before it was built on this encoder:
    /// a first record with a timestamp delta of its own, headers with a
    /// null value, a record timestamped before the base.
    #[test]
    fn build_batch_bytes_are_unchanged() {
        let batch = build_batch(
            1_000,
            &[
                (
                    Some(b"k"),
                    Some(b"v"),
                    vec![(b"h", Some(b"x")), (b"n", None)],
                    5,
                ),
                (None, None, vec![], -3),
            ],
        );
        let hex: String = batch.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "000000000000000000000048ffffffff02873b4ad400000000000100000000000003e8\
             00000000000003edffffffffffffffffffffffffffff000000021e000a00026b027604\
             02680278026e010c000502010100"
        );
    }

    #[test]
    fn a_preset_base_timestamp_bounds_the_max_from_below() {
        let mut builder = BatchBuilder::new().with_base_timestamp(100);
        let none: &[(&[u8], Option<&[u8]>)] = &[];
        builder.append(&RecordData {
            timestamp_ms: 90,
            key: None,
            value: Some(b"v"),
            headers: none,
        });
        let batch = builder
            .build(Compression::None, ProducerIdentity::NONE)
            .unwrap();
        let header = super::super::check_framing(&batch).expect("valid");
        assert_eq!((header.base_timestamp, header.max_timestamp), (100, 100));
        let records = super::super::decode_records(&batch).unwrap();
        assert_eq!(records[0].timestamp, 90);
    }
}
