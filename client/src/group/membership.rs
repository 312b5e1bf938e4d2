//! A consumer's membership in its group as a plain state machine, without
//! I/O: who the coordinator is, the member id and generation, and how every
//! group answer changes them. The driver (`group::member`) sends requests,
//! hands each answer to a `handle_*` method and does what the returned step
//! says; `handle_*` methods end by checking the invariants.
//!
//! The reactions follow Kafka's Java client:
//! - JoinGroup MEMBER_ID_REQUIRED: keep the id the coordinator gave, join again.
//! - UNKNOWN_MEMBER_ID: forget the member id and generation, join again as new.
//! - ILLEGAL_GENERATION: forget the generation, keep the member id, join again.
//! - REBALANCE_IN_PROGRESS: join again; the generation stays valid until
//!   then, so the owned partitions can still be committed.
//! - NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE: forget the coordinator,
//!   find it again and retry.
//! - COORDINATOR_LOAD_IN_PROGRESS: retry after a backoff.
//! - Anything else (FENCED_INSTANCE_ID, INCONSISTENT_GROUP_PROTOCOL,
//!   INVALID_SESSION_TIMEOUT, ...) fails the operation for the caller.
//!
//! An answer to a heartbeat or commit sent for an older generation or
//! member id never resets the current one.

use kafka_protocol::ResponseError;

use crate::group::protocol::NO_GENERATION;

/// The coordinator of the group, as FindCoordinator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorNode {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

impl CoordinatorNode {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Not in a generation: never joined, left, or reset by an error.
    Unjoined,
    /// JoinGroup sent; waiting for the generation to form.
    Joining,
    /// In a generation; SyncGroup sent, waiting for the assignment.
    Syncing,
    /// Holds the generation's assignment; heartbeats keep it.
    Stable,
}

/// What the driver does after a JoinGroup or SyncGroup answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinStep {
    /// Joined a generation: send SyncGroup (with every member's assignment
    /// when this member leads).
    Sync { leader: bool },
    /// The assignment arrived: the member is stable.
    Stable,
    /// Send JoinGroup again at once.
    Rejoin,
    /// Wait a retry backoff, then send JoinGroup again.
    RejoinAfterBackoff,
    /// Find the coordinator again (after a backoff), then join.
    FindCoordinator,
    /// Give up; the caller sees the error.
    Fail(ResponseError),
}

/// What the driver does after a heartbeat, commit or offset fetch answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Success, or an answer about an older generation: nothing to do.
    Done,
    /// Send the same request again after a backoff.
    Retry,
    /// The coordinator moved: find it again, then retry.
    FindCoordinator,
    /// The member must join again; the request is not retried.
    Rejoin,
    /// The operation failed for good.
    Fail(ResponseError),
}

/// The parts of a JoinGroup answer the state machine needs.
#[derive(Debug, Clone, Copy)]
pub struct JoinAnswer<'a> {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub member_id: &'a str,
    pub leader_id: &'a str,
    /// Null before v7 when the broker has none; checked when present.
    pub protocol_type: Option<&'a str>,
    pub protocol_name: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Membership {
    member_id: String,
    generation: i32,
    /// The assignor the coordinator chose for the current generation.
    protocol: Option<String>,
    leader_id: String,
    state: MemberState,
    coordinator: Option<CoordinatorNode>,
    /// Why the member must join again, once something said so.
    rejoin_reason: Option<String>,
}

impl Default for Membership {
    fn default() -> Membership {
        Membership::new()
    }
}

impl Membership {
    pub fn new() -> Membership {
        Membership {
            member_id: String::new(),
            generation: NO_GENERATION,
            protocol: None,
            leader_id: String::new(),
            state: MemberState::Unjoined,
            coordinator: None,
            rejoin_reason: None,
        }
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn state(&self) -> MemberState {
        self.state
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub fn is_leader(&self) -> bool {
        self.state == MemberState::Stable && self.leader_id == self.member_id
    }

    pub fn coordinator(&self) -> Option<&CoordinatorNode> {
        self.coordinator.as_ref()
    }

    pub fn rejoin_reason(&self) -> Option<&str> {
        self.rejoin_reason.as_deref()
    }

    /// Whether a stable member must join again (or never was stable).
    pub fn needs_rejoin(&self) -> bool {
        self.state != MemberState::Stable || self.rejoin_reason.is_some()
    }

    /// The generation and member id a commit may use: only a stable member
    /// has them (it stays stable while it is told to rejoin).
    pub fn stable_identity(&self) -> Option<(i32, String)> {
        (self.state == MemberState::Stable).then(|| (self.generation, self.member_id.clone()))
    }

    /// Whether a request sent as `(generation, member_id)` speaks for the
    /// current membership.
    pub fn is_current(&self, generation: i32, member_id: &str) -> bool {
        generation >= 0 && generation == self.generation && member_id == self.member_id
    }

    /// Whether an answer to a heartbeat or commit sent as `(generation,
    /// member_id)` may change the membership: only a stable member's. While
    /// a join is under way the join's own answers decide (a commit still in
    /// flight from before must not reset a join half-way).
    fn answer_counts(&self, generation: i32, member_id: &str) -> bool {
        self.state == MemberState::Stable && self.is_current(generation, member_id)
    }

    pub fn handle_coordinator_found(&mut self, node: CoordinatorNode) {
        self.coordinator = Some(node);
        self.invariants();
    }

    pub fn handle_coordinator_lost(&mut self, reason: &str) {
        if let Some(node) = self.coordinator.take() {
            tracing::info!(coordinator = node.node_id, reason, "group coordinator lost");
        }
        self.invariants();
    }

    pub fn request_rejoin(&mut self, reason: &str) {
        if self.rejoin_reason.is_none() {
            tracing::info!(member = %self.member_id, generation = self.generation, reason, "rejoin requested");
            self.rejoin_reason = Some(reason.to_string());
        }
        self.invariants();
    }

    /// JoinGroup is about to go out; returns the member id to send and the
    /// generation to name in the subscription.
    pub fn handle_join_sent(&mut self) -> (String, i32) {
        self.state = MemberState::Joining;
        self.rejoin_reason = None;
        self.invariants();
        (self.member_id.clone(), self.generation)
    }

    /// A JoinGroup answer; `offered` are the protocol names the member sent.
    pub fn handle_join_answer(&mut self, answer: &JoinAnswer<'_>, offered: &[&str]) -> JoinStep {
        assert_eq!(
            self.state,
            MemberState::Joining,
            "a join answer without a join"
        );
        self.state = MemberState::Unjoined;
        let step = match answer.error {
            None => self.joined(answer, offered),
            Some(ResponseError::MemberIdRequired) if !answer.member_id.is_empty() => {
                self.member_id = answer.member_id.to_string();
                JoinStep::Rejoin
            }
            Some(error) => self.join_failed(error),
        };
        self.invariants();
        step
    }

    fn joined(&mut self, answer: &JoinAnswer<'_>, offered: &[&str]) -> JoinStep {
        let protocol = answer.protocol_name.filter(|name| offered.contains(name));
        let type_ok = answer
            .protocol_type
            .is_none_or(|t| t == crate::group::protocol::PROTOCOL_TYPE);
        let (Some(protocol), true) = (protocol, type_ok) else {
            return JoinStep::Fail(ResponseError::InconsistentGroupProtocol);
        };
        if answer.generation < 0 || answer.member_id.is_empty() {
            // A success without a generation or id cannot be used; this is
            // the broker's fault, and retrying will not fix it.
            return JoinStep::Fail(ResponseError::UnknownServerError);
        }
        self.member_id = answer.member_id.to_string();
        self.generation = answer.generation;
        self.leader_id = answer.leader_id.to_string();
        self.protocol = Some(protocol.to_string());
        self.state = MemberState::Syncing;
        JoinStep::Sync {
            leader: self.leader_id == self.member_id,
        }
    }

    /// Shared by JoinGroup and SyncGroup errors; the state is `Unjoined`.
    fn join_failed(&mut self, error: ResponseError) -> JoinStep {
        match error {
            ResponseError::UnknownMemberId => {
                self.reset_generation(true);
                JoinStep::Rejoin
            }
            ResponseError::IllegalGeneration => {
                self.reset_generation(false);
                JoinStep::Rejoin
            }
            ResponseError::RebalanceInProgress => JoinStep::Rejoin,
            ResponseError::CoordinatorLoadInProgress => JoinStep::RejoinAfterBackoff,
            ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable => {
                self.handle_coordinator_lost(&format!("join answered {error:?}"));
                JoinStep::FindCoordinator
            }
            other => JoinStep::Fail(other),
        }
    }

    /// A SyncGroup answer. `protocol_name` is the one v5+ answers carry.
    pub fn handle_sync_answer(
        &mut self,
        error: Option<ResponseError>,
        protocol_name: Option<&str>,
    ) -> JoinStep {
        assert_eq!(
            self.state,
            MemberState::Syncing,
            "a sync answer without a sync"
        );
        let step = match error {
            None if protocol_name.is_some_and(|p| Some(p) != self.protocol.as_deref()) => {
                self.state = MemberState::Unjoined;
                JoinStep::Fail(ResponseError::InconsistentGroupProtocol)
            }
            None => {
                self.state = MemberState::Stable;
                JoinStep::Stable
            }
            Some(error) => {
                self.state = MemberState::Unjoined;
                self.join_failed(error)
            }
        };
        self.invariants();
        step
    }

    /// A JoinGroup or SyncGroup that got no answer (connection lost, timed
    /// out): the coordinator may have moved.
    pub fn handle_join_unanswered(&mut self, reason: &str) -> JoinStep {
        self.state = MemberState::Unjoined;
        self.handle_coordinator_lost(reason);
        JoinStep::FindCoordinator
    }

    pub fn handle_heartbeat_answer(
        &mut self,
        generation: i32,
        member_id: &str,
        error: Option<ResponseError>,
    ) -> Reaction {
        let reaction = match error {
            None => Reaction::Done,
            Some(error) if is_coordinator_error(error) => self.coordinator_reaction(error),
            Some(_) if !self.answer_counts(generation, member_id) => Reaction::Done,
            Some(error) => match self.membership_error(error) {
                Some(()) => Reaction::Rejoin,
                None => Reaction::Fail(error),
            },
        };
        self.invariants();
        reaction
    }

    /// An OffsetCommit answer (its first failed partition). A member told
    /// to rejoin or reset fails the commit: its partitions may have moved.
    pub fn handle_commit_answer(
        &mut self,
        generation: i32,
        member_id: &str,
        error: Option<ResponseError>,
    ) -> Reaction {
        let reaction = match error {
            None => Reaction::Done,
            Some(ResponseError::RequestTimedOut) => {
                self.handle_coordinator_lost("commit timed out on the broker");
                Reaction::FindCoordinator
            }
            Some(error) if is_coordinator_error(error) => self.coordinator_reaction(error),
            Some(error) => {
                if self.answer_counts(generation, member_id) {
                    self.membership_error(error);
                }
                Reaction::Fail(error)
            }
        };
        self.invariants();
        reaction
    }

    /// An OffsetFetch answer's error (group-level or a partition's).
    pub fn handle_offset_fetch_error(&mut self, error: ResponseError) -> Reaction {
        let reaction = match error {
            ResponseError::UnstableOffsetCommit => Reaction::Retry,
            error if is_coordinator_error(error) => self.coordinator_reaction(error),
            other => Reaction::Fail(other),
        };
        self.invariants();
        reaction
    }

    /// The member left (LeaveGroup, closing, or its poll interval ran
    /// out): it has no id or generation any more.
    pub fn handle_left(&mut self, reason: &str) {
        tracing::info!(member = %self.member_id, generation = self.generation, reason, "left the group");
        self.reset_generation(true);
        self.state = MemberState::Unjoined;
        self.rejoin_reason = None;
        self.invariants();
    }

    fn coordinator_reaction(&mut self, error: ResponseError) -> Reaction {
        if error == ResponseError::CoordinatorLoadInProgress {
            return Reaction::Retry;
        }
        self.handle_coordinator_lost(&format!("answered {error:?}"));
        Reaction::FindCoordinator
    }

    /// Applies an error that says the membership is stale; `None` when the
    /// error is not one of those.
    fn membership_error(&mut self, error: ResponseError) -> Option<()> {
        match error {
            ResponseError::RebalanceInProgress => {
                self.request_rejoin("the group is rebalancing");
            }
            ResponseError::IllegalGeneration => {
                self.reset_generation(false);
                self.state = MemberState::Unjoined;
            }
            ResponseError::UnknownMemberId => {
                self.reset_generation(true);
                self.state = MemberState::Unjoined;
            }
            _ => return None,
        }
        Some(())
    }

    fn reset_generation(&mut self, forget_member_id: bool) {
        self.generation = NO_GENERATION;
        self.protocol = None;
        self.leader_id.clear();
        if forget_member_id {
            self.member_id.clear();
        }
    }

    fn invariants(&self) {
        assert!(
            self.generation >= NO_GENERATION,
            "generation {}",
            self.generation
        );
        if matches!(self.state, MemberState::Syncing | MemberState::Stable) {
            assert!(self.generation >= 0, "in a generation without one");
            assert!(!self.member_id.is_empty(), "in a generation without an id");
            assert!(
                self.protocol.is_some(),
                "in a generation without a protocol"
            );
        }
        if self.generation == NO_GENERATION {
            assert!(
                self.protocol.is_none() && self.leader_id.is_empty(),
                "a protocol or leader without a generation"
            );
        }
    }
}

fn is_coordinator_error(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResponseError as E;

    const OFFERED: &[&str] = &["range", "roundrobin"];

    fn node() -> CoordinatorNode {
        CoordinatorNode {
            node_id: 1,
            host: "127.0.0.1".into(),
            port: 9092,
        }
    }

    fn ok_join<'a>(member_id: &'a str, leader_id: &'a str, generation: i32) -> JoinAnswer<'a> {
        JoinAnswer {
            error: None,
            generation,
            member_id,
            leader_id,
            protocol_type: Some("consumer"),
            protocol_name: Some("range"),
        }
    }

    fn error_join(error: ResponseError, member_id: &str) -> JoinAnswer<'_> {
        JoinAnswer {
            error: Some(error),
            generation: -1,
            member_id,
            leader_id: "",
            protocol_type: None,
            protocol_name: None,
        }
    }

    /// A member that joined generation 5 as `m-1` and is stable.
    fn stable() -> Membership {
        let mut m = Membership::new();
        m.handle_coordinator_found(node());
        m.handle_join_sent();
        assert_eq!(
            m.handle_join_answer(&ok_join("m-1", "m-0", 5), OFFERED),
            JoinStep::Sync { leader: false }
        );
        assert_eq!(m.handle_sync_answer(None, Some("range")), JoinStep::Stable);
        assert_eq!(m.stable_identity(), Some((5, "m-1".to_string())));
        assert!(!m.needs_rejoin());
        m
    }

    #[test]
    fn first_join_takes_the_member_id_then_leads_a_generation() {
        let mut m = Membership::new();
        assert_eq!(m.handle_join_sent(), (String::new(), NO_GENERATION));
        let step = m.handle_join_answer(&error_join(E::MemberIdRequired, "m-9"), OFFERED);
        assert_eq!(step, JoinStep::Rejoin);
        assert_eq!(m.member_id(), "m-9");
        assert_eq!(m.handle_join_sent(), ("m-9".to_string(), NO_GENERATION));
        let step = m.handle_join_answer(&ok_join("m-9", "m-9", 1), OFFERED);
        assert_eq!(step, JoinStep::Sync { leader: true });
        assert_eq!(m.state(), MemberState::Syncing);
        assert_eq!(m.handle_sync_answer(None, None), JoinStep::Stable);
        assert!(m.is_leader());
        assert_eq!(m.protocol(), Some("range"));
    }

    #[test]
    fn join_errors() {
        let cases = [
            (E::UnknownMemberId, JoinStep::Rejoin, "", NO_GENERATION),
            (E::IllegalGeneration, JoinStep::Rejoin, "m-1", NO_GENERATION),
            (E::RebalanceInProgress, JoinStep::Rejoin, "m-1", 5),
            (
                E::CoordinatorLoadInProgress,
                JoinStep::RejoinAfterBackoff,
                "m-1",
                5,
            ),
            (E::NotCoordinator, JoinStep::FindCoordinator, "m-1", 5),
            (
                E::CoordinatorNotAvailable,
                JoinStep::FindCoordinator,
                "m-1",
                5,
            ),
            (
                E::FencedInstanceId,
                JoinStep::Fail(E::FencedInstanceId),
                "m-1",
                5,
            ),
            (
                E::InconsistentGroupProtocol,
                JoinStep::Fail(E::InconsistentGroupProtocol),
                "m-1",
                5,
            ),
            (
                E::InvalidSessionTimeout,
                JoinStep::Fail(E::InvalidSessionTimeout),
                "m-1",
                5,
            ),
            (
                E::GroupMaxSizeReached,
                JoinStep::Fail(E::GroupMaxSizeReached),
                "m-1",
                5,
            ),
            (
                E::InvalidGroupId,
                JoinStep::Fail(E::InvalidGroupId),
                "m-1",
                5,
            ),
        ];
        for (error, step, member_id, generation) in cases {
            let mut m = stable();
            m.request_rejoin("test");
            m.handle_join_sent();
            assert_eq!(m.rejoin_reason(), None);
            assert_eq!(
                m.handle_join_answer(&error_join(error, "m-1"), OFFERED),
                step,
                "{error:?}"
            );
            assert_eq!(m.state(), MemberState::Unjoined, "{error:?}");
            assert_eq!(m.member_id(), member_id, "{error:?}");
            assert_eq!(m.generation(), generation, "{error:?}");
            let coordinator_lost = step == JoinStep::FindCoordinator;
            assert_eq!(m.coordinator().is_none(), coordinator_lost, "{error:?}");
            assert!(m.needs_rejoin());
        }
    }

    #[test]
    fn a_join_success_naming_a_protocol_not_offered_fails() {
        let mut m = Membership::new();
        m.handle_join_sent();
        let mut answer = ok_join("m", "m", 1);
        answer.protocol_name = Some("cooperative-sticky");
        assert_eq!(
            m.handle_join_answer(&answer, OFFERED),
            JoinStep::Fail(E::InconsistentGroupProtocol)
        );
        m.handle_join_sent();
        let mut answer = ok_join("m", "m", 1);
        answer.protocol_type = Some("connect");
        assert_eq!(
            m.handle_join_answer(&answer, OFFERED),
            JoinStep::Fail(E::InconsistentGroupProtocol)
        );
        m.handle_join_sent();
        assert_eq!(
            m.handle_join_answer(&ok_join("", "", 1), OFFERED),
            JoinStep::Fail(E::UnknownServerError)
        );
        assert_eq!(m.state(), MemberState::Unjoined);
    }

    #[test]
    fn sync_errors() {
        let cases = [
            (E::RebalanceInProgress, JoinStep::Rejoin, "m-1", 5),
            (E::UnknownMemberId, JoinStep::Rejoin, "", NO_GENERATION),
            (E::IllegalGeneration, JoinStep::Rejoin, "m-1", NO_GENERATION),
            (E::NotCoordinator, JoinStep::FindCoordinator, "m-1", 5),
            (
                E::CoordinatorNotAvailable,
                JoinStep::FindCoordinator,
                "m-1",
                5,
            ),
            (
                E::CoordinatorLoadInProgress,
                JoinStep::RejoinAfterBackoff,
                "m-1",
                5,
            ),
            (
                E::FencedInstanceId,
                JoinStep::Fail(E::FencedInstanceId),
                "m-1",
                5,
            ),
        ];
        for (error, step, member_id, generation) in cases {
            let mut m = Membership::new();
            m.handle_join_sent();
            m.handle_join_answer(&ok_join("m-1", "m-0", 5), OFFERED);
            assert_eq!(m.handle_sync_answer(Some(error), None), step, "{error:?}");
            assert_eq!(m.state(), MemberState::Unjoined, "{error:?}");
            assert_eq!(m.member_id(), member_id, "{error:?}");
            assert_eq!(m.generation(), generation, "{error:?}");
            assert_eq!(m.stable_identity(), None);
        }
        let mut m = Membership::new();
        m.handle_join_sent();
        m.handle_join_answer(&ok_join("m-1", "m-0", 5), OFFERED);
        assert_eq!(
            m.handle_sync_answer(None, Some("roundrobin")),
            JoinStep::Fail(E::InconsistentGroupProtocol)
        );
    }

    #[test]
    fn heartbeat_errors() {
        // (error, reaction, member id after, generation after, still stable)
        let cases = [
            (None, Reaction::Done, "m-1", 5, true),
            (
                Some(E::RebalanceInProgress),
                Reaction::Rejoin,
                "m-1",
                5,
                true,
            ),
            (
                Some(E::IllegalGeneration),
                Reaction::Rejoin,
                "m-1",
                NO_GENERATION,
                false,
            ),
            (
                Some(E::UnknownMemberId),
                Reaction::Rejoin,
                "",
                NO_GENERATION,
                false,
            ),
            (
                Some(E::NotCoordinator),
                Reaction::FindCoordinator,
                "m-1",
                5,
                true,
            ),
            (
                Some(E::CoordinatorNotAvailable),
                Reaction::FindCoordinator,
                "m-1",
                5,
                true,
            ),
            (
                Some(E::CoordinatorLoadInProgress),
                Reaction::Retry,
                "m-1",
                5,
                true,
            ),
            (
                Some(E::FencedInstanceId),
                Reaction::Fail(E::FencedInstanceId),
                "m-1",
                5,
                true,
            ),
            (
                Some(E::GroupAuthorizationFailed),
                Reaction::Fail(E::GroupAuthorizationFailed),
                "m-1",
                5,
                true,
            ),
        ];
        for (error, reaction, member_id, generation, still_stable) in cases {
            let mut m = stable();
            assert_eq!(
                m.handle_heartbeat_answer(5, "m-1", error),
                reaction,
                "{error:?}"
            );
            assert_eq!(m.member_id(), member_id, "{error:?}");
            assert_eq!(m.generation(), generation, "{error:?}");
            assert_eq!(m.stable_identity().is_some(), still_stable, "{error:?}");
            let told_to_rejoin = reaction == Reaction::Rejoin;
            assert_eq!(m.needs_rejoin(), told_to_rejoin, "{error:?}");
        }
    }

    #[test]
    fn answers_about_an_older_generation_change_nothing() {
        for error in [
            E::IllegalGeneration,
            E::UnknownMemberId,
            E::RebalanceInProgress,
        ] {
            let mut m = stable();
            assert_eq!(
                m.handle_heartbeat_answer(4, "m-1", Some(error)),
                Reaction::Done
            );
            assert_eq!(
                m.handle_heartbeat_answer(5, "m-0", Some(error)),
                Reaction::Done
            );
            assert_eq!(
                m.handle_commit_answer(4, "m-1", Some(error)),
                Reaction::Fail(error)
            );
            assert_eq!(
                m.stable_identity(),
                Some((5, "m-1".to_string())),
                "{error:?}"
            );
            assert!(!m.needs_rejoin());
        }
        // While a join is under way, a late answer from before resets nothing.
        let mut m = stable();
        m.handle_join_sent();
        assert_eq!(
            m.handle_heartbeat_answer(5, "m-1", Some(E::UnknownMemberId)),
            Reaction::Done
        );
        let reaction = m.handle_commit_answer(5, "m-1", Some(E::IllegalGeneration));
        assert_eq!(reaction, Reaction::Fail(E::IllegalGeneration));
        assert_eq!(
            (m.state(), m.member_id(), m.generation()),
            (MemberState::Joining, "m-1", 5)
        );
        assert_eq!(m.rejoin_reason(), None);
        // A commit without membership (manual assignment) resets nothing.
        let mut m = Membership::new();
        let reaction = m.handle_commit_answer(NO_GENERATION, "", Some(E::UnknownMemberId));
        assert_eq!(reaction, Reaction::Fail(E::UnknownMemberId));
        assert_eq!(m.state(), MemberState::Unjoined);
    }

    #[test]
    fn commit_errors() {
        let cases = [
            (None, Reaction::Done, "m-1", 5, false),
            (
                Some(E::CoordinatorLoadInProgress),
                Reaction::Retry,
                "m-1",
                5,
                false,
            ),
            (
                Some(E::NotCoordinator),
                Reaction::FindCoordinator,
                "m-1",
                5,
                false,
            ),
            (
                Some(E::CoordinatorNotAvailable),
                Reaction::FindCoordinator,
                "m-1",
                5,
                false,
            ),
            (
                Some(E::RequestTimedOut),
                Reaction::FindCoordinator,
                "m-1",
                5,
                false,
            ),
            (
                Some(E::RebalanceInProgress),
                Reaction::Fail(E::RebalanceInProgress),
                "m-1",
                5,
                true,
            ),
            (
                Some(E::IllegalGeneration),
                Reaction::Fail(E::IllegalGeneration),
                "m-1",
                NO_GENERATION,
                true,
            ),
            (
                Some(E::UnknownMemberId),
                Reaction::Fail(E::UnknownMemberId),
                "",
                NO_GENERATION,
                true,
            ),
            (
                Some(E::UnknownTopicOrPartition),
                Reaction::Fail(E::UnknownTopicOrPartition),
                "m-1",
                5,
                false,
            ),
            (
                Some(E::OffsetMetadataTooLarge),
                Reaction::Fail(E::OffsetMetadataTooLarge),
                "m-1",
                5,
                false,
            ),
        ];
        for (error, reaction, member_id, generation, rejoin) in cases {
            let mut m = stable();
            assert_eq!(
                m.handle_commit_answer(5, "m-1", error),
                reaction,
                "{error:?}"
            );
            assert_eq!(m.member_id(), member_id, "{error:?}");
            assert_eq!(m.generation(), generation, "{error:?}");
            assert_eq!(m.needs_rejoin(), rejoin, "{error:?}");
            let lost = reaction == Reaction::FindCoordinator;
            assert_eq!(m.coordinator().is_none(), lost, "{error:?}");
        }
    }

    #[test]
    fn offset_fetch_errors() {
        let mut m = stable();
        assert_eq!(
            m.handle_offset_fetch_error(E::UnstableOffsetCommit),
            Reaction::Retry
        );
        assert_eq!(
            m.handle_offset_fetch_error(E::CoordinatorLoadInProgress),
            Reaction::Retry
        );
        assert_eq!(
            m.handle_offset_fetch_error(E::NotCoordinator),
            Reaction::FindCoordinator
        );
        assert!(m.coordinator().is_none());
        assert_eq!(
            m.handle_offset_fetch_error(E::GroupAuthorizationFailed),
            Reaction::Fail(E::GroupAuthorizationFailed)
        );
        assert!(!m.needs_rejoin(), "fetching offsets never moves membership");
    }

    #[test]
    fn leaving_and_lost_answers_reset_the_member() {
        let mut m = stable();
        m.handle_left("closing");
        assert_eq!((m.member_id(), m.generation()), ("", NO_GENERATION));
        assert_eq!(m.state(), MemberState::Unjoined);
        assert_eq!(
            m.coordinator(),
            Some(&node()),
            "leaving keeps the coordinator"
        );
        let mut m = stable();
        m.handle_join_sent();
        assert_eq!(
            m.handle_join_unanswered("timed out"),
            JoinStep::FindCoordinator
        );
        assert_eq!(m.coordinator(), None);
        assert_eq!(m.member_id(), "m-1", "an unanswered join keeps the id");
    }

    #[test]
    #[should_panic(expected = "a sync answer without a sync")]
    fn a_sync_answer_out_of_order_is_a_driver_bug() {
        stable().handle_sync_answer(None, None);
    }

    #[test]
    fn coordinator_addresses_bracket_ipv6() {
        let mut node = node();
        assert_eq!(node.address(), "127.0.0.1:9092");
        node.host = "::1".into();
        assert_eq!(node.address(), "[::1]:9092");
    }
}
