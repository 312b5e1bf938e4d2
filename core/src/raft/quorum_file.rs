//! Kafka's `quorum-state` file: the replica's durable election state
//! (`QuorumState`) as one line of JSON, so that a Sluice data directory
//! reads like a Kafka controller's.
//!
//! Written as Kafka writes `data_version` 1 (`FileQuorumStateStore`,
//! `QuorumStateData`, the kraft.version 1 form):
//! `{"leaderId":1,"leaderEpoch":2,"votedId":-1,"votedDirectoryId":"AAAAAAAAAAAAAAAAAAAAAA","data_version":1}`,
//! keys in Kafka's order, no newline, -1 for no leader or vote, the zero
//! directory id (Sluice has none). Read: `data_version` 0 (with
//! `clusterId`, `appliedOffset`, `currentVoters`, which the replica does
//! not use: its voters come from the configuration) and 1. Kafka's
//! mandatory keys must be there (`leaderId`, `leaderEpoch`, `votedId`, and
//! `votedDirectoryId` in version 1), other keys are ignored, and nothing
//! else is lenient: one JSON object of bounded size and nesting, integers
//! as JSON integers, no duplicate keys, nothing after the object but
//! whitespace. Bad input is an error, never a panic: the driver writes the
//! file through a temporary and a rename, so a bad file is damage to
//! report, not a torn write to repair.

use super::QuorumState;
use crate::types::NodeId;

/// The `data_version` written.
pub const DATA_VERSION: i64 = 1;
/// A larger file is refused unread (a version 0 file with a thousand
/// voters is about 16 KiB).
pub const FILE_BYTES_MAX: usize = 64 * 1024;
/// Objects and arrays nest at most this deep (version 0 needs 3).
pub const JSON_DEPTH_MAX: usize = 8;
/// Kafka's `ReplicaKey.NO_DIRECTORY_ID`, the zero uuid, as JSON holds it.
const NO_DIRECTORY_ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";
/// Kafka's sentinel for no leader (`UNKNOWN_LEADER_ID`) and no vote
/// (`NOT_VOTED`).
const NONE_ID: i64 = -1;

/// Why a quorum-state file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumFileError {
    /// Larger than `FILE_BYTES_MAX`.
    TooLarge {
        bytes: usize,
    },
    /// Not JSON (or nested deeper than `JSON_DEPTH_MAX`), at this byte.
    Syntax {
        offset: usize,
        why: &'static str,
    },
    /// JSON, but not an object.
    NotAnObject,
    DuplicateKey(String),
    Missing(&'static str),
    /// A key whose value has the wrong type or lies out of range.
    BadValue(&'static str),
    UnsupportedVersion(i64),
}

impl std::fmt::Display for QuorumFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuorumFileError::TooLarge { bytes } => {
                write!(
                    f,
                    "quorum-state file of {bytes} bytes, over {FILE_BYTES_MAX}"
                )
            }
            QuorumFileError::Syntax { offset, why } => {
                write!(f, "quorum-state file is not JSON at byte {offset}: {why}")
            }
            QuorumFileError::NotAnObject => f.write_str("quorum-state file is not a JSON object"),
            QuorumFileError::DuplicateKey(key) => write!(f, "quorum-state key {key:?} twice"),
            QuorumFileError::Missing(key) => write!(f, "quorum-state key {key:?} missing"),
            QuorumFileError::BadValue(key) => write!(f, "quorum-state key {key:?} has a bad value"),
            QuorumFileError::UnsupportedVersion(version) => {
                write!(f, "quorum-state data_version {version} (0 and 1 are read)")
            }
        }
    }
}

impl std::error::Error for QuorumFileError {}

/// The file's bytes for `state`, in the `data_version` 1 form.
pub fn encode(state: &QuorumState) -> Vec<u8> {
    let id = |node: Option<NodeId>| node.map_or(NONE_ID, |node| i64::from(node.0));
    format!(
        "{{\"leaderId\":{},\"leaderEpoch\":{},\"votedId\":{},\"votedDirectoryId\":\"{}\",\"data_version\":{}}}",
        id(state.leader_id),
        state.leader_epoch,
        id(state.voted_id),
        NO_DIRECTORY_ID,
        DATA_VERSION,
    )
    .into_bytes()
}

/// The quorum state a file of `data_version` 0 or 1 holds.
pub fn decode(bytes: &[u8]) -> Result<QuorumState, QuorumFileError> {
    if bytes.len() > FILE_BYTES_MAX {
        return Err(QuorumFileError::TooLarge { bytes: bytes.len() });
    }
    let Json::Object(fields) = parse(bytes)? else {
        return Err(QuorumFileError::NotAnObject);
    };
    let version = integer(&fields, "data_version")?;
    if !(0..=DATA_VERSION).contains(&version) {
        return Err(QuorumFileError::UnsupportedVersion(version));
    }
    let leader_epoch = integer(&fields, "leaderEpoch")?;
    let leader_epoch = i32::try_from(leader_epoch)
        .ok()
        .filter(|epoch| *epoch >= 0)
        .ok_or(QuorumFileError::BadValue("leaderEpoch"))?;
    let leader_id = optional_id(&fields, "leaderId")?;
    let voted_id = optional_id(&fields, "votedId")?;
    if version >= 1 {
        // Kafka requires it; Sluice has no directory ids, so any valid one
        // is read as none.
        match field(&fields, "votedDirectoryId")? {
            Json::String(uuid) if is_uuid(uuid) => {}
            _ => return Err(QuorumFileError::BadValue("votedDirectoryId")),
        }
    }
    Ok(QuorumState {
        leader_epoch,
        leader_id,
        voted_id,
    })
}

fn field<'a>(fields: &'a [(String, Json)], key: &'static str) -> Result<&'a Json, QuorumFileError> {
    fields
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value)
        .ok_or(QuorumFileError::Missing(key))
}

fn integer(fields: &[(String, Json)], key: &'static str) -> Result<i64, QuorumFileError> {
    match field(fields, key)? {
        Json::Integer(value) => Ok(*value),
        _ => Err(QuorumFileError::BadValue(key)),
    }
}

/// A node id, or -1 for none; other negative ids are refused.
fn optional_id(
    fields: &[(String, Json)],
    key: &'static str,
) -> Result<Option<NodeId>, QuorumFileError> {
    match integer(fields, key)? {
        NONE_ID => Ok(None),
        id => i32::try_from(id)
            .ok()
            .filter(|id| *id >= 0)
            .map(|id| Some(NodeId(id)))
            .ok_or(QuorumFileError::BadValue(key)),
    }
}

/// A Kafka `Uuid` as text: 16 bytes in URL-safe base64, 22 characters
/// unpadded (as Kafka writes it) or 24 with `==`.
fn is_uuid(text: &str) -> bool {
    let unpadded = text.strip_suffix("==").unwrap_or(text);
    unpadded.len() == 22
        && unpadded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A JSON value, as far as these files need one: numbers other than
/// integers are kept apart so that a key holding one is refused.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Integer(i64),
    /// A fraction, an exponent, or an integer beyond i64.
    OtherNumber,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

fn parse(bytes: &[u8]) -> Result<Json, QuorumFileError> {
    let text = std::str::from_utf8(bytes).map_err(|e| QuorumFileError::Syntax {
        offset: e.valid_up_to(),
        why: "not UTF-8",
    })?;
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.at != parser.text.len() {
        return Err(parser.error("characters after the value"));
    }
    Ok(value)
}

/// A recursive-descent reader over valid UTF-8; every step consumes input
/// or fails, and nesting is bounded by `JSON_DEPTH_MAX`.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, why: &'static str) -> QuorumFileError {
        QuorumFileError::Syntax {
            offset: self.at,
            why,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, why: &'static str) -> Result<(), QuorumFileError> {
        if self.peek() != Some(byte) {
            return Err(self.error(why));
        }
        self.at += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Json, QuorumFileError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => Err(self.error("not the start of a value")),
            None => Err(self.error("end of input where a value belongs")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Json) -> Result<Json, QuorumFileError> {
        if !self.text[self.at..].starts_with(word.as_bytes()) {
            return Err(self.error("unknown literal"));
        }
        self.at += word.len();
        Ok(value)
    }

    fn object(&mut self, depth: usize) -> Result<Json, QuorumFileError> {
        if depth > JSON_DEPTH_MAX {
            return Err(self.error("nested too deep"));
        }
        self.expect(b'{', "expected '{'")?;
        let mut fields: Vec<(String, Json)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(fields));
        }
        loop {
            self.skip_whitespace();
            let key_at = self.at;
            let key = self.string()?;
            if fields.iter().any(|(name, _)| *name == key) {
                self.at = key_at;
                return Err(QuorumFileError::DuplicateKey(key));
            }
            self.skip_whitespace();
            self.expect(b':', "expected ':'")?;
            self.skip_whitespace();
            let value = self.value(depth)?;
            fields.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(fields));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, QuorumFileError> {
        if depth > JSON_DEPTH_MAX {
            return Err(self.error("nested too deep"));
        }
        self.expect(b'[', "expected '['")?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Json, QuorumFileError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(self.error("expected a digit")),
        }
        let integral_end = self.at;
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.expect_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.expect_digits()?;
        }
        if self.at != integral_end {
            return Ok(Json::OtherNumber);
        }
        // ASCII digits with an optional sign: valid UTF-8 and i64 syntax.
        let digits = std::str::from_utf8(&self.text[start..integral_end]).unwrap_or_default();
        Ok(digits.parse().map_or(Json::OtherNumber, Json::Integer))
    }

    fn skip_digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn expect_digits(&mut self) -> Result<(), QuorumFileError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("expected a digit"));
        }
        self.skip_digits();
        Ok(())
    }

    fn string(&mut self) -> Result<String, QuorumFileError> {
        self.expect(b'"', "expected '\"'")?;
        let mut out = String::new();
        loop {
            let start = self.at;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.at += 1;
            }
            // The input is valid UTF-8 and the run stops at ASCII bytes only.
            out.push_str(std::str::from_utf8(&self.text[start..self.at]).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    out.push(self.escape()?);
                }
                Some(_) => return Err(self.error("control character in a string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, QuorumFileError> {
        let Some(byte) = self.peek() else {
            return Err(self.error("unterminated escape"));
        };
        self.at += 1;
        let unit = match byte {
            b'"' => return Ok('"'),
            b'\\' => return Ok('\\'),
            b'/' => return Ok('/'),
            b'b' => return Ok('\u{8}'),
            b'f' => return Ok('\u{c}'),
            b'n' => return Ok('\n'),
            b'r' => return Ok('\r'),
            b't' => return Ok('\t'),
            b'u' => self.hex4()?,
            _ => return Err(self.error("unknown escape")),
        };
        let code = match unit {
            0xD800..=0xDBFF => {
                // A high surrogate must be followed by an escaped low one.
                if !self.text[self.at..].starts_with(b"\\u") {
                    return Err(self.error("lone surrogate"));
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.error("lone surrogate"));
                }
                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone surrogate")),
            _ => unit,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid code point"))
    }

    fn hex4(&mut self) -> Result<u32, QuorumFileError> {
        let Some(digits) = self.text.get(self.at..self.at + 4) else {
            return Err(self.error("short \\u escape"));
        };
        let mut value = 0u32;
        for digit in digits {
            let nibble = (*digit as char)
                .to_digit(16)
                .ok_or_else(|| self.error("bad hex digit"))?;
            value = value * 16 + nibble;
        }
        self.at += 4;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(leader_epoch: i32, leader_id: Option<i32>, voted_id: Option<i32>) -> QuorumState {
        QuorumState {
            leader_epoch,
            leader_id: leader_id.map(NodeId),
            voted_id: voted_id.map(NodeId),
        }
    }

    #[test]
    fn writes_kafkas_version_1_form() {
        let written = encode(&state(2, Some(1), None));
        assert_eq!(
            std::str::from_utf8(&written).unwrap(),
            r#"{"leaderId":1,"leaderEpoch":2,"votedId":-1,"votedDirectoryId":"AAAAAAAAAAAAAAAAAAAAAA","data_version":1}"#
        );
    }

    #[test]
    fn round_trips() {
        for quorum in [
            QuorumState::default(),
            state(7, None, Some(3)),
            state(9, Some(2), None),
            state(9, Some(2), Some(2)),
            state(i32::MAX, Some(i32::MAX), Some(0)),
        ] {
            assert_eq!(decode(&encode(&quorum)), Ok(quorum));
        }
    }

    /// Files as Kafka writes them: version 0 (kraft.version 0, with the
    /// fields Kafka fills by default) and 1, and the test file of Kafka's
    /// `FileQuorumStateStoreTest` with its space, turned to version 0.
    #[test]
    fn reads_kafkas_files() {
        let version_0 = br#"{"clusterId":"","leaderId":1,"leaderEpoch":2,"votedId":-1,"appliedOffset":0,"currentVoters":[{"voterId":1},{"voterId":2}],"data_version":0}"#;
        assert_eq!(decode(version_0), Ok(state(2, Some(1), None)));
        let version_1 = br#"{"leaderId":-1,"leaderEpoch":5,"votedId":3,"votedDirectoryId":"AAAAAAAAAAAAAAAAAAAAAA","data_version":1}"#;
        assert_eq!(decode(version_1), Ok(state(5, None, Some(3))));
        let spaced =
            b"{\"leaderId\":9990,\"leaderEpoch\":3012,\"votedId\":-1,\"appliedOffset\": 0,\
            \"currentVoters\":[{\"voterId\":9990},{\"voterId\":9991},{\"voterId\":9992}],\
            \"clusterId\":\"abc\",\"data_version\":0}\n";
        assert_eq!(decode(spaced), Ok(state(3012, Some(9990), None)));
        // The same file at version 2, which Kafka refuses too.
        let version_2 = br#"{"leaderId":1,"leaderEpoch":2,"votedId":-1,"data_version":2}"#;
        assert_eq!(
            decode(version_2),
            Err(QuorumFileError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn ignores_unknown_keys_of_any_kind() {
        let file = br#"{"future":{"a":[1.5e3,true,null,"\u00e9\ud83d\ude00"]},"leaderId":4,"leaderEpoch":1,"votedId":4,"votedDirectoryId":"AAAAAAAAAAAAAAAAAAAAAQ","data_version":1,"x":-0.0}"#;
        assert_eq!(decode(file), Ok(state(1, Some(4), Some(4))));
    }

    #[test]
    fn refuses_what_kafka_would_not_write() {
        let cases: &[(&[u8], QuorumFileError)] = &[
            (b"", QuorumFileError::Syntax { offset: 0, why: "end of input where a value belongs" }),
            (b"[]", QuorumFileError::NotAnObject),
            (br#"{"leaderId":1,"leaderEpoch":2,"votedId":-1}"#, QuorumFileError::Missing("data_version")),
            (br#"{"leaderId":1,"votedId":-1,"data_version":0}"#, QuorumFileError::Missing("leaderEpoch")),
            (br#"{"leaderId":1,"leaderEpoch":2,"votedId":-1,"data_version":1}"#, QuorumFileError::Missing("votedDirectoryId")),
            (br#"{"leaderId":1,"leaderEpoch":2,"votedId":-1,"votedDirectoryId":"short","data_version":1}"#, QuorumFileError::BadValue("votedDirectoryId")),
            (br#"{"leaderId":"1","leaderEpoch":2,"votedId":-1,"data_version":0}"#, QuorumFileError::BadValue("leaderId")),
            (br#"{"leaderId":1.0,"leaderEpoch":2,"votedId":-1,"data_version":0}"#, QuorumFileError::BadValue("leaderId")),
            (br#"{"leaderId":-2,"leaderEpoch":2,"votedId":-1,"data_version":0}"#, QuorumFileError::BadValue("leaderId")),
            (br#"{"leaderId":1,"leaderEpoch":-1,"votedId":-1,"data_version":0}"#, QuorumFileError::BadValue("leaderEpoch")),
            (br#"{"leaderId":1,"leaderEpoch":2147483648,"votedId":-1,"data_version":0}"#, QuorumFileError::BadValue("leaderEpoch")),
            (br#"{"leaderId":1,"leaderEpoch":99999999999999999999,"votedId":-1,"data_version":0}"#, QuorumFileError::BadValue("leaderEpoch")),
            (br#"{"leaderId":1,"leaderId":2,"leaderEpoch":2,"votedId":-1,"data_version":0}"#, QuorumFileError::DuplicateKey("leaderId".into())),
            (br#"{"data_version":"1","leaderId":1,"leaderEpoch":2,"votedId":-1}"#, QuorumFileError::BadValue("data_version")),
        ];
        for (file, expected) in cases {
            assert_eq!(
                &decode(file),
                &Err(expected.clone()),
                "{}",
                String::from_utf8_lossy(file)
            );
        }
        for file in [
            &br#"{"leaderId":01,"leaderEpoch":2,"votedId":-1,"data_version":0}"#[..],
            br#"{"leaderId":1,"leaderEpoch":2,"votedId":-1,"data_version":0} x"#,
            br#"{"leaderId":1,"leaderEpoch":2,"votedId":-1,"data_version":0,}"#,
            br#"{"leaderId":1 "leaderEpoch":2}"#,
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":tru}",
            b"{\"a\":-}",
            b"{\"a\":1.}",
        ] {
            assert!(
                matches!(decode(file), Err(QuorumFileError::Syntax { .. })),
                "{}",
                String::from_utf8_lossy(file)
            );
        }
    }

    #[test]
    fn bounds_size_and_nesting() {
        let deep = format!(
            "{}{}",
            "[".repeat(JSON_DEPTH_MAX + 1),
            "]".repeat(JSON_DEPTH_MAX + 1)
        );
        let file = format!(r#"{{"a":{deep}}}"#);
        assert!(matches!(
            decode(file.as_bytes()),
            Err(QuorumFileError::Syntax {
                why: "nested too deep",
                ..
            })
        ));
        let large = vec![b' '; FILE_BYTES_MAX + 1];
        assert_eq!(
            decode(&large),
            Err(QuorumFileError::TooLarge {
                bytes: FILE_BYTES_MAX + 1
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode(&bytes);
        }

        /// Text made of JSON's own characters reaches deeper than bytes do.
        #[test]
        fn json_like_text_never_panics(text in r#"[{}\[\]":,0-9.eE+\-a-z\\ ]{0,120}"#) {
            let _ = decode(text.as_bytes());
        }

        #[test]
        fn any_state_round_trips(
            leader_epoch in 0..=i32::MAX,
            leader_id in proptest::option::of(0..=i32::MAX),
            voted_id in proptest::option::of(0..=i32::MAX),
        ) {
            let quorum = state(leader_epoch, leader_id, voted_id);
            proptest::prop_assert_eq!(decode(&encode(&quorum)), Ok(quorum));
        }
    }
}
