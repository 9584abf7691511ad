//! The reconnecting SDK client against the real server: it follows the
//! sync log, survives a server crash, retries a send made while the server
//! was down with the same client message id, and never delivers an event
//! twice.

mod common;

use std::time::Duration;

use common::*;
use pigeon_client::v1::event;
use pigeon_client::{Client, ClientEvent, ClientOptions, ConnectOptions, text as content, to_user};
use tokio::sync::mpsc::Receiver;

/// Collects message texts from the event stream until `n` have arrived.
async fn messages(rx: &mut Receiver<ClientEvent>, n: usize, seen: &mut Vec<(u64, String)>) {
    let target = seen.len() + n;
    while seen.len() < target {
        match within(rx.recv()).await.expect("client running") {
            ClientEvent::Events { events, key } => {
                assert!(!key.is_empty());
                for e in events {
                    if let Some(event::Kind::Message(m)) = &e.kind {
                        seen.push((e.seq, m.content.clone().unwrap_or_default().text));
                    }
                }
            }
            ClientEvent::Stopped { error } => panic!("client stopped: {error}"),
            _ => {}
        }
    }
}

/// Bob's SDK client receives alice's messages live, rides out a `kill -9`
/// and restart, delivers a send queued during the outage exactly once, and
/// resumes from its key without repeating events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_resumes_and_retries_sends() {
    let mut server = Server::start("");
    let url = server.tcp_url();
    let alice_token = register_and_login(&url, "alice").await;
    let bob_token = register_and_login(&url, "bob").await;
    let mut opts = ClientOptions::new(ConnectOptions::new(server.ws_url()).with_token(&bob_token));
    opts.backoff_min = Duration::from_millis(50);
    opts.backoff_max = Duration::from_millis(300);
    let (bob, mut rx) = Client::start(opts);

    let alice = connect(&url, &alice_token).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        alice
            .send(
                &format!("a{i}"),
                to_user("bob"),
                content(&format!("live {i}")),
            )
            .await
            .unwrap();
    }
    messages(&mut rx, 3, &mut seen).await;

    server.kill9();
    let sender = bob.clone();
    let queued = tokio::spawn(async move {
        sender
            .send(to_user("alice"), content("sent while down"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let ack = within(queued)
        .await
        .unwrap()
        .expect("send retried after reconnect");
    assert!(!ack.duplicate || ack.conv_seq > 0);

    let alice = connect(&url, &alice_token).await;
    alice
        .send("a3", to_user("bob"), content("after restart"))
        .await
        .unwrap();
    // Bob's own message reaches his log too; then alice's.
    messages(&mut rx, 2, &mut seen).await;
    let texts: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "live 0",
            "live 1",
            "live 2",
            "sent while down",
            "after restart"
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "strictly increasing seqs, no repeats: {seen:?}"
    );

    // The client's key is at the head: a sync from it returns nothing.
    let bob_conn = connect(&url, &bob_token).await;
    let r = bob_conn.sync(&bob.sync_key(), 0).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);
    let (all, _) = sync_all(&bob_conn, &[]).await;
    assert_eq!(
        common::texts(&all)
            .iter()
            .filter(|t| *t == "sent while down")
            .count(),
        1,
        "stored once"
    );
    bob.shutdown().await;
}
