//! Metrics as Prometheus sees them: the suite served with its `/metrics` listener, scraped
//! over HTTP after real calls, with the counts, codes by name, latency, pool, database and
//! change-feed metrics the dashboards and alerts in `deploy/` read.
//!
//! The metrics are process-wide, so the tests of this file take turns ([`TURN`]) and compare
//! the scrape after their calls with the one before.

use std::time::Duration;

use salesopp_kit::metrics::CODE_NAMES;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_tests::fixtures::{money, rid};
use salesopp_tests::scrape::{Scrape, scrape};
use salesopp_tests::{
    SuiteOptions, World, admin_token, authed, expect_code, expect_invalid, rep_token,
};
use tonic::Code;

/// One test at a time: the counts are the process's.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GET_CUSTOMER: &str = "/salesopp.customer.v1.CustomerService/GetCustomer";
const CALLS: &str = "salesopp_grpc_calls_total";

async fn world_with_metrics() -> World {
    World::with(SuiteOptions {
        metrics: true,
        ..Default::default()
    })
    .await
}

fn metrics_addr(world: &World) -> std::net::SocketAddr {
    world.suite.metrics_addr.expect("the suite serves /metrics")
}

/// Scrapes until `done` holds of a scrape (the background gauges are set every few seconds).
async fn scrape_until(
    addr: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scraped = scrape(addr).await;
        if done(&scraped) {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One customer, then GetCustomer answered OK, INVALID_ARGUMENT and NOT_FOUND once each,
/// and an opportunity (one event).
async fn make_calls(world: &mut World) {
    let token = admin_token();
    let customer = world.customer(&token, "Metrics Trading Co., Ltd.").await;
    world
        .customers
        .get_customer(authed(
            &token,
            cpb::GetCustomerRequest {
                id: customer.id.clone(),
            },
        ))
        .await
        .expect("get customer");
    expect_invalid(
        world
            .customers
            .get_customer(authed(
                &token,
                cpb::GetCustomerRequest {
                    id: "not-a-uuid".into(),
                },
            ))
            .await,
        "id",
    );
    expect_code(
        world
            .customers
            .get_customer(authed(
                &token,
                cpb::GetCustomerRequest {
                    id: uuid::Uuid::new_v4().to_string(),
                },
            ))
            .await,
        Code::NotFound,
    );
    create_opportunity(world, &customer.id, "Metered pumps").await;
}

async fn create_opportunity(world: &mut World, customer_id: &str, title: &str) {
    world
        .try_create_request(
            &rep_token(),
            opb::CreateOpportunityRequest {
                opportunity: Some(opb::Opportunity {
                    customer_id: customer_id.to_owned(),
                    title: title.to_owned(),
                    amount: Some(money("THB", 100_000, 0)),
                    ..Default::default()
                }),
                request_id: rid(),
                note: String::new(),
            },
        )
        .await
        .expect("create opportunity");
}

#[tokio::test]
async fn a_scrape_counts_the_calls_by_method_and_code_name() {
    let _turn = TURN.lock().await;
    let mut world = world_with_metrics().await;
    let addr = metrics_addr(&world);
    let before = scrape(addr).await;
    make_calls(&mut world).await;
    // The sequencer places the opportunity's event in the background.
    let placed_before = before.count("salesopp_events_placed_total", &[]);
    let after = scrape_until(addr, "the event placed", |s| {
        s.count("salesopp_events_placed_total", &[]) > placed_before
    })
    .await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };

    // Exactly one call of each code, by its name.
    for code in ["OK", "INVALID_ARGUMENT", "NOT_FOUND"] {
        assert_eq!(
            delta(CALLS, &[("method", GET_CUSTOMER), ("code", code)]),
            1.0,
            "GetCustomer {code}"
        );
    }
    assert_eq!(
        delta(
            CALLS,
            &[
                (
                    "method",
                    "/salesopp.customer.v1.CustomerService/CreateCustomer"
                ),
                ("code", "OK")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            CALLS,
            &[
                (
                    "method",
                    "/salesopp.opportunity.v1.OpportunityService/CreateOpportunity"
                ),
                ("code", "OK")
            ]
        ),
        1.0
    );
    // No code is labelled by its number any more.
    for sample in after.samples.iter().filter(|s| s.name == CALLS) {
        let code = &sample.labels["code"];
        assert!(
            CODE_NAMES.contains(&code.as_str()) || code == "transport",
            "code label {code:?}"
        );
    }

    // The latency histogram saw the three GetCustomer calls, each in some bucket.
    let method = [("method", GET_CUSTOMER)];
    assert_eq!(delta("salesopp_grpc_call_seconds_count", &method), 3.0);
    assert_eq!(
        delta(
            "salesopp_grpc_call_seconds_bucket",
            &[("method", GET_CUSTOMER), ("le", "+Inf")]
        ),
        3.0
    );
    assert!(delta("salesopp_grpc_call_seconds_sum", &method) > 0.0);
    assert!(
        after
            .samples
            .iter()
            .filter(|s| s.name == "salesopp_grpc_call_seconds_bucket")
            .count()
            > 3,
        "latency buckets"
    );

    // The pool as of the scrape, and the database answering the health probe.
    // The primary's: without DATABASE_READ_URL there is no `read` pool (tests/tests/replica.rs).
    let primary = ("pool", "primary");
    let idle = after.value(
        "salesopp_db_pool_connections",
        &[primary, ("state", "idle")],
    );
    let in_use = after.value(
        "salesopp_db_pool_connections",
        &[primary, ("state", "in_use")],
    );
    assert!(
        matches!((idle, in_use), (Some(i), Some(u)) if i >= 0.0 && u >= 0.0 && i + u >= 1.0),
        "pool gauges: idle {idle:?}, in use {in_use:?}"
    );
    assert_eq!(after.value("salesopp_db_up", &[primary]), Some(1.0));

    // The change feed: the event placed; the outbox backlog measured (nothing waits once it
    // is placed); the relay's lag is exported by every process (the relay sets it).
    assert_eq!(delta("salesopp_events_placed_total", &[]), 1.0);
    let drained = scrape_until(addr, "the outbox backlog measured at 0", |s| {
        s.value("salesopp_event_outbox_backlog_events", &[]) == Some(0.0)
    })
    .await;
    for name in [
        "salesopp_event_outbox_backlog_seconds",
        "salesopp_event_relay_lag_events",
        "salesopp_event_relay_lag_seconds",
        "salesopp_event_streams_open",
        "salesopp_event_stream_lag_seconds_count",
    ] {
        assert!(drained.value(name, &[]).is_some(), "{name} in the scrape");
    }
}

/// The backlog gauges count the events the sequencer has not placed yet: while a transaction
/// holds the lock every placing batch takes (a sequencer stuck in its batch), committed
/// events wait, show in the scrape, and the gauges return to 0 once it ends and they are
/// placed.
#[tokio::test]
async fn the_outbox_backlog_shows_events_waiting_to_be_placed() {
    let _turn = TURN.lock().await;
    let mut world = world_with_metrics().await;
    let addr = metrics_addr(&world);
    let token = admin_token();
    let customer = world.customer(&token, "Backlog Supplies Co., Ltd.").await;
    let mut open = world.db().begin().await.expect("begin");
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(salesopp_outbox::sequencer::BATCH_LOCK)
        .execute(&mut *open)
        .await
        .expect("hold the sequencer's batch lock");
    for title in ["Held pumps", "Held valves"] {
        create_opportunity(&mut world, &customer.id, title).await;
    }
    let (waiting, _) = salesopp_outbox::backlog::measure(world.db())
        .await
        .expect("measure");
    assert_eq!(waiting, 2, "both events wait while placement is stopped");
    let held = scrape_until(addr, "the backlog of 2", |s| {
        s.value("salesopp_event_outbox_backlog_events", &[]) == Some(2.0)
    })
    .await;
    assert!(held.count("salesopp_event_outbox_backlog_seconds", &[]) >= 0.0);

    open.rollback().await.expect("rollback");
    scrape_until(addr, "the backlog drained", |s| {
        s.value("salesopp_event_outbox_backlog_events", &[]) == Some(0.0)
            && s.value("salesopp_event_outbox_backlog_seconds", &[]) == Some(0.0)
    })
    .await;
}

/// The `salesopp_...` metric names in `text` (PromQL, or a file of it).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("salesopp_") {
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of a Grafana dashboard, wherever it is in the JSON.
fn exprs(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(expr) if key == "expr" => found.push(expr.clone()),
                    other => exprs(other, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, found)),
        _ => {}
    }
}

/// The dashboard and the alerts in `deploy/` query only metrics the program exports: every
/// `salesopp_...` name in them is a sample name of a running suite's scrape (a histogram
/// read as `x_bucket`, `x_sum`, `x_count`, as PromQL reads it).
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let _turn = TURN.lock().await;
    let prod = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kustomize/overlays/prod/monitoring"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{prod}/dashboard.json")).expect("dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    let dashboard_names = metric_names(&found.join("\n"));
    let rule_names = metric_names(
        &std::fs::read_to_string(format!("{prod}/prometheusrule.yaml"))
            .expect("prometheusrule.yaml"),
    );
    // What the issue asks the dashboard to show, and the alerts to watch.
    for name in [
        "salesopp_grpc_calls_total",
        "salesopp_grpc_call_seconds_bucket",
        "salesopp_db_pool_connections",
        "salesopp_event_outbox_backlog_seconds",
        "salesopp_event_relay_lag_seconds",
    ] {
        assert!(dashboard_names.contains(name), "the dashboard shows {name}");
    }
    for name in [
        "salesopp_grpc_calls_total",
        "salesopp_grpc_call_seconds_bucket",
        "salesopp_db_up",
        "salesopp_event_relay_lag_seconds",
        "salesopp_event_outbox_backlog_seconds",
    ] {
        assert!(rule_names.contains(name), "an alert reads {name}");
    }

    let mut world = world_with_metrics().await;
    let addr = metrics_addr(&world);
    make_calls(&mut world).await;
    let scraped = scrape_until(addr, "the pool and database gauges", |s| {
        s.value("salesopp_db_up", &[]) == Some(1.0)
    })
    .await;
    let exported = scraped.names();
    let missing: Vec<_> = dashboard_names
        .union(&rule_names)
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}; exported: {exported:?}"
    );
}
