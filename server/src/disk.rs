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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_core::storage::{FileId, Storage, SyncTarget};

use crate::driver::{Disk, SyncFuture};

pub struct FileDisk {
    root: PathBuf,
    files: BTreeMap<FileId, (String, Arc<File>)>,
    /// The most recently opened handle of each open path.
    by_path: BTreeMap<String, FileId>,
    next_file: u64,
    syncer: std::sync::mpsc::Sender<(SyncJob, tokio::sync::oneshot::Sender<io::Result<()>>)>,
}

impl FileDisk {
    /// Opens the data directory (creating it) and starts its syncer thread.
    pub fn open(root: &Path) -> io::Result<FileDisk> {
        fs::create_dir_all(root)?;
        let (syncer, jobs) =
            std::sync::mpsc::channel::<(SyncJob, tokio::sync::oneshot::Sender<io::Result<()>>)>();
        std::thread::Builder::new()
            .name("sluice-syncer".into())
            .spawn(move || {
                for (job, done) in jobs {
                    let _ = done.send(job.run());
                }
            })?;
        Ok(FileDisk {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            by_path: BTreeMap::new(),
            next_file: 0,
            syncer,
        })
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
                        Some((_, file)) => SyncItem::Handle(file.clone()),
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

pub enum SyncItem {
    Handle(Arc<File>),
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
                SyncItem::Handle(file) => file.sync_data()?,
                SyncItem::File(path) => {
                    ignore_missing(File::open(path).and_then(|f| f.sync_data()))?
                }
                SyncItem::Dir(_) => {}
            }
        }
        for item in &self.items {
            if let SyncItem::Dir(path) = item {
                ignore_missing(File::open(path).and_then(|f| f.sync_all()))?;
            }
        }
        Ok(())
    }
}

impl Storage for FileDisk {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        fs::create_dir_all(self.path(path))
    }

    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.path(path))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
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
            .open(self.path(path))?;
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
        Ok(self.file(file)?.metadata()?.len())
    }

    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.file(file)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], position + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        self.file(file)?.write_all_at(bytes, position)
    }

    fn truncate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.file(file)?.set_len(len)
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        fs::remove_file(self.path(path))
    }

    fn remove_dir(&mut self, path: &str) -> io::Result<()> {
        fs::remove_dir(self.path(path))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))?;
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
