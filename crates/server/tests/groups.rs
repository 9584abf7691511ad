//! Groups through the real binary: the permission matrix, removed members
//! seeing nothing new, a 5,000-member group (read diffusion), and a group
//! crossing the fan-out threshold mid-conversation.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::*;
use pigeon_client::v1::{self, ErrorCode, GroupRole, event, frame::Body};
use pigeon_client::{Connection, text as content, to_group};

/// Connects `name` on a new device.
async fn device(url: &str, name: &str) -> Connection {
    connect(url, &login(url, name, "test").await).await
}

/// The message texts and group changes in `events`, in order, as strings.
fn story(events: &[v1::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::Message(m)) => Some(m.content.clone().unwrap_or_default().text),
            Some(event::Kind::GroupChange(c)) => Some(format!(
                "<{:?}>",
                v1::GroupChangeKind::try_from(c.kind).unwrap()
            )),
            _ => None,
        })
        .collect()
}

/// What an attempt came to: Ok, or the error code.
type Outcome = Result<(), ErrorCode>;

fn outcome<T>(r: Result<T, pigeon_client::ClientError>) -> Outcome {
    r.map(|_| ())
        .map_err(|e| e.code().unwrap_or(ErrorCode::Unspecified))
}

/// Every group operation tried by the owner, an admin, a member, a former
/// member and a non-member, each on a fresh group, against the expected
/// outcome of each cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix() {
    let server = Server::start("");
    let url = server.tcp_url();
    let names = [
        "owner", "admin", "member", "former", "outsider", "target", "target2", "newbie",
    ];
    register_many(&url, &names.map(String::from)).await;
    let mut conns = std::collections::HashMap::new();
    for n in names {
        conns.insert(n, device(&url, n).await);
    }
    let actors = ["owner", "admin", "member", "former", "outsider"];
    const OK: Outcome = Ok(());
    const NO: Outcome = Err(ErrorCode::Forbidden);
    // Each row: the operation and the expected outcome for each actor.
    let rows: [(&str, [Outcome; 5]); 12] = [
        ("post", [OK, OK, OK, NO, NO]),
        ("add", [OK, OK, NO, NO, NO]),
        ("remove member", [OK, OK, NO, NO, NO]),
        ("remove admin", [OK, NO, NO, NO, NO]),
        ("rename", [OK, OK, NO, NO, NO]),
        ("make admin", [OK, NO, NO, NO, NO]),
        ("transfer", [OK, NO, NO, NO, NO]),
        ("dissolve", [OK, NO, NO, NO, NO]),
        ("leave", [NO, OK, OK, NO, NO]),
        ("get group", [OK, OK, OK, OK, NO]),
        ("list members", [OK, OK, OK, NO, NO]),
        ("history", [OK, OK, OK, OK, NO]),
    ];
    for (op, expected) in rows {
        for (actor, want) in actors.iter().zip(expected) {
            let owner = &conns["owner"];
            let g = owner
                .create_group(
                    "matrix",
                    "",
                    &["admin", "member", "former", "target", "target2"],
                    None,
                )
                .await
                .unwrap();
            let id = g.conversation_id.as_str();
            owner.set_role(id, "admin", GroupRole::Admin).await.unwrap();
            owner
                .set_role(id, "target2", GroupRole::Admin)
                .await
                .unwrap();
            owner.remove_members(id, &["former"]).await.unwrap();
            let c = &conns[actor];
            let got = match op {
                "post" => outcome(
                    c.send(
                        &pigeon_client::new_client_msg_id(),
                        to_group(id),
                        content("hi"),
                    )
                    .await,
                ),
                "add" => outcome(c.add_members(id, &["newbie"]).await),
                "remove member" => outcome(c.remove_members(id, &["target"]).await),
                "remove admin" => outcome(c.remove_members(id, &["target2"]).await),
                "rename" => outcome(
                    c.update_group(v1::UpdateGroupRequest {
                        conversation_id: id.into(),
                        update_name: true,
                        name: "renamed".into(),
                        ..Default::default()
                    })
                    .await,
                ),
                "make admin" => outcome(c.set_role(id, "target", GroupRole::Admin).await),
                "transfer" => outcome(c.transfer_ownership(id, "target").await),
                "dissolve" => outcome(c.dissolve_group(id).await),
                "leave" => outcome(c.leave_group(id).await),
                "get group" => outcome(c.get_group(id).await),
                "list members" => outcome(c.list_members(id, 0, 0).await),
                "history" => outcome(c.history(to_group(id), 0, 0).await),
                _ => unreachable!(),
            };
            assert_eq!(got, want, "{actor} tries {op}");
        }
    }
    // What the successful cells did is visible in the group's state.
    let owner = &conns["owner"];
    let g = owner
        .create_group("state", "", &["member"], None)
        .await
        .unwrap();
    let id = g.conversation_id.as_str();
    let after = owner.transfer_ownership(id, "member").await.unwrap();
    assert_eq!(after.owner_username, "member");
    let me = owner.get_group(id).await.unwrap();
    assert_eq!(
        me.my_role,
        GroupRole::Admin as i32,
        "the old owner becomes an admin"
    );
    let err = conns["member"]
        .set_role(id, "owner", GroupRole::Owner)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidArgument),
        "only admin or member can be set"
    );
    conns["member"].dissolve_group(id).await.unwrap();
    let err = owner
        .send("after-dissolve", to_group(id), content("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

/// A removed member gets the removal event, then nothing sent after it:
/// not by push, not by sync with an old key, not in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_receives_nothing_after_removal() {
    let server = Server::start("");
    let url = server.tcp_url();
    register_many(&url, &["owner".into(), "kept".into(), "gone".into()]).await;
    let owner = device(&url, "owner").await;
    let gone = device(&url, "gone").await;
    let g = owner
        .create_group("g", "", &["kept", "gone"], None)
        .await
        .unwrap();
    let id = g.conversation_id.clone();
    owner
        .send("m1", to_group(&id), content("before"))
        .await
        .unwrap();
    let sent_before = gone
        .send("g1", to_group(&id), content("mine, before"))
        .await
        .unwrap();
    let (_, old_key) = sync_all(&gone, &[]).await;
    owner.remove_members(&id, &["gone"]).await.unwrap();
    owner
        .send("m2", to_group(&id), content("after"))
        .await
        .unwrap();
    let (events, _) = sync_all(&gone, &old_key).await;
    assert_eq!(
        story(&events),
        vec!["<MembersRemoved>"],
        "only the removal itself"
    );
    let (all, _) = sync_all(&gone, &[]).await;
    assert_eq!(
        story(&all),
        vec!["<Created>", "before", "mine, before", "<MembersRemoved>"]
    );
    let page = gone.history(to_group(&id), 0, 0).await.unwrap();
    let texts: Vec<String> = page
        .messages
        .iter()
        .map(|m| m.content.clone().unwrap().text)
        .collect();
    assert_eq!(texts, vec!["mine, before", "before"]);
    assert_eq!(
        gone.get_group(&id).await.unwrap().my_role,
        GroupRole::None as i32
    );
    let err = gone
        .send("m3", to_group(&id), content("let me back"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // A retry of what they sent while a member still gets its original
    // acknowledgement (a lost ack must not turn a stored message into a
    // failed one), and stores nothing.
    let retry = gone
        .send("g1", to_group(&id), content("mine, before"))
        .await
        .expect("the original acknowledgement");
    assert!(retry.duplicate);
    assert_eq!(retry.conv_seq, sent_before.conv_seq);
    let kept = device(&url, "kept").await;
    let (events, _) = sync_all(&kept, &[]).await;
    assert_eq!(
        story(&events),
        vec![
            "<Created>",
            "before",
            "mine, before",
            "<MembersRemoved>",
            "after"
        ]
    );
}

/// A 5,000-member group: one message is stored once (members receive it
/// from the group's shared log, seq 0, not from their own logs), reaches
/// online members by a notice and sync, is synced by offline members, and
/// its read receipts come back aggregated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_member_group() {
    const MEMBERS: usize = 5000;
    let server = Server::start("");
    let url = server.tcp_url();
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("u{i:04}")).collect();
    let t = Instant::now();
    register_many(&url, &names).await;
    eprintln!("registered {MEMBERS} users in {:?}", t.elapsed());
    let owner = device(&url, &names[0]).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    let g = owner
        .create_group("channel", "", &refs[1..1001], None)
        .await
        .unwrap();
    let id = g.conversation_id.clone();
    for chunk in refs[1001..].chunks(1000) {
        owner.add_members(&id, chunk).await.unwrap();
    }
    eprintln!("built the group in {:?}", t.elapsed());
    let info = owner.get_group(&id).await.unwrap().group.unwrap();
    assert_eq!(info.member_count as usize, MEMBERS);
    assert!(info.large, "above the threshold the group is read-diffused");

    // A few members online and up to date.
    let mut online = Vec::new();
    for n in &refs[1..11] {
        let c = device(&url, n).await;
        let (_, key) = sync_all(&c, &[]).await;
        online.push((c, key));
    }
    let t = Instant::now();
    let ack = owner
        .send("big-1", to_group(&id), content("hello 5000"))
        .await
        .unwrap();
    eprintln!(
        "send to {MEMBERS} members acknowledged in {:?}",
        t.elapsed()
    );

    for (c, key) in &online {
        let push = next_sync_push(c).await;
        assert!(
            matches!(push, Body::SyncNotice(_)),
            "large groups notify, got {push:?}"
        );
        let (events, _) = sync_all(c, key).await;
        let msgs: Vec<&v1::Event> = events
            .iter()
            .filter(|e| matches!(e.kind, Some(event::Kind::Message(_))))
            .collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(text(msgs[0]), "hello 5000");
        assert_eq!(
            msgs[0].seq, 0,
            "read from the shared log, not written to the member's log"
        );
        assert!(msgs[0].group_seq > 0);
    }
    eprintln!(
        "10 online members notified and synced {:?} after the send",
        t.elapsed()
    );
    // Offline members sync it later, exactly once.
    for n in &refs[MEMBERS - 20..] {
        let c = device(&url, n).await;
        let (events, _) = sync_all(&c, &[]).await;
        assert_eq!(texts(&events), vec!["hello 5000"], "{n}");
    }

    // Read receipts are counted, not listed per reader.
    for (c, _) in &online {
        c.mark_read(&id, ack.conv_seq).await.unwrap();
    }
    let counts = owner.get_receipts(&id, &[ack.conv_seq]).await.unwrap();
    assert_eq!(counts[0].read_count, 10);
    assert_eq!(counts[0].member_count as usize, MEMBERS);
    let (events, _) = sync_all(&owner, &[]).await;
    let summaries: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::ReceiptSummary(s)) if s.read_count > 0 => Some(s.read_count),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.iter().max(), Some(&10));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, Some(event::Kind::Receipt(_)))),
        "no per-reader receipts"
    );
}

/// A group grows past the fan-out threshold mid-conversation: devices that
/// sync across the switch, one event at a time or from an old key, see
/// every message once and in order; a member who joined at the switch sees
/// only what followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_the_fanout_threshold_loses_and_duplicates_nothing() {
    let server = Server::start("group_large_threshold = 4");
    let url = server.tcp_url();
    let names = ["own", "pp1", "pp2", "pp3", "pp4"].map(String::from);
    register_many(&url, &names).await;
    let o = device(&url, "own").await;
    let p1 = device(&url, "pp1").await;
    let g = o
        .create_group("growing", "", &["pp1", "pp2"], None)
        .await
        .unwrap();
    assert!(!g.large);
    let id = g.conversation_id.clone();
    o.send("m1", to_group(&id), content("m1")).await.unwrap();
    o.send("m2", to_group(&id), content("m2")).await.unwrap();
    let (_, k1) = sync_all(&p1, &[]).await;
    let grown = o.add_members(&id, &["pp3", "pp4"]).await.unwrap();
    assert!(grown.group.unwrap().large, "five members > threshold 4");
    o.send("m3", to_group(&id), content("m3")).await.unwrap();
    o.send("m4", to_group(&id), content("m4")).await.unwrap();
    let p2 = device(&url, "pp2").await;
    p2.send("m5", to_group(&id), content("m5")).await.unwrap();

    // One event per sync, from the beginning, across the switch.
    let mut key = Vec::new();
    let mut events = Vec::new();
    loop {
        let r = p2.sync(&key, 1).await.unwrap();
        events.extend(r.events);
        key = r.key;
        if !r.has_more {
            break;
        }
    }
    assert_eq!(
        story(&events),
        vec!["<Created>", "m1", "m2", "<MembersAdded>", "m3", "m4", "m5"]
    );
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::Message(m)) => Some(m.conv_seq),
            _ => None,
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "conversation order: {seqs:?}"
    );
    assert!(p2.sync(&key, 0).await.unwrap().events.is_empty());

    let (rest, _) = sync_all(&p1, &k1).await;
    assert_eq!(story(&rest), vec!["<MembersAdded>", "m3", "m4", "m5"]);
    let p3 = device(&url, "pp3").await;
    let (seen, _) = sync_all(&p3, &[]).await;
    assert_eq!(story(&seen), vec!["<MembersAdded>", "m3", "m4", "m5"]);
    let history: HashSet<String> = p1
        .history(to_group(&id), 0, 0)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.content.clone().unwrap().text)
        .collect();
    assert_eq!(history.len(), 5);
    let p3_history = p3.history(to_group(&id), 0, 0).await.unwrap().messages;
    assert_eq!(p3_history.len(), 3, "joined after m2");
}
