//! The node's side of partition replication: a follower's fetch loop, one
//! Fetch in flight per leader over the replica link; the answers appended
//! or truncated; and a leader's ISR changes sent to the active controller
//! as AlterPartition, or handed to its own controller when it is one.
//!
//! A follower reports, beside its log end, the end of what it synced
//! (`SYNCED_END_TAG`), and only that counts for the leader's high
//! watermark. It may fetch again while the records of its last answer
//! sync, so that the network round trip overlaps the sync, but never
//! further ahead: a fetch is sent only once everything below the previous
//! fetch's offset is synced, and one sent with records still unsyncing asks
//! the leader not to wait for more (max_wait_ms 0), since its answer is
//! what carries the next synced end. After an empty answer the follower
//! waits for its sync, then fetches and lets the leader hold the fetch.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::{
    alter_partition_request, fetch_request, AlterPartitionRequest, AlterPartitionResponse, ApiKey,
    BrokerId, FetchRequest, FetchResponse,
};
use kafka_protocol::ResponseError;

use super::Node;
use crate::broker::replicas::{IsrChange, ToFetch, SYNCED_END_TAG};
use crate::storage::Storage;
use crate::timer::Timer;
use crate::types::{Channel, NodeId, Now, TopicPartition};
use crate::wire::reply::decode_response;

/// The Fetch version followers send (ReplicaState, topic ids).
const REPLICA_FETCH_VERSION: i16 = 17;
/// The AlterPartition version leaders send (ISR members with epochs).
pub(super) const ALTER_PARTITION_VERSION: i16 = 3;

/// A follower's fetching from one leader.
#[derive(Debug, Default)]
pub(super) struct LeaderFetch {
    /// The fetch in flight: each partition's leader epoch and offset.
    sent: Option<BTreeMap<TopicPartition, (i32, i64)>>,
    /// The offsets the last answered fetch asked from, per partition.
    last_offsets: BTreeMap<TopicPartition, i64>,
    /// The last answer carried records: more may be waiting at the leader.
    answered_records: bool,
    /// No fetch before this time (after a failed one).
    backoff_until_ms: i64,
}

impl LeaderFetch {
    /// Whether the next fetch may go now, and if so whether it may wait at
    /// the leader for records (Some(true)) or must be answered at once
    /// because records are still syncing here (Some(false)).
    fn may_fetch(&self, partitions: &[ToFetch]) -> Option<bool> {
        let syncing = partitions.iter().any(|p| p.synced_offset < p.fetch_offset);
        if !syncing {
            return Some(true);
        }
        let previous_synced = partitions.iter().all(|p| {
            self.last_offsets
                .get(&p.partition)
                .is_none_or(|&previous| p.synced_offset >= previous)
        });
        (self.answered_records && previous_synced).then_some(false)
    }
}

impl<S: Storage> Node<S> {
    /// After every input of a node in a cluster: ISR changes to send, and
    /// the next fetch from each leader that has none in flight.
    pub(super) fn tend_replication(&mut self, now: Now) {
        if self.broker.cluster.is_none() {
            return;
        }
        self.send_isr_changes(now);
        let mut by_leader: BTreeMap<i32, Vec<ToFetch>> = BTreeMap::new();
        for (leader, fetch) in self.broker.partitions_to_fetch() {
            by_leader.entry(leader).or_default().push(fetch);
        }
        self.replica_fetches
            .retain(|leader, state| state.sent.is_some() || by_leader.contains_key(&leader.0));
        let mut next_backoff: Option<i64> = None;
        for (leader, partitions) in by_leader {
            let leader = NodeId(leader);
            if leader == self.node_id {
                continue;
            }
            let state = self.replica_fetches.entry(leader).or_default();
            if state.sent.is_some() {
                continue;
            }
            if now.monotonic_ms < state.backoff_until_ms {
                next_backoff = Some(
                    next_backoff.map_or(state.backoff_until_ms, |b| b.min(state.backoff_until_ms)),
                );
                continue;
            }
            let report_unsynced = self
                .broker
                .config
                .mutated(crate::config::Mutation::FollowerReportsUnsynced);
            let may_wait = if report_unsynced {
                Some(true)
            } else {
                state.may_fetch(&partitions)
            };
            let Some(may_wait) = may_wait else {
                continue;
            };
            let link_ready = self
                .peers
                .get(&(leader, Channel::Replica))
                .is_some_and(|l| l.up && l.api_versions.is_some());
            if !link_ready {
                continue;
            }
            let request = self.replica_fetch_request(&partitions, may_wait, report_unsynced);
            let sent = self.send_peer(
                now,
                (leader, Channel::Replica),
                ApiKey::Fetch,
                REPLICA_FETCH_VERSION,
                &request,
                None,
            );
            if sent {
                let state = self.replica_fetches.entry(leader).or_default();
                state.sent = Some(
                    partitions
                        .into_iter()
                        .map(|p| (p.partition, (p.leader_epoch, p.fetch_offset)))
                        .collect(),
                );
            }
        }
        match next_backoff {
            Some(at) => self.timers.set(Timer::ReplicaFetch, at),
            None => self.timers.stop(Timer::ReplicaFetch),
        }
    }

    /// A follower's Fetch. `report_unsynced` is the mutation that reports
    /// the log end as synced.
    fn replica_fetch_request(
        &self,
        partitions: &[ToFetch],
        may_wait: bool,
        report_unsynced: bool,
    ) -> FetchRequest {
        let config = &self.broker.config;
        let mut topics: Vec<fetch_request::FetchTopic> = Vec::new();
        for p in partitions {
            let mut partition = fetch_request::FetchPartition::default()
                .with_partition(p.partition.partition)
                .with_current_leader_epoch(p.leader_epoch)
                .with_fetch_offset(p.fetch_offset)
                .with_last_fetched_epoch(p.last_fetched_epoch)
                .with_log_start_offset(p.log_start)
                .with_partition_max_bytes(config.replica_fetch_max_bytes);
            if p.synced_offset < p.fetch_offset && !report_unsynced {
                partition = partition.with_unknown_tagged_field(
                    SYNCED_END_TAG,
                    Bytes::copy_from_slice(&p.synced_offset.to_be_bytes()),
                );
            }
            match topics.last_mut() {
                Some(topic) if topic.topic_id == p.topic_id => topic.partitions.push(partition),
                _ => topics.push(
                    fetch_request::FetchTopic::default()
                        .with_topic_id(p.topic_id)
                        .with_partitions(vec![partition]),
                ),
            }
        }
        let broker_epoch = self.registered_broker_epoch().unwrap_or(-1);
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_replica_state(
                fetch_request::ReplicaState::default()
                    .with_replica_id(BrokerId(self.node_id.0))
                    .with_replica_epoch(broker_epoch),
            )
            .with_max_wait_ms(if may_wait {
                config.replica_fetch_wait_max_ms
            } else {
                0
            })
            .with_min_bytes(1)
            .with_max_bytes(config.replica_fetch_max_bytes.saturating_mul(10))
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics)
    }

    /// The link to a leader went down or was reset: its fetch is lost.
    pub(super) fn replica_link_lost(&mut self, peer: NodeId) {
        if let Some(state) = self.replica_fetches.get_mut(&peer) {
            state.sent = None;
            state.answered_records = false;
        }
    }

    /// A leader's answer to this follower's fetch.
    pub(super) fn replica_response(&mut self, now: Now, peer: NodeId, version: i16, frame: Bytes) {
        let sent = self
            .replica_fetches
            .get_mut(&peer)
            .and_then(|state| state.sent.take())
            .unwrap_or_default();
        let mut failed = false;
        let mut records = false;
        match decode_response::<FetchResponse>(ApiKey::Fetch, version, frame) {
            Ok((_, response)) if response.error_code != 0 => {
                tracing::warn!(%peer, error = response.error_code, "a leader refused a fetch");
                failed = true;
            }
            Ok((_, response)) => {
                for topic in &response.responses {
                    let Some(name) = self.broker.topics.name_by_id(&topic.topic_id) else {
                        continue;
                    };
                    for p in &topic.partitions {
                        let tp = TopicPartition::new(name.clone(), p.partition_index);
                        let Some(&(epoch, offset)) = sent.get(&tp) else {
                            continue;
                        };
                        records |= p.records.as_ref().is_some_and(|r| !r.is_empty());
                        if !self.follower_answer(&tp, epoch, offset, p) {
                            failed = true;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "a bad fetch answer from a leader");
                failed = true;
            }
        }
        let state = self.replica_fetches.entry(peer).or_default();
        state.last_offsets = sent
            .into_iter()
            .map(|(tp, (_, offset))| (tp, offset))
            .collect();
        state.answered_records = records && !failed;
        if failed {
            state.backoff_until_ms = now.monotonic_ms + self.broker.config.replica_fetch_backoff_ms;
        }
    }

    /// One partition of a leader's answer; false when it failed.
    fn follower_answer(
        &mut self,
        tp: &TopicPartition,
        epoch: i32,
        offset: i64,
        answer: &kafka_protocol::messages::fetch_response::PartitionData,
    ) -> bool {
        // The log must still be where the fetch asked from, in that epoch.
        let current = self
            .broker
            .topics
            .partition(&tp.topic, tp.partition)
            .map(|p| (p.role.leader_epoch(), p.log.log_end_offset()));
        let unchanged = current == Some((Some(epoch), offset));
        let out_of_range = ResponseError::OffsetOutOfRange.code();
        if answer.error_code == out_of_range && unchanged && answer.log_start_offset > offset {
            return match self
                .broker
                .restart_below_leader_start(tp, answer.log_start_offset)
            {
                Ok(restarted) => restarted,
                Err(error) => {
                    tracing::error!(partition = %tp, %error, "cannot restart the log at the leader's log start");
                    false
                }
            };
        }
        if answer.error_code != 0 {
            let error = ResponseError::try_from_code(answer.error_code);
            tracing::debug!(partition = %tp, ?error, "a leader refused a partition's fetch");
            if self
                .broker
                .config
                .mutated(crate::config::Mutation::FollowHintedLeader)
            {
                let hint = &answer.current_leader;
                self.broker
                    .follow_hinted_leader(tp, hint.leader_id.0, hint.leader_epoch);
            }
            return false;
        }
        if !unchanged {
            return true;
        }
        if answer.diverging_epoch.epoch >= 0 {
            let diverging = &answer.diverging_epoch;
            if let Err(error) =
                self.broker
                    .truncate_diverged(tp, diverging.epoch, diverging.end_offset)
            {
                tracing::error!(partition = %tp, %error, "cannot truncate a diverged log");
                return false;
            }
            return true;
        }
        let records = answer.records.clone().unwrap_or_default();
        match self
            .broker
            .append_from_leader(tp, epoch, &records, answer.high_watermark)
        {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(partition = %tp, %error, "cannot append what the leader sent");
                false
            }
        }
    }

    /// This broker's epoch, once registered.
    pub(super) fn registered_broker_epoch(&self) -> Option<i64> {
        self.lifecycle.as_ref()?.broker_epoch()
    }

    /// Sends the ISR changes the led partitions asked for to the active
    /// controller. Those that cannot be sent stay pending and are asked
    /// again after `ISR_CHANGE_TIMEOUT_MS`: one may be a change asked again
    /// whose first asking is still on its way to a commit.
    fn send_isr_changes(&mut self, now: Now) {
        let changes = self.broker.take_isr_changes();
        if changes.is_empty() {
            return;
        }
        let controller = self.broker.cluster.as_ref().and_then(|c| c.controller_id);
        let (Some(broker_epoch), Some(controller)) = (self.registered_broker_epoch(), controller)
        else {
            return;
        };
        let request = alter_partition_request(self.node_id.0, broker_epoch, &changes);
        if controller == self.node_id.0 {
            if let Some(response) = self.alter_partition_locally(now, &request) {
                self.alter_partition_answered(&changes, &response);
            }
            return;
        }
        let link = (NodeId(controller), Channel::Control);
        let ready = self.peers.get(&link).is_some_and(|l| l.up);
        let sent = ready
            && self.send_peer(
                now,
                link,
                ApiKey::AlterPartition,
                ALTER_PARTITION_VERSION,
                &request,
                None,
            );
        if sent {
            self.isr_changes_sent.extend(changes);
        }
    }

    /// The controller's answer to this broker's AlterPartition: the
    /// changes it names (all of them, for an error of the whole request)
    /// are settled.
    pub(super) fn alter_partition_response(&mut self, version: i16, frame: Bytes) {
        match decode_response::<AlterPartitionResponse>(ApiKey::AlterPartition, version, frame) {
            Ok((_, response)) => {
                let answered = |c: &IsrChange| {
                    response.error_code != 0
                        || response
                            .topics
                            .iter()
                            .filter(|t| t.topic_id == c.topic_id)
                            .flat_map(|t| &t.partitions)
                            .any(|p| p.partition_index == c.partition.partition)
                };
                let (changes, kept): (Vec<IsrChange>, Vec<IsrChange>) =
                    std::mem::take(&mut self.isr_changes_sent)
                        .into_iter()
                        .partition(|c| answered(c));
                self.isr_changes_sent = kept;
                self.alter_partition_answered(&changes, &response);
            }
            Err(error) => {
                // Unreadable: the changes stay pending until a commit
                // settles them or they are asked again.
                self.isr_changes_sent.clear();
                tracing::warn!(%error, "a bad AlterPartition answer");
            }
        }
    }

    /// Changes refused for good may be asked again; accepted ones settle
    /// when their record applies, and so do those whose fate the answer
    /// leaves open (NOT_CONTROLLER, REQUEST_TIMED_OUT: the change may have
    /// been proposed), which stay pending until a commit settles them or
    /// they are asked again.
    fn alter_partition_answered(
        &mut self,
        changes: &[IsrChange],
        response: &AlterPartitionResponse,
    ) {
        // INVALID_UPDATE_VERSION too: the partition changed since this
        // leader asked, perhaps by this very change, committed and not yet
        // applied here.
        let open = |code: i16| {
            code == ResponseError::NotController.code()
                || code == ResponseError::RequestTimedOut.code()
                || code == ResponseError::InvalidUpdateVersion.code()
        };
        for change in changes {
            let code = if response.error_code != 0 {
                response.error_code
            } else {
                response
                    .topics
                    .iter()
                    .filter(|t| t.topic_id == change.topic_id)
                    .flat_map(|t| &t.partitions)
                    .find(|p| p.partition_index == change.partition.partition)
                    .map_or(0, |p| p.error_code)
            };
            if code != 0 && !open(code) {
                tracing::info!(partition = %change.partition, error = code, "the controller refused an ISR change");
                self.broker.isr_change_failed(change);
            }
        }
    }
}

fn alter_partition_request(
    broker_id: i32,
    broker_epoch: i64,
    changes: &[IsrChange],
) -> AlterPartitionRequest {
    let mut topics: Vec<alter_partition_request::TopicData> = Vec::new();
    for change in changes {
        let partition = alter_partition_request::PartitionData::default()
            .with_partition_index(change.partition.partition)
            .with_leader_epoch(change.leader_epoch)
            .with_partition_epoch(change.partition_epoch)
            .with_new_isr_with_epochs(
                change
                    .isr
                    .iter()
                    .map(|&id| {
                        alter_partition_request::BrokerState::default()
                            .with_broker_id(BrokerId(id))
                            .with_broker_epoch(-1)
                    })
                    .collect(),
            );
        match topics.iter_mut().find(|t| t.topic_id == change.topic_id) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                alter_partition_request::TopicData::default()
                    .with_topic_id(change.topic_id)
                    .with_partitions(vec![partition]),
            ),
        }
    }
    AlterPartitionRequest::default()
        .with_broker_id(BrokerId(broker_id))
        .with_broker_epoch(broker_epoch)
        .with_topics(topics)
}
