//! R16 stale deals: `OpportunityStatus.stale_after_days`, `Opportunity.stale_since`,
//! `ListOpportunitiesRequest.stale_only`, the gateway board's `stale`, and the sweep that
//! writes one STALE event per quiet stretch, exactly once across replicas. Time is the
//! database's test clock (`World::set_clock`): no test sleeps to make time pass.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use futures::future::join_all;
use prost::Message as _;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{INTERESTED, PRESENTED, WON, change_request, mask, rid};
use salesopp_tests::scrape::scrape;
use salesopp_tests::serve_process::ServeCommand;
use salesopp_tests::wait::until;
use salesopp_tests::world::set_clock;
use salesopp_tests::{TestDatabase, World, admin_token, authed, field_violations, rep_token};
use sqlx::PgPool;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_salesopp-under-test");

/// Far enough ahead that the event retention never sweeps what the tests write.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 5, 1, 9, 0, 0).unwrap()
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

fn time_of(timestamp: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(timestamp.seconds, timestamp.nanos as u32).expect("a time")
}

fn stale_since(opportunity: &opb::Opportunity) -> Option<DateTime<Utc>> {
    opportunity.stale_since.as_ref().map(time_of)
}

async fn sweep(db: &PgPool) -> Option<u64> {
    salesopp_opportunity::stale::sweep(db, salesopp_opportunity::stale::BATCH)
        .await
        .expect("sweep")
}

/// The STALE events written for `id`, decoded, oldest first.
async fn stale_events(db: &PgPool, id: &str) -> Vec<opb::OpportunityEvent> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "select payload from opportunity_events
         where type = 'STALE' and opportunity_id = $1::uuid order by id",
    )
    .bind(id)
    .fetch_all(db)
    .await
    .expect("events");
    payloads
        .iter()
        .map(|p| opb::OpportunityEvent::decode(p.as_slice()).expect("an event"))
        .collect()
}

async fn all_stale_events(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from opportunity_events where type = 'STALE'")
        .fetch_one(db)
        .await
        .expect("count")
}

async fn set_threshold(
    w: &mut World,
    status_id: &str,
    days: i32,
) -> Result<spb::OpportunityStatus, tonic::Status> {
    w.statuses
        .update_status(authed(
            &admin_token(),
            spb::UpdateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    id: status_id.to_owned(),
                    stale_after_days: days,
                    ..Default::default()
                }),
                update_mask: mask(&["stale_after_days"]),
                request_id: rid(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// CreateStatus of an OPEN "Negotiating" with `stale_after_days`.
async fn create_negotiating(
    w: &mut World,
    stale_after_days: i32,
) -> Result<spb::OpportunityStatus, tonic::Status> {
    w.statuses
        .create_status(authed(
            &admin_token(),
            spb::CreateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    display_name: "Negotiating".to_owned(),
                    probability: 60,
                    stale_after_days,
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn create(w: &mut World, customer_id: &str, title: &str) -> opb::Opportunity {
    w.try_create_request(&rep_token(), new_in_interested(customer_id, title))
        .await
        .expect("create")
}

/// A CreateOpportunity request for an opportunity in INTERESTED.
fn new_in_interested(customer_id: &str, title: &str) -> opb::CreateOpportunityRequest {
    opb::CreateOpportunityRequest {
        opportunity: Some(opb::Opportunity {
            customer_id: customer_id.to_owned(),
            title: title.to_owned(),
            status_id: INTERESTED.to_owned(),
            ..Default::default()
        }),
        request_id: rid(),
        ..Default::default()
    }
}

async fn stale_list(w: &mut World, token: &str) -> Vec<String> {
    w.opps
        .list_opportunities(authed(
            token,
            opb::ListOpportunitiesRequest {
                stale_only: true,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .opportunities
        .into_iter()
        .map(|o| o.id)
        .collect()
}

async fn board_stale(w: &mut World, id: &str) -> bool {
    let board = w
        .gateway
        .get_salesperson_pipeline(authed(
            &rep_token(),
            gpb::GetSalespersonPipelineRequest::default(),
        ))
        .await
        .expect("board")
        .into_inner();
    board
        .stages
        .iter()
        .flat_map(|s| &s.opportunities)
        .find(|item| item.opportunity.as_ref().is_some_and(|o| o.id == id))
        .map(|item| {
            assert_eq!(
                item.stale,
                item.opportunity.as_ref().unwrap().stale_since.is_some(),
                "the board's flag is the opportunity's stale_since"
            );
            item.stale
        })
        .expect("the opportunity is on the board")
}

#[tokio::test]
async fn r16_stale_exactly_at_the_threshold_and_not_a_microsecond_before() {
    let mut w = World::new().await;
    w.set_clock(t0()).await;
    let customer = w.customer(&rep_token(), "Quiet Co").await.id;
    let o = create(&mut w, &customer, "Goes quiet").await;
    let updated = set_threshold(&mut w, INTERESTED, 3)
        .await
        .expect("threshold");
    assert_eq!(updated.stale_after_days, 3);
    assert_eq!(stale_since(&o), None, "just created");

    // A microsecond before the threshold: not stale, nothing listed, nothing sent.
    w.set_clock(t0() + days(3) - Duration::microseconds(1))
        .await;
    assert_eq!(stale_since(&w.get(&rep_token(), &o.id).await), None);
    assert!(stale_list(&mut w, &rep_token()).await.is_empty());
    assert!(!board_stale(&mut w, &o.id).await);
    assert_eq!(sweep(w.db()).await, Some(0));

    // At the threshold exactly: stale since that moment, listed, one event.
    w.set_clock(t0() + days(3)).await;
    let read = w.get(&rep_token(), &o.id).await;
    assert_eq!(stale_since(&read), Some(t0() + days(3)));
    assert_eq!(read.etag, o.etag, "being stale is not a change");
    assert_eq!(stale_list(&mut w, &rep_token()).await, vec![o.id.clone()]);
    assert_eq!(stale_list(&mut w, &admin_token()).await, vec![o.id.clone()]);
    assert!(board_stale(&mut w, &o.id).await);
    assert_eq!(sweep(w.db()).await, Some(1));
    assert_eq!(sweep(w.db()).await, Some(0), "once per quiet stretch");
    let events = stale_events(w.db(), &o.id).await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.r#type, opb::OpportunityEventType::Stale as i32);
    assert_eq!(event.version, o.version + 1, "one event, one version");
    assert_eq!(event.actor.as_ref().expect("actor").id, "salesopp");
    assert_eq!(event.before, None);
    assert_eq!(event.status_change, None);
    let after = event.after.as_ref().expect("after");
    assert_eq!(stale_since(after), Some(t0() + days(3)));
    assert_eq!(after.version, event.version);
    assert_eq!(time_of(event.occur_time.as_ref().unwrap()), t0() + days(3));
    assert_eq!(w.get(&rep_token(), &o.id).await.version, event.version);

    // Any change resets it: not stale, not listed, nothing sent, until a new stretch ends.
    w.set_clock(t0() + days(4)).await;
    let changed = w
        .try_update_request(
            &rep_token(),
            opb::UpdateOpportunityRequest {
                opportunity: Some(opb::Opportunity {
                    id: o.id.clone(),
                    next_step: "call back".to_owned(),
                    ..Default::default()
                }),
                update_mask: mask(&["next_step"]),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(stale_since(&changed), None);
    assert_eq!(stale_since(&w.get(&rep_token(), &o.id).await), None);
    assert!(stale_list(&mut w, &rep_token()).await.is_empty());
    assert_eq!(sweep(w.db()).await, Some(0));
    w.set_clock(t0() + days(7)).await;
    assert_eq!(
        stale_since(&w.get(&rep_token(), &o.id).await),
        Some(t0() + days(7))
    );
    assert_eq!(sweep(w.db()).await, Some(1), "a new stretch, a new event");
    assert_eq!(stale_events(w.db(), &o.id).await.len(), 2);

    // A status change resets it too, and a closed opportunity is never stale.
    let moved = w
        .try_change(&rep_token(), change_request(&o.id, WON))
        .await
        .expect("won")
        .opportunity
        .expect("opportunity");
    assert_eq!(stale_since(&moved), None);
    w.set_clock(t0() + days(400)).await;
    assert_eq!(stale_since(&w.get(&rep_token(), &o.id).await), None);
    assert_eq!(sweep(w.db()).await, Some(0));
    assert_eq!(stale_events(w.db(), &o.id).await.len(), 2);
}

#[tokio::test]
async fn r16_a_threshold_change_applies_to_opportunities_already_in_the_status() {
    let mut w = World::new().await;
    w.set_clock(t0()).await;
    let customer = w.customer(&rep_token(), "Waiting Co").await.id;
    let o = create(&mut w, &customer, "Waiting").await;
    let other = create(&mut w, &customer, "Elsewhere").await;
    w.try_change(&rep_token(), change_request(&other.id, PRESENTED))
        .await
        .expect("presented");

    // No threshold: never stale, however long.
    w.set_clock(t0() + days(10)).await;
    assert_eq!(stale_since(&w.get(&rep_token(), &o.id).await), None);
    assert_eq!(sweep(w.db()).await, Some(0));

    // A threshold set now makes it stale since then (update_time + 5 days), at once; the
    // opportunity in another status is not.
    set_threshold(&mut w, INTERESTED, 5)
        .await
        .expect("threshold");
    assert_eq!(
        stale_since(&w.get(&rep_token(), &o.id).await),
        Some(t0() + days(5))
    );
    assert_eq!(stale_since(&w.get(&rep_token(), &other.id).await), None);
    assert_eq!(stale_list(&mut w, &rep_token()).await, vec![o.id.clone()]);
    assert_eq!(sweep(w.db()).await, Some(1));

    // Raised past its quiet time: not stale any more.
    set_threshold(&mut w, INTERESTED, 20)
        .await
        .expect("threshold");
    assert_eq!(stale_since(&w.get(&rep_token(), &o.id).await), None);
    assert!(stale_list(&mut w, &rep_token()).await.is_empty());
    // Lowered again: stale again, but this quiet stretch was already told: no second event.
    set_threshold(&mut w, INTERESTED, 5)
        .await
        .expect("threshold");
    assert_eq!(
        stale_since(&w.get(&rep_token(), &o.id).await),
        Some(t0() + days(5))
    );
    assert_eq!(sweep(w.db()).await, Some(0));
    assert_eq!(stale_events(w.db(), &o.id).await.len(), 1);
    // 0 turns it off.
    set_threshold(&mut w, INTERESTED, 0)
        .await
        .expect("threshold");
    assert_eq!(stale_since(&w.get(&rep_token(), &o.id).await), None);
}

#[tokio::test]
async fn r16_thresholds_are_validated_and_closing_statuses_are_never_stale() {
    let mut w = World::new().await;
    for (status_id, value, field) in [
        (WON, 7, "status.stale_after_days"),
        (INTERESTED, -1, "status.stale_after_days"),
        (INTERESTED, 3651, "status.stale_after_days"),
    ] {
        let status = set_threshold(&mut w, status_id, value)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = field_violations(&status);
        assert!(violations.iter().any(|(f, _)| f == field), "{violations:?}");
    }
    // The range is reported with the request's other violations, before the status is read.
    let both = w
        .statuses
        .update_status(authed(
            &admin_token(),
            spb::UpdateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    id: uuid::Uuid::new_v4().to_string(),
                    display_name: "x".repeat(500),
                    stale_after_days: -1,
                    ..Default::default()
                }),
                update_mask: mask(&["display_name", "stale_after_days"]),
                request_id: rid(),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(both.code(), Code::InvalidArgument, "{both:?}");
    let fields: Vec<String> = field_violations(&both)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert!(
        fields.contains(&"status.display_name".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"status.stale_after_days".to_owned()),
        "{fields:?}"
    );
    // `*` and an empty mask take it too.
    for update_mask in [mask(&["*"]), None] {
        let status = w
            .statuses
            .update_status(authed(
                &admin_token(),
                spb::UpdateStatusRequest {
                    status: Some(spb::OpportunityStatus {
                        id: PRESENTED.to_owned(),
                        display_name: "Presented".to_owned(),
                        probability: 20,
                        stale_after_days: 9,
                        ..Default::default()
                    }),
                    update_mask,
                    request_id: rid(),
                },
            ))
            .await
            .expect("updated")
            .into_inner();
        assert_eq!(status.stale_after_days, 9);
    }
    let created = create_negotiating(&mut w, -3).await.expect_err("refused");
    assert_eq!(created.code(), Code::InvalidArgument);
    assert!(
        field_violations(&created)
            .iter()
            .any(|(f, _)| f == "status.stale_after_days")
    );
    let created = create_negotiating(&mut w, 14).await.expect("created");
    assert_eq!(created.stale_after_days, 14);
    // The schema holds the rule for any writer.
    let refused =
        sqlx::query("update opportunity_statuses set stale_after_days = 3 where id = $1::uuid")
            .bind(WON)
            .execute(w.db())
            .await;
    assert!(
        refused.is_err(),
        "a closing status is never stale, even by SQL"
    );
}

#[tokio::test]
async fn r16_concurrent_sweeps_write_one_event_per_opportunity() {
    let mut w = World::new().await;
    w.set_clock(t0()).await;
    let customer = w.customer(&rep_token(), "Many Co").await.id;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(create(&mut w, &customer, &format!("Deal {n}")).await.id);
    }
    set_threshold(&mut w, INTERESTED, 2)
        .await
        .expect("threshold");
    w.set_clock(t0() + days(2)).await;
    let sweeps = join_all((0..8).map(|_| sweep(w.db()))).await;
    let mut sent: u64 = sweeps.iter().flatten().sum();
    // A sweep that found another sweeping left its share to the next round.
    while let Some(more) = sweep(w.db()).await {
        if more == 0 {
            break;
        }
        sent += more;
    }
    assert_eq!(sent, ids.len() as u64);
    for id in &ids {
        assert_eq!(stale_events(w.db(), id).await.len(), 1, "{id}");
    }
}

/// Sums a counter over its labels.
async fn sweeps_of(metrics: std::net::SocketAddr) -> f64 {
    let s = scrape(metrics).await;
    s.count("salesopp_stale_sweeps_total", &[("outcome", "ran")])
        + s.count("salesopp_stale_sweeps_total", &[("outcome", "skipped")])
}

#[tokio::test]
async fn r16_two_running_replicas_write_one_stale_event() {
    let database = TestDatabase::create().await;
    let db = database.pool().await;
    set_clock(&db, t0()).await;
    let start = || {
        ServeCommand::new(BINARY, Some(&database.url()))
            .with_metrics()
            .env("SALESOPP_STALE_INTERVAL", "20ms")
            .start()
    };
    let mut a = start();
    let mut b = start();
    a.until_serving().await;
    b.until_serving().await;

    // An opportunity written through one replica, gone quiet past its status's threshold.
    let channel = a.connect().await.expect("connect");
    let mut customers =
        salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient::new(
            channel.clone(),
        );
    let customer = customers
        .create_customer(authed(
            &rep_token(),
            salesopp_proto::customer::v1::CreateCustomerRequest {
                customer: Some(salesopp_proto::customer::v1::Customer {
                    display_name: "Replica Co".to_owned(),
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("customer")
        .into_inner();
    let mut opportunities = OpportunityServiceClient::new(channel);
    let o = opportunities
        .create_opportunity(authed(
            &rep_token(),
            new_in_interested(&customer.id, "Two replicas"),
        ))
        .await
        .expect("create")
        .into_inner();
    sqlx::query("update opportunity_statuses set stale_after_days = 1 where id = $1::uuid")
        .bind(INTERESTED)
        .execute(&db)
        .await
        .expect("threshold");
    set_clock(&db, t0() + days(1)).await;

    until("a replica writes the STALE event", || async {
        all_stale_events(&db).await >= 1
    })
    .await;
    // Both replicas go on sweeping (two more rounds each counted, so at least one begun
    // after the event committed): neither writes a second event.
    let (seen_a, seen_b) = (sweeps_of(a.metrics()).await, sweeps_of(b.metrics()).await);
    until("both replicas sweep twice more", || async {
        sweeps_of(a.metrics()).await >= seen_a + 2.0 && sweeps_of(b.metrics()).await >= seen_b + 2.0
    })
    .await;
    assert_eq!(all_stale_events(&db).await, 1);
    let events = stale_events(&db, &o.id).await;
    assert_eq!(events.len(), 1);
    let written: f64 = [scrape(a.metrics()).await, scrape(b.metrics()).await]
        .iter()
        .map(|s| s.count("salesopp_stale_events_total", &[]))
        .sum();
    assert_eq!(written, 1.0, "one replica wrote it");

    a.terminate();
    b.terminate();
    a.exit_status(StdDuration::from_secs(40)).await;
    b.exit_status(StdDuration::from_secs(40)).await;
}
