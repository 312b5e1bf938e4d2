//! The client's picture of the cluster: brokers, controller, topics and who
//! leads each partition, folded in from Metadata answers.
//!
//! It is a plain value kept behind a lock in `Client`; producers and
//! consumers read leaders from it and ask for a refresh when an answer says
//! it is stale (see `error::error_invalidates_metadata`).

use std::collections::BTreeMap;

use kafka_protocol::messages::MetadataResponse;
use kafka_protocol::ResponseError;
use uuid::Uuid;

/// A broker as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One partition: leader, replicas, in-sync replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// `None` while no leader is known (Kafka sends -1).
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
    /// A per-partition error such as LEADER_NOT_AVAILABLE.
    pub error: Option<ResponseError>,
}

/// One topic and its partitions, ordered by partition number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// Nil when the broker's Metadata version predates topic ids.
    pub id: Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    pub fn partition(&self, partition: i32) -> Option<&PartitionInfo> {
        self.partitions.get(usize::try_from(partition).ok()?)
    }

    pub fn leader(&self, partition: i32) -> Option<i32> {
        self.partition(partition).and_then(|p| p.leader)
    }

    /// Partitions with a known leader.
    pub fn available_partitions(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|p| p.leader.is_some())
            .map(|p| p.partition)
            .collect()
    }
}

/// Everything the last Metadata answers said.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: Option<i32>,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// Topics the last answer refused, with the error (e.g. unknown).
    pub topic_errors: BTreeMap<String, ResponseError>,
}

impl ClusterMetadata {
    /// Folds in a Metadata answer. When it was asked for every topic, a
    /// topic missing from the answer no longer exists.
    pub fn apply(&mut self, response: &MetadataResponse, all_topics: bool) {
        self.cluster_id = response.cluster_id.as_ref().map(|id| id.to_string());
        self.controller_id = Some(response.controller_id.0).filter(|&id| id >= 0);
        self.brokers = response
            .brokers
            .iter()
            .map(|b| {
                let info = BrokerInfo {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                };
                (info.node_id, info)
            })
            .collect();
        if all_topics {
            self.topics.clear();
            self.topic_errors.clear();
        }
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            match ResponseError::try_from_code(topic.error_code) {
                None => {
                    self.topic_errors.remove(&name);
                    self.topics.insert(name.clone(), topic_info(name, topic));
                }
                Some(error) => {
                    // A topic-level error (unknown, still being created,
                    // invalid name) leaves nothing usable until a later answer.
                    self.topics.remove(&name);
                    self.topic_errors.insert(name, error);
                }
            }
        }
    }
}

fn topic_info(
    name: String,
    topic: &kafka_protocol::messages::metadata_response::MetadataResponseTopic,
) -> TopicInfo {
    let mut partitions: Vec<PartitionInfo> = topic
        .partitions
        .iter()
        .map(|p| PartitionInfo {
            partition: p.partition_index,
            leader: Some(p.leader_id.0).filter(|&id| id >= 0),
            leader_epoch: p.leader_epoch,
            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
            error: ResponseError::try_from_code(p.error_code),
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    // Partitions are numbered 0..n; a gap would make index lookups lie.
    let dense = partitions
        .iter()
        .enumerate()
        .all(|(i, p)| p.partition == i as i32);
    if !dense {
        tracing::warn!(topic = %name, "metadata lists partitions with gaps; keeping the dense prefix");
        let prefix = partitions
            .iter()
            .enumerate()
            .take_while(|(i, p)| p.partition == *i as i32)
            .count();
        partitions.truncate(prefix);
    }
    TopicInfo {
        name,
        id: topic.topic_id,
        is_internal: topic.is_internal,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn topic(name: &str, error: i16, leaders: &[i32]) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.into()))))
            .with_error_code(error)
            .with_partitions(
                leaders
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, &leader)| {
                        MetadataResponsePartition::default()
                            .with_partition_index(i as i32)
                            .with_leader_id(BrokerId(leader))
                    })
                    .collect(),
            )
    }

    #[test]
    fn apply_keeps_leaders_sorted_and_forgets_refused_topics() {
        let response = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("::1"))
                .with_port(9092)])
            .with_controller_id(BrokerId(1))
            .with_topics(vec![topic("a", 0, &[1, -1, 1]), topic("b", 3, &[])]);
        let mut metadata = ClusterMetadata::default();
        metadata.apply(&response, true);
        assert_eq!(metadata.brokers[&1].address(), "[::1]:9092");
        let a = &metadata.topics["a"];
        assert_eq!(a.partition_count(), 3);
        assert_eq!(a.leader(0), Some(1));
        assert_eq!(a.leader(1), None);
        assert_eq!(a.available_partitions(), vec![0, 2]);
        assert_eq!(
            metadata.topic_errors["b"],
            ResponseError::UnknownTopicOrPartition
        );
        let later = MetadataResponse::default().with_topics(vec![topic("a", 3, &[])]);
        metadata.apply(&later, false);
        assert!(!metadata.topics.contains_key("a"));
    }
}
