//! Record batch v2: the one format Sluice reads from producers, keeps on disk
//! and serves to consumers.
//!
//! The broker stores the producer's bytes unchanged except for the two fields
//! the CRC does not cover (base offset and partition leader epoch), so this
//! module works on raw bytes: it parses the 61-byte header, checks the CRC and
//! the record framing once on the way in, and patches the header in place.
//! Records are only decoded on slow paths (lookup by timestamp, dump-log).

pub mod builder;

use bytes::{Buf, BufMut, Bytes};

// Where each header field starts, named as Kafka's DefaultRecordBatch names
// them (PROTOCOL.md §3). Big-endian, back to back, in this order.
pub const BASE_OFFSET_OFFSET: usize = 0;
pub const LENGTH_OFFSET: usize = 8;
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
pub const MAGIC_OFFSET: usize = 16;
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
pub const PRODUCER_ID_OFFSET: usize = 43;
pub const PRODUCER_EPOCH_OFFSET: usize = 51;
pub const BASE_SEQUENCE_OFFSET: usize = 53;
pub const RECORDS_COUNT_OFFSET: usize = 57;
/// Bytes of the batch header before the records.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the `batchLength` field ends: `baseOffset` (8) + `batchLength` (4).
pub const LOG_OVERHEAD: usize = LENGTH_OFFSET + 4;
/// The CRC covers the batch from the attributes field to its end.
pub const CRC_START: usize = ATTRIBUTES_OFFSET;
/// The magic byte of record batch v2, the only format Sluice writes or accepts.
pub const MAGIC: i8 = 2;

const _: () = assert!(CRC_OFFSET + 4 == CRC_START);
const _: () = assert!(RECORDS_COUNT_OFFSET + 4 == HEADER_BYTES);

pub const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
pub const ATTRIBUTE_TIMESTAMP_LOG_APPEND: i16 = 0x08;
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
pub const ATTRIBUTE_CONTROL: i16 = 0x20;
/// The batch's base timestamp is the delete horizon of its tombstones and
/// markers (KIP-534): set by the log cleaner, never by a producer.
pub const ATTRIBUTE_DELETE_HORIZON: i16 = 0x40;

/// Why a batch was refused; each maps to the Kafka error a producer gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Framing, CRC or record structure is broken: CORRUPT_MESSAGE.
    Corrupt(&'static str),
    /// Well formed but not allowed (old magic, control batch, counts): INVALID_RECORD.
    Invalid(&'static str),
    /// Timestamps the broker will not accept: INVALID_TIMESTAMP.
    InvalidTimestamp(&'static str),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Corrupt(why)
            | BatchError::Invalid(why)
            | BatchError::InvalidTimestamp(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for BatchError {}

/// The parsed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses a header from the first 61 bytes; the caller guarantees the length.
    pub fn parse(bytes: &[u8]) -> BatchHeader {
        assert!(bytes.len() >= HEADER_BYTES);
        let mut b = &bytes[..HEADER_BYTES];
        BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            record_count: b.get_i32(),
        }
    }

    /// Size of the whole batch on disk and on the wire.
    /// Size of the whole batch; a negative length (only in garbage) counts as 0.
    pub fn size_bytes(&self) -> usize {
        self.batch_length.max(0) as usize + LOG_OVERHEAD
    }

    /// Wrapping, so garbage read from a damaged file cannot overflow; stored
    /// batches are checked against their expected offsets before use.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.wrapping_add(self.last_offset_delta as i64)
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }

    /// The sequence of the batch's last record (-1 without sequences).
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }

    pub fn compression(&self) -> i16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_TIMESTAMP_LOG_APPEND != 0
    }

    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & ATTRIBUTE_DELETE_HORIZON != 0
    }
}

/// Kafka's producer sequence arithmetic (`DefaultRecordBatch.incrementSequence`):
/// `sequence + increment`, wrapping past `i32::MAX` to 0. A batch without
/// sequences (a negative one) stays without: -1.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence < 0 {
        return -1;
    }
    if sequence > i32::MAX - increment.max(0) {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence.wrapping_add(increment)
    }
}

/// Reads the magic byte and the length of the batch at the start of `bytes`,
/// if enough bytes are there. Works for any magic (old message sets share the
/// offset/length/…/magic prefix).
pub fn peek_size_and_magic(bytes: &[u8]) -> Option<(i32, i8)> {
    if bytes.len() <= MAGIC_OFFSET {
        return None;
    }
    let length = (&bytes[LENGTH_OFFSET..LOG_OVERHEAD]).get_i32();
    Some((length, bytes[MAGIC_OFFSET] as i8))
}

/// The CRC-32C that the batch at the start of `bytes` should carry.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Computes a whole batch's CRC-32C and writes it into its header.
pub fn write_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// Checks that `batch` is exactly one complete v2 batch with a valid CRC and
/// returns its header. Used on produce and on recovery.
pub fn check_framing(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let Some((length, magic)) = peek_size_and_magic(batch) else {
        return Err(BatchError::Corrupt("batch shorter than its header"));
    };
    if magic != MAGIC {
        return Err(BatchError::Invalid(
            "only record batch v2 (magic 2) is accepted",
        ));
    }
    if batch.len() < HEADER_BYTES || length < (HEADER_BYTES - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Corrupt("batch shorter than its header"));
    }
    let header = BatchHeader::parse(batch);
    if header.size_bytes() != batch.len() {
        return Err(BatchError::Corrupt(
            "batch length does not match the bytes sent",
        ));
    }
    if compute_crc(batch) != header.crc {
        return Err(BatchError::Corrupt("CRC-32C mismatch"));
    }
    Ok(header)
}

/// Checks the first batch of a produced record set and returns its header;
/// the caller compares its size with the whole set to refuse extra batches.
pub fn check_framing_first(records: &[u8]) -> Result<BatchHeader, BatchError> {
    let Some((length, magic)) = peek_size_and_magic(records) else {
        return Err(BatchError::Corrupt("batch shorter than its header"));
    };
    if magic != MAGIC {
        return Err(BatchError::Invalid(
            "only record batch v2 (magic 2) is accepted",
        ));
    }
    let size = length as i64 + LOG_OVERHEAD as i64;
    if length < 0 || size > records.len() as i64 {
        return Err(BatchError::Corrupt("batch length exceeds the bytes sent"));
    }
    check_framing(&records[..size as usize])
}

/// Validates a batch a producer sent (after `check_framing`): the rules of
/// Kafka's produce validation that do not depend on broker state.
/// Returns the largest timestamp of the batch's records (-1 when none has
/// one), which Kafka writes into the header whatever the producer put there.
///
/// With `create_time_bounds` (a CreateTime topic), every record timestamp
/// other than -1 must lie within them (INVALID_TIMESTAMP otherwise), as
/// Kafka checks `message.timestamp.before.max.ms` / `after.max.ms`.
pub fn validate_produced(
    batch: &[u8],
    header: &BatchHeader,
    create_time_bounds: Option<(i64, i64)>,
) -> Result<i64, BatchError> {
    validate_produced_bounded(
        batch,
        header,
        create_time_bounds,
        STORED_DECOMPRESSED_BYTES_MAX,
    )
}

/// `validate_produced`, refusing a batch whose records expand beyond
/// `decompressed_bytes_max` (INVALID_RECORD), found while streaming the
/// decompressor, before more than that is held.
pub fn validate_produced_bounded(
    batch: &[u8],
    header: &BatchHeader,
    create_time_bounds: Option<(i64, i64)>,
    decompressed_bytes_max: usize,
) -> Result<i64, BatchError> {
    if header.is_control() {
        return Err(BatchError::Invalid(
            "control batches may not be produced by clients",
        ));
    }
    // Kafka's validator lets the bit through; refused here, since with it
    // a producer would have its tombstones removed before
    // delete.retention.ms, as the cleaner's own batches are.
    if header.has_delete_horizon() {
        return Err(BatchError::Invalid(
            "the delete horizon is the log cleaner's to set, not a producer's",
        ));
    }
    if header.record_count <= 0 {
        return Err(BatchError::Invalid("batch has no records"));
    }
    if header.last_offset_delta < 0
        || i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1
    {
        return Err(BatchError::Invalid(
            "record count does not match last offset delta",
        ));
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(BatchError::Invalid(
            "producer id set without a base sequence",
        ));
    }
    if header.is_log_append_time() {
        return Err(BatchError::InvalidTimestamp(
            "producers may not set LogAppendTime",
        ));
    }
    if header.compression() > 4 {
        return Err(BatchError::Corrupt("unknown compression codec"));
    }
    // Kafka decompresses to check the records too; so do we, once.
    let body = &batch[HEADER_BYTES..];
    match header.compression() {
        0 => check_records(body, header, create_time_bounds),
        codec => check_records(
            &decompress(codec, Bytes::copy_from_slice(body), decompressed_bytes_max)?,
            header,
            create_time_bounds,
        ),
    }
}

/// Walks the uncompressed records of a batch and checks their framing:
/// lengths, varints, offset deltas in order, count matching the header.
/// Returns the largest record timestamp (-1 for none).
fn check_records(
    mut records: &[u8],
    header: &BatchHeader,
    create_time_bounds: Option<(i64, i64)>,
) -> Result<i64, BatchError> {
    const BROKEN: BatchError = BatchError::Corrupt("malformed record");
    let mut max_timestamp = NO_TIMESTAMP;
    for expected_delta in 0..header.record_count {
        let length = read_varint(&mut records).ok_or(BROKEN)?;
        if length < 0 || length as usize > records.len() {
            return Err(BROKEN);
        }
        let (mut record, rest) = records.split_at(length as usize);
        records = rest;
        let _ = read_u8(&mut record).ok_or(BROKEN)?; // attributes
        let timestamp_delta = read_varlong(&mut record).ok_or(BROKEN)?;
        let timestamp = header.base_timestamp.wrapping_add(timestamp_delta);
        if let Some((earliest, latest)) = create_time_bounds {
            if timestamp != NO_TIMESTAMP && !(earliest..=latest).contains(&timestamp) {
                return Err(BatchError::InvalidTimestamp(
                    "record timestamp outside message.timestamp.before.max.ms / after.max.ms",
                ));
            }
        }
        max_timestamp = max_timestamp.max(timestamp);
        let offset_delta = read_varint(&mut record).ok_or(BROKEN)?;
        if offset_delta != expected_delta {
            return Err(BatchError::Invalid(
                "record offset deltas are not consecutive",
            ));
        }
        skip_nullable(&mut record).ok_or(BROKEN)?; // key
        skip_nullable(&mut record).ok_or(BROKEN)?; // value
        let header_count = read_varint(&mut record).ok_or(BROKEN)?;
        if header_count < 0 {
            return Err(BROKEN);
        }
        for _ in 0..header_count {
            skip_nullable(&mut record).ok_or(BROKEN)?;
            skip_nullable(&mut record).ok_or(BROKEN)?;
        }
        if !record.is_empty() {
            return Err(BROKEN);
        }
    }
    if !records.is_empty() {
        return Err(BatchError::Corrupt("bytes after the last record"));
    }
    Ok(max_timestamp)
}

/// A batch or record without a timestamp.
pub const NO_TIMESTAMP: i64 = -1;

/// Writes the broker-assigned base offset and leader epoch into a batch.
/// Neither field is covered by the CRC.
pub fn assign_offset(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET_OFFSET..LENGTH_OFFSET].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Rewrites a batch held as its header (`head`, the first `HEADER_BYTES`,
/// rewritten) and the records after it (read only) to LogAppendTime: sets
/// the attribute bit and the max timestamp to `now_ms`, then recomputes
/// the CRC.
pub fn set_log_append_time_split(head: &mut [u8], records: &[u8], now_ms: i64) {
    let field = ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET;
    let attributes = i16::from_be_bytes([head[field.start], head[field.start + 1]])
        | ATTRIBUTE_TIMESTAMP_LOG_APPEND;
    head[field].copy_from_slice(&attributes.to_be_bytes());
    set_max_timestamp_split(head, records, now_ms);
}

/// Sets the max timestamp of a batch held as header and records, and
/// recomputes the CRC (which covers it).
pub fn set_max_timestamp_split(head: &mut [u8], records: &[u8], max_timestamp: i64) {
    head[MAX_TIMESTAMP_OFFSET..PRODUCER_ID_OFFSET].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[CRC_START..HEADER_BYTES]), records);
    head[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// One decoded record, for slow paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// Decodes every record of a batch, decompressing when needed (up to
/// `STORED_DECOMPRESSED_BYTES_MAX`).
pub fn decode_records(batch: &[u8]) -> Result<Vec<RecordView>, BatchError> {
    let header = check_framing(batch)?;
    let body = Bytes::copy_from_slice(&batch[HEADER_BYTES..]);
    let plain = decompress(header.compression(), body, STORED_DECOMPRESSED_BYTES_MAX)?;
    parse_records(&plain, &header)
}

/// The most a stored batch's records may expand to when the broker reads
/// its own log back (they were bounded when produced; this bounds what a
/// damaged or foreign log can cost).
pub const STORED_DECOMPRESSED_BYTES_MAX: usize = 256 << 20;

/// Decompresses a batch's records, streaming, and stops as soon as they
/// pass `bytes_max`: a small batch that claims to expand to gigabytes
/// costs at most `bytes_max` of memory before it is refused.
fn decompress(codec: i16, body: Bytes, bytes_max: usize) -> Result<Bytes, BatchError> {
    use std::io::Read;
    const FAILED: BatchError = BatchError::Corrupt("cannot decompress records");
    const TOO_LARGE: BatchError =
        BatchError::Invalid("records expand beyond the broker's decompression bound");
    let read_bounded = |reader: &mut dyn Read| -> Result<Bytes, BatchError> {
        let mut plain = Vec::new();
        let limit = bytes_max as u64 + 1;
        reader
            .take(limit)
            .read_to_end(&mut plain)
            .map_err(|_| FAILED)?;
        if plain.len() > bytes_max {
            return Err(TOO_LARGE);
        }
        Ok(Bytes::from(plain))
    };
    match codec {
        0 if body.len() > bytes_max => Err(TOO_LARGE),
        0 => Ok(body),
        // Java's GZIPInputStream reads concatenated members; so do we.
        1 => read_bounded(&mut flate2::read::MultiGzDecoder::new(&body[..])),
        2 => snappy_bounded(&body, bytes_max),
        3 => read_bounded(&mut lz4::Decoder::new(&body[..]).map_err(|_| FAILED)?),
        4 => read_bounded(&mut zstd::stream::read::Decoder::new(&body[..]).map_err(|_| FAILED)?),
        _ => Err(FAILED),
    }
}

/// The header of the Java client's framed snappy (xerial's
/// SnappyOutputStream); without it, the body is one raw snappy block.
const SNAPPY_XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// Snappy, raw or in xerial's frames, each block's size read from its
/// header and checked against what is left of `bytes_max` before anything
/// is allocated.
fn snappy_bounded(body: &[u8], bytes_max: usize) -> Result<Bytes, BatchError> {
    const FAILED: BatchError = BatchError::Corrupt("cannot decompress records");
    const TOO_LARGE: BatchError =
        BatchError::Invalid("records expand beyond the broker's decompression bound");
    let mut plain = Vec::new();
    let decode_block = |block: &[u8], plain: &mut Vec<u8>| -> Result<(), BatchError> {
        let length = snap::raw::decompress_len(block).map_err(|_| FAILED)?;
        if length > bytes_max - plain.len() {
            return Err(TOO_LARGE);
        }
        let start = plain.len();
        plain.resize(start + length, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut plain[start..])
            .map_err(|_| FAILED)?;
        Ok(())
    };
    match body.strip_prefix(&SNAPPY_XERIAL_MAGIC[..]) {
        None => decode_block(body, &mut plain)?,
        Some(mut frames) => {
            while !frames.is_empty() {
                let (length, rest) = frames.split_first_chunk::<4>().ok_or(FAILED)?;
                let length = u32::from_be_bytes(*length) as usize;
                let block = rest.get(..length).ok_or(FAILED)?;
                decode_block(block, &mut plain)?;
                frames = &rest[length..];
            }
        }
    }
    Ok(Bytes::from(plain))
}

fn parse_records(plain: &Bytes, header: &BatchHeader) -> Result<Vec<RecordView>, BatchError> {
    const BROKEN: BatchError = BatchError::Corrupt("malformed record");
    let mut records = Vec::with_capacity(header.record_count.clamp(0, 10_000) as usize);
    let mut cursor: &[u8] = plain;
    let slice = |cursor: &[u8], length: usize| plain.slice_ref(&cursor[..length]);
    for _ in 0..header.record_count {
        let length = read_varint(&mut cursor).ok_or(BROKEN)?;
        if length < 0 || length as usize > cursor.len() {
            return Err(BROKEN);
        }
        let (mut record, rest) = cursor.split_at(length as usize);
        cursor = rest;
        read_u8(&mut record).ok_or(BROKEN)?;
        let timestamp_delta = read_varlong(&mut record).ok_or(BROKEN)?;
        let offset_delta = read_varint(&mut record).ok_or(BROKEN)?;
        let key = read_nullable(&mut record, &slice).ok_or(BROKEN)?;
        let value = read_nullable(&mut record, &slice).ok_or(BROKEN)?;
        let header_count = read_varint(&mut record).ok_or(BROKEN)?;
        let mut headers = Vec::new();
        for _ in 0..header_count.max(0) {
            let name = read_nullable(&mut record, &slice)
                .ok_or(BROKEN)?
                .unwrap_or_default();
            let value = read_nullable(&mut record, &slice).ok_or(BROKEN)?;
            headers.push((name, value));
        }
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(timestamp_delta)
        };
        records.push(RecordView {
            offset: header.base_offset.wrapping_add(offset_delta as i64),
            timestamp,
            key,
            value,
            headers,
        });
    }
    Ok(records)
}

fn read_u8(buf: &mut &[u8]) -> Option<u8> {
    let (&first, rest) = buf.split_first()?;
    *buf = rest;
    Some(first)
}

/// Reads a zigzag varlong of at most 10 bytes.
pub fn read_varlong(buf: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = read_u8(buf)?;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Reads a zigzag varint of at most 5 bytes.
pub fn read_varint(buf: &mut &[u8]) -> Option<i32> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = read_u8(buf)?;
        value |= ((byte & 0x7f) as u32).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i32) ^ -((value & 1) as i32));
        }
    }
    None
}

fn skip_nullable(buf: &mut &[u8]) -> Option<()> {
    let length = read_varint(buf)?;
    if length < -1 {
        return None;
    }
    if length > 0 {
        if length as usize > buf.len() {
            return None;
        }
        *buf = &buf[length as usize..];
    }
    Some(())
}

fn read_nullable(buf: &mut &[u8], slice: &dyn Fn(&[u8], usize) -> Bytes) -> Option<Option<Bytes>> {
    let length = read_varint(buf)?;
    if length < -1 || length as isize > buf.len() as isize {
        return None;
    }
    if length == -1 {
        return Some(None);
    }
    let bytes = slice(buf, length as usize);
    *buf = &buf[length as usize..];
    Some(Some(bytes))
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Writes a zigzag varint (varints and varlongs share the encoding): the
/// one writer of the record framing, for the encoder and for tests.
pub fn put_varint(out: &mut impl BufMut, value: i64) {
    let mut rest = zigzag(value);
    while rest >= 0x80 {
        out.put_u8((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// Bytes `put_varint` writes for `value`.
pub fn varint_bytes(value: i64) -> usize {
    let bits = 64 - zigzag(value).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Writes varint-length-prefixed bytes, or -1 for null.
pub fn put_nullable(out: &mut impl BufMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

/// Bytes `put_nullable` writes for `bytes`.
pub fn nullable_bytes(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_bytes(-1),
        Some(b) => varint_bytes(b.len() as i64) + b.len(),
    }
}

/// A record to encode: key, value, headers, timestamp delta.
pub type RecordSpec<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Vec<(&'a [u8], Option<&'a [u8]>)>,
    i64,
);

/// Encodes an uncompressed v2 batch the way a producer would (no producer
/// id, base offset 0) with `builder::BatchBuilder`: for tests, tools and
/// the broker's own records. Record timestamps are `base_timestamp` plus
/// their delta; `records` is not empty (asserted).
pub fn build_batch(base_timestamp: i64, records: &[RecordSpec<'_>]) -> Vec<u8> {
    build_uncompressed(base_timestamp, builder::ProducerIdentity::NONE, records)
}

/// `build_batch` of a transaction's records: the producer id, epoch and
/// base sequence are `producer`'s, and the transactional attribute (bit 4)
/// is set, the CRC covering it. The group coordinator writes a
/// transaction's offsets this way.
pub fn build_transactional_batch(
    base_timestamp: i64,
    producer: builder::ProducerIdentity,
    records: &[RecordSpec<'_>],
) -> Vec<u8> {
    assert!(
        producer.producer_id >= 0 && producer.producer_epoch >= 0,
        "a transaction has a producer"
    );
    let mut batch = build_uncompressed(base_timestamp, producer, records);
    let attributes = i16::from_be_bytes([batch[ATTRIBUTES_OFFSET], batch[ATTRIBUTES_OFFSET + 1]]);
    let attributes = attributes | ATTRIBUTE_TRANSACTIONAL;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    write_crc(&mut batch);
    batch
}

/// An uncompressed batch of `records` carrying `producer`.
fn build_uncompressed(
    base_timestamp: i64,
    producer: builder::ProducerIdentity,
    records: &[RecordSpec<'_>],
) -> Vec<u8> {
    use builder::{BatchBuilder, Compression, RecordData};
    let mut batch = BatchBuilder::new().with_base_timestamp(base_timestamp);
    for (key, value, headers, timestamp_delta) in records {
        batch.append(&RecordData {
            timestamp_ms: base_timestamp.wrapping_add(*timestamp_delta),
            key: *key,
            value: *value,
            headers,
        });
    }
    let built = batch
        .build(Compression::None, producer)
        .expect("the broker's own batches are far below 2 GiB");
    // With the builder gone the batch owns its bytes alone: no copy below.
    drop(batch);
    Vec::from(built)
}

/// Control record type of a transaction's abort marker (Kafka's `ControlRecordType.ABORT`).
pub const CONTROL_TYPE_ABORT: i16 = 0;
/// Control record type of a transaction's commit marker.
pub const CONTROL_TYPE_COMMIT: i16 = 1;
/// Bytes of a transaction marker batch as `build_control_batch` writes it.
pub const MARKER_BATCH_BYTES: usize = 78;

/// The record of a transaction marker (Kafka's `EndTransactionMarker`):
/// how the transaction ended, and the epoch of the coordinator that said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRecord {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A transaction marker as Kafka writes it (`MemoryRecords.withEndTransactionMarker`):
/// a transactional control batch (attribute bits 4 and 5), uncompressed,
/// without sequence (-1), holding one record whose key is `int16 version 0,
/// int16 type` (0 abort, 1 commit) and whose value is `int16 version 0,
/// int32 coordinator_epoch`, timestamped `now_ms`. Like every built batch it
/// starts at offset 0 with no leader epoch: the leader assigns both.
pub fn build_control_batch(
    now_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    commit: bool,
) -> Vec<u8> {
    use builder::{BatchBuilder, Compression, ProducerIdentity, RecordData};
    assert!(producer_id >= 0, "a marker closes a producer's transaction");
    let kind = if commit {
        CONTROL_TYPE_COMMIT
    } else {
        CONTROL_TYPE_ABORT
    };
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&kind.to_be_bytes());
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    let none: &[(&[u8], Option<&[u8]>)] = &[];
    let mut builder = BatchBuilder::new().with_base_timestamp(now_ms);
    builder.append(&RecordData {
        timestamp_ms: now_ms,
        key: Some(&key),
        value: Some(&value),
        headers: none,
    });
    let identity = ProducerIdentity {
        producer_id,
        producer_epoch,
        base_sequence: -1,
    };
    let built = builder
        .build(Compression::None, identity)
        .expect("a marker is 78 bytes");
    drop(builder);
    let mut batch = Vec::from(built);
    let attributes = ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL;
    batch[ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET].copy_from_slice(&attributes.to_be_bytes());
    write_crc(&mut batch);
    assert_eq!(batch.len(), MARKER_BATCH_BYTES);
    batch
}

/// The transaction marker a control batch holds: None when its record is
/// another control type (a KRaft log's leader change, say); an error when
/// the batch is damaged or not a control batch. Kafka reads only the
/// first record, and accepts newer key and value versions (which only add
/// fields at the end).
pub fn parse_control_record(batch: &[u8]) -> Result<Option<ControlRecord>, BatchError> {
    const BROKEN: BatchError = BatchError::Corrupt("malformed control record");
    let header = check_framing(batch)?;
    if !header.is_control() {
        return Err(BatchError::Invalid("not a control batch"));
    }
    let records = decode_records(batch)?;
    let record = records.first().ok_or(BROKEN)?;
    let key = record
        .key
        .as_deref()
        .filter(|k| k.len() >= 4)
        .ok_or(BROKEN)?;
    let key_version = i16::from_be_bytes([key[0], key[1]]);
    let kind = i16::from_be_bytes([key[2], key[3]]);
    if key_version < 0 {
        return Err(BROKEN);
    }
    let commit = match kind {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return Ok(None),
    };
    let value = record
        .value
        .as_deref()
        .filter(|v| v.len() >= 6)
        .ok_or(BROKEN)?;
    if i16::from_be_bytes([value[0], value[1]]) < 0 {
        return Err(BROKEN);
    }
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Ok(Some(ControlRecord {
        commit,
        coordinator_epoch,
    }))
}

/// Iterates over the complete batches at the start of `bytes`, yielding each
/// batch's header and byte range; stops at the first incomplete or old-format
/// entry. Does not check CRCs.
pub fn headers_in(
    bytes: &[u8],
) -> impl Iterator<Item = (BatchHeader, std::ops::Range<usize>)> + '_ {
    let mut position = 0usize;
    std::iter::from_fn(move || {
        let rest = &bytes[position..];
        let (length, magic) = peek_size_and_magic(rest)?;
        if magic != MAGIC
            || rest.len() < HEADER_BYTES
            || length < (HEADER_BYTES - LOG_OVERHEAD) as i32
        {
            return None;
        }
        let header = BatchHeader::parse(rest);
        let size = header.size_bytes();
        if size > rest.len() {
            return None;
        }
        let range = position..position + size;
        position += size;
        Some((header, range))
    })
}

#[cfg(test)]
pub mod tests {
    pub use super::build_batch;
    use super::*;

    /// Compresses the records of an uncompressed batch with gzip.
    pub fn gzip_batch(plain: &[u8]) -> Vec<u8> {
        let body = builder::compress(builder::Compression::Gzip, &plain[HEADER_BYTES..]);
        with_body(plain, &body.expect("gzip"), 1)
    }

    /// An uncompressed batch's header over another body, with its codec.
    fn with_body(plain: &[u8], body: &[u8], codec: i16) -> Vec<u8> {
        let mut batch = plain[..HEADER_BYTES].to_vec();
        batch.extend_from_slice(body);
        let length = (batch.len() - LOG_OVERHEAD) as i32;
        batch[LENGTH_OFFSET..LOG_OVERHEAD].copy_from_slice(&length.to_be_bytes());
        batch[ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET].copy_from_slice(&codec.to_be_bytes());
        write_crc(&mut batch);
        batch
    }

    /// A few kilobytes that expand to 4 MiB, in every codec (snappy both
    /// framed, as the Java client writes it, and raw): refused above the
    /// bound, accepted below it, and decoded when accepted.
    #[test]
    fn a_batch_that_expands_past_the_bound_is_refused_whatever_its_codec() {
        use builder::{compress, Compression};
        let zeros = vec![0u8; 4 << 20];
        let plain = build_batch(0, &[(None, Some(&zeros[..]), vec![], 0)]);
        let records = &plain[HEADER_BYTES..];
        let mut bombs: Vec<(String, Vec<u8>)> = [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
        .into_iter()
        .map(|c| {
            let body = compress(c, records).expect("compresses");
            (format!("{c:?}"), with_body(&plain, &body, c.code()))
        })
        .collect();
        let raw = snap::raw::Encoder::new()
            .compress_vec(records)
            .expect("snappy");
        bombs.push(("raw snappy".into(), with_body(&plain, &raw, 2)));
        for (codec, bomb) in bombs {
            assert!(bomb.len() < 256 << 10, "{codec}: {} bytes", bomb.len());
            let header = check_framing(&bomb).expect("framing");
            let refused = validate_produced_bounded(&bomb, &header, None, 1 << 20);
            assert!(
                matches!(refused, Err(BatchError::Invalid(why)) if why.contains("decompression bound")),
                "{codec}: {refused:?}"
            );
            validate_produced_bounded(&bomb, &header, None, 8 << 20)
                .unwrap_or_else(|e| panic!("{codec}: {e}"));
            let decoded = decode_records(&bomb).expect("decodes");
            assert_eq!(decoded[0].value.as_deref(), Some(&zeros[..]), "{codec}");
        }
    }

    #[test]
    fn compressed_batches_are_checked_record_by_record() {
        let plain = build_batch(
            0,
            &[
                (Some(b"k"), Some(b"v"), vec![], 0),
                (None, Some(b"w"), vec![], 1),
            ],
        );
        let good = gzip_batch(&plain);
        let header = check_framing(&good).expect("framing");
        validate_produced(&good, &header, None).expect("valid compressed batch");
        assert_eq!(decode_records(&good).expect("decodes").len(), 2);
        // Claim three records while the compressed body holds two.
        let mut lying = plain.clone();
        lying[LAST_OFFSET_DELTA_OFFSET..BASE_TIMESTAMP_OFFSET].copy_from_slice(&2i32.to_be_bytes());
        lying[RECORDS_COUNT_OFFSET..HEADER_BYTES].copy_from_slice(&3i32.to_be_bytes());
        let bad = gzip_batch(&lying);
        let header = check_framing(&bad).expect("framing");
        assert!(validate_produced(&bad, &header, None).is_err());
    }

    #[test]
    fn framing_accepts_a_built_batch_and_decodes_it() {
        let batch = build_batch(
            1000,
            &[(Some(b"k"), Some(b"v"), vec![(b"h", Some(b"x"))], 5)],
        );
        let header = check_framing(&batch).expect("valid batch");
        validate_produced(&batch, &header, None).expect("valid produce");
        let records = decode_records(&batch).expect("decodes");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].timestamp, 1005);
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[0].headers[0].1.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(increment_sequence(-1, 5), -1);
        assert_eq!(increment_sequence(3, 4), 7);
        assert_eq!(increment_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn a_flipped_bit_fails_the_crc() {
        let mut batch = build_batch(0, &[(None, Some(b"value"), vec![], 0)]);
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert_eq!(
            check_framing(&batch),
            Err(BatchError::Corrupt("CRC-32C mismatch"))
        );
    }

    #[test]
    fn offset_and_epoch_are_outside_the_crc() {
        let mut batch = build_batch(0, &[(None, Some(b"value"), vec![], 0)]);
        assign_offset(&mut batch, 42, 7);
        let header = check_framing(&batch).expect("still valid");
        assert_eq!((header.base_offset, header.partition_leader_epoch), (42, 7));
    }

    #[test]
    fn old_magic_is_invalid_not_corrupt() {
        let mut batch = build_batch(0, &[(None, Some(b"value"), vec![], 0)]);
        batch[MAGIC_OFFSET] = 1;
        assert!(matches!(check_framing(&batch), Err(BatchError::Invalid(_))));
    }

    #[test]
    fn count_mismatch_is_invalid() {
        let mut batch = build_batch(
            0,
            &[(None, Some(b"a"), vec![], 0), (None, Some(b"b"), vec![], 0)],
        );
        batch[RECORDS_COUNT_OFFSET..HEADER_BYTES].copy_from_slice(&3i32.to_be_bytes());
        write_crc(&mut batch);
        let header = check_framing(&batch).expect("framing ok");
        assert!(matches!(
            validate_produced(&batch, &header, None),
            Err(BatchError::Invalid(_))
        ));
    }

    /// A marker's bytes are Kafka's: 78 of them, attributes 0x30, no
    /// sequence, one record with the control key and the coordinator
    /// epoch; an independent encoder (kafka-protocol's) given the same
    /// record writes the same bytes, and its decoder reads them back.
    #[test]
    fn a_marker_is_kafkas_control_batch() {
        use kafka_protocol::records::{
            Compression as Codec, Record, RecordBatchDecoder, RecordBatchEncoder,
            RecordEncodeOptions, TimestampType,
        };
        let abort = build_control_batch(1_700_000_000_123, 4_242, 7, 19, false);
        let commit = build_control_batch(1_700_000_000_123, 4_242, 7, 19, true);
        for (batch, commit_bit) in [(&abort, false), (&commit, true)] {
            assert_eq!(batch.len(), MARKER_BATCH_BYTES);
            let header = check_framing(batch).expect("framing");
            assert_eq!(header.attributes, 0x30);
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (4_242, 7, -1)
            );
            assert_eq!((header.record_count, header.last_offset_delta), (1, 0));
            assert_eq!(
                parse_control_record(batch),
                Ok(Some(ControlRecord {
                    commit: commit_bit,
                    coordinator_epoch: 19
                }))
            );
            let kind: i16 = if commit_bit { 1 } else { 0 };
            let record = Record {
                transactional: true,
                control: true,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 4_242,
                producer_epoch: 7,
                timestamp_type: TimestampType::Creation,
                offset: 0,
                sequence: -1,
                timestamp: 1_700_000_000_123,
                key: Some(Bytes::from([0, 0, 0, kind as u8].to_vec())),
                value: Some(Bytes::from(vec![0, 0, 0, 0, 0, 19])),
                headers: Default::default(),
            };
            let mut encoded = bytes::BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: Codec::None,
            };
            RecordBatchEncoder::encode(&mut encoded, [&record], &options).expect("encodes");
            assert_eq!(&encoded[..], &batch[..], "commit {commit_bit}");
            let mut read = Bytes::copy_from_slice(batch);
            let decoded = RecordBatchDecoder::decode(&mut read).expect("decodes");
            assert_eq!(decoded.records, vec![record]);
        }
        let hex: String = abort.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            &hex[..34],
            "000000000000000000000042ffffffff02",
            "offset 0, length 66, no leader epoch, magic 2"
        );
        assert_eq!(
            &hex[122..],
            "2000000008000000000c00000000001300",
            "record: length 16, attributes, deltas, key (0, ABORT), value (0, epoch 19), no headers"
        );
    }

    #[test]
    fn other_control_records_are_not_markers_and_damage_is_an_error() {
        let marker = build_control_batch(0, 1, 0, 0, true);
        let mut leader_change = marker.clone();
        // Type 2: KRaft's LEADER_CHANGE; the CRC covers the record.
        let type_at = MARKER_BATCH_BYTES - 1 - 6 - 1 - 1;
        assert_eq!(leader_change[type_at], 1);
        leader_change[type_at] = 2;
        write_crc(&mut leader_change);
        assert_eq!(parse_control_record(&leader_change), Ok(None));
        let plain = build_batch(0, &[(None, Some(b"v"), vec![], 0)]);
        assert!(parse_control_record(&plain).is_err());
        let mut torn = marker.clone();
        torn[70] ^= 1;
        assert!(parse_control_record(&torn).is_err());
    }

    #[test]
    fn log_append_time_rewrite_keeps_the_crc_valid() {
        let mut batch = build_batch(5, &[(None, Some(b"a"), vec![], 0)]);
        let (head, records) = batch.split_at_mut(HEADER_BYTES);
        set_log_append_time_split(head, records, 99);
        let header = check_framing(&batch).expect("crc recomputed");
        assert!(header.is_log_append_time());
        assert_eq!(decode_records(&batch).expect("decodes")[0].timestamp, 99);
    }

    #[test]
    fn a_transactional_batch_carries_its_producer_and_the_bit() {
        let producer = builder::ProducerIdentity {
            producer_id: 7,
            producer_epoch: 3,
            base_sequence: 0,
        };
        let records = [(Some(&b"k"[..]), Some(&b"v"[..]), vec![], 0)];
        let batch = build_transactional_batch(5, producer, &records);
        let header = check_framing(&batch).expect("a valid CRC over the set bit");
        assert!(header.is_transactional());
        assert!(!header.is_control());
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (7, 3, 0)
        );
        let plain = BatchHeader::parse(&build_batch(5, &records));
        assert!(!plain.is_transactional());
        assert_eq!(plain.producer_id, -1);
        assert_eq!(
            decode_records(&batch).expect("decodes")[0].value.as_deref(),
            Some(&b"v"[..])
        );
    }

    proptest::proptest! {
        #[test]
        fn varints_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..16)) {
            let mut a: &[u8] = &bytes;
            let _ = read_varint(&mut a);
            let mut b: &[u8] = &bytes;
            let _ = read_varlong(&mut b);
        }

        #[test]
        fn arbitrary_bytes_never_panic_validation(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(header) = check_framing(&bytes) {
                let _ = validate_produced(&bytes, &header, None);
                let _ = decode_records(&bytes);
            }
            let _ = headers_in(&bytes).count();
        }
    }
}
