//! `salesopp`: serve one service or all of them, apply the schema, relay the events, play
//! the demo, mint a development token, benchmark the suite (`bench`), import customers or
//! opportunities from a CSV file (`import`). `demo`, `token` and `import` read the same
//! settings as `serve` (the kit's [`AuthArgs`] and [`ListenArgs`]), so they reach and satisfy
//! the suite it serves.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum as _};
use salesopp::{ServeConfig, ServiceKind, TokenMinter};
use salesopp_kit::config::{AuthArgs, DatabaseArgs, ListenArgs};
use salesopp_kit::db::Pools;
use sqlx::migrate::MigrateDatabase as _;

#[derive(Parser, Debug)]
#[command(name = "salesopp", version, about = "The sales-opportunity suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a gateway-only process finds the services.
#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// CustomerService URL: http://host:port or dns:///host:port (every address the name
    /// resolves to, e.g. a headless Service's pods) or ipv4:ip:port,ip:port (a fixed list)
    #[arg(long, env = "SALESOPP_CUSTOMER_URL")]
    customer_url: Option<String>,
    /// OpportunityService URL
    #[arg(long, env = "SALESOPP_OPPORTUNITY_URL")]
    opportunity_url: Option<String>,
    /// StatusConfigService URL
    #[arg(long, env = "SALESOPP_STATUS_CONFIG_URL")]
    status_config_url: Option<String>,
    /// How often the services' DNS names are resolved again (pods added or gone).
    #[arg(long, env = "SALESOPP_RESOLVE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    resolve_interval: Duration,
}

impl GatewayArgs {
    fn endpoints(self) -> anyhow::Result<salesopp_gateway::grpc::Endpoints> {
        let need = |value: Option<String>, name: &str| {
            value.ok_or_else(|| anyhow::anyhow!("{name} is required for --service gateway"))
        };
        Ok(salesopp_gateway::grpc::Endpoints {
            customer: need(self.customer_url, "SALESOPP_CUSTOMER_URL")?,
            opportunity: need(self.opportunity_url, "SALESOPP_OPPORTUNITY_URL")?,
            status_config: need(self.status_config_url, "SALESOPP_STATUS_CONFIG_URL")?,
        })
    }
}

/// The change feed's settings.
#[derive(clap::Args, Debug)]
struct EventArgs {
    /// How long a WatchOpportunityEvents stream may send nothing before a heartbeat.
    #[arg(long, env = "SALESOPP_EVENT_HEARTBEAT", default_value = "10s", value_parser = humantime::parse_duration)]
    event_heartbeat: Duration,
    /// The most open event streams one caller may hold on one server.
    #[arg(long, env = "SALESOPP_EVENT_STREAMS_PER_CALLER", default_value_t = 32)]
    event_streams_per_caller: usize,
    /// How long events are kept (e.g. 30d, 12h); older cursors answer OUT_OF_RANGE.
    #[arg(long, env = "SALESOPP_EVENT_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    event_retention: Duration,
    /// How often each replica looks for opportunities that went stale (R16); one replica
    /// sweeps at a time.
    #[arg(long, env = "SALESOPP_STALE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    stale_interval: Duration,
}

/// `salesopp relay`'s settings.
#[derive(clap::Args, Debug)]
struct RelayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// NATS server URL (the relay starts and waits while it is unreachable).
    #[arg(
        long,
        env = "SALESOPP_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// JetStream stream (created, or its subjects and limits updated, when the relay becomes active).
    #[arg(
        long,
        env = "SALESOPP_NATS_STREAM",
        default_value = "SALESOPP_OPPORTUNITY_EVENTS"
    )]
    stream: String,
    /// Subject prefix: messages go to <prefix>.created, <prefix>.updated, <prefix>.status_changed.
    #[arg(
        long,
        env = "SALESOPP_NATS_SUBJECT_PREFIX",
        default_value = "salesopp.opportunity"
    )]
    subject_prefix: String,
    /// How long the stream keeps a message (e.g. 30d, 12h; 0s: no limit).
    #[arg(long, env = "SALESOPP_NATS_STREAM_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    stream_max_age: Duration,
    /// How many bytes the stream keeps, the oldest messages dropped first (0: no limit).
    #[arg(long, env = "SALESOPP_NATS_STREAM_MAX_BYTES", default_value_t = 0)]
    stream_max_bytes: u64,
    /// How long JetStream recognises a re-sent event by its Nats-Msg-Id (at most the max age).
    #[arg(long, env = "SALESOPP_NATS_DUPLICATE_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    duplicate_window: Duration,
    /// Copies of the stream in a NATS cluster.
    #[arg(long, env = "SALESOPP_NATS_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
    /// The name this relay's lease and progress are recorded under.
    #[arg(long, env = "SALESOPP_RELAY_NAME", default_value = "nats")]
    name: String,
    /// How long the active relay's lease lasts unrenewed (renewed every quarter of it): a
    /// standby takes over within this plus a second of the active one dying.
    #[arg(long, env = "SALESOPP_RELAY_LEASE_TTL", default_value = "8s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// grpc.health.v1 listen address (not SALESOPP_LISTEN, so that a relay can run beside
    /// `serve` on one machine).
    #[arg(long, env = "SALESOPP_RELAY_LISTEN", default_value = "127.0.0.1:50052")]
    listen: std::net::SocketAddr,
    /// Prometheus `/metrics` listen address (plain HTTP); not served when unset.
    #[arg(long, env = "SALESOPP_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds the relay may take to stop after SIGTERM/SIGINT (it finishes the publish in
    /// flight, records its progress and releases its lease).
    #[arg(long, env = "SALESOPP_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    shutdown_grace_seconds: u64,
    /// Seconds to wait for the database at start-up.
    #[arg(long, env = "SALESOPP_STARTUP_TIMEOUT_SECONDS", default_value_t = 60)]
    startup_timeout_seconds: u64,
}

impl RelayArgs {
    fn config(&self) -> anyhow::Result<salesopp_relay::RelayConfig> {
        anyhow::ensure!(
            self.lease_ttl >= Duration::from_secs(2),
            "SALESOPP_RELAY_LEASE_TTL must be at least 2s"
        );
        anyhow::ensure!(
            self.stream_max_age.is_zero() || self.duplicate_window <= self.stream_max_age,
            "SALESOPP_NATS_DUPLICATE_WINDOW must not exceed SALESOPP_NATS_STREAM_MAX_AGE"
        );
        Ok(salesopp_relay::RelayConfig {
            name: self.name.clone(),
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            limits: salesopp_relay::StreamLimits {
                max_age: self.stream_max_age,
                max_bytes: match self.stream_max_bytes {
                    0 => -1,
                    bytes => i64::try_from(bytes).unwrap_or(i64::MAX),
                },
                duplicate_window: self.duplicate_window,
                replicas: self.stream_replicas.max(1),
            },
            lease: salesopp_relay::LeaseConfig {
                ttl: self.lease_ttl,
                renew_interval: self.lease_ttl / 4,
                standby_poll: Duration::from_secs(1).min(self.lease_ttl / 4),
            },
            ..Default::default()
        })
    }
}

/// `salesopp relay`: waits for the schema, then relays until SIGTERM/SIGINT, serving health
/// (and metrics) meanwhile.
async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let telemetry = salesopp_kit::telemetry::init("salesopp-relay");
    let relayed = relay_until_stopped(args).await;
    telemetry.shutdown().await;
    relayed
}

async fn relay_until_stopped(args: RelayArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let pool = salesopp_kit::db::connect_lazy(
        &args.database.database_url,
        args.database.db_max_connections.max(4),
    )?;
    salesopp::wait_for_schema(&pool, Duration::from_secs(args.startup_timeout_seconds)).await?;
    let health_listener = tokio::net::TcpListener::bind(args.listen).await?;
    if let Some(addr) = args.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics");
        tokio::spawn(salesopp_kit::metrics::serve(
            metrics_listener,
            Some(Pools::from(pool.clone())),
        ));
    }
    let client = salesopp_relay::connect(&args.nats_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", args.nats_url))?;
    let relay = salesopp_relay::Relay::new(pool, client, config);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let health = tokio::spawn(salesopp_relay::health::serve(
        health_listener,
        relay.status(),
        async move {
            let _ = stopped_rx.await;
        },
    ));
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    let run = relay.run(async {
        let _ = signal_rx.await;
    });
    tokio::pin!(run);
    tokio::select! {
        () = &mut run => {}
        () = salesopp_kit::serve::shutdown_signal() => {
            let _ = signal_tx.send(());
            if tokio::time::timeout(grace, &mut run).await.is_err() {
                tracing::warn!(?grace, "the relay did not stop within the grace period: exiting");
            }
        }
    }
    let _ = stopped_tx.send(());
    let _ = health.await;
    tracing::info!("relay stopped");
    Ok(())
}

/// The token settings as `demo` and `token` use them: those of the suite they call.
const SECRET_HELP: &str = "The suite's HS256 secret: the tokens are signed with it";
const ISSUER_HELP: &str = "The `iss` claim the suite requires: put into the tokens";
const AUDIENCE_HELP: &str = "The `aud` claim the suite requires: put into the tokens";

/// What `salesopp serve` takes.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Host only this service (one Kubernetes Deployment each); all of them when absent.
    #[arg(long, env = "SALESOPP_SERVICE")]
    pub service: Option<ServiceKind>,
    /// Postgres URL; required unless only the gateway is served.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A read replica of DATABASE_URL (a streaming hot standby), TLS options as there: the
    /// read-only calls (lists, search, history, pipeline summaries) are served from it
    /// while it answers; when unset, every call uses DATABASE_URL.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    database_read_url: Option<String>,
    /// Most connections the pool opens.
    #[arg(long, env = "SALESOPP_DB_MAX_CONNECTIONS", default_value_t = 10)]
    db_max_connections: u32,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    events: EventArgs,
    /// Seconds to wait for the database at start-up.
    #[arg(long, env = "SALESOPP_STARTUP_TIMEOUT_SECONDS", default_value_t = 60)]
    startup_timeout_seconds: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve every service on one port, or one service with --service.
    Serve(Box<ServeArgs>),
    /// Create the database if it is missing and apply every pending migration.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Publish the opportunity event outbox to NATS JetStream: one active relay across
    /// replicas (a lease in Postgres, the others stand by), in order, de-duplicated by
    /// event id, with CloudEvents headers; serves grpc.health.v1 for probes.
    Relay(RelayArgs),
    /// Play the seed's story against a running suite, through its public calls. Played
    /// again, it finds the story recorded and adds nothing.
    // The listen settings other than the address mean nothing here: hidden. The flags of
    // earlier versions stay as aliases.
    #[command(
        mut_arg("metrics_listen", |a| a.hide(true)),
        mut_arg("shutdown_grace_seconds", |a| a.hide(true)),
        mut_arg("health_interval_seconds", |a| a.hide(true)),
        mut_arg("auth_jwks", |a| a.hide(true)),
        mut_arg("auth_hs256_secret", |a| a.alias("secret").help(SECRET_HELP)),
        mut_arg("auth_issuer", |a| a.help(ISSUER_HELP)),
        mut_arg("auth_audience", |a| a.help(AUDIENCE_HELP)),
    )]
    Demo {
        /// The suite's URL; when absent, http://<SALESOPP_LISTEN> (127.0.0.1 when that
        /// address is unspecified, e.g. 0.0.0.0).
        #[arg(long, env = "SALESOPP_URL")]
        url: Option<String>,
        // The address the suite serves on, as `serve` reads it.
        #[command(flatten)]
        listen: ListenArgs,
        // The suite's token settings: the story's tokens are signed with its HS256 secret
        // and carry its issuer and audience.
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Mint a development token signed with the HS256 secret, carrying the issuer and
    /// audience the suite requires (SALESOPP_AUTH_ISSUER, SALESOPP_AUTH_AUDIENCE).
    #[command(
        mut_arg("auth_jwks", |a| a.hide(true)),
        mut_arg("auth_hs256_secret", |a| a.alias("secret").help(SECRET_HELP)),
        mut_arg("auth_issuer", |a| a.alias("issuer").help(ISSUER_HELP)),
        mut_arg("auth_audience", |a| a.alias("audience").help(AUDIENCE_HELP)),
    )]
    Token {
        /// The salesperson's id (`sub`).
        #[arg(long)]
        sub: String,
        /// Display name (`name`).
        #[arg(long, default_value = "")]
        name: String,
        /// Team (`team`).
        #[arg(long, default_value = "")]
        team: String,
        /// A role: sales_rep, sales_manager or sales_admin; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 8 * 3600)]
        ttl_seconds: u64,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Seed a database at scale by bulk load, serve the suite on it, drive every workload
    /// over gRPC and measure it beside pgbench running the same SQL (and a minimal
    /// reference) on the same data; writes report.json, report.md and report.svg.
    Bench(Box<salesopp_bench::BenchArgs>),
    /// Import customers or opportunities from a CSV file through the batch calls, resumably.
    ///
    /// Run the same file again after an interruption and only the rows not yet written are
    /// created. Each failed row is listed with its line; the exit status is 2 when any row
    /// failed.
    // Tokens are minted as `token` mints them, with the suite's secret, issuer and audience.
    #[command(
        mut_arg("auth_jwks", |a| a.hide(true)),
        mut_arg("auth_hs256_secret", |a| a.alias("secret").help(SECRET_HELP)),
        mut_arg("auth_issuer", |a| a.help(ISSUER_HELP)),
        mut_arg("auth_audience", |a| a.help(AUDIENCE_HELP)),
    )]
    Import(Box<salesopp::import::ImportArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Relay(args) => relay(args).await,
        Command::Demo { url, listen, auth } => {
            let url = salesopp::demo::suite_url(url.as_deref(), listen.listen);
            let story = salesopp::demo::play(&url, &TokenMinter::new(&auth)?).await?;
            print!("{story}");
            Ok(())
        }
        Command::Migrate { database } => migrate(database).await,
        Command::Bench(args) => {
            salesopp_bench::run(*args).await?;
            Ok(())
        }
        Command::Import(args) => {
            let summary = salesopp::import::run(args.options()?).await?;
            print!("{summary}");
            if !summary.ok() {
                // Not an error of the command: the rows that failed are listed above.
                std::io::Write::flush(&mut std::io::stdout())?;
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Token {
            sub,
            name,
            team,
            roles,
            ttl_seconds,
            auth,
        } => {
            for role in &roles {
                anyhow::ensure!(
                    salesopp_kit::Role::parse(role).is_some(),
                    "unknown role {role:?}: use sales_rep, sales_manager or sales_admin"
                );
            }
            let token = TokenMinter::new(&auth)?.mint(&sub, &name, &team, &roles, ttl_seconds)?;
            println!("{token}");
            Ok(())
        }
    }
}

/// `salesopp serve`: the services asked for, on one port, until SIGTERM or Ctrl-C.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The trace's service.name when OTEL_SERVICE_NAME is unset: the Deployment's name.
    let default_service_name = match args.service.and_then(|one| one.to_possible_value()) {
        Some(one) => format!("salesopp-{}", one.get_name()),
        None => "salesopp".to_owned(),
    };
    let telemetry = salesopp_kit::telemetry::init(&default_service_name);
    let served = serve_until_stopped(args).await;
    // After the drain every call's spans have ended: they are sent before the process exits.
    telemetry.shutdown().await;
    served
}

async fn serve_until_stopped(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        service,
        database_url,
        database_read_url,
        db_max_connections,
        auth,
        listen,
        gateway,
        events,
        startup_timeout_seconds,
    } = args;
    let authenticator = auth.authenticator().await?;
    let services = match service {
        Some(one) => vec![one],
        None => ServiceKind::ALL.to_vec(),
    };
    let pools = if services.iter().any(|s| s.needs_database()) {
        let url = database_url
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL is required to serve {services:?}"))?;
        let primary = salesopp_kit::db::connect_lazy(&url, db_max_connections)?;
        // Each pool has its own connection budget on its own server.
        let replica = database_read_url
            .map(|url| salesopp_kit::db::connect_lazy_read(&url, db_max_connections))
            .transpose()?;
        let pools = Pools::new(primary, replica);
        salesopp::wait_for_databases(&pools, Duration::from_secs(startup_timeout_seconds)).await?;
        Some(pools)
    } else {
        None
    };
    // Alone, the gateway is told where the services are; beside them, it uses this port.
    let gateway_resolve_interval = gateway.resolve_interval;
    let gateway_endpoints = if service == Some(ServiceKind::Gateway) {
        Some(gateway.endpoints()?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(listen.listen).await?;
    let metrics_listener = match listen.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    salesopp::serve(
        ServeConfig {
            pools,
            auth: authenticator,
            services,
            gateway_endpoints,
            gateway_resolve_interval,
            grace: listen.shutdown_grace(),
            health_interval: listen.health_interval(),
            metrics_listener,
            streams: salesopp_opportunity::events::StreamConfig {
                heartbeat: events.event_heartbeat,
                streams_per_caller: events.event_streams_per_caller,
            },
            stale_interval: Some(events.stale_interval),
            retention: salesopp_outbox::retention::Retention {
                events: events.event_retention,
                ..Default::default()
            },
        },
        listener,
        salesopp_kit::serve::shutdown_signal(),
    )
    .await
}

/// `salesopp migrate`: the database created when missing, every pending migration applied.
async fn migrate(database: DatabaseArgs) -> anyhow::Result<()> {
    salesopp_kit::telemetry::init_logs();
    let url = &database.database_url;
    let options = salesopp_kit::db::connect_options(url)?;
    // The first connection: a failed TLS check ends here, in one line.
    let exists = sqlx::Postgres::database_exists(url)
        .await
        .map_err(|error| salesopp_kit::db::startup_error(&error, &options))?;
    if !exists {
        sqlx::Postgres::create_database(url).await?;
        tracing::info!("database created");
    }
    let pool = salesopp_kit::db::pool_options(2).connect_lazy_with(options);
    salesopp_kit::db::migrate(&pool).await?;
    tracing::info!(
        version = salesopp_kit::db::required_schema_version(),
        "schema up to date"
    );
    Ok(())
}
