//! `direct`: N user pairs, both users of a pair sending to each other with
//! W requests in flight, at a fixed total rate or as fast as the server
//! acknowledges. Each text starts with two times (nanoseconds since the run
//! began, 20 digits each): when it was sent and its slot in the schedule, so
//! the recipient measures send → push without a shared table.
//!
//! In rate mode a send goes at its slot, but the runtime's timer wakes a
//! sleeping sender only on a millisecond tick, up to a millisecond or two
//! after the slot: that is the bench's pacing, not the server, so the
//! end-to-end latency counts from the moment the send went. A send that
//! could not go at its slot because the sender's window was full (the
//! server was behind) counts from the slot, so a server falling behind
//! still shows in full (no coordinated omission). The latency from the slot
//! is reported beside it, and so is how late the timer was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use pigeon_client::v1::frame::Body;
use pigeon_client::{Connection, new_client_msg_id, text, to_user};
use pigeon_proto::v1::{self, Frame};
use serde_json::json;

use crate::scenarios::{cores, echo, own_cpu_seconds};
use crate::stats::{self, Report, Text, bar, thousands};
use crate::target::{CommitDelta, Metrics, Options, Target, Transport};
use crate::users::{self, padded};

/// Digits of each of the two times at the start of each text.
const STAMP_DIGITS: usize = 20;
/// Text bytes the two times take.
const STAMPS_BYTES: usize = 2 * STAMP_DIGITS;
/// A receiver that hears nothing for this long gives up.
const RECEIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// User pairs; both users of a pair send to each other.
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Text size of each message in bytes (at least 40: two times start it).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages in total, over all senders.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Total send rate in messages per second (0: as fast as acknowledged).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// Skip the raw TCP echo baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Another node of the same cluster (`tcp://host:port`): the second
    /// user of every pair connects there, so every message crosses nodes.
    #[arg(long)]
    peer_server: Option<String>,
    /// Leave messages sent in the first this many milliseconds out of the
    /// latency figures (they are still sent, counted and waited for): the
    /// start of a run, when every sender's first messages open connections'
    /// state and conversations at once, is not the steady state.
    #[arg(long, default_value_t = 0)]
    warmup_ms: u64,
    /// Write the end-to-end latency over the run to this CSV file: per
    /// 10 ms of send time, the messages sent and the slowest one's latency.
    #[arg(long, value_name = "FILE.csv")]
    timeline: Option<std::path::PathBuf>,
}

/// A 10 ms slot of send time counts as late when one of its messages took
/// longer than this end to end (the latency target at half rate).
const LATE_THRESHOLD: Duration = Duration::from_millis(10);

/// When the run began, and how long its start is left out of the latencies.
#[derive(Clone, Copy)]
struct Timing {
    epoch: Instant,
    warmup: Duration,
}

/// What one user's receiving side measured.
struct UserResult {
    /// From the moment each message was sent.
    e2e: Histogram<u64>,
    /// From each message's slot in the schedule (the same in full-rate mode).
    e2e_from_slot: Histogram<u64>,
    timeline: stats::Timeline,
    last_received: Option<Instant>,
    received: u64,
    /// Pushes applied directly (their `prev_key` was the key held).
    pushes_applied: u64,
    /// Sync round trips (after a `SyncNotice` or a push that did not follow on).
    syncs: u64,
}

pub(crate) async fn run(options: &Options, args: &Args) -> anyhow::Result<Report> {
    if args.size < STAMPS_BYTES {
        bail!("--size must be at least {STAMPS_BYTES} bytes");
    }
    if args.pairs == 0 || args.window == 0 {
        bail!("--pairs and --window must be at least 1");
    }
    let senders = 2 * args.pairs;
    let per_sender = args.messages / senders as u64;
    if per_sender == 0 {
        bail!("--messages must be at least 2 × --pairs");
    }
    let total = per_sender * senders as u64;

    // The baseline first, while the server is idle.
    let frame_bytes = send_frame_bytes(args.size);
    let baseline = if args.no_baseline {
        None
    } else {
        let pb = bar(total, "TCP echo baseline");
        let e = echo::run(total, frame_bytes, senders, args.window).await?;
        pb.set_position(total);
        pb.finish();
        Some(e)
    };

    let target = Target::open(options).await?;
    let plan = Plan {
        senders,
        per_sender,
        total,
        baseline,
    };
    match measure(&target, args, plan).await {
        Ok(report) => Ok(report),
        // Say what the server saw: a failed run is otherwise hard to explain.
        Err(e) => Err(anyhow::anyhow!("{e:#}\n{}", target.diagnosis().await)),
    }
}

/// The run's shape, worked out before the server starts.
struct Plan {
    senders: usize,
    per_sender: u64,
    total: u64,
    baseline: Option<echo::Echo>,
}

async fn measure(target: &Target, args: &Args, plan: Plan) -> anyhow::Result<Report> {
    let Plan {
        senders,
        per_sender,
        total,
        baseline,
    } = plan;
    let url = target.url(args.transport)?;
    let tag = users::run_tag();
    let names: Vec<String> = (0..senders).map(|i| format!("d{tag}-{i}")).collect();
    let pb = bar(senders as u64, "register");
    users::register_many(&target.tcp_url, &names, &pb).await?;
    pb.finish();
    let pb = bar(senders as u64, "login");
    let tokens = users::login_many(&target.tcp_url, &names, &pb).await?;
    pb.finish();
    let pb = bar(senders as u64, "connect");
    let conns = match &args.peer_server {
        None => users::connect_many(&url, &tokens, &pb).await?,
        Some(peer) => {
            if !peer.starts_with("tcp://") || args.transport != Transport::Tcp {
                bail!("--peer-server takes a tcp:// URL and works with --transport tcp");
            }
            // Even users here, odd users (each pair's second) on the peer.
            let (even, odd): (Vec<String>, Vec<String>) = (
                tokens.iter().step_by(2).cloned().collect(),
                tokens.iter().skip(1).step_by(2).cloned().collect(),
            );
            let here = users::connect_many(&url, &even, &pb).await?;
            let there = users::connect_many(peer, &odd, &pb).await?;
            here.into_iter()
                .zip(there)
                .flat_map(|(a, b)| [a, b])
                .collect()
        }
    };
    pb.finish();
    let mut keys = Vec::new();
    for c in &conns {
        keys.push(users::sync_to_head(c, &[]).await?.1);
    }
    let conns: Vec<Arc<Connection>> = conns.into_iter().map(Arc::new).collect();

    let metrics_before = target.metrics().await;
    let written_before = target.storage_write_bytes();
    let threads_before = target.thread_times();
    let server_cpu_before = target.cpu_seconds();
    let own_cpu_before = own_cpu_seconds();
    let received = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    // Every histogram is made before the clock starts (each is about 270 KB:
    // one per send loop, made as the loops started, held up the first
    // 200 ms of every run); a sender's loops share one.
    let ack_histograms: Vec<Arc<Mutex<Histogram<u64>>>> = (0..conns.len())
        .map(|_| Arc::new(Mutex::new(stats::histogram())))
        .collect();
    let mut e2e_histograms: Vec<(Histogram<u64>, Histogram<u64>)> = (0..conns.len())
        .map(|_| (stats::histogram(), stats::histogram()))
        .collect();
    // How far after its slot each send went, when its sender was waiting
    // for the slot (the timer's lateness); one per sender, like the acks.
    let pacing_histograms: Vec<Arc<Mutex<Histogram<u64>>>> = (0..conns.len())
        .map(|_| Arc::new(Mutex::new(stats::histogram())))
        .collect();
    let epoch = Instant::now();
    // The same moment on the wall clock, to line the timeline up with
    // what the server or the machine logged.
    let epoch_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let warmup = Duration::from_millis(args.warmup_ms);
    let pb = bar(total, "direct messages");
    let mut tasks = Vec::new();
    for (i, (conn, key)) in conns.iter().zip(keys).enumerate() {
        let partner = names[i ^ 1].clone();
        let receiver = tokio::spawn(receive(
            conn.clone(),
            key,
            per_sender,
            e2e_histograms.pop().expect("one histogram per receiver"),
            Timing { epoch, warmup },
            received.clone(),
            pb.clone(),
        ));
        // In rate mode each sender sends every `interval`, staggered across senders.
        let interval =
            (args.rate > 0).then(|| Duration::from_secs_f64(senders as f64 / args.rate as f64));
        let offset = interval.map(|iv| iv.mul_f64(i as f64 / senders as f64));
        let next = Arc::new(AtomicU64::new(0));
        let mut window = Vec::new();
        for _ in 0..args.window {
            window.push(tokio::spawn(send_loop(SendLoop {
                conn: conn.clone(),
                partner: partner.clone(),
                size: args.size,
                next: next.clone(),
                count: per_sender,
                epoch,
                interval,
                offset: offset.unwrap_or_default(),
                warmup,
                acks: ack_histograms[i].clone(),
                pacing: pacing_histograms[i].clone(),
                busy: busy.clone(),
            })));
        }
        tasks.push((receiver, window));
    }
    let mut ack = stats::histogram();
    let mut pacing = stats::histogram();
    let mut e2e = stats::histogram();
    let mut e2e_from_slot = stats::histogram();
    let mut timeline = stats::Timeline::default();
    let mut last_ack = epoch;
    let mut last_received = epoch;
    let mut got = 0u64;
    let (mut pushes_applied, mut syncs) = (0u64, 0u64);
    for (i, (receiver, window)) in tasks.into_iter().enumerate() {
        for w in window {
            let last = w.await.context("a sender panicked")??;
            if let Some(t) = last {
                last_ack = last_ack.max(t);
            }
        }
        ack.add(&*ack_histograms[i].lock().expect("histogram lock"))?;
        pacing.add(&*pacing_histograms[i].lock().expect("histogram lock"))?;
        let r: UserResult = receiver.await.context("a receiver panicked")??;
        e2e.add(&r.e2e)?;
        e2e_from_slot.add(&r.e2e_from_slot)?;
        timeline.add(&r.timeline);
        got += r.received;
        pushes_applied += r.pushes_applied;
        syncs += r.syncs;
        if let Some(t) = r.last_received {
            last_received = last_received.max(t);
        }
    }
    pb.finish();
    let ack_secs = last_ack.duration_since(epoch).as_secs_f64();
    let recv_secs = last_received.duration_since(epoch).as_secs_f64();
    let wall = epoch.elapsed().as_secs_f64();
    let server_cores = cores(server_cpu_before, target.cpu_seconds(), wall);
    let own_cores = cores(own_cpu_before, own_cpu_seconds(), wall);
    let metrics_after = target.metrics().await;
    let commit = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => Some(CommitDelta::between(b, a)),
        _ => None,
    };
    // The server's own view of a send (request read → answer queued), as
    // bucket upper bounds: what is beyond it was spent on sockets and in
    // scheduling, on either side.
    let server_send = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => Some(Quantiles::of(
            b,
            a,
            "pigeon_request_duration_seconds",
            "type=\"send\",",
        )),
        _ => None,
    };
    // The committer's part of a send, from the server's histograms: how
    // long the oldest job of a group commit waited for it, the group commit
    // whole (jobs, apply, fsync, answers), and its apply and fsync. What
    // the server-side send takes beyond them is the runtime's.
    let committer_parts = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => CommitterParts {
            write_wait: Quantiles::between(b, a, "pigeon_store_write_wait_seconds"),
            batch: Quantiles::between(b, a, "pigeon_store_batch_seconds"),
            apply_and_fsync: Quantiles::between(b, a, "pigeon_store_commit_seconds"),
        },
        _ => CommitterParts::default(),
    };
    // The disk's part: the group commits' fsyncs alone (bucket upper
    // bounds), and how many took `SLOW_SYNC` (100 ms) or more; absent on
    // a store without them (PostgreSQL).
    let fsync_alone = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => Quantiles::between(b, a, "pigeon_store_sync_seconds").map(|q| {
            let slow =
                a.get("pigeon_store_slow_syncs_total") - b.get("pigeon_store_slow_syncs_total");
            (q, slow)
        }),
        _ => None,
    };
    // Where the store's single committer thread spent the run: on a CPU,
    // waiting for one, or blocked (fsync, or no work queued).
    let committer = match (&threads_before, target.thread_times()) {
        (Some(b), Some(a)) => {
            let name = "pigeon-committe";
            match (b.get(name), a.get(name)) {
                (Some(b), Some(a)) => {
                    let run = (a.0 - b.0) as f64 / 1e9 / wall;
                    let wait = (a.1 - b.1) as f64 / 1e9 / wall;
                    Some((run, wait, (1.0 - run - wait).max(0.0)))
                }
                _ => None,
            }
        }
        _ => None,
    };
    let storage_per_message = match (written_before, target.storage_write_bytes()) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b) as f64 / total as f64).round()),
        _ => None,
    };
    for c in &conns {
        c.close().await;
    }

    let acked_rate = total as f64 / ack_secs;
    let received_rate = got as f64 / recv_secs;
    let ratio = baseline.map(|b| acked_rate / b.frames_per_sec);
    let mut mode = if args.rate > 0 {
        format!("{} msg/s offered", thousands(args.rate as f64))
    } else {
        "as fast as acknowledged".into()
    };
    if let Some(peer) = &args.peer_server {
        mode.push_str(&format!(", pairs split between {url} and {peer}"));
    }
    if args.warmup_ms > 0 {
        mode.push_str(&format!(
            ", latencies of the first {} ms left out",
            args.warmup_ms
        ));
    }
    let mut t = Text::default();
    t.line(format!(
        "direct: {} pairs ({senders} senders), {}-byte texts, {} messages, window {}, {mode}, {}",
        args.pairs,
        args.size,
        thousands(total as f64),
        args.window,
        args.transport
    ));
    t.kv(
        "acknowledged",
        format!(
            "{} msg/s ({} in {:.2} s)",
            thousands(acked_rate),
            thousands(total as f64),
            ack_secs
        ),
    );
    t.kv(
        "received by recipients",
        format!(
            "{} msg/s ({} in {:.2} s)",
            thousands(received_rate),
            thousands(got as f64),
            recv_secs
        ),
    );
    let busy = busy.load(Ordering::Relaxed);
    if busy > 0 {
        t.kv(
            "BUSY answers (retried)",
            format!("{} (overload control)", thousands(busy as f64)),
        );
    }
    t.kv("end-to-end (send → push)", stats::line(&e2e));
    if args.rate > 0 {
        t.kv("end-to-end from the slot", stats::line(&e2e_from_slot));
        t.kv("pacing (timer after slot)", stats::line(&pacing));
    }
    let late = timeline.late(LATE_THRESHOLD);
    t.kv(
        "10-ms windows of send time",
        format!(
            "{} of {} had a message over {} ms end to end ({} messages sent in them); longest stretch {} ms from {:.2} s",
            thousands(late.late_slots as f64),
            thousands(late.slots as f64),
            LATE_THRESHOLD.as_millis(),
            thousands(late.messages_in_late_slots as f64),
            late.longest_run as u128 * stats::TIMELINE_SLOT.as_millis(),
            (late.longest_run_start as u128 * stats::TIMELINE_SLOT.as_millis()) as f64 / 1000.0,
        ),
    );
    if let Some(path) = &args.timeline {
        std::fs::write(path, timeline.csv())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    t.kv("acknowledgement", stats::line(&ack));
    if let Some(q) = server_send {
        t.kv("server-side send (buckets)", q.line());
    }
    if let Some(c) = commit {
        t.kv(
            "fsync batch",
            format!(
                "{:.1} jobs per commit ({} commits, {}/s; {:.2} ms of each in apply + fsync)",
                c.jobs_per_commit,
                thousands(c.commits),
                thousands(c.commits / ack_secs),
                c.apply_and_fsync_ms
            ),
        );
    }
    for (key, q) in [
        ("write wait (buckets)", &committer_parts.write_wait),
        ("group commit (buckets)", &committer_parts.batch),
        ("apply + fsync (buckets)", &committer_parts.apply_and_fsync),
    ] {
        if let Some(q) = q {
            t.kv(key, q.line());
        }
    }
    if let Some((q, slow)) = fsync_alone {
        t.kv(
            "fsync alone (buckets)",
            format!("{}; {} of 100 ms or more", q.line(), thousands(slow)),
        );
    }
    if let Some((run, wait, blocked)) = committer {
        t.kv(
            "store committer thread",
            format!(
                "on a CPU {:.0} %, waiting for a CPU {:.0} %, blocked {:.0} % ({:.0} µs CPU per message)",
                100.0 * run,
                100.0 * wait,
                100.0 * blocked,
                run * wall * 1e6 / total as f64
            ),
        );
    }
    if let Some(bytes) = storage_per_message {
        t.kv(
            "storage writes",
            format!("{} bytes per message", thousands(bytes)),
        );
    }
    t.kv(
        "recipients' pushes",
        format!(
            "{} applied as they came, {} sync round trips after a notice",
            thousands(pushes_applied as f64),
            thousands(syncs as f64)
        ),
    );
    if let Some(b) = baseline {
        t.kv(
            "raw TCP echo baseline",
            format!(
                "{} frames/s ({}-byte frames, {} connections, {} in flight each)",
                thousands(b.frames_per_sec),
                b.frame_bytes,
                b.connections,
                b.window
            ),
        );
    }
    if let Some(r) = ratio {
        t.kv("Pigeon / baseline", format!("{:.1} %", 100.0 * r));
    }
    let server_us_per_message = server_cores.map(|c| c * wall * 1e6 / total as f64);
    if let (Some(s), Some(o)) = (server_cores, own_cores) {
        t.kv(
            "CPU (of 2 cores)",
            format!(
                "server {s:.2} cores ({:.0} µs per message), pigeon-bench {o:.2} cores",
                server_us_per_message.unwrap_or(0.0)
            ),
        );
    }

    Ok(Report {
        scenario: "direct",
        title: format!(
            "direct: {} pairs, {}-byte texts, {mode}",
            args.pairs, args.size
        ),
        params: json!({
            "pairs": args.pairs,
            "senders": senders,
            "size": args.size,
            "messages": total,
            "rate": args.rate,
            "window": args.window,
            "transport": args.transport,
            "warmup_ms": args.warmup_ms,
        }),
        results: json!({
            "acked_per_sec": acked_rate.round(),
            "received_per_sec": received_rate.round(),
            "busy_retries": busy,
            "acked_seconds": stats::round3(ack_secs),
            "end_to_end": stats::summary(&e2e),
            "end_to_end_from_slot": stats::summary(&e2e_from_slot),
            "pacing_lateness": stats::summary(&pacing),
            "late_windows": json!({
                "epoch_unix_ms": epoch_unix_ms,
                "window_ms": stats::TIMELINE_SLOT.as_millis(),
                "threshold_ms": LATE_THRESHOLD.as_millis(),
                "windows": late.slots,
                "late": late.late_slots,
                "messages_in_late": late.messages_in_late_slots,
                "longest_run_windows": late.longest_run,
                "longest_run_start_ms": late.longest_run_start as u128 * stats::TIMELINE_SLOT.as_millis(),
            }),
            "ack": stats::summary(&ack),
            "fsync": commit,
            "server_send_ms_bucket_upper_bounds": server_send.map(Quantiles::json),
            "committer_ms_bucket_upper_bounds": json!({
                "write_wait": committer_parts.write_wait.map(Quantiles::json),
                "batch": committer_parts.batch.map(Quantiles::json),
                "apply_and_fsync": committer_parts.apply_and_fsync.map(Quantiles::json),
            }),
            "fsync_alone_ms_bucket_upper_bounds": fsync_alone.map(|(q, _)| q.json()),
            "slow_fsyncs": fsync_alone.map(|(.., slow)| slow),
            "storage_write_bytes_per_message": storage_per_message,
            "pushes_applied": pushes_applied,
            "syncs_after_notice": syncs,
            "baseline": baseline,
            "ratio_to_baseline": ratio.map(stats::round3),
            "server_cores": server_cores,
            "committer_share": committer.map(|(r, w, b)| json!({
                "on_cpu": stats::round3(r),
                "waiting_for_cpu": stats::round3(w),
                "blocked": stats::round3(b),
            })),
            "server_cpu_us_per_message": server_us_per_message.map(f64::round),
            "bench_cores": own_cores,
        }),
        text: t.done(),
        curves: vec![
            ("end-to-end (send → push)".into(), e2e),
            ("acknowledgement".into(), ack),
        ],
    })
}

/// p50, p99 and p99.9 of a server histogram between two scrapes, in
/// milliseconds, as bucket upper bounds.
#[derive(Clone, Copy)]
struct Quantiles([Option<f64>; 3]);

impl Quantiles {
    /// Of the series of `name` with `labels` (the text before `le`, e.g.
    /// `type="send",`); each `None` when it counted nothing in between.
    fn of(before: &Metrics, after: &Metrics, name: &str, labels: &str) -> Quantiles {
        let q = |q| {
            after
                .bucket_quantile(before, name, labels, q)
                .map(|s| s * 1000.0)
        };
        Quantiles([q(0.5), q(0.99), q(0.999)])
    }

    /// Of an unlabelled histogram; `None` when it counted nothing in
    /// between (or the store does not have it).
    fn between(before: &Metrics, after: &Metrics, name: &str) -> Option<Quantiles> {
        let q = Quantiles::of(before, after, name, "");
        q.0[0].is_some().then_some(q)
    }

    fn line(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("≤ {ms} ms"));
        let [p50, p99, p999] = self.0;
        format!("p50 {}, p99 {}, p99.9 {}", f(p50), f(p99), f(p999))
    }

    fn json(self) -> serde_json::Value {
        let [p50, p99, p999] = self.0;
        json!({ "p50": p50, "p99": p99, "p999": p999 })
    }
}

/// The committer's part of a send ([`Quantiles`] of its histograms).
#[derive(Default)]
struct CommitterParts {
    write_wait: Option<Quantiles>,
    batch: Option<Quantiles>,
    apply_and_fsync: Option<Quantiles>,
}

/// Bytes of one length-prefixed send request as this scenario sends it.
fn send_frame_bytes(size: usize) -> usize {
    let frame = Frame::new(
        1_000_000,
        Body::SendRequest(v1::SendRequest {
            client_msg_id: new_client_msg_id(),
            target: Some(to_user("dxxxxxxxxxx-99")),
            content: Some(text(&padded("", size))),
        }),
    );
    pigeon_proto::encode_frame_prefixed(&frame).len()
}

struct SendLoop {
    conn: Arc<Connection>,
    partner: String,
    size: usize,
    next: Arc<AtomicU64>,
    count: u64,
    epoch: Instant,
    interval: Option<Duration>,
    offset: Duration,
    /// Sends this long after `epoch` or earlier are not timed.
    warmup: Duration,
    /// Acknowledgement latencies, shared by the sender's loops.
    acks: Arc<Mutex<Histogram<u64>>>,
    /// How late the timer woke the sender's loops for their slots.
    pacing: Arc<Mutex<Histogram<u64>>>,
    /// `BUSY` answers, over all senders.
    busy: Arc<AtomicU64>,
}

/// One of a sender's W loops: takes the next index, waits for its slot in
/// rate mode, sends, records the acknowledgement latency.
async fn send_loop(s: SendLoop) -> anyhow::Result<Option<Instant>> {
    let mut last = None;
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.count {
            return Ok(last);
        }
        let (slot, sent) = match s.interval {
            Some(iv) => {
                let slot = s.epoch + s.offset + iv.mul_f64(i as f64);
                if Instant::now() < slot {
                    // Waiting for the slot: the send goes when the timer
                    // wakes this loop, and counts from then.
                    tokio::time::sleep_until(slot.into()).await;
                    let sent = Instant::now();
                    if slot.duration_since(s.epoch) >= s.warmup {
                        stats::record(&mut s.pacing.lock().expect("histogram lock"), sent - slot);
                    }
                    (slot, sent)
                } else {
                    // Behind the schedule: this loop's previous send was
                    // still unanswered at the slot; count from the slot.
                    (slot, slot)
                }
            }
            None => {
                let now = Instant::now();
                (now, now)
            }
        };
        let stamp = format!(
            "{:0width$}{:0width$}",
            sent.duration_since(s.epoch).as_nanos(),
            slot.duration_since(s.epoch).as_nanos(),
            width = STAMP_DIGITS
        );
        let (_, busy) = users::send(
            &s.conn,
            &new_client_msg_id(),
            to_user(&s.partner),
            text(&padded(&stamp, s.size)),
        )
        .await?;
        s.busy.fetch_add(u64::from(busy), Ordering::Relaxed);
        let now = Instant::now();
        if slot.duration_since(s.epoch) >= s.warmup {
            stats::record(&mut s.acks.lock().expect("histogram lock"), now - sent);
        }
        last = Some(now);
    }
}

/// A user's receiving side: pushes (or syncs when told to) until the
/// partner's `expected` messages are in; records send → receipt latency.
async fn receive(
    conn: Arc<Connection>,
    mut key: Vec<u8>,
    expected: u64,
    (e2e, e2e_from_slot): (Histogram<u64>, Histogram<u64>),
    timing: Timing,
    received: Arc<AtomicU64>,
    pb: indicatif::ProgressBar,
) -> anyhow::Result<UserResult> {
    let Timing { epoch, warmup } = timing;
    let me = conn.welcome().user_id;
    let mut r = UserResult {
        e2e,
        e2e_from_slot,
        timeline: stats::Timeline::default(),
        last_received: None,
        received: 0,
        pushes_applied: 0,
        syncs: 0,
    };
    let take = |events: &[v1::Event], r: &mut UserResult| {
        let now = Instant::now();
        let mut n = 0;
        for m in events.iter().filter_map(users::message) {
            if m.sender_id == me {
                continue;
            }
            let t = m.content.as_ref().map_or("", |c| c.text.as_str());
            let time = |at: usize| {
                t.get(at..at + STAMP_DIGITS)
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_nanos)
            };
            if let (Some(sent), Some(slot)) = (time(0), time(STAMP_DIGITS))
                && slot >= warmup
            {
                let latency = now.saturating_duration_since(epoch + sent);
                stats::record(&mut r.e2e, latency);
                stats::record(
                    &mut r.e2e_from_slot,
                    now.saturating_duration_since(epoch + slot),
                );
                r.timeline.record(sent, latency);
            }
            n += 1;
        }
        if n > 0 {
            r.received += n;
            r.last_received = Some(now);
            received.fetch_add(n, Ordering::Relaxed);
            pb.inc(n);
        }
    };
    while r.received < expected {
        let push = tokio::time::timeout(RECEIVE_IDLE_TIMEOUT, conn.next_push())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no push for {RECEIVE_IDLE_TIMEOUT:?}; received {} of {expected}",
                    r.received
                )
            })?;
        match push {
            None => bail!("a receiver was disconnected"),
            Some(Body::EventsPush(p)) if p.prev_key == key => {
                take(&p.events, &mut r);
                key = p.key;
                r.pushes_applied += 1;
            }
            Some(Body::EventsPush(_) | Body::SyncNotice(_)) => {
                let (events, k) = users::sync_to_head(&conn, &key).await?;
                take(&events, &mut r);
                key = k;
                r.syncs += 1;
            }
            Some(_) => {}
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the baseline frame size tracks the text size.
    #[test]
    fn frame_bytes_grow_with_the_text() {
        let a = send_frame_bytes(100);
        let b = send_frame_bytes(200);
        // 100 more text bytes, plus a byte or two of longer varint lengths.
        assert!((100..=104).contains(&(b - a)), "{a} {b}");
        assert!(a > 100);
    }
}
