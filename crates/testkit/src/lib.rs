//! Test support for Pigeon's integration tests: real servers the code under
//! test talks to, started in temporary directories on free loopback ports
//! and stopped (and removed) when dropped, also when a test panics. No mocks.
//!
//! Layout:
//! - [`pg`]: [`PgServer`], a throwaway PostgreSQL 15 cluster (initdb, a free
//!   port, `fsync` on) with a fresh database per caller.

pub mod pg;

pub use pg::PgServer;

/// A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it
/// soon, and retries on the rare collision).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}
