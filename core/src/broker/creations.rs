//! Creations spread over the node's steps. On a node alone, CreateTopics
//! and CreatePartitions do not open their partition logs while the request
//! is handled: each topic (or growth) becomes a job, and the node opens at
//! most `PARTITION_OPENS_PER_STEP_MAX` logs per step (`work_creations`, at
//! a timer the node arms at once while jobs wait), so that one request
//! creating thousands of partitions holds the other connections back for
//! one step at a time, not for the whole creation.
//!
//! A job's logs are held apart from `Topics` until its last is open; then
//! its record is appended to the metadata log and the topic (or its new
//! partitions) installed at once, so Metadata and Produce never see a topic
//! part made. Meanwhile its name is taken (`topic_exists`: a second create
//! of it is answered TOPIC_ALREADY_EXISTS) and its partitions count against
//! `max.broker.partitions`. A job that fails (storage offline, out of
//! descriptors) is undone whole: its logs closed, its directories removed.
//! A deletion of a topic ends its growths first, undone the same way. Jobs
//! run one at a time in the order they came, so two jobs naming the same
//! partition directories never hold them at once, and a growth counts
//! from where the growths before it end (as if they were applied).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kafka_protocol::ResponseError;

use super::{Broker, Written};
use crate::config::TopicConfig;
use crate::metadata::{Change, TopicRecord};
use crate::storage::{Storage, SyncTarget};
use crate::topics::{discard_partitions, topic_name_problem, Partition};
use crate::types::TopicPartition;

/// Partition logs opened per step. Opening one costs about a millisecond
/// on a real disk (a directory, four files, their first writes): 32 hold
/// the other connections back for some 30 ms a step, well under a client's
/// request timeout or a fetch's wait, while the step's fixed cost (a timer
/// round trip, the node's settling) stays small beside the work.
pub const PARTITION_OPENS_PER_STEP_MAX: usize = 32;

/// What a creation came to: the write to wait for, or why it failed.
pub type CreationOutcome = Result<Written, (ResponseError, String)>;

#[derive(Debug)]
enum Target {
    /// A new topic: partitions `0..record.partitions`.
    Topic(TopicRecord),
    /// New partitions `from..to` of the topic `name` whose id is `id`.
    Growth {
        name: String,
        id: [u8; 16],
        from: i32,
        to: i32,
    },
}

#[derive(Debug)]
struct Job {
    id: u64,
    target: Target,
    config: TopicConfig,
    /// The logs opened so far, in partition order; nobody else sees them.
    opened: Vec<Partition>,
}

impl Job {
    fn name(&self) -> &str {
        match &self.target {
            Target::Topic(record) => &record.name,
            Target::Growth { name, .. } => name,
        }
    }

    /// The partitions the job adds: `first..end`.
    fn first(&self) -> i32 {
        match &self.target {
            Target::Topic(_) => 0,
            Target::Growth { from, .. } => *from,
        }
    }

    fn end(&self) -> i32 {
        match &self.target {
            Target::Topic(record) => record.partitions,
            Target::Growth { to, .. } => *to,
        }
    }

    fn next_index(&self) -> i32 {
        self.first() + self.opened.len() as i32
    }
}

/// The creations under way, and the outcomes their requests wait for.
#[derive(Debug, Default)]
pub struct Creations {
    jobs: VecDeque<Job>,
    next_id: u64,
    /// The names of the topics being created, by their name with `.` as
    /// `_` (Kafka's collision rule): looked up once per topic of a request.
    creating: BTreeMap<String, String>,
    /// Each topic being grown: its growths under way, and the count it
    /// will have once they end.
    growing: BTreeMap<String, (usize, i32)>,
    /// Partitions the jobs will add, all of them on this broker.
    pending_partitions: i64,
    /// Jobs whose request still waits for their outcome.
    watched: BTreeSet<u64>,
    /// Outcomes of watched jobs that ended, until their request takes them.
    finished: BTreeMap<u64, CreationOutcome>,
    /// A job ended since the last `take_ended`: a request may be answered.
    ended: bool,
}

impl Creations {
    /// Jobs wait: the node should step them.
    pub fn is_busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// A topic of this name is being created.
    pub fn creating(&self, name: &str) -> bool {
        self.creating
            .get(&name.replace('.', "_"))
            .is_some_and(|n| n == name)
    }

    /// The partition count a topic will have once its growths under way end.
    pub fn growing_to(&self, name: &str) -> Option<i32> {
        self.growing.get(name).map(|&(_, to)| to)
    }

    /// Partitions the jobs will add, all of them on this broker.
    pub fn pending_partitions(&self) -> i64 {
        self.pending_partitions
    }

    /// Kafka's `.` against `_` rule, for names being created.
    pub fn collision(&self, name: &str) -> Option<String> {
        self.creating
            .get(&name.replace('.', "_"))
            .filter(|existing| existing.as_str() != name)
            .map(|existing| format!("Topic '{name}' collides with existing topic: {existing}"))
    }

    /// The outcomes of `ids`, in order, once every one of them ended; they
    /// are forgotten then.
    pub fn take_outcomes(&mut self, ids: &[u64]) -> Option<Vec<CreationOutcome>> {
        if !ids.iter().all(|id| self.finished.contains_key(id)) {
            return None;
        }
        let outcomes = ids
            .iter()
            .map(|id| {
                self.watched.remove(id);
                self.finished.remove(id).expect("checked above")
            })
            .collect();
        Some(outcomes)
    }

    /// Outcomes are kept or awaited.
    pub fn holds_outcomes(&self) -> bool {
        !self.watched.is_empty()
    }

    /// Stops keeping outcomes for jobs no request waits for any more (its
    /// connection closed): the jobs go on, their outcomes are dropped.
    pub fn forget_unwatched(&mut self, waited: &BTreeSet<u64>) {
        self.watched.retain(|id| waited.contains(id));
        self.finished.retain(|id, _| waited.contains(id));
    }

    fn push(&mut self, target: Target, config: TopicConfig) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        match &target {
            Target::Topic(record) => {
                let folded = record.name.replace('.', "_");
                let taken = self.creating.insert(folded, record.name.clone());
                assert!(taken.is_none(), "a name is created once at a time");
                self.pending_partitions += i64::from(record.partitions);
            }
            Target::Growth { name, from, to, .. } => {
                let growing = self.growing.entry(name.clone()).or_insert((0, *to));
                growing.0 += 1;
                growing.1 = growing.1.max(*to);
                self.pending_partitions += i64::from(to - from);
            }
        }
        self.jobs.push_back(Job {
            id,
            target,
            config,
            opened: Vec::new(),
        });
        self.watched.insert(id);
        id
    }

    /// Forgets a job taken out of the queue.
    fn remove(&mut self, job: &Job) {
        self.pending_partitions -= i64::from(job.end() - job.first());
        match &job.target {
            Target::Topic(record) => {
                self.creating.remove(&record.name.replace('.', "_"));
            }
            Target::Growth { name, .. } => {
                let growing = self.growing.get_mut(name).expect("counted when pushed");
                growing.0 -= 1;
                if growing.0 == 0 {
                    self.growing.remove(name);
                }
            }
        }
    }

    fn pop_front(&mut self) -> Option<Job> {
        let job = self.jobs.pop_front()?;
        self.remove(&job);
        Some(job)
    }

    /// True once after a job ended: the requests waiting may be answered.
    pub fn take_ended(&mut self) -> bool {
        std::mem::take(&mut self.ended)
    }

    fn finish(&mut self, id: u64, outcome: CreationOutcome) {
        self.ended = true;
        if self.watched.contains(&id) {
            self.finished.insert(id, outcome);
        }
    }

    pub fn invariants(&self, broker_partitions_max: i64) {
        for id in self.finished.keys() {
            assert!(self.watched.contains(id), "only watched outcomes are kept");
            assert!(*id <= self.next_id);
        }
        // Each job counted against max.broker.partitions when it came.
        assert!(self.jobs.len() as i64 <= broker_partitions_max.max(0));
        assert!(self.pending_partitions >= 0);
        assert_eq!(self.jobs.is_empty(), self.pending_partitions == 0);
        assert_eq!(
            self.jobs.is_empty(),
            self.creating.is_empty() && self.growing.is_empty()
        );
        for job in &self.jobs {
            assert!(job.id <= self.next_id);
            assert!(job.first() < job.end(), "a job adds partitions");
            assert!(job.next_index() <= job.end());
            assert!(!self.finished.contains_key(&job.id), "ended once");
        }
    }
}

impl<S: Storage> Broker<S> {
    /// Takes `name` for a new topic whose logs the next steps open; the
    /// job and the topic's id. Only on a node alone, for a checked request.
    pub fn begin_topic_creation(
        &mut self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> (u64, [u8; 16]) {
        assert!(!self.in_cluster(), "a cluster creates through its quorum");
        assert!(
            topic_name_problem(name).is_none(),
            "created names are checked"
        );
        assert!(partitions > 0, "created topics have partitions");
        assert!(!self.topic_exists(name));
        let record = TopicRecord {
            name: name.to_string(),
            id: self.rng.uuid(),
            partitions,
            configs,
        };
        // As the logs are opened at a start: from the recorded overrides.
        let config = TopicConfig::new(&self.config, &record.configs).unwrap_or_else(|error| {
            tracing::error!(topic = name, %error, "a new topic's config is invalid; using defaults");
            TopicConfig::new(&self.config, &BTreeMap::new()).expect("defaults are valid")
        });
        let id = record.id;
        let job = self.creations.push(Target::Topic(record), config);
        (job, id)
    }

    /// Grows `name` to `count` partitions over the next steps; the job.
    pub fn begin_growth(&mut self, name: &str, count: i32) -> u64 {
        assert!(!self.in_cluster(), "a cluster grows through its quorum");
        let topic = self.topics.get(name).expect("grown topics exist");
        let (id, config) = (topic.id, topic.config.clone());
        let from = self
            .creations
            .growing_to(name)
            .unwrap_or_else(|| self.topics.partition_count(name));
        assert!(count > from, "partitions only grow");
        let target = Target::Growth {
            name: name.to_string(),
            id,
            from,
            to: count,
        };
        self.creations.push(target, config)
    }

    /// One step of the creations: opens at most
    /// `PARTITION_OPENS_PER_STEP_MAX` partition logs, and ends (records
    /// and installs, or undoes) each job whose logs are all open.
    pub fn work_creations(&mut self) {
        let mut opens_left = PARTITION_OPENS_PER_STEP_MAX;
        let mut rounds_left = PARTITION_OPENS_PER_STEP_MAX + self.creations.jobs.len();
        while let Some(job) = self.creations.jobs.front() {
            assert!(rounds_left > 0, "each round opens a log or ends a job");
            rounds_left -= 1;
            if let Some(refusal) = self.front_refusal() {
                self.fail_front(refusal);
                continue;
            }
            if job.next_index() == job.end() {
                self.end_front();
                continue;
            }
            if opens_left == 0 {
                break;
            }
            opens_left -= 1;
            let (name, index) = (job.name().to_string(), job.next_index());
            // A growth's logs take the topic's config as it is now (an
            // AlterConfigs may have come since the growth did).
            let config = match self.topics.get(&name) {
                Some(topic) if matches!(job.target, Target::Growth { .. }) => topic.config.clone(),
                _ => job.config.clone(),
            };
            match self
                .topics
                .open_partition(&mut self.storage, &name, index, config, true)
            {
                Ok((partition, _)) => {
                    let job = self.creations.jobs.front_mut().expect("the front job");
                    job.opened.push(partition);
                }
                Err(error) => {
                    tracing::error!(topic = %name, partition = index, %error, "cannot create the log of a new partition; removing what was created");
                    self.fail_front((
                        ResponseError::KafkaStorageError,
                        "cannot write the topic".into(),
                    ));
                }
            }
        }
    }

    /// Why the front job cannot go on, if it cannot.
    fn front_refusal(&self) -> Option<(ResponseError, String)> {
        let job = self.creations.jobs.front()?;
        if self.storage_offline() {
            return Some((
                ResponseError::KafkaStorageError,
                "the log directory is offline".into(),
            ));
        }
        if let Target::Growth { name, id, from, .. } = &job.target {
            let same = self.topics.get(name).is_some_and(|t| t.id == *id)
                && self.topics.partition_count(name) == *from;
            if !same {
                // A growth before it failed: it counted from that one's end.
                return Some((
                    ResponseError::KafkaStorageError,
                    format!("an earlier change to topic '{name}' failed"),
                ));
            }
        }
        None
    }

    /// Undoes the front job: closes its logs, removes its directories.
    fn fail_front(&mut self, (error, message): (ResponseError, String)) {
        let job = self.creations.pop_front().expect("a front job");
        self.discard_job(job, (error, message));
    }

    fn discard_job(&mut self, job: Job, outcome: (ResponseError, String)) {
        let (first, end) = (job.first(), job.end());
        let name = job.name().to_string();
        tracing::warn!(topic = %name, partitions = ?(first..end), error = ?outcome.0, "undoing a creation");
        discard_partitions(&mut self.storage, &name, job.opened, first..end);
        self.durability
            .note_other_write(SyncTarget::Dir(String::new()));
        self.creations.finish(job.id, Err(outcome));
    }

    /// Records the front job, whose logs are all open, and installs them:
    /// the topic or its new partitions appear at once.
    fn end_front(&mut self) {
        let job = self.creations.pop_front().expect("a front job");
        assert_eq!(job.next_index(), job.end());
        let change = match &job.target {
            Target::Topic(record) => Change::CreateTopic(record.clone()),
            Target::Growth { name, to, .. } => Change::SetPartitions {
                name: name.clone(),
                partitions: *to,
            },
        };
        if let Err(error) = self.metadata.append(&mut self.storage, change) {
            tracing::error!(topic = job.name(), %error, "cannot record a creation; removing its logs");
            let refusal = (
                ResponseError::KafkaStorageError,
                "cannot write the topic".to_string(),
            );
            self.discard_job(job, refusal);
            return;
        }
        let (first, end) = (job.first(), job.end());
        let name = job.name().to_string();
        match job.target {
            Target::Topic(record) => {
                self.topics
                    .install(&name, record.id, job.config, job.opened);
                tracing::info!(topic = %name, partitions = end, "created topic");
            }
            Target::Growth { .. } => {
                self.topics.extend(&name, job.opened);
                tracing::info!(topic = %name, partitions = end, "added partitions");
            }
        }
        assert_eq!(self.topics.partition_count(&name), end);
        for index in first..end {
            self.note_partition_write(&name, index);
            self.moved.insert(TopicPartition::new(name.clone(), index));
        }
        let seq = self
            .durability
            .note_other_write(SyncTarget::Dir(String::new()));
        self.creations.finish(job.id, Ok(Written::Durable(seq)));
    }

    /// Undoes every creation under way: the node stops. Their requests are
    /// answered NOT_CONTROLLER, as a controller that resigns answers what
    /// it had not committed; clients ask again elsewhere or later.
    pub fn abandon_creations(&mut self) {
        while let Some(job) = self.creations.pop_front() {
            let refusal = (
                ResponseError::NotController,
                "the broker is shutting down".to_string(),
            );
            self.discard_job(job, refusal);
        }
    }

    /// Ends the growths of a topic being deleted, undone.
    pub(super) fn cancel_growths(&mut self, name: &str) {
        let (cancelled, kept): (VecDeque<Job>, VecDeque<Job>) =
            std::mem::take(&mut self.creations.jobs)
                .into_iter()
                .partition(
                    |job| matches!(&job.target, Target::Growth { name: n, .. } if n == name),
                );
        self.creations.jobs = kept;
        for job in Vec::from(cancelled) {
            self.creations.remove(&job);
            let refusal = (
                ResponseError::UnknownTopicOrPartition,
                format!("The topic '{name}' was deleted."),
            );
            self.discard_job(job, refusal);
        }
    }
}
