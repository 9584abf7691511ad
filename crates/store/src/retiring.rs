//! Deleted store files give their disk blocks back on our reclaim thread.
//!
//! fjall deletes files while holding locks that writes wait for: a
//! compaction's replaced tables in lsm-tree's version clean-up (under the
//! tree's version lock, which every insert takes), and flushed journal
//! files in the journal manager's clean-up (under its lock, which a flush
//! holding the journal's writer lock waits for, and every write waits for
//! that). On a file system mounted with `discard`, freeing a file's blocks
//! sends the device a discard of all of them and waits for it: deleting
//! the 100–260 MB of tables one large compaction replaced held the lock
//! for 100–150 ms, and the committer stalled as long (BENCHMARKS.md,
//! seventh session of 2026-11-24).
//!
//! Blocks are freed when the last reference to the file goes, not at the
//! unlink. So [`Retiring`] keeps a read-only descriptor on every file of
//! the database, looked for every [`crate::embedded::RECLAIM_POLL`]: when
//! fjall deletes one, its unlink only removes the name, and the reclaim
//! thread, finding the file gone, closes our descriptor, one per pause;
//! the blocks are freed (and discarded) there, outside every lock. This
//! changes where deleted files are freed, never what is stored: we only
//! read-open files and close them. A file made and deleted between two
//! looks is freed by fjall's unlink, as before; at most
//! [`RETIRING_FILES_MAX`] descriptors are held.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files held open at once, at most (a database has a few hundred: about
/// ten tables per tree, and the journal's files); beyond it new files are
/// not held, and are freed where fjall deletes them.
pub const RETIRING_FILES_MAX: usize = 1024;

/// Descriptors on the files below a directory, and those whose files were
/// deleted, waiting to be closed.
pub(crate) struct Retiring {
    root: PathBuf,
    held: HashMap<PathBuf, File>,
    /// Descriptors of deleted files, oldest first, closed one at a time.
    doomed: VecDeque<File>,
}

impl Retiring {
    /// Holds nothing yet; [`Retiring::look`] follows the files below
    /// `root`.
    pub(crate) fn new(root: &Path) -> Retiring {
        Retiring {
            root: root.to_path_buf(),
            held: HashMap::new(),
            doomed: VecDeque::new(),
        }
    }

    /// Opens each file below the root not yet held, and queues the
    /// descriptors of held files that were deleted.
    pub(crate) fn look(&mut self) {
        let mut deleted = Vec::new();
        for (path, file) in &self.held {
            // A file with no name left (or that cannot be looked at) is
            // kept only by descriptors: ours is the last, or close to it.
            if file.metadata().map_or(true, |m| m.nlink() == 0) {
                deleted.push(path.clone());
            }
        }
        for path in deleted {
            if let Some(file) = self.held.remove(&path) {
                self.doomed.push_back(file);
            }
        }
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    dirs.push(path);
                } else if kind.is_file()
                    && self.held.len() < RETIRING_FILES_MAX
                    && !self.held.contains_key(&path)
                    && let Ok(file) = File::open(&path)
                {
                    self.held.insert(path, file);
                }
            }
        }
    }

    /// Closes the oldest queued descriptor (freeing its file's blocks if
    /// it was the last); false when none was queued.
    pub(crate) fn step(&mut self) -> bool {
        self.doomed.pop_front().map(drop).is_some()
    }

    /// Whether no descriptor waits to be closed.
    pub(crate) fn is_empty(&self) -> bool {
        self.doomed.is_empty()
    }

    /// Files held open.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's descriptors on files that were deleted.
    fn deleted_files_open() -> Vec<String> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .filter(|p| p.ends_with(" (deleted)") && p.contains("retiring-test"))
            .collect()
    }

    /// Checks a deleted file keeps its blocks while we hold it, and that
    /// the reclaim step closes the last descriptor on it; files made since
    /// are picked up, and nothing is written.
    #[test]
    fn deleted_files_are_freed_when_we_close_them() {
        let dir = tempfile::Builder::new()
            .prefix("retiring-test")
            .tempdir()
            .unwrap();
        let sub = dir.path().join("keyspaces/0/tables");
        std::fs::create_dir_all(&sub).unwrap();
        let big = sub.join("7");
        std::fs::write(&big, vec![1u8; 4 << 20]).unwrap();
        std::fs::write(dir.path().join("0.jnl"), b"journal").unwrap();
        let mut retiring = Retiring::new(dir.path());
        retiring.look();
        assert_eq!(retiring.held(), 2);

        std::fs::remove_file(&big).unwrap();
        assert!(!big.exists(), "the name is gone");
        let blocks = retiring.held[&big].metadata().unwrap().blocks();
        assert!(blocks * 512 >= 4 << 20, "{blocks} blocks: the data is not");
        assert_eq!(deleted_files_open().len(), 1);
        std::fs::write(sub.join("8"), b"new table").unwrap();
        assert!(!retiring.step(), "nothing queued before a look");

        retiring.look();
        assert!(!retiring.is_empty());
        assert_eq!(retiring.held(), 2, "the journal and the new table");
        let mut closed = 0;
        while retiring.step() {
            closed += 1;
        }
        assert_eq!(closed, 1);
        assert_eq!(
            deleted_files_open(),
            Vec::<String>::new(),
            "ours was the last descriptor"
        );
        assert_eq!(std::fs::read(sub.join("8")).unwrap(), b"new table");
    }
}
