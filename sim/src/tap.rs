//! Delayed requests: the exactly-once workers reach the nodes through a
//! tap (`TapConnector`) that the nemesis can arm to hold back a worker's
//! next request of one kind (a transactional Produce, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn or TxnOffsetCommit). The held request never
//! reaches the node on its own connection, which then breaks, as a TCP
//! connection reset after the request left would: the client sees an
//! indefinite error and retries on a fresh connection. A courier host
//! (`courier`) delivers the held copy later on a connection of its own,
//! after the retry and whatever the worker did next. This is how Kafka's
//! classic protocol lets a late EndTxn or Produce land in a later
//! transaction of the same producer epoch (Jepsen, 2024): the checkers
//! must hold anyway.
//!
//! Every hold and every late delivery goes to the history as a fault.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::history::History;

/// Requests held back at once; an armed tap holds no more past it.
pub const HELD_REQUESTS_MAX: usize = 64;
/// Bytes a tapped connection buffers while a request frame is incomplete.
const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How often the courier looks for requests due.
const COURIER_LOOK_MS: u64 = 5;
/// How long the courier waits to connect and for an answer.
const COURIER_TIMEOUT_MS: u64 = 5_000;

/// The request kinds a tap can hold back.
pub const DELAYABLE: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
];

/// The kinds a scenario draws a late request from: EndTxn twice as often
/// as the others (Jepsen's case).
pub const LATE_KINDS: &[ApiKey] = &[
    ApiKey::EndTxn,
    ApiKey::EndTxn,
    ApiKey::Produce,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::TxnOffsetCommit,
];

/// One request held back: due at `due` (simulated time since the start).
struct Held {
    due: Duration,
    host: String,
    address: String,
    /// The whole frame, length prefix included.
    frame: Bytes,
    description: String,
}

#[derive(Default)]
struct TapState {
    /// Per host: the kinds whose next request is held back, and for how long.
    armed: BTreeMap<String, Vec<(ApiKey, u64)>>,
    held: VecDeque<Held>,
    /// Per host: the kinds whose next request is the host's last (it is
    /// killed once the request left), and how long it stays down.
    killers: BTreeMap<String, Vec<(ApiKey, u64)>>,
    /// Hosts whose killing request left, for the nemesis to kill.
    to_kill: Vec<(String, u64)>,
}

/// The shared tap of a run; clones share it.
#[derive(Clone, Default)]
pub struct Tap {
    state: Arc<Mutex<TapState>>,
    history: History,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Tap {
    pub fn new(history: History) -> Tap {
        Tap {
            state: Arc::default(),
            history,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds back `host`'s next request of kind `api` for `delay_ms`.
    pub fn arm(&self, host: &str, api: ApiKey, delay_ms: u64) {
        self.lock()
            .armed
            .entry(host.to_string())
            .or_default()
            .push((api, delay_ms));
    }

    /// Kills `host` (down for `down_ms`) once its next request of kind
    /// `api` has left: a process dying right after it asked, say, to
    /// commit, which never learns the outcome.
    pub fn arm_kill(&self, host: &str, api: ApiKey, down_ms: u64) {
        self.lock()
            .killers
            .entry(host.to_string())
            .or_default()
            .push((api, down_ms));
    }

    /// The hosts to kill now, each with how long it stays down.
    pub fn take_kills(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.lock().to_kill)
    }

    /// Holds back and kills nothing more (requests already held are still
    /// delivered).
    pub fn disarm_all(&self) {
        let mut state = self.lock();
        state.armed.clear();
        state.killers.clear();
    }

    /// A request frame `host` wrote to `address`: true when it is held back.
    fn offer(&self, host: &str, address: &str, frame: &[u8]) -> bool {
        let Some(api) = api_of(frame) else {
            return false;
        };
        let mut state = self.lock();
        let killer = state.killers.get_mut(host).and_then(|armed| {
            let position = armed.iter().position(|(kind, _)| *kind == api)?;
            Some(armed.remove(position).1)
        });
        if let Some(down_ms) = killer {
            state.to_kill.push((host.to_string(), down_ms));
            drop(state);
            let what = format!(
                "{host} is killed once its {} to {address} left",
                describe_request(&frame[4..])
            );
            tracing::info!("{what}");
            self.history.fault(now().as_micros(), what);
            return false;
        }
        if state.held.len() >= HELD_REQUESTS_MAX {
            return false;
        }
        let Some(armed) = state.armed.get_mut(host) else {
            return false;
        };
        let Some(position) = armed.iter().position(|(kind, _)| *kind == api) else {
            return false;
        };
        let (_, delay_ms) = armed.remove(position);
        let at = now();
        let description = describe_request(&frame[4..]);
        state.held.push_back(Held {
            due: at + Duration::from_millis(delay_ms),
            host: host.to_string(),
            address: address.to_string(),
            frame: Bytes::copy_from_slice(frame),
            description: description.clone(),
        });
        drop(state);
        let what = format!(
            "{host}'s {description} to {address} held back for {delay_ms} ms; its connection breaks"
        );
        tracing::info!("{what}");
        self.history.fault(at.as_micros(), what);
        true
    }

    fn take_due(&self, at: Duration) -> Vec<Held> {
        let mut state = self.lock();
        let (due, later): (VecDeque<Held>, VecDeque<Held>) =
            state.held.drain(..).partition(|h| h.due <= at);
        state.held = later;
        due.into()
    }
}

/// The kind of a request frame (length prefix included), if it is one a
/// tap may hold back.
fn api_of(frame: &[u8]) -> Option<ApiKey> {
    let key = i16::from_be_bytes([*frame.get(4)?, *frame.get(5)?]);
    let api = ApiKey::try_from(key).ok()?;
    DELAYABLE.contains(&api).then_some(api)
}

/// A request in a few words: its kind, producer and what it carries.
fn describe_request(payload: &[u8]) -> String {
    let mut buf = Bytes::copy_from_slice(payload);
    let Some((api, version)) = (payload.len() >= 4).then(|| {
        (
            i16::from_be_bytes([payload[0], payload[1]]),
            i16::from_be_bytes([payload[2], payload[3]]),
        )
    }) else {
        return "a request".into();
    };
    let Ok(api) = ApiKey::try_from(api) else {
        return format!("a request of key {api}");
    };
    let header_version = api.request_header_version(version);
    let Ok(header) = RequestHeader::decode(&mut buf, header_version) else {
        return format!("{api:?} v{version}");
    };
    let id = header.correlation_id;
    let body = match api {
        ApiKey::EndTxn => EndTxnRequest::decode(&mut buf, version)
            .map(|r| {
                format!(
                    "{} of {} (producer {} epoch {})",
                    if r.committed { "commit" } else { "abort" },
                    r.transactional_id.0,
                    r.producer_id.0,
                    r.producer_epoch
                )
            })
            .ok(),
        ApiKey::TxnOffsetCommit => TxnOffsetCommitRequest::decode(&mut buf, version)
            .map(|r| {
                let offsets: Vec<String> = r
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(move |p| {
                            format!("{}-{}@{}", t.name.0, p.partition_index, p.committed_offset)
                        })
                    })
                    .collect();
                format!(
                    "offsets {} of {} (producer {} epoch {})",
                    offsets.join(" "),
                    r.transactional_id.0,
                    r.producer_id.0,
                    r.producer_epoch
                )
            })
            .ok(),
        ApiKey::AddPartitionsToTxn => AddPartitionsToTxnRequest::decode(&mut buf, version)
            .map(|r| {
                let partitions: Vec<String> = r
                    .v3_and_below_topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .map(move |p| format!("{}-{p}", t.name.0))
                    })
                    .collect();
                format!(
                    "{} of {} (producer {} epoch {})",
                    partitions.join(" "),
                    r.v3_and_below_transactional_id.0,
                    r.v3_and_below_producer_id.0,
                    r.v3_and_below_producer_epoch
                )
            })
            .ok(),
        ApiKey::AddOffsetsToTxn => AddOffsetsToTxnRequest::decode(&mut buf, version)
            .map(|r| {
                format!(
                    "group {} of {} (producer {} epoch {})",
                    r.group_id.0, r.transactional_id.0, r.producer_id.0, r.producer_epoch
                )
            })
            .ok(),
        ApiKey::Produce => ProduceRequest::decode(&mut buf, version)
            .map(|r| {
                let batches: Vec<String> = r
                    .topic_data
                    .iter()
                    .flat_map(|t| {
                        t.partition_data.iter().flat_map(move |p| {
                            let records = p.records.clone().unwrap_or_default();
                            let described: Vec<String> = sluice_core::batch::headers_in(&records)
                                .map(|(h, _)| {
                                    format!(
                                        "{}-{}: producer {} epoch {} sequence {} ({} records)",
                                        t.name.0,
                                        p.index,
                                        h.producer_id,
                                        h.producer_epoch,
                                        h.base_sequence,
                                        h.record_count
                                    )
                                })
                                .collect();
                            described
                        })
                    })
                    .collect();
                batches.join(", ")
            })
            .ok(),
        _ => None,
    };
    match body {
        Some(body) => format!("{api:?} v{version} #{id} {body}"),
        None => format!("{api:?} v{version} #{id}"),
    }
}

/// The error codes of an answer, named.
fn describe_response(api: ApiKey, version: i16, payload: &[u8]) -> String {
    let mut buf = Bytes::copy_from_slice(payload);
    if ResponseHeader::decode(&mut buf, api.response_header_version(version)).is_err() {
        return "an undecodable answer".into();
    }
    let codes: Option<Vec<i16>> = match api {
        ApiKey::EndTxn => EndTxnResponse::decode(&mut buf, version)
            .ok()
            .map(|r| vec![r.error_code]),
        ApiKey::AddOffsetsToTxn => AddOffsetsToTxnResponse::decode(&mut buf, version)
            .ok()
            .map(|r| vec![r.error_code]),
        ApiKey::TxnOffsetCommit => {
            TxnOffsetCommitResponse::decode(&mut buf, version)
                .ok()
                .map(|r| {
                    r.topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                        .collect()
                })
        }
        ApiKey::AddPartitionsToTxn => AddPartitionsToTxnResponse::decode(&mut buf, version)
            .ok()
            .map(|r| {
                r.results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| {
                        t.results_by_partition
                            .iter()
                            .map(|p| p.partition_error_code)
                    })
                    .collect()
            }),
        ApiKey::Produce => ProduceResponse::decode(&mut buf, version).ok().map(|r| {
            r.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
                .collect()
        }),
        _ => None,
    };
    let Some(mut codes) = codes else {
        return "an undecodable answer".into();
    };
    codes.sort_unstable();
    codes.dedup();
    let named: Vec<String> = codes
        .into_iter()
        .map(|code| match ResponseError::try_from_code(code) {
            None => "NONE".to_string(),
            Some(error) => format!("{error:?}"),
        })
        .collect();
    format!("answered {}", named.join(", "))
}

/// Delivers the held requests when they are due, each on a fresh
/// connection of its own; runs as the host `courier` for the whole run.
pub async fn courier(tap: Tap) {
    loop {
        tokio::time::sleep(Duration::from_millis(COURIER_LOOK_MS)).await;
        for held in tap.take_due(now()) {
            let history = tap.history.clone();
            tokio::spawn(async move {
                let outcome =
                    tokio::time::timeout(Duration::from_millis(COURIER_TIMEOUT_MS), deliver(&held))
                        .await
                        .unwrap_or_else(|_| "no answer".into());
                let what = format!(
                    "late delivery of {}'s {} to {}: {outcome}",
                    held.host, held.description, held.address
                );
                tracing::info!("{what}");
                history.fault(now().as_micros(), what);
            });
        }
    }
}

/// Sends one held frame and reads its answer.
async fn deliver(held: &Held) -> String {
    let mut stream = match turmoil::net::TcpStream::connect(held.address.as_str()).await {
        Ok(stream) => stream,
        Err(error) => return format!("not delivered ({error})"),
    };
    if let Err(error) = stream.write_all(&held.frame).await {
        return format!("not delivered ({error})");
    }
    let mut prefix = [0u8; 4];
    if let Err(error) = stream.read_exact(&mut prefix).await {
        return format!("delivered, no answer ({error})");
    }
    let length = i32::from_be_bytes(prefix).max(0) as usize;
    let mut answer = vec![0u8; length.min(FRAME_BYTES_MAX)];
    if let Err(error) = stream.read_exact(&mut answer).await {
        return format!("delivered, no answer ({error})");
    }
    let mut payload = &held.frame[4..];
    let (api, version) = (payload.get_i16(), payload.get_i16());
    match ApiKey::try_from(api) {
        Ok(api) => describe_response(api, version, &answer),
        Err(()) => "answered".into(),
    }
}

/// A client connector whose connections pass through the tap.
#[derive(Clone)]
pub struct TapConnector {
    host: String,
    tap: Tap,
}

impl TapConnector {
    pub fn new(host: &str, tap: Tap) -> TapConnector {
        TapConnector {
            host: host.to_string(),
            tap,
        }
    }
}

impl sluice_client::Connector for TapConnector {
    type Stream = TappedStream;

    fn connect(
        &self,
        address: &str,
    ) -> impl std::future::Future<Output = io::Result<TappedStream>> + Send {
        let (address, host, tap) = (address.to_string(), self.host.clone(), self.tap.clone());
        async move {
            let inner = turmoil::net::TcpStream::connect(address.as_str()).await?;
            Ok(TappedStream {
                inner,
                host,
                address,
                tap,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                broken: false,
                read_waker: None,
            })
        }
    }
}

/// A client connection through the tap: whole request frames go on to
/// the node, except one the tap holds back, after which the connection is
/// broken both ways.
pub struct TappedStream {
    inner: turmoil::net::TcpStream,
    host: String,
    address: String,
    tap: Tap,
    /// Bytes written that do not make a whole frame yet.
    incoming: Vec<u8>,
    /// Whole frames not yet taken by the inner stream.
    outgoing: Vec<u8>,
    broken: bool,
    /// The reader waiting on the inner stream, woken when it breaks.
    read_waker: Option<Waker>,
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection broken by the tap",
    )
}

impl TappedStream {
    /// Moves whole frames from `incoming` to `outgoing`, unless the tap
    /// holds one back.
    fn sort_frames(&mut self) {
        loop {
            if self.incoming.len() < 4 {
                return;
            }
            let length = i32::from_be_bytes([
                self.incoming[0],
                self.incoming[1],
                self.incoming[2],
                self.incoming[3],
            ])
            .max(0) as usize;
            if self.incoming.len() < 4 + length {
                return;
            }
            let frame: Vec<u8> = self.incoming.drain(..4 + length).collect();
            if self.tap.offer(&self.host, &self.address, &frame) {
                self.broken = true;
                self.incoming.clear();
                if let Some(waker) = self.read_waker.take() {
                    waker.wake();
                }
                return;
            }
            self.outgoing.extend_from_slice(&frame);
        }
    }

    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.outgoing))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(Err(reset()));
        }
        if this.incoming.len() + buf.len() > FRAME_BYTES_MAX {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request frame too large for the tap",
            )));
        }
        this.incoming.extend_from_slice(buf);
        this.sort_frames();
        if let Poll::Ready(Err(error)) = this.drain(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The frames before a held one still go out.
        ready!(this.drain(cx))?;
        if this.broken {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for TappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(Err(reset()));
        }
        this.read_waker = Some(cx.waker().clone());
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}
