//! `TransactionalProducer`: Kafka transactions (transaction.version 1, as
//! Java's `TransactionManager` speaks them without KIP-890 part 2) over a
//! [`Client`].
//!
//! Each call finishes before the next starts. A `send` writes its records
//! as one batch and waits for the answer; `send_all` writes several batches
//! at once, pipelined per partition leader (`pipeline`), so a transaction
//! of many batches costs about one round trip instead of one per batch.
//! A transaction goes:
//!
//! 1. `init`: FindCoordinator (key type 1) and InitProducerId give the
//!    producer id and epoch; the epoch fences every older instance with the
//!    same transactional id, and the coordinator aborts what it left open.
//! 2. `begin`, then `send`s (or `send_all`s): before a partition's first
//!    record in the transaction, AddPartitionsToTxn tells the coordinator
//!    (one request for all the new partitions of a `send_all`); then a Produce
//!    (acks=-1) of one transactional batch (attributes bit 4, the producer
//!    id and epoch, and the partition's next sequence number) goes to the
//!    partition's leader. A retry sends the same bytes, so the leader's
//!    idempotence writes them once.
//! 3. `send_offsets`: AddOffsetsToTxn to the transaction coordinator, then
//!    TxnOffsetCommit to the group's coordinator (key type 0); the offsets
//!    become the group's committed offsets only if the transaction commits.
//! 4. `commit` or `abort`: EndTxn. The coordinator answers once its
//!    decision is durable; it then writes the markers.
//!
//! The states are Java's ([`TransactionState`]): a failed `send` or
//! `send_offsets` leaves only `abort`; a fenced producer (PRODUCER_FENCED,
//! INVALID_PRODUCER_EPOCH, INVALID_PRODUCER_ID_MAPPING, an authorization
//! failure, INVALID_TXN_STATE) can do nothing more, and a new instance must
//! `init`. A `commit` or `abort` that gave up (its deadline passed) may be
//! called again: the coordinator answers a repeated EndTxn with the same
//! result as done.
//!
//! Sequence numbers count per partition from 0 and keep growing across
//! transactions of the same epoch. A batch that failed may or may not be in
//! the log, so the sequence that follows it is unknown: the `abort` after
//! such a failure bumps the epoch (InitProducerId naming the current id and
//! epoch, KIP-360), which starts every partition's sequence again at 0.
//!
//! A request that got no answer (its connection broke, or it timed out)
//! may still arrive, late, after its retry was answered and after the
//! transaction ended. Without transaction.version 2 nothing tells it from a
//! request of the next transaction of the same epoch: a late EndTxn would
//! commit or abort that one, a late TxnOffsetCommit add its old offsets to
//! it (the flaw Jepsen found in Kafka, 2024). So a transaction in which any
//! request went unanswered ends with an epoch bump too, which fences every
//! such request; a bump that fails leaves the `commit` or `abort` to be
//! called again, which then only bumps.
//!
//! The coordinators get connections of their own, apart from the shared
//! ones that carry Produce: coordinator and leader traffic never wait on
//! each other, and a simulation can delay or reorder one against the other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey,
    EndTxnRequest, GroupId, ProduceRequest, ProducerId, TopicName, TransactionalId,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;
use sluice_core::batch::{build_transactional_batch, increment_sequence, RecordSpec};
use tokio::time::Instant;

use crate::batch::ProducerIdentity;
use crate::client::{Client, Endpoint};
use crate::config::{Clock, TransactionalConfig};
use crate::connection::Connection;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::group::member::{find_coordinator, KEY_TYPE_GROUP};
use crate::group::membership::CoordinatorNode;
use crate::producer_id::{granted, init_producer_id_request, ProducerEpoch};
use crate::record::{ProducerRecord, TopicPartition};

mod pipeline;

/// Attempts of one request before it gives up, whatever its deadline.
pub const REQUEST_ATTEMPTS_MAX: u32 = 1_000;

/// The wait before retrying the first AddPartitionsToTxn of a transaction
/// answered CONCURRENT_TRANSACTIONS, as Java's `TransactionManager` waits
/// (`ADD_PARTITIONS_RETRY_BACKOFF_MS`): the coordinator is still writing
/// the markers of the transaction before, which takes moments.
pub const FIRST_ADD_RETRY_BACKOFF_MS: u64 = 20;

/// FindCoordinator's key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;

/// The newest Produce a transactional batch goes in. From v12 on, a broker
/// with transaction.version 2 takes a Produce as adding its partition to
/// the transaction; this producer adds partitions itself, as Java does
/// without transaction.version 2, where it caps Produce at v11 too.
const TRANSACTIONAL_PRODUCE_VERSION_MAX: i16 = 11;

/// Where a transactional producer stands (Java's `TransactionManager`
/// states, without the uninitialized ones: `init` returns a ready producer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    /// No transaction open: `begin` is next.
    Ready,
    /// Between `begin` and `commit` or `abort`.
    InTransaction,
    /// `commit` is running, or gave up before the coordinator answered:
    /// only `commit` again.
    Committing,
    /// `abort` is running, or gave up before it finished: only `abort` again.
    Aborting,
    /// A `send` or `send_offsets` failed: only `abort`.
    AbortableError,
    /// Fenced or refused for good: nothing but a new `init`.
    FatalError,
}

/// The calls whose order the state governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Begin,
    Send,
    SendOffsets,
    Commit,
    Abort,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Begin => "begin",
            Operation::Send => "send",
            Operation::SendOffsets => "send_offsets",
            Operation::Commit => "commit",
            Operation::Abort => "abort",
        })
    }
}

/// Errors after which the producer can do nothing more: another instance
/// took over the transactional id, the coordinator does not know this
/// producer (any more), or it may not use the id at all.
fn is_fatal(error: &Error) -> bool {
    matches!(
        error.response_error(),
        Some(
            ResponseError::ProducerFenced
                | ResponseError::InvalidProducerEpoch
                | ResponseError::InvalidProducerIdMapping
                | ResponseError::TransactionalIdAuthorizationFailed
                | ResponseError::InvalidTxnState
        )
    )
}

/// The transaction states and the calls each allows; the sans-IO half of
/// the producer.
#[derive(Debug, Clone)]
struct Machine {
    state: TransactionState,
    /// The error that moved the producer to `AbortableError` or `FatalError`.
    cause: Option<Error>,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            state: TransactionState::Ready,
            cause: None,
        }
    }

    /// Moves to the state `operation` runs in, or refuses it.
    fn start(&mut self, operation: Operation) -> Result<()> {
        use TransactionState::*;
        let next = match (self.state, operation) {
            (Ready, Operation::Begin) => InTransaction,
            (InTransaction, Operation::Send | Operation::SendOffsets) => InTransaction,
            (InTransaction | Committing, Operation::Commit) => Committing,
            (InTransaction | AbortableError | Aborting, Operation::Abort) => Aborting,
            (state, _) => {
                return Err(Error::TransactionState {
                    operation,
                    state,
                    cause: self.cause.clone().map(Box::new),
                })
            }
        };
        self.state = next;
        Ok(())
    }

    /// The running call succeeded: a commit or an abort ends the transaction.
    fn succeed(&mut self) {
        if matches!(
            self.state,
            TransactionState::Committing | TransactionState::Aborting
        ) {
            self.state = TransactionState::Ready;
            self.cause = None;
        }
    }

    /// The producer can go on no more after a call that succeeded: only a
    /// new instance may use the transactional id.
    fn fence(&mut self, cause: Error) {
        self.state = TransactionState::FatalError;
        self.cause = Some(cause);
    }

    /// The running call failed with `error`. Within a transaction any
    /// failure leaves only an abort; a commit or abort that gave up may be
    /// called again, one that was refused cannot be.
    fn fail(&mut self, error: &Error) {
        use TransactionState::*;
        let next = match self.state {
            _ if is_fatal(error) => FatalError,
            InTransaction | AbortableError => AbortableError,
            Committing | Aborting if error.is_retriable() => self.state,
            Committing | Aborting => FatalError,
            state @ (Ready | FatalError) => state,
        };
        if next != self.state || next == AbortableError || next == FatalError {
            self.cause = Some(error.clone());
        }
        self.state = next;
    }
}

/// A deadline for one call's retries.
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: Instant,
    budget_ms: u64,
    /// The wait after CONCURRENT_TRANSACTIONS, when shorter than the
    /// client's backoff.
    concurrent_backoff_ms: Option<u64>,
}

impl Budget {
    fn new(budget_ms: u64) -> Budget {
        Budget {
            deadline: Instant::now() + Duration::from_millis(budget_ms),
            budget_ms,
            concurrent_backoff_ms: None,
        }
    }

    /// The same deadline, retrying CONCURRENT_TRANSACTIONS after
    /// `backoff_ms` (at most the client's backoff).
    fn with_concurrent_backoff_ms(self, backoff_ms: u64) -> Budget {
        Budget {
            concurrent_backoff_ms: Some(backoff_ms),
            ..self
        }
    }

    /// Waits the client's backoff before attempt `attempt + 1`, or gives up
    /// (the wait would pass the deadline, or the attempts are used up) with
    /// a timeout naming the last error.
    async fn pause<C: Connector>(
        &self,
        client: &Client<C>,
        attempt: u32,
        error: Error,
        what: &str,
    ) -> Result<()> {
        let mut pause_ms = client.retry_backoff_ms(attempt);
        if error.response_error() == Some(ResponseError::ConcurrentTransactions) {
            pause_ms = pause_ms.min(self.concurrent_backoff_ms.unwrap_or(u64::MAX));
        }
        let pause = Duration::from_millis(pause_ms);
        if attempt >= REQUEST_ATTEMPTS_MAX || Instant::now() + pause >= self.deadline {
            return Err(Error::Timeout {
                what: format!("{what} (last error: {error})"),
                after_ms: self.budget_ms,
            });
        }
        tracing::debug!(%error, attempt, what, "transactional request failed; retrying");
        tokio::time::sleep(pause).await;
        Ok(())
    }
}

/// A coordinator (of the transactional id, or of a group) and the
/// producer's own connection to it.
struct CoordinatorLink {
    key_type: i8,
    key: String,
    held: Option<(CoordinatorNode, Arc<Connection>)>,
}

impl CoordinatorLink {
    fn new(key_type: i8, key: &str) -> CoordinatorLink {
        CoordinatorLink {
            key_type,
            key: key.to_string(),
            held: None,
        }
    }

    /// The connection to the coordinator, finding it first if it is not
    /// known or the connection closed. One attempt; callers retry.
    async fn connection<C: Connector>(&mut self, client: &Client<C>) -> Result<Arc<Connection>> {
        if let Some((_, connection)) = self.held.as_ref().filter(|(_, c)| c.is_open()) {
            return Ok(connection.clone());
        }
        self.held = None;
        let context = format!("find the coordinator of {}", self.key);
        let node = find_coordinator(client, self.key_type, &self.key, &context).await?;
        let connection = Arc::new(client.open_dedicated(&node.address()).await?);
        tracing::debug!(key = %self.key, coordinator = node.node_id, "found the coordinator");
        self.held = Some((node, connection.clone()));
        Ok(connection)
    }

    /// Forgets the coordinator: the next request finds it again.
    fn lost(&mut self, reason: &str) {
        if let Some((node, connection)) = self.held.take() {
            tracing::debug!(key = %self.key, coordinator = node.node_id, reason, "coordinator lost");
            connection.close(reason);
        }
    }
}

/// Sends a request to a coordinator until it is answered without an error
/// (`code` reads the answer's first one), retrying lost connections,
/// coordinator moves (finding it again), COORDINATOR_LOAD_IN_PROGRESS,
/// CONCURRENT_TRANSACTIONS and other retriable errors within `budget`.
/// Other errors come back at once.
///
/// A request sent without an answer (it may still arrive) sets `unanswered`.
async fn coordinator_request<C: Connector, R: Request>(
    client: &Client<C>,
    link: &mut CoordinatorLink,
    budget: Budget,
    what: &str,
    unanswered: &AtomicBool,
    build: impl Fn(i16) -> R,
    code: impl Fn(&R::Response) -> i16,
) -> Result<R::Response> {
    let api = ApiKey::try_from(R::KEY).expect("every request type has a known key");
    let mut attempt = 1;
    loop {
        let sent = async {
            let connection = link.connection(client).await?;
            let version = connection.version(api)?;
            let timeout_ms = client.request_timeout_ms();
            let answer = connection.send(&build(version), version, timeout_ms).await;
            if answer.is_err() {
                unanswered.store(true, Ordering::SeqCst);
            }
            answer
        }
        .await;
        let error = match sent {
            Ok(response) => match ResponseError::try_from_code(code(&response)) {
                None => return Ok(response),
                Some(
                    error
                    @ (ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable),
                ) => {
                    link.lost(&format!("answered {error:?}"));
                    Error::broker(error, what)
                }
                Some(
                    error @ (ResponseError::CoordinatorLoadInProgress
                    | ResponseError::ConcurrentTransactions),
                ) => Error::broker(error, what),
                Some(error) if error.is_retriable() => Error::broker(error, what),
                Some(error) => return Err(Error::broker(error, what)),
            },
            Err(error) if error.is_retriable() => {
                link.lost(&error.to_string());
                error
            }
            Err(error) => return Err(error),
        };
        budget.pause(client, attempt, error, what).await?;
        attempt += 1;
    }
}

/// A transactional producer; see the module documentation.
pub struct TransactionalProducer<C: Connector> {
    client: Client<C>,
    config: TransactionalConfig,
    clock: Clock,
    producer_id: i64,
    producer_epoch: i16,
    machine: Machine,
    coordinator: CoordinatorLink,
    /// The coordinator of the group offsets were last sent for.
    group_coordinator: Option<CoordinatorLink>,
    /// The next sequence number per partition, for this id and epoch.
    sequences: BTreeMap<TopicPartition, i32>,
    /// Partitions the coordinator has added to the open transaction.
    partitions: BTreeSet<TopicPartition>,
    /// An add (partitions or offsets) was sent in this transaction, so the
    /// coordinator may hold it open.
    add_sent: bool,
    /// An add was answered, so the coordinator holds it open.
    add_answered: bool,
    /// A produce failed after it may have been written: the next abort
    /// bumps the epoch so that sequence numbers start again.
    epoch_bump_required: bool,
    /// A request of this epoch got no answer and may still arrive: the
    /// transaction's end bumps the epoch to fence it.
    unanswered: AtomicBool,
}

impl<C: Connector> TransactionalProducer<C> {
    /// Finds the transaction coordinator and gets a producer id and epoch
    /// (InitProducerId), fencing any older instance with the same
    /// transactional id. Retries coordinator errors and
    /// CONCURRENT_TRANSACTIONS (the coordinator is still aborting what an
    /// older instance left open) for up to `config.max_block_ms`. `clock`
    /// stamps records that carry no timestamp.
    pub async fn init(
        client: Client<C>,
        config: TransactionalConfig,
        clock: Clock,
    ) -> Result<TransactionalProducer<C>> {
        config.validate()?;
        let coordinator = CoordinatorLink::new(KEY_TYPE_TRANSACTION, &config.transactional_id);
        let mut producer = TransactionalProducer {
            client,
            config,
            clock,
            producer_id: -1,
            producer_epoch: -1,
            machine: Machine::new(),
            coordinator,
            group_coordinator: None,
            sequences: BTreeMap::new(),
            partitions: BTreeSet::new(),
            add_sent: false,
            add_answered: false,
            epoch_bump_required: false,
            unanswered: AtomicBool::new(false),
        };
        let budget = Budget::new(producer.config.max_block_ms);
        producer.init_producer_id(false, budget).await?;
        Ok(producer)
    }

    pub fn transactional_id(&self) -> &str {
        &self.config.transactional_id
    }

    /// The producer id the coordinator gave this instance.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The current epoch: set by `init`, bumped by an abort after a failed
    /// send.
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }

    pub fn state(&self) -> TransactionState {
        self.machine.state
    }

    /// True when a request of the current epoch went unanswered, so it
    /// may still arrive (the epoch bump at the transaction's end fences it;
    /// until then, a refused commit may have committed on an earlier try).
    pub fn has_unanswered_requests(&self) -> bool {
        self.unanswered.load(Ordering::SeqCst)
    }

    pub fn client(&self) -> &Client<C> {
        &self.client
    }

    /// Opens a transaction (nothing is sent until the first `send` or
    /// `send_offsets`).
    pub fn begin(&mut self) -> Result<()> {
        self.machine.start(Operation::Begin)?;
        self.partitions.clear();
        self.add_sent = false;
        self.add_answered = false;
        Ok(())
    }

    /// Writes `records` to `tp` as one transactional batch and returns the
    /// offset of the first (-1 if the leader answered a retry as a
    /// duplicate without one). The records' own topic and partition, if
    /// set, must be `tp`'s. Retries for up to `config.delivery_timeout_ms`;
    /// a failure leaves only `abort`.
    pub async fn send(&mut self, tp: &TopicPartition, records: &[ProducerRecord]) -> Result<i64> {
        self.machine.start(Operation::Send)?;
        check_records(tp, records)?;
        self.check_partition(tp).await?;
        let result = self.send_in_transaction(tp, records).await;
        if let Err(error) = &result {
            self.machine.fail(error);
        }
        result
    }

    /// Writes each `(partition, records)` pair as one transactional batch,
    /// as `send` does, and returns the offset of each batch's first record
    /// (-1 for a retry the leader answered as a duplicate without one).
    /// The new partitions are added with one AddPartitionsToTxn, and the
    /// batches go out at once, pipelined per leader (see `pipeline`);
    /// those that fail are retried one by one, in order, with the same
    /// bytes, for up to `config.delivery_timeout_ms`. A failure leaves
    /// only `abort`.
    pub async fn send_all(
        &mut self,
        batches: &[(TopicPartition, Vec<ProducerRecord>)],
    ) -> Result<Vec<i64>> {
        self.machine.start(Operation::Send)?;
        for (tp, records) in batches {
            check_records(tp, records)?;
            self.check_partition(tp).await?;
        }
        let result = self.send_all_in_transaction(batches).await;
        if let Err(error) = &result {
            self.machine.fail(error);
        }
        result
    }

    /// Adds the group's offsets to the transaction: they become its
    /// committed offsets if the transaction commits, and are dropped if it
    /// aborts. The commit carries no member id or generation (Kafka accepts
    /// that even from outside the group). Retries for up to
    /// `config.max_block_ms`; a failure leaves only `abort`.
    pub async fn send_offsets(
        &mut self,
        group_id: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        self.machine.start(Operation::SendOffsets)?;
        if group_id.is_empty() {
            return Err(Error::Config("a group id must not be empty".into()));
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let result = self.send_offsets_in_transaction(group_id, offsets).await;
        if let Err(error) = &result {
            self.machine.fail(error);
        }
        result
    }

    /// Commits the transaction (EndTxn). Answered NONE, it is committed:
    /// the markers follow. If it gives up (retriable errors past
    /// `config.max_block_ms`) the outcome is unknown and `commit` may be
    /// called again.
    ///
    /// When the epoch bump that fences the transaction's unanswered
    /// requests fails after the commit (see the module documentation), the
    /// commit still holds and this returns Ok, but the producer can go on
    /// no more (`FatalError`): a new instance must `init`.
    pub async fn commit(&mut self) -> Result<()> {
        self.end(true).await
    }

    /// Aborts the transaction (EndTxn), after a failed call too. If a send
    /// failed, the epoch is bumped afterwards (see the module
    /// documentation). If it gives up, `abort` may be called again.
    pub async fn abort(&mut self) -> Result<()> {
        self.end(false).await
    }

    async fn end(&mut self, commit: bool) -> Result<()> {
        self.machine.start(if commit {
            Operation::Commit
        } else {
            Operation::Abort
        })?;
        let budget = Budget::new(self.config.max_block_ms);
        if let Err(error) = self.end_transaction(commit, budget).await {
            self.machine.fail(&error);
            return Err(error);
        }
        let unanswered = self.unanswered.load(Ordering::SeqCst);
        if (!commit && self.epoch_bump_required) || unanswered {
            if let Err(error) = self.init_producer_id(true, budget).await {
                if !commit {
                    // Called again, the abort only bumps.
                    self.machine.fail(&error);
                    return Err(error);
                }
                // Committed all the same; this epoch is left to the
                // unanswered requests, so a new instance must take over.
                self.machine.succeed();
                self.partitions.clear();
                self.machine.fence(error);
                return Ok(());
            }
        }
        self.machine.succeed();
        self.partitions.clear();
        Ok(())
    }

    /// EndTxn, when the transaction added anything.
    async fn end_transaction(&mut self, commit: bool, budget: Budget) -> Result<()> {
        // A transaction that added nothing is not open at the coordinator.
        if self.add_sent {
            let (id, producer_id, epoch) = self.identity();
            let what = format!(
                "{} the transaction of {}",
                if commit { "commit" } else { "abort" },
                id.0
            );
            let ended = coordinator_request(
                &self.client,
                &mut self.coordinator,
                budget,
                &what,
                &self.unanswered,
                |_| {
                    EndTxnRequest::default()
                        .with_transactional_id(id.clone())
                        .with_producer_id(ProducerId(producer_id))
                        .with_producer_epoch(epoch)
                        .with_committed(commit)
                },
                |response| response.error_code,
            )
            .await;
            match ended {
                Ok(_) => {}
                // The only add sent got no answer and never arrived: there
                // is nothing open to abort.
                Err(error)
                    if !commit
                        && !self.add_answered
                        && error.response_error() == Some(ResponseError::InvalidTxnState) => {}
                Err(error) => return Err(error),
            }
            self.add_sent = false;
            self.add_answered = false;
        }
        Ok(())
    }

    /// InitProducerId: a new epoch for this transactional id, or with
    /// `bump` a new epoch of the current producer id and epoch (KIP-360).
    /// Sequences start again at 0.
    async fn init_producer_id(&mut self, bump: bool, budget: Budget) -> Result<()> {
        let (id, producer_id, epoch) = self.identity();
        let current = bump.then_some(ProducerEpoch { producer_id, epoch });
        let timeout_ms = self.config.transaction_timeout_ms;
        let what = format!("initialize the producer of {}", id.0);
        // Below v3 the request cannot name the producer, and a bump fails
        // to encode: an abort that needs one then fails for good.
        let response = coordinator_request(
            &self.client,
            &mut self.coordinator,
            budget,
            &what,
            &self.unanswered,
            |_| init_producer_id_request(Some(id.clone()), timeout_ms, current),
            |response| response.error_code,
        )
        .await?;
        let producer = granted(&response, "the transaction coordinator")?;
        self.producer_id = producer.producer_id;
        self.producer_epoch = producer.epoch;
        self.sequences.clear();
        self.epoch_bump_required = false;
        self.unanswered.store(false, Ordering::SeqCst);
        tracing::debug!(
            transactional_id = %self.config.transactional_id,
            producer_id = self.producer_id,
            epoch = self.producer_epoch,
            "producer initialized"
        );
        Ok(())
    }

    fn identity(&self) -> (TransactionalId, i64, i16) {
        let id = TransactionalId(StrBytes::from_string(self.config.transactional_id.clone()));
        (id, self.producer_id, self.producer_epoch)
    }

    /// Refuses a partition its topic does not have.
    async fn check_partition(&self, tp: &TopicPartition) -> Result<()> {
        let topic = self.client.topic(&tp.topic).await?;
        if topic.partition(tp.partition).is_none() {
            return Err(Error::UnknownPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                partitions: topic.partition_count(),
            });
        }
        Ok(())
    }

    async fn send_all_in_transaction(
        &mut self,
        batches: &[(TopicPartition, Vec<ProducerRecord>)],
    ) -> Result<Vec<i64>> {
        let budget = Budget::new(self.config.delivery_timeout_ms);
        let new: BTreeSet<TopicPartition> = batches
            .iter()
            .map(|(tp, _)| tp)
            .filter(|tp| !self.partitions.contains(*tp))
            .cloned()
            .collect();
        if !new.is_empty() {
            let new: Vec<TopicPartition> = new.into_iter().collect();
            self.add_partitions(&new, budget).await?;
            self.partitions.extend(new);
        }
        let mut sequences = self.sequences.clone();
        let encoded: Vec<pipeline::Encoded> = batches
            .iter()
            .map(|(tp, records)| {
                let sequence = sequences.get(tp).copied().unwrap_or(0);
                let identity = ProducerIdentity {
                    producer_id: self.producer_id,
                    producer_epoch: self.producer_epoch,
                    base_sequence: sequence,
                };
                let count = i32::try_from(records.len()).expect("checked by check_records");
                sequences.insert(tp.clone(), increment_sequence(sequence, count));
                pipeline::Encoded {
                    tp: tp.clone(),
                    bytes: Bytes::from(build_batch(records, identity, &self.clock)),
                }
            })
            .collect();
        let (id, _, _) = self.identity();
        let first = pipeline::send_once(&self.client, &id, &encoded, &self.unanswered).await;
        let mut offsets = Vec::with_capacity(encoded.len());
        // Partitions with a batch that failed the first time: the leader
        // refuses the batches after it until it is written.
        let mut behind_a_failure = BTreeSet::new();
        for (batch, outcome) in encoded.iter().zip(first) {
            let offset = match outcome {
                Some(Ok(offset)) => offset,
                None => match self.produce(&batch.tp, batch.bytes.clone(), budget).await {
                    Ok(offset) => offset,
                    Err(error) => {
                        self.epoch_bump_required = true;
                        return Err(error);
                    }
                },
                Some(Err(error)) => {
                    let out_of_order =
                        error.response_error() == Some(ResponseError::OutOfOrderSequenceNumber);
                    let explained = out_of_order && behind_a_failure.contains(&batch.tp);
                    let retried = if error.is_retriable() || explained {
                        behind_a_failure.insert(batch.tp.clone());
                        self.produce(&batch.tp, batch.bytes.clone(), budget).await
                    } else {
                        Err(error)
                    };
                    match retried {
                        Ok(offset) => offset,
                        Err(error) => {
                            self.epoch_bump_required = true;
                            return Err(error);
                        }
                    }
                }
            };
            offsets.push(offset);
        }
        self.sequences = sequences;
        Ok(offsets)
    }

    async fn send_in_transaction(
        &mut self,
        tp: &TopicPartition,
        records: &[ProducerRecord],
    ) -> Result<i64> {
        let budget = Budget::new(self.config.delivery_timeout_ms);
        if !self.partitions.contains(tp) {
            self.add_partitions(std::slice::from_ref(tp), budget)
                .await?;
            self.partitions.insert(tp.clone());
        }
        let sequence = self.sequences.get(tp).copied().unwrap_or(0);
        let identity = ProducerIdentity {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: sequence,
        };
        let batch = Bytes::from(build_batch(records, identity, &self.clock));
        match self.produce(tp, batch, budget).await {
            Ok(offset) => {
                let count = i32::try_from(records.len()).expect("checked by check_records");
                self.sequences
                    .insert(tp.clone(), increment_sequence(sequence, count));
                Ok(offset)
            }
            Err(error) => {
                self.epoch_bump_required = true;
                Err(error)
            }
        }
    }

    /// AddPartitionsToTxn for `tps`, in one request.
    async fn add_partitions(&mut self, tps: &[TopicPartition], budget: Budget) -> Result<()> {
        let budget = if self.partitions.is_empty() {
            budget.with_concurrent_backoff_ms(FIRST_ADD_RETRY_BACKOFF_MS)
        } else {
            budget
        };
        let (id, producer_id, epoch) = self.identity();
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in tps {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let topics: Vec<AddPartitionsToTxnTopic> = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                AddPartitionsToTxnTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions)
            })
            .collect();
        let named: Vec<String> = tps.iter().map(ToString::to_string).collect();
        let what = format!("add {} to the transaction of {}", named.join(", "), id.0);
        self.add_sent = true;
        let response = coordinator_request(
            &self.client,
            &mut self.coordinator,
            budget,
            &what,
            &self.unanswered,
            |_| {
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(id.clone())
                    .with_v3_and_below_producer_id(ProducerId(producer_id))
                    .with_v3_and_below_producer_epoch(epoch)
                    .with_v3_and_below_topics(topics.clone())
            },
            add_partitions_code,
        )
        .await?;
        let answered = |tp: &TopicPartition| {
            response.results_by_topic_v3_and_below.iter().any(|topic| {
                topic.name.0.as_str() == tp.topic
                    && topic
                        .results_by_partition
                        .iter()
                        .any(|p| p.partition_index == tp.partition)
            })
        };
        if let Some(missing) = tps.iter().find(|tp| !answered(tp)) {
            return Err(Error::Protocol {
                address: "the transaction coordinator".into(),
                detail: format!("the AddPartitionsToTxn answer does not mention {missing}"),
            });
        }
        self.add_answered = true;
        Ok(())
    }

    /// Produces `batch` to the leader of `tp`, sending the same bytes again
    /// after retriable errors (refreshing metadata when they say the
    /// leader moved) within `budget`.
    async fn produce(&self, tp: &TopicPartition, batch: Bytes, budget: Budget) -> Result<i64> {
        let what = format!("produce to {tp}");
        let mut attempt = 1;
        loop {
            let error = match self.produce_once(tp, &batch).await {
                Ok(offset) => return Ok(offset),
                Err(error) if !error.is_retriable() => return Err(error),
                Err(error) => error,
            };
            if error.invalidates_metadata() {
                if let Err(refresh) = self
                    .client
                    .refresh_topics(std::slice::from_ref(&tp.topic))
                    .await
                {
                    tracing::debug!(%refresh, "metadata refresh failed");
                }
            }
            budget.pause(&self.client, attempt, error, &what).await?;
            attempt += 1;
        }
    }

    async fn produce_once(&self, tp: &TopicPartition, batch: &Bytes) -> Result<i64> {
        let Some(leader) = self.client.leader_of(tp) else {
            return Err(Error::broker(
                ResponseError::LeaderNotAvailable,
                format!("leader of {tp}"),
            ));
        };
        let connection = self.client.connection(Endpoint::Broker(leader)).await?;
        let version = connection
            .version(ApiKey::Produce)?
            .min(TRANSACTIONAL_PRODUCE_VERSION_MAX);
        let timeout_ms = self.client.request_timeout_ms();
        let partition = PartitionProduceData::default()
            .with_index(tp.partition)
            .with_records(Some(batch.clone()));
        let request = ProduceRequest::default()
            .with_transactional_id(Some(self.identity().0))
            .with_acks(-1)
            .with_timeout_ms(i32::try_from(timeout_ms).unwrap_or(i32::MAX))
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(&tp.topic))
                .with_partition_data(vec![partition])]);
        let response = connection
            .send(&request, version, timeout_ms)
            .await
            .inspect_err(|_| self.unanswered.store(true, Ordering::SeqCst))?;
        pipeline::partition_outcome(connection.address(), &response, tp)
    }

    async fn send_offsets_in_transaction(
        &mut self,
        group_id: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        let budget = Budget::new(self.config.max_block_ms);
        let (id, producer_id, epoch) = self.identity();
        let group = GroupId(StrBytes::from_string(group_id.to_string()));
        let what = format!("add the offsets of group {group_id} to the transaction");
        self.add_sent = true;
        coordinator_request(
            &self.client,
            &mut self.coordinator,
            budget,
            &what,
            &self.unanswered,
            |_| {
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(id.clone())
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(epoch)
                    .with_group_id(group.clone())
            },
            |response| response.error_code,
        )
        .await?;
        self.add_answered = true;
        let link = match &mut self.group_coordinator {
            Some(link) if link.key == group_id => link,
            other => other.insert(CoordinatorLink::new(KEY_TYPE_GROUP, group_id)),
        };
        let topics = offset_topics(offsets);
        let what = format!("commit offsets of group {group_id} in the transaction");
        let response = coordinator_request(
            &self.client,
            link,
            budget,
            &what,
            &self.unanswered,
            |_| {
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(id.clone())
                    .with_group_id(group.clone())
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(epoch)
                    .with_generation_id(-1)
                    .with_member_id(StrBytes::default())
                    .with_topics(topics.clone())
            },
            txn_offset_commit_code,
        )
        .await?;
        check_offsets_answered(&response, offsets)
    }
}

/// Refuses records a send cannot carry: none, too many for a batch, or
/// naming another topic or partition than `tp`.
fn check_records(tp: &TopicPartition, records: &[ProducerRecord]) -> Result<()> {
    if records.is_empty() {
        return Err(Error::InvalidRecords(
            "a send needs at least one record".into(),
        ));
    }
    if i32::try_from(records.len()).is_err() {
        return Err(Error::InvalidRecords(format!(
            "{} records do not fit one batch",
            records.len()
        )));
    }
    let elsewhere = records
        .iter()
        .find(|r| r.topic != tp.topic || r.partition.is_some_and(|p| p != tp.partition));
    if let Some(record) = elsewhere {
        return Err(Error::InvalidRecords(format!(
            "a record for topic {} partition {:?} sent to {tp}",
            record.topic, record.partition
        )));
    }
    Ok(())
}

/// One transactional batch of `records`; those without a timestamp get
/// the clock's (read once).
fn build_batch(records: &[ProducerRecord], identity: ProducerIdentity, clock: &Clock) -> Vec<u8> {
    let mut now_ms = None;
    let timestamps: Vec<i64> = records
        .iter()
        .map(|r| {
            r.timestamp_ms
                .unwrap_or_else(|| *now_ms.get_or_insert_with(|| clock()))
        })
        .collect();
    let base_timestamp = timestamps[0];
    let specs: Vec<RecordSpec<'_>> = records
        .iter()
        .zip(&timestamps)
        .map(|(record, &timestamp_ms)| {
            let headers = record
                .headers
                .iter()
                .map(|h| (&h.key[..], h.value.as_deref()))
                .collect();
            (
                record.key.as_deref(),
                record.value.as_deref(),
                headers,
                timestamp_ms.wrapping_sub(base_timestamp),
            )
        })
        .collect();
    build_transactional_batch(base_timestamp, identity, &specs)
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// The first error of an AddPartitionsToTxn answer (v0-3): a partition's
/// own error before OPERATION_NOT_ATTEMPTED, which only says another
/// partition failed.
fn add_partitions_code(response: &AddPartitionsToTxnResponse) -> i16 {
    let codes = response
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|topic| topic.results_by_partition.iter())
        .map(|p| p.partition_error_code)
        .filter(|&code| code != 0);
    let not_attempted = ResponseError::OperationNotAttempted.code();
    let mut first = 0;
    for code in codes {
        if code != not_attempted {
            return code;
        }
        first = code;
    }
    first
}

fn txn_offset_commit_code(response: &TxnOffsetCommitResponse) -> i16 {
    response
        .topics
        .iter()
        .flat_map(|topic| topic.partitions.iter())
        .map(|p| p.error_code)
        .find(|&code| code != 0)
        .unwrap_or(0)
}

fn offset_topics(offsets: &[(TopicPartition, i64)]) -> Vec<TxnOffsetCommitRequestTopic> {
    let mut by_topic: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
    for (tp, offset) in offsets {
        by_topic.entry(&tp.topic).or_default().push(
            TxnOffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::default())),
        );
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            TxnOffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(partitions)
        })
        .collect()
}

fn check_offsets_answered(
    response: &TxnOffsetCommitResponse,
    offsets: &[(TopicPartition, i64)],
) -> Result<()> {
    let answered: BTreeSet<(&str, i32)> = response
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |p| (topic.name.0.as_str(), p.partition_index))
        })
        .collect();
    match offsets
        .iter()
        .find(|(tp, _)| !answered.contains(&(tp.topic.as_str(), tp.partition)))
    {
        Some((tp, _)) => Err(Error::Protocol {
            address: "the group coordinator".into(),
            detail: format!("the TxnOffsetCommit answer does not mention {tp}"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransactionState::*;

    const OPERATIONS: [Operation; 5] = [
        Operation::Begin,
        Operation::Send,
        Operation::SendOffsets,
        Operation::Commit,
        Operation::Abort,
    ];

    fn machine_in(state: TransactionState) -> Machine {
        Machine { state, cause: None }
    }

    fn fenced() -> Error {
        Error::broker(ResponseError::ProducerFenced, "end the transaction")
    }

    fn timed_out() -> Error {
        Error::Timeout {
            what: "commit".into(),
            after_ms: 10,
        }
    }

    #[test]
    fn each_state_allows_only_its_calls() {
        let allowed = |state, operation| match (state, operation) {
            (Ready, Operation::Begin) => Some(InTransaction),
            (InTransaction, Operation::Send | Operation::SendOffsets) => Some(InTransaction),
            (InTransaction | Committing, Operation::Commit) => Some(Committing),
            (InTransaction | Aborting | AbortableError, Operation::Abort) => Some(Aborting),
            _ => None,
        };
        let states = [
            Ready,
            InTransaction,
            Committing,
            Aborting,
            AbortableError,
            FatalError,
        ];
        for state in states {
            for operation in OPERATIONS {
                let mut machine = machine_in(state);
                let result = machine.start(operation);
                match allowed(state, operation) {
                    Some(next) => {
                        assert!(result.is_ok(), "{operation} in {state:?}");
                        assert_eq!(machine.state, next, "{operation} in {state:?}");
                    }
                    None => {
                        let refused = matches!(
                            result,
                            Err(Error::TransactionState { operation: o, state: s, .. })
                                if o == operation && s == state
                        );
                        assert!(refused, "{operation} in {state:?}: {result:?}");
                        assert_eq!(machine.state, state, "a refusal changes nothing");
                    }
                }
            }
        }
    }

    #[test]
    fn a_failed_send_leaves_only_abort_and_names_its_cause() {
        let mut machine = Machine::new();
        machine.start(Operation::Begin).unwrap();
        machine.start(Operation::Send).unwrap();
        let cause = Error::broker(ResponseError::NotEnoughReplicas, "produce to t-0");
        machine.fail(&cause);
        assert_eq!(machine.state, AbortableError);
        for operation in [Operation::Send, Operation::SendOffsets, Operation::Commit] {
            match machine.start(operation) {
                Err(Error::TransactionState {
                    cause: Some(cause), ..
                }) => assert_eq!(
                    cause.response_error(),
                    Some(ResponseError::NotEnoughReplicas)
                ),
                other => panic!("{operation} after a failed send: {other:?}"),
            }
        }
        machine.start(Operation::Abort).unwrap();
        machine.succeed();
        assert_eq!(machine.state, Ready);
        assert!(machine.cause.is_none(), "an abort clears the cause");
        machine.start(Operation::Begin).unwrap();
    }

    #[test]
    fn fencing_is_fatal_from_every_call() {
        for fatal in [
            ResponseError::ProducerFenced,
            ResponseError::InvalidProducerEpoch,
            ResponseError::InvalidProducerIdMapping,
            ResponseError::TransactionalIdAuthorizationFailed,
        ] {
            for (operation, from) in [
                (Operation::Send, InTransaction),
                (Operation::SendOffsets, InTransaction),
                (Operation::Commit, InTransaction),
                (Operation::Abort, AbortableError),
            ] {
                let mut machine = machine_in(from);
                machine.start(operation).unwrap();
                machine.fail(&Error::broker(fatal, "x"));
                assert_eq!(machine.state, FatalError, "{fatal:?} in {operation}");
                for operation in OPERATIONS {
                    assert!(
                        machine.start(operation).is_err(),
                        "{operation} after {fatal:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_commit_that_gave_up_may_be_repeated_but_not_turned_into_an_abort() {
        let mut machine = machine_in(InTransaction);
        machine.start(Operation::Commit).unwrap();
        machine.fail(&timed_out());
        assert_eq!(machine.state, Committing);
        assert!(machine.start(Operation::Abort).is_err());
        assert!(machine.start(Operation::Begin).is_err());
        machine.start(Operation::Commit).unwrap();
        machine.succeed();
        assert_eq!(machine.state, Ready);
    }

    #[test]
    fn an_abort_that_gave_up_may_be_repeated() {
        let mut machine = machine_in(AbortableError);
        machine.start(Operation::Abort).unwrap();
        machine.fail(&timed_out());
        assert_eq!(machine.state, Aborting);
        assert!(machine.start(Operation::Commit).is_err());
        machine.start(Operation::Abort).unwrap();
        machine.succeed();
        assert_eq!(machine.state, Ready);
    }

    #[test]
    fn a_fenced_producer_refuses_the_next_transaction_and_names_why() {
        let mut machine = machine_in(TransactionState::Committing);
        machine.succeed();
        machine.fence(timed_out());
        assert_eq!(machine.state, TransactionState::FatalError);
        let refused = machine.start(Operation::Begin).expect_err("fenced");
        assert!(
            matches!(&refused, Error::TransactionState { cause: Some(cause), .. } if matches!(**cause, Error::Timeout { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_refused_commit_is_fatal() {
        let mut machine = machine_in(InTransaction);
        machine.start(Operation::Commit).unwrap();
        machine.fail(&Error::broker(ResponseError::UnknownServerError, "commit"));
        assert_eq!(machine.state, FatalError);
        let mut machine = machine_in(InTransaction);
        machine.start(Operation::Commit).unwrap();
        machine.fail(&fenced());
        assert_eq!(machine.state, FatalError);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_transactions_is_retried_soon_only_where_asked() {
        let config = crate::config::ClientConfig::new(["127.0.0.1:1"]);
        let client = Client::new(crate::connector::TokioConnector, config).unwrap();
        let concurrent = Error::broker(ResponseError::ConcurrentTransactions, "add");
        let other = Error::broker(ResponseError::CoordinatorLoadInProgress, "add");
        let waited = |budget: Budget, error: Error| {
            let client = client.clone();
            async move {
                let started = Instant::now();
                budget.pause(&client, 1, error, "add").await.unwrap();
                started.elapsed()
            }
        };
        let soon = Budget::new(10_000).with_concurrent_backoff_ms(FIRST_ADD_RETRY_BACKOFF_MS);
        assert_eq!(
            waited(soon, concurrent.clone()).await,
            Duration::from_millis(FIRST_ADD_RETRY_BACKOFF_MS)
        );
        let backoff_ms = client.config().retry_backoff_ms;
        let least = Duration::from_millis(backoff_ms / 2);
        assert!(
            waited(soon, other).await >= least,
            "other errors wait as usual"
        );
        assert!(
            waited(Budget::new(10_000), concurrent).await >= least,
            "elsewhere CONCURRENT_TRANSACTIONS waits as usual"
        );
    }

    #[test]
    fn records_must_name_the_partition_they_are_sent_to() {
        let tp = TopicPartition::new("t", 1);
        assert!(check_records(&tp, &[]).is_err());
        assert!(check_records(&tp, &[ProducerRecord::new("t", "v")]).is_ok());
        let here = ProducerRecord::new("t", "v").with_partition(1);
        assert!(check_records(&tp, &[here]).is_ok());
        let other_partition = ProducerRecord::new("t", "v").with_partition(0);
        assert!(check_records(&tp, &[other_partition]).is_err());
        assert!(check_records(&tp, &[ProducerRecord::new("u", "v")]).is_err());
    }

    #[test]
    fn an_add_partitions_answer_reports_the_real_error_before_not_attempted() {
        use kafka_protocol::messages::add_partitions_to_txn_response::{
            AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
        };
        let result = |partition, error: Option<ResponseError>| {
            AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(partition)
                .with_partition_error_code(error.map_or(0, |e| e.code()))
        };
        let response = |results| {
            AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(vec![
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic_name("t"))
                    .with_results_by_partition(results),
            ])
        };
        let not_attempted = Some(ResponseError::OperationNotAttempted);
        let unknown = Some(ResponseError::UnknownTopicOrPartition);
        assert_eq!(add_partitions_code(&response(vec![result(0, None)])), 0);
        assert_eq!(
            add_partitions_code(&response(vec![
                result(0, not_attempted),
                result(1, unknown)
            ])),
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert_eq!(
            add_partitions_code(&response(vec![result(0, not_attempted)])),
            ResponseError::OperationNotAttempted.code()
        );
    }

    #[test]
    fn a_batch_carries_the_transaction_and_the_records() {
        let identity = ProducerIdentity {
            producer_id: 7,
            producer_epoch: 3,
            base_sequence: 12,
        };
        let records = [
            ProducerRecord::new("t", "a").with_key("k"),
            ProducerRecord::new("t", "b")
                .with_timestamp_ms(990)
                .with_header("h", "x"),
        ];
        let clock: Clock = Arc::new(|| 1_000);
        let batch = build_batch(&records, identity, &clock);
        let header = sluice_core::batch::check_framing(&batch).expect("framing and CRC");
        assert!(header.is_transactional() && !header.is_control());
        let producer = (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        );
        assert_eq!(producer, (7, 3, 12));
        assert_eq!((header.record_count, header.last_sequence()), (2, 13));
        let decoded = sluice_core::batch::decode_records(&batch).unwrap();
        assert_eq!(decoded[0].timestamp, 1_000, "stamped by the clock");
        assert_eq!(decoded[1].timestamp, 990, "its own timestamp");
        assert_eq!(decoded[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(decoded[1].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(decoded[1].headers.len(), 1);
    }
}
