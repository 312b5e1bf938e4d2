//! `sluice-client`: an async Kafka client for Sluice (and any Kafka broker
//! speaking the same versions), used by the CLI, the benchmark and the
//! simulator's workloads.
//!
//! - [`Client`] holds connections and metadata for one cluster and is shared
//!   by [`Admin`], [`Producer`] and [`Consumer`].
//! - Everything is generic over a [`Connector`]: [`TokioConnector`] for real
//!   TCP, a turmoil one in the simulator.
//! - Nothing reads a clock or draws randomness on its own: record
//!   timestamps come from the [`Clock`] the caller passes ([`system_clock`]
//!   for real use), timers use tokio's time (which turmoil drives), and
//!   every random choice comes from `ClientConfig::seed`.
//!
//! The wire codec is the `kafka-protocol` crate; record batches are
//! encoded here ([`batch`]) and read with `sluice_core::batch`.
//!
//! ```no_run
//! # async fn example() -> sluice_client::Result<()> {
//! use sluice_client::*;
//! let client = Client::new(TokioConnector, ClientConfig::new(["127.0.0.1:9092"]))?;
//! Admin::new(client.clone()).create_topic(&NewTopic::new("events", 3, 1)).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default(), system_clock())?;
//! let delivered = producer.send_and_wait(ProducerRecord::new("events", "hello").with_key("k")).await?;
//! let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
//! consumer.assign([delivered.topic_partition.clone()]);
//! consumer.seek(&delivered.topic_partition, delivered.offset)?;
//! let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```
//!
//! Consumer groups ([`group`]): members of a group share the partitions of
//! the topics they subscribe to, the group leader assigns them (`range` or
//! `roundrobin`), and committed offsets say where each partition resumes.
//!
//! ```no_run
//! # async fn example() -> sluice_client::Result<()> {
//! use sluice_client::*;
//! let client = Client::new(TokioConnector, ClientConfig::new(["127.0.0.1:9092"]))?;
//! let mut consumer = Consumer::new(client, ConsumerConfig::with_group("billing"))?;
//! consumer.subscribe(["events"])?;
//! loop {
//!     let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
//!     if records.is_empty() {
//!         break;
//!     }
//!     // Auto-commit (on by default) commits what poll returned; a caller
//!     // with `enable_auto_commit: false` calls `commit_sync` here.
//! }
//! consumer.close().await?; // commits, then leaves the group
//! # Ok(()) }
//! ```
//!
//! Transactions ([`transaction`]): a [`TransactionalProducer`] writes to
//! several partitions and commits a group's offsets all at once or not at
//! all; consumers with `isolation_level: ReadCommitted` see only what
//! committed.
//!
//! ```no_run
//! # async fn example() -> sluice_client::Result<()> {
//! use sluice_client::*;
//! let client = Client::new(TokioConnector, ClientConfig::new(["127.0.0.1:9092"]))?;
//! let config = TransactionalConfig::new("billing-1");
//! let mut producer = TransactionalProducer::init(client, config, system_clock()).await?;
//! producer.begin()?;
//! let tp = TopicPartition::new("invoices", 0);
//! producer.send(&tp, &[ProducerRecord::new("invoices", "paid")]).await?;
//! producer.send_offsets("billing", &[(TopicPartition::new("orders", 0), 42)]).await?;
//! producer.commit().await?;
//! # Ok(()) }
//! ```

pub mod accumulator;
pub mod admin;
pub mod backoff;
pub mod batch;
pub mod client;
pub mod config;
pub mod connection;
pub mod connector;
pub mod consumer;
pub mod error;
pub mod group;
pub mod metadata;
pub mod partitioner;
pub mod producer;
pub mod producer_id;
pub mod record;
pub mod transaction;

pub use admin::{
    Admin, ApiVersionRange, BrokerApiVersions, ClusterDescription, ConfigEntry, ConfigSource,
    GroupDescription, GroupListing, MemberDescription, NewTopic, QuorumDescription, QuorumEndpoint,
    QuorumReplica, TopicDescription, TopicListing, TransactionDescription, TransactionListing,
};
pub use client::Client;
pub use config::{
    system_clock, Acks, ClientConfig, Clock, Compression, ConsumerConfig, IsolationLevel,
    OffsetReset, ProducerConfig, TransactionalConfig,
};
pub use connection::IN_FLIGHT_REQUESTS_MAX;
pub use connector::{Connector, TokioConnector};
pub use consumer::{Consumer, FetchMarks, ListedOffset, OffsetSpec, RebalanceListener};
pub use error::{Error, Result};
pub use group::{Assignor, CommitHandle};
pub use kafka_protocol::ResponseError;
pub use metadata::{BrokerInfo, ClusterMetadata, PartitionInfo, TopicInfo};
pub use producer::{DeliveryFuture, Producer};
pub use producer_id::ProducerEpoch;
pub use record::{
    ConsumerRecord, Header, ProducerRecord, RecordMetadata, TimestampType, TopicPartition,
};
pub use transaction::{Operation, TransactionState, TransactionalProducer};
