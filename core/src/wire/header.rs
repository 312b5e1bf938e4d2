//! The request header: what a frame from a client is, checked against the
//! versions served before its body is decoded.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use super::reply::ReplyHeader;
use super::versions::supported_versions;

/// A request frame whose header was read; `body` holds the rest.
#[derive(Debug)]
pub struct Request {
    pub header: ReplyHeader,
    pub client_id: String,
    pub body: Bytes,
}

/// What to do with a frame, as its header says.
#[derive(Debug)]
pub enum Parsed {
    /// A request of a served API at a served version.
    Request(Request),
    /// ApiVersions newer than served: Kafka answers error 35 as v0, so the
    /// client can retry with a version both sides speak.
    ApiVersionsTooNew { correlation_id: i32 },
}

/// Versions served but not advertised in ApiVersions: brokers' own
/// requests (WriteTxnMarkers, which a transaction coordinator sends to
/// partition leaders, and AddPartitionsToTxn v4, with which a leader asks
/// the coordinator to verify a transaction's partitions).
const SERVED_UNADVERTISED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::AddPartitionsToTxn, 4, 4),
];

/// Smallest frame that holds api key, version and correlation id.
const HEADER_FIXED_BYTES: usize = 8;

/// Reads a request header. An error means the connection is closed, as
/// Kafka's SocketServer does for unknown APIs and unsupported versions.
pub fn parse_request(frame: Bytes) -> Result<Parsed, String> {
    if frame.len() < HEADER_FIXED_BYTES {
        return Err(format!(
            "frame of {} bytes is shorter than a request header",
            frame.len()
        ));
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key =
        ApiKey::try_from(api_key_raw).map_err(|_| format!("unknown api key {api_key_raw}"))?;
    let unadvertised = SERVED_UNADVERTISED
        .iter()
        .filter(|(key, _, _)| *key == api_key)
        .map(|&(_, min, max)| (min, max));
    let ranges: Vec<(i16, i16)> = supported_versions(api_key)
        .into_iter()
        .chain(unadvertised)
        .collect();
    let Some(max) = ranges.iter().map(|&(_, max)| max).max() else {
        return Err(format!("api {api_key:?} is not served"));
    };
    if api_key == ApiKey::ApiVersions && version > max {
        return Ok(Parsed::ApiVersionsTooNew { correlation_id });
    }
    if !ranges
        .iter()
        .any(|&(min, max)| (min..=max).contains(&version))
    {
        return Err(format!("unsupported version {version} of {api_key:?}"));
    }
    let mut body = frame;
    let request_header = RequestHeader::decode(&mut body, api_key.request_header_version(version))
        .map_err(|e| format!("bad request header: {e}"))?;
    assert_eq!(request_header.correlation_id, correlation_id);
    Ok(Parsed::Request(Request {
        header: ReplyHeader {
            api_key,
            version,
            correlation_id,
        },
        client_id: request_header
            .client_id
            .as_ref()
            .map_or(String::new(), |c| c.to_string()),
        body,
    }))
}
