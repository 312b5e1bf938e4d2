//! A transaction's offsets in the group coordinator, as Kafka's
//! `OffsetMetadataManager` keeps them: TxnOffsetCommit writes them to the
//! group's `__consumer_offsets` partition inside the producer's
//! transaction, and they stay apart from the committed offsets, unseen by
//! OffsetFetch, until the transaction's marker in that partition commits
//! them (each over an older commit only) or drops them. The node calls
//! the same methods when it writes and when it replays the log at load.

use kafka_protocol::ResponseError;

use super::{Committed, Coordinator, GroupOffsets, State};

impl Coordinator {
    /// Checks whether a TxnOffsetCommit may write offsets of a group now:
    /// Kafka's `ClassicGroup.validateOffsetCommit` of a transactional
    /// commit. A member id, generation or instance id (v3+) is checked as
    /// OffsetCommit checks it; without them (v0-2, or a producer outside
    /// the group) the commit is accepted even by a group with members, and
    /// a rebalance does not stop it.
    pub fn may_commit_transactional(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        let Some(group) = self.groups.get(group_id) else {
            // An unknown group: a commit without a generation makes it (a
            // simple group, as with OffsetCommit), one with a generation
            // names a generation that never was.
            return if generation < 0 {
                Ok(())
            } else {
                Err(ResponseError::IllegalGeneration)
            };
        };
        if generation < 0 && group.state == State::Empty {
            return Ok(());
        }
        if generation < 0 && member_id.is_empty() && instance.is_none() {
            return Ok(());
        }
        if let Some(instance) = instance {
            let holder = group
                .members
                .values()
                .find(|m| m.group_instance_id.as_deref() == Some(instance));
            match holder {
                None => return Err(ResponseError::UnknownMemberId),
                Some(m) if m.member_id != member_id => return Err(ResponseError::FencedInstanceId),
                Some(_) => {}
            }
        }
        if !group.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Holds a transaction's offset (after the node wrote it) until the
    /// transaction ends. A later one of the same producer and partition
    /// replaces it. The group exists from then on, as with a commit.
    pub fn stage(
        &mut self,
        group_id: &str,
        producer_id: i64,
        topic: &str,
        partition: i32,
        committed: Committed,
    ) {
        assert!(producer_id >= 0, "a transaction has a producer id");
        assert!(
            committed.record_offset >= 0,
            "a staged offset was written first"
        );
        self.groups.entry(group_id.to_string()).or_default();
        self.pending
            .entry(group_id.to_string())
            .or_default()
            .entry(producer_id)
            .or_default()
            .insert((topic.to_string(), partition), committed);
    }

    /// Ends a producer's transaction for the groups `among` selects (those
    /// of the `__consumer_offsets` partition its marker is in): on commit
    /// its offsets become the committed ones, each only over a commit whose
    /// record is older (a plain commit written after the transaction's
    /// record stays); on abort they are dropped. Returns how many offsets
    /// were committed.
    pub fn end_transaction(
        &mut self,
        producer_id: i64,
        commit: bool,
        among: impl Fn(&str) -> bool,
    ) -> usize {
        let mut ended: Vec<(String, GroupOffsets)> = Vec::new();
        for (group_id, producers) in self.pending.iter_mut() {
            if !among(group_id) {
                continue;
            }
            if let Some(offsets) = producers.remove(&producer_id) {
                ended.push((group_id.clone(), offsets));
            }
        }
        self.pending.retain(|_, producers| !producers.is_empty());
        if !commit {
            return 0;
        }
        let mut applied = 0;
        for (group_id, offsets) in ended {
            let committed = self.offsets.entry(group_id.clone()).or_default();
            for (key, staged) in offsets {
                let newer = committed
                    .get(&key)
                    .is_none_or(|existing| staged.record_offset > existing.record_offset);
                if newer {
                    committed.insert(key, staged);
                    applied += 1;
                } else {
                    tracing::info!(
                        group = %group_id,
                        topic = %key.0,
                        partition = key.1,
                        producer_id,
                        "a transaction's offset is older than the committed one; kept the committed one"
                    );
                }
            }
            if committed.is_empty() {
                self.offsets.remove(&group_id);
            }
        }
        applied
    }

    /// True when an open transaction holds an offset of this partition for
    /// the group (OffsetFetch with require_stable answers
    /// UNSTABLE_OFFSET_COMMIT for it).
    pub fn has_pending(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let key = (topic.to_string(), partition);
        self.pending
            .get(group_id)
            .is_some_and(|producers| producers.values().any(|o| o.contains_key(&key)))
    }

    /// The producers with an open transaction holding offsets of the group.
    pub fn open_transactions(&self, group_id: &str) -> Vec<i64> {
        self.pending
            .get(group_id)
            .map(|producers| producers.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The partitions open transactions hold offsets of, for the group,
    /// each once, in order.
    pub fn pending_partitions(&self, group_id: &str) -> Vec<(String, i32)> {
        let mut partitions: Vec<(String, i32)> = self
            .pending
            .get(group_id)
            .into_iter()
            .flat_map(|producers| producers.values())
            .flat_map(|offsets| offsets.keys().cloned())
            .collect();
        partitions.sort();
        partitions.dedup();
        partitions
    }

    /// Forgets the open transactions' offsets of the groups `among`
    /// selects: a partition of `__consumer_offsets` about to be replayed
    /// holds what is true of them.
    pub fn forget_pending_where(&mut self, among: impl Fn(&str) -> bool) {
        self.pending.retain(|group_id, _| !among(group_id));
    }

    /// Forgets the open transactions' offsets of one partition for a group.
    pub(super) fn forget_pending_of(&mut self, group_id: &str, key: &(String, i32)) {
        let Some(producers) = self.pending.get_mut(group_id) else {
            return;
        };
        for offsets in producers.values_mut() {
            offsets.remove(key);
        }
        producers.retain(|_, offsets| !offsets.is_empty());
        if producers.is_empty() {
            self.pending.remove(group_id);
        }
    }

    pub(super) fn pending_invariants(&self) {
        for (group_id, producers) in &self.pending {
            assert!(
                self.groups.contains_key(group_id),
                "group {group_id}: a transaction's offsets belong to a known group"
            );
            assert!(!producers.is_empty(), "group {group_id}: no empty entry");
            for (producer_id, offsets) in producers {
                assert!(*producer_id >= 0);
                assert!(
                    !offsets.is_empty(),
                    "group {group_id}: producer {producer_id} holds offsets"
                );
                assert!(offsets.values().all(|c| c.record_offset >= 0));
            }
        }
    }
}
