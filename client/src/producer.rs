//! The producer: `send` puts a record into the accumulator and returns a
//! future of its offset; a sender task drains ready batches, sends them to
//! partition leaders and settles each record's future.
//!
//! Order of events in the sender loop (one task per producer):
//! 1. expire queued batches past the delivery timeout (and, after a fatal
//!    error, fail every queued batch);
//! 2. drain ready batches of partitions with a known leader, group them by
//!    leader into produce requests, and start each request as a sub-task
//!    (a sub-task queues its request on the connection only after the
//!    previous one to the same broker is queued, so the broker sees them in
//!    drain order while they are pipelined);
//! 3. ask for a metadata refresh of topics whose ready batches have no
//!    leader (at most one refresh at a time, spaced by the retry backoff);
//! 4. with idempotence, ask any broker for a producer id (InitProducerId)
//!    while the producer has none: nothing is drained until it has one;
//! 5. sleep until woken (new record, flush, close), until the accumulator's
//!    next deadline, or until a request, refresh or InitProducerId
//!    finishes, whose outcome completes, retries or fails batches (or sets
//!    the producer id) under the state lock.
//!
//! Back-pressure: `send` waits while the buffer is full, up to
//! `max_block_ms`. Retries keep per-partition order (see `accumulator`).
//!
//! Idempotence (`ProducerConfig::idempotence`, Kafka's
//! `enable.idempotence`): every batch carries the producer id and epoch
//! and its partition's sequence numbers, given when it is first drained and
//! kept on retries, so the leader writes a retried batch once (it answers
//! DUPLICATE_SEQUENCE_NUMBER, or success with the original offset) and
//! refuses one that would leave a gap. Up to five batches per partition are
//! in flight. What happens on OUT_OF_ORDER_SEQUENCE_NUMBER,
//! UNKNOWN_PRODUCER_ID, a refused batch or one whose outcome is unknown
//! (epoch bumps, new sequences) is in `accumulator::sequences`. Without
//! idempotence a retry after a lost answer may write a record twice, and
//! producer id, epoch and sequence go out as -1.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::rng::Rng;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::accumulator::{
    Accumulator, AccumulatorConfig, AppendError, Failure, ProducerBatch, Retry,
};
use crate::backoff::backoff_ms;
use crate::batch::RecordData;
use crate::client::{Client, Endpoint};
use crate::config::{Acks, Clock, ProducerConfig};
use crate::connection::Queued;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::partitioner::{key_partition, StickyPartitioner};
use crate::producer_id::{
    granted, init_producer_id_request, ProducerEpoch, IDEMPOTENT_TRANSACTION_TIMEOUT_MS,
};
use crate::record::{ProducerRecord, RecordMetadata, TopicPartition};

/// Mixed into the client seed so the producer's draws differ from the
/// client's backoff draws.
const PRODUCER_SEED_SALT: u64 = 0x7072_6f64_7563_6572;

/// The future of one record's delivery: its partition and offset, or why it
/// was not written.
pub struct DeliveryFuture {
    answer: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Error::Closed)))
    }
}

struct Delivery {
    reply: oneshot::Sender<Result<RecordMetadata>>,
    timestamp_ms: i64,
}

struct State {
    accumulator: Accumulator<Delivery>,
    sticky: StickyPartitioner,
    /// The partition of the last record, kept to spare a copy of the
    /// topic's name per record.
    last_partition: Option<TopicPartition>,
    rng: Rng,
    closed: bool,
    sender_stopped: bool,
    /// Why the producer cannot go on (InitProducerId refused for good):
    /// `send` returns it and queued records fail with it.
    fatal: Option<Error>,
}

struct Shared<C: Connector> {
    client: Client<C>,
    config: ProducerConfig,
    clock: Clock,
    state: Mutex<State>,
    /// Wakes the sender: a record, a flush or a close.
    wake: Notify,
    /// Wakes `send` and `flush` waiters: memory freed, batches settled.
    progress: Notify,
    started: Instant,
}

/// One partition's answer to a produce request.
struct PartitionAnswer {
    error_code: i16,
    error_message: Option<String>,
    base_offset: i64,
    log_append_time_ms: i64,
}

type Answers = BTreeMap<TopicPartition, PartitionAnswer>;

enum Event {
    Produced {
        batches: Vec<ProducerBatch<Delivery>>,
        /// `None` for acks=0, which gets no answer.
        result: Result<Option<Answers>>,
    },
    Refreshed,
    /// InitProducerId answered (or failed).
    ProducerId(Result<ProducerEpoch>),
}

/// A producer. Dropping it abandons unsent records (their futures fail with
/// `Error::Closed`); `close` sends them first.
pub struct Producer<C: Connector> {
    shared: Arc<Shared<C>>,
    sender: tokio::task::JoinHandle<()>,
}

impl<C: Connector> Drop for Producer<C> {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

impl<C: Connector> Producer<C> {
    /// Starts a producer and its sender task (call inside a tokio runtime).
    /// `clock` stamps records that carry no timestamp.
    pub fn new(client: Client<C>, config: ProducerConfig, clock: Clock) -> Result<Producer<C>> {
        config.validate()?;
        let seed = client.config().seed ^ PRODUCER_SEED_SALT;
        let mut rng = Rng::from_seed(seed);
        let state = State {
            accumulator: Accumulator::new(AccumulatorConfig::from_producer(&config)),
            sticky: StickyPartitioner::new(rng.next_u64()),
            last_partition: None,
            rng,
            closed: false,
            sender_stopped: false,
            fatal: None,
        };
        let shared = Arc::new(Shared {
            client,
            config,
            clock,
            state: Mutex::new(state),
            wake: Notify::new(),
            progress: Notify::new(),
            started: Instant::now(),
        });
        let sender = tokio::spawn(run_sender(shared.clone()));
        Ok(Producer { shared, sender })
    }

    /// Queues a record, waiting (up to `max_block_ms`) for the topic's
    /// metadata and for buffer memory. The returned future settles when the
    /// broker answers, the record fails, or the producer closes.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = &self.shared;
        // The clock is read for the deadline only when something must wait.
        let mut deadline = None;
        let mut deadline = || {
            *deadline.get_or_insert_with(|| {
                Instant::now() + Duration::from_millis(shared.config.max_block_ms)
            })
        };
        let partitions = match shared.client.cached_partition_count(&record.topic) {
            Some(partitions) if partitions > 0 => partitions,
            _ => {
                match tokio::time::timeout_at(deadline(), shared.client.topic(&record.topic)).await
                {
                    Ok(topic) => topic?.partition_count(),
                    Err(_) => return Err(shared.blocked_too_long("topic metadata")),
                }
            }
        };
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(|| (shared.clock)());
        let (reply, answer) = oneshot::channel();
        let mut delivery = Delivery {
            reply,
            timestamp_ms,
        };
        let data = RecordData {
            timestamp_ms,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &record.headers,
        };
        loop {
            let progressed = shared.progress.notified();
            {
                let mut state = shared.lock();
                if state.closed {
                    return Err(Error::Closed);
                }
                if let Some(fatal) = &state.fatal {
                    return Err(fatal.clone());
                }
                let available = || shared.client.available_partitions(&record.topic);
                let partition =
                    choose_partition(&mut state.sticky, &record, partitions, available)?;
                let inner = &mut *state;
                let tp = match &mut inner.last_partition {
                    Some(tp) if tp.partition == partition && tp.topic == record.topic => tp,
                    last => last.insert(TopicPartition::new(record.topic.clone(), partition)),
                };
                match inner
                    .accumulator
                    .append(tp, &data, delivery, || shared.now_ms())
                {
                    Ok(_) => {
                        let news = inner.accumulator.take_sender_news();
                        drop(state);
                        if news {
                            shared.wake.notify_one();
                        }
                        return Ok(DeliveryFuture { answer });
                    }
                    Err((AppendError::BufferFull, returned)) => delivery = returned,
                    Err((
                        AppendError::RecordTooLarge {
                            bytes,
                            limit_name,
                            limit,
                        },
                        _,
                    )) => {
                        return Err(Error::RecordTooLarge {
                            bytes,
                            limit_name,
                            limit,
                        })
                    }
                }
            }
            if tokio::time::timeout_at(deadline(), progressed)
                .await
                .is_err()
            {
                return Err(shared.blocked_too_long("buffer memory"));
            }
        }
    }

    /// Sends and waits for the answer.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.send(record).await?.await
    }

    /// Sends everything queued now without lingering and waits until each
    /// of those records is written or failed (their futures say which).
    pub async fn flush(&self) -> Result<()> {
        let mark = self.shared.lock().accumulator.begin_flush();
        self.shared.wake.notify_one();
        loop {
            let progressed = self.shared.progress.notified();
            {
                let state = self.shared.lock();
                if state.accumulator.is_flushed(mark) {
                    return Ok(());
                }
                if state.sender_stopped {
                    return Err(Error::Closed);
                }
            }
            progressed.await;
        }
    }

    /// The producer id and epoch its batches carry now (idempotence only;
    /// `None` until InitProducerId answered).
    pub fn producer_epoch(&self) -> Option<ProducerEpoch> {
        self.shared.lock().accumulator.producer()
    }

    /// Refuses new records, sends the queued ones and stops.
    pub async fn close(mut self) -> Result<()> {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            state.accumulator.close();
        }
        self.shared.wake.notify_one();
        (&mut self.sender).await.map_err(|_| Error::Closed)
    }
}

/// Explicit partition, else the key's hash, else the sticky partition.
/// `available` lists the partitions with a leader; it is asked only when
/// the sticky partitioner picks a new partition.
fn choose_partition(
    sticky: &mut StickyPartitioner,
    record: &ProducerRecord,
    partitions: i32,
    available: impl FnOnce() -> Vec<i32>,
) -> Result<i32> {
    match (record.partition, &record.key) {
        (Some(partition), _) if (0..partitions).contains(&partition) => Ok(partition),
        (Some(partition), _) => Err(Error::UnknownPartition {
            topic: record.topic.clone(),
            partition,
            partitions,
        }),
        (None, Some(key)) => Ok(key_partition(key, partitions)),
        (None, None) => Ok(sticky.partition(&record.topic, partitions, available)),
    }
}

/// Sets `sender_stopped` and wakes waiters when the sender ends, even by a
/// panic or an abort, so `flush` cannot wait forever.
struct SenderExit<C: Connector>(Arc<Shared<C>>);

impl<C: Connector> Drop for SenderExit<C> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.lock() {
            state.sender_stopped = true;
        }
        self.0.progress.notify_waiters();
    }
}

/// Deliveries to fail, by partition.
type Failed = Vec<(TopicPartition, Vec<Delivery>)>;

/// What one pass over the accumulator produced.
struct Plan {
    requests: Vec<(i32, Vec<ProducerBatch<Delivery>>)>,
    leaderless_topics: BTreeSet<String>,
    expired: Failed,
    /// Queued records failed by a fatal error, with it.
    aborted: Option<(Error, Failed)>,
    deadline_ms: Option<u64>,
    /// The producer needs an id before anything can be drained.
    producer_id_wanted: bool,
    finished: bool,
}

/// Metadata refresh bookkeeping of the sender.
#[derive(Default)]
struct Refresh {
    running: bool,
    wanted: BTreeSet<String>,
    last_started: Option<Instant>,
}

/// InitProducerId bookkeeping of the sender.
#[derive(Default)]
struct ProducerIdRequest {
    running: bool,
    /// Failed attempts since the last success; spaces the next one.
    failures: u32,
}

async fn run_sender<C: Connector>(shared: Arc<Shared<C>>) {
    let _exit = SenderExit(shared.clone());
    let mut tasks: JoinSet<Event> = JoinSet::new();
    let mut refresh = Refresh::default();
    let mut producer_id = ProducerIdRequest::default();
    // Per broker, the signal that the last request started is queued on
    // its connection: the next one waits for it, so requests reach the
    // broker in drain order even though each runs as its own task.
    let mut last_queued: BTreeMap<i32, oneshot::Receiver<()>> = BTreeMap::new();
    loop {
        let plan = shared.plan(shared.now_ms());
        shared.fail_expired(plan.expired);
        if let Some((error, aborted)) = plan.aborted {
            shared.fail_all(aborted, &error);
        }
        for (broker, batches) in plan.requests {
            let (queued, next) = oneshot::channel();
            let previous = last_queued.insert(broker, next);
            tasks.spawn(produce(shared.clone(), broker, batches, previous, queued));
        }
        refresh.wanted.extend(plan.leaderless_topics);
        shared.start_refresh(&mut tasks, &mut refresh);
        if plan.producer_id_wanted {
            shared.start_init_producer_id(&mut tasks, &mut producer_id);
        }
        if plan.finished && tasks.is_empty() {
            return;
        }
        let wake_at = plan
            .deadline_ms
            .map(|ms| shared.started + Duration::from_millis(ms));
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = sleep_until(wake_at) => {}
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined.expect("producer sub-tasks do not panic") {
                    Event::Produced { batches, result } => {
                        let stale = shared.settle(batches, result);
                        refresh.wanted.extend(stale);
                    }
                    Event::Refreshed => refresh.running = false,
                    Event::ProducerId(result) => shared.producer_id_answered(result, &mut producer_id),
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<C: Connector> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("producer state lock")
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn blocked_too_long(&self, what: &str) -> Error {
        Error::Timeout {
            what: format!("waiting for {what} in send"),
            after_ms: self.config.max_block_ms,
        }
    }

    /// Expires, drains and groups batches under the state lock.
    fn plan(&self, now_ms: u64) -> Plan {
        let mut state = self.lock();
        let expired = state.accumulator.expire(now_ms);
        let aborted = match &state.fatal {
            Some(error) => Some((error.clone(), state.accumulator.abort_queued())),
            None => None,
        };
        let mut leaders = BTreeMap::new();
        let mut leaderless_topics = BTreeSet::new();
        let drained = state
            .accumulator
            .drain(now_ms, |tp| match self.client.leader_of(tp) {
                Some(leader) => {
                    leaders.insert(tp.clone(), leader);
                    true
                }
                None => {
                    leaderless_topics.insert(tp.topic.clone());
                    false
                }
            });
        let mut by_broker: BTreeMap<i32, Vec<ProducerBatch<Delivery>>> = BTreeMap::new();
        for batch in drained {
            let tp = &batch.topic_partition;
            if let Some(topic) = self.client.cached_topic(&tp.topic) {
                let available = topic.available_partitions();
                state
                    .sticky
                    .batch_sent(tp, topic.partition_count(), &available);
            }
            by_broker.entry(leaders[tp]).or_default().push(batch);
        }
        let deadline_ms = state
            .accumulator
            .next_deadline_ms(|tp| self.client.leader_of(tp).is_some());
        Plan {
            requests: self.split_requests(by_broker),
            leaderless_topics,
            expired,
            aborted,
            deadline_ms,
            // Asked for at once, as Java does, but not by a producer that
            // closes with nothing to send.
            producer_id_wanted: state.accumulator.needs_producer_id()
                && state.fatal.is_none()
                && !(state.closed && state.accumulator.is_idle()),
            finished: state.closed && state.accumulator.is_idle(),
        }
    }

    /// One request per broker, split so none exceeds `request_bytes_max`.
    fn split_requests(
        &self,
        by_broker: BTreeMap<i32, Vec<ProducerBatch<Delivery>>>,
    ) -> Vec<(i32, Vec<ProducerBatch<Delivery>>)> {
        let mut requests = Vec::new();
        for (broker, batches) in by_broker {
            let mut current: Vec<ProducerBatch<Delivery>> = Vec::new();
            let mut current_bytes = 0;
            for batch in batches {
                let bytes = batch.builder.size_bytes();
                if !current.is_empty() && current_bytes + bytes > self.config.request_bytes_max {
                    requests.push((broker, std::mem::take(&mut current)));
                    current_bytes = 0;
                }
                current_bytes += bytes;
                current.push(batch);
            }
            if !current.is_empty() {
                requests.push((broker, current));
            }
        }
        requests
    }

    fn fail_expired(&self, expired: Vec<(TopicPartition, Vec<Delivery>)>) {
        if expired.is_empty() {
            return;
        }
        for (tp, deliveries) in expired {
            let error = Error::Timeout {
                what: format!("delivery to {tp}"),
                after_ms: self.config.delivery_timeout_ms,
            };
            for delivery in deliveries {
                let _ = delivery.reply.send(Err(error.clone()));
            }
        }
        self.progress.notify_waiters();
    }

    fn fail_all(&self, failed: Failed, error: &Error) {
        for (_, deliveries) in failed {
            for delivery in deliveries {
                let _ = delivery.reply.send(Err(error.clone()));
            }
        }
        self.progress.notify_waiters();
    }

    /// Starts InitProducerId (no transactional id) to any broker, after the
    /// retry backoff if the last attempt failed.
    fn start_init_producer_id(
        self: &Arc<Self>,
        tasks: &mut JoinSet<Event>,
        request: &mut ProducerIdRequest,
    ) {
        if request.running {
            return;
        }
        request.running = true;
        let wait_ms = match request.failures {
            0 => 0,
            failures => backoff_ms(
                failures,
                self.client.config().retry_backoff_ms,
                self.client.config().retry_backoff_max_ms,
                &mut self.lock().rng,
            ),
        };
        let client = self.client.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            Event::ProducerId(init_producer_id(&client).await)
        });
    }

    /// Takes the producer id InitProducerId granted; after a failure the
    /// next pass asks again, unless the error is one retrying cannot cure.
    fn producer_id_answered(&self, result: Result<ProducerEpoch>, request: &mut ProducerIdRequest) {
        request.running = false;
        let mut state = self.lock();
        match result {
            Ok(producer) => {
                tracing::debug!(?producer, "producer id granted");
                request.failures = 0;
                state.accumulator.set_producer(producer);
            }
            Err(error) if error.is_retriable() => {
                tracing::debug!(%error, "InitProducerId failed; retrying");
                request.failures += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "InitProducerId refused: the producer cannot send");
                state.fatal = Some(error);
            }
        }
        drop(state);
        self.progress.notify_waiters();
    }

    fn start_refresh(self: &Arc<Self>, tasks: &mut JoinSet<Event>, refresh: &mut Refresh) {
        if refresh.running || refresh.wanted.is_empty() {
            return;
        }
        let spacing = Duration::from_millis(self.client.config().retry_backoff_ms);
        let not_before = refresh.last_started.map(|at| at + spacing);
        let topics: Vec<String> = std::mem::take(&mut refresh.wanted).into_iter().collect();
        refresh.running = true;
        refresh.last_started = Some(not_before.unwrap_or_else(Instant::now).max(Instant::now()));
        let client = self.client.clone();
        tasks.spawn(async move {
            if let Some(at) = not_before {
                tokio::time::sleep_until(at).await;
            }
            if let Err(error) = client.refresh_topics(&topics).await {
                tracing::debug!(%error, ?topics, "producer metadata refresh failed");
            }
            Event::Refreshed
        });
    }

    /// Completes, retries or fails the batches of a finished request.
    /// Returns the topics whose metadata looked stale.
    fn settle(
        &self,
        batches: Vec<ProducerBatch<Delivery>>,
        result: Result<Option<Answers>>,
    ) -> BTreeSet<String> {
        let now_ms = self.now_ms();
        let mut stale = BTreeSet::new();
        let mut state = self.lock();
        for batch in batches {
            let tp = batch.topic_partition.clone();
            let outcome = match &result {
                Err(error) => Err(error.clone()),
                Ok(None) => Ok((-1, -1)),
                Ok(Some(answers)) => partition_outcome(answers, &tp),
            };
            match outcome {
                Ok((base_offset, append_time_ms)) => {
                    let deliveries = state.accumulator.complete(batch);
                    deliver(deliveries, &tp, base_offset, append_time_ms);
                }
                Err(error) => {
                    if error.invalidates_metadata() {
                        stale.insert(tp.topic.clone());
                    }
                    self.retry_or_fail(&mut state, batch, error, now_ms);
                }
            }
        }
        drop(state);
        self.progress.notify_waiters();
        stale
    }

    fn retry_or_fail(
        &self,
        state: &mut State,
        batch: ProducerBatch<Delivery>,
        error: Error,
        now_ms: u64,
    ) {
        let client_config = self.client.config();
        let wait_ms = backoff_ms(
            batch.attempts() + 1,
            client_config.retry_backoff_ms,
            client_config.retry_backoff_max_ms,
            &mut state.rng,
        );
        let tp = batch.topic_partition.clone();
        match state
            .accumulator
            .retry_or_give_up(batch, now_ms, failure_of(&error), wait_ms)
        {
            Retry::Scheduled => tracing::debug!(%tp, %error, wait_ms, "retrying a batch"),
            Retry::GaveUp(deliveries) => {
                tracing::debug!(%tp, %error, "batch failed");
                for delivery in deliveries {
                    let _ = delivery.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// What a failure means for the batch's place in the log.
fn failure_of(error: &Error) -> Failure {
    match error.response_error() {
        Some(ResponseError::OutOfOrderSequenceNumber) => Failure::OutOfOrderSequence,
        Some(ResponseError::UnknownProducerId) => Failure::UnknownProducer,
        _ if error.is_retriable() => Failure::Retriable,
        _ => Failure::Refused,
    }
}

/// InitProducerId without a transactional id, to any broker.
async fn init_producer_id<C: Connector>(client: &Client<C>) -> Result<ProducerEpoch> {
    let connection = client.any_connection().await?;
    let version = connection.version(ApiKey::InitProducerId)?;
    let request = init_producer_id_request(None, IDEMPOTENT_TRANSACTION_TIMEOUT_MS, None);
    let response = connection
        .send(&request, version, client.request_timeout_ms())
        .await?;
    granted(&response, connection.address())
}

/// `(base offset, log append time)` of a partition's answer, or its error.
/// DUPLICATE_SEQUENCE_NUMBER is a success: the leader has the batch but
/// no longer its offset (Kafka's brokers answer so for a retry older than
/// the last five batches they remember).
fn partition_outcome(answers: &Answers, tp: &TopicPartition) -> Result<(i64, i64)> {
    let Some(answer) = answers.get(tp) else {
        return Err(Error::Protocol {
            address: "partition leader".into(),
            detail: format!("the produce answer does not mention {tp}"),
        });
    };
    match ResponseError::try_from_code(answer.error_code) {
        None => Ok((answer.base_offset, answer.log_append_time_ms)),
        Some(ResponseError::DuplicateSequenceNumber) => Ok((-1, -1)),
        Some(error) => Err(Error::broker_with_message(
            error,
            format!("produce to {tp}"),
            answer.error_message.as_deref(),
        )),
    }
}

fn deliver(deliveries: Vec<Delivery>, tp: &TopicPartition, base_offset: i64, append_time_ms: i64) {
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let metadata = RecordMetadata {
            topic_partition: tp.clone(),
            offset: if base_offset >= 0 {
                base_offset + index as i64
            } else {
                -1
            },
            timestamp_ms: if append_time_ms >= 0 {
                append_time_ms
            } else {
                delivery.timestamp_ms
            },
        };
        let _ = delivery.reply.send(Ok(metadata));
    }
}

/// One produce request as a task: waits until the previous request to the
/// same broker is queued, then sends and reports the outcome.
async fn produce<C: Connector>(
    shared: Arc<Shared<C>>,
    broker: i32,
    mut batches: Vec<ProducerBatch<Delivery>>,
    previous: Option<oneshot::Receiver<()>>,
    queued: Queued,
) -> Event {
    if let Some(previous) = previous {
        // Fired or dropped: either way the previous request is out of the way.
        let _ = previous.await;
    }
    let result = send_batches(&shared, broker, &mut batches, queued).await;
    Event::Produced { batches, result }
}

/// Encodes (first attempt only) and sends the batches to their leader.
async fn send_batches<C: Connector>(
    shared: &Shared<C>,
    broker: i32,
    batches: &mut [ProducerBatch<Delivery>],
    queued: Queued,
) -> Result<Option<Answers>> {
    let connection = shared.client.connection(Endpoint::Broker(broker)).await?;
    let mut version = connection.version(ApiKey::Produce)?;
    let mut topic_ids = BTreeMap::new();
    for batch in batches.iter() {
        let topic = &batch.topic_partition.topic;
        let id = shared
            .client
            .cached_topic(topic)
            .map_or(Uuid::nil(), |t| t.id);
        topic_ids.insert(topic.clone(), id);
    }
    if version >= 13 && topic_ids.values().any(Uuid::is_nil) {
        version = 12; // topic ids unknown: name topics instead
    }
    for batch in batches.iter_mut().filter(|b| b.encoded.is_none()) {
        let built = batch
            .builder
            .build(shared.config.compression, batch.identity);
        batch.encoded = Some(built.map_err(|error| Error::Encode {
            api: ApiKey::Produce,
            version,
            detail: error.to_string(),
        })?);
    }
    let request = produce_request(
        batches,
        &topic_ids,
        &shared.config,
        shared.client.request_timeout_ms(),
    );
    let timeout_ms = shared.client.request_timeout_ms();
    if shared.config.acks == Acks::None {
        connection
            .send_without_response(&request, version, timeout_ms, Some(queued))
            .await?;
        return Ok(None);
    }
    let response = connection
        .send_in_order(&request, version, timeout_ms, Some(queued))
        .await?;
    Ok(Some(answers(&response, &topic_ids)))
}

fn produce_request(
    batches: &[ProducerBatch<Delivery>],
    topic_ids: &BTreeMap<String, Uuid>,
    config: &ProducerConfig,
    timeout_ms: u64,
) -> ProduceRequest {
    let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for batch in batches {
        let tp = &batch.topic_partition;
        topics.entry(&tp.topic).or_default().push(
            PartitionProduceData::default()
                .with_index(tp.partition)
                .with_records(batch.encoded.clone()),
        );
    }
    let topic_data = topics
        .into_iter()
        .map(|(name, partitions)| {
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_topic_id(topic_ids[name])
                .with_partition_data(partitions)
        })
        .collect();
    ProduceRequest::default()
        .with_acks(config.acks.code())
        .with_timeout_ms(i32::try_from(timeout_ms).unwrap_or(i32::MAX))
        .with_topic_data(topic_data)
}

/// Indexes a produce answer by partition; topics come back by name, or by
/// id from v13 on.
fn answers(response: &ProduceResponse, topic_ids: &BTreeMap<String, Uuid>) -> Answers {
    let mut answers = Answers::new();
    for topic in &response.responses {
        let name = if topic.name.0.is_empty() {
            topic_ids
                .iter()
                .find(|(_, id)| **id == topic.topic_id)
                .map(|(name, _)| name.clone())
        } else {
            Some(topic.name.0.to_string())
        };
        let Some(name) = name else { continue };
        for partition in &topic.partition_responses {
            answers.insert(
                TopicPartition::new(name.clone(), partition.index),
                PartitionAnswer {
                    error_code: partition.error_code,
                    error_message: partition.error_message.as_ref().map(|m| m.to_string()),
                    base_offset: partition.base_offset,
                    log_append_time_ms: partition.log_append_time_ms,
                },
            );
        }
    }
    answers
}
