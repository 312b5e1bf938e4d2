//! Reading: Fetch (bounded by the high watermark, long-polling until
//! enough bytes are readable or the deadline passes) and ListOffsets.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::{code, now, Context, Handled, ParkedFetch, Pending};
use crate::broker::Broker;
use crate::config::Mutation;
use crate::storage::Storage;
use crate::types::TopicPartition;
use crate::wire::Reply;

pub(super) fn fetch<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: FetchRequest,
) -> Handled {
    let immediate = request.max_wait_ms <= 0;
    if let Some(response) = fetch_response(broker, context.header.version, &request, immediate) {
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
    version: i16,
    request: &FetchRequest,
    deadline_passed: bool,
) -> Option<FetchResponse> {
    if request.session_id != 0 {
        return Some(
            FetchResponse::default().with_error_code(code(ResponseError::FetchSessionIdNotFound)),
        );
    }
    let by_id = version >= 13;
    let mut bytes_left = request.max_bytes.max(0) as usize;
    let mut bytes_read = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(request.topics.len());
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
            let read = match &name {
                None => Err(ResponseError::UnknownTopicId),
                Some(name) => read_partition(broker, name, partition, bytes_left, bytes_read == 0),
            };
            match read {
                Ok((records, high_watermark, log_start)) => {
                    bytes_left = bytes_left.saturating_sub(records.len());
                    bytes_read += records.len();
                    data = data
                        .with_high_watermark(high_watermark)
                        .with_last_stable_offset(high_watermark)
                        .with_log_start_offset(log_start)
                        .with_records(Some(records));
                    if request.isolation_level == 1 {
                        data.aborted_transactions = Some(Vec::new());
                    }
                }
                Err(error) => {
                    any_error = true;
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
    Some(FetchResponse::default().with_responses(responses))
}

fn read_partition<S: Storage>(
    broker: &mut Broker<S>,
    name: &str,
    partition: &fetch_request::FetchPartition,
    bytes_left: usize,
    first: bool,
) -> Result<(Bytes, i64, i64), ResponseError> {
    if broker.storage_offline() {
        return Err(ResponseError::KafkaStorageError);
    }
    if let Some(error) = broker.not_leader(name, partition.partition) {
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
    let offset = partition.fetch_offset;
    if offset < log.log_start_offset() || offset > log.log_end_offset() {
        return Err(ResponseError::OffsetOutOfRange);
    }
    let bytes_max = (partition.partition_max_bytes.max(0) as usize).min(bytes_left);
    let records = log
        .read(
            &mut broker.storage,
            offset,
            high_watermark,
            bytes_max,
            first,
        )
        .map_err(|error| {
            tracing::error!(topic = name, partition = partition.partition, %error, "read failed");
            ResponseError::KafkaStorageError
        })?;
    Ok((records, high_watermark, log.log_start_offset()))
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
                match list_offset(broker, &name, p.partition_index, p.timestamp) {
                    Ok((offset, timestamp)) => {
                        // The leader epoch field exists from v4 on.
                        let epoch = if context.header.version >= 4 && offset >= 0 {
                            0
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
/// -3 max timestamp, -4 earliest local, -5 latest tiered, else by timestamp.
fn list_offset<S: Storage>(
    broker: &mut Broker<S>,
    name: &str,
    partition: i32,
    target: i64,
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
    let high_watermark = log.durable_offset();
    let storage_error = |error: std::io::Error| {
        tracing::error!(topic = name, partition, %error, "offset lookup failed");
        ResponseError::KafkaStorageError
    };
    match target {
        -1 => Ok((high_watermark, -1)),
        -2 | -4 => Ok((log.log_start_offset(), -1)),
        -5 => Ok((-1, -1)),
        -3 => Ok(log
            .offset_of_max_timestamp(&mut broker.storage, high_watermark)
            .map_err(storage_error)?
            .unwrap_or((-1, -1))),
        t if t >= 0 => Ok(log
            .offset_for_timestamp(&mut broker.storage, t, high_watermark)
            .map_err(storage_error)?
            .unwrap_or((-1, -1))),
        _ => Err(ResponseError::InvalidRequest),
    }
}
