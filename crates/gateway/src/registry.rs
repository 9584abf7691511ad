//! Online devices by user, and the `Notifier` that pushes to them.
//!
//! Each connection registers once authenticated and gets a bounded queue of
//! push batches. `notify` never blocks: if a queue is full the connection is
//! flagged as lagging and sends its device a sync notice instead, since a
//! lost push costs latency, never data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use pigeon_core::{Notifier, PushBatch, UserId};
use tokio::sync::{Notify, mpsc};

/// Signals the registry raises on one connection.
#[derive(Debug, Default)]
pub struct ConnFlags {
    /// A push batch was dropped because the queue was full.
    pub lagged: AtomicBool,
    /// The session was revoked elsewhere; close the connection.
    pub revoked: AtomicBool,
    /// Wakes the connection to look at the flags.
    pub wake: Notify,
}

struct Entry {
    conn_id: u64,
    token_hash: String,
    tx: mpsc::Sender<Arc<PushBatch>>,
    flags: Arc<ConnFlags>,
}

/// The online connections of every user.
#[derive(Default)]
pub struct Registry {
    users: RwLock<HashMap<UserId, Vec<Entry>>>,
    next_conn_id: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

/// A connection's registration; unregisters on drop.
pub struct Registration {
    registry: Arc<Registry>,
    user: UserId,
    conn_id: u64,
    /// Push batches for this connection.
    pub rx: mpsc::Receiver<Arc<PushBatch>>,
    /// Flags raised for this connection.
    pub flags: Arc<ConnFlags>,
}

impl Registry {
    /// Registers a connection of `user` with a queue of `capacity` batches.
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        token_hash: &str,
        capacity: usize,
    ) -> Registration {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let flags = Arc::new(ConnFlags::default());
        let entry = Entry {
            conn_id,
            token_hash: token_hash.to_string(),
            tx,
            flags: flags.clone(),
        };
        self.users
            .write()
            .expect("registry lock poisoned")
            .entry(user)
            .or_default()
            .push(entry);
        Registration {
            registry: self.clone(),
            user,
            conn_id,
            rx,
            flags,
        }
    }

    /// Closes every connection of `user` that uses the session `token_hash`.
    pub fn revoke(&self, user: UserId, token_hash: &str) {
        let users = self.users.read().expect("registry lock poisoned");
        for e in users
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|e| e.token_hash == token_hash)
        {
            e.flags.revoked.store(true, Ordering::SeqCst);
            e.flags.wake.notify_one();
        }
    }

    /// Devices of `user` online now.
    pub fn online(&self, user: UserId) -> usize {
        self.users
            .read()
            .expect("registry lock poisoned")
            .get(&user)
            .map_or(0, Vec::len)
    }
}

impl Notifier for Registry {
    fn notify(&self, batch: Arc<PushBatch>) {
        let users = self.users.read().expect("registry lock poisoned");
        for e in users.get(&batch.user_id).into_iter().flatten() {
            if e.tx.try_send(batch.clone()).is_err() {
                e.flags.lagged.store(true, Ordering::SeqCst);
                e.flags.wake.notify_one();
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut users = self.registry.users.write().expect("registry lock poisoned");
        if let Some(list) = users.get_mut(&self.user) {
            list.retain(|e| e.conn_id != self.conn_id);
            if list.is_empty() {
                users.remove(&self.user);
            }
        }
    }
}
