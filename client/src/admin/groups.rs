//! Consumer group administration, what Kafka's `kafka-consumer-groups.sh`
//! does through its admin client: list, describe and delete groups, read
//! their committed offsets and overwrite them, and look up the log offsets
//! to compare them with.
//!
//! ListGroups goes to every broker (each lists the groups it coordinates).
//! Everything about one group goes to its coordinator, found (FindCoordinator
//! with key type 0) and reached exactly as a member finds it: through a
//! [`GroupMember`] that never joins, whose OffsetFetch and OffsetCommit
//! conversation is reused as well. Lost connections and coordinator errors
//! (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS)
//! are retried a bounded number of times; every other error is returned
//! with its Kafka code.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest,
    OffsetFetchRequest,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;

use super::{Admin, Target, ADMIN_ATTEMPTS_MAX};
use crate::config::ConsumerConfig;
use crate::connector::Connector;
use crate::consumer::{Consumer, ListedOffset, OffsetSpec};
use crate::error::{check_code, Error, Result};
use crate::group::member::{read_offset_fetch, CommitIdentity, GroupMember, GroupSettings};
use crate::group::protocol::{decode_assignment, Assignment, NO_GENERATION, PROTOCOL_TYPE};
use crate::record::TopicPartition;

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// `consumer` for consumer groups; empty for a group that only has
    /// committed offsets (written without membership).
    pub protocol_type: String,
    /// `Empty`, `Stable`, ...; `None` from brokers before ListGroups v4.
    pub state: Option<String>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable` or
    /// `Dead` (Kafka's names).
    pub state: String,
    pub protocol_type: String,
    /// The protocol the group chose: the assignor, for consumer groups.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    /// Static membership's `group.instance.id`.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The member's share of the generation, decoded from the consumer
    /// protocol's bytes; why not when the bytes do not decode or the group
    /// does not speak the consumer protocol.
    pub assignment: std::result::Result<Assignment, String>,
}

fn group_id_of(group_id: &str) -> GroupId {
    GroupId(StrBytes::from_string(group_id.to_string()))
}

/// The errors after which a group request is sent again: the coordinator
/// moved, is not known yet, or is still loading the group.
fn coordinator_moved(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
    )
}

impl<C: Connector> Admin<C> {
    /// Every group of every broker, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        self.client.refresh_metadata_with(Some(&[]), false).await?;
        let brokers: Vec<i32> = self.client.metadata().brokers.keys().copied().collect();
        let mut listings = BTreeMap::new();
        for broker in brokers {
            // A broker still loading its groups says so; ask again, as
            // Kafka's admin client does.
            let mut attempt = 1;
            let response = loop {
                let response = self
                    .request_to(ApiKey::ListGroups, Target::Broker(broker), |_| {
                        ListGroupsRequest::default()
                    })
                    .await?;
                let loading = matches!(
                    ResponseError::try_from_code(response.error_code),
                    Some(ResponseError::CoordinatorLoadInProgress)
                        | Some(ResponseError::CoordinatorNotAvailable)
                );
                if !loading || attempt >= ADMIN_ATTEMPTS_MAX {
                    break response;
                }
                self.client.retry_pause(attempt).await;
                attempt += 1;
            };
            check_code(response.error_code, || {
                format!("list groups on broker {broker}")
            })?;
            for group in response.groups {
                let group_id = group.group_id.0.to_string();
                let listing = GroupListing {
                    group_id: group_id.clone(),
                    protocol_type: group.protocol_type.to_string(),
                    // Absent before v4, where the field stays empty.
                    state: Some(group.group_state.to_string()).filter(|s| !s.is_empty()),
                };
                listings.insert(group_id, listing);
            }
        }
        Ok(listings.into_values().collect())
    }

    /// Each group's state, protocol and members, in the order given. Fails
    /// with GROUP_ID_NOT_FOUND when a group does not exist (brokers before
    /// DescribeGroups v6 describe it as `Dead` instead).
    pub async fn describe_groups(&self, group_ids: &[String]) -> Result<Vec<GroupDescription>> {
        let mut descriptions = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            descriptions.push(self.describe_group(group_id).await?);
        }
        Ok(descriptions)
    }

    async fn describe_group(&self, group_id: &str) -> Result<GroupDescription> {
        let handle = self.group_handle(group_id)?;
        let (response, _) = self
            .coordinator_request(
                &handle,
                ApiKey::DescribeGroups,
                |_| DescribeGroupsRequest::default().with_groups(vec![group_id_of(group_id)]),
                |response| response.groups.first().map_or(0, |g| g.error_code),
            )
            .await?;
        let context = format!("describe group {group_id}");
        let Some(group) = response
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == group_id)
        else {
            return Err(Error::Protocol {
                address: "group coordinator".into(),
                detail: format!("{context}: the answer does not mention the group"),
            });
        };
        if let Some(error) = ResponseError::try_from_code(group.error_code) {
            let message = group.error_message.as_ref().map(|m| m.as_str());
            return Err(Error::broker_with_message(error, context, message));
        }
        let protocol_type = group.protocol_type.to_string();
        let members = group
            .members
            .into_iter()
            .map(|member| MemberDescription {
                member_id: member.member_id.to_string(),
                group_instance_id: member.group_instance_id.map(|id| id.to_string()),
                client_id: member.client_id.to_string(),
                client_host: member.client_host.to_string(),
                assignment: if protocol_type == PROTOCOL_TYPE {
                    decode_assignment(&member.member_assignment)
                } else {
                    Err(format!(
                        "protocol type `{protocol_type}` is not the consumer protocol"
                    ))
                },
            })
            .collect();
        Ok(GroupDescription {
            group_id: group_id.to_string(),
            state: group.group_state.to_string(),
            protocol_type,
            protocol: group.protocol_data.to_string(),
            members,
        })
    }

    /// The group's committed offsets (OffsetFetch): of these partitions, or
    /// of every partition it has one for with `None`. Partitions without a
    /// committed offset are left out.
    pub async fn list_consumer_group_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let handle = self.group_handle(group_id)?;
        if let Some(partitions) = partitions {
            let committed = handle.committed(partitions).await?;
            return Ok(committed
                .into_iter()
                .filter_map(|(tp, offset)| Some((tp, offset?)))
                .collect());
        }
        let (response, version) = self
            .coordinator_request(
                &handle,
                ApiKey::OffsetFetch,
                |version| all_offsets_request(group_id, version),
                |response| match response.groups.first() {
                    Some(group) => group.error_code,
                    None => response.error_code,
                },
            )
            .await?;
        let (group_code, found) = read_offset_fetch(&response, version);
        let context = || format!("fetch the committed offsets of group {group_id}");
        check_code(group_code, context)?;
        let mut offsets = BTreeMap::new();
        for (tp, offset, code) in found {
            check_code(code, || format!("{} ({tp})", context()))?;
            if offset >= 0 {
                offsets.insert(tp, offset);
            }
        }
        Ok(offsets)
    }

    /// Commits `offsets` for the group without being a member (OffsetCommit
    /// with generation -1 and an empty member id), as Kafka's tools reset
    /// offsets. The coordinator refuses it while the group has members
    /// (UNKNOWN_MEMBER_ID).
    pub async fn alter_consumer_group_offsets(
        &self,
        group_id: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let handle = self.group_handle(group_id)?;
        let identity = CommitIdentity {
            generation: NO_GENERATION,
            member_id: String::new(),
            group_instance_id: None,
        };
        handle.commit_sync(offsets.clone(), identity).await
    }

    /// Deletes groups with their committed offsets; one result per group, in
    /// the order given. A group with members fails with NON_EMPTY_GROUP, an
    /// unknown one with GROUP_ID_NOT_FOUND.
    pub async fn delete_groups(&self, group_ids: &[String]) -> Result<Vec<(String, Result<()>)>> {
        let mut results = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            let handle = self.group_handle(group_id)?;
            let code_of = |response: &kafka_protocol::messages::DeleteGroupsResponse| {
                response
                    .results
                    .iter()
                    .find(|r| r.group_id.0.as_str() == group_id)
                    .map_or(0, |r| r.error_code)
            };
            let (response, _) = self
                .coordinator_request(
                    &handle,
                    ApiKey::DeleteGroups,
                    |_| {
                        DeleteGroupsRequest::default()
                            .with_groups_names(vec![group_id_of(group_id)])
                    },
                    code_of,
                )
                .await?;
            let context = format!("delete group {group_id}");
            let result = if response
                .results
                .iter()
                .any(|r| r.group_id.0.as_str() == group_id)
            {
                check_code(code_of(&response), || context)
            } else {
                Err(Error::Protocol {
                    address: "group coordinator".into(),
                    detail: format!("{context}: the answer does not mention the group"),
                })
            };
            results.push((group_id.clone(), result));
        }
        Ok(results)
    }

    /// Deletes one group.
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        let mut results = self.delete_groups(&[group_id.to_string()]).await?;
        results.pop().expect("one result per group").1
    }

    /// Log offsets of partitions (ListOffsets on their leaders): the start,
    /// the end (high watermark), or the first offset at or after a
    /// timestamp (-1 when no record is that late).
    pub async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<TopicPartition, ListedOffset>> {
        // The consumer's lookup, without a group: it already batches per
        // leader and retries after metadata refreshes.
        let consumer = Consumer::new(self.client.clone(), ConsumerConfig::default())?;
        consumer.list_offsets(partitions, spec).await
    }

    /// A member of `group_id` that never joins: it finds the coordinator
    /// and holds a connection of its own to it.
    fn group_handle(&self, group_id: &str) -> Result<Arc<GroupMember<C>>> {
        if group_id.is_empty() {
            return Err(Error::Config("a group id must not be empty".into()));
        }
        let defaults = ConsumerConfig::default();
        let settings = GroupSettings {
            require_stable: false,
            group_id: group_id.to_string(),
            group_instance_id: None,
            session_timeout_ms: defaults.session_timeout_ms,
            heartbeat_interval_ms: defaults.heartbeat_interval_ms,
            max_poll_interval_ms: defaults.max_poll_interval_ms,
            assignors: defaults.partition_assignment_strategy,
        };
        Ok(Arc::new(GroupMember::new(self.client.clone(), settings)))
    }

    /// Sends a request to the group's coordinator and returns the answer
    /// with the version used. A lost connection or a coordinator error (as
    /// `code` reads it from the answer) is retried after finding the
    /// coordinator again, up to `ADMIN_ATTEMPTS_MAX` attempts; other errors
    /// in the answer are the caller's to read.
    async fn coordinator_request<R: Request>(
        &self,
        handle: &GroupMember<C>,
        api: ApiKey,
        build: impl Fn(i16) -> R,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<(R::Response, i16)> {
        let mut attempt = 1;
        loop {
            let outcome: Result<(R::Response, i16)> = async {
                let connection = handle.connection().await?;
                let version = connection.version(api)?;
                let timeout_ms = self.client.request_timeout_ms();
                let response = connection.send(&build(version), version, timeout_ms).await;
                if response.is_err() {
                    handle
                        .membership()
                        .handle_coordinator_lost("an admin request got no answer");
                }
                Ok((response?, version))
            }
            .await;
            let error = match outcome {
                Err(error) if error.is_retriable() => error,
                Err(error) => return Err(error),
                Ok((response, version)) => match ResponseError::try_from_code(code(&response)) {
                    Some(error) if coordinator_moved(error) => {
                        handle
                            .membership()
                            .handle_coordinator_lost(&format!("answered {error:?}"));
                        Error::broker(error, format!("{api:?} (group {})", handle.group_id()))
                    }
                    Some(error @ ResponseError::CoordinatorLoadInProgress) => {
                        Error::broker(error, format!("{api:?} (group {})", handle.group_id()))
                    }
                    _ => return Ok((response, version)),
                },
            };
            if attempt >= ADMIN_ATTEMPTS_MAX {
                return Err(error);
            }
            tracing::debug!(%error, ?api, attempt, "group admin request failed; retrying");
            self.client.retry_pause(attempt).await;
            attempt += 1;
        }
    }
}

/// OffsetFetch for every partition the group has an offset for: a null
/// topic list (version 2 and later).
fn all_offsets_request(group_id: &str, version: i16) -> OffsetFetchRequest {
    if version >= 8 {
        let group = OffsetFetchRequestGroup::default()
            .with_group_id(group_id_of(group_id))
            .with_topics(None);
        OffsetFetchRequest::default().with_groups(vec![group])
    } else {
        OffsetFetchRequest::default()
            .with_group_id(group_id_of(group_id))
            .with_topics(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::config::ClientConfig;
    use crate::connector::TokioConnector;
    use kafka_protocol::protocol::Encodable;

    #[tokio::test]
    async fn an_empty_group_id_is_refused_before_anything_is_sent() {
        let client = Client::new(TokioConnector, ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let admin = Admin::new(client);
        let error = admin.describe_groups(&[String::new()]).await.unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
        let error = admin.delete_group("").await.unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
    }

    #[test]
    fn every_offset_request_names_no_topics_at_every_version_that_can() {
        for version in 2..=9 {
            let request = all_offsets_request("g", version);
            let mut bytes = bytes::BytesMut::new();
            request
                .encode(&mut bytes, version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            if version >= 8 {
                assert_eq!(request.groups[0].topics, None);
            } else {
                assert_eq!(request.topics, None);
            }
        }
    }
}
