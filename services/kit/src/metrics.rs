//! Prometheus metrics, served over plain HTTP on `SALESOPP_METRICS_LISTEN` (`/metrics`):
//! calls per method and status code, call latency per method, the database pools and
//! whether each database answers (label `pool`: `primary`, and `read` for the read replica
//! of `DATABASE_READ_URL` when there is one), and the change feed (events placed, streamed
//! and relayed; open streams; the outbox backlog and the relay's lag; dead letters).
//!
//! The status code is read from the response head: tonic answers every error as a
//! trailers-only response, so `grpc-status` is there for errors; a response without it
//! completed its headers normally and is counted as OK (an error raised mid-stream by a
//! streaming call is the one case counted as OK). The `code` label is the code's canonical
//! name (`OK`, `INVALID_ARGUMENT`, `NOT_FOUND`, ...), as dashboards and alerts spell it;
//! `transport` when the call failed below gRPC.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::db::Pools;

/// The `pool` label of the primary database's gauges (`DATABASE_URL`).
pub const PRIMARY_POOL: &str = "primary";
/// The `pool` label of the read replica's gauges (`DATABASE_READ_URL`).
pub const READ_POOL: &str = "read";

/// The suite's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub calls: IntCounterVec,
    pub latency: HistogramVec,
    /// Connections by `pool` and `state`.
    pub pool: IntGaugeVec,
    /// By `pool`: 1 while that database answers the health probe, 0 while it does not
    /// (processes with a database only; `read` only with a replica).
    pub database_up: IntGaugeVec,
    /// The instances of each downstream service the gateway sends calls to now (those that
    /// answer and report SERVING), by service (gateway processes only).
    pub gateway_instances: IntGaugeVec,
    /// R14 summaries from the totals, by `result`: `hit` (answered from the cache: nothing it
    /// sums changed) or `miss` (read from the database).
    pub pipeline_summary_cache: IntCounterVec,
    pub events: Events,
}

/// The change feed's metrics.
pub struct Events {
    /// Events given their delivery position by the sequencer (written and committed).
    pub placed: IntCounter,
    /// Events committed that the sequencer has still to place, counted
    /// up to 100,000.
    pub outbox_backlog_events: IntGauge,
    /// The age of the oldest event the sequencer has still to place.
    pub outbox_backlog_seconds: Gauge,
    /// Events sent to WatchOpportunityEvents streams.
    pub streamed: IntCounter,
    /// Open WatchOpportunityEvents streams.
    pub open_streams: IntGauge,
    /// From an event's occur_time to its sending on a live stream.
    pub stream_lag: Histogram,
    /// Events JetStream acknowledged from the relay.
    pub relayed: IntCounter,
    /// Placed events the relay has still to publish.
    pub relay_lag_events: IntGauge,
    /// The age of the oldest event the relay has still to publish.
    pub relay_lag_seconds: Gauge,
    /// Events set aside as undecodable.
    pub dead_letters: IntCounter,
    /// Events and idempotency records deleted by retention, by table.
    pub retained_deleted: IntCounterVec,
    /// R16 stale sweeps, by outcome: `ran` (this replica held the sweep's lock) or `skipped`
    /// (another replica was sweeping).
    pub stale_sweeps: IntCounterVec,
    /// STALE events this replica wrote (R16).
    pub stale_events: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("salesopp".into()), None).expect("metrics registry");
    let calls = IntCounterVec::new(
        Opts::new(
            "grpc_calls_total",
            "gRPC calls handled, by method and status code",
        ),
        &["method", "code"],
    )
    .expect("calls metric");
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "grpc_call_seconds",
            "gRPC call latency to the response head, by method",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["method"],
    )
    .expect("latency metric");
    let pool = IntGaugeVec::new(
        Opts::new(
            "db_pool_connections",
            "database pool connections, by pool (primary, read) and state",
        ),
        &["pool", "state"],
    )
    .expect("pool metric");
    let database_up = IntGaugeVec::new(
        Opts::new(
            "db_up",
            "1 while the database answers the health probe, 0 while it does not, by pool (primary, read)",
        ),
        &["pool"],
    )
    .expect("database metric");
    let gateway_instances = IntGaugeVec::new(
        Opts::new(
            "gateway_instances_ready",
            "instances of each downstream service the gateway sends calls to",
        ),
        &["service"],
    )
    .expect("gateway metric");
    let pipeline_summary_cache = IntCounterVec::new(
        Opts::new(
            "pipeline_summary_cache_total",
            "pipeline summaries from the totals, by result: hit (from the cache), miss (read)",
        ),
        &["result"],
    )
    .expect("summary cache metric");
    for result in ["hit", "miss"] {
        pipeline_summary_cache.with_label_values(&[result]);
    }
    for collector in [
        Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(latency.clone()),
        Box::new(pool.clone()),
        Box::new(database_up.clone()),
        Box::new(gateway_instances.clone()),
        Box::new(pipeline_summary_cache.clone()),
    ] {
        registry.register(collector).expect("register metric");
    }
    let events = Events {
        placed: IntCounter::new("events_placed_total", "events placed in the feed")
            .expect("metric"),
        outbox_backlog_events: IntGauge::new(
            "event_outbox_backlog_events",
            "events written that the sequencer has still to place",
        )
        .expect("metric"),
        outbox_backlog_seconds: Gauge::new(
            "event_outbox_backlog_seconds",
            "age of the oldest event the sequencer has still to place",
        )
        .expect("metric"),
        streamed: IntCounter::new("events_streamed_total", "events sent to streams")
            .expect("metric"),
        open_streams: IntGauge::new("event_streams_open", "open event streams").expect("metric"),
        stream_lag: Histogram::with_opts(
            HistogramOpts::new(
                "event_stream_lag_seconds",
                "from an event's occur_time to its sending on a live stream",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("metric"),
        relayed: IntCounter::new("events_relayed_total", "events published to JetStream")
            .expect("metric"),
        relay_lag_events: IntGauge::new(
            "event_relay_lag_events",
            "placed events the relay has still to publish",
        )
        .expect("metric"),
        relay_lag_seconds: Gauge::new(
            "event_relay_lag_seconds",
            "age of the oldest event the relay has still to publish",
        )
        .expect("metric"),
        dead_letters: IntCounter::new(
            "event_dead_letters_total",
            "events set aside because they do not decode",
        )
        .expect("metric"),
        retained_deleted: IntCounterVec::new(
            Opts::new(
                "retention_deleted_total",
                "rows deleted by retention, by table",
            ),
            &["table"],
        )
        .expect("metric"),
        stale_sweeps: IntCounterVec::new(
            Opts::new(
                "stale_sweeps_total",
                "stale-deal sweeps (R16), by outcome: ran, or skipped while another replica swept",
            ),
            &["outcome"],
        )
        .expect("metric"),
        stale_events: IntCounter::new(
            "stale_events_total",
            "STALE events written by this replica (R16)",
        )
        .expect("metric"),
    };
    // Both outcomes exported from the start (0 until a sweep), so an alert on `ran` sees a
    // replica that never swept.
    for outcome in ["ran", "skipped"] {
        events.stale_sweeps.with_label_values(&[outcome]);
    }
    for collector in [
        Box::new(events.placed.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(events.outbox_backlog_events.clone()),
        Box::new(events.outbox_backlog_seconds.clone()),
        Box::new(events.streamed.clone()),
        Box::new(events.open_streams.clone()),
        Box::new(events.stream_lag.clone()),
        Box::new(events.relayed.clone()),
        Box::new(events.relay_lag_events.clone()),
        Box::new(events.relay_lag_seconds.clone()),
        Box::new(events.dead_letters.clone()),
        Box::new(events.retained_deleted.clone()),
        Box::new(events.stale_sweeps.clone()),
        Box::new(events.stale_events.clone()),
    ] {
        registry.register(collector).expect("register metric");
    }
    Metrics {
        registry,
        calls,
        latency,
        pool,
        database_up,
        gateway_instances,
        pipeline_summary_cache,
        events,
    }
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The canonical names of the gRPC status codes, by number (`grpc-status`).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `code` label of a `grpc-status` value: its canonical name; `UNKNOWN` for a number
/// outside the 17 codes (as gRPC itself reads one).
pub fn code_label(grpc_status: &str) -> &'static str {
    grpc_status
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|code| CODE_NAMES.get(code))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Calls of `method` (e.g. `/salesopp.opportunity.v1.OpportunityService/GetOpportunity`)
/// so far, every code together.
pub fn calls_of(method: &str) -> u64 {
    CODE_NAMES
        .iter()
        .chain(&["transport"])
        .map(|code| METRICS.calls.with_label_values(&[method, code]).get())
        .sum()
}

/// The method label: the gRPC path for the suite's and the standard services, `other` for
/// anything else (so a stray client cannot grow the label set without bound).
fn method_label(path: &str) -> String {
    let known = path.starts_with("/salesopp.") || path.starts_with("/grpc.");
    if known && path.len() <= 200 {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}

/// A tower layer recording every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = method_label(path);
        // Errors answered by this call carry its service's name as their domain.
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let domain = crate::error::domain_of_service(service);
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = crate::error::with_domain(domain, response).await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_label),
                Err(_) => "transport",
            };
            METRICS
                .calls
                .with_label_values(&[method.as_str(), code])
                .inc();
            METRICS
                .latency
                .with_label_values(&[method.as_str()])
                .observe(start.elapsed().as_secs_f64());
            result
        })
    }
}

/// Sets the `pool` gauges labelled `label` from `pool` as it is now.
fn record_pool(label: &str, pool: &PgPool) {
    let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
    let size = i64::from(pool.size());
    METRICS.pool.with_label_values(&[label, "idle"]).set(idle);
    METRICS
        .pool
        .with_label_values(&[label, "in_use"])
        .set(size - idle);
}

/// The text exposition of every metric, with the pools' gauges read now.
pub fn render(pools: Option<&Pools>) -> String {
    if let Some(pools) = pools {
        record_pool(PRIMARY_POOL, pools.primary());
        if let Some(replica) = pools.replica() {
            record_pool(READ_POOL, replica);
        }
    }
    let mut buffer = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, pools: Option<Pools>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let pools = pools.clone();
            async move { render(pools.as_ref()) }
        }),
    );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_labelled_by_their_canonical_names() {
        assert_eq!(code_label("0"), "OK");
        assert_eq!(code_label("3"), "INVALID_ARGUMENT");
        assert_eq!(code_label("5"), "NOT_FOUND");
        assert_eq!(code_label("14"), "UNAVAILABLE");
        assert_eq!(code_label("16"), "UNAUTHENTICATED");
        assert_eq!(code_label("17"), "UNKNOWN");
        assert_eq!(code_label("x"), "UNKNOWN");
        // The same names as tonic's codes (`InvalidArgument` is INVALID_ARGUMENT), in order.
        for (number, name) in CODE_NAMES.iter().enumerate() {
            let code = tonic::Code::from_i32(i32::try_from(number).expect("small"));
            let mut snake = String::new();
            for (i, c) in format!("{code:?}").chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_uppercase());
            }
            assert_eq!(&snake, name);
        }
    }
}
