//! Reading: Fetch (bounded by the high watermark, or at read_committed by
//! the last stable offset with the aborted transactions in what it
//! returns; long-polling until enough bytes are readable or the deadline
//! passes) and ListOffsets.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, now, Context, Handled, ParkedFetch, Pending};
use crate::broker::replicas::{FollowerFetch, ForFollower};
use crate::broker::Broker;
use crate::config::{BrokerConfig, Mutation};
use crate::log::{AbortedTxn, PartitionLog};
use crate::storage::Storage;
use crate::types::TopicPartition;
use crate::wire::Reply;

pub(super) fn fetch<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: FetchRequest,
) -> Handled {
    let immediate = request.max_wait_ms <= 0;
    if let Some(response) = fetch_response(
        broker,
        context.now,
        context.header.version,
        &request,
        immediate,
    ) {
        return now(Reply::Fetch(response));
    }
    let deadline_ms = context
        .now
        .monotonic_ms
        .saturating_add(request.max_wait_ms as i64);
    let by_id = context.header.version >= 13;
    let mut partitions = Vec::new();
    for topic in &request.topics {
        let name = if by_id {
            broker.topics.name_by_id(&topic.topic_id)
        } else {
            Some(topic.topic.0.to_string())
        };
        // A topic id not known now: no move of any partition can answer it
        // sooner than its deadline (it would have been answered at once).
        if let Some(name) = name {
            for partition in &topic.partitions {
                partitions.push(TopicPartition::new(name.clone(), partition.partition));
            }
        }
    }
    Ok(Pending::Fetch(ParkedFetch {
        request: Box::new(request),
        deadline_ms,
        partitions,
    }))
}

/// Builds a fetch response, or None when the request should keep waiting
/// (fewer than `min_bytes` readable, no error, deadline not reached).
pub fn fetch_response<S: Storage>(
    broker: &mut Broker<S>,
    now: crate::types::Now,
    version: i16,
    request: &FetchRequest,
    deadline_passed: bool,
) -> Option<FetchResponse> {
    // A follower names itself (in ReplicaState from v15, before as the
    // request's replica id); consumers send -1.
    let replica_id = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    if request.session_id != 0 {
        return Some(
            FetchResponse::default().with_error_code(code(ResponseError::FetchSessionIdNotFound)),
        );
    }
    let by_id = version >= 13;
    let mut bytes_left = request.max_bytes.max(0) as usize;
    let mut bytes_read = 0usize;
    let mut any_error = false;
    let mut hinted = std::collections::BTreeSet::new();
    let mut responses = Vec::with_capacity(request.topics.len());
    // What a consumer is given, counted only if the answer goes out now.
    let mut handed_out: Vec<(String, Bytes)> = Vec::new();
    for topic in &request.topics {
        let name = if by_id {
            broker.topics.name_by_id(&topic.topic_id)
        } else {
            Some(topic.topic.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let mut data = fetch_response::PartitionData::default()
                .with_partition_index(partition.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let first = bytes_read == 0;
            let read = match &name {
                None => Err(ResponseError::UnknownTopicId),
                Some(name) if replica_id >= 0 => {
                    let fetch = FollowerFetch {
                        replica_id,
                        current_leader_epoch: partition.current_leader_epoch,
                        fetch_offset: partition.fetch_offset,
                        synced_offset: FollowerFetch::synced_end(partition),
                        last_fetched_epoch: partition.last_fetched_epoch,
                        bytes_max: (partition.partition_max_bytes.max(0) as usize).min(bytes_left),
                    };
                    match broker.read_for_follower(now, name, partition.partition, fetch, first) {
                        Ok(ForFollower::Records {
                            records,
                            high_watermark,
                            log_start,
                        }) => Ok(Read::for_follower(records, high_watermark, log_start)),
                        Ok(ForFollower::Diverging {
                            epoch,
                            end_offset,
                            high_watermark,
                            log_start,
                        }) => {
                            any_error = true;
                            data = data.with_diverging_epoch(
                                fetch_response::EpochEndOffset::default()
                                    .with_epoch(epoch)
                                    .with_end_offset(end_offset),
                            );
                            Ok(Read::for_follower(Bytes::new(), high_watermark, log_start))
                        }
                        Ok(ForFollower::OutOfRange {
                            high_watermark,
                            log_start,
                        }) => {
                            // The follower learns the log start from the
                            // answer (Kafka's fetcher asks ListOffsets).
                            data = data
                                .with_high_watermark(high_watermark)
                                .with_log_start_offset(log_start);
                            Err(ResponseError::OffsetOutOfRange)
                        }
                        Err(error) => Err(error),
                    }
                }
                Some(name) => read_partition(
                    broker,
                    name,
                    partition,
                    request.isolation_level,
                    bytes_left,
                    first,
                ),
            };
            match read {
                Ok(Read {
                    records,
                    high_watermark,
                    last_stable_offset,
                    log_start,
                    aborted,
                }) => {
                    // A follower is told the leader's LSO too (it reads past it).
                    let last_stable_offset = last_stable_offset.unwrap_or_else(|| {
                        name.as_deref()
                            .and_then(|n| broker.topics.partition(n, partition.partition))
                            .map_or(high_watermark, |held| {
                                held.log.last_stable_offset(high_watermark)
                            })
                    });
                    bytes_left = bytes_left.saturating_sub(records.len());
                    bytes_read += records.len();
                    if let (Some(name), false) = (&name, records.is_empty() || replica_id >= 0) {
                        handed_out.push((name.clone(), records.clone()));
                    }
                    data = data
                        .with_high_watermark(high_watermark)
                        .with_last_stable_offset(last_stable_offset)
                        .with_log_start_offset(log_start)
                        .with_records(Some(records))
                        .with_aborted_transactions(aborted.map(|entries| {
                            entries
                                .iter()
                                .map(|entry| {
                                    fetch_response::AbortedTransaction::default()
                                        .with_producer_id(ProducerId(entry.producer_id))
                                        .with_first_offset(entry.first_offset)
                                })
                                .collect()
                        }));
                }
                Err(error) => {
                    any_error = true;
                    if let (
                        ResponseError::NotLeaderOrFollower | ResponseError::FencedLeaderEpoch,
                        Some(name),
                    ) = (error, &name)
                    {
                        // KIP-951: the leader this broker knows of.
                        if let Some(r) = broker
                            .registration(name, partition.partition)
                            .filter(|r| r.leader >= 0)
                        {
                            hinted.insert(r.leader);
                            data = data.with_current_leader(
                                fetch_response::LeaderIdAndEpoch::default()
                                    .with_leader_id(BrokerId(r.leader))
                                    .with_leader_epoch(r.leader_epoch),
                            );
                        }
                    }
                    data = data
                        .with_error_code(code(error))
                        .with_records(Some(Bytes::new()));
                }
            }
            partitions.push(data);
        }
        responses.push(
            fetch_response::FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    let enough = bytes_read >= request.min_bytes.max(0) as usize
        && (bytes_read > 0 || request.min_bytes <= 0);
    if !(deadline_passed
        || any_error
        || enough
        || request.topics.is_empty()
        || broker.storage_offline())
    {
        return None;
    }
    for (name, records) in handed_out {
        let count = crate::metrics::records_in_batches(&records);
        broker.metrics.consumed(&name, count, records.len() as u64);
    }
    let node_endpoints = broker
        .live_brokers()
        .into_iter()
        .filter(|b| hinted.contains(&b.id))
        .map(|b| {
            fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port as i32)
                .with_rack(b.rack.map(StrBytes::from_string))
        })
        .collect();
    Some(
        FetchResponse::default()
            .with_responses(responses)
            .with_node_endpoints(node_endpoints),
    )
}

/// What a partition's fetch read.
struct Read {
    records: Bytes,
    high_watermark: i64,
    /// None for a follower's read (the caller looks it up).
    last_stable_offset: Option<i64>,
    log_start: i64,
    /// The aborted transactions in `records`, at read_committed only.
    aborted: Option<Vec<AbortedTxn>>,
}

impl Read {
    /// A follower reads up to the log end whatever its isolation level,
    /// and is told of no aborted transaction (it copies the markers).
    fn for_follower(records: Bytes, high_watermark: i64, log_start: i64) -> Read {
        Read {
            records,
            high_watermark,
            last_stable_offset: None,
            log_start,
            aborted: None,
        }
    }
}

/// The last stable offset a consumer is told (the `lso-ignores-high-watermark`
/// mutation bounds it by the log end instead of the high watermark).
fn last_stable_offset(config: &BrokerConfig, log: &PartitionLog, high_watermark: i64) -> i64 {
    if config.mutated(Mutation::LsoIgnoresHighWatermark) {
        return log.last_stable_offset(log.log_end_offset());
    }
    log.last_stable_offset(high_watermark)
}

/// A consumer's read of one partition: below the high watermark, or at
/// read_committed (`isolation_level` 1) below the last stable offset,
/// with the aborted transactions overlapping what it returns.
fn read_partition<S: Storage>(
    broker: &mut Broker<S>,
    name: &str,
    partition: &fetch_request::FetchPartition,
    isolation_level: i8,
    bytes_left: usize,
    first: bool,
) -> Result<Read, ResponseError> {
    if broker.storage_offline() {
        return Err(ResponseError::KafkaStorageError);
    }
    if let Some(error) = broker.not_leader(name, partition.partition) {
        return Err(error);
    }
    if let Some(error) =
        broker.epoch_refusal(name, partition.partition, partition.current_leader_epoch)
    {
        return Err(error);
    }
    let held = broker
        .topics
        .partition(name, partition.partition)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let high_watermark = if broker.config.mutated(Mutation::ReadBeforeSync) {
        held.log.log_end_offset()
    } else {
        broker.high_watermark(held)
    };
    let log = &held.log;
    assert!(high_watermark <= log.log_end_offset());
    let last_stable_offset = if broker.config.mutated(Mutation::LsoIsHighWatermark) {
        high_watermark
    } else {
        last_stable_offset(&broker.config, log, high_watermark)
    };
    let read_committed = isolation_level == 1;
    let limit_offset = if read_committed {
        last_stable_offset
    } else {
        high_watermark
    };
    let offset = partition.fetch_offset;
    if offset < log.log_start_offset() || offset > log.log_end_offset() {
        return Err(ResponseError::OffsetOutOfRange);
    }
    let bytes_max = (partition.partition_max_bytes.max(0) as usize).min(bytes_left);
    let records = log
        .read(&mut broker.storage, offset, limit_offset, bytes_max, first)
        .map_err(|error| {
            tracing::error!(topic = name, partition = partition.partition, %error, "read failed");
            ResponseError::KafkaStorageError
        })?;
    let name_aborted = !broker.config.mutated(Mutation::NoAbortedTransactions);
    let aborted = read_committed.then(|| {
        // The end of what is returned bounds the transactions named.
        match crate::batch::headers_in(&records).last() {
            Some((last, _)) if name_aborted => {
                assert!(last.next_offset() <= limit_offset);
                log.aborted_txns(offset, last.next_offset())
            }
            Some(_) => Vec::new(),
            None => Vec::new(),
        }
    });
    Ok(Read {
        records,
        high_watermark,
        last_stable_offset: Some(last_stable_offset),
        log_start: log.log_start_offset(),
        aborted,
    })
}

pub(super) fn list_offsets<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: ListOffsetsRequest,
) -> Handled {
    let mut topics = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let base = list_offsets_response::ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1);
                let refused =
                    broker.epoch_refusal(&name, p.partition_index, p.current_leader_epoch);
                let found = match refused {
                    Some(error) => Err(error),
                    None => list_offset(
                        broker,
                        &name,
                        p.partition_index,
                        p.timestamp,
                        request.isolation_level,
                    ),
                };
                match found {
                    Ok((offset, timestamp)) => {
                        // The leader epoch field exists from v4 on.
                        let epoch = if context.header.version >= 4 && offset >= 0 {
                            broker.append_epoch(&name, p.partition_index)
                        } else {
                            -1
                        };
                        base.with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(epoch)
                    }
                    Err(error) => base.with_error_code(code(error)),
                }
            })
            .collect();
        topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    now(Reply::ListOffsets(
        ListOffsetsResponse::default().with_topics(topics),
    ))
}

/// Offset and timestamp for a ListOffsets target: -1 latest, -2 earliest,
/// -3 max timestamp, -4 earliest local, -5 latest tiered, else by
/// timestamp. What a consumer may read bounds the answers: the high
/// watermark, or at read_committed (`isolation_level` 1) the last stable
/// offset, as Kafka's `fetchOffsetForTimestamp` does.
fn list_offset<S: Storage>(
    broker: &mut Broker<S>,
    name: &str,
    partition: i32,
    target: i64,
    isolation_level: i8,
) -> Result<(i64, i64), ResponseError> {
    if broker.storage_offline() {
        return Err(ResponseError::KafkaStorageError);
    }
    if let Some(error) = broker.not_leader(name, partition) {
        return Err(error);
    }
    let log = &broker
        .topics
        .partition(name, partition)
        .ok_or(ResponseError::UnknownTopicOrPartition)?
        .log;
    let held = broker
        .topics
        .partition(name, partition)
        .expect("looked up above");
    // KIP-207: a new leader whose high watermark has not reached the start
    // of its epoch may be below what was acknowledged under the old one.
    let behind_epoch = held
        .role
        .leading()
        .is_some_and(|l| l.high_watermark < l.epoch_start);
    if behind_epoch && !matches!(target, -2 | -4) {
        return Err(ResponseError::OffsetNotAvailable);
    }
    let high_watermark = broker.high_watermark(held);
    let limit_offset = if isolation_level == 1 {
        last_stable_offset(&broker.config, log, high_watermark)
    } else {
        high_watermark
    };
    let storage_error = |error: std::io::Error| {
        tracing::error!(topic = name, partition, %error, "offset lookup failed");
        ResponseError::KafkaStorageError
    };
    match target {
        -1 => Ok((limit_offset, -1)),
        -2 | -4 => Ok((log.log_start_offset(), -1)),
        -5 => Ok((-1, -1)),
        -3 => Ok(log
            .offset_of_max_timestamp(&mut broker.storage, limit_offset)
            .map_err(storage_error)?
            .unwrap_or((-1, -1))),
        t if t >= 0 => Ok(log
            .offset_for_timestamp(&mut broker.storage, t, limit_offset)
            .map_err(storage_error)?
            .unwrap_or((-1, -1))),
        _ => Err(ResponseError::InvalidRequest),
    }
}

/// OffsetForLeaderEpoch: where each asked epoch ends in the leader's log
/// (the start of the next epoch, or the log end for the latest), as
/// followers and consumers (KIP-320) ask after a leader change to find
/// where their log or position diverged.
pub(super) fn offset_for_leader_epoch<S: Storage>(
    broker: &mut Broker<S>,
    request: OffsetForLeaderEpochRequest,
) -> Handled {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let answer = offset_for_leader_epoch_response::EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1);
                let refusal = if broker.storage_offline() {
                    Some(ResponseError::KafkaStorageError)
                } else {
                    broker.not_leader(&name, p.partition).or_else(|| {
                        broker.epoch_refusal(&name, p.partition, p.current_leader_epoch)
                    })
                };
                let held = broker.topics.partition(&name, p.partition);
                match (refusal, held) {
                    (Some(error), _) => answer.with_error_code(code(error)),
                    (None, None) => {
                        answer.with_error_code(code(ResponseError::UnknownTopicOrPartition))
                    }
                    (None, Some(held)) => {
                        let (epoch, end_offset) = held.log.end_offset_for_epoch(p.leader_epoch);
                        answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                    }
                }
            })
            .collect();
        topics.push(
            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    now(Reply::OffsetForLeaderEpoch(
        OffsetForLeaderEpochResponse::default().with_topics(topics),
    ))
}
