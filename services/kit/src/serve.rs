//! The one way every salesopp process serves: the given gRPC services plus
//! `grpc.health.v1` (per service, NOT_SERVING while the database is unreachable, SERVING
//! again when it returns) and reflection v1 and v1alpha; graceful shutdown with a grace
//! period.
//!
//! Readiness follows the primary alone. A read replica that stops answering its probe sends
//! the read-only calls to the primary until it answers again ([`Pools::read`]) and shows as
//! `salesopp_db_up{pool="read"} 0`, but leaves every service SERVING: every pod shares the
//! one replica, so taking them out of their Services for it would turn a lost replica (a
//! capacity problem) into an outage of the writes too, which the primary can still take.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db::Pools;
use crate::metrics::{PRIMARY_POOL, READ_POOL};

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// How often an idle connection is pinged.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to serve.
pub struct ServeOptions {
    pub listener: TcpListener,
    /// Resolves when the process should stop taking calls (SIGTERM, SIGINT, a test).
    pub shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// How long in-flight calls may take to finish after `shutdown`.
    pub grace: Duration,
    /// How often the database is probed for health.
    pub health_interval: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listener: Option<TcpListener>,
    /// Told `true` once shutdown has begun and readiness reads NOT_SERVING: what must end
    /// then, before the calls in flight (open event streams, which clients resume elsewhere).
    pub draining: Option<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("listener", &self.listener.local_addr().ok())
            .field("grace", &self.grace)
            .field("health_interval", &self.health_interval)
            .finish()
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested: finishing calls in flight");
}

async fn set_all(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// Ends every `grpc.health.v1.Health/Watch` stream once it has sent the NOT_SERVING just
/// set: an open watch (gRPC client-side health checking keeps one on every connection) would
/// otherwise hold its connection, and the drain, until the grace period ran out.
async fn end_watches(reporter: &mut HealthReporter, names: &[&'static str]) {
    reporter.clear_service_status("").await;
    for name in names {
        reporter.clear_service_status(name).await;
    }
}

/// Whether `pool`'s database answers within `timeout`.
async fn probe(pool: &PgPool, timeout: Duration) -> bool {
    let probe = sqlx::query_scalar!("select 1 as reachable").fetch_one(pool);
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(_)))
}

/// `salesopp_db_up{pool}`, set once what it reports is in force.
fn record_up(label: &str, reachable: bool) {
    crate::metrics::metrics()
        .database_up
        .with_label_values(&[label])
        .set(i64::from(reachable));
}

/// Probes the databases forever: every service SERVING or NOT_SERVING as the primary
/// answers; the read-only calls on the replica while it answers, else on the primary.
async fn watch_database(
    pools: Pools,
    reporter: HealthReporter,
    names: Vec<&'static str>,
    interval: Duration,
) {
    let probe_timeout = interval.max(Duration::from_secs(1));
    let mut last = None;
    let mut last_replica = None;
    loop {
        // Both at once, so a replica that hangs does not slow the primary's verdict.
        let (reachable, replica_reachable) =
            tokio::join!(probe(pools.primary(), probe_timeout), async {
                match pools.replica() {
                    Some(replica) => Some(probe(replica, probe_timeout).await),
                    None => None,
                }
            });
        record_up(PRIMARY_POOL, reachable);
        if last != Some(reachable) {
            if reachable {
                tracing::info!("database reachable: SERVING");
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
            }
            let status = if reachable {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, &names, status).await;
            last = Some(reachable);
        }
        if let Some(replica_reachable) = replica_reachable {
            pools.set_replica_reachable(replica_reachable);
            record_up(READ_POOL, replica_reachable);
            if last_replica != Some(replica_reachable) {
                if replica_reachable {
                    tracing::info!("read replica reachable: read-only calls served from it");
                } else {
                    tracing::warn!(
                        "read replica unreachable: read-only calls served from the primary"
                    );
                }
                last_replica = Some(replica_reachable);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Accepted connections with Nagle's algorithm off: tonic does not apply `tcp_nodelay` to
/// an incoming stream it is given, and with Nagle on, small responses wait for the peer's
/// delayed ACK (about 40 ms a call).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        })
    })
}

/// Reflection v1 and v1alpha over the suite's descriptors, health's and the error details'.
fn reflection(
    names: &[&'static str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(salesopp_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so generic clients decode them.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            // Both reflection versions' own descriptors, so either one can be described
            // (`buf curl --list-methods` asks v1 about v1alpha).
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name(HEALTH_SERVICE)
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    Ok((reflection_v1, reflection_v1alpha))
}

/// Serves `routes` (the salesopp services, already wrapped in authentication) with health
/// and reflection until `options.shutdown` resolves and in-flight calls finish (or the
/// grace period ends). `service_names` are the fully qualified names in `routes`; `pools`
/// are the ones the services use (the same values: the probe decides where their reads go).
pub async fn serve(
    pools: Option<Pools>,
    routes: Routes,
    service_names: &[&'static str],
    options: ServeOptions,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let pools_for_metrics = pools.clone();
    let names = service_names.to_vec();
    let watcher = match pools {
        Some(pools) => {
            set_all(&reporter, &names, ServingStatus::NotServing).await;
            Some(tokio::spawn(watch_database(
                pools,
                reporter.clone(),
                names.clone(),
                options.health_interval,
            )))
        }
        // A process with no database of its own (the gateway) is healthy while it runs.
        None => {
            set_all(&reporter, &names, ServingStatus::Serving).await;
            None
        }
    };

    let (reflection_v1, reflection_v1alpha) = reflection(&names)?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let local_addr = options.listener.local_addr()?;
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = options.shutdown;
    let mut drain_reporter = reporter.clone();
    let drain_names = names.clone();
    let draining = options.draining;
    let signal = async move {
        shutdown.await;
        if let Some(watcher) = watcher {
            watcher.abort();
            // Stopped for good, so it cannot report SERVING again after NOT_SERVING.
            let _ = watcher.await;
        }
        set_all(&drain_reporter, &drain_names, ServingStatus::NotServing).await;
        if let Some(draining) = draining {
            let _ = draining.send(true);
        }
        end_watches(&mut drain_reporter, &drain_names).await;
        let _ = stopping_tx.send(());
    };
    tracing::info!(%local_addr, services = ?names, "serving");
    if let Some(metrics_listener) = options.metrics_listener {
        tracing::info!(addr = ?metrics_listener.local_addr().ok(), "serving /metrics");
        tokio::spawn(crate::metrics::serve(metrics_listener, pools_for_metrics));
    }
    let server = tonic::transport::Server::builder()
        // HTTP/2 pings keep idle connections and long event streams alive through load
        // balancers and NAT (which drop idle flows after minutes), and find dead peers.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(HTTP2_KEEPALIVE_INTERVAL))
        // Outermost, so that everything below (metrics, authentication, the handler) runs
        // inside the call's span and logs with its trace id.
        .layer(crate::trace::ServerTraceLayer)
        .layer(crate::metrics::MetricsLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(options.listener), signal);
    let grace = options.grace;
    tokio::select! {
        result = server => result?,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "grace period over: exiting with calls still in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}
