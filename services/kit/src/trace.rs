//! Spans of gRPC calls, and W3C trace context in and out.
//!
//! - [`ServerTraceLayer`]: one server span per call, named `<service>/<method>`, with the
//!   OpenTelemetry RPC attributes (`rpc.system`, `rpc.service`, `rpc.method`,
//!   `rpc.grpc.status_code`), its parent taken from the incoming `traceparent` /
//!   `tracestate`. The span records `trace_id` and `span_id` as fields, so every JSON log
//!   line of the call carries them.
//! - [`ClientTraceLayer`]: one client span per outgoing call (the gateway's downstream
//!   calls), its context injected into the request, so the callee's server span is its child.
//!
//! With OTLP export off there is no OpenTelemetry layer to give spans ids. A call that
//! arrived with a trace context then still gets an id of its own in the caller's trace
//! ([`CallTrace`]): its log lines carry the caller's trace id, and the gateway passes the
//! trace on with that id as the parent. Without an incoming context, nothing is invented.
//!
//! The status code is read from the response head, as [`crate::metrics`] reads it (tonic
//! answers every error trailers-only); a response without `grpc-status` there is OK. A
//! streaming call's span ends with its response head, not with its stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The headers of W3C trace context.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context of the call being served, as its downstream calls must carry it: the
/// server span's own when OpenTelemetry made it, else the caller's trace with an id of the
/// call's own (export off), else none. Put in the request's extensions by
/// [`ServerTraceLayer`]; the gateway hands it to its downstream requests.
#[derive(Debug, Clone)]
pub struct CallTrace(SpanContext);

impl CallTrace {
    /// Gives `span` its parent (`incoming`), and says which context the call has.
    fn start(span: &tracing::Span, incoming: &opentelemetry::Context) -> CallTrace {
        let own = match span.set_parent(incoming.clone()) {
            Ok(()) => span.context().span().span_context().clone(),
            // No OpenTelemetry layer, or the span is filtered out: the call joins the
            // caller's trace with a span id of its own.
            Err(_) => {
                let remote = incoming.span().span_context().clone();
                if remote.is_valid() {
                    SpanContext::new(
                        remote.trace_id(),
                        RandomIdGenerator::default().new_span_id(),
                        remote.trace_flags(),
                        false,
                        remote.trace_state().clone(),
                    )
                } else {
                    SpanContext::empty_context()
                }
            }
        };
        if own.is_valid() {
            span.record("trace_id", tracing::field::display(own.trace_id()));
            span.record("span_id", tracing::field::display(own.span_id()));
        }
        CallTrace(own)
    }

    pub fn span_context(&self) -> &SpanContext {
        &self.0
    }
}

/// `(rpc.service, rpc.method)` of a gRPC path; `other` for a path that is not one of the
/// suite's or the standard services' (span names stay a bounded set).
fn rpc_names(path: &str) -> (String, String) {
    let known = path.starts_with("/salesopp.") || path.starts_with("/grpc.");
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if known && path.len() <= 200 && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("other".to_owned(), "other".to_owned()),
    }
}

/// Health probes and reflection come every few seconds from every kubelet and tool: their
/// spans are at debug, so the default filter neither logs nor exports them.
fn is_infrastructure(service: &str) -> bool {
    service.starts_with("grpc.")
}

fn server_span(service: &str, method: &str) -> tracing::Span {
    let name = format!("{service}/{method}");
    macro_rules! server_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "grpc.server",
                otel.name = name.as_str(),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            )
        };
    }
    if is_infrastructure(service) {
        server_span!(tracing::Level::DEBUG)
    } else {
        server_span!(tracing::Level::INFO)
    }
}

fn client_span(service: &str, method: &str) -> tracing::Span {
    let name = format!("{service}/{method}");
    tracing::info_span!(
        "grpc.client",
        otel.name = name.as_str(),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// The gRPC status code of a response head (see the module's note), or `None` when the call
/// failed below gRPC.
fn status_code<R, E>(result: &Result<http::Response<R>, E>) -> Option<i32> {
    let response = result.as_ref().ok()?;
    Some(
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Records the outcome on `span`. A server span is in error only for the codes that mean
/// the server failed (OpenTelemetry's RPC conventions); a client span for any code but OK.
fn record_outcome(span: &tracing::Span, code: Option<i32>, server: bool) {
    use tonic::Code;
    if let Some(code) = code {
        span.record("rpc.grpc.status_code", code);
    }
    let failed = match code.map(Code::from_i32) {
        None => true,
        Some(Code::Ok) => false,
        Some(code) if server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
        Some(_) => true,
    };
    if failed {
        span.record("otel.status_code", "error");
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// A tower layer giving every served call its server span.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (service, method) = rpc_names(request.uri().path());
        let span = server_span(&service, &method);
        let incoming = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        request
            .extensions_mut()
            .insert(CallTrace::start(&span, &incoming));
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = response.await;
                record_outcome(&tracing::Span::current(), status_code(&result), true);
                result
            }
            .instrument(span),
        )
    }
}

/// A tower layer over a client channel giving every outgoing call a client span, child of
/// the current span, and carrying its trace context to the callee.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> tower::Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ClientTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (service, method) = rpc_names(request.uri().path());
        let span = client_span(&service, &method);
        let own = span.context();
        // Without an OpenTelemetry layer the client span has no id: the call's own context
        // (handed over in the request's extensions) is the callee's parent instead.
        let context = if own.span().span_context().is_valid() {
            own
        } else {
            match request.extensions().get::<CallTrace>() {
                Some(call) => {
                    opentelemetry::Context::new().with_remote_span_context(call.0.clone())
                }
                None => opentelemetry::Context::new(),
            }
        };
        let headers = request.headers_mut();
        for name in TRACE_HEADERS {
            headers.remove(name);
        }
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = response.await;
                record_outcome(&tracing::Span::current(), status_code(&result), false);
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_come_from_the_path_and_strangers_are_other() {
        assert_eq!(
            rpc_names("/salesopp.gateway.v1.GatewayService/GetOpportunityWithHistory"),
            (
                "salesopp.gateway.v1.GatewayService".to_owned(),
                "GetOpportunityWithHistory".to_owned()
            )
        );
        assert_eq!(rpc_names("/evil.Service/X").0, "other");
        assert_eq!(rpc_names("/salesopp.a/b/c").0, "other");
    }

    #[test]
    fn without_a_layer_a_call_joins_the_callers_trace_with_an_id_of_its_own() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("header"),
        );
        let incoming = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let call = CallTrace::start(&tracing::Span::none(), &incoming);
        let own = call.span_context();
        assert_eq!(
            own.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(own.is_valid());
        assert_ne!(own.span_id().to_string(), "00f067aa0ba902b7");
        assert!(own.is_sampled());

        let none = CallTrace::start(&tracing::Span::none(), &opentelemetry::Context::new());
        assert!(!none.span_context().is_valid(), "no trace is invented");
    }
}
