//! The node task and its connections: `serve` owns the sockets, the files,
//! the clock and the syncer, and turns the core's outputs into IO.
//!
//! It is generic over the network (`Listener`), the disk (`Disk`) and the
//! clock, so the same code runs on tokio with real files and, in the
//! simulator, on turmoil's network with a simulated disk and clock.
//!
//! One task runs the node. Each connection has a reader task (framing, the
//! size limit, back-pressure) and a writer task; they talk to the node task
//! through channels, and share the connection's `Backlog` (answers owed and
//! not yet written) with it. Frames are read into `RequestMemory`, shared
//! by all connections (`pressure.rs`). At most one sync is in flight (the core asks for the
//! next only when the previous completed); its completion comes back to the
//! node task as an input, and releases the peer frames that waited for it
//! (before the node hears of it, so they leave ahead of anything the node
//! sends in answer).
//!
//! Each peer in `Environment.peers` has a link task (`peers.rs`) that keeps
//! an outbound connection to it and talks to the node task through the same
//! event channel; with no peers there are none. After every input the node
//! task publishes the links' state on `Environment.peer_status`, if given.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::config::BrokerConfig;
use sluice_core::storage::{Storage, SyncTarget};
use sluice_core::{ConnectionId, Node, NodeId, Now, Output};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::admission::{read_request, Admission, Admitted, RequestError};
use crate::metrics::{http_loop, DriverMetrics, InFlight, Scraped};
use crate::peers::{Connector, PeerEvent, PeerLinks, PeerStatuses};
use crate::pressure::{Backlog, FrameMemory, RequestMemory};
use crate::DriverError;

/// The outcome of a sync: `Err` carries the reason it failed.
pub type SyncResult = Result<(), String>;
/// A sync under way, as `Disk::sync` starts it.
pub type SyncFuture = Pin<Box<dyn Future<Output = SyncResult> + Send>>;

/// Storage the driver can also make durable, in the background.
pub trait Disk: Storage + Send + 'static {
    /// Starts making `targets` durable; the future resolves when done. The
    /// driver never has two in flight.
    fn sync(&mut self, targets: &[SyncTarget]) -> SyncFuture;
}

/// A source of connections: tokio's `TcpListener`, or turmoil's. Each
/// comes with its peer's address, which the node records (a group
/// member's client host).
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &mut self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// Wall-clock milliseconds since the Unix epoch, as the driver sees them.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// Everything a node needs from its surroundings.
pub struct Environment<L: Listener, D: Disk, C: Connector> {
    pub config: BrokerConfig,
    pub listener: L,
    pub disk: D,
    pub advertised: (String, u16),
    pub clock: Clock,
    /// Seeds the node's generator (topic and cluster ids) and, mixed with
    /// each peer's id, the jitter of its link's reconnect backoff.
    pub seed: u64,
    /// The other nodes and where to reach them (`host`, `port`); the driver
    /// keeps a link to each. Empty for a single node: no link, no task.
    /// Must not name this node (`DriverError::PeerIsSelf`).
    pub peers: BTreeMap<NodeId, (String, u16)>,
    /// Opens the links to `peers`: `TokioConnector`, or turmoil's.
    pub connector: C,
    /// If given, every configured peer's link state, updated after each
    /// input the node handles (only when it changed) and set all down when
    /// the driver stops. Tests and tools watch it rather than the node.
    pub peer_status: Option<watch::Sender<PeerStatuses>>,
    /// If given, where `/metrics`, `/health` and `/ready` are served
    /// (`metrics.listener`), from when the node starts serving.
    pub metrics_listener: Option<tokio::net::TcpListener>,
}

pub(crate) enum Event {
    Connected {
        connection: ConnectionId,
        peer: IpAddr,
        handle: ConnectionHandle,
    },
    Frame {
        connection: ConnectionId,
        frame: Bytes,
        /// The frame's share of `RequestMemory`, freed once it is handled.
        memory: FrameMemory,
    },
    Disconnected {
        connection: ConnectionId,
    },
    Peer(PeerEvent),
    /// The metrics listener asks for the numbers (rendered as text when
    /// `render`) and whether the broker is ready.
    Scrape {
        render: bool,
        reply: tokio::sync::oneshot::Sender<Scraped>,
    },
}

pub(crate) struct ConnectionHandle {
    /// Answers for the writer task. Unbounded as a channel, bounded by the
    /// backlog: the reader reads no request while too much is owed.
    writer: mpsc::UnboundedSender<Bytes>,
    /// Requests awaiting their answer, for timing.
    in_flight: VecDeque<InFlight>,
    /// Requests and answer bytes owed until written to the socket.
    backlog: Backlog,
    reader: AbortHandle,
    writer_task: AbortHandle,
}

impl ConnectionHandle {
    fn abort(&self) {
        self.reader.abort();
        self.writer_task.abort();
    }
}

/// Runs a broker until `shutdown` resolves, then stops cleanly.
pub async fn serve<L: Listener, D: Disk, C: Connector>(
    environment: Environment<L, D, C>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DriverError> {
    serve_until(environment, shutdown, std::future::pending()).await
}

/// Like `serve`, and when `kill` resolves the node stops at once, as in a
/// crash: nothing more is written or synced, and every connection is
/// dropped in connection order, so that a simulated crash closes sockets in
/// the same order on every run of a seed (left to the runtime, the order
/// would follow tokio's task ids, which are global to the process).
pub async fn serve_until<L: Listener, D: Disk, C: Connector>(
    environment: Environment<L, D, C>,
    shutdown: impl Future<Output = ()>,
    kill: impl Future<Output = ()>,
) -> Result<(), DriverError> {
    let Environment {
        config,
        listener,
        disk,
        advertised,
        clock,
        seed,
        peers,
        connector,
        peer_status,
        metrics_listener,
    } = environment;
    let node_id = NodeId(config.node_id);
    if peers.contains_key(&node_id) {
        return Err(DriverError::PeerIsSelf { node_id: node_id.0 });
    }
    let data_dir = config.log_dirs.clone();
    // Deadlines run on tokio's monotonic clock (simulated under turmoil),
    // record times on the wall clock.
    let started = tokio::time::Instant::now();
    let now = move || Now {
        monotonic_ms: started.elapsed().as_millis() as i64,
        wall_ms: clock(),
    };
    let opening = tokio::time::Instant::now();
    let mut node =
        Node::open(disk, config, advertised, seed, now()).map_err(|error| DriverError::Open {
            data_dir: data_dir.clone(),
            error,
        })?;
    let (clean, opened) = node.recovery();
    tracing::info!(
        log_dir = %data_dir,
        clean_shutdown = clean,
        partitions = opened.partitions,
        segments = opened.segments,
        bytes = opened.bytes,
        segments_scanned = opened.segments_scanned,
        truncated_bytes = opened.truncated_bytes,
        segments_removed = opened.segments_removed,
        dirs_gone = opened.dirs_gone,
        took_ms = opening.elapsed().as_millis() as u64,
        "opened the log directory"
    );
    let mut peer_links = PeerLinks::new(peer_status);
    // The start-up sync makes recovered data durable before anything is served.
    while let Some(output) = node.poll_output() {
        if let Output::Sync { id, targets } = output {
            let result = node.storage_mut().sync(&targets).await;
            peer_links.sync_completed(id, result.is_ok());
            node.handle_synced(now(), id, result);
        }
    }
    if !node.is_ready() {
        return Err(DriverError::StartupSync { data_dir });
    }
    tracing::info!(cluster_id = node.cluster_id(), "serving");

    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let frame_bytes_max = node.frame_bytes_max();
    peer_links.start(peers, connector, &events_tx, frame_bytes_max, seed);
    let admission = Admission::new(node.config());
    let limits = ConnectionLimits {
        frame_bytes_max,
        requests_max: node.config().queued_requests_max,
        response_bytes_max: node.config().queued_response_bytes_max,
        memory: RequestMemory::new(node.config().queued_request_bytes_max, frame_bytes_max),
    };
    let request_memory = limits.memory.clone();
    let metrics_http = metrics_listener.map(|l| tokio::spawn(http_loop(l, events_tx.clone())));
    let accept = tokio::spawn(accept_loop(listener, events_tx, limits, admission));
    let mut metrics = DriverMetrics::default();
    let mut connections: BTreeMap<ConnectionId, ConnectionHandle> = BTreeMap::new();
    let mut sync_in_flight: Option<(u64, SyncFuture)> = None;
    // When the sync in flight started, and how many files it covers.
    let mut sync_started = (tokio::time::Instant::now(), 0usize);
    tokio::pin!(shutdown);
    tokio::pin!(kill);
    let mut stopping = false;

    loop {
        drain(
            &mut node,
            &mut connections,
            &mut peer_links,
            (&mut sync_in_flight, &mut sync_started),
            &mut metrics,
        );
        peer_links.publish(&node);
        if node.is_stopped() {
            break;
        }
        // A deadline already due is handled at once: the node stops every
        // timer it handles, so none is reported due twice.
        let wait_ms = node
            .poll_timeout()
            .map_or(60_000, |at| (at - now().monotonic_ms).clamp(0, 60_000));
        // A deadline due now (a creation's next step) waits for no timer
        // tick: the loop yields once, so the tasks that read and write
        // connections run, then takes it or an event that came meanwhile
        // (`select!` picks among the ready branches at random).
        let sleep = async move {
            if wait_ms == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
            }
        };
        let sync = async {
            match sync_in_flight.as_mut() {
                Some((id, future)) => (*id, future.await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Scrape { render, reply } => {
                    let snapshot = node.metrics();
                    let ready = snapshot.ready && !stopping;
                    metrics.request_memory_bytes = request_memory.bytes_held();
                    let text = if render {
                        crate::metrics::render(&snapshot, &metrics, connections.len(), ready)
                    } else {
                        String::new()
                    };
                    let _ = reply.send(Scraped { ready, text });
                }
                event => handle_event(
                    &mut node,
                    &mut connections,
                    (&mut peer_links, &mut metrics),
                    event,
                    now(),
                ),
            },
            (id, result) = sync => {
                sync_in_flight = None;
                metrics.synced(sync_started.1, sync_started.0.elapsed(), result.is_ok());
                peer_links.sync_completed(id, result.is_ok());
                node.handle_synced(now(), id, result);
            }
            _ = sleep => node.handle_timeout(now()),
            _ = &mut kill => {
                tracing::info!("killed");
                accept.abort();
                if let Some(task) = &metrics_http {
                    task.abort();
                }
                while let Ok(event) = events.try_recv() {
                    if let Event::Connected {
                        connection, handle, ..
                    } = event
                    {
                        connections.insert(connection, handle);
                    }
                }
                for handle in connections.values() {
                    handle.abort();
                }
                peer_links.stop();
                return Ok(());
            }
            _ = &mut shutdown, if !stopping => {
                tracing::info!("shutting down");
                stopping = true;
                accept.abort();
                // No new requests: what was appended before is in the final
                // flush, and the answers already owed still go out.
                for handle in connections.values() {
                    handle.reader.abort();
                }
                node.begin_shutdown(now());
            }
        }
    }
    accept.abort();
    if let Some(task) = &metrics_http {
        task.abort();
    }
    for (_, handle) in connections {
        handle.reader.abort();
    }
    peer_links.stop();
    Ok(())
}

fn handle_event<D: Disk>(
    node: &mut Node<D>,
    connections: &mut BTreeMap<ConnectionId, ConnectionHandle>,
    (peer_links, metrics): (&mut PeerLinks, &mut DriverMetrics),
    event: Event,
    now: Now,
) {
    match event {
        Event::Connected {
            connection,
            peer,
            handle,
        } => {
            metrics.connections_accepted += 1;
            connections.insert(connection, handle);
            node.handle_connect(now, connection, peer);
        }
        Event::Frame {
            connection,
            frame,
            memory,
        } => {
            if let Some(handle) = connections.get_mut(&connection) {
                metrics.request(&mut handle.in_flight, &frame);
            }
            let outcome = node.handle_frame(now, connection, frame);
            drop(memory);
            if !outcome.response_queued {
                if let Some(handle) = connections.get(&connection) {
                    handle.backlog.request_unanswered();
                }
            }
        }
        Event::Disconnected { connection } => {
            if let Some(handle) = connections.remove(&connection) {
                handle.reader.abort();
                node.handle_disconnect(now, connection);
            }
        }
        Event::Peer(event) => peer_links.handle(node, event, now),
        // Answered by the caller, which holds the driver's numbers.
        Event::Scrape { .. } => {}
    }
}

/// Carries out everything the node asked for.
fn drain<D: Disk>(
    node: &mut Node<D>,
    connections: &mut BTreeMap<ConnectionId, ConnectionHandle>,
    peer_links: &mut PeerLinks,
    (sync_in_flight, sync_started): (
        &mut Option<(u64, SyncFuture)>,
        &mut (tokio::time::Instant, usize),
    ),
    metrics: &mut DriverMetrics,
) {
    while let Some(output) = node.poll_output() {
        match output {
            Output::Send { connection, frame } => {
                if let Some(handle) = connections.get_mut(&connection) {
                    metrics.response(&mut handle.in_flight, &frame);
                    handle.backlog.answer_queued(frame.len());
                    let _ = handle.writer.send(frame);
                }
            }
            Output::Close { connection } => {
                if let Some(handle) = connections.remove(&connection) {
                    handle.reader.abort();
                }
            }
            Output::SendPeer {
                peer,
                channel,
                frame,
                after_sync,
            } => peer_links.send((peer, channel), frame, after_sync),
            Output::ResetPeer { peer, channel } => peer_links.reset((peer, channel)),
            Output::Sync { id, targets } => {
                assert!(
                    sync_in_flight.is_none(),
                    "the core asked for a second sync in flight"
                );
                *sync_started = (tokio::time::Instant::now(), targets.len());
                *sync_in_flight = Some((id, node.storage_mut().sync(&targets)));
            }
        }
    }
}

/// What every client connection is held to.
struct ConnectionLimits {
    /// `socket.request.max.bytes`.
    frame_bytes_max: usize,
    /// `queued.max.requests` and `queued.max.response.bytes`, per connection.
    requests_max: usize,
    response_bytes_max: usize,
    /// `queued.max.request.bytes`, shared.
    memory: Arc<RequestMemory>,
}

async fn accept_loop<L: Listener>(
    mut listener: L,
    events: mpsc::UnboundedSender<Event>,
    limits: ConnectionLimits,
    admission: Admission,
) {
    let mut next_id = 0u64;
    let mut failures = AcceptFailures::default();
    loop {
        // `max.connections`: no accept until a place is free.
        let Some(place) = admission.place().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                failures.succeeded();
                accepted
            }
            Err(error) => {
                let pause = failures.failed(&error, tokio::time::Instant::now().into_std());
                drop(place);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Some(admitted) = admission.admit(peer.ip(), place) else {
            tracing::info!(%peer, "closing a connection: its address holds max.connections.per.ip");
            drop(stream);
            continue;
        };
        next_id += 1;
        let connection = ConnectionId(next_id);
        tracing::debug!(connection = next_id, %peer, "connection opened");
        let (read_half, write_half) = tokio::io::split(stream);
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let backlog = Backlog::new(limits.requests_max, limits.response_bytes_max);
        // The reader starts only once `Connected` is queued: on a
        // multi-threaded runtime its first frame could otherwise reach the
        // node before the connection does.
        let (start, started) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(read_loop(
            read_half,
            connection,
            events.clone(),
            (
                backlog.clone(),
                limits.memory.clone(),
                limits.frame_bytes_max,
            ),
            (admitted, admission.idle),
            started,
        ));
        let writer_task = tokio::spawn(write_loop(
            write_half,
            writer_rx,
            (connection, backlog.clone(), admission.idle),
            events.clone(),
        ));
        let handle = ConnectionHandle {
            writer: writer_tx,
            in_flight: VecDeque::new(),
            backlog,
            reader: reader.abort_handle(),
            writer_task: writer_task.abort_handle(),
        };
        if events
            .send(Event::Connected {
                connection,
                peer: peer.ip(),
                handle,
            })
            .is_err()
        {
            return;
        }
        let _ = start.send(());
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut stream: R,
    connection: ConnectionId,
    events: mpsc::UnboundedSender<Event>,
    (backlog, memory, frame_bytes_max): (Backlog, Arc<RequestMemory>, usize),
    // Held for as long as the reader runs: the connection's place.
    (_admitted, idle): (Admitted, Duration),
    started: tokio::sync::oneshot::Receiver<()>,
) {
    if started.await.is_err() {
        return;
    }
    let owed = || backlog.answers_owed();
    let why = loop {
        // Back-pressure: read nothing more while too much is owed to a
        // client that does not read its answers.
        backlog.room().await;
        let read = read_request(&mut stream, frame_bytes_max, idle, owed, &memory).await;
        let (frame, memory) = match read {
            Ok(read) => read,
            Err(RequestError::Closed) => break None,
            Err(RequestError::Size(length)) => {
                break Some(format!("frame size {length} outside 0..={frame_bytes_max}"))
            }
            Err(RequestError::Idle) => {
                tracing::debug!(connection = connection.0, "closing an idle connection");
                break None;
            }
            Err(RequestError::Slow) => {
                break Some(format!(
                    "a request did not arrive whole within connections.max.idle.ms ({} ms)",
                    idle.as_millis()
                ))
            }
        };
        backlog.request_read();
        let frame = Event::Frame {
            connection,
            frame,
            memory,
        };
        if events.send(frame).is_err() {
            break None;
        }
    };
    if let Some(why) = why {
        tracing::warn!(connection = connection.0, %why, "closing connection");
    }
    let _ = events.send(Event::Disconnected { connection });
}

/// Why no frame could be read.
pub(crate) enum FrameError {
    /// The stream failed or ended.
    Closed(std::io::Error),
    /// The length prefix is negative or above the limit.
    Size(i32),
}

/// Reads one length-prefixed frame and returns it without its prefix.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    frame_bytes_max: usize,
) -> Result<Bytes, FrameError> {
    let mut length = [0u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .map_err(FrameError::Closed)?;
    let length = i32::from_be_bytes(length);
    if length < 0 || length as usize > frame_bytes_max {
        return Err(FrameError::Size(length));
    }
    // A zeroed allocation of a large frame is fresh zero pages, which take
    // memory only as the bytes arrive: a length prefix alone costs nothing
    // (tests/tests/bad_input.rs holds the broker to that).
    let mut frame = BytesMut::zeroed(length as usize);
    stream
        .read_exact(&mut frame)
        .await
        .map_err(FrameError::Closed)?;
    Ok(frame.freeze())
}

/// Writes the node's answers to a connection, in order. A client that
/// takes no byte of an answer for `idle` (`connections.max.idle.ms`) is
/// closed: it would otherwise hold its connection, and the answers owed to
/// it, for as long as it likes.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut stream: W,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    (connection, backlog, idle): (ConnectionId, Backlog, Duration),
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(frame) = frames.recv().await {
        let mut written = 0;
        while written < frame.len() {
            match tokio::time::timeout(idle, stream.write(&frame[written..])).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let _ = events.send(Event::Disconnected { connection });
                    return;
                }
                Ok(Ok(count)) => written += count,
                Err(_) => {
                    tracing::warn!(
                        connection = connection.0,
                        why = "the client took no answer bytes within connections.max.idle.ms",
                        idle_ms = idle.as_millis() as u64,
                        owed_bytes = backlog.owed().bytes,
                        "closing connection"
                    );
                    let _ = events.send(Event::Disconnected { connection });
                    return;
                }
            }
        }
        // Only now is the answer off the broker's hands (in the socket's
        // buffer): the reader may read another request.
        backlog.answer_written(frame.len());
    }
    let _ = stream.shutdown().await;
}

/// Binds a tokio listener on `host:port` (an empty host means all addresses).
pub async fn bind(address: &(String, u16)) -> Result<tokio::net::TcpListener, DriverError> {
    let host = if address.0.is_empty() {
        "0.0.0.0"
    } else {
        address.0.as_str()
    };
    tokio::net::TcpListener::bind((host, address.1))
        .await
        .map_err(|error| DriverError::Bind {
            address: format!("{host}:{}", address.1),
            error,
        })
}

/// First and last pause after a failed accept, doubling in between: out of
/// descriptors (EMFILE), every accept fails until one is freed, and trying
/// again at once only spins.
const ACCEPT_BACKOFF_MS_MIN: u64 = 5;
const ACCEPT_BACKOFF_MS_MAX: u64 = 1_000;
/// Least time between two warnings about failing accepts; the failures in
/// between are counted in the next one.
const ACCEPT_WARNING_INTERVAL_MS: u64 = 10_000;

/// The accept loop's backoff and its rate-limited warning.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failures in a row.
    consecutive: u32,
    /// Failures since the last warning.
    unreported: u64,
    warned_at: Option<std::time::Instant>,
}

impl AcceptFailures {
    /// Records a failure; returns how long to wait before the next accept.
    fn failed(&mut self, error: &std::io::Error, now: std::time::Instant) -> Duration {
        self.consecutive = self.consecutive.saturating_add(1);
        self.unreported += 1;
        let due = self.warned_at.is_none_or(|at| {
            now.saturating_duration_since(at) >= Duration::from_millis(ACCEPT_WARNING_INTERVAL_MS)
        });
        if due {
            tracing::warn!(
                %error,
                failures = self.unreported,
                "accept failed; backing off (one warning per {} s at most)",
                ACCEPT_WARNING_INTERVAL_MS / 1_000
            );
            self.unreported = 0;
            self.warned_at = Some(now);
        }
        self.pause()
    }

    fn pause(&self) -> Duration {
        let doublings = self.consecutive.saturating_sub(1).min(16);
        Duration::from_millis(
            ACCEPT_BACKOFF_MS_MIN
                .saturating_mul(1 << doublings)
                .min(ACCEPT_BACKOFF_MS_MAX),
        )
    }

    fn succeeded(&mut self) {
        if self.consecutive > 0 && self.unreported > 0 {
            tracing::info!(failures = self.unreported, "accepting again after failures");
            self.unreported = 0;
        }
        self.consecutive = 0;
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_exponentially_to_a_bound_and_reset_on_success() {
        let mut failures = AcceptFailures::default();
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = std::time::Instant::now();
        let pauses: Vec<u64> = (0..12)
            .map(|_| failures.failed(&error, start).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [5, 10, 20, 40, 80, 160, 320, 640, 1_000, 1_000, 1_000, 1_000]
        );
        // One warning for the lot: the eleven after the first wait for the interval.
        assert_eq!(failures.unreported, 11);
        failures.failed(
            &error,
            start + Duration::from_millis(ACCEPT_WARNING_INTERVAL_MS),
        );
        assert_eq!(failures.unreported, 0, "the interval passed: warned again");
        failures.succeeded();
        assert_eq!(
            failures.failed(&error, start).as_millis(),
            u128::from(ACCEPT_BACKOFF_MS_MIN)
        );
    }
}
