//! Kafka's record formats in `__consumer_offsets`: the offset commit key
//! (version 1) and value (version 3), and the group metadata key (version
//! 2) and value (version 3), with decoders for the older versions Kafka
//! may have written; and the key of the transaction markers found there.

use bytes::{Buf, BufMut, Bytes};

use crate::group::{Committed, Group, Member, MEMBERS_MAX};

pub(crate) fn put_string(out: &mut Vec<u8>, text: &str) {
    out.put_i16(text.len() as i16);
    out.put_slice(text.as_bytes());
}

fn put_nullable_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

pub(crate) fn get_string(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let length = buf.get_i16();
    if length < 0 {
        return Some(String::new());
    }
    let length = length as usize;
    if buf.remaining() < length {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..length]).into_owned();
    buf.advance(length);
    Some(text)
}

fn get_nullable_string(buf: &mut &[u8]) -> Option<Option<String>> {
    if buf.remaining() < 2 {
        return None;
    }
    if i16::from_be_bytes([buf[0], buf[1]]) < 0 {
        buf.advance(2);
        return Some(None);
    }
    get_string(buf).map(Some)
}

fn get_bytes(buf: &mut &[u8]) -> Option<Bytes> {
    if buf.remaining() < 4 {
        return None;
    }
    let length = buf.get_i32().max(0) as usize;
    if buf.remaining() < length {
        return None;
    }
    let bytes = Bytes::copy_from_slice(&buf[..length]);
    buf.advance(length);
    Some(bytes)
}

/// Kafka's offset commit key, version 1: group, topic, partition.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(1);
    put_string(&mut out, group);
    put_string(&mut out, topic);
    out.put_i32(partition);
    out
}

/// Kafka's offset commit value, version 3.
pub fn offset_value(committed: &Committed) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(3);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    put_string(&mut out, &committed.metadata);
    out.put_i64(committed.commit_timestamp_ms);
    out
}

/// Decodes an offset commit key (versions 0 and 1); None for other keys
/// (group metadata, version 2) or garbage.
pub fn parse_offset_key(mut key: &[u8]) -> Option<(String, String, i32)> {
    if key.remaining() < 2 || !matches!(key.get_i16(), 0 | 1) {
        return None;
    }
    let group = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    (key.remaining() >= 4).then(|| (group, topic, key.get_i32()))
}

/// Decodes an offset commit value of versions 0 to 3.
pub fn parse_offset_value(mut value: &[u8]) -> Option<Committed> {
    if value.remaining() < 10 {
        return None;
    }
    let version = value.get_i16();
    let offset = value.get_i64();
    let leader_epoch = if version >= 3 && value.remaining() >= 4 {
        value.get_i32()
    } else {
        -1
    };
    let metadata = get_string(&mut value)?;
    let commit_timestamp_ms = if value.remaining() >= 8 {
        value.get_i64()
    } else {
        -1
    };
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        // Known to whoever read the record from the log.
        record_offset: -1,
    })
}

/// Decodes the key of a transaction marker (a control record): `int16
/// version, int16 type`, type 0 ABORT and 1 COMMIT. Some(true) for a
/// commit, Some(false) for an abort, None for other control records or
/// garbage.
pub fn parse_marker_key(mut key: &[u8]) -> Option<bool> {
    if key.remaining() < 4 {
        return None;
    }
    let _version = key.get_i16();
    match key.get_i16() {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Kafka's group metadata key, version 2.
pub fn group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(2);
    put_string(&mut out, group);
    out
}

/// Kafka's group metadata value, version 3; `now_ms` is the wall clock.
pub fn group_value(group: &Group, now_ms: i64) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(3);
    put_string(&mut out, &group.protocol_type);
    out.put_i32(group.generation);
    put_nullable_string(&mut out, group.protocol.as_deref());
    put_nullable_string(&mut out, group.leader.as_deref());
    out.put_i64(now_ms);
    out.put_i32(group.members.len() as i32);
    for member in group.members.values() {
        put_string(&mut out, &member.member_id);
        put_nullable_string(&mut out, member.group_instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        put_bytes(&mut out, &group.metadata_of(member));
        put_bytes(&mut out, &member.assignment);
    }
    out
}

/// Decodes a group metadata key (version 2).
pub fn parse_group_key(mut key: &[u8]) -> Option<String> {
    if key.remaining() < 2 || key.get_i16() != 2 {
        return None;
    }
    get_string(&mut key)
}

/// Decodes a group metadata value of versions 0 to 3.
pub fn parse_group_value(mut value: &[u8]) -> Option<Group> {
    if value.remaining() < 2 {
        return None;
    }
    let version = value.get_i16();
    let mut group = Group::new();
    group.protocol_type = get_string(&mut value)?;
    if value.remaining() < 4 {
        return None;
    }
    group.generation = value.get_i32();
    group.protocol = get_nullable_string(&mut value)?;
    group.leader = get_nullable_string(&mut value)?;
    if version >= 2 {
        if value.remaining() < 8 {
            return None;
        }
        value.get_i64();
    }
    if value.remaining() < 4 {
        return None;
    }
    let count = value.get_i32().clamp(0, MEMBERS_MAX as i32);
    for _ in 0..count {
        let member_id = get_string(&mut value)?;
        let group_instance_id = if version >= 3 {
            get_nullable_string(&mut value)?
        } else {
            None
        };
        let client_id = get_string(&mut value)?;
        let client_host = get_string(&mut value)?;
        let rebalance_timeout_ms = if version >= 1 && value.remaining() >= 4 {
            value.get_i32()
        } else {
            0
        };
        if value.remaining() < 4 {
            return None;
        }
        let session_timeout_ms = value.get_i32();
        let subscription = get_bytes(&mut value)?;
        let assignment = get_bytes(&mut value)?;
        let protocols = vec![(group.protocol.clone().unwrap_or_default(), subscription)];
        group.members.insert(
            member_id.clone(),
            Member {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms: if rebalance_timeout_ms > 0 {
                    rebalance_timeout_ms
                } else {
                    session_timeout_ms
                },
                protocols,
                assignment,
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline_ms: 0,
            },
        );
    }
    Some(group)
}
