//! The summary of one run that a person reads first (`report.txt`): the
//! verdict and the one command that replays the run, each checker's result,
//! for a failure the operations its violations name (with their simulated
//! times), the faults injected, then the full spec and every violation as a
//! debug dump. The timeline (`timeline.rs`) shows the same verdict and
//! marks the same operations.
//!
//! A violation is a line of text (`check.rs`); the operations it names are
//! found again in the history from the values, offsets, groups and
//! generations its text quotes, one pattern per checker (`clues`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::{Violation, CHECKERS};
use crate::history::{Entry, Operation, Outcome};
use crate::run::Report;

/// The liveness phase's result, listed after the checkers: the run
/// converged once the faults healed (every client finished, every link up).
pub const CONVERGED: &str = "converged";

/// Violations shown under a failing checker; the dump below has them all.
const VIOLATIONS_SHOWN_MAX: usize = 5;
/// Violations of one checker whose operations are looked up.
const VIOLATIONS_TRACED_MAX: usize = 20;
/// Operations one clue may name (a high watermark is read many times).
const MATCHES_PER_CLUE_MAX: usize = 3;
/// Operations listed as the first offending ones.
pub const OFFENDING_SHOWN_MAX: usize = 12;
/// Records of a read or a consume shown in its description.
const RECORDS_SHOWN_MAX: usize = 4;

/// One checker's outcome: passed when `problems` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub problems: Vec<String>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Every checker's result in `CHECKERS` order (a violation from a checker
/// the list lacks is added after them), then `CONVERGED`.
pub fn results(report: &Report) -> Vec<CheckResult> {
    let mut results: Vec<CheckResult> = CHECKERS
        .iter()
        .map(|name| CheckResult {
            name: name.to_string(),
            problems: Vec::new(),
        })
        .collect();
    for violation in &report.violations {
        match results.iter_mut().find(|r| r.name == violation.checker) {
            Some(result) => result.problems.push(violation.detail.clone()),
            None => results.push(CheckResult {
                name: violation.checker.to_string(),
                problems: vec![violation.detail.clone()],
            }),
        }
    }
    results.push(CheckResult {
        name: CONVERGED.to_string(),
        problems: report.failure.iter().cloned().collect(),
    });
    results
}

/// The mutation the run's node was built to show, if any.
pub fn mutation(report: &Report) -> Option<&str> {
    report
        .spec
        .broker
        .iter()
        .find(|(key, _)| key == sluice_core::config::MUTATION_KEY)
        .map(|(_, value)| value.as_str())
}

/// The first line of the report: `PASS` or `FAIL`, the scenario and seed,
/// and for a failure the checkers that failed.
pub fn verdict(report: &Report) -> String {
    let spec = &report.spec;
    let run = match mutation(report) {
        Some(name) => format!("{} seed {:#x} (mutation {name})", spec.scenario, spec.seed),
        None => format!("{} seed {:#x}", spec.scenario, spec.seed),
    };
    let failed: Vec<String> = results(report)
        .into_iter()
        .filter(|r| !r.passed())
        .map(|r| r.name)
        .collect();
    if failed.is_empty() {
        format!("PASS {run}: every checker passed and the run converged")
    } else {
        format!("FAIL {run}: {} failed", failed.join(", "))
    }
}

/// The number under which an entry appears everywhere: its line in
/// `history.txt`, and `#op-N` in the timeline.
pub fn op_number(index: usize) -> usize {
    index + 1
}

/// Simulated microseconds as seconds with milliseconds (the tick).
pub fn seconds(us: u128) -> String {
    format!("{}.{:03}", us / 1_000_000, us / 1_000 % 1_000)
}

/// When an entry ran: `invoke-complete`, `?` for an answer that never came.
pub fn span(entry: &Entry) -> String {
    match entry.complete_us {
        Some(complete) if complete == entry.invoke_us => seconds(complete),
        Some(complete) => format!("{}-{}", seconds(entry.invoke_us), seconds(complete)),
        None => format!("{}-?", seconds(entry.invoke_us)),
    }
}

pub fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok => "ok".into(),
        Outcome::Failed(why) => format!("failed: {why}"),
        Outcome::Unknown => "no answer".into(),
    }
}

fn describe_records(records: &[(i64, String)]) -> String {
    let Some(((first, _), (last, _))) = records.first().zip(records.last()) else {
        return "no records".into();
    };
    let mut text = format!("{} records, offsets {first}..{last}:", records.len());
    for (offset, value) in records.iter().take(RECORDS_SHOWN_MAX) {
        let _ = write!(text, " {offset}={value:?}");
    }
    if records.len() > RECORDS_SHOWN_MAX {
        let _ = write!(text, " ... ({} more)", records.len() - RECORDS_SHOWN_MAX);
    }
    text
}

/// An operation in a few words (the history holds it whole).
pub fn describe(operation: &Operation) -> String {
    match operation {
        Operation::Produce {
            partition,
            value,
            offset,
        } => match offset {
            Some(offset) => {
                format!("produce {value:?} to partition {partition}, at offset {offset}")
            }
            None => format!("produce {value:?} to partition {partition}"),
        },
        Operation::Read {
            partition,
            records,
            high_watermark,
        } => {
            let high_watermark =
                high_watermark.map_or(String::new(), |hw| format!(", high watermark {hw}"));
            format!(
                "read partition {partition}{high_watermark}: {}",
                describe_records(records)
            )
        }
        Operation::Consume {
            group,
            partition,
            records,
        } => format!(
            "consume in {group}, partition {partition}: {}",
            describe_records(records)
        ),
        Operation::Assignment {
            group,
            generation,
            partitions,
        } => format!("assigned partitions {partitions:?} of {group} in generation {generation}"),
        Operation::Commit {
            group,
            partition,
            offset,
        } => format!("commit offset {offset} of {group}, partition {partition}"),
        Operation::Committed {
            group,
            partition,
            offset,
        } => format!("committed offset of {group}, partition {partition}, read as {offset}"),
        Operation::Transaction {
            transactional_id,
            producer_id,
            epoch,
            commit,
            outputs,
            offsets,
        } => format!(
            "{} a transaction of {transactional_id} (producer {producer_id}, epoch {epoch}): {} records, input offsets {offsets:?}",
            if *commit { "commit" } else { "abort" },
            outputs.len()
        ),
        Operation::ReadCommitted { partition, records } => format!(
            "read_committed output partition {partition}: {}",
            describe_records(records)
        ),
        Operation::LastStable {
            observer,
            topic,
            partition,
            leader_epoch,
            last_stable_offset,
            high_watermark,
            fetch_offset,
            data_end,
        } => {
            let source = match (high_watermark, fetch_offset) {
                (Some(hw), Some(from)) => {
                    let data = data_end.map_or("no data".to_string(), |end| {
                        format!("data {from}..{end}")
                    });
                    format!("fetch from {from}: high watermark {hw}, {data}")
                }
                _ => "list offsets (latest)".to_string(),
            };
            format!(
                "{observer} sees {topic}-{partition} in leader epoch {leader_epoch} stable below {last_stable_offset}; {source}"
            )
        }
        Operation::Fault { description } => format!("fault: {description}"),
    }
}

/// One line for an entry: number, times, process, outcome, what it did.
pub fn entry_line(index: usize, entry: &Entry) -> String {
    format!(
        "op {:<6} {:>15} s  {:<10} {:<9} {}",
        op_number(index),
        span(entry),
        entry.process,
        describe_outcome(&entry.outcome),
        describe(&entry.operation)
    )
}

/// What a violation's text says about the operations behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clue {
    /// A record's value: the produce that sent it, the reads and consumes
    /// that returned it.
    Value(String),
    /// A partition's offset: the produce placed there, the reads and
    /// consumes that returned it.
    Position(i32, i64),
    /// Reads of a partition that saw this high watermark (by one process).
    HighWatermark {
        process: Option<String>,
        partition: i32,
        high_watermark: i64,
    },
    /// Reads of a partition whose records step from one offset to another.
    Jump { partition: i32, from: i64, to: i64 },
    /// Consumes of a group's partition that returned an offset.
    Consumed {
        group: String,
        partition: i32,
        offset: i64,
    },
    /// Assignments of a group's partition in a generation.
    Assigned {
        group: String,
        generation: i32,
        partition: i32,
    },
    /// This very operation (a commit or a committed offset read back),
    /// acknowledged or not.
    Exact {
        operation: Operation,
        acknowledged: bool,
    },
    /// The entry the text names by its number (`op N`).
    Numbered(usize),
}

/// The strings a text quotes as Rust's `{:?}` prints them.
fn quoted(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = text.chars();
    while chars.by_ref().any(|c| c == '"') {
        let mut value = String::new();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => {
                    closed = true;
                    break;
                }
                c => value.push(c),
            }
        }
        if closed {
            found.push(value);
        }
    }
    found
}

/// Every `partition/offset` pair a text holds.
fn positions(text: &str) -> Vec<(i32, i64)> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == ':')
        .filter_map(|word| {
            let (partition, offset) = word.split_once('/')?;
            Some((partition.parse().ok()?, offset.parse().ok()?))
        })
        .collect()
}

/// The integer right after `key` in `text`.
fn number_after<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    let (_, rest) = text.split_once(key)?;
    let end = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

/// The first word of a text (a process or a group name).
fn first_word(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The clues in a violation's text, read the way its checker words it
/// (`check.rs`); a checker not known here gives its quoted values and
/// `partition/offset` pairs.
fn clues(violation: &Violation) -> Vec<Clue> {
    let text = violation.detail.as_str();
    let values = quoted(text).into_iter().map(Clue::Value);
    let at = positions(text)
        .into_iter()
        .map(|(partition, offset)| Clue::Position(partition, offset));
    let found = match violation.checker {
        // "{process} acknowledged {value:?} at {p}/{o}; the log holds {stored:?}",
        // "{process} sent {previous:?} before {value:?} but got ...",
        // "{group} never consumed {value:?} at {p}/{o}"
        "acknowledged-not-lost" | "producer-order" | "all-consumed-by-groups" => {
            Some(values.collect())
        }
        // "{p}/{o} held {earlier:?} and later {value:?}"
        "one-record-per-offset" => Some(at.chain(values).collect()),
        "dense-offsets" => jump_clues(text),
        "high-watermark-monotonic" => high_watermark_clues(text),
        "committed-offsets-monotonic" => committed_clues(text),
        "one-owner-per-generation" => owner_clues(text),
        "redelivery-above-commit" => redelivery_clues(text),
        // "... (op N) ... (op M)": the observations compared.
        "eos-lso" => Some(numbered_clues(text)),
        // Found by the scan of the disk after the run, not in an operation.
        "durable-data-intact" => None,
        _ => Some(values.chain(at).collect()),
    };
    found.unwrap_or_default()
}

/// Every `op N` a text names.
fn numbered_clues(text: &str) -> Vec<Clue> {
    text.match_indices("op ")
        .filter_map(|(at, _)| number_after::<usize>(&text[at..], "op "))
        .map(Clue::Numbered)
        .collect()
}

/// "partition {p} jumps from {a} to {b}"
fn jump_clues(text: &str) -> Option<Vec<Clue>> {
    Some(vec![Clue::Jump {
        partition: number_after(text, "partition ")?,
        from: number_after(text, "from ")?,
        to: number_after(text, " to ")?,
    }])
}

/// "{process} read high watermark {hw} of partition {p} after {floor} was
/// seen": the later read, and the earlier ones that saw the floor.
fn high_watermark_clues(text: &str) -> Option<Vec<Clue>> {
    let partition = number_after(text, "of partition ")?;
    Some(vec![
        Clue::HighWatermark {
            process: None,
            partition,
            high_watermark: number_after(text, " after ")?,
        },
        Clue::HighWatermark {
            process: Some(first_word(text)),
            partition,
            high_watermark: number_after(text, "high watermark ")?,
        },
    ])
}

/// "{group} {p}: committed offset read as {o} after {floor} was
/// acknowledged": the commit of the floor, and the read-back below it.
fn committed_clues(text: &str) -> Option<Vec<Clue>> {
    let group = first_word(text);
    let partition = number_after(text, &format!("{group} "))?;
    let commit = Operation::Commit {
        group: group.clone(),
        partition,
        offset: number_after(text, " after ")?,
    };
    let read_back = Operation::Committed {
        group,
        partition,
        offset: number_after(text, "read as ")?,
    };
    Some(vec![
        Clue::Exact {
            operation: commit,
            acknowledged: true,
        },
        Clue::Exact {
            operation: read_back,
            acknowledged: false,
        },
    ])
}

/// "{group} generation {g}: partition {p} owned by {a} and {b}"
fn owner_clues(text: &str) -> Option<Vec<Clue>> {
    Some(vec![Clue::Assigned {
        group: first_word(text),
        generation: number_after(text, "generation ")?,
        partition: number_after(text, "partition ")?,
    }])
}

/// "{group} got {p}/{o} again after committing {c}": the commit, and the
/// consumes that delivered the record.
fn redelivery_clues(text: &str) -> Option<Vec<Clue>> {
    let group = first_word(text);
    let (partition, offset) = positions(text).first().copied()?;
    let commit = Operation::Commit {
        group: group.clone(),
        partition,
        offset: number_after(text, "committing ")?,
    };
    Some(vec![
        Clue::Exact {
            operation: commit,
            acknowledged: true,
        },
        Clue::Consumed {
            group,
            partition,
            offset,
        },
    ])
}

/// The partition and records of a read or a consume.
fn records_of(operation: &Operation) -> Option<(i32, &[(i64, String)])> {
    match operation {
        Operation::Read {
            partition, records, ..
        }
        | Operation::Consume {
            partition, records, ..
        } => Some((*partition, records)),
        _ => None,
    }
}

fn holds_offset(records: &[(i64, String)], offset: i64) -> bool {
    records.iter().any(|(o, _)| *o == offset)
}

impl Clue {
    /// True when the clue names `entry`.
    fn names(&self, entry: &Entry) -> bool {
        let operation = &entry.operation;
        let returned = records_of(operation);
        match self {
            Clue::Value(wanted) => match operation {
                Operation::Produce { value, .. } => value == wanted,
                _ => returned.is_some_and(|(_, records)| records.iter().any(|(_, v)| v == wanted)),
            },
            Clue::Position(p, o) => match operation {
                Operation::Produce {
                    partition, offset, ..
                } => partition == p && *offset == Some(*o),
                _ => returned.is_some_and(|(partition, records)| {
                    partition == *p && holds_offset(records, *o)
                }),
            },
            Clue::HighWatermark {
                process,
                partition,
                high_watermark,
            } => {
                let saw = matches!(operation, Operation::Read { partition: p, high_watermark: Some(hw), .. } if p == partition && hw == high_watermark);
                saw && entry.outcome == Outcome::Ok
                    && process.as_ref().is_none_or(|name| *name == entry.process)
            }
            Clue::Jump {
                partition,
                from,
                to,
            } => matches!(
                operation,
                Operation::Read { partition: p, records, .. }
                    if p == partition && records.windows(2).any(|w| w[0].0 == *from && w[1].0 == *to)
            ),
            Clue::Consumed {
                group,
                partition,
                offset,
            } => matches!(
                operation,
                Operation::Consume { group: g, partition: p, records }
                    if g == group && p == partition && holds_offset(records, *offset)
            ),
            Clue::Assigned {
                group,
                generation,
                partition,
            } => matches!(
                operation,
                Operation::Assignment { group: g, generation: n, partitions }
                    if g == group && n == generation && partitions.contains(partition)
            ),
            Clue::Exact {
                operation: wanted,
                acknowledged,
            } => operation == wanted && (!acknowledged || entry.outcome == Outcome::Ok),
            // Named by number, not by what it holds (see `offending`).
            Clue::Numbered(_) => false,
        }
    }
}

/// The entries the violations name, by index into `entries`, each with the
/// violations that name it. At most `VIOLATIONS_TRACED_MAX` violations of
/// each checker are looked up, and each clue names at most
/// `MATCHES_PER_CLUE_MAX` entries (the earliest).
pub fn offending<'v>(
    entries: &[Entry],
    violations: &'v [Violation],
) -> BTreeMap<usize, Vec<&'v Violation>> {
    let mut traced: BTreeMap<&str, usize> = BTreeMap::new();
    let mut found: BTreeMap<usize, Vec<&Violation>> = BTreeMap::new();
    for violation in violations {
        let count = traced.entry(violation.checker).or_default();
        if *count >= VIOLATIONS_TRACED_MAX {
            continue;
        }
        *count += 1;
        for clue in clues(violation) {
            let mut named: Vec<usize> = match clue {
                Clue::Numbered(number) => (number >= 1 && number <= entries.len())
                    .then(|| number - 1)
                    .into_iter()
                    .collect(),
                _ => entries
                    .iter()
                    .enumerate()
                    .filter(|(_, entry)| clue.names(entry))
                    .map(|(index, _)| index)
                    .collect(),
            };
            named.sort_by_key(|&index| (entries[index].invoke_us, index));
            for index in named.into_iter().take(MATCHES_PER_CLUE_MAX) {
                let by = found.entry(index).or_default();
                if !by.iter().any(|v| std::ptr::eq(*v, violation)) {
                    by.push(violation);
                }
            }
        }
    }
    found
}

/// The offending entries in the order they started, the earliest first.
pub fn first_offending<'v>(
    entries: &[Entry],
    violations: &'v [Violation],
) -> Vec<(usize, Vec<&'v Violation>)> {
    let mut first: Vec<(usize, Vec<&Violation>)> =
        offending(entries, violations).into_iter().collect();
    first.sort_by_key(|(index, _)| (entries[*index].invoke_us, *index));
    first
}

fn checker_lines(out: &mut String, results: &[CheckResult]) {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let failed = results.iter().filter(|r| !r.passed()).count();
    let _ = writeln!(
        out,
        "checkers ({} of {} passed):",
        results.len() - failed,
        results.len()
    );
    for result in results {
        if result.passed() {
            let _ = writeln!(out, "  {:<width$}  passed", result.name);
            continue;
        }
        let count = result.problems.len();
        let _ = writeln!(
            out,
            "  {:<width$}  FAILED, {count} violation{}:",
            result.name,
            if count == 1 { "" } else { "s" }
        );
        for problem in result.problems.iter().take(VIOLATIONS_SHOWN_MAX) {
            let _ = writeln!(out, "  {:<width$}    {problem}", "");
        }
        if count > VIOLATIONS_SHOWN_MAX {
            let _ = writeln!(
                out,
                "  {:<width$}    ... {} more in the dump below",
                "",
                count - VIOLATIONS_SHOWN_MAX
            );
        }
    }
}

fn offending_lines(out: &mut String, report: &Report, entries: &[Entry]) {
    let first = first_offending(entries, &report.violations);
    let _ = writeln!(
        out,
        "\nfirst offending operations (simulated seconds; op N is line N of history.txt, #op-N in timeline.html):"
    );
    if first.is_empty() && !report.violations.is_empty() {
        let _ = writeln!(
            out,
            "  none in the history: the violations come from the final logs or the disk scan"
        );
    }
    for (index, by) in first.iter().take(OFFENDING_SHOWN_MAX) {
        let mut checkers: Vec<&str> = by.iter().map(|v| v.checker).collect();
        checkers.dedup();
        let _ = writeln!(
            out,
            "  {}  [{}]",
            entry_line(*index, &entries[*index]),
            checkers.join(", ")
        );
    }
    if first.len() > OFFENDING_SHOWN_MAX {
        let _ = writeln!(
            out,
            "  ... {} more marked in timeline.html",
            first.len() - OFFENDING_SHOWN_MAX
        );
    }
    if report.failure.is_some() {
        let _ = writeln!(out, "\nthe last operation of each client:");
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            if entry.process != "nemesis" {
                last.insert(entry.process.as_str(), index);
            }
        }
        for index in last.values() {
            let _ = writeln!(out, "  {}", entry_line(*index, &entries[*index]));
        }
    }
}

fn fault_lines(out: &mut String, entries: &[Entry]) {
    let faults: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.operation, Operation::Fault { .. }))
        .collect();
    let _ = writeln!(out, "\nfaults ({}):", faults.len());
    for entry in faults {
        if let Operation::Fault { description } = &entry.operation {
            let _ = writeln!(out, "  {:>8} s  {description}", seconds(entry.invoke_us));
        }
    }
}

fn run_lines(out: &mut String, report: &Report, entries: &[Entry]) {
    let spec = &report.spec;
    let operations = entries
        .iter()
        .filter(|e| !matches!(e.operation, Operation::Fault { .. }))
        .count();
    let _ = writeln!(
        out,
        "\nrun: {} node{}, {} producer{}, 1 reader, {} group member{}; {operations} operations, {} produces acknowledged",
        spec.nodes,
        if spec.nodes == 1 { "" } else { "s" },
        spec.workload.producers,
        if spec.workload.producers == 1 { "" } else { "s" },
        spec.workload.group_members,
        if spec.workload.group_members == 1 { "" } else { "s" },
        report.acknowledged
    );
    let _ = writeln!(
        out,
        "     faults for the first {} s, then healed; {:.3} s simulated in {:.2} s; trace hash {:016x}",
        seconds(spec.safety_ms as u128 * 1_000),
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        report.trace_hash
    );
}

/// The whole `report.txt` of a run; `replay` is the command that reruns it.
pub fn render(report: &Report, replay: &str) -> String {
    let entries = report.history.entries();
    let results = results(report);
    let mut out = String::new();
    let _ = writeln!(out, "{}", verdict(report));
    let _ = writeln!(out, "replay: {replay}");
    if let Some(name) = mutation(report) {
        let _ = writeln!(
            out,
            "mutation: {name}, a node broken on purpose: the checkers are expected to catch it"
        );
    }
    out.push('\n');
    checker_lines(&mut out, &results);
    if !report.passed() {
        offending_lines(&mut out, report, &entries);
    }
    fault_lines(&mut out, &entries);
    run_lines(&mut out, report, &entries);
    let _ = writeln!(
        out,
        "\nfiles: history.txt (every operation, op N on line N), trace.log (every event), timeline.html (lanes, faults, operations)"
    );
    let _ = writeln!(out, "\n---- debug dump ----");
    let _ = writeln!(out, "spec: {:#?}", report.spec);
    let _ = writeln!(out, "violations ({}):", report.violations.len());
    for violation in &report.violations {
        let _ = writeln!(out, "[{}] {}", violation.checker, violation.detail);
    }
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "[{CONVERGED}] {failure}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::check::{self, FinalLogs};
    use crate::disk::DiskFaults;
    use crate::history::History;
    use crate::run::Spec;
    use crate::trace::Trace;
    use crate::workload::Workload;

    fn entry(process: &str, operation: Operation, at_us: u128) -> Entry {
        Entry {
            process: process.into(),
            operation,
            invoke_us: at_us,
            complete_us: Some(at_us + 1_000),
            outcome: Outcome::Ok,
        }
    }

    fn produce(process: &str, value: &str, offset: i64, at_us: u128) -> Entry {
        let operation = Operation::Produce {
            partition: 0,
            value: value.into(),
            offset: Some(offset),
        };
        entry(process, operation, at_us)
    }

    fn read(records: &[(i64, &str)], high_watermark: i64, at_us: u128) -> Entry {
        let operation = Operation::Read {
            partition: 0,
            records: records.iter().map(|(o, v)| (*o, v.to_string())).collect(),
            high_watermark: Some(high_watermark),
        };
        entry("reader", operation, at_us)
    }

    fn commit(offset: i64, at_us: u128) -> Entry {
        let operation = Operation::Commit {
            group: "g".into(),
            partition: 1,
            offset,
        };
        entry("member0", operation, at_us)
    }

    fn consume(offsets: &[i64], at_us: u128) -> Entry {
        let operation = Operation::Consume {
            group: "g".into(),
            partition: 1,
            records: offsets.iter().map(|o| (*o, format!("v{o}"))).collect(),
        };
        entry("member1", operation, at_us)
    }

    fn assignment(process: &str, at_us: u128) -> Entry {
        let operation = Operation::Assignment {
            group: "g".into(),
            generation: 4,
            partitions: vec![0, 1],
        };
        entry(process, operation, at_us)
    }

    fn final_log(records: &[(i64, &str)]) -> FinalLogs {
        let records = records.iter().map(|(o, v)| (*o, v.to_string())).collect();
        FinalLogs {
            partitions: [(0, (0, records))].into_iter().collect(),
            scan_problems: Vec::new(),
        }
    }

    /// The indices the violations name, in order.
    fn named(entries: &[Entry], violations: &[Violation]) -> Vec<usize> {
        assert!(!violations.is_empty(), "the checker found nothing");
        offending(entries, violations).into_keys().collect()
    }

    /// Each checker's violation, as `check.rs` words it, leads back to the
    /// operations behind it; a change of wording there fails here.
    #[test]
    fn each_violation_names_its_operations() {
        let history = [
            produce("p", "a", 0, 1_000),
            produce("p", "b", 1, 2_000),
            read(&[(0, "a"), (1, "b")], 2, 3_000),
        ];
        let lost = check::acknowledged_not_lost(&history, &final_log(&[(0, "a")]));
        assert_eq!(
            named(&history, &lost),
            [1, 2],
            "the produce of b, the read of b"
        );

        let twice = check::one_record_per_offset(&history, &final_log(&[(0, "a"), (1, "x")]));
        assert_eq!(named(&history, &twice), [1, 2]);

        let reordered = [produce("p", "a", 3, 1_000), produce("p", "b", 2, 2_000)];
        assert_eq!(
            named(&reordered, &check::producer_order(&reordered)),
            [0, 1]
        );

        let gap = [
            read(&[(0, "a"), (2, "c")], 3, 1_000),
            read(&[(0, "a")], 3, 500),
        ];
        assert_eq!(
            named(&gap, &check::dense_offsets(&gap, &final_log(&[]))),
            [0]
        );

        let backwards = [
            read(&[], 5, 1_000),
            read(&[], 4, 5_000),
            read(&[], 3, 10_000),
        ];
        let violations = check::high_watermark_monotonic(&backwards);
        assert_eq!(named(&backwards, &violations), [0, 1, 2]);

        let committed_back = [
            commit(10, 1_000),
            commit(7, 1_500),
            entry(
                "member1",
                Operation::Committed {
                    group: "g".into(),
                    partition: 1,
                    offset: 3,
                },
                5_000,
            ),
        ];
        let violations = check::committed_offsets_monotonic(&committed_back);
        assert_eq!(
            named(&committed_back, &violations),
            [0, 2],
            "the highest commit and the read-back, not the lower commit"
        );

        let owners = [
            assignment("member0", 1_000),
            assignment("member1", 2_000),
            produce("p", "a", 0, 3_000),
        ];
        let violations = check::one_owner_per_generation(&owners);
        assert_eq!(named(&owners, &violations), [0, 1]);

        let never = [produce("p", "a", 0, 1_000), consume(&[1], 3_000)];
        let violations = check::all_consumed_by_groups(&never);
        assert_eq!(named(&never, &violations), [0]);

        let redelivered = [
            consume(&[4], 1_000),
            commit(9, 2_000),
            consume(&[4, 5], 5_000),
        ];
        let violations = check::redelivery_above_commit(&redelivered);
        assert_eq!(named(&redelivered, &violations), [0, 1, 2]);
    }

    #[test]
    fn quoted_values_and_positions_are_read_back() {
        assert_eq!(
            quoted(r#"p acknowledged "a \"b\"" at 0/7; the log holds Some("c")"#),
            ["a \"b\"", "c"]
        );
        assert_eq!(
            positions("g got 2/15 again; 3/4, x/1 and 5/"),
            [(2, 15), (3, 4)]
        );
        assert_eq!(number_after::<i64>("jumps from -3 to 9", "from "), Some(-3));
        assert_eq!(number_after::<i64>("jumps from x", "from "), None);
    }

    fn report(violations: Vec<Violation>, failure: Option<String>) -> Report {
        let history = History::default();
        history.fault(2_500_000, "crash node1, unsynced writes: KeepPrefix".into());
        let spec = Spec {
            scenario: "crash-restart",
            seed: 0x2a,
            nodes: 1,
            broker: Vec::new(),
            disk: DiskFaults::default(),
            workload: Workload {
                topic: "events".into(),
                partitions: 1,
                producers: 1,
                records_per_producer: 1,
                padding_bytes: 0,
                burst: 1,
                send_interval_ms: 1,
                acks: sluice_client::Acks::All,
                group_members: 0,
                replication_factor: 1,
                min_insync_replicas: None,
                bootstrap_nodes: 1,
                eos: None,
            },
            faults: Vec::new(),
            safety_ms: 10_000,
            liveness_ms: 60_000,
            max_message_latency_ms: 1,
        };
        Report {
            spec,
            violations,
            failure,
            trace_hash: 7,
            simulated: Duration::from_secs(12),
            wall: Duration::from_secs(1),
            history,
            trace: Trace::new(false),
            acknowledged: 0,
        }
    }

    #[test]
    fn a_passing_report_opens_with_pass_and_every_checker_passed() {
        let text = render(&report(Vec::new(), None), "REPLAY");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("PASS crash-restart seed 0x2a: every checker passed and the run converged")
        );
        assert_eq!(lines.next(), Some("replay: REPLAY"));
        for name in CHECKERS.iter().chain([&CONVERGED]) {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(name) && l.ends_with(" passed")),
                "{name} is not listed as passed:\n{text}"
            );
        }
        assert!(text.contains("  2.500 s  crash node1, unsynced writes: KeepPrefix"));
        assert!(!text.contains("offending"));
    }

    #[test]
    fn a_failing_report_opens_with_fail_and_names_the_checker() {
        let lost = Violation {
            checker: "acknowledged-not-lost",
            detail: "producer0 acknowledged \"producer0-3\" at 0/3; the log holds None".into(),
        };
        let run = report(vec![lost], Some("not converged".into()));
        let index = run.history.invoke(
            "producer0",
            Operation::Produce {
                partition: 0,
                value: "producer0-3".into(),
                offset: None,
            },
        );
        let acknowledged = Operation::Produce {
            partition: 0,
            value: "producer0-3".into(),
            offset: Some(3),
        };
        run.history.complete(index, acknowledged, Outcome::Ok);
        let text = render(&run, "REPLAY");
        assert!(
            text.starts_with(
                "FAIL crash-restart seed 0x2a: acknowledged-not-lost, converged failed\n"
            ),
            "{text}"
        );
        assert!(text.contains("  acknowledged-not-lost        FAILED, 1 violation:\n"));
        assert!(text.contains("  committed-offsets-monotonic  passed\n"));
        let offending = text
            .split("first offending operations")
            .nth(1)
            .expect("a section of offending operations");
        let first = offending.lines().nth(1).expect("an operation");
        assert!(
            first.starts_with("  op 2 ")
                && first.contains("producer0")
                && first.ends_with("[acknowledged-not-lost]"),
            "{first}"
        );
        assert!(text.contains("the last operation of each client:\n  op 2 "));
    }
}
