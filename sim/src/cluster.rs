//! `Cluster`: N real nodes (`Node<MemStorage>`, ids 1..=N) driven in one
//! thread with no runtime, for fast, deterministic tests of the state
//! machines of several brokers together. It sits beside the turmoil
//! simulator (`run`), which runs the real driver over a simulated network;
//! here the harness itself plays the driver, as quinn's `Pair` does.
//!
//! Time: one virtual monotonic clock, shared by every node, that never
//! goes back. Nothing sleeps: `step` takes the earliest pending thing,
//! either a queued event or a node's `poll_timeout` deadline, jumps the
//! clock to it and hands it to the node. Queued events are ordered by
//! (time, sequence), so events due at the same millisecond keep the order
//! they were queued in; a deadline fires after the events due at its
//! time. Each node reads its wall clock as the shared clock plus its own
//! offset, which a test may jump either way (`jump_wall_clock`).
//!
//! Delivery: every frame travels on a wire (a client's connection to a
//! node, or one node's requests to another) and arrives after a latency
//! drawn from the seed within `message_latency_ms_min..=max`, never before
//! an earlier frame of the same wire and direction (TCP's order). A
//! request from node A to node B arrives at B as a client frame on the
//! connection the harness opened on B for A's requests; B's response goes
//! back to A as `handle_peer_frame`. Syncs (`Output::Sync`) complete after
//! a latency within `sync_latency_ms_min..=max`; a sync covers each file as
//! long as it was when the sync was issued, and fails with probability
//! `sync_failures_per_million`, making nothing durable. Requests to peers
//! that wait for a sync (`SendPeer { after_sync }`) leave only once it
//! succeeded, and are dropped if it failed (`AfterSyncGate`).
//!
//! Faults: `cut` takes a link down (frames in flight on it are lost, both
//! sides get `handle_peer_link(false)`), `link_up` brings it back (both
//! sides get `true` once both nodes are ready), and `crash` loses a node's
//! unsynced writes, its connections and its events in flight, then reopens
//! it on what survived with a new seed.
//!
//! Every random choice comes from one generator seeded by the cluster's
//! seed, and only ordered maps are iterated, so a seed replays exactly. The
//! harness keeps a trace of what it delivered, stamped with time, and its
//! hash (`trace_hash`) for determinism tests. Every run is bounded by
//! `steps_max`, so a livelock fails the test instead of hanging it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_core::config::BrokerConfig;
use sluice_core::rng::Rng;
use sluice_core::storage::{MemStorage, SyncTarget};
use sluice_core::wire::encode_request;
use sluice_core::wire::reply::{decode_response, response_correlation_id};
use sluice_core::{Channel, ConnectionId, Node, NodeId, Now, Output};

use crate::trace::fnv1a;

mod after_sync;
pub use after_sync::{AfterSyncGate, HELD_FRAMES_MAX};

/// Every node's wall clock at monotonic zero, before its own offset
/// (2026-01-01T00:00:00Z).
pub const WALL_EPOCH_MS: i64 = 1_767_225_600_000;
/// Trace lines kept for reading (the hash covers all of them).
pub const TRACE_LINES_KEPT_MAX: usize = 10_000;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub seed: u64,
    /// Nodes, with ids 1..=nodes.
    pub nodes: i32,
    /// Broker config pairs shared by every node; `node.id` is set per node.
    pub broker: Vec<(String, String)>,
    pub message_latency_ms_min: i64,
    pub message_latency_ms_max: i64,
    pub sync_latency_ms_min: i64,
    pub sync_latency_ms_max: i64,
    pub sync_failures_per_million: u64,
    /// Steps one `run_until` or `run_for` may take before it fails.
    pub steps_max: u64,
}

impl ClusterConfig {
    pub fn new(seed: u64, nodes: i32) -> ClusterConfig {
        ClusterConfig {
            seed,
            nodes,
            broker: Vec::new(),
            message_latency_ms_min: 1,
            message_latency_ms_max: 5,
            sync_latency_ms_min: 2,
            sync_latency_ms_max: 20,
            sync_failures_per_million: 0,
            steps_max: 100_000,
        }
    }
}

/// A test's connection to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// What survives of a node's unsynced writes at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashLoss {
    /// Every unsynced byte is lost.
    LoseUnsynced,
    /// A seeded prefix of each file's unsynced tail reached the disk.
    TearUnsynced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WireId(u64);

/// Who sends the requests on a wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requester {
    Client(ClientId),
    /// A node's requests on one of its channels.
    Node(NodeId, Channel),
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requester::Client(client) => write!(f, "c{}", client.0),
            Requester::Node(node, channel) => write!(f, "n{node}/{channel}"),
        }
    }
}

/// A connection the harness carries: its requester, and the node that
/// answers on one of its connections.
#[derive(Debug, Clone, Copy)]
struct Wire {
    requester: Requester,
    node: NodeId,
    connection: ConnectionId,
}

#[derive(Debug)]
enum Event {
    /// A request frame (no length prefix) reaching the node that answers the wire.
    Request { wire: WireId, frame: Bytes },
    /// A response frame (length prefix included) reaching the wire's requester.
    Response { wire: WireId, frame: Bytes },
    /// The node closed a client's connection; the client learns it after
    /// the responses sent before.
    Closed { wire: WireId },
    /// A node closed a peer's connection: the link between them fails.
    LinkFailed {
        a: NodeId,
        b: NodeId,
        channel: Channel,
    },
    /// A sync finished on a node's disk; each file is covered up to its length.
    Synced(SyncDone),
}

#[derive(Debug)]
struct SyncDone {
    node: NodeId,
    incarnation: u64,
    id: u64,
    targets: Vec<(SyncTarget, u64)>,
    ok: bool,
}

impl Event {
    fn wire(&self) -> Option<WireId> {
        match self {
            Event::Request { wire, .. } | Event::Response { wire, .. } => Some(*wire),
            Event::Closed { wire } => Some(*wire),
            Event::LinkFailed { .. } | Event::Synced(_) => None,
        }
    }
}

/// One node of the cluster, in its current incarnation.
struct Member {
    node: Node<MemStorage>,
    incarnation: u64,
    wall_offset_ms: i64,
    connections_opened: u64,
    /// The node's open connections and the wire each carries.
    connections: BTreeMap<ConnectionId, WireId>,
    timer_ms: Option<i64>,
    gate: AfterSyncGate,
    syncs_ok: u64,
}

#[derive(Default)]
struct Client {
    /// None once the connection closed.
    wire: Option<WireId>,
    /// Response frames received and not taken, length prefix included.
    inbox: VecDeque<Bytes>,
    correlation_last: i32,
}

pub struct Cluster {
    config: ClusterConfig,
    rng: Rng,
    now_ms: i64,
    members: BTreeMap<NodeId, Member>,
    /// Pending events by (time, sequence).
    events: BTreeMap<(i64, u64), Event>,
    events_queued: u64,
    wires: BTreeMap<WireId, Wire>,
    wires_opened: u64,
    /// When the last frame queued on a wire arrives, per direction (true:
    /// toward the requester), so frames on a wire keep their order.
    arrival_last_ms: BTreeMap<(WireId, bool), i64>,
    /// Links a test wants up, as (lower id, higher id).
    links_wanted: BTreeSet<(NodeId, NodeId)>,
    /// Wires of links that are up, by (requester, responder).
    peer_wires: BTreeMap<(NodeId, NodeId, Channel), WireId>,
    clients: BTreeMap<ClientId, Client>,
    clients_opened: u64,
    trace: VecDeque<String>,
    trace_hash: u64,
}

impl Cluster {
    /// Opens every node at time zero; each requests its start-up sync,
    /// which completes as the cluster runs.
    pub fn new(config: ClusterConfig) -> Cluster {
        assert!(config.nodes >= 1, "a cluster has nodes");
        assert!(0 <= config.message_latency_ms_min);
        assert!(config.message_latency_ms_min <= config.message_latency_ms_max);
        assert!(0 <= config.sync_latency_ms_min);
        assert!(config.sync_latency_ms_min <= config.sync_latency_ms_max);
        let mut cluster = Cluster {
            rng: Rng::from_seed(config.seed),
            config,
            now_ms: 0,
            members: BTreeMap::new(),
            events: BTreeMap::new(),
            events_queued: 0,
            wires: BTreeMap::new(),
            wires_opened: 0,
            arrival_last_ms: BTreeMap::new(),
            links_wanted: BTreeSet::new(),
            peer_wires: BTreeMap::new(),
            clients: BTreeMap::new(),
            clients_opened: 0,
            trace: VecDeque::new(),
            trace_hash: FNV_OFFSET,
        };
        for id in 1..=cluster.config.nodes {
            cluster.open_member(NodeId(id), MemStorage::new(), 0, 0);
        }
        cluster
    }

    fn open_member(
        &mut self,
        id: NodeId,
        storage: MemStorage,
        incarnation: u64,
        wall_offset_ms: i64,
    ) {
        let mut pairs: BTreeMap<String, String> = self.config.broker.iter().cloned().collect();
        pairs.insert("node.id".into(), id.0.to_string());
        let broker = BrokerConfig::from_pairs(&pairs).expect("a valid broker config");
        // A new seed per node and per incarnation: a restarted node draws new ids.
        let seed = self.config.seed ^ ((id.0 as u64) << 32) ^ incarnation;
        let now = self.clock(wall_offset_ms);
        let advertised = (format!("node{id}"), 9092);
        let node = Node::open(storage, broker, advertised, seed, now)
            .unwrap_or_else(|error| panic!("seed {}: n{id} does not open: {error}", self.seed()));
        let member = Member {
            node,
            incarnation,
            wall_offset_ms,
            connections_opened: 0,
            connections: BTreeMap::new(),
            timer_ms: None,
            gate: AfterSyncGate::default(),
            syncs_ok: 0,
        };
        self.members.insert(id, member);
        self.drain(id);
    }

    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn node(&self, id: NodeId) -> &Node<MemStorage> {
        &self.member(id).node
    }

    pub fn is_ready(&self, id: NodeId) -> bool {
        self.node(id).is_ready()
    }

    /// Syncs that completed successfully in the node's current incarnation.
    pub fn syncs_ok(&self, id: NodeId) -> u64 {
        self.member(id).syncs_ok
    }

    /// The link between two nodes is up (both sides were told).
    /// True when every channel between `a` and `b` is connected.
    pub fn is_link_up(&self, a: NodeId, b: NodeId) -> bool {
        Channel::ALL
            .iter()
            .all(|&channel| self.peer_wires.contains_key(&(a, b, channel)))
    }

    /// The last trace lines, oldest first.
    pub fn trace(&self) -> impl Iterator<Item = &str> {
        self.trace.iter().map(String::as_str)
    }

    /// A hash of every trace line since the cluster started.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    fn member(&self, id: NodeId) -> &Member {
        self.members.get(&id).expect("a node of the cluster")
    }

    fn member_mut(&mut self, id: NodeId) -> &mut Member {
        self.members.get_mut(&id).expect("a node of the cluster")
    }

    fn clock(&self, wall_offset_ms: i64) -> Now {
        Now {
            monotonic_ms: self.now_ms,
            wall_ms: WALL_EPOCH_MS + self.now_ms + wall_offset_ms,
        }
    }

    /// Hands an input to a node at its clocks, then carries out what it
    /// asked for (for inputs the harness does not model itself).
    pub fn input<R>(
        &mut self,
        id: NodeId,
        input: impl FnOnce(&mut Node<MemStorage>, Now) -> R,
    ) -> R {
        let now = self.clock(self.member(id).wall_offset_ms);
        let result = input(&mut self.member_mut(id).node, now);
        self.drain(id);
        result
    }

    fn record(&mut self, line: String) {
        let line = format!("{} {line}", self.now_ms);
        self.trace_hash = fnv1a(self.trace_hash, line.as_bytes());
        self.trace_hash = fnv1a(self.trace_hash, b"\n");
        if self.trace.len() == TRACE_LINES_KEPT_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn draw(&mut self, min: i64, max: i64) -> i64 {
        min + (self.rng.next_u64() % (max - min + 1) as u64) as i64
    }

    // ---- faults and clocks ----

    /// Wants the link between `a` and `b` up; it comes up (both sides told,
    /// each asking the other its versions) as soon as both nodes are ready.
    pub fn link_up(&mut self, a: NodeId, b: NodeId) {
        assert!(a != b && self.members.contains_key(&a) && self.members.contains_key(&b));
        self.links_wanted.insert((a.min(b), a.max(b)));
        self.connect_links();
    }

    /// Cuts the link between `a` and `b` until `link_up`.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.links_wanted.remove(&(a.min(b), a.max(b)));
        for channel in Channel::ALL {
            self.link_down(a, b, channel, None);
        }
    }

    /// Moves a node's wall clock by `delta_ms` (either way); its monotonic
    /// clock is untouched.
    pub fn jump_wall_clock(&mut self, id: NodeId, delta_ms: i64) {
        self.member_mut(id).wall_offset_ms += delta_ms;
        self.record(format!("n{id} wall clock {delta_ms:+} ms"));
    }

    /// Crashes a node and reopens it at once on what its disk kept: its
    /// connections and links close, its frames and syncs in flight are
    /// lost. The new incarnation does its start-up sync like any other;
    /// its links come back once it is ready.
    pub fn crash(&mut self, id: NodeId, loss: CrashLoss) {
        let mut old = self.members.remove(&id).expect("a node of the cluster");
        let mut storage = std::mem::take(old.node.storage_mut());
        match loss {
            CrashLoss::LoseUnsynced => storage.crash(0),
            CrashLoss::TearUnsynced => {
                let rng = &mut self.rng;
                storage.crash_with(|_, tail| {
                    let kept = rng.next_u64() % (tail.len() as u64 + 1);
                    tail[..kept as usize].to_vec()
                })
            }
        }
        let incarnation = old.incarnation + 1;
        self.record(format!("n{id} crash ({loss:?}), incarnation {incarnation}"));
        self.events
            .retain(|_, event| !matches!(event, Event::Synced(done) if done.node == id));
        self.open_member(id, storage, incarnation, old.wall_offset_ms);
        // The fresh node knows none of the old connections: only the
        // clients and the other ends of its links learn of the crash.
        let clients: Vec<WireId> = (self.wires.iter())
            .filter(|(_, wire)| wire.node == id && matches!(wire.requester, Requester::Client(_)))
            .map(|(wire, _)| *wire)
            .collect();
        for wire in clients {
            self.close_wire(wire);
        }
        let links: Vec<(NodeId, Channel)> = (self.peer_wires.keys())
            .filter(|(from, _, _)| *from == id)
            .map(|(_, to, channel)| (*to, *channel))
            .collect();
        for (peer, channel) in links {
            self.link_down(id, peer, channel, Some(id));
        }
    }

    /// Brings up every wanted link whose two nodes are ready.
    fn connect_links(&mut self) {
        let due: Vec<(NodeId, NodeId, Channel)> = (self.links_wanted.iter())
            .filter(|(a, b)| self.is_ready(*a) && self.is_ready(*b))
            .flat_map(|&(a, b)| Channel::ALL.map(|channel| (a, b, channel)))
            .filter(|(a, b, channel)| !self.peer_wires.contains_key(&(*a, *b, *channel)))
            .collect();
        for (a, b, channel) in due {
            self.record(format!("link {a}-{b}/{channel} up"));
            // Both connections exist before either side sends on them.
            for (from, to) in [(a, b), (b, a)] {
                let wire = self.open_wire(to, Requester::Node(from, channel));
                self.peer_wires.insert((from, to, channel), wire);
            }
            self.input(a, |node, now| node.handle_peer_link(now, b, channel, true));
            self.input(b, |node, now| node.handle_peer_link(now, a, channel, true));
        }
    }

    /// Takes a link down: frames in flight on it are lost, and each side
    /// (but a node that just crashed) is told.
    fn link_down(&mut self, a: NodeId, b: NodeId, channel: Channel, crashed: Option<NodeId>) {
        // A failure reported on this link is moot, and must not take down
        // the next one between the same nodes.
        let pair = (a.min(b), a.max(b));
        self.events.retain(|_, event| match *event {
            Event::LinkFailed {
                a: x,
                b: y,
                channel: c,
            } => (x.min(y), x.max(y)) != pair || c != channel,
            _ => true,
        });
        let wires: Vec<WireId> = [(a, b, channel), (b, a, channel)]
            .iter()
            .filter_map(|key| self.peer_wires.remove(key))
            .collect();
        if wires.is_empty() {
            return;
        }
        self.record(format!("link {}-{}/{channel} down", a.min(b), a.max(b)));
        for wire in wires {
            self.close_wire(wire);
        }
        for (node, peer) in [(a, b), (b, a)] {
            if Some(node) != crashed {
                self.member_mut(node).gate.drop_link((peer, channel));
                self.input(node, |node, now| {
                    node.handle_peer_link(now, peer, channel, false)
                });
            }
        }
    }

    fn open_wire(&mut self, node: NodeId, requester: Requester) -> WireId {
        self.wires_opened += 1;
        let id = WireId(self.wires_opened);
        let member = self.member_mut(node);
        member.connections_opened += 1;
        let connection = ConnectionId(member.connections_opened);
        member.connections.insert(connection, id);
        let wire = Wire {
            requester,
            node,
            connection,
        };
        self.wires.insert(id, wire);
        let address = match requester {
            Requester::Client(_) => Ipv4Addr::new(192, 0, 2, 1),
            Requester::Node(from, _) => Ipv4Addr::new(10, 0, 0, from.0 as u8),
        };
        self.input(node, |node, now| {
            node.handle_connect(now, connection, IpAddr::V4(address))
        });
        id
    }

    /// Forgets a wire and what is in flight on it; tells the node that
    /// answers it, unless that node closed it itself or crashed.
    fn close_wire(&mut self, id: WireId) {
        let Some(wire) = self.wires.remove(&id) else {
            return;
        };
        self.arrival_last_ms.retain(|(w, _), _| *w != id);
        self.events.retain(|_, event| event.wire() != Some(id));
        let connections = &mut self.member_mut(wire.node).connections;
        if connections.get(&wire.connection) == Some(&id) {
            connections.remove(&wire.connection);
            self.input(wire.node, |node, now| {
                node.handle_disconnect(now, wire.connection)
            });
        }
        if let Requester::Client(client) = wire.requester {
            self.record(format!("c{} closed", client.0));
            self.clients.get_mut(&client).expect("a client").wire = None;
        }
    }

    // ---- clients ----

    /// Opens a client connection to a ready node.
    pub fn connect(&mut self, node: NodeId) -> ClientId {
        assert!(
            self.is_ready(node),
            "n{node} accepts connections once ready"
        );
        self.clients_opened += 1;
        let client = ClientId(self.clients_opened);
        self.record(format!("c{} connects to n{node}", client.0));
        let wire = self.open_wire(node, Requester::Client(client));
        let state = Client {
            wire: Some(wire),
            ..Client::default()
        };
        self.clients.insert(client, state);
        client
    }

    pub fn is_connected(&self, client: ClientId) -> bool {
        self.clients.get(&client).is_some_and(|c| c.wire.is_some())
    }

    /// Sends a request on an open client connection; returns its correlation id.
    pub fn send<T: Encodable>(
        &mut self,
        client: ClientId,
        api_key: ApiKey,
        version: i16,
        body: &T,
    ) -> i32 {
        let state = self.clients.get_mut(&client).expect("a client");
        let wire = state.wire.expect("requests go on open connections");
        state.correlation_last += 1;
        let correlation = state.correlation_last;
        let frame = encode_request(api_key, version, correlation, "cluster-test", body)
            .unwrap_or_else(|error| panic!("{error}"));
        let frame = frame.slice(4..);
        self.transmit(wire, false, Event::Request { wire, frame });
        correlation
    }

    /// True when the response with this correlation id arrived and was not taken.
    pub fn has_response(&self, client: ClientId, correlation: i32) -> bool {
        let inbox = &self.clients.get(&client).expect("a client").inbox;
        inbox
            .iter()
            .any(|frame| response_correlation_id(&frame[4..]) == Some(correlation))
    }

    /// Takes and decodes the response with this correlation id, if it arrived.
    pub fn take_response<T: Decodable>(
        &mut self,
        client: ClientId,
        api_key: ApiKey,
        version: i16,
        correlation: i32,
    ) -> Option<T> {
        let inbox = &mut self.clients.get_mut(&client).expect("a client").inbox;
        let at = (inbox.iter())
            .position(|frame| response_correlation_id(&frame[4..]) == Some(correlation))?;
        let frame = inbox.remove(at).expect("found").slice(4..);
        let (_, body) = decode_response(api_key, version, frame)
            .unwrap_or_else(|error| panic!("a response that decodes: {error}"));
        Some(body)
    }

    /// Sends a request and runs until its response arrives; None when the
    /// connection closed first.
    pub fn request<T: Encodable, R: Decodable>(
        &mut self,
        client: ClientId,
        api_key: ApiKey,
        version: i16,
        body: &T,
    ) -> Option<R> {
        let correlation = self.send(client, api_key, version, body);
        self.run_until(|c| c.has_response(client, correlation) || !c.is_connected(client));
        self.take_response(client, api_key, version, correlation)
    }

    // ---- running ----

    /// Runs until `done` holds. Fails after `steps_max` steps, or when
    /// nothing is left to happen.
    pub fn run_until(&mut self, mut done: impl FnMut(&Cluster) -> bool) {
        let mut steps = 0;
        while !done(self) {
            self.assert_within_steps(steps);
            assert!(
                self.step(),
                "seed {}: idle, and the condition is false",
                self.seed()
            );
            steps += 1;
        }
    }

    /// Runs everything due in the next `duration_ms`, then sets the clock
    /// to its end.
    pub fn run_for(&mut self, duration_ms: i64) {
        assert!(duration_ms >= 0, "time goes forward");
        let end_ms = self.now_ms + duration_ms;
        let mut steps = 0;
        while self.next().is_some_and(|(at_ms, _)| at_ms <= end_ms) {
            self.assert_within_steps(steps);
            let _ = self.step();
            steps += 1;
        }
        self.now_ms = end_ms;
    }

    fn assert_within_steps(&self, steps: u64) {
        if steps >= self.config.steps_max {
            let skipped = self.trace.len().saturating_sub(20);
            let tail: Vec<&str> = self.trace().skip(skipped).collect();
            panic!(
                "seed {}: still running after {steps} steps at {} ms; last events:\n{}",
                self.seed(),
                self.now_ms,
                tail.join("\n")
            );
        }
    }

    /// When the next thing happens, and the node whose deadline it is if
    /// it is not a queued event. A deadline fires after the events due
    /// at the same time.
    fn next(&self) -> Option<(i64, Option<NodeId>)> {
        let event = self.events.keys().next().map(|(at_ms, _)| (*at_ms, None));
        let timer = (self.members.iter())
            .filter_map(|(id, member)| member.timer_ms.map(|at_ms| (at_ms, Some(*id))))
            .min();
        [event, timer].into_iter().flatten().min()
    }

    /// Takes one step if something is due by `end_ms`; otherwise moves the
    /// clock to `end_ms` and returns false. For callers that act at their
    /// own times between steps.
    pub fn step_until(&mut self, end_ms: i64) -> bool {
        if self.next().is_some_and(|(at_ms, _)| at_ms <= end_ms) {
            self.step()
        } else {
            self.now_ms = self.now_ms.max(end_ms);
            false
        }
    }

    /// Jumps to the earliest event or deadline and hands it to its node;
    /// false when there is none.
    pub fn step(&mut self) -> bool {
        match self.next() {
            None => return false,
            Some((at_ms, Some(id))) => {
                self.now_ms = self.now_ms.max(at_ms);
                self.record(format!("n{id} timeout"));
                self.input(id, |node, now| node.handle_timeout(now));
            }
            Some((at_ms, None)) => {
                let (_, event) = self.events.pop_first().expect("an event");
                self.now_ms = self.now_ms.max(at_ms);
                self.deliver(event);
            }
        }
        self.connect_links();
        true
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::Request { wire, frame } => {
                let Wire {
                    requester,
                    node,
                    connection,
                } = self.wires[&wire];
                if self.member(node).connections.get(&connection) != Some(&wire) {
                    // The node closed this connection; the request is lost.
                    return self.record(format!("n{node} drops a request on a closed connection"));
                }
                self.record(format!("n{node} <- {requester} request {}", digest(&frame)));
                let _ = self.input(node, |node, now| node.handle_frame(now, connection, frame));
            }
            Event::Response { wire, frame } => {
                let Wire {
                    requester, node, ..
                } = self.wires[&wire];
                self.record(format!(
                    "{requester} <- n{node} response {}",
                    digest(&frame)
                ));
                match requester {
                    Requester::Client(client) => {
                        let state = self.clients.get_mut(&client).expect("a client");
                        state.inbox.push_back(frame);
                    }
                    Requester::Node(from, channel) => self.input(from, |requester, now| {
                        requester.handle_peer_frame(now, node, channel, frame.slice(4..))
                    }),
                }
            }
            Event::Closed { wire } => self.close_wire(wire),
            Event::LinkFailed { a, b, channel } => self.link_down(a, b, channel, None),
            Event::Synced(done) => self.synced(done),
        }
    }

    fn synced(&mut self, done: SyncDone) {
        let SyncDone {
            node,
            incarnation,
            id,
            targets,
            ok,
        } = done;
        let member = self.member_mut(node);
        assert_eq!(incarnation, member.incarnation, "purged at a crash");
        if ok {
            for (target, len_max) in &targets {
                member.node.storage_mut().sync_up_to(target, *len_max);
            }
            member.syncs_ok += 1;
        }
        // Requests held for this sync leave before anything the node sends
        // once it learns of the completion.
        let released = member.gate.synced(id, ok);
        self.record(format!(
            "n{node} sync {id} {}",
            if ok { "ok" } else { "failed" }
        ));
        for ((peer, channel), frame) in released {
            self.send_peer(node, peer, channel, frame);
        }
        let result = if ok {
            Ok(())
        } else {
            Err("simulated sync failure".into())
        };
        self.input(node, |node, now| node.handle_synced(now, id, result));
    }

    /// Carries out everything the node asked for since its last input,
    /// then reads its next deadline.
    fn drain(&mut self, id: NodeId) {
        while let Some(output) = self.member_mut(id).node.poll_output() {
            match output {
                Output::Send { connection, frame } => {
                    let wire = self.member(id).connections[&connection];
                    self.transmit(wire, true, Event::Response { wire, frame });
                }
                Output::Close { connection } => {
                    let wire = (self.member_mut(id).connections.remove(&connection))
                        .expect("the node closes its open connections");
                    match self.wires[&wire].requester {
                        Requester::Client(_) => self.transmit(wire, true, Event::Closed { wire }),
                        Requester::Node(from, channel) => self.queue(
                            self.now_ms,
                            Event::LinkFailed {
                                a: from,
                                b: id,
                                channel,
                            },
                        ),
                    }
                }
                Output::Sync { id: sync, targets } => self.issue_sync(id, sync, targets),
                // The link fails now; the next step connects it again.
                Output::ResetPeer { peer, channel } => self.queue(
                    self.now_ms,
                    Event::LinkFailed {
                        a: id,
                        b: peer,
                        channel,
                    },
                ),
                Output::SendPeer {
                    peer,
                    channel,
                    frame,
                    after_sync,
                } => {
                    let gate = &mut self.member_mut(id).gate;
                    if let Some(((peer, channel), frame)) =
                        gate.submit(after_sync, (peer, channel), frame)
                    {
                        self.send_peer(id, peer, channel, frame);
                    }
                }
            }
        }
        let timer_ms = self.member(id).node.poll_timeout();
        self.member_mut(id).timer_ms = timer_ms;
    }

    fn issue_sync(&mut self, node: NodeId, id: u64, targets: Vec<SyncTarget>) {
        let storage = self.member_mut(node).node.storage_mut();
        // What a sync is sure to cover is what the files held when it was issued.
        let targets = (targets.into_iter())
            .map(|target| match &target {
                SyncTarget::File(path) => {
                    let len = storage.len_of(path);
                    (target, len)
                }
                SyncTarget::Dir(_) => (target, u64::MAX),
            })
            .collect();
        let latency_ms = self.draw(
            self.config.sync_latency_ms_min,
            self.config.sync_latency_ms_max,
        );
        let ok = self.rng.next_u64() % 1_000_000 >= self.config.sync_failures_per_million;
        let incarnation = self.member(node).incarnation;
        let done = SyncDone {
            node,
            incarnation,
            id,
            targets,
            ok,
        };
        self.queue(self.now_ms + latency_ms, Event::Synced(done));
    }

    /// A request from one node to another (length prefix included), over
    /// their link; lost when the link is down.
    fn send_peer(&mut self, from: NodeId, to: NodeId, channel: Channel, frame: Bytes) {
        match self.peer_wires.get(&(from, to, channel)) {
            Some(&wire) => {
                let frame = frame.slice(4..);
                self.transmit(wire, false, Event::Request { wire, frame })
            }
            None => self.record(format!("n{from} drops a request to n{to}: link down")),
        }
    }

    /// Queues a frame on a wire after a drawn latency, never before the
    /// frame queued before it in the same direction.
    fn transmit(&mut self, wire: WireId, toward_requester: bool, event: Event) {
        let (min, max) = (
            self.config.message_latency_ms_min,
            self.config.message_latency_ms_max,
        );
        let latency_ms = self.draw(min, max);
        let last_ms = self
            .arrival_last_ms
            .entry((wire, toward_requester))
            .or_default();
        let at_ms = (self.now_ms + latency_ms).max(*last_ms);
        *last_ms = at_ms;
        self.queue(at_ms, event);
    }

    fn queue(&mut self, at_ms: i64, event: Event) {
        assert!(at_ms >= self.now_ms, "events are not queued in the past");
        self.events_queued += 1;
        self.events.insert((at_ms, self.events_queued), event);
    }
}

/// A frame's size and hash, for the trace.
fn digest(frame: &[u8]) -> String {
    format!("{}B {:016x}", frame.len(), fnv1a(FNV_OFFSET, frame))
}
