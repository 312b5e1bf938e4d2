//! What the node counts for operators, as plain data.
//!
//! The core keeps counters it alone can see (records and bytes a client
//! appended or read, per topic; error codes it answered, per API; ISR
//! shrinks and expands it saw committed) and, when asked, describes its
//! state as gauges (`Snapshot`: partitions, groups, the controller). It
//! never formats or serves them: the driver adds what it measures itself
//! (request latency, syncs, connections) and renders Prometheus text.
//!
//! Maps are `BTreeMap`s, so a snapshot lists everything in the same order
//! on every run.

use std::collections::BTreeMap;

/// Labels of a topic's traffic counters grow with the topics a broker has
/// ever served; past this many, the rest count under `OTHER_TOPICS`.
pub const TOPICS_COUNTED_MAX: usize = 10_000;
/// Where traffic of topics beyond `TOPICS_COUNTED_MAX` is counted.
pub const OTHER_TOPICS: &str = "_other";

/// Records and bytes one topic took in from producers and gave out to
/// consumers (followers' fetches are replication, not counted here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicTraffic {
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
}

/// Counters that only grow, for the life of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub topics: BTreeMap<String, TopicTraffic>,
    /// Non-zero error codes answered, by (API key, error code); one
    /// response may carry several (one per partition).
    pub errors: BTreeMap<(i16, i16), u64>,
    /// Committed ISR changes of partitions this broker leads.
    pub isr_shrinks: u64,
    pub isr_expands: u64,
}

impl Counters {
    fn topic(&mut self, topic: &str) -> &mut TopicTraffic {
        if !self.topics.contains_key(topic) && self.topics.len() >= TOPICS_COUNTED_MAX {
            return self.topics.entry(OTHER_TOPICS.to_string()).or_default();
        }
        self.topics.entry(topic.to_string()).or_default()
    }

    /// A producer's batch appended to `topic` (not a retried duplicate).
    pub fn produced(&mut self, topic: &str, records: u64, bytes: u64) {
        let traffic = self.topic(topic);
        traffic.records_in += records;
        traffic.bytes_in += bytes;
    }

    /// Record batches handed to a consumer from `topic`.
    pub fn consumed(&mut self, topic: &str, records: u64, bytes: u64) {
        let traffic = self.topic(topic);
        traffic.records_out += records;
        traffic.bytes_out += bytes;
    }

    pub fn error(&mut self, api_key: i16, error_code: i16) {
        if error_code != 0 {
            *self.errors.entry((api_key, error_code)).or_default() += 1;
        }
    }

    /// The committed ISR of a led partition went from `before` to `after`
    /// members.
    pub fn isr_changed(&mut self, before: usize, after: usize) {
        if after < before {
            self.isr_shrinks += 1;
        } else if after > before {
            self.isr_expands += 1;
        }
    }
}

/// The number of records in a run of record batches, as their headers
/// say. A torn last batch, as a fetch may end with, is not counted.
pub fn records_in_batches(bytes: &[u8]) -> u64 {
    crate::batch::headers_in(bytes)
        .map(|(header, _)| u64::try_from(header.record_count).unwrap_or(0))
        .sum()
}

/// Kafka's name of an API (`Produce`, `Fetch`), or `unknown`.
pub fn api_name(api_key: i16) -> String {
    kafka_protocol::messages::ApiKey::try_from(api_key)
        .map_or_else(|_| "unknown".to_string(), |key| format!("{key:?}"))
}

/// Kafka's name of an error code (`NOT_LEADER_OR_FOLLOWER`), or `UNKNOWN`.
pub fn error_name(error_code: i16) -> String {
    let error = match kafka_protocol::ResponseError::try_from_code(error_code) {
        None | Some(kafka_protocol::ResponseError::Unknown(_)) => return "UNKNOWN".to_string(),
        Some(error) => error,
    };
    let camel = format!("{error:?}");
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// One partition this broker holds, as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionGauges {
    pub topic: String,
    pub partition: i32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    pub segments: u64,
    /// This broker leads it (or holds it alone).
    pub leader: bool,
    /// Led here with fewer in the ISR than replicas.
    pub under_replicated: bool,
    /// Led here with fewer in the ISR than `min.insync.replicas`.
    pub under_min_isr: bool,
    /// ISR and replica counts as the leader sees them (1 and 1 alone;
    /// 0 and 0 where this broker does not lead).
    pub isr: u64,
    pub replicas: u64,
}

/// One consumer group this broker coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupGauges {
    pub group: String,
    /// Kafka's state name (`Stable`, `Empty`, ...).
    pub state: &'static str,
    pub members: u64,
    pub generation: i32,
}

/// A group's committed offset for a partition this broker leads, and how
/// far its high watermark is ahead of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub lag: i64,
}

/// The controller quorum as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerGauges {
    /// This node runs in a quorum (`controller.quorum.voters` set).
    pub in_quorum: bool,
    /// This node is the active controller (alone, it always is).
    pub active: bool,
    /// The active controller's node id, if known.
    pub active_id: Option<i32>,
    /// The quorum's current leader epoch (0 for a node alone).
    pub leader_epoch: i32,
    /// The quorum's high watermark (committed metadata entries).
    pub high_watermark: i64,
    pub voters: u64,
    /// Brokers registered and not fenced, as the committed metadata says.
    pub live_brokers: u64,
    /// Leader elections the committed metadata made outside the ISR
    /// (`unclean.leader.election.enable`), as Kafka's controller counts
    /// `UncleanLeaderElectionsPerSec`.
    pub unclean_elections: u64,
}

/// Everything the node reports at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub node_id: i32,
    /// Serving: started, and in a cluster registered and unfenced.
    pub ready: bool,
    /// A sync failed: the log directory is offline until a restart.
    pub storage_offline: bool,
    pub counters: Counters,
    pub partitions: Vec<PartitionGauges>,
    pub groups: Vec<GroupGauges>,
    pub lags: Vec<GroupLag>,
    pub controller: ControllerGauges,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build_batch;

    #[test]
    fn records_are_counted_from_batch_headers() {
        let mut bytes = Vec::new();
        for count in [3usize, 1, 5] {
            let records: Vec<_> = (0..count)
                .map(|i| (Some(&b"k"[..]), Some(&b"v"[..]), Vec::new(), i as i64))
                .collect();
            bytes.extend_from_slice(&build_batch(0, &records));
        }
        assert_eq!(records_in_batches(&bytes), 9);
        // A fetch cut inside its last batch counts the whole ones only.
        assert_eq!(records_in_batches(&bytes[..bytes.len() - 1]), 4);
        assert_eq!(records_in_batches(&[]), 0);
        assert_eq!(records_in_batches(&[0xff; 80]), 0);
    }

    #[test]
    fn traffic_beyond_the_bound_goes_to_one_label() {
        let mut counters = Counters::default();
        for i in 0..TOPICS_COUNTED_MAX {
            counters.produced(&format!("t{i}"), 1, 10);
        }
        counters.produced("late", 2, 20);
        assert_eq!(counters.topics.len(), TOPICS_COUNTED_MAX + 1);
        assert_eq!(counters.topics[OTHER_TOPICS].records_in, 2);
        counters.consumed("t0", 4, 40);
        assert_eq!(counters.topics["t0"].bytes_out, 40);
    }

    #[test]
    fn apis_and_errors_have_kafkas_names() {
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(18), "ApiVersions");
        assert_eq!(api_name(-7), "unknown");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(i16::MAX), "UNKNOWN");
    }

    #[test]
    fn isr_changes_count_by_direction_and_errors_skip_zero() {
        let mut counters = Counters::default();
        counters.isr_changed(3, 2);
        counters.isr_changed(2, 3);
        counters.isr_changed(2, 3);
        counters.isr_changed(3, 3);
        assert_eq!((counters.isr_shrinks, counters.isr_expands), (1, 2));
        counters.error(0, 0);
        counters.error(0, 6);
        counters.error(0, 6);
        assert_eq!(counters.errors.len(), 1);
        assert_eq!(counters.errors[&(0, 6)], 2);
    }
}
