//! Client connections and their reply queues. Replies on a connection leave
//! in request order, whatever each one waits for; a slot at the front that
//! is not ready holds back the ones behind it, as Kafka's clients expect.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::group::Token;
use crate::handlers::{HeldTxnAdd, ParkedFetch, Wait};
use crate::types::TopicPartition;
use crate::wire::{Reply, ReplyHeader, Request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

/// A reply in a connection's queue.
#[derive(Debug)]
pub struct Slot {
    pub header: ReplyHeader,
    pub state: SlotState,
}

#[derive(Debug)]
pub enum SlotState {
    /// Encoded and ready to go.
    Ready(Bytes),
    /// Encoded when `wait` holds (or its failure variant when it fails).
    After { wait: Wait, reply: Box<Reply> },
    /// A long-polling fetch; `woken` when one of its partitions moved (or
    /// it never was evaluated at the front of the queue).
    Fetch { parked: ParkedFetch, woken: bool },
    /// An AddPartitionsToTxn waiting for its producer's last transaction
    /// to complete.
    TxnAdd(HeldTxnAdd),
    /// Waits for the group coordinator's answer to this token.
    Coordinator(Token),
    /// A transactional write waiting for a remote transaction
    /// coordinator's verdicts (`broker::verify`), handled again under the
    /// same token once they are in.
    Verifying { token: Token, request: Box<Request> },
    /// A request that came behind one waiting for verification: handled
    /// after it, in order, as Kafka handles a connection's requests.
    Deferred(Box<Request>),
    /// A request from another node's Raft replica, waiting for this node's
    /// replica to answer (or for the answer's deadline).
    Raft(Token),
    /// A client's request forwarded to the active controller, waiting for
    /// its answer by token.
    Forwarded(Token),
    /// A broker's request to this node's controller: `frame` once the
    /// record proposed at `offset` in leader epoch `epoch` is committed,
    /// `lost` if it never will be.
    AfterCommit {
        offset: i64,
        epoch: i32,
        frame: Bytes,
        lost: Bytes,
    },
    /// A CreateTopics or CreatePartitions waiting for the creations the
    /// node carries out over its next steps.
    Creating(crate::handlers::CreateWait),
}

impl SlotState {
    /// Waits for verification, or was deferred behind a request that does.
    fn held(&self) -> bool {
        matches!(self, SlotState::Verifying { .. } | SlotState::Deferred(_))
    }
}

#[derive(Debug)]
struct Connection {
    slots: VecDeque<Slot>,
    /// The peer as Kafka names a client host (`client_host`), e.g. "/127.0.0.1".
    client_host: String,
}

#[derive(Debug)]
pub struct Sessions {
    connections: BTreeMap<ConnectionId, Connection>,
    /// `queued.max.requests`: the driver hands in no more requests on a
    /// connection while this many await their answer on its socket (or a
    /// request with none was handled), so a connection never holds more
    /// slots than this.
    slots_max: usize,
}

impl Sessions {
    pub fn new(slots_max: usize) -> Sessions {
        assert!(slots_max > 0);
        Sessions {
            connections: BTreeMap::new(),
            slots_max,
        }
    }

    pub fn open(&mut self, connection: ConnectionId, client_host: String) {
        let replaced = self.connections.insert(
            connection,
            Connection {
                slots: VecDeque::new(),
                client_host,
            },
        );
        assert!(replaced.is_none(), "connection ids are not reused");
    }

    /// Forgets a connection and its queued replies; false if it was unknown.
    pub fn close(&mut self, connection: ConnectionId) -> bool {
        self.connections.remove(&connection).is_some()
    }

    pub fn contains(&self, connection: ConnectionId) -> bool {
        self.connections.contains_key(&connection)
    }

    pub fn ids(&self) -> Vec<ConnectionId> {
        self.connections.keys().copied().collect()
    }

    pub fn client_host(&self, connection: ConnectionId) -> Option<&str> {
        self.connections
            .get(&connection)
            .map(|c| c.client_host.as_str())
    }

    /// Queues a reply slot behind the connection's others.
    pub fn push(&mut self, connection: ConnectionId, slot: Slot) {
        let queue = &mut self
            .connections
            .get_mut(&connection)
            .expect("slots are pushed on open connections")
            .slots;
        assert!(
            queue.len() < self.slots_max,
            "the driver hands in at most queued.max.requests ({}) requests awaiting replies",
            self.slots_max
        );
        queue.push_back(slot);
    }

    pub fn pop_front(&mut self, connection: ConnectionId) -> Option<Slot> {
        self.connections.get_mut(&connection)?.slots.pop_front()
    }

    pub fn push_front(&mut self, connection: ConnectionId, slot: Slot) {
        if let Some(c) = self.connections.get_mut(&connection) {
            c.slots.push_front(slot);
        }
    }

    pub fn front(&self, connection: ConnectionId) -> Option<&Slot> {
        self.connections.get(&connection)?.slots.front()
    }

    pub fn queued(&self, connection: ConnectionId) -> usize {
        self.connections
            .get(&connection)
            .map_or(0, |c| c.slots.len())
    }

    /// Whether the connection's next requests must wait: one before them
    /// waits for verification, or was deferred behind one that does.
    pub fn holds(&self, connection: ConnectionId) -> bool {
        self.connections
            .get(&connection)
            .is_some_and(|c| c.slots.iter().any(|slot| slot.state.held()))
    }

    /// Takes the connection's slots from the first that waits for
    /// verification or was deferred on, in order, to be handled again.
    pub fn take_held(&mut self, connection: ConnectionId) -> Vec<Slot> {
        let Some(c) = self.connections.get_mut(&connection) else {
            return Vec::new();
        };
        match c.slots.iter().position(|slot| slot.state.held()) {
            Some(first) => c.slots.split_off(first).into(),
            None => Vec::new(),
        }
    }

    /// The connection whose request waits for verification under `token`.
    pub fn verifying_connection(&self, token: Token) -> Option<ConnectionId> {
        self.connections.iter().find_map(|(id, c)| {
            c.slots
                .iter()
                .any(|slot| matches!(slot.state, SlotState::Verifying { token: t, .. } if t == token))
                .then_some(*id)
        })
    }

    /// The tokens of requests waiting for verification.
    pub fn verifying_tokens(&self) -> BTreeSet<Token> {
        self.slots()
            .filter_map(|slot| match slot.state {
                SlotState::Verifying { token, .. } => Some(token),
                _ => None,
            })
            .collect()
    }

    /// The header of the request whose slot waits on `token`.
    pub fn header_of(&self, token: Token) -> Option<ReplyHeader> {
        self.slots()
            .find(|slot| {
                matches!(
                    slot.state,
                    SlotState::Forwarded(t) | SlotState::Raft(t) | SlotState::Coordinator(t)
                        if t == token
                )
            })
            .map(|slot| slot.header)
    }

    /// The tokens of forwarded requests still waiting for an answer.
    pub fn forwarded_tokens(&self) -> BTreeSet<Token> {
        self.slots()
            .filter_map(|slot| match slot.state {
                SlotState::Forwarded(token) => Some(token),
                _ => None,
            })
            .collect()
    }

    /// The tokens of Raft requests still waiting for an answer.
    pub fn raft_tokens(&self) -> BTreeSet<Token> {
        self.slots()
            .filter_map(|slot| match slot.state {
                SlotState::Raft(token) => Some(token),
                _ => None,
            })
            .collect()
    }

    /// The creation jobs some request waits for.
    pub fn creation_jobs(&self) -> BTreeSet<u64> {
        self.slots()
            .filter_map(|slot| match &slot.state {
                SlotState::Creating(wait) => Some(wait.jobs()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    pub fn waiting_tokens(&self) -> BTreeSet<Token> {
        self.slots()
            .filter_map(|slot| match slot.state {
                SlotState::Coordinator(token) => Some(token),
                _ => None,
            })
            .collect()
    }

    /// Wakes the parked fetches that read one of `moved` (all when `all`).
    pub fn wake_fetches(&mut self, moved: &BTreeSet<TopicPartition>, all: bool) {
        for connection in self.connections.values_mut() {
            for slot in connection.slots.iter_mut() {
                if let SlotState::Fetch { parked, woken } = &mut slot.state {
                    if all || parked.partitions.iter().any(|p| moved.contains(p)) {
                        *woken = true;
                    }
                }
            }
        }
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.connections.values().flat_map(|c| c.slots.iter())
    }

    pub fn invariants(&self) {
        for connection in self.connections.values() {
            assert!(connection.slots.len() <= self.slots_max);
            assert!(connection.client_host.starts_with('/'));
        }
        let mut tokens = BTreeSet::new();
        for slot in self.slots() {
            if let SlotState::Coordinator(token)
            | SlotState::Raft(token)
            | SlotState::Forwarded(token)
            | SlotState::Verifying { token, .. } = slot.state
            {
                assert!(tokens.insert(token), "one slot per token");
            }
        }
    }
}
