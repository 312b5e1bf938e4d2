//! The controller quorum on the in-process harness: real nodes electing
//! and replicating the metadata log in Kafka's frames, with and without
//! faults (see `sluice_sim::quorum` for what is checked).

use sluice_sim::quorum::{run_quorum, sweep_quorum, QuorumRun};

#[test]
fn three_voters_elect_one_leader_and_commit_without_faults() {
    let stats = run_quorum(&QuorumRun {
        seed: 1,
        voters: 3,
        broker: Vec::new(),
        faults: false,
    })
    .unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(stats.epochs, 1, "one election, no faults: {stats:?}");
    assert!(stats.committed >= 1, "the leader's first entry commits");
    assert_eq!(stats.convergence_ms, 0, "already converged at the heal");
}

#[test]
fn three_voters_stay_safe_and_converge_under_faults() {
    let stats = sweep_quorum(3, 1_000, 40).unwrap_or_else(|why| panic!("{why}"));
    let crashes: u64 = stats.iter().map(|s| s.crashes).sum();
    let epochs: usize = stats.iter().map(|s| s.epochs).sum();
    assert!(crashes >= 40, "the faults ran: {crashes} crashes");
    assert!(epochs > stats.len(), "leaders changed: {epochs} epochs");
}

#[test]
fn five_voters_stay_safe_and_converge_under_faults() {
    sweep_quorum(5, 2_000, 15).unwrap_or_else(|why| panic!("{why}"));
}

#[test]
#[ignore]
fn print_stats() {
    for stats in sweep_quorum(3, 1_000, 10).unwrap() {
        println!("{stats:?}");
    }
}
