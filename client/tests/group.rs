//! Consumer groups against a real `sluice` process: members of one group
//! share a topic's partitions without overlap, take over the partitions of
//! a member that leaves (or vanishes), consume every record at least once
//! and leave their committed offsets at the log end; a new member resumes
//! from the committed offsets; commits with manual assignment; older
//! protocol versions; errors the coordinator sends surface to the caller.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use sluice_client::*;
use support::Broker;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Upper bound on waiting for a group to settle or records to arrive.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// Produces `count` keyed records and returns where each landed.
async fn produce(
    client: &Client<TokioConnector>,
    topic: &str,
    first: usize,
    count: usize,
) -> BTreeSet<(i32, i64)> {
    let producer =
        Producer::new(client.clone(), ProducerConfig::default(), system_clock()).unwrap();
    let mut futures = Vec::new();
    for i in first..first + count {
        let record = ProducerRecord::new(topic, format!("value-{i}")).with_key(format!("key-{i}"));
        futures.push(producer.send(record).await.expect("queued"));
    }
    producer.flush().await.unwrap();
    let mut landed = BTreeSet::new();
    for future in futures {
        let delivered = future.await.expect("delivered");
        landed.insert((delivered.topic_partition.partition, delivered.offset));
    }
    landed
}

/// Client logs for a failing test: `RUST_LOG=sluice_client=debug`.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    logs();
    Admin::new(broker.client())
        .create_topic(&NewTopic::new(topic, partitions, 1))
        .await
        .unwrap();
}

fn group_config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_id: Some(group.to_string()),
        auto_offset_reset: OffsetReset::Earliest,
        session_timeout_ms: 6_000,
        heartbeat_interval_ms: 300,
        auto_commit_interval_ms: 200,
        fetch_max_wait_ms: 100,
        poll_records_max: 50,
        ..ConsumerConfig::default()
    }
}

fn consumer(broker: &Broker, config: ConsumerConfig) -> Consumer<TokioConnector> {
    Consumer::new(broker.client(), config).unwrap()
}

/// What the members report after every poll.
#[derive(Default)]
struct Observed {
    /// Per member: generation and assignment.
    views: BTreeMap<String, (Option<i32>, Vec<TopicPartition>)>,
    /// Per member: `(partition, offset)` of every record returned.
    seen: BTreeMap<String, Vec<(i32, i64)>>,
    errors: Vec<String>,
    /// Per member, the listener's calls in order.
    rebalances: BTreeMap<String, Vec<String>>,
}

type Shared = Arc<Mutex<Observed>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Run,
    /// Close cleanly: commit, LeaveGroup.
    Close,
    /// Drop the consumer without a word, as a crashed process would.
    Vanish,
}

struct Recorder {
    name: String,
    shared: Shared,
}

impl RebalanceListener for Recorder {
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        let mut shared = self.shared.lock().unwrap();
        let calls = shared.rebalances.entry(self.name.clone()).or_default();
        calls.push(format!("revoked {}", partitions.len()));
    }

    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        let mut shared = self.shared.lock().unwrap();
        let calls = shared.rebalances.entry(self.name.clone()).or_default();
        calls.push(format!("assigned {}", partitions.len()));
    }
}

struct Member {
    order: watch::Sender<Order>,
    task: JoinHandle<Result<()>>,
}

impl Member {
    fn start(name: &str, mut consumer: Consumer<TokioConnector>, shared: &Shared) -> Member {
        let (order, orders) = watch::channel(Order::Run);
        let (name, shared) = (name.to_string(), shared.clone());
        consumer
            .set_rebalance_listener(Recorder {
                name: name.clone(),
                shared: shared.clone(),
            })
            .unwrap();
        let task = tokio::spawn(async move {
            loop {
                let order = *orders.borrow();
                match order {
                    Order::Run => {}
                    Order::Close => return consumer.close().await,
                    Order::Vanish => return Ok(()),
                }
                let polled = consumer.poll(POLL).await;
                let failed = polled.is_err();
                {
                    let mut observed = shared.lock().unwrap();
                    match polled {
                        Ok(records) => observed
                            .seen
                            .entry(name.clone())
                            .or_default()
                            .extend(records.iter().map(|r| (r.partition, r.offset))),
                        Err(error) => observed.errors.push(format!("{name}: {error}")),
                    }
                    let view = (consumer.generation(), consumer.assignment());
                    observed.views.insert(name.clone(), view);
                }
                if failed {
                    // As an application would, pause before polling again:
                    // a fenced consumer fails every poll at once.
                    tokio::time::sleep(POLL).await;
                }
            }
        });
        Member { order, task }
    }

    async fn stop(self, how: Order) -> Result<()> {
        self.order.send(how).unwrap();
        self.task.await.unwrap()
    }
}

/// Waits until `condition` holds, failing the test with `what` otherwise,
/// or as soon as a poll failed.
async fn wait_for(shared: &Shared, what: &str, condition: impl Fn(&Observed) -> bool) {
    wait_until(shared, what, |o| {
        assert!(o.errors.is_empty(), "poll failed: {:?}", o.errors);
        condition(o)
    })
    .await
}

/// As `wait_for`, for a test that expects some polls to fail.
async fn wait_until(shared: &Shared, what: &str, condition: impl Fn(&Observed) -> bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        {
            let observed = shared.lock().unwrap();
            if condition(&observed) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; views {:?}",
                observed.views
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The members in `names` agree on one generation and split `partitions`
/// partitions of the topic between them without overlap.
fn settled(observed: &Observed, names: &[&str], partitions: i32) -> Option<i32> {
    let views: Vec<&(Option<i32>, Vec<TopicPartition>)> = names
        .iter()
        .map(|n| observed.views.get(*n))
        .collect::<Option<_>>()?;
    let generation = views[0].0?;
    if views.iter().any(|v| v.0 != Some(generation)) {
        return None;
    }
    let mut owned = BTreeSet::new();
    for (_, assignment) in &views {
        for tp in assignment {
            if !owned.insert(tp.partition) {
                return None;
            }
        }
    }
    (owned == (0..partitions).collect()).then_some(generation)
}

fn all_seen(observed: &Observed) -> BTreeSet<(i32, i64)> {
    observed.seen.values().flatten().copied().collect()
}

async fn log_end_offsets(
    broker: &Broker,
    topic: &str,
    partitions: i32,
) -> BTreeMap<TopicPartition, Option<i64>> {
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let lookup = consumer(broker, ConsumerConfig::default());
    lookup
        .list_offsets(&tps, OffsetSpec::Latest)
        .await
        .unwrap()
        .into_iter()
        .map(|(tp, listed)| (tp, Some(listed.offset)))
        .collect()
}

async fn committed_offsets(
    broker: &Broker,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<TopicPartition, Option<i64>> {
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer(broker, group_config(group))
        .committed(&tps)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_share_a_topic_and_take_over_from_one_that_leaves() {
    let broker = Broker::start();
    let (topic, group) = ("shared", "three");
    create_topic(&broker, topic, 6).await;
    let client = broker.client();
    let mut produced = produce(&client, topic, 0, 300).await;

    let shared = Shared::default();
    let names = ["a", "b", "c"];
    let mut members: BTreeMap<&str, Member> = BTreeMap::new();
    for name in names {
        let mut member = consumer(&broker, group_config(group));
        member.subscribe([topic]).unwrap();
        members.insert(name, Member::start(name, member, &shared));
    }
    wait_for(&shared, "three members to split six partitions", |o| {
        settled(o, &names, 6).is_some()
    })
    .await;
    let first = settled(&shared.lock().unwrap(), &names, 6).unwrap();
    for name in names {
        let observed = shared.lock().unwrap();
        assert_eq!(
            observed.views[name].1.len(),
            2,
            "range gives each member two"
        );
    }

    produced.extend(produce(&client, topic, 300, 300).await);
    members
        .remove("c")
        .unwrap()
        .stop(Order::Close)
        .await
        .unwrap();
    wait_for(&shared, "two members to take over c's partitions", |o| {
        settled(o, &["a", "b"], 6).is_some_and(|g| g > first)
    })
    .await;

    produced.extend(produce(&client, topic, 600, 300).await);
    wait_for(&shared, "every record to be consumed", |o| {
        all_seen(o).is_superset(&produced)
    })
    .await;
    {
        let observed = shared.lock().unwrap();
        let seen = all_seen(&observed);
        assert_eq!(seen, produced, "nothing consumed that was not produced");
        // Members give up what they hold before they get a new share, and
        // c gave its two partitions up when it left.
        for (name, calls) in &observed.rebalances {
            let alternating = calls
                .iter()
                .enumerate()
                .all(|(i, call)| call.starts_with(if i % 2 == 0 { "assigned" } else { "revoked" }));
            assert!(alternating, "{name}: {calls:?}");
        }
        let c_calls = &observed.rebalances["c"];
        assert_eq!(
            c_calls.last().map(String::as_str),
            Some("revoked 2"),
            "{c_calls:?}"
        );
        for name in ["a", "b"] {
            let calls = &observed.rebalances[name];
            assert_eq!(
                calls.last().map(String::as_str),
                Some("assigned 3"),
                "{name}: {calls:?}"
            );
        }
    }
    for name in ["a", "b"] {
        members
            .remove(name)
            .unwrap()
            .stop(Order::Close)
            .await
            .unwrap();
    }
    assert_eq!(
        committed_offsets(&broker, group, topic, 6).await,
        log_end_offsets(&broker, topic, 6).await,
        "committed offsets end at the log end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_vanishes_loses_its_partitions_after_the_session_timeout() {
    let broker = Broker::start();
    let (topic, group) = ("vanish", "vanish-group");
    create_topic(&broker, topic, 4).await;
    let client = broker.client();
    let mut produced = produce(&client, topic, 0, 200).await;
    let shared = Shared::default();
    let mut members: BTreeMap<&str, Member> = BTreeMap::new();
    for name in ["a", "b"] {
        let mut member = consumer(&broker, group_config(group));
        member.subscribe([topic]).unwrap();
        members.insert(name, Member::start(name, member, &shared));
    }
    wait_for(&shared, "two members to split four partitions", |o| {
        settled(o, &["a", "b"], 4).is_some()
    })
    .await;
    wait_for(&shared, "the first records", |o| {
        all_seen(o).is_superset(&produced)
    })
    .await;
    let first = settled(&shared.lock().unwrap(), &["a", "b"], 4).unwrap();

    let vanished_at = Instant::now();
    members
        .remove("b")
        .unwrap()
        .stop(Order::Vanish)
        .await
        .unwrap();
    produced.extend(produce(&client, topic, 200, 200).await);
    wait_for(&shared, "a to own all four partitions", |o| {
        o.views["a"].1.len() == 4 && o.views["a"].0.is_some_and(|g| g > first)
    })
    .await;
    let waited = vanished_at.elapsed();
    assert!(
        waited >= Duration::from_millis(5_000),
        "took over after {waited:?}, before the session timeout"
    );
    wait_for(&shared, "every record", |o| {
        all_seen(o).is_superset(&produced)
    })
    .await;
    members
        .remove("a")
        .unwrap()
        .stop(Order::Close)
        .await
        .unwrap();
    assert_eq!(
        committed_offsets(&broker, group, topic, 4).await,
        log_end_offsets(&broker, topic, 4).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_carry_on_after_the_coordinator_restarts() {
    let mut broker = Broker::start();
    let (topic, group) = ("restart", "restart-group");
    create_topic(&broker, topic, 4).await;
    let client = broker.client();
    let mut produced = produce(&client, topic, 0, 200).await;
    let shared = Shared::default();
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let mut member = consumer(&broker, group_config(group));
        member.subscribe([topic]).unwrap();
        members.push(Member::start(name, member, &shared));
    }
    wait_for(&shared, "two members to consume the first records", |o| {
        settled(o, &["a", "b"], 4).is_some() && all_seen(o).is_superset(&produced)
    })
    .await;
    broker.restart();
    // Errors on the way (connections lost, the coordinator loading) are
    // handled inside poll; none may reach the caller.
    produced.extend(produce(&client, topic, 200, 200).await);
    wait_for(&shared, "every record after the restart", |o| {
        settled(o, &["a", "b"], 4).is_some() && all_seen(o).is_superset(&produced)
    })
    .await;
    for member in members {
        member.stop(Order::Close).await.unwrap();
    }
    assert_eq!(
        committed_offsets(&broker, group, topic, 4).await,
        log_end_offsets(&broker, topic, 4).await
    );
}

fn static_config(group: &str, instance: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_instance_id: Some(instance.to_string()),
        session_timeout_ms: 10_000,
        ..group_config(group)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_member_keeps_its_place_when_it_closes_and_comes_back() {
    let broker = Broker::start();
    let (topic, group) = ("static", "static-group");
    create_topic(&broker, topic, 2).await;
    let produced = produce(&broker.client(), topic, 0, 100).await;
    let shared = Shared::default();
    let start = |name: &str, instance: &str| {
        let mut member = consumer(&broker, static_config(group, instance));
        member.subscribe([topic]).unwrap();
        Member::start(name, member, &shared)
    };
    let first = start("first", "one");
    let other = start("other", "two");
    wait_for(&shared, "two static members to split the topic", |o| {
        settled(o, &["first", "other"], 2).is_some() && all_seen(o).is_superset(&produced)
    })
    .await;
    let generation = settled(&shared.lock().unwrap(), &["first", "other"], 2).unwrap();
    // No LeaveGroup: the group keeps the member until its session ends.
    first.stop(Order::Close).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let observed = shared.lock().unwrap();
        assert_eq!(
            observed.views["other"].0,
            Some(generation),
            "a rebalance after a static close"
        );
        assert_eq!(observed.views["other"].1.len(), 1);
    }
    // The same instance id comes back and takes a share again.
    let again = start("again", "one");
    wait_for(&shared, "the returning instance to get a share", |o| {
        settled(o, &["again", "other"], 2).is_some()
    })
    .await;
    again.stop(Order::Close).await.unwrap();
    other.stop(Order::Close).await.unwrap();
}

/// A second running instance with the same group instance id replaces the
/// first; the first is fenced (FENCED_INSTANCE_ID, fatal) instead of
/// rejoining and fencing the second in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_instance_of_a_static_member_is_fenced() {
    let broker = Broker::start();
    let (topic, group) = ("fenced", "fenced-group");
    create_topic(&broker, topic, 2).await;
    let shared = Shared::default();
    let start = |name: &str| {
        let mut member = consumer(&broker, static_config(group, "same"));
        member.subscribe([topic]).unwrap();
        Member::start(name, member, &shared)
    };
    let older = start("older");
    wait_for(&shared, "the first instance to join", |o| {
        o.views.get("older").is_some_and(|v| v.1.len() == 2)
    })
    .await;
    let newer = start("newer");
    wait_until(&shared, "the older instance to be fenced", |o| {
        o.errors.iter().any(|e| e.starts_with("older:"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let observed = shared.lock().unwrap();
        assert!(
            observed
                .errors
                .iter()
                .all(|e| e.starts_with("older:") && e.contains("FencedInstanceId")),
            "{:?}",
            observed.errors
        );
        assert_eq!(observed.views["newer"].1.len(), 2, "{:?}", observed.views);
        assert!(observed.views["older"].1.is_empty(), "{:?}", observed.views);
    }
    newer.stop(Order::Close).await.unwrap();
    older.stop(Order::Close).await.ok();
}

/// Polls until at least `count` records came back.
async fn consume_at_least(
    consumer: &mut Consumer<TokioConnector>,
    count: usize,
) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records",
            records.len()
        );
        records.extend(consumer.poll(POLL).await.unwrap());
    }
    records
}

fn places(records: &[ConsumerRecord]) -> BTreeSet<(i32, i64)> {
    records.iter().map(|r| (r.partition, r.offset)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_resumes_from_the_committed_offsets() {
    let broker = Broker::start();
    let topic = "resume";
    create_topic(&broker, topic, 3).await;
    let produced = produce(&broker.client(), topic, 0, 600).await;

    // Manual commits: what was polled after the last commit comes again.
    let manual = ConsumerConfig {
        enable_auto_commit: false,
        ..group_config("manual")
    };
    let mut first = consumer(&broker, manual.clone());
    first.subscribe([topic]).unwrap();
    let committed_part = places(&consume_at_least(&mut first, 200).await);
    first.commit_sync().await.unwrap();
    let uncommitted = places(&consume_at_least(&mut first, 1).await);
    assert!(committed_part.is_disjoint(&uncommitted));
    first.close().await.unwrap();

    let mut second = consumer(&broker, manual);
    second.subscribe([topic]).unwrap();
    let rest = produced.len() - committed_part.len();
    let resumed = places(&consume_at_least(&mut second, rest).await);
    assert_eq!(resumed.len(), rest, "no record twice within one member");
    assert!(
        resumed.is_disjoint(&committed_part),
        "committed records came again"
    );
    assert_eq!(&resumed | &committed_part, produced);
    assert_eq!(
        &resumed & &(&committed_part | &uncommitted),
        uncommitted,
        "exactly the uncommitted ones came again"
    );
    second.commit_sync().await.unwrap();
    second.close().await.unwrap();

    // Auto-commit: closing commits what was consumed; nothing comes twice.
    let mut first = consumer(&broker, group_config("auto"));
    first.subscribe([topic]).unwrap();
    let before = places(&consume_at_least(&mut first, 250).await);
    first.close().await.unwrap();
    let mut second = consumer(&broker, group_config("auto"));
    second.subscribe([topic]).unwrap();
    let after = places(&consume_at_least(&mut second, produced.len() - before.len()).await);
    assert!(
        before.is_disjoint(&after),
        "re-delivered after a clean close"
    );
    assert_eq!(&before | &after, produced);
    second.close().await.unwrap();
    assert_eq!(
        committed_offsets(&broker, "auto", topic, 3).await,
        log_end_offsets(&broker, topic, 3).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_assignment_commits_without_membership_and_async_commits_keep_order() {
    let broker = Broker::start();
    let topic = "assigned";
    create_topic(&broker, topic, 2).await;
    produce(&broker.client(), topic, 0, 100).await;
    let tps = [TopicPartition::new(topic, 0), TopicPartition::new(topic, 1)];
    let config = ConsumerConfig {
        enable_auto_commit: false,
        ..group_config("by-hand")
    };
    let mut first = consumer(&broker, config.clone());
    first.assign(tps.clone());
    assert_eq!(
        first.committed(&tps).await.unwrap(),
        BTreeMap::from([(tps[0].clone(), None), (tps[1].clone(), None)])
    );
    let read = consume_at_least(&mut first, 30).await;
    assert_eq!(first.generation(), None);
    // Several asynchronous commits of growing offsets: the last one wins.
    let mut handles = Vec::new();
    for offset in 1..=20 {
        let offsets = BTreeMap::from([(tps[0].clone(), offset), (tps[1].clone(), offset * 2)]);
        handles.push(first.commit_offsets_async(offsets).await.unwrap());
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(
        first.committed(&tps).await.unwrap(),
        BTreeMap::from([(tps[0].clone(), Some(20)), (tps[1].clone(), Some(40))])
    );
    first.commit_sync().await.unwrap();
    let positions: BTreeMap<TopicPartition, Option<i64>> = tps
        .iter()
        .map(|tp| (tp.clone(), first.position(tp)))
        .collect();
    assert_eq!(first.committed(&tps).await.unwrap(), positions);
    assert!(!read.is_empty());

    // A new consumer of the group starts where the first one committed.
    let mut second = consumer(&broker, config);
    second.assign(tps.clone());
    let next = second.poll(Duration::from_secs(5)).await.unwrap();
    let first_offsets: BTreeMap<i32, i64> =
        next.iter().rev().map(|r| (r.partition, r.offset)).collect();
    for (partition, offset) in first_offsets {
        assert_eq!(
            Some(offset),
            positions[&tps[partition as usize]],
            "partition {partition}"
        );
    }

    // A subscribed member in the same group refuses a commit without a
    // generation: the group has a member now.
    let mut member = consumer(&broker, group_config("by-hand"));
    member.subscribe([topic]).unwrap();
    consume_at_least(&mut member, 1).await;
    let refused = second.commit_sync().await.unwrap_err();
    assert_eq!(
        refused.response_error(),
        Some(ResponseError::UnknownMemberId),
        "{refused}"
    );
    member.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn older_group_protocol_versions_still_share_partitions() {
    let broker = Broker::start();
    let (topic, group) = ("old", "old-group");
    create_topic(&broker, topic, 4).await;
    let produced = produce(&broker.client(), topic, 0, 200).await;
    let mut config = broker.client_config();
    config.api_version_caps = vec![
        (ApiKey::FindCoordinator, 2),
        (ApiKey::JoinGroup, 3), // before MEMBER_ID_REQUIRED
        (ApiKey::SyncGroup, 2),
        (ApiKey::Heartbeat, 2),
        (ApiKey::LeaveGroup, 2),
        (ApiKey::OffsetCommit, 5),
        (ApiKey::OffsetFetch, 5),
    ];
    let shared = Shared::default();
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let client = Client::new(TokioConnector, config.clone()).unwrap();
        let mut member = Consumer::new(client, group_config(group)).unwrap();
        member.subscribe([topic]).unwrap();
        members.push(Member::start(name, member, &shared));
    }
    wait_for(&shared, "two old-version members to split the topic", |o| {
        settled(o, &["a", "b"], 4).is_some() && all_seen(o).is_superset(&produced)
    })
    .await;
    for member in members {
        member.stop(Order::Close).await.unwrap();
    }
    assert_eq!(
        committed_offsets(&broker, group, topic, 4).await,
        log_end_offsets(&broker, topic, 4).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refusals_reach_the_caller() {
    let broker = Broker::start();
    let topic = "refused";
    create_topic(&broker, topic, 1).await;

    // Below the broker's group.min.session.timeout.ms (6 s).
    let mut short = consumer(
        &broker,
        ConsumerConfig {
            session_timeout_ms: 1_000,
            heartbeat_interval_ms: 100,
            ..group_config("short")
        },
    );
    short.subscribe([topic]).unwrap();
    let error = short.poll(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(
        error.response_error(),
        Some(ResponseError::InvalidSessionTimeout),
        "{error}"
    );

    // A member offering only round-robin cannot join a range-only group.
    let mut ranged = consumer(&broker, group_config("strategies"));
    ranged.subscribe([topic]).unwrap();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while ranged.generation().is_none() {
        assert!(Instant::now() < deadline, "the range member never joined");
        ranged.poll(POLL).await.unwrap();
    }
    let mut round_robin = consumer(
        &broker,
        ConsumerConfig {
            partition_assignment_strategy: vec![Assignor::RoundRobin],
            ..group_config("strategies")
        },
    );
    round_robin.subscribe([topic]).unwrap();
    let error = round_robin.poll(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(
        error.response_error(),
        Some(ResponseError::InconsistentGroupProtocol),
        "{error}"
    );
    ranged.close().await.unwrap();
}

/// Polls two consumers side by side until `done` holds for them.
async fn poll_both_until(
    a: &mut Consumer<TokioConnector>,
    b: &mut Consumer<TokioConnector>,
    what: &str,
    done: impl Fn(&Consumer<TokioConnector>, &Consumer<TokioConnector>) -> bool,
) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !done(a, b) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let (polled_a, polled_b) = tokio::join!(a.poll(POLL), b.poll(POLL));
        polled_a.unwrap();
        polled_b.unwrap();
    }
}

/// When a follower's JoinGroup completes a generation, the leader's
/// JoinGroup, waiting on its own connection, must be answered too. The
/// leader's request goes first here because it changes its subscription
/// (the follower learns of the rebalance from a heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_answered_when_a_follower_completes_the_generation() {
    let broker = Broker::start();
    create_topic(&broker, "first", 2).await;
    create_topic(&broker, "second", 2).await;
    let config = ConsumerConfig {
        enable_auto_commit: false,
        session_timeout_ms: 10_000,
        ..group_config("leader-first")
    };
    // Alone, the first member forms generation 1 and leads from then on.
    let mut leader = consumer(&broker, config.clone());
    leader.subscribe(["first"]).unwrap();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while leader.generation().is_none() {
        assert!(Instant::now() < deadline, "the first member never joined");
        leader.poll(POLL).await.unwrap();
    }
    let mut follower = consumer(&broker, config);
    follower.subscribe(["first"]).unwrap();
    let both_in = |a: &Consumer<TokioConnector>, b: &Consumer<TokioConnector>, after: i32| {
        a.generation().is_some_and(|g| g > after) && a.generation() == b.generation()
    };
    poll_both_until(&mut leader, &mut follower, "a shared generation", |a, b| {
        both_in(a, b, 1) && a.assignment().len() == 1 && b.assignment().len() == 1
    })
    .await;
    let before = leader.generation().unwrap();
    leader.subscribe(["first", "second"]).unwrap();
    let started = Instant::now();
    poll_both_until(&mut leader, &mut follower, "the next generation", |a, b| {
        both_in(a, b, before)
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the rebalance took {took:?}");
    leader.close().await.unwrap();
    follower.close().await.unwrap();
}
