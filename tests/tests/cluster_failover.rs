//! Real clients through broker failures on a three-broker cluster.
//!
//! Three `sluice serve` processes form one controller quorum (the harness's
//! `Cluster`, as in `cluster_clients.rs`) with short broker sessions, so a
//! broker killed with SIGKILL is fenced within seconds and the leadership
//! of its partitions moves to another member of their ISR. Topics have three
//! replicas and `min.insync.replicas=2`, so one dead broker stops nothing.
//!
//! - confluent-kafka and KafkaJS produce idempotently with acks=all while
//!   the leader of a partition is killed and later restarted; every
//!   acknowledged record is read back exactly once, at the offset it was
//!   acknowledged at, in produce order per partition.
//! - A confluent-kafka group and a kafka-python group keep consuming and
//!   committing while their coordinator is killed; commits acknowledged
//!   before the kill survive it, every record is consumed and the commits
//!   reach the log ends.
//! - kcat and sarama see the new leader after a kill and round-trip
//!   records through it; sarama does so with a client that knew the old one.
//! - `sluice topics describe` shows leader, replicas and ISR, and the
//!   killed broker leaving the ISR of every partition and coming back.
//! - Under all of these, an acks=all produce waiting on a follower that
//!   died: answered once the follower is fenced (or when its own timeout
//!   passes), as Kafka answers it.
//!
//! Nothing waits a fixed time: leaders, ISRs, coordinators and the clients'
//! progress are polled against deadlines, and a test that fails prints the
//! cluster's state as each live broker's Metadata describes it, beside the
//! tail of each broker's log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_tests::cluster::{
    find_coordinator, short_sessions, Cluster, PartitionView, GROUP_KEY, SESSION_TIMEOUT_MS,
};
use sluice_tests::wire::Wire;
use sluice_tests::{
    complete_lines, interop_node_modules, interop_script, kcat, kcat_read_all, lines_file,
    metric_sample, node, run_sluice, run_tool_bytes, sarama_failover_bin, sluice_bin,
    sluice_stdout, venv_python, write_file, Member, Tool,
};

/// From a topic's creation to every node reporting its partitions with a
/// leader and a full ISR.
const SPREAD_WITHIN: Duration = Duration::from_secs(15);

/// From a kill to every partition of the killed broker led by another and
/// the killed one out of every ISR: the session timeout, plus a quorum
/// election (about 2 to 4 s, see `cluster.rs`) and a second session
/// timeout counted by the new controller when the controller was killed,
/// with room for a loaded machine.
const FAILOVER_WITHIN: Duration = Duration::from_secs(25);

/// From a restart to the broker back in the ISR of every partition.
const REJOIN_WITHIN: Duration = Duration::from_secs(25);

/// From one point of a client's progress to the next one asked for.
const PROGRESS_WITHIN: Duration = Duration::from_secs(30);

/// From a kill to acknowledgements on every partition again: the
/// failover (see [`FAILOVER_WITHIN`]; about 3 s when the controller
/// survives, 6 to 8 s when it was killed), then the clients' retries and
/// metadata refreshes (a second or two).
const RESUMED_WITHIN: Duration = Duration::from_secs(15);

/// How long a test waits for a client to resume before it gives up: longer
/// than [`RESUMED_WITHIN`], so that a slow resumption is reported with
/// its time after the records are checked.
const STALL_WITHIN: Duration = Duration::from_secs(45);

/// Bound on one `sluice` command and on one kcat run.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(30);
const KCAT_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on a producer's exit after SIGTERM (it flushes first).
const STOP_TIMEOUT: Duration = Duration::from_secs(70);

/// Partitions of the topics the producers write.
const PARTITIONS: i32 = 3;

/// Records a producer is to have acknowledged on every partition before
/// the kill, and again after each step.
const ACKS_PER_STEP: usize = 300;

// ---------------------------------------------------------------------------
// Producers through a failover
// ---------------------------------------------------------------------------

/// What a failover producer reported: each acknowledged record, each one
/// the client gave up on, fatal errors, and its closing line.
#[derive(Debug, Default)]
struct ProducerReport {
    /// (partition, offset, record number), in acknowledgement order.
    acks: Vec<(i32, i64, u64)>,
    /// (record number, error).
    failed: Vec<(u64, String)>,
    fatal: Vec<String>,
    done: Option<String>,
}

impl ProducerReport {
    /// Asserts that the client gave up on no record and hit no fatal error.
    fn assert_nothing_failed(&self) {
        assert!(self.fatal.is_empty(), "fatal errors: {:?}", self.fatal);
        assert!(
            self.failed.is_empty(),
            "{} records failed, first {:?}",
            self.failed.len(),
            &self.failed[..self.failed.len().min(5)]
        );
    }
}

/// The record number of a value `v<digits>`.
fn record_number(value: &str) -> Option<u64> {
    value.strip_prefix('v')?.parse().ok()
}

fn parse_producer_report(stdout: &str) -> ProducerReport {
    let mut report = ProducerReport::default();
    for line in complete_lines(stdout) {
        let mut words = line.splitn(4, ' ');
        match words.next() {
            Some("ack") => {
                let partition = words.next().and_then(|p| p.parse().ok());
                let offset = words.next().and_then(|o| o.parse().ok());
                let number = words.next().and_then(record_number);
                match (partition, offset, number) {
                    (Some(p), Some(o), Some(n)) => report.acks.push((p, o, n)),
                    _ => panic!("the producer printed {line:?}"),
                }
            }
            Some("fail") => {
                let number = words.next().and_then(record_number);
                let rest = words.collect::<Vec<_>>().join(" ");
                report.failed.push((
                    number.unwrap_or_else(|| panic!("the producer printed {line:?}")),
                    rest,
                ));
            }
            Some("fatal") => report.fatal.push(line.to_string()),
            Some("done") => report.done = Some(line.to_string()),
            _ => panic!("the producer printed {line:?}"),
        }
    }
    report
}

/// A producer process (a script of `tests/interop/failover/`) writing its
/// report to a file as it goes.
struct FailoverProducer {
    member: Member,
}

impl FailoverProducer {
    /// `tests/interop/failover/confluent_producer.py` at `rate` records a
    /// second.
    fn confluent(cluster: &Cluster, topic: &str, rate: u32, dir: &Path) -> Self {
        let args = [
            script_arg("failover/confluent_producer.py"),
            "--bootstrap".into(),
            cluster.bootstrap_all(),
            "--topic".into(),
            topic.into(),
            "--rate".into(),
            rate.to_string(),
        ];
        FailoverProducer {
            member: Member::spawn(venv_python(), &args, dir, "confluent-producer"),
        }
    }

    fn report(&self) -> ProducerReport {
        parse_producer_report(&self.member.stdout())
    }

    /// Waits until the producer has acknowledged at least `count` records
    /// on every partition at offsets from `from[partition]` on; the
    /// report then.
    fn wait_for_acks(
        &mut self,
        cluster: &Cluster,
        within: Duration,
        from: &[i64],
        count: usize,
        what: &str,
    ) -> ProducerReport {
        cluster.wait_until(within, what, |_| {
            self.member.fail_if_exited();
            let report = self.report();
            assert!(
                report.fatal.is_empty(),
                "the producer hit a fatal error: {:?}\nits stderr:\n{}",
                report.fatal,
                self.member.stderr()
            );
            let mut acked = vec![0usize; from.len()];
            for &(partition, offset, _) in &report.acks {
                let slot = usize::try_from(partition).expect("a partition number");
                if offset >= from[slot] {
                    acked[slot] += 1;
                }
            }
            if acked.iter().all(|&n| n >= count) {
                Ok(report)
            } else {
                Err(format!(
                    "acknowledged by partition from offsets {from:?}: {acked:?}; \
                     {} in all, {} failed",
                    report.acks.len(),
                    report.failed.len()
                ))
            }
        })
    }

    /// Waits for `count` more acknowledgements on every partition than
    /// each had when called.
    fn more_acks(&mut self, cluster: &Cluster, within: Duration, count: usize, what: &str) {
        let ends = acked_ends(&self.report());
        self.wait_for_acks(cluster, within, &ends, count, what);
    }

    /// Stops the producer with SIGTERM; its whole report once it flushed.
    fn stop(mut self) -> ProducerReport {
        let status = self.member.terminate(STOP_TIMEOUT);
        assert!(
            status.success(),
            "the producer exited with {status}; its stderr:\n{}",
            self.member.stderr()
        );
        let report = self.report();
        assert!(
            report.done.is_some(),
            "the producer exited without its closing line; its stderr:\n{}",
            self.member.stderr()
        );
        report
    }
}

/// Where each partition's acknowledged records end (one past the highest
/// offset acknowledged there).
fn acked_ends(report: &ProducerReport) -> Vec<i64> {
    let mut ends = vec![0i64; PARTITIONS as usize];
    for &(partition, offset, _) in &report.acks {
        let slot = usize::try_from(partition).expect("a partition number");
        ends[slot] = ends[slot].max(offset + 1);
    }
    ends
}

/// The whole produce-through-a-failover run shared by the producer tests:
/// a topic with three partitions; a producer started by `spawn`; once
/// every partition has acknowledgements, the leader of partition
/// `pick(…)` killed; the failover seen in Metadata; acknowledgements on
/// every partition again (the moved one from its new leader); the killed
/// broker restarted and back in every ISR; more acknowledgements; a stop
/// and a read-back checked record by record. Last, the time from the kill
/// to acknowledgements on every partition is held to [`RESUMED_WITHIN`].
fn produce_through_a_failover(
    topic: &str,
    pick: impl Fn(&Cluster, &[PartitionView]) -> i32,
    spawn: impl Fn(&Cluster, &Path) -> FailoverProducer,
) {
    let mut cluster = Cluster::start(short_sessions);
    let before = cluster.create_topic(topic, PARTITIONS);
    let victim = before[pick(&cluster, &before) as usize].leader;
    eprintln!(
        "{topic}: {before:?}; will kill node {victim} (controller {})",
        cluster.controller
    );
    let work = tempfile::tempdir().expect("a work directory");
    let mut producer = spawn(&cluster, work.path());
    let started = Instant::now();
    producer.more_acks(
        &cluster,
        PROGRESS_WITHIN,
        ACKS_PER_STEP,
        "acks before the kill",
    );

    cluster.kill(victim);
    let killed_at = Instant::now();
    let after = cluster.wait_for_failover(topic, victim, &before, FAILOVER_WITHIN);
    eprintln!(
        "{topic}: failover seen {:.1?} after the kill: {after:?}",
        killed_at.elapsed()
    );
    // Acknowledgements past anything acknowledged when the failover was
    // seen were given by the partitions' leaders since.
    producer.more_acks(
        &cluster,
        STALL_WITHIN,
        1,
        "acks on every partition after the failover",
    );
    let resumed_after = killed_at.elapsed();
    eprintln!("{topic}: every partition acknowledging again {resumed_after:.1?} after the kill");
    producer.more_acks(
        &cluster,
        PROGRESS_WITHIN,
        ACKS_PER_STEP,
        "acks after the failover",
    );

    cluster.restart(victim);
    let restarted_at = Instant::now();
    let rejoined = cluster.wait_for_full_isr(topic, PARTITIONS, REJOIN_WITHIN);
    eprintln!(
        "{topic}: node {victim} back in every ISR {:.1?} after its restart: {rejoined:?}",
        restarted_at.elapsed()
    );
    producer.more_acks(
        &cluster,
        PROGRESS_WITHIN,
        ACKS_PER_STEP,
        "acks after the rejoin",
    );
    let report = producer.stop();
    eprintln!(
        "{topic}: {} ({:.1?} of producing)",
        report.done.as_deref().unwrap_or_default(),
        started.elapsed()
    );
    report.assert_nothing_failed();
    let consumed = kcat_read_all(&cluster.bootstrap_all(), topic, "read_committed", "%s");
    check_acknowledged_exactly_once(&report, &consumed);
    assert!(
        resumed_after < RESUMED_WITHIN,
        "acknowledgements on every partition resumed {resumed_after:.1?} after the kill, \
         not within {RESUMED_WITHIN:?}"
    );
}

/// Asserts that the log holds every acknowledged record exactly once, at
/// the partition and offset it was acknowledged at; that each partition's
/// offsets are dense from 0 and its records in produce order; and that
/// nothing is in the log that was not produced.
fn check_acknowledged_exactly_once(report: &ProducerReport, consumed: &[(i32, i64, String)]) {
    let mut at: BTreeMap<(i32, i64), u64> = BTreeMap::new();
    let mut where_is: BTreeMap<u64, (i32, i64)> = BTreeMap::new();
    for (partition, offset, value) in consumed {
        let number = record_number(value)
            .unwrap_or_else(|| panic!("{partition}/{offset} holds {value:?}, which nobody sent"));
        if let Some(first) = where_is.insert(number, (*partition, *offset)) {
            panic!("record {number} is in the log twice: at {first:?} and at {partition}/{offset}");
        }
        assert!(
            at.insert((*partition, *offset), number).is_none(),
            "kcat read {partition}/{offset} twice"
        );
    }
    for &(partition, offset, number) in &report.acks {
        match at.get(&(partition, offset)) {
            Some(&found) if found == number => {}
            Some(&found) => panic!(
                "record {number} was acknowledged at {partition}/{offset}, \
                 where the log holds record {found}"
            ),
            None => panic!(
                "record {number} was acknowledged at {partition}/{offset}, \
                 which the log does not hold (lost)"
            ),
        }
    }
    let mut partitions: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
    for (&(partition, offset), &number) in &at {
        partitions
            .entry(partition)
            .or_default()
            .push((offset, number));
    }
    for (partition, records) in &partitions {
        for (index, pair) in records.windows(2).enumerate() {
            let ((offset_a, a), (offset_b, b)) = (pair[0], pair[1]);
            assert_eq!(
                offset_b,
                offset_a + 1,
                "partition {partition}: a gap after offset {offset_a}"
            );
            assert!(
                a < b,
                "partition {partition}: record {b} at offset {offset_b} follows record {a} \
                 at {offset_a}, against the produce order"
            );
            let _ = index;
        }
        assert_eq!(
            records.first().map(|&(offset, _)| offset),
            Some(0),
            "partition {partition} does not start at offset 0"
        );
    }
    let acked: BTreeSet<u64> = report.acks.iter().map(|&(_, _, n)| n).collect();
    let unacknowledged = where_is.keys().filter(|n| !acked.contains(n)).count();
    assert_eq!(
        unacknowledged, 0,
        "the log holds {unacknowledged} records the producer has no acknowledgement for"
    );
    eprintln!(
        "read back {} records, each acknowledged once, over partitions {:?}",
        at.len(),
        partitions
            .iter()
            .map(|(p, records)| (*p, records.len()))
            .collect::<Vec<_>>()
    );
}

/// The path of a script in `tests/interop/`, as an argument.
fn script_arg(name: &str) -> String {
    interop_script(name).display().to_string()
}

/// confluent-kafka, idempotent with acks=all, produces while the leader of
/// a partition (not the controller, so only a broker fails) is killed and
/// restarted.
#[test]
fn confluent_idempotent_producer_through_a_leader_kill_and_restart() {
    let topic = "failover-confluent";
    produce_through_a_failover(
        topic,
        |cluster, views| {
            views
                .iter()
                .find(|view| view.leader != cluster.controller)
                .expect("a partition led by a broker that is not the controller")
                .partition
        },
        |cluster, dir| FailoverProducer::confluent(cluster, topic, 500, dir),
    );
}

/// KafkaJS, idempotent with acks=-1, produces while the controller, which
/// leads a partition too, is killed and restarted: the quorum elects
/// another controller, which fences the killed broker and moves its
/// leaderships.
#[test]
fn kafkajs_idempotent_producer_through_a_controller_kill_and_restart() {
    interop_node_modules();
    let topic = "failover-kafkajs";
    produce_through_a_failover(
        topic,
        |cluster, views| {
            views
                .iter()
                .find(|view| view.leader == cluster.controller)
                .expect("a partition led by the controller")
                .partition
        },
        |cluster, dir| {
            let args = [
                script_arg("failover/kafkajs_producer.js"),
                "--bootstrap".into(),
                cluster.bootstrap_all(),
                "--topic".into(),
                topic.into(),
                "--partitions".into(),
                PARTITIONS.to_string(),
            ];
            FailoverProducer {
                member: Member::spawn(node(), &args, dir, "kafkajs-producer"),
            }
        },
    );
}

// ---------------------------------------------------------------------------
// Consumer groups through a coordinator kill
// ---------------------------------------------------------------------------

/// What a group member (`tests/interop/failover/group_member.py`)
/// reported.
#[derive(Debug, Default)]
struct MemberReport {
    /// Its partitions after each rebalance.
    assigned: Vec<Vec<i32>>,
    /// (partition, offset, record number), in the order read.
    records: Vec<(i32, i64, u64)>,
    /// Each commit: the offsets acknowledged, or the error.
    commits: Vec<Result<BTreeMap<i32, i64>, String>>,
    closed: bool,
}

impl MemberReport {
    /// The latest acknowledged commit of each partition.
    fn committed(&self) -> BTreeMap<i32, i64> {
        let mut latest = BTreeMap::new();
        for offsets in self.commits.iter().flatten() {
            latest.extend(offsets.iter().map(|(&p, &o)| (p, o)));
        }
        latest
    }

    /// The partitions and offsets read at least once.
    fn read(&self) -> BTreeSet<(i32, i64)> {
        self.records.iter().map(|&(p, o, _)| (p, o)).collect()
    }
}

/// Panics on a line a client script should not have printed.
fn bad<T>(line: &str) -> T {
    panic!("the group member printed {line:?}")
}

fn parse_member_report(stdout: &str) -> MemberReport {
    let mut report = MemberReport::default();
    for line in complete_lines(stdout) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "assigned" => report.assigned.push(
                rest.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().unwrap_or_else(|_| bad(line)))
                    .collect(),
            ),
            "rec" => {
                let mut words = rest.splitn(3, ' ');
                let partition = words.next().and_then(|p| p.parse().ok());
                let offset = words.next().and_then(|o| o.parse().ok());
                match (partition, offset, words.next().and_then(record_number)) {
                    (Some(p), Some(o), Some(n)) => report.records.push((p, o, n)),
                    _ => bad(line),
                }
            }
            "commit" => match rest.split_once(' ') {
                Some(("ok", offsets)) => {
                    let parsed = offsets
                        .split(',')
                        .map(|pair| {
                            let (p, o) = pair.split_once(':').unwrap_or_else(|| bad(line));
                            (
                                p.parse().unwrap_or_else(|_| bad(line)),
                                o.parse().unwrap_or_else(|_| bad(line)),
                            )
                        })
                        .collect();
                    report.commits.push(Ok(parsed));
                }
                Some(("err", error)) => report.commits.push(Err(error.to_string())),
                _ => bad(line),
            },
            "closed" => report.closed = true,
            _ => bad(line),
        }
    }
    report
}

/// The offsets `group` committed for the topic's partitions, as
/// OffsetFetch v7 at `bootstrap` answers (-1: none); an error while the
/// coordinator moves or loads.
fn offset_fetch(bootstrap: &str, group: &str, topic: &str) -> Result<Vec<i64>, String> {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse};
    let mut wire = Wire::connect(bootstrap).map_err(|e| format!("connect to {bootstrap}: {e}"))?;
    let _ = wire.stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_indexes((0..PARTITIONS).collect())]));
    let response: OffsetFetchResponse = wire
        .call(ApiKey::OffsetFetch, 7, &request)
        .map_err(|e| format!("OffsetFetch v7 from {bootstrap}: {e}"))?;
    if response.error_code != 0 {
        return Err(format!(
            "OffsetFetch answered error {}",
            response.error_code
        ));
    }
    let mut offsets = vec![-1i64; PARTITIONS as usize];
    for partition in response.topics.iter().flat_map(|t| &t.partitions) {
        if partition.error_code != 0 {
            return Err(format!(
                "OffsetFetch: partition {} has error {}",
                partition.partition_index, partition.error_code
            ));
        }
        offsets[usize::try_from(partition.partition_index).expect("a partition")] =
            partition.committed_offset;
    }
    Ok(offsets)
}

/// A group named `prefix-N` whose coordinator is not the controller (so
/// the kill fences a broker and leaves the quorum alone), and that
/// coordinator.
fn group_away_from_the_controller(cluster: &Cluster, prefix: &str) -> (String, i32) {
    const CANDIDATES_MAX: usize = 30;
    let bootstrap = cluster.bootstrap(cluster.controller);
    for n in 0..CANDIDATES_MAX {
        let group = format!("{prefix}-{n}");
        let coordinator =
            cluster.wait_until(SPREAD_WITHIN, &format!("a coordinator for {group}"), |_| {
                find_coordinator(&bootstrap, &group, GROUP_KEY)
            });
        if coordinator != cluster.controller {
            return (group, coordinator);
        }
    }
    panic!("none of {CANDIDATES_MAX} groups is coordinated away from the controller");
}

/// A running `tests/interop/failover/group_member.py`.
struct GroupMember {
    member: Member,
}

impl GroupMember {
    fn spawn(client: &str, cluster: &Cluster, topic: &str, group: &str, dir: &Path) -> Self {
        let args = [
            script_arg("failover/group_member.py"),
            "--client".into(),
            client.into(),
            "--bootstrap".into(),
            cluster.bootstrap_all(),
            "--topic".into(),
            topic.into(),
            "--group".into(),
            group.into(),
        ];
        GroupMember {
            member: Member::spawn(venv_python(), &args, dir, "member"),
        }
    }

    fn report(&mut self) -> MemberReport {
        self.member.fail_if_exited();
        parse_member_report(&self.member.stdout())
    }

    /// Waits until it has read `count` records and committed on every
    /// partition; its report then.
    fn wait_reading(&mut self, cluster: &Cluster, count: usize) -> MemberReport {
        cluster.wait_until(PROGRESS_WITHIN, "the member reading and committing", |_| {
            let report = self.report();
            let committed = report.committed();
            if report.records.len() >= count && committed.len() == PARTITIONS as usize {
                Ok(report)
            } else {
                Err(format!(
                    "{} read, committed {committed:?}",
                    report.records.len()
                ))
            }
        })
    }

    /// Waits until two commits after the first `seen` were acknowledged.
    fn wait_committing_again(&mut self, cluster: &Cluster, seen: usize) {
        cluster.wait_until(STALL_WITHIN, "commits after the kill", |_| {
            let since = self.report().commits.split_off(seen);
            match since.iter().filter(|c| c.is_ok()).count() {
                2.. => Ok(()),
                _ => Err(format!("commits since the kill: {since:?}")),
            }
        });
    }

    /// Waits until it has read every position of `expected` and committed
    /// `ends`; its report then.
    fn wait_all_read(
        &mut self,
        cluster: &Cluster,
        expected: &BTreeMap<(i32, i64), u64>,
        ends: &[i64],
    ) -> MemberReport {
        cluster.wait_until(PROGRESS_WITHIN, "every record read and committed", |_| {
            let report = self.report();
            let read = report.read();
            let unread: Vec<&(i32, i64)> =
                expected.keys().filter(|at| !read.contains(at)).collect();
            let committed: Vec<i64> = (0..PARTITIONS)
                .map(|p| report.committed().get(&p).copied().unwrap_or(-1))
                .collect();
            if unread.is_empty() && committed == ends {
                Ok(report)
            } else {
                Err(format!(
                    "{} unread (first {:?}); committed {committed:?}, ends {ends:?}",
                    unread.len(),
                    &unread[..unread.len().min(12)]
                ))
            }
        })
    }

    /// Stops it with SIGTERM: it commits, leaves the group and closes.
    fn stop(mut self) {
        let status = self.member.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "the member exited with {status}:\n{}",
            self.member.stderr()
        );
        let report = parse_member_report(&self.member.stdout());
        assert!(report.closed, "the member did not close");
    }
}

/// Waits until FindCoordinator, asked of a survivor, names another
/// coordinator for `group` than the killed `old`, and that one answers
/// OffsetFetch: the new coordinator and the commits it answers.
fn wait_for_new_coordinator(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    old: i32,
) -> (i32, Vec<i64>) {
    let survivor = cluster.other_than(&[old]);
    let moved_to =
        cluster.wait_until(
            FAILOVER_WITHIN,
            "a new coordinator",
            |cluster| match find_coordinator(&cluster.bootstrap(survivor), group, GROUP_KEY)? {
                id if id == old => Err(format!("still {id}")),
                id => Ok(id),
            },
        );
    let fetched = cluster.wait_until(FAILOVER_WITHIN, "OffsetFetch at the new coordinator", |c| {
        offset_fetch(&c.bootstrap(moved_to), group, topic)
    });
    (moved_to, fetched)
}

/// A group member (of `client`) consumes a topic that a producer keeps
/// writing, committing as it goes, while the group's coordinator is
/// killed. Commits acknowledged before the kill are what the new
/// coordinator answers (or older than what it answers); the member keeps
/// committing; once the producer stops, the member reads every record
/// acknowledged (each the record acknowledged at its position) and its
/// commits reach the log ends, as OffsetFetch and `sluice groups describe`
/// report them after it left.
fn group_through_a_coordinator_kill(client: &str) {
    let mut cluster = Cluster::start(short_sessions);
    let topic = format!("failover-group-{client}");
    cluster.create_topic(&topic, PARTITIONS);
    let (group, coordinator) = group_away_from_the_controller(&cluster, &topic);
    eprintln!(
        "{group}: coordinator {coordinator}, controller {}",
        cluster.controller
    );
    let work = tempfile::tempdir().expect("a work directory");
    let mut producer = FailoverProducer::confluent(&cluster, &topic, 200, work.path());
    let mut member = GroupMember::spawn(client, &cluster, &topic, &group, work.path());
    let committed_before = member.wait_reading(&cluster, ACKS_PER_STEP).committed();

    cluster.kill(coordinator);
    let killed_at = Instant::now();
    // A commit the dead coordinator acknowledged may still be printed
    // after this count: only the second commit after it is sure to have
    // gone to the new coordinator.
    let commits_at_kill = member.report().commits.len();
    let (moved_to, fetched) = wait_for_new_coordinator(&cluster, &group, &topic, coordinator);
    eprintln!(
        "{group}: coordinator {moved_to} {:.1?} after the kill, answering commits {fetched:?} \
         (acknowledged before the kill: {committed_before:?})",
        killed_at.elapsed()
    );
    for (&partition, &offset) in &committed_before {
        assert!(
            fetched[partition as usize] >= offset,
            "partition {partition}: the commit of {offset} acknowledged before the kill is \
             gone; the new coordinator answers {fetched:?}"
        );
    }
    member.wait_committing_again(&cluster, commits_at_kill);
    let resumed_after = killed_at.elapsed();
    eprintln!("{group}: the member committed again {resumed_after:.1?} after the kill");
    producer.more_acks(
        &cluster,
        STALL_WITHIN,
        ACKS_PER_STEP / 3,
        "acks on every partition after the kill",
    );
    let produced = producer.stop();
    produced.assert_nothing_failed();
    let ends = acked_ends(&produced);
    let expected: BTreeMap<(i32, i64), u64> =
        produced.acks.iter().map(|&(p, o, n)| ((p, o), n)).collect();
    let finished = member.wait_all_read(&cluster, &expected, &ends);
    member.stop();
    check_group_read(&finished, &expected);

    let committed = offset_fetch(&cluster.bootstrap(moved_to), &group, &topic)
        .unwrap_or_else(|e| panic!("OffsetFetch after the member left: {e}"));
    assert_eq!(
        committed, ends,
        "commits after the member left, and the log ends"
    );
    assert_described_commits(
        &cluster.bootstrap(cluster.other_than(&[coordinator])),
        &group,
        &topic,
        &ends,
    );
    assert!(
        resumed_after < RESUMED_WITHIN,
        "the member committed again {resumed_after:.1?} after the kill, not within \
         {RESUMED_WITHIN:?}"
    );
}

/// Every record the member read is the record acknowledged at its
/// position, and each partition was read in offset order (a rebalance may
/// start a partition again from its commit: a record read twice is
/// counted, not refused, as the group gives at-least-once).
fn check_group_read(report: &MemberReport, expected: &BTreeMap<(i32, i64), u64>) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut again = 0usize;
    for &(partition, offset, number) in &report.records {
        assert_eq!(
            expected.get(&(partition, offset)),
            Some(&number),
            "the member read record {number} at {partition}/{offset}"
        );
        let previous = last.insert(partition, offset).unwrap_or(-1);
        if offset <= previous {
            again += 1;
        } else {
            assert_eq!(
                offset,
                previous + 1,
                "partition {partition}: the member skipped from {previous} to {offset}"
            );
        }
    }
    eprintln!(
        "the member read {} records ({again} again after a rebalance), assignments {:?}",
        report.records.len(),
        report.assigned
    );
}

/// `sluice groups describe GROUP --json` shows the group empty, with
/// `ends` committed and no lag on every partition.
fn assert_described_commits(bootstrap: &str, group: &str, topic: &str, ends: &[i64]) {
    let described: serde_json::Value = serde_json::from_slice(&sluice_stdout(
        bootstrap,
        &["groups", "describe", group, "--json"],
    ))
    .expect("`sluice groups describe --json` prints JSON");
    assert_eq!(described["state"], "Empty", "{described}");
    let rows = described["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions: {described}"));
    let mut committed = vec![-1i64; ends.len()];
    for row in rows.iter().filter(|row| row["topic"] == topic) {
        let partition = row["partition"].as_u64().expect("a partition") as usize;
        committed[partition] = row["committed_offset"].as_i64().unwrap_or(-1);
        assert_eq!(row["log_end_offset"], ends[partition], "{described}");
        assert_eq!(row["lag"], 0, "{described}");
    }
    assert_eq!(committed, ends, "{described}");
}

#[test]
fn confluent_group_consumes_and_commits_through_a_coordinator_kill() {
    group_through_a_coordinator_kill("confluent");
}

#[test]
fn kafka_python_group_consumes_and_commits_through_a_coordinator_kill() {
    group_through_a_coordinator_kill("kafka-python");
}

// ---------------------------------------------------------------------------
// kcat and sarama after a kill
// ---------------------------------------------------------------------------

/// `kcat -L -t TOPIC` through one node.
fn kcat_metadata(bootstrap: &str, topic: &str) -> String {
    let args = ["-L", "-m", "15", "-b", bootstrap, "-t", topic];
    String::from_utf8(run_tool_bytes(kcat(), args, KCAT_TIMEOUT)).expect("kcat prints UTF-8")
}

/// The line `kcat -L` prints for a partition as Metadata describes it.
fn kcat_partition_line(view: &PartitionView) -> String {
    let join = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    format!(
        "partition {}, leader {}, replicas: {}, isrs: {}",
        view.partition,
        view.leader,
        join(&view.replicas),
        join(&view.isr)
    )
}

/// The values of one partition read with kcat from its start to its end,
/// by offset.
fn kcat_read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<(i64, String)> {
    let partition = partition.to_string();
    let args = [
        "-C",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-p",
        &partition,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        "%o %s\n",
    ];
    let stdout = String::from_utf8(run_tool_bytes(kcat(), args, KCAT_TIMEOUT))
        .expect("the records are ASCII");
    complete_lines(&stdout)
        .into_iter()
        .map(|line| {
            let (offset, value) = line.split_once(' ').unwrap_or_else(|| bad(line));
            (
                offset.parse().unwrap_or_else(|_| bad(line)),
                value.to_string(),
            )
        })
        .collect()
}

/// Produces the lines of `file` to one partition with kcat, acks=all.
fn kcat_produce_lines(bootstrap: &str, topic: &str, partition: i32, file: &Path) {
    let partition = partition.to_string();
    let args = [
        "-P",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-p",
        &partition,
        "-X",
        "acks=all",
        "-X",
        "message.timeout.ms=30000",
        "-l",
    ];
    Tool::new(kcat())
        .args(args)
        .arg(file)
        .timeout(KCAT_TIMEOUT)
        .run();
}

/// A running `sarama_failover` (tests/interop/go/sarama_failover): one
/// sarama client that sends `count` records to a partition, waits for
/// the continue file, sends `count` more and reads the partition back.
struct SaramaFailover {
    member: Member,
    go_on: std::path::PathBuf,
}

impl SaramaFailover {
    fn spawn(bootstrap: &str, topic: &str, partition: i32, count: usize, dir: &Path) -> Self {
        let go_on = dir.join("continue");
        let args = [
            "--bootstrap".to_string(),
            bootstrap.into(),
            "--topic".into(),
            topic.into(),
            "--partition".into(),
            partition.to_string(),
            "--count".into(),
            count.to_string(),
            "--continue-file".into(),
            go_on.display().to_string(),
        ];
        SaramaFailover {
            member: Member::spawn(sarama_failover_bin(), &args, dir, "sarama"),
            go_on,
        }
    }

    /// The events it printed, one JSON object per line.
    fn events(&self) -> Vec<serde_json::Value> {
        complete_lines(&self.member.stdout())
            .into_iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| bad(line)))
            .collect()
    }

    /// Waits until it sent its first records and waits for the file.
    fn wait_paused(&mut self, cluster: &Cluster) {
        cluster.wait_until(PROGRESS_WITHIN, "sarama's first records sent", |_| {
            self.member.fail_if_exited();
            let events = self.events();
            match events.iter().any(|e| e["ev"] == "waiting") {
                true => Ok(()),
                false => Err(format!("{} events", events.len())),
            }
        });
    }

    /// Lets it go on and waits for its exit; its events.
    fn finish(mut self) -> Vec<serde_json::Value> {
        std::fs::write(&self.go_on, b"").expect("create the continue file");
        let status = self.member.wait(PROGRESS_WITHIN + STALL_WITHIN);
        assert!(
            status.success(),
            "sarama exited with {status}:\n{}",
            self.member.stderr()
        );
        self.events()
    }
}

/// After the leader of a partition is killed, kcat (a fresh client each
/// run) lists the new leader and the shrunken ISR, and writes to and reads
/// from the partition through it; a sarama client that sent records to the
/// old leader before the kill finds the new one when it sends again, and
/// reads everything back. Every record sits at the offset it was
/// acknowledged at, in the order sent.
#[test]
fn kcat_and_sarama_find_the_new_leader_after_a_kill() {
    const SARAMA_RECORDS: usize = 200;
    const KCAT_RECORDS: usize = 200;
    let mut cluster = Cluster::start(short_sessions);
    let topic = "failover-kcat-sarama";
    let before = cluster.create_topic(topic, PARTITIONS);
    let old = before
        .iter()
        .find(|view| view.leader != cluster.controller)
        .expect("a partition not led by the controller")
        .clone();
    let (partition, victim) = (old.partition, old.leader);
    let via = cluster.bootstrap(cluster.other_than(&[victim]));
    let listing = kcat_metadata(&via, topic);
    assert!(
        listing.contains(" 3 brokers:") && listing.contains(&kcat_partition_line(&old)),
        "kcat -L before the kill, expected `{}`:\n{listing}",
        kcat_partition_line(&old)
    );
    let work = tempfile::tempdir().expect("a work directory");
    let mut sarama = SaramaFailover::spawn(&via, topic, partition, SARAMA_RECORDS, work.path());
    sarama.wait_paused(&cluster);

    cluster.kill(victim);
    let after = cluster.wait_for_failover(topic, victim, &before, FAILOVER_WITHIN);
    let new = &after[partition as usize];
    let listing = kcat_metadata(&via, topic);
    assert!(
        listing.contains(" 2 brokers:") && listing.contains(&kcat_partition_line(new)),
        "kcat -L after the kill, expected 2 brokers and `{}`:\n{listing}",
        kcat_partition_line(new)
    );
    let lines: Vec<String> = (0..KCAT_RECORDS).map(|i| format!("kcat-{i:05}")).collect();
    let file = write_file(work.path(), "kcat.txt", &lines_file(&lines));
    kcat_produce_lines(&via, topic, partition, &file);
    let events = sarama.finish();

    let sent: Vec<String> = sarama_sent("before", SARAMA_RECORDS)
        .into_iter()
        .chain(lines)
        .chain(sarama_sent("after", SARAMA_RECORDS))
        .collect();
    let expected: Vec<(i64, String)> = sent
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as i64, v))
        .collect();
    check_sarama_views(&events, new, victim);
    check_sarama_records(&events, &expected, SARAMA_RECORDS);
    let read = kcat_read_partition(&via, topic, partition);
    assert_eq!(read, expected, "partition {partition} as kcat reads it");
}

/// The values `sarama_failover` sends in one phase.
fn sarama_sent(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// The (offset, value) of sarama's events of one kind.
fn sarama_positions(events: &[serde_json::Value], kind: &str) -> Vec<(i64, String)> {
    events
        .iter()
        .filter(|e| e["ev"] == kind)
        .map(|e| {
            let offset = e["offset"].as_i64().unwrap_or(-1);
            (offset, e["value"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// sarama's metadata: the old leader before the kill; after it, the new
/// leader is the one it sent to and the one its refreshed metadata names,
/// with the ISR Metadata has (`victim` out of it).
fn check_sarama_views(events: &[serde_json::Value], new: &PartitionView, victim: i32) {
    let metadata: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["ev"] == "metadata").collect();
    assert_eq!(metadata.len(), 2, "{metadata:?}");
    assert_eq!(
        metadata[0]["leader"], victim,
        "sarama's first view: {}",
        metadata[0]
    );
    assert_eq!(
        metadata[1]["leader"], new.leader,
        "sarama's view after: {}",
        metadata[1]
    );
    let isr: BTreeSet<i64> = metadata[1]["isr"]
        .as_array()
        .map(|ids| ids.iter().filter_map(serde_json::Value::as_i64).collect())
        .unwrap_or_default();
    assert_eq!(
        isr,
        new.isr.iter().map(|&id| i64::from(id)).collect(),
        "sarama's ISR after the kill: {}",
        metadata[1]
    );
    let used: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["ev"] == "leader_used").collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(
        used[0]["leader"], new.leader,
        "the leader sarama sent to after the kill"
    );
}

/// sarama's records: its `count` first ones acknowledged at the start of
/// `expected` (the whole partition in order), its `count` last ones at its
/// end, and its read-back all of `expected`.
fn check_sarama_records(events: &[serde_json::Value], expected: &[(i64, String)], count: usize) {
    let own: Vec<(i64, String)> = expected[..count]
        .iter()
        .chain(&expected[expected.len() - count..])
        .cloned()
        .collect();
    assert_eq!(
        sarama_positions(events, "ack"),
        own,
        "sarama's acknowledgements"
    );
    assert_eq!(
        sarama_positions(events, "rec"),
        expected,
        "what sarama read back"
    );
}

// ---------------------------------------------------------------------------
// sluice topics describe
// ---------------------------------------------------------------------------

/// `sluice topics describe TOPIC [--json]` through one node: its stdout,
/// or why it failed.
fn try_describe(bootstrap: &str, topic: &str, json: bool) -> Result<Vec<u8>, String> {
    let mut args = vec!["topics", "describe", topic, "--bootstrap-server", bootstrap];
    if json {
        args.push("--json");
    }
    Tool::new(sluice_bin())
        .args(args)
        .timeout(SLUICE_TIMEOUT)
        .try_run()
        .map(|output| output.stdout)
}

/// `sluice topics describe TOPIC --json` through one node.
fn describe_topic(bootstrap: &str, topic: &str) -> Result<serde_json::Value, String> {
    let stdout = try_describe(bootstrap, topic, true)?;
    serde_json::from_slice(&stdout).map_err(|e| format!("describe --json printed no JSON: {e}"))
}

/// The partitions of a `describe --json` answer as views, with their log
/// end offsets.
fn described_views(described: &serde_json::Value) -> Vec<(PartitionView, i64)> {
    let ids = |value: &serde_json::Value| -> Vec<i32> {
        value
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_i64())
                    .map(|id| id as i32)
                    .collect()
            })
            .unwrap_or_default()
    };
    described["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions: {described}"))
        .iter()
        .map(|p| {
            let view = PartitionView {
                partition: p["partition"].as_i64().unwrap_or(-1) as i32,
                leader: p["leader"].as_i64().unwrap_or(-1) as i32,
                leader_epoch: p["leader_epoch"].as_i64().unwrap_or(-1) as i32,
                replicas: ids(&p["replicas"]),
                isr: ids(&p["isr"]),
                offline: ids(&p["offline_replicas"]),
            };
            (view, p["log_end_offset"].as_i64().unwrap_or(-1))
        })
        .collect()
}

/// The rows of `sluice topics describe`'s partition table (the text form),
/// split into columns.
fn described_rows(bootstrap: &str, topic: &str) -> Result<Vec<Vec<String>>, String> {
    let text = String::from_utf8(try_describe(bootstrap, topic, false)?)
        .map_err(|e| format!("describe printed no UTF-8: {e}"))?;
    let table = text
        .split_once("PARTITION ")
        .map(|(_, table)| table)
        .ok_or_else(|| format!("no partition table:\n{text}"))?;
    let header: Vec<&str> = std::iter::once("PARTITION")
        .chain(table.lines().next().unwrap_or("").split_whitespace())
        .collect();
    let columns = [
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "OFFLINE",
        "LOG-START-OFFSET",
        "LOG-END-OFFSET",
    ];
    if header != columns {
        return Err(format!("the table's columns are {header:?}:\n{text}"));
    }
    // The table ends at the first blank line (the under-replicated
    // partitions are listed after it).
    Ok(table
        .lines()
        .skip(1)
        .take_while(|row| !row.trim().is_empty())
        .map(|row| row.split_whitespace().map(str::to_string).collect())
        .collect())
}

/// The table rows `describe` should print for `views` and the log ends.
fn expected_rows(views: &[PartitionView], ends: &[i64]) -> Vec<Vec<String>> {
    let join = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    views
        .iter()
        .zip(ends)
        .map(|(view, end)| {
            let offline = if view.offline.is_empty() {
                "-".to_string()
            } else {
                join(&view.offline)
            };
            vec![
                view.partition.to_string(),
                view.leader.to_string(),
                join(&view.replicas),
                join(&view.isr),
                offline,
                "0".to_string(),
                end.to_string(),
            ]
        })
        .collect()
}

/// Whether `describe`, in both forms, shows `views` and the log ends.
fn described_as(
    bootstrap: &str,
    topic: &str,
    views: &[PartitionView],
    ends: &[i64],
) -> Result<(), String> {
    let described = describe_topic(bootstrap, topic)?;
    let expected: Vec<(PartitionView, i64)> =
        views.iter().cloned().zip(ends.iter().copied()).collect();
    let shown = described_views(&described);
    if described["replication_factor"] != 3 || shown != expected {
        return Err(format!("describe --json shows {shown:?}: {described}"));
    }
    let rows = described_rows(bootstrap, topic)?;
    if rows != expected_rows(views, ends) {
        return Err(format!("describe prints the rows {rows:?}"));
    }
    Ok(())
}

/// Waits (briefly: a new leader's high watermark catches up within a
/// fetch of its followers) until `describe` through `via` shows `views`
/// and the log ends.
fn wait_described(cluster: &Cluster, via: i32, topic: &str, views: &[PartitionView], ends: &[i64]) {
    cluster.wait_until(
        SPREAD_WITHIN,
        &format!("`sluice topics describe` through node {via} showing {views:?} and ends {ends:?}"),
        |cluster| described_as(&cluster.bootstrap(via), topic, views, ends),
    );
}

/// `sluice topics describe` shows each partition's leader, replicas and
/// ISR as Metadata has them, before and after the controller (a leader of
/// a partition too) is killed: the killed broker leaves every ISR, its
/// partitions get new leaders in later epochs, the others keep theirs, the
/// replicas stay, and the records written before are all there. After a
/// restart it is back in every ISR.
#[test]
fn sluice_topics_describe_shows_a_killed_broker_leave_and_rejoin_the_isr() {
    let mut cluster = Cluster::start(short_sessions);
    let topic = "failover-describe";
    let before = cluster.create_topic(topic, PARTITIONS);
    let ends: Vec<i64> = (0..PARTITIONS).map(|p| 10 * i64::from(p + 1)).collect();
    for (partition, &count) in ends.iter().enumerate() {
        let lines: String = (0..count).map(|i| format!("{partition}-{i}\n")).collect();
        let run = run_sluice(
            &[
                "produce",
                "-t",
                topic,
                "-p",
                &partition.to_string(),
                "-q",
                "-b",
                &cluster.bootstrap_all(),
            ],
            Some(lines.as_bytes()),
            SLUICE_TIMEOUT,
        );
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let victim = cluster.controller;
    let described =
        describe_topic(&cluster.bootstrap(victim), topic).unwrap_or_else(|e| panic!("{e}"));
    let configs = described["configs"].as_array().cloned().unwrap_or_default();
    assert!(
        configs
            .iter()
            .any(|c| c["name"] == "min.insync.replicas" && c["value"] == "2"),
        "{described}"
    );
    wait_described(&cluster, victim, topic, &before, &ends);

    cluster.kill(victim);
    let after = cluster.wait_for_failover(topic, victim, &before, FAILOVER_WITHIN);
    let survivor = cluster.other_than(&[victim]);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.replicas, old.replicas, "replicas stay: {new:?}");
        if old.leader == victim {
            assert!(
                old.isr.contains(&new.leader) && new.leader_epoch > old.leader_epoch,
                "a new leader from the ISR in a later epoch: {old:?} then {new:?}"
            );
        } else {
            assert_eq!(
                (new.leader, new.leader_epoch),
                (old.leader, old.leader_epoch),
                "a partition the killed broker did not lead keeps its leader: {new:?}"
            );
        }
    }
    wait_described(&cluster, survivor, topic, &after, &ends);

    cluster.restart(victim);
    let rejoined = cluster.wait_for_full_isr(topic, PARTITIONS, REJOIN_WITHIN);
    wait_described(&cluster, victim, topic, &rejoined, &ends);
}

/// The metrics listeners follow a follower's death and return: one active
/// controller named alike by every node, in one quorum epoch; every
/// partition under-replicated on the survivors with the ISR shrinks
/// counted; none once the broker is back, with the expansions counted.
#[test]
fn metrics_follow_a_killed_broker_out_of_and_back_into_the_isr() {
    let mut cluster = Cluster::start(short_sessions);
    let topic = "failover-metrics";
    let before = cluster.create_topic(topic, PARTITIONS);
    let controller = cluster.controller;
    cluster.wait_until(
        SPREAD_WITHIN,
        "every node naming the same active controller and quorum epoch",
        |cluster| {
            let mut named = BTreeSet::new();
            for id in cluster.ids() {
                let text = cluster.metrics(id)?;
                let active_id = metric_sample(&text, "sluice_controller_active_id");
                let epoch = metric_sample(&text, "sluice_quorum_leader_epoch");
                named.insert(format!("{active_id:?} in epoch {epoch:?}"));
            }
            let active = cluster.metric_sum("sluice_controller_active")?;
            let expected = format!("{:?}", Some(f64::from(controller)));
            match (active, named.len()) {
                (1.0, 1) if named.iter().all(|n| n.starts_with(&expected)) => Ok(()),
                _ => Err(format!("{active} active; nodes name {named:?}")),
            }
        },
    );
    assert_eq!(
        cluster.metric_sum("sluice_under_replicated_partitions"),
        Ok(0.0)
    );
    let shrinks_before = cluster.metric_sum("sluice_isr_shrinks_total").unwrap();

    let victim = cluster.other_than(&[controller]);
    cluster.kill(victim);
    cluster.wait_for_failover(topic, victim, &before, FAILOVER_WITHIN);
    cluster.wait_until(
        FAILOVER_WITHIN,
        "every partition under-replicated on the survivors, the shrinks counted",
        |cluster| {
            let under = cluster.metric_sum("sluice_under_replicated_partitions")?;
            let shrinks = cluster.metric_sum("sluice_isr_shrinks_total")?;
            // The topic's partitions and __consumer_offsets are not
            // created here: only this topic's count is known.
            if under >= f64::from(PARTITIONS) && shrinks >= shrinks_before + 1.0 {
                Ok(())
            } else {
                Err(format!("{under} under-replicated, {shrinks} shrinks"))
            }
        },
    );

    cluster.restart(victim);
    cluster.wait_for_full_isr(topic, PARTITIONS, REJOIN_WITHIN);
    cluster.wait_until(
        REJOIN_WITHIN,
        "no partition under-replicated, the expansions counted",
        |cluster| {
            let under = cluster.metric_sum("sluice_under_replicated_partitions")?;
            let expands = cluster.metric_sum("sluice_isr_expands_total")?;
            if under == 0.0 && expands >= 1.0 {
                Ok(())
            } else {
                Err(format!("{under} under-replicated, {expands} expands"))
            }
        },
    );
}

/// Kafka lists a fenced broker's replicas as offline in Metadata, and
/// `describe` shows them in its OFFLINE column.
#[test]
fn metadata_lists_a_killed_brokers_replicas_as_offline() {
    let mut cluster = Cluster::start(short_sessions);
    let topic = "failover-offline";
    let before = cluster.create_topic(topic, PARTITIONS);
    let victim = cluster.other_than(&[cluster.controller]);
    cluster.kill(victim);
    let after = cluster.wait_for_failover(topic, victim, &before, FAILOVER_WITHIN);
    for view in &after {
        assert_eq!(view.offline, [victim], "partition {view:?}");
    }
}

// ---------------------------------------------------------------------------
// acks=all when a follower dies
// ---------------------------------------------------------------------------

/// Kafka's REQUEST_TIMED_OUT.
const REQUEST_TIMED_OUT: i16 = 7;

/// Sends one record to `partition` with acks=all and `timeout_ms`, and
/// waits for the answer: (error code, base offset, time to the answer).
fn produce_acks_all(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    timeout_ms: i32,
    value: &[u8],
) -> (i16, i64, Duration) {
    use kafka_protocol::messages::{produce_request, ProduceRequest, ProduceResponse};
    let mut wire = Wire::connect(bootstrap).expect("connect to the leader");
    wire.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("a read timeout");
    let data = produce_request::PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(sluice_tests::wire::batch_of(&[value], 0)));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![data])]);
    let sent = Instant::now();
    let response: ProduceResponse = wire
        .call(ApiKey::Produce, 9, &request)
        .expect("a Produce answer");
    let answer = &response.responses[0].partition_responses[0];
    (answer.error_code, answer.base_offset, sent.elapsed())
}

/// A follower killed with SIGKILL leaves the ISR once fenced, and an
/// acks=all produce waiting for it must then be answered: Kafka does not
/// count a fenced broker toward the high watermark. One whose timeout
/// passes first is answered REQUEST_TIMED_OUT then. Both produces are sent
/// to a leader that stays up, as soon as the follower is dead.
#[test]
fn acks_all_is_answered_once_a_killed_follower_is_fenced() {
    let mut cluster = Cluster::start(short_sessions);
    let topic = "acks-all-follower";
    let before = cluster.create_topic(topic, PARTITIONS);
    let led = before
        .iter()
        .find(|view| view.leader != cluster.controller)
        .expect("a partition not led by the controller");
    let (partition, leader) = (led.partition, led.leader);
    let follower = cluster.other_than(&[leader, cluster.controller]);
    let at_leader = cluster.bootstrap(leader);
    let warm = produce_acks_all(&at_leader, topic, partition, 10_000, b"before");
    assert_eq!(warm.0, 0, "acks=all with every replica up: {warm:?}");

    cluster.kill(follower);
    let killed_at = Instant::now();
    let (short, long) = thread::scope(|scope| {
        let short = scope.spawn(|| produce_acks_all(&at_leader, topic, partition, 1_500, b"short"));
        let long = scope.spawn(|| produce_acks_all(&at_leader, topic, partition, 25_000, b"long"));
        let views = cluster.wait_for_failover(topic, follower, &before, FAILOVER_WITHIN);
        eprintln!(
            "node {follower} out of every ISR {:.1?} after the kill: {views:?}",
            killed_at.elapsed()
        );
        (
            short.join().expect("the short produce"),
            long.join().expect("the long produce"),
        )
    });
    eprintln!(
        "acks=all to {topic}/{partition} at node {leader} as node {follower} died: \
         with a 1.5 s timeout {short:?}, with a 25 s timeout {long:?}"
    );
    let long_bound = Duration::from_millis(SESSION_TIMEOUT_MS as u64) + Duration::from_secs(5);
    let mut wrong = Vec::new();
    if short.0 != REQUEST_TIMED_OUT || short.2 > Duration::from_secs(4) {
        wrong.push(format!(
            "timeout_ms 1500: answered error {} after {:.1?}, not REQUEST_TIMED_OUT ({}) \
             once 1.5 s passed",
            short.0, short.2, REQUEST_TIMED_OUT
        ));
    }
    if long.0 != 0 || long.2 > long_bound {
        wrong.push(format!(
            "timeout_ms 25000: answered error {} after {:.1?}, not success within the \
             session timeout and 5 s ({long_bound:?})",
            long.0, long.2
        ));
    }
    assert!(
        wrong.is_empty(),
        "acks=all produces sent as follower {follower} died:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------
// ListOffsets on a new leader
// ---------------------------------------------------------------------------

/// Kafka's OFFSET_NOT_AVAILABLE (KIP-207).
const OFFSET_NOT_AVAILABLE: i16 = 78;

/// ListOffsets v7 for the latest offset of one partition, as a consumer
/// asks (read uncommitted, no leader epoch): (error code, offset).
fn list_latest(wire: &mut Wire, topic: &str, partition: i32) -> std::io::Result<(i16, i64)> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, ListOffsetsResponse};
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(0)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_current_leader_epoch(-1)
                .with_timestamp(-1)])]);
    let response: ListOffsetsResponse = wire.call(ApiKey::ListOffsets, 7, &request)?;
    let answer = &response.topics[0].partitions[0];
    Ok((answer.error_code, answer.offset))
}

/// A new leader starts with the high watermark it knew as a follower,
/// which may lag what the old leader acknowledged until the other
/// followers fetch from it. Kafka (KIP-207) answers a consumer's
/// ListOffsets for the latest offset with OFFSET_NOT_AVAILABLE while its
/// high watermark is below the start of its epoch, so a consumer never
/// sees the end of the log move back. Here the records are acknowledged
/// (acks=all) just before their leader is killed, and both survivors are
/// asked without pause until one answers with the end.
#[test]
fn list_offsets_on_a_new_leader_never_answers_below_what_was_acknowledged() {
    const RECORDS: usize = 20;
    let mut cluster = Cluster::start(short_sessions);
    let topic = "failover-list-offsets";
    let before = cluster.create_topic(topic, PARTITIONS);
    let led = before
        .iter()
        .find(|view| view.leader != cluster.controller)
        .expect("a partition not led by the controller");
    let (partition, victim) = (led.partition, led.leader);
    let values: Vec<Vec<u8>> = (0..RECORDS).map(|i| format!("r{i}").into_bytes()).collect();
    let batch: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let mut wire = Wire::connect(&cluster.bootstrap(victim)).expect("connect to the leader");
    let (error, base) = wire
        .produce(
            topic,
            partition,
            -1,
            sluice_tests::wire::batch_of(&batch, 0),
        )
        .expect("a Produce answer");
    assert_eq!(
        (error, base),
        (0, 0),
        "acks=all produce of {RECORDS} records"
    );
    let acknowledged = RECORDS as i64;

    cluster.kill(victim);
    let killed_at = Instant::now();
    let (answers, below) = poll_latest_until(&cluster, topic, partition, acknowledged, killed_at);
    eprintln!(
        "ListOffsets latest of {topic}/{partition} after node {victim} was killed: {answers:?}"
    );
    assert!(
        below.is_empty(),
        "{RECORDS} records were acknowledged at {topic}/{partition} before its leader was \
         killed, yet ListOffsets latest answered a lower offset {} times, from {:?} to {:?} \
         (since the kill, node, offset); Kafka answers OFFSET_NOT_AVAILABLE \
         ({OFFSET_NOT_AVAILABLE}) while a new leader's high watermark is below its epoch's \
         start. Each node's answers as they changed: {answers:?}",
        below.len(),
        below.first(),
        below.last()
    );
}

/// One node's answer to ListOffsets latest: (time since the kill, node,
/// error code, offset).
type LatestAnswer = (Duration, i32, i16, i64);

/// What the survivors answered to ListOffsets latest, asked of each in
/// turn without pause until one answers at least `end`: each node's
/// answers as they changed (time since `since`, node, error, offset), and
/// every answer with no error below `end` (time, node, offset).
fn poll_latest_until(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    end: i64,
    since: Instant,
) -> (Vec<LatestAnswer>, Vec<(Duration, i32, i64)>) {
    let mut wires: BTreeMap<i32, Wire> = BTreeMap::new();
    let mut answers = Vec::new();
    let mut last_by_node: BTreeMap<i32, (i16, i64)> = BTreeMap::new();
    let mut below = Vec::new();
    loop {
        assert!(
            since.elapsed() < FAILOVER_WITHIN,
            "no survivor answered ListOffsets with the end {end} within {FAILOVER_WITHIN:?}; \
             answers (since the kill, node, error, offset): {answers:?}\n{}",
            cluster.state()
        );
        for id in cluster.running() {
            let wire = match wires.entry(id) {
                std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    match Wire::connect(&cluster.bootstrap(id)) {
                        Ok(fresh) => slot.insert(fresh),
                        Err(_) => continue,
                    }
                }
            };
            let Ok((error, offset)) = list_latest(wire, topic, partition) else {
                wires.remove(&id);
                continue;
            };
            if last_by_node.insert(id, (error, offset)) != Some((error, offset)) {
                answers.push((since.elapsed(), id, error, offset));
            }
            if error == 0 && offset < end {
                below.push((since.elapsed(), id, offset));
            }
            if error == 0 && offset >= end {
                return (answers, below);
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}
