//! The storage interface the domain needs. Backends live in `pigeon-store`;
//! they own seq allocation, group commit and the visibility rule: an event
//! or message becomes readable only once it is durable, and one user's
//! events become readable strictly in seq order.

use async_trait::async_trait;
use std::sync::Arc;

use pigeon_proto::v1::{
    Content, ConversationSummary, Event, GroupInfo, GroupRole, GroupSettings, Member, Message,
    ReceiptSummary,
};
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
    /// The store is shut down and accepts no more writes.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A commit failed (disk error); the store refuses writes until the
    /// process restarts and recovers.
    #[error("store failed: {0}")]
    Failed(String),
    /// Too many writes are queued; retry later.
    #[error("store overloaded")]
    Overloaded,
    /// The engine reported an I/O error.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Stored bytes could not be decoded (a bug or corruption).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A domain rule checked inside the write refused it.
    #[error("{0}")]
    Refused(Box<crate::CoreError>),
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
    /// Disabled by the administrator: no login, no token authentication.
    /// Absent in records written before accounts could be disabled.
    #[serde(default)]
    pub disabled: bool,
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
    /// For a group conversation, the group (0: direct). The store checks
    /// membership and the post policy atomically with the write.
    pub group_id: u64,
    /// For a direct conversation: everyone whose sync log gets the message
    /// (sender included), with their usernames. Ignored for groups.
    pub participants: Vec<(UserId, String)>,
    /// What the message carries.
    pub content: Content,
    /// Acceptance time, Unix ms.
    pub now_ms: i64,
    /// Webhook deliveries to queue durably with the message.
    pub hooks: Vec<HookTarget>,
}

/// A webhook endpoint that wants to hear of a kind of event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    /// The endpoint's URL (it identifies the endpoint in the outbox).
    pub endpoint: String,
    /// What it wants.
    pub kind: HookKind,
}

/// Kinds of webhook events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    /// A message was stored (for bots and integrations).
    #[serde(rename = "message.created")]
    MessageCreated,
    /// A recipient may need a push notification (the relay turns it into
    /// APNs or FCM); sent only if they have no device online at delivery.
    #[serde(rename = "push.needed")]
    PushNeeded,
}

impl HookKind {
    /// The event name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::MessageCreated => "message.created",
            HookKind::PushNeeded => "push.needed",
        }
    }
}

/// A queued webhook delivery, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Unique, increasing.
    pub id: u64,
    /// Endpoint URL.
    pub endpoint: String,
    /// What happened.
    pub kind: HookKind,
    /// The message it is about.
    pub conversation_id: String,
    /// Its position.
    pub conv_seq: u64,
    /// For push.needed: who (0: every offline member of a large group).
    pub recipient: UserId,
    /// When it was queued, Unix ms.
    pub created_at_ms: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before this time, Unix ms.
    pub next_attempt_ms: i64,
    /// pending, delivered or failed.
    pub status: DeliveryStatus,
    /// Why the last attempt failed.
    pub last_error: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// Given up after the attempt limit (kept with the reason).
    Failed,
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
    /// For a large group: its members, to be told to sync (read diffusion:
    /// nothing was written to their logs).
    pub stream_notice: Option<Arc<[UserId]>>,
}

/// The acknowledgement an earlier send was given ([`Store::sent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentAck {
    /// Where it was stored.
    pub conversation_id: String,
    /// Its position in the conversation.
    pub conv_seq: u64,
    /// When it was accepted, Unix ms.
    pub sent_at_ms: i64,
}

/// Where [`Store::read_log`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFrom {
    /// At the oldest event the log still retains: a new device (the empty
    /// sync key).
    Oldest,
    /// After this seq (0: before the first event). A position the log no
    /// longer retains fails with [`LogReadError::Trimmed`]: a device that
    /// held it would miss the trimmed events.
    After(u64),
}

/// The result of [`Store::read_log`].
#[derive(Debug, Clone)]
pub struct LogRead {
    /// Events after the requested seq, in order.
    pub events: Vec<Event>,
    /// More committed events follow the last one returned.
    pub has_more: bool,
}

/// A read position to record.
#[derive(Debug, Clone)]
pub struct ReadMark {
    /// The reader.
    pub user: UserId,
    /// The reader's name (for receipts).
    pub username: String,
    /// The conversation (canonical id).
    pub conversation_id: String,
    /// Read up to and including this conv_seq.
    pub up_to: u64,
    /// Now, Unix ms.
    pub now_ms: i64,
}

/// Messages a device received, per conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The conversation.
    pub conversation_id: String,
    /// The highest conv_seq received.
    pub up_to: u64,
    /// Who sent the received messages.
    pub senders: Vec<UserId>,
    /// The received messages (for large-group counts).
    pub conv_seqs: Vec<u64>,
}

/// The result of [`Store::mark_read`].
#[derive(Debug, Clone)]
pub struct MarkReadOutcome {
    /// The read position after the call.
    pub read_up_to: u64,
    /// Unread messages after the call.
    pub unread_count: u64,
    /// The ReadMarker event and receipts, if the position moved.
    pub appended: Vec<Appended>,
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
    /// Looks up accounts by username: one answer per name, in order (a
    /// group change names up to a thousand). The default asks one name at
    /// a time; a store with a round trip per question answers all at once.
    async fn users_by_name(
        &self,
        usernames: &[String],
    ) -> Result<Vec<Option<UserRecord>>, StoreError> {
        let mut out = Vec::with_capacity(usernames.len());
        for name in usernames {
            out.push(self.user_by_name(name).await?);
        }
        Ok(out)
    }
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
    /// Committed events of `user` from `from`, at most `limit` and about
    /// `bytes_max` encoded bytes (always at least one if any). Fails with
    /// [`LogReadError::Trimmed`] if events after `LogFrom::After(seq)` were
    /// trimmed away.
    async fn read_log(
        &self,
        user: UserId,
        from: LogFrom,
        limit: usize,
        bytes_max: usize,
    ) -> Result<LogRead, LogReadError>;
    /// The seq of the newest committed event of `user` (0: none).
    async fn log_head(&self, user: UserId) -> Result<u64, StoreError>;
    /// Committed messages of a conversation with `lower < conv_seq < before`
    /// (`before` 0: from the newest), newest first, without those `viewer`
    /// deleted for themselves, at most `limit` and about `bytes_max` encoded
    /// bytes (always at least one if any); and whether older ones exist.
    async fn history(&self, query: HistoryQuery) -> Result<(Vec<Message>, bool), StoreError>;
    /// Applies a group change (or creates a group), checking the rules in
    /// [`crate::groups`] atomically with the write.
    async fn group_op(&self, op: GroupOp) -> Result<GroupOutcome, StoreError>;
    /// A group's record.
    async fn group(&self, group_id: u64) -> Result<Option<GroupRecord>, StoreError>;
    /// A user's membership record in a group (also for former members).
    async fn member(&self, group_id: u64, user: UserId)
    -> Result<Option<MemberRecord>, StoreError>;
    /// Current members with user id > `after`, in id order, at most `limit`;
    /// and whether more follow.
    async fn list_members(
        &self,
        group_id: u64,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<MemberRecord>, bool), StoreError>;
    /// Committed events of the user's large groups after the global stream
    /// position `after`, within each membership's window, in stream order.
    async fn read_streams(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<StreamRead, StoreError>;
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
    /// message), appends a ReadMarker event to their log if it moved, and
    /// read receipts for the senders of the newly read messages (direct and
    /// small groups) or aggregated counts (large groups).
    async fn mark_read(&self, mark: ReadMark) -> Result<MarkReadOutcome, StoreError>;
    /// Records that `user`'s device received messages (at sync): raises the
    /// delivered position per conversation and appends receipts for the
    /// senders, or aggregated counts in large groups.
    async fn record_delivered(
        &self,
        user: UserId,
        username: &str,
        marks: Vec<Delivered>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError>;
    /// Whether `blocker` has blocked `blocked`.
    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> Result<bool, StoreError>;
    /// Blocks or unblocks a user and tells the blocker's devices.
    async fn set_blocked(
        &self,
        blocker: UserId,
        blocked: (UserId, String),
        block: bool,
        now_ms: i64,
    ) -> Result<Vec<Appended>, StoreError>;
    /// The users `blocker` has blocked, at most `limit`.
    async fn blocked_users(&self, blocker: UserId, limit: usize)
    -> Result<Vec<UserId>, StoreError>;
    /// Recalls, edits or deletes-for-me a message, checking who may and
    /// when, atomically with the write.
    async fn change_message(&self, change: MessageChange) -> Result<ChangeOutcome, StoreError>;
    /// Receipt counts of messages in a large group.
    async fn receipt_counts(
        &self,
        conversation_id: &str,
        conv_seqs: &[u64],
    ) -> Result<Vec<ReceiptSummary>, StoreError>;
    /// A user's preferences and last-seen time.
    async fn prefs(&self, user: UserId) -> Result<UserPrefs, StoreError>;
    /// Stores a user's preferences and last-seen time.
    async fn set_prefs(&self, user: UserId, prefs: UserPrefs) -> Result<(), StoreError>;
    /// The users who share a direct or small group conversation with
    /// `user` (whom presence changes are pushed to), at most `limit`.
    async fn contacts(&self, user: UserId, limit: usize) -> Result<Vec<UserId>, StoreError>;
    /// Whether `a` and `b` share any conversation (direct or group, as
    /// current members).
    async fn shares_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError>;
    /// A random secret of 32 bytes stored under `name`, created on first use.
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError>;
    /// Pending webhook deliveries due at `now_ms`, oldest due first.
    async fn deliveries_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Like `deliveries_due`, for the deliverer that will attempt them: a
    /// store shared by several nodes hands each due delivery to one caller
    /// only, by moving its due time `lease_ms` ahead (if the caller dies,
    /// another node retries it after the lease: at least once). A store of
    /// one node has one deliverer and needs no lease.
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let _ = lease_ms;
        self.deliveries_due(now_ms, limit).await
    }
    /// Records the outcome of an attempt: `Ok` removes the delivery; an
    /// error either schedules the next attempt or, past the limit, marks it
    /// failed with the reason.
    async fn delivery_attempted(
        &self,
        id: u64,
        outcome: Result<(), String>,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Pending deliveries (up to `limit`), for the backlog gauge.
    async fn deliveries_pending(&self, limit: usize) -> Result<usize, StoreError>;
    /// Failed deliveries, newest first (up to `limit`).
    async fn deliveries_failed(&self, limit: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Sets (or with `None` settings, removes) a feature flag and tells every
    /// user's devices through the system stream.
    async fn set_flag(
        &self,
        name: &str,
        flag: Option<crate::flags::Flag>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Every feature flag.
    async fn flags(&self) -> Result<Vec<crate::flags::Flag>, StoreError>;
    /// The acknowledgement of an earlier, durable send by `sender` with
    /// `client_msg_id`, if there was one: what a retry is answered with even
    /// where a new send would now be refused (the sender was blocked or left
    /// the group since), so that a client never takes a stored message for
    /// a failed one.
    async fn sent(
        &self,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<SentAck>, StoreError>;
    /// One stored message.
    async fn message(
        &self,
        conversation_id: &str,
        conv_seq: u64,
    ) -> Result<Option<Message>, StoreError>;

    // Administration (`crate::admin_service`).

    /// Accounts with id > `after`, in id order, at most `limit`; and whether
    /// more follow.
    async fn list_users(
        &self,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<UserRecord>, bool), StoreError>;
    /// Changes an account; refuses with `UserNotFound` if there is none.
    async fn update_user(&self, user: UserId, change: UserChange)
    -> Result<UserRecord, StoreError>;
    /// Revokes up to `limit` of the user's live sessions; returns how many
    /// it revoked and whether more remain.
    async fn revoke_user_sessions(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<(usize, bool), StoreError>;
    /// How many accounts and groups exist (dissolved groups included).
    async fn totals(&self) -> Result<Totals, StoreError>;
}

/// A change to an account, made by the administrator.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// Refuse login and token authentication from now on.
    Disable,
    /// Allow them again.
    Enable,
    /// Replace the password hash (an Argon2id PHC string).
    PasswordHash(String),
}

/// Counts for the administrator's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Accounts ever created (ids are never reused).
    pub users: u64,
    /// Groups ever created.
    pub groups: u64,
}

/// The actor of a [`GroupOp`] made by the server's administrator rather
/// than a user: the committer grants it the owner's authority. No user has
/// this id.
pub const SYSTEM_ACTOR: UserId = 0;

/// A log is trimmed once it holds this many events beyond its retention (or
/// an eighth of the retention, if less), so each trim deletes a short run:
/// logs that grow in step (users under even load) never all delete a large
/// run at once.
pub const TRIM_RUN_MAX: u64 = 256;

/// Whether a log whose newest seq is `head` and whose oldest entries are
/// trimmed through `trimmed` is due a trim under a retention of `retain`
/// events (0 keeps everything). Both stores follow this rule.
pub fn trim_due(head: u64, trimmed: u64, retain: u64) -> bool {
    retain > 0 && head.saturating_sub(trimmed) > retain + (retain / 8).min(TRIM_RUN_MAX)
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
        ..Default::default()
    }
}

/// What [`Store::history`] returns.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// The conversation.
    pub conversation_id: String,
    /// Only messages with conv_seq greater than this.
    pub lower: u64,
    /// Only messages with conv_seq less than this (0: no bound).
    pub before: u64,
    /// At most this many.
    pub limit: usize,
    /// About this many encoded bytes.
    pub bytes_max: usize,
    /// Whose deleted-for-me messages to leave out.
    pub viewer: UserId,
}

/// The result of [`Store::read_streams`].
#[derive(Debug, Clone, Default)]
pub struct StreamRead {
    /// Events in stream order; each has `seq` 0 and `group_seq` set.
    pub events: Vec<Event>,
    /// The stream position the device is at after these events.
    pub position: u64,
    /// More events are ready.
    pub has_more: bool,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group id (conversation `g:<id>`).
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `PostPolicy` as its wire number.
    pub post_policy: i32,
    /// `AddPolicy` as its wire number.
    pub add_policy: i32,
    /// Maximum members (already clamped to the server's maximum).
    pub max_members: u32,
    /// The owner.
    pub owner_id: UserId,
    /// The owner's username.
    pub owner_username: String,
    /// Current members.
    pub member_count: u32,
    /// Read-diffused: messages are stored once and read at sync.
    pub large: bool,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Dissolved by its owner.
    pub dissolved: bool,
}

impl GroupRecord {
    /// The group's settings.
    pub fn settings(&self) -> GroupSettings {
        GroupSettings {
            post_policy: self.post_policy,
            add_policy: self.add_policy,
            max_members: self.max_members,
        }
    }

    /// The wire form.
    pub fn info(&self) -> GroupInfo {
        GroupInfo {
            conversation_id: crate::groups::conversation_id(self.id),
            name: self.name.clone(),
            description: self.description.clone(),
            settings: Some(self.settings()),
            owner_id: self.owner_id,
            owner_username: self.owner_username.clone(),
            member_count: self.member_count,
            large: self.large,
            created_at_ms: self.created_at_ms,
            dissolved: self.dissolved,
        }
    }
}

/// A user's membership of a group, kept after they leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The user.
    pub user_id: UserId,
    /// The user's name.
    pub username: String,
    /// `GroupRole` as its wire number; NONE once they left or were removed.
    pub role: i32,
    /// When they joined, Unix ms.
    pub joined_at_ms: i64,
    /// They see messages with conv_seq above this.
    pub joined_after_conv: u64,
    /// They see messages with conv_seq up to this once gone (0: still in).
    pub left_conv: u64,
    /// They see shared-stream events after this position.
    pub joined_after_stream: u64,
    /// They see shared-stream events up to this once gone (0: still in).
    pub left_stream: u64,
}

impl MemberRecord {
    /// The member's role.
    pub fn role(&self) -> GroupRole {
        GroupRole::try_from(self.role).unwrap_or(GroupRole::None)
    }

    /// The wire form.
    pub fn member(&self) -> Member {
        Member {
            user_id: self.user_id,
            username: self.username.clone(),
            role: self.role,
            joined_at_ms: self.joined_at_ms,
        }
    }
}

/// Group limits the store applies.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Groups above this many members are read-diffused.
    pub large_threshold: u32,
    /// The most members a group may have.
    pub members_max: u32,
    /// The most members one GroupChange event lists (larger changes are
    /// split into several events).
    pub change_members_max: usize,
}

/// A group change to apply.
#[derive(Debug, Clone)]
pub enum GroupChangeRequest {
    /// Create a group owned by the actor.
    Create {
        /// Display name.
        name: String,
        /// Free text.
        description: String,
        /// Settings (max_members 0: the server maximum).
        settings: GroupSettings,
        /// Initial members besides the owner.
        members: Vec<(UserId, String)>,
    },
    /// Add users.
    AddMembers(Vec<(UserId, String)>),
    /// Remove users.
    RemoveMembers(Vec<UserId>),
    /// The actor leaves.
    Leave,
    /// Change what is `Some`.
    Update {
        /// New name.
        name: Option<String>,
        /// New description.
        description: Option<String>,
        /// New settings.
        settings: Option<GroupSettings>,
    },
    /// Change a member's role.
    SetRole {
        /// The member.
        user: UserId,
        /// Admin or member.
        role: GroupRole,
    },
    /// Hand the group to a member.
    Transfer {
        /// The new owner.
        user: UserId,
    },
    /// End the group.
    Dissolve,
}

/// A group operation.
#[derive(Debug, Clone)]
pub struct GroupOp {
    /// Who does it ([`SYSTEM_ACTOR`]: the administrator, as the owner).
    pub actor: UserId,
    /// Their username.
    pub actor_username: String,
    /// The group (ignored for Create).
    pub group_id: u64,
    /// What to do.
    pub change: GroupChangeRequest,
    /// Now, Unix ms.
    pub now_ms: i64,
    /// Size limits.
    pub limits: GroupLimits,
}

/// The result of [`Store::group_op`].
#[derive(Debug, Clone)]
pub struct GroupOutcome {
    /// The group after the change.
    pub group: GroupInfo,
    /// The members the change was about (added, removed, new role, ...).
    pub affected: Vec<Member>,
    /// Events appended to users' logs (small groups).
    pub appended: Vec<Appended>,
    /// Users to tell to sync (large groups: the events are in the shared
    /// stream).
    pub stream_notice: Option<Arc<[UserId]>>,
}

/// A change to an existing message.
#[derive(Debug, Clone)]
pub struct MessageChange {
    /// Who asks.
    pub actor: UserId,
    /// The conversation (canonical id).
    pub conversation_id: String,
    /// The group, or 0 for a direct conversation.
    pub group_id: u64,
    /// For a direct conversation: both participants.
    pub participants: Vec<UserId>,
    /// The message.
    pub conv_seq: u64,
    /// What to do.
    pub kind: MessageChangeKind,
    /// Now, Unix ms.
    pub now_ms: i64,
}

/// What to do to a message.
#[derive(Debug, Clone)]
pub enum MessageChangeKind {
    /// Delete for everyone (the sender, within the window).
    Recall {
        /// How long after sending this is allowed.
        window_ms: i64,
    },
    /// Replace the content (the sender, within the window).
    Edit {
        /// The new content.
        content: Content,
        /// How long after sending this is allowed.
        window_ms: i64,
    },
    /// Hide from the actor's own history.
    DeleteForMe,
}

/// The result of [`Store::change_message`].
#[derive(Debug, Clone, Default)]
pub struct ChangeOutcome {
    /// For an edit: its time.
    pub edited_at_ms: i64,
    /// Events appended to users' logs.
    pub appended: Vec<Appended>,
    /// Users to tell to sync (large groups).
    pub stream_notice: Option<Arc<[UserId]>>,
}

/// A user's settings and last-seen time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPrefs {
    /// Nobody sees this user's presence.
    pub hide_presence: bool,
    /// When the user's last device went offline, Unix ms (0: never).
    pub last_seen_ms: i64,
}
