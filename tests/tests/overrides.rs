//! R17 probability overrides: set by hand on an open opportunity (`probability_source`
//! MANUAL), reset by a status change or by `probability_source` STATUS in the mask, WON
//! always 100 and LOST 0; weighted amounts everywhere use the effective probability; the
//! status history, the field history (R18) and the events carry the status's and the
//! effective probability; the pipeline as it stood (R19) weighs each opportunity with the
//! probability it had then. Time is the database's test clock.

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use prost::Message as _;
use prost_types::value::Kind;
use salesopp_proto::common::v1 as common;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{
    INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, WON, change_request, mask, money, rid,
};
use salesopp_tests::{World, admin_token, authed, field_violations, rep_token};
use tonic::Code;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 8, 1, 9, 0, 0).unwrap()
}

fn at(hours: i64) -> DateTime<Utc> {
    t0() + Duration::hours(hours)
}

const STATUS: i32 = opb::ValueSource::Status as i32;
const MANUAL: i32 = opb::ValueSource::Manual as i32;

/// Creates an opportunity of `caller` in `status_id`.
async fn create(
    w: &mut World,
    caller: &str,
    customer_id: &str,
    status_id: &str,
    amount: Option<common::Money>,
) -> opb::Opportunity {
    w.try_create_request(
        caller,
        opb::CreateOpportunityRequest {
            opportunity: Some(opb::Opportunity {
                customer_id: customer_id.to_owned(),
                title: "Cold room".to_owned(),
                status_id: status_id.to_owned(),
                amount,
                ..Default::default()
            }),
            request_id: rid(),
            ..Default::default()
        },
    )
    .await
    .expect("create")
}

async fn try_update(
    w: &mut World,
    caller: &str,
    opportunity: opb::Opportunity,
    paths: &[&str],
) -> Result<opb::Opportunity, tonic::Status> {
    w.try_update_request(
        caller,
        opb::UpdateOpportunityRequest {
            opportunity: Some(opportunity),
            update_mask: mask(paths),
            request_id: rid(),
            ..Default::default()
        },
    )
    .await
}

/// Sets the probability of `id` by hand.
async fn set_probability(
    w: &mut World,
    caller: &str,
    id: &str,
    probability: i32,
) -> opb::Opportunity {
    try_update(
        w,
        caller,
        opb::Opportunity {
            id: id.to_owned(),
            probability,
            ..Default::default()
        },
        &["probability"],
    )
    .await
    .expect("set probability")
}

async fn reset_probability(w: &mut World, caller: &str, id: &str) -> opb::Opportunity {
    try_update(
        w,
        caller,
        opb::Opportunity {
            id: id.to_owned(),
            probability_source: STATUS,
            ..Default::default()
        },
        &["probability_source"],
    )
    .await
    .expect("reset probability")
}

async fn change(
    w: &mut World,
    caller: &str,
    id: &str,
    status_id: &str,
) -> opb::ChangeOpportunityStatusResponse {
    w.try_change(caller, change_request(id, status_id))
        .await
        .expect("change status")
}

/// (effective probability, its source, the status's probability) of an opportunity.
fn probabilities(o: &opb::Opportunity) -> (i32, i32, i32) {
    (o.probability, o.probability_source, o.status_probability)
}

fn number(value: Option<&prost_types::Value>) -> Option<f64> {
    match value.and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(n)) => Some(*n),
        _ => None,
    }
}

/// The probability changes of the field history (R18): (old, new, who).
async fn probability_changes(w: &mut World, caller: &str, id: &str) -> Vec<(f64, f64, String)> {
    w.opps
        .list_opportunity_changes(authed(
            caller,
            opb::ListOpportunityChangesRequest {
                opportunity_id: id.to_owned(),
                fields: vec!["probability".to_owned()],
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .expect("list changes")
        .into_inner()
        .field_changes
        .iter()
        .map(|c| {
            (
                number(c.old_value.as_ref()).expect("a number"),
                number(c.new_value.as_ref()).expect("a number"),
                c.changed_by.as_ref().expect("changed_by").id.clone(),
            )
        })
        .collect()
}

/// The events of one opportunity, as the outbox holds them.
async fn events(w: &World, id: &str) -> Vec<opb::OpportunityEvent> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "select payload from opportunity_events where opportunity_id = $1::uuid order by id",
    )
    .bind(id)
    .fetch_all(w.db())
    .await
    .expect("read events");
    payloads
        .iter()
        .map(|p| opb::OpportunityEvent::decode(p.as_slice()).expect("an event"))
        .collect()
}

/// (previous effective, its source, new effective, its source, from status's, to status's).
fn entry_probabilities(entry: &opb::StatusChange) -> (Option<i32>, i32, i32, i32, i32, i32) {
    (
        entry.previous_probability,
        entry.previous_probability_source,
        entry.probability,
        entry.probability_source,
        entry.from_status.as_ref().map_or(-1, |s| s.probability),
        entry.to_status.as_ref().expect("to_status").probability,
    )
}

#[tokio::test]
async fn r17_override_then_status_change_then_override() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.set_clock(t0()).await;
    let customer = w.customer(&rep, "Override Co").await;
    let created = create(
        &mut w,
        &rep,
        &customer.id,
        INTERESTED,
        Some(money("THB", 1000, 0)),
    )
    .await;
    let id = created.id.clone();
    assert_eq!(probabilities(&created), (10, STATUS, 10));

    // By hand: MANUAL, the status's kept beside it; GetOpportunity agrees.
    w.set_clock(at(1)).await;
    let manual = set_probability(&mut w, &rep, &id, 35).await;
    assert_eq!(probabilities(&manual), (35, MANUAL, 10));
    assert_eq!(probabilities(&w.get(&rep, &id).await), (35, MANUAL, 10));

    // A status change resets it; the history entry carries both probabilities.
    w.set_clock(at(2)).await;
    let moved = change(&mut w, &rep, &id, PRESENTED).await;
    let after = moved.opportunity.expect("opportunity");
    assert_eq!(probabilities(&after), (20, STATUS, 20));
    let entry = moved.status_change.expect("entry");
    assert_eq!(
        entry_probabilities(&entry),
        (Some(35), MANUAL, 20, STATUS, 10, 20)
    );

    // 0 is a probability a rep may set by hand.
    w.set_clock(at(3)).await;
    assert_eq!(
        probabilities(&set_probability(&mut w, &rep, &id, 0).await),
        (0, MANUAL, 20)
    );

    // A status change and a probability in one update: set in the new status.
    w.set_clock(at(4)).await;
    let both = try_update(
        &mut w,
        &rep,
        opb::Opportunity {
            id: id.clone(),
            status_id: SENT_EMAIL.to_owned(),
            probability: 45,
            ..Default::default()
        },
        &["status_id", "probability"],
    )
    .await
    .expect("move and set");
    assert_eq!(probabilities(&both), (45, MANUAL, 30));
    let history = w.history(&rep, &id).await;
    assert_eq!(history.len(), 3);
    assert_eq!(
        entry_probabilities(&history[0]),
        (None, 0, 10, STATUS, -1, 10)
    );
    assert_eq!(
        entry_probabilities(&history[2]),
        (Some(0), MANUAL, 45, MANUAL, 20, 30)
    );

    // Sent back whole (`*`), the opportunity read changes nothing.
    w.set_clock(at(5)).await;
    let whole = try_update(&mut w, &rep, both.clone(), &["*"])
        .await
        .expect("update *");
    assert_eq!(whole.etag, both.etag, "a whole read-back changes nothing");
    assert_eq!(probabilities(&whole), (45, MANUAL, 30));

    // Reset by the mask: the status's again; a second reset changes nothing.
    w.set_clock(at(6)).await;
    let reset = reset_probability(&mut w, &rep, &id).await;
    assert_eq!(probabilities(&reset), (30, STATUS, 30));
    let again = reset_probability(&mut w, &rep, &id).await;
    assert_eq!(again.etag, reset.etag);

    // Bad input changes nothing.
    for (opportunity, paths, field) in [
        (
            opb::Opportunity {
                id: id.clone(),
                probability: 101,
                ..Default::default()
            },
            vec!["probability"],
            "opportunity.probability",
        ),
        (
            opb::Opportunity {
                id: id.clone(),
                probability: -1,
                ..Default::default()
            },
            vec!["probability"],
            "opportunity.probability",
        ),
        (
            opb::Opportunity {
                id: id.clone(),
                probability_source: MANUAL,
                ..Default::default()
            },
            vec!["probability_source"],
            "opportunity.probability_source",
        ),
        (
            opb::Opportunity {
                id: id.clone(),
                probability_source: 7,
                probability: 50,
                ..Default::default()
            },
            vec!["probability", "probability_source"],
            "opportunity.probability_source",
        ),
        (
            opb::Opportunity {
                id: id.clone(),
                status_probability: 50,
                ..Default::default()
            },
            vec!["status_probability"],
            "update_mask",
        ),
    ] {
        let error = try_update(&mut w, &rep, opportunity, &paths)
            .await
            .expect_err("bad probability");
        assert_eq!(error.code(), Code::InvalidArgument, "{paths:?}");
        let fields: Vec<String> = field_violations(&error)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec![field.to_owned()], "{paths:?}");
    }
    assert_eq!(w.get(&rep, &id).await.etag, reset.etag);

    // R18: every change of the effective probability, once, by its path.
    let rep_id = "rep-a1".to_owned();
    assert_eq!(
        probability_changes(&mut w, &rep, &id).await,
        vec![
            (10.0, 35.0, rep_id.clone()),
            (35.0, 20.0, rep_id.clone()),
            (20.0, 0.0, rep_id.clone()),
            (0.0, 45.0, rep_id.clone()),
            (45.0, 30.0, rep_id.clone()),
        ]
    );

    // The events carry both probabilities, in their `after` and their status change.
    let events = events(&w, &id).await;
    let seen: Vec<(i32, (i32, i32, i32))> = events
        .iter()
        .map(|e| (e.r#type, probabilities(e.after.as_ref().expect("after"))))
        .collect();
    let (created_t, updated, status_changed) = (
        opb::OpportunityEventType::Created as i32,
        opb::OpportunityEventType::Updated as i32,
        opb::OpportunityEventType::StatusChanged as i32,
    );
    assert_eq!(
        seen,
        vec![
            (created_t, (10, STATUS, 10)),
            (updated, (35, MANUAL, 10)),
            (status_changed, (20, STATUS, 20)),
            (updated, (0, MANUAL, 20)),
            (status_changed, (45, MANUAL, 30)),
            (updated, (30, STATUS, 30)),
        ]
    );
    assert_eq!(
        probabilities(events[2].before.as_ref().expect("before")),
        (35, MANUAL, 10)
    );
    assert_eq!(
        entry_probabilities(events[2].status_change.as_ref().expect("status change")),
        (Some(35), MANUAL, 20, STATUS, 10, 20)
    );
}

#[tokio::test]
async fn r17_won_is_always_100_and_lost_0() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.set_clock(t0()).await;
    let customer = w.customer(&rep, "Closing Co").await;
    let opportunity = create(&mut w, &rep, &customer.id, QUOTATION, None).await;
    let id = opportunity.id.clone();
    set_probability(&mut w, &rep, &id, 80).await;

    w.set_clock(at(1)).await;
    let won = change(&mut w, &rep, &id, WON)
        .await
        .opportunity
        .expect("won");
    assert_eq!(probabilities(&won), (100, STATUS, 100));
    let refused = try_update(
        &mut w,
        &rep,
        opb::Opportunity {
            id: id.clone(),
            probability: 90,
            ..Default::default()
        },
        &["probability"],
    )
    .await
    .expect_err("no override on a won deal");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&refused)[0].0, "opportunity.probability");

    // Reopened: the status's again, the old override is not restored.
    w.set_clock(at(2)).await;
    let reopened = change(&mut w, &rep, &id, INTERESTED)
        .await
        .opportunity
        .expect("reopened");
    assert_eq!(probabilities(&reopened), (10, STATUS, 10));
    set_probability(&mut w, &rep, &id, 60).await;

    // Moving to LOST and setting a probability in one call is refused, and changes nothing.
    w.set_clock(at(3)).await;
    let before = w.get(&rep, &id).await;
    let refused = try_update(
        &mut w,
        &rep,
        opb::Opportunity {
            id: id.clone(),
            status_id: LOST.to_owned(),
            probability: 5,
            ..Default::default()
        },
        &["status_id", "probability"],
    )
    .await
    .expect_err("no override on a lost deal");
    assert_eq!(field_violations(&refused)[0].0, "opportunity.probability");
    assert_eq!(w.get(&rep, &id).await.etag, before.etag);
    let lost = change(&mut w, &rep, &id, LOST)
        .await
        .opportunity
        .expect("lost");
    assert_eq!(probabilities(&lost), (0, STATUS, 0));

    // The schema holds the rule past the API: no override on a closed opportunity, and a
    // move that does not name the status the override was set in voids it.
    let closed =
        sqlx::query("update opportunities set manual_probability = 50 where id = $1::uuid")
            .bind(&id)
            .execute(w.db())
            .await;
    assert!(closed.is_err(), "a closed opportunity takes no override");
    let other = create(&mut w, &rep, &customer.id, INTERESTED, None).await;
    sqlx::query("update opportunities set manual_probability = 40 where id = $1::uuid")
        .bind(&other.id)
        .execute(w.db())
        .await
        .expect("an override on an open opportunity");
    assert_eq!(
        probabilities(&w.get(&rep, &other.id).await),
        (40, MANUAL, 10)
    );
    sqlx::query("update opportunities set status_id = $2::uuid where id = $1::uuid")
        .bind(&other.id)
        .bind(PRESENTED)
        .execute(w.db())
        .await
        .expect("a move by plain SQL");
    assert_eq!(
        probabilities(&w.get(&rep, &other.id).await),
        (20, STATUS, 20)
    );
}

/// The weighted amount of `totals`' one currency, as "units.nanos".
fn weighted(totals: &[opb::CurrencyTotal], currency: &str) -> String {
    let total = totals
        .iter()
        .find(|t| t.currency_code == currency)
        .unwrap_or_else(|| panic!("no {currency} total in {totals:?}"));
    let money = total.weighted_amount.as_ref().expect("weighted amount");
    format!("{}.{:09}", money.units, money.nanos)
}

async fn summary(
    w: &mut World,
    caller: &str,
    request: opb::GetPipelineSummaryRequest,
) -> opb::GetPipelineSummaryResponse {
    w.opps
        .get_pipeline_summary(authed(caller, request))
        .await
        .expect("pipeline summary")
        .into_inner()
}

/// Interested's totals and the open total, from the kept totals (no filter) and from the
/// rows themselves (a close-date range that every opportunity of the test is in).
async fn interested_and_open(
    w: &mut World,
    caller: &str,
    as_of: Option<DateTime<Utc>>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let ranges = [
        (None, None),
        (
            Some(common::Date {
                year: 2031,
                month: 1,
                day: 1,
            }),
            Some(common::Date {
                year: 2031,
                month: 12,
                day: 31,
            }),
        ),
    ];
    for (from, to) in ranges {
        let response = summary(
            w,
            caller,
            opb::GetPipelineSummaryRequest {
                expected_close_date_from: from,
                expected_close_date_to: to,
                as_of: as_of.map(|t| prost_types::Timestamp {
                    seconds: t.timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
        .await;
        let interested = response
            .by_status
            .iter()
            .find(|s| s.status_id == INTERESTED)
            .expect("Interested");
        let open = &response.total.as_ref().expect("total").open;
        seen.push(format!(
            "{} | {} | {}",
            weighted(&interested.totals, "THB"),
            weighted(open, "THB"),
            weighted(open, "USD")
        ));
    }
    seen
}

#[tokio::test]
async fn r17_weighted_totals_use_the_effective_probability() {
    let mut w = World::new().await;
    let (rep, admin) = (rep_token(), admin_token());
    w.set_clock(t0()).await;
    // The admin is recorded by a first call.
    summary(&mut w, &admin, opb::GetPipelineSummaryRequest::default()).await;
    let customer = w.customer(&rep, "Weights Co").await;
    let close = Some(common::Date {
        year: 2031,
        month: 10,
        day: 31,
    });
    let make = async |w: &mut World, status: &str, amount: common::Money| {
        let created = create(w, &rep, &customer.id, status, Some(amount)).await;
        try_update(
            w,
            &rep,
            opb::Opportunity {
                id: created.id.clone(),
                expected_close_date: close,
                ..Default::default()
            },
            &["expected_close_date"],
        )
        .await
        .expect("close date")
    };
    // a: 1,000 THB at 33% by hand; b: 1,000.000000005 THB at Interested's 10%; c: 500 USD
    // in Quotation at 90% by hand.
    let a = make(&mut w, INTERESTED, money("THB", 1000, 0)).await;
    let b = make(&mut w, INTERESTED, money("THB", 1000, 5)).await;
    let c = make(&mut w, QUOTATION, money("USD", 500, 0)).await;
    w.set_clock(at(1)).await;
    set_probability(&mut w, &rep, &a.id, 33).await;
    set_probability(&mut w, &rep, &c.id, 90).await;
    let first_moment = at(2);
    w.set_clock(first_moment).await;

    // Interested: (1,000 x 33 + 1,000.000000005 x 10) / 100 = 430.0000000005, half to even
    // 430.000000000; USD: 500 x 90 / 100 = 450.
    let expected = "430.000000000 | 430.000000000 | 450.000000000".to_owned();
    assert_eq!(
        interested_and_open(&mut w, &rep, None).await,
        vec![expected.clone(), expected.clone()]
    );

    // A status's own re-weighting moves those that follow it, not the overridden ones, and
    // is recorded for each of them (R18).
    w.set_clock(at(3)).await;
    w.statuses
        .update_status(authed(
            &admin,
            spb::UpdateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    id: INTERESTED.to_owned(),
                    probability: 20,
                    ..Default::default()
                }),
                update_mask: mask(&["probability"]),
                request_id: rid(),
            },
        ))
        .await
        .expect("re-weigh Interested");
    // (1,000 x 33 + 1,000.000000005 x 20) / 100 = 530.000000001.
    let reweighed = "530.000000001 | 530.000000001 | 450.000000000".to_owned();
    assert_eq!(
        interested_and_open(&mut w, &rep, None).await,
        vec![reweighed.clone(), reweighed.clone()]
    );
    assert_eq!(
        probability_changes(&mut w, &rep, &b.id).await,
        vec![(10.0, 20.0, "admin-1".to_owned())]
    );
    assert_eq!(
        probability_changes(&mut w, &rep, &a.id).await,
        vec![(10.0, 33.0, "rep-a1".to_owned())]
    );

    // Reset a: it follows Interested's 20% now.
    w.set_clock(at(4)).await;
    reset_probability(&mut w, &rep, &a.id).await;
    // (1,000 x 20 + 1,000.000000005 x 20) / 100 = 400.000000001.
    let after_reset = "400.000000001 | 400.000000001 | 450.000000000".to_owned();
    assert_eq!(
        interested_and_open(&mut w, &rep, None).await,
        vec![after_reset.clone(), after_reset.clone()]
    );

    // R19: the pipeline as it stood weighs each opportunity with its probability of then.
    w.set_clock(at(5)).await;
    assert_eq!(
        interested_and_open(&mut w, &rep, Some(first_moment)).await,
        vec![expected.clone(), expected]
    );
    assert_eq!(
        interested_and_open(&mut w, &admin, Some(at(3))).await,
        vec![reweighed.clone(), reweighed]
    );

    // The gateway's stages carry the same weighted amounts.
    let pipeline = w
        .gateway
        .get_salesperson_pipeline(authed(
            &rep,
            salesopp_proto::gateway::v1::GetSalespersonPipelineRequest::default(),
        ))
        .await
        .expect("salesperson pipeline")
        .into_inner();
    let stage = |id: &str| {
        pipeline
            .stages
            .iter()
            .find(|s| s.status.as_ref().is_some_and(|st| st.id == id))
            .expect("stage")
            .totals
            .clone()
    };
    assert_eq!(weighted(&stage(INTERESTED), "THB"), "400.000000001");
    assert_eq!(weighted(&stage(QUOTATION), "USD"), "450.000000000");
    let listed = &stage(QUOTATION);
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn r17_a_status_change_sent_back_whole_resets_the_overrides() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.set_clock(t0()).await;
    let customer = w.customer(&rep, "Round trip Co").await;
    let created = create(&mut w, &rep, &customer.id, INTERESTED, None).await;
    let id = created.id.clone();
    set_probability(&mut w, &rep, &id, 50).await;
    // An opportunity read with its override, its status changed, and sent back whole (with
    // `*` and with an empty mask): the move resets the override, as any status change does.
    for (status, paths) in [(PRESENTED, vec!["*"]), (SENT_EMAIL, vec![])] {
        set_probability(&mut w, &rep, &id, 50).await;
        let read = w.get(&rep, &id).await;
        assert_eq!(probabilities(&read).1, MANUAL);
        let moved = try_update(
            &mut w,
            &rep,
            opb::Opportunity {
                status_id: status.to_owned(),
                ..read
            },
            &paths,
        )
        .await
        .expect("move sent back whole");
        assert_eq!(moved.status_id, status, "{paths:?}");
        assert_eq!(moved.probability_source, STATUS, "{paths:?}");
        assert_eq!(moved.probability, moved.status_probability, "{paths:?}");
    }
    // And so it can be closed that way.
    set_probability(&mut w, &rep, &id, 50).await;
    let read = w.get(&rep, &id).await;
    let won = try_update(
        &mut w,
        &rep,
        opb::Opportunity {
            status_id: WON.to_owned(),
            ..read
        },
        &["*"],
    )
    .await
    .expect("won, sent back whole");
    assert_eq!(probabilities(&won), (100, STATUS, 100));
    // With `*` and no source (a client that does not know the fields), an override stays.
    let other = create(&mut w, &rep, &customer.id, INTERESTED, None).await;
    let manual = set_probability(&mut w, &rep, &other.id, 40).await;
    let kept = try_update(
        &mut w,
        &rep,
        opb::Opportunity {
            title: "Cold room, renamed".to_owned(),
            probability_source: 0,
            forecast_category_source: 0,
            ..manual
        },
        &["*"],
    )
    .await
    .expect("update *");
    assert_eq!(kept.title, "Cold room, renamed");
    assert_eq!(probabilities(&kept), (40, MANUAL, 10));
}

#[tokio::test]
async fn r19_a_status_reweighted_before_its_opportunities_listed_it_is_read_at_its_probability_then()
 {
    let mut w = World::new().await;
    let rep = rep_token();
    w.set_clock(t0()).await;
    let customer = w.customer(&rep, "Before Co").await;
    let created = create(
        &mut w,
        &rep,
        &customer.id,
        INTERESTED,
        Some(money("THB", 1000, 0)),
    )
    .await;
    // At hour 2, Interested went from 10 to 20 with only the status's own record (as a
    // database migrated before re-weightings were listed per opportunity has it).
    let mut conn = w.db().acquire().await.expect("a connection");
    for sql in [
        "set session_replication_role = replica",
        "update opportunity_statuses set probability = 20, update_time = '2031-08-01 11:00:00+00' \
         where id = '00000000-0000-4000-8000-000000000001'",
        "insert into opportunity_status_probability_changes \
         (status_id, old_probability, new_probability, change_time) \
         values ('00000000-0000-4000-8000-000000000001', 10, 20, '2031-08-01 11:00:00+00')",
        "set session_replication_role = origin",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.expect(sql);
    }
    drop(conn);
    // Changed since (its amount): the replay weighs it at 10% before hour 2, 20% after.
    w.set_clock(at(3)).await;
    try_update(
        &mut w,
        &rep,
        opb::Opportunity {
            id: created.id.clone(),
            amount: Some(money("THB", 2000, 0)),
            ..Default::default()
        },
        &["amount"],
    )
    .await
    .expect("re-price");
    w.set_clock(at(4)).await;
    for (moment, expected) in [
        (at(1), "100.000000000"),
        (at(2) + Duration::minutes(1), "200.000000000"),
    ] {
        let response = summary(
            &mut w,
            &rep,
            opb::GetPipelineSummaryRequest {
                as_of: Some(prost_types::Timestamp {
                    seconds: moment.timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
        .await;
        let open = &response.total.expect("total").open;
        assert_eq!(weighted(open, "THB"), expected, "as of {moment}");
    }
}
