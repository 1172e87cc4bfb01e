//! The end-to-end test harness: every test gets its own freshly migrated database and the
//! suite served over real gRPC on `127.0.0.1:0`, exactly as `salesopp serve` runs it.
//!
//! `DATABASE_URL` names an admin connection (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! allowed to create databases; each test's database is dropped when its suite is dropped.
//! A test that needs a database it may stop or crash makes it in a [`cluster::PgCluster`] of
//! its own ([`TestDatabase::create_in`]); one served with a read replica, in a
//! [`replica::Replicated`] pair ([`SuiteOptions::read`]).

pub mod cluster;
pub mod fixtures;
pub mod nats;
pub mod relay;
pub mod relay_process;
pub mod replica;
pub mod scrape;
pub mod serve_process;
pub mod settled;
pub mod wait;
pub mod world;

use std::net::SocketAddr;
use std::time::Duration;

use salesopp::{ServeConfig, ServiceKind};
use salesopp_kit::Authenticator;
use salesopp_kit::auth::{TokenRequest, mint_hs256};
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgPool};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use world::World;

/// The HS256 secret the test suites verify tokens with.
pub const SECRET: &str = "salesopp-test-secret-0123456789";

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn admin_options() -> PgConnectOptions {
    admin_url()
        .parse::<PgConnectOptions>()
        .expect("DATABASE_URL is a Postgres URL")
}

/// A database of its own for one test, dropped with it.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub options: PgConnectOptions,
    /// Where it was created, and is dropped from.
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Creates an empty database (no schema).
    pub async fn create_empty() -> TestDatabase {
        Self::create_empty_in(admin_options()).await
    }

    /// Creates an empty database through the admin connection `admin` (e.g. a
    /// [`cluster::PgCluster`]'s `options()`), and drops it there when dropped.
    pub async fn create_empty_in(admin: PgConnectOptions) -> TestDatabase {
        let name = format!("salesopp_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin_connection = sqlx::PgConnection::connect_with(&admin).await.expect(
            "connect to the admin database (is Postgres running? see scripts/ensure-postgres)",
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin_connection)
            .await
            .expect("create the test database");
        TestDatabase {
            options: admin.clone().database(&name),
            name,
            admin,
        }
    }

    /// Creates a database with the suite's schema.
    pub async fn create() -> TestDatabase {
        Self::create_in(admin_options()).await
    }

    /// Creates a database with the suite's schema through `admin` (see [`Self::create_empty_in`]).
    pub async fn create_in(admin: PgConnectOptions) -> TestDatabase {
        let database = Self::create_empty_in(admin).await;
        let pool = database.pool().await;
        salesopp_kit::db::migrate(&pool)
            .await
            .expect("migrate the test database");
        pool.close().await;
        database
    }

    /// A URL of this database for a child process: the admin URL (`DATABASE_URL`) with its
    /// database name replaced (for a database made through it, not in a private cluster).
    pub fn url(&self) -> String {
        let admin = admin_url();
        let (base, query) = admin.split_once('?').unwrap_or((admin.as_str(), ""));
        let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
        let server = rest.split_once('/').map_or(rest, |(server, _)| server);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{scheme}://{server}/{}{query}", self.name)
    }

    pub async fn pool(&self) -> PgPool {
        salesopp_kit::db::pool_options(10).connect_lazy_with(self.options.clone())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop runs outside async: a short-lived runtime on its own thread does the work.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok(mut admin) = sqlx::PgConnection::connect_with(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "drop database if exists {name} with (force)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// The suite served for one test.
#[derive(Debug)]
pub struct TestSuite {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when [`SuiteOptions::metrics`] asked for it.
    pub metrics_addr: Option<SocketAddr>,
    /// A pool on the test's database, for fixtures and for checking what was written.
    pub db: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Last: dropped after the server has stopped using it.
    pub database: TestDatabase,
}

/// How a test wants its suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub health_interval: Duration,
    pub streams: salesopp_opportunity::events::StreamConfig,
    /// Serve `/metrics` on a port of its own (`TestSuite::metrics_addr`).
    pub metrics: bool,
    /// The read replica's database (as `DATABASE_READ_URL` names it, e.g. a
    /// [`replica::Replicated`] standby's); `None`: every call on the primary.
    pub read: Option<PgConnectOptions>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            health_interval: Duration::from_millis(100),
            streams: Default::default(),
            metrics: false,
            read: None,
        }
    }
}

impl TestSuite {
    /// A migrated database and every service on one port.
    pub async fn spawn() -> TestSuite {
        Self::spawn_with(SuiteOptions::default()).await
    }

    pub async fn spawn_with(options: SuiteOptions) -> TestSuite {
        let database = TestDatabase::create().await;
        let service_pool = database.pool().await;
        Self::serve(database, service_pool, options).await
    }

    /// Serves with `service_pool` (e.g. one that reaches the database through a relay).
    pub async fn serve(
        database: TestDatabase,
        service_pool: PgPool,
        options: SuiteOptions,
    ) -> TestSuite {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let metrics_listener = if options.metrics {
            Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind port 0"),
            )
        } else {
            None
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("local addr"));
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        // The replica's pool as `salesopp serve` makes it of DATABASE_READ_URL.
        let replica = options
            .read
            .map(|read| salesopp_kit::db::read_pool(read, 10));
        let config = ServeConfig {
            pools: Some(salesopp_kit::db::Pools::new(service_pool, replica)),
            auth: Authenticator::hs256(SECRET.as_bytes(), options.issuer, options.audience),
            services: ServiceKind::ALL.to_vec(),
            gateway_endpoints: None,
            gateway_resolve_interval: salesopp_gateway::balance::DEFAULT_RESOLVE_INTERVAL,
            grace: Duration::from_secs(5),
            health_interval: options.health_interval,
            metrics_listener,
            streams: options.streams,
            retention: Default::default(),
            // The stale tests sweep when they choose (salesopp_opportunity::stale::sweep);
            // the running task is tested through `salesopp serve` (tests/tests/stale.rs).
            stale_interval: None,
        };
        let server = tokio::spawn(salesopp::serve(config, listener, async move {
            let _ = shutdown_rx.await;
        }));
        let db = database.pool().await;
        TestSuite {
            addr,
            metrics_addr,
            db,
            shutdown: Some(shutdown_tx),
            server: Some(server),
            database,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the suite")
    }

    pub async fn customers(
        &self,
    ) -> salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient<Channel> {
        salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient::new(
            self.channel().await,
        )
    }

    pub async fn opportunities(
        &self,
    ) -> salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient<
        Channel,
    > {
        salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient::new(
            self.channel().await,
        )
    }

    pub async fn gateway(
        &self,
    ) -> salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient<Channel> {
        salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient::new(
            self.channel().await,
        )
    }

    pub async fn statuses(&self) -> StatusConfigServiceClient<Channel> {
        StatusConfigServiceClient::new(self.channel().await)
    }

    /// Stops taking calls, finishes those in flight, and returns what `serve` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestSuite {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A token for `sub` with `roles`, signed with [`SECRET`].
pub fn token(sub: &str, name: &str, team: &str, roles: &[&str]) -> String {
    mint(TokenRequest {
        sub: sub.to_owned(),
        name: name.to_owned(),
        team: team.to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        ttl_seconds: 600,
        issuer: None,
        audience: None,
    })
}

pub fn mint(request: TokenRequest) -> String {
    mint_hs256(SECRET.as_bytes(), &request).expect("mint a token")
}

/// The usual cast.
pub fn admin_token() -> String {
    token("admin-1", "Araya Admin", "hq", &["sales_admin"])
}

pub fn rep_token() -> String {
    token("rep-a1", "Somchai Rep", "north", &["sales_rep"])
}

pub fn manager_token() -> String {
    token("mgr-a", "Malee Manager", "north", &["sales_manager"])
}

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

/// The field violations of an `INVALID_ARGUMENT` status, as (field, description).
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts `result` failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// Asserts an `INVALID_ARGUMENT` naming `field` among its violations.
#[track_caller]
pub fn expect_invalid<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    field: &str,
) -> tonic::Status {
    let status = expect_code(result, tonic::Code::InvalidArgument);
    let violations = field_violations(&status);
    assert!(
        violations.iter().any(|(f, _)| f == field),
        "no violation for {field:?} in {violations:?}"
    );
    status
}

/// Asserts an `INVALID_ARGUMENT` naming every one of `fields` among its violations (every
/// problem reported at once).
#[track_caller]
pub fn expect_invalid_fields<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    fields: &[&str],
) -> tonic::Status {
    let status = expect_code(result, tonic::Code::InvalidArgument);
    let named: std::collections::BTreeSet<String> = field_violations(&status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    for field in fields {
        assert!(named.contains(*field), "{field} missing from {named:?}");
    }
    status
}
