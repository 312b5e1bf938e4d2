//! The admin client's group calls against a real `sluice` process: list,
//! describe (members with decoded assignments), committed offsets, offset
//! changes from outside the group (refused while it has members), delete
//! (NON_EMPTY_GROUP while it has members, GROUP_ID_NOT_FOUND after), at the
//! newest protocol versions and at older ones.

// Not every test file uses every helper (this one never restarts).
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use sluice_client::*;
use support::Broker;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Upper bound on waiting for a group to form.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

const PARTITIONS: i32 = 3;
const RECORDS: usize = 30;

/// A subscribed consumer polling in a task until told to close.
struct Member {
    close: watch::Sender<bool>,
    task: JoinHandle<Result<usize>>,
}

impl Member {
    fn start(broker: &Broker, group: &str, topic: &str) -> Member {
        let config = ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            heartbeat_interval_ms: 300,
            fetch_max_wait_ms: 100,
            ..ConsumerConfig::with_group(group)
        };
        let mut consumer = Consumer::new(broker.client(), config).unwrap();
        consumer.subscribe([topic]).unwrap();
        let (close, closing) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut consumed = 0;
            while !*closing.borrow() {
                consumed += consumer.poll(Duration::from_millis(100)).await?.len();
            }
            consumer.close().await?;
            Ok(consumed)
        });
        Member { close, task }
    }

    /// Closes the consumer (a final commit, then LeaveGroup); the number of
    /// records it consumed.
    async fn close(self) -> usize {
        self.close.send(true).unwrap();
        self.task.await.unwrap().unwrap()
    }
}

fn tps(topic: &str) -> Vec<TopicPartition> {
    (0..PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect()
}

async fn produce(broker: &Broker, topic: &str) {
    let producer =
        Producer::new(broker.client(), ProducerConfig::default(), system_clock()).unwrap();
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let record = ProducerRecord::new(topic, format!("v{i}")).with_key(format!("k{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

/// Waits until the group is Stable with one member owning every partition.
async fn described_stable(admin: &Admin<TokioConnector>, group: &str) -> GroupDescription {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let described = admin.describe_groups(&[group.to_string()]).await;
        if let Ok([description]) = described.as_deref() {
            let owns_all = description.members.len() == 1
                && description.members[0]
                    .assignment
                    .as_ref()
                    .is_ok_and(|a| a.partitions.len() == PARTITIONS as usize);
            if description.state == "Stable" && owns_all {
                return description.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {described:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole life of a group, seen through an admin client whose versions
/// are capped at `caps`. `newest` says whether the caps leave the newest
/// versions (group states in ListGroups v4+, GROUP_ID_NOT_FOUND in
/// DescribeGroups v6+).
async fn group_lifecycle(caps: Vec<(ApiKey, i16)>, newest: bool) {
    let broker = Broker::start();
    let (topic, group) = ("ledger", "auditors");
    let mut config = broker.client_config();
    config.api_version_caps = caps;
    let admin = Admin::new(Client::new(TokioConnector, config).unwrap());
    admin
        .create_topic(&NewTopic::new(topic, PARTITIONS, 1))
        .await
        .unwrap();
    produce(&broker, topic).await;
    assert_eq!(admin.list_groups().await.unwrap(), vec![]);

    let member = Member::start(&broker, group, topic);
    let description = described_stable(&admin, group).await;
    assert_eq!(description.group_id, group);
    assert_eq!(description.protocol_type, "consumer");
    assert_eq!(description.protocol, "range");
    let only = &description.members[0];
    assert_eq!(only.client_id, "sluice-client");
    assert_eq!(only.group_instance_id, None);
    assert_eq!(only.assignment.as_ref().unwrap().partitions, tps(topic));
    let listed = admin.list_groups().await.unwrap();
    assert_eq!(
        listed,
        vec![GroupListing {
            group_id: group.into(),
            protocol_type: "consumer".into(),
            state: newest.then(|| "Stable".to_string()),
        }]
    );

    // With a member, commits from outside and deletion are refused.
    let zeros: BTreeMap<TopicPartition, i64> = tps(topic).into_iter().map(|tp| (tp, 0)).collect();
    let refused = admin
        .alter_consumer_group_offsets(group, &zeros)
        .await
        .unwrap_err();
    assert_eq!(
        refused.response_error(),
        Some(ResponseError::UnknownMemberId),
        "{refused}"
    );
    let refused = admin.delete_group(group).await.unwrap_err();
    assert_eq!(
        refused.response_error(),
        Some(ResponseError::NonEmptyGroup),
        "{refused}"
    );

    // Closing commits what was consumed and leaves at once.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let ends = admin
        .list_offsets(&tps(topic), OffsetSpec::Latest)
        .await
        .unwrap();
    let ends: BTreeMap<TopicPartition, i64> =
        ends.into_iter().map(|(tp, l)| (tp, l.offset)).collect();
    assert_eq!(ends.values().sum::<i64>(), RECORDS as i64);
    loop {
        let committed = admin
            .list_consumer_group_offsets(group, None)
            .await
            .unwrap();
        if committed == ends {
            break; // everything consumed and auto-committed
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(member.close().await, RECORDS);
    let described = admin.describe_groups(&[group.into()]).await.unwrap();
    assert_eq!(described[0].state, "Empty");
    assert!(described[0].members.is_empty());

    // From outside now: the partitions named, or all of them.
    let mut moved = BTreeMap::new();
    moved.insert(TopicPartition::new(topic, 0), 0);
    moved.insert(TopicPartition::new(topic, 1), 1);
    admin
        .alter_consumer_group_offsets(group, &moved)
        .await
        .unwrap();
    let all = admin
        .list_consumer_group_offsets(group, None)
        .await
        .unwrap();
    let mut expected = ends.clone();
    expected.extend(moved.clone());
    assert_eq!(all, expected);
    let first = [TopicPartition::new(topic, 0)];
    let some = admin
        .list_consumer_group_offsets(group, Some(&first))
        .await
        .unwrap();
    assert_eq!(some, BTreeMap::from([(first[0].clone(), 0)]));
    let starts = admin
        .list_offsets(&tps(topic), OffsetSpec::Earliest)
        .await
        .unwrap();
    assert!(
        starts.values().all(|listed| listed.offset == 0),
        "{starts:?}"
    );

    // Deleted, it is gone.
    admin.delete_group(group).await.unwrap();
    assert_eq!(admin.list_groups().await.unwrap(), vec![]);
    match admin.describe_groups(&[group.into()]).await {
        Err(error) => {
            assert!(newest, "{error}");
            assert_eq!(error.response_error(), Some(ResponseError::GroupIdNotFound));
        }
        Ok(described) => {
            assert!(!newest, "{described:?}");
            assert_eq!(described[0].state, "Dead");
        }
    }
    let results = admin
        .delete_groups(&[group.into(), "never-was".into()])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    for ((name, result), wanted) in results.iter().zip([group, "never-was"]) {
        assert_eq!(name, wanted);
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.response_error(), Some(ResponseError::GroupIdNotFound));
    }
    assert!(admin
        .list_consumer_group_offsets(group, None)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_listed_described_reset_and_deleted() {
    group_lifecycle(Vec::new(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_admin_versions_see_the_same_group() {
    group_lifecycle(
        vec![
            (ApiKey::FindCoordinator, 2),
            (ApiKey::DescribeGroups, 3),
            (ApiKey::ListGroups, 3),
            (ApiKey::OffsetFetch, 5),
            (ApiKey::OffsetCommit, 5),
            (ApiKey::DeleteGroups, 0),
        ],
        false,
    )
    .await;
}
