//! The storage contract (`pigeon-store-contract`) run against the in-memory
//! engine and the embedded (fjall) engine, plus what only the embedded store
//! promises: recovery after a restart from its data directory, and group
//! commit (many concurrent writes share one fsync).

use std::sync::Arc;

use pigeon_core::Store;
use pigeon_core::store::LogFrom;
use pigeon_store::{LogStore, StoreConfig, open_embedded, open_memory};
use pigeon_store_contract::{Backend, Factory, Settings, msg};

fn config(s: Settings) -> StoreConfig {
    StoreConfig {
        seq_step: 1000,
        log_retain_events: s.log_retain_events,
        ..StoreConfig::default()
    }
}

/// The in-memory engine.
struct Memory;

#[async_trait::async_trait]
impl Factory for Memory {
    async fn open(&self, s: Settings) -> Backend {
        Backend::new(Arc::new(open_memory(config(s))), ())
    }
}

/// The in-memory engine keeping at most one committed log mark and one
/// conversation head for readers: every contract test then runs with them
/// emptied after nearly every commit and loaded again from the engine.
struct MemoryForgetful;

#[async_trait::async_trait]
impl Factory for MemoryForgetful {
    async fn open(&self, s: Settings) -> Backend {
        let config = StoreConfig {
            heads_cached_max: 1,
            ..config(s)
        };
        Backend::new(Arc::new(open_memory(config)), ())
    }
}

/// The embedded engine in a temporary directory.
struct Fjall;

#[async_trait::async_trait]
impl Factory for Fjall {
    async fn open(&self, s: Settings) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = open_embedded(dir.path(), config(s)).unwrap();
        Backend::new(Arc::new(store), dir)
    }
}

mod memory_engine {
    use super::Memory;
    pigeon_store_contract::contract_tests!(Memory);
}

mod memory_engine_forgetful {
    use super::MemoryForgetful;
    pigeon_store_contract::contract_tests!(MemoryForgetful);
}

mod fjall_engine {
    use super::Fjall;
    pigeon_store_contract::contract_tests!(Fjall);
}

/// A store kept with its concrete type, for the committer's counters.
struct Local {
    store: LogStore,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_concurrent_writes_share_commits() {
    concurrent_writes_share_commits(open_memory(StoreConfig::default())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjall_concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_writes_share_commits(open_embedded(dir.path(), StoreConfig::default()).unwrap())
        .await
}

/// Writes, shuts down and reopens an embedded store, and checks users,
/// messages, dedup records and secrets survive and new seqs keep growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_recovers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        seq_step: 4,
        log_retain_events: 0,
        ..StoreConfig::default()
    };
    let (a, c, first, secret, head) = {
        let store = open_embedded(dir.path(), config.clone()).unwrap();
        let a = store.create_user("alice", "h", 0).await.unwrap();
        let c = store.create_user("carol", "h", 0).await.unwrap();
        let mut first = None;
        for i in 0..10 {
            let o = store
                .append_message(msg(
                    (a.id, "alice"),
                    (c.id, "carol"),
                    &format!("m{i}"),
                    &i.to_string(),
                    i,
                ))
                .await
                .unwrap();
            first.get_or_insert(o);
        }
        let secret = store.secret("k").await.unwrap();
        let head = store.log_head(c.id).await.unwrap();
        store.shutdown().await;
        (a, c, first.unwrap(), secret, head)
    };
    let store = open_embedded(dir.path(), config).unwrap();
    assert_eq!(store.user_by_name("alice").await.unwrap().unwrap(), a);
    assert_eq!(store.secret("k").await.unwrap(), secret);
    assert_eq!(store.log_head(c.id).await.unwrap(), head);
    let read = store
        .read_log(c.id, LogFrom::Oldest, 100, 1 << 20)
        .await
        .unwrap();
    assert_eq!(read.events.len(), 10);
    let dup = store
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "m0", "again", 99))
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.conv_seq, first.conv_seq);
    let next = store
        .append_message(msg((a.id, "alice"), (c.id, "carol"), "m10", "10", 100))
        .await
        .unwrap();
    let new_seq = next
        .appended
        .iter()
        .find(|x| x.user_id == c.id)
        .unwrap()
        .events[0]
        .seq;
    assert!(
        new_seq > head,
        "seq {new_seq} must follow {head} after restart"
    );
    assert_eq!(
        next.appended
            .iter()
            .find(|x| x.user_id == c.id)
            .unwrap()
            .prev_seq,
        head
    );
    let d = store.create_user("dave", "h", 0).await.unwrap();
    assert!(d.id > c.id, "user ids are not reused");
    store.shutdown().await;
}

/// Issues 200 sends at once and checks they were answered by far fewer
/// commits (fsyncs) than sends: group commit.
async fn concurrent_writes_share_commits(store: LogStore) {
    use std::sync::atomic::Ordering;
    let b = Local { store };
    let a = b.store.create_user("alice", "h", 0).await.unwrap();
    let c = b.store.create_user("carol", "h", 0).await.unwrap();
    let before = b.store.stats().commits.load(Ordering::Relaxed);
    let sends = (0..200).map(|i| {
        b.store.append_message(msg(
            (a.id, "alice"),
            (c.id, "carol"),
            &format!("g{i}"),
            "x",
            0,
        ))
    });
    for r in futures_util::future::join_all(sends).await {
        r.unwrap();
    }
    let commits = b.store.stats().commits.load(Ordering::Relaxed) - before;
    assert!(
        (1..=100).contains(&commits),
        "200 sends took {commits} commits"
    );
    assert_eq!(
        b.store
            .read_log(c.id, LogFrom::Oldest, 1000, 1 << 24)
            .await
            .unwrap()
            .events
            .len(),
        200
    );
}
