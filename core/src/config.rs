//! Broker and topic configuration, under Kafka's key names and defaults.
//!
//! One table lists every key the broker knows: its name, its default, its
//! kind, and for topic keys the broker key that supplies the default. The
//! server's config file, CreateTopics and DescribeConfigs all go through it,
//! so a key is spelled and checked in one place.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Long,
    Bool,
    String,
    /// One of the listed words.
    Choice(&'static [&'static str]),
}

/// One known configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    /// Smallest accepted value for numbers.
    pub min: i64,
    /// For a topic key, the broker key whose value is its default.
    pub broker_key: Option<&'static str>,
    pub doc: &'static str,
}

const fn key(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    min: i64,
    doc: &'static str,
) -> Key {
    Key {
        name,
        kind,
        default,
        min,
        broker_key: None,
        doc,
    }
}

const fn topic(
    name: &'static str,
    broker: &'static str,
    kind: Kind,
    default: &'static str,
    min: i64,
) -> Key {
    Key {
        name,
        kind,
        default,
        min,
        broker_key: Some(broker),
        doc: "",
    }
}

const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];
const CLEANUP_POLICIES: &[&str] = &["delete"];
const COMPRESSION_TYPES: &[&str] = &["producer"];

/// Keys of the broker (server config file and DescribeConfigs of a broker).
pub const BROKER_KEYS: &[Key] = &[
    key("node.id", Kind::Int, "1", 0, "this node's id"),
    key(
        "listeners",
        Kind::String,
        "PLAINTEXT://127.0.0.1:9092",
        0,
        "address to listen on",
    ),
    key(
        "advertised.listeners",
        Kind::String,
        "",
        0,
        "address clients are told (defaults to listeners)",
    ),
    key(
        "metrics.listener",
        Kind::String,
        "",
        0,
        "host:port serving Prometheus metrics at /metrics, and /health and /ready (off when empty; 127.0.0.1:9644 is the usual choice)",
    ),
    key(
        "log.dirs",
        Kind::String,
        "./sluice-data",
        0,
        "directory holding the logs",
    ),
    key(
        "log.open.files.max",
        Kind::Long,
        "0",
        0,
        "segment and checkpoint files the broker holds open at once (Sluice's own bound): idle ones are closed, least recently used first, and reopened when next read or written, so partitions beyond the descriptor limit cost no descriptors while idle; a file whose writes no completed sync covers yet is synced through its own descriptor before it is closed (a writeback error is never lost with a descriptor). The rest of the descriptors are left to connections and syncs. 0 derives it from the descriptor limit, which the broker raises to its hard limit at start: half the soft limit, at least 8",
    ),
    key(
        "num.partitions",
        Kind::Int,
        "1",
        1,
        "partitions of an auto-created topic",
    ),
    key(
        "default.replication.factor",
        Kind::Int,
        "1",
        1,
        "replicas of an auto-created topic",
    ),
    key(
        "max.topic.partitions",
        Kind::Int,
        "1000",
        1,
        "partitions one topic may have; CreateTopics and CreatePartitions asking more are refused with INVALID_PARTITIONS before anything is created (Sluice's own bound; Kafka has none)",
    ),
    key(
        "max.broker.partitions",
        Kind::Int,
        "2000",
        1,
        "partition replicas one broker may host (KIP-578's name): each holds four open files per segment, so the default keeps 2,000 one-segment partitions within 8,000 descriptors; a create or growth past it is refused with POLICY_VIOLATION before anything is created",
    ),
    key(
        "auto.create.topics.enable",
        Kind::Bool,
        "true",
        0,
        "create unknown topics on Metadata and Produce",
    ),
    key(
        "message.max.bytes",
        Kind::Int,
        "1048588",
        0,
        "largest record batch accepted",
    ),
    key(
        "connections.max.idle.ms",
        Kind::Long,
        "600000",
        1,
        "a connection with no request arriving and no answer owed for this long is closed; a request must arrive whole within it once started, and a client must take some of its answers within it",
    ),
    key(
        "max.connections",
        Kind::Int,
        "2147483647",
        1,
        "connections held at once; further ones wait to be accepted",
    ),
    key(
        "max.connections.per.ip",
        Kind::Int,
        "2147483647",
        1,
        "connections one address may hold; further ones are closed at once",
    ),
    key(
        "message.decompression.ratio.max",
        Kind::Int,
        "64",
        1,
        "how many times max.message.bytes a produced batch's records may expand to when decompressed (Sluice's own bound; Kafka has none)",
    ),
    key(
        "socket.request.max.bytes",
        Kind::Int,
        "104857600",
        1,
        "largest request frame accepted",
    ),
    key(
        "queued.max.requests",
        Kind::Int,
        "64",
        1,
        "requests one connection may have read and not yet answered on its socket; no more are read from it until an answer is written (Kafka bounds its shared request queue with this name, default 500, and reads one request at a time per connection; Sluice lets a connection pipeline, and bounds each one)",
    ),
    key(
        "queued.max.response.bytes",
        Kind::Long,
        "16777216",
        1,
        "answer bytes one connection may have waiting to be written before no more requests are read from it (Sluice's own bound, per connection; a client that sends and never reads holds at most this plus the answers to requests already read)",
    ),
    key(
        "queued.max.request.bytes",
        Kind::Long,
        "268435456",
        -1,
        "memory for requests read in part or waiting to be handled, across all connections; a request finding no space stops its connection's reading until some is freed. The request with the fewest bytes left to read may go up to socket.request.max.bytes past it, so one is always read through and a small request is read even while half-sent large ones fill the bound. Kafka's default is -1 (no bound, as -1 or 0 here); 256 MiB holds a couple of the largest requests and thousands of ordinary ones, and keeps a flood of half-sent frames from taking the machine's memory",
    ),
    key(
        "log.segment.bytes",
        Kind::Int,
        "1073741824",
        14,
        "segment size before a roll",
    ),
    key(
        "log.roll.ms",
        Kind::Long,
        "604800000",
        1,
        "segment age before a roll",
    ),
    key(
        "log.retention.ms",
        Kind::Long,
        "604800000",
        -1,
        "age after which segments are deleted",
    ),
    key(
        "log.retention.bytes",
        Kind::Long,
        "-1",
        -1,
        "partition size above which old segments are deleted",
    ),
    key(
        "log.retention.check.interval.ms",
        Kind::Long,
        "300000",
        1,
        "how often retention runs",
    ),
    key(
        "log.index.interval.bytes",
        Kind::Int,
        "4096",
        0,
        "bytes between offset index entries",
    ),
    key(
        "log.message.timestamp.type",
        Kind::Choice(TIMESTAMP_TYPES),
        "CreateTime",
        0,
        "timestamp kept in batches",
    ),
    key(
        "log.message.timestamp.before.max.ms",
        Kind::Long,
        "9223372036854775807",
        0,
        "how far in the past a CreateTime record may be (INVALID_TIMESTAMP beyond)",
    ),
    key(
        "log.message.timestamp.after.max.ms",
        Kind::Long,
        "3600000",
        0,
        "how far in the future a CreateTime record may be (Kafka 4's default: 1 hour)",
    ),
    key(
        "log.cleanup.policy",
        Kind::Choice(CLEANUP_POLICIES),
        "delete",
        0,
        "what happens to old segments",
    ),
    key(
        "min.insync.replicas",
        Kind::Int,
        "1",
        1,
        "replicas needed for acks=all",
    ),
    key(
        "unclean.leader.election.enable",
        Kind::Bool,
        "false",
        0,
        "elect a live replica outside the ISR when no ISR member is live (acknowledged records may be lost)",
    ),
    key(
        "compression.type",
        Kind::Choice(COMPRESSION_TYPES),
        "producer",
        0,
        "batches are kept as produced",
    ),
    key(
        "group.initial.rebalance.delay.ms",
        Kind::Int,
        "3000",
        0,
        "how long the first rebalance of an empty group waits for more members",
    ),
    key(
        "offsets.retention.minutes",
        Kind::Int,
        "10080",
        1,
        "how long committed offsets of a group without members are kept",
    ),
    key(
        "offsets.retention.check.interval.ms",
        Kind::Long,
        "600000",
        1,
        "how often committed offsets past their retention are removed",
    ),
    key(
        "offsets.topic.num.partitions",
        Kind::Int,
        "50",
        1,
        "partitions of __consumer_offsets",
    ),
    key(
        "transaction.state.log.num.partitions",
        Kind::Int,
        "50",
        1,
        "partitions of __transaction_state",
    ),
    key(
        "transaction.max.timeout.ms",
        Kind::Int,
        "900000",
        1,
        "the longest transaction timeout a producer may ask for",
    ),
    key(
        "transactional.id.expiration.ms",
        Kind::Int,
        "604800000",
        1,
        "how long a transactional id without a transaction is kept",
    ),
    key(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        Kind::Int,
        "10000",
        1,
        "how often open transactions past their timeout are aborted",
    ),
    key(
        "transaction.remove.expired.transaction.cleanup.interval.ms",
        Kind::Int,
        "3600000",
        1,
        "how often expired transactional ids are removed",
    ),
    key(
        "process.roles",
        Kind::Choice(PROCESS_ROLES),
        "broker,controller",
        0,
        "this node's roles: broker, controller, or both",
    ),
    key(
        "controller.quorum.voters",
        Kind::String,
        "",
        0,
        "the controller quorum's voters, id@host:port,...; empty: this node alone, on the single-node metadata log",
    ),
    key(
        "controller.listener.names",
        Kind::String,
        "CONTROLLER",
        0,
        "listener names controllers serve on; Sluice serves the quorum on its one listener",
    ),
    key(
        "controller.quorum.election.timeout.ms",
        Kind::Int,
        "1000",
        1,
        "least wait for a leader before standing for election (a random part up to as much again is added)",
    ),
    key(
        "controller.quorum.fetch.timeout.ms",
        Kind::Int,
        "2000",
        1,
        "a voter with no answer from its leader for this long stands for election",
    ),
    key(
        "replica.lag.time.max.ms",
        Kind::Long,
        "30000",
        1,
        "a follower not caught up for this long leaves the ISR",
    ),
    key(
        "replica.fetch.max.bytes",
        Kind::Int,
        "1048576",
        1,
        "bytes a follower asks for per partition and fetch",
    ),
    key(
        "replica.fetch.wait.max.ms",
        Kind::Int,
        "500",
        0,
        "how long a leader holds a follower's fetch that finds nothing new",
    ),
    key(
        "replica.fetch.backoff.ms",
        Kind::Int,
        "1000",
        0,
        "a follower's pause after a failed fetch",
    ),
    key(
        "replica.high.watermark.checkpoint.interval.ms",
        Kind::Long,
        "5000",
        1,
        "how often the high watermarks are written to replication-offset-checkpoint",
    ),
    key(
        "broker.session.timeout.ms",
        Kind::Int,
        "9000",
        1,
        "a broker not heard from for this long is fenced",
    ),
    key(
        "broker.heartbeat.interval.ms",
        Kind::Int,
        "2000",
        1,
        "how often a broker sends its heartbeat to the controller",
    ),
];

const PROCESS_ROLES: &[&str] = &[
    "broker,controller",
    "controller,broker",
    "broker",
    "controller",
];

/// One voter of `controller.quorum.voters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

/// Parses `id@host:port,...` as Kafka writes `controller.quorum.voters`.
pub fn parse_voters(value: &str) -> Result<Vec<Voter>, String> {
    let mut voters: Vec<Voter> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, address) = part
            .split_once('@')
            .ok_or_else(|| format!("`{part}` is not id@host:port"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("`{id}` in `{part}` is not a node id"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("`{address}` in `{part}` has no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{port}` in `{part}` is not a port"))?;
        if host.is_empty() {
            return Err(format!("`{part}` has no host"));
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(format!("node {id} is named twice"));
        }
        voters.push(Voter {
            id,
            host: host.to_string(),
            port,
        });
    }
    if voters.len() > VOTERS_MAX {
        return Err(format!("{} voters, at most {VOTERS_MAX}", voters.len()));
    }
    voters.sort_by_key(|v| v.id);
    Ok(voters)
}

/// Voters a quorum may have (the replica's bound).
const VOTERS_MAX: usize = 16;

/// Keys of a topic (CreateTopics configs, DescribeConfigs of a topic).
pub const TOPIC_KEYS: &[Key] = &[
    topic(
        "segment.bytes",
        "log.segment.bytes",
        Kind::Int,
        "1073741824",
        14,
    ),
    topic("segment.ms", "log.roll.ms", Kind::Long, "604800000", 1),
    topic(
        "retention.ms",
        "log.retention.ms",
        Kind::Long,
        "604800000",
        -1,
    ),
    topic(
        "retention.bytes",
        "log.retention.bytes",
        Kind::Long,
        "-1",
        -1,
    ),
    topic(
        "index.interval.bytes",
        "log.index.interval.bytes",
        Kind::Int,
        "4096",
        0,
    ),
    topic(
        "max.message.bytes",
        "message.max.bytes",
        Kind::Int,
        "1048588",
        0,
    ),
    topic(
        "message.timestamp.type",
        "log.message.timestamp.type",
        Kind::Choice(TIMESTAMP_TYPES),
        "CreateTime",
        0,
    ),
    topic(
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
        Kind::Long,
        "9223372036854775807",
        0,
    ),
    topic(
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
        Kind::Long,
        "3600000",
        0,
    ),
    topic(
        "cleanup.policy",
        "log.cleanup.policy",
        Kind::Choice(CLEANUP_POLICIES),
        "delete",
        0,
    ),
    topic(
        "min.insync.replicas",
        "min.insync.replicas",
        Kind::Int,
        "1",
        1,
    ),
    topic(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        Kind::Bool,
        "false",
        0,
    ),
    topic(
        "compression.type",
        "compression.type",
        Kind::Choice(COMPRESSION_TYPES),
        "producer",
        0,
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownKey(String),
    BadValue {
        key: String,
        value: String,
        why: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::UnknownKey(key) => write!(f, "unknown configuration key `{key}`"),
            ConfigError::BadValue { key, value, why } => {
                write!(f, "bad value `{value}` for `{key}`: {why}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks a value against its key; returns the value in canonical form.
pub fn check_value(key: &Key, value: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::BadValue {
        key: key.name.into(),
        value: value.into(),
        why: why.into(),
    };
    let value = value.trim();
    match key.kind {
        Kind::Int | Kind::Long => {
            let number: i64 = value.parse().map_err(|_| bad("not a whole number"))?;
            if key.kind == Kind::Int && i32::try_from(number).is_err() {
                return Err(bad("out of the 32-bit range"));
            }
            if number < key.min {
                return Err(bad(&format!("must be at least {}", key.min)));
            }
            Ok(number.to_string())
        }
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(value.to_ascii_lowercase()),
            _ => Err(bad("must be true or false")),
        },
        Kind::String => Ok(value.to_string()),
        Kind::Choice(words) => words
            .iter()
            .find(|w| w.eq_ignore_ascii_case(value))
            .map(|w| w.to_string())
            .ok_or_else(|| bad(&format!("must be one of {}", words.join(", ")))),
    }
}

fn find(keys: &[Key], name: &str) -> Option<Key> {
    keys.iter().find(|k| k.name == name).copied()
}

/// A set of values over a key table: explicit values and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Values {
    pub explicit: BTreeMap<String, String>,
}

impl Values {
    /// Checks and stores every pair; the first bad one is the error.
    pub fn parse(keys: &[Key], pairs: &BTreeMap<String, String>) -> Result<Values, ConfigError> {
        let mut explicit = BTreeMap::new();
        for (name, value) in pairs {
            let key = find(keys, name).ok_or_else(|| ConfigError::UnknownKey(name.clone()))?;
            explicit.insert(name.clone(), check_value(&key, value)?);
        }
        Ok(Values { explicit })
    }
}

/// The broker's configuration, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub values: Values,
    pub node_id: i32,
    pub listeners: String,
    pub advertised_listeners: String,
    /// `metrics.listener`: where metrics are served; empty for nowhere.
    pub metrics_listener: String,
    pub log_dirs: String,
    /// `log.open.files.max`: files held open at once; None to derive the
    /// bound from the process's descriptor limit.
    pub open_files_max: Option<usize>,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// `max.topic.partitions`: partitions of one topic.
    pub topic_partitions_max: i32,
    /// `max.broker.partitions`: partition replicas hosted by one broker.
    pub broker_partitions_max: i64,
    pub auto_create_topics: bool,
    pub socket_request_bytes_max: usize,
    /// `message.decompression.ratio.max`.
    pub decompression_ratio_max: usize,
    /// `connections.max.idle.ms`.
    pub connections_idle_ms_max: i64,
    /// `max.connections` and `max.connections.per.ip`.
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    /// `queued.max.requests`: per connection.
    pub queued_requests_max: usize,
    /// `queued.max.response.bytes`: per connection.
    pub queued_response_bytes_max: usize,
    /// `queued.max.request.bytes`: across all connections; None when unbounded.
    pub queued_request_bytes_max: Option<usize>,
    pub retention_check_interval_ms: i64,
    pub group_initial_rebalance_delay_ms: i64,
    pub offsets_topic_partitions: i32,
    pub offsets_retention_ms: i64,
    pub offsets_retention_check_interval_ms: i64,
    /// `transaction.state.log.num.partitions`.
    pub txn_topic_partitions: i32,
    /// `transaction.max.timeout.ms`.
    pub txn_max_timeout_ms: i64,
    /// `transactional.id.expiration.ms`.
    pub txn_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub txn_abort_check_interval_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub txn_expiry_check_interval_ms: i64,
    /// `process.roles` includes `controller` / `broker`.
    pub controller: bool,
    pub broker: bool,
    /// `controller.quorum.voters`, sorted by id; empty for a node alone.
    pub quorum_voters: Vec<Voter>,
    pub quorum_election_timeout_ms: i64,
    pub quorum_fetch_timeout_ms: i64,
    pub broker_session_timeout_ms: i64,
    pub broker_heartbeat_interval_ms: i64,
    pub replica_lag_time_max_ms: i64,
    pub replica_fetch_max_bytes: i32,
    pub replica_fetch_wait_max_ms: i32,
    pub replica_fetch_backoff_ms: i64,
    /// `replica.high.watermark.checkpoint.interval.ms`.
    pub high_watermark_checkpoint_interval_ms: i64,
    /// A deliberately broken variant to run (feature `mutations` only).
    pub mutation: Option<Mutation>,
}

/// Named, deliberately broken variants of the node. The simulation shows
/// that its checkers catch each one. Only the `mutations` feature lets a
/// config select one (key `sluice.mutation`); without it they cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Answer produces before the sync that covers them completed.
    AckBeforeSync,
    /// Let consumers read appended data before it is durable.
    ReadBeforeSync,
    /// Trust the tail of a segment at recovery without checking CRCs.
    SkipRecoveryCrc,
    /// Leave an offset unused now and then when assigning offsets.
    OffsetGap,
    /// Report the high watermark as the log start after a restart, until
    /// the partition's next write.
    ForgetHighWatermark,
    /// Start without the committed offsets and groups recorded before.
    ForgetCommittedOffsets,
    /// Hand every member of a group the leader's own assignment.
    SameAssignmentForAll,
    /// Start the controller quorum without its `quorum-state` file (the
    /// epoch rebuilt from the log, the vote lost).
    ForgetQuorumState,
    /// A voter grants every candidate of an epoch whose log is good enough.
    VoteTwice,
    /// The quorum leader counts its unsynced entries toward the commit.
    CommitUnsyncedEntries,
    /// The quorum leader answers every fetch with entries, never with a
    /// diverging epoch, so followers never truncate.
    SkipDivergenceCheck,
    /// The quorum leader commits entries of earlier epochs once a majority
    /// holds them, without waiting for an entry of its own epoch on a
    /// majority (Raft's Figure 8): a later leader may overwrite them.
    CommitOlderEpoch,
    /// A partition follower cuts its log to its high watermark when it
    /// starts following, and never asks by epoch (Kafka before KIP-101).
    TruncateToHighWatermark,
    /// A partition follower reports its log end as synced, and fetches
    /// again before its appends are synced.
    FollowerReportsUnsynced,
    /// A partition leader acknowledges acks=all and moves its high
    /// watermark with its ISR below `min.insync.replicas`.
    AcksBelowMinInsync,
    /// A partition leader answers followers' fetches without checking their
    /// last fetched epoch, so a diverged log is never cut.
    SkipFetchEpochCheck,
    /// A partition leader answers acks=all once its own sync completes,
    /// without waiting for the high watermark (for its followers).
    AcksAllAfterLocalSync,
    /// A partition leader answers a produce with the offset after its
    /// batch (the log end after the append) instead of the batch's base
    /// offset.
    AnswerNextOffset,
    /// The controller fencing a partition's leader with no live ISR member
    /// to succeed it takes the leader out of the ISR too, leaving the ISR
    /// empty (Kafka keeps the last member).
    EmptyIsrOnFence,
    /// A partition follower refused by a broker that does not lead follows
    /// the leader that broker names (KIP-951's hint) without checking that
    /// its epoch is newer than the one it follows.
    FollowHintedLeader,
    /// Electing a partition leader keeps the partition's leader epoch
    /// instead of bumping it (every node's metadata image applies the
    /// change so).
    KeepLeaderEpoch,
    /// Transactional offsets count as committed when TxnOffsetCommit
    /// writes them, not when their transaction's COMMIT marker does (an
    /// abort keeps them).
    TxnOffsetsBeforeMarker,
    /// The last stable offset is the high watermark: read_committed
    /// consumers read open transactions.
    LsoIsHighWatermark,
    /// Fetches at read_committed name no aborted transactions, so
    /// consumers keep what aborted.
    NoAbortedTransactions,
    /// A broker acts on its metadata image without a lease: cut off from
    /// the controller, it goes on leading and coordinating after the
    /// controller fenced it and gave its partitions to others.
    NoBrokerLease,
    /// The last stable offset is bounded by the log end instead of the
    /// high watermark: read_committed consumers are told (and read) offsets
    /// no replica or sync has made safe yet, which a crash or a new leader
    /// takes back.
    LsoIgnoresHighWatermark,
    /// A partition leader takes a transactional write unverified when the
    /// producer's transaction coordinator is another broker (Kafka before
    /// 3.6): a late write opens a transaction no coordinator will end.
    NoRemoteVerification,
    /// Transactions time out by the wall clock alone: one set back keeps
    /// a transaction open (and the offsets it holds unstable) for as long.
    TxnTimeoutWallClockOnly,
    /// A transaction that aborts gets COMMIT markers: its records become
    /// readable at read_committed.
    AbortMarkersCommit,
    /// A transaction that commits gets ABORT markers: its records are
    /// never readable at read_committed.
    CommitMarkersAbort,
    /// A transaction that commits gets an ABORT marker on its last
    /// partition (in topic and partition order) and COMMIT markers on the
    /// others: part of it is readable. A producer that learned the outcome
    /// is told by `[eos-committed-visible]`; one killed while it committed
    /// never learns it, and only `[eos-atomic]` can tell.
    CommitSplitsLastPartition,
}

impl Mutation {
    pub const ALL: [Mutation; 31] = [
        Mutation::AckBeforeSync,
        Mutation::ReadBeforeSync,
        Mutation::SkipRecoveryCrc,
        Mutation::OffsetGap,
        Mutation::ForgetHighWatermark,
        Mutation::ForgetCommittedOffsets,
        Mutation::SameAssignmentForAll,
        Mutation::ForgetQuorumState,
        Mutation::VoteTwice,
        Mutation::CommitUnsyncedEntries,
        Mutation::SkipDivergenceCheck,
        Mutation::TruncateToHighWatermark,
        Mutation::FollowerReportsUnsynced,
        Mutation::AcksBelowMinInsync,
        Mutation::SkipFetchEpochCheck,
        Mutation::AcksAllAfterLocalSync,
        Mutation::AnswerNextOffset,
        Mutation::EmptyIsrOnFence,
        Mutation::FollowHintedLeader,
        Mutation::KeepLeaderEpoch,
        Mutation::TxnOffsetsBeforeMarker,
        Mutation::LsoIsHighWatermark,
        Mutation::NoAbortedTransactions,
        Mutation::NoBrokerLease,
        Mutation::LsoIgnoresHighWatermark,
        Mutation::NoRemoteVerification,
        Mutation::TxnTimeoutWallClockOnly,
        Mutation::AbortMarkersCommit,
        Mutation::CommitMarkersAbort,
        Mutation::CommitSplitsLastPartition,
        Mutation::CommitOlderEpoch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::AckBeforeSync => "ack-before-sync",
            Mutation::ReadBeforeSync => "read-before-sync",
            Mutation::SkipRecoveryCrc => "skip-recovery-crc",
            Mutation::OffsetGap => "offset-gap",
            Mutation::ForgetHighWatermark => "forget-high-watermark",
            Mutation::ForgetCommittedOffsets => "forget-committed-offsets",
            Mutation::SameAssignmentForAll => "same-assignment-for-all",
            Mutation::ForgetQuorumState => "forget-quorum-state",
            Mutation::VoteTwice => "vote-twice",
            Mutation::CommitUnsyncedEntries => "commit-unsynced-entries",
            Mutation::SkipDivergenceCheck => "skip-divergence-check",
            Mutation::TruncateToHighWatermark => "truncate-to-high-watermark",
            Mutation::FollowerReportsUnsynced => "follower-reports-unsynced",
            Mutation::AcksBelowMinInsync => "acks-below-min-insync",
            Mutation::SkipFetchEpochCheck => "skip-fetch-epoch-check",
            Mutation::AcksAllAfterLocalSync => "acks-all-after-local-sync",
            Mutation::AnswerNextOffset => "answer-next-offset",
            Mutation::EmptyIsrOnFence => "empty-isr-on-fence",
            Mutation::FollowHintedLeader => "follow-hinted-leader",
            Mutation::KeepLeaderEpoch => "keep-leader-epoch",
            Mutation::TxnOffsetsBeforeMarker => "txn-offsets-before-marker",
            Mutation::LsoIsHighWatermark => "lso-is-high-watermark",
            Mutation::NoAbortedTransactions => "no-aborted-transactions",
            Mutation::NoBrokerLease => "no-broker-lease",
            Mutation::LsoIgnoresHighWatermark => "lso-ignores-high-watermark",
            Mutation::NoRemoteVerification => "no-remote-verification",
            Mutation::TxnTimeoutWallClockOnly => "txn-timeout-wall-clock-only",
            Mutation::AbortMarkersCommit => "abort-markers-commit",
            Mutation::CommitMarkersAbort => "commit-markers-abort",
            Mutation::CommitSplitsLastPartition => "commit-splits-last-partition",
            Mutation::CommitOlderEpoch => "commit-older-epoch",
        }
    }
}

/// The config key that selects a mutation.
pub const MUTATION_KEY: &str = "sluice.mutation";

fn parse_mutation(pairs: &mut BTreeMap<String, String>) -> Result<Option<Mutation>, ConfigError> {
    let Some(value) = pairs.remove(MUTATION_KEY) else {
        return Ok(None);
    };
    if !cfg!(feature = "mutations") {
        return Err(ConfigError::UnknownKey(MUTATION_KEY.into()));
    }
    Mutation::ALL
        .iter()
        .copied()
        .find(|m| m.name() == value)
        .map(Some)
        .ok_or_else(|| ConfigError::BadValue {
            key: MUTATION_KEY.into(),
            value,
            why: "not a known mutation".into(),
        })
}

impl BrokerConfig {
    /// True when the given mutation runs; always false without the feature.
    pub fn mutated(&self, mutation: Mutation) -> bool {
        cfg!(feature = "mutations") && self.mutation == Some(mutation)
    }

    pub fn from_pairs(pairs: &BTreeMap<String, String>) -> Result<BrokerConfig, ConfigError> {
        let mut pairs = pairs.clone();
        let mutation = parse_mutation(&mut pairs)?;
        let values = Values::parse(BROKER_KEYS, &pairs)?;
        let get = |name: &str| broker_value(&values, name);
        let number = |name: &str| get(name).parse::<i64>().unwrap_or_default();
        let listeners = get("listeners");
        let advertised = get("advertised.listeners");
        let log_dirs = get("log.dirs");
        if log_dirs.contains(',') {
            // Kafka spreads partitions over several; one broker here has one.
            return Err(ConfigError::BadValue {
                key: "log.dirs".into(),
                value: log_dirs,
                why: "Sluice uses one log directory per broker; name only one".into(),
            });
        }
        let voters_value = get("controller.quorum.voters");
        let quorum_voters = parse_voters(&voters_value).map_err(|why| ConfigError::BadValue {
            key: "controller.quorum.voters".into(),
            value: voters_value.clone(),
            why,
        })?;
        let node_id = number("node.id") as i32;
        let roles = get("process.roles");
        let controller = roles.contains("controller");
        if !quorum_voters.is_empty() && controller && !quorum_voters.iter().any(|v| v.id == node_id)
        {
            return Err(ConfigError::BadValue {
                key: "controller.quorum.voters".into(),
                value: voters_value,
                why: format!("node.id {node_id} has the controller role but is not a voter"),
            });
        }
        // Auto-created topics take num.partitions: a default above the
        // per-topic bound would make every auto-creation fail.
        let partitions = number("num.partitions");
        let topic_partitions_max = number("max.topic.partitions");
        if partitions > topic_partitions_max {
            return Err(ConfigError::BadValue {
                key: "num.partitions".into(),
                value: partitions.to_string(),
                why: format!("larger than max.topic.partitions ({topic_partitions_max})"),
            });
        }
        // Every voter is a broker too (combined nodes), and a node alone
        // is the one broker: a factor above that could never be placed,
        // and every create relying on the default would fail.
        let brokers = quorum_voters.len().max(1);
        let factor = number("default.replication.factor");
        if factor > brokers as i64 {
            return Err(ConfigError::BadValue {
                key: "default.replication.factor".into(),
                value: factor.to_string(),
                why: format!(
                    "larger than the {brokers} broker{} this configuration names{}",
                    if brokers == 1 { "" } else { "s" },
                    if quorum_voters.is_empty() {
                        " (a node without controller.quorum.voters is alone)"
                    } else {
                        " in controller.quorum.voters"
                    }
                ),
            });
        }
        if !(controller && roles.contains("broker")) {
            // A broker without the controller role would follow the quorum
            // as an observer, and a controller alone would serve no data:
            // neither exists yet.
            return Err(ConfigError::BadValue {
                key: "process.roles".into(),
                value: roles,
                why: "Sluice runs combined nodes for now: use broker,controller".into(),
            });
        }
        Ok(BrokerConfig {
            node_id,
            controller,
            broker: roles.contains("broker"),
            quorum_voters,
            quorum_election_timeout_ms: number("controller.quorum.election.timeout.ms"),
            quorum_fetch_timeout_ms: number("controller.quorum.fetch.timeout.ms"),
            broker_session_timeout_ms: number("broker.session.timeout.ms"),
            broker_heartbeat_interval_ms: number("broker.heartbeat.interval.ms"),
            replica_lag_time_max_ms: number("replica.lag.time.max.ms"),
            replica_fetch_max_bytes: number("replica.fetch.max.bytes").min(i32::MAX as i64) as i32,
            replica_fetch_wait_max_ms: number("replica.fetch.wait.max.ms").min(i32::MAX as i64)
                as i32,
            replica_fetch_backoff_ms: number("replica.fetch.backoff.ms"),
            high_watermark_checkpoint_interval_ms: number(
                "replica.high.watermark.checkpoint.interval.ms",
            ),
            advertised_listeners: if advertised.is_empty() {
                listeners.clone()
            } else {
                advertised
            },
            listeners,
            metrics_listener: get("metrics.listener"),
            log_dirs,
            open_files_max: match number("log.open.files.max") {
                0 => None,
                files_max => Some(usize::try_from(files_max).unwrap_or(usize::MAX)),
            },
            num_partitions: number("num.partitions") as i32,
            default_replication_factor: number("default.replication.factor").min(i16::MAX as i64)
                as i16,
            topic_partitions_max: number("max.topic.partitions").min(i32::MAX as i64) as i32,
            broker_partitions_max: number("max.broker.partitions"),
            auto_create_topics: get("auto.create.topics.enable") == "true",
            socket_request_bytes_max: number("socket.request.max.bytes") as usize,
            decompression_ratio_max: number("message.decompression.ratio.max") as usize,
            connections_idle_ms_max: number("connections.max.idle.ms"),
            connections_max: number("max.connections") as usize,
            connections_per_ip_max: number("max.connections.per.ip") as usize,
            queued_requests_max: number("queued.max.requests") as usize,
            queued_response_bytes_max: number("queued.max.response.bytes") as usize,
            queued_request_bytes_max: queued_request_bytes_max(number)?,
            retention_check_interval_ms: number("log.retention.check.interval.ms"),
            group_initial_rebalance_delay_ms: number("group.initial.rebalance.delay.ms"),
            offsets_topic_partitions: number("offsets.topic.num.partitions") as i32,
            offsets_retention_ms: number("offsets.retention.minutes") * 60_000,
            offsets_retention_check_interval_ms: number("offsets.retention.check.interval.ms"),
            txn_topic_partitions: number("transaction.state.log.num.partitions") as i32,
            txn_max_timeout_ms: number("transaction.max.timeout.ms"),
            txn_id_expiration_ms: number("transactional.id.expiration.ms"),
            txn_abort_check_interval_ms: number(
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            ),
            txn_expiry_check_interval_ms: number(
                "transaction.remove.expired.transaction.cleanup.interval.ms",
            ),
            mutation,
            values,
        })
    }

    pub fn defaults() -> BrokerConfig {
        BrokerConfig::from_pairs(&BTreeMap::new()).expect("defaults are valid")
    }

    /// The value of a broker key, explicit or default.
    pub fn get(&self, name: &str) -> String {
        broker_value(&self.values, name)
    }
}

/// `queued.max.request.bytes`: None for Kafka's unbounded (-1 or 0);
/// otherwise at least `socket.request.max.bytes`, as Kafka requires, so
/// that the largest request accepted fits.
fn queued_request_bytes_max(number: impl Fn(&str) -> i64) -> Result<Option<usize>, ConfigError> {
    let bytes_max = number("queued.max.request.bytes");
    let request_bytes_max = number("socket.request.max.bytes");
    if bytes_max <= 0 {
        return Ok(None);
    }
    if bytes_max < request_bytes_max {
        return Err(ConfigError::BadValue {
            key: "queued.max.request.bytes".into(),
            value: bytes_max.to_string(),
            why: format!(
                "smaller than socket.request.max.bytes ({request_bytes_max}): the largest request accepted would never fit"
            ),
        });
    }
    Ok(Some(bytes_max as usize))
}

fn broker_value(values: &Values, name: &str) -> String {
    let key = find(BROKER_KEYS, name).expect("known broker key");
    values
        .explicit
        .get(name)
        .cloned()
        .unwrap_or_else(|| key.default.to_string())
}

/// Where a topic config value comes from, as DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Topic,
    Broker,
    Default,
}

/// A topic's configuration: its own overrides over the broker's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub overrides: Values,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub index_interval_bytes: u64,
    pub max_message_bytes: usize,
    pub log_append_time: bool,
    /// How far before and after the broker's clock a CreateTime record's
    /// timestamp may be.
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// Mutation `skip-recovery-crc` (never set without the feature).
    pub skip_recovery_crc: bool,
    /// Mutation `offset-gap` (never set without the feature).
    pub offset_gap: bool,
    /// Replicas in the ISR needed for acks=all (capped by the replicas).
    pub min_insync_replicas: usize,
}

impl TopicConfig {
    pub fn new(
        broker: &BrokerConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, ConfigError> {
        let overrides = Values::parse(TOPIC_KEYS, overrides)?;
        let get = |name: &str| topic_value(broker, &overrides, name).0;
        let number = |name: &str| get(name).parse::<i64>().unwrap_or_default();
        Ok(TopicConfig {
            segment_bytes: number("segment.bytes") as u64,
            segment_ms: number("segment.ms"),
            retention_ms: number("retention.ms"),
            retention_bytes: number("retention.bytes"),
            index_interval_bytes: number("index.interval.bytes") as u64,
            max_message_bytes: number("max.message.bytes") as usize,
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            timestamp_before_max_ms: number("message.timestamp.before.max.ms"),
            timestamp_after_max_ms: number("message.timestamp.after.max.ms"),
            skip_recovery_crc: broker.mutated(Mutation::SkipRecoveryCrc),
            offset_gap: broker.mutated(Mutation::OffsetGap),
            min_insync_replicas: number("min.insync.replicas").max(1) as usize,
            overrides,
        })
    }

    /// Every topic key with its value and where it comes from.
    pub fn describe(&self, broker: &BrokerConfig) -> Vec<(&'static str, String, Source)> {
        TOPIC_KEYS
            .iter()
            .map(|key| {
                let (value, source) = topic_value(broker, &self.overrides, key.name);
                (key.name, value, source)
            })
            .collect()
    }
}

/// `unclean.leader.election.enable` for a topic with these overrides (as
/// the metadata image keeps them, checked when they were set), else the
/// broker's value.
pub fn unclean_leader_election(
    broker: &BrokerConfig,
    overrides: Option<&BTreeMap<String, String>>,
) -> bool {
    const KEY: &str = "unclean.leader.election.enable";
    match overrides.and_then(|o| o.get(KEY)) {
        Some(value) => value.eq_ignore_ascii_case("true"),
        None => broker.get(KEY) == "true",
    }
}

fn topic_value(broker: &BrokerConfig, overrides: &Values, name: &str) -> (String, Source) {
    let key = find(TOPIC_KEYS, name).expect("known topic key");
    if let Some(value) = overrides.explicit.get(name) {
        return (value.clone(), Source::Topic);
    }
    let broker_key = key.broker_key.expect("topic keys name a broker key");
    match broker.values.explicit.get(broker_key) {
        Some(value) => (value.clone(), Source::Broker),
        None => (key.default.to_string(), Source::Default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quorum_voters_parse_as_kafka_writes_them() {
        let voters = parse_voters("3@c:9095, 1@a:9093,2@[::1]:9094").expect("valid");
        assert_eq!(
            voters
                .iter()
                .map(|v| (v.id, v.host.as_str(), v.port))
                .collect::<Vec<_>>(),
            [(1, "a", 9093), (2, "::1", 9094), (3, "c", 9095)]
        );
        assert_eq!(parse_voters("").expect("empty"), []);
        for bad in [
            "1@a",
            "a@b:1",
            "1@:9",
            "1@a:0",
            "1@a:1,1@b:2",
            "-1@a:1",
            "1-a:1",
        ] {
            assert!(parse_voters(bad).is_err(), "{bad} accepted");
        }
        let config = BrokerConfig::from_pairs(&pairs(&[
            ("node.id", "2"),
            ("controller.quorum.voters", "1@a:1,2@b:2,3@c:3"),
        ]))
        .expect("valid");
        assert_eq!(config.quorum_voters.len(), 3);
        assert!(config.controller && config.broker);
        assert_eq!(config.quorum_election_timeout_ms, 1000);
        assert_eq!(config.quorum_fetch_timeout_ms, 2000);
        assert_eq!(config.broker_session_timeout_ms, 9000);
        let not_a_voter = BrokerConfig::from_pairs(&pairs(&[
            ("node.id", "4"),
            ("controller.quorum.voters", "1@a:1,2@b:2,3@c:3"),
        ]));
        assert!(not_a_voter.is_err());
        let broker_alone = BrokerConfig::from_pairs(&pairs(&[
            ("process.roles", "broker"),
            ("controller.quorum.voters", "1@a:1"),
        ]));
        assert!(broker_alone.is_err());
    }

    #[test]
    fn defaults_match_kafka() {
        let broker = BrokerConfig::defaults();
        assert_eq!(broker.socket_request_bytes_max, 104_857_600);
        assert!(broker.auto_create_topics);
        let topic = TopicConfig::new(&broker, &BTreeMap::new()).expect("defaults");
        assert_eq!(topic.max_message_bytes, 1_048_588);
        assert_eq!(topic.segment_bytes, 1 << 30);
    }

    #[test]
    fn queued_request_bytes_hold_the_largest_request_or_are_unbounded() {
        let broker = BrokerConfig::defaults();
        assert_eq!(broker.queued_request_bytes_max, Some(256 << 20));
        assert_eq!(broker.queued_requests_max, 64);
        assert_eq!(broker.queued_response_bytes_max, 16 << 20);
        for unbounded in ["-1", "0"] {
            let config =
                BrokerConfig::from_pairs(&pairs(&[("queued.max.request.bytes", unbounded)]))
                    .expect("valid");
            assert_eq!(config.queued_request_bytes_max, None);
        }
        let refused = BrokerConfig::from_pairs(&pairs(&[
            ("socket.request.max.bytes", "1000"),
            ("queued.max.request.bytes", "999"),
        ]))
        .expect_err("refused")
        .to_string();
        assert!(
            refused.contains("`queued.max.request.bytes`")
                && refused.contains("socket.request.max.bytes"),
            "{refused}"
        );
        let fits = BrokerConfig::from_pairs(&pairs(&[
            ("socket.request.max.bytes", "1000"),
            ("queued.max.request.bytes", "1000"),
        ]))
        .expect("valid");
        assert_eq!(fits.queued_request_bytes_max, Some(1000));
    }

    #[test]
    fn several_log_directories_are_refused_by_name() {
        let refused =
            BrokerConfig::from_pairs(&pairs(&[("log.dirs", "/a,/b")])).expect_err("refused");
        assert!(
            refused.to_string().contains("`log.dirs`")
                && refused.to_string().contains("one log directory"),
            "{refused}"
        );
        let one = BrokerConfig::from_pairs(&pairs(&[("log.dirs", "/a")])).expect("valid");
        assert_eq!(one.log_dirs, "/a");
    }

    #[test]
    fn a_default_replication_factor_above_the_brokers_is_refused() {
        let alone = BrokerConfig::from_pairs(&pairs(&[("default.replication.factor", "3")]))
            .expect_err("refused");
        let text = alone.to_string();
        assert!(
            text.contains("`default.replication.factor`") && text.contains("the 1 broker "),
            "{text}"
        );
        let voters = "1@h:1,2@h:2,3@h:3";
        let three = |factor: &str| {
            BrokerConfig::from_pairs(&pairs(&[
                ("controller.quorum.voters", voters),
                ("default.replication.factor", factor),
            ]))
        };
        assert_eq!(three("3").expect("valid").default_replication_factor, 3);
        let four = three("4").expect_err("refused").to_string();
        assert!(four.contains("the 3 brokers"), "{four}");
    }

    #[test]
    fn topic_values_fall_back_to_the_broker() {
        let broker =
            BrokerConfig::from_pairs(&pairs(&[("log.segment.bytes", "4096")])).expect("valid");
        let topic = TopicConfig::new(&broker, &pairs(&[("retention.ms", "10")])).expect("valid");
        assert_eq!(topic.segment_bytes, 4096);
        let described = topic.describe(&broker);
        assert!(described.contains(&("segment.bytes", "4096".into(), Source::Broker)));
        assert!(described.contains(&("retention.ms", "10".into(), Source::Topic)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert_eq!(
            BrokerConfig::from_pairs(&pairs(&[("no.such.key", "1")])),
            Err(ConfigError::UnknownKey("no.such.key".into()))
        );
        assert!(BrokerConfig::from_pairs(&pairs(&[("num.partitions", "zero")])).is_err());
        assert!(BrokerConfig::from_pairs(&pairs(&[("num.partitions", "0")])).is_err());
        assert!(TopicConfig::new(
            &BrokerConfig::defaults(),
            &pairs(&[("cleanup.policy", "compact")])
        )
        .is_err());
    }

    #[test]
    fn mutations_need_the_feature() {
        let chosen = BrokerConfig::from_pairs(&pairs(&[(MUTATION_KEY, "ack-before-sync")]));
        if cfg!(feature = "mutations") {
            assert_eq!(
                chosen.expect("accepted").mutation,
                Some(Mutation::AckBeforeSync)
            );
        } else {
            assert_eq!(chosen, Err(ConfigError::UnknownKey(MUTATION_KEY.into())));
        }
    }
}
