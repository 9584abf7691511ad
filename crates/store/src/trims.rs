//! Trimmed log entries leave the disk through compaction, not deletion.
//!
//! A log's trim point (`Meta` `trim/<user>`) already hides everything at or
//! below it from readers (`read_log` answers `RESYNC_REQUIRED` for a key
//! below it and starts a new device above it). Deleting those entries as
//! well cost a tombstone per entry in the same commit: two memtable inserts
//! per message once a user's log passes its retention, each flushed and
//! compacted again, on the committer's path. Instead the committer only
//! writes the trim point, and once that commit is durable hands it to
//! [`Trims`]; the `log` table's compaction filter ([`LogFilter`]) destroys
//! the entries at or below it whenever a compaction rewrites them.
//!
//! Only durable trim points are handed over: a compaction that dropped
//! entries below a point a crash then took back would leave a hole that a
//! device holding a key inside it would silently skip.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fjall::compaction::filter::{CompactionFilter, Context, Factory, ItemAccessor, Verdict};
use pigeon_core::UserId;

use crate::keys;

/// Users whose trim points are held for the compaction filter, at most.
/// Past it the map is emptied and fills again as logs trim (each log trims
/// every [`pigeon_core::store::TRIM_RUN_MAX`] events while it grows); the
/// entries of a log not in the map are kept until its next trim. About
/// 40 bytes each.
pub const TRIMS_HELD_MAX: usize = 262_144;

/// The durable trim point of each log that has one, as far as we know.
#[derive(Debug, Default)]
pub(crate) struct Trims {
    points: RwLock<HashMap<UserId, u64>>,
}

impl Trims {
    /// `user`'s log is durably trimmed through `through`.
    pub(crate) fn set(&self, user: UserId, through: u64) {
        let mut points = self.points.write().expect("trims lock poisoned");
        if points.len() >= TRIMS_HELD_MAX && !points.contains_key(&user) {
            points.clear();
        }
        let point = points.entry(user).or_default();
        *point = (*point).max(through);
    }

    /// The trim point of `user`'s log (0: none known).
    pub(crate) fn through(&self, user: UserId) -> u64 {
        let points = self.points.read().expect("trims lock poisoned");
        points.get(&user).copied().unwrap_or(0)
    }
}

/// Makes a [`LogFilter`] for each compaction of the `log` table.
pub(crate) struct LogFilterFactory(pub(crate) Arc<Trims>);

impl Factory for LogFilterFactory {
    fn name(&self) -> &str {
        "pigeon-log-trims"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(LogFilter {
            trims: self.0.clone(),
            last: None,
        })
    }
}

/// Destroys log entries at or below their log's durable trim point.
pub(crate) struct LogFilter {
    trims: Arc<Trims>,
    /// The user of the previous entry and their trim point: a compaction
    /// reads keys in order, so one lookup per log.
    last: Option<(UserId, u64)>,
}

impl LogFilter {
    /// What becomes of the entry with this key.
    fn verdict(&mut self, key: &[u8]) -> Verdict {
        if key.len() != 16 {
            return Verdict::Keep;
        }
        let (user, seq) = (keys::log_user(key), keys::log_seq(key));
        let through = match self.last {
            Some((u, t)) if u == user => t,
            _ => {
                let t = self.trims.through(user);
                self.last = Some((user, t));
                t
            }
        };
        if seq <= through {
            // Each log key is written once (seqs are never reused), so no
            // older version lies below for a missing tombstone to uncover.
            Verdict::Destroy
        } else {
            Verdict::Keep
        }
    }
}

impl CompactionFilter for LogFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> lsm_tree::Result<Verdict> {
        Ok(self.verdict(item.key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the filter destroys exactly the entries at or below their
    /// own log's trim point, and keeps keys that are not log keys.
    #[test]
    fn only_entries_at_or_below_their_logs_point_go() {
        let trims = Arc::new(Trims::default());
        trims.set(7, 50);
        trims.set(7, 40);
        assert_eq!(trims.through(7), 50, "a point never goes back");
        let mut f = LogFilter {
            trims: trims.clone(),
            last: None,
        };
        let gone = |v: Verdict| matches!(v, Verdict::Destroy);
        assert!(gone(f.verdict(&keys::log(7, 1))));
        assert!(gone(f.verdict(&keys::log(7, 50))));
        assert!(!gone(f.verdict(&keys::log(7, 51))));
        assert!(!gone(f.verdict(&keys::log(8, 1))), "another user's log");
        assert!(!gone(f.verdict(&keys::log(6, 1))));
        assert!(!gone(f.verdict(b"short")));
        assert!(!gone(f.verdict(&[0u8; 17])));
    }

    /// Checks the map is bounded: past [`TRIMS_HELD_MAX`] users it starts
    /// over, so an old user's point is forgotten (their entries are kept).
    #[test]
    fn the_map_is_bounded() {
        let trims = Trims::default();
        for user in 0..TRIMS_HELD_MAX as u64 {
            trims.set(user, 1);
        }
        assert_eq!(trims.through(0), 1);
        trims.set(u64::MAX, 9);
        assert_eq!(trims.through(0), 0);
        assert_eq!(trims.through(u64::MAX), 9);
        assert!(trims.points.read().unwrap().len() <= TRIMS_HELD_MAX);
    }
}
