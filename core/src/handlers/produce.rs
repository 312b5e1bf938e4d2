//! Produce: each partition's batch is validated, checked against its
//! producer's sequence (idempotence), appended, and acknowledged once it is
//! durable: acks=1 after the sync that covers it, acks=all once the high
//! watermark passed it. acks=0 gets no answer at all, and a failure closes
//! the connection so the client notices.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, Context, Handled, HighWatermark, Pending, Wait};
use crate::batch::{self, BatchError, BatchHeader};
use crate::broker::verify::{Verification, VerifyRequest};
use crate::broker::Broker;
use crate::config::Mutation;
use crate::log::{Appended, PartitionLog};
use crate::producers::{SequenceError, Verdict};
use crate::storage::Storage;
use crate::topics::topic_name_problem;
use crate::types::TopicPartition;
use crate::wire::Reply;

/// The compression codec number of zstd in a batch's attributes.
const ZSTD: i16 = 4;

fn batch_error_code(error: &BatchError) -> (ResponseError, &'static str) {
    match error {
        BatchError::Corrupt(why) => (ResponseError::CorruptMessage, why),
        BatchError::Invalid(why) => (ResponseError::InvalidRecord, why),
        BatchError::InvalidTimestamp(why) => (ResponseError::InvalidTimestamp, why),
    }
}

/// A batch in the log: where it went and what makes it durable.
struct Produced {
    appended: Appended,
    log_start_offset: i64,
    /// The write sequence after which the batch is durable.
    write_seq: u64,
    incarnation: u64,
}

type Refusal = (ResponseError, Option<&'static str>);

pub(super) fn produce<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: ProduceRequest,
) -> Handled {
    if let Some(ask) = remote_verification(broker, context, &request) {
        broker.begin_verification(context.token, ask.producer_id, &ask.partitions);
        return Ok(Pending::Verify(ask));
    }
    let acks = request.acks;
    let timeout_ms = request.timeout_ms;
    let acks_valid = matches!(acks, -1..=1);
    let mut response = ProduceResponse::default();
    let mut wait_seq = None;
    let mut marks = Vec::new();
    let mut any_error = false;
    let mut hinted = std::collections::BTreeSet::new();
    for topic_data in request.topic_data {
        let name = topic_name(broker, context.header.version, &topic_data);
        let mut topic_response = produce_response::TopicProduceResponse::default()
            .with_name(topic_data.name.clone())
            .with_topic_id(topic_data.topic_id);
        let mut topic_error = None;
        if !acks_valid {
            topic_error = Some(ResponseError::InvalidRequiredAcks);
        } else if broker.storage_offline() {
            topic_error = Some(ResponseError::KafkaStorageError);
        } else {
            match &name {
                None => topic_error = Some(ResponseError::UnknownTopicId),
                Some(name) if broker.topics.contains(name) => {}
                Some(name) if topic_name_problem(name).is_some() => {
                    topic_error = Some(ResponseError::InvalidTopicException)
                }
                Some(name) => match broker.auto_create(name) {
                    Ok(Some(seq)) => wait_seq = wait_seq.max(Some(seq)),
                    Ok(None) => topic_error = Some(ResponseError::LeaderNotAvailable),
                    Err(error) => topic_error = Some(error),
                },
            }
        }
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let result = match (topic_error, &name) {
                (Some(error), _) => Err((error, None)),
                (None, Some(name)) => {
                    let transactional_id =
                        request.transactional_id.as_ref().map(|id| id.0.as_str());
                    produce_partition(
                        broker,
                        context,
                        (acks, transactional_id),
                        name,
                        index,
                        partition_data.records,
                    )
                }
                (None, None) => Err((ResponseError::UnknownTopicId, None)),
            };
            let partition_response = match result {
                Ok(produced) => {
                    wait_seq = wait_seq.max(Some(produced.write_seq));
                    if let Some(name) = &name {
                        marks.push(HighWatermark {
                            partition: TopicPartition::new(name.clone(), index),
                            incarnation: produced.incarnation,
                            offset: produced.appended.last_offset + 1,
                            leader_epoch: broker
                                .topics
                                .partition(name, index)
                                .and_then(|p| p.role.leading())
                                .map(|l| l.leader_epoch),
                            deadline_ms: Some(
                                context
                                    .now
                                    .monotonic_ms
                                    .saturating_add(timeout_ms.max(0) as i64),
                            ),
                        });
                    }
                    let base_offset = if broker.config.mutated(Mutation::AnswerNextOffset) {
                        produced.appended.last_offset + 1
                    } else {
                        produced.appended.base_offset
                    };
                    produce_response::PartitionProduceResponse::default()
                        .with_index(index)
                        .with_base_offset(base_offset)
                        .with_log_append_time_ms(produced.appended.log_append_time_ms)
                        .with_log_start_offset(produced.log_start_offset)
                }
                Err((error, message)) => {
                    any_error = true;
                    if refuses_the_batch(error) {
                        // Kafka logs each batch its validation refuses.
                        tracing::warn!(
                            topic = name.as_deref().unwrap_or("?"),
                            partition = index,
                            ?error,
                            why = message.unwrap_or(""),
                            "refused a produced batch"
                        );
                    }
                    let answer = produce_response::PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(code(error))
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(message.map(StrBytes::from_static_str));
                    // KIP-951: the leader this broker knows of, so the
                    // client need not ask Metadata first.
                    let hint = match (&name, error) {
                        (Some(name), ResponseError::NotLeaderOrFollower) => {
                            broker.registration(name, index).filter(|r| r.leader >= 0)
                        }
                        _ => None,
                    };
                    match hint {
                        Some(r) => {
                            hinted.insert(r.leader);
                            answer.with_current_leader(
                                produce_response::LeaderIdAndEpoch::default()
                                    .with_leader_id(BrokerId(r.leader))
                                    .with_leader_epoch(r.leader_epoch),
                            )
                        }
                        None => answer,
                    }
                }
            };
            topic_response.partition_responses.push(partition_response);
        }
        response.responses.push(topic_response);
    }
    response.node_endpoints = broker
        .live_brokers()
        .into_iter()
        .filter(|b| hinted.contains(&b.id))
        .map(|b| {
            produce_response::NodeEndpoint::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port as i32)
                .with_rack(b.rack.map(StrBytes::from_string))
        })
        .collect();
    if acks == 0 {
        if any_error {
            return Err("an acks=0 produce failed; closing so the client notices".into());
        }
        return Ok(Pending::Nothing);
    }
    let reply = Box::new(Reply::Produce(response));
    if broker.config.mutated(Mutation::AckBeforeSync) {
        return Ok(Pending::Now(*reply));
    }
    match wait_seq {
        None => Ok(Pending::Now(*reply)),
        // Only the partitions' own ends matter for acks=all: a topic
        // created on the way is in the same sync as the batches appended
        // after it, and the high watermark moves only when a sync completes.
        Some(_)
            if acks == -1
                && !marks.is_empty()
                && !broker.config.mutated(Mutation::AcksAllAfterLocalSync) =>
        {
            Ok(Pending::After {
                wait: Wait::HighWatermarks(marks),
                reply,
            })
        }
        Some(seq) => Ok(Pending::After {
            wait: Wait::Durable(seq),
            reply,
        }),
    }
}

/// Whether `error` says the batch itself is bad (rather than the
/// partition's or the producer's state).
fn refuses_the_batch(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::CorruptMessage
            | ResponseError::InvalidRecord
            | ResponseError::InvalidTimestamp
            | ResponseError::MessageTooLarge
            | ResponseError::RecordListTooLarge
            | ResponseError::UnsupportedCompressionType
    )
}

fn produce_partition<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    (acks, transactional_id): (i16, Option<&str>),
    name: &str,
    index: i32,
    records: Option<Bytes>,
) -> Result<Produced, Refusal> {
    let now_ms = context.now.wall_ms;
    if let Some(error) = broker.not_leader(name, index) {
        return Err((error, None));
    }
    let leader_epoch = broker.append_epoch(name, index);
    let below_min_insync = broker.config.mutated(Mutation::AcksBelowMinInsync);
    let Some(held) = broker.topics.partition_mut(name, index) else {
        return Err((ResponseError::UnknownTopicOrPartition, None));
    };
    if acks == -1 && !below_min_insync && held.role.leading().is_some_and(|l| !l.enough_replicas())
    {
        // Kafka refuses before appending when the ISR is already too small.
        return Err((
            ResponseError::NotEnoughReplicas,
            Some("the ISR is smaller than min.insync.replicas"),
        ));
    }
    let log = &mut held.log;
    let incarnation = held.incarnation;
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Err((ResponseError::InvalidRecord, Some("no record batch")));
    };
    let header = batch::check_framing_first(&records).map_err(|e| {
        let (error, why) = batch_error_code(&e);
        (error, Some(why))
    })?;
    if header.size_bytes() != records.len() {
        return Err((
            ResponseError::InvalidRecord,
            Some("exactly one record batch is allowed per partition"),
        ));
    }
    // As Kafka's ProduceRequest.validateRecords: zstd came with Produce v7.
    if context.header.version < 7 && header.compression() == ZSTD {
        return Err((
            ResponseError::UnsupportedCompressionType,
            Some("zstd compression needs Produce v7 or later"),
        ));
    }
    if records.len() > log.config().max_message_bytes {
        return Err((
            ResponseError::MessageTooLarge,
            Some("batch larger than max.message.bytes"),
        ));
    }
    let config = log.config();
    let create_time_bounds = (!config.log_append_time).then(|| {
        (
            now_ms.saturating_sub(config.timestamp_before_max_ms),
            now_ms.saturating_add(config.timestamp_after_max_ms),
        )
    });
    let decompressed_bytes_max = config
        .max_message_bytes
        .saturating_mul(broker.config.decompression_ratio_max);
    let max_timestamp = batch::validate_produced_bounded(
        &records,
        &header,
        create_time_bounds,
        decompressed_bytes_max,
    )
    .map_err(|e| {
        let (error, why) = batch_error_code(&e);
        (error, Some(why))
    })?;
    if header.is_transactional() && header.producer_id < 0 {
        return Err((
            ResponseError::InvalidRecord,
            Some("a transactional batch must carry a producer id"),
        ));
    }
    let records_len = records.len();
    let verdict = log.producers().check(&header);
    // KIP-890 verification: a transactional batch that opens no
    // transaction here yet is checked against its coordinator before it is
    // appended (a remote one was asked before this request was handled).
    if opens_transaction(log, &header) {
        let Some(transactional_id) = transactional_id else {
            return Err((
                ResponseError::TransactionalIdAuthorizationFailed,
                Some("transactional records without a transactional id"),
            ));
        };
        let partition = TopicPartition::new(name, index);
        match broker.verify_txn(
            context.token,
            transactional_id,
            header.producer_id,
            header.producer_epoch,
            &partition,
        ) {
            Verification::Verified => {}
            Verification::Refused(error) => {
                return Err(verification_refusal(error, context.header.version))
            }
            // Not asked (the coordinator moved there since): retried.
            Verification::Ask { .. } => {
                return Err(verification_refusal(
                    ResponseError::CoordinatorNotAvailable,
                    context.header.version,
                ))
            }
        }
    }
    let log = &mut broker
        .topics
        .partition_mut(name, index)
        .expect("held above")
        .log;
    let appended = match verdict {
        Ok(Verdict::Append) => log
            .append_with_max_timestamp(
                &mut broker.storage,
                &records,
                leader_epoch,
                now_ms,
                max_timestamp,
            )
            .map_err(|error| {
                tracing::error!(topic = name, partition = index, %error, "append failed");
                (ResponseError::KafkaStorageError, None)
            })
            .inspect(|appended| {
                let records = appended.last_offset - appended.base_offset + 1;
                broker
                    .metrics
                    .produced(name, records as u64, records_len as u64);
            })?,
        Ok(Verdict::Duplicate {
            base_offset,
            last_offset,
            max_timestamp,
        }) => {
            // A retry: answer with the original offsets (and append time,
            // as Kafka does) once they are durable.
            let log_append_time_ms = if log.config().log_append_time {
                max_timestamp
            } else {
                -1
            };
            Appended {
                base_offset,
                last_offset,
                log_append_time_ms,
            }
        }
        Err(SequenceError::OutOfOrder) => {
            return Err((
                ResponseError::OutOfOrderSequenceNumber,
                Some("sequence does not follow the last batch"),
            ))
        }
        Err(SequenceError::StaleEpoch) => {
            return Err((
                ResponseError::InvalidProducerEpoch,
                Some("producer epoch is stale"),
            ))
        }
        Err(SequenceError::TxnOpen) => {
            return Err((
                ResponseError::InvalidTxnState,
                Some("a plain batch from a producer whose transaction is open here"),
            ))
        }
    };
    assert!(appended.base_offset <= appended.last_offset);
    assert!(appended.last_offset < log.log_end_offset());
    assert_eq!(
        appended.last_offset - appended.base_offset,
        header.last_offset_delta as i64,
        "a batch keeps its record count"
    );
    let log_start_offset = log.log_start_offset();
    let write_seq = broker.note_partition_write(name, index);
    Ok(Produced {
        appended,
        log_start_offset,
        write_seq,
        incarnation,
    })
}

/// The topic a produce names: by id from v13 on (`None` if unknown), by
/// name before.
fn topic_name<S: Storage>(
    broker: &Broker<S>,
    version: i16,
    topic: &produce_request::TopicProduceData,
) -> Option<String> {
    if version >= 13 {
        broker.topics.name_by_id(&topic.topic_id)
    } else {
        Some(topic.name.0.to_string())
    }
}

/// Whether a batch opens a transaction on its partition: transactional,
/// next in its producer's sequence, and its producer has no transaction
/// open there yet.
fn opens_transaction(log: &PartitionLog, header: &BatchHeader) -> bool {
    header.is_transactional()
        && matches!(log.producers().check(header), Ok(Verdict::Append))
        && log.producers().open_txn(header.producer_id).is_none()
}

/// The partitions of a produce whose batch opens a transaction that a
/// coordinator on another broker must confirm first, as one question to
/// it; `None` when there is nothing to ask. Batches of another producer
/// than the first asked for are not asked for (Kafka refuses a request
/// with two), and are refused when the request is handled.
fn remote_verification<S: Storage>(
    broker: &Broker<S>,
    context: Context<'_>,
    request: &ProduceRequest,
) -> Option<VerifyRequest> {
    let transactional_id = request.transactional_id.as_ref()?.0.as_str();
    if request.acks != -1 {
        return None;
    }
    let mut ask: Option<VerifyRequest> = None;
    for topic in &request.topic_data {
        let Some(name) = topic_name(broker, context.header.version, topic) else {
            continue;
        };
        for partition in &topic.partition_data {
            let index = partition.index;
            let Some(records) = partition.records.as_ref() else {
                continue;
            };
            if broker.not_leader(&name, index).is_some() {
                continue;
            }
            let Some(held) = broker.topics.partition(&name, index) else {
                continue;
            };
            let Ok(header) = batch::check_framing_first(records) else {
                continue;
            };
            if header.producer_id < 0 || !opens_transaction(&held.log, &header) {
                continue;
            }
            let tp = TopicPartition::new(name.clone(), index);
            let Verification::Ask { coordinator } = broker.verify_txn(
                context.token,
                transactional_id,
                header.producer_id,
                header.producer_epoch,
                &tp,
            ) else {
                continue;
            };
            let ask = ask.get_or_insert_with(|| VerifyRequest {
                coordinator,
                transactional_id: transactional_id.to_string(),
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                partitions: Vec::new(),
            });
            if (ask.producer_id, ask.producer_epoch) == (header.producer_id, header.producer_epoch)
            {
                ask.partitions.push(tp);
            }
        }
    }
    ask
}

/// What a produce gets when its transaction's coordinator refuses the
/// partition (Kafka's ReplicaManager mapping): a fenced producer its epoch
/// error; a coordinator that could not answer NOT_ENOUGH_REPLICAS; a
/// partition not in the ongoing transaction INVALID_TXN_STATE, or
/// TRANSACTION_ABORTABLE from v11 on, where clients can abort and go on.
fn verification_refusal(error: ResponseError, version: i16) -> Refusal {
    match error {
        ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced => (
            ResponseError::InvalidProducerEpoch,
            Some("the transaction coordinator knows a newer epoch"),
        ),
        // The coordinator could not be asked, or not now: Kafka answers
        // NOT_ENOUGH_REPLICAS, which every client retries without first
        // asking for metadata.
        ResponseError::NetworkException
        | ResponseError::NotCoordinator
        | ResponseError::CoordinatorNotAvailable
        | ResponseError::CoordinatorLoadInProgress
        | ResponseError::ConcurrentTransactions
        | ResponseError::NotEnoughReplicas => (
            ResponseError::NotEnoughReplicas,
            Some("the transaction coordinator could not confirm the partition yet"),
        ),
        _ if version >= 11 => (
            ResponseError::TransactionAbortable,
            Some("the partition is not in the producer's ongoing transaction"),
        ),
        _ => (
            ResponseError::InvalidTxnState,
            Some("the partition is not in the producer's ongoing transaction"),
        ),
    }
}
