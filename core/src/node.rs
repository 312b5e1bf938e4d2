//! The node state machine: one broker (with its single-voter controller)
//! driven by inputs and drained of outputs, with no IO of its own.
//!
//! Inputs, each taking `now` (the driver's monotonic and wall clocks):
//! - `handle_connect` (with the peer's address, which the driver knows and
//!   the core cannot) / `handle_disconnect` for client connections;
//! - `handle_frame`: one request frame (without its length prefix);
//! - `handle_peer_link`: the driver's connection to another node went up
//!   or down; `handle_peer_frame`: a response from that node;
//! - `handle_synced`: a sync requested by `Output::Sync` completed or failed;
//! - `handle_timeout`: the deadline from `poll_timeout` passed;
//! - `begin_shutdown`: start a clean stop.
//!
//! After every input the driver drains `poll_output` until it returns None,
//! then asks `poll_timeout` for the next deadline (monotonic). Outputs are
//! response frames, connection closes, sync requests and requests to other
//! nodes.
//!
//! The node composes the parts and owns what the handlers never see:
//! connections and the order of their replies (`Sessions`), what each reply
//! waits for, the timers, and the links to other nodes. The broker's state
//! (`Broker`) holds the logs, group commit and the coordinator. Every input
//! ends with `invariants()`.

use std::collections::{BTreeMap, VecDeque};
use std::io;
// A peer's address as a value (the driver hands it in with a connection);
// the core formats it as Kafka writes a client host and opens, resolves or
// connects nothing.
use std::net::IpAddr;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{Broker, GroupAnswer};
use crate::config::BrokerConfig;
use crate::durability::{Completed, SyncPurpose, SyncRequest};
use crate::group::Token;
use crate::handlers::{self, fetch::fetch_response, Context, Pending, WaitState};
use crate::metrics::Counters;
use crate::quorum::{Quorum, QuorumSettings};
use crate::raft::wire as raft_wire;
use crate::raft::Timeouts;
use crate::storage::{Storage, SyncTarget};
use crate::timer::{Timer, TimerTable};
pub use crate::types::Channel;
use crate::types::{NodeId, Now};
use crate::wire::reply::{decode_response, response_correlation_id};
use crate::wire::versions::api_versions_response;
use crate::wire::{
    encode_reply, encode_request, parse_request, Parsed, Reply, ReplyHeader, Request,
};

pub use crate::broker::{CLEAN_SHUTDOWN_FILE, PRODUCER_ID_BLOCK_SIZE};
use crate::session::Sessions;
pub use crate::session::{ConnectionId, Slot, SlotState};

#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// A response frame, length prefix included.
    Send {
        connection: ConnectionId,
        frame: Bytes,
    },
    /// Close a connection (bad input, or a failed acks=0 produce).
    Close { connection: ConnectionId },
    /// Make these targets durable, then call `handle_synced(id, ..)`.
    Sync { id: u64, targets: Vec<SyncTarget> },
    /// A request frame (length prefix included) for another node, over the
    /// driver's link to it. With `after_sync`, it may leave only once that
    /// sync completed; if the sync fails, the driver drops it.
    SendPeer {
        peer: NodeId,
        channel: Channel,
        frame: Bytes,
        after_sync: Option<u64>,
    },
    /// Drop the connection to `peer`: a request on it went unanswered for
    /// `PEER_REQUEST_TIMEOUT_MS` (a peer that froze, or a network that lost
    /// what was sent). The driver reports the link down, reconnects with its
    /// backoff, and reports it up again.
    ResetPeer { peer: NodeId, channel: Channel },
}

/// What the driver needs to know about a frame it handed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct FrameOutcome {
    /// The request will get a response (acks=0 produces do not).
    pub response_queued: bool,
}

/// A peer address as Kafka shows a client's host: Java's
/// `InetAddress.toString()` of an address without a host name, so "/" and
/// the address; IPv4-mapped IPv6 peers (a dual-stack listener) as IPv4, as
/// Java maps them, and IPv6 as Java writes it: eight groups, no `::`.
pub fn client_host(peer: IpAddr) -> String {
    match peer.to_canonical() {
        IpAddr::V4(v4) => format!("/{v4}"),
        IpAddr::V6(v6) => {
            let groups: Vec<String> = v6.segments().iter().map(|g| format!("{g:x}")).collect();
            format!("/{}", groups.join(":"))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownStep {
    None,
    /// The controller is moving this broker's leaderships away, until it
    /// says they moved or the deadline passes.
    Controlled {
        until_ms: i64,
    },
    /// Everything is being synced; next the marker is written.
    Flush,
}

/// Mixed into the node's seed for its Raft replica's own generator.
const QUORUM_SEED_SALT: u64 = 0x7261_6674_7175_6f72;

/// The ApiVersions version a node asks its peers with.
const PEER_API_VERSIONS_VERSION: i16 = 3;
/// Requests one node may have outstanding on a link to another.
const PEER_REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// How long a request to a peer may go unanswered before the link is reset:
/// Kafka's `controller.quorum.request.timeout.ms` default.
pub const PEER_REQUEST_TIMEOUT_MS: i64 = 2_000;

/// How long a shutting-down broker waits for the controller to move its
/// leaderships before it stops anyway.
const CONTROLLED_SHUTDOWN_MS: i64 = 5_000;

/// How often a leader checks its ISRs: half `replica.lag.time.max.ms`, as
/// Kafka does, and often enough that an ISR change lost on its way is asked
/// again soon after `ISR_CHANGE_TIMEOUT_MS`.
fn isr_check_interval_ms(config: &BrokerConfig) -> i64 {
    (config.replica_lag_time_max_ms / 2)
        .clamp(1, crate::broker::replicas::ISR_CHANGE_TIMEOUT_MS / 2)
}

/// A request sent to a peer and not answered yet.
#[derive(Debug, Clone)]
struct SentRequest {
    api_key: ApiKey,
    version: i16,
    deadline_ms: i64,
    /// The Raft replica's message it carries, to read the answer by.
    raft: Option<crate::raft::Message>,
    /// A client's request forwarded to the controller: the token of the
    /// slot waiting for its answer.
    forwarded: Option<Token>,
    /// The transaction markers a WriteTxnMarkers carries.
    markers: txn_markers::MarkersSent,
    /// A verification question: the token of the request waiting for it.
    verifying: Option<Token>,
}

/// The node's link to another node, as the driver reports it.
#[derive(Debug, Default)]
struct PeerLink {
    up: bool,
    /// The node's own requests count up from `i32::MIN` through the
    /// negative ids, leaving the others to the Raft replica's fetches,
    /// which travel with their own ids.
    next_correlation_id: i32,
    /// Requests sent and not answered, by correlation id.
    in_flight: BTreeMap<i32, SentRequest>,
    /// What the peer serves, learned when the link came up.
    api_versions: Option<Vec<(i16, i16, i16)>>,
}

impl PeerLink {
    fn take_correlation_id(&mut self) -> i32 {
        self.next_correlation_id = match self.next_correlation_id {
            id if id >= -1 => i32::MIN,
            id => id + 1,
        };
        self.next_correlation_id
    }
}

/// What became of a slot at the front of its queue.
enum Completion {
    Frame(Bytes),
    NotYet(Slot),
    Unencodable(String),
}

pub struct Node<S: Storage> {
    node_id: NodeId,
    pub(crate) broker: Broker<S>,
    sessions: Sessions,
    timers: TimerTable,
    peers: BTreeMap<(NodeId, Channel), PeerLink>,
    outputs: VecDeque<Output>,
    /// Coordinator answers collected for requests that wait for them.
    group_answers: BTreeMap<Token, GroupAnswer>,
    next_token: Token,
    shutdown: ShutdownStep,
    stopped: bool,
    /// The controller quorum, when `controller.quorum.voters` names one.
    quorum: Option<Quorum>,
    /// Peers' Raft requests waiting for this replica's answer, and the
    /// answers (encoded) for their slots.
    raft_waiting: BTreeMap<Token, quorum::RaftWaiting>,
    raft_answers: BTreeMap<Token, Bytes>,
    /// Metadata entries committed and handed out so far.
    quorum_committed: i64,
    /// A metadata transaction among them not ended yet.
    metadata_txn: Option<cluster::OpenTransaction>,
    /// Clients' requests forwarded to the controller: the frame to answer
    /// with if the forward is lost, and the answers come back.
    forwarded_lost: BTreeMap<Token, Bytes>,
    forwarded_answers: BTreeMap<Token, Bytes>,
    /// This node as a broker of the cluster, and as its active controller.
    lifecycle: Option<cluster::Lifecycle>,
    controller: Option<cluster::ControllerState>,
    /// When this node, leading the quorum, saw each voter fetch and catch
    /// up (DescribeQuorum's timestamps).
    voter_fetches: BTreeMap<NodeId, describe_quorum::FetchTimes>,
    /// This follower's fetching, per leader.
    replica_fetches: BTreeMap<NodeId, replicas::LeaderFetch>,
    /// ISR changes sent to the controller and not answered yet.
    isr_changes_sent: Vec<crate::broker::replicas::IsrChange>,
}

impl<S: Storage> Node<S> {
    /// Opens the node's storage: replays the metadata log, recovers every
    /// partition log, and requests the start-up sync. The driver completes
    /// that sync before it accepts connections (`is_ready`).
    pub fn open(
        storage: S,
        config: BrokerConfig,
        advertised: (String, u16),
        seed: u64,
        now: Now,
    ) -> io::Result<Node<S>> {
        let node_id = NodeId(config.node_id);
        let mut timers = TimerTable::default();
        timers.set(
            Timer::Retention,
            now.monotonic_ms + config.retention_check_interval_ms,
        );
        timers.set(
            Timer::OffsetsExpiry,
            now.monotonic_ms + config.offsets_retention_check_interval_ms,
        );
        timers.set(
            Timer::TransactionSweep,
            now.monotonic_ms + config.txn_abort_check_interval_ms,
        );
        let mut broker = Broker::open(storage, config, advertised, seed, now)?;
        let quorum = match broker.config.quorum_voters.as_slice() {
            [] => None,
            voters => {
                let voters = voters.iter().map(|v| NodeId(v.id)).collect();
                let timeouts = Timeouts {
                    election_ms: broker.config.quorum_election_timeout_ms,
                    election_jitter_ms: broker.config.quorum_election_timeout_ms,
                    fetch_ms: broker.config.quorum_fetch_timeout_ms,
                };
                let clean = broker.clean_start();
                let mutation = broker.config.mutation.filter(|&m| broker.config.mutated(m));
                let Broker {
                    storage,
                    durability,
                    ..
                } = &mut broker;
                Some(Quorum::open(
                    storage,
                    durability,
                    QuorumSettings {
                        id: node_id,
                        voters,
                        timeouts,
                        seed: seed ^ QUORUM_SEED_SALT,
                        clean,
                        mutation,
                    },
                )?)
            }
        };
        let sessions = Sessions::new(broker.config.queued_requests_max);
        let mut node = Node {
            node_id,
            broker,
            sessions,
            timers,
            peers: BTreeMap::new(),
            outputs: VecDeque::new(),
            group_answers: BTreeMap::new(),
            next_token: 0,
            shutdown: ShutdownStep::None,
            stopped: false,
            quorum,
            raft_waiting: BTreeMap::new(),
            raft_answers: BTreeMap::new(),
            quorum_committed: 0,
            metadata_txn: None,
            forwarded_lost: BTreeMap::new(),
            forwarded_answers: BTreeMap::new(),
            lifecycle: None,
            controller: None,
            voter_fetches: BTreeMap::new(),
            replica_fetches: BTreeMap::new(),
            isr_changes_sent: Vec::new(),
        };
        if node.quorum.is_some() {
            let incarnation_id = uuid::Uuid::from_bytes(node.broker.rng.uuid());
            node.lifecycle = Some(cluster::Lifecycle::new(incarnation_id));
            let mut view = crate::broker::ClusterView::default();
            view.image.keep_leader_epoch = node
                .broker
                .config
                .mutated(crate::config::Mutation::KeepLeaderEpoch);
            node.broker.cluster = Some(view);
            node.timers.set(
                Timer::IsrCheck,
                now.monotonic_ms + isr_check_interval_ms(&node.broker.config),
            );
            // Replicated partitions only: a node alone's high watermark is
            // its synced log end, found again at start.
            node.timers.set(
                Timer::HighWatermarkCheckpoint,
                now.monotonic_ms + node.broker.config.high_watermark_checkpoint_interval_ms,
            );
        }
        node.settle(now);
        Ok(node)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The controller quorum, when this node is a voter of one.
    pub fn quorum(&self) -> Option<&Quorum> {
        self.quorum.as_ref()
    }

    /// Proposes records to the metadata log, when this node's replica
    /// leads the quorum; the offset of the last, committed once
    /// `quorum_committed` passes it.
    pub fn quorum_propose(
        &mut self,
        now: Now,
        records: Vec<Bytes>,
    ) -> Result<i64, crate::raft::ProposeError> {
        let Some(quorum) = &mut self.quorum else {
            return Err(crate::raft::ProposeError::NotLeader {
                leader_hint: None,
                leader_epoch: 0,
            });
        };
        let Broker {
            storage,
            durability,
            ..
        } = &mut self.broker;
        let result = quorum.propose(storage, durability, now.monotonic_ms, records);
        self.settle(now);
        result
    }

    /// Reads a partition's log from `offset` below `limit`, whole batches up
    /// to `bytes_max` from one segment (for checkers that compare replicas).
    pub fn read_log(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        limit: i64,
        bytes_max: usize,
    ) -> io::Result<Bytes> {
        let Broker {
            storage, topics, ..
        } = &mut self.broker;
        match topics.partition(topic, partition) {
            Some(held) => held.log.read(storage, offset, limit, bytes_max, true),
            None => Ok(Bytes::new()),
        }
    }

    /// Metadata entries committed and handed out to this node.
    pub fn quorum_committed(&self) -> i64 {
        self.quorum_committed
    }

    /// Whether the last stop was clean, and what opening the partition
    /// logs found (at start; partitions created since add to it).
    pub fn recovery(&self) -> (bool, crate::topics::OpenedSummary) {
        (self.broker.clean_start(), self.broker.topics.opened)
    }

    /// True once the start-up sync completed; connections may be accepted.
    pub fn is_ready(&self) -> bool {
        self.broker.durability.durable_seq() > 0
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn cluster_id(&self) -> &str {
        &self.broker.cluster_id
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.broker.config
    }

    /// The broker's state, for tests and tools that read it.
    pub fn broker(&self) -> &Broker<S> {
        &self.broker
    }

    /// The storage, for the driver to start a sync the node asked for.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.broker.storage
    }

    /// Largest request frame accepted; the driver closes connections that announce more.
    pub fn frame_bytes_max(&self) -> usize {
        self.broker.config.socket_request_bytes_max
    }

    /// Responses queued on a connection and not yet handed to the driver.
    pub fn queued_responses(&self, connection: ConnectionId) -> usize {
        self.sessions.queued(connection)
    }

    /// What a peer serves (api key, min, max), once its link is up and it answered.
    pub fn peer_api_versions(&self, peer: NodeId, channel: Channel) -> Option<&[(i16, i16, i16)]> {
        self.peers.get(&(peer, channel))?.api_versions.as_deref()
    }

    /// A client connected from `peer`; its JoinGroups record the peer as
    /// the member's client host.
    pub fn handle_connect(&mut self, now: Now, connection: ConnectionId, peer: IpAddr) {
        self.sessions.open(connection, client_host(peer));
        self.settle(now);
    }

    pub fn handle_disconnect(&mut self, now: Now, connection: ConnectionId) {
        self.sessions.close(connection);
        self.timers.stop(Timer::FetchDeadline(connection));
        self.forget_orphan_creations();
        self.forget_orphan_raft();
        self.forget_orphan_forwardings();
        self.forget_orphan_verifications();
        self.settle(now);
    }

    /// Handles one request frame. A frame that cannot be parsed closes the
    /// connection, as Kafka does.
    pub fn handle_frame(
        &mut self,
        now: Now,
        connection: ConnectionId,
        frame: Bytes,
    ) -> FrameOutcome {
        if !self.sessions.contains(connection) {
            // The node closed it, and the driver had read this frame before
            // it saw the close.
            tracing::debug!(
                connection = connection.0,
                "frame on a closed connection; dropped"
            );
            return FrameOutcome {
                response_queued: false,
            };
        }
        self.follow_lease(now);
        let outcome = match self.dispatch(now, connection, frame) {
            Ok(outcome) => outcome,
            Err(why) => {
                tracing::warn!(connection = connection.0, %why, "closing connection after a bad request");
                self.close(connection);
                FrameOutcome {
                    response_queued: false,
                }
            }
        };
        self.settle_on(now, Some(connection));
        outcome
    }

    fn dispatch(
        &mut self,
        now: Now,
        connection: ConnectionId,
        frame: Bytes,
    ) -> Result<FrameOutcome, String> {
        if cluster::is_controller_api(&frame) {
            let queued = self.controller_request(now, connection, frame)?;
            return Ok(FrameOutcome {
                response_queued: queued,
            });
        }
        if quorum::is_raft_api(&frame) {
            let request = raft_wire::parse_request_frame(frame).map_err(|e| e.to_string())?;
            let queued = self.raft_request(now, connection, request.header, request.body)?;
            return Ok(FrameOutcome {
                response_queued: queued,
            });
        }
        let request = match parse_request(frame)? {
            Parsed::ApiVersionsTooNew { correlation_id } => {
                // Kafka's fallback: an error encoded as ApiVersions v0, so
                // the client can retry with a version both sides speak.
                let header = ReplyHeader {
                    api_key: ApiKey::ApiVersions,
                    version: 0,
                    correlation_id,
                };
                let reply = Reply::ApiVersions(api_versions_response(35));
                let frame = encode_reply(header, &reply)?;
                self.sessions.push(
                    connection,
                    Slot {
                        header,
                        state: SlotState::Ready(frame),
                    },
                );
                return Ok(FrameOutcome {
                    response_queued: true,
                });
            }
            Parsed::Request(request) => request,
        };
        if request.header.api_key == ApiKey::DescribeQuorum {
            return self.describe_quorum_request(now, connection, request);
        }
        if self.forward_to_controller(now, connection, &request) {
            return Ok(FrameOutcome {
                response_queued: true,
            });
        }
        if request.header.api_key == ApiKey::Fetch
            && self.quorum.is_some()
            && quorum::is_metadata_fetch(&request.header, &request.body)
        {
            let queued = self.raft_request(now, connection, request.header, request.body)?;
            return Ok(FrameOutcome {
                response_queued: queued,
            });
        }
        // A connection whose request waits for its transaction's
        // verification has the requests behind it handled after it, in
        // order. An acks=0 produce has no answer to queue, so it is not.
        if self.sessions.holds(connection) && !verify::acks_zero_produce(&request) {
            self.sessions.push(
                connection,
                Slot {
                    header: request.header,
                    state: SlotState::Deferred(Box::new(request)),
                },
            );
            return Ok(FrameOutcome {
                response_queued: true,
            });
        }
        self.next_token += 1;
        let token = self.next_token;
        let header = request.header;
        let Some(state) = self.handle_request(now, connection, request, token)? else {
            return Ok(FrameOutcome {
                response_queued: false,
            });
        };
        let verifying = matches!(state, SlotState::Verifying { .. });
        self.sessions.push(connection, Slot { header, state });
        if verifying {
            self.resume_held(now, connection);
        }
        Ok(FrameOutcome {
            response_queued: true,
        })
    }

    /// Hands a request to the broker under `token`: the state of its slot,
    /// or `None` when it gets no answer.
    fn handle_request(
        &mut self,
        now: Now,
        connection: ConnectionId,
        request: Request,
        token: Token,
    ) -> Result<Option<SlotState>, String> {
        let client_host = self
            .sessions
            .client_host(connection)
            .expect("checked by the caller");
        let context = Context {
            now,
            header: request.header,
            client_id: &request.client_id,
            client_host,
            token,
        };
        let mut body = request.body.clone();
        let pending = handlers::dispatch(&mut self.broker, context, &mut body)?;
        let state = match pending {
            Pending::Nothing => None,
            Pending::Now(reply) => Some(SlotState::Ready(encode_counted(
                &mut self.broker.metrics,
                request.header,
                &reply,
            )?)),
            Pending::After { wait, reply } => Some(SlotState::After { wait, reply }),
            Pending::Coordinator(answered) => {
                assert_eq!(answered, token, "a request waits for its own token");
                Some(SlotState::Coordinator(token))
            }
            Pending::Fetch(parked) => Some(SlotState::Fetch {
                parked,
                woken: true,
            }),
            Pending::TxnAdd(held) => Some(SlotState::TxnAdd(held)),
            Pending::Creating(wait) => Some(SlotState::Creating(wait)),
            Pending::Verify(ask) => {
                self.ask_coordinator(now, token, &ask);
                return Ok(Some(SlotState::Verifying {
                    token,
                    request: Box::new(request),
                }));
            }
        };
        self.broker.verifications.end(token);
        Ok(state)
    }

    /// Closes a connection from the node's side (e.g. a failed acks=0 produce).
    fn close(&mut self, connection: ConnectionId) {
        if self.sessions.close(connection) {
            self.timers.stop(Timer::FetchDeadline(connection));
            self.outputs.push_back(Output::Close { connection });
            self.forget_orphan_creations();
            self.forget_orphan_raft();
            self.forget_orphan_forwardings();
            self.forget_orphan_verifications();
        }
    }

    /// Creations whose requests' connections closed go on, and their
    /// outcomes are not kept for anyone.
    fn forget_orphan_creations(&mut self) {
        if self.broker.creations.is_busy() || self.broker.creations.holds_outcomes() {
            let waited = self.sessions.creation_jobs();
            self.broker.creations.forget_unwatched(&waited);
        }
    }

    /// The driver's link to another node came up or went down. On the way
    /// up the node asks the peer what it serves, as Kafka's network client
    /// does on every new connection.
    pub fn handle_peer_link(&mut self, now: Now, peer: NodeId, channel: Channel, up: bool) {
        assert_ne!(peer, self.node_id, "a node has no link to itself");
        let link = self.peers.entry((peer, channel)).or_default();
        link.up = up;
        let lost: Vec<SentRequest> = std::mem::take(&mut link.in_flight).into_values().collect();
        link.api_versions = None;
        self.answer_lost_forwardings(&lost);
        self.txn_markers_lost(now, &lost);
        self.verifications_lost(now, &lost);
        if !up && channel == Channel::Control {
            self.controller_link_lost(now);
        }
        if channel == Channel::Replica {
            self.replica_link_lost(peer);
        }
        if up {
            let request = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("sluice"))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
            self.send_peer(
                now,
                (peer, channel),
                ApiKey::ApiVersions,
                PEER_API_VERSIONS_VERSION,
                &request,
                None,
            );
        }
        self.arm_peer_timer(peer, channel);
        self.settle(now);
    }

    /// Arms a link's timer at its oldest unanswered request's deadline.
    fn arm_peer_timer(&mut self, peer: NodeId, channel: Channel) {
        let deadline = self
            .peers
            .get(&(peer, channel))
            .and_then(|link| link.in_flight.values().map(|r| r.deadline_ms).min());
        match deadline {
            Some(deadline) => self.timers.set(Timer::PeerRequest(peer, channel), deadline),
            None => self.timers.stop(Timer::PeerRequest(peer, channel)),
        }
    }

    /// A request to `peer` timed out: the link is reset, and until the
    /// driver reports it up again nothing is sent on it.
    fn reset_peer(&mut self, now: Now, peer: NodeId, channel: Channel) {
        let link = self.peers.entry((peer, channel)).or_default();
        let overdue = link
            .in_flight
            .values()
            .any(|r| r.deadline_ms <= now.monotonic_ms);
        if overdue {
            tracing::warn!(%peer, %channel, timeout_ms = PEER_REQUEST_TIMEOUT_MS, "a request to a peer went unanswered; resetting the link");
            link.up = false;
            let lost: Vec<SentRequest> =
                std::mem::take(&mut link.in_flight).into_values().collect();
            link.api_versions = None;
            self.answer_lost_forwardings(&lost);
            self.txn_markers_lost(now, &lost);
            self.verifications_lost(now, &lost);
            self.outputs.push_back(Output::ResetPeer { peer, channel });
            if channel == Channel::Control {
                self.controller_link_lost(now);
            }
            if channel == Channel::Replica {
                self.replica_link_lost(peer);
            }
        }
        self.arm_peer_timer(peer, channel);
    }

    fn send_peer<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        now: Now,
        (peer, channel): (NodeId, Channel),
        api_key: ApiKey,
        version: i16,
        body: &T,
        after_sync: Option<u64>,
    ) -> bool {
        self.send_peer_for(
            now,
            (peer, channel),
            api_key,
            version,
            body,
            after_sync,
            None,
        )
    }

    /// `send_peer`, remembering the slot a forwarded request answers.
    /// False when it could not be sent.
    #[allow(clippy::too_many_arguments)]
    fn send_peer_for<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        now: Now,
        (peer, channel): (NodeId, Channel),
        api_key: ApiKey,
        version: i16,
        body: &T,
        after_sync: Option<u64>,
        forwarded: Option<Token>,
    ) -> bool {
        self.send_peer_carrying(
            now,
            (peer, channel),
            (api_key, version),
            body,
            after_sync,
            (forwarded, Vec::new(), None),
        )
    }

    /// Sends transaction markers to the leader at the other end of `link`.
    fn send_peer_markers(
        &mut self,
        now: Now,
        link: (NodeId, Channel),
        request: &kafka_protocol::messages::WriteTxnMarkersRequest,
        markers: txn_markers::MarkersSent,
    ) -> bool {
        self.send_peer_carrying(
            now,
            link,
            (
                ApiKey::WriteTxnMarkers,
                txn_markers::WRITE_TXN_MARKERS_VERSION,
            ),
            request,
            None,
            (None, markers, None),
        )
    }

    /// Sends a verification question for the request `token`.
    fn send_peer_verifying(
        &mut self,
        now: Now,
        link: (NodeId, Channel),
        request: &kafka_protocol::messages::AddPartitionsToTxnRequest,
        token: Token,
    ) -> bool {
        self.send_peer_carrying(
            now,
            link,
            (ApiKey::AddPartitionsToTxn, verify::VERIFY_VERSION),
            request,
            None,
            (None, Vec::new(), Some(token)),
        )
    }

    /// Sends a request and remembers what its answer is for.
    fn send_peer_carrying<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        now: Now,
        (peer, channel): (NodeId, Channel),
        (api_key, version): (ApiKey, i16),
        body: &T,
        after_sync: Option<u64>,
        (forwarded, markers, verifying): (Option<Token>, txn_markers::MarkersSent, Option<Token>),
    ) -> bool {
        let client_id = format!("sluice-node-{}", self.node_id);
        let link = self.peers.entry((peer, channel)).or_default();
        assert!(link.up, "requests go only over links that are up");
        if link.in_flight.len() >= PEER_REQUESTS_IN_FLIGHT_MAX {
            tracing::warn!(%peer, "too many requests in flight to a peer; not sending");
            return false;
        }
        let correlation_id = link.take_correlation_id();
        match encode_request(api_key, version, correlation_id, &client_id, body) {
            Ok(frame) => {
                let sent = SentRequest {
                    api_key,
                    version,
                    deadline_ms: now.monotonic_ms + PEER_REQUEST_TIMEOUT_MS,
                    raft: None,
                    forwarded,
                    markers,
                    verifying,
                };
                link.in_flight.insert(correlation_id, sent);
                self.outputs.push_back(Output::SendPeer {
                    peer,
                    channel,
                    frame,
                    after_sync,
                });
                // Its deadline: a request whose answer never comes (a
                // network that lost it) resets the link, whatever else
                // does or does not arrive on it.
                self.arm_peer_timer(peer, channel);
                true
            }
            Err(error) => {
                tracing::error!(%peer, %error, "cannot encode a request to a peer");
                false
            }
        }
    }

    /// A response frame (without its length prefix) from a peer. A frame
    /// that answers nothing sent is logged and dropped.
    pub fn handle_peer_frame(&mut self, now: Now, peer: NodeId, channel: Channel, frame: Bytes) {
        self.follow_lease(now);
        let link = self.peers.entry((peer, channel)).or_default();
        let sent = response_correlation_id(&frame).and_then(|id| link.in_flight.remove(&id));
        if let Some(
            sent @ SentRequest {
                raft: Some(request),
                ..
            },
        ) = &sent
        {
            self.raft_response(now, peer, sent, request, frame);
            self.arm_peer_timer(peer, channel);
            self.settle(now);
            return;
        }
        if let Some(
            sent @ SentRequest {
                forwarded: Some(token),
                ..
            },
        ) = &sent
        {
            self.forwarded_answer(*token, sent, frame);
            self.arm_peer_timer(peer, channel);
            self.settle(now);
            return;
        }
        if let Some(
            sent @ SentRequest {
                verifying: Some(token),
                ..
            },
        ) = &sent
        {
            self.verification_answer(now, peer, *token, sent, frame);
            self.arm_peer_timer(peer, channel);
            self.settle(now);
            return;
        }
        let sent = match sent {
            Some(sent) if sent.api_key == ApiKey::WriteTxnMarkers => {
                self.txn_markers_response(now, peer, sent, frame);
                self.arm_peer_timer(peer, channel);
                self.settle(now);
                return;
            }
            other => other,
        };
        if let Some(
            sent @ SentRequest {
                api_key: ApiKey::BrokerRegistration | ApiKey::BrokerHeartbeat,
                ..
            },
        ) = &sent
        {
            self.controller_response(now, sent, frame);
            self.arm_peer_timer(peer, channel);
            self.settle(now);
            return;
        }
        match sent.map(|r| (r.api_key, r.version)) {
            Some((ApiKey::ApiVersions, version)) => {
                match decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, version, frame) {
                    Ok((_, response)) if response.error_code == 0 => {
                        link.api_versions = Some(
                            response
                                .api_keys
                                .iter()
                                .map(|k| (k.api_key, k.min_version, k.max_version))
                                .collect(),
                        );
                        tracing::debug!(%peer, "peer versions known");
                    }
                    Ok((_, response)) => {
                        tracing::warn!(%peer, error = response.error_code, "peer refused ApiVersions")
                    }
                    Err(error) => tracing::warn!(%peer, %error, "bad response from a peer"),
                }
            }
            Some((ApiKey::Fetch, version)) if channel == Channel::Replica => {
                self.replica_response(now, peer, version, frame)
            }
            Some((ApiKey::AlterPartition, version)) => {
                self.alter_partition_response(version, frame)
            }
            // The controller's answer to a creation this broker forwarded:
            // the client that wanted it retries and finds the topic.
            Some((ApiKey::CreateTopics | ApiKey::AllocateProducerIds, _)) => {
                tracing::debug!(%peer, "the controller answered a forwarded request")
            }
            Some((other, _)) => tracing::warn!(%peer, ?other, "unexpected response from a peer"),
            None => tracing::warn!(%peer, "a peer answered a request never sent"),
        }
        self.arm_peer_timer(peer, channel);
        self.settle(now);
    }

    /// A sync completed (`Ok`) or failed (`Err`, with the reason).
    pub fn handle_synced(&mut self, now: Now, id: u64, result: Result<(), String>) {
        let completed = self.broker.handle_synced(now, id, result);
        if let Some(quorum) = &mut self.quorum {
            let Broker {
                storage,
                durability,
                ..
            } = &mut self.broker;
            if quorum.is_started() {
                quorum.synced(storage, durability, now.monotonic_ms);
            } else if durability.durable_seq() > 0 {
                quorum.start(storage, durability, now.monotonic_ms);
            }
        }
        self.continue_shutdown(&completed);
        self.settle(now);
    }

    /// Starts a clean stop: sync every file, then write the clean-shutdown
    /// marker. New requests are still answered until the driver stops
    /// reading; `is_stopped` turns true when the marker is durable.
    pub fn begin_shutdown(&mut self, now: Now) {
        if self.shutdown == ShutdownStep::None {
            match self.lifecycle.as_mut() {
                Some(lifecycle) if lifecycle.serving() && !self.broker.storage_offline() => {
                    // A broker of a cluster first has its partitions' leaders
                    // moved, so their clients find the new ones at once.
                    tracing::info!(
                        "shutting down: asking the controller to move this broker's leaderships"
                    );
                    lifecycle.want_shut_down = true;
                    lifecycle.next_ms = now.monotonic_ms;
                    let until_ms = now.monotonic_ms + CONTROLLED_SHUTDOWN_MS;
                    self.shutdown = ShutdownStep::Controlled { until_ms };
                    self.timers.set(Timer::ControlledShutdown, until_ms);
                }
                _ => self.flush_for_shutdown(now),
            }
        }
        self.settle(now);
    }

    /// After a controlled shutdown's step: the moves are done (or it gave
    /// up waiting), so the node stops as a node alone would.
    fn tend_shutdown(&mut self, now: Now) {
        let ShutdownStep::Controlled { until_ms } = self.shutdown else {
            return;
        };
        let moved = self.lifecycle.as_ref().is_some_and(|l| l.may_shut_down);
        if !moved && now.monotonic_ms < until_ms {
            return;
        }
        if !moved {
            tracing::warn!(
                waited_ms = CONTROLLED_SHUTDOWN_MS,
                "the controller did not move this broker's leaderships in time; stopping anyway"
            );
        }
        self.timers.stop(Timer::ControlledShutdown);
        self.flush_for_shutdown(now);
    }

    /// Resigns the quorum's leadership and syncs everything, then writes
    /// the clean-shutdown marker.
    fn flush_for_shutdown(&mut self, now: Now) {
        // Nothing is opened after the final flush: creations under way
        // are undone, and answered.
        self.broker.abandon_creations();
        if self.broker.cluster.is_some() {
            // The last high watermarks, for the next start.
            self.broker.checkpoint_high_watermarks();
        }
        if let Some(quorum) = &mut self.quorum {
            let Broker {
                storage,
                durability,
                ..
            } = &mut self.broker;
            quorum.resign(storage, durability, now.monotonic_ms);
        }
        self.shutdown = ShutdownStep::Flush;
        if self.broker.storage_offline() {
            self.stopped = true;
        } else if !self.broker.durability.in_flight() {
            let sync = self.broker.flush_all();
            self.push_sync(sync);
        }
    }

    fn continue_shutdown(&mut self, completed: &Completed) {
        if self.shutdown != ShutdownStep::Flush {
            return;
        }
        if !completed.ok {
            self.stopped = true;
            return;
        }
        match completed.purpose {
            SyncPurpose::Changes => {
                let sync = self.broker.flush_all();
                self.push_sync(sync);
            }
            SyncPurpose::ShutdownFlush => match self.broker.write_shutdown_marker() {
                Ok(sync) => self.push_sync(sync),
                Err(error) => {
                    tracing::error!(%error, "cannot write the clean-shutdown marker");
                    self.stopped = true;
                }
            },
            SyncPurpose::ShutdownMarker => {
                tracing::info!("clean shutdown complete");
                self.stopped = true;
            }
        }
    }

    fn push_sync(&mut self, sync: SyncRequest) {
        self.outputs.push_back(Output::Sync {
            id: sync.id,
            targets: sync.targets,
        });
    }

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        for timer in self.timers.expired(now.monotonic_ms) {
            match timer {
                Timer::Retention => {
                    self.broker.apply_retention(now);
                    let interval = self.broker.config.retention_check_interval_ms;
                    self.timers.set(timer, now.monotonic_ms + interval);
                }
                Timer::OffsetsExpiry => {
                    self.broker.expire_offsets(now);
                    let interval = self.broker.config.offsets_retention_check_interval_ms;
                    self.timers.set(timer, now.monotonic_ms + interval);
                }
                Timer::TransactionSweep => {
                    self.broker.sweep_transactions(now);
                    let interval = self.broker.config.txn_abort_check_interval_ms;
                    self.timers.set(timer, now.monotonic_ms + interval);
                }
                // Looked at by `settle`, below.
                Timer::MarkerRetry => {}
                Timer::Groups => {
                    self.broker.expire_groups(now);
                    if let Some(next) = self.broker.groups.next_deadline_ms() {
                        assert!(
                            next > now.monotonic_ms,
                            "the coordinator handled every deadline due"
                        );
                    }
                }
                // The front fetch of the connection is answered below, at
                // its deadline.
                Timer::FetchDeadline(_) => {}
                Timer::PeerRequest(peer, channel) => self.reset_peer(now, peer, channel),
                Timer::Quorum => {
                    if let Some(quorum) = &mut self.quorum {
                        let Broker {
                            storage,
                            durability,
                            ..
                        } = &mut self.broker;
                        quorum.handle_timeout(storage, durability, now.monotonic_ms);
                    }
                }
                Timer::RaftAnswers => self.decline_overdue_raft(now),
                Timer::Cluster => self.cluster_timeout(now),
                // Both are looked at by `settle`, below.
                Timer::ReplicaFetch | Timer::ControlledShutdown => {}
                Timer::IsrCheck => {
                    self.broker.check_isr(now);
                    let interval = isr_check_interval_ms(&self.broker.config);
                    self.timers.set(timer, now.monotonic_ms + interval);
                }
                // A creation that came after the shutdown began is undone
                // too: nothing is opened after the final flush.
                Timer::Creations if self.shutdown != ShutdownStep::None => {
                    self.broker.abandon_creations()
                }
                Timer::Creations => self.broker.work_creations(),
                Timer::HighWatermarkCheckpoint => {
                    self.broker.checkpoint_high_watermarks();
                    let interval = self.broker.config.high_watermark_checkpoint_interval_ms;
                    self.timers.set(timer, now.monotonic_ms + interval);
                }
            }
        }
        self.settle(now);
    }

    /// The earliest deadline (monotonic) the node wants a `handle_timeout` at.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<i64> {
        self.timers.next_deadline_ms()
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The common end of every input: coordinator answers to the requests
    /// waiting for them, parked fetches woken by what moved, the next sync,
    /// replies released, timers armed, invariants checked.
    fn settle(&mut self, now: Now) {
        self.settle_on(now, None);
    }

    /// `settle`, after a frame on `only`: unless something every connection
    /// may wait for happened (a coordinator answer, a partition moved, a
    /// sync), only that connection's queue can have changed.
    fn settle_on(&mut self, now: Now, only: Option<ConnectionId>) {
        let mut everyone = only.is_none();
        let answers = self.broker.take_group_answers();
        if !answers.is_empty() {
            everyone = true;
            let waiting = self.sessions.waiting_tokens();
            for answer in answers {
                // Answers for requests whose connection closed are dropped.
                if waiting.contains(&answer.token) {
                    self.group_answers.insert(answer.token, answer);
                }
            }
        }
        if self.drain_quorum(now) {
            everyone = true;
        }
        self.tend_cluster(now);
        self.tend_shutdown(now);
        self.tend_replication(now);
        self.broker.tend_transactions(now);
        if self.broker.take_txn_completed() {
            // Adds held for a completing transaction may go on.
            everyone = true;
        }
        self.send_txn_markers(now);
        // What the controller proposed just now (and the fetches it wakes).
        if self.drain_quorum(now) {
            everyone = true;
        }
        if !self.raft_answers.is_empty() {
            everyone = true;
        }
        if self.broker.creations.take_ended() {
            // A creation ended (or a deletion undid one): its request may
            // be answered, on whichever connection it came.
            everyone = true;
        }
        let moved = self.broker.take_moved();
        let offline = self.broker.storage_offline();
        if !moved.is_empty() || offline {
            everyone = true;
            self.sessions.wake_fetches(&moved, offline);
        }
        if let Some(sync) = self.broker.next_sync() {
            self.push_sync(sync);
        }
        match only {
            Some(connection) if !everyone => self.advance(connection, now),
            _ => {
                for connection in self.sessions.ids() {
                    self.advance(connection, now);
                }
            }
        }
        match self.broker.groups.next_deadline_ms() {
            Some(deadline) => self.timers.set(Timer::Groups, deadline),
            None => self.timers.stop(Timer::Groups),
        }
        // Creations go on at the next step, after what came in meanwhile.
        if self.broker.creations.is_busy() {
            self.timers.set(Timer::Creations, now.monotonic_ms);
        } else {
            self.timers.stop(Timer::Creations);
        }
        match self.broker.transactions.retry_ms {
            Some(at) => {
                // One due now would fire again at once, for ever.
                assert!(
                    at > now.monotonic_ms,
                    "a marker retry due now is left armed"
                );
                self.timers.set(Timer::MarkerRetry, at)
            }
            None => self.timers.stop(Timer::MarkerRetry),
        }
        self.invariants();
    }

    /// Releases the replies at the front of a connection's queue that are
    /// ready, and arms the deadline of a fetch left at its front.
    fn advance(&mut self, connection: ConnectionId, now: Now) {
        while let Some(slot) = self.sessions.pop_front(connection) {
            match self.try_complete(slot, now) {
                Completion::Frame(frame) => {
                    self.outputs.push_back(Output::Send { connection, frame })
                }
                Completion::NotYet(slot) => {
                    self.sessions.push_front(connection, slot);
                    break;
                }
                Completion::Unencodable(error) => {
                    tracing::error!(connection = connection.0, %error, "cannot encode a response; closing");
                    self.close(connection);
                    return;
                }
            }
        }
        // The front slot's deadline: a parked fetch's, or a produce's
        // waiting for its high watermarks.
        let deadline = match self.sessions.front(connection) {
            Some(Slot {
                state: SlotState::Fetch { parked, .. },
                ..
            }) => Some(parked.deadline_ms),
            Some(Slot {
                state: SlotState::After { wait, .. },
                ..
            }) => wait.deadline_ms(),
            Some(Slot {
                state: SlotState::TxnAdd(held),
                ..
            }) => Some(held.deadline_ms),
            _ => None,
        };
        match deadline {
            Some(deadline) => self.timers.set(Timer::FetchDeadline(connection), deadline),
            None => self.timers.stop(Timer::FetchDeadline(connection)),
        }
    }

    /// An answer decided late (a coordinator's, a held request's): sent
    /// now, or once the write it reports is durable. `what` names it in
    /// the assertion that it is one of those two.
    fn complete_answer(
        &mut self,
        header: ReplyHeader,
        pending: Pending,
        now: Now,
        what: &str,
    ) -> Completion {
        match pending {
            Pending::Now(reply) => match encode_counted(&mut self.broker.metrics, header, &reply) {
                Ok(frame) => Completion::Frame(frame),
                Err(error) => Completion::Unencodable(error),
            },
            Pending::After { wait, reply } => self.try_complete(
                Slot {
                    header,
                    state: SlotState::After { wait, reply },
                },
                now,
            ),
            other => unreachable!("{what} is answered, not {other:?}"),
        }
    }

    /// The encoded reply of a slot whose wait is over; the slot back if not.
    fn try_complete(&mut self, slot: Slot, now: Now) -> Completion {
        let Slot { header, state } = slot;
        let encode =
            |metrics: &mut Counters, reply: &Reply| match encode_counted(metrics, header, reply) {
                Ok(frame) => Completion::Frame(frame),
                Err(error) => Completion::Unencodable(error),
            };
        match state {
            SlotState::Ready(frame) => Completion::Frame(frame),
            SlotState::After { wait, reply }
                if wait.deadline_ms().is_some_and(|d| now.monotonic_ms >= d)
                    && wait.state(&self.broker) == WaitState::Waiting =>
            {
                let unreached = wait.unreached(&self.broker);
                encode(&mut self.broker.metrics, &reply.timed_out(&unreached))
            }
            SlotState::After { wait, reply } => match wait.state(&self.broker) {
                WaitState::Done => {
                    let short = wait.under_min_insync(&self.broker);
                    if short.is_empty() {
                        encode(&mut self.broker.metrics, &reply)
                    } else {
                        tracing::warn!(partitions = ?short, "acks=all reached the high watermark with the ISR below min.insync.replicas");
                        encode(
                            &mut self.broker.metrics,
                            &reply.not_enough_replicas_after_append(&short),
                        )
                    }
                }
                WaitState::Failed if matches!(wait, handlers::Wait::Committed(_)) => {
                    encode(&mut self.broker.metrics, &reply.uncommitted())
                }
                WaitState::Failed
                    if matches!(wait, handlers::Wait::HighWatermarks(_))
                        && !self.broker.storage_offline() =>
                {
                    encode(&mut self.broker.metrics, &reply.leadership_lost())
                }
                WaitState::Failed => encode(&mut self.broker.metrics, &reply.unsynced()),
                WaitState::Waiting => Completion::NotYet(Slot {
                    header,
                    state: SlotState::After { wait, reply },
                }),
            },
            SlotState::Fetch { parked, woken } => {
                let deadline_passed = now.monotonic_ms >= parked.deadline_ms;
                let answer = if woken || deadline_passed {
                    fetch_response(
                        &mut self.broker,
                        now,
                        header.version,
                        &parked.request,
                        deadline_passed,
                    )
                } else {
                    None
                };
                match answer {
                    Some(response) => encode(&mut self.broker.metrics, &Reply::Fetch(response)),
                    None => Completion::NotYet(Slot {
                        header,
                        state: SlotState::Fetch {
                            parked,
                            woken: false,
                        },
                    }),
                }
            }
            SlotState::TxnAdd(held) => {
                let completing = self.broker.txn_completing(&held.transactional_id);
                if completing && now.monotonic_ms < held.deadline_ms {
                    return Completion::NotYet(Slot {
                        header,
                        state: SlotState::TxnAdd(held),
                    });
                }
                let pending = handlers::add_partitions_after_hold(
                    &mut self.broker,
                    now,
                    header.version,
                    held,
                );
                self.complete_answer(header, pending, now, "a held add")
            }
            SlotState::AfterCommit {
                offset,
                epoch,
                frame,
                lost,
            } => match self.commit_state(offset, epoch) {
                WaitState::Done => Completion::Frame(frame),
                WaitState::Failed => Completion::Frame(lost),
                WaitState::Waiting => Completion::NotYet(Slot {
                    header,
                    state: SlotState::AfterCommit {
                        offset,
                        epoch,
                        frame,
                        lost,
                    },
                }),
            },
            // Handled again (`resume_held`) once the verdicts are in.
            state @ (SlotState::Verifying { .. } | SlotState::Deferred(_)) => {
                Completion::NotYet(Slot { header, state })
            }
            SlotState::Forwarded(token) => match self.forwarded_answers.remove(&token) {
                Some(frame) => Completion::Frame(frame),
                None => Completion::NotYet(Slot {
                    header,
                    state: SlotState::Forwarded(token),
                }),
            },
            SlotState::Raft(token) => match self.raft_answers.remove(&token) {
                Some(frame) => Completion::Frame(frame),
                None => Completion::NotYet(Slot {
                    header,
                    state: SlotState::Raft(token),
                }),
            },
            SlotState::Creating(wait) => match wait.finish(&mut self.broker) {
                Ok(pending) => self.complete_answer(header, pending, now, "a creation"),
                Err(wait) => Completion::NotYet(Slot {
                    header,
                    state: SlotState::Creating(wait),
                }),
            },
            SlotState::Coordinator(token) => match self.group_answers.remove(&token) {
                Some(answer) => {
                    let pending = handlers::coordinator_reply(answer, header.version);
                    self.complete_answer(header, pending, now, "a coordinator reply")
                }
                None => Completion::NotYet(Slot {
                    header,
                    state: SlotState::Coordinator(token),
                }),
            },
        }
    }

    pub fn invariants(&self) {
        self.broker.invariants();
        self.sessions.invariants();
        self.broker
            .verifications
            .invariants(&self.sessions.verifying_tokens());
        for token in self.group_answers.keys() {
            assert!(*token <= self.next_token);
        }
        if let Some(quorum) = &self.quorum {
            quorum.invariants();
        }
        self.cluster_invariants();
        // A forwarded request waits for its answer or has it, never both.
        for token in self.forwarded_lost.keys() {
            assert!(*token <= self.next_token);
            assert!(
                !self.forwarded_answers.contains_key(token),
                "answered twice"
            );
        }
        // Every waiting Raft request has its slot; an answer is either
        // waiting for its slot to reach the front or the slot is gone.
        for token in self.raft_waiting.keys().chain(self.raft_answers.keys()) {
            assert!(*token <= self.next_token);
        }
        for token in self.raft_waiting.keys() {
            assert!(!self.raft_answers.contains_key(token), "answered twice");
        }
        // A walk over every slot: only on nodes of a quorum, the only ones
        // with Raft slots.
        if self.quorum.is_some() {
            for token in &self.sessions.raft_tokens() {
                assert!(
                    self.raft_waiting.contains_key(token) || self.raft_answers.contains_key(token),
                    "a raft slot with neither a wait nor an answer"
                );
            }
        }
        if self.stopped {
            assert!(self.shutdown != ShutdownStep::None || self.broker.storage_offline());
        }
    }
}

mod cluster;
mod describe_quorum;
mod gauges;
mod quorum;
mod replicas;
#[cfg(test)]
mod tests;
mod txn_markers;
mod verify;

/// Encodes a reply to a client and counts the error codes it carries.
fn encode_counted(
    metrics: &mut Counters,
    header: ReplyHeader,
    reply: &Reply,
) -> Result<Bytes, String> {
    let api_key = header.api_key as i16;
    reply.error_codes(&mut |code| metrics.error(api_key, code));
    encode_reply(header, reply)
}
