//! Topic, group and cluster administration: create, delete, list and
//! describe topics, add partitions, describe the cluster; consumer groups
//! and their offsets are in [`groups`], the controller quorum in [`quorum`].
//!
//! Topic changes go to the controller (any broker until one is known);
//! lookups go to any broker. A request that fails on the way (connection,
//! timeout, NOT_CONTROLLER) is retried a bounded number of times after a
//! metadata refresh; per-topic errors in an answer are returned as they are.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::client::{Client, Endpoint};
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::metadata::{BrokerInfo, PartitionInfo};

pub mod groups;
pub mod quorum;
pub mod transactions;

pub use groups::{GroupDescription, GroupListing, MemberDescription};
pub use quorum::{QuorumDescription, QuorumEndpoint, QuorumReplica};
pub use transactions::{TransactionDescription, TransactionListing};

/// Attempts of one admin request on retriable failures.
pub const ADMIN_ATTEMPTS_MAX: u32 = 5;

/// DescribeConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;

/// A topic to create. `-1` partitions or replication factor takes the
/// broker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i16) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        }
    }

    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> NewTopic {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// Where a config value comes from (Kafka's `ConfigSource` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Topic,
    DynamicBroker,
    DynamicDefaultBroker,
    StaticBroker,
    Default,
    Other(i8),
}

impl ConfigSource {
    fn from_code(code: i8) -> ConfigSource {
        match code {
            1 => ConfigSource::Topic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            other => ConfigSource::Other(other),
        }
    }
}

/// One config of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
    pub read_only: bool,
    pub is_sensitive: bool,
}

/// A topic as `list_topics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    pub name: String,
    pub id: Uuid,
    pub is_internal: bool,
}

/// A topic with its partitions and configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub id: Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionInfo>,
    pub configs: Vec<ConfigEntry>,
}

/// What DescribeCluster reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: String,
    pub controller_id: Option<i32>,
    pub brokers: Vec<BrokerInfo>,
    /// The ids of the brokers listed that are fenced (asked for with
    /// DescribeCluster v2; empty from older brokers, which list only live ones).
    pub fenced: Vec<i32>,
}

/// One API a broker serves: its key and version range, from ApiVersions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api_key: i16,
    pub min_version: i16,
    pub max_version: i16,
}

/// A broker's ApiVersions answer and the address that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerApiVersions {
    pub answered_by: String,
    /// By API key, ascending.
    pub apis: Vec<ApiVersionRange>,
    /// The cluster's finalized features (name, level), such as
    /// `metadata.version`; none from a single node.
    pub finalized_features: Vec<(String, i16)>,
    /// The epoch of those features (-1 when none were named).
    pub finalized_features_epoch: i64,
}

/// Where an admin request goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Controller,
    Any,
    Broker(i32),
}

/// The admin client.
pub struct Admin<C: Connector> {
    client: Client<C>,
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn per_topic(code: i16, message: Option<&StrBytes>, context: String) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(Error::broker_with_message(
            error,
            context,
            message.map(|m| m.as_str()),
        )),
    }
}

impl<C: Connector> Admin<C> {
    pub fn new(client: Client<C>) -> Admin<C> {
        Admin { client }
    }

    pub fn client(&self) -> &Client<C> {
        &self.client
    }

    /// Sends a request to the controller (or any broker), retrying failures
    /// on the way a bounded number of times.
    async fn request<R: Request>(
        &self,
        api: ApiKey,
        to_controller: bool,
        build: impl Fn(i16) -> R,
    ) -> Result<R::Response> {
        let target = if to_controller {
            Target::Controller
        } else {
            Target::Any
        };
        self.request_to(api, target, build).await
    }

    /// Sends a request to `target`, retrying failures on the way a bounded
    /// number of times.
    async fn request_to<R: Request>(
        &self,
        api: ApiKey,
        target: Target,
        build: impl Fn(i16) -> R,
    ) -> Result<R::Response> {
        let mut attempt = 1;
        loop {
            let result = async {
                let connection = match target {
                    Target::Controller => self.client.controller_connection().await?,
                    Target::Any => self.client.any_connection().await?,
                    Target::Broker(id) => self.client.connection(Endpoint::Broker(id)).await?,
                };
                let version = connection.version(api)?;
                let request = build(version);
                connection
                    .send(&request, version, self.client.request_timeout_ms())
                    .await
            }
            .await;
            match result {
                Err(error) if error.is_retriable() && attempt < ADMIN_ATTEMPTS_MAX => {
                    tracing::debug!(%error, ?api, attempt, "admin request failed; retrying");
                    if error.invalidates_metadata() {
                        let _ = self.client.refresh_metadata_with(Some(&[]), false).await;
                    }
                    self.client.retry_pause(attempt).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.client.request_timeout_ms()).unwrap_or(i32::MAX)
    }

    /// Creates topics; one result per topic, in the order given.
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<Vec<(String, Result<()>)>> {
        let creatable: Vec<CreatableTopic> = topics
            .iter()
            .map(|topic| {
                CreatableTopic::default()
                    .with_name(topic_name(&topic.name))
                    .with_num_partitions(topic.partitions)
                    .with_replication_factor(topic.replication_factor)
                    .with_configs(
                        topic
                            .configs
                            .iter()
                            .map(|(key, value)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(key.clone()))
                                    .with_value(Some(StrBytes::from_string(value.clone())))
                            })
                            .collect(),
                    )
            })
            .collect();
        let timeout_ms = self.timeout_ms();
        let response = self
            .request(ApiKey::CreateTopics, true, |_| {
                CreateTopicsRequest::default()
                    .with_topics(creatable.clone())
                    .with_timeout_ms(timeout_ms)
            })
            .await?;
        let mut answers: BTreeMap<String, Result<()>> = response
            .topics
            .iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let context = format!("create topic {name}");
                (
                    name,
                    per_topic(t.error_code, t.error_message.as_ref(), context),
                )
            })
            .collect();
        Ok(self.in_request_order(topics.iter().map(|t| t.name.clone()), &mut answers))
    }

    fn in_request_order(
        &self,
        names: impl Iterator<Item = String>,
        answers: &mut BTreeMap<String, Result<()>>,
    ) -> Vec<(String, Result<()>)> {
        names
            .map(|name| {
                let result = answers.remove(&name).unwrap_or_else(|| {
                    Err(Error::Protocol {
                        address: "controller".into(),
                        detail: format!("the answer does not mention topic {name}"),
                    })
                });
                (name, result)
            })
            .collect()
    }

    /// Creates one topic.
    pub async fn create_topic(&self, topic: &NewTopic) -> Result<()> {
        let mut results = self.create_topics(std::slice::from_ref(topic)).await?;
        results.pop().expect("one result per topic").1
    }

    /// Deletes topics by name; one result per topic, in the order given.
    pub async fn delete_topics(&self, names: &[String]) -> Result<Vec<(String, Result<()>)>> {
        let timeout_ms = self.timeout_ms();
        let response = self
            .request(ApiKey::DeleteTopics, true, |version| {
                let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                if version >= 6 {
                    request.with_topics(
                        names
                            .iter()
                            .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                            .collect(),
                    )
                } else {
                    request.with_topic_names(names.iter().map(|n| topic_name(n)).collect())
                }
            })
            .await?;
        let mut answers: BTreeMap<String, Result<()>> = response
            .responses
            .iter()
            .filter_map(|r| {
                let name = r.name.as_ref()?.0.to_string();
                let context = format!("delete topic {name}");
                Some((
                    name,
                    per_topic(r.error_code, r.error_message.as_ref(), context),
                ))
            })
            .collect();
        Ok(self.in_request_order(names.iter().cloned(), &mut answers))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut results = self.delete_topics(&[name.to_string()]).await?;
        results.pop().expect("one result per topic").1
    }

    /// Every topic, internal ones included, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        self.client.refresh_metadata_with(None, false).await?;
        Ok(self
            .client
            .metadata()
            .topics
            .values()
            .map(|t| TopicListing {
                name: t.name.clone(),
                id: t.id,
                is_internal: t.is_internal,
            })
            .collect())
    }

    /// Partitions (leader, replicas, ISR) and configs of each topic; fails
    /// with UNKNOWN_TOPIC_OR_PARTITION if one does not exist.
    pub async fn describe_topics(&self, names: &[String]) -> Result<Vec<TopicDescription>> {
        self.client
            .refresh_metadata_with(Some(names), false)
            .await?;
        let metadata = self.client.metadata();
        let mut configs = self.describe_topic_configs(names).await?;
        names
            .iter()
            .map(|name| {
                let Some(topic) = metadata.topics.get(name) else {
                    let error = metadata
                        .topic_errors
                        .get(name)
                        .copied()
                        .unwrap_or(ResponseError::UnknownTopicOrPartition);
                    return Err(Error::broker(error, format!("describe topic {name}")));
                };
                Ok(TopicDescription {
                    name: name.clone(),
                    id: topic.id,
                    is_internal: topic.is_internal,
                    partitions: topic.partitions.clone(),
                    configs: configs.remove(name).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The configs of each topic (DescribeConfigs).
    pub async fn describe_topic_configs(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Vec<ConfigEntry>>> {
        let resources: Vec<DescribeConfigsResource> = names
            .iter()
            .map(|name| {
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_string(name.clone()))
                    .with_configuration_keys(None)
            })
            .collect();
        let response = self
            .request(ApiKey::DescribeConfigs, false, |_| {
                DescribeConfigsRequest::default().with_resources(resources.clone())
            })
            .await?;
        let mut configs = BTreeMap::new();
        for result in response.results {
            let name = result.resource_name.to_string();
            let context = format!("describe configs of topic {name}");
            per_topic(result.error_code, result.error_message.as_ref(), context)?;
            let entries = result
                .configs
                .into_iter()
                .map(|c| ConfigEntry {
                    name: c.name.to_string(),
                    value: c.value.map(|v| v.to_string()),
                    source: ConfigSource::from_code(c.config_source),
                    read_only: c.read_only,
                    is_sensitive: c.is_sensitive,
                })
                .collect();
            configs.insert(name, entries);
        }
        Ok(configs)
    }

    /// Grows a topic to `partitions_total` partitions.
    pub async fn create_partitions(&self, topic: &str, partitions_total: i32) -> Result<()> {
        let timeout_ms = self.timeout_ms();
        let response = self
            .request(ApiKey::CreatePartitions, true, |_| {
                CreatePartitionsRequest::default()
                    .with_timeout_ms(timeout_ms)
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(topic_name(topic))
                        .with_count(partitions_total)
                        .with_assignments(None)])
            })
            .await?;
        let context = || format!("add partitions to {topic}");
        let Some(result) = response.results.iter().find(|r| r.name.0.as_str() == topic) else {
            return Err(Error::Protocol {
                address: "controller".into(),
                detail: format!("{}: the answer does not mention the topic", context()),
            });
        };
        per_topic(result.error_code, result.error_message.as_ref(), context())?;
        let _ = self
            .client
            .refresh_metadata_with(Some(&[topic.to_string()]), false)
            .await;
        Ok(())
    }

    /// The APIs and versions a broker serves: the ApiVersions answer of
    /// the connection the client holds to one (opened if need be).
    pub async fn api_versions(&self) -> Result<BrokerApiVersions> {
        let connection = self.client.any_connection().await?;
        let apis = connection
            .versions()
            .broker_ranges()
            .iter()
            .map(|(&api_key, &(min_version, max_version))| ApiVersionRange {
                api_key,
                min_version,
                max_version,
            })
            .collect();
        let (finalized, epoch) = connection.versions().finalized_features();
        Ok(BrokerApiVersions {
            answered_by: connection.address().to_string(),
            apis,
            finalized_features: finalized.to_vec(),
            finalized_features_epoch: epoch,
        })
    }

    /// Cluster id, controller and brokers.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let response = self
            .request(ApiKey::DescribeCluster, false, |version| {
                let request =
                    DescribeClusterRequest::default().with_include_fenced_brokers(version >= 2);
                if version >= 1 {
                    request.with_endpoint_type(1)
                } else {
                    request
                }
            })
            .await?;
        per_topic(
            response.error_code,
            response.error_message.as_ref(),
            "describe cluster".into(),
        )?;
        Ok(ClusterDescription {
            cluster_id: response.cluster_id.to_string(),
            controller_id: Some(response.controller_id.0).filter(|&id| id >= 0),
            brokers: response
                .brokers
                .iter()
                .map(|b| BrokerInfo {
                    node_id: b.broker_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                })
                .collect(),
            fenced: response
                .brokers
                .iter()
                .filter(|b| b.is_fenced)
                .map(|b| b.broker_id.0)
                .collect(),
        })
    }
}
