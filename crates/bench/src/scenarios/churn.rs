//! `churn`: N clients connected and synced drop off at once; while they
//! are away each is sent `--missed` messages; then all N reconnect at the
//! same moment (a reconnect storm, as after a network blip or a gateway
//! restart) and sync. Reports handshakes per second (connect + Hello with
//! the token + Welcome), the handshake latency distribution, and the time
//! until every client is back and has synced what it missed.
//!
//! With `--restart`, the storm follows a restart of the server instead
//! (servers this tool started only): every connection is cut by the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use pigeon_client::{Connection, new_client_msg_id, text, to_user};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::stats::{self, Report, Text, bar, thousands};
use crate::target::{Options, Target};
use crate::users::{self, padded};

/// Sends in flight while the missed messages are queued up.
const SEND_INFLIGHT: usize = 64;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Clients in the storm (each a different user).
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Messages each client misses while away.
    #[arg(long, default_value_t = 1)]
    missed: usize,
    /// Reconnects at a time (0: all at once).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Cut the connections by restarting the server (started servers only).
    #[arg(long)]
    restart: bool,
}

struct Back {
    handshake: Duration,
    synced: Duration,
}

pub(crate) async fn run(options: &Options, args: &Args) -> anyhow::Result<Report> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let mut target = Target::open(options).await?;
    if args.restart && !target.is_own() {
        bail!("--restart needs a server this tool started");
    }
    let url = target.tcp_url.clone();
    let tag = users::run_tag();
    let mut names: Vec<String> = (0..args.clients).map(|i| format!("r{tag}-{i}")).collect();
    names.push(format!("r{tag}-sender"));
    let pb = bar(names.len() as u64, "register");
    users::register_many(&url, &names, &pb).await?;
    pb.finish();
    let pb = bar(names.len() as u64, "login");
    let mut tokens = users::login_many(&url, &names, &pb).await?;
    pb.finish();
    let sender_token = tokens.pop().context("no sender token")?;
    let sender_name = names.pop().context("no sender")?;
    let pb = bar(args.clients as u64, "connect + sync");
    let conns = users::connect_many(&url, &tokens, &pb).await?;
    let mut keys = Vec::new();
    for c in &conns {
        keys.push(users::sync_to_head(c, &[]).await?.1);
    }
    pb.finish();

    // Everyone drops off.
    if args.restart {
        target.restart().await?;
    }
    for c in &conns {
        c.close().await;
    }
    drop(conns);

    // What they miss meanwhile.
    if args.missed > 0 {
        let sender = users::connect_many(&url, &[sender_token], &indicatif::ProgressBar::hidden())
            .await?
            .pop()
            .context("no sender connection")?;
        let total = args.clients * args.missed;
        let pb = bar(total as u64, "messages while away");
        let body = padded("missed", 100);
        let (sender, names, body) = (&sender, &names, &body);
        let mut sends = futures_util::stream::iter(0..total)
            .map(|i| async move {
                users::send(
                    sender,
                    &new_client_msg_id(),
                    to_user(&names[i % names.len()]),
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
    }

    // The storm.
    let concurrency = if args.concurrency == 0 {
        args.clients
    } else {
        args.concurrency
    };
    let gate = Arc::new(Semaphore::new(concurrency));
    let pb = bar(args.clients as u64, "reconnect storm");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (token, key) in tokens.into_iter().zip(keys) {
        let (gate, url, pb) = (gate.clone(), url.clone(), pb.clone());
        let missed = args.missed;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let conn = Connection::connect(&users::options(&url).with_token(token))
                .await
                .context("reconnecting")?;
            let handshake = start.elapsed();
            let mut key = key;
            let mut got = 0;
            while got < missed {
                let r = conn.sync(&key, 0).await.context("sync")?;
                got += r.events.iter().filter_map(users::message).count();
                key = r.key;
                if !r.has_more && got < missed {
                    // Not visible yet: wait for the push that says so.
                    tokio::time::timeout(Duration::from_secs(30), conn.next_push())
                        .await
                        .context("waiting for the missed messages")?;
                }
            }
            let synced = start.elapsed();
            pb.inc(1);
            anyhow::Ok((conn, Back { handshake, synced }))
        }));
    }
    let mut handshakes = stats::histogram();
    let mut synced = stats::histogram();
    let mut last_handshake = Duration::ZERO;
    let mut all_synced = Duration::ZERO;
    let mut conns = Vec::new();
    for t in tasks {
        let (conn, b) = t.await.context("a client panicked")??;
        stats::record(&mut handshakes, b.handshake);
        stats::record(&mut synced, b.synced);
        last_handshake = last_handshake.max(b.handshake);
        all_synced = all_synced.max(b.synced);
        conns.push(conn);
    }
    pb.finish();
    for c in &conns {
        c.close().await;
    }
    let n = args.clients as f64;
    let rate = n / last_handshake.as_secs_f64();

    let mut t = Text::default();
    t.line(format!(
        "churn: {} clients reconnect {}, each missed {} message(s){}",
        thousands(n),
        if concurrency >= args.clients {
            "all at once".to_string()
        } else {
            format!("{concurrency} at a time")
        },
        args.missed,
        if args.restart {
            " (after a server restart)"
        } else {
            ""
        }
    ));
    t.kv(
        "handshakes",
        format!(
            "{} /s (all {} back in {:.3} s)",
            thousands(rate),
            thousands(n),
            last_handshake.as_secs_f64()
        ),
    );
    t.kv(
        "all back and synced",
        format!("{:.3} s", all_synced.as_secs_f64()),
    );
    t.kv("handshake done (from start)", stats::line(&handshakes));
    t.kv("synced (from start)", stats::line(&synced));
    let _ = sender_name;
    Ok(Report {
        scenario: "churn",
        title: format!("churn: {} clients reconnecting", args.clients),
        params: json!({
            "clients": args.clients,
            "missed": args.missed,
            "concurrency": concurrency,
            "restart": args.restart,
        }),
        results: json!({
            "handshakes_per_sec": rate.round(),
            "all_back_seconds": stats::round3(last_handshake.as_secs_f64()),
            "all_synced_seconds": stats::round3(all_synced.as_secs_f64()),
            "handshake_done": stats::summary(&handshakes),
            "synced": stats::summary(&synced),
        }),
        text: t.done(),
        curves: vec![
            ("handshake done (from storm start)".into(), handshakes),
            ("synced (from storm start)".into(), synced),
        ],
    })
}
