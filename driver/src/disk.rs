//! The real disk: `Storage` over files under one log directory, and the
//! syncer that makes them durable off the node's thread.
//!
//! Writes go to the page cache with `pwrite`; the node asks for syncs as
//! outputs, and `FileDisk::sync_job` turns one into a job holding the open
//! file handles, so the syncer thread calls `fdatasync` on the very
//! descriptors that were written (a later error on them is reported there).
//! One syncer thread per disk runs the jobs in order.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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

/// `Storage` over the files under one directory, with its syncer thread.
pub struct FileDisk {
    root: PathBuf,
    files: BTreeMap<FileId, (String, Arc<File>)>,
    /// The most recently opened handle of each open path.
    by_path: BTreeMap<String, FileId>,
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
    /// `.lock` it cannot take.
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
        Ok(FileDisk {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            by_path: BTreeMap::new(),
            next_file: 0,
            syncer,
            _lock: lock,
        })
    }

    /// `named` for an open file.
    fn named_file(&self, error: io::Error, doing: &str, file: FileId) -> io::Error {
        match self.files.get(&file) {
            Some((path, _)) => named(error, doing, &self.path(path)),
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

    fn file(&self, file: FileId) -> io::Result<&Arc<File>> {
        self.files
            .get(&file)
            .map(|(_, f)| f)
            .ok_or_else(|| io::Error::other("file not open"))
    }

    /// Resolves sync targets into what the syncer needs: open handles for
    /// files (opened now if the node has none), paths for directories.
    pub fn sync_job(&self, targets: &[SyncTarget]) -> SyncJob {
        let items = targets
            .iter()
            .map(|target| match target {
                SyncTarget::File(path) => {
                    match self.by_path.get(path).and_then(|id| self.files.get(id)) {
                        Some((_, file)) => SyncItem::Handle(self.path(path), file.clone()),
                        None => SyncItem::File(self.path(path)),
                    }
                }
                SyncTarget::Dir(path) => SyncItem::Dir(self.path(path)),
            })
            .collect();
        SyncJob { items }
    }
}

impl Disk for FileDisk {
    fn sync(&mut self, targets: &[SyncTarget]) -> SyncFuture {
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
    Handle(PathBuf, Arc<File>),
    File(PathBuf),
    Dir(PathBuf),
}

/// One sync request, ready to run on any thread.
pub struct SyncJob {
    items: Vec<SyncItem>,
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
                SyncItem::Handle(path, file) => file
                    .sync_data()
                    .map_err(|e| named(e, "cannot sync", path))?,
                SyncItem::File(path) => {
                    ignore_missing(File::open(path).and_then(|f| f.sync_data()))
                        .map_err(|e| named(e, "cannot sync", path))?
                }
                SyncItem::Dir(_) => {}
            }
        }
        for item in &self.items {
            if let SyncItem::Dir(path) = item {
                ignore_missing(File::open(path).and_then(|f| f.sync_all()))
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
        for entry in fs::read_dir(&path).map_err(listing)? {
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(self.path(path))
            .map_err(|e| named(e, "cannot open", &self.path(path)))?;
        self.next_file += 1;
        let id = FileId(self.next_file);
        self.files.insert(id, (path.to_string(), Arc::new(file)));
        self.by_path.insert(path.to_string(), id);
        Ok(id)
    }

    fn close(&mut self, file: FileId) {
        if let Some((path, _)) = self.files.remove(&file) {
            if self.by_path.get(&path) == Some(&file) {
                self.by_path.remove(&path);
            }
        }
    }

    fn len(&mut self, file: FileId) -> io::Result<u64> {
        let metadata = self.file(file)?.metadata();
        Ok(metadata
            .map_err(|e| self.named_file(e, "cannot read the length of", file))?
            .len())
    }

    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file_id = file;
        let file = self.file(file)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], position + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.named_file(e, "cannot read", file_id)),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        let written = self.file(file)?.write_all_at(bytes, position);
        written.map_err(|e| self.named_file(e, "cannot write", file))
    }

    fn write_vectored_at(
        &mut self,
        file: FileId,
        position: u64,
        parts: &[&[u8]],
    ) -> io::Result<()> {
        let written = write_all_vectored_at(self.file(file)?, position, parts);
        written.map_err(|e| self.named_file(e, "cannot write", file))
    }

    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let truncated = self.file(file)?.set_len(len);
        truncated.map_err(|e| self.named_file(e, "cannot truncate", file))
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        let path = self.path(path);
        fs::remove_file(&path).map_err(|e| named(e, "cannot remove", &path))
    }

    fn remove_dir(&mut self, path: &str) -> io::Result<()> {
        let path = self.path(path);
        fs::remove_dir(&path).map_err(|e| named(e, "cannot remove the directory", &path))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let source = self.path(from);
        fs::rename(&source, self.path(to)).map_err(|e| named(e, "cannot rename", &source))?;
        for (path, _) in self.files.values_mut() {
            if path == from {
                *path = to.to_string();
            }
        }
        if let Some(id) = self.by_path.remove(from) {
            self.by_path.insert(to.to_string(), id);
        }
        Ok(())
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
}
