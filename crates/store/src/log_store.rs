//! [`LogStore`]: `pigeon_core::Store` over any [`Engine`].
//!
//! Writes go through one committer thread. It takes every queued command
//! (up to [`WRITE_BATCH_COMMANDS_MAX`]), applies their effects as one atomic
//! engine batch, fsyncs once, and only then answers them all: group commit,
//! so the cost of an acknowledgement is one fsync shared by everyone who
//! arrived while the previous one ran.
//!
//! Sequence numbers are allocated in memory, as WeChat's seqsvr does: per
//! user log and per conversation, the committer keeps the next seq and a
//! high-water mark `hw`; only when `next` reaches `hw` does it persist a new
//! mark `next + seq_step` (in the same batch as the events that use it). After
//! a restart allocation resumes at the persisted mark, so seqs only grow,
//! possibly with a gap.
//!
//! Visibility: readers see a user's log (and a conversation's timeline) only
//! up to its committed watermark, which the committer advances after the
//! fsync. So nothing is readable before it is durable, and because one
//! thread commits in seq order, a reader never sees seq N+1 while N is in
//! flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use pigeon_core::store::{
    AppendMessage, AppendOutcome, Appended, LogRead, LogReadError, MarkReadOutcome, NewSession,
    SessionRecord, UserRecord, empty_summary,
};
use pigeon_core::{Store, StoreError, UserId};
use pigeon_proto::v1::{ConversationSummary, Event, Message, ReadMarker, event};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, Entries, Op, Table};
use crate::keys;

/// Most commands folded into one group commit.
pub const WRITE_BATCH_COMMANDS_MAX: usize = 1024;
/// Most commands waiting for the committer; senders wait beyond it.
pub const WRITE_QUEUE_COMMANDS_MAX: usize = 16 * 1024;
/// Most log entries deleted by one trim step (trimming continues on later
/// commits).
pub const TRIM_DELETES_PER_COMMIT_MAX: usize = 4096;
/// Most conversations a list request considers.
pub const CONVERSATIONS_SCAN_MAX: usize = 10_000;

const _: () = assert!(WRITE_BATCH_COMMANDS_MAX <= WRITE_QUEUE_COMMANDS_MAX);

/// Settings of a [`LogStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How far a persisted high-water mark runs ahead of allocation.
    pub seq_step: u64,
    /// Events each user's log keeps (older ones are trimmed; a device whose
    /// key is older must resync). 0 keeps everything.
    pub log_retain_events: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            seq_step: 1000,
            log_retain_events: 100_000,
        }
    }
}

/// The committed state of one user's log, as readers may see it.
#[derive(Debug, Clone, Copy, Default)]
struct LogMark {
    /// Newest durable seq (0: none).
    head: u64,
    /// Highest seq trimmed away (0: none).
    trimmed_through: u64,
}

/// State shared by the committer and readers.
struct Shared<E> {
    engine: Arc<E>,
    /// Committed marks of logs touched since start. A user is added (from
    /// the engine) before the committer first writes to their log, under this
    /// lock, so a reader that loads a missing entry sees only durable data.
    logs: Mutex<HashMap<UserId, LogMark>>,
    /// Committed heads of conversation timelines, same protocol.
    convs: Mutex<HashMap<String, u64>>,
}

impl<E: Engine> Shared<E> {
    fn log_mark(&self, user: UserId) -> Result<LogMark, StoreError> {
        let mut logs = self.logs.lock().expect("log marks lock poisoned");
        if let Some(m) = logs.get(&user) {
            return Ok(*m);
        }
        let last = self.engine.scan(
            Table::Log,
            &keys::log(user, 0),
            &keys::log(user, u64::MAX),
            true,
            1,
        )?;
        let head = last.first().map_or(0, |(k, _)| keys::log_seq(k));
        let trimmed_through = self
            .engine
            .get(Table::Meta, &keys::trimmed(user))?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0);
        let m = LogMark {
            head,
            trimmed_through,
        };
        logs.insert(user, m);
        Ok(m)
    }

    fn conv_head(&self, conv: &str) -> Result<u64, StoreError> {
        let mut convs = self.convs.lock().expect("conv heads lock poisoned");
        if let Some(h) = convs.get(conv) {
            return Ok(*h);
        }
        let last = self.engine.scan(
            Table::Timeline,
            &keys::timeline(conv, 0),
            &keys::timeline(conv, u64::MAX),
            true,
            1,
        )?;
        let head = last.first().map_or(0, |(k, _)| timeline_seq(k));
        convs.insert(conv.to_string(), head);
        Ok(head)
    }
}

fn timeline_seq(key: &[u8]) -> u64 {
    let n = key.len();
    u64::from_be_bytes(
        key[n - 8..]
            .try_into()
            .expect("timeline keys end in 8 bytes"),
    )
}

/// A stored send outcome, for idempotent retries.
#[derive(Debug, Serialize, Deserialize)]
struct DedupRecord {
    conversation_id: String,
    conv_seq: u64,
    sent_at_ms: i64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Cmd {
    CreateUser {
        username: String,
        password_hash: String,
        now_ms: i64,
        reply: Reply<UserRecord>,
    },
    CreateSession {
        session: NewSession,
        reply: Reply<SessionRecord>,
    },
    RevokeSession {
        token_hash: String,
        reply: Reply<()>,
    },
    Append {
        msg: Box<AppendMessage>,
        reply: Reply<AppendOutcome>,
    },
    MarkRead {
        user: UserId,
        conv: String,
        up_to: u64,
        now_ms: i64,
        reply: Reply<MarkReadOutcome>,
    },
    Secret {
        name: String,
        reply: Reply<[u8; 32]>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Counters of the committer, for tests and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Group commits that wrote something (one fsync each).
    pub commits: AtomicU64,
    /// Write commands answered.
    pub commands: AtomicU64,
}

/// The store. Cheap to share behind an `Arc`.
pub struct LogStore {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<dyn ReadSide>,
    committer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<StoreStats>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Starts the committer thread over `engine`.
    pub fn start<E: Engine>(engine: Arc<E>, config: StoreConfig) -> LogStore {
        assert!(config.seq_step >= 1, "seq_step must be at least 1");
        let shared = Arc::new(Shared {
            engine,
            logs: Mutex::default(),
            convs: Mutex::default(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_COMMANDS_MAX);
        let stats = Arc::new(StoreStats::default());
        let committer = Committer {
            stats: stats.clone(),
            shared: shared.clone(),
            config,
            user_alloc: HashMap::new(),
            conv_alloc: HashMap::new(),
            next_user_id: None,
            failed: None,
        };
        let handle = std::thread::Builder::new()
            .name("pigeon-committer".into())
            .spawn(move || committer.run(rx))
            .expect("spawning the committer thread");
        LogStore {
            tx,
            shared,
            committer: Mutex::new(Some(handle)),
            stats,
        }
    }

    /// The committer's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Commits everything queued so far, stops the committer and waits for
    /// it. Later writes fail with [`StoreError::Unavailable`].
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .committer
            .lock()
            .expect("committer handle lock poisoned")
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("store is shut down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store is shut down".into()))?
    }
}

/// The read operations, object-safe so `LogStore` need not be generic.
trait ReadSide: Send + Sync {
    fn engine_get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn engine_scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError>;
    fn log_mark_of(&self, user: UserId) -> Result<LogMark, StoreError>;
    fn conv_head_of(&self, conv: &str) -> Result<u64, StoreError>;
}

impl<E: Engine> ReadSide for Shared<E> {
    fn engine_get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(table, key)
    }
    fn engine_scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.engine.scan(table, start, end, reverse, limit)
    }
    fn log_mark_of(&self, user: UserId) -> Result<LogMark, StoreError> {
        self.log_mark(user)
    }
    fn conv_head_of(&self, conv: &str) -> Result<u64, StoreError> {
        self.conv_head(conv)
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn decode_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

fn decode_proto<T: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| corrupt(what, e))
}

#[async_trait]
impl Store for LogStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<UserRecord, StoreError> {
        let (username, password_hash) = (username.to_string(), password_hash.to_string());
        self.call(|reply| Cmd::CreateUser {
            username,
            password_hash,
            now_ms,
            reply,
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.shared.engine_get(Table::Users, username.as_bytes())? {
            Some(v) => Ok(Some(decode_json("user", &v)?)),
            None => Ok(None),
        }
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let Some(name) = self.shared.engine_get(Table::UserIds, &keys::user_id(id))? else {
            return Ok(None);
        };
        let name = String::from_utf8(name).map_err(|e| corrupt("user id", e))?;
        self.user_by_name(&name).await
    }

    async fn create_session(&self, session: NewSession) -> Result<SessionRecord, StoreError> {
        self.call(|reply| Cmd::CreateSession { session, reply })
            .await
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self
            .shared
            .engine_get(Table::Sessions, token_hash.as_bytes())?
        {
            Some(v) => Ok(Some(decode_json("session", &v)?)),
            None => Ok(None),
        }
    }

    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let token_hash = token_hash.to_string();
        self.call(|reply| Cmd::RevokeSession { token_hash, reply })
            .await
    }

    async fn append_message(&self, msg: AppendMessage) -> Result<AppendOutcome, StoreError> {
        self.call(|reply| Cmd::Append {
            msg: Box::new(msg),
            reply,
        })
        .await
    }

    async fn read_log(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<LogRead, LogReadError> {
        let mark = self.shared.log_mark_of(user)?;
        // An empty key (after = 0) means "from the oldest retained event".
        let after = if after == 0 {
            mark.trimmed_through
        } else {
            after
        };
        if after < mark.trimmed_through {
            return Err(LogReadError::Trimmed {
                trimmed_through: mark.trimmed_through,
            });
        }
        if after >= mark.head || limit == 0 {
            return Ok(LogRead {
                events: Vec::new(),
                has_more: false,
            });
        }
        let rows = self.shared.engine_scan(
            Table::Log,
            &keys::log(user, after + 1),
            &keys::log(user, mark.head + 1),
            false,
            limit + 1,
        )?;
        // A trim that ran during the scan may have removed entries we needed.
        let now = self.shared.log_mark_of(user)?;
        if after < now.trimmed_through {
            return Err(LogReadError::Trimmed {
                trimmed_through: now.trimmed_through,
            });
        }
        let mut events = Vec::with_capacity(rows.len().min(limit));
        let mut bytes = 0;
        let mut has_more = false;
        for (i, (_, v)) in rows.iter().enumerate() {
            if i == limit || (!events.is_empty() && bytes + v.len() > bytes_max) {
                has_more = true;
                break;
            }
            bytes += v.len();
            events.push(decode_proto::<Event>("event", v)?);
        }
        Ok(LogRead { events, has_more })
    }

    async fn log_head(&self, user: UserId) -> Result<u64, StoreError> {
        Ok(self.shared.log_mark_of(user)?.head)
    }

    async fn history(
        &self,
        conv: &str,
        before: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let head = self.shared.conv_head_of(conv)?;
        let upper = if before == 0 {
            head
        } else {
            head.min(before - 1)
        };
        if upper == 0 || limit == 0 {
            return Ok((Vec::new(), false));
        }
        let rows = self.shared.engine_scan(
            Table::Timeline,
            &keys::timeline(conv, 1),
            &keys::timeline(conv, upper + 1),
            true,
            limit + 1,
        )?;
        let mut messages = Vec::with_capacity(rows.len().min(limit));
        let mut bytes = 0;
        for (i, (_, v)) in rows.iter().enumerate() {
            if i == limit || (!messages.is_empty() && bytes + v.len() > bytes_max) {
                return Ok((messages, true));
            }
            bytes += v.len();
            messages.push(decode_proto::<Message>("message", v)?);
        }
        Ok((messages, false))
    }

    async fn list_conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let prefix = keys::user_id(user);
        let rows = self.shared.engine_scan(
            Table::ConvState,
            &prefix,
            &keys::prefix_end(&prefix),
            false,
            CONVERSATIONS_SCAN_MAX,
        )?;
        let mut all = rows
            .iter()
            .map(|(_, v)| decode_proto::<ConversationSummary>("conversation", v))
            .collect::<Result<Vec<_>, _>>()?;
        let activity = |c: &ConversationSummary| {
            c.last_message
                .as_ref()
                .map_or((0, 0), |m| (m.sent_at_ms, m.conv_seq))
        };
        all.sort_by(|a, b| {
            activity(b)
                .cmp(&activity(a))
                .then_with(|| a.conversation_id.cmp(&b.conversation_id))
        });
        all.truncate(limit);
        Ok(all)
    }

    async fn conversation(
        &self,
        user: UserId,
        conv: &str,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        match self
            .shared
            .engine_get(Table::ConvState, &keys::conv_state(user, conv))?
        {
            Some(v) => Ok(Some(decode_proto("conversation", &v)?)),
            None => Ok(None),
        }
    }

    async fn mark_read(
        &self,
        user: UserId,
        conv: &str,
        up_to: u64,
        now_ms: i64,
    ) -> Result<MarkReadOutcome, StoreError> {
        let conv = conv.to_string();
        self.call(|reply| Cmd::MarkRead {
            user,
            conv,
            up_to,
            now_ms,
            reply,
        })
        .await
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let name = name.to_string();
        self.call(|reply| Cmd::Secret { name, reply }).await
    }
}

// ------------------------------------------------------------- the committer

/// An in-memory seq allocator for one log or timeline.
#[derive(Debug, Clone, Copy)]
struct Alloc {
    /// The next seq to hand out.
    next: u64,
    /// The persisted mark: every seq below it may have been handed out
    /// before a restart, none at or above it.
    hw: u64,
}

/// The writes of one group commit, readable before they are applied.
struct Batch<'e, E> {
    engine: &'e E,
    ops: Vec<Op>,
    overlay: HashMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl<'e, E: Engine> Batch<'e, E> {
    fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(&(t, k.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.engine.get(t, k),
        }
    }

    /// Entries in `[start, end)` ascending, the batch's own writes included.
    fn scan_all(&self, t: Table, start: &[u8], end: &[u8]) -> Result<Entries, StoreError> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .engine
            .scan(t, start, end, false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for ((table, k), v) in &self.overlay {
            if *table == t && k.as_slice() >= start && k.as_slice() < end {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    fn put(&mut self, t: Table, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert((t, k.clone()), Some(v.clone()));
        self.ops.push(Op::Put(t, k, v));
    }

    fn delete(&mut self, t: Table, k: Vec<u8>) {
        self.overlay.insert((t, k.clone()), None);
        self.ops.push(Op::Delete(t, k));
    }
}

/// Answers one command once its batch's commit succeeded (`None`) or failed.
type ReplyFn = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// What to publish and whom to answer once a batch is durable.
#[derive(Default)]
struct AfterCommit {
    log_heads: HashMap<UserId, u64>,
    conv_heads: HashMap<String, u64>,
    replies: Vec<ReplyFn>,
}

impl AfterCommit {
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, StoreError>) {
        match result {
            // An error is not a write: answer after the commit anyway, so
            // answers keep their order, but the error stands on its own.
            Err(e) => self.replies.push(Box::new(move |_| {
                let _ = reply.send(Err(e));
            })),
            Ok(v) => self.replies.push(Box::new(move |failure| {
                let _ = reply.send(match failure {
                    None => Ok(v),
                    Some(e) => Err(StoreError::Io(format!("commit failed: {e}"))),
                });
            })),
        }
    }
}

struct Committer<E> {
    stats: Arc<StoreStats>,
    shared: Arc<Shared<E>>,
    config: StoreConfig,
    user_alloc: HashMap<UserId, Alloc>,
    conv_alloc: HashMap<String, Alloc>,
    next_user_id: Option<u64>,
    /// Set when a commit failed: the engine's state is unknown, so every
    /// later write is refused until restart (recovery replays the journal).
    failed: Option<String>,
}

impl<E: Engine> Committer<E> {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut cmds = Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX);
        loop {
            cmds.clear();
            if rx.blocking_recv_many(&mut cmds, WRITE_BATCH_COMMANDS_MAX) == 0 {
                return;
            }
            let mut stop = None;
            let engine = self.shared.engine.clone();
            let mut batch = Batch {
                engine: &*engine,
                ops: Vec::new(),
                overlay: HashMap::new(),
            };
            let mut after = AfterCommit::default();
            let mut pending_heads: HashMap<UserId, u64> = HashMap::new();
            for cmd in cmds.drain(..) {
                if let Some(reason) = &self.failed {
                    refuse(cmd, reason);
                    continue;
                }
                match cmd {
                    Cmd::Shutdown { reply } => {
                        stop = Some(reply);
                        self.failed = Some("store is shut down".into());
                    }
                    cmd => self.execute(cmd, &mut batch, &mut after, &mut pending_heads),
                }
            }
            self.commit(batch.ops, after);
            if let Some(reply) = stop {
                let _ = reply.send(());
                return;
            }
        }
    }

    fn commit(&mut self, ops: Vec<Op>, after: AfterCommit) {
        let result = if ops.is_empty() {
            Ok(())
        } else {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.shared
                .engine
                .apply(ops)
                .and_then(|()| self.shared.engine.sync())
        };
        self.stats
            .commands
            .fetch_add(after.replies.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                let mut logs = self.shared.logs.lock().expect("log marks lock poisoned");
                for (user, head) in after.log_heads {
                    logs.entry(user).or_default().head = head;
                }
                drop(logs);
                let mut convs = self.shared.convs.lock().expect("conv heads lock poisoned");
                convs.extend(after.conv_heads);
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; refusing further writes");
                self.failed = Some(format!("a commit failed: {e}"));
            }
        }
        for reply in after.replies {
            reply(result.as_ref().err());
        }
    }

    fn execute(
        &mut self,
        cmd: Cmd,
        b: &mut Batch<'_, E>,
        after: &mut AfterCommit,
        heads: &mut HashMap<UserId, u64>,
    ) {
        match cmd {
            Cmd::CreateUser {
                username,
                password_hash,
                now_ms,
                reply,
            } => {
                let r = self.create_user(b, username, password_hash, now_ms);
                after.reply(reply, r);
            }
            Cmd::CreateSession { session, reply } => {
                let r = self.create_session(b, session);
                after.reply(reply, r);
            }
            Cmd::RevokeSession { token_hash, reply } => {
                let r = revoke_session(b, &token_hash);
                after.reply(reply, r);
            }
            Cmd::Append { msg, reply } => {
                let r = self.append(b, after, heads, *msg);
                after.reply(reply, r);
            }
            Cmd::MarkRead {
                user,
                conv,
                up_to,
                now_ms,
                reply,
            } => {
                let r = self.mark_read(b, after, heads, user, &conv, up_to, now_ms);
                after.reply(reply, r);
            }
            Cmd::Secret { name, reply } => {
                let r = secret(b, &name);
                after.reply(reply, r);
            }
            Cmd::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    fn create_user(
        &mut self,
        b: &mut Batch<'_, E>,
        username: String,
        password_hash: String,
        now_ms: i64,
    ) -> Result<UserRecord, StoreError> {
        if b.get(Table::Users, username.as_bytes())?.is_some() {
            return Err(StoreError::UsernameTaken);
        }
        let id = match self.next_user_id {
            Some(id) => id,
            None => b
                .get(Table::Meta, keys::NEXT_USER_ID)?
                .and_then(|v| keys::read_u64(&v))
                .unwrap_or(1),
        };
        self.next_user_id = Some(id + 1);
        b.put(
            Table::Meta,
            keys::NEXT_USER_ID.to_vec(),
            keys::u64_value(id + 1),
        );
        let user = UserRecord {
            id,
            username,
            password_hash,
            created_at_ms: now_ms,
        };
        b.put(
            Table::Users,
            user.username.as_bytes().to_vec(),
            encode_json(&user),
        );
        b.put(
            Table::UserIds,
            keys::user_id(id),
            user.username.as_bytes().to_vec(),
        );
        Ok(user)
    }

    fn create_session(
        &mut self,
        b: &mut Batch<'_, E>,
        s: NewSession,
    ) -> Result<SessionRecord, StoreError> {
        let dev_key = keys::devices(s.user_id);
        let device_id = b
            .get(Table::Meta, &dev_key)?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0)
            + 1;
        b.put(Table::Meta, dev_key, keys::u64_value(device_id));
        let record = SessionRecord {
            token_hash: s.token_hash,
            user_id: s.user_id,
            device_id,
            device_name: s.device_name,
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
            revoked: false,
        };
        b.put(
            Table::Sessions,
            record.token_hash.as_bytes().to_vec(),
            encode_json(&record),
        );
        Ok(record)
    }

    /// The next seq of `user`'s log, persisting a new mark when needed.
    fn next_log_seq(&mut self, b: &mut Batch<'_, E>, user: UserId) -> Result<u64, StoreError> {
        let key = keys::hw_user(user);
        let alloc = match self.user_alloc.get(&user) {
            Some(a) => *a,
            None => load_alloc(b, &key)?,
        };
        let (seq, alloc) = allocate(b, key, alloc, self.config.seq_step);
        self.user_alloc.insert(user, alloc);
        Ok(seq)
    }

    fn next_conv_seq(&mut self, b: &mut Batch<'_, E>, conv: &str) -> Result<u64, StoreError> {
        let key = keys::hw_conv(conv);
        let alloc = match self.conv_alloc.get(conv) {
            Some(a) => *a,
            None => load_alloc(b, &key)?,
        };
        let (seq, alloc) = allocate(b, key, alloc, self.config.seq_step);
        self.conv_alloc.insert(conv.to_string(), alloc);
        Ok(seq)
    }

    /// Appends one event to `user`'s log within the batch.
    fn append_event(
        &mut self,
        b: &mut Batch<'_, E>,
        after: &mut AfterCommit,
        heads: &mut HashMap<UserId, u64>,
        user: UserId,
        now_ms: i64,
        kind: event::Kind,
    ) -> Result<Appended, StoreError> {
        let prev_seq = match heads.get(&user) {
            Some(h) => *h,
            // Registers the user's committed mark before we write to the log
            // (see `Shared::logs`).
            None => self.shared.log_mark(user)?.head,
        };
        let seq = self.next_log_seq(b, user)?;
        assert!(seq > prev_seq, "log seqs only grow: {seq} after {prev_seq}");
        let event = Event {
            seq,
            created_at_ms: now_ms,
            kind: Some(kind),
        };
        b.put(Table::Log, keys::log(user, seq), event.encode_to_vec());
        heads.insert(user, seq);
        after.log_heads.insert(user, seq);
        self.trim(b, user, seq)?;
        Ok(Appended {
            user_id: user,
            prev_seq,
            events: vec![event],
        })
    }

    /// Drops the oldest entries of a log that holds more than the retained
    /// count (plus 1/8 slack, so deletions come in runs).
    fn trim(&mut self, b: &mut Batch<'_, E>, user: UserId, head: u64) -> Result<(), StoreError> {
        let retain = self.config.log_retain_events;
        if retain == 0 {
            return Ok(());
        }
        let mark = self.shared.log_mark(user)?;
        if head.saturating_sub(mark.trimmed_through) <= retain + retain / 8 {
            return Ok(());
        }
        let through = head - retain;
        let doomed = b.engine.scan(
            Table::Log,
            &keys::log(user, mark.trimmed_through + 1),
            &keys::log(user, through + 1),
            false,
            TRIM_DELETES_PER_COMMIT_MAX,
        )?;
        let reached = if doomed.len() == TRIM_DELETES_PER_COMMIT_MAX {
            doomed.last().map_or(through, |(k, _)| keys::log_seq(k))
        } else {
            through
        };
        for (k, _) in doomed {
            b.delete(Table::Log, k);
        }
        b.put(Table::Meta, keys::trimmed(user), keys::u64_value(reached));
        // Raise the readers' trim point before the deletions are applied:
        // a reader then answers "resync" slightly early, never skips silently.
        self.shared
            .logs
            .lock()
            .expect("log marks lock poisoned")
            .entry(user)
            .or_default()
            .trimmed_through = reached;
        Ok(())
    }

    fn append(
        &mut self,
        b: &mut Batch<'_, E>,
        after: &mut AfterCommit,
        heads: &mut HashMap<UserId, u64>,
        m: AppendMessage,
    ) -> Result<AppendOutcome, StoreError> {
        let dedup_key = keys::dedup(m.sender_id, &m.client_msg_id);
        if let Some(v) = b.get(Table::Dedup, &dedup_key)? {
            let d: DedupRecord = decode_json("dedup", &v)?;
            return Ok(AppendOutcome {
                conversation_id: d.conversation_id,
                conv_seq: d.conv_seq,
                sent_at_ms: d.sent_at_ms,
                duplicate: true,
                appended: Vec::new(),
            });
        }
        if !after.conv_heads.contains_key(&m.conversation_id) {
            // Registers the committed head before the timeline is written.
            self.shared.conv_head(&m.conversation_id)?;
        }
        let conv_seq = self.next_conv_seq(b, &m.conversation_id)?;
        let message = Message {
            conversation_id: m.conversation_id.clone(),
            conv_seq,
            sender_id: m.sender_id,
            sender_username: m.sender_username.clone(),
            sender_device_id: m.sender_device_id,
            client_msg_id: m.client_msg_id.clone(),
            sent_at_ms: m.now_ms,
            content: Some(m.content),
        };
        b.put(
            Table::Timeline,
            keys::timeline(&m.conversation_id, conv_seq),
            message.encode_to_vec(),
        );
        after.conv_heads.insert(m.conversation_id.clone(), conv_seq);
        let record = DedupRecord {
            conversation_id: m.conversation_id.clone(),
            conv_seq,
            sent_at_ms: m.now_ms,
        };
        b.put(Table::Dedup, dedup_key, encode_json(&record));

        let mut appended = Vec::with_capacity(m.participants.len());
        for (user, _) in &m.participants {
            // The peer of a direct conversation: the other participant, or
            // oneself for notes to self.
            let (peer_id, peer_name) = m
                .participants
                .iter()
                .find(|(id, _)| id != user)
                .cloned()
                .unwrap_or_else(|| (*user, m.sender_username.clone()));
            let state_key = keys::conv_state(*user, &m.conversation_id);
            let mut state = match b.get(Table::ConvState, &state_key)? {
                Some(v) => decode_proto::<ConversationSummary>("conversation", &v)?,
                None => empty_summary(&m.conversation_id, peer_id, &peer_name),
            };
            state.last_message = Some(message.clone());
            if *user == m.sender_id {
                // Writing in a conversation means having read it.
                state.read_up_to = conv_seq;
                state.unread_count = 0;
            } else {
                state.unread_count += 1;
            }
            b.put(Table::ConvState, state_key, state.encode_to_vec());
            appended.push(self.append_event(
                b,
                after,
                heads,
                *user,
                m.now_ms,
                event::Kind::Message(message.clone()),
            )?);
        }
        Ok(AppendOutcome {
            conversation_id: m.conversation_id,
            conv_seq,
            sent_at_ms: m.now_ms,
            duplicate: false,
            appended,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn mark_read(
        &mut self,
        b: &mut Batch<'_, E>,
        after: &mut AfterCommit,
        heads: &mut HashMap<UserId, u64>,
        user: UserId,
        conv: &str,
        up_to: u64,
        now_ms: i64,
    ) -> Result<MarkReadOutcome, StoreError> {
        let state_key = keys::conv_state(user, conv);
        let Some(v) = b.get(Table::ConvState, &state_key)? else {
            return Ok(MarkReadOutcome {
                read_up_to: 0,
                unread_count: 0,
                appended: None,
            });
        };
        let mut state: ConversationSummary = decode_proto("conversation", &v)?;
        let last = state.last_message.as_ref().map_or(0, |m| m.conv_seq);
        let target = up_to.min(last);
        if target <= state.read_up_to {
            return Ok(MarkReadOutcome {
                read_up_to: state.read_up_to,
                unread_count: state.unread_count,
                appended: None,
            });
        }
        let mut unread = 0;
        for (_, v) in b.scan_all(
            Table::Timeline,
            &keys::timeline(conv, target + 1),
            &keys::timeline(conv, u64::MAX),
        )? {
            let m: Message = decode_proto("message", &v)?;
            if m.sender_id != user {
                unread += 1;
            }
        }
        state.read_up_to = target;
        state.unread_count = unread;
        b.put(Table::ConvState, state_key, state.encode_to_vec());
        let marker = ReadMarker {
            conversation_id: conv.to_string(),
            read_up_to: target,
        };
        let appended = self.append_event(
            b,
            after,
            heads,
            user,
            now_ms,
            event::Kind::ReadMarker(marker),
        )?;
        Ok(MarkReadOutcome {
            read_up_to: target,
            unread_count: unread,
            appended: Some(appended),
        })
    }
}

fn revoke_session<E: Engine>(b: &mut Batch<'_, E>, token_hash: &str) -> Result<(), StoreError> {
    let Some(v) = b.get(Table::Sessions, token_hash.as_bytes())? else {
        return Err(StoreError::SessionNotFound);
    };
    let mut record: SessionRecord = decode_json("session", &v)?;
    record.revoked = true;
    b.put(
        Table::Sessions,
        token_hash.as_bytes().to_vec(),
        encode_json(&record),
    );
    Ok(())
}

fn secret<E: Engine>(b: &mut Batch<'_, E>, name: &str) -> Result<[u8; 32], StoreError> {
    let key = keys::secret(name);
    if let Some(v) = b.get(Table::Meta, &key)? {
        return v
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("secret", "wrong length"));
    }
    let mut s = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut s);
    b.put(Table::Meta, key, s.to_vec());
    Ok(s)
}

fn load_alloc<E: Engine>(b: &Batch<'_, E>, key: &[u8]) -> Result<Alloc, StoreError> {
    let hw = b.get(Table::Meta, key)?.and_then(|v| keys::read_u64(&v));
    Ok(match hw {
        // Every seq below the mark may have been used before a restart.
        Some(hw) => Alloc { next: hw, hw },
        None => Alloc { next: 1, hw: 1 },
    })
}

fn allocate<E: Engine>(
    b: &mut Batch<'_, E>,
    key: Vec<u8>,
    mut a: Alloc,
    step: u64,
) -> (u64, Alloc) {
    let seq = a.next;
    a.next += 1;
    if a.next > a.hw {
        a.hw = seq + step;
        b.put(Table::Meta, key, keys::u64_value(a.hw));
    }
    (seq, a)
}

fn refuse(cmd: Cmd, reason: &str) {
    let e = || StoreError::Unavailable(reason.to_string());
    match cmd {
        Cmd::CreateUser { reply, .. } => drop(reply.send(Err(e()))),
        Cmd::CreateSession { reply, .. } => drop(reply.send(Err(e()))),
        Cmd::RevokeSession { reply, .. } => drop(reply.send(Err(e()))),
        Cmd::Append { reply, .. } => drop(reply.send(Err(e()))),
        Cmd::MarkRead { reply, .. } => drop(reply.send(Err(e()))),
        Cmd::Secret { reply, .. } => drop(reply.send(Err(e()))),
        Cmd::Shutdown { reply } => drop(reply.send(())),
    }
}
