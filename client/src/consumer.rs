//! The consumer: the caller either assigns partitions and seeks, or
//! subscribes to topics as a member of a consumer group (see [`group`] for
//! that side); `poll` long-polls the partitions' leaders and returns
//! decoded records.
//!
//! Each assigned partition has a position (the next offset to read) or
//! none yet; a partition without one gets it from `auto_offset_reset` via
//! ListOffsets before the next fetch, as does a partition whose fetch
//! answered OFFSET_OUT_OF_RANGE. One `poll` round sends one Fetch per
//! leader (concurrently), decodes every complete batch, skips records below
//! the position and control batches, and moves the position past the last
//! complete batch. At read_committed (`isolation_level`) the leader returns
//! only what lies below the last stable offset, and the records of the
//! aborted transactions the answer names are skipped too. Errors that mean stale metadata trigger a refresh and
//! the round is retried until the poll's timeout. Each fetch names the
//! leader epoch the metadata gives (KIP-320), so a broker that leads
//! another epoch refuses it instead of answering from a stale view; what
//! each answer said of the partition's marks (high watermark, last stable
//! offset) is kept for `take_fetch_marks`.
//!
//! With a group, a partition without a position first asks the group's
//! committed offset (OffsetFetch), and only without one falls back to
//! `auto_offset_reset`. Commits name the *consumed* position: the offset
//! after the last record `poll` returned, not the fetch position, which
//! runs ahead over records still buffered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::batch::{read_fetched_isolated, AbortedTransaction};
use crate::client::{Client, Endpoint};
use crate::config::{ConsumerConfig, IsolationLevel, OffsetReset};
use crate::connector::Connector;
use crate::error::{check_code, Error, Result};
use crate::record::{ConsumerRecord, TopicPartition};

mod group;

pub use group::RebalanceListener;

/// Fetch rounds in one `poll`, whatever its timeout (each round waits for a
/// long poll or a backoff, so the timeout normally ends it first).
pub const POLL_ROUNDS_MAX: u32 = 10_000;

/// ListOffsets attempts on retriable errors.
pub const LIST_OFFSETS_ATTEMPTS_MAX: u32 = 5;

/// Fetch marks a consumer keeps until `take_fetch_marks` (the oldest go
/// first).
pub const FETCH_MARKS_MAX: usize = 1_024;

/// What ListOffsets should look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The offset after the last readable record: the high watermark, or
    /// at read_committed the last stable offset.
    Latest,
    /// The first offset whose timestamp is at or after this.
    Timestamp(i64),
}

impl OffsetSpec {
    fn code(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// A ListOffsets result: `offset` is -1 when no record matches a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    pub offset: i64,
    pub timestamp_ms: i64,
    /// The leader epoch the answering leader is in (-1 below v4).
    pub leader_epoch: i32,
}

/// What one fetch answer said of a partition, as the consumer took it:
/// where the readable data ends (the high watermark, and the last stable
/// offset) and where the data returned ends. A read_committed consumer
/// gets nothing at or past the last stable offset, which is never past
/// the high watermark; within one leader epoch neither moves back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchMarks {
    pub partition: TopicPartition,
    /// The broker that answered.
    pub leader: i32,
    /// The leader epoch the fetch named (-1: none known); a leader in
    /// another epoch refuses it.
    pub leader_epoch: i32,
    pub fetch_offset: i64,
    pub high_watermark: i64,
    /// -1 when the broker did not say (read_uncommitted).
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// The offset after the last complete batch returned; None when none was.
    pub next_offset: Option<i64>,
}

/// One partition's part of a fetch answer.
struct PartitionData {
    error_code: i16,
    records: Bytes,
    /// The aborted transactions in `records`, at read_committed only.
    aborted: Option<Vec<AbortedTransaction>>,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

/// One partition of a fetch: where it reads from, and the leader epoch it
/// names.
#[derive(Debug, Clone)]
struct Asked {
    tp: TopicPartition,
    position: i64,
    leader_epoch: i32,
}

/// A fetch answer from one leader, with the topic ids the request used.
struct LeaderAnswer {
    leader: i32,
    partitions: Vec<Asked>,
    result: Result<(FetchResponse, BTreeMap<Uuid, String>)>,
}

pub struct Consumer<C: Connector> {
    client: Client<C>,
    config: ConsumerConfig,
    /// Assigned partitions and their fetch positions; `None` until known.
    positions: BTreeMap<TopicPartition, Option<i64>>,
    buffered: VecDeque<ConsumerRecord>,
    /// Partitions whose position should come from the group's committed
    /// offset before `auto_offset_reset` is used.
    awaiting_committed: BTreeSet<TopicPartition>,
    /// Present when `config.group_id` is set.
    group: Option<group::GroupState<C>>,
    /// What fetch answers said, until `take_fetch_marks`; at most
    /// `FETCH_MARKS_MAX`.
    marks: VecDeque<FetchMarks>,
}

impl<C: Connector> Consumer<C> {
    pub fn new(client: Client<C>, config: ConsumerConfig) -> Result<Consumer<C>> {
        config.validate()?;
        let group = group::GroupState::new(&client, &config);
        Ok(Consumer {
            client,
            config,
            positions: BTreeMap::new(),
            buffered: VecDeque::new(),
            awaiting_committed: BTreeSet::new(),
            group,
            marks: VecDeque::new(),
        })
    }

    /// Replaces the assignment. Partitions kept keep their position; new
    /// ones start from the group's committed offset (with a `group_id`) or
    /// `auto_offset_reset`, unless sought. A subscribed consumer stops being
    /// a group member first (without committing), as if unsubscribed.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        self.drop_subscription();
        self.set_partitions(partitions.into_iter().collect());
    }

    fn set_partitions(&mut self, wanted: BTreeSet<TopicPartition>) {
        self.positions.retain(|tp, _| wanted.contains(tp));
        self.awaiting_committed.retain(|tp| wanted.contains(tp));
        for tp in wanted {
            if !self.positions.contains_key(&tp) {
                if self.group.is_some() {
                    self.awaiting_committed.insert(tp.clone());
                }
                self.positions.insert(tp, None);
            }
        }
        let positions = &self.positions;
        self.buffered
            .retain(|r| positions.contains_key(&TopicPartition::new(r.topic.clone(), r.partition)));
    }

    /// The assigned partitions: chosen by `assign`, or by the group leader
    /// when subscribed (empty while joining).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// The next offset `poll` will return for `tp`, once known: the offset
    /// after the last record returned (this is what commits name).
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        let buffered = self
            .buffered
            .iter()
            .find(|r| r.partition == tp.partition && r.topic == tp.topic);
        match buffered {
            Some(record) => Some(record.offset),
            None => self.positions.get(tp).copied().flatten(),
        }
    }

    /// The consumed position of every assigned partition that has one.
    pub(crate) fn consumed_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        let mut first_buffered: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for record in &self.buffered {
            let tp = TopicPartition::new(record.topic.clone(), record.partition);
            first_buffered.entry(tp).or_insert(record.offset);
        }
        self.positions
            .iter()
            .filter_map(|(tp, position)| {
                let offset = first_buffered.get(tp).copied().or(*position)?;
                Some((tp.clone(), offset))
            })
            .collect()
    }

    /// What the fetch answers since the last call said of each partition,
    /// oldest first (at most the last `FETCH_MARKS_MAX`).
    pub fn take_fetch_marks(&mut self) -> Vec<FetchMarks> {
        self.marks.drain(..).collect()
    }

    /// Moves the position of an assigned partition; buffered records of it
    /// are dropped.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<()> {
        let Some(position) = self.positions.get_mut(tp) else {
            return Err(Error::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            });
        };
        *position = Some(offset);
        self.buffered
            .retain(|r| !(r.topic == tp.topic && r.partition == tp.partition));
        Ok(())
    }

    pub async fn seek_to_beginning(&mut self, tps: &[TopicPartition]) -> Result<()> {
        self.seek_to(tps, OffsetSpec::Earliest).await
    }

    pub async fn seek_to_end(&mut self, tps: &[TopicPartition]) -> Result<()> {
        self.seek_to(tps, OffsetSpec::Latest).await
    }

    /// Seeks to the first record at or after `timestamp_ms` and returns its
    /// offset; with no such record, seeks to the end and returns `None`.
    pub async fn seek_to_timestamp(
        &mut self,
        tp: &TopicPartition,
        timestamp_ms: i64,
    ) -> Result<Option<i64>> {
        let tps = [tp.clone()];
        let found = self
            .list_offsets(&tps, OffsetSpec::Timestamp(timestamp_ms))
            .await?;
        match found[tp].offset {
            -1 => {
                self.seek_to_end(&tps).await?;
                Ok(None)
            }
            offset => {
                self.seek(tp, offset)?;
                Ok(Some(offset))
            }
        }
    }

    async fn seek_to(&mut self, tps: &[TopicPartition], spec: OffsetSpec) -> Result<()> {
        if let Some(tp) = tps.iter().find(|tp| !self.positions.contains_key(tp)) {
            return Err(Error::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            });
        }
        for (tp, listed) in self.list_offsets(tps, spec).await? {
            self.seek(&tp, listed.offset)?;
        }
        Ok(())
    }

    /// Looks offsets up on the partitions' leaders (ListOffsets), retrying
    /// retriable errors after a metadata refresh.
    pub async fn list_offsets(
        &self,
        tps: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<TopicPartition, ListedOffset>> {
        let mut pending: BTreeSet<TopicPartition> = tps.iter().cloned().collect();
        let mut found = BTreeMap::new();
        let mut attempt = 1;
        loop {
            let mut last_error = None;
            for (tp, result) in self.list_offsets_once(&pending, spec).await {
                match result {
                    Ok(listed) => {
                        pending.remove(&tp);
                        found.insert(tp, listed);
                    }
                    Err(error) if error.is_retriable() => last_error = Some(error),
                    Err(error) => return Err(error),
                }
            }
            let Some(error) = last_error else {
                return Ok(found);
            };
            if attempt >= LIST_OFFSETS_ATTEMPTS_MAX {
                return Err(error);
            }
            self.refresh(pending.iter().map(|tp| tp.topic.clone()))
                .await;
            self.client.retry_pause(attempt).await;
            attempt += 1;
        }
    }

    async fn list_offsets_once(
        &self,
        pending: &BTreeSet<TopicPartition>,
        spec: OffsetSpec,
    ) -> BTreeMap<TopicPartition, Result<ListedOffset>> {
        let mut results = BTreeMap::new();
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        for tp in pending {
            match self.leader(tp).await {
                Ok(leader) => by_leader.entry(leader).or_default().push(tp.clone()),
                Err(error) => {
                    results.insert(tp.clone(), Err(error));
                }
            }
        }
        for (leader, tps) in by_leader {
            match self.list_offsets_on(leader, &tps, spec).await {
                Ok(answers) => results.extend(answers),
                Err(error) => results.extend(tps.into_iter().map(|tp| (tp, Err(error.clone())))),
            }
        }
        results
    }

    async fn leader(&self, tp: &TopicPartition) -> Result<i32> {
        let topic = self.client.topic(&tp.topic).await?;
        let Some(partition) = topic.partition(tp.partition) else {
            return Err(Error::UnknownPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                partitions: topic.partition_count(),
            });
        };
        partition.leader.ok_or_else(|| {
            Error::broker(ResponseError::LeaderNotAvailable, format!("leader of {tp}"))
        })
    }

    async fn list_offsets_on(
        &self,
        leader: i32,
        tps: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<Vec<(TopicPartition, Result<ListedOffset>)>> {
        let connection = self.client.connection(Endpoint::Broker(leader)).await?;
        let version = connection.version(ApiKey::ListOffsets)?;
        let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
        for tp in tps {
            topics.entry(&tp.topic).or_default().push(
                ListOffsetsPartition::default()
                    .with_partition_index(tp.partition)
                    .with_timestamp(spec.code()),
            );
        }
        let timeout_ms = self.client.request_timeout_ms();
        // Before v2 there is no isolation level: the high watermark it is.
        let isolation_level = if version >= 2 {
            self.config.isolation_level.code()
        } else {
            0
        };
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation_level)
            .with_timeout_ms(i32::try_from(timeout_ms).unwrap_or(i32::MAX))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let response = connection.send(&request, version, timeout_ms).await?;
        let mut answers = BTreeMap::new();
        for topic in &response.topics {
            for p in &topic.partitions {
                let tp = TopicPartition::new(topic.name.0.to_string(), p.partition_index);
                let listed =
                    check_code(p.error_code, || format!("list offsets of {tp}")).map(|()| {
                        ListedOffset {
                            offset: p.offset,
                            timestamp_ms: p.timestamp,
                            leader_epoch: p.leader_epoch,
                        }
                    });
                answers.insert(tp, listed);
            }
        }
        Ok(tps
            .iter()
            .map(|tp| {
                let result = answers.remove(tp).unwrap_or_else(|| {
                    Err(Error::Protocol {
                        address: connection.address().to_string(),
                        detail: format!("the ListOffsets answer does not mention {tp}"),
                    })
                });
                (tp.clone(), result)
            })
            .collect())
    }

    async fn refresh(&self, topics: impl Iterator<Item = String>) {
        let topics: Vec<String> = topics.collect::<BTreeSet<_>>().into_iter().collect();
        if let Err(error) = self.client.refresh_metadata(Some(&topics)).await {
            tracing::debug!(%error, "consumer metadata refresh failed");
        }
    }

    /// Gives the positions that are not known yet their reset offsets.
    async fn reset_positions(&mut self) -> Result<()> {
        let unknown: Vec<TopicPartition> = self
            .positions
            .iter()
            .filter(|(_, position)| position.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let spec = match self.config.auto_offset_reset {
            OffsetReset::Earliest => OffsetSpec::Earliest,
            OffsetReset::Latest => OffsetSpec::Latest,
            OffsetReset::None => {
                return Err(Error::NoOffset {
                    topic: unknown[0].topic.clone(),
                    partition: unknown[0].partition,
                })
            }
        };
        for (tp, listed) in self.list_offsets(&unknown, spec).await? {
            self.positions.insert(tp, Some(listed.offset));
        }
        Ok(())
    }

    /// Gives partitions without a position their group's committed offset,
    /// then the rest their reset offsets.
    async fn fill_positions(&mut self) -> Result<()> {
        if let (Some(group), false) = (&self.group, self.awaiting_committed.is_empty()) {
            let unknown: Vec<TopicPartition> = self
                .awaiting_committed
                .iter()
                .filter(|tp| self.positions.get(*tp) == Some(&None))
                .cloned()
                .collect();
            let committed = group.committed(&unknown).await?;
            for (tp, offset) in committed {
                if let (Some(offset), Some(position @ None)) = (offset, self.positions.get_mut(&tp))
                {
                    *position = Some(offset);
                }
            }
            self.awaiting_committed.clear();
        }
        self.reset_positions().await
    }

    /// Returns buffered records, or fetches until some arrive or `timeout`
    /// passes (then an empty list). A subscribed consumer also joins its
    /// group here (the join goes on in the background when `timeout` ends
    /// first), gives up its partitions when the group rebalances, and
    /// commits automatically when `enable_auto_commit` is on.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        // Some polls end without ever waiting: records already buffered,
        // nothing assigned, or a membership that failed for good (fenced),
        // which every later poll reports at once. Like tokio's own
        // resources, each poll spends a unit of the task's cooperative
        // budget, so that a caller polling in a loop still hands the worker
        // back now and then: a task that never yields can keep a
        // multi-thread runtime from driving its timers and sockets, which
        // stalls every other task.
        tokio::task::consume_budget().await;
        let deadline = Instant::now() + timeout;
        for round in 0..POLL_ROUNDS_MAX {
            if self.is_subscribed() && !self.drive_membership(deadline).await? {
                if Instant::now() >= deadline {
                    break; // still joining at the deadline
                }
                continue;
            }
            self.maybe_auto_commit().await;
            if !self.buffered.is_empty() {
                break;
            }
            let now = Instant::now();
            if round > 0 && now >= deadline {
                break;
            }
            if self.positions.is_empty() {
                if !self.is_subscribed() {
                    break;
                }
                // A member without partitions waits for the next rebalance.
                self.idle_until(deadline).await;
                continue;
            }
            let outcome = match self.fill_positions().await {
                Ok(()) => {
                    self.fetch_round(deadline.saturating_duration_since(now))
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                if !error.is_retriable() {
                    return Err(error);
                }
                tracing::debug!(%error, "fetch round failed; retrying");
                let pause = Duration::from_millis(self.client.retry_backoff_ms(1));
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
        let count = self.buffered.len().min(self.config.poll_records_max);
        Ok(self.buffered.drain(..count).collect())
    }

    /// One Fetch per leader, concurrently; folds the answers in.
    async fn fetch_round(&mut self, time_left: Duration) -> Result<()> {
        let wait_ms = (self.config.fetch_max_wait_ms as u128).min(time_left.as_millis()) as u64;
        let mut by_leader: BTreeMap<i32, Vec<Asked>> = BTreeMap::new();
        let mut stale = BTreeSet::new();
        for (tp, position) in &self.positions {
            let Some(position) = *position else { continue };
            match self.client.leader_of(tp) {
                Some(leader) => by_leader.entry(leader).or_default().push(Asked {
                    tp: tp.clone(),
                    position,
                    leader_epoch: self.leader_epoch(tp),
                }),
                None => {
                    stale.insert(tp.topic.clone());
                }
            }
        }
        if !stale.is_empty() {
            self.refresh(stale.into_iter()).await;
            if by_leader.is_empty() {
                return Err(Error::broker(ResponseError::LeaderNotAvailable, "fetch"));
            }
        }
        let mut tasks = JoinSet::new();
        for (leader, partitions) in by_leader {
            let fetch = fetch_from(
                self.client.clone(),
                self.config.clone(),
                leader,
                partitions,
                wait_ms,
            );
            tasks.spawn(fetch);
        }
        let mut stale = BTreeSet::new();
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let answer = joined.expect("fetch tasks do not panic");
            if let Err(error) = self.fold_answer(answer, &mut stale) {
                first_error.get_or_insert(error);
            }
        }
        if !stale.is_empty() {
            self.refresh(stale.into_iter()).await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The leader epoch the client's metadata gives `tp` (-1 when unknown).
    fn leader_epoch(&self, tp: &TopicPartition) -> i32 {
        self.client
            .cached_topic(&tp.topic)
            .and_then(|topic| topic.partition(tp.partition).map(|p| p.leader_epoch))
            .unwrap_or(-1)
    }

    fn fold_answer(&mut self, answer: LeaderAnswer, stale: &mut BTreeSet<String>) -> Result<()> {
        let (response, ids) = match answer.result {
            Ok(ok) => ok,
            Err(error) => {
                if error.invalidates_metadata() {
                    stale.extend(answer.partitions.iter().map(|a| a.tp.topic.clone()));
                }
                return Err(error);
            }
        };
        check_code(response.error_code, || "fetch".to_string())?;
        let leader = answer.leader;
        let asked: BTreeMap<TopicPartition, Asked> = answer
            .partitions
            .into_iter()
            .map(|a| (a.tp.clone(), a))
            .collect();
        let mut result = Ok(());
        for topic in &response.responses {
            let name = if topic.topic.0.is_empty() {
                ids.get(&topic.topic_id).cloned()
            } else {
                Some(topic.topic.0.to_string())
            };
            let Some(name) = name else { continue };
            for data in &topic.partitions {
                let tp = TopicPartition::new(name.clone(), data.partition_index);
                let Some(asked) = asked.get(&tp) else {
                    continue;
                };
                let records = data.records.clone().unwrap_or_default();
                let aborted =
                    (self.config.isolation_level == IsolationLevel::ReadCommitted).then(|| {
                        let listed = data.aborted_transactions.iter().flatten();
                        listed
                            .map(|entry| AbortedTransaction {
                                producer_id: entry.producer_id.0,
                                first_offset: entry.first_offset,
                            })
                            .collect::<Vec<_>>()
                    });
                let answer = PartitionData {
                    error_code: data.error_code,
                    records,
                    aborted,
                    high_watermark: data.high_watermark,
                    last_stable_offset: data.last_stable_offset,
                    log_start_offset: data.log_start_offset,
                };
                if let Err(error) = self.fold_partition(leader, asked, answer, stale) {
                    result = result.and(Err(error));
                }
            }
        }
        result
    }

    fn fold_partition(
        &mut self,
        leader: i32,
        asked: &Asked,
        answer: PartitionData,
        stale: &mut BTreeSet<String>,
    ) -> Result<()> {
        let PartitionData {
            error_code,
            records,
            aborted,
            high_watermark,
            last_stable_offset,
            log_start_offset,
        } = answer;
        let (tp, position) = (&asked.tp, asked.position);
        if self.positions.get(tp) != Some(&Some(position)) {
            return Ok(()); // sought or unassigned meanwhile
        }
        match ResponseError::try_from_code(error_code) {
            None => {}
            Some(ResponseError::OffsetOutOfRange) => return self.out_of_range(tp, position),
            Some(error) => {
                if crate::error::error_invalidates_metadata(error) {
                    stale.insert(tp.topic.clone());
                }
                return Err(Error::broker(
                    error,
                    format!("fetch from {tp} at {position}"),
                ));
            }
        }
        let fetched = read_fetched_isolated(tp, &records, position, aborted.as_deref())?;
        if fetched.batch_count == 0 && !records.is_empty() {
            return Err(Error::RecordTooLarge {
                bytes: records.len(),
                limit_name: "partition_fetch_bytes_max (the broker sent only part of a batch)",
                limit: self.config.partition_fetch_bytes_max as usize,
            });
        }
        if self.marks.len() >= FETCH_MARKS_MAX {
            self.marks.pop_front();
        }
        self.marks.push_back(FetchMarks {
            partition: tp.clone(),
            leader,
            leader_epoch: asked.leader_epoch,
            fetch_offset: position,
            high_watermark,
            last_stable_offset,
            log_start_offset,
            next_offset: fetched.next_offset,
        });
        if let Some(next) = fetched.next_offset {
            self.positions.insert(tp.clone(), Some(next.max(position)));
        }
        self.buffered.extend(fetched.records);
        Ok(())
    }

    fn out_of_range(&mut self, tp: &TopicPartition, position: i64) -> Result<()> {
        if self.config.auto_offset_reset == OffsetReset::None {
            return Err(Error::OffsetOutOfRange {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: position,
            });
        }
        tracing::info!(%tp, position, policy = ?self.config.auto_offset_reset, "fetch position out of range; resetting");
        self.positions.insert(tp.clone(), None);
        Ok(())
    }
}

/// Sends one Fetch to a leader; runs as its own task.
async fn fetch_from<C: Connector>(
    client: Client<C>,
    config: ConsumerConfig,
    leader: i32,
    partitions: Vec<Asked>,
    wait_ms: u64,
) -> LeaderAnswer {
    let result = async {
        let connection = client.connection(Endpoint::Broker(leader)).await?;
        let mut version = connection.version(ApiKey::Fetch)?;
        let mut ids: BTreeMap<String, Uuid> = BTreeMap::new();
        for Asked { tp, .. } in &partitions {
            let id = client.cached_topic(&tp.topic).map_or(Uuid::nil(), |t| t.id);
            ids.insert(tp.topic.clone(), id);
        }
        if version >= 13 && ids.values().any(Uuid::is_nil) {
            version = 12; // topic ids unknown: name topics instead
        }
        let request = fetch_request(&config, &partitions, &ids, wait_ms, version);
        let timeout_ms = client.request_timeout_ms() + wait_ms;
        let response = connection.send(&request, version, timeout_ms).await?;
        Ok((
            response,
            ids.into_iter().map(|(name, id)| (id, name)).collect(),
        ))
    }
    .await;
    LeaderAnswer {
        leader,
        partitions,
        result,
    }
}

/// The Fetch of `partitions`; from v9 on each names the leader epoch the
/// consumer knows, as Java's does (KIP-320), so that only a leader of that
/// epoch answers it.
fn fetch_request(
    config: &ConsumerConfig,
    partitions: &[Asked],
    ids: &BTreeMap<String, Uuid>,
    wait_ms: u64,
    version: i16,
) -> FetchRequest {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for asked in partitions {
        let leader_epoch = if version >= 9 { asked.leader_epoch } else { -1 };
        topics.entry(&asked.tp.topic).or_default().push(
            FetchPartition::default()
                .with_partition(asked.tp.partition)
                .with_fetch_offset(asked.position)
                .with_current_leader_epoch(leader_epoch)
                .with_partition_max_bytes(config.partition_fetch_bytes_max),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(i32::try_from(wait_ms).unwrap_or(i32::MAX))
        .with_min_bytes(config.fetch_min_bytes)
        .with_max_bytes(config.fetch_max_bytes)
        .with_isolation_level(config.isolation_level.code())
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                        .with_topic_id(ids[name])
                        .with_partitions(partitions)
                })
                .collect(),
        )
}
