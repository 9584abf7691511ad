//! Storage backends behind `pigeon_core::Store`.
//!
//! Layout:
//! - [`engine`]: the small key-value [`Engine`] interface (get, ordered scan,
//!   atomic apply, sync) and its [`Table`]s.
//! - [`memory`]: [`MemoryEngine`], a `BTreeMap` engine for unit tests.
//! - [`embedded`]: [`FjallEngine`], the crash-safe embedded engine (fjall, an
//!   LSM tree) in one data directory: the default backend.
//! - [`log_store`]: [`LogStore`], which implements `Store` over any engine:
//!   the single committer thread, group commit, in-memory seq allocation
//!   with persisted high-water marks, and the committed watermarks that keep
//!   readers from seeing anything that is not yet durable.
//! - [`keys`]: how records are laid out in keys.
//! - [`background`]: how the embedded engine's flush and compaction threads
//!   are scheduled (`SCHED_IDLE` where it can be undone, else niceness).
//! - [`freeing`]: flushed memtables freed a piece at a time, so freeing one
//!   never holds a CPU for long.
//! - [`writeback`]: the thread that writes table files back to the disk a
//!   piece at a time while fjall writes them, so a journal write never
//!   queues behind a whole table file.
//!
//! Only this crate knows engine keys and record encodings.

pub mod background;
pub mod embedded;
pub mod engine;
pub mod freeing;
pub mod keys;
pub mod log_store;
pub mod memory;
pub mod retiring;
pub mod trims;
pub mod writeback;

pub use embedded::FjallEngine;
pub use engine::{Engine, Op, Table};
pub use log_store::{LogStore, StoreConfig, StoreStats};
pub use memory::MemoryEngine;

/// An embedded store in `dir`, opened (or created) and recovered.
pub fn open_embedded(
    dir: &std::path::Path,
    config: StoreConfig,
) -> Result<LogStore, pigeon_core::StoreError> {
    let engine = FjallEngine::open_with(dir, config.journal_bytes_max)?;
    Ok(LogStore::start(std::sync::Arc::new(engine), config))
}

/// An in-memory store (nothing survives the process).
pub fn open_memory(config: StoreConfig) -> LogStore {
    LogStore::start(std::sync::Arc::new(MemoryEngine::default()), config)
}
