//! Traces end to end: the real `salesopp serve` processes export their spans over OTLP/gRPC
//! to a collector served in this test (a real `opentelemetry.proto.collector.trace.v1.
//! TraceService` on 127.0.0.1:0, keeping every span it is sent). DESIGN, Operations:
//! "tracing with JSON logs carrying trace and span ids, and OTLP export configured by the
//! standard `OTEL_*` variables, trace context passed through the gateway."
//!
//! Every wait polls (the collector, the log, health) with a bound that only guards against a
//! hang; no timing is asserted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_tests::fixtures::{money, rid};
use salesopp_tests::serve_process::{ServeCommand, ServeProcess};
use salesopp_tests::{TestDatabase, admin_token, authed, rep_token};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Guards every wait against a hang; never a timing assertion.
/// The real command line, built by this package.
const BINARY: &str = env!("CARGO_BIN_EXE_salesopp-under-test");
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

const GATEWAY_NAME: &str = "traces-test-gateway";
const SERVICES_NAME: &str = "traces-test-services";

// ---------------------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------------------

/// One span as the collector received it, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: opentelemetry_proto::tonic::trace::v1::Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("spans");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP trace collector on a port of its own, until dropped.
struct Collector {
    endpoint: String,
    spans: Spans,
    _stop: oneshot::Sender<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let spans = Spans::default();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(spans.clone()))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        Collector {
            endpoint,
            spans,
            _stop: stop,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.spans.0.lock().expect("spans").clone()
    }

    /// The spans of `trace_id` once `complete` says they are all there.
    async fn trace(&self, trace_id: &str, complete: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let trace: Vec<Received> = self
                .received()
                .into_iter()
                .filter(|span| span.trace_id() == trace_id)
                .collect();
            if complete(&trace) {
                return trace;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the trace never arrived whole: {:#?}",
                summary(&trace)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// (service, name, kind, span id, parent span id) of each span, for failure messages.
fn summary(spans: &[Received]) -> Vec<(String, String, SpanKind, String, String)> {
    spans
        .iter()
        .map(|s| {
            (
                s.service.clone(),
                s.span.name.clone(),
                s.kind(),
                s.span_id(),
                s.parent_span_id(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The processes
// ---------------------------------------------------------------------------------------

/// Every database service (and a gateway of its own, unused here) in one process.
fn services(database: &TestDatabase, otel: &[(&str, String)]) -> ServeProcess {
    with_env(ServeCommand::new(BINARY, Some(&database.url())), otel).start()
}

/// A gateway-only process calling the services of `services`.
fn gateway(services: &ServeProcess, otel: &[(&str, String)]) -> ServeProcess {
    let command = ServeCommand::new(BINARY, None)
        .env("SALESOPP_SERVICE", "gateway")
        .env("SALESOPP_CUSTOMER_URL", services.url())
        .env("SALESOPP_OPPORTUNITY_URL", services.url())
        .env("SALESOPP_STATUS_CONFIG_URL", services.url());
    with_env(command, otel).start()
}

fn with_env(command: ServeCommand, env: &[(&str, String)]) -> ServeCommand {
    env.iter().fold(command, |command, (key, value)| {
        command.env(key, value.clone())
    })
}

async fn channel(server: &ServeProcess) -> Channel {
    server.connect().await.expect("connect to the server")
}

/// SIGTERM, then its exit (status 0) waited for.
async fn stop(server: &mut ServeProcess) {
    server.terminate();
    let status = server.exit_status(PATIENCE).await;
    assert!(status.success(), "exit status {status}:\n{}", server.log());
}

/// The first JSON log line of `server` whose message is `message`, once it has been written.
async fn log_line(server: &ServeProcess, message: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = server
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["fields"]["message"] == message);
        if let Some(line) = found {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {message:?} line in the log:\n{}",
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The variables that export a process's spans to `collector` as `service_name`, in
/// batches sent every 50 ms.
fn otel_env(collector: &Collector, service_name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
        ("OTEL_SERVICE_NAME", service_name.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ]
}

/// A fresh W3C trace context: (traceparent, trace id, the caller's span id).
fn caller_trace() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

fn with_traceparent<T>(token: &str, message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = authed(token, message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

async fn create_customer(
    channel: Channel,
    request: tonic::Request<cpb::CreateCustomerRequest>,
) -> cpb::Customer {
    CustomerServiceClient::new(channel)
        .create_customer(request)
        .await
        .expect("create customer")
        .into_inner()
}

fn new_customer() -> cpb::CreateCustomerRequest {
    cpb::CreateCustomerRequest {
        customer: Some(cpb::Customer {
            display_name: "Siam Widgets Co., Ltd.".to_owned(),
            ..Default::default()
        }),
        request_id: rid(),
    }
}

/// The `(trace_id, span_id)` a JSON log line lists for its `grpc.server` span.
fn call_ids(line: &serde_json::Value) -> (String, String) {
    let span = line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "grpc.server"))
        .unwrap_or_else(|| panic!("no call span in {line}"));
    let id = |key: &str| {
        span[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    (id("trace_id"), id("span_id"))
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

const DOWNSTREAM: [&str; 4] = [
    "salesopp.opportunity.v1.OpportunityService/GetOpportunity",
    "salesopp.opportunity.v1.OpportunityService/ListStatusHistory",
    "salesopp.statusconfig.v1.StatusConfigService/ListStatuses",
    "salesopp.customer.v1.CustomerService/GetCustomer",
];
const COMBINED: &str = "salesopp.gateway.v1.GatewayService/GetOpportunityWithHistory";

#[tokio::test]
async fn one_gateway_call_is_one_trace_across_the_gateway_and_the_services() {
    let database = TestDatabase::create().await;
    let collector = Collector::start().await;
    let mut services = services(&database, &otel_env(&collector, SERVICES_NAME));
    services.until_serving().await;
    let mut gateway = gateway(&services, &otel_env(&collector, GATEWAY_NAME));
    gateway.until_serving().await;

    let customer = create_customer(
        channel(&services).await,
        authed(&admin_token(), new_customer()),
    )
    .await;
    let opportunity = OpportunityServiceClient::new(channel(&services).await)
        .create_opportunity(authed(
            &rep_token(),
            opb::CreateOpportunityRequest {
                opportunity: Some(opb::Opportunity {
                    customer_id: customer.id.clone(),
                    title: "ERP rollout, 40 seats".to_owned(),
                    amount: Some(money("THB", 100_000, 0)),
                    ..Default::default()
                }),
                request_id: rid(),
                note: String::new(),
            },
        ))
        .await
        .expect("create opportunity")
        .into_inner();

    let (traceparent, trace_id, caller_span_id) = caller_trace();
    let detail = GatewayServiceClient::new(channel(&gateway).await)
        .get_opportunity_with_history(with_traceparent(
            &rep_token(),
            gpb::GetOpportunityWithHistoryRequest {
                opportunity_id: opportunity.id.clone(),
                history_page_size: 0,
            },
            &traceparent,
        ))
        .await
        .expect("the combined call")
        .into_inner();
    assert_eq!(
        detail.opportunity.expect("the opportunity").id,
        opportunity.id
    );

    let server_span = |spans: &[Received], service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.span.name == name && s.kind() == SpanKind::Server)
            .cloned()
    };
    let trace = collector
        .trace(&trace_id, |spans| {
            server_span(spans, GATEWAY_NAME, COMBINED).is_some()
                && DOWNSTREAM
                    .iter()
                    .all(|name| server_span(spans, SERVICES_NAME, name).is_some())
                && server_span(spans, SERVICES_NAME, DOWNSTREAM[0]).is_some_and(|get| {
                    spans.iter().any(|s| {
                        s.span.name == "SELECT opportunities" && s.parent_span_id() == get.span_id()
                    })
                })
        })
        .await;
    let everything = summary(&trace);

    // The gateway's server span: a child of the caller's span, with the RPC attributes.
    let combined = server_span(&trace, GATEWAY_NAME, COMBINED).expect("the gateway's span");
    assert_eq!(combined.parent_span_id(), caller_span_id, "{everything:#?}");
    assert_eq!(combined.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        combined.attribute("rpc.service").as_deref(),
        Some("salesopp.gateway.v1.GatewayService")
    );
    assert_eq!(
        combined.attribute("rpc.method").as_deref(),
        Some("GetOpportunityWithHistory")
    );
    assert_eq!(
        combined.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );

    // Each downstream server span is the child of a client span of the gateway's for the
    // same method, itself a child of the gateway's server span.
    for name in DOWNSTREAM {
        let downstream = server_span(&trace, SERVICES_NAME, name).expect("downstream span");
        let client = trace
            .iter()
            .find(|s| s.span_id() == downstream.parent_span_id())
            .unwrap_or_else(|| panic!("{name}: its parent is not in the trace: {everything:#?}"));
        assert_eq!(client.service, GATEWAY_NAME, "{name}: {everything:#?}");
        assert_eq!(client.kind(), SpanKind::Client, "{name}: {everything:#?}");
        assert_eq!(client.span.name, name, "{everything:#?}");
        assert_eq!(
            client.parent_span_id(),
            combined.span_id(),
            "{everything:#?}"
        );
        assert_eq!(
            downstream.attribute("rpc.grpc.status_code").as_deref(),
            Some("0")
        );
    }

    // The database work of GetOpportunity: a span of its own inside that call's span.
    let get = server_span(&trace, SERVICES_NAME, DOWNSTREAM[0]).expect("GetOpportunity");
    let select = trace
        .iter()
        .find(|s| s.span.name == "SELECT opportunities" && s.parent_span_id() == get.span_id())
        .unwrap_or_else(|| panic!("no database span in GetOpportunity: {everything:#?}"));
    assert_eq!(select.service, SERVICES_NAME);
    assert_eq!(select.kind(), SpanKind::Client);
    assert_eq!(
        select.attribute("db.system.name").as_deref(),
        Some("postgresql")
    );
}

#[tokio::test]
async fn a_log_line_of_a_call_carries_its_trace_id_and_span_id() {
    let database = TestDatabase::create().await;
    let collector = Collector::start().await;
    let mut services = services(&database, &otel_env(&collector, SERVICES_NAME));
    services.until_serving().await;

    let (traceparent, trace_id, caller_span_id) = caller_trace();
    let customer = create_customer(
        channel(&services).await,
        with_traceparent(&admin_token(), new_customer(), &traceparent),
    )
    .await;

    let line = log_line(&services, "customer created").await;
    assert_eq!(
        line["fields"]["customer_id"],
        customer.id.as_str(),
        "{line}"
    );
    let (logged_trace, logged_span) = call_ids(&line);
    assert_eq!(logged_trace, trace_id, "{line}");

    // The logged span id is the call's server span, as exported; the write's transaction is
    // a span inside it.
    let name = "salesopp.customer.v1.CustomerService/CreateCustomer";
    let trace = collector
        .trace(&trace_id, |spans| {
            spans.iter().any(|s| s.span.name == name)
                && spans.iter().any(|s| s.span.name == "write transaction")
        })
        .await;
    let call = trace
        .iter()
        .find(|s| s.span.name == name)
        .expect("the call's span");
    assert_eq!(call.span_id(), logged_span, "{line}");
    assert_eq!(call.parent_span_id(), caller_span_id);
    let write = trace
        .iter()
        .find(|s| s.span.name == "write transaction")
        .expect("the write's span");
    assert_eq!(write.parent_span_id(), call.span_id());
}

#[tokio::test]
async fn with_otel_unset_nothing_is_exported_and_logs_still_carry_the_callers_trace() {
    let database = TestDatabase::create().await;

    // No OTEL_EXPORTER_OTLP_*: no export, and a call's log lines still name the caller's
    // trace, with a span id of the call's own.
    let mut quiet = services(
        &database,
        &[("OTEL_SERVICE_NAME", SERVICES_NAME.to_owned())],
    );
    quiet.until_serving().await;
    let (traceparent, trace_id, caller_span_id) = caller_trace();
    create_customer(
        channel(&quiet).await,
        with_traceparent(&admin_token(), new_customer(), &traceparent),
    )
    .await;
    let line = log_line(&quiet, "customer created").await;
    let (logged_trace, logged_span) = call_ids(&line);
    assert_eq!(logged_trace, trace_id, "{line}");
    assert_eq!(logged_span.len(), 16, "{line}");
    assert_ne!(
        logged_span, caller_span_id,
        "the call's own span id: {line}"
    );
    stop(&mut quiet).await;
    let log = quiet.log();
    assert!(
        !log.contains("OTLP"),
        "nothing about export in the log:\n{log}"
    );

    // An endpoint with the SDK disabled: nothing reaches the collector, not even at the
    // shutdown's flush.
    let collector = Collector::start().await;
    let mut env = otel_env(&collector, SERVICES_NAME);
    env.push(("OTEL_SDK_DISABLED", "true".to_owned()));
    let mut disabled = services(&database, &env);
    disabled.until_serving().await;
    create_customer(
        channel(&disabled).await,
        with_traceparent(&admin_token(), new_customer(), &traceparent),
    )
    .await;
    stop(&mut disabled).await;
    let received = collector.received();
    assert!(received.is_empty(), "{:#?}", summary(&received));
}
