//! The `salesopp` program's library: which services a process hosts and how it serves them.
//! `main.rs` parses the command line; the end-to-end tests use [`serve`] directly.

use std::future::Future;
use std::time::Duration;

use salesopp_kit::{Authenticator, ServeOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

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
}

impl ServiceKind {
    /// Every service this build has: what the all-in-one process hosts.
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::Customer,
        ServiceKind::Opportunity,
        ServiceKind::StatusConfig,
    ];

    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Customer => salesopp_customer::SERVICE_NAME,
            ServiceKind::Opportunity => salesopp_opportunity::SERVICE_NAME,
            ServiceKind::StatusConfig => salesopp_status_config::SERVICE_NAME,
        }
    }
}

/// The routes of `services`, each behind token verification.
pub fn routes(pool: &PgPool, auth: &Authenticator, services: &[ServiceKind]) -> Routes {
    let mut builder = Routes::builder();
    for service in services {
        match service {
            ServiceKind::Customer => {
                builder.add_service(InterceptedService::new(
                    salesopp_customer::CustomerServiceServer::new(
                        salesopp_customer::Customers::new(pool.clone()),
                    ),
                    auth.interceptor(),
                ));
            }
            ServiceKind::Opportunity => {
                builder.add_service(InterceptedService::new(
                    salesopp_opportunity::OpportunityServiceServer::new(
                        salesopp_opportunity::Opportunities::new(pool.clone()),
                    ),
                    auth.interceptor(),
                ));
            }
            ServiceKind::StatusConfig => {
                builder.add_service(InterceptedService::new(
                    salesopp_status_config::StatusConfigServiceServer::new(
                        salesopp_status_config::StatusConfig::new(pool.clone()),
                    ),
                    auth.interceptor(),
                ));
            }
        }
    }
    builder.routes()
}

/// What one serving process needs.
#[derive(Debug)]
pub struct ServeConfig {
    pub pool: PgPool,
    pub auth: Authenticator,
    pub services: Vec<ServiceKind>,
    pub grace: Duration,
    pub health_interval: Duration,
}

/// Serves `config.services` on `listener` until `shutdown` resolves.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let routes = routes(&config.pool, &config.auth, &config.services);
    let names: Vec<&'static str> = config.services.iter().map(|s| s.grpc_name()).collect();
    salesopp_kit::serve(
        Some(config.pool),
        routes,
        &names,
        ServeOptions {
            listener,
            shutdown: Box::pin(shutdown),
            grace: config.grace,
            health_interval: config.health_interval,
        },
    )
    .await
}

/// Waits for the database and checks its schema; an older schema fails at once, an
/// unreachable database is retried until `timeout`.
pub async fn wait_for_schema(pool: &PgPool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match salesopp_kit::db::applied_schema_version(pool).await {
            Ok(_) => return salesopp_kit::db::check_schema(pool).await,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "database not reachable yet: retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => anyhow::bail!("database not reachable: {error}"),
        }
    }
}
