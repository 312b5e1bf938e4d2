//! The driver's outbound links to other nodes: one task per configured peer
//! connects (through a `Connector`, tokio's or turmoil's), reports the link
//! up to the node task, writes the request frames the node sends over it,
//! reads the length-prefixed responses and hands each to the node, and on
//! any error or end of stream reports the link down and reconnects after a
//! bounded, jittered, seeded backoff.
//!
//! Every connection a link makes gets a fresh frame channel: frames the
//! node sent for one connection never leak onto the next (the node forgets
//! its requests in flight when it hears the link went down). Frames for a
//! link that is down are dropped; the node learns of that from the
//! link-down report it gets (or already got).
//!
//! Frames that may leave only after a sync (`after_sync`) wait here
//! (`HeldFrames`) until that sync completes, and are dropped if it fails
//! or their link goes down first.
//!
//! With no peers configured nothing here runs: no task, no channel.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::rng::Rng;
use sluice_core::storage::Storage;
use sluice_core::{Channel, Node, NodeId, Now};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::AbortHandle;

use crate::serve::{read_frame, Event, FrameError};

/// The first reconnect delay after a link fails; each failure doubles it.
pub const PEER_RECONNECT_BACKOFF_MIN_MS: u64 = 50;
/// The longest reconnect delay: a peer that comes back is found within this.
pub const PEER_RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;
/// How long one connection attempt may take before it counts as failed (a
/// peer whose host is gone may never answer the SYN).
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Response frames a link may have handed to the node task and not yet
/// seen handled; past this the link stops reading (a peer that answers
/// more than was asked cannot grow the node task's queue without bound).
const PEER_FRAMES_QUEUED_MAX: usize = 64;
/// Mixed into `Environment.seed` with the peer's id, so the backoff jitter
/// of each link is its own stream, apart from the node's generator.
const BACKOFF_SEED_SALT: u64 = 0x7065_6572_5f6c_696e;

/// A source of outbound connections: tokio's TCP (`TokioConnector`), or
/// turmoil's in the simulator. The counterpart of `Listener`.
pub trait Connector: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Connects to `host:port`.
    fn connect(
        &self,
        address: &(String, u16),
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Real TCP through tokio, with Nagle's algorithm off (peer requests are
/// small and latency matters more than packet count).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self, address: &(String, u16)) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect((address.0.as_str(), address.1)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A link to a peer as seen from outside the node: published after every
/// input on `Environment.peer_status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// The driver holds a connection to the peer and told the node so.
    pub up: bool,
    /// The peer answered the node's ApiVersions on this connection
    /// (`Node::peer_api_versions` is known).
    pub api_versions_known: bool,
}

/// Every configured peer's status, by id: up once every channel's
/// connection is up (and known once every one learned the versions).
pub type PeerStatuses = BTreeMap<NodeId, PeerStatus>;

/// What a link task tells the node task, in this order per connection:
/// `Up`, any number of `Frame`, `Down`.
pub(crate) enum PeerEvent {
    Up {
        link: LinkId,
        writer: mpsc::UnboundedSender<Bytes>,
        permits: Arc<Semaphore>,
    },
    Frame {
        link: LinkId,
        frame: Bytes,
    },
    Down {
        link: LinkId,
    },
}

/// One connection to a peer: which peer, and which kind of traffic (each
/// channel has its own connection, as Kafka's channels do).
pub(crate) type LinkId = (NodeId, Channel);

/// The node task's side of one link.
struct Link {
    task: AbortHandle,
    /// The connection the link reported up, until it reports it down.
    connection: Option<Connection>,
}

struct Connection {
    /// None once the node reset the link: the link task sees its frame
    /// channel close, drops the connection and reports it down.
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    /// Frames the link may still hand in before the node task handles one.
    permits: Arc<Semaphore>,
}

/// Everything the node task keeps about its peers.
pub(crate) struct PeerLinks {
    links: BTreeMap<LinkId, Link>,
    held: HeldFrames,
    status: Option<watch::Sender<PeerStatuses>>,
}

impl PeerLinks {
    /// No links yet; `start` spawns them once the node is ready.
    pub(crate) fn new(status: Option<watch::Sender<PeerStatuses>>) -> PeerLinks {
        PeerLinks {
            links: BTreeMap::new(),
            held: HeldFrames::default(),
            status,
        }
    }

    /// Spawns one link task per peer and channel, in id order.
    pub(crate) fn start<C: Connector>(
        &mut self,
        peers: BTreeMap<NodeId, (String, u16)>,
        connector: C,
        events: &mpsc::UnboundedSender<Event>,
        frame_bytes_max: usize,
        seed: u64,
    ) {
        assert!(self.links.is_empty(), "links start once");
        for (peer, address) in peers {
            for channel in Channel::ALL {
                let id = (peer, channel);
                let backoff = Backoff::new(seed, id);
                let task = tokio::spawn(link_task(
                    id,
                    address.clone(),
                    connector.clone(),
                    events.clone(),
                    frame_bytes_max,
                    backoff,
                ));
                let link = Link {
                    task: task.abort_handle(),
                    connection: None,
                };
                self.links.insert(id, link);
            }
        }
    }

    pub(crate) fn handle<S: Storage>(&mut self, node: &mut Node<S>, event: PeerEvent, now: Now) {
        match event {
            PeerEvent::Up {
                link: id,
                writer,
                permits,
            } => {
                let (peer, channel) = id;
                let link = self
                    .links
                    .get_mut(&id)
                    .expect("links report for themselves");
                assert!(
                    link.connection.is_none(),
                    "a link reports down before up again"
                );
                link.connection = Some(Connection {
                    writer: Some(writer),
                    permits,
                });
                tracing::info!(%peer, %channel, "link to peer up");
                node.handle_peer_link(now, peer, channel, true);
            }
            PeerEvent::Frame { link: id, frame } => {
                node.handle_peer_frame(now, id.0, id.1, frame);
                if let Some(connection) = &self.links[&id].connection {
                    connection.permits.add_permits(1);
                }
            }
            PeerEvent::Down { link: id } => {
                let (peer, channel) = id;
                let link = self
                    .links
                    .get_mut(&id)
                    .expect("links report for themselves");
                assert!(
                    link.connection.take().is_some(),
                    "a link reports up before down"
                );
                let dropped = self.held.forget_link(id);
                tracing::info!(%peer, %channel, held_frames_dropped = dropped, "link to peer down");
                node.handle_peer_link(now, peer, channel, false);
            }
        }
    }

    /// A frame the node sends to `peer`: now, after its sync, or never.
    pub(crate) fn send(&mut self, link: LinkId, frame: Bytes, after_sync: Option<u64>) {
        let frame = match after_sync {
            None => frame,
            Some(sync_id) => match self.held.admit(link, frame, sync_id) {
                Some(frame) => frame,
                None => return,
            },
        };
        self.write(link, frame);
    }

    /// Sync `id` completed: frames held for it leave (in the order the node
    /// sent them) or, if it failed, are dropped.
    pub(crate) fn sync_completed(&mut self, id: u64, ok: bool) {
        for (link, frame) in self.held.complete(id, ok) {
            self.write(link, frame);
        }
    }

    /// The node gave up on the link's connection (a request went
    /// unanswered): close it; the link task reports it down and reconnects.
    pub(crate) fn reset(&mut self, link: LinkId) {
        if let Some(connection) = self
            .links
            .get_mut(&link)
            .and_then(|l| l.connection.as_mut())
        {
            tracing::info!(peer = %link.0, channel = %link.1, "resetting the link to peer");
            connection.writer = None;
        }
    }

    fn write(&mut self, link: LinkId, frame: Bytes) {
        let peer = link.0;
        let writer = self
            .links
            .get(&link)
            .and_then(|link| link.connection.as_ref())
            .and_then(|connection| connection.writer.as_ref());
        match writer {
            // A closed channel means the link is already on its way down.
            Some(writer) => {
                if writer.send(frame).is_err() {
                    tracing::debug!(%peer, "link to peer closing; frame dropped");
                }
            }
            None => tracing::debug!(%peer, "no link to peer; frame dropped"),
        }
    }

    /// Publishes every peer's status, if anyone asked for it and it changed.
    pub(crate) fn publish<S: Storage>(&self, node: &Node<S>) {
        let Some(status) = &self.status else {
            return;
        };
        status.send_if_modified(|statuses| {
            let mut seen: BTreeMap<NodeId, PeerStatus> = BTreeMap::new();
            for (&(peer, channel), link) in &self.links {
                let status = seen.entry(peer).or_insert(PeerStatus {
                    up: true,
                    api_versions_known: true,
                });
                status.up &= link.connection.is_some();
                status.api_versions_known &= node.peer_api_versions(peer, channel).is_some();
            }
            let mut changed = false;
            for (peer, now) in seen {
                changed |= statuses.insert(peer, now) != Some(now);
            }
            changed
        });
    }

    /// Stops every link, in id order (the same on every run of a seed), and
    /// publishes them down.
    pub(crate) fn stop(&mut self) {
        for link in self.links.values_mut() {
            link.task.abort();
            link.connection = None;
        }
        if let Some(status) = &self.status {
            status.send_if_modified(|statuses| {
                let mut changed = false;
                for status in statuses.values_mut() {
                    changed |= *status != PeerStatus::default();
                    *status = PeerStatus::default();
                }
                changed
            });
        }
    }
}

/// Frames waiting for a sync. Syncs complete one at a time, in id order.
/// How many frames wait is bounded by the node's limit on requests in
/// flight per peer.
#[derive(Debug, Default)]
struct HeldFrames {
    /// In the order the node sent them.
    frames: VecDeque<(u64, LinkId, Bytes)>,
    /// The last sync completed (0 before any).
    sync_last: u64,
    /// The syncs that failed. At most one today: the core issues no sync
    /// after a failure (the log directory is offline until a restart).
    syncs_failed: BTreeSet<u64>,
}

impl HeldFrames {
    /// A frame that may leave after sync `sync_id`: returned if that sync
    /// already succeeded, held if it has not completed, dropped if it failed.
    fn admit(&mut self, link: LinkId, frame: Bytes, sync_id: u64) -> Option<Bytes> {
        if sync_id > self.sync_last {
            self.frames.push_back((sync_id, link, frame));
            None
        } else if self.syncs_failed.contains(&sync_id) {
            tracing::debug!(peer = %link.0, sync_id, "sync failed; frame to peer dropped");
            None
        } else {
            Some(frame)
        }
    }

    /// Sync `id` completed: the frames it releases, in the order sent.
    /// Every frame held is for a sync after the previous completion, so
    /// those for this one or earlier are all for this one.
    fn complete(&mut self, id: u64, ok: bool) -> Vec<(LinkId, Bytes)> {
        assert!(id > self.sync_last, "syncs complete in id order");
        self.sync_last = id;
        if !ok {
            self.syncs_failed.insert(id);
        }
        let mut released = Vec::new();
        let mut kept = VecDeque::with_capacity(self.frames.len());
        for (sync_id, link, frame) in self.frames.drain(..) {
            if sync_id > id {
                kept.push_back((sync_id, link, frame));
            } else {
                assert_eq!(sync_id, id, "frames for earlier syncs left or went");
                if ok {
                    released.push((link, frame));
                } else {
                    tracing::debug!(peer = %link.0, sync_id, "sync failed; frame to peer dropped");
                }
            }
        }
        self.frames = kept;
        released
    }

    /// A link went down: its held frames belong to a connection that is
    /// gone. Returns how many were dropped.
    fn forget_link(&mut self, link: LinkId) -> usize {
        let before = self.frames.len();
        self.frames.retain(|(_, held, _)| *held != link);
        before - self.frames.len()
    }
}

/// Reconnect delays: doubling from `PEER_RECONNECT_BACKOFF_MIN_MS` to
/// `PEER_RECONNECT_BACKOFF_MAX_MS`, each drawn between half the current
/// step and the step, so that nodes restarted together do not reconnect in
/// lockstep.
#[derive(Debug, Clone)]
struct Backoff {
    rng: Rng,
    step_ms: u64,
}

impl Backoff {
    fn new(seed: u64, link: LinkId) -> Backoff {
        let peer_bits = u64::from(link.0 .0 as u32) << 32;
        let channel_bits = link.1 as u64 + 1;
        Backoff {
            rng: Rng::from_seed(seed ^ BACKOFF_SEED_SALT ^ peer_bits ^ channel_bits),
            step_ms: PEER_RECONNECT_BACKOFF_MIN_MS,
        }
    }

    fn reset(&mut self) {
        self.step_ms = PEER_RECONNECT_BACKOFF_MIN_MS;
    }

    fn next_delay(&mut self) -> Duration {
        let half_ms = self.step_ms / 2;
        let delay_ms = half_ms + self.rng.next_u64() % (self.step_ms - half_ms + 1);
        assert!(delay_ms <= PEER_RECONNECT_BACKOFF_MAX_MS);
        self.step_ms = (self.step_ms * 2).min(PEER_RECONNECT_BACKOFF_MAX_MS);
        Duration::from_millis(delay_ms)
    }
}

/// One peer's link, for as long as the node runs: connect, carry frames
/// until the connection fails, report, back off, again.
async fn link_task<C: Connector>(
    link: LinkId,
    address: (String, u16),
    connector: C,
    events: mpsc::UnboundedSender<Event>,
    frame_bytes_max: usize,
    mut backoff: Backoff,
) {
    let connect_timeout = Duration::from_millis(PEER_CONNECT_TIMEOUT_MS);
    let peer = link.0;
    loop {
        match tokio::time::timeout(connect_timeout, connector.connect(&address)).await {
            Ok(Ok(stream)) => {
                backoff.reset();
                let (writer, frames) = mpsc::unbounded_channel();
                let permits = Arc::new(Semaphore::new(PEER_FRAMES_QUEUED_MAX));
                let up = PeerEvent::Up {
                    link,
                    writer,
                    permits: permits.clone(),
                };
                if events.send(Event::Peer(up)).is_err() {
                    return;
                }
                let why = carry(stream, frames, link, &events, &permits, frame_bytes_max).await;
                tracing::debug!(%peer, channel = %link.1, %why, "link to peer failed");
                if events.send(Event::Peer(PeerEvent::Down { link })).is_err() {
                    return;
                }
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "cannot connect to peer"),
            Err(_) => tracing::debug!(%peer, "connecting to peer timed out"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Writes the node's frames and reads the peer's responses on one
/// connection until either side fails; returns why.
async fn carry<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    link: LinkId,
    events: &mpsc::UnboundedSender<Event>,
    permits: &Semaphore,
    frame_bytes_max: usize,
) -> String {
    let peer = link.0;
    let (mut read_half, mut write_half) = tokio::io::split(stream);
    let write = async {
        while let Some(frame) = frames.recv().await {
            if let Err(error) = write_half.write_all(&frame).await {
                return format!("write failed: {error}");
            }
        }
        "the node task let go of the link".to_string()
    };
    let read = async {
        loop {
            let frame = match read_frame(&mut read_half, frame_bytes_max).await {
                Ok(frame) => frame,
                Err(FrameError::Closed(error)) => return format!("read failed: {error}"),
                Err(FrameError::Size(length)) => {
                    tracing::warn!(%peer, length, frame_bytes_max, "bad frame size from peer; closing the link");
                    return format!("frame size {length} outside 0..={frame_bytes_max}");
                }
            };
            match permits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return "the node task let go of the link".to_string(),
            }
            if events
                .send(Event::Peer(PeerEvent::Frame { link, frame }))
                .is_err()
            {
                return "the node task stopped".to_string();
            }
        }
    };
    tokio::select! {
        why = write => why,
        why = read => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8) -> Bytes {
        Bytes::from(vec![byte])
    }

    #[test]
    fn held_frames_leave_in_order_when_their_sync_succeeds() {
        let mut held = HeldFrames::default();
        let (a, b) = ((NodeId(2), Channel::Raft), (NodeId(3), Channel::Raft));
        assert_eq!(held.admit(a, frame(1), 4), None);
        assert_eq!(held.admit(b, frame(2), 5), None);
        assert_eq!(held.admit(a, frame(3), 4), None);
        assert_eq!(held.complete(4, true), vec![(a, frame(1)), (a, frame(3))]);
        // Already succeeded: goes at once.
        assert_eq!(held.admit(a, frame(4), 4), Some(frame(4)));
        assert_eq!(held.complete(5, true), vec![(b, frame(2))]);
        assert!(held.frames.is_empty());
    }

    #[test]
    fn held_frames_are_dropped_when_their_sync_fails_or_their_link_goes_down() {
        let mut held = HeldFrames::default();
        let (a, b) = ((NodeId(2), Channel::Raft), (NodeId(3), Channel::Raft));
        assert_eq!(held.admit(a, frame(1), 2), None);
        assert_eq!(held.admit(b, frame(2), 2), None);
        assert_eq!(held.admit(a, frame(3), 3), None);
        assert_eq!(held.forget_link(b), 1);
        assert_eq!(held.complete(2, true), vec![(a, frame(1))]);
        assert_eq!(held.complete(3, false), vec![]);
        assert_eq!(held.admit(a, frame(4), 3), None, "its sync failed");
        assert_eq!(
            held.admit(a, frame(5), 2),
            Some(frame(5)),
            "its sync succeeded"
        );
        assert!(held.frames.is_empty());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_bound_and_resets() {
        let mut backoff = Backoff::new(7, (NodeId(2), Channel::Raft));
        let delays: Vec<u64> = (0..12)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        let mut step = PEER_RECONNECT_BACKOFF_MIN_MS;
        for delay in &delays {
            assert!(
                (step / 2..=step).contains(delay),
                "{delay} ms for a {step} ms step"
            );
            step = (step * 2).min(PEER_RECONNECT_BACKOFF_MAX_MS);
        }
        assert!(delays[10] >= PEER_RECONNECT_BACKOFF_MAX_MS / 2);
        backoff.reset();
        assert!(backoff.next_delay().as_millis() as u64 <= PEER_RECONNECT_BACKOFF_MIN_MS);
        // Seeded: the same seed and peer give the same delays, others not.
        let again: Vec<u64> = {
            let mut backoff = Backoff::new(7, (NodeId(2), Channel::Raft));
            (0..12)
                .map(|_| backoff.next_delay().as_millis() as u64)
                .collect()
        };
        assert_eq!(delays, again);
        let other: Vec<u64> = {
            let mut backoff = Backoff::new(7, (NodeId(3), Channel::Raft));
            (0..12)
                .map(|_| backoff.next_delay().as_millis() as u64)
                .collect()
        };
        assert_ne!(delays, other);
    }
}
