//! The store behind the server: the embedded store in the data directory
//! (default) or PostgreSQL (config key `store` set to a `postgres://` URL,
//! for cluster mode). What differs between them for the rest of the server
//! is here: readiness, health, shutdown and the counters of the admin
//! statistics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pigeon_core::Store;

use crate::config::Config;

/// How long `/readyz` waits for the database to answer.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The opened store.
pub(crate) enum Backend {
    /// fjall in the data directory, one process.
    Embedded(Arc<pigeon_store::LogStore>),
    /// PostgreSQL, shared by every node of a cluster.
    Postgres(Arc<pigeon_store_pg::PgStore>),
}

impl Backend {
    /// Opens the store the configuration names (applying database
    /// migrations for PostgreSQL).
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Backend> {
        match config.store_url() {
            Some(url) => {
                let store = pigeon_store_pg::PgStore::connect(url, config.pg_store())
                    .await
                    .with_context(|| format!("opening the database {}", redact(url)))?;
                Ok(Backend::Postgres(Arc::new(store)))
            }
            None => {
                let store = pigeon_store::open_embedded(&config.data, config.store())
                    .with_context(|| {
                        format!("opening the data directory {}", config.data.display())
                    })?;
                Ok(Backend::Embedded(Arc::new(store)))
            }
        }
    }

    /// The store for the domain.
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Embedded(s) => s.clone(),
            Backend::Postgres(s) => s.clone(),
        }
    }

    /// Where the data lives, for logs (no password).
    pub(crate) fn describe(&self, config: &Config) -> String {
        match self {
            Backend::Embedded(_) => format!("embedded:{}", config.data.display()),
            Backend::Postgres(_) => redact(config.store_url().unwrap_or_default()),
        }
    }

    /// False once the embedded store failed a commit (restart to recover).
    /// PostgreSQL failures are per request and transient, so it stays
    /// true; readiness asks the database instead.
    pub(crate) fn healthy(&self) -> bool {
        match self {
            Backend::Embedded(s) => s.healthy(),
            Backend::Postgres(_) => true,
        }
    }

    /// Whether this node can serve: the embedded store is healthy, or the
    /// database answers within [`READY_PING_TIMEOUT`].
    pub(crate) async fn ready(&self) -> Result<(), &'static str> {
        match self {
            Backend::Embedded(s) if !s.healthy() => Err("storage failed; restart the server"),
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(s) => {
                match tokio::time::timeout(READY_PING_TIMEOUT, s.ping()).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err("the database does not answer"),
                }
            }
        }
    }

    /// Write commits and answered write jobs since start: group commits
    /// and jobs of the embedded committer, or committed write transactions
    /// and the writes they answered (a batch of sends is one transaction)
    /// for PostgreSQL.
    pub(crate) fn counters(&self) -> (u64, u64) {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        match self {
            Backend::Embedded(s) => (
                s.stats().commits.load(relaxed),
                s.stats().commands.load(relaxed),
            ),
            Backend::Postgres(s) => (s.stats().commits.load(relaxed), s.stats().writes()),
        }
    }

    /// Commits what is queued and stops (embedded), or closes the pool
    /// (PostgreSQL: every answered write is committed already).
    pub(crate) async fn shutdown(&self) {
        match self {
            Backend::Embedded(s) => s.shutdown().await,
            Backend::Postgres(s) => s.shutdown(),
        }
    }
}

/// A database URL with its password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    /// Checks passwords never reach logs and URLs without one are kept.
    #[test]
    fn database_urls_are_redacted() {
        assert_eq!(
            super::redact("postgres://pigeon:s3cret@db:5432/pigeon"),
            "postgres://pigeon:***@db:5432/pigeon"
        );
        assert_eq!(
            super::redact("postgres://pigeon@db/pigeon"),
            "postgres://pigeon@db/pigeon"
        );
    }
}
