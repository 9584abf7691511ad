//! The webhook outbox: deliveries queued in the same commit as the message
//! they are about, so a restart loses none, and their retries.

use pigeon_core::store::{Delivery, DeliveryStatus, HookKind, HookTarget};
use pigeon_core::{StoreError, UserId};

use super::{Committer, Shared, Tx, decode_json, encode_json};
use crate::engine::Table;
use crate::keys;

/// Most failed deliveries a listing looks through.
pub const FAILED_SCAN_MAX: usize = 10_000;

impl Committer {
    /// Queues deliveries of `hooks` about a stored message. `recipients` are
    /// the users a push may be needed for (`[0]` for a large group).
    pub(super) fn enqueue_hooks(
        &mut self,
        tx: &mut Tx<'_>,
        hooks: &[HookTarget],
        conversation_id: &str,
        conv_seq: u64,
        recipients: &[UserId],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for hook in hooks {
            let targets: &[UserId] = match hook.kind {
                HookKind::MessageCreated => &[0],
                HookKind::PushNeeded => recipients,
            };
            for &recipient in targets {
                let alloc = match self.outbox_alloc {
                    Some(a) => a,
                    None => super::load_alloc(&tx.b, keys::HW_OUTBOX)?,
                };
                let (id, alloc) = super::allocate(
                    &mut tx.b,
                    keys::HW_OUTBOX.to_vec(),
                    alloc,
                    self.config.seq_step,
                );
                self.outbox_alloc = Some(alloc);
                let d = Delivery {
                    id,
                    endpoint: hook.endpoint.clone(),
                    kind: hook.kind,
                    conversation_id: conversation_id.to_string(),
                    conv_seq,
                    recipient,
                    created_at_ms: now_ms,
                    attempts: 0,
                    next_attempt_ms: now_ms,
                    status: DeliveryStatus::Pending,
                    last_error: String::new(),
                };
                tx.b.put(Table::Outbox, keys::user_id(id), encode_json(&d));
                tx.b.put(Table::Due, keys::due(now_ms, id), Vec::new());
            }
        }
        Ok(())
    }

    pub(super) fn delivery_attempted(
        &mut self,
        tx: &mut Tx<'_>,
        id: u64,
        outcome: Result<(), String>,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let key = keys::user_id(id);
        let Some(mut d) = tx.b.get_json::<Delivery>("delivery", Table::Outbox, &key)? else {
            return Ok(());
        };
        tx.b.delete(Table::Due, keys::due(d.next_attempt_ms, id));
        match (outcome, next_attempt_ms) {
            (Ok(()), _) => tx.b.delete(Table::Outbox, key),
            (Err(reason), Some(next)) => {
                d.attempts += 1;
                d.last_error = reason;
                d.next_attempt_ms = next;
                tx.b.put(Table::Due, keys::due(next, id), Vec::new());
                tx.b.put(Table::Outbox, key, encode_json(&d));
            }
            (Err(reason), None) => {
                d.attempts += 1;
                d.last_error = reason;
                d.status = DeliveryStatus::Failed;
                tx.b.put(Table::Outbox, key, encode_json(&d));
            }
        }
        Ok(())
    }
}

impl Shared {
    pub(super) fn deliveries_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let due = self.engine.scan(
            Table::Due,
            &keys::due(0, 0),
            &keys::due(now_ms.saturating_add(1), 0),
            false,
            limit,
        )?;
        let mut out = Vec::with_capacity(due.len());
        for (k, _) in due {
            let id = keys::pair_second(&k);
            if let Some(v) = self.engine.get(Table::Outbox, &keys::user_id(id))? {
                out.push(decode_json("delivery", &v)?);
            }
        }
        Ok(out)
    }

    pub(super) fn deliveries_pending(&self, limit: usize) -> Result<usize, StoreError> {
        Ok(self
            .engine
            .scan(Table::Due, &keys::due(0, 0), &[0xff; 17], false, limit)?
            .len())
    }

    pub(super) fn deliveries_failed(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let rows = self.engine.scan(
            Table::Outbox,
            &keys::user_id(0),
            &[0xff; 9],
            true,
            FAILED_SCAN_MAX,
        )?;
        let mut out = Vec::new();
        for (_, v) in rows {
            let d: Delivery = decode_json("delivery", &v)?;
            if d.status == DeliveryStatus::Failed {
                out.push(d);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
