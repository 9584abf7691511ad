//! Accounts, sessions, sends, logs, idempotency, ordering, summaries,
//! trimming, read bounds, secrets and the webhook outbox.

use pigeon_core::StoreError;
use pigeon_core::store::{
    AppendMessage, HistoryQuery, LogFrom, LogReadError, NewSession, ReadMark,
};
use pigeon_proto::v1::{Content, ConversationSummary, event};

use crate::{Factory, Settings};

/// A direct message from `sender` to `to`.
pub fn msg(sender: (u64, &str), to: (u64, &str), id: &str, text: &str, now: i64) -> AppendMessage {
    let conv = format!("d:{}:{}", sender.0.min(to.0), sender.0.max(to.0));
    AppendMessage {
        sender_id: sender.0,
        sender_username: sender.1.into(),
        sender_device_id: 1,
        client_msg_id: id.into(),
        conversation_id: conv,
        group_id: 0,
        participants: vec![(sender.0, sender.1.into()), (to.0, to.1.into())],
        content: Content {
            text: text.into(),
            ..Default::default()
        },
        now_ms: now,
        hooks: Vec::new(),
    }
}

/// A history query for viewer 0.
pub fn hq(conv: &str, before: u64, limit: usize, bytes_max: usize) -> HistoryQuery {
    HistoryQuery {
        conversation_id: conv.to_string(),
        lower: 0,
        before,
        limit,
        bytes_max,
        viewer: 0,
    }
}

/// A read mark.
pub fn rm(user: u64, conv: &str, up_to: u64, now_ms: i64) -> ReadMark {
    ReadMark {
        user,
        username: String::new(),
        conversation_id: conv.to_string(),
        up_to,
        now_ms,
    }
}

/// The text of a message event.
pub fn text_of(e: &pigeon_proto::v1::Event) -> String {
    match &e.kind {
        Some(event::Kind::Message(m)) => m.content.as_ref().unwrap().text.clone(),
        other => panic!("not a message: {other:?}"),
    }
}

/// Creates accounts and checks uniqueness and both lookups.
pub async fn users_are_unique_and_found_by_name_and_id(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let alice = b.store.create_user("alice", "h1", 10).await.unwrap();
    let bob = b.store.create_user("bob", "h2", 11).await.unwrap();
    assert_ne!(alice.id, bob.id);
    assert!(matches!(
        b.store.create_user("alice", "h3", 12).await,
        Err(StoreError::UsernameTaken)
    ));
    assert_eq!(
        b.store.user_by_name("bob").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        b.store.user_by_id(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(b.store.user_by_name("carol").await.unwrap(), None);
    assert_eq!(b.store.user_by_id(999).await.unwrap(), None);
    let names = ["bob", "carol", "alice", "bob"].map(String::from);
    assert_eq!(
        b.store.users_by_name(&names).await.unwrap(),
        vec![Some(bob.clone()), None, Some(alice), Some(bob)],
        "one answer per name, in order"
    );
}

/// Checks each login gets the next device id and revocation sticks.
pub async fn sessions_get_new_devices_and_can_be_revoked(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let u = b.store.create_user("alice", "h", 0).await.unwrap();
    let new = |hash: &str| NewSession {
        token_hash: hash.into(),
        user_id: u.id,
        device_name: "phone".into(),
        created_at_ms: 1,
        expires_at_ms: 100,
    };
    let s1 = b.store.create_session(new("t1")).await.unwrap();
    let s2 = b.store.create_session(new("t2")).await.unwrap();
    assert_eq!((s1.device_id, s2.device_id), (1, 2));
    b.store.revoke_session("t1").await.unwrap();
    assert!(b.store.session("t1").await.unwrap().unwrap().revoked);
    assert!(!b.store.session("t2").await.unwrap().unwrap().revoked);
    assert!(b.store.session("nope").await.unwrap().is_none());
    assert!(matches!(
        b.store.revoke_session("nope").await,
        Err(StoreError::SessionNotFound)
    ));
}

/// Checks a message lands once in the sender's and recipient's logs with a
/// correct prev-seq chain, and in the conversation timeline for paging.
pub async fn messages_reach_both_logs_and_the_timeline(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..5 {
        let out = b
            .store
            .append_message(msg(
                (a.id, "alice"),
                (c.id, "carol"),
                &format!("m{i}"),
                &format!("hi {i}"),
                i,
            ))
            .await
            .unwrap();
        assert!(!out.duplicate);
        assert_eq!(out.appended.len(), 2);
        acks.push(out);
    }
    let conv_seqs: Vec<u64> = acks.iter().map(|o| o.conv_seq).collect();
    assert!(conv_seqs.windows(2).all(|w| w[0] < w[1]), "{conv_seqs:?}");
    for user in [a.id, c.id] {
        let read = b
            .store
            .read_log(user, LogFrom::Oldest, 100, 1 << 20)
            .await
            .unwrap();
        let texts: Vec<String> = read.events.iter().map(text_of).collect();
        assert_eq!(texts, vec!["hi 0", "hi 1", "hi 2", "hi 3", "hi 4"]);
        assert!(!read.has_more);
        // Each push batch's prev_seq is the seq before it.
        let mine: Vec<_> = acks
            .iter()
            .flat_map(|o| o.appended.iter().filter(|x| x.user_id == user))
            .collect();
        let mut prev = 0;
        for (ap, ev) in mine.iter().zip(&read.events) {
            assert_eq!(ap.prev_seq, prev);
            assert_eq!(ap.events[0].seq, ev.seq);
            prev = ev.seq;
        }
        assert_eq!(b.store.log_head(user).await.unwrap(), prev);
        // Reading after the second event gives the last three.
        let tail = b
            .store
            .read_log(user, LogFrom::After(read.events[1].seq), 100, 1 << 20)
            .await
            .unwrap();
        assert_eq!(tail.events.len(), 3);
    }
    let conv = &acks[0].conversation_id;
    let (page, more) = b.store.history(hq(conv, 0, 2, 1 << 20)).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|m| m.content.as_ref().unwrap().text.as_str())
            .collect::<Vec<_>>(),
        vec!["hi 4", "hi 3"]
    );
    assert!(more);
    let (page, more) = b
        .store
        .history(hq(conv, page[1].conv_seq, 10, 1 << 20))
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(page[2].content.as_ref().unwrap().text, "hi 0");
    assert!(!more);
    assert_eq!(
        b.store
            .history(hq("d:8:9", 0, 10, 1 << 20))
            .await
            .unwrap()
            .0
            .len(),
        0
    );
}

/// Checks a repeated client message id returns the first outcome, flagged,
/// and appends nothing anywhere.
pub async fn retries_with_the_same_client_id_store_nothing_twice(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    let first = b
        .store
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "same", "one", 5))
        .await
        .unwrap();
    let again = b
        .store
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "same", "changed", 9))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert!(again.appended.is_empty());
    assert_eq!(
        (again.conv_seq, again.sent_at_ms),
        (first.conv_seq, first.sent_at_ms)
    );
    // The acknowledgement is kept for retries that are refused otherwise.
    let ack = b
        .store
        .sent(a.id, "same")
        .await
        .unwrap()
        .expect("a stored send");
    assert_eq!(
        (ack.conversation_id.as_str(), ack.conv_seq, ack.sent_at_ms),
        (
            first.conversation_id.as_str(),
            first.conv_seq,
            first.sent_at_ms
        )
    );
    assert_eq!(b.store.sent(a.id, "never").await.unwrap(), None);
    assert_eq!(
        b.store.sent(c.id, "same").await.unwrap(),
        None,
        "per sender"
    );
    assert_eq!(
        b.store
            .read_log(c.id, LogFrom::Oldest, 100, 1 << 20)
            .await
            .unwrap()
            .events
            .len(),
        1
    );
    // Another sender may reuse the same client id.
    let other = b
        .store
        .append_message(msg((c.id, "carol"), (a.id, "alice"), "same", "two", 6))
        .await
        .unwrap();
    assert!(!other.duplicate);
    // Two retries racing in one group commit still store once.
    let (x, y) = tokio::join!(
        b.store
            .append_message(msg((a.id, "alice"), (c.id, "carol"), "race", "r", 7)),
        b.store
            .append_message(msg((a.id, "alice"), (c.id, "carol"), "race", "r", 7)),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.conv_seq, y.conv_seq);
    assert!(x.duplicate != y.duplicate);
    assert_eq!(
        b.store
            .read_log(c.id, LogFrom::Oldest, 100, 1 << 20)
            .await
            .unwrap()
            .events
            .len(),
        3
    );
}

/// Sends from many tasks at once and checks every log holds each message
/// exactly once in strictly increasing seq order.
pub async fn concurrent_sends_keep_every_log_strictly_ordered(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let mut users = Vec::new();
    for name in ["u0", "u1", "u2", "u3"] {
        users.push(b.store.create_user(name, "h", 0).await.unwrap());
    }
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = b.store.clone();
        let from = users[(t % 4) as usize].clone();
        let to = users[((t + 1) % 4) as usize].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                store
                    .append_message(msg(
                        (from.id, &from.username),
                        (to.id, &to.username),
                        &format!("{t}-{i}"),
                        "x",
                        0,
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for u in &users {
        let read = b
            .store
            .read_log(u.id, LogFrom::Oldest, 1000, 1 << 24)
            .await
            .unwrap();
        assert!(read.events.windows(2).all(|w| w[0].seq < w[1].seq));
        total += read.events.len();
    }
    assert_eq!(total, 8 * 25 * 2);
}

/// Checks summaries carry the last message and unread counts, and that
/// marking read is monotonic, clamped and logged for the reader's devices.
pub async fn conversations_track_last_message_and_unread(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    let d = b.store.create_user("dave", "h", 0).await.unwrap();
    for i in 0..3 {
        b.store
            .append_message(msg(
                (a.id, "alice"),
                (c.id, "carol"),
                &format!("a{i}"),
                "to carol",
                10 + i,
            ))
            .await
            .unwrap();
    }
    let last = b
        .store
        .append_message(msg((d.id, "dave"), (c.id, "carol"), "d0", "from dave", 20))
        .await
        .unwrap();
    let list = b.store.list_conversations(c.id, 10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].peer_username, "dave", "most recent first");
    assert_eq!(list[1].peer_username, "alice");
    assert_eq!(list[1].unread_count, 3);
    assert_eq!(
        list[1]
            .last_message
            .as_ref()
            .unwrap()
            .content
            .as_ref()
            .unwrap()
            .text,
        "to carol"
    );
    let sender_view = b
        .store
        .conversation(a.id, &list[1].conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sender_view.unread_count, 0, "own messages are not unread");

    let conv = list[1].conversation_id.clone();
    let seqs: Vec<u64> = b
        .store
        .history(hq(&conv, 0, 10, 1 << 20))
        .await
        .unwrap()
        .0
        .iter()
        .rev()
        .map(|m| m.conv_seq)
        .collect();
    let out = b
        .store
        .mark_read(rm(c.id, &conv, seqs[1], 30))
        .await
        .unwrap();
    assert_eq!((out.read_up_to, out.unread_count), (seqs[1], 1));
    assert!(
        matches!(&out.appended[0].events[0].kind, Some(event::Kind::ReadMarker(m)) if m.read_up_to == seqs[1])
    );
    let back = b
        .store
        .mark_read(rm(c.id, &conv, seqs[0], 31))
        .await
        .unwrap();
    assert_eq!((back.read_up_to, back.unread_count), (seqs[1], 1));
    assert!(back.appended.is_empty(), "going backwards changes nothing");
    let all = b
        .store
        .mark_read(rm(c.id, &conv, u64::MAX, 32))
        .await
        .unwrap();
    assert_eq!(
        (all.read_up_to, all.unread_count),
        (seqs[2], 0),
        "clamped to the last message"
    );
    assert_eq!(
        b.store.list_conversations(c.id, 1).await.unwrap()[0].conversation_id,
        last.conversation_id
    );

    // A reply counts as read up to it; what arrives after it is unread,
    // for the receiver only, and the newest message is the same for both.
    b.store
        .append_message(msg((c.id, "carol"), (a.id, "alice"), "c0", "reply", 40))
        .await
        .unwrap();
    for i in 0..2 {
        b.store
            .append_message(msg(
                (a.id, "alice"),
                (c.id, "carol"),
                &format!("a-later{i}"),
                &format!("later {i}"),
                41 + i,
            ))
            .await
            .unwrap();
    }
    let carol_list = b.store.list_conversations(c.id, 10).await.unwrap();
    assert_eq!(
        carol_list[0].conversation_id, conv,
        "alice is the newest again"
    );
    let text = |s: &ConversationSummary| {
        let m = s.last_message.as_ref().expect("a last message");
        (m.conv_seq, m.content.as_ref().unwrap().text.clone())
    };
    assert_eq!(carol_list[0].unread_count, 2, "two after carol's reply");
    // Carol's summary was last written by her reply: still with alice.
    assert_eq!(
        (
            carol_list[0].peer_user_id,
            carol_list[0].peer_username.as_str()
        ),
        (a.id, "alice")
    );
    assert_eq!(text(&carol_list[0]), (seqs[2] + 3, "later 1".to_string()));
    let carol_one = b.store.conversation(c.id, &conv).await.unwrap().unwrap();
    assert_eq!(
        (carol_one.unread_count, text(&carol_one)),
        (2, text(&carol_list[0]))
    );
    let alice_one = b.store.conversation(a.id, &conv).await.unwrap().unwrap();
    assert_eq!(alice_one.unread_count, 0, "alice wrote the newest");
    assert_eq!(text(&alice_one), text(&carol_list[0]));
    let stay = b
        .store
        .mark_read(rm(c.id, &conv, seqs[2], 43))
        .await
        .unwrap();
    assert_eq!((stay.read_up_to, stay.unread_count), (seqs[2] + 1, 2));
    let read = b
        .store
        .mark_read(rm(c.id, &conv, seqs[2] + 2, 44))
        .await
        .unwrap();
    assert_eq!((read.read_up_to, read.unread_count), (seqs[2] + 2, 1));
    assert_eq!(
        b.store.list_conversations(c.id, 10).await.unwrap()[0].unread_count,
        1
    );
}

/// Fills a log past its retention and checks an old key must resync while
/// an empty key reads the retained tail.
pub async fn trimmed_logs_answer_resync(f: &dyn Factory) {
    let b = f
        .open(Settings {
            log_retain_events: 16,
        })
        .await;
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    let first = b
        .store
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "m0", "0", 0))
        .await
        .unwrap();
    let first_seq = first
        .appended
        .iter()
        .find(|x| x.user_id == c.id)
        .unwrap()
        .events[0]
        .seq;
    for i in 1..40 {
        b.store
            .append_message(msg(
                (a.id, "alice"),
                (c.id, "carol"),
                &format!("m{i}"),
                &i.to_string(),
                0,
            ))
            .await
            .unwrap();
    }
    match b
        .store
        .read_log(c.id, LogFrom::After(first_seq), 10, 1 << 20)
        .await
    {
        Err(LogReadError::Trimmed { trimmed_through }) => assert!(trimmed_through > first_seq),
        other => panic!("expected Trimmed, got {other:?}"),
    }
    // After seq 0 is a position too (a device that saw the log empty), not
    // "wherever the log now starts".
    match b.store.read_log(c.id, LogFrom::After(0), 10, 1 << 20).await {
        Err(LogReadError::Trimmed { .. }) => {}
        other => panic!("expected Trimmed after seq 0, got {other:?}"),
    }
    let tail = b
        .store
        .read_log(c.id, LogFrom::Oldest, 100, 1 << 20)
        .await
        .unwrap();
    assert!(
        tail.events.len() >= 16 && tail.events.len() < 40,
        "{}",
        tail.events.len()
    );
    assert_eq!(text_of(tail.events.last().unwrap()), "39");
}

/// Checks the count and byte bounds of a log read and its has_more flag.
pub async fn reads_are_bounded_by_count_and_bytes(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    for i in 0..10 {
        b.store
            .append_message(msg(
                (a.id, "alice"),
                (c.id, "carol"),
                &format!("m{i}"),
                &"x".repeat(1000),
                0,
            ))
            .await
            .unwrap();
    }
    let r = b
        .store
        .read_log(c.id, LogFrom::Oldest, 4, 1 << 20)
        .await
        .unwrap();
    assert_eq!((r.events.len(), r.has_more), (4, true));
    let r = b
        .store
        .read_log(c.id, LogFrom::Oldest, 100, 3500)
        .await
        .unwrap();
    assert_eq!((r.events.len(), r.has_more), (3, true));
    let r = b
        .store
        .read_log(c.id, LogFrom::Oldest, 100, 10)
        .await
        .unwrap();
    assert_eq!(
        r.events.len(),
        1,
        "at least one event even if larger than the byte bound"
    );
    let r = b
        .store
        .read_log(c.id, LogFrom::Oldest, 10, 1 << 20)
        .await
        .unwrap();
    assert_eq!((r.events.len(), r.has_more), (10, false));
    let conv = format!("d:{}:{}", a.id.min(c.id), a.id.max(c.id));
    let (page, more) = b.store.history(hq(&conv, 0, 100, 3500)).await.unwrap();
    assert_eq!((page.len(), more), (3, true));
    let (page, more) = b.store.history(hq(&conv, 0, 100, 1)).await.unwrap();
    assert_eq!((page.len(), more), (1, true), "at least one message");
}

/// Checks a named secret is created once and then returned unchanged.
pub async fn secrets_are_stable(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s1 = b.store.secret("k").await.unwrap();
    let s2 = b.store.secret("k").await.unwrap();
    let other = b.store.secret("other").await.unwrap();
    assert_eq!(s1, s2);
    assert_ne!(s1, other);
}

/// Checks a message with hooks queues one delivery per event and recipient,
/// that a failed attempt waits for its next time, a success removes it, and
/// a delivery given up on is listed as failed with its reason.
pub async fn webhook_deliveries_are_queued_retried_and_failed(f: &dyn Factory) {
    use pigeon_core::store::{DeliveryStatus, HookKind, HookTarget};
    let b = f.open(Settings::default()).await;
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    let mut m = msg((a.id, "alice"), (c.id, "carol"), "m1", "hello", 1000);
    m.hooks = vec![
        HookTarget {
            endpoint: "http://bot".into(),
            kind: HookKind::MessageCreated,
        },
        HookTarget {
            endpoint: "http://push".into(),
            kind: HookKind::PushNeeded,
        },
    ];
    let out = b.store.append_message(m).await.unwrap();
    let due = b.store.deliveries_due(1000, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    let push = due.iter().find(|d| d.kind == HookKind::PushNeeded).unwrap();
    assert_eq!(
        (push.recipient, push.conv_seq),
        (c.id, out.conv_seq),
        "a push for the recipient, not the sender"
    );
    assert_eq!(b.store.deliveries_pending(100).await.unwrap(), 2);
    let (first, second) = (due[0].id, due[1].id);
    b.store
        .delivery_attempted(first, Err("503".into()), Some(5000))
        .await
        .unwrap();
    assert_eq!(
        b.store.deliveries_due(1000, 10).await.unwrap().len(),
        1,
        "waits for its next attempt"
    );
    let later = b.store.deliveries_due(5000, 10).await.unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(later.iter().find(|d| d.id == first).unwrap().attempts, 1);
    b.store
        .delivery_attempted(second, Ok(()), None)
        .await
        .unwrap();
    b.store
        .delivery_attempted(first, Err("connection refused".into()), None)
        .await
        .unwrap();
    assert!(
        b.store
            .deliveries_due(i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.store.deliveries_pending(100).await.unwrap(), 0);
    let failed = b.store.deliveries_failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].status, failed[0].last_error.as_str()),
        (DeliveryStatus::Failed, "connection refused")
    );
    assert_eq!(
        b.store
            .message(&out.conversation_id, out.conv_seq)
            .await
            .unwrap()
            .unwrap()
            .content
            .unwrap()
            .text,
        "hello"
    );
}
