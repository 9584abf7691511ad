//! Starts the real `pigeon` binary on free ports with a generated config,
//! and gives tests clients that speak to it as any client would.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pigeon_client::{ConnectOptions, Connection};

/// A running server process.
pub struct Server {
    pub child: Option<Child>,
    pub tcp: String,
    pub http: String,
    pub dir: PathBuf,
    extra: String,
    _tmp: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server with default settings plus `extra` TOML lines.
    pub fn start(extra: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server {
            child: None,
            tcp: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            dir,
            extra: extra.to_string(),
            _tmp: Some(tmp),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let config = self.dir.join("pigeon.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}\"\nhttp = \"{}\"\ndata = \"{}\"\n{}\n{}\n",
                self.tcp,
                self.http,
                self.dir.join("data").display(),
                CHEAP_HASHES,
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting pigeon");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.tcp).is_ok()
                && std::net::TcpStream::connect(&self.http).is_ok()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pigeon exited early with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pigeon did not start listening: {}", self.log());
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Kills the process without warning (SIGKILL).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "pigeon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub const PASSWORD: &str = "correct horse battery";

/// Tests register thousands of users: cheap password hashes keep that
/// quick (the default cost is exercised by the core unit tests).
const CHEAP_HASHES: &str = "password_hash_memory_kib = 8\npassword_hash_iterations = 1";

/// Registers `names` over a few connections, many requests in flight.
pub async fn register_many(url: &str, names: &[String]) {
    let conns: Vec<Connection> = futures_util::future::join_all((0..4).map(|_| anon(url))).await;
    for chunk in names.chunks(256) {
        let calls = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| conns[i % conns.len()].register(n, PASSWORD));
        for r in futures_util::future::join_all(calls).await {
            r.expect("register");
        }
    }
}

/// Connects anonymously.
pub async fn anon(url: &str) -> Connection {
    Connection::connect(&ConnectOptions::new(url))
        .await
        .expect("connecting")
}

/// Registers `name` and returns its token from a fresh login.
pub async fn register_and_login(url: &str, name: &str) -> String {
    let c = anon(url).await;
    c.register(name, PASSWORD).await.expect("register");
    let token = c.login(name, PASSWORD, "test").await.expect("login").token;
    c.close().await;
    token
}

/// Logs `name` in on a new device and returns its token.
pub async fn login(url: &str, name: &str, device: &str) -> String {
    let c = anon(url).await;
    let token = c.login(name, PASSWORD, device).await.expect("login").token;
    c.close().await;
    token
}

/// An authenticated connection.
pub async fn connect(url: &str, token: &str) -> Connection {
    Connection::connect(&ConnectOptions::new(url).with_token(token))
        .await
        .expect("connecting with token")
}

/// Syncs from `key` until has_more is false; returns the events and the final key.
pub async fn sync_all(c: &Connection, key: &[u8]) -> (Vec<pigeon_client::v1::Event>, Vec<u8>) {
    let mut key = key.to_vec();
    let mut events = Vec::new();
    loop {
        let r = c.sync(&key, 0).await.expect("sync");
        events.extend(r.events);
        key = r.key;
        if !r.has_more {
            return (events, key);
        }
    }
}

/// The texts of the message events among `events` (receipts and other
/// kinds left out).
pub fn texts(events: &[pigeon_client::v1::Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e.kind, Some(pigeon_client::v1::event::Kind::Message(_))))
        .map(text)
        .collect()
}

/// The next push that is not presence or typing.
pub async fn next_sync_push(c: &Connection) -> pigeon_client::v1::frame::Body {
    use pigeon_client::v1::frame::Body;
    loop {
        match within(c.next_push()).await.expect("connection open") {
            Body::PresencePush(_) | Body::TypingPush(_) => continue,
            other => return other,
        }
    }
}

/// The text of a message event.
pub fn text(e: &pigeon_client::v1::Event) -> String {
    match &e.kind {
        Some(pigeon_client::v1::event::Kind::Message(m)) => {
            m.content.clone().unwrap_or_default().text
        }
        other => panic!("not a message event: {other:?}"),
    }
}

/// Awaits `f` for at most 10 seconds.
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the HTTP port");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within(s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.1 request with extra headers and an optional JSON body;
/// returns the status code and the body.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the HTTP port");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within(s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
