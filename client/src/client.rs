//! `Client`: the shared handle to a cluster that admin, producer and
//! consumer are built on. It owns the connector, one connection slot per
//! broker (and per bootstrap address), the metadata cache and the seeded
//! generator for backoff jitter.
//!
//! A slot opens its connection on first use and reopens it after a failure,
//! waiting a bounded exponential backoff between attempts. Metadata is
//! fetched from any reachable broker, falling back to the bootstrap list;
//! callers refresh it when an answer says it is stale.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::rng::Rng;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::backoff::backoff_ms;
use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::connector::Connector;
use crate::error::{check_code, Error, Result};
use crate::metadata::{ClusterMetadata, TopicInfo};
use crate::record::TopicPartition;

/// Metadata requests per refresh before giving up (retriable failures only).
pub const METADATA_ATTEMPTS_MAX: u32 = 5;

/// Refreshes while waiting for a topic to appear or get leaders.
pub const TOPIC_WAIT_ATTEMPTS_MAX: u32 = 10;

/// Where a connection goes: a broker from metadata, or a bootstrap address
/// (by its index in the list) before any metadata is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Broker(i32),
    Bootstrap(usize),
}

struct Slot {
    address: String,
    connection: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
}

struct Inner<C> {
    config: ClientConfig,
    connector: C,
    metadata: Mutex<ClusterMetadata>,
    slots: Mutex<BTreeMap<Endpoint, Arc<AsyncMutex<Slot>>>>,
    rng: Mutex<Rng>,
}

/// A handle to one cluster; cheap to clone, shared by admin, producers and
/// consumers.
pub struct Client<C: Connector> {
    inner: Arc<Inner<C>>,
}

impl<C: Connector> Clone for Client<C> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Connector> Client<C> {
    /// A client for the cluster behind `config.bootstrap_servers`. Nothing
    /// connects until the first request.
    pub fn new(connector: C, config: ClientConfig) -> Result<Client<C>> {
        config.validate()?;
        Ok(Client {
            inner: Arc::new(Inner {
                rng: Mutex::new(Rng::from_seed(config.seed)),
                config,
                connector,
                metadata: Mutex::new(ClusterMetadata::default()),
                slots: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A copy of the cached metadata.
    pub fn metadata(&self) -> ClusterMetadata {
        self.lock_metadata().clone()
    }

    fn lock_metadata(&self) -> std::sync::MutexGuard<'_, ClusterMetadata> {
        self.inner.metadata.lock().expect("metadata lock")
    }

    pub(crate) fn cached_topic(&self, name: &str) -> Option<TopicInfo> {
        self.lock_metadata().topics.get(name).cloned()
    }

    /// The partition count of a topic whose metadata is cached.
    pub(crate) fn cached_partition_count(&self, name: &str) -> Option<i32> {
        self.lock_metadata()
            .topics
            .get(name)
            .map(|t| t.partition_count())
    }

    /// The partitions of a cached topic that have a leader.
    pub(crate) fn available_partitions(&self, name: &str) -> Vec<i32> {
        self.lock_metadata()
            .topics
            .get(name)
            .map(|t| t.available_partitions())
            .unwrap_or_default()
    }

    pub(crate) fn leader_of(&self, tp: &TopicPartition) -> Option<i32> {
        self.lock_metadata()
            .topics
            .get(&tp.topic)
            .and_then(|t| t.leader(tp.partition))
    }

    pub(crate) fn request_timeout_ms(&self) -> u64 {
        self.inner.config.request_timeout_ms
    }

    /// The wait before retry `attempt` (1-based) of a failed request.
    pub(crate) fn retry_backoff_ms(&self, attempt: u32) -> u64 {
        let config = &self.inner.config;
        let mut rng = self.inner.rng.lock().expect("rng lock");
        backoff_ms(
            attempt,
            config.retry_backoff_ms,
            config.retry_backoff_max_ms,
            &mut rng,
        )
    }

    pub(crate) async fn retry_pause(&self, attempt: u32) {
        tokio::time::sleep(Duration::from_millis(self.retry_backoff_ms(attempt))).await;
    }

    fn slot(&self, endpoint: Endpoint) -> Result<(Arc<AsyncMutex<Slot>>, String)> {
        let address = match endpoint {
            Endpoint::Bootstrap(index) => self.inner.config.bootstrap_servers[index].clone(),
            Endpoint::Broker(id) => match self.lock_metadata().brokers.get(&id) {
                Some(broker) => broker.address(),
                None => {
                    return Err(Error::Disconnected {
                        address: format!("broker {id}"),
                        reason: "the broker is not in the current metadata".into(),
                    })
                }
            },
        };
        let mut slots = self.inner.slots.lock().expect("slots lock");
        let slot = slots.entry(endpoint).or_insert_with(|| {
            Arc::new(AsyncMutex::new(Slot {
                address: address.clone(),
                connection: None,
                failures: 0,
                retry_at: None,
            }))
        });
        Ok((slot.clone(), address))
    }

    /// The open connection to `endpoint`, opening one if needed. After a
    /// failed attempt the next one waits a growing, bounded backoff.
    pub(crate) async fn connection(&self, endpoint: Endpoint) -> Result<Arc<Connection>> {
        let (slot, address) = self.slot(endpoint)?;
        let mut slot = slot.lock().await;
        if slot.address != address {
            slot.address = address.clone();
            slot.connection = None;
        }
        if let Some(connection) = slot.connection.as_ref().filter(|c| c.is_open()) {
            return Ok(connection.clone());
        }
        slot.connection = None;
        if let Some(retry_at) = slot.retry_at {
            tokio::time::sleep_until(retry_at).await;
        }
        match self.open(&address).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                slot.failures = 0;
                slot.retry_at = None;
                slot.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                slot.failures = slot.failures.saturating_add(1);
                let config = &self.inner.config;
                let wait_ms = {
                    let mut rng = self.inner.rng.lock().expect("rng lock");
                    let (base, max) =
                        (config.reconnect_backoff_ms, config.reconnect_backoff_max_ms);
                    backoff_ms(slot.failures, base, max, &mut rng)
                };
                slot.retry_at = Some(Instant::now() + Duration::from_millis(wait_ms));
                tracing::debug!(%address, %error, wait_ms, "connection attempt failed");
                Err(error)
            }
        }
    }

    /// A new connection of its own to `address`, outside the shared slots.
    /// A group member talks to its coordinator over one: a JoinGroup may
    /// wait for the whole rebalance, and brokers answer a connection's
    /// requests in order, so sharing it would stall other members' requests
    /// (and their heartbeats) behind that wait.
    pub(crate) async fn open_dedicated(&self, address: &str) -> Result<Connection> {
        self.open(address).await
    }

    async fn open(&self, address: &str) -> Result<Connection> {
        let config = &self.inner.config;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let opening = Connection::open(&self.inner.connector, address, config);
        tokio::time::timeout(timeout, opening)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: format!("connecting to {address}"),
                    after_ms: config.connect_timeout_ms,
                })
            })
    }

    /// Known brokers first (by id), then the bootstrap addresses.
    pub(crate) fn candidates(&self) -> Vec<Endpoint> {
        let brokers: Vec<Endpoint> = self
            .lock_metadata()
            .brokers
            .keys()
            .map(|&id| Endpoint::Broker(id))
            .collect();
        let bootstrap = (0..self.inner.config.bootstrap_servers.len()).map(Endpoint::Bootstrap);
        brokers.into_iter().chain(bootstrap).collect()
    }

    /// Any reachable broker: an open connection if there is one, else the
    /// first candidate that accepts.
    pub(crate) async fn any_connection(&self) -> Result<Arc<Connection>> {
        let candidates = self.candidates();
        for &endpoint in &candidates {
            let Ok((slot, _)) = self.slot(endpoint) else {
                continue;
            };
            let open = slot.try_lock().ok().and_then(|s| s.connection.clone());
            if let Some(connection) = open.filter(|c| c.is_open()) {
                return Ok(connection);
            }
        }
        let mut last = String::from("no candidates");
        for endpoint in candidates {
            match self.connection(endpoint).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last = error.to_string(),
            }
        }
        Err(Error::NoBrokerReachable { last })
    }

    /// The controller, for topic administration; any broker if unknown.
    pub(crate) async fn controller_connection(&self) -> Result<Arc<Connection>> {
        let controller = self.lock_metadata().controller_id;
        match controller {
            Some(id) => self.connection(Endpoint::Broker(id)).await,
            None => self.any_connection().await,
        }
    }

    /// Fetches metadata for `topics` (every topic when `None`) and folds it
    /// into the cache, retrying retriable failures a bounded number of times.
    pub async fn refresh_metadata(&self, topics: Option<&[String]>) -> Result<()> {
        let auto_create = self.inner.config.allow_auto_topic_creation;
        self.refresh_metadata_with(topics, auto_create).await
    }

    /// As `refresh_metadata`, choosing whether unknown topics may be created
    /// (admin lookups never create them).
    pub(crate) async fn refresh_metadata_with(
        &self,
        topics: Option<&[String]>,
        auto_create: bool,
    ) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.fetch_metadata(topics, auto_create).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retriable() && attempt < METADATA_ATTEMPTS_MAX => {
                    tracing::debug!(%error, attempt, "metadata refresh failed; retrying");
                    self.retry_pause(attempt).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn fetch_metadata(&self, topics: Option<&[String]>, auto_create: bool) -> Result<()> {
        let connection = self.any_connection().await?;
        let version = connection.version(ApiKey::Metadata)?;
        let names = topics.map(|names| {
            names
                .iter()
                .map(|name| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                })
                .collect()
        });
        let request = MetadataRequest::default()
            .with_topics(names)
            // Before v4 the field does not exist and brokers always may create.
            .with_allow_auto_topic_creation(version < 4 || auto_create);
        let response = connection
            .send(&request, version, self.request_timeout_ms())
            .await?;
        check_code(response.error_code, || {
            format!("metadata from {}", connection.address())
        })?;
        if response.brokers.is_empty() {
            return Err(Error::Protocol {
                address: connection.address().to_string(),
                detail: "Metadata answer lists no brokers".into(),
            });
        }
        self.lock_metadata().apply(&response, topics.is_none());
        Ok(())
    }

    /// The topic's metadata, from the cache or fetched. Waits (bounded) while
    /// the topic is being created or its partitions have no leader yet.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo> {
        if let Some(topic) = self.cached_topic(name).filter(|t| t.partition_count() > 0) {
            return Ok(topic);
        }
        let names = [name.to_string()];
        let mut attempt = 1;
        loop {
            self.refresh_metadata(Some(&names)).await?;
            let (topic, error) = {
                let metadata = self.lock_metadata();
                (
                    metadata.topics.get(name).cloned(),
                    metadata.topic_errors.get(name).copied(),
                )
            };
            let error = match (topic, error) {
                (Some(topic), _) if topic.partition_count() > 0 => return Ok(topic),
                (_, Some(error)) => error,
                _ => ResponseError::LeaderNotAvailable,
            };
            // A topic being created answers LEADER_NOT_AVAILABLE; one that
            // auto-creation is about to make may still look unknown.
            let waiting = match error {
                ResponseError::LeaderNotAvailable => true,
                ResponseError::UnknownTopicOrPartition => {
                    self.inner.config.allow_auto_topic_creation
                }
                _ => false,
            };
            if !waiting || attempt >= TOPIC_WAIT_ATTEMPTS_MAX {
                return Err(Error::broker(error, format!("metadata for topic {name}")));
            }
            self.retry_pause(attempt).await;
            attempt += 1;
        }
    }

    /// Fetches the metadata of these topics again (after a stale answer).
    pub(crate) async fn refresh_topics(&self, topics: &[String]) -> Result<()> {
        self.refresh_metadata(Some(topics)).await
    }
}
