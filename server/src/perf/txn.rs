//! The transactional case of `sluice perf produce` (`--transactional-id`):
//! each producer runs transactions of `--records-per-txn` records with a
//! `TransactionalProducer` of its own, and a record counts as
//! acknowledged only once its transaction committed.
//!
//! A transaction's records go out in sends of up to `--batch-bytes` each
//! (one batch per send), each send to the next partition of the topic in
//! turn. The producer hands all of a transaction's sends to the
//! transactional producer at once (`send_all`), which pipelines them (see
//! `sluice_client::transaction`). A record's latency runs from the start
//! of the sends that carry it to the commit's answer.
//!
//! A failed send or commit stops the producer (as a send `Producer::send`
//! refuses stops the plain case): the records of a transaction whose send
//! failed are counted as failed (the transaction is aborted), those of a
//! commit without an answer as unknown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_client::{
    system_clock, Client, ProducerRecord, TokioConnector, TopicPartition, TransactionalConfig,
    TransactionalProducer,
};
use tokio::time::Instant;

use super::live::Live;
use super::report::latency_micros;
use super::{outcome_unknown, Payload, Tally};

/// Bytes a record adds to a batch beyond its value (length, attributes,
/// timestamp and offset deltas, key and value lengths, header count): an
/// upper bound for values below 2 MiB and no key.
const RECORD_FRAMING_BYTES: u64 = 16;

/// Records per send for values of `record_bytes` in batches of
/// `batch_bytes`: as many as fit, at least one.
pub fn records_per_send(batch_bytes: u64, record_bytes: u64) -> u64 {
    (batch_bytes / (record_bytes + RECORD_FRAMING_BYTES)).max(1)
}

/// One transactional producer's share of a run.
pub struct TxnPlan {
    pub topic: String,
    pub partitions: i32,
    /// The partition of the first send; the next sends take the next ones.
    pub first_partition: i32,
    pub records: u64,
    pub records_per_txn: u64,
    pub records_per_send: u64,
    pub payload: Payload,
}

/// How a transaction ended, if not committed.
enum TxnEnd {
    /// A send failed: the transaction is aborted.
    Failed(String),
    /// The commit got no answer: it may have committed.
    Unknown(String),
    /// The run was stopped with the transaction open.
    Stopped,
}

/// Runs the plan's transactions one after another until done, failed or
/// stopped.
pub async fn run_transactional_producer(
    client: Client<TokioConnector>,
    config: TransactionalConfig,
    plan: TxnPlan,
    live: Arc<Live>,
) -> Tally {
    let mut tally = Tally::new();
    let stopped = live.clone().stopped();
    tokio::pin!(stopped);
    let init = tokio::select! {
        biased;
        _ = &mut stopped => return tally,
        init = TransactionalProducer::init(client, config, system_clock()) => init,
    };
    let mut producer = match init {
        Ok(producer) => producer,
        Err(error) => {
            tally.failed(format!("start a transactional producer: {error}"));
            return tally;
        }
    };
    let mut partition = plan.first_partition;
    let mut done = 0;
    while done < plan.records {
        let count = (plan.records - done).min(plan.records_per_txn);
        let transaction = Transaction {
            plan: &plan,
            count,
            first_partition: partition,
        };
        partition = (partition + transaction.sends() as i32) % plan.partitions;
        let ended = tokio::select! {
            biased;
            _ = &mut stopped => Err(TxnEnd::Stopped),
            ended = transaction.run(&mut producer, &live) => ended,
        };
        match ended {
            Ok(sends) => committed(&mut tally, &live, sends, count),
            Err(end) => {
                not_committed(&mut tally, &live, end, count);
                if live.stop_reason().is_none() {
                    // Bounded by the producer's own deadline.
                    let _ = producer.abort().await;
                }
                break;
            }
        }
        done += count;
    }
    tally
}

/// One transaction of a plan: `count` records from `first_partition` on.
struct Transaction<'a> {
    plan: &'a TxnPlan,
    count: u64,
    first_partition: i32,
}

impl Transaction<'_> {
    fn sends(&self) -> u64 {
        self.count.div_ceil(self.plan.records_per_send)
    }

    /// Begins, sends and commits; returns when each send started and how
    /// many records it carried.
    async fn run(
        &self,
        producer: &mut TransactionalProducer<TokioConnector>,
        live: &Live,
    ) -> Result<Vec<(Instant, u64)>, TxnEnd> {
        let plan = self.plan;
        producer
            .begin()
            .map_err(|error| TxnEnd::Failed(format!("begin: {error}")))?;
        let mut batches = Vec::new();
        let mut left = self.count;
        let mut partition = self.first_partition;
        while left > 0 {
            let n = left.min(plan.records_per_send);
            let tp = TopicPartition::new(plan.topic.as_str(), partition);
            let records: Vec<ProducerRecord> = (0..n)
                .map(|_| {
                    ProducerRecord::new(plan.topic.as_str(), plan.payload.value())
                        .with_partition(partition)
                })
                .collect();
            batches.push((tp, records));
            left -= n;
            partition = (partition + 1) % plan.partitions;
        }
        live.sent.fetch_add(self.count, Ordering::Relaxed);
        let sent_at = Instant::now();
        producer
            .send_all(&batches)
            .await
            .map_err(|error| TxnEnd::Failed(format!("send: {error}")))?;
        producer.commit().await.map_err(|error| {
            let what = format!("commit: {error}");
            if outcome_unknown(&error) {
                TxnEnd::Unknown(what)
            } else {
                TxnEnd::Failed(what)
            }
        })?;
        Ok(batches
            .iter()
            .map(|(_, records)| (sent_at, records.len() as u64))
            .collect())
    }
}

fn committed(tally: &mut Tally, live: &Live, sends: Vec<(Instant, u64)>, count: u64) {
    let now = Instant::now();
    for (sent_at, records) in sends {
        let micros = latency_micros(now.saturating_duration_since(sent_at));
        tally.latency.saturating_record_n(micros, records);
        live.record_latency(micros);
    }
    tally.records += count;
    tally.last_progress = Some(now);
    live.acknowledged.fetch_add(count, Ordering::Relaxed);
}

fn not_committed(tally: &mut Tally, live: &Live, end: TxnEnd, count: u64) {
    live.unacknowledged.fetch_add(count, Ordering::Relaxed);
    match end {
        TxnEnd::Failed(error) => {
            tally.failed += count;
            tally.first_error.get_or_insert(error);
        }
        TxnEnd::Unknown(error) => {
            tally.unknown += count;
            tally.first_error.get_or_insert(error);
        }
        TxnEnd::Stopped => tally.unknown += count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_carries_what_fits_a_batch_and_at_least_one_record() {
        assert_eq!(records_per_send(262_144, 1_024), 252);
        assert_eq!(records_per_send(1_024, 100), 8);
        assert_eq!(records_per_send(1_024, 1_000_000), 1);
    }
}
