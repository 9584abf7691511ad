//! Runs every scenario at toy sizes against the real `pigeon` binary, so
//! the tool keeps working as the server changes. The binary must sit next
//! to `pigeon-bench` (a workspace build puts it there); without it the test
//! fails and says to build the workspace (`cargo test -p pigeon-bench` alone
//! does not build the server).

use std::path::PathBuf;
use std::process::Command;

fn bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pigeon-bench"))
}

/// Runs `pigeon-bench --json ARGS` and returns the parsed report, or `None`
/// when there is no server binary to start.
fn run(args: &[&str]) -> Option<serde_json::Value> {
    let pigeon = bench().with_file_name("pigeon");
    assert!(
        pigeon.exists(),
        "no pigeon binary at {}: build the workspace first (cargo build --workspace)",
        pigeon.display()
    );
    let out = Command::new(bench())
        .arg("--json")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running pigeon-bench");
    assert!(
        out.status.success(),
        "pigeon-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("a JSON report"))
}

/// Checks `direct` delivers every message, measures latency and the fsync
/// batch, runs the echo baseline and writes the latency timeline.
#[test]
fn direct_at_toy_size() {
    let dir = tempfile::tempdir().unwrap();
    let timeline = dir.path().join("timeline.csv");
    let Some(r) = run(&[
        "direct",
        "--pairs",
        "2",
        "--messages",
        "400",
        "--window",
        "4",
        "--timeline",
        timeline.to_str().unwrap(),
    ]) else {
        return;
    };
    let res = &r["results"];
    assert_eq!(r["scenario"], "direct");
    assert_eq!(res["end_to_end"]["count"], 400);
    assert!(res["acked_per_sec"].as_f64().unwrap() > 0.0);
    assert!(res["fsync"]["commits"].as_f64().unwrap() > 0.0);
    // The embedded store times its fsyncs: the disk's part is reported.
    assert!(
        res["fsync_alone_ms_bucket_upper_bounds"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(res["slow_fsyncs"].as_f64().unwrap() >= 0.0);
    // And the committer's part: waits, whole group commits, apply + fsync.
    let parts = &res["committer_ms_bucket_upper_bounds"];
    for part in ["write_wait", "batch", "apply_and_fsync"] {
        assert!(
            parts[part]["p50"].as_f64().unwrap() > 0.0,
            "{part}: {parts}"
        );
    }
    assert!(res["baseline"]["frames_per_sec"].as_f64().unwrap() > 0.0);
    // Every message sent is on the timeline, in some 10 ms slot.
    let csv = std::fs::read_to_string(&timeline).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("slot_start_ms,messages,slowest_ms"));
    let sent: u64 = lines
        .map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(sent, 400);
    let late = &res["late_windows"];
    assert!(late["windows"].as_u64().unwrap() >= 1);
    assert!(late["late"].as_u64().unwrap() <= late["windows"].as_u64().unwrap());
}

/// Checks `direct --rate` measures from the moment each message went and,
/// beside it, from its slot in the schedule, which is never later; and how
/// late the timer woke the senders for their slots.
#[test]
fn direct_at_a_fixed_rate() {
    let Some(r) = run(&[
        "direct",
        "--pairs",
        "2",
        "--messages",
        "400",
        "--rate",
        "400",
        "--no-baseline",
    ]) else {
        return;
    };
    let res = &r["results"];
    let (sent, slot) = (&res["end_to_end"], &res["end_to_end_from_slot"]);
    assert_eq!(sent["count"], 400);
    assert_eq!(slot["count"], 400);
    for q in ["p50_ms", "p99_ms", "max_ms"] {
        let (a, b) = (sent[q].as_f64().unwrap(), slot[q].as_f64().unwrap());
        assert!(b >= a, "{q}: from the slot {b} ms, from the send {a} ms");
    }
    // At 100 msg/s per sender with 32 in flight nearly every send waits
    // for its slot: one goes late only when the server is 320 ms behind.
    let paced = res["pacing_lateness"]["count"].as_u64().unwrap();
    assert!(
        (200..=400).contains(&paced),
        "{paced} sends waited for their slot"
    );
}

/// Checks a run whose server dies part-way fails and says so, rather than
/// hanging or failing without a word about the server.
#[test]
fn a_failed_run_says_what_the_server_saw() {
    let pigeon = bench().with_file_name("pigeon");
    assert!(pigeon.exists(), "no pigeon binary at {}", pigeon.display());
    let dir = tempfile::tempdir().unwrap();
    // The server, killed 5 s after it starts: well into the run below,
    // which would take 50 s.
    let doomed = dir.path().join("pigeon-killed-at-5s");
    std::fs::write(
        &doomed,
        format!(
            "#!/bin/sh\nexec timeout -s KILL 5 '{}' \"$@\"\n",
            pigeon.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&doomed, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(bench())
        .args(["--pigeon", doomed.to_str().unwrap()])
        .args(["direct", "--pairs", "2", "--messages", "100000"])
        .args(["--rate", "2000", "--no-baseline"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running pigeon-bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the server has exited"), "{err}");
}

/// Checks `connections` reads the server's memory over both transports.
#[test]
fn connections_at_toy_size() {
    let Some(r) = run(&["connections", "--count", "20"]) else {
        return;
    };
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    for t in res {
        assert_eq!(t["connections"], 20);
        assert!(t["rss_connected_kib"].as_u64().unwrap() > 0);
    }
}

/// Checks `catchup` syncs every message and counts bytes beyond the payload.
#[test]
fn catchup_at_toy_size() {
    let Some(r) = run(&["catchup", "--messages", "300"]) else {
        return;
    };
    let res = &r["results"];
    assert!(res["round_trips"].as_u64().unwrap() >= 2);
    assert!(res["overhead_bytes_per_message"].as_f64().unwrap() > 0.0);
    assert!(res["event_field_bytes"]["total"].as_u64().unwrap() > 100);
}

/// Checks `group` above the read-diffusion threshold reaches every online member.
#[test]
fn group_at_toy_size() {
    let Some(r) = run(&[
        "group",
        "--members",
        "600",
        "--online",
        "0.01",
        "--messages",
        "3",
    ]) else {
        return;
    };
    assert_eq!(r["params"]["online"], 6);
    assert_eq!(r["results"]["all_online_have_it"]["count"], 3);
    assert_eq!(r["results"]["single_delivery"]["count"], 18);
}

/// Checks `churn` brings every client back after a server restart.
#[test]
fn churn_at_toy_size() {
    let Some(r) = run(&["churn", "--clients", "20", "--restart"]) else {
        return;
    };
    assert_eq!(r["results"]["synced"]["count"], 20);
    assert!(r["results"]["handshakes_per_sec"].as_f64().unwrap() > 0.0);
}
