//! Settings of the client, the producer and the consumer, and the two things
//! the client takes from the world instead of reaching for them: the wall
//! clock that stamps records ([`Clock`]) and the seed of every random choice
//! (`ClientConfig::seed`).
//!
//! Names follow Kafka's settings with units last (`linger.ms` becomes
//! `linger_ms`, `batch.size` becomes `batch_bytes_max`); defaults are Kafka's
//! unless a comment says otherwise.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;

use crate::error::{Error, Result};
use crate::group::Assignor;

/// Milliseconds since the Unix epoch, as record timestamps want them. The
/// client calls it only to stamp records that carry no timestamp of their own.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system's wall clock, for real use. Simulations pass their own clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64)
    })
}

/// Connection and metadata settings shared by admin, producer and consumer.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` addresses tried until one answers Metadata.
    pub bootstrap_servers: Vec<String>,
    /// Sent in every request header; brokers log it.
    pub client_id: String,
    /// Seeds every random choice (backoff jitter, sticky partitions), so a
    /// simulated run replays exactly.
    pub seed: u64,
    /// How long a request may wait for its answer (Kafka: `request.timeout.ms`).
    pub request_timeout_ms: u64,
    /// How long opening a connection and negotiating versions may take.
    pub connect_timeout_ms: u64,
    /// First wait after a failed connection attempt; doubles per failure.
    pub reconnect_backoff_ms: u64,
    /// Ceiling of the reconnect wait.
    pub reconnect_backoff_max_ms: u64,
    /// First wait before retrying a failed request; doubles per attempt.
    pub retry_backoff_ms: u64,
    /// Ceiling of the retry wait.
    pub retry_backoff_max_ms: u64,
    /// Whether Metadata requests may create unknown topics on brokers that
    /// allow it (Kafka: `allow.auto.create.topics`).
    pub allow_auto_topic_creation: bool,
    /// Highest version to use per API, below what both sides support. Empty
    /// in normal use; tests set it to exercise older wire formats.
    pub api_version_caps: Vec<(ApiKey, i16)>,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(bootstrap_servers: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            bootstrap_servers: bootstrap_servers.into_iter().map(Into::into).collect(),
            client_id: "sluice-client".to_string(),
            seed: 0,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            reconnect_backoff_ms: 50,
            reconnect_backoff_max_ms: 1_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
            allow_auto_topic_creation: true,
            api_version_caps: Vec::new(),
        }
    }

    pub fn with_seed(mut self, seed: u64) -> ClientConfig {
        self.seed = seed;
        self
    }

    pub fn with_client_id(mut self, client_id: impl Into<String>) -> ClientConfig {
        self.client_id = client_id.into();
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.is_empty() {
            return Err(Error::Config("bootstrap_servers is empty".into()));
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_ms
            || self.retry_backoff_max_ms < self.retry_backoff_ms
        {
            return Err(Error::Config("a backoff ceiling is below its start".into()));
        }
        Ok(())
    }
}

/// How many replicas must have a record before the broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all; the offset of a delivery is unknown (-1).
    None,
    /// The leader wrote it.
    Leader,
    /// Every in-sync replica wrote it.
    All,
}

impl Acks {
    pub fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Compression of a record batch: the core encoder's.
pub use sluice_core::batch::builder::Compression;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent.
    pub linger_ms: u64,
    /// A batch is sent once its uncompressed size reaches this (Kafka: `batch.size`).
    pub batch_bytes_max: usize,
    /// Memory for records waiting to be sent; `send` waits when it is used
    /// up (Kafka: `buffer.memory`).
    pub buffer_memory_bytes: usize,
    /// Largest produce request, and so the largest record (Kafka: `max.request.size`).
    pub request_bytes_max: usize,
    pub compression: Compression,
    /// Attempts after the first for a batch that failed with a retriable
    /// error. With retries on, each partition has at most one batch in
    /// flight, so a retry can never land behind a later batch.
    pub retries_max: u32,
    /// Time from a record's send to its final outcome, retries included.
    pub delivery_timeout_ms: u64,
    /// How long `send` may wait for metadata or buffer memory.
    pub max_block_ms: u64,
    /// Idempotence (Kafka: `enable.idempotence`): the producer gets a
    /// producer id before its first batch and numbers each partition's
    /// records, so the leader writes a retried batch once and in order,
    /// with up to five batches in flight per partition. Needs acks=all and
    /// retries. Off by default, unlike Kafka 3.0+, where it is on unless
    /// acks or retries forbid it: turning it on changes the requests every
    /// existing user of this producer sends (the simulator's workloads
    /// among them, whose seeds replay recorded runs).
    pub idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: Acks::All,
            // Kafka 4 defaults to 5 ms.
            linger_ms: 5,
            batch_bytes_max: 16_384,
            buffer_memory_bytes: 32 * 1024 * 1024,
            request_bytes_max: 1024 * 1024,
            compression: Compression::None,
            // Kafka retries until the delivery timeout; a count keeps the
            // loop visibly bounded.
            retries_max: 10,
            delivery_timeout_ms: 120_000,
            max_block_ms: 60_000,
            idempotence: false,
        }
    }
}

impl ProducerConfig {
    /// The default settings with idempotence on.
    pub fn idempotent() -> ProducerConfig {
        ProducerConfig {
            idempotence: true,
            ..ProducerConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.batch_bytes_max == 0 || self.request_bytes_max == 0 {
            return Err(Error::Config(
                "batch and request sizes must be positive".into(),
            ));
        }
        if self.buffer_memory_bytes < self.batch_bytes_max {
            return Err(Error::Config(
                "buffer_memory_bytes must hold at least one batch (batch_bytes_max)".into(),
            ));
        }
        if self.delivery_timeout_ms == 0 {
            return Err(Error::Config("delivery_timeout_ms must be positive".into()));
        }
        // Kafka refuses these with a ConfigException when idempotence is
        // asked for explicitly.
        if self.idempotence && self.acks != Acks::All {
            return Err(Error::Config(
                "idempotence needs acks=all: a leader that answers alone may lose what it \
                 acknowledged, and the retry would not be recognised"
                    .into(),
            ));
        }
        if self.idempotence && self.retries_max == 0 {
            return Err(Error::Config(
                "idempotence needs retries (retries_max > 0)".into(),
            ));
        }
        Ok(())
    }
}

/// Settings of a [`TransactionalProducer`](crate::TransactionalProducer).
#[derive(Debug, Clone)]
pub struct TransactionalConfig {
    /// Names the producer across restarts (Kafka: `transactional.id`): a
    /// new instance with the same id fences the old one and aborts its open
    /// transaction.
    pub transactional_id: String,
    /// How long the coordinator lets a transaction stay open before it
    /// aborts it (Kafka: `transaction.timeout.ms`).
    pub transaction_timeout_ms: i32,
    /// How long `init`, `send_offsets`, `commit` and `abort` may retry
    /// before they give up (Kafka: `max.block.ms`).
    pub max_block_ms: u64,
    /// How long one `send` may retry before it gives up (Kafka:
    /// `delivery.timeout.ms`).
    pub delivery_timeout_ms: u64,
}

impl TransactionalConfig {
    pub fn new(transactional_id: impl Into<String>) -> TransactionalConfig {
        TransactionalConfig {
            transactional_id: transactional_id.into(),
            transaction_timeout_ms: 60_000,
            max_block_ms: 60_000,
            delivery_timeout_ms: 120_000,
        }
    }

    pub fn with_transaction_timeout_ms(mut self, timeout_ms: i32) -> TransactionalConfig {
        self.transaction_timeout_ms = timeout_ms;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.transactional_id.is_empty() {
            return Err(Error::Config("transactional_id must not be empty".into()));
        }
        if self.transaction_timeout_ms <= 0 {
            return Err(Error::Config(
                "transaction_timeout_ms must be positive".into(),
            ));
        }
        if self.max_block_ms == 0 || self.delivery_timeout_ms == 0 {
            return Err(Error::Config(
                "max_block_ms and delivery_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Which records a consumer sees (Kafka: `isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Everything up to the high watermark, open and aborted transactions
    /// included (`read_uncommitted`, Kafka's default).
    #[default]
    ReadUncommitted,
    /// Only up to the last stable offset, without the records of aborted
    /// transactions (`read_committed`).
    ReadCommitted,
}

impl IsolationLevel {
    /// The value Fetch and ListOffsets carry.
    pub fn code(self) -> i8 {
        match self {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        }
    }

    /// Kafka's name of the setting's value.
    pub fn name(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "read_uncommitted",
            IsolationLevel::ReadCommitted => "read_committed",
        }
    }
}

impl std::str::FromStr for IsolationLevel {
    type Err = Error;

    /// Kafka's names, as `isolation.level` takes them.
    fn from_str(name: &str) -> Result<IsolationLevel> {
        match name {
            "read_uncommitted" => Ok(IsolationLevel::ReadUncommitted),
            "read_committed" => Ok(IsolationLevel::ReadCommitted),
            other => Err(Error::Config(format!(
                "isolation.level must be read_uncommitted or read_committed, not {other:?}"
            ))),
        }
    }
}

/// Where a consumer starts when it has no valid position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail instead of moving.
    None,
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest time the broker holds a fetch waiting for `fetch_min_bytes`.
    pub fetch_max_wait_ms: u64,
    pub fetch_min_bytes: i32,
    /// Soft limit of one fetch answer (the first batch always comes whole).
    pub fetch_max_bytes: i32,
    /// Soft limit per partition of one fetch answer.
    pub partition_fetch_bytes_max: i32,
    pub auto_offset_reset: OffsetReset,
    /// Most records one `poll` returns.
    pub poll_records_max: usize,
    /// The consumer group (Kafka: `group.id`). Needed by `subscribe` and by
    /// commits; with manual assignment it also makes new partitions start
    /// from the group's committed offsets. `None`: no group at all.
    pub group_id: Option<String>,
    /// Static membership (Kafka: `group.instance.id`): a restarted member
    /// with the same id takes its old place without a rebalance. Static
    /// members do not send LeaveGroup when they close, as in Kafka.
    pub group_instance_id: Option<String>,
    /// Silence after which the coordinator removes the member.
    pub session_timeout_ms: u64,
    /// Time between heartbeats; below `session_timeout_ms` (a third of it
    /// is usual).
    pub heartbeat_interval_ms: u64,
    /// Longest time between two polls before the member leaves its group
    /// so that others take its partitions; also the rebalance timeout sent
    /// in JoinGroup (Kafka: `max.poll.interval.ms`).
    pub max_poll_interval_ms: u64,
    /// Commit the consumed positions every `auto_commit_interval_ms` during
    /// `poll`, before partitions are revoked, and on close.
    pub enable_auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    /// Assignors offered when joining, in order of preference (Kafka:
    /// `partition.assignment.strategy`; Kafka 3+ also offers
    /// cooperative-sticky, which this client does not implement).
    pub partition_assignment_strategy: Vec<Assignor>,
    /// How often the group leader checks whether the subscribed topics
    /// changed their partition count, which needs a new assignment
    /// (Kafka: `metadata.max.age.ms`).
    pub metadata_max_age_ms: u64,
    /// Whether records of open and aborted transactions are returned
    /// (Kafka: `isolation.level`; read_uncommitted by default, as in Kafka).
    pub isolation_level: IsolationLevel,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            fetch_max_wait_ms: 500,
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 * 1024 * 1024,
            partition_fetch_bytes_max: 1024 * 1024,
            auto_offset_reset: OffsetReset::Latest,
            poll_records_max: 500,
            group_id: None,
            group_instance_id: None,
            // Kafka 3.0 raised it from 10 s.
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            enable_auto_commit: true,
            auto_commit_interval_ms: 5_000,
            partition_assignment_strategy: vec![Assignor::Range],
            metadata_max_age_ms: 300_000,
            isolation_level: IsolationLevel::ReadUncommitted,
        }
    }
}

impl ConsumerConfig {
    /// The default settings with a group.
    pub fn with_group(group_id: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            group_id: Some(group_id.into()),
            ..ConsumerConfig::default()
        }
    }
}

impl ConsumerConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.poll_records_max == 0 {
            return Err(Error::Config("poll_records_max must be positive".into()));
        }
        if self.fetch_max_bytes <= 0 || self.partition_fetch_bytes_max <= 0 {
            return Err(Error::Config("fetch sizes must be positive".into()));
        }
        if self.group_id.as_deref() == Some("") || self.group_instance_id.as_deref() == Some("") {
            return Err(Error::Config(
                "group_id and group_instance_id must not be empty (use None)".into(),
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms
        {
            return Err(Error::Config(
                "heartbeat_interval_ms must be positive and below session_timeout_ms".into(),
            ));
        }
        let positive = [
            self.max_poll_interval_ms,
            self.auto_commit_interval_ms,
            self.metadata_max_age_ms,
        ];
        if positive.contains(&0) {
            return Err(Error::Config(
                "max_poll_interval_ms, auto_commit_interval_ms and metadata_max_age_ms must be positive"
                    .into(),
            ));
        }
        if self.partition_assignment_strategy.is_empty() {
            return Err(Error::Config(
                "partition_assignment_strategy needs at least one assignor".into(),
            ));
        }
        Ok(())
    }
}
