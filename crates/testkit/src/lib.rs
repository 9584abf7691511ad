//! Real servers for tests, started on free loopback ports and stopped when
//! dropped, installed first when the machine lacks them (so a fresh
//! checkout behaves the same everywhere; nothing depends on a service
//! someone started by hand).

pub mod nats;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use nats::NatsServer;

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
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
