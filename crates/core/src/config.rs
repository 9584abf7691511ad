//! Settings the domain rules need. The server fills them from its config
//! file; every field has a safe default.

use pigeon_proto::limits;

/// Limits and switches for [`crate::Service`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Whether anyone may register an account.
    pub open_registration: bool,
    /// How long a session token is valid after login.
    pub session_ttl_ms: i64,
    /// Maximum bytes of a message's content (text + payload + payload type).
    pub message_bytes_max: usize,
    /// Maximum events in one sync answer or push.
    pub sync_batch_events_max: u32,
    /// Maximum encoded bytes of events in one sync answer.
    pub sync_batch_bytes_max: usize,
    /// Maximum messages in one history page.
    pub history_page_max: u32,
    /// Maximum conversations in one list answer.
    pub conversations_list_max: u32,
    /// How many password hashes may be computed at once (they are CPU-heavy).
    pub password_hash_concurrency_max: usize,
}

/// Hard ceiling on events per sync batch, whatever the config says.
pub const SYNC_BATCH_EVENTS_CEILING: u32 = 4096;
/// Hard ceiling on a history page.
pub const HISTORY_PAGE_CEILING: u32 = 1000;

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            open_registration: true,
            session_ttl_ms: 90 * 24 * 3600 * 1000,
            message_bytes_max: limits::MESSAGE_BYTES_MAX_DEFAULT,
            sync_batch_events_max: 256,
            sync_batch_bytes_max: limits::FRAME_BYTES_MAX_DEFAULT / 2,
            history_page_max: 100,
            conversations_list_max: 500,
            password_hash_concurrency_max: 2,
        }
    }
}
