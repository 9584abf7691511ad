//! Connection limits. Every bound has a safe default; the server maps its
//! config file onto this.

use std::time::Duration;

use pigeon_proto::limits::FRAME_BYTES_MAX_DEFAULT;

/// Limits of the access layer.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest frame accepted or sent.
    pub frame_bytes_max: usize,
    /// Time a new connection has to send its Hello.
    pub handshake_timeout: Duration,
    /// Advised client ping interval.
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Frames queued for one connection's socket; when full the reader is
    /// too slow and is disconnected.
    pub outbound_queue_frames_max: usize,
    /// Requests one connection may have in flight.
    pub inflight_requests_max: usize,
    /// Push batches queued for one connection before it is sent a sync
    /// notice instead.
    pub push_queue_batches_max: usize,
    /// Open connections per process.
    pub connections_max: usize,
    /// Time allowed for writing one frame to a socket.
    pub write_timeout: Duration,
    /// Where clients of a draining server should reconnect (protocol URLs).
    pub redirect_to: Vec<String>,
    /// Clients of a draining server are asked to wait a random time up to
    /// this before reconnecting, so they do not all arrive at once.
    pub drain_reconnect_spread: Duration,
    /// Overload control and rate limits.
    pub admission: crate::admission::AdmissionConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            outbound_queue_frames_max: 1024,
            inflight_requests_max: 64,
            push_queue_batches_max: 256,
            connections_max: 15_000,
            write_timeout: Duration::from_secs(10),
            redirect_to: Vec::new(),
            drain_reconnect_spread: Duration::from_secs(1),
            admission: Default::default(),
        }
    }
}
