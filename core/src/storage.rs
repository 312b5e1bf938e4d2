//! The one door between the core and durable storage.
//!
//! `Storage` has page-cache semantics: a write or a directory change is visible
//! to later reads at once, and is lost at a crash unless a sync that covers it
//! completed afterwards. The core never syncs by itself: it asks for a sync as
//! an output (`Output::Sync`), the driver performs it in the background, and its
//! completion comes back as an input (`Node::handle_synced`). The real driver
//! plugs in files; tests and the simulation plug in `MemStorage` or their own.
//!
//! Paths are `/`-separated and relative to the storage root (one log dir).

use std::collections::BTreeMap;
use std::io;

/// A handle to an open file, valid until `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

/// What a sync must make durable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncTarget {
    /// The contents and length of a file (fdatasync).
    File(String),
    /// The entries of a directory: files created, removed or renamed in it.
    Dir(String),
}

pub trait Storage {
    /// Creates a directory and its parents; existing ones are fine.
    fn create_dir_all(&mut self, path: &str) -> io::Result<()>;
    /// Names of the entries of a directory, sorted.
    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>>;
    fn exists(&mut self, path: &str) -> bool;
    /// Opens a file for reading and writing, creating it when `create` is set.
    fn open(&mut self, path: &str, create: bool) -> io::Result<FileId>;
    fn close(&mut self, file: FileId);
    fn len(&mut self, file: FileId) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `position`; returns how many were read
    /// (fewer only at the end of the file).
    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `bytes` at `position`, extending the file as needed. On
    /// error a prefix may have been written.
    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()>;
    /// Writes `parts` one after another from `position`, as one write where
    /// the storage can (`pwritev`). On error a prefix may have been written.
    fn write_vectored_at(
        &mut self,
        file: FileId,
        position: u64,
        parts: &[&[u8]],
    ) -> io::Result<()> {
        let mut at = position;
        for part in parts {
            self.write_at(file, at, part)?;
            at += part.len() as u64;
        }
        Ok(())
    }
    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()>;
    fn remove_file(&mut self, path: &str) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&mut self, path: &str) -> io::Result<()>;
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes or fails with `UnexpectedEof`.
pub fn read_exact_at<S: Storage + ?Sized>(
    storage: &mut S,
    file: FileId,
    position: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let read = storage.read_at(file, position + done as u64, &mut buf[done..])?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += read;
    }
    Ok(())
}

/// Parent directory of a path ("" for the root).
pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

/// An in-memory storage with page-cache semantics and crash loss, for unit
/// tests and property tests of the log. Each file has a volatile and a durable
/// copy; `sync` copies volatile to durable; `crash` drops what was not synced,
/// optionally keeping a prefix of the unsynced tail of each file.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    /// The namespace as seen now: path → file contents.
    volatile: BTreeMap<String, Vec<u8>>,
    /// The namespace and contents that survive a crash.
    durable: BTreeMap<String, Vec<u8>>,
    dirs_volatile: std::collections::BTreeSet<String>,
    dirs_durable: std::collections::BTreeSet<String>,
    /// Synced data of files whose name is not durable yet (their directory
    /// was not synced since they were created or renamed).
    pending_data: BTreeMap<String, Vec<u8>>,
    open: BTreeMap<FileId, String>,
    next_file: u64,
    /// When set, writes fail with this error kind (disk full, broken disk).
    pub fail_writes: Option<io::ErrorKind>,
    /// When set, opening a file while this many are open fails, as a
    /// process out of descriptors does (EMFILE).
    pub open_files_max: Option<usize>,
    /// Counts syncs performed, for tests of group commit.
    pub syncs_performed: u64,
    /// Counts reads, for tests of what is read when.
    pub reads_performed: u64,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        let mut storage = MemStorage::default();
        storage.dirs_volatile.insert(String::new());
        storage.dirs_durable.insert(String::new());
        storage
    }

    fn path_of(&self, file: FileId) -> io::Result<&String> {
        self.open
            .get(&file)
            .ok_or_else(|| io::Error::other("file not open"))
    }

    fn contents(&mut self, file: FileId) -> io::Result<&mut Vec<u8>> {
        let path = self.path_of(file)?.clone();
        self.volatile
            .get_mut(&path)
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// Every directory, as seen now (the root is "").
    pub fn dirs(&self) -> Vec<String> {
        self.dirs_volatile.iter().cloned().collect()
    }

    /// Performs a sync as the driver would.
    pub fn sync(&mut self, target: &SyncTarget) {
        self.sync_up_to(target, u64::MAX);
    }

    /// Length of a file as seen now (0 when absent), to bound a later sync.
    pub fn len_of(&self, path: &str) -> u64 {
        self.volatile.get(path).map_or(0, |c| c.len() as u64)
    }

    /// Performs a sync that covers a file only up to `len_max` bytes: what a
    /// sync issued when the file had that length is sure to cover. Writes
    /// made while it ran may or may not be covered; this disk says not.
    pub fn sync_up_to(&mut self, target: &SyncTarget, len_max: u64) {
        self.syncs_performed += 1;
        match target {
            SyncTarget::File(path) => {
                if let Some(contents) = self.volatile.get(path) {
                    let covered = contents[..contents.len().min(len_max as usize)].to_vec();
                    // A file's data is durable; whether its name is depends on its directory.
                    if self.durable.contains_key(path) {
                        self.durable.insert(path.clone(), covered);
                    } else {
                        self.pending_data.insert(path.clone(), covered);
                    }
                }
            }
            SyncTarget::Dir(dir) => {
                let in_dir = |path: &String| parent_of(path) == dir;
                self.durable
                    .retain(|path, _| !in_dir(path) || self.volatile.contains_key(path));
                for path in self.volatile.keys().filter(|p| in_dir(p)) {
                    if let Some(data) = self.pending_data.remove(path) {
                        self.durable.insert(path.clone(), data);
                    } else if !self.durable.contains_key(path) {
                        self.durable.insert(path.clone(), Vec::new());
                    }
                }
                let child = |d: &String| parent_of(d) == dir && !d.is_empty();
                self.dirs_durable
                    .retain(|d| !child(d) || self.dirs_volatile.contains(d));
                for d in self.dirs_volatile.iter().filter(|d| child(d)) {
                    self.dirs_durable.insert(d.clone());
                }
            }
        }
    }

    /// Loses everything not synced. `keep_unsynced_prefix` keeps, for each file
    /// that survives, that many extra bytes of its unsynced tail (a torn write).
    pub fn crash(&mut self, keep_unsynced_prefix: usize) {
        self.crash_with(|_, tail| tail[..keep_unsynced_prefix.min(tail.len())].to_vec());
    }

    /// Loses everything not synced, except that for each surviving file whose
    /// unsynced contents only extend its synced contents, `surviving_tail`
    /// decides what reaches the disk of that unsynced tail (nothing, a prefix,
    /// a prefix with flipped bits...). Synced bytes are never changed.
    pub fn crash_with(&mut self, mut surviving_tail: impl FnMut(&str, &[u8]) -> Vec<u8>) {
        let mut after = self.durable.clone();
        for (path, contents) in after.iter_mut() {
            if let Some(now) = self.volatile.get(path) {
                let common = contents.len().min(now.len());
                if now.len() > contents.len() && now[..common] == contents[..common] {
                    let tail = surviving_tail(path, &now[contents.len()..]);
                    contents.extend_from_slice(&tail);
                }
            }
        }
        self.volatile = after.clone();
        self.durable = after;
        self.dirs_volatile = self.dirs_durable.clone();
        self.pending_data.clear();
        self.open.clear();
    }

    /// Bytes in all files as seen now, for a capacity limit.
    pub fn volatile_bytes(&self) -> u64 {
        self.volatile.values().map(|c| c.len() as u64).sum()
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.dirs_volatile.insert(prefix.clone());
        }
        Ok(())
    }

    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        if !self.dirs_volatile.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let files = self.volatile.keys().filter(|p| parent_of(p) == path);
        let dirs = self
            .dirs_volatile
            .iter()
            .filter(|d| !d.is_empty() && parent_of(d) == path);
        let mut names: Vec<String> = files
            .chain(dirs)
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    fn exists(&mut self, path: &str) -> bool {
        self.volatile.contains_key(path) || self.dirs_volatile.contains(path)
    }

    fn open(&mut self, path: &str, create: bool) -> io::Result<FileId> {
        if self
            .open_files_max
            .is_some_and(|max| self.open.len() >= max)
        {
            return Err(io::Error::other("Too many open files"));
        }
        if !self.volatile.contains_key(path) {
            if !create {
                return Err(io::ErrorKind::NotFound.into());
            }
            if !self.dirs_volatile.contains(parent_of(path)) {
                return Err(io::ErrorKind::NotFound.into());
            }
            self.volatile.insert(path.to_string(), Vec::new());
        }
        self.next_file += 1;
        let id = FileId(self.next_file);
        self.open.insert(id, path.to_string());
        Ok(id)
    }

    fn close(&mut self, file: FileId) {
        self.open.remove(&file);
    }

    fn len(&mut self, file: FileId) -> io::Result<u64> {
        Ok(self.contents(file)?.len() as u64)
    }

    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.reads_performed += 1;
        let contents = self.contents(file)?;
        let start = (position as usize).min(contents.len());
        let count = buf.len().min(contents.len() - start);
        buf[..count].copy_from_slice(&contents[start..start + count]);
        Ok(count)
    }

    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        let failure = self.fail_writes;
        let contents = self.contents(file)?;
        let position = position as usize;
        if contents.len() < position {
            contents.resize(position, 0);
        }
        let end = position + bytes.len();
        let written = if failure.is_some() {
            bytes.len() / 2
        } else {
            bytes.len()
        };
        if contents.len() < position + written {
            contents.resize(position + written, 0);
        }
        contents[position..position + written].copy_from_slice(&bytes[..written]);
        match failure {
            Some(kind) => Err(kind.into()),
            None => {
                debug_assert!(contents.len() >= end);
                Ok(())
            }
        }
    }

    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.contents(file)?.resize(len as usize, 0);
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.volatile
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn remove_dir(&mut self, path: &str) -> io::Result<()> {
        let has_children = self.volatile.keys().any(|p| parent_of(p) == path)
            || self
                .dirs_volatile
                .iter()
                .any(|d| !d.is_empty() && parent_of(d) == path);
        if has_children {
            return Err(io::Error::other("directory not empty"));
        }
        if self.dirs_volatile.remove(path) {
            Ok(())
        } else {
            Err(io::ErrorKind::NotFound.into())
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let contents = self.volatile.remove(from).ok_or(io::ErrorKind::NotFound)?;
        self.volatile.insert(to.to_string(), contents);
        let synced = self
            .pending_data
            .remove(from)
            .or_else(|| self.durable.get(from).cloned());
        if let Some(data) = synced {
            self.pending_data.insert(to.to_string(), data);
        }
        for path in self.open.values_mut() {
            if path == from {
                *path = to.to_string();
            }
        }
        Ok(())
    }
}
