//! Kafka's KRaft metadata records: the values of the records in
//! `__cluster_metadata` (keys are null), encoded and decoded byte for byte as
//! Kafka writes them, so that Sluice's controller log and Kafka's tools can
//! read each other.
//!
//! A value is framed as Kafka's `AbstractApiMessageSerde` frames it: unsigned
//! varints for the frame version (1), the record type (the schema's
//! `apiKey`) and the record version, then the record body in Kafka's
//! flexible message encoding (compact strings and arrays with length + 1 as
//! an unsigned varint, 0 for null; uuids as 16 bytes; a tagged-field section
//! closing every struct). Nothing may follow the body.
//!
//! Field names, order, defaults, tags and versions follow Kafka's schemas in
//! `metadata/src/main/resources/common/metadata/*.json` (checked against
//! apache/kafka trunk of 2024-10-25, commit 1eb76443). `encode` writes each
//! record at the newest version of its schema, which every field Sluice
//! needs fits:
//!
//! | record | type | versions decoded | version encoded |
//! | --- | --- | --- | --- |
//! | RegisterBrokerRecord | 0 | 0-3 | 3 |
//! | TopicRecord | 2 | 0 | 0 |
//! | PartitionRecord | 3 | 0-2 | 2 |
//! | ConfigRecord | 4 | 0 | 0 |
//! | PartitionChangeRecord | 5 | 0-2 | 2 |
//! | RemoveTopicRecord | 9 | 0 | 0 |
//! | FeatureLevelRecord | 12 | 0 | 0 |
//! | ProducerIdsRecord | 15 | 0 | 0 |
//! | BrokerRegistrationChangeRecord | 17 | 0-2 | 2 |
//! | BeginTransactionRecord | 23 | 0 | 0 |
//! | EndTransactionRecord | 24 | 0 | 0 |
//! | AbortTransactionRecord | 25 | 0 | 0 |
//!
//! Fields Sluice does not use yet (log directories, eligible leader
//! replicas, ZK migration) are kept, so that decoding then encoding loses
//! nothing the schema knows; tagged fields with tags the schema does not know
//! are skipped. `encode_version` writes an older version, refusing, as
//! Kafka's generated writers do, a field the version lacks that holds
//! anything but its default.
//!
//! Decoding is for bytes from a peer or the disk: it never panics, reports
//! what was wrong as a `RecordError`, and never sizes an allocation by a
//! length it has not checked against the bytes left.

use uuid::Uuid;

/// The only frame version Kafka writes; 0 was the 2.8 KRaft preview's.
pub const FRAME_VERSION: u32 = 1;

/// Longest string Kafka's generated code reads or writes, in bytes.
pub const STRING_BYTES_MAX: usize = 0x7fff;

/// Why a record could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The field starting at `offset` runs past the end of the bytes.
    Truncated { offset: usize },
    /// The unsigned varint at `offset` does not fit 32 bits.
    VarintTooLong { offset: usize },
    /// The frame version is not 1.
    UnknownFrameVersion(u32),
    /// A record type this codec does not know.
    UnknownType(u32),
    /// A known record type at a version its schema does not list.
    UnsupportedVersion { record_type: u16, version: u32 },
    /// The length at `offset` is out of range (a string longer than
    /// `STRING_BYTES_MAX`, or a length beyond Kafka's `int`).
    LengthOutOfRange { offset: usize, length: u64 },
    /// Null at `offset`, in a field that is not nullable.
    NullNotAllowed { offset: usize },
    /// The string at `offset` is not UTF-8.
    InvalidUtf8 { offset: usize },
    /// A tag the schema gives a field, but not at this version (Kafka
    /// refuses these rather than skip them).
    TagNotInVersion { tag: u32, version: u16 },
    /// The tagged field at `offset` holds more bytes than its value.
    TaggedFieldSize { tag: u32, offset: usize },
    /// Bytes left over after the record.
    TrailingBytes { count: usize },
    /// Encoding: the field does not exist at this version and does not hold
    /// its default, so the version cannot carry the record.
    FieldNotInVersion { field: &'static str, version: u16 },
    /// Encoding: a string or array too long for Kafka's encoding.
    TooLong { field: &'static str, length: usize },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Truncated { offset } => {
                write!(f, "truncated in the field at byte {offset}")
            }
            RecordError::VarintTooLong { offset } => write!(f, "varint too long at byte {offset}"),
            RecordError::UnknownFrameVersion(version) => {
                write!(f, "unknown frame version {version}")
            }
            RecordError::UnknownType(record_type) => write!(f, "unknown record type {record_type}"),
            RecordError::UnsupportedVersion {
                record_type,
                version,
            } => {
                write!(f, "record type {record_type} has no version {version}")
            }
            RecordError::LengthOutOfRange { offset, length } => {
                write!(f, "length {length} out of range at byte {offset}")
            }
            RecordError::NullNotAllowed { offset } => {
                write!(f, "null in a non-nullable field at byte {offset}")
            }
            RecordError::InvalidUtf8 { offset } => {
                write!(f, "string at byte {offset} is not UTF-8")
            }
            RecordError::TagNotInVersion { tag, version } => {
                write!(f, "tag {tag} is not valid at version {version}")
            }
            RecordError::TaggedFieldSize { tag, offset } => {
                write!(
                    f,
                    "tagged field {tag} at byte {offset} is longer than its value"
                )
            }
            RecordError::TrailingBytes { count } => write!(f, "{count} bytes after the record"),
            RecordError::FieldNotInVersion { field, version } => {
                write!(f, "{field} is set but version {version} has no such field")
            }
            RecordError::TooLong { field, length } => {
                write!(f, "{field} is too long to encode ({length})")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// One metadata record, of the types Sluice reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRecord {
    RegisterBroker(RegisterBrokerRecord),
    Topic(TopicRecord),
    Partition(PartitionRecord),
    Config(ConfigRecord),
    PartitionChange(PartitionChangeRecord),
    RemoveTopic(RemoveTopicRecord),
    FeatureLevel(FeatureLevelRecord),
    ProducerIds(ProducerIdsRecord),
    BrokerRegistrationChange(BrokerRegistrationChangeRecord),
    BeginTransaction(BeginTransactionRecord),
    EndTransaction(EndTransactionRecord),
    AbortTransaction(AbortTransactionRecord),
}

/// A broker's registration (type 0). Version 1 adds `in_controlled_shutdown`,
/// 2 `is_migrating_zk_broker`, 3 `log_dirs` (tag 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterBrokerRecord {
    pub broker_id: i32,
    /// ZooKeeper migration only; always false for Sluice.
    pub is_migrating_zk_broker: bool,
    /// Random per broker process start.
    pub incarnation_id: Uuid,
    pub broker_epoch: i64,
    pub end_points: Vec<BrokerEndpoint>,
    pub features: Vec<BrokerFeature>,
    pub rack: Option<String>,
    /// Schema default true: a broker registers fenced.
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
    /// The broker's online log directories (KIP-858); empty for Sluice.
    pub log_dirs: Vec<Uuid>,
}

/// One listener of a registered broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// The listener name, e.g. `PLAINTEXT`.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Kafka's SecurityProtocol id (0 PLAINTEXT, 1 SSL, 2 SASL_PLAINTEXT,
    /// 3 SASL_SSL).
    pub security_protocol: i16,
}

/// One feature a registered broker supports, with its range of levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFeature {
    pub name: String,
    pub min_supported_version: i16,
    pub max_supported_version: i16,
}

/// A topic's creation (type 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub topic_id: Uuid,
}

/// A partition's whole state (type 3). Version 1 adds `directories`, 2 the
/// eligible leader replicas (tags 1 and 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecord {
    pub partition_id: i32,
    pub topic_id: Uuid,
    /// In preferred order.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub removing_replicas: Vec<i32>,
    pub adding_replicas: Vec<i32>,
    /// -1: no leader.
    pub leader: i32,
    /// 0 recovered, 1 recovering from an unclean election (tag 0).
    pub leader_recovery_state: i8,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// One log directory per replica, or empty, which Kafka reads as all
    /// "migrating" (unknown); Sluice leaves it empty.
    pub directories: Vec<Uuid>,
    /// KIP-966 (tag 1); None when not in use.
    pub eligible_leader_replicas: Option<Vec<i32>>,
    /// KIP-966 (tag 2); None when not in use.
    pub last_known_elr: Option<Vec<i32>>,
}

/// A change to one config of one resource (type 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRecord {
    /// Kafka's ConfigResource type (2 topic, 4 broker, ...).
    pub resource_type: i8,
    /// The topic name, the broker id as text, or empty for the cluster default.
    pub resource_name: String,
    pub name: String,
    /// None deletes the config.
    pub value: Option<String>,
}

/// A change to a partition (type 5): every field but the ids is tagged, and
/// absent (None, or the `*_UNCHANGED` value) means "as before". Version 1
/// adds `directories` (tag 8), 2 the eligible leader replicas (tags 6, 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionChangeRecord {
    pub partition_id: i32,
    pub topic_id: Uuid,
    /// Tag 0.
    pub isr: Option<Vec<i32>>,
    /// Tag 1: `LEADER_UNCHANGED`, `LEADER_NONE`, or the new leader.
    pub leader: i32,
    /// Tag 2.
    pub replicas: Option<Vec<i32>>,
    /// Tag 3.
    pub removing_replicas: Option<Vec<i32>>,
    /// Tag 4.
    pub adding_replicas: Option<Vec<i32>>,
    /// Tag 5: `RECOVERY_STATE_UNCHANGED`, 0 recovered, 1 recovering.
    pub leader_recovery_state: i8,
    /// Tag 8.
    pub directories: Option<Vec<Uuid>>,
    /// Tag 6.
    pub eligible_leader_replicas: Option<Vec<i32>>,
    /// Tag 7.
    pub last_known_elr: Option<Vec<i32>>,
}

impl PartitionChangeRecord {
    pub const LEADER_UNCHANGED: i32 = -2;
    pub const LEADER_NONE: i32 = -1;
    pub const RECOVERY_STATE_UNCHANGED: i8 = -1;
}

/// A topic's deletion, with all its partitions (type 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveTopicRecord {
    pub topic_id: Uuid,
}

/// A finalized feature level (type 12), e.g. `metadata.version`. Kafka
/// keeps this record at version 0 forever: a log starts with one, and every
/// reader must understand it before it knows anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLevelRecord {
    pub name: String,
    /// 0: the feature is off.
    pub feature_level: i16,
}

/// A block of producer ids handed out (type 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerIdsRecord {
    pub broker_id: i32,
    pub broker_epoch: i64,
    /// The first id of the next block.
    pub next_producer_id: i64,
}

/// A change to a broker's registration (type 17): `fenced` and
/// `in_controlled_shutdown` are tagged and 0 means "as before". Version 1
/// adds `in_controlled_shutdown` (tag 1), 2 `log_dirs` (tag 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistrationChangeRecord {
    pub broker_id: i32,
    pub broker_epoch: i64,
    /// Tag 0: `FENCED`, `UNFENCED` or `UNCHANGED`.
    pub fenced: i8,
    /// Tag 1: `UNCHANGED`, or 1 once in controlled shutdown.
    pub in_controlled_shutdown: i8,
    /// Tag 2; empty when unchanged.
    pub log_dirs: Vec<Uuid>,
}

/// The start of a metadata transaction (type 23, KIP-868): the records up
/// to the EndTransactionRecord are one change, applied together or not at
/// all. `name` (tag 0) describes it, null by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeginTransactionRecord {
    pub name: Option<String>,
}

/// The end of a metadata transaction (type 24): its records apply now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndTransactionRecord {}

/// A metadata transaction dropped (type 25): a new active controller found
/// one its predecessor never ended. `reason` (tag 0), null by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AbortTransactionRecord {
    pub reason: Option<String>,
}

impl BrokerRegistrationChangeRecord {
    pub const FENCED: i8 = 1;
    pub const UNFENCED: i8 = -1;
    pub const UNCHANGED: i8 = 0;
    /// `in_controlled_shutdown`: the broker asked to shut down.
    pub const IN_CONTROLLED_SHUTDOWN: i8 = 1;
}

impl Default for RegisterBrokerRecord {
    fn default() -> Self {
        RegisterBrokerRecord {
            broker_id: 0,
            is_migrating_zk_broker: false,
            incarnation_id: Uuid::nil(),
            broker_epoch: 0,
            end_points: Vec::new(),
            features: Vec::new(),
            rack: None,
            fenced: true,
            in_controlled_shutdown: false,
            log_dirs: Vec::new(),
        }
    }
}

impl Default for PartitionRecord {
    fn default() -> Self {
        PartitionRecord {
            partition_id: -1,
            topic_id: Uuid::nil(),
            replicas: Vec::new(),
            isr: Vec::new(),
            removing_replicas: Vec::new(),
            adding_replicas: Vec::new(),
            leader: -1,
            leader_recovery_state: 0,
            leader_epoch: -1,
            partition_epoch: -1,
            directories: Vec::new(),
            eligible_leader_replicas: None,
            last_known_elr: None,
        }
    }
}

impl Default for PartitionChangeRecord {
    fn default() -> Self {
        PartitionChangeRecord {
            partition_id: -1,
            topic_id: Uuid::nil(),
            isr: None,
            leader: Self::LEADER_UNCHANGED,
            replicas: None,
            removing_replicas: None,
            adding_replicas: None,
            leader_recovery_state: Self::RECOVERY_STATE_UNCHANGED,
            directories: None,
            eligible_leader_replicas: None,
            last_known_elr: None,
        }
    }
}

impl Default for ProducerIdsRecord {
    fn default() -> Self {
        ProducerIdsRecord {
            broker_id: 0,
            broker_epoch: -1,
            next_producer_id: 0,
        }
    }
}

/// Runs `$then` with `$body` bound to the record inside any variant.
macro_rules! with_body {
    ($record:expr, $body:ident => $then:expr) => {
        match $record {
            MetadataRecord::RegisterBroker($body) => $then,
            MetadataRecord::Topic($body) => $then,
            MetadataRecord::Partition($body) => $then,
            MetadataRecord::Config($body) => $then,
            MetadataRecord::PartitionChange($body) => $then,
            MetadataRecord::RemoveTopic($body) => $then,
            MetadataRecord::FeatureLevel($body) => $then,
            MetadataRecord::ProducerIds($body) => $then,
            MetadataRecord::BrokerRegistrationChange($body) => $then,
            MetadataRecord::BeginTransaction($body) => $then,
            MetadataRecord::EndTransaction($body) => $then,
            MetadataRecord::AbortTransaction($body) => $then,
        }
    };
}

impl MetadataRecord {
    /// The record type (the schema's `apiKey`).
    pub fn record_type(&self) -> u16 {
        with_body!(self, body => type_of(body))
    }

    /// The version `encode` writes.
    pub fn version_latest(&self) -> u16 {
        with_body!(self, body => version_latest_of(body))
    }

    /// The record value at `version_latest`.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.encode_version(self.version_latest())
    }

    /// The record value at `version`; refused if the schema lacks that
    /// version, or a field the version lacks holds other than its default.
    pub fn encode_version(&self, version: u16) -> Result<Vec<u8>, RecordError> {
        with_body!(self, body => encode_framed(body, version))
    }

    /// Decodes one record value, of any version the schemas list.
    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, RecordError> {
        let mut reader = Reader::new(bytes);
        let frame_version = reader.uvarint()?;
        if frame_version != FRAME_VERSION {
            return Err(RecordError::UnknownFrameVersion(frame_version));
        }
        let record_type = reader.uvarint()?;
        let version = reader.uvarint()?;
        let record = match record_type {
            0 => MetadataRecord::RegisterBroker(read_versioned(&mut reader, version)?),
            2 => MetadataRecord::Topic(read_versioned(&mut reader, version)?),
            3 => MetadataRecord::Partition(read_versioned(&mut reader, version)?),
            4 => MetadataRecord::Config(read_versioned(&mut reader, version)?),
            5 => MetadataRecord::PartitionChange(read_versioned(&mut reader, version)?),
            9 => MetadataRecord::RemoveTopic(read_versioned(&mut reader, version)?),
            12 => MetadataRecord::FeatureLevel(read_versioned(&mut reader, version)?),
            15 => MetadataRecord::ProducerIds(read_versioned(&mut reader, version)?),
            17 => MetadataRecord::BrokerRegistrationChange(read_versioned(&mut reader, version)?),
            23 => MetadataRecord::BeginTransaction(read_versioned(&mut reader, version)?),
            24 => MetadataRecord::EndTransaction(read_versioned(&mut reader, version)?),
            25 => MetadataRecord::AbortTransaction(read_versioned(&mut reader, version)?),
            _ => return Err(RecordError::UnknownType(record_type)),
        };
        reader.finish()?;
        Ok(record)
    }
}

macro_rules! from_body {
    ($($variant:ident($body:ty)),* $(,)?) => {
        $(impl From<$body> for MetadataRecord {
            fn from(body: $body) -> Self {
                MetadataRecord::$variant(body)
            }
        })*
    };
}

from_body!(
    RegisterBroker(RegisterBrokerRecord),
    Topic(TopicRecord),
    Partition(PartitionRecord),
    Config(ConfigRecord),
    PartitionChange(PartitionChangeRecord),
    RemoveTopic(RemoveTopicRecord),
    FeatureLevel(FeatureLevelRecord),
    ProducerIds(ProducerIdsRecord),
    BrokerRegistrationChange(BrokerRegistrationChangeRecord),
    BeginTransaction(BeginTransactionRecord),
    EndTransaction(EndTransactionRecord),
    AbortTransaction(AbortTransactionRecord),
);

/// The body of one record type: its schema's type number and versions, and
/// its fields in order.
trait Body: Sized {
    const TYPE: u16;
    /// Every version from 0 to this one is valid.
    const VERSION_LATEST: u16;
    fn write(&self, writer: &mut Writer, version: u16) -> Result<(), RecordError>;
    fn read(reader: &mut Reader<'_>, version: u16) -> Result<Self, RecordError>;
}

fn type_of<B: Body>(_: &B) -> u16 {
    B::TYPE
}

fn version_latest_of<B: Body>(_: &B) -> u16 {
    B::VERSION_LATEST
}

fn encode_framed<B: Body>(body: &B, version: u16) -> Result<Vec<u8>, RecordError> {
    if version > B::VERSION_LATEST {
        return Err(RecordError::UnsupportedVersion {
            record_type: B::TYPE,
            version: u32::from(version),
        });
    }
    let mut writer = Writer::default();
    writer.uvarint(FRAME_VERSION);
    writer.uvarint(u32::from(B::TYPE));
    writer.uvarint(u32::from(version));
    body.write(&mut writer, version)?;
    Ok(writer.out)
}

fn read_versioned<B: Body>(reader: &mut Reader<'_>, version: u32) -> Result<B, RecordError> {
    match u16::try_from(version) {
        Ok(version) if version <= B::VERSION_LATEST => B::read(reader, version),
        _ => Err(RecordError::UnsupportedVersion {
            record_type: B::TYPE,
            version,
        }),
    }
}

/// Refuses to encode a field at a version without it, unless it holds its
/// default (which a reader of that version would assume anyway).
fn check_field(
    field: &'static str,
    version: u16,
    in_version: bool,
    is_default: bool,
) -> Result<(), RecordError> {
    if in_version || is_default {
        Ok(())
    } else {
        Err(RecordError::FieldNotInVersion { field, version })
    }
}

/// Refuses a tag the schema knows only at other versions.
fn check_tag(tag: u32, version: u16, in_version: bool) -> Result<(), RecordError> {
    if in_version {
        Ok(())
    } else {
        Err(RecordError::TagNotInVersion { tag, version })
    }
}

impl Body for RegisterBrokerRecord {
    const TYPE: u16 = 0;
    const VERSION_LATEST: u16 = 3;

    fn write(&self, writer: &mut Writer, version: u16) -> Result<(), RecordError> {
        check_field(
            "InControlledShutdown",
            version,
            version >= 1,
            !self.in_controlled_shutdown,
        )?;
        check_field(
            "IsMigratingZkBroker",
            version,
            version >= 2,
            !self.is_migrating_zk_broker,
        )?;
        check_field("LogDirs", version, version >= 3, self.log_dirs.is_empty())?;
        writer.i32(self.broker_id);
        if version >= 2 {
            writer.bool(self.is_migrating_zk_broker);
        }
        writer.uuid(&self.incarnation_id);
        writer.i64(self.broker_epoch);
        writer.array("EndPoints", &self.end_points, BrokerEndpoint::write)?;
        writer.array("Features", &self.features, BrokerFeature::write)?;
        writer.nullable_string("Rack", self.rack.as_deref())?;
        writer.bool(self.fenced);
        if version >= 1 {
            writer.bool(self.in_controlled_shutdown);
        }
        let mut tagged = TaggedFields::default();
        if !self.log_dirs.is_empty() {
            tagged.add(0, |field| field.uuid_array("LogDirs", &self.log_dirs))?;
        }
        writer.tagged_fields(tagged)
    }

    fn read(reader: &mut Reader<'_>, version: u16) -> Result<Self, RecordError> {
        let broker_id = reader.i32()?;
        let is_migrating_zk_broker = if version >= 2 { reader.bool()? } else { false };
        let incarnation_id = reader.uuid()?;
        let broker_epoch = reader.i64()?;
        let end_points = reader.array(BrokerEndpoint::BYTES_MIN, BrokerEndpoint::read)?;
        let features = reader.array(BrokerFeature::BYTES_MIN, BrokerFeature::read)?;
        let rack = reader.nullable_string()?;
        let fenced = reader.bool()?;
        let in_controlled_shutdown = if version >= 1 { reader.bool()? } else { false };
        let mut log_dirs = Vec::new();
        reader.tagged_fields(|tag, field| match tag {
            0 => {
                check_tag(tag, version, version >= 3)?;
                log_dirs = field.uuid_array()?;
                Ok(true)
            }
            _ => Ok(false),
        })?;
        Ok(RegisterBrokerRecord {
            broker_id,
            is_migrating_zk_broker,
            incarnation_id,
            broker_epoch,
            end_points,
            features,
            rack,
            fenced,
            in_controlled_shutdown,
            log_dirs,
        })
    }
}

impl BrokerEndpoint {
    /// Two empty strings, port, protocol, no tagged fields.
    const BYTES_MIN: usize = 1 + 1 + 2 + 2 + 1;

    fn write(&self, writer: &mut Writer) -> Result<(), RecordError> {
        writer.string("EndPoints.Name", &self.name)?;
        writer.string("EndPoints.Host", &self.host)?;
        writer.u16(self.port);
        writer.i16(self.security_protocol);
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, RecordError> {
        let name = reader.string()?;
        let host = reader.string()?;
        let port = reader.u16()?;
        let security_protocol = reader.i16()?;
        reader.skip_tagged_fields()?;
        Ok(BrokerEndpoint {
            name,
            host,
            port,
            security_protocol,
        })
    }
}

impl BrokerFeature {
    /// An empty name, two levels, no tagged fields.
    const BYTES_MIN: usize = 1 + 2 + 2 + 1;

    fn write(&self, writer: &mut Writer) -> Result<(), RecordError> {
        writer.string("Features.Name", &self.name)?;
        writer.i16(self.min_supported_version);
        writer.i16(self.max_supported_version);
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, RecordError> {
        let name = reader.string()?;
        let min_supported_version = reader.i16()?;
        let max_supported_version = reader.i16()?;
        reader.skip_tagged_fields()?;
        Ok(BrokerFeature {
            name,
            min_supported_version,
            max_supported_version,
        })
    }
}

impl Body for TopicRecord {
    const TYPE: u16 = 2;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        writer.string("Name", &self.name)?;
        writer.uuid(&self.topic_id);
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let name = reader.string()?;
        let topic_id = reader.uuid()?;
        reader.skip_tagged_fields()?;
        Ok(TopicRecord { name, topic_id })
    }
}

impl Body for PartitionRecord {
    const TYPE: u16 = 3;
    const VERSION_LATEST: u16 = 2;

    fn write(&self, writer: &mut Writer, version: u16) -> Result<(), RecordError> {
        check_field(
            "Directories",
            version,
            version >= 1,
            self.directories.is_empty(),
        )?;
        let elr_default = self.eligible_leader_replicas.is_none();
        check_field("EligibleLeaderReplicas", version, version >= 2, elr_default)?;
        check_field(
            "LastKnownElr",
            version,
            version >= 2,
            self.last_known_elr.is_none(),
        )?;
        writer.i32(self.partition_id);
        writer.uuid(&self.topic_id);
        writer.i32_array("Replicas", &self.replicas)?;
        writer.i32_array("Isr", &self.isr)?;
        writer.i32_array("RemovingReplicas", &self.removing_replicas)?;
        writer.i32_array("AddingReplicas", &self.adding_replicas)?;
        writer.i32(self.leader);
        // LeaderRecoveryState sits here in the schema but is tagged: it
        // travels in the tagged section below.
        writer.i32(self.leader_epoch);
        writer.i32(self.partition_epoch);
        if version >= 1 {
            writer.uuid_array("Directories", &self.directories)?;
        }
        let mut tagged = TaggedFields::default();
        if self.leader_recovery_state != 0 {
            tagged.add_i8(0, self.leader_recovery_state)?;
        }
        tagged.add_i32_list(1, "EligibleLeaderReplicas", &self.eligible_leader_replicas)?;
        tagged.add_i32_list(2, "LastKnownElr", &self.last_known_elr)?;
        writer.tagged_fields(tagged)
    }

    fn read(reader: &mut Reader<'_>, version: u16) -> Result<Self, RecordError> {
        let mut record = PartitionRecord {
            partition_id: reader.i32()?,
            topic_id: reader.uuid()?,
            replicas: reader.i32_array()?,
            isr: reader.i32_array()?,
            removing_replicas: reader.i32_array()?,
            adding_replicas: reader.i32_array()?,
            leader: reader.i32()?,
            leader_epoch: reader.i32()?,
            partition_epoch: reader.i32()?,
            ..PartitionRecord::default()
        };
        if version >= 1 {
            record.directories = reader.uuid_array()?;
        }
        reader.tagged_fields(|tag, field| {
            match tag {
                0 => record.leader_recovery_state = field.i8()?,
                1 => {
                    check_tag(tag, version, version >= 2)?;
                    record.eligible_leader_replicas = field.nullable_i32_array()?;
                }
                2 => {
                    check_tag(tag, version, version >= 2)?;
                    record.last_known_elr = field.nullable_i32_array()?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(record)
    }
}

impl Body for ConfigRecord {
    const TYPE: u16 = 4;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        writer.i8(self.resource_type);
        writer.string("ResourceName", &self.resource_name)?;
        writer.string("Name", &self.name)?;
        writer.nullable_string("Value", self.value.as_deref())?;
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let record = ConfigRecord {
            resource_type: reader.i8()?,
            resource_name: reader.string()?,
            name: reader.string()?,
            value: reader.nullable_string()?,
        };
        reader.skip_tagged_fields()?;
        Ok(record)
    }
}

impl Body for PartitionChangeRecord {
    const TYPE: u16 = 5;
    const VERSION_LATEST: u16 = 2;

    fn write(&self, writer: &mut Writer, version: u16) -> Result<(), RecordError> {
        check_field(
            "Directories",
            version,
            version >= 1,
            self.directories.is_none(),
        )?;
        let elr_default = self.eligible_leader_replicas.is_none();
        check_field("EligibleLeaderReplicas", version, version >= 2, elr_default)?;
        check_field(
            "LastKnownElr",
            version,
            version >= 2,
            self.last_known_elr.is_none(),
        )?;
        writer.i32(self.partition_id);
        writer.uuid(&self.topic_id);
        // Everything else is tagged, written in tag order (the schema lists
        // Directories, tag 8, before tags 6 and 7).
        let mut tagged = TaggedFields::default();
        tagged.add_i32_list(0, "Isr", &self.isr)?;
        if self.leader != Self::LEADER_UNCHANGED {
            tagged.add_i32(1, self.leader)?;
        }
        tagged.add_i32_list(2, "Replicas", &self.replicas)?;
        tagged.add_i32_list(3, "RemovingReplicas", &self.removing_replicas)?;
        tagged.add_i32_list(4, "AddingReplicas", &self.adding_replicas)?;
        if self.leader_recovery_state != Self::RECOVERY_STATE_UNCHANGED {
            tagged.add_i8(5, self.leader_recovery_state)?;
        }
        tagged.add_i32_list(6, "EligibleLeaderReplicas", &self.eligible_leader_replicas)?;
        tagged.add_i32_list(7, "LastKnownElr", &self.last_known_elr)?;
        if let Some(directories) = &self.directories {
            tagged.add(8, |field| field.uuid_array("Directories", directories))?;
        }
        writer.tagged_fields(tagged)
    }

    fn read(reader: &mut Reader<'_>, version: u16) -> Result<Self, RecordError> {
        let mut record = PartitionChangeRecord {
            partition_id: reader.i32()?,
            topic_id: reader.uuid()?,
            ..PartitionChangeRecord::default()
        };
        reader.tagged_fields(|tag, field| {
            match tag {
                0 => record.isr = field.nullable_i32_array()?,
                1 => record.leader = field.i32()?,
                2 => record.replicas = field.nullable_i32_array()?,
                3 => record.removing_replicas = field.nullable_i32_array()?,
                4 => record.adding_replicas = field.nullable_i32_array()?,
                5 => record.leader_recovery_state = field.i8()?,
                6 => {
                    check_tag(tag, version, version >= 2)?;
                    record.eligible_leader_replicas = field.nullable_i32_array()?;
                }
                7 => {
                    check_tag(tag, version, version >= 2)?;
                    record.last_known_elr = field.nullable_i32_array()?;
                }
                8 => {
                    check_tag(tag, version, version >= 1)?;
                    record.directories = field.nullable_uuid_array()?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(record)
    }
}

impl Body for RemoveTopicRecord {
    const TYPE: u16 = 9;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        writer.uuid(&self.topic_id);
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let topic_id = reader.uuid()?;
        reader.skip_tagged_fields()?;
        Ok(RemoveTopicRecord { topic_id })
    }
}

impl Body for FeatureLevelRecord {
    const TYPE: u16 = 12;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        writer.string("Name", &self.name)?;
        writer.i16(self.feature_level);
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let name = reader.string()?;
        let feature_level = reader.i16()?;
        reader.skip_tagged_fields()?;
        Ok(FeatureLevelRecord {
            name,
            feature_level,
        })
    }
}

impl Body for ProducerIdsRecord {
    const TYPE: u16 = 15;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        writer.i32(self.broker_id);
        writer.i64(self.broker_epoch);
        writer.i64(self.next_producer_id);
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let record = ProducerIdsRecord {
            broker_id: reader.i32()?,
            broker_epoch: reader.i64()?,
            next_producer_id: reader.i64()?,
        };
        reader.skip_tagged_fields()?;
        Ok(record)
    }
}

impl Body for BrokerRegistrationChangeRecord {
    const TYPE: u16 = 17;
    const VERSION_LATEST: u16 = 2;

    fn write(&self, writer: &mut Writer, version: u16) -> Result<(), RecordError> {
        let shutdown_default = self.in_controlled_shutdown == Self::UNCHANGED;
        check_field(
            "InControlledShutdown",
            version,
            version >= 1,
            shutdown_default,
        )?;
        check_field("LogDirs", version, version >= 2, self.log_dirs.is_empty())?;
        writer.i32(self.broker_id);
        writer.i64(self.broker_epoch);
        let mut tagged = TaggedFields::default();
        if self.fenced != Self::UNCHANGED {
            tagged.add_i8(0, self.fenced)?;
        }
        if !shutdown_default {
            tagged.add_i8(1, self.in_controlled_shutdown)?;
        }
        if !self.log_dirs.is_empty() {
            tagged.add(2, |field| field.uuid_array("LogDirs", &self.log_dirs))?;
        }
        writer.tagged_fields(tagged)
    }

    fn read(reader: &mut Reader<'_>, version: u16) -> Result<Self, RecordError> {
        let mut record = BrokerRegistrationChangeRecord {
            broker_id: reader.i32()?,
            broker_epoch: reader.i64()?,
            fenced: Self::UNCHANGED,
            in_controlled_shutdown: Self::UNCHANGED,
            log_dirs: Vec::new(),
        };
        reader.tagged_fields(|tag, field| {
            match tag {
                0 => record.fenced = field.i8()?,
                1 => {
                    check_tag(tag, version, version >= 1)?;
                    record.in_controlled_shutdown = field.i8()?;
                }
                2 => {
                    check_tag(tag, version, version >= 2)?;
                    record.log_dirs = field.uuid_array()?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(record)
    }
}

impl Body for BeginTransactionRecord {
    const TYPE: u16 = 23;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        let mut tagged = TaggedFields::default();
        tagged.add_nullable_string(0, "Name", self.name.as_deref())?;
        writer.tagged_fields(tagged)
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let mut record = BeginTransactionRecord::default();
        reader.tagged_fields(|tag, field| {
            match tag {
                0 => record.name = field.nullable_string()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(record)
    }
}

impl Body for EndTransactionRecord {
    const TYPE: u16 = 24;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        writer.tagged_fields(TaggedFields::default())
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        reader.skip_tagged_fields()?;
        Ok(EndTransactionRecord {})
    }
}

impl Body for AbortTransactionRecord {
    const TYPE: u16 = 25;
    const VERSION_LATEST: u16 = 0;

    fn write(&self, writer: &mut Writer, _version: u16) -> Result<(), RecordError> {
        let mut tagged = TaggedFields::default();
        tagged.add_nullable_string(0, "Reason", self.reason.as_deref())?;
        writer.tagged_fields(tagged)
    }

    fn read(reader: &mut Reader<'_>, _version: u16) -> Result<Self, RecordError> {
        let mut record = AbortTransactionRecord::default();
        reader.tagged_fields(|tag, field| {
            match tag {
                0 => record.reason = field.nullable_string()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(record)
    }
}

/// Appends Kafka's flexible encoding to a buffer.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn uvarint(&mut self, mut value: u32) {
        while value >= 0x80 {
            self.out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        self.out.push(value as u8);
    }

    fn bool(&mut self, value: bool) {
        self.out.push(u8::from(value));
    }

    fn i8(&mut self, value: i8) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn i16(&mut self, value: i16) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn i32(&mut self, value: i32) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn uuid(&mut self, value: &Uuid) {
        self.out.extend_from_slice(value.as_bytes());
    }

    /// A compact length: length + 1, which must fit Kafka's `int`.
    fn length(&mut self, field: &'static str, length: usize) -> Result<(), RecordError> {
        match u32::try_from(length) {
            Ok(count) if count < i32::MAX as u32 => {
                self.uvarint(count + 1);
                Ok(())
            }
            _ => Err(RecordError::TooLong { field, length }),
        }
    }

    fn string(&mut self, field: &'static str, text: &str) -> Result<(), RecordError> {
        if text.len() > STRING_BYTES_MAX {
            return Err(RecordError::TooLong {
                field,
                length: text.len(),
            });
        }
        self.length(field, text.len())?;
        self.out.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn nullable_string(
        &mut self,
        field: &'static str,
        text: Option<&str>,
    ) -> Result<(), RecordError> {
        match text {
            Some(text) => self.string(field, text),
            None => {
                self.uvarint(0);
                Ok(())
            }
        }
    }

    fn array<T>(
        &mut self,
        field: &'static str,
        items: &[T],
        mut write: impl FnMut(&T, &mut Writer) -> Result<(), RecordError>,
    ) -> Result<(), RecordError> {
        self.length(field, items.len())?;
        for item in items {
            write(item, self)?;
        }
        Ok(())
    }

    fn i32_array(&mut self, field: &'static str, items: &[i32]) -> Result<(), RecordError> {
        self.array(field, items, |item, writer| {
            writer.i32(*item);
            Ok(())
        })
    }

    fn uuid_array(&mut self, field: &'static str, items: &[Uuid]) -> Result<(), RecordError> {
        self.array(field, items, |item, writer| {
            writer.uuid(item);
            Ok(())
        })
    }

    /// The section closing a struct: count, then each field's tag, size and
    /// value.
    fn tagged_fields(&mut self, tagged: TaggedFields) -> Result<(), RecordError> {
        // Few fields (at most one per tag the schema knows), so no overflow.
        self.uvarint(tagged.fields.len() as u32);
        for (tag, value) in tagged.fields {
            self.uvarint(tag);
            let size = u32::try_from(value.len()).map_err(|_| RecordError::TooLong {
                field: "tagged field",
                length: value.len(),
            })?;
            self.uvarint(size);
            self.out.extend_from_slice(&value);
        }
        Ok(())
    }
}

/// The tagged fields of one struct, encoded one by one, since each goes
/// after its size.
#[derive(Default)]
struct TaggedFields {
    fields: Vec<(u32, Vec<u8>)>,
}

impl TaggedFields {
    fn add(
        &mut self,
        tag: u32,
        write: impl FnOnce(&mut Writer) -> Result<(), RecordError>,
    ) -> Result<(), RecordError> {
        // Kafka writes tags in ascending order; our writers must too.
        assert!(
            self.fields.last().is_none_or(|(last, _)| *last < tag),
            "tagged field {tag} added out of order"
        );
        let mut field = Writer::default();
        write(&mut field)?;
        self.fields.push((tag, field.out));
        Ok(())
    }

    fn add_i8(&mut self, tag: u32, value: i8) -> Result<(), RecordError> {
        self.add(tag, |field| {
            field.i8(value);
            Ok(())
        })
    }

    fn add_i32(&mut self, tag: u32, value: i32) -> Result<(), RecordError> {
        self.add(tag, |field| {
            field.i32(value);
            Ok(())
        })
    }

    /// A nullable string, written only when not null (its default).
    fn add_nullable_string(
        &mut self,
        tag: u32,
        field: &'static str,
        text: Option<&str>,
    ) -> Result<(), RecordError> {
        match text {
            Some(text) => self.add(tag, |writer| writer.string(field, text)),
            None => Ok(()),
        }
    }

    /// A nullable list, written only when not null (its default).
    fn add_i32_list(
        &mut self,
        tag: u32,
        field: &'static str,
        list: &Option<Vec<i32>>,
    ) -> Result<(), RecordError> {
        match list {
            Some(list) => self.add(tag, |writer| writer.i32_array(field, list)),
            None => Ok(()),
        }
    }
}

/// Reads Kafka's flexible encoding from `bytes[position..end]`; offsets in
/// errors count from the start of `bytes`, the whole record value.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            position: 0,
            end: bytes.len(),
        }
    }

    fn remaining(&self) -> usize {
        self.end - self.position
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], RecordError> {
        if count > self.remaining() {
            return Err(RecordError::Truncated {
                offset: self.position,
            });
        }
        let taken = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(taken)
    }

    fn array_of<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    /// An unsigned varint of at most 32 bits (5 bytes, the last with at most
    /// 4 bits).
    fn uvarint(&mut self) -> Result<u32, RecordError> {
        let offset = self.position;
        let mut value = 0u32;
        for index in 0..5 {
            let [byte] = self
                .array_of::<1>()
                .map_err(|_| RecordError::Truncated { offset })?;
            if index == 4 && byte > 0x0f {
                return Err(RecordError::VarintTooLong { offset });
            }
            value |= u32::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::VarintTooLong { offset })
    }

    fn bool(&mut self) -> Result<bool, RecordError> {
        Ok(self.array_of::<1>()? != [0])
    }

    fn i8(&mut self) -> Result<i8, RecordError> {
        Ok(i8::from_be_bytes(self.array_of()?))
    }

    fn i16(&mut self) -> Result<i16, RecordError> {
        Ok(i16::from_be_bytes(self.array_of()?))
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array_of()?))
    }

    fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(i32::from_be_bytes(self.array_of()?))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(self.array_of()?))
    }

    fn uuid(&mut self) -> Result<Uuid, RecordError> {
        Ok(Uuid::from_bytes(self.array_of()?))
    }

    /// A compact length: None for null (0), else the varint less one, which
    /// must fit Kafka's `int`.
    fn length(&mut self) -> Result<Option<usize>, RecordError> {
        let offset = self.position;
        let length = match self.uvarint()?.checked_sub(1) {
            None => return Ok(None),
            Some(length) => length,
        };
        if length > i32::MAX as u32 {
            return Err(RecordError::LengthOutOfRange {
                offset,
                length: u64::from(length),
            });
        }
        Ok(Some(length as usize))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        let offset = self.position;
        let Some(length) = self.length()? else {
            return Ok(None);
        };
        if length > STRING_BYTES_MAX {
            return Err(RecordError::LengthOutOfRange {
                offset,
                length: length as u64,
            });
        }
        let bytes = self.take(length)?;
        let text = std::str::from_utf8(bytes).map_err(|_| RecordError::InvalidUtf8 { offset })?;
        Ok(Some(text.to_owned()))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let offset = self.position;
        self.nullable_string()?
            .ok_or(RecordError::NullNotAllowed { offset })
    }

    /// A compact array whose elements each take at least
    /// `element_bytes_min`: a count the bytes left cannot hold is refused
    /// before anything is allocated for it. The loop is bounded by the
    /// bytes too, as every element consumes some.
    fn nullable_array<T>(
        &mut self,
        element_bytes_min: usize,
        mut read: impl FnMut(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<Vec<T>>, RecordError> {
        assert!(element_bytes_min > 0);
        let offset = self.position;
        let Some(count) = self.length()? else {
            return Ok(None);
        };
        if count > self.remaining() / element_bytes_min {
            return Err(RecordError::Truncated { offset });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(read(self)?);
        }
        Ok(Some(items))
    }

    fn array<T>(
        &mut self,
        element_bytes_min: usize,
        read: impl FnMut(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Vec<T>, RecordError> {
        let offset = self.position;
        self.nullable_array(element_bytes_min, read)?
            .ok_or(RecordError::NullNotAllowed { offset })
    }

    fn i32_array(&mut self) -> Result<Vec<i32>, RecordError> {
        self.array(4, Self::i32)
    }

    fn nullable_i32_array(&mut self) -> Result<Option<Vec<i32>>, RecordError> {
        self.nullable_array(4, Self::i32)
    }

    fn uuid_array(&mut self) -> Result<Vec<Uuid>, RecordError> {
        self.array(16, Self::uuid)
    }

    fn nullable_uuid_array(&mut self) -> Result<Option<Vec<Uuid>>, RecordError> {
        self.nullable_array(16, Self::uuid)
    }

    /// The section closing a struct. `read_known(tag, field)` reads the
    /// value of a tag the schema knows from a reader holding exactly its
    /// bytes, and returns false for a tag it does not know, which is
    /// skipped. A known value must fill its bytes: Kafka sizes them exactly.
    /// The loop is bounded by the bytes, as every field takes at least two.
    fn tagged_fields(
        &mut self,
        mut read_known: impl FnMut(u32, &mut Reader<'a>) -> Result<bool, RecordError>,
    ) -> Result<(), RecordError> {
        let count = self.uvarint()?;
        for _ in 0..count {
            let tag = self.uvarint()?;
            let size_offset = self.position;
            let size = self.uvarint()? as usize;
            if size > self.remaining() {
                return Err(RecordError::Truncated {
                    offset: size_offset,
                });
            }
            let mut field = Reader {
                bytes: self.bytes,
                position: self.position,
                end: self.position + size,
            };
            if read_known(tag, &mut field)? && field.position != field.end {
                return Err(RecordError::TaggedFieldSize {
                    tag,
                    offset: size_offset,
                });
            }
            self.position = field.end;
        }
        Ok(())
    }

    fn skip_tagged_fields(&mut self) -> Result<(), RecordError> {
        self.tagged_fields(|_, _| Ok(false))
    }

    fn finish(self) -> Result<(), RecordError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(RecordError::TrailingBytes { count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(byte: u8) -> Uuid {
        Uuid::from_bytes([byte; 16])
    }

    fn be16(value: i16) -> [u8; 2] {
        value.to_be_bytes()
    }

    fn be32(value: i32) -> [u8; 4] {
        value.to_be_bytes()
    }

    fn be64(value: i64) -> [u8; 8] {
        value.to_be_bytes()
    }

    fn decode(bytes: &[u8]) -> MetadataRecord {
        MetadataRecord::decode(bytes).expect("decodes")
    }

    fn encode(record: &MetadataRecord) -> Vec<u8> {
        record.encode().expect("encodes")
    }

    /// One record of every type, every field away from its default.
    fn samples() -> Vec<MetadataRecord> {
        vec![
            RegisterBrokerRecord {
                broker_id: 3,
                is_migrating_zk_broker: true,
                incarnation_id: id(0x11),
                broker_epoch: 1 << 40,
                end_points: vec![
                    BrokerEndpoint {
                        name: "PLAINTEXT".into(),
                        host: "broker-3".into(),
                        port: 65535,
                        security_protocol: 0,
                    },
                    BrokerEndpoint {
                        name: "SSL".into(),
                        host: "broker-3.example".into(),
                        port: 9093,
                        security_protocol: 1,
                    },
                ],
                features: vec![BrokerFeature {
                    name: "metadata.version".into(),
                    min_supported_version: 7,
                    max_supported_version: 21,
                }],
                rack: Some("rack-a".into()),
                fenced: false,
                in_controlled_shutdown: true,
                log_dirs: vec![id(0xd1), id(0xd2)],
            }
            .into(),
            TopicRecord {
                name: "orders".into(),
                topic_id: id(0x22),
            }
            .into(),
            PartitionRecord {
                partition_id: 7,
                topic_id: id(0x22),
                replicas: vec![1, 2, 3],
                isr: vec![1, 3],
                removing_replicas: vec![2],
                adding_replicas: vec![4],
                leader: 3,
                leader_recovery_state: 1,
                leader_epoch: 9,
                partition_epoch: 12,
                directories: vec![id(1), id(2), id(3)],
                eligible_leader_replicas: Some(vec![2]),
                last_known_elr: Some(vec![]),
            }
            .into(),
            ConfigRecord {
                resource_type: 2,
                resource_name: "orders".into(),
                name: "retention.ms".into(),
                value: Some("86400000".into()),
            }
            .into(),
            PartitionChangeRecord {
                partition_id: 7,
                topic_id: id(0x22),
                isr: Some(vec![1]),
                leader: PartitionChangeRecord::LEADER_NONE,
                replicas: Some(vec![1, 4]),
                removing_replicas: Some(vec![]),
                adding_replicas: Some(vec![4]),
                leader_recovery_state: 0,
                directories: Some(vec![id(1), id(4)]),
                eligible_leader_replicas: Some(vec![3]),
                last_known_elr: Some(vec![2]),
            }
            .into(),
            RemoveTopicRecord { topic_id: id(0x22) }.into(),
            FeatureLevelRecord {
                name: "metadata.version".into(),
                feature_level: 21,
            }
            .into(),
            ProducerIdsRecord {
                broker_id: 2,
                broker_epoch: 77,
                next_producer_id: 5000,
            }
            .into(),
            BrokerRegistrationChangeRecord {
                broker_id: 2,
                broker_epoch: 77,
                fenced: BrokerRegistrationChangeRecord::UNFENCED,
                in_controlled_shutdown: 1,
                log_dirs: vec![id(0xd1)],
            }
            .into(),
            BeginTransactionRecord {
                name: Some("create topic orders".into()),
            }
            .into(),
            EndTransactionRecord {}.into(),
            AbortTransactionRecord {
                reason: Some("Controller failover".into()),
            }
            .into(),
        ]
    }

    #[test]
    fn every_record_type_round_trips() {
        let samples = samples();
        let types: Vec<u16> = samples.iter().map(MetadataRecord::record_type).collect();
        assert_eq!(types, [0, 2, 3, 4, 5, 9, 12, 15, 17, 23, 24, 25]);
        for record in samples {
            let bytes = encode(&record);
            assert_eq!(
                bytes[..3],
                [1, record.record_type() as u8, record.version_latest() as u8]
            );
            assert_eq!(decode(&bytes), record);
        }
    }

    #[test]
    fn defaults_round_trip_as_the_schema_defaults() {
        let defaults: Vec<MetadataRecord> = vec![
            RegisterBrokerRecord::default().into(),
            PartitionRecord::default().into(),
            PartitionChangeRecord::default().into(),
            ProducerIdsRecord::default().into(),
        ];
        for record in defaults {
            assert_eq!(decode(&encode(&record)), record);
        }
        // With every tagged field at its default, none is written.
        let change = encode(&PartitionChangeRecord::default().into());
        assert_eq!(change.len(), 3 + 4 + 16 + 1);
        assert_eq!(change.last(), Some(&0));
    }

    #[test]
    fn transaction_records_golden_bytes() {
        // No tagged fields when the name or reason is null, its default.
        let cases: [(MetadataRecord, &[u8]); 4] = [
            (BeginTransactionRecord::default().into(), &[1, 23, 0, 0]),
            (EndTransactionRecord {}.into(), &[1, 24, 0, 0]),
            (AbortTransactionRecord::default().into(), &[1, 25, 0, 0]),
            (
                AbortTransactionRecord {
                    reason: Some("ab".into()),
                }
                .into(),
                // One tagged field: tag 0, size 3, compact string "ab".
                &[1, 25, 0, 1, 0, 3, 3, b'a', b'b'],
            ),
        ];
        for (record, bytes) in cases {
            assert_eq!(encode(&record), bytes);
            assert_eq!(decode(bytes), record);
        }
    }

    #[test]
    fn topic_record_golden_bytes() {
        let topic_id = Uuid::from_bytes(*b"0123456789abcdef");
        let record: MetadataRecord = TopicRecord {
            name: "foo".into(),
            topic_id,
        }
        .into();
        let expected = [
            &[1, 2, 0][..],         // frame version 1, type 2, version 0
            &[4, b'f', b'o', b'o'], // Name: compact string, length 3 + 1
            b"0123456789abcdef",    // TopicId: 16 bytes
            &[0],                   // no tagged fields
        ]
        .concat();
        assert_eq!(encode(&record), expected);
        assert_eq!(decode(&expected), record);
    }

    fn partition_record() -> PartitionRecord {
        PartitionRecord {
            partition_id: 1,
            topic_id: id(0x22),
            replicas: vec![1, 2, 3],
            isr: vec![1, 2],
            removing_replicas: vec![],
            adding_replicas: vec![3],
            leader: 1,
            leader_recovery_state: 1,
            leader_epoch: 5,
            partition_epoch: 7,
            directories: vec![id(0xd1), id(0xd2), id(0xd3)],
            eligible_leader_replicas: Some(vec![2]),
            last_known_elr: Some(vec![]),
        }
    }

    /// PartitionRecord of `partition_record()` at `version`, by hand.
    fn partition_record_bytes(version: u8) -> Vec<u8> {
        let mut bytes = [
            &[1, 3, version][..], // frame version 1, type 3, version
            &be32(1),             // PartitionId
            &[0x22; 16],          // TopicId
            &[4],                 // Replicas: 3 + 1 elements
            &be32(1),
            &be32(2),
            &be32(3),
            &[3], // Isr: 2 + 1
            &be32(1),
            &be32(2),
            &[1], // RemovingReplicas: empty
            &[2], // AddingReplicas: 1 + 1
            &be32(3),
            &be32(1), // Leader (LeaderRecoveryState is tagged)
            &be32(5), // LeaderEpoch
            &be32(7), // PartitionEpoch
        ]
        .concat();
        if version >= 1 {
            // Directories (v1+, not tagged): 3 + 1 uuids.
            bytes.extend_from_slice(&[&[4][..], &[0xd1; 16], &[0xd2; 16], &[0xd3; 16]].concat());
        }
        if version >= 2 {
            bytes.extend_from_slice(&[3]); // 3 tagged fields
        } else {
            bytes.extend_from_slice(&[1]); // 1 tagged field
        }
        bytes.extend_from_slice(&[0, 1, 1]); // tag 0 LeaderRecoveryState, size 1, value 1
        if version >= 2 {
            // tag 1 EligibleLeaderReplicas, size 5: 1 + 1 elements, broker 2
            bytes.extend_from_slice(&[&[1, 5, 2][..], &be32(2)].concat());
            // tag 2 LastKnownElr, size 1: empty (not null)
            bytes.extend_from_slice(&[2, 1, 1]);
        }
        bytes
    }

    #[test]
    fn partition_record_golden_bytes() {
        let record: MetadataRecord = partition_record().into();
        assert_eq!(encode(&record), partition_record_bytes(2));
        assert_eq!(decode(&partition_record_bytes(2)), record);
    }

    #[test]
    fn partition_record_decodes_every_version() {
        let v1 = PartitionRecord {
            eligible_leader_replicas: None,
            last_known_elr: None,
            ..partition_record()
        };
        let v0 = PartitionRecord {
            directories: vec![],
            ..v1.clone()
        };
        for (version, record) in [(0, v0), (1, v1)] {
            let record = MetadataRecord::from(record);
            assert_eq!(decode(&partition_record_bytes(version)), record);
            assert_eq!(
                record.encode_version(u16::from(version)),
                Ok(partition_record_bytes(version))
            );
        }
    }

    fn register_broker_record() -> RegisterBrokerRecord {
        RegisterBrokerRecord {
            broker_id: 1,
            is_migrating_zk_broker: true,
            incarnation_id: id(0x11),
            broker_epoch: 42,
            end_points: vec![BrokerEndpoint {
                name: "PLAINTEXT".into(),
                host: "localhost".into(),
                port: 9092,
                security_protocol: 0,
            }],
            features: vec![BrokerFeature {
                name: "metadata.version".into(),
                min_supported_version: 1,
                max_supported_version: 21,
            }],
            rack: Some("r1".into()),
            fenced: false,
            in_controlled_shutdown: true,
            log_dirs: vec![id(0xd1)],
        }
    }

    /// RegisterBrokerRecord of `register_broker_record()` at `version`, by hand.
    fn register_broker_bytes(version: u8) -> Vec<u8> {
        let mut bytes = [&[1, 0, version][..], &be32(1)].concat(); // frame, type 0, version; BrokerId
        if version >= 2 {
            bytes.push(1); // IsMigratingZkBroker (v2+): true
        }
        bytes.extend_from_slice(
            &[
                &[0x11; 16][..], // IncarnationId
                &be64(42),       // BrokerEpoch
                &[2],            // EndPoints: 1 + 1 elements
                &[10],           //   Name: 9 + 1 bytes
                b"PLAINTEXT",
                &[10], //   Host: 9 + 1 bytes
                b"localhost",
                &[0x23, 0x84], //   Port: 9092, uint16
                &be16(0),      //   SecurityProtocol: PLAINTEXT
                &[0],          //   the endpoint's tagged fields: none
                &[2],          // Features: 1 + 1 elements
                &[17],         //   Name: 16 + 1 bytes
                b"metadata.version",
                &be16(1),         //   MinSupportedVersion
                &be16(21),        //   MaxSupportedVersion
                &[0],             //   the feature's tagged fields: none
                &[3, b'r', b'1'], // Rack: 2 + 1 bytes
                &[0],             // Fenced: false
            ]
            .concat(),
        );
        if version >= 1 {
            bytes.push(1); // InControlledShutdown (v1+): true
        }
        if version >= 3 {
            // 1 tagged field: tag 0 LogDirs, size 17: 1 + 1 uuids.
            bytes.extend_from_slice(&[&[1, 0, 17, 2][..], &[0xd1; 16]].concat());
        } else {
            bytes.push(0); // no tagged fields
        }
        bytes
    }

    #[test]
    fn register_broker_record_golden_bytes() {
        let record: MetadataRecord = register_broker_record().into();
        assert_eq!(encode(&record), register_broker_bytes(3));
        assert_eq!(decode(&register_broker_bytes(3)), record);
    }

    #[test]
    fn register_broker_record_decodes_every_version() {
        let v2 = RegisterBrokerRecord {
            log_dirs: vec![],
            ..register_broker_record()
        };
        let v1 = RegisterBrokerRecord {
            is_migrating_zk_broker: false,
            ..v2.clone()
        };
        let v0 = RegisterBrokerRecord {
            in_controlled_shutdown: false,
            ..v1.clone()
        };
        for (version, record) in [(0, v0), (1, v1), (2, v2)] {
            let record = MetadataRecord::from(record);
            assert_eq!(decode(&register_broker_bytes(version)), record);
            assert_eq!(
                record.encode_version(u16::from(version)),
                Ok(register_broker_bytes(version))
            );
        }
    }

    fn partition_change_record() -> PartitionChangeRecord {
        PartitionChangeRecord {
            partition_id: 3,
            topic_id: id(0x22),
            isr: Some(vec![1, 2]),
            leader: 2,
            replicas: None,
            removing_replicas: Some(vec![]),
            adding_replicas: None,
            leader_recovery_state: 1,
            directories: Some(vec![id(0xd1), id(0xd2)]),
            eligible_leader_replicas: Some(vec![3]),
            last_known_elr: None,
        }
    }

    fn partition_change_bytes(version: u8) -> Vec<u8> {
        let count = [4, 5, 6][usize::from(version)];
        let mut bytes = [
            &[1, 5, version][..], // frame version 1, type 5, version
            &be32(3),             // PartitionId
            &[0x22; 16],          // TopicId
            &[count],             // tagged fields, in tag order:
            &[0, 9, 3],           // tag 0 Isr, size 9: 2 + 1 elements
            &be32(1),
            &be32(2),
            &[1, 4], // tag 1 Leader, size 4
            &be32(2),
            &[3, 1, 1], // tag 3 RemovingReplicas, size 1: empty
            &[5, 1, 1], // tag 5 LeaderRecoveryState, size 1: 1
        ]
        .concat();
        if version >= 2 {
            // tag 6 EligibleLeaderReplicas, size 5: 1 + 1 elements
            bytes.extend_from_slice(&[&[6, 5, 2][..], &be32(3)].concat());
        }
        if version >= 1 {
            // tag 8 Directories, size 33: 2 + 1 uuids
            bytes.extend_from_slice(&[&[8, 33, 3][..], &[0xd1; 16], &[0xd2; 16]].concat());
        }
        bytes
    }

    #[test]
    fn partition_change_record_golden_bytes_and_every_version() {
        let v2 = partition_change_record();
        let v1 = PartitionChangeRecord {
            eligible_leader_replicas: None,
            ..v2.clone()
        };
        let v0 = PartitionChangeRecord {
            directories: None,
            ..v1.clone()
        };
        for (version, record) in [(0, v0), (1, v1), (2, v2)] {
            let record = MetadataRecord::from(record);
            assert_eq!(decode(&partition_change_bytes(version)), record);
            assert_eq!(
                record.encode_version(u16::from(version)),
                Ok(partition_change_bytes(version))
            );
        }
        assert_eq!(
            encode(&partition_change_record().into()),
            partition_change_bytes(2)
        );
    }

    #[test]
    fn broker_registration_change_record_decodes_every_version() {
        let fenced = [&[0, 1][..], &[0xff]].concat(); // tag 0 Fenced, size 1: -1, unfenced
        let shutdown = [1, 1, 1]; // tag 1 InControlledShutdown, size 1: 1
        let log_dirs = [&[2, 17, 2][..], &[0xd1; 16]].concat(); // tag 2 LogDirs: 1 + 1 uuids
        let head = |version: u8, count: u8| {
            [&[1, 17, version][..], &be32(2), &be64(77), &[count]].concat()
        };
        let full = BrokerRegistrationChangeRecord {
            broker_id: 2,
            broker_epoch: 77,
            fenced: BrokerRegistrationChangeRecord::UNFENCED,
            in_controlled_shutdown: 1,
            log_dirs: vec![id(0xd1)],
        };
        let cases = [
            (0u8, [head(0, 1), fenced.clone()].concat()),
            (1, [head(1, 2), fenced.clone(), shutdown.to_vec()].concat()),
            (
                2,
                [head(2, 3), fenced, shutdown.to_vec(), log_dirs].concat(),
            ),
        ];
        for (version, bytes) in cases {
            let record = MetadataRecord::from(BrokerRegistrationChangeRecord {
                in_controlled_shutdown: if version >= 1 { 1 } else { 0 },
                log_dirs: if version >= 2 {
                    full.log_dirs.clone()
                } else {
                    vec![]
                },
                ..full.clone()
            });
            assert_eq!(decode(&bytes), record);
            assert_eq!(record.encode_version(u16::from(version)), Ok(bytes));
        }
    }

    #[test]
    fn single_version_records_golden_bytes() {
        let cases: [(MetadataRecord, Vec<u8>); 5] = [
            (
                ConfigRecord {
                    resource_type: 2,
                    resource_name: "t".into(),
                    name: "k".into(),
                    value: None,
                }
                .into(),
                // type 4; ResourceType 2; ResourceName "t"; Name "k"; Value null; no tags
                vec![1, 4, 0, 2, 2, b't', 2, b'k', 0, 0],
            ),
            (
                RemoveTopicRecord { topic_id: id(0x22) }.into(),
                [&[1, 9, 0][..], &[0x22; 16], &[0]].concat(),
            ),
            (
                FeatureLevelRecord {
                    name: "mv".into(),
                    feature_level: 21,
                }
                .into(),
                [&[1, 12, 0, 3, b'm', b'v'][..], &be16(21), &[0]].concat(),
            ),
            (
                ProducerIdsRecord {
                    broker_id: 2,
                    broker_epoch: 77,
                    next_producer_id: 5000,
                }
                .into(),
                [&[1, 15, 0][..], &be32(2), &be64(77), &be64(5000), &[0]].concat(),
            ),
            (
                TopicRecord {
                    name: String::new(),
                    topic_id: id(0),
                }
                .into(),
                [&[1, 2, 0, 1][..], &[0; 16], &[0]].concat(),
            ),
        ];
        for (record, bytes) in cases {
            assert_eq!(encode(&record), bytes);
            assert_eq!(decode(&bytes), record);
        }
    }

    fn topic_bytes(tagged: &[u8]) -> Vec<u8> {
        [&[1, 2, 0, 2, b't'][..], &[0x22; 16], tagged].concat()
    }

    #[test]
    fn framing_errors() {
        let topic = topic_bytes(&[0]);
        assert!(MetadataRecord::decode(&topic).is_ok());
        let mut frame_zero = topic.clone();
        frame_zero[0] = 0;
        assert_eq!(
            MetadataRecord::decode(&frame_zero),
            Err(RecordError::UnknownFrameVersion(0))
        );
        let mut fence_broker = topic.clone();
        fence_broker[1] = 7;
        assert_eq!(
            MetadataRecord::decode(&fence_broker),
            Err(RecordError::UnknownType(7))
        );
        let mut version_one = topic.clone();
        version_one[2] = 1;
        assert_eq!(
            MetadataRecord::decode(&version_one),
            Err(RecordError::UnsupportedVersion {
                record_type: 2,
                version: 1
            })
        );
        let trailing = [&topic[..], &[0]].concat();
        assert_eq!(
            MetadataRecord::decode(&trailing),
            Err(RecordError::TrailingBytes { count: 1 })
        );
        assert_eq!(
            MetadataRecord::decode(&[]),
            Err(RecordError::Truncated { offset: 0 })
        );
        assert_eq!(
            MetadataRecord::decode(&[1, 0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(RecordError::VarintTooLong { offset: 1 })
        );
    }

    #[test]
    fn tagged_fields_unknown_skipped_known_checked() {
        let plain = decode(&topic_bytes(&[0]));
        // An unknown tag 9 of 3 bytes is skipped.
        assert_eq!(decode(&topic_bytes(&[1, 9, 3, 0xaa, 0xbb, 0xcc])), plain);
        // One whose size runs past the end is truncated.
        assert!(matches!(
            MetadataRecord::decode(&topic_bytes(&[1, 9, 4, 0xaa])),
            Err(RecordError::Truncated { .. })
        ));
        // PartitionRecord v0 with tag 1 (ELR, v2+ only): refused, as Kafka does.
        let mut v0 = partition_record_bytes(0);
        let tags_at = v0.len() - 4;
        v0.truncate(tags_at);
        v0.extend_from_slice(&[1, 1, 1, 1]);
        assert_eq!(
            MetadataRecord::decode(&v0),
            Err(RecordError::TagNotInVersion { tag: 1, version: 0 })
        );
        // LeaderRecoveryState with a size of 2: one byte too many.
        v0.truncate(tags_at);
        v0.extend_from_slice(&[1, 0, 2, 1, 0]);
        assert_eq!(
            MetadataRecord::decode(&v0),
            Err(RecordError::TaggedFieldSize {
                tag: 0,
                offset: tags_at + 2
            })
        );
    }

    #[test]
    fn lengths_out_of_range_are_refused_before_allocating() {
        // Name of 0x8000 bytes: varint 0x8001 = [0x81, 0x80, 0x02].
        let long_name = [
            &[1, 2, 0, 0x81, 0x80, 0x02][..],
            &[b'a'; 0x8000],
            &[0x22; 16],
            &[0],
        ]
        .concat();
        assert_eq!(
            MetadataRecord::decode(&long_name),
            Err(RecordError::LengthOutOfRange {
                offset: 3,
                length: 0x8000
            })
        );
        assert_eq!(
            MetadataRecord::decode(&[1, 2, 0, 0]),
            Err(RecordError::NullNotAllowed { offset: 3 })
        );
        assert_eq!(
            MetadataRecord::decode(&[1, 2, 0, 2, 0xff]),
            Err(RecordError::InvalidUtf8 { offset: 3 })
        );
        // Replicas claiming 2^28 elements, beyond Kafka's int: refused.
        let head = [&[1, 3, 0][..], &be32(0), &[0x22; 16]].concat();
        let huge = [&head[..], &[0xff, 0xff, 0xff, 0xff, 0x0f]].concat();
        assert_eq!(
            MetadataRecord::decode(&huge),
            Err(RecordError::LengthOutOfRange {
                offset: 23,
                length: u64::from(u32::MAX - 1)
            })
        );
        // Claiming 2^30 elements with 8 bytes left: truncated, nothing reserved.
        let many = [&head[..], &[0x81, 0x80, 0x80, 0x80, 0x04], &[0; 8]].concat();
        assert_eq!(
            MetadataRecord::decode(&many),
            Err(RecordError::Truncated { offset: 23 })
        );
    }

    #[test]
    fn encode_refuses_what_the_version_cannot_carry() {
        let record: MetadataRecord = partition_record().into();
        assert_eq!(
            record.encode_version(1),
            Err(RecordError::FieldNotInVersion {
                field: "EligibleLeaderReplicas",
                version: 1
            })
        );
        assert_eq!(
            record.encode_version(3),
            Err(RecordError::UnsupportedVersion {
                record_type: 3,
                version: 3
            })
        );
        let long: MetadataRecord = TopicRecord {
            name: "a".repeat(STRING_BYTES_MAX + 1),
            topic_id: id(0),
        }
        .into();
        assert_eq!(
            long.encode(),
            Err(RecordError::TooLong {
                field: "Name",
                length: STRING_BYTES_MAX + 1
            })
        );
        let longest: MetadataRecord = TopicRecord {
            name: "a".repeat(STRING_BYTES_MAX),
            topic_id: id(0),
        }
        .into();
        assert_eq!(decode(&encode(&longest)), longest);
    }

    fn uuid() -> impl Strategy<Value = Uuid> {
        any::<[u8; 16]>().prop_map(Uuid::from_bytes)
    }

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn ids() -> impl Strategy<Value = Vec<i32>> {
        proptest::collection::vec(any::<i32>(), 0..5)
    }

    fn uuids() -> impl Strategy<Value = Vec<Uuid>> {
        proptest::collection::vec(uuid(), 0..3)
    }

    fn register_broker() -> impl Strategy<Value = MetadataRecord> {
        let endpoint = (text(), text(), any::<u16>(), any::<i16>()).prop_map(
            |(name, host, port, security_protocol)| BrokerEndpoint {
                name,
                host,
                port,
                security_protocol,
            },
        );
        let feature =
            (text(), any::<i16>(), any::<i16>()).prop_map(|(name, min, max)| BrokerFeature {
                name,
                min_supported_version: min,
                max_supported_version: max,
            });
        (
            (any::<i32>(), any::<bool>(), uuid(), any::<i64>()),
            proptest::collection::vec(endpoint, 0..3),
            proptest::collection::vec(feature, 0..3),
            proptest::option::of(text()),
            (any::<bool>(), any::<bool>(), uuids()),
        )
            .prop_map(|(head, end_points, features, rack, tail)| {
                RegisterBrokerRecord {
                    broker_id: head.0,
                    is_migrating_zk_broker: head.1,
                    incarnation_id: head.2,
                    broker_epoch: head.3,
                    end_points,
                    features,
                    rack,
                    fenced: tail.0,
                    in_controlled_shutdown: tail.1,
                    log_dirs: tail.2,
                }
                .into()
            })
    }

    fn partition() -> impl Strategy<Value = MetadataRecord> {
        (
            (any::<i32>(), uuid(), ids(), ids(), ids(), ids()),
            (any::<i32>(), any::<i8>(), any::<i32>(), any::<i32>()),
            (
                uuids(),
                proptest::option::of(ids()),
                proptest::option::of(ids()),
            ),
        )
            .prop_map(|(lists, numbers, tail)| {
                PartitionRecord {
                    partition_id: lists.0,
                    topic_id: lists.1,
                    replicas: lists.2,
                    isr: lists.3,
                    removing_replicas: lists.4,
                    adding_replicas: lists.5,
                    leader: numbers.0,
                    leader_recovery_state: numbers.1,
                    leader_epoch: numbers.2,
                    partition_epoch: numbers.3,
                    directories: tail.0,
                    eligible_leader_replicas: tail.1,
                    last_known_elr: tail.2,
                }
                .into()
            })
    }

    fn partition_change() -> impl Strategy<Value = MetadataRecord> {
        let maybe_ids = || proptest::option::of(ids());
        (
            (any::<i32>(), uuid(), any::<i32>(), any::<i8>()),
            (maybe_ids(), maybe_ids(), maybe_ids(), maybe_ids()),
            (proptest::option::of(uuids()), maybe_ids(), maybe_ids()),
        )
            .prop_map(|(head, lists, tail)| {
                PartitionChangeRecord {
                    partition_id: head.0,
                    topic_id: head.1,
                    leader: head.2,
                    leader_recovery_state: head.3,
                    isr: lists.0,
                    replicas: lists.1,
                    removing_replicas: lists.2,
                    adding_replicas: lists.3,
                    directories: tail.0,
                    eligible_leader_replicas: tail.1,
                    last_known_elr: tail.2,
                }
                .into()
            })
    }

    fn record() -> impl Strategy<Value = MetadataRecord> {
        prop_oneof![
            register_broker(),
            (text(), uuid()).prop_map(|(name, topic_id)| TopicRecord { name, topic_id }.into()),
            partition(),
            (any::<i8>(), text(), text(), proptest::option::of(text())).prop_map(
                |(resource_type, resource_name, name, value)| ConfigRecord {
                    resource_type,
                    resource_name,
                    name,
                    value,
                }
                .into()
            ),
            partition_change(),
            uuid().prop_map(|topic_id| RemoveTopicRecord { topic_id }.into()),
            (text(), any::<i16>()).prop_map(|(name, feature_level)| FeatureLevelRecord {
                name,
                feature_level
            }
            .into()),
            (any::<i32>(), any::<i64>(), any::<i64>()).prop_map(
                |(broker_id, broker_epoch, next)| {
                    ProducerIdsRecord {
                        broker_id,
                        broker_epoch,
                        next_producer_id: next,
                    }
                    .into()
                }
            ),
            (
                any::<i32>(),
                any::<i64>(),
                any::<i8>(),
                any::<i8>(),
                uuids()
            )
                .prop_map(
                    |(broker_id, broker_epoch, fenced, in_controlled_shutdown, log_dirs)| {
                        BrokerRegistrationChangeRecord {
                            broker_id,
                            broker_epoch,
                            fenced,
                            in_controlled_shutdown,
                            log_dirs,
                        }
                        .into()
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip_at_every_version_that_carries_them(record in record()) {
            prop_assert_eq!(&decode(&encode(&record)), &record);
            for version in 0..=record.version_latest() {
                match record.encode_version(version) {
                    Ok(bytes) => prop_assert_eq!(&decode(&bytes), &record),
                    Err(RecordError::FieldNotInVersion { .. }) => {}
                    Err(other) => prop_assert!(false, "version {}: {}", version, other),
                }
            }
        }

        #[test]
        fn every_truncation_is_an_error(record in record()) {
            let bytes = encode(&record);
            for length in 0..bytes.len() {
                prop_assert!(MetadataRecord::decode(&bytes[..length]).is_err(), "length {}", length);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = MetadataRecord::decode(&bytes);
        }

        #[test]
        fn arbitrary_bodies_never_panic(
            record_type in prop::sample::select(vec![0u8, 2, 3, 4, 5, 9, 12, 15, 17]),
            version in 0u8..4,
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = MetadataRecord::decode(&[&[1, record_type, version][..], &body].concat());
        }

        #[test]
        fn corrupted_records_never_panic(
            record in record(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = encode(&record);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            if let Ok(decoded) = MetadataRecord::decode(&bytes) {
                // Whatever decodes must encode again.
                prop_assert!(decoded.encode().is_ok());
            }
        }
    }
}
