//! The PostgreSQL backend of `pigeon_core::Store`, for cluster mode: several
//! `pigeon` nodes, each with its own [`PgStore`], on one database.
//!
//! Layout:
//! - this file: [`PgStore`], its settings, the pool, the transaction
//!   machinery (retry on deadlock) and the `Store` impl that delegates;
//! - [`migrate`]: the embedded schema migrations, applied at start under an
//!   advisory lock;
//! - `tx.rs`: [`tx::W`], a write transaction with buffered log appends and
//!   the sequencing rule (below);
//! - `batch.rs`: group commit: the node's batcher, which writes the sends
//!   and delivery records in flight as one transaction per commit cycle;
//! - `messages.rs`: read marks, receipts, message changes, blocks;
//! - `groups.rs`: group changes and membership windows;
//! - `reads.rs`: everything that only reads.
//!
//! # Sequencing across nodes
//!
//! Every write is one PostgreSQL transaction: its own, or, for sends and
//! delivery records, the batch its node's batcher commits them in
//! (`batch.rs`, which keeps every rule below for the whole batch). A
//! user's log has one row in
//! `logs` whose `head` is both the newest seq and the allocator: a writer
//! appends `n` events by `head = head + n` inside its transaction, for all
//! the users it writes to in one statement that locks their rows in
//! ascending user id order, as the last lock it takes (see `tx.rs`). The
//! row lock is held until COMMIT, so a second writer to the same log waits
//! until the first has committed (or rolled back, which also undoes its
//! `head`); therefore seqs are handed out without gaps or reuse, and the
//! commit order of a user's events is their seq order, so a reader (whose
//! every statement sees a snapshot of committed transactions) can never see
//! seq N+1 without N. Conversation timelines (`conversations.head`) and the
//! shared stream of large groups (`counters` row `stream`) use the same
//! rule. Deadlocks between writers that lock rows in other orders (group,
//! conversation, message rows) are detected by PostgreSQL, and the
//! transaction is retried from the start ([`TX_ATTEMPTS_MAX`]).
//!
//! Idempotency: a send first inserts `(sender, client_msg_id)` into `sends`
//! (`ON CONFLICT DO NOTHING`); a concurrent retry on any node waits on that
//! unique key until the first commits, then reads its outcome and returns
//! it as a duplicate (a retry queued in the same batch as its first try
//! waits for the next batch). An answer is given only after COMMIT returned, which
//! with `synchronous_commit` on (PostgreSQL's default, which operators must
//! keep) means the commit record is flushed.

pub mod migrate;

mod groups;
mod messages;
mod reads;
mod tx;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pigeon_core::store::{
    AppendMessage, AppendOutcome, Appended, ChangeOutcome, Delivered, Delivery, GroupOp,
    GroupOutcome, GroupRecord, HistoryQuery, LogFrom, LogRead, LogReadError, MarkReadOutcome,
    MemberRecord, MessageChange, NewSession, ReadMark, SessionRecord, StreamRead, Totals,
    UserChange, UserPrefs, UserRecord,
};
use pigeon_core::{CoreError, Store, StoreError, UserId};
use pigeon_proto::v1::{ConversationSummary, Message, ReceiptSummary};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use batch::{BATCH_JOBS_MAX, BATCH_QUEUE_JOBS_MAX};
pub use messages::{RECEIPT_SCAN_MAX, UNREAD_COUNT_MAX, notable};
pub use migrate::MIGRATIONS;
pub use reads::{CONVERSATIONS_SCAN_MAX, FAILED_SCAN_MAX};
pub use tx::TRIM_DELETES_PER_TX_MAX;

/// Attempts at a write transaction that PostgreSQL aborted as a deadlock
/// victim or serialization failure.
pub const TX_ATTEMPTS_MAX: u32 = 8;
/// How long a caller waits for a pooled connection.
pub const POOL_WAIT_SECS: u64 = 10;
/// Write transactions committed (a retry counts once more).
pub const PG_TRANSACTIONS_TOTAL: &str = "pigeon_store_pg_transactions_total";
/// Write transactions retried after a deadlock or serialization failure.
pub const PG_RETRIES_TOTAL: &str = "pigeon_store_pg_retries_total";
/// Time to run and commit one write transaction.
pub const PG_TRANSACTION_SECONDS: &str = "pigeon_store_pg_transaction_seconds";
/// Jobs (sends, delivery records) per batch transaction (a histogram; see
/// `batch.rs`).
pub const PG_BATCH_JOBS: &str = "pigeon_store_pg_batch_jobs";

/// Settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Connections in this node's pool.
    pub pool_size: usize,
    /// Events each user's log keeps (older ones are trimmed; a device whose
    /// key is older must resync). 0 keeps everything.
    pub log_retain_events: u64,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            pool_size: 16,
            log_retain_events: 100_000,
        }
    }
}

/// Counters of this node's store, for the admin statistics.
#[derive(Debug, Default)]
pub struct PgStats {
    /// Write transactions committed (a batch counts once).
    pub commits: AtomicU64,
    /// Write transactions retried.
    pub retries: AtomicU64,
    /// Batches of sends and delivery records committed (each one of the
    /// `commits`).
    pub batches: AtomicU64,
    /// Jobs those batches answered (duplicates and refusals included).
    pub batched_jobs: AtomicU64,
}

impl PgStats {
    /// Writes answered after a commit: every transaction but the batches
    /// counts once, and each batch counts its jobs.
    pub fn writes(&self) -> u64 {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        (self.commits.load(relaxed) + self.batched_jobs.load(relaxed))
            .saturating_sub(self.batches.load(relaxed))
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    shared: Arc<Shared>,
    /// The queue of this node's batcher of sends and delivery records
    /// (`batch.rs`).
    batcher: tokio::sync::mpsc::Sender<batch::Request>,
}

/// What the store's callers and its batcher share.
pub(crate) struct Shared {
    pool: Pool,
    config: PgConfig,
    stats: PgStats,
}

impl Shared {
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// What can go wrong inside the store, before it becomes a [`StoreError`].
#[derive(Debug)]
pub(crate) enum Error {
    /// PostgreSQL answered with an error (or the connection failed).
    Db(tokio_postgres::Error),
    /// No connection could be had.
    Pool(deadpool_postgres::PoolError),
    /// A rule or a record said no.
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Error::Pool(e)
    }
}

impl Error {
    /// A deadlock victim or serialization failure: run the transaction
    /// again.
    fn retryable(&self) -> bool {
        match self {
            Error::Db(e) => matches!(
                e.code(),
                Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            ),
            _ => false,
        }
    }

    pub(crate) fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Db(e) => e.code(),
            _ => None,
        }
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e) => e,
            Error::Pool(e) => StoreError::Unavailable(format!("database: {e}")),
            Error::Db(e) if e.is_closed() || e.as_db_error().is_none() => {
                StoreError::Unavailable(format!("database: {e}"))
            }
            Error::Db(e) => StoreError::Io(format!(
                "database: {}",
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.to_string())
            )),
        }
    }
}

impl From<Error> for LogReadError {
    fn from(e: Error) -> Self {
        LogReadError::Store(e.into())
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// A rule refused the write.
pub(crate) fn refused(e: CoreError) -> Error {
    Error::Store(StoreError::Refused(Box::new(e)))
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::Corrupt(format!("{what}: {e}")))
}

/// A u64 id or seq as a BIGINT (saturating: nothing stored reaches 2^63,
/// and a bound above every stored value stays above them).
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A BIGINT column as a u64 (stored values are never negative).
pub(crate) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Runs `$body` (an expression using `$w`, a [`tx::W`]) in a write
/// transaction on `$store` (a [`Shared`]) and commits it; retries from the
/// start when PostgreSQL chose it as a deadlock victim.
macro_rules! write_tx {
    ($store:expr, |$w:ident| $body:expr) => {{
        let store: &$crate::Shared = $store;
        let mut attempt = 1u32;
        loop {
            let started = std::time::Instant::now();
            let result: $crate::Result<_> = async {
                let mut client = store.client().await?;
                let tx = client.transaction().await?;
                let value = {
                    #[allow(unused_mut)]
                    let mut $w = $crate::tx::W::new(&tx, store.config.log_retain_events);
                    let value = $body;
                    $w.assert_flushed();
                    value
                };
                tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Err(e) if e.retryable() && attempt < $crate::TX_ATTEMPTS_MAX => {
                    attempt += 1;
                    store
                        .stats
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!($crate::PG_RETRIES_TOTAL).increment(1);
                    // A little jitter so the same two do not collide again.
                    let pause = rand::random_range(1..=10 * u64::from(attempt));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Ok(v) => {
                    store
                        .stats
                        .commits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!($crate::PG_TRANSACTIONS_TOTAL).increment(1);
                    metrics::histogram!($crate::PG_TRANSACTION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    break Ok(v);
                }
                Err(e) => break Err(StoreError::from(e)),
            }
        }
    }};
}

// Declared after `write_tx!`, which it uses.
mod batch;

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`),
    /// applies pending migrations and returns the store.
    pub async fn connect(url: &str, config: PgConfig) -> Result<PgStore, StoreError> {
        let pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad database URL: {e}")))?;
        migrate::run(&pg).await?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(POOL_WAIT_SECS)))
            .create_timeout(Some(Duration::from_secs(POOL_WAIT_SECS)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("database pool: {e}")))?;
        let shared = Arc::new(Shared {
            pool,
            config,
            stats: PgStats::default(),
        });
        let store = PgStore {
            batcher: batch::start(shared.clone()),
            shared,
        };
        store.ping().await?;
        Ok(store)
    }

    /// This node's counters.
    pub fn stats(&self) -> &PgStats {
        &self.shared.stats
    }

    /// Whether the database answers a trivial query now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(Error::from)?;
        Ok(())
    }

    /// Closes the pool: later calls fail with [`StoreError::Unavailable`].
    /// Every acknowledged write is committed already.
    pub fn shutdown(&self) {
        self.shared.pool.close();
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.shared.client().await
    }
}

fn user_row(r: &tokio_postgres::Row) -> UserRecord {
    UserRecord {
        id: u(r.get("id")),
        username: r.get("username"),
        password_hash: r.get("password_hash"),
        created_at_ms: r.get("created_at_ms"),
        disabled: r.get("disabled"),
    }
}

fn session_row(r: &tokio_postgres::Row) -> SessionRecord {
    SessionRecord {
        token_hash: r.get("token_hash"),
        user_id: u(r.get("user_id")),
        device_id: u(r.get("device_id")),
        device_name: r.get("device_name"),
        created_at_ms: r.get("created_at_ms"),
        expires_at_ms: r.get("expires_at_ms"),
        revoked: r.get("revoked"),
    }
}

const USER_COLUMNS: &str = "id, username, password_hash, created_at_ms, disabled";
const SESSION_COLUMNS: &str =
    "token_hash, user_id, device_id, device_name, created_at_ms, expires_at_ms, revoked";

#[async_trait]
impl Store for PgStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<UserRecord, StoreError> {
        write_tx!(&self.shared, |w| {
            if w.opt("SELECT 1 FROM users WHERE username = $1", &[&username])
                .await?
                .is_some()
            {
                return Err(Error::Store(StoreError::UsernameTaken));
            }
            let id: i64 = w
                .one(
                    "UPDATE counters SET value = value + 1 WHERE name = 'user' RETURNING value",
                    &[],
                )
                .await?
                .get(0);
            let inserted = w
                .exec(
                    "INSERT INTO users (id, username, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)",
                    &[&id, &username, &password_hash, &now_ms],
                )
                .await;
            match inserted {
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(Error::Store(StoreError::UsernameTaken));
                }
                other => other?,
            };
            UserRecord {
                id: u(id),
                username: username.to_string(),
                password_hash: password_hash.to_string(),
                created_at_ms: now_ms,
                disabled: false,
            }
        })
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        Ok(reads::opt(self, &sql, &[&username])
            .await?
            .as_ref()
            .map(user_row))
    }

    async fn users_by_name(
        &self,
        usernames: &[String],
    ) -> Result<Vec<Option<UserRecord>>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ANY($1)");
        let rows = reads::query(self, &sql, &[&usernames]).await?;
        let found: std::collections::HashMap<String, UserRecord> = rows
            .iter()
            .map(|r| {
                let user = user_row(r);
                (user.username.clone(), user)
            })
            .collect();
        Ok(usernames.iter().map(|n| found.get(n).cloned()).collect())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        Ok(reads::opt(self, &sql, &[&i(id)])
            .await?
            .as_ref()
            .map(user_row))
    }

    async fn create_session(&self, s: NewSession) -> Result<SessionRecord, StoreError> {
        write_tx!(&self.shared, |w| {
            // Shares the row lock an administrator's disable takes, so a
            // login racing a disable cannot slip through.
            let disabled = w
                .opt(
                    "SELECT disabled FROM users WHERE id = $1 FOR SHARE",
                    &[&i(s.user_id)],
                )
                .await?
                .is_some_and(|r| r.get::<_, bool>(0));
            if disabled {
                return Err(refused(CoreError::AccountDisabled));
            }
            let device: i64 = w
                .one(
                    "INSERT INTO devices (user_id, last) VALUES ($1, 1) \
                     ON CONFLICT (user_id) DO UPDATE SET last = devices.last + 1 RETURNING last",
                    &[&i(s.user_id)],
                )
                .await?
                .get(0);
            w.exec(
                "INSERT INTO sessions (token_hash, user_id, device_id, device_name, created_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&s.token_hash, &i(s.user_id), &device, &s.device_name, &s.created_at_ms, &s.expires_at_ms],
            )
            .await?;
            SessionRecord {
                token_hash: s.token_hash.clone(),
                user_id: s.user_id,
                device_id: u(device),
                device_name: s.device_name.clone(),
                created_at_ms: s.created_at_ms,
                expires_at_ms: s.expires_at_ms,
                revoked: false,
            }
        })
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1");
        Ok(reads::opt(self, &sql, &[&token_hash])
            .await?
            .as_ref()
            .map(session_row))
    }

    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        write_tx!(&self.shared, |w| {
            let n = w
                .exec(
                    "UPDATE sessions SET revoked = TRUE WHERE token_hash = $1",
                    &[&token_hash],
                )
                .await?;
            if n == 0 {
                return Err(Error::Store(StoreError::SessionNotFound));
            }
        })
    }

    async fn append_message(&self, msg: AppendMessage) -> Result<AppendOutcome, StoreError> {
        match batch::submit(&self.batcher, batch::Job::Send(msg)).await? {
            batch::Done::Sent(outcome) => Ok(outcome),
            batch::Done::Delivered(_) => unreachable!("a send's answer"),
        }
    }

    async fn read_log(
        &self,
        user: UserId,
        from: LogFrom,
        limit: usize,
        bytes_max: usize,
    ) -> Result<LogRead, LogReadError> {
        reads::read_log(self, user, from, limit, bytes_max).await
    }

    async fn log_head(&self, user: UserId) -> Result<u64, StoreError> {
        Ok(reads::log_mark(self, user).await?.0)
    }

    async fn history(&self, query: HistoryQuery) -> Result<(Vec<Message>, bool), StoreError> {
        Ok(reads::history(self, &query).await?)
    }

    async fn group_op(&self, op: GroupOp) -> Result<GroupOutcome, StoreError> {
        write_tx!(&self.shared, |w| w.group_op(&op).await?)
    }

    async fn group(&self, group_id: u64) -> Result<Option<GroupRecord>, StoreError> {
        let client = self.client().await?;
        Ok(groups::group(&client, group_id, groups::Lock::None).await?)
    }

    async fn member(
        &self,
        group_id: u64,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        let client = self.client().await?;
        Ok(groups::member(&client, group_id, user).await?)
    }

    async fn list_members(
        &self,
        group_id: u64,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<MemberRecord>, bool), StoreError> {
        Ok(reads::list_members(self, group_id, after, limit).await?)
    }

    async fn read_streams(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<StreamRead, StoreError> {
        Ok(reads::read_streams(self, user, after, limit, bytes_max).await?)
    }

    async fn list_conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        Ok(reads::list_conversations(self, user, limit).await?)
    }

    async fn conversation(
        &self,
        user: UserId,
        conversation_id: &str,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        Ok(reads::conversation(self, user, conversation_id).await?)
    }

    async fn mark_read(&self, mark: ReadMark) -> Result<MarkReadOutcome, StoreError> {
        write_tx!(&self.shared, |w| w.mark_read(&mark).await?)
    }

    async fn record_delivered(
        &self,
        user: UserId,
        username: &str,
        marks: Vec<Delivered>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let job = batch::Job::Delivered {
            user,
            username: username.to_string(),
            marks,
            now_ms,
        };
        match batch::submit(&self.batcher, job).await? {
            batch::Done::Delivered(appended) => Ok(appended),
            batch::Done::Sent(_) => unreachable!("a delivery record's answer"),
        }
    }

    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> Result<bool, StoreError> {
        Ok(reads::opt(
            self,
            "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
            &[&i(blocker), &i(blocked)],
        )
        .await?
        .is_some())
    }

    async fn set_blocked(
        &self,
        blocker: UserId,
        blocked: (UserId, String),
        block: bool,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        write_tx!(&self.shared, |w| w
            .set_blocked(blocker, &blocked, block, now_ms)
            .await?)
    }

    async fn blocked_users(
        &self,
        blocker: UserId,
        limit: usize,
    ) -> Result<Vec<UserId>, StoreError> {
        let rows = reads::query(
            self,
            "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked LIMIT $2",
            &[&i(blocker), &(limit as i64)],
        )
        .await?;
        Ok(rows.iter().map(|r| u(r.get(0))).collect())
    }

    async fn change_message(&self, change: MessageChange) -> Result<ChangeOutcome, StoreError> {
        write_tx!(&self.shared, |w| w.change_message(&change).await?)
    }

    async fn receipt_counts(
        &self,
        conversation_id: &str,
        conv_seqs: &[u64],
    ) -> Result<Vec<ReceiptSummary>, StoreError> {
        Ok(reads::receipt_counts(self, conversation_id, conv_seqs).await?)
    }

    async fn prefs(&self, user: UserId) -> Result<UserPrefs, StoreError> {
        let row = reads::opt(
            self,
            "SELECT hide_presence, last_seen_ms FROM prefs WHERE user_id = $1",
            &[&i(user)],
        )
        .await?;
        Ok(row.map_or_else(UserPrefs::default, |r| UserPrefs {
            hide_presence: r.get(0),
            last_seen_ms: r.get(1),
        }))
    }

    async fn set_prefs(&self, user: UserId, prefs: UserPrefs) -> Result<(), StoreError> {
        write_tx!(&self.shared, |w| {
            w.exec(
                "INSERT INTO prefs (user_id, hide_presence, last_seen_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET hide_presence = $2, last_seen_ms = $3",
                &[&i(user), &prefs.hide_presence, &prefs.last_seen_ms],
            )
            .await?;
        })
    }

    async fn contacts(&self, user: UserId, limit: usize) -> Result<Vec<UserId>, StoreError> {
        Ok(reads::contacts(self, user, limit).await?)
    }

    async fn shares_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        Ok(reads::shares_conversation(self, a, b).await?)
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let mut fresh = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut fresh);
        let client = self.client().await?;
        // The first node to insert wins; everyone reads the winner's.
        client
            .execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &&fresh[..]],
            )
            .await
            .map_err(Error::from)?;
        let row = client
            .query_one("SELECT value FROM secrets WHERE name = $1", &[&name])
            .await
            .map_err(Error::from)?;
        let v: Vec<u8> = row.get(0);
        v.as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("secret: wrong length".into()))
    }

    async fn deliveries_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        Ok(reads::deliveries_due(self, now_ms, limit).await?)
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(reads::claim_deliveries(self, now_ms, lease_ms, limit).await?)
    }

    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: Result<(), String>,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        write_tx!(&self.shared, |w| {
            match (&outcome, next_attempt_ms) {
                (Ok(()), _) => {
                    w.exec("DELETE FROM outbox WHERE id = $1", &[&i(id)])
                        .await?;
                }
                (Err(reason), Some(next)) => {
                    w.exec(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_ms = $3 \
                         WHERE id = $1",
                        &[&i(id), reason, &next],
                    )
                    .await?;
                }
                (Err(reason), None) => {
                    w.exec(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, failed = TRUE \
                         WHERE id = $1",
                        &[&i(id), reason],
                    )
                    .await?;
                }
            }
        })
    }

    async fn deliveries_pending(&self, limit: usize) -> Result<usize, StoreError> {
        let row = reads::opt(
            self,
            "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE NOT failed LIMIT $1) t",
            &[&(limit as i64)],
        )
        .await?
        .expect("count returns a row");
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn deliveries_failed(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        Ok(reads::deliveries_failed(self, limit).await?)
    }

    async fn set_flag(
        &self,
        name: &str,
        flag: Option<pigeon_core::flags::Flag>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        write_tx!(&self.shared, |w| w
            .set_flag(name, flag.as_ref(), now_ms)
            .await?)
    }

    async fn flags(&self) -> Result<Vec<pigeon_core::flags::Flag>, StoreError> {
        let rows = reads::query(
            self,
            "SELECT flag FROM flags ORDER BY name COLLATE \"C\" LIMIT $1",
            &[&(pigeon_core::flags::FLAGS_MAX as i64)],
        )
        .await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0))
                    .map_err(|e| StoreError::Corrupt(format!("flag: {e}")))
            })
            .collect()
    }

    async fn sent(
        &self,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<pigeon_core::store::SentAck>, StoreError> {
        // Committed rows only: a claim in flight is invisible until its
        // transaction commits with the real values.
        let row = reads::opt(
            self,
            "SELECT conversation_id, conv_seq, sent_at_ms FROM sends \
             WHERE sender_id = $1 AND client_msg_id = $2 AND conv_seq > 0",
            &[&i(sender), &client_msg_id],
        )
        .await?;
        Ok(row.map(|r| pigeon_core::store::SentAck {
            conversation_id: r.get(0),
            conv_seq: r.get::<_, i64>(1) as u64,
            sent_at_ms: r.get(2),
        }))
    }

    async fn message(
        &self,
        conversation_id: &str,
        conv_seq: u64,
    ) -> Result<Option<Message>, StoreError> {
        let row = reads::opt(
            self,
            "SELECT message FROM messages WHERE conversation_id = $1 AND conv_seq = $2",
            &[&conversation_id, &i(conv_seq)],
        )
        .await?;
        Ok(row.map(|r| tx::decode_message(r.get(0))).transpose()?)
    }

    async fn list_users(
        &self,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<UserRecord>, bool), StoreError> {
        if after >= i64::MAX as u64 {
            return Ok((Vec::new(), false));
        }
        let limit = limit.max(1);
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = reads::query(self, &sql, &[&i(after), &(limit as i64 + 1)]).await?;
        let more = rows.len() > limit;
        Ok((rows.iter().take(limit).map(user_row).collect(), more))
    }

    async fn update_user(
        &self,
        user: UserId,
        change: UserChange,
    ) -> Result<UserRecord, StoreError> {
        write_tx!(&self.shared, |w| {
            let (sql, param): (&str, Option<&String>) = match &change {
                UserChange::Disable => ("UPDATE users SET disabled = TRUE WHERE id = $1", None),
                UserChange::Enable => ("UPDATE users SET disabled = FALSE WHERE id = $1", None),
                UserChange::PasswordHash(h) => {
                    ("UPDATE users SET password_hash = $2 WHERE id = $1", Some(h))
                }
            };
            let sql = format!("{sql} RETURNING {USER_COLUMNS}");
            let row = match param {
                Some(h) => w.opt(&sql, &[&i(user), h]).await?,
                None => w.opt(&sql, &[&i(user)]).await?,
            };
            row.as_ref()
                .map(user_row)
                .ok_or_else(|| refused(CoreError::UserNotFound(format!("user id {user}"))))?
        })
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<(usize, bool), StoreError> {
        write_tx!(&self.shared, |w| {
            let revoked = w
                .exec(
                    "UPDATE sessions SET revoked = TRUE WHERE token_hash IN ( \
                       SELECT token_hash FROM sessions WHERE user_id = $1 AND NOT revoked \
                       ORDER BY token_hash LIMIT $2 FOR UPDATE)",
                    &[&i(user), &(limit.max(1) as i64)],
                )
                .await?;
            let more = w
                .opt(
                    "SELECT 1 FROM sessions WHERE user_id = $1 AND NOT revoked LIMIT 1",
                    &[&i(user)],
                )
                .await?
                .is_some();
            (revoked as usize, more)
        })
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        let rows = reads::query(
            self,
            "SELECT name, value FROM counters WHERE name IN ('user', 'group')",
            &[],
        )
        .await?;
        let mut t = Totals::default();
        for r in rows {
            match r.get::<_, &str>(0) {
                "user" => t.users = u(r.get(1)),
                _ => t.groups = u(r.get(1)),
            }
        }
        Ok(t)
    }
}
