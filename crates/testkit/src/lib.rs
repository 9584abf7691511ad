//! Real servers for tests, started on free loopback ports (in temporary
//! directories) and stopped when dropped, also when a test panics;
//! installed first when the machine lacks them, so a fresh checkout behaves
//! the same everywhere and nothing depends on a service someone started by
//! hand. No mocks.
//!
//! - [`pg`]: [`PgServer`], a throwaway PostgreSQL 15 cluster (initdb, a
//!   free port, `fsync` on) with a fresh database per caller.
//! - [`nats`]: [`NatsServer`], a `nats-server` that can be killed and
//!   restarted on the same port (bus outages).

pub mod nats;
pub mod pg;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use nats::NatsServer;
pub use pg::PgServer;

/// A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it
/// soon, and retries on the rare collision).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// Where tools installed for tests live: `<workspace>/target/tools`.
pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
