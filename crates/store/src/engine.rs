//! The key-value interface [`crate::LogStore`] runs on. Two operations
//! matter for correctness: [`Engine::apply`] makes a set of writes visible
//! atomically, and [`Engine::sync`] makes everything applied so far durable.

use pigeon_core::{StoreError, UserId};

/// The record families; each is an ordered key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// username -> user record
    Users,
    /// user id -> username
    UserIds,
    /// token hash -> session record
    Sessions,
    /// (sender, client message id) -> send outcome, for idempotent sends
    Dedup,
    /// (conversation, conv seq) -> message
    Timeline,
    /// (user, seq) -> event: the sync logs
    Log,
    /// (user, conversation) -> conversation summary
    ConvState,
    /// counters, high-water marks, trim points, secrets, user preferences
    Meta,
    /// group id -> group record
    Groups,
    /// (group, user) -> membership record (kept after leaving)
    GroupMembers,
    /// (user, group) -> nothing: the groups a user is or was in
    UserGroups,
    /// (group, stream seq) -> event: the shared logs of large groups
    Stream,
    /// (user, conversation, conv seq) -> nothing: deleted for that user
    Hidden,
    /// (blocker, blocked) -> nothing
    Blocks,
    /// (conversation, user) -> delivered and read positions, for receipts
    Positions,
    /// (conversation, conv seq) -> delivered and read counts (large groups)
    Counts,
    /// delivery id -> queued webhook delivery
    Outbox,
    /// (next attempt time, delivery id) -> nothing: pending deliveries by due time
    Due,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 18] = [
        Table::Users,
        Table::UserIds,
        Table::Sessions,
        Table::Dedup,
        Table::Timeline,
        Table::Log,
        Table::ConvState,
        Table::Meta,
        Table::Groups,
        Table::GroupMembers,
        Table::UserGroups,
        Table::Stream,
        Table::Hidden,
        Table::Blocks,
        Table::Positions,
        Table::Counts,
        Table::Outbox,
        Table::Due,
    ];

    /// The table's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::UserIds => "user_ids",
            Table::Sessions => "sessions",
            Table::Dedup => "dedup",
            Table::Timeline => "timeline",
            Table::Log => "log",
            Table::ConvState => "conv_state",
            Table::Meta => "meta",
            Table::Groups => "groups",
            Table::GroupMembers => "group_members",
            Table::UserGroups => "user_groups",
            Table::Stream => "stream",
            Table::Hidden => "hidden",
            Table::Blocks => "blocks",
            Table::Positions => "positions",
            Table::Counts => "counts",
            Table::Outbox => "outbox",
            Table::Due => "due",
        }
    }

    /// The table's position in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Key-value pairs, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One write.
#[derive(Debug, Clone)]
pub enum Op {
    /// Set a key.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Table, Vec<u8>),
}

/// An ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `start <= key < end`, ascending (or descending if
    /// `reverse`), at most `limit`.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError>;
    /// Applies the writes atomically; they are visible but not yet durable.
    /// Takes them out of `ops`, which keeps its capacity for the caller.
    fn apply(&self, ops: &mut Vec<Op>) -> Result<(), StoreError>;
    /// Makes every applied write durable (fsync).
    fn sync(&self) -> Result<(), StoreError>;
    /// `user`'s log entries up to seq `through` will never be read again,
    /// and the trim point that says so is durable: the engine may drop
    /// them. The embedded engine's compactions do, without a tombstone
    /// ([`crate::trims`]); the memory engine deletes them at once.
    fn log_trimmed(&self, user: UserId, through: u64);
}
