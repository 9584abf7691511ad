//! Group changes, applied by the committer with their permission checks.
//!
//! Each change is one or more GroupChange events: in every member's log for
//! a small group (the removed or departing member's too), in the shared
//! stream for a large one, where membership windows decide who reads what.
//! A group becomes large when it grows past the threshold and stays large.

use std::sync::Arc;

use pigeon_core::CoreError;
use pigeon_core::groups::{self, GroupAction};
use pigeon_core::store::{
    Appended, GroupChangeRequest, GroupLimits, GroupOp, GroupOutcome, GroupRecord, MemberRecord,
    SYSTEM_ACTOR, empty_summary,
};
use pigeon_core::{StoreError, UserId};
use pigeon_proto::v1::{GroupChangeKind, GroupRole, Member, event};
use prost::Message as _;

use super::messages::Audience;
use super::{Committer, Tx, encode_json, refused};
use crate::engine::Table;
use crate::keys;

/// What a change produced so far.
#[derive(Default)]
struct Emitted {
    appended: Vec<Appended>,
    notice: Vec<Arc<[UserId]>>,
    /// The stream seq of the last event (large groups).
    stream_seq: u64,
}

impl Committer {
    pub(super) fn group_op(
        &mut self,
        tx: &mut Tx<'_>,
        op: GroupOp,
    ) -> Result<GroupOutcome, StoreError> {
        let GroupOp {
            actor,
            actor_username,
            group_id,
            change,
            now_ms,
            limits,
        } = op;
        if let GroupChangeRequest::Create {
            name,
            description,
            settings,
            members,
        } = change
        {
            if actor == SYSTEM_ACTOR {
                return Err(refused(CoreError::InvalidArgument(
                    "a group is created by its owner".into(),
                )));
            }
            return self.create_group(
                tx,
                (actor, actor_username),
                name,
                description,
                settings,
                members,
                now_ms,
                limits,
            );
        }
        let mut group: GroupRecord =
            tx.b.get_json("group", Table::Groups, &keys::user_id(group_id))?
                .ok_or_else(|| {
                    refused(CoreError::ConversationNotFound(groups::conversation_id(
                        group_id,
                    )))
                })?;
        let member_of = |tx: &Tx<'_>, user: UserId| -> Result<Option<MemberRecord>, StoreError> {
            tx.b.get_json("member", Table::GroupMembers, &keys::pair(group_id, user))
        };
        // The administrator acts with the owner's authority.
        let actor_role = if actor == SYSTEM_ACTOR {
            GroupRole::Owner
        } else {
            member_of(tx, actor)?.map_or(GroupRole::None, |m| m.role())
        };
        let settings = group.settings();
        let check =
            |action| groups::check(actor_role, action, &settings, group.dissolved).map_err(refused);
        let who = (actor, actor_username.as_str());
        let (kind, affected, emitted) = match change {
            GroupChangeRequest::Create { .. } => unreachable!("handled above"),
            GroupChangeRequest::AddMembers(users) => {
                check(GroupAction::AddMembers)?;
                let mut new = Vec::new();
                for (id, name) in users {
                    if member_of(tx, id)?.is_none_or(|m| m.role() == GroupRole::None) {
                        new.push((id, name));
                    }
                }
                let count = group.member_count as usize + new.len();
                if count > group.max_members as usize {
                    return Err(refused(CoreError::GroupFull(group.max_members)));
                }
                if !group.large && count > limits.large_threshold as usize {
                    group.large = true;
                }
                group.member_count = count as u32;
                let mut added = Vec::with_capacity(new.len());
                for (id, name) in new {
                    added.push(self.join(tx, &group, id, name, GroupRole::Member, now_ms)?);
                }
                self.member_cache.remove(&group_id);
                self.put_group(tx, &group);
                let emitted = self.emit(
                    tx,
                    &group,
                    who,
                    GroupChangeKind::MembersAdded,
                    &added,
                    limits,
                    now_ms,
                )?;
                (GroupChangeKind::MembersAdded, added, emitted)
            }
            GroupChangeRequest::RemoveMembers(users) => {
                let mut targets = Vec::with_capacity(users.len());
                for id in users {
                    let record = member_of(tx, id)?.filter(|m| m.role() != GroupRole::None);
                    let role = record.as_ref().map_or(GroupRole::None, |m| m.role());
                    check(GroupAction::Remove { target: role })?;
                    targets.extend(record);
                }
                self.depart(
                    tx,
                    &mut group,
                    who,
                    targets,
                    GroupChangeKind::MembersRemoved,
                    limits,
                    now_ms,
                )?
            }
            GroupChangeRequest::Leave => {
                check(GroupAction::Leave)?;
                let me = member_of(tx, actor)?.into_iter().collect();
                self.depart(
                    tx,
                    &mut group,
                    who,
                    me,
                    GroupChangeKind::MemberLeft,
                    limits,
                    now_ms,
                )?
            }
            GroupChangeRequest::Update {
                name,
                description,
                settings: new_settings,
            } => {
                check(GroupAction::Update)?;
                if let Some(n) = name {
                    group.name = n;
                }
                if let Some(d) = description {
                    group.description = d;
                }
                if let Some(s) = new_settings {
                    group.post_policy = s.post_policy;
                    group.add_policy = s.add_policy;
                    group.max_members = s.max_members.max(group.member_count);
                }
                self.put_group(tx, &group);
                let emitted = self.emit(
                    tx,
                    &group,
                    who,
                    GroupChangeKind::Updated,
                    &[],
                    limits,
                    now_ms,
                )?;
                (GroupChangeKind::Updated, Vec::new(), emitted)
            }
            GroupChangeRequest::SetRole { user, role } => {
                let mut target = member_of(tx, user)?.filter(|m| m.role() != GroupRole::None);
                let target_role = target.as_ref().map_or(GroupRole::None, |m| m.role());
                check(GroupAction::SetRole {
                    target: target_role,
                })?;
                let mut t = target.take().expect("checked: a member");
                t.role = role as i32;
                self.put_member(tx, group_id, &t);
                let affected = vec![t.member()];
                let emitted = self.emit(
                    tx,
                    &group,
                    who,
                    GroupChangeKind::RoleChanged,
                    &affected,
                    limits,
                    now_ms,
                )?;
                (GroupChangeKind::RoleChanged, affected, emitted)
            }
            GroupChangeRequest::Transfer { user } => {
                let target = member_of(tx, user)?.filter(|m| m.role() != GroupRole::None);
                let target_role = target.as_ref().map_or(GroupRole::None, |m| m.role());
                check(GroupAction::Transfer {
                    target: target_role,
                })?;
                let mut new_owner = target.expect("checked: a member");
                let mut old_owner =
                    member_of(tx, group.owner_id)?.expect("a group's owner is a member");
                new_owner.role = GroupRole::Owner as i32;
                old_owner.role = GroupRole::Admin as i32;
                self.put_member(tx, group_id, &new_owner);
                self.put_member(tx, group_id, &old_owner);
                group.owner_id = new_owner.user_id;
                group.owner_username = new_owner.username.clone();
                self.put_group(tx, &group);
                let affected = vec![new_owner.member(), old_owner.member()];
                let emitted = self.emit(
                    tx,
                    &group,
                    who,
                    GroupChangeKind::OwnershipTransferred,
                    &affected,
                    limits,
                    now_ms,
                )?;
                (GroupChangeKind::OwnershipTransferred, affected, emitted)
            }
            GroupChangeRequest::Dissolve => {
                check(GroupAction::Dissolve)?;
                group.dissolved = true;
                self.put_group(tx, &group);
                let emitted = self.emit(
                    tx,
                    &group,
                    who,
                    GroupChangeKind::Dissolved,
                    &[],
                    limits,
                    now_ms,
                )?;
                (GroupChangeKind::Dissolved, Vec::new(), emitted)
            }
        };
        let _ = kind;
        Ok(outcome(&group, affected, emitted))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_group(
        &mut self,
        tx: &mut Tx<'_>,
        owner: (UserId, String),
        name: String,
        description: String,
        settings: pigeon_proto::v1::GroupSettings,
        members: Vec<(UserId, String)>,
        now_ms: i64,
        limits: GroupLimits,
    ) -> Result<GroupOutcome, StoreError> {
        let id =
            tx.b.get(Table::Meta, keys::NEXT_GROUP_ID)?
                .and_then(|v| keys::read_u64(&v))
                .unwrap_or(1);
        tx.b.put(
            Table::Meta,
            keys::NEXT_GROUP_ID.to_vec(),
            keys::u64_value(id + 1),
        );
        let count = members.len() + 1;
        let group = GroupRecord {
            id,
            name,
            description,
            post_policy: settings.post_policy,
            add_policy: settings.add_policy,
            max_members: settings.max_members,
            owner_id: owner.0,
            owner_username: owner.1.clone(),
            member_count: count as u32,
            large: count > limits.large_threshold as usize,
            created_at_ms: now_ms,
            dissolved: false,
        };
        self.put_group(tx, &group);
        let mut all = vec![self.join(
            tx,
            &group,
            owner.0,
            owner.1.clone(),
            GroupRole::Owner,
            now_ms,
        )?];
        for (uid, uname) in members {
            all.push(self.join(tx, &group, uid, uname, GroupRole::Member, now_ms)?);
        }
        let emitted = self.emit(
            tx,
            &group,
            (owner.0, &owner.1),
            GroupChangeKind::Created,
            &all,
            limits,
            now_ms,
        )?;
        Ok(outcome(&group, all, emitted))
    }

    fn put_group(&mut self, tx: &mut Tx<'_>, group: &GroupRecord) {
        tx.b.put(Table::Groups, keys::user_id(group.id), encode_json(group));
    }

    fn put_member(&mut self, tx: &mut Tx<'_>, group: u64, m: &MemberRecord) {
        tx.b.put(
            Table::GroupMembers,
            keys::pair(group, m.user_id),
            encode_json(m),
        );
    }

    /// Makes `user` a member from now on: they see what is sent after this.
    fn join(
        &mut self,
        tx: &mut Tx<'_>,
        group: &GroupRecord,
        user: UserId,
        username: String,
        role: GroupRole,
        now_ms: i64,
    ) -> Result<Member, StoreError> {
        let conv = groups::conversation_id(group.id);
        let joined_after_conv = self.conv_last(&tx.b, &conv)?;
        // Small groups reach members through their logs; should the group
        // become large later, everything in its stream is after this join.
        let joined_after_stream = if group.large {
            self.stream_last(&tx.b)?
        } else {
            0
        };
        let record = MemberRecord {
            user_id: user,
            username,
            role: role as i32,
            joined_at_ms: now_ms,
            joined_after_conv,
            left_conv: 0,
            joined_after_stream,
            left_stream: 0,
        };
        self.put_member(tx, group.id, &record);
        tx.b.put(Table::UserGroups, keys::pair(user, group.id), Vec::new());
        let mut summary = empty_summary(&conv, 0, "");
        summary.read_up_to = joined_after_conv;
        tx.b.put(
            Table::ConvState,
            keys::conv_state(user, &conv),
            summary.encode_to_vec(),
        );
        self.member_cache.remove(&group.id);
        Ok(record.member())
    }

    /// Removes `targets` (removal or leaving): they get the event, then see
    /// nothing more.
    #[allow(clippy::too_many_arguments)]
    fn depart(
        &mut self,
        tx: &mut Tx<'_>,
        group: &mut GroupRecord,
        who: (UserId, &str),
        targets: Vec<MemberRecord>,
        kind: GroupChangeKind,
        limits: GroupLimits,
        now_ms: i64,
    ) -> Result<(GroupChangeKind, Vec<Member>, Emitted), StoreError> {
        group.member_count = group.member_count.saturating_sub(targets.len() as u32);
        self.put_group(tx, group);
        let affected: Vec<Member> = targets
            .iter()
            .map(|t| Member {
                role: GroupRole::None as i32,
                ..t.member()
            })
            .collect();
        // Emitted while the departing are still members, so they get it.
        let emitted = self.emit(tx, group, who, kind, &affected, limits, now_ms)?;
        let conv = groups::conversation_id(group.id);
        let left_conv = self.conv_last(&tx.b, &conv)?;
        let left_stream = if group.large {
            emitted.stream_seq
        } else {
            self.stream_last(&tx.b)?
        };
        for mut t in targets {
            t.role = GroupRole::None as i32;
            t.left_conv = left_conv;
            t.left_stream = left_stream;
            self.put_member(tx, group.id, &t);
        }
        self.member_cache.remove(&group.id);
        Ok((kind, affected, emitted))
    }

    /// Writes GroupChange events (split so none lists too many members).
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        tx: &mut Tx<'_>,
        group: &GroupRecord,
        who: (UserId, &str),
        kind: GroupChangeKind,
        members: &[Member],
        limits: GroupLimits,
        now_ms: i64,
    ) -> Result<Emitted, StoreError> {
        let audience = if group.large {
            Audience::Stream(group.id)
        } else {
            Audience::Logs(self.member_ids(tx, group.id)?.to_vec())
        };
        let mut out = Emitted::default();
        for change in groups::change_events(group, who, kind, members, limits.change_members_max) {
            let (appended, stream) =
                self.deliver(tx, &audience, now_ms, event::Kind::GroupChange(change))?;
            out.appended.extend(appended);
            if let Some((seq, users)) = stream {
                out.stream_seq = seq;
                if out.notice.is_empty() {
                    out.notice.push(users);
                }
            }
        }
        Ok(out)
    }
}

fn outcome(group: &GroupRecord, affected: Vec<Member>, emitted: Emitted) -> GroupOutcome {
    // Large groups: tell the members and anyone who just left (they read
    // their own departure from the stream).
    let notice = emitted.notice.into_iter().next().map(|members| {
        // A duplicate only costs a second notice, which the gateway
        // coalesces.
        let mut all: Vec<UserId> = members.to_vec();
        all.extend(affected.iter().map(|m| m.user_id));
        Arc::<[UserId]>::from(all)
    });
    GroupOutcome {
        group: group.info(),
        affected,
        appended: emitted.appended,
        stream_notice: notice,
    }
}
