//! Exactly-once pipelines: workers that read the workload's topic, write
//! one derived record per input record to an output topic and commit
//! their input offsets in the same transaction, as Kafka Streams does.
//! Some transactions abort on purpose; workers crash and come back (the
//! new instance fences the old one and aborts what it left open), turn
//! zombie while a stand-in with the same transactional id takes over
//! (`Twin`), and have requests delivered late through the tap
//! (`tap.rs`); nodes crash and tear their disks. The checkers then read
//! the output topic's durable log as a read_committed consumer would and
//! hold the pipeline to its promise: every input record below the
//! committed offsets is in the output exactly once, nothing an aborted
//! transaction wrote is, every transaction the coordinator confirmed is
//! whole, and none is left open; and what the read_committed consumers
//! learned of last stable offsets along the way (`eos-lso`) is what Kafka
//! promises of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::{
    Client, Connector, Consumer, ConsumerConfig, FetchMarks, IsolationLevel, ListedOffset,
    OffsetReset, OffsetSpec, ProducerRecord, TopicPartition, TransactionState, TransactionalConfig,
    TransactionalProducer,
};
use sluice_core::batch;
use sluice_core::log::PartitionLog;
use sluice_core::rng::Rng;
use sluice_core::storage::MemStorage;
use tracing::Instrument;

use crate::check::Violation;
use crate::history::{Entry, History, Operation, Outcome};
use crate::nemesis::Fault;
use crate::run::{sim_clock, KillSwitch, Spec};
use crate::tap::{Tap, TapConnector};
use crate::workload::{client_config, ensure_topic_named, unpadded, SimConnector, Workload};

/// The group whose committed offsets the workers' transactions carry.
pub const EOS_GROUP: &str = "sim-eos";

/// The pipelines of a run.
#[derive(Debug, Clone)]
pub struct EosWorkload {
    /// Workers, hosts `eos0`..; worker `w` owns the input partitions `p`
    /// with `p % workers == w`.
    pub workers: usize,
    pub output_partitions: i32,
    /// Transactions a worker aborts on purpose, in percent.
    pub abort_percent: u64,
    /// Input records one transaction takes at most.
    pub records_per_transaction: usize,
    pub transaction_timeout_ms: i32,
}

/// The output topic of the workload's pipelines.
pub fn output_topic(workload: &Workload) -> String {
    format!("{}-out", workload.topic)
}

/// The value a worker writes for input record `offset` of `partition`:
/// the input's own value, and which transaction wrote it.
fn output_value(partition: i32, offset: i64, value: &str, writer: &str) -> String {
    format!("{partition}:{offset}:{value}@{writer}")
}

/// The input record an output value derives from.
fn input_of(output: &str) -> Option<(i32, i64)> {
    let mut parts = output.splitn(3, ':');
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some((partition, offset))
}

/// A stand-in instance of a worker (host `eos{i}-twin`, the same
/// transactional id and input partitions): idle until the nemesis wakes
/// it, while the worker itself is cut off as a zombie; killed and put back
/// to sleep later.
#[derive(Clone)]
pub struct Twin {
    wake: Arc<tokio::sync::watch::Sender<bool>>,
    pub kill: KillSwitch,
}

impl Twin {
    fn new() -> Twin {
        Twin {
            wake: Arc::new(tokio::sync::watch::channel(false).0),
            kill: KillSwitch::new(),
        }
    }

    /// Starts the stand-in (it runs until put to sleep).
    pub fn wake(&self) {
        self.wake.send_replace(true);
    }

    /// Makes the next start of the host wait for `wake` again.
    pub fn sleep(&self) {
        self.wake.send_replace(false);
    }

    pub fn is_awake(&self) -> bool {
        *self.wake.borrow()
    }

    fn awake(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.wake.subscribe();
        async move {
            let _ = receiver.wait_for(|awake| *awake).await;
        }
    }
}

/// The host of worker `index`'s stand-in.
pub fn twin_host(worker: &str) -> String {
    format!("{worker}-twin")
}

/// What the nemesis drives in the pipelines: the workers' kill switches,
/// their stand-ins (for the workers a `Zombie` fault names), and the tap
/// their connections go through.
#[derive(Clone, Default)]
pub struct Controls {
    pub kills: BTreeMap<String, KillSwitch>,
    /// By the worker's host name.
    pub twins: BTreeMap<String, Twin>,
    pub tap: Tap,
}

/// What one worker host needs, shared by all its starts.
#[derive(Clone)]
struct WorkerHost {
    name: String,
    index: usize,
    tag: &'static str,
    workload: Workload,
    eos: EosWorkload,
    history: History,
    tap: Tap,
    seed: u64,
    boots: Arc<AtomicUsize>,
}

impl WorkerHost {
    /// The worker of the host's next start.
    fn worker(&self) -> Worker {
        let boot = self.boots.fetch_add(1, Ordering::SeqCst) as u64;
        Worker {
            name: self.name.clone(),
            index: self.index,
            tag: self.tag,
            tap: self.tap.clone(),
            workload: self.workload.clone(),
            eos: self.eos.clone(),
            history: self.history.clone(),
            rng: Rng::from_seed(self.seed ^ boot.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            boot,
        }
    }
}

/// Starts every worker as a host the nemesis may crash, a stand-in for
/// each worker a `Zombie` fault names, the courier of delayed requests
/// when a fault delays one, and the reader; returns what the nemesis drives.
pub fn start(
    sim: &mut turmoil::Sim<'_>,
    spec: &Spec,
    history: &History,
    producers_done: &Arc<AtomicUsize>,
    finished: &Arc<AtomicUsize>,
) -> Controls {
    let mut controls = Controls {
        tap: Tap::new(history.clone()),
        ..Controls::default()
    };
    let Some(eos) = spec.workload.eos.clone() else {
        return controls;
    };
    let workers_done = Arc::new(AtomicUsize::new(0));
    let (workload, reader_history, reader_finished, reader_workers_done) = (
        spec.workload.clone(),
        history.clone(),
        finished.clone(),
        workers_done.clone(),
    );
    let reader_seed = spec.seed.wrapping_add(0xe0e0);
    sim.client(
        "eos-reader",
        async move {
            read_output(
                &workload,
                &reader_history,
                reader_seed,
                &reader_workers_done,
            )
            .await;
            reader_finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        .instrument(tracing::info_span!("client", host = "eos-reader")),
    );
    for index in 0..eos.workers {
        let name = format!("eos{index}");
        let kill = KillSwitch::new();
        controls.kills.insert(name.clone(), kill.clone());
        let host = WorkerHost {
            name: name.clone(),
            index,
            tag: "",
            workload: spec.workload.clone(),
            eos: eos.clone(),
            history: history.clone(),
            tap: controls.tap.clone(),
            seed: spec.seed.wrapping_add(0xe050 + index as u64),
            boots: Arc::default(),
        };
        let (producers_done, finished) = (producers_done.clone(), finished.clone());
        let workers_done = workers_done.clone();
        // A worker restarted after it finished finishes again: it counts once.
        let counted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        sim.host(name.clone().as_str(), move || {
            let killed = kill.armed();
            let worker = host.worker();
            let (producers_done, finished) = (producers_done.clone(), finished.clone());
            let workers_done = workers_done.clone();
            let counted = counted.clone();
            let span = tracing::info_span!("eos", host = host.name.as_str());
            async move {
                tokio::select! {
                    done = worker.run(&producers_done) => {
                        if done && !counted.swap(true, Ordering::SeqCst) {
                            finished.fetch_add(1, Ordering::SeqCst);
                            workers_done.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ = killed => return Ok(()),
                }
                // A finished worker stays idle, so the host does not count as failed.
                std::future::pending::<()>().await;
                Ok(())
            }
            .instrument(span)
        });
    }
    let zombies: BTreeSet<String> = spec
        .faults
        .iter()
        .filter_map(|s| match &s.fault {
            Fault::Zombie { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .collect();
    for index in 0..eos.workers {
        let worker = format!("eos{index}");
        if !zombies.contains(&worker) {
            continue;
        }
        let twin = Twin::new();
        controls.twins.insert(worker.clone(), twin.clone());
        let host = WorkerHost {
            name: twin_host(&worker),
            index,
            tag: "t",
            workload: spec.workload.clone(),
            eos: eos.clone(),
            history: history.clone(),
            tap: controls.tap.clone(),
            seed: spec.seed.wrapping_add(0x7e17 + index as u64),
            boots: Arc::default(),
        };
        let producers_done = producers_done.clone();
        sim.host(host.name.clone().as_str(), move || {
            let (awake, killed, killed_later) =
                (twin.awake(), twin.kill.armed(), twin.kill.armed());
            let host = host.clone();
            let producers_done = producers_done.clone();
            let span = tracing::info_span!("eos", host = host.name.as_str());
            async move {
                tokio::select! {
                    _ = awake => {}
                    _ = killed => return Ok(()),
                }
                // The stand-in never counts as finished: its worker must.
                let worker = host.worker();
                tokio::select! {
                    _ = worker.run(&producers_done) => {}
                    _ = killed_later => return Ok(()),
                }
                std::future::pending::<()>().await;
                Ok(())
            }
            .instrument(span)
        });
    }
    let delays = spec
        .faults
        .iter()
        .any(|s| matches!(s.fault, Fault::DelayRequest { .. }));
    if delays {
        let tap = controls.tap.clone();
        sim.host("courier", move || {
            let tap = tap.clone();
            async move {
                crate::tap::courier(tap).await;
                Ok(())
            }
            .instrument(tracing::info_span!("client", host = "courier"))
        });
    }
    controls
}

/// Records what one read_committed consumer learns of last stable
/// offsets (`Operation::LastStable`): every fetch answer that returned
/// data or moved a mark, and every ListOffsets(latest) answer.
struct StableRecorder {
    process: String,
    /// The consumer's name in the history: its process and which of the
    /// process's consumers it is.
    observer: String,
    /// The last (leader epoch, high watermark, last stable offset)
    /// recorded per partition.
    last: BTreeMap<TopicPartition, (i32, i64, i64)>,
}

impl StableRecorder {
    fn new(process: &str, observer: String) -> StableRecorder {
        StableRecorder {
            process: process.to_string(),
            observer,
            last: BTreeMap::new(),
        }
    }

    fn record(&self, history: &History, operation: Operation) {
        let index = history.invoke(&self.process, operation.clone());
        history.complete(index, operation, Outcome::Ok);
    }

    /// The marks of the fetch answers since the last call.
    fn fetched<C: Connector>(&mut self, history: &History, consumer: &mut Consumer<C>) {
        for marks in consumer.take_fetch_marks() {
            let FetchMarks {
                partition: tp,
                leader_epoch,
                fetch_offset,
                high_watermark,
                last_stable_offset,
                next_offset,
                ..
            } = marks;
            let now = (leader_epoch, high_watermark, last_stable_offset);
            let data = next_offset.is_some_and(|next| next > fetch_offset);
            if !data && self.last.get(&tp) == Some(&now) {
                continue;
            }
            self.last.insert(tp.clone(), now);
            self.record(
                history,
                Operation::LastStable {
                    observer: self.observer.clone(),
                    topic: tp.topic,
                    partition: tp.partition,
                    leader_epoch,
                    last_stable_offset,
                    high_watermark: Some(high_watermark),
                    fetch_offset: Some(fetch_offset),
                    data_end: next_offset,
                },
            );
        }
    }

    /// ListOffsets(latest) answers of a read_committed consumer.
    fn listed(&self, history: &History, ends: &BTreeMap<TopicPartition, ListedOffset>) {
        for (tp, listed) in ends {
            self.record(
                history,
                Operation::LastStable {
                    observer: self.observer.clone(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    leader_epoch: listed.leader_epoch,
                    last_stable_offset: listed.offset,
                    high_watermark: None,
                    fetch_offset: None,
                    data_end: None,
                },
            );
        }
    }
}

struct Worker {
    name: String,
    index: usize,
    /// Marks the transactions of a stand-in instance (`t`) apart from the
    /// worker's own (empty) in the values they write.
    tag: &'static str,
    tap: Tap,
    workload: Workload,
    eos: EosWorkload,
    history: History,
    rng: Rng,
    /// How many times this worker's host started: its transactions' names
    /// differ across restarts.
    boot: u64,
}

/// How a transaction failed: before its commit (it aborted, or its abort
/// failed too), or in the commit.
enum Ended {
    Before(sluice_client::Error),
    Commit(sluice_client::Error),
}

/// Why an instance stopped.
enum Stop {
    /// Every owned input partition is committed to its end.
    Done,
    /// The producer can go on no more (fenced, or its outcome unknown): a
    /// new instance takes over.
    Restart,
}

impl Worker {
    fn transactional_id(&self) -> String {
        format!("eos-{}", self.index)
    }

    fn owned(&self) -> Vec<TopicPartition> {
        (0..self.workload.partitions)
            .filter(|p| *p as usize % self.eos.workers == self.index)
            .map(|p| TopicPartition::new(self.workload.topic.clone(), p))
            .collect()
    }

    /// Runs instances until one finishes; true then.
    async fn run(mut self, producers_done: &AtomicUsize) -> bool {
        let seed = self.rng.next_u64();
        let Ok(client) = Client::new(
            TapConnector::new(&self.name, self.tap.clone()),
            client_config(&self.name, &self.workload, seed),
        ) else {
            return false;
        };
        crate::workload::ensure_topic_named(
            &client,
            &self.workload,
            &self.workload.topic,
            self.workload.partitions,
        )
        .await;
        ensure_topic_named(
            &client,
            &self.workload,
            &output_topic(&self.workload),
            self.eos.output_partitions,
        )
        .await;
        for instance in 0u64.. {
            match self.instance(&client, instance, producers_done).await {
                Stop::Done => return true,
                Stop::Restart => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        false
    }

    /// One producer instance: init (fencing the last), read the committed
    /// offsets, then transactions until done or until it cannot go on.
    async fn instance(
        &mut self,
        client: &Client<TapConnector>,
        instance: u64,
        producers_done: &AtomicUsize,
    ) -> Stop {
        let config = TransactionalConfig::new(self.transactional_id())
            .with_transaction_timeout_ms(self.eos.transaction_timeout_ms);
        let mut producer =
            match TransactionalProducer::init(client.clone(), config, sim_clock()).await {
                Ok(producer) => producer,
                Err(error) => {
                    tracing::debug!(%error, "init failed");
                    return Stop::Restart;
                }
            };
        let consumer_config = ConsumerConfig {
            group_id: Some(EOS_GROUP.to_string()),
            enable_auto_commit: false,
            fetch_max_wait_ms: 100,
            auto_offset_reset: OffsetReset::Earliest,
            isolation_level: IsolationLevel::ReadCommitted,
            ..ConsumerConfig::default()
        };
        let Ok(mut consumer) = Consumer::new(client.clone(), consumer_config) else {
            return Stop::Restart;
        };
        let owned = self.owned();
        consumer.assign(owned.clone());
        if !self.seek_to_committed(&mut consumer, &owned).await {
            return Stop::Restart;
        }
        let writer_prefix = format!("{}{}.{}.{}", self.index, self.tag, self.boot, instance);
        let mut stable =
            StableRecorder::new(&self.name, format!("{}/{}", self.name, writer_prefix));
        for transaction in 0u64.. {
            let polled = consumer.poll(Duration::from_millis(200)).await;
            stable.fetched(&self.history, &mut consumer);
            let records = match polled {
                Ok(records) => records,
                Err(error) => {
                    tracing::debug!(%error, "poll failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if records.is_empty() {
                if producers_done.load(Ordering::SeqCst) >= self.workload.producers
                    && self.done(&consumer, &owned, &stable).await
                {
                    return Stop::Done;
                }
                continue;
            }
            let take = records.len().min(self.eos.records_per_transaction);
            let records = &records[..take];
            let writer = format!("{writer_prefix}.{transaction}");
            match self.transaction(&mut producer, records, &writer).await {
                Ok(()) => {}
                Err(Stop::Restart) => return Stop::Restart,
                Err(Stop::Done) => unreachable!("a transaction does not finish the worker"),
            }
            // Whatever happened, read on from what is committed: records
            // past an aborted transaction are read again.
            if !self.seek_to_committed(&mut consumer, &owned).await {
                return Stop::Restart;
            }
        }
        Stop::Restart
    }

    /// One transaction over `records`: each one's derived record, the
    /// offsets after them, then a commit (or, now and then, an abort).
    async fn transaction(
        &mut self,
        producer: &mut TransactionalProducer<TapConnector>,
        records: &[sluice_client::ConsumerRecord],
        writer: &str,
    ) -> Result<(), Stop> {
        let output = output_topic(&self.workload);
        let mut by_partition: BTreeMap<i32, Vec<ProducerRecord>> = BTreeMap::new();
        let mut values = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for record in records {
            let input = unpadded(record.value.as_deref().unwrap_or_default());
            let value = output_value(record.partition, record.offset, &input, writer);
            let partition = (fnv(&value) % self.eos.output_partitions as u64) as i32;
            by_partition
                .entry(partition)
                .or_default()
                .push(ProducerRecord::new(
                    output.clone(),
                    Bytes::from(value.clone()),
                ));
            values.push(value);
            next.insert(record.partition, record.offset + 1);
        }
        let commit = self.rng.next_u64() % 100 >= self.eos.abort_percent;
        let operation = Operation::Transaction {
            transactional_id: self.transactional_id(),
            producer_id: producer.producer_id(),
            epoch: producer.producer_epoch(),
            commit,
            outputs: values,
            offsets: next.iter().map(|(p, o)| (*p, *o)).collect(),
        };
        let index = self.history.invoke(&self.name, operation.clone());
        let outcome = self
            .write_and_end(producer, &by_partition, &next, commit)
            .await;
        // A producer that can go on no more (after an error, or a commit
        // whose epoch bump failed) leaves the work to a new instance.
        let restart = producer.state() != TransactionState::Ready;
        let recorded = match outcome {
            Ok(()) => Outcome::Ok,
            // A commit that gave up may have committed, and so may one
            // refused after an attempt that went unanswered: unknown.
            Err(Ended::Commit(error))
                if producer.state() == TransactionState::Committing
                    || producer.has_unanswered_requests() =>
            {
                tracing::debug!(%error, "commit outcome unknown");
                Outcome::Unknown
            }
            Err(Ended::Commit(error) | Ended::Before(error)) => Outcome::Failed(error.to_string()),
        };
        self.history.complete(index, operation, recorded);
        if restart {
            return Err(Stop::Restart);
        }
        Ok(())
    }

    /// Sends, adds the offsets and ends the transaction; a failed send or
    /// offsets call aborts it instead.
    async fn write_and_end(
        &self,
        producer: &mut TransactionalProducer<TapConnector>,
        by_partition: &BTreeMap<i32, Vec<ProducerRecord>>,
        next: &BTreeMap<i32, i64>,
        commit: bool,
    ) -> Result<(), Ended> {
        producer.begin().map_err(Ended::Before)?;
        let output = output_topic(&self.workload);
        let mut written = Ok(());
        for (partition, records) in by_partition {
            let tp = TopicPartition::new(output.clone(), *partition);
            if let Err(error) = producer.send(&tp, records).await {
                written = Err(error);
                break;
            }
        }
        if written.is_ok() {
            let offsets: Vec<(TopicPartition, i64)> = next
                .iter()
                .map(|(p, o)| (TopicPartition::new(self.workload.topic.clone(), *p), *o))
                .collect();
            written = producer.send_offsets(EOS_GROUP, &offsets).await;
        }
        match written {
            Ok(()) if commit => producer.commit().await.map_err(Ended::Commit),
            Ok(()) => producer.abort().await.map_err(Ended::Before),
            Err(error) => {
                // Only an abort is allowed now; its own failure leaves the
                // producer for a new instance.
                let _ = producer.abort().await;
                Err(Ended::Before(error))
            }
        }
    }

    /// Moves every owned partition to the group's committed offset (or the
    /// start); false when they cannot be read.
    async fn seek_to_committed(
        &self,
        consumer: &mut Consumer<TapConnector>,
        owned: &[TopicPartition],
    ) -> bool {
        for _ in 0..50 {
            match consumer.committed(owned).await {
                Ok(committed) => {
                    for tp in owned {
                        let offset = committed.get(tp).copied().flatten().unwrap_or(0);
                        if consumer.seek(tp, offset).is_err() {
                            return false;
                        }
                    }
                    return true;
                }
                Err(error) => {
                    tracing::debug!(%error, "committed offsets not readable yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        false
    }

    /// Every owned partition is committed to its end; the committed
    /// offsets are recorded.
    async fn done(
        &self,
        consumer: &Consumer<TapConnector>,
        owned: &[TopicPartition],
        stable: &StableRecorder,
    ) -> bool {
        let Ok(ends) = consumer.list_offsets(owned, OffsetSpec::Latest).await else {
            return false;
        };
        stable.listed(&self.history, &ends);
        let Ok(committed) = consumer.committed(owned).await else {
            return false;
        };
        let mut done = true;
        for tp in owned {
            let offset = committed.get(tp).copied().flatten().unwrap_or(0);
            done &= ends.get(tp).is_some_and(|end| offset >= end.offset);
        }
        if done {
            for tp in owned {
                let operation = Operation::Committed {
                    group: EOS_GROUP.into(),
                    partition: tp.partition,
                    offset: committed.get(tp).copied().flatten().unwrap_or(0),
                };
                let index = self.history.invoke(&self.name, operation.clone());
                self.history.complete(index, operation, Outcome::Ok);
            }
        }
        done
    }
}

/// Follows every output partition at read_committed from the start,
/// recording what it gets, until the workers are done and it has read up
/// to the last stable offsets.
async fn read_output(
    workload: &Workload,
    history: &History,
    seed: u64,
    workers_done: &AtomicUsize,
) {
    let Some(eos) = &workload.eos else { return };
    let Ok(client) = Client::new(SimConnector, client_config("eos-reader", workload, seed)) else {
        return;
    };
    let topic = output_topic(workload);
    ensure_topic_named(&client, workload, &topic, eos.output_partitions).await;
    let config = ConsumerConfig {
        fetch_max_wait_ms: 100,
        auto_offset_reset: OffsetReset::Earliest,
        isolation_level: IsolationLevel::ReadCommitted,
        ..ConsumerConfig::default()
    };
    let Ok(mut consumer) = Consumer::new(client, config) else {
        return;
    };
    let all: Vec<TopicPartition> = (0..eos.output_partitions)
        .map(|p| TopicPartition::new(topic.clone(), p))
        .collect();
    consumer.assign(all.clone());
    let mut stable = StableRecorder::new("eos-reader", "eos-reader".into());
    loop {
        let polled = consumer.poll(Duration::from_millis(200)).await;
        stable.fetched(history, &mut consumer);
        let records = match polled {
            Ok(records) => records,
            Err(error) => {
                tracing::debug!(%error, "poll failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        };
        for partition in 0..eos.output_partitions {
            let read: Vec<(i64, String)> = records
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| {
                    let value = r.value.as_deref().unwrap_or_default();
                    (r.offset, String::from_utf8_lossy(value).into_owned())
                })
                .collect();
            if !read.is_empty() {
                let operation = Operation::ReadCommitted {
                    partition,
                    records: read,
                };
                let index = history.invoke("eos-reader", operation.clone());
                history.complete(index, operation, Outcome::Ok);
            }
        }
        if records.is_empty() && workers_done.load(Ordering::SeqCst) >= eos.workers {
            let Ok(ends) = consumer.list_offsets(&all, OffsetSpec::Latest).await else {
                continue;
            };
            stable.listed(history, &ends);
            let caught_up = all.iter().all(|tp| {
                let end = ends.get(tp).map_or(0, |e| e.offset);
                consumer.position(tp).unwrap_or(0) >= end
            });
            if caught_up {
                return;
            }
        }
    }
}

/// FNV-1a, to spread output records over partitions.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a read_committed consumer reads from an output partition's
/// durable log, modelled from the batches themselves: a producer's
/// transactional records count once its COMMIT marker follows them, and
/// never after its ABORT marker. Also the producers whose transaction is
/// still open at the log's end.
#[derive(Debug, Default, Clone)]
pub struct CommittedView {
    pub records: Vec<(i64, String)>,
    pub open: BTreeSet<i64>,
    pub aborted: Vec<String>,
    /// Every transaction in the log, in the order they began.
    pub transactions: Vec<TxnSpan>,
}

/// One transaction in a partition's log: the offset of its first batch
/// and of its marker (None while none follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnSpan {
    pub producer_id: i64,
    pub first_offset: i64,
    pub marker_offset: Option<i64>,
}

pub fn read_committed_view(log: &PartitionLog, storage: &mut MemStorage) -> CommittedView {
    let mut view = CommittedView::default();
    let mut pending: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    // The open transaction of each producer, by its index in `transactions`.
    let mut open_spans: BTreeMap<i64, usize> = BTreeMap::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Ok(bytes) = log.read(storage, offset, log.log_end_offset(), 1 << 20, true) else {
            break;
        };
        let before = offset;
        for (header, range) in batch::headers_in(&bytes) {
            let batch_bytes = &bytes[range];
            offset = header.next_offset();
            if header.is_control() {
                if let Some(span) = open_spans.remove(&header.producer_id) {
                    view.transactions[span].marker_offset = Some(header.base_offset);
                }
                if let Ok(Some(control)) = batch::parse_control_record(batch_bytes) {
                    let records = pending.remove(&header.producer_id).unwrap_or_default();
                    if control.commit {
                        view.records.extend(records);
                    } else {
                        view.aborted.extend(records.into_iter().map(|(_, v)| v));
                    }
                }
                continue;
            }
            let Ok(decoded) = batch::decode_records(batch_bytes) else {
                return view;
            };
            let records = decoded.into_iter().map(|r| {
                (
                    r.offset,
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            });
            if header.is_transactional() {
                open_spans.entry(header.producer_id).or_insert_with(|| {
                    view.transactions.push(TxnSpan {
                        producer_id: header.producer_id,
                        first_offset: header.base_offset,
                        marker_offset: None,
                    });
                    view.transactions.len() - 1
                });
                pending
                    .entry(header.producer_id)
                    .or_default()
                    .extend(records);
            } else {
                view.records.extend(records);
            }
        }
        if offset == before {
            break;
        }
    }
    view.open = pending.keys().copied().collect();
    view
}

/// The exactly-once checkers. `inputs` are the input topic's durable
/// records by partition; `outputs` the output partitions' committed views.
pub fn check(
    history: &[Entry],
    inputs: &BTreeMap<i32, Vec<(i64, String)>>,
    outputs: &BTreeMap<i32, CommittedView>,
    output_topic: &str,
) -> Vec<Violation> {
    let mut found = check_last_stable(history, outputs, output_topic);
    let violation = |checker: &'static str, detail: String| Violation { checker, detail };
    // The committed offsets the workers read at the end.
    let mut final_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for entry in history {
        if let (
            Operation::Committed {
                group,
                partition,
                offset,
            },
            Outcome::Ok,
        ) = (&entry.operation, &entry.outcome)
        {
            if group == EOS_GROUP {
                final_offsets.insert(*partition, *offset);
            }
        }
    }
    let mut outputs_of: BTreeMap<(i32, i64), Vec<&str>> = BTreeMap::new();
    let mut visible: BTreeSet<&str> = BTreeSet::new();
    for (partition, view) in outputs {
        for (_, value) in &view.records {
            visible.insert(value);
            match input_of(value) {
                Some(input) => outputs_of.entry(input).or_default().push(value),
                None => found.push(violation(
                    "eos-exactly-once",
                    format!("output partition {partition} holds {value:?}, which names no input"),
                )),
            }
        }
        for producer in &view.open {
            found.push(violation(
                "eos-no-open-transactions",
                format!("output partition {partition}: producer {producer} has a transaction open after every timeout passed"),
            ));
        }
    }
    for (partition, records) in inputs {
        let Some(&committed) = final_offsets.get(partition) else {
            found.push(violation(
                "eos-exactly-once",
                format!(
                    "input partition {partition}: no worker reported its final committed offset"
                ),
            ));
            continue;
        };
        for (offset, _) in records {
            let seen = outputs_of.get(&(*partition, *offset)).map_or(0, Vec::len);
            if *offset < committed && seen != 1 {
                found.push(violation(
                    "eos-exactly-once",
                    format!(
                        "input {partition}:{offset} is below the committed offset {committed} and is in the output {seen} times: {:?}",
                        outputs_of.get(&(*partition, *offset))
                    ),
                ));
            }
            if *offset >= committed && seen != 0 {
                found.push(violation(
                    "eos-exactly-once",
                    format!("input {partition}:{offset} is at or past the committed offset {committed} yet in the output"),
                ));
            }
        }
    }
    // A read_committed consumer gets only what ends committed, at the
    // offsets where it ends up.
    let committed_at: BTreeSet<(i32, i64, &str)> = outputs
        .iter()
        .flat_map(|(p, view)| view.records.iter().map(move |(o, v)| (*p, *o, v.as_str())))
        .collect();
    for entry in history {
        if let Operation::ReadCommitted { partition, records } = &entry.operation {
            for (offset, value) in records {
                if !committed_at.contains(&(*partition, *offset, value.as_str())) {
                    found.push(violation(
                        "eos-read-committed",
                        format!("a read_committed consumer got {value:?} at {partition}:{offset}, which is not committed there"),
                    ));
                }
            }
        }
    }
    for entry in history {
        let Operation::Transaction {
            transactional_id,
            producer_id,
            epoch,
            commit,
            outputs,
            ..
        } = &entry.operation
        else {
            continue;
        };
        let shown = outputs
            .iter()
            .filter(|v| visible.contains(v.as_str()))
            .count();
        match (&entry.outcome, commit) {
            (Outcome::Ok, true) if shown != outputs.len() => found.push(violation(
                "eos-committed-visible",
                format!("{transactional_id} (producer {producer_id}, epoch {epoch}) committed {} records; {shown} are readable", outputs.len()),
            )),
            (Outcome::Ok, false) | (Outcome::Failed(_), _) if shown > 0 => found.push(violation(
                "eos-aborted-invisible",
                format!("{transactional_id} (producer {producer_id}, epoch {epoch}) did not commit, yet {shown} of its {} records are readable", outputs.len()),
            )),
            (Outcome::Unknown, _) if shown != 0 && shown != outputs.len() => found.push(violation(
                "eos-atomic",
                format!("{transactional_id} (producer {producer_id}, epoch {epoch}): {shown} of its {} records are readable", outputs.len()),
            )),
            _ => {}
        }
    }
    found
}

/// `eos-lso`: what read_committed consumers learned of last stable offsets
/// holds to Kafka's promises. In every fetch answer the last stable offset
/// is at most the high watermark and the data returned ends at or below
/// it. Within one leader epoch (the one a fetch named, so only that
/// epoch's leader answered, or the one ListOffsets answered from) neither
/// moves back for one consumer; a new leader may start lower (Kafka's
/// does, until its high watermark catches up). Below a last stable offset
/// every transaction of the output is decided: its marker is in the final
/// log, and below the high watermark answered with it.
fn check_last_stable(
    history: &[Entry],
    outputs: &BTreeMap<i32, CommittedView>,
    output_topic: &str,
) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut highest: BTreeMap<StableKey<'_>, Highest> = BTreeMap::new();
    // Transactions found passed while undecided, reported once each.
    let mut passed: BTreeSet<(i32, i64)> = BTreeSet::new();
    for (index, entry) in history.iter().enumerate() {
        let Operation::LastStable {
            observer,
            topic,
            partition,
            leader_epoch,
            last_stable_offset,
            high_watermark,
            data_end,
            ..
        } = &entry.operation
        else {
            continue;
        };
        let seen = Seen {
            op: crate::report::op_number(index),
            stable: *last_stable_offset,
            high_watermark: *high_watermark,
        };
        let what = format!(
            "{observer} (op {}) {topic}-{partition} in leader epoch {leader_epoch}",
            seen.op
        );
        if seen.stable < 0 {
            found.push(lso_violation(format!(
                "{what}: a read_committed answer without a last stable offset ({})",
                seen.stable
            )));
            continue;
        }
        found.extend(check_one_answer(&what, &seen, *data_end));
        // A fetch that named no epoch may have been answered by any broker
        // that thought it led.
        if *leader_epoch >= 0 {
            let key = (observer.as_str(), topic.as_str(), *partition, *leader_epoch);
            found.extend(highest.entry(key).or_default().see(&what, &seen));
        }
        if topic == output_topic {
            if let Some(view) = outputs.get(partition) {
                for txn in undecided_below(view, &seen) {
                    if passed.insert((*partition, txn.first_offset)) {
                        found.push(lso_violation(format!(
                            "{what}: last stable offset {} (high watermark {:?}) passes the transaction of producer {} from offset {}, whose marker is at {:?}",
                            seen.stable, seen.high_watermark, txn.producer_id, txn.first_offset, txn.marker_offset
                        )));
                    }
                }
            }
        }
    }
    found
}

/// An observer's view of one partition in one leader epoch.
type StableKey<'a> = (&'a str, &'a str, i32, i32);

fn lso_violation(detail: String) -> Violation {
    Violation {
        checker: "eos-lso",
        detail,
    }
}

/// One observation of a last stable offset (and of the high watermark
/// with it, from a fetch), by the number of its op.
struct Seen {
    op: usize,
    stable: i64,
    high_watermark: Option<i64>,
}

/// The highest last stable offset and high watermark one observer saw of
/// a partition in a leader epoch, each with the op that saw it.
#[derive(Default)]
struct Highest {
    stable: Option<(i64, usize)>,
    high_watermark: Option<(i64, usize)>,
}

impl Highest {
    /// Takes a later observation: a violation for each mark that moved back.
    fn see(&mut self, what: &str, seen: &Seen) -> Vec<Violation> {
        let mut found = Vec::new();
        match self.stable {
            Some((before, op)) if seen.stable < before => found.push(lso_violation(format!(
                "{what}: last stable offset {} after {before} (op {op}) in the same epoch",
                seen.stable
            ))),
            _ => self.stable = Some((seen.stable, seen.op)),
        }
        if let Some(hw) = seen.high_watermark {
            match self.high_watermark {
                Some((before, op)) if hw < before => found.push(lso_violation(format!(
                    "{what}: high watermark {hw} after {before} (op {op}) in the same epoch"
                ))),
                _ => self.high_watermark = Some((hw, seen.op)),
            }
        }
        found
    }
}

/// One answer on its own: the last stable offset at most the high
/// watermark beside it, and no data returned at or past it.
fn check_one_answer(what: &str, seen: &Seen, data_end: Option<i64>) -> Vec<Violation> {
    let mut found = Vec::new();
    if let Some(hw) = seen.high_watermark.filter(|hw| seen.stable > *hw) {
        found.push(lso_violation(format!(
            "{what}: last stable offset {} above the high watermark {hw}",
            seen.stable
        )));
    }
    if let Some(end) = data_end.filter(|end| *end > seen.stable) {
        found.push(lso_violation(format!(
            "{what}: records up to {end} returned at or past the last stable offset {}",
            seen.stable
        )));
    }
    found
}

/// The transactions of the final log that begin below an observed last
/// stable offset yet were not decided then: no marker, or (from a fetch)
/// a marker not below the high watermark answered with it.
fn undecided_below<'v>(view: &'v CommittedView, seen: &Seen) -> impl Iterator<Item = &'v TxnSpan> {
    let (stable, high_watermark) = (seen.stable, seen.high_watermark);
    view.transactions
        .iter()
        .filter(move |t| t.first_offset < stable)
        .filter(move |t| match (t.marker_offset, high_watermark) {
            (None, _) => true,
            (Some(marker), Some(hw)) => marker >= hw,
            (Some(_), None) => false,
        })
}
