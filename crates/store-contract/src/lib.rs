//! The storage contract: one suite of behaviours every backend of
//! `pigeon_core::Store` must show, written once as `pub async fn`s that take
//! a [`Factory`], and run against the in-memory, embedded (fjall) and
//! PostgreSQL backends from their own test files with [`contract_tests!`].
//!
//! Layout:
//! - [`basic`]: accounts, sessions, sends, logs, idempotency, ordering,
//!   summaries, trimming, bounds, secrets, the webhook outbox.
//! - [`admin`]: the account list and changes, revoking sessions, totals,
//!   the system actor.
//! - [`groups`]: small-group fan-out, large groups in the shared stream,
//!   membership windows, feature flags in the system stream.
//! - [`social`]: receipts, read marks, recall/edit/delete, blocks,
//!   preferences, contacts.

pub mod admin;
pub mod basic;
pub mod groups;
pub mod social;

pub use admin::*;
pub use basic::*;
pub use groups::*;
pub use social::*;

use std::any::Any;
use std::sync::Arc;

use pigeon_core::Store;

/// What a test asks of the store it gets.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Events each user's log keeps (0: all).
    pub log_retain_events: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            log_retain_events: 100_000,
        }
    }
}

/// A fresh, empty store under test, with whatever keeps it alive (a
/// temporary directory, a database server).
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send + Sync>,
}

impl Backend {
    /// A backend whose resources `keep` holds until the test ends.
    pub fn new(store: Arc<dyn Store>, keep: impl Any + Send + Sync) -> Backend {
        Backend {
            store,
            _keep: Box::new(keep),
        }
    }
}

/// Opens fresh stores of one backend.
#[async_trait::async_trait]
pub trait Factory: Sync {
    /// A new, empty store.
    async fn open(&self, settings: Settings) -> Backend;
}

/// Generates one `#[tokio::test]` per contract test for a factory
/// expression: `contract_tests!(MyFactory);` runs them all, and
/// `contract_tests!(MyFactory; name, ...)` the named ones.
#[macro_export]
macro_rules! contract_tests {
    ($factory:expr) => {
        $crate::contract_tests!($factory;
            users_are_unique_and_found_by_name_and_id,
            sessions_get_new_devices_and_can_be_revoked,
            messages_reach_both_logs_and_the_timeline,
            retries_with_the_same_client_id_store_nothing_twice,
            concurrent_sends_keep_every_log_strictly_ordered,
            conversations_track_last_message_and_unread,
            trimmed_logs_answer_resync,
            reads_are_bounded_by_count_and_bytes,
            secrets_are_stable,
            webhook_deliveries_are_queued_retried_and_failed,
            users_list_in_id_pages_and_change,
            disabled_users_get_no_sessions,
            revoking_all_sessions_takes_bounded_jobs,
            totals_count_users_and_groups,
            the_system_actor_has_the_owners_authority,
            small_groups_fan_out_within_membership_windows,
            large_groups_are_read_from_the_stream_within_windows,
            flags_reach_everyone_through_the_system_stream,
            receipts_and_read_marks_reach_senders,
            large_group_receipts_are_counted,
            messages_are_recalled_edited_and_deleted_for_me,
            blocks_prefs_and_contacts,
        );
    };
    ($factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name(&$factory).await
            }
        )*
    };
}
