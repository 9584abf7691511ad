//! Webhook delivery: a background task takes due deliveries from the
//! store's durable outbox, POSTs signed JSON to the endpoint, and records the
//! outcome: success removes the delivery, failure schedules a retry with
//! exponential backoff and jitter, and past the attempt limit the delivery
//! is kept as failed with its reason. Because deliveries are queued in the
//! same commit as their message and removed only after a 2xx answer, a
//! restart loses none (an endpoint may see one twice; `X-Pigeon-Delivery`
//! identifies it).
//!
//! Signature: `X-Pigeon-Signature: v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
//! with `X-Pigeon-Timestamp: <ts>` (Unix seconds), so a receiver can reject
//! forgeries and replays.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use pigeon_core::store::{Delivery, HookKind};
use pigeon_core::{Notifier, Store};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Deliveries taken per round.
pub(crate) const DELIVERY_BATCH_MAX: usize = 64;
/// Pause between rounds when nothing is due.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Largest answer read from an endpoint.
const ANSWER_BYTES_MAX: u64 = 16 * 1024;
/// Pending deliveries counted for the backlog gauge.
const BACKLOG_COUNT_MAX: usize = 1_000_000;

/// Queued deliveries not yet delivered (gauge).
pub(crate) const WEBHOOK_BACKLOG: &str = "pigeon_webhook_backlog";
/// Delivery attempts, by `outcome` (delivered, skipped, retry, failed).
pub(crate) const WEBHOOK_ATTEMPTS_TOTAL: &str = "pigeon_webhook_attempts_total";

/// One endpoint in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Endpoint {
    /// `http://host:port/path`.
    pub(crate) url: String,
    /// Signs every body.
    pub(crate) secret: String,
    /// `message.created` and/or `push.needed` (default: both).
    #[serde(default = "all_events")]
    pub(crate) events: Vec<HookKind>,
}

fn all_events() -> Vec<HookKind> {
    vec![HookKind::MessageCreated, HookKind::PushNeeded]
}

/// How deliveries are attempted.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) attempts_max: u32,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) timeout: Duration,
}

/// Runs deliveries until `stop`.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Claimed for a while longer than the attempts can take, so that in
        // a cluster no other node attempts them meanwhile.
        let lease_ms = (settings.timeout.as_millis() as i64 + 1000) * DELIVERY_BATCH_MAX as i64;
        let due = match store
            .claim_deliveries(now_ms(), lease_ms, DELIVERY_BATCH_MAX)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading due webhook deliveries failed");
                Vec::new()
            }
        };
        if let Ok(n) = store.deliveries_pending(BACKLOG_COUNT_MAX).await {
            metrics::gauge!(WEBHOOK_BACKLOG).set(n as f64);
        }
        let busy = !due.is_empty();
        let attempts = due
            .into_iter()
            .map(|d| attempt(&*store, &*notifier, &settings, d));
        futures_util::future::join_all(attempts).await;
        if busy {
            continue;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}

async fn attempt(store: &dyn Store, notifier: &dyn Notifier, s: &Settings, d: Delivery) {
    let outcome = deliver(store, notifier, s, &d).await;
    let (label, next) = match &outcome {
        Ok(Sent::Delivered) => ("delivered", None),
        Ok(Sent::Skipped) => ("skipped", None),
        Err(_) if d.attempts + 1 >= s.attempts_max => ("failed", None),
        Err(_) => (
            "retry",
            Some(now_ms() + backoff(s, d.attempts).as_millis() as i64),
        ),
    };
    if let Err(reason) = &outcome {
        tracing::info!(id = d.id, endpoint = %d.endpoint, %reason, attempts = d.attempts + 1, "webhook delivery failed");
    }
    if let Err(e) = store
        .delivery_attempted(d.id, outcome.map(|_| ()), next)
        .await
    {
        tracing::warn!(error = %e, "recording a webhook attempt failed");
    }
    // Counted once recorded, so whoever sees the count (an operator, an
    // alert) finds the attempt in the store too.
    metrics::counter!(WEBHOOK_ATTEMPTS_TOTAL, "outcome" => label).increment(1);
}

/// Exponential backoff with full jitter, from the initial delay to the cap.
fn backoff(s: &Settings, attempts: u32) -> Duration {
    let exp = s.backoff_initial.saturating_mul(1u32 << attempts.min(20));
    let cap = exp.min(s.backoff_max).max(s.backoff_initial);
    Duration::from_millis(rand::random_range(
        s.backoff_initial.as_millis() as u64..=cap.as_millis() as u64,
    ))
}

enum Sent {
    Delivered,
    /// A push for someone who is online: nothing to send.
    Skipped,
}

async fn deliver(
    store: &dyn Store,
    notifier: &dyn Notifier,
    s: &Settings,
    d: &Delivery,
) -> Result<Sent, String> {
    let Some(endpoint) = s.endpoints.iter().find(|e| e.url == d.endpoint) else {
        return Err("the endpoint is no longer configured".into());
    };
    if d.kind == HookKind::PushNeeded && d.recipient != 0 && notifier.is_online(d.recipient) {
        return Ok(Sent::Skipped);
    }
    let message = store
        .message(&d.conversation_id, d.conv_seq)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the message no longer exists")?;
    let content = message.content.clone().unwrap_or_default();
    let body = match d.kind {
        HookKind::MessageCreated => serde_json::json!({
            "id": d.id,
            "event": d.kind.as_str(),
            "created_at_ms": d.created_at_ms,
            "message": {
                "conversation_id": message.conversation_id,
                "conv_seq": message.conv_seq,
                "sender_id": message.sender_id,
                "sender": message.sender_username,
                "client_msg_id": message.client_msg_id,
                "sent_at_ms": message.sent_at_ms,
                "text": content.text,
                "payload_type": content.payload_type,
                "payload_bytes": content.payload.len(),
            },
        }),
        HookKind::PushNeeded => {
            let recipient = match d.recipient {
                0 => serde_json::Value::Null,
                id => {
                    let name = store
                        .user_by_id(id)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|u| u.username);
                    serde_json::json!({ "user_id": id, "username": name })
                }
            };
            serde_json::json!({
                "id": d.id,
                "event": d.kind.as_str(),
                "created_at_ms": d.created_at_ms,
                "recipient": recipient,
                "conversation_id": message.conversation_id,
                "conv_seq": message.conv_seq,
                "sender": message.sender_username,
                "preview": content.text.chars().take(100).collect::<String>(),
            })
        }
    };
    post(endpoint, d, &body.to_string(), s.timeout)
        .await
        .map(|()| Sent::Delivered)
}

/// The signature header value for `body` at `ts`.
pub(crate) fn signature(secret: &str, ts: u64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("{ts}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs over HTTP/1.1; a 2xx answer is success.
async fn post(
    endpoint: &Endpoint,
    d: &Delivery,
    body: &str,
    limit: Duration,
) -> Result<(), String> {
    let rest = endpoint
        .url
        .strip_prefix("http://")
        .ok_or("only http:// endpoints are supported")?;
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let ts = (now_ms() / 1000) as u64;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-Pigeon-Event: {}\r\nX-Pigeon-Delivery: {}\r\nX-Pigeon-Timestamp: {ts}\r\nX-Pigeon-Signature: {}\r\n\
         User-Agent: pigeon/{}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        d.kind.as_str(),
        d.id,
        signature(&endpoint.secret, ts, body),
        env!("CARGO_PKG_VERSION"),
    );
    let answer = tokio::time::timeout(limit, async {
        let mut stream = TcpStream::connect(authority).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        let mut head = stream.take(ANSWER_BYTES_MAX);
        // The status line is all we need; read until it is complete.
        loop {
            let mut chunk = [0u8; 512];
            let n = head.read(&mut chunk).await?;
            raw.extend_from_slice(&chunk[..n]);
            if n == 0 || raw.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(raw)
    })
    .await
    .map_err(|_| format!("no answer within {} ms", limit.as_millis()))?
    .map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&answer);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP answer")?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature is HMAC-SHA256 over "<ts>.<body>", hex, with a version
    /// prefix; another secret, time or body gives another signature.
    #[test]
    fn signatures() {
        let s = signature("secret", 1700000000, "{}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert_ne!(s, signature("other", 1700000000, "{}"));
        assert_ne!(s, signature("secret", 1700000001, "{}"));
        assert_ne!(s, signature("secret", 1700000000, "{ }"));
    }

    /// Backoff stays between the initial delay and the cap and grows.
    #[test]
    fn backoff_bounds() {
        let s = Settings {
            endpoints: Vec::new(),
            attempts_max: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        };
        for attempts in 0..30 {
            let d = backoff(&s, attempts);
            assert!(
                d >= s.backoff_initial && d <= s.backoff_max,
                "{attempts}: {d:?}"
            );
        }
    }
}
