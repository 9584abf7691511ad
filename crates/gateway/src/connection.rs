//! One connection's life, the same for TCP, TLS and WebSocket.
//!
//! One task per connection: a loop that owns the connection state and the
//! socket, and waits in one `select!` for whichever comes first: a frame
//! from the peer, room to write queued frames, a push, the answer of a
//! the answer of a request running alongside, shutdown, or a deadline.
//! Requests that touch the device's sync position (sync, login, logout) and
//! pushes are handled here in order; the others run as futures inside this
//! task (not tasks of their own: a send's commit then wakes the one task
//! that writes its answer), at most `inflight_requests_max` at a time, so a
//! pipelining client gets its sends into one group commit.
//!
//! An idle connection is kept small: no channels (pushes, close flags and
//! answers arrive in one mailbox, created when first needed, whose queues
//! hold no memory while empty), no read or write buffer between frames (see
//! `transport.rs`), and the work of a frame, whose futures are large, runs
//! boxed, so the task's own future holds only what waiting needs. The set
//! of running requests is made on the first one.
//!
//! Only this loop queues frames for the socket, and it never waits for room:
//! a full queue means the peer does not read, and the connection is closed
//! (`SLOW_CONSUMER`) rather than allowed to grow memory or stall.

use std::future::poll_fn;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::{FutureExt, future};
use pigeon_core::config::{HISTORY_PAGE_CEILING, SYNC_BATCH_EVENTS_CEILING};
use pigeon_core::{CoreError, Position, PushBatch, Session};
use pigeon_proto::Body;
use pigeon_proto::packing;
use pigeon_proto::v1::{self, EventsPush, Limits, Pong, SyncNotice, Welcome};
use pigeon_proto::version::{
    PACKED_EVENTS_VERSION, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, negotiate,
};
use pigeon_proto::{ErrorCode, Frame, limits};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep_until, timeout};

use crate::Gateway;
use crate::admission::{self, Priority};
use crate::registry::{Mailbox, Push, Registration};
use crate::transport::{self, Inbound, Transport};

/// Longest wait for in-flight requests when the server drains.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(5);
/// Most events one `EventsPush` carries when batches that follow each
/// other are pushed together.
const PUSH_EVENTS_MAX: usize = 256;
/// Longest a device's later batches are held for an earlier one that has
/// not reached the mailbox yet (the tasks of one commit publish in any
/// order) before the gap becomes a `SyncNotice` and a sync round trip.
const PUSH_GAP_WAIT: Duration = Duration::from_millis(5);
/// Longest wait for a refused connection's goodbye to be written.
const REFUSAL_WAIT_MAX: Duration = Duration::from_secs(2);

const SERVER_NAME: &str = concat!("pigeon/", env!("CARGO_PKG_VERSION"));

/// Why the loop ends.
enum Close {
    /// Say goodbye with this code and reason, then close.
    Goodbye(ErrorCode, String),
    /// Send this goodbye (with redirects), then close.
    Frame(Box<Frame>),
    /// Close without a word (the peer left, or cannot be written to).
    Silent,
}

/// A goodbye with `code` and a reason for people.
fn bye(code: ErrorCode, reason: impl Into<String>) -> Close {
    Close::Goodbye(code, reason.into())
}

/// Tells a peer we cannot serve it, then closes.
pub(crate) async fn refuse(mut transport: Box<dyn Transport>, goodbye: Frame) {
    transport.queue(&goodbye);
    let _ = timeout(REFUSAL_WAIT_MAX, async {
        if transport::flush(&mut *transport).await.is_ok() {
            transport::close(&mut *transport).await;
        }
    })
    .await;
}

/// Serves one connection until it ends. `permit` holds its place under the
/// connection cap; the Hello is due `handshake_timeout` after `accepted`
/// (time spent on a TLS handshake counts).
pub(crate) fn run(
    gw: Arc<Gateway>,
    transport: Box<dyn Transport>,
    peer: String,
    permit: OwnedSemaphorePermit,
    accepted: Instant,
) -> impl Future<Output = ()> + Send + 'static {
    let mut conn = Conn {
        _permit: permit,
        peer: peer.into(),
        link: Link {
            transport,
            write_deadline: None,
        },
        mailbox: None,
        requests: None,
        gw,
        session: None,
        registration: None,
        cursor: None,
        cursor_key: Vec::new(),
        notice_pending: false,
        held: None,
        packed: false,
        accepted,
    };
    // An async block rather than an async fn: the arguments an async fn
    // takes are stored twice in its future.
    async move {
        crate::metrics::connection(1);
        let close = conn.serve().await;
        conn.close(close);
        if let Some(running) = conn
            .requests
            .take()
            .and_then(|r| r.running)
            .filter(|r| !r.is_empty())
        {
            // Requests still running finish without their connection: a
            // send already handed to the store still tells its recipients.
            tokio::spawn(running.for_each(|_| future::ready(())));
        }
        let write_timeout = conn.gw.config.write_timeout;
        // Boxed: only closing connections need its state.
        Box::pin(conn.link.finish(write_timeout)).await;
        crate::metrics::connection(-1);
    }
}

/// The socket and the deadline of its writes.
struct Link {
    transport: Box<dyn Transport>,
    /// While frames are queued: when the socket must have taken the next.
    write_deadline: Option<Instant>,
}

/// What polling the socket produced.
enum Io {
    /// The peer sent something.
    Inbound(Inbound),
    /// Writing failed: the peer is gone.
    Broken,
}

impl Link {
    fn queued(&self) -> usize {
        self.transport.queued()
    }

    fn queue(&mut self, frame: &Frame, write_timeout: Duration) {
        if self.transport.queued() == 0 {
            self.write_deadline = Some(Instant::now() + write_timeout);
        }
        self.transport.queue(frame);
        crate::metrics::queued(1);
    }

    /// Writes what is queued: ready once all of it is written, or on error.
    /// `write_timeout` is the time the socket gets to take the next frame.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        write_timeout: Duration,
    ) -> Poll<io::Result<()>> {
        // Polled even with nothing queued: a TLS session may still hold
        // records of frames already taken.
        let before = self.transport.queued();
        let written = self.transport.poll_flush(cx);
        let after = self.transport.queued();
        if after < before {
            crate::metrics::queued(after as i64 - before as i64);
            self.write_deadline = (after > 0).then(|| Instant::now() + write_timeout);
        }
        written
    }

    /// Writes what it can, then reads: ready when the peer sent something or
    /// writing failed.
    fn poll_io(&mut self, cx: &mut Context<'_>, write_timeout: Duration) -> Poll<Io> {
        if let Poll::Ready(Err(_)) = self.poll_write(cx, write_timeout) {
            return Poll::Ready(Io::Broken);
        }
        let before = self.transport.queued();
        let inbound = self.transport.poll_next(cx);
        // Reading may queue the transport's own replies (WebSocket pongs).
        let after = self.transport.queued();
        if after > before {
            crate::metrics::queued((after - before) as i64);
            if before == 0 {
                self.write_deadline = Some(Instant::now() + write_timeout);
            }
        }
        inbound.map(Io::Inbound)
    }

    /// Writes what is queued; ready only if writing failed.
    fn poll_broken(&mut self, cx: &mut Context<'_>, write_timeout: Duration) -> Poll<()> {
        match self.poll_write(cx, write_timeout) {
            Poll::Ready(Err(_)) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }

    /// The earlier of `idle` and the write deadline.
    fn deadline(&self, idle: Instant) -> Instant {
        self.write_deadline.map_or(idle, |w| w.min(idle))
    }

    /// Whether the socket took too long to take a frame.
    fn write_overdue(&self) -> bool {
        self.write_deadline.is_some_and(|d| d <= Instant::now())
    }

    /// Writes the last frames, as long as the socket takes each within
    /// `write_timeout`, and closes the socket.
    async fn finish(&mut self, write_timeout: Duration) {
        let written = loop {
            let deadline = self.deadline(Instant::now() + write_timeout);
            tokio::select! {
                done = poll_fn(|cx| self.poll_write(cx, write_timeout)) => break done.is_ok(),
                () = sleep_until(deadline) => {
                    if self.write_overdue() {
                        break false;
                    }
                }
            }
        };
        if written {
            let _ = timeout(write_timeout, transport::close(&mut *self.transport)).await;
        } else {
            // Counted as queued and never written.
            crate::metrics::queued(-(self.queued() as i64));
        }
    }
}

/// Requests running inside the connection's task, each ending in its
/// answer (boxed, like frames read: a frame held in the loop's future would
/// make every idle connection's as large).
type Running = FuturesUnordered<Pin<Box<dyn Future<Output = Box<Frame>> + Send>>>;

struct Conn {
    gw: Arc<Gateway>,
    /// The connection's place under the connection cap.
    _permit: OwnedSemaphorePermit,
    /// The peer's address (for logs and per-address limits).
    peer: Box<str>,
    /// The socket, with the frames queued for it.
    link: Link,
    session: Option<Session>,
    registration: Option<Registration>,
    /// The seq this device is at, as far as this connection told it (by a
    /// sync answer or a push). `None` until its first sync here.
    cursor: Option<Position>,
    /// The sync key this connection gave the device for `cursor`: the
    /// `prev_key` of a push that follows on, kept rather than signed again.
    cursor_key: Vec<u8>,
    /// A sync notice went out and no sync has come since.
    notice_pending: bool,
    /// Batches that do not follow the device's position yet, held for up to
    /// [`PUSH_GAP_WAIT`] for the one that fills the gap (boxed: usually
    /// none, and the field is in every connection).
    held: Option<Box<Held>>,
    /// The connection speaks protocol version 2 or later: sync answers and
    /// pushes carry packed events (`pigeon_proto::packing`).
    packed: bool,
    /// When the socket was accepted (or the WebSocket upgraded).
    accepted: Instant,
    /// Where the registry leaves the connection's pushes and flags, once
    /// registered: created when first needed.
    mailbox: Option<Arc<Mailbox>>,
    /// Requests read and not yet answered, and those running: none while
    /// there are none, since most connections are idle most of the time.
    requests: Option<Box<Requests>>,
}

/// Batches waiting for the one before them, since `since`.
struct Held {
    batches: Vec<Arc<PushBatch>>,
    since: Instant,
}

/// A connection's requests.
#[derive(Default)]
struct Requests {
    /// Read and not yet answered (at most `inflight_requests_max` and the
    /// one being read).
    read: Vec<Request>,
    /// Running alongside the loop (at most `inflight_requests_max`): made
    /// on the first.
    running: Option<Running>,
}

/// A request read and not yet answered: its type and arrival, so that every
/// answer is counted and timed here, where requests are dispatched.
struct Request {
    id: u64,
    kind: &'static str,
    at: std::time::Instant,
    priority: Priority,
}

/// The outcome of queueing a frame: a full queue ends the connection.
type Sent = Result<(), Close>;

impl Conn {
    /// Ends the protocol: says goodbye if `close` has something to say (past
    /// the queue's limit if need be: a slow reader is told why), and leaves
    /// the registry.
    fn close(&mut self, close: Close) {
        let goodbye = match close {
            Close::Goodbye(code, reason) => {
                tracing::debug!(peer = %self.peer, ?code, %reason, "closing connection");
                Frame::goodbye(code, reason)
            }
            Close::Frame(frame) => *frame,
            Close::Silent => Frame::default(),
        };
        if goodbye.body.is_some() {
            self.link.queue(&goodbye, self.gw.config.write_timeout);
        }
        if let (Some(reg), Some(session)) = (self.registration.take(), self.session.take())
            && self.gw.registry.unregister(reg)
        {
            self.presence(&session, false);
        }
    }

    fn send(&mut self, frame: Frame) -> Sent {
        let frame = self.fit(frame);
        if frame.request_id != 0
            && let Some(requests) = self.requests.as_mut()
            && let Some(i) = requests.read.iter().position(|r| r.id == frame.request_id)
        {
            let request = requests.read.swap_remove(i);
            if requests.read.is_empty() && requests.running.as_ref().is_none_or(|r| r.is_empty()) {
                self.requests = None;
            }
            let took = request.at.elapsed();
            crate::metrics::answered(request.kind, &frame, took);
            if request.priority == Priority::Normal {
                self.gw.admission.observe(took);
            }
        }
        if self.link.queued() >= self.gw.config.outbound_queue_frames_max.max(1) {
            crate::metrics::slow_consumer();
            tracing::info!("closing a connection whose reader is too slow");
            return Err(bye(
                ErrorCode::SlowConsumer,
                "you did not read your frames fast enough; reconnect and sync",
            ));
        }
        self.link.queue(&frame, self.gw.config.write_timeout);
        Ok(())
    }

    /// The transport's own replies (WebSocket pongs) count against the
    /// outbound queue too: a peer that pings and does not read is a slow
    /// reader like any other.
    fn replies_fit(&self) -> Sent {
        if self.link.queued() > self.gw.config.outbound_queue_frames_max.max(1) {
            crate::metrics::slow_consumer();
            return Err(bye(
                ErrorCode::SlowConsumer,
                "you did not read your frames fast enough; reconnect and sync",
            ));
        }
        Ok(())
    }

    /// Never sends a frame the peer would refuse as too large: an answer
    /// becomes an error saying so, an events push a sync notice (syncs are
    /// bounded by bytes).
    fn fit(&mut self, frame: Frame) -> Frame {
        let max = self.gw.config.frame_bytes_max;
        if prost::Message::encoded_len(&frame) <= max {
            return frame;
        }
        tracing::warn!(
            kind = pigeon_proto::body_name(frame.body.as_ref()),
            "answer larger than the frame limit"
        );
        match frame.body {
            Some(Body::EventsPush(_)) => {
                self.notice_pending = true;
                Frame::push(Body::SyncNotice(SyncNotice {}))
            }
            _ if frame.request_id != 0 => Frame::error(
                frame.request_id,
                ErrorCode::Internal,
                format!("the answer exceeds the frame limit of {max} bytes; ask for fewer items"),
            ),
            _ => Frame::push(Body::SyncNotice(SyncNotice {})),
        }
    }

    async fn serve(&mut self) -> Close {
        // Boxed, like every frame's work below: their futures are large and
        // would otherwise make every idle connection's task as large.
        if let Err(close) = Box::pin(self.handshake()).await {
            return close;
        }
        let gw = self.gw.clone();
        let mut stopping = std::pin::pin!(gw.stopping.notified());
        // Registered before the flag is read, so no shutdown slips between.
        stopping.as_mut().enable();
        if gw.is_shutting_down() {
            return Box::pin(self.drain()).await;
        }
        let mut idle_deadline = Instant::now() + gw.config.idle_timeout;
        loop {
            let mut deadline = self.link.deadline(idle_deadline);
            if let Some(give_up) = self.gap_deadline() {
                deadline = deadline.min(give_up);
            }
            let step = tokio::select! {
                () = stopping.as_mut() => return Box::pin(self.drain()).await,
                // One commit finishes many requests, here and on other
                // connections, at once: whichever of its answers and pushes
                // wakes the loop, it lets the others be delivered, then
                // takes them all, so they share one write.
                () = mail(self.mailbox.as_deref()) => {
                    tokio::task::yield_now().await;
                    self.on_woken()
                }
                frame = poll_fn(|cx| poll_answered(&mut self.requests, cx)) => match self.send(*frame) {
                    Ok(()) => {
                        tokio::task::yield_now().await;
                        self.on_woken()
                    }
                    Err(close) => Err(close),
                },
                io = poll_fn(|cx| self.link.poll_io(cx, gw.config.write_timeout)) => match io {
                    Io::Inbound(inbound) => {
                        idle_deadline = Instant::now() + gw.config.idle_timeout;
                        match inbound {
                            Inbound::Frame(frame) => Box::pin(self.on_frame(frame)).await,
                            Inbound::Activity => self.replies_fit(),
                            Inbound::Violation(code, reason) => Err(bye(code, reason)),
                            Inbound::Closed => Err(Close::Silent),
                        }
                    }
                    Io::Broken => Err(Close::Silent),
                },
                () = sleep_until(deadline) => {
                    if self.link.write_overdue() {
                        Err(Close::Silent)
                    } else if idle_deadline <= Instant::now() {
                        Err(bye(
                            ErrorCode::IdleTimeout,
                            format!(
                                "nothing received for {} ms",
                                gw.config.idle_timeout.as_millis()
                            ),
                        ))
                    } else if self.gap_deadline().is_some_and(|t| t <= Instant::now()) {
                        // Plan the held batches again: pushed if a sync
                        // answer moved the device past the gap, a notice
                        // if it is still there.
                        self.on_pushes(Vec::new())
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(close) = step {
                return close;
            }
        }
    }

    async fn handshake(&mut self) -> Sent {
        let deadline = self.accepted + self.gw.config.handshake_timeout;
        let (id, hello) = loop {
            let write_timeout = self.gw.config.write_timeout;
            let reading = poll_fn(|cx| self.link.poll_io(cx, write_timeout));
            let Ok(first) = tokio::time::timeout_at(deadline, reading).await else {
                return Err(bye(ErrorCode::HandshakeTimeout, "no Hello in time"));
            };
            let first = match first {
                Io::Inbound(inbound) => inbound,
                Io::Broken => return Err(Close::Silent),
            };
            match first {
                Inbound::Frame(f) if matches!(f.body, Some(Body::Hello(_))) => {
                    let Frame {
                        request_id,
                        body: Some(Body::Hello(h)),
                    } = *f
                    else {
                        unreachable!("matched a Hello")
                    };
                    break (request_id, h);
                }
                // WebSocket keep-alives may come before the Hello.
                Inbound::Activity => continue,
                Inbound::Frame(_) => {
                    return Err(bye(
                        ErrorCode::HandshakeRequired,
                        "the first frame must be a Hello",
                    ));
                }
                Inbound::Violation(code, reason) => return Err(bye(code, reason)),
                Inbound::Closed => return Err(Close::Silent),
            }
        };
        let Some(version) = negotiate(
            hello.min_version,
            hello.max_version,
            PROTOCOL_VERSION_MIN,
            PROTOCOL_VERSION_MAX,
        ) else {
            return Err(bye(
                ErrorCode::UpgradeRequired,
                format!(
                    "this server speaks protocol versions {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION_MAX}; the client speaks {} to {}",
                    hello.min_version, hello.max_version
                ),
            ));
        };
        self.packed = version >= PACKED_EVENTS_VERSION;
        if !hello.token.is_empty() {
            match self.gw.service.authenticate(&hello.token).await {
                Ok(session) => self.authenticated(session).await?,
                Err(e) => return Err(bye(e.code(), e.to_string())),
            }
        }
        let config = &self.gw.config;
        let core = self.gw.service.config();
        let welcome = Welcome {
            version,
            server_min_version: PROTOCOL_VERSION_MIN,
            server_max_version: PROTOCOL_VERSION_MAX,
            user_id: self.session.as_ref().map_or(0, |s| s.user_id),
            username: self
                .session
                .as_ref()
                .map_or_else(String::new, |s| s.username.clone()),
            device_id: self.session.as_ref().map_or(0, |s| s.device_id),
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
            idle_timeout_ms: config.idle_timeout.as_millis() as u32,
            limits: Some(Limits {
                frame_bytes_max: config.frame_bytes_max as u32,
                message_bytes_max: core.message_bytes_max as u32,
                sync_batch_events_max: core.sync_batch_events_max.min(SYNC_BATCH_EVENTS_CEILING),
                history_page_max: core.history_page_max.min(HISTORY_PAGE_CEILING),
                inflight_requests_max: config.inflight_requests_max as u32,
                client_msg_id_bytes_max: limits::CLIENT_MSG_ID_BYTES_MAX as u32,
            }),
            server_name: SERVER_NAME.to_string(),
            flags: match &self.session {
                Some(s) => self
                    .gw
                    .service
                    .enabled_flags(s.user_id, &s.username)
                    .await
                    .unwrap_or_default(),
                None => Vec::new(),
            },
        };
        self.send(Frame::new(id, Body::Welcome(welcome)))
    }

    /// Registers the connection as `session`'s device, then checks the
    /// session once more: a revocation (logout elsewhere, the administrator
    /// revoking sessions or disabling the account) that committed after the
    /// first check closed only the connections registered at the time, and
    /// would miss this one.
    async fn authenticated(&mut self, session: Session) -> Sent {
        let mailbox = self.mailbox().clone();
        let (reg, first) =
            self.gw
                .registry
                .register_mailbox(session.user_id, &session.token_hash, mailbox);
        if first {
            self.presence(&session, true);
        }
        self.registration = Some(reg);
        self.session = Some(session.clone());
        match self.gw.service.recheck(&session).await {
            Ok(()) => Ok(()),
            Err(e) => Err(bye(e.code(), e.to_string())),
        }
    }

    /// Tells contacts in the background that the user came or went.
    fn presence(&self, session: &Session, online: bool) {
        let service = self.gw.service.clone();
        let (user, name) = (session.user_id, session.username.clone());
        tokio::spawn(async move {
            if let Err(e) = service.presence_changed(user, &name, online).await {
                tracing::warn!(error = %e, "presence update failed");
            }
        });
    }

    async fn on_frame(&mut self, frame: Box<Frame>) -> Sent {
        let id = frame.request_id;
        let priority = frame
            .body
            .as_ref()
            .map_or(Priority::Normal, admission::priority);
        if id != 0 {
            let requests = self.requests.get_or_insert_default();
            if requests.read.iter().any(|r| r.id == id) {
                return Err(bye(
                    ErrorCode::BadRequestId,
                    format!("request_id {id} is already in flight"),
                ));
            }
            if requests.read.len() <= self.gw.config.inflight_requests_max {
                requests.read.push(Request {
                    id,
                    kind: pigeon_proto::body_name(frame.body.as_ref()),
                    at: std::time::Instant::now(),
                    priority,
                });
            }
        }
        let Some(body) = frame.body else {
            // A body this version does not know. With an id it is a request
            // we must answer; without one, a newer client's notification we
            // may ignore.
            if id == 0 {
                return Ok(());
            }
            return self.send(Frame::error(
                id,
                ErrorCode::UnknownRequest,
                "unknown request type",
            ));
        };
        if let Body::Hello(_) = body {
            return self.send(Frame::error(
                id,
                ErrorCode::HandshakeRequired,
                "the handshake is already done",
            ));
        }
        if id == 0 {
            return Err(bye(
                ErrorCode::BadRequestId,
                "requests must carry a non-zero request_id",
            ));
        }
        if matches!(body, Body::LoginRequest(_) | Body::RegisterRequest(_))
            && let Ok(peer) = self.peer.parse::<std::net::SocketAddr>()
            && let Err(wait) = self.gw.admission.ip_login(peer.ip())
        {
            return self.send(busy(id, wait, "too many login attempts from your address"));
        }
        let service = self.gw.service.clone();
        match body {
            Body::Ping(p) => self.send(Frame::new(
                id,
                Body::Pong(Pong {
                    nonce: p.nonce,
                    server_time_ms: now_ms(),
                }),
            )),
            Body::RegisterRequest(r) => self.spawn(id, async move {
                service
                    .register(&r.username, &r.password)
                    .await
                    .map(Body::RegisterResponse)
            }),
            Body::LoginRequest(r) => {
                if self.session.is_some() {
                    return self.send(Frame::error(
                        id,
                        ErrorCode::AlreadyAuthenticated,
                        "this connection is logged in already; open another for another account",
                    ));
                }
                match service
                    .login(&r.username, &r.password, &r.device_name)
                    .await
                {
                    Ok((response, session)) => {
                        self.authenticated(session).await?;
                        self.send(Frame::new(id, Body::LoginResponse(response)))
                    }
                    Err(e) => self.send(error_frame(id, &e)),
                }
            }
            body if !is_request(&body) => self.send(Frame::error(
                id,
                ErrorCode::UnknownRequest,
                "not a request a client may send",
            )),
            body => {
                let Some(session) = self.session.clone() else {
                    return self.send(Frame::error(id, ErrorCode::Unauthenticated, "log in first"));
                };
                if let Err(wait) = self.gw.admission.user_request(session.user_id) {
                    return self.send(busy(id, wait, "you are sending requests too fast"));
                }
                if let Err(wait) = self.gw.admission.admit(priority) {
                    return self.send(busy(id, wait, "the server is overloaded"));
                }
                if session.expires_at_ms <= now_ms() {
                    return Err(bye(
                        ErrorCode::TokenExpired,
                        "the session has expired; log in again",
                    ));
                }
                self.on_authed_request(id, body, session).await
            }
        }
    }

    async fn on_authed_request(&mut self, id: u64, body: Body, session: Session) -> Sent {
        let service = self.gw.service.clone();
        match body {
            Body::LogoutRequest(_) => match service.logout(&session).await {
                Ok(()) => {
                    self.send(Frame::new(id, Body::LogoutResponse(v1::LogoutResponse {})))?;
                    self.gw
                        .registry
                        .revoke(session.user_id, &session.token_hash);
                    Err(bye(ErrorCode::TokenRevoked, "logged out"))
                }
                Err(e) => self.send(error_frame(id, &e)),
            },
            Body::SyncRequest(r) => match service.sync(&session, &r.key, r.limit).await {
                Ok(mut outcome) => {
                    self.cursor = Some(outcome.cursor);
                    self.cursor_key.clone_from(&outcome.response.key);
                    self.notice_pending = false;
                    let response = &mut outcome.response;
                    if self.packed {
                        response.packed =
                            Some(packing::pack(&mut response.events, session.user_id));
                    }
                    self.send(Frame::new(id, Body::SyncResponse(outcome.response)))
                }
                Err(e) => self.send(error_frame(id, &e)),
            },
            Body::SendRequest(r) => self.spawn(id, async move {
                service.send(&session, r).await.map(Body::SendResponse)
            }),
            Body::HistoryRequest(r) => self.spawn(id, async move {
                service
                    .history(&session, r.target.as_ref(), r.before, r.limit)
                    .await
                    .map(Body::HistoryResponse)
            }),
            Body::ListConversationsRequest(r) => self.spawn(id, async move {
                service
                    .list_conversations(&session, r.limit)
                    .await
                    .map(|conversations| {
                        Body::ListConversationsResponse(v1::ListConversationsResponse {
                            conversations,
                        })
                    })
            }),
            Body::MarkReadRequest(r) => self.spawn(id, async move {
                service
                    .mark_read(&session, &r.conversation_id, r.read_up_to)
                    .await
                    .map(Body::MarkReadResponse)
            }),
            other => match social_request(service, session, other) {
                Some(work) => self.spawn(id, work),
                None => self.send(Frame::error(
                    id,
                    ErrorCode::UnknownRequest,
                    "unknown request type",
                )),
            },
        }
    }

    /// Starts a request under the in-flight limit; its answer is queued
    /// when it is done (see [`poll_answered`]).
    fn spawn(
        &mut self,
        id: u64,
        work: impl Future<Output = Result<Body, CoreError>> + Send + 'static,
    ) -> Sent {
        if self.inflight() >= self.gw.config.inflight_requests_max {
            return self.send(Frame::error(
                id,
                ErrorCode::TooManyRequests,
                format!(
                    "more than {} requests in flight",
                    self.gw.config.inflight_requests_max
                ),
            ));
        }
        self.requests
            .get_or_insert_default()
            .running
            .get_or_insert_default()
            .push(Box::pin(answer(id, work)));
        Ok(())
    }

    /// Requests running.
    fn inflight(&self) -> usize {
        self.requests
            .as_ref()
            .and_then(|r| r.running.as_ref())
            .map_or(0, |r| r.len())
    }

    /// Queues the answers of the requests done, without waiting.
    fn on_answers(&mut self) -> Sent {
        while let Some(running) = self.requests.as_mut().and_then(|r| r.running.as_mut())
            && let Some(Some(frame)) = running.next().now_or_never()
        {
            self.send(*frame)?;
        }
        Ok(())
    }

    /// Takes the answers done and what the mailbox holds.
    fn on_woken(&mut self) -> Sent {
        if let Some(mailbox) = &self.mailbox {
            // The mail is taken now: a wake-up left for it would only turn
            // the loop once more for nothing.
            let _ = mailbox.wake.notified().now_or_never();
        }
        self.on_answers()?;
        self.on_mailbox()
    }

    /// The connection's mailbox, created on first use.
    fn mailbox(&mut self) -> &Arc<Mailbox> {
        let capacity = self.gw.config.push_queue_batches_max;
        self.mailbox
            .get_or_insert_with(|| Arc::new(Mailbox::new(capacity)))
    }

    /// Takes what the mailbox holds: the registry's flags and pushes.
    fn on_mailbox(&mut self) -> Sent {
        let Some(mailbox) = self.mailbox.clone() else {
            return Ok(());
        };
        if mailbox.revoked.load(Ordering::SeqCst) {
            return Err(bye(ErrorCode::TokenRevoked, "the session was revoked"));
        }
        match ErrorCode::try_from(mailbox.close_code.load(Ordering::SeqCst)) {
            Ok(ErrorCode::Unspecified) | Err(_) => {}
            Ok(ErrorCode::AccountDisabled) => {
                return Err(bye(ErrorCode::AccountDisabled, "this account was disabled"));
            }
            Ok(code) => return Err(bye(code, "the session was revoked")),
        }
        let mut batches = Vec::new();
        for push in mailbox.take() {
            match push {
                Push::Events(batch) => batches.push(batch),
                Push::Notice => self.notice()?,
                Push::Ephemeral(body) => {
                    crate::metrics::pushed(if matches!(*body, Body::TypingPush(_)) {
                        "typing"
                    } else {
                        "presence"
                    });
                    self.send(Frame::push((*body).clone()))?;
                }
            }
        }
        self.on_pushes(batches)?;
        if mailbox.lagged.swap(false, Ordering::SeqCst) {
            return self.notice();
        }
        Ok(())
    }

    /// When the batches held behind a gap are given up for a notice.
    fn gap_deadline(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.since + PUSH_GAP_WAIT)
    }

    /// Pushes the batches of new events taken from the mailbox in one go
    /// (see [`plan_pushes`]).
    fn on_pushes(&mut self, mut batches: Vec<Arc<PushBatch>>) -> Sent {
        let held_since = self.held.take().map(|held| {
            batches.extend(held.batches);
            held.since
        });
        let Some(cursor) = self.cursor else {
            return if batches.is_empty() {
                Ok(())
            } else {
                self.notice()
            };
        };
        let bytes_max = self.gw.service.config().sync_batch_bytes_max;
        for step in plan_pushes(cursor.seq, batches, bytes_max) {
            match step {
                PushStep::Push(chain) => self.push_chain(&chain)?,
                PushStep::Gap(rest) => {
                    let now = Instant::now();
                    return match hold(rest, held_since.unwrap_or(now), now, self.notice_pending) {
                        Some(held) => {
                            self.held = Some(Box::new(held));
                            Ok(())
                        }
                        None => self.notice(),
                    };
                }
            }
        }
        Ok(())
    }

    /// Pushes a chain of batches that begins at the device's cursor.
    fn push_chain(&mut self, chain: &[Arc<PushBatch>]) -> Sent {
        let c = self.cursor.expect("pushes are planned from a cursor");
        let user = chain[0].user_id;
        let after = Position {
            seq: chain[chain.len() - 1].last_seq,
            ..c
        };
        let events: Vec<v1::Event> = chain
            .iter()
            .flat_map(|b| b.events.iter().cloned())
            .collect();
        let key = self.gw.service.key_for(user, after);
        let prev_key = std::mem::replace(&mut self.cursor_key, key.clone());
        let mut push = EventsPush {
            prev_key,
            events,
            key,
            packed: None,
        };
        if self.packed {
            push.packed = Some(packing::pack(&mut push.events, user));
        }
        self.cursor = Some(after);
        crate::metrics::pushed("events");
        self.send(Frame::push(Body::EventsPush(push)))?;
        if let Some(session) = &self.session {
            for batch in chain {
                self.gw.service.delivered(session, &batch.events);
            }
        }
        Ok(())
    }

    fn notice(&mut self) -> Sent {
        if self.notice_pending {
            return Ok(());
        }
        self.notice_pending = true;
        crate::metrics::pushed("notice");
        self.send(Frame::push(Body::SyncNotice(SyncNotice {})))
    }

    /// Stops taking requests, lets the running ones finish (bounded), and
    /// says goodbye.
    async fn drain(&mut self) -> Close {
        let deadline = Instant::now() + DRAIN_WAIT_MAX;
        let write_timeout = self.gw.config.write_timeout;
        while self.inflight() > 0 {
            // Queued frames keep going out meanwhile.
            tokio::select! {
                frame = poll_fn(|cx| poll_answered(&mut self.requests, cx)) => {
                    if self.send(*frame).and_then(|()| self.on_answers()).is_err() {
                        return Close::Silent;
                    }
                }
                () = poll_fn(|cx| self.link.poll_broken(cx, write_timeout)) => return Close::Silent,
                () = sleep_until(deadline) => break,
            }
        }
        let config = &self.gw.config;
        // Spread the reconnections of a draining node's clients.
        let spread = config.drain_reconnect_spread.as_millis() as u64;
        let retry_after_ms = if spread == 0 {
            0
        } else {
            rand::random_range(0..spread) as u32
        };
        Close::Frame(Box::new(Frame::push(Body::Goodbye(v1::Goodbye {
            code: ErrorCode::ShuttingDown as i32,
            message: "server is shutting down; reconnect".into(),
            redirect_to: self.gw.redirect_to(),
            retry_after_ms,
        }))))
    }
}

/// The answer to request `id` once `work` is done. A request that panics
/// fails alone: its client gets an `INTERNAL` error for it, and the
/// connection goes on.
async fn answer(id: u64, work: impl Future<Output = Result<Body, CoreError>>) -> Box<Frame> {
    Box::new(match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(body)) => Frame::new(id, body),
        Ok(Err(e)) => error_frame(id, &e),
        Err(_) => {
            tracing::error!(request_id = id, "a request panicked");
            Frame::error(id, ErrorCode::Internal, "internal server error")
        }
    })
}

/// The answer of the next request to finish; pending while none runs (a
/// request started wakes nothing: the loop goes round and polls again).
fn poll_answered(requests: &mut Option<Box<Requests>>, cx: &mut Context<'_>) -> Poll<Box<Frame>> {
    let running = requests.as_mut().and_then(|r| r.running.as_mut());
    match running.map(|r| r.poll_next_unpin(cx)) {
        Some(Poll::Ready(Some(frame))) => Poll::Ready(frame),
        _ => Poll::Pending,
    }
}

/// Resolves when the mailbox may hold something.
async fn mail(mailbox: Option<&Mailbox>) {
    match mailbox {
        Some(m) => m.wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Whether a client may send this body as a request.
fn is_request(body: &Body) -> bool {
    matches!(
        body,
        Body::LogoutRequest(_)
            | Body::SendRequest(_)
            | Body::SyncRequest(_)
            | Body::HistoryRequest(_)
            | Body::ListConversationsRequest(_)
            | Body::MarkReadRequest(_)
            | Body::CreateGroupRequest(_)
            | Body::UpdateGroupRequest(_)
            | Body::AddMembersRequest(_)
            | Body::RemoveMembersRequest(_)
            | Body::LeaveGroupRequest(_)
            | Body::SetRoleRequest(_)
            | Body::TransferOwnershipRequest(_)
            | Body::DissolveGroupRequest(_)
            | Body::GetGroupRequest(_)
            | Body::ListMembersRequest(_)
            | Body::RecallMessageRequest(_)
            | Body::EditMessageRequest(_)
            | Body::DeleteMessageRequest(_)
            | Body::GetReceiptsRequest(_)
            | Body::SetTypingRequest(_)
            | Body::GetPresenceRequest(_)
            | Body::SetPrivacyRequest(_)
            | Body::BlockRequest(_)
            | Body::UnblockRequest(_)
            | Body::ListBlockedRequest(_)
    )
}

type Work = std::pin::Pin<Box<dyn Future<Output = Result<Body, CoreError>> + Send>>;

/// The group, message-change, presence and blocking requests: each runs as
/// a task and answers with one body.
fn social_request(service: Arc<pigeon_core::Service>, s: Session, body: Body) -> Option<Work> {
    use v1::*;
    Some(match body {
        Body::CreateGroupRequest(r) => Box::pin(async move {
            let group = service.create_group(&s, r).await?;
            Ok(Body::CreateGroupResponse(CreateGroupResponse {
                group: Some(group),
            }))
        }),
        Body::UpdateGroupRequest(r) => Box::pin(async move {
            let group = service.update_group(&s, r).await?;
            Ok(Body::UpdateGroupResponse(UpdateGroupResponse {
                group: Some(group),
            }))
        }),
        Body::AddMembersRequest(r) => Box::pin(async move {
            Ok(Body::AddMembersResponse(
                service
                    .add_members(&s, &r.conversation_id, &r.usernames)
                    .await?,
            ))
        }),
        Body::RemoveMembersRequest(r) => Box::pin(async move {
            Ok(Body::RemoveMembersResponse(
                service
                    .remove_members(&s, &r.conversation_id, &r.usernames)
                    .await?,
            ))
        }),
        Body::LeaveGroupRequest(r) => Box::pin(async move {
            service.leave_group(&s, &r.conversation_id).await?;
            Ok(Body::LeaveGroupResponse(LeaveGroupResponse {}))
        }),
        Body::SetRoleRequest(r) => Box::pin(async move {
            let group = service
                .set_role(&s, &r.conversation_id, &r.username, r.role)
                .await?;
            Ok(Body::SetRoleResponse(SetRoleResponse {
                group: Some(group),
            }))
        }),
        Body::TransferOwnershipRequest(r) => Box::pin(async move {
            let group = service
                .transfer_ownership(&s, &r.conversation_id, &r.username)
                .await?;
            Ok(Body::TransferOwnershipResponse(TransferOwnershipResponse {
                group: Some(group),
            }))
        }),
        Body::DissolveGroupRequest(r) => Box::pin(async move {
            service.dissolve_group(&s, &r.conversation_id).await?;
            Ok(Body::DissolveGroupResponse(DissolveGroupResponse {}))
        }),
        Body::GetGroupRequest(r) => Box::pin(async move {
            Ok(Body::GetGroupResponse(
                service.get_group(&s, &r.conversation_id).await?,
            ))
        }),
        Body::ListMembersRequest(r) => Box::pin(async move {
            let page = service
                .list_members(&s, &r.conversation_id, r.after_user_id, r.limit)
                .await?;
            Ok(Body::ListMembersResponse(page))
        }),
        Body::RecallMessageRequest(r) => Box::pin(async move {
            service.recall(&s, &r.conversation_id, r.conv_seq).await?;
            Ok(Body::RecallMessageResponse(RecallMessageResponse {}))
        }),
        Body::EditMessageRequest(r) => Box::pin(async move {
            let edited_at_ms = service
                .edit(&s, &r.conversation_id, r.conv_seq, r.content)
                .await?;
            Ok(Body::EditMessageResponse(EditMessageResponse {
                edited_at_ms,
            }))
        }),
        Body::DeleteMessageRequest(r) => Box::pin(async move {
            service
                .delete_for_me(&s, &r.conversation_id, r.conv_seq)
                .await?;
            Ok(Body::DeleteMessageResponse(DeleteMessageResponse {}))
        }),
        Body::GetReceiptsRequest(r) => Box::pin(async move {
            let receipts = service
                .receipts(&s, &r.conversation_id, &r.conv_seqs)
                .await?;
            Ok(Body::GetReceiptsResponse(GetReceiptsResponse { receipts }))
        }),
        Body::SetTypingRequest(r) => Box::pin(async move {
            service.set_typing(&s, &r.conversation_id, r.typing).await?;
            Ok(Body::SetTypingResponse(SetTypingResponse {}))
        }),
        Body::GetPresenceRequest(r) => Box::pin(async move {
            let presences = service.get_presence(&s, &r.usernames).await?;
            Ok(Body::GetPresenceResponse(GetPresenceResponse { presences }))
        }),
        Body::SetPrivacyRequest(r) => Box::pin(async move {
            let hide_presence = service.set_privacy(&s, r.hide_presence).await?;
            Ok(Body::SetPrivacyResponse(SetPrivacyResponse {
                hide_presence,
            }))
        }),
        Body::BlockRequest(r) => Box::pin(async move {
            service.set_blocked(&s, &r.username, true).await?;
            Ok(Body::BlockResponse(BlockResponse {}))
        }),
        Body::UnblockRequest(r) => Box::pin(async move {
            service.set_blocked(&s, &r.username, false).await?;
            Ok(Body::UnblockResponse(UnblockResponse {}))
        }),
        Body::ListBlockedRequest(_) => Box::pin(async move {
            let usernames = service.list_blocked(&s).await?;
            Ok(Body::ListBlockedResponse(ListBlockedResponse { usernames }))
        }),
        _ => return None,
    })
}

/// A BUSY answer with a retry-after.
fn busy(id: u64, retry_after_ms: u32, why: &str) -> Frame {
    Frame::new(
        id,
        Body::Error(v1::Error {
            code: ErrorCode::Busy as i32,
            message: format!("{why}; retry after {retry_after_ms} ms"),
            retry_after_ms,
        }),
    )
}

/// The one place a domain error becomes a wire error.
fn error_frame(id: u64, e: &CoreError) -> Frame {
    let code = e.code();
    let message = if code == ErrorCode::Internal {
        tracing::error!(error = %e, "request failed");
        "internal server error".to_string()
    } else {
        e.to_string()
    };
    Frame::error(id, code, message)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What to send a device for batches of its log's new events.
enum PushStep {
    /// These batches, which follow each other from the device's position,
    /// as one `EventsPush`.
    Push(Vec<Arc<PushBatch>>),
    /// The device is not where the next batch begins: these batches, from
    /// there on, cannot be pushed until the missing one arrives.
    Gap(Vec<Arc<PushBatch>>),
}

/// Whether to hold batches behind a gap (first seen at `since`) for the
/// batch that fills it, or give up and send a `SyncNotice`: given up after
/// [`PUSH_GAP_WAIT`], past [`PUSH_EVENTS_MAX`] held events, or when a
/// notice is already out (the device's sync brings them anyway).
fn hold(
    batches: Vec<Arc<PushBatch>>,
    since: Instant,
    now: Instant,
    notice_pending: bool,
) -> Option<Held> {
    let events: usize = batches.iter().map(|b| b.events.len()).sum();
    if notice_pending || events > PUSH_EVENTS_MAX || now >= since + PUSH_GAP_WAIT {
        return None;
    }
    Some(Held { batches, since })
}

/// Plans the pushes for `batches` (taken from the mailbox together) to a
/// device at log position `at`.
///
/// Batches are published by the tasks whose writes committed them, and two
/// tasks may publish in the other order than their commits. Put back in log
/// order, batches that follow each other go out as one `EventsPush` (up to
/// `PUSH_EVENTS_MAX` events and `bytes_max` bytes of events, the bound of a
/// sync answer; a batch larger than that still goes out alone) instead of the later one becoming a
/// `SyncNotice` and a sync round trip. Batches the device already has (a
/// sync answer brought them) are skipped.
fn plan_pushes(mut at: u64, mut batches: Vec<Arc<PushBatch>>, bytes_max: usize) -> Vec<PushStep> {
    batches.sort_by_key(|b| b.prev_seq);
    let mut steps = Vec::new();
    let mut chain = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    let mut batches = batches.into_iter();
    while let Some(batch) = batches.next() {
        if batch.last_seq <= at {
            continue;
        }
        if batch.prev_seq != at {
            // A gap: nothing from here on can be pushed yet.
            if !chain.is_empty() {
                steps.push(PushStep::Push(std::mem::take(&mut chain)));
            }
            let rest = std::iter::once(batch).chain(batches).collect();
            steps.push(PushStep::Gap(rest));
            return steps;
        }
        let size: usize = batch.events.iter().map(prost::Message::encoded_len).sum();
        if !chain.is_empty()
            && (events + batch.events.len() > PUSH_EVENTS_MAX || bytes + size > bytes_max)
        {
            steps.push(PushStep::Push(std::mem::take(&mut chain)));
            (events, bytes) = (0, 0);
        }
        events += batch.events.len();
        bytes += size;
        at = batch.last_seq;
        chain.push(batch);
    }
    if !chain.is_empty() {
        steps.push(PushStep::Push(chain));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of a connection's future, at most. Tokio allocates a task as a
    /// 32-byte header, the future (in an enum), and a 48-byte trailer,
    /// rounded up to a multiple of 128 bytes: up to this size the task takes
    /// 768 bytes, the largest part of an idle connection.
    const IDLE_FUTURE_BYTES_MAX: usize = 680;

    /// The size of what `f` returns, without calling it.
    fn output_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Checks that the future of an idle connection, which is most of its
    /// task's memory, stays within `IDLE_FUTURE_BYTES_MAX`: frame work must
    /// stay boxed and the loop's state small.
    #[test]
    fn an_idle_connection_future_stays_small() {
        let size = output_size(run);
        assert!(
            size <= IDLE_FUTURE_BYTES_MAX,
            "a connection's future is {size} bytes, more than {IDLE_FUTURE_BYTES_MAX}"
        );
    }

    /// Checks that a request's answer carries its id, and that a request
    /// that panics is answered with `INTERNAL` rather than taking its
    /// connection down.
    #[tokio::test]
    async fn a_request_that_panics_is_answered_with_an_error() {
        let ok = answer(7, async { Ok(Body::Pong(Pong::default())) }).await;
        assert_eq!(ok.request_id, 7);
        assert!(matches!(ok.body, Some(Body::Pong(_))));
        let refused = answer(8, async { Err(CoreError::UsernameTaken) }).await;
        assert!(
            matches!(&refused.body, Some(Body::Error(e)) if e.code == ErrorCode::UsernameTaken as i32),
            "{refused:?}"
        );
        let panicked = answer(9, async {
            if true {
                panic!("a bug in a request");
            }
            Ok(Body::Pong(Pong::default()))
        })
        .await;
        assert_eq!(panicked.request_id, 9);
        assert!(
            matches!(&panicked.body, Some(Body::Error(e)) if e.code == ErrorCode::Internal as i32),
            "{panicked:?}"
        );
    }

    fn batch(prev_seq: u64, last_seq: u64) -> Arc<PushBatch> {
        Arc::new(PushBatch {
            user_id: 1,
            prev_seq,
            last_seq,
            events: (prev_seq + 1..=last_seq)
                .map(|seq| v1::Event {
                    seq,
                    ..v1::Event::default()
                })
                .collect(),
        })
    }

    /// The plan as (prev, last) of each pushed batch, or of the batches
    /// behind a gap.
    type Plan = Vec<Result<Vec<(u64, u64)>, Vec<(u64, u64)>>>;

    fn plan(at: u64, batches: &[(u64, u64)]) -> Plan {
        let batches = batches.iter().map(|&(p, l)| batch(p, l)).collect();
        plan_pushes(at, batches, usize::MAX)
            .into_iter()
            .map(|step| match step {
                PushStep::Push(chain) => {
                    Ok(chain.iter().map(|b| (b.prev_seq, b.last_seq)).collect())
                }
                PushStep::Gap(rest) => Err(rest.iter().map(|b| (b.prev_seq, b.last_seq)).collect()),
            })
            .collect()
    }

    /// Checks batches published out of order go out in log order as one
    /// push, that batches the device has are skipped, that what follows a
    /// gap is handed back after what could be pushed, and that a chain is
    /// cut at `PUSH_EVENTS_MAX` events.
    #[test]
    fn pushes_are_put_in_order_and_chained() {
        assert_eq!(plan(3, &[(5, 7), (3, 5)]), [Ok(vec![(3, 5), (5, 7)])]);
        assert_eq!(plan(5, &[(3, 5), (5, 6)]), [Ok(vec![(5, 6)])]);
        assert_eq!(plan(6, &[(3, 5), (5, 6)]), []);
        assert_eq!(
            plan(3, &[(8, 9), (3, 4), (6, 8)]),
            [Ok(vec![(3, 4)]), Err(vec![(6, 8), (8, 9)])]
        );
        assert_eq!(plan(2, &[(3, 4)]), [Err(vec![(3, 4)])]);
        let max = PUSH_EVENTS_MAX as u64;
        assert_eq!(
            plan(0, &[(0, max - 1), (max - 1, max + 1)]),
            [Ok(vec![(0, max - 1)]), Ok(vec![(max - 1, max + 1)])]
        );
    }

    /// Checks a chain is also cut at `bytes_max` bytes of events, and that
    /// a batch larger than that alone still goes out.
    #[test]
    fn a_chained_push_stays_within_the_byte_bound() {
        let batches = || vec![batch(0, 2), batch(2, 4), batch(4, 5)];
        let two_events: usize = batch(0, 2)
            .events
            .iter()
            .map(prost::Message::encoded_len)
            .sum();
        let shape = |steps: Vec<PushStep>| -> Vec<Vec<(u64, u64)>> {
            steps
                .into_iter()
                .map(|step| match step {
                    PushStep::Push(chain) => {
                        chain.iter().map(|b| (b.prev_seq, b.last_seq)).collect()
                    }
                    PushStep::Gap(_) => panic!("no gap here"),
                })
                .collect()
        };
        assert_eq!(
            shape(plan_pushes(0, batches(), two_events + 1)),
            [vec![(0, 2)], vec![(2, 4)], vec![(4, 5)]]
        );
        assert_eq!(
            shape(plan_pushes(0, batches(), 1)),
            [vec![(0, 2)], vec![(2, 4)], vec![(4, 5)]]
        );
        assert_eq!(
            shape(plan_pushes(0, batches(), usize::MAX)),
            [vec![(0, 2), (2, 4), (4, 5)]]
        );
    }

    /// Checks batches behind a gap are held for the one that fills it, and
    /// given up for a notice once [`PUSH_GAP_WAIT`] has passed since the
    /// gap was first seen, past [`PUSH_EVENTS_MAX`] events, or when a
    /// notice is already out.
    #[test]
    fn a_gap_is_held_briefly_then_becomes_a_notice() {
        let t0 = Instant::now();
        let small = || vec![batch(6, 8)];
        let held = hold(small(), t0, t0 + PUSH_GAP_WAIT / 2, false).expect("held");
        assert_eq!(held.since, t0);
        assert_eq!(held.batches.len(), 1);
        assert!(hold(small(), t0, t0 + PUSH_GAP_WAIT, false).is_none());
        assert!(hold(small(), t0, t0, true).is_none());
        let max = PUSH_EVENTS_MAX as u64;
        assert!(hold(vec![batch(6, 6 + max + 1)], t0, t0, false).is_none());
        assert!(hold(vec![batch(6, 6 + max)], t0, t0, false).is_some());
    }
}
