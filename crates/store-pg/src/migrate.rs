//! Schema migrations, embedded in the binary and applied at start.
//!
//! Each node runs [`run`] when it opens the store. It takes a session-level
//! advisory lock ([`MIGRATION_LOCK`]) on a dedicated connection, so nodes
//! starting at once apply migrations one after the other (the later ones
//! find nothing to do); creates `schema_migrations` if needed; and applies
//! each missing migration in its own transaction together with its row in
//! `schema_migrations`, so a migration is either wholly applied and
//! recorded or not at all. The connection is closed at the end, which
//! releases the lock even if a step failed.
//!
//! Migrations are append-only: never edit one that has shipped; add the
//! next. A database migrated by a newer binary (versions this one does not
//! know) is accepted with a warning, since during a rolling upgrade older
//! nodes keep running on the newer schema; migrations must therefore only
//! add.

use pigeon_core::StoreError;
use tokio_postgres::NoTls;

/// The advisory lock key of migrations ("pigeon" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x7069_6765_6f6e;

/// `(version, name, SQL)`, in order.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial schema",
    include_str!("migrations/0001_initial.sql"),
)];

const _: () = {
    // Versions are 1, 2, 3, ... in order.
    let mut n = 0;
    while n < MIGRATIONS.len() {
        assert!(MIGRATIONS[n].0 == n as i64 + 1);
        n += 1;
    }
};

fn unavailable(what: &str, e: tokio_postgres::Error) -> StoreError {
    let detail = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.to_string());
    StoreError::Unavailable(format!("{what}: {detail}"))
}

/// Applies every migration the database lacks; returns the versions it
/// applied.
pub async fn run(config: &tokio_postgres::Config) -> Result<Vec<i64>, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| unavailable("connecting to the database", e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    let result = apply(client).await;
    // `apply` consumed the client; the connection ends with it.
    let _ = driver.await;
    result
}

async fn apply(mut client: tokio_postgres::Client) -> Result<Vec<i64>, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| unavailable("taking the migration lock", e))?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ( \
               version    BIGINT PRIMARY KEY, \
               name       TEXT NOT NULL, \
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| unavailable("creating schema_migrations", e))?;
    let applied: Vec<i64> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| unavailable("reading schema_migrations", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = MIGRATIONS.len() as i64;
    if let Some(&newest) = applied.last()
        && newest > known
    {
        tracing::warn!(
            database = newest,
            binary = known,
            "the database schema is newer than this binary; running on it (migrations only add)"
        );
    }
    let mut done = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| unavailable("starting a migration", e))?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| unavailable(&format!("migration {version} ({name})"), e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(|e| unavailable("recording a migration", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable(&format!("committing migration {version}"), e))?;
        tracing::info!(version, name, "applied database migration");
        done.push(version);
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| unavailable("releasing the migration lock", e))?;
    Ok(done)
}
