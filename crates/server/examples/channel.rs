//! Measures the cost of messages to a very large group: registers N users,
//! builds one group of all of them (read-diffused above the fan-out
//! threshold), keeps a few members online, and times sends and their
//! delivery. Start the server with cheap password hashes for large N
//! (`password_hash_memory_kib = 8`, `password_hash_iterations = 1`).
//!
//! `cargo run --release -p pigeon-server --example channel -- tcp://127.0.0.1:7700 100000 200`

use std::time::{Duration, Instant};

use pigeon_client::v1::frame::Body;
use pigeon_client::{ConnectOptions, Connection, text, to_group};

const PASSWORD: &str = "channel-password";

async fn anon(url: &str) -> anyhow::Result<Connection> {
    Ok(Connection::connect(&ConnectOptions::new(url)).await?)
}

async fn device(url: &str, name: &str) -> anyhow::Result<Connection> {
    let token = anon(url).await?.login(name, PASSWORD, "bench").await?.token;
    Ok(Connection::connect(&ConnectOptions::new(url).with_token(token)).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "tcp://127.0.0.1:7700".into());
    let members: usize = args.get(2).map_or(Ok(100_000), |s| s.parse())?;
    let messages: usize = args.get(3).map_or(Ok(200), |s| s.parse())?;
    let tag = std::process::id();
    let names: Vec<String> = (0..members).map(|i| format!("c{tag}-{i}")).collect();

    let t = Instant::now();
    let conns = futures_util::future::join_all((0..8).map(|_| anon(&url))).await;
    let conns: Vec<Connection> = conns.into_iter().collect::<Result<_, _>>()?;
    for chunk in names.chunks(512) {
        let calls = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| conns[i % conns.len()].register(n, PASSWORD));
        for r in futures_util::future::join_all(calls).await {
            r?;
        }
    }
    println!(
        "registered {members} users in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let owner = device(&url, &names[0]).await?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    let first = refs.len().min(1001);
    let group = owner
        .create_group("channel", "", &refs[1..first], None)
        .await?;
    let id = group.conversation_id;
    for chunk in refs[first..].chunks(1000) {
        owner.add_members(&id, chunk).await?;
    }
    println!(
        "built a {members}-member group in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let mut online = Vec::new();
    for n in refs.iter().skip(1).take(10) {
        let c = device(&url, n).await?;
        let mut key = Vec::new();
        loop {
            let r = c.sync(&key, 0).await?;
            key = r.key;
            if !r.has_more {
                break;
            }
        }
        online.push((c, key));
    }

    let mut acks = Vec::with_capacity(messages);
    let mut fanout = Vec::with_capacity(messages);
    for i in 0..messages {
        let t = Instant::now();
        owner
            .send(&format!("m{i}"), to_group(&id), text("hello, everyone"))
            .await?;
        acks.push(t.elapsed());
        // Time until every online member was told and has synced it.
        for (c, key) in &mut online {
            loop {
                match c.next_push().await {
                    Some(Body::SyncNotice(_)) => break,
                    Some(_) => continue,
                    None => anyhow::bail!("an online member was disconnected"),
                }
            }
            loop {
                let r = c.sync(key, 0).await?;
                *key = r.key;
                if !r.has_more {
                    break;
                }
            }
        }
        fanout.push(t.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    println!(
        "{messages} sends to {members} members: ack p50={:?} p99={:?}; 10 online members notified and synced p50={:?} p99={:?}",
        pct(&mut acks, 0.5),
        pct(&mut acks, 0.99),
        pct(&mut fanout, 0.5),
        pct(&mut fanout, 0.99)
    );
    Ok(())
}
