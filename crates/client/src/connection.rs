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
use crate::transport::{DialOptions, FrameReader, FrameWriter, dial};

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
    /// `tcp://host[:port]` (default port 7700) or `ws://host[:port][/path]`
    /// (default 7780, `/ws`); `tls://` and `wss://` for the same over TLS.
    pub url: String,
    /// PEM certificates of CAs to trust for `tls://` and `wss://` besides
    /// the built-in webpki (Mozilla) roots: for servers with a private CA.
    pub ca_pem: Option<Vec<u8>>,
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
            ca_pem: None,
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

    /// The same options also trusting the CA certificates in `pem` (one or
    /// more `-----BEGIN CERTIFICATE-----` blocks) for `tls://` and `wss://`.
    /// Bad PEM is reported by `connect` as [`ClientError::Tls`].
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }
}

impl fmt::Debug for ConnectOptions {
    // The token is a bearer secret: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
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
            Some(
                b @ (Body::EventsPush(_)
                | Body::SyncNotice(_)
                | Body::PresencePush(_)
                | Body::TypingPush(_)),
            ) if request_id == 0 => {
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

    /// Runs the handshake over a byte stream connected elsewhere, with the
    /// framing of `tcp://` (length-prefixed frames), then serves it as
    /// [`Connection::connect`] does. `opts.url` is not dialled. For
    /// transports the SDK does not dial itself, such as the simulated
    /// network of `pigeon-sim`.
    pub async fn connect_stream<S>(
        stream: S,
        opts: &ConnectOptions,
    ) -> Result<Connection, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let frame_bytes_max = opts
            .frame_bytes_max
            .clamp(FRAME_BYTES_MAX_FLOOR, FRAME_BYTES_MAX_CEILING);
        let (read, write) = tokio::io::split(stream);
        let (reader, writer) = crate::transport::prefixed(Box::new(read), Box::new(write));
        let (reader, writer, welcome) = timeout(
            opts.connect_timeout,
            hello(reader, writer, opts, frame_bytes_max),
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

    // ------------------------------------------------------------- groups

    /// Creates a group owned by the caller; `members` (usernames) are added
    /// at once. `settings: None` means the defaults (everyone posts, admins
    /// add, the server's member maximum).
    pub async fn create_group(
        &self,
        name: &str,
        description: &str,
        members: &[&str],
        settings: Option<v1::GroupSettings>,
    ) -> Result<v1::GroupInfo, ClientError> {
        let body = Body::CreateGroupRequest(v1::CreateGroupRequest {
            name: name.into(),
            description: description.into(),
            members: strings(members),
            settings,
        });
        group_in(expect!(self.request(body).await?, CreateGroupResponse)?.group)
    }

    /// Changes a group's name, description or settings: only the parts
    /// marked by `update_*` in `req` change (admins and the owner).
    pub async fn update_group(
        &self,
        req: v1::UpdateGroupRequest,
    ) -> Result<v1::GroupInfo, ClientError> {
        let body = Body::UpdateGroupRequest(req);
        group_in(expect!(self.request(body).await?, UpdateGroupResponse)?.group)
    }

    /// Adds members by username; users already in the group are skipped
    /// (the answer lists those actually added).
    pub async fn add_members(
        &self,
        conversation_id: &str,
        usernames: &[&str],
    ) -> Result<v1::AddMembersResponse, ClientError> {
        let body = Body::AddMembersRequest(v1::AddMembersRequest {
            conversation_id: conversation_id.into(),
            usernames: strings(usernames),
        });
        expect!(self.request(body).await?, AddMembersResponse)
    }

    /// Removes members by username (the owner removes anyone, admins plain members).
    pub async fn remove_members(
        &self,
        conversation_id: &str,
        usernames: &[&str],
    ) -> Result<v1::RemoveMembersResponse, ClientError> {
        let body = Body::RemoveMembersRequest(v1::RemoveMembersRequest {
            conversation_id: conversation_id.into(),
            usernames: strings(usernames),
        });
        expect!(self.request(body).await?, RemoveMembersResponse)
    }

    /// Leaves a group (the owner must transfer ownership or dissolve instead).
    pub async fn leave_group(&self, conversation_id: &str) -> Result<(), ClientError> {
        let body = Body::LeaveGroupRequest(v1::LeaveGroupRequest {
            conversation_id: conversation_id.into(),
        });
        expect!(self.request(body).await?, LeaveGroupResponse).map(|_| ())
    }

    /// Makes a member an admin or an admin a member (the owner only).
    pub async fn set_role(
        &self,
        conversation_id: &str,
        username: &str,
        role: v1::GroupRole,
    ) -> Result<v1::GroupInfo, ClientError> {
        let body = Body::SetRoleRequest(v1::SetRoleRequest {
            conversation_id: conversation_id.into(),
            username: username.into(),
            role: role as i32,
        });
        group_in(expect!(self.request(body).await?, SetRoleResponse)?.group)
    }

    /// Hands the group to another member (the owner only; they become an admin).
    pub async fn transfer_ownership(
        &self,
        conversation_id: &str,
        username: &str,
    ) -> Result<v1::GroupInfo, ClientError> {
        let body = Body::TransferOwnershipRequest(v1::TransferOwnershipRequest {
            conversation_id: conversation_id.into(),
            username: username.into(),
        });
        group_in(expect!(self.request(body).await?, TransferOwnershipResponse)?.group)
    }

    /// Ends a group for everyone (the owner only); its history stays readable.
    pub async fn dissolve_group(&self, conversation_id: &str) -> Result<(), ClientError> {
        let body = Body::DissolveGroupRequest(v1::DissolveGroupRequest {
            conversation_id: conversation_id.into(),
        });
        expect!(self.request(body).await?, DissolveGroupResponse).map(|_| ())
    }

    /// A group's state and the caller's role (members and former members).
    pub async fn get_group(
        &self,
        conversation_id: &str,
    ) -> Result<v1::GetGroupResponse, ClientError> {
        let body = Body::GetGroupRequest(v1::GetGroupRequest {
            conversation_id: conversation_id.into(),
        });
        expect!(self.request(body).await?, GetGroupResponse)
    }

    /// A page of members in user id order after `after_user_id` (0: from the start).
    pub async fn list_members(
        &self,
        conversation_id: &str,
        after_user_id: u64,
        limit: u32,
    ) -> Result<v1::ListMembersResponse, ClientError> {
        let body = Body::ListMembersRequest(v1::ListMembersRequest {
            conversation_id: conversation_id.into(),
            after_user_id,
            limit,
        });
        expect!(self.request(body).await?, ListMembersResponse)
    }

    // ------------------------------------------- recall, edit, delete, receipts

    /// Deletes one of the caller's messages for everyone, within the
    /// server's recall window. Idempotent.
    pub async fn recall(&self, conversation_id: &str, conv_seq: u64) -> Result<(), ClientError> {
        let body = Body::RecallMessageRequest(v1::RecallMessageRequest {
            conversation_id: conversation_id.into(),
            conv_seq,
        });
        expect!(self.request(body).await?, RecallMessageResponse).map(|_| ())
    }

    /// Replaces the content of one of the caller's messages, within the
    /// server's edit window.
    pub async fn edit(
        &self,
        conversation_id: &str,
        conv_seq: u64,
        content: v1::Content,
    ) -> Result<v1::EditMessageResponse, ClientError> {
        let body = Body::EditMessageRequest(v1::EditMessageRequest {
            conversation_id: conversation_id.into(),
            conv_seq,
            content: Some(content),
        });
        expect!(self.request(body).await?, EditMessageResponse)
    }

    /// Hides a message from the caller's own history (all their devices).
    pub async fn delete_for_me(
        &self,
        conversation_id: &str,
        conv_seq: u64,
    ) -> Result<(), ClientError> {
        let body = Body::DeleteMessageRequest(v1::DeleteMessageRequest {
            conversation_id: conversation_id.into(),
            conv_seq,
        });
        expect!(self.request(body).await?, DeleteMessageResponse).map(|_| ())
    }

    /// Receipt counts for messages of a large group.
    pub async fn get_receipts(
        &self,
        conversation_id: &str,
        conv_seqs: &[u64],
    ) -> Result<Vec<v1::ReceiptSummary>, ClientError> {
        let body = Body::GetReceiptsRequest(v1::GetReceiptsRequest {
            conversation_id: conversation_id.into(),
            conv_seqs: conv_seqs.to_vec(),
        });
        Ok(expect!(self.request(body).await?, GetReceiptsResponse)?.receipts)
    }

    // ----------------------------------------- presence, typing, privacy, blocks

    /// Tells the other online members of a conversation that the caller is
    /// (or stopped) typing. Never stored; the server throttles it.
    pub async fn set_typing(&self, conversation_id: &str, typing: bool) -> Result<(), ClientError> {
        let body = Body::SetTypingRequest(v1::SetTypingRequest {
            conversation_id: conversation_id.into(),
            typing,
        });
        expect!(self.request(body).await?, SetTypingResponse).map(|_| ())
    }

    /// The presence of users, as far as the caller may see it.
    pub async fn get_presence(&self, usernames: &[&str]) -> Result<Vec<v1::Presence>, ClientError> {
        let body = Body::GetPresenceRequest(v1::GetPresenceRequest {
            usernames: strings(usernames),
        });
        Ok(expect!(self.request(body).await?, GetPresenceResponse)?.presences)
    }

    /// Hides (or shows) the caller's presence; returns the setting now in force.
    pub async fn set_privacy(&self, hide_presence: bool) -> Result<bool, ClientError> {
        let body = Body::SetPrivacyRequest(v1::SetPrivacyRequest { hide_presence });
        Ok(expect!(self.request(body).await?, SetPrivacyResponse)?.hide_presence)
    }

    /// Blocks a user: they can no longer message the caller or see their presence or typing.
    pub async fn block(&self, username: &str) -> Result<(), ClientError> {
        let body = Body::BlockRequest(v1::BlockRequest {
            username: username.into(),
        });
        expect!(self.request(body).await?, BlockResponse).map(|_| ())
    }

    /// Lifts a block.
    pub async fn unblock(&self, username: &str) -> Result<(), ClientError> {
        let body = Body::UnblockRequest(v1::UnblockRequest {
            username: username.into(),
        });
        expect!(self.request(body).await?, UnblockResponse).map(|_| ())
    }

    /// The usernames the caller has blocked.
    pub async fn list_blocked(&self) -> Result<Vec<String>, ClientError> {
        let body = Body::ListBlockedRequest(v1::ListBlockedRequest {});
        Ok(expect!(self.request(body).await?, ListBlockedResponse)?.usernames)
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

    /// Server pushes (`EventsPush`, `SyncNotice`, `PresencePush`,
    /// `TypingPush`, `Goodbye`) in arrival order; `None` when the connection
    /// has ended.
    ///
    /// Pushes wait in a queue of 1024 frames; if the
    /// reader falls that far behind, later pushes are replaced by one
    /// `SyncNotice` so the reader syncs what it missed (presence and typing
    /// pushes dropped that way are lost: they are never stored). Meant for
    /// one reader at a time.
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

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The group an answer must carry.
fn group_in(group: Option<v1::GroupInfo>) -> Result<v1::GroupInfo, ClientError> {
    group.ok_or_else(|| ClientError::Protocol("an answer without its group".into()))
}

async fn handshake(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    frame_bytes_max: usize,
) -> Result<(FrameReader, FrameWriter, v1::Welcome), ClientError> {
    let (reader, writer) = dial(&DialOptions {
        endpoint,
        extra_ca_pem: opts.ca_pem.as_deref(),
        frame_bytes_max,
    })
    .await?;
    hello(reader, writer, opts, frame_bytes_max).await
}

/// Sends the Hello and waits for the Welcome.
async fn hello(
    mut reader: FrameReader,
    mut writer: FrameWriter,
    opts: &ConnectOptions,
    frame_bytes_max: usize,
) -> Result<(FrameReader, FrameWriter, v1::Welcome), ClientError> {
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
            Ok(Some(mut frame)) => {
                if let Err(e) = pigeon_proto::packing::unpack_frame(&mut frame) {
                    tracing::warn!(error = %e, "the server sent events that do not unpack");
                    break;
                }
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
        // Let the tasks woken with this one (many requests answered by one
        // read) queue their frames too, so they share a write: one system
        // call instead of one per frame.
        tokio::task::yield_now().await;
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
            assert_eq!((hello.min_version, hello.max_version), (1, 2));
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

    /// Checks packed events (protocol version 2) reach the caller unpacked,
    /// in sync answers and pushes alike, and that a batch that does not
    /// unpack ends the connection rather than reaching the caller.
    #[tokio::test]
    async fn packed_events_are_unpacked() {
        let (server, url) = FakeServer::bind().await;
        let original: Vec<v1::Event> = (1..=3).map(crate::fake_server::event).collect();
        let events = original.clone();
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            let (id, _) = peer.expect_sync().await;
            let mut packed = events.clone();
            let tables = pigeon_proto::packing::pack(&mut packed, 2);
            assert!(packed.iter().all(|e| match &e.kind {
                Some(v1::event::Kind::Message(m)) => m.conversation_id.is_empty(),
                _ => false,
            }));
            let answer = Body::SyncResponse(v1::SyncResponse {
                events: packed.clone(),
                key: b"k1".to_vec(),
                has_more: false,
                packed: Some(tables.clone()),
            });
            peer.send(Frame::new(id, answer)).await;
            let push = |events: Vec<v1::Event>, tables| {
                Frame::push(Body::EventsPush(v1::EventsPush {
                    prev_key: b"k1".to_vec(),
                    events,
                    key: b"k2".to_vec(),
                    packed: Some(tables),
                }))
            };
            peer.send(push(packed.clone(), tables.clone())).await;
            let mut broken = tables;
            broken.conversation_ids.clear();
            peer.send(push(packed, broken)).await;
            peer
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        let synced = conn.sync(b"", 0).await.unwrap();
        assert_eq!(synced.events, original);
        assert_eq!(synced.packed, None);
        match conn.next_push().await {
            Some(Body::EventsPush(p)) => assert_eq!(p.events, original),
            other => panic!("expected the push, got {other:?}"),
        }
        assert!(
            timeout(WAIT, conn.next_push()).await.unwrap().is_none(),
            "a batch that does not unpack ends the connection"
        );
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

    fn group(id: &str) -> v1::GroupInfo {
        v1::GroupInfo {
            conversation_id: id.into(),
            name: "crew".into(),
            member_count: 3,
            ..Default::default()
        }
    }

    fn member(username: &str) -> v1::Member {
        v1::Member {
            user_id: 7,
            username: username.into(),
            role: v1::GroupRole::Member as i32,
            joined_at_ms: 1,
        }
    }

    /// The fake server's answer to each new request: checks the request
    /// carries what the client was given and echoes it back in the answer
    /// type, so a method wired to the wrong request or answer fails.
    fn answer(body: Body) -> Body {
        match body {
            Body::CreateGroupRequest(r) => {
                assert_eq!((r.name.as_str(), r.description.as_str()), ("crew", "d"));
                assert_eq!(r.members, ["bob", "carol"]);
                assert_eq!(r.settings.unwrap().max_members, 10);
                Body::CreateGroupResponse(v1::CreateGroupResponse {
                    group: Some(group("g:1")),
                })
            }
            Body::UpdateGroupRequest(r) => {
                assert!(r.update_name && !r.update_description && !r.update_settings);
                let mut g = group(&r.conversation_id);
                g.name = r.name;
                Body::UpdateGroupResponse(v1::UpdateGroupResponse { group: Some(g) })
            }
            Body::AddMembersRequest(r) => Body::AddMembersResponse(v1::AddMembersResponse {
                group: Some(group(&r.conversation_id)),
                added: r.usernames.iter().map(|u| member(u)).collect(),
            }),
            Body::RemoveMembersRequest(r) => {
                Body::RemoveMembersResponse(v1::RemoveMembersResponse {
                    group: Some(group(&r.conversation_id)),
                    removed: r.usernames.iter().map(|u| member(u)).collect(),
                })
            }
            Body::LeaveGroupRequest(r) => {
                assert_eq!(r.conversation_id, "g:1");
                Body::LeaveGroupResponse(v1::LeaveGroupResponse {})
            }
            Body::SetRoleRequest(r) => {
                assert_eq!(r.username, "bob");
                assert_eq!(r.role, v1::GroupRole::Admin as i32);
                Body::SetRoleResponse(v1::SetRoleResponse {
                    group: Some(group(&r.conversation_id)),
                })
            }
            Body::TransferOwnershipRequest(r) => {
                let mut g = group(&r.conversation_id);
                g.owner_username = r.username;
                Body::TransferOwnershipResponse(v1::TransferOwnershipResponse { group: Some(g) })
            }
            Body::DissolveGroupRequest(r) => {
                assert_eq!(r.conversation_id, "g:1");
                Body::DissolveGroupResponse(v1::DissolveGroupResponse {})
            }
            Body::GetGroupRequest(r) => Body::GetGroupResponse(v1::GetGroupResponse {
                group: Some(group(&r.conversation_id)),
                my_role: v1::GroupRole::Owner as i32,
            }),
            Body::ListMembersRequest(r) => {
                assert_eq!((r.after_user_id, r.limit), (5, 2));
                Body::ListMembersResponse(v1::ListMembersResponse {
                    members: vec![member("bob")],
                    has_more: true,
                })
            }
            Body::RecallMessageRequest(r) => {
                assert_eq!((r.conversation_id.as_str(), r.conv_seq), ("g:1", 3));
                Body::RecallMessageResponse(v1::RecallMessageResponse {})
            }
            Body::EditMessageRequest(r) => {
                assert_eq!(r.content.unwrap().text, "fixed");
                Body::EditMessageResponse(v1::EditMessageResponse {
                    edited_at_ms: r.conv_seq as i64 * 100,
                })
            }
            Body::DeleteMessageRequest(r) => {
                assert_eq!((r.conversation_id.as_str(), r.conv_seq), ("g:1", 4));
                Body::DeleteMessageResponse(v1::DeleteMessageResponse {})
            }
            Body::GetReceiptsRequest(r) => Body::GetReceiptsResponse(v1::GetReceiptsResponse {
                receipts: r
                    .conv_seqs
                    .iter()
                    .map(|&conv_seq| v1::ReceiptSummary {
                        conversation_id: r.conversation_id.clone(),
                        conv_seq,
                        read_count: 1,
                        ..Default::default()
                    })
                    .collect(),
            }),
            Body::SetTypingRequest(r) => {
                assert!(r.typing);
                Body::SetTypingResponse(v1::SetTypingResponse {})
            }
            Body::GetPresenceRequest(r) => Body::GetPresenceResponse(v1::GetPresenceResponse {
                presences: r
                    .usernames
                    .into_iter()
                    .map(|username| v1::Presence {
                        username,
                        state: v1::PresenceState::Online as i32,
                        ..Default::default()
                    })
                    .collect(),
            }),
            Body::SetPrivacyRequest(r) => Body::SetPrivacyResponse(v1::SetPrivacyResponse {
                hide_presence: r.hide_presence,
            }),
            Body::BlockRequest(r) => {
                assert_eq!(r.username, "mallory");
                Body::BlockResponse(v1::BlockResponse {})
            }
            Body::UnblockRequest(r) => {
                assert_eq!(r.username, "trent");
                Body::UnblockResponse(v1::UnblockResponse {})
            }
            Body::ListBlockedRequest(_) => Body::ListBlockedResponse(v1::ListBlockedResponse {
                usernames: vec!["mallory".into()],
            }),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Checks every group, recall/edit/delete, receipt, presence, privacy
    /// and block method sends its request and unwraps its answer, and that
    /// presence and typing pushes reach next_push.
    #[tokio::test]
    async fn typed_requests_and_presence_pushes() {
        let (server, url) = FakeServer::bind().await;
        let server_side = tokio::spawn(async move {
            let (mut peer, _) = server.accept_hello().await;
            let presence = v1::Presence {
                user_id: 2,
                username: "bob".into(),
                state: v1::PresenceState::Offline as i32,
                last_seen_ms: 9,
            };
            peer.send(Frame::push(Body::PresencePush(v1::PresencePush {
                presence: Some(presence),
            })))
            .await;
            peer.send(Frame::push(Body::TypingPush(v1::TypingPush {
                conversation_id: "g:1".into(),
                user_id: 2,
                username: "bob".into(),
                typing: true,
            })))
            .await;
            while let Some((id, body)) = peer.recv().await {
                let reply = match body {
                    // A group answer without its group is a protocol error.
                    Body::DissolveGroupRequest(r) if r.conversation_id == "g:bad" => {
                        Body::SetRoleResponse(v1::SetRoleResponse { group: None })
                    }
                    Body::SetRoleRequest(r) if r.conversation_id == "g:bad" => {
                        Body::SetRoleResponse(v1::SetRoleResponse { group: None })
                    }
                    body => answer(body),
                };
                peer.send(Frame::new(id, reply)).await;
            }
        });
        let conn = Connection::connect(&opts(&url)).await.unwrap();
        match conn.next_push().await {
            Some(Body::PresencePush(p)) => assert_eq!(p.presence.unwrap().last_seen_ms, 9),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(conn.next_push().await, Some(Body::TypingPush(t)) if t.typing));

        let settings = v1::GroupSettings {
            max_members: 10,
            ..Default::default()
        };
        let g = conn
            .create_group("crew", "d", &["bob", "carol"], Some(settings))
            .await
            .unwrap();
        assert_eq!(g.conversation_id, "g:1");
        let update = v1::UpdateGroupRequest {
            conversation_id: "g:1".into(),
            update_name: true,
            name: "new".into(),
            ..Default::default()
        };
        assert_eq!(conn.update_group(update).await.unwrap().name, "new");
        let added = conn.add_members("g:1", &["dave"]).await.unwrap();
        assert_eq!(added.added[0].username, "dave");
        let removed = conn.remove_members("g:1", &["eve", "bob"]).await.unwrap();
        assert_eq!(removed.removed.len(), 2);
        conn.leave_group("g:1").await.unwrap();
        let g = conn
            .set_role("g:1", "bob", v1::GroupRole::Admin)
            .await
            .unwrap();
        assert_eq!(g.conversation_id, "g:1");
        let g = conn.transfer_ownership("g:1", "carol").await.unwrap();
        assert_eq!(g.owner_username, "carol");
        conn.dissolve_group("g:1").await.unwrap();
        let info = conn.get_group("g:1").await.unwrap();
        assert_eq!(info.my_role(), v1::GroupRole::Owner);
        let page = conn.list_members("g:1", 5, 2).await.unwrap();
        assert!(page.has_more);
        conn.recall("g:1", 3).await.unwrap();
        let edited = conn.edit("g:1", 2, crate::text("fixed")).await.unwrap();
        assert_eq!(edited.edited_at_ms, 200);
        conn.delete_for_me("g:1", 4).await.unwrap();
        let receipts = conn.get_receipts("g:1", &[1, 2]).await.unwrap();
        assert_eq!(
            receipts.iter().map(|r| r.conv_seq).collect::<Vec<_>>(),
            [1, 2]
        );
        conn.set_typing("d:1:2", true).await.unwrap();
        let presences = conn.get_presence(&["bob", "carol"]).await.unwrap();
        assert_eq!(presences[1].username, "carol");
        assert_eq!(presences[1].state(), v1::PresenceState::Online);
        assert!(conn.set_privacy(true).await.unwrap());
        assert!(!conn.set_privacy(false).await.unwrap());
        conn.block("mallory").await.unwrap();
        conn.unblock("trent").await.unwrap();
        assert_eq!(conn.list_blocked().await.unwrap(), ["mallory"]);

        match conn.set_role("g:bad", "bob", v1::GroupRole::Member).await {
            Err(ClientError::Protocol(m)) => assert!(m.contains("without its group"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        match conn.dissolve_group("g:bad").await {
            Err(ClientError::Protocol(m)) => assert!(m.contains("got set_role_response"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        conn.close().await;
        server_side.await.unwrap();
    }
}
