//! Quick check that a PgStore starts on a fresh PostgreSQL and stores a message.

use pigeon_core::Store;
use pigeon_store_pg::{PgConfig, PgStore};

#[tokio::test]
async fn smoke() {
    let pg = pigeon_testkit::PgServer::start().unwrap();
    let url = pg.create_database().unwrap();
    let store = PgStore::connect(&url, PgConfig::default()).await.unwrap();
    let a = store.create_user("alice", "h", 1).await.unwrap();
    assert_eq!(a.id, 1);
    assert!(matches!(store.create_user("alice", "h", 1).await, Err(pigeon_core::StoreError::UsernameTaken)));
}
