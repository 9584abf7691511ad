//! Administration: the account list and changes, disabled accounts getting
//! no sessions, revoking all of a user's sessions in bounded jobs, totals,
//! the system actor's owner authority in groups.

use pigeon_core::store::{
    GroupChangeRequest, GroupLimits, GroupOp, NewSession, SYSTEM_ACTOR, Totals, UserChange,
};
use pigeon_core::{CoreError, StoreError};
use pigeon_proto::v1::{GroupRole, GroupSettings};

use crate::{Factory, Settings};

/// A session of `user` with token hash `token`.
pub fn session(user: u64, token: &str) -> NewSession {
    NewSession {
        token_hash: token.to_string(),
        user_id: user,
        device_name: "test".into(),
        created_at_ms: 1,
        expires_at_ms: i64::MAX,
    }
}

/// The domain error of a refusal (panics on anything else).
pub fn refusal<T: std::fmt::Debug>(r: Result<T, StoreError>) -> CoreError {
    match r {
        Err(StoreError::Refused(e)) => *e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Group limits with a threshold of 100.
pub fn limits() -> GroupLimits {
    GroupLimits {
        large_threshold: 100,
        members_max: 1000,
        change_members_max: 100,
    }
}

/// A group operation at time 10.
pub fn op(actor: (u64, &str), group_id: u64, change: GroupChangeRequest) -> GroupOp {
    GroupOp {
        actor: actor.0,
        actor_username: actor.1.to_string(),
        group_id,
        change,
        now_ms: 10,
        limits: limits(),
    }
}

/// Creates a group "g" of at most 10 members.
pub fn create(members: Vec<(u64, String)>) -> GroupChangeRequest {
    GroupChangeRequest::Create {
        name: "g".into(),
        description: String::new(),
        settings: GroupSettings {
            max_members: 10,
            ..Default::default()
        },
        members,
    }
}

/// Pages by id with a "more" flag; disable, enable and a new password are
/// stored; an unknown id is refused.
pub async fn users_list_in_id_pages_and_change(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    for i in 1..=5 {
        b.store
            .create_user(&format!("user{i}"), "h", i)
            .await
            .unwrap();
    }
    let ids = |users: &[pigeon_core::store::UserRecord]| -> Vec<u64> {
        users.iter().map(|u| u.id).collect()
    };
    let (page, more) = b.store.list_users(0, 2).await.unwrap();
    assert_eq!((ids(&page), more), (vec![1, 2], true));
    let (page, more) = b.store.list_users(2, 3).await.unwrap();
    assert_eq!((ids(&page), more), (vec![3, 4, 5], false));
    let (page, more) = b.store.list_users(5, 3).await.unwrap();
    assert_eq!((page.len(), more), (0, false));
    assert!(b.store.list_users(u64::MAX, 3).await.unwrap().0.is_empty());

    let u = b.store.update_user(3, UserChange::Disable).await.unwrap();
    assert!(u.disabled);
    assert!(
        b.store
            .user_by_name("user3")
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    assert!(!b.store.user_by_id(2).await.unwrap().unwrap().disabled);
    b.store.update_user(3, UserChange::Enable).await.unwrap();
    assert!(!b.store.user_by_id(3).await.unwrap().unwrap().disabled);
    b.store
        .update_user(3, UserChange::PasswordHash("h2".into()))
        .await
        .unwrap();
    assert_eq!(
        b.store.user_by_id(3).await.unwrap().unwrap().password_hash,
        "h2"
    );
    assert!(matches!(
        refusal(b.store.update_user(99, UserChange::Disable).await),
        CoreError::UserNotFound(_)
    ));
}

/// A session racing a disable either is refused inside its write or is
/// caught by revoking all; after the disable every new session is refused;
/// enabled again, the account gets one.
pub async fn disabled_users_get_no_sessions(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let u = b.store.create_user("alice", "h", 1).await.unwrap();
    let (disabled, refused) = tokio::join!(b.store.update_user(u.id, UserChange::Disable), async {
        // Queued right behind the disable.
        tokio::task::yield_now().await;
        b.store.create_session(session(u.id, "t-late")).await
    });
    disabled.unwrap();
    if let Err(e) = refused {
        assert!(matches!(e, StoreError::Refused(c) if matches!(*c, CoreError::AccountDisabled)));
    } else {
        // The session won the race; revoking all catches it.
        assert_eq!(
            b.store.revoke_user_sessions(u.id, 10).await.unwrap(),
            (1, false)
        );
    }
    assert!(matches!(
        refusal(b.store.create_session(session(u.id, "t1")).await),
        CoreError::AccountDisabled
    ));
    assert!(b.store.session("t1").await.unwrap().is_none());
    b.store.update_user(u.id, UserChange::Enable).await.unwrap();
    b.store.create_session(session(u.id, "t2")).await.unwrap();
}

/// Revoking all takes jobs of at most `limit` sessions until none are
/// left, skips sessions revoked already, and leaves other users alone.
pub async fn revoking_all_sessions_takes_bounded_jobs(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let alice = b.store.create_user("alice", "h", 1).await.unwrap();
    let bob = b.store.create_user("bob", "h", 1).await.unwrap();
    for i in 0..5 {
        b.store
            .create_session(session(alice.id, &format!("a{i}")))
            .await
            .unwrap();
    }
    b.store.create_session(session(bob.id, "b0")).await.unwrap();
    b.store.revoke_session("a0").await.unwrap();

    let mut jobs = Vec::new();
    loop {
        let (n, more) = b.store.revoke_user_sessions(alice.id, 2).await.unwrap();
        jobs.push(n);
        if !more {
            break;
        }
        assert!(jobs.len() < 10, "revoking all ends");
    }
    assert_eq!(jobs.iter().sum::<usize>(), 4, "{jobs:?}");
    assert!(jobs.iter().all(|&n| n <= 2));
    for i in 0..5 {
        let s = b.store.session(&format!("a{i}")).await.unwrap().unwrap();
        assert!(s.revoked, "a{i}");
    }
    assert!(!b.store.session("b0").await.unwrap().unwrap().revoked);
    assert_eq!(
        b.store.revoke_user_sessions(alice.id, 2).await.unwrap(),
        (0, false)
    );
    // New sessions after a revocation are indexed too.
    b.store
        .create_session(session(alice.id, "a5"))
        .await
        .unwrap();
    assert_eq!(
        b.store.revoke_user_sessions(alice.id, 2).await.unwrap(),
        (1, false)
    );
}

/// Accounts and groups ever created.
pub async fn totals_count_users_and_groups(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    assert_eq!(b.store.totals().await.unwrap(), Totals::default());
    let a = b.store.create_user("alice", "h", 1).await.unwrap();
    b.store.create_user("bob", "h", 1).await.unwrap();
    b.store
        .group_op(op((a.id, "alice"), 0, create(vec![])))
        .await
        .unwrap();
    assert_eq!(
        b.store.totals().await.unwrap(),
        Totals {
            users: 2,
            groups: 1
        }
    );
}

/// The system actor adds, removes (not the owner), transfers and
/// dissolves like the owner, but cannot create a group; its changes name
/// actor 0.
pub async fn the_system_actor_has_the_owners_authority(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let mut users = Vec::new();
    for name in ["owner", "mem1", "mem2"] {
        users.push(b.store.create_user(name, "h", 1).await.unwrap());
    }
    let [owner, m1, m2] = [&users[0], &users[1], &users[2]];
    let system = (SYSTEM_ACTOR, "");
    assert!(matches!(
        refusal(b.store.group_op(op(system, 0, create(vec![]))).await),
        CoreError::InvalidArgument(_)
    ));
    let g = b
        .store
        .group_op(op((owner.id, "owner"), 0, create(vec![])))
        .await
        .unwrap();
    let gid = pigeon_core::groups::parse_group_id(&g.group.conversation_id).unwrap();

    let added = b
        .store
        .group_op(op(
            system,
            gid,
            GroupChangeRequest::AddMembers(vec![(m1.id, "mem1".into()), (m2.id, "mem2".into())]),
        ))
        .await
        .unwrap();
    assert_eq!(added.group.member_count, 3);
    assert_eq!(added.appended.len(), 3, "every member's log");
    assert!(matches!(
        refusal(
            b.store
                .group_op(op(
                    system,
                    gid,
                    GroupChangeRequest::RemoveMembers(vec![owner.id])
                ))
                .await
        ),
        CoreError::Forbidden(_)
    ));
    b.store
        .group_op(op(
            system,
            gid,
            GroupChangeRequest::RemoveMembers(vec![m2.id]),
        ))
        .await
        .unwrap();
    b.store
        .group_op(op(
            system,
            gid,
            GroupChangeRequest::Transfer { user: m1.id },
        ))
        .await
        .unwrap();
    let role = |u: u64| {
        let store = b.store.clone();
        async move { store.member(gid, u).await.unwrap().unwrap().role() }
    };
    assert_eq!(role(m1.id).await, GroupRole::Owner);
    assert_eq!(role(owner.id).await, GroupRole::Admin);
    assert_eq!(role(m2.id).await, GroupRole::None);
    b.store
        .group_op(op(system, gid, GroupChangeRequest::Dissolve))
        .await
        .unwrap();
    assert!(b.store.group(gid).await.unwrap().unwrap().dissolved);
    assert!(b.store.member(gid, SYSTEM_ACTOR).await.unwrap().is_none());
}
