//! Checkers: each reads the history and the final logs and reports what
//! broke a promise. They are written over partitions and processes, so
//! they hold unchanged when partitions get replicas on several nodes.

use std::collections::BTreeMap;

use crate::history::{Entry, Operation, Outcome};

/// The logs as read from the disk after the run, by partition:
/// (log start offset, records as (offset, value)).
#[derive(Debug, Clone, Default)]
pub struct FinalLogs {
    pub partitions: BTreeMap<i32, (i64, Vec<(i64, String)>)>,
    /// Problems the independent recovery scan found in durable data.
    pub scan_problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub detail: String,
}

fn violation(checker: &'static str, detail: String) -> Violation {
    Violation { checker, detail }
}

pub const CHECKERS: &[&str] = &[
    "committed-offsets-monotonic",
    "one-owner-per-generation",
    "all-consumed-by-groups",
    "redelivery-above-commit",
    "acknowledged-not-lost",
    "one-record-per-offset",
    "producer-order",
    "dense-offsets",
    "high-watermark-monotonic",
    "durable-data-intact",
    "replicas-agree",
    "eos-exactly-once",
    "eos-committed-visible",
    "eos-aborted-invisible",
    "eos-atomic",
    "eos-read-committed",
    "eos-no-open-transactions",
    "eos-lso",
];

/// Every replica's durable log holds exactly what the reference replica's
/// holds once the cluster converged (the same records at the same offsets,
/// from the same log start), and its own durable data is intact.
pub fn replicas_agree(host: &str, reference: &FinalLogs, theirs: &FinalLogs) -> Vec<Violation> {
    let mut found: Vec<Violation> = theirs
        .scan_problems
        .iter()
        .map(|p| violation("durable-data-intact", format!("{host}: {p}")))
        .collect();
    let partitions: std::collections::BTreeSet<i32> = reference
        .partitions
        .keys()
        .chain(theirs.partitions.keys())
        .copied()
        .collect();
    for partition in partitions {
        let (ours, other) = (
            reference.partitions.get(&partition),
            theirs.partitions.get(&partition),
        );
        if ours == other {
            continue;
        }
        let describe = |logs: Option<&(i64, Vec<(i64, String)>)>| match logs {
            None => "no log".to_string(),
            Some((start, records)) => format!(
                "start {start}, {} records, last {:?}",
                records.len(),
                records.last()
            ),
        };
        let first_difference = match (ours, other) {
            (Some((_, a)), Some((_, b))) => a
                .iter()
                .zip(b.iter())
                .find(|(x, y)| x != y)
                .map(|(x, y)| format!("; first difference: {x:?} against {y:?}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        found.push(violation(
            "replicas-agree",
            format!(
                "partition {partition}: node1 has {}, {host} has {}{first_difference}",
                describe(ours),
                describe(other)
            ),
        ));
    }
    found
}

/// Runs every checker.
pub fn check_all(history: &[Entry], logs: &FinalLogs) -> Vec<Violation> {
    let mut found = Vec::new();
    found.extend(acknowledged_not_lost(history, logs));
    found.extend(one_record_per_offset(history, logs));
    found.extend(producer_order(history));
    found.extend(dense_offsets(history, logs));
    found.extend(high_watermark_monotonic(history));
    found.extend(
        logs.scan_problems
            .iter()
            .map(|p| violation("durable-data-intact", p.clone())),
    );
    found.extend(committed_offsets_monotonic(history));
    found.extend(one_owner_per_generation(history));
    found.extend(all_consumed_by_groups(history));
    found.extend(redelivery_above_commit(history));
    found
}

fn acknowledged_commits(history: &[Entry]) -> impl Iterator<Item = (&Entry, &String, i32, i64)> {
    history
        .iter()
        .filter_map(|entry| match (&entry.operation, &entry.outcome) {
            (
                Operation::Commit {
                    group,
                    partition,
                    offset,
                },
                Outcome::Ok,
            ) => Some((entry, group, *partition, *offset)),
            _ => None,
        })
}

/// The highest commit of a group's partition acknowledged before `before_us`.
fn committed_before(
    history: &[Entry],
    group: &str,
    partition: i32,
    before_us: u128,
) -> Option<i64> {
    acknowledged_commits(history)
        .filter(|(commit, g, p, _)| {
            g.as_str() == group
                && *p == partition
                && commit.complete_us.is_some_and(|c| c < before_us)
        })
        .map(|(_, _, _, offset)| offset)
        .max()
}

/// A committed offset read back never lies below a commit acknowledged
/// before the read started (members only commit forward here).
pub fn committed_offsets_monotonic(history: &[Entry]) -> Vec<Violation> {
    let mut found = Vec::new();
    for entry in history {
        let (
            Operation::Committed {
                group,
                partition,
                offset,
            },
            Outcome::Ok,
        ) = (&entry.operation, &entry.outcome)
        else {
            continue;
        };
        if let Some(floor) = committed_before(history, group, *partition, entry.invoke_us)
            .filter(|floor| offset < floor)
        {
            found.push(violation(
                "committed-offsets-monotonic",
                format!("{group} {partition}: committed offset read as {offset} after {floor} was acknowledged"),
            ));
        }
    }
    found
}

/// In one generation of a group, a partition is assigned to one member.
pub fn one_owner_per_generation(history: &[Entry]) -> Vec<Violation> {
    let mut owners: BTreeMap<(&str, i32, i32), &str> = BTreeMap::new();
    let mut found = Vec::new();
    for entry in history {
        let Operation::Assignment {
            group,
            generation,
            partitions,
        } = &entry.operation
        else {
            continue;
        };
        for partition in partitions {
            match owners.get(&(group.as_str(), *generation, *partition)) {
                Some(owner) if *owner != entry.process => found.push(violation(
                    "one-owner-per-generation",
                    format!("{group} generation {generation}: partition {partition} owned by {owner} and {}", entry.process),
                )),
                Some(_) => {}
                None => {
                    owners.insert((group.as_str(), *generation, *partition), entry.process.as_str());
                }
            }
        }
    }
    found
}

/// Every acknowledged record was consumed by each group (checked after
/// the liveness phase).
pub fn all_consumed_by_groups(history: &[Entry]) -> Vec<Violation> {
    let mut consumed: BTreeMap<&str, std::collections::BTreeSet<(i32, i64)>> = BTreeMap::new();
    for entry in history {
        if let Operation::Consume {
            group,
            partition,
            records,
        } = &entry.operation
        {
            let seen = consumed.entry(group.as_str()).or_default();
            seen.extend(records.iter().map(|(offset, _)| (*partition, *offset)));
        }
    }
    let mut found = Vec::new();
    for (group, seen) in &consumed {
        for (_, partition, value, offset) in acknowledged(history) {
            if !seen.contains(&(partition, offset)) {
                found.push(violation(
                    "all-consumed-by-groups",
                    format!("{group} never consumed {value:?} at {partition}/{offset}"),
                ));
            }
        }
    }
    found
}

/// A record delivered to a group again lies at or above every offset the
/// group had committed (acknowledged) for its partition before that delivery.
pub fn redelivery_above_commit(history: &[Entry]) -> Vec<Violation> {
    let mut delivered: std::collections::BTreeSet<(&str, i32, i64)> =
        std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for entry in history {
        let Operation::Consume {
            group,
            partition,
            records,
        } = &entry.operation
        else {
            continue;
        };
        for (offset, _) in records {
            if delivered.insert((group.as_str(), *partition, *offset)) {
                continue;
            }
            if let Some(committed) =
                committed_before(history, group, *partition, entry.invoke_us).filter(|c| offset < c)
            {
                found.push(violation(
                    "redelivery-above-commit",
                    format!("{group} got {partition}/{offset} again after committing {committed}"),
                ));
            }
        }
    }
    found
}

fn acknowledged(history: &[Entry]) -> impl Iterator<Item = (&Entry, i32, &String, i64)> {
    history
        .iter()
        .filter_map(|entry| match (&entry.operation, &entry.outcome) {
            (
                Operation::Produce {
                    partition,
                    value,
                    offset: Some(offset),
                },
                Outcome::Ok,
            ) => Some((entry, *partition, value, *offset)),
            _ => None,
        })
}

/// Every acknowledged record is in the final log at its offset (unless
/// retention removed it: below the log start offset).
pub fn acknowledged_not_lost(history: &[Entry], logs: &FinalLogs) -> Vec<Violation> {
    let mut found = Vec::new();
    for (entry, partition, value, offset) in acknowledged(history) {
        let Some((log_start, records)) = logs.partitions.get(&partition) else {
            found.push(violation(
                "acknowledged-not-lost",
                format!("partition {partition} is gone"),
            ));
            continue;
        };
        if offset < *log_start {
            continue;
        }
        let stored = records
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
            .map(|i| &records[i].1);
        if stored != Some(value) {
            found.push(violation(
                "acknowledged-not-lost",
                format!(
                    "{} acknowledged {value:?} at {partition}/{offset}; the log holds {stored:?}",
                    entry.process
                ),
            ));
        }
    }
    found
}

/// No offset ever held two different records, across every read and the final log.
pub fn one_record_per_offset(history: &[Entry], logs: &FinalLogs) -> Vec<Violation> {
    let mut seen: BTreeMap<(i32, i64), &String> = BTreeMap::new();
    let mut found = Vec::new();
    let reads = history.iter().filter_map(|entry| match &entry.operation {
        Operation::Read {
            partition, records, ..
        } => Some((*partition, records)),
        _ => None,
    });
    let finals = logs
        .partitions
        .iter()
        .map(|(partition, (_, records))| (*partition, records));
    for (partition, records) in reads.chain(finals) {
        for (offset, value) in records {
            match seen.get(&(partition, *offset)) {
                Some(earlier) if *earlier != value => found.push(violation(
                    "one-record-per-offset",
                    format!("{partition}/{offset} held {earlier:?} and later {value:?}"),
                )),
                Some(_) => {}
                None => {
                    seen.insert((partition, *offset), value);
                }
            }
        }
    }
    found
}

/// Each producer's acknowledged records of a partition sit at increasing
/// offsets, in the order it sent them.
pub fn producer_order(history: &[Entry]) -> Vec<Violation> {
    let mut last: BTreeMap<(&str, i32), (i64, &String)> = BTreeMap::new();
    let mut found = Vec::new();
    for (entry, partition, value, offset) in acknowledged(history) {
        let key = (entry.process.as_str(), partition);
        if let Some((previous, previous_value)) = last.get(&key) {
            if offset <= *previous {
                found.push(violation(
                    "producer-order",
                    format!("{} sent {previous_value:?} before {value:?} but got {previous} then {offset}", entry.process),
                ));
            }
        }
        last.insert(key, (offset, value));
    }
    found
}

/// Offsets are dense: in every read and in the final log, consecutive
/// records have consecutive offsets.
pub fn dense_offsets(history: &[Entry], logs: &FinalLogs) -> Vec<Violation> {
    let mut found = Vec::new();
    let reads = history.iter().filter_map(|entry| match &entry.operation {
        Operation::Read {
            partition, records, ..
        } => Some((*partition, records)),
        _ => None,
    });
    let finals = logs
        .partitions
        .iter()
        .map(|(partition, (_, records))| (*partition, records));
    for (partition, records) in reads.chain(finals) {
        for pair in records.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                found.push(violation(
                    "dense-offsets",
                    format!(
                        "partition {partition} jumps from {} to {}",
                        pair[0].0, pair[1].0
                    ),
                ));
            }
        }
    }
    for (partition, (log_start, records)) in &logs.partitions {
        if let Some((first, _)) = records.first() {
            if first != log_start {
                found.push(violation(
                    "dense-offsets",
                    format!("partition {partition} starts at {first}, log start {log_start}"),
                ));
            }
        }
    }
    found
}

/// A read that started after another completed never sees a lower high
/// watermark.
pub fn high_watermark_monotonic(history: &[Entry]) -> Vec<Violation> {
    let mut found = Vec::new();
    let reads: Vec<(&Entry, i32, i64)> = history
        .iter()
        .filter_map(|entry| match (&entry.operation, &entry.outcome) {
            (
                Operation::Read {
                    partition,
                    high_watermark: Some(high_watermark),
                    ..
                },
                Outcome::Ok,
            ) => Some((entry, *partition, *high_watermark)),
            _ => None,
        })
        .collect();
    // For each partition, the highest watermark seen by reads completed before a given time.
    for (later, partition, high_watermark) in &reads {
        let floor = reads
            .iter()
            .filter(|(earlier, p, _)| {
                p == partition && earlier.complete_us.is_some_and(|c| c < later.invoke_us)
            })
            .map(|(_, _, hw)| *hw)
            .max();
        if let Some(floor) = floor.filter(|floor| high_watermark < floor) {
            found.push(violation(
                "high-watermark-monotonic",
                format!("{} read high watermark {high_watermark} of partition {partition} after {floor} was seen", later.process),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(process: &str, partition: i32, value: &str, offset: i64, at: u128) -> Entry {
        Entry {
            process: process.into(),
            operation: Operation::Produce {
                partition,
                value: value.into(),
                offset: Some(offset),
            },
            invoke_us: at,
            complete_us: Some(at + 1),
            outcome: Outcome::Ok,
        }
    }

    fn read(partition: i32, records: &[(i64, &str)], high_watermark: i64, at: u128) -> Entry {
        Entry {
            process: "reader".into(),
            operation: Operation::Read {
                partition,
                records: records.iter().map(|(o, v)| (*o, v.to_string())).collect(),
                high_watermark: Some(high_watermark),
            },
            invoke_us: at,
            complete_us: Some(at + 1),
            outcome: Outcome::Ok,
        }
    }

    fn logs(records: &[(i64, &str)]) -> FinalLogs {
        let records = records.iter().map(|(o, v)| (*o, v.to_string())).collect();
        FinalLogs {
            partitions: [(0, (0, records))].into_iter().collect(),
            scan_problems: Vec::new(),
        }
    }

    fn entry(process: &str, operation: Operation, at: u128) -> Entry {
        Entry {
            process: process.into(),
            operation,
            invoke_us: at,
            complete_us: Some(at + 1),
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn group_checkers_flag_their_violations() {
        let commit = entry(
            "c1",
            Operation::Commit {
                group: "g".into(),
                partition: 0,
                offset: 10,
            },
            1,
        );
        let back = entry(
            "c2",
            Operation::Committed {
                group: "g".into(),
                partition: 0,
                offset: 3,
            },
            5,
        );
        assert_eq!(
            committed_offsets_monotonic(&[commit.clone(), back]).len(),
            1
        );
        let assign = |process: &str| {
            entry(
                process,
                Operation::Assignment {
                    group: "g".into(),
                    generation: 2,
                    partitions: vec![0, 1],
                },
                1,
            )
        };
        assert_eq!(
            one_owner_per_generation(&[assign("a"), assign("b")]).len(),
            2,
            "both partitions have two owners"
        );
        assert!(one_owner_per_generation(&[assign("a"), assign("a")]).is_empty());
        let consume = |offsets: &[i64], at| {
            let records = offsets.iter().map(|o| (*o, String::new())).collect();
            entry(
                "c1",
                Operation::Consume {
                    group: "g".into(),
                    partition: 0,
                    records,
                },
                at,
            )
        };
        assert_eq!(
            redelivery_above_commit(&[consume(&[4], 0), commit, consume(&[4], 9)]).len(),
            1
        );
        assert!(redelivery_above_commit(&[consume(&[4], 0), consume(&[4], 9)]).is_empty());
        let acked = produce("p", 0, "a", 0, 0);
        assert_eq!(
            all_consumed_by_groups(&[acked.clone(), consume(&[1], 3)]).len(),
            1
        );
        assert!(all_consumed_by_groups(&[acked, consume(&[0], 3)]).is_empty());
    }

    #[test]
    fn each_checker_flags_its_violation_and_passes_a_good_run() {
        let good = vec![
            produce("p", 0, "a", 0, 1),
            produce("p", 0, "b", 1, 5),
            read(0, &[(0, "a"), (1, "b")], 2, 10),
        ];
        assert!(check_all(&good, &logs(&[(0, "a"), (1, "b")])).is_empty());
        let lost = acknowledged_not_lost(&good, &logs(&[(0, "a")]));
        assert_eq!(lost.len(), 1);
        let twice = one_record_per_offset(&[read(0, &[(0, "x")], 1, 1)], &logs(&[(0, "y")]));
        assert_eq!(twice.len(), 1);
        let reordered = producer_order(&[produce("p", 0, "a", 3, 1), produce("p", 0, "b", 2, 5)]);
        assert_eq!(reordered.len(), 1);
        let gap = dense_offsets(&[], &logs(&[(0, "a"), (2, "c")]));
        assert_eq!(gap.len(), 1);
        let backwards = high_watermark_monotonic(&[read(0, &[], 5, 1), read(0, &[], 3, 10)]);
        assert_eq!(backwards.len(), 1);
    }
}
