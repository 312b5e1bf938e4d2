//! The `replicated` scenario: three real nodes on turmoil forming a cluster
//! through the driver's own peer links, a topic with three replicas.

/// Finds `needle` among the trace's lines.
/// Runs a spec (with its trace kept when `trace`) and asserts it passed.
fn passing(spec: sluice_sim::Spec, trace: bool) -> sluice_sim::Report {
    let report = sluice_sim::run(spec, trace);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
    report
}

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
    let report = passing(spec, true);
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
    let report = passing(spec, false);
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
    let report = passing(sluice_scenarios::replicated(0xaaf39), true);
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

/// Seed 0x7eebc7 of `eos-replicated`: node 3, the coordinator of the
/// workers' group, is cut off from node 1, the active controller, which
/// fences it and moves the group's offsets partition to itself. Worker 1
/// still read its committed offsets from node 3 while its transactions
/// committed offsets on node 1: node 3 answered the older offsets from its
/// stale image, and the worker copied the same inputs again, one input 28
/// times. Node 3 now stops leading and coordinating once a session has
/// passed since the send of the last heartbeat the controller answered,
/// before the controller can have fenced it.
#[test]
fn a_group_coordinator_cut_off_from_the_controller_stops_answering() {
    let report = passing(sluice_scenarios::eos_replicated(0x7eebc7), true);
    assert!(
        report
            .trace
            .lines()
            .iter()
            .any(|line| line.contains("node3")
                && line.contains("no heartbeat answered for a session")),
        "node 3 never stopped acting on its stale image"
    );
}

/// Seed 40020 of `eos-replicated`: a coordinator's marker retry came due
/// after its transactional ids had moved to another broker, and was armed
/// again at the same instant for ever, so the node handled the same timer
/// without end and the run never finished. A retry that comes due is now
/// over whether or not ids are left to retry.
#[test]
fn a_marker_retry_due_after_the_ids_moved_away_is_not_armed_again() {
    passing(sluice_scenarios::eos_replicated(40020), false);
}

/// Seed 0x68 of `eos-replicated-late`: a worker's TxnOffsetCommit, held back
/// on the network, reaches node 3 (the group's coordinator) after its
/// transaction ended; node 1 coordinates the transaction. Node 3 used to
/// check a transactional write only against a coordinator of its own, so
/// it appended the late offsets unverified and opened a transaction on
/// `__consumer_offsets` that no coordinator would end: the worker's offset
/// fetches were answered UNSTABLE_OFFSET_COMMIT for good. Node 3 now asks
/// node 1, which says the partition is not in an ongoing transaction.
#[test]
fn a_late_transactional_write_is_verified_with_a_coordinator_on_another_broker() {
    let report = passing(sluice_scenarios::eos_replicated_late(0x68), true);
    assert!(traced(
        &report,
        "verdict peer=1 partition=__consumer_offsets-2 error=Some(InvalidTxnState)"
    ));
}

/// Seed 0x6ad083 of `eos-replicated-late`: a stand-in worker opens a
/// transaction while its coordinator is node 3, whose wall clock runs 48
/// minutes ahead, so the transaction's recorded start is 48 minutes in the
/// future; the stand-in is killed with it open, and node 1 coordinates the
/// id later. Timed out on the wall clock alone (start plus timeout before
/// now, as Kafka's coordinator checks), the transaction would stay open
/// for 48 minutes, and the group's offsets with it (UNSTABLE_OFFSET_COMMIT
/// for every fetch). A coordinator now also counts the time since it saw
/// the transaction open on its monotonic clock, and aborts it.
#[test]
fn a_transaction_started_by_a_clock_ahead_is_still_aborted_at_its_timeout() {
    let report = passing(sluice_scenarios::eos_replicated_late(0x6ad083), true);
    assert!(traced(
        &report,
        "aborting a transaction past its timeout transactional_id=eos-0"
    ));
}

/// Seed 0x8adbca of `eos-replicated`: node 2, the active controller,
/// proposed `__consumer_offsets` (its topic record, four configs and five
/// partitions, one Raft entry each); node 3 crashed with only the first
/// three entries on disk and then won the election, so the topic record
/// committed without its partitions. The topic's name was taken, yet no
/// broker had the topic: every FindCoordinator asked for it again, the
/// controller proposed it again, and the new topic record was refused, for
/// good. A change of several records is now a metadata transaction (as in
/// Kafka, KIP-868): nodes apply its records only once it ends, and the new
/// controller aborts the one its predecessor left unfinished.
#[test]
fn a_topic_creation_cut_short_by_a_controller_change_is_aborted_whole() {
    let report = passing(sluice_scenarios::eos_replicated(0x8adbca), true);
    assert!(traced(
        &report,
        "aborting the metadata transaction a former controller left unfinished"
    ));
    assert!(!traced(&report, "does not apply; skipped"));
}
