//! The node state machine: one broker (with its single-voter controller)
//! driven by inputs and drained of outputs, with no IO of its own.
//!
//! Inputs, each taking `now_ms` (wall-clock milliseconds as the driver or the
//! simulator sees them):
//! - `handle_connect` (with the peer's address, which the driver knows and
//!   the core cannot) / `handle_disconnect` for client connections;
//! - `handle_frame`: one request frame (without its length prefix);
//! - `handle_synced`: a sync requested by `Output::Sync` completed or failed;
//! - `handle_timeout`: the deadline from `poll_timeout` passed;
//! - `begin_shutdown`: start a clean stop.
//!
//! After every input the driver drains `poll_output` until it returns None,
//! then asks `poll_timeout` for the next deadline. Outputs are response
//! frames, connection closes and sync requests.
//!
//! Durability is group commit: every change that must survive a crash bumps
//! `write_seq`; at most one sync is in flight, covering every file changed
//! before it was issued; when it completes, `durable_seq` catches up, high
//! watermarks move, and the responses waiting for it are released. Responses
//! on a connection leave in request order, whatever each one waits for.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
// A peer address is a plain value the driver hands in with a connection
// (what it accepted); nothing here opens or resolves anything.
use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::config::{BrokerConfig, Mutation, TopicConfig};
use crate::group::{Coordinator, Resolved, Token};
use crate::log::PartitionLog;
use crate::metadata::{Change, MetadataLog, TopicRecord, METADATA_DIR};
use crate::rng::{base64_url, Rng};
use crate::storage::{Storage, SyncTarget};

/// Marks a clean stop: the next start may skip the recovery scan.
pub const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
/// Producer ids reserved at a time, as Kafka's controller hands them out.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Responses a connection may have queued before the driver stops reading from it.
pub const QUEUED_RESPONSES_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// What the driver needs to know about a frame it handed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameOutcome {
    /// The request will get a response (acks=0 produces do not).
    pub response_queued: bool,
}

/// A topic and its partition logs.
#[derive(Debug)]
pub struct Topic {
    pub id: [u8; 16],
    pub config: TopicConfig,
    pub partitions: Vec<PartitionLog>,
}

/// A reply slot in a connection's queue.
#[derive(Debug)]
pub(crate) struct Slot {
    pub header: ReplyHeader,
    pub state: SlotState,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyHeader {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

#[derive(Debug)]
pub(crate) enum SlotState {
    Ready(Bytes),
    /// Waits until `durable_seq >= seq`; then `reply` is encoded. If the
    /// storage fails first, `on_failure` is encoded instead.
    AfterSync {
        seq: u64,
        reply: Box<api::Reply>,
        on_failure: Box<api::Reply>,
    },
    /// A long-polling fetch: answered when enough bytes are readable or at the deadline.
    Fetch {
        request: Box<kafka_protocol::messages::FetchRequest>,
        deadline_ms: i64,
    },
    /// A group answer (JoinGroup, SyncGroup) the coordinator gives later.
    Deferred(Token),
}

#[derive(Debug)]
struct Connection {
    slots: VecDeque<Slot>,
    /// The peer as Kafka names a client host (`client_host`), e.g. "/127.0.0.1".
    client_host: String,
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

#[derive(Debug)]
struct InFlightSync {
    id: u64,
    seq: u64,
    /// Log end of each synced partition when the sync was issued.
    partition_ends: Vec<((String, i32), i64)>,
    shutdown: ShutdownStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownStep {
    None,
    /// Everything synced; next the marker is written.
    Flush,
    /// The marker's directory entry synced; the node is stopped.
    Marker,
}

pub struct Node<S: Storage> {
    pub(crate) storage: S,
    pub(crate) config: BrokerConfig,
    pub(crate) advertised: (String, u16),
    pub(crate) rng: Rng,
    pub(crate) cluster_id: String,
    pub(crate) metadata: MetadataLog,
    pub(crate) topics: BTreeMap<String, Topic>,
    connections: BTreeMap<ConnectionId, Connection>,
    outputs: VecDeque<Output>,
    /// Bumped by every change that must reach the disk.
    write_seq: u64,
    /// Every change up to this sequence is durable.
    durable_seq: u64,
    dirty_partitions: BTreeSet<(String, i32)>,
    dirty_other: BTreeSet<SyncTarget>,
    in_flight: Option<InFlightSync>,
    next_sync_id: u64,
    /// Set when a sync failed: acknowledged state can no longer be trusted to
    /// reach the disk, so nothing more is acknowledged until a restart.
    pub(crate) storage_failed: bool,
    shutdown: ShutdownStep,
    stopped: bool,
    next_retention_ms: i64,
    /// Next producer id to hand out, and the sequence that made its block durable.
    next_producer_id: i64,
    producer_block_seq: u64,
    /// The group coordinator of every group (this is the only broker).
    pub(crate) groups: Coordinator,
    /// Group answers ready for their deferred slots.
    resolved: BTreeMap<Token, (Resolved, u64)>,
    /// Set when deferred group answers came out during the current input.
    group_answers_ready: bool,
    next_token: Token,
}

impl<S: Storage> Node<S> {
    /// Opens the node's storage: replays the metadata log, recovers every
    /// partition log, and requests the start-up sync. The driver completes
    /// that sync before it accepts connections (`is_ready`).
    pub fn open(
        mut storage: S,
        config: BrokerConfig,
        advertised: (String, u16),
        seed: u64,
        now_ms: i64,
    ) -> io::Result<Node<S>> {
        let clean = storage.exists(CLEAN_SHUTDOWN_FILE);
        let mut dirty_other = BTreeSet::new();
        if clean {
            storage.remove_file(CLEAN_SHUTDOWN_FILE)?;
            dirty_other.insert(SyncTarget::Dir(String::new()));
        }
        tracing::info!(clean, "opening the log directory");
        let mut metadata = MetadataLog::open(&mut storage)?;
        let mut rng = Rng::from_seed(seed);
        let cluster_id = match metadata.cluster_id.clone() {
            Some(id) => id,
            None => {
                let id = base64_url(&rng.uuid());
                metadata.append(&mut storage, Change::Cluster { id: id.clone() })?;
                id
            }
        };
        let mut node = Node {
            storage,
            next_retention_ms: now_ms + config.retention_check_interval_ms,
            config,
            advertised,
            rng,
            cluster_id,
            metadata,
            topics: BTreeMap::new(),
            connections: BTreeMap::new(),
            outputs: VecDeque::new(),
            write_seq: 1,
            durable_seq: 0,
            dirty_partitions: BTreeSet::new(),
            dirty_other,
            in_flight: None,
            next_sync_id: 1,
            storage_failed: false,
            shutdown: ShutdownStep::None,
            stopped: false,
            next_producer_id: 0,
            producer_block_seq: 0,
            groups: Coordinator::new(0),
            resolved: BTreeMap::new(),
            group_answers_ready: false,
            next_token: 1,
        };
        node.groups.initial_rebalance_delay_ms = node.config.group_initial_rebalance_delay_ms;
        node.groups.same_assignment_for_all = node.config.mutated(Mutation::SameAssignmentForAll);
        // Ids of the last reserved block may have been handed out before a crash.
        node.next_producer_id = node.metadata.producer_id_block_end;
        node.remove_orphan_dirs()?;
        let records: Vec<TopicRecord> = node.metadata.topics.values().cloned().collect();
        for record in records {
            node.open_topic(&record, clean)?;
        }
        crate::api_group::load_offsets(&mut node, now_ms);
        node.maybe_sync();
        node.invariants();
        Ok(node)
    }

    /// Removes partition directories no topic owns (a crash during a deletion).
    fn remove_orphan_dirs(&mut self) -> io::Result<()> {
        for name in self.storage.list_dir("")? {
            let Some((topic, partition)) = name.rsplit_once('-') else {
                continue;
            };
            let Ok(partition) = partition.parse::<i32>() else {
                continue;
            };
            if name == METADATA_DIR {
                continue;
            }
            let owned = self
                .metadata
                .topics
                .get(topic)
                .is_some_and(|t| partition < t.partitions);
            if !owned && self.storage.list_dir(&name).is_ok() {
                tracing::warn!(dir = %name, "removing a partition directory no topic owns");
                remove_dir_all(&mut self.storage, &name)?;
                self.dirty_other.insert(SyncTarget::Dir(String::new()));
            }
        }
        Ok(())
    }

    pub(crate) fn open_topic(&mut self, record: &TopicRecord, clean: bool) -> io::Result<()> {
        let config = TopicConfig::new(&self.config, &record.configs).unwrap_or_else(|error| {
            tracing::error!(topic = %record.name, %error, "stored topic config is invalid; using defaults");
            TopicConfig::new(&self.config, &BTreeMap::new()).expect("defaults are valid")
        });
        let mut topic = Topic {
            id: record.id,
            config,
            partitions: Vec::new(),
        };
        for partition in 0..record.partitions {
            let dir = format!("{}-{partition}", record.name);
            let created = !self.storage.exists(&dir);
            let (log, recovery) =
                PartitionLog::open(&mut self.storage, &dir, topic.config.clone(), clean)?;
            if recovery.truncated_bytes > 0 || recovery.segments_removed > 0 {
                tracing::warn!(%dir, ?recovery, "recovered partition log");
            }
            if created {
                self.dirty_other.insert(SyncTarget::Dir(String::new()));
            }
            topic.partitions.push(log);
            self.dirty_partitions
                .insert((record.name.clone(), partition));
        }
        self.topics.insert(record.name.clone(), topic);
        self.write_seq += 1;
        Ok(())
    }

    /// True once the start-up sync completed; connections may be accepted.
    pub fn is_ready(&self) -> bool {
        self.durable_seq > 0
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Largest request frame accepted; the driver closes connections that announce more.
    pub fn frame_bytes_max(&self) -> usize {
        self.config.socket_request_bytes_max
    }

    /// A client connected from `peer`; its JoinGroups record the peer as
    /// the member's client host.
    pub fn handle_connect(&mut self, _now_ms: i64, connection: ConnectionId, peer: IpAddr) {
        let connection_state = Connection {
            slots: VecDeque::new(),
            client_host: client_host(peer),
        };
        self.connections.insert(connection, connection_state);
        self.invariants();
    }

    pub fn handle_disconnect(&mut self, _now_ms: i64, connection: ConnectionId) {
        self.connections.remove(&connection);
        self.invariants();
    }

    /// Handles one request frame. A frame that cannot be parsed closes the
    /// connection, as Kafka does.
    pub fn handle_frame(
        &mut self,
        now_ms: i64,
        connection: ConnectionId,
        frame: Bytes,
    ) -> FrameOutcome {
        let outcome = match self.parse_and_dispatch(now_ms, connection, frame) {
            Ok(outcome) => outcome,
            Err(why) => {
                tracing::warn!(connection = connection.0, %why, "closing connection after a bad request");
                self.close(connection);
                FrameOutcome {
                    response_queued: false,
                }
            }
        };
        self.maybe_sync();
        if std::mem::take(&mut self.group_answers_ready) {
            // A group answer may be for another member's connection.
            self.advance_all(now_ms);
        } else {
            self.advance(connection, now_ms);
        }
        self.invariants();
        outcome
    }

    fn parse_and_dispatch(
        &mut self,
        now_ms: i64,
        connection: ConnectionId,
        frame: Bytes,
    ) -> Result<FrameOutcome, String> {
        if !self.connections.contains_key(&connection) {
            return Err("frame on an unknown connection".into());
        }
        if frame.len() < 8 {
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
        let supported = api::supported_versions(api_key)
            .ok_or_else(|| format!("api {api_key:?} is not served"))?;
        if api_key == ApiKey::ApiVersions && version > supported.1 {
            // Kafka's fallback: an error encoded as ApiVersions v0, so the
            // client can retry with a version both sides speak.
            let header = ReplyHeader {
                api_key,
                version: 0,
                correlation_id,
            };
            let reply = api::Reply::ApiVersions(api::api_versions_response(35));
            self.push_slot(
                connection,
                header,
                SlotState::Ready(encode_reply(header, &reply)?),
            );
            return Ok(FrameOutcome {
                response_queued: true,
            });
        }
        if version < supported.0 || version > supported.1 {
            return Err(format!("unsupported version {version} of {api_key:?}"));
        }
        let mut buf = frame;
        let request_header =
            RequestHeader::decode(&mut buf, api_key.request_header_version(version))
                .map_err(|e| format!("bad request header: {e}"))?;
        let header = ReplyHeader {
            api_key,
            version,
            correlation_id: request_header.correlation_id,
        };
        let client_id = request_header.client_id.as_ref().map_or("", |c| c.as_str());
        match api::dispatch(self, now_ms, connection, header, client_id, &mut buf)? {
            None => Ok(FrameOutcome {
                response_queued: false,
            }),
            Some(state) => {
                self.push_slot(connection, header, state);
                Ok(FrameOutcome {
                    response_queued: true,
                })
            }
        }
    }

    /// Closes a connection from the node's side (e.g. a failed acks=0 produce).
    pub(crate) fn close(&mut self, connection: ConnectionId) {
        if self.connections.remove(&connection).is_some() {
            self.outputs.push_back(Output::Close { connection });
        }
    }

    fn push_slot(&mut self, connection: ConnectionId, header: ReplyHeader, state: SlotState) {
        if let Some(conn) = self.connections.get_mut(&connection) {
            conn.slots.push_back(Slot { header, state });
        }
    }

    /// The client host of a connection, as `handle_connect` recorded it.
    pub(crate) fn client_host_of(&self, connection: ConnectionId) -> Option<&str> {
        self.connections
            .get(&connection)
            .map(|c| c.client_host.as_str())
    }

    /// Responses queued on a connection and not yet handed to the driver.
    pub fn queued_responses(&self, connection: ConnectionId) -> usize {
        self.connections
            .get(&connection)
            .map_or(0, |c| c.slots.len())
    }

    /// Records that a change must reach the disk; returns its sequence.
    pub(crate) fn note_partition_write(&mut self, topic: &str, partition: i32) -> u64 {
        self.dirty_partitions.insert((topic.to_string(), partition));
        self.write_seq += 1;
        self.write_seq
    }

    pub(crate) fn note_other_write(&mut self, target: SyncTarget) -> u64 {
        self.dirty_other.insert(target);
        self.write_seq += 1;
        self.write_seq
    }

    /// Issues a sync of everything dirty, unless one is already in flight.
    fn maybe_sync(&mut self) {
        if self.in_flight.is_some() || self.storage_failed {
            return;
        }
        let mut targets: BTreeSet<SyncTarget> = std::mem::take(&mut self.dirty_other);
        targets.extend(self.metadata.take_dirty());
        let mut partition_ends = Vec::new();
        for key in std::mem::take(&mut self.dirty_partitions) {
            let Some(log) = self
                .topics
                .get_mut(&key.0)
                .and_then(|t| t.partitions.get_mut(key.1 as usize))
            else {
                continue;
            };
            targets.extend(log.take_dirty());
            partition_ends.push((key, log.log_end_offset()));
        }
        if targets.is_empty() && partition_ends.is_empty() && self.durable_seq == self.write_seq {
            return;
        }
        self.issue_sync(
            targets.into_iter().collect(),
            partition_ends,
            ShutdownStep::None,
        );
    }

    fn issue_sync(
        &mut self,
        targets: Vec<SyncTarget>,
        partition_ends: Vec<((String, i32), i64)>,
        shutdown: ShutdownStep,
    ) {
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        self.in_flight = Some(InFlightSync {
            id,
            seq: self.write_seq,
            partition_ends,
            shutdown,
        });
        self.outputs.push_back(Output::Sync { id, targets });
    }

    /// A sync completed (`Ok`) or failed (`Err`, with the reason).
    pub fn handle_synced(&mut self, now_ms: i64, id: u64, result: Result<(), String>) {
        let Some(sync) = self.in_flight.take() else {
            panic!("sync {id} completed but none is in flight");
        };
        assert_eq!(sync.id, id, "syncs complete in the order they were issued");
        match result {
            Ok(()) => {
                assert!(sync.seq >= self.durable_seq);
                self.durable_seq = sync.seq;
                let startup = sync.id == 1;
                for ((topic, partition), end) in sync.partition_ends {
                    if startup && self.config.mutated(Mutation::ForgetHighWatermark) {
                        continue;
                    }
                    if let Some(log) = self
                        .topics
                        .get_mut(&topic)
                        .and_then(|t| t.partitions.get_mut(partition as usize))
                    {
                        log.mark_durable(end.min(log.log_end_offset()));
                    }
                }
                self.continue_shutdown(sync.shutdown);
            }
            Err(why) => {
                // After a failed fsync the page cache may have dropped the
                // data: nothing it covered may be acknowledged, ever.
                tracing::error!(%why, "sync failed; the log directory is offline until a restart");
                self.storage_failed = true;
                if sync.shutdown != ShutdownStep::None {
                    self.stopped = true;
                }
            }
        }
        self.maybe_sync();
        self.advance_all(now_ms);
        self.invariants();
    }

    /// Starts a clean stop: sync every file, then write the clean-shutdown
    /// marker. New requests are still answered until the driver stops
    /// reading; `is_stopped` turns true when the marker is durable.
    pub fn begin_shutdown(&mut self, _now_ms: i64) {
        if self.shutdown != ShutdownStep::None {
            return;
        }
        self.shutdown = ShutdownStep::Flush;
        if self.storage_failed {
            self.stopped = true;
            return;
        }
        if self.in_flight.is_none() {
            self.issue_shutdown_flush();
        }
    }

    fn issue_shutdown_flush(&mut self) {
        let mut targets: BTreeSet<SyncTarget> = std::mem::take(&mut self.dirty_other);
        targets.extend(self.metadata.all_files());
        targets.insert(SyncTarget::Dir(String::new()));
        let mut ends = Vec::new();
        for (name, topic) in self.topics.iter_mut() {
            for (index, log) in topic.partitions.iter_mut().enumerate() {
                log.take_dirty();
                targets.extend(log.all_files());
                ends.push(((name.clone(), index as i32), log.log_end_offset()));
            }
        }
        self.dirty_partitions.clear();
        self.metadata.take_dirty();
        self.issue_sync(targets.into_iter().collect(), ends, ShutdownStep::Flush);
    }

    fn continue_shutdown(&mut self, finished: ShutdownStep) {
        match finished {
            ShutdownStep::Flush => {
                let written = self
                    .storage
                    .open(CLEAN_SHUTDOWN_FILE, true)
                    .map(|file| self.storage.close(file));
                match written {
                    Ok(()) => self.issue_sync(
                        vec![SyncTarget::Dir(String::new())],
                        Vec::new(),
                        ShutdownStep::Marker,
                    ),
                    Err(error) => {
                        tracing::error!(%error, "cannot write the clean-shutdown marker");
                        self.stopped = true;
                    }
                }
            }
            ShutdownStep::Marker => {
                tracing::info!("clean shutdown complete");
                self.stopped = true;
            }
            ShutdownStep::None => {
                if self.shutdown == ShutdownStep::Flush && self.in_flight.is_none() {
                    self.issue_shutdown_flush();
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now_ms: i64) {
        if now_ms >= self.next_retention_ms {
            self.next_retention_ms = now_ms + self.config.retention_check_interval_ms;
            self.apply_retention(now_ms);
            crate::api_group::expire_offsets(self, now_ms);
        }
        self.groups.expire(now_ms);
        self.collect_group_answers(now_ms);
        self.maybe_sync();
        self.advance_all(now_ms);
        self.invariants();
    }

    pub(crate) fn next_token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Every change made so far is durable once this sequence is.
    pub(crate) fn write_seq(&self) -> u64 {
        self.write_seq
    }

    /// Moves the coordinator's late answers to their slots; answers for
    /// connections that closed meanwhile are dropped.
    pub(crate) fn collect_group_answers(&mut self, now_ms: i64) {
        // Changed groups are recorded first; answers wait until that is durable.
        let changed = self.groups.take_changed();
        let record_seq = if changed.is_empty() {
            0
        } else {
            crate::api_group::write_group_metadata(self, now_ms, &changed)
        };
        let answers = self.groups.take_resolved();
        if answers.is_empty() {
            return;
        }
        self.group_answers_ready = true;
        let waiting: BTreeSet<Token> = self
            .connections
            .values()
            .flat_map(|c| c.slots.iter())
            .filter_map(|slot| match slot.state {
                SlotState::Deferred(token) => Some(token),
                _ => None,
            })
            .collect();
        for (token, answer) in answers {
            // A deferred answer may come out before its slot is queued (the
            // handler returns after the coordinator ran): keep the newest token.
            if waiting.contains(&token) || token == self.next_token {
                self.resolved.insert(token, (answer, record_seq));
            }
        }
    }

    fn apply_retention(&mut self, now_ms: i64) {
        if self.storage_failed {
            return;
        }
        let mut changed = Vec::new();
        for (name, topic) in self.topics.iter_mut() {
            for (index, log) in topic.partitions.iter_mut().enumerate() {
                match log.apply_retention(&mut self.storage, now_ms) {
                    Ok(0) => {}
                    Ok(_) => changed.push((name.clone(), index as i32)),
                    Err(error) => {
                        tracing::error!(topic = %name, partition = index, %error, "retention failed")
                    }
                }
            }
        }
        for (name, partition) in changed {
            self.note_partition_write(&name, partition);
        }
    }

    /// The earliest deadline the node wants a `handle_timeout` at.
    pub fn poll_timeout(&self) -> Option<i64> {
        let fetch_deadlines = self
            .connections
            .values()
            .filter_map(|c| match c.slots.front() {
                Some(Slot {
                    state: SlotState::Fetch { deadline_ms, .. },
                    ..
                }) => Some(*deadline_ms),
                _ => None,
            });
        fetch_deadlines
            .chain(std::iter::once(self.next_retention_ms))
            .chain(self.groups.next_deadline_ms())
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn advance_all(&mut self, now_ms: i64) {
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            self.advance(id, now_ms);
        }
    }

    /// Releases the responses at the front of a connection's queue that are ready.
    fn advance(&mut self, connection: ConnectionId, now_ms: i64) {
        loop {
            let Some(slot) = self
                .connections
                .get_mut(&connection)
                .and_then(|c| c.slots.pop_front())
            else {
                return;
            };
            match self.try_complete(slot, now_ms) {
                Ok(frame) => self.outputs.push_back(Output::Send { connection, frame }),
                Err(Some(slot)) => {
                    if let Some(conn) = self.connections.get_mut(&connection) {
                        conn.slots.push_front(slot);
                    }
                    return;
                }
                Err(None) => {
                    tracing::error!(
                        connection = connection.0,
                        "cannot encode a response; closing"
                    );
                    self.close(connection);
                    return;
                }
            }
        }
    }

    /// Encodes a slot's response if it is ready; gives the slot back if not.
    fn try_complete(&mut self, slot: Slot, now_ms: i64) -> Result<Bytes, Option<Slot>> {
        let reply = match slot.state {
            SlotState::Ready(frame) => return Ok(frame),
            SlotState::AfterSync {
                seq,
                reply,
                on_failure,
            } => {
                if seq <= self.durable_seq {
                    *reply
                } else if self.storage_failed {
                    *on_failure
                } else {
                    return Err(Some(Slot {
                        header: slot.header,
                        state: SlotState::AfterSync {
                            seq,
                            reply,
                            on_failure,
                        },
                    }));
                }
            }
            SlotState::Fetch {
                request,
                deadline_ms,
            } => match api::fetch_response(self, slot.header, &request, now_ms >= deadline_ms) {
                Some(response) => api::Reply::Fetch(response),
                None => {
                    return Err(Some(Slot {
                        header: slot.header,
                        state: SlotState::Fetch {
                            request,
                            deadline_ms,
                        },
                    }))
                }
            },
            SlotState::Deferred(token) => match self.resolved.remove(&token) {
                Some((resolved, seq)) if seq <= self.durable_seq || self.storage_failed => {
                    crate::api_group::deferred_reply(
                        resolved,
                        slot.header.version,
                        self.storage_failed && seq > self.durable_seq,
                    )
                }
                Some(waiting) => {
                    self.resolved.insert(token, waiting);
                    return Err(Some(Slot {
                        header: slot.header,
                        state: SlotState::Deferred(token),
                    }));
                }
                None => {
                    return Err(Some(Slot {
                        header: slot.header,
                        state: SlotState::Deferred(token),
                    }))
                }
            },
        };
        encode_reply(slot.header, &reply).map_err(|_| None)
    }

    pub fn invariants(&self) {
        assert!(self.durable_seq <= self.write_seq, "durable beyond written");
        if let Some(sync) = &self.in_flight {
            assert!(sync.seq <= self.write_seq && sync.seq >= self.durable_seq);
        }
        for conn in self.connections.values() {
            assert!(
                conn.slots.len() <= QUEUED_RESPONSES_MAX * 4,
                "connection queue unbounded"
            );
        }
    }

    /// Hands out a producer id that was never handed out before, even across
    /// restarts: ids come from blocks reserved in the metadata log. Returns
    /// the id and the sequence after which its block is durable.
    pub(crate) fn allocate_producer_id(&mut self) -> std::io::Result<(i64, u64)> {
        if self.next_producer_id >= self.metadata.producer_id_block_end {
            let block_end = self.next_producer_id + PRODUCER_ID_BLOCK;
            self.metadata
                .append(&mut self.storage, Change::ProducerIds { block_end })?;
            self.write_seq += 1;
            self.producer_block_seq = self.write_seq;
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        Ok((id, self.producer_block_seq))
    }

    /// Removes a topic's logs from storage (after its deletion was recorded).
    pub(crate) fn drop_topic_files(&mut self, name: &str, mut topic: Topic) -> io::Result<()> {
        for log in topic.partitions.iter_mut() {
            log.close(&mut self.storage);
            let dir = log.dir().to_string();
            remove_dir_all(&mut self.storage, &dir)?;
        }
        self.dirty_partitions.retain(|(t, _)| t != name);
        Ok(())
    }
}

/// Removes a directory and the files in it.
pub(crate) fn remove_dir_all<S: Storage + ?Sized>(storage: &mut S, dir: &str) -> io::Result<()> {
    for name in storage.list_dir(dir)? {
        storage.remove_file(&format!("{dir}/{name}"))?;
    }
    storage.remove_dir(dir)
}

/// Encodes a response frame: length, header, body.
pub(crate) fn encode_reply(header: ReplyHeader, reply: &api::Reply) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    let header_version = header.api_key.response_header_version(header.version);
    response_header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    reply.encode(&mut buf, header.version).map_err(|e| {
        format!(
            "cannot encode the {:?} v{} response: {e}",
            header.api_key, header.version
        )
    })?;
    let length = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&length.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests;
