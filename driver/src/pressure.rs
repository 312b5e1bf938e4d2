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
//!   memory pool). A frame takes its bytes as they arrive, a chunk at a time
//!   before reading it, so a length prefix alone costs nothing; when the
//!   pool is full, a frame waits for space without reading its socket. The
//!   oldest frame still being read may always take its next chunk, so one
//!   is always read through (without it, frames each holding part of the
//!   pool could wait for each other forever): the bytes held stay under the
//!   bound plus one frame (`socket.request.max.bytes`), as in Kafka's
//!   non-strict pool. A frame's bytes are freed once the node handled it.

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
    /// Woken when bytes are freed or the oldest frame being read changes.
    freed: Notify,
    /// `queued.max.request.bytes`; `usize::MAX` when unbounded.
    bytes_max: usize,
}

#[derive(Default)]
struct MemoryState {
    bytes_held: usize,
    /// Frames still being read, by ticket: the first is the oldest.
    reading: BTreeSet<u64>,
    ticket_next: u64,
}

/// One frame's share of `RequestMemory`, given back when dropped (after
/// the node handled the frame, or when its connection ended first).
pub(crate) struct FrameMemory {
    memory: Arc<RequestMemory>,
    ticket: u64,
    bytes: usize,
}

impl RequestMemory {
    pub(crate) fn new(bytes_max: Option<usize>) -> Arc<RequestMemory> {
        Arc::new(RequestMemory {
            state: Mutex::default(),
            freed: Notify::new(),
            bytes_max: bytes_max.unwrap_or(usize::MAX),
        })
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by frames now.
    pub(crate) fn bytes_held(&self) -> usize {
        self.state().bytes_held
    }

    /// A frame whose length prefix was just read; it holds nothing yet.
    pub(crate) fn frame(self: &Arc<Self>) -> FrameMemory {
        let mut state = self.state();
        let ticket = state.ticket_next;
        state.ticket_next += 1;
        state.reading.insert(ticket);
        FrameMemory {
            memory: self.clone(),
            ticket,
            bytes: 0,
        }
    }
}

impl FrameMemory {
    /// Bytes this frame holds.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` more, waiting while they do not fit unless this is
    /// the oldest frame being read.
    pub(crate) async fn grow(&mut self, bytes: usize) {
        let memory = self.memory.clone();
        loop {
            // Registered before looking, so a release in between wakes it.
            let freed = memory.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = memory.state();
                let fits = state
                    .bytes_held
                    .checked_add(bytes)
                    .is_some_and(|held| held <= memory.bytes_max);
                if fits || state.reading.first() == Some(&self.ticket) {
                    state.bytes_held += bytes;
                    self.bytes += bytes;
                    return;
                }
            }
            freed.await;
        }
    }

    /// The frame arrived whole: it takes no more, and the next oldest
    /// frame being read may go past the bound.
    pub(crate) fn read_whole(&mut self) {
        let removed = self.memory.state().reading.remove(&self.ticket);
        if removed {
            self.memory.freed.notify_waiters();
        }
    }
}

impl Drop for FrameMemory {
    fn drop(&mut self) {
        {
            let mut state = self.memory.state();
            state.reading.remove(&self.ticket);
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
    async fn a_frame_waits_for_space_and_the_oldest_always_goes_on() {
        let memory = RequestMemory::new(Some(100));
        let mut first = memory.frame();
        let mut second = memory.frame();
        second.grow(60).await;
        // The oldest frame may go past the bound.
        first.grow(60).await;
        assert_eq!(memory.bytes_held(), 120);
        {
            // The second is not the oldest: it waits while it does not fit.
            let mut grow = pin!(second.grow(10));
            assert!(waits(grow.as_mut()));
            first.read_whole();
            assert_eq!(memory.bytes_held(), 120, "a whole frame holds its bytes");
            // Now the oldest being read, the second goes on.
            grow.await;
        }
        assert_eq!(second.bytes(), 70);
        drop(first);
        assert_eq!(memory.bytes_held(), 70);
        drop(second);
        assert_eq!(memory.bytes_held(), 0);
    }

    #[tokio::test]
    async fn a_frame_waiting_for_space_goes_on_when_space_is_freed() {
        let memory = RequestMemory::new(Some(100));
        let mut oldest = memory.frame();
        oldest.grow(10).await;
        let mut whole = memory.frame();
        whole.grow(80).await;
        whole.read_whole();
        let mut third = memory.frame();
        {
            let mut grow = pin!(third.grow(20));
            assert!(waits(grow.as_mut()), "110 bytes do not fit in 100");
            drop(whole);
            grow.await;
        }
        assert_eq!(memory.bytes_held(), 30);
        drop((oldest, third));
        assert_eq!(memory.bytes_held(), 0);
    }

    #[tokio::test]
    async fn unbounded_memory_never_waits() {
        let memory = RequestMemory::new(None);
        let mut frames: Vec<_> = (0..4).map(|_| memory.frame()).collect();
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
