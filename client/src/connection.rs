//! One connection to one broker: framing, correlation ids, pipelining,
//! per-request timeouts and API version negotiation.
//!
//! A connection runs two tasks over the split stream. The writer takes
//! frames from a bounded channel and, before writing each one, records what
//! answer it expects in the `waiting` queue; the reader takes frames off the
//! socket and hands each to the oldest waiting entry. Kafka answers in
//! request order, so a response whose correlation id is not the oldest
//! outstanding one is a protocol violation: the connection is closed and
//! every waiting request fails, loudly.
//!
//! At most [`IN_FLIGHT_REQUESTS_MAX`] requests are outstanding; a caller
//! waits for a permit first. A request that times out closes the connection
//! (as Kafka's clients do), because whatever the broker is stuck on also
//! stalls every answer queued behind it. The owner (`Client`) notices the
//! closed connection and opens a new one with backoff.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::ResponseError;
use sluice_core::wire::versions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::config::ClientConfig;
use crate::connector::Connector;
use crate::error::{check_code, Error, Result};

/// Requests one connection may have outstanding (sent, not yet answered).
pub const IN_FLIGHT_REQUESTS_MAX: usize = 5;

/// Largest response frame accepted; a longer length prefix closes the
/// connection. Fetch answers are bounded by `fetch_max_bytes` (50 MiB by
/// default) plus the first batch, so this leaves ample room.
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// ApiVersions attempts: one at our newest version, one at the broker's.
const NEGOTIATION_ATTEMPTS_MAX: usize = 2;

/// Sent in ApiVersions v3+; brokers show it in their metrics.
const CLIENT_SOFTWARE_NAME: &str = "sluice-client";

/// Fired when a request has its place in a connection's order.
pub type Queued = oneshot::Sender<()>;

/// The APIs this client sends. Their versions are not listed here: the
/// client speaks the core's table (`sluice_core::wire::versions::SUPPORTED`),
/// so a client built from this tree speaks every version its broker serves,
/// including the switch from topic names to topic ids in Produce v13 and
/// Fetch v13. Where the client speaks less, [`client_versions`] says so.
pub const CLIENT_APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::DescribeConfigs,
    ApiKey::CreatePartitions,
    ApiKey::DescribeCluster,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::DeleteGroups,
    ApiKey::DescribeQuorum,
    ApiKey::InitProducerId,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::DescribeTransactions,
    ApiKey::ListTransactions,
];

/// The newest AddPartitionsToTxn a client sends: v4 and later batch
/// several transactional ids and are for brokers only.
const ADD_PARTITIONS_TO_TXN_CLIENT_MAX: i16 = 3;

/// The `(min, max)` versions of `api` this client speaks: the core's range,
/// narrowed per API where the client cannot use all of it. None for an API
/// the client does not send.
pub fn client_versions(api: ApiKey) -> Option<(i16, i16)> {
    if !CLIENT_APIS.contains(&api) {
        return None;
    }
    let (min, max) = versions::supported_versions(api)?;
    match api {
        // The client asks for all topics with a null topic list, which
        // Metadata v0 cannot carry (its list is not nullable there).
        ApiKey::Metadata => Some((min.max(1), max)),
        ApiKey::AddPartitionsToTxn => Some((min, max.min(ADD_PARTITIONS_TO_TXN_CLIENT_MAX))),
        _ => Some((min, max)),
    }
}

/// The version to use per API, from the broker's ApiVersions answer.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    broker: BTreeMap<i16, (i16, i16)>,
    caps: BTreeMap<i16, i16>,
    /// The cluster's finalized features (name, level) the broker named,
    /// and their epoch (-1: none named; ApiVersions v3 on).
    finalized: Vec<(String, i16)>,
    finalized_epoch: i64,
}

impl Versions {
    pub fn new(response: &ApiVersionsResponse, caps: &[(ApiKey, i16)]) -> Versions {
        Versions {
            broker: response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect(),
            caps: caps.iter().map(|&(api, max)| (api as i16, max)).collect(),
            finalized: response
                .finalized_features
                .iter()
                .map(|f| (f.name.to_string(), f.max_version_level))
                .collect(),
            finalized_epoch: response.finalized_features_epoch,
        }
    }

    /// The finalized features the broker named (name, level), and their
    /// epoch (-1 when it named none).
    pub fn finalized_features(&self) -> (&[(String, i16)], i64) {
        (&self.finalized, self.finalized_epoch)
    }

    /// Every API the broker listed in its ApiVersions answer, by key, with
    /// its `(min, max)` versions.
    pub fn broker_ranges(&self) -> &BTreeMap<i16, (i16, i16)> {
        &self.broker
    }

    /// `min(client max, broker max)` (and the cap, if any), provided the
    /// ranges overlap.
    pub fn pick(&self, api: ApiKey, address: &str) -> Result<i16> {
        let (client_min, client_max) =
            client_versions(api).expect("the client uses only APIs it lists");
        let Some(&(broker_min, broker_max)) = self.broker.get(&(api as i16)) else {
            return Err(Error::ApiNotServed {
                address: address.to_string(),
                api,
            });
        };
        let cap = self.caps.get(&(api as i16)).copied().unwrap_or(i16::MAX);
        let version = client_max.min(broker_max).min(cap);
        if version < client_min.max(broker_min) {
            return Err(Error::UnsupportedVersion {
                api,
                client_min,
                client_max: client_max.min(cap),
                broker_min,
                broker_max,
            });
        }
        Ok(version)
    }
}

/// What the reader does with the answer to one request.
struct Pending {
    correlation_id: i32,
    api: ApiKey,
    response_header_version: i16,
    reply: oneshot::Sender<Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
}

enum Reply {
    /// The broker will answer; the reader completes `Pending`.
    Response(Pending),
    /// No answer comes (acks=0 produce): completed once written.
    Written(oneshot::Sender<Result<Bytes>>, OwnedSemaphorePermit),
}

struct Outgoing {
    frame: Bytes,
    reply: Reply,
}

struct State {
    /// Why the connection closed, once it has.
    closed: Option<String>,
    /// Requests written (or being written) and not yet answered, oldest first.
    waiting: VecDeque<Pending>,
    tasks: Vec<AbortHandle>,
}

struct Shared {
    address: String,
    state: Mutex<State>,
}

impl Shared {
    fn disconnected(&self, reason: &str) -> Error {
        Error::Disconnected {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    /// Closes once: stops both tasks and fails every waiting request.
    fn close(&self, reason: &str) {
        let (waiting, tasks) = {
            let mut state = self.state.lock().expect("connection state lock");
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.to_string());
            (
                std::mem::take(&mut state.waiting),
                std::mem::take(&mut state.tasks),
            )
        };
        tracing::debug!(address = %self.address, reason, "connection closed");
        for pending in waiting {
            let _ = pending.reply.send(Err(self.disconnected(reason)));
        }
        for task in tasks {
            task.abort();
        }
    }

    fn closed_reason(&self) -> Option<String> {
        self.state
            .lock()
            .expect("connection state lock")
            .closed
            .clone()
    }

    /// Queues the expectation of an answer, unless the connection closed.
    fn expect(&self, pending: Pending) -> bool {
        let mut state = self.state.lock().expect("connection state lock");
        match &state.closed {
            Some(reason) => {
                let error = self.disconnected(reason);
                drop(state);
                let _ = pending.reply.send(Err(error));
                false
            }
            None => {
                state.waiting.push_back(pending);
                true
            }
        }
    }
}

/// An open, negotiated connection to one broker.
pub struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    permits: Arc<Semaphore>,
    correlation_id_next: AtomicI32,
    client_id: StrBytes,
    versions: Versions,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close("connection dropped by the client");
    }
}

impl Connection {
    /// Connects, starts the reader and writer, and negotiates versions. The
    /// caller bounds the whole thing with its connect timeout.
    pub async fn open<C: Connector>(
        connector: &C,
        address: &str,
        config: &ClientConfig,
    ) -> Result<Connection> {
        let stream = connector
            .connect(address)
            .await
            .map_err(|source| Error::Connect {
                address: address.to_string(),
                source: Arc::new(source),
            })?;
        let mut connection = Connection::start(stream, address, &config.client_id);
        let versions = connection
            .negotiate(&config.api_version_caps, config.request_timeout_ms)
            .await?;
        tracing::debug!(address, "connected and negotiated versions");
        connection.versions = versions;
        Ok(connection)
    }

    fn start<S>(stream: S, address: &str, client_id: &str) -> Connection
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            address: address.to_string(),
            state: Mutex::new(State {
                closed: None,
                waiting: VecDeque::new(),
                tasks: Vec::new(),
            }),
        });
        let (outgoing, inbox) = mpsc::channel(IN_FLIGHT_REQUESTS_MAX);
        let tasks = vec![
            tokio::spawn(read_loop(reader, shared.clone())).abort_handle(),
            tokio::spawn(write_loop(writer, inbox, shared.clone())).abort_handle(),
        ];
        {
            let mut state = shared.state.lock().expect("connection state lock");
            if state.closed.is_some() {
                tasks.iter().for_each(AbortHandle::abort);
            } else {
                state.tasks = tasks;
            }
        }
        Connection {
            shared,
            outgoing,
            permits: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
            correlation_id_next: AtomicI32::new(0),
            client_id: StrBytes::from_string(client_id.to_string()),
            versions: Versions::default(),
        }
    }

    pub fn address(&self) -> &str {
        &self.shared.address
    }

    pub fn is_open(&self) -> bool {
        self.shared.closed_reason().is_none()
    }

    pub fn close(&self, reason: &str) {
        self.shared.close(reason);
    }

    /// What the broker answered to this connection's ApiVersions.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The version to use for `api` on this connection.
    pub fn version(&self, api: ApiKey) -> Result<i16> {
        self.versions.pick(api, self.address())
    }

    /// Sends a request and waits up to `timeout_ms` for its answer.
    pub async fn send<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout_ms: u64,
    ) -> Result<R::Response> {
        self.send_in_order(request, version, timeout_ms, None).await
    }

    /// As `send`; `queued` fires (or is dropped, on failure) once the
    /// request has its place in the connection's order. A caller that
    /// starts the next request only after that keeps its requests in order
    /// on the wire while they are pipelined.
    pub async fn send_in_order<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout_ms: u64,
        queued: Option<Queued>,
    ) -> Result<R::Response> {
        let api = api_of::<R>();
        let work = async {
            let body = self.round_trip(api, version, request, true, queued).await?;
            self.decode::<R::Response>(api, body, version)
        };
        self.bounded(api, timeout_ms, work).await
    }

    /// Sends a request that gets no answer (acks=0 produce); done once
    /// written. `queued` as in `send_in_order`.
    pub async fn send_without_response<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout_ms: u64,
        queued: Option<Queued>,
    ) -> Result<()> {
        let api = api_of::<R>();
        let work = async {
            self.round_trip(api, version, request, false, queued)
                .await
                .map(drop)
        };
        self.bounded(api, timeout_ms, work).await
    }

    async fn bounded<T>(
        &self,
        api: ApiKey,
        timeout_ms: u64,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
            Ok(result) => result,
            Err(_) => {
                self.close(&format!("{api:?} request timed out"));
                Err(Error::Timeout {
                    what: format!("{api:?} request to {}", self.address()),
                    after_ms: timeout_ms,
                })
            }
        }
    }

    fn decode<T: Decodable>(&self, api: ApiKey, mut body: Bytes, version: i16) -> Result<T> {
        let decoded = T::decode(&mut body, version).map_err(|error| Error::Protocol {
            address: self.address().to_string(),
            detail: format!("{api:?} v{version} response does not decode: {error}"),
        })?;
        if !body.is_empty() {
            return Err(Error::Protocol {
                address: self.address().to_string(),
                detail: format!(
                    "{api:?} v{version} response has {} bytes after its body",
                    body.len()
                ),
            });
        }
        Ok(decoded)
    }

    /// Frames and queues one request, then waits for the answer (or, without
    /// a response, for the write).
    async fn round_trip<E: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &E,
        expect_response: bool,
        queued: Option<Queued>,
    ) -> Result<Bytes> {
        let correlation_id = self.correlation_id_next.fetch_add(1, Ordering::Relaxed);
        let frame = self.frame(api, version, correlation_id, body)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the permit semaphore is never closed");
        let (reply, answer) = oneshot::channel();
        let reply = if expect_response {
            Reply::Response(Pending {
                correlation_id,
                api,
                response_header_version: api.response_header_version(version),
                reply,
                _permit: permit,
            })
        } else {
            Reply::Written(reply, permit)
        };
        let closed = || {
            let reason = self.shared.closed_reason().unwrap_or_default();
            self.shared.disconnected(&reason)
        };
        if self.outgoing.send(Outgoing { frame, reply }).await.is_err() {
            return Err(closed());
        }
        if let Some(queued) = queued {
            let _ = queued.send(());
        }
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    fn frame<E: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &E,
    ) -> Result<Bytes> {
        let encode_error = |error: String| Error::Encode {
            api,
            version,
            detail: error,
        };
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, api.request_header_version(version))
            .map_err(|e| encode_error(e.to_string()))?;
        body.encode(&mut frame, version)
            .map_err(|e| encode_error(e.to_string()))?;
        let length =
            i32::try_from(frame.len() - 4).map_err(|_| encode_error("frame too large".into()))?;
        frame[0..4].copy_from_slice(&length.to_be_bytes());
        Ok(frame.freeze())
    }

    /// ApiVersions at our newest version; a broker that does not speak it
    /// answers UNSUPPORTED_VERSION encoded as v0 with its own range, and the
    /// second attempt uses that.
    async fn negotiate(&self, caps: &[(ApiKey, i16)], timeout_ms: u64) -> Result<Versions> {
        let api = ApiKey::ApiVersions;
        let cap = caps
            .iter()
            .find(|(key, _)| *key == api)
            .map_or(i16::MAX, |c| c.1);
        let mut version = client_versions(api).expect("listed").1.min(cap);
        for _ in 0..NEGOTIATION_ATTEMPTS_MAX {
            let request = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str(CLIENT_SOFTWARE_NAME))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
            let work = self.round_trip(api, version, &request, true, None);
            let body = self.bounded(api, timeout_ms, work).await?;
            let unsupported = ResponseError::UnsupportedVersion.code();
            if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == unsupported {
                let fallback: ApiVersionsResponse = self.decode(api, body, 0)?;
                version = self.fallback_version(&fallback, version)?;
                continue;
            }
            let response: ApiVersionsResponse = self.decode(api, body, version)?;
            check_code(response.error_code, || {
                format!("ApiVersions to {}", self.address())
            })?;
            return Ok(Versions::new(&response, caps));
        }
        Err(Error::Protocol {
            address: self.address().to_string(),
            detail: "ApiVersions negotiation did not converge".into(),
        })
    }

    fn fallback_version(&self, response: &ApiVersionsResponse, tried: i16) -> Result<i16> {
        let api = ApiKey::ApiVersions;
        let broker_max = response
            .api_keys
            .iter()
            .find(|k| k.api_key == api as i16)
            .map(|k| k.max_version);
        match broker_max {
            Some(max) if max < tried && max >= 0 => Ok(max),
            _ => Err(Error::Protocol {
                address: self.address().to_string(),
                detail: format!("ApiVersions v{tried} refused without a lower version to use"),
            }),
        }
    }
}

fn api_of<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("every request type has a known key")
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut inbox: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) {
    while let Some(Outgoing { frame, reply }) = inbox.recv().await {
        let written = match reply {
            Reply::Response(pending) => {
                if !shared.expect(pending) {
                    continue;
                }
                None
            }
            Reply::Written(reply, permit) => Some((reply, permit)),
        };
        let result = async {
            writer.write_all(&frame).await?;
            writer.flush().await
        }
        .await;
        if let Err(error) = result {
            shared.close(&format!("write failed: {error}"));
            return;
        }
        if let Some((reply, _permit)) = written {
            let _ = reply.send(Ok(Bytes::new()));
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(frame) => frame,
            Err(error) => {
                shared.close(&format!("read failed: {error}"));
                return;
            }
        };
        if let Err(reason) = deliver(&shared, frame) {
            tracing::error!(address = %shared.address, %reason, "closing the connection");
            shared.close(&reason);
            return;
        }
    }
}

/// Hands a response frame to the oldest waiting request, checking that the
/// correlation id is the one that request carried.
fn deliver(shared: &Shared, mut frame: Bytes) -> std::result::Result<(), String> {
    let pending = shared
        .state
        .lock()
        .expect("connection state lock")
        .waiting
        .pop_front();
    let Some(pending) = pending else {
        return Err("a response arrived with no request outstanding".into());
    };
    let header = match ResponseHeader::decode(&mut frame, pending.response_header_version) {
        Ok(header) => header,
        Err(error) => {
            let reason = format!("{:?} response header does not decode: {error}", pending.api);
            let _ = pending.reply.send(Err(Error::Protocol {
                address: shared.address.clone(),
                detail: reason.clone(),
            }));
            return Err(reason);
        }
    };
    if header.correlation_id != pending.correlation_id {
        let reason = format!(
            "response correlation id {} does not match the oldest outstanding request ({:?}, id {})",
            header.correlation_id, pending.api, pending.correlation_id
        );
        let _ = pending.reply.send(Err(Error::Protocol {
            address: shared.address.clone(),
            detail: reason.clone(),
        }));
        return Err(reason);
    }
    let _ = pending.reply.send(Ok(frame));
    Ok(())
}

/// Reads one length-prefixed frame; the buffer grows only as bytes arrive.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Bytes> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await?;
    let length = i32::from_be_bytes(prefix);
    if length < 4 || length as usize > RESPONSE_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("response length {length} outside 4..={RESPONSE_BYTES_MAX}"),
        ));
    }
    let mut frame = Vec::with_capacity((length as usize).min(64 * 1024));
    reader.take(length as u64).read_to_end(&mut frame).await?;
    if frame.len() != length as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

    fn broker_versions(ranges: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            ranges
                .iter()
                .map(|&(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
    }

    #[test]
    fn picks_the_lower_maximum_and_refuses_disjoint_ranges() {
        let response = broker_versions(&[
            (ApiKey::Produce, 3, 9),
            (ApiKey::Fetch, 4, 30),
            (ApiKey::Metadata, 14, 20),
        ]);
        let versions = Versions::new(&response, &[(ApiKey::Fetch, 11)]);
        assert_eq!(versions.pick(ApiKey::Produce, "b").unwrap(), 9);
        assert_eq!(versions.pick(ApiKey::Fetch, "b").unwrap(), 11);
        assert!(matches!(
            versions.pick(ApiKey::Metadata, "b"),
            Err(Error::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            versions.pick(ApiKey::ListOffsets, "b"),
            Err(Error::ApiNotServed { .. })
        ));
    }

    /// A scripted broker on an in-memory pipe: answers each request with the
    /// correlation id `answer_id(request_id)`.
    async fn scripted(answer_id: fn(i32) -> i32) -> (Connection, tokio::task::JoinHandle<()>) {
        let (client_side, mut broker_side) = tokio::io::duplex(64 * 1024);
        let connection = Connection::start(client_side, "scripted", "test");
        let broker = tokio::spawn(async move {
            loop {
                let Ok(frame) = read_frame(&mut broker_side).await else {
                    return;
                };
                let id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                let mut body = BytesMut::new();
                body.put_i32(answer_id(id));
                MetadataResponse::default().encode(&mut body, 1).unwrap();
                let mut out = BytesMut::new();
                out.put_i32(body.len() as i32);
                out.extend_from_slice(&body);
                if broker_side.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        (connection, broker)
    }

    #[tokio::test]
    async fn pipelined_requests_get_their_own_answers() {
        let (connection, _broker) = scripted(|id| id).await;
        let request = MetadataRequest::default();
        let (a, b, c) = tokio::join!(
            connection.send(&request, 1, 1_000),
            connection.send(&request, 1, 1_000),
            connection.send(&request, 1, 1_000),
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert!(connection.is_open());
    }

    #[tokio::test]
    async fn a_mismatched_correlation_id_closes_the_connection() {
        let (connection, _broker) = scripted(|id| id + 7).await;
        let error = connection
            .send(&MetadataRequest::default(), 1, 1_000)
            .await
            .expect_err("mismatch must fail");
        assert!(matches!(error, Error::Protocol { .. }), "{error}");
        assert!(!connection.is_open());
        let after = connection.send(&MetadataRequest::default(), 1, 1_000).await;
        assert!(
            matches!(after, Err(Error::Disconnected { .. })),
            "{after:?}"
        );
    }

    /// A broker that speaks ApiVersions only up to v2 and answers newer
    /// requests with UNSUPPORTED_VERSION encoded as v0, as Kafka does.
    async fn old_broker(mut socket: tokio::io::DuplexStream) {
        while let Ok(frame) = read_frame(&mut socket).await {
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let (response, body_version) = if version > 2 {
                let mut refusal = broker_versions(&[(ApiKey::ApiVersions, 0, 2)]);
                refusal.error_code = ResponseError::UnsupportedVersion.code();
                (refusal, 0)
            } else {
                (
                    broker_versions(&[(ApiKey::ApiVersions, 0, 2), (ApiKey::Metadata, 0, 7)]),
                    version,
                )
            };
            let mut body = BytesMut::new();
            body.put_i32(id);
            response.encode(&mut body, body_version).unwrap();
            let mut out = BytesMut::new();
            out.put_i32(body.len() as i32);
            out.extend_from_slice(&body);
            if socket.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn negotiation_falls_back_to_the_brokers_api_versions_version() {
        let (client_side, broker_side) = tokio::io::duplex(64 * 1024);
        tokio::spawn(old_broker(broker_side));
        let connection = Connection::start(client_side, "old", "test");
        let versions = connection.negotiate(&[], 1_000).await.expect("negotiates");
        assert_eq!(versions.pick(ApiKey::Metadata, "old").unwrap(), 7);
        assert!(matches!(
            versions.pick(ApiKey::Produce, "old"),
            Err(Error::ApiNotServed { .. })
        ));
    }

    /// A broker built from this tree answers ApiVersions with the core's
    /// table; records the ApiVersions version it was asked at.
    async fn core_broker(mut socket: tokio::io::DuplexStream) -> i16 {
        let frame = read_frame(&mut socket).await.expect("ApiVersions request");
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let mut body = BytesMut::new();
        body.put_i32(id);
        versions::api_versions_response(0)
            .encode(&mut body, version)
            .unwrap();
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32);
        out.extend_from_slice(&body);
        socket.write_all(&out).await.expect("answer");
        version
    }

    #[tokio::test]
    async fn against_the_core_table_every_api_negotiates_the_brokers_newest() {
        let (client_side, broker_side) = tokio::io::duplex(64 * 1024);
        let broker = tokio::spawn(core_broker(broker_side));
        let connection = Connection::start(client_side, "core", "test");
        let negotiated = connection.negotiate(&[], 1_000).await.expect("negotiates");
        let newest = |api| versions::supported_versions(api).map(|(_, max)| max);
        assert_eq!(
            Some(broker.await.expect("broker")),
            newest(ApiKey::ApiVersions)
        );
        for &api in CLIENT_APIS {
            let picked = negotiated.pick(api, "core").ok();
            assert_eq!(picked, newest(api), "{api:?}");
        }
    }

    #[tokio::test]
    async fn a_silent_broker_times_out_and_closes() {
        let (client_side, _broker_side) = tokio::io::duplex(1024);
        let connection = Connection::start(client_side, "silent", "test");
        let error = connection
            .send(&MetadataRequest::default(), 1, 50)
            .await
            .expect_err("no answer comes");
        assert!(matches!(error, Error::Timeout { .. }), "{error}");
        assert!(!connection.is_open());
    }
}
