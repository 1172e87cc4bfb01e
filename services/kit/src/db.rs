//! The Postgres pool, the embedded migrations of `migrations/`, the start-up check that
//! refuses a schema older than this build needs, and the one-line start-up error that says
//! why the database's TLS check failed.
//!
//! TLS is configured by `DATABASE_URL` alone, as libpq reads it: `sslmode` (`disable`,
//! `prefer` by default, `require`, `verify-ca`, `verify-full`) and `sslrootcert` (the CA's
//! PEM file; the system's trusted CAs are trusted too). sqlx parses both; nothing here
//! rewrites the options it made. `DATABASE_READ_URL` (a read replica, [`Pools`]) is read
//! the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::CertificateError;
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
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

/// A connection used this recently is handed out without a ping: the round trip would
/// cost a busy pool one more statement per call. One idle longer is pinged first, and
/// replaced when the database has gone away (HikariCP's `aliveBypassWindowMs`, 500 ms, is
/// the same idea).
pub const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool that fails fast when the database is away, so calls answer UNAVAILABLE promptly
/// instead of hanging, and reconnects by itself when it returns. A connection the database
/// dropped within [`PING_WHEN_IDLE_FOR`] of its last use fails its call with UNAVAILABLE
/// (the client retries, R11) and is closed, never reused.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Connects lazily: the process starts, serves health as NOT_SERVING, and connects when
/// the database is reachable.
pub fn connect_lazy(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url)?))
}

/// The read replica's pool of `DATABASE_READ_URL`, connected lazily like [`connect_lazy`].
pub fn connect_lazy_read(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(read_pool(
        connect_options_of(READ_URL, url)?,
        max_connections,
    ))
}

/// The read replica's pool of `options`, connected lazily. Its sessions are read-only
/// (`default_transaction_read_only`): a hot standby refuses writes anyway, and a read URL
/// that names a writable server (the primary itself, a logical copy) then refuses them too,
/// so a write routed to the read pool by mistake fails (SQLSTATE 25006) instead of landing
/// where nobody reads it from.
pub fn read_pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    pool_options(max_connections)
        .connect_lazy_with(options.options([("default_transaction_read_only", "on")]))
}

/// The setting that names the primary database.
pub const PRIMARY_URL: &str = "DATABASE_URL";
/// The setting that names the read replica.
pub const READ_URL: &str = "DATABASE_READ_URL";

/// The connect options of `url` (TLS included), as the suite connects with them. The error
/// names no part of the URL: it may hold the password.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    connect_options_of(PRIMARY_URL, url)
}

/// [`connect_options`] of the URL in the setting `variable`, which the error names.
pub fn connect_options_of(variable: &str, url: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{variable} is not a valid Postgres URL: {e}"))?;
    Ok(options.application_name("salesopp"))
}

/// The pools a serving process uses (DESIGN.md Operations, `DATABASE_READ_URL`).
///
/// [`primary`](Self::primary) (`DATABASE_URL`) takes every write and the response built in
/// its transaction, the reads that must see the caller's own writes (a Get, whose etag the
/// next write is checked against), idempotency records, the event feed and every background
/// task. [`read`](Self::read) serves the read-only calls (lists, search, history, pipeline
/// summaries): the replica when one is configured and its health probe answers, else the
/// primary, so a replica that goes away costs the primary its read load, not the service
/// its availability. Without a replica both are the primary: exactly one pool.
#[derive(Debug, Clone)]
pub struct Pools {
    primary: PgPool,
    replica: Option<Replica>,
}

#[derive(Debug, Clone)]
struct Replica {
    pool: PgPool,
    /// What the last health probe found; the replica is trusted until one says otherwise
    /// (start-up checked it).
    reachable: Arc<AtomicBool>,
}

impl Pools {
    /// `primary`, and `replica` for the read-only calls when there is one.
    pub fn new(primary: PgPool, replica: Option<PgPool>) -> Pools {
        Pools {
            primary,
            replica: replica.map(|pool| Replica {
                pool,
                reachable: Arc::new(AtomicBool::new(true)),
            }),
        }
    }

    /// The pool of writes and of the reads that must see them.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// The pool of the read-only calls: the replica while it is reachable, else the primary.
    pub fn read(&self) -> &PgPool {
        match &self.replica {
            Some(replica) if replica.reachable.load(Ordering::Relaxed) => &replica.pool,
            _ => &self.primary,
        }
    }

    /// The replica's pool, when one is configured, reachable or not (for its health probe
    /// and its metrics).
    pub fn replica(&self) -> Option<&PgPool> {
        self.replica.as_ref().map(|replica| &replica.pool)
    }

    /// Records what the replica's health probe found: reads go to it again once it answers.
    pub(crate) fn set_replica_reachable(&self, reachable: bool) {
        if let Some(replica) = &self.replica {
            replica.reachable.store(reachable, Ordering::Relaxed);
        }
    }
}

/// One pool for everything: the suite without a replica.
impl From<PgPool> for Pools {
    fn from(primary: PgPool) -> Pools {
        Pools::new(primary, None)
    }
}

/// `error`, met connecting with `options` at start-up, as the one line a process exits
/// with: the TLS check's failure and why ([`tls_failure`]), else the error itself.
pub fn startup_error(error: &sqlx::Error, options: &PgConnectOptions) -> anyhow::Error {
    match tls_failure(error, options) {
        Some(why) => anyhow::anyhow!("database TLS: {why}"),
        None => anyhow::anyhow!("database not reachable: {error}"),
    }
}

/// Why the TLS check of a connection with `options` failed, `None` when `error` is not
/// about TLS. Waiting cannot mend any of these: the caller stops at once.
pub fn tls_failure(error: &sqlx::Error, options: &PgConnectOptions) -> Option<String> {
    match error {
        // sqlx's own words for the server's "N" to the SSLRequest; the others are about the
        // configuration (a PEM that does not parse, a host name that is no server name).
        sqlx::Error::Tls(cause) if cause.to_string() == "server does not support TLS" => {
            Some(format!(
                "the server does not offer TLS, and sslmode={} requires it",
                ssl_mode_name(options.get_ssl_mode())
            ))
        }
        sqlx::Error::Tls(cause) => Some(cause.to_string()),
        sqlx::Error::Io(io) => {
            let root_cert = root_cert(options);
            let refused = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match refused {
                Some(refused) => Some(certificate_refused(refused, options, root_cert.as_deref())),
                // sqlx reads the CA's file while connecting, after the server said yes to TLS.
                None if matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
                {
                    root_cert
                        .filter(|path| std::fs::File::open(path).is_err())
                        .map(|path| format!("sslrootcert={path} cannot be read ({io})"))
                }
                None => None,
            }
        }
        _ => None,
    }
}

fn certificate_refused(
    refused: &rustls::Error,
    options: &PgConnectOptions,
    root_cert: Option<&str>,
) -> String {
    let certificate = match refused {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => match root_cert {
            Some(path) => format!("is not signed by the CA in sslrootcert={path}"),
            None => "is not signed by a CA this machine trusts (no sslrootcert given)".to_owned(),
        },
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("is not valid for the host name {}", options.get_host()),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "has expired".to_owned(),
        rustls::Error::InvalidCertificate(_) => "is refused".to_owned(),
        _ => return format!("the handshake with the server failed ({refused})"),
    };
    format!("the server's certificate {certificate} ({refused})")
}

/// The `sslrootcert` file of `options` (URL or `PGSSLROOTCERT`), as sqlx keeps it: read
/// back from its URL form, which is the one accessor sqlx offers. Only this query parameter
/// is read; the URL (password included) goes nowhere.
fn root_cert(options: &PgConnectOptions) -> Option<String> {
    let url = options.to_url_lossy();
    let (_, value) = url.query_pairs().find(|(key, _)| key == "sslrootcert")?;
    Some(match value.strip_prefix("file: ") {
        Some(path) => path.to_owned(),
        None => "(an inline PEM)".to_owned(),
    })
}

fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
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

/// A connection a background task keeps for itself, out of the pool: what it does must not
/// wait behind the calls that share the pool (under load each holds its connection for a
/// whole transaction), or it needs a session of its own (a session lock). Taken from the
/// pool when first needed, and again after [`reset`](Self::reset).
#[derive(Debug)]
pub struct OwnConnection {
    pool: PgPool,
    connection: Option<sqlx::PgConnection>,
}

impl OwnConnection {
    /// A connection of `pool`'s database, taken when first needed.
    pub fn new(pool: PgPool) -> OwnConnection {
        OwnConnection {
            pool,
            connection: None,
        }
    }

    /// The connection, taken from the pool (and detached from it) if there is none.
    pub async fn get(&mut self) -> Result<&mut sqlx::PgConnection, sqlx::Error> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?.detach(),
        };
        Ok(self.connection.insert(connection))
    }

    /// Drops the connection after an error (a broken one may never answer a goodbye): the
    /// next [`get`](Self::get) takes a new one.
    pub fn reset(&mut self) {
        self.connection = None;
    }
}

/// Takes the transaction-scoped advisory lock `key` if no other session holds it: how a
/// background task runs on one replica at a time (the others skip their round). Released
/// when the transaction ends.
pub async fn try_xact_lock(tx: &mut sqlx::PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select pg_try_advisory_xact_lock($1) as "locked!""#, key)
        .fetch_one(tx)
        .await
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
