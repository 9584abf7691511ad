//! An engine in process memory, for unit tests and simulation. `sync` does
//! nothing: there is no durability to provide.

use std::collections::BTreeMap;
use std::sync::RwLock;

use pigeon_core::{StoreError, UserId};

use crate::engine::{Engine, Entries, Op, Table};
use crate::keys;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A `BTreeMap` per table behind one lock.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    tables: RwLock<[Map; Table::ALL.len()]>,
}

impl Engine for MemoryEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tables = self.tables.read().expect("memory engine lock poisoned");
        Ok(tables[table.index()].get(key).cloned())
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
        let tables = self.tables.read().expect("memory engine lock poisoned");
        let range = tables[table.index()].range(start.to_vec()..end.to_vec());
        let pick = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(pick).collect()
        } else {
            range.take(limit).map(pick).collect()
        })
    }

    fn apply(&self, ops: &mut Vec<Op>) -> Result<(), StoreError> {
        let mut tables = self.tables.write().expect("memory engine lock poisoned");
        for op in ops.drain(..) {
            match op {
                Op::Put(t, k, v) => {
                    tables[t.index()].insert(k, v);
                }
                Op::Delete(t, k) => {
                    tables[t.index()].remove(&k);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn log_trimmed(&self, user: UserId, through: u64) {
        let mut tables = self.tables.write().expect("memory engine lock poisoned");
        let log = &mut tables[Table::Log.index()];
        let doomed: Vec<Vec<u8>> = log
            .range(keys::log(user, 0)..=keys::log(user, through))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            log.remove(&k);
        }
    }
}
