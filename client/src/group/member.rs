//! The I/O half of group membership: a consumer's conversation with its
//! group coordinator. It finds the coordinator, joins and syncs (computing
//! the assignment when it leads), heartbeats, commits and fetches offsets,
//! and leaves; every answer goes through the sans-IO [`Membership`], which
//! says what to do next.
//!
//! The coordinator gets a connection of its own (see
//! `Client::open_dedicated`), shared by the consumer's calls and its
//! background task. The background task of one membership first joins, then
//! heartbeats until the group needs a rejoin; the rejoin itself is started by
//! the consumer's `poll`, because the owned partitions must be committed
//! and revoked first (eager rebalancing).
//!
//! Commits keep their order: a commit takes `commit_order` until its
//! request has its place on the coordinator connection, so an asynchronous
//! commit can never land after a later one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::{oneshot, Mutex as AsyncMutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::connection::Connection;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::group::assignor::{Assignor, MemberSubscription};
use crate::group::membership::{CoordinatorNode, JoinAnswer, JoinStep, Membership, Reaction};
use crate::group::protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, Assignment,
    Subscription, PROTOCOL_TYPE,
};
use crate::record::TopicPartition;

/// JoinGroup/SyncGroup rounds of one join before it gives up (each round
/// waits for an answer or a backoff; the consumer's next poll starts over).
pub const JOIN_ROUNDS_MAX: u32 = 50;

/// Attempts of a synchronous commit on retriable errors.
pub const COMMIT_ATTEMPTS_MAX: u32 = 10;

/// Attempts of an offset fetch on retriable errors.
pub const OFFSET_FETCH_ATTEMPTS_MAX: u32 = 10;

/// Added to the rebalance timeout to bound a JoinGroup, which the
/// coordinator may hold for that long (Java adds the same 5 s).
const JOIN_TIMEOUT_SLACK_MS: u64 = 5_000;

/// KIP-848's "no epoch" in OffsetFetch v9, for classic members.
const NO_MEMBER_EPOCH: i32 = -1;

/// FindCoordinator's key type of a consumer group.
pub(crate) const KEY_TYPE_GROUP: i8 = 0;

/// The group settings of a consumer, taken from `ConsumerConfig`.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub group_id: String,
    pub group_instance_id: Option<String>,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub max_poll_interval_ms: u64,
    pub assignors: Vec<Assignor>,
    /// Committed offsets a transaction has not committed yet are answered
    /// UNSTABLE_OFFSET_COMMIT, and asked again (OffsetFetch
    /// `require_stable`, v7+): a consumer's view, as Java's consumer asks
    /// it; an admin's listing takes the offsets as they are.
    pub require_stable: bool,
}

/// A join that completed: the generation and this member's share of it.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub generation: i32,
    pub member_id: String,
    /// The topics this member subscribed to when it joined.
    pub topics: Vec<String>,
    pub assignment: Vec<TopicPartition>,
    /// For the leader: the partition count it assigned for every topic any
    /// member subscribes to (0 when unknown), to notice changes later.
    pub partition_counts: Option<BTreeMap<String, i32>>,
}

/// Who a commit speaks for: a member's generation and id, or -1 and ""
/// for a consumer with manually assigned partitions.
#[derive(Debug, Clone)]
pub(crate) struct CommitIdentity {
    pub generation: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// Why a join round did not finish, and when to try again.
enum Again {
    Now,
    AfterBackoff(Error),
    Never(Error),
}

impl Again {
    fn from_error(error: Error) -> Again {
        if error.is_retriable() {
            Again::AfterBackoff(error)
        } else {
            Again::Never(error)
        }
    }
}

/// The outcome of one request, and whether the membership says that
/// sending it again may succeed (an error's own retriability is not
/// enough: UNKNOWN_TOPIC_OR_PARTITION is retriable for a fetch, not for a
/// commit).
struct Attempt<T> {
    result: Result<T>,
    retry: bool,
}

impl<T> Attempt<T> {
    fn done(value: T) -> Attempt<T> {
        Attempt {
            result: Ok(value),
            retry: false,
        }
    }

    /// A request that got no answer: retriable when the error is.
    fn unanswered(error: Error) -> Attempt<T> {
        Attempt {
            retry: error.is_retriable(),
            result: Err(error),
        }
    }

    fn answered(error: Error, reaction: Reaction) -> Attempt<T> {
        Attempt {
            result: Err(error),
            retry: matches!(reaction, Reaction::Retry | Reaction::FindCoordinator),
        }
    }
}

/// An asynchronous commit on its way; resolves to its outcome. Dropping it
/// does not cancel the commit.
pub struct CommitHandle {
    task: JoinHandle<Attempt<()>>,
}

impl CommitHandle {
    /// Whether the answer has arrived (or the commit failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

fn joined<T>(joined: std::result::Result<Attempt<T>, tokio::task::JoinError>) -> Attempt<T> {
    match joined {
        Ok(attempt) => attempt,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Attempt::unanswered(Error::Disconnected {
            address: "group coordinator".into(),
            reason: "the commit was cancelled".into(),
        }),
    }
}

impl Future for CommitHandle {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|outcome| joined(outcome).result)
    }
}

pub(crate) struct GroupMember<C: Connector> {
    client: Client<C>,
    settings: GroupSettings,
    membership: Mutex<Membership>,
    connection: AsyncMutex<Option<(CoordinatorNode, Arc<Connection>)>>,
    commit_order: AsyncMutex<()>,
    last_poll: Mutex<Instant>,
    /// An error the background task met that the consumer must report.
    failure: Mutex<Option<Error>>,
    /// Woken when the background task finds that a rejoin is needed.
    pub(crate) wake: Notify,
}

impl<C: Connector> GroupMember<C> {
    pub fn new(client: Client<C>, settings: GroupSettings) -> GroupMember<C> {
        assert!(!settings.group_id.is_empty(), "a group needs an id");
        assert!(
            !settings.assignors.is_empty(),
            "a group member needs an assignor"
        );
        GroupMember {
            client,
            settings,
            membership: Mutex::new(Membership::new()),
            connection: AsyncMutex::new(None),
            commit_order: AsyncMutex::new(()),
            last_poll: Mutex::new(Instant::now()),
            failure: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    pub fn group_id(&self) -> &str {
        &self.settings.group_id
    }

    pub fn membership(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().expect("membership lock")
    }

    pub fn note_poll(&self) {
        *self.last_poll.lock().expect("poll clock lock") = Instant::now();
    }

    /// The fatal error the background task met, if any. It stays until
    /// `clear_failure`: a fenced or refused member must not go on as if
    /// nothing happened.
    pub fn failure(&self) -> Option<Error> {
        self.failure.lock().expect("failure lock").clone()
    }

    pub fn clear_failure(&self) {
        self.failure.lock().expect("failure lock").take();
    }

    /// Closes the coordinator connection, for a caller that abandoned a
    /// request on it (a JoinGroup the coordinator may hold for a whole
    /// rebalance would delay every later answer there).
    pub async fn drop_connection(&self) {
        if let Some((_, connection)) = self.connection.lock().await.take() {
            connection.close("a pending request was abandoned");
        }
    }

    /// A fatal error of the background task: the membership is over (its
    /// partitions are lost, not revoked) and the error stays for the consumer.
    fn fail(&self, error: Error) {
        tracing::warn!(group = %self.settings.group_id, %error, "group membership failed");
        self.membership().handle_left(&error.to_string());
        self.failure
            .lock()
            .expect("failure lock")
            .get_or_insert(error);
        self.wake.notify_one();
    }

    fn context(&self, what: &str) -> String {
        format!("{what} (group {})", self.settings.group_id)
    }

    /// The identity a commit uses now: the member's stable generation, or
    /// none when `subscribed` is false (manual assignment).
    pub fn commit_identity(&self, subscribed: bool) -> Result<CommitIdentity> {
        if !subscribed {
            return Ok(CommitIdentity {
                generation: crate::group::protocol::NO_GENERATION,
                member_id: String::new(),
                group_instance_id: None,
            });
        }
        match self.membership().stable_identity() {
            Some((generation, member_id)) => Ok(CommitIdentity {
                generation,
                member_id,
                group_instance_id: self.settings.group_instance_id.clone(),
            }),
            None => Err(Error::NotInGroup {
                group: self.settings.group_id.clone(),
                detail: "the consumer is (re)joining its group; poll to finish, then commit again"
                    .into(),
            }),
        }
    }

    /// The connection to the coordinator, finding the coordinator first if
    /// it is not known. One attempt; callers retry. (The admin client's
    /// group requests use it too.)
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.connection.lock().await;
        let known = self.membership().coordinator().cloned();
        if let (Some(node), Some((held, connection))) = (&known, slot.as_ref()) {
            if node == held && connection.is_open() {
                return Ok(connection.clone());
            }
        }
        let node = match known {
            Some(node) => node,
            None => {
                let node = self.find_coordinator().await?;
                self.membership().handle_coordinator_found(node.clone());
                node
            }
        };
        *slot = None;
        match self.client.open_dedicated(&node.address()).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                *slot = Some((node, connection.clone()));
                Ok(connection)
            }
            Err(error) => {
                self.membership()
                    .handle_coordinator_lost("cannot connect to the coordinator");
                Err(error)
            }
        }
    }

    async fn find_coordinator(&self) -> Result<CoordinatorNode> {
        let context = self.context("find the coordinator");
        let node = find_coordinator(
            &self.client,
            KEY_TYPE_GROUP,
            &self.settings.group_id,
            &context,
        )
        .await?;
        tracing::debug!(group = %self.settings.group_id, coordinator = node.node_id, address = %node.address(), "found the coordinator");
        Ok(node)
    }

    /// Joins the group with `topics` until a generation is formed and this
    /// member has its assignment, within `JOIN_ROUNDS_MAX` rounds.
    pub async fn join(&self, topics: &[String]) -> Result<Joined> {
        let mut backoffs = 0;
        let mut last_error = None;
        for _ in 0..JOIN_ROUNDS_MAX {
            match self.join_round(topics).await {
                Ok(joined) => return Ok(joined),
                Err(Again::Now) => {}
                Err(Again::AfterBackoff(error)) => {
                    tracing::debug!(group = %self.settings.group_id, %error, "join failed; retrying");
                    backoffs += 1;
                    last_error = Some(error);
                    self.client.retry_pause(backoffs).await;
                }
                Err(Again::Never(error)) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::broker(
                ResponseError::RebalanceInProgress,
                self.context(&format!(
                    "still rebalancing after {JOIN_ROUNDS_MAX} join rounds"
                )),
            )
        }))
    }

    fn join_timeout_ms(&self) -> u64 {
        let rebalance_ms = self.settings.max_poll_interval_ms + JOIN_TIMEOUT_SLACK_MS;
        self.client.request_timeout_ms().max(rebalance_ms)
    }

    /// What a join or sync step means for the join loop.
    fn again(&self, step: JoinStep, code: i16, what: &str) -> Again {
        let error = || {
            let error =
                ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError);
            Error::broker(error, self.context(what))
        };
        match step {
            JoinStep::Rejoin => Again::Now,
            JoinStep::RejoinAfterBackoff | JoinStep::FindCoordinator => {
                Again::AfterBackoff(error())
            }
            JoinStep::Fail(reason) => Again::Never(Error::broker(reason, self.context(what))),
            JoinStep::Sync { .. } | JoinStep::Stable => unreachable!("handled by the caller"),
        }
    }

    fn unanswered(&self, error: Error) -> Again {
        self.membership().handle_join_unanswered(&error.to_string());
        Again::from_error(error)
    }

    async fn join_round(&self, topics: &[String]) -> Result<Joined, Again> {
        let connection = self.connection().await.map_err(Again::from_error)?;
        let version = connection
            .version(ApiKey::JoinGroup)
            .map_err(Again::Never)?;
        let (member_id, generation) = self.membership().handle_join_sent();
        let request = self.join_request(topics, member_id, generation);
        let response = match connection
            .send(&request, version, self.join_timeout_ms())
            .await
        {
            Ok(response) => response,
            Err(error) => return Err(self.unanswered(error)),
        };
        let offered: Vec<&str> = self.settings.assignors.iter().map(|a| a.name()).collect();
        let answer = JoinAnswer {
            error: ResponseError::try_from_code(response.error_code),
            generation: response.generation_id,
            member_id: response.member_id.as_str(),
            leader_id: response.leader.as_str(),
            protocol_type: response.protocol_type.as_ref().map(|t| t.as_str()),
            protocol_name: response.protocol_name.as_ref().map(|n| n.as_str()),
        };
        let step = self.membership().handle_join_answer(&answer, &offered);
        let JoinStep::Sync { leader } = step else {
            return Err(self.again(step, response.error_code, "join"));
        };
        let protocol = self
            .membership()
            .protocol()
            .expect("a joined member has a protocol")
            .to_string();
        let (member_id, generation) = (response.member_id.to_string(), response.generation_id);
        tracing::info!(group = %self.settings.group_id, member = %member_id, generation, leader, %protocol, "joined");
        // A static leader that restarted into a stable group is told to
        // skip the assignment (v9): the coordinator keeps the current one.
        let (assignments, partition_counts) = if leader && !response.skip_assignment {
            let (assignments, counts) = self.assign(&protocol, &response.members).await?;
            (assignments, Some(counts))
        } else {
            (Vec::new(), None)
        };
        let assignment = self
            .sync(&connection, generation, &member_id, &protocol, assignments)
            .await?;
        Ok(Joined {
            generation,
            member_id,
            topics: topics.to_vec(),
            assignment: assignment.partitions,
            partition_counts,
        })
    }

    fn join_request(
        &self,
        topics: &[String],
        member_id: String,
        generation: i32,
    ) -> JoinGroupRequest {
        let mut subscription = Subscription::new(topics.iter().cloned());
        subscription.generation = generation;
        let metadata = encode_subscription(&subscription);
        let protocols = self
            .settings
            .assignors
            .iter()
            .map(|assignor| {
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(assignor.name()))
                    .with_metadata(metadata.clone())
            })
            .collect();
        let settings = &self.settings;
        let mut request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(settings.group_id.clone())))
            .with_session_timeout_ms(clamp_ms(settings.session_timeout_ms))
            .with_rebalance_timeout_ms(clamp_ms(settings.max_poll_interval_ms))
            .with_member_id(StrBytes::from_string(member_id))
            .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
            .with_protocols(protocols);
        // Set at every version: before v5 encoding fails loudly instead of
        // silently joining as a dynamic member (the same below for
        // SyncGroup, Heartbeat and OffsetCommit).
        request.group_instance_id = settings
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        request
    }

    /// The leader's work: decode every member's subscription, look up the
    /// partition counts, run the chosen assignor, encode the results.
    async fn assign(
        &self,
        protocol: &str,
        members: &[JoinGroupResponseMember],
    ) -> Result<(Vec<SyncGroupRequestAssignment>, BTreeMap<String, i32>), Again> {
        let assignor = Assignor::from_name(protocol).expect("the membership checked the protocol");
        let subscriptions: Vec<MemberSubscription> = members
            .iter()
            .map(|member| {
                let topics = match decode_subscription(&member.metadata) {
                    Ok(subscription) => subscription.topics.into_iter().collect(),
                    Err(detail) => {
                        tracing::warn!(member = %member.member_id.as_str(), %detail, "undecodable subscription; the member gets nothing");
                        BTreeSet::new()
                    }
                };
                MemberSubscription {
                    member_id: member.member_id.to_string(),
                    group_instance_id: member.group_instance_id.as_ref().map(|i| i.to_string()),
                    topics,
                }
            })
            .collect();
        let topics: Vec<String> = subscriptions
            .iter()
            .flat_map(|s| s.topics.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !topics.is_empty() {
            self.client
                .refresh_metadata(Some(&topics))
                .await
                .map_err(Again::from_error)?;
        }
        let metadata = self.client.metadata();
        let counts: BTreeMap<String, i32> = topics
            .iter()
            .map(|t| {
                let count = metadata.topics.get(t).map_or(0, |i| i.partition_count());
                (t.clone(), count)
            })
            .collect();
        let plan = assignor.assign(&subscriptions, &counts);
        tracing::debug!(group = %self.settings.group_id, ?plan, "assigned");
        let assignments = plan
            .into_iter()
            .map(|(member_id, partitions)| {
                let bytes = encode_assignment(&Assignment {
                    partitions,
                    user_data: None,
                });
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member_id))
                    .with_assignment(bytes)
            })
            .collect();
        Ok((assignments, counts))
    }

    async fn sync(
        &self,
        connection: &Connection,
        generation: i32,
        member_id: &str,
        protocol: &str,
        assignments: Vec<SyncGroupRequestAssignment>,
    ) -> Result<Assignment, Again> {
        let version = connection
            .version(ApiKey::SyncGroup)
            .map_err(Again::Never)?;
        let mut request = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(
                self.settings.group_id.clone(),
            )))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_assignments(assignments);
        request.group_instance_id = self
            .settings
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        if version >= 5 {
            request.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
            request.protocol_name = Some(StrBytes::from_string(protocol.to_string()));
        }
        // The coordinator answers once the leader's assignment arrives.
        // Meanwhile the member heartbeats, as Java's does, so that a slow
        // leader does not cost it its session.
        let timeout_ms = self.client.request_timeout_ms();
        let sent = connection.send(&request, version, timeout_ms);
        let response = tokio::select! {
            biased;
            sent = sent => sent,
            never = self.heartbeat_while_syncing(generation, member_id) => match never {},
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => return Err(self.unanswered(error)),
        };
        let error = ResponseError::try_from_code(response.error_code);
        let protocol_name = response.protocol_name.as_ref().map(|n| n.as_str());
        let step = self.membership().handle_sync_answer(error, protocol_name);
        if step != JoinStep::Stable {
            return Err(self.again(step, response.error_code, "sync"));
        }
        decode_assignment(&response.assignment).map_err(|detail| {
            // The member is stable but cannot read its share: leave the
            // generation so that the next join starts clean.
            self.membership().handle_left("undecodable assignment");
            Again::Never(Error::Protocol {
                address: connection.address().to_string(),
                detail: format!("SyncGroup assignment does not decode: {detail}"),
            })
        })
    }

    /// Heartbeats for `(generation, member_id)` until the group needs a
    /// rejoin, the membership changes, or a fatal error (kept for the
    /// consumer). Leaves the group when the consumer has not polled within
    /// `max_poll_interval_ms`, as Kafka's clients do.
    pub async fn heartbeat(&self, generation: i32, member_id: String) {
        let interval = Duration::from_millis(self.settings.heartbeat_interval_ms);
        let session = Duration::from_millis(self.settings.session_timeout_ms);
        let poll_interval = Duration::from_millis(self.settings.max_poll_interval_ms);
        let mut last_answer = Instant::now();
        let mut failures = 0u32;
        loop {
            let pause = match failures {
                0 => interval,
                n => interval.min(Duration::from_millis(self.client.retry_backoff_ms(n))),
            };
            tokio::time::sleep(pause).await;
            let polled = *self.last_poll.lock().expect("poll clock lock");
            if polled.elapsed() > poll_interval {
                let reason = "the consumer did not poll within max_poll_interval_ms";
                if let Err(error) = self.leave(reason).await {
                    tracing::debug!(%error, "leaving after the poll interval failed");
                }
                self.wake.notify_one();
                return;
            }
            let current = {
                let membership = self.membership();
                membership.is_current(generation, &member_id) && !membership.needs_rejoin()
            };
            if !current {
                return;
            }
            match self.heartbeat_once(generation, &member_id).await {
                Ok(Reaction::Done) => {
                    last_answer = Instant::now();
                    failures = 0;
                }
                Ok(Reaction::Retry | Reaction::FindCoordinator) => failures += 1,
                Err(error) => {
                    tracing::debug!(%error, "heartbeat got no answer");
                    failures += 1;
                }
                Ok(Reaction::Rejoin) => {
                    self.wake.notify_one();
                    return;
                }
                Ok(Reaction::Fail(error)) => {
                    self.fail(Error::broker(error, self.context("heartbeat")));
                    return;
                }
            }
            if last_answer.elapsed() >= session {
                // The coordinator has most likely dropped this member.
                let mut membership = self.membership();
                membership
                    .handle_coordinator_lost("no heartbeat answer within the session timeout");
                membership.request_rejoin("no heartbeat answer within the session timeout");
                drop(membership);
                self.wake.notify_one();
                return;
            }
        }
    }

    /// Heartbeats until dropped, for a member waiting for its SyncGroup
    /// answer. The answers only keep the session: the SyncGroup answer says
    /// how the join went.
    async fn heartbeat_while_syncing(
        &self,
        generation: i32,
        member_id: &str,
    ) -> std::convert::Infallible {
        let interval = Duration::from_millis(self.settings.heartbeat_interval_ms);
        loop {
            tokio::time::sleep(interval).await;
            match self.send_heartbeat(generation, member_id).await {
                Ok(error) => tracing::debug!(?error, "heartbeat while syncing"),
                Err(error) => tracing::debug!(%error, "heartbeat while syncing got no answer"),
            }
        }
    }

    async fn heartbeat_once(&self, generation: i32, member_id: &str) -> Result<Reaction> {
        let error = match self.send_heartbeat(generation, member_id).await {
            Ok(error) => error,
            Err(error) => {
                self.membership()
                    .handle_coordinator_lost("heartbeat got no answer");
                return Err(error);
            }
        };
        Ok(self
            .membership()
            .handle_heartbeat_answer(generation, member_id, error))
    }

    /// One Heartbeat on the coordinator connection; its error code.
    async fn send_heartbeat(
        &self,
        generation: i32,
        member_id: &str,
    ) -> Result<Option<ResponseError>> {
        let connection = self.connection().await?;
        let version = connection.version(ApiKey::Heartbeat)?;
        let mut request = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(
                self.settings.group_id.clone(),
            )))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()));
        request.group_instance_id = self
            .settings
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        let timeout_ms = self.client.request_timeout_ms();
        let response = connection.send(&request, version, timeout_ms).await?;
        Ok(ResponseError::try_from_code(response.error_code))
    }

    /// Sends LeaveGroup for a dynamic member (a static one stays in the
    /// group until its session times out, as in Kafka) and forgets the
    /// membership either way.
    pub async fn leave(&self, reason: &str) -> Result<()> {
        let member_id = self.membership().member_id().to_string();
        let result = if member_id.is_empty() || self.settings.group_instance_id.is_some() {
            Ok(())
        } else {
            self.send_leave(&member_id, reason).await
        };
        self.membership().handle_left(reason);
        result
    }

    async fn send_leave(&self, member_id: &str, reason: &str) -> Result<()> {
        let connection = self.connection().await?;
        let version = connection.version(ApiKey::LeaveGroup)?;
        let mut request = LeaveGroupRequest::default().with_group_id(GroupId(
            StrBytes::from_string(self.settings.group_id.clone()),
        ));
        if version >= 3 {
            request.members = vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(member_id.to_string()))
                .with_reason(Some(StrBytes::from_string(reason.to_string())))];
        } else {
            request.member_id = StrBytes::from_string(member_id.to_string());
        }
        let timeout_ms = self.client.request_timeout_ms();
        let response = connection.send(&request, version, timeout_ms).await?;
        let member_code = response.members.first().map_or(0, |m| m.error_code);
        let code = if response.error_code != 0 {
            response.error_code
        } else {
            member_code
        };
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            // Already gone (expired, or removed by a rebalance): the goal.
            Some(ResponseError::UnknownMemberId) => Ok(()),
            Some(error) => Err(Error::broker(error, self.context("leave"))),
        }
    }

    /// Commits `offsets` and waits for the answer, retrying retriable
    /// errors up to `COMMIT_ATTEMPTS_MAX` times.
    pub async fn commit_sync(
        self: &Arc<Self>,
        offsets: BTreeMap<TopicPartition, i64>,
        identity: CommitIdentity,
    ) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let offsets = Arc::new(offsets);
        let mut attempt = 1;
        loop {
            let outcome = match self.commit_send(offsets.clone(), identity.clone()).await {
                Ok(handle) => joined(handle.task.await),
                Err(error) => Attempt::unanswered(error),
            };
            match outcome.result {
                Err(error) if outcome.retry && attempt < COMMIT_ATTEMPTS_MAX => {
                    tracing::debug!(%error, attempt, "commit failed; retrying");
                    self.client.retry_pause(attempt).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Sends one commit of `offsets` and returns once it has its place on
    /// the coordinator connection; the handle resolves to the answer. Not
    /// retried, so that commits never reorder.
    pub async fn commit_send(
        self: &Arc<Self>,
        offsets: Arc<BTreeMap<TopicPartition, i64>>,
        identity: CommitIdentity,
    ) -> Result<CommitHandle> {
        let _order = self.commit_order.lock().await;
        let connection = self.connection().await?;
        let (queued, placed) = oneshot::channel();
        let member = self.clone();
        let task = tokio::spawn(async move {
            member
                .commit_on(&connection, &offsets, &identity, queued)
                .await
        });
        // Fires once the request is queued; dropped if it failed before.
        let _ = placed.await;
        Ok(CommitHandle { task })
    }

    async fn commit_on(
        &self,
        connection: &Connection,
        offsets: &BTreeMap<TopicPartition, i64>,
        identity: &CommitIdentity,
        queued: oneshot::Sender<()>,
    ) -> Attempt<()> {
        let version = match connection.version(ApiKey::OffsetCommit) {
            Ok(version) => version,
            Err(error) => return Attempt::unanswered(error),
        };
        let request = self.commit_request(offsets, identity);
        let timeout_ms = self.client.request_timeout_ms();
        let response = match connection
            .send_in_order(&request, version, timeout_ms, Some(queued))
            .await
        {
            Ok(response) => response,
            Err(error) => {
                self.membership()
                    .handle_coordinator_lost("commit got no answer");
                return Attempt::unanswered(error);
            }
        };
        let mut answered = BTreeSet::new();
        let mut first_error = None;
        for topic in &response.topics {
            for partition in &topic.partitions {
                let tp = TopicPartition::new(topic.name.0.to_string(), partition.partition_index);
                if let Some(error) = ResponseError::try_from_code(partition.error_code) {
                    first_error.get_or_insert((tp.clone(), error));
                }
                answered.insert(tp);
            }
        }
        if let Some(missing) = offsets.keys().find(|tp| !answered.contains(*tp)) {
            return Attempt::unanswered(Error::Protocol {
                address: connection.address().to_string(),
                detail: format!("the OffsetCommit answer does not mention {missing}"),
            });
        }
        let Some((tp, error)) = first_error else {
            tracing::debug!(group = %self.settings.group_id, partitions = offsets.len(), "committed");
            return Attempt::done(());
        };
        let reaction = self.membership().handle_commit_answer(
            identity.generation,
            &identity.member_id,
            Some(error),
        );
        if matches!(reaction, Reaction::Rejoin | Reaction::Fail(_)) {
            // The membership may now need a rejoin: let a waiting poll see it.
            self.wake.notify_one();
        }
        let context = self.context(&format!("commit {tp} at {}", offsets[&tp]));
        Attempt::answered(Error::broker(error, context), reaction)
    }

    fn commit_request(
        &self,
        offsets: &BTreeMap<TopicPartition, i64>,
        identity: &CommitIdentity,
    ) -> OffsetCommitRequest {
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, &offset) in offsets {
            topics.entry(&tp.topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(offset)
                    .with_committed_metadata(Some(StrBytes::default())),
            );
        }
        let mut request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(
                self.settings.group_id.clone(),
            )))
            .with_generation_id_or_member_epoch(identity.generation)
            .with_member_id(StrBytes::from_string(identity.member_id.clone()))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        request.group_instance_id = identity
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        request
    }

    /// The committed offset of each partition (`None` when there is none),
    /// retrying retriable errors up to `OFFSET_FETCH_ATTEMPTS_MAX` times.
    pub async fn committed(
        &self,
        tps: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        if tps.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut attempt = 1;
        loop {
            let outcome = self.committed_once(tps).await;
            match outcome.result {
                Err(error) if outcome.retry && attempt < OFFSET_FETCH_ATTEMPTS_MAX => {
                    tracing::debug!(%error, attempt, "offset fetch failed; retrying");
                    self.client.retry_pause(attempt).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn committed_once(
        &self,
        tps: &[TopicPartition],
    ) -> Attempt<BTreeMap<TopicPartition, Option<i64>>> {
        let connection = match self.connection().await {
            Ok(connection) => connection,
            Err(error) => return Attempt::unanswered(error),
        };
        let version = match connection.version(ApiKey::OffsetFetch) {
            Ok(version) => version,
            Err(error) => return Attempt::unanswered(error),
        };
        let request = self.offset_fetch_request(tps, version);
        let timeout_ms = self.client.request_timeout_ms();
        let response = match connection.send(&request, version, timeout_ms).await {
            Ok(response) => response,
            Err(error) => {
                self.membership()
                    .handle_coordinator_lost("offset fetch got no answer");
                return Attempt::unanswered(error);
            }
        };
        let (group_code, found) = read_offset_fetch(&response, version);
        let mut committed = BTreeMap::new();
        let mut first_error = ResponseError::try_from_code(group_code);
        for (tp, offset, code) in found {
            if let Some(error) = ResponseError::try_from_code(code) {
                first_error.get_or_insert(error);
            }
            committed.insert(tp, (offset >= 0).then_some(offset));
        }
        if let Some(error) = first_error {
            let reaction = self.membership().handle_offset_fetch_error(error);
            let error = Error::broker(error, self.context("fetch committed offsets"));
            return Attempt::answered(error, reaction);
        }
        let result = tps
            .iter()
            .map(|tp| match committed.get(tp) {
                Some(&offset) => Ok((tp.clone(), offset)),
                None => Err(Error::Protocol {
                    address: connection.address().to_string(),
                    detail: format!("the OffsetFetch answer does not mention {tp}"),
                }),
            })
            .collect();
        Attempt {
            result,
            retry: false,
        }
    }

    fn offset_fetch_request(&self, tps: &[TopicPartition], version: i16) -> OffsetFetchRequest {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in tps {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let group_id = GroupId(StrBytes::from_string(self.settings.group_id.clone()));
        let name = |topic: &str| TopicName(StrBytes::from_string(topic.to_string()));
        if version >= 8 {
            let topics = by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchRequestTopics::default()
                        .with_name(name(topic))
                        .with_partition_indexes(partitions)
                })
                .collect();
            let group = OffsetFetchRequestGroup::default()
                .with_group_id(group_id)
                .with_member_epoch(NO_MEMBER_EPOCH)
                .with_topics(Some(topics));
            // The top-level fields stay at their defaults, which v8+ omits,
            // except require_stable.
            OffsetFetchRequest::default()
                .with_groups(vec![group])
                .with_require_stable(self.settings.require_stable)
        } else {
            let topics = by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(name(topic))
                        .with_partition_indexes(partitions)
                })
                .collect();
            OffsetFetchRequest::default()
                .with_group_id(group_id)
                .with_topics(Some(topics))
                .with_require_stable(version >= 7 && self.settings.require_stable)
        }
    }
}

/// Asks any broker which node coordinates `key` (a group id with key type
/// 0, a transactional id with key type 1). One attempt; an error code in
/// the answer comes back as `Error::Broker` with `context`.
pub(crate) async fn find_coordinator<C: Connector>(
    client: &Client<C>,
    key_type: i8,
    key: &str,
    context: &str,
) -> Result<CoordinatorNode> {
    let connection = client.any_connection().await?;
    let version = connection.version(ApiKey::FindCoordinator)?;
    let key = StrBytes::from_string(key.to_string());
    let mut request = FindCoordinatorRequest::default().with_key_type(key_type);
    if version >= 4 {
        request.coordinator_keys = vec![key];
    } else {
        request.key = key;
    }
    let timeout_ms = client.request_timeout_ms();
    let response = connection.send(&request, version, timeout_ms).await?;
    let (code, message, node_id, host, port) = if version >= 4 {
        let Some(found) = response.coordinators.first() else {
            return Err(Error::Protocol {
                address: connection.address().to_string(),
                detail: "FindCoordinator answered no coordinator".into(),
            });
        };
        let found = found.clone();
        (
            found.error_code,
            found.error_message,
            found.node_id,
            found.host,
            found.port,
        )
    } else {
        (
            response.error_code,
            response.error_message,
            response.node_id,
            response.host,
            response.port,
        )
    };
    if let Some(error) = ResponseError::try_from_code(code) {
        return Err(Error::broker_with_message(
            error,
            context,
            message.as_ref().map(|m| m.as_str()),
        ));
    }
    Ok(CoordinatorNode {
        node_id: node_id.0,
        host: host.to_string(),
        port,
    })
}

/// `(group error code, [(partition, committed offset, error code)])` of an
/// OffsetFetch answer at any version.
pub(crate) fn read_offset_fetch(
    response: &OffsetFetchResponse,
    version: i16,
) -> (i16, Vec<(TopicPartition, i64, i16)>) {
    if version >= 8 {
        let Some(group) = response.groups.first() else {
            return (ResponseError::UnknownServerError.code(), Vec::new());
        };
        let found = group
            .topics
            .iter()
            .flat_map(|topic| {
                topic.partitions.iter().map(move |p| {
                    let tp = TopicPartition::new(topic.name.0.to_string(), p.partition_index);
                    (tp, p.committed_offset, p.error_code)
                })
            })
            .collect();
        (group.error_code, found)
    } else {
        let found = response
            .topics
            .iter()
            .flat_map(|topic| {
                topic.partitions.iter().map(move |p| {
                    let tp = TopicPartition::new(topic.name.0.to_string(), p.partition_index);
                    (tp, p.committed_offset, p.error_code)
                })
            })
            .collect();
        (response.error_code, found)
    }
}

fn clamp_ms(ms: u64) -> i32 {
    i32::try_from(ms).unwrap_or(i32::MAX)
}
