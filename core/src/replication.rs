//! A partition's replication state on this broker, as Kafka's `Partition`
//! keeps it: the leader tracks each follower's log end (what it fetches
//! from) and, unlike Kafka, the end of what the follower synced (which a
//! Sluice follower reports beside it), decides who is caught up, moves the
//! high watermark over synced ends only, and asks
//! the controller to grow or shrink the ISR; a follower knows its leader,
//! the leader epoch, and the high watermark the leader last told it.
//!
//! Each rule is one function here, with the facts it relies on asserted
//! beside it. Times are monotonic milliseconds passed in by the caller.

use std::collections::BTreeMap;

/// What this broker is for a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Role {
    /// A node alone: the partition's only replica; its high watermark is
    /// the synced end of its log.
    #[default]
    Alone,
    Leader(Leading),
    Follower(Following),
    /// Not a replica, or a replica of a partition without a leader.
    Offline {
        leader_epoch: i32,
    },
}

/// A time before any other: never caught up.
const NEVER: i64 = i64::MIN;

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The offset the follower last fetched from: its log end, which is
    /// what Kafka's lag rules look at. -1 until it fetched in this epoch.
    pub end_offset: i64,
    /// The offset below which the follower's log is on its disk, synced,
    /// as its last fetch reported it (never past `end_offset`): what the
    /// high watermark and ISR expansion look at. -1 until it fetched.
    pub synced_offset: i64,
    /// The last time the follower was caught up with the leader's log end.
    pub last_caught_up_ms: i64,
    /// The leader's log end and the time at the follower's last fetch.
    last_fetch_leader_end: i64,
    last_fetch_ms: i64,
}

/// The leader's side of a partition, for one leader epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leading {
    pub me: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// The log end when this broker became leader in this epoch.
    pub epoch_start: i64,
    pub replicas: Vec<i32>,
    /// The ISR as the committed metadata says it.
    pub isr: Vec<i32>,
    /// An ISR change asked of the controller and not answered yet, and
    /// when it was asked.
    pub pending_isr: Option<Vec<i32>>,
    pub pending_since_ms: i64,
    pub followers: BTreeMap<i32, Progress>,
    pub high_watermark: i64,
    /// `min.insync.replicas`, capped by the replica count.
    pub min_insync: usize,
    /// The size of the maximal ISR when the high watermark last moved (for
    /// checkers: never below `min_insync`).
    pub isr_size_at_last_move: usize,
    /// An ISR change asked for by an earlier leadership of this epoch may
    /// still commit: the maximal ISR is every replica until a commit of
    /// this partition settles it.
    pub unsettled: bool,
}

/// The follower's side of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    pub leader: i32,
    pub leader_epoch: i32,
    /// The largest high watermark the leader told (this log may be
    /// behind it: `high_watermark` caps it by what is synced here).
    pub leader_high_watermark: i64,
}

impl Role {
    pub fn leader_epoch(&self) -> Option<i32> {
        match self {
            Role::Alone => None,
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower(f) => Some(f.leader_epoch),
            Role::Offline { leader_epoch } => Some(*leader_epoch),
        }
    }

    pub fn leading(&self) -> Option<&Leading> {
        match self {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }

    pub fn leading_mut(&mut self) -> Option<&mut Leading> {
        match self {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }
}

impl Leading {
    /// Becoming leader at `leader_epoch` with the log ending at `log_end`.
    /// The high watermark carries over from what this broker knew (it only
    /// moves up); ISR members count as caught up now, the others never were.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
        log_end: i64,
        high_watermark: i64,
        min_insync: usize,
        now_ms: i64,
    ) -> Leading {
        assert!(isr.contains(&me), "a leader is in its ISR");
        assert!(high_watermark <= log_end);
        let followers = replicas
            .iter()
            .filter(|&&r| r != me)
            .map(|&r| {
                let caught_up = if isr.contains(&r) { now_ms } else { NEVER };
                (
                    r,
                    Progress {
                        end_offset: -1,
                        synced_offset: -1,
                        last_caught_up_ms: caught_up,
                        last_fetch_leader_end: -1,
                        last_fetch_ms: NEVER,
                    },
                )
            })
            .collect();
        let leading = Leading {
            me,
            leader_epoch,
            partition_epoch,
            epoch_start: log_end,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            pending_isr: None,
            pending_since_ms: 0,
            followers,
            high_watermark,
            min_insync: min_insync.clamp(1, replicas.len().max(1)),
            isr_size_at_last_move: isr.len(),
            unsettled: false,
        };
        leading.invariants(log_end);
        leading
    }

    /// The committed metadata changed the ISR (or the replicas) within this
    /// leader epoch: the change asked for is settled.
    pub fn set_isr(&mut self, partition_epoch: i32, replicas: &[i32], isr: &[i32]) {
        assert!(isr.contains(&self.me), "a leader stays in its ISR");
        self.unsettled = false;
        self.partition_epoch = partition_epoch;
        self.isr = isr.to_vec();
        self.pending_isr = None;
        self.replicas = replicas.to_vec();
        let me = self.me;
        self.followers.retain(|r, _| replicas.contains(r));
        for &r in replicas.iter().filter(|&&r| r != me) {
            self.followers.entry(r).or_insert(Progress {
                end_offset: -1,
                synced_offset: -1,
                last_caught_up_ms: NEVER,
                last_fetch_leader_end: -1,
                last_fetch_ms: NEVER,
            });
        }
    }

    /// Kafka's maximal ISR: the committed ISR plus an expansion in flight
    /// (a shrink in flight keeps the larger, committed one).
    pub fn maximal_isr(&self) -> Vec<i32> {
        if self.unsettled {
            return self.replicas.clone();
        }
        let mut isr = self.isr.clone();
        if let Some(pending) = &self.pending_isr {
            for r in pending {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// A follower fetched from `fetch_offset` (its log end), with its log
    /// synced below `synced_offset`, while this log ended at `log_end`: its
    /// progress, as Kafka's `Replica.updateFetchState` keeps it, plus the
    /// synced end.
    pub fn on_fetch(
        &mut self,
        follower: i32,
        fetch_offset: i64,
        synced_offset: i64,
        log_end: i64,
        now_ms: i64,
    ) {
        let Some(progress) = self.followers.get_mut(&follower) else {
            return;
        };
        assert!(
            synced_offset <= fetch_offset,
            "a follower syncs what it has"
        );
        if fetch_offset >= log_end {
            progress.last_caught_up_ms = now_ms;
        } else if fetch_offset >= progress.last_fetch_leader_end {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.end_offset = fetch_offset.min(log_end);
        progress.synced_offset = synced_offset.min(log_end);
        progress.last_fetch_leader_end = log_end;
        progress.last_fetch_ms = now_ms;
    }

    /// Caught up: at the leader's log end, or within `lag_ms` of having been.
    pub fn caught_up(&self, follower: i32, log_end: i64, now_ms: i64, lag_ms: i64) -> bool {
        self.followers.get(&follower).is_some_and(|p| {
            p.end_offset >= log_end || now_ms.saturating_sub(p.last_caught_up_ms) <= lag_ms
        })
    }

    /// Recomputes the high watermark: the least synced end over the leader
    /// and every follower in the maximal ISR or caught up; it
    /// never moves back, and stays put while the ISR is below
    /// `min.insync.replicas` (Kafka 3.7's rule). True when it moved.
    pub fn update_high_watermark(
        &mut self,
        synced_end: i64,
        log_end: i64,
        now_ms: i64,
        lag_ms: i64,
        ineligible: &[i32],
    ) -> bool {
        let maximal = self.maximal_isr();
        if maximal.len() < self.min_insync {
            return false;
        }
        let mut candidate = synced_end;
        for (&r, progress) in &self.followers {
            // A caught-up replica outside the ISR counts only if it could
            // join it (Kafka's ISR eligibility): a fenced or shutting-down
            // broker's last fetch must not hold the high watermark back.
            let eligible_caught_up =
                !ineligible.contains(&r) && self.caught_up(r, log_end, now_ms, lag_ms);
            if maximal.contains(&r) || eligible_caught_up {
                candidate = candidate.min(progress.synced_offset);
            }
        }
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            self.isr_size_at_last_move = maximal.len();
            self.invariants(log_end);
            return true;
        }
        false
    }

    /// The ISR to ask for when a follower outside it caught up: at least the
    /// high watermark and the start of this epoch (Kafka's expansion rule),
    /// synced.
    pub fn expansion(&self, follower: i32) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() || self.isr.contains(&follower) {
            return None;
        }
        let progress = self.followers.get(&follower)?;
        if progress.synced_offset < self.high_watermark || progress.synced_offset < self.epoch_start
        {
            return None;
        }
        let mut isr = self.isr.clone();
        isr.push(follower);
        Some(isr)
    }

    /// The ISR to ask for when members fell behind for `lag_ms` (the
    /// leader never leaves its own ISR).
    pub fn shrink(&self, log_end: i64, now_ms: i64, lag_ms: i64) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() {
            return None;
        }
        let isr: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|&r| r == self.me || self.caught_up(r, log_end, now_ms, lag_ms))
            .collect();
        (isr.len() < self.isr.len()).then_some(isr)
    }

    /// acks=all may be taken: the ISR holds at least `min.insync.replicas`.
    pub fn enough_replicas(&self) -> bool {
        self.isr.len() >= self.min_insync
    }

    /// acks=all may be answered with success: the maximal ISR still holds
    /// `min.insync.replicas` (else NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    pub fn enough_replicas_after_append(&self) -> bool {
        self.maximal_isr().len() >= self.min_insync
    }

    pub fn invariants(&self, log_end: i64) {
        assert!(self.isr.contains(&self.me), "the leader is in its ISR");
        assert!(
            self.isr.iter().all(|r| self.replicas.contains(r)),
            "the ISR is within the replicas"
        );
        assert!(
            self.high_watermark <= log_end,
            "the high watermark is never past the leader's log end"
        );
        assert!(!self.followers.contains_key(&self.me));
        for progress in self.followers.values() {
            assert!(progress.end_offset <= log_end, "no follower is ahead");
            assert!(progress.synced_offset <= progress.end_offset);
        }
    }
}

impl Following {
    /// This replica's high watermark: the leader's, capped by what this log
    /// synced (Kafka caps it by its log end).
    pub fn high_watermark(&self, synced_end: i64) -> i64 {
        self.leader_high_watermark.min(synced_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(isr: &[i32], min_insync: usize) -> Leading {
        Leading::new(1, 5, 3, &[1, 2, 3], isr, 100, 40, min_insync, 1_000)
    }

    #[test]
    fn high_watermark_is_the_least_synced_end_of_the_isr() {
        let mut l = leader(&[1, 2, 3], 1);
        // No follower fetched yet in this epoch: nothing moves.
        assert!(!l.update_high_watermark(100, 100, 1_000, 30_000, &[]));
        assert_eq!(l.high_watermark, 40);
        l.on_fetch(2, 90, 90, 100, 1_010);
        l.on_fetch(3, 70, 70, 100, 1_010);
        assert!(l.update_high_watermark(100, 100, 1_010, 30_000, &[]));
        assert_eq!(l.high_watermark, 70);
        // The leader's own unsynced tail does not count.
        l.on_fetch(3, 100, 100, 100, 1_020);
        l.update_high_watermark(95, 100, 1_020, 30_000, &[]);
        assert_eq!(l.high_watermark, 90);
        // It never moves back.
        l.on_fetch(2, 60, 60, 100, 1_030);
        assert!(!l.update_high_watermark(95, 100, 1_030, 30_000, &[]));
        assert_eq!(l.high_watermark, 90);
    }

    #[test]
    fn a_followers_unsynced_tail_counts_for_lag_but_not_for_the_high_watermark() {
        let mut l = leader(&[1, 2], 1);
        // Follower 2 has everything (it is caught up) but synced only to 80.
        l.on_fetch(2, 100, 80, 100, 1_000);
        assert!(l.caught_up(2, 100, 1_000, 30_000));
        assert!(l.update_high_watermark(100, 100, 1_000, 30_000, &[]));
        assert_eq!(l.high_watermark, 80);
        // Follower 3 outside the ISR reached the high watermark only in
        // what it appended: no expansion until it synced there.
        l.on_fetch(3, 100, 60, 100, 1_000);
        assert_eq!(l.expansion(3), None);
        l.on_fetch(3, 100, 100, 100, 1_001);
        assert_eq!(l.expansion(3), Some(vec![1, 2, 3]));
    }

    #[test]
    #[should_panic(expected = "a follower syncs what it has")]
    fn a_synced_end_past_the_fetch_offset_is_refused() {
        leader(&[1, 2], 1).on_fetch(2, 90, 91, 100, 1_000);
    }

    #[test]
    fn high_watermark_stays_while_the_isr_is_below_min_insync() {
        let mut l = leader(&[1], 2);
        l.on_fetch(2, 100, 100, 100, 1_000);
        assert!(!l.update_high_watermark(100, 100, 1_000, 30_000, &[]));
        assert_eq!(l.high_watermark, 40);
        assert!(!l.enough_replicas());
        // A pending expansion counts for the maximal ISR.
        l.pending_isr = l.expansion(2);
        assert_eq!(l.pending_isr, Some(vec![1, 2]));
        assert!(l.update_high_watermark(100, 100, 1_000, 30_000, &[]));
        assert_eq!(l.high_watermark, 100);
    }

    #[test]
    fn a_caught_up_follower_outside_the_isr_holds_the_high_watermark_back() {
        let mut l = leader(&[1, 2], 1);
        l.on_fetch(2, 100, 100, 100, 1_000);
        l.on_fetch(3, 100, 100, 100, 1_000);
        l.on_fetch(3, 80, 80, 120, 1_001);
        // 3 was caught up a moment ago: it bounds the high watermark.
        l.update_high_watermark(120, 120, 1_001, 30_000, &[]);
        assert_eq!(l.high_watermark, 80);
    }

    #[test]
    fn a_fenced_replica_outside_the_isr_does_not_hold_the_high_watermark_back() {
        let mut l = leader(&[1, 2], 1);
        l.on_fetch(2, 100, 100, 100, 1_000);
        l.on_fetch(3, 100, 100, 100, 1_000);
        l.on_fetch(3, 80, 80, 120, 1_001);
        l.on_fetch(2, 120, 120, 120, 1_002);
        // 3 caught up a moment ago, but its broker is fenced.
        l.update_high_watermark(120, 120, 1_002, 30_000, &[3]);
        assert_eq!(l.high_watermark, 120);
    }

    #[test]
    fn expansion_needs_the_high_watermark_and_the_epoch_start() {
        let mut l = leader(&[1, 2], 1);
        l.on_fetch(3, 99, 99, 100, 1_000);
        assert_eq!(l.expansion(3), None, "below the epoch start");
        l.on_fetch(3, 100, 100, 100, 1_001);
        assert_eq!(l.expansion(3), Some(vec![1, 2, 3]));
        assert_eq!(l.expansion(2), None, "already a member");
    }

    #[test]
    fn shrink_drops_members_behind_for_the_lag_time() {
        let mut l = leader(&[1, 2, 3], 1);
        l.on_fetch(2, 100, 100, 100, 2_000);
        l.on_fetch(3, 50, 50, 100, 2_000);
        assert_eq!(l.shrink(100, 30_000, 30_000), None);
        assert_eq!(l.shrink(100, 31_001, 30_000), Some(vec![1, 2]));
        // A member at the log end is caught up however old its last fetch.
        l.on_fetch(3, 100, 100, 100, 2_000);
        assert_eq!(l.shrink(100, 90_000, 30_000), None);
        l.pending_isr = Some(vec![1]);
        assert_eq!(l.shrink(200, 90_000, 30_000), None, "one change at a time");
    }

    #[test]
    fn catching_up_counts_the_previous_fetch_time() {
        let mut l = leader(&[1, 2], 1);
        l.on_fetch(2, 100, 100, 100, 5_000);
        assert_eq!(l.followers[&2].last_caught_up_ms, 5_000);
        // The log grew to 120; the follower now fetches from 100 (where the
        // log ended at its previous fetch): caught up as of that fetch.
        l.on_fetch(2, 100, 100, 120, 9_000);
        assert_eq!(l.followers[&2].last_caught_up_ms, 5_000);
        l.on_fetch(2, 120, 120, 130, 9_500);
        assert_eq!(l.followers[&2].last_caught_up_ms, 9_000);
    }

    #[test]
    #[should_panic(expected = "a leader is in its ISR")]
    fn a_leader_outside_its_isr_is_refused() {
        Leading::new(1, 0, 0, &[1, 2], &[2], 0, 0, 1, 0);
    }

    #[test]
    fn a_follower_caps_the_high_watermark_by_its_synced_end() {
        let f = Following {
            leader: 2,
            leader_epoch: 1,
            leader_high_watermark: 50,
        };
        assert_eq!(f.high_watermark(30), 30);
        assert_eq!(f.high_watermark(60), 50);
    }
}
