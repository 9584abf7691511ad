//! TLS end to end: the real binary with a certificate from a CA generated
//! for the test, spoken to over tls:// and wss:// by the SDK and the CLI,
//! and over HTTPS; clients that do not trust the CA, and peers that do not
//! speak TLS, are turned away without disturbing anyone else.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pigeon_client::v1::frame::Body;
use pigeon_client::{ClientError, ConnectOptions, Connection, text as content, to_user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Registers `name` and logs it in through `opts` (an anonymous
/// connection); returns the token.
async fn register_and_login_with(opts: &ConnectOptions, name: &str) -> String {
    let c = Connection::connect(opts).await.expect("connecting");
    c.register(name, PASSWORD).await.expect("register");
    let token = c.login(name, PASSWORD, "test").await.expect("login").token;
    c.close().await;
    token
}

/// Alice over tls:// and bob over wss:// register, log in, exchange
/// messages both ways (bob also pushed alice's while connected) and sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_over_tls_and_wss() {
    let server = Server::start_tls("");
    let (tls, wss) = (
        server.options(&server.tls_url()),
        server.options(&server.wss_url()),
    );
    let alice_token = register_and_login_with(&tls, "alice").await;
    let bob_token = register_and_login_with(&wss, "bob").await;
    let alice = Connection::connect(&tls.clone().with_token(&alice_token))
        .await
        .unwrap();
    let bob = Connection::connect(&wss.clone().with_token(&bob_token))
        .await
        .unwrap();
    assert_eq!(alice.welcome().username, "alice");
    assert_eq!(bob.welcome().username, "bob");
    let (_, bob_key) = sync_all(&bob, &[]).await;

    let ack = alice
        .send("m1", to_user("bob"), content("hello over tls"))
        .await
        .unwrap();
    assert!(!ack.duplicate);
    match next_sync_push(&bob).await {
        Body::EventsPush(p) => assert_eq!(texts(&p.events), vec!["hello over tls"]),
        Body::SyncNotice(_) => {}
        other => panic!("unexpected push {other:?}"),
    }
    let (events, _) = sync_all(&bob, &bob_key).await;
    assert_eq!(texts(&events), vec!["hello over tls"]);

    bob.send("r1", to_user("alice"), content("hello over wss"))
        .await
        .unwrap();
    let (events, _) = sync_all(&alice, &[]).await;
    assert_eq!(texts(&events), vec!["hello over tls", "hello over wss"]);
    alice.close().await;
    bob.close().await;
}

/// A client that does not trust the server's CA (no extra CA, or another
/// one) gets a TLS error that says so, on both ports; so does tls:// to a
/// server without TLS. None of them reaches the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_are_refused_clearly() {
    let server = Server::start_tls("");
    let stranger_ca = TestCerts::generate("some other CA").ca_pem;
    for url in [server.tls_url(), server.wss_url()] {
        for opts in [
            ConnectOptions::new(&url),
            ConnectOptions::new(&url).with_ca_pem(stranger_ca.clone()),
        ] {
            match Connection::connect(&opts).await {
                Err(ClientError::Tls(message)) => {
                    assert!(
                        message.contains("not signed by a trusted CA"),
                        "{url}: {message}"
                    );
                    assert!(message.contains("with_ca_pem"), "{message}");
                }
                other => panic!("{url}: expected a TLS error, got {other:?}"),
            }
        }
    }
    let err = Connection::connect(&ConnectOptions::new(server.tls_url()).with_ca_pem("junk"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(ref m) if m.contains("PEM")),
        "{err}"
    );

    let plain = Server::start("");
    let err = Connection::connect(&ConnectOptions::new(format!("tls://{}", plain.tcp)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(ref m) if m.contains("did not answer with TLS")),
        "{err}"
    );
    // The server name is the URL's host: the certificate names localhost too.
    let by_name = server.options(&format!("tls://localhost:{}", port(&server.tcp)));
    Connection::connect(&by_name)
        .await
        .expect("localhost is in the certificate");
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

/// Plain TCP to the TLS port (a Hello in the clear, or nothing at all) is
/// closed: at once, or when the handshake timeout runs out. Meanwhile a
/// connected client and a new one are served as usual, and the failures
/// are counted in /metrics, which is served over HTTPS like /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_peers_on_tls_ports_fail_without_disturbing_others() {
    let server = Server::start_tls("handshake_timeout_ms = 3000");
    let ca = server.ca_pem.clone().unwrap();
    let tls = server.options(&server.tls_url());
    let alice = Connection::connect(
        &tls.clone()
            .with_token(register_and_login_with(&tls, "alice").await),
    )
    .await
    .unwrap();

    // Silent: holds a handshake open until the timeout.
    let mut silent = tokio::net::TcpStream::connect(&server.tcp).await.unwrap();
    let silent_since = Instant::now();
    // A protocol Hello in the clear: not a TLS record, refused at once.
    let mut clear = tokio::net::TcpStream::connect(&server.tcp).await.unwrap();
    let hello = pigeon_proto::encode_frame_prefixed(&pigeon_client::v1::Frame::new(
        1,
        Body::Hello(pigeon_client::v1::Hello {
            min_version: 1,
            max_version: 1,
            ..Default::default()
        }),
    ));
    clear.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    let _ = within(clear.read_to_end(&mut answer)).await;
    assert!(
        answer.len() < 64,
        "at most a TLS alert comes back, not a Welcome: {answer:?}"
    );

    // While the silent handshake is pending, others are served.
    register_and_login_with(&tls, "bob").await;
    alice
        .send("m1", to_user("bob"), content("still here"))
        .await
        .unwrap();
    assert!(
        silent_since.elapsed() < Duration::from_millis(3000),
        "the test ran too slowly to show the silent peer held no one up"
    );

    let mut buf = [0u8; 64];
    let n = within(silent.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the silent peer is closed without an answer");
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "closed only at the handshake timeout, after {waited:?}"
    );

    // HTTPS: health and metrics; plain HTTP on the same port gets nothing.
    assert_eq!(
        https_get(&server.http, "/healthz", &ca).await,
        (200, "ok".to_string())
    );
    assert_eq!(https_get(&server.http, "/readyz", &ca).await.0, 200);
    let (status, metrics) = https_get(&server.http, "/metrics", &ca).await;
    assert_eq!(status, 200);
    for reason in ["error", "timeout"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("pigeon_tls_handshake_failures_total{")
                    && l.contains("listener=\"tcp\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} count in {metrics}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1.0, "{line}");
    }
    assert_eq!(
        http_get(&server.http, "/healthz").await.0,
        0,
        "no plain HTTP on the HTTPS port"
    );
    alice
        .send("m2", to_user("bob"), content("and still"))
        .await
        .unwrap();
}

/// The handshake timeout runs from the TCP accept: a client that spends
/// most of it before finishing TLS, then sends no Hello, is told
/// HANDSHAKE_TIMEOUT when the timeout runs out since the accept, not a
/// whole timeout after the TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_time_counts_toward_the_hello_deadline() {
    let server = Server::start_tls("handshake_timeout_ms = 2000");
    let tcp = tokio::net::TcpStream::connect(&server.tcp).await.unwrap();
    let since = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tls = tls_over(tcp, server.ca_pem.as_ref().unwrap())
        .await
        .expect("TLS handshake within the timeout");
    let mut raw = Vec::new();
    let _ = within(tls.read_to_end(&mut raw)).await;
    let waited = since.elapsed();
    let mut buf = bytes::BytesMut::from(&raw[..]);
    let frame = pigeon_proto::try_decode_prefixed(&mut buf, 1 << 20)
        .unwrap()
        .expect("a goodbye frame");
    match frame.body {
        Some(Body::Goodbye(g)) => assert_eq!(
            g.code,
            pigeon_client::v1::ErrorCode::HandshakeTimeout as i32
        ),
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3000),
        "goodbye after {waited:?}: the deadline is 2 s after the accept"
    );
}

/// SIGTERM with clients on tls:// and wss://: both are told the server is
/// shutting down, and the process exits 0 (HTTPS graceful shutdown ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_tls_connections() {
    let mut server = Server::start_tls("");
    let tls = server.options(&server.tls_url());
    let wss = server.options(&server.wss_url());
    let token = register_and_login_with(&tls, "alice").await;
    let a = Connection::connect(&tls.with_token(&token)).await.unwrap();
    let b = Connection::connect(&wss.with_token(&token)).await.unwrap();
    // An idle HTTPS connection must not hold up the exit.
    let idle = tls_connect(&server.http, server.ca_pem.as_ref().unwrap())
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    for c in [&a, &b] {
        loop {
            match within(c.next_push()).await {
                Some(Body::Goodbye(g)) => {
                    assert_eq!(g.code, pigeon_client::v1::ErrorCode::ShuttingDown as i32);
                    break;
                }
                Some(_) => continue,
                None => panic!("closed without a goodbye"),
            }
        }
    }
    drop(idle);
}

/// The README walk-through over TLS: the CLI with --ca (or PIGEON_CA) on
/// tls:// and wss://; without the CA every command fails with a message
/// that says the certificate is not trusted.
#[test]
fn cli_over_tls_with_ca() {
    let server = Server::start_tls("");
    let home = tempfile::tempdir().unwrap();
    let ca = server.ca_file();
    let run = |url: &str, profile: &str, ca: Option<&std::path::Path>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
        cmd.args(args)
            .arg("--server")
            .arg(url)
            .arg("--profile")
            .arg(home.path().join(profile))
            .env("PIGEON_PASSWORD", PASSWORD)
            .env_remove("PIGEON_CA");
        if let Some(ca) = ca {
            cmd.env("PIGEON_CA", ca);
        }
        cmd.output().unwrap()
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (tls, wss) = (server.tls_url(), server.wss_url());
    let with_flag = |profile: &str, args: &[&str]| {
        let mut all = vec!["--ca", ca.to_str().unwrap()];
        all.extend_from_slice(args);
        ok(run(&tls, profile, None, &all))
    };
    with_flag("alice", &["register", "alice"]);
    with_flag("alice", &["login", "alice"]);
    ok(run(&wss, "bob", Some(&ca), &["register", "bob"]));
    ok(run(&wss, "bob", Some(&ca), &["login", "bob"]));
    let ack = with_flag("alice", &["send", "bob", "hi over tls"]);
    assert!(ack.contains("\"duplicate\":false"), "{ack}");
    let synced = ok(run(&wss, "bob", Some(&ca), &["sync"]));
    assert!(synced.contains("hi over tls"), "{synced}");

    for url in [&tls, &wss] {
        let out = run(url, "alice", None, &["sync"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not signed by a trusted CA") && stderr.contains("--ca"),
            "{url}: {stderr}"
        );
    }
    let out = run(
        &tls,
        "alice",
        Some(&home.path().join("missing.pem")),
        &["sync"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reading the CA file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
