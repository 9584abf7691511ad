//! The storage contract (`pigeon-store-contract`) against a real
//! PostgreSQL: each test gets its own server (`pigeon-testkit`) and a fresh
//! database.

use std::sync::Arc;

use pigeon_store_contract::{Backend, Factory, Settings};
use pigeon_store_pg::{PgConfig, PgStore};
use pigeon_testkit::PgServer;

/// A PgStore on a new database of a new server.
struct Postgres;

#[async_trait::async_trait]
impl Factory for Postgres {
    async fn open(&self, s: Settings) -> Backend {
        let server = tokio::task::spawn_blocking(PgServer::start)
            .await
            .unwrap()
            .expect("starting PostgreSQL");
        let url = server.create_database().unwrap();
        let config = PgConfig {
            pool_size: 8,
            log_retain_events: s.log_retain_events,
        };
        let store = PgStore::connect(&url, config).await.unwrap();
        Backend::new(Arc::new(store), server)
    }
}

pigeon_store_contract::contract_tests!(Postgres);
