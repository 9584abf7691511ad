//! Group rules: who may do what, as pure functions of the actor's role, the
//! target's role and the group's settings. The store calls them inside its
//! single committer, so a check and the change it allows are atomic.

use pigeon_proto::v1::{
    AddPolicy, GroupChange, GroupChangeKind, GroupRole, GroupSettings, Member, PostPolicy,
};

use crate::UserId;
use crate::error::CoreError;
use crate::store::GroupRecord;

/// Something a user tries to do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAction {
    /// Send a message.
    Post,
    /// Read the group's state, members and history.
    Read,
    /// Add members.
    AddMembers,
    /// Remove a member who has role `target`.
    Remove {
        /// The role of the member to remove.
        target: GroupRole,
    },
    /// Leave the group.
    Leave,
    /// Change name, description or settings.
    Update,
    /// Change the role of a member who has role `target`.
    SetRole {
        /// The member's current role.
        target: GroupRole,
    },
    /// Hand ownership to a member who has role `target`.
    Transfer {
        /// The member's current role.
        target: GroupRole,
    },
    /// End the group.
    Dissolve,
}

/// Whether `actor` (NONE for a non-member or former member) may do `action`
/// in a group with `settings`, dissolved or not.
pub fn check(
    actor: GroupRole,
    action: GroupAction,
    settings: &GroupSettings,
    dissolved: bool,
) -> Result<(), CoreError> {
    use GroupRole::{Admin, Member, None as NoRole, Owner};
    let deny = |why: &str| Err(CoreError::Forbidden(why.to_string()));
    if actor == NoRole {
        return deny("you are not a member of this group");
    }
    if dissolved && action != GroupAction::Read {
        return deny("the group was dissolved");
    }
    let admin = matches!(actor, Admin | Owner);
    match action {
        GroupAction::Read => Ok(()),
        GroupAction::Post => {
            if settings.post_policy() == PostPolicy::Admins && !admin {
                deny("only admins may post in this group")
            } else {
                Ok(())
            }
        }
        GroupAction::AddMembers => {
            if admin || settings.add_policy() == AddPolicy::Everyone {
                Ok(())
            } else {
                deny("only admins may add members to this group")
            }
        }
        GroupAction::Remove { target } => match (actor, target) {
            (_, NoRole) => Err(CoreError::InvalidArgument(
                "that user is not a member".into(),
            )),
            (_, Owner) => deny("the owner cannot be removed"),
            (Owner, _) => Ok(()),
            (Admin, Member) => Ok(()),
            (Admin, Admin) => deny("only the owner may remove admins"),
            _ => deny("only admins may remove members"),
        },
        GroupAction::Leave => {
            if actor == Owner {
                deny("the owner must transfer ownership or dissolve the group before leaving")
            } else {
                Ok(())
            }
        }
        GroupAction::Update => {
            if admin {
                Ok(())
            } else {
                deny("only admins may change the group")
            }
        }
        GroupAction::SetRole { target } => match (actor, target) {
            (Owner, Member | Admin) => Ok(()),
            (Owner, NoRole) => Err(CoreError::InvalidArgument(
                "that user is not a member".into(),
            )),
            (Owner, Owner) => deny("use transfer to change the owner"),
            _ => deny("only the owner may change roles"),
        },
        GroupAction::Transfer { target } => match (actor, target) {
            (Owner, Member | Admin) => Ok(()),
            (Owner, NoRole) => Err(CoreError::InvalidArgument(
                "that user is not a member".into(),
            )),
            (Owner, Owner) => Err(CoreError::InvalidArgument(
                "you own the group already".into(),
            )),
            _ => deny("only the owner may transfer the group"),
        },
        GroupAction::Dissolve => {
            if actor == Owner {
                Ok(())
            } else {
                deny("only the owner may dissolve the group")
            }
        }
    }
}

/// Group name bounds, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 128;
/// Group description bound, in bytes.
pub const GROUP_DESCRIPTION_BYTES_MAX: usize = 2048;

/// Checks a group name and description.
pub fn validate_profile(name: Option<&str>, description: Option<&str>) -> Result<(), CoreError> {
    if let Some(n) = name
        && (n.trim().is_empty() || n.len() > GROUP_NAME_BYTES_MAX)
    {
        return Err(CoreError::InvalidArgument(format!(
            "a group name is 1 to {GROUP_NAME_BYTES_MAX} bytes"
        )));
    }
    if let Some(d) = description
        && d.len() > GROUP_DESCRIPTION_BYTES_MAX
    {
        return Err(CoreError::InvalidArgument(format!(
            "a group description is at most {GROUP_DESCRIPTION_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// A group id inside a conversation id `g:<id>`.
pub fn parse_group_id(conversation_id: &str) -> Option<u64> {
    let digits = conversation_id.strip_prefix("g:")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The conversation id of group `id`.
pub fn conversation_id(id: u64) -> String {
    format!("g:{id}")
}

/// The `GroupChange` events one change of `group` by `who` makes: the
/// members it names in chunks of at most `change_members_max` (a change
/// naming thousands of members is several events, each within the frame
/// limit), or one event naming none. Every event carries the group as it
/// is after the change.
pub fn change_events(
    group: &GroupRecord,
    who: (UserId, &str),
    kind: GroupChangeKind,
    members: &[Member],
    change_members_max: usize,
) -> Vec<GroupChange> {
    let chunks: Vec<&[Member]> = if members.is_empty() {
        vec![&[]]
    } else {
        members.chunks(change_members_max.max(1)).collect()
    };
    chunks
        .into_iter()
        .map(|chunk| GroupChange {
            conversation_id: conversation_id(group.id),
            actor_id: who.0,
            actor_username: who.1.to_string(),
            kind: kind as i32,
            members: chunk.to_vec(),
            group: Some(group.info()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use GroupRole::{Admin, Member, None as NoRole, Owner};

    fn settings(post: PostPolicy, add: AddPolicy) -> GroupSettings {
        GroupSettings {
            post_policy: post as i32,
            add_policy: add as i32,
            max_members: 0,
        }
    }

    /// The whole matrix of actors against actions for default settings,
    /// announcement settings and open adding.
    #[test]
    fn permission_matrix() {
        let open = settings(PostPolicy::Everyone, AddPolicy::Admins);
        let announce = settings(PostPolicy::Admins, AddPolicy::Admins);
        let anyone_adds = settings(PostPolicy::Everyone, AddPolicy::Everyone);
        let ok = |actor, action, s: &GroupSettings| check(actor, action, s, false).is_ok();
        // rows: owner, admin, member, non-member
        let cases: Vec<(GroupAction, &GroupSettings, [bool; 4])> = vec![
            (GroupAction::Read, &open, [true, true, true, false]),
            (GroupAction::Post, &open, [true, true, true, false]),
            (GroupAction::Post, &announce, [true, true, false, false]),
            (GroupAction::AddMembers, &open, [true, true, false, false]),
            (
                GroupAction::AddMembers,
                &anyone_adds,
                [true, true, true, false],
            ),
            (
                GroupAction::Remove { target: Member },
                &open,
                [true, true, false, false],
            ),
            (
                GroupAction::Remove { target: Admin },
                &open,
                [true, false, false, false],
            ),
            (
                GroupAction::Remove { target: Owner },
                &open,
                [false, false, false, false],
            ),
            (GroupAction::Leave, &open, [false, true, true, false]),
            (GroupAction::Update, &open, [true, true, false, false]),
            (
                GroupAction::SetRole { target: Member },
                &open,
                [true, false, false, false],
            ),
            (
                GroupAction::SetRole { target: Admin },
                &open,
                [true, false, false, false],
            ),
            (
                GroupAction::Transfer { target: Member },
                &open,
                [true, false, false, false],
            ),
            (GroupAction::Dissolve, &open, [true, false, false, false]),
        ];
        for (action, s, expected) in cases {
            let got = [Owner, Admin, Member, NoRole].map(|actor| ok(actor, action, s));
            assert_eq!(got, expected, "{action:?}");
        }
        // After dissolution only reading remains.
        assert!(check(Owner, GroupAction::Read, &open, true).is_ok());
        assert!(check(Owner, GroupAction::Post, &open, true).is_err());
    }

    /// Group conversation ids are canonical.
    #[test]
    fn group_ids() {
        assert_eq!(parse_group_id(&conversation_id(42)), Some(42));
        for bad in ["g:", "g:0", "g:042", "g:x", "d:1:2", "g:-1"] {
            assert_eq!(parse_group_id(bad), None, "{bad}");
        }
    }

    /// Checks a change's members are split into events of at most the
    /// limit, in order, and a change naming nobody is one event.
    #[test]
    fn change_events_are_chunked() {
        let group = GroupRecord {
            id: 7,
            name: "g".into(),
            description: String::new(),
            post_policy: 0,
            add_policy: 0,
            max_members: 10,
            owner_id: 1,
            owner_username: "o".into(),
            member_count: 6,
            large: false,
            created_at_ms: 5,
            dissolved: false,
        };
        let members: Vec<pigeon_proto::v1::Member> = (1..=5)
            .map(|id| pigeon_proto::v1::Member {
                user_id: id,
                ..Default::default()
            })
            .collect();
        let events = change_events(&group, (1, "o"), GroupChangeKind::MembersAdded, &members, 2);
        let ids: Vec<Vec<u64>> = events
            .iter()
            .map(|e| e.members.iter().map(|m| m.user_id).collect())
            .collect();
        assert_eq!(ids, [vec![1, 2], vec![3, 4], vec![5]]);
        assert!(events.iter().all(|e| e.conversation_id == "g:7"
            && e.actor_username == "o"
            && e.group.as_ref().is_some_and(|g| g.member_count == 6)));
        let none = change_events(&group, (1, "o"), GroupChangeKind::Updated, &[], 2);
        assert_eq!(none.len(), 1);
        assert!(none[0].members.is_empty());
    }
}
