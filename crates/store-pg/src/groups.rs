//! Group changes with their permission checks, under the group row's
//! `FOR UPDATE` lock (sends and message changes hold it `FOR SHARE`, so a
//! membership change and a send in the same group are ordered), with the
//! embedded store's semantics (`pigeon-store`'s `log_store/groups.rs`).
//!
//! Each change is one or more GroupChange events: in every member's log
//! for a small group (the removed or departing member's too), in the shared
//! stream for a large one, where membership windows decide who reads what.
//! A group becomes large when it grows past the threshold and stays large.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use pigeon_core::groups::{self, GroupAction};
use pigeon_core::store::{
    GroupChangeRequest, GroupLimits, GroupOp, GroupOutcome, GroupRecord, MemberRecord, SYSTEM_ACTOR,
};
use pigeon_core::{CoreError, UserId};
use pigeon_proto::v1::{GroupChangeKind, GroupRole, GroupSettings, Member, event};
use tokio_postgres::Row;

use crate::messages::Audience;
use crate::tx::W;
use crate::{Result, corrupt, i, refused, u};

/// How a read of a group row locks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// A plain read.
    None,
    /// Sends and message changes: membership changes wait for them.
    Share,
    /// Group changes.
    Update,
}

pub(crate) const GROUP_COLUMNS: &str = "id, name, description, post_policy, add_policy, max_members, \
    owner_id, owner_username, member_count, large, created_at_ms, dissolved";
const MEMBER_COLUMNS: &str = "user_id, username, role, joined_at_ms, joined_after_conv, \
    left_conv, joined_after_stream, left_stream";

pub(crate) fn group_row(r: &Row) -> GroupRecord {
    GroupRecord {
        id: u(r.get("id")),
        name: r.get("name"),
        description: r.get("description"),
        post_policy: r.get("post_policy"),
        add_policy: r.get("add_policy"),
        max_members: u32::try_from(r.get::<_, i64>("max_members")).unwrap_or(u32::MAX),
        owner_id: u(r.get("owner_id")),
        owner_username: r.get("owner_username"),
        member_count: u32::try_from(r.get::<_, i64>("member_count")).unwrap_or(u32::MAX),
        large: r.get("large"),
        created_at_ms: r.get("created_at_ms"),
        dissolved: r.get("dissolved"),
    }
}

pub(crate) fn member_row(r: &Row) -> MemberRecord {
    MemberRecord {
        user_id: u(r.get("user_id")),
        username: r.get("username"),
        role: r.get("role"),
        joined_at_ms: r.get("joined_at_ms"),
        joined_after_conv: u(r.get("joined_after_conv")),
        left_conv: u(r.get("left_conv")),
        joined_after_stream: u(r.get("joined_after_stream")),
        left_stream: u(r.get("left_stream")),
    }
}

/// A group's record.
pub(crate) async fn group<C: GenericClient>(
    c: &C,
    id: u64,
    lock: Lock,
) -> Result<Option<GroupRecord>> {
    let sql = match lock {
        Lock::None => format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = $1"),
        Lock::Share => format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = $1 FOR SHARE"),
        Lock::Update => format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = $1 FOR UPDATE"),
    };
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_opt(&stmt, &[&i(id)]).await?.as_ref().map(group_row))
}

/// A user's membership record (also a former member's).
pub(crate) async fn member<C: GenericClient>(
    c: &C,
    group: u64,
    user: UserId,
) -> Result<Option<MemberRecord>> {
    let sql =
        format!("SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = $1 AND user_id = $2");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_opt(&stmt, &[&i(group), &i(user)])
        .await?
        .as_ref()
        .map(member_row))
}

/// Current members of a group, in id order.
pub(crate) async fn member_ids<C: GenericClient>(c: &C, group: u64) -> Result<Vec<UserId>> {
    let stmt = c
        .prepare_cached(
            "SELECT user_id FROM group_members WHERE group_id = $1 AND role <> 0 ORDER BY user_id",
        )
        .await?;
    Ok(c.query(&stmt, &[&i(group)])
        .await?
        .iter()
        .map(|r| u(r.get(0)))
        .collect())
}

/// What a change produced so far.
#[derive(Default)]
struct Emitted {
    notice: Option<Arc<[UserId]>>,
    /// The stream seq of the last event (large groups).
    stream_seq: u64,
}

impl W<'_> {
    pub(crate) async fn group_op(&mut self, op: &GroupOp) -> Result<GroupOutcome> {
        let (actor, now_ms, limits) = (op.actor, op.now_ms, op.limits);
        let who = (actor, op.actor_username.as_str());
        if let GroupChangeRequest::Create {
            name,
            description,
            settings,
            members,
        } = &op.change
        {
            if actor == SYSTEM_ACTOR {
                return Err(refused(CoreError::InvalidArgument(
                    "a group is created by its owner".into(),
                )));
            }
            return self
                .create_group(who, name, description, settings, members, now_ms, limits)
                .await;
        }
        let group_id = op.group_id;
        let mut group = group(self.tx, group_id, Lock::Update)
            .await?
            .ok_or_else(|| {
                refused(CoreError::ConversationNotFound(groups::conversation_id(
                    group_id,
                )))
            })?;
        // The administrator acts with the owner's authority.
        let actor_role = if actor == SYSTEM_ACTOR {
            GroupRole::Owner
        } else {
            member(self.tx, group_id, actor)
                .await?
                .map_or(GroupRole::None, |m| m.role())
        };
        let settings = group.settings();
        let dissolved = group.dissolved;
        let check =
            |action| groups::check(actor_role, action, &settings, dissolved).map_err(refused);
        let (affected, emitted) = match &op.change {
            GroupChangeRequest::Create { .. } => unreachable!("handled above"),
            GroupChangeRequest::AddMembers(users) => {
                check(GroupAction::AddMembers)?;
                let ids: Vec<UserId> = users.iter().map(|(id, _)| *id).collect();
                let current = self.members_among(group_id, &ids).await?;
                let mut seen = HashSet::with_capacity(users.len());
                let new: Vec<(UserId, String)> = users
                    .iter()
                    .filter(|(id, _)| {
                        current.get(id).is_none_or(|m| m.role() == GroupRole::None)
                            && seen.insert(*id)
                    })
                    .cloned()
                    .collect();
                let count = group.member_count as usize + new.len();
                if count > group.max_members as usize {
                    return Err(refused(CoreError::GroupFull(group.max_members)));
                }
                if !group.large && count > limits.large_threshold as usize {
                    group.large = true;
                }
                group.member_count = count as u32;
                let joiners: Vec<_> = new
                    .into_iter()
                    .map(|(id, name)| (id, name, GroupRole::Member))
                    .collect();
                let added = self.join(&group, joiners, now_ms).await?;
                self.put_group(&group).await?;
                let emitted = self
                    .emit(
                        &group,
                        who,
                        GroupChangeKind::MembersAdded,
                        &added,
                        limits,
                        now_ms,
                    )
                    .await?;
                (added, emitted)
            }
            GroupChangeRequest::RemoveMembers(users) => {
                let current = self.members_among(group_id, users).await?;
                let mut targets: Vec<MemberRecord> = Vec::with_capacity(users.len());
                let mut seen = HashSet::with_capacity(users.len());
                for id in users {
                    // Checked in the order asked, so the refusal names the
                    // first target that may not be removed.
                    let record = current.get(id).filter(|m| m.role() != GroupRole::None);
                    let role = record.map_or(GroupRole::None, |m| m.role());
                    check(GroupAction::Remove { target: role })?;
                    if let Some(r) = record
                        && seen.insert(r.user_id)
                    {
                        targets.push(r.clone());
                    }
                }
                self.depart(
                    &mut group,
                    who,
                    targets,
                    GroupChangeKind::MembersRemoved,
                    limits,
                    now_ms,
                )
                .await?
            }
            GroupChangeRequest::Leave => {
                check(GroupAction::Leave)?;
                let me = member(self.tx, group_id, actor)
                    .await?
                    .into_iter()
                    .collect();
                self.depart(
                    &mut group,
                    who,
                    me,
                    GroupChangeKind::MemberLeft,
                    limits,
                    now_ms,
                )
                .await?
            }
            GroupChangeRequest::Update {
                name,
                description,
                settings: new_settings,
            } => {
                check(GroupAction::Update)?;
                if let Some(n) = name {
                    group.name = n.clone();
                }
                if let Some(d) = description {
                    group.description = d.clone();
                }
                if let Some(s) = new_settings {
                    group.post_policy = s.post_policy;
                    group.add_policy = s.add_policy;
                    group.max_members = s.max_members.max(group.member_count);
                }
                self.put_group(&group).await?;
                let emitted = self
                    .emit(&group, who, GroupChangeKind::Updated, &[], limits, now_ms)
                    .await?;
                (Vec::new(), emitted)
            }
            GroupChangeRequest::SetRole { user, role } => {
                let target = member(self.tx, group_id, *user)
                    .await?
                    .filter(|m| m.role() != GroupRole::None);
                let target_role = target.as_ref().map_or(GroupRole::None, |m| m.role());
                check(GroupAction::SetRole {
                    target: target_role,
                })?;
                let mut t = target.ok_or_else(|| corrupt("member", "checked, yet absent"))?;
                t.role = *role as i32;
                self.put_member(group_id, &t).await?;
                let affected = vec![t.member()];
                let emitted = self
                    .emit(
                        &group,
                        who,
                        GroupChangeKind::RoleChanged,
                        &affected,
                        limits,
                        now_ms,
                    )
                    .await?;
                (affected, emitted)
            }
            GroupChangeRequest::Transfer { user } => {
                let target = member(self.tx, group_id, *user)
                    .await?
                    .filter(|m| m.role() != GroupRole::None);
                let target_role = target.as_ref().map_or(GroupRole::None, |m| m.role());
                check(GroupAction::Transfer {
                    target: target_role,
                })?;
                let mut new_owner =
                    target.ok_or_else(|| corrupt("member", "checked, yet absent"))?;
                let mut old_owner = member(self.tx, group_id, group.owner_id)
                    .await?
                    .ok_or_else(|| corrupt("group", "its owner is no member"))?;
                new_owner.role = GroupRole::Owner as i32;
                old_owner.role = GroupRole::Admin as i32;
                self.put_member(group_id, &new_owner).await?;
                self.put_member(group_id, &old_owner).await?;
                group.owner_id = new_owner.user_id;
                group.owner_username = new_owner.username.clone();
                self.put_group(&group).await?;
                let affected = vec![new_owner.member(), old_owner.member()];
                let emitted = self
                    .emit(
                        &group,
                        who,
                        GroupChangeKind::OwnershipTransferred,
                        &affected,
                        limits,
                        now_ms,
                    )
                    .await?;
                (affected, emitted)
            }
            GroupChangeRequest::Dissolve => {
                check(GroupAction::Dissolve)?;
                group.dissolved = true;
                self.put_group(&group).await?;
                let emitted = self
                    .emit(&group, who, GroupChangeKind::Dissolved, &[], limits, now_ms)
                    .await?;
                (Vec::new(), emitted)
            }
        };
        let appended = self.flush().await?;
        Ok(outcome(&group, affected, emitted, appended))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_group(
        &mut self,
        owner: (UserId, &str),
        name: &str,
        description: &str,
        settings: &GroupSettings,
        members: &[(UserId, String)],
        now_ms: i64,
        limits: GroupLimits,
    ) -> Result<GroupOutcome> {
        let id = u(self
            .one(
                "UPDATE counters SET value = value + 1 WHERE name = 'group' RETURNING value",
                &[],
            )
            .await?
            .get(0));
        let count = members.len() + 1;
        let group = GroupRecord {
            id,
            name: name.to_string(),
            description: description.to_string(),
            post_policy: settings.post_policy,
            add_policy: settings.add_policy,
            max_members: settings.max_members,
            owner_id: owner.0,
            owner_username: owner.1.to_string(),
            member_count: count as u32,
            large: count > limits.large_threshold as usize,
            created_at_ms: now_ms,
            dissolved: false,
        };
        self.exec(
            &format!(
                "INSERT INTO groups ({GROUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &i(group.id),
                &group.name,
                &group.description,
                &group.post_policy,
                &group.add_policy,
                &i64::from(group.max_members),
                &i(group.owner_id),
                &group.owner_username,
                &i64::from(group.member_count),
                &group.large,
                &group.created_at_ms,
                &group.dissolved,
            ],
        )
        .await?;
        let joiners: Vec<_> = std::iter::once((owner.0, owner.1.to_string(), GroupRole::Owner))
            .chain(
                members
                    .iter()
                    .map(|(id, name)| (*id, name.clone(), GroupRole::Member)),
            )
            .collect();
        let all = self.join(&group, joiners, now_ms).await?;
        let emitted = self
            .emit(
                &group,
                owner,
                GroupChangeKind::Created,
                &all,
                limits,
                now_ms,
            )
            .await?;
        let appended = self.flush().await?;
        Ok(outcome(&group, all, emitted, appended))
    }

    async fn put_group(&self, g: &GroupRecord) -> Result<()> {
        self.exec(
            "UPDATE groups SET name = $2, description = $3, post_policy = $4, add_policy = $5, \
                 max_members = $6, owner_id = $7, owner_username = $8, member_count = $9, \
                 large = $10, dissolved = $11 WHERE id = $1",
            &[
                &i(g.id),
                &g.name,
                &g.description,
                &g.post_policy,
                &g.add_policy,
                &i64::from(g.max_members),
                &i(g.owner_id),
                &g.owner_username,
                &i64::from(g.member_count),
                &g.large,
                &g.dissolved,
            ],
        )
        .await?;
        Ok(())
    }

    async fn put_member(&self, group: u64, m: &MemberRecord) -> Result<()> {
        self.put_members(group, std::slice::from_ref(m)).await
    }

    /// Writes membership records, one statement for all of them, in
    /// ascending user id order (the order every writer locks member rows
    /// in). A user must not be listed twice.
    async fn put_members(&self, group: u64, members: &[MemberRecord]) -> Result<()> {
        let mut rows: Vec<&MemberRecord> = members.iter().collect();
        rows.sort_unstable_by_key(|m| m.user_id);
        assert!(
            rows.windows(2).all(|w| w[0].user_id != w[1].user_id),
            "a member written twice in one statement"
        );
        let col = |f: fn(&MemberRecord) -> i64| rows.iter().map(|m| f(m)).collect::<Vec<i64>>();
        let names: Vec<&str> = rows.iter().map(|m| m.username.as_str()).collect();
        let roles: Vec<i32> = rows.iter().map(|m| m.role).collect();
        self.exec(
            &format!(
                "INSERT INTO group_members (group_id, {MEMBER_COLUMNS}) \
                 SELECT $1, t.* FROM unnest($2::bigint[], $3::text[], $4::int[], $5::bigint[], \
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) AS t \
                 ON CONFLICT (group_id, user_id) DO UPDATE SET username = EXCLUDED.username, \
                     role = EXCLUDED.role, joined_at_ms = EXCLUDED.joined_at_ms, \
                     joined_after_conv = EXCLUDED.joined_after_conv, left_conv = EXCLUDED.left_conv, \
                     joined_after_stream = EXCLUDED.joined_after_stream, \
                     left_stream = EXCLUDED.left_stream"
            ),
            &[
                &i(group),
                &col(|m| i(m.user_id)),
                &names,
                &roles,
                &col(|m| m.joined_at_ms),
                &col(|m| i(m.joined_after_conv)),
                &col(|m| i(m.left_conv)),
                &col(|m| i(m.joined_after_stream)),
                &col(|m| i(m.left_stream)),
            ],
        )
        .await?;
        Ok(())
    }

    /// The membership records (former members' too) of those of `users`
    /// who have one, in one read.
    async fn members_among(
        &self,
        group: u64,
        users: &[UserId],
    ) -> Result<HashMap<UserId, MemberRecord>> {
        let ids: Vec<i64> = users.iter().map(|&x| i(x)).collect();
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = $1 AND user_id = ANY($2)"
        );
        Ok(self
            .query(&sql, &[&i(group), &ids])
            .await?
            .iter()
            .map(|r| {
                let m = member_row(r);
                (m.user_id, m)
            })
            .collect())
    }

    /// Makes `joiners` members from now on: they see what is sent after
    /// this. Two statements whatever their number (membership records,
    /// then fresh summaries); a user listed twice joins once, with the
    /// first role given. Returns the members in the order given.
    async fn join(
        &mut self,
        group: &GroupRecord,
        joiners: Vec<(UserId, String, GroupRole)>,
        now_ms: i64,
    ) -> Result<Vec<Member>> {
        let conv = groups::conversation_id(group.id);
        // Sends in this group wait for our lock, so the head is final.
        let joined_after_conv = self.conv_head(&conv).await?;
        // Small groups reach members through their logs; should the group
        // become large later, everything in its stream is after this join.
        // (Only writers holding this group's lock append its events to the
        // stream, so one read serves every joiner.)
        let joined_after_stream = if group.large {
            self.stream_head().await?
        } else {
            0
        };
        let mut seen = HashSet::with_capacity(joiners.len());
        let records: Vec<MemberRecord> = joiners
            .into_iter()
            .filter(|(user, _, _)| seen.insert(*user))
            .map(|(user, username, role)| MemberRecord {
                user_id: user,
                username,
                role: role as i32,
                joined_at_ms: now_ms,
                joined_after_conv,
                left_conv: 0,
                joined_after_stream,
                left_stream: 0,
            })
            .collect();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.put_members(group.id, &records).await?;
        // Fresh summaries, read up to the join, in ascending user order.
        let mut ids: Vec<i64> = records.iter().map(|m| i(m.user_id)).collect();
        ids.sort_unstable();
        self.exec(
            "INSERT INTO conv_states (user_id, conversation_id, read_up_to) \
             SELECT t.u, $2, $3 FROM unnest($1::bigint[]) AS t(u) ORDER BY t.u \
             ON CONFLICT (user_id, conversation_id) DO UPDATE SET peer_user_id = 0, \
                 peer_username = '', last_message = NULL, last_conv_seq = 0, unread_count = 0, \
                 read_up_to = $3",
            &[&ids, &conv, &i(joined_after_conv)],
        )
        .await?;
        Ok(records.iter().map(MemberRecord::member).collect())
    }

    /// Removes `targets` (removal or leaving): they get the event, then see
    /// nothing more.
    async fn depart(
        &mut self,
        group: &mut GroupRecord,
        who: (UserId, &str),
        targets: Vec<MemberRecord>,
        kind: GroupChangeKind,
        limits: GroupLimits,
        now_ms: i64,
    ) -> Result<(Vec<Member>, Emitted)> {
        group.member_count = group.member_count.saturating_sub(targets.len() as u32);
        self.put_group(group).await?;
        let affected: Vec<Member> = targets
            .iter()
            .map(|t| Member {
                role: GroupRole::None as i32,
                ..t.member()
            })
            .collect();
        // Emitted while the departing are still members, so they get it.
        let emitted = self
            .emit(group, who, kind, &affected, limits, now_ms)
            .await?;
        let conv = groups::conversation_id(group.id);
        let left_conv = self.conv_head(&conv).await?;
        let left_stream = if group.large {
            emitted.stream_seq
        } else {
            self.stream_head().await?
        };
        let left: Vec<MemberRecord> = targets
            .into_iter()
            .map(|t| MemberRecord {
                role: GroupRole::None as i32,
                left_conv,
                left_stream,
                ..t
            })
            .collect();
        if !left.is_empty() {
            self.put_members(group.id, &left).await?;
        }
        Ok((affected, emitted))
    }

    /// Writes GroupChange events (split so none lists too many members).
    async fn emit(
        &mut self,
        group: &GroupRecord,
        who: (UserId, &str),
        kind: GroupChangeKind,
        members: &[Member],
        limits: GroupLimits,
        now_ms: i64,
    ) -> Result<Emitted> {
        let audience = if group.large {
            Audience::Stream(group.id)
        } else {
            Audience::Logs(member_ids(self.tx, group.id).await?)
        };
        let mut out = Emitted::default();
        for change in groups::change_events(group, who, kind, members, limits.change_members_max) {
            let stream = self
                .deliver(&audience, now_ms, &event::Kind::GroupChange(change))
                .await?;
            if let Some((seq, users)) = stream {
                out.stream_seq = seq;
                out.notice.get_or_insert(users);
            }
        }
        Ok(out)
    }
}

fn outcome(
    group: &GroupRecord,
    affected: Vec<Member>,
    emitted: Emitted,
    appended: Vec<pigeon_core::store::Appended>,
) -> GroupOutcome {
    // Large groups: tell the members and anyone who just left (they read
    // their own departure from the stream).
    let notice = emitted.notice.map(|members| {
        let mut all: Vec<UserId> = members.to_vec();
        all.extend(affected.iter().map(|m| m.user_id));
        Arc::<[UserId]>::from(all)
    });
    GroupOutcome {
        group: group.info(),
        affected,
        appended,
        stream_notice: notice,
    }
}
