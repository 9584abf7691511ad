//! How committed events reach online devices. `core` calls the [`Notifier`]
//! after a write is durable; the gateway implements it. Delivery is best
//! effort by design: a lost push costs latency (the device syncs), never data.

use std::sync::Arc;

use pigeon_proto::v1::Event;
use pigeon_proto::v1::frame::Body;

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
    /// The events, in seq order.
    pub events: Vec<Event>,
}

/// Receives committed events for delivery to online devices.
pub trait Notifier: Send + Sync + 'static {
    /// Called once per user per commit, after the events are durable. Must
    /// not block: implementations queue or drop.
    fn notify(&self, batch: Arc<PushBatch>);

    /// Tells the online devices of `users` that there is something to sync
    /// (events in a large group's shared log). Must not block.
    fn notify_stream(&self, users: Arc<[UserId]>);

    /// Pushes an ephemeral frame body (presence, typing) to the online
    /// devices of `users`; nothing is stored. Must not block.
    fn push_ephemeral(&self, users: &[UserId], body: Body);

    /// Tells every online device there is something to sync (a server-wide
    /// event such as a feature flag change).
    fn notify_everyone(&self);

    /// Whether `user` has a device online on this server.
    fn is_online(&self, user: UserId) -> bool;

    /// Closes every open connection of `user` with a Goodbye carrying
    /// `code` (their sessions were revoked or the account disabled). Must
    /// not block.
    fn close_user(&self, user: UserId, code: pigeon_proto::ErrorCode) {
        let _ = (user, code);
    }
}

/// A notifier that delivers nothing, for tests and tools.
#[derive(Debug, Default)]
pub struct NullNotifier;

impl Notifier for NullNotifier {
    fn notify(&self, _batch: Arc<PushBatch>) {}
    fn notify_stream(&self, _users: Arc<[UserId]>) {}
    fn push_ephemeral(&self, _users: &[UserId], _body: Body) {}
    fn notify_everyone(&self) {}
    fn is_online(&self, _user: UserId) -> bool {
        false
    }
}
