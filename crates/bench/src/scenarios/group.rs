//! `group`: one group of M members, a share of them online (connected and
//! synced, reacting to pushes as a client does: sync when told). The owner
//! sends messages one after another; for each, the time from the send until
//! every online member has synced it. Reports p50/p99 of that over the
//! messages, of the owner's acknowledgement, and of single deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pigeon_client::v1::frame::Body;
use pigeon_client::{Connection, text, to_group};
use serde_json::json;
use tokio::sync::mpsc;

use crate::stats::{self, Report, Text, bar, thousands};
use crate::target::{Options, Target};
use crate::users::{self, padded};

/// Members the group is created with and added per request.
const MEMBERS_PER_REQUEST: usize = 1000;
/// How long a message may take to reach everyone before the run fails.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(60);
/// Digits of the message index at the start of each text.
const INDEX_DIGITS: usize = 10;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Members of the group, the owner included.
    #[arg(long, default_value_t = 100_000)]
    members: usize,
    /// Share of the members (besides the owner) online, 0 to 1.
    #[arg(long, default_value_t = 0.01)]
    online: f64,
    /// Messages sent, one after another.
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// Text size of each message in bytes (at least 10).
    #[arg(long, default_value_t = 100)]
    size: usize,
}

pub(crate) async fn run(options: &Options, args: &Args) -> anyhow::Result<Report> {
    if args.members < 2 || !(0.0..=1.0).contains(&args.online) || args.messages == 0 {
        bail!("need --members ≥ 2, --online in 0..=1 and --messages ≥ 1");
    }
    let target = Target::open(options).await?;
    let url = &target.tcp_url;
    let tag = users::run_tag();
    let names: Vec<String> = (0..args.members).map(|i| format!("g{tag}-{i}")).collect();
    let setup = Instant::now();
    let pb = bar(names.len() as u64, "register");
    users::register_many(url, &names, &pb).await?;
    pb.finish();
    let register_secs = setup.elapsed().as_secs_f64();

    let owner_token =
        users::login_many(url, &names[..1], &indicatif::ProgressBar::hidden()).await?;
    let owner = users::connect_many(url, &owner_token, &indicatif::ProgressBar::hidden())
        .await?
        .pop()
        .context("no owner connection")?;
    let built = Instant::now();
    let pb = bar(names.len() as u64 - 1, "build group");
    let refs: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let first = refs.len().min(MEMBERS_PER_REQUEST);
    let group = owner
        .create_group("bench", "pigeon-bench group", &refs[..first], None)
        .await
        .context("creating the group")?;
    pb.inc(first as u64);
    let id = group.conversation_id;
    for chunk in refs[first..].chunks(MEMBERS_PER_REQUEST) {
        owner
            .add_members(&id, chunk)
            .await
            .context("adding members")?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish();
    let build_secs = built.elapsed().as_secs_f64();

    // Online members, spread evenly over the member list.
    let online_count = (((args.members - 1) as f64) * args.online).round() as usize;
    let online_count = online_count.clamp(1, args.members - 1);
    let step = (args.members - 1) as f64 / online_count as f64;
    let online_names: Vec<String> = (0..online_count)
        .map(|i| names[1 + (i as f64 * step) as usize].clone())
        .collect();
    let pb = bar(online_count as u64, "login online members");
    let tokens = users::login_many(url, &online_names, &pb).await?;
    pb.finish();
    let pb = bar(online_count as u64, "connect online members");
    let conns = users::connect_many(url, &tokens, &pb).await?;
    pb.finish();
    let pb = bar(online_count as u64, "initial sync");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for (m, conn) in conns.into_iter().enumerate() {
        let (_, key) = users::sync_to_head(&conn, &[]).await?;
        pb.inc(1);
        let conn = Arc::new(conn);
        members.push(conn.clone());
        tokio::spawn(member(m, conn, key, args.messages, tx.clone()));
    }
    drop(tx);
    pb.finish();

    let mut fan_out = stats::histogram();
    let mut ack = stats::histogram();
    let mut delivery = stats::histogram();
    let mut seen = vec![0usize; args.messages];
    let pb = bar(args.messages as u64, "group messages");
    for i in 0..args.messages {
        let sent = Instant::now();
        users::send(
            &owner,
            &pigeon_client::new_client_msg_id(),
            to_group(&id),
            text(&padded(&format!("{i:0INDEX_DIGITS$}"), args.size)),
        )
        .await
        .context("sending to the group")?;
        stats::record(&mut ack, sent.elapsed());
        let deadline = tokio::time::Instant::now() + FAN_OUT_TIMEOUT;
        let mut last = sent;
        while seen[i] < online_count {
            let got = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "message {i} reached {} of {online_count} online members in {FAN_OUT_TIMEOUT:?}",
                        seen[i]
                    )
                })?;
            let Some(report) = got else {
                bail!("every member task ended before message {i} arrived");
            };
            let (idx, at) = report?;
            if idx < args.messages {
                seen[idx] += 1;
                if idx == i {
                    stats::record(&mut delivery, at.saturating_duration_since(sent));
                    last = last.max(at);
                }
            }
        }
        stats::record(&mut fan_out, last - sent);
        pb.inc(1);
    }
    pb.finish();
    for m in &members {
        m.close().await;
    }
    owner.close().await;

    let mut t = Text::default();
    t.line(format!(
        "group: {} members, {} online ({:.1} %), {} messages of {} bytes",
        thousands(args.members as f64),
        thousands(online_count as f64),
        100.0 * online_count as f64 / (args.members - 1) as f64,
        args.messages,
        args.size
    ));
    t.kv("all online members have it", stats::line(&fan_out));
    t.kv("owner's acknowledgement", stats::line(&ack));
    t.kv("single deliveries", stats::line(&delivery));
    t.kv(
        "set-up",
        format!("registered in {register_secs:.1} s, group built in {build_secs:.1} s"),
    );
    Ok(Report {
        scenario: "group",
        title: format!("group: {} members, {} online", args.members, online_count),
        params: json!({
            "members": args.members,
            "online": online_count,
            "messages": args.messages,
            "size": args.size,
        }),
        results: json!({
            "all_online_have_it": stats::summary(&fan_out),
            "ack": stats::summary(&ack),
            "single_delivery": stats::summary(&delivery),
            "register_seconds": stats::round3(register_secs),
            "build_seconds": stats::round3(build_secs),
        }),
        text: t.done(),
        curves: vec![
            ("all online members have it".into(), fan_out),
            ("single deliveries".into(), delivery),
            ("owner's acknowledgement".into(), ack),
        ],
    })
}

type MemberReport = anyhow::Result<(usize, Instant)>;

/// An online member: on every push, syncs to the head and reports each
/// group message (by index) with the time it had it.
async fn member(
    m: usize,
    conn: Arc<Connection>,
    mut key: Vec<u8>,
    messages: usize,
    tx: mpsc::UnboundedSender<MemberReport>,
) {
    let mut last_index = None;
    while last_index.is_none_or(|i| i + 1 < messages) {
        match conn.next_push().await {
            None => {
                let _ = tx.send(Err(anyhow::anyhow!("online member {m} was disconnected")));
                return;
            }
            Some(Body::EventsPush(_) | Body::SyncNotice(_)) => {
                let (events, k) = match users::sync_to_head(&conn, &key).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                key = k;
                let now = Instant::now();
                for msg in events.iter().filter_map(users::message) {
                    let t = msg.content.as_ref().map_or("", |c| c.text.as_str());
                    if let Some(i) = t.get(..INDEX_DIGITS).and_then(|s| s.parse::<usize>().ok()) {
                        last_index = Some(i);
                        let _ = tx.send(Ok((i, now)));
                    }
                }
            }
            Some(_) => {}
        }
    }
}
