//! The first attempt of `TransactionalProducer::send_all`: a transaction's
//! batches sent at once instead of one round trip each.
//!
//! The batches of one leader go out as waves of Produce requests: wave k
//! holds the k-th batch of each of the leader's partitions, and a leader's
//! waves are queued on its connection in order (each request is queued
//! only after the one before it), so the leader sees every partition's
//! sequences in order. At most `UNACKED_PER_PARTITION_MAX` waves of a
//! leader are in flight, and a round of waves goes only once the one before
//! succeeded entirely: a failed batch must stay within the last five
//! batches the leader remembers, or its retry would not be recognised.
//! Different leaders are sent to in parallel.
//!
//! This only reports each batch's first outcome, or that it was not sent.
//! The producer retries the failed ones and sends the others one by one,
//! in sequence order, with the same bytes (see `send_all`): a batch
//! refused as OUT_OF_ORDER_SEQUENCE_NUMBER because an earlier one of its
//! partition failed is written once that one is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TransactionalId};
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::{topic_name, TRANSACTIONAL_PRODUCE_VERSION_MAX};
use crate::accumulator::UNACKED_PER_PARTITION_MAX;
use crate::client::{Client, Endpoint};
use crate::connection::Connection;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::record::TopicPartition;

/// One encoded batch of the transaction.
pub(super) struct Encoded {
    pub tp: TopicPartition,
    pub bytes: Bytes,
}

/// Sends the batches once, until a round of waves fails; returns each
/// batch's outcome (the offset of its first record, -1 for a duplicate
/// answered without one), or `None` if it was not sent, in the order given.
/// A request sent without an answer (it may still arrive) sets
/// `unanswered`.
pub(super) async fn send_once<C: Connector>(
    client: &Client<C>,
    transactional_id: &TransactionalId,
    batches: &[Encoded],
    unanswered: &AtomicBool,
) -> Vec<Option<Result<i64>>> {
    let mut outcomes: Vec<Option<Result<i64>>> = (0..batches.len()).map(|_| None).collect();
    // Per leader, its waves: per wave, batch indexes (one per partition).
    let mut waves_by_leader: BTreeMap<i32, Vec<Vec<usize>>> = BTreeMap::new();
    let mut wave_of: BTreeMap<&TopicPartition, usize> = BTreeMap::new();
    for (index, batch) in batches.iter().enumerate() {
        let Some(leader) = client.leader_of(&batch.tp) else {
            let error = Error::broker(
                ResponseError::LeaderNotAvailable,
                format!("leader of {}", batch.tp),
            );
            outcomes[index] = Some(Err(error));
            continue;
        };
        let wave = wave_of.entry(&batch.tp).or_insert(0);
        let waves = waves_by_leader.entry(leader).or_default();
        if waves.len() <= *wave {
            waves.push(Vec::new());
        }
        waves[*wave].push(index);
        *wave += 1;
    }
    let rounds = waves_by_leader.values().map(Vec::len).max().unwrap_or(0);
    for round in (0..rounds).step_by(UNACKED_PER_PARTITION_MAX) {
        if outcomes
            .iter()
            .any(|outcome| matches!(outcome, Some(Err(_))))
        {
            break;
        }
        let mut tasks = JoinSet::new();
        for (&leader, waves) in &waves_by_leader {
            let end = waves.len().min(round + UNACKED_PER_PARTITION_MAX);
            let Some(waves) = waves.get(round..end) else {
                continue;
            };
            let connection = match client.connection(Endpoint::Broker(leader)).await {
                Ok(connection) => connection,
                Err(error) => {
                    for &index in waves.iter().flatten() {
                        outcomes[index] = Some(Err(error.clone()));
                    }
                    continue;
                }
            };
            let mut previous: Option<oneshot::Receiver<()>> = None;
            for wave in waves {
                let request = produce_request(
                    transactional_id,
                    wave.iter().map(|&i| &batches[i]),
                    client.request_timeout_ms(),
                );
                let (queued, next) = oneshot::channel();
                let waiting = previous.replace(next);
                let connection = connection.clone();
                let timeout_ms = client.request_timeout_ms();
                let wave = wave.clone();
                tasks.spawn(async move {
                    if let Some(waiting) = waiting {
                        // Fired or dropped: the request before is out of the way.
                        let _ = waiting.await;
                    }
                    let answered = send_wave(&connection, &request, timeout_ms, queued).await;
                    (wave, answered)
                });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            let (wave, answered) = joined.expect("produce tasks do not panic");
            if answered.is_err() {
                unanswered.store(true, Ordering::SeqCst);
            }
            for index in wave {
                outcomes[index] = Some(outcome(&answered, &batches[index].tp));
            }
        }
    }
    outcomes
}

fn produce_request<'a>(
    transactional_id: &TransactionalId,
    batches: impl Iterator<Item = &'a Encoded>,
    timeout_ms: u64,
) -> ProduceRequest {
    let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for batch in batches {
        topics.entry(&batch.tp.topic).or_default().push(
            PartitionProduceData::default()
                .with_index(batch.tp.partition)
                .with_records(Some(batch.bytes.clone())),
        );
    }
    let topic_data = topics
        .into_iter()
        .map(|(topic, partitions)| {
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(partitions)
        })
        .collect();
    ProduceRequest::default()
        .with_transactional_id(Some(transactional_id.clone()))
        .with_acks(-1)
        .with_timeout_ms(i32::try_from(timeout_ms).unwrap_or(i32::MAX))
        .with_topic_data(topic_data)
}

async fn send_wave(
    connection: &Arc<Connection>,
    request: &ProduceRequest,
    timeout_ms: u64,
    queued: oneshot::Sender<()>,
) -> Result<(String, ProduceResponse)> {
    let version = connection
        .version(ApiKey::Produce)?
        .min(TRANSACTIONAL_PRODUCE_VERSION_MAX);
    let response = connection
        .send_in_order(request, version, timeout_ms, Some(queued))
        .await?;
    Ok((connection.address().to_string(), response))
}

/// A batch's outcome in its wave's answer.
fn outcome(answered: &Result<(String, ProduceResponse)>, tp: &TopicPartition) -> Result<i64> {
    let (address, response) = answered.as_ref().map_err(Clone::clone)?;
    partition_outcome(address, response, tp)
}

/// `tp`'s outcome in a Produce answer from `address`: its base offset, or
/// the error. A duplicate (the leader has the batch already) counts as
/// written.
pub(super) fn partition_outcome(
    address: &str,
    response: &ProduceResponse,
    tp: &TopicPartition,
) -> Result<i64> {
    let answer = response
        .responses
        .iter()
        .filter(|topic| topic.name.0.as_str() == tp.topic)
        .flat_map(|topic| topic.partition_responses.iter())
        .find(|p| p.index == tp.partition);
    let Some(answer) = answer else {
        return Err(Error::Protocol {
            address: address.to_string(),
            detail: format!("the Produce answer does not mention {tp}"),
        });
    };
    match ResponseError::try_from_code(answer.error_code) {
        // A retry of a batch the leader has, without its offset.
        None | Some(ResponseError::DuplicateSequenceNumber) => Ok(answer.base_offset),
        Some(error) => Err(Error::broker_with_message(
            error,
            format!("produce to {tp}"),
            answer.error_message.as_ref().map(|m| m.as_str()),
        )),
    }
}
