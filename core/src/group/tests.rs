//! Tests of the group protocol state machine: joins, generations, leader,
//! sync, heartbeats, session expiry, leave, commits.

use super::*;

const SESSION_MS: i32 = 10_000;

fn join(group: &str, member: &str, _token: Token) -> Join {
    Join {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "/192.0.2.1".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
        require_known_member_id: true,
    }
}

/// Joins a new member through MEMBER_ID_REQUIRED; returns its id.
fn new_member(c: &mut Coordinator, now: i64, id: &str, token: Token) -> Option<JoinAnswer> {
    let first = c
        .join(now, token, join("g", "", token), || id.to_string())
        .expect("answered at once");
    assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
    c.join(now, token, join("g", id, token), || unreachable!())
}

#[test]
fn two_members_form_a_generation_with_one_leader() {
    let mut c = Coordinator::new(0);
    assert!(
        new_member(&mut c, 0, "a", 1).is_none(),
        "the join waits for the rebalance"
    );
    c.expire(0);
    let resolved = c.take_resolved();
    assert_eq!(
        resolved.len(),
        1,
        "alone, a completes the first generation at once"
    );
    let Resolved::Join(answer) = &resolved[0].1 else {
        panic!("a join answer")
    };
    assert_eq!(
        (
            answer.generation,
            answer.leader.as_str(),
            answer.members.len()
        ),
        (1, "a", 1)
    );
    assert!(c
        .sync(
            0,
            2,
            "g",
            1,
            "a",
            vec![("a".into(), Bytes::from_static(b"all"))]
        )
        .is_none());
    assert_eq!(c.take_resolved().len(), 1);
    // b joins: a must rejoin, then generation 2 has both.
    assert!(new_member(&mut c, 10, "b", 3).is_none());
    assert_eq!(
        c.heartbeat(10, "g", 1, "a"),
        Some(ResponseError::RebalanceInProgress)
    );
    assert!(c
        .join(11, 4, join("g", "a", 4), || unreachable!())
        .is_none());
    let answers = c.take_resolved();
    assert_eq!(answers.len(), 2);
    for (token, answer) in &answers {
        let Resolved::Join(answer) = answer else {
            panic!("join answers")
        };
        assert_eq!(answer.generation, 2);
        assert_eq!(answer.leader, "a");
        assert_eq!(
            answer.members.len(),
            if *token == 4 { 2 } else { 0 },
            "only the leader sees the members"
        );
    }
    assert!(
        c.sync(12, 5, "g", 2, "b", vec![]).is_none(),
        "the follower waits for the leader"
    );
    let assignments = vec![
        ("a".into(), Bytes::from_static(b"p0")),
        ("b".into(), Bytes::from_static(b"p1")),
    ];
    assert!(c.sync(12, 6, "g", 2, "a", assignments).is_none());
    let synced: BTreeMap<Token, Resolved> = c.take_resolved().into_iter().collect();
    let Some(Resolved::Sync(for_b)) = synced.get(&5) else {
        panic!("b got its assignment")
    };
    assert_eq!(for_b.assignment, Bytes::from_static(b"p1"));
    assert_eq!(c.groups["g"].state, State::Stable);
}

#[test]
fn a_silent_member_is_removed_and_the_group_rebalances() {
    let mut c = Coordinator::new(0);
    new_member(&mut c, 0, "a", 1);
    c.expire(0);
    c.take_resolved();
    c.sync(0, 2, "g", 1, "a", vec![]);
    c.take_resolved();
    assert!(c.next_deadline_ms().is_some_and(|d| d == SESSION_MS as i64));
    c.expire(SESSION_MS as i64 + 1);
    assert_eq!(c.groups["g"].state, State::Empty);
    assert_eq!(
        c.heartbeat(SESSION_MS as i64 + 2, "g", 1, "a"),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn stale_generations_and_unknown_members_are_refused() {
    let mut c = Coordinator::new(0);
    new_member(&mut c, 0, "a", 1);
    c.expire(0);
    c.take_resolved();
    assert_eq!(
        c.sync(0, 2, "g", 7, "a", vec![]).and_then(|a| a.error),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.sync(0, 2, "g", 1, "zz", vec![]).and_then(|a| a.error),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.join(0, 3, join("g", "zz", 3), || unreachable!())
            .and_then(|a| a.error),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.may_commit("g", 0, "a"),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.may_commit("g", -1, ""),
        Err(ResponseError::UnknownMemberId),
        "the group has members"
    );
    assert_eq!(
        c.may_commit("other", -1, ""),
        Ok(()),
        "a group without members takes simple commits"
    );
}

#[test]
fn bad_session_timeouts_and_empty_group_ids_are_refused() {
    let mut c = Coordinator::new(0);
    let mut short = join("g", "", 1);
    short.session_timeout_ms = 10;
    assert_eq!(
        c.join(0, 1, short, || "x".into()).and_then(|a| a.error),
        Some(ResponseError::InvalidSessionTimeout)
    );
    assert_eq!(
        c.join(0, 1, join("", "", 1), || "x".into())
            .and_then(|a| a.error),
        Some(ResponseError::InvalidGroupId)
    );
}

#[test]
fn leaving_rebalances_the_rest_and_empties_the_group() {
    let mut c = Coordinator::new(0);
    new_member(&mut c, 0, "a", 1);
    new_member(&mut c, 0, "b", 2);
    c.expire(0);
    c.take_resolved();
    // b is still waiting in its join: with a gone, the rebalance completes.
    assert_eq!(c.leave(1, "g", &["a".to_string()]), vec![None]);
    assert_eq!(c.groups["g"].state, State::CompletingRebalance);
    let resolved = c.take_resolved();
    assert!(
        matches!(&resolved[..], [(2, Resolved::Join(answer))] if answer.leader == "b" && answer.generation == 2)
    );
    assert_eq!(c.delete("g"), Err(ResponseError::NonEmptyGroup));
    c.leave(2, "g", &["b".to_string()]);
    assert_eq!(c.groups["g"].state, State::Empty);
    assert_eq!(c.delete("g"), Ok(()));
    assert_eq!(c.delete("g"), Err(ResponseError::GroupIdNotFound));
}

#[test]
fn the_initial_delay_holds_the_first_rebalance() {
    let mut c = Coordinator::new(3_000);
    new_member(&mut c, 0, "a", 1);
    c.expire(1_000);
    assert!(
        c.take_resolved().is_empty(),
        "still waiting for more members"
    );
    new_member(&mut c, 1_500, "b", 2);
    c.expire(3_000);
    assert_eq!(
        c.take_resolved().len(),
        2,
        "both joined the first generation"
    );
}

#[test]
fn a_restarted_static_member_takes_its_old_place_without_a_rebalance() {
    let mut c = Coordinator::new(0);
    let mut first = join("g", "", 1);
    first.group_instance_id = Some("host-1".into());
    assert!(
        c.join(0, 1, first.clone(), || "old".into()).is_none(),
        "no MEMBER_ID_REQUIRED for a static member"
    );
    c.take_resolved();
    c.sync(
        0,
        2,
        "g",
        1,
        "old",
        vec![("old".into(), Bytes::from_static(b"p0"))],
    );
    c.take_resolved();
    let answer = c
        .join(5, 3, first.clone(), || "new".into())
        .expect("answered at once: nothing changed");
    assert_eq!(
        (
            answer.member_id.as_str(),
            answer.generation,
            answer.leader.as_str()
        ),
        ("new", 1, "new")
    );
    assert_eq!(c.groups["g"].state, State::Stable);
    assert_eq!(
        c.sync(6, 4, "g", 1, "new", vec![]).map(|a| a.assignment),
        Some(Bytes::from_static(b"p0"))
    );
    let mut stale = first;
    stale.member_id = "old".into();
    assert_eq!(
        c.join(7, 5, stale, || unreachable!()).and_then(|a| a.error),
        Some(ResponseError::FencedInstanceId)
    );
}

/// Kafka fixes a member's client host when the member is added (the join
/// that passes MEMBER_ID_REQUIRED): its rejoins, from any connection, and a
/// static member's replacement keep it.
#[test]
fn a_member_keeps_the_host_of_the_join_that_added_it() {
    let mut c = Coordinator::new(0);
    let from = |member: &str, host: &str| Join {
        client_host: host.into(),
        ..join("g", member, 0)
    };
    c.join(0, 1, from("", "/192.0.2.1"), || "a".into());
    c.join(0, 2, from("a", "/192.0.2.2"), || unreachable!());
    c.expire(0);
    c.take_resolved();
    assert_eq!(c.groups["g"].members["a"].client_host, "/192.0.2.2");
    // The leader's rejoin starts a rebalance; the host stays.
    c.join(1, 3, from("a", "/192.0.2.3"), || unreachable!());
    c.expire(1);
    assert_eq!(c.take_resolved().len(), 1, "a rejoined generation 2");
    assert_eq!(c.groups["g"].generation, 2);
    assert_eq!(c.groups["g"].members["a"].client_host, "/192.0.2.2");

    let static_from = |host: &str, client_id: &str| Join {
        group_id: "s".into(),
        group_instance_id: Some("i".into()),
        client_id: client_id.into(),
        ..from("", host)
    };
    c.join(0, 4, static_from("/198.51.100.1", "one"), || "first".into());
    c.join(1, 5, static_from("/198.51.100.2", "two"), || {
        "second".into()
    });
    let members = &c.groups["s"].members;
    assert_eq!(members.keys().collect::<Vec<_>>(), ["second"]);
    assert_eq!(
        (
            members["second"].client_host.as_str(),
            members["second"].client_id.as_str()
        ),
        ("/198.51.100.1", "one"),
        "a replaced static member keeps its host and client id"
    );
}

#[test]
fn offsets_of_groups_without_members_expire() {
    let mut c = Coordinator::new(0);
    let at = |offset, ms| Committed {
        offset,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: ms,
        record_offset: -1,
    };
    c.commit("idle", "t", 0, at(5, 0));
    c.commit("idle", "t", 1, at(6, 900));
    new_member(&mut c, 0, "a", 1);
    c.commit("g", "t", 0, at(7, 0));
    assert_eq!(
        c.expired_offsets(1_000, 500),
        vec![("idle".to_string(), "t".to_string(), 0)],
        "recent and active groups' offsets stay"
    );
}

#[test]
fn removed_members_get_answers_and_old_static_instances_are_fenced() {
    let mut c = Coordinator::new(100);
    new_member(&mut c, 0, "a", 1);
    new_member(&mut c, 0, "b", 2);
    c.expire(100);
    assert_eq!(c.take_resolved().len(), 2, "both joined generation 1");
    // b waits in SyncGroup; a never syncs and goes silent; b's sync must be answered.
    assert!(c.sync(1, 3, "g", 1, "b", vec![]).is_none());
    c.heartbeat(SESSION_MS as i64, "g", 1, "b");
    c.expire(100 + SESSION_MS as i64 + 1);
    let answered: Vec<Token> = c.take_resolved().into_iter().map(|(t, _)| t).collect();
    assert!(answered.contains(&3), "the waiting SyncGroup got an answer");
    let mut static_join = join("s", "", 9);
    static_join.group_instance_id = Some("i".into());
    c.join(0, 9, static_join.clone(), || "first".into());
    c.join(1, 10, static_join, || "second".into());
    assert!(c.fenced("s", "first", Some("i")));
    assert!(!c.fenced("s", "second", Some("i")));
    assert!(!c.fenced("s", "first", None));
}

#[test]
fn a_rebalance_waiting_for_members_reports_no_deadline_in_the_past() {
    let mut c = Coordinator::new(100);
    new_member(&mut c, 0, "a", 1);
    c.expire(100);
    c.take_resolved();
    new_member(&mut c, 200, "b", 2);
    // a has not rejoined yet: the next deadline is a's session or the rebalance timeout, not the spent delay.
    assert!(c.next_deadline_ms().is_some_and(|d| d > 200));
}

// ---- Transactional offsets ----

/// A commit of `offset` whose record sits at `record_offset`.
fn written(offset: i64, record_offset: i64) -> Committed {
    Committed {
        offset,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 0,
        record_offset,
    }
}

fn committed_offset(c: &Coordinator, group: &str) -> Option<i64> {
    c.offsets
        .get(group)
        .and_then(|o| o.get(&("t".to_string(), 0)))
        .map(|committed| committed.offset)
}

const ANY_PARTITION: fn(&str) -> bool = |_| true;

#[test]
fn a_transactions_offsets_are_committed_by_its_commit_marker_only() {
    let mut c = Coordinator::new(0);
    c.stage("g", 5, "t", 0, written(42, 0));
    c.invariants();
    assert_eq!(committed_offset(&c, "g"), None, "pending, not committed");
    assert!(c.has_pending("g", "t", 0));
    assert!(!c.has_pending("g", "t", 1));
    assert_eq!(c.open_transactions("g"), [5]);
    // Another producer's marker, or one in another partition, ends nothing.
    assert_eq!(c.end_transaction(6, true, ANY_PARTITION), 0);
    assert_eq!(c.end_transaction(5, true, |_| false), 0);
    assert!(c.has_pending("g", "t", 0));
    assert_eq!(c.end_transaction(5, true, ANY_PARTITION), 1);
    c.invariants();
    assert_eq!(committed_offset(&c, "g"), Some(42));
    assert!(!c.has_pending("g", "t", 0));
    assert!(c.open_transactions("g").is_empty());
}

#[test]
fn an_aborted_transactions_offsets_are_never_committed() {
    let mut c = Coordinator::new(0);
    c.commit("g", "t", 0, written(7, 0));
    c.stage("g", 5, "t", 0, written(42, 1));
    assert_eq!(c.end_transaction(5, false, ANY_PARTITION), 0);
    c.invariants();
    assert_eq!(committed_offset(&c, "g"), Some(7));
    assert!(!c.has_pending("g", "t", 0));
    // A late commit marker of the same producer finds nothing.
    assert_eq!(c.end_transaction(5, true, ANY_PARTITION), 0);
    assert_eq!(committed_offset(&c, "g"), Some(7));
}

#[test]
fn a_transactions_offset_replaces_only_an_older_commit() {
    let mut c = Coordinator::new(0);
    // The plain commit was written after the transaction's record: it stays.
    c.stage("g", 5, "t", 0, written(42, 10));
    c.commit("g", "t", 0, written(50, 11));
    assert_eq!(c.end_transaction(5, true, ANY_PARTITION), 0);
    assert_eq!(committed_offset(&c, "g"), Some(50));
    // Written before the transaction's record: replaced.
    c.stage("g", 6, "t", 0, written(60, 13));
    c.commit("g", "t", 0, written(55, 12));
    assert_eq!(c.end_transaction(6, true, ANY_PARTITION), 1);
    assert_eq!(committed_offset(&c, "g"), Some(60));
    c.invariants();
}

#[test]
fn a_tombstone_or_a_deletion_drops_a_transactions_offsets() {
    let mut c = Coordinator::new(0);
    c.stage("g", 5, "t", 0, written(42, 0));
    c.stage("g", 5, "t", 1, written(43, 1));
    c.forget_offset("g", "t", 0);
    c.invariants();
    assert!(!c.has_pending("g", "t", 0));
    assert!(c.has_pending("g", "t", 1));
    assert_eq!(c.pending_partitions("g"), [("t".to_string(), 1)]);
    assert_eq!(c.delete("g"), Ok(()));
    c.invariants();
    assert!(!c.has_pending("g", "t", 1));
    assert_eq!(c.end_transaction(5, true, ANY_PARTITION), 0);
    assert!(!c.groups.contains_key("g") && !c.offsets.contains_key("g"));
}

#[test]
fn offsets_an_open_transaction_holds_neither_expire_nor_vanish_at_load() {
    let mut c = Coordinator::new(0);
    c.commit("idle", "t", 0, written(5, 0));
    c.stage("idle", 9, "t", 0, written(6, 1));
    assert!(
        c.expired_offsets(1_000, 500).is_empty(),
        "waits for the transaction"
    );
    c.stage("only-pending", 9, "t", 0, written(6, 2));
    c.forget_unrecorded_empty(&[]);
    c.invariants();
    assert!(c.groups.contains_key("only-pending"));
    c.end_transaction(9, false, ANY_PARTITION);
    assert_eq!(
        c.expired_offsets(1_000, 500),
        vec![("idle".to_string(), "t".to_string(), 0)]
    );
}

#[test]
fn transactional_commits_check_members_only_when_named() {
    let mut c = Coordinator::new(0);
    assert_eq!(c.may_commit_transactional("new", -1, "", None), Ok(()));
    assert_eq!(
        c.may_commit_transactional("new", 1, "a", None),
        Err(ResponseError::IllegalGeneration)
    );
    let mut static_join = join("g", "", 1);
    static_join.group_instance_id = Some("i".into());
    c.join(0, 1, static_join, || "a".to_string());
    c.expire(0);
    c.take_resolved();
    // Generation 1 is completing its rebalance: OffsetCommit would wait.
    assert_eq!(
        c.may_commit("g", 1, "a"),
        Err(ResponseError::RebalanceInProgress)
    );
    assert_eq!(c.may_commit_transactional("g", 1, "a", Some("i")), Ok(()));
    assert_eq!(
        c.may_commit_transactional("g", -1, "", None),
        Ok(()),
        "a producer that names no member commits to a group with members"
    );
    assert_eq!(
        c.may_commit("g", -1, ""),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.may_commit_transactional("g", 2, "a", Some("i")),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.may_commit_transactional("g", 1, "b", None),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.may_commit_transactional("g", 1, "b", Some("i")),
        Err(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        c.may_commit_transactional("g", 1, "a", Some("other")),
        Err(ResponseError::UnknownMemberId)
    );
}
