//! Receipts and read marks, recall, edit and delete-for-me, blocks,
//! preferences and contacts.

use pigeon_core::CoreError;
use pigeon_core::store::{Delivered, LogFrom, MessageChange, MessageChangeKind, UserPrefs};
use pigeon_proto::v1::{Content, Message, ReceiptKind, event};

use crate::groups::{group_limits, group_msg, make_group, users};
use crate::{Factory, Settings, hq, msg, refusal, rm};

fn receipt_of(e: &pigeon_proto::v1::Event) -> Option<&pigeon_proto::v1::Receipt> {
    match &e.kind {
        Some(event::Kind::Receipt(r)) => Some(r),
        _ => None,
    }
}

/// Checks a recipient's delivery and read receipts reach the sender's log
/// once each (positions only move forward), with the reader's marker.
pub async fn receipts_and_read_marks_reach_senders(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["alice", "carol"]).await;
    let (a, c) = (&u[0], &u[1]);
    let mut seqs = Vec::new();
    for n in 0..3 {
        let out = s
            .append_message(msg(
                (a.id, "alice"),
                (c.id, "carol"),
                &format!("m{n}"),
                "x",
                n,
            ))
            .await
            .unwrap();
        seqs.push(out.conv_seq);
    }
    let conv = format!("d:{}:{}", a.id.min(c.id), a.id.max(c.id));
    let delivered = || {
        vec![Delivered {
            conversation_id: conv.clone(),
            up_to: seqs[1],
            senders: vec![a.id],
            conv_seqs: seqs[..2].to_vec(),
        }]
    };
    let out = s
        .record_delivered(c.id, "carol", delivered(), 50)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].user_id, a.id);
    let r = receipt_of(&out[0].events[0]).unwrap();
    assert_eq!(
        (r.kind(), r.up_to, r.user_id),
        (ReceiptKind::Delivered, seqs[1], c.id)
    );
    assert!(
        s.record_delivered(c.id, "carol", delivered(), 51)
            .await
            .unwrap()
            .is_empty(),
        "the position did not move"
    );
    let read = s.mark_read(rm(c.id, &conv, seqs[2], 60)).await.unwrap();
    assert_eq!(
        read.appended.len(),
        2,
        "the reader's marker and the sender's receipt"
    );
    let to_sender = read.appended.iter().find(|x| x.user_id == a.id).unwrap();
    let r = receipt_of(&to_sender.events[0]).unwrap();
    assert_eq!((r.kind(), r.up_to), (ReceiptKind::Read, seqs[2]));
    let sender_log = s
        .read_log(a.id, LogFrom::Oldest, 100, 1 << 20)
        .await
        .unwrap()
        .events;
    assert_eq!(sender_log.iter().filter_map(receipt_of).count(), 2);
}

/// Checks large-group receipts are counted per message (each member once)
/// and the sender hears of notable counts.
pub async fn large_group_receipts_are_counted(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["owner", "m1", "m2"]).await;
    let (o, m1, m2) = (&u[0], &u[1], &u[2]);
    let gid = make_group(s, o, &[m1, m2], group_limits(2)).await;
    let conv = format!("g:{gid}");
    let sent = s
        .append_message(group_msg(o, gid, "x", "hello all"))
        .await
        .unwrap();
    let delivered = || {
        vec![Delivered {
            conversation_id: conv.clone(),
            up_to: sent.conv_seq,
            senders: vec![o.id],
            conv_seqs: vec![sent.conv_seq],
        }]
    };
    let out = s
        .record_delivered(m1.id, "m1", delivered(), 5)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].user_id, o.id);
    assert!(matches!(
        &out[0].events[0].kind,
        Some(event::Kind::ReceiptSummary(r)) if r.delivered_count == 1 && r.member_count == 3
    ));
    assert!(
        s.record_delivered(m1.id, "m1", delivered(), 6)
            .await
            .unwrap()
            .is_empty()
    );
    // m2 reads before their delivery mark arrives: the read counts as a
    // delivery too, and the late mark counts nothing more.
    let read = s.mark_read(rm(m2.id, &conv, u64::MAX, 7)).await.unwrap();
    assert_eq!(read.read_up_to, sent.conv_seq);
    assert!(read.appended.iter().any(|x| x.user_id == o.id
        && matches!(&x.events[0].kind, Some(event::Kind::ReceiptSummary(r)) if r.read_count == 1)));
    let counts = || async {
        let c = s.receipt_counts(&conv, &[sent.conv_seq]).await.unwrap();
        (c[0].delivered_count, c[0].read_count, c[0].member_count)
    };
    assert_eq!(counts().await, (2, 1, 3));
    assert!(
        s.record_delivered(m2.id, "m2", delivered(), 8)
            .await
            .unwrap()
            .is_empty()
    );
    // m1's delivery was counted already; their read adds a read only.
    s.mark_read(rm(m1.id, &conv, u64::MAX, 9)).await.unwrap();
    assert_eq!(counts().await, (2, 2, 3));
}

/// Checks edit and recall are the sender's, within the window, reach both
/// logs and the stored message; delete-for-me hides a message from the
/// actor's history only.
pub async fn messages_are_recalled_edited_and_deleted_for_me(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["alice", "carol"]).await;
    let (a, c) = (&u[0], &u[1]);
    let first = s
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "1", "hello", 1000))
        .await
        .unwrap();
    let second = s
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "2", "second", 1000))
        .await
        .unwrap();
    let conv = first.conversation_id.clone();
    let change = |actor: u64, conv_seq: u64, kind: MessageChangeKind, now_ms: i64| MessageChange {
        actor,
        conversation_id: conv.clone(),
        group_id: 0,
        participants: vec![a.id, c.id],
        conv_seq,
        kind,
        now_ms,
    };
    let edit = |text: &str| MessageChangeKind::Edit {
        content: Content {
            text: text.into(),
            ..Default::default()
        },
        window_ms: 10_000,
    };
    assert!(matches!(
        refusal(
            s.change_message(change(c.id, first.conv_seq, edit("no"), 2000))
                .await
        ),
        CoreError::Forbidden(_)
    ));
    let edited = s
        .change_message(change(a.id, first.conv_seq, edit("edited"), 2000))
        .await
        .unwrap();
    assert_eq!((edited.edited_at_ms, edited.appended.len()), (2000, 2));
    let stored = s.message(&conv, first.conv_seq).await.unwrap().unwrap();
    assert_eq!(
        (stored.content.unwrap().text.as_str(), stored.edited_at_ms),
        ("edited", 2000)
    );
    assert!(
        s.change_message(change(a.id, first.conv_seq, edit("edited"), 2500))
            .await
            .unwrap()
            .appended
            .is_empty(),
        "the same content again changes nothing"
    );
    assert!(matches!(
        refusal(
            s.change_message(change(
                a.id,
                second.conv_seq,
                MessageChangeKind::Recall { window_ms: 10 },
                1_000_000
            ))
            .await
        ),
        CoreError::WindowExpired(_)
    ));
    let recalled = s
        .change_message(change(
            a.id,
            second.conv_seq,
            MessageChangeKind::Recall { window_ms: 10_000 },
            3000,
        ))
        .await
        .unwrap();
    assert_eq!(recalled.appended.len(), 2);
    let stored = s.message(&conv, second.conv_seq).await.unwrap().unwrap();
    assert!(stored.recalled && stored.content.is_none());
    let summary = s.conversation(c.id, &conv).await.unwrap().unwrap();
    assert!(
        summary.last_message.unwrap().recalled,
        "the summary follows"
    );
    // A later sync serves both message events as the messages are now: the
    // edited text, and the recalled one without its content.
    for user in [a.id, c.id] {
        let log = s
            .read_log(user, LogFrom::Oldest, 100, 1 << 20)
            .await
            .unwrap();
        let messages: Vec<&Message> = log
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(event::Kind::Message(m)) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(messages.len(), 2, "{:?}", log.events);
        assert_eq!(
            (
                messages[0].content.as_ref().unwrap().text.as_str(),
                messages[0].edited_at_ms
            ),
            ("edited", 2000)
        );
        assert_eq!(messages[0].client_msg_id, "1");
        assert!(messages[1].recalled && messages[1].content.is_none());
        assert_eq!(messages[1].sender_username, "alice");
    }

    let hidden = s
        .change_message(change(
            c.id,
            first.conv_seq,
            MessageChangeKind::DeleteForMe,
            4000,
        ))
        .await
        .unwrap();
    assert_eq!(hidden.appended.len(), 1);
    assert_eq!(hidden.appended[0].user_id, c.id);
    let mut q = hq(&conv, 0, 10, 1 << 20);
    q.viewer = c.id;
    let (page, _) = s.history(q.clone()).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
        vec![second.conv_seq]
    );
    q.viewer = a.id;
    assert_eq!(
        s.history(q).await.unwrap().0.len(),
        2,
        "only for the one who deleted"
    );
    assert!(
        s.change_message(change(
            c.id,
            first.conv_seq,
            MessageChangeKind::DeleteForMe,
            4001
        ))
        .await
        .unwrap()
        .appended
        .is_empty()
    );
    assert!(matches!(
        refusal(
            s.change_message(change(a.id, 999, MessageChangeKind::DeleteForMe, 1))
                .await
        ),
        CoreError::MessageNotFound
    ));
}

/// Checks blocking is idempotent and told to the blocker's devices,
/// preferences round-trip, and contacts and shared conversations follow
/// direct messages.
pub async fn blocks_prefs_and_contacts(f: &dyn Factory) {
    let b = f.open(Settings::default()).await;
    let s = &b.store;
    let u = users(s, &["alice", "carol", "dave"]).await;
    let (a, c, d) = (&u[0], &u[1], &u[2]);
    let blocked = s
        .set_blocked(a.id, (c.id, "carol".into()), true, 1)
        .await
        .unwrap();
    assert_eq!(blocked.len(), 1);
    assert!(
        matches!(&blocked[0].events[0].kind, Some(event::Kind::BlockChanged(x)) if x.blocked && x.user_id == c.id)
    );
    assert!(s.is_blocked(a.id, c.id).await.unwrap());
    assert!(!s.is_blocked(c.id, a.id).await.unwrap());
    assert!(
        s.set_blocked(a.id, (c.id, "carol".into()), true, 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.blocked_users(a.id, 10).await.unwrap(), vec![c.id]);
    assert_eq!(
        s.set_blocked(a.id, (c.id, "carol".into()), false, 3)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.blocked_users(a.id, 10).await.unwrap().is_empty());

    assert_eq!(s.prefs(a.id).await.unwrap(), UserPrefs::default());
    let prefs = UserPrefs {
        hide_presence: true,
        last_seen_ms: 5,
    };
    s.set_prefs(a.id, prefs).await.unwrap();
    assert_eq!(s.prefs(a.id).await.unwrap(), prefs);

    s.append_message(msg((a.id, "alice"), (c.id, "carol"), "1", "hi", 1))
        .await
        .unwrap();
    assert_eq!(s.contacts(a.id, 10).await.unwrap(), vec![c.id]);
    assert_eq!(s.contacts(c.id, 10).await.unwrap(), vec![a.id]);
    assert!(s.shares_conversation(a.id, c.id).await.unwrap());
    assert!(!s.shares_conversation(a.id, d.id).await.unwrap());
    assert!(s.shares_conversation(d.id, d.id).await.unwrap());
}
