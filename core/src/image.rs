//! The metadata image: what a node knows of the cluster after applying the
//! committed records of `__cluster_metadata`, one at a time and in offset
//! order. Brokers, topics and their partitions, configs, the next producer
//! id block and the finalized features all live here; the broker answers
//! Metadata requests and decides what it leads or follows from it.
//!
//! Each record changes the image as Kafka's `MetadataDelta` would replay it
//! and `MetadataImage` hold the result (apache/kafka trunk, commit 1eb76443,
//! `metadata/src/main/java/org/apache/kafka/image/` and
//! `.../metadata/PartitionRegistration.java`, `.../metadata/BrokerRegistration.java`):
//!
//! - RegisterBrokerRecord adds a broker, or replaces the one with its id (a
//!   restart brings a new epoch and incarnation id). Listeners are a map by
//!   name, as in Kafka: a name listed twice keeps its last endpoint.
//! - BrokerRegistrationChangeRecord must carry the registered epoch, and
//!   changes fencing (1 fence, -1 unfence, 0 leave), controlled shutdown
//!   (1 enter, 0 leave) and, when not empty, the log directories.
//! - TopicRecord adds a topic with no partitions; PartitionRecord sets a
//!   partition's whole state (replacing one that exists, as Kafka does);
//!   PartitionChangeRecord merges into an existing partition as
//!   `PartitionRegistration.merge` does: an absent field keeps its value,
//!   Leader -2 keeps the leader and its epoch, any other Leader (-1 for none)
//!   sets it and bumps the leader epoch, and every change bumps the partition
//!   epoch. (When the controller wants a leader epoch bump without a new
//!   leader, for a shrunk replica set or, before metadata.version 3.6, a
//!   shrunk ISR, it writes the current leader into Leader; the image needs no
//!   metadata.version to follow it.)
//! - RemoveTopicRecord drops the topic, its partitions and its topic configs.
//! - ConfigRecord sets one key of one resource, and a null value deletes it;
//!   a resource left with no keys is dropped.
//! - FeatureLevelRecord finalizes a feature at a level; level 0 removes it.
//! - ProducerIdsRecord moves the next producer id block forward.
//! - BeginTransactionRecord, EndTransactionRecord and AbortTransactionRecord
//!   change nothing here: they bound a metadata transaction, whose records
//!   the loader (the node) holds back until its end and then applies one by
//!   one, or drops when it is aborted (Kafka's `MetadataBatchLoader`).
//!
//! Where Kafka's loader would throw (a change to an unregistered broker or a
//! stale broker epoch, a partition of a topic the image lacks, an unknown
//! enum value, a partition state its constructor refuses), `apply` returns
//! an `ImageError` and leaves the image as it was: every check runs before
//! the first change. The image is stricter than Kafka's in a few places
//! where a record could only come from a broken log, because the invariants
//! below depend on it: a TopicRecord may not reuse a topic id or a live
//! topic's name, a topic config must name a live topic (the controller's
//! existence check), a partition state must be consistent (leader in the
//! ISR, ISR within the replicas, no duplicates, epochs not negative), the
//! next producer id only grows (the controller's own replay check), and
//! offsets only grow. The caller is expected to log the error and stop, as
//! Kafka's metadata loader faults.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use uuid::Uuid;

use crate::metadata_records::{
    BrokerRegistrationChangeRecord, ConfigRecord, FeatureLevelRecord, MetadataRecord,
    PartitionChangeRecord, PartitionRecord, ProducerIdsRecord, RegisterBrokerRecord,
    RemoveTopicRecord, TopicRecord,
};

/// Kafka's `ConfigResource.Type` id of a topic.
pub const RESOURCE_TYPE_TOPIC: i8 = 2;
/// Kafka's `ConfigResource.Type` id of a broker (name: the id as text, or
/// empty for the cluster-wide default).
pub const RESOURCE_TYPE_BROKER: i8 = 4;
/// The feature whose level says which records and fields the log may hold.
pub const METADATA_VERSION_FEATURE: &str = "metadata.version";
/// The lowest metadata.version level Kafka knows (3.0-IV1); Kafka's
/// `MetadataVersion.fromFeatureLevel` refuses anything below it.
pub const METADATA_VERSION_LEVEL_MIN: i16 = 1;
/// The metadata.version level a new cluster's first active controller
/// finalizes: 4.0-IV1, the lowest level at which Kafka itself writes every
/// record at the version Sluice writes it (`metadata_records`):
/// PartitionRecord and PartitionChangeRecord v2 (`isElrSupported`, 4.0-IV1),
/// RegisterBrokerRecord v3 and BrokerRegistrationChangeRecord v2 (log
/// directories, 3.7-IV2), in metadata transactions (3.6-IV1). A Kafka
/// reader told a lower level would expect older record versions than the
/// log holds. (In the trunk the record schemas were checked against,
/// 4.0-IV1 was still past `LATEST_PRODUCTION`, 4.0-IV0.)
pub const METADATA_VERSION_LEVEL_WRITTEN: i16 = 23;
/// A partition's `leader` when it has none.
pub const LEADER_NONE: i32 = PartitionChangeRecord::LEADER_NONE;

/// One listener of a registered broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub listener_name: String,
    pub host: String,
    pub port: u16,
    /// Kafka's SecurityProtocol id (0 PLAINTEXT, 1 SSL, 2 SASL_PLAINTEXT,
    /// 3 SASL_SSL).
    pub security_protocol: i16,
}

/// The levels of a feature a broker can run at, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub level_min: i16,
    pub level_max: i16,
}

/// A broker as its latest registration and changes describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub id: i32,
    /// The offset of the RegisterBrokerRecord, as the controller assigns it;
    /// every BrokerRegistrationChangeRecord must name it.
    pub epoch: i64,
    /// Random per broker process start.
    pub incarnation_id: Uuid,
    /// By listener name.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// By feature name.
    pub supported_features: BTreeMap<String, VersionRange>,
    pub rack: Option<String>,
    /// A fenced broker leads nothing and is in no ISR.
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
    /// The broker's online log directories (KIP-858).
    pub log_dirs: Vec<Uuid>,
}

/// Whether a partition's leader may lack records it acknowledged, after an
/// unclean election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderRecoveryState {
    Recovered,
    Recovering,
}

impl LeaderRecoveryState {
    /// Kafka's `LeaderRecoveryState.optionalOf`: 0 or 1, nothing else.
    pub fn from_value(value: i8) -> Option<LeaderRecoveryState> {
        match value {
            0 => Some(LeaderRecoveryState::Recovered),
            1 => Some(LeaderRecoveryState::Recovering),
            _ => None,
        }
    }

    pub fn value(self) -> i8 {
        match self {
            LeaderRecoveryState::Recovered => 0,
            LeaderRecoveryState::Recovering => 1,
        }
    }
}

/// One partition's replicas, ISR, leader and epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRegistration {
    /// In preferred order; the first is the preferred leader.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Replicas a reassignment will drop (a subset of `replicas`).
    pub removing_replicas: Vec<i32>,
    /// Replicas a reassignment is adding (a subset of `replicas`).
    pub adding_replicas: Vec<i32>,
    /// A member of the ISR, or `LEADER_NONE`.
    pub leader: i32,
    pub leader_recovery_state: LeaderRecoveryState,
    /// Bumped when the leader is set (even to itself, or to none).
    pub leader_epoch: i32,
    /// Bumped by every change.
    pub partition_epoch: i32,
    /// One log directory per replica, or empty when none is known (Kafka's
    /// all-"migrating" array, which is how an all-nil list is kept).
    pub directories: Vec<Uuid>,
    /// KIP-966; empty when not in use.
    pub eligible_leader_replicas: Vec<i32>,
    /// KIP-966; empty when not in use.
    pub last_known_elr: Vec<i32>,
}

/// Why a partition state cannot be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionFault {
    ReplicaIdNegative(i32),
    ReplicaDuplicate(i32),
    IsrMemberDuplicate(i32),
    IsrMemberNotReplica(i32),
    /// The leader is neither `LEADER_NONE` nor a member of the ISR.
    LeaderNotInIsr(i32),
    /// An adding or removing replica that is not a replica.
    ReassigningNotReplica(i32),
    EpochNegative {
        leader_epoch: i32,
        partition_epoch: i32,
    },
    /// A bump past `i32::MAX`.
    EpochOverflow,
    RecoveryStateUnknown(i8),
    DirectoriesLength {
        directories: usize,
        replicas: usize,
    },
}

impl PartitionRegistration {
    /// The state a PartitionRecord sets.
    fn from_record(record: &PartitionRecord) -> Result<PartitionRegistration, PartitionFault> {
        let state = record.leader_recovery_state;
        let leader_recovery_state = LeaderRecoveryState::from_value(state)
            .ok_or(PartitionFault::RecoveryStateUnknown(state))?;
        let partition = PartitionRegistration {
            replicas: record.replicas.clone(),
            isr: record.isr.clone(),
            removing_replicas: record.removing_replicas.clone(),
            adding_replicas: record.adding_replicas.clone(),
            leader: record.leader,
            leader_recovery_state,
            leader_epoch: record.leader_epoch,
            partition_epoch: record.partition_epoch,
            directories: directories_known(&record.directories),
            eligible_leader_replicas: record.eligible_leader_replicas.clone().unwrap_or_default(),
            last_known_elr: record.last_known_elr.clone().unwrap_or_default(),
        };
        partition.check()?;
        Ok(partition)
    }

    /// This state with a PartitionChangeRecord merged in, as Kafka's
    /// `PartitionRegistration.merge`.
    ///
    /// `keep_leader_epoch` is mutation `keep-leader-epoch`: an election of
    /// a leader does not bump the leader epoch.
    fn merge(
        &self,
        change: &PartitionChangeRecord,
        keep_leader_epoch: bool,
    ) -> Result<PartitionRegistration, PartitionFault> {
        let (leader, leader_epoch) = if change.leader == PartitionChangeRecord::LEADER_UNCHANGED {
            (self.leader, self.leader_epoch)
        } else {
            let bump = !(keep_leader_epoch && change.leader != LEADER_NONE);
            let leader_epoch = self.leader_epoch.checked_add(i32::from(bump));
            (
                change.leader,
                leader_epoch.ok_or(PartitionFault::EpochOverflow)?,
            )
        };
        let leader_recovery_state = match change.leader_recovery_state {
            PartitionChangeRecord::RECOVERY_STATE_UNCHANGED => self.leader_recovery_state,
            value => LeaderRecoveryState::from_value(value)
                .ok_or(PartitionFault::RecoveryStateUnknown(value))?,
        };
        let partition_epoch = self.partition_epoch.checked_add(1);
        let or_same =
            |field: &Option<Vec<i32>>, same: &Vec<i32>| field.as_ref().unwrap_or(same).clone();
        let merged = PartitionRegistration {
            replicas: or_same(&change.replicas, &self.replicas),
            isr: or_same(&change.isr, &self.isr),
            removing_replicas: or_same(&change.removing_replicas, &self.removing_replicas),
            adding_replicas: or_same(&change.adding_replicas, &self.adding_replicas),
            leader,
            leader_recovery_state,
            leader_epoch,
            partition_epoch: partition_epoch.ok_or(PartitionFault::EpochOverflow)?,
            directories: match &change.directories {
                Some(directories) => directories_known(directories),
                None => self.directories.clone(),
            },
            eligible_leader_replicas: or_same(
                &change.eligible_leader_replicas,
                &self.eligible_leader_replicas,
            ),
            last_known_elr: or_same(&change.last_known_elr, &self.last_known_elr),
        };
        merged.check()?;
        Ok(merged)
    }

    /// The first fault of this state, if it has one.
    fn check(&self) -> Result<(), PartitionFault> {
        if self.leader_epoch < 0 || self.partition_epoch < 0 {
            return Err(PartitionFault::EpochNegative {
                leader_epoch: self.leader_epoch,
                partition_epoch: self.partition_epoch,
            });
        }
        let mut replicas = BTreeSet::new();
        for &replica in &self.replicas {
            if replica < 0 {
                return Err(PartitionFault::ReplicaIdNegative(replica));
            }
            if !replicas.insert(replica) {
                return Err(PartitionFault::ReplicaDuplicate(replica));
            }
        }
        let mut isr = BTreeSet::new();
        for &member in &self.isr {
            if !replicas.contains(&member) {
                return Err(PartitionFault::IsrMemberNotReplica(member));
            }
            if !isr.insert(member) {
                return Err(PartitionFault::IsrMemberDuplicate(member));
            }
        }
        if self.leader != LEADER_NONE && !isr.contains(&self.leader) {
            return Err(PartitionFault::LeaderNotInIsr(self.leader));
        }
        let reassigning = self.removing_replicas.iter().chain(&self.adding_replicas);
        if let Some(&stray) = reassigning.into_iter().find(|r| !replicas.contains(r)) {
            return Err(PartitionFault::ReassigningNotReplica(stray));
        }
        if !self.directories.is_empty() && self.directories.len() != self.replicas.len() {
            return Err(PartitionFault::DirectoriesLength {
                directories: self.directories.len(),
                replicas: self.replicas.len(),
            });
        }
        Ok(())
    }

    pub fn has_leader(&self) -> bool {
        self.leader != LEADER_NONE
    }

    /// The first replica, or `LEADER_NONE` if there are none.
    pub fn preferred_replica(&self) -> i32 {
        self.replicas.first().copied().unwrap_or(LEADER_NONE)
    }
}

/// Kafka reads a directory list of only "migrating" ids (nil) the same as
/// no list; keep both as empty so that equal states compare equal.
fn directories_known(directories: &[Uuid]) -> Vec<Uuid> {
    if directories.iter().all(Uuid::is_nil) {
        Vec::new()
    } else {
        directories.to_vec()
    }
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    /// By partition id.
    pub partitions: BTreeMap<i32, PartitionRegistration>,
}

/// What a config belongs to: Kafka's `ConfigResource`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigResource {
    /// `RESOURCE_TYPE_TOPIC`, `RESOURCE_TYPE_BROKER`, or another of Kafka's
    /// ids, kept as written.
    pub resource_type: i8,
    pub name: String,
}

/// Why a committed record could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The offset is not above the last applied one (or, first, negative).
    OffsetNotIncreasing {
        last_offset: Option<i64>,
    },
    /// A registration with a negative id or epoch.
    BrokerInvalid {
        broker_id: i32,
        broker_epoch: i64,
    },
    BrokerNotRegistered {
        broker_id: i32,
    },
    BrokerEpochMismatch {
        broker_id: i32,
        epoch_registered: i64,
        epoch_given: i64,
    },
    FencingChangeUnknown(i8),
    ControlledShutdownChangeUnknown(i8),
    /// A TopicRecord for an id the image already has.
    TopicIdTaken {
        topic_id: Uuid,
    },
    /// A TopicRecord for a name another topic id holds.
    TopicNameTaken {
        name: String,
        topic_id_holding: Uuid,
    },
    TopicUnknown {
        topic_id: Uuid,
    },
    /// A topic config for a topic the image lacks.
    TopicNameUnknown {
        name: String,
    },
    PartitionIdNegative(i32),
    PartitionUnknown {
        topic_id: Uuid,
        partition_id: i32,
    },
    PartitionInvalid {
        topic_id: Uuid,
        partition_id: i32,
        fault: PartitionFault,
    },
    /// The next producer id must be above the current one (-1 when none).
    ProducerIdNotIncreasing {
        next_producer_id: i64,
        given: i64,
    },
    /// A negative level, or a metadata.version below the lowest Kafka knows.
    FeatureLevelInvalid {
        name: String,
        level: i16,
    },
}

/// A committed record the image refused, with where it sat in the log.
/// It names the record's type and keys, never a config value (which may be
/// a secret; Kafka keeps values out of its logs too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    pub offset: i64,
    /// The schema's name, e.g. `PartitionChangeRecord`.
    pub record_name: &'static str,
    pub fault: Fault,
}

impl fmt::Display for PartitionFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionFault::ReplicaIdNegative(id) => write!(f, "negative replica id {id}"),
            PartitionFault::ReplicaDuplicate(id) => write!(f, "replica {id} listed twice"),
            PartitionFault::IsrMemberDuplicate(id) => write!(f, "ISR member {id} listed twice"),
            PartitionFault::IsrMemberNotReplica(id) => {
                write!(f, "ISR member {id} is not a replica")
            }
            PartitionFault::LeaderNotInIsr(id) => write!(f, "leader {id} is not in the ISR"),
            PartitionFault::ReassigningNotReplica(id) => {
                write!(f, "reassigning replica {id} is not a replica")
            }
            PartitionFault::EpochNegative {
                leader_epoch,
                partition_epoch,
            } => write!(
                f,
                "negative epoch (leader {leader_epoch}, partition {partition_epoch})"
            ),
            PartitionFault::EpochOverflow => write!(f, "epoch overflows"),
            PartitionFault::RecoveryStateUnknown(value) => {
                write!(f, "unknown leader recovery state {value}")
            }
            PartitionFault::DirectoriesLength {
                directories,
                replicas,
            } => write!(f, "{directories} directories for {replicas} replicas"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::OffsetNotIncreasing { last_offset } => match last_offset {
                Some(last) => write!(f, "offset not above the last applied, {last}"),
                None => write!(f, "negative offset"),
            },
            Fault::BrokerInvalid {
                broker_id,
                broker_epoch,
            } => write!(f, "broker id {broker_id} or epoch {broker_epoch} negative"),
            Fault::BrokerNotRegistered { broker_id } => {
                write!(f, "broker {broker_id} is not registered")
            }
            Fault::BrokerEpochMismatch {
                broker_id,
                epoch_registered,
                epoch_given,
            } => write!(
                f,
                "broker {broker_id} has epoch {epoch_registered}, not {epoch_given}"
            ),
            Fault::FencingChangeUnknown(value) => write!(f, "unknown fencing change {value}"),
            Fault::ControlledShutdownChangeUnknown(value) => {
                write!(f, "unknown controlled shutdown change {value}")
            }
            Fault::TopicIdTaken { topic_id } => write!(f, "topic id {topic_id} already exists"),
            Fault::TopicNameTaken {
                name,
                topic_id_holding,
            } => write!(
                f,
                "topic name {name:?} is held by topic id {topic_id_holding}"
            ),
            Fault::TopicUnknown { topic_id } => write!(f, "no topic with id {topic_id}"),
            Fault::TopicNameUnknown { name } => write!(f, "no topic named {name:?}"),
            Fault::PartitionIdNegative(id) => write!(f, "negative partition id {id}"),
            Fault::PartitionUnknown {
                topic_id,
                partition_id,
            } => write!(f, "no partition {topic_id}:{partition_id}"),
            Fault::PartitionInvalid {
                topic_id,
                partition_id,
                fault,
            } => write!(f, "partition {topic_id}:{partition_id}: {fault}"),
            Fault::ProducerIdNotIncreasing {
                next_producer_id,
                given,
            } => write!(
                f,
                "next producer id {given} is not above the current {next_producer_id}"
            ),
            Fault::FeatureLevelInvalid { name, level } => {
                write!(f, "feature {name:?} cannot be at level {level}")
            }
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {} cannot be applied: {}",
            self.record_name, self.offset, self.fault
        )
    }
}

impl std::error::Error for ImageError {}

/// The schema name of a record's type, for errors and logs.
pub fn record_name(record: &MetadataRecord) -> &'static str {
    match record {
        MetadataRecord::RegisterBroker(_) => "RegisterBrokerRecord",
        MetadataRecord::Topic(_) => "TopicRecord",
        MetadataRecord::Partition(_) => "PartitionRecord",
        MetadataRecord::Config(_) => "ConfigRecord",
        MetadataRecord::PartitionChange(_) => "PartitionChangeRecord",
        MetadataRecord::RemoveTopic(_) => "RemoveTopicRecord",
        MetadataRecord::FeatureLevel(_) => "FeatureLevelRecord",
        MetadataRecord::ProducerIds(_) => "ProducerIdsRecord",
        MetadataRecord::BrokerRegistrationChange(_) => "BrokerRegistrationChangeRecord",
        MetadataRecord::BeginTransaction(_) => "BeginTransactionRecord",
        MetadataRecord::EndTransaction(_) => "EndTransactionRecord",
        MetadataRecord::AbortTransaction(_) => "AbortTransactionRecord",
    }
}

/// The cluster's metadata as of the last applied record. Ordered maps only,
/// so that every walk over it is the same on every node and every run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    brokers: BTreeMap<i32, BrokerRegistration>,
    topics_by_id: BTreeMap<Uuid, TopicImage>,
    /// Every topic's name, to its id; the same topics as `topics_by_id`.
    topic_ids_by_name: BTreeMap<String, Uuid>,
    /// Resources with at least one key.
    configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// The first id of the next block to hand out; -1 before the first
    /// ProducerIdsRecord, as in Kafka's `ProducerIdsImage`.
    next_producer_id: i64,
    /// Finalized features by name, metadata.version among them; no level 0.
    features: BTreeMap<String, i16>,
    last_offset: Option<i64>,
    /// Mutation `keep-leader-epoch` (never set without the feature).
    pub keep_leader_epoch: bool,
    /// Leader elections applied that chose a replica outside the ISR
    /// before them (Kafka's `electionWasClean` false), counted as Kafka's
    /// controller metrics count `UncleanLeaderElectionsPerSec`: from the
    /// records applied, so a replayed log counts its elections again.
    unclean_elections: u64,
}

impl MetadataImage {
    /// The image before any record: no brokers, topics, configs or features.
    pub fn new() -> MetadataImage {
        MetadataImage {
            next_producer_id: -1,
            ..MetadataImage::default()
        }
    }

    /// Applies the committed record at `offset`. On error nothing changes.
    pub fn apply(&mut self, offset: i64, record: &MetadataRecord) -> Result<(), ImageError> {
        let result = self.check_offset(offset).and_then(|()| match record {
            MetadataRecord::RegisterBroker(record) => self.apply_register_broker(record),
            MetadataRecord::BrokerRegistrationChange(record) => self.apply_broker_change(record),
            MetadataRecord::Topic(record) => self.apply_topic(record),
            MetadataRecord::Partition(record) => self.apply_partition(record),
            MetadataRecord::PartitionChange(record) => self.apply_partition_change(record),
            MetadataRecord::RemoveTopic(record) => self.apply_remove_topic(record),
            MetadataRecord::Config(record) => self.apply_config(record),
            MetadataRecord::FeatureLevel(record) => self.apply_feature_level(record),
            MetadataRecord::ProducerIds(record) => self.apply_producer_ids(record),
            MetadataRecord::BeginTransaction(_)
            | MetadataRecord::EndTransaction(_)
            | MetadataRecord::AbortTransaction(_) => Ok(()),
        });
        if result.is_ok() {
            self.last_offset = Some(offset);
        }
        self.invariants();
        result.map_err(|fault| ImageError {
            offset,
            record_name: record_name(record),
            fault,
        })
    }

    fn check_offset(&self, offset: i64) -> Result<(), Fault> {
        if offset > self.last_offset.unwrap_or(-1) {
            Ok(())
        } else {
            Err(Fault::OffsetNotIncreasing {
                last_offset: self.last_offset,
            })
        }
    }

    fn apply_register_broker(&mut self, record: &RegisterBrokerRecord) -> Result<(), Fault> {
        if record.broker_id < 0 || record.broker_epoch < 0 {
            return Err(Fault::BrokerInvalid {
                broker_id: record.broker_id,
                broker_epoch: record.broker_epoch,
            });
        }
        let endpoints = record.end_points.iter().map(|endpoint| {
            let value = Endpoint {
                listener_name: endpoint.name.clone(),
                host: endpoint.host.clone(),
                port: endpoint.port,
                security_protocol: endpoint.security_protocol,
            };
            (endpoint.name.clone(), value)
        });
        let supported_features = record.features.iter().map(|feature| {
            let range = VersionRange {
                level_min: feature.min_supported_version,
                level_max: feature.max_supported_version,
            };
            (feature.name.clone(), range)
        });
        let broker = BrokerRegistration {
            id: record.broker_id,
            epoch: record.broker_epoch,
            incarnation_id: record.incarnation_id,
            endpoints: endpoints.collect(),
            supported_features: supported_features.collect(),
            rack: record.rack.clone(),
            fenced: record.fenced,
            in_controlled_shutdown: record.in_controlled_shutdown,
            log_dirs: record.log_dirs.clone(),
        };
        self.brokers.insert(broker.id, broker);
        Ok(())
    }

    fn apply_broker_change(
        &mut self,
        record: &BrokerRegistrationChangeRecord,
    ) -> Result<(), Fault> {
        let broker_id = record.broker_id;
        let broker = self
            .brokers
            .get_mut(&broker_id)
            .ok_or(Fault::BrokerNotRegistered { broker_id })?;
        if broker.epoch != record.broker_epoch {
            return Err(Fault::BrokerEpochMismatch {
                broker_id,
                epoch_registered: broker.epoch,
                epoch_given: record.broker_epoch,
            });
        }
        let fenced = match record.fenced {
            BrokerRegistrationChangeRecord::FENCED => true,
            BrokerRegistrationChangeRecord::UNFENCED => false,
            BrokerRegistrationChangeRecord::UNCHANGED => broker.fenced,
            value => return Err(Fault::FencingChangeUnknown(value)),
        };
        // Kafka's BrokerRegistrationInControlledShutdownChange has no value
        // that leaves controlled shutdown: only a new registration does.
        let in_controlled_shutdown = match record.in_controlled_shutdown {
            0 => broker.in_controlled_shutdown,
            1 => true,
            value => return Err(Fault::ControlledShutdownChangeUnknown(value)),
        };
        broker.fenced = fenced;
        broker.in_controlled_shutdown = in_controlled_shutdown;
        if !record.log_dirs.is_empty() {
            broker.log_dirs = record.log_dirs.clone();
        }
        Ok(())
    }

    fn apply_topic(&mut self, record: &TopicRecord) -> Result<(), Fault> {
        if self.topics_by_id.contains_key(&record.topic_id) {
            return Err(Fault::TopicIdTaken {
                topic_id: record.topic_id,
            });
        }
        if let Some(&topic_id_holding) = self.topic_ids_by_name.get(&record.name) {
            return Err(Fault::TopicNameTaken {
                name: record.name.clone(),
                topic_id_holding,
            });
        }
        let topic = TopicImage {
            name: record.name.clone(),
            id: record.topic_id,
            partitions: BTreeMap::new(),
        };
        self.topic_ids_by_name.insert(topic.name.clone(), topic.id);
        self.topics_by_id.insert(topic.id, topic);
        Ok(())
    }

    fn apply_partition(&mut self, record: &PartitionRecord) -> Result<(), Fault> {
        let (topic_id, partition_id) = (record.topic_id, record.partition_id);
        if partition_id < 0 {
            return Err(Fault::PartitionIdNegative(partition_id));
        }
        let topic = self
            .topics_by_id
            .get_mut(&topic_id)
            .ok_or(Fault::TopicUnknown { topic_id })?;
        let partition = PartitionRegistration::from_record(record).map_err(|fault| {
            Fault::PartitionInvalid {
                topic_id,
                partition_id,
                fault,
            }
        })?;
        topic.partitions.insert(partition_id, partition);
        Ok(())
    }

    fn apply_partition_change(&mut self, record: &PartitionChangeRecord) -> Result<(), Fault> {
        let (topic_id, partition_id) = (record.topic_id, record.partition_id);
        let topic = self
            .topics_by_id
            .get_mut(&topic_id)
            .ok_or(Fault::TopicUnknown { topic_id })?;
        let partition = topic
            .partitions
            .get_mut(&partition_id)
            .ok_or(Fault::PartitionUnknown {
                topic_id,
                partition_id,
            })?;
        let merged = partition
            .merge(record, self.keep_leader_epoch)
            .map_err(|fault| Fault::PartitionInvalid {
                topic_id,
                partition_id,
                fault,
            })?;
        let elected = record.leader != PartitionChangeRecord::LEADER_UNCHANGED;
        if elected && merged.leader >= 0 && !partition.isr.contains(&merged.leader) {
            self.unclean_elections += 1;
        }
        *partition = merged;
        Ok(())
    }

    fn apply_remove_topic(&mut self, record: &RemoveTopicRecord) -> Result<(), Fault> {
        let topic_id = record.topic_id;
        let topic = self
            .topics_by_id
            .remove(&topic_id)
            .ok_or(Fault::TopicUnknown { topic_id })?;
        let removed = self.topic_ids_by_name.remove(&topic.name);
        assert_eq!(
            removed,
            Some(topic_id),
            "the name index lost {}",
            topic.name
        );
        self.configs.remove(&ConfigResource {
            resource_type: RESOURCE_TYPE_TOPIC,
            name: topic.name,
        });
        Ok(())
    }

    fn apply_config(&mut self, record: &ConfigRecord) -> Result<(), Fault> {
        let is_topic = record.resource_type == RESOURCE_TYPE_TOPIC;
        if is_topic && !self.topic_ids_by_name.contains_key(&record.resource_name) {
            return Err(Fault::TopicNameUnknown {
                name: record.resource_name.clone(),
            });
        }
        let resource = ConfigResource {
            resource_type: record.resource_type,
            name: record.resource_name.clone(),
        };
        match &record.value {
            Some(value) => {
                let keys = self.configs.entry(resource).or_default();
                keys.insert(record.name.clone(), value.clone());
            }
            None => {
                if let Some(keys) = self.configs.get_mut(&resource) {
                    keys.remove(&record.name);
                    if keys.is_empty() {
                        self.configs.remove(&resource);
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_feature_level(&mut self, record: &FeatureLevelRecord) -> Result<(), Fault> {
        let level_min = if record.name == METADATA_VERSION_FEATURE {
            METADATA_VERSION_LEVEL_MIN
        } else {
            0
        };
        if record.feature_level < level_min {
            return Err(Fault::FeatureLevelInvalid {
                name: record.name.clone(),
                level: record.feature_level,
            });
        }
        if record.feature_level == 0 {
            self.features.remove(&record.name);
        } else {
            self.features
                .insert(record.name.clone(), record.feature_level);
        }
        Ok(())
    }

    fn apply_producer_ids(&mut self, record: &ProducerIdsRecord) -> Result<(), Fault> {
        if record.next_producer_id <= self.next_producer_id {
            return Err(Fault::ProducerIdNotIncreasing {
                next_producer_id: self.next_producer_id,
                given: record.next_producer_id,
            });
        }
        self.next_producer_id = record.next_producer_id;
        Ok(())
    }

    /// The offset of the last record applied; None before the first.
    pub fn last_offset(&self) -> Option<i64> {
        self.last_offset
    }

    pub fn broker(&self, broker_id: i32) -> Option<&BrokerRegistration> {
        self.brokers.get(&broker_id)
    }

    /// Every registered broker, fenced or not, by id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> + '_ {
        self.brokers.values()
    }

    /// The brokers a Metadata response lists, by id: those not fenced (a
    /// broker in controlled shutdown is still one of them, as in Kafka).
    pub fn unfenced_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> + '_ {
        self.brokers.values().filter(|broker| !broker.fenced)
    }

    pub fn topic_by_id(&self, topic_id: Uuid) -> Option<&TopicImage> {
        self.topics_by_id.get(&topic_id)
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        let topic_id = self.topic_ids_by_name.get(name)?;
        self.topics_by_id.get(topic_id)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicImage> + '_ {
        self.topic_ids_by_name
            .values()
            .filter_map(|topic_id| self.topics_by_id.get(topic_id))
    }

    pub fn partition(&self, topic_id: Uuid, partition_id: i32) -> Option<&PartitionRegistration> {
        self.topics_by_id
            .get(&topic_id)?
            .partitions
            .get(&partition_id)
    }

    /// A resource's configs, by key; None when it has none.
    pub fn configs(&self, resource_type: i8, name: &str) -> Option<&BTreeMap<String, String>> {
        self.configs.get(&ConfigResource {
            resource_type,
            name: name.to_owned(),
        })
    }

    /// How many unclean leader elections the applied records hold.
    pub fn unclean_elections(&self) -> u64 {
        self.unclean_elections
    }

    /// A topic's config overrides, by key; None when it has none.
    pub fn topic_configs(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.configs(RESOURCE_TYPE_TOPIC, name)
    }

    /// The first id of the next producer id block; None before any block.
    pub fn next_producer_id(&self) -> Option<i64> {
        (self.next_producer_id >= 0).then_some(self.next_producer_id)
    }

    /// A finalized feature's level; None when it is off.
    pub fn feature_level(&self, name: &str) -> Option<i16> {
        self.features.get(name).copied()
    }

    /// Every finalized feature and its level, by name.
    pub fn features(&self) -> impl Iterator<Item = (&str, i16)> + '_ {
        self.features
            .iter()
            .map(|(name, &level)| (name.as_str(), level))
    }

    pub fn metadata_version(&self) -> Option<i16> {
        self.feature_level(METADATA_VERSION_FEATURE)
    }

    /// Asserts the structure the checks in `apply` keep. Walks the whole
    /// image, so each `apply` costs time in its size.
    pub fn invariants(&self) {
        assert!(self.last_offset.is_none_or(|offset| offset >= 0));
        assert!(self.next_producer_id >= -1);
        for (&id, broker) in &self.brokers {
            assert_eq!(id, broker.id);
            assert!(broker.id >= 0 && broker.epoch >= 0, "broker {id}");
            for (name, endpoint) in &broker.endpoints {
                assert_eq!(*name, endpoint.listener_name, "broker {id}");
            }
        }
        assert_eq!(self.topic_ids_by_name.len(), self.topics_by_id.len());
        for (name, topic_id) in &self.topic_ids_by_name {
            let topic = self.topics_by_id.get(topic_id);
            assert_eq!(topic.map(|topic| &topic.name), Some(name), "{topic_id}");
        }
        for (&topic_id, topic) in &self.topics_by_id {
            assert_eq!(topic_id, topic.id);
            for (&partition_id, partition) in &topic.partitions {
                assert!(partition_id >= 0, "{topic_id}:{partition_id}");
                if let Err(fault) = partition.check() {
                    panic!("partition {topic_id}:{partition_id}: {fault}");
                }
                let directories = &partition.directories;
                assert!(directories.is_empty() || !directories.iter().all(Uuid::is_nil));
            }
        }
        for (resource, keys) in &self.configs {
            assert!(!keys.is_empty(), "{resource:?} kept with no keys");
            if resource.resource_type == RESOURCE_TYPE_TOPIC {
                let name = &resource.name;
                assert!(self.topic_ids_by_name.contains_key(name), "{name}");
            }
        }
        for (name, &level) in &self.features {
            assert!(level > 0, "{name} at level {level}");
        }
        let metadata_version = self.metadata_version();
        assert!(metadata_version.is_none_or(|level| level >= METADATA_VERSION_LEVEL_MIN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata_records::{BrokerEndpoint, BrokerFeature};
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::strategy::ValueTree;

    fn topic_id(n: u8) -> Uuid {
        Uuid::from_u128(0x5106_0000 + u128::from(n))
    }

    fn register(broker_id: i32, epoch: i64, incarnation: u128) -> MetadataRecord {
        MetadataRecord::RegisterBroker(RegisterBrokerRecord {
            broker_id,
            incarnation_id: Uuid::from_u128(incarnation),
            broker_epoch: epoch,
            end_points: vec![BrokerEndpoint {
                name: "PLAINTEXT".to_owned(),
                host: format!("broker{broker_id}"),
                port: 9092,
                security_protocol: 0,
            }],
            features: vec![BrokerFeature {
                name: METADATA_VERSION_FEATURE.to_owned(),
                min_supported_version: 1,
                max_supported_version: 21,
            }],
            rack: Some(format!("rack{}", broker_id % 2)),
            ..RegisterBrokerRecord::default()
        })
    }

    fn broker_change(broker_id: i32, epoch: i64, fenced: i8, shutdown: i8) -> MetadataRecord {
        MetadataRecord::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
            broker_id,
            broker_epoch: epoch,
            fenced,
            in_controlled_shutdown: shutdown,
            log_dirs: Vec::new(),
        })
    }

    fn topic(name: &str, id: Uuid) -> MetadataRecord {
        MetadataRecord::Topic(TopicRecord {
            name: name.to_owned(),
            topic_id: id,
        })
    }

    /// A new partition as the controller writes it: ISR = replicas, leader
    /// the first, epochs 0.
    fn partition(id: Uuid, partition_id: i32, replicas: &[i32]) -> PartitionRecord {
        PartitionRecord {
            partition_id,
            topic_id: id,
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader: replicas.first().copied().unwrap_or(LEADER_NONE),
            leader_epoch: 0,
            partition_epoch: 0,
            ..PartitionRecord::default()
        }
    }

    fn change(id: Uuid, partition_id: i32) -> PartitionChangeRecord {
        PartitionChangeRecord {
            partition_id,
            topic_id: id,
            ..PartitionChangeRecord::default()
        }
    }

    fn config(resource_type: i8, name: &str, key: &str, value: Option<&str>) -> MetadataRecord {
        MetadataRecord::Config(ConfigRecord {
            resource_type,
            resource_name: name.to_owned(),
            name: key.to_owned(),
            value: value.map(str::to_owned),
        })
    }

    fn feature(name: &str, level: i16) -> MetadataRecord {
        MetadataRecord::FeatureLevel(FeatureLevelRecord {
            name: name.to_owned(),
            feature_level: level,
        })
    }

    fn producer_ids(next_producer_id: i64) -> MetadataRecord {
        MetadataRecord::ProducerIds(ProducerIdsRecord {
            broker_id: 0,
            broker_epoch: 1,
            next_producer_id,
        })
    }

    fn remove(id: Uuid) -> MetadataRecord {
        MetadataRecord::RemoveTopic(RemoveTopicRecord { topic_id: id })
    }

    /// An image fed records at consecutive offsets, as a log would.
    struct Log {
        image: MetadataImage,
        offset_next: i64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                image: MetadataImage::new(),
                offset_next: 0,
            }
        }

        /// Applies `record`, which must succeed; returns its offset.
        fn push(&mut self, record: impl Into<MetadataRecord>) -> i64 {
            let offset = self.offset_next;
            let record = record.into();
            if let Err(error) = self.image.apply(offset, &record) {
                panic!("{error}");
            }
            self.offset_next += 1;
            offset
        }

        /// Applies `record`, which must fail and change nothing.
        fn refuse(&mut self, record: impl Into<MetadataRecord>) -> Fault {
            let record = record.into();
            let before = self.image.clone();
            let error = self.image.apply(self.offset_next, &record).unwrap_err();
            assert_eq!(self.image, before);
            assert_eq!(error.offset, self.offset_next);
            assert_eq!(error.record_name, record_name(&record));
            error.fault
        }
    }

    const ORDERS: u8 = 1;
    const EVENTS: u8 = 2;

    /// Three brokers, unfenced, and two topics, as a KRaft controller
    /// writes them; returns the log and the brokers' epochs.
    fn cluster() -> (Log, [i64; 3]) {
        let (orders, events) = (topic_id(ORDERS), topic_id(EVENTS));
        let mut log = Log::new();
        log.push(feature(METADATA_VERSION_FEATURE, 21));
        let mut epochs = [0; 3];
        for (broker_id, epoch) in (0..3).zip(&mut epochs) {
            // The broker epoch is the offset of the registration.
            *epoch = log.push(register(
                broker_id,
                log.offset_next,
                100 + broker_id as u128,
            ));
        }
        assert_eq!(log.image.brokers().count(), 3);
        assert_eq!(log.image.unfenced_brokers().count(), 0);
        for (broker_id, &epoch) in (0..3).zip(&epochs) {
            log.push(broker_change(broker_id, epoch, -1, 0));
        }
        // CreateTopics: the topic, its configs, then its partitions.
        log.push(topic("orders", orders));
        log.push(config(
            RESOURCE_TYPE_TOPIC,
            "orders",
            "retention.ms",
            Some("1000"),
        ));
        log.push(partition(orders, 0, &[0, 1, 2]));
        log.push(partition(orders, 1, &[1, 2, 0]));
        log.push(topic("events", events));
        log.push(config(
            RESOURCE_TYPE_TOPIC,
            "events",
            "cleanup.policy",
            Some("compact"),
        ));
        log.push(partition(events, 0, &[2, 0]));
        log.push(producer_ids(1000));
        (log, epochs)
    }

    #[test]
    fn a_cluster_comes_up() {
        let (log, epochs) = cluster();
        let image = &log.image;
        let unfenced: Vec<i32> = image.unfenced_brokers().map(|b| b.id).collect();
        assert_eq!(unfenced, [0, 1, 2]);
        let broker = image.broker(1).unwrap();
        assert_eq!(broker.epoch, epochs[1]);
        assert_eq!(broker.incarnation_id, Uuid::from_u128(101));
        assert_eq!(broker.rack.as_deref(), Some("rack1"));
        assert_eq!(broker.endpoints["PLAINTEXT"].host, "broker1");
        assert_eq!(broker.endpoints["PLAINTEXT"].port, 9092);
        let range = broker.supported_features[METADATA_VERSION_FEATURE];
        assert_eq!((range.level_min, range.level_max), (1, 21));
        assert!(!broker.fenced && !broker.in_controlled_shutdown);

        let orders = image.topic_by_name("orders").unwrap();
        assert_eq!(orders.id, topic_id(ORDERS));
        assert_eq!(
            orders.partitions.keys().copied().collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(image.topic_by_id(topic_id(EVENTS)).unwrap().name, "events");
        let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["events", "orders"]);
        let p1 = image.partition(topic_id(ORDERS), 1).unwrap();
        assert_eq!(
            (p1.replicas.clone(), p1.isr.clone()),
            (vec![1, 2, 0], vec![1, 2, 0])
        );
        assert_eq!((p1.leader, p1.leader_epoch, p1.partition_epoch), (1, 0, 0));
        assert_eq!(p1.leader_recovery_state, LeaderRecoveryState::Recovered);
        assert!(image.partition(topic_id(ORDERS), 2).is_none());
        assert!(image.topic_by_name("nope").is_none());

        assert_eq!(
            image.topic_configs("orders").unwrap()["retention.ms"],
            "1000"
        );
        assert_eq!(image.next_producer_id(), Some(1000));
        assert_eq!(image.metadata_version(), Some(21));
        assert_eq!(image.last_offset(), Some(log.offset_next - 1));
    }

    /// Leaders and ISRs move through PartitionChangeRecords, with the epochs
    /// Kafka's merge gives: the partition epoch on every change, the leader
    /// epoch only when Leader is set.
    #[test]
    fn leaders_move_with_kafkas_epochs() {
        let (mut log, mut epochs) = cluster();
        let (orders, events) = (topic_id(ORDERS), topic_id(EVENTS));
        // AlterPartition from leader 0 shrinks the ISR; at metadata.version
        // 3.6 and later the controller leaves Leader out.
        log.push(PartitionChangeRecord {
            isr: Some(vec![0, 1]),
            ..change(orders, 0)
        });
        let p0 = log.image.partition(orders, 0).unwrap();
        assert_eq!((p0.isr.clone(), p0.leader), (vec![0, 1], 0));
        assert_eq!((p0.leader_epoch, p0.partition_epoch), (0, 1));

        // Broker 0 shuts down: it leaves every ISR, and orders-0 gets a new
        // leader.
        log.push(broker_change(0, epochs[0], 0, 1));
        assert!(log.image.broker(0).unwrap().in_controlled_shutdown);
        assert_eq!(log.image.unfenced_brokers().count(), 3);
        log.push(PartitionChangeRecord {
            isr: Some(vec![1]),
            leader: 1,
            ..change(orders, 0)
        });
        log.push(PartitionChangeRecord {
            isr: Some(vec![1, 2]),
            ..change(orders, 1)
        });
        log.push(PartitionChangeRecord {
            isr: Some(vec![2]),
            ..change(events, 0)
        });
        let p0 = log.image.partition(orders, 0).unwrap();
        assert_eq!((p0.isr.clone(), p0.leader), (vec![1], 1));
        assert_eq!((p0.leader_epoch, p0.partition_epoch), (1, 2));
        let p1 = log.image.partition(orders, 1).unwrap();
        assert_eq!((p1.leader, p1.leader_epoch, p1.partition_epoch), (1, 0, 1));
        log.push(broker_change(0, epochs[0], 1, 0));
        let unfenced: Vec<i32> = log.image.unfenced_brokers().map(|b| b.id).collect();
        assert_eq!(unfenced, [1, 2]);

        // Broker 0 restarts: a new registration replaces the old one, and
        // changes must now carry the new epoch.
        let epoch_old = epochs[0];
        epochs[0] = log.push(register(0, log.offset_next, 200));
        let broker = log.image.broker(0).unwrap();
        assert_eq!(
            (broker.epoch, broker.incarnation_id),
            (epochs[0], Uuid::from_u128(200))
        );
        assert!(broker.fenced && !broker.in_controlled_shutdown);
        assert_eq!(log.image.brokers().count(), 3);
        let fault = log.refuse(broker_change(0, epoch_old, -1, 0));
        assert!(matches!(fault, Fault::BrokerEpochMismatch { .. }));
        log.push(broker_change(0, epochs[0], -1, 0));
        assert_eq!(log.image.unfenced_brokers().count(), 3);

        // Broker 0 catches up and rejoins; preferred leader election moves
        // orders-0 back to it.
        log.push(PartitionChangeRecord {
            isr: Some(vec![1, 0]),
            ..change(orders, 0)
        });
        log.push(PartitionChangeRecord {
            leader: 0,
            ..change(orders, 0)
        });
        let p0 = log.image.partition(orders, 0).unwrap();
        assert_eq!((p0.leader, p0.leader_epoch, p0.partition_epoch), (0, 2, 4));
        assert!(p0.has_leader() && p0.preferred_replica() == 0);

        // A reassignment drops replica 2 from orders-1: the controller sets
        // Leader to the current leader to force a leader epoch bump.
        log.push(PartitionChangeRecord {
            replicas: Some(vec![1, 0]),
            isr: Some(vec![1]),
            leader: 1,
            ..change(orders, 1)
        });
        let p1 = log.image.partition(orders, 1).unwrap();
        assert_eq!(p1.replicas, [1, 0]);
        assert_eq!((p1.leader, p1.leader_epoch, p1.partition_epoch), (1, 1, 2));

        // The last ISR member of events-0 is fenced: no leader, yet the
        // leader epoch moves, and the ISR keeps its last member.
        log.push(PartitionChangeRecord {
            leader: LEADER_NONE,
            ..change(events, 0)
        });
        let e0 = log.image.partition(events, 0).unwrap();
        assert!(!e0.has_leader());
        assert_eq!((e0.leader_epoch, e0.partition_epoch), (1, 2));
        assert_eq!(e0.isr, [2]);
    }

    #[test]
    fn configs_are_set_overwritten_and_deleted() {
        let (mut log, _) = cluster();
        log.push(config(
            RESOURCE_TYPE_TOPIC,
            "orders",
            "retention.ms",
            Some("2000"),
        ));
        log.push(config(
            RESOURCE_TYPE_TOPIC,
            "orders",
            "cleanup.policy",
            Some("delete"),
        ));
        log.push(config(RESOURCE_TYPE_TOPIC, "orders", "retention.ms", None));
        log.push(config(
            RESOURCE_TYPE_BROKER,
            "1",
            "log.retention.ms",
            Some("5"),
        ));
        log.push(config(
            RESOURCE_TYPE_BROKER,
            "",
            "num.io.threads",
            Some("8"),
        ));
        let keys: Vec<(&str, &str)> = log
            .image
            .topic_configs("orders")
            .unwrap()
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(keys, [("cleanup.policy", "delete")]);
        // The last key gone, the resource goes too.
        log.push(config(
            RESOURCE_TYPE_TOPIC,
            "orders",
            "cleanup.policy",
            None,
        ));
        assert_eq!(log.image.topic_configs("orders"), None);
        let broker_configs = log.image.configs(RESOURCE_TYPE_BROKER, "1").unwrap();
        assert_eq!(broker_configs["log.retention.ms"], "5");
        let defaults = log.image.configs(RESOURCE_TYPE_BROKER, "").unwrap();
        assert_eq!(defaults["num.io.threads"], "8");
        // Other topics' configs are their own.
        assert_eq!(
            log.image.topic_configs("events").unwrap()["cleanup.policy"],
            "compact"
        );
    }

    #[test]
    fn a_removed_topic_takes_its_partitions_and_configs() {
        let (mut log, _) = cluster();
        let events = topic_id(EVENTS);
        log.push(remove(events));
        assert!(log.image.topic_by_name("events").is_none());
        assert!(log.image.topic_by_id(events).is_none());
        assert!(log.image.partition(events, 0).is_none());
        assert_eq!(log.image.topic_configs("events"), None);
        let names: Vec<&str> = log.image.topics().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["orders"]);
        assert!(log.image.topic_configs("orders").is_some());
        // The name is free again, for a new id, with nothing of the old.
        log.push(topic("events", topic_id(3)));
        let topic = log.image.topic_by_name("events").unwrap();
        assert!(topic.id == topic_id(3) && topic.partitions.is_empty());
        assert_eq!(log.image.topic_configs("events"), None);
        let fault = log.refuse(remove(events));
        assert_eq!(fault, Fault::TopicUnknown { topic_id: events });
    }

    #[test]
    fn producer_ids_grow_and_features_come_and_go() {
        let (mut log, _) = cluster();
        log.push(producer_ids(2000));
        assert_eq!(log.image.next_producer_id(), Some(2000));
        log.push(feature("group.version", 1));
        assert_eq!(log.image.feature_level("group.version"), Some(1));
        log.push(feature(METADATA_VERSION_FEATURE, 22));
        assert_eq!(log.image.metadata_version(), Some(22));
        let last = log.push(feature("group.version", 0));
        assert_eq!(log.image.feature_level("group.version"), None);
        let features: Vec<(&str, i16)> = log.image.features().collect();
        assert_eq!(features, [(METADATA_VERSION_FEATURE, 22)]);
        assert_eq!(log.image.last_offset(), Some(last));
    }

    #[test]
    fn offsets_must_increase() {
        let mut image = MetadataImage::new();
        let record = feature(METADATA_VERSION_FEATURE, 21);
        let error = image.apply(-1, &record).unwrap_err();
        assert_eq!(
            error.fault,
            Fault::OffsetNotIncreasing { last_offset: None }
        );
        // Gaps are fine: batches hold control records the image never sees.
        image.apply(5, &record).unwrap();
        for offset in [5, 4] {
            let before = image.clone();
            let error = image.apply(offset, &record).unwrap_err();
            let fault = Fault::OffsetNotIncreasing {
                last_offset: Some(5),
            };
            assert_eq!(
                error,
                ImageError {
                    offset,
                    record_name: "FeatureLevelRecord",
                    fault
                }
            );
            assert_eq!(image, before);
        }
        image.apply(9, &record).unwrap();
        assert_eq!(image.last_offset(), Some(9));
    }

    #[test]
    fn broker_changes_need_a_registered_broker_at_its_epoch() {
        let mut log = Log::new();
        let fault = log.refuse(broker_change(1, 0, -1, 0));
        assert_eq!(fault, Fault::BrokerNotRegistered { broker_id: 1 });
        log.push(register(1, 7, 1));
        let fault = log.refuse(broker_change(1, 6, -1, 0));
        let expected = Fault::BrokerEpochMismatch {
            broker_id: 1,
            epoch_registered: 7,
            epoch_given: 6,
        };
        assert_eq!(fault, expected);
        assert_eq!(
            log.refuse(broker_change(1, 7, 2, 0)),
            Fault::FencingChangeUnknown(2)
        );
        let fault = log.refuse(broker_change(1, 7, 0, -1));
        assert_eq!(fault, Fault::ControlledShutdownChangeUnknown(-1));
        let fault = log.refuse(register(-1, 0, 1));
        assert_eq!(
            fault,
            Fault::BrokerInvalid {
                broker_id: -1,
                broker_epoch: 0
            }
        );
        let fault = log.refuse(register(2, -1, 1));
        assert_eq!(
            fault,
            Fault::BrokerInvalid {
                broker_id: 2,
                broker_epoch: -1
            }
        );
        // A change with nothing to change is accepted and changes nothing
        // but the offset.
        let before = log.image.broker(1).cloned();
        log.push(broker_change(1, 7, 0, 0));
        assert_eq!(log.image.broker(1).cloned(), before);
    }

    #[test]
    fn topics_need_a_free_id_and_name() {
        let mut log = Log::new();
        log.push(topic("a", topic_id(1)));
        let fault = log.refuse(topic("b", topic_id(1)));
        assert_eq!(
            fault,
            Fault::TopicIdTaken {
                topic_id: topic_id(1)
            }
        );
        let fault = log.refuse(topic("a", topic_id(2)));
        let expected = Fault::TopicNameTaken {
            name: "a".to_owned(),
            topic_id_holding: topic_id(1),
        };
        assert_eq!(fault, expected);
        let fault = log.refuse(remove(topic_id(2)));
        assert_eq!(
            fault,
            Fault::TopicUnknown {
                topic_id: topic_id(2)
            }
        );
    }

    #[test]
    fn partitions_need_their_topic_and_partition() {
        let mut log = Log::new();
        let fault = log.refuse(partition(topic_id(1), 0, &[0]));
        assert_eq!(
            fault,
            Fault::TopicUnknown {
                topic_id: topic_id(1)
            }
        );
        let fault = log.refuse(change(topic_id(1), 0));
        assert_eq!(
            fault,
            Fault::TopicUnknown {
                topic_id: topic_id(1)
            }
        );
        log.push(topic("a", topic_id(1)));
        let fault = log.refuse(change(topic_id(1), 0));
        let expected = Fault::PartitionUnknown {
            topic_id: topic_id(1),
            partition_id: 0,
        };
        assert_eq!(fault, expected);
        let fault = log.refuse(partition(topic_id(1), -1, &[0]));
        assert_eq!(fault, Fault::PartitionIdNegative(-1));
    }

    /// Kafka counts an election unclean when its leader was not in the ISR
    /// before it; moving leadership within the ISR, or to none, is clean.
    #[test]
    fn elections_outside_the_isr_are_counted_unclean() {
        let id = topic_id(1);
        let mut log = Log::new();
        log.push(topic("a", id));
        log.push(partition(id, 0, &[0, 1, 2]));
        let shrink = PartitionChangeRecord {
            isr: Some(vec![0]),
            ..change(id, 0)
        };
        log.push(shrink);
        let none = PartitionChangeRecord {
            leader: PartitionChangeRecord::LEADER_NONE,
            ..change(id, 0)
        };
        log.push(none);
        assert_eq!(log.image.unclean_elections(), 0);
        let back = PartitionChangeRecord {
            leader: 0,
            ..change(id, 0)
        };
        log.push(back);
        assert_eq!(log.image.unclean_elections(), 0, "the ISR's own member");
        let outsider = PartitionChangeRecord {
            leader: 2,
            isr: Some(vec![2]),
            leader_recovery_state: LeaderRecoveryState::Recovering.value(),
            ..change(id, 0)
        };
        log.push(outsider);
        assert_eq!(log.image.unclean_elections(), 1);
        let registration = log.image.partition(id, 0).expect("there");
        assert_eq!(
            registration.leader_recovery_state,
            LeaderRecoveryState::Recovering
        );
        assert_eq!(registration.isr, [2]);
    }

    /// The partition states the image refuses, from a PartitionRecord or
    /// merged from a PartitionChangeRecord.
    #[test]
    fn partition_states_must_be_consistent() {
        let id = topic_id(1);
        let mut log = Log::new();
        log.push(topic("a", id));
        log.push(partition(id, 0, &[0, 1, 2]));
        let invalid = |fault| Fault::PartitionInvalid {
            topic_id: id,
            partition_id: 0,
            fault,
        };
        let cases: Vec<(MetadataRecord, PartitionFault)> = vec![
            (
                PartitionRecord {
                    replicas: vec![0, 0],
                    isr: vec![0],
                    ..partition(id, 0, &[0])
                }
                .into(),
                PartitionFault::ReplicaDuplicate(0),
            ),
            (
                PartitionRecord {
                    replicas: vec![-3],
                    isr: vec![],
                    leader: -1,
                    ..partition(id, 0, &[])
                }
                .into(),
                PartitionFault::ReplicaIdNegative(-3),
            ),
            (
                PartitionRecord {
                    leader_epoch: -1,
                    ..partition(id, 0, &[0])
                }
                .into(),
                PartitionFault::EpochNegative {
                    leader_epoch: -1,
                    partition_epoch: 0,
                },
            ),
            (
                PartitionRecord {
                    leader_recovery_state: 2,
                    ..partition(id, 0, &[0])
                }
                .into(),
                PartitionFault::RecoveryStateUnknown(2),
            ),
            (
                PartitionRecord {
                    adding_replicas: vec![5],
                    ..partition(id, 0, &[0])
                }
                .into(),
                PartitionFault::ReassigningNotReplica(5),
            ),
            (
                PartitionRecord {
                    directories: vec![Uuid::from_u128(1)],
                    ..partition(id, 0, &[0, 1])
                }
                .into(),
                PartitionFault::DirectoriesLength {
                    directories: 1,
                    replicas: 2,
                },
            ),
            (
                PartitionChangeRecord {
                    isr: Some(vec![1, 2]),
                    ..change(id, 0)
                }
                .into(),
                PartitionFault::LeaderNotInIsr(0),
            ),
            (
                PartitionChangeRecord {
                    isr: Some(vec![0, 3]),
                    ..change(id, 0)
                }
                .into(),
                PartitionFault::IsrMemberNotReplica(3),
            ),
            (
                PartitionChangeRecord {
                    isr: Some(vec![0, 0]),
                    ..change(id, 0)
                }
                .into(),
                PartitionFault::IsrMemberDuplicate(0),
            ),
            (
                PartitionChangeRecord {
                    leader: -3,
                    ..change(id, 0)
                }
                .into(),
                PartitionFault::LeaderNotInIsr(-3),
            ),
            (
                PartitionChangeRecord {
                    leader_recovery_state: 7,
                    ..change(id, 0)
                }
                .into(),
                PartitionFault::RecoveryStateUnknown(7),
            ),
            (
                PartitionChangeRecord {
                    replicas: Some(vec![0, 1]),
                    ..change(id, 0)
                }
                .into(),
                PartitionFault::IsrMemberNotReplica(2),
            ),
        ];
        for (record, fault) in cases {
            assert_eq!(log.refuse(record.clone()), invalid(fault), "{record:?}");
        }
        // Directories for three replicas, then a change to two replicas
        // that leaves them out: Kafka refuses the lengths, and so does the
        // image. All-nil directories mean "unknown", which fits any length.
        let directories: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        log.push(PartitionChangeRecord {
            directories: Some(directories),
            ..change(id, 0)
        });
        let shrink = PartitionChangeRecord {
            replicas: Some(vec![0, 1]),
            isr: Some(vec![0, 1]),
            ..change(id, 0)
        };
        let fault = PartitionFault::DirectoriesLength {
            directories: 3,
            replicas: 2,
        };
        assert_eq!(log.refuse(shrink.clone()), invalid(fault));
        log.push(PartitionChangeRecord {
            directories: Some(vec![Uuid::nil(); 3]),
            ..shrink
        });
        assert!(log.image.partition(id, 0).unwrap().directories.is_empty());
    }

    #[test]
    fn epochs_that_would_overflow_are_refused() {
        let id = topic_id(1);
        let mut log = Log::new();
        log.push(topic("a", id));
        log.push(PartitionRecord {
            partition_epoch: i32::MAX,
            ..partition(id, 0, &[0])
        });
        let fault = log.refuse(change(id, 0));
        let expected = Fault::PartitionInvalid {
            topic_id: id,
            partition_id: 0,
            fault: PartitionFault::EpochOverflow,
        };
        assert_eq!(fault, expected);
    }

    #[test]
    fn a_partition_record_replaces_the_partition() {
        let id = topic_id(1);
        let mut log = Log::new();
        log.push(topic("a", id));
        log.push(partition(id, 0, &[0, 1]));
        log.push(PartitionRecord {
            leader_epoch: 4,
            partition_epoch: 9,
            leader_recovery_state: 1,
            ..partition(id, 0, &[1])
        });
        let p0 = log.image.partition(id, 0).unwrap();
        assert_eq!((p0.replicas.clone(), p0.leader), (vec![1], 1));
        assert_eq!((p0.leader_epoch, p0.partition_epoch), (4, 9));
        assert_eq!(p0.leader_recovery_state, LeaderRecoveryState::Recovering);
        // A change that leaves the recovery state out keeps it; 0 clears it.
        log.push(change(id, 0));
        let state = log.image.partition(id, 0).unwrap().leader_recovery_state;
        assert_eq!(state, LeaderRecoveryState::Recovering);
        log.push(PartitionChangeRecord {
            leader_recovery_state: 0,
            ..change(id, 0)
        });
        let p0 = log.image.partition(id, 0).unwrap();
        assert_eq!(p0.leader_recovery_state, LeaderRecoveryState::Recovered);
        assert_eq!((p0.leader_epoch, p0.partition_epoch), (4, 11));
    }

    #[test]
    fn configs_features_and_producer_ids_are_checked() {
        let mut log = Log::new();
        let fault = log.refuse(config(RESOURCE_TYPE_TOPIC, "a", "retention.ms", Some("1")));
        assert_eq!(
            fault,
            Fault::TopicNameUnknown {
                name: "a".to_owned()
            }
        );
        let fault = log.refuse(config(RESOURCE_TYPE_TOPIC, "a", "retention.ms", None));
        assert_eq!(
            fault,
            Fault::TopicNameUnknown {
                name: "a".to_owned()
            }
        );
        // Deleting a key no resource holds is no error, as in Kafka.
        log.push(config(RESOURCE_TYPE_BROKER, "0", "log.retention.ms", None));
        assert_eq!(log.image.configs(RESOURCE_TYPE_BROKER, "0"), None);

        for level in [0, -1] {
            let fault = log.refuse(feature(METADATA_VERSION_FEATURE, level));
            let name = METADATA_VERSION_FEATURE.to_owned();
            assert_eq!(fault, Fault::FeatureLevelInvalid { name, level });
        }
        let fault = log.refuse(feature("group.version", -1));
        let name = "group.version".to_owned();
        assert_eq!(fault, Fault::FeatureLevelInvalid { name, level: -1 });
        // Removing a feature that is off is no error.
        log.push(feature("group.version", 0));

        let fault = log.refuse(producer_ids(-1));
        let expected = Fault::ProducerIdNotIncreasing {
            next_producer_id: -1,
            given: -1,
        };
        assert_eq!(fault, expected);
        log.push(producer_ids(0));
        assert_eq!(log.image.next_producer_id(), Some(0));
        log.push(producer_ids(1000));
        for given in [1000, 999] {
            let fault = log.refuse(producer_ids(given));
            let expected = Fault::ProducerIdNotIncreasing {
                next_producer_id: 1000,
                given,
            };
            assert_eq!(fault, expected);
        }
    }

    #[test]
    fn errors_name_the_record_and_offset_but_no_config_value() {
        let mut image = MetadataImage::new();
        let record = config(RESOURCE_TYPE_TOPIC, "a", "sasl.password", Some("hunter2"));
        let error = image.apply(3, &record).unwrap_err();
        let text = error.to_string();
        assert_eq!(
            text,
            "ConfigRecord at offset 3 cannot be applied: no topic named \"a\""
        );
        assert!(!format!("{error:?}").contains("hunter2"));
    }

    // Random logs over a small world (four brokers, three topic ids, three
    // names), so that records often refer to what exists and sometimes not.

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn any_topic_id() -> impl Strategy<Value = Uuid> {
        (1..=3u8).prop_map(topic_id)
    }

    /// Broker ids, mostly distinct and valid.
    fn replica_list() -> impl Strategy<Value = Vec<i32>> {
        prop_oneof![
            6 => proptest::sample::subsequence(vec![0, 1, 2, 3], 0..=4).prop_shuffle(),
            1 => proptest::collection::vec(-1..5i32, 0..5),
        ]
    }

    fn partition_record() -> impl Strategy<Value = PartitionRecord> {
        (
            (
                any_topic_id(),
                prop_oneof![6 => 0..3i32, 1 => Just(-1)],
                replica_list(),
            ),
            (any::<u8>(), any::<Index>()),
            (
                prop_oneof![6 => 0..3i32, 1 => Just(-1)],
                0..3i32,
                prop_oneof![6 => Just(0i8), 1 => Just(1i8), 1 => Just(2i8)],
            ),
        )
            .prop_map(
                |((topic_id, partition_id, replicas), (isr_mask, leader_pick), epochs)| {
                    let isr: Vec<i32> = (0..)
                        .zip(&replicas)
                        .filter(|(bit, _)| isr_mask & (1 << (bit % 8)) != 0)
                        .map(|(_, &replica)| replica)
                        .collect();
                    // Mostly a member of the ISR; sometimes none, sometimes not.
                    let mut choices = isr.clone();
                    choices.extend([LEADER_NONE, 7]);
                    let leader = *leader_pick.get(&choices);
                    let (leader_epoch, partition_epoch, leader_recovery_state) = epochs;
                    PartitionRecord {
                        partition_id,
                        topic_id,
                        replicas,
                        isr,
                        leader,
                        leader_recovery_state,
                        leader_epoch,
                        partition_epoch,
                        ..PartitionRecord::default()
                    }
                },
            )
    }

    fn partition_change() -> impl Strategy<Value = PartitionChangeRecord> {
        let leader = prop_oneof![4 => Just(-2), 1 => Just(-1), 3 => 0..4i32, 1 => Just(-3)];
        let directories = prop_oneof![
            6 => Just(None),
            1 => (0..4usize).prop_map(|n| Some(vec![Uuid::nil(); n])),
            1 => (0..4u128).prop_map(|n| Some((1..=n).map(Uuid::from_u128).collect())),
        ];
        (
            (any_topic_id(), -1..3i32),
            proptest::option::weighted(0.5, replica_list()),
            leader,
            proptest::option::weighted(0.2, replica_list()),
            prop_oneof![6 => Just(-1i8), 1 => Just(0i8), 1 => Just(1i8), 1 => Just(5i8)],
            directories,
        )
            .prop_map(
                |((topic_id, partition_id), isr, leader, replicas, recovery, directories)| {
                    PartitionChangeRecord {
                        partition_id,
                        topic_id,
                        isr,
                        leader,
                        replicas,
                        leader_recovery_state: recovery,
                        directories,
                        ..PartitionChangeRecord::default()
                    }
                },
            )
    }

    fn register_broker() -> impl Strategy<Value = MetadataRecord> {
        let listener = prop_oneof![Just("PLAINTEXT"), Just("SSL")];
        let endpoint = (listener, 1..3u16).prop_map(|(name, port)| BrokerEndpoint {
            name: name.to_owned(),
            host: "h".to_owned(),
            port,
            security_protocol: 0,
        });
        (
            (-1..4i32, -1..4i64, 0..4u128),
            proptest::collection::vec(endpoint, 0..3),
            proptest::option::of(Just("r".to_owned())),
            (any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |((broker_id, epoch, incarnation), end_points, rack, flags)| {
                    MetadataRecord::RegisterBroker(RegisterBrokerRecord {
                        broker_id,
                        incarnation_id: Uuid::from_u128(incarnation),
                        broker_epoch: epoch,
                        end_points,
                        rack,
                        fenced: flags.0,
                        in_controlled_shutdown: flags.1,
                        ..RegisterBrokerRecord::default()
                    })
                },
            )
    }

    fn any_record() -> impl Strategy<Value = MetadataRecord> {
        let name = proptest::sample::select(&NAMES[..]).prop_map(str::to_owned);
        let resource_name = proptest::sample::select(&["a", "b", "c", "0", ""][..]);
        let value = proptest::option::of(proptest::sample::select(&["1", "2"][..]));
        let feature_name =
            proptest::sample::select(&[METADATA_VERSION_FEATURE, "group.version"][..]);
        prop_oneof![
            2 => register_broker(),
            1 => (-1..4i32, 0..4i64, -1..3i8, 0..3i8).prop_map(|(id, epoch, fenced, shutdown)| {
                broker_change(id, epoch, fenced, shutdown)
            }),
            2 => (name, any_topic_id()).prop_map(|(name, id)| topic(&name, id)),
            2 => partition_record().prop_map(MetadataRecord::Partition),
            3 => partition_change().prop_map(MetadataRecord::PartitionChange),
            1 => any_topic_id().prop_map(remove),
            2 => (prop_oneof![Just(RESOURCE_TYPE_TOPIC), Just(RESOURCE_TYPE_BROKER)], resource_name,
                  proptest::sample::select(&["k1", "k2"][..]), value)
                .prop_map(|(kind, name, key, value)| config(kind, name, key, value)),
            1 => (feature_name, -1..3i16).prop_map(|(name, level)| feature(name, level)),
            1 => (-1..3000i64).prop_map(producer_ids),
        ]
    }

    /// One record of a random log: given whole, or aimed when it is
    /// applied at what the image then holds, so that changes find their
    /// partition or broker often enough to exercise the merge.
    #[derive(Debug, Clone)]
    enum Entry {
        Record(MetadataRecord),
        /// For a partition the image holds (`pick`); the ISR is the
        /// replicas chosen by `isr_mask`, the leader one of them, unchanged
        /// or none.
        Change {
            pick: Index,
            isr_mask: Option<u8>,
            leader_pick: Index,
            record: PartitionChangeRecord,
        },
        /// For a registered broker, at its epoch.
        BrokerChange {
            pick: Index,
            fenced: i8,
            shutdown: i8,
        },
        /// For a topic the image holds.
        Partition {
            pick: Index,
            record: PartitionRecord,
        },
    }

    impl Entry {
        fn resolve(&self, image: &MetadataImage) -> MetadataRecord {
            match self {
                Entry::Record(record) => record.clone(),
                Entry::Change {
                    pick,
                    isr_mask,
                    leader_pick,
                    record,
                } => {
                    let partitions: Vec<(Uuid, i32, &PartitionRegistration)> = image
                        .topics_by_id
                        .values()
                        .flat_map(|t| t.partitions.iter().map(|(&p, r)| (t.id, p, r)))
                        .collect();
                    if partitions.is_empty() {
                        return MetadataRecord::PartitionChange(record.clone());
                    }
                    let (topic_id, partition_id, current) = *pick.get(&partitions);
                    let replicas = record.replicas.as_ref().unwrap_or(&current.replicas);
                    let isr = isr_mask.map(|mask| {
                        (0..)
                            .zip(replicas)
                            .filter(|(bit, _)| mask & (1 << (bit % 8)) != 0)
                            .map(|(_, &replica)| replica)
                            .collect::<Vec<i32>>()
                    });
                    let mut choices = isr.clone().unwrap_or_else(|| current.isr.clone());
                    choices.extend([PartitionChangeRecord::LEADER_UNCHANGED, LEADER_NONE]);
                    MetadataRecord::PartitionChange(PartitionChangeRecord {
                        topic_id,
                        partition_id,
                        isr,
                        leader: *leader_pick.get(&choices),
                        ..record.clone()
                    })
                }
                Entry::BrokerChange {
                    pick,
                    fenced,
                    shutdown,
                } => {
                    let brokers: Vec<&BrokerRegistration> = image.brokers().collect();
                    let (id, epoch) = if brokers.is_empty() {
                        (0, 0)
                    } else {
                        (pick.get(&brokers).id, pick.get(&brokers).epoch)
                    };
                    broker_change(id, epoch, *fenced, *shutdown)
                }
                Entry::Partition { pick, record } => {
                    let topic_ids: Vec<Uuid> = image.topics_by_id.keys().copied().collect();
                    let topic_id = if topic_ids.is_empty() {
                        record.topic_id
                    } else {
                        *pick.get(&topic_ids)
                    };
                    MetadataRecord::Partition(PartitionRecord {
                        topic_id,
                        ..record.clone()
                    })
                }
            }
        }
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let change = (
            any::<Index>(),
            proptest::option::weighted(0.6, any::<u8>()),
            any::<Index>(),
            partition_change(),
        )
            .prop_map(|(pick, isr_mask, leader_pick, record)| Entry::Change {
                pick,
                isr_mask,
                leader_pick,
                record,
            });
        let fenced = prop_oneof![3 => -1..2i8, 1 => Just(2i8)];
        let shutdown = prop_oneof![6 => Just(0i8), 2 => Just(1i8), 1 => Just(2i8)];
        let broker_change =
            (any::<Index>(), fenced, shutdown).prop_map(|(pick, fenced, shutdown)| {
                Entry::BrokerChange {
                    pick,
                    fenced,
                    shutdown,
                }
            });
        let partition = (any::<Index>(), partition_record())
            .prop_map(|(pick, record)| Entry::Partition { pick, record });
        prop_oneof![
            6 => any_record().prop_map(Entry::Record),
            5 => change,
            2 => broker_change,
            2 => partition,
        ]
    }

    /// Entries and where each lands: mostly after the last offset,
    /// sometimes on or before it. Logs mostly open with some topics,
    /// brokers and partitions, as a cluster's does, for the rest to change.
    fn log_entries() -> impl Strategy<Value = Vec<(i64, Entry)>> {
        let name = proptest::sample::select(&NAMES[..]);
        let topic = (name, any_topic_id()).prop_map(|(name, id)| Entry::Record(topic(name, id)));
        let broker = register_broker().prop_map(Entry::Record);
        let partition = (any::<Index>(), partition_record())
            .prop_map(|(pick, record)| Entry::Partition { pick, record });
        let step = prop_oneof![12 => 1..3i64, 1 => -1..1i64];
        (
            proptest::collection::vec(topic, 0..4),
            proptest::collection::vec(broker, 0..4),
            proptest::collection::vec(partition, 0..8),
            proptest::collection::vec((step, entry()), 0..80),
        )
            .prop_map(|(topics, brokers, partitions, body)| {
                let opening = topics.into_iter().chain(brokers).chain(partitions);
                opening.map(|entry| (1, entry)).chain(body).collect()
            })
    }

    /// What must hold of `after` once `record` applied to `before`.
    fn check_applied(before: &MetadataImage, after: &MetadataImage, record: &MetadataRecord) {
        match record {
            MetadataRecord::RegisterBroker(r) => {
                let broker = after.broker(r.broker_id).unwrap();
                assert_eq!(
                    (broker.epoch, broker.incarnation_id),
                    (r.broker_epoch, r.incarnation_id)
                );
                assert_eq!(
                    (broker.fenced, broker.in_controlled_shutdown),
                    (r.fenced, r.in_controlled_shutdown)
                );
            }
            MetadataRecord::BrokerRegistrationChange(r) => {
                let (old, new) = (
                    before.broker(r.broker_id).unwrap(),
                    after.broker(r.broker_id).unwrap(),
                );
                assert_eq!(new.epoch, old.epoch);
                let fenced = match r.fenced {
                    1 => true,
                    -1 => false,
                    _ => old.fenced,
                };
                assert_eq!(new.fenced, fenced);
                assert_eq!(
                    new.in_controlled_shutdown,
                    old.in_controlled_shutdown || r.in_controlled_shutdown == 1
                );
            }
            MetadataRecord::Topic(r) => {
                assert!(before.topic_by_name(&r.name).is_none());
                let topic = after.topic_by_name(&r.name).unwrap();
                assert!(topic.id == r.topic_id && topic.partitions.is_empty());
            }
            MetadataRecord::Partition(r) => {
                let p = after.partition(r.topic_id, r.partition_id).unwrap();
                assert_eq!(
                    (&p.replicas, &p.isr, p.leader),
                    (&r.replicas, &r.isr, r.leader)
                );
                assert_eq!(
                    (p.leader_epoch, p.partition_epoch),
                    (r.leader_epoch, r.partition_epoch)
                );
            }
            MetadataRecord::PartitionChange(r) => {
                let old = before.partition(r.topic_id, r.partition_id).unwrap();
                let new = after.partition(r.topic_id, r.partition_id).unwrap();
                assert_eq!(new.partition_epoch, old.partition_epoch + 1);
                let leader_set = r.leader != PartitionChangeRecord::LEADER_UNCHANGED;
                assert_eq!(new.leader_epoch, old.leader_epoch + i32::from(leader_set));
                assert_eq!(new.leader, if leader_set { r.leader } else { old.leader });
                assert_eq!(&new.isr, r.isr.as_ref().unwrap_or(&old.isr));
                assert_eq!(&new.replicas, r.replicas.as_ref().unwrap_or(&old.replicas));
            }
            MetadataRecord::RemoveTopic(r) => {
                let name = &before.topic_by_id(r.topic_id).unwrap().name;
                assert!(after.topic_by_id(r.topic_id).is_none());
                assert!(after.topic_by_name(name).is_none());
                assert!(after.topic_configs(name).is_none());
            }
            MetadataRecord::Config(r) => {
                let value = after
                    .configs(r.resource_type, &r.resource_name)
                    .and_then(|keys| keys.get(&r.name));
                assert_eq!(value, r.value.as_ref());
            }
            MetadataRecord::FeatureLevel(r) => {
                let level = after.feature_level(&r.name);
                assert_eq!(level, (r.feature_level != 0).then_some(r.feature_level));
            }
            MetadataRecord::ProducerIds(r) => {
                assert!(before
                    .next_producer_id()
                    .is_none_or(|id| id < r.next_producer_id));
                assert_eq!(after.next_producer_id(), Some(r.next_producer_id));
            }
            MetadataRecord::BeginTransaction(_)
            | MetadataRecord::EndTransaction(_)
            | MetadataRecord::AbortTransaction(_) => {
                assert_eq!(
                    MetadataImage {
                        last_offset: before.last_offset,
                        ..after.clone()
                    },
                    *before
                );
            }
        }
    }

    /// Applies a random log; returns, per record name, how many were
    /// applied and how many refused.
    fn run_log(entries: &[(i64, Entry)]) -> BTreeMap<&'static str, (u32, u32)> {
        let mut image = MetadataImage::new();
        let mut outcomes = BTreeMap::new();
        for (step, entry) in entries {
            let offset = image.last_offset().unwrap_or(-1) + step;
            let record = &entry.resolve(&image);
            let before = image.clone();
            let counts: &mut (u32, u32) = outcomes.entry(record_name(record)).or_default();
            match image.apply(offset, record) {
                Ok(()) => {
                    counts.0 += 1;
                    assert_eq!(image.last_offset(), Some(offset));
                    check_applied(&before, &image, record);
                }
                Err(error) => {
                    counts.1 += 1;
                    assert_eq!(image, before, "{error}");
                    assert_eq!(
                        (error.offset, error.record_name),
                        (offset, record_name(record))
                    );
                }
            }
            image.invariants();
        }
        outcomes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_logs_keep_the_invariants(entries in log_entries()) {
            run_log(&entries);
        }
    }

    /// The random logs above are worth running: under a fixed seed, every
    /// record type is applied and refused, each a good many times.
    #[test]
    fn random_logs_reach_both_outcomes_for_every_record() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = log_entries();
        let mut totals: BTreeMap<&'static str, (u32, u32)> = BTreeMap::new();
        for _ in 0..100 {
            let entries = strategy.new_tree(&mut runner).unwrap().current();
            for (name, (applied, refused)) in run_log(&entries) {
                let total = totals.entry(name).or_default();
                total.0 += applied;
                total.1 += refused;
            }
        }
        assert_eq!(totals.len(), 9, "{totals:?}");
        for (name, (applied, refused)) in &totals {
            assert!(*applied >= 20 && *refused >= 10, "{name}: {totals:?}");
        }
    }
}
