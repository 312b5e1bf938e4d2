//! `sluice-sim`: list the scenarios, run one seed, sweep many seeds, or
//! replay a seed with its full trace, history and timeline written out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sluice_scenarios::{check_mutation, find, replay_command, Scenario, ALL, PENDING};
use sluice_sim::Report;

#[derive(Parser)]
#[command(
    name = "sluice-sim",
    about = "Deterministic fault simulation of Sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run one seed of a scenario and report.
    Run {
        #[arg(long)]
        scenario: String,
        #[arg(long, value_parser = parse_seed)]
        seed: u64,
        /// Run a deliberately broken node (needs `--features mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
    /// Run many seeds of a scenario (or of every scenario with `all`).
    Sweep {
        #[arg(long, default_value = "all")]
        scenario: String,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        start: u64,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Run a deliberately broken node (needs `--features mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
    /// Run the controller quorum's fault campaign (real nodes, every one a
    /// voter, on the in-process harness) over many seeds.
    Quorum {
        #[arg(long, default_value_t = 3)]
        voters: i32,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        start: u64,
        /// Run a deliberately broken node (needs `--features mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
    /// Run the replicated partitions' fault campaign (real nodes, three
    /// replicas, acks=all producers and consumers) over many seeds.
    Replication {
        #[arg(long, default_value_t = 3)]
        nodes: i32,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        start: u64,
        /// Run a deliberately broken node (needs `--features mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
    /// Rerun one seed exactly and write its trace, history and timeline.
    Replay {
        #[arg(long)]
        scenario: String,
        #[arg(long, value_parser = parse_seed)]
        seed: u64,
        /// Where to write the files (default: target/sim/<scenario>-<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run a deliberately broken node (needs `--features mutations`).
        #[arg(long)]
        mutation: Option<String>,
    },
}

fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("not a seed: {e}"))
}

fn main() -> std::process::ExitCode {
    let command = Cli::parse().command;
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mutation = match &command {
        Command::List => None,
        Command::Run { mutation, .. }
        | Command::Sweep { mutation, .. }
        | Command::Quorum { mutation, .. }
        | Command::Replication { mutation, .. }
        | Command::Replay { mutation, .. } => mutation.as_deref(),
    };
    if let Err(error) = check_mutation(mutation, &arguments) {
        eprintln!("sluice-sim: {error}");
        return std::process::ExitCode::from(2);
    }
    let outcome = match command {
        Command::List => {
            for scenario in ALL.iter().chain(PENDING) {
                println!("{:<16} {}", scenario.name, scenario.about);
            }
            Ok(true)
        }
        Command::Run {
            scenario,
            seed,
            mutation,
        } => scenario_named(&scenario).map(|s| {
            let report = sluice_sim::run(
                sluice_scenarios::with_mutation((s.build)(seed), mutation.as_deref()),
                false,
            );
            print_report(&report);
            report.passed()
        }),
        Command::Sweep {
            scenario,
            seeds,
            start,
            jobs,
            mutation,
        } => sweep(&scenario, seeds, start, jobs, mutation.as_deref()),
        Command::Quorum {
            voters,
            seeds,
            start,
            mutation,
        } => quorum_sweep(voters, seeds, start, mutation.as_deref()),
        Command::Replication {
            nodes,
            seeds,
            start,
            mutation,
        } => replication_sweep(nodes, seeds, start, mutation.as_deref()),
        Command::Replay {
            scenario,
            seed,
            out,
            mutation,
        } => scenario_named(&scenario).and_then(|s| replay(s, seed, out, mutation.as_deref())),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("sluice-sim: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The quorum campaign over `seeds` seeds; false at the first failure,
/// printed with the command that replays it.
fn quorum_sweep(
    voters: i32,
    seeds: u64,
    start: u64,
    mutation: Option<&str>,
) -> Result<bool, String> {
    if !(1..=16).contains(&voters) {
        return Err(format!("{voters} voters: a quorum has 1 to 16"));
    }
    let broker = mutation_config(mutation);
    let began = std::time::Instant::now();
    let (mut epochs, mut committed, mut crashes, mut convergence_max) = (0, 0, 0, 0);
    for seed in start..start + seeds {
        let run = sluice_sim::quorum::QuorumRun {
            seed,
            voters,
            broker: broker.clone(),
            faults: true,
        };
        match sluice_sim::quorum::run_quorum(&run) {
            Ok(stats) => {
                epochs += stats.epochs;
                committed += stats.committed;
                crashes += stats.crashes;
                convergence_max = convergence_max.max(stats.convergence_ms);
            }
            Err(why) => {
                println!("FAILED {why}");
                print_campaign_replay(&format!("quorum --voters {voters}"), seed, mutation);
                return Ok(false);
            }
        }
    }
    let wall = began.elapsed().as_secs_f64().max(1e-9);
    let simulated_s = seeds as f64 * (sluice_sim::quorum::CHAOS_MS as f64 / 1000.0);
    println!(
        "quorum of {voters}: {seeds} seeds in {wall:.1} s: {:.1} seeds/s, at least {:.0}x simulated/wall (1 job); {epochs} leader epochs, {committed} entries committed, {crashes} crashes; slowest convergence after the heal {convergence_max} ms; 0 failed",
        seeds as f64 / wall,
        simulated_s / wall
    );
    Ok(true)
}

/// The replication campaign over `seeds` seeds; false at the first
/// failure, printed with the command that replays it.
fn replication_sweep(
    nodes: i32,
    seeds: u64,
    start: u64,
    mutation: Option<&str>,
) -> Result<bool, String> {
    if !(3..=16).contains(&nodes) {
        return Err(format!("{nodes} nodes: three replicas need 3 to 16 nodes"));
    }
    let broker = mutation_config(mutation);
    let began = std::time::Instant::now();
    let mut totals = sluice_sim::replication::ReplicationStats::default();
    for seed in start..start + seeds {
        let run = sluice_sim::replication::ReplicationRun {
            seed,
            nodes,
            broker: broker.clone(),
            faults: true,
        };
        match sluice_sim::replication::run_replication(&run) {
            Ok(stats) => {
                totals.acknowledged += stats.acknowledged;
                totals.read += stats.read;
                totals.leader_epochs += stats.leader_epochs;
                totals.crashes += stats.crashes;
                totals.cuts += stats.cuts;
                totals.convergence_ms = totals.convergence_ms.max(stats.convergence_ms);
            }
            Err(why) => {
                println!("FAILED {why}");
                print_campaign_replay(&format!("replication --nodes {nodes}"), seed, mutation);
                return Ok(false);
            }
        }
    }
    let wall = began.elapsed().as_secs_f64().max(1e-9);
    let simulated_s = seeds as f64 * (sluice_sim::replication::CHAOS_MS as f64 / 1000.0);
    println!(
        "replication on {nodes} nodes: {seeds} seeds in {wall:.1} s: {:.1} seeds/s, at least {:.0}x simulated/wall (1 job); {} records acknowledged at acks=all, {} read, {} partition leader epochs, {} crashes, {} cuts; slowest convergence after the heal {} ms; 0 failed",
        seeds as f64 / wall,
        simulated_s / wall,
        totals.acknowledged,
        totals.read,
        totals.leader_epochs,
        totals.crashes,
        totals.cuts,
        totals.convergence_ms,
    );
    Ok(true)
}

/// The command that replays one seed of a campaign (`campaign` is its
/// subcommand and node count), with its mutation.
fn print_campaign_replay(campaign: &str, seed: u64, mutation: Option<&str>) {
    let (features, flag) = match mutation {
        Some(name) => (" --features mutations", format!(" --mutation {name}")),
        None => ("", String::new()),
    };
    println!(
        "replay: cargo run --release -p sluice-scenarios{features} --bin sluice-sim -- {campaign} --seeds 1 --start {seed:#x}{flag}"
    );
}

/// The broker config pair that selects a mutation, if any.
fn mutation_config(mutation: Option<&str>) -> Vec<(String, String)> {
    match mutation {
        Some(name) => vec![(
            sluice_core::config::MUTATION_KEY.to_string(),
            name.to_string(),
        )],
        None => Vec::new(),
    }
}

fn scenario_named(name: &str) -> Result<&'static Scenario, String> {
    let names: Vec<&str> = ALL.iter().chain(PENDING).map(|s| s.name).collect();
    find(name).ok_or_else(|| format!("no scenario `{name}`; known: {}", names.join(", ")))
}

/// The command that replays a run, with its mutation.
fn replay_of(report: &Report) -> String {
    let spec = &report.spec;
    replay_command(
        spec.scenario,
        spec.seed,
        sluice_sim::report::mutation(report),
    )
}

fn print_report(report: &Report) {
    let spec = &report.spec;
    let ratio = report.simulated.as_secs_f64() / report.wall.as_secs_f64().max(1e-9);
    println!(
        "{} seed {:#x}: {} — {} acknowledged, {:.1} s simulated in {:.2} s ({ratio:.0}x), trace {:016x}",
        spec.scenario,
        spec.seed,
        if report.passed() { "passed" } else { "FAILED" },
        report.acknowledged,
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        report.trace_hash
    );
    if let Some(failure) = &report.failure {
        println!("  {failure}");
    }
    for violation in report.violations.iter().take(20) {
        println!("  [{}] {}", violation.checker, violation.detail);
    }
    if !report.passed() {
        println!("  replay: {}", replay_of(report));
    }
}

fn sweep(
    name: &str,
    seeds: u64,
    start: u64,
    jobs: usize,
    mutation: Option<&str>,
) -> Result<bool, String> {
    let scenarios: Vec<&'static Scenario> = if name == "all" {
        ALL.iter().collect()
    } else {
        vec![scenario_named(name)?]
    };
    let work: Vec<(&'static Scenario, u64)> = scenarios
        .iter()
        .flat_map(|s| (start..start + seeds).map(move |seed| (*s, seed)))
        .collect();
    let total = work.len() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let simulated_ms = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let (work, next, failures, bar, simulated_ms) = (
                &work,
                next.clone(),
                failures.clone(),
                bar.clone(),
                simulated_ms.clone(),
            );
            scope.spawn(move || loop {
                let index = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some((scenario, seed)) = work.get(index) else {
                    return;
                };
                let report = sluice_sim::run(
                    sluice_scenarios::with_mutation((scenario.build)(*seed), mutation),
                    false,
                );
                simulated_ms.fetch_add(report.simulated.as_millis() as u64, Ordering::SeqCst);
                if !report.passed() {
                    let text = format!(
                        "FAILED {} seed {seed:#x}: {}\n  replay: {}",
                        scenario.name,
                        first_problem(&report),
                        replay_command(scenario.name, *seed, mutation)
                    );
                    bar.suspend(|| println!("{text}"));
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((scenario.name, *seed));
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let simulated = Duration::from_millis(simulated_ms.load(Ordering::SeqCst)).as_secs_f64();
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "{total} seeds in {wall:.1} s: {:.1} seeds/s, {:.0}x simulated/wall ({jobs} jobs), {} failed",
        total as f64 / wall,
        simulated / wall,
        failures.len()
    );
    for (scenario, seed) in &failures {
        println!("  {}", replay_command(scenario, *seed, mutation));
    }
    Ok(failures.is_empty())
}

fn first_problem(report: &Report) -> String {
    report
        .failure
        .clone()
        .or_else(|| {
            report
                .violations
                .first()
                .map(|v| format!("[{}] {}", v.checker, v.detail))
        })
        .unwrap_or_default()
}

fn replay(
    scenario: &Scenario,
    seed: u64,
    out: Option<PathBuf>,
    mutation: Option<&str>,
) -> Result<bool, String> {
    let report = sluice_sim::run(
        sluice_scenarios::with_mutation((scenario.build)(seed), mutation),
        true,
    );
    let dir =
        out.unwrap_or_else(|| PathBuf::from(format!("target/sim/{}-{seed:#x}", scenario.name)));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("trace.log", report.trace.lines().join("\n") + "\n")?;
    write("history.txt", report.history.render())?;
    let replay = replay_of(&report);
    write(
        "timeline.html",
        sluice_sim::timeline::render(&report, &replay),
    )?;
    write("report.txt", sluice_sim::report::render(&report, &replay))?;
    print_report(&report);
    println!(
        "  wrote {}/{{trace.log,history.txt,timeline.html,report.txt}}",
        dir.display()
    );
    Ok(report.passed())
}
