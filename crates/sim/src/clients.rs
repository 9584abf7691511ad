//! The client hosts, over SDK [`Connection`]s on simulated TCP:
//!
//! - a writer sends message `n` with client message id and text
//!   `<user>-<n>`, round robin to the readers, the next writer and the
//!   group; one at a time, retried with the same id (reconnecting as often
//!   as it takes) until acknowledged, recording the send before the first
//!   attempt and the acknowledgement when it comes. Restarted after a
//!   crash, it continues after its highest `n` and abandons the message in
//!   flight, as a client that lost its outbox would;
//! - a reader follows its log live: syncs from its persisted key until
//!   caught up, then applies `EventsPush`es that continue from its key and
//!   syncs on anything else; it persists the key together with the events
//!   it applied, so a crash loses neither;
//! - the auditor drains every user's whole log from the empty key once the
//!   writers have finished.
//!
//! Every random choice (pauses, back-off) comes from an RNG in [`Shared`],
//! seeded from the run's seed, so it survives a host's crash and replays.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pigeon_client::v1::frame::Body;
use pigeon_client::v1::{self, ErrorCode};
use pigeon_client::{ClientError, ConnectOptions, Connection, text, to_conversation, to_user};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::{sleep, timeout};

use crate::observed::{Ack, LogEvent, Msg, Observed, Sent, Target};
use crate::plan::{PORT, SERVER};

/// Dialling plus the handshake, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request, from sending to its answer, at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A reader that heard nothing for this long pings, to find a dead link.
const READER_PING_AFTER: Duration = Duration::from_secs(1);
/// First back-off after a failure (doubling up to the maximum, full jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(20);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often an idle host looks at the phase.
const PHASE_POLL: Duration = Duration::from_millis(50);

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Writers write (faults happen, then heal).
    Write,
    /// Writers finish the message in flight and stop.
    Finish,
    /// The auditor drains every log.
    Audit,
}

/// A writer's fixed part and its RNG.
pub(crate) struct WriterState {
    pub(crate) user: String,
    pub(crate) token: String,
    pub(crate) targets: Vec<Target>,
    pub(crate) think_max: Duration,
    pub(crate) rng: StdRng,
}

/// A reader's persisted key and its RNG.
pub(crate) struct ReaderState {
    pub(crate) user: String,
    pub(crate) token: String,
    pub(crate) key: Vec<u8>,
    pub(crate) rng: StdRng,
}

/// State that outlives the hosts' crashes: what a client keeps on disk.
pub(crate) struct Shared {
    pub(crate) phase: Phase,
    pub(crate) sync_limit: u32,
    pub(crate) observed: Observed,
    pub(crate) writers: Vec<WriterState>,
    pub(crate) readers: Vec<ReaderState>,
    /// Tokens of every user, in the order the auditor drains them.
    pub(crate) tokens: Vec<(String, String)>,
    /// The auditor has drained every log.
    pub(crate) audited: bool,
    /// What the clients did, with the simulated time: part of a run's
    /// trace, so two runs of a seed can be compared step by step.
    pub(crate) journal: Vec<String>,
}

/// [`Shared`] behind its lock.
#[derive(Clone)]
pub(crate) struct Handle(pub(crate) Arc<Mutex<Shared>>);

impl Handle {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().expect("simulation state lock poisoned")
    }

    fn phase(&self) -> Phase {
        self.lock().phase
    }

    fn error(&self, e: String) {
        self.note(format!("error: {e}"));
        self.lock().observed.client_errors.push(e);
    }

    /// Adds a line to the journal.
    fn note(&self, line: String) {
        let ms = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        self.lock().journal.push(format!("{ms} ms: {line}"));
    }
}

fn options(token: &str) -> ConnectOptions {
    let mut opts = ConnectOptions::new(format!("tcp://{SERVER}:{PORT}")).with_token(token);
    opts.connect_timeout = CONNECT_TIMEOUT;
    opts.request_timeout = REQUEST_TIMEOUT;
    opts
}

/// Dials the server on the simulated network and shakes hands.
async fn connect(token: &str) -> Result<Connection, ClientError> {
    let opts = options(token);
    let tcp = timeout(
        CONNECT_TIMEOUT,
        turmoil::net::TcpStream::connect((SERVER, PORT)),
    )
    .await
    .map_err(|_| ClientError::Timeout)??;
    Connection::connect_stream(tcp, &opts).await
}

/// Errors after which the same request may succeed later: the server or
/// the link is down, or the connection ended. Anything else (a refused
/// session, a bad key, an unexpected answer) is a violation.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Timeout | ClientError::Closed => true,
        // A connection cut by a crash can end inside a frame.
        ClientError::Protocol(m) => m.contains("ended inside a frame"),
        ClientError::Server { code, .. } | ClientError::Goodbye { code, .. } => matches!(
            code,
            ErrorCode::Busy
                | ErrorCode::Internal
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyRequests
                | ErrorCode::IdleTimeout
                | ErrorCode::SlowConsumer
                | ErrorCode::HandshakeTimeout
        ),
        ClientError::InvalidUrl(_) | ClientError::Tls(_) => false,
    }
}

/// Exponential back-off with full jitter, at least the server's retry-after.
fn backoff(rng: &mut StdRng, failures: u32, e: &ClientError) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1 << failures.min(10))
        .min(BACKOFF_MAX);
    let wait = Duration::from_micros(rng.random_range(0..=cap.as_micros() as u64));
    match e {
        ClientError::Server { retry_after_ms, .. } if *retry_after_ms > 0 => {
            wait.max(Duration::from_millis(u64::from(*retry_after_ms)))
        }
        _ => wait,
    }
}

fn wire_target(t: &Target) -> v1::Target {
    match t {
        Target::User(u) => to_user(u),
        Target::Conversation(c) => to_conversation(c),
    }
}

/// Writer `i`'s software.
pub(crate) async fn writer(shared: Handle, i: usize) -> turmoil::Result {
    let (user, token, targets, mut n) = {
        let mut s = shared.lock();
        let record = &mut s.observed.writers[i];
        record.starts += 1;
        // The message in flight at a crash, if any, is abandoned.
        let n = record.sent.last().map_or(0, |m| m.n + 1);
        let w = &s.writers[i];
        (w.user.clone(), w.token.clone(), w.targets.clone(), n)
    };
    shared.note(format!("{user} starts at {n}"));
    let mut conn: Option<Connection> = None;
    let mut failures = 0;
    loop {
        if shared.phase() >= Phase::Finish {
            shared.lock().observed.writers[i].finished = true;
            return Ok(());
        }
        let target = targets[n as usize % targets.len()].clone();
        let id = format!("{user}-{n}");
        shared.lock().observed.writers[i].sent.push(Sent {
            n,
            client_msg_id: id.clone(),
            target: target.clone(),
            attempts: 0,
            ack: None,
        });
        loop {
            shared.lock().observed.writers[i]
                .sent
                .last_mut()
                .expect("the message just recorded")
                .attempts += 1;
            let result = match &conn {
                Some(c) if !c.is_closed() => c.send(&id, wire_target(&target), text(&id)).await,
                _ => match connect(&token).await {
                    Ok(c) => {
                        let c = conn.insert(c);
                        c.send(&id, wire_target(&target), text(&id)).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(r) => {
                    shared.note(format!(
                        "{user} {id}: {}#{}{}",
                        r.conversation_id,
                        r.conv_seq,
                        if r.duplicate { " dup" } else { "" }
                    ));
                    shared.lock().observed.writers[i]
                        .sent
                        .last_mut()
                        .expect("the message in flight")
                        .ack = Some(Ack {
                        conversation_id: r.conversation_id,
                        conv_seq: r.conv_seq,
                        duplicate: r.duplicate,
                    });
                    failures = 0;
                    break;
                }
                Err(e) if transient(&e) => {
                    shared.note(format!("{user} {id}: {e}"));
                    // A refusal leaves the connection usable; anything
                    // else may have left it stalled.
                    if !matches!(e, ClientError::Server { .. }) {
                        conn = None;
                    }
                    failures += 1;
                    let wait = backoff(&mut shared.lock().writers[i].rng, failures, &e);
                    sleep(wait).await;
                }
                Err(e) => {
                    shared.error(format!("{user}: sending {id}: {e}"));
                    return Ok(());
                }
            }
        }
        n += 1;
        let think = {
            let mut s = shared.lock();
            let w = &mut s.writers[i];
            let max = w.think_max.as_micros() as u64;
            Duration::from_micros(w.rng.random_range(0..=max))
        };
        sleep(think).await;
    }
}

/// Reader `i`'s software.
pub(crate) async fn reader(shared: Handle, i: usize) -> turmoil::Result {
    let (user, token) = {
        let s = shared.lock();
        (s.readers[i].user.clone(), s.readers[i].token.clone())
    };
    let mut failures = 0;
    loop {
        let e = match connect(&token).await {
            Ok(conn) => {
                let e = follow(&shared, i, &conn, &mut failures).await;
                conn.close().await;
                e
            }
            Err(e) => e,
        };
        if !transient(&e) {
            shared.error(format!("{user}: following the log: {e}"));
            return Ok(());
        }
        shared.note(format!("{user}: {e}"));
        failures += 1;
        let wait = backoff(&mut shared.lock().readers[i].rng, failures, &e);
        sleep(wait).await;
    }
}

/// Follows the log over one connection until it fails.
async fn follow(shared: &Handle, i: usize, conn: &Connection, failures: &mut u32) -> ClientError {
    let limit = shared.lock().sync_limit;
    loop {
        // Catch up from the persisted key.
        loop {
            let key = shared.lock().readers[i].key.clone();
            let r = match conn.sync(&key, limit).await {
                Ok(r) => r,
                Err(ClientError::Server {
                    code: ErrorCode::ResyncRequired,
                    ..
                }) => {
                    resync(shared, i);
                    continue;
                }
                Err(e) => return e,
            };
            *failures = 0;
            apply(shared, i, &r.events, r.key);
            if !r.has_more {
                break;
            }
        }
        // Then take pushes until one does not follow on from the key.
        loop {
            match timeout(READER_PING_AFTER, conn.next_push()).await {
                Err(_) => {
                    if let Err(e) = conn.ping().await {
                        return e;
                    }
                }
                Ok(None) => return ClientError::Closed,
                Ok(Some(Body::Goodbye(g))) => {
                    return ClientError::Goodbye {
                        code: ErrorCode::try_from(g.code).unwrap_or(ErrorCode::Unspecified),
                        message: g.message,
                    };
                }
                Ok(Some(Body::EventsPush(p))) => {
                    let follows = shared.lock().readers[i].key == p.prev_key;
                    if !follows {
                        break;
                    }
                    apply(shared, i, &p.events, p.key);
                }
                Ok(Some(Body::SyncNotice(_))) => break,
                // Presence and typing.
                Ok(Some(_)) => {}
            }
        }
    }
}

/// The log no longer holds the reader's key: it starts again from the
/// empty key (the oldest event kept), and the checker reads what it
/// applies from here as a new piece of its log.
fn resync(shared: &Handle, i: usize) {
    let mut s = shared.lock();
    let user = s.readers[i].user.clone();
    let at = s.observed.live.get(&user).map_or(0, Vec::len);
    s.observed.resyncs.entry(user.clone()).or_default().push(at);
    s.readers[i].key = Vec::new();
    drop(s);
    shared.note(format!("{user} resyncs after {at} events"));
}

/// Applies events and persists the key after them, in one step.
fn apply(shared: &Handle, i: usize, events: &[v1::Event], key: Vec<u8>) {
    if !events.is_empty() {
        let user = shared.lock().readers[i].user.clone();
        shared.note(format!("{user} applies {} events", events.len()));
    }
    let mut s = shared.lock();
    let user = s.readers[i].user.clone();
    let live = s.observed.live.entry(user).or_default();
    live.extend(events.iter().map(LogEvent::from_event));
    s.readers[i].key = key;
}

/// The auditor's software: once asked, drains every user's log from the
/// empty key, and reads the whole history of every conversation it lists.
pub(crate) async fn auditor(shared: Handle) -> turmoil::Result {
    while shared.phase() < Phase::Audit {
        sleep(PHASE_POLL).await;
    }
    let (tokens, limit) = {
        let s = shared.lock();
        (s.tokens.clone(), s.sync_limit)
    };
    for (user, token) in tokens {
        let events = audit_step(&shared, &format!("draining {user}"), || {
            drain(&token, limit)
        })
        .await
        .unwrap_or_default();
        shared.note(format!("auditor: {user} has {} events", events.len()));
        shared.lock().observed.drained.insert(user.clone(), events);
        let known: BTreeSet<String> = shared.lock().observed.histories.keys().cloned().collect();
        let read = audit_step(&shared, &format!("reading {user}'s histories"), || {
            histories(&token, &known)
        })
        .await
        .unwrap_or_default();
        for (conv, messages) in read {
            shared.note(format!(
                "auditor: {conv} has {} messages (read as {user})",
                messages.len()
            ));
            shared.lock().observed.histories.insert(conv, messages);
        }
    }
    shared.lock().audited = true;
    Ok(())
}

/// One step of the audit, tried again after transient errors (the server
/// may still be restarting); any other error is recorded, and gives `None`.
async fn audit_step<T, F>(shared: &Handle, what: &str, mut attempt: impl FnMut() -> F) -> Option<T>
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) if transient(&e) => {
                failures += 1;
                let cap = BACKOFF_BASE.saturating_mul(1 << failures.min(5));
                sleep(cap.min(BACKOFF_MAX)).await;
            }
            Err(e) => {
                shared.error(format!("auditor: {what}: {e}"));
                return None;
            }
        }
    }
}

/// The whole history, oldest first, of each of the user's conversations
/// not in `known`.
async fn histories(
    token: &str,
    known: &BTreeSet<String>,
) -> Result<Vec<(String, Vec<Msg>)>, ClientError> {
    let conn = connect(token).await?;
    let list = conn.list_conversations(0).await?;
    let mut out = Vec::new();
    for c in list.conversations {
        if known.contains(&c.conversation_id) {
            continue;
        }
        let mut newest_first = Vec::new();
        let mut before = 0;
        loop {
            let page = conn
                .history(to_conversation(&c.conversation_id), before, 0)
                .await?;
            newest_first.extend(page.messages.iter().map(Msg::from_message));
            match page.messages.last() {
                Some(m) if page.has_more => before = m.conv_seq,
                _ => break,
            }
        }
        newest_first.reverse();
        out.push((c.conversation_id, newest_first));
    }
    conn.close().await;
    Ok(out)
}

/// One user's whole log.
async fn drain(token: &str, limit: u32) -> Result<Vec<LogEvent>, ClientError> {
    let conn = connect(token).await?;
    let mut key = Vec::new();
    let mut events = Vec::new();
    loop {
        let r = conn.sync(&key, limit).await?;
        events.extend(r.events.iter().map(LogEvent::from_event));
        key = r.key;
        if !r.has_more {
            conn.close().await;
            return Ok(events);
        }
    }
}
