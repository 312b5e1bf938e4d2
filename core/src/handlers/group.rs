//! The group coordinator's APIs: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, ListGroups, DescribeGroups, DeleteGroups.
//!
//! JoinGroup and SyncGroup answers often come later: the handler passes
//! the request's token to the coordinator and returns
//! `Pending::Coordinator`; the node collects the answer by token once the
//! group changes behind it are recorded.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::cluster::endpoint;
use super::{code, now, Context, Handled, Pending};
use crate::broker::{Broker, GroupAnswer, GroupWrite, Recorded};
use crate::group::{Join, Resolved, SyncAnswer, Token};
use crate::storage::Storage;
use crate::wire::Reply;

const GROUP_KEY_TYPE: i8 = 0;
const TRANSACTION_KEY_TYPE: i8 = 1;

pub(super) fn str_of(text: &StrBytes) -> String {
    text.as_str().to_string()
}

pub(super) fn strb(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

pub(super) fn find_coordinator<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: FindCoordinatorRequest,
) -> Handled {
    let (node_id, host, port) = endpoint(broker);
    let transactions = request.key_type == TRANSACTION_KEY_TYPE;
    let error = if !matches!(request.key_type, GROUP_KEY_TYPE | TRANSACTION_KEY_TYPE) {
        Some(ResponseError::InvalidRequest)
    } else if broker.storage_offline() {
        Some(ResponseError::CoordinatorNotAvailable)
    } else {
        None
    };
    // In a cluster, the leader of the group's offsets partition (one key
    // per request before v4; the first key decides for all after, which
    // clients send one at a time in practice).
    let key = if context.header.version >= 4 {
        request.coordinator_keys.first().map(str_of)
    } else {
        Some(str_of(&request.key))
    };
    let located = match (error, key) {
        (None, Some(key)) if transactions && broker.in_cluster() => {
            Some(broker.txn_coordinator_address(&key))
        }
        (None, Some(key)) if broker.in_cluster() => Some(broker.coordinator_address(&key)),
        // Alone: this node, once `__transaction_state` exists.
        (None, Some(_)) if transactions => broker.ensure_txn_topic().err().map(Err),
        _ => None,
    };
    // Kafka's "no coordinator": node -1, no host, port -1.
    let (error_code, node, host, port) = match (error, located) {
        (Some(e), _) | (None, Some(Err(e))) => (code(e), BrokerId(-1), StrBytes::default(), -1),
        (None, Some(Ok(found))) => (
            0,
            BrokerId(found.id),
            StrBytes::from_string(found.host),
            found.port as i32,
        ),
        (None, None) => (0, BrokerId(node_id), host, port),
    };
    let mut response = FindCoordinatorResponse::default();
    if context.header.version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                find_coordinator_response::Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(error_code)
                    .with_node_id(node)
                    .with_host(host.clone())
                    .with_port(port)
            })
            .collect();
    } else {
        response = response
            .with_error_code(error_code)
            .with_node_id(node)
            .with_host(host)
            .with_port(port);
    }
    now(Reply::FindCoordinator(response))
}

pub(super) fn join_group<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: JoinGroupRequest,
) -> Handled {
    let version = context.header.version;
    if let Some(error) = broker.not_coordinator(&str_of(&request.group_id.0)) {
        return now(Reply::JoinGroup(
            JoinGroupResponse::default()
                .with_error_code(code(error))
                .with_generation_id(-1),
        ));
    }
    let join = Join {
        group_id: str_of(&request.group_id.0),
        member_id: str_of(&request.member_id),
        group_instance_id: request.group_instance_id.as_ref().map(str_of),
        client_id: context.client_id.to_string(),
        client_host: context.client_host.to_string(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version == 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        },
        protocol_type: str_of(&request.protocol_type),
        protocols: request
            .protocols
            .iter()
            .map(|p| (str_of(&p.name), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let prefix = if context.client_id.is_empty() {
        "member"
    } else {
        context.client_id
    };
    let Broker { groups, rng, .. } = broker;
    let answer = groups.join(context.now.monotonic_ms, context.token, join, || {
        format!("{prefix}-{}", crate::metadata::hex(&rng.uuid()))
    });
    let recorded = broker.record_group_changes(context.now);
    Ok(answered(
        answer.map(|a| join_reply(Resolved::Join(a), version)),
        recorded,
        context.token,
    ))
}

/// A coordinator's answer to a request: given now (waiting for the record
/// of what it changed), or later for the request's token.
fn answered(reply: Option<Reply>, recorded: Recorded, token: Token) -> Pending {
    match reply {
        None => Pending::Coordinator(token),
        Some(reply) => recorded_reply(reply, recorded),
    }
}

/// A group answer once what it depends on is recorded: at once when
/// nothing changed, after the record is durable, or an error when the
/// record could not be written.
pub fn recorded_reply(reply: Reply, recorded: Recorded) -> Pending {
    match recorded {
        Recorded::Nothing => Pending::Now(reply),
        Recorded::After(written) => Pending::after_group_write(Some(written), reply),
        Recorded::Failed => Pending::Now(reply.unsynced()),
    }
}

/// The reply to a deferred group request, from the coordinator's answer.
pub fn coordinator_reply(answer: GroupAnswer, version: i16) -> Pending {
    recorded_reply(join_reply(answer.resolved, version), answer.recorded)
}

/// The reply of a (possibly deferred) group answer at the request's version.
fn join_reply(resolved: Resolved, version: i16) -> Reply {
    match resolved {
        Resolved::Join(answer) => {
            let protocol_name = match (&answer.protocol, version >= 7) {
                (Some(name), _) => Some(strb(name.clone())),
                (None, true) => None,
                (None, false) => Some(StrBytes::default()),
            };
            let mut response = JoinGroupResponse::default()
                .with_error_code(answer.error.map_or(0, code))
                .with_generation_id(answer.generation)
                .with_protocol_name(protocol_name)
                .with_leader(strb(answer.leader))
                .with_member_id(strb(answer.member_id))
                .with_members(
                    answer
                        .members
                        .into_iter()
                        .map(|(id, instance, metadata)| {
                            let member = join_group_response::JoinGroupResponseMember::default()
                                .with_member_id(strb(id))
                                .with_metadata(metadata);
                            if version >= 5 {
                                member.with_group_instance_id(instance.map(strb))
                            } else {
                                member
                            }
                        })
                        .collect(),
                );
            if version >= 7 && !answer.protocol_type.is_empty() {
                response.protocol_type = Some(strb(answer.protocol_type));
            }
            Reply::JoinGroup(response)
        }
        Resolved::Sync(answer) => Reply::SyncGroup(sync_response(answer, version)),
    }
}

fn sync_response(answer: SyncAnswer, version: i16) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default()
        .with_error_code(answer.error.map_or(0, code))
        .with_assignment(answer.assignment);
    if version >= 5 {
        response.protocol_type = Some(strb(answer.protocol_type)).filter(|t| !t.is_empty());
        response.protocol_name = answer.protocol.map(strb);
    }
    response
}

pub(super) fn sync_group<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: SyncGroupRequest,
) -> Handled {
    let assignments = request
        .assignments
        .iter()
        .map(|a| (str_of(&a.member_id), a.assignment.clone()))
        .collect();
    let group_id = str_of(&request.group_id.0);
    let member_id = str_of(&request.member_id);
    let instance = request.group_instance_id.as_ref().map(str_of);
    if let Some(error) = broker.not_coordinator(&group_id) {
        return now(Reply::SyncGroup(
            SyncGroupResponse::default().with_error_code(code(error)),
        ));
    }
    if broker
        .groups
        .fenced(&group_id, &member_id, instance.as_deref())
    {
        let answer = SyncAnswer {
            error: Some(ResponseError::FencedInstanceId),
            protocol_type: String::new(),
            protocol: None,
            assignment: Bytes::new(),
        };
        return now(Reply::SyncGroup(sync_response(
            answer,
            context.header.version,
        )));
    }
    let answer = broker.groups.sync(
        context.now.monotonic_ms,
        context.token,
        &group_id,
        request.generation_id,
        &member_id,
        assignments,
    );
    let recorded = broker.record_group_changes(context.now);
    Ok(answered(
        answer.map(|a| Reply::SyncGroup(sync_response(a, context.header.version))),
        recorded,
        context.token,
    ))
}

pub(super) fn heartbeat<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: HeartbeatRequest,
) -> Handled {
    let (group_id, member_id) = (str_of(&request.group_id.0), str_of(&request.member_id));
    let instance = request.group_instance_id.as_ref().map(str_of);
    if let Some(error) = broker.not_coordinator(&group_id) {
        return now(Reply::Heartbeat(
            HeartbeatResponse::default().with_error_code(code(error)),
        ));
    }
    let error = if broker
        .groups
        .fenced(&group_id, &member_id, instance.as_deref())
    {
        Some(ResponseError::FencedInstanceId)
    } else {
        broker.groups.heartbeat(
            context.now.monotonic_ms,
            &group_id,
            request.generation_id,
            &member_id,
        )
    };
    broker.record_group_changes(context.now);
    now(Reply::Heartbeat(
        HeartbeatResponse::default().with_error_code(error.map_or(0, code)),
    ))
}

pub(super) fn leave_group<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: LeaveGroupRequest,
) -> Handled {
    let group_id = str_of(&request.group_id.0);
    if let Some(error) = broker.not_coordinator(&group_id) {
        return now(Reply::LeaveGroup(
            LeaveGroupResponse::default().with_error_code(code(error)),
        ));
    }
    let ids: Vec<String> = if context.header.version >= 3 {
        request
            .members
            .iter()
            .map(|m| str_of(&m.member_id))
            .collect()
    } else {
        vec![str_of(&request.member_id)]
    };
    let errors = broker
        .groups
        .leave(context.now.monotonic_ms, &group_id, &ids);
    // The members left whatever was recorded; the answers of those that
    // waited for them go out after the record.
    broker.record_group_changes(context.now);
    let mut response = LeaveGroupResponse::default();
    if context.header.version >= 3 {
        response.members = request
            .members
            .iter()
            .zip(&errors)
            .map(|(m, e)| {
                leave_group_response::MemberResponse::default()
                    .with_member_id(m.member_id.clone())
                    .with_group_instance_id(m.group_instance_id.clone())
                    .with_error_code(e.map_or(0, code))
            })
            .collect();
    } else {
        response.error_code = errors.first().copied().flatten().map_or(0, code);
    }
    now(Reply::LeaveGroup(response))
}

pub(super) fn list_groups<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: ListGroupsRequest,
) -> Handled {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.as_str().to_lowercase())
        .collect();
    let groups = broker
        .groups
        .groups
        .iter()
        .filter(|(_, g)| states.is_empty() || states.contains(&g.state.name().to_lowercase()))
        .map(|(id, g)| {
            let listed = list_groups_response::ListedGroup::default()
                .with_group_id(GroupId(strb(id.clone())))
                .with_protocol_type(strb(g.protocol_type.clone()));
            let listed = if context.header.version >= 4 {
                listed.with_group_state(strb(g.state.name()))
            } else {
                listed
            };
            if context.header.version >= 5 {
                listed.with_group_type(strb("classic"))
            } else {
                listed
            }
        })
        .collect();
    now(Reply::ListGroups(
        ListGroupsResponse::default().with_groups(groups),
    ))
}

pub(super) fn describe_groups<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: DescribeGroupsRequest,
) -> Handled {
    let groups = request
        .groups
        .iter()
        .map(|id| {
            let described = describe_groups_response::DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(i32::MIN);
            // Elsewhere than at its coordinator a group would look unknown
            // (Dead), which a client would take for the truth; Kafka answers
            // NOT_COORDINATOR with an empty summary.
            if let Some(error) = broker.not_coordinator(id.0.as_str()) {
                return described.with_error_code(code(error));
            }
            let Some(group) = broker.groups.groups.get(id.0.as_str()) else {
                let described = described.with_group_state(strb("Dead"));
                return if context.header.version >= 6 {
                    described.with_error_code(code(ResponseError::GroupIdNotFound))
                } else {
                    described
                };
            };
            let members = group
                .members
                .values()
                .map(|m| {
                    let metadata = group.metadata_of(m);
                    let member = describe_groups_response::DescribedGroupMember::default()
                        .with_member_id(strb(m.member_id.clone()))
                        .with_client_id(strb(m.client_id.clone()))
                        .with_client_host(strb(m.client_host.clone()))
                        .with_member_metadata(metadata)
                        .with_member_assignment(m.assignment.clone());
                    if context.header.version >= 4 {
                        member.with_group_instance_id(m.group_instance_id.clone().map(strb))
                    } else {
                        member
                    }
                })
                .collect();
            described
                .with_group_state(strb(group.state.name()))
                .with_protocol_type(strb(group.protocol_type.clone()))
                .with_protocol_data(strb(group.protocol.clone().unwrap_or_default()))
                .with_members(members)
        })
        .collect();
    now(Reply::DescribeGroups(
        DescribeGroupsResponse::default().with_groups(groups),
    ))
}

pub(super) fn delete_groups<S: Storage>(
    broker: &mut Broker<S>,
    context: Context<'_>,
    request: DeleteGroupsRequest,
) -> Handled {
    let mut written: Option<GroupWrite> = None;
    let mut results = Vec::new();
    for id in &request.groups_names {
        let group_id = str_of(&id.0);
        if let Some(error) = broker.not_coordinator(&group_id) {
            results.push(
                delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(id.clone())
                    .with_error_code(code(error)),
            );
            continue;
        }
        let tombstones = broker.group_offset_tombstones(&group_id);
        let outcome = broker.groups.delete(&group_id).and_then(|()| {
            // Tombstones for the group's record and every committed offset.
            let group_write = broker.write_group_record(context.now, &group_id)?;
            if tombstones.is_empty() {
                Ok(group_write)
            } else {
                broker
                    .write_offsets(context.now, &group_id, &tombstones)
                    .map(|w| w.and(group_write))
            }
        });
        let error = match outcome {
            Ok(write) => {
                written = Some(match written.take() {
                    Some(before) => before.and(write),
                    None => write,
                });
                None
            }
            Err(e) => Some(e),
        };
        results.push(
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(error.map_or(0, code)),
        );
    }
    let response = DeleteGroupsResponse::default().with_results(results);
    Ok(Pending::after_group_write(
        written,
        Reply::DeleteGroups(response),
    ))
}
