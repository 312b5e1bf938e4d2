//! The transaction coordinator's APIs: InitProducerId with a transactional
//! id, AddPartitionsToTxn (v0-3), AddOffsetsToTxn, EndTxn,
//! DescribeTransactions and ListTransactions.
//!
//! Every answer about an id waits for the id's last record in
//! `__transaction_state` to be durable (and replicated): a state change is
//! answered only once it is, and an answer that changes nothing may not
//! report a state a crash could still take back.
//!
//! An AddPartitionsToTxn from the producer whose last transaction is still
//! writing its markers (PrepareCommit or PrepareAbort) gets
//! CONCURRENT_TRANSACTIONS from Kafka, and the client retries (Java after
//! 20 ms). Here the markers wait for a sync, so a producer running
//! transactions back to back would nearly always wait for that retry: the
//! request is held instead (`HeldTxnAdd`), like a long-polling fetch, and
//! handled again once the transaction completed, or after
//! `TXN_ADD_HOLD_MS_MAX`, when it gets CONCURRENT_TRANSACTIONS as before.
//! A client sees only the answer, later.

use std::collections::BTreeSet;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::group::str_of;
use super::{code, now, Context, Handled, HeldTxnAdd, Pending};
use crate::broker::{Broker, GroupWrite};
use crate::storage::Storage;
use crate::txn::{Init, TxnMetadata, TxnState, NO_EPOCH};
use crate::types::{Now, TopicPartition};
use crate::wire::Reply;

/// Longest an AddPartitionsToTxn is held for the transaction before it to
/// complete: well below any client's request timeout.
pub const TXN_ADD_HOLD_MS_MAX: i64 = 1_000;

/// PRODUCER_FENCED is newer than some versions: those get
/// INVALID_PRODUCER_EPOCH, as Kafka answers them.
fn fenced_for(error: ResponseError, version: i16, first_with_fenced: i16) -> ResponseError {
    match error {
        ResponseError::ProducerFenced if version < first_with_fenced => {
            ResponseError::InvalidProducerEpoch
        }
        other => other,
    }
}

/// `reply` once `written` (and the id's last record) holds.
fn after(
    broker: &Broker<impl Storage>,
    transactional_id: &str,
    written: Option<GroupWrite>,
    reply: Reply,
) -> Handled {
    Ok(pending_after(broker, transactional_id, written, reply))
}

fn pending_after(
    broker: &Broker<impl Storage>,
    transactional_id: &str,
    written: Option<GroupWrite>,
    reply: Reply,
) -> Pending {
    let last = broker.txn_written(transactional_id);
    let wait = match (written, last) {
        (Some(a), Some(b)) if a.marks.is_empty() && b.marks.is_empty() => Some(a.and(b)),
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    Pending::after_group_write(wait, reply)
}

/// A fresh producer id: from the controller's block in a cluster, else
/// from this node's own (with the write that makes it durable).
fn new_producer_id<S: Storage>(broker: &mut Broker<S>) -> Result<(i64, u64), ResponseError> {
    if broker.in_cluster() {
        return broker.cluster_producer_id().map(|id| (id, 0));
    }
    broker.allocate_producer_id().map_err(|error| {
        tracing::error!(%error, "cannot reserve producer ids");
        ResponseError::KafkaStorageError
    })
}

pub(super) fn init_producer_id<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: InitProducerIdRequest,
    transactional_id: String,
) -> Handled {
    let version = context.header.version;
    let answer = |error: Option<ResponseError>, producer_id: i64, epoch: i16| {
        let error = error.map(|e| fenced_for(e, version, 4));
        Reply::InitProducerId(
            InitProducerIdResponse::default()
                .with_error_code(error.map_or(0, code))
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
        )
    };
    let refuse = |error: ResponseError| now(answer(Some(error), -1, -1));
    let timeout_ms = request.transaction_timeout_ms;
    if timeout_ms <= 0 || timeout_ms as i64 > broker.config.txn_max_timeout_ms {
        return refuse(ResponseError::InvalidTransactionTimeout);
    }
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    if (producer_id == -1) != (epoch == NO_EPOCH) {
        return refuse(ResponseError::InvalidRequest);
    }
    let expected = (producer_id != -1).then_some((producer_id, epoch));
    if let Some(error) = broker.not_txn_coordinator(&transactional_id) {
        return refuse(error);
    }
    let now_ms = context.now.wall_ms;
    let mut id_seq = 0;
    let current = match broker.transactions.get(&transactional_id) {
        Some(meta) => meta.clone(),
        None => {
            // A new id starts with no epoch; its first init makes epoch 0.
            let (id, seq) = match new_producer_id(broker) {
                Ok(allocated) => allocated,
                Err(error) => return refuse(error),
            };
            id_seq = seq;
            let mut meta = TxnMetadata::new(id, timeout_ms, now_ms);
            meta.epoch = NO_EPOCH;
            meta
        }
    };
    let mut rotated_seq = 0;
    let init = current.init(timeout_ms, expected, now_ms, || {
        new_producer_id(broker).map(|(id, seq)| {
            rotated_seq = seq;
            id
        })
    });
    let durable_ids = id_seq.max(rotated_seq);
    match init {
        Init::Write(next) => {
            let (id, epoch) = (next.producer_id, next.epoch);
            match broker.write_txn(context.now, &transactional_id, next) {
                Ok(mut written) => {
                    written.seq = written.seq.max(durable_ids);
                    tracing::debug!(
                        transactional_id,
                        producer_id = id,
                        epoch,
                        "transactional producer initialised"
                    );
                    after(
                        broker,
                        &transactional_id,
                        Some(written),
                        answer(None, id, epoch),
                    )
                }
                Err(error) => refuse(error),
            }
        }
        Init::Again { producer_id, epoch } => after(
            broker,
            &transactional_id,
            None,
            answer(None, producer_id, epoch),
        ),
        Init::FenceOpen(next) => {
            tracing::info!(
                transactional_id,
                producer_id = next.producer_id,
                "a new instance fences the open transaction of the last; aborting it"
            );
            match broker.write_txn(context.now, &transactional_id, next) {
                Ok(_) => refuse(ResponseError::ConcurrentTransactions),
                Err(error) => refuse(error),
            }
        }
        Init::Refused(error) => refuse(error),
    }
}

/// The partitions a request names that do not exist here, if any.
fn unknown_partitions<S: Storage>(
    broker: &Broker<S>,
    partitions: &BTreeSet<TopicPartition>,
) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .filter(|tp| {
            let count = if broker.in_cluster() {
                broker
                    .cluster
                    .as_ref()
                    .and_then(|c| c.image.topic_by_name(&tp.topic))
                    .map_or(0, |t| t.partitions.len() as i32)
            } else {
                broker.topics.partition_count(&tp.topic)
            };
            tp.partition < 0 || tp.partition >= count
        })
        .cloned()
        .collect()
}

/// Adds partitions to an id's open transaction (AddPartitionsToTxn and
/// AddOffsetsToTxn): the write to wait for, or the error.
fn add_to_transaction<S: Storage>(
    broker: &mut Broker<S>,
    now: Now,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &BTreeSet<TopicPartition>,
) -> Result<Option<GroupWrite>, ResponseError> {
    if let Some(error) = broker.not_txn_coordinator(transactional_id) {
        return Err(error);
    }
    let Some(meta) = broker.transactions.get(transactional_id) else {
        return Err(ResponseError::InvalidProducerIdMapping);
    };
    match meta.add_partitions(producer_id, epoch, partitions, now.wall_ms)? {
        None => Ok(None),
        Some(next) => broker.write_txn(now, transactional_id, next).map(Some),
    }
}

pub(super) fn add_partitions_to_txn<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: AddPartitionsToTxnRequest,
) -> Handled {
    let version = context.header.version;
    if version > 3 {
        return Ok(verify_partitions(broker, request));
    }
    Ok(add_partitions(broker, context.now, version, request, true))
}

/// AddPartitionsToTxn v4 from a partition leader (KIP-890 part 1): for
/// each transaction, whether each partition is in the ongoing transaction
/// of its producer id and epoch, once the id's last change is durable and
/// replicated (CONCURRENT_TRANSACTIONS until then).
/// Nothing is written. Adds by brokers (`verify_only` false, which only
/// transaction.version 2 sends) are refused as INVALID_REQUEST.
fn verify_partitions<S: Storage>(
    broker: &mut Broker<S>,
    request: AddPartitionsToTxnRequest,
) -> Pending {
    let mut results = Vec::with_capacity(request.transactions.len());
    for txn in &request.transactions {
        let id = txn.transactional_id.0.as_str();
        let whole = if !txn.verify_only || id.is_empty() {
            Some(ResponseError::InvalidRequest)
        } else {
            broker.not_txn_coordinator(id).or_else(|| {
                // The id's last change is not durable and replicated yet:
                // the leader asks again.
                (!broker.txn_settled(id)).then_some(ResponseError::ConcurrentTransactions)
            })
        };
        let meta = broker.transactions.get(id);
        let topic_results = txn
            .topics
            .iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|&index| {
                        let tp = TopicPartition::new(topic.name.0.to_string(), index);
                        let error = whole.or_else(|| match meta {
                            None => Some(ResponseError::InvalidProducerIdMapping),
                            Some(meta) => meta
                                .verify(txn.producer_id.0, txn.producer_epoch, &tp)
                                .err(),
                        });
                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(index)
                            .with_partition_error_code(error.map_or(0, code))
                    })
                    .collect();
                add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_results_by_partition(partitions)
            })
            .collect();
        results.push(
            add_partitions_to_txn_response::AddPartitionsToTxnResult::default()
                .with_transactional_id(txn.transactional_id.clone())
                .with_topic_results(topic_results),
        );
    }
    Pending::Now(Reply::AddPartitionsToTxn(
        AddPartitionsToTxnResponse::default().with_results_by_transaction(results),
    ))
}

/// AddPartitionsToTxn v0-3; with `may_hold`, held while the producer's
/// last transaction completes (see the module documentation).
pub(super) fn add_partitions<S: Storage>(
    broker: &mut Broker<S>,
    at: Now,
    version: i16,
    request: AddPartitionsToTxnRequest,
    may_hold: bool,
) -> Pending {
    let transactional_id = request.v3_and_below_transactional_id.0.to_string();
    let partitions: BTreeSet<TopicPartition> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.name.0.to_string(), *p))
        })
        .collect();
    let unknown = unknown_partitions(broker, &partitions);
    let (outcome, written) = if !unknown.is_empty() {
        (Err(ResponseError::OperationNotAttempted), None)
    } else {
        match add_to_transaction(
            broker,
            at,
            &transactional_id,
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            &partitions,
        ) {
            Ok(written) => (Ok(()), written),
            Err(error) => (Err(fenced_for(error, version, 2)), None),
        }
    };
    // CONCURRENT_TRANSACTIONS after the producer and epoch were checked:
    // its own last transaction is completing.
    if may_hold
        && outcome == Err(ResponseError::ConcurrentTransactions)
        && broker.txn_completing(&transactional_id)
    {
        return Pending::TxnAdd(HeldTxnAdd {
            transactional_id,
            request: Box::new(request),
            deadline_ms: at.monotonic_ms.saturating_add(TXN_ADD_HOLD_MS_MAX),
        });
    }
    let results = request
        .v3_and_below_topics
        .iter()
        .map(|topic| {
            add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            let tp = TopicPartition::new(topic.name.0.to_string(), *p);
                            let error = if unknown.contains(&tp) {
                                Some(ResponseError::UnknownTopicOrPartition)
                            } else {
                                outcome.err()
                            };
                            add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(error.map_or(0, code))
                        })
                        .collect(),
                )
        })
        .collect();
    let reply = Reply::AddPartitionsToTxn(
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
    );
    match outcome {
        Ok(()) => pending_after(broker, &transactional_id, written, reply),
        Err(_) => Pending::Now(reply),
    }
}

pub(super) fn add_offsets_to_txn<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: AddOffsetsToTxnRequest,
) -> Handled {
    let transactional_id = request.transactional_id.0.to_string();
    let partition = broker.group_offsets_partition(request.group_id.as_str());
    let added = add_to_transaction(
        broker,
        context.now,
        &transactional_id,
        request.producer_id.0,
        request.producer_epoch,
        &BTreeSet::from([partition]),
    );
    let reply =
        |error: Option<ResponseError>| {
            Reply::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(
                error.map_or(0, |e| code(fenced_for(e, context.header.version, 2))),
            ))
        };
    match added {
        Ok(written) => after(broker, &transactional_id, written, reply(None)),
        Err(error) => now(reply(Some(error))),
    }
}

pub(super) fn end_txn<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: EndTxnRequest,
) -> Handled {
    let transactional_id = request.transactional_id.0.to_string();
    let version = context.header.version;
    let reply = |error: Option<ResponseError>| {
        Reply::EndTxn(
            EndTxnResponse::default()
                .with_error_code(error.map_or(0, |e| code(fenced_for(e, version, 2))))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
    };
    if let Some(error) = broker.not_txn_coordinator(&transactional_id) {
        return now(reply(Some(error)));
    }
    let Some(meta) = broker.transactions.get(&transactional_id) else {
        return now(reply(Some(ResponseError::InvalidProducerIdMapping)));
    };
    let commit = request.committed;
    match meta.end(
        request.producer_id.0,
        request.producer_epoch,
        commit,
        context.now.wall_ms,
    ) {
        Ok(None) => after(broker, &transactional_id, None, reply(None)),
        Ok(Some(next)) => {
            let partitions = next.partitions.len();
            match broker.write_txn(context.now, &transactional_id, next) {
                Ok(written) => {
                    tracing::debug!(transactional_id, commit, partitions, "transaction ending");
                    after(broker, &transactional_id, Some(written), reply(None))
                }
                Err(error) => now(reply(Some(error))),
            }
        }
        Err(error) => now(reply(Some(error))),
    }
}

fn topics_of(meta: &TxnMetadata) -> Vec<describe_transactions_response::TopicData> {
    let mut topics: Vec<describe_transactions_response::TopicData> = Vec::new();
    for tp in &meta.partitions {
        match topics.last_mut() {
            Some(last) if last.topic.0.as_str() == tp.topic => last.partitions.push(tp.partition),
            _ => topics.push(
                describe_transactions_response::TopicData::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    topics
}

pub(super) fn describe_transactions<S: Storage>(
    broker: &mut Broker<S>,
    request: DescribeTransactionsRequest,
) -> Handled {
    let mut response = DescribeTransactionsResponse::default();
    for id in request.transactional_ids {
        let name = str_of(&id.0);
        let state = describe_transactions_response::TransactionState::default()
            .with_transactional_id(id)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_start_time_ms(-1);
        let state = match broker.not_txn_coordinator(&name) {
            Some(error) => state.with_error_code(code(error)),
            None => match broker.transactions.get(&name) {
                None => state.with_error_code(code(ResponseError::TransactionalIdNotFound)),
                Some(meta) if meta.state == TxnState::Dead => {
                    state.with_error_code(code(ResponseError::TransactionalIdNotFound))
                }
                Some(meta) => state
                    .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
                    .with_transaction_timeout_ms(meta.timeout_ms)
                    .with_transaction_start_time_ms(meta.start_ms)
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_producer_epoch(meta.epoch)
                    .with_topics(topics_of(meta)),
            },
        };
        response.transaction_states.push(state);
    }
    now(Reply::DescribeTransactions(response))
}

pub(super) fn list_transactions<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: ListTransactionsRequest,
) -> Handled {
    const STATES: [TxnState; 7] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::PrepareEpochFence,
    ];
    let mut response = ListTransactionsResponse::default();
    let mut states = BTreeSet::new();
    for filter in &request.state_filters {
        match STATES.iter().find(|s| s.name() == filter.as_str()) {
            Some(state) => {
                states.insert(*state);
            }
            None => response.unknown_state_filters.push(filter.clone()),
        }
    }
    let producer_ids: BTreeSet<i64> = request.producer_id_filters.iter().map(|p| p.0).collect();
    let now_ms = context.now.wall_ms;
    for (id, entry) in &broker.transactions.ids {
        let meta = &entry.meta;
        // Kafka's comparison: time since the start of the transaction.
        let running_long_enough = request.duration_filter < 0
            || now_ms.saturating_sub(meta.start_ms) >= request.duration_filter;
        if meta.state == TxnState::Dead
            || (!states.is_empty() && !states.contains(&meta.state))
            || (!producer_ids.is_empty() && !producer_ids.contains(&meta.producer_id))
            || !running_long_enough
        {
            continue;
        }
        response.transaction_states.push(
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id.clone())))
                .with_producer_id(ProducerId(meta.producer_id))
                .with_transaction_state(StrBytes::from_static_str(meta.state.name())),
        );
    }
    now(Reply::ListTransactions(response))
}
