//! The node as a broker of a cluster, and as its active controller.
//!
//! Every node of a quorum is a broker too (combined roles). As a broker it
//! registers with the active controller (the quorum's leader) and then
//! heartbeats every `broker.heartbeat.interval.ms`, reporting how far it
//! applied the metadata log; it is unfenced once caught up to its own
//! registration. As the active controller, a node turns registrations and
//! heartbeats into metadata records (RegisterBrokerRecord,
//! BrokerRegistrationChangeRecord), answers only once they are committed,
//! and fences a broker silent for `broker.session.timeout.ms`.
//!
//! Every node applies committed records, in order, to its metadata image
//! (`Broker.cluster`); the controller decides on that committed image,
//! never on records still uncommitted (one change per broker in flight).
//!
//! A change of more than one record (a topic with its configs and
//! partitions, a fencing with the leaderships it moves) is proposed as a
//! metadata transaction (KIP-868): BeginTransactionRecord, the records,
//! EndTransactionRecord, appended together. Each record is an entry of its
//! own in the Raft log, so a leader change can keep only the start of a
//! change (the new leader's log may end inside it); nodes hold a
//! transaction's records back until its end, and a new active controller
//! that finds one never ended aborts it (AbortTransactionRecord) before it
//! proposes anything else, as Kafka's controller does on activation.
//!
//! A broker's request to the controller goes over the peer link when the
//! leader is another node, and straight to this node's controller when it
//! leads; both wait for the same commit.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::{
    alter_partition_response, broker_registration_request, create_partitions_response,
    create_topics_request, create_topics_response, delete_topics_response,
    AllocateProducerIdsRequest, AllocateProducerIdsResponse, AlterPartitionRequest,
    AlterPartitionResponse, ApiKey, BrokerHeartbeatRequest, BrokerHeartbeatResponse, BrokerId,
    BrokerRegistrationRequest, BrokerRegistrationResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, ProducerId, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{Node, SentRequest};
use crate::broker::cluster::Ticket;
use crate::broker::{Broker, ClusterView};
use crate::config::Mutation;
use crate::group::Token;
use crate::handlers::WaitState;
use crate::image::{LeaderRecoveryState, METADATA_VERSION_FEATURE, METADATA_VERSION_LEVEL_WRITTEN};
use crate::metadata_records::{
    AbortTransactionRecord, BeginTransactionRecord, BrokerEndpoint, BrokerRegistrationChangeRecord,
    EndTransactionRecord, FeatureLevelRecord, MetadataRecord, PartitionChangeRecord,
    ProducerIdsRecord, RegisterBrokerRecord,
};
use crate::raft::{Record, Role};
use crate::session::{ConnectionId, Slot, SlotState};
use crate::storage::Storage;
use crate::timer::Timer;
use crate::types::{Channel, NodeId, Now};
use crate::wire::reply::decode_response;
use crate::wire::{encode_reply_body, Reply, ReplyHeader};

/// The versions a broker sends: BrokerRegistration v3 (Kafka 3.7's, with
/// log directories, which Sluice leaves empty) and BrokerHeartbeat v1.
const REGISTRATION_VERSION: i16 = 3;
const HEARTBEAT_VERSION: i16 = 1;
const REGISTRATION_VERSIONS: (i16, i16) = (0, 4);
const HEARTBEAT_VERSIONS: (i16, i16) = (0, 1);
/// AlterPartition with topic ids (v2) and ISR members with epochs (v3).
const ALTER_PARTITION_VERSIONS: (i16, i16) = (2, 3);
/// A broker retries a refused or lost request to the controller after this.
const CONTROLLER_RETRY_MS: i64 = 100;
/// A request to the controller with no answer for this long is taken as lost.
const CONTROLLER_REQUEST_MS: i64 = 3_000;
const LISTENER_NAME: &str = "PLAINTEXT";
/// The CreateTopics version a broker asks the controller with.
const FORWARD_CREATE_TOPICS_VERSION: i16 = 7;

/// The broker side: this node's registration with the controller.
#[derive(Debug)]
pub(super) struct Lifecycle {
    incarnation_id: Uuid,
    registered: Option<Registered>,
    /// When to send the next registration or heartbeat.
    pub(super) next_ms: i64,
    /// A request sent and not answered, until this deadline.
    in_flight_until: Option<i64>,
    /// When the request in flight was sent.
    in_flight_sent_ms: Option<i64>,
    /// Until when this broker may act on the roles its metadata image
    /// gives it: the send time of the last heartbeat the controller
    /// answered unfenced, plus `broker.session.timeout.ms`. The controller
    /// fences a broker a whole session after the last heartbeat it
    /// received, which was sent no earlier; so a broker cut off from the
    /// controller stops leading and coordinating before any other broker
    /// can be given its partitions, and never answers from a stale image.
    lease_until_ms: Option<i64>,
    /// A request to this node's own controller, waiting for its commit.
    local: Option<LocalWait>,
    /// A block of producer ids asked for, until this deadline.
    producer_block_until: Option<i64>,
    /// The metadata log's end when the block was asked for: only a block
    /// committed at or after it is this request's.
    producer_block_from: Option<i64>,
    /// A controlled shutdown: heartbeats ask for it (want_shut_down) until
    /// the controller moved this broker's leaderships away and says so.
    pub(super) want_shut_down: bool,
    pub(super) may_shut_down: bool,
}

#[derive(Debug, Clone, Copy)]
struct Registered {
    epoch: i64,
    fenced: bool,
}

/// What this node's broker waits for from its own controller.
#[derive(Debug)]
struct LocalWait {
    offset: i64,
    epoch: i32,
    answer: Answer,
    sent_ms: i64,
}

#[derive(Debug)]
enum Answer {
    Registration(BrokerRegistrationResponse),
    Heartbeat(BrokerHeartbeatResponse),
}

/// The active controller's own state, for one leader epoch.
#[derive(Debug)]
pub(super) struct ControllerState {
    epoch: i32,
    /// Each registered broker's last heartbeat (monotonic).
    heartbeats: BTreeMap<i32, i64>,
    /// Brokers with a registration change proposed and not yet committed.
    changing: BTreeSet<i32>,
    /// The next producer id after the blocks proposed in this epoch.
    producer_next: i64,
    /// The last leadership sweep proposed: none other before it commits.
    sweep_offset: Option<i64>,
    /// Partitions with a change proposed and not yet committed, and the
    /// offset that commits it: no other change of theirs is proposed
    /// before (this controller decides on the committed image only, and a
    /// leader's pending ISR change must be the next one to commit).
    altering: BTreeMap<(Uuid, i32), i64>,
}

/// A metadata transaction committed up to here and not ended: its records
/// wait for its EndTransactionRecord (or are dropped by an abort).
#[derive(Debug)]
pub(super) struct OpenTransaction {
    /// The offset and leader epoch of its BeginTransactionRecord.
    begin_offset: i64,
    epoch: i32,
    records: Vec<(i64, MetadataRecord)>,
}

/// What the controller answers: now, or once the records it proposed are
/// committed (`lost` if they never are).
enum Decision<T> {
    Now(T),
    AfterCommit {
        offset: i64,
        epoch: i32,
        answer: T,
        lost: T,
    },
}

impl Lifecycle {
    /// The broker epoch the controller gave this broker, once registered.
    pub(super) fn broker_epoch(&self) -> Option<i64> {
        self.registered.map(|r| r.epoch)
    }

    pub(super) fn new(incarnation_id: Uuid) -> Lifecycle {
        Lifecycle {
            incarnation_id,
            registered: None,
            next_ms: 0,
            in_flight_until: None,
            in_flight_sent_ms: None,
            lease_until_ms: None,
            local: None,
            producer_block_until: None,
            producer_block_from: None,
            want_shut_down: false,
            may_shut_down: false,
        }
    }

    /// Registered and unfenced: partitions may lead here, so a shutdown
    /// asks the controller to move them first.
    pub(super) fn serving(&self) -> bool {
        self.registered.is_some_and(|r| !r.fenced)
    }

    /// Serving, and within the lease of the last answered heartbeat: the
    /// roles this broker's image gives it may act.
    pub(super) fn acting(&self, now: Now) -> bool {
        self.serving()
            && self
                .lease_until_ms
                .is_some_and(|until| now.monotonic_ms < until)
    }
}

/// True for the requests a broker sends its controller.
pub(super) fn is_controller_api(frame: &[u8]) -> bool {
    let Some(key) = frame.get(..2) else {
        return false;
    };
    let key = i16::from_be_bytes([key[0], key[1]]);
    key == ApiKey::BrokerRegistration as i16
        || key == ApiKey::BrokerHeartbeat as i16
        || key == ApiKey::AllocateProducerIds as i16
        || key == ApiKey::AlterPartition as i16
}

fn error<T: Default + WithError>(error: ResponseError) -> T {
    T::default().with_error(error.code())
}

trait WithError: Sized {
    fn with_error(self, code: i16) -> Self;
}

impl WithError for BrokerRegistrationResponse {
    fn with_error(self, code: i16) -> Self {
        self.with_error_code(code)
    }
}

impl WithError for AllocateProducerIdsResponse {
    fn with_error(self, code: i16) -> Self {
        self.with_error_code(code)
    }
}

impl WithError for AlterPartitionResponse {
    fn with_error(self, code: i16) -> Self {
        self.with_error_code(code)
    }
}

impl WithError for BrokerHeartbeatResponse {
    fn with_error(self, code: i16) -> Self {
        self.with_error_code(code)
    }
}

impl<S: Storage> Node<S> {
    /// A broker's request to this node's controller, from a connection.
    pub(super) fn controller_request(
        &mut self,
        now: Now,
        connection: ConnectionId,
        frame: Bytes,
    ) -> Result<bool, String> {
        let api_key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]]))
            .map_err(|_| "unknown api key".to_string())?;
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let (min, max) = match api_key {
            ApiKey::BrokerRegistration => REGISTRATION_VERSIONS,
            ApiKey::AllocateProducerIds => (0, 0),
            ApiKey::AlterPartition => ALTER_PARTITION_VERSIONS,
            _ => HEARTBEAT_VERSIONS,
        };
        if !(min..=max).contains(&version) || self.quorum.is_none() {
            return Err(format!("{api_key:?} v{version} is not served here"));
        }
        let mut body = frame;
        let request_header =
            RequestHeader::decode(&mut body, api_key.request_header_version(version))
                .map_err(|e| format!("bad request header: {e}"))?;
        let header = ReplyHeader {
            api_key,
            version,
            correlation_id: request_header.correlation_id,
        };
        let state = match api_key {
            ApiKey::BrokerRegistration => {
                let request = BrokerRegistrationRequest::decode(&mut body, version)
                    .map_err(|e| format!("bad BrokerRegistration: {e}"))?;
                slot_state(header, self.controller_register(now, &request))?
            }
            ApiKey::AllocateProducerIds => {
                let request = AllocateProducerIdsRequest::decode(&mut body, version)
                    .map_err(|e| format!("bad AllocateProducerIds: {e}"))?;
                slot_state(
                    header,
                    self.controller_allocate(now, request.broker_id.0, request.broker_epoch),
                )?
            }
            ApiKey::AlterPartition => {
                let request = AlterPartitionRequest::decode(&mut body, version)
                    .map_err(|e| format!("bad AlterPartition: {e}"))?;
                slot_state(header, self.controller_alter_partition(now, &request))?
            }
            _ => {
                let request = BrokerHeartbeatRequest::decode(&mut body, version)
                    .map_err(|e| format!("bad BrokerHeartbeat: {e}"))?;
                slot_state(header, self.controller_heartbeat(now, &request))?
            }
        };
        self.sessions.push(connection, Slot { header, state });
        Ok(true)
    }

    /// Whether the record this node's controller proposed at `offset` in
    /// `epoch` is committed (Done), never will be (Failed), or may be.
    pub(super) fn commit_state(&self, offset: i64, epoch: i32) -> WaitState {
        let Some(replica) = self.quorum.as_ref().and_then(|q| q.replica()) else {
            return WaitState::Failed;
        };
        if self.quorum_committed > offset {
            let entry = &replica.entries()[offset as usize];
            return if entry.epoch == epoch {
                WaitState::Done
            } else {
                WaitState::Failed
            };
        }
        if replica.leader_epoch() != epoch || replica.role() != Role::Leader {
            return WaitState::Failed;
        }
        WaitState::Waiting
    }

    /// The controller state, when this node leads the quorum.
    fn leading(&mut self, now: Now) -> Option<i32> {
        let replica = self.quorum.as_ref()?.replica()?;
        if replica.role() != Role::Leader {
            self.controller = None;
            return None;
        }
        let epoch = replica.leader_epoch();
        if self.controller.as_ref().is_none_or(|c| c.epoch != epoch) {
            // A new leader acts as the controller only once it applied its
            // whole log (its own epoch's first entry committed): until
            // then its image may lack what earlier controllers committed,
            // and it would decide on a past state (refused meanwhile with
            // NOT_CONTROLLER, which clients retry).
            if self.quorum_committed < replica.entries().len() as i64 {
                self.controller = None;
                return None;
            }
            // A change a former controller began and never ended (the
            // rest of it was lost with its leadership) is aborted first:
            // nothing else may follow its records.
            if let Some(open) = &self.metadata_txn {
                assert!(
                    open.epoch < epoch,
                    "a transaction open at offset {} of epoch {} as epoch {epoch} begins",
                    open.begin_offset,
                    open.epoch
                );
                let begin_offset = open.begin_offset;
                let abort = MetadataRecord::AbortTransaction(AbortTransactionRecord {
                    reason: Some("Controller failover".to_string()),
                });
                let proposed = self.propose_change(now, std::slice::from_ref(&abort));
                assert!(
                    proposed.is_some(),
                    "a new leader with its whole log committed may propose"
                );
                tracing::warn!(
                    begin_offset,
                    epoch,
                    "aborting the metadata transaction a former controller left unfinished"
                );
            }
            // The first active controller of a cluster finalizes
            // metadata.version, before any other record of its own, as
            // Kafka's does with its bootstrap records on an empty log; a
            // later one finds it in the committed image and writes nothing.
            if self.cluster_view().image.metadata_version().is_none() {
                let record = MetadataRecord::FeatureLevel(FeatureLevelRecord {
                    name: METADATA_VERSION_FEATURE.to_string(),
                    feature_level: METADATA_VERSION_LEVEL_WRITTEN,
                });
                let proposed = self.propose_change(now, std::slice::from_ref(&record));
                assert!(
                    proposed.is_some(),
                    "a new leader with its whole log committed may propose"
                );
                tracing::info!(
                    epoch,
                    level = METADATA_VERSION_LEVEL_WRITTEN,
                    "finalizing metadata.version for a metadata log without it"
                );
            }
            // A new active controller: every registered broker gets a full
            // session from now, as Kafka's does on failover.
            let heartbeats = self
                .cluster_view()
                .image
                .brokers()
                .map(|b| (b.id, now.monotonic_ms))
                .collect();
            tracing::info!(epoch, "this node is the active controller");
            self.controller = Some(ControllerState {
                epoch,
                heartbeats,
                changing: BTreeSet::new(),
                producer_next: 0,
                sweep_offset: None,
                altering: BTreeMap::new(),
            });
        }
        Some(epoch)
    }

    fn cluster_view(&self) -> &ClusterView {
        self.broker
            .cluster
            .as_ref()
            .expect("a node with a quorum has a cluster view")
    }

    /// Proposes one metadata record; its offset, or None when refused.
    fn propose_record(&mut self, now: Now, record: &MetadataRecord) -> Option<i64> {
        self.propose_records(now, std::slice::from_ref(record))
    }

    /// Proposes records as one change; the offset that commits it (its
    /// last entry), or None when refused.
    fn propose_records(&mut self, now: Now, records: &[MetadataRecord]) -> Option<i64> {
        self.propose_change(now, records).map(|(_, last)| last)
    }

    /// The offset the first record of a change of `count` records would
    /// take, proposed now: after the BeginTransactionRecord of more than one.
    fn first_record_offset(&self, count: usize) -> i64 {
        self.next_offset() + i64::from(count > 1)
    }

    /// Proposes records as one change, all of it or nothing: more than one
    /// record go in a metadata transaction, appended at once (in as many
    /// proposals as they take). The offsets of its first record and of its
    /// last entry, which commits the whole change; None when refused.
    fn propose_change(&mut self, now: Now, records: &[MetadataRecord]) -> Option<(i64, i64)> {
        if records.is_empty() {
            return None;
        }
        let transaction = records.len() > 1;
        let mut framed = Vec::with_capacity(records.len() + 2);
        if transaction {
            framed.push(MetadataRecord::BeginTransaction(
                BeginTransactionRecord::default(),
            ));
        }
        framed.extend(records.iter().cloned());
        if transaction {
            framed.push(MetadataRecord::EndTransaction(EndTransactionRecord {}));
        }
        let mut encoded = Vec::with_capacity(framed.len());
        for record in &framed {
            match record.encode() {
                Ok(bytes) => encoded.push(Bytes::from(bytes)),
                Err(error) => {
                    tracing::error!(%error, "cannot encode a metadata record");
                    return None;
                }
            }
        }
        let quorum = self.quorum.as_mut()?;
        let replica = quorum.replica()?;
        let first = replica.entries().len() as i64;
        let count = encoded.len() as i64;
        // Room for the whole change, so that no part of it is refused
        // after its start was appended.
        let uncommitted = first - replica.high_watermark();
        if uncommitted + count > crate::raft::UNCOMMITTED_ENTRIES_MAX {
            tracing::warn!(
                uncommitted,
                count,
                "a change was not proposed: too many entries wait for commit"
            );
            return None;
        }
        let Broker {
            storage,
            durability,
            ..
        } = &mut self.broker;
        for (i, chunk) in encoded
            .chunks(crate::raft::RECORDS_PER_PROPOSAL_MAX)
            .enumerate()
        {
            match quorum.propose(storage, durability, now.monotonic_ms, chunk.to_vec()) {
                Ok(offset) => assert!(i > 0 || offset == first, "a change starts at the log's end"),
                Err(error) => {
                    // Only the first can be refused (not the leader): the
                    // room for all of them was checked.
                    assert_eq!(i, 0, "a change refused after it began: {error:?}");
                    tracing::warn!(?error, "a change was not proposed");
                    return None;
                }
            }
        }
        let last = first + count - 1;
        self.note_altering(records, last);
        Some((first + i64::from(transaction), last))
    }

    fn next_offset(&self) -> i64 {
        self.quorum
            .as_ref()
            .and_then(|q| q.replica())
            .map_or(0, |r| r.entries().len() as i64)
    }

    fn controller_register(
        &mut self,
        now: Now,
        request: &BrokerRegistrationRequest,
    ) -> Decision<BrokerRegistrationResponse> {
        let Some(epoch) = self.leading(now) else {
            return Decision::Now(error(ResponseError::NotController));
        };
        if *request.cluster_id != *self.broker.cluster_id {
            return Decision::Now(error(ResponseError::InconsistentClusterId));
        }
        let id = request.broker_id.0;
        if id < 0 {
            return Decision::Now(error(ResponseError::InvalidRequest));
        }
        let controller = self.controller.as_mut().expect("leading");
        controller.heartbeats.insert(id, now.monotonic_ms);
        if controller.changing.contains(&id) {
            return Decision::Now(error(ResponseError::RequestTimedOut));
        }
        if let Some(existing) = self.cluster_view().image.broker(id) {
            if existing.incarnation_id == request.incarnation_id {
                // A retry of a registration that committed.
                return Decision::Now(
                    BrokerRegistrationResponse::default().with_broker_epoch(existing.epoch),
                );
            }
        }
        // A new incarnation of a known broker (it restarted, and may have
        // lost writes it never synced): its partitions move as if it had
        // been fenced, so they get a new leader epoch before it leads again
        // and followers cut what it lost by epoch. Not while a change of a
        // partition it leads is on its way: it registers again after.
        let mut moves = Vec::new();
        if self.cluster_view().image.broker(id).is_some() {
            let blocked = self.cluster_view().image.topics().any(|t| {
                t.partitions
                    .iter()
                    .any(|(&p, r)| r.leader == id && self.altering_partition(t.id, p))
            });
            if blocked {
                return Decision::Now(error(ResponseError::RequestTimedOut));
            }
            moves = self.leadership_changes(id, false);
        }
        let broker_epoch = self.first_record_offset(1 + moves.len());
        let record = MetadataRecord::RegisterBroker(RegisterBrokerRecord {
            broker_id: id,
            incarnation_id: request.incarnation_id,
            broker_epoch,
            end_points: request
                .listeners
                .iter()
                .map(|l| BrokerEndpoint {
                    name: l.name.to_string(),
                    host: l.host.to_string(),
                    port: l.port,
                    security_protocol: l.security_protocol,
                })
                .collect(),
            rack: request.rack.as_ref().map(|r| r.to_string()),
            fenced: true,
            ..RegisterBrokerRecord::default()
        });
        let mut records = vec![record];
        records.extend(moves);
        let Some((offset, last)) = self.propose_change(now, &records) else {
            return Decision::Now(error(ResponseError::RequestTimedOut));
        };
        assert_eq!(
            offset, broker_epoch,
            "a broker's epoch is its record's offset"
        );
        self.controller
            .as_mut()
            .expect("leading")
            .changing
            .insert(id);
        tracing::info!(broker = id, broker_epoch, "registering a broker");
        Decision::AfterCommit {
            offset: last,
            epoch,
            answer: BrokerRegistrationResponse::default().with_broker_epoch(broker_epoch),
            lost: error(ResponseError::NotController),
        }
    }

    fn controller_heartbeat(
        &mut self,
        now: Now,
        request: &BrokerHeartbeatRequest,
    ) -> Decision<BrokerHeartbeatResponse> {
        let Some(epoch) = self.leading(now) else {
            return Decision::Now(error(ResponseError::NotController));
        };
        let id = request.broker_id.0;
        let Some(registration) = self.cluster_view().image.broker(id).cloned() else {
            return Decision::Now(error(ResponseError::StaleBrokerEpoch));
        };
        if registration.epoch != request.broker_epoch {
            return Decision::Now(error(ResponseError::StaleBrokerEpoch));
        }
        let controller = self.controller.as_mut().expect("leading");
        controller.heartbeats.insert(id, now.monotonic_ms);
        let caught_up = request.current_metadata_offset >= registration.epoch;
        let answer = |fenced: bool| {
            BrokerHeartbeatResponse::default()
                .with_is_caught_up(caught_up)
                .with_is_fenced(fenced)
        };
        if request.want_shut_down {
            return self.controlled_shutdown(
                now,
                epoch,
                id,
                &registration,
                answer(registration.fenced),
            );
        }
        let wants_in = registration.fenced && !request.want_fence && caught_up;
        if !wants_in || controller.changing.contains(&id) {
            if registration.fenced {
                tracing::debug!(
                    broker = id,
                    caught_up,
                    want_fence = request.want_fence,
                    changing = controller.changing.contains(&id),
                    "a fenced broker stays fenced"
                );
            }
            return Decision::Now(answer(registration.fenced));
        }
        // A change of a partition it leads or is in sync for is on its way
        // (the moves proposed with its registration, perhaps): it stays
        // fenced until that settles, so what it held before is decided on.
        let settling = self.cluster_view().image.topics().any(|t| {
            t.partitions.iter().any(|(&p, r)| {
                (r.leader == id || r.isr.contains(&id)) && self.altering_partition(t.id, p)
            })
        });
        if settling {
            tracing::debug!(
                broker = id,
                "a fenced broker stays fenced while a change of its partitions settles"
            );
            return Decision::Now(answer(true));
        }
        let mut records = vec![MetadataRecord::BrokerRegistrationChange(
            BrokerRegistrationChangeRecord {
                broker_id: id,
                broker_epoch: registration.epoch,
                fenced: BrokerRegistrationChangeRecord::UNFENCED,
                in_controlled_shutdown: BrokerRegistrationChangeRecord::UNCHANGED,
                log_dirs: Vec::new(),
            },
        )];
        // What it led or was in sync for under its registration's earlier
        // incarnation (a registration commits apart from the moves proposed
        // with it when the controller changes in between) moves away: a
        // fenced broker is never elected, so these are stale. Then the
        // partitions left without a leader while it was fenced get it back
        // (at the next sweep, if there were stale ones).
        let stale = self.leadership_changes(id, false);
        if stale.is_empty() {
            records.extend(self.leadership_changes(id, true));
        } else {
            records.extend(stale);
        }
        let Some(offset) = self.propose_records(now, &records) else {
            return Decision::Now(answer(true));
        };
        self.controller
            .as_mut()
            .expect("leading")
            .changing
            .insert(id);
        tracing::info!(broker = id, "unfencing a broker that caught up");
        Decision::AfterCommit {
            offset,
            epoch,
            answer: answer(false),
            lost: error(ResponseError::NotController),
        }
    }

    /// A leader's ISR change (AlterPartition), checked as Kafka's
    /// controller checks it against the committed partition state, turned
    /// into PartitionChangeRecords and answered once they are committed.
    fn controller_alter_partition(
        &mut self,
        now: Now,
        request: &AlterPartitionRequest,
    ) -> Decision<AlterPartitionResponse> {
        let Some(epoch) = self.leading(now) else {
            return Decision::Now(error(ResponseError::NotController));
        };
        let broker_id = request.broker_id.0;
        let image = &self.cluster_view().image;
        match image.broker(broker_id) {
            Some(b) if b.epoch == request.broker_epoch || request.broker_epoch == -1 => {}
            _ => return Decision::Now(error(ResponseError::StaleBrokerEpoch)),
        }
        let mut records = Vec::new();
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let new_isr: Vec<i32> = if p.new_isr_with_epochs.is_empty() {
                    p.new_isr.iter().map(|b| b.0).collect()
                } else {
                    p.new_isr_with_epochs
                        .iter()
                        .map(|b| b.broker_id.0)
                        .collect()
                };
                let answer = alter_partition_response::PartitionData::default()
                    .with_partition_index(p.partition_index);
                let registration = image
                    .topic_by_id(topic.topic_id)
                    .and_then(|t| t.partitions.get(&p.partition_index));
                let in_flight = self.altering_partition(topic.topic_id, p.partition_index);
                let refusal = match registration {
                    // Another change of it is on its way: the leader asks
                    // again (an ambiguous answer keeps its change pending).
                    _ if in_flight => Some(ResponseError::RequestTimedOut),
                    None => Some(ResponseError::UnknownTopicOrPartition),
                    Some(r) if r.leader != broker_id => Some(ResponseError::NotLeaderOrFollower),
                    Some(r) if p.leader_epoch != r.leader_epoch => {
                        Some(ResponseError::FencedLeaderEpoch)
                    }
                    Some(r) if p.partition_epoch != r.partition_epoch => {
                        Some(ResponseError::InvalidUpdateVersion)
                    }
                    Some(_) if !new_isr.contains(&broker_id) => Some(ResponseError::InvalidRequest),
                    // A leader still recovering from an unclean election
                    // leads alone (Kafka's check), and a recovered one
                    // never goes back to recovering.
                    Some(_) if p.leader_recovery_state == 1 && new_isr.len() > 1 => {
                        Some(ResponseError::InvalidRequest)
                    }
                    Some(r)
                        if p.leader_recovery_state == 1
                            && r.leader_recovery_state == LeaderRecoveryState::Recovered =>
                    {
                        Some(ResponseError::InvalidRequest)
                    }
                    Some(r)
                        if new_isr.iter().any(|id| {
                            !r.replicas.contains(id)
                                || (!r.isr.contains(id)
                                    && image
                                        .broker(*id)
                                        .is_none_or(|b| b.fenced || b.in_controlled_shutdown))
                        }) =>
                    {
                        // A new member must be a replica on an unfenced broker.
                        Some(ResponseError::IneligibleReplica)
                    }
                    Some(_) => None,
                };
                let registration = registration.cloned();
                match (refusal, registration) {
                    (Some(refusal), _) => {
                        partitions.push(answer.with_error_code(refusal.code()));
                    }
                    (None, None) => unreachable!("a partition without registration is refused"),
                    (None, Some(r)) => {
                        // The leader's asking settles its recovery state:
                        // one that recovered from an unclean election says
                        // so (RECOVERED), as Kafka's leaders do.
                        let recovery = LeaderRecoveryState::from_value(p.leader_recovery_state)
                            .unwrap_or(LeaderRecoveryState::Recovered);
                        let leader_recovery_state = if recovery == r.leader_recovery_state {
                            PartitionChangeRecord::RECOVERY_STATE_UNCHANGED
                        } else {
                            recovery.value()
                        };
                        records.push(MetadataRecord::PartitionChange(PartitionChangeRecord {
                            partition_id: p.partition_index,
                            topic_id: topic.topic_id,
                            isr: Some(new_isr.clone()),
                            leader_recovery_state,
                            ..PartitionChangeRecord::default()
                        }));
                        partitions.push(
                            answer
                                .with_leader_id(BrokerId(r.leader))
                                .with_leader_epoch(r.leader_epoch)
                                .with_leader_recovery_state(p.leader_recovery_state.max(0))
                                .with_isr(new_isr.iter().map(|&id| BrokerId(id)).collect())
                                .with_partition_epoch(r.partition_epoch + 1),
                        );
                    }
                }
            }
            topics.push(
                alter_partition_response::TopicData::default()
                    .with_topic_id(topic.topic_id)
                    .with_partitions(partitions),
            );
        }
        let answer = AlterPartitionResponse::default().with_topics(topics);
        if records.is_empty() {
            return Decision::Now(answer);
        }
        if records.len() > crate::raft::RECORDS_PER_PROPOSAL_MAX {
            return Decision::Now(error(ResponseError::InvalidRequest));
        }
        let Some(offset) = self.propose_records(now, &records) else {
            return Decision::Now(error(ResponseError::RequestTimedOut));
        };
        tracing::info!(
            broker = broker_id,
            partitions = records.len(),
            "changing ISRs"
        );
        Decision::AfterCommit {
            offset,
            epoch,
            answer,
            lost: error(ResponseError::NotController),
        }
    }

    /// True while a change of the partition proposed by this controller is
    /// not committed.
    fn altering_partition(&self, topic_id: Uuid, partition: i32) -> bool {
        self.controller.as_ref().is_some_and(|c| {
            c.altering
                .get(&(topic_id, partition))
                .is_some_and(|&offset| offset >= self.quorum_committed)
        })
    }

    /// Notes the partitions a proposal ending at `offset` changes, and
    /// forgets those whose changes committed.
    fn note_altering(&mut self, records: &[MetadataRecord], offset: i64) {
        let committed = self.quorum_committed;
        let Some(controller) = self.controller.as_mut() else {
            return;
        };
        controller.altering.retain(|_, at| *at >= committed);
        for record in records {
            if let MetadataRecord::PartitionChange(change) = record {
                controller
                    .altering
                    .insert((change.topic_id, change.partition_id), offset);
            }
        }
    }

    /// This node's own leader asks its own controller: the answer now, or
    /// None when it waits for a commit (the record settles the change as it
    /// applies).
    pub(super) fn alter_partition_locally(
        &mut self,
        now: Now,
        request: &AlterPartitionRequest,
    ) -> Option<AlterPartitionResponse> {
        match self.controller_alter_partition(now, request) {
            Decision::Now(answer) => Some(answer),
            Decision::AfterCommit { .. } => None,
        }
    }

    /// A broker asks to shut down: its partitions' leaderships move to other
    /// ISR members and it leaves their ISRs (in one proposal with its
    /// registration marked as shutting down), and once it leads nothing
    /// and is in no shared ISR it is told it may stop (Kafka's controlled
    /// shutdown, without which clients would wait a session timeout for
    /// its partitions to move).
    fn controlled_shutdown(
        &mut self,
        now: Now,
        epoch: i32,
        id: i32,
        registration: &crate::image::BrokerRegistration,
        answer: BrokerHeartbeatResponse,
    ) -> Decision<BrokerHeartbeatResponse> {
        let changes = self.leadership_changes(id, false);
        if changes.is_empty() && (registration.in_controlled_shutdown || registration.fenced) {
            return Decision::Now(answer.with_should_shut_down(true));
        }
        let controller = self.controller.as_ref().expect("leading");
        if controller.changing.contains(&id) {
            return Decision::Now(answer);
        }
        let mut records = Vec::with_capacity(changes.len() + 1);
        if !registration.in_controlled_shutdown {
            records.push(MetadataRecord::BrokerRegistrationChange(
                BrokerRegistrationChangeRecord {
                    broker_id: id,
                    broker_epoch: registration.epoch,
                    fenced: BrokerRegistrationChangeRecord::UNCHANGED,
                    in_controlled_shutdown: BrokerRegistrationChangeRecord::IN_CONTROLLED_SHUTDOWN,
                    log_dirs: Vec::new(),
                },
            ));
        }
        records.extend(changes);
        let Some(offset) = self.propose_records(now, &records) else {
            return Decision::Now(answer);
        };
        self.controller
            .as_mut()
            .expect("leading")
            .changing
            .insert(id);
        tracing::info!(
            broker = id,
            changes = records.len(),
            "a broker shuts down: moving its leaderships"
        );
        Decision::AfterCommit {
            offset,
            epoch,
            answer: answer.clone(),
            lost: error(ResponseError::NotController),
        }
    }

    /// Gives a broker the next block of producer ids: a ProducerIdsRecord
    /// naming it, answered once committed. Blocks follow each other from
    /// the committed next id and the ones proposed since.
    fn controller_allocate(
        &mut self,
        now: Now,
        broker_id: i32,
        broker_epoch: i64,
    ) -> Decision<AllocateProducerIdsResponse> {
        let Some(epoch) = self.leading(now) else {
            return Decision::Now(error(ResponseError::NotController));
        };
        let registered = self.cluster_view().image.broker(broker_id).map(|b| b.epoch);
        if registered != Some(broker_epoch) {
            return Decision::Now(error(ResponseError::StaleBrokerEpoch));
        }
        let committed_next = self.cluster_view().image.next_producer_id().unwrap_or(0);
        let controller = self.controller.as_mut().expect("leading");
        let start = controller.producer_next.max(committed_next);
        let next = start + crate::broker::PRODUCER_ID_BLOCK_SIZE;
        let record = MetadataRecord::ProducerIds(ProducerIdsRecord {
            broker_id,
            broker_epoch,
            next_producer_id: next,
        });
        let Some(offset) = self.propose_record(now, &record) else {
            return Decision::Now(error(ResponseError::RequestTimedOut));
        };
        self.controller.as_mut().expect("leading").producer_next = next;
        tracing::debug!(broker = broker_id, start, "allocating producer ids");
        Decision::AfterCommit {
            offset,
            epoch,
            answer: AllocateProducerIdsResponse::default()
                .with_producer_id_start(ProducerId(start))
                .with_producer_id_len(crate::broker::PRODUCER_ID_BLOCK_SIZE as i32),
            lost: error(ResponseError::NotController),
        }
    }

    /// Asks the controller for a block of producer ids when this broker
    /// needs one; the block is this broker's once the record naming it is
    /// committed and applied here.
    fn request_producer_block(&mut self, now: Now, leader: Option<NodeId>) {
        let wants = self
            .broker
            .cluster
            .as_ref()
            .is_some_and(|c| c.wants_producer_block);
        let Some(registered) = self.lifecycle.as_ref().and_then(|l| l.registered) else {
            return;
        };
        let lifecycle = self.lifecycle.as_mut().expect("checked above");
        if !wants
            || lifecycle
                .producer_block_until
                .is_some_and(|until| now.monotonic_ms < until)
        {
            return;
        }
        lifecycle.producer_block_until = Some(now.monotonic_ms + CONTROLLER_REQUEST_MS);
        if lifecycle.producer_block_from.is_none() {
            lifecycle.producer_block_from =
                Some(self.quorum.as_ref().map_or(0, |q| q.entries().len() as i64));
        }
        match leader {
            Some(leader) if leader == self.node_id => {
                let _ = self.controller_allocate(now, self.node_id.0, registered.epoch);
            }
            Some(leader)
                if self
                    .peers
                    .get(&(leader, Channel::Control))
                    .is_some_and(|l| l.up) =>
            {
                let request = AllocateProducerIdsRequest::default()
                    .with_broker_id(BrokerId(self.node_id.0))
                    .with_broker_epoch(registered.epoch);
                self.send_peer(
                    now,
                    (leader, Channel::Control),
                    ApiKey::AllocateProducerIds,
                    0,
                    &request,
                    None,
                );
            }
            _ => {}
        }
    }

    /// Fences the unfenced brokers silent for a whole session.
    fn fence_silent_brokers(&mut self, now: Now) {
        if self.leading(now).is_none() {
            return;
        }
        let session_ms = self.broker.config.broker_session_timeout_ms;
        let controller = self.controller.as_ref().expect("leading");
        let silent: Vec<(i32, i64)> = self
            .cluster_view()
            .image
            .unfenced_brokers()
            .filter(|b| !controller.changing.contains(&b.id))
            .filter(|b| {
                controller
                    .heartbeats
                    .get(&b.id)
                    .is_none_or(|&last| now.monotonic_ms - last >= session_ms)
            })
            .map(|b| (b.id, b.epoch))
            .collect();
        for (id, broker_epoch) in silent {
            let mut records = vec![MetadataRecord::BrokerRegistrationChange(
                BrokerRegistrationChangeRecord {
                    broker_id: id,
                    broker_epoch,
                    fenced: BrokerRegistrationChangeRecord::FENCED,
                    in_controlled_shutdown: BrokerRegistrationChangeRecord::UNCHANGED,
                    log_dirs: Vec::new(),
                },
            )];
            // Its partitions have no leader now (one replica each: no
            // other may take over); they come back when it is unfenced.
            records.extend(self.leadership_changes(id, false));
            if self.propose_records(now, &records).is_some() {
                tracing::warn!(
                    broker = id,
                    session_ms,
                    "fencing a broker not heard from for a session"
                );
                self.controller
                    .as_mut()
                    .expect("leading")
                    .changing
                    .insert(id);
            }
        }
        self.sweep_leadership(now);
    }

    /// Partitions whose leadership does not match their broker's state
    /// (more than one proposal held at a fencing or unfencing, or a
    /// proposal lost with a leader change) are fixed, one proposal at a
    /// time.
    fn sweep_leadership(&mut self, now: Now) {
        let controller = self.controller.as_ref().expect("leading");
        if controller
            .sweep_offset
            .is_some_and(|offset| self.quorum_committed <= offset)
        {
            return;
        }
        let brokers: Vec<(i32, bool)> = self
            .cluster_view()
            .image
            .brokers()
            .filter(|b| !controller.changing.contains(&b.id))
            .map(|b| (b.id, b.fenced))
            .collect();
        for (id, fenced) in brokers {
            let changes = self.leadership_changes(id, !fenced);
            if changes.is_empty() {
                continue;
            }
            if let Some(offset) = self.propose_records(now, &changes) {
                tracing::info!(
                    broker = id,
                    partitions = changes.len(),
                    fenced,
                    "moving partition leadership"
                );
                self.controller.as_mut().expect("leading").sweep_offset = Some(offset);
            }
            return;
        }
    }

    /// The partition changes when broker `id` is fenced (`up` false) or
    /// unfenced (`up`), as `leadership_change` decides each. Bounded to
    /// one proposal; the rest wait for the next change.
    fn leadership_changes(&self, id: i32, up: bool) -> Vec<MetadataRecord> {
        let room = crate::raft::RECORDS_PER_PROPOSAL_MAX - 1;
        let image = &self.cluster_view().image;
        let live = |r: i32| {
            r != id
                && image
                    .broker(r)
                    .is_some_and(|b| !b.fenced && !b.in_controlled_shutdown)
        };
        let shutting_down = image.broker(id).is_some_and(|b| b.in_controlled_shutdown);
        let empty_isr = self.broker.config.mutated(Mutation::EmptyIsrOnFence);
        let mut changes = Vec::new();
        for topic in image.topics() {
            let unclean = crate::config::unclean_leader_election(
                &self.broker.config,
                image.topic_configs(&topic.name),
            );
            for (&partition_id, partition) in &topic.partitions {
                if changes.len() >= room {
                    return changes;
                }
                if self.altering_partition(topic.id, partition_id) {
                    // After the change on its way (the sweep comes back).
                    continue;
                }
                let broker = BrokerChange {
                    id,
                    up,
                    shutting_down,
                };
                if let Some(mut change) = leadership_change(partition, broker, unclean, live) {
                    if empty_isr && change.leader == PartitionChangeRecord::LEADER_NONE {
                        // Mutation `empty-isr-on-fence`: the last member
                        // leaves the ISR with the leader.
                        change.isr = Some(Vec::new());
                    }
                    changes.push(MetadataRecord::PartitionChange(PartitionChangeRecord {
                        partition_id,
                        topic_id: topic.id,
                        ..change
                    }));
                }
            }
        }
        changes
    }

    /// The earliest time a silent broker's session ends, while leading.
    fn next_fence_ms(&self) -> Option<i64> {
        let controller = self.controller.as_ref()?;
        let session_ms = self.broker.config.broker_session_timeout_ms;
        self.cluster_view()
            .image
            .unfenced_brokers()
            .filter_map(|b| controller.heartbeats.get(&b.id))
            .map(|last| last + session_ms)
            .min()
    }

    /// Takes a committed metadata entry of leader epoch `epoch`: a record
    /// outside a transaction applies now, one inside waits for the
    /// transaction's end (and is dropped if it is aborted).
    pub(super) fn apply_committed(&mut self, now: Now, offset: i64, epoch: i32, record: &Record) {
        let Record::Data(bytes) = record else {
            return;
        };
        let decoded = match MetadataRecord::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::error!(offset, %error, "a committed metadata record cannot be read; skipped");
                return;
            }
        };
        match &decoded {
            MetadataRecord::BeginTransaction(_) => {
                assert!(
                    self.metadata_txn.is_none(),
                    "a metadata transaction begins at offset {offset} inside another"
                );
                self.metadata_txn = Some(OpenTransaction {
                    begin_offset: offset,
                    epoch,
                    records: Vec::new(),
                });
            }
            MetadataRecord::EndTransaction(_) => {
                let open = self.metadata_txn.take();
                let open = open.expect("a metadata transaction ends only after it began");
                assert_eq!(
                    open.epoch, epoch,
                    "a metadata transaction ends in its epoch"
                );
                for (offset, record) in &open.records {
                    self.apply_record(now, *offset, record);
                }
            }
            MetadataRecord::AbortTransaction(_) => {
                let open = self.metadata_txn.take();
                let open = open.expect("only a transaction left open is aborted");
                assert!(
                    open.epoch < epoch,
                    "a metadata transaction aborted in its epoch"
                );
                tracing::info!(
                    begin_offset = open.begin_offset,
                    dropped = open.records.len(),
                    "a metadata transaction was aborted; its records are dropped"
                );
            }
            _ => {
                if let Some(open) = &mut self.metadata_txn {
                    // A new controller aborts a transaction left open
                    // before it proposes anything else.
                    assert_eq!(
                        open.epoch, epoch,
                        "a record of a new epoch at offset {offset} inside an open transaction"
                    );
                    open.records.push((offset, decoded));
                    return;
                }
            }
        }
        self.apply_record(now, offset, &decoded);
    }

    /// The metadata log's offsets this node applied: up to the start of a
    /// transaction still open, whose records wait.
    pub(super) fn metadata_applied_end(&self) -> i64 {
        self.metadata_txn
            .as_ref()
            .map_or(self.quorum_committed, |open| open.begin_offset)
    }

    /// Applies a committed metadata record to the image; a registration
    /// change it settles is no longer in flight.
    fn apply_record(&mut self, now: Now, offset: i64, decoded: &MetadataRecord) {
        let Some(cluster) = self.broker.cluster.as_mut() else {
            return;
        };
        let producer_next_before = cluster.image.next_producer_id().unwrap_or(0);
        let unclean_before = cluster.image.unclean_elections();
        if let Err(error) = cluster.image.apply(offset, decoded) {
            tracing::error!(offset, %error, "a committed metadata record does not apply; skipped");
            return;
        }
        if let MetadataRecord::PartitionChange(change) = decoded {
            let unclean_elections = cluster.image.unclean_elections();
            // Logged once in the cluster: by the controller that elected.
            if unclean_elections > unclean_before && cluster.is_controller {
                tracing::warn!(
                    topic_id = %change.topic_id,
                    partition = change.partition_id,
                    leader = change.leader,
                    unclean_elections,
                    "unclean leader election: a replica outside the ISR leads; records only the ISR had may be lost"
                );
            }
        }
        // Only a block allocated after this broker asked: a restarted node
        // replays its earlier blocks, whose ids it may have handed out.
        let asked_from = self
            .lifecycle
            .as_ref()
            .and_then(|l| l.producer_block_from)
            .unwrap_or(i64::MAX);
        if let MetadataRecord::ProducerIds(block) = decoded {
            if block.broker_id == self.node_id.0
                && cluster.wants_producer_block
                && offset >= asked_from
            {
                cluster.producer_block = Some((producer_next_before, block.next_producer_id));
                cluster.wants_producer_block = false;
                if let Some(lifecycle) = self.lifecycle.as_mut() {
                    lifecycle.producer_block_until = None;
                    lifecycle.producer_block_from = None;
                }
            }
        }
        self.broker.apply_metadata(now, decoded);
        let changed = match decoded {
            MetadataRecord::RegisterBroker(r) => Some(r.broker_id),
            MetadataRecord::BrokerRegistrationChange(r) => Some(r.broker_id),
            _ => None,
        };
        if let (Some(id), Some(controller)) = (changed, self.controller.as_mut()) {
            controller.changing.remove(&id);
        }
    }

    /// The broker's roles act while it is registered, unfenced and within
    /// its lease. Called before a request is handled too, so a lease that
    /// ended since the last input is honoured at once.
    pub(super) fn follow_lease(&mut self, now: Now) {
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        let acting = if self
            .broker
            .config
            .mutated(crate::config::Mutation::NoBrokerLease)
        {
            lifecycle.serving()
        } else {
            lifecycle.acting(now)
        };
        let was = self.broker.cluster.as_ref().is_some_and(|c| c.serving);
        if was && !acting && lifecycle.serving() {
            tracing::warn!(
                session_ms = self.broker.config.broker_session_timeout_ms,
                "no heartbeat answered for a session: the controller may have fenced this broker; \
                 it stops leading and coordinating until the controller answers"
            );
        }
        self.broker.set_serving(now, acting);
    }

    /// After every input of a node in a quorum: the controller id clients
    /// see, the broker's registration and heartbeats, the fencing of
    /// silent brokers, and the timer for the next of these.
    pub(super) fn tend_cluster(&mut self, now: Now) {
        let Some(leader) = self
            .quorum
            .as_ref()
            .and_then(|q| q.replica())
            .map(|r| r.leader_id())
        else {
            return;
        };
        if let Some(cluster) = self.broker.cluster.as_mut() {
            cluster.controller_id = leader.map(|l| l.0);
        }
        let leading = self.leading(now);
        if leading.is_none() {
            self.controller = None;
        }
        if let Some(cluster) = self.broker.cluster.as_mut() {
            cluster.is_controller = leading.is_some();
        }
        self.follow_lease(now);
        self.propose_outbox(now);
        self.settle_tickets();
        self.forward_creations(now, leader);
        self.request_producer_block(now, leader);
        self.settle_local_wait(now);
        let Some(lifecycle) = self.lifecycle.as_mut() else {
            return;
        };
        if lifecycle
            .in_flight_until
            .is_some_and(|until| now.monotonic_ms >= until)
        {
            lifecycle.in_flight_until = None;
        }
        let due = lifecycle.in_flight_until.is_none()
            && lifecycle.local.is_none()
            && now.monotonic_ms >= lifecycle.next_ms;
        if due {
            match leader {
                Some(leader) if leader == self.node_id => self.send_to_own_controller(now),
                Some(leader) => self.send_to_controller(now, leader),
                None => {}
            }
        }
        let lifecycle = self.lifecycle.as_ref().expect("checked above");
        let lease_ends = lifecycle
            .lease_until_ms
            .filter(|&until| until > now.monotonic_ms);
        let mut next = [
            Some(lifecycle.in_flight_until.unwrap_or(lifecycle.next_ms)),
            self.next_fence_ms(),
            lease_ends,
        ]
        .into_iter()
        .flatten()
        .min();
        if leader.is_none() || lifecycle.local.is_some() {
            // Waiting for a leader or a commit: the quorum's own inputs
            // bring this back, or the lease ending.
            next = self.next_fence_ms().into_iter().chain(lease_ends).min();
        }
        match next {
            Some(at) => self
                .timers
                .set(Timer::Cluster, at.max(now.monotonic_ms + 1)),
            None => self.timers.stop(Timer::Cluster),
        }
    }

    /// Proposes the changes the handlers queued, in order; those this node
    /// cannot propose (not the controller) fail at once.
    fn propose_outbox(&mut self, now: Now) {
        let Some(cluster) = self.broker.cluster.as_mut() else {
            return;
        };
        let outbox = std::mem::take(&mut cluster.outbox);
        for (ticket, records) in outbox {
            let epoch = self.leading(now);
            let last = match epoch {
                Some(_) => self.propose_records(now, &records),
                None => None,
            };
            let cluster = self.broker.cluster.as_mut().expect("checked above");
            match (last, epoch) {
                (Some(offset), Some(epoch)) => {
                    cluster.settle(ticket, Ticket::Proposed { offset, epoch })
                }
                _ => {
                    for record in &records {
                        if let MetadataRecord::Topic(topic) = record {
                            cluster.pending_topics.remove(&topic.name);
                        }
                    }
                    cluster.settle(ticket, Ticket::Failed);
                }
            }
        }
    }

    /// Settles the proposed changes that were committed, or that never will be.
    fn settle_tickets(&mut self) {
        let Some(cluster) = self.broker.cluster.as_ref() else {
            return;
        };
        let proposed: Vec<(u64, i64, i32)> = cluster
            .tickets
            .iter()
            .filter_map(|(&t, state)| match *state {
                Ticket::Proposed { offset, epoch } => Some((t, offset, epoch)),
                _ => None,
            })
            .collect();
        for (ticket, offset, epoch) in proposed {
            let state = match self.commit_state(offset, epoch) {
                WaitState::Waiting => continue,
                WaitState::Done => Ticket::Committed,
                WaitState::Failed => Ticket::Failed,
            };
            let cluster = self.broker.cluster.as_mut().expect("checked above");
            cluster.settle(ticket, state);
        }
        // A name whose creation failed is free again, unless it exists.
        let cluster = self.broker.cluster.as_mut().expect("checked above");
        if cluster
            .tickets
            .values()
            .all(|s| matches!(s, Ticket::Committed | Ticket::Failed))
        {
            let image = &cluster.image;
            cluster
                .pending_topics
                .retain(|name| image.topic_by_name(name).is_some());
        }
    }

    /// Asks the controller to create the topics clients wanted auto-created
    /// here (Kafka's brokers forward these to the controller too).
    fn forward_creations(&mut self, now: Now, leader: Option<NodeId>) {
        let names = self.broker.take_forwarded_creations();
        let Some(leader) = leader.filter(|&l| l != self.node_id) else {
            return;
        };
        if names.is_empty()
            || !self
                .peers
                .get(&(leader, Channel::Control))
                .is_some_and(|l| l.up)
        {
            return;
        }
        let topics = names
            .into_iter()
            .map(|name| {
                // Internal topics go with their own partitions, replicas
                // and settings; the rest as auto-creation makes them.
                let (partitions, factor, configs) = match self.broker.internal_topic(&name) {
                    Some(spec) => (spec.partitions, spec.replication_factor, spec.configs),
                    None => (-1, -1, Default::default()),
                };
                create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_num_partitions(partitions)
                    .with_replication_factor(factor)
                    .with_configs(
                        configs
                            .into_iter()
                            .map(|(key, value)| {
                                create_topics_request::CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(key))
                                    .with_value(Some(StrBytes::from_string(value)))
                            })
                            .collect(),
                    )
            })
            .collect();
        let request = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(CONTROLLER_REQUEST_MS as i32);
        self.send_peer(
            now,
            (leader, Channel::Control),
            ApiKey::CreateTopics,
            FORWARD_CREATE_TOPICS_VERSION,
            &request,
            None,
        );
    }

    pub(super) fn cluster_timeout(&mut self, now: Now) {
        self.fence_silent_brokers(now);
    }

    fn registration_request(&self) -> BrokerRegistrationRequest {
        let lifecycle = self.lifecycle.as_ref().expect("a broker of a cluster");
        let (host, port) = &self.broker.advertised;
        let listener = broker_registration_request::Listener::default()
            .with_name(StrBytes::from_static_str(LISTENER_NAME))
            .with_host(StrBytes::from_string(host.clone()))
            .with_port(*port)
            .with_security_protocol(0);
        BrokerRegistrationRequest::default()
            .with_broker_id(BrokerId(self.node_id.0))
            .with_cluster_id(StrBytes::from_string(self.broker.cluster_id.clone()))
            .with_incarnation_id(lifecycle.incarnation_id)
            .with_listeners(vec![listener])
    }

    fn heartbeat_request(&self, epoch: i64) -> BrokerHeartbeatRequest {
        let want_shut_down = self.lifecycle.as_ref().is_some_and(|l| l.want_shut_down);
        BrokerHeartbeatRequest::default()
            .with_broker_id(BrokerId(self.node_id.0))
            .with_broker_epoch(epoch)
            .with_current_metadata_offset(self.metadata_applied_end() - 1)
            .with_want_shut_down(want_shut_down)
    }

    fn send_to_controller(&mut self, now: Now, leader: NodeId) {
        if !self
            .peers
            .get(&(leader, Channel::Control))
            .is_some_and(|l| l.up)
        {
            return;
        }
        let registered = self.lifecycle.as_ref().and_then(|l| l.registered);
        match registered {
            None => {
                let request = self.registration_request();
                self.send_peer(
                    now,
                    (leader, Channel::Control),
                    ApiKey::BrokerRegistration,
                    REGISTRATION_VERSION,
                    &request,
                    None,
                );
            }
            Some(registered) => {
                let request = self.heartbeat_request(registered.epoch);
                self.send_peer(
                    now,
                    (leader, Channel::Control),
                    ApiKey::BrokerHeartbeat,
                    HEARTBEAT_VERSION,
                    &request,
                    None,
                );
            }
        }
        if let Some(lifecycle) = self.lifecycle.as_mut() {
            lifecycle.in_flight_until = Some(now.monotonic_ms + CONTROLLER_REQUEST_MS);
            lifecycle.in_flight_sent_ms = Some(now.monotonic_ms);
        }
    }

    fn send_to_own_controller(&mut self, now: Now) {
        let registered = self.lifecycle.as_ref().and_then(|l| l.registered);
        let (decision, is_registration) = match registered {
            None => {
                let request = self.registration_request();
                match self.controller_register(now, &request) {
                    Decision::Now(a) => (Decision::Now(Answer::Registration(a)), true),
                    Decision::AfterCommit {
                        offset,
                        epoch,
                        answer,
                        lost,
                    } => (
                        Decision::AfterCommit {
                            offset,
                            epoch,
                            answer: Answer::Registration(answer),
                            lost: Answer::Registration(lost),
                        },
                        true,
                    ),
                }
            }
            Some(registered) => {
                let request = self.heartbeat_request(registered.epoch);
                match self.controller_heartbeat(now, &request) {
                    Decision::Now(a) => (Decision::Now(Answer::Heartbeat(a)), false),
                    Decision::AfterCommit {
                        offset,
                        epoch,
                        answer,
                        lost,
                    } => (
                        Decision::AfterCommit {
                            offset,
                            epoch,
                            answer: Answer::Heartbeat(answer),
                            lost: Answer::Heartbeat(lost),
                        },
                        false,
                    ),
                }
            }
        };
        let _ = is_registration;
        match decision {
            Decision::Now(answer) => self.take_answer(now, answer, Some(now.monotonic_ms)),
            Decision::AfterCommit {
                offset,
                epoch,
                answer,
                ..
            } => {
                let lifecycle = self.lifecycle.as_mut().expect("a broker of a cluster");
                lifecycle.local = Some(LocalWait {
                    offset,
                    epoch,
                    answer,
                    sent_ms: now.monotonic_ms,
                });
            }
        }
    }

    /// Hands this broker its own controller's answer once its records
    /// committed (or a retry, if they never will).
    fn settle_local_wait(&mut self, now: Now) {
        let Some(wait) = self.lifecycle.as_ref().and_then(|l| l.local.as_ref()) else {
            return;
        };
        match self.commit_state(wait.offset, wait.epoch) {
            WaitState::Waiting => {}
            WaitState::Done => {
                let wait = self
                    .lifecycle
                    .as_mut()
                    .and_then(|l| l.local.take())
                    .expect("checked above");
                self.take_answer(now, wait.answer, Some(wait.sent_ms));
            }
            WaitState::Failed => {
                let lifecycle = self.lifecycle.as_mut().expect("checked above");
                lifecycle.local = None;
                lifecycle.next_ms = now.monotonic_ms + CONTROLLER_RETRY_MS;
            }
        }
    }

    /// A response from a peer's controller to this broker.
    pub(super) fn controller_response(&mut self, now: Now, sent: &SentRequest, frame: Bytes) {
        let answer = match sent.api_key {
            ApiKey::BrokerRegistration => crate::wire::reply::decode_response::<
                BrokerRegistrationResponse,
            >(sent.api_key, sent.version, frame)
            .map(|(_, r)| Answer::Registration(r)),
            _ => crate::wire::reply::decode_response::<BrokerHeartbeatResponse>(
                sent.api_key,
                sent.version,
                frame,
            )
            .map(|(_, r)| Answer::Heartbeat(r)),
        };
        // An answer to a request given up as lost has no known send time:
        // it renews no lease.
        let sent_ms = self.lifecycle.as_mut().and_then(|lifecycle| {
            lifecycle.in_flight_until = None;
            lifecycle.in_flight_sent_ms.take()
        });
        match answer {
            Ok(answer) => self.take_answer(now, answer, sent_ms),
            Err(error) => {
                tracing::warn!(%error, "bad answer from the controller");
                if let Some(lifecycle) = self.lifecycle.as_mut() {
                    lifecycle.next_ms = now.monotonic_ms + CONTROLLER_RETRY_MS;
                }
            }
        }
    }

    fn take_answer(&mut self, now: Now, answer: Answer, sent_ms: Option<i64>) {
        let interval = self.broker.config.broker_heartbeat_interval_ms;
        let session_ms = self.broker.config.broker_session_timeout_ms;
        let lifecycle = self.lifecycle.as_mut().expect("a broker of a cluster");
        let retry = now.monotonic_ms + CONTROLLER_RETRY_MS;
        match answer {
            Answer::Registration(r) if r.error_code == 0 => {
                tracing::info!(
                    broker_epoch = r.broker_epoch,
                    "registered with the controller"
                );
                lifecycle.registered = Some(Registered {
                    epoch: r.broker_epoch,
                    fenced: true,
                });
                lifecycle.lease_until_ms = None;
                lifecycle.next_ms = now.monotonic_ms;
            }
            Answer::Registration(r) => {
                tracing::debug!(error = r.error_code, "registration refused; retrying");
                lifecycle.next_ms = retry;
            }
            Answer::Heartbeat(r) if r.error_code == 0 => {
                if let Some(registered) = lifecycle.registered.as_mut() {
                    if registered.fenced != r.is_fenced {
                        tracing::info!(
                            fenced = r.is_fenced,
                            "the controller changed this broker's state"
                        );
                    }
                    registered.fenced = r.is_fenced;
                }
                lifecycle.lease_until_ms = match sent_ms {
                    _ if r.is_fenced => None,
                    Some(sent_ms) => lifecycle.lease_until_ms.max(Some(sent_ms + session_ms)),
                    None => lifecycle.lease_until_ms,
                };
                if lifecycle.want_shut_down && r.should_shut_down && !lifecycle.may_shut_down {
                    tracing::info!("the controller moved this broker's leaderships away");
                    lifecycle.may_shut_down = true;
                }
                lifecycle.next_ms = now.monotonic_ms
                    + if (r.is_fenced && r.is_caught_up) || lifecycle.want_shut_down {
                        CONTROLLER_RETRY_MS
                    } else {
                        interval
                    };
            }
            Answer::Heartbeat(r) if r.error_code == ResponseError::StaleBrokerEpoch.code() => {
                tracing::warn!(
                    "the controller does not know this broker's epoch; registering again"
                );
                lifecycle.registered = None;
                lifecycle.lease_until_ms = None;
                lifecycle.next_ms = now.monotonic_ms;
            }
            Answer::Heartbeat(r) => {
                tracing::debug!(error = r.error_code, "heartbeat refused; retrying");
                lifecycle.next_ms = retry;
            }
        }
    }

    /// Forwards a client's topic administration to the active controller
    /// when this node is not it (KIP-590): the answer comes back on the
    /// control link and goes to the client as the controller gave it.
    /// False when the request is this node's to handle (not in a cluster,
    /// the controller itself, or no controller reachable: the handler then
    /// answers NOT_CONTROLLER).
    pub(super) fn forward_to_controller(
        &mut self,
        now: Now,
        connection: ConnectionId,
        request: &crate::wire::Request,
    ) -> bool {
        let api_key = request.header.api_key;
        if !matches!(
            api_key,
            ApiKey::CreateTopics | ApiKey::DeleteTopics | ApiKey::CreatePartitions
        ) {
            return false;
        }
        let Some(cluster) = &self.broker.cluster else {
            return false;
        };
        let leader = match cluster.controller_id {
            Some(id) if !cluster.is_controller && id != self.node_id.0 => NodeId(id),
            _ => return false,
        };
        if !self
            .peers
            .get(&(leader, Channel::Control))
            .is_some_and(|l| l.up)
        {
            return false;
        }
        let header = request.header;
        let version = header.version;
        let mut body = request.body.clone();
        self.next_token += 1;
        let token = self.next_token;
        let link = (leader, Channel::Control);
        let not_controller = ResponseError::NotController.code();
        // Decoded and encoded again at the client's version, which the
        // controller (the same software) serves too.
        let (sent, lost) = match api_key {
            ApiKey::CreateTopics => match CreateTopicsRequest::decode(&mut body, version) {
                Ok(body) => {
                    let lost = CreateTopicsResponse::default().with_topics(
                        body.topics
                            .iter()
                            .map(|t| {
                                create_topics_response::CreatableTopicResult::default()
                                    .with_name(t.name.clone())
                                    .with_error_code(not_controller)
                            })
                            .collect(),
                    );
                    let sent =
                        self.send_peer_for(now, link, api_key, version, &body, None, Some(token));
                    (sent, Reply::CreateTopics(lost))
                }
                Err(_) => return false,
            },
            ApiKey::DeleteTopics => match DeleteTopicsRequest::decode(&mut body, version) {
                Ok(body) => {
                    let names = body
                        .topic_names
                        .iter()
                        .cloned()
                        .map(Some)
                        .chain(body.topics.iter().map(|t| t.name.clone()));
                    let lost = DeleteTopicsResponse::default().with_responses(
                        names
                            .map(|name| {
                                delete_topics_response::DeletableTopicResult::default()
                                    .with_name(name)
                                    .with_error_code(not_controller)
                            })
                            .collect(),
                    );
                    let sent =
                        self.send_peer_for(now, link, api_key, version, &body, None, Some(token));
                    (sent, Reply::DeleteTopics(lost))
                }
                Err(_) => return false,
            },
            _ => match CreatePartitionsRequest::decode(&mut body, version) {
                Ok(body) => {
                    let lost = CreatePartitionsResponse::default().with_results(
                        body.topics
                            .iter()
                            .map(|t| {
                                create_partitions_response::CreatePartitionsTopicResult::default()
                                    .with_name(t.name.clone())
                                    .with_error_code(not_controller)
                            })
                            .collect(),
                    );
                    let sent =
                        self.send_peer_for(now, link, api_key, version, &body, None, Some(token));
                    (sent, Reply::CreatePartitions(lost))
                }
                Err(_) => return false,
            },
        };
        if !sent {
            return false;
        }
        let lost = match crate::wire::encode_reply(header, &lost) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(%error, "cannot encode a forwarding's answer");
                return false;
            }
        };
        self.forwarded_lost.insert(token, lost);
        self.sessions.push(
            connection,
            Slot {
                header,
                state: SlotState::Forwarded(token),
            },
        );
        tracing::debug!(?api_key, controller = %leader, "forwarded to the controller");
        true
    }

    /// The controller answered a forwarded request: the client gets the
    /// answer with its own correlation id.
    pub(super) fn forwarded_answer(&mut self, token: Token, sent: &SentRequest, frame: Bytes) {
        let Some(lost) = self.forwarded_lost.remove(&token) else {
            return;
        };
        let Some(header) = self.sessions.header_of(token) else {
            return;
        };
        let (api_key, version) = (sent.api_key, sent.version);
        let decoded = match api_key {
            ApiKey::CreateTopics => {
                decode_response::<CreateTopicsResponse>(api_key, version, frame)
                    .map(|(_, r)| Reply::CreateTopics(r))
            }
            ApiKey::DeleteTopics => {
                decode_response::<DeleteTopicsResponse>(api_key, version, frame)
                    .map(|(_, r)| Reply::DeleteTopics(r))
            }
            _ => decode_response::<CreatePartitionsResponse>(api_key, version, frame)
                .map(|(_, r)| Reply::CreatePartitions(r)),
        };
        let answer = decoded.and_then(|reply| crate::wire::encode_reply(header, &reply));
        match answer {
            Ok(frame) => {
                self.forwarded_answers.insert(token, frame);
            }
            Err(error) => {
                tracing::warn!(%error, "bad answer from the controller to a forwarded request");
                self.forwarded_answers.insert(token, lost);
            }
        }
    }

    /// Requests lost with a link: forwarded ones are answered as lost
    /// (NOT_CONTROLLER: the client finds the controller and retries).
    pub(super) fn answer_lost_forwardings(&mut self, lost: &[SentRequest]) {
        for sent in lost {
            if let Some(token) = sent.forwarded {
                if let Some(frame) = self.forwarded_lost.remove(&token) {
                    self.forwarded_answers.insert(token, frame);
                }
            }
        }
    }

    /// Forgets forwardings whose connection closed.
    pub(super) fn forget_orphan_forwardings(&mut self) {
        if self.forwarded_lost.is_empty() && self.forwarded_answers.is_empty() {
            return;
        }
        let live = self.sessions.forwarded_tokens();
        self.forwarded_lost.retain(|token, _| live.contains(token));
        self.forwarded_answers
            .retain(|token, _| live.contains(token));
    }

    /// True once the controller unfenced this broker.
    pub fn is_unfenced(&self) -> bool {
        self.lifecycle
            .as_ref()
            .and_then(|l| l.registered)
            .is_some_and(|r| !r.fenced)
    }

    /// A link went down or was reset: a request to the controller on it is lost.
    pub(super) fn controller_link_lost(&mut self, now: Now) {
        if let Some(lifecycle) = self.lifecycle.as_mut() {
            if lifecycle.in_flight_until.take().is_some() {
                lifecycle.next_ms = now.monotonic_ms + CONTROLLER_RETRY_MS;
            }
        }
    }

    pub(super) fn cluster_invariants(&self) {
        if let Some(controller) = &self.controller {
            let replica = self
                .quorum
                .as_ref()
                .and_then(|q| q.replica())
                .expect("a controller has a replica");
            assert_eq!(controller.epoch, replica.leader_epoch());
            assert_eq!(replica.role(), Role::Leader);
        }
        if let Some(wait) = self.lifecycle.as_ref().and_then(|l| l.local.as_ref()) {
            assert!(wait.offset >= 0);
        }
    }
}

/// The slot of a controller answer: ready now, or once its records commit.
fn slot_state<T: kafka_protocol::protocol::Encodable>(
    header: ReplyHeader,
    decision: Decision<T>,
) -> Result<SlotState, String> {
    Ok(match decision {
        Decision::Now(answer) => SlotState::Ready(encode(header, &answer)?),
        Decision::AfterCommit {
            offset,
            epoch,
            answer,
            lost,
        } => SlotState::AfterCommit {
            offset,
            epoch,
            frame: encode(header, &answer)?,
            lost: encode(header, &lost)?,
        },
    })
}

fn encode<T: kafka_protocol::protocol::Encodable>(
    header: ReplyHeader,
    body: &T,
) -> Result<Bytes, String> {
    encode_reply_body(header, body)
}

/// A broker whose state changes: fenced or shutting down (`up` false), or
/// unfenced (`up`).
#[derive(Debug, Clone, Copy)]
struct BrokerChange {
    id: i32,
    up: bool,
    shutting_down: bool,
}

/// What a broker's change does to one partition, as a change record
/// without its topic and partition. Fenced: the partition it leads moves
/// to the first other ISR member on a live broker, in replica order (none
/// left: no leader, the ISR kept as Kafka keeps its last member), and it
/// leaves every ISR it is in with others. Unfenced: a leaderless partition
/// with it in its ISR gets it as leader.
///
/// With `unclean` (`unclean.leader.election.enable`), a partition left
/// with no live ISR member takes the first live replica in replica order,
/// as its only ISR member, in leader recovery state RECOVERING: Kafka's
/// unclean election, which may lose records only the old ISR had.
fn leadership_change(
    partition: &crate::image::PartitionRegistration,
    broker: BrokerChange,
    unclean: bool,
    live: impl Fn(i32) -> bool,
) -> Option<PartitionChangeRecord> {
    let id = broker.id;
    let change = |leader: i32, isr: Option<Vec<i32>>| PartitionChangeRecord {
        leader,
        isr,
        ..PartitionChangeRecord::default()
    };
    let unclean_change = |leader: i32| PartitionChangeRecord {
        leader,
        isr: Some(vec![leader]),
        leader_recovery_state: LeaderRecoveryState::Recovering.value(),
        ..PartitionChangeRecord::default()
    };
    let others: Vec<i32> = partition.isr.iter().copied().filter(|&r| r != id).collect();
    if broker.up {
        if partition.leader >= 0 || broker.shutting_down {
            return None;
        }
        if partition.isr.contains(&id) {
            return Some(change(id, None));
        }
        // No live ISR member: this broker leads if it is the first live
        // replica (the sweep asks each live broker in turn).
        let first_live = partition
            .replicas
            .iter()
            .copied()
            .find(|&r| r == id || live(r));
        let elect = unclean && !partition.isr.iter().any(|&r| live(r)) && first_live == Some(id);
        return elect.then(|| unclean_change(id));
    }
    if partition.leader == id {
        let successor = partition
            .replicas
            .iter()
            .copied()
            .find(|&r| others.contains(&r) && live(r));
        let outsider = partition.replicas.iter().copied().find(|&r| live(r));
        return Some(match (successor, outsider) {
            (Some(next), _) => change(next, Some(others)),
            (None, Some(next)) if unclean => unclean_change(next),
            (None, _) => change(PartitionChangeRecord::LEADER_NONE, None),
        });
    }
    (partition.isr.contains(&id) && !others.is_empty())
        .then(|| change(PartitionChangeRecord::LEADER_UNCHANGED, Some(others)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PartitionRegistration;

    fn partition(replicas: &[i32], isr: &[i32], leader: i32) -> PartitionRegistration {
        PartitionRegistration {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            removing_replicas: Vec::new(),
            adding_replicas: Vec::new(),
            leader,
            leader_recovery_state: LeaderRecoveryState::Recovered,
            leader_epoch: 4,
            partition_epoch: 7,
            directories: Vec::new(),
            eligible_leader_replicas: Vec::new(),
            last_known_elr: Vec::new(),
        }
    }

    fn fenced(id: i32) -> BrokerChange {
        BrokerChange {
            id,
            up: false,
            shutting_down: false,
        }
    }

    fn unfenced(id: i32) -> BrokerChange {
        BrokerChange {
            id,
            up: true,
            shutting_down: false,
        }
    }

    fn leader_and_isr(
        change: Option<PartitionChangeRecord>,
    ) -> Option<(i32, Option<Vec<i32>>, i8)> {
        change.map(|c| (c.leader, c.isr, c.leader_recovery_state))
    }

    const UNCHANGED: i8 = PartitionChangeRecord::RECOVERY_STATE_UNCHANGED;

    #[test]
    fn a_fenced_leader_hands_over_to_a_live_isr_member_whatever_the_setting() {
        let p = partition(&[1, 2, 3], &[1, 2], 1);
        let live = |r: i32| r == 2 || r == 3;
        for unclean in [false, true] {
            assert_eq!(
                leader_and_isr(leadership_change(&p, fenced(1), unclean, live)),
                Some((2, Some(vec![2]), UNCHANGED))
            );
        }
    }

    #[test]
    fn without_a_live_isr_member_only_unclean_election_picks_an_outsider() {
        // The ISR is the fenced leader alone; 3 is live, outside the ISR.
        let p = partition(&[1, 2, 3], &[1], 1);
        let live = |r: i32| r == 3;
        assert_eq!(
            leader_and_isr(leadership_change(&p, fenced(1), false, live)),
            Some((PartitionChangeRecord::LEADER_NONE, None, UNCHANGED)),
            "off: no leader, the ISR kept"
        );
        assert_eq!(
            leader_and_isr(leadership_change(&p, fenced(1), true, live)),
            Some((3, Some(vec![3]), LeaderRecoveryState::Recovering.value())),
            "on: the first live replica, alone in the ISR, recovering"
        );
    }

    #[test]
    fn a_leaderless_partition_is_taken_by_the_first_live_replica_only_when_enabled() {
        // Leaderless, its last ISR member (1) fenced; 2 and 3 come back.
        let p = partition(&[1, 3, 2], &[1], -1);
        let live = |r: i32| r == 2 || r == 3;
        for id in [2, 3] {
            assert_eq!(
                leadership_change(&p, unfenced(id), false, live),
                None,
                "off: {id} does not lead"
            );
        }
        // Replica order: 3 comes before 2.
        assert_eq!(leadership_change(&p, unfenced(2), true, live), None);
        assert_eq!(
            leader_and_isr(leadership_change(&p, unfenced(3), true, live)),
            Some((3, Some(vec![3]), LeaderRecoveryState::Recovering.value()))
        );
        // An ISR member back takes it cleanly, however the setting.
        let with_member = |r: i32| r == 1 || r == 3;
        assert_eq!(
            leadership_change(&p, unfenced(3), true, with_member),
            None,
            "a live ISR member leads, not an outsider"
        );
        assert_eq!(
            leader_and_isr(leadership_change(&p, unfenced(1), true, with_member)),
            Some((1, None, UNCHANGED))
        );
    }

    #[test]
    fn a_broker_shutting_down_never_takes_a_leadership() {
        let p = partition(&[1, 2], &[1], -1);
        let change = BrokerChange {
            id: 2,
            up: true,
            shutting_down: true,
        };
        assert_eq!(leadership_change(&p, change, true, |r| r == 2), None);
    }
}
