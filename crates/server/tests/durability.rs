//! Acknowledged means durable: messages acknowledged before a `kill -9`
//! are all there after a restart, exactly once and in order.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::*;
use pigeon_client::v1::event;
use pigeon_client::{text as content, to_user};

/// Four senders pipeline messages to bob while the server is killed with
/// SIGKILL; after a restart bob's log holds every acknowledged message
/// exactly once, each sender's in send order; the senders' retries of the
/// unacknowledged ones then fill the rest without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let mut server = Server::start("");
    let url = server.tcp_url();
    let bob_token = register_and_login(&url, "bob").await;
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(register_and_login(&url, &format!("sender{i}")).await);
    }
    const PER_SENDER: usize = 400;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let conn = connect(&url, token).await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                let id = format!("s{i}-{n:04}");
                match conn.send(&id, to_user("bob"), content(&id)).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good share is acknowledged, while sends are in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(std::time::Instant::now() < deadline, "sends too slow");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() < 4 * PER_SENDER,
        "the kill must land while sends are in flight"
    );

    server.restart();
    let bob = connect(&url, &bob_token).await;
    let (events, key) = sync_all(&bob, &[]).await;
    let ids = message_ids(&events);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no message twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged {id} lost");
    }
    assert_in_send_order(&ids);

    // The senders retry everything they did not see acknowledged.
    for (i, token) in tokens.iter().enumerate() {
        let conn = connect(&url, token).await;
        for n in 0..PER_SENDER {
            let id = format!("s{i}-{n:04}");
            if !acked.contains(&id) {
                conn.send(&id, to_user("bob"), content(&id)).await.unwrap();
            }
        }
    }
    let (more, _) = sync_all(&bob, &key).await;
    let all: Vec<String> = ids.into_iter().chain(message_ids(&more)).collect();
    assert_eq!(all.len(), 4 * PER_SENDER, "every message exactly once");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
    assert_in_send_order(&all);
}

fn message_ids(events: &[pigeon_client::v1::Event]) -> Vec<String> {
    let mut seqs = Vec::new();
    let ids = events
        .iter()
        .map(|e| {
            seqs.push(e.seq);
            match &e.kind {
                // The text is the client message id, which the recipient's
                // copy does not carry (protocol version 2).
                Some(event::Kind::Message(m)) => m.content.clone().unwrap_or_default().text,
                other => panic!("unexpected event {other:?}"),
            }
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events in strictly increasing seq order"
    );
    ids
}

/// Each sender's messages appear in the order it sent them.
fn assert_in_send_order(ids: &[String]) {
    let mut last: HashMap<&str, &str> = HashMap::new();
    for id in ids {
        let (sender, n) = id.split_once('-').unwrap();
        if let Some(prev) = last.insert(sender, n) {
            assert!(prev < n, "{sender}: {n} after {prev}");
        }
    }
}
