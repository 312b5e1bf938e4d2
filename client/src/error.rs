//! The one error type of the crate's public API.
//!
//! Broker answers keep their Kafka error code (`kafka_protocol::ResponseError`)
//! so callers can match on it and ask whether it is retriable; everything the
//! client itself detects (connections, timeouts, malformed answers, limits)
//! gets its own variant. Errors are `Clone` because one failed batch fails
//! the delivery future of every record in it.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

use crate::transaction::{Operation, TransactionState};

/// Every failure the client reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The broker answered with a Kafka error code.
    #[error("{context}: broker answered {error}{}", detail(message))]
    Broker {
        error: ResponseError,
        /// What the client was doing, e.g. `produce to orders-2`.
        context: String,
        /// The broker's error message, when the API carries one.
        message: Option<String>,
    },
    /// A connection to a broker could not be opened.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An open connection failed or was closed with requests outstanding.
    #[error("connection to {address} lost: {reason}")]
    Disconnected { address: String, reason: String },
    /// No answer within the allowed time.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout { what: String, after_ms: u64 },
    /// The broker sent something the protocol does not allow (a response for
    /// another request, a body that does not decode, a missing partition).
    #[error("protocol violation by {address}: {detail}")]
    Protocol { address: String, detail: String },
    /// The client and the broker share no version of an API.
    #[error("{api:?}: no common version (client {client_min}..={client_max}, broker {broker_min}..={broker_max})")]
    UnsupportedVersion {
        api: ApiKey,
        client_min: i16,
        client_max: i16,
        broker_min: i16,
        broker_max: i16,
    },
    /// The broker does not list an API the client needs.
    #[error("broker at {address} does not serve {api:?}")]
    ApiNotServed { address: String, api: ApiKey },
    /// A request could not be encoded at the negotiated version.
    #[error("cannot encode {api:?} v{version}: {detail}")]
    Encode {
        api: ApiKey,
        version: i16,
        detail: String,
    },
    /// Neither a known broker nor a bootstrap server accepted a connection.
    #[error("no broker reachable (last error: {last})")]
    NoBrokerReachable { last: String },
    /// A partition number outside the topic.
    #[error("topic {topic} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: i32,
        partitions: i32,
    },
    /// A record that can never be sent under the configured limits.
    #[error("record of {bytes} bytes exceeds {limit_name} ({limit} bytes)")]
    RecordTooLarge {
        bytes: usize,
        limit_name: &'static str,
        limit: usize,
    },
    /// The fetch position left the log and `auto_offset_reset` is `None`.
    #[error(
        "offset {offset} is out of range for {topic}-{partition} and auto_offset_reset is none"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// A partition has no position and `auto_offset_reset` is `None`.
    #[error("{topic}-{partition} has no position and auto_offset_reset is none")]
    NoOffset { topic: String, partition: i32 },
    /// A fetched batch failed its CRC or does not decode.
    #[error("corrupt record batch in {topic}-{partition} at offset {offset}: {detail}")]
    CorruptBatch {
        topic: String,
        partition: i32,
        offset: i64,
        detail: String,
    },
    /// An operation on a partition the consumer is not assigned.
    #[error("{topic}-{partition} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: i32 },
    /// A group operation that needs membership while the consumer has none
    /// in a stable generation (it is joining, or was removed from the group).
    /// Retriable: `poll` joins again.
    #[error("group {group}: {detail}")]
    NotInGroup { group: String, detail: String },
    /// The producer was closed or dropped before the record was delivered.
    #[error("the producer is closed")]
    Closed,
    /// A configuration value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Records a call cannot send as given (none at all, or naming another
    /// partition than the one they are sent to).
    #[error("invalid records: {0}")]
    InvalidRecords(String),
    /// A transactional producer call its state does not allow: `send`
    /// outside a transaction, `commit` after a failed send, anything after a
    /// fatal error. `cause` is the error that put it in that state, if any.
    #[error(
        "transactional producer: cannot {operation} in state {state:?}{}",
        cause_detail(cause)
    )]
    TransactionState {
        operation: Operation,
        state: TransactionState,
        cause: Option<Box<Error>>,
    },
}

fn cause_detail(cause: &Option<Box<Error>>) -> String {
    match cause {
        Some(cause) => format!(" (after: {cause})"),
        None => String::new(),
    }
}

fn detail(message: &Option<String>) -> String {
    match message {
        Some(message) if !message.is_empty() => format!(" ({message})"),
        _ => String::new(),
    }
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker { error, .. } => error.is_retriable(),
            Error::Connect { .. }
            | Error::Disconnected { .. }
            | Error::Timeout { .. }
            | Error::NoBrokerReachable { .. }
            | Error::NotInGroup { .. } => true,
            _ => false,
        }
    }

    /// Whether the error suggests that the cached metadata (leaders, brokers,
    /// topics) is stale and should be fetched again before a retry.
    pub fn invalidates_metadata(&self) -> bool {
        match self {
            Error::Broker { error, .. } => error_invalidates_metadata(*error),
            Error::Connect { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The Kafka error code, when the broker sent one.
    pub fn response_error(&self) -> Option<ResponseError> {
        match self {
            Error::Broker { error, .. } => Some(*error),
            _ => None,
        }
    }

    pub(crate) fn broker(error: ResponseError, context: impl Into<String>) -> Error {
        Error::Broker {
            error,
            context: context.into(),
            message: None,
        }
    }

    pub(crate) fn broker_with_message(
        error: ResponseError,
        context: impl Into<String>,
        message: Option<&str>,
    ) -> Error {
        Error::Broker {
            error,
            context: context.into(),
            message: message.map(str::to_string),
        }
    }
}

/// Kafka errors after which the client fetches metadata again: the leader
/// moved, the topic or partition is not (yet) known, or the epoch is stale.
pub fn error_invalidates_metadata(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::LeaderNotAvailable
            | ResponseError::UnknownTopicId
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch
            | ResponseError::NotController
            | ResponseError::ReplicaNotAvailable
            | ResponseError::KafkaStorageError
            | ResponseError::InconsistentTopicId
    )
}

/// Turns a Kafka error code into `Ok` (0) or the matching `Error::Broker`.
pub(crate) fn check_code(code: i16, context: impl FnOnce() -> String) -> Result<(), Error> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(Error::broker(error, context())),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_keep_their_retriability() {
        let leader = Error::broker(ResponseError::NotLeaderOrFollower, "produce to t-0");
        assert!(leader.is_retriable());
        assert!(leader.invalidates_metadata());
        let too_large = Error::broker(ResponseError::MessageTooLarge, "produce to t-0");
        assert!(!too_large.is_retriable());
        assert!(!too_large.invalidates_metadata());
        assert_eq!(
            too_large.response_error(),
            Some(ResponseError::MessageTooLarge)
        );
    }

    #[test]
    fn messages_name_the_context_and_the_broker_detail() {
        let error = Error::broker_with_message(
            ResponseError::TopicAlreadyExists,
            "create topic t",
            Some("Topic 't' already exists."),
        );
        assert_eq!(
            error.to_string(),
            "create topic t: broker answered TopicAlreadyExists (Topic 't' already exists.)"
        );
        assert!(check_code(0, || unreachable!()).is_ok());
        assert!(check_code(3, || "x".into()).is_err());
    }
}
