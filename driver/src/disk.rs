//! The real disk: `Storage` over files under one log directory, and the
//! syncer that makes them durable off the node's thread.
//!
//! Writes go to the page cache with `pwrite`; the node asks for syncs as
//! outputs, and `FileDisk::sync_job` turns one into a job holding the open
//! file handles, so the syncer thread calls `fdatasync` on the very
//! descriptors that were written (a later error on them is reported there).
//! One syncer thread per disk runs the jobs in order.
//!
//! Descriptors are a budget: `FileId`s are logical, and only the
//! `log.open.files.max` most recently used files hold one (see `FileDisk`).
//! A file is closed only once a completed sync covers its writes, so no
//! writeback error is lost with its descriptor (the fsync error reported to
//! one descriptor is not reported again to a new one).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_core::storage::{FileId, Storage, SyncTarget};

use crate::{Disk, SyncFuture};

/// The error, naming what was being done and the path, with its kind kept
/// (the node tells a full disk from a broken one by kind).
fn named(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

/// The name of the lock file in a data directory (Kafka's name).
pub const LOCK_FILE: &str = ".lock";

/// Takes an exclusive advisory lock on `root/.lock`; the lock goes with the
/// returned file (when it is closed, or the process ends, however).
fn lock_directory(root: &Path) -> io::Result<File> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    // SAFETY: flock takes a descriptor that `file` owns and keeps open for
    // the call; it touches no memory of ours.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if taken != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the log directory {} is in use by another process ({} holds {})",
                    root.display(),
                    match holder.trim() {
                        "" => "a process".to_string(),
                        pid => format!("process {pid}"),
                    },
                    path.display()
                ),
            )
        } else {
            io::Error::new(
                error.kind(),
                format!("cannot lock {}: {error}", path.display()),
            )
        });
    }
    // Who holds it, for the next process that finds it taken.
    file.set_len(0)
        .and_then(|()| file.write_all_at(std::process::id().to_string().as_bytes(), 0))
        .map_err(|e| named(e, "cannot write", &path))?;
    Ok(file)
}

/// What the last completed sync of a file covered, shared by the node's
/// thread and the syncer: 0 when none completed since the node opened it,
/// else one more than the number of its entry's writes it covered.
#[derive(Debug, Default)]
pub struct Synced(AtomicU64);

impl Synced {
    /// A completed sync covered the first `writes` writes.
    fn record(&self, writes: u64) {
        self.0.fetch_max(writes + 1, Ordering::AcqRel);
    }

    /// A completed sync covered the first `writes` writes.
    fn covers(&self, writes: u64) -> bool {
        self.0.load(Ordering::Acquire) > writes
    }
}

/// One file the node opened (a logical `FileId`), holding a descriptor or
/// not at the moment: descriptors are a budget (`open_files_max`), and an
/// entry without one is reopened by path when next used.
struct Entry {
    path: String,
    /// None while evicted.
    handle: Option<Arc<File>>,
    /// Writes and truncations made through this entry, ever.
    writes: u64,
    synced: Arc<Synced>,
    /// Its key in `FileDisk::by_use` while it holds a descriptor.
    used: u64,
    /// The node closed it while some of its writes were unsynced: the
    /// descriptor stays until a sync covers them, so that a writeback error
    /// on them reaches the sync that the node waits for.
    closed: bool,
}

impl Entry {
    /// Every write made through it is covered by a completed sync. Only
    /// then may its descriptor be closed: on Linux a writeback error seen
    /// through a closed descriptor can be lost to the next one opened.
    fn clean(&self) -> bool {
        self.handle.is_none() || self.writes == 0 || self.synced.covers(self.writes)
    }

    /// A sync completed since it was opened and covers all its writes: the
    /// file is on disk as the node sees it, and needs no sync.
    fn durable(&self) -> bool {
        self.synced.covers(self.writes)
    }
}

/// Fewest descriptors the disk keeps for files, whatever is configured: one
/// segment's four files and a checkpoint.
pub const OPEN_FILES_MIN: usize = 8;

/// `Storage` over the files under one directory, with its syncer thread.
///
/// `FileId`s are logical: each names a path the node opened, and holds a
/// descriptor only while it is among the `open_files_max` most recently
/// used. A file whose writes are not yet covered by a completed sync is
/// never closed as it is: the least recently used clean file goes first,
/// and when every file holding a descriptor has unsynced writes, one is
/// synced through its own descriptor before it is closed (a failure then
/// fails the next sync the node asks for), so no writeback error is lost.
/// Sockets and the syncer's directory opens keep the rest of the process's
/// descriptors; an open the process has none left for, even with every
/// file closed, fails with an error that says so.
///
/// Renames follow an evicted file to its new name. A file removed while the
/// node still holds it open cannot be reopened once evicted (the core
/// closes segment files before it removes them).
pub struct FileDisk {
    root: PathBuf,
    files: BTreeMap<FileId, Entry>,
    /// The entries of each path, oldest first (open ones, and closed ones
    /// still waiting for their sync).
    by_path: BTreeMap<String, Vec<FileId>>,
    /// The entries holding a descriptor, least recently used first.
    by_use: BTreeMap<u64, FileId>,
    use_tick: u64,
    /// Entries the node closed that wait for a sync to cover their writes.
    closed_dirty: std::collections::BTreeSet<FileId>,
    /// The bound on `by_use` (`log.open.files.max`).
    open_files_max: usize,
    /// Descriptors evicted while a sync job in flight still held them:
    /// they close when it lets go, and count against the bound until then.
    lingering: Vec<Arc<File>>,
    /// Files synced on the node's thread to free their descriptor.
    syncs_in_place: u64,
    /// The first failure of such a sync: every later sync fails with it.
    sync_failure: Option<String>,
    next_file: u64,
    syncer: std::sync::mpsc::Sender<(SyncJob, tokio::sync::oneshot::Sender<io::Result<()>>)>,
    /// `.lock` in the directory, held (flock) for as long as the disk is
    /// open: a second broker on the same directory refuses to start.
    _lock: File,
}

impl FileDisk {
    /// Opens the data directory (creating it), takes its lock, and starts
    /// its syncer thread. A directory another process holds is refused
    /// (`ErrorKind::WouldBlock`), as Kafka refuses a log directory whose
    /// `.lock` it cannot take. Files held open are bounded by what the
    /// process's descriptor limit allows (`open_files_max_default`) until
    /// `set_open_files_max` says otherwise.
    pub fn open(root: &Path) -> io::Result<FileDisk> {
        fs::create_dir_all(root).map_err(|e| named(e, "cannot create the log directory", root))?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("the log directory {} is not a directory", root.display()),
            ));
        }
        let lock = lock_directory(root)?;
        let (syncer, jobs) =
            std::sync::mpsc::channel::<(SyncJob, tokio::sync::oneshot::Sender<io::Result<()>>)>();
        std::thread::Builder::new()
            .name("sluice-syncer".into())
            .spawn(move || {
                for (job, done) in jobs {
                    let _ = done.send(job.run());
                }
            })
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start the syncer thread of {}: {e}", root.display()),
                )
            })?;
        let soft = crate::limits::open_files_limit().map_or(1024, |limit| limit.soft);
        Ok(FileDisk {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            by_path: BTreeMap::new(),
            by_use: BTreeMap::new(),
            use_tick: 0,
            closed_dirty: std::collections::BTreeSet::new(),
            open_files_max: crate::limits::open_files_max_default(soft),
            lingering: Vec::new(),
            syncs_in_place: 0,
            sync_failure: None,
            next_file: 0,
            syncer,
            _lock: lock,
        })
    }

    /// Bounds the descriptors held for files (at least `OPEN_FILES_MIN`).
    pub fn set_open_files_max(&mut self, open_files_max: usize) {
        self.open_files_max = open_files_max.max(OPEN_FILES_MIN);
    }

    pub fn open_files_max(&self) -> usize {
        self.open_files_max
    }

    /// Files synced on the node's thread to free their descriptor, ever.
    pub fn syncs_in_place(&self) -> u64 {
        self.syncs_in_place
    }

    /// Descriptors held for files now, those a sync in flight still holds
    /// after they were evicted included.
    pub fn open_files(&mut self) -> usize {
        self.lingering.retain(|file| Arc::strong_count(file) > 1);
        self.by_use.len() + self.lingering.len()
    }

    /// Lets go of an evicted descriptor: closed now, or when the sync job
    /// holding it is done.
    fn release(&mut self, file: Arc<File>) {
        if Arc::strong_count(&file) > 1 {
            self.lingering.push(file);
        }
    }

    /// `named` for an open file.
    fn named_file(&self, error: io::Error, doing: &str, file: FileId) -> io::Error {
        match self.files.get(&file) {
            Some(entry) => named(error, doing, &self.path(&entry.path)),
            None => error,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        if relative.is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        }
    }

    /// Marks an entry holding a descriptor as the most recently used.
    fn touch(&mut self, id: FileId) {
        self.use_tick += 1;
        let tick = self.use_tick;
        let entry = self.files.get_mut(&id).expect("touched entries exist");
        assert!(
            entry.handle.is_some(),
            "only entries with a descriptor are touched"
        );
        let removed = self.by_use.remove(&entry.used);
        assert_eq!(
            removed,
            Some(id),
            "by_use holds every entry with a descriptor"
        );
        entry.used = tick;
        self.by_use.insert(tick, id);
    }

    /// The descriptor of an open file, reopened by path if it was evicted.
    fn descriptor(&mut self, id: FileId) -> io::Result<Arc<File>> {
        let entry = self
            .files
            .get(&id)
            .filter(|entry| !entry.closed)
            .ok_or_else(|| io::Error::other("file not open"))?;
        if let Some(handle) = entry.handle.clone() {
            self.touch(id);
            return Ok(handle);
        }
        let path = entry.path.clone();
        self.make_room();
        let file = self.open_descriptor(&path, false)?;
        self.use_tick += 1;
        let tick = self.use_tick;
        let entry = self.files.get_mut(&id).expect("still there");
        // Everything written before was covered by a sync: it was clean
        // when evicted.
        let handle = Arc::new(file);
        entry.handle = Some(handle.clone());
        entry.used = tick;
        self.by_use.insert(tick, id);
        Ok(handle)
    }

    /// Opens a path, evicting clean files while the process is out of
    /// descriptors.
    fn open_descriptor(&mut self, relative: &str, create: bool) -> io::Result<File> {
        let path = self.path(relative);
        loop {
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(&path);
            match opened {
                Ok(file) => return Ok(file),
                Err(error) if out_of_descriptors(&error) => {
                    if !self.evict_one() {
                        return Err(io::Error::new(
                            error.kind(),
                            format!(
                                "cannot open {}: {error}: the process is out of file descriptors, \
                                 and the log directory holds {} files open (log.open.files.max is \
                                 {}): connections or syncs hold the rest",
                                path.display(),
                                self.by_use.len(),
                                self.open_files_max
                            ),
                        ));
                    }
                }
                Err(error) => return Err(named(error, "cannot open", &path)),
            }
        }
    }

    /// Evicts clean files until a new descriptor stays within the bound,
    /// or none is clean.
    fn make_room(&mut self) {
        while self.open_files() >= self.open_files_max {
            if !self.evict_one() {
                break;
            }
        }
    }

    /// Closes the descriptor of the least recently used clean file, or
    /// when every file holding one has unsynced writes, syncs the least
    /// recently used of them on the spot and closes it: the node's thread
    /// waits for that `fdatasync`, which only happens with the budget
    /// spent. Its error, if any, is kept and fails the next sync the node
    /// asks for, so no writeback error is lost with the descriptor. False
    /// when no file holds a descriptor.
    fn evict_one(&mut self) -> bool {
        let clean = self
            .by_use
            .values()
            .copied()
            .find(|id| self.files.get(id).is_some_and(Entry::clean));
        let victim = match clean {
            Some(id) => id,
            None => match self.by_use.values().next().copied() {
                Some(id) => {
                    self.sync_in_place(id);
                    id
                }
                None => return false,
            },
        };
        self.evict(victim);
        true
    }

    /// Syncs a file's data through its own descriptor, now, so that it may
    /// be closed.
    fn sync_in_place(&mut self, id: FileId) {
        let entry = &self.files[&id];
        let handle = entry
            .handle
            .clone()
            .expect("only files with a descriptor are synced");
        let writes = entry.writes;
        let path = self.path(&entry.path);
        let synced = entry.synced.clone();
        self.syncs_in_place += 1;
        if let Err(error) = handle.sync_data() {
            let error = named(error, "cannot sync", &path);
            tracing::error!(%error, "a sync to free a file descriptor failed");
            self.sync_failure.get_or_insert(error.to_string());
        }
        // Covered or failed: either way its outcome is known now, and a
        // failure is reported by `sync_failure`.
        synced.record(writes);
    }

    fn evict(&mut self, id: FileId) {
        let entry = self.files.get_mut(&id).expect("evicted entries exist");
        assert!(
            entry.clean(),
            "a file with unsynced writes is never evicted"
        );
        let closed = entry.closed;
        if let Some(file) = entry.handle.take() {
            let used = entry.used;
            self.by_use.remove(&used);
            self.release(file);
        }
        if closed {
            self.forget(id);
        }
    }

    /// Drops an entry altogether.
    fn forget(&mut self, id: FileId) {
        let Some(mut entry) = self.files.remove(&id) else {
            return;
        };
        if let Some(file) = entry.handle.take() {
            self.by_use.remove(&entry.used);
            self.release(file);
        }
        self.closed_dirty.remove(&id);
        if let Some(ids) = self.by_path.get_mut(&entry.path) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_path.remove(&entry.path);
            }
        }
    }

    /// Lets go of closed files whose writes a sync has covered since.
    fn forget_closed_clean(&mut self) {
        let clean: Vec<FileId> = self
            .closed_dirty
            .iter()
            .copied()
            .filter(|id| self.files.get(id).is_none_or(Entry::clean))
            .collect();
        for id in clean {
            self.forget(id);
        }
    }

    /// Resolves sync targets into what the syncer needs: for a file, the
    /// descriptors that were written through (or its path, for the syncer
    /// to open, when none is held) and what each entry's writes were; for a
    /// directory its path. A file every entry of which a completed sync
    /// covers since it was opened is left out: it is on disk already.
    pub fn sync_job(&self, targets: &[SyncTarget]) -> SyncJob {
        let mut items = Vec::with_capacity(targets.len());
        for target in targets {
            match target {
                SyncTarget::File(path) => {
                    let entries: Vec<&Entry> = self
                        .by_path
                        .get(path)
                        .into_iter()
                        .flatten()
                        .map(|id| &self.files[id])
                        .collect();
                    if !entries.is_empty() && entries.iter().all(|e| e.durable()) {
                        continue;
                    }
                    items.push(SyncItem::File {
                        path: self.path(path),
                        files: entries.iter().filter_map(|e| e.handle.clone()).collect(),
                        covered: entries
                            .iter()
                            .map(|e| (e.synced.clone(), e.writes))
                            .collect(),
                    });
                }
                SyncTarget::Dir(path) => items.push(SyncItem::Dir(self.path(path))),
            }
        }
        SyncJob { items }
    }

    /// Checks the bookkeeping: every entry with a descriptor is in the LRU
    /// under its tick, and every entry is listed under its path.
    fn invariants(&self) {
        assert_eq!(
            self.by_use.len(),
            self.files.values().filter(|e| e.handle.is_some()).count()
        );
        for (tick, id) in &self.by_use {
            assert_eq!(self.files[id].used, *tick);
        }
        for (id, entry) in &self.files {
            assert!(self.by_path[&entry.path].contains(id));
            assert_eq!(entry.closed, self.closed_dirty.contains(id));
        }
    }
}

/// EMFILE or ENFILE: no descriptor for the process or the system, which
/// says nothing about the disk.
pub fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl Disk for FileDisk {
    fn sync(&mut self, targets: &[SyncTarget]) -> SyncFuture {
        self.forget_closed_clean();
        if let Some(failure) = self.sync_failure.clone() {
            return Box::pin(async move { Err(failure) });
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let sent = self.syncer.send((self.sync_job(targets), done));
        Box::pin(async move {
            sent.map_err(|_| "the syncer thread stopped".to_string())?;
            match result.await {
                Ok(outcome) => outcome.map_err(|e| e.to_string()),
                Err(_) => Err("the syncer thread stopped".to_string()),
            }
        })
    }
}

/// Writes `parts` one after another from `position` with `pwritev`,
/// again for whatever a short write left.
fn write_all_vectored_at(file: &File, mut position: u64, parts: &[&[u8]]) -> io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        let iov: Vec<libc::iovec> = parts[first..]
            .iter()
            .take(IOV_MAX)
            .map(|part| libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            })
            .collect();
        // SAFETY: each iovec points into a slice borrowed for this call,
        // which pwritev only reads; the descriptor lives as long as `file`.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                position as libc::off_t,
            )
        };
        if written < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        position += written as u64;
        let mut left = written as usize;
        while left > 0 {
            let part = parts[first];
            if left >= part.len() {
                left -= part.len();
                first += 1;
            } else {
                parts[first] = &part[left..];
                left = 0;
            }
        }
    }
    Ok(())
}

/// Most parts in one `pwritev` (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

pub enum SyncItem {
    File {
        path: PathBuf,
        /// The descriptors written through; the path is opened when empty.
        files: Vec<Arc<File>>,
        /// What the sync, once complete, covers of each entry of the path:
        /// its writes when the sync was asked for.
        covered: Vec<(Arc<Synced>, u64)>,
    },
    Dir(PathBuf),
}

/// One sync request, ready to run on any thread.
pub struct SyncJob {
    items: Vec<SyncItem>,
}

/// The syncer's wait between opens the process had no descriptor for,
/// doubling from the first to the last.
const SYNC_OPEN_BACKOFF_MS_MIN: u64 = 1;
const SYNC_OPEN_BACKOFF_MS_MAX: u64 = 1_000;
/// Least time between two warnings that the syncer waits for descriptors.
const SYNC_OPEN_WARNING_INTERVAL_MS: u64 = 10_000;

/// Opens `path` for a sync. Out of descriptors it waits and tries again,
/// for as long as it takes: failing the sync would take the log directory
/// offline for a shortage that says nothing about the disk, and until the
/// sync completes nothing it covers is acknowledged.
fn open_for_sync(path: &Path) -> io::Result<File> {
    let mut backoff_ms = SYNC_OPEN_BACKOFF_MS_MIN;
    let mut warned: Option<std::time::Instant> = None;
    loop {
        match File::open(path) {
            Err(error) if out_of_descriptors(&error) => {
                let due = warned.is_none_or(|at| {
                    at.elapsed() >= std::time::Duration::from_millis(SYNC_OPEN_WARNING_INTERVAL_MS)
                });
                if due {
                    tracing::warn!(
                        path = %path.display(),
                        %error,
                        "the syncer waits for a file descriptor; nothing is acknowledged meanwhile"
                    );
                    warned = Some(std::time::Instant::now());
                }
                std::thread::sleep(std::time::Duration::from_millis(backoff_ms));
                backoff_ms = (backoff_ms * 2).min(SYNC_OPEN_BACKOFF_MS_MAX);
            }
            other => return other,
        }
    }
}

impl SyncJob {
    /// Syncs every item: file data first, then directory entries. A file
    /// or directory removed since the request needs no sync.
    pub fn run(&self) -> io::Result<()> {
        let ignore_missing = |result: io::Result<()>| match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        for item in &self.items {
            match item {
                SyncItem::File {
                    path,
                    files,
                    covered,
                } => {
                    if files.is_empty() {
                        ignore_missing(open_for_sync(path).and_then(|f| f.sync_data()))
                            .map_err(|e| named(e, "cannot sync", path))?;
                    }
                    for file in files {
                        file.sync_data()
                            .map_err(|e| named(e, "cannot sync", path))?;
                    }
                    for (synced, writes) in covered {
                        synced.record(*writes);
                    }
                }
                SyncItem::Dir(_) => {}
            }
        }
        for item in &self.items {
            if let SyncItem::Dir(path) = item {
                ignore_missing(open_for_sync(path).and_then(|f| f.sync_all()))
                    .map_err(|e| named(e, "cannot sync the directory", path))?;
            }
        }
        Ok(())
    }
}

impl Storage for FileDisk {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        let path = self.path(path);
        fs::create_dir_all(&path).map_err(|e| named(e, "cannot create the directory", &path))
    }

    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let path = self.path(path);
        let listing = |e| named(e, "cannot list", &path);
        // Listing takes a descriptor too: make one free if the budget is
        // spent.
        let mut entries = loop {
            match fs::read_dir(&path) {
                Err(error) if out_of_descriptors(&error) && self.evict_one() => continue,
                other => break other.map_err(listing)?,
            }
        };
        for entry in &mut entries {
            names.push(
                entry
                    .map_err(listing)?
                    .file_name()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        names.sort();
        Ok(names)
    }

    fn exists(&mut self, path: &str) -> bool {
        self.path(path).exists()
    }

    fn open(&mut self, path: &str, create: bool) -> io::Result<FileId> {
        self.make_room();
        let file = self.open_descriptor(path, create)?;
        self.next_file += 1;
        self.use_tick += 1;
        let id = FileId(self.next_file);
        self.files.insert(
            id,
            Entry {
                path: path.to_string(),
                handle: Some(Arc::new(file)),
                writes: 0,
                synced: Arc::default(),
                used: self.use_tick,
                closed: false,
            },
        );
        self.by_use.insert(self.use_tick, id);
        self.by_path.entry(path.to_string()).or_default().push(id);
        self.debug_invariants();
        Ok(id)
    }

    fn close(&mut self, file: FileId) {
        let Some(entry) = self.files.get_mut(&file) else {
            return;
        };
        if entry.closed {
            return;
        }
        if entry.clean() {
            self.forget(file);
        } else {
            entry.closed = true;
            self.closed_dirty.insert(file);
        }
        self.debug_invariants();
    }

    fn len(&mut self, file: FileId) -> io::Result<u64> {
        let metadata = self.descriptor(file)?.metadata();
        Ok(metadata
            .map_err(|e| self.named_file(e, "cannot read the length of", file))?
            .len())
    }

    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file_id = file;
        let handle = self.descriptor(file)?;
        let mut done = 0;
        while done < buf.len() {
            match handle.read_at(&mut buf[done..], position + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.named_file(e, "cannot read", file_id)),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        let handle = self.written(file)?;
        let written = handle.write_all_at(bytes, position);
        written.map_err(|e| self.named_file(e, "cannot write", file))
    }

    fn write_vectored_at(
        &mut self,
        file: FileId,
        position: u64,
        parts: &[&[u8]],
    ) -> io::Result<()> {
        let handle = self.written(file)?;
        let written = write_all_vectored_at(&handle, position, parts);
        written.map_err(|e| self.named_file(e, "cannot write", file))
    }

    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let handle = self.written(file)?;
        let truncated = handle.set_len(len);
        truncated.map_err(|e| self.named_file(e, "cannot truncate", file))
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        let full = self.path(path);
        fs::remove_file(&full).map_err(|e| named(e, "cannot remove", &full))?;
        self.forget_closed_at(path);
        Ok(())
    }

    fn remove_dir(&mut self, path: &str) -> io::Result<()> {
        let path = self.path(path);
        fs::remove_dir(&path).map_err(|e| named(e, "cannot remove the directory", &path))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let source = self.path(from);
        fs::rename(&source, self.path(to)).map_err(|e| named(e, "cannot rename", &source))?;
        // What was at `to` is gone; what was at `from` is there now.
        self.forget_closed_at(to);
        if let Some(moved) = self.by_path.remove(from) {
            for id in &moved {
                if let Some(entry) = self.files.get_mut(id) {
                    entry.path = to.to_string();
                }
            }
            self.by_path
                .entry(to.to_string())
                .or_default()
                .extend(moved);
        }
        self.debug_invariants();
        Ok(())
    }
}

impl FileDisk {
    /// The descriptor of a file about to be written: the write counts
    /// before it is made, so that the file stays unevictable until a sync
    /// issued after it completed, whether or not it succeeds.
    fn written(&mut self, file: FileId) -> io::Result<Arc<File>> {
        let handle = self.descriptor(file)?;
        self.files.get_mut(&file).expect("just used").writes += 1;
        Ok(handle)
    }

    /// Forgets the closed files at a path whose name is gone: nothing syncs
    /// them any more, and their data no longer matters.
    fn forget_closed_at(&mut self, path: &str) {
        let closed: Vec<FileId> = self
            .by_path
            .get(path)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| self.files.get(id).is_some_and(|e| e.closed))
            .collect();
        for id in closed {
            self.forget(id);
        }
    }

    /// The invariants, in debug builds (they walk every entry).
    fn debug_invariants(&self) {
        if cfg!(debug_assertions) && self.files.len() <= 4_096 {
            self.invariants();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_name_their_path_and_keep_their_kind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        let missing = dir.path().join("no-such-dir/f");
        let error = disk.open("no-such-dir/f", true).expect_err("fails");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot open {}: ", missing.display())),
            "{error}"
        );
        let error = disk.remove_dir("t-0").expect_err("fails");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(
            error.to_string().contains("cannot remove the directory"),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains(&dir.path().join("t-0").display().to_string()));
    }

    #[test]
    fn a_log_directory_that_cannot_be_one_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        for root in [file.clone(), file.join("below")] {
            let refused = FileDisk::open(&root).err().expect("refused");
            assert!(
                refused.to_string().contains(&root.display().to_string())
                    && refused.to_string().contains("log directory"),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_second_disk_on_the_same_directory_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = FileDisk::open(dir.path()).expect("open");
        let refused = FileDisk::open(dir.path()).err().expect("refused");
        assert!(
            refused
                .to_string()
                .contains(&format!("process {}", std::process::id())),
            "{refused}"
        );
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        assert!(
            refused.to_string().contains("in use by another process"),
            "{refused}"
        );
        drop(first);
        FileDisk::open(dir.path()).expect("free again once the first is closed");
    }

    #[test]
    fn vectored_writes_land_in_order_at_their_position() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        let file = disk.open("f", true).expect("create");
        disk.write_at(file, 0, b"0123456789").expect("write");
        let parts: Vec<Vec<u8>> = (0..1_500u32).map(|n| n.to_be_bytes().to_vec()).collect();
        let mut slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        slices.insert(3, b"");
        // More parts than one pwritev takes, after a kept prefix.
        disk.write_vectored_at(file, 4, &slices)
            .expect("vectored write");
        let mut back = vec![0u8; 4 + 4 * 1_500];
        assert_eq!(disk.read_at(file, 0, &mut back).expect("read"), back.len());
        assert_eq!(&back[..4], b"0123");
        assert_eq!(&back[4..], &parts.concat()[..]);
        assert_eq!(disk.len(file).expect("len"), back.len() as u64);
    }
    /// Syncs `paths` as the node would, on this thread.
    fn sync_files(disk: &FileDisk, paths: &[String]) {
        let targets: Vec<SyncTarget> = paths.iter().cloned().map(SyncTarget::File).collect();
        disk.sync_job(&targets).run().expect("sync");
    }

    #[test]
    fn idle_files_give_their_descriptors_back_and_reopen_on_demand() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        disk.set_open_files_max(OPEN_FILES_MIN);
        let paths: Vec<String> = (0..50).map(|n| format!("f{n}")).collect();
        let mut ids = Vec::new();
        for path in &paths {
            let id = disk.open(path, true).expect("create");
            disk.write_at(id, 0, path.as_bytes()).expect("write");
            // Synced at once: clean, so it may be evicted.
            sync_files(&disk, std::slice::from_ref(path));
            ids.push(id);
            assert!(disk.open_files() <= OPEN_FILES_MIN, "{}", disk.open_files());
        }
        for (id, path) in ids.iter().zip(&paths) {
            let mut back = vec![0u8; path.len()];
            assert_eq!(disk.read_at(*id, 0, &mut back).expect("read"), path.len());
            assert_eq!(back, path.as_bytes());
            assert_eq!(disk.len(*id).expect("len"), path.len() as u64);
            assert!(disk.open_files() <= OPEN_FILES_MIN);
        }
        disk.invariants();
    }

    #[test]
    fn clean_files_are_evicted_first_and_dirty_ones_only_once_synced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        disk.set_open_files_max(OPEN_FILES_MIN);
        let dirty: Vec<FileId> = (0..OPEN_FILES_MIN / 2)
            .map(|n| {
                let id = disk.open(&format!("dirty{n}"), true).expect("create");
                disk.write_at(id, 0, b"unsynced").expect("write");
                id
            })
            .collect();
        // More clean files than the bound leaves: the clean ones make way,
        // the older dirty ones keep their descriptors, nothing is synced.
        for n in 0..3 * OPEN_FILES_MIN {
            disk.open(&format!("clean{n}"), true).expect("create");
            assert!(disk.open_files() <= OPEN_FILES_MIN);
        }
        assert_eq!(disk.syncs_in_place(), 0);
        assert!(dirty.iter().all(|id| disk.files[id].handle.is_some()));
        // Only dirty files left: each that makes way is synced first.
        let more: Vec<FileId> = (0..OPEN_FILES_MIN)
            .map(|n| {
                let id = disk.open(&format!("more{n}"), true).expect("create");
                disk.write_at(id, 0, b"unsynced too").expect("write");
                id
            })
            .collect();
        assert_eq!(disk.open_files(), OPEN_FILES_MIN);
        assert_eq!(disk.syncs_in_place(), dirty.len() as u64);
        for id in &dirty {
            assert!(disk.files[id].handle.is_none() && disk.files[id].clean());
        }
        assert!(more.iter().all(|id| !disk.files[id].clean()));
        disk.invariants();
    }

    #[test]
    fn a_write_after_the_sync_was_asked_keeps_the_file_dirty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        let id = disk.open("f", true).expect("create");
        disk.write_at(id, 0, b"first").expect("write");
        let job = disk.sync_job(&[SyncTarget::File("f".into())]);
        disk.write_at(id, 5, b"second").expect("write");
        job.run().expect("sync");
        assert!(!disk.files[&id].clean(), "the second write is not covered");
        sync_files(&disk, &["f".to_string()]);
        assert!(disk.files[&id].clean());
    }

    #[test]
    fn a_closed_file_keeps_its_descriptor_until_a_sync_covers_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        let id = disk.open("tmp", true).expect("create");
        disk.write_at(id, 0, b"checkpoint").expect("write");
        disk.close(id);
        assert_eq!(disk.open_files(), 1, "closed with unsynced writes: kept");
        disk.rename("tmp", "final").expect("rename");
        let job = disk.sync_job(&[SyncTarget::File("final".into())]);
        assert!(
            matches!(&job.items[..], [SyncItem::File { files, .. }] if files.len() == 1),
            "the sync goes through the descriptor that was written"
        );
        job.run().expect("sync");
        drop(job);
        drop(disk.sync(&[]));
        assert_eq!(disk.open_files(), 0, "synced: let go");
        assert!(disk.files.is_empty());
        let mut back = vec![0u8; 10];
        let reopened = disk.open("final", false).expect("open");
        disk.read_at(reopened, 0, &mut back).expect("read");
        assert_eq!(&back, b"checkpoint");
    }

    #[test]
    fn truncate_rename_and_remove_work_on_evicted_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        disk.set_open_files_max(OPEN_FILES_MIN);
        let id = disk.open("a", true).expect("create");
        disk.write_at(id, 0, b"0123456789").expect("write");
        sync_files(&disk, &["a".to_string()]);
        let evict_all = |disk: &mut FileDisk| {
            for n in 0..OPEN_FILES_MIN {
                let other = disk.open(&format!("other{n}"), true).expect("create");
                disk.close(other);
            }
            for n in 0..OPEN_FILES_MIN {
                let other = disk.open(&format!("other{n}"), false).expect("open");
                let _ = other;
            }
        };
        evict_all(&mut disk);
        assert!(disk.files[&id].handle.is_none(), "evicted");
        disk.rename("a", "b").expect("rename an evicted file");
        disk.truncate(id, 4)
            .expect("truncate reopens by its new name");
        assert_eq!(disk.len(id).expect("len"), 4);
        assert_eq!(std::fs::read(dir.path().join("b")).expect("read"), b"0123");
        sync_files(&disk, &["b".to_string()]);
        evict_all(&mut disk);
        disk.close(id);
        disk.remove_file("b").expect("remove");
        assert!(!dir.path().join("b").exists());
        disk.invariants();
    }

    #[test]
    fn a_file_synced_since_it_was_opened_and_not_written_since_needs_no_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("old"), b"from a previous run").expect("write");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        let old = disk.open("old", false).expect("open");
        let target = [SyncTarget::File("old".into())];
        // What a previous process wrote may not be on disk: synced.
        assert_eq!(disk.sync_job(&target).items.len(), 1);
        disk.sync_job(&target).run().expect("sync");
        assert!(disk.sync_job(&target).items.is_empty(), "on disk already");
        disk.write_at(old, 0, b"again").expect("write");
        assert_eq!(disk.sync_job(&target).items.len(), 1, "written since");
    }

    #[test]
    fn a_descriptor_a_sync_in_flight_holds_counts_against_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut disk = FileDisk::open(dir.path()).expect("open");
        disk.set_open_files_max(OPEN_FILES_MIN);
        let first = disk.open("first", true).expect("create");
        disk.write_at(first, 0, b"data").expect("write");
        let job = disk.sync_job(&[SyncTarget::File("first".into())]);
        job.run().expect("sync");
        for n in 0..2 * OPEN_FILES_MIN {
            disk.open(&format!("f{n}"), true).expect("create");
            assert!(disk.open_files() <= OPEN_FILES_MIN);
        }
        assert!(disk.files[&first].handle.is_none(), "evicted");
        assert_eq!(disk.lingering.len(), 1, "the job still holds it");
        drop(job);
        assert_eq!(
            disk.open_files(),
            OPEN_FILES_MIN - 1,
            "closed once the job let go"
        );
    }
}
