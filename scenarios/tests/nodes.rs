//! A run of three nodes with every fault that names a node. The nodes keep
//! links to each other (nothing but ApiVersions goes over them yet), which
//! must all be up again after the faults; clients use node 1 and the
//! checkers read its disk, so this shows the faults land on the node they
//! name, nodes restart as new incarnations, links recover, and the run
//! still passes and replays exactly.

use sluice_sim::disk::CrashFault;
use sluice_sim::{Fault, Scheduled};

fn spec() -> sluice_sim::Spec {
    let mut spec = sluice_scenarios::network(5);
    spec.nodes = 3;
    let faults = [
        (
            300,
            Fault::PartitionNodes {
                a: 2,
                b: 3,
                for_ms: 2_000,
            },
        ),
        (
            400,
            Fault::SlowLink {
                a: 1,
                b: 2,
                max_ms: 50,
                for_ms: 1_000,
            },
        ),
        (
            500,
            Fault::ClockJump {
                node: 2,
                delta_ms: 3_600_000,
            },
        ),
        (
            600,
            Fault::Crash {
                node: 2,
                damage: CrashFault::FlipBits,
                down_ms: 300,
            },
        ),
        (
            700,
            Fault::SlowDisk {
                node: 3,
                latency_ms: 100,
                for_ms: 1_000,
            },
        ),
        (
            800,
            Fault::DiskFull {
                node: 3,
                room_bytes: 0,
                for_ms: 1_000,
            },
        ),
        (
            900,
            Fault::Partition {
                client: "producer0".into(),
                node: 2,
                for_ms: 500,
            },
        ),
        (
            1_000,
            Fault::ClockJump {
                node: 1,
                delta_ms: -3_600_000,
            },
        ),
        (
            2_000,
            Fault::Crash {
                node: 1,
                damage: CrashFault::KeepPrefix,
                down_ms: 200,
            },
        ),
    ];
    spec.faults.extend(
        faults
            .into_iter()
            .map(|(at_ms, fault)| Scheduled { at_ms, fault }),
    );
    spec
}

/// The lines of the trace that hold `needle`.
fn lines_with(report: &sluice_sim::Report, needle: &str) -> Vec<String> {
    report
        .trace
        .lines()
        .into_iter()
        .filter(|line| line.contains(needle))
        .collect()
}

#[test]
fn three_nodes_take_their_faults_and_the_run_passes() {
    let report = sluice_sim::run(spec(), true);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.failure,
        report.violations.first()
    );
    assert!(report.acknowledged > 0);
    for note in [
        "partition node2 from node3",
        "repair node2 to node3",
        "latency between node1 and node2 up to 50 ms",
        "clock of node2 jumps +3600000 ms",
        "crash node2, unsynced writes: FlipBits",
        "syncs of node3 take 100 ms",
        "disk of node3 full after 0 more bytes",
        "partition producer0 from node2",
        "clock of node2 back to true time (-3600000 ms)",
    ] {
        assert!(
            !lines_with(&report, note).is_empty(),
            "no `{note}` in the trace"
        );
    }
    // Each start of node 2 is an incarnation with its own seed.
    let starts: Vec<String> = lines_with(&report, "a new incarnation")
        .into_iter()
        .filter(|line| line.contains(" node2 "))
        .collect();
    // (the network scenario draws faults of its own for other nodes too)
    let crashes = report
        .spec
        .faults
        .iter()
        .filter(|s| matches!(s.fault, Fault::Crash { node: 2, .. }))
        .count();
    assert_eq!(starts.len(), 1 + crashes, "{starts:#?}");
    let seeds: std::collections::BTreeSet<Option<String>> = starts
        .iter()
        .map(|line| line.split("seed=").nth(1).map(str::to_string))
        .collect();
    assert_eq!(seeds.len(), starts.len(), "{starts:#?}");
    for (boot, line) in starts.iter().enumerate() {
        assert!(line.contains(&format!("boot={boot} ")), "{starts:#?}");
    }
    let again = sluice_sim::run(spec(), false);
    assert_eq!(report.trace_hash, again.trace_hash);
}
