//! Pigeon's domain: the rules of accounts, sessions, conversations, sending
//! and syncing, independent of sockets and of any storage engine.
//!
//! Layout:
//! - [`service`]: [`Service`], the entry point the gateway calls for every
//!   request; it validates, applies the rules and talks to the traits below.
//! - [`admin_service`]: the server administrator's operations
//!   ([`Service::admin`]).
//! - [`store`]: the [`Store`] trait (implemented in `pigeon-store`) and the
//!   records it keeps.
//! - [`notify`]: the [`Notifier`] trait through which committed events reach
//!   online devices (implemented in `pigeon-gateway`).
//! - [`clock`]: the [`Clock`] trait, so time is passed in.
//! - [`sync_key`]: the opaque, authenticated sync keys.
//! - [`accounts`]: username and password rules, password hashing, tokens.
//! - [`conversation`]: conversation ids.
//! - [`groups`]: who may do what in a group.
//! - [`flags`]: feature flags for gray release, evaluated the same way
//!   everywhere.
//! - [`error`]: [`CoreError`] and its mapping to wire error codes.
//! - [`config`]: the limits and settings the rules need.

pub mod accounts;
pub mod admin_service;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod error;
pub mod flags;
pub mod group_service;
pub mod groups;
pub mod message_change;
pub mod notify;
pub mod service;
pub mod social_service;
pub mod store;
pub mod sync_key;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::CoreConfig;
pub use error::CoreError;
pub use notify::{Notifier, NullNotifier, PushBatch};
pub use service::{Service, Session, SyncOutcome};
pub use store::{Store, StoreError};
pub use sync_key::Position;

/// A user's numeric id. Ids start at 1 and are never reused.
pub type UserId = u64;
/// A device's id, unique among one user's devices, starting at 1.
pub type DeviceId = u64;
