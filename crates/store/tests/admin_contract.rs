//! Administration records written before accounts could be disabled and
//! before the per-user session index (embedded store only). The
//! administration contract itself runs with the rest of the storage
//! contract (`contract.rs`, `pigeon-store-contract`).

use std::sync::Arc;

use pigeon_core::Store;
use pigeon_store::{Engine, LogStore, MemoryEngine, Op, StoreConfig, Table, keys};

/// A store written before accounts could be disabled and before the
/// per-user session index: its user records load as enabled, and its live
/// sessions are indexed at start, so revoking all finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_the_index_load_and_get_indexed() {
    let engine = Arc::new(MemoryEngine::default());
    let old_user = r#"{"id":1,"username":"alice","password_hash":"h","created_at_ms":1}"#;
    let old_session = |token: &str, revoked: bool| {
        format!(
            r#"{{"token_hash":"{token}","user_id":1,"device_id":1,"device_name":"d","created_at_ms":1,"expires_at_ms":9999999999999,"revoked":{revoked}}}"#
        )
    };
    engine
        .apply(&mut vec![
            Op::Put(Table::Users, b"alice".to_vec(), old_user.into()),
            Op::Put(Table::UserIds, keys::user_id(1), b"alice".to_vec()),
            Op::Put(Table::Meta, keys::NEXT_USER_ID.to_vec(), keys::u64_value(2)),
            Op::Put(
                Table::Sessions,
                b"t-live".to_vec(),
                old_session("t-live", false).into(),
            ),
            Op::Put(
                Table::Sessions,
                b"t-dead".to_vec(),
                old_session("t-dead", true).into(),
            ),
        ])
        .unwrap();
    let store = LogStore::start(engine.clone(), StoreConfig::default());
    let alice = store.user_by_name("alice").await.unwrap().unwrap();
    assert!(!alice.disabled);
    assert_eq!(store.revoke_user_sessions(1, 10).await.unwrap(), (1, false));
    assert!(store.session("t-live").await.unwrap().unwrap().revoked);
    store.shutdown().await;
    assert!(
        engine
            .get(Table::Meta, keys::SESSIONS_INDEXED)
            .unwrap()
            .is_some()
    );

    // Indexing runs once: a later start does not bring revoked sessions
    // back into the index.
    let store = LogStore::start(engine, StoreConfig::default());
    assert_eq!(store.revoke_user_sessions(1, 10).await.unwrap(), (0, false));
}
