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
    /// Argon2id cost of new password hashes.
    pub password_hash_cost: crate::accounts::HashCost,
    /// Groups with more members than this are read-diffused.
    pub group_large_threshold: u32,
    /// The most members a group may have.
    pub group_members_max: u32,
    /// The most usernames one create or add request may name.
    pub group_members_per_request_max: usize,
    /// The most members one GroupChange event lists.
    pub group_change_members_max: usize,
    /// The most members one ListMembers page holds.
    pub group_members_page_max: u32,
    /// How long after sending the sender may recall a message.
    pub recall_window_ms: i64,
    /// How long after sending the sender may edit a message.
    pub edit_window_ms: i64,
    /// Shortest interval between two typing pushes of one user in one
    /// conversation.
    pub typing_throttle_ms: i64,
    /// How long a device's delivery receipts are gathered before they are
    /// recorded (0: at once). Within it, every message a device receives
    /// in a conversation becomes one receipt instead of one each.
    pub delivery_receipt_delay_ms: u64,
    /// The most users one presence change is pushed to.
    pub presence_fanout_max: usize,
    /// The most usernames one GetPresence request may name.
    pub presence_query_max: usize,
    /// Webhook endpoints and what each wants to hear of.
    pub hooks: Vec<crate::store::HookTarget>,
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
            password_hash_cost: crate::accounts::HashCost::default(),
            group_large_threshold: 500,
            group_members_max: 100_000,
            group_members_per_request_max: 1000,
            group_change_members_max: 1000,
            group_members_page_max: 1000,
            recall_window_ms: 24 * 3600 * 1000,
            edit_window_ms: 15 * 60 * 1000,
            typing_throttle_ms: 2000,
            delivery_receipt_delay_ms: 20,
            presence_fanout_max: 5000,
            presence_query_max: 500,
            hooks: Vec::new(),
        }
    }
}
