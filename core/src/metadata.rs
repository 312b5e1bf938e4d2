//! The cluster metadata log of a single node: topics, their ids, partition
//! counts and config overrides, and the cluster id.
//!
//! Changes are appended as records (`u32 length, u32 CRC-32C, payload`) to
//! `__cluster_metadata-0/metadata.log` and replayed at start; a torn or
//! corrupt tail is cut off like a partition log's. The payload is one line
//! of space-separated, percent-escaped words, so the file can be read by eye.
//! This is the single-voter form of the controller's metadata log; the
//! replicated quorum will carry the same records.

use std::collections::BTreeMap;
use std::io;

use crate::storage::{read_exact_at, FileId, Storage, SyncTarget};

pub const METADATA_DIR: &str = "__cluster_metadata-0";
const METADATA_FILE: &str = "__cluster_metadata-0/metadata.log";
const RECORD_HEADER_BYTES: usize = 8;
const RECORD_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// One change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Cluster {
        id: String,
    },
    CreateTopic(TopicRecord),
    SetPartitions {
        name: String,
        partitions: i32,
    },
    DeleteTopic {
        name: String,
    },
    /// Producer ids below `block_end` may have been handed out: never again.
    ProducerIds {
        block_end: i64,
    },
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Cluster { id } => format!("cluster {}", escape(id)),
            Change::CreateTopic(topic) => {
                let mut line = format!(
                    "topic {} {} {}",
                    escape(&topic.name),
                    hex(&topic.id),
                    topic.partitions
                );
                for (key, value) in &topic.configs {
                    line.push_str(&format!(" {}={}", escape(key), escape(value)));
                }
                line
            }
            Change::SetPartitions { name, partitions } => {
                format!("partitions {} {partitions}", escape(name))
            }
            Change::DeleteTopic { name } => format!("delete {}", escape(name)),
            Change::ProducerIds { block_end } => format!("producer-ids {block_end}"),
        }
    }

    fn decode(line: &str) -> Option<Change> {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["cluster", id] => Some(Change::Cluster { id: unescape(id)? }),
            ["topic", name, id, partitions, configs @ ..] => {
                let mut map = BTreeMap::new();
                for pair in configs {
                    let (key, value) = pair.split_once('=')?;
                    map.insert(unescape(key)?, unescape(value)?);
                }
                Some(Change::CreateTopic(TopicRecord {
                    name: unescape(name)?,
                    id: unhex(id)?,
                    partitions: partitions.parse().ok()?,
                    configs: map,
                }))
            }
            ["partitions", name, count] => Some(Change::SetPartitions {
                name: unescape(name)?,
                partitions: count.parse().ok()?,
            }),
            ["producer-ids", end] => Some(Change::ProducerIds {
                block_end: end.parse().ok()?,
            }),
            ["delete", name] => Some(Change::DeleteTopic {
                name: unescape(name)?,
            }),
            _ => None,
        }
    }
}

fn escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b' ' | b'=' | b'%' | b'\n' | 0..=0x1f | 0x7f..=0xff => {
                out.push_str(&format!("%{byte:02X}"))
            }
            _ => out.push(byte as char),
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let raw = text.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let digits = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(digits, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// The replayed metadata and the open log file.
#[derive(Debug)]
pub struct MetadataLog {
    file: FileId,
    size_bytes: u64,
    pub cluster_id: Option<String>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// End of the last reserved block of producer ids.
    pub producer_id_block_end: i64,
    dirty: Vec<SyncTarget>,
}

impl MetadataLog {
    /// Opens the log, replays it and cuts off a torn tail.
    pub fn open<S: Storage + ?Sized>(storage: &mut S) -> io::Result<MetadataLog> {
        storage.create_dir_all(METADATA_DIR)?;
        let file = storage.open(METADATA_FILE, true)?;
        let mut log = MetadataLog {
            file,
            size_bytes: 0,
            cluster_id: None,
            topics: BTreeMap::new(),
            producer_id_block_end: 0,
            dirty: Vec::new(),
        };
        // Whether or not this process created them, the file and its
        // directory entries may exist only in the page cache (a previous run
        // may have stopped before its first sync): the first sync covers them.
        log.dirty.push(SyncTarget::Dir(String::new()));
        log.dirty.push(SyncTarget::Dir(METADATA_DIR.to_string()));
        log.dirty.push(SyncTarget::File(METADATA_FILE.to_string()));
        let len = storage.len(file)?;
        let mut contents = vec![0u8; len as usize];
        read_exact_at(storage, file, 0, &mut contents)?;
        let mut position = 0usize;
        while let Some(record) = read_record(&contents[position..]) {
            let (payload, size) = record;
            let Some(change) = std::str::from_utf8(payload).ok().and_then(Change::decode) else {
                // Intact but not understood: cutting it would lose every later
                // change, so refuse to start instead.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("metadata record at byte {position} is intact but not understood"),
                ));
            };
            log.apply(change);
            position += size;
        }
        if position as u64 != len {
            tracing::warn!(
                cut_bytes = len - position as u64,
                "truncating a torn tail of the metadata log"
            );
            storage.truncate(file, position as u64)?;
            log.dirty.push(SyncTarget::File(METADATA_FILE.to_string()));
        }
        log.size_bytes = position as u64;
        Ok(log)
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Cluster { id } => self.cluster_id = Some(id),
            Change::CreateTopic(topic) => {
                self.topics.insert(topic.name.clone(), topic);
            }
            Change::SetPartitions { name, partitions } => {
                if let Some(topic) = self.topics.get_mut(&name) {
                    topic.partitions = partitions;
                }
            }
            Change::DeleteTopic { name } => {
                self.topics.remove(&name);
            }
            Change::ProducerIds { block_end } => {
                assert!(
                    block_end >= self.producer_id_block_end,
                    "producer id blocks only grow"
                );
                self.producer_id_block_end = block_end;
            }
        }
    }

    /// Appends a change and applies it; durable after the next sync of `take_dirty()`.
    pub fn append<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        change: Change,
    ) -> io::Result<()> {
        let payload = change.encode().into_bytes();
        assert!(
            payload.len() <= RECORD_BYTES_MAX,
            "metadata record too large"
        );
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        record.extend_from_slice(&payload);
        if let Err(error) = storage.write_at(self.file, self.size_bytes, &record) {
            let _ = storage.truncate(self.file, self.size_bytes);
            return Err(error);
        }
        self.size_bytes += record.len() as u64;
        self.dirty.push(SyncTarget::File(METADATA_FILE.to_string()));
        self.apply(change);
        Ok(())
    }

    pub fn take_dirty(&mut self) -> Vec<SyncTarget> {
        std::mem::take(&mut self.dirty)
    }

    pub fn all_files(&self) -> Vec<SyncTarget> {
        vec![
            SyncTarget::File(METADATA_FILE.to_string()),
            SyncTarget::Dir(METADATA_DIR.to_string()),
        ]
    }
}

/// The payload and size of the intact record at the start of `bytes`, if any.
fn read_record(bytes: &[u8]) -> Option<(&[u8], usize)> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return None;
    }
    let length = u32::from_be_bytes(bytes[0..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
    if length > RECORD_BYTES_MAX || bytes.len() < RECORD_HEADER_BYTES + length {
        return None;
    }
    let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + length];
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((payload, RECORD_HEADER_BYTES + length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn topic(name: &str) -> Change {
        let configs = [("retention.ms".to_string(), "a b=%".to_string())]
            .into_iter()
            .collect();
        Change::CreateTopic(TopicRecord {
            name: name.into(),
            id: [7; 16],
            partitions: 3,
            configs,
        })
    }

    #[test]
    fn changes_survive_a_synced_restart_and_a_torn_tail_is_cut() {
        let mut storage = MemStorage::new();
        let mut log = MetadataLog::open(&mut storage).expect("open");
        log.append(&mut storage, Change::Cluster { id: "abc".into() })
            .expect("append");
        log.append(&mut storage, topic("orders")).expect("append");
        for target in log.take_dirty() {
            storage.sync(&target);
        }
        log.append(
            &mut storage,
            Change::DeleteTopic {
                name: "orders".into(),
            },
        )
        .expect("append");
        storage.crash(5);
        let log = MetadataLog::open(&mut storage).expect("reopen");
        assert_eq!(log.cluster_id.as_deref(), Some("abc"));
        assert_eq!(log.topics.get("orders").map(|t| t.partitions), Some(3));
        assert_eq!(log.topics["orders"].configs["retention.ms"], "a b=%");
    }

    #[test]
    fn unsynced_creation_is_lost_at_a_crash() {
        let mut storage = MemStorage::new();
        let mut log = MetadataLog::open(&mut storage).expect("open");
        log.append(&mut storage, topic("lost")).expect("append");
        storage.crash(0);
        assert!(MetadataLog::open(&mut storage)
            .expect("reopen")
            .topics
            .is_empty());
    }

    #[test]
    fn an_intact_record_not_understood_stops_the_start_instead_of_cutting() {
        let mut storage = MemStorage::new();
        let mut log = MetadataLog::open(&mut storage).expect("open");
        log.append(&mut storage, topic("kept")).expect("append");
        let payload = b"from-the-future 1";
        let mut record = (payload.len() as u32).to_be_bytes().to_vec();
        record.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        record.extend_from_slice(payload);
        let end = log.size_bytes;
        storage.write_at(log.file, end, &record).expect("write");
        assert!(MetadataLog::open(&mut storage).is_err());
    }
}
