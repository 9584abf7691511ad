//! The group requests of [`Service`]: resolve names, check what can be
//! checked before writing, and hand the change to the store, which applies
//! the permission rules atomically with the write.

use pigeon_proto::v1::{
    AddMembersResponse, CreateGroupRequest, GetGroupResponse, GroupInfo, GroupRole, GroupSettings,
    ListMembersResponse, RemoveMembersResponse, UpdateGroupRequest,
};

use crate::UserId;
use crate::error::CoreError;
use crate::groups::{self, GroupAction};
use crate::service::{Service, Session};
use crate::store::{GroupChangeRequest, GroupLimits, GroupOp, GroupOutcome, GroupRecord};

impl Service {
    fn group_limits(&self) -> GroupLimits {
        GroupLimits {
            large_threshold: self.config.group_large_threshold,
            members_max: self.config.group_members_max,
            change_members_max: self.config.group_change_members_max.max(1),
        }
    }

    /// Clamps settings to what this server allows.
    fn settings(&self, s: Option<GroupSettings>) -> GroupSettings {
        let mut s = s.unwrap_or_default();
        let max = self.config.group_members_max;
        s.max_members = if s.max_members == 0 {
            max
        } else {
            s.max_members.min(max)
        };
        s
    }

    /// Resolves usernames to users, refusing unknown ones by name.
    async fn users(&self, names: &[String]) -> Result<Vec<(UserId, String)>, CoreError> {
        if names.len() > self.config.group_members_per_request_max {
            return Err(CoreError::InvalidArgument(format!(
                "at most {} usernames per request",
                self.config.group_members_per_request_max
            )));
        }
        let found = self.store.users_by_name(names).await?;
        let mut out: Vec<(UserId, String)> = Vec::with_capacity(names.len());
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        for (name, user) in names.iter().zip(found) {
            let user = user.ok_or_else(|| CoreError::UserNotFound(name.clone()))?;
            if seen.insert(user.id) {
                out.push((user.id, user.username));
            }
        }
        Ok(out)
    }

    /// The group named by a conversation id.
    async fn group_of(&self, conversation_id: &str) -> Result<GroupRecord, CoreError> {
        let not_found = || CoreError::ConversationNotFound(conversation_id.to_string());
        let id = groups::parse_group_id(conversation_id).ok_or_else(not_found)?;
        self.store.group(id).await?.ok_or_else(not_found)
    }

    async fn apply(
        &self,
        session: &Session,
        group_id: u64,
        change: GroupChangeRequest,
    ) -> Result<GroupOutcome, CoreError> {
        let outcome = self
            .store
            .group_op(GroupOp {
                actor: session.user_id,
                actor_username: session.username.clone(),
                group_id,
                change,
                now_ms: self.clock.now_ms(),
                limits: self.group_limits(),
            })
            .await?;
        self.publish(outcome.appended.clone(), outcome.stream_notice.clone());
        Ok(outcome)
    }

    /// Creates a group owned by the caller.
    pub async fn create_group(
        &self,
        session: &Session,
        req: CreateGroupRequest,
    ) -> Result<GroupInfo, CoreError> {
        groups::validate_profile(Some(&req.name), Some(&req.description))?;
        let members: Vec<_> = self
            .users(&req.members)
            .await?
            .into_iter()
            .filter(|(id, _)| *id != session.user_id)
            .collect();
        let settings = self.settings(req.settings);
        if members.len() as u64 + 1 > u64::from(settings.max_members) {
            return Err(CoreError::GroupFull(settings.max_members));
        }
        let change = GroupChangeRequest::Create {
            name: req.name,
            description: req.description,
            settings,
            members,
        };
        Ok(self.apply(session, 0, change).await?.group)
    }

    /// Changes name, description or settings.
    pub async fn update_group(
        &self,
        session: &Session,
        req: UpdateGroupRequest,
    ) -> Result<GroupInfo, CoreError> {
        let group = self.group_of(&req.conversation_id).await?;
        let name = req.update_name.then_some(req.name);
        let description = req.update_description.then_some(req.description);
        groups::validate_profile(name.as_deref(), description.as_deref())?;
        let settings = req.update_settings.then(|| self.settings(req.settings));
        if let Some(s) = &settings
            && s.max_members < group.member_count
        {
            return Err(CoreError::InvalidArgument(format!(
                "max_members cannot be below the current {} members",
                group.member_count
            )));
        }
        let change = GroupChangeRequest::Update {
            name,
            description,
            settings,
        };
        Ok(self.apply(session, group.id, change).await?.group)
    }

    /// Adds members.
    pub async fn add_members(
        &self,
        session: &Session,
        conversation_id: &str,
        usernames: &[String],
    ) -> Result<AddMembersResponse, CoreError> {
        if usernames.is_empty() {
            return Err(CoreError::InvalidArgument(
                "name at least one user to add".into(),
            ));
        }
        let group = self.group_of(conversation_id).await?;
        let users = self.users(usernames).await?;
        let out = self
            .apply(session, group.id, GroupChangeRequest::AddMembers(users))
            .await?;
        Ok(AddMembersResponse {
            group: Some(out.group),
            added: out.affected,
        })
    }

    /// Removes members.
    pub async fn remove_members(
        &self,
        session: &Session,
        conversation_id: &str,
        usernames: &[String],
    ) -> Result<RemoveMembersResponse, CoreError> {
        if usernames.is_empty() {
            return Err(CoreError::InvalidArgument(
                "name at least one user to remove".into(),
            ));
        }
        let group = self.group_of(conversation_id).await?;
        let users = self
            .users(usernames)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let out = self
            .apply(session, group.id, GroupChangeRequest::RemoveMembers(users))
            .await?;
        Ok(RemoveMembersResponse {
            group: Some(out.group),
            removed: out.affected,
        })
    }

    /// Leaves a group.
    pub async fn leave_group(
        &self,
        session: &Session,
        conversation_id: &str,
    ) -> Result<(), CoreError> {
        let group = self.group_of(conversation_id).await?;
        self.apply(session, group.id, GroupChangeRequest::Leave)
            .await?;
        Ok(())
    }

    /// Makes a member an admin or an admin a member.
    pub async fn set_role(
        &self,
        session: &Session,
        conversation_id: &str,
        username: &str,
        role: i32,
    ) -> Result<GroupInfo, CoreError> {
        let role = GroupRole::try_from(role)
            .ok()
            .filter(|r| matches!(r, GroupRole::Admin | GroupRole::Member))
            .ok_or_else(|| CoreError::InvalidArgument("role must be ADMIN or MEMBER".into()))?;
        let group = self.group_of(conversation_id).await?;
        let (user, _) = self.users(&[username.to_string()]).await?.remove(0);
        Ok(self
            .apply(
                session,
                group.id,
                GroupChangeRequest::SetRole { user, role },
            )
            .await?
            .group)
    }

    /// Hands the group to another member.
    pub async fn transfer_ownership(
        &self,
        session: &Session,
        conversation_id: &str,
        username: &str,
    ) -> Result<GroupInfo, CoreError> {
        let group = self.group_of(conversation_id).await?;
        let (user, _) = self.users(&[username.to_string()]).await?.remove(0);
        Ok(self
            .apply(session, group.id, GroupChangeRequest::Transfer { user })
            .await?
            .group)
    }

    /// Ends the group for everyone.
    pub async fn dissolve_group(
        &self,
        session: &Session,
        conversation_id: &str,
    ) -> Result<(), CoreError> {
        let group = self.group_of(conversation_id).await?;
        self.apply(session, group.id, GroupChangeRequest::Dissolve)
            .await?;
        Ok(())
    }

    /// A group's state and the caller's role (for members and former members).
    pub async fn get_group(
        &self,
        session: &Session,
        conversation_id: &str,
    ) -> Result<GetGroupResponse, CoreError> {
        let group = self.group_of(conversation_id).await?;
        let m = self
            .membership(&group, session.user_id, GroupAction::Read)
            .await?;
        Ok(GetGroupResponse {
            group: Some(group.info()),
            my_role: m.role,
        })
    }

    /// A page of current members (for current members).
    pub async fn list_members(
        &self,
        session: &Session,
        conversation_id: &str,
        after: UserId,
        limit: u32,
    ) -> Result<ListMembersResponse, CoreError> {
        let group = self.group_of(conversation_id).await?;
        let m = self
            .membership(&group, session.user_id, GroupAction::Read)
            .await?;
        if m.role() == GroupRole::None {
            return Err(CoreError::Forbidden(
                "you are not a member of this group".into(),
            ));
        }
        let max = self.config.group_members_page_max;
        let limit = if limit == 0 { max } else { limit.min(max) };
        let (members, has_more) = self
            .store
            .list_members(group.id, after, limit as usize)
            .await?;
        Ok(ListMembersResponse {
            members: members.iter().map(|m| m.member()).collect(),
            has_more,
        })
    }
}
