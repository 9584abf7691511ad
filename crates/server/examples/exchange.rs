//! A quick measurement of two local clients exchanging messages through a
//! running server: one sends N messages with W in flight, the other
//! receives them (pushes, or syncs when told to). Prints throughput and
//! acknowledgement latency percentiles. The benchmark suite proper lives in
//! the `bench` crate; this is the smoke-sized version.
//!
//! `cargo run --release -p pigeon-server --example exchange -- tcp://127.0.0.1:7700 20000 64`

use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_client::v1::frame::Body;
use pigeon_client::{ConnectOptions, Connection, text, to_user};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "tcp://127.0.0.1:7700".into());
    let total: usize = args.get(2).map_or(Ok(20_000), |s| s.parse())?;
    let window: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let tag = std::process::id();
    let (alice, bob) = (format!("xa{tag}"), format!("xb{tag}"));
    let password = "exchange-password";
    let anon = Connection::connect(&ConnectOptions::new(&url)).await?;
    anon.register(&alice, password).await?;
    anon.register(&bob, password).await?;
    let a_token = anon.login(&alice, password, "bench").await?.token;
    let anon = Connection::connect(&ConnectOptions::new(&url)).await?;
    let b_token = anon.login(&bob, password, "bench").await?.token;
    let sender =
        Arc::new(Connection::connect(&ConnectOptions::new(&url).with_token(a_token)).await?);
    let receiver = Connection::connect(&ConnectOptions::new(&url).with_token(b_token)).await?;
    let mut key = receiver.sync(&[], 0).await?.key;

    let recv = tokio::spawn(async move {
        let mut got = 0usize;
        while got < total {
            match receiver.next_push().await {
                Some(Body::EventsPush(p)) if p.prev_key == key => {
                    got += p.events.len();
                    key = p.key;
                }
                Some(_) => loop {
                    let r = receiver.sync(&key, 0).await.expect("sync");
                    got += r.events.len();
                    key = r.key;
                    if !r.has_more {
                        break;
                    }
                },
                None => panic!("receiver disconnected"),
            }
        }
        Instant::now()
    });

    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..window {
        let sender = sender.clone();
        let bob = bob.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..total).step_by(window) {
                let t = Instant::now();
                sender
                    .send(&format!("{w}-{i}"), to_user(&bob), text("hello"))
                    .await
                    .expect("send");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let acked = start.elapsed();
    let received = recv.await?.duration_since(start);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "messages={total} window={window} acked_in={:.2}s ({:.0} msg/s) received_in={:.2}s ({:.0} msg/s) ack_latency p50={:?} p99={:?} max={:?}",
        acked.as_secs_f64(),
        total as f64 / acked.as_secs_f64(),
        received.as_secs_f64(),
        total as f64 / received.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}
