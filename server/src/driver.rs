//! The tokio driver: owns the sockets, the files, the clock and the syncer,
//! and turns the core's outputs into IO.
//!
//! One task runs the node. Each connection has a reader task (framing, the
//! size limit, back-pressure) and a writer task; they talk to the node task
//! through channels. Syncs run on a dedicated thread, one at a time, and
//! their completions come back to the node task as inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sluice_core::config::BrokerConfig;
use sluice_core::node::QUEUED_RESPONSES_MAX;
use sluice_core::{ConnectionId, Node, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use crate::disk::{FileDisk, SyncJob};

/// Wall-clock milliseconds since the Unix epoch: the `now` the core receives.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

enum Event {
    Connected {
        connection: ConnectionId,
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
}

/// Performs sync jobs on a thread of its own and reports `(id, result)`.
fn spawn_syncer(
    done: mpsc::UnboundedSender<(u64, Result<(), String>)>,
) -> std::sync::mpsc::Sender<(u64, SyncJob)> {
    let (jobs, inbox) = std::sync::mpsc::channel::<(u64, SyncJob)>();
    std::thread::Builder::new()
        .name("sluice-syncer".into())
        .spawn(move || {
            for (id, job) in inbox {
                let result = job.run().map_err(|e| e.to_string());
                if done.send((id, result)).is_err() {
                    return;
                }
            }
        })
        .expect("the syncer thread starts");
    jobs
}

/// A seed for the node's generator; only ids (topic, cluster) depend on it.
fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ ((std::process::id() as u64) << 32)
}

/// Runs a broker until `shutdown` resolves, then stops cleanly.
pub async fn serve(
    config: BrokerConfig,
    listener: TcpListener,
    advertised: (String, u16),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = std::path::PathBuf::from(&config.log_dirs);
    let disk = FileDisk::open(&data_dir)?;
    let mut node = Node::open(disk, config, advertised, fresh_seed(), now_ms())?;
    // The start-up sync makes recovered data durable before anything is served.
    while let Some(output) = node.poll_output() {
        if let Output::Sync { id, targets } = output {
            let result = node
                .storage_mut()
                .sync_job(&targets)
                .run()
                .map_err(|e| e.to_string());
            node.handle_synced(now_ms(), id, result);
        }
    }
    anyhow::ensure!(
        node.is_ready(),
        "the start-up sync of {} failed",
        data_dir.display()
    );
    tracing::info!(cluster_id = node.cluster_id(), address = %listener.local_addr()?, "serving");

    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let (synced_tx, mut synced) = mpsc::unbounded_channel();
    let syncer = spawn_syncer(synced_tx);
    let frame_bytes_max = node.frame_bytes_max();
    let accept = tokio::spawn(accept_loop(listener, events_tx, frame_bytes_max));
    let mut connections: BTreeMap<ConnectionId, ConnectionHandle> = BTreeMap::new();
    tokio::pin!(shutdown);
    let mut stopping = false;

    loop {
        drain(&mut node, &mut connections, &syncer);
        if node.is_stopped() {
            break;
        }
        let deadline = node.poll_timeout().map(|at| {
            let wait_ms = (at - now_ms()).clamp(0, 60_000) as u64;
            tokio::time::Instant::now() + Duration::from_millis(wait_ms)
        });
        let sleep = tokio::time::sleep_until(
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60)),
        );
        tokio::select! {
            Some(event) = events.recv() => handle_event(&mut node, &mut connections, event),
            Some((id, result)) = synced.recv() => node.handle_synced(now_ms(), id, result),
            _ = sleep => node.handle_timeout(now_ms()),
            _ = &mut shutdown, if !stopping => {
                tracing::info!("shutting down");
                stopping = true;
                accept.abort();
                // No new requests: what was appended before is in the final
                // flush, and the answers already owed still go out.
                for handle in connections.values() {
                    handle.reader.abort();
                }
                node.begin_shutdown(now_ms());
            }
        }
    }
    for (_, handle) in connections {
        handle.reader.abort();
    }
    Ok(())
}

fn handle_event(
    node: &mut Node<FileDisk>,
    connections: &mut BTreeMap<ConnectionId, ConnectionHandle>,
    event: Event,
) {
    match event {
        Event::Connected { connection, handle } => {
            connections.insert(connection, handle);
            node.handle_connect(now_ms(), connection);
        }
        Event::Frame { connection, frame } => {
            let outcome = node.handle_frame(now_ms(), connection, frame);
            if !outcome.response_queued {
                if let Some(handle) = connections.get(&connection) {
                    handle.permits.add_permits(1);
                }
            }
        }
        Event::Disconnected { connection } => {
            if let Some(handle) = connections.remove(&connection) {
                handle.reader.abort();
                node.handle_disconnect(now_ms(), connection);
            }
        }
    }
}

/// Carries out everything the node asked for.
fn drain(
    node: &mut Node<FileDisk>,
    connections: &mut BTreeMap<ConnectionId, ConnectionHandle>,
    syncer: &std::sync::mpsc::Sender<(u64, SyncJob)>,
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
                let job = node.storage_mut().sync_job(&targets);
                if syncer.send((id, job)).is_err() {
                    node.handle_synced(now_ms(), id, Err("the syncer thread stopped".into()));
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
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
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let connection = ConnectionId(next_id);
        tracing::debug!(connection = next_id, %peer, "connection opened");
        let (read_half, write_half) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(QUEUED_RESPONSES_MAX));
        let reader = tokio::spawn(read_loop(
            read_half,
            connection,
            events.clone(),
            permits.clone(),
            frame_bytes_max,
        ));
        tokio::spawn(write_loop(
            write_half,
            writer_rx,
            connection,
            events.clone(),
        ));
        let handle = ConnectionHandle {
            writer: writer_tx,
            permits,
            reader: reader.abort_handle(),
        };
        if events
            .send(Event::Connected { connection, handle })
            .is_err()
        {
            return;
        }
    }
}

async fn read_loop(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    connection: ConnectionId,
    events: mpsc::UnboundedSender<Event>,
    permits: Arc<Semaphore>,
    frame_bytes_max: usize,
) {
    let why = loop {
        let mut length = [0u8; 4];
        if stream.read_exact(&mut length).await.is_err() {
            break None;
        }
        let length = i32::from_be_bytes(length);
        if length < 0 || length as usize > frame_bytes_max {
            break Some(format!("frame size {length} outside 0..={frame_bytes_max}"));
        }
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

async fn write_loop(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
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

/// Binds the listener named by the config.
pub async fn bind(address: &(String, u16)) -> anyhow::Result<TcpListener> {
    let host = if address.0.is_empty() {
        "0.0.0.0"
    } else {
        address.0.as_str()
    };
    TcpListener::bind((host, address.1))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{}: {e}", address.1))
}
