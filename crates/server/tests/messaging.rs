//! End-to-end messaging through the real `pigeon` binary and the Rust SDK:
//! both transports, offline delivery, multi-device convergence, history
//! paging, idempotent resends, conversations and read markers.

mod common;

use common::*;
use pigeon_client::v1::{self, event, frame::Body};
use pigeon_client::{text as content, to_conversation, to_user};

/// Alice on TCP and bob on WebSocket exchange messages; each gets the
/// other's message pushed with keys that chain onto what they synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_tcp_and_websocket() {
    let server = Server::start("");
    let alice_token = register_and_login(&server.tcp_url(), "alice").await;
    let bob_token = register_and_login(&server.ws_url(), "bob").await;
    let alice = connect(&server.tcp_url(), &alice_token).await;
    let bob = connect(&server.ws_url(), &bob_token).await;
    assert_eq!(bob.welcome().username, "bob");
    let (_, bob_key) = sync_all(&bob, &[]).await;
    let (_, alice_key) = sync_all(&alice, &[]).await;

    let ack = alice
        .send("m-1", to_user("bob"), content("hello bob"))
        .await
        .unwrap();
    assert!(!ack.duplicate);
    assert!(ack.conversation_id.starts_with("d:"));

    let push = next_sync_push(&bob).await;
    let Body::EventsPush(p) = push else {
        panic!("expected events, got {push:?}")
    };
    assert_eq!(p.prev_key, bob_key, "the push chains onto bob's key");
    assert_eq!(p.events.len(), 1);
    assert_eq!(text(&p.events[0]), "hello bob");
    let Some(event::Kind::Message(m)) = &p.events[0].kind else {
        panic!()
    };
    assert_eq!(
        (m.sender_username.as_str(), m.conv_seq),
        ("alice", ack.conv_seq)
    );

    // Alice's own device is told too (multi-device convergence).
    let Body::EventsPush(own) = next_sync_push(&alice).await else {
        panic!()
    };
    assert_eq!(own.prev_key, alice_key);
    assert_eq!(text(&own.events[0]), "hello bob");

    let reply = bob
        .send(
            "r-1",
            to_conversation(&ack.conversation_id),
            content("hi alice"),
        )
        .await
        .unwrap();
    assert_eq!(reply.conversation_id, ack.conversation_id);
    assert!(reply.conv_seq > ack.conv_seq);
    // Alice's device gets, chained key to key, bob's delivery receipt for
    // her message (he got it pushed) and his reply, in commit order.
    let (mut key, mut receipt, mut replied) = (own.key.clone(), false, false);
    while !(receipt && replied) {
        let Body::EventsPush(p) = next_sync_push(&alice).await else {
            panic!("expected events")
        };
        assert_eq!(p.prev_key, key);
        key = p.key;
        match &p.events[0].kind {
            Some(event::Kind::Message(m)) => {
                assert_eq!(m.content.as_ref().unwrap().text, "hi alice");
                replied = true;
            }
            Some(event::Kind::Receipt(r)) => {
                assert_eq!((r.username.as_str(), r.up_to), ("bob", ack.conv_seq));
                assert_eq!(r.kind, v1::ReceiptKind::Delivered as i32);
                receipt = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A message to a user with no connection waits in their log and arrives,
/// in order, on their next sync; a sync at the head returns nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_syncs_what_it_missed() {
    let server = Server::start("");
    let alice = connect(
        &server.tcp_url(),
        &register_and_login(&server.tcp_url(), "alice").await,
    )
    .await;
    let carol_token = register_and_login(&server.tcp_url(), "carol").await;
    for i in 0..30 {
        alice
            .send(
                &format!("m{i}"),
                to_user("carol"),
                content(&format!("msg {i}")),
            )
            .await
            .unwrap();
    }
    let carol = connect(&server.ws_url(), &carol_token).await;
    let first = carol.sync(&[], 7).await.unwrap();
    assert_eq!(first.events.len(), 7);
    assert!(first.has_more);
    let (rest, key) = sync_all(&carol, &first.key).await;
    let all: Vec<String> = texts(&first.events)
        .into_iter()
        .chain(texts(&rest))
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("msg {i}")).collect();
    assert_eq!(all, expected);
    let again = carol.sync(&key, 0).await.unwrap();
    assert!(again.events.is_empty() && !again.has_more);
    assert_eq!(again.key, key);
}

/// Two devices of one user and the sender's second device all converge to
/// the same events; a read on one device reaches the other as a ReadMarker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_one_user_converge() {
    let server = Server::start("");
    let url = server.tcp_url();
    let a1 = register_and_login(&url, "alice").await;
    let a2 = login(&url, "alice", "tablet").await;
    let b1 = register_and_login(&url, "bob").await;
    let b2 = login(&url, "bob", "laptop").await;
    let (alice1, alice2) = (
        connect(&url, &a1).await,
        connect(&server.ws_url(), &a2).await,
    );
    let (bob1, bob2) = (connect(&url, &b1).await, connect(&url, &b2).await);
    assert_ne!(alice1.welcome().device_id, alice2.welcome().device_id);

    alice1
        .send("x1", to_user("bob"), content("one"))
        .await
        .unwrap();
    bob2.send("y1", to_user("alice"), content("two"))
        .await
        .unwrap();
    let ack = alice2
        .send("x2", to_user("bob"), content("three"))
        .await
        .unwrap();

    let mut views = Vec::new();
    for c in [&alice1, &alice2, &bob1, &bob2] {
        let (events, _) = sync_all(c, &[]).await;
        views.push(texts(&events));
    }
    for v in &views {
        assert_eq!(v, &vec!["one", "two", "three"]);
    }

    let marked = bob1
        .mark_read(&ack.conversation_id, ack.conv_seq)
        .await
        .unwrap();
    assert_eq!((marked.read_up_to, marked.unread_count), (ack.conv_seq, 0));
    let (events, _) = sync_all(&bob2, &[]).await;
    let last = events.last().unwrap();
    assert!(matches!(&last.kind, Some(event::Kind::ReadMarker(r)) if r.read_up_to == ack.conv_seq));
    let list = bob2.list_conversations(0).await.unwrap().conversations;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].unread_count, 0);
    assert_eq!(list[0].peer_username, "alice");
}

/// Pages a 25-message conversation backwards 10 at a time and checks every
/// message appears once, newest first, with has_more right on each page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backwards() {
    let server = Server::start("");
    let url = server.tcp_url();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let bob = connect(&url, &register_and_login(&url, "bob").await).await;
    for i in 0..25 {
        let c = if i % 2 == 0 { &alice } else { &bob };
        let to = if i % 2 == 0 { "bob" } else { "alice" };
        c.send(&format!("h{i}"), to_user(to), content(&i.to_string()))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut before = 0;
    let mut pages = 0;
    loop {
        let page = bob.history(to_user("alice"), before, 10).await.unwrap();
        pages += 1;
        seen.extend(
            page.messages
                .iter()
                .map(|m| m.content.clone().unwrap().text),
        );
        if !page.has_more {
            break;
        }
        before = page.messages.last().unwrap().conv_seq;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).rev().map(|i| i.to_string()).collect();
    assert_eq!(seen, expected);
    let list = alice.list_conversations(0).await.unwrap().conversations;
    assert_eq!(
        list[0]
            .last_message
            .as_ref()
            .unwrap()
            .content
            .as_ref()
            .unwrap()
            .text,
        "24"
    );
    assert_eq!(list[0].unread_count, 0, "alice sent the last message");
    let bobs = bob.list_conversations(0).await.unwrap().conversations;
    assert_eq!(
        bobs[0].unread_count, 1,
        "one message from alice after bob's last reply"
    );
}

/// Resending with the same client message id returns the first ack, marked
/// duplicate, stores nothing, and still does so after a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_is_idempotent_across_restart() {
    let mut server = Server::start("");
    let url = server.tcp_url();
    let alice_token = register_and_login(&url, "alice").await;
    let bob_token = register_and_login(&url, "bob").await;
    let alice = connect(&url, &alice_token).await;
    let first = alice
        .send("same-id", to_user("bob"), content("once"))
        .await
        .unwrap();
    let again = alice
        .send("same-id", to_user("bob"), content("once"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (
            again.conversation_id.as_str(),
            again.conv_seq,
            again.sent_at_ms
        ),
        (
            first.conversation_id.as_str(),
            first.conv_seq,
            first.sent_at_ms
        )
    );
    alice.close().await;
    assert!(server.terminate().success());
    server.restart();
    let alice = connect(&url, &alice_token).await;
    let after = alice
        .send("same-id", to_user("bob"), content("once"))
        .await
        .unwrap();
    assert!(after.duplicate);
    assert_eq!(after.conv_seq, first.conv_seq);
    let bob = connect(&url, &bob_token).await;
    let (events, _) = sync_all(&bob, &[]).await;
    assert_eq!(texts(&events), vec!["once"]);
}

/// A key older than the retained log gets RESYNC_REQUIRED; an empty key
/// then reads the retained tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_key_must_resync() {
    let server = Server::start("sync_log_retain_events = 8");
    let url = server.tcp_url();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let bob = connect(&url, &register_and_login(&url, "bob").await).await;
    alice
        .send("first", to_user("bob"), content("first"))
        .await
        .unwrap();
    let (_, old_key) = sync_all(&bob, &[]).await;
    let tail = outgrow_and_resync(&alice, &bob, &old_key).await;
    assert!(tail.len() < 31);
}

/// Sends bob 30 messages from alice (texts "0" to "29"), more than the
/// retention of 8 these tests run with; checks `key` then gets
/// RESYNC_REQUIRED and that the empty key (a new device) reads the retained
/// tail, which it returns.
async fn outgrow_and_resync(
    alice: &pigeon_client::Connection,
    bob: &pigeon_client::Connection,
    key: &[u8],
) -> Vec<v1::Event> {
    for i in 0..30 {
        alice
            .send(&format!("m{i}"), to_user("bob"), content(&i.to_string()))
            .await
            .unwrap();
    }
    let err = bob.sync(key, 0).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::ResyncRequired), "{err}");
    let (tail, _) = sync_all(bob, &[]).await;
    assert_eq!(text(tail.last().unwrap()), "29");
    tail
}

/// A key handed out while the log was empty is a position like any other,
/// not the empty key: pushes follow on from it, and once the events after it
/// are trimmed it gets RESYNC_REQUIRED instead of silently reading from the
/// oldest retained event (which would skip the trimmed ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_for_an_empty_log_must_resync_once_trimmed() {
    let server = Server::start("sync_log_retain_events = 8");
    let url = server.tcp_url();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let bob = connect(&url, &register_and_login(&url, "bob").await).await;
    let (events, empty_log_key) = sync_all(&bob, &[]).await;
    assert!(events.is_empty());
    assert!(
        !empty_log_key.is_empty(),
        "the empty key is a new device's; the server never hands it out"
    );
    alice
        .send("first", to_user("bob"), content("first"))
        .await
        .unwrap();
    let push = loop {
        match within(bob.next_push()).await {
            Some(Body::EventsPush(p)) => break p,
            Some(_) => continue,
            None => panic!("bob's connection closed"),
        }
    };
    assert_eq!(push.prev_key, empty_log_key, "the push follows on from it");
    assert_eq!(texts(&push.events), vec!["first"]);
    // As another device of bob's that synced the empty log and went away.
    outgrow_and_resync(&alice, &bob, &empty_log_key).await;
}

/// Logging out revokes the token for every connection using it: the
/// connection is closed and the token no longer opens a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session() {
    let server = Server::start("");
    let url = server.tcp_url();
    let token = register_and_login(&url, "alice").await;
    let other = connect(&url, &token).await;
    let c = connect(&url, &token).await;
    c.logout().await.unwrap();
    let bye = within(other.next_push()).await;
    assert!(
        matches!(&bye, Some(Body::Goodbye(g)) if g.code == v1::ErrorCode::TokenRevoked as i32),
        "{bye:?}"
    );
    let err = pigeon_client::Connection::connect(
        &pigeon_client::ConnectOptions::new(&url).with_token(&token),
    )
    .await
    .expect_err("revoked token refused");
    assert_eq!(err.code(), Some(v1::ErrorCode::TokenRevoked));
}

/// A client that keeps the in-flight limit full (a new send as soon as an
/// answer arrives) is never refused with TOO_MANY_REQUESTS, and every send
/// is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_at_the_limit_are_never_refused() {
    let server = Server::start("");
    let url = server.tcp_url();
    let alice = std::sync::Arc::new(connect(&url, &register_and_login(&url, "alice").await).await);
    let bob_token = register_and_login(&url, "bob").await;
    let window = alice.welcome().limits.unwrap().inflight_requests_max as usize;
    let tasks: Vec<_> = (0..window)
        .map(|w| {
            let alice = alice.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    alice
                        .send(&format!("{w}-{i}"), to_user("bob"), content("x"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let bob = connect(&url, &bob_token).await;
    let (events, _) = sync_all(&bob, &[]).await;
    assert_eq!(texts(&events).len(), window * 40);
}

/// Delivery receipts are gathered for `delivery_receipt_delay_ms`: two
/// messages bob receives within it reach alice as one receipt up to the
/// second, recorded no sooner than the window after the first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_receipts_within_the_delay_become_one() {
    let server = Server::start("delivery_receipt_delay_ms = 400");
    let alice_token = register_and_login(&server.tcp_url(), "alice").await;
    let bob_token = register_and_login(&server.tcp_url(), "bob").await;
    let alice = connect(&server.tcp_url(), &alice_token).await;
    let bob = connect(&server.tcp_url(), &bob_token).await;
    let (_, mut alice_key) = sync_all(&alice, &[]).await;
    sync_all(&bob, &[]).await;

    // Taken before the send: the server may hand bob the message (and
    // start the delay) before alice has her acknowledgement.
    let sent_at = std::time::Instant::now();
    let first = alice
        .send("m-1", to_user("bob"), content("one"))
        .await
        .unwrap();
    let Body::EventsPush(p) = next_sync_push(&bob).await else {
        panic!("expected events")
    };
    assert_eq!(text(&p.events[0]), "one");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let second = alice
        .send("m-2", to_user("bob"), content("two"))
        .await
        .unwrap();
    let Body::EventsPush(p) = next_sync_push(&bob).await else {
        panic!("expected events")
    };
    assert_eq!(text(&p.events[0]), "two");
    assert!(second.conv_seq > first.conv_seq);

    // Alice's log: her two messages, then one receipt for both.
    let mut receipts = Vec::new();
    while receipts.is_empty() {
        let Body::EventsPush(p) = next_sync_push(&alice).await else {
            panic!("expected events")
        };
        assert_eq!(p.prev_key, alice_key);
        alice_key = p.key;
        for e in &p.events {
            if let Some(event::Kind::Receipt(r)) = &e.kind {
                receipts.push((r.up_to, r.kind));
            }
        }
    }
    assert!(
        sent_at.elapsed() >= std::time::Duration::from_millis(400),
        "recorded after the delay"
    );
    assert_eq!(
        receipts,
        vec![(second.conv_seq, v1::ReceiptKind::Delivered as i32)]
    );
    // Nothing more comes: the first message has no receipt of its own.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (events, _) = sync_all(&alice, &alice_key).await;
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.kind, Some(event::Kind::Receipt(_)))),
        "{events:?}"
    );
}
