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
    let mut jobs = Vec::new();
    let mut budget = PartitionBudget::new(broker);
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
            create_one_topic(broker, &mut budget, topic, request.validate_only)
        };
        match outcome {
            Ok(Created {
                partitions,
                factor,
                configs,
                written,
                job,
            }) => {
                wait = wait.max(written);
                let id = match job {
                    Some((job, id)) => {
                        jobs.push((results.len(), job));
                        Some(id)
                    }
                    None => broker.topics.get(&name).map(|t| t.id),
                };
                result = result
                    .with_num_partitions(partitions)
                    .with_replication_factor(factor)
                    .with_topic_id(id.map_or(uuid::Uuid::nil(), uuid::Uuid::from_bytes))
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
    let reply = Reply::CreateTopics(CreateTopicsResponse::default().with_topics(results));
    Ok(CreateWait::pending(jobs, wait, reply))
}

/// A CreateTopics or CreatePartitions answer waiting for the creations the
/// node's next steps carry out (`broker::creations`).
#[derive(Debug)]
pub struct CreateWait {
    reply: Box<Reply>,
    /// The jobs, each with the index of the result it answers, in order.
    jobs: Vec<(usize, u64)>,
    /// What the results done at once wait for.
    written: Option<Written>,
}

impl CreateWait {
    /// `reply` once `jobs` ended and `written` holds; at once with none.
    fn pending(jobs: Vec<(usize, u64)>, written: Option<Written>, reply: Reply) -> Pending {
        if jobs.is_empty() {
            return Pending::after_written(written, reply);
        }
        Pending::Creating(CreateWait {
            reply: Box::new(reply),
            jobs,
            written,
        })
    }

    /// The jobs waited for.
    pub fn jobs(&self) -> impl Iterator<Item = u64> + '_ {
        self.jobs.iter().map(|&(_, job)| job)
    }

    /// The answer, once every job ended (the wait back if not): a job
    /// that failed has its result carry the error, as a creation refused
    /// at once would.
    pub fn finish<S: Storage>(self, broker: &mut Broker<S>) -> Result<Pending, CreateWait> {
        let ids: Vec<u64> = self.jobs().collect();
        let Some(outcomes) = broker.creations.take_outcomes(&ids) else {
            return Err(self);
        };
        let CreateWait {
            mut reply,
            jobs,
            mut written,
        } = self;
        for (&(index, _), outcome) in jobs.iter().zip(outcomes) {
            match outcome {
                Ok(done) => written = written.max(Some(done)),
                Err((error, message)) => fail_result(&mut reply, index, error, message),
            }
        }
        Ok(Pending::after_written(written, *reply))
    }
}

/// Marks one topic's result of a CreateTopics or CreatePartitions answer
/// failed.
fn fail_result(reply: &mut Reply, index: usize, error: ResponseError, message: String) {
    let message = Some(StrBytes::from_string(message));
    match reply {
        Reply::CreateTopics(response) => {
            let result = &mut response.topics[index];
            result.error_code = code(error);
            result.error_message = message;
            result.num_partitions = -1;
            result.replication_factor = -1;
            result.topic_id = uuid::Uuid::nil();
            result.configs = None;
        }
        Reply::CreatePartitions(response) => {
            let result = &mut response.results[index];
            result.error_code = code(error);
            result.error_message = message;
        }
        other => unreachable!("creations answer creates, not {other:?}"),
    }
}

/// A topic created (or, with validate_only, one that could be).
struct Created {
    partitions: i32,
    factor: i16,
    configs: Vec<create_topics_response::CreatableTopicConfigs>,
    /// What makes the creation durable; None when validating or when a
    /// job creates it.
    written: Option<Written>,
    /// The job that creates it over the next steps, and the topic's id.
    job: Option<(u64, [u8; 16])>,
}

type CreateOutcome = Result<Created, (ResponseError, String)>;

fn create_one_topic<S: Storage>(
    broker: &mut Broker<S>,
    budget: &mut PartitionBudget,
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
    if let Some(collision) = broker
        .topics
        .collision(&name)
        .or_else(|| broker.creations.collision(&name))
    {
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
    budget.check_topic(name.as_str(), i64::from(partitions))?;
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
    // Counted last, once nothing else refuses the topic; with validate_only
    // too, so that it answers as the same request would.
    budget.take(
        &name,
        &new_replicas(&brokers, partitions, factor, assignments.as_ref()),
    )?;
    if validate_only {
        return Ok(Created {
            partitions,
            factor,
            configs: described,
            written: None,
            job: None,
        });
    }
    if !broker.in_cluster() {
        let job = broker.begin_topic_creation(&name, partitions, topic_config.overrides.explicit);
        return Ok(Created {
            partitions,
            factor,
            configs: described,
            written: None,
            job: Some(job),
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
        job: None,
    })
}

fn describe_refusal(error: ResponseError) -> String {
    match error {
        ResponseError::NotController => "this node is not the active controller".into(),
        _ => "cannot write the topic".into(),
    }
}

/// What `max.topic.partitions` and `max.broker.partitions` leave for one
/// request: each topic's partitions are checked against them, and counted,
/// before anything of it is created, so a request asking too much is
/// refused without a file written (one topic of 2^31-1 partitions at once).
struct PartitionBudget {
    /// Replicas each broker hosts, is about to, or this request gave it.
    loads: BTreeMap<i32, i64>,
    broker_partitions_max: i64,
    topic_partitions_max: i32,
}

impl PartitionBudget {
    fn new<S: Storage>(broker: &Broker<S>) -> PartitionBudget {
        PartitionBudget {
            loads: broker.broker_partition_loads(),
            broker_partitions_max: broker.config.broker_partitions_max,
            topic_partitions_max: broker.config.topic_partitions_max,
        }
    }

    /// A topic may have `partitions` (INVALID_PARTITIONS if not, as Kafka
    /// answers a partition count it cannot take).
    fn check_topic(&self, name: &str, partitions: i64) -> Result<(), (ResponseError, String)> {
        if partitions > i64::from(self.topic_partitions_max) {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "Topic '{name}' would have {partitions} partitions; max.topic.partitions is {}.",
                    self.topic_partitions_max
                ),
            ));
        }
        Ok(())
    }

    /// Counts `new` replicas by broker if every broker stays within
    /// `max.broker.partitions`; POLICY_VIOLATION (Kafka's answer to a
    /// creation its limits refuse) otherwise, and nothing is counted.
    fn take(
        &mut self,
        name: &str,
        new: &BTreeMap<i32, i64>,
    ) -> Result<(), (ResponseError, String)> {
        for (&broker, &count) in new {
            let load = self.loads.get(&broker).copied().unwrap_or(0);
            if load.saturating_add(count) > self.broker_partitions_max {
                return Err((
                    ResponseError::PolicyViolation,
                    format!(
                        "Topic '{name}' would put {count} more partition replicas on broker {broker}, which holds {load}; max.broker.partitions is {}.",
                        self.broker_partitions_max
                    ),
                ));
            }
        }
        for (&broker, &count) in new {
            *self.loads.entry(broker).or_insert(0) += count;
        }
        Ok(())
    }
}

/// The replicas `count` new partitions put on each broker: as `assignments`
/// say, or, placed round robin over `brokers` from a start not known yet,
/// at most the rounded-up share of each (the bound checks the worst start).
fn new_replicas(
    brokers: &[i32],
    count: i32,
    factor: i16,
    assignments: Option<&Vec<Vec<i32>>>,
) -> BTreeMap<i32, i64> {
    let mut placed = BTreeMap::new();
    if let Some(assignments) = assignments {
        for &broker in assignments.iter().flatten() {
            *placed.entry(broker).or_insert(0) += 1;
        }
        return placed;
    }
    if brokers.is_empty() {
        return placed;
    }
    let replicas = i64::from(count) * i64::from(factor);
    let share = (replicas + brokers.len() as i64 - 1) / brokers.len() as i64;
    for &broker in brokers {
        placed.insert(broker, share);
    }
    placed
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
    let mut jobs = Vec::new();
    let mut budget = PartitionBudget::new(broker);
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let outcome = add_partitions(broker, &mut budget, &name, topic, request.validate_only);
        let mut result = create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(topic.name.clone());
        match outcome {
            Ok(Added::Written(written)) => wait = wait.max(written),
            Ok(Added::Job(job)) => jobs.push((results.len(), job)),
            Err((error, message)) => {
                result = result
                    .with_error_code(code(error))
                    .with_error_message(Some(StrBytes::from_string(message)))
            }
        }
        results.push(result);
    }
    let reply = Reply::CreatePartitions(CreatePartitionsResponse::default().with_results(results));
    Ok(CreateWait::pending(jobs, wait, reply))
}

/// How a growth goes on: done (or validated) now, or by a job.
enum Added {
    Written(Option<Written>),
    Job(u64),
}

fn add_partitions<S: Storage>(
    broker: &mut Broker<S>,
    budget: &mut PartitionBudget,
    name: &str,
    request: &create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<Added, (ResponseError, String)> {
    let Some(topic) = broker.topics.get(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        ));
    };
    // Growths under way count as done: a request after one sees the topic
    // as it leaves it, as Kafka's controller, applying them in order, does.
    let current = broker
        .creations
        .growing_to(name)
        .unwrap_or(topic.partitions.len() as i32);
    if request.count < current {
        return Err((ResponseError::InvalidPartitions, format!("The topic {name} currently has {current} partition(s); {} would not be an increase.", request.count)));
    }
    if request.count == current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    budget.check_topic(name, i64::from(request.count))?;
    // The new partitions get the replicas the first has, as placing them does.
    let factor = broker
        .registration(name, 0)
        .map_or(1, |p| p.replicas.len() as i16);
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
    budget.take(
        name,
        &new_replicas(
            &broker.placeable_brokers(),
            request.count - current,
            factor,
            assigned.as_ref(),
        ),
    )?;
    if validate_only && !broker.storage_offline() {
        return Ok(Added::Written(None));
    }
    if !broker.in_cluster() && !broker.storage_offline() {
        return Ok(Added::Job(broker.begin_growth(name, request.count)));
    }
    broker
        .add_partitions(name, request.count, assigned)
        .map(|written| Added::Written(Some(written)))
}
