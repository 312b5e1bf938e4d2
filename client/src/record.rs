//! The records users hand to the producer and get from the consumer, and the
//! names of partitions.
//!
//! Keys, values and header values are raw bytes (`None` is Kafka's null);
//! header keys are bytes too, so records written by other clients come back
//! byte for byte.

use bytes::Bytes;

/// One partition of one topic: the core's type, so the client and the
/// broker name partitions the same way.
pub use sluice_core::types::TopicPartition;

/// A record header. Kafka allows the same key more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

impl Header {
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Header {
        Header {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// Where to send it; `None` lets the partitioner choose (key hash, or
    /// sticky when there is no key).
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Create time; `None` takes the producer's clock at `send`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: i32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> ProducerRecord {
        self.headers.push(Header::new(key, value));
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> ProducerRecord {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic_partition: TopicPartition,
    /// The record's offset; -1 with `acks = none`, which gets no answer.
    pub offset: i64,
    /// The create time sent, or the broker's append time when the topic
    /// uses LogAppendTime.
    pub timestamp_ms: i64,
}

/// What a record's timestamp means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// A record read by the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub timestamp_type: TimestampType,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}
