//! The default, embedded engine: fjall (a log-structured merge tree, pure
//! Rust) in one data directory, one fjall keyspace per [`Table`]. Batches
//! are atomic across keyspaces; `sync` fsyncs the journal, after which a
//! crash (even `kill -9` or power loss) loses nothing applied before it.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use fjall::compaction::filter::Factory;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use lsm_tree::{AbstractTree, Memtable, MemtableId};
use pigeon_core::{StoreError, UserId};

use crate::background::{self, Backlog, Mode, Workers};
use crate::engine::{Engine, Entries, Op, Table};
use crate::freeing::{FREE_PAUSE, Freeing};
use crate::retiring::Retiring;
use crate::trims::{LogFilterFactory, Trims};
use crate::writeback::Writeback;

/// The default journal size past which fjall flushes the tables that
/// still have data in the oldest journal file, so that it can be deleted
/// (`store_journal_mib`). fjall starts a new journal file about every
/// 64 MB, and the tables written most flush on their own every
/// [`MEMTABLE_BYTES_MAX`]. At 64 MiB, fjall's floor, sends at 25,000 msg/s
/// stalled for 100-200 ms around those flushes (fjall's workers took 375 ms
/// of CPU in 600 ms on 2 cores); at 256 MiB the p99 was lower in 9
/// alternating runs of 9, and full rate higher in 3 of 3 (BENCHMARKS.md,
/// fifth session of 2026-11-24). The price is recovery: a start after a
/// crash replays the journal left, measured after `kill -9` under full
/// load: 1.5 s with two journal files (the 64 MiB limit), 2.4 s with three
/// and 4.5 s with five (this limit).
pub const JOURNAL_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// The smallest journal size fjall accepts (a smaller one fails an
/// assertion at start).
pub const JOURNAL_BYTES_MIN: u64 = 64 * 1024 * 1024;

/// The memtable size at which a table's memtable is flushed to a table
/// file. fjall starts a new journal only when a memtable is flushed, so
/// with its default (64 MiB for each of our tables) the journal, which a
/// start after a crash replays, could grow far past [`JOURNAL_BYTES_MAX`]
/// before any one table's memtable filled. Fixed when a database is
/// created: one made with another size keeps it.
pub const MEMTABLE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Level-0 runs (flushed memtables) a table gathers before fjall compacts
/// them into level 1 (fjall's default is 4). Our keys interleave (every
/// user's log, every conversation's timeline), so each level-0 table
/// overlaps all of level 1 and each of those compactions rewrites it:
/// three times fewer of them wrote 15 % fewer bytes per message and took
/// less CPU. Over 40 s at 25,000 msg/s the p99 was 10.5 / 11.1 ms against
/// 29.1 / 23.7 (8 gave 11.2 / 17.9), and full rate was higher in 3 pairs
/// of 3 (BENCHMARKS.md, sixth session of 2026-11-24). Reads look in more
/// tables, but a point read's miss is a bloom filter's. Like the memtable
/// size, fixed when a database is created: fjall keeps a table's
/// compaction settings, so a database made before keeps 4.
pub const L0_COMPACTION_RUNS: u8 = 12;

pub use crate::background::BACKGROUND_NICE;

/// How often the reclaim thread looks for memtables only it still holds
/// when no write hands it one (after a burst, the last flushes finish
/// while nothing is written), at the files of the database
/// ([`crate::retiring`]), and at the flush and compaction backlog
/// ([`crate::background`]).
pub(crate) const RECLAIM_POLL: Duration = Duration::from_secs(1);

// `FjallEngine::apply` notes the tables a batch wrote in a u64, a bit each.
const _: () = assert!(Table::ALL.len() <= 64);

/// fjall behind the [`Engine`] interface.
pub struct FjallEngine {
    db: Database,
    keyspaces: Vec<Keyspace>,
    /// Durable trim points, for the log table's compaction filter.
    trims: Arc<Trims>,
    keeper: Arc<Mutex<Keeper>>,
    /// To the reclaim thread; `None` once the engine is being dropped.
    reclaim: Option<mpsc::Sender<Vec<Arc<Memtable>>>>,
    reclaim_thread: Option<std::thread::JoinHandle<()>>,
    /// Deleted files the reclaim thread freed ([`crate::retiring`]).
    files_freed: Arc<std::sync::atomic::AtomicU64>,
    /// How fjall's workers were scheduled at open (`None`: by niceness
    /// only).
    workers_mode: Option<Mode>,
    /// Writes table files back while fjall writes them (`None` where it
    /// could not start; [`crate::writeback`]).
    writeback: Option<Writeback>,
}

/// A reference to every memtable written to, so that the last reference
/// to a flushed memtable is ours and it is freed on our reclaim thread.
///
/// Without it the last reference is dropped inside fjall, in the version
/// garbage collection that runs after each memtable rotation, while that
/// table's version lock is held: freeing a 16 MiB skip list (about 100,000
/// nodes) takes 30–50 ms, and every insert into the table waits for the
/// lock, so the commit in progress stalled for as long (seen as the
/// committer blocked in `Tree::append_entry` while a fjall worker ran
/// `SuperVersions::maintenance`; BENCHMARKS.md, sixth session).
#[derive(Default)]
struct Keeper {
    /// Per table, the active memtable last seen after a write.
    seen: Vec<Option<MemtableId>>,
    held: Vec<Arc<Memtable>>,
    /// Memtables handed to the reclaim thread (read by the tests).
    reclaimed: u64,
}

impl Keeper {
    /// Takes out the memtables nobody but us refers to any more.
    fn released(&mut self) -> Vec<Arc<Memtable>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            if Arc::strong_count(&self.held[i]) == 1 {
                out.push(self.held.swap_remove(i));
            } else {
                i += 1;
            }
        }
        self.reclaimed += out.len() as u64;
        out
    }
}

/// The reclaim thread's part of the engine.
struct Reclaim {
    keeper: Arc<Mutex<Keeper>>,
    /// Deleted files, freed here.
    retiring: Retiring,
    /// Files freed by `retiring` so far.
    files_freed: Arc<std::sync::atomic::AtomicU64>,
    rx: mpsc::Receiver<Vec<Arc<Memtable>>>,
    nice: i32,
    workers: Workers,
    keyspaces: Vec<Keyspace>,
}

/// Frees what it is handed, and every [`RECLAIM_POLL`] what the keeper
/// alone still holds, a piece at a time with a pause between pieces
/// ([`crate::freeing`]); frees the blocks of files fjall deleted, one
/// file per pause ([`crate::retiring`]); every [`RECLAIM_POLL`] too, keeps
/// fjall's workers in the scheduling mode their backlog calls for. Ends
/// when the engine is dropped (freeing what is left at once).
fn reclaim_loop(mut r: Reclaim) {
    background::lower_priority(rustix::thread::gettid(), r.nice);
    let mut watched = Instant::now();
    let mut freeing = Freeing::default();
    loop {
        let wait = if freeing.is_empty() && r.retiring.is_empty() {
            RECLAIM_POLL
        } else {
            FREE_PAUSE
        };
        match r.rx.recv_timeout(wait) {
            Ok(memtables) => memtables.into_iter().for_each(|m| freeing.push(m)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        freeing.step();
        if r.retiring.step() {
            r.files_freed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if watched.elapsed() >= RECLAIM_POLL {
            watched = Instant::now();
            let released = r.keeper.lock().expect("keeper lock poisoned").released();
            released.into_iter().for_each(|m| freeing.push(m));
            r.retiring.look();
            r.workers.watch(backlog(&r.keyspaces));
        }
    }
}

/// The worst flush and compaction backlog over the tables.
fn backlog(keyspaces: &[Keyspace]) -> Backlog {
    keyspaces.iter().fold(Backlog::default(), |b, ks| Backlog {
        sealed: b.sealed.max(ks.tree.sealed_memtable_count()),
        l0_runs: b.l0_runs.max(ks.tree.l0_run_count()),
    })
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FjallEngine")
    }
}

fn io(e: fjall::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl FjallEngine {
    /// Opens (creating if needed) the database in `dir` and recovers it,
    /// with the default journal size.
    pub fn open(dir: &Path) -> Result<FjallEngine, StoreError> {
        FjallEngine::open_with(dir, JOURNAL_BYTES_MAX)
    }

    /// Opens (creating if needed) the database in `dir` and recovers it;
    /// the journal may hold `journal_bytes_max` (at least
    /// [`JOURNAL_BYTES_MIN`]) before the tables with data in its oldest
    /// file are flushed.
    pub fn open_with(dir: &Path, journal_bytes_max: u64) -> Result<FjallEngine, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
        // Trimmed log entries are dropped by the log table's compactions
        // (`crate::trims`); installed on every open, since fjall keeps
        // no filter with a table.
        let trims = Arc::new(Trims::default());
        let filters = trims.clone();
        // We persist explicitly after every group commit, so fjall must not
        // decide on its own when the journal reaches the OS.
        // A smaller journal than fjall's default (512 MiB) makes it flush
        // memtables to tables sooner, so recovery after a crash replays at
        // most this much.
        let db = Database::builder(dir.join("db"))
            .manual_journal_persist(true)
            .max_journaling_size(journal_bytes_max.max(JOURNAL_BYTES_MIN))
            .with_compaction_filter_factories(Arc::new(move |name: &str| {
                (name == Table::Log.name())
                    .then(|| Arc::new(LogFilterFactory(filters.clone())) as Arc<dyn Factory>)
            }))
            .open()
            .map_err(io)?;
        let keyspaces = Table::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(MEMTABLE_BYTES_MAX)
                        .compaction_strategy(Arc::new(
                            fjall::compaction::Leveled::default()
                                .with_l0_threshold(L0_COMPACTION_RUNS),
                        ))
                })
                .map_err(io)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let nice = background::background_nice();
        let workers = Workers::start(nice);
        let workers_mode = workers.mode();
        let keeper = Arc::new(Mutex::new(Keeper {
            seen: vec![None; keyspaces.len()],
            ..Keeper::default()
        }));
        let (reclaim, rx) = mpsc::channel();
        let files_freed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = Reclaim {
            keeper: keeper.clone(),
            retiring: Retiring::new(&dir.join("db")),
            files_freed: files_freed.clone(),
            rx,
            nice,
            workers,
            keyspaces: keyspaces.clone(),
        };
        let reclaim_thread = std::thread::Builder::new()
            .name("pigeon-reclaim".into())
            .spawn(move || reclaim_loop(r))
            .map_err(|e| StoreError::Io(format!("starting the reclaim thread: {e}")))?;
        let writeback = match Writeback::start(&dir.join("db"), nice) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "table files are not written back while written (each goes to the disk at its fsync)"
                );
                None
            }
        };
        Ok(FjallEngine {
            db,
            keyspaces,
            trims,
            keeper,
            reclaim: Some(reclaim),
            reclaim_thread: Some(reclaim_thread),
            files_freed,
            workers_mode,
            writeback,
        })
    }

    /// Takes a reference to the active memtable of each table in
    /// `touched` (a bit per [`Table::index`]) that is new since the last
    /// look, and hands the reclaim thread those only we still hold.
    ///
    /// Reaches through fjall's public but undocumented `Keyspace::tree` to
    /// lsm-tree's `AbstractTree::active_memtable`; an upgrade of either
    /// that moves them fails to compile here, it cannot go wrong quietly.
    fn keep_memtables(&self, touched: u64) {
        let mut keeper = self.keeper.lock().expect("keeper lock poisoned");
        for (i, ks) in self.keyspaces.iter().enumerate() {
            if touched & (1 << i) == 0 {
                continue;
            }
            let active = ks.tree.active_memtable();
            if keeper.seen[i] != Some(active.id()) {
                keeper.seen[i] = Some(active.id());
                keeper.held.push(active);
            }
        }
        let released = keeper.released();
        drop(keeper);
        if !released.is_empty()
            && let Some(reclaim) = &self.reclaim
        {
            // The reclaim thread ends only when we are dropped.
            let _ = reclaim.send(released);
        }
    }

    /// How fjall's workers were scheduled when the engine opened:
    /// `Some(Mode::Idle)` in `SCHED_IDLE`, `None` by niceness only
    /// ([`crate::background`]).
    pub fn background_mode(&self) -> Option<Mode> {
        self.workers_mode
    }

    /// Files fjall deleted whose blocks the reclaim thread freed so far
    /// ([`crate::retiring`]).
    pub fn files_freed(&self) -> u64 {
        self.files_freed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of table files written back ahead of their fsync so far
    /// (`None` if the writeback thread did not start).
    pub fn written_back(&self) -> Option<u64> {
        self.writeback.as_ref().map(Writeback::written)
    }

    fn ks(&self, t: Table) -> &Keyspace {
        &self.keyspaces[t.index()]
    }
}

impl Drop for FjallEngine {
    /// Ends the writeback thread and the reclaim thread and waits for
    /// them: the reclaim thread holds handles on the tables (to watch the
    /// backlog), and the database must be closed, its lock released, when
    /// the engine is gone (a test or a restart in the same process opens
    /// the directory again at once).
    fn drop(&mut self) {
        drop(self.writeback.take());
        drop(self.reclaim.take());
        if let Some(thread) = self.reclaim_thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the reclaim thread panicked");
        }
    }
}

impl Engine for FjallEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.ks(table).get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let iter = self.ks(table).range(start..end);
        let mut out = Vec::new();
        let mut push = |g: fjall::Guard| -> Result<(), StoreError> {
            let (k, v) = g.into_inner().map_err(io)?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        };
        if reverse {
            for g in iter.rev().take(limit) {
                push(g)?;
            }
        } else {
            for g in iter.take(limit) {
                push(g)?;
            }
        }
        Ok(out)
    }

    fn apply(&self, ops: &mut Vec<Op>) -> Result<(), StoreError> {
        // Sized up front: growing it op by op moved the whole batch several
        // times per commit (thousands of items at full load).
        let mut batch = OwnedWriteBatch::with_capacity(self.db.clone(), ops.len());
        let mut touched = 0u64;
        for op in ops.drain(..) {
            match op {
                Op::Put(t, k, v) => {
                    touched |= 1 << t.index();
                    batch.insert(self.ks(t), k, v);
                }
                Op::Delete(t, k) => {
                    touched |= 1 << t.index();
                    batch.remove(self.ks(t), k);
                }
            }
        }
        batch.commit().map_err(io)?;
        self.keep_memtables(touched);
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }

    fn log_trimmed(&self, user: UserId, through: u64) {
        self.trims.set(user, through);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    /// Checks a table's memtable is flushed to a table file once it holds
    /// [`MEMTABLE_BYTES_MAX`], well before fjall's default of 64 MiB: that
    /// is what lets the journal a crashed start replays be released.
    #[test]
    fn a_full_memtable_is_flushed_at_our_bound() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let written = fill_timeline(&engine, || vec![7u8; VALUE_BYTES]);
        let timeline = engine.ks(Table::Timeline);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while timeline.table_count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no table file after {} MiB written",
                written >> 20
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(written < 64 * 1024 * 1024);
    }

    /// Checks a journal limit below fjall's floor is raised to it rather
    /// than failing fjall's assertion at start, and that the engine opened
    /// so works.
    #[test]
    fn a_journal_limit_below_the_floor_is_raised_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open_with(dir.path(), 1 << 20).unwrap();
        let mut one = vec![Op::Put(Table::Users, b"k".to_vec(), b"v".to_vec())];
        engine.apply(&mut one).unwrap();
        engine.sync().unwrap();
        assert_eq!(
            engine.get(Table::Users, b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }

    /// Checks a new database's tables gather more level-0 runs than
    /// fjall's default (4) before they are compacted (with 4, one run is
    /// left of six such flushes), and that a reopened database keeps
    /// the setting.
    #[test]
    fn level_0_gathers_our_run_count_before_compaction() {
        // Two sets of five flushes stay under the threshold.
        const { assert!(L0_COMPACTION_RUNS > 10) };
        let dir = tempfile::tempdir().unwrap();
        let flush_five = |engine: &FjallEngine, from: u64| {
            let timeline = engine.ks(Table::Timeline);
            for n in from..from + 5 {
                // Each flush spans the same keys, so each is a run of its own.
                let mut ops: Vec<Op> = [0u64, 3, 1000 + n]
                    .iter()
                    .map(|k| Op::Put(Table::Timeline, k.to_be_bytes().to_vec(), vec![1; 64]))
                    .collect();
                engine.apply(&mut ops).unwrap();
                timeline.rotate_memtable_and_wait().unwrap();
            }
            // Time for a compaction fjall would start.
            std::thread::sleep(std::time::Duration::from_millis(500));
            timeline.tree.l0_run_count()
        };
        // (fjall may fold a flush into the run before it.)
        let engine = FjallEngine::open(dir.path()).unwrap();
        let runs = flush_five(&engine, 0);
        assert!(runs >= 4, "{runs} runs: compacted (at 4 one is left)");
        drop(engine);
        let engine = FjallEngine::open(dir.path()).unwrap();
        let more = flush_five(&engine, 100);
        assert!(more >= runs + 4, "{more} runs after {runs}: compacted");
        assert_eq!(
            engine.get(Table::Timeline, &3u64.to_be_bytes()).unwrap(),
            Some(vec![1; 64])
        );
    }

    /// Size of each value [`fill_timeline`] writes.
    const VALUE_BYTES: usize = 4096;

    /// Writes one and a half memtables' worth of `value()`s to the
    /// timeline, 256 to a synced batch; returns the bytes written.
    fn fill_timeline(engine: &FjallEngine, mut value: impl FnMut() -> Vec<u8>) -> usize {
        let writes = (MEMTABLE_BYTES_MAX as usize * 3 / 2) / VALUE_BYTES;
        for chunk in 0..writes / 256 {
            let mut ops: Vec<Op> = (0..256)
                .map(|i| {
                    let key = ((chunk * 256 + i) as u64).to_be_bytes().to_vec();
                    Op::Put(Table::Timeline, key, value())
                })
                .collect();
            engine.apply(&mut ops).unwrap();
            engine.sync().unwrap();
        }
        writes / 256 * 256 * VALUE_BYTES
    }

    /// Table files are written back while fjall writes them: a flushed
    /// memtable of values that do not compress leaves a table file of
    /// several MiB, nearly all of it written back by our thread.
    #[test]
    fn table_files_are_written_back_while_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        assert_eq!(engine.written_back(), Some(0));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        fill_timeline(&engine, || {
            (0..VALUE_BYTES)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        });
        let timeline = engine.ks(Table::Timeline);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while timeline.table_count() == 0 || engine.written_back() < Some(8 << 20) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} table files, {:?} bytes written back",
                timeline.table_count(),
                engine.written_back()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Checks fjall's workers and the reclaim thread run
    /// [`BACKGROUND_NICE`] above the thread that opened the engine, and
    /// that thread at its own; and that the workers are in `SCHED_IDLE`
    /// exactly when this process could take them out of it again.
    #[test]
    fn background_threads_run_at_lower_priority() {
        let dir = tempfile::tempdir().unwrap();
        let own = rustix::process::getpriority_process(None).unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let expected = (own + BACKGROUND_NICE).min(19);
        // Fields of /proc/.../stat after the parenthesised name.
        let stat_field = |task: &std::path::Path, field: usize| -> i32 {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(field - 3).unwrap().parse().unwrap()
        };
        let nice_of = |task: &std::path::Path| stat_field(task, 19);
        // SCHED_OTHER 0, SCHED_IDLE 5.
        let policy_of = |task: &std::path::Path| stat_field(task, 41);
        let idle = background::may_use_idle(expected);
        assert_eq!(engine.background_mode(), idle.then_some(Mode::Idle));
        let workers = background::threads_named(background::WORKER_THREAD);
        assert!(!workers.is_empty(), "no fjall worker threads");
        let task = |tid: rustix::process::Pid| {
            std::path::PathBuf::from(format!("/proc/self/task/{}", tid.as_raw_nonzero()))
        };
        for &tid in &workers {
            assert_eq!(
                policy_of(&task(tid)),
                if idle { 5 } else { 0 },
                "worker {tid:?}"
            );
        }
        if idle {
            // The way back when they fall behind, and in again.
            assert!(background::set_workers(Mode::Nice, expected));
            for &tid in &workers {
                assert_eq!(policy_of(&task(tid)), 0, "worker {tid:?}");
                assert_eq!(nice_of(&task(tid)), expected, "worker {tid:?}");
            }
            assert!(background::set_workers(Mode::Idle, expected));
            for &tid in &workers {
                assert_eq!(policy_of(&task(tid)), 5, "worker {tid:?}");
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut found = std::collections::BTreeMap::new();
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let nice = nice_of(&task.path());
                found
                    .entry(comm.trim_end().to_string())
                    .or_insert_with(Vec::new)
                    .push(nice);
            }
            let at = |name: &str| found.get(name).cloned().unwrap_or_default();
            let workers = at("fjall:worker");
            assert!(!workers.is_empty(), "no fjall worker threads: {found:?}");
            assert!(workers.iter().all(|&n| n == expected), "{found:?}");
            // The reclaim thread lowers its own priority once it runs.
            let reclaim = at("pigeon-reclaim");
            if !reclaim.is_empty() && reclaim.iter().all(|&n| n == expected) {
                let me = nice_of(std::path::Path::new("/proc/thread-self"));
                assert_eq!(me, own, "the opener's own priority changed");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{found:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Checks the directory can be opened again as soon as an engine is
    /// dropped, with what it wrote: the reclaim thread, which holds handles
    /// on the tables, is gone by then.
    #[test]
    fn a_dropped_engine_can_be_opened_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0u8..5 {
            let engine = FjallEngine::open(dir.path()).unwrap();
            if round > 0 {
                let previous = engine.get(Table::Meta, &[round - 1]).unwrap();
                assert_eq!(previous, Some(vec![round - 1]), "round {round}");
            }
            engine
                .apply(&mut vec![Op::Put(Table::Meta, vec![round], vec![round])])
                .unwrap();
            engine.sync().unwrap();
            // (The thread names itself once it runs.)
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while background::threads_named("pigeon-reclaim").is_empty() {
                assert!(std::time::Instant::now() < deadline, "no reclaim thread");
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(engine);
            // Its reclaim thread has ended (the drop waits for it).
            assert!(background::threads_named("pigeon-reclaim").is_empty());
        }
    }

    /// Checks a flushed memtable's last reference is the keeper's and the
    /// reclaim thread frees it: if fjall dropped it first (the keeper not
    /// holding it), nothing would be reclaimed. fjall lets go of a flushed
    /// memtable at a later rotation's version clean-up, so this writes on
    /// until one comes back, up to eight memtables' worth.
    #[test]
    fn flushed_memtables_are_freed_by_the_reclaim_thread() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let value = vec![7u8; 4096];
        let limit = MEMTABLE_BYTES_MAX as usize * 8 / value.len();
        let reclaimed = || engine.keeper.lock().unwrap().reclaimed;
        let mut written = 0;
        while reclaimed() == 0 {
            assert!(
                written < limit,
                "no flushed memtable reclaimed after {} MiB written",
                (written * value.len()) >> 20
            );
            let mut ops: Vec<Op> = (0..256)
                .map(|i| {
                    let key = ((written + i) as u64).to_be_bytes().to_vec();
                    Op::Put(Table::Log, key, value.clone())
                })
                .collect();
            engine.apply(&mut ops).unwrap();
            written += 256;
            // Give the flush a chance to finish before the next rotation.
            if written % 4096 == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Checks the log table's compactions destroy exactly the entries at
    /// or below the trim points the engine was handed ([`crate::trims`]),
    /// of each user's own log, and that the filter is there again after a
    /// reopen.
    #[test]
    fn compactions_drop_what_durable_trim_points_cover() {
        let dir = tempfile::tempdir().unwrap();
        let log_keys = |engine: &FjallEngine, user: UserId| -> Vec<u64> {
            engine
                .scan(
                    Table::Log,
                    &keys::log(user, 0),
                    &keys::log(user + 1, 0),
                    false,
                    1000,
                )
                .unwrap()
                .iter()
                .map(|(k, _)| keys::log_seq(k))
                .collect()
        };
        {
            let engine = FjallEngine::open(dir.path()).unwrap();
            let log = engine.ks(Table::Log);
            for user in [1, 2] {
                let mut ops: Vec<Op> = (1..=100u64)
                    .map(|seq| Op::Put(Table::Log, keys::log(user, seq), vec![7; 32]))
                    .collect();
                engine.apply(&mut ops).unwrap();
            }
            engine.sync().unwrap();
            log.rotate_memtable_and_wait().unwrap();
            engine.log_trimmed(1, 60);
            log.major_compact().unwrap();
            assert_eq!(log_keys(&engine, 1), (61..=100).collect::<Vec<_>>());
            assert_eq!(log_keys(&engine, 2), (1..=100).collect::<Vec<_>>());
            // No point was handed over for user 2: compacting again keeps
            // all of their log.
            let mut ops = vec![Op::Put(Table::Log, keys::log(2, 101), vec![7; 32])];
            engine.apply(&mut ops).unwrap();
            log.rotate_memtable_and_wait().unwrap();
            log.major_compact().unwrap();
            assert_eq!(log_keys(&engine, 2).len(), 101);
        }
        // Reopened, the filter is installed again (fjall keeps none).
        let engine = FjallEngine::open(dir.path()).unwrap();
        assert_eq!(log_keys(&engine, 1), (61..=100).collect::<Vec<_>>());
        engine.log_trimmed(2, 90);
        let log = engine.ks(Table::Log);
        let mut ops = vec![Op::Put(Table::Log, keys::log(2, 102), vec![7; 32])];
        engine.apply(&mut ops).unwrap();
        log.rotate_memtable_and_wait().unwrap();
        log.major_compact().unwrap();
        assert_eq!(log_keys(&engine, 2), (91..=102).collect::<Vec<_>>());
    }

    /// Checks the engine's reclaim thread frees the files of tables a
    /// compaction replaced ([`crate::retiring`]): it held them, so fjall's
    /// deletion only removed their names, and a few polls later our
    /// descriptors on them are closed.
    #[test]
    fn the_reclaim_thread_frees_compacted_tables() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let timeline = engine.ks(Table::Timeline);
        for n in 0..3u8 {
            let mut ops: Vec<Op> = (0..100u64)
                .map(|k| Op::Put(Table::Timeline, k.to_be_bytes().to_vec(), vec![n; 64]))
                .collect();
            engine.apply(&mut ops).unwrap();
            timeline.rotate_memtable_and_wait().unwrap();
        }
        let folder = timeline.path().join(lsm_tree::file::TABLES_FOLDER);
        let old: Vec<_> = timeline
            .tree
            .current_version()
            .iter_tables()
            .map(|t| folder.join(t.id().to_string()))
            .collect();
        assert_eq!(old.len(), 3);
        assert!(old.iter().all(|f| f.exists()));
        // The reclaim thread has looked at the three tables.
        std::thread::sleep(RECLAIM_POLL + RECLAIM_POLL / 2);
        timeline.major_compact().unwrap();
        // Flushes, whose clean-ups drop the versions naming the old tables
        // (as writes under load do), until fjall has deleted them.
        let deadline = Instant::now() + RECLAIM_POLL * 8;
        let mut flushes = 0;
        while old.iter().any(|f| f.exists()) {
            assert!(Instant::now() < deadline, "the old tables are not deleted");
            let mut ops = vec![Op::Put(Table::Timeline, b"k".to_vec(), vec![flushes])];
            engine.apply(&mut ops).unwrap();
            timeline.rotate_memtable_and_wait().unwrap();
            flushes += 1;
            std::thread::sleep(RECLAIM_POLL / 4);
        }
        let deadline = Instant::now() + RECLAIM_POLL * 3;
        while engine.files_freed() < 3 {
            assert!(
                Instant::now() < deadline,
                "{} files freed",
                engine.files_freed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            engine.get(Table::Timeline, &99u64.to_be_bytes()).unwrap(),
            Some(vec![2; 64])
        );
    }
}
