//! The requests of [`Service`] beyond sending: recall, edit and delete,
//! receipt counts, typing, presence and privacy, blocking.
//!
//! Typing and presence are ephemeral: pushed to online peers through the
//! notifier, never logged. Presence goes to contacts (direct peers and
//! co-members of small groups); queries are answered for anyone who shares
//! a conversation with the user, unless the user hides their presence or
//! has blocked the asker.

use std::collections::HashMap;

use pigeon_proto::v1::frame::Body;
use pigeon_proto::v1::{
    Content, Presence, PresencePush, PresenceState, ReceiptSummary, TypingPush,
};

use crate::UserId;
use crate::conversation::ConversationId;
use crate::error::CoreError;
use crate::groups::{self, GroupAction};
use crate::service::{Service, Session};
use crate::store::{MessageChange, MessageChangeKind, UserPrefs};

/// Most messages one GetReceipts request may name.
pub const RECEIPTS_QUERY_MAX: usize = 100;
/// Most blocked users listed.
pub const BLOCKED_LIST_MAX: usize = 10_000;
/// Typing throttle entries kept before old ones are dropped.
pub const TYPING_ENTRIES_MAX: usize = 100_000;

/// The conversation a message request addresses.
struct Addressed {
    conversation_id: String,
    group_id: u64,
    participants: Vec<UserId>,
}

impl Service {
    async fn addressed(
        &self,
        session: &Session,
        conversation_id: &str,
    ) -> Result<Addressed, CoreError> {
        let canonical = self.conversation_of(session, conversation_id).await?;
        Ok(match groups::parse_group_id(&canonical) {
            Some(id) => Addressed {
                conversation_id: canonical,
                group_id: id,
                participants: Vec::new(),
            },
            None => {
                let conv = ConversationId::parse(&canonical).expect("canonical id");
                Addressed {
                    conversation_id: canonical,
                    group_id: 0,
                    participants: conv.participants(),
                }
            }
        })
    }

    async fn change(
        &self,
        session: &Session,
        conversation_id: &str,
        conv_seq: u64,
        kind: MessageChangeKind,
    ) -> Result<i64, CoreError> {
        let a = self.addressed(session, conversation_id).await?;
        let out = self
            .store
            .change_message(MessageChange {
                actor: session.user_id,
                conversation_id: a.conversation_id,
                group_id: a.group_id,
                participants: a.participants,
                conv_seq,
                kind,
                now_ms: self.clock.now_ms(),
            })
            .await?;
        self.publish(out.appended, out.stream_notice);
        Ok(out.edited_at_ms)
    }

    /// Deletes a message for everyone (the sender, within the window).
    pub async fn recall(
        &self,
        session: &Session,
        conversation_id: &str,
        conv_seq: u64,
    ) -> Result<(), CoreError> {
        let window_ms = self.config.recall_window_ms;
        self.change(
            session,
            conversation_id,
            conv_seq,
            MessageChangeKind::Recall { window_ms },
        )
        .await?;
        Ok(())
    }

    /// Replaces a message's content (the sender, within the window).
    pub async fn edit(
        &self,
        session: &Session,
        conversation_id: &str,
        conv_seq: u64,
        content: Option<Content>,
    ) -> Result<i64, CoreError> {
        let content = content.unwrap_or_default();
        self.check_content(&content)?;
        let window_ms = self.config.edit_window_ms;
        self.change(
            session,
            conversation_id,
            conv_seq,
            MessageChangeKind::Edit { content, window_ms },
        )
        .await
    }

    /// Hides a message from the caller's own history, on all their devices.
    pub async fn delete_for_me(
        &self,
        session: &Session,
        conversation_id: &str,
        conv_seq: u64,
    ) -> Result<(), CoreError> {
        self.change(
            session,
            conversation_id,
            conv_seq,
            MessageChangeKind::DeleteForMe,
        )
        .await?;
        Ok(())
    }

    /// Receipt counts of messages in a large group.
    pub async fn receipts(
        &self,
        session: &Session,
        conversation_id: &str,
        conv_seqs: &[u64],
    ) -> Result<Vec<ReceiptSummary>, CoreError> {
        if conv_seqs.len() > RECEIPTS_QUERY_MAX {
            return Err(CoreError::InvalidArgument(format!(
                "at most {RECEIPTS_QUERY_MAX} messages per request"
            )));
        }
        let a = self.addressed(session, conversation_id).await?;
        if a.group_id == 0 {
            return Err(CoreError::InvalidArgument(
                "receipt counts are for groups; direct conversations get Receipt events".into(),
            ));
        }
        Ok(self
            .store
            .receipt_counts(&a.conversation_id, conv_seqs)
            .await?)
    }

    /// Tells the conversation's other online members that the caller types.
    pub async fn set_typing(
        &self,
        session: &Session,
        conversation_id: &str,
        typing: bool,
    ) -> Result<(), CoreError> {
        let a = self.addressed(session, conversation_id).await?;
        let recipients: Vec<UserId> = if a.group_id != 0 {
            let group = self
                .store
                .group(a.group_id)
                .await?
                .ok_or(CoreError::ConversationNotFound(a.conversation_id.clone()))?;
            self.membership(&group, session.user_id, GroupAction::Post)
                .await?;
            if group.large {
                // Typing in a channel would reach everyone online: not sent.
                return Ok(());
            }
            let (members, _) = self
                .store
                .list_members(group.id, 0, self.config.group_large_threshold as usize + 1)
                .await?;
            members
                .iter()
                .map(|m| m.user_id)
                .filter(|&u| u != session.user_id)
                .collect()
        } else {
            let peer = a
                .participants
                .iter()
                .copied()
                .find(|&u| u != session.user_id);
            match peer {
                Some(p) if !self.store.is_blocked(p, session.user_id).await? => vec![p],
                _ => Vec::new(),
            }
        };
        if typing && !self.typing_allowed(session.user_id, &a.conversation_id) {
            return Ok(());
        }
        let push = TypingPush {
            conversation_id: a.conversation_id,
            user_id: session.user_id,
            username: session.username.clone(),
            typing,
        };
        self.notifier
            .push_ephemeral(&recipients, Body::TypingPush(push));
        Ok(())
    }

    /// At most one "typing" push per user and conversation per throttle
    /// interval; "stopped typing" always passes.
    fn typing_allowed(&self, user: UserId, conversation_id: &str) -> bool {
        let now = self.clock.now_ms();
        let mut last = self.typing.lock().expect("typing lock poisoned");
        if last.len() >= TYPING_ENTRIES_MAX {
            let horizon = now - self.config.typing_throttle_ms;
            last.retain(|_, t| *t > horizon);
            if last.len() >= TYPING_ENTRIES_MAX {
                last.clear();
            }
        }
        let key = (user, conversation_id.to_string());
        match last.get(&key) {
            Some(&t) if now - t < self.config.typing_throttle_ms => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }

    /// What `asker` may know of `user`'s presence.
    async fn presence_of(
        &self,
        asker: UserId,
        user: UserId,
        username: String,
    ) -> Result<Presence, CoreError> {
        let hidden = Presence {
            user_id: user,
            username: username.clone(),
            state: PresenceState::Unknown as i32,
            last_seen_ms: 0,
        };
        if asker != user {
            let prefs = self.store.prefs(user).await?;
            if prefs.hide_presence
                || self.store.is_blocked(user, asker).await?
                || !self.store.shares_conversation(asker, user).await?
            {
                return Ok(hidden);
            }
        }
        Ok(if self.notifier.is_online(user) {
            Presence {
                state: PresenceState::Online as i32,
                ..hidden
            }
        } else {
            let last_seen_ms = self.store.prefs(user).await?.last_seen_ms;
            Presence {
                state: PresenceState::Offline as i32,
                last_seen_ms,
                ..hidden
            }
        })
    }

    /// Presence of the named users, as far as the caller may see it.
    pub async fn get_presence(
        &self,
        session: &Session,
        usernames: &[String],
    ) -> Result<Vec<Presence>, CoreError> {
        if usernames.len() > self.config.presence_query_max {
            return Err(CoreError::InvalidArgument(format!(
                "at most {} usernames per request",
                self.config.presence_query_max
            )));
        }
        let mut out = Vec::with_capacity(usernames.len());
        for name in usernames {
            let user = self
                .store
                .user_by_name(name)
                .await?
                .ok_or_else(|| CoreError::UserNotFound(name.clone()))?;
            out.push(
                self.presence_of(session.user_id, user.id, user.username)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Shows or hides the caller's presence; contacts are told at once
    /// (UNKNOWN when hidden, the current state when shown again).
    pub async fn set_privacy(
        &self,
        session: &Session,
        hide_presence: bool,
    ) -> Result<bool, CoreError> {
        let prefs = self.store.prefs(session.user_id).await?;
        if prefs.hide_presence == hide_presence {
            return Ok(hide_presence);
        }
        let prefs = UserPrefs {
            hide_presence,
            ..prefs
        };
        self.store.set_prefs(session.user_id, prefs).await?;
        let state = if hide_presence {
            PresenceState::Unknown
        } else if self.notifier.is_online(session.user_id) {
            PresenceState::Online
        } else {
            PresenceState::Offline
        };
        self.announce(
            session.user_id,
            &session.username,
            state,
            prefs.last_seen_ms,
        )
        .await?;
        Ok(hide_presence)
    }

    /// Called by the gateway when a user's first device comes online or the
    /// last goes offline: records last seen and tells the user's contacts.
    pub async fn presence_changed(
        &self,
        user: UserId,
        username: &str,
        online: bool,
    ) -> Result<(), CoreError> {
        // In a cluster the user may still be online on another node.
        if !online && self.notifier.is_online(user) {
            return Ok(());
        }
        let mut prefs = self.store.prefs(user).await?;
        if !online {
            prefs.last_seen_ms = self.clock.now_ms();
            self.store.set_prefs(user, prefs).await?;
        }
        if prefs.hide_presence {
            return Ok(());
        }
        let state = if online {
            PresenceState::Online
        } else {
            PresenceState::Offline
        };
        self.announce(user, username, state, prefs.last_seen_ms)
            .await
    }

    /// Pushes a presence state to the user's contacts (not those they block).
    async fn announce(
        &self,
        user: UserId,
        username: &str,
        state: PresenceState,
        last_seen_ms: i64,
    ) -> Result<(), CoreError> {
        let contacts = self
            .store
            .contacts(user, self.config.presence_fanout_max)
            .await?;
        let mut visible = Vec::with_capacity(contacts.len());
        for c in contacts {
            if !self.store.is_blocked(user, c).await? {
                visible.push(c);
            }
        }
        let presence = Presence {
            user_id: user,
            username: username.to_string(),
            state: state as i32,
            last_seen_ms: if state == PresenceState::Offline {
                last_seen_ms
            } else {
                0
            },
        };
        self.notifier.push_ephemeral(
            &visible,
            Body::PresencePush(PresencePush {
                presence: Some(presence),
            }),
        );
        Ok(())
    }

    /// Blocks or unblocks a user.
    pub async fn set_blocked(
        &self,
        session: &Session,
        username: &str,
        block: bool,
    ) -> Result<(), CoreError> {
        let user = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| CoreError::UserNotFound(username.to_string()))?;
        if user.id == session.user_id {
            return Err(CoreError::InvalidArgument(
                "you cannot block yourself".into(),
            ));
        }
        let appended = self
            .store
            .set_blocked(
                session.user_id,
                (user.id, user.username),
                block,
                self.clock.now_ms(),
            )
            .await?;
        self.publish(appended, None);
        Ok(())
    }

    /// The users the caller has blocked.
    pub async fn list_blocked(&self, session: &Session) -> Result<Vec<String>, CoreError> {
        let ids = self
            .store
            .blocked_users(session.user_id, BLOCKED_LIST_MAX)
            .await?;
        let mut names = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(u) = self.store.user_by_id(id).await? {
                names.push(u.username);
            }
        }
        Ok(names)
    }
}

/// Last typing push per (user, conversation), for throttling.
pub(crate) type TypingThrottle = std::sync::Mutex<HashMap<(UserId, String), i64>>;
