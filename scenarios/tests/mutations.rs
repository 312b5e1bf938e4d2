//! Every checker is shown to bite: with the `mutations` feature, each named
//! broken variant of the node must be caught by the sweep within a stated
//! number of seeds. Run by `scripts/test` as
//! `cargo test -p sluice-scenarios --features mutations --test mutations`.
#![cfg(feature = "mutations")]

use sluice_core::config::Mutation;
use sluice_scenarios::{with_mutation, ALL};
use sluice_sim::quorum::{run_quorum, QuorumRun};

/// Seeds per scenario within which each mutation must be caught.
const SEEDS_MAX: u64 = 20;

/// Runs seeds of every scenario until a run fails with one of `expected`
/// among its violations; returns that run, or every checker seen instead.
fn caught_by(mutation: Mutation, expected: &[&str]) -> Result<String, Vec<String>> {
    let mut seen = Vec::new();
    for seed in 1..=SEEDS_MAX {
        for scenario in ALL {
            let report = sluice_sim::run(
                with_mutation((scenario.build)(seed), Some(mutation.name())),
                false,
            );
            if let Some(hit) = report
                .violations
                .iter()
                .find(|v| expected.contains(&v.checker))
            {
                return Ok(format!(
                    "{} seed {seed}: [{}] {}",
                    scenario.name, hit.checker, hit.detail
                ));
            }
            seen.extend(
                report
                    .violations
                    .iter()
                    .map(|v| format!("{} seed {seed}: {}", scenario.name, v.checker)),
            );
        }
    }
    Err(seen)
}

#[test]
fn ack_before_sync_loses_acknowledged_records() {
    let caught = caught_by(Mutation::AckBeforeSync, &["acknowledged-not-lost"]);
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn ack_before_sync_breaks_producer_order_too() {
    let caught = caught_by(Mutation::AckBeforeSync, &["producer-order"]);
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn read_before_sync_shows_records_that_later_vanish() {
    let caught = caught_by(Mutation::ReadBeforeSync, &["one-record-per-offset"]);
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn skip_recovery_crc_keeps_corrupt_data() {
    let caught = caught_by(Mutation::SkipRecoveryCrc, &["durable-data-intact"]);
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn offset_gaps_are_seen() {
    let caught = caught_by(Mutation::OffsetGap, &["dense-offsets"]);
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn a_forgotten_high_watermark_moves_back() {
    let caught = caught_by(Mutation::ForgetHighWatermark, &["high-watermark-monotonic"]);
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn forgotten_committed_offsets_move_back() {
    let caught = caught_by(
        Mutation::ForgetCommittedOffsets,
        &["committed-offsets-monotonic", "redelivery-above-commit"],
    );
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

#[test]
fn one_assignment_for_all_gives_partitions_two_owners() {
    let caught = caught_by(
        Mutation::SameAssignmentForAll,
        &["one-owner-per-generation"],
    );
    assert!(
        caught.is_ok(),
        "not caught within {SEEDS_MAX} seeds; other checkers: {caught:?}"
    );
}

/// Seeds of the quorum campaign within which each quorum mutation must be
/// caught.
const QUORUM_SEEDS_MAX: u64 = 200;

/// Runs quorum campaign seeds (3 and 5 voters) with `mutation` until one
/// fails with `expected`; returns it, or the other failures seen.
fn quorum_caught_by(mutation: Mutation, expected: &str) -> Result<String, Vec<String>> {
    let mut seen = Vec::new();
    for seed in 1..=QUORUM_SEEDS_MAX {
        let voters = if seed % 2 == 0 { 5 } else { 3 };
        let run = QuorumRun {
            seed,
            voters,
            broker: vec![("sluice.mutation".into(), mutation.name().into())],
            faults: true,
        };
        match run_quorum(&run) {
            Err(why) if why.contains(expected) => return Ok(why),
            Err(why) => seen.push(why),
            Ok(_) => {}
        }
    }
    Err(seen)
}

#[test]
fn a_forgotten_quorum_state_lets_a_voter_vote_twice() {
    let caught = quorum_caught_by(Mutation::ForgetQuorumState, "[one-vote-per-epoch]");
    assert!(
        caught.is_ok(),
        "not caught within {QUORUM_SEEDS_MAX} seeds: {caught:?}"
    );
}

#[test]
fn voting_twice_in_an_epoch_is_caught() {
    let caught = quorum_caught_by(Mutation::VoteTwice, "[one-leader-per-epoch]");
    assert!(
        caught.is_ok(),
        "not caught within {QUORUM_SEEDS_MAX} seeds: {caught:?}"
    );
}

#[test]
fn committing_unsynced_entries_loses_committed_entries() {
    let caught = quorum_caught_by(Mutation::CommitUnsyncedEntries, "[committed-");
    assert!(
        caught.is_ok(),
        "not caught within {QUORUM_SEEDS_MAX} seeds: {caught:?}"
    );
}

#[test]
fn skipping_the_divergence_check_keeps_diverged_logs() {
    let caught = quorum_caught_by(Mutation::SkipDivergenceCheck, "[committed-");
    assert!(
        caught.is_ok(),
        "not caught within {QUORUM_SEEDS_MAX} seeds: {caught:?}"
    );
}

#[test]
fn every_mutation_has_a_proof() {
    // Adding a mutation means adding a test above that shows it is caught.
    assert_eq!(Mutation::ALL.len(), 11);
}
