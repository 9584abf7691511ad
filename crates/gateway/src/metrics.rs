//! The access layer's metrics, recorded where requests are dispatched and
//! frames queued, so no handler counts anything by hand. Names follow
//! Prometheus conventions; the server installs the exporter.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use pigeon_proto::{Body, Frame};

/// Requests answered, by `type` and `outcome` (`ok` or the error code).
pub const REQUESTS_TOTAL: &str = "pigeon_requests_total";
/// Time from reading a request to queueing its answer, by `type`.
pub const REQUEST_DURATION_SECONDS: &str = "pigeon_request_duration_seconds";
/// Open connections.
pub const CONNECTIONS: &str = "pigeon_connections";
/// Frames queued for sockets across all connections.
pub const OUTBOUND_QUEUE_FRAMES: &str = "pigeon_outbound_queue_frames";
/// Connections closed because they did not read fast enough.
pub const SLOW_CONSUMERS_TOTAL: &str = "pigeon_slow_consumers_total";
/// The overload admission level (0: admit all; 1: refuse low priority;
/// 2: refuse all but login, sync, ping and logout).
pub const ADMISSION_LEVEL: &str = "pigeon_admission_level";
/// Pushes sent, by `kind` (events, notice, presence, typing).
pub const PUSHES_TOTAL: &str = "pigeon_pushes_total";
/// TLS handshakes that failed, by `listener` (`tcp`, `http`) and `reason`
/// (`error`, `timeout`).
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "pigeon_tls_handshake_failures_total";

/// The handles of the series recorded for every request and push, made
/// once per thread: `counter!` and friends with label values build, hash
/// and copy their key on every call (a few per cent of the runtime's time
/// at tens of thousands of requests a second). Every label value is
/// `'static` and from a short list (request types, error codes, push
/// kinds), so these maps stay small. A handle belongs to the recorder
/// installed when it was made: the server installs its recorder before it
/// serves anything.
#[derive(Default)]
struct Series {
    requests: HashMap<(&'static str, &'static str), Counter>,
    durations: HashMap<&'static str, Histogram>,
    pushes: HashMap<&'static str, Counter>,
    queued: Option<Gauge>,
}

thread_local! {
    static SERIES: RefCell<Series> = RefCell::default();
}

pub(crate) fn answered(kind: &'static str, answer: &Frame, took: Duration) {
    let code = |c: i32| {
        pigeon_proto::ErrorCode::try_from(c).map_or("UNKNOWN", |c| {
            c.as_str_name().trim_start_matches("ERROR_CODE_")
        })
    };
    let outcome = match &answer.body {
        Some(Body::Error(e)) => code(e.code),
        Some(Body::Goodbye(g)) => code(g.code),
        _ => "ok",
    };
    SERIES.with_borrow_mut(|s| {
        s.requests
            .entry((kind, outcome))
            .or_insert_with(
                || metrics::counter!(REQUESTS_TOTAL, "type" => kind, "outcome" => outcome),
            )
            .increment(1);
        s.durations
            .entry(kind)
            .or_insert_with(|| metrics::histogram!(REQUEST_DURATION_SECONDS, "type" => kind))
            .record(took.as_secs_f64());
    });
}

pub(crate) fn queued(delta: i64) {
    SERIES.with_borrow_mut(|s| {
        s.queued
            .get_or_insert_with(|| metrics::gauge!(OUTBOUND_QUEUE_FRAMES))
            .increment(delta as f64);
    });
}

pub(crate) fn slow_consumer() {
    metrics::counter!(SLOW_CONSUMERS_TOTAL).increment(1);
}

pub(crate) fn connection(delta: i64) {
    metrics::gauge!(CONNECTIONS).increment(delta as f64);
}

pub(crate) fn pushed(kind: &'static str) {
    SERIES.with_borrow_mut(|s| {
        s.pushes
            .entry(kind)
            .or_insert_with(|| metrics::counter!(PUSHES_TOTAL, "kind" => kind))
            .increment(1);
    });
}

/// Counts a TLS handshake that failed on `listener` (`tcp` or `http`).
pub fn tls_handshake_failed(listener: &'static str, timed_out: bool) {
    let reason = if timed_out { "timeout" } else { "error" };
    metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "listener" => listener, "reason" => reason)
        .increment(1);
}
