//! The on-disk format of a partition directory, apart from the record
//! batches themselves (`crate::batch`): how segment files are named, what
//! an `.index`, a `.timeindex` and a `.txnindex` entry hold, and how large
//! a stored batch may claim to be. The log writes and reads these; `sluice dump-log`
//! prints them, from the same definitions. The layout is Kafka's.

/// Suffix of a segment's record batches.
pub const LOG_SUFFIX: &str = "log";
/// Suffix of a segment's offset index.
pub const INDEX_SUFFIX: &str = "index";
/// Suffix of a segment's time index.
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Suffix of a segment's aborted transaction index.
pub const TXN_INDEX_SUFFIX: &str = "txnindex";
/// The files one segment is made of.
pub const SEGMENT_SUFFIXES: [&str; 4] = [
    LOG_SUFFIX,
    INDEX_SUFFIX,
    TIME_INDEX_SUFFIX,
    TXN_INDEX_SUFFIX,
];

/// A stored batch whose header claims more bytes than this (header
/// included) is damage, not a batch: recovery cuts the log there, and
/// dump-log stops there, without allocating for it.
pub const BATCH_BYTES_MAX: usize = 1 << 30;

/// Bytes of one `.index` entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry.
pub const TIME_ENTRY_BYTES: usize = 12;
/// Bytes of one `.txnindex` entry.
pub const ABORTED_TXN_BYTES: usize = 34;
/// The `.txnindex` entry version Kafka writes (and the only one it reads).
pub const ABORTED_TXN_VERSION: i16 = 0;

/// A segment's file name: `<base offset, 20 digits>.<suffix>`.
pub fn segment_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// One `.index` entry: the batch at byte `position` of the `.log` ends at
/// offset `base + relative_offset`. Big-endian u32s, offset first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl OffsetEntry {
    pub fn encode(&self) -> [u8; OFFSET_ENTRY_BYTES] {
        let mut bytes = [0u8; OFFSET_ENTRY_BYTES];
        bytes[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        bytes[4..].copy_from_slice(&self.position.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8; OFFSET_ENTRY_BYTES]) -> OffsetEntry {
        let [o0, o1, o2, o3, p0, p1, p2, p3] = *bytes;
        OffsetEntry {
            relative_offset: u32::from_be_bytes([o0, o1, o2, o3]),
            position: u32::from_be_bytes([p0, p1, p2, p3]),
        }
    }
}

/// One `.timeindex` entry: records up to offset `base + relative_offset`
/// have timestamps up to `timestamp` (the largest so far in the segment).
/// A big-endian i64 then a big-endian u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl TimeEntry {
    pub fn encode(&self) -> [u8; TIME_ENTRY_BYTES] {
        let mut bytes = [0u8; TIME_ENTRY_BYTES];
        bytes[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        bytes[8..].copy_from_slice(&self.relative_offset.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8; TIME_ENTRY_BYTES]) -> TimeEntry {
        let [t0, t1, t2, t3, t4, t5, t6, t7, o0, o1, o2, o3] = *bytes;
        TimeEntry {
            timestamp: i64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
            relative_offset: u32::from_be_bytes([o0, o1, o2, o3]),
        }
    }
}

/// One `.txnindex` entry (Kafka's `AbortedTxn`): the transaction of
/// `producer_id` from `first_offset` was aborted by the marker at
/// `last_offset`, written into the segment holding that marker; at that
/// point the first offset of the oldest transaction still open was
/// `last_stable_offset` (`last_offset + 1` with none), which bounds how
/// far a fetch must look for entries. Big-endian: an i16 version (0),
/// then four i64s in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub fn encode(&self) -> [u8; ABORTED_TXN_BYTES] {
        let mut bytes = [0u8; ABORTED_TXN_BYTES];
        bytes[..2].copy_from_slice(&ABORTED_TXN_VERSION.to_be_bytes());
        bytes[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        bytes[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        bytes[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        bytes[26..].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        bytes
    }

    /// None for a version other than 0 (Kafka refuses those too).
    pub fn decode(bytes: &[u8; ABORTED_TXN_BYTES]) -> Option<AbortedTxn> {
        let i64_at =
            |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
        if i16::from_be_bytes([bytes[0], bytes[1]]) != ABORTED_TXN_VERSION {
            return None;
        }
        Some(AbortedTxn {
            producer_id: i64_at(2),
            first_offset: i64_at(10),
            last_offset: i64_at(18),
            last_stable_offset: i64_at(26),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn index_entries_round_trip(relative_offset: u32, position: u32, timestamp: i64) {
            let offset = OffsetEntry { relative_offset, position };
            proptest::prop_assert_eq!(OffsetEntry::decode(&offset.encode()), offset);
            let time = TimeEntry { timestamp, relative_offset };
            proptest::prop_assert_eq!(TimeEntry::decode(&time.encode()), time);
        }
    }

    /// The layout Kafka reads: offset then position; timestamp then offset.
    #[test]
    fn entries_are_big_endian_in_kafkas_order() {
        let offset = OffsetEntry {
            relative_offset: 0x0102_0304,
            position: 0x0506_0708,
        };
        assert_eq!(offset.encode(), [1, 2, 3, 4, 5, 6, 7, 8]);
        let time = TimeEntry {
            timestamp: 0x0102_0304_0506_0708,
            relative_offset: 0x090a_0b0c,
        };
        assert_eq!(time.encode(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(segment_name(42, INDEX_SUFFIX), "00000000000000000042.index");
        let aborted = AbortedTxn {
            producer_id: 0x0102_0304_0506_0708,
            first_offset: 0x1112_1314_1516_1718,
            last_offset: 0x2122_2324_2526_2728,
            last_stable_offset: 0x3132_3334_3536_3738,
        };
        let hex: String = aborted
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "0000\
             0102030405060708\
             1112131415161718\
             2122232425262728\
             3132333435363738"
        );
        assert_eq!(AbortedTxn::decode(&aborted.encode()), Some(aborted));
        let mut newer = aborted.encode();
        newer[1] = 1;
        assert_eq!(AbortedTxn::decode(&newer), None);
        assert_eq!(
            segment_name(42, TXN_INDEX_SUFFIX),
            "00000000000000000042.txnindex"
        );
    }
}
