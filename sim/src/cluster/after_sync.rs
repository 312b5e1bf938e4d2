//! The gate of requests a node sends to its peers only after a sync
//! (`Output::SendPeer { after_sync: Some(id) }`), apart from the rest of
//! the `Cluster` harness so its release and drop rules are tested alone.

use std::collections::BTreeSet;

use bytes::Bytes;
use sluice_core::{Channel, NodeId};

/// One connection of a node to a peer: the peer and the channel.
pub type LinkId = (NodeId, Channel);

/// Requests to peers one node may hold back for a sync.
pub const HELD_FRAMES_MAX: usize = 1024;

/// Requests to peers that may leave only after a sync
/// (`SendPeer { after_sync: Some(id) }`): held until that sync completes,
/// released if it succeeded, dropped if it failed or if the link to their
/// peer went down meanwhile. A node's syncs complete in the order issued
/// (the core has at most one in flight), so one number says which are done.
#[derive(Debug, Default)]
pub struct AfterSyncGate {
    held: Vec<(u64, LinkId, Bytes)>,
    /// The last sync completed, successfully or not.
    completed_last: u64,
    failed: BTreeSet<u64>,
}

impl AfterSyncGate {
    /// A request the node emitted: returned when it may leave now, else
    /// held (sync pending) or dropped (sync failed).
    pub fn submit(
        &mut self,
        after_sync: Option<u64>,
        peer: LinkId,
        frame: Bytes,
    ) -> Option<(LinkId, Bytes)> {
        match after_sync {
            None => Some((peer, frame)),
            Some(id) if id <= self.completed_last => {
                (!self.failed.contains(&id)).then_some((peer, frame))
            }
            Some(id) => {
                assert!(self.held.len() < HELD_FRAMES_MAX, "held frames bounded");
                self.held.push((id, peer, frame));
                None
            }
        }
    }

    /// Sync `id` completed; returns the requests it releases, in the order emitted.
    pub fn synced(&mut self, id: u64, ok: bool) -> Vec<(LinkId, Bytes)> {
        assert!(
            id > self.completed_last,
            "syncs complete in the order issued"
        );
        self.completed_last = id;
        if !ok {
            self.failed.insert(id);
        }
        let (due, later) = std::mem::take(&mut self.held)
            .into_iter()
            .partition::<Vec<_>, _>(|(sync, _, _)| *sync <= id);
        self.held = later;
        due.into_iter()
            .filter(|_| ok)
            .map(|(_, peer, frame)| (peer, frame))
            .collect()
    }

    /// A link went down: what was held for it will never leave.
    pub fn drop_link(&mut self, link: LinkId) {
        self.held.retain(|(_, held, _)| *held != link);
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: LinkId = (NodeId(2), Channel::Raft);

    fn frame(byte: u8) -> Bytes {
        Bytes::from(vec![byte])
    }

    #[test]
    fn a_frame_without_a_sync_leaves_at_once() {
        let mut gate = AfterSyncGate::default();
        assert_eq!(gate.submit(None, PEER, frame(1)), Some((PEER, frame(1))));
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn a_frame_waits_for_its_sync_and_leaves_when_it_succeeds() {
        let mut gate = AfterSyncGate::default();
        assert_eq!(gate.submit(Some(2), PEER, frame(1)), None);
        assert_eq!(gate.submit(Some(3), PEER, frame(2)), None);
        assert_eq!(gate.synced(1, true), vec![]);
        assert_eq!(gate.synced(2, true), vec![(PEER, frame(1))]);
        assert_eq!(gate.held(), 1);
        assert_eq!(gate.synced(3, true), vec![(PEER, frame(2))]);
        // Emitted after its sync completed: leaves at once.
        assert_eq!(gate.submit(Some(3), PEER, frame(3)), Some((PEER, frame(3))));
    }

    #[test]
    fn a_frame_whose_sync_failed_never_leaves() {
        let mut gate = AfterSyncGate::default();
        assert_eq!(gate.submit(Some(1), PEER, frame(1)), None);
        assert_eq!(gate.synced(1, false), vec![]);
        assert_eq!(gate.held(), 0);
        assert_eq!(gate.submit(Some(1), PEER, frame(2)), None);
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn a_link_down_drops_what_was_held_for_its_peer_only() {
        let mut gate = AfterSyncGate::default();
        let other = (NodeId(3), Channel::Raft);
        assert_eq!(gate.submit(Some(1), PEER, frame(1)), None);
        assert_eq!(gate.submit(Some(1), other, frame(2)), None);
        gate.drop_link(PEER);
        assert_eq!(gate.synced(1, true), vec![(other, frame(2))]);
    }

    #[test]
    #[should_panic(expected = "in the order issued")]
    fn syncs_completing_out_of_order_are_refused() {
        let mut gate = AfterSyncGate::default();
        let _ = gate.synced(2, true);
        let _ = gate.synced(1, true);
    }
}
