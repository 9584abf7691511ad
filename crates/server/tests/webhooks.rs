//! Webhooks and offline push: signed deliveries to a local HTTP receiver,
//! retried while it fails, kept across a server restart, skipped for online
//! recipients, and recorded as failed after the attempt limit.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use pigeon_client::{text as content, to_user};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "hook-secret";
const ADMIN_TOKEN: &str = "0123456789abcdef-admin";

/// What the receiver accepted, by delivery id.
#[derive(Default)]
struct Received {
    ok: HashMap<u64, serde_json::Value>,
    refused: usize,
    bad_signatures: usize,
}

/// A local HTTP endpoint that checks signatures and answers 500 while
/// `failing` is set.
async fn receiver(failing: Arc<AtomicBool>, got: Arc<Mutex<Received>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (failing, got) = (failing.clone(), got.clone());
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then the announced body.
                let (head, body) = loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = header(head, "content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body[..len].to_string());
                        }
                    }
                };
                let ts: u64 = header(&head, "x-pigeon-timestamp")
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("{ts}.{body}").as_bytes());
                let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
                let status = {
                    let mut g = got.lock().unwrap();
                    if header(&head, "x-pigeon-signature").as_deref() != Some(expected.as_str()) {
                        g.bad_signatures += 1;
                        "401 Unauthorized"
                    } else if failing.load(Ordering::SeqCst) {
                        g.refused += 1;
                        "500 Internal Server Error"
                    } else {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let id: u64 = header(&head, "x-pigeon-delivery").unwrap().parse().unwrap();
                        assert_eq!(v["id"], id);
                        assert_eq!(
                            header(&head, "x-pigeon-event").as_deref(),
                            v["event"].as_str()
                        );
                        g.ok.insert(id, v);
                        "200 OK"
                    }
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    format!("http://{addr}/hooks")
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    })
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "webhook_backoff_initial_ms = 50\nwebhook_backoff_max_ms = 300\n{extra}\n\
         [[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nevents = [\"message.created\", \"push.needed\"]\n"
    )
}

/// The receiver fails, the server restarts in between, the receiver
/// recovers: every event is then delivered, signed; pushes go only for the
/// offline recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_failures_and_restarts() {
    let failing = Arc::new(AtomicBool::new(true));
    let got = Arc::new(Mutex::new(Received::default()));
    let url = receiver(failing.clone(), got.clone()).await;
    let mut server = Server::start(&config(&url, ""));
    let tcp = server.tcp_url();
    let alice = connect(&tcp, &register_and_login(&tcp, "alice").await).await;
    register_and_login(&tcp, "bob").await;
    for i in 0..3 {
        alice
            .send(
                &format!("m{i}"),
                to_user("bob"),
                content(&format!("hello {i}")),
            )
            .await
            .unwrap();
    }
    within(async {
        while got.lock().unwrap().refused < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    alice.close().await;
    assert!(server.terminate().success());
    server.restart();
    failing.store(false, Ordering::SeqCst);
    within(async {
        while got.lock().unwrap().ok.len() < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let g = got.lock().unwrap();
    assert_eq!(g.bad_signatures, 0);
    let created: Vec<&serde_json::Value> =
        g.ok.values()
            .filter(|v| v["event"] == "message.created")
            .collect();
    let pushes: Vec<&serde_json::Value> =
        g.ok.values()
            .filter(|v| v["event"] == "push.needed")
            .collect();
    assert_eq!((created.len(), pushes.len()), (3, 3));
    let mut texts: Vec<&str> = created
        .iter()
        .map(|v| v["message"]["text"].as_str().unwrap())
        .collect();
    texts.sort();
    assert_eq!(texts, vec!["hello 0", "hello 1", "hello 2"]);
    assert!(
        pushes
            .iter()
            .all(|v| v["recipient"]["username"] == "bob" && v["sender"] == "alice")
    );
}

/// A recipient with a device online gets no push; the integration still
/// hears of the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_recipients_get_no_push() {
    let got = Arc::new(Mutex::new(Received::default()));
    let url = receiver(Arc::new(AtomicBool::new(false)), got.clone()).await;
    let server = Server::start(&config(&url, ""));
    let tcp = server.tcp_url();
    let alice = connect(&tcp, &register_and_login(&tcp, "alice").await).await;
    let _bob = connect(&tcp, &register_and_login(&tcp, "bob").await).await;
    alice
        .send("m", to_user("bob"), content("you are online"))
        .await
        .unwrap();
    within(async {
        while got.lock().unwrap().ok.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let g = got.lock().unwrap();
    assert_eq!(g.ok.len(), 1);
    assert_eq!(g.ok.values().next().unwrap()["event"], "message.created");
}

/// An endpoint that never recovers: after the attempt limit the delivery is
/// recorded as failed, and the metrics say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_fail_after_the_limit() {
    let got = Arc::new(Mutex::new(Received::default()));
    let url = receiver(Arc::new(AtomicBool::new(true)), got.clone()).await;
    let server = Server::start(&config(
        &url,
        &format!("webhook_attempts_max = 3\nadmin_token = \"{ADMIN_TOKEN}\""),
    ));
    let tcp = server.tcp_url();
    let alice = connect(&tcp, &register_and_login(&tcp, "alice").await).await;
    register_and_login(&tcp, "bob").await;
    let _bob = connect(&tcp, &login(&tcp, "bob", "online").await).await;
    alice
        .send("m", to_user("bob"), content("doomed"))
        .await
        .unwrap();
    let failed = within(async {
        loop {
            let (_, metrics) = http_get(&server.http, "/metrics").await;
            let failed = metrics
                .lines()
                .find(|l| l.starts_with("pigeon_webhook_attempts_total{outcome=\"failed\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
            if let Some(n) = failed {
                return (n, metrics);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(failed.0, 1.0);
    // The failure is kept with its reason, for the operator.
    let (status, body) = http_request(
        &server.http,
        "GET",
        "/admin/v1/webhooks/failed",
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = &v["deliveries"][0];
    assert_eq!(
        (
            d["event"].as_str(),
            d["attempts"].as_u64(),
            d["last_error"].as_str()
        ),
        (Some("message.created"), Some(3), Some("HTTP 500"))
    );
    assert!(
        failed
            .1
            .contains("pigeon_webhook_attempts_total{outcome=\"retry\"} 2"),
        "{}",
        failed.1
    );
    assert_eq!(got.lock().unwrap().refused, 3);
}
