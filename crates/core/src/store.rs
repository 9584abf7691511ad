//! The storage interface the domain needs. Backends live in `pigeon-store`;
//! they own seq allocation, group commit and the visibility rule: an event
//! or message becomes readable only once it is durable, and one user's
//! events become readable strictly in seq order.

use async_trait::async_trait;
use pigeon_proto::v1::{Content, ConversationSummary, Event, Message};
use serde::{Deserialize, Serialize};

use crate::{DeviceId, UserId};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The username is registered already.
    #[error("username is taken")]
    UsernameTaken,
    /// No such session.
    #[error("session not found")]
    SessionNotFound,
    /// The store is closed or failed and accepts no more writes.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Too many writes are queued; retry later.
    #[error("store overloaded")]
    Overloaded,
    /// The engine reported an I/O error.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Stored bytes could not be decoded (a bug or corruption).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's id.
    pub id: UserId,
    /// The unique username.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// When the account was created, Unix ms.
    pub created_at_ms: i64,
}

/// A logged-in device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Whose session.
    pub user_id: UserId,
    /// The device created at login.
    pub device_id: DeviceId,
    /// Free text from the login.
    pub device_name: String,
    /// Login time, Unix ms.
    pub created_at_ms: i64,
    /// Refused after this time, Unix ms.
    pub expires_at_ms: i64,
    /// Set by logout.
    pub revoked: bool,
}

/// A session to create; the store allocates the device id.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Whose session.
    pub user_id: UserId,
    /// Free text from the login.
    pub device_name: String,
    /// Login time, Unix ms.
    pub created_at_ms: i64,
    /// Refused after this time, Unix ms.
    pub expires_at_ms: i64,
}

/// A message to store, idempotently on `(sender_id, client_msg_id)`.
#[derive(Debug, Clone)]
pub struct AppendMessage {
    /// The sender.
    pub sender_id: UserId,
    /// The sender's username (denormalised into the message).
    pub sender_username: String,
    /// The sending device.
    pub sender_device_id: DeviceId,
    /// The client's id for this message.
    pub client_msg_id: String,
    /// The conversation.
    pub conversation_id: String,
    /// Everyone whose sync log gets the message (sender included), with
    /// their usernames, in no particular order.
    pub participants: Vec<(UserId, String)>,
    /// What the message carries.
    pub content: Content,
    /// Acceptance time, Unix ms.
    pub now_ms: i64,
}

/// Events newly appended to one user's log by a write.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Whose log.
    pub user_id: UserId,
    /// The last committed seq of the log before these events (0: none).
    pub prev_seq: u64,
    /// The events, in seq order.
    pub events: Vec<Event>,
}

/// The result of [`Store::append_message`].
#[derive(Debug, Clone)]
pub struct AppendOutcome {
    /// The stored message (the original one for a duplicate).
    pub conversation_id: String,
    /// Its position in the conversation.
    pub conv_seq: u64,
    /// When it was first accepted, Unix ms.
    pub sent_at_ms: i64,
    /// True if the client id was seen before and nothing was stored.
    pub duplicate: bool,
    /// The new log events, per user (empty for a duplicate).
    pub appended: Vec<Appended>,
}

/// The result of [`Store::read_log`].
#[derive(Debug, Clone)]
pub struct LogRead {
    /// Events after the requested seq, in order.
    pub events: Vec<Event>,
    /// More committed events follow the last one returned.
    pub has_more: bool,
}

/// The result of [`Store::mark_read`].
#[derive(Debug, Clone)]
pub struct MarkReadOutcome {
    /// The read position after the call.
    pub read_up_to: u64,
    /// Unread messages after the call.
    pub unread_count: u64,
    /// The ReadMarker event, if the position moved.
    pub appended: Option<Appended>,
}

/// Durable state behind the domain. Every write is durable before its
/// future resolves.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account; fails with [`StoreError::UsernameTaken`].
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<UserRecord, StoreError>;
    /// Looks up an account by username.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Looks up an account by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Creates a session and a new device for it.
    async fn create_session(&self, session: NewSession) -> Result<SessionRecord, StoreError>;
    /// Looks up a session by token hash.
    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Marks a session revoked.
    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError>;
    /// Stores a message in its conversation and appends it to every
    /// participant's log; a repeated `(sender, client_msg_id)` returns the
    /// first outcome with `duplicate` set and stores nothing.
    async fn append_message(&self, msg: AppendMessage) -> Result<AppendOutcome, StoreError>;
    /// Committed events of `user` with seq > `after`, at most `limit` and
    /// about `bytes_max` encoded bytes (always at least one if any).
    /// Fails with [`LogReadError::Trimmed`] if events after `after` were
    /// trimmed away.
    async fn read_log(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<LogRead, LogReadError>;
    /// The seq of the newest committed event of `user` (0: none).
    async fn log_head(&self, user: UserId) -> Result<u64, StoreError>;
    /// Committed messages of a conversation with conv_seq < `before`
    /// (0: from the newest), newest first, at most `limit` and about
    /// `bytes_max` encoded bytes (always at least one if any); and whether
    /// older ones exist.
    async fn history(
        &self,
        conversation_id: &str,
        before: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<(Vec<Message>, bool), StoreError>;
    /// The user's conversations, most recently active first.
    async fn list_conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError>;
    /// One conversation's summary for a user, if the user has it.
    async fn conversation(
        &self,
        user: UserId,
        conversation_id: &str,
    ) -> Result<Option<ConversationSummary>, StoreError>;
    /// Moves the user's read position (never backwards, never past the last
    /// message) and appends a ReadMarker event to their log if it moved.
    async fn mark_read(
        &self,
        user: UserId,
        conversation_id: &str,
        read_up_to: u64,
        now_ms: i64,
    ) -> Result<MarkReadOutcome, StoreError>;
    /// A random secret of 32 bytes stored under `name`, created on first use.
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError>;
}

/// Why [`Store::read_log`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    /// Events after the requested seq have been trimmed away.
    #[error("log trimmed through seq {trimmed_through}")]
    Trimmed {
        /// The highest trimmed seq.
        trimmed_through: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Content size as counted against the message limit.
pub fn content_bytes(c: &Content) -> usize {
    c.text.len() + c.payload.len() + c.payload_type.len()
}

/// A conversation summary starts unread-free with no message.
pub fn empty_summary(
    conversation_id: &str,
    peer_user_id: UserId,
    peer_username: &str,
) -> ConversationSummary {
    ConversationSummary {
        conversation_id: conversation_id.to_string(),
        peer_user_id,
        peer_username: peer_username.to_string(),
        last_message: None,
        unread_count: 0,
        read_up_to: 0,
    }
}
