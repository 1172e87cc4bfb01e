//! The `salesopp` program's library: which services a process hosts and how it serves them,
//! the development tokens `demo` and `token` mint for it, and the CSV import. `main.rs`
//! parses the command line; the end-to-end tests use [`serve`], [`demo::play`] and
//! [`import::run`] directly.

pub mod demo;
pub mod import;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use salesopp_gateway::grpc::Endpoints;
use salesopp_kit::auth::AuthLayer;
use salesopp_kit::db::Pools;
use salesopp_kit::{Authenticator, ServeOptions};
use salesopp_opportunity::events::{Feed, StreamConfig};
use salesopp_outbox::retention::Retention;
use salesopp_outbox::{Tail, Wake};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tower::Layer as _;

/// A service a process can host (`salesopp serve --service NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceKind {
    /// salesopp.customer.v1.CustomerService
    #[value(name = "customer")]
    Customer,
    /// salesopp.opportunity.v1.OpportunityService
    #[value(name = "opportunity")]
    Opportunity,
    /// salesopp.statusconfig.v1.StatusConfigService
    #[value(name = "status-config")]
    StatusConfig,
    /// salesopp.gateway.v1.GatewayService (no database; calls the other three)
    #[value(name = "gateway")]
    Gateway,
}

impl ServiceKind {
    /// Every service: what the all-in-one process hosts.
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Customer,
        ServiceKind::Opportunity,
        ServiceKind::StatusConfig,
        ServiceKind::Gateway,
    ];

    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Customer => salesopp_customer::SERVICE_NAME,
            ServiceKind::Opportunity => salesopp_opportunity::SERVICE_NAME,
            ServiceKind::StatusConfig => salesopp_status_config::SERVICE_NAME,
            ServiceKind::Gateway => salesopp_gateway::SERVICE_NAME,
        }
    }

    pub fn needs_database(self) -> bool {
        self != ServiceKind::Gateway
    }
}

/// The URL a client on this machine reaches a server listening on `listen` with:
/// `http://<listen>`, with an unspecified address (`0.0.0.0`, `[::]`) replaced by 127.0.0.1.
pub fn loopback_url(listen: SocketAddr) -> String {
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        match listen {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        }
    };
    format!("http://{host}:{}", listen.port())
}

/// The gateway's endpoints when it runs beside the services in one process: its own port,
/// over loopback, so every combined call goes through the real services and their checks.
pub fn loopback_endpoints(listen: SocketAddr) -> Endpoints {
    let url = loopback_url(listen);
    Endpoints {
        customer: url.clone(),
        opportunity: url.clone(),
        status_config: url,
    }
}

/// Mints development tokens for a suite served with the same settings; it lives in the kit
/// so that `salesopp bench` mints them too without depending on this crate.
pub use salesopp_kit::auth::TokenMinter;

/// What one serving process needs.
#[derive(Debug)]
pub struct ServeConfig {
    /// The databases: the primary, and the read replica when `DATABASE_READ_URL` names one;
    /// `None` only for a gateway-only process.
    pub pools: Option<Pools>,
    pub auth: Authenticator,
    pub services: Vec<ServiceKind>,
    /// Where the gateway finds the services; `None` means this process's own port.
    pub gateway_endpoints: Option<Endpoints>,
    /// How often the gateway resolves the services' DNS names again.
    pub gateway_resolve_interval: Duration,
    pub grace: Duration,
    pub health_interval: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listener: Option<TcpListener>,
    /// How WatchOpportunityEvents streams behave (heartbeats, the per-caller cap).
    pub streams: StreamConfig,
    /// What the change feed and the idempotency records keep, and how often they are swept.
    pub retention: Retention,
    /// How often the stale sweep (R16) runs; `None`: not in this process (tests that run
    /// the sweep themselves).
    pub stale_interval: Option<Duration>,
}

/// The routes of `services`, each behind token verification.
fn routes(
    config: &ServeConfig,
    listen: SocketAddr,
    feed: Option<&Feed>,
    wake: Option<&Wake>,
) -> anyhow::Result<Routes> {
    let auth = AuthLayer::new(
        config.auth.clone(),
        // Recording who calls is a write: the primary.
        config
            .pools
            .as_ref()
            .map(|pools| salesopp_kit::people::Recorder::new(pools.primary().clone())),
    );
    let pools = || {
        config
            .pools
            .clone()
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL is required for these services"))
    };
    let mut builder = Routes::builder();
    for service in &config.services {
        match service {
            ServiceKind::Customer => {
                builder.add_service(auth.layer(salesopp_customer::CustomerServiceServer::new(
                    salesopp_customer::Customers::new(pools()?),
                )));
            }
            ServiceKind::Opportunity => {
                builder.add_service(auth.layer(
                    salesopp_opportunity::OpportunityServiceServer::new(
                        salesopp_opportunity::Opportunities::new(
                            pools()?,
                            feed.cloned().ok_or_else(|| {
                                anyhow::anyhow!("no event feed without a database")
                            })?,
                            wake.cloned().ok_or_else(no_wake)?,
                        ),
                    ),
                ));
            }
            ServiceKind::StatusConfig => {
                builder.add_service(auth.layer(
                    salesopp_status_config::StatusConfigServiceServer::new(
                        salesopp_status_config::StatusConfig::new(
                            pools()?,
                            wake.cloned().ok_or_else(no_wake)?,
                        ),
                    ),
                ));
            }
            ServiceKind::Gateway => {
                let endpoints = config
                    .gateway_endpoints
                    .clone()
                    .unwrap_or_else(|| loopback_endpoints(listen));
                builder.add_service(auth.layer(salesopp_gateway::GatewayServiceServer::new(
                    salesopp_gateway::Gateway::connect_with(
                        &endpoints,
                        config.gateway_resolve_interval,
                    )?,
                )));
            }
        }
    }
    Ok(builder.routes())
}

/// Serves `config.services` on `listener` until `shutdown` resolves.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let names: Vec<&'static str> = config.services.iter().map(|s| s.grpc_name()).collect();
    let hosts = |kinds: &[ServiceKind]| config.services.iter().any(|s| kinds.contains(s));
    // Background work, each task ending with the process:
    // - processes that write events also place them (one active across replicas) and
    //   measure what waits to be placed;
    // - processes that stream events run one tail for all their streams;
    // - every process with a database sweeps retention and folds the pipeline's deltas into
    //   its totals (one sweeping, one folding at a time), and tells of stale deals (R16, one
    //   replica at a time).
    // All of it writes, or must not miss a commit: the primary.
    let mut tasks = Vec::new();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut feed = None;
    let mut wake = None;
    if let Some(pool) = config.pools.as_ref().map(Pools::primary) {
        if hosts(&[ServiceKind::Opportunity, ServiceKind::StatusConfig]) {
            let (sender, task) = Wake::start(pool.clone());
            tasks.push(AbortOnDrop(task));
            wake = Some(sender.clone());
            tasks.push(AbortOnDrop(tokio::spawn(salesopp_outbox::sequencer::run(
                pool.clone(),
            ))));
            tasks.push(AbortOnDrop(tokio::spawn(salesopp_outbox::backlog::run(
                pool.clone(),
                salesopp_outbox::backlog::INTERVAL,
            ))));
            tasks.push(AbortOnDrop(tokio::spawn(salesopp_outbox::retention::run(
                pool.clone(),
                config.retention,
            ))));
            if let Some(interval) = config.stale_interval {
                tasks.push(AbortOnDrop(tokio::spawn(salesopp_opportunity::stale::run(
                    pool.clone(),
                    interval,
                    sender,
                ))));
            }
            tasks.push(AbortOnDrop(tokio::spawn(
                salesopp_opportunity::summary::run(
                    pool.clone(),
                    salesopp_opportunity::summary::FOLD_INTERVAL,
                ),
            )));
        }
        if hosts(&[ServiceKind::Opportunity]) {
            let (tail, task) = Tail::start(pool.clone());
            tasks.push(AbortOnDrop(task));
            feed = Some(Feed::new(pool.clone(), tail, config.streams, stopping));
        }
    }
    let routes = routes(
        &config,
        listener.local_addr()?,
        feed.as_ref(),
        wake.as_ref(),
    )?;
    // Once shutdown has begun and readiness reads NOT_SERVING, open streams end at once with
    // UNAVAILABLE (their consumers reconnect elsewhere); unary calls in flight finish within
    // the grace period.
    let served = salesopp_kit::serve(
        config.pools,
        routes,
        &names,
        ServeOptions {
            listener,
            shutdown: Box::pin(shutdown),
            draining: Some(stop),
            grace: config.grace,
            health_interval: config.health_interval,
            metrics_listener: config.metrics_listener,
        },
    )
    .await;
    drop(tasks);
    served
}

fn no_wake() -> anyhow::Error {
    anyhow::anyhow!("no event wake-up without a database")
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`wait_for_schema`] on the primary and, at the same time, on the read replica when there
/// is one: a replica of a database without the schema (or of another database) would answer
/// the reads wrongly, so it is refused at start-up as the primary is. The replica's failure
/// says it is the replica's, in one line.
pub async fn wait_for_databases(pools: &Pools, timeout: Duration) -> anyhow::Result<()> {
    let replica = async {
        match pools.replica() {
            Some(replica) => wait_for_schema(replica, timeout).await.map_err(|error| {
                anyhow::anyhow!(
                    "{} (the read replica): {error:#}",
                    salesopp_kit::db::READ_URL
                )
            }),
            None => Ok(()),
        }
    };
    tokio::try_join!(wait_for_schema(pools.primary(), timeout), replica)?;
    Ok(())
}

/// Waits for the database and checks its schema; an older schema or a failed TLS check
/// fails at once, an unreachable database is retried until `timeout`.
pub async fn wait_for_schema(pool: &PgPool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match salesopp_kit::db::applied_schema_version(pool).await {
            Ok(_) => return salesopp_kit::db::check_schema(pool).await,
            Err(error) => {
                let options = pool.connect_options();
                if salesopp_kit::db::tls_failure(&error, &options).is_some()
                    || tokio::time::Instant::now() >= deadline
                {
                    return Err(salesopp_kit::db::startup_error(&error, &options));
                }
                tracing::warn!(%error, "database not reachable yet: retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
