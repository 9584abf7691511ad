//! Operating the server: health, readiness and Prometheus metrics.

mod common;

use common::*;
use pigeon_client::{text as content, to_user};

/// The value of a sample line `name{labels} value` whose name and labels
/// contain every given fragment.
fn sample(metrics: &str, fragments: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| fragments.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes `/metrics` before and after traffic: request counters by type
/// and outcome, the latency histograms, commit and connection figures move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let server = Server::start("");
    assert_eq!(http_get(&server.http, "/healthz").await.0, 200);
    assert_eq!(http_get(&server.http, "/readyz").await.0, 200);
    let url = server.tcp_url();
    let alice = connect(&url, &register_and_login(&url, "alice").await).await;
    register_and_login(&url, "bob").await;
    let (status, before) = http_get(&server.http, "/metrics").await;
    assert_eq!(status, 200);
    let sends_before = sample(
        &before,
        &["pigeon_requests_total{", "type=\"send\"", "outcome=\"ok\""],
    )
    .unwrap_or(0.0);

    // Up to date, so her own sends come back as event pushes.
    sync_all(&alice, &[]).await;
    for i in 0..25 {
        alice
            .send(&format!("m{i}"), to_user("bob"), content("hi"))
            .await
            .unwrap();
    }
    let _ = alice.send("bad", to_user("nobody"), content("hi")).await;
    sync_all(&alice, &[]).await;

    let (_, after) = http_get(&server.http, "/metrics").await;
    let sends = sample(
        &after,
        &["pigeon_requests_total{", "type=\"send\"", "outcome=\"ok\""],
    )
    .unwrap();
    assert_eq!(sends - sends_before, 25.0, "{after}");
    assert_eq!(
        sample(
            &after,
            &[
                "pigeon_requests_total{",
                "type=\"send\"",
                "outcome=\"USER_NOT_FOUND\""
            ]
        ),
        Some(1.0)
    );
    assert!(sample(&after, &["pigeon_requests_total{", "type=\"sync\""]).unwrap() >= 1.0);
    let latency_count = sample(
        &after,
        &["pigeon_request_duration_seconds_count", "type=\"send\""],
    )
    .unwrap();
    assert!(latency_count >= 26.0);
    assert!(
        sample(
            &after,
            &[
                "pigeon_request_duration_seconds_bucket",
                "type=\"send\"",
                "le=\"+Inf\""
            ]
        )
        .unwrap()
            >= 26.0
    );
    // The embedded committer counts its group commits; PostgreSQL has no
    // committer of that kind, and counts its write transactions instead
    // (each of the 25 sends awaited its answer, so each was one).
    let (commits, commit_seconds) = if on_postgres() {
        (
            "pigeon_store_pg_transactions_total",
            "pigeon_store_pg_transaction_seconds_count",
        )
    } else {
        (
            "pigeon_store_commits_total",
            "pigeon_store_commit_seconds_count",
        )
    };
    assert!(sample(&after, &[commits]).unwrap() >= 25.0, "{after}");
    assert!(
        sample(&after, &[commit_seconds]).unwrap() >= 25.0,
        "{after}"
    );
    if !on_postgres() {
        // The fsync alone, timed apart from the apply, for each commit.
        assert!(
            sample(&after, &["pigeon_store_sync_seconds_count"]).unwrap() >= 25.0,
            "{after}"
        );
        // The committer's own part of a write: the oldest job's wait and
        // the group commit whole, once per group commit.
        for name in [
            "pigeon_store_write_wait_seconds_count",
            "pigeon_store_batch_seconds_count",
        ] {
            assert!(sample(&after, &[name]).unwrap() >= 25.0, "{name}: {after}");
        }
    }
    assert!(sample(&after, &["pigeon_open_connections"]).unwrap() >= 1.0);
    assert!(sample(&after, &["pigeon_pushes_total{", "kind=\"events\""]).unwrap() >= 25.0);
    // Frames queued for sockets: counted up and down on whichever runtime
    // thread queued or wrote them, never below zero.
    let queued = sample(&after, &["pigeon_outbound_queue_frames"]).unwrap();
    assert!((0.0..=60.0).contains(&queued), "{after}");
}

/// `pigeon serve` runs connections on `runtime_threads` threads, and
/// reports how many it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_has_the_configured_threads() {
    for n in [1, 3] {
        let server = Server::start(&format!("runtime_threads = {n}\n"));
        let (status, metrics) = http_get(&server.http, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            sample(&metrics, &["pigeon_runtime_threads"]),
            Some(n as f64),
            "{metrics}"
        );
    }
}

/// `pigeon serve` turns transparent huge pages off for its process (the
/// allocator's freed-and-refaulted memory would otherwise be zeroed 2 MiB at
/// a time on the committer's thread; BENCHMARKS.md, "Huge pages").
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let server = Server::start("");
    let pid = server.child.as_ref().expect("server running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}
