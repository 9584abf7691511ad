//! `catchup`: a user is offline while K messages arrive from another user,
//! then reconnects and syncs them all. Reports the time to sync (with and
//! without the connect), the sync round trips, and the bytes on the wire.
//!
//! The returning user speaks through [`crate::wire::RawConn`], which counts
//! every byte read from the socket: length prefixes, frames, all of it.
//! "Overhead per message" is (bytes read during the sync − K × text size)
//! / K. The answer's breakdown shows which fields of an event take the bytes.

use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use pigeon_client::{new_client_msg_id, text, to_user};
use pigeon_proto::v1;
use prost::Message as _;
use serde_json::{Value, json};

use crate::stats::{Report, Text, bar, round3, thousands};
use crate::target::{Options, Target};
use crate::users::{self, padded};
use crate::wire::RawConn;

/// Sends in flight while the messages are queued up.
const SEND_INFLIGHT: usize = 64;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Messages that arrive while the user is offline.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Text size of each message in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Events asked for per sync request (0: the server's maximum,
    /// `sync_batch_events_max`).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// The newest protocol version the returning user offers (1: events as
    /// they are; 2: packed, see docs/PROTOCOL.md).
    #[arg(long, default_value_t = pigeon_proto::version::PROTOCOL_VERSION_MAX)]
    protocol: u32,
}

pub(crate) async fn run(options: &Options, args: &Args) -> anyhow::Result<Report> {
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let target = Target::open(options).await?;
    let tag = users::run_tag();
    let names = vec![format!("k{tag}-sender"), format!("k{tag}-reader")];
    let pb = bar(2, "register + login");
    users::register_many(&target.tcp_url, &names, &pb).await?;
    let tokens =
        users::login_many(&target.tcp_url, &names, &indicatif::ProgressBar::hidden()).await?;
    pb.finish();

    // The reader goes offline at the head of its log.
    let (mut reader, _) = RawConn::connect(&target.tcp_url, &tokens[1], args.protocol).await?;
    let mut key = Vec::new();
    loop {
        let r = reader.sync(&key, 0).await?;
        key = r.key;
        if !r.has_more {
            break;
        }
    }
    drop(reader);

    let sender = users::connect_many(
        &target.tcp_url,
        &tokens[..1],
        &indicatif::ProgressBar::hidden(),
    )
    .await?
    .pop()
    .context("no sender connection")?;
    let pb = bar(args.messages as u64, "messages while offline");
    let body = padded("", args.size);
    let sender = &sender;
    let reader_name = &names[1];
    let body = &body;
    let mut sends = futures_util::stream::iter(0..args.messages)
        .map(|_| async move {
            users::send(
                sender,
                &new_client_msg_id(),
                to_user(reader_name),
                text(body),
            )
            .await
        })
        .buffer_unordered(SEND_INFLIGHT);
    while let Some(r) = sends.next().await {
        r?;
        pb.inc(1);
    }
    drop(sends);
    pb.finish();
    sender.close().await;

    // The reader comes back.
    let started = Instant::now();
    let (mut reader, welcome) =
        RawConn::connect(&target.tcp_url, &tokens[1], args.protocol).await?;
    let connected = Instant::now();
    let bytes_before_sync = reader.bytes_read;
    let mut messages = 0usize;
    let mut round_trips = 0u32;
    let mut sample: Option<v1::Event> = None;
    loop {
        let r = reader.sync(&key, args.limit).await.with_context(|| {
            format!(
                "catching up {} messages: the server keeps the newest \
                 `sync_log_retain_events` events of each user's log (100,000 by default), and a \
                 device offline for more must resync (RESYNC_REQUIRED); use fewer --messages, \
                 or start the server with `--set sync_log_retain_events=0`",
                args.messages
            )
        })?;
        round_trips += 1;
        for e in r.events {
            if users::message(&e).is_some() {
                messages += 1;
                // Not the first: a packed batch names its conversation once.
                if messages == 2 {
                    sample = Some(e);
                }
            }
        }
        key = r.key;
        if !r.has_more {
            break;
        }
    }
    let done = Instant::now();
    let sync_bytes = reader.bytes_read - bytes_before_sync;
    if messages != args.messages {
        bail!("synced {messages} messages, expected {}", args.messages);
    }
    let k = args.messages as f64;
    let sync_ms = (done - connected).as_secs_f64() * 1000.0;
    let total_ms = (done - started).as_secs_f64() * 1000.0;
    let per_message = sync_bytes as f64 / k;
    let overhead = per_message - args.size as f64;
    let breakdown = sample.as_ref().map(breakdown).unwrap_or(Value::Null);

    let mut t = Text::default();
    t.line(format!(
        "catchup: {} messages of {} bytes waiting for an offline user (protocol version {})",
        thousands(k),
        args.size,
        welcome.version
    ));
    t.kv(
        "sync all",
        format!(
            "{sync_ms:.1} ms ({round_trips} sync round trips, {} msg/s)",
            thousands(k / (sync_ms / 1000.0))
        ),
    );
    t.kv("connect + sync all", format!("{total_ms:.1} ms"));
    t.kv(
        "bytes read while syncing",
        format!(
            "{} ({per_message:.1} per message)",
            thousands(sync_bytes as f64)
        ),
    );
    t.kv(
        "overhead per message",
        format!("{overhead:.1} bytes beyond the text"),
    );
    if let Some(fields) = breakdown.as_object() {
        let parts: Vec<String> = fields
            .iter()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0)))
            .collect();
        t.kv("bytes per event field", parts.join(", "));
    }

    Ok(Report {
        scenario: "catchup",
        title: format!("catchup: {} messages", args.messages),
        params: json!({
            "messages": args.messages,
            "size": args.size,
            "limit": args.limit,
            "protocol": welcome.version,
        }),
        results: json!({
            "sync_ms": round3(sync_ms),
            "connect_and_sync_ms": round3(total_ms),
            "round_trips": round_trips,
            "sync_bytes": sync_bytes,
            "bytes_per_message": round3(per_message),
            "overhead_bytes_per_message": round3(overhead),
            "event_field_bytes": breakdown,
        }),
        text: t.done(),
        curves: Vec::new(),
    })
}

/// Bytes each part of one message event takes when encoded: the field's
/// tag, length and value (an event is itself inside a `repeated` field of
/// the answer, which adds its own tag and length: "framing").
fn breakdown(e: &v1::Event) -> Value {
    let full = e.encoded_len();
    let mut out = serde_json::Map::new();
    let mut without = |name: &str, f: &dyn Fn(&mut v1::Event)| {
        let mut c = e.clone();
        f(&mut c);
        out.insert(name.into(), json!(full - c.encoded_len()));
    };
    without("seq", &|c| c.seq = 0);
    without("created_at_ms", &|c| c.created_at_ms = 0);
    without("created_delta_ms", &|c| c.created_delta_ms = 0);
    without("conversation_ref", &|c| c.conversation_ref = 0);
    let msg = |c: &mut v1::Event, f: &dyn Fn(&mut v1::Message)| {
        if let Some(v1::event::Kind::Message(m)) = &mut c.kind {
            f(m);
        }
    };
    without("conversation_id", &|c| {
        msg(c, &|m| m.conversation_id.clear())
    });
    without("conv_seq", &|c| msg(c, &|m| m.conv_seq = 0));
    without("sender_id", &|c| msg(c, &|m| m.sender_id = 0));
    without("sender_username", &|c| {
        msg(c, &|m| m.sender_username.clear())
    });
    without("sender_device_id", &|c| msg(c, &|m| m.sender_device_id = 0));
    without("client_msg_id", &|c| msg(c, &|m| m.client_msg_id.clear()));
    without("sent_at_ms", &|c| msg(c, &|m| m.sent_at_ms = 0));
    without("content", &|c| msg(c, &|m| m.content = None));
    // Tag and length of the event in the answer's repeated field.
    let framing = prost::encoding::encoded_len_varint(full as u64) + 1;
    out.insert("framing".into(), json!(framing));
    out.insert("total".into(), json!(full + framing));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the breakdown adds up to at least the event's fields and
    /// names the client message id's 36 bytes plus tag and length.
    #[test]
    fn breakdown_of_an_event() {
        let e = v1::Event {
            seq: 300,
            created_at_ms: 1_795_392_000_000,
            kind: Some(v1::event::Kind::Message(v1::Message {
                conversation_id: "d:1:2".into(),
                conv_seq: 300,
                sender_id: 1,
                sender_username: "alice".into(),
                sender_device_id: 1,
                client_msg_id: new_client_msg_id(),
                sent_at_ms: 1_795_392_000_000,
                content: Some(text("hello")),
                ..Default::default()
            })),
            group_seq: 0,
            ..v1::Event::default()
        };
        let b = breakdown(&e);
        assert_eq!(b["client_msg_id"], 38);
        assert_eq!(b["sender_username"], 7);
        assert_eq!(b["total"], e.encoded_len() + 2);
    }
}
