//! Cluster mode's bus: several `pigeon` nodes share one store (PostgreSQL)
//! and tell each other over NATS what a gateway would otherwise keep to
//! itself, so that any node can serve any client:
//!
//! - committed events (pushed to the recipient's devices on every node;
//!   too large a batch becomes a notice to sync), notices to sync (large
//!   groups, flag changes), ephemeral pushes (presence, typing), and
//!   closing a user's or a session's connections;
//! - membership: each node beats with its client-facing endpoints and load,
//!   announces the users whose first connection opened or last closed here,
//!   and republishes its whole user list periodically and when a node
//!   joins, so `is_online` and `GET /v1/endpoints` are cluster-wide.
//!
//! Everything is best effort by design, as pushes are on one node: a lost
//! bus message costs latency, never data. When the bus comes back after an
//! outage every device on this node is told to sync, and catches up.
//!
//! [`Cluster`] wraps the node's [`Registry`] and is the [`Notifier`] the
//! service is built with. Notifier calls never block: they queue at most
//! `queue_max` messages for the publisher task and drop (and count) beyond.

mod view;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pigeon_core::{Notifier, PushBatch, UserId};
use pigeon_gateway::{Registry, RegistryObserver};
use pigeon_proto::Body;
use pigeon_proto::v1::Frame;
use prost::Message;
use tokio::sync::mpsc;

pub use view::NodeSummary;
use view::View;
use wire::{BusMessage, Kind};

/// Users per notice or snapshot message.
pub const USERS_PER_MESSAGE: usize = 8192;

/// How a node joins the bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// Subject prefix, so that several Pigeon clusters can share one NATS.
    pub subject_prefix: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// This node's client-facing URLs, as `GET /v1/endpoints` lists them.
    pub endpoints: Vec<String>,
    /// How often the node says it is alive.
    pub beat_interval: Duration,
    /// A node silent for this long is considered gone.
    pub node_timeout: Duration,
    /// How often the node republishes its whole user list.
    pub snapshot_interval: Duration,
    /// Messages waiting for the publisher before new ones are dropped.
    pub queue_max: usize,
    /// Largest events message; a larger batch is sent as a notice to sync.
    pub message_bytes_max: usize,
}

/// Called with the users of a node that died (stopped beating) who are not
/// connected anywhere else, so that their contacts learn they went offline.
pub type GoneHook = Arc<dyn Fn(Vec<UserId>) + Send + Sync>;

/// What the publisher task sends.
enum Out {
    Events(Arc<PushBatch>),
    Notice(Arc<[UserId]>),
    Everyone,
    Ephemeral(Vec<UserId>, Arc<Body>),
    Close { user: UserId, code: i32 },
    Revoke { user: UserId, token_hash: String },
    Presence { user: UserId, here: bool },
    Beat,
    Snapshot,
    Leaving(tokio::sync::oneshot::Sender<()>),
}

/// This node on the bus: the [`Notifier`] for the service.
pub struct Cluster {
    config: BusConfig,
    local: Arc<Registry>,
    view: RwLock<View>,
    out: mpsc::Sender<Out>,
    load: OnceLock<Arc<dyn Fn() -> u64 + Send + Sync>>,
    gone: OnceLock<GoneHook>,
    connected: AtomicBool,
    leaving: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

/// Tells the cluster about users arriving and leaving this node.
struct Observer(mpsc::Sender<Out>);

impl RegistryObserver for Observer {
    fn user_here(&self, user: UserId, here: bool) {
        enqueue(&self.0, Out::Presence { user, here });
    }
    fn session_revoked(&self, user: UserId, token_hash: &str) {
        enqueue(
            &self.0,
            Out::Revoke {
                user,
                token_hash: token_hash.to_string(),
            },
        );
    }
}

fn enqueue(out: &mpsc::Sender<Out>, msg: Out) {
    if out.try_send(msg).is_err() {
        metrics::counter!("pigeon_bus_dropped_total").increment(1);
    }
}

impl Cluster {
    /// Joins the bus: connects to NATS (retrying in the background if it is
    /// not reachable yet), subscribes, and starts beating. `local` is this
    /// node's registry; it learns about other nodes through this.
    pub async fn start(config: BusConfig, local: Arc<Registry>) -> Result<Arc<Cluster>, String> {
        let (tx, rx) = mpsc::channel(config.queue_max.max(16));
        let (event_tx, mut events) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("pigeon-{}", config.node_id))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let event_tx = event_tx.clone();
                async move {
                    let _ = event_tx.send(event);
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| format!("connecting to the bus {}: {e}", config.url))?;
        let subscriber = client
            .subscribe(format!("{}.>", config.subject_prefix))
            .await
            .map_err(|e| format!("subscribing on the bus: {e}"))?;
        local.set_observer(Arc::new(Observer(tx.clone())));
        let cluster = Arc::new(Cluster {
            config,
            local,
            view: RwLock::new(View::default()),
            out: tx,
            load: OnceLock::new(),
            gone: OnceLock::new(),
            connected: AtomicBool::new(true),
            leaving: AtomicBool::new(false),
        });
        metrics::gauge!("pigeon_bus_connected").set(1.0);
        tokio::spawn(cluster.clone().publish_loop(client, rx));
        tokio::spawn(cluster.clone().receive_loop(subscriber));
        tokio::spawn(cluster.clone().beat_loop());
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(cluster) = weak.upgrade() else { break };
                cluster.connection_event(event);
            }
        });
        // Introduce ourselves at once rather than at the first tick.
        enqueue(&cluster.out, Out::Beat);
        enqueue(&cluster.out, Out::Snapshot);
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Sets how this node measures its load (open connections).
    pub fn set_load(&self, load: Arc<dyn Fn() -> u64 + Send + Sync>) {
        let _ = self.load.set(load);
    }

    /// Sets what to do with the users of a node that died. Exactly one
    /// node (the live one with the smallest id) calls it for each death.
    pub fn set_gone_hook(&self, hook: GoneHook) {
        let _ = self.gone.set(hook);
    }

    fn load(&self) -> u64 {
        self.load.get().map_or(0, |f| f())
    }

    /// Whether the bus is connected now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The live nodes that take clients, this one included unless it is
    /// leaving, least loaded first.
    pub fn nodes(&self) -> Vec<NodeSummary> {
        let mut nodes = self.view.read().expect("view lock poisoned").live();
        if !self.leaving.load(Ordering::SeqCst) {
            nodes.push(NodeSummary {
                id: self.config.node_id.clone(),
                endpoints: self.config.endpoints.clone(),
                load: self.load(),
            });
            nodes.sort_by(|a, b| a.load.cmp(&b.load).then_with(|| a.id.cmp(&b.id)));
        }
        nodes
    }

    /// The client-facing URLs of the live nodes, least loaded first.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes().into_iter().flat_map(|n| n.endpoints).collect()
    }

    /// Where this node's clients should go when it drains: the other live
    /// nodes, least loaded first.
    pub fn redirect_targets(&self) -> Vec<String> {
        self.view
            .read()
            .expect("view lock poisoned")
            .live()
            .into_iter()
            .flat_map(|n| n.endpoints)
            .collect()
    }

    /// Says goodbye to the other nodes (they stop offering this one to
    /// clients); resolves once sent, or after a second.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        let (done, sent) = tokio::sync::oneshot::channel();
        if self.out.try_send(Out::Leaving(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
        }
    }

    fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.config.subject_prefix)
    }

    fn connection_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                let was = self.connected.swap(true, Ordering::SeqCst);
                metrics::gauge!("pigeon_bus_connected").set(1.0);
                if !was {
                    tracing::info!("bus reconnected: devices here sync what they missed");
                    // Pushes from other nodes may have been lost meanwhile.
                    self.local.notify_everyone();
                    enqueue(&self.out, Out::Beat);
                    enqueue(&self.out, Out::Snapshot);
                }
            }
            async_nats::Event::Disconnected => {
                self.connected.store(false, Ordering::SeqCst);
                metrics::gauge!("pigeon_bus_connected").set(0.0);
                tracing::warn!("bus disconnected: pushes between nodes wait until it is back");
            }
            other => tracing::debug!(event = %other, "bus event"),
        }
    }

    async fn beat_loop(self: Arc<Self>) {
        let mut beat = tokio::time::interval(self.config.beat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot = Instant::now();
        loop {
            beat.tick().await;
            if Arc::strong_count(&self) == 1 {
                break; // only this task holds the cluster
            }
            enqueue(&self.out, Out::Beat);
            if last_snapshot.elapsed() >= self.config.snapshot_interval {
                last_snapshot = Instant::now();
                enqueue(&self.out, Out::Snapshot);
            }
            let dead = self
                .view
                .write()
                .expect("view lock poisoned")
                .expire(Instant::now(), self.config.node_timeout);
            for (node, users) in dead {
                tracing::warn!(%node, users = users.len(), "node stopped beating; forgotten");
                self.node_died(users);
            }
            metrics::gauge!("pigeon_cluster_nodes").set(self.nodes().len() as f64);
        }
    }

    /// A dead node's users who are not back elsewhere went offline; the
    /// live node with the smallest id tells their contacts.
    fn node_died(&self, users: Vec<UserId>) {
        let Some(hook) = self.gone.get() else { return };
        let me = &self.config.node_id;
        let smallest = self
            .view
            .read()
            .expect("view lock poisoned")
            .live()
            .iter()
            .all(|n| n.id > *me);
        if !smallest {
            return;
        }
        let gone: Vec<UserId> = users.into_iter().filter(|&u| !self.is_online(u)).collect();
        if !gone.is_empty() {
            hook(gone);
        }
    }

    async fn publish_loop(
        self: Arc<Self>,
        client: async_nats::Client,
        mut rx: mpsc::Receiver<Out>,
    ) {
        let mut epoch = 0u64;
        while let Some(out) = rx.recv().await {
            let mut done = None;
            let mut messages: Vec<(&str, Kind)> = Vec::with_capacity(1);
            match out {
                Out::Events(batch) => {
                    let msg = wire::EventsMsg {
                        user_id: batch.user_id,
                        prev_seq: batch.prev_seq,
                        last_seq: batch.last_seq,
                        events: batch.events.clone(),
                    };
                    if msg.encoded_len() <= self.config.message_bytes_max {
                        messages.push(("events", Kind::Events(msg)));
                    } else {
                        messages.push((
                            "notices",
                            Kind::Notice(wire::NoticeMsg {
                                users: vec![batch.user_id],
                                everyone: false,
                            }),
                        ));
                    }
                }
                Out::Notice(users) => {
                    for chunk in users.chunks(USERS_PER_MESSAGE) {
                        messages.push((
                            "notices",
                            Kind::Notice(wire::NoticeMsg {
                                users: chunk.to_vec(),
                                everyone: false,
                            }),
                        ));
                    }
                }
                Out::Everyone => messages.push((
                    "notices",
                    Kind::Notice(wire::NoticeMsg {
                        users: Vec::new(),
                        everyone: true,
                    }),
                )),
                Out::Ephemeral(users, body) => messages.push((
                    "ephemeral",
                    Kind::Ephemeral(wire::EphemeralMsg {
                        users,
                        frame: Some(Frame {
                            body: Some((*body).clone()),
                            ..Default::default()
                        }),
                    }),
                )),
                Out::Close { user, code } => messages.push((
                    "control",
                    Kind::Close(wire::CloseMsg {
                        user_id: user,
                        code,
                        token_hash: String::new(),
                    }),
                )),
                Out::Revoke { user, token_hash } => messages.push((
                    "control",
                    Kind::Close(wire::CloseMsg {
                        user_id: user,
                        code: 0,
                        token_hash,
                    }),
                )),
                Out::Presence { user, here } => messages.push((
                    "control",
                    Kind::Presence(wire::PresenceMsg {
                        user_id: user,
                        here,
                    }),
                )),
                Out::Beat => {
                    if !self.leaving.load(Ordering::SeqCst) {
                        messages.push((
                            "control",
                            Kind::Beat(wire::BeatMsg {
                                endpoints: self.config.endpoints.clone(),
                                load: self.load(),
                            }),
                        ));
                    }
                }
                Out::Snapshot => {
                    epoch += 1;
                    let users = self.local.users_here();
                    let mut chunks = users.chunks(USERS_PER_MESSAGE).peekable();
                    if chunks.peek().is_none() {
                        messages.push((
                            "control",
                            Kind::Snapshot(wire::SnapshotMsg {
                                epoch,
                                users: Vec::new(),
                                last: true,
                            }),
                        ));
                    }
                    while let Some(chunk) = chunks.next() {
                        messages.push((
                            "control",
                            Kind::Snapshot(wire::SnapshotMsg {
                                epoch,
                                users: chunk.to_vec(),
                                last: chunks.peek().is_none(),
                            }),
                        ));
                    }
                }
                Out::Leaving(sent) => {
                    messages.push(("control", Kind::Leaving(wire::LeavingMsg {})));
                    done = Some(sent);
                }
            }
            for (subject, kind) in messages {
                let msg = BusMessage {
                    node: self.config.node_id.clone(),
                    kind: Some(kind),
                };
                let payload = bytes::Bytes::from(msg.encode_to_vec());
                if let Err(e) = client.publish(self.subject(subject), payload).await {
                    metrics::counter!("pigeon_bus_dropped_total").increment(1);
                    tracing::debug!(error = %e, "bus publish failed");
                } else {
                    metrics::counter!("pigeon_bus_published_total").increment(1);
                }
            }
            if let Some(done) = done {
                let _ = client.flush().await;
                let _ = done.send(());
            }
        }
    }

    async fn receive_loop(self: Arc<Self>, mut subscriber: async_nats::Subscriber) {
        while let Some(message) = subscriber.next().await {
            metrics::counter!("pigeon_bus_received_total").increment(1);
            match BusMessage::decode(message.payload) {
                Ok(msg) if msg.node != self.config.node_id => self.apply(msg),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "undecodable bus message ignored"),
            }
        }
        tracing::warn!("bus subscription ended");
    }

    /// Applies what another node said.
    fn apply(&self, msg: BusMessage) {
        let now = Instant::now();
        let node = msg.node;
        match msg.kind {
            Some(Kind::Events(e)) => self.local.notify(Arc::new(PushBatch {
                user_id: e.user_id,
                prev_seq: e.prev_seq,
                last_seq: e.last_seq,
                events: e.events,
            })),
            Some(Kind::Notice(n)) if n.everyone => self.local.notify_everyone(),
            Some(Kind::Notice(n)) => self.local.notify_stream(n.users.into()),
            Some(Kind::Ephemeral(e)) => {
                if let Some(body) = e.frame.and_then(|f| f.body) {
                    self.local.push_ephemeral(&e.users, body);
                }
            }
            Some(Kind::Close(c)) if !c.token_hash.is_empty() => {
                self.local.revoke_here(c.user_id, &c.token_hash)
            }
            Some(Kind::Close(c)) => {
                let code = pigeon_proto::ErrorCode::try_from(c.code)
                    .unwrap_or(pigeon_proto::ErrorCode::TokenRevoked);
                self.local.close_user(c.user_id, code);
            }
            Some(Kind::Presence(p)) => {
                self.view
                    .write()
                    .expect("view lock poisoned")
                    .presence(&node, p.user_id, p.here, now);
            }
            Some(Kind::Beat(b)) => {
                let new = self.view.write().expect("view lock poisoned").beat(
                    &node,
                    b.endpoints,
                    b.load,
                    now,
                );
                if new {
                    tracing::info!(%node, "node joined");
                    // Tell the newcomer who is here.
                    enqueue(&self.out, Out::Beat);
                    enqueue(&self.out, Out::Snapshot);
                }
            }
            Some(Kind::Snapshot(s)) => {
                self.view
                    .write()
                    .expect("view lock poisoned")
                    .snapshot(&node, s.epoch, &s.users, s.last, now);
            }
            Some(Kind::Leaving(_)) => {
                tracing::info!(%node, "node leaving");
                self.view
                    .write()
                    .expect("view lock poisoned")
                    .leaving(&node, now);
            }
            None => {}
        }
    }
}

impl Notifier for Cluster {
    fn notify(&self, batch: Arc<PushBatch>) {
        self.local.notify(batch.clone());
        enqueue(&self.out, Out::Events(batch));
    }

    fn notify_stream(&self, users: Arc<[UserId]>) {
        self.local.notify_stream(users.clone());
        enqueue(&self.out, Out::Notice(users));
    }

    fn push_ephemeral(&self, users: &[UserId], body: Body) {
        // Ephemeral pushes are never stored, so a node that has just been
        // joined by a recipient may miss one: only those known online
        // elsewhere are sent over the bus.
        let remote = self
            .view
            .read()
            .expect("view lock poisoned")
            .online_of(users);
        if !remote.is_empty() {
            enqueue(&self.out, Out::Ephemeral(remote, Arc::new(body.clone())));
        }
        self.local.push_ephemeral(users, body);
    }

    fn notify_everyone(&self) {
        self.local.notify_everyone();
        enqueue(&self.out, Out::Everyone);
    }

    fn is_online(&self, user: UserId) -> bool {
        self.local.is_online(user)
            || self
                .view
                .read()
                .expect("view lock poisoned")
                .is_online(user)
    }

    fn close_user(&self, user: UserId, code: pigeon_proto::ErrorCode) {
        self.local.close_user(user, code);
        enqueue(
            &self.out,
            Out::Close {
                user,
                code: code as i32,
            },
        );
    }
}
