//! Small values every layer of the core shares: which node, which
//! partition, and what time it is.

/// A broker's or controller's id (`node.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub i32);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which of a node's connections to a peer a request travels on. Each
/// kind of traffic has its own, as Kafka's do, so that an answer one kind
/// holds back (a controller waiting for a commit) never stands in front
/// of another's (the Raft fetch that commit needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// The controller quorum's Vote, BeginQuorumEpoch, EndQuorumEpoch and
    /// Fetch of the metadata log.
    Raft,
    /// A broker's requests to the active controller.
    Control,
    /// A follower's fetches of the partitions it replicates from a leader.
    Replica,
    /// A transaction coordinator's markers for the partitions a peer leads.
    Markers,
    /// A partition leader's questions to a peer that coordinates a
    /// transaction: is this partition in the producer's ongoing
    /// transaction (AddPartitionsToTxn, verify only)?
    Verify,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Raft,
        Channel::Control,
        Channel::Replica,
        Channel::Markers,
        Channel::Verify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Raft => "raft",
            Channel::Control => "control",
            Channel::Replica => "replica",
            Channel::Markers => "txn",
            Channel::Verify => "verify",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A partition of a topic, by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The time an input happens at, as the driver reads its two clocks.
///
/// Deadlines (sessions, long polls, timers) run on `monotonic_ms`, which
/// never goes back and means nothing across restarts; what is written down
/// or compared with record timestamps (append times, retention, commit
/// times) uses `wall_ms`, milliseconds since the Unix epoch, which may jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub monotonic_ms: i64,
    pub wall_ms: i64,
}

impl Now {
    /// Both clocks at the same reading (tests and tools).
    pub fn at(ms: i64) -> Now {
        Now {
            monotonic_ms: ms,
            wall_ms: ms,
        }
    }
}
