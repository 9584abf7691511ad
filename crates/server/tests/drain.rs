//! Drain and redirect: on SIGTERM the server says goodbye with where to go
//! and when, lists its endpoints, and a rolling restart under load loses
//! nothing acknowledged.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pigeon_client::v1::{ErrorCode, frame::Body};
use pigeon_client::{Client, ClientOptions, ConnectOptions, text as content, to_user};

/// `GET /v1/endpoints` lists the configured endpoints; draining clients get
/// SHUTTING_DOWN with the redirect list and a retry-after within the spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_says_where_to_go() {
    let mut server = Server::start(
        "advertise_endpoints = [\"tcp://a.example:7700\", \"ws://a.example:7780/ws\"]\n\
         drain_redirect_to = [\"tcp://b.example:7700\"]\n\
         drain_reconnect_spread_ms = 500",
    );
    let (status, body) = http_get(&server.http, "/v1/endpoints").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["endpoints"][0], "tcp://a.example:7700");
    assert!(v["ttl_secs"].as_u64().unwrap() > 0);

    let url = server.tcp_url();
    let c = connect(&url, &register_and_login(&url, "alice").await).await;
    let pid = server.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let bye = loop {
        match within(c.next_push())
            .await
            .expect("a goodbye before the close")
        {
            Body::Goodbye(g) => break g,
            _ => continue,
        }
    };
    assert_eq!(bye.code, ErrorCode::ShuttingDown as i32);
    assert_eq!(bye.redirect_to, vec!["tcp://b.example:7700".to_string()]);
    assert!(bye.retry_after_ms < 500);
    let status = server.terminate_wait();
    assert!(status.success());
}

/// Without configured endpoints the list is derived from the host the
/// client asked and the bound ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_default_to_the_bound_ports() {
    let server = Server::start("");
    let (_, body) = http_get(&server.http, "/v1/endpoints").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    let tcp_port = server.tcp.rsplit(':').next().unwrap();
    let http_port = server.http.rsplit(':').next().unwrap();
    assert_eq!(
        list,
        vec![
            format!("tcp://127.0.0.1:{tcp_port}"),
            format!("ws://127.0.0.1:{http_port}/ws")
        ]
    );
    let fetched = pigeon_client::fetch_endpoints(&format!("http://{}/v1/endpoints", server.http))
        .await
        .unwrap();
    assert_eq!(fetched, list);
}

/// Four SDK clients send continuously while the server is drained with
/// SIGTERM and started again, twice; every acknowledged message is then
/// synced by the recipient exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_nothing() {
    let mut server = Server::start("drain_reconnect_spread_ms = 200");
    let url = server.tcp_url();
    let bob_token = register_and_login(&url, "bob").await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let token = register_and_login(&url, &format!("sender{i}")).await;
        let mut opts = ClientOptions::new(ConnectOptions::new(&url).with_token(token));
        opts.backoff_min = Duration::from_millis(20);
        opts.backoff_max = Duration::from_millis(200);
        let (client, mut events) = Client::start(opts);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("s{i}-{n:05}");
                client
                    .send_with_id(&id, to_user("bob"), content(&id))
                    .await
                    .expect("every send is eventually acknowledged");
                acked.lock().unwrap().insert(id);
                n += 1;
            }
            client.shutdown().await;
        }));
    }
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(server.terminate().success(), "drained and exited 0");
        server.restart();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        within(t).await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "load kept flowing: {}", acked.len());
    let bob = connect(&url, &bob_token).await;
    let (events, _) = sync_all(&bob, &[]).await;
    let got = texts(&events);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "nothing twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged {id} was lost");
    }
}
