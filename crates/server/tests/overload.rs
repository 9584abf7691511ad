//! Overload control and abuse limits: under a load well past what the
//! configured latency target allows, the server stays up with bounded
//! memory, keeps serving sync, refuses sends with BUSY and a retry-after,
//! and loses nothing it acknowledged; per-user and per-IP rates are limited.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pigeon_client::v1::ErrorCode;
use pigeon_client::{text as content, to_user};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Eight connections keep 64 sends each in flight against a 2 ms latency
/// target; a ninth syncs throughout. Sends are refused with BUSY while
/// syncs are all served, memory stays bounded, every acknowledged message
/// arrives exactly once, and the server admits sends again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_sends_and_keeps_sync() {
    let server = Server::start("overload_latency_ms = 2");
    let url = server.tcp_url();
    let pid = server.child.as_ref().unwrap().id();
    let bob_token = register_and_login(&url, "bob").await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let busy = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let conn =
            Arc::new(connect(&url, &register_and_login(&url, &format!("load{c}")).await).await);
        for w in 0..64 {
            let (conn, stop, acked, busy) =
                (conn.clone(), stop.clone(), acked.clone(), busy.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("{c}-{w}-{n}");
                    n += 1;
                    match conn.send(&id, to_user("bob"), content(&id)).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(e) if e.code() == Some(ErrorCode::Busy) => {
                            busy.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("unexpected error under load: {e}"),
                    }
                }
            }));
        }
    }
    let watcher = connect(&url, &bob_token).await;
    let (_, mut key) = sync_all(&watcher, &[]).await;
    let mut peak_kib = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let r = within(watcher.sync(&key, 0))
            .await
            .expect("sync is served under overload");
        key = r.key;
        peak_kib = peak_kib.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within(t).await.unwrap();
    }
    assert!(
        busy.load(Ordering::SeqCst) > 0,
        "overload must refuse some sends"
    );
    assert!(
        peak_kib < 512 * 1024,
        "memory stays bounded: peak {peak_kib} KiB"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let (events, _) = sync_all(&watcher, &[]).await;
    let got = texts(&events);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "nothing stored twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged {id} lost");
    }
    // Once the load is gone the server recovers and admits sends again.
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    within(async {
        loop {
            match alice
                .send(
                    &pigeon_client::new_client_msg_id(),
                    to_user("bob"),
                    content("calm"),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if e.code() == Some(ErrorCode::Busy) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
}

/// A user past their request rate gets BUSY with a retry-after that works;
/// an address past its connection rate is refused at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_user_and_address() {
    let server = Server::start(
        "user_requests_per_sec = 5\nuser_requests_burst = 5\nip_connections_per_sec = 1\nip_connections_burst = 4",
    );
    let url = server.tcp_url();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let mut refused = None;
    for i in 0..10 {
        match alice
            .send(&format!("m{i}"), to_user("alice"), content("note"))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
                let pigeon_client::ClientError::Server { retry_after_ms, .. } = e else {
                    panic!()
                };
                refused = Some((i, retry_after_ms));
                break;
            }
        }
    }
    let (at, wait) = refused.expect("the sixth request in a burst is refused");
    assert_eq!(at, 5);
    assert!(wait > 0 && wait <= 200, "{wait}");
    tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
    alice
        .send("after-wait", to_user("alice"), content("note"))
        .await
        .unwrap();

    // Two connections were used above; two more fit the burst, then refused.
    let mut goodbyes = 0;
    for _ in 0..4 {
        match pigeon_client::Connection::connect(&pigeon_client::ConnectOptions::new(&url)).await {
            Ok(c) => {
                // Allowed: answers a ping.
                c.ping().await.unwrap();
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
                goodbyes += 1;
            }
        }
    }
    assert!(goodbyes >= 1, "connections beyond the burst are refused");

    // Password guessing from one address is slowed down.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let c = pigeon_client::Connection::connect(&pigeon_client::ConnectOptions::new(&url))
        .await
        .unwrap();
    let mut busy = 0;
    for _ in 0..30 {
        match c.login("alice", "wrong password", "guess").await {
            Err(e) if e.code() == Some(ErrorCode::Busy) => busy += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials)),
            Ok(_) => panic!("wrong password accepted"),
        }
    }
    assert!(
        busy >= 5,
        "login attempts beyond the burst are refused: {busy}"
    );
}

/// A client opening connections as fast as it can (and never saying
/// Hello) while others chat: past the connection cap it is turned away with
/// BUSY, silent ones are closed at the handshake timeout, memory stays
/// bounded, and the chat goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_leaves_others_unaffected() {
    let server = Server::start("connections_max = 300\nhandshake_timeout_ms = 2000");
    let url = server.tcp_url();
    let pid = server.child.as_ref().unwrap().id();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    let bob_token = register_and_login(&url, "bob").await;
    let baseline = rss_kib(pid);
    let flood = tokio::spawn({
        let addr = server.tcp.clone();
        async move {
            let mut held = Vec::new();
            let mut refused = 0;
            for _ in 0..1500 {
                match tokio::net::TcpStream::connect(&addr).await {
                    Ok(s) => held.push(s),
                    Err(_) => refused += 1,
                }
            }
            (held, refused)
        }
    });
    let mut sent = 0;
    while !flood.is_finished() {
        alice
            .send(&format!("f{sent}"), to_user("bob"), content("still here"))
            .await
            .unwrap();
        sent += 1;
    }
    let (held, _) = flood.await.unwrap();
    let peak = rss_kib(pid);
    // Connections past the cap were told BUSY. Which ones those are depends
    // on how fast this machine accepted them, so read the first frame of
    // every held connection at once: each one either got BUSY straight
    // away or is closed at the handshake timeout.
    let opened = held.len();
    let mut readers = tokio::task::JoinSet::new();
    for mut s in held {
        readers.spawn(async move {
            let mut buf = [0u8; 256];
            let busy = matches!(
                tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read(&mut s, &mut buf),
                )
                .await,
                Ok(Ok(n)) if n > 4
                    && matches!(
                        pigeon_proto::decode_frame(&buf[4..n], 1 << 20),
                        Ok(pigeon_client::v1::Frame {
                            body: Some(pigeon_client::v1::frame::Body::Goodbye(ref g)),
                            ..
                        }) if g.code == ErrorCode::Busy as i32
                    )
            );
            (busy, s)
        });
    }
    let mut busy = 0;
    let mut held = Vec::new();
    while let Some(done) = readers.join_next().await {
        let (refused, s) = done.unwrap();
        busy += usize::from(refused);
        held.push(s);
    }
    assert!(
        busy > 0 && busy < opened,
        "connections beyond connections_max are refused with BUSY ({busy} of {opened})"
    );
    assert!(
        peak < baseline + 256 * 1024,
        "memory stays bounded: {baseline} -> {peak} KiB"
    );
    drop(held);
    // The flood's silent connections are gone after the handshake timeout;
    // the chat went on throughout.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    alice
        .send("after", to_user("bob"), content("after the flood"))
        .await
        .unwrap();
    let bob = connect(&url, &bob_token).await;
    let (events, _) = sync_all(&bob, &[]).await;
    assert_eq!(texts(&events).len(), sent + 1);
}
