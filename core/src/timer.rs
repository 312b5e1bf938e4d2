//! Timers as a table keyed by what each one is for: at most one deadline
//! per timer, on the monotonic clock. The node arms and stops them;
//! `expired` hands out the ones due and stops them, so a deadline is
//! reported once and the driver needs no guard against one reported again.

use std::collections::BTreeMap;

use crate::session::ConnectionId;
use crate::types::{Channel, NodeId};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Log retention runs (`log.retention.check.interval.ms`).
    Retention,
    /// Committed offsets past their retention are removed
    /// (`offsets.retention.check.interval.ms`).
    OffsetsExpiry,
    /// The group coordinator's earliest session, rebalance or join deadline.
    Groups,
    /// Open transactions past their timeout are aborted and idle
    /// transactional ids expire
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    TransactionSweep,
    /// Transaction markers that could not be written are tried again.
    MarkerRetry,
    /// The long-polling fetch at the front of a connection's queue.
    FetchDeadline(ConnectionId),
    /// The oldest unanswered request on the link to a peer.
    PeerRequest(NodeId, Channel),
    /// The controller quorum's replica: elections, fetches, resends.
    Quorum,
    /// The oldest Raft request from a peer that this node's replica has
    /// not answered.
    RaftAnswers,
    /// This broker's next registration or heartbeat, and, on the active
    /// controller, the end of the first silent broker's session.
    Cluster,
    /// A follower's next fetch after a failed one
    /// (`replica.fetch.backoff.ms`).
    ReplicaFetch,
    /// The leader's periodic ISR check (half `replica.lag.time.max.ms`).
    IsrCheck,
    /// The end of a controlled shutdown's wait for the controller.
    ControlledShutdown,
    /// The high watermarks are written to `replication-offset-checkpoint`
    /// (`replica.high.watermark.checkpoint.interval.ms`).
    HighWatermarkCheckpoint,
    /// Creations of topics and partitions wait for their next step
    /// (`broker::creations`): due at once, so the driver handles what
    /// else came in between two steps.
    Creations,
}

#[derive(Debug, Default)]
pub struct TimerTable {
    deadlines: BTreeMap<Timer, i64>,
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, deadline_ms: i64) {
        self.deadlines.insert(timer, deadline_ms);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.deadlines.remove(&timer);
    }

    /// The earliest deadline of any armed timer.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.deadlines.values().copied().min()
    }

    /// Stops and returns every timer due at `now_ms`, in the table's order.
    pub fn expired(&mut self, now_ms: i64) -> Vec<Timer> {
        let due: Vec<Timer> = self
            .deadlines
            .iter()
            .filter(|(_, &deadline)| deadline <= now_ms)
            .map(|(&timer, _)| timer)
            .collect();
        for timer in &due {
            self.deadlines.remove(timer);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_timer_is_reported_once() {
        let mut timers = TimerTable::default();
        timers.set(Timer::Retention, 100);
        timers.set(Timer::Groups, 50);
        timers.set(Timer::FetchDeadline(ConnectionId(3)), 200);
        assert_eq!(timers.next_deadline_ms(), Some(50));
        assert_eq!(timers.expired(100), vec![Timer::Retention, Timer::Groups]);
        assert!(timers.expired(100).is_empty());
        assert_eq!(timers.next_deadline_ms(), Some(200));
        timers.stop(Timer::FetchDeadline(ConnectionId(3)));
        assert_eq!(timers.next_deadline_ms(), None);
    }
}
