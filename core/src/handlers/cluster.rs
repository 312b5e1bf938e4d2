//! Cluster-level APIs: Metadata, DescribeCluster, DescribeConfigs, and
//! InitProducerId for idempotent producers.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, now, Context, Handled, Pending};
use crate::broker::{Broker, OFFSETS_TOPIC};
use crate::config::{self, Kind, Source};
use crate::storage::Storage;
use crate::topics::topic_name_problem;
use crate::wire::Reply;

/// This broker as clients reach it: node id, host, port.
pub(super) fn endpoint<S: Storage>(broker: &Broker<S>) -> (i32, StrBytes, i32) {
    (
        broker.config.node_id,
        StrBytes::from_string(broker.advertised.0.clone()),
        broker.advertised.1 as i32,
    )
}

pub(super) fn metadata<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: MetadataRequest,
) -> Handled {
    let header = context.header;
    let all = match &request.topics {
        None => true,
        Some(list) => list.is_empty() && header.version == 0,
    };
    let may_create = header.version < 4 || request.allow_auto_topic_creation;
    let mut wait_seq = None;
    let mut names: Vec<(Option<String>, Option<uuid::Uuid>, Option<ResponseError>)> = Vec::new();
    if all {
        names = broker
            .topics
            .names()
            .map(|n| (Some(n.clone()), None, None))
            .collect();
    } else {
        for topic in request.topics.iter().flatten() {
            let name = topic.name.as_ref().map(|n| n.0.to_string());
            let name = name.or_else(|| broker.topics.name_by_id(&topic.topic_id));
            match name {
                None => names.push((
                    None,
                    Some(topic.topic_id),
                    Some(ResponseError::UnknownTopicId),
                )),
                Some(name) if broker.topics.contains(&name) => names.push((Some(name), None, None)),
                Some(name) if topic_name_problem(&name).is_some() => {
                    names.push((Some(name), None, Some(ResponseError::InvalidTopicException)))
                }
                Some(name) => {
                    let created = if may_create {
                        broker.auto_create(&name)
                    } else {
                        Err(ResponseError::UnknownTopicOrPartition)
                    };
                    match created {
                        Ok(Some(seq)) => {
                            wait_seq = wait_seq.max(Some(seq));
                            names.push((Some(name), None, None));
                        }
                        // Being created at the controller: retry shortly.
                        Ok(None) => {
                            names.push((Some(name), None, Some(ResponseError::LeaderNotAvailable)))
                        }
                        Err(error) => names.push((Some(name), None, Some(error))),
                    }
                }
            }
        }
    }
    let topics = names
        .into_iter()
        .map(|(name, id, error)| metadata_topic(broker, name, id, error))
        .collect();
    let brokers = broker
        .live_brokers()
        .into_iter()
        .map(|b| {
            metadata_response::MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port as i32)
                .with_rack(b.rack.map(StrBytes::from_string))
        })
        .collect();
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
        .with_cluster_authorized_operations(i32::MIN);
    Ok(Pending::after_durable(wait_seq, Reply::Metadata(response)))
}

fn metadata_topic<S: Storage>(
    broker: &Broker<S>,
    name: Option<String>,
    id: Option<uuid::Uuid>,
    error: Option<ResponseError>,
) -> metadata_response::MetadataResponseTopic {
    let mut topic = metadata_response::MetadataResponseTopic::default()
        .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_authorized_operations(i32::MIN);
    if let Some(id) = id {
        topic.topic_id = id;
    }
    if let Some(error) = error {
        return topic.with_error_code(code(error));
    }
    let Some(found) = name.as_ref().and_then(|n| broker.topics.get(n)) else {
        return topic.with_error_code(code(ResponseError::UnknownTopicOrPartition));
    };
    let me = BrokerId(broker.config.node_id);
    let name = name.as_deref().unwrap_or_default();
    let partitions = (0..found.partitions.len() as i32)
        .map(|index| {
            let partition =
                metadata_response::MetadataResponsePartition::default().with_partition_index(index);
            match broker.registration(name, index) {
                // In a cluster, as the committed metadata says.
                Some(registration) => {
                    let ids = |list: &[i32]| list.iter().map(|&id| BrokerId(id)).collect();
                    // Kafka's KRaft metadata cache: a replica whose broker
                    // is fenced or not registered is offline.
                    let offline: Vec<i32> = registration
                        .replicas
                        .iter()
                        .copied()
                        .filter(|&id| {
                            broker
                                .cluster
                                .as_ref()
                                .and_then(|c| c.image.broker(id))
                                .is_none_or(|b| b.fenced)
                        })
                        .collect();
                    let error = if registration.leader < 0 {
                        code(ResponseError::LeaderNotAvailable)
                    } else {
                        0
                    };
                    partition
                        .with_error_code(error)
                        .with_leader_id(BrokerId(registration.leader))
                        .with_leader_epoch(registration.leader_epoch)
                        .with_replica_nodes(ids(&registration.replicas))
                        .with_isr_nodes(ids(&registration.isr))
                        .with_offline_replicas(ids(&offline))
                }
                None => partition
                    .with_leader_id(me)
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![me])
                    .with_isr_nodes(vec![me]),
            }
        })
        .collect();
    topic
        .with_topic_id(uuid::Uuid::from_bytes(found.id))
        .with_is_internal(name == OFFSETS_TOPIC)
        .with_partitions(partitions)
}

pub(super) fn describe_configs<S: Storage>(
    broker: &mut Broker<S>,
    request: DescribeConfigsRequest,
) -> Handled {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            describe_resource(
                broker,
                resource,
                request.include_synonyms,
                request.include_documentation,
            )
        })
        .collect();
    now(Reply::DescribeConfigs(
        DescribeConfigsResponse::default().with_results(results),
    ))
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn config_type_code(kind: Kind) -> i8 {
    match kind {
        Kind::Bool => 1,
        Kind::String | Kind::Choice(_) => 2,
        Kind::Int => 3,
        Kind::Long => 5,
    }
}

fn describe_resource<S: Storage>(
    broker: &Broker<S>,
    resource: &describe_configs_request::DescribeConfigsResource,
    include_synonyms: bool,
    include_documentation: bool,
) -> describe_configs_response::DescribeConfigsResult {
    let name = resource.resource_name.to_string();
    let result = describe_configs_response::DescribeConfigsResult::default()
        .with_resource_type(resource.resource_type)
        .with_resource_name(resource.resource_name.clone());
    let wanted = |key: &str| {
        resource
            .configuration_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
    };
    let entry = |key: &config::Key, value: String, source: i8, read_only: bool| {
        let mut item = describe_configs_response::DescribeConfigsResourceResult::default()
            .with_name(StrBytes::from_static_str(key.name))
            .with_value(Some(StrBytes::from_string(value.clone())))
            .with_read_only(read_only)
            .with_config_source(source)
            .with_config_type(config_type_code(key.kind));
        if include_synonyms {
            item.synonyms = vec![describe_configs_response::DescribeConfigsSynonym::default()
                .with_name(StrBytes::from_static_str(key.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_source(source)];
        }
        if include_documentation && !key.doc.is_empty() {
            item.documentation = Some(StrBytes::from_static_str(key.doc));
        }
        item
    };
    match resource.resource_type {
        RESOURCE_TOPIC => {
            let Some(topic) = broker.topics.get(&name) else {
                return result
                    .with_error_code(code(ResponseError::UnknownTopicOrPartition))
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "Topic {name} does not exist."
                    ))));
            };
            let configs = topic
                .config
                .describe(&broker.config)
                .into_iter()
                .filter(|(key, _, _)| wanted(key))
                .filter_map(|(key, value, source)| {
                    let spec = config::TOPIC_KEYS.iter().find(|k| k.name == key)?;
                    Some(entry(spec, value, config_source_code(source), false))
                })
                .collect();
            result.with_configs(configs)
        }
        RESOURCE_BROKER if name.is_empty() || name == broker.config.node_id.to_string() => {
            let configs = config::BROKER_KEYS
                .iter()
                .filter(|key| wanted(key.name))
                .map(|key| {
                    let explicit = broker.config.values.explicit.contains_key(key.name);
                    entry(
                        key,
                        broker.config.get(key.name),
                        if explicit { 4 } else { 5 },
                        true,
                    )
                })
                .collect();
            result.with_configs(configs)
        }
        RESOURCE_BROKER => result
            .with_error_code(code(ResponseError::InvalidRequest))
            .with_error_message(Some(StrBytes::from_string(format!(
                "Unexpected broker id, expected {}",
                broker.config.node_id
            )))),
        other => result
            .with_error_code(code(ResponseError::InvalidRequest))
            .with_error_message(Some(StrBytes::from_string(format!(
                "Unsupported resource type {other}"
            )))),
    }
}

pub(super) fn config_source_code(source: Source) -> i8 {
    match source {
        Source::Topic => 1,
        Source::Broker => 4,
        Source::Default => 5,
    }
}

pub(super) fn describe_cluster<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: DescribeClusterRequest,
) -> Handled {
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_endpoint_type(1)
        .with_cluster_authorized_operations(i32::MIN);
    if context.header.version >= 1 && request.endpoint_type != 1 {
        response = response
            .with_error_code(code(ResponseError::UnsupportedEndpointType))
            .with_error_message(Some(StrBytes::from_static_str(
                "only broker endpoints are served",
            )));
    } else {
        // v2 (KIP-1073) may ask for fenced brokers too, flagged.
        let brokers: Vec<(crate::broker::BrokerAddress, bool)> =
            if context.header.version >= 2 && request.include_fenced_brokers {
                broker.registered_brokers()
            } else {
                broker
                    .live_brokers()
                    .into_iter()
                    .map(|b| (b, false))
                    .collect()
            };
        response.brokers = brokers
            .into_iter()
            .map(|(b, fenced)| {
                describe_cluster_response::DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(b.host))
                    .with_port(b.port as i32)
                    .with_rack(b.rack.map(StrBytes::from_string))
                    .with_is_fenced(fenced)
            })
            .collect();
    }
    now(Reply::DescribeCluster(response))
}

/// InitProducerId without a transactional id (idempotence); transactional
/// ids go to the transaction coordinator.
pub(super) fn init_producer_id<S: Storage>(broker: &mut Broker<S>) -> Handled {
    let failed = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code(error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if broker.storage_offline() {
        return now(Reply::InitProducerId(failed(
            ResponseError::KafkaStorageError,
        )));
    }
    if broker.in_cluster() {
        // From a block the controller committed: durable on a majority.
        return now(Reply::InitProducerId(match broker.cluster_producer_id() {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(error) => failed(error),
        }));
    }
    match broker.allocate_producer_id() {
        Ok((id, seq)) => {
            let reply = Reply::InitProducerId(
                InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0),
            );
            Ok(Pending::after_durable(Some(seq), reply))
        }
        Err(error) => {
            tracing::error!(%error, "cannot reserve producer ids");
            now(Reply::InitProducerId(failed(
                ResponseError::KafkaStorageError,
            )))
        }
    }
}
