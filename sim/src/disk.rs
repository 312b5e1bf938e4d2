//! `SimDisk`: the simulated disk under a simulated node.
//!
//! It has page-cache semantics (core's `MemStorage`): writes are visible at
//! once and lost at a crash unless a sync completed after them. Syncs take a
//! simulated time and may fail; at a crash the unsynced tail of each file is
//! lost, kept as a prefix, torn inside the last sector, or kept with flipped
//! bits, as the seed chooses; a capacity makes writes fail with ENOSPC.
//!
//! The state lives behind a shared handle, so it outlives the node's tasks:
//! the harness crashes the host, applies the crash to the disk, and starts
//! the host again on what survived.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::rng::Rng;
use sluice_core::storage::{FileId, MemStorage, Storage, SyncTarget};
use sluice_driver::{Disk, SyncFuture};

/// How the unsynced tail of a file fares at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashFault {
    /// Every unsynced byte is lost.
    LoseUnsynced,
    /// A random prefix of the unsynced tail reached the disk.
    KeepPrefix,
    /// A prefix reached the disk and its last sector is garbage.
    TearLastSector,
    /// A prefix reached the disk with a few bits flipped.
    FlipBits,
}

impl CrashFault {
    pub const ALL: [CrashFault; 4] = [
        CrashFault::LoseUnsynced,
        CrashFault::KeepPrefix,
        CrashFault::TearLastSector,
        CrashFault::FlipBits,
    ];
}

/// The faults a disk may show, drawn by the scenario.
#[derive(Debug, Clone)]
pub struct DiskFaults {
    pub sync_latency: Duration,
    /// Chance in a million that a sync fails (EIO).
    pub sync_failure_per_million: u32,
    /// Total bytes the disk holds; writes beyond fail with ENOSPC.
    pub capacity_bytes: Option<u64>,
}

impl Default for DiskFaults {
    fn default() -> Self {
        DiskFaults {
            sync_latency: Duration::from_micros(500),
            sync_failure_per_million: 0,
            capacity_bytes: None,
        }
    }
}

struct State {
    storage: MemStorage,
    faults: DiskFaults,
    rng: Rng,
    syncs_failed: u64,
}

/// A handle to one simulated disk; clones share it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

const SECTOR_BYTES: usize = 512;

impl SimDisk {
    pub fn new(seed: u64, faults: DiskFaults) -> SimDisk {
        let state = State {
            storage: MemStorage::new(),
            faults,
            rng: Rng::from_seed(seed),
            syncs_failed: 0,
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The simulation is single-threaded; a poisoned lock means a task
        // panicked, which fails the run anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a crash: what was not synced is lost or damaged per `fault`.
    pub fn crash(&self, fault: CrashFault) {
        let mut state = self.lock();
        let State { storage, rng, .. } = &mut *state;
        storage.crash_with(|_, tail| surviving_tail(fault, rng, tail));
    }

    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    pub fn syncs_failed(&self) -> u64 {
        self.lock().syncs_failed
    }

    /// A copy of the disk as it is now, for checkers that open the logs.
    pub fn snapshot(&self) -> MemStorage {
        self.lock().storage.clone()
    }
}

fn surviving_tail(fault: CrashFault, rng: &mut Rng, tail: &[u8]) -> Vec<u8> {
    if tail.is_empty() {
        return Vec::new();
    }
    match fault {
        CrashFault::LoseUnsynced => Vec::new(),
        CrashFault::KeepPrefix => {
            let keep = (rng.next_u64() % (tail.len() as u64 + 1)) as usize;
            tail[..keep].to_vec()
        }
        CrashFault::TearLastSector => {
            // Every unsynced write reached the disk but the last sector.
            let mut kept = tail.to_vec();
            let start = (kept.len() - 1) / SECTOR_BYTES * SECTOR_BYTES;
            for byte in kept[start..].iter_mut() {
                *byte = rng.next_u64() as u8;
            }
            kept
        }
        CrashFault::FlipBits => {
            // Every unsynced write reached the disk, a few bits of it wrong.
            let mut kept = tail.to_vec();
            for _ in 0..3 {
                let at = (rng.next_u64() % kept.len() as u64) as usize;
                kept[at] ^= 1 << (rng.next_u64() % 8);
            }
            kept
        }
    }
}

impl Disk for SimDisk {
    fn sync(&mut self, targets: &[SyncTarget]) -> SyncFuture {
        let disk = self.clone();
        // What the sync is sure to cover is what the files held when it was
        // issued; later writes stay volatile.
        let targets: Vec<(SyncTarget, u64)> = {
            let state = self.lock();
            targets
                .iter()
                .map(|t| match t {
                    SyncTarget::File(path) => (t.clone(), state.storage.len_of(path)),
                    SyncTarget::Dir(_) => (t.clone(), u64::MAX),
                })
                .collect()
        };
        Box::pin(async move {
            let latency = disk.lock().faults.sync_latency;
            tokio::time::sleep(latency).await;
            let mut state = disk.lock();
            let failure = state.faults.sync_failure_per_million;
            if failure > 0 && (state.rng.next_u64() % 1_000_000) < failure as u64 {
                // The data it covered is now in an unknown state: part of it may
                // reach the disk. Model the worst case: none of it does.
                state.syncs_failed += 1;
                return Err("simulated EIO from fsync".to_string());
            }
            for (target, len_max) in &targets {
                state.storage.sync_up_to(target, *len_max);
            }
            Ok(())
        })
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        self.lock().storage.create_dir_all(path)
    }
    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        self.lock().storage.list_dir(path)
    }
    fn exists(&mut self, path: &str) -> bool {
        self.lock().storage.exists(path)
    }
    fn open(&mut self, path: &str, create: bool) -> io::Result<FileId> {
        self.lock().storage.open(path, create)
    }
    fn close(&mut self, file: FileId) {
        self.lock().storage.close(file)
    }
    fn len(&mut self, file: FileId) -> io::Result<u64> {
        self.lock().storage.len(file)
    }
    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.lock().storage.read_at(file, position, buf)
    }
    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(capacity) = state.faults.capacity_bytes {
            let length = state.storage.len(file)?;
            let growth = (position + bytes.len() as u64).saturating_sub(length);
            if state.storage.volatile_bytes() + growth > capacity {
                return Err(io::ErrorKind::StorageFull.into());
            }
        }
        state.storage.write_at(file, position, bytes)
    }
    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.lock().storage.truncate(file, len)
    }
    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.lock().storage.remove_file(path)
    }
    fn remove_dir(&mut self, path: &str) -> io::Result<()> {
        self.lock().storage.remove_dir(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.lock().storage.rename(from, to)
    }
}
