//! The workload: producer processes using `sluice-client` (the same
//! producer users run) over turmoil's network, each record recorded in the
//! history; and reading a log straight from a disk for the final check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord, TopicPartition,
};
use sluice_core::batch;
use sluice_core::log::PartitionLog;
use sluice_core::storage::MemStorage;
use tracing::Instrument;

use crate::history::{History, Operation, Outcome};
use crate::run::{node_host, sim_clock, KillSwitch, Spec, PORT};

#[derive(Debug, Clone)]
pub struct Workload {
    pub topic: String,
    pub partitions: i32,
    pub producers: usize,
    pub records_per_producer: usize,
    /// Extra bytes in each value, to fill segments.
    pub padding_bytes: usize,
    /// Records a producer sends back to back before it pauses.
    pub burst: usize,
    /// Pause between two bursts of one producer.
    pub send_interval_ms: u64,
    pub acks: Acks,
    /// Members of a consumer group reading the topic (0: no group). They
    /// run as hosts named `member0`.., so the nemesis can crash them.
    pub group_members: usize,
    /// Replicas of each partition of the topic: more than one only when the
    /// nodes form a cluster.
    pub replication_factor: i16,
    /// The topic's `min.insync.replicas`, when set.
    pub min_insync_replicas: Option<i16>,
    /// Nodes the clients bootstrap from: `node1`..; 1 unless the nodes form
    /// a cluster.
    pub bootstrap_nodes: u32,
    /// Exactly-once pipelines reading the topic, if any.
    pub eos: Option<crate::eos::EosWorkload>,
}

/// The consumer group of the workload.
pub const GROUP: &str = "sim-group";

/// A turmoil connector for the client.
#[derive(Clone, Copy, Default)]
pub struct SimConnector;

impl sluice_client::Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;

    fn connect(
        &self,
        address: &str,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send {
        let address = address.to_string();
        async move { turmoil::net::TcpStream::connect(address).await }
    }
}

/// Counts finished client processes.
#[derive(Clone)]
pub struct Done {
    finished: Arc<AtomicUsize>,
    total: usize,
}

impl Done {
    pub fn all_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst) >= self.total
    }

    pub fn describe(&self) -> String {
        format!(
            "{} of {} client processes finished",
            self.finished.load(Ordering::SeqCst),
            self.total
        )
    }
}

/// Starts every client process of the workload: the producers, and one
/// reader that follows every partition until the producers are done.
pub fn start(
    sim: &mut turmoil::Sim<'_>,
    spec: &Spec,
    history: &History,
) -> (Done, crate::eos::Controls) {
    let workers = spec.workload.eos.as_ref().map_or(0, |e| e.workers);
    let done = Done {
        finished: Arc::default(),
        // Each worker, and the reader of their output.
        total: spec.workload.producers
            + 1
            + spec.workload.group_members
            + workers
            + usize::from(workers > 0),
    };
    let producers_done = Arc::new(AtomicUsize::new(0));
    let mut controls = crate::eos::start(sim, spec, history, &producers_done, &done.finished);
    for index in 0..spec.workload.group_members {
        let kill = KillSwitch::new();
        add_member(
            sim,
            spec,
            history,
            index,
            &producers_done,
            &done.finished,
            &kill,
        );
        controls.kills.insert(format!("member{index}"), kill);
    }
    for index in 0..spec.workload.producers {
        let name = format!("producer{index}");
        let workload = spec.workload.clone();
        let history = history.clone();
        let finished = done.finished.clone();
        let producers_done = producers_done.clone();
        let seed = spec.seed.wrapping_add(index as u64 + 1);
        let span = tracing::info_span!("client", host = name.as_str());
        let process = name.clone();
        sim.client(
            name.as_str(),
            async move {
                produce(&process, &workload, &history, seed).await;
                producers_done.fetch_add(1, Ordering::SeqCst);
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            .instrument(span),
        );
    }
    let (workload, history, finished) = (
        spec.workload.clone(),
        history.clone(),
        done.finished.clone(),
    );
    let seed = spec.seed.wrapping_add(0x7ead);
    sim.client(
        "reader",
        async move {
            read(&workload, &history, seed, &producers_done).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        .instrument(tracing::info_span!("client", host = "reader")),
    );
    (done, controls)
}

/// A group member as a host: restarted after a crash, it joins again and
/// resumes from the group's committed offsets.
fn add_member(
    sim: &mut turmoil::Sim<'_>,
    spec: &Spec,
    history: &History,
    index: usize,
    producers_done: &Arc<AtomicUsize>,
    finished: &Arc<AtomicUsize>,
    kill: &KillSwitch,
) {
    let name = format!("member{index}");
    let (workload, history, producers_done, finished) = (
        spec.workload.clone(),
        history.clone(),
        producers_done.clone(),
        finished.clone(),
    );
    let seed = spec.seed.wrapping_add(0x6e00 + index as u64);
    let host = name.clone();
    let kill = kill.clone();
    sim.host(host.as_str(), move || {
        let killed = kill.armed();
        let (name, workload, history, producers_done, finished) = (
            name.clone(),
            workload.clone(),
            history.clone(),
            producers_done.clone(),
            finished.clone(),
        );
        let span = tracing::info_span!("member", host = name.as_str());
        async move {
            // Killed, the member drops its consumer at once (as a crash
            // would), before the host stops.
            tokio::select! {
                done = consume_in_group(&name, &workload, &history, seed, &producers_done) => {
                    if done {
                        finished.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ = killed => return Ok(()),
            }
            // A finished member stays idle, so the host does not count as failed.
            std::future::pending::<()>().await;
            Ok(())
        }
        .instrument(span)
    });
}

/// Polls to the end as a group member, committing as it goes; returns true
/// once the producers are done and the group's commits reach every
/// partition's end.
async fn consume_in_group(
    process: &str,
    workload: &Workload,
    history: &History,
    seed: u64,
    producers_done: &AtomicUsize,
) -> bool {
    let Ok(client) = Client::new(SimConnector, client_config(process, workload, seed)) else {
        return false;
    };
    ensure_topic(&client, workload).await;
    let config = ConsumerConfig {
        group_id: Some(GROUP.to_string()),
        session_timeout_ms: 6_000,
        heartbeat_interval_ms: 1_000,
        enable_auto_commit: false,
        fetch_max_wait_ms: 100,
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let Ok(mut consumer) = Consumer::new(client, config) else {
        return false;
    };
    if consumer.subscribe([workload.topic.clone()]).is_err() {
        return false;
    }
    let all: Vec<TopicPartition> = (0..workload.partitions)
        .map(|p| TopicPartition::new(workload.topic.clone(), p))
        .collect();
    let mut generation = None;
    for round in 0u64.. {
        let polled_at = tokio::time::Instant::now();
        let records = match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => records,
            Err(error) => {
                tracing::debug!(%error, "poll failed");
                // Never spin: a failing poll may return at once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        };
        if records.is_empty() && polled_at.elapsed() < Duration::from_millis(10) {
            // A poll that returns at once with nothing (while joining) must
            // not spin the simulated host.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if consumer.generation() != generation {
            generation = consumer.generation();
            if let Some(generation) = generation {
                let partitions = consumer
                    .assignment()
                    .iter()
                    .map(|tp| tp.partition)
                    .collect();
                let index = history.invoke(
                    process,
                    Operation::Assignment {
                        group: GROUP.into(),
                        generation,
                        partitions,
                    },
                );
                let operation = history.entries()[index].operation.clone();
                history.complete(index, operation, Outcome::Ok);
            }
        }
        for partition in 0..workload.partitions {
            let seen: Vec<(i64, String)> = records
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| (r.offset, unpadded(r.value.as_deref().unwrap_or_default())))
                .collect();
            if !seen.is_empty() {
                let operation = Operation::Consume {
                    group: GROUP.into(),
                    partition,
                    records: seen,
                };
                let index = history.invoke(process, operation.clone());
                history.complete(index, operation, Outcome::Ok);
            }
        }
        if !records.is_empty() || round % 5 == 0 {
            commit_positions(process, &consumer, history).await;
        }
        if producers_done.load(Ordering::SeqCst) >= workload.producers
            && round % 5 == 0
            && group_done(process, &consumer, &all, history).await
        {
            let _ = consumer.close().await;
            return true;
        }
    }
    false
}

/// Commits the positions of the owned partitions, recording each.
async fn commit_positions<C: sluice_client::Connector>(
    process: &str,
    consumer: &Consumer<C>,
    history: &History,
) {
    let positions: std::collections::BTreeMap<TopicPartition, i64> = consumer
        .assignment()
        .into_iter()
        .filter_map(|tp| consumer.position(&tp).map(|p| (tp, p)))
        .collect();
    if positions.is_empty() {
        return;
    }
    let indexes: Vec<(usize, Operation)> = positions
        .iter()
        .map(|(tp, offset)| {
            let operation = Operation::Commit {
                group: GROUP.into(),
                partition: tp.partition,
                offset: *offset,
            };
            (history.invoke(process, operation.clone()), operation)
        })
        .collect();
    let outcome = match consumer.commit_offsets_sync(positions).await {
        Ok(()) => Outcome::Ok,
        Err(error) => Outcome::Failed(error.to_string()),
    };
    for (index, operation) in indexes {
        history.complete(index, operation, outcome.clone());
    }
}

/// True when the group's committed offset of every partition reached its
/// end; records the committed offsets read.
async fn group_done<C: sluice_client::Connector>(
    process: &str,
    consumer: &Consumer<C>,
    all: &[TopicPartition],
    history: &History,
) -> bool {
    let Ok(ends) = consumer.list_offsets(all, OffsetSpec::Latest).await else {
        return false;
    };
    let invoked: Vec<usize> = all
        .iter()
        .map(|tp| {
            history.invoke(
                process,
                Operation::Committed {
                    group: GROUP.into(),
                    partition: tp.partition,
                    offset: -1,
                },
            )
        })
        .collect();
    let Ok(committed) = consumer.committed(all).await else {
        return false;
    };
    let mut done = true;
    for (tp, index) in all.iter().zip(invoked) {
        let offset = committed.get(tp).copied().flatten().unwrap_or(-1);
        history.complete(
            index,
            Operation::Committed {
                group: GROUP.into(),
                partition: tp.partition,
                offset,
            },
            Outcome::Ok,
        );
        done &= ends.get(tp).is_some_and(|end| offset >= end.offset);
    }
    done
}

/// Polls every partition from the start and records what it sees, with a
/// high watermark lookup now and then, until the producers finished and
/// it has read up to the end.
async fn read(workload: &Workload, history: &History, seed: u64, producers_done: &AtomicUsize) {
    let Ok(client) = Client::new(SimConnector, client_config("reader", workload, seed)) else {
        return;
    };
    ensure_topic(&client, workload).await;
    let config = ConsumerConfig {
        fetch_max_wait_ms: 100,
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let Ok(mut consumer) = Consumer::new(client, config) else {
        return;
    };
    let partitions: Vec<TopicPartition> = (0..workload.partitions)
        .map(|p| TopicPartition::new(workload.topic.clone(), p))
        .collect();
    consumer.assign(partitions.clone());
    for tp in &partitions {
        let _ = consumer.seek(tp, 0);
    }
    for round in 0u64.. {
        let finished = producers_done.load(Ordering::SeqCst) >= workload.producers;
        if round % 5 == 0 || finished {
            let ends = consumer.list_offsets(&partitions, OffsetSpec::Latest).await;
            if let Ok(ends) = &ends {
                for (tp, listed) in ends {
                    let read = history.invoke(
                        "reader",
                        Operation::Read {
                            partition: tp.partition,
                            records: Vec::new(),
                            high_watermark: None,
                        },
                    );
                    history.complete(
                        read,
                        Operation::Read {
                            partition: tp.partition,
                            records: Vec::new(),
                            high_watermark: Some(listed.offset),
                        },
                        Outcome::Ok,
                    );
                }
            }
            if finished && caught_up(&consumer, &partitions, &ends) {
                return;
            }
        }
        let invoked = history.invoke(
            "reader",
            Operation::Read {
                partition: -1,
                records: Vec::new(),
                high_watermark: None,
            },
        );
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => {
                history.complete(
                    invoked,
                    Operation::Read {
                        partition: -1,
                        records: Vec::new(),
                        high_watermark: None,
                    },
                    Outcome::Ok,
                );
                for partition in 0..workload.partitions {
                    let seen: Vec<(i64, String)> = records
                        .iter()
                        .filter(|r| r.partition == partition)
                        .map(|r| (r.offset, unpadded(r.value.as_deref().unwrap_or_default())))
                        .collect();
                    if !seen.is_empty() {
                        let index = history.invoke(
                            "reader",
                            Operation::Read {
                                partition,
                                records: Vec::new(),
                                high_watermark: None,
                            },
                        );
                        history.complete(
                            index,
                            Operation::Read {
                                partition,
                                records: seen,
                                high_watermark: None,
                            },
                            Outcome::Ok,
                        );
                    }
                }
            }
            Err(error) => history.complete(
                invoked,
                Operation::Read {
                    partition: -1,
                    records: Vec::new(),
                    high_watermark: None,
                },
                Outcome::Failed(error.to_string()),
            ),
        }
    }
}

fn caught_up<C: sluice_client::Connector>(
    consumer: &Consumer<C>,
    partitions: &[TopicPartition],
    ends: &sluice_client::Result<
        std::collections::BTreeMap<TopicPartition, sluice_client::ListedOffset>,
    >,
) -> bool {
    let Ok(ends) = ends else { return false };
    partitions.iter().all(|tp| {
        ends.get(tp)
            .is_some_and(|end| consumer.position(tp).is_some_and(|p| p >= end.offset))
    })
}

pub fn unpadded(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches('.')
        .to_string()
}

pub fn client_config(process: &str, workload: &Workload, seed: u64) -> ClientConfig {
    let bootstrap =
        (1..=workload.bootstrap_nodes.max(1)).map(|n| format!("{}:{PORT}", node_host(n)));
    let mut config = ClientConfig::new(bootstrap)
        .with_seed(seed)
        .with_client_id(process);
    config.request_timeout_ms = 5_000;
    config
}

/// Sends every record of one producer, each recorded in the history. A
/// record whose delivery failed was perhaps written: the checkers only
/// rely on acknowledged ones.
async fn produce(process: &str, workload: &Workload, history: &History, seed: u64) {
    let client = match Client::new(SimConnector, client_config(process, workload, seed)) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot make a client");
            return;
        }
    };
    ensure_topic(&client, workload).await;
    let config = ProducerConfig {
        acks: workload.acks,
        linger_ms: 2,
        delivery_timeout_ms: 20_000,
        ..ProducerConfig::default()
    };
    let producer = match Producer::new(client, config, sim_clock()) {
        Ok(producer) => producer,
        Err(error) => {
            tracing::error!(%error, "cannot make a producer");
            return;
        }
    };
    let mut pending = Vec::new();
    for n in 0..workload.records_per_producer {
        let partition = (n % workload.partitions as usize) as i32;
        let value = format!("{process}-{n}");
        let padded = format!("{value}{}", ".".repeat(workload.padding_bytes));
        let record = ProducerRecord::new(workload.topic.clone(), padded).with_partition(partition);
        let index = history.invoke(
            process,
            Operation::Produce {
                partition,
                value: value.clone(),
                offset: None,
            },
        );
        match producer.send(record).await {
            Ok(delivery) => pending.push((index, partition, value, delivery)),
            Err(error) => history.complete(
                index,
                Operation::Produce {
                    partition,
                    value,
                    offset: None,
                },
                Outcome::Failed(error.to_string()),
            ),
        }
        settle_ready(&mut pending, history).await;
        if (n + 1) % workload.burst.max(1) == 0 {
            tokio::time::sleep(Duration::from_millis(workload.send_interval_ms)).await;
        }
    }
    for (index, partition, value, delivery) in pending {
        complete(history, index, partition, value, delivery.await);
    }
    let _ = producer.close().await;
}

/// Records the outcome of deliveries that already finished, keeping order.
async fn settle_ready(
    pending: &mut Vec<(usize, i32, String, sluice_client::DeliveryFuture)>,
    history: &History,
) {
    while pending.len() > 64 {
        let (index, partition, value, delivery) = pending.remove(0);
        complete(history, index, partition, value, delivery.await);
    }
}

fn complete(
    history: &History,
    index: usize,
    partition: i32,
    value: String,
    result: sluice_client::Result<sluice_client::RecordMetadata>,
) {
    match result {
        Ok(metadata) => {
            let offset = Some(metadata.offset).filter(|o| *o >= 0);
            history.complete(
                index,
                Operation::Produce {
                    partition,
                    value,
                    offset,
                },
                Outcome::Ok,
            );
        }
        Err(error) => history.complete(
            index,
            Operation::Produce {
                partition,
                value,
                offset: None,
            },
            Outcome::Failed(error.to_string()),
        ),
    }
}

/// Creates the topic, retrying through faults; another producer may win.
async fn ensure_topic(client: &Client<SimConnector>, workload: &Workload) {
    ensure_topic_named(client, workload, &workload.topic, workload.partitions).await
}

/// Creates a topic of the workload (its replication settings), unless it
/// exists.
pub async fn ensure_topic_named<C: sluice_client::Connector>(
    client: &Client<C>,
    workload: &Workload,
    name: &str,
    partitions: i32,
) {
    let admin = sluice_client::Admin::new(client.clone());
    let mut topic = sluice_client::NewTopic::new(
        name.to_string(),
        partitions,
        workload.replication_factor.max(1),
    );
    if let Some(min_insync) = workload.min_insync_replicas {
        topic = topic.with_config("min.insync.replicas", min_insync.to_string());
    }
    for _ in 0..200 {
        match admin.create_topic(&topic).await {
            Ok(()) => return,
            Err(error)
                if error.to_string().contains("already exists")
                    || error.response_error()
                        == Some(kafka_protocol::ResponseError::TopicAlreadyExists) =>
            {
                return
            }
            Err(error) => tracing::debug!(%error, "create topic failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of a log, as (offset, value without padding).
pub fn read_log(log: &PartitionLog, storage: &mut MemStorage) -> Vec<(i64, String)> {
    let mut records = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Ok(bytes) = log.read(storage, offset, log.log_end_offset(), 1 << 20, true) else {
            break;
        };
        let before = offset;
        for (_, range) in batch::headers_in(&bytes) {
            let Ok(decoded) = batch::decode_records(&bytes[range]) else {
                return records;
            };
            let from = offset;
            for record in decoded.into_iter().filter(|r| r.offset >= from) {
                let value = unpadded(record.value.as_deref().unwrap_or_default());
                offset = record.offset + 1;
                records.push((record.offset, value));
            }
        }
        if offset == before {
            break;
        }
    }
    records
}
