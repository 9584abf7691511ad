//! One live connection: the handshake, request/answer matching by request
//! id, and the queue of server pushes. No reconnects (see [`crate::Client`]).
//!
//! Each connection runs a reader task (dispatches answers to waiting
//! requests, queues pushes) and a writer task (drains a bounded outbound
//! channel into the socket, batching what is ready).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pigeon_proto::limits::{FRAME_BYTES_MAX_CEILING, FRAME_BYTES_MAX_DEFAULT};
use pigeon_proto::v1::{self, Frame, frame::Body};
use pigeon_proto::version::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use pigeon_proto::{ErrorCode, body_name};
use prost::Message as _;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, timeout, timeout_at};

use crate::endpoint::Endpoint;
use crate::error::ClientError;
use crate::transport::{FrameReader, FrameWriter, dial};

/// Unwraps the expected answer variant, or reports what came instead.
macro_rules! expect {
    ($body:expr, $variant:ident) => {
        match $body {
            Body::$variant(answer) => Ok(answer),
            other => Err(ClientError::Protocol(format!(
                "expected {}, got {}",
                stringify!($variant),
                body_name(Some(&other))
            ))),
        }
    };
}

/// Frames waiting for the writer task; a full queue makes requests wait.
const OUTBOUND_QUEUE_FRAMES_MAX: usize = 256;
/// Frames the writer puts into one socket write.
const WRITE_BATCH_FRAMES_MAX: usize = 64;
/// Pushes queued for [`Connection::next_push`]; beyond it they collapse into one `SyncNotice`.
pub(crate) const PUSH_QUEUE_FRAMES_MAX: usize = 1024;
/// Concurrent requests when the Welcome does not say.
const INFLIGHT_REQUESTS_DEFAULT: usize = 64;
/// Upper bound on concurrent requests whatever the Welcome says.
const INFLIGHT_REQUESTS_CEILING: usize = 4096;
/// Smallest frame maximum a client accepts (a Welcome must fit).
const FRAME_BYTES_MAX_FLOOR: usize = 4 * 1024;
/// How long `close` waits for queued frames to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The request id of the Hello (any value is allowed; the Welcome echoes it).
const HELLO_REQUEST_ID: u64 = 1;

const _: () = assert!(WRITE_BATCH_FRAMES_MAX <= OUTBOUND_QUEUE_FRAMES_MAX);
const _: () = assert!(INFLIGHT_REQUESTS_DEFAULT <= INFLIGHT_REQUESTS_CEILING);
const _: () = assert!(FRAME_BYTES_MAX_FLOOR <= FRAME_BYTES_MAX_DEFAULT);

/// How to reach a server and how long to wait for it.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `tcp://host[:port]` (default port 7700) or `ws://host[:port][/path]` (default 7780, `/ws`).
    pub url: String,
    /// A session token from `LoginResponse`; `None` for an anonymous connection.
    pub token: Option<String>,
    /// Sent in the Hello, for the server's logs.
    pub client_name: String,
    /// Limit for dialling plus the Hello/Welcome exchange.
    pub connect_timeout: Duration,
    /// Limit for each request, from sending to its answer.
    pub request_timeout: Duration,
    /// Largest frame accepted from the server (clamped to 4 KiB..=16 MiB).
    pub frame_bytes_max: usize,
}

impl ConnectOptions {
    /// Options for `url` with defaults: no token, 10 s connect, 30 s requests, 16 MiB frames.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            token: None,
            client_name: concat!("pigeon-rust/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            frame_bytes_max: FRAME_BYTES_MAX_CEILING,
        }
    }

    /// The same options carrying a session token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

impl fmt::Debug for ConnectOptions {
    // The token is a bearer secret: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client_name", &self.client_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish()
    }
}

/// One live connection (no reconnect). Cheap to share: methods take `&self`.
///
/// Dropping it stops its tasks; [`Connection::close`] also lets queued frames out.
pub struct Connection {
    welcome: v1::Welcome,
    shared: Arc<Shared>,
    outbound: mpsc::Sender<Outbound>,
    inflight: Semaphore,
    request_timeout: Duration,
    /// The server's frame maximum (0: unknown, not checked).
    request_bytes_max: usize,
    next_request_id: AtomicU64,
    next_nonce: AtomicU64,
    reader: AbortHandle,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("welcome", &self.welcome)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// What the writer task is asked to do.
enum Outbound {
    Frame(Frame),
    Close,
}

/// How a connection ended, kept to answer later requests.
#[derive(Clone)]
enum End {
    Closed,
    Goodbye { code: ErrorCode, message: String },
}

impl End {
    fn to_error(&self) -> ClientError {
        match self {
            End::Closed => ClientError::Closed,
            End::Goodbye { code, message } => ClientError::Goodbye {
                code: *code,
                message: message.clone(),
            },
        }
    }
}

type Answer = Result<Body, ClientError>;

/// State shared by the connection handle and its reader and writer tasks.
struct Shared {
    state: Mutex<State>,
    pushes_ready: Notify,
    /// Tells the writer task to shut the socket once the connection has ended.
    ended: Notify,
}

struct State {
    /// Requests waiting for their answer, by request id.
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    pushes: VecDeque<Body>,
    /// Pushes were dropped because the queue was full: the next reader gets a `SyncNotice`.
    pushes_overflowed: bool,
    end: Option<End>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                pushes: VecDeque::new(),
                pushes_overflowed: false,
                end: None,
            }),
            pushes_ready: Notify::new(),
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data (each update is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end_error(&self) -> ClientError {
        self.lock()
            .end
            .as_ref()
            .map_or(ClientError::Closed, End::to_error)
    }

    /// Marks the connection ended (the first reason wins), fails the waiting
    /// requests and, for a Goodbye, queues it as the last push.
    fn end(&self, end: End, goodbye: Option<v1::Goodbye>) {
        let pending = {
            let mut st = self.lock();
            if st.end.is_some() {
                return;
            }
            st.end = Some(end.clone());
            if let Some(g) = goodbye {
                st.pushes.push_back(Body::Goodbye(g));
            }
            std::mem::take(&mut st.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(Err(end.to_error()));
        }
        self.pushes_ready.notify_waiters();
        self.pushes_ready.notify_one();
        self.ended.notify_one();
    }

    /// Queues a push, or when the queue is full drops it and owes the reader a `SyncNotice`:
    /// syncing recovers whatever the dropped pushes carried.
    fn push(&self, body: Body) {
        {
            let mut st = self.lock();
            if st.end.is_some() || st.pushes_overflowed {
                return;
            }
            let repeat_notice = matches!(body, Body::SyncNotice(_))
                && matches!(st.pushes.back(), Some(Body::SyncNotice(_)));
            if repeat_notice {
                return;
            }
            if st.pushes.len() >= PUSH_QUEUE_FRAMES_MAX {
                st.pushes_overflowed = true;
            } else {
                st.pushes.push_back(body);
            }
        }
        self.pushes_ready.notify_one();
    }

    /// Routes one frame from the server. Returns false once the connection is over.
    fn dispatch(&self, frame: Frame) -> bool {
        let Frame { request_id, body } = frame;
        match body {
            Some(Body::Goodbye(g)) => {
                let end = End::Goodbye {
                    code: crate::error::code_from_wire(g.code),
                    message: g.message.clone(),
                };
                self.end(end, Some(g));
                false
            }
            Some(b @ (Body::EventsPush(_) | Body::SyncNotice(_))) if request_id == 0 => {
                self.push(b);
                true
            }
            body if request_id == 0 => {
                tracing::debug!(
                    body = body_name(body.as_ref()),
                    "ignoring an unexpected push"
                );
                true
            }
            body => {
                let answer = match body {
                    None => Err(ClientError::Protocol(
                        "an answer with a body this client does not know".into(),
                    )),
                    Some(Body::Error(e)) => Err(ClientError::from_wire_error(e)),
                    Some(b) => Ok(b),
                };
                let waiter = self.lock().pending.remove(&request_id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(answer);
                    }
                    // The request timed out or was cancelled meanwhile.
                    None => tracing::debug!(request_id, "answer to no waiting request"),
                }
                true
            }
        }
    }
}

/// Removes a request from the pending map when its future ends (answered,
/// timed out or dropped), so abandoned requests do not accumulate.
struct PendingGuard<'a> {
    shared: &'a Shared,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.request_id);
    }
}

impl Connection {
    /// Dials `opts.url`, sends a Hello with this build's protocol versions and
    /// the token, and waits for the Welcome. A Goodbye answer is
    /// [`ClientError::Goodbye`]; the whole exchange is bounded by `connect_timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClientError> {
        let endpoint = Endpoint::parse(&opts.url)?;
        let frame_bytes_max = opts
            .frame_bytes_max
            .clamp(FRAME_BYTES_MAX_FLOOR, FRAME_BYTES_MAX_CEILING);
        let (reader, writer, welcome) = timeout(
            opts.connect_timeout,
            handshake(&endpoint, opts, frame_bytes_max),
        )
        .await
        .map_err(|_| ClientError::Timeout)??;
        Ok(Connection::start(
            reader,
            writer,
            welcome,
            opts,
            frame_bytes_max,
        ))
    }

    fn start(
        reader: FrameReader,
        writer: FrameWriter,
        welcome: v1::Welcome,
        opts: &ConnectOptions,
        frame_bytes_max: usize,
    ) -> Connection {
        let limits = welcome.limits.unwrap_or_default();
        let inflight = match limits.inflight_requests_max as usize {
            0 => INFLIGHT_REQUESTS_DEFAULT,
            n => n.min(INFLIGHT_REQUESTS_CEILING),
        };
        let shared = Arc::new(Shared::new());
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_FRAMES_MAX);
        let reader =
            tokio::spawn(read_loop(reader, shared.clone(), frame_bytes_max)).abort_handle();
        let writer = tokio::spawn(write_loop(writer, outbound_rx, shared.clone()));
        Connection {
            welcome,
            shared,
            outbound,
            inflight: Semaphore::new(inflight),
            request_timeout: opts.request_timeout,
            request_bytes_max: limits.frame_bytes_max as usize,
            next_request_id: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
            reader,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// The server's Welcome: user, device, heartbeat interval, limits.
    pub fn welcome(&self) -> &v1::Welcome {
        &self.welcome
    }

    /// True once the connection has ended (closed, Goodbye, socket error).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().end.is_some()
    }

    /// Sends a request and waits for its answer (at most `request_timeout`).
    ///
    /// An `Error` answer is [`ClientError::Server`]; the connection ending
    /// meanwhile is [`ClientError::Closed`] or the [`ClientError::Goodbye`].
    /// A request larger than the server's frame maximum is refused here as
    /// `Server { code: FrameTooLarge, .. }`, since sending it would only make
    /// the server close the connection.
    pub async fn request(&self, body: Body) -> Result<Body, ClientError> {
        let deadline = Instant::now() + self.request_timeout;
        let _permit = timeout_at(deadline, self.inflight.acquire())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?;
        let frame = Frame::new(self.next_request_id(), body);
        let len = frame.encoded_len();
        if self.request_bytes_max > 0 && len > self.request_bytes_max {
            return Err(ClientError::Server {
                code: ErrorCode::FrameTooLarge,
                message: format!(
                    "request of {len} bytes exceeds the server's frame maximum of {} bytes (refused by the client)",
                    self.request_bytes_max
                ),
                retry_after_ms: 0,
            });
        }
        let request_id = frame.request_id;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if let Some(end) = &st.end {
                return Err(end.to_error());
            }
            st.pending.insert(request_id, tx);
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            request_id,
        };
        match timeout_at(deadline, self.outbound.send(Outbound::Frame(frame))).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(_)) => return Err(self.shared.end_error()),
            Ok(Ok(())) => {}
        }
        match timeout_at(deadline, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(self.shared.end_error()),
        }
    }

    fn next_request_id(&self) -> u64 {
        loop {
            // 0 marks pushes; skip it should the counter ever wrap.
            let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Creates an account (allowed on an anonymous connection; does not log in).
    pub async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> Result<v1::RegisterResponse, ClientError> {
        let body = Body::RegisterRequest(v1::RegisterRequest {
            username: username.into(),
            password: password.into(),
        });
        expect!(self.request(body).await?, RegisterResponse)
    }

    /// Logs in as a new device; on success this connection is authenticated as it.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<v1::LoginResponse, ClientError> {
        let body = Body::LoginRequest(v1::LoginRequest {
            username: username.into(),
            password: password.into(),
            device_name: device_name.into(),
        });
        expect!(self.request(body).await?, LoginResponse)
    }

    /// Revokes this connection's session; the server then closes the connection.
    pub async fn logout(&self) -> Result<(), ClientError> {
        let body = Body::LogoutRequest(v1::LogoutRequest {});
        expect!(self.request(body).await?, LogoutResponse).map(|_| ())
    }

    /// Sends a message. Retrying with the same `client_msg_id` is safe: the
    /// server answers a duplicate with the first acknowledgement.
    pub async fn send(
        &self,
        client_msg_id: &str,
        target: v1::Target,
        content: v1::Content,
    ) -> Result<v1::SendResponse, ClientError> {
        let body = Body::SendRequest(v1::SendRequest {
            client_msg_id: client_msg_id.into(),
            target: Some(target),
            content: Some(content),
        });
        expect!(self.request(body).await?, SendResponse)
    }

    /// Fetches up to `limit` events after `key` (0: the server's maximum).
    pub async fn sync(&self, key: &[u8], limit: u32) -> Result<v1::SyncResponse, ClientError> {
        let body = Body::SyncRequest(v1::SyncRequest {
            key: key.to_vec(),
            limit,
        });
        expect!(self.request(body).await?, SyncResponse)
    }

    /// A page of a conversation's messages with `conv_seq < before` (0: newest), newest first.
    pub async fn history(
        &self,
        target: v1::Target,
        before: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        let body = Body::HistoryRequest(v1::HistoryRequest {
            target: Some(target),
            before,
            limit,
        });
        expect!(self.request(body).await?, HistoryResponse)
    }

    /// The caller's conversations, most recently active first.
    pub async fn list_conversations(
        &self,
        limit: u32,
    ) -> Result<v1::ListConversationsResponse, ClientError> {
        let body = Body::ListConversationsRequest(v1::ListConversationsRequest { limit });
        expect!(self.request(body).await?, ListConversationsResponse)
    }

    /// Marks a conversation read up to `read_up_to` (inclusive; never moves back).
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        read_up_to: u64,
    ) -> Result<v1::MarkReadResponse, ClientError> {
        let body = Body::MarkReadRequest(v1::MarkReadRequest {
            conversation_id: conversation_id.into(),
            read_up_to,
        });
        expect!(self.request(body).await?, MarkReadResponse)
    }

    /// A round trip; also keeps the connection from idling out.
    pub async fn ping(&self) -> Result<v1::Pong, ClientError> {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let pong = expect!(self.request(Body::Ping(v1::Ping { nonce })).await?, Pong)?;
        if pong.nonce != nonce {
            return Err(ClientError::Protocol(format!(
                "pong for nonce {} answers the ping with nonce {nonce}",
                pong.nonce
            )));
        }
        Ok(pong)
    }

    /// Server pushes (`EventsPush`, `SyncNotice`, `Goodbye`) in arrival
    /// order; `None` when the connection has ended.
    ///
    /// Pushes wait in a queue of 1024 frames; if the
    /// reader falls that far behind, later pushes are replaced by one
    /// `SyncNotice` so the reader syncs what it missed. Meant for one reader
    /// at a time.
    pub async fn next_push(&self) -> Option<Body> {
        loop {
            {
                let mut st = self.shared.lock();
                if let Some(body) = st.pushes.pop_front() {
                    return Some(body);
                }
                if st.end.is_some() {
                    return None;
                }
                if st.pushes_overflowed {
                    st.pushes_overflowed = false;
                    return Some(Body::SyncNotice(v1::SyncNotice {}));
                }
            }
            // notify_one stores a permit, so a push between the check and here is not missed.
            self.shared.pushes_ready.notified().await;
        }
    }

    /// Closes the connection: waiting requests fail with `Closed`, frames
    /// already queued are written (for up to a second), then the socket is shut.
    pub async fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Queue the Close before ending, so the writer drains what is queued first.
        let _ = timeout(CLOSE_GRACE, self.outbound.send(Outbound::Close)).await;
        self.shared.end(End::Closed, None);
        if let Some(mut writer) = writer
            && timeout(CLOSE_GRACE, &mut writer).await.is_err()
        {
            writer.abort();
        }
        self.reader.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends by itself once `outbound` is dropped.
        self.reader.abort();
    }
}

async fn handshake(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    frame_bytes_max: usize,
) -> Result<(FrameReader, FrameWriter, v1::Welcome), ClientError> {
    let (mut reader, mut writer) = dial(endpoint, frame_bytes_max).await?;
    let hello = Frame::new(
        HELLO_REQUEST_ID,
        Body::Hello(v1::Hello {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            token: opts.token.clone().unwrap_or_default(),
            client_name: opts.client_name.clone(),
        }),
    );
    writer.write_frames(&[hello]).await?;
    let frame = reader
        .next_frame(frame_bytes_max)
        .await?
        .ok_or(ClientError::Closed)?;
    match frame.body {
        Some(Body::Welcome(w))
            if (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&w.version) =>
        {
            Ok((reader, writer, w))
        }
        Some(Body::Welcome(w)) => Err(ClientError::Protocol(format!(
            "the server chose protocol version {}, which this client does not speak",
            w.version
        ))),
        Some(Body::Goodbye(g)) => Err(ClientError::from_goodbye(g)),
        Some(Body::Error(e)) => Err(ClientError::from_wire_error(e)),
        other => Err(ClientError::Protocol(format!(
            "expected welcome, got {}",
            body_name(other.as_ref())
        ))),
    }
}

async fn read_loop(mut reader: FrameReader, shared: Arc<Shared>, frame_bytes_max: usize) {
    loop {
        match reader.next_frame(frame_bytes_max).await {
            Ok(Some(frame)) => {
                if !shared.dispatch(frame) {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                break;
            }
        }
    }
    shared.end(End::Closed, None);
}

async fn write_loop(
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES_MAX);
    let mut closing = false;
    while !closing {
        // Biased: frames queued before the end are still written.
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = shared.ended.notified() => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outbound::Frame(frame) => batch.push(frame),
                Outbound::Close => {
                    closing = true;
                    break;
                }
            }
            if batch.len() < WRITE_BATCH_FRAMES_MAX {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = writer.write_frames(&batch).await {
            tracing::debug!(error = %e, "connection write failed");
            shared.end(End::Closed, None);
            return;
        }
        batch.clear();
    }
    writer.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_server::{FakeServer, WAIT, pong};
    use tokio::io::AsyncWriteExt;

    fn opts(url: &str) -> ConnectOptions {
        let mut o = ConnectOptions::new(url).with_token("t0k3n");
        o.connect_timeout = Duration::from_secs(2);
        o.request_timeout = Duration::from_secs(2);
        o
    }

    /// Checks the Hello carries our versions and token, and that answers are
    /// matched to requests by id even when they come out of order.
    #[tokio::test]
    async fn handshake_and_out_of_order_answers() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, hello) = server.accept_hello().await;
            assert_eq!((hello.min_version, hello.max_version), (1, 1));
            assert_eq!(hello.token, "t0k3n");
            assert!(hello.client_name.starts_with("pigeon-rust/"));
            let (id_a, a) = peer.recv().await.unwrap();
            let (id_b, b) = peer.recv().await.unwrap();
            assert_ne!(id_a, 0);
            assert_ne!(id_a, id_b);
            // Answer the second first.
            for (id, body) in [(id_b, b), (id_a, a)] {
                let Body::MarkReadRequest(r) = body else {
                    panic!("unexpected {body:?}")
                };
                let answer = Body::MarkReadResponse(v1::MarkReadResponse {
                    read_up_to: r.read_up_to,
                    unread_count: 0,
                });
                peer.send(Frame::new(id, answer)).await;
            }
            peer
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        assert_eq!(conn.welcome().username, "alice");
        let (a, b) = tokio::join!(conn.mark_read("d:1:2", 10), conn.mark_read("d:1:2", 20));
        assert_eq!(a.unwrap().read_up_to, 10);
        assert_eq!(b.unwrap().read_up_to, 20);
        let _peer = server_side.await.unwrap();
    }

    /// Checks an Error answer becomes ClientError::Server, a wrong answer
    /// type a Protocol error, and pushes reach next_push in order, ending
    /// with the Goodbye, which also fails a waiting request.
    #[tokio::test]
    async fn errors_pushes_and_goodbye() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            let (id, _) = peer.recv().await.unwrap();
            let mut error = Frame::error(id, ErrorCode::UsernameTaken, "username taken");
            if let Some(Body::Error(e)) = &mut error.body {
                e.retry_after_ms = 5;
            }
            peer.send(error).await;
            let (id, _) = peer.recv().await.unwrap();
            peer.send(Frame::new(id, pong(1))).await;
            peer.push_events("k0", &[1], "k1").await;
            peer.send(Frame::push(Body::SyncNotice(v1::SyncNotice {})))
                .await;
            // A push with an unexpected body and an answer nobody waits for are ignored.
            peer.send(Frame::push(pong(9))).await;
            peer.send(Frame::new(999, pong(9))).await;
            let (_, body) = peer.recv().await.unwrap();
            assert!(matches!(body, Body::SyncRequest(_)));
            peer.send(Frame::goodbye(ErrorCode::ShuttingDown, "bye"))
                .await;
            peer
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        match conn.register("bob", "password1").await {
            Err(ClientError::Server {
                code: ErrorCode::UsernameTaken,
                retry_after_ms: 5,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        match conn.logout().await {
            Err(ClientError::Protocol(m)) => assert!(m.contains("got pong"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        match conn.sync(b"k1", 0).await {
            Err(ClientError::Goodbye {
                code: ErrorCode::ShuttingDown,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(conn.next_push().await, Some(Body::EventsPush(p)) if p.key == b"k1"));
        assert!(matches!(conn.next_push().await, Some(Body::SyncNotice(_))));
        assert!(matches!(conn.next_push().await, Some(Body::Goodbye(_))));
        assert!(conn.next_push().await.is_none());
        assert!(conn.is_closed());
        assert!(matches!(
            conn.ping().await,
            Err(ClientError::Goodbye { .. })
        ));
        let _peer = server_side.await.unwrap();
    }

    /// Checks a Goodbye answering the Hello fails the connect with its code,
    /// and a silent server makes the connect time out.
    #[tokio::test]
    async fn handshake_refused_or_silent() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let mut peer = server.accept().await;
            peer.recv().await.unwrap();
            peer.send(Frame::goodbye(ErrorCode::TokenRevoked, "revoked"))
                .await;
            let mut silent = server.accept().await;
            silent.recv().await.unwrap();
            tokio::time::sleep(WAIT).await;
        });
        match Connection::connect(&opts(&url)).await {
            Err(e @ ClientError::Goodbye { .. }) => {
                assert_eq!(e.code(), Some(ErrorCode::TokenRevoked))
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut o = opts(&url);
        o.connect_timeout = Duration::from_millis(200);
        assert!(matches!(
            Connection::connect(&o).await,
            Err(ClientError::Timeout)
        ));
        server_side.abort();
    }

    /// Checks an oversized length prefix from the server ends the connection
    /// (the waiting request gets Closed) instead of being buffered or panicking.
    #[tokio::test]
    async fn oversized_frame_from_server_closes() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            peer.recv().await.unwrap();
            peer.stream
                .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
                .await
                .unwrap();
            peer
        });
        let mut o = opts(&url);
        o.frame_bytes_max = 64 * 1024;
        let conn = Connection::connect(&o).await.unwrap();
        assert!(matches!(
            conn.mark_read("d:1:2", 1).await,
            Err(ClientError::Closed)
        ));
        assert!(conn.next_push().await.is_none());
        let _peer = server_side.await.unwrap();
    }

    /// Checks a request above the server's announced frame maximum is refused
    /// locally instead of getting the connection closed.
    #[tokio::test]
    async fn oversized_request_is_refused_locally() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move { server.accept_hello().await.0 });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        let big = "x".repeat(2 << 20);
        let err = conn
            .send("id", crate::to_user("bob"), crate::text(&big))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge));
        assert!(!conn.is_closed());
        let _peer = server_side.await.unwrap();
    }

    /// Checks that pushes beyond the queue bound collapse into one SyncNotice
    /// after the queued ones, so memory stays bounded and nothing is missed.
    #[tokio::test]
    async fn push_queue_overflow_becomes_sync_notice() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            for i in 0..(PUSH_QUEUE_FRAMES_MAX as u64 + 10) {
                peer.push_events(&format!("k{i}"), &[i + 1], &format!("k{}", i + 1))
                    .await;
            }
            let (id, _) = peer.recv().await.unwrap();
            peer.send(Frame::new(id, Body::LogoutResponse(v1::LogoutResponse {})))
                .await;
            peer
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        // The answer comes after all pushes, so they have been dispatched once it arrives.
        conn.logout().await.unwrap();
        for i in 0..PUSH_QUEUE_FRAMES_MAX as u64 {
            match conn.next_push().await {
                Some(Body::EventsPush(p)) => assert_eq!(p.events[0].seq, i + 1),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(conn.next_push().await, Some(Body::SyncNotice(_))));
        conn.close().await;
        assert!(conn.next_push().await.is_none());
        let _peer = server_side.await.unwrap();
    }

    /// Checks close() fails later requests with Closed and lets the server see EOF.
    #[tokio::test]
    async fn close_ends_the_connection() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            assert!(peer.recv().await.is_none(), "the server should see EOF");
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        conn.close().await;
        assert!(matches!(conn.ping().await, Err(ClientError::Closed)));
        server_side.await.unwrap();
    }

    /// Checks the WebSocket transport: one binary message per frame both
    /// ways, and a text message from the server ends the connection.
    #[tokio::test]
    async fn websocket_round_trip() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let server_side = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let answer = async |ws: &mut tokio_tungstenite::WebSocketStream<_>,
                                f: fn(u64, Body) -> Body| {
                let Some(Ok(Message::Binary(bytes))) = ws.next().await else {
                    panic!("expected a binary message")
                };
                let frame = pigeon_proto::decode_frame(&bytes, 1 << 20).unwrap();
                let reply = Frame::new(frame.request_id, f(frame.request_id, frame.body.unwrap()));
                ws.send(Message::Binary(pigeon_proto::encode_frame(&reply).into()))
                    .await
                    .unwrap();
            };
            answer(&mut ws, |_, body| {
                assert!(matches!(body, Body::Hello(_)));
                Body::Welcome(crate::fake_server::welcome())
            })
            .await;
            answer(&mut ws, |_, body| match body {
                Body::Ping(p) => pong(p.nonce),
                other => panic!("unexpected {other:?}"),
            })
            .await;
            ws.send(Message::text("not a frame")).await.unwrap();
            let _ = ws.next().await;
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        assert_eq!(conn.welcome().server_name, "fake");
        conn.ping().await.unwrap();
        assert!(timeout(WAIT, conn.next_push()).await.unwrap().is_none());
        assert!(conn.is_closed());
        timeout(WAIT, server_side)
            .await
            .expect("the server should see the close")
            .unwrap();
    }
}
