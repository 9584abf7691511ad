//! Groups: small groups fanned out to members' logs, large groups stored
//! once in the shared stream and read at sync, membership windows (a
//! removed member gets nothing after removal, a new one nothing before
//! joining), and feature flags in the system stream everyone reads.

use std::sync::Arc;

use pigeon_core::Store;
use pigeon_core::store::{
    AppendMessage, GroupChangeRequest, GroupLimits, GroupOp, LogFrom, MessageChange,
    MessageChangeKind, UserRecord,
};
use pigeon_proto::v1::{Content, Event, GroupChangeKind, GroupRole, GroupSettings, event};

use crate::{Factory, Settings, hq};

/// Group limits with the given large-group threshold.
pub fn group_limits(large_threshold: u32) -> GroupLimits {
    GroupLimits {
        large_threshold,
        members_max: 1000,
        change_members_max: 100,
    }
}

/// A group operation by `actor`.
pub fn group_op(
    actor: &UserRecord,
    group_id: u64,
    change: GroupChangeRequest,
    limits: GroupLimits,
) -> GroupOp {
    GroupOp {
        actor: actor.id,
        actor_username: actor.username.clone(),
        group_id,
        change,
        now_ms: 10,
        limits,
    }
}

/// A message from `sender` to group `group_id`.
pub fn group_msg(sender: &UserRecord, group_id: u64, id: &str, text: &str) -> AppendMessage {
    AppendMessage {
        sender_id: sender.id,
        sender_username: sender.username.clone(),
        sender_device_id: 1,
        client_msg_id: id.into(),
        conversation_id: format!("g:{group_id}"),
        group_id,
        participants: Vec::new(),
        content: Content {
            text: text.into(),
            ..Default::default()
        },
        now_ms: 1000,
        hooks: Vec::new(),
    }
}

/// Creates one account per name.
pub async fn users(store: &Arc<dyn Store>, names: &[&str]) -> Vec<UserRecord> {
    let mut out = Vec::new();
    for n in names {
        out.push(store.create_user(n, "h", 1).await.unwrap());
    }
    out
}

/// A group with `owner` and `members`, under `limits`; returns its id.
pub async fn make_group(
    store: &Arc<dyn Store>,
    owner: &UserRecord,
    members: &[&UserRecord],
    limits: GroupLimits,
) -> u64 {
    let create = GroupChangeRequest::Create {
        name: "g".into(),
        description: String::new(),
        settings: GroupSettings {
            max_members: 100,
            ..Default::default()
        },
        members: members.iter().map(|m| (m.id, m.username.clone())).collect(),
    };
    let out = store
        .group_op(group_op(owner, 0, create, limits))
        .await
        .unwrap();
    pigeon_core::groups::parse_group_id(&out.group.conversation_id).unwrap()
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::Message(m)) => {
                Some(m.content.as_ref().map_or(String::new(), |c| c.text.clone()))
            }
            _ => None,
        })
        .collect()
}

fn change_kinds(events: &[Event]) -> Vec<GroupChangeKind> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::GroupChange(c)) => Some(c.kind()),
            _ => None,
        })
        .collect()
}

async fn log(store: &Arc<dyn Store>, user: u64) -> Vec<Event> {
    store
        .read_log(user, LogFrom::Oldest, 1000, 1 << 24)
        .await
        .unwrap()
        .events
}

async fn streams(store: &Arc<dyn Store>, user: u64, after: u64) -> Vec<Event> {
    store
        .read_streams(user, after, 1000, 1 << 24)
        .await
        .unwrap()
        .events
}

/// Builds a small group, sends, removes a member and adds a new one, and
/// checks who got which message and change in their logs, the member
/// records, listing, summaries, contacts and shared conversations.
pub async fn small_groups_fan_out_within_membership_windows(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["owner", "m1", "m2", "late"]).await;
    let (o, m1, m2, late) = (&u[0], &u[1], &u[2], &u[3]);
    let lim = group_limits(100);
    let gid = make_group(s, o, &[m1, m2], lim).await;
    let conv = format!("g:{gid}");
    for x in [o, m1, m2] {
        assert_eq!(
            change_kinds(&log(s, x.id).await),
            vec![GroupChangeKind::Created]
        );
    }
    let before = s
        .append_message(group_msg(m1, gid, "b", "before"))
        .await
        .unwrap();
    assert_eq!(before.appended.len(), 3, "every member's log");
    assert!(before.stream_notice.is_none());
    let (page, more) = s.list_members(gid, 0, 2).await.unwrap();
    assert_eq!((page.len(), more), (2, true));
    assert_eq!(
        s.list_members(gid, page[1].user_id, 2)
            .await
            .unwrap()
            .0
            .len(),
        1
    );

    s.group_op(group_op(
        o,
        gid,
        GroupChangeRequest::RemoveMembers(vec![m2.id]),
        lim,
    ))
    .await
    .unwrap();
    assert_eq!(
        change_kinds(&log(s, m2.id).await).last(),
        Some(&GroupChangeKind::MembersRemoved),
        "the removed member hears of it"
    );
    let gone = s.member(gid, m2.id).await.unwrap().unwrap();
    assert_eq!(
        (gone.role(), gone.left_conv),
        (GroupRole::None, before.conv_seq)
    );
    assert!(matches!(
        s.append_message(group_msg(m2, gid, "x", "not a member"))
            .await,
        Err(pigeon_core::StoreError::Refused(_))
    ));
    s.append_message(group_msg(o, gid, "a", "after"))
        .await
        .unwrap();
    assert_eq!(texts(&log(s, m2.id).await), vec!["before"]);
    assert_eq!(texts(&log(s, m1.id).await), vec!["before", "after"]);

    let added = s
        .group_op(group_op(
            o,
            gid,
            GroupChangeRequest::AddMembers(vec![(late.id, "late".into())]),
            lim,
        ))
        .await
        .unwrap();
    assert_eq!(added.group.member_count, 3);
    s.append_message(group_msg(o, gid, "l", "later"))
        .await
        .unwrap();
    let late_log = log(s, late.id).await;
    assert_eq!(change_kinds(&late_log), vec![GroupChangeKind::MembersAdded]);
    assert_eq!(
        texts(&late_log),
        vec!["later"],
        "nothing from before joining"
    );
    assert_eq!(
        s.history(hq(&conv, 0, 10, 1 << 20)).await.unwrap().0.len(),
        3
    );

    let m1_view = s.conversation(m1.id, &conv).await.unwrap().unwrap();
    assert_eq!(m1_view.unread_count, 2, "after and later, not their own");
    let listed = s.list_conversations(m1.id, 10).await.unwrap();
    assert_eq!(listed[0].my_role, GroupRole::Member as i32);
    assert!(
        listed[0]
            .group
            .as_ref()
            .is_some_and(|g| g.member_count == 3)
    );

    let mut contacts = s.contacts(o.id, 10).await.unwrap();
    contacts.sort_unstable();
    assert_eq!(contacts, vec![m1.id, late.id]);
    assert!(s.shares_conversation(o.id, m1.id).await.unwrap());
    assert!(!s.shares_conversation(o.id, m2.id).await.unwrap());
}

/// Builds a large group (threshold 2) and checks messages and changes are
/// written once to the shared stream, not to logs, and that each member
/// reads exactly their membership window, in stream order, in pages.
pub async fn large_groups_are_read_from_the_stream_within_windows(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["owner", "m1", "m2", "late"]).await;
    let (o, m1, m2, late) = (&u[0], &u[1], &u[2], &u[3]);
    let lim = group_limits(2);
    let gid = make_group(s, o, &[m1, m2], lim).await;
    let conv = format!("g:{gid}");
    assert!(s.group(gid).await.unwrap().unwrap().large);
    let one = s
        .append_message(group_msg(m1, gid, "1", "one"))
        .await
        .unwrap();
    assert!(one.appended.is_empty(), "nothing per member");
    assert_eq!(one.stream_notice.as_ref().map(|n| n.len()), Some(3));
    assert!(log(s, o.id).await.is_empty());
    let first = s.read_streams(o.id, 0, 1000, 1 << 24).await.unwrap();
    assert_eq!(texts(&first.events), vec!["one"]);
    assert!(first.events.iter().all(|e| e.seq == 0 && e.group_seq > 0));
    assert!(
        first
            .events
            .windows(2)
            .all(|w| w[0].group_seq < w[1].group_seq)
    );
    let p1 = first.position;

    s.group_op(group_op(
        o,
        gid,
        GroupChangeRequest::RemoveMembers(vec![m2.id]),
        lim,
    ))
    .await
    .unwrap();
    s.append_message(group_msg(o, gid, "2", "two"))
        .await
        .unwrap();
    s.group_op(group_op(
        o,
        gid,
        GroupChangeRequest::AddMembers(vec![(late.id, "late".into())]),
        lim,
    ))
    .await
    .unwrap();
    s.append_message(group_msg(m1, gid, "3", "three"))
        .await
        .unwrap();
    let recall = MessageChange {
        actor: m1.id,
        conversation_id: conv.clone(),
        group_id: gid,
        participants: Vec::new(),
        conv_seq: one.conv_seq,
        kind: MessageChangeKind::Recall {
            window_ms: i64::MAX / 4,
        },
        now_ms: 2000,
    };
    let recalled = s.change_message(recall).await.unwrap();
    assert!(recalled.appended.is_empty() && recalled.stream_notice.is_some());

    let gone = streams(s, m2.id, p1).await;
    assert_eq!(change_kinds(&gone), vec![GroupChangeKind::MembersRemoved]);
    assert!(texts(&gone).is_empty(), "nothing after the removal");
    let owner_all = streams(s, o.id, 0).await;
    assert_eq!(texts(&owner_all), vec!["one", "two", "three"]);
    assert!(
        owner_all
            .iter()
            .any(|e| matches!(e.kind, Some(event::Kind::MessageRecalled(_)))),
        "members see the recall"
    );
    let newcomer = streams(s, late.id, 0).await;
    assert_eq!(change_kinds(&newcomer), vec![GroupChangeKind::MembersAdded]);
    assert_eq!(texts(&newcomer), vec!["three"]);
    assert!(
        !newcomer
            .iter()
            .any(|e| matches!(e.kind, Some(event::Kind::MessageRecalled(_)))),
        "a recall from before joining is not theirs"
    );

    // Pages of one event continue where the last stopped.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let r = s.read_streams(o.id, after, 1, 1 << 24).await.unwrap();
        paged.extend(r.events);
        assert!(r.position >= after);
        after = r.position;
        if !r.has_more {
            break;
        }
    }
    assert_eq!(paged, owner_all);

    let late_view = s.list_conversations(late.id, 10).await.unwrap();
    assert_eq!(late_view[0].unread_count, 1);
    assert_eq!(
        late_view[0]
            .last_message
            .as_ref()
            .unwrap()
            .content
            .as_ref()
            .unwrap()
            .text,
        "three"
    );
    let owner_view = s.conversation(o.id, &conv).await.unwrap().unwrap();
    assert!(owner_view.read_up_to >= 2, "the sender has read their own");
}

/// Sets and removes a feature flag and checks the list and that every
/// user, in groups or not, reads a FlagsChanged marker for each change.
pub async fn flags_reach_everyone_through_the_system_stream(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["alice"]).await;
    let flag = pigeon_core::flags::Flag {
        name: "beta".into(),
        percent: 50,
        allow: vec!["alice".into()],
        updated_at_ms: 5,
    };
    s.set_flag("beta", Some(flag.clone()), 5).await.unwrap();
    assert_eq!(s.flags().await.unwrap(), vec![flag]);
    let r = s.read_streams(u[0].id, 0, 100, 1 << 20).await.unwrap();
    assert_eq!(r.events.len(), 1);
    assert!(matches!(
        r.events[0].kind,
        Some(event::Kind::FlagsChanged(_))
    ));
    s.set_flag("beta", None, 6).await.unwrap();
    assert!(s.flags().await.unwrap().is_empty());
    let next = s
        .read_streams(u[0].id, r.position, 100, 1 << 20)
        .await
        .unwrap();
    assert_eq!(next.events.len(), 1);
    assert!(next.position > r.position);
    assert!(
        s.read_streams(12345, 0, 100, 1 << 20)
            .await
            .unwrap()
            .events
            .len()
            == 2,
        "even a user in no group"
    );
}
