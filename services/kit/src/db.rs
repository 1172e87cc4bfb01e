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
    let exists =
        sqlx::query_scalar!(r#"select to_regclass('_sqlx_migrations') is not null as "exists!""#)
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(0);
    }
    let version = sqlx::query_scalar!("select max(version) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    Ok(version.unwrap_or(0))
}

/// `sql` with sqlx's column overrides (`as "state!: OpportunityState"`, `as "time!"`), which
/// only the checked macros read, written as the plain column names (`as state`, `as time`):
/// so the text of a checked statement can also run where columns are read by name
/// (`QueryBuilder` with `FromRow`, pgbench's `\gset`). Nothing else in it changes.
pub fn plain_column_names(sql: &str) -> String {
    let mut plain = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(['\'', '"']) {
        plain.push_str(&rest[..at]);
        let quote = &rest[at..at + 1];
        let after = &rest[at + 1..];
        // A string literal ('' inside is an empty one next to it: the same text) or a
        // quoted identifier, up to its closing quote.
        let Some(end) = after.find(quote) else {
            plain.push_str(&rest[at..]);
            return plain;
        };
        let inner = &after[..end];
        match (quote, inner.split_once(['!', '?', ':'])) {
            ("\"", Some((name, _))) if is_plain_name(name.trim_end()) => {
                plain.push_str(name.trim_end());
            }
            _ => {
                plain.push_str(quote);
                plain.push_str(inner);
                plain.push_str(quote);
            }
        }
        rest = &after[end + 1..];
    }
    plain.push_str(rest);
    plain
}

/// A name Postgres reads the same unquoted: lowercase letters, digits and `_`, not first a digit.
fn is_plain_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_overrides_become_plain_names_and_nothing_else_changes() {
        assert_eq!(
            plain_column_names(
                r#"select o.state::text as "state!: OpportunityState", t.now as "time!",
                          x as "maybe?", y as "y: Json<BTreeMap<String, String>>",
                          '"a!"' as "Quoted Name", 'it''s' as s, "order" from t"#
            ),
            r#"select o.state::text as state, t.now as time,
                          x as maybe, y as y,
                          '"a!"' as "Quoted Name", 'it''s' as s, "order" from t"#
        );
        assert_eq!(
            plain_column_names("select 1 where a = $1"),
            "select 1 where a = $1"
        );
    }
}
