//! The partition assignors a group leader runs: Kafka's `range` and
//! `roundrobin`, giving the same result as Java's `RangeAssignor` and
//! `RoundRobinAssignor` for the same members and topics (without rack
//! information, which this client does not send).
//!
//! Both order members as Java's `MemberInfo` does: members with a group
//! instance id first, by that id, then the others by member id, comparing
//! strings by UTF-16 code units as Java's `String.compareTo` does. Topics
//! the leader's metadata does not know are left unassigned, as in Java.
//!
//! Cooperative (incremental) rebalancing and the sticky assignors are not
//! implemented: every rebalance is eager.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use crate::record::TopicPartition;

/// A partition assignment strategy (Kafka: `partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Assignor {
    /// Per topic, consecutive ranges of partitions to the members subscribed
    /// to it; the first members get one more when it does not divide evenly.
    Range,
    /// Every partition of every subscribed topic, sorted, dealt out in turn
    /// to the members subscribed to its topic.
    RoundRobin,
}

impl Assignor {
    /// The protocol name in JoinGroup, as Java's assignors name themselves.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    pub fn from_name(name: &str) -> Option<Assignor> {
        [Assignor::Range, Assignor::RoundRobin]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// Assigns the partitions of `partitions_per_topic` to `members`. Every
    /// member gets an entry, possibly empty; each list is sorted.
    pub fn assign(
        self,
        members: &[MemberSubscription],
        partitions_per_topic: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut sorted: Vec<&MemberSubscription> = members.iter().collect();
        sorted.sort_by(|a, b| java_member_order(a, b));
        let mut assignment: BTreeMap<String, Vec<TopicPartition>> = members
            .iter()
            .map(|m| (m.member_id.clone(), Vec::new()))
            .collect();
        match self {
            Assignor::Range => range(&sorted, partitions_per_topic, &mut assignment),
            Assignor::RoundRobin => round_robin(&sorted, partitions_per_topic, &mut assignment),
        }
        for partitions in assignment.values_mut() {
            partitions.sort();
        }
        assignment
    }
}

/// One member as the leader sees it in the JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub topics: BTreeSet<String>,
}

/// Java's `String.compareTo`: lexicographic over UTF-16 code units.
fn java_string_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Java's `MemberInfo.compareTo`.
fn java_member_order(a: &MemberSubscription, b: &MemberSubscription) -> Ordering {
    match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => java_string_order(x, y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => java_string_order(&a.member_id, &b.member_id),
    }
}

fn known_partitions(partitions_per_topic: &BTreeMap<String, i32>, topic: &str) -> i32 {
    partitions_per_topic.get(topic).copied().unwrap_or(0).max(0)
}

fn range(
    sorted: &[&MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
    assignment: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let topics: BTreeSet<&String> = sorted.iter().flat_map(|m| &m.topics).collect();
    for topic in topics {
        let count = known_partitions(partitions_per_topic, topic);
        let subscribers: Vec<&&MemberSubscription> =
            sorted.iter().filter(|m| m.topics.contains(topic)).collect();
        let per_member = count / subscribers.len() as i32;
        let with_extra = count % subscribers.len() as i32;
        for (index, member) in subscribers.iter().enumerate() {
            let index = index as i32;
            let start = per_member * index + index.min(with_extra);
            let length = per_member + i32::from(index < with_extra);
            let given = assignment.get_mut(&member.member_id).expect("every member");
            given.extend((start..start + length).map(|p| TopicPartition::new(topic.clone(), p)));
        }
    }
}

fn round_robin(
    sorted: &[&MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
    assignment: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    // Java sorts topics with a TreeSet of Strings (UTF-16 order).
    let mut topics: Vec<&String> = sorted
        .iter()
        .flat_map(|m| &m.topics)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    topics.sort_by(|a, b| java_string_order(a, b));
    let mut next = 0usize;
    for topic in topics {
        for partition in 0..known_partitions(partitions_per_topic, topic) {
            // Some member subscribes to every listed topic, so this finds
            // one within a full turn.
            let taker = (0..sorted.len())
                .map(|step| (next + step) % sorted.len())
                .find(|&i| sorted[i].topics.contains(topic))
                .expect("a member subscribes to the topic");
            assignment
                .get_mut(&sorted[taker].member_id)
                .expect("every member")
                .push(TopicPartition::new(topic.clone(), partition));
            next = (taker + 1) % sorted.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.to_string(),
            group_instance_id: None,
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn counts(pairs: &[(&str, i32)]) -> BTreeMap<String, i32> {
        pairs.iter().map(|&(t, n)| (t.to_string(), n)).collect()
    }

    fn names(assignment: &BTreeMap<String, Vec<TopicPartition>>, id: &str) -> Vec<String> {
        assignment[id].iter().map(|tp| tp.to_string()).collect()
    }

    /// The example in Java's `RangeAssignor` documentation.
    #[test]
    fn range_matches_the_java_example() {
        let members = [member("C1", &["t0", "t1"]), member("C0", &["t0", "t1"])];
        let assignment = Assignor::Range.assign(&members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(names(&assignment, "C0"), ["t0-0", "t0-1", "t1-0", "t1-1"]);
        assert_eq!(names(&assignment, "C1"), ["t0-2", "t1-2"]);
    }

    #[test]
    fn range_gives_the_remainder_to_the_first_members_per_topic() {
        let members = [
            member("a", &["t"]),
            member("b", &["t", "u"]),
            member("c", &["t"]),
        ];
        let assignment = Assignor::Range.assign(&members, &counts(&[("t", 7), ("u", 2)]));
        assert_eq!(names(&assignment, "a"), ["t-0", "t-1", "t-2"]);
        assert_eq!(names(&assignment, "b"), ["t-3", "t-4", "u-0", "u-1"]);
        assert_eq!(names(&assignment, "c"), ["t-5", "t-6"]);
        // More members than partitions: the last ones get nothing.
        let assignment = Assignor::Range.assign(&members, &counts(&[("t", 2)]));
        assert_eq!(names(&assignment, "c"), Vec::<String>::new());
        assert_eq!(names(&assignment, "b"), ["t-1"]);
    }

    /// The two examples in Java's `RoundRobinAssignor` documentation.
    #[test]
    fn round_robin_matches_the_java_examples() {
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let assignment = Assignor::RoundRobin.assign(&members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(names(&assignment, "C0"), ["t0-0", "t0-2", "t1-1"]);
        assert_eq!(names(&assignment, "C1"), ["t0-1", "t1-0", "t1-2"]);

        let members = [
            member("C0", &["t0"]),
            member("C1", &["t0", "t1"]),
            member("C2", &["t0", "t1", "t2"]),
        ];
        let partitions = counts(&[("t0", 1), ("t1", 2), ("t2", 3)]);
        let assignment = Assignor::RoundRobin.assign(&members, &partitions);
        assert_eq!(names(&assignment, "C0"), ["t0-0"]);
        assert_eq!(names(&assignment, "C1"), ["t1-0"]);
        assert_eq!(names(&assignment, "C2"), ["t1-1", "t2-0", "t2-1", "t2-2"]);
    }

    #[test]
    fn static_members_come_first_by_instance_id() {
        let mut z = member("a-dynamic", &["t"]);
        z.group_instance_id = Some("z".into());
        let mut y = member("b-dynamic", &["t"]);
        y.group_instance_id = Some("y".into());
        let members = [member("0-first-by-id", &["t"]), z, y];
        let assignment = Assignor::Range.assign(&members, &counts(&[("t", 3)]));
        assert_eq!(names(&assignment, "b-dynamic"), ["t-0"]);
        assert_eq!(names(&assignment, "a-dynamic"), ["t-1"]);
        assert_eq!(names(&assignment, "0-first-by-id"), ["t-2"]);
    }

    #[test]
    fn member_ids_compare_by_utf16_units_as_java_does() {
        // In UTF-16, U+1F600 starts with the surrogate 0xD83D and so sorts
        // before U+FF5E; in UTF-8 bytes (and Rust's `str` order) it is the
        // other way round.
        let members = [member("\u{FF5E}", &["t"]), member("\u{1F600}", &["t"])];
        let assignment = Assignor::Range.assign(&members, &counts(&[("t", 2)]));
        assert_eq!(names(&assignment, "\u{1F600}"), ["t-0"]);
        assert_eq!(names(&assignment, "\u{FF5E}"), ["t-1"]);
    }

    #[test]
    fn unknown_topics_are_left_out_and_names_round_trip() {
        let members = [member("a", &["known", "missing"])];
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let assignment = assignor.assign(&members, &counts(&[("known", 2)]));
            assert_eq!(names(&assignment, "a"), ["known-0", "known-1"]);
            assert_eq!(Assignor::from_name(assignor.name()), Some(assignor));
        }
        assert_eq!(Assignor::from_name("cooperative-sticky"), None);
    }

    fn group() -> impl Strategy<Value = (Vec<MemberSubscription>, BTreeMap<String, i32>)> {
        let topics = ["a", "b", "c", "d"];
        let member = proptest::collection::btree_set(0..topics.len(), 0..=topics.len());
        (
            proptest::collection::vec(member, 1..8),
            proptest::collection::vec(0..10i32, topics.len()),
        )
            .prop_map(move |(subscriptions, sizes)| {
                let members = subscriptions
                    .into_iter()
                    .enumerate()
                    .map(|(i, picked)| MemberSubscription {
                        member_id: format!("m{i}"),
                        group_instance_id: (i % 3 == 0).then(|| format!("s{}", 9 - i)),
                        topics: picked.into_iter().map(|t| topics[t].to_string()).collect(),
                    })
                    .collect();
                let counts = topics
                    .iter()
                    .zip(sizes)
                    .map(|(t, n)| (t.to_string(), n))
                    .collect();
                (members, counts)
            })
    }

    proptest! {
        /// Both assignors hand out every partition of every subscribed topic
        /// exactly once, only to members subscribed to it, spread evenly
        /// (range per topic; round-robin overall when all subscribe alike).
        #[test]
        fn every_subscribed_partition_has_exactly_one_subscribed_owner((members, counts) in group()) {
            for assignor in [Assignor::Range, Assignor::RoundRobin] {
                let assignment = assignor.assign(&members, &counts);
                prop_assert_eq!(assignment.len(), members.len());
                let mut owners: BTreeMap<TopicPartition, usize> = BTreeMap::new();
                for m in &members {
                    for tp in &assignment[&m.member_id] {
                        prop_assert!(m.topics.contains(&tp.topic));
                        *owners.entry(tp.clone()).or_default() += 1;
                    }
                }
                let subscribed: BTreeSet<&String> = members.iter().flat_map(|m| &m.topics).collect();
                let expected: usize = subscribed.iter().map(|t| counts[*t] as usize).sum();
                prop_assert_eq!(owners.len(), expected);
                prop_assert!(owners.values().all(|&n| n == 1));
                for topic in &subscribed {
                    let per_member: Vec<usize> = members
                        .iter()
                        .filter(|m| m.topics.contains(*topic))
                        .map(|m| assignment[&m.member_id].iter().filter(|tp| &&tp.topic == topic).count())
                        .collect();
                    let (low, high) = (per_member.iter().min().unwrap(), per_member.iter().max().unwrap());
                    if assignor == Assignor::Range {
                        prop_assert!(high - low <= 1, "{:?}", per_member);
                    }
                }
                let all_alike = members.iter().all(|m| m.topics == members[0].topics);
                if assignor == Assignor::RoundRobin && all_alike {
                    let sizes: Vec<usize> = assignment.values().map(Vec::len).collect();
                    let (low, high) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    prop_assert!(high - low <= 1, "{:?}", sizes);
                }
                // Deterministic: the same input in another order, same output.
                let mut reversed = members.clone();
                reversed.reverse();
                prop_assert_eq!(assignor.assign(&reversed, &counts), assignment);
            }
        }
    }
}
