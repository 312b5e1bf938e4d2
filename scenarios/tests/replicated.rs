//! The `replicated` scenario: three real nodes on turmoil forming a cluster
//! through the driver's own peer links, a topic with three replicas.

/// Finds `needle` among the trace's lines.
fn traced(report: &sluice_sim::Report, needle: &str) -> bool {
    report
        .trace
        .lines()
        .iter()
        .any(|line| line.contains(needle))
}

/// Seed 0x28 cuts node 3 off from node 2 (the controller and the
/// partition's leader) while a heartbeat and a fetch of node 3 are on their
/// way; turmoil's network loses them, as a network may. Each must time out
/// and reset its link, or node 3 stays fenced and never catches up: the
/// timer of a request went unarmed unless some other answer came on its
/// link, and the replicas then never converged.
#[test]
fn requests_lost_by_a_cut_reset_their_links_and_the_replicas_converge() {
    let spec = sluice_scenarios::replicated(0x28);
    assert_eq!(spec.nodes, 3);
    let report = sluice_sim::run(spec, true);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
    assert!(report.acknowledged > 0);
    assert!(traced(&report, "partition node2 from node3"));
    for channel in ["control", "replica"] {
        assert!(
            traced(
                &report,
                &format!("resetting the link peer=2 channel={channel}")
            ),
            "node 3's {channel} link to node 2 was never reset"
        );
    }
}

/// Seed 0x232d of `eos-replicated`: a worker commits a transaction, then
/// reads its committed offsets back before the COMMIT marker reached the
/// `__consumer_offsets` partition on another broker. Without
/// `require_stable` the read answered the offsets before the transaction,
/// the worker processed the same input again, and `[eos-exactly-once]`
/// found an input record twice in the output. With it, the consumer is
/// told UNSTABLE_OFFSET_COMMIT until the marker is in, as Kafka's are.
#[test]
fn offsets_read_back_after_a_commit_wait_for_its_marker() {
    let spec = sluice_scenarios::eos_replicated(0x232d);
    assert_eq!(spec.nodes, 3);
    let report = sluice_sim::run(spec, false);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
    let transactions = report
        .history
        .entries()
        .iter()
        .filter(|e| {
            matches!(
                e.operation,
                sluice_sim::history::Operation::Transaction { .. }
            )
        })
        .count();
    assert!(transactions > 10, "only {transactions} transactions ran");
}

/// Seed 0xaaf39 crashes node 2, the leader of partition 1 in epoch 0, and
/// flips bits in what it had not synced: its last batch (offsets 121 and
/// 122, never replicated) comes back with leader epoch 2 in place of 0, a
/// field the batch CRC does not cover, so recovery keeps it. Node 3 leads
/// in epoch 1 by then, and node 2 follows it naming epoch 2, after every
/// epoch node 3 has: node 3 answered an undefined divergence, which reads
/// as none, and once node 1 led in epoch 2, node 2 refused its epoch 1
/// batches for good and never caught up. Node 3 now answers its own epoch
/// and log end, and node 2 cuts the damaged batch.
#[test]
fn a_leader_epoch_flipped_by_a_crash_is_cut_and_the_replicas_converge() {
    let report = sluice_sim::run(sluice_scenarios::replicated(0xaaf39), true);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
    assert!(report.acknowledged > 0);
    assert!(traced(&report, "crash node2, unsynced writes: FlipBits"));
    assert!(
        report
            .trace
            .lines()
            .iter()
            .any(|line| line.contains("node2")
                && line.contains(
                    "the log diverged from the leader's; truncating partition=events-1 epoch=1 "
                )
                && line.contains("target=121 log_end=123")),
        "node 2 never cut its batch of epoch 2"
    );
}

/// Seed 0x27a3 of `eos-replicated`: node 2 coordinates a transaction
/// whose marker waits to be retried when it stops leading its
/// `__transaction_state` partition (7.26 s), which hands its ids over. The
/// retry deadline was cleared only while some transaction was ending, so
/// it stayed due and the node re-armed its timer in the past after every
/// input: node 2 spun on it at 7.352 s and the run never ended. Now the
/// deadline is cleared once due, and a past one fails an assertion.
#[test]
fn a_marker_retry_left_by_a_moved_coordinator_does_not_spin_the_node() {
    let report = sluice_sim::run(sluice_scenarios::eos_replicated(0x27a3), true);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
    assert!(traced(
        &report,
        "following partition=__transaction_state-3 leader=3 epoch=1"
    ));
}

/// Seed 0x7eebc7 of `eos-replicated`, a known failure kept for its fix:
/// while node 3, the coordinator of the workers' group, is cut off from
/// node 1, worker 1 commits transactions whose offsets node 3 never
/// shows, reads the older offsets back and copies the same inputs again
/// (`[eos-exactly-once]`: one input in the output 28 times).
#[test]
#[ignore = "known bug: committed transactional offsets not shown by a cut-off group coordinator"]
fn transactional_offsets_of_a_cut_off_coordinator_are_shown_after_commit() {
    let report = sluice_sim::run(sluice_scenarios::eos_replicated(0x7eebc7), false);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
}
