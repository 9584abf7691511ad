//! `connections`: N users, each with one authenticated idle connection
//! (the Hello carries its token), over TCP and over WebSocket. Reports the
//! server's resident memory (VmRSS) per connection above its idle baseline.
//!
//! The users are registered and logged in first; a server this tool started
//! is then restarted (a fresh process over the same data), so the baseline
//! holds no memory left over from the short-lived login connections. Each
//! transport gets its own fresh server. This machine allows 20,000 open
//! files per process, this one included: measure up to about 15,000.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::stats::{Report, Text, bar, thousands};
use crate::target::{Options, Target, Transport};
use crate::users;

/// Time for the server's memory to settle before each reading.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Idle connections to open (each a different user).
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Transports to measure, each on a fresh server (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Transport::Tcp, Transport::Ws])]
    transport: Vec<Transport>,
    /// Connect without a token (no login, no session, no registry entry):
    /// the cost of the connection machinery alone.
    #[arg(long)]
    anonymous: bool,
    /// Pad each connection's Hello to about this many bytes (a long client
    /// name), to see whether an idle connection keeps the memory of a large
    /// frame it read. 0: the SDK's usual Hello.
    #[arg(long, default_value_t = 0)]
    hello_bytes: usize,
}

pub(crate) async fn run(options: &Options, args: &Args) -> anyhow::Result<Report> {
    if let Some(limit) = fd_limit()
        && limit < args.count as u64 + 200
    {
        bail!(
            "this process may open only {limit} files; raise it (`ulimit -n 20000`) or lower --count"
        );
    }
    let mut t = Text::default();
    t.line(format!(
        "connections: {} {} idle connections per transport{}",
        thousands(args.count as f64),
        if args.anonymous {
            "anonymous"
        } else {
            "authenticated"
        },
        if args.hello_bytes > 0 {
            format!(", Hellos of {} bytes", thousands(args.hello_bytes as f64))
        } else {
            String::new()
        }
    ));
    let mut results = Vec::new();
    for &transport in &args.transport {
        let r = measure(options, args, transport).await?;
        let per = r["bytes_per_connection"].as_f64().unwrap_or(0.0);
        t.kv(
            &format!("{transport}: memory per connection"),
            format!(
                "{} bytes ({:.2} KiB): RSS {} → {} KiB",
                thousands(per),
                per / 1024.0,
                thousands(r["rss_idle_kib"].as_f64().unwrap_or(0.0)),
                thousands(r["rss_connected_kib"].as_f64().unwrap_or(0.0)),
            ),
        );
        t.kv(
            &format!("{transport}: connect rate"),
            format!(
                "{} connections/s ({} at a time)",
                thousands(r["connects_per_sec"].as_f64().unwrap_or(0.0)),
                users::CONNECT_CONCURRENCY
            ),
        );
        if let Some(after) = r["rss_after_close_kib"].as_f64() {
            t.kv(
                &format!("{transport}: RSS after closing"),
                format!("{} KiB", thousands(after)),
            );
        }
        results.push(r);
    }
    Ok(Report {
        scenario: "connections",
        title: "connections".into(),
        params: json!({
            "count": args.count,
            "transports": args.transport,
            "anonymous": args.anonymous,
            "hello_bytes": args.hello_bytes,
        }),
        results: Value::Array(results),
        text: t.done(),
        curves: Vec::new(),
    })
}

async fn measure(options: &Options, args: &Args, transport: Transport) -> anyhow::Result<Value> {
    let (count, anonymous) = (args.count, args.anonymous);
    let name = (args.hello_bytes > 0).then(|| "x".repeat(args.hello_bytes));
    let mut target = Target::open(options).await?;
    if target.pid.is_none() {
        bail!("reading the server's memory needs its process id (--server-pid)");
    }
    let tokens = if anonymous {
        vec![String::new(); count]
    } else {
        let tag = users::run_tag();
        let names: Vec<String> = (0..count).map(|i| format!("c{tag}-{i}")).collect();
        let pb = bar(count as u64, &format!("{transport}: register"));
        users::register_many(&target.tcp_url, &names, &pb).await?;
        pb.finish();
        let pb = bar(count as u64, &format!("{transport}: login"));
        let tokens = users::login_many(&target.tcp_url, &names, &pb).await?;
        pb.finish();
        tokens
    };
    let restarted = if target.is_own() && !anonymous {
        target.restart().await?;
        true
    } else {
        false
    };
    // One connection warms the code paths a first connection touches.
    let url = target.url(transport)?;
    let hidden = indicatif::ProgressBar::hidden();
    let warm = users::connect_many_named(&url, &tokens[..1], &hidden, name.as_deref()).await?;
    tokio::time::sleep(SETTLE).await;
    let idle = target.rss_kib().context("reading the server's VmRSS")?;
    let pb = bar((count - 1) as u64, &format!("{transport}: connect"));
    let started = std::time::Instant::now();
    let conns = users::connect_many_named(&url, &tokens[1..], &pb, name.as_deref()).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    pb.finish();
    tokio::time::sleep(SETTLE).await;
    let connected = target.rss_kib().context("reading the server's VmRSS")?;
    let open = conns.len() + warm.len();
    let closed_early = conns.iter().filter(|c| c.is_closed()).count();
    if closed_early > 0 {
        bail!("{closed_early} connections were closed by the server while idle");
    }
    let n = conns.len() as f64;
    let per = (connected.saturating_sub(idle) as f64) * 1024.0 / n;
    for c in conns.iter().chain(warm.iter()) {
        c.close().await;
    }
    drop(conns);
    tokio::time::sleep(SETTLE).await;
    let after_close = target.rss_kib();
    Ok(json!({
        "transport": transport,
        "anonymous": anonymous,
        "hello_bytes": args.hello_bytes,
        "connections": open,
        "restarted_before_baseline": restarted,
        "rss_idle_kib": idle,
        "rss_connected_kib": connected,
        "rss_after_close_kib": after_close,
        "bytes_per_connection": per.round(),
        "connects_per_sec": (n / connect_secs).round(),
    }))
}

/// This process's soft limit on open files (from /proc/self/limits).
fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    /// Checks the open-files limit is read on Linux.
    #[test]
    fn reads_the_fd_limit() {
        assert!(super::fd_limit().is_some_and(|n| n > 0));
    }
}
