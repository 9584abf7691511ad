//! One connection's life, the same for TCP and WebSocket.
//!
//! Three tasks per connection: a reader (frames in, through a small bounded
//! channel, so a fast sender is slowed by TCP, not buffered), a writer
//! (frames out of the bounded outbound queue), and this loop, which owns the
//! connection state. Requests that touch the device's sync position (sync,
//! login, logout) and pushes are handled here in order; the others run as
//! tasks, at most `inflight_requests_max` at a time, so a pipelining client
//! gets its sends into one group commit.
//!
//! Only this loop puts frames on the outbound queue, and it never waits for
//! room: a full queue means the peer does not read, and the connection is
//! closed (`SLOW_CONSUMER`) rather than allowed to grow memory or stall.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pigeon_core::config::{HISTORY_PAGE_CEILING, SYNC_BATCH_EVENTS_CEILING};
use pigeon_core::{CoreError, Position, PushBatch, Session};
use pigeon_proto::Body;
use pigeon_proto::v1::{self, EventsPush, Limits, Pong, SyncNotice, Welcome};
use pigeon_proto::version::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, negotiate};
use pigeon_proto::{ErrorCode, Frame, limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until, timeout};

use crate::Gateway;
use crate::admission::{self, Priority};
use crate::registry::{ConnFlags, Push, Registration};
use crate::transport::{FrameReader, FrameWriter, Inbound};

/// Frames read ahead of the connection loop.
const INBOUND_QUEUE_FRAMES_MAX: usize = 8;
/// Longest wait for in-flight requests when the server drains.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(5);

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
pub(crate) async fn refuse(mut writer: Box<dyn FrameWriter>, goodbye: Frame) {
    let _ = timeout(Duration::from_secs(2), writer.write(&goodbye)).await;
    writer.close().await;
}

/// Serves one connection until it ends. `_permit` holds its place under the
/// connection cap; the Hello is due `handshake_timeout` after `accepted`
/// (time spent on a TLS handshake counts).
pub(crate) async fn run(
    gw: Arc<Gateway>,
    mut reader: Box<dyn FrameReader>,
    writer: Box<dyn FrameWriter>,
    peer: String,
    _permit: OwnedSemaphorePermit,
    accepted: Instant,
) {
    crate::metrics::connection(1);
    let (in_tx, mut in_rx) = mpsc::channel(INBOUND_QUEUE_FRAMES_MAX);
    let reader_task = tokio::spawn(async move {
        loop {
            let item = reader.next().await;
            let last = matches!(item, Inbound::Closed | Inbound::Violation(..));
            if in_tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    // One slot more than the limit: room for the goodbye to a slow reader.
    let (out_tx, out_rx) = mpsc::channel(gw.config.outbound_queue_frames_max.max(1) + 1);
    let mut writer_task = tokio::spawn(write_loop(writer, out_rx, gw.config.write_timeout));

    let peer_ip = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    let mut conn = Conn {
        peer_ip,
        inflight: Arc::new(Semaphore::new(gw.config.inflight_requests_max)),
        done: mpsc::channel(gw.config.inflight_requests_max.max(1)),
        inflight_ids: HashSet::new(),
        started: HashMap::new(),
        gw,
        out: out_tx,
        session: None,
        registration: None,
        cursor: None,
        notice_pending: false,
        accepted,
    };
    // A JoinHandle must not be polled again once it has completed: when the
    // writer ends first (the socket failed), there is nothing to wait for
    // at the end.
    let mut writer_ended = false;
    let close = tokio::select! {
        close = conn.serve(&mut in_rx) => close,
        _ = &mut writer_task => {
            writer_ended = true;
            Close::Silent
        }
    };
    let goodbye = match close {
        Close::Goodbye(code, reason) => {
            tracing::debug!(%peer, ?code, %reason, "closing connection");
            Some(Frame::goodbye(code, reason))
        }
        Close::Frame(frame) => Some(*frame),
        Close::Silent => None,
    };
    if let Some(frame) = goodbye {
        // The queue may be full (slow consumer): then the goodbye is lost,
        // which is fine, the socket closes anyway.
        let _ = conn.out.try_send(Box::new(frame));
    }
    reader_task.abort();
    if let (Some(reg), Some(session)) = (conn.registration.take(), conn.session.take())
        && conn.gw.registry.unregister(reg)
    {
        conn.presence(&session, false);
    }
    drop(conn);
    if !writer_ended {
        let _ = timeout(Duration::from_secs(2), writer_task).await;
    }
    crate::metrics::connection(-1);
}

async fn write_loop(
    mut writer: Box<dyn FrameWriter>,
    mut rx: mpsc::Receiver<Box<Frame>>,
    write_timeout: Duration,
) {
    while let Some(frame) = rx.recv().await {
        crate::metrics::queued(-1);
        let last = matches!(frame.body, Some(Body::Goodbye(_)));
        match timeout(write_timeout, writer.write(&frame)).await {
            Ok(Ok(())) if !last => {}
            _ => break,
        }
    }
    writer.close().await;
}

struct Conn {
    gw: Arc<Gateway>,
    /// The peer's address, for per-address limits.
    peer_ip: Option<std::net::IpAddr>,
    /// Frames for the socket, boxed so an idle connection's queue is small.
    out: mpsc::Sender<Box<Frame>>,
    session: Option<Session>,
    registration: Option<Registration>,
    /// The seq this device is at, as far as this connection told it (by a
    /// sync answer or a push). `None` until its first sync here.
    cursor: Option<Position>,
    /// A sync notice went out and no sync has come since.
    notice_pending: bool,
    /// When the socket was accepted (or the WebSocket upgraded).
    accepted: Instant,
    inflight: Arc<Semaphore>,
    /// Request ids of the requests running as tasks.
    inflight_ids: HashSet<u64>,
    /// Requests read and not yet answered: type and arrival, so that every
    /// answer is counted and timed here, where requests are dispatched.
    started: HashMap<u64, (&'static str, std::time::Instant, Priority)>,
    /// Answers of requests running as tasks.
    done: (mpsc::Sender<Answer>, mpsc::Receiver<Answer>),
}

/// The answer of a request that ran as a task, with its in-flight permit.
type Answer = (Box<Frame>, OwnedSemaphorePermit);

/// The outcome of queueing a frame: a full queue ends the connection.
type Sent = Result<(), Close>;

impl Conn {
    fn send(&mut self, frame: Frame) -> Sent {
        let frame = self.fit(frame);
        if frame.request_id != 0
            && let Some((kind, at, priority)) = self.started.remove(&frame.request_id)
        {
            let took = at.elapsed();
            crate::metrics::answered(kind, &frame, took);
            if priority == Priority::Normal {
                self.gw.admission.observe(took);
            }
        }
        // The last slot is kept for the goodbye that tells a slow reader why
        // it is cut off.
        if self.out.capacity() <= 1 {
            crate::metrics::slow_consumer();
            tracing::info!("closing a connection whose reader is too slow");
            return Err(bye(
                ErrorCode::SlowConsumer,
                "you did not read your frames fast enough; reconnect and sync",
            ));
        }
        match self.out.try_send(Box::new(frame)) {
            Ok(()) => {
                crate::metrics::queued(1);
                Ok(())
            }
            Err(_) => Err(Close::Silent),
        }
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

    async fn serve(&mut self, in_rx: &mut mpsc::Receiver<Inbound>) -> Close {
        match self.handshake(in_rx).await {
            Ok(()) => {}
            Err(close) => return close,
        }
        let mut shutdown = self.gw.shutdown_rx.clone();
        let mut deadline = Instant::now() + self.gw.config.idle_timeout;
        loop {
            let flags = self.registration.as_ref().map(|r| r.flags.clone());
            let step = tokio::select! {
                _ = crate::stopped(&mut shutdown) => return self.drain().await,
                Some((frame, _permit)) = self.done.1.recv() => {
                    let frame = *frame;
                    self.inflight_ids.remove(&frame.request_id);
                    self.send(frame)
                }
                inbound = in_rx.recv() => {
                    deadline = Instant::now() + self.gw.config.idle_timeout;
                    match inbound {
                        Some(Inbound::Frame(frame)) => self.on_frame(*frame).await,
                        Some(Inbound::Activity) => Ok(()),
                        Some(Inbound::Violation(code, reason)) => Err(bye(code, reason)),
                        Some(Inbound::Closed) | None => Err(Close::Silent),
                    }
                }
                Some(push) = recv_push(&mut self.registration) => match push {
                    Push::Events(batch) => self.on_push(&batch),
                    Push::Notice => self.notice(),
                    Push::Ephemeral(body) => {
                        crate::metrics::pushed(if matches!(*body, Body::TypingPush(_)) { "typing" } else { "presence" });
                        self.send(Frame::push((*body).clone()))
                    }
                },
                _ = wake(flags.as_deref()) => self.on_flags(),
                _ = sleep_until(deadline) => Err(bye(
                    ErrorCode::IdleTimeout,
                    format!("nothing received for {} ms", self.gw.config.idle_timeout.as_millis()),
                )),
            };
            if let Err(close) = step {
                return close;
            }
        }
    }

    async fn handshake(&mut self, in_rx: &mut mpsc::Receiver<Inbound>) -> Sent {
        let deadline = self.accepted + self.gw.config.handshake_timeout;
        let (id, hello) = loop {
            let Ok(first) = tokio::time::timeout_at(deadline, in_rx.recv()).await else {
                return Err(bye(ErrorCode::HandshakeTimeout, "no Hello in time"));
            };
            match first {
                Some(Inbound::Frame(f)) if matches!(f.body, Some(Body::Hello(_))) => {
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
                Some(Inbound::Activity) => continue,
                Some(Inbound::Frame(_)) => {
                    return Err(bye(
                        ErrorCode::HandshakeRequired,
                        "the first frame must be a Hello",
                    ));
                }
                Some(Inbound::Violation(code, reason)) => return Err(bye(code, reason)),
                Some(Inbound::Closed) | None => return Err(Close::Silent),
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
        let (reg, first) = self.gw.registry.register(
            session.user_id,
            &session.token_hash,
            self.gw.config.push_queue_batches_max,
        );
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

    async fn on_frame(&mut self, frame: Frame) -> Sent {
        let id = frame.request_id;
        let priority = frame
            .body
            .as_ref()
            .map_or(Priority::Normal, admission::priority);
        if id != 0 && self.started.len() <= self.gw.config.inflight_requests_max {
            let kind = pigeon_proto::body_name(frame.body.as_ref());
            self.started
                .insert(id, (kind, std::time::Instant::now(), priority));
        }
        if id != 0 && self.inflight_ids.contains(&id) {
            return Err(bye(
                ErrorCode::BadRequestId,
                format!("request_id {id} is already in flight"),
            ));
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
            && let Some(ip) = self.peer_ip
            && let Err(wait) = self.gw.admission.ip_login(ip)
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
                Ok(outcome) => {
                    self.cursor = Some(outcome.cursor);
                    self.notice_pending = false;
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

    /// Runs a request as a task under the in-flight limit.
    fn spawn(
        &mut self,
        id: u64,
        work: impl Future<Output = Result<Body, CoreError>> + Send + 'static,
    ) -> Sent {
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            return self.send(Frame::error(
                id,
                ErrorCode::TooManyRequests,
                format!(
                    "more than {} requests in flight",
                    self.gw.config.inflight_requests_max
                ),
            ));
        };
        self.inflight_ids.insert(id);
        let done = self.done.0.clone();
        tokio::spawn(async move {
            let frame = match work.await {
                Ok(body) => Frame::new(id, body),
                Err(e) => error_frame(id, &e),
            };
            // The permit travels with the answer and is released once the
            // answer is queued for the socket, so a client that waits for
            // answers never exceeds the limit; and since each queued answer
            // holds a permit, the channel (sized to the limit) never fills.
            let _ = done.try_send((Box::new(frame), permit));
        });
        Ok(())
    }

    fn on_push(&mut self, batch: &PushBatch) -> Sent {
        match self.cursor {
            Some(c) if c.seq >= batch.last_seq => Ok(()),
            Some(c) if c.seq == batch.prev_seq => {
                let user = batch.user_id;
                let after = Position {
                    seq: batch.last_seq,
                    ..c
                };
                let push = EventsPush {
                    prev_key: self.gw.service.key_for(user, c),
                    events: batch.events.clone(),
                    key: self.gw.service.key_for(user, after),
                };
                self.cursor = Some(after);
                crate::metrics::pushed("events");
                self.send(Frame::push(Body::EventsPush(push)))?;
                if let Some(session) = &self.session {
                    self.gw.service.delivered(session, &batch.events);
                }
                Ok(())
            }
            _ => self.notice(),
        }
    }

    fn notice(&mut self) -> Sent {
        if self.notice_pending {
            return Ok(());
        }
        self.notice_pending = true;
        crate::metrics::pushed("notice");
        self.send(Frame::push(Body::SyncNotice(SyncNotice {})))
    }

    fn on_flags(&mut self) -> Sent {
        let Some(flags) = self.registration.as_ref().map(|r| r.flags.clone()) else {
            return Ok(());
        };
        if flags.revoked.load(Ordering::SeqCst) {
            return Err(bye(ErrorCode::TokenRevoked, "the session was revoked"));
        }
        match ErrorCode::try_from(flags.close_code.load(Ordering::SeqCst)) {
            Ok(ErrorCode::Unspecified) | Err(_) => {}
            Ok(ErrorCode::AccountDisabled) => {
                return Err(bye(ErrorCode::AccountDisabled, "this account was disabled"));
            }
            Ok(code) => return Err(bye(code, "the session was revoked")),
        }
        if flags.lagged.swap(false, Ordering::SeqCst) {
            return self.notice();
        }
        Ok(())
    }

    /// Stops taking requests, lets the running ones finish (bounded), and
    /// says goodbye.
    async fn drain(&mut self) -> Close {
        let max = self.gw.config.inflight_requests_max as u32;
        let deadline = Instant::now() + DRAIN_WAIT_MAX;
        while self.inflight.available_permits() < max as usize || !self.done.1.is_empty() {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.done.1.recv(),
            )
            .await
            {
                Ok(Some((frame, _permit))) => {
                    let frame = *frame;
                    if self.send(frame).is_err() {
                        return Close::Silent;
                    }
                }
                _ => break,
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

async fn recv_push(reg: &mut Option<Registration>) -> Option<Push> {
    match reg {
        Some(r) => r.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn wake(flags: Option<&ConnFlags>) {
    match flags {
        Some(f) => f.wake.notified().await,
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
