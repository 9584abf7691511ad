//! Table files reach the disk a piece at a time while fjall writes them.
//!
//! fjall writes a table file (a memtable's flush, a compaction's output)
//! through the page cache and fsyncs it once, at the end: the whole file
//! then goes to the disk at once (12 MB for the timeline's memtable at
//! 25,000 msg/s, and at a journal rotation every table's in a row), and the
//! committer's next journal write and cache flush queue behind it. In a
//! recording of such a stretch the committer's I/O waits took 3–9 ms each
//! instead of 0.1–0.4 (BENCHMARKS.md, "Table files written back in
//! pieces").
//!
//! The `pigeon-writeback` thread follows the tables directories with
//! inotify and, whenever a table file has grown by [`WRITEBACK_CHUNK`]
//! since it last looked, writes that piece back and waits for it
//! (`sync_file_range`: no cache flush, no metadata) before the next one.
//! So at most one piece of table data is on its way to the disk ahead of a
//! journal write, and fjall's fsync at the end finds little left to write.
//! That fsync is still what makes the file durable: this changes when
//! table pages are written, never what is durable when.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::inotify;
use rustix::io::Errno;

/// How much of a growing table file is written back at a time. Smaller
/// pieces let a journal write in sooner; each costs a system call and a
/// wait. Measured at 256 KiB, 512 KiB and 1 MiB (BENCHMARKS.md): about
/// equal, all better than none.
pub const WRITEBACK_CHUNK: u64 = 512 * 1024;

/// Table files followed at once, at most. Usually one or two are being
/// written (a flush, a compaction); should more be open (closes missed),
/// the oldest is let go and its fsync writes the rest, as without this.
pub const WRITEBACK_FILES_MAX: usize = 16;

/// Bytes of inotify events read at a time.
const EVENT_BUFFER_BYTES: usize = 16 * 1024;

/// The running thread; dropping it ends the thread and waits for it.
pub(crate) struct Writeback {
    /// Dropped to wake the thread and end it.
    stop: Option<io::PipeWriter>,
    thread: Option<JoinHandle<()>>,
    written: Arc<AtomicU64>,
}

impl Writeback {
    /// Starts following every `keyspaces/*/tables` directory below `db`
    /// (fjall's layout) on a thread at niceness `nice`. An error when
    /// there is none (a fjall upgrade that moved them) or inotify is not
    /// available; the engine then runs without, as fjall alone would.
    pub(crate) fn start(db: &Path, nice: i32) -> io::Result<Writeback> {
        let dirs = tables_dirs(db)?;
        if dirs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no keyspaces/*/tables directories in {}", db.display()),
            ));
        }
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let mut watched = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let wd = inotify::add_watch(
                &ino,
                &dir,
                inotify::WatchFlags::MODIFY | inotify::WatchFlags::CLOSE_WRITE,
            )?;
            watched.push((wd, dir));
        }
        let (stop_rx, stop) = io::pipe()?;
        let written = Arc::new(AtomicU64::new(0));
        let follower = Follower {
            ino,
            stop: stop_rx,
            files: Files {
                watched,
                open: Vec::new(),
                written: written.clone(),
            },
        };
        let thread = std::thread::Builder::new()
            .name("pigeon-writeback".into())
            .spawn(move || {
                crate::background::lower_priority(rustix::thread::gettid(), nice);
                follower.run();
            })?;
        Ok(Writeback {
            stop: Some(stop),
            thread: Some(thread),
            written,
        })
    }

    /// Bytes written back so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the writeback thread panicked");
        }
    }
}

/// The directories fjall writes table files to.
fn tables_dirs(db: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(db.join("keyspaces"))? {
        let tables = entry?.path().join("tables");
        if tables.is_dir() {
            dirs.push(tables);
        }
    }
    Ok(dirs)
}

/// A table file being followed: how far it has been written back.
struct Followed {
    path: PathBuf,
    file: std::fs::File,
    done: u64,
}

/// The thread: its descriptors and what it follows.
struct Follower {
    ino: OwnedFd,
    stop: io::PipeReader,
    files: Files,
}

/// The watched directories and the files being written in them.
struct Files {
    watched: Vec<(i32, PathBuf)>,
    /// Oldest first.
    open: Vec<Followed>,
    written: Arc<AtomicU64>,
}

impl Follower {
    /// Follows the directories until the engine is dropped, or until
    /// something fails (logged once; fjall's fsyncs then write the tables
    /// as they would without this thread).
    fn run(mut self) {
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); EVENT_BUFFER_BYTES];
        loop {
            let mut fds = [
                PollFd::new(&self.ino, PollFlags::IN),
                PollFd::new(&self.stop, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return stopped(&e.into()),
            }
            if !fds[1].revents().is_empty() {
                return;
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            let mut reader = inotify::Reader::new(&self.ino, &mut buf);
            if let Err(e) = self.files.drain(&mut reader) {
                return stopped(&e);
            }
        }
    }
}

fn stopped(e: &io::Error) {
    tracing::warn!(
        error = %e,
        "table writeback stopped: table files go to the disk at their fsync from now on"
    );
}

impl Files {
    /// Handles every event queued.
    fn drain(&mut self, reader: &mut inotify::Reader<'_, &OwnedFd>) -> io::Result<()> {
        loop {
            let (wd, flags, name) = match reader.next() {
                Ok(ev) => (
                    ev.wd(),
                    ev.events(),
                    ev.file_name().map(|n| n.to_string_lossy().into_owned()),
                ),
                Err(Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if flags.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                // Events were lost: start over with what is open now; the
                // next growth of each file is followed from its start
                // (pages already written cost nothing to write back).
                self.open.clear();
                continue;
            }
            if flags.contains(inotify::ReadFlags::IGNORED) {
                self.watched.retain(|(w, _)| *w != wd);
                continue;
            }
            let Some(path) = self.path(wd, name) else {
                continue;
            };
            if flags.contains(inotify::ReadFlags::CLOSE_WRITE) {
                self.open.retain(|f| f.path != path);
            } else if flags.contains(inotify::ReadFlags::MODIFY) {
                self.grown(path)?;
            }
        }
    }

    fn path(&self, wd: i32, name: Option<String>) -> Option<PathBuf> {
        let (_, dir) = self.watched.iter().find(|(w, _)| *w == wd)?;
        Some(dir.join(name?))
    }

    /// Writes back, a piece at a time, what `path` gained since last time.
    /// An error from the write-back itself (a file system that does not
    /// support it, a failing disk) ends the thread: fjall's fsync reports
    /// a failing disk where it matters.
    fn grown(&mut self, path: PathBuf) -> io::Result<()> {
        let i = match self.open.iter().position(|f| f.path == path) {
            Some(i) => i,
            None => {
                // Gone already (a compaction's input removed): nothing to do.
                let Ok(file) = std::fs::File::open(&path) else {
                    return Ok(());
                };
                if self.open.len() >= WRITEBACK_FILES_MAX {
                    self.open.remove(0);
                }
                self.open.push(Followed {
                    path,
                    file,
                    done: 0,
                });
                self.open.len() - 1
            }
        };
        let f = &mut self.open[i];
        let len = f.file.metadata()?.len();
        let end = len - len % WRITEBACK_CHUNK;
        while f.done < end {
            pigeon_sys::write_back_range(&f.file, f.done, WRITEBACK_CHUNK).map_err(|e| {
                io::Error::new(e.kind(), format!("writing back {}: {e}", f.path.display()))
            })?;
            f.done += WRITEBACK_CHUNK;
            self.written.fetch_add(WRITEBACK_CHUNK, Ordering::Relaxed);
            metrics::counter!(WRITTEN_BACK_BYTES).increment(WRITEBACK_CHUNK);
        }
        Ok(())
    }
}

/// Counter of table-file bytes written back ahead of their fsync.
pub const WRITTEN_BACK_BYTES: &str = "pigeon_store_writeback_bytes_total";

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// A table file that grows is written back piece by piece as it
    /// grows, before it is closed; one in another directory is not.
    #[test]
    fn growing_table_files_are_written_back_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("keyspaces/1/tables");
        std::fs::create_dir_all(&tables).unwrap();
        std::fs::create_dir_all(dir.path().join("keyspaces/2")).unwrap();
        let wb = Writeback::start(dir.path(), 0).unwrap();

        // Elsewhere: not followed.
        let mut other = std::fs::File::create(dir.path().join("keyspaces/2/journal")).unwrap();
        other.write_all(&vec![1u8; 2 << 20]).unwrap();

        let mut t = std::fs::File::create(tables.join("7")).unwrap();
        let piece = vec![2u8; WRITEBACK_CHUNK as usize];
        for n in 1..=3u64 {
            t.write_all(&piece).unwrap();
            wait_for(|| wb.written() == n * WRITEBACK_CHUNK);
        }
        // Less than a piece more: left for the fsync.
        t.write_all(&piece[..1000]).unwrap();
        t.sync_all().unwrap();
        drop(t);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wb.written(), 3 * WRITEBACK_CHUNK);
    }

    #[test]
    fn without_tables_directories_it_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Writeback::start(dir.path(), 0).is_err());
        std::fs::create_dir_all(dir.path().join("keyspaces/1")).unwrap();
        let e = Writeback::start(dir.path(), 0).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    /// Dropping it ends the thread at once (no polling interval to wait
    /// out).
    #[test]
    fn dropping_it_ends_the_thread_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keyspaces/1/tables")).unwrap();
        let wb = Writeback::start(dir.path(), 0).unwrap();
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(wb);
            done.send(()).unwrap();
        });
        ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the writeback thread did not end");
    }

    fn wait_for(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
