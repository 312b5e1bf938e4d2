//! Kafka's record formats in `__transaction_state`: the key (version 0,
//! the transactional id) and the value (version 0; version 1, flexible,
//! read too). A null value is a tombstone: the id was removed.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut};

use super::{TxnMetadata, TxnState, NO_EPOCH};
use crate::group_records::{get_string, put_string};
use crate::types::TopicPartition;

pub fn txn_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.put_i16(0);
    put_string(&mut out, transactional_id);
    out
}

pub fn parse_txn_key(mut key: &[u8]) -> Option<String> {
    if key.remaining() < 2 || key.get_i16() != 0 {
        return None;
    }
    get_string(&mut key)
}

/// The value Kafka writes without `transaction.version` (version 0): the
/// partition list is null for an Empty id.
pub fn txn_value(meta: &TxnMetadata) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.put_i16(0);
    out.put_i64(meta.producer_id);
    out.put_i16(meta.epoch);
    out.put_i32(meta.timeout_ms);
    out.put_i8(meta.state.id());
    if meta.state == TxnState::Empty {
        assert!(
            meta.partitions.is_empty(),
            "an Empty id holds no partitions"
        );
        out.put_i32(-1);
    } else {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in &meta.partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        out.put_i32(by_topic.len() as i32);
        for (topic, partitions) in by_topic {
            put_string(&mut out, topic);
            out.put_i32(partitions.len() as i32);
            partitions.iter().for_each(|p| out.put_i32(*p));
        }
    }
    out.put_i64(meta.last_update_ms);
    out.put_i64(meta.start_ms);
    out
}

/// Reads a value of version 0 or 1; `None` if it cannot be read.
pub fn parse_txn_value(mut value: &[u8]) -> Option<TxnMetadata> {
    let buf = &mut value;
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if !(0..=1).contains(&version) {
        return None;
    }
    let flexible = version >= 1;
    if buf.remaining() < 8 + 2 + 4 + 1 {
        return None;
    }
    let producer_id = buf.get_i64();
    let epoch = buf.get_i16();
    let timeout_ms = buf.get_i32();
    let state = TxnState::from_id(buf.get_i8())?;
    let mut partitions = BTreeSet::new();
    let topics = if flexible {
        get_unsigned_varint(buf)? as i64 - 1
    } else {
        if buf.remaining() < 4 {
            return None;
        }
        buf.get_i32() as i64
    };
    for _ in 0..topics.max(0) {
        let topic = if flexible {
            get_compact_string(buf)?
        } else {
            get_string(buf)?
        };
        let count = if flexible {
            get_unsigned_varint(buf)? as i64 - 1
        } else {
            if buf.remaining() < 4 {
                return None;
            }
            buf.get_i32() as i64
        };
        for _ in 0..count.max(0) {
            if buf.remaining() < 4 {
                return None;
            }
            partitions.insert(TopicPartition::new(topic.clone(), buf.get_i32()));
        }
        if flexible {
            skip_tags(buf)?;
        }
    }
    if buf.remaining() < 16 {
        return None;
    }
    let last_update_ms = buf.get_i64();
    let start_ms = buf.get_i64();
    let mut prev_producer_id = -1;
    if flexible {
        // Tag 0: the previous producer id (the others are not kept).
        let tags = get_unsigned_varint(buf)?;
        for _ in 0..tags {
            let tag = get_unsigned_varint(buf)?;
            let size = get_unsigned_varint(buf)? as usize;
            if buf.remaining() < size {
                return None;
            }
            if tag == 0 && size == 8 {
                prev_producer_id = (&buf[..8]).get_i64();
            }
            buf.advance(size);
        }
    }
    Some(TxnMetadata {
        producer_id,
        prev_producer_id,
        epoch,
        last_epoch: NO_EPOCH,
        timeout_ms,
        state,
        partitions,
        start_ms,
        last_update_ms,
    })
}

fn get_unsigned_varint(buf: &mut &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= ((byte & 0x7f) as u32) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn get_compact_string(buf: &mut &[u8]) -> Option<String> {
    let length = (get_unsigned_varint(buf)? as usize).checked_sub(1)?;
    if buf.remaining() < length {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..length]).into_owned();
    buf.advance(length);
    Some(text)
}

fn skip_tags(buf: &mut &[u8]) -> Option<()> {
    for _ in 0..get_unsigned_varint(buf)? {
        get_unsigned_varint(buf)?;
        let size = get_unsigned_varint(buf)? as usize;
        if buf.remaining() < size {
            return None;
        }
        buf.advance(size);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ongoing() -> TxnMetadata {
        let mut meta = TxnMetadata::new(4000, 60_000, 1_000);
        meta.state = TxnState::Ongoing;
        meta.epoch = 3;
        meta.start_ms = 900;
        meta.partitions = [("a", 1), ("a", 0), ("b", 7)]
            .into_iter()
            .map(|(t, p)| TopicPartition::new(t, p))
            .collect();
        meta
    }

    #[test]
    fn a_value_reads_back_as_written() {
        let meta = ongoing();
        assert_eq!(parse_txn_value(&txn_value(&meta)), Some(meta.clone()));
        let empty = TxnMetadata::new(9, 1000, 5);
        assert_eq!(parse_txn_value(&txn_value(&empty)), Some(empty));
        assert_eq!(
            parse_txn_key(&txn_key("pipeline-7")),
            Some("pipeline-7".into())
        );
    }

    #[test]
    fn the_value_has_kafkas_layout() {
        let meta = ongoing();
        let bytes = txn_value(&meta);
        let mut expected = Vec::new();
        expected.extend_from_slice(&0i16.to_be_bytes());
        expected.extend_from_slice(&4000i64.to_be_bytes());
        expected.extend_from_slice(&3i16.to_be_bytes());
        expected.extend_from_slice(&60_000i32.to_be_bytes());
        expected.push(1);
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(&1i16.to_be_bytes());
        expected.extend_from_slice(b"a");
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(&0i32.to_be_bytes());
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.extend_from_slice(&1i16.to_be_bytes());
        expected.extend_from_slice(b"b");
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.extend_from_slice(&7i32.to_be_bytes());
        expected.extend_from_slice(&1_000i64.to_be_bytes());
        expected.extend_from_slice(&900i64.to_be_bytes());
        assert_eq!(bytes, expected);
        // An Empty id writes a null partition list.
        let empty = txn_value(&TxnMetadata::new(1, 1, 1));
        assert_eq!(&empty[17..21], &(-1i32).to_be_bytes());
    }

    #[test]
    fn a_flexible_value_is_read() {
        // Version 1: compact arrays and strings, tag sections, tag 0 the
        // previous producer id.
        let mut v1 = Vec::new();
        v1.extend_from_slice(&1i16.to_be_bytes());
        v1.extend_from_slice(&77i64.to_be_bytes());
        v1.extend_from_slice(&2i16.to_be_bytes());
        v1.extend_from_slice(&5000i32.to_be_bytes());
        v1.push(2);
        v1.push(2); // one topic
        v1.push(2); // "t"
        v1.push(b't');
        v1.push(3); // two partitions
        v1.extend_from_slice(&4i32.to_be_bytes());
        v1.extend_from_slice(&5i32.to_be_bytes());
        v1.push(0); // topic tags
        v1.extend_from_slice(&10i64.to_be_bytes());
        v1.extend_from_slice(&8i64.to_be_bytes());
        v1.push(1); // one tag
        v1.push(0);
        v1.push(8);
        v1.extend_from_slice(&66i64.to_be_bytes());
        let meta = parse_txn_value(&v1).expect("readable");
        assert_eq!(meta.producer_id, 77);
        assert_eq!(meta.prev_producer_id, 66);
        assert_eq!(meta.state, TxnState::PrepareCommit);
        assert_eq!(meta.partitions.len(), 2);
        assert_eq!((meta.last_update_ms, meta.start_ms), (10, 8));
        assert_eq!(parse_txn_value(&v1[..v1.len() - 3]), None);
    }
}
