//! The controller quorum as its leader describes it (DescribeQuorum), what
//! Kafka's `Admin.describeMetadataQuorum` returns and
//! `kafka-metadata-quorum.sh describe` prints.
//!
//! Only the quorum's leader answers. Every other voter answers
//! NOT_LEADER_OR_FOLLOWER, and Kafka's answer names no leader (the leader
//! id keeps its default, 0, which could be a real node), so no hint is
//! followed: the admin asks every node it knows in turn, the brokers of
//! its metadata first and then each bootstrap address, until one leads.
//! A round in which none does (an election under way, nodes down) is
//! tried again after the client's backoff, `ADMIN_ATTEMPTS_MAX` rounds in
//! all. A node without a quorum answers UNKNOWN_TOPIC_OR_PARTITION (it has
//! no metadata partition); when every node that answered said so, that is
//! the answer, at once.

use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{ApiKey, DescribeQuorumRequest, DescribeQuorumResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{Admin, ADMIN_ATTEMPTS_MAX};
use crate::client::Endpoint;
use crate::connector::Connector;
use crate::error::{Error, Result};

/// The controller quorum's log, the one partition DescribeQuorum asks about.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// One voter (or observer) as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumReplica {
    pub node_id: i32,
    /// Its log end offset as the leader knows it; -1 when the leader has
    /// not heard from it in its epoch.
    pub log_end_offset: i64,
    /// Wall-clock milliseconds; `None` when not known (before DescribeQuorum
    /// v1, or not heard from in the leader's epoch).
    pub last_fetch_timestamp: Option<i64>,
    pub last_caught_up_timestamp: Option<i64>,
}

/// Where a voter serves the quorum (DescribeQuorum v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumEndpoint {
    pub node_id: i32,
    pub listener: String,
    pub host: String,
    pub port: u16,
}

/// What the quorum's leader answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumDescription {
    pub leader_id: i32,
    pub leader_epoch: i32,
    /// -1 while the leader has not committed anything in its epoch.
    pub high_watermark: i64,
    /// In the leader's order (Sluice: by id).
    pub voters: Vec<QuorumReplica>,
    pub observers: Vec<QuorumReplica>,
    pub endpoints: Vec<QuorumEndpoint>,
    /// The address that answered (the leader's).
    pub answered_by: String,
}

impl QuorumDescription {
    /// The leader's own line among the voters.
    pub fn leader(&self) -> Option<&QuorumReplica> {
        self.voters.iter().find(|v| v.node_id == self.leader_id)
    }

    /// How far `replica` is behind the leader's log end, as
    /// `kafka-metadata-quorum.sh` computes it (so a replica the leader has
    /// not heard from, at -1, shows one more than the leader's end).
    pub fn lag(&self, replica: &QuorumReplica) -> i64 {
        let leader_end = self.leader().map_or(-1, |l| l.log_end_offset);
        leader_end - replica.log_end_offset
    }

    /// The voter furthest behind (the first such, in the leader's order).
    fn max_lag_voter(&self) -> Option<&QuorumReplica> {
        let least = self.voters.iter().map(|v| v.log_end_offset).min()?;
        self.voters.iter().find(|v| v.log_end_offset == least)
    }

    /// `MaxFollowerLag`: the largest lag of any voter.
    pub fn max_follower_lag(&self) -> i64 {
        self.max_lag_voter().map_or(0, |voter| self.lag(voter))
    }

    /// `MaxFollowerLagTimeMs`, as Kafka's tool computes it: 0 when the
    /// voter furthest behind is the leader itself, the difference of the
    /// leader's and its last caught-up times when both are known, else -1.
    pub fn max_follower_lag_time_ms(&self) -> i64 {
        let (Some(leader), Some(behind)) = (self.leader(), self.max_lag_voter()) else {
            return -1;
        };
        if behind.node_id == leader.node_id {
            return 0;
        }
        match (
            leader.last_caught_up_timestamp,
            behind.last_caught_up_timestamp,
        ) {
            (Some(leader_ms), Some(behind_ms)) => leader_ms - behind_ms,
            _ => -1,
        }
    }
}

/// A DescribeQuorum answer, read: the description, or the partition's (or
/// the whole answer's) error.
fn read_answer(
    response: &DescribeQuorumResponse,
    version: i16,
    address: &str,
) -> Result<QuorumDescription> {
    let context = || format!("describe quorum at {address}");
    if let Some(error) = ResponseError::try_from_code(response.error_code) {
        let message = response.error_message.as_deref().filter(|m| !m.is_empty());
        return Err(Error::broker_with_message(error, context(), message));
    }
    let partition = response
        .topics
        .iter()
        .filter(|t| t.topic_name.0.as_str() == METADATA_TOPIC)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == 0)
        .ok_or_else(|| Error::Protocol {
            address: address.to_string(),
            detail: format!("the DescribeQuorum answer does not mention {METADATA_TOPIC}-0"),
        })?;
    if let Some(error) = ResponseError::try_from_code(partition.error_code) {
        let message = partition.error_message.as_deref().filter(|m| !m.is_empty());
        return Err(Error::broker_with_message(error, context(), message));
    }
    // Timestamps came with v1; -1 means not known.
    let known = |ms: i64| Some(ms).filter(|&ms| version >= 1 && ms >= 0);
    let replica =
        |state: &kafka_protocol::messages::describe_quorum_response::ReplicaState| QuorumReplica {
            node_id: state.replica_id.0,
            log_end_offset: state.log_end_offset,
            last_fetch_timestamp: known(state.last_fetch_timestamp),
            last_caught_up_timestamp: known(state.last_caught_up_timestamp),
        };
    let endpoints = response
        .nodes
        .iter()
        .flat_map(|node| {
            node.listeners.iter().map(move |listener| QuorumEndpoint {
                node_id: node.node_id.0,
                listener: listener.name.to_string(),
                host: listener.host.to_string(),
                port: listener.port,
            })
        })
        .collect();
    Ok(QuorumDescription {
        leader_id: partition.leader_id.0,
        leader_epoch: partition.leader_epoch,
        high_watermark: partition.high_watermark,
        voters: partition.current_voters.iter().map(replica).collect(),
        observers: partition.observers.iter().map(replica).collect(),
        endpoints,
        answered_by: address.to_string(),
    })
}

fn describe_quorum_request() -> DescribeQuorumRequest {
    let partition = PartitionData::default().with_partition_index(0);
    let topic = TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![partition]);
    DescribeQuorumRequest::default().with_topics(vec![topic])
}

impl<C: Connector> Admin<C> {
    /// The controller quorum, from its leader, found by asking every node
    /// known (see the module's comment).
    pub async fn describe_quorum(&self) -> Result<QuorumDescription> {
        let mut attempt = 1;
        loop {
            let mut errors: Vec<Error> = Vec::new();
            for endpoint in self.client.candidates() {
                match self.describe_quorum_at(endpoint).await {
                    Ok(description) => return Ok(description),
                    Err(error) => {
                        tracing::debug!(%error, ?endpoint, "DescribeQuorum not answered by a leader");
                        errors.push(error);
                    }
                }
            }
            let no_quorum = |e: &Error| {
                matches!(
                    e.response_error(),
                    Some(ResponseError::UnknownTopicOrPartition)
                )
            };
            let answered = errors
                .iter()
                .filter(|e| e.response_error().is_some())
                .count();
            if answered > 0 && errors.iter().filter(|e| no_quorum(e)).count() == answered {
                return Err(errors.into_iter().find(no_quorum).expect("counted above"));
            }
            if attempt >= ADMIN_ATTEMPTS_MAX {
                return Err(match errors.iter().find(|e| e.response_error().is_some()) {
                    Some(_) => Error::broker(
                        ResponseError::NotLeaderOrFollower,
                        format!(
                            "describe quorum: no node asked leads the quorum ({} rounds)",
                            ADMIN_ATTEMPTS_MAX
                        ),
                    ),
                    None => Error::NoBrokerReachable {
                        last: errors
                            .last()
                            .map_or("no candidates".into(), |e| e.to_string()),
                    },
                });
            }
            self.client.retry_pause(attempt).await;
            attempt += 1;
        }
    }

    async fn describe_quorum_at(&self, endpoint: Endpoint) -> Result<QuorumDescription> {
        let connection = self.client.connection(endpoint).await?;
        let version = connection.version(ApiKey::DescribeQuorum)?;
        let response = connection
            .send(
                &describe_quorum_request(),
                version,
                self.client.request_timeout_ms(),
            )
            .await?;
        read_answer(&response, version, connection.address())
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_quorum_response::{
        PartitionData, ReplicaState, TopicData,
    };
    use kafka_protocol::messages::{BrokerId, DescribeQuorumResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::ResponseError;

    use super::*;

    fn voter(id: i32, end: i64, caught_up_ms: i64) -> ReplicaState {
        ReplicaState::default()
            .with_replica_id(BrokerId(id))
            .with_log_end_offset(end)
            .with_last_fetch_timestamp(caught_up_ms)
            .with_last_caught_up_timestamp(caught_up_ms)
    }

    fn answer(partition: PartitionData) -> DescribeQuorumResponse {
        let topic = TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
            .with_partitions(vec![partition]);
        DescribeQuorumResponse::default().with_topics(vec![topic])
    }

    #[test]
    fn lags_are_computed_as_kafkas_tool_computes_them() {
        let partition = PartitionData::default()
            .with_leader_id(BrokerId(2))
            .with_leader_epoch(4)
            .with_high_watermark(10)
            .with_current_voters(vec![
                voter(1, 10, 5_000),
                voter(2, 12, 9_000),
                voter(3, -1, -1),
            ]);
        let description = read_answer(&answer(partition), 1, "a:1").unwrap();
        assert_eq!(description.leader().unwrap().node_id, 2);
        let lags: Vec<i64> = description
            .voters
            .iter()
            .map(|v| description.lag(v))
            .collect();
        assert_eq!(lags, [2, 0, 13]);
        assert_eq!(description.max_follower_lag(), 13);
        // The voter furthest behind has no caught-up time.
        assert_eq!(description.max_follower_lag_time_ms(), -1);
        assert_eq!(description.voters[2].last_fetch_timestamp, None);

        let partition = PartitionData::default()
            .with_leader_id(BrokerId(2))
            .with_current_voters(vec![voter(1, 10, 5_000), voter(2, 12, 9_000)]);
        let description = read_answer(&answer(partition), 1, "a:1").unwrap();
        assert_eq!(description.max_follower_lag(), 2);
        assert_eq!(description.max_follower_lag_time_ms(), 4_000);

        let partition = PartitionData::default()
            .with_leader_id(BrokerId(1))
            .with_current_voters(vec![voter(1, 12, 9_000), voter(2, 12, 8_000)]);
        let description = read_answer(&answer(partition), 1, "a:1").unwrap();
        assert_eq!(description.max_follower_lag(), 0);
        assert_eq!(description.max_follower_lag_time_ms(), 0);
    }

    #[test]
    fn v0_answers_have_no_timestamps_and_errors_keep_their_code() {
        let partition = PartitionData::default()
            .with_leader_id(BrokerId(1))
            .with_current_voters(vec![voter(1, 3, 0)]);
        let description = read_answer(&answer(partition), 0, "a:1").unwrap();
        assert_eq!(description.voters[0].last_caught_up_timestamp, None);

        let refused =
            PartitionData::default().with_error_code(ResponseError::NotLeaderOrFollower.code());
        let error = read_answer(&answer(refused), 2, "a:1").unwrap_err();
        assert_eq!(
            error.response_error(),
            Some(ResponseError::NotLeaderOrFollower)
        );
        let missing = DescribeQuorumResponse::default();
        assert!(matches!(
            read_answer(&missing, 2, "a:1"),
            Err(Error::Protocol { .. })
        ));
    }
}
