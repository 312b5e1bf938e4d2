//! Kafka's `replication-offset-checkpoint`: one file per log directory
//! holding each partition's high watermark, so that a restarted broker
//! knows what was replicated before it stopped instead of starting every
//! high watermark at its log start. The format is Kafka's
//! `OffsetCheckpointFile`: a version line (`0`), a count line, then one
//! `topic partition offset` line per partition.
//!
//! The file is written whole to a temporary name and renamed over the old
//! one; the node's next sync makes both the file and the directory entry
//! durable. A crash before then leaves the old file (or the new one),
//! either of which holds high watermarks that were true when written: a
//! high watermark only moves up, and a restored one is capped by the log
//! end. A file that cannot be read is ignored with a warning, as if it were
//! missing: the high watermarks then start at the log starts, as they did
//! before this file existed.

use std::collections::BTreeMap;
use std::io;

use crate::storage::Storage;
use crate::types::TopicPartition;

/// The file's name in the log directory (Kafka's
/// `ReplicaManager.HighWatermarkFilename`).
pub const FILE: &str = "replication-offset-checkpoint";
/// Where the next version is written before the rename.
pub const TMP_FILE: &str = "replication-offset-checkpoint.tmp";
const VERSION: i32 = 0;
/// Larger than any checkpoint of partitions this broker can hold.
const FILE_BYTES_MAX: u64 = 64 << 20;

/// The text of the file for these high watermarks.
pub fn encode(offsets: &BTreeMap<TopicPartition, i64>) -> String {
    let mut text = format!("{VERSION}\n{}\n", offsets.len());
    for (tp, offset) in offsets {
        text.push_str(&format!("{} {} {offset}\n", tp.topic, tp.partition));
    }
    text
}

/// The high watermarks in a file's text; why not, for a file that is not
/// a version 0 checkpoint with as many entries as it says.
pub fn decode(text: &str) -> Result<BTreeMap<TopicPartition, i64>, String> {
    let mut lines = text.lines();
    let version = lines.next().ok_or("empty")?;
    if version.trim().parse::<i32>() != Ok(VERSION) {
        return Err(format!("version {version:?}, not {VERSION}"));
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or("no entry count")?;
    let mut offsets = BTreeMap::new();
    for line in lines.by_ref().take(count) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [topic, partition, offset] = fields[..] else {
            return Err(format!("a bad entry {line:?}"));
        };
        let partition: i32 = partition
            .parse()
            .map_err(|_| format!("a bad partition in {line:?}"))?;
        let offset: i64 = offset
            .parse()
            .map_err(|_| format!("a bad offset in {line:?}"))?;
        if partition < 0 || offset < 0 {
            return Err(format!("a negative number in {line:?}"));
        }
        offsets.insert(TopicPartition::new(topic, partition), offset);
    }
    if offsets.len() != count {
        return Err(format!("{} entries of {count}", offsets.len()));
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("lines after the entries".into());
    }
    Ok(offsets)
}

/// The high watermarks of the log directory's checkpoint: empty when it
/// has none or it cannot be read (logged).
pub fn read<S: Storage + ?Sized>(storage: &mut S) -> BTreeMap<TopicPartition, i64> {
    if !storage.exists(FILE) {
        return BTreeMap::new();
    }
    let bytes = match read_whole(storage) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(file = FILE, %error, "cannot read the high watermark checkpoint; high watermarks start at the log starts");
            return BTreeMap::new();
        }
    };
    let decoded = std::str::from_utf8(&bytes)
        .map_err(|_| "not UTF-8 text".to_string())
        .and_then(decode);
    match decoded {
        Ok(offsets) => offsets,
        Err(why) => {
            tracing::warn!(
                file = FILE,
                why,
                "an unreadable high watermark checkpoint; high watermarks start at the log starts"
            );
            BTreeMap::new()
        }
    }
}

fn read_whole<S: Storage + ?Sized>(storage: &mut S) -> io::Result<Vec<u8>> {
    let file = storage.open(FILE, false)?;
    let result = (|| {
        let len = storage.len(file)?;
        if len > FILE_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than a checkpoint holds"),
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        let mut at = 0usize;
        while at < bytes.len() {
            let read = storage.read_at(file, at as u64, &mut bytes[at..])?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            at += read;
        }
        Ok(bytes)
    })();
    storage.close(file);
    result
}

/// Writes the checkpoint: the temporary file, then the rename. The caller
/// has the file and the log directory synced.
pub fn write<S: Storage + ?Sized>(
    storage: &mut S,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> io::Result<()> {
    let text = encode(offsets);
    let file = storage.open(TMP_FILE, true)?;
    let written = storage
        .truncate(file, 0)
        .and_then(|()| storage.write_at(file, 0, text.as_bytes()));
    storage.close(file);
    written?;
    storage.rename(TMP_FILE, FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn offsets(entries: &[(&str, i32, i64)]) -> BTreeMap<TopicPartition, i64> {
        entries
            .iter()
            .map(|&(t, p, o)| (TopicPartition::new(t, p), o))
            .collect()
    }

    #[test]
    fn the_text_is_kafkas() {
        let text = encode(&offsets(&[
            ("orders", 1, 42),
            ("orders", 0, 7),
            ("a", 3, 0),
        ]));
        assert_eq!(text, "0\n3\na 3 0\norders 0 7\norders 1 42\n");
        assert_eq!(
            decode(&text).expect("reads back"),
            offsets(&[("orders", 1, 42), ("orders", 0, 7), ("a", 3, 0)])
        );
        assert_eq!(decode("0\n0\n").expect("empty"), BTreeMap::new());
    }

    #[test]
    fn bad_files_are_refused_not_half_read() {
        for bad in [
            "",
            "1\n0\n",
            "0\n",
            "0\n2\na 0 1\n",
            "0\n1\na 0\n",
            "0\n1\na x 1\n",
            "0\n1\na 0 -4\n",
            "0\n1\na 0 1\nb 0 2\n",
            "0\n2\na 0 1\na 0 2\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn written_then_read_and_garbage_reads_as_none() {
        let mut storage = MemStorage::new();
        assert!(read(&mut storage).is_empty());
        let hws = offsets(&[("t", 0, 5), ("t", 1, 9)]);
        write(&mut storage, &hws).expect("write");
        assert!(!storage.exists(TMP_FILE));
        assert_eq!(read(&mut storage), hws);
        // A shorter second version leaves nothing of the first behind.
        let fewer = offsets(&[("t", 0, 6)]);
        write(&mut storage, &fewer).expect("write");
        assert_eq!(read(&mut storage), fewer);
        let file = storage.open(FILE, false).expect("there");
        storage.write_at(file, 0, b"\xff\xfe").expect("write");
        storage.close(file);
        assert!(read(&mut storage).is_empty());
    }
}
