//! Back-pressure on client connections: what the broker holds for a client
//! that sends faster than it reads, or sends frames it does not finish.
//!
//! - A connection's `Backlog` counts the requests read from it whose answer
//!   is not yet written to its socket, and the bytes of answers queued and
//!   not yet written. Its reader reads no further request while either
//!   reaches its bound (`queued.max.requests`, `queued.max.response.bytes`),
//!   so a client that pipelines requests and never reads holds at most that
//!   many answers (plus the answers owed to requests already read), and
//!   its socket, not the broker's memory, takes the rest. Kafka mutes a
//!   connection while its answer is in flight to the same end.
//! - `RequestMemory` bounds the bytes of requests being read or waiting to
//!   be handled, across all connections (`queued.max.request.bytes`, Kafka's
//!   memory pool). A frame takes its bytes a chunk ahead of their arrival,
//!   so a length prefix alone costs nothing; when there is no space, a frame
//!   waits without reading its socket. Frames each holding part of the
//!   bound could wait for each other forever, so one frame may go past it:
//!   the one with the fewest bytes left to take (the oldest among equals),
//!   up to one largest frame (`socket.request.max.bytes`) past the bound,
//!   as in Kafka's non-strict pool. So one frame is always read through,
//!   and a small request is read even while half-sent large frames fill the
//!   bound. A frame's bytes are freed once the node handled it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

/// Bytes a frame takes from `RequestMemory` before each read: small enough
/// that a frame holds little more than what arrived, large enough that a
/// large frame takes few turns at the pool's lock.
pub(crate) const FRAME_CHUNK_BYTES_MAX: usize = 256 * 1024;

/// What a connection owes its client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Owed {
    /// Requests handed to the node whose answer is not written yet.
    pub(crate) requests: usize,
    /// Bytes of answers queued for the writer and not written yet.
    pub(crate) bytes: usize,
}

/// A connection's requests and answers between its reader, the node task
/// and its writer.
#[derive(Clone)]
pub(crate) struct Backlog {
    owed: Arc<watch::Sender<Owed>>,
    requests_max: usize,
    bytes_max: usize,
}

impl Backlog {
    pub(crate) fn new(requests_max: usize, bytes_max: usize) -> Backlog {
        assert!(requests_max > 0 && bytes_max > 0);
        Backlog {
            owed: Arc::new(watch::Sender::new(Owed::default())),
            requests_max,
            bytes_max,
        }
    }

    pub(crate) fn owed(&self) -> Owed {
        *self.owed.borrow()
    }

    /// Whether the client waits for an answer (then it is not idle).
    pub(crate) fn answers_owed(&self) -> bool {
        self.owed().requests > 0
    }

    /// Waits until another request may be read: fewer than the bounds are
    /// owed. The reader calls it before reading each request.
    pub(crate) async fn room(&self) {
        let mut owed = self.owed.subscribe();
        let (requests_max, bytes_max) = (self.requests_max, self.bytes_max);
        // The sender lives in `self`: the wait cannot end closed.
        let _ = owed
            .wait_for(|o| o.requests < requests_max && o.bytes < bytes_max)
            .await;
    }

    /// The reader hands a request to the node.
    pub(crate) fn request_read(&self) {
        self.owed.send_modify(|o| {
            o.requests += 1;
            assert!(
                o.requests <= self.requests_max,
                "a request read past queued.max.requests"
            );
        });
    }

    /// The node handled a request that gets no answer (acks=0).
    pub(crate) fn request_unanswered(&self) {
        self.owed.send_modify(|o| {
            assert!(o.requests > 0, "an unanswered request that was not read");
            o.requests -= 1;
        });
    }

    /// The node queued an answer of `bytes` for the writer.
    pub(crate) fn answer_queued(&self, bytes: usize) {
        self.owed.send_modify(|o| o.bytes += bytes);
    }

    /// The writer wrote an answer of `bytes` to the socket.
    pub(crate) fn answer_written(&self, bytes: usize) {
        self.owed.send_modify(|o| {
            assert!(
                o.requests > 0 && o.bytes >= bytes,
                "an answer written that was not owed"
            );
            o.requests -= 1;
            o.bytes -= bytes;
        });
    }
}

/// The memory for requests being read or waiting to be handled, shared by
/// every client connection.
pub(crate) struct RequestMemory {
    state: Mutex<MemoryState>,
    /// Woken when bytes are freed or the frame that may go past the bound
    /// changes.
    freed: Notify,
    /// `queued.max.request.bytes`; `usize::MAX` when unbounded.
    bytes_max: usize,
    /// How far past `bytes_max` the frame with the fewest bytes left may
    /// go: `socket.request.max.bytes`.
    past_bytes_max: usize,
}

#[derive(Default)]
struct MemoryState {
    bytes_held: usize,
    /// Frames with bytes left to take, as (bytes left, ticket): the first
    /// may go past the bound.
    taking: BTreeSet<(usize, u64)>,
    ticket_next: u64,
}

/// One frame's share of `RequestMemory`, given back when dropped (after
/// the node handled the frame, or when its connection ended first).
pub(crate) struct FrameMemory {
    memory: Arc<RequestMemory>,
    ticket: u64,
    /// Bytes taken, and the frame's length.
    bytes: usize,
    length: usize,
}

impl RequestMemory {
    pub(crate) fn new(bytes_max: Option<usize>, frame_bytes_max: usize) -> Arc<RequestMemory> {
        let bytes_max = bytes_max.unwrap_or(usize::MAX);
        assert!(bytes_max >= frame_bytes_max, "the largest frame fits");
        Arc::new(RequestMemory {
            state: Mutex::default(),
            freed: Notify::new(),
            bytes_max,
            past_bytes_max: frame_bytes_max,
        })
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by frames now.
    pub(crate) fn bytes_held(&self) -> usize {
        self.state().bytes_held
    }

    /// A frame of `length` bytes whose prefix was just read; it holds
    /// nothing yet.
    pub(crate) fn frame(self: &Arc<Self>, length: usize) -> FrameMemory {
        assert!(length <= self.past_bytes_max);
        let mut state = self.state();
        let ticket = state.ticket_next;
        state.ticket_next += 1;
        if length > 0 {
            state.taking.insert((length, ticket));
        }
        FrameMemory {
            memory: self.clone(),
            ticket,
            bytes: 0,
            length,
        }
    }
}

impl FrameMemory {
    /// Bytes this frame holds.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` more (no more than are left), waiting while they do
    /// not fit, unless this frame has the fewest bytes left.
    pub(crate) async fn grow(&mut self, bytes: usize) {
        assert!(bytes > 0 && bytes <= self.length - self.bytes);
        let memory = self.memory.clone();
        loop {
            // Registered before looking, so a release in between wakes it.
            let freed = memory.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = memory.state();
                let left = (self.length - self.bytes, self.ticket);
                let first = state.taking.first() == Some(&left);
                let bytes_max = if first {
                    memory.bytes_max.saturating_add(memory.past_bytes_max)
                } else {
                    memory.bytes_max
                };
                if state.bytes_held.saturating_add(bytes) <= bytes_max {
                    state.bytes_held += bytes;
                    self.bytes += bytes;
                    state.taking.remove(&left);
                    if self.bytes < self.length {
                        state.taking.insert((self.length - self.bytes, self.ticket));
                    }
                    drop(state);
                    if self.bytes == self.length {
                        // It takes no more: another frame may go past the
                        // bound now.
                        memory.freed.notify_waiters();
                    }
                    return;
                }
            }
            freed.await;
        }
    }
}

impl Drop for FrameMemory {
    fn drop(&mut self) {
        {
            let mut state = self.memory.state();
            state
                .taking
                .remove(&(self.length - self.bytes, self.ticket));
            assert!(state.bytes_held >= self.bytes);
            state.bytes_held -= self.bytes;
        }
        self.memory.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::{Context, Waker};

    use super::*;

    /// Polls once: whether the future still waits.
    fn waits<F: Future>(future: Pin<&mut F>) -> bool {
        future
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    }

    #[tokio::test]
    async fn the_frame_with_the_fewest_bytes_left_goes_past_the_bound() {
        let memory = RequestMemory::new(Some(100), 100);
        let mut large = memory.frame(100);
        let mut small = memory.frame(90);
        large.grow(60).await;
        // 40 left against 90: the large one goes past the bound.
        large.grow(30).await;
        assert_eq!(memory.bytes_held(), 90);
        {
            // The small one has more left: it waits while it does not fit.
            let mut grow = pin!(small.grow(20));
            assert!(waits(grow.as_mut()));
            // The large one takes its last bytes, and takes no more.
            large.grow(10).await;
            assert_eq!(memory.bytes_held(), 100, "a whole frame holds its bytes");
            // Then the small one has the fewest left, and goes on.
            grow.await;
        }
        assert_eq!(memory.bytes_held(), 120);
        small.grow(70).await;
        let mut late = memory.frame(20);
        {
            // But not past one largest frame beyond the bound.
            let mut grow = pin!(late.grow(20));
            assert!(waits(grow.as_mut()), "the fewest left, but 190 held");
            drop(large);
            grow.await;
        }
        assert_eq!(memory.bytes_held(), 110);
        drop(small);
        assert_eq!(memory.bytes_held(), 20);
    }

    #[tokio::test]
    async fn a_frame_waiting_for_space_goes_on_when_space_is_freed() {
        let memory = RequestMemory::new(Some(100), 100);
        let mut first = memory.frame(15);
        first.grow(10).await;
        let mut whole = memory.frame(80);
        whole.grow(80).await;
        let mut third = memory.frame(40);
        {
            let mut grow = pin!(third.grow(20));
            assert!(waits(grow.as_mut()), "110 bytes do not fit in 100");
            drop(whole);
            grow.await;
        }
        assert_eq!(memory.bytes_held(), 30);
        drop((first, third));
        assert_eq!(memory.bytes_held(), 0);
    }

    #[tokio::test]
    async fn unbounded_memory_never_waits() {
        let memory = RequestMemory::new(None, usize::MAX / 8);
        let mut frames: Vec<_> = (0..4).map(|_| memory.frame(usize::MAX / 8)).collect();
        for frame in frames.iter_mut().rev() {
            frame.grow(usize::MAX / 8).await;
        }
        assert_eq!(memory.bytes_held(), usize::MAX / 8 * 4);
    }

    #[tokio::test]
    async fn a_backlog_has_room_below_both_bounds() {
        let backlog = Backlog::new(2, 100);
        backlog.room().await;
        backlog.request_read();
        // One answer over the byte bound: no room until it is written.
        backlog.answer_queued(150);
        {
            let mut room = pin!(backlog.room());
            assert!(waits(room.as_mut()), "150 bytes owed");
            backlog.answer_written(150);
            room.await;
        }
        backlog.request_read();
        backlog.request_read();
        {
            let mut room = pin!(backlog.room());
            assert!(waits(room.as_mut()), "two requests owed");
            backlog.request_unanswered();
            room.await;
        }
        assert!(backlog.answers_owed());
        backlog.answer_queued(40);
        backlog.answer_written(40);
        assert_eq!(backlog.owed(), Owed::default());
        assert!(!backlog.answers_owed());
    }
}
