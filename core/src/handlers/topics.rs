//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions.
//! Each change is recorded in the metadata log and answered once durable.

use std::collections::BTreeMap;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::cluster::config_source_code;
use super::{code, Handled, Pending};
use crate::broker::{Broker, Written};
use crate::config::TopicConfig;
use crate::storage::Storage;
use crate::topics::topic_name_problem;
use crate::wire::Reply;

pub(super) fn create_topics<S: Storage>(
    broker: &mut Broker<S>,
    request: CreateTopicsRequest,
) -> Handled {
    let mut seen = BTreeMap::new();
    for topic in &request.topics {
        *seen.entry(topic.name.0.to_string()).or_insert(0) += 1;
    }
    let mut results = Vec::new();
    let mut wait = None;
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let mut result = create_topics_response::CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let outcome = if seen[&name] > 1 {
            Err((
                ResponseError::InvalidRequest,
                format!("Duplicate topic name: {name}"),
            ))
        } else {
            create_one_topic(broker, topic, request.validate_only)
        };
        match outcome {
            Ok(Created {
                partitions,
                factor,
                configs,
                written,
            }) => {
                wait = wait.max(written);
                let found = broker.topics.get(&name);
                result = result
                    .with_num_partitions(partitions)
                    .with_replication_factor(factor)
                    .with_topic_id(
                        found.map_or(uuid::Uuid::nil(), |t| uuid::Uuid::from_bytes(t.id)),
                    )
                    .with_configs(Some(configs));
            }
            Err((error, message)) => {
                result = result
                    .with_error_code(code(error))
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
        }
        results.push(result);
    }
    let reply = Reply::CreateTopics(CreateTopicsResponse::default().with_topics(results.clone()));
    Ok(Pending::after_written(wait, reply))
}

/// A topic created (or, with validate_only, one that could be).
struct Created {
    partitions: i32,
    factor: i16,
    configs: Vec<create_topics_response::CreatableTopicConfigs>,
    /// What makes the creation durable; None when validating.
    written: Option<Written>,
}

type CreateOutcome = Result<Created, (ResponseError, String)>;

fn create_one_topic<S: Storage>(
    broker: &mut Broker<S>,
    topic: &create_topics_request::CreatableTopic,
    validate_only: bool,
) -> CreateOutcome {
    let name = topic.name.0.to_string();
    if let Some(problem) = topic_name_problem(&name) {
        return Err((ResponseError::InvalidTopicException, problem));
    }
    if broker.storage_offline() {
        // What the node holds in memory may never reach the disk: claiming
        // the topic exists (or creating it) would be a promise it cannot keep.
        return Err((
            ResponseError::KafkaStorageError,
            "the log directory is offline".into(),
        ));
    }
    if broker.topic_exists(&name) {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    if let Some(collision) = broker.topics.collision(&name) {
        return Err((ResponseError::InvalidTopicException, collision));
    }
    let partitions = match (topic.num_partitions, topic.assignments.len()) {
        (-1, 0) => broker.config.num_partitions,
        (-1, assigned) => assigned as i32,
        (n, 0) if n > 0 => n,
        (n, _) if n > 0 => {
            return Err((
                ResponseError::InvalidRequest,
                "Both numPartitions and replicaAssignments were set".into(),
            ))
        }
        (n, _) => {
            return Err((
                ResponseError::InvalidPartitions,
                format!("Number of partitions was set to an invalid non-positive value: {n}."),
            ))
        }
    };
    let factor = match topic.replication_factor {
        -1 => broker.config.default_replication_factor,
        n => n,
    };
    if factor <= 0 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0.".into(),
        ));
    }
    let brokers = broker.placeable_brokers();
    if factor as usize > brokers.len() {
        return Err((ResponseError::InvalidReplicationFactor, format!("Unable to replicate the partition {factor} time(s): The target replication factor of {factor} cannot be reached because only {} broker(s) are registered.", brokers.len())));
    }
    let assignments = check_assignments(&brokers, topic.assignments.iter().map(|a| &a.broker_ids))?;
    let mut configs = BTreeMap::new();
    for entry in &topic.configs {
        let Some(value) = &entry.value else {
            return Err((
                ResponseError::InvalidConfig,
                format!(
                    "Null value not supported for topic configs: {}",
                    entry.name.as_str()
                ),
            ));
        };
        configs.insert(entry.name.to_string(), value.to_string());
    }
    let topic_config = TopicConfig::new(&broker.config, &configs)
        .map_err(|e| (ResponseError::InvalidConfig, e.to_string()))?;
    let described = topic_config
        .describe(&broker.config)
        .into_iter()
        .map(|(key, value, source)| {
            create_topics_response::CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(key))
                .with_value(Some(StrBytes::from_string(value)))
                .with_config_source(config_source_code(source))
        })
        .collect();
    if validate_only {
        return Ok(Created {
            partitions,
            factor,
            configs: described,
            written: None,
        });
    }
    let written = broker
        .create_topic(
            &name,
            partitions,
            topic_config.overrides.explicit,
            factor,
            assignments,
        )
        .map_err(|e| (e, describe_refusal(e)))?;
    Ok(Created {
        partitions,
        factor,
        configs: described,
        written: Some(written),
    })
}

fn describe_refusal(error: ResponseError) -> String {
    match error {
        ResponseError::NotController => "this node is not the active controller".into(),
        _ => "cannot write the topic".into(),
    }
}

/// Replica assignments as a request gives them: each a list of distinct
/// brokers that may host replicas (this one, alone), all of one length.
/// None when the request gives none.
fn check_assignments<'a>(
    brokers: &[i32],
    assignments: impl Iterator<Item = &'a Vec<BrokerId>>,
) -> Result<Option<Vec<Vec<i32>>>, (ResponseError, String)> {
    let lists: Vec<Vec<i32>> = assignments
        .map(|a| a.iter().map(|b| b.0).collect())
        .collect();
    if lists.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Err((ResponseError::InvalidReplicaAssignment, why));
    for list in &lists {
        let distinct: std::collections::BTreeSet<i32> = list.iter().copied().collect();
        if list.is_empty() || distinct.len() != list.len() {
            return bad(format!(
                "Replica assignment {list:?} is empty or names a broker twice"
            ));
        }
        if list.len() != lists[0].len() {
            return bad("All replica assignments must have the same length".into());
        }
        if let Some(unknown) = list.iter().find(|b| !brokers.contains(b)) {
            return bad(format!(
                "Replica assignment names broker {unknown}, which cannot host replicas"
            ));
        }
    }
    Ok(Some(lists))
}

pub(super) fn delete_topics<S: Storage>(
    broker: &mut Broker<S>,
    request: DeleteTopicsRequest,
) -> Handled {
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut results = Vec::new();
    let mut wait = None;
    for (name, id) in wanted {
        let resolved = name.clone().or_else(|| broker.topics.name_by_id(&id));
        let mut result = delete_topics_response::DeletableTopicResult::default()
            .with_name(
                resolved
                    .clone()
                    .map(|n| TopicName(StrBytes::from_string(n))),
            )
            .with_topic_id(id);
        let outcome = match resolved {
            None => Err(ResponseError::UnknownTopicId),
            Some(name) if !broker.topics.contains(&name) => {
                Err(ResponseError::UnknownTopicOrPartition)
            }
            Some(name) => delete_topic(broker, &name),
        };
        match outcome {
            Ok(written) => wait = wait.max(Some(written)),
            Err(error) => result = result.with_error_code(code(error)),
        }
        results.push(result);
    }
    let reply =
        Reply::DeleteTopics(DeleteTopicsResponse::default().with_responses(results.clone()));
    Ok(Pending::after_written(wait, reply))
}

fn delete_topic<S: Storage>(broker: &mut Broker<S>, name: &str) -> Result<Written, ResponseError> {
    broker.delete_topic(name)
}

pub(super) fn create_partitions<S: Storage>(
    broker: &mut Broker<S>,
    request: CreatePartitionsRequest,
) -> Handled {
    let mut results = Vec::new();
    let mut wait = None;
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let outcome = add_partitions(broker, &name, topic, request.validate_only);
        let mut result = create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(topic.name.clone());
        match outcome {
            Ok(written) => wait = wait.max(written),
            Err((error, message)) => {
                result = result
                    .with_error_code(code(error))
                    .with_error_message(Some(StrBytes::from_string(message)))
            }
        }
        results.push(result);
    }
    let reply =
        Reply::CreatePartitions(CreatePartitionsResponse::default().with_results(results.clone()));
    Ok(Pending::after_written(wait, reply))
}

fn add_partitions<S: Storage>(
    broker: &mut Broker<S>,
    name: &str,
    request: &create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<Option<Written>, (ResponseError, String)> {
    let Some(topic) = broker.topics.get(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        ));
    };
    let current = topic.partitions.len() as i32;
    if request.count < current {
        return Err((ResponseError::InvalidPartitions, format!("The topic {name} currently has {current} partition(s); {} would not be an increase.", request.count)));
    }
    if request.count == current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    let mut assigned = None;
    if let Some(assignments) = request.assignments.as_ref().filter(|a| !a.is_empty()) {
        if assignments.len() as i32 != request.count - current {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "Assignments must cover exactly the new partitions".into(),
            ));
        }
        assigned = check_assignments(
            &broker.placeable_brokers(),
            assignments.iter().map(|a| &a.broker_ids),
        )?;
    }
    if validate_only && !broker.storage_offline() {
        return Ok(None);
    }
    broker
        .add_partitions(name, request.count, assigned)
        .map(Some)
}
