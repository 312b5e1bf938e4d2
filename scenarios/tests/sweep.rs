//! `cargo test` sweeps every scenario over a fixed number of seeds
//! (`SLUICE_SEEDS` sets more), and checks that a seed replays exactly.

use sluice_scenarios::ALL;

/// Seeds per scenario in a plain `cargo test`; sized to keep the test
/// command well inside CI's time on a debug build.
const SEEDS_DEFAULT: u64 = 6;

fn seeds() -> u64 {
    std::env::var("SLUICE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT)
}

#[test]
fn every_scenario_passes_its_seeds() {
    let mut failures = Vec::new();
    for scenario in ALL {
        for seed in 1..=seeds() {
            let report = sluice_sim::run((scenario.build)(seed), false);
            assert!(
                report.acknowledged > 0,
                "{} seed {seed}: nothing was acknowledged; the workload did not run",
                scenario.name
            );
            if !report.passed() {
                let problem = report
                    .failure
                    .clone()
                    .or_else(|| {
                        report
                            .violations
                            .first()
                            .map(|v| format!("[{}] {}", v.checker, v.detail))
                    })
                    .unwrap_or_default();
                failures.push(format!(
                    "{} seed {seed:#x}: {problem}\n  replay: {}",
                    scenario.name,
                    sluice_scenarios::replay_command(scenario.name, seed, None)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    // Other simulations in the same process must not matter (tokio's task
    // ids are global, for one): run some alongside.
    let noise = std::thread::spawn(|| {
        for seed in 100..104 {
            sluice_sim::run(sluice_scenarios::network(seed), false);
        }
    });
    for scenario in ALL {
        let first = sluice_sim::run((scenario.build)(42), true);
        let again = sluice_sim::run((scenario.build)(42), true);
        let other = sluice_sim::run((scenario.build)(43), false);
        if first.trace_hash != again.trace_hash {
            let (a, b) = (first.trace.lines(), again.trace.lines());
            let at = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            let around: Vec<String> = (at.saturating_sub(2)..(at + 2).min(a.len()).min(b.len()))
                .map(|k| format!("first: {}\nagain: {}", a[k], b[k]))
                .collect();
            panic!(
                "{}: seed 42 ran differently twice; traces part at line {at}:\n{}",
                scenario.name,
                around.join("\n")
            );
        }
        assert_eq!(
            first.history.render(),
            again.history.render(),
            "{}: histories differ",
            scenario.name
        );
        assert_ne!(
            first.trace_hash, other.trace_hash,
            "{}: seeds 42 and 43 ran the same",
            scenario.name
        );
    }
    noise.join().expect("the concurrent simulations ran");
}
