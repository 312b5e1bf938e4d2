//! Which client connections the broker takes, and how long it keeps them:
//! `max.connections` (accepting waits for a free place),
//! `max.connections.per.ip` (one more from a full address is closed at
//! once), and `connections.max.idle.ms` (a connection that sends nothing
//! and is owed nothing is closed; a request must arrive whole within that
//! bound of its first byte, so a client trickling bytes cannot hold a
//! connection forever; the writer closes a client that takes no byte of
//! its answers for that long, `serve.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_core::config::BrokerConfig;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::pressure::{FrameMemory, RequestMemory, FRAME_CHUNK_BYTES_MAX};

/// The bounds on client connections, and the places taken.
#[derive(Clone)]
pub(crate) struct Admission {
    /// A permit per connection held.
    places: Arc<Semaphore>,
    /// Connections held per address.
    per_ip: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    per_ip_max: usize,
    pub(crate) idle: Duration,
}

/// A connection's place, given back when it is dropped (its reader ended).
pub(crate) struct Admitted {
    _place: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(config: &BrokerConfig) -> Admission {
        Admission {
            places: Arc::new(Semaphore::new(
                config.connections_max.min(Semaphore::MAX_PERMITS),
            )),
            per_ip: Arc::default(),
            per_ip_max: config.connections_per_ip_max,
            idle: Duration::from_millis(config.connections_idle_ms_max.max(1) as u64),
        }
    }

    /// Waits for a free place (`max.connections`); None once closed.
    pub(crate) async fn place(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().acquire_owned().await.ok()
    }

    /// Admits a connection from `ip` into `place`, unless that address
    /// already holds `max.connections.per.ip`.
    pub(crate) fn admit(&self, ip: IpAddr, place: OwnedSemaphorePermit) -> Option<Admitted> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_default();
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(Admitted {
            _place: place,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

/// Why no request could be read.
pub(crate) enum RequestError {
    /// The stream failed or ended.
    Closed,
    /// The length prefix is negative or above the limit.
    Size(i32),
    /// Nothing arrived for the idle bound, and nothing was owed.
    Idle,
    /// A request started but did not arrive whole within the idle bound.
    Slow,
}

/// Reads one length-prefixed request, taking its bytes from `memory` as
/// they arrive (and waiting, without reading, while there is no space).
/// Until its first byte, it waits at most `idle` at a time, and longer only
/// while `owed()` says answers are still due (the client then waits for
/// us); from the first byte, the whole request must arrive within `idle`,
/// not counting the time spent waiting for space, which is the broker's.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
    frame_bytes_max: usize,
    idle: Duration,
    owed: impl Fn() -> bool,
    memory: &Arc<RequestMemory>,
) -> Result<(Bytes, FrameMemory), RequestError> {
    let mut length = [0u8; 4];
    let filled = loop {
        match tokio::time::timeout(idle, stream.read(&mut length)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(RequestError::Closed),
            Ok(Ok(read)) => break read,
            Err(_) if owed() => continue,
            Err(_) => return Err(RequestError::Idle),
        }
    };
    let mut deadline = Instant::now() + idle;
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut length[filled..])).await {
        Err(_) => return Err(RequestError::Slow),
        Ok(Err(_)) => return Err(RequestError::Closed),
        Ok(Ok(_)) => {}
    }
    let length = i32::from_be_bytes(length);
    if length < 0 || length as usize > frame_bytes_max {
        return Err(RequestError::Size(length));
    }
    let length = length as usize;
    // Room, not zeroed memory: a large frame's pages are taken only as its
    // bytes arrive, so a length prefix alone costs nothing
    // (tests/tests/bad_input.rs holds the broker to that), and its bytes
    // are taken from `memory` a chunk ahead of them.
    let mut frame = BytesMut::with_capacity(length);
    let mut held = memory.frame(length);
    while frame.len() < length {
        if held.bytes() == frame.len() {
            let waiting = Instant::now();
            held.grow((length - frame.len()).min(FRAME_CHUNK_BYTES_MAX))
                .await;
            deadline += waiting.elapsed();
        }
        let room = held.bytes() - frame.len();
        let mut chunk = (&mut frame).limit(room);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut chunk)).await {
            Err(_) => return Err(RequestError::Slow),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(RequestError::Closed),
            Ok(Ok(_)) => {}
        }
    }
    Ok((frame.freeze(), held))
}
