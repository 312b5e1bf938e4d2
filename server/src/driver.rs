//! The driver: owns the sockets, the files, the clock and the syncer, and
//! turns the core's outputs into IO.
//!
//! It is generic over the network (`Listener`), the disk (`Disk`) and the
//! clock, so the same code runs on tokio with real files and, in the
//! simulator, on turmoil's network with a simulated disk and clock.
//!
//! One task runs the node. Each connection has a reader task (framing, the
//! size limit, back-pressure) and a writer task; they talk to the node task
//! through channels. At most one sync is in flight (the core asks for the
//! next only when the previous completed); its completion comes back to the
//! node task as an input.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::config::BrokerConfig;
use sluice_core::node::QUEUED_RESPONSES_MAX;
use sluice_core::storage::{Storage, SyncTarget};
use sluice_core::{ConnectionId, Node, Output};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

/// The outcome of a sync: `Err` carries the reason it failed.
pub type SyncResult = Result<(), String>;
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
pub struct Environment<L: Listener, D: Disk> {
    pub config: BrokerConfig,
    pub listener: L,
    pub disk: D,
    pub advertised: (String, u16),
    pub clock: Clock,
    /// Seeds the node's generator (topic and cluster ids).
    pub seed: u64,
}

enum Event {
    Connected {
        connection: ConnectionId,
        peer: IpAddr,
        handle: ConnectionHandle,
    },
    Frame {
        connection: ConnectionId,
        frame: Bytes,
    },
    Disconnected {
        connection: ConnectionId,
    },
}

struct ConnectionHandle {
    writer: mpsc::UnboundedSender<Bytes>,
    /// Requests the reader may still hand in before a response goes out.
    permits: Arc<Semaphore>,
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
pub async fn serve<L: Listener, D: Disk>(
    environment: Environment<L, D>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_until(environment, shutdown, std::future::pending()).await
}

/// Like `serve`, and when `kill` resolves the node stops at once, as in a
/// crash: nothing more is written or synced, and every connection is
/// dropped in connection order, so that a simulated crash closes sockets in
/// the same order on every run of a seed (left to the runtime, the order
/// would follow tokio's task ids, which are global to the process).
pub async fn serve_until<L: Listener, D: Disk>(
    environment: Environment<L, D>,
    shutdown: impl Future<Output = ()>,
    kill: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Environment {
        config,
        listener,
        disk,
        advertised,
        clock,
        seed,
    } = environment;
    let data_dir = config.log_dirs.clone();
    let mut node = Node::open(disk, config, advertised, seed, clock())?;
    // The start-up sync makes recovered data durable before anything is served.
    while let Some(output) = node.poll_output() {
        if let Output::Sync { id, targets } = output {
            let result = node.storage_mut().sync(&targets).await;
            node.handle_synced(clock(), id, result);
        }
    }
    anyhow::ensure!(node.is_ready(), "the start-up sync of {data_dir} failed");
    tracing::info!(cluster_id = node.cluster_id(), "serving");

    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let frame_bytes_max = node.frame_bytes_max();
    let accept = tokio::spawn(accept_loop(listener, events_tx, frame_bytes_max));
    let mut connections: BTreeMap<ConnectionId, ConnectionHandle> = BTreeMap::new();
    let mut sync_in_flight: Option<(u64, SyncFuture)> = None;
    tokio::pin!(shutdown);
    tokio::pin!(kill);
    let mut stopping = false;

    loop {
        drain(&mut node, &mut connections, &mut sync_in_flight);
        if node.is_stopped() {
            break;
        }
        // At least 1 ms: a deadline the node reports as due again right
        // after handling it must not spin the loop (in the simulator, time
        // would never move).
        let wait_ms = node
            .poll_timeout()
            .map_or(60_000, |at| (at - clock()).clamp(1, 60_000));
        let sleep = tokio::time::sleep(Duration::from_millis(wait_ms as u64));
        let sync = async {
            match sync_in_flight.as_mut() {
                Some((id, future)) => (*id, future.await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = events.recv() => handle_event(&mut node, &mut connections, event, clock()),
            (id, result) = sync => {
                sync_in_flight = None;
                node.handle_synced(clock(), id, result);
            }
            _ = sleep => node.handle_timeout(clock()),
            _ = &mut kill => {
                tracing::info!("killed");
                accept.abort();
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
                node.begin_shutdown(clock());
            }
        }
    }
    accept.abort();
    for (_, handle) in connections {
        handle.reader.abort();
    }
    Ok(())
}

fn handle_event<D: Disk>(
    node: &mut Node<D>,
    connections: &mut BTreeMap<ConnectionId, ConnectionHandle>,
    event: Event,
    now_ms: i64,
) {
    match event {
        Event::Connected {
            connection,
            peer,
            handle,
        } => {
            connections.insert(connection, handle);
            node.handle_connect(now_ms, connection, peer);
        }
        Event::Frame { connection, frame } => {
            let outcome = node.handle_frame(now_ms, connection, frame);
            if !outcome.response_queued {
                if let Some(handle) = connections.get(&connection) {
                    handle.permits.add_permits(1);
                }
            }
        }
        Event::Disconnected { connection } => {
            if let Some(handle) = connections.remove(&connection) {
                handle.reader.abort();
                node.handle_disconnect(now_ms, connection);
            }
        }
    }
}

/// Carries out everything the node asked for.
fn drain<D: Disk>(
    node: &mut Node<D>,
    connections: &mut BTreeMap<ConnectionId, ConnectionHandle>,
    sync_in_flight: &mut Option<(u64, SyncFuture)>,
) {
    while let Some(output) = node.poll_output() {
        match output {
            Output::Send { connection, frame } => {
                if let Some(handle) = connections.get(&connection) {
                    handle.permits.add_permits(1);
                    let _ = handle.writer.send(frame);
                }
            }
            Output::Close { connection } => {
                if let Some(handle) = connections.remove(&connection) {
                    handle.reader.abort();
                }
            }
            Output::Sync { id, targets } => {
                assert!(
                    sync_in_flight.is_none(),
                    "the core asked for a second sync in flight"
                );
                *sync_in_flight = Some((id, node.storage_mut().sync(&targets)));
            }
        }
    }
}

async fn accept_loop<L: Listener>(
    mut listener: L,
    events: mpsc::UnboundedSender<Event>,
    frame_bytes_max: usize,
) {
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        next_id += 1;
        let connection = ConnectionId(next_id);
        tracing::debug!(connection = next_id, %peer, "connection opened");
        let (read_half, write_half) = tokio::io::split(stream);
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(QUEUED_RESPONSES_MAX));
        // The reader starts only once `Connected` is queued: on a
        // multi-threaded runtime its first frame could otherwise reach the
        // node before the connection does.
        let (start, started) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(read_loop(
            read_half,
            connection,
            events.clone(),
            permits.clone(),
            frame_bytes_max,
            started,
        ));
        let writer_task = tokio::spawn(write_loop(
            write_half,
            writer_rx,
            connection,
            events.clone(),
        ));
        let handle = ConnectionHandle {
            writer: writer_tx,
            permits,
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
    permits: Arc<Semaphore>,
    frame_bytes_max: usize,
    started: tokio::sync::oneshot::Receiver<()>,
) {
    if started.await.is_err() {
        return;
    }
    let why = loop {
        let mut length = [0u8; 4];
        if stream.read_exact(&mut length).await.is_err() {
            break None;
        }
        let length = i32::from_be_bytes(length);
        if length < 0 || length as usize > frame_bytes_max {
            break Some(format!("frame size {length} outside 0..={frame_bytes_max}"));
        }
        // A zeroed allocation of a large frame is fresh zero pages, which
        // take memory only as the bytes arrive: a length prefix alone costs
        // nothing (tests/tests/bad_input.rs holds the broker to that).
        let mut frame = BytesMut::zeroed(length as usize);
        if stream.read_exact(&mut frame).await.is_err() {
            break None;
        }
        // Back-pressure: stop reading while too many responses are queued.
        match permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => break None,
        }
        if events
            .send(Event::Frame {
                connection,
                frame: frame.freeze(),
            })
            .is_err()
        {
            break None;
        }
    };
    if let Some(why) = why {
        tracing::warn!(connection = connection.0, %why, "closing connection");
    }
    let _ = events.send(Event::Disconnected { connection });
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut stream: W,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    connection: ConnectionId,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(frame) = frames.recv().await {
        if stream.write_all(&frame).await.is_err() {
            let _ = events.send(Event::Disconnected { connection });
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// Binds a tokio listener on `host:port` (an empty host means all addresses).
pub async fn bind(address: &(String, u16)) -> anyhow::Result<tokio::net::TcpListener> {
    let host = if address.0.is_empty() {
        "0.0.0.0"
    } else {
        address.0.as_str()
    };
    tokio::net::TcpListener::bind((host, address.1))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{}: {e}", address.1))
}
