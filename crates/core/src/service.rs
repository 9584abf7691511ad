//! [`Service`]: every client request's rules, in one place. The gateway
//! decodes a frame, calls one method here and sends back what it returns;
//! nothing here knows about sockets or storage engines.

use std::sync::Arc;

use pigeon_proto::limits::{CLIENT_MSG_ID_BYTES_MAX, DEVICE_NAME_BYTES_MAX, SYNC_KEY_BYTES_MAX};
use pigeon_proto::v1::{
    ConversationSummary, EventsPush, HistoryResponse, LoginResponse, MarkReadResponse,
    RegisterResponse, SendRequest, SendResponse, SyncResponse, Target, target,
};
use tokio::sync::Semaphore;

use crate::accounts;
use crate::config::{CoreConfig, HISTORY_PAGE_CEILING, SYNC_BATCH_EVENTS_CEILING};
use crate::conversation::ConversationId;
use crate::error::CoreError;
use crate::notify::{Notifier, PushBatch};
use crate::store::{
    AppendMessage, Appended, LogReadError, NewSession, Store, UserRecord, content_bytes,
};
use crate::sync_key::SyncKeys;
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
    /// The seq the returned key points after.
    pub cursor: u64,
}

/// The domain service.
pub struct Service {
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    config: CoreConfig,
    keys: SyncKeys,
    hashing: Semaphore,
    /// Verified against when a login names an unknown user, so that the
    /// answer takes as long as for a wrong password.
    dummy_hash: String,
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
        let secret = store.secret(SYNC_KEY_SECRET).await?;
        let dummy_hash = blocking(|| accounts::hash_password("pigeon-dummy-password")).await?;
        Ok(Service {
            store,
            notifier,
            clock,
            hashing: Semaphore::new(config.password_hash_concurrency_max.max(1)),
            config,
            keys: SyncKeys::new(secret),
            dummy_hash,
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
            blocking(move || accounts::hash_password(&password)).await?
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
        if record.revoked {
            return Err(CoreError::TokenRevoked);
        }
        if record.expires_at_ms <= self.clock.now_ms() {
            return Err(CoreError::TokenExpired);
        }
        let user = self
            .store
            .user_by_id(record.user_id)
            .await?
            .ok_or(CoreError::InvalidToken)?;
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
            return Err(CoreError::TokenRevoked);
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
    pub async fn send(
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
        if content.text.is_empty() && content.payload.is_empty() {
            return Err(CoreError::InvalidArgument(
                "content has neither text nor payload".into(),
            ));
        }
        let len = content_bytes(&content);
        if len > self.config.message_bytes_max {
            return Err(CoreError::MessageTooLarge {
                len,
                max: self.config.message_bytes_max,
            });
        }
        let (conv, peer) = self.resolve_target(session, req.target.as_ref()).await?;
        let mut participants = vec![(session.user_id, session.username.clone())];
        if peer.id != session.user_id {
            participants.push((peer.id, peer.username));
        }
        let outcome = self
            .store
            .append_message(AppendMessage {
                sender_id: session.user_id,
                sender_username: session.username.clone(),
                sender_device_id: session.device_id,
                client_msg_id: req.client_msg_id,
                conversation_id: conv.to_string(),
                participants,
                content,
                now_ms: self.clock.now_ms(),
            })
            .await?;
        self.publish(outcome.appended);
        Ok(SendResponse {
            conversation_id: outcome.conversation_id,
            conv_seq: outcome.conv_seq,
            sent_at_ms: outcome.sent_at_ms,
            duplicate: outcome.duplicate,
        })
    }

    /// The events after the device's key.
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
        let max = self
            .config
            .sync_batch_events_max
            .min(SYNC_BATCH_EVENTS_CEILING);
        let limit = if limit == 0 { max } else { limit.min(max) };
        let read = self
            .store
            .read_log(
                session.user_id,
                after,
                limit as usize,
                self.config.sync_batch_bytes_max,
            )
            .await
            .map_err(|e| match e {
                LogReadError::Trimmed { .. } => CoreError::ResyncRequired,
                LogReadError::Store(s) => CoreError::Store(s),
            })?;
        let cursor = read.events.last().map_or(after, |e| e.seq);
        let key = if cursor == after {
            key.to_vec()
        } else {
            self.keys.encode(session.user_id, cursor)
        };
        Ok(SyncOutcome {
            response: SyncResponse {
                events: read.events,
                key,
                has_more: read.has_more,
            },
            cursor,
        })
    }

    /// The sync key for the newest committed event of the session's user,
    /// and that seq. A fresh device can start from it to skip old events.
    pub async fn head_key(&self, session: &Session) -> Result<(Vec<u8>, u64), CoreError> {
        let head = self.store.log_head(session.user_id).await?;
        Ok((self.key_for(session.user_id, head), head))
    }

    /// One page of a conversation's history, newest first.
    pub async fn history(
        &self,
        session: &Session,
        target: Option<&Target>,
        before: u64,
        limit: u32,
    ) -> Result<HistoryResponse, CoreError> {
        let (conv, _) = self.resolve_target(session, target).await?;
        let max = self.config.history_page_max.min(HISTORY_PAGE_CEILING);
        let limit = if limit == 0 { max } else { limit.min(max) };
        let conversation_id = conv.to_string();
        let (messages, has_more) = self
            .store
            .history(
                &conversation_id,
                before,
                limit as usize,
                self.config.sync_batch_bytes_max,
            )
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

    /// Moves the read position of a conversation and tells the user's devices.
    pub async fn mark_read(
        &self,
        session: &Session,
        conversation_id: &str,
        read_up_to: u64,
    ) -> Result<MarkReadResponse, CoreError> {
        let conv = ConversationId::parse(conversation_id)
            .filter(|c| c.includes(session.user_id))
            .ok_or_else(|| CoreError::ConversationNotFound(conversation_id.to_string()))?;
        let canonical = conv.to_string();
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
            .mark_read(session.user_id, &canonical, read_up_to, self.clock.now_ms())
            .await?;
        self.publish(outcome.appended.into_iter().collect());
        Ok(MarkReadResponse {
            read_up_to: outcome.read_up_to,
            unread_count: outcome.unread_count,
        })
    }

    /// The key a device holds after `seq` (the empty key for 0).
    fn key_for(&self, user: UserId, seq: u64) -> Vec<u8> {
        if seq == 0 {
            Vec::new()
        } else {
            self.keys.encode(user, seq)
        }
    }

    fn publish(&self, appended: Vec<Appended>) {
        for a in appended {
            let Some(last) = a.events.last() else {
                continue;
            };
            let last_seq = last.seq;
            let push = EventsPush {
                prev_key: self.key_for(a.user_id, a.prev_seq),
                key: self.key_for(a.user_id, last_seq),
                events: a.events,
            };
            self.notifier.notify(Arc::new(PushBatch {
                user_id: a.user_id,
                prev_seq: a.prev_seq,
                last_seq,
                push,
            }));
        }
    }

    /// The conversation a target names, with the other participant.
    async fn resolve_target(
        &self,
        session: &Session,
        target: Option<&Target>,
    ) -> Result<(ConversationId, UserRecord), CoreError> {
        match target.and_then(|t| t.to.as_ref()) {
            None => Err(CoreError::InvalidArgument("target is missing".into())),
            Some(target::To::Username(name)) => {
                let peer = self
                    .store
                    .user_by_name(name)
                    .await?
                    .ok_or_else(|| CoreError::UserNotFound(name.clone()))?;
                Ok((ConversationId::direct(session.user_id, peer.id), peer))
            }
            Some(target::To::ConversationId(id)) => {
                let not_found = || CoreError::ConversationNotFound(id.clone());
                let conv = ConversationId::parse(id)
                    .filter(|c| c.includes(session.user_id))
                    .ok_or_else(not_found)?;
                let peer = self
                    .store
                    .user_by_id(conv.peer_of(session.user_id))
                    .await?
                    .ok_or_else(not_found)?;
                Ok((conv, peer))
            }
        }
    }
}

/// Runs CPU-heavy work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        CoreError::Store(crate::StoreError::Io(format!("blocking task failed: {e}")))
    })?
}
