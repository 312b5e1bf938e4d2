//! `sluice perf`: load generators that measure a running broker, in the
//! manner of Kafka's `kafka-producer-perf-test` and `kafka-consumer-perf-test`.
//!
//! - `produce` sends `--records` records of `--record-size` bytes from
//!   `--producers` producers (each with its own client, so its own
//!   connection), as fast as they go or at `--throughput` records/s, and
//!   measures each record's send-to-acknowledgement latency.
//! - `consume` reads `--records` records from the beginning of every
//!   partition of a topic and measures the time each `poll` takes.
//! - `e2e` consumes from the end of the topic while producing at a fixed
//!   rate; each record carries its send time (nanoseconds since a
//!   process-wide monotonic base, in its first 8 bytes), so the latency is
//!   the time from `send` to the record coming out of `poll`, at nanosecond
//!   resolution and free of wall-clock steps.
//!
//! Everything goes through `sluice-client`'s `Producer` and `Consumer`, so
//! the figures include the client's own cost, as Kafka's tools include
//! theirs. While measuring, a progress line about the last interval goes
//! out every `--reporting-interval-ms` (see `live`); the result follows
//! (see `report`), as text or, with `--json`, as one JSON object on stdout.
//! MB means 10^6 bytes (Kafka's tools use 2^20) of record values (keys and
//! headers, absent here, and the batch framing are not counted).
//!
//! Every run is bounded: by `--records`; by `--timeout-ms` for the whole
//! run; by `--request-timeout-ms`, both per request and for the run, which
//! stops once records have waited that long with none acknowledged (a
//! broker that died); by `--idle-timeout-ms` without a record on
//! the consuming side; and by `DELIVERIES_PENDING_MAX` deliveries awaited
//! at once per producer. A run stopped by a bound still reports what it
//! did, then fails: records acknowledged, failed, unknown (sent, no answer)
//! and not sent, and its rate up to its last progress only.

mod live;
mod report;
mod txn;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use sluice_client::{
    system_clock, Acks, Admin, Client, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord,
    DeliveryFuture, NewTopic, OffsetReset, Producer, ProducerConfig, ProducerRecord,
    RecordMetadata, ResponseError, TokioConnector, TopicPartition, TransactionalConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{bootstrap_from_environment, split_bootstrap, CONNECT_TIMEOUT_MS_MAX};
use live::{Activity, Live, MonitorPlan};
pub use report::LATENCY_US_MAX;
use report::{latency_histogram, latency_micros, Report};

/// Largest `--records`; with the other bounds it keeps every run finite.
pub const RECORDS_MAX: u64 = 1_000_000_000;

/// Largest `--record-size`: one record must fit a batch under the broker's
/// default `message.max.bytes` (1,048,588) with room for its headers.
pub const RECORD_BYTES_MAX: u64 = 1_000_000;

/// Largest `--producers`.
pub const PRODUCERS_MAX: u64 = 64;

/// `--records-per-txn` unless given.
pub const RECORDS_PER_TXN_DEFAULT: u64 = 1_000;

/// Largest `--records-per-txn`: a transaction's records are built before
/// they are sent, so this bounds the memory one takes.
pub const RECORDS_PER_TXN_MAX: u64 = 1_000_000;

/// Deliveries one producer awaits at once; past it, the sender waits for
/// the oldest (the producer's buffer memory bounds the bytes as well).
pub const DELIVERIES_PENDING_MAX: usize = 65_536;

/// The consuming side gives up after this long without a new record,
/// unless `--idle-timeout-ms` says otherwise.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// `--request-timeout-ms` unless given: Kafka's `request.timeout.ms`.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// `--reporting-interval-ms` unless given: Kafka's perf tools print every 5 s.
pub const REPORTING_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// Beyond `--timeout-ms`, how long a run told to stop may take to wind
/// down before the command gives up on it without a report.
const STOP_GRACE_MS: u64 = 5_000;

/// How long one `poll` may wait before the loop checks its bounds again.
const POLL_WAIT_MS: u64 = 200;

/// Most records one `poll` hands over (the consumer buffers the rest).
const POLL_RECORDS_MAX: usize = 10_000;

/// Per-partition fetch size of the e2e consumer (Kafka's default): the
/// records come a few at a time, so a larger one would change nothing.
const E2E_PARTITION_FETCH_BYTES: i32 = 1_048_576;

/// Bytes at the start of an e2e record's value holding its send time.
pub const SEND_TIME_BYTES: usize = 8;

/// `sluice perf`: measure a broker's throughput and latency.
#[derive(Args, Debug, Clone)]
pub struct PerfArgs {
    #[command(subcommand)]
    pub command: PerfCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum PerfCommand {
    /// Send records as fast as possible (or at --throughput); measure
    /// records/s, MB/s and send-to-acknowledgement latency.
    Produce(ProduceArgs),
    /// Read records from the beginning of a topic; measure records/s, MB/s
    /// and the time per poll.
    Consume(ConsumeArgs),
    /// Produce at a fixed rate while consuming; measure the latency from
    /// send to delivery to the consumer.
    E2e(E2eArgs),
}

/// Flags of every perf command.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Topic to use.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Records to send (or read).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=RECORDS_MAX))]
    pub records: u64,
    /// Broker address(es) to start from, `host:port[,host:port...]`
    /// [default: $SLUICE_BOOTSTRAP_SERVERS, else $KAFKA_BOOTSTRAP_SERVERS,
    /// else 127.0.0.1:9092].
    #[arg(long, short = 'b', value_name = "HOST:PORT")]
    pub bootstrap_server: Option<String>,
    /// How long a request may wait for its answer; the run stops, failed,
    /// once records have waited this long with none acknowledged.
    #[arg(long, value_name = "MS", default_value_t = REQUEST_TIMEOUT_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub request_timeout_ms: u64,
    /// How often to print a progress line (to stdout; to stderr with --json).
    #[arg(long, value_name = "MS", default_value_t = REPORTING_INTERVAL_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub reporting_interval_ms: u64,
    /// The whole run must finish within this, or it stops and fails.
    #[arg(long, value_name = "MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub timeout_ms: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Producer flags of `produce` and `e2e`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Bytes of each record's value (no key).
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=RECORD_BYTES_MAX))]
    pub record_size: u64,
    /// Replicas that must have a record before it counts: 0, 1 or all.
    #[arg(long, value_name = "0|1|all", default_value = "1", value_parser = parse_acks,
          allow_hyphen_values = true)]
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent
    /// [default: 5 in produce, as Kafka's producer; 0 in e2e and with
    /// --sync, which measure latency].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub linger_ms: Option<u64>,
    /// Size at which a batch is sent (Kafka: batch.size).
    #[arg(long, value_name = "BYTES", default_value_t = 262_144,
          value_parser = clap::value_parser!(u64).range(1_024..=1_000_000))]
    pub batch_bytes: u64,
    /// Memory per producer for records not yet acknowledged (Kafka: buffer.memory).
    #[arg(long, value_name = "BYTES", default_value_t = 67_108_864,
          value_parser = clap::value_parser!(u64).range(1_048_576..=4_294_967_296))]
    pub buffer_bytes: u64,
    /// Retries of a failed batch [default: 0, which lets a partition have
    /// 5 batches in flight (with any retries, only one); 10 with
    /// --idempotence, which keeps 5 in flight].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: Option<u32>,
    /// An idempotent producer (Kafka: enable.idempotence): a producer id
    /// and sequence numbers, so a retry is written once and in order, with
    /// 5 batches in flight per partition. Needs --acks all and retries.
    #[arg(long)]
    pub idempotence: bool,
    /// Create the topic with this many partitions if it does not exist
    /// (otherwise the broker's auto-creation decides).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: Option<i32>,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub send: SendArgs,
    /// Producers sending at once, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=PRODUCERS_MAX))]
    pub producers: u64,
    /// Records per second over all producers; unlimited when absent.
    #[arg(long, value_name = "RECORDS_PER_S",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub throughput: Option<u64>,
    /// Send one record at a time, each only after the previous one was
    /// acknowledged: the latency of a single durable write.
    #[arg(long)]
    pub sync: bool,
    /// Send in transactions, with this transactional id (with several
    /// producers, producer N uses ID-N); a record counts once its
    /// transaction committed. Needs --acks all.
    #[arg(long, value_name = "ID", conflicts_with_all = ["sync", "throughput", "idempotence"])]
    pub transactional_id: Option<String>,
    /// Records per transaction with --transactional-id.
    #[arg(long, value_name = "N", default_value_t = RECORDS_PER_TXN_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=RECORDS_PER_TXN_MAX))]
    pub records_per_txn: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Most bytes one fetch returns per partition.
    #[arg(long, value_name = "BYTES", default_value_t = 8_388_608,
          value_parser = clap::value_parser!(i32).range(1_024..))]
    pub partition_fetch_bytes: i32,
    #[command(flatten)]
    pub idle: IdleArgs,
}

/// The bound of the consuming side of `consume` and `e2e`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Fail after this long without a new record.
    #[arg(long, value_name = "MS", default_value_t = IDLE_TIMEOUT_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub idle_timeout_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub send: SendArgs,
    /// Records per second to send.
    #[arg(long, value_name = "RECORDS_PER_S",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub throughput: u64,
    #[command(flatten)]
    pub idle: IdleArgs,
}

pub fn parse_acks(text: &str) -> Result<Acks, String> {
    match text {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("expected 0, 1 or all, got `{other}`")),
    }
}

fn acks_name(acks: Acks) -> &'static str {
    match acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    }
}

impl PerfCommand {
    fn common(&self) -> &CommonArgs {
        match self {
            PerfCommand::Produce(args) => &args.common,
            PerfCommand::Consume(args) => &args.common,
            PerfCommand::E2e(args) => &args.common,
        }
    }

    /// Runtime threads: one per producer, two for e2e (a producer and a
    /// consumer), at most one per core.
    fn threads(&self) -> usize {
        let wanted = match self {
            PerfCommand::Produce(args) => args.producers as usize,
            PerfCommand::Consume(_) => 1,
            PerfCommand::E2e(_) => 2,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        wanted.clamp(1, cores)
    }
}

/// Runs one perf command on a runtime of its own and prints its result.
/// A run that lost records or was stopped prints its figures first, then
/// fails with one line.
pub fn run(args: PerfArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.command.threads())
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let common = args.command.common();
    let report = runtime.block_on(bounded(common, async {
        match &args.command {
            PerfCommand::Produce(args) => produce(args).await,
            PerfCommand::Consume(args) => consume(args).await,
            PerfCommand::E2e(args) => end_to_end(args).await,
        }
    }))?;
    if common.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    match report.failure() {
        Some(failure) => bail!("{failure}"),
        None => Ok(()),
    }
}

/// The run within `--timeout-ms`, which its monitor enforces; this is the
/// last resort for a run that did not wind down when told to.
async fn bounded(
    common: &CommonArgs,
    run: impl std::future::Future<Output = anyhow::Result<Report>>,
) -> anyhow::Result<Report> {
    let bound_ms = common
        .timeout_ms
        .saturating_add(common.request_timeout_ms)
        .saturating_add(STOP_GRACE_MS);
    match tokio::time::timeout(Duration::from_millis(bound_ms), run).await {
        Ok(result) => result,
        Err(_) => bail!(
            "the run did not stop within {bound_ms} ms (--timeout-ms, --request-timeout-ms \
             and {STOP_GRACE_MS} ms to wind down)"
        ),
    }
}

/// A step before the measured run (a topic lookup, a seek) within the
/// request timeout.
async fn step<T>(
    common: &CommonArgs,
    what: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let bound = Duration::from_millis(common.request_timeout_ms);
    match tokio::time::timeout(bound, work).await {
        Ok(result) => result,
        Err(_) => bail!(
            "{what}: no answer within {} ms (--request-timeout-ms)",
            common.request_timeout_ms
        ),
    }
}

fn client(
    common: &CommonArgs,
    client_id: &str,
    auto_create: bool,
) -> anyhow::Result<Client<TokioConnector>> {
    let bootstrap = bootstrap_from_environment(common.bootstrap_server.as_deref());
    let servers = split_bootstrap(&bootstrap).map_err(|error| anyhow!("{error}"))?;
    let mut config = ClientConfig::new(servers).with_client_id(client_id);
    config.seed = seed();
    config.allow_auto_topic_creation = auto_create;
    config.request_timeout_ms = common.request_timeout_ms;
    config.connect_timeout_ms = common.request_timeout_ms.min(CONNECT_TIMEOUT_MS_MAX);
    Client::new(TokioConnector, config).map_err(|error| anyhow!("{error}"))
}

/// A different seed per run and per process, as Kafka's tools behave.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ ((std::process::id() as u64) << 32)
}

/// Creates the topic when `--partitions` asks for it (an existing topic is
/// kept as it is), then waits until its partitions have a leader. Returns
/// the partitions.
async fn prepare_topic(
    common: &CommonArgs,
    partitions: Option<i32>,
) -> anyhow::Result<Vec<TopicPartition>> {
    let client = client(common, "sluice-perf-admin", true)?;
    if let Some(partitions) = partitions {
        let admin = Admin::new(client.clone());
        let what = format!("create topic {}", common.topic);
        let created = step(common, &what, async {
            Ok(admin
                .create_topic(&NewTopic::new(&common.topic, partitions, 1))
                .await)
        })
        .await?;
        match created {
            Ok(()) => {}
            Err(error) if error.response_error() == Some(ResponseError::TopicAlreadyExists) => {}
            Err(error) => bail!("{what}: {error}"),
        }
    }
    topic_partitions(common, &client).await
}

async fn topic_partitions(
    common: &CommonArgs,
    client: &Client<TokioConnector>,
) -> anyhow::Result<Vec<TopicPartition>> {
    let topic = &common.topic;
    let what = format!("metadata for topic {topic}");
    let info = step(common, &what, async {
        client
            .topic(topic)
            .await
            .map_err(|error| anyhow!("{what}: {error}"))
    })
    .await?;
    Ok((0..info.partition_count())
        .map(|partition| TopicPartition::new(topic, partition))
        .collect())
}

/// Starts the monitor of a run that `began` (its setup included): its
/// bounds and its progress lines.
fn start_monitor(
    common: &CommonArgs,
    began: Instant,
    live: &Arc<Live>,
    mode: &'static str,
    activity: Activity,
) -> tokio::task::JoinHandle<()> {
    let plan = MonitorPlan {
        mode,
        activity,
        request_timeout: Duration::from_millis(common.request_timeout_ms),
        reporting_interval: Duration::from_millis(common.reporting_interval_ms),
        deadline: began + Duration::from_millis(common.timeout_ms),
        run_timeout: Duration::from_millis(common.timeout_ms),
        to_stdout: !common.json,
    };
    tokio::spawn(live::monitor(live.clone(), plan))
}

/// Linger of `produce` unless `--linger-ms` says otherwise.
pub const PRODUCE_LINGER_MS_DEFAULT: u64 = 5;

/// Linger of `e2e` and `produce --sync` unless `--linger-ms` says
/// otherwise: a record waiting for company would measure the linger, not
/// the broker.
pub const LATENCY_LINGER_MS_DEFAULT: u64 = 0;

/// Retries of an idempotent producer unless `--retries` says otherwise
/// (Kafka retries until the delivery timeout; the count keeps it bounded).
pub const IDEMPOTENT_RETRIES_DEFAULT: u32 = 10;

/// `--retries`, or its default.
fn retries(send: &SendArgs) -> u32 {
    send.retries.unwrap_or(if send.idempotence {
        IDEMPOTENT_RETRIES_DEFAULT
    } else {
        0
    })
}

/// Refuses producer flags that cannot work together, as Kafka's producer
/// refuses such a configuration.
fn check_send(send: &SendArgs) -> anyhow::Result<()> {
    if send.idempotence && send.acks != Acks::All {
        bail!("--idempotence needs --acks all");
    }
    if send.idempotence && retries(send) == 0 {
        bail!("--idempotence needs retries (--retries above 0)");
    }
    Ok(())
}

/// The producer's settings. A record may take at most the linger and one
/// request timeout to settle (Kafka's smallest `delivery.timeout.ms`), and
/// `send` may block for one request timeout, so a broker that goes away
/// fails the records waiting for it within the run's own bound.
fn producer_config(common: &CommonArgs, send: &SendArgs, linger_ms: u64) -> ProducerConfig {
    ProducerConfig {
        acks: send.acks,
        linger_ms,
        batch_bytes_max: send.batch_bytes as usize,
        buffer_memory_bytes: send.buffer_bytes as usize,
        retries_max: retries(send),
        delivery_timeout_ms: linger_ms.saturating_add(common.request_timeout_ms),
        max_block_ms: common.request_timeout_ms,
        idempotence: send.idempotence,
        ..ProducerConfig::default()
    }
}

/// Records `per_producer` and rate for producer `index` of `producers`:
/// the records and the rate split as evenly as integers allow.
fn share(total: u64, producers: u64, index: u64) -> u64 {
    assert!(index < producers);
    total / producers + u64::from(index < total % producers)
}

/// Spaces sends so that record `n` leaves no earlier than `n / rate`
/// seconds after the start. Tokio's timer has millisecond resolution, so
/// at high rates records leave in bursts of about a millisecond's worth.
struct Pacer {
    started: Instant,
    records_per_s: Option<f64>,
}

impl Pacer {
    fn new(records_per_s: Option<f64>) -> Pacer {
        assert!(records_per_s.is_none_or(|rate| rate > 0.0));
        Pacer {
            started: Instant::now(),
            records_per_s,
        }
    }

    fn due(&self, sent: u64) -> Option<Instant> {
        let rate = self.records_per_s?;
        Some(self.started + Duration::from_secs_f64(sent as f64 / rate))
    }
}

/// How a producer makes a record's value.
#[derive(Clone)]
enum Payload {
    /// The same bytes every time (shared, not copied).
    Fixed(Bytes),
    /// `size` bytes starting with the send time since `base`.
    Stamped { base: Instant, size: usize },
}

impl Payload {
    fn fixed(size: usize) -> Payload {
        // Not all zeros, so a compressing path would not flatter itself.
        Payload::Fixed(
            (0..size)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
        )
    }

    fn value(&self) -> Bytes {
        match self {
            Payload::Fixed(bytes) => bytes.clone(),
            Payload::Stamped { base, size } => stamped_value(base.elapsed(), *size),
        }
    }
}

/// A value of `size` bytes (at least `SEND_TIME_BYTES`) starting with
/// `since_base` in nanoseconds, big-endian.
fn stamped_value(since_base: Duration, size: usize) -> Bytes {
    assert!(size >= SEND_TIME_BYTES);
    let mut value = BytesMut::with_capacity(size);
    value.put_u64(since_base.as_nanos() as u64);
    value.put_bytes(b'.', size - SEND_TIME_BYTES);
    value.freeze()
}

/// The send time a stamped value carries, if it is long enough to carry one.
fn send_time(value: &[u8]) -> Option<Duration> {
    let stamp: [u8; SEND_TIME_BYTES] = value.get(..SEND_TIME_BYTES)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_be_bytes(stamp)))
}

/// What one producer (or consumer) counted.
struct Tally {
    /// Acknowledged (or read).
    records: u64,
    latency: Histogram<u64>,
    /// Refused by the broker, or never sent.
    failed: u64,
    /// Sent without an answer: its fate is not known.
    unknown: u64,
    first_error: Option<String>,
    /// When the last record was acknowledged (or read).
    last_progress: Option<Instant>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            records: 0,
            latency: latency_histogram(),
            failed: 0,
            unknown: 0,
            first_error: None,
            last_progress: None,
        }
    }

    fn failed(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Tally) {
        self.records += other.records;
        self.latency
            .add(&other.latency)
            .expect("histograms of equal bounds");
        self.failed += other.failed;
        self.unknown += other.unknown;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_progress = self.last_progress.max(other.last_progress);
    }
}

/// Whether a record that failed with `error` may still have been written:
/// its request went out and no answer came (a timeout, a lost connection,
/// a producer dropped with it in flight).
fn outcome_unknown(error: &sluice_client::Error) -> bool {
    matches!(
        error,
        sluice_client::Error::Timeout { .. }
            | sluice_client::Error::Disconnected { .. }
            | sluice_client::Error::Closed
    )
}

/// The outcome of a delivery that is already settled, without waiting.
fn settled_now(delivery: &mut DeliveryFuture) -> Option<sluice_client::Result<RecordMetadata>> {
    let ready = std::future::Future::poll(
        std::pin::Pin::new(delivery),
        &mut std::task::Context::from_waker(std::task::Waker::noop()),
    );
    match ready {
        std::task::Poll::Ready(outcome) => Some(outcome),
        std::task::Poll::Pending => None,
    }
}

/// One producer's share of a run.
struct ProducerPlan {
    topic: String,
    records: u64,
    records_per_s: Option<f64>,
    payload: Payload,
    /// Await each delivery before the next send.
    one_at_a_time: bool,
}

/// Sends a plan's records with a producer of its own and awaits every
/// delivery, in order, on a second task (or at once, one at a time).
/// When the run is stopped it sends no more; records sent and not yet
/// settled then count as unknown, and the producer is dropped rather than
/// closed (closing would wait for a broker that may be gone).
async fn run_producer(
    client: Client<TokioConnector>,
    config: ProducerConfig,
    plan: ProducerPlan,
    live: Arc<Live>,
) -> Tally {
    let producer = match Producer::new(client, config, system_clock()) {
        Ok(producer) => producer,
        Err(error) => {
            let mut tally = Tally::new();
            tally.failed(format!("start a producer: {error}"));
            return tally;
        }
    };
    let (pending, deliveries) = mpsc::channel(DELIVERIES_PENDING_MAX);
    let collector = tokio::spawn(await_deliveries(deliveries, live.clone()));
    let own = send_plan(&producer, &plan, pending, &live).await;
    let mut tally = collector.await.unwrap_or_else(|error| {
        let mut tally = Tally::new();
        tally.failed(format!("the delivery collector failed: {error}"));
        tally
    });
    tally.merge(own);
    if live.stop_reason().is_none() {
        tokio::select! {
            closed = producer.close() => if let Err(error) = closed {
                tally.first_error.get_or_insert(format!("close the producer: {error}"));
            },
            _ = live.clone().stopped() => {}
        }
    }
    tally
}

/// The sending loop of `run_producer`: what it counted itself (records it
/// could not send, and with `one_at_a_time` every outcome).
async fn send_plan(
    producer: &Producer<TokioConnector>,
    plan: &ProducerPlan,
    pending: mpsc::Sender<(Instant, DeliveryFuture)>,
    live: &Arc<Live>,
) -> Tally {
    let pacer = Pacer::new(plan.records_per_s);
    let mut own = Tally::new();
    let stopped = live.clone().stopped();
    tokio::pin!(stopped);
    for sent in 0..plan.records {
        if let Some(due) = pacer.due(sent).filter(|due| *due > Instant::now()) {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        let sent_at = Instant::now();
        let record = ProducerRecord::new(plan.topic.as_str(), plan.payload.value());
        live.sent.fetch_add(1, Ordering::Relaxed);
        let sending = tokio::select! {
            biased;
            _ = &mut stopped => None,
            sending = producer.send(record) => Some(sending),
        };
        let delivery = match sending {
            // Stopped while `send` waited: the record may have been queued.
            None => {
                own.unknown += 1;
                break;
            }
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                // Kafka's perf tool stops on a send it cannot queue too.
                live.unacknowledged.fetch_add(1, Ordering::Relaxed);
                own.failed(format!("send: {error}"));
                break;
            }
        };
        if plan.one_at_a_time {
            let outcome = tokio::select! {
                biased;
                _ = &mut stopped => None,
                outcome = delivery => Some(outcome),
            };
            match outcome {
                Some(outcome) => settle(&mut own, sent_at, Instant::now(), outcome, live),
                None => {
                    own.unknown += 1;
                    break;
                }
            }
            continue;
        }
        let queued = tokio::select! {
            biased;
            _ = &mut stopped => false,
            queued = pending.send((sent_at, delivery)) => queued.is_ok(),
        };
        if !queued {
            // Stopped, or the collector gone: this delivery is not awaited.
            own.unknown += 1;
            break;
        }
    }
    own
}

/// Most records the delivery collector settles on one clock reading.
const CLOCK_READ_EVERY_RECORDS: u32 = 64;

/// Awaits deliveries in send order. A producer's requests share one
/// connection and are answered in order, so a later record is never held
/// up by an earlier one for longer than the broker itself took.
///
/// The clock is read when the collector wakes up, not per record: the
/// records one answer completes are found ready together and share that
/// reading (re-read if a record was sent after it), which keeps clock reads
/// off the per-record path of small records.
///
/// Once the run is stopped, the deliveries still queued are settled if
/// their outcome already came and counted as unknown if not.
async fn await_deliveries(
    mut deliveries: mpsc::Receiver<(Instant, DeliveryFuture)>,
    live: Arc<Live>,
) -> Tally {
    let mut tally = Tally::new();
    let stopped = live.clone().stopped();
    tokio::pin!(stopped);
    let mut now = Instant::now();
    let mut settled_since_reading = 0u32;
    loop {
        let (sent_at, mut delivery) = match deliveries.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                let item = tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    item = deliveries.recv() => item,
                };
                let Some(item) = item else { break };
                now = Instant::now();
                settled_since_reading = 0;
                item
            }
        };
        let outcome = match settled_now(&mut delivery) {
            Some(outcome) => outcome,
            None => {
                let outcome = tokio::select! {
                    biased;
                    _ = &mut stopped => None,
                    outcome = &mut delivery => Some(outcome),
                };
                let Some(outcome) = outcome else {
                    tally.unknown += 1;
                    break;
                };
                now = Instant::now();
                settled_since_reading = 0;
                outcome
            }
        };
        // Re-read now and then too, so that a long run of ready records
        // (the collector preempted, or behind) is not stamped too early.
        settled_since_reading += 1;
        if sent_at > now || settled_since_reading >= CLOCK_READ_EVERY_RECORDS {
            now = Instant::now();
            settled_since_reading = 0;
        }
        settle(&mut tally, sent_at, now, outcome, &live);
    }
    // Refuse what the sender would add now, and settle what is queued.
    deliveries.close();
    while let Ok((sent_at, mut delivery)) = deliveries.try_recv() {
        match settled_now(&mut delivery) {
            Some(outcome) => settle(&mut tally, sent_at, Instant::now(), outcome, &live),
            None => tally.unknown += 1,
        }
    }
    tally
}

/// Counts one record's outcome, known at `now`.
fn settle(
    tally: &mut Tally,
    sent_at: Instant,
    now: Instant,
    outcome: sluice_client::Result<RecordMetadata>,
    live: &Live,
) {
    match outcome {
        Ok(_) => {
            let micros = latency_micros(now.saturating_duration_since(sent_at));
            tally.latency.saturating_record(micros);
            tally.records += 1;
            tally.last_progress = Some(now);
            live.acknowledged.fetch_add(1, Ordering::Relaxed);
            live.record_latency(micros);
        }
        Err(error) => {
            live.unacknowledged.fetch_add(1, Ordering::Relaxed);
            if outcome_unknown(&error) {
                tally.unknown += 1;
                tally.first_error.get_or_insert(error.to_string());
            } else {
                tally.failed(error.to_string());
            }
        }
    }
}

/// What the producers of a run send, together.
struct Load {
    producers: u64,
    /// Over all producers; `None` for as fast as they go.
    records_per_s: Option<u64>,
    payload: Payload,
    one_at_a_time: bool,
}

/// Starts the load's producers, each on its own client, each with its
/// share of `--records` and of the rate.
fn start_producers(
    common: &CommonArgs,
    config: &ProducerConfig,
    load: Load,
    live: &Arc<Live>,
) -> anyhow::Result<JoinSet<Tally>> {
    let mut tasks = JoinSet::new();
    for index in 0..load.producers {
        let plan = ProducerPlan {
            topic: common.topic.clone(),
            records: share(common.records, load.producers, index),
            records_per_s: load
                .records_per_s
                .map(|rate| rate as f64 / load.producers as f64),
            payload: load.payload.clone(),
            one_at_a_time: load.one_at_a_time,
        };
        let client = client(common, &format!("sluice-perf-producer-{index}"), true)?;
        tasks.spawn(run_producer(client, config.clone(), plan, live.clone()));
    }
    Ok(tasks)
}

async fn join_tallies(mut tasks: JoinSet<Tally>) -> Tally {
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => total.merge(tally),
            Err(error) => total.failed(format!("a producer task failed: {error}")),
        }
    }
    total
}

async fn produce(args: &ProduceArgs) -> anyhow::Result<Report> {
    let began = Instant::now();
    let common = &args.common;
    check_send(&args.send)?;
    if let Some(transactional_id) = &args.transactional_id {
        return produce_transactions(args, transactional_id, began).await;
    }
    prepare_topic(common, args.send.partitions).await?;
    let linger_ms = args.send.linger_ms.unwrap_or(if args.sync {
        LATENCY_LINGER_MS_DEFAULT
    } else {
        PRODUCE_LINGER_MS_DEFAULT
    });
    let live = Live::new();
    let activity = Activity::Produce {
        record_bytes: args.send.record_size,
    };
    let monitor = start_monitor(common, began, &live, "produce", activity);
    let started = Instant::now();
    let tasks = start_producers(
        common,
        &producer_config(common, &args.send, linger_ms),
        Load {
            producers: args.producers,
            records_per_s: args.throughput,
            payload: Payload::fixed(args.send.record_size as usize),
            one_at_a_time: args.sync,
        },
        &live,
    );
    let tally = match tasks {
        Ok(tasks) => join_tallies(tasks).await,
        Err(error) => {
            monitor.abort();
            return Err(error);
        }
    };
    let elapsed = started.elapsed();
    monitor.abort();
    Ok(Report {
        mode: "produce",
        topic: common.topic.clone(),
        settings: json!({
            "record_size": args.send.record_size,
            "acks": acks_name(args.send.acks),
            "producers": args.producers,
            "throughput_limit": args.throughput,
            "sync": args.sync,
            "batch_bytes": args.send.batch_bytes,
            "linger_ms": linger_ms,
            "retries": retries(&args.send),
            "idempotence": args.send.idempotence,
            "request_timeout_ms": common.request_timeout_ms,
        }),
        records_total: common.records,
        records: tally.records,
        acknowledged: tally.records,
        bytes: tally.records * args.send.record_size,
        elapsed,
        active: active_since(started, tally.last_progress),
        latency_name: "send_to_ack",
        latency: tally.latency,
        ack_latency: None,
        failed: tally.failed,
        unknown: tally.unknown,
        first_error: tally.first_error,
        stopped: live.stop_reason(),
    })
}

/// `produce --transactional-id`: every producer runs transactions (see
/// `txn`).
async fn produce_transactions(
    args: &ProduceArgs,
    transactional_id: &str,
    began: Instant,
) -> anyhow::Result<Report> {
    let common = &args.common;
    if args.send.acks != Acks::All {
        bail!("--transactional-id needs --acks all: transactions are written with acks=all");
    }
    let partitions = prepare_topic(common, args.send.partitions).await?.len() as i32;
    if partitions == 0 {
        bail!("topic {} has no partitions", common.topic);
    }
    let records_per_send = txn::records_per_send(args.send.batch_bytes, args.send.record_size);
    let live = Live::new();
    let activity = Activity::Produce {
        record_bytes: args.send.record_size,
    };
    let monitor = start_monitor(common, began, &live, "produce", activity);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..args.producers {
        let id = if args.producers == 1 {
            transactional_id.to_string()
        } else {
            format!("{transactional_id}-{index}")
        };
        let config = TransactionalConfig {
            max_block_ms: common.request_timeout_ms,
            delivery_timeout_ms: common.request_timeout_ms,
            ..TransactionalConfig::new(id)
        };
        let plan = txn::TxnPlan {
            topic: common.topic.clone(),
            partitions,
            first_partition: (index % partitions as u64) as i32,
            records: share(common.records, args.producers, index),
            records_per_txn: args.records_per_txn,
            records_per_send,
            payload: Payload::fixed(args.send.record_size as usize),
        };
        let client = match client(common, &format!("sluice-perf-producer-{index}"), true) {
            Ok(client) => client,
            Err(error) => {
                monitor.abort();
                return Err(error);
            }
        };
        tasks.spawn(txn::run_transactional_producer(
            client,
            config,
            plan,
            live.clone(),
        ));
    }
    let tally = join_tallies(tasks).await;
    let elapsed = started.elapsed();
    monitor.abort();
    Ok(Report {
        mode: "produce",
        topic: common.topic.clone(),
        settings: json!({
            "record_size": args.send.record_size,
            "acks": acks_name(args.send.acks),
            "producers": args.producers,
            "transactional_id": transactional_id,
            "records_per_txn": args.records_per_txn,
            "records_per_send": records_per_send,
            "batch_bytes": args.send.batch_bytes,
            "request_timeout_ms": common.request_timeout_ms,
        }),
        records_total: common.records,
        records: tally.records,
        acknowledged: tally.records,
        bytes: tally.records * args.send.record_size,
        elapsed,
        active: active_since(started, tally.last_progress),
        latency_name: "send_to_commit",
        latency: tally.latency,
        ack_latency: None,
        failed: tally.failed,
        unknown: tally.unknown,
        first_error: tally.first_error,
        stopped: live.stop_reason(),
    })
}

/// The time from `started` to the last progress (zero without any).
fn active_since(started: Instant, last_progress: Option<Instant>) -> Duration {
    last_progress.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(started)
    })
}

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Beginning,
    End,
}

/// A consumer assigned every partition of the topic, its positions set.
async fn start_consumer(
    common: &CommonArgs,
    partition_fetch_bytes: i32,
    start: Start,
) -> anyhow::Result<Consumer<TokioConnector>> {
    let client = client(common, "sluice-perf-consumer", false)?;
    let partitions = topic_partitions(common, &client).await?;
    let config = ConsumerConfig {
        partition_fetch_bytes_max: partition_fetch_bytes,
        fetch_max_bytes: partition_fetch_bytes.max(ConsumerConfig::default().fetch_max_bytes),
        auto_offset_reset: OffsetReset::Earliest,
        poll_records_max: POLL_RECORDS_MAX,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).map_err(|error| anyhow!("{error}"))?;
    consumer.assign(partitions.clone());
    let place = match start {
        Start::Beginning => "beginning",
        Start::End => "end",
    };
    let what = format!("seek to the {place} of {}", common.topic);
    step(common, &what, async {
        let sought = match start {
            Start::Beginning => consumer.seek_to_beginning(&partitions).await,
            Start::End => consumer.seek_to_end(&partitions).await,
        };
        sought.map_err(|error| anyhow!("{what}: {error}"))
    })
    .await?;
    Ok(consumer)
}

/// What a consuming loop saw.
struct Consumed {
    tally: Tally,
    bytes: u64,
    elapsed: Duration,
}

/// What `consume_loop` reads and how long it waits.
struct ReadPlan {
    records: u64,
    idle_timeout: Duration,
    /// Whether the time per poll is the latency to record.
    poll_latency: bool,
}

/// Polls until `records` records came, the run is stopped, or
/// `idle_timeout` passes without a record (which stops the run); records
/// past the count in the last poll are not counted. `per_record` sees
/// every record with the time its poll returned.
async fn consume_loop(
    consumer: &mut Consumer<TokioConnector>,
    plan: ReadPlan,
    live: Arc<Live>,
    mut per_record: impl FnMut(&mut Tally, &ConsumerRecord, Instant),
) -> Consumed {
    let mut tally = Tally::new();
    let mut bytes = 0u64;
    let started = Instant::now();
    let mut last_progress = started;
    let stopped = live.clone().stopped();
    tokio::pin!(stopped);
    while tally.records < plan.records {
        let polled_at = Instant::now();
        let wait = Duration::from_millis(POLL_WAIT_MS).min(plan.idle_timeout);
        let polled = tokio::select! {
            biased;
            _ = &mut stopped => break,
            polled = consumer.poll(wait) => polled,
        };
        let batch = match polled {
            Ok(batch) => batch,
            Err(error) => {
                live.stop(format!("poll: {error}"));
                break;
            }
        };
        let returned_at = Instant::now();
        if batch.is_empty() {
            if returned_at - last_progress > plan.idle_timeout {
                live.stop(format!(
                    "no record for {} ms after {} of {} (--idle-timeout-ms)",
                    plan.idle_timeout.as_millis(),
                    tally.records,
                    plan.records
                ));
                break;
            }
            continue;
        }
        last_progress = returned_at;
        tally.last_progress = Some(returned_at);
        if plan.poll_latency {
            let micros = latency_micros(returned_at - polled_at);
            tally.latency.saturating_record(micros);
            live.record_latency(micros);
        }
        let wanted = (plan.records - tally.records).min(batch.len() as u64) as usize;
        let mut batch_bytes = 0u64;
        for record in &batch[..wanted] {
            batch_bytes += record.value.as_ref().map_or(0, |value| value.len() as u64);
            per_record(&mut tally, record, returned_at);
        }
        bytes += batch_bytes;
        tally.records += wanted as u64;
        live.read_bytes.fetch_add(batch_bytes, Ordering::Relaxed);
        live.read.fetch_add(wanted as u64, Ordering::Relaxed);
    }
    Consumed {
        tally,
        bytes,
        elapsed: started.elapsed(),
    }
}

async fn consume(args: &ConsumeArgs) -> anyhow::Result<Report> {
    let began = Instant::now();
    let common = &args.common;
    let mut consumer = start_consumer(common, args.partition_fetch_bytes, Start::Beginning).await?;
    let live = Live::new();
    let monitor = start_monitor(common, began, &live, "consume", Activity::Consume);
    let plan = ReadPlan {
        records: common.records,
        idle_timeout: Duration::from_millis(args.idle.idle_timeout_ms),
        poll_latency: true,
    };
    let started = Instant::now();
    let consumed = consume_loop(&mut consumer, plan, live.clone(), |_, _, _| {}).await;
    monitor.abort();
    Ok(Report {
        mode: "consume",
        topic: common.topic.clone(),
        settings: json!({ "partition_fetch_bytes": args.partition_fetch_bytes }),
        records_total: common.records,
        records: consumed.tally.records,
        acknowledged: 0,
        bytes: consumed.bytes,
        elapsed: consumed.elapsed,
        active: active_since(started, consumed.tally.last_progress),
        latency_name: "poll",
        latency: consumed.tally.latency,
        ack_latency: None,
        failed: 0,
        unknown: 0,
        first_error: None,
        stopped: live.stop_reason(),
    })
}

/// Records the latency a stamped record's value tells, or an error for a
/// record that carries no send time.
fn stamp_latency(
    base: Instant,
    live: Arc<Live>,
) -> impl FnMut(&mut Tally, &ConsumerRecord, Instant) {
    move |tally, record, returned_at| match record.value.as_deref().and_then(send_time) {
        Some(sent) => {
            let micros = latency_micros((returned_at - base).saturating_sub(sent));
            tally.latency.saturating_record(micros);
            live.record_latency(micros);
        }
        None => tally.failed(format!("offset {} carries no send time", record.offset)),
    }
}

async fn end_to_end(args: &E2eArgs) -> anyhow::Result<Report> {
    let began = Instant::now();
    let common = &args.common;
    let size = args.send.record_size as usize;
    if size < SEND_TIME_BYTES {
        bail!("--record-size must be at least {SEND_TIME_BYTES} in e2e: the value carries the send time");
    }
    check_send(&args.send)?;
    prepare_topic(common, args.send.partitions).await?;
    // Positions are set before the first send, so every record sent is read.
    let mut consumer = start_consumer(common, E2E_PARTITION_FETCH_BYTES, Start::End).await?;
    let linger_ms = args.send.linger_ms.unwrap_or(LATENCY_LINGER_MS_DEFAULT);
    let base = Instant::now();
    let live = Live::new();
    let monitor = start_monitor(common, began, &live, "e2e", Activity::EndToEnd);
    let load = Load {
        producers: 1,
        records_per_s: Some(args.throughput),
        payload: Payload::Stamped { base, size },
        one_at_a_time: false,
    };
    let config = producer_config(common, &args.send, linger_ms);
    let producers = match start_producers(common, &config, load, &live) {
        Ok(producers) => producers,
        Err(error) => {
            monitor.abort();
            return Err(error);
        }
    };
    let plan = ReadPlan {
        records: common.records,
        idle_timeout: Duration::from_millis(args.idle.idle_timeout_ms),
        poll_latency: false,
    };
    let reader_live = live.clone();
    let reader = tokio::spawn(async move {
        let stamp = stamp_latency(base, reader_live.clone());
        consume_loop(&mut consumer, plan, reader_live, stamp).await
    });
    let sent = join_tallies(producers).await;
    let consumed = reader.await.context("the consumer task failed");
    monitor.abort();
    let mut consumed = consumed?;
    // A record lost or duplicated between the two sides is an error too,
    // in a run that went to its end.
    let stopped = live.stop_reason();
    if stopped.is_none() && sent.records != consumed.tally.records {
        let counts = format!(
            "{} acknowledged, {} consumed",
            sent.records, consumed.tally.records
        );
        consumed.tally.failed(counts);
    }
    Ok(Report {
        mode: "e2e",
        topic: common.topic.clone(),
        settings: json!({
            "record_size": args.send.record_size,
            "acks": acks_name(args.send.acks),
            "throughput_target": args.throughput,
            "batch_bytes": args.send.batch_bytes,
            "linger_ms": linger_ms,
            "retries": retries(&args.send),
            "idempotence": args.send.idempotence,
            "request_timeout_ms": common.request_timeout_ms,
        }),
        records_total: common.records,
        records: consumed.tally.records,
        acknowledged: sent.records,
        bytes: consumed.bytes,
        elapsed: consumed.elapsed,
        active: active_since(base, consumed.tally.last_progress),
        latency_name: "send_to_consume",
        latency: consumed.tally.latency,
        ack_latency: Some(sent.latency),
        failed: sent.failed + consumed.tally.failed,
        unknown: sent.unknown,
        first_error: sent.first_error.or(consumed.tally.first_error),
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        perf: PerfArgs,
    }

    fn parse(args: &[&str]) -> Result<PerfCommand, clap::Error> {
        let mut full = vec!["perf"];
        full.extend_from_slice(args);
        Wrapper::try_parse_from(full).map(|wrapper| wrapper.perf.command)
    }

    /// A broker in this process on a free port of 127.0.0.1, over a temp
    /// directory, on a current-thread runtime and a thread of its own, as
    /// `sluice serve` runs it; it stops when the returned sender is dropped.
    fn broker(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
        let overrides = [
            ("listeners", "PLAINTEXT://127.0.0.1:0".to_string()),
            ("log.dirs", dir.display().to_string()),
        ]
        .map(|(key, value)| (key.to_string(), value));
        let config = crate::config_file::load(None, &overrides).unwrap();
        let disk = sluice_driver::FileDisk::open(dir).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let environment = sluice_driver::Environment {
                    config,
                    listener: tokio::net::TcpListener::from_std(listener).unwrap(),
                    disk,
                    advertised: ("127.0.0.1".into(), port),
                    clock: sluice_driver::system_clock(),
                    seed: 7,
                    peers: std::collections::BTreeMap::new(),
                    connector: sluice_driver::TokioConnector,
                    peer_status: None,
                    metrics_listener: None,
                };
                let shutdown = async {
                    let _ = stopped.await;
                };
                sluice_driver::serve(environment, shutdown).await.unwrap();
            });
        });
        (format!("127.0.0.1:{port}"), stop)
    }

    /// Parses `args` as a perf command against `bootstrap`.
    fn command(bootstrap: &str, args: &[&str]) -> PerfCommand {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--bootstrap-server", bootstrap, "--timeout-ms", "60000"]);
        parse(&full).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_mode_counts_every_record_against_a_real_broker() {
        let dir = tempfile::tempdir().unwrap();
        let (bootstrap, _stop) = broker(dir.path());
        let produce_args = [
            "produce",
            "--topic",
            "t",
            "--partitions",
            "2",
            "--producers",
            "2",
            "--records",
            "3001",
            "--record-size",
            "100",
            "--acks",
            "all",
        ];
        let PerfCommand::Produce(args) = command(&bootstrap, &produce_args) else {
            unreachable!()
        };
        let report = produce(&args).await.unwrap();
        assert_eq!(
            (report.records, report.bytes, report.errors()),
            (3001, 300_100, 0)
        );
        assert_eq!(report.stopped, None);
        assert_eq!(report.latency.len(), 3001, "one latency per record");

        let consume_args = ["consume", "--topic", "t", "--records", "3000"];
        let PerfCommand::Consume(args) = command(&bootstrap, &consume_args) else {
            unreachable!()
        };
        let report = consume(&args).await.unwrap();
        // Exactly the count asked for, though 3001 records are there.
        assert_eq!((report.records, report.bytes), (3000, 300_000));

        let e2e_args = [
            "e2e",
            "--topic",
            "t",
            "--records",
            "400",
            "--throughput",
            "4000",
            "--record-size",
            "64",
        ];
        let PerfCommand::E2e(args) = command(&bootstrap, &e2e_args) else {
            unreachable!()
        };
        let report = end_to_end(&args).await.unwrap();
        assert_eq!((report.records, report.errors()), (400, 0));
        assert_eq!(report.latency.len(), 400);
        // Paced at 4,000 records/s, 400 records take about 0.1 s.
        assert!(
            report.elapsed >= Duration::from_millis(90),
            "{:?}",
            report.elapsed
        );
        let ack_latency = report.ack_latency.as_ref().unwrap();
        assert_eq!(ack_latency.len(), 400);

        let sync_args = [
            "produce",
            "--topic",
            "t",
            "--records",
            "20",
            "--record-size",
            "10",
            "--sync",
        ];
        let PerfCommand::Produce(args) = command(&bootstrap, &sync_args) else {
            unreachable!()
        };
        let report = produce(&args).await.unwrap();
        assert_eq!((report.records, report.errors()), (20, 0));
        assert_eq!(report.settings["linger_ms"], 0, "--sync lingers 0 ms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_and_transactional_runs_count_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let (bootstrap, _stop) = broker(dir.path());
        let idempotent_args = [
            "produce",
            "--topic",
            "i",
            "--partitions",
            "2",
            "--records",
            "2001",
            "--record-size",
            "100",
            "--acks",
            "all",
            "--idempotence",
        ];
        let PerfCommand::Produce(args) = command(&bootstrap, &idempotent_args) else {
            unreachable!()
        };
        let report = produce(&args).await.unwrap();
        assert_eq!((report.records, report.errors()), (2001, 0));
        assert_eq!(report.settings["idempotence"], true);
        assert_eq!(report.settings["retries"], IDEMPOTENT_RETRIES_DEFAULT);

        let transactional_args = [
            "produce",
            "--topic",
            "x",
            "--partitions",
            "2",
            "--producers",
            "2",
            "--records",
            "2500",
            "--record-size",
            "100",
            "--batch-bytes",
            "4096",
            "--acks",
            "all",
            "--transactional-id",
            "perf",
            "--records-per-txn",
            "300",
        ];
        let PerfCommand::Produce(args) = command(&bootstrap, &transactional_args) else {
            unreachable!()
        };
        let report = produce(&args).await.unwrap();
        assert_eq!(
            (report.records, report.bytes, report.errors()),
            (2500, 250_000, 0)
        );
        assert_eq!(report.latency.len(), 2500, "one latency per record");
        assert_eq!(report.latency_name, "send_to_commit");
        assert_eq!(report.settings["records_per_txn"], 300);
        assert_eq!(report.settings["records_per_send"], 35);
        // Every record committed once (the consumer skips the markers).
        let consume_args = ["consume", "--topic", "x", "--records", "2500"];
        let PerfCommand::Consume(args) = command(&bootstrap, &consume_args) else {
            unreachable!()
        };
        let report = consume(&args).await.unwrap();
        assert_eq!((report.records, report.bytes), (2500, 250_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_past_its_timeout_stops_and_reports_what_it_did() {
        let dir = tempfile::tempdir().unwrap();
        let (bootstrap, _stop) = broker(dir.path());
        let args = [
            "produce",
            "--topic",
            "slow",
            "--partitions",
            "1",
            "--records",
            "1000000",
            "--record-size",
            "10",
            "--throughput",
            "200",
            "--bootstrap-server",
            &bootstrap,
            "--timeout-ms",
            "1500",
        ];
        let PerfCommand::Produce(args) = parse(&args).unwrap() else {
            unreachable!()
        };
        let started = std::time::Instant::now();
        let report = produce(&args).await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(
            report.stopped.as_deref(),
            Some("the run did not finish within 1500 ms (--timeout-ms)")
        );
        // About 200 records/s until the stop, not 1,000,000 records.
        assert!((50..=400).contains(&report.records), "{}", report.records);
        assert_eq!(
            report.records + report.failed + report.unknown + report.not_done(),
            1_000_000
        );
        assert!(report.failure().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consuming_more_than_there_is_fails_after_the_idle_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (bootstrap, _stop) = broker(dir.path());
        let produce_args = [
            "produce",
            "--topic",
            "u",
            "--partitions",
            "1",
            "--records",
            "5",
            "--record-size",
            "8",
        ];
        let PerfCommand::Produce(args) = command(&bootstrap, &produce_args) else {
            unreachable!()
        };
        produce(&args).await.unwrap();
        let consume_args = [
            "consume",
            "--topic",
            "u",
            "--records",
            "6",
            "--idle-timeout-ms",
            "300",
        ];
        let PerfCommand::Consume(args) = command(&bootstrap, &consume_args) else {
            unreachable!()
        };
        let report = consume(&args).await.unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(
            report.stopped.as_deref(),
            Some("no record for 300 ms after 5 of 6 (--idle-timeout-ms)")
        );
        assert_eq!(
            report.failure().unwrap(),
            "consume: stopped: no record for 300 ms after 5 of 6 (--idle-timeout-ms)"
        );
    }

    #[test]
    fn produce_flags_parse_with_their_defaults() {
        let command = parse(&[
            "produce",
            "--topic",
            "t",
            "--records",
            "10",
            "--record-size",
            "100",
            "--acks",
            "all",
        ])
        .unwrap();
        let PerfCommand::Produce(args) = command else {
            panic!("not produce: {command:?}")
        };
        assert_eq!(args.common.topic, "t");
        assert_eq!(args.common.records, 10);
        assert_eq!(args.common.bootstrap_server, None);
        assert_eq!(args.common.request_timeout_ms, REQUEST_TIMEOUT_MS_DEFAULT);
        assert_eq!(
            args.common.reporting_interval_ms,
            REPORTING_INTERVAL_MS_DEFAULT
        );
        assert_eq!(args.send.acks, Acks::All);
        assert_eq!(args.send.record_size, 100);
        assert_eq!(args.producers, 1);
        assert_eq!(args.throughput, None);
        assert!(!args.common.json);
    }

    #[test]
    fn out_of_range_flags_are_refused() {
        let base = ["produce", "--topic", "t", "--record-size", "10"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        assert!(with(&["--records", "0"]).is_err());
        assert!(with(&["--records", "1", "--acks", "2"]).is_err());
        assert!(with(&["--records", "1", "--producers", "65"]).is_err());
        assert!(with(&["--records", "1", "--acks", "-1"]).is_ok());
        assert!(parse(&[
            "e2e",
            "--topic",
            "t",
            "--records",
            "1",
            "--record-size",
            "8"
        ])
        .is_err());
    }

    #[test]
    fn idempotence_and_transactions_refuse_what_cannot_work() {
        let base = [
            "produce",
            "--topic",
            "t",
            "--records",
            "1",
            "--record-size",
            "10",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        let send = |extra: &[&str]| match with(extra).unwrap() {
            PerfCommand::Produce(args) => args.send,
            other => panic!("not produce: {other:?}"),
        };
        assert!(check_send(&send(&["--idempotence"])).is_err(), "acks=1");
        assert!(check_send(&send(&["--idempotence", "--acks", "all"])).is_ok());
        assert!(check_send(&send(&["--idempotence", "--acks", "all", "--retries", "0"])).is_err());
        assert_eq!(retries(&send(&["--acks", "all"])), 0);
        assert_eq!(retries(&send(&["--idempotence", "--acks", "all"])), 10);
        assert!(with(&["--transactional-id", "x", "--sync"]).is_err());
        assert!(with(&["--transactional-id", "x", "--throughput", "10"]).is_err());
        assert!(with(&["--transactional-id", "x", "--records-per-txn", "0"]).is_err());
        let Ok(PerfCommand::Produce(args)) = with(&["--transactional-id", "x"]) else {
            panic!("parses")
        };
        assert_eq!(args.records_per_txn, RECORDS_PER_TXN_DEFAULT);
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, producers) in [(10, 3), (3, 5), (1_000_000, 7), (1, 1)] {
            let shares: Vec<u64> = (0..producers).map(|i| share(total, producers, i)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total);
            let spread = shares.iter().max().unwrap() - shares.iter().min().unwrap();
            assert!(spread <= 1, "{shares:?}");
        }
    }

    #[test]
    fn the_pacer_spaces_records_by_the_rate() {
        let unpaced = Pacer::new(None);
        assert_eq!(unpaced.due(1_000), None);
        let pacer = Pacer::new(Some(1_000.0));
        assert_eq!(pacer.due(0), Some(pacer.started));
        assert_eq!(
            pacer.due(500),
            Some(pacer.started + Duration::from_millis(500))
        );
    }

    #[test]
    fn stamped_values_carry_their_send_time() {
        let value = stamped_value(Duration::from_nanos(1_234_567_890_123), 64);
        assert_eq!(value.len(), 64);
        assert_eq!(
            send_time(&value),
            Some(Duration::from_nanos(1_234_567_890_123))
        );
        assert_eq!(send_time(&value[..7]), None);
    }
}
