//! Draining on SIGTERM, end to end: the real `salesopp serve` as a child process, with a
//! unary call in flight (held inside the server by a row lock the test owns), an open event
//! stream and a health watch held open to the end (as gRPC client-side health checking holds
//! one), then SIGTERM. DESIGN: "SIGTERM: stop taking calls, finish the
//! ones in flight, exit within the grace period."
//!
//! No timing is asserted beyond "within the grace period": every wait polls for a state, with
//! a generous deadline that only guards against hangs.

use std::time::Duration;

use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::opportunity::v1::watch_opportunity_events_request::Start;
use salesopp_proto::opportunity::v1::watch_opportunity_events_response::Kind;
use salesopp_tests::fixtures::{PRESENTED, change_request, money, rid};
use salesopp_tests::serve_process::ServeCommand;
use salesopp_tests::{TestDatabase, admin_token, authed, rep_token};
use sqlx::Connection as _;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_types::StatusExt as _;

/// Guards every wait against a hang; never a timing assertion.
/// The real command line, built by this package.
const BINARY: &str = env!("CARGO_BIN_EXE_salesopp-under-test");
const PATIENCE: Duration = Duration::from_secs(30);
/// The grace period the server is started with.
const GRACE_SECONDS: u64 = 20;
/// What the process may take past its grace period to exit (a loaded machine).
const EXIT_MARGIN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const OPPORTUNITY_SERVICE: &str = "salesopp.opportunity.v1.OpportunityService";

/// The next health status on a watch, skipping repeats of `skip`.
async fn next_health(
    watch: &mut tonic::Streaming<HealthCheckResponse>,
    skip: ServingStatus,
) -> Option<i32> {
    loop {
        let message = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("the health watch answers")
            .expect("the health watch is open");
        match message {
            Some(response) if response.status == skip as i32 => continue,
            other => return other.map(|response| response.status),
        }
    }
}

/// Waits until a session of the test's database waits for a lock held by `holder` (a backend
/// pid), i.e. the server's call is blocked on the test's row lock.
async fn until_blocked_by(
    db: &sqlx::PgPool,
    holder: i32,
    call: &tokio::task::JoinHandle<impl Sized>,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'
               and $1 = any(pg_blocking_pids(pid))",
        )
        .bind(holder)
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            !call.is_finished(),
            "the call finished without waiting for the row lock"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never waited for the row lock"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_ends_streams_and_refuses_new_connections() {
    let database = TestDatabase::create().await;
    let db = database.pool().await;
    let mut server = ServeCommand::new(BINARY, Some(&database.url()))
        .env("SALESOPP_SHUTDOWN_GRACE_SECONDS", GRACE_SECONDS.to_string())
        .start();
    server.until_serving().await;

    // One connection opened before SIGTERM carries the health watch, the event stream and
    // the call in flight.
    let connected = server.connect().await.expect("connect to the server");
    let mut customers = CustomerServiceClient::new(connected.clone());
    let mut opps = OpportunityServiceClient::new(connected.clone());
    let customer = customers
        .create_customer(authed(
            &admin_token(),
            cpb::CreateCustomerRequest {
                customer: Some(cpb::Customer {
                    display_name: "Siam Widgets Co., Ltd.".to_owned(),
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("create customer")
        .into_inner();
    let opportunity = opps
        .create_opportunity(authed(
            &rep_token(),
            pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
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

    let mut health = HealthClient::new(connected.clone())
        .watch(HealthCheckRequest {
            service: OPPORTUNITY_SERVICE.to_owned(),
        })
        .await
        .expect("watch health")
        .into_inner();
    assert_eq!(
        next_health(&mut health, ServingStatus::Unknown).await,
        Some(ServingStatus::Serving as i32),
        "the watch starts SERVING"
    );

    let mut events = opps
        .watch_opportunity_events(authed(
            &admin_token(),
            pb::WatchOpportunityEventsRequest {
                start: Some(Start::AfterCursor(String::new())),
                ..Default::default()
            },
        ))
        .await
        .expect("watch opportunity events")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, events.message())
        .await
        .expect("the stream sends its first message")
        .expect("the stream is open")
        .expect("a first message");
    assert!(
        matches!(&first.kind, Some(Kind::Event(event)) if event.opportunity_id == opportunity.id),
        "the first message is the creation's event: {first:?}"
    );

    // The call in flight: a status change that waits inside the server for the row lock the
    // test holds.
    let mut holder = sqlx::PgConnection::connect_with(&database.options)
        .await
        .expect("the test's own connection");
    let holder_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .expect("pg_backend_pid");
    let mut lock = holder.begin().await.expect("begin");
    sqlx::query("select 1 from opportunities where id = $1::uuid for update")
        .bind(&opportunity.id)
        .execute(&mut *lock)
        .await
        .expect("lock the opportunity's row");
    let in_flight = tokio::spawn({
        let mut opps = opps.clone();
        let request = change_request(&opportunity.id, PRESENTED);
        async move {
            opps.change_opportunity_status(authed(&rep_token(), request))
                .await
        }
    });
    until_blocked_by(&db, holder_pid, &in_flight).await;

    let terminated = tokio::time::Instant::now();
    server.terminate();

    // 1. Readiness turns NOT_SERVING, seen on the connection opened before.
    assert_eq!(
        next_health(&mut health, ServingStatus::Serving).await,
        Some(ServingStatus::NotServing as i32),
        "the health watch reports NOT_SERVING after SIGTERM"
    );

    // 2. The open event stream ends with UNAVAILABLE, SERVER_STOPPING.
    let end = loop {
        match tokio::time::timeout(PATIENCE, events.message()).await {
            Err(_) => panic!("the event stream outlived SIGTERM"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the event stream ended without a status"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let reason = end
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone());
    assert_eq!(reason.as_deref(), Some("SERVER_STOPPING"), "{end:?}");

    // 3. New connections are refused (polled: the listener closes once draining begins).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(server.listen())
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new TCP connections are still accepted after SIGTERM"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        server.connect().await.is_err(),
        "a new gRPC channel connected after SIGTERM"
    );

    // 4. Meanwhile the call in flight still waits, and the process waits for it.
    assert!(!in_flight.is_finished(), "the call in flight was cut short");
    server.assert_running("with a call in flight");

    // 5. Released, the call in flight completes, and its change is written.
    lock.rollback().await.expect("release the row lock");
    let changed = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the call in flight completes")
        .expect("the call's task")
        .expect("the call in flight succeeds")
        .into_inner();
    let changed_status = changed
        .opportunity
        .as_ref()
        .map(|o| o.status_id.clone())
        .unwrap_or_default();
    assert_eq!(changed_status, PRESENTED, "{changed:?}");
    let written: String =
        sqlx::query_scalar("select status_id::text from opportunities where id = $1::uuid")
            .bind(&opportunity.id)
            .fetch_one(&db)
            .await
            .expect("read the opportunity");
    assert_eq!(written, PRESENTED, "the change is written");

    // 6. The process exits with status 0 within its grace period, having drained (not cut
    //    short when the grace period ran out).
    let grace = Duration::from_secs(GRACE_SECONDS);
    let status = server
        .exit_status((grace + EXIT_MARGIN).saturating_sub(terminated.elapsed()))
        .await;
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    let log = server.log();
    assert!(
        !log.contains("grace period over"),
        "the server ran out its grace period instead of draining:\n{log}"
    );
    assert!(log.contains("stopped"), "no clean stop in the log:\n{log}");
    // The health watch, held open throughout, did not hold the drain: it ended after
    // reporting NOT_SERVING.
    assert_eq!(
        next_health(&mut health, ServingStatus::NotServing).await,
        None,
        "the health watch ends when the server stops"
    );
}
