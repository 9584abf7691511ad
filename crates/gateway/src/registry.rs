//! Online devices by user, and the `Notifier` that pushes to them.
//!
//! Each connection registers once authenticated with its [`Mailbox`]: a
//! bounded queue of pushes and the flags that close it. `notify` never
//! blocks: if a queue is full the connection is flagged as lagging and sends
//! its device a sync notice instead, since a lost push costs latency, never
//! data. Ephemeral pushes (presence, typing) that do not fit are dropped:
//! they are never stored anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use pigeon_core::{Notifier, PushBatch, UserId};
use pigeon_proto::Body;
use tokio::sync::Notify;

/// What other tasks hand one connection, behind one allocation and one
/// wake-up: the registry's pushes and the flags that close it. The queue
/// holds no memory while empty, so an idle connection's mailbox is a few
/// words.
#[derive(Debug)]
pub struct Mailbox {
    /// Pushes not yet taken by the connection (at most `capacity`).
    pushes: Mutex<VecDeque<Push>>,
    /// Pushes the queue may hold.
    capacity: usize,
    /// A push batch was dropped because the queue was full.
    pub lagged: AtomicBool,
    /// The session was revoked elsewhere; close the connection.
    pub revoked: AtomicBool,
    /// Close the connection with a Goodbye carrying this `ErrorCode`
    /// (0: no). Set by the administrator's actions on the user.
    pub close_code: AtomicI32,
    /// Wakes the connection to look at its pushes and flags.
    pub wake: Notify,
}

impl Mailbox {
    /// An empty mailbox taking up to `capacity` pushes.
    pub fn new(capacity: usize) -> Mailbox {
        Mailbox {
            pushes: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            lagged: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            close_code: AtomicI32::new(0),
            wake: Notify::new(),
        }
    }

    /// Queues a push unless the queue is full; says whether it was queued.
    fn offer(&self, push: &Push) -> bool {
        let mut pushes = self.pushes.lock().expect("mailbox lock poisoned");
        if pushes.len() >= self.capacity {
            return false;
        }
        pushes.push_back(push.clone());
        true
    }

    /// Takes every queued push, in order, leaving the queue empty (and its
    /// storage freed).
    pub fn take(&self) -> VecDeque<Push> {
        std::mem::take(&mut *self.pushes.lock().expect("mailbox lock poisoned"))
    }
}

/// Something to push to one connection.
#[derive(Debug, Clone)]
pub enum Push {
    /// Newly committed events of the user's own log.
    Events(Arc<PushBatch>),
    /// Something to sync (a large group's shared log moved).
    Notice,
    /// An ephemeral frame body (presence, typing).
    Ephemeral(Arc<Body>),
}

struct Entry {
    conn_id: u64,
    token_hash: Box<str>,
    mailbox: Arc<Mailbox>,
}

/// Told when this node's view of a user changes, so that other nodes can
/// learn it (cluster mode). Called under no lock; must not block.
pub trait RegistryObserver: Send + Sync + 'static {
    /// The user's first connection on this node opened (`true`) or the
    /// last one closed (`false`).
    fn user_here(&self, user: UserId, here: bool);
    /// A session was revoked (logout) through a connection on this node.
    fn session_revoked(&self, user: UserId, token_hash: &str);
}

/// The online connections of every user.
#[derive(Default)]
pub struct Registry {
    users: RwLock<HashMap<UserId, Vec<Entry>>>,
    next_conn_id: AtomicU64,
    observer: OnceLock<Arc<dyn RegistryObserver>>,
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
    /// Pushes and flags for this connection.
    pub mailbox: Arc<Mailbox>,
}

impl Registry {
    /// Sets the observer told about users arriving and leaving (once; later
    /// calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn RegistryObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Users with a connection on this node now.
    pub fn users_here(&self) -> Vec<UserId> {
        self.users
            .read()
            .expect("registry lock poisoned")
            .keys()
            .copied()
            .collect()
    }

    /// Registers a connection of `user` with a queue of `capacity` pushes.
    /// The flag says whether it is the user's first online connection.
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        token_hash: &str,
        capacity: usize,
    ) -> (Registration, bool) {
        self.register_mailbox(user, token_hash, Arc::new(Mailbox::new(capacity)))
    }

    /// Registers a connection of `user` that already has a mailbox.
    pub fn register_mailbox(
        self: &Arc<Self>,
        user: UserId,
        token_hash: &str,
        mailbox: Arc<Mailbox>,
    ) -> (Registration, bool) {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            conn_id,
            token_hash: token_hash.into(),
            mailbox: mailbox.clone(),
        };
        let mut users = self.users.write().expect("registry lock poisoned");
        let list = users.entry(user).or_default();
        let first = list.is_empty();
        // Most users have one device online: no room for four.
        list.reserve_exact(1);
        list.push(entry);
        drop(users);
        if first && let Some(o) = self.observer.get() {
            o.user_here(user, true);
        }
        (
            Registration {
                registry: self.clone(),
                user,
                conn_id,
                mailbox,
            },
            first,
        )
    }

    /// Removes a registration; says whether it was the user's last online
    /// connection.
    pub fn unregister(&self, reg: Registration) -> bool {
        self.remove(reg.user, reg.conn_id)
        // Dropping `reg` then removes nothing more.
    }

    /// Removes one connection; says whether the user has none left.
    fn remove(&self, user: UserId, conn_id: u64) -> bool {
        let mut users = self.users.write().expect("registry lock poisoned");
        let Some(list) = users.get_mut(&user) else {
            return false;
        };
        let before = list.len();
        list.retain(|e| e.conn_id != conn_id);
        let last = list.is_empty() && before > 0;
        if list.is_empty() {
            users.remove(&user);
        }
        drop(users);
        if last && let Some(o) = self.observer.get() {
            o.user_here(user, false);
        }
        last
    }

    fn push_to(&self, user: UserId, push: &Push) {
        let users = self.users.read().expect("registry lock poisoned");
        for e in users.get(&user).into_iter().flatten() {
            if e.mailbox.offer(push) {
                e.mailbox.wake.notify_one();
            } else if !matches!(push, Push::Ephemeral(_)) {
                e.mailbox.lagged.store(true, Ordering::SeqCst);
                e.mailbox.wake.notify_one();
            }
        }
    }

    /// Closes every connection of `user` that uses the session
    /// `token_hash`, here and (through the observer) on other nodes.
    pub fn revoke(&self, user: UserId, token_hash: &str) {
        self.revoke_here(user, token_hash);
        if let Some(o) = self.observer.get() {
            o.session_revoked(user, token_hash);
        }
    }

    /// Closes the connections on this node of `user` that use the session
    /// `token_hash`.
    pub fn revoke_here(&self, user: UserId, token_hash: &str) {
        let users = self.users.read().expect("registry lock poisoned");
        for e in users
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|e| &*e.token_hash == token_hash)
        {
            e.mailbox.revoked.store(true, Ordering::SeqCst);
            e.mailbox.wake.notify_one();
        }
    }

    /// Closes every connection of `user` with a Goodbye carrying `code`.
    pub fn close_user(&self, user: UserId, code: pigeon_proto::ErrorCode) {
        let users = self.users.read().expect("registry lock poisoned");
        for e in users.get(&user).into_iter().flatten() {
            e.mailbox.close_code.store(code as i32, Ordering::SeqCst);
            e.mailbox.wake.notify_one();
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
        let user = batch.user_id;
        self.push_to(user, &Push::Events(batch));
    }

    fn notify_stream(&self, users: Arc<[UserId]>) {
        for &u in users.iter() {
            self.push_to(u, &Push::Notice);
        }
    }

    fn push_ephemeral(&self, users: &[UserId], body: Body) {
        let push = Push::Ephemeral(Arc::new(body));
        for &u in users {
            self.push_to(u, &push);
        }
    }

    fn notify_everyone(&self) {
        let users: Vec<UserId> = self
            .users
            .read()
            .expect("registry lock poisoned")
            .keys()
            .copied()
            .collect();
        for u in users {
            self.push_to(u, &Push::Notice);
        }
    }

    fn is_online(&self, user: UserId) -> bool {
        self.online(user) > 0
    }

    fn close_user(&self, user: UserId, code: pigeon_proto::ErrorCode) {
        Registry::close_user(self, user, code);
    }
}

impl Registration {
    /// Waits for the next push (flags raised meanwhile are left to the
    /// caller to look at).
    pub async fn recv(&mut self) -> Push {
        loop {
            if let Some(push) = self
                .mailbox
                .pushes
                .lock()
                .expect("mailbox lock poisoned")
                .pop_front()
            {
                return push;
            }
            self.mailbox.wake.notified().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.user, self.conn_id);
    }
}
