//! Every checker is shown to bite: with the `mutations` feature, each named
//! broken variant of the node must be caught by the sweep within a stated
//! number of seeds. Run by `scripts/test` as
//! `cargo test -p sluice-scenarios --features mutations --test mutations`.
#![cfg(feature = "mutations")]

use sluice_core::config::Mutation;
use sluice_scenarios::{replay_command, with_mutation, ALL};
use sluice_sim::quorum::{run_figure_eight, run_quorum, QuorumRun};
use sluice_sim::replication::{run_replication, ReplicationRun};

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

/// A deliberately broken node's run reads as a failure from its first
/// line: `FAIL`, the run, the checkers that caught it, then the command
/// that replays it with the feature, each failing checker's violations,
/// and the operations they name; the timeline outlines those operations.
#[test]
fn a_caught_mutation_reports_fail_and_names_its_checker() {
    let mutation = Mutation::AckBeforeSync.name();
    let failed = (1..=SEEDS_MAX)
        .map(|seed| {
            let spec = sluice_scenarios::crash_restart(seed);
            sluice_sim::run(with_mutation(spec, Some(mutation)), false)
        })
        .find(|report| !report.violations.is_empty())
        .unwrap_or_else(|| panic!("{mutation} not caught within {SEEDS_MAX} seeds"));
    let seed = failed.spec.seed;
    let replay = replay_command("crash-restart", seed, Some(mutation));
    let text = sluice_sim::report::render(&failed, &replay);
    let mut lines = text.lines();
    let verdict = lines.next().unwrap_or_default();
    let run = format!("FAIL crash-restart seed {seed:#x} (mutation {mutation}): ");
    assert!(verdict.starts_with(&run), "{text}");
    assert_eq!(lines.next(), Some(format!("replay: {replay}").as_str()));
    for violation in &failed.violations {
        assert!(verdict.contains(violation.checker), "{verdict}");
        assert!(
            text.lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(violation.checker) && words.next() == Some("FAILED,")
            }),
            "{} is not listed as failed:\n{text}",
            violation.checker
        );
    }
    let offending = text
        .split("first offending operations")
        .nth(1)
        .unwrap_or_else(|| panic!("no offending operations in:\n{text}"));
    let checker = failed.violations[0].checker;
    assert!(
        offending
            .lines()
            .any(|l| l.trim_start().starts_with("op ") && l.contains(checker)),
        "no operation named by {checker}:\n{text}"
    );
    let timeline = sluice_sim::timeline::render(&failed, &replay);
    assert!(
        timeline.contains(" offending' data-op="),
        "no operation outlined"
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

/// Raft's Figure 8, scripted (`run_figure_eight`; the random campaign
/// hardly ever builds it): a leader that commits an older epoch's entries
/// by counting the majority holding them, before its own epoch's entry is
/// on a majority, has them overwritten by the next leader. The same script
/// passes without the mutation (`sim/tests/quorum.rs`).
#[test]
fn committing_an_older_epoch_by_counting_loses_committed_entries() {
    let broker = [(
        "sluice.mutation".to_string(),
        Mutation::CommitOlderEpoch.name().to_string(),
    )];
    for seed in 1..=3 {
        let why = run_figure_eight(seed, &broker).expect_err("a committed entry is lost");
        eprintln!("{why}");
        assert!(why.contains("[committed-"), "{why}");
    }
}

/// Seeds of the replication campaign within which each of its mutations
/// must be caught.
const REPLICATION_SEEDS_MAX: u64 = 100;

/// Runs replication campaign seeds (3 nodes, and 5 on every third seed)
/// until one fails with one of `expected`; that failure, or the others.
fn replication_caught_by(mutation: Mutation, expected: &[&str]) -> Result<String, Vec<String>> {
    replication_caught_within(mutation, expected, REPLICATION_SEEDS_MAX)
}

/// `replication_caught_by` over the first `seeds_max` seeds.
fn replication_caught_within(
    mutation: Mutation,
    expected: &[&str],
    seeds_max: u64,
) -> Result<String, Vec<String>> {
    let mut seen = Vec::new();
    for seed in 1..=seeds_max {
        let run = ReplicationRun {
            seed,
            nodes: if seed % 3 == 0 { 5 } else { 3 },
            broker: vec![("sluice.mutation".into(), mutation.name().into())],
            faults: true,
        };
        // A node's own assertion counts as a finding too: it stopped the
        // broken core before any checker could look.
        let outcome = std::panic::catch_unwind(|| run_replication(&run)).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|m| m.to_string()))
                .unwrap_or_default();
            Err(format!("[assertion] {message}"))
        });
        match outcome {
            Err(why) if expected.iter().any(|e| why.contains(e)) => return Ok(why),
            Err(why) => seen.push(why),
            Ok(_) => {}
        }
    }
    Err(seen)
}

#[test]
fn a_follower_reporting_unsynced_offsets_lets_the_high_watermark_pass_the_isr() {
    let caught = replication_caught_by(Mutation::FollowerReportsUnsynced, &["[hw-within-isr]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

#[test]
fn acknowledging_below_min_insync_moves_a_frozen_high_watermark() {
    let caught =
        replication_caught_by(Mutation::AcksBelowMinInsync, &["[hw-frozen-below-min-isr]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// Kafka before KIP-101: followers cut their logs to their (lagging) high
/// watermark when a leader changes; an ISR member then lacks records the
/// high watermark covers.
#[test]
fn truncating_to_the_high_watermark_drops_records_the_isr_must_hold() {
    let caught = replication_caught_by(
        Mutation::TruncateToHighWatermark,
        &["[hw-within-isr]", "[acked-kept]", "[read-kept]"],
    );
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// Without the epoch check a follower keeps records the leader does not
/// have: the replicas end up different, or the follower asks past the
/// leader's log end forever.
#[test]
fn skipping_the_fetch_epoch_check_leaves_diverged_replicas() {
    let caught = replication_caught_by(
        Mutation::SkipFetchEpochCheck,
        &["[replicas-agree]", "[converges]"],
    );
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// A follower that trusts the leader a refusing broker names (a broker
/// that has not yet learned it leads names the leader of the epoch before)
/// goes back to an epoch it has already left.
#[test]
fn following_a_hinted_leader_moves_a_follower_epoch_back() {
    let caught = replication_caught_by(Mutation::FollowHintedLeader, &["[epochs-monotonic]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// A leader elected without a new leader epoch leads the epoch its
/// predecessor led: a broker refuses to lead an epoch its log already
/// holds, but a successor that had not yet replicated a batch of that
/// epoch takes it.
#[test]
fn electing_a_leader_without_a_new_epoch_gives_the_epoch_two_leaders() {
    let caught = replication_caught_by(Mutation::KeepLeaderEpoch, &["[one-leader-per-epoch]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// Diverged metadata logs (the quorum leader never answers a diverging
/// epoch, so a follower keeps entries the quorum dropped) name two leaders
/// for the same partition epoch on different brokers, or leave brokers
/// following leaders the others never elected, so the replicas never
/// converge (with two-second sessions, brokers are fenced and leaders
/// move often enough that the second is what most seeds show;
/// `keep-leader-epoch` above is the proof of `[one-leader-per-epoch]`);
/// or a node applies the end of a metadata transaction whose start the
/// quorum dropped, which its assertions refuse.
#[test]
fn diverged_metadata_logs_split_the_partitions_leadership() {
    let caught = replication_caught_by(
        Mutation::SkipDivergenceCheck,
        &[
            "[one-leader-per-epoch]",
            "[converges]",
            "[assertion] a metadata transaction",
        ],
    );
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// The controller fences a leader that is its partition's last live ISR
/// member and takes it out of the ISR too: no replica is left that may
/// be elected without losing data.
#[test]
fn emptying_the_isr_at_a_fence_is_caught() {
    let caught = replication_caught_by(Mutation::EmptyIsrOnFence, &["[isr-valid]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// A leader cut off from its followers (clients still reach it) and the
/// leader elected in its place both acknowledge records at the same
/// offsets.
#[test]
fn acknowledging_acks_all_after_the_local_sync_acknowledges_an_offset_twice() {
    let caught = replication_caught_by(Mutation::AcksAllAfterLocalSync, &["[acked-unique]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// Acknowledged records the log loses during the faults are caught by
/// `[acked-unique]` first (the producers go on, and the offsets are
/// acknowledged again for new records); `[acked-kept]` is first when the
/// answer itself names the wrong offset.
#[test]
fn answering_the_next_offset_names_offsets_that_hold_other_records() {
    let caught = replication_caught_by(Mutation::AnswerNextOffset, &["[acked-kept]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// Consumers served up to the log end (in a cluster `read-before-sync`
/// reads past the high watermark too) read what a leader cut off from its
/// followers appended and lost when it was fenced and a new leader wrote
/// other records at those offsets.
#[test]
fn reading_past_the_high_watermark_reads_records_that_vanish() {
    let caught = replication_caught_by(Mutation::ReadBeforeSync, &["[read-kept]"]);
    assert!(
        caught.is_ok(),
        "not caught within {REPLICATION_SEEDS_MAX} seeds: {caught:?}"
    );
}

/// On turmoil's three brokers, a leader that never checks a follower's
/// last fetched epoch leaves diverged replicas: `[replicas-agree]` finds
/// node 1's durable log and another node's holding different records at
/// the same offsets.
#[test]
fn diverged_replicas_disagree_on_the_replicated_scenario() {
    let mutation = Mutation::SkipFetchEpochCheck.name();
    let caught = (1..=SEEDS_MAX).find_map(|seed| {
        let spec = with_mutation(sluice_scenarios::replicated(seed), Some(mutation));
        let report = sluice_sim::run(spec, false);
        report
            .violations
            .iter()
            .find(|v| v.checker == "replicas-agree")
            .map(|v| format!("seed {seed}: {}", v.detail))
    });
    assert!(
        caught.is_some(),
        "{mutation} not caught by [replicas-agree] within {SEEDS_MAX} seeds"
    );
}

/// Runs one seed's spec with `mutation` and asserts that `checker` finds it.
fn caught_at(spec: sluice_sim::Spec, mutation: Mutation, checker: &str) {
    let report = sluice_sim::run(with_mutation(spec, Some(mutation.name())), false);
    assert!(
        report.violations.iter().any(|v| v.checker == checker),
        "not caught by [{checker}]: {:?}",
        report.violations.first()
    );
}

/// Runs seeds of the `eos` scenario until one fails with `checker`.
fn eos_caught_by(mutation: Mutation, checker: &str) -> Option<String> {
    (1..=SEEDS_MAX).find_map(|seed| {
        let spec = with_mutation(sluice_scenarios::eos(seed), Some(mutation.name()));
        let report = sluice_sim::run(spec, false);
        report
            .violations
            .iter()
            .find(|v| v.checker == checker)
            .map(|v| format!("seed {seed}: {}", v.detail))
    })
}

/// Offsets that count before their transaction commits stay when it
/// aborts: the worker resumes past input records whose outputs were
/// aborted, and `[eos-exactly-once]` finds inputs below the committed
/// offset that are nowhere in the output.
#[test]
fn transactional_offsets_applied_before_the_marker_skip_aborted_inputs() {
    let caught = eos_caught_by(Mutation::TxnOffsetsBeforeMarker, "eos-exactly-once");
    assert!(caught.is_some(), "not caught within {SEEDS_MAX} seeds");
}

/// A last stable offset at the high watermark hands read_committed
/// consumers the records of open transactions, some of which abort:
/// `[eos-read-committed]` finds records read that never committed.
#[test]
fn a_last_stable_offset_at_the_high_watermark_reads_uncommitted_records() {
    let caught = eos_caught_by(Mutation::LsoIsHighWatermark, "eos-read-committed");
    assert!(caught.is_some(), "not caught within {SEEDS_MAX} seeds");
}

/// Without the aborted transactions in fetch answers, read_committed
/// consumers keep what aborted: `[eos-read-committed]`.
#[test]
fn fetches_without_aborted_transactions_read_aborted_records() {
    let caught = eos_caught_by(Mutation::NoAbortedTransactions, "eos-read-committed");
    assert!(caught.is_some(), "not caught within {SEEDS_MAX} seeds");
}

/// Without its lease, a group coordinator cut off from the controller
/// goes on answering OffsetFetch from its stale image after the group
/// moved: seed 0x7eebc7 of `eos-replicated` (see `tests/replicated.rs`)
/// has a worker read older offsets back and copy its inputs again,
/// `[eos-exactly-once]`.
#[test]
fn a_broker_without_a_lease_answers_from_a_stale_image() {
    caught_at(
        sluice_scenarios::eos_replicated(0x7eebc7),
        Mutation::NoBrokerLease,
        "eos-exactly-once",
    );
}

/// A last stable offset bounded by the log end instead of the high
/// watermark tells read_committed consumers of offsets no sync has made
/// safe: `[eos-lso]` finds one above the high watermark answered beside it
/// (and, after a crash takes the unsynced tail back, one that moved back).
#[test]
fn a_last_stable_offset_past_the_high_watermark_is_caught() {
    let caught = eos_caught_by(Mutation::LsoIgnoresHighWatermark, "eos-lso");
    assert!(caught.is_some(), "not caught within {SEEDS_MAX} seeds");
}

/// A leader that takes transactional writes unverified when their
/// coordinator is on another broker lets a late TxnOffsetCommit open a
/// transaction nobody ends: seed 0x68 of `eos-replicated-late` (see
/// `tests/replicated.rs`) never gets its final offsets committed,
/// `[eos-exactly-once]`.
#[test]
fn a_leader_that_does_not_ask_a_remote_coordinator_leaves_a_transaction_hanging() {
    caught_at(
        sluice_scenarios::eos_replicated_late(0x68),
        Mutation::NoRemoteVerification,
        "eos-exactly-once",
    );
}

/// Transactions timed out by the wall clock alone stay open when their
/// recorded start came from a clock running ahead: seed 0x6ad083 of
/// `eos-replicated-late` (see `tests/replicated.rs`) leaves one open,
/// `[eos-no-open-transactions]`.
#[test]
fn a_timeout_on_the_wall_clock_alone_leaves_a_transaction_open() {
    caught_at(
        sluice_scenarios::eos_replicated_late(0x6ad083),
        Mutation::TxnTimeoutWallClockOnly,
        "eos-no-open-transactions",
    );
}

/// COMMIT markers for transactions that abort make their records readable:
/// `[eos-aborted-invisible]`.
#[test]
fn aborts_written_as_commits_are_caught() {
    let caught = eos_caught_by(Mutation::AbortMarkersCommit, "eos-aborted-invisible");
    assert!(caught.is_some(), "not caught within {SEEDS_MAX} seeds");
}

/// ABORT markers for transactions that commit hide their records:
/// `[eos-committed-visible]`.
#[test]
fn commits_written_as_aborts_are_caught() {
    let caught = eos_caught_by(Mutation::CommitMarkersAbort, "eos-committed-visible");
    assert!(caught.is_some(), "not caught within {SEEDS_MAX} seeds");
}

/// A commit split across its partitions (COMMIT on all but the last,
/// ABORT there) shows part of a transaction. A worker killed once its
/// EndTxn left never learns the outcome, so only `[eos-atomic]` can tell
/// that such a transaction is neither whole nor gone (seed 0x9: eos0 is
/// killed at 5.8 s).
#[test]
fn a_commit_split_across_partitions_is_caught_when_its_outcome_is_unknown() {
    caught_at(
        sluice_scenarios::eos(0x9),
        Mutation::CommitSplitsLastPartition,
        "eos-atomic",
    );
}

#[test]
fn every_mutation_has_a_proof() {
    // Adding a mutation means adding a test above that shows it is caught.
    assert_eq!(Mutation::ALL.len(), 31);
}
