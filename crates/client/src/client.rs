//! The reconnecting client: keeps one connection up (exponential backoff
//! with jitter), runs the sync loop and delivers its events on a bounded
//! channel, heartbeats, and retries sends with the same client message id
//! until they are acknowledged.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pigeon_proto::ErrorCode;
use pigeon_proto::v1::{self, frame::Body};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{
    Instant, Interval, MissedTickBehavior, interval_at, sleep, sleep_until, timeout_at,
};

use crate::backoff::Backoff;
use crate::connection::{ConnectOptions, Connection};
use crate::error::ClientError;
use crate::new_client_msg_id;

/// Events waiting for the application; when full, the client stops reading
/// from the server until the application catches up.
pub(crate) const CLIENT_EVENTS_QUEUE_MAX: usize = 1024;
/// Events asked for per SyncRequest (0: the server's maximum).
const SYNC_LIMIT: u32 = 0;
/// Heartbeat period when the Welcome does not give one.
const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest heartbeat period, whatever the Welcome says.
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// How the reconnecting [`Client`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where to connect; must carry a token (the client syncs a user's log;
    /// without one the first sync is refused as UNAUTHENTICATED and the client stops).
    pub connect: ConnectOptions,
    /// The sync key persisted after the last applied batch (empty: from the start).
    pub sync_key: Vec<u8>,
    /// Shortest wait before a reconnect.
    pub backoff_min: Duration,
    /// Longest wait before a reconnect.
    pub backoff_max: Duration,
    /// Overall deadline of [`Client::send`], retries included.
    pub send_timeout: Duration,
    /// Other protocol URLs of the same service, tried in turn when
    /// `connect.url` cannot be reached.
    pub endpoints: Vec<String>,
    /// An `http://host:port/v1/endpoints` address to learn the service's
    /// gateways from when none of the known ones answers.
    pub endpoints_url: Option<String>,
}

impl ClientOptions {
    /// Options with an empty sync key, 200 ms..30 s backoff and a 60 s send deadline.
    pub fn new(connect: ConnectOptions) -> Self {
        ClientOptions {
            connect,
            sync_key: Vec::new(),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            endpoints: Vec::new(),
            endpoints_url: None,
        }
    }

    /// The same options starting from a persisted sync key.
    pub fn with_sync_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.sync_key = key.into();
        self
    }
}

/// What the client tells the application, in order.
#[derive(Debug)]
pub enum ClientEvent {
    /// A connection is up (after each reconnect too).
    Connected {
        /// The server's Welcome.
        welcome: v1::Welcome,
    },
    /// The connection ended or a connect attempt failed; the client retries after a backoff.
    Disconnected {
        /// For a person.
        reason: String,
    },
    /// A batch of events in seq order and the key after them: apply, then persist `key`.
    Events {
        /// The events, oldest first.
        events: Vec<v1::Event>,
        /// The sync key after these events.
        key: Vec<u8>,
    },
    /// A contact came online or went offline (a push; never stored, so
    /// missed while disconnected: ask with `get_presence` after `Connected`).
    Presence(v1::Presence),
    /// Someone started or stopped typing in a conversation (a push; never stored).
    Typing(v1::TypingPush),
    /// The stored key is older than the server retains (or not one it
    /// issued): reload conversations/history; the client restarts from an
    /// empty key.
    ResyncRequired,
    /// The client stopped for good (token invalid/expired/revoked, upgrade required).
    Stopped {
        /// Why.
        error: ClientError,
    },
}

/// A reconnecting client. Clone-able; the background task stops when the
/// last clone is dropped or on [`Client::shutdown`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
    task: AbortHandle,
    send_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// State shared by the handles and the background task.
struct Shared {
    link: watch::Sender<Link>,
    key: Mutex<Vec<u8>>,
}

#[derive(Clone)]
struct Link {
    /// Counts connections made; a send that lost its connection waits for a newer one.
    generation: u64,
    state: LinkState,
}

#[derive(Clone)]
enum LinkState {
    Connecting,
    Up(Arc<Connection>),
    Stopped(Arc<ClientError>),
    ShutDown,
}

impl Shared {
    fn key_lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.key.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self) -> Vec<u8> {
        self.key_lock().clone()
    }

    fn set_key(&self, key: Vec<u8>) {
        *self.key_lock() = key;
    }

    /// Moves to `state` unless the client has already stopped or shut down.
    fn set_state(&self, state: LinkState) {
        self.link.send_modify(|link| {
            if matches!(link.state, LinkState::Stopped(_) | LinkState::ShutDown) {
                return;
            }
            if matches!(state, LinkState::Up(_)) {
                link.generation += 1;
            }
            link.state = state;
        });
    }
}

/// What a send should do after a failed attempt.
enum Retry {
    /// Give up and return the error.
    Never,
    /// Try again once a newer connection is up.
    NewConnection,
    /// Try again on the current connection after this delay.
    After(Duration),
}

impl Client {
    /// Starts the background task (needs a Tokio runtime) and returns the
    /// handle and the event channel. If the channel receiver is dropped, the
    /// client keeps its connection for sends but stops syncing.
    pub fn start(opts: ClientOptions) -> (Client, mpsc::Receiver<ClientEvent>) {
        let (events, events_rx) = mpsc::channel(CLIENT_EVENTS_QUEUE_MAX);
        let (link, _) = watch::channel(Link {
            generation: 0,
            state: LinkState::Connecting,
        });
        let shared = Arc::new(Shared {
            link,
            key: Mutex::new(opts.sync_key.clone()),
        });
        let handle = Handle {
            shared: shared.clone(),
            task: tokio::spawn(run(shared, opts.clone(), events)).abort_handle(),
            send_timeout: opts.send_timeout,
            backoff_min: opts.backoff_min,
            backoff_max: opts.backoff_max,
        };
        let client = Client {
            inner: Arc::new(handle),
        };
        (client, events_rx)
    }

    /// Sends with a new client message id (see [`Client::send_with_id`]).
    pub async fn send(
        &self,
        target: v1::Target,
        content: v1::Content,
    ) -> Result<v1::SendResponse, ClientError> {
        self.send_with_id(&new_client_msg_id(), target, content)
            .await
    }

    /// Waits for a connection and sends. On a lost connection, a Goodbye, an
    /// I/O error, a timeout, `BUSY`, `SHUTTING_DOWN` or `INTERNAL` it retries
    /// with the same id (the server answers a duplicate with the first ack)
    /// until `send_timeout` has passed, then returns [`ClientError::Timeout`].
    /// Other server errors are returned at once; after the client stopped,
    /// the stop reason is returned.
    pub async fn send_with_id(
        &self,
        client_msg_id: &str,
        target: v1::Target,
        content: v1::Content,
    ) -> Result<v1::SendResponse, ClientError> {
        let deadline = Instant::now() + self.inner.send_timeout;
        let mut link = self.inner.shared.link.subscribe();
        let mut backoff = Backoff::new(self.inner.backoff_min, self.inner.backoff_max);
        let mut generation_min = 0;
        loop {
            let (generation, conn) = wait_up(&mut link, deadline, generation_min).await?;
            let attempt = conn.send(client_msg_id, target.clone(), content.clone());
            let error = match timeout_at(deadline, attempt).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(Ok(ack)) => return Ok(ack),
                Ok(Err(error)) => error,
            };
            tracing::debug!(client_msg_id, %error, "send attempt failed");
            match retry_for(&error, &mut backoff) {
                Retry::Never => return Err(error),
                Retry::NewConnection => generation_min = generation + 1,
                Retry::After(delay) => sleep_until(deadline.min(Instant::now() + delay)).await,
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }

    /// The current connection, waiting up to `send_timeout` for one to come up.
    async fn current(&self) -> Result<Arc<Connection>, ClientError> {
        let deadline = Instant::now() + self.inner.send_timeout;
        let mut link = self.inner.shared.link.subscribe();
        Ok(wait_up(&mut link, deadline, 0).await?.1)
    }

    /// The key after the last `Events` delivered to the channel.
    pub fn sync_key(&self) -> Vec<u8> {
        self.inner.shared.key()
    }

    /// The current connection, if one is up (for requests such as history).
    pub async fn connection(&self) -> Option<Arc<Connection>> {
        match &self.inner.shared.link.borrow().state {
            LinkState::Up(conn) if !conn.is_closed() => Some(conn.clone()),
            _ => None,
        }
    }

    /// Stops the client: the background task ends, the connection is closed,
    /// the event channel ends and sends fail with `Closed`.
    pub async fn shutdown(&self) {
        let mut previous = LinkState::ShutDown;
        self.inner.shared.link.send_modify(|link| {
            previous = std::mem::replace(&mut link.state, LinkState::ShutDown);
        });
        self.inner.task.abort();
        if let LinkState::Up(conn) = previous {
            conn.close().await;
        }
    }
}

/// Waits until a connection of generation `generation_min` or newer is up
/// (or the client has stopped, or `deadline` passed).
async fn wait_up(
    link: &mut watch::Receiver<Link>,
    deadline: Instant,
    generation_min: u64,
) -> Result<(u64, Arc<Connection>), ClientError> {
    let ready = link.wait_for(|l| match l.state {
        LinkState::Connecting => false,
        LinkState::Up(_) => l.generation >= generation_min,
        LinkState::Stopped(_) | LinkState::ShutDown => true,
    });
    let l = match timeout_at(deadline, ready).await {
        Err(_) => return Err(ClientError::Timeout),
        Ok(Err(_)) => return Err(ClientError::Closed),
        Ok(Ok(l)) => l,
    };
    match &l.state {
        LinkState::Up(conn) => Ok((l.generation, conn.clone())),
        LinkState::Stopped(error) => Err(error.duplicate()),
        LinkState::ShutDown | LinkState::Connecting => Err(ClientError::Closed),
    }
}

/// Defines `Client` methods that wait for a connection (up to
/// `send_timeout`) and make one request on it, without retries: unlike
/// sends, most of these are not idempotent.
macro_rules! forward {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Requests forwarded to the current connection (see [`Connection`]'s
        /// methods of the same names). Each waits up to `send_timeout` for a
        /// connection, then makes one attempt: errors, a lost connection
        /// included, are returned rather than retried.
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret, ClientError> {
                    self.current().await?.$name($($arg),*).await
                }
            )*
        }
    };
}

forward! {
    /// See [`Connection::history`].
    fn history(target: v1::Target, before: u64, limit: u32) -> v1::HistoryResponse;
    /// See [`Connection::list_conversations`].
    fn list_conversations(limit: u32) -> v1::ListConversationsResponse;
    /// See [`Connection::mark_read`].
    fn mark_read(conversation_id: &str, read_up_to: u64) -> v1::MarkReadResponse;
    /// See [`Connection::create_group`].
    fn create_group(
        name: &str,
        description: &str,
        members: &[&str],
        settings: Option<v1::GroupSettings>
    ) -> v1::GroupInfo;
    /// See [`Connection::update_group`].
    fn update_group(req: v1::UpdateGroupRequest) -> v1::GroupInfo;
    /// See [`Connection::add_members`].
    fn add_members(conversation_id: &str, usernames: &[&str]) -> v1::AddMembersResponse;
    /// See [`Connection::remove_members`].
    fn remove_members(conversation_id: &str, usernames: &[&str]) -> v1::RemoveMembersResponse;
    /// See [`Connection::leave_group`].
    fn leave_group(conversation_id: &str) -> ();
    /// See [`Connection::set_role`].
    fn set_role(conversation_id: &str, username: &str, role: v1::GroupRole) -> v1::GroupInfo;
    /// See [`Connection::transfer_ownership`].
    fn transfer_ownership(conversation_id: &str, username: &str) -> v1::GroupInfo;
    /// See [`Connection::dissolve_group`].
    fn dissolve_group(conversation_id: &str) -> ();
    /// See [`Connection::get_group`].
    fn get_group(conversation_id: &str) -> v1::GetGroupResponse;
    /// See [`Connection::list_members`].
    fn list_members(conversation_id: &str, after_user_id: u64, limit: u32) -> v1::ListMembersResponse;
    /// See [`Connection::recall`].
    fn recall(conversation_id: &str, conv_seq: u64) -> ();
    /// See [`Connection::edit`].
    fn edit(conversation_id: &str, conv_seq: u64, content: v1::Content) -> v1::EditMessageResponse;
    /// See [`Connection::delete_for_me`].
    fn delete_for_me(conversation_id: &str, conv_seq: u64) -> ();
    /// See [`Connection::get_receipts`].
    fn get_receipts(conversation_id: &str, conv_seqs: &[u64]) -> Vec<v1::ReceiptSummary>;
    /// See [`Connection::set_typing`].
    fn set_typing(conversation_id: &str, typing: bool) -> ();
    /// See [`Connection::get_presence`].
    fn get_presence(usernames: &[&str]) -> Vec<v1::Presence>;
    /// See [`Connection::set_privacy`].
    fn set_privacy(hide_presence: bool) -> bool;
    /// See [`Connection::block`].
    fn block(username: &str) -> ();
    /// See [`Connection::unblock`].
    fn unblock(username: &str) -> ();
    /// See [`Connection::list_blocked`].
    fn list_blocked() -> Vec<String>;
}

fn retry_for(error: &ClientError, backoff: &mut Backoff) -> Retry {
    match error {
        ClientError::Closed | ClientError::Goodbye { .. } | ClientError::Io(_) => {
            Retry::NewConnection
        }
        // The answer may still come on a slow but live connection; the heartbeat replaces a dead one.
        ClientError::Timeout => Retry::After(Duration::ZERO),
        ClientError::Server {
            code,
            retry_after_ms,
            ..
        } => match code {
            ErrorCode::ShuttingDown => Retry::NewConnection,
            ErrorCode::Busy => {
                let hint = Duration::from_millis(u64::from(*retry_after_ms));
                Retry::After(hint.max(backoff.next_delay(&mut rand::rng())))
            }
            ErrorCode::Internal => Retry::After(backoff.next_delay(&mut rand::rng())),
            _ => Retry::Never,
        },
        ClientError::InvalidUrl(_) | ClientError::Tls(_) | ClientError::Protocol(_) => Retry::Never,
    }
}

/// Why a connection's session ended.
enum SessionEnd {
    /// Reconnect after a backoff.
    Lost(String),
    /// The server asked us to reconnect, perhaps elsewhere, perhaps later.
    Redirected {
        reason: String,
        to: Vec<String>,
        after: Duration,
    },
    /// Stop for good.
    Fatal(ClientError),
}

fn end_for(error: ClientError) -> SessionEnd {
    if error.is_fatal() {
        SessionEnd::Fatal(error)
    } else {
        SessionEnd::Lost(error.to_string())
    }
}

/// The endpoints to try, the current one first.
struct Endpoints {
    urls: std::collections::VecDeque<String>,
}

impl Endpoints {
    fn new(opts: &ClientOptions) -> Self {
        let mut e = Endpoints {
            urls: Default::default(),
        };
        e.learn(
            std::iter::once(opts.connect.url.clone()).chain(opts.endpoints.iter().cloned()),
            false,
        );
        e
    }

    fn current(&self) -> String {
        self.urls.front().cloned().unwrap_or_default()
    }

    /// Tries the next endpoint next time.
    fn rotate(&mut self) {
        self.urls.rotate_left(1.min(self.urls.len()));
    }

    /// Adds URLs, first in line if `prefer`; keeps each once.
    fn learn(&mut self, urls: impl IntoIterator<Item = String>, prefer: bool) {
        let mut fresh: Vec<String> = Vec::new();
        for u in urls {
            if !u.is_empty() && !fresh.contains(&u) {
                fresh.push(u);
            }
        }
        self.urls.retain(|u| !fresh.contains(u));
        if prefer {
            for u in fresh.into_iter().rev() {
                self.urls.push_front(u);
            }
        } else {
            self.urls.extend(fresh);
        }
    }
}

/// The background task: connect, run a session, back off, repeat.
async fn run(shared: Arc<Shared>, opts: ClientOptions, events: mpsc::Sender<ClientEvent>) {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    let mut rng = StdRng::from_os_rng();
    let mut endpoints = Endpoints::new(&opts);
    let mut failures = 0usize;
    loop {
        let mut connect = opts.connect.clone();
        connect.url = endpoints.current();
        let end = match Connection::connect(&connect).await {
            Ok(conn) => {
                backoff.reset();
                failures = 0;
                let conn = Arc::new(conn);
                shared.set_state(LinkState::Up(conn.clone()));
                let end = Session::new(&conn, &shared, &events).run().await;
                shared.set_state(LinkState::Connecting);
                conn.close().await;
                end
            }
            Err(error) => {
                // Unreachable: try the next known endpoint, and once all
                // have failed, ask the service for its current list.
                failures += 1;
                endpoints.rotate();
                if failures >= endpoints.urls.len()
                    && let Some(url) = &opts.endpoints_url
                    && let Ok(list) = crate::discovery::fetch_endpoints(url).await
                {
                    endpoints.learn(list, false);
                    failures = 0;
                }
                end_for(error)
            }
        };
        let mut wait = backoff.next_delay(&mut rng);
        match end {
            SessionEnd::Fatal(error) => {
                tracing::warn!(%error, "client stopped");
                shared.set_state(LinkState::Stopped(Arc::new(error.duplicate())));
                let _ = events.send(ClientEvent::Stopped { error }).await;
                return;
            }
            SessionEnd::Lost(reason) => {
                tracing::debug!(%reason, "disconnected");
                let _ = events.send(ClientEvent::Disconnected { reason }).await;
            }
            SessionEnd::Redirected { reason, to, after } => {
                tracing::debug!(%reason, ?to, "redirected");
                endpoints.learn(to, true);
                // The server said when: no need to back off further.
                wait = after;
                let _ = events.send(ClientEvent::Disconnected { reason }).await;
            }
        }
        sleep(wait).await;
    }
}

/// One connection's life: the initial sync, then pushes and heartbeats.
struct Session<'a> {
    conn: &'a Connection,
    shared: &'a Shared,
    events: &'a mpsc::Sender<ClientEvent>,
    heartbeat: Interval,
}

impl<'a> Session<'a> {
    fn new(
        conn: &'a Connection,
        shared: &'a Shared,
        events: &'a mpsc::Sender<ClientEvent>,
    ) -> Session<'a> {
        let period = match conn.welcome().heartbeat_interval_ms {
            0 => HEARTBEAT_INTERVAL_DEFAULT,
            ms => Duration::from_millis(u64::from(ms)).max(HEARTBEAT_INTERVAL_MIN),
        };
        let mut heartbeat = interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Session {
            conn,
            shared,
            events,
            heartbeat,
        }
    }

    async fn run(mut self) -> SessionEnd {
        match self.drive().await {
            Err(end) => end,
            Ok(never) => match never {},
        }
    }

    async fn drive(&mut self) -> Result<Infallible, SessionEnd> {
        let welcome = self.conn.welcome().clone();
        self.deliver(ClientEvent::Connected { welcome }, None)
            .await?;
        self.sync_all().await?;
        loop {
            let push = tokio::select! {
                push = self.conn.next_push() => push,
                _ = self.heartbeat.tick() => {
                    self.beat().await?;
                    continue;
                }
            };
            match push {
                None => return Err(SessionEnd::Lost("connection closed".into())),
                Some(Body::EventsPush(push)) => self.apply_push(push).await?,
                Some(Body::SyncNotice(_)) => self.sync_all().await?,
                Some(Body::PresencePush(v1::PresencePush {
                    presence: Some(presence),
                })) => {
                    self.deliver(ClientEvent::Presence(presence), None).await?;
                }
                Some(Body::TypingPush(typing)) => {
                    self.deliver(ClientEvent::Typing(typing), None).await?;
                }
                Some(Body::Goodbye(goodbye)) => {
                    let (to, after) = (goodbye.redirect_to.clone(), goodbye.retry_after_ms);
                    let error = ClientError::from_goodbye(goodbye);
                    if error.is_fatal() {
                        return Err(SessionEnd::Fatal(error));
                    }
                    return Err(SessionEnd::Redirected {
                        reason: error.to_string(),
                        to,
                        after: Duration::from_millis(u64::from(after)),
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// Applies a push that continues from our key; anything else means we
    /// missed something, so sync instead.
    async fn apply_push(&mut self, push: v1::EventsPush) -> Result<(), SessionEnd> {
        if self.events.is_closed() {
            return Ok(());
        }
        if push.prev_key != self.shared.key() {
            return self.sync_all().await;
        }
        if push.events.is_empty() {
            self.shared.set_key(push.key);
        } else {
            let key = push.key.clone();
            let event = ClientEvent::Events {
                events: push.events,
                key: push.key,
            };
            self.deliver(event, Some(key)).await?;
        }
        Ok(())
    }

    /// Syncs from the current key until the server has nothing more.
    async fn sync_all(&mut self) -> Result<(), SessionEnd> {
        loop {
            if self.events.is_closed() {
                return Ok(());
            }
            let key = self.shared.key();
            match self.conn.sync(&key, SYNC_LIMIT).await {
                Ok(resp) => {
                    let stalled = resp.events.is_empty() && resp.key == key;
                    if resp.events.is_empty() {
                        self.shared.set_key(resp.key);
                    } else {
                        let event = ClientEvent::Events {
                            events: resp.events,
                            key: resp.key.clone(),
                        };
                        self.deliver(event, Some(resp.key)).await?;
                    }
                    // `stalled`: has_more without progress would loop forever.
                    if !resp.has_more || stalled {
                        return Ok(());
                    }
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::ResyncRequired | ErrorCode::InvalidSyncKey)
                    ) =>
                {
                    if key.is_empty() {
                        return Err(SessionEnd::Lost(format!(
                            "the server refuses the empty sync key: {e}"
                        )));
                    }
                    tracing::warn!(error = %e, "sync key refused; resyncing from the start");
                    self.deliver(ClientEvent::ResyncRequired, Some(Vec::new()))
                        .await?;
                }
                Err(e) => return Err(end_for(e)),
            }
        }
    }

    /// Hands an event to the application, heartbeating while it waits for
    /// room, and then sets the key (if any) together with the delivery.
    /// Returns false when the application dropped the receiver.
    async fn deliver(
        &mut self,
        event: ClientEvent,
        key: Option<Vec<u8>>,
    ) -> Result<bool, SessionEnd> {
        let events = self.events;
        let reserve = events.reserve();
        tokio::pin!(reserve);
        let permit = loop {
            tokio::select! {
                permit = &mut reserve => break permit,
                _ = self.heartbeat.tick() => self.beat().await?,
            }
        };
        let Ok(permit) = permit else {
            return Ok(false);
        };
        if let Some(key) = key {
            self.shared.set_key(key);
        }
        permit.send(event);
        Ok(true)
    }

    async fn beat(&mut self) -> Result<(), SessionEnd> {
        match self.conn.ping().await {
            Ok(_) => Ok(()),
            Err(ClientError::Timeout) => Err(SessionEnd::Lost("heartbeat: no pong in time".into())),
            Err(e) => Err(end_for(e)),
        }
    }
}

#[cfg(test)]
mod tests {

    /// Checks the endpoint list: the configured URL first, rotation on
    /// failure, redirects tried first, each URL kept once.
    #[test]
    fn endpoints_rotate_and_prefer_redirects() {
        let mut o = ClientOptions::new(ConnectOptions::new("tcp://a:1"));
        o.endpoints = vec!["tcp://b:1".into(), "tcp://a:1".into()];
        let mut e = Endpoints::new(&o);
        assert_eq!(e.current(), "tcp://a:1");
        e.rotate();
        assert_eq!(e.current(), "tcp://b:1");
        e.rotate();
        assert_eq!(e.current(), "tcp://a:1");
        e.learn(vec!["tcp://c:1".into(), "tcp://b:1".into()], true);
        assert_eq!(
            e.urls.iter().cloned().collect::<Vec<_>>(),
            vec!["tcp://c:1", "tcp://b:1", "tcp://a:1"]
        );
        e.learn(vec!["tcp://d:1".into()], false);
        assert_eq!(e.urls.back().map(String::as_str), Some("tcp://d:1"));
    }

    use super::*;
    use crate::fake_server::{FakePeer, FakeServer, WAIT};
    use crate::{text, to_user};
    use pigeon_proto::v1::Frame;
    use tokio::time::timeout;

    fn options(url: &str) -> ClientOptions {
        let mut connect = ConnectOptions::new(url).with_token("t0k3n");
        connect.request_timeout = Duration::from_secs(2);
        let mut o = ClientOptions::new(connect);
        o.backoff_min = Duration::from_millis(10);
        o.backoff_max = Duration::from_millis(50);
        o.send_timeout = Duration::from_secs(5);
        o
    }

    async fn next(rx: &mut mpsc::Receiver<ClientEvent>) -> ClientEvent {
        timeout(WAIT, rx.recv())
            .await
            .expect("no client event")
            .expect("channel ended")
    }

    /// The seqs of an Events batch and its key, or a panic naming what came instead.
    async fn next_events(rx: &mut mpsc::Receiver<ClientEvent>) -> (Vec<u64>, Vec<u8>) {
        match next(rx).await {
            ClientEvent::Events { events, key } => (events.iter().map(|e| e.seq).collect(), key),
            other => panic!("expected events, got {other:?}"),
        }
    }

    async fn expect_connected(rx: &mut mpsc::Receiver<ClientEvent>) {
        let event = next(rx).await;
        assert!(
            matches!(event, ClientEvent::Connected { .. }),
            "got {event:?}"
        );
    }

    fn ack(duplicate: bool) -> Body {
        Body::SendResponse(v1::SendResponse {
            conversation_id: "d:1:2".into(),
            conv_seq: 7,
            sent_at_ms: 1,
            duplicate,
        })
    }

    /// Receives a SyncRequest from `key` and a SendRequest in whichever order
    /// they come and answers the sync with events `seqs` and `new_key`;
    /// returns the send's request id and client_msg_id.
    async fn sync_and_send(
        peer: &mut FakePeer,
        key: &str,
        seqs: &[u64],
        new_key: &str,
    ) -> (u64, String) {
        let mut send = None;
        let mut synced = false;
        while send.is_none() || !synced {
            match peer.recv().await.expect("client went away") {
                (id, Body::SyncRequest(r)) => {
                    assert_eq!(r.key, key.as_bytes());
                    peer.send_sync(id, seqs, new_key, false).await;
                    synced = true;
                }
                (id, Body::SendRequest(r)) => send = Some((id, r.client_msg_id)),
                other => panic!("unexpected {other:?}"),
            }
        }
        send.unwrap()
    }

    /// Checks the sync loop: syncing until has_more is false, applying a push
    /// whose prev_key matches, syncing instead on a mismatched push and on a
    /// SyncNotice, and stopping on Goodbye(TOKEN_REVOKED).
    #[tokio::test]
    async fn sync_loop_follows_pushes_and_keys() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, hello) = server.accept_hello().await;
            assert_eq!(hello.token, "t0k3n");
            let (id, key) = peer.expect_sync().await;
            assert_eq!(key, b"");
            peer.send_sync(id, &[1], "k1", true).await;
            let (id, key) = peer.expect_sync().await;
            assert_eq!(key, b"k1");
            peer.send_sync(id, &[2], "k2", false).await;
            peer.push_events("k2", &[3], "k3").await;
            // A push that does not continue from the client's key must not be applied.
            peer.push_events("kX", &[99], "k99").await;
            let (id, key) = peer.expect_sync().await;
            assert_eq!(key, b"k3");
            peer.send_sync(id, &[4], "k4", false).await;
            peer.send(Frame::push(Body::SyncNotice(v1::SyncNotice {})))
                .await;
            let (id, key) = peer.expect_sync().await;
            assert_eq!(key, b"k4");
            peer.send_sync(id, &[], "k4", false).await;
            peer.push_events("k4", &[5], "k5").await;
            peer.send(Frame::goodbye(ErrorCode::TokenRevoked, "revoked"))
                .await;
            peer
        });
        let (client, mut rx) = Client::start(options(&url));
        expect_connected(&mut rx).await;
        assert_eq!(next_events(&mut rx).await, (vec![1], b"k1".to_vec()));
        assert_eq!(next_events(&mut rx).await, (vec![2], b"k2".to_vec()));
        assert_eq!(next_events(&mut rx).await, (vec![3], b"k3".to_vec()));
        assert_eq!(next_events(&mut rx).await, (vec![4], b"k4".to_vec()));
        assert_eq!(next_events(&mut rx).await, (vec![5], b"k5".to_vec()));
        match next(&mut rx).await {
            ClientEvent::Stopped { error } => {
                assert_eq!(error.code(), Some(ErrorCode::TokenRevoked))
            }
            other => panic!("expected stopped, got {other:?}"),
        }
        assert!(timeout(WAIT, rx.recv()).await.unwrap().is_none());
        assert_eq!(client.sync_key(), b"k5");
        let err = client.send(to_user("bob"), text("hi")).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
        let _peer = server_side.await.unwrap();
    }

    /// Checks a send survives a dropped connection and a BUSY answer by
    /// retrying with the same client_msg_id after reconnecting (syncing from
    /// the kept key), and that other server errors are returned at once.
    #[tokio::test]
    async fn send_retries_with_same_id_across_reconnect() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            let (_, first_id) = sync_and_send(&mut peer, "", &[1], "k1").await;
            drop(peer); // the connection dies before the ack

            let (mut peer, _) = server.accept_hello().await;
            let (id, msg_id) = sync_and_send(&mut peer, "k1", &[], "k1").await;
            assert_eq!(msg_id, first_id, "a retry must reuse the client_msg_id");
            let mut busy = Frame::error(id, ErrorCode::Busy, "busy");
            if let Some(Body::Error(e)) = &mut busy.body {
                e.retry_after_ms = 20;
            }
            peer.send(busy).await;
            match peer.recv().await {
                Some((id, Body::SendRequest(r))) => {
                    assert_eq!(r.client_msg_id, first_id);
                    peer.send(Frame::new(id, ack(true))).await;
                }
                other => panic!("unexpected {other:?}"),
            }
            match peer.recv().await {
                Some((id, Body::SendRequest(_))) => {
                    peer.send(Frame::error(id, ErrorCode::UserNotFound, "no such user"))
                        .await;
                }
                other => panic!("unexpected {other:?}"),
            }
            peer
        });
        let (client, mut rx) = Client::start(options(&url));
        let sender = client.clone();
        let send = tokio::spawn(async move { sender.send(to_user("bob"), text("hi")).await });
        expect_connected(&mut rx).await;
        assert_eq!(next_events(&mut rx).await, (vec![1], b"k1".to_vec()));
        let event = next(&mut rx).await;
        assert!(
            matches!(event, ClientEvent::Disconnected { .. }),
            "got {event:?}"
        );
        expect_connected(&mut rx).await;
        let ack = timeout(WAIT, send).await.unwrap().unwrap().unwrap();
        assert!(ack.duplicate);
        assert_eq!(ack.conv_seq, 7);
        let err = client
            .send(to_user("nobody"), text("hi"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UserNotFound));
        assert!(client.connection().await.is_some());
        client.shutdown().await;
        assert!(timeout(WAIT, rx.recv()).await.unwrap().is_none());
        assert!(matches!(
            client.send(to_user("bob"), text("hi")).await,
            Err(ClientError::Closed)
        ));
        let _peer = server_side.await.unwrap();
    }

    /// Checks RESYNC_REQUIRED on sync yields ResyncRequired and a restart from the empty key.
    #[tokio::test]
    async fn resync_required_restarts_from_empty_key() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            let (id, key) = peer.expect_sync().await;
            assert_eq!(key, b"old");
            peer.send(Frame::error(id, ErrorCode::ResyncRequired, "too old"))
                .await;
            let (id, key) = peer.expect_sync().await;
            assert_eq!(key, b"");
            peer.send_sync(id, &[10], "k10", false).await;
            peer
        });
        let (client, mut rx) = Client::start(options(&url).with_sync_key(b"old".to_vec()));
        expect_connected(&mut rx).await;
        assert!(matches!(next(&mut rx).await, ClientEvent::ResyncRequired));
        assert_eq!(next_events(&mut rx).await, (vec![10], b"k10".to_vec()));
        assert_eq!(client.sync_key(), b"k10");
        let _peer = server_side.await.unwrap();
    }

    /// Checks a token refused at the handshake stops the client for good.
    #[tokio::test]
    async fn refused_token_stops_the_client() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let mut peer = server.accept().await;
            let (id, _) = peer.recv().await.unwrap();
            let mut goodbye = Frame::goodbye(ErrorCode::InvalidToken, "unknown token");
            goodbye.request_id = id;
            peer.send(goodbye).await;
            peer
        });
        let (client, mut rx) = Client::start(options(&url));
        match next(&mut rx).await {
            ClientEvent::Stopped { error } => {
                assert_eq!(error.code(), Some(ErrorCode::InvalidToken))
            }
            other => panic!("expected stopped, got {other:?}"),
        }
        assert!(client.connection().await.is_none());
        let _peer = server_side.await.unwrap();
    }

    /// Checks a client whose event receiver was dropped still sends, and
    /// does not sync events nobody would read.
    #[tokio::test]
    async fn sends_work_without_an_event_reader() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            match peer.recv().await {
                Some((id, Body::SendRequest(_))) => peer.send(Frame::new(id, ack(false))).await,
                other => panic!("expected only a send, got {other:?}"),
            }
            peer
        });
        let (client, _) = Client::start(options(&url));
        let ack = client.send(to_user("bob"), text("hi")).await.unwrap();
        assert!(!ack.duplicate);
        let _peer = server_side.await.unwrap();
    }

    /// Checks presence and typing pushes surface as ClientEvents in arrival
    /// order among the synced events, and that forwarded requests use the
    /// current connection.
    #[tokio::test]
    async fn presence_and_typing_pushes_become_events() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            let (id, _) = peer.expect_sync().await;
            peer.send_sync(id, &[1], "k1", false).await;
            let presence = v1::Presence {
                user_id: 2,
                username: "bob".into(),
                state: v1::PresenceState::Online as i32,
                last_seen_ms: 0,
            };
            peer.send(Frame::push(Body::PresencePush(v1::PresencePush {
                presence: Some(presence),
            })))
            .await;
            // A presence push without its presence is skipped.
            peer.send(Frame::push(Body::PresencePush(v1::PresencePush {
                presence: None,
            })))
            .await;
            peer.push_events("k1", &[2], "k2").await;
            peer.send(Frame::push(Body::TypingPush(v1::TypingPush {
                conversation_id: "g:5".into(),
                user_id: 2,
                username: "bob".into(),
                typing: true,
            })))
            .await;
            match peer.recv().await {
                Some((id, Body::SetTypingRequest(r))) => {
                    assert_eq!((r.conversation_id.as_str(), r.typing), ("g:5", false));
                    let answer = Body::SetTypingResponse(v1::SetTypingResponse {});
                    peer.send(Frame::new(id, answer)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
            match peer.recv().await {
                Some((id, Body::GetPresenceRequest(r))) => {
                    assert_eq!(r.usernames, ["bob"]);
                    peer.send(Frame::error(id, ErrorCode::Forbidden, "no"))
                        .await;
                }
                other => panic!("unexpected {other:?}"),
            }
            peer
        });
        let (client, mut rx) = Client::start(options(&url));
        expect_connected(&mut rx).await;
        assert_eq!(next_events(&mut rx).await, (vec![1], b"k1".to_vec()));
        match next(&mut rx).await {
            ClientEvent::Presence(p) => {
                assert_eq!(p.username, "bob");
                assert_eq!(p.state(), v1::PresenceState::Online);
            }
            other => panic!("expected presence, got {other:?}"),
        }
        assert_eq!(next_events(&mut rx).await, (vec![2], b"k2".to_vec()));
        match next(&mut rx).await {
            ClientEvent::Typing(t) => {
                assert_eq!((t.conversation_id.as_str(), t.typing), ("g:5", true))
            }
            other => panic!("expected typing, got {other:?}"),
        }
        client.set_typing("g:5", false).await.unwrap();
        let err = client.get_presence(&["bob"]).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Forbidden));
        client.shutdown().await;
        assert!(matches!(
            client.list_blocked().await,
            Err(ClientError::Closed)
        ));
        let _peer = server_side.await.unwrap();
    }
}
