//! A writer for the crash-cycle test (`scripts/crash-test`): sends messages
//! with unique contents to a list of recipients (and optionally a group)
//! while the server is killed and restarted under it, and records every
//! acknowledgement in a file that survives the writer being stopped.
//!
//! Message `n` of writer `W` has client message id and text `W-n`; it goes
//! to `targets[n % targets.len()]` (the recipients in the order given, then
//! the group). Messages are sent one at a time: an unacknowledged one is
//! retried with the SAME client message id, over a new connection if
//! needed, until the server acknowledges it, however long the server is
//! down. Only then is the next one sent, so a writer's acknowledged
//! messages are stored in the order it sent them.
//!
//! The record (`--out`), one line each, written and fsynced before the
//! next step:
//! - `start <username> <pid> <next_n>` when the writer starts;
//! - `send <client_msg_id> user:<username>|conv:<conversation_id>` before
//!   the first attempt of a message;
//! - `ack <client_msg_id> <conversation_id> <conv_seq> [dup]` when it is
//!   acknowledged (`dup`: the server answered a retry of a message it had
//!   stored already).
//!
//! A writer started on an existing record continues after the highest `n`
//! in it; a message sent but not acknowledged before the writer was killed
//! is abandoned (as by a client that lost its outbox): it may or may not
//! be stored, and must not be stored twice.
//!
//! SIGTERM or SIGINT stops it after the message in flight is acknowledged
//! (exit 0); so do `--count` and `--seconds`. A lost session or account
//! (refused token or password after they were acknowledged) or any
//! non-transient error answer ends it with exit 1.
//!
//! `cargo run --release -p pigeon-server --example crash_writer -- \
//!   --server tcp://127.0.0.1:7700 --user w0 --password pw --to r0,r1 --out w0.log`

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use pigeon_client::v1::{self, ErrorCode};
use pigeon_client::{ClientError, ConnectOptions, Connection, text, to_conversation, to_user};

#[derive(Debug, Parser)]
#[command(
    about = "Crash-test writer: sends unique messages, retries until acknowledged, records acks"
)]
struct Args {
    /// Server URL (tcp://host:port); several, comma-separated, for the
    /// nodes of a cluster: a connection that cannot be made moves on to
    /// the next.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// This writer's username (the account must exist unless --register).
    #[arg(long)]
    user: String,
    /// Its password.
    #[arg(long)]
    password: String,
    /// Register the account first (an existing one is fine).
    #[arg(long)]
    register: bool,
    /// Recipients (usernames), comma-separated: direct conversations.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// A group conversation id (g:N) to send to as well.
    #[arg(long)]
    group: Option<String>,
    /// The record of sends and acknowledgements (appended to).
    #[arg(long)]
    out: PathBuf,
    /// Prefix of the client message ids [default: the username].
    #[arg(long)]
    tag: Option<String>,
    /// Stop after this many messages in this run (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// At most this many messages per second (0: as fast as acknowledged).
    #[arg(long, default_value_t = 0)]
    rate: u32,
}

/// Where a message goes, as recorded and as sent.
enum Target {
    User(String),
    Conversation(String),
}

impl Target {
    fn record(&self) -> String {
        match self {
            Target::User(u) => format!("user:{u}"),
            Target::Conversation(c) => format!("conv:{c}"),
        }
    }

    fn wire(&self) -> v1::Target {
        match self {
            Target::User(u) => to_user(u),
            Target::Conversation(c) => to_conversation(c),
        }
    }
}

/// The append-only record; every line is on disk before `append` returns.
struct Record {
    file: File,
}

impl Record {
    fn open(path: &Path) -> anyhow::Result<Record> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Record { file })
    }

    fn append(&mut self, line: &str) -> anyhow::Result<()> {
        self.file.write_all(format!("{line}\n").as_bytes())?;
        self.file.flush()?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// The `n` after the highest one in an existing record (0 if none).
fn next_n(path: &Path, tag: &str) -> anyhow::Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let prefix = format!("{tag}-");
    let mut next = 0;
    for line in BufReader::new(file).lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        if let (Some("send" | "ack"), Some(id)) = (words.next(), words.next())
            && let Some(n) = id.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok())
        {
            next = next.max(n + 1);
        }
    }
    Ok(next)
}

/// Errors after which the same request may succeed later (server down,
/// restarting, overloaded).
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Timeout | ClientError::Closed => true,
        ClientError::Server { code, .. } | ClientError::Goodbye { code, .. } => matches!(
            code,
            ErrorCode::Busy
                | ErrorCode::Internal
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyRequests
                | ErrorCode::IdleTimeout
                | ErrorCode::SlowConsumer
                | ErrorCode::HandshakeTimeout
        ),
        _ => false,
    }
}

/// How long to wait before the next attempt: grows from 10 ms to 200 ms,
/// longer if the server asked for it.
fn pause(attempt: u32, e: &ClientError) -> Duration {
    let base = Duration::from_millis((10u64 << attempt.min(5)).min(200));
    match e {
        ClientError::Server { retry_after_ms, .. } if *retry_after_ms > 0 => {
            base.max(Duration::from_millis(u64::from(*retry_after_ms)))
        }
        _ => base,
    }
}

struct Writer {
    args: Args,
    /// One per server; `at` is the one in use.
    servers: Vec<ConnectOptions>,
    at: usize,
    token: Option<String>,
    conn: Option<Connection>,
}

impl Writer {
    /// Runs `f` until it returns something other than a transient error.
    async fn retry<T>(
        &self,
        what: &str,
        mut f: impl AsyncFnMut() -> Result<T, ClientError>,
    ) -> anyhow::Result<T> {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) => {
                    tokio::time::sleep(pause(attempt, &e)).await;
                    attempt += 1;
                }
                Err(e) => bail!("{}: {what}: {e}", self.args.user),
            }
        }
    }

    async fn register(&self) -> anyhow::Result<()> {
        let (servers, user, password) = (&self.servers, &self.args.user, &self.args.password);
        let mut at = self.at;
        self.retry("register", async || {
            at += 1;
            let conn = Connection::connect(&servers[at % servers.len()]).await?;
            let r = conn.register(user, password).await;
            conn.close().await;
            match r {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(ErrorCode::UsernameTaken) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn login(&mut self) -> anyhow::Result<()> {
        let (servers, user, password) = (&self.servers, &self.args.user, &self.args.password);
        let mut at = self.at;
        let token = self
            .retry("login", async || {
                at += 1;
                let conn = Connection::connect(&servers[at % servers.len()]).await?;
                let r = conn.login(user, password, "crash-writer").await;
                conn.close().await;
                Ok(r?.token)
            })
            .await?;
        self.token = Some(token);
        Ok(())
    }

    /// Sends one message until it is acknowledged, reconnecting as needed.
    async fn send(&mut self, id: &str, target: &Target) -> anyhow::Result<v1::SendResponse> {
        let mut attempt = 0;
        loop {
            if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
                let token = self.token.clone().expect("logged in");
                let options = &self.servers[self.at % self.servers.len()];
                match Connection::connect(&options.clone().with_token(token)).await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) if is_transient(&e) => {
                        self.at += 1; // try the next node
                        tokio::time::sleep(pause(attempt, &e)).await;
                        attempt += 1;
                        continue;
                    }
                    Err(e) => bail!("{}: connecting with the session token: {e}", self.args.user),
                }
            }
            let conn = self.conn.as_ref().expect("connected");
            match conn.send(id, target.wire(), text(id)).await {
                Ok(ack) => return Ok(ack),
                Err(e) if is_transient(&e) => {
                    self.conn = None;
                    tokio::time::sleep(pause(attempt, &e)).await;
                    attempt += 1;
                }
                Err(e) => bail!("{}: sending {id}: {e}", self.args.user),
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tag = args.tag.clone().unwrap_or_else(|| args.user.clone());
    let mut targets: Vec<Target> = args.to.iter().cloned().map(Target::User).collect();
    if let Some(g) = &args.group {
        targets.push(Target::Conversation(g.clone()));
    }
    let servers: Vec<ConnectOptions> = args
        .server
        .iter()
        .map(|url| {
            let mut options = ConnectOptions::new(url);
            options.client_name = format!("crash-writer/{}", args.user);
            options.connect_timeout = Duration::from_secs(2);
            options.request_timeout = Duration::from_secs(5);
            options
        })
        .collect();
    // Writers spread over the nodes.
    let at = std::process::id() as usize;

    let stop = Arc::new(AtomicBool::new(false));
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::interrupt(),
    ] {
        let mut signal = tokio::signal::unix::signal(kind)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            signal.recv().await;
            stop.store(true, Ordering::SeqCst);
        });
    }

    let first = next_n(&args.out, &tag)?;
    let mut record = Record::open(&args.out)?;
    record.append(&format!(
        "start {} {} {first}",
        args.user,
        std::process::id()
    ))?;
    let (count, seconds, rate, register) = (args.count, args.seconds, args.rate, args.register);
    let mut writer = Writer {
        args,
        servers,
        at,
        token: None,
        conn: None,
    };
    if register {
        writer.register().await?;
    }
    writer.login().await?;

    let started = Instant::now();
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
    let (mut sent, mut dups) = (0u64, 0u64);
    let mut longest = Duration::ZERO;
    for n in first.. {
        if stop.load(Ordering::SeqCst)
            || (count > 0 && sent >= count)
            || (seconds > 0 && started.elapsed() >= Duration::from_secs(seconds))
        {
            break;
        }
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(sent as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let id = format!("{tag}-{n}");
        let target = &targets[(n % targets.len() as u64) as usize];
        record.append(&format!("send {id} {}", target.record()))?;
        let attempt_started = Instant::now();
        let ack = writer.send(&id, target).await?;
        longest = longest.max(attempt_started.elapsed());
        record.append(&format!(
            "ack {id} {} {}{}",
            ack.conversation_id,
            ack.conv_seq,
            if ack.duplicate { " dup" } else { "" }
        ))?;
        sent += 1;
        dups += u64::from(ack.duplicate);
    }
    if let Some(c) = writer.conn.take() {
        c.close().await;
    }
    eprintln!(
        "{}: {sent} messages acknowledged ({dups} as duplicates of a stored retry) in {:.1}s; longest wait for an acknowledgement {:.2}s",
        writer.args.user,
        started.elapsed().as_secs_f64(),
        longest.as_secs_f64()
    );
    Ok(())
}
