//! Record batch v2: the one format Sluice reads from producers, keeps on disk
//! and serves to consumers.
//!
//! The broker stores the producer's bytes unchanged except for the two fields
//! the CRC does not cover (base offset and partition leader epoch), so this
//! module works on raw bytes: it parses the 61-byte header, checks the CRC and
//! the record framing once on the way in, and patches the header in place.
//! Records are only decoded on slow paths (lookup by timestamp, dump-log).

use bytes::{Buf, BufMut, Bytes};

/// Bytes of the batch header before the records.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the `batchLength` field ends: `baseOffset` (8) + `batchLength` (4).
pub const LOG_OVERHEAD: usize = 12;
/// The CRC covers the batch from the attributes field to its end.
const CRC_START: usize = 21;
const MAGIC_OFFSET: usize = 16;

pub const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
pub const ATTRIBUTE_TIMESTAMP_LOG_APPEND: i16 = 0x08;
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
pub const ATTRIBUTE_CONTROL: i16 = 0x20;

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
}

/// Reads the magic byte and the length of the batch at the start of `bytes`,
/// if enough bytes are there. Works for any magic (old message sets share the
/// offset/length/…/magic prefix).
pub fn peek_size_and_magic(bytes: &[u8]) -> Option<(i32, i8)> {
    if bytes.len() <= MAGIC_OFFSET {
        return None;
    }
    let length = (&bytes[8..12]).get_i32();
    Some((length, bytes[MAGIC_OFFSET] as i8))
}

/// The CRC-32C that the batch at the start of `bytes` should carry.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Checks that `batch` is exactly one complete v2 batch with a valid CRC and
/// returns its header. Used on produce and on recovery.
pub fn check_framing(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let Some((length, magic)) = peek_size_and_magic(batch) else {
        return Err(BatchError::Corrupt("batch shorter than its header"));
    };
    if magic != 2 {
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
    if magic != 2 {
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
    if header.is_control() {
        return Err(BatchError::Invalid(
            "control batches may not be produced by clients",
        ));
    }
    if header.record_count <= 0 {
        return Err(BatchError::Invalid("batch has no records"));
    }
    if header.last_offset_delta < 0 || header.record_count != header.last_offset_delta + 1 {
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
            &decompress(codec, Bytes::copy_from_slice(body))?,
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
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Rewrites a batch held as its header (`head`, the first `HEADER_BYTES`,
/// rewritten) and the records after it (read only) to LogAppendTime: sets
/// the attribute bit and the max timestamp to `now_ms`, then recomputes
/// the CRC.
pub fn set_log_append_time_split(head: &mut [u8], records: &[u8], now_ms: i64) {
    let attributes = i16::from_be_bytes([head[21], head[22]]) | ATTRIBUTE_TIMESTAMP_LOG_APPEND;
    head[21..23].copy_from_slice(&attributes.to_be_bytes());
    set_max_timestamp_split(head, records, now_ms);
}

/// Sets the max timestamp of a batch held as header and records, and
/// recomputes the CRC (which covers it).
pub fn set_max_timestamp_split(head: &mut [u8], records: &[u8], max_timestamp: i64) {
    head[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[CRC_START..HEADER_BYTES]), records);
    head[17..21].copy_from_slice(&crc.to_be_bytes());
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

/// Decodes every record of a batch, decompressing when needed.
pub fn decode_records(batch: &[u8]) -> Result<Vec<RecordView>, BatchError> {
    let header = check_framing(batch)?;
    let body = Bytes::copy_from_slice(&batch[HEADER_BYTES..]);
    let plain = decompress(header.compression(), body)?;
    parse_records(&plain, &header)
}

fn decompress(codec: i16, body: Bytes) -> Result<Bytes, BatchError> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    const FAILED: BatchError = BatchError::Corrupt("cannot decompress records");
    let mut body = body;
    let copy = |b: &mut Bytes| Ok(b.clone());
    match codec {
        0 => Ok(body),
        1 => Gzip::decompress(&mut body, copy).map_err(|_| FAILED),
        2 => Snappy::decompress(&mut body, copy).map_err(|_| FAILED),
        3 => Lz4::decompress(&mut body, copy).map_err(|_| FAILED),
        4 => Zstd::decompress(&mut body, copy).map_err(|_| FAILED),
        _ => Err(FAILED),
    }
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

pub fn put_varint(buf: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

pub fn put_nullable(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
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
/// id, base offset 0): for tests, tools and control records.
pub fn build_batch(base_timestamp: i64, records: &[RecordSpec<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut max_timestamp = base_timestamp;
    for (delta, (key, value, headers, ts_delta)) in records.iter().enumerate() {
        let mut record = Vec::new();
        record.put_u8(0);
        put_varint(&mut record, *ts_delta);
        put_varint(&mut record, delta as i64);
        put_nullable(&mut record, *key);
        put_nullable(&mut record, *value);
        put_varint(&mut record, headers.len() as i64);
        for (name, value) in headers {
            put_nullable(&mut record, Some(name));
            put_nullable(&mut record, *value);
        }
        put_varint(&mut body, record.len() as i64);
        body.extend_from_slice(&record);
        max_timestamp = max_timestamp.max(base_timestamp + ts_delta);
    }
    let mut batch = Vec::new();
    batch.put_i64(0);
    batch.put_i32((HEADER_BYTES - LOG_OVERHEAD + body.len()) as i32);
    batch.put_i32(-1);
    batch.put_i8(2);
    batch.put_u32(0);
    batch.put_i16(0);
    batch.put_i32(records.len() as i32 - 1);
    batch.put_i64(base_timestamp);
    batch.put_i64(max_timestamp);
    batch.put_i64(-1);
    batch.put_i16(-1);
    batch.put_i32(-1);
    batch.put_i32(records.len() as i32);
    batch.extend_from_slice(&body);
    let crc = compute_crc(&batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
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
        if magic != 2 || rest.len() < HEADER_BYTES || length < (HEADER_BYTES - LOG_OVERHEAD) as i32
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
        use kafka_protocol::compression::{Compressor, Gzip};
        let mut body = bytes::BytesMut::new();
        Gzip::compress(&mut body, |b: &mut bytes::BytesMut| {
            b.extend_from_slice(&plain[HEADER_BYTES..]);
            Ok(())
        })
        .expect("gzip");
        let mut batch = plain[..HEADER_BYTES].to_vec();
        batch.extend_from_slice(&body);
        let length = (batch.len() - LOG_OVERHEAD) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        batch[21..23].copy_from_slice(&1i16.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        batch
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
        lying[23..27].copy_from_slice(&2i32.to_be_bytes());
        lying[57..61].copy_from_slice(&3i32.to_be_bytes());
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
        batch[57..61].copy_from_slice(&3i32.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let header = check_framing(&batch).expect("framing ok");
        assert!(matches!(
            validate_produced(&batch, &header, None),
            Err(BatchError::Invalid(_))
        ));
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
