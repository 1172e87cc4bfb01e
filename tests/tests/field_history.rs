//! R18 field history: ListOpportunityChanges records every change of amount, expected close
//! date, owner, title, next step, customer and probability once, with its old and new value,
//! by whichever path made it (UpdateOpportunity, ChangeOpportunityStatus, an update with a
//! status, R6 moves of a deleted status); and `close_date_push_count` /
//! `close_date_slip_days`. Time is the database's test clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use prost_types::value::Kind;
use salesopp_proto::common::v1 as common;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{
    INTERESTED, PRESENTED, QUOTATION, SENT_EMAIL, change_request, error_reason, mask, money, rid,
};
use salesopp_tests::{
    World, admin_token, authed, field_violations, manager_token, rep_token, token,
};
use tonic::Code;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 7, 1, 9, 0, 0).unwrap()
}

fn at(hours: i64) -> DateTime<Utc> {
    t0() + Duration::hours(hours)
}

fn time_of(timestamp: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(timestamp.seconds, timestamp.nanos as u32).expect("a time")
}

fn date(year: i32, month: i32, day: i32) -> common::Date {
    common::Date { year, month, day }
}

fn value(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

fn text(s: &str) -> prost_types::Value {
    value(Kind::StringValue(s.to_owned()))
}

fn number(n: f64) -> prost_types::Value {
    value(Kind::NumberValue(n))
}

fn object(fields: &[(&str, prost_types::Value)]) -> prost_types::Value {
    value(Kind::StructValue(prost_types::Struct {
        fields: fields
            .iter()
            .map(|(name, v)| ((*name).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }))
}

/// The proto3 JSON form of a Money.
fn money_value(currency_code: &str, units: i64, nanos: i32) -> prost_types::Value {
    object(&[
        ("currencyCode", text(currency_code)),
        ("units", text(&units.to_string())),
        ("nanos", number(f64::from(nanos))),
    ])
}

fn date_value(year: i32, month: i32, day: i32) -> prost_types::Value {
    object(&[
        ("year", number(f64::from(year))),
        ("month", number(f64::from(month))),
        ("day", number(f64::from(day))),
    ])
}

/// A change as the test expects it: field, old, new, who, when.
type Expected = (
    &'static str,
    prost_types::Value,
    prost_types::Value,
    &'static str,
    DateTime<Utc>,
);

fn seen(
    change: &opb::FieldChange,
) -> (
    String,
    prost_types::Value,
    prost_types::Value,
    String,
    DateTime<Utc>,
) {
    (
        change.field.clone(),
        change.old_value.clone().expect("old_value"),
        change.new_value.clone().expect("new_value"),
        change.changed_by.as_ref().expect("changed_by").id.clone(),
        time_of(change.change_time.as_ref().expect("change_time")),
    )
}

fn expected(
    list: &[Expected],
) -> Vec<(
    String,
    prost_types::Value,
    prost_types::Value,
    String,
    DateTime<Utc>,
)> {
    list.iter()
        .map(|(field, old, new, by, when)| {
            (
                (*field).to_owned(),
                old.clone(),
                new.clone(),
                (*by).to_owned(),
                *when,
            )
        })
        .collect()
}

async fn changes(
    w: &mut World,
    caller: &str,
    request: opb::ListOpportunityChangesRequest,
) -> Result<opb::ListOpportunityChangesResponse, tonic::Status> {
    w.opps
        .list_opportunity_changes(authed(caller, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn all_changes(w: &mut World, caller: &str, id: &str) -> Vec<opb::FieldChange> {
    changes(
        w,
        caller,
        opb::ListOpportunityChangesRequest {
            opportunity_id: id.to_owned(),
            ..Default::default()
        },
    )
    .await
    .expect("list changes")
    .field_changes
}

async fn update(
    w: &mut World,
    caller: &str,
    opportunity: opb::Opportunity,
    paths: &[&str],
) -> opb::Opportunity {
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
    .unwrap_or_else(|e| panic!("update {paths:?}: {e:?}"))
}

/// Creates `opportunity` in INTERESTED.
async fn create(w: &mut World, caller: &str, opportunity: opb::Opportunity) -> opb::Opportunity {
    w.try_create_request(
        caller,
        opb::CreateOpportunityRequest {
            opportunity: Some(opb::Opportunity {
                status_id: INTERESTED.to_owned(),
                ..opportunity
            }),
            request_id: rid(),
            ..Default::default()
        },
    )
    .await
    .expect("create")
}

fn other_rep() -> String {
    token("rep-a2", "Nida Rep", "north", &["sales_rep"])
}

#[tokio::test]
async fn r18_every_field_change_is_recorded_once_with_its_old_and_new_value() {
    let mut w = World::new().await;
    let (rep, manager, admin, rep2) = (rep_token(), manager_token(), admin_token(), other_rep());
    // Every salesperson is recorded by a first call.
    for caller in [&rep, &manager, &rep2] {
        let unknown = opb::ListOpportunityChangesRequest {
            opportunity_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        changes(&mut w, caller, unknown).await.ok();
    }
    w.set_clock(t0()).await;
    let customer = w.customer(&rep, "Field history Co").await;
    let created = create(
        &mut w,
        &rep,
        opb::Opportunity {
            customer_id: customer.id.clone(),
            title: "Solar roof".to_owned(),
            amount: Some(money("THB", 1000, 500_000_000)),
            expected_close_date: Some(date(2031, 9, 30)),
            next_step: "call".to_owned(),
            ..Default::default()
        },
    )
    .await;
    let id = created.id.clone();
    assert!(
        all_changes(&mut w, &rep, &id).await.is_empty(),
        "a creation is no change"
    );
    let edit = |o: opb::Opportunity| opb::Opportunity {
        id: id.clone(),
        ..o
    };

    // Two fields in one write: two changes, in the documented order.
    w.set_clock(at(1)).await;
    update(
        &mut w,
        &rep,
        edit(opb::Opportunity {
            title: "Solar roof, 20 panels".to_owned(),
            amount: Some(money("THB", 1200, 0)),
            ..Default::default()
        }),
        &["title", "amount"],
    )
    .await;
    // A change of currency is a change of amount.
    w.set_clock(at(2)).await;
    let dollars = edit(opb::Opportunity {
        amount: Some(money("USD", 40, 0)),
        ..Default::default()
    });
    update(&mut w, &rep, dollars.clone(), &["amount"]).await;
    // The same values again change nothing and record nothing.
    w.set_clock(at(3)).await;
    let same = update(&mut w, &rep, dollars, &["amount"]).await;
    // Clearing the next step.
    w.set_clock(at(4)).await;
    update(
        &mut w,
        &rep,
        edit(opb::Opportunity::default()),
        &["next_step"],
    )
    .await;
    // ChangeOpportunityStatus changes the probability.
    w.set_clock(at(5)).await;
    w.opps
        .change_opportunity_status(authed(&rep, change_request(&id, QUOTATION)))
        .await
        .expect("to Quotation");
    // An update with a status: its field first, then the move's probability.
    w.set_clock(at(6)).await;
    update(
        &mut w,
        &rep,
        edit(opb::Opportunity {
            status_id: PRESENTED.to_owned(),
            expected_close_date: Some(date(2031, 10, 31)),
            ..Default::default()
        }),
        &["status_id", "expected_close_date"],
    )
    .await;
    // A manager reassigns it within the team.
    w.set_clock(at(7)).await;
    update(
        &mut w,
        &manager,
        edit(opb::Opportunity {
            owner_id: "rep-a2".to_owned(),
            ..Default::default()
        }),
        &["owner_id"],
    )
    .await;
    // R6: a status deleted under the opportunity moves it, and its probability with it.
    w.set_clock(at(8)).await;
    let pilot = w
        .statuses
        .create_status(authed(
            &admin,
            spb::CreateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    display_name: "Pilot".to_owned(),
                    localized_names: BTreeMap::from([
                        ("en".to_owned(), "Pilot".to_owned()),
                        ("th".to_owned(), "ทดลองใช้".to_owned()),
                    ]),
                    probability: 40,
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("create Pilot")
        .into_inner();
    w.opps
        .change_opportunity_status(authed(&rep2, change_request(&id, &pilot.id)))
        .await
        .expect("to Pilot");
    w.set_clock(at(9)).await;
    w.statuses
        .delete_status(authed(
            &admin,
            spb::DeleteStatusRequest {
                id: pilot.id.clone(),
                replacement_status_id: SENT_EMAIL.to_owned(),
                request_id: rid(),
                ..Default::default()
            },
        ))
        .await
        .expect("delete Pilot");

    let list = all_changes(&mut w, &admin, &id).await;
    let want = expected(&[
        (
            "amount",
            money_value("THB", 1000, 500_000_000),
            money_value("THB", 1200, 0),
            "rep-a1",
            at(1),
        ),
        (
            "title",
            text("Solar roof"),
            text("Solar roof, 20 panels"),
            "rep-a1",
            at(1),
        ),
        (
            "amount",
            money_value("THB", 1200, 0),
            money_value("USD", 40, 0),
            "rep-a1",
            at(2),
        ),
        ("next_step", text("call"), text(""), "rep-a1", at(4)),
        ("probability", number(10.0), number(50.0), "rep-a1", at(5)),
        (
            "expected_close_date",
            date_value(2031, 9, 30),
            date_value(2031, 10, 31),
            "rep-a1",
            at(6),
        ),
        ("probability", number(50.0), number(20.0), "rep-a1", at(6)),
        ("owner_id", text("rep-a1"), text("rep-a2"), "mgr-a", at(7)),
        ("probability", number(20.0), number(40.0), "rep-a2", at(8)),
        ("probability", number(40.0), number(30.0), "admin-1", at(9)),
    ]);
    assert_eq!(list.iter().map(seen).collect::<Vec<_>>(), want);
    assert!(list.iter().all(|c| c.opportunity_id == id));
    assert_eq!(
        list[7].changed_by.as_ref().unwrap().display_name,
        "Malee Manager"
    );
    assert_eq!(
        same.version, 3,
        "the repeated update wrote nothing: {same:?}"
    );

    // A filter on fields, and pages newest first.
    let probabilities = changes(
        &mut w,
        &rep2,
        opb::ListOpportunityChangesRequest {
            opportunity_id: id.clone(),
            fields: vec!["probability".to_owned(), "probability".to_owned()],
            newest_first: true,
            page_size: 3,
            ..Default::default()
        },
    )
    .await
    .expect("probability changes");
    assert_eq!(probabilities.field_changes.len(), 3);
    assert_eq!(
        probabilities.field_changes[0].change_time,
        list[9].change_time
    );
    let rest = changes(
        &mut w,
        &rep2,
        opb::ListOpportunityChangesRequest {
            opportunity_id: id.clone(),
            fields: vec!["probability".to_owned()],
            newest_first: true,
            page_size: 3,
            page_token: probabilities.next_page_token.clone(),
        },
    )
    .await
    .expect("the next page");
    assert_eq!(rest.field_changes.len(), 1);
    assert_eq!(seen(&rest.field_changes[0]), seen(&list[4]));
    assert!(rest.next_page_token.is_empty());

    // R12: the previous owner no longer sees it; its owner and their manager do.
    let denied = changes(
        &mut w,
        &rep,
        opb::ListOpportunityChangesRequest {
            opportunity_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .expect_err("not the owner any more");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(all_changes(&mut w, &manager, &id).await.len(), 10);

    // Append-only, even to plain SQL.
    for sql in [
        "update opportunity_field_changes set new_value = '\"x\"'",
        "delete from opportunity_field_changes",
        "truncate opportunity_field_changes",
        "truncate opportunity_status_probability_changes",
    ] {
        let error = sqlx::query(sql).execute(w.db()).await.expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
}

#[tokio::test]
async fn r18_bad_requests_are_invalid_argument_with_their_fields() {
    let mut w = World::new().await;
    let rep = rep_token();
    let error = changes(
        &mut w,
        &rep,
        opb::ListOpportunityChangesRequest {
            opportunity_id: "not-a-uuid".to_owned(),
            fields: vec!["amount".to_owned(), "status_id".to_owned()],
            ..Default::default()
        },
    )
    .await
    .expect_err("bad request");
    assert_eq!(error.code(), Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&error)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(fields, ["opportunity_id", "fields[1]"]);
    let error = changes(
        &mut w,
        &rep,
        opb::ListOpportunityChangesRequest {
            opportunity_id: uuid::Uuid::new_v4().to_string(),
            page_size: -1,
            ..Default::default()
        },
    )
    .await
    .expect_err("negative page size");
    assert_eq!(error.code(), Code::InvalidArgument);
    // An opportunity nobody can see is not told apart from one that does not exist.
    let error = changes(
        &mut w,
        &rep,
        opb::ListOpportunityChangesRequest {
            opportunity_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        },
    )
    .await
    .expect_err("unknown");
    assert_eq!(
        error.code(),
        Code::PermissionDenied,
        "{}",
        error_reason(&error)
    );
}

#[tokio::test]
async fn r18_close_date_pushes_count_later_dates_only() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.set_clock(t0()).await;
    let customer = w.customer(&rep, "Slipping Co").await;
    let created = create(
        &mut w,
        &rep,
        opb::Opportunity {
            customer_id: customer.id.clone(),
            title: "Slips".to_owned(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (created.close_date_push_count, created.close_date_slip_days),
        (0, 0)
    );
    // (date, pushes, slip days after it): a first date, later, earlier, equal, later,
    // cleared, set again.
    let steps: [(Option<common::Date>, i32, i32); 7] = [
        (Some(date(2031, 9, 1)), 0, 0),
        (Some(date(2031, 9, 11)), 1, 10),
        (Some(date(2031, 9, 6)), 1, 10),
        (Some(date(2031, 9, 6)), 1, 10),
        (Some(date(2031, 10, 6)), 2, 40),
        (None, 2, 40),
        (Some(date(2032, 1, 1)), 2, 40),
    ];
    for (i, (close, pushes, slip)) in steps.iter().enumerate() {
        w.set_clock(at(i as i64 + 1)).await;
        let updated = update(
            &mut w,
            &rep,
            opb::Opportunity {
                id: created.id.clone(),
                expected_close_date: *close,
                ..Default::default()
            },
            &["expected_close_date"],
        )
        .await;
        assert_eq!(
            (updated.close_date_push_count, updated.close_date_slip_days),
            (*pushes, *slip),
            "step {i}: {close:?}"
        );
        let read = w.get(&rep, &created.id).await;
        assert_eq!(
            (read.close_date_push_count, read.close_date_slip_days),
            (*pushes, *slip)
        );
    }
    // Six changes of the date recorded (the equal one is none).
    let dates = all_changes(&mut w, &rep, &created.id).await;
    assert_eq!(dates.len(), 6);
    assert!(dates.iter().all(|c| c.field == "expected_close_date"));
    assert_eq!(
        dates[4].new_value,
        Some(value(Kind::NullValue(
            prost_types::NullValue::NullValue.into()
        )))
    );
    // The counters are the schema's: plain SQL cannot set them.
    sqlx::query(
        "update opportunities set close_date_push_count = 0, close_date_slip_days = 0 where id = $1::uuid",
    )
    .bind(&created.id)
    .execute(w.db())
    .await
    .expect("update");
    let read = w.get(&rep, &created.id).await;
    assert_eq!(
        (read.close_date_push_count, read.close_date_slip_days),
        (2, 40)
    );
}
