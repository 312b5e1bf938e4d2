//! The consumer's group side: `subscribe`, the rebalance steps `poll`
//! drives, commits, `unsubscribe` and `close`.
//!
//! Membership runs in one background task per join (see
//! `group::member`): it joins, hands the assignment over through a oneshot
//! channel, then heartbeats. `poll` waits for that hand-over (only until
//! its own deadline; the join goes on between polls), installs the
//! assignment and looks the partitions' committed offsets up. When the
//! membership says a rejoin is needed, `poll` commits the consumed
//! positions (with auto-commit on), tells the listener, drops every
//! partition and starts a new join: eager rebalancing, as Kafka's `range`
//! and `roundrobin` assignors use.
//!
//! Rebalances happen only inside `poll`, `unsubscribe` and `close`, so a
//! caller that commits after processing each batch never loses processed
//! records to a rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::config::ConsumerConfig;
use crate::connector::Connector;
use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::group::member::{CommitIdentity, GroupMember, GroupSettings, Joined};
use crate::group::CommitHandle;
use crate::record::TopicPartition;

/// Told when the group moves partitions to or from this consumer. Called
/// from inside `poll` (and `unsubscribe`, `close`), never concurrently.
pub trait RebalanceListener: Send {
    /// The partitions are about to go; with auto-commit on, their consumed
    /// positions were just committed.
    fn on_partitions_revoked(&mut self, _partitions: &[TopicPartition]) {}

    /// The partitions of a new generation (possibly none).
    fn on_partitions_assigned(&mut self, _partitions: &[TopicPartition]) {}

    /// The partitions were lost without a chance to commit: the member was
    /// removed from its generation (session expired, fenced, reset).
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        self.on_partitions_revoked(partitions);
    }
}

/// One membership's background task: joining, then heartbeating.
struct MemberTask {
    handle: JoinHandle<()>,
    /// The join's outcome; `None` once `poll` took it.
    joined: Option<oneshot::Receiver<Result<Joined>>>,
}

impl Drop for MemberTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl MemberTask {
    /// Aborts the task and waits until it has stopped, so that nothing of
    /// an old membership (a heartbeat answer, a leave) can land while the
    /// next join runs. A join abandoned half-way may leave a JoinGroup
    /// unanswered on the coordinator connection: that connection goes too.
    async fn stop<C: Connector>(mut self, member: &GroupMember<C>) {
        self.handle.abort();
        let _ = (&mut self.handle).await;
        if self.joined.is_some() {
            member.drop_connection().await;
        }
    }
}

pub(crate) struct GroupState<C: Connector> {
    member: Arc<GroupMember<C>>,
    /// The topics of `subscribe`, sorted; `None` with manual assignment.
    subscription: Option<Vec<String>>,
    task: Option<MemberTask>,
    /// A LeaveGroup sent in the background (by `assign`); the next join
    /// waits for it.
    leaving: Option<JoinHandle<()>>,
    /// The generation and member id the current assignment belongs to.
    assigned: Option<(i32, String)>,
    /// Behind a mutex only so that the consumer stays `Sync`; reached
    /// through `&mut` (`get_mut`), never locked concurrently.
    listener: Option<Mutex<Box<dyn RebalanceListener>>>,
    auto_commit_at: Instant,
    /// The one auto-commit allowed in flight.
    auto_commit: Option<CommitHandle>,
    /// For the leader: the partition counts it assigned, and when to check
    /// them again.
    leader_counts: Option<BTreeMap<String, i32>>,
    metadata_check_at: Instant,
}

impl<C: Connector> GroupState<C> {
    pub(crate) fn new(client: &Client<C>, config: &ConsumerConfig) -> Option<GroupState<C>> {
        let group_id = config.group_id.clone()?;
        let settings = GroupSettings {
            require_stable: true,
            group_id,
            group_instance_id: config.group_instance_id.clone(),
            session_timeout_ms: config.session_timeout_ms,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            max_poll_interval_ms: config.max_poll_interval_ms,
            assignors: config.partition_assignment_strategy.clone(),
        };
        let now = Instant::now();
        Some(GroupState {
            member: Arc::new(GroupMember::new(client.clone(), settings)),
            subscription: None,
            task: None,
            leaving: None,
            assigned: None,
            listener: None,
            auto_commit_at: now + Duration::from_millis(config.auto_commit_interval_ms),
            auto_commit: None,
            leader_counts: None,
            metadata_check_at: now,
        })
    }

    pub(crate) async fn committed(
        &self,
        tps: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        self.member.committed(tps).await
    }

    fn listener(&mut self) -> Option<&mut Box<dyn RebalanceListener>> {
        self.listener
            .as_mut()
            .map(|l| l.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

fn no_group() -> Error {
    Error::Config("this needs a consumer group: set ConsumerConfig::group_id".into())
}

impl<C: Connector> Consumer<C> {
    pub(crate) fn is_subscribed(&self) -> bool {
        self.group
            .as_ref()
            .is_some_and(|g| g.subscription.is_some())
    }

    fn group_state(&self) -> Result<&GroupState<C>> {
        self.group.as_ref().ok_or_else(no_group)
    }

    /// Joins the consumer group (`ConsumerConfig::group_id`) with these
    /// topics; the group leader assigns their partitions. The join itself
    /// happens in `poll`. Replaces a manual assignment; subscribing to other
    /// topics later makes the member rejoin.
    pub fn subscribe<S: Into<String>>(
        &mut self,
        topics: impl IntoIterator<Item = S>,
    ) -> Result<()> {
        let mut topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        topics.sort();
        topics.dedup();
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return Err(Error::Config(
                "subscribe needs topic names (use unsubscribe to stop)".into(),
            ));
        }
        let was_subscribed = self.is_subscribed();
        let group = self.group.as_mut().ok_or_else(no_group)?;
        if group.subscription.as_ref() == Some(&topics) {
            return Ok(());
        }
        group.subscription = Some(topics);
        if was_subscribed {
            group
                .member
                .membership()
                .request_rejoin("the subscription changed");
        } else {
            self.set_partitions(BTreeSet::new());
        }
        Ok(())
    }

    /// The topics of `subscribe`; empty with manual assignment.
    pub fn subscription(&self) -> Vec<String> {
        self.group
            .as_ref()
            .and_then(|g| g.subscription.clone())
            .unwrap_or_default()
    }

    /// Called from inside `poll` when the group moves partitions.
    pub fn set_rebalance_listener(
        &mut self,
        listener: impl RebalanceListener + 'static,
    ) -> Result<()> {
        self.group.as_mut().ok_or_else(no_group)?.listener = Some(Mutex::new(Box::new(listener)));
        Ok(())
    }

    /// The generation the current group assignment belongs to; `None`
    /// unless subscribed and assigned.
    pub fn generation(&self) -> Option<i32> {
        self.group.as_ref()?.assigned.as_ref().map(|a| a.0)
    }

    /// The member id the coordinator gave this consumer, while it has one.
    pub fn member_id(&self) -> Option<String> {
        let group = self.group.as_ref()?;
        let membership = group.member.membership();
        Some(membership.member_id().to_string()).filter(|id| !id.is_empty())
    }

    /// Drives membership one step; `Ok(false)` while still joining. Waits
    /// for a join at most until the deadline, and at most a heartbeat
    /// interval at a time (the caller polls again), so that the poll clock
    /// keeps moving during a long join.
    pub(crate) async fn drive_membership(&mut self, deadline: Instant) -> Result<bool> {
        let wait_until = deadline.min(self.group_wait_limit());
        let group = self.group.as_mut().expect("subscribed");
        group.member.note_poll();
        if let Some(error) = group.member.failure() {
            // Fatal for the membership (fenced, refused): what it owned is
            // lost, and every poll says why until the caller unsubscribes.
            if group.task.is_some() {
                self.give_up_partitions().await.ok();
            }
            return Err(error);
        }
        let heartbeating = group.task.as_ref().is_some_and(|t| t.joined.is_none());
        if heartbeating && group.member.membership().needs_rejoin() {
            if let Err(error) = self.give_up_partitions().await {
                tracing::warn!(%error, "commit before the rebalance failed");
            }
        }
        let group = self.group.as_mut().expect("subscribed");
        if group.task.is_none() {
            if let Some(leaving) = group.leaving.take() {
                let _ = leaving.await;
            }
            let topics = group.subscription.clone().expect("subscribed");
            group.task = Some(spawn_member(group.member.clone(), topics));
        }
        let task = group.task.as_mut().expect("just ensured");
        if let Some(joined) = task.joined.as_mut() {
            let outcome = match tokio::time::timeout_at(wait_until, joined).await {
                Err(_) => return Ok(false),
                Ok(outcome) => outcome,
            };
            task.joined = None;
            let joined = outcome.unwrap_or_else(|_| {
                Err(Error::NotInGroup {
                    group: group.member.group_id().to_string(),
                    detail: "the membership task ended without an answer".into(),
                })
            });
            match joined {
                Ok(joined) => self.install(joined),
                Err(error) => {
                    group.task = None;
                    return Err(error);
                }
            }
        }
        self.check_partition_counts().await;
        Ok(true)
    }

    /// Takes a new generation's assignment.
    fn install(&mut self, joined: Joined) {
        let group = self.group.as_mut().expect("subscribed");
        tracing::info!(
            group = group.member.group_id(),
            generation = joined.generation,
            partitions = joined.assignment.len(),
            "assignment received"
        );
        group.assigned = Some((joined.generation, joined.member_id.clone()));
        group.leader_counts = joined.partition_counts.clone();
        group.metadata_check_at =
            Instant::now() + Duration::from_millis(self.config.metadata_max_age_ms);
        group.auto_commit_at =
            Instant::now() + Duration::from_millis(self.config.auto_commit_interval_ms);
        if group.subscription.as_ref() != Some(&joined.topics) {
            group
                .member
                .membership()
                .request_rejoin("the subscription changed while joining");
        }
        if let Some(listener) = group.listener() {
            listener.on_partitions_assigned(&joined.assignment);
        }
        self.set_partitions(joined.assignment.into_iter().collect());
    }

    /// Before a rejoin (or leaving): commits the consumed positions when
    /// the assignment's generation is still the member's, tells the
    /// listener, stops the membership task and drops every partition.
    async fn give_up_partitions(&mut self) -> Result<()> {
        let owned = self.assignment();
        let offsets = self.consumed_offsets();
        let group = self.group.as_mut().expect("has a group");
        let stable = group.member.membership().stable_identity();
        let still_ours = stable.is_some() && stable == group.assigned;
        let mut result = Ok(());
        if let (true, Some((generation, member_id))) = (still_ours, stable) {
            if self.config.enable_auto_commit {
                let identity = CommitIdentity {
                    generation,
                    member_id,
                    group_instance_id: self.config.group_instance_id.clone(),
                };
                result = group.member.commit_sync(offsets, identity).await;
            }
            if let Some(listener) = group.listener() {
                listener.on_partitions_revoked(&owned);
            }
        } else if let Some(listener) = group.listener() {
            listener.on_partitions_lost(&owned);
        }
        if let Some(task) = group.task.take() {
            task.stop(&group.member).await;
        }
        group.assigned = None;
        group.leader_counts = None;
        self.set_partitions(BTreeSet::new());
        result
    }

    /// The leader asks for a new assignment when a subscribed topic's
    /// partition count changed since it assigned.
    async fn check_partition_counts(&mut self) {
        let group = self.group.as_mut().expect("subscribed");
        let Some(counts) = &group.leader_counts else {
            return;
        };
        if Instant::now() < group.metadata_check_at {
            return;
        }
        group.metadata_check_at =
            Instant::now() + Duration::from_millis(self.config.metadata_max_age_ms);
        let topics: Vec<String> = counts.keys().cloned().collect();
        if let Err(error) = self.client.refresh_metadata(Some(&topics)).await {
            tracing::debug!(%error, "partition count check failed");
            return;
        }
        let metadata = self.client.metadata();
        let changed = counts.iter().find(|(topic, &count)| {
            metadata
                .topics
                .get(*topic)
                .map_or(0, |t| t.partition_count())
                != count
        });
        if let Some((topic, _)) = changed {
            let reason = format!("the partition count of {topic} changed");
            group.member.membership().request_rejoin(&reason);
        }
    }

    /// Sleeps until the deadline or until the membership needs attention,
    /// at most a heartbeat interval so that the poll clock (see
    /// `max_poll_interval_ms`) keeps moving during a long poll.
    pub(crate) async fn idle_until(&self, deadline: Instant) {
        let until = deadline.min(self.group_wait_limit());
        let Some(group) = &self.group else {
            tokio::time::sleep_until(until).await;
            return;
        };
        let _ = tokio::time::timeout_at(until, group.member.wake.notified()).await;
    }

    fn group_wait_limit(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.heartbeat_interval_ms)
    }

    /// Starts an asynchronous commit of the consumed positions when the
    /// auto-commit interval has passed and the previous one finished.
    pub(crate) async fn maybe_auto_commit(&mut self) {
        if !self.config.enable_auto_commit {
            return;
        }
        let subscribed = self.is_subscribed();
        let offsets = self.consumed_offsets();
        let interval = Duration::from_millis(self.config.auto_commit_interval_ms);
        let Some(group) = self.group.as_mut() else {
            return;
        };
        if let Some(previous) = group.auto_commit.take_if(|h| h.is_finished()) {
            if let Err(error) = previous.await {
                tracing::warn!(%error, "auto-commit failed");
            }
        }
        let now = Instant::now();
        if now < group.auto_commit_at || group.auto_commit.is_some() {
            return;
        }
        group.auto_commit_at = now + interval;
        if offsets.is_empty() {
            return;
        }
        let Ok(identity) = group.member.commit_identity(subscribed) else {
            return; // joining: nothing owned to commit
        };
        match group.member.commit_send(Arc::new(offsets), identity).await {
            Ok(handle) => group.auto_commit = Some(handle),
            Err(error) => tracing::warn!(%error, "auto-commit not sent"),
        }
    }

    fn commit_identity(&self) -> Result<CommitIdentity> {
        self.group_state()?
            .member
            .commit_identity(self.is_subscribed())
    }

    /// Commits the consumed position of every assigned partition (the
    /// offset after the last record `poll` returned) and waits for the
    /// answer. A subscribed consumer must be in a stable generation.
    pub async fn commit_sync(&self) -> Result<()> {
        self.commit_offsets_sync(self.consumed_offsets()).await
    }

    /// Commits these offsets (the next offset to read, per partition) and
    /// waits for the answer, retrying retriable errors a bounded number of
    /// times.
    pub async fn commit_offsets_sync(&self, offsets: BTreeMap<TopicPartition, i64>) -> Result<()> {
        let identity = self.commit_identity()?;
        self.group_state()?
            .member
            .commit_sync(offsets, identity)
            .await
    }

    /// Sends a commit of the consumed positions without waiting for the
    /// answer: returns once the request has its place on the coordinator
    /// connection (so commits stay in order); the handle resolves to the
    /// outcome. Not retried, as in Kafka.
    pub async fn commit_async(&self) -> Result<CommitHandle> {
        self.commit_offsets_async(self.consumed_offsets()).await
    }

    /// As `commit_async`, for these offsets.
    pub async fn commit_offsets_async(
        &self,
        offsets: BTreeMap<TopicPartition, i64>,
    ) -> Result<CommitHandle> {
        let identity = self.commit_identity()?;
        self.group_state()?
            .member
            .commit_send(Arc::new(offsets), identity)
            .await
    }

    /// The group's committed offset of each partition; `None` when it has
    /// none.
    pub async fn committed(
        &self,
        tps: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        self.group_state()?.committed(tps).await
    }

    /// Leaves the group: commits the consumed positions (with auto-commit
    /// on), tells the listener, sends LeaveGroup and drops the assignment.
    /// Returns the first error; the consumer is unsubscribed either way.
    pub async fn unsubscribe(&mut self) -> Result<()> {
        if !self.is_subscribed() {
            return Ok(());
        }
        let committed = self.give_up_partitions().await;
        let group = self.group.as_mut().expect("subscribed");
        group.subscription = None;
        group.member.clear_failure();
        let left = group.member.leave("the consumer unsubscribed").await;
        committed.and(left)
    }

    /// Stops membership at once, without a commit; LeaveGroup is sent in
    /// the background. Used by `assign`, which cannot wait.
    pub(crate) fn drop_subscription(&mut self) {
        if !self.is_subscribed() {
            return;
        }
        tracing::warn!("assign while subscribed: leaving the group without a commit");
        let owned = self.assignment();
        let group = self.group.as_mut().expect("subscribed");
        if let Some(listener) = group.listener() {
            listener.on_partitions_lost(&owned);
        }
        group.subscription = None;
        group.assigned = None;
        group.leader_counts = None;
        let member = group.member.clone();
        let old_task = group.task.take();
        let reason = "the consumer switched to manual assignment";
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                group.leaving = Some(runtime.spawn(async move {
                    if let Some(task) = old_task {
                        task.stop(&member).await;
                    }
                    if let Err(error) = member.leave(reason).await {
                        tracing::debug!(%error, "leave after assign failed");
                    }
                }));
            }
            // No runtime to send from: the session timeout removes the member.
            Err(_) => member.membership().handle_left(reason),
        }
        self.set_partitions(BTreeSet::new());
    }

    /// Closes the consumer: a subscribed one unsubscribes (committing with
    /// auto-commit on, then LeaveGroup); one with manually assigned
    /// partitions and a group commits with auto-commit on. Waits for an
    /// auto-commit in flight. Returns the first error.
    pub async fn close(mut self) -> Result<()> {
        let mut result = if self.is_subscribed() {
            self.unsubscribe().await
        } else if self.group.is_some() && self.config.enable_auto_commit {
            let offsets = self.consumed_offsets();
            self.commit_offsets_sync(offsets).await
        } else {
            Ok(())
        };
        if let Some(pending) = self.group.as_mut().and_then(|g| g.auto_commit.take()) {
            if let Err(error) = pending.await {
                tracing::warn!(%error, "auto-commit failed");
                result = result.and(Err(error));
            }
        }
        result
    }
}

fn spawn_member<C: Connector>(member: Arc<GroupMember<C>>, topics: Vec<String>) -> MemberTask {
    let (joined_sender, joined) = oneshot::channel();
    let handle = tokio::spawn(async move {
        let outcome = member.join(&topics).await;
        let identity = outcome
            .as_ref()
            .ok()
            .map(|j| (j.generation, j.member_id.clone()));
        if joined_sender.send(outcome).is_err() {
            return; // the consumer is gone
        }
        if let Some((generation, member_id)) = identity {
            member.heartbeat(generation, member_id).await;
        }
    });
    MemberTask {
        handle,
        joined: Some(joined),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;
    use crate::connector::TokioConnector;

    fn consumer(group_id: Option<&str>) -> Consumer<TokioConnector> {
        let client = Client::new(TokioConnector, ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let config = ConsumerConfig {
            group_id: group_id.map(str::to_string),
            ..ConsumerConfig::default()
        };
        Consumer::new(client, config).unwrap()
    }

    #[tokio::test]
    async fn group_calls_without_a_group_id_are_configuration_errors() {
        let mut consumer = consumer(None);
        assert!(matches!(consumer.subscribe(["t"]), Err(Error::Config(_))));
        assert!(matches!(
            consumer.commit_sync().await,
            Err(Error::Config(_))
        ));
        assert!(matches!(
            consumer.committed(&[]).await,
            Err(Error::Config(_))
        ));
        assert_eq!(consumer.generation(), None);
        assert_eq!(consumer.member_id(), None);
    }

    #[tokio::test]
    async fn subscribe_replaces_manual_assignment_and_commits_need_a_generation() {
        let mut consumer = consumer(Some("g"));
        consumer.assign([TopicPartition::new("t", 0)]);
        assert!(matches!(
            consumer.subscribe(Vec::<String>::new()),
            Err(Error::Config(_))
        ));
        consumer.subscribe(["b", "a", "b"]).unwrap();
        assert_eq!(consumer.subscription(), ["a", "b"]);
        assert!(consumer.assignment().is_empty());
        let error = consumer.commit_sync().await.unwrap_err();
        assert!(matches!(error, Error::NotInGroup { .. }), "{error}");
        assert!(error.is_retriable());
        consumer.assign([TopicPartition::new("t", 1)]);
        assert!(consumer.subscription().is_empty());
        assert_eq!(consumer.assignment(), [TopicPartition::new("t", 1)]);
    }

    #[test]
    fn consumed_positions_exclude_records_still_buffered() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let mut consumer = consumer(Some("g"));
        let (t0, t1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        consumer.assign([t0.clone(), t1.clone()]);
        consumer.positions.insert(t0.clone(), Some(10));
        let record = |offset| crate::record::ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp_ms: 0,
            timestamp_type: crate::record::TimestampType::CreateTime,
            key: None,
            value: None,
            headers: Vec::new(),
        };
        consumer.buffered.extend([record(7), record(8), record(9)]);
        assert_eq!(consumer.position(&t0), Some(7));
        assert_eq!(
            consumer.consumed_offsets(),
            BTreeMap::from([(t0.clone(), 7)])
        );
        consumer.buffered.clear();
        assert_eq!(consumer.position(&t0), Some(10));
        assert_eq!(consumer.position(&t1), None);
    }
}
