//! Many users at once: registering, logging in, connecting, syncing to
//! the head of their logs. Everything is pipelined or run concurrently,
//! since set-up time is not what is measured.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use pigeon_client::{ClientError, ConnectOptions, Connection, v1};

/// Every benchmark user's password.
pub(crate) const PASSWORD: &str = "pigeon-bench-password";
/// Requests in flight while registering (over a few connections).
const REGISTER_INFLIGHT: usize = 256;
/// Anonymous connections used to register.
const REGISTER_CONNECTIONS: usize = 8;
/// Logins (each on its own new connection) or connects at a time.
pub(crate) const CONNECT_CONCURRENCY: usize = 64;

/// A short tag unique to this run, so names never clash on a reused server.
pub(crate) fn run_tag() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut n = (secs % 1_000_000) * 100_000 + u64::from(std::process::id() % 100_000);
    let mut s = String::new();
    while n > 0 {
        let d = (n % 36) as u32;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    s
}

/// Options with limits generous enough for a loaded 2-core machine.
pub(crate) fn options(url: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(url);
    o.connect_timeout = Duration::from_secs(120);
    o.request_timeout = Duration::from_secs(120);
    o
}

/// An anonymous connection.
pub(crate) async fn anon(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(&options(url))
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Registers every name, many requests in flight over a few connections.
pub(crate) async fn register_many(
    url: &str,
    names: &[String],
    pb: &ProgressBar,
) -> anyhow::Result<()> {
    let mut conns = Vec::new();
    for _ in 0..REGISTER_CONNECTIONS.min(names.len().max(1)) {
        conns.push(anon(url).await?);
    }
    let conns = &conns;
    let mut results = futures_util::stream::iter(names.iter().enumerate())
        .map(|(i, name)| async move {
            conns[i % conns.len()]
                .register(name, PASSWORD)
                .await
                .with_context(|| format!("registering {name}"))
        })
        .buffer_unordered(REGISTER_INFLIGHT);
    while let Some(r) = results.next().await {
        r?;
        pb.inc(1);
    }
    for c in conns {
        c.close().await;
    }
    Ok(())
}

/// Logs each name in as a new device (one short-lived connection each) and
/// returns the tokens in the order of `names`.
pub(crate) async fn login_many(
    url: &str,
    names: &[String],
    pb: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter(names.iter())
        .map(|name| async move {
            let c = anon(url).await?;
            let token = c
                .login(name, PASSWORD, "bench")
                .await
                .with_context(|| format!("logging in {name}"))?
                .token;
            c.close().await;
            pb.inc(1);
            Ok(token)
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Opens a connection per token (an empty token: anonymous), in the order of `tokens`.
pub(crate) async fn connect_many(
    url: &str,
    tokens: &[String],
    pb: &ProgressBar,
) -> anyhow::Result<Vec<Connection>> {
    connect_many_named(url, tokens, pb, None).await
}

/// [`connect_many`], the Hellos naming the client `client_name` if given.
pub(crate) async fn connect_many_named(
    url: &str,
    tokens: &[String],
    pb: &ProgressBar,
    client_name: Option<&str>,
) -> anyhow::Result<Vec<Connection>> {
    let results: Vec<anyhow::Result<Connection>> = futures_util::stream::iter(tokens.iter())
        .map(|token| async move {
            let mut opts = if token.is_empty() {
                options(url)
            } else {
                options(url).with_token(token.as_str())
            };
            if let Some(name) = client_name {
                opts.client_name = name.to_string();
            }
            let c = Connection::connect(&opts).await.context("connecting")?;
            pb.inc(1);
            Ok(c)
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Syncs from `key` until nothing more is pending; returns the events and the new key.
pub(crate) async fn sync_to_head(
    c: &Connection,
    key: &[u8],
) -> anyhow::Result<(Vec<v1::Event>, Vec<u8>)> {
    let mut key = key.to_vec();
    let mut events = Vec::new();
    loop {
        let r = c.sync(&key, 0).await.context("sync")?;
        events.extend(r.events);
        key = r.key;
        if !r.has_more {
            return Ok((events, key));
        }
    }
}

/// Retries of one send refused with `BUSY` before giving up.
const BUSY_RETRIES_MAX: u32 = 100;

/// Sends like a well-behaved client: a `BUSY` answer (overload control) is
/// retried with the same client message id after the advised wait.
/// Returns the answer and how many times the server said `BUSY`.
pub(crate) async fn send(
    c: &Connection,
    client_msg_id: &str,
    target: v1::Target,
    content: v1::Content,
) -> anyhow::Result<(v1::SendResponse, u32)> {
    let mut busy = 0;
    loop {
        match c.send(client_msg_id, target.clone(), content.clone()).await {
            Ok(r) => return Ok((r, busy)),
            Err(ClientError::Server {
                code: v1::ErrorCode::Busy,
                retry_after_ms,
                ..
            }) if busy < BUSY_RETRIES_MAX => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms.max(1)))).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("send")),
        }
    }
}

/// The message carried by an event, if it is one.
pub(crate) fn message(e: &v1::Event) -> Option<&v1::Message> {
    match &e.kind {
        Some(v1::event::Kind::Message(m)) => Some(m),
        _ => None,
    }
}

/// A text of exactly `size` bytes (at least `prefix`'s length) starting
/// with `prefix`, padded with `.`.
pub(crate) fn padded(prefix: &str, size: usize) -> String {
    let mut s = String::with_capacity(size.max(prefix.len()));
    s.push_str(prefix);
    while s.len() < size {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks run tags make valid usernames and padding hits the size.
    #[test]
    fn tags_and_padding() {
        let t = run_tag();
        assert!(!t.is_empty() && t.len() <= 12, "{t}");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(padded("00012", 100).len(), 100);
        assert!(padded("00012", 100).starts_with("00012."));
        assert_eq!(padded("123456", 3), "123456");
    }
}
