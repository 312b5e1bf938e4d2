//! DescribeQuorum (API key 55): the controller quorum as its leader sees
//! it, answered the way Kafka's `KafkaRaftClient.handleDescribeQuorumRequest`
//! answers it.
//!
//! - A request that does not name exactly `__cluster_metadata` partition 0,
//!   or that reaches a node without a quorum (which has no such partition),
//!   gets UNKNOWN_TOPIC_OR_PARTITION on every partition it named.
//! - A voter that does not lead answers NOT_LEADER_OR_FOLLOWER on that one
//!   partition, and nothing else: Kafka names no leader there (its leader
//!   id is the field's default), so a client looks for the leader itself.
//! - The leader answers its id, epoch and high watermark, and per voter
//!   (in id order) the durable log end it knows of, when it last saw that
//!   voter fetch, and when that voter last caught up to its log end.
//!   Observers are none: the replica serves voters only.
//!
//! The replica keeps end offsets but no clock; the fetch times are wall
//! times (`Now::wall_ms`, as Kafka's `time.milliseconds()`), kept here from
//! the fetches the node hands to the replica (`note_voter_fetch`), by
//! Kafka's rule in `LeaderState.ReplicaState.updateFollowerState`. They
//! start at -1 ("not known") with each epoch this node leads.
//!
//! DescribeQuorum is in `wire::versions::SUPPORTED`, unlike the peer-only
//! Raft APIs: clients learn of it from ApiVersions (Kafka's admin client
//! and `sluice-client` check that before sending it), and its header and
//! version go through the same checks as every client API.

use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node as NodeEndpoints, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{BrokerId, DescribeQuorumRequest, DescribeQuorumResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{FrameOutcome, Node};
use crate::raft::wire::METADATA_TOPIC;
use crate::raft::RaftReplica;
use crate::session::{ConnectionId, Slot, SlotState};
use crate::storage::Storage;
use crate::types::{NodeId, Now};
use crate::wire::{decode, encode_reply, Reply, Request};

/// The listener name voters are shown under when
/// `controller.listener.names` names none.
const CONTROLLER_LISTENER_DEFAULT: &str = "CONTROLLER";

/// What the leader saw of one follower's fetches in one epoch, on the wall
/// clock; -1 where nothing is known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FetchTimes {
    epoch: i32,
    last_fetch_wall_ms: i64,
    /// The leader's durable log end when that fetch came.
    last_fetch_leader_end_offset: i64,
    last_caught_up_wall_ms: i64,
}

impl FetchTimes {
    fn new(epoch: i32) -> FetchTimes {
        FetchTimes {
            epoch,
            last_fetch_wall_ms: -1,
            last_fetch_leader_end_offset: -1,
            last_caught_up_wall_ms: -1,
        }
    }

    /// Kafka's rule: a fetch at or past the leader's end means caught up
    /// now; one at or past the end the leader had at the previous fetch
    /// means caught up as of that previous fetch.
    fn fetched(&mut self, wall_ms: i64, fetch_offset: i64, leader_end_offset: i64) {
        if fetch_offset >= leader_end_offset {
            self.last_caught_up_wall_ms = self.last_caught_up_wall_ms.max(wall_ms);
        } else if self.last_fetch_leader_end_offset > 0
            && fetch_offset >= self.last_fetch_leader_end_offset
        {
            self.last_caught_up_wall_ms = self.last_caught_up_wall_ms.max(self.last_fetch_wall_ms);
        }
        self.last_fetch_leader_end_offset = leader_end_offset;
        self.last_fetch_wall_ms = self.last_fetch_wall_ms.max(wall_ms);
    }
}

/// The leader's own durable log end, if this replica leads.
pub(super) fn leader_end_offset(replica: &RaftReplica) -> Option<i64> {
    let progress = replica.voter_progress()?;
    let own = progress.iter().find(|(id, _)| *id == replica.id())?;
    own.1
}

impl<S: Storage> Node<S> {
    /// A DescribeQuorum request, parsed: answered at once, in its place in
    /// the connection's order. Err (a body that does not decode) closes the
    /// connection.
    pub(super) fn describe_quorum_request(
        &mut self,
        now: Now,
        connection: ConnectionId,
        request: Request,
    ) -> Result<FrameOutcome, String> {
        let header = request.header;
        let mut body = request.body;
        let describe: DescribeQuorumRequest = decode(&mut body, header.version)?;
        let response = self.describe_quorum(now, header.version, &describe);
        let frame = encode_reply(header, &Reply::DescribeQuorum(response))?;
        self.sessions.push(
            connection,
            Slot {
                header,
                state: SlotState::Ready(frame),
            },
        );
        Ok(FrameOutcome {
            response_queued: true,
        })
    }

    /// The answer to a DescribeQuorum at `version`.
    pub(super) fn describe_quorum(
        &self,
        now: Now,
        version: i16,
        request: &DescribeQuorumRequest,
    ) -> DescribeQuorumResponse {
        if self.quorum.is_none() || !names_the_metadata_partition(request) {
            return unknown_partitions(request);
        }
        let replica = self.quorum.as_ref().and_then(|quorum| quorum.replica());
        let Some((replica, progress)) =
            replica.and_then(|replica| Some((replica, replica.voter_progress()?)))
        else {
            return not_leader();
        };
        let voters = progress
            .iter()
            .map(|&(voter, end_offset)| self.voter_state(now, replica, voter, end_offset))
            .collect();
        let partition = PartitionData::default()
            .with_partition_index(0)
            .with_error_code(0)
            .with_leader_id(BrokerId(replica.id().0))
            .with_leader_epoch(replica.leader_epoch())
            .with_high_watermark(replica.high_watermark())
            .with_current_voters(voters)
            .with_observers(Vec::new());
        let response =
            DescribeQuorumResponse::default().with_topics(vec![metadata_topic(partition)]);
        if version >= 2 {
            response.with_nodes(self.voter_endpoints())
        } else {
            response
        }
    }

    /// One voter's line of the leader's answer.
    fn voter_state(
        &self,
        now: Now,
        replica: &RaftReplica,
        voter: NodeId,
        end_offset: Option<i64>,
    ) -> ReplicaState {
        let (last_fetch_wall_ms, last_caught_up_wall_ms) = if voter == replica.id() {
            // The leader is caught up with itself, always (as Kafka shows it).
            (now.wall_ms, now.wall_ms)
        } else {
            match self.voter_fetches.get(&voter) {
                Some(times) if times.epoch == replica.leader_epoch() => {
                    (times.last_fetch_wall_ms, times.last_caught_up_wall_ms)
                }
                _ => (-1, -1),
            }
        };
        ReplicaState::default()
            .with_replica_id(BrokerId(voter.0))
            .with_log_end_offset(end_offset.unwrap_or(-1))
            .with_last_fetch_timestamp(last_fetch_wall_ms)
            .with_last_caught_up_timestamp(last_caught_up_wall_ms)
    }

    /// Where each voter serves the quorum (v2's `nodes`): its address in
    /// `controller.quorum.voters`, under the first controller listener name.
    fn voter_endpoints(&self) -> Vec<NodeEndpoints> {
        let config = &self.broker.config;
        let names = config.get("controller.listener.names");
        let name = names
            .split(',')
            .map(str::trim)
            .find(|name| !name.is_empty())
            .unwrap_or(CONTROLLER_LISTENER_DEFAULT)
            .to_string();
        config
            .quorum_voters
            .iter()
            .map(|voter| {
                let listener = Listener::default()
                    .with_name(StrBytes::from_string(name.clone()))
                    .with_host(StrBytes::from_string(voter.host.clone()))
                    .with_port(voter.port);
                NodeEndpoints::default()
                    .with_node_id(BrokerId(voter.id))
                    .with_listeners(vec![listener])
            })
            .collect()
    }

    /// Records a voter's fetch for the fetch times, once the replica took
    /// it: only a fetch the leader counted (its end offset for that voter
    /// is now the fetch offset) moves them, as only those move Kafka's.
    /// `leader_end_offset` is the leader's durable end when the fetch came.
    pub(super) fn note_voter_fetch(
        &mut self,
        now: Now,
        from: NodeId,
        fetch_offset: i64,
        leader_end_offset: i64,
    ) {
        let Some(replica) = self.quorum.as_ref().and_then(|quorum| quorum.replica()) else {
            return;
        };
        let Some(progress) = replica.voter_progress() else {
            return;
        };
        let counted = progress
            .iter()
            .any(|&(voter, end_offset)| voter == from && end_offset == Some(fetch_offset));
        if !counted || from == replica.id() {
            return;
        }
        let epoch = replica.leader_epoch();
        let times = self
            .voter_fetches
            .entry(from)
            .or_insert_with(|| FetchTimes::new(epoch));
        if times.epoch != epoch {
            *times = FetchTimes::new(epoch);
        }
        times.fetched(now.wall_ms, fetch_offset, leader_end_offset);
        assert!(
            self.voter_fetches.len() <= crate::raft::VOTERS_MAX,
            "fetch times are kept for voters only"
        );
    }
}

/// Kafka's check: one topic, `__cluster_metadata`, with one partition, 0.
fn names_the_metadata_partition(request: &DescribeQuorumRequest) -> bool {
    match request.topics.as_slice() {
        [topic] => {
            topic.topic_name.0.as_str() == METADATA_TOPIC
                && matches!(topic.partitions.as_slice(), [partition] if partition.partition_index == 0)
        }
        _ => false,
    }
}

/// UNKNOWN_TOPIC_OR_PARTITION on every partition the request named.
fn unknown_partitions(request: &DescribeQuorumRequest) -> DescribeQuorumResponse {
    let code = ResponseError::UnknownTopicOrPartition.code();
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    PartitionData::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code)
                })
                .collect();
            TopicData::default()
                .with_topic_name(topic.topic_name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DescribeQuorumResponse::default().with_topics(topics)
}

/// NOT_LEADER_OR_FOLLOWER on the metadata partition, every other field at
/// its default, as Kafka's `DescribeQuorumResponse.singletonErrorResponse`.
fn not_leader() -> DescribeQuorumResponse {
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_error_code(ResponseError::NotLeaderOrFollower.code());
    DescribeQuorumResponse::default().with_topics(vec![metadata_topic(partition)])
}

fn metadata_topic(partition: PartitionData) -> TopicData {
    TopicData::default()
        .with_topic_name(kafka_protocol::messages::TopicName(
            StrBytes::from_static_str(METADATA_TOPIC),
        ))
        .with_partitions(vec![partition])
}

#[cfg(test)]
mod tests {
    use super::FetchTimes;

    #[test]
    fn fetch_times_follow_kafkas_caught_up_rule() {
        let mut times = FetchTimes::new(3);
        // Behind the leader's end, no earlier fetch: fetched, not caught up.
        times.fetched(1_000, 5, 10);
        assert_eq!(
            (times.last_fetch_wall_ms, times.last_caught_up_wall_ms),
            (1_000, -1)
        );
        // Past the end the leader had at the previous fetch: caught up as
        // of that previous fetch.
        times.fetched(2_000, 10, 12);
        assert_eq!(
            (times.last_fetch_wall_ms, times.last_caught_up_wall_ms),
            (2_000, 1_000)
        );
        // At the leader's end: caught up now.
        times.fetched(3_000, 12, 12);
        assert_eq!(times.last_caught_up_wall_ms, 3_000);
        // A wall clock that went back moves neither time back.
        times.fetched(2_500, 12, 12);
        assert_eq!(
            (times.last_fetch_wall_ms, times.last_caught_up_wall_ms),
            (3_000, 3_000)
        );
    }
}
