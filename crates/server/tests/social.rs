//! Receipts, unread counts, recall, edit and delete across two devices of
//! one user; presence and typing reaching online peers and nobody else;
//! blocking.

mod common;

use std::time::Duration;

use common::*;
use pigeon_client::v1::{self, ErrorCode, PresenceState, ReceiptKind, event, frame::Body};
use pigeon_client::{Connection, text as content, to_group, to_user};

async fn device(url: &str, name: &str) -> Connection {
    connect(url, &login(url, name, "test").await).await
}

/// Every event of a kind the test picks out.
fn pick<T>(events: &[v1::Event], f: impl Fn(&event::Kind) -> Option<T>) -> Vec<T> {
    events
        .iter()
        .filter_map(|e| e.kind.as_ref().and_then(&f))
        .collect()
}

/// Bob reads on one device: alice sees delivered and read receipts, bob's
/// other device sees the read marker and the same unread count; alice's
/// edit and recall reach both of bob's devices and bob's history; bob's
/// delete-for-me hides a message on his devices only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_unread_recall_edit_across_two_devices() {
    let server = Server::start("recall_window_secs = 2");
    let url = server.tcp_url();
    register_many(&url, &["alice".into(), "bob".into(), "eve".into()]).await;
    let alice = device(&url, "alice").await;
    let (b1, b2) = (device(&url, "bob").await, device(&url, "bob").await);
    let mut acks = Vec::new();
    for i in 1..=3 {
        acks.push(
            alice
                .send(
                    &format!("a{i}"),
                    to_user("bob"),
                    content(&format!("msg {i}")),
                )
                .await
                .unwrap(),
        );
    }
    let conv = acks[0].conversation_id.clone();
    let (got, _) = sync_all(&b1, &[]).await;
    assert_eq!(texts(&got), vec!["msg 1", "msg 2", "msg 3"]);

    // Delivered (b1 synced) then read up to the second message.
    let read = b1.mark_read(&conv, acks[1].conv_seq).await.unwrap();
    assert_eq!((read.read_up_to, read.unread_count), (acks[1].conv_seq, 1));
    let receipts = within(async {
        loop {
            let (events, _) = sync_all(&alice, &[]).await;
            let r = pick(&events, |k| match k {
                event::Kind::Receipt(r) => Some((r.kind, r.up_to)),
                _ => None,
            });
            if r.len() >= 2 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        receipts.contains(&(ReceiptKind::Delivered as i32, acks[2].conv_seq)),
        "{receipts:?}"
    );
    assert!(
        receipts.contains(&(ReceiptKind::Read as i32, acks[1].conv_seq)),
        "{receipts:?}"
    );

    // Bob's other device agrees on what is read.
    let (events, _) = sync_all(&b2, &[]).await;
    let markers = pick(&events, |k| match k {
        event::Kind::ReadMarker(m) => Some(m.read_up_to),
        _ => None,
    });
    assert_eq!(markers, vec![acks[1].conv_seq]);
    let list = b2.list_conversations(0).await.unwrap().conversations;
    assert_eq!(
        (list[0].read_up_to, list[0].unread_count),
        (acks[1].conv_seq, 1)
    );

    // Alice edits the third message and recalls the first.
    let (_, k1) = sync_all(&b1, &[]).await;
    let (_, k2) = sync_all(&b2, &[]).await;
    alice
        .edit(&conv, acks[2].conv_seq, content("msg 3, edited"))
        .await
        .unwrap();
    alice.recall(&conv, acks[0].conv_seq).await.unwrap();
    alice.recall(&conv, acks[0].conv_seq).await.unwrap();
    for (dev, key) in [(&b1, &k1), (&b2, &k2)] {
        let (events, _) = sync_all(dev, key).await;
        let edits = pick(&events, |k| match k {
            event::Kind::MessageEdited(e) => Some((e.conv_seq, e.content.clone().unwrap().text)),
            _ => None,
        });
        assert_eq!(edits, vec![(acks[2].conv_seq, "msg 3, edited".to_string())]);
        let recalls = pick(&events, |k| match k {
            event::Kind::MessageRecalled(r) => Some(r.conv_seq),
            _ => None,
        });
        assert_eq!(
            recalls,
            vec![acks[0].conv_seq],
            "recalling twice is one recall"
        );
    }
    let history = b2.history(to_user("alice"), 0, 0).await.unwrap().messages;
    let oldest = history.last().unwrap();
    assert!(oldest.recalled && oldest.content.is_none());
    assert_eq!(history[0].content.as_ref().unwrap().text, "msg 3, edited");
    assert!(history[0].edited_at_ms > 0);

    // Only the sender may recall or edit, and only within the window.
    let err = b1.recall(&conv, acks[1].conv_seq).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = b1
        .edit(&conv, acks[1].conv_seq, content("not mine"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let eve = device(&url, "eve").await;
    let err = eve.recall(&conv, acks[1].conv_seq).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::ConversationNotFound),
        "outsiders learn nothing"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = alice.recall(&conv, acks[1].conv_seq).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WindowExpired));

    // Bob deletes the second message for himself: gone from his history on
    // every device, still in alice's.
    let (_, k2) = sync_all(&b2, &[]).await;
    b1.delete_for_me(&conv, acks[1].conv_seq).await.unwrap();
    let (events, _) = sync_all(&b2, &k2).await;
    let deleted = pick(&events, |k| match k {
        event::Kind::MessageDeleted(d) => Some(d.conv_seq),
        _ => None,
    });
    assert_eq!(deleted, vec![acks[1].conv_seq]);
    let bobs: Vec<u64> = b2
        .history(to_user("alice"), 0, 0)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.conv_seq)
        .collect();
    assert!(!bobs.contains(&acks[1].conv_seq));
    let alices: Vec<u64> = alice
        .history(to_user("bob"), 0, 0)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.conv_seq)
        .collect();
    assert!(alices.contains(&acks[1].conv_seq));
}

/// In a small group, reading sends receipts to each sender of the read
/// messages; unread counts are per member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_group_receipts_and_unread() {
    let server = Server::start("");
    let url = server.tcp_url();
    register_many(&url, &["gina".into(), "hank".into(), "ivan".into()]).await;
    let (gina, hank, ivan) = (
        device(&url, "gina").await,
        device(&url, "hank").await,
        device(&url, "ivan").await,
    );
    let g = gina
        .create_group("trio", "", &["hank", "ivan"], None)
        .await
        .unwrap();
    let id = g.conversation_id;
    gina.send("g1", to_group(&id), content("from gina"))
        .await
        .unwrap();
    let last = hank
        .send("h1", to_group(&id), content("from hank"))
        .await
        .unwrap();
    let list = ivan.list_conversations(0).await.unwrap().conversations;
    assert_eq!(list[0].unread_count, 2);
    assert_eq!(list[0].my_role, v1::GroupRole::Member as i32);
    ivan.mark_read(&id, last.conv_seq).await.unwrap();
    for sender in [&gina, &hank] {
        let (events, _) = sync_all(sender, &[]).await;
        let reads = pick(&events, |k| match k {
            event::Kind::Receipt(r) if r.kind == ReceiptKind::Read as i32 => {
                Some(r.username.clone())
            }
            _ => None,
        });
        assert_eq!(reads, vec!["ivan".to_string()]);
    }
    assert_eq!(
        ivan.list_conversations(0).await.unwrap().conversations[0].unread_count,
        0
    );
}

/// Presence and typing reach the online peers who share a conversation,
/// and nobody else; hiding presence hides it; going offline is pushed with
/// a last-seen time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_reach_peers_only() {
    let server = Server::start("typing_throttle_ms = 60000");
    let url = server.tcp_url();
    register_many(&url, &["alice".into(), "bob".into(), "carol".into()]).await;
    let alice = device(&url, "alice").await;
    let carol = device(&url, "carol").await;
    let bob_token = login(&url, "bob", "phone").await;
    {
        let bob = connect(&url, &bob_token).await;
        bob.send("hi", to_user("alice"), content("hi"))
            .await
            .unwrap();
        bob.close().await;
    }
    drain_pushes(&alice).await;
    drain_pushes(&carol).await;

    let bob = connect(&url, &bob_token).await;
    let p = presence_push(&alice).await;
    assert_eq!(
        (p.username.as_str(), p.state),
        ("bob", PresenceState::Online as i32)
    );
    let conv = bob.list_conversations(0).await.unwrap().conversations[0]
        .conversation_id
        .clone();
    bob.set_typing(&conv, true).await.unwrap();
    bob.set_typing(&conv, true).await.unwrap();
    let t = typing_push(&alice).await;
    assert_eq!((t.username.as_str(), t.typing), ("bob", true));
    bob.set_typing(&conv, false).await.unwrap();
    let t = typing_push(&alice).await;
    assert!(
        !t.typing,
        "the second 'typing' was throttled; 'stopped' passes"
    );

    let seen = alice.get_presence(&["bob"]).await.unwrap();
    assert_eq!(seen[0].state, PresenceState::Online as i32);
    let hidden = carol.get_presence(&["bob"]).await.unwrap();
    assert_eq!(
        hidden[0].state,
        PresenceState::Unknown as i32,
        "no shared conversation"
    );
    assert!(
        nothing_pushed(&carol).await,
        "carol shares no conversation: no presence, no typing"
    );

    bob.close().await;
    let p = presence_push(&alice).await;
    assert_eq!(p.state, PresenceState::Offline as i32);
    assert!(p.last_seen_ms > 0);
    let seen = alice.get_presence(&["bob"]).await.unwrap();
    assert_eq!(
        (seen[0].state, seen[0].last_seen_ms),
        (PresenceState::Offline as i32, p.last_seen_ms)
    );

    let bob = connect(&url, &bob_token).await;
    presence_push(&alice).await;
    bob.set_privacy(true).await.unwrap();
    let seen = alice.get_presence(&["bob"]).await.unwrap();
    assert_eq!(
        seen[0].state,
        PresenceState::Unknown as i32,
        "bob hides his presence"
    );
}

async fn drain_pushes(c: &Connection) {
    while tokio::time::timeout(Duration::from_millis(200), c.next_push())
        .await
        .is_ok()
    {}
}

async fn nothing_pushed(c: &Connection) -> bool {
    tokio::time::timeout(Duration::from_millis(300), c.next_push())
        .await
        .is_err()
}

async fn presence_push(c: &Connection) -> v1::Presence {
    loop {
        if let Body::PresencePush(p) = within(c.next_push()).await.unwrap() {
            return p.presence.unwrap();
        }
    }
}

async fn typing_push(c: &Connection) -> v1::TypingPush {
    loop {
        if let Body::TypingPush(t) = within(c.next_push()).await.unwrap() {
            return t;
        }
    }
}

/// After bob blocks alice she cannot message him (a generic refusal), her
/// typing does not reach him, his other device learns of the block, and
/// unblocking restores everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking() {
    let server = Server::start("");
    let url = server.tcp_url();
    register_many(&url, &["alice".into(), "bob".into()]).await;
    let alice = device(&url, "alice").await;
    let (b1, b2) = (device(&url, "bob").await, device(&url, "bob").await);
    let ack = alice
        .send("a1", to_user("bob"), content("hello"))
        .await
        .unwrap();
    let (_, key) = sync_all(&b2, &[]).await;
    b1.block("alice").await.unwrap();
    assert_eq!(b1.list_blocked().await.unwrap(), vec!["alice".to_string()]);
    let err = alice
        .send("a2", to_user("bob"), content("are you there?"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert!(
        !err.to_string().contains("block"),
        "the refusal does not say why: {err}"
    );
    // A retry of the message stored before the block (its ack was lost,
    // say) still gets its original acknowledgement, not a refusal.
    let retry = alice
        .send("a1", to_user("bob"), content("hello"))
        .await
        .expect("a retry of a stored send is acknowledged");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.conversation_id.as_str(), retry.conv_seq),
        (ack.conversation_id.as_str(), ack.conv_seq)
    );
    drain_pushes(&b1).await;
    alice.set_typing(&ack.conversation_id, true).await.unwrap();
    assert!(
        nothing_pushed(&b1).await,
        "typing does not reach the blocker"
    );
    let seen = alice.get_presence(&["bob"]).await.unwrap();
    assert_eq!(seen[0].state, PresenceState::Unknown as i32);
    let (events, _) = sync_all(&b2, &key).await;
    let changes = pick(&events, |k| match k {
        event::Kind::BlockChanged(c) => Some((c.username.clone(), c.blocked)),
        _ => None,
    });
    assert_eq!(changes, vec![("alice".to_string(), true)]);
    // Bob may still write to alice.
    b1.send("b1", to_user("alice"), content("bye"))
        .await
        .unwrap();
    b2.unblock("alice").await.unwrap();
    alice
        .send("a3", to_user("bob"), content("hello again"))
        .await
        .unwrap();
}

/// Changing a message after the fact respects membership: a member who
/// joined later does not hear of an edit to an older message, a former
/// member may no longer recall, and deleting for oneself twice is one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_changes_respect_membership() {
    let server = Server::start("");
    let url = server.tcp_url();
    register_many(&url, &["olga".into(), "pete".into(), "late".into()]).await;
    let (olga, pete) = (device(&url, "olga").await, device(&url, "pete").await);
    let g = olga.create_group("g", "", &["pete"], None).await.unwrap();
    let id = g.conversation_id;
    let old = pete
        .send("p1", to_group(&id), content("before late joined"))
        .await
        .unwrap();
    olga.add_members(&id, &["late"]).await.unwrap();
    let late = device(&url, "late").await;
    let (_, key) = sync_all(&late, &[]).await;
    pete.edit(&id, old.conv_seq, content("edited"))
        .await
        .unwrap();
    let (events, _) = sync_all(&late, &key).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, Some(event::Kind::MessageEdited(_)))),
        "the edit of a message from before joining is not sent: {events:?}"
    );
    olga.remove_members(&id, &["pete"]).await.unwrap();
    let err = pete.recall(&id, old.conv_seq).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = olga.remove_members(&id, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));

    let (_, key) = sync_all(&olga, &[]).await;
    olga.delete_for_me(&id, old.conv_seq).await.unwrap();
    olga.delete_for_me(&id, old.conv_seq).await.unwrap();
    let (events, _) = sync_all(&olga, &key).await;
    let deleted = events
        .iter()
        .filter(|e| matches!(e.kind, Some(event::Kind::MessageDeleted(_))))
        .count();
    assert_eq!(deleted, 1);
    let page = olga.history(to_group(&id), 0, 0).await.unwrap();
    assert!(
        page.messages.is_empty() && !page.has_more,
        "the only message is deleted for olga"
    );
}
