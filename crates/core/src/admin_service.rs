//! The server administrator's operations ([`Admin`], from
//! [`Service::admin`]): accounts (create, disable, enable, reset password,
//! revoke sessions), groups acted on with the owner's authority, messages
//! sent as an account (how bots and system accounts post), and totals.
//!
//! The caller (the server's admin HTTP API) has checked the administrator's
//! credentials; nothing here does. Every rule that applies to users still
//! applies to what is done in their name: a message sent as a bot follows
//! the bot's memberships and blocks.

use pigeon_proto::ErrorCode;
use pigeon_proto::v1::{
    AddMembersResponse, Content, CreateGroupRequest, GroupInfo, GroupSettings,
    RemoveMembersResponse, SendRequest, SendResponse, Target, target,
};

use crate::accounts;
use crate::error::CoreError;
use crate::groups;
use crate::service::{Service, Session, blocking};
use crate::store::{GroupRecord, MemberRecord, SYSTEM_ACTOR, Totals, UserChange, UserRecord};
use crate::{DeviceId, UserId};

/// The most items one admin list page holds.
pub const ADMIN_PAGE_MAX: usize = 1000;
/// The page size when the caller names none.
pub const ADMIN_PAGE_DEFAULT: usize = 100;
/// Sessions revoked per store job; revoking more takes several jobs, so a
/// user with many sessions never holds the committer for long.
pub const REVOKE_SESSIONS_PER_JOB_MAX: usize = 1024;
/// The device id of messages sent through the admin API (real devices
/// start at 1).
pub const ADMIN_DEVICE_ID: DeviceId = 0;

const _: () = assert!(ADMIN_PAGE_DEFAULT <= ADMIN_PAGE_MAX);

/// One page of a list ordered by user id.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, in user-id order.
    pub items: Vec<T>,
    /// The `after` of the next page, if there is one.
    pub next_after: Option<UserId>,
}

/// Who a message sent by the administrator goes to.
#[derive(Debug, Clone)]
pub enum AdminTarget {
    /// A direct conversation with this username.
    User(String),
    /// A conversation by id (`g:<id>` for a group).
    Conversation(String),
}

/// A message to send as an account.
#[derive(Debug, Clone)]
pub struct AdminMessage {
    /// The sending account (a bot or system account, or any user).
    pub from: String,
    /// Where it goes.
    pub to: AdminTarget,
    /// The text.
    pub text: String,
    /// Retries with the same id store the message once; `None` picks a
    /// fresh id (no idempotency).
    pub client_msg_id: Option<String>,
}

/// A group to create for an owner.
#[derive(Debug, Clone)]
pub struct AdminNewGroup {
    /// The owner's username.
    pub owner: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Members besides the owner.
    pub members: Vec<String>,
    /// Settings (max_members 0: the server maximum).
    pub settings: GroupSettings,
}

/// The administrator's view of the service.
#[derive(Debug, Clone, Copy)]
pub struct Admin<'a> {
    service: &'a Service,
}

impl Service {
    /// The administrator's operations.
    pub fn admin(&self) -> Admin<'_> {
        Admin { service: self }
    }
}

/// The session group operations run under to get the owner's authority.
fn system_session() -> Session {
    Session {
        user_id: SYSTEM_ACTOR,
        username: String::new(),
        device_id: ADMIN_DEVICE_ID,
        token_hash: String::new(),
        expires_at_ms: i64::MAX,
    }
}

/// A page size: 0 asks for the default, anything above the maximum gets
/// the maximum.
pub fn page_limit(limit: usize) -> usize {
    match limit {
        0 => ADMIN_PAGE_DEFAULT,
        n => n.min(ADMIN_PAGE_MAX),
    }
}

impl Admin<'_> {
    /// Creates an account, whether or not registration is open.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<UserRecord, CoreError> {
        accounts::validate_username(username)?;
        accounts::validate_password(password)?;
        let s = self.service;
        if s.store.user_by_name(username).await?.is_some() {
            return Err(CoreError::UsernameTaken);
        }
        let hash = self.hash(password).await?;
        Ok(s.store
            .create_user(username, &hash, s.clock.now_ms())
            .await?)
    }

    /// An account by name.
    pub async fn user(&self, username: &str) -> Result<UserRecord, CoreError> {
        known_form(username)?;
        self.service
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| CoreError::UserNotFound(username.to_string()))
    }

    /// Accounts with id > `after`, at most `limit` (see [`page_limit`]).
    pub async fn list_users(
        &self,
        after: UserId,
        limit: usize,
    ) -> Result<Page<UserRecord>, CoreError> {
        let (items, more) = self
            .service
            .store
            .list_users(after, page_limit(limit))
            .await?;
        let next_after = more.then(|| items.last().map(|u| u.id)).flatten();
        Ok(Page { items, next_after })
    }

    /// Disables an account: refuses its logins and tokens, revokes every
    /// session and closes its open connections.
    pub async fn disable(&self, username: &str) -> Result<UserRecord, CoreError> {
        let user = self.user(username).await?;
        let user = self
            .service
            .store
            .update_user(user.id, UserChange::Disable)
            .await?;
        self.revoke_all(user.id).await?;
        self.service
            .notifier
            .close_user(user.id, ErrorCode::AccountDisabled);
        Ok(user)
    }

    /// Enables an account again. Its old sessions stay revoked: devices
    /// log in again.
    pub async fn enable(&self, username: &str) -> Result<UserRecord, CoreError> {
        let user = self.user(username).await?;
        Ok(self
            .service
            .store
            .update_user(user.id, UserChange::Enable)
            .await?)
    }

    /// Sets a new password. Sessions stay valid; revoke them separately if
    /// the old password may have leaked.
    pub async fn reset_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<UserRecord, CoreError> {
        accounts::validate_password(password)?;
        let user = self.user(username).await?;
        let hash = self.hash(password).await?;
        Ok(self
            .service
            .store
            .update_user(user.id, UserChange::PasswordHash(hash))
            .await?)
    }

    /// Revokes every session of an account and closes its open
    /// connections; returns how many sessions were live.
    pub async fn revoke_sessions(&self, username: &str) -> Result<usize, CoreError> {
        let user = self.user(username).await?;
        let revoked = self.revoke_all(user.id).await?;
        self.service
            .notifier
            .close_user(user.id, ErrorCode::TokenRevoked);
        Ok(revoked)
    }

    async fn revoke_all(&self, user: UserId) -> Result<usize, CoreError> {
        let mut total = 0;
        loop {
            // Each job removes what it revoked from the user's index, so
            // this ends.
            let (revoked, more) = self
                .service
                .store
                .revoke_user_sessions(user, REVOKE_SESSIONS_PER_JOB_MAX)
                .await?;
            total += revoked;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Creates a group owned by `owner` (the owner is the actor in its
    /// Created event, as if they had created it).
    pub async fn create_group(&self, g: AdminNewGroup) -> Result<GroupInfo, CoreError> {
        let owner = self.user(&g.owner).await?;
        g.members.iter().try_for_each(|m| known_form(m))?;
        self.service
            .create_group(
                &session_of(&owner),
                CreateGroupRequest {
                    name: g.name,
                    description: g.description,
                    members: g.members,
                    settings: Some(g.settings),
                },
            )
            .await
    }

    /// A group's record.
    pub async fn group(&self, group_id: u64) -> Result<GroupRecord, CoreError> {
        self.service
            .store
            .group(group_id)
            .await?
            .ok_or_else(|| CoreError::ConversationNotFound(groups::conversation_id(group_id)))
    }

    /// Current members with id > `after`, at most `limit`.
    pub async fn members(
        &self,
        group_id: u64,
        after: UserId,
        limit: usize,
    ) -> Result<Page<MemberRecord>, CoreError> {
        self.group(group_id).await?;
        let (items, more) = self
            .service
            .store
            .list_members(group_id, after, page_limit(limit))
            .await?;
        let next_after = more.then(|| items.last().map(|m| m.user_id)).flatten();
        Ok(Page { items, next_after })
    }

    /// Adds members, with the owner's authority.
    pub async fn add_members(
        &self,
        group_id: u64,
        usernames: &[String],
    ) -> Result<AddMembersResponse, CoreError> {
        usernames.iter().try_for_each(|m| known_form(m))?;
        self.service
            .add_members(
                &system_session(),
                &groups::conversation_id(group_id),
                usernames,
            )
            .await
    }

    /// Removes a member (not the owner), with the owner's authority.
    pub async fn remove_member(
        &self,
        group_id: u64,
        username: &str,
    ) -> Result<RemoveMembersResponse, CoreError> {
        known_form(username)?;
        self.service
            .remove_members(
                &system_session(),
                &groups::conversation_id(group_id),
                &[username.to_string()],
            )
            .await
    }

    /// Ends a group for everyone, with the owner's authority.
    pub async fn dissolve(&self, group_id: u64) -> Result<GroupInfo, CoreError> {
        self.service
            .dissolve_group(&system_session(), &groups::conversation_id(group_id))
            .await?;
        Ok(self.group(group_id).await?.info())
    }

    /// Sends a text message as an account. The account's rules apply as if
    /// it had sent it from a device: it must be in the group (and allowed
    /// to post), and a user who blocked it does not get it.
    pub async fn send(&self, m: AdminMessage) -> Result<SendResponse, CoreError> {
        let from = self.user(&m.from).await?;
        if from.disabled {
            return Err(CoreError::AccountDisabled);
        }
        let to = match m.to {
            AdminTarget::User(name) => {
                known_form(&name)?;
                target::To::Username(name)
            }
            AdminTarget::Conversation(id) => target::To::ConversationId(id),
        };
        let client_msg_id = m
            .client_msg_id
            .unwrap_or_else(|| format!("admin-{}", &accounts::new_token()[..32]));
        self.service
            .send(
                &session_of(&from),
                SendRequest {
                    client_msg_id,
                    target: Some(Target { to: Some(to) }),
                    content: Some(Content {
                        text: m.text,
                        ..Default::default()
                    }),
                },
            )
            .await
    }

    /// How many accounts and groups exist.
    pub async fn totals(&self) -> Result<Totals, CoreError> {
        Ok(self.service.store.totals().await?)
    }

    /// Hashes a new password under the service's hashing limit.
    async fn hash(&self, password: &str) -> Result<String, CoreError> {
        let _permit = self
            .service
            .hashing
            .acquire()
            .await
            .expect("semaphore is never closed");
        let password = password.to_string();
        let cost = self.service.config.password_hash_cost;
        blocking(move || accounts::hash_password(&password, cost)).await
    }
}

/// Refuses a name that no account can have before it reaches the store
/// (which bounds key sizes).
fn known_form(username: &str) -> Result<(), CoreError> {
    accounts::validate_username(username)
        .map_err(|_| CoreError::UserNotFound(username.chars().take(64).collect()))
}

/// A session acting as `user` from the admin API (no device, no token).
fn session_of(user: &UserRecord) -> Session {
    Session {
        user_id: user.id,
        username: user.username.clone(),
        device_id: ADMIN_DEVICE_ID,
        token_hash: String::new(),
        expires_at_ms: i64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page sizes: 0 is the default, large ones are clamped.
    #[test]
    fn page_limits() {
        assert_eq!(page_limit(0), ADMIN_PAGE_DEFAULT);
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(ADMIN_PAGE_MAX + 1), ADMIN_PAGE_MAX);
    }
}
