//! Two and three nodes on a real `nats-server` (started by the test):
//! what one node's service hands its notifier reaches the devices on the
//! others, membership and presence are cluster-wide, and a bus outage
//! ends with every device told to sync.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pigeon_bus::{BusConfig, Cluster};
use pigeon_core::{Notifier, PushBatch};
use pigeon_gateway::Registry;
use pigeon_gateway::registry::{Push, Registration};
use pigeon_proto::Body;
use pigeon_proto::v1::{self, Event};
use pigeon_testkit::NatsServer;

fn config(url: &str, node: &str) -> BusConfig {
    BusConfig {
        url: url.to_string(),
        subject_prefix: "pigeontest".into(),
        node_id: node.into(),
        endpoints: vec![format!("tcp://{node}:7000")],
        beat_interval: Duration::from_millis(100),
        node_timeout: Duration::from_millis(800),
        snapshot_interval: Duration::from_secs(30),
        queue_max: 1024,
        message_bytes_max: 512 * 1024,
    }
}

async fn node(url: &str, id: &str) -> (Arc<Cluster>, Arc<Registry>) {
    let registry = Arc::new(Registry::default());
    let cluster = Cluster::start(config(url, id), registry.clone())
        .await
        .unwrap();
    (cluster, registry)
}

/// Polls `cond` for up to ten seconds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn next_push(reg: &mut Registration) -> Push {
    tokio::time::timeout(Duration::from_secs(10), reg.recv())
        .await
        .expect("a push arrives")
}

fn event(seq: u64) -> Event {
    Event {
        seq,
        created_at_ms: 1_700_000_000_000 + seq as i64,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_presence_and_membership_cross_nodes() {
    let nats = NatsServer::start();
    let (a, reg_a) = node(&nats.url(), "a").await;
    let (b, reg_b) = node(&nats.url(), "b").await;
    eventually("each node sees the other", || {
        a.nodes().len() == 2 && b.nodes().len() == 2
    })
    .await;
    assert_eq!(a.endpoints().len(), 2);
    assert_eq!(a.redirect_targets(), vec!["tcp://b:7000".to_string()]);

    // User 7 connects to b; a learns it is online.
    let (mut dev, first) = reg_b.register(7, "hash-7", 16);
    assert!(first);
    assert!(!a.is_online(7) || reg_a.online(7) == 0);
    eventually("a sees 7 online on b", || a.is_online(7)).await;
    assert!(!a.is_online(8));

    // Events committed on a reach the device on b, unchanged.
    a.notify(Arc::new(PushBatch {
        user_id: 7,
        prev_seq: 4,
        last_seq: 6,
        events: vec![event(5), event(6)],
    }));
    match next_push(&mut dev).await {
        Push::Events(batch) => {
            assert_eq!((batch.user_id, batch.prev_seq, batch.last_seq), (7, 4, 6));
            assert_eq!(batch.events, vec![event(5), event(6)]);
        }
        other => panic!("expected events, got {other:?}"),
    }
    // A large group's notice, an ephemeral push, everyone.
    a.notify_stream(Arc::from(vec![3, 7, 9]));
    assert!(matches!(next_push(&mut dev).await, Push::Notice));
    let typing = Body::TypingPush(v1::TypingPush {
        conversation_id: "d:1:7".into(),
        ..Default::default()
    });
    a.push_ephemeral(&[7], typing.clone());
    match next_push(&mut dev).await {
        Push::Ephemeral(body) => assert_eq!(*body, typing),
        other => panic!("expected the typing push, got {other:?}"),
    }
    a.notify_everyone();
    assert!(matches!(next_push(&mut dev).await, Push::Notice));

    // Logout on a closes that session's connections on b; an admin's
    // close reaches every connection.
    reg_a.revoke(7, "hash-7");
    eventually("the session is revoked on b", || {
        dev.mailbox.revoked.load(Ordering::SeqCst)
    })
    .await;
    a.close_user(7, pigeon_proto::ErrorCode::AccountDisabled);
    eventually("the connection is closed on b", || {
        dev.mailbox.close_code.load(Ordering::SeqCst)
            == pigeon_proto::ErrorCode::AccountDisabled as i32
    })
    .await;

    // A node joining later learns who is where from the others' snapshots.
    let (c, _reg_c) = node(&nats.url(), "c").await;
    eventually("c sees 7 online on b", || c.is_online(7)).await;
    eventually("three nodes", || a.nodes().len() == 3).await;

    // 7 leaves b: everyone sees it offline.
    assert!(reg_b.unregister(dev));
    eventually("7 offline everywhere", || {
        !a.is_online(7) && !c.is_online(7)
    })
    .await;

    // b drains: the others stop offering it at once.
    b.leave().await;
    eventually("b no longer offered", || {
        a.endpoints() == c.endpoints() && a.nodes().len() == 2
    })
    .await;
    assert!(!b.endpoints().contains(&"tcp://b:7000".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_forgotten_and_an_outage_ends_in_a_sync() {
    let mut nats = NatsServer::start();
    let (a, reg_a) = node(&nats.url(), "a").await;
    let (b, reg_b) = node(&nats.url(), "b").await;
    let (mut dev_a, _) = reg_a.register(1, "h1", 16);
    let (_dev_b, _) = reg_b.register(2, "h2", 16);
    eventually("both see each other's user", || {
        a.is_online(2) && b.is_online(1)
    })
    .await;

    // The bus goes away: pushes between nodes stop, nothing breaks locally.
    nats.kill();
    eventually("a notices the outage", || !a.connected()).await;
    b.notify(Arc::new(PushBatch {
        user_id: 1,
        prev_seq: 0,
        last_seq: 1,
        events: vec![event(1)],
    }));
    // Nodes heard from no more are forgotten after the timeout...
    eventually("b forgotten by a", || {
        !a.is_online(2) && a.nodes().len() == 1
    })
    .await;
    // ...and when the bus is back, a's devices are told to sync (the push
    // from b may be lost) and membership is rebuilt.
    nats.restart();
    eventually("a reconnects", || a.connected()).await;
    let mut got_notice = false;
    for _ in 0..4 {
        match next_push(&mut dev_a).await {
            Push::Notice => {
                got_notice = true;
                break;
            }
            Push::Events(_) => {}
            Push::Ephemeral(_) => {}
        }
    }
    assert!(got_notice, "a device on a is told to sync after the outage");
    eventually("membership rebuilt", || {
        a.is_online(2) && b.is_online(1) && a.nodes().len() == 2
    })
    .await;
}
