//! [`LogStore`]: `pigeon_core::Store` over any [`Engine`].
//!
//! Writes go through one committer thread (in a simulation, one tokio task:
//! [`LogStore::start_in_task`]). It takes every queued job (up to
//! [`WRITE_BATCH_COMMANDS_MAX`]), applies their effects as one atomic engine
//! batch, fsyncs once, and only then answers them all: group commit, so the
//! cost of an acknowledgement is one fsync shared by everyone who arrived
//! while the previous one ran. Because one thread applies every write, a
//! rule checked inside a job (a permission, a uniqueness, a window) holds
//! for the write it guards.
//!
//! Sequence numbers are allocated in memory, as WeChat's seqsvr does: per
//! user log, per conversation and for the shared stream of large groups, the
//! committer keeps the next seq and a high-water mark `hw`; only when `next`
//! reaches `hw` does it persist a new mark `next + seq_step` (in the same
//! batch as the events that use it). After a restart allocation resumes at
//! the persisted mark, so seqs only grow, possibly with a gap.
//!
//! Visibility: readers see a user's log, a conversation's timeline and the
//! shared stream only up to committed watermarks, which the committer
//! advances after the fsync. So nothing is readable before it is durable,
//! and because one thread commits in seq order, a reader never sees seq N+1
//! while N is in flight.
//!
//! Layout: this file has the machinery and the account operations;
//! `messages.rs` sends, receipts and message changes; `groups.rs` group
//! changes; `social.rs` blocks and preferences; `reads.rs` the read side;
//! `admin.rs` account administration and the per-user session index.

mod admin;
mod groups;
mod messages;
mod outbox;
mod reads;
mod social;
mod stored;

pub use messages::{RECEIPT_SCAN_MAX, UNREAD_COUNT_MAX, notable};
pub use outbox::FAILED_SCAN_MAX;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pigeon_core::store::{
    AppendMessage, AppendOutcome, Appended, ChangeOutcome, Delivered, Delivery, GroupOp,
    GroupOutcome, GroupRecord, HistoryQuery, LogFrom, LogRead, LogReadError, MarkReadOutcome,
    MemberRecord, MessageChange, NewSession, ReadMark, SessionRecord, StreamRead, Totals,
    UserChange, UserPrefs, UserRecord, trim_due,
};
use pigeon_core::{Store, StoreError, UserId};
use pigeon_proto::v1::{ConversationSummary, Event, Message, ReceiptSummary, event};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, Entries, Op, Table};
use crate::keys;
use crate::trims::TRIMS_HELD_MAX;

/// Group commits that wrote something (one fsync each).
pub const COMMITS_TOTAL: &str = "pigeon_store_commits_total";
/// Jobs per group commit.
pub const COMMIT_JOBS: &str = "pigeon_store_commit_jobs";
/// Time to apply and fsync one group commit.
pub const COMMIT_SECONDS: &str = "pigeon_store_commit_seconds";
/// Jobs waiting for the committer when it starts a batch.
pub const WRITE_QUEUE_JOBS: &str = "pigeon_store_write_queue_jobs";
/// How long the oldest job of a group commit waited for the committer.
pub const WRITE_WAIT_SECONDS: &str = "pigeon_store_write_wait_seconds";
/// One group commit whole: its jobs, apply, fsync and answers.
pub const BATCH_SECONDS: &str = "pigeon_store_batch_seconds";
/// Time of one group commit's sync (the fsync) alone.
pub const SYNC_SECONDS: &str = "pigeon_store_sync_seconds";
/// Syncs that took [`SLOW_SYNC`] or longer.
pub const SLOW_SYNCS_TOTAL: &str = "pigeon_store_slow_syncs_total";

/// A sync this long holds every acknowledgement behind it: it is counted
/// ([`SLOW_SYNCS_TOTAL`]) and logged. On a healthy disk a group commit's
/// fsync takes well under a millisecond to a few; a stall this long is
/// the disk's (BENCHMARKS.md: a single journal write of about 230 ms).
pub const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);
/// At most one slow-sync warning per this interval; the next one says how
/// many were not logged in between.
pub const SLOW_SYNC_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Why jobs are refused after [`LogStore::shutdown`].
const SHUT_DOWN: &str = "store is shut down";

/// Most jobs folded into one group commit.
pub const WRITE_BATCH_COMMANDS_MAX: usize = 1024;
/// Most jobs waiting for the committer; senders wait beyond it.
pub const WRITE_QUEUE_COMMANDS_MAX: usize = 16 * 1024;
/// Most conversations a list request considers.
pub const CONVERSATIONS_SCAN_MAX: usize = 10_000;
/// Most groups (current and former) one sync looks at for shared streams.
pub const USER_GROUPS_SCAN_MAX: usize = 10_000;

const _: () = assert!(WRITE_BATCH_COMMANDS_MAX <= WRITE_QUEUE_COMMANDS_MAX);

/// Settings of a [`LogStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How far a persisted high-water mark runs ahead of allocation.
    pub seq_step: u64,
    /// Events each user's log keeps (older ones are trimmed; a device whose
    /// key is older must resync). 0 keeps everything.
    pub log_retain_events: u64,
    /// Committed log marks, and committed conversation heads, kept in
    /// memory for readers: when either holds more, it is emptied after a
    /// commit, and entries load again from the store when next used.
    pub heads_cached_max: usize,
    /// The embedded engine's journal size limit (see
    /// [`crate::embedded::JOURNAL_BYTES_MAX`]); the in-memory engine has
    /// no journal.
    pub journal_bytes_max: u64,
}

/// The default of [`StoreConfig::heads_cached_max`]: each entry is about
/// 50-80 bytes, so each map stays under about 20 MiB.
pub const HEADS_CACHED_MAX: usize = 262_144;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            seq_step: 1000,
            log_retain_events: 100_000,
            heads_cached_max: HEADS_CACHED_MAX,
            journal_bytes_max: crate::embedded::JOURNAL_BYTES_MAX,
        }
    }
}

/// Counters of the committer, for tests and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Group commits that wrote something (one fsync each).
    pub commits: AtomicU64,
    /// Jobs answered.
    pub commands: AtomicU64,
    /// Syncs that took [`SLOW_SYNC`] or longer.
    pub slow_syncs: AtomicU64,
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
struct Shared {
    engine: Arc<dyn Engine>,
    /// Committed marks of logs touched since start. A user is added (from
    /// the engine) before the committer first writes to their log, under this
    /// lock, so a reader that loads a missing entry sees only durable data.
    /// Only the committer removes entries, and only between batches (when
    /// everything it wrote is durable), so that stays true: a log missing
    /// here has no write in flight.
    logs: Mutex<HashMap<UserId, LogMark>>,
    /// Committed heads of conversation timelines, same protocol.
    convs: Mutex<HashMap<String, u64>>,
    /// The newest durable position of the shared stream.
    stream_head: AtomicU64,
    /// A commit failed.
    failed: std::sync::atomic::AtomicBool,
}

impl Shared {
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

    /// A message as the timeline holds it now.
    fn timeline_message(&self, conv: &str, conv_seq: u64) -> Result<Option<Message>, StoreError> {
        match self
            .engine
            .get(Table::Timeline, &keys::timeline(conv, conv_seq))?
        {
            Some(v) => Ok(Some(decode_proto("message", &v)?)),
            None => Ok(None),
        }
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

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        t: Table,
        k: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.engine
            .get(t, k)?
            .map(|v| decode_json(what, &v))
            .transpose()
    }

    fn group(&self, id: u64) -> Result<Option<GroupRecord>, StoreError> {
        self.get_json("group", Table::Groups, &keys::user_id(id))
    }

    fn member(&self, group: u64, user: UserId) -> Result<Option<MemberRecord>, StoreError> {
        self.get_json("member", Table::GroupMembers, &keys::pair(group, user))
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
///
/// Stored as [`DEDUP_BINARY`], conv_seq and sent_at_ms (8 bytes each, big
/// endian) and the conversation id; records written before that format are
/// JSON objects (their first byte is `{`) and still read.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct DedupRecord {
    conversation_id: String,
    conv_seq: u64,
    sent_at_ms: i64,
}

/// The first byte of a binary [`DedupRecord`].
const DEDUP_BINARY: u8 = 1;

impl DedupRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.conversation_id.len());
        out.push(DEDUP_BINARY);
        out.extend_from_slice(&self.conv_seq.to_be_bytes());
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        out.extend_from_slice(self.conversation_id.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<DedupRecord, StoreError> {
        match bytes.split_first() {
            Some((&DEDUP_BINARY, rest)) if rest.len() >= 16 => {
                let (seq, rest) = rest.split_at(8);
                let (sent, conv) = rest.split_at(8);
                Ok(DedupRecord {
                    conversation_id: String::from_utf8(conv.to_vec())
                        .map_err(|e| corrupt("dedup", e))?,
                    conv_seq: u64::from_be_bytes(seq.try_into().expect("8 bytes")),
                    sent_at_ms: i64::from_be_bytes(sent.try_into().expect("8 bytes")),
                })
            }
            Some((b'{', _)) => decode_json("dedup", bytes),
            _ => Err(corrupt("dedup", "neither a binary nor a JSON record")),
        }
    }

    /// The record of `key` in the batch or the engine.
    fn read(b: &Batch<'_>, key: &[u8]) -> Result<Option<DedupRecord>, StoreError> {
        b.get(Table::Dedup, key)?
            .map(|v| DedupRecord::decode(&v))
            .transpose()
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A unit of work for the committer. Called with `Some(reason)` instead when
/// the store no longer accepts writes.
type JobFn = Box<dyn FnOnce(&mut Committer, &mut Tx<'_>, Option<&str>) + Send>;

enum Cmd {
    /// A job and when it was queued.
    Job(JobFn, std::time::Instant),
    Shutdown(oneshot::Sender<()>),
}

/// Where the committer runs.
enum CommitterHandle {
    /// Its own OS thread: production.
    Thread(std::thread::JoinHandle<()>),
    /// A task on the tokio runtime that started the store: deterministic
    /// simulation, where a real thread would run outside simulated time.
    Task(tokio::task::JoinHandle<()>),
}

/// The store. Cheap to share behind an `Arc`.
pub struct LogStore {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    committer: Mutex<Option<CommitterHandle>>,
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
        let (store, committer, rx) = LogStore::open(engine, config);
        let handle = std::thread::Builder::new()
            .name("pigeon-committer".into())
            .spawn(move || committer.run_blocking(rx))
            .expect("spawning the committer thread");
        store.with_committer(CommitterHandle::Thread(handle))
    }

    /// Starts the committer as a task on the current tokio runtime instead
    /// of a thread, for deterministic simulation (`pigeon-sim`): the task
    /// runs only when the simulated host's runtime polls it, and dies with
    /// that runtime when the host crashes, losing what was queued and not
    /// committed, as a process would. Each batch still runs to the end in
    /// one poll, so a commit is never cut in half. Not for production: the
    /// engine's fsync would block the runtime's thread.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start_in_task<E: Engine>(engine: Arc<E>, config: StoreConfig) -> LogStore {
        let (store, committer, rx) = LogStore::open(engine, config);
        let handle = tokio::spawn(committer.run_in_task(rx));
        store.with_committer(CommitterHandle::Task(handle))
    }

    /// The store and its committer, not yet running.
    fn open<E: Engine>(
        engine: Arc<E>,
        config: StoreConfig,
    ) -> (LogStore, Committer, mpsc::Receiver<Cmd>) {
        assert!(config.seq_step >= 1, "seq_step must be at least 1");
        let engine: Arc<dyn Engine> = engine;
        if let Err(e) = admin::index_existing_sessions(&*engine) {
            // Revoking all of a user's sessions would miss the unindexed
            // ones; the next start tries again.
            tracing::error!(error = %e, "indexing existing sessions failed");
        }
        if let Err(e) = hand_over_trims(&*engine) {
            // Trimmed entries stay on the disk until their log trims again.
            tracing::error!(error = %e, "reading the logs' trim points failed");
        }
        let stream_head = engine
            .get(Table::Meta, keys::STREAM_HEAD)
            .ok()
            .flatten()
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            engine,
            logs: Mutex::default(),
            convs: Mutex::default(),
            stream_head: AtomicU64::new(stream_head),
            failed: Default::default(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_COMMANDS_MAX);
        let stats = Arc::new(StoreStats::default());
        let committer = Committer {
            stats: stats.clone(),
            shared: shared.clone(),
            config,
            user_alloc: HashMap::new(),
            conv_alloc: HashMap::new(),
            stream_alloc: None,
            outbox_alloc: None,
            next_user_id: None,
            member_cache: HashMap::new(),
            failed: None,
            spare: Spare::default(),
            slow: SlowSyncs::default(),
        };
        let store = LogStore {
            tx,
            shared,
            committer: Mutex::new(None),
            stats,
        };
        (store, committer, rx)
    }

    fn with_committer(self, handle: CommitterHandle) -> LogStore {
        *self
            .committer
            .lock()
            .expect("committer handle lock poisoned") = Some(handle);
        self
    }

    /// The committer's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// False once a commit has failed: the process should be restarted
    /// (recovery replays the journal) and traffic sent elsewhere.
    pub fn healthy(&self) -> bool {
        !self.shared.failed.load(Ordering::SeqCst)
    }

    /// Commits everything queued so far, stops the committer and waits for
    /// it. Later writes fail with [`StoreError::Unavailable`].
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .committer
            .lock()
            .expect("committer handle lock poisoned")
            .take();
        match handle {
            Some(CommitterHandle::Thread(h)) => {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            Some(CommitterHandle::Task(h)) => {
                let _ = h.await;
            }
            None => {}
        }
    }

    /// Runs `f` in the committer, inside the next group commit, and answers
    /// once that commit is durable. If `f` fails, its writes are undone.
    async fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Committer, &mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: JobFn = Box::new(move |c, tx, refused| {
            if let Some(reason) = refused {
                let e = if reason == SHUT_DOWN {
                    StoreError::Unavailable(reason.into())
                } else {
                    StoreError::Failed(reason.into())
                };
                let _ = reply.send(Err(e));
                return;
            }
            let save = tx.savepoint();
            let result = f(c, tx);
            if result.is_err() {
                tx.rollback(save);
            }
            tx.after.reply(reply, result);
        });
        let gone = || StoreError::Unavailable(SHUT_DOWN.into());
        let queued = std::time::Instant::now();
        self.tx
            .send(Cmd::Job(job, queued))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Tells the engine the trim points on the disk (durable, as everything
/// found at a start is), so that compactions drop what they cover; at most
/// [`TRIMS_HELD_MAX`], as many as it keeps.
fn hand_over_trims(engine: &dyn Engine) -> Result<(), StoreError> {
    let (start, end) = keys::trimmed_range();
    for (k, v) in engine.scan(Table::Meta, &start, &end, false, TRIMS_HELD_MAX)? {
        if let (Some(user), Some(through)) = (keys::trimmed_user(&k), keys::read_u64(&v)) {
            engine.log_trimmed(user, through);
        }
    }
    Ok(())
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

/// A rule refused the write.
fn refused(e: pigeon_core::CoreError) -> StoreError {
    StoreError::Refused(Box::new(e))
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
        self.exec(move |c, tx| c.create_user(tx, username, password_hash, now_ms))
            .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.shared
            .get_json("user", Table::Users, username.as_bytes())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let Some(name) = self.shared.engine.get(Table::UserIds, &keys::user_id(id))? else {
            return Ok(None);
        };
        let name = String::from_utf8(name).map_err(|e| corrupt("user id", e))?;
        self.user_by_name(&name).await
    }

    async fn create_session(&self, session: NewSession) -> Result<SessionRecord, StoreError> {
        self.exec(move |c, tx| c.create_session(tx, session)).await
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.shared
            .get_json("session", Table::Sessions, token_hash.as_bytes())
    }

    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let token_hash = token_hash.to_string();
        self.exec(move |_, tx| revoke_session(tx, &token_hash))
            .await
    }

    async fn append_message(&self, msg: AppendMessage) -> Result<AppendOutcome, StoreError> {
        self.exec(move |c, tx| c.append(tx, msg)).await
    }

    async fn read_log(
        &self,
        user: UserId,
        from: LogFrom,
        limit: usize,
        bytes_max: usize,
    ) -> Result<LogRead, LogReadError> {
        self.shared.read_log(user, from, limit, bytes_max)
    }

    async fn log_head(&self, user: UserId) -> Result<u64, StoreError> {
        Ok(self.shared.log_mark(user)?.head)
    }

    async fn history(&self, query: HistoryQuery) -> Result<(Vec<Message>, bool), StoreError> {
        self.shared.history(&query)
    }

    async fn list_conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.shared.list_conversations(user, limit)
    }

    async fn conversation(
        &self,
        user: UserId,
        conv: &str,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        match self
            .shared
            .engine
            .get(Table::ConvState, &keys::conv_state(user, conv))?
        {
            Some(v) => {
                let mut s: ConversationSummary = decode_proto("conversation", &v)?;
                stored::derive_direct(&mut s, |c| self.shared.conv_head(c))?;
                stored::resolve_summary(&mut s, |c, seq| self.shared.timeline_message(c, seq))?;
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }

    async fn mark_read(&self, mark: ReadMark) -> Result<MarkReadOutcome, StoreError> {
        self.exec(move |c, tx| c.mark_read(tx, mark)).await
    }

    async fn record_delivered(
        &self,
        user: UserId,
        username: &str,
        marks: Vec<Delivered>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let username = username.to_string();
        self.exec(move |c, tx| c.record_delivered(tx, user, &username, marks, now_ms))
            .await
    }

    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> Result<bool, StoreError> {
        Ok(self
            .shared
            .engine
            .get(Table::Blocks, &keys::pair(blocker, blocked))?
            .is_some())
    }

    async fn set_blocked(
        &self,
        blocker: UserId,
        blocked: (UserId, String),
        block: bool,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        self.exec(move |c, tx| c.set_blocked(tx, blocker, blocked, block, now_ms))
            .await
    }

    async fn blocked_users(
        &self,
        blocker: UserId,
        limit: usize,
    ) -> Result<Vec<UserId>, StoreError> {
        let prefix = keys::user_id(blocker);
        let rows = self.shared.engine.scan(
            Table::Blocks,
            &prefix,
            &keys::prefix_end(&prefix),
            false,
            limit,
        )?;
        Ok(rows.iter().map(|(k, _)| keys::pair_second(k)).collect())
    }

    async fn change_message(&self, change: MessageChange) -> Result<ChangeOutcome, StoreError> {
        self.exec(move |c, tx| c.change_message(tx, change)).await
    }

    async fn receipt_counts(
        &self,
        conv: &str,
        conv_seqs: &[u64],
    ) -> Result<Vec<ReceiptSummary>, StoreError> {
        self.shared.receipt_counts(conv, conv_seqs)
    }

    async fn prefs(&self, user: UserId) -> Result<UserPrefs, StoreError> {
        Ok(self
            .shared
            .get_json("prefs", Table::Meta, &keys::prefs(user))?
            .unwrap_or_default())
    }

    async fn set_prefs(&self, user: UserId, prefs: UserPrefs) -> Result<(), StoreError> {
        self.exec(move |_, tx| {
            tx.b.put(Table::Meta, keys::prefs(user), encode_json(&prefs));
            Ok(())
        })
        .await
    }

    async fn contacts(&self, user: UserId, limit: usize) -> Result<Vec<UserId>, StoreError> {
        self.shared.contacts(user, limit)
    }

    async fn shares_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.shared.shares_conversation(a, b)
    }

    async fn group_op(&self, op: GroupOp) -> Result<GroupOutcome, StoreError> {
        self.exec(move |c, tx| c.group_op(tx, op)).await
    }

    async fn group(&self, group_id: u64) -> Result<Option<GroupRecord>, StoreError> {
        self.shared.group(group_id)
    }

    async fn member(
        &self,
        group_id: u64,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        self.shared.member(group_id, user)
    }

    async fn list_members(
        &self,
        group_id: u64,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<MemberRecord>, bool), StoreError> {
        self.shared.list_members(group_id, after, limit)
    }

    async fn read_streams(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<StreamRead, StoreError> {
        self.shared.read_streams(user, after, limit, bytes_max)
    }

    async fn deliveries_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.shared.deliveries_due(now_ms, limit)
    }

    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: Result<(), String>,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.exec(move |c, tx| c.delivery_attempted(tx, id, outcome, next_attempt_ms))
            .await
    }

    async fn deliveries_pending(&self, limit: usize) -> Result<usize, StoreError> {
        self.shared.deliveries_pending(limit)
    }

    async fn deliveries_failed(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.shared.deliveries_failed(limit)
    }

    async fn set_flag(
        &self,
        name: &str,
        flag: Option<pigeon_core::flags::Flag>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.exec(move |c, tx| {
            match flag {
                Some(f) => tx.b.put(Table::Meta, keys::flag(&name), encode_json(&f)),
                None => tx.b.delete(Table::Meta, keys::flag(&name)),
            }
            // One marker for everyone; each reader gets their own flag set.
            let marker = event::Kind::FlagsChanged(pigeon_proto::v1::FlagsChanged::default());
            c.append_stream(tx, keys::SYSTEM_STREAM, now_ms, marker)?;
            Ok(())
        })
        .await
    }

    async fn flags(&self) -> Result<Vec<pigeon_core::flags::Flag>, StoreError> {
        let prefix = keys::FLAG_PREFIX;
        let rows = self.shared.engine.scan(
            Table::Meta,
            prefix,
            &keys::prefix_end(prefix),
            false,
            pigeon_core::flags::FLAGS_MAX,
        )?;
        rows.iter().map(|(_, v)| decode_json("flag", v)).collect()
    }

    async fn sent(
        &self,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<pigeon_core::store::SentAck>, StoreError> {
        // Through the committer: its answer leaves only once the batch that
        // would hold a concurrent original is durable.
        let key = keys::dedup(sender, client_msg_id);
        self.exec(move |_, tx| {
            Ok(
                DedupRecord::read(&tx.b, &key)?.map(|d| pigeon_core::store::SentAck {
                    conversation_id: d.conversation_id,
                    conv_seq: d.conv_seq,
                    sent_at_ms: d.sent_at_ms,
                }),
            )
        })
        .await
    }

    async fn message(
        &self,
        conversation_id: &str,
        conv_seq: u64,
    ) -> Result<Option<Message>, StoreError> {
        self.shared.timeline_message(conversation_id, conv_seq)
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let name = name.to_string();
        self.exec(move |_, tx| secret(tx, &name)).await
    }

    async fn list_users(
        &self,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<UserRecord>, bool), StoreError> {
        self.shared.list_users(after, limit)
    }

    async fn update_user(
        &self,
        user: UserId,
        change: UserChange,
    ) -> Result<UserRecord, StoreError> {
        self.exec(move |c, tx| c.update_user(tx, user, change))
            .await
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<(usize, bool), StoreError> {
        self.exec(move |c, tx| c.revoke_user_sessions(tx, user, limit))
            .await
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        self.shared.totals()
    }
}

// ------------------------------------------------------------- the committer

/// An in-memory seq allocator for one log, timeline or the shared stream.
#[derive(Debug, Clone, Copy)]
struct Alloc {
    /// The next seq to hand out.
    next: u64,
    /// The persisted mark: every seq below it may have been handed out
    /// before a restart, none at or above it.
    hw: u64,
}

/// The writes of one group commit, readable before they are applied.
///
/// Each write is stored once, in `ops`; the overlay maps a key to the last
/// write of it (an index into `ops`), one map per table so that a lookup
/// needs no key of its own.
struct Batch<'e> {
    engine: &'e dyn Engine,
    ops: Vec<Op>,
    overlay: Vec<HashMap<Vec<u8>, usize>>,
    /// For each write in `ops` (same index): the write of the same key it
    /// hid, if any, to undo a failed job's writes.
    undo: Vec<Option<usize>>,
}

impl<'e> Batch<'e> {
    /// A batch in the spare buffers of an earlier one (taken).
    fn reusing(engine: &'e dyn Engine, spare: &mut Spare) -> Batch<'e> {
        let mut overlay = std::mem::take(&mut spare.overlay);
        overlay.resize_with(Table::ALL.len(), HashMap::new);
        Batch {
            engine,
            ops: std::mem::take(&mut spare.ops),
            overlay,
            undo: std::mem::take(&mut spare.undo),
        }
    }

    /// The batch's own last write of a key: `Some(None)` is a deletion.
    fn written(&self, t: Table, k: &[u8]) -> Option<Option<&[u8]>> {
        let &i = self.overlay[t.index()].get(k)?;
        Some(match &self.ops[i] {
            Op::Put(_, _, v) => Some(v.as_slice()),
            Op::Delete(..) => None,
        })
    }

    /// The batch's own writes in `table`: key and value (`None`: deleted).
    fn written_in(&self, t: Table) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.overlay[t.index()]
            .values()
            .map(|&i| match &self.ops[i] {
                Op::Put(_, k, v) => (k.as_slice(), Some(v.as_slice())),
                Op::Delete(_, k) => (k.as_slice(), None),
            })
    }

    fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.written(t, k) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => self.engine.get(t, k),
        }
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        t: Table,
        k: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(t, k)?.map(|v| decode_json(what, &v)).transpose()
    }

    fn get_proto<T: prost::Message + Default>(
        &self,
        what: &str,
        t: Table,
        k: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(t, k)?.map(|v| decode_proto(what, &v)).transpose()
    }

    /// Entries in `[start, end)` ascending, the batch's own writes included.
    fn scan_all(&self, t: Table, start: &[u8], end: &[u8]) -> Result<Entries, StoreError> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .engine
            .scan(t, start, end, false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (k, v) in self.written_in(t) {
            if k >= start && k < end {
                merged.insert(k.to_vec(), v.map(<[u8]>::to_vec));
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    fn set(&mut self, t: Table, k: Vec<u8>, v: Option<Vec<u8>>) {
        let i = self.ops.len();
        let previous = self.overlay[t.index()].insert(k.clone(), i);
        self.undo.push(previous);
        self.ops.push(match v {
            Some(v) => Op::Put(t, k, v),
            None => Op::Delete(t, k),
        });
    }

    /// Undoes the writes after the first `ops` of them.
    fn truncate(&mut self, ops: usize) {
        for i in (ops..self.ops.len()).rev() {
            let previous = self.undo[i];
            let (t, k) = match &self.ops[i] {
                Op::Put(t, k, _) | Op::Delete(t, k) => (*t, k),
            };
            match previous {
                Some(p) => self.overlay[t.index()].insert(k.clone(), p),
                None => self.overlay[t.index()].remove(k.as_slice()),
            };
        }
        self.ops.truncate(ops);
        self.undo.truncate(ops);
    }

    fn put(&mut self, t: Table, k: Vec<u8>, v: Vec<u8>) {
        self.set(t, k, Some(v));
    }

    /// Drops the writes a later write of the same key hid, keeping the
    /// order of the rest, so that each key is written once per commit: a
    /// summary or mark written by many jobs of one batch (a busy sender, an
    /// active small group) reaches the engine's memtable and journal once.
    /// The batch commits atomically, so nothing could have read the hidden
    /// writes. Its reads are no longer valid afterwards: call it last.
    fn drop_hidden(&mut self) {
        // Most commits at moderate load write each key once: no allocation.
        if self.undo.iter().all(Option::is_none) {
            return;
        }
        let mut hidden = vec![false; self.ops.len()];
        for &p in self.undo.iter().flatten() {
            hidden[p] = true;
        }
        let mut i = 0;
        self.ops.retain(|_| {
            i += 1;
            !hidden[i - 1]
        });
    }

    fn delete(&mut self, t: Table, k: Vec<u8>) {
        self.set(t, k, None);
    }
}

/// Answers one job once its batch's commit succeeded (`None`) or failed.
type ReplyFn = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// What to publish and whom to answer once a batch is durable.
#[derive(Default)]
struct AfterCommit {
    log_heads: HashMap<UserId, u64>,
    conv_heads: HashMap<String, u64>,
    stream_head: u64,
    /// Trim points written: the engine may drop what they cover once
    /// they are durable ([`Engine::log_trimmed`]).
    trims: Vec<(UserId, u64)>,
}

/// One group commit in the making.
struct Tx<'e> {
    b: Batch<'e>,
    after: Replies,
    publish: AfterCommit,
    /// The newest seq of each log written in this batch.
    heads: HashMap<UserId, u64>,
    /// How to undo the changes to `heads` and `publish` since the batch
    /// began, newest last: a job that fails rolls back its own, so a
    /// savepoint costs two lengths, not copies of the batch's maps.
    head_undo: Vec<HeadUndo>,
}

/// A change to `Tx::heads` or `Tx::publish`, as what was there before.
enum HeadUndo {
    /// A log's head in the batch (also its published head).
    Log(UserId, Option<u64>, Option<u64>),
    /// A conversation's published head.
    Conv(String, Option<u64>),
    /// The shared stream's published head.
    Stream(u64),
}

/// The answers of a batch's jobs.
#[derive(Default)]
struct Replies(Vec<ReplyFn>);

impl Replies {
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, StoreError>) {
        match result {
            // An error is not a write: answer after the commit anyway, so
            // answers keep their order, but the error stands on its own.
            Err(e) => self.0.push(Box::new(move |_| {
                let _ = reply.send(Err(e));
            })),
            Ok(v) => self.0.push(Box::new(move |failure| {
                let _ = reply.send(match failure {
                    None => Ok(v),
                    Some(e) => Err(StoreError::Io(format!("commit failed: {e}"))),
                });
            })),
        }
    }
}

/// Where a job started, to undo it.
struct Savepoint {
    ops: usize,
    head_undo: usize,
    trims: usize,
}

/// Puts `previous` back as `key`'s value in `map` (removes it if none).
fn restore<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, previous: Option<u64>) {
    match previous {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

impl Tx<'_> {
    fn savepoint(&self) -> Savepoint {
        Savepoint {
            ops: self.b.ops.len(),
            head_undo: self.head_undo.len(),
            trims: self.publish.trims.len(),
        }
    }

    fn rollback(&mut self, s: Savepoint) {
        self.b.truncate(s.ops);
        self.publish.trims.truncate(s.trims);
        while self.head_undo.len() > s.head_undo {
            match self.head_undo.pop().expect("head undo entries") {
                HeadUndo::Log(user, head, published) => {
                    restore(&mut self.heads, user, head);
                    restore(&mut self.publish.log_heads, user, published);
                }
                HeadUndo::Conv(conv, previous) => {
                    restore(&mut self.publish.conv_heads, conv, previous)
                }
                HeadUndo::Stream(previous) => self.publish.stream_head = previous,
            }
        }
    }

    /// Moves `user`'s log head in this batch to `seq`.
    fn set_log_head(&mut self, user: UserId, seq: u64) {
        let head = self.heads.insert(user, seq);
        let published = self.publish.log_heads.insert(user, seq);
        self.head_undo.push(HeadUndo::Log(user, head, published));
    }

    /// Moves conversation `conv`'s published head to `conv_seq`.
    fn set_conv_head(&mut self, conv: &str, conv_seq: u64) {
        let previous = self.publish.conv_heads.insert(conv.to_string(), conv_seq);
        self.head_undo
            .push(HeadUndo::Conv(conv.to_string(), previous));
    }

    /// Moves the shared stream's published head up to `seq`.
    fn raise_stream_head(&mut self, seq: u64) {
        self.head_undo
            .push(HeadUndo::Stream(self.publish.stream_head));
        self.publish.stream_head = self.publish.stream_head.max(seq);
    }
}

struct Committer {
    stats: Arc<StoreStats>,
    shared: Arc<Shared>,
    config: StoreConfig,
    user_alloc: HashMap<UserId, Alloc>,
    conv_alloc: HashMap<String, Alloc>,
    stream_alloc: Option<Alloc>,
    outbox_alloc: Option<Alloc>,
    next_user_id: Option<u64>,
    /// Current member ids per group, rebuilt after membership changes.
    member_cache: HashMap<u64, Arc<[UserId]>>,
    /// Set when a commit failed: the engine's state is unknown, so every
    /// later write is refused until restart (recovery replays the journal).
    failed: Option<String>,
    /// The last batch's buffers, emptied, for the next one.
    spare: Spare,
    /// When a slow sync was last logged, and how many were not since.
    slow: SlowSyncs,
}

/// Slow syncs, logged at most once per [`SLOW_SYNC_WARN_EVERY`].
#[derive(Default)]
struct SlowSyncs {
    warned_at: Option<std::time::Instant>,
    unlogged: u64,
}

impl SlowSyncs {
    /// Counts a sync that took `took` (after an apply of `apply`, for
    /// `jobs` jobs) if it was slow, and logs it unless one was logged
    /// within [`SLOW_SYNC_WARN_EVERY`].
    fn note(
        &mut self,
        stats: &StoreStats,
        took: std::time::Duration,
        apply: std::time::Duration,
        jobs: usize,
    ) {
        if took < SLOW_SYNC {
            return;
        }
        stats.slow_syncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(SLOW_SYNCS_TOTAL).increment(1);
        let now = std::time::Instant::now();
        if self
            .warned_at
            .is_some_and(|at| now.duration_since(at) < SLOW_SYNC_WARN_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            sync_ms = took.as_millis() as u64,
            apply_ms = apply.as_millis() as u64,
            jobs,
            slow_syncs_not_logged = self.unlogged,
            "a group commit waited {} ms for the disk to make it durable; every acknowledgement in it waited as long",
            took.as_millis()
        );
        self.warned_at = Some(now);
        self.unlogged = 0;
    }
}

/// Most writes a batch's buffers may have room for and still be kept for
/// the next batch (a larger one, e.g. a big group change, is let go).
const SPARE_OPS_MAX: usize = 65_536;

/// A finished batch's buffers, emptied. At full load a batch holds
/// thousands of writes: growing fresh vectors for each one cost more (in
/// copies and in page faults on the allocator's fresh pages) than keeping
/// them.
#[derive(Default)]
struct Spare {
    ops: Vec<Op>,
    undo: Vec<Option<usize>>,
    overlay: Vec<HashMap<Vec<u8>, usize>>,
    head_undo: Vec<HeadUndo>,
}

impl Spare {
    /// Keeps `b`'s and `head_undo`'s buffers unless they grew too large.
    fn keep(&mut self, b: Batch<'_>, mut head_undo: Vec<HeadUndo>) {
        let Batch {
            mut ops,
            mut undo,
            mut overlay,
            ..
        } = b;
        if ops.capacity() > SPARE_OPS_MAX {
            return;
        }
        ops.clear();
        undo.clear();
        head_undo.clear();
        for m in &mut overlay {
            m.clear();
        }
        *self = Spare {
            ops,
            undo,
            overlay,
            head_undo,
        };
    }
}

impl Committer {
    /// The committer's loop on its own thread.
    fn run_blocking(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut cmds = Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX);
        loop {
            cmds.clear();
            if rx.blocking_recv_many(&mut cmds, WRITE_BATCH_COMMANDS_MAX) == 0 {
                return;
            }
            if self.batch(&rx, &mut cmds) {
                return;
            }
        }
    }

    /// The same loop as a tokio task (see [`LogStore::start_in_task`]).
    async fn run_in_task(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut cmds = Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX);
        loop {
            cmds.clear();
            if rx.recv_many(&mut cmds, WRITE_BATCH_COMMANDS_MAX).await == 0 {
                return;
            }
            if self.batch(&rx, &mut cmds) {
                return;
            }
        }
    }

    /// Runs the jobs in `cmds` as one group commit and answers them. True
    /// when a shutdown was among them: the loop ends.
    fn batch(&mut self, rx: &mpsc::Receiver<Cmd>, cmds: &mut Vec<Cmd>) -> bool {
        metrics::gauge!(WRITE_QUEUE_JOBS).set(rx.len() as f64);
        metrics::histogram!(COMMIT_JOBS).record(cmds.len() as f64);
        let started = std::time::Instant::now();
        if let Some(Cmd::Job(_, queued)) = cmds.first() {
            let waited = started.saturating_duration_since(*queued);
            metrics::histogram!(WRITE_WAIT_SECONDS).record(waited.as_secs_f64());
        }
        let mut stop = None;
        let engine = self.shared.engine.clone();
        let mut tx = Tx {
            b: Batch::reusing(&*engine, &mut self.spare),
            after: Replies::default(),
            publish: AfterCommit::default(),
            heads: HashMap::new(),
            head_undo: std::mem::take(&mut self.spare.head_undo),
        };
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Shutdown(reply) => {
                    stop = Some(reply);
                    self.failed.get_or_insert_with(|| SHUT_DOWN.into());
                }
                Cmd::Job(job, _) => {
                    let failed = self.failed.clone();
                    job(self, &mut tx, failed.as_deref());
                }
            }
        }
        self.commit(tx);
        metrics::histogram!(BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        match stop {
            Some(reply) => {
                let _ = reply.send(());
                true
            }
            None => false,
        }
    }

    fn commit(&mut self, tx: Tx<'_>) {
        let Tx {
            mut b,
            after,
            publish,
            head_undo,
            ..
        } = tx;
        let result = if b.ops.is_empty() {
            Ok(())
        } else {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(COMMITS_TOTAL).increment(1);
            let started = std::time::Instant::now();
            b.drop_hidden();
            let r = self.shared.engine.apply(&mut b.ops).and_then(|()| {
                let applied = std::time::Instant::now();
                let r = self.shared.engine.sync();
                let took = applied.elapsed();
                metrics::histogram!(SYNC_SECONDS).record(took.as_secs_f64());
                let jobs = after.0.len();
                self.slow.note(&self.stats, took, applied - started, jobs);
                r
            });
            metrics::histogram!(COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            r
        };
        self.spare.keep(b, head_undo);
        self.stats
            .commands
            .fetch_add(after.0.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                let max = self.config.heads_cached_max;
                let mut logs = self.shared.logs.lock().expect("log marks lock poisoned");
                for (user, head) in publish.log_heads {
                    logs.entry(user).or_default().head = head;
                }
                if logs.len() > max {
                    logs.clear();
                }
                drop(logs);
                let mut convs = self.shared.convs.lock().expect("conv heads lock poisoned");
                convs.extend(publish.conv_heads);
                if convs.len() > max {
                    convs.clear();
                }
                drop(convs);
                self.shared
                    .stream_head
                    .fetch_max(publish.stream_head, Ordering::SeqCst);
                // A log trimmed by several jobs: only its last point was
                // written (`Batch::drop_hidden`), and it covers the others.
                let mut handed = HashSet::new();
                for &(user, through) in publish.trims.iter().rev() {
                    if handed.insert(user) {
                        self.shared.engine.log_trimmed(user, through);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; refusing further writes");
                self.failed = Some(format!("a commit failed: {e}"));
                self.shared.failed.store(true, Ordering::SeqCst);
            }
        }
        for reply in after.0 {
            reply(result.as_ref().err());
        }
    }

    fn create_user(
        &mut self,
        tx: &mut Tx<'_>,
        username: String,
        password_hash: String,
        now_ms: i64,
    ) -> Result<UserRecord, StoreError> {
        let b = &mut tx.b;
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
            disabled: false,
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
        tx: &mut Tx<'_>,
        s: NewSession,
    ) -> Result<SessionRecord, StoreError> {
        admin::check_enabled(&tx.b, s.user_id)?;
        let b = &mut tx.b;
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
        admin::index_session(b, &record);
        Ok(record)
    }

    /// The next seq of `user`'s log, persisting a new mark when needed.
    fn next_log_seq(&mut self, b: &mut Batch<'_>, user: UserId) -> Result<u64, StoreError> {
        let key = keys::hw_user(user);
        let alloc = match self.user_alloc.get(&user) {
            Some(a) => *a,
            None => load_alloc(b, &key)?,
        };
        let (seq, alloc) = allocate(b, key, alloc, self.config.seq_step);
        self.user_alloc.insert(user, alloc);
        Ok(seq)
    }

    fn conv_alloc_of(&mut self, b: &Batch<'_>, conv: &str) -> Result<Alloc, StoreError> {
        if let Some(a) = self.conv_alloc.get(conv) {
            return Ok(*a);
        }
        let a = load_alloc(b, &keys::hw_conv(conv))?;
        self.conv_alloc.insert(conv.to_string(), a);
        Ok(a)
    }

    fn next_conv_seq(&mut self, b: &mut Batch<'_>, conv: &str) -> Result<u64, StoreError> {
        let alloc = self.conv_alloc_of(b, conv)?;
        let (seq, alloc) = allocate(b, keys::hw_conv(conv), alloc, self.config.seq_step);
        self.conv_alloc.insert(conv.to_string(), alloc);
        Ok(seq)
    }

    /// Every conv_seq handed out so far in `conv` is at most this.
    fn conv_last(&mut self, b: &Batch<'_>, conv: &str) -> Result<u64, StoreError> {
        Ok(self.conv_alloc_of(b, conv)?.next - 1)
    }

    fn stream_alloc_of(&mut self, b: &Batch<'_>) -> Result<Alloc, StoreError> {
        if let Some(a) = self.stream_alloc {
            return Ok(a);
        }
        let a = load_alloc(b, keys::HW_STREAM)?;
        self.stream_alloc = Some(a);
        Ok(a)
    }

    /// Every shared-stream seq handed out so far is at most this.
    fn stream_last(&mut self, b: &Batch<'_>) -> Result<u64, StoreError> {
        Ok(self.stream_alloc_of(b)?.next - 1)
    }

    /// Appends one event to `user`'s log within the batch.
    fn append_event(
        &mut self,
        tx: &mut Tx<'_>,
        user: UserId,
        now_ms: i64,
        kind: event::Kind,
    ) -> Result<Appended, StoreError> {
        let prev_seq = match tx.heads.get(&user) {
            Some(h) => *h,
            // Registers the user's committed mark before we write to the log
            // (see `Shared::logs`).
            None => self.shared.log_mark(user)?.head,
        };
        let seq = self.next_log_seq(&mut tx.b, user)?;
        assert!(seq > prev_seq, "log seqs only grow: {seq} after {prev_seq}");
        let event = Event {
            seq,
            created_at_ms: now_ms,
            kind: Some(kind),
            group_seq: 0,
            ..Event::default()
        };
        tx.b.put(
            Table::Log,
            keys::log(user, seq),
            stored::encode_event(&event),
        );
        tx.set_log_head(user, seq);
        self.trim(tx, user, seq)?;
        Ok(Appended {
            user_id: user,
            prev_seq,
            events: vec![event],
        })
    }

    /// Appends one event to a large group's shared stream; returns its
    /// stream seq.
    fn append_stream(
        &mut self,
        tx: &mut Tx<'_>,
        group: u64,
        now_ms: i64,
        kind: event::Kind,
    ) -> Result<u64, StoreError> {
        let alloc = self.stream_alloc_of(&tx.b)?;
        let (seq, alloc) = allocate(
            &mut tx.b,
            keys::HW_STREAM.to_vec(),
            alloc,
            self.config.seq_step,
        );
        self.stream_alloc = Some(alloc);
        let event = Event {
            seq: 0,
            created_at_ms: now_ms,
            kind: Some(kind),
            group_seq: seq,
            ..Event::default()
        };
        tx.b.put(Table::Stream, keys::pair(group, seq), event.encode_to_vec());
        tx.b.put(
            Table::Meta,
            keys::STREAM_HEAD.to_vec(),
            keys::u64_value(seq),
        );
        tx.raise_stream_head(seq);
        Ok(seq)
    }

    /// Moves the trim point of a log that holds more than the retained
    /// count plus a short run ([`trim_due`]) up to the retention. Called
    /// once per append.
    fn trim(&mut self, tx: &mut Tx<'_>, user: UserId, head: u64) -> Result<(), StoreError> {
        let retain = self.config.log_retain_events;
        if retain == 0 {
            return Ok(());
        }
        let mark = self.shared.log_mark(user)?;
        if !trim_due(head, mark.trimmed_through, retain) {
            return Ok(());
        }
        // Only the trim point is written: the entries it covers are dropped
        // by the engine once it is durable (`crate::trims`).
        let reached = head - retain;
        tx.b.put(Table::Meta, keys::trimmed(user), keys::u64_value(reached));
        tx.publish.trims.push((user, reached));
        // Raise the readers' trim point before the point is committed (and
        // long before anything it covers is dropped): a reader then answers
        // "resync" slightly early, never skips silently.
        self.shared
            .logs
            .lock()
            .expect("log marks lock poisoned")
            .entry(user)
            .or_default()
            .trimmed_through = reached;
        Ok(())
    }
}

fn revoke_session(tx: &mut Tx<'_>, token_hash: &str) -> Result<(), StoreError> {
    let Some(mut record) =
        tx.b.get_json::<SessionRecord>("session", Table::Sessions, token_hash.as_bytes())?
    else {
        return Err(StoreError::SessionNotFound);
    };
    record.revoked = true;
    tx.b.put(
        Table::Sessions,
        token_hash.as_bytes().to_vec(),
        encode_json(&record),
    );
    Ok(())
}

fn secret(tx: &mut Tx<'_>, name: &str) -> Result<[u8; 32], StoreError> {
    let key = keys::secret(name);
    if let Some(v) = tx.b.get(Table::Meta, &key)? {
        return v
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("secret", "wrong length"));
    }
    let mut s = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut s);
    tx.b.put(Table::Meta, key, s.to_vec());
    Ok(s)
}

fn load_alloc(b: &Batch<'_>, key: &[u8]) -> Result<Alloc, StoreError> {
    let hw = b.get(Table::Meta, key)?.and_then(|v| keys::read_u64(&v));
    Ok(match hw {
        // Every seq below the mark may have been used before a restart.
        Some(hw) => Alloc { next: hw, hw },
        None => Alloc { next: 1, hw: 1 },
    })
}

fn allocate(b: &mut Batch<'_>, key: Vec<u8>, mut a: Alloc, step: u64) -> (u64, Alloc) {
    let seq = a.next;
    a.next += 1;
    if a.next > a.hw {
        a.hw = seq + step;
        b.put(Table::Meta, key, keys::u64_value(a.hw));
    }
    (seq, a)
}

#[cfg(test)]
mod tests {
    use pigeon_core::Store as _;
    use pigeon_core::store::TRIM_RUN_MAX;
    use pigeon_proto::v1::{FlagsChanged, event};

    use super::*;
    use crate::memory::MemoryEngine;

    fn flags(name: &str) -> event::Kind {
        event::Kind::FlagsChanged(FlagsChanged {
            enabled: vec![name.to_string()],
        })
    }

    /// Checks idempotency records round-trip in the binary format, that
    /// those written as JSON before it still read, and that anything else is
    /// reported as corruption rather than a panic.
    #[test]
    fn dedup_records_read_both_formats() {
        let record = DedupRecord {
            conversation_id: "d:12:345".into(),
            conv_seq: 1 << 40,
            sent_at_ms: 1_790_000_000_123,
        };
        let bytes = record.encode();
        assert_eq!(bytes.len(), 17 + 8);
        assert_eq!(DedupRecord::decode(&bytes).unwrap(), record);
        let old = br#"{"conversation_id":"d:12:345","conv_seq":1099511627776,"sent_at_ms":1790000000123}"#;
        assert_eq!(DedupRecord::decode(old).unwrap(), record);
        for bad in [
            &b""[..],
            &[DEDUP_BINARY, 1, 2][..],
            &[9, 9][..],
            &b"{nope"[..],
        ] {
            assert!(matches!(
                DedupRecord::decode(bad),
                Err(StoreError::Corrupt(_))
            ));
        }
        let mut not_utf8 = bytes.clone();
        not_utf8.push(0xff);
        assert!(DedupRecord::decode(&not_utf8).is_err());
    }

    /// Checks a batch reads its own writes, the last one of a key winning,
    /// and that undoing the writes after a point brings back exactly what
    /// was readable there.
    #[test]
    fn a_batch_reads_and_undoes_its_own_writes() {
        let engine = MemoryEngine::default();
        engine
            .apply(&mut vec![Op::Put(
                Table::Meta,
                b"k0".to_vec(),
                b"old".to_vec(),
            )])
            .unwrap();
        let mut b = Batch::reusing(&engine, &mut Spare::default());
        b.put(Table::Meta, b"k1".to_vec(), b"one".to_vec());
        b.delete(Table::Meta, b"k0".to_vec());
        let point = b.ops.len();
        b.put(Table::Meta, b"k1".to_vec(), b"two".to_vec());
        b.put(Table::Meta, b"k0".to_vec(), b"back".to_vec());
        b.put(Table::Log, b"k1".to_vec(), b"other table".to_vec());
        b.put(Table::Meta, b"k2".to_vec(), b"new".to_vec());
        let read = |b: &Batch<'_>, t, k: &[u8]| b.get(t, k).unwrap();
        assert_eq!(read(&b, Table::Meta, b"k1"), Some(b"two".to_vec()));
        assert_eq!(read(&b, Table::Meta, b"k0"), Some(b"back".to_vec()));
        assert_eq!(read(&b, Table::Log, b"k1"), Some(b"other table".to_vec()));
        b.truncate(point);
        assert_eq!(read(&b, Table::Meta, b"k1"), Some(b"one".to_vec()));
        assert_eq!(read(&b, Table::Meta, b"k0"), None, "deleted in the batch");
        assert_eq!(read(&b, Table::Meta, b"k2"), None);
        assert_eq!(read(&b, Table::Log, b"k1"), None);
        assert_eq!(b.ops.len(), point);
        let scanned = b.scan_all(Table::Meta, b"k", b"l").unwrap();
        assert_eq!(scanned, vec![(b"k1".to_vec(), b"one".to_vec())]);

        // The next batch gets the buffers back empty: none of this batch's
        // writes is readable through it, and their room is kept.
        let mut spare = Spare::default();
        spare.keep(b, vec![HeadUndo::Stream(1)]);
        let b = Batch::reusing(&engine, &mut spare);
        assert!(b.ops.is_empty() && b.undo.is_empty() && b.ops.capacity() >= point);
        assert_eq!(read(&b, Table::Meta, b"k1"), None);
        assert_eq!(read(&b, Table::Meta, b"k0"), Some(b"old".to_vec()));
        assert!(b.scan_all(Table::Meta, b"k", b"l").unwrap().len() == 1);
        assert!(spare.head_undo.is_empty());
        // A batch grown past the bound is not kept.
        let mut big = Batch::reusing(&engine, &mut Spare::default());
        big.ops.reserve(SPARE_OPS_MAX + 1);
        spare.keep(big, Vec::new());
        assert_eq!(Batch::reusing(&engine, &mut spare).ops.capacity(), 0);
    }

    /// Checks a commit applies each key's last write only, in the order of
    /// the writes, and that a write undone with its job hides nothing.
    #[test]
    fn a_batch_applies_each_keys_last_write_once() {
        let engine = MemoryEngine::default();
        let mut b = Batch::reusing(&engine, &mut Spare::default());
        b.put(Table::Meta, b"a".to_vec(), b"1".to_vec());
        b.put(Table::Log, b"a".to_vec(), b"log".to_vec());
        b.put(Table::Meta, b"b".to_vec(), b"1".to_vec());
        b.put(Table::Meta, b"a".to_vec(), b"2".to_vec());
        b.delete(Table::Meta, b"b".to_vec());
        b.put(Table::Meta, b"c".to_vec(), b"1".to_vec());
        let point = b.ops.len();
        b.put(Table::Meta, b"c".to_vec(), b"undone".to_vec());
        b.put(Table::Meta, b"a".to_vec(), b"undone".to_vec());
        b.truncate(point);
        b.put(Table::Meta, b"a".to_vec(), b"3".to_vec());
        b.drop_hidden();
        let applied: Vec<String> = b
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(t, k, v) => format!("{t:?} {} = {}", k.escape_ascii(), v.escape_ascii()),
                Op::Delete(t, k) => format!("{t:?} {} deleted", k.escape_ascii()),
            })
            .collect();
        assert_eq!(
            applied,
            ["Log a = log", "Meta b deleted", "Meta c = 1", "Meta a = 3"]
        );
        engine.apply(&mut b.ops).unwrap();
        let get = |t, k: &[u8]| engine.get(t, k).unwrap();
        assert_eq!(get(Table::Meta, b"a"), Some(b"3".to_vec()));
        assert_eq!(get(Table::Meta, b"b"), None);
        assert_eq!(get(Table::Meta, b"c"), Some(b"1".to_vec()));
        assert_eq!(get(Table::Log, b"a"), Some(b"log".to_vec()));
    }

    /// Checks the readers' committed marks stay within `heads_cached_max`:
    /// the map is emptied after a commit that grew it past the bound, and
    /// marks load again, correct, from the engine.
    #[tokio::test(flavor = "current_thread")]
    async fn committed_marks_are_bounded() {
        let config = StoreConfig {
            heads_cached_max: 2,
            ..StoreConfig::default()
        };
        let store = LogStore::start_in_task(Arc::new(MemoryEngine::default()), config);
        let mut heads = Vec::new();
        for user in 1..=5 {
            for n in 0..user {
                let a = store
                    .exec(move |c, tx| c.append_event(tx, user, n as i64, flags("x")))
                    .await
                    .unwrap();
                assert_eq!(a.prev_seq, heads_of(&heads, user), "follows the last");
                heads.retain(|(u, _)| *u != user);
                heads.push((user, a.events[0].seq));
            }
            let cached = store.shared.logs.lock().unwrap().len();
            assert!(cached <= 2, "{cached} marks kept after user {user}");
        }
        for &(user, head) in &heads {
            assert_eq!(store.log_head(user).await.unwrap(), head);
            let log = store
                .read_log(user, LogFrom::Oldest, 10, 1 << 20)
                .await
                .unwrap();
            assert_eq!(log.events.len(), user as usize);
        }
    }

    /// A trim point as written: its Meta key and value.
    type Point = (Vec<u8>, Vec<u8>);

    /// The memory engine, with its apply and its sync made as slow as a
    /// test asks, the most deletions one apply carried, and the trims it
    /// was told of (user, through, whether that trim point had been
    /// applied and synced by then).
    #[derive(Default)]
    struct Sluggish {
        inner: MemoryEngine,
        apply_ms: AtomicU64,
        sync_ms: AtomicU64,
        most_deletes: AtomicU64,
        /// Trim points written: (applied, not yet synced; synced).
        points: Mutex<(Vec<Point>, std::collections::HashSet<Point>)>,
        trims: Mutex<Vec<(UserId, u64, bool)>>,
    }

    impl Engine for Sluggish {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(table, key)
        }

        fn scan(
            &self,
            table: Table,
            start: &[u8],
            end: &[u8],
            reverse: bool,
            limit: usize,
        ) -> Result<Entries, StoreError> {
            self.inner.scan(table, start, end, reverse, limit)
        }

        fn apply(&self, ops: &mut Vec<Op>) -> Result<(), StoreError> {
            let ms = self.apply_ms.load(Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let deletes = ops.iter().filter(|op| matches!(op, Op::Delete(..))).count();
            self.most_deletes
                .fetch_max(deletes as u64, Ordering::Relaxed);
            let (start, end) = keys::trimmed_range();
            self.points
                .lock()
                .unwrap()
                .0
                .extend(ops.iter().filter_map(|op| match op {
                    Op::Put(Table::Meta, k, v)
                        if (start.as_slice()..end.as_slice()).contains(&k.as_slice()) =>
                    {
                        Some((k.clone(), v.clone()))
                    }
                    _ => None,
                }));
            self.inner.apply(ops)
        }

        fn sync(&self) -> Result<(), StoreError> {
            let ms = self.sync_ms.load(Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let mut points = self.points.lock().unwrap();
            let (applied, synced) = &mut *points;
            synced.extend(applied.drain(..));
            drop(points);
            self.inner.sync()
        }

        fn log_trimmed(&self, user: UserId, through: u64) {
            let point = (keys::trimmed(user), keys::u64_value(through));
            let durable = self.points.lock().unwrap().1.contains(&point);
            self.trims.lock().unwrap().push((user, through, durable));
            self.inner.log_trimmed(user, through);
        }
    }

    /// Checks the committer counts a group commit whose sync took
    /// [`SLOW_SYNC`] or longer, and only the sync: a slow apply before a
    /// fast sync is not the disk's stall.
    #[tokio::test(flavor = "current_thread")]
    async fn slow_syncs_are_counted() {
        let engine = Arc::new(Sluggish::default());
        let store = LogStore::start_in_task(engine.clone(), StoreConfig::default());
        let slow_ms = SLOW_SYNC.as_millis() as u64 + 20;
        let mut n = 0;
        let mut append = async |store: &LogStore| {
            n += 1;
            store
                .exec(move |c, tx| c.append_event(tx, 7, n, flags("x")))
                .await
                .unwrap();
        };
        append(&store).await;
        assert_eq!(store.stats().slow_syncs.load(Ordering::Relaxed), 0);

        engine.apply_ms.store(slow_ms, Ordering::Relaxed);
        append(&store).await;
        assert_eq!(
            store.stats().slow_syncs.load(Ordering::Relaxed),
            0,
            "a slow apply is not a slow sync"
        );

        engine.apply_ms.store(0, Ordering::Relaxed);
        engine.sync_ms.store(slow_ms, Ordering::Relaxed);
        append(&store).await;
        append(&store).await;
        assert_eq!(store.stats().slow_syncs.load(Ordering::Relaxed), 2);
        assert_eq!(store.stats().commits.load(Ordering::Relaxed), 4);
    }

    /// Checks slow syncs are all counted but logged at most once per
    /// [`SLOW_SYNC_WARN_EVERY`], the next warning carrying how many were
    /// not logged in between.
    #[test]
    fn slow_sync_warnings_are_spaced() {
        let stats = StoreStats::default();
        let mut slow = SlowSyncs::default();
        let fast = SLOW_SYNC - std::time::Duration::from_millis(1);
        let apply = std::time::Duration::ZERO;
        slow.note(&stats, fast, apply, 3);
        assert_eq!(stats.slow_syncs.load(Ordering::Relaxed), 0);
        assert!(slow.warned_at.is_none(), "a fast sync is not logged");

        slow.note(&stats, SLOW_SYNC, apply, 3);
        let first = slow.warned_at.expect("the first slow sync is logged");
        assert_eq!(slow.unlogged, 0);

        slow.note(&stats, SLOW_SYNC, apply, 3);
        slow.note(&stats, SLOW_SYNC, apply, 3);
        assert_eq!(slow.warned_at, Some(first), "not logged again so soon");
        assert_eq!(slow.unlogged, 2);

        // As if the last warning were older than the interval.
        slow.warned_at = first.checked_sub(SLOW_SYNC_WARN_EVERY);
        slow.note(&stats, SLOW_SYNC, apply, 3);
        assert!(slow.warned_at.unwrap() > first, "logged again");
        assert_eq!(slow.unlogged, 0, "the warning took the count with it");
        assert_eq!(stats.slow_syncs.load(Ordering::Relaxed), 4);
    }

    fn heads_of(heads: &[(UserId, u64)], user: UserId) -> u64 {
        heads
            .iter()
            .find(|(u, _)| *u == user)
            .map_or(0, |(_, h)| *h)
    }

    /// Checks a job that appended and then failed leaves nothing behind in
    /// its batch: not its events, not its log head, so the next job's
    /// events in the same batch follow the last committed event, and what
    /// is published names only what was committed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_job_rolls_back_its_log_heads() {
        let store =
            LogStore::start_in_task(Arc::new(MemoryEngine::default()), StoreConfig::default());
        let first = store
            .exec(|c, tx| c.append_event(tx, 7, 1, flags("a")))
            .await
            .unwrap();
        // Both queued before the committer runs: one batch.
        let failing = store.exec(|c, tx| {
            c.append_event(tx, 7, 2, flags("lost"))?;
            c.append_event(tx, 8, 2, flags("lost"))?;
            Err::<(), _>(refused(pigeon_core::CoreError::Forbidden("no".into())))
        });
        let next = store.exec(|c, tx| c.append_event(tx, 7, 3, flags("b")));
        let (failed, next) = tokio::join!(failing, next);
        assert!(matches!(failed, Err(StoreError::Refused(_))));
        let next = next.unwrap();
        let head = first.events[0].seq;
        assert_eq!(
            next.prev_seq, head,
            "the next event follows the committed one"
        );
        let log = store
            .read_log(7, LogFrom::Oldest, 10, 1 << 20)
            .await
            .unwrap();
        let names: Vec<&str> = log
            .events
            .iter()
            .map(|e| match &e.kind {
                Some(event::Kind::FlagsChanged(f)) => f.enabled[0].as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.log_head(7).await.unwrap(), next.events[0].seq);
        assert_eq!(
            store.log_head(8).await.unwrap(),
            0,
            "the failed job's log stays empty"
        );
    }

    /// How many entries `user`'s log holds in the engine.
    fn log_len(engine: &dyn Engine, user: UserId) -> usize {
        engine
            .scan(
                Table::Log,
                &keys::log(user, 0),
                &keys::log(user, u64::MAX),
                false,
                usize::MAX,
            )
            .unwrap()
            .len()
    }

    /// Checks a log is trimmed in short runs: it never holds more than
    /// [`TRIM_RUN_MAX`] events beyond its retention, however large the
    /// retention (an eighth of it would be 500 here), and no commit writes
    /// a tombstone for it (the engine drops what the trim point covers).
    #[tokio::test(flavor = "current_thread")]
    async fn logs_trim_in_short_runs() {
        let retain = 4000;
        let engine = Arc::new(Sluggish::default());
        let config = StoreConfig {
            log_retain_events: retain,
            ..StoreConfig::default()
        };
        let store = LogStore::start_in_task(engine.clone(), config);
        let mut longest = 0;
        for job in 0..60 {
            store
                .exec(move |c, tx| {
                    for n in 0..100 {
                        c.append_event(tx, 7, job * 100 + n, flags("x"))?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            longest = longest.max(log_len(&*engine, 7));
        }
        let len = log_len(&*engine, 7) as u64;
        assert!((retain..=retain + TRIM_RUN_MAX).contains(&len), "{len}");
        assert!(longest as u64 <= retain + TRIM_RUN_MAX, "{longest}");
        assert_eq!(
            engine.most_deletes.load(Ordering::Relaxed),
            0,
            "the engine drops what a trim point covers; commits write no tombstones"
        );
        let log = store.read_log(7, LogFrom::After(1), 10, 1 << 20).await;
        let oldest = 6000 - len;
        assert!(
            matches!(log, Err(LogReadError::Trimmed { trimmed_through }) if trimmed_through == oldest),
            "{log:?}: the trimmed part answers resync"
        );
    }

    /// Checks a start hands the engine the trim points already on the
    /// disk, so that compactions drop what they cover without waiting for
    /// each log to trim again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_start_hands_over_the_trim_points_on_the_disk() {
        let engine = Arc::new(Sluggish::default());
        let mut ops = vec![
            Op::Put(Table::Meta, keys::trimmed(5), keys::u64_value(40)),
            Op::Put(Table::Meta, keys::trimmed(61), keys::u64_value(7)),
            Op::Put(Table::Meta, b"trim0".to_vec(), keys::u64_value(9)),
        ];
        engine.apply(&mut ops).unwrap();
        engine.sync().unwrap();
        let store = LogStore::start_in_task(engine.clone(), StoreConfig::default());
        let mut trims = engine.trims.lock().unwrap().clone();
        trims.sort();
        assert_eq!(trims, vec![(5, 40, true), (61, 7, true)]);
        store.shutdown().await;
    }

    /// Checks a trim reaches the engine only once the commit that wrote
    /// its point is durable, and not at all from a job that failed: the
    /// embedded engine's compactions drop what a trim point covers, so a
    /// point a crash or a rollback takes back must never get there.
    #[tokio::test(flavor = "current_thread")]
    async fn trims_reach_the_engine_only_when_durable() {
        let engine = Arc::new(Sluggish::default());
        let config = StoreConfig {
            log_retain_events: 10,
            ..StoreConfig::default()
        };
        let store = LogStore::start_in_task(engine.clone(), config);
        let failed = store
            .exec(|c, tx| {
                for n in 0..300 {
                    c.append_event(tx, 1, n, flags("x"))?;
                }
                Err::<(), _>(StoreError::Io("this job fails".into()))
            })
            .await;
        assert!(failed.is_err());
        assert!(
            engine.trims.lock().unwrap().is_empty(),
            "a failed job's trims"
        );
        store
            .exec(|c, tx| {
                for n in 0..300 {
                    c.append_event(tx, 2, n, flags("x"))?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let trims = engine.trims.lock().unwrap().clone();
        assert!(!trims.is_empty());
        assert!(
            trims.iter().all(|&(user, _, durable)| user == 2 && durable),
            "{trims:?}"
        );
        let newest = trims.iter().map(|&(_, through, _)| through).max().unwrap();
        assert!(newest >= 300 - 10 - 1, "{newest}");
        assert_eq!(log_len(&*engine, 1), 0, "the failed job wrote nothing");
        assert_eq!(log_len(&*engine, 2) as u64, 300 - newest);
        assert_eq!(
            engine.most_deletes.load(Ordering::Relaxed),
            0,
            "no tombstones"
        );
    }
}
