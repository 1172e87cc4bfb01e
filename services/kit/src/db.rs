//! The Postgres pool, the embedded migrations of `migrations/`, and the start-up check that
//! refuses a schema older than this build needs.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};

/// The one shared schema, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The newest migration this build knows.
pub fn required_schema_version() -> i64 {
    MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

/// A pool that fails fast when the database is away, so calls answer UNAVAILABLE promptly
/// instead of hanging, and reconnects by itself when it returns.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(true)
}

/// Connects lazily: the process starts, serves health as NOT_SERVING, and connects when
/// the database is reachable.
pub fn connect_lazy(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid Postgres URL: {e}"))?;
    Ok(pool_options(max_connections).connect_lazy_with(options.application_name("salesopp")))
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The newest successfully applied migration, 0 on an empty database.
pub async fn applied_schema_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await?;
    Ok(version.unwrap_or(0))
}

/// Refuses to serve on a schema older than this build needs.
pub async fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    let applied = applied_schema_version(pool).await?;
    let required = required_schema_version();
    anyhow::ensure!(
        applied >= required,
        "the database schema is at version {applied}, this build needs {required}: run `salesopp migrate` first"
    );
    Ok(())
}
