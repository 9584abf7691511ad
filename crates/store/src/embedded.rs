//! The default, embedded engine: fjall (a log-structured merge tree, pure
//! Rust) in one data directory, one fjall keyspace per [`Table`]. Batches
//! are atomic across keyspaces; `sync` fsyncs the journal, after which a
//! crash (even `kill -9` or power loss) loses nothing applied before it.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use pigeon_core::StoreError;

use crate::engine::{Engine, Entries, Op, Table};

/// The journal size at which fjall flushes and starts a new journal.
pub const JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The memtable size at which a table's memtable is flushed to a table
/// file. fjall starts a new journal only when a memtable is flushed, so
/// with its default (64 MiB for each of our tables) the journal, which a
/// start after a crash replays, could grow far past [`JOURNAL_BYTES_MAX`]
/// before any one table's memtable filled. Fixed when a database is
/// created: one made with another size keeps it.
pub const MEMTABLE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// fjall behind the [`Engine`] interface.
pub struct FjallEngine {
    db: Database,
    keyspaces: Vec<Keyspace>,
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
    /// Opens (creating if needed) the database in `dir` and recovers it.
    pub fn open(dir: &Path) -> Result<FjallEngine, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
        // We persist explicitly after every group commit, so fjall must not
        // decide on its own when the journal reaches the OS.
        // A smaller journal than fjall's default (512 MiB) makes it flush
        // memtables to tables sooner, so recovery after a crash replays at
        // most this much.
        let db = Database::builder(dir.join("db"))
            .manual_journal_persist(true)
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .open()
            .map_err(io)?;
        let keyspaces = Table::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), || {
                    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX)
                })
                .map_err(io)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FjallEngine { db, keyspaces })
    }

    fn ks(&self, t: Table) -> &Keyspace {
        &self.keyspaces[t.index()]
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
        for op in ops.drain(..) {
            match op {
                Op::Put(t, k, v) => batch.insert(self.ks(t), k, v),
                Op::Delete(t, k) => batch.remove(self.ks(t), k),
            }
        }
        batch.commit().map_err(io)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a table's memtable is flushed to a table file once it holds
    /// [`MEMTABLE_BYTES_MAX`], well before fjall's default of 64 MiB: that
    /// is what lets the journal a crashed start replays be released.
    #[test]
    fn a_full_memtable_is_flushed_at_our_bound() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let value = vec![7u8; 4096];
        let writes = (MEMTABLE_BYTES_MAX as usize * 3 / 2) / value.len();
        for chunk in 0..writes / 256 {
            let mut ops: Vec<Op> = (0..256)
                .map(|i| {
                    let key = ((chunk * 256 + i) as u64).to_be_bytes().to_vec();
                    Op::Put(Table::Timeline, key, value.clone())
                })
                .collect();
            engine.apply(&mut ops).unwrap();
            engine.sync().unwrap();
        }
        let timeline = engine.ks(Table::Timeline);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while timeline.table_count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no table file after {} MiB written",
                (writes * value.len()) >> 20
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(writes * value.len() < 64 * 1024 * 1024);
    }
}
