//! The history: every client operation with its simulated invoke and
//! complete times and its outcome, and every fault the nemesis injected.
//!
//! Checkers read it after the run; a replay writes it out one line per
//! entry, in invoke order.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not completed yet, or the answer never came (the client gave up or died).
    Unknown,
    Ok,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// One record sent; on success the broker placed it at `offset`.
    Produce {
        partition: i32,
        value: String,
        offset: Option<i64>,
    },
    /// A read of `partition`: the records a poll returned, or the high
    /// watermark a ListOffsets(latest) reported.
    Read {
        partition: i32,
        records: Vec<(i64, String)>,
        high_watermark: Option<i64>,
    },
    /// Records a group member consumed from `partition`.
    Consume {
        group: String,
        partition: i32,
        records: Vec<(i64, String)>,
    },
    /// A group member's assignment in a generation.
    Assignment {
        group: String,
        generation: i32,
        partitions: Vec<i32>,
    },
    /// A commit of `offset` (the next record to read) for `partition`.
    Commit {
        group: String,
        partition: i32,
        offset: i64,
    },
    /// The committed offset read back (OffsetFetch); -1 when none.
    Committed {
        group: String,
        partition: i32,
        offset: i64,
    },
    /// A transaction of an exactly-once pipeline: the records it wrote and
    /// the input offsets it committed with them; whether it meant to
    /// commit (it aborts on purpose otherwise). Ok: the coordinator
    /// confirmed the end it asked for.
    Transaction {
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        outputs: Vec<String>,
        offsets: Vec<(i32, i64)>,
    },
    /// Records a read_committed consumer got from an output partition of
    /// the pipelines.
    ReadCommitted {
        partition: i32,
        records: Vec<(i64, String)>,
    },
    /// What one read_committed consumer (`observer`) learned of a
    /// partition's last stable offset: from a fetch answer, with the high
    /// watermark beside it and where the data returned ended, or from
    /// ListOffsets(latest), which says neither. `leader_epoch` is the epoch
    /// the fetch named or the one ListOffsets answered from.
    LastStable {
        observer: String,
        topic: String,
        partition: i32,
        leader_epoch: i32,
        last_stable_offset: i64,
        high_watermark: Option<i64>,
        fetch_offset: Option<i64>,
        data_end: Option<i64>,
    },
    /// A fault or a heal, from the nemesis.
    Fault { description: String },
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub process: String,
    pub operation: Operation,
    pub invoke_us: u128,
    pub complete_us: Option<u128>,
    pub outcome: Outcome,
}

/// The shared history of one run; clones share it.
#[derive(Clone, Default)]
pub struct History {
    entries: Arc<Mutex<Vec<Entry>>>,
}

fn now_us() -> u128 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_micros())
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the start of an operation; returns its index for `complete`.
    pub fn invoke(&self, process: &str, operation: Operation) -> usize {
        let mut entries = self.lock();
        entries.push(Entry {
            process: process.to_string(),
            operation,
            invoke_us: now_us(),
            complete_us: None,
            outcome: Outcome::Unknown,
        });
        entries.len() - 1
    }

    /// Records how an operation ended, replacing its operation with what was learned.
    pub fn complete(&self, index: usize, operation: Operation, outcome: Outcome) {
        let mut entries = self.lock();
        let entry = &mut entries[index];
        entry.operation = operation;
        entry.complete_us = Some(now_us());
        entry.outcome = outcome;
    }

    /// Records a fault injected at `at_us` (the harness runs outside the hosts).
    pub fn fault(&self, at_us: u128, description: String) {
        let entry = Entry {
            process: "nemesis".into(),
            operation: Operation::Fault { description },
            invoke_us: at_us,
            complete_us: Some(at_us),
            outcome: Outcome::Ok,
        };
        self.lock().push(entry);
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// One line per entry, for a person.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for entry in self.lock().iter() {
            let complete = entry
                .complete_us
                .map_or("?".to_string(), |t| format!("{:.6}", t as f64 / 1e6));
            let _ = writeln!(
                out,
                "{:>12.6} {:>12} {:<12} {:?} {:?}",
                entry.invoke_us as f64 / 1e6,
                complete,
                entry.process,
                entry.outcome,
                entry.operation
            );
        }
        out
    }
}
