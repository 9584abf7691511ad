//! Starts the real `pigeon` binary on free ports with a generated config
//! (plain, or TLS with a generated CA), and gives tests clients that speak
//! to it as any client would.

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
    /// With TLS: the PEM of the CA that signed the server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    extra: String,
    /// Flags after `pigeon serve --config FILE`.
    args: Vec<String>,
    /// The PostgreSQL server of a test run with PIGEON_TEST_STORE=postgres.
    _pg: Option<pigeon_testkit::PgServer>,
    _tmp: Option<tempfile::TempDir>,
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1, PEM.
pub struct TestCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCerts {
    /// A fresh CA (`name` as its common name) and server certificate.
    pub fn generate(name: &str) -> TestCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "pigeon test server");
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        TestCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// How many times a first start is tried on fresh ports when another test
/// took one of its ports first.
const PORT_RACE_RETRIES: usize = 5;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this run puts every server on PostgreSQL
/// (`PIGEON_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("PIGEON_TEST_STORE").as_deref() == Ok("postgres")
}

impl Server {
    /// Starts a server with default settings plus `extra` TOML lines.
    pub fn start(extra: &str) -> Server {
        Server::start_with_args(extra, &[])
    }

    /// Starts a server with `extra` TOML lines and extra `pigeon serve`
    /// flags. With `PIGEON_TEST_STORE=postgres` in the environment, every
    /// server of the test suite runs on its own PostgreSQL (pigeon-testkit)
    /// instead of the embedded store.
    pub fn start_with_args(extra: &str, args: &[String]) -> Server {
        let mut args = args.to_vec();
        let pg = (on_postgres() && !args.iter().any(|a| a == "--store")).then(|| {
            let pg = pigeon_testkit::PgServer::start().expect("starting PostgreSQL");
            args.extend(["--store".to_string(), pg.create_database().unwrap()]);
            pg
        });
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server {
            child: None,
            tcp: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            dir,
            ca_pem: None,
            extra: extra.to_string(),
            args,
            _pg: pg,
            _tmp: Some(tmp),
        };
        s.first_spawn();
        s
    }

    /// Starts a server with TLS on both ports, its certificate signed by a
    /// CA generated for it (trust `ca_pem`), plus `extra` TOML lines.
    pub fn start_tls(extra: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let certs = TestCerts::generate("pigeon test CA");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &certs.cert_pem).unwrap();
        std::fs::write(&key, &certs.key_pem).unwrap();
        std::fs::write(dir.join("ca.pem"), &certs.ca_pem).unwrap();
        let mut s = Server {
            child: None,
            tcp: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            dir,
            ca_pem: Some(certs.ca_pem.into_bytes()),
            extra: format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
                cert.display(),
                key.display()
            ),
            args: Vec::new(),
            _pg: None,
            _tmp: Some(tmp),
        };
        s.first_spawn();
        s
    }

    /// Starts the server the first time. Its ports were free when chosen,
    /// but a test running beside this one can take one before the server
    /// binds it; then the start is tried again on other ports.
    fn first_spawn(&mut self) {
        for _ in 0..PORT_RACE_RETRIES {
            let log_before = self.log().len();
            match self.try_spawn(log_before) {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") => {
                    self.tcp = format!("127.0.0.1:{}", free_port());
                    self.http = format!("127.0.0.1:{}", free_port());
                }
                Err(log) => panic!("pigeon exited early: {log}"),
            }
        }
        panic!("pigeon found no free ports: {}", self.log());
    }

    fn spawn(&mut self) {
        let log_before = self.log().len();
        if let Err(log) = self.try_spawn(log_before) {
            panic!("pigeon exited early: {log}");
        }
    }

    /// Starts the server; `Err` with its log if it exited before it was
    /// ready.
    fn try_spawn(&mut self, log_before: usize) -> Result<(), String> {
        let config = self.dir.join("pigeon.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}\"\nhttp = \"{}\"\ndata = \"{}\"\n{}\n{}\n{}\n",
                self.tcp,
                self.http,
                self.dir.join("data").display(),
                CHEAP_HASHES,
                if self.extra.contains("_per_sec") {
                    ""
                } else {
                    NO_RATE_LIMITS
                },
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
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting pigeon");
        self.child = Some(child);
        self.wait_ready(log_before)
    }

    /// Waits until this start has logged "pigeon listening" (after
    /// `log_before` bytes of the log) and both ports accept connections.
    /// The ports are bound, and so accept connections, before the service
    /// is built, which on PostgreSQL takes a few round trips: the log line
    /// says the server is complete.
    fn wait_ready(&mut self, log_before: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let started = self
                .log()
                .get(log_before..)
                .is_some_and(|l| l.contains("pigeon listening"));
            if started
                && std::net::TcpStream::connect(&self.tcp).is_ok()
                && std::net::TcpStream::connect(&self.http).is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("{status}: {}", self.log()));
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

    pub fn tls_url(&self) -> String {
        format!("tls://{}", self.tcp)
    }

    pub fn wss_url(&self) -> String {
        format!("wss://{}/ws", self.http)
    }

    /// The file holding the CA of a TLS server (for the CLI's `--ca`).
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.ca_pem.is_some(), "not a TLS server");
        self.dir.join("ca.pem")
    }

    /// Options for `url` that trust this server's CA, if it has one.
    pub fn options(&self, url: &str) -> ConnectOptions {
        let opts = ConnectOptions::new(url);
        match &self.ca_pem {
            Some(pem) => opts.with_ca_pem(pem.clone()),
            None => opts,
        }
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
        let c = self.child.as_ref().expect("server running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        self.terminate_wait()
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
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

/// Tests drive traffic far beyond a person's pace from one address: the
/// rate limits are off unless a test sets them (the `limits` keys below are
/// then given by that test instead).
const NO_RATE_LIMITS: &str =
    "user_requests_per_sec = 0\nip_connections_per_sec = 0\nip_logins_per_sec = 0";

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
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the HTTP port");
    get(s, addr, path).await
}

/// An HTTP/1.1 GET over TLS, trusting the CA in `ca_pem` for the name
/// `localhost`; returns the status code and the body.
pub async fn https_get(addr: &str, path: &str, ca_pem: &[u8]) -> (u16, String) {
    let s = tls_connect(addr, ca_pem)
        .await
        .expect("TLS handshake with the HTTPS port");
    get(s, addr, path).await
}

/// A TLS session to `addr` that trusts only the CA in `ca_pem` and checks
/// the certificate against the name `localhost`.
pub async fn tls_connect(
    addr: &str,
    ca_pem: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tls_over(tcp, ca_pem).await
}

/// The TLS handshake on an open TCP stream, as [`tls_connect`].
pub async fn tls_over(
    tcp: tokio::net::TcpStream,
    ca_pem: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn get<S>(s: S, addr: &str, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    exchange(
        s,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Writes one HTTP/1.1 request and reads the answer to the end; returns the
/// status code and the body.
async fn exchange<S>(mut s: S, request: String) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after the response: what
    // was read until then is the answer.
    let _ = within(s.read_to_end(&mut raw)).await;
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
    let s = tokio::net::TcpStream::connect(addr)
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
    exchange(s, req).await
}
