//! `sluice dump-log`: prints what a segment file holds, in the format of
//! Kafka's DumpLogSegments tool, so the two can be compared side by side.
//!
//! A `.log` file is read one batch at a time (header, then body), so a large
//! segment is never loaded whole, and a damaged one is reported rather than
//! trusted: the dump stops at the first bytes that do not frame a complete v2
//! batch and says how many there were and where. A batch whose CRC does not
//! match is printed with `isvalid: false`; since its length still frames it,
//! the dump goes on with the next batch. A `.index` or `.timeindex` file is
//! printed one entry per line, with offsets made absolute from the base offset
//! in the file name.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use sluice_core::batch::{
    self, increment_sequence, BatchError, BatchHeader, HEADER_BYTES, LOG_OVERHEAD, MAGIC,
    MAGIC_OFFSET,
};
use sluice_core::log::format::{
    OffsetEntry, TimeEntry, BATCH_BYTES_MAX, INDEX_SUFFIX, LOG_SUFFIX, OFFSET_ENTRY_BYTES,
    TIME_ENTRY_BYTES, TIME_INDEX_SUFFIX,
};

/// Enough bytes to read a batch's length and magic.
const LENGTH_AND_MAGIC_BYTES: usize = MAGIC_OFFSET + 1;

/// Prints the contents of the segment file at `path` to `out`: batches of a
/// `.log` file (and with `records`, every record), or the entries of a
/// `.index` or `.timeindex` file.
pub fn run(path: &Path, records: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let kind = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let name = path.display();
    let index_base = match kind {
        LOG_SUFFIX => None,
        INDEX_SUFFIX | TIME_INDEX_SUFFIX => Some(base_offset(path)?),
        _ => bail!("{name}: cannot dump this file; expected a .log, .index or .timeindex file"),
    };
    let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
    let length = file
        .metadata()
        .with_context(|| format!("cannot read {name}"))?
        .len();
    let mut reader = BufReader::new(file);
    writeln!(out, "Dumping {name}")?;
    let result = match (kind, index_base) {
        (INDEX_SUFFIX, Some(base)) => dump_offset_index(&mut reader, base, out),
        (TIME_INDEX_SUFFIX, Some(base)) => dump_time_index(&mut reader, base, out),
        _ => dump_batches(&mut reader, length, records, out),
    };
    result.with_context(|| format!("while dumping {name}"))
}

/// The base offset of a segment, from its file name (`<20 digits>.<suffix>`).
fn base_offset(path: &Path) -> anyhow::Result<i64> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        bail!("{}: the file name should be the base offset in 20 digits, as in 00000000000000000000.index", path.display());
    }
    stem.parse()
        .with_context(|| format!("{}: base offset `{stem}` is out of range", path.display()))
}

/// What was found at the current position of a `.log` file.
enum Next {
    /// A complete batch, now in the buffer.
    Batch,
    /// Bytes that are not a complete batch: how many there are, and why.
    Garbage(u64, String),
}

/// Prints every batch of a log of `length` bytes read from `reader`.
fn dump_batches(
    reader: &mut dyn Read,
    length: u64,
    records: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut position = 0u64;
    let mut buffer = Vec::new();
    while position < length {
        match read_batch(reader, length - position, &mut buffer)? {
            Next::Batch => {
                print_batch(&mut buffer, position, records, out)?;
                position += buffer.len() as u64;
            }
            Next::Garbage(found, why) => {
                writeln!(out, "Found {found} bytes at position {position} {why}")?;
                break;
            }
        }
    }
    Ok(())
}

/// Reads the next batch into `buffer`; `remaining` is the number of bytes
/// left in the file. Never allocates more than the file holds or 1 GiB.
fn read_batch(reader: &mut dyn Read, remaining: u64, buffer: &mut Vec<u8>) -> io::Result<Next> {
    const INCOMPLETE: &str = "that are not a complete batch";
    let prefix = remaining.min(HEADER_BYTES as u64) as usize;
    buffer.clear();
    buffer.resize(prefix, 0);
    let got = read_fully(reader, buffer)?;
    if got < LENGTH_AND_MAGIC_BYTES {
        return Ok(Next::Garbage(got as u64, INCOMPLETE.into()));
    }
    let Some((batch_length, magic)) = batch::peek_size_and_magic(buffer) else {
        return Ok(Next::Garbage(got as u64, INCOMPLETE.into()));
    };
    let min_length = (HEADER_BYTES - LOG_OVERHEAD) as i64;
    // The log's own bound (recovery cuts there), on the whole batch.
    let size_claimed = batch_length as i64 + LOG_OVERHEAD as i64;
    if (batch_length as i64) < min_length || size_claimed > BATCH_BYTES_MAX as i64 {
        return Ok(Next::Garbage(
            remaining,
            format!("that are not a batch: batch length {batch_length} is impossible"),
        ));
    }
    if magic != MAGIC {
        return Ok(Next::Garbage(
            remaining,
            format!("that are not a v2 record batch: magic {magic}"),
        ));
    }
    let size = batch_length as u64 + LOG_OVERHEAD as u64;
    if size > remaining || got < prefix {
        return Ok(Next::Garbage(
            remaining,
            format!("{INCOMPLETE} (the batch there needs {size} bytes)"),
        ));
    }
    buffer.resize(size as usize, 0);
    let body = read_fully(reader, &mut buffer[prefix..])?;
    if prefix + body < buffer.len() {
        // The file shrank while it was being read.
        return Ok(Next::Garbage((prefix + body) as u64, INCOMPLETE.into()));
    }
    Ok(Next::Batch)
}

/// Fills `buf` as far as the reader allows; returns how many bytes were read.
fn read_fully(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn codec_name(codec: i16) -> String {
    match codec {
        0 => "none".into(),
        1 => "gzip".into(),
        2 => "snappy".into(),
        3 => "lz4".into(),
        4 => "zstd".into(),
        other => format!("unknown({other})"),
    }
}

fn batch_error(err: &BatchError) -> &'static str {
    match err {
        BatchError::Corrupt(why) | BatchError::Invalid(why) | BatchError::InvalidTimestamp(why) => {
            why
        }
    }
}

/// Bytes as text on one line: lossy UTF-8 with control characters escaped.
fn text(bytes: Option<&Bytes>) -> String {
    let Some(bytes) = bytes else {
        return "null".into();
    };
    let mut text = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    text
}

fn size_of(bytes: Option<&Bytes>) -> i64 {
    bytes.map_or(-1, |b| b.len() as i64)
}

/// Prints one complete batch (and its records) found at `position`.
fn print_batch(
    batch: &mut [u8],
    position: u64,
    records: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let header = BatchHeader::parse(batch);
    let valid = batch::compute_crc(batch) == header.crc;
    let timestamp_type = if header.is_log_append_time() {
        "LogAppendTime"
    } else {
        "CreateTime"
    };
    writeln!(
        out,
        "baseOffset: {} lastOffset: {} count: {} baseSequence: {} lastSequence: {} producerId: {} \
         producerEpoch: {} partitionLeaderEpoch: {} isTransactional: {} isControl: {} position: {position} \
         {timestamp_type}: {} size: {} magic: {} compresscodec: {} crc: {} isvalid: {valid}",
        header.base_offset,
        header.base_offset.wrapping_add(header.last_offset_delta as i64),
        header.record_count,
        header.base_sequence,
        header.last_sequence(),
        header.producer_id,
        header.producer_epoch,
        header.partition_leader_epoch,
        header.is_transactional(),
        header.is_control(),
        header.max_timestamp,
        batch.len(),
        header.magic,
        codec_name(header.compression()),
        header.crc,
    )?;
    if !records {
        return Ok(());
    }
    // Records are decoded with the base offset zeroed, so that a garbage base
    // offset (it is not covered by the CRC) cannot overflow the offset sums;
    // the offsets are made absolute here, wrapping.
    batch::assign_offset(batch, 0, header.partition_leader_epoch);
    let decoded = match batch::decode_records(batch) {
        Ok(decoded) => decoded,
        Err(err) => return writeln!(out, "| cannot decode the records: {}", batch_error(&err)),
    };
    for record in decoded {
        // With the base offset zeroed, the decoded offset is the record's delta.
        let delta = i32::try_from(record.offset).unwrap_or(-1);
        let sequence = increment_sequence(header.base_sequence, delta);
        let header_keys: Vec<String> = record
            .headers
            .iter()
            .map(|(name, _)| text(Some(name)))
            .collect();
        writeln!(
            out,
            "| offset: {} {timestamp_type}: {} keySize: {} valueSize: {} sequence: {sequence} headerKeys: [{}] \
             key: {} payload: {}",
            header.base_offset.wrapping_add(record.offset),
            record.timestamp,
            size_of(record.key.as_ref()),
            size_of(record.value.as_ref()),
            header_keys.join(","),
            text(record.key.as_ref()),
            text(record.value.as_ref()),
        )?;
    }
    Ok(())
}

/// Reads fixed-size entries until the end, calling `print` for each; a short
/// entry at the end is reported and ends the dump.
fn dump_entries<const N: usize>(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    mut print: impl FnMut(&[u8; N], &mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut position = 0u64;
    let mut entry = [0u8; N];
    loop {
        let got = read_fully(reader, &mut entry)?;
        if got == 0 {
            return Ok(());
        }
        if got < N {
            writeln!(
                out,
                "Found {got} bytes at position {position} that are not a complete index entry"
            )?;
            return Ok(());
        }
        print(&entry, out)?;
        position += N as u64;
    }
}

/// `.index`: entries of (offset relative to the base; position).
fn dump_offset_index(reader: &mut dyn Read, base: i64, out: &mut dyn Write) -> anyhow::Result<()> {
    dump_entries::<OFFSET_ENTRY_BYTES>(reader, out, |entry, out| {
        let entry = OffsetEntry::decode(entry);
        writeln!(
            out,
            "offset: {} position: {}",
            base.wrapping_add(entry.relative_offset as i64),
            entry.position
        )
    })
}

/// `.timeindex`: entries of (timestamp; relative offset).
fn dump_time_index(reader: &mut dyn Read, base: i64, out: &mut dyn Write) -> anyhow::Result<()> {
    dump_entries::<TIME_ENTRY_BYTES>(reader, out, |entry, out| {
        let entry = TimeEntry::decode(entry);
        writeln!(
            out,
            "timestamp: {} offset: {}",
            entry.timestamp,
            base.wrapping_add(entry.relative_offset as i64)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::batch::builder::{BatchBuilder, Compression, ProducerIdentity, RecordData};
    use sluice_core::batch::{
        ATTRIBUTES_OFFSET, ATTRIBUTE_COMPRESSION_MASK, ATTRIBUTE_TIMESTAMP_LOG_APPEND,
        ATTRIBUTE_TRANSACTIONAL, CRC_OFFSET, CRC_START, LAST_OFFSET_DELTA_OFFSET,
    };

    /// One test record: key, value, header names.
    type Rec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a [&'a str]);

    /// The fields of a test batch; record `i` has timestamp `timestamp + i`.
    struct Spec<'a> {
        base_offset: i64,
        timestamp: i64,
        attributes: i16,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        leader_epoch: i32,
        records: &'a [Rec<'a>],
    }

    impl<'a> Spec<'a> {
        fn new(base_offset: i64, records: &'a [Rec<'a>]) -> Spec<'a> {
            Spec {
                base_offset,
                timestamp: 1_700_000_000_000,
                attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                leader_epoch: 0,
                records,
            }
        }

        /// Encodes the batch with the core's encoder, as a producer would,
        /// compressing when the attributes ask for gzip; then stamps the
        /// broker's fields and the attribute bits a producer does not set.
        fn build(&self) -> Vec<u8> {
            let mut builder = BatchBuilder::new();
            for (delta, (key, value, names)) in self.records.iter().enumerate() {
                let headers: Vec<(&[u8], Option<&[u8]>)> = names
                    .iter()
                    .map(|n| (n.as_bytes(), Some(&b"v"[..])))
                    .collect();
                builder.append(&RecordData {
                    timestamp_ms: self.timestamp + delta as i64,
                    key: *key,
                    value: *value,
                    headers: &headers,
                });
            }
            let compression = match self.attributes & ATTRIBUTE_COMPRESSION_MASK {
                1 => Compression::Gzip,
                _ => Compression::None,
            };
            let identity = ProducerIdentity {
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                base_sequence: self.base_sequence,
            };
            let mut batch = builder
                .build(compression, identity)
                .expect("builds")
                .to_vec();
            batch::assign_offset(&mut batch, self.base_offset, self.leader_epoch);
            batch[ATTRIBUTES_OFFSET..LAST_OFFSET_DELTA_OFFSET]
                .copy_from_slice(&self.attributes.to_be_bytes());
            batch::write_crc(&mut batch);
            batch
        }
    }

    fn crc(batch: &[u8]) -> u32 {
        u32::from_be_bytes(batch[CRC_OFFSET..CRC_START].try_into().expect("4 bytes"))
    }

    /// Writes `bytes` as a file named `name` and dumps it.
    fn dump_file(name: &str, bytes: &[u8], records: bool) -> (String, Vec<String>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let mut out = Vec::new();
        run(&path, records, &mut out).expect("dump");
        let text = String::from_utf8(out).expect("utf-8");
        let lines = text.lines().map(str::to_string).collect();
        (path.display().to_string(), lines)
    }

    fn dump_log(bytes: &[u8], records: bool) -> Vec<String> {
        let (path, mut lines) = dump_file("00000000000000000000.log", bytes, records);
        assert_eq!(lines.remove(0), format!("Dumping {path}"));
        lines
    }

    fn dump_bytes(bytes: &[u8], records: bool) -> anyhow::Result<String> {
        let mut out = Vec::new();
        dump_batches(
            &mut io::Cursor::new(bytes),
            bytes.len() as u64,
            records,
            &mut out,
        )?;
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    const ABC: Rec<'static> = (Some(b"abc"), Some(b"hello"), &["h1", "h2"]);
    const NULLS: Rec<'static> = (None, None, &[]);

    #[test]
    fn batches_are_printed_like_kafka() {
        let first = Spec::new(0, &[ABC, NULLS, ABC]).build();
        let mut second = Spec::new(3, &[NULLS]);
        second.leader_epoch = 5;
        second.producer_id = 1000;
        second.producer_epoch = 2;
        second.base_sequence = 7;
        second.attributes = ATTRIBUTE_TRANSACTIONAL;
        let second = second.build();
        let file = [first.clone(), second.clone()].concat();
        let lines = dump_log(&file, false);
        assert_eq!(
            lines,
            vec![
                format!(
                    "baseOffset: 0 lastOffset: 2 count: 3 baseSequence: -1 lastSequence: -1 producerId: -1 \
                     producerEpoch: -1 partitionLeaderEpoch: 0 isTransactional: false isControl: false position: 0 \
                     CreateTime: 1700000000002 size: {} magic: 2 compresscodec: none crc: {} isvalid: true",
                    first.len(),
                    crc(&first)
                ),
                format!(
                    "baseOffset: 3 lastOffset: 3 count: 1 baseSequence: 7 lastSequence: 7 producerId: 1000 \
                     producerEpoch: 2 partitionLeaderEpoch: 5 isTransactional: true isControl: false position: {} \
                     CreateTime: 1700000000000 size: {} magic: 2 compresscodec: none crc: {} isvalid: true",
                    first.len(),
                    second.len(),
                    crc(&second)
                ),
            ]
        );
    }

    #[test]
    fn records_are_printed_after_their_batch() {
        let mut spec = Spec::new(10, &[ABC, NULLS]);
        spec.producer_id = 4;
        spec.producer_epoch = 0;
        spec.base_sequence = 20;
        let lines = dump_log(&spec.build(), true);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(
            "baseOffset: 10 lastOffset: 11 count: 2 baseSequence: 20 lastSequence: 21 "
        ));
        assert_eq!(
            lines[1],
            "| offset: 10 CreateTime: 1700000000000 keySize: 3 valueSize: 5 sequence: 20 headerKeys: [h1,h2] \
             key: abc payload: hello"
        );
        assert_eq!(
            lines[2],
            "| offset: 11 CreateTime: 1700000000001 keySize: -1 valueSize: -1 sequence: 21 headerKeys: [] \
             key: null payload: null"
        );
    }

    #[test]
    fn log_append_time_and_compression_are_shown() {
        let mut spec = Spec::new(0, &[ABC, (Some(b"k"), Some(b"line\nbreak \xff"), &[])]);
        spec.attributes = ATTRIBUTE_TIMESTAMP_LOG_APPEND | 1;
        let lines = dump_log(&spec.build(), true);
        assert!(
            lines[0].contains(" LogAppendTime: 1700000000001 "),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(" compresscodec: gzip "), "{}", lines[0]);
        assert!(lines[0].ends_with(" isvalid: true"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("| offset: 0 LogAppendTime: 1700000000001 keySize: 3"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("key: k payload: line\\nbreak \u{fffd}"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn a_torn_tail_is_reported_and_ends_the_dump() {
        let first = Spec::new(0, &[ABC]).build();
        let second = Spec::new(1, &[ABC, ABC]).build();
        let torn = [&first[..], &second[..30]].concat();
        let lines = dump_log(&torn, true);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            format!(
                "Found 30 bytes at position {} that are not a complete batch (the batch there needs {} bytes)",
                first.len(),
                second.len()
            )
        );

        let short = [&first[..], &second[..16]].concat();
        let lines = dump_log(&short, false);
        assert_eq!(
            lines[1],
            format!(
                "Found 16 bytes at position {} that are not a complete batch",
                first.len()
            )
        );
    }

    #[test]
    fn garbage_is_reported_without_allocating_for_it() {
        let first = Spec::new(0, &[ABC]).build();
        let mut garbage = [0xffu8; 40];
        garbage[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        let lines = dump_log(&[&first[..], &garbage[..]].concat(), false);
        assert_eq!(
            lines[1],
            format!(
                "Found 40 bytes at position {} that are not a batch: batch length 2147483647 is impossible",
                first.len()
            )
        );

        let zeros = dump_log(&[0u8; 100], false);
        assert_eq!(
            zeros,
            vec![
                "Found 100 bytes at position 0 that are not a batch: batch length 0 is impossible"
            ]
        );

        let mut old = first.clone();
        old[16] = 1;
        let lines = dump_log(&old, false);
        assert_eq!(
            lines,
            vec![format!(
                "Found {} bytes at position 0 that are not a v2 record batch: magic 1",
                old.len()
            )]
        );
    }

    #[test]
    fn a_flipped_bit_fails_the_crc_and_the_dump_goes_on() {
        let mut first = Spec::new(0, &[ABC]).build();
        let second = Spec::new(1, &[NULLS]).build();
        let last = first.len() - 1;
        first[last] ^= 1;
        let lines = dump_log(&[first.clone(), second].concat(), true);
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("baseOffset: 0 "), "{}", lines[0]);
        assert!(
            lines[0].ends_with(&format!("crc: {} isvalid: false", crc(&first))),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "| cannot decode the records: CRC-32C mismatch");
        assert!(
            lines[2].starts_with("baseOffset: 1 ") && lines[2].ends_with("isvalid: true"),
            "{}",
            lines[2]
        );
        assert!(lines[3].starts_with("| offset: 1 "), "{}", lines[3]);
    }

    #[test]
    fn an_empty_log_prints_only_its_name() {
        assert!(dump_log(&[], true).is_empty());
    }

    #[test]
    fn damaged_logs_never_panic() {
        let mut spec = Spec::new(i64::MAX - 1, &[ABC, NULLS]);
        spec.base_sequence = i32::MAX;
        spec.producer_id = 1;
        let log = [spec.build(), Spec::new(0, &[ABC]).build()].concat();
        for cut in 0..=log.len() {
            dump_bytes(&log[..cut], true).expect("dump");
        }
        for at in 0..log.len() {
            for value in [0x00, 0x7f, 0x80, 0xff] {
                let mut damaged = log.clone();
                damaged[at] = value;
                dump_bytes(&damaged, true).expect("dump");
            }
        }
    }

    #[test]
    fn offset_index_entries_are_absolute() {
        let mut index = Vec::new();
        for (relative, position) in [(0u32, 0u32), (41, 4096)] {
            index.extend_from_slice(&relative.to_be_bytes());
            index.extend_from_slice(&position.to_be_bytes());
        }
        index.extend_from_slice(&[1, 2, 3]);
        let (path, lines) = dump_file("00000000000000000100.index", &index, false);
        assert_eq!(
            lines,
            vec![
                format!("Dumping {path}"),
                "offset: 100 position: 0".into(),
                "offset: 141 position: 4096".into(),
                "Found 3 bytes at position 16 that are not a complete index entry".into(),
            ]
        );
    }

    #[test]
    fn time_index_entries_are_absolute() {
        let mut index = Vec::new();
        for (timestamp, relative) in [(1_700_000_000_000i64, 3u32), (1_700_000_000_500, 9)] {
            index.extend_from_slice(&timestamp.to_be_bytes());
            index.extend_from_slice(&relative.to_be_bytes());
        }
        let (path, lines) = dump_file("00000000000000000050.timeindex", &index, false);
        assert_eq!(
            lines,
            vec![
                format!("Dumping {path}"),
                "timestamp: 1700000000000 offset: 53".into(),
                "timestamp: 1700000000500 offset: 59".into(),
            ]
        );
    }

    #[test]
    fn unknown_files_and_names_are_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in [
            "segment.index",
            "00000000000000000000.snapshot",
            "99999999999999999999.index",
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, [0u8; 8]).expect("write");
            let err = run(&path, false, &mut Vec::new()).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        let missing = dir.path().join("00000000000000000000.log");
        let err = run(&missing, false, &mut Vec::new()).expect_err("missing");
        assert!(err.to_string().starts_with("cannot open"), "{err}");
    }
}
