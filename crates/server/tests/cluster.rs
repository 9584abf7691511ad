//! Cluster mode through the real binary: nodes on one real PostgreSQL and
//! one real `nats-server` (both started by the test). Users spread over
//! the nodes chat directly and in groups, see each other's presence and
//! typing; concurrent writers on different nodes produce one order that
//! every reader sees; a bus outage costs latency, never data; nodes list
//! each other in `GET /v1/endpoints`, least loaded first, and a draining
//! node sends its clients to the others.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use pigeon_client::v1::{self, ErrorCode, PresenceState, event, frame::Body};
use pigeon_client::{Connection, text as content, to_group, to_user};
use pigeon_testkit::{NatsServer, PgServer};

/// One database and one bus for the nodes of a test.
struct Cluster {
    nats: NatsServer,
    db: String,
    _pg: PgServer,
}

impl Cluster {
    fn start() -> Cluster {
        let pg = PgServer::start().expect("starting PostgreSQL");
        let db = pg.create_database().unwrap();
        Cluster {
            nats: NatsServer::start(),
            db,
            _pg: pg,
        }
    }

    fn node(&self, id: &str) -> Server {
        self.node_with(id, "")
    }

    fn node_with(&self, id: &str, extra: &str) -> Server {
        Server::start_with_args(
            &format!(
                "bus = \"{}\"\nnode_id = \"{id}\"\ncluster_beat_ms = 100\ncluster_node_timeout_ms = 1000\n{extra}",
                self.nats.url()
            ),
            &["--store".to_string(), self.db.clone()],
        )
    }
}

/// The next push `pick` accepts, skipping others (ten seconds at most).
async fn push_where<T>(c: &Connection, what: &str, pick: impl Fn(Body) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, c.next_push()).await {
            Ok(Some(body)) => {
                if let Some(t) = pick(body) {
                    return t;
                }
            }
            Ok(None) => panic!("connection closed while waiting for {what}"),
            Err(_) => panic!("no {what} within 10 s"),
        }
    }
}

/// Waits for a push telling `c` there is something new (events or a notice).
async fn new_events_pushed(c: &Connection, what: &str) {
    push_where(c, what, |b| {
        matches!(b, Body::EventsPush(_) | Body::SyncNotice(_)).then_some(())
    })
    .await
}

async fn presence_of(c: &Connection, user: &str, state: PresenceState) -> v1::Presence {
    push_where(c, &format!("{user} {state:?}"), |b| match b {
        Body::PresencePush(p) => p
            .presence
            .filter(|p| p.username == user && p.state == state as i32),
        _ => None,
    })
    .await
}

fn message(e: &v1::Event) -> Option<&v1::Message> {
    match &e.kind {
        Some(event::Kind::Message(m)) => Some(m),
        _ => None,
    }
}

/// Users on three nodes chat directly and in a group: every push crosses
/// nodes through the bus; presence and typing too; a node killed outright
/// has its users announced offline by a survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_with_presence_and_typing() {
    let cluster = Cluster::start();
    let a = cluster.node("a");
    let mut b = cluster.node("b");
    let c = cluster.node("c");
    eventually_endpoints(&a, "three nodes", |l| l.len() == 6).await;
    let (ua, ub, uc) = (a.tcp_url(), b.tcp_url(), c.tcp_url());
    let alice = connect(&ua, &register_and_login(&ua, "alice").await).await;
    let bob = connect(&ub, &register_and_login(&ub, "bob").await).await;
    let carol_token = register_and_login(&uc, "carol").await;

    // Direct, both ways: the push reaches the other node.
    alice
        .send("a1", to_user("bob"), content("hello from a"))
        .await
        .unwrap();
    new_events_pushed(&bob, "bob's push").await;
    let (events, bob_key) = sync_all(&bob, &[]).await;
    assert_eq!(texts(&events), ["hello from a"]);
    bob.send("b1", to_user("alice"), content("hello from b"))
        .await
        .unwrap();
    new_events_pushed(&alice, "alice's push").await;
    let (events, alice_key) = sync_all(&alice, &[]).await;
    assert_eq!(texts(&events), ["hello from a", "hello from b"]);

    // A group across the three nodes.
    let group = alice
        .create_group("three", "", &["bob", "carol"], None)
        .await
        .unwrap();
    let gid = group.conversation_id.clone();
    let carol = connect(&uc, &carol_token).await;
    // Carol's arrival is presence news for her contacts on a and b.
    presence_of(&alice, "carol", PresenceState::Online).await;
    carol
        .send("c1", to_group(&gid), content("hello from c"))
        .await
        .unwrap();
    for (who, conn, key) in [("alice", &alice, &alice_key), ("bob", &bob, &bob_key)] {
        let (events, _) = loop {
            new_events_pushed(conn, who).await;
            let got = sync_all(conn, key).await;
            if texts(&got.0).contains(&"hello from c".to_string()) {
                break got;
            }
        };
        assert!(
            texts(&events).ends_with(&["hello from c".to_string()]),
            "{who}"
        );
    }

    // Typing on b reaches a; presence is cluster-wide.
    let direct = bob
        .send("b2", to_user("alice"), content("typing next"))
        .await
        .unwrap();
    bob.set_typing(&direct.conversation_id, true).await.unwrap();
    let t = push_where(&alice, "bob typing", |b| match b {
        Body::TypingPush(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!((t.username.as_str(), t.typing), ("bob", true));
    let seen = alice.get_presence(&["bob", "carol"]).await.unwrap();
    assert!(
        seen.iter().all(|p| p.state == PresenceState::Online as i32),
        "{seen:?}"
    );

    // Carol leaves c: her contacts on a and b see her go.
    carol.close().await;
    let p = presence_of(&bob, "carol", PresenceState::Offline).await;
    assert!(p.last_seen_ms > 0);
    presence_of(&alice, "carol", PresenceState::Offline).await;

    // b dies with bob on it: a survivor announces him offline.
    b.kill9();
    presence_of(&alice, "bob", PresenceState::Offline).await;
    let seen = alice.get_presence(&["bob"]).await.unwrap();
    assert_eq!(seen[0].state, PresenceState::Offline as i32);
    drop(bob);
    drop(ub);
}

/// Writers on three nodes send at once to the same users and the same
/// groups (one small, written to every member's log; one large, read from
/// its shared log): every reader, through any node, sees one order per
/// conversation, the same for all, with nothing missing or doubled, and
/// each user's log strictly increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_different_nodes_agree_on_order() {
    const WRITERS: usize = 6;
    const EACH: usize = 25;
    let cluster = Cluster::start();
    let nodes = [
        cluster.node_with("a", "group_large_threshold = 4"),
        cluster.node_with("b", "group_large_threshold = 4"),
        cluster.node_with("c", "group_large_threshold = 4"),
    ];
    let urls: Vec<String> = nodes.iter().map(Server::tcp_url).collect();
    let writers: Vec<String> = (0..WRITERS).map(|i| format!("writer{i}")).collect();
    let mut names = writers.clone();
    names.extend(["reader0".to_string(), "reader1".to_string()]);
    register_many(&urls[0], &names).await;
    let owner = connect(&urls[0], &login(&urls[0], "reader0", "setup").await).await;
    let all: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "reader0")
        .collect();
    // Three members: small (fanned out to logs); everyone: large (shared log).
    let small = owner
        .create_group("small", "", &["writer0", "writer1"], None)
        .await
        .unwrap()
        .conversation_id;
    let large = owner
        .create_group("large", "", &all, None)
        .await
        .unwrap()
        .conversation_id;

    let mut tasks = Vec::new();
    for (i, w) in writers.iter().enumerate() {
        let url = urls[i % urls.len()].clone();
        let (w, small, large) = (w.clone(), small.clone(), large.clone());
        tasks.push(tokio::spawn(async move {
            let conn = connect(&url, &login(&url, &w, "writer").await).await;
            for n in 0..EACH {
                let id = format!("{w}-{n}");
                let target = match n % 3 {
                    0 => to_user("reader0"),
                    1 if w == "writer0" || w == "writer1" => to_group(&small),
                    _ => to_group(&large),
                };
                conn.send(&id, target, content(&id)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Every member's view of each conversation, read through every node.
    let mut views: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for name in &names {
        for (k, url) in urls.iter().enumerate() {
            let conn = connect(url, &login(url, name, &format!("reader{k}")).await).await;
            let (events, _) = sync_all(&conn, &[]).await;
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).filter(|&s| s > 0).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{name}'s log strictly increases through node {k}"
            );
            let mut by_conv: HashMap<String, Vec<(u64, String)>> = HashMap::new();
            for m in events.iter().filter_map(message) {
                by_conv
                    .entry(m.conversation_id.clone())
                    .or_default()
                    // The text is the client message id, which other
                    // users' copies do not carry (protocol version 2).
                    .push((m.conv_seq, m.content.clone().unwrap_or_default().text));
            }
            for (conv, msgs) in by_conv {
                assert!(
                    msgs.windows(2).all(|w| w[0].0 < w[1].0),
                    "{name} sees {conv} in conv_seq order through node {k}"
                );
                let ids: Vec<String> = msgs.into_iter().map(|(_, id)| id).collect();
                let unique: HashSet<&String> = ids.iter().collect();
                assert_eq!(unique.len(), ids.len(), "{name}: nothing twice in {conv}");
                views.entry(conv).or_default().push(ids);
            }
        }
    }
    let count = |pred: &dyn Fn(usize, usize) -> bool| {
        (0..WRITERS)
            .flat_map(|w| (0..EACH).map(move |n| (w, n)))
            .filter(|&(w, n)| pred(w, n))
            .count()
    };
    let expected_small = count(&|w, n| n % 3 == 1 && w < 2);
    let expected_large = count(&|w, n| n % 3 == 2 || (n % 3 == 1 && w >= 2));
    for (conv, want, readers) in [
        (&small, expected_small, 3 * 3),
        (&large, expected_large, names.len() * 3),
    ] {
        let seen = &views[conv.as_str()];
        assert_eq!(
            seen.len(),
            readers,
            "every member reads {conv} through every node"
        );
        assert_eq!(seen[0].len(), want, "nothing missing in {conv}");
        assert!(
            seen.iter().all(|v| v == &seen[0]),
            "one order of {conv} for everyone"
        );
    }
    // The direct conversations with reader0: both sides' views agree.
    let direct: Vec<_> = views.iter().filter(|(c, _)| c.starts_with("d:")).collect();
    assert_eq!(direct.len(), WRITERS);
    for (conv, seen) in direct {
        assert_eq!(seen.len(), 2 * 3, "{conv}: both sides through every node");
        assert!(seen.iter().all(|v| v == &seen[0]), "{conv} agrees");
        assert_eq!(seen[0].len(), EACH.div_ceil(3));
    }
}

/// With the bus down, nodes keep serving and storing; when it is back, a
/// device on another node is told to sync and finds what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_outage_costs_latency_not_data() {
    let mut cluster = Cluster::start();
    let a = cluster.node("a");
    let b = cluster.node("b");
    eventually_endpoints(&a, "two nodes", |l| l.len() == 4).await;
    let (ua, ub) = (a.tcp_url(), b.tcp_url());
    let alice = connect(&ua, &register_and_login(&ua, "alice").await).await;
    let bob = connect(&ub, &register_and_login(&ub, "bob").await).await;
    let (_, key) = sync_all(&bob, &[]).await;

    cluster.nats.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .send("m1", to_user("bob"), content("sent during the outage"))
        .await
        .expect("a node without its bus still stores and acknowledges");
    cluster.nats.restart();
    new_events_pushed(&bob, "bob told to sync after the outage").await;
    let (events, _) = sync_all(&bob, &key).await;
    assert_eq!(texts(&events), ["sent during the outage"]);
}

async fn endpoints(server: &Server) -> Vec<String> {
    let (status, body) = http_get(&server.http, "/v1/endpoints").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

async fn eventually_endpoints(
    server: &Server,
    what: &str,
    cond: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut last = Vec::new();
    for _ in 0..200 {
        last = endpoints(server).await;
        if cond(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; endpoints: {last:?}");
}

fn own(server: &Server) -> Vec<String> {
    vec![server.tcp_url(), server.ws_url()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_each_other_and_drain_redirects() {
    let cluster = Cluster::start();
    let a = cluster.node("a");
    let mut b = cluster.node("b");
    let mut c = cluster.node("c");
    let all = eventually_endpoints(&a, "three nodes", |l| l.len() == 6).await;
    for node in [&a, &b, &c] {
        for url in own(node) {
            assert!(all.contains(&url), "{url} listed in {all:?}");
        }
    }
    // Least loaded first: two connections on a put it last.
    let url_a = a.tcp_url();
    let token = register_and_login(&url_a, "alice").await;
    let _c1 = connect(&url_a, &token).await;
    let _c2 = connect(&url_a, &token).await;
    eventually_endpoints(&b, "a listed last", |l| {
        l.len() == 6 && l[4..] == own(&a)[..]
    })
    .await;

    // c drains: its client is sent to the other nodes, and nobody lists c.
    let url_c = c.tcp_url();
    let token = register_and_login(&url_c, "carol").await;
    let conn = connect(&url_c, &token).await;
    let pid = c.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let bye = loop {
        match within(conn.next_push()).await.expect("a goodbye") {
            Body::Goodbye(g) => break g,
            _ => continue,
        }
    };
    assert_eq!(bye.code, ErrorCode::ShuttingDown as i32);
    let mut expected: Vec<String> = own(&a).into_iter().chain(own(&b)).collect();
    let mut got = bye.redirect_to.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "redirected to the live nodes");
    assert!(c.terminate_wait().success());
    let left = eventually_endpoints(&a, "c gone", |l| l.len() == 4).await;
    assert!(!left.contains(&url_c));

    // b dies without a word: it is dropped after the node timeout.
    b.kill9();
    let left = eventually_endpoints(&a, "b forgotten", |l| l.len() == 2).await;
    assert_eq!(left, own(&a));
}
