//! [`Service`]: every client request's rules, in one place. The gateway
//! decodes a frame, calls one method here and sends back what it returns;
//! nothing here knows about sockets or storage engines.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use pigeon_proto::limits::{CLIENT_MSG_ID_BYTES_MAX, DEVICE_NAME_BYTES_MAX, SYNC_KEY_BYTES_MAX};
use pigeon_proto::v1::{
    Content, ConversationSummary, Event, HistoryResponse, LoginResponse, MarkReadResponse,
    RegisterResponse, SendRequest, SendResponse, SyncResponse, Target, event, target,
};
use tokio::sync::Semaphore;

use crate::accounts;
use crate::config::{CoreConfig, HISTORY_PAGE_CEILING, SYNC_BATCH_EVENTS_CEILING};
use crate::conversation::ConversationId;
use crate::error::CoreError;
use crate::flags::{self, Flag};
use crate::groups::{self, GroupAction};
use crate::notify::{Notifier, PushBatch};
use crate::store::{
    AppendMessage, Appended, Delivered, GroupRecord, HistoryQuery, LogFrom, LogRead, LogReadError,
    MemberRecord, NewSession, ReadMark, Store, StoreError, content_bytes,
};
use crate::sync_key::{Position, SyncKeys};
use crate::{Clock, DeviceId, UserId};

/// An authenticated device on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user_id: UserId,
    /// The user's name.
    pub username: String,
    /// The device.
    pub device_id: DeviceId,
    /// Identifies the session for logout.
    pub token_hash: String,
    /// When the token stops working, Unix ms.
    pub expires_at_ms: i64,
}

/// A sync answer and the seq it leaves the device at.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The frame body to send.
    pub response: SyncResponse,
    /// The position the returned key holds.
    pub cursor: Position,
}

/// The domain service.
pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: CoreConfig,
    keys: SyncKeys,
    pub(crate) hashing: Semaphore,
    pub(crate) typing: crate::social_service::TypingThrottle,
    /// The feature flags, read once and refreshed when they change here.
    flags: std::sync::RwLock<Option<Arc<Vec<Flag>>>>,
    /// Verified against when a login names an unknown user, so that the
    /// answer takes as long as for a wrong password.
    dummy_hash: String,
    /// Delivery receipts waiting while a user's earlier ones are recorded.
    deliveries: Arc<Mutex<HashMap<UserId, Vec<Delivered>>>>,
    /// Usernames and ids already looked up (see [`UserNames`]).
    names: UserNames,
}

/// How many usernames a node remembers with their ids; past it the memory
/// starts again empty.
pub const USER_NAMES_CACHED_MAX: usize = 65_536;

/// Most reads of a log from its oldest event that a sync makes while trims
/// keep landing during them (see [`read_own_log`]).
pub const OLDEST_READ_ATTEMPTS: usize = 8;

/// Reads the caller's own log with `read`. A key the log no longer retains
/// must resync. But a read from the oldest event (the empty key) that a
/// trim overtook is not the device's fault, and a resync would only send it
/// back to the empty key: it reads again from the new oldest event, up to
/// [`OLDEST_READ_ATTEMPTS`] times, and after that answers BUSY (retry
/// later), never RESYNC_REQUIRED.
async fn read_own_log<F: Future<Output = Result<LogRead, LogReadError>>>(
    from: LogFrom,
    mut read: impl FnMut(LogFrom) -> F,
) -> Result<LogRead, CoreError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match read(from).await {
            Ok(read) => return Ok(read),
            Err(LogReadError::Store(e)) => return Err(e.into()),
            Err(LogReadError::Trimmed { .. }) if from != LogFrom::Oldest => {
                return Err(CoreError::ResyncRequired);
            }
            Err(LogReadError::Trimmed { trimmed_through }) => {
                if attempts == OLDEST_READ_ATTEMPTS {
                    tracing::warn!(
                        trimmed_through,
                        attempts,
                        "trims kept overtaking a read from the oldest event"
                    );
                    return Err(StoreError::Overloaded.into());
                }
            }
        }
    }
}

/// Usernames resolved to ids and back, so that a send to a username does
/// not read and decode the user's record every time. Safe to keep without
/// invalidation on every node of a cluster: a user's id and username never
/// change and users are never deleted (a disabled user still exists, and
/// sends to them are stored as before).
#[derive(Default)]
struct UserNames {
    /// As asked for: the id and the username as stored.
    by_name: Mutex<HashMap<String, Peer>>,
    by_id: Mutex<HashMap<UserId, String>>,
}

impl UserNames {
    fn by_name(&self, name: &str) -> Option<Peer> {
        self.by_name.lock().expect("names lock").get(name).cloned()
    }

    fn name(&self, id: UserId) -> Option<String> {
        self.by_id.lock().expect("names lock").get(&id).cloned()
    }

    /// Remembers a user found under `asked` (`None`: found by id).
    fn remember(&self, asked: Option<&str>, peer: &Peer) {
        if let Some(asked) = asked {
            let mut by_name = self.by_name.lock().expect("names lock");
            if by_name.len() >= USER_NAMES_CACHED_MAX {
                by_name.clear();
            }
            by_name.insert(asked.to_string(), peer.clone());
        }
        let mut by_id = self.by_id.lock().expect("names lock");
        if by_id.len() >= USER_NAMES_CACHED_MAX {
            by_id.clear();
        }
        by_id.insert(peer.id, peer.username.clone());
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Name of the stored secret that signs sync keys.
const SYNC_KEY_SECRET: &str = "sync-key";

impl Service {
    /// Builds the service, loading (or creating) the sync-key secret.
    pub async fn new(
        store: Arc<dyn Store>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        config: CoreConfig,
    ) -> Result<Service, CoreError> {
        let cost = config.password_hash_cost;
        let dummy_hash =
            blocking(move || accounts::hash_password("pigeon-dummy-password", cost)).await?;
        Service::with_dummy_hash(store, notifier, clock, config, dummy_hash).await
    }

    /// [`Service::new`] with the hash that logins of unknown users are
    /// checked against (so they take as long as real ones) given rather
    /// than computed: for the deterministic simulation (`pigeon-sim`),
    /// where hashing on the blocking pool, a real thread, would make a
    /// restart's timing depend on the machine. `dummy_hash` must be a hash
    /// from [`accounts::hash_password`] at `config.password_hash_cost`.
    pub async fn with_dummy_hash(
        store: Arc<dyn Store>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        config: CoreConfig,
        dummy_hash: String,
    ) -> Result<Service, CoreError> {
        let secret = store.secret(SYNC_KEY_SECRET).await?;
        Ok(Service {
            store,
            notifier,
            clock,
            hashing: Semaphore::new(config.password_hash_concurrency_max.max(1)),
            config,
            keys: SyncKeys::new(secret),
            typing: Default::default(),
            flags: Default::default(),
            dummy_hash,
            deliveries: Default::default(),
            names: Default::default(),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The sync-key codec.
    pub fn keys(&self) -> &SyncKeys {
        &self.keys
    }

    /// Creates an account.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> Result<RegisterResponse, CoreError> {
        if !self.config.open_registration {
            return Err(CoreError::RegistrationClosed);
        }
        accounts::validate_username(username)?;
        accounts::validate_password(password)?;
        if self.store.user_by_name(username).await?.is_some() {
            return Err(CoreError::UsernameTaken);
        }
        let hash = {
            let _permit = self
                .hashing
                .acquire()
                .await
                .expect("semaphore is never closed");
            let password = password.to_string();
            let cost = self.config.password_hash_cost;
            blocking(move || accounts::hash_password(&password, cost)).await?
        };
        let user = self
            .store
            .create_user(username, &hash, self.clock.now_ms())
            .await?;
        Ok(RegisterResponse {
            user_id: user.id,
            username: user.username,
        })
    }

    /// Checks a password and opens a session on a new device.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<(LoginResponse, Session), CoreError> {
        if device_name.len() > DEVICE_NAME_BYTES_MAX {
            return Err(CoreError::InvalidArgument(format!(
                "device_name is longer than {DEVICE_NAME_BYTES_MAX} bytes"
            )));
        }
        let user = match accounts::validate_username(username) {
            Ok(()) => self.store.user_by_name(username).await?,
            Err(_) => None,
        };
        let phc = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let ok = {
            let _permit = self
                .hashing
                .acquire()
                .await
                .expect("semaphore is never closed");
            let password = password.to_string();
            blocking(move || Ok(accounts::verify_password(&password, &phc))).await?
        };
        let user = match user {
            Some(u) if ok => u,
            _ => return Err(CoreError::InvalidCredentials),
        };
        // Only someone who knows the password learns that it is disabled.
        // The store refuses the session too if the account is disabled
        // between this check and the write.
        if user.disabled {
            return Err(CoreError::AccountDisabled);
        }
        let token = accounts::new_token();
        let now = self.clock.now_ms();
        let record = self
            .store
            .create_session(NewSession {
                token_hash: accounts::token_hash(&token),
                user_id: user.id,
                device_name: device_name.to_string(),
                created_at_ms: now,
                expires_at_ms: now.saturating_add(self.config.session_ttl_ms),
            })
            .await?;
        let session = Session {
            user_id: user.id,
            username: user.username.clone(),
            device_id: record.device_id,
            token_hash: record.token_hash,
            expires_at_ms: record.expires_at_ms,
        };
        let response = LoginResponse {
            token,
            user_id: user.id,
            username: user.username,
            device_id: record.device_id,
            expires_at_ms: record.expires_at_ms,
            flags: self.enabled_flags(user.id, &session.username).await?,
        };
        Ok((response, session))
    }

    /// Resolves a token to its session.
    pub async fn authenticate(&self, token: &str) -> Result<Session, CoreError> {
        if token.len() != 2 * accounts::TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(CoreError::InvalidToken);
        }
        let hash = accounts::token_hash(token);
        let record = self
            .store
            .session(&hash)
            .await?
            .ok_or(CoreError::InvalidToken)?;
        let user = self
            .store
            .user_by_id(record.user_id)
            .await?
            .ok_or(CoreError::InvalidToken)?;
        // Before the revocation check: disabling revokes every session, and
        // the device should learn the reason.
        if user.disabled {
            return Err(CoreError::AccountDisabled);
        }
        if record.revoked {
            return Err(CoreError::TokenRevoked);
        }
        if record.expires_at_ms <= self.clock.now_ms() {
            return Err(CoreError::TokenExpired);
        }
        Ok(Session {
            user_id: user.id,
            username: user.username,
            device_id: record.device_id,
            token_hash: record.token_hash,
            expires_at_ms: record.expires_at_ms,
        })
    }

    /// Checks that a session is still valid (not revoked, not expired).
    pub async fn recheck(&self, session: &Session) -> Result<(), CoreError> {
        let record = self
            .store
            .session(&session.token_hash)
            .await?
            .ok_or(CoreError::InvalidToken)?;
        if record.revoked {
            // Disabling revokes every session; say why.
            let disabled = self
                .store
                .user_by_id(record.user_id)
                .await?
                .is_some_and(|u| u.disabled);
            return Err(if disabled {
                CoreError::AccountDisabled
            } else {
                CoreError::TokenRevoked
            });
        }
        if record.expires_at_ms <= self.clock.now_ms() {
            return Err(CoreError::TokenExpired);
        }
        Ok(())
    }

    /// Revokes the session.
    pub async fn logout(&self, session: &Session) -> Result<(), CoreError> {
        self.store.revoke_session(&session.token_hash).await?;
        Ok(())
    }

    /// Stores a message durably (idempotently) and notifies online devices.
    /// A retry of a stored send gets the original acknowledgement, also
    /// where a new send would now be refused.
    pub async fn send(
        &self,
        session: &Session,
        req: SendRequest,
    ) -> Result<SendResponse, CoreError> {
        let client_msg_id = req.client_msg_id.clone();
        match self.send_new(session, req).await {
            Err(
                e @ (CoreError::Forbidden(_)
                | CoreError::ConversationNotFound(_)
                | CoreError::UserNotFound(_)),
            ) if !client_msg_id.is_empty() => {
                match self.store.sent(session.user_id, &client_msg_id).await? {
                    Some(ack) => Ok(SendResponse {
                        conversation_id: ack.conversation_id,
                        conv_seq: ack.conv_seq,
                        sent_at_ms: ack.sent_at_ms,
                        duplicate: true,
                    }),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn send_new(
        &self,
        session: &Session,
        req: SendRequest,
    ) -> Result<SendResponse, CoreError> {
        if req.client_msg_id.is_empty() || req.client_msg_id.len() > CLIENT_MSG_ID_BYTES_MAX {
            return Err(CoreError::InvalidArgument(format!(
                "client_msg_id must be 1 to {CLIENT_MSG_ID_BYTES_MAX} bytes"
            )));
        }
        let content = req.content.unwrap_or_default();
        self.check_content(&content)?;
        let (conversation_id, group_id, participants) =
            match self.resolve_target(session, req.target.as_ref()).await? {
                Resolved::Direct(conv, peer) => {
                    if peer.id != session.user_id
                        && self.store.is_blocked(peer.id, session.user_id).await?
                    {
                        return Err(blocked_refusal());
                    }
                    let mut participants = vec![(session.user_id, session.username.clone())];
                    if peer.id != session.user_id {
                        participants.push((peer.id, peer.username));
                    }
                    (conv.to_string(), 0, participants)
                }
                Resolved::Group(group) => (groups::conversation_id(group.id), group.id, Vec::new()),
            };
        let outcome = self
            .store
            .append_message(AppendMessage {
                sender_id: session.user_id,
                sender_username: session.username.clone(),
                sender_device_id: session.device_id,
                client_msg_id: req.client_msg_id,
                conversation_id,
                group_id,
                participants,
                content,
                now_ms: self.clock.now_ms(),
                hooks: self.config.hooks.clone(),
            })
            .await?;
        self.publish(outcome.appended, outcome.stream_notice);
        Ok(SendResponse {
            conversation_id: outcome.conversation_id,
            conv_seq: outcome.conv_seq,
            sent_at_ms: outcome.sent_at_ms,
            duplicate: outcome.duplicate,
        })
    }

    pub(crate) fn check_content(&self, content: &Content) -> Result<(), CoreError> {
        if content.text.is_empty() && content.payload.is_empty() {
            return Err(CoreError::InvalidArgument(
                "content has neither text nor payload".into(),
            ));
        }
        let len = content_bytes(content);
        if len > self.config.message_bytes_max {
            return Err(CoreError::MessageTooLarge {
                len,
                max: self.config.message_bytes_max,
            });
        }
        Ok(())
    }

    /// The events after the device's key: first the user's own log, then,
    /// once that is drained, the shared logs of the user's large groups.
    /// Draining the own log first keeps each conversation in order when a
    /// group crosses the fan-out threshold (its earlier messages are in the
    /// own log, its later ones in the shared log).
    pub async fn sync(
        &self,
        session: &Session,
        key: &[u8],
        limit: u32,
    ) -> Result<SyncOutcome, CoreError> {
        if key.len() > SYNC_KEY_BYTES_MAX {
            return Err(CoreError::InvalidSyncKey("key is too long"));
        }
        let after = self.keys.decode(session.user_id, key)?;
        // Only the empty key (a new device) starts at whatever the log still
        // holds. Every key the server gave out, even one given while the log
        // was empty, is a position: if events after it were trimmed, the
        // device must resync rather than silently miss them.
        let from = if key.is_empty() {
            LogFrom::Oldest
        } else {
            LogFrom::After(after.seq)
        };
        let max = self
            .config
            .sync_batch_events_max
            .min(SYNC_BATCH_EVENTS_CEILING);
        let limit = if limit == 0 { max } else { limit.min(max) } as usize;
        let bytes_max = self.config.sync_batch_bytes_max;
        let read = read_own_log(from, |from| {
            self.store.read_log(session.user_id, from, limit, bytes_max)
        })
        .await?;
        let mut cursor = Position {
            seq: read.events.last().map_or(after.seq, |e| e.seq),
            stream: after.stream,
        };
        let mut events = read.events;
        let mut has_more = read.has_more;
        if !has_more && events.len() < limit {
            let used: usize = events.iter().map(prost::Message::encoded_len).sum();
            let streams = self
                .store
                .read_streams(
                    session.user_id,
                    after.stream,
                    limit - events.len(),
                    bytes_max.saturating_sub(used),
                )
                .await?;
            cursor.stream = streams.position.max(after.stream);
            has_more = streams.has_more;
            events.extend(streams.events);
        } else if !has_more {
            // The own log filled the batch; the shared logs were not looked
            // at, so there may be more.
            has_more = true;
        }
        self.delivered(session, &events);
        // Flag changes are one marker for everyone: fill in this user's set.
        if events
            .iter()
            .any(|e| matches!(e.kind, Some(event::Kind::FlagsChanged(_))))
        {
            let enabled = self
                .enabled_flags(session.user_id, &session.username)
                .await?;
            for e in &mut events {
                if let Some(event::Kind::FlagsChanged(f)) = &mut e.kind {
                    f.enabled = enabled.clone();
                }
            }
        }
        Ok(SyncOutcome {
            response: SyncResponse {
                events,
                key: self.keys.encode(session.user_id, cursor),
                has_more,
                packed: None,
            },
            cursor,
        })
    }

    /// Records that the session's device received `events` (in a sync
    /// answer or a push): delivery receipts for their senders.
    pub fn delivered(&self, session: &Session, events: &[Event]) {
        let marks = delivered_marks(session.user_id, events);
        if !marks.is_empty() {
            self.record_delivered(session.user_id, &session.username, marks);
        }
    }

    /// The feature flags enabled for a user (Welcome, FlagsChanged).
    pub async fn enabled_flags(
        &self,
        user: UserId,
        username: &str,
    ) -> Result<Vec<String>, CoreError> {
        let cached = self.flags.read().expect("flags lock poisoned").clone();
        let all = match cached {
            Some(all) => all,
            None => {
                let all = Arc::new(self.store.flags().await?);
                *self.flags.write().expect("flags lock poisoned") = Some(all.clone());
                all
            }
        };
        Ok(all
            .iter()
            .filter(|f| flags::enabled(f, user, username))
            .map(|f| f.name.clone())
            .collect())
    }

    /// Every feature flag.
    pub async fn list_flags(&self) -> Result<Vec<Flag>, CoreError> {
        Ok(self.store.flags().await?)
    }

    /// Creates or changes a flag (`None`: removes it) and tells everyone.
    pub async fn set_flag(
        &self,
        name: &str,
        setting: Option<(u8, Vec<String>)>,
    ) -> Result<Option<Flag>, CoreError> {
        let flag = match setting {
            Some((percent, allow)) => {
                flags::validate(name, percent, &allow)?;
                Some(Flag {
                    name: name.to_string(),
                    percent,
                    allow,
                    updated_at_ms: self.clock.now_ms(),
                })
            }
            None => None,
        };
        self.store
            .set_flag(name, flag.clone(), self.clock.now_ms())
            .await?;
        *self.flags.write().expect("flags lock poisoned") = None;
        self.notifier.notify_everyone();
        Ok(flag)
    }

    /// The key of a position (for pushes).
    pub fn key_for(&self, user: UserId, pos: Position) -> Vec<u8> {
        self.keys.encode(user, pos)
    }

    /// One page of a conversation's history, newest first. Group members see
    /// the messages from their joining to their leaving.
    pub async fn history(
        &self,
        session: &Session,
        target: Option<&Target>,
        before: u64,
        limit: u32,
    ) -> Result<HistoryResponse, CoreError> {
        let (conversation_id, lower, upper) = match self.resolve_target(session, target).await? {
            Resolved::Direct(conv, _) => (conv.to_string(), 0, 0),
            Resolved::Group(group) => {
                let m = self
                    .membership(&group, session.user_id, GroupAction::Read)
                    .await?;
                (
                    groups::conversation_id(group.id),
                    m.joined_after_conv,
                    m.left_conv,
                )
            }
        };
        let max = self.config.history_page_max.min(HISTORY_PAGE_CEILING);
        let limit = if limit == 0 { max } else { limit.min(max) };
        // A former member sees nothing after they left.
        let before = match (before, upper) {
            (b, 0) => b,
            (0, u) => u + 1,
            (b, u) => b.min(u + 1),
        };
        let (messages, has_more) = self
            .store
            .history(HistoryQuery {
                conversation_id: conversation_id.clone(),
                lower,
                before,
                limit: limit as usize,
                bytes_max: self.config.sync_batch_bytes_max,
                viewer: session.user_id,
            })
            .await?;
        Ok(HistoryResponse {
            conversation_id,
            messages,
            has_more,
        })
    }

    /// The user's conversations, most recently active first.
    pub async fn list_conversations(
        &self,
        session: &Session,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, CoreError> {
        let max = self.config.conversations_list_max;
        let limit = if limit == 0 { max } else { limit.min(max) };
        let mut list = self
            .store
            .list_conversations(session.user_id, limit as usize)
            .await?;
        // Keep the answer well inside one frame: the most recent first.
        let mut bytes = 0;
        let keep = list
            .iter()
            .take_while(|c| {
                bytes += prost::Message::encoded_len(*c);
                bytes <= self.config.sync_batch_bytes_max
            })
            .count();
        list.truncate(keep.max(1).min(list.len()));
        Ok(list)
    }

    /// Moves the read position of a conversation, tells the user's devices,
    /// and sends read receipts.
    pub async fn mark_read(
        &self,
        session: &Session,
        conversation_id: &str,
        read_up_to: u64,
    ) -> Result<MarkReadResponse, CoreError> {
        let canonical = self.conversation_of(session, conversation_id).await?;
        if self
            .store
            .conversation(session.user_id, &canonical)
            .await?
            .is_none()
        {
            return Err(CoreError::ConversationNotFound(conversation_id.to_string()));
        }
        let outcome = self
            .store
            .mark_read(ReadMark {
                user: session.user_id,
                username: session.username.clone(),
                conversation_id: canonical,
                up_to: read_up_to,
                now_ms: self.clock.now_ms(),
            })
            .await?;
        self.publish(outcome.appended, None);
        Ok(MarkReadResponse {
            read_up_to: outcome.read_up_to,
            unread_count: outcome.unread_count,
        })
    }

    /// The canonical id of a conversation the caller is (or was) in.
    pub(crate) async fn conversation_of(
        &self,
        session: &Session,
        conversation_id: &str,
    ) -> Result<String, CoreError> {
        let not_found = || CoreError::ConversationNotFound(conversation_id.to_string());
        if let Some(id) = groups::parse_group_id(conversation_id) {
            let group = self.store.group(id).await?.ok_or_else(not_found)?;
            self.membership(&group, session.user_id, GroupAction::Read)
                .await?;
            return Ok(groups::conversation_id(id));
        }
        let conv = ConversationId::parse(conversation_id)
            .filter(|c| c.includes(session.user_id))
            .ok_or_else(not_found)?;
        Ok(conv.to_string())
    }

    /// The caller's membership of a group, if they may do `action` there.
    /// Former members may still read what they saw.
    pub(crate) async fn membership(
        &self,
        group: &GroupRecord,
        user: UserId,
        action: GroupAction,
    ) -> Result<MemberRecord, CoreError> {
        let member = self.store.member(group.id, user).await?;
        match member {
            Some(m) if action == GroupAction::Read => Ok(m),
            Some(m) => {
                groups::check(m.role(), action, &group.settings(), group.dissolved)?;
                Ok(m)
            }
            None => Err(CoreError::Forbidden(
                "you are not a member of this group".into(),
            )),
        }
    }

    /// Hands committed events to the notifier.
    pub(crate) fn publish(&self, appended: Vec<Appended>, stream_notice: Option<Arc<[UserId]>>) {
        publish(&*self.notifier, appended, stream_notice);
    }

    /// Records deliveries in the background: the sync answer does not wait.
    ///
    /// One write per user at a time: marks that arrive while a user's
    /// earlier ones are being recorded wait and are merged (per
    /// conversation: the highest position, every sender once), then go in
    /// one write. Under load a device receives many pushes per store round
    /// trip, and each would otherwise be a write of its own and a receipt
    /// event for each sender. Each write also waits
    /// `delivery_receipt_delay_ms` first and takes what came meanwhile: at
    /// a steady few hundred messages a second per user, that makes one
    /// receipt write of a user's dozens of deliveries.
    fn record_delivered(&self, user: UserId, username: &str, marks: Vec<Delivered>) {
        {
            let mut waiting = self.deliveries.lock().expect("deliveries lock poisoned");
            match waiting.entry(user) {
                Entry::Occupied(mut e) => {
                    merge_delivered(e.get_mut(), marks);
                    return;
                }
                Entry::Vacant(e) => {
                    e.insert(Vec::new());
                }
            }
        }
        let (store, notifier, clock, waiting) = (
            self.store.clone(),
            self.notifier.clone(),
            self.clock.clone(),
            self.deliveries.clone(),
        );
        let username = username.to_string();
        let delay = std::time::Duration::from_millis(self.config.delivery_receipt_delay_ms);
        tokio::spawn(async move {
            let mut marks = marks;
            loop {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                    let mut waiting = waiting.lock().expect("deliveries lock poisoned");
                    if let Some(more) = waiting.get_mut(&user) {
                        merge_delivered(&mut marks, std::mem::take(more));
                    }
                }
                match store
                    .record_delivered(user, &username, marks, clock.now_ms())
                    .await
                {
                    Ok(appended) => publish(&*notifier, appended, None),
                    Err(e) => tracing::warn!(error = %e, "recording delivery receipts failed"),
                }
                let mut waiting = waiting.lock().expect("deliveries lock poisoned");
                let Entry::Occupied(mut e) = waiting.entry(user) else {
                    return;
                };
                if e.get().is_empty() {
                    e.remove();
                    return;
                }
                marks = std::mem::take(e.get_mut());
            }
        });
    }
}

/// Hands committed events to a notifier.
fn publish(notifier: &dyn Notifier, appended: Vec<Appended>, stream_notice: Option<Arc<[UserId]>>) {
    {
        for a in appended {
            let Some(last) = a.events.last() else {
                continue;
            };
            let last_seq = last.seq;
            notifier.notify(Arc::new(PushBatch {
                user_id: a.user_id,
                prev_seq: a.prev_seq,
                last_seq,
                events: a.events,
            }));
        }
        if let Some(users) = stream_notice {
            notifier.notify_stream(users);
        }
    }
}

impl Service {
    /// The conversation a target names.
    pub(crate) async fn resolve_target(
        &self,
        session: &Session,
        target: Option<&Target>,
    ) -> Result<Resolved, CoreError> {
        match target.and_then(|t| t.to.as_ref()) {
            None => Err(CoreError::InvalidArgument("target is missing".into())),
            Some(target::To::Username(name)) => {
                let peer = match self.names.by_name(name) {
                    Some(peer) => peer,
                    None => {
                        let user = self
                            .store
                            .user_by_name(name)
                            .await?
                            .ok_or_else(|| CoreError::UserNotFound(name.clone()))?;
                        let peer = Peer {
                            id: user.id,
                            username: user.username,
                        };
                        self.names.remember(Some(name), &peer);
                        peer
                    }
                };
                Ok(Resolved::Direct(
                    ConversationId::direct(session.user_id, peer.id),
                    peer,
                ))
            }
            Some(target::To::ConversationId(id)) => {
                let not_found = || CoreError::ConversationNotFound(id.clone());
                if let Some(gid) = groups::parse_group_id(id) {
                    let group = self.store.group(gid).await?.ok_or_else(not_found)?;
                    return Ok(Resolved::Group(group));
                }
                let conv = ConversationId::parse(id)
                    .filter(|c| c.includes(session.user_id))
                    .ok_or_else(not_found)?;
                let id = conv.peer_of(session.user_id);
                let username = match self.names.name(id) {
                    Some(name) => name,
                    None => {
                        let user = self.store.user_by_id(id).await?.ok_or_else(not_found)?;
                        let peer = Peer {
                            id,
                            username: user.username,
                        };
                        self.names.remember(None, &peer);
                        peer.username
                    }
                };
                Ok(Resolved::Direct(conv, Peer { id, username }))
            }
        }
    }
}

/// What a target resolved to.
pub(crate) enum Resolved {
    /// A direct conversation and the other participant.
    Direct(ConversationId, Peer),
    /// A group (membership not yet checked).
    Group(GroupRecord),
}

/// The other participant of a direct conversation.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) id: UserId,
    pub(crate) username: String,
}

/// The refusal a blocked sender gets: it does not say they are blocked.
pub(crate) fn blocked_refusal() -> CoreError {
    CoreError::Forbidden("you cannot message this user".into())
}

/// Per (conversation, sender) the highest conv_seq of others' messages in
/// a sync batch: what the syncing user now has delivered.
/// Adds `more` to `marks`, one mark per conversation: the highest
/// position, each sender and each received message once.
fn merge_delivered(marks: &mut Vec<Delivered>, more: impl IntoIterator<Item = Delivered>) {
    for m in more {
        match marks
            .iter_mut()
            .find(|d| d.conversation_id == m.conversation_id)
        {
            Some(d) => {
                d.up_to = d.up_to.max(m.up_to);
                for s in m.senders {
                    if !d.senders.contains(&s) {
                        d.senders.push(s);
                    }
                }
                for c in m.conv_seqs {
                    if !d.conv_seqs.contains(&c) {
                        d.conv_seqs.push(c);
                    }
                }
            }
            None => marks.push(m),
        }
    }
}

fn delivered_marks(me: UserId, events: &[Event]) -> Vec<Delivered> {
    let received = events.iter().filter_map(|e| match &e.kind {
        Some(event::Kind::Message(m)) if m.sender_id != me => Some(Delivered {
            conversation_id: m.conversation_id.clone(),
            up_to: m.conv_seq,
            senders: vec![m.sender_id],
            conv_seqs: vec![m.conv_seq],
        }),
        _ => None,
    });
    let mut marks = Vec::new();
    merge_delivered(&mut marks, received);
    marks
}

/// Runs CPU-heavy work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        CoreError::Store(crate::StoreError::Io(format!("blocking task failed: {e}")))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(conv: &str, up_to: u64, senders: &[UserId], conv_seqs: &[u64]) -> Delivered {
        Delivered {
            conversation_id: conv.into(),
            up_to,
            senders: senders.to_vec(),
            conv_seqs: conv_seqs.to_vec(),
        }
    }

    /// Checks a read from the oldest event is tried again when a trim
    /// overtakes it, and answers BUSY, not RESYNC_REQUIRED, if that keeps
    /// happening; a read after a position the log no longer holds must
    /// resync at once.
    #[tokio::test(flavor = "current_thread")]
    async fn only_a_trimmed_position_must_resync() {
        let trimmed = || LogReadError::Trimmed { trimmed_through: 9 };
        let read = LogRead {
            events: Vec::new(),
            has_more: true,
        };
        let mut calls = Vec::new();
        let got = read_own_log(LogFrom::Oldest, |from| {
            calls.push(from);
            let answer = if calls.len() < 3 {
                Err(trimmed())
            } else {
                Ok(read.clone())
            };
            async move { answer }
        })
        .await
        .unwrap();
        assert!(got.has_more);
        assert_eq!(calls, [LogFrom::Oldest; 3]);

        let mut tries = 0;
        let err = read_own_log(LogFrom::Oldest, |_| {
            tries += 1;
            async { Err(trimmed()) }
        })
        .await
        .unwrap_err();
        assert_eq!(tries, OLDEST_READ_ATTEMPTS);
        assert_eq!(err.code(), pigeon_proto::v1::ErrorCode::Busy);

        let mut tries = 0;
        let err = read_own_log(LogFrom::After(0), |_| {
            tries += 1;
            async { Err(trimmed()) }
        })
        .await
        .unwrap_err();
        assert_eq!(tries, 1);
        assert!(matches!(err, CoreError::ResyncRequired));
    }

    /// Checks merged delivery marks keep one mark per conversation with the
    /// highest position, every sender and every message once, and add
    /// conversations they did not have.
    #[test]
    fn delivery_marks_merge_per_conversation() {
        let mut marks = vec![mark("d:1:2", 5, &[1], &[4, 5]), mark("g:7", 9, &[3], &[9])];
        merge_delivered(
            &mut marks,
            vec![
                mark("d:1:2", 4, &[1], &[4]),
                mark("g:7", 12, &[4, 3], &[11, 12]),
                mark("d:2:5", 1, &[5], &[1]),
            ],
        );
        assert_eq!(
            marks,
            vec![
                mark("d:1:2", 5, &[1], &[4, 5]),
                mark("g:7", 12, &[3, 4], &[9, 11, 12]),
                mark("d:2:5", 1, &[5], &[1]),
            ]
        );
    }

    #[test]
    fn user_names_answer_what_was_found_and_stay_bounded() {
        let names = UserNames::default();
        let bob = Peer {
            id: 7,
            username: "bob".into(),
        };
        names.remember(Some("bob"), &bob);
        assert_eq!(names.by_name("bob").map(|p| p.id), Some(7));
        assert_eq!(names.name(7).as_deref(), Some("bob"));
        assert!(names.by_name("carol").is_none());
        names.remember(
            None,
            &Peer {
                id: 9,
                username: "dan".into(),
            },
        );
        assert!(names.by_name("dan").is_none(), "found by id: not by name");
        assert_eq!(names.name(9).as_deref(), Some("dan"));
        for i in 0..USER_NAMES_CACHED_MAX as u64 + 10 {
            let p = Peer {
                id: 100 + i,
                username: format!("u{i}"),
            };
            names.remember(Some(&p.username), &p);
        }
        assert!(names.by_name.lock().unwrap().len() <= USER_NAMES_CACHED_MAX);
        assert!(names.by_id.lock().unwrap().len() <= USER_NAMES_CACHED_MAX);
        let last = USER_NAMES_CACHED_MAX as u64 + 9;
        assert_eq!(
            names.by_name(&format!("u{last}")).map(|p| p.id),
            Some(100 + last)
        );
    }
}
