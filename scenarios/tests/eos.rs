//! The `eos` scenario's late requests (`tap.rs`): a worker's request held
//! back, its connection broken, the retry answered, and the held copy
//! delivered after the worker went on. With transaction.version 1 the
//! copy lands in a later transaction of the same epoch unless the client
//! bumps the epoch after a transaction in which a request went
//! unanswered; these seeds failed before it did.

use sluice_sim::history::Operation;

/// The descriptions of the faults of a run (holds and late deliveries too).
fn faults(report: &sluice_sim::Report) -> Vec<String> {
    report
        .history
        .entries()
        .into_iter()
        .filter_map(|e| match e.operation {
            Operation::Fault { description } => Some(description),
            _ => None,
        })
        .collect()
}

fn passes(seed: u64) -> sluice_sim::Report {
    let report = sluice_sim::run(sluice_scenarios::eos(seed), false);
    assert!(
        report.passed(),
        "eos seed {seed:#x}: {:?} {:?}",
        report.failure,
        report.violations.first()
    );
    report
}

/// Seed 0x2f holds back worker 1's EndTxn (commit) at 3.16 s; the retry
/// commits, and the worker runs six more transactions in epoch 0. The
/// held copy arrived at 3.85 s while the next one, meant to abort, was
/// open: the coordinator committed it (`[eos-aborted-invisible]`: its 6
/// records readable), as Kafka's would. Now the worker bumps the epoch
/// after the commit, and the copy is fenced.
#[test]
fn a_late_end_txn_is_fenced_by_the_epoch_bump_after_its_retry() {
    let report = passes(0x2f);
    let faults = faults(&report);
    assert!(
        faults
            .iter()
            .any(|f| f.starts_with("late delivery of eos1's EndTxn")
                && f.contains("commit of eos-1 (producer 0 epoch 0)")
                && f.ends_with("answered ProducerFenced")),
        "the late EndTxn of eos1 was not fenced: {faults:#?}"
    );
}

/// Seed 0x27 holds back worker 0's TxnOffsetCommit of input offset 42
/// (epoch 1); its copy arrived in a later transaction of epoch 1 and took
/// the group's committed offset back to 42, so inputs were copied twice
/// (`[eos-exactly-once]`). Now it is refused.
#[test]
fn a_late_txn_offset_commit_is_fenced_by_the_epoch_bump_after_its_retry() {
    let report = passes(0x27);
    let faults = faults(&report);
    assert!(
        faults
            .iter()
            .any(|f| f.starts_with("late delivery of eos0's TxnOffsetCommit")
                && f.contains("events-0@42")
                && f.ends_with("answered InvalidProducerEpoch")),
        "the late TxnOffsetCommit of eos0 was not fenced: {faults:#?}"
    );
}

/// Seed 0x129 makes worker 1 a zombie at 5.16 s (its messages held) while
/// its stand-in, with the same transactional id, fences it and takes
/// over; once released, the zombie's requests of its old epoch are
/// refused, and nothing of its transactions shows. Its commit begun at
/// 0.74 s, refused as fenced after an attempt that went unanswered (it
/// had committed), counts as of unknown outcome.
#[test]
fn a_zombie_worker_is_fenced_by_its_stand_in() {
    let report = passes(0x129);
    let faults = faults(&report);
    assert!(faults
        .iter()
        .any(|f| f.starts_with("eos1 becomes a zombie")));
    let entries = report.history.entries();
    let by = |process: &str| {
        entries
            .iter()
            .any(|e| e.process == process && matches!(e.operation, Operation::Transaction { .. }))
    };
    assert!(by("eos1-twin"), "the stand-in ran no transaction");
    let fenced = entries.iter().any(|e| {
        e.process == "eos1"
            && matches!(&e.outcome, sluice_sim::history::Outcome::Failed(why) if why.contains("ProducerFenced"))
    });
    assert!(fenced, "the zombie was never fenced");
    let unknown = entries.iter().any(|e| {
        e.process == "eos1"
            && e.outcome == sluice_sim::history::Outcome::Unknown
            && matches!(
                e.operation,
                Operation::Transaction {
                    epoch: 0,
                    commit: true,
                    ..
                }
            )
    });
    assert!(unknown, "no commit of eos1 in epoch 0 of unknown outcome");
}
