//! How committed events reach online devices. `core` calls the [`Notifier`]
//! after a write is durable; the gateway implements it. Delivery is best
//! effort by design: a lost push costs latency (the device syncs), never data.

use std::sync::Arc;

use pigeon_proto::v1::EventsPush;

use crate::UserId;

/// Events newly committed to one user's sync log.
#[derive(Debug, Clone)]
pub struct PushBatch {
    /// Whose log.
    pub user_id: UserId,
    /// The seq a device must be at for these events to follow on directly.
    pub prev_seq: u64,
    /// The seq of the last event in the batch.
    pub last_seq: u64,
    /// The push frame body, keys included.
    pub push: EventsPush,
}

/// Receives committed events for delivery to online devices.
pub trait Notifier: Send + Sync + 'static {
    /// Called once per user per commit, after the events are durable. Must
    /// not block: implementations queue or drop.
    fn notify(&self, batch: Arc<PushBatch>);
}

/// A notifier that delivers nothing, for tests and tools.
#[derive(Debug, Default)]
pub struct NullNotifier;

impl Notifier for NullNotifier {
    fn notify(&self, _batch: Arc<PushBatch>) {}
}
