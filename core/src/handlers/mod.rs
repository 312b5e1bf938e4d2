//! Request handlers, one module per API family. A handler decodes its
//! request body, acts on the broker's state, and returns a `Pending`: the
//! reply and what it waits for. Handlers never see connections, reply
//! slots or encoded frames; the node owns those, and releases each reply
//! when its wait is over, in request order per connection.

mod cluster;
pub mod fetch;
mod group;
mod offsets;
mod produce;
mod topics;
pub use topics::CreateWait;
mod txn;
pub use txn::TXN_ADD_HOLD_MS_MAX;
mod txn_markers;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, FetchRequest};
use kafka_protocol::ResponseError;

use crate::broker::cluster::Ticket;
use crate::broker::{Broker, Written};
use crate::group::Token;
use crate::storage::Storage;
use crate::types::{Now, TopicPartition};
use crate::wire::versions::api_versions_response;
use crate::wire::{decode, Reply, ReplyHeader};

pub use group::coordinator_reply;

/// What a handled request answers, and when.
#[derive(Debug)]
pub enum Pending {
    /// No reply at all (a produce with acks=0).
    Nothing,
    /// Answer now.
    Now(Reply),
    /// Answer `reply` once `wait` holds; should the wait fail (a sync
    /// failed, the partition went away), answer `reply.unsynced()`.
    After { wait: Wait, reply: Box<Reply> },
    /// The group coordinator answers later, for this token.
    Coordinator(Token),
    /// A long-polling fetch, answered when enough is readable or at its deadline.
    Fetch(ParkedFetch),
    /// An AddPartitionsToTxn held while the transaction before it
    /// completes (see `txn`).
    TxnAdd(HeldTxnAdd),
    /// A transactional write that a transaction coordinator on another
    /// broker must confirm first (`broker::verify`): handled again, with the
    /// same token, once the verdicts are in.
    Verify(crate::broker::verify::VerifyRequest),
    /// A CreateTopics or CreatePartitions whose creations the node's next
    /// steps carry out (`broker::creations`): answered once they all ended.
    Creating(CreateWait),
}

/// An AddPartitionsToTxn that came while its producer's last transaction
/// was still writing its markers: handled again once that one completed,
/// or at `deadline_ms` (monotonic) whatever its state.
#[derive(Debug)]
pub struct HeldTxnAdd {
    pub transactional_id: String,
    pub request: Box<kafka_protocol::messages::AddPartitionsToTxnRequest>,
    pub deadline_ms: i64,
}

/// A held AddPartitionsToTxn handled again: its answer now, or once its
/// write is durable. It is not held a second time.
pub fn add_partitions_after_hold<S: Storage>(
    broker: &mut Broker<S>,
    now: Now,
    version: i16,
    held: HeldTxnAdd,
) -> Pending {
    txn::add_partitions(broker, now, version, *held.request, false)
}

/// What a reply waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Every change up to this write sequence is durable.
    Durable(u64),
    /// Each partition's high watermark reached its offset (acks=all).
    HighWatermarks(Vec<HighWatermark>),
    /// The controller quorum committed the change with this ticket.
    Committed(u64),
}

pub use crate::broker::replicas::HighWatermark;

/// A fetch waiting for data.
#[derive(Debug)]
pub struct ParkedFetch {
    pub request: Box<FetchRequest>,
    pub deadline_ms: i64,
    /// The partitions it reads: only a move of one of them wakes it.
    pub partitions: Vec<TopicPartition>,
}

/// How a wait stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    Waiting,
    Done,
    Failed,
}

impl Wait {
    /// When a wait for high watermarks gives up: its produce's timeout.
    pub fn deadline_ms(&self) -> Option<i64> {
        match self {
            Wait::HighWatermarks(marks) => marks.iter().filter_map(|m| m.deadline_ms).min(),
            _ => None,
        }
    }

    /// The partitions whose high watermark has not reached their mark yet.
    pub fn unreached<S: Storage>(&self, broker: &Broker<S>) -> Vec<(String, [u8; 16], i32)> {
        let Wait::HighWatermarks(marks) = self else {
            return Vec::new();
        };
        marks
            .iter()
            .filter_map(|mark| {
                let tp = &mark.partition;
                let topic = broker.topics.get(&tp.topic)?;
                let held = broker.topics.partition(&tp.topic, tp.partition)?;
                (broker.high_watermark(held) < mark.offset)
                    .then(|| (tp.topic.clone(), topic.id, tp.partition))
            })
            .collect()
    }

    /// The partitions of an acks=all wait whose leader's maximal ISR is
    /// now smaller than `min.insync.replicas`. Kafka's
    /// `Partition.checkEnoughReplicasReachOffset` answers those
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND once the high watermark reached
    /// them: the ISR shrank after the records were appended (the high
    /// watermark does not move while it is too small, so they got there
    /// before the shrink). Only waits of a produce in a cluster count.
    pub fn under_min_insync<S: Storage>(&self, broker: &Broker<S>) -> Vec<(String, [u8; 16], i32)> {
        let Wait::HighWatermarks(marks) = self else {
            return Vec::new();
        };
        marks
            .iter()
            .filter(|mark| mark.deadline_ms.is_some() && mark.leader_epoch.is_some())
            .filter_map(|mark| {
                let tp = &mark.partition;
                let topic = broker.topics.get(&tp.topic)?;
                let leading = broker
                    .topics
                    .partition(&tp.topic, tp.partition)?
                    .role
                    .leading()?;
                (!leading.enough_replicas_after_append())
                    .then(|| (tp.topic.clone(), topic.id, tp.partition))
            })
            .collect()
    }

    pub fn state<S: Storage>(&self, broker: &Broker<S>) -> WaitState {
        match self {
            Wait::Durable(seq) if broker.durability.is_durable(*seq) => WaitState::Done,
            Wait::Durable(_) if broker.storage_offline() => WaitState::Failed,
            Wait::Durable(_) => WaitState::Waiting,
            Wait::Committed(ticket) => {
                let Some(cluster) = &broker.cluster else {
                    return WaitState::Failed;
                };
                match cluster.ticket(*ticket) {
                    Ticket::Committed => WaitState::Done,
                    Ticket::Failed => WaitState::Failed,
                    Ticket::Queued | Ticket::Proposed { .. } => WaitState::Waiting,
                }
            }
            Wait::HighWatermarks(marks) => {
                let mut state = WaitState::Done;
                for mark in marks {
                    let held = broker
                        .topics
                        .partition(&mark.partition.topic, mark.partition.partition)
                        .filter(|p| p.incarnation == mark.incarnation);
                    let led = |p: &crate::topics::Partition| match mark.leader_epoch {
                        None => true,
                        Some(epoch) => p.role.leading().is_some_and(|l| l.leader_epoch == epoch),
                    };
                    match held {
                        None => return WaitState::Failed,
                        Some(p) if !led(p) => return WaitState::Failed,
                        Some(p) if broker.high_watermark(p) >= mark.offset => {}
                        Some(_) if broker.storage_offline() => return WaitState::Failed,
                        Some(_) => state = WaitState::Waiting,
                    }
                }
                state
            }
        }
    }
}

impl Pending {
    /// `reply`, once what `written` names is durable or committed.
    pub fn after_written(written: Option<Written>, reply: Reply) -> Pending {
        match written {
            None => Pending::Now(reply),
            Some(Written::Durable(seq)) => Pending::after_durable(Some(seq), reply),
            Some(Written::Committed(ticket)) => Pending::After {
                wait: Wait::Committed(ticket),
                reply: Box::new(reply),
            },
        }
    }

    /// `reply`, once a coordinator's write is durable here and, when its
    /// partition has followers, under the high watermark.
    pub fn after_group_write(written: Option<crate::broker::GroupWrite>, reply: Reply) -> Pending {
        match written {
            None => Pending::Now(reply),
            Some(written) if written.marks.is_empty() => {
                Pending::after_durable(Some(written.seq), reply)
            }
            Some(written) => Pending::After {
                wait: Wait::HighWatermarks(written.marks),
                reply: Box::new(reply),
            },
        }
    }

    /// `reply`, after `seq` is durable when there is a sequence to wait for.
    pub fn after_durable(seq: Option<u64>, reply: Reply) -> Pending {
        match seq {
            None => Pending::Now(reply),
            Some(seq) => Pending::After {
                wait: Wait::Durable(seq),
                reply: Box::new(reply),
            },
        }
    }
}

/// What a request brings besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: Now,
    pub header: ReplyHeader,
    pub client_id: &'a str,
    /// The peer of the connection, as Kafka writes a client host.
    pub client_host: &'a str,
    /// Names this request's answer if the coordinator gives it later.
    pub token: Token,
}

/// The outcome of a handler: an error closes the connection.
pub type Handled = Result<Pending, String>;

/// Answers at once.
pub(crate) fn now(reply: Reply) -> Handled {
    Ok(Pending::Now(reply))
}

pub(crate) fn code(error: ResponseError) -> i16 {
    error.code()
}

/// A cluster node's ApiVersions answer names features as a Kafka broker's
/// does: metadata.version supported from 3.0-IV1 to the level Sluice
/// writes, the finalized features of its metadata image, and as their
/// epoch the offset of the last record the image applied (-1 before any).
/// Fields of versions 3 on; older versions drop them when encoded. A
/// single node has no metadata log, and names none.
fn with_features(
    response: ApiVersionsResponse,
    image: &crate::image::MetadataImage,
) -> ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::{
        FinalizedFeatureKey, SupportedFeatureKey,
    };
    use kafka_protocol::protocol::StrBytes;
    let supported = SupportedFeatureKey::default()
        .with_name(StrBytes::from_static_str(
            crate::image::METADATA_VERSION_FEATURE,
        ))
        .with_min_version(crate::image::METADATA_VERSION_LEVEL_MIN)
        .with_max_version(crate::image::METADATA_VERSION_LEVEL_WRITTEN);
    let finalized = image
        .features()
        .map(|(name, level)| {
            FinalizedFeatureKey::default()
                .with_name(StrBytes::from_string(name.to_string()))
                .with_min_version_level(level)
                .with_max_version_level(level)
        })
        .collect();
    response
        .with_supported_features(vec![supported])
        .with_finalized_features_epoch(image.last_offset().unwrap_or(-1))
        .with_finalized_features(finalized)
}

/// Runs the handler of a request whose header was parsed.
pub fn dispatch<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    body: &mut Bytes,
) -> Handled {
    let version = context.header.version;
    match context.header.api_key {
        ApiKey::ApiVersions => {
            let response = api_versions_response(0);
            let response = match &broker.cluster {
                Some(cluster) => with_features(response, &cluster.image),
                None => response,
            };
            Ok(Pending::Now(Reply::ApiVersions(response)))
        }
        ApiKey::Metadata => cluster::metadata(broker, context, decode(body, version)?),
        ApiKey::DescribeCluster => {
            cluster::describe_cluster(broker, context, decode(body, version)?)
        }
        ApiKey::DescribeConfigs => cluster::describe_configs(broker, decode(body, version)?),
        ApiKey::InitProducerId => {
            let request: kafka_protocol::messages::InitProducerIdRequest = decode(body, version)?;
            match request.transactional_id.as_ref().map(|id| id.0.to_string()) {
                Some(id) if !id.is_empty() => txn::init_producer_id(broker, context, request, id),
                _ => cluster::init_producer_id(broker),
            }
        }
        ApiKey::AddPartitionsToTxn => {
            txn::add_partitions_to_txn(broker, context, decode(body, version)?)
        }
        ApiKey::AddOffsetsToTxn => txn::add_offsets_to_txn(broker, context, decode(body, version)?),
        ApiKey::EndTxn => txn::end_txn(broker, context, decode(body, version)?),
        ApiKey::DescribeTransactions => txn::describe_transactions(broker, decode(body, version)?),
        ApiKey::ListTransactions => txn::list_transactions(broker, context, decode(body, version)?),
        ApiKey::Produce => produce::produce(broker, context, decode(body, version)?),
        ApiKey::Fetch => fetch::fetch(broker, context, decode(body, version)?),
        ApiKey::ListOffsets => fetch::list_offsets(broker, context, decode(body, version)?),
        ApiKey::OffsetForLeaderEpoch => {
            fetch::offset_for_leader_epoch(broker, decode(body, version)?)
        }
        ApiKey::CreateTopics => topics::create_topics(broker, decode(body, version)?),
        ApiKey::DeleteTopics => topics::delete_topics(broker, decode(body, version)?),
        ApiKey::CreatePartitions => topics::create_partitions(broker, decode(body, version)?),
        ApiKey::FindCoordinator => group::find_coordinator(broker, context, decode(body, version)?),
        ApiKey::JoinGroup => group::join_group(broker, context, decode(body, version)?),
        ApiKey::SyncGroup => group::sync_group(broker, context, decode(body, version)?),
        ApiKey::Heartbeat => group::heartbeat(broker, context, decode(body, version)?),
        ApiKey::LeaveGroup => group::leave_group(broker, context, decode(body, version)?),
        ApiKey::ListGroups => group::list_groups(broker, context, decode(body, version)?),
        ApiKey::DescribeGroups => group::describe_groups(broker, context, decode(body, version)?),
        ApiKey::DeleteGroups => group::delete_groups(broker, context, decode(body, version)?),
        ApiKey::OffsetCommit => offsets::offset_commit(broker, context, decode(body, version)?),
        ApiKey::OffsetFetch => offsets::offset_fetch(broker, context, decode(body, version)?),
        ApiKey::TxnOffsetCommit => {
            offsets::txn_offset_commit(broker, context, decode(body, version)?)
        }
        ApiKey::WriteTxnMarkers if version == 1 => {
            txn_markers::write_txn_markers(broker, context, decode(body, version)?)
        }
        ApiKey::DescribeProducers if version == 0 => {
            txn_markers::describe_producers(broker, decode(body, version)?)
        }
        other => Err(format!("api {other:?} is not served")),
    }
}
