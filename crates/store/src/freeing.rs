//! Flushed memtables are freed a piece at a time.
//!
//! The embedded engine holds the last reference to every flushed memtable
//! so that it is freed on our reclaim thread rather than inside fjall under
//! a table's lock ([`crate::embedded`]). Freeing a 16 MiB memtable in one
//! go, about 100,000 skip-list nodes with their keys and values, takes
//! 30–60 ms of CPU, nearly all of it cache misses. On two cores that held
//! one CPU at every flush: a thread that wakes goes to an idle CPU if there
//! is one, there was none, and the committer queued behind the
//! connections' runtime threads on the other (a recording at 25,000 msg/s:
//! the reclaim thread ran 62 ms in 100, the committer waited 3–4 ms for a
//! CPU at each wake-up; BENCHMARKS.md, fourth session of 2026-11-24).
//!
//! [`Freeing`] takes each skip list apart [`FREE_CHUNK`] entries at a time
//! and the reclaim thread pauses [`FREE_PAUSE`] between pieces, so a CPU
//! is never held for more than about a millisecond. With more memtables
//! waiting, each piece is that many chunks, so the queue cannot grow
//! faster than it is worked off.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lsm_tree::Memtable;

/// Entries of a memtable freed at a time, per memtable waiting: about
/// 0.6 ms of CPU on this project's 2-core test machine.
pub const FREE_CHUNK: usize = 1_000;

/// The reclaim thread's pause between two pieces while memtables wait to
/// be freed: a 16 MiB memtable is freed over about a tenth of a second.
pub const FREE_PAUSE: Duration = Duration::from_millis(1);

/// Memtables being freed, oldest first, each as what is left of it.
#[derive(Default)]
pub(crate) struct Freeing {
    queue: VecDeque<Box<dyn Iterator<Item = ()>>>,
}

impl Freeing {
    /// Queues a flushed memtable to be freed. One still referred to
    /// elsewhere (not expected: the keeper hands over only its own last
    /// references) is let go here and freed by its last holder.
    pub(crate) fn push(&mut self, memtable: Arc<Memtable>) {
        match Arc::try_unwrap(memtable) {
            Ok(m) => self.push_entries(m.items.into_iter().map(drop)),
            Err(shared) => drop(shared),
        }
    }

    /// Queues entries that are freed as they are iterated.
    fn push_entries(&mut self, entries: impl Iterator<Item = ()> + 'static) {
        self.queue.push_back(Box::new(entries));
    }

    /// Whether nothing waits to be freed.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Memtables waiting, the one in progress included.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Frees the next piece, [`FREE_CHUNK`] entries per memtable waiting,
    /// oldest first; returns the entries freed.
    pub(crate) fn step(&mut self) -> usize {
        let budget = FREE_CHUNK * self.queue.len();
        let mut freed = 0;
        while freed < budget {
            let Some(oldest) = self.queue.front_mut() else {
                break;
            };
            let want = budget - freed;
            let n = oldest.by_ref().take(want).count();
            freed += n;
            if n < want {
                // Used up: dropping it frees what is left (the list's head).
                self.queue.pop_front();
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Entries that count themselves freed as they are iterated.
    fn entries(n: usize, freed: &Arc<AtomicUsize>) -> impl Iterator<Item = ()> + Send + 'static {
        let freed = freed.clone();
        (0..n).map(move |_| {
            freed.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Checks a memtable is freed a chunk per step, a backlog of several
    /// as many chunks per step as are waiting, and all of it in the end.
    #[test]
    fn memtables_are_freed_a_piece_at_a_time() {
        let freed = Arc::new(AtomicUsize::new(0));
        let mut f = Freeing::default();
        assert_eq!(f.step(), 0);
        f.push_entries(entries(2 * FREE_CHUNK + 10, &freed));
        assert_eq!(f.step(), FREE_CHUNK);
        assert_eq!(freed.load(Ordering::Relaxed), FREE_CHUNK);
        f.push_entries(entries(3 * FREE_CHUNK, &freed));
        f.push_entries(entries(5, &freed));
        assert_eq!(f.waiting(), 3);
        // Three waiting: three chunks, finishing the first and going on
        // into the second.
        assert_eq!(f.step(), 3 * FREE_CHUNK);
        assert_eq!(f.waiting(), 2);
        let mut steps = 0;
        while !f.is_empty() {
            f.step();
            steps += 1;
            assert!(steps < 10, "the queue does not empty");
        }
        assert_eq!(freed.load(Ordering::Relaxed), 5 * FREE_CHUNK + 15);
    }

    /// Checks a real memtable's entries are all gone after the steps.
    #[test]
    fn a_memtable_is_taken_apart() {
        let m = Memtable::new(0);
        for i in 0..(3 * FREE_CHUNK as u64 / 2) {
            m.insert(lsm_tree::InternalValue::from_components(
                i.to_be_bytes(),
                b"value".as_slice(),
                i,
                lsm_tree::ValueType::Value,
            ));
        }
        let mut f = Freeing::default();
        f.push(Arc::new(m));
        assert_eq!(f.step(), FREE_CHUNK);
        assert_eq!(f.step(), FREE_CHUNK / 2);
        assert!(f.is_empty());
    }
}
