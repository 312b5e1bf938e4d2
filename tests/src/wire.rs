//! A minimal blocking Kafka wire client for whole-system tests: raw frames
//! built with the `kafka-protocol` codec over a std `TcpStream`, so tests can
//! send exactly the bytes they mean (including broken ones) and check the
//! broker's answer without any client library in between.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub struct Wire {
    pub stream: TcpStream,
    correlation: i32,
}

impl Wire {
    pub fn connect(bootstrap: &str) -> std::io::Result<Wire> {
        let stream = TcpStream::connect(bootstrap)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Wire {
            stream,
            correlation: 0,
        })
    }

    /// Sends one request; returns its correlation id.
    pub fn send<T: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &T,
    ) -> std::io::Result<i32> {
        self.correlation += 1;
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("sluice-tests")));
        header
            .encode(&mut buf, key.request_header_version(version))
            .map_err(std::io::Error::other)?;
        body.encode(&mut buf, version)
            .map_err(std::io::Error::other)?;
        let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        self.stream.write_all(&frame)?;
        Ok(self.correlation)
    }

    /// Reads one response frame and decodes it, checking the correlation id.
    pub fn receive<T: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        correlation: i32,
    ) -> std::io::Result<T> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let mut frame = vec![0u8; i32::from_be_bytes(length).max(0) as usize];
        self.stream.read_exact(&mut frame)?;
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .map_err(std::io::Error::other)?;
        if header.correlation_id != correlation {
            return Err(std::io::Error::other(format!(
                "correlation {} instead of {correlation}",
                header.correlation_id
            )));
        }
        T::decode(&mut frame, version).map_err(std::io::Error::other)
    }

    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> std::io::Result<Resp> {
        let correlation = self.send(key, version, body)?;
        self.receive(key, version, correlation)
    }

    /// True when the broker closed the connection (EOF or reset within the timeout).
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32) -> std::io::Result<i16> {
        let topic = create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(partitions)
            .with_replication_factor(1);
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(10_000);
        let response: CreateTopicsResponse = self.call(ApiKey::CreateTopics, 7, &request)?;
        Ok(response.topics[0].error_code)
    }

    /// Produces one record batch (raw bytes) and returns (error code, base offset).
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        records: Bytes,
    ) -> std::io::Result<(i16, i64)> {
        let correlation = self.send_produce(topic, partition, acks, records)?;
        self.produce_result(correlation)
    }

    pub fn send_produce(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        records: Bytes,
    ) -> std::io::Result<i32> {
        let data = produce_request::PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(records));
        let topic = produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![data]);
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![topic]);
        self.send(ApiKey::Produce, 9, &request)
    }

    pub fn produce_result(&mut self, correlation: i32) -> std::io::Result<(i16, i64)> {
        let response: ProduceResponse = self.receive(ApiKey::Produce, 9, correlation)?;
        let partition = &response.responses[0].partition_responses[0];
        Ok((partition.error_code, partition.base_offset))
    }

    /// Fetches from `offset` without waiting; returns (error code, high watermark, records).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> std::io::Result<(i16, i64, Bytes)> {
        let wanted = fetch_request::FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20);
        let topic = fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![wanted]);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_bytes(1 << 24)
            .with_max_wait_ms(0)
            .with_topics(vec![topic]);
        let response: FetchResponse = self.call(ApiKey::Fetch, 12, &request)?;
        let data = &response.responses[0].partitions[0];
        Ok((
            data.error_code,
            data.high_watermark,
            data.records.clone().unwrap_or_default(),
        ))
    }

    /// ListOffsets v4 of the latest offset of each of `partitions`, at an
    /// isolation level (0: read_uncommitted, the high watermark; 1:
    /// read_committed, the last stable offset); (error code, offset) for
    /// each, in the order asked.
    pub fn end_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        isolation_level: i8,
    ) -> std::io::Result<Vec<(i16, i64)>> {
        const LATEST: i64 = -1;
        let wanted = partitions
            .iter()
            .map(|&partition| {
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(LATEST)
            })
            .collect();
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation_level)
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partitions(wanted)]);
        let response: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 4, &request)?;
        let answered = response
            .topics
            .first()
            .map(|t| t.partitions.as_slice())
            .unwrap_or_default();
        partitions
            .iter()
            .map(|&partition| {
                answered
                    .iter()
                    .find(|p| p.partition_index == partition)
                    .map(|p| (p.error_code, p.offset))
                    .ok_or_else(|| {
                        std::io::Error::other(format!("no answer for {topic}/{partition}"))
                    })
            })
            .collect()
    }

    /// Reads a whole partition from `offset` up to its high watermark; returns
    /// every record as (offset, value).
    pub fn read_all(
        &mut self,
        topic: &str,
        partition: i32,
        mut offset: i64,
    ) -> std::io::Result<Vec<(i64, Vec<u8>)>> {
        let mut out = Vec::new();
        loop {
            let (error, high_watermark, records) = self.fetch(topic, partition, offset)?;
            if error != 0 {
                return Err(std::io::Error::other(format!("fetch error {error}")));
            }
            for (_, range) in sluice_core::batch::headers_in(&records) {
                let decoded = sluice_core::batch::decode_records(&records[range])
                    .map_err(std::io::Error::other)?;
                for record in decoded.into_iter().filter(|r| r.offset >= offset) {
                    out.push((
                        record.offset,
                        record.value.map(|v| v.to_vec()).unwrap_or_default(),
                    ));
                }
            }
            offset = out.last().map_or(offset, |(o, _)| o + 1);
            if offset >= high_watermark {
                return Ok(out);
            }
        }
    }
}

/// A new connection to `bootstrap` is served (ApiVersions answers).
pub fn still_serves(bootstrap: &str) {
    let mut wire = Wire::connect(bootstrap).expect("a new connection");
    let response: ApiVersionsResponse = wire
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .expect("api versions");
    assert_eq!(response.error_code, 0);
}

/// One uncompressed batch with one record per value.
pub fn batch_of(values: &[&[u8]], timestamp_ms: i64) -> Bytes {
    let records: Vec<sluice_core::batch::RecordSpec<'_>> =
        values.iter().map(|v| (None, Some(*v), vec![], 0)).collect();
    Bytes::from(sluice_core::batch::build_batch(timestamp_ms, &records))
}
