//! How the embedded engine's background threads are scheduled.
//!
//! fjall's flush and compaction workers run [`BACKGROUND_NICE`] nicer than
//! the thread that opened the engine. Where the process may also take a
//! thread back out of Linux's `SCHED_IDLE` policy (it has `CAP_SYS_NICE`,
//! or `RLIMIT_NICE` allows the workers' niceness), the workers run in
//! `SCHED_IDLE` instead: the kernel then treats a CPU that runs only them
//! as idle when it places a thread that wakes up, and any other thread
//! preempts them. The committer, woken by its fsync, no longer waits in a
//! run queue behind the connections' runtime threads while the other CPU
//! compacts (BENCHMARKS.md, session of 2026-11-24: p99 at 25,000 msg/s,
//! median of six alternating pairs, 22 ms against 42 ms; no loss at full
//! rate).
//!
//! `SCHED_IDLE` threads get almost no CPU while other threads keep every
//! CPU busy, and fjall halts writes when a table has four memtables waiting
//! to be flushed. So the reclaim thread, which stays at the workers'
//! niceness, watches the backlog every [`crate::embedded::RECLAIM_POLL`]:
//! when a table has [`BEHIND_SEALED`] memtables waiting or
//! [`BEHIND_L0_RUNS`] level-0 runs, the workers go back to plain niceness
//! until every table is down to one waiting memtable and fewer than
//! [`CAUGHT_UP_L0_RUNS`] runs. A process that could not undo `SCHED_IDLE`
//! never uses it.

use rustix::process::Pid;

/// How much nicer than the thread that opens the engine (and so than the
/// committer and the connections' runtime) its background threads run:
/// fjall's flush and compaction workers and our reclaim thread, at most
/// 19. On a busy machine a flush then takes the CPU the committer leaves,
/// instead of taking turns with it.
/// Measured on 2 cores (BENCHMARKS.md, sixth session): p99 at 25,000 msg/s
/// 36–67 ms against 67–81 ms at 0, and no loss at full rate. Raising
/// niceness needs no privilege; where it fails the threads keep theirs.
pub const BACKGROUND_NICE: i32 = 10;

/// A table with this many memtables sealed and not yet flushed means the
/// workers are behind (fjall halts writes at 4).
pub const BEHIND_SEALED: usize = 2;
/// A table with this many level-0 runs means compaction is behind: four
/// flushes past the point where it should have started
/// ([`crate::embedded::L0_COMPACTION_RUNS`]); fjall slows writes from 20
/// and halts them at 30.
pub const BEHIND_L0_RUNS: usize = crate::embedded::L0_COMPACTION_RUNS as usize + 4;
/// Level-0 runs below which, with at most one sealed memtable per table,
/// the workers count as caught up again: a compaction has taken level 0.
pub const CAUGHT_UP_L0_RUNS: usize = crate::embedded::L0_COMPACTION_RUNS as usize;
const _: () = assert!(BEHIND_L0_RUNS < 20, "fjall slows writes from 20 runs");

/// fjall names its worker threads so; it offers no hook where they start.
pub(crate) const WORKER_THREAD: &str = "fjall:worker";

/// The scheduling the workers run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `SCHED_IDLE`: only CPU time nothing else wants.
    Idle,
    /// `SCHED_OTHER` at the background niceness.
    Nice,
}

/// The largest backlog over the tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Memtables sealed and waiting to be flushed, in the worst table.
    pub sealed: usize,
    /// Level-0 runs, in the worst table.
    pub l0_runs: usize,
}

/// The mode the workers should be in next, from the one they are in and
/// the backlog; between the two thresholds they stay as they are.
pub fn next_mode(now: Mode, backlog: Backlog) -> Mode {
    let behind = backlog.sealed >= BEHIND_SEALED || backlog.l0_runs >= BEHIND_L0_RUNS;
    let caught_up = backlog.sealed <= 1 && backlog.l0_runs < CAUGHT_UP_L0_RUNS;
    match now {
        Mode::Idle if behind => Mode::Nice,
        Mode::Nice if caught_up => Mode::Idle,
        _ => now,
    }
}

/// The niceness for background threads: [`BACKGROUND_NICE`] above the
/// calling thread's (Linux keeps niceness per thread).
pub(crate) fn background_nice() -> i32 {
    let own = rustix::process::getpriority_process(None).unwrap_or(0);
    (own + BACKGROUND_NICE).min(19)
}

/// Sets a thread's niceness; a failure only costs latency, so it is
/// logged, not returned.
pub(crate) fn lower_priority(tid: Pid, nice: i32) {
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!("could not lower the priority of thread {tid:?}: {e}");
    }
}

/// The threads of this process named `name` (none where there is no
/// `/proc`: not Linux).
pub(crate) fn threads_named(name: &str) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter_map(|task| task.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .collect()
}

/// Whether this process may put a thread into `SCHED_IDLE` and take it
/// out again at niceness `nice`: tried on a thread made for the purpose.
pub(crate) fn may_use_idle(nice: i32) -> bool {
    std::thread::Builder::new()
        .name("pigeon-probe".into())
        .spawn(move || {
            lower_priority(rustix::thread::gettid(), nice);
            scheduler::set_self_policy(scheduler::Policy::Idle, 0).is_ok()
                && scheduler::set_self_policy(scheduler::Policy::Other, 0).is_ok()
        })
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

/// Puts every fjall worker thread in `mode` (at niceness `nice` in
/// [`Mode::Nice`]; `SCHED_IDLE` keeps the niceness for the way back).
/// Returns whether every thread took it.
pub(crate) fn set_workers(mode: Mode, nice: i32) -> bool {
    let policy = || match mode {
        Mode::Idle => scheduler::Policy::Idle,
        Mode::Nice => scheduler::Policy::Other,
    };
    let mut all = true;
    for tid in threads_named(WORKER_THREAD) {
        if scheduler::set_policy(tid.as_raw_nonzero().get(), policy(), 0).is_err() {
            tracing::warn!(
                "could not set thread {tid:?} to {mode:?}: {}",
                std::io::Error::last_os_error()
            );
            all = false;
        }
        if mode == Mode::Nice {
            lower_priority(tid, nice);
        }
    }
    all
}

/// The scheduling of fjall's workers, kept by the reclaim thread.
pub(crate) struct Workers {
    /// `None`: `SCHED_IDLE` is not used (not allowed, or not Linux).
    mode: Option<Mode>,
    nice: i32,
}

impl Workers {
    /// Lowers the workers' priority: `SCHED_IDLE` where it can be undone,
    /// else niceness `nice`.
    pub(crate) fn start(nice: i32) -> Workers {
        for tid in threads_named(WORKER_THREAD) {
            lower_priority(tid, nice);
        }
        let mut mode = None;
        if may_use_idle(nice) {
            if set_workers(Mode::Idle, nice) {
                mode = Some(Mode::Idle);
            } else {
                // Not one worker left in SCHED_IDLE with nobody watching.
                set_workers(Mode::Nice, nice);
            }
        }
        match mode {
            Some(_) => tracing::info!(
                "fjall workers run in SCHED_IDLE (niceness {nice} while they are behind)"
            ),
            None => tracing::info!(
                "fjall workers run at niceness {nice} (SCHED_IDLE not used: this process could not take a thread out of it again)"
            ),
        }
        Workers { mode, nice }
    }

    /// The workers' mode now (`None`: `SCHED_IDLE` is not used).
    pub(crate) fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// Moves the workers to the mode the backlog calls for.
    pub(crate) fn watch(&mut self, backlog: Backlog) {
        let Some(now) = self.mode else { return };
        let next = next_mode(now, backlog);
        if next == now {
            return;
        }
        match next {
            Mode::Nice => tracing::warn!(
                sealed = backlog.sealed,
                l0_runs = backlog.l0_runs,
                "flushes and compactions are behind: fjall workers back to niceness {} until they catch up",
                self.nice
            ),
            Mode::Idle => tracing::info!("fjall workers caught up: back in SCHED_IDLE"),
        }
        set_workers(next, self.nice);
        metrics::gauge!(BACKGROUND_BEHIND).set(f64::from(u8::from(next == Mode::Nice)));
        self.mode = Some(next);
    }
}

/// 1 while fjall's workers, normally in `SCHED_IDLE`, run at plain
/// niceness because flushes or compactions fell behind.
pub const BACKGROUND_BEHIND: &str = "pigeon_store_background_behind";

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the workers leave `SCHED_IDLE` when a table falls behind and
    /// come back only once every table has caught up, not in between.
    #[test]
    fn the_workers_leave_idle_when_behind_and_return_when_caught_up() {
        let b = |sealed, l0_runs| Backlog { sealed, l0_runs };
        assert_eq!(next_mode(Mode::Idle, b(0, 0)), Mode::Idle);
        assert_eq!(next_mode(Mode::Idle, b(1, 11)), Mode::Idle);
        assert_eq!(next_mode(Mode::Idle, b(BEHIND_SEALED, 0)), Mode::Nice);
        assert_eq!(next_mode(Mode::Idle, b(0, BEHIND_L0_RUNS)), Mode::Nice);
        // Between the thresholds: as they are.
        assert_eq!(next_mode(Mode::Nice, b(1, CAUGHT_UP_L0_RUNS)), Mode::Nice);
        assert_eq!(next_mode(Mode::Nice, b(2, 0)), Mode::Nice);
        assert_eq!(next_mode(Mode::Idle, b(1, CAUGHT_UP_L0_RUNS)), Mode::Idle);
        assert_eq!(
            next_mode(Mode::Nice, b(1, CAUGHT_UP_L0_RUNS - 1)),
            Mode::Idle
        );
    }
}
