//! Blocking, on the committer side.

use pigeon_core::store::Appended;
use pigeon_core::{StoreError, UserId};
use pigeon_proto::v1::{BlockChanged, event};

use super::{Committer, Tx};
use crate::engine::Table;
use crate::keys;

impl Committer {
    /// Blocks or unblocks; the blocker's devices get a BlockChanged event
    /// when the state changes.
    pub(super) fn set_blocked(
        &mut self,
        tx: &mut Tx<'_>,
        blocker: UserId,
        blocked: (UserId, String),
        block: bool,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let key = keys::pair(blocker, blocked.0);
        if tx.b.get(Table::Blocks, &key)?.is_some() == block {
            return Ok(Vec::new());
        }
        if block {
            tx.b.put(Table::Blocks, key, Vec::new());
        } else {
            tx.b.delete(Table::Blocks, key);
        }
        let change = BlockChanged {
            user_id: blocked.0,
            username: blocked.1,
            blocked: block,
        };
        Ok(vec![self.append_event(
            tx,
            blocker,
            now_ms,
            event::Kind::BlockChanged(change),
        )?])
    }
}
