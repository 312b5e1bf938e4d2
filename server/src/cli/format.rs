//! How `sluice consume` prints a record: the `--format` string (placeholders
//! in the manner of kcat's `-f`, except that `%t` is the timestamp, kcat's
//! `%T`, and there is no topic placeholder) and the `--json` line.
//!
//! Keys, values and headers are written as the raw bytes the broker holds,
//! never through a lossy string conversion, so `%s\n` reproduces the lines
//! `sluice produce` read byte for byte. A null key or value prints nothing,
//! or `NULL` with `consume -Z` (as kcat's `-Z`); `%K` and `%S` say -1.
//! In JSON, bytes that are valid UTF-8 become a string and other bytes an
//! object `{"base64": "..."}`, so nothing is lost there either.

use serde_json::{json, Value};
use sluice_client::{ConsumerRecord, Header, TimestampType};

/// The format `consume` uses when none is given: the value, one per line.
pub const FORMAT_DEFAULT: &str = "%s\\n";

/// What a null key or value prints as with `consume -Z` (kcat's default
/// null string); without it a null prints nothing.
pub const NULL_TEXT: &[u8] = b"NULL";

/// One piece of a parsed format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(Vec<u8>),
    /// `%k`
    Key,
    /// `%s`
    Value,
    /// `%K`: key length in bytes (-1 for null).
    KeyLength,
    /// `%S`: value length in bytes (-1 for null).
    ValueLength,
    /// `%o`
    Offset,
    /// `%p`
    Partition,
    /// `%t`: milliseconds since the Unix epoch.
    Timestamp,
    /// `%h`: `key=value` pairs joined by commas (a null value prints the key alone).
    Headers,
}

/// A parsed `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFormat {
    pieces: Vec<Piece>,
}

/// The placeholders, for error messages and `--help`.
pub const PLACEHOLDERS: &str = "%k key, %s value, %K key length, %S value length, %o offset, \
     %p partition, %t timestamp (ms), %h headers, %% a percent sign; \
     escapes \\n \\t \\r \\\\ \\0";

impl RecordFormat {
    pub fn parse(text: &str) -> Result<RecordFormat, String> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('k') => Piece::Key,
                    Some('s') => Piece::Value,
                    Some('K') => Piece::KeyLength,
                    Some('S') => Piece::ValueLength,
                    Some('o') => Piece::Offset,
                    Some('p') => Piece::Partition,
                    Some('t') => Piece::Timestamp,
                    Some('h') => Piece::Headers,
                    Some('%') => {
                        literal.push(b'%');
                        continue;
                    }
                    Some(other) => {
                        return Err(format!(
                            "unknown placeholder %{other} in the format (known: {PLACEHOLDERS})"
                        ))
                    }
                    None => return Err("the format ends in a lone %".into()),
                },
                '\\' => {
                    let byte = match chars.next() {
                        Some('n') => b'\n',
                        Some('t') => b'\t',
                        Some('r') => b'\r',
                        Some('0') => 0,
                        Some('\\') => b'\\',
                        Some(other) => {
                            return Err(format!(
                            "unknown escape \\{other} in the format (known: \\n \\t \\r \\\\ \\0)"
                        ))
                        }
                        None => return Err("the format ends in a lone backslash".into()),
                    };
                    literal.push(byte);
                    continue;
                }
                other => {
                    let mut buffer = [0u8; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
                    continue;
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        if pieces.is_empty() {
            return Err("the format is empty".into());
        }
        Ok(RecordFormat { pieces })
    }

    /// Appends the record, formatted, to `out`; a null key or value is
    /// written as `null`.
    pub fn render(&self, record: &ConsumerRecord, null: &[u8], out: &mut Vec<u8>) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => out.extend_from_slice(bytes),
                Piece::Key => out.extend_from_slice(record.key.as_deref().unwrap_or(null)),
                Piece::Value => out.extend_from_slice(record.value.as_deref().unwrap_or(null)),
                Piece::KeyLength => push_display(out, length(record.key.as_deref())),
                Piece::ValueLength => push_display(out, length(record.value.as_deref())),
                Piece::Offset => push_display(out, record.offset),
                Piece::Partition => push_display(out, record.partition),
                Piece::Timestamp => push_display(out, record.timestamp_ms),
                Piece::Headers => render_headers(&record.headers, out),
            }
        }
    }
}

fn length(bytes: Option<&[u8]>) -> i64 {
    bytes.map_or(-1, |b| b.len() as i64)
}

fn push_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    out.extend_from_slice(value.to_string().as_bytes());
}

fn render_headers(headers: &[Header], out: &mut Vec<u8>) {
    for (index, header) in headers.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&header.key);
        if let Some(value) = &header.value {
            out.push(b'=');
            out.extend_from_slice(value);
        }
    }
}

/// One record as a JSON object (one line of `consume --json`).
pub fn record_json(record: &ConsumerRecord) -> Value {
    let timestamp_type = match record.timestamp_type {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    };
    let headers: Vec<Value> = record
        .headers
        .iter()
        .map(|h| json!({"key": bytes_json(&h.key), "value": h.value.as_deref().map(bytes_json)}))
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "timestamp_type": timestamp_type,
        "key": record.key.as_deref().map(bytes_json),
        "value": record.value.as_deref().map(bytes_json),
        "headers": headers,
    })
}

/// UTF-8 bytes as a string; anything else as `{"base64": "..."}`.
pub fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64(bytes) }),
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for position in 0..4 {
            if position <= chunk.len() {
                let index = (word >> (18 - 6 * position)) & 0x3f;
                out.push(ALPHABET[index as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: 1_700_000_000_123,
            timestamp_type: TimestampType::CreateTime,
            key: Some(Bytes::from_static(b"k\xff1")),
            value: Some(Bytes::from_static(b"v\x00al\n")),
            headers: vec![
                Header::new("a", "1"),
                Header {
                    key: Bytes::from_static(b"n"),
                    value: None,
                },
                Header::new("b", ""),
            ],
        }
    }

    fn render(format: &str, record: &ConsumerRecord) -> Vec<u8> {
        let mut out = Vec::new();
        RecordFormat::parse(format)
            .unwrap()
            .render(record, b"", &mut out);
        out
    }

    #[test]
    fn the_default_prints_the_value_and_a_newline() {
        assert_eq!(render(FORMAT_DEFAULT, &record()), b"v\x00al\n\n");
    }

    #[test]
    fn placeholders_write_raw_bytes_and_numbers() {
        assert_eq!(render("%k:%s", &record()), b"k\xff1:v\x00al\n");
        assert_eq!(
            render("%p@%o %t [%h] %K %S 100%%\\t\\\\\\r\\0", &record()),
            b"3@42 1700000000123 [a=1,n,b=] 3 5 100%\t\\\r\0"
        );
        assert_eq!(render("é%p", &record()), "é3".as_bytes());
    }

    #[test]
    fn null_keys_and_values_print_nothing_and_have_length_minus_one() {
        let mut record = record();
        record.key = None;
        record.value = None;
        record.headers.clear();
        assert_eq!(render("[%k][%s][%h]%K,%S\\n", &record), b"[][][]-1,-1\n");
        let mut out = Vec::new();
        RecordFormat::parse("[%k][%s]")
            .unwrap()
            .render(&record, NULL_TEXT, &mut out);
        assert_eq!(out, b"[NULL][NULL]");
    }

    #[test]
    fn bad_formats_are_refused_with_a_reason() {
        for (format, reason) in [
            ("%x", "unknown placeholder %x"),
            // kcat's timestamp; here %t is the timestamp, and no topic is printed.
            ("%T", "unknown placeholder %T"),
            ("abc%", "lone %"),
            ("\\q", "unknown escape \\q"),
            ("x\\", "lone backslash"),
            ("", "empty"),
        ] {
            let error = RecordFormat::parse(format).unwrap_err();
            assert!(error.contains(reason), "{format:?}: {error}");
        }
    }

    #[test]
    fn literals_merge_between_placeholders() {
        let parsed = RecordFormat::parse("a\\nb%kc").unwrap();
        assert_eq!(
            parsed.pieces,
            vec![
                Piece::Literal(b"a\nb".to_vec()),
                Piece::Key,
                Piece::Literal(b"c".to_vec())
            ]
        );
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn json_keeps_text_as_strings_and_other_bytes_as_base64() {
        let line = record_json(&record()).to_string();
        assert_eq!(
            line,
            concat!(
                r#"{"headers":[{"key":"a","value":"1"},{"key":"n","value":null},{"key":"b","value":""}],"#,
                r#""key":{"base64":"a/8x"},"offset":42,"partition":3,"timestamp":1700000000123,"#,
                r#""timestamp_type":"CreateTime","topic":"orders","value":"v\u0000al\n"}"#
            )
        );
    }
}
