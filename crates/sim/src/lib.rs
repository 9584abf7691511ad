//! Deterministic simulation of Pigeon: the real server (core `Service`,
//! `LogStore` over the in-memory engine, the gateway) and SDK connections
//! on `turmoil`'s simulated network and clock, with message loss, latency
//! jitter, held and partitioned links, and server and client crashes, all
//! drawn from one `u64` seed; at the end the crash test's invariants are
//! checked on what the clients observed. A seed replays exactly (given the
//! same build: see `.cargo/config.toml` for the `tokio_unstable` cfg this
//! needs).
//!
//! Layout:
//! - [`plan`]: what a seed means: the users, the workload and the fault
//!   schedule, drawn before the simulation starts.
//! - `setup.rs`: accounts, sessions and the group, made on the engine
//!   before the simulation (outside it, since password hashing runs on
//!   real threads).
//! - `server.rs`: the server host: store, service and gateway over
//!   simulated TCP; a crash loses everything not committed to the engine.
//! - `clients.rs`: writer hosts (unique messages, retried with the same
//!   client message id until acknowledged), reader hosts (follow their log
//!   live with pushes and syncs from a persisted key, starting again from
//!   the empty key when told to resync) and the auditor that drains every
//!   user's log and reads every conversation's history at the end.
//! - [`observed`]: what the clients saw, the only input of the checker.
//! - [`check`]: the invariants, with unit tests that inject faults.
//! - [`run`](mod@run): builds the simulation for a seed, applies the fault
//!   schedule, heals, waits for writers and readers, and checks.
//!
//! Boundary: the simulation drives the server only through its public
//! constructors and the protocol; the checker reads only [`Observed`].

pub mod check;
mod clients;
mod clock;
pub mod observed;
pub mod plan;
pub mod run;
mod server;
mod setup;

pub use observed::Observed;
pub use plan::Plan;
pub use run::{Outcome, run};

/// Whether this build can replay a seed exactly: tokio's `select!` draws
/// from a per-runtime RNG that only a `tokio_unstable` build lets turmoil
/// seed.
pub fn deterministic() -> bool {
    cfg!(tokio_unstable)
}
