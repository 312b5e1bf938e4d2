//! `Node::metrics`: the node's counters and its state as gauges, for the
//! driver to render (see `crate::metrics`).

use super::Node;
use crate::metrics::{ControllerGauges, GroupGauges, GroupLag, PartitionGauges, Snapshot};
use crate::replication::Role;
use crate::storage::Storage;

impl<S: Storage> Node<S> {
    /// What operators see of this node now. It reads, never changes, the
    /// node's state.
    pub fn metrics(&self) -> Snapshot {
        let broker = &self.broker;
        let serving = broker.cluster.as_ref().is_none_or(|c| c.serving);
        Snapshot {
            node_id: self.node_id.0,
            ready: self.is_ready() && serving && !self.stopped,
            storage_offline: broker.storage_offline(),
            counters: broker.metrics.clone(),
            partitions: self.partition_gauges(),
            groups: broker
                .groups
                .groups
                .iter()
                .map(|(group, g)| GroupGauges {
                    group: group.clone(),
                    state: g.state.name(),
                    members: g.members.len() as u64,
                    generation: g.generation,
                })
                .collect(),
            lags: self.group_lags(),
            controller: self.controller_gauges(),
        }
    }

    fn partition_gauges(&self) -> Vec<PartitionGauges> {
        let broker = &self.broker;
        let mut gauges = Vec::new();
        for name in broker.topics.names() {
            let Some(topic) = broker.topics.get(name) else {
                continue;
            };
            for (index, held) in topic.partitions.iter().enumerate() {
                // Partitions of a cluster this broker holds no replica of.
                let Some(held) = held else {
                    continue;
                };
                let log = &held.log;
                let (leader, isr, replicas, min_insync) = match &held.role {
                    Role::Alone => (true, 1, 1, 1),
                    Role::Leader(l) => (true, l.isr.len(), l.replicas.len(), l.min_insync),
                    Role::Follower(_) | Role::Offline { .. } => (false, 0, 0, 0),
                };
                gauges.push(PartitionGauges {
                    topic: name.clone(),
                    partition: index as i32,
                    log_start_offset: log.log_start_offset(),
                    log_end_offset: log.log_end_offset(),
                    high_watermark: broker.high_watermark(held),
                    size_bytes: log.size_bytes(),
                    segments: log.segment_count() as u64,
                    leader,
                    under_replicated: leader && isr < replicas,
                    under_min_isr: leader && isr < min_insync,
                    isr: isr as u64,
                    replicas: replicas as u64,
                });
            }
        }
        gauges
    }

    /// Lag of each committed offset whose partition this broker leads.
    fn group_lags(&self) -> Vec<GroupLag> {
        let broker = &self.broker;
        let mut lags = Vec::new();
        for (group, offsets) in &broker.groups.offsets {
            for ((topic, partition), committed) in offsets {
                let Some(held) = broker.topics.partition(topic, *partition) else {
                    continue;
                };
                if !matches!(held.role, Role::Alone | Role::Leader(_)) {
                    continue;
                }
                let high_watermark = broker.high_watermark(held);
                lags.push(GroupLag {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed_offset: committed.offset,
                    lag: (high_watermark - committed.offset).max(0),
                });
            }
        }
        lags
    }

    fn controller_gauges(&self) -> ControllerGauges {
        let broker = &self.broker;
        let live_brokers = broker.live_brokers().len() as u64;
        let Some(quorum) = &self.quorum else {
            // Alone: this node is its own controller, in a quorum of one.
            return ControllerGauges {
                in_quorum: false,
                active: true,
                active_id: Some(self.node_id.0),
                leader_epoch: 0,
                high_watermark: self.quorum_committed,
                voters: 1,
                live_brokers,
                unclean_elections: 0,
            };
        };
        let replica = quorum.replica();
        ControllerGauges {
            in_quorum: true,
            active: broker.cluster.as_ref().is_some_and(|c| c.is_controller),
            active_id: broker.cluster.as_ref().and_then(|c| c.controller_id),
            leader_epoch: replica.map_or(0, |r| r.leader_epoch()),
            high_watermark: replica.map_or(0, |r| r.high_watermark()),
            voters: quorum.voters().len() as u64,
            live_brokers,
            unclean_elections: broker
                .cluster
                .as_ref()
                .map_or(0, |c| c.image.unclean_elections()),
        }
    }
}
