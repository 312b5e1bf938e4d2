//! The classic consumer-group protocol of the group coordinator, as a pure
//! state machine: members join, the coordinator waits for every known
//! member (or the rebalance timeout), starts a new generation, hands the
//! leader every member's metadata, and passes the leader's assignment to the
//! others; heartbeats keep members alive, and silence for the session
//! timeout removes them and rebalances.
//!
//! JoinGroup and SyncGroup answers are often deferred: the caller passes a
//! token, and the answer comes out later from `take_resolved`. Committed
//! offsets live here too (persisted by the node in `__consumer_offsets`),
//! and so do a transaction's offsets until its marker commits or drops
//! them (`pending`).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError;

pub type Token = u64;

/// Kafka's bounds on a member's session timeout (broker defaults).
pub const SESSION_TIMEOUT_MIN_MS: i32 = 6_000;
pub const SESSION_TIMEOUT_MAX_MS: i32 = 1_800_000;
/// Members one group may hold.
pub const MEMBERS_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    /// Where the JoinGroup that added the member came from ("/127.0.0.1").
    /// Kafka fixes it then: rejoins, even from another connection, and a
    /// static member's replacement keep it.
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// (protocol name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// The deferred JoinGroup answer this member waits for.
    pub awaiting_join: Option<Token>,
    pub awaiting_sync: Option<Token>,
    pub session_deadline_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub state: State,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Members told their id (MEMBER_ID_REQUIRED) and expected to join with it.
    pending_members: BTreeMap<String, i64>,
    /// When the join phase ends even if members are missing.
    rebalance_deadline_ms: Option<i64>,
    /// The first rebalance of an empty group waits until then for more members.
    join_not_before_ms: i64,
}

impl Default for Group {
    fn default() -> Group {
        Group::new()
    }
}

impl Group {
    pub fn new() -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            rebalance_deadline_ms: None,
            join_not_before_ms: 0,
        }
    }

    /// A member's metadata for the group's chosen protocol.
    pub fn metadata_of(&self, member: &Member) -> Bytes {
        let protocol = self.protocol.as_deref().unwrap_or_default();
        member
            .protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A group's offsets, by topic and partition.
pub type GroupOffsets = BTreeMap<(String, i32), Committed>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Where the commit's record is in `__consumer_offsets` (-1 before it
    /// is written). A transaction's commit replaces a committed offset only
    /// when its record is the later one, as Kafka compares them.
    pub record_offset: i64,
}

/// A JoinGroup request, decoded.
#[derive(Debug, Clone)]
pub struct Join {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    /// The peer of the connection the request came on, as Kafka writes it.
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id first gets one and rejoins.
    pub require_known_member_id: bool,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata, for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    pub error: Option<ResponseError>,
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Join(JoinAnswer),
    Sync(SyncAnswer),
}

#[derive(Debug, Default)]
pub struct Coordinator {
    pub groups: BTreeMap<String, Group>,
    pub offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>>,
    /// Transactional offsets written and not yet committed or aborted, by
    /// group and producer id: OffsetFetch does not see them.
    pending: BTreeMap<String, BTreeMap<i64, GroupOffsets>>,
    resolved: Vec<(Token, Resolved)>,
    /// How long the first rebalance of an empty group waits for more members.
    pub initial_rebalance_delay_ms: i64,
    /// Mutation `same-assignment-for-all` (never set without the feature).
    pub same_assignment_for_all: bool,
    /// Groups whose generation, members or assignment changed since the
    /// last `take_changed`: the node records them.
    changed: std::collections::BTreeSet<String>,
}

fn join_error(error: ResponseError, member_id: &str) -> JoinAnswer {
    JoinAnswer {
        error: Some(error),
        generation: -1,
        protocol_type: String::new(),
        protocol: None,
        leader: String::new(),
        member_id: member_id.to_string(),
        members: Vec::new(),
    }
}

fn sync_error(error: ResponseError) -> SyncAnswer {
    SyncAnswer {
        error: Some(error),
        protocol_type: String::new(),
        protocol: None,
        assignment: Bytes::new(),
    }
}

impl Coordinator {
    pub fn new(initial_rebalance_delay_ms: i64) -> Coordinator {
        Coordinator {
            initial_rebalance_delay_ms,
            ..Coordinator::default()
        }
    }

    /// Groups to record since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Restores a group recorded before a restart. Its members keep their
    /// generation and assignment and must heartbeat within their session.
    pub fn restore(&mut self, now_ms: i64, group_id: &str, mut group: Group) {
        for member in group.members.values_mut() {
            member.session_deadline_ms = now_ms + member.session_timeout_ms as i64;
            member.awaiting_join = None;
            member.awaiting_sync = None;
        }
        group.state = if group.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        // A record may name a leader that is not a member (an older writer):
        // a stable group's leader is one of its members.
        if group
            .leader
            .as_ref()
            .is_none_or(|l| !group.members.contains_key(l))
        {
            group.leader = group.members.keys().next().cloned();
        }
        group.pending_members.clear();
        group.rebalance_deadline_ms = None;
        self.groups.insert(group_id.to_string(), group);
    }

    /// Answers deferred since the last call.
    pub fn take_resolved(&mut self) -> Vec<(Token, Resolved)> {
        std::mem::take(&mut self.resolved)
    }

    /// Handles a JoinGroup; None means the answer comes later for `token`.
    pub fn join(
        &mut self,
        now_ms: i64,
        token: Token,
        join: Join,
        new_member_id: impl FnOnce() -> String,
    ) -> Option<JoinAnswer> {
        if join.group_id.is_empty() {
            return Some(join_error(ResponseError::InvalidGroupId, &join.member_id));
        }
        if !(SESSION_TIMEOUT_MIN_MS..=SESSION_TIMEOUT_MAX_MS).contains(&join.session_timeout_ms) {
            return Some(join_error(
                ResponseError::InvalidSessionTimeout,
                &join.member_id,
            ));
        }
        let group = self.groups.entry(join.group_id.clone()).or_default();
        let consistent = group.members.is_empty()
            || (group.protocol_type == join.protocol_type
                && join.protocols.iter().any(|(name, _)| {
                    group
                        .members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                }));
        if !consistent || join.protocols.is_empty() {
            return Some(join_error(
                ResponseError::InconsistentGroupProtocol,
                &join.member_id,
            ));
        }
        if let Some(instance) = join.group_instance_id.clone() {
            let holder = group
                .members
                .values()
                .find(|m| m.group_instance_id.as_deref() == Some(instance.as_str()))
                .map(|m| m.member_id.clone());
            match holder {
                Some(old) if join.member_id.is_empty() => {
                    return self.replace_static_member(now_ms, token, join, &old, new_member_id());
                }
                Some(old) if old != join.member_id => {
                    return Some(join_error(ResponseError::FencedInstanceId, &join.member_id));
                }
                None if join.member_id.is_empty() => {
                    // Static members skip MEMBER_ID_REQUIRED.
                    let member_id = new_member_id();
                    return self.add_member(now_ms, token, join, member_id);
                }
                _ => {}
            }
        }
        let group = self.groups.get_mut(&join.group_id).expect("present");
        let known = group.members.contains_key(&join.member_id);
        if join.member_id.is_empty() {
            let member_id = new_member_id();
            if join.require_known_member_id {
                group
                    .pending_members
                    .insert(member_id.clone(), now_ms + join.session_timeout_ms as i64);
                return Some(join_error(ResponseError::MemberIdRequired, &member_id));
            }
            return self.add_member(now_ms, token, join, member_id);
        }
        if !known && group.pending_members.remove(&join.member_id).is_none() {
            return Some(join_error(ResponseError::UnknownMemberId, &join.member_id));
        }
        if known {
            let group = self.groups.get_mut(&join.group_id).expect("present");
            let member = group.members.get_mut(&join.member_id).expect("known");
            let unchanged = member.protocols == join.protocols;
            if group.state == State::Stable
                && unchanged
                && group.leader.as_deref() != Some(join.member_id.as_str())
            {
                // A follower rejoining with nothing new: the current generation stands.
                member.session_deadline_ms = now_ms + member.session_timeout_ms as i64;
                return Some(answer_for(group, &join.member_id));
            }
            member.protocols = join.protocols;
            member.session_timeout_ms = join.session_timeout_ms;
            member.rebalance_timeout_ms = join.rebalance_timeout_ms;
            member.awaiting_join = Some(token);
            prepare_rebalance(
                &join.group_id,
                group,
                now_ms,
                0,
                "a member rejoined with new metadata",
            );
            return self.try_complete_join(&join.group_id.clone(), now_ms);
        }
        let member_id = join.member_id.clone();
        self.add_member(now_ms, token, join, member_id)
    }

    /// A static member restarted: its new member id takes the old one's
    /// place (and assignment); requests still waiting for the old id are
    /// fenced. With nothing changed in a stable group, no rebalance. As in
    /// Kafka, the member keeps its client id and host; protocols and
    /// timeouts come from the new join.
    fn replace_static_member(
        &mut self,
        now_ms: i64,
        token: Token,
        join: Join,
        old: &str,
        new_id: String,
    ) -> Option<JoinAnswer> {
        let Coordinator {
            groups, resolved, ..
        } = self;
        let group = groups.get_mut(&join.group_id).expect("present");
        let mut member = group.members.remove(old).expect("found by instance id");
        if let Some(waiting) = member.awaiting_join.take() {
            resolved.push((
                waiting,
                Resolved::Join(join_error(ResponseError::FencedInstanceId, old)),
            ));
        }
        if let Some(waiting) = member.awaiting_sync.take() {
            resolved.push((
                waiting,
                Resolved::Sync(sync_error(ResponseError::FencedInstanceId)),
            ));
        }
        let unchanged = member.protocols == join.protocols;
        member.member_id = new_id.clone();
        member.protocols = join.protocols;
        member.session_timeout_ms = join.session_timeout_ms;
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        member.session_deadline_ms = now_ms + join.session_timeout_ms as i64;
        if group.leader.as_deref() == Some(old) {
            group.leader = Some(new_id.clone());
        }
        if group.state == State::Stable && unchanged {
            group.members.insert(new_id.clone(), member);
            self.changed.insert(join.group_id.clone());
            return Some(answer_for(group, &new_id));
        }
        member.awaiting_join = Some(token);
        group.members.insert(new_id, member);
        prepare_rebalance(&join.group_id, group, now_ms, 0, "a member joined");
        self.try_complete_join(&join.group_id, now_ms)
    }

    fn add_member(
        &mut self,
        now_ms: i64,
        token: Token,
        join: Join,
        member_id: String,
    ) -> Option<JoinAnswer> {
        let delay = self.initial_rebalance_delay_ms;
        let group = self
            .groups
            .get_mut(&join.group_id)
            .expect("created by join");
        if group.members.len() >= MEMBERS_MAX {
            return Some(join_error(ResponseError::GroupMaxSizeReached, &member_id));
        }
        if group.members.is_empty() {
            group.protocol_type = join.protocol_type.clone();
        }
        let was_empty = group.state == State::Empty;
        group.members.insert(
            member_id.clone(),
            Member {
                member_id: member_id.clone(),
                group_instance_id: join.group_instance_id,
                client_id: join.client_id,
                client_host: join.client_host,
                session_timeout_ms: join.session_timeout_ms,
                rebalance_timeout_ms: join.rebalance_timeout_ms,
                protocols: join.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(token),
                awaiting_sync: None,
                session_deadline_ms: now_ms + join.session_timeout_ms as i64,
            },
        );
        let delay_ms = if was_empty { delay } else { 0 };
        prepare_rebalance(&join.group_id, group, now_ms, delay_ms, "a member joined");
        self.try_complete_join(&join.group_id, now_ms)
    }

    /// Ends the join phase when every member rejoined (and any initial
    /// delay passed) or the rebalance deadline passed. Returns nothing
    /// directly: answers go to `resolved`.
    fn try_complete_join(&mut self, group_id: &str, now_ms: i64) -> Option<JoinAnswer> {
        let Coordinator {
            groups, resolved, ..
        } = self;
        let group = groups.get_mut(group_id)?;
        if group.state != State::PreparingRebalance {
            return None;
        }
        // SyncGroup requests of the generation being replaced get their
        // answer now: the member must join again.
        for member in group.members.values_mut() {
            if let Some(token) = member.awaiting_sync.take() {
                resolved.push((
                    token,
                    Resolved::Sync(sync_error(ResponseError::RebalanceInProgress)),
                ));
            }
        }
        let all_joined = group.members.values().all(|m| m.awaiting_join.is_some());
        let deadline = group.rebalance_deadline_ms.unwrap_or(now_ms);
        let ready = all_joined && now_ms >= group.join_not_before_ms;
        if !ready && now_ms < deadline {
            return None;
        }
        // Members that did not rejoin in time leave the group.
        let late: Vec<String> = group
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in late {
            if let Some(member) = group.members.remove(&id) {
                answer_removed(resolved, member);
            }
        }
        if group.members.is_empty() {
            group.state = State::Empty;
            group.generation += 1;
            group.leader = None;
            group.protocol = None;
            self.changed.insert(group_id.to_string());
            return None;
        }
        group.generation += 1;
        group.state = State::CompletingRebalance;
        group.rebalance_deadline_ms = None;
        group.protocol = select_protocol(group);
        tracing::info!(
            group = group_id,
            generation = group.generation,
            members = group.members.len(),
            protocol = group.protocol.as_deref().unwrap_or(""),
            "group stabilized; awaiting the leader's assignment"
        );
        if group
            .leader
            .as_ref()
            .is_none_or(|l| !group.members.contains_key(l))
        {
            group.leader = group.members.keys().next().cloned();
        }
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let answer = answer_for(group, &id);
            let member = group.members.get_mut(&id).expect("listed");
            member.session_deadline_ms = now_ms + member.session_timeout_ms as i64;
            if let Some(token) = member.awaiting_join.take() {
                self.resolved.push((token, Resolved::Join(answer)));
            }
        }
        None
    }

    pub fn sync(
        &mut self,
        now_ms: i64,
        token: Token,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Option<SyncAnswer> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Some(sync_error(ResponseError::UnknownMemberId));
        };
        if !group.members.contains_key(member_id) {
            return Some(sync_error(ResponseError::UnknownMemberId));
        }
        if generation != group.generation {
            return Some(sync_error(ResponseError::IllegalGeneration));
        }
        match group.state {
            State::Empty | State::PreparingRebalance => {
                Some(sync_error(ResponseError::RebalanceInProgress))
            }
            State::Stable => {
                let member = &group.members[member_id];
                Some(SyncAnswer {
                    error: None,
                    protocol_type: group.protocol_type.clone(),
                    protocol: group.protocol.clone(),
                    assignment: member.assignment.clone(),
                })
            }
            State::CompletingRebalance => {
                let member = group.members.get_mut(member_id).expect("checked");
                member.awaiting_sync = Some(token);
                member.session_deadline_ms = now_ms + member.session_timeout_ms as i64;
                if group.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    if self.same_assignment_for_all {
                        let own = given.get(member_id).cloned().unwrap_or_default();
                        for assignment in given.values_mut() {
                            *assignment = own.clone();
                        }
                    }
                    for (id, member) in group.members.iter_mut() {
                        member.assignment = given.get(id).cloned().unwrap_or_default();
                    }
                    group.state = State::Stable;
                    self.changed.insert(group_id.to_string());
                    for member in group.members.values_mut() {
                        if let Some(waiting) = member.awaiting_sync.take() {
                            let answer = SyncAnswer {
                                error: None,
                                protocol_type: group.protocol_type.clone(),
                                protocol: group.protocol.clone(),
                                assignment: member.assignment.clone(),
                            };
                            self.resolved.push((waiting, Resolved::Sync(answer)));
                        }
                    }
                }
                None
            }
        }
    }

    /// Handles a heartbeat; returns the error for the member, if any.
    pub fn heartbeat(
        &mut self,
        now_ms: i64,
        group_id: &str,
        generation: i32,
        member_id: &str,
    ) -> Option<ResponseError> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        member.session_deadline_ms = now_ms + member.session_timeout_ms as i64;
        if generation != group.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        match group.state {
            State::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Removes members that leave; returns the error for each.
    pub fn leave(
        &mut self,
        now_ms: i64,
        group_id: &str,
        member_ids: &[String],
    ) -> Vec<Option<ResponseError>> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return member_ids
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect();
        };
        let mut errors = Vec::new();
        for id in member_ids {
            match group.members.remove(id) {
                Some(member) => {
                    answer_removed(&mut self.resolved, member);
                    errors.push(None);
                }
                None => errors.push(Some(ResponseError::UnknownMemberId)),
            }
        }
        self.after_members_left(group_id, now_ms);
        errors
    }

    fn after_members_left(&mut self, group_id: &str, now_ms: i64) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        if group.members.is_empty() {
            group.state = State::Empty;
            group.leader = None;
            group.protocol = None;
            group.generation += 1;
            group.rebalance_deadline_ms = None;
            self.changed.insert(group_id.to_string());
            return;
        }
        if group.state != State::PreparingRebalance {
            // Followers waiting on a sync of the old generation must rejoin.
            for member in group.members.values_mut() {
                if let Some(token) = member.awaiting_sync.take() {
                    self.resolved.push((
                        token,
                        Resolved::Sync(sync_error(ResponseError::RebalanceInProgress)),
                    ));
                }
            }
            prepare_rebalance(group_id, group, now_ms, 0, "a member left");
        }
        self.try_complete_join(group_id, now_ms);
    }

    /// True when a static member's instance id now belongs to another member
    /// id: the caller is an older instance and is fenced (FENCED_INSTANCE_ID).
    pub fn fenced(&self, group_id: &str, member_id: &str, instance: Option<&str>) -> bool {
        let (Some(instance), Some(group)) = (instance, self.groups.get(group_id)) else {
            return false;
        };
        group
            .members
            .values()
            .any(|m| m.group_instance_id.as_deref() == Some(instance) && m.member_id != member_id)
    }

    /// Checks whether a member may commit offsets now.
    pub fn may_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), ResponseError> {
        let group = self.groups.get(group_id);
        let members = group.map_or(0, |g| g.members.len());
        if generation < 0 && member_id.is_empty() {
            // Simple consumers (assign, no membership) may commit to a group with no members.
            return if members == 0 {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        let Some(group) = group else {
            return Err(ResponseError::IllegalGeneration);
        };
        if !group.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        // As Kafka: a member of the current generation may still commit while
        // the group prepares a rebalance (its heartbeat tells it to rejoin);
        // between join and sync the generation is not settled yet.
        if group.state == State::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// The earliest time something must happen (a session or a rebalance ends).
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.groups
            .values()
            .flat_map(|g| {
                let sessions = g
                    .members
                    .values()
                    .filter(|m| m.awaiting_join.is_none())
                    .map(|m| m.session_deadline_ms);
                // The initial delay matters only once everyone joined; before
                // that the rebalance deadline is what bounds the wait (a
                // past delay would otherwise be a deadline due forever).
                let all_joined = g.members.values().all(|m| m.awaiting_join.is_some());
                let joining = (g.state == State::PreparingRebalance && all_joined)
                    .then_some(g.join_not_before_ms);
                sessions
                    .chain(g.rebalance_deadline_ms)
                    .chain(joining)
                    .chain(g.pending_members.values().copied())
            })
            .min()
    }

    /// Expires silent members and overdue rebalances.
    pub fn expire(&mut self, now_ms: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            let group = self.groups.get_mut(&id).expect("listed");
            group
                .pending_members
                .retain(|_, deadline| *deadline > now_ms);
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| m.awaiting_join.is_none() && m.session_deadline_ms <= now_ms)
                .map(|m| m.member_id.clone())
                .collect();
            for member_id in &expired {
                tracing::info!(group = %id, member = %member_id, "member session expired");
                if let Some(member) = group.members.remove(member_id) {
                    answer_removed(&mut self.resolved, member);
                }
            }
            if !expired.is_empty() {
                self.after_members_left(&id, now_ms);
            } else {
                self.try_complete_join(&id, now_ms);
            }
        }
    }

    /// Records a commit (after the node wrote it).
    pub fn commit(&mut self, group_id: &str, topic: &str, partition: i32, committed: Committed) {
        self.groups.entry(group_id.to_string()).or_default();
        self.offsets
            .entry(group_id.to_string())
            .or_default()
            .insert((topic.to_string(), partition), committed);
    }

    /// At load: drops the groups that have neither a record (`recorded`
    /// lists those restored from one) nor a committed offset left.
    pub fn forget_unrecorded_empty(&mut self, recorded: &[String]) {
        self.forget_unrecorded_empty_where(recorded, |_| true);
    }

    /// `forget_unrecorded_empty`, for the groups `among` selects only.
    pub fn forget_unrecorded_empty_where(
        &mut self,
        recorded: &[String],
        among: impl Fn(&str) -> bool,
    ) {
        let offsets = &mut self.offsets;
        offsets.retain(|id, committed| !committed.is_empty() || !among(id));
        // A group with an open transaction's offsets stays until it ends.
        let pending = &self.pending;
        self.groups.retain(|id, group| {
            !among(id)
                || !group.members.is_empty()
                || offsets.contains_key(id)
                || pending.contains_key(id)
                || recorded.contains(id)
        });
    }

    /// Forgets a committed offset (its tombstone was written), and the
    /// open transactions' offsets of the same partition, as Kafka's replay
    /// of a tombstone does: a later commit marker brings none of them back.
    pub fn forget_offset(&mut self, group_id: &str, topic: &str, partition: i32) {
        let key = (topic.to_string(), partition);
        if let Some(offsets) = self.offsets.get_mut(group_id) {
            offsets.remove(&key);
        }
        self.forget_pending_of(group_id, &key);
    }

    /// Committed offsets of groups without members older than the
    /// retention, to be removed (Kafka's `offsets.retention.minutes`). A
    /// partition with an open transaction's offset waits for its end.
    pub fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> Vec<(String, String, i32)> {
        let mut expired = Vec::new();
        for (group_id, offsets) in &self.offsets {
            if self
                .groups
                .get(group_id)
                .is_some_and(|g| !g.members.is_empty())
            {
                continue;
            }
            for ((topic, partition), committed) in offsets {
                if committed.commit_timestamp_ms.saturating_add(retention_ms) < now_ms
                    && !self.has_pending(group_id, topic, *partition)
                {
                    expired.push((group_id.clone(), topic.clone(), *partition));
                }
            }
        }
        expired
    }

    /// Checks what holds between any two inputs.
    pub fn invariants(&self) {
        for (id, group) in &self.groups {
            assert!(group.generation >= 0, "group {id}: generations start at 0");
            assert!(group.members.len() <= MEMBERS_MAX);
            assert_eq!(
                group.members.is_empty(),
                group.state == State::Empty,
                "group {id}: empty exactly when it has no members"
            );
            if matches!(group.state, State::CompletingRebalance | State::Stable) {
                let leader = group.leader.as_ref().expect("a settled group has a leader");
                assert!(
                    group.members.contains_key(leader),
                    "group {id}: the leader is a member"
                );
                assert!(group.rebalance_deadline_ms.is_none());
            }
            if group.state == State::Empty {
                assert!(
                    group.leader.is_none(),
                    "group {id}: an empty group has no leader"
                );
            }
            for (member_id, member) in &group.members {
                assert_eq!(member_id, &member.member_id);
                if member.awaiting_sync.is_some() {
                    assert_eq!(
                        group.state,
                        State::CompletingRebalance,
                        "group {id}: sync waiters only while completing a rebalance"
                    );
                }
                if member.awaiting_join.is_some() {
                    assert_eq!(
                        group.state,
                        State::PreparingRebalance,
                        "group {id}: join waiters only while preparing a rebalance"
                    );
                }
            }
        }
        for id in self.offsets.keys() {
            assert!(
                self.groups.contains_key(id),
                "committed offsets belong to a known group"
            );
        }
        self.pending_invariants();
    }

    /// Deletes an empty group and its offsets, the open transactions'
    /// included.
    pub fn delete(&mut self, group_id: &str) -> Result<(), ResponseError> {
        match self.groups.get(group_id) {
            None if !self.offsets.contains_key(group_id) => Err(ResponseError::GroupIdNotFound),
            Some(group) if !group.members.is_empty() => Err(ResponseError::NonEmptyGroup),
            _ => {
                self.groups.remove(group_id);
                self.offsets.remove(group_id);
                self.pending.remove(group_id);
                Ok(())
            }
        }
    }
}

/// Answers whatever a removed member was still waiting for.
fn answer_removed(resolved: &mut Vec<(Token, Resolved)>, member: Member) {
    if let Some(token) = member.awaiting_join {
        resolved.push((
            token,
            Resolved::Join(join_error(
                ResponseError::UnknownMemberId,
                &member.member_id,
            )),
        ));
    }
    if let Some(token) = member.awaiting_sync {
        resolved.push((
            token,
            Resolved::Sync(sync_error(ResponseError::UnknownMemberId)),
        ));
    }
}

/// Enters PreparingRebalance; `delay_ms` holds an empty group's first
/// rebalance open for more members.
fn prepare_rebalance(group_id: &str, group: &mut Group, now_ms: i64, delay_ms: i64, reason: &str) {
    let timeout = group
        .members
        .values()
        .map(|m| m.rebalance_timeout_ms as i64)
        .max()
        .unwrap_or(0);
    if group.state != State::PreparingRebalance {
        tracing::info!(
            group = group_id,
            from = group.state.name(),
            generation = group.generation,
            members = group.members.len(),
            reason,
            "preparing to rebalance"
        );
        group.state = State::PreparingRebalance;
        group.join_not_before_ms = now_ms + delay_ms;
        group.rebalance_deadline_ms = Some(now_ms + timeout.max(delay_ms));
    }
}

/// The protocol every member supports with the most votes (each member
/// votes for its first supported choice), ties to the leader's order.
fn select_protocol(group: &Group) -> Option<String> {
    let first = group.members.values().next()?;
    let candidates: Vec<&String> = first
        .protocols
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
        })
        .collect();
    let votes = |name: &String| {
        group
            .members
            .values()
            .filter(|m| {
                m.protocols
                    .iter()
                    .map(|(n, _)| n)
                    .find(|n| candidates.contains(n))
                    == Some(name)
            })
            .count()
    };
    let mut best: Option<(&String, usize)> = None;
    for name in &candidates {
        let count = votes(name);
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((name, count));
        }
    }
    best.map(|(name, _)| name.clone())
}

fn answer_for(group: &Group, member_id: &str) -> JoinAnswer {
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .values()
            .map(|m| {
                (
                    m.member_id.clone(),
                    m.group_instance_id.clone(),
                    group.metadata_of(m),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinAnswer {
        error: None,
        generation: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol: group.protocol.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

mod pending;
#[cfg(test)]
mod tests;
