//! Logs and traces, set up once per process.
//!
//! Logs: JSON lines on stdout, filtered by `RUST_LOG` (default `info`). A line written
//! inside a gRPC call lists the call's span with its `trace_id` and `span_id` fields
//! ([`crate::trace`]), so logs and traces join on them.
//!
//! Traces: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and not otherwise (no exporter, no OpenTelemetry
//! layer: spans cost what tracing's cost). The exporter reads the standard variables itself
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_RESOURCE_ATTRIBUTES`); `service.name` is `OTEL_SERVICE_NAME`, else the default the
//! caller gives (`salesopp-<service>`). Bad settings are one warning, never a refusal to
//! serve: traces are worth less than the calls they describe.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The variables that turn export on (the signal's own first, as the exporter reads them).
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
/// The longest a stopping process waits for its last spans to be sent.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's trace export, if on; [`Telemetry::shutdown`] sends what is still queued.
#[derive(Debug, Default)]
#[must_use = "call shutdown() when the process stops, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every span ended so far and stops the exporter (at most a few seconds: a
    /// collector that is down must not hold the process past its grace period).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK's shutdown blocks its thread until the batch thread has exported, and the
        // export itself runs on this runtime's tonic channel: off the async workers.
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "trace export did not flush cleanly"),
            Err(error) => tracing::warn!(%error, "trace export shutdown failed"),
        }
    }
}

/// Whether the environment asks for OTLP trace export.
fn export_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !disabled && ENDPOINT_VARIABLES.iter().any(|name| set(name))
}

/// The resource: what the standard variables say, with `default_service_name` when neither
/// `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names the service.
fn resource(default_service_name: &str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder()
            .with_service_name(default_service_name.to_owned())
            .build()
    }
}

/// The tracer provider exporting over OTLP/gRPC in batches. Needs a Tokio runtime: the
/// exporter's channel lives on it.
fn otlp_provider(default_service_name: &str) -> Result<SdkTracerProvider, String> {
    if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
        && !protocol.trim().is_empty()
        && protocol.trim() != "grpc"
    {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol:?} is not supported: only grpc is"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|error| error.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(default_service_name))
        .build())
}

/// Installs the log subscriber with `traces` beside it; false when one was installed before.
fn install(traces: Option<&SdkTracerProvider>) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false);
    let traces = traces
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("salesopp")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok()
}

/// Installs the JSON log subscriber alone, once per process (short commands: `migrate`).
pub fn init_logs() {
    install(None);
}

/// Installs the JSON log subscriber and, when asked for, the OTLP trace export, once per
/// process; later calls (tests) install nothing and export nothing. Call it inside the
/// Tokio runtime. `default_service_name` is the `service.name` when `OTEL_SERVICE_NAME`
/// is unset.
pub fn init(default_service_name: &str) -> Telemetry {
    // W3C trace context for anything that asks the global propagator; the kit's own layers
    // speak it whatever the global says (`crate::trace`).
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, warning) = if export_requested() {
        match otlp_provider(default_service_name) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    let installed = install(provider.as_ref());
    if let Some(error) = warning {
        tracing::warn!(%error, "OTLP trace export is off: its settings are not usable");
    }
    match provider {
        Some(provider) if installed => {
            tracing::info!(service = %default_service_name, "exporting traces over OTLP");
            Telemetry {
                provider: Some(provider),
            }
        }
        // A subscriber was installed before: this provider would receive nothing.
        Some(provider) => {
            let _ = provider.shutdown();
            Telemetry::default()
        }
        None => Telemetry::default(),
    }
}
