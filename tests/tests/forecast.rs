//! R20 forecast categories: each status's `forecast_category` (shipped defaults, set by an
//! admin, fixed for WON and LOST), an open opportunity's manual category and probability
//! (R17) with their sources and resets, and GetForecastSummary over a known fixture of two
//! teams, two currencies, deals without an amount or a close date, every state and manual
//! overrides, its expected answers written out by hand: per period (months, quarters cut to
//! the range), per category and per salesperson, for an admin, a manager, a rep and the
//! owner and team filters; and its bad requests.

use salesopp_proto::common::v1 as common;
use salesopp_proto::common::v1::ForecastCategory as C;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::opportunity::v1::ValueSource as Source;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, WON, change_request, mask,
    money, rid,
};
use salesopp_tests::{
    World, admin_token, authed, expect_code, field_violations, manager_token, rep_token, token,
};
use tonic::Code;

const A1: &str = "rep-a1";
const A2: &str = "rep-a2";
const MA: &str = "mgr-a";
const B1: &str = "rep-b1";
const B2: &str = "rep-b2";

/// The fixture's salespeople: id, display name, team, role. The two in the south share a
/// name, so only their ids order them.
const PEOPLE: [(&str, &str, &str, &str); 5] = [
    (A1, "Somchai Rep", "north", "sales_rep"),
    (A2, "Nida Rep", "north", "sales_rep"),
    (MA, "Malee Manager", "north", "sales_manager"),
    (B1, "Boonmee Rep", "south", "sales_rep"),
    (B2, "Boonmee Rep", "south", "sales_rep"),
];

fn person(id: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    *PEOPLE
        .iter()
        .find(|(p, ..)| *p == id)
        .expect("a salesperson of the fixture")
}

/// The token of one of [`PEOPLE`] (`rep-a1` and `mgr-a` are the usual cast's).
fn token_of(id: &str) -> String {
    let (id, name, team, role) = person(id);
    token(id, name, team, &[role])
}

fn date(year: i32, month: i32, day: i32) -> common::Date {
    common::Date { year, month, day }
}

/// The effective category, its source and the status's.
fn categories(o: &opb::Opportunity) -> (C, Source, C) {
    (
        o.forecast_category(),
        o.forecast_category_source(),
        o.status_forecast_category(),
    )
}

/// The effective probability, its source and the status's.
fn probabilities(o: &opb::Opportunity) -> (i32, Source, i32) {
    (o.probability, o.probability_source(), o.status_probability)
}

#[track_caller]
fn assert_violation(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = field_violations(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(fields, [field], "{status:?}");
}

async fn list_statuses(w: &mut World, caller: &str) -> Vec<spb::OpportunityStatus> {
    w.statuses
        .list_statuses(authed(caller, spb::ListStatusesRequest::default()))
        .await
        .expect("list statuses")
        .into_inner()
        .statuses
}

async fn get_status(w: &mut World, id: &str) -> spb::OpportunityStatus {
    w.statuses
        .get_status(authed(
            &admin_token(),
            spb::GetStatusRequest { id: id.to_owned() },
        ))
        .await
        .expect("get status")
        .into_inner()
}

async fn create_status(
    w: &mut World,
    name: &str,
    category: C,
) -> Result<spb::OpportunityStatus, tonic::Status> {
    w.statuses
        .create_status(authed(
            &admin_token(),
            spb::CreateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    display_name: name.to_owned(),
                    probability: 40,
                    forecast_category: category.into(),
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// UpdateStatus of `forecast_category` alone.
async fn set_status_category(
    w: &mut World,
    caller: &str,
    id: &str,
    category: C,
) -> Result<spb::OpportunityStatus, tonic::Status> {
    w.statuses
        .update_status(authed(
            caller,
            spb::UpdateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    id: id.to_owned(),
                    forecast_category: category.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["forecast_category"]),
                request_id: rid(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Creates an opportunity of `caller`'s own in `status`.
async fn create(
    w: &mut World,
    caller: &str,
    customer_id: &str,
    status: &str,
    amount: Option<common::Money>,
    close: Option<common::Date>,
) -> opb::Opportunity {
    let title = format!("Deal {}", rid());
    w.try_create_request(
        caller,
        opb::CreateOpportunityRequest {
            opportunity: Some(opb::Opportunity {
                customer_id: customer_id.to_owned(),
                title,
                status_id: status.to_owned(),
                amount,
                expected_close_date: close,
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
    id: &str,
    fields: opb::Opportunity,
    paths: &[&str],
) -> Result<opb::Opportunity, tonic::Status> {
    w.try_update_request(
        caller,
        opb::UpdateOpportunityRequest {
            opportunity: Some(opb::Opportunity {
                id: id.to_owned(),
                ..fields
            }),
            update_mask: mask(paths),
            request_id: rid(),
            ..Default::default()
        },
    )
    .await
}

async fn update(
    w: &mut World,
    caller: &str,
    id: &str,
    fields: opb::Opportunity,
    paths: &[&str],
) -> opb::Opportunity {
    try_update(w, caller, id, fields, paths)
        .await
        .unwrap_or_else(|e| panic!("update {paths:?}: {e:?}"))
}

/// The fields of a manual category.
fn with_category(category: C) -> opb::Opportunity {
    opb::Opportunity {
        forecast_category: category.into(),
        ..Default::default()
    }
}

/// The fields of a manual probability.
fn with_probability(probability: i32) -> opb::Opportunity {
    opb::Opportunity {
        probability,
        ..Default::default()
    }
}

async fn change(w: &mut World, caller: &str, id: &str, status: &str) -> opb::Opportunity {
    w.try_change(caller, change_request(id, status))
        .await
        .unwrap_or_else(|e| panic!("change to {status}: {e:?}"))
        .opportunity
        .expect("the opportunity after the change")
}

async fn forecast(
    w: &mut World,
    caller: &str,
    request: opb::GetForecastSummaryRequest,
) -> Result<opb::GetForecastSummaryResponse, tonic::Status> {
    w.opps
        .get_forecast_summary(authed(caller, request))
        .await
        .map(tonic::Response::into_inner)
}

fn range(
    start: common::Date,
    end: common::Date,
    kind: opb::ForecastPeriodKind,
) -> opb::GetForecastSummaryRequest {
    opb::GetForecastSummaryRequest {
        start_date: Some(start),
        end_date: Some(end),
        period_kind: kind.into(),
        ..Default::default()
    }
}

/// January to March 2031, by month (the default).
fn first_quarter_by_month() -> opb::GetForecastSummaryRequest {
    range(
        date(2031, 1, 1),
        date(2031, 3, 31),
        opb::ForecastPeriodKind::Unspecified,
    )
}

/// The total of the opportunities without an amount.
fn none(count: i64) -> opb::CurrencyTotal {
    opb::CurrencyTotal {
        currency_code: String::new(),
        count,
        total_amount: None,
        weighted_amount: None,
    }
}

/// A total in `code`: (units, nanos) of the amount and of the weighted amount.
fn total(code: &str, count: i64, amount: (i64, i32), weighted: (i64, i32)) -> opb::CurrencyTotal {
    opb::CurrencyTotal {
        currency_code: code.to_owned(),
        count,
        total_amount: Some(money(code, amount.0, amount.1)),
        weighted_amount: Some(money(code, weighted.0, weighted.1)),
    }
}

fn category(category: C, totals: Vec<opb::CurrencyTotal>) -> opb::ForecastCategoryTotal {
    opb::ForecastCategoryTotal {
        category: category.into(),
        totals,
    }
}

fn owner(id: &str, categories: Vec<opb::ForecastCategoryTotal>) -> opb::ForecastOwnerTotal {
    opb::ForecastOwnerTotal {
        owner_id: id.to_owned(),
        owner_display_name: person(id).1.to_owned(),
        categories,
    }
}

fn period(
    start: common::Date,
    end: common::Date,
    categories: Vec<opb::ForecastCategoryTotal>,
    by_owner: Vec<opb::ForecastOwnerTotal>,
) -> opb::ForecastPeriod {
    opb::ForecastPeriod {
        start_date: Some(start),
        end_date: Some(end),
        categories,
        by_owner,
    }
}

/// Checks the answer period by period, then whole.
#[track_caller]
fn assert_forecast(
    got: &opb::GetForecastSummaryResponse,
    want: &[opb::ForecastPeriod],
    what: &str,
) {
    let dates = |periods: &[opb::ForecastPeriod]| -> Vec<_> {
        periods.iter().map(|p| (p.start_date, p.end_date)).collect()
    };
    assert_eq!(dates(&got.periods), dates(want), "{what}: the periods");
    for (got, want) in got.periods.iter().zip(want) {
        assert_eq!(
            got.categories, want.categories,
            "{what}: the categories of {:?}",
            want.start_date
        );
        assert_eq!(
            got.by_owner, want.by_owner,
            "{what}: the owners of {:?}",
            want.start_date
        );
    }
    assert_eq!(got.periods, want, "{what}");
}

#[tokio::test]
async fn r20_status_categories_default_and_are_admin_set() {
    let mut w = World::new().await;
    let admin = admin_token();
    let of = |statuses: &[spb::OpportunityStatus]| -> Vec<(String, C)> {
        statuses
            .iter()
            .map(|s| (s.id.clone(), s.forecast_category()))
            .collect()
    };
    let shipped = |categories: [C; 7]| -> Vec<(String, C)> {
        [
            INTERESTED,
            PRESENTED,
            SENT_EMAIL,
            QUOTATION,
            CONSIDERING,
            WON,
            LOST,
        ]
        .iter()
        .zip(categories)
        .map(|(id, c)| ((*id).to_owned(), c))
        .collect()
    };
    let defaults = [
        C::Pipeline,
        C::Pipeline,
        C::Pipeline,
        C::BestCase,
        C::Commit,
        C::Closed,
        C::Omitted,
    ];
    assert_eq!(of(&list_statuses(&mut w, &admin).await), shipped(defaults));
    // Every sales role reads them.
    assert_eq!(
        of(&list_statuses(&mut w, &rep_token()).await),
        shipped(defaults)
    );

    // A new status without a category is PIPELINE; one may be given; CLOSED may not.
    let pilot = create_status(&mut w, "Pilot", C::Unspecified)
        .await
        .expect("create Pilot");
    assert_eq!(pilot.forecast_category(), C::Pipeline);
    let trial = create_status(&mut w, "Trial", C::BestCase)
        .await
        .expect("create Trial");
    assert_eq!(trial.forecast_category(), C::BestCase);
    let error = create_status(&mut w, "Signed", C::Closed)
        .await
        .expect_err("an OPEN status is never CLOSED");
    assert_violation(&error, "status.forecast_category");

    // An admin sets an OPEN status's category; it is read back.
    let updated = set_status_category(&mut w, &admin, &pilot.id, C::Commit)
        .await
        .expect("Pilot to COMMIT");
    assert_eq!(updated.forecast_category(), C::Commit);
    assert_eq!(
        updated.probability, 40,
        "the other fields stay: {updated:?}"
    );
    assert_eq!(
        get_status(&mut w, &pilot.id).await.forecast_category(),
        C::Commit
    );
    let updated = set_status_category(&mut w, &admin, SENT_EMAIL, C::Omitted)
        .await
        .expect("Sent email to OMITTED");
    assert_eq!(updated.forecast_category(), C::Omitted);

    // WON is CLOSED and LOST OMITTED, always; an OPEN status is never CLOSED (nor unset).
    for (id, category, why) in [
        (WON, C::Pipeline, "WON to PIPELINE"),
        (WON, C::Omitted, "WON to OMITTED"),
        (LOST, C::Commit, "LOST to COMMIT"),
        (LOST, C::Closed, "LOST to CLOSED"),
        (QUOTATION, C::Closed, "an OPEN status to CLOSED"),
        (QUOTATION, C::Unspecified, "an OPEN status to UNSPECIFIED"),
    ] {
        let error = set_status_category(&mut w, &admin, id, category)
            .await
            .expect_err(why);
        assert_violation(&error, "status.forecast_category");
    }
    // Their own fixed values are accepted (and change nothing).
    let won = set_status_category(&mut w, &admin, WON, C::Closed)
        .await
        .expect("WON stays CLOSED");
    assert_eq!(won.forecast_category(), C::Closed);
    let lost = set_status_category(&mut w, &admin, LOST, C::Omitted)
        .await
        .expect("LOST stays OMITTED");
    assert_eq!(lost.forecast_category(), C::Omitted);

    // Only an admin changes a status.
    for caller in [rep_token(), manager_token()] {
        expect_code(
            set_status_category(&mut w, &caller, QUOTATION, C::Commit).await,
            Code::PermissionDenied,
        );
    }

    let mut want = shipped([
        C::Pipeline,
        C::Pipeline,
        C::Omitted,
        C::BestCase,
        C::Commit,
        C::Closed,
        C::Omitted,
    ]);
    // The new statuses come after the last OPEN one, in the order they were made.
    want.insert(5, (pilot.id.clone(), C::Commit));
    want.insert(6, (trial.id.clone(), C::BestCase));
    assert_eq!(of(&list_statuses(&mut w, &admin).await), want);
}

#[tokio::test]
async fn r20_opportunity_category_override_and_reset() {
    let mut w = World::new().await;
    let (rep, admin) = (rep_token(), admin_token());
    let customer = w.customer(&rep, "Forecast Co").await;

    // A category given on create is ignored: the status's.
    let created = w
        .try_create_request(
            &rep,
            opb::CreateOpportunityRequest {
                opportunity: Some(opb::Opportunity {
                    customer_id: customer.id.clone(),
                    title: "Solar farm".to_owned(),
                    status_id: INTERESTED.to_owned(),
                    amount: Some(money("THB", 1000, 0)),
                    forecast_category: C::Commit.into(),
                    forecast_category_source: Source::Manual.into(),
                    ..Default::default()
                }),
                request_id: rid(),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let id = created.id.clone();
    assert_eq!(
        categories(&created),
        (C::Pipeline, Source::Status, C::Pipeline)
    );
    assert_eq!(probabilities(&created), (10, Source::Status, 10));

    // Set by hand: MANUAL, the status's still shown; the probability untouched.
    let o = update(
        &mut w,
        &rep,
        &id,
        with_category(C::Commit),
        &["forecast_category"],
    )
    .await;
    assert_eq!(categories(&o), (C::Commit, Source::Manual, C::Pipeline));
    assert_eq!(probabilities(&o), (10, Source::Status, 10));
    assert_eq!(
        categories(&w.get(&rep, &id).await),
        (C::Commit, Source::Manual, C::Pipeline)
    );
    let listed = w
        .opps
        .list_opportunities(authed(&rep, opb::ListOpportunitiesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .opportunities;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        categories(&listed[0]),
        (C::Commit, Source::Manual, C::Pipeline)
    );

    // A status change resets it to the new status's.
    let o = change(&mut w, &rep, &id, QUOTATION).await;
    assert_eq!(categories(&o), (C::BestCase, Source::Status, C::BestCase));
    assert_eq!(
        categories(&w.get(&rep, &id).await),
        (C::BestCase, Source::Status, C::BestCase)
    );

    // Set again, and reset with its source STATUS in the mask.
    let o = update(
        &mut w,
        &rep,
        &id,
        with_category(C::Omitted),
        &["forecast_category"],
    )
    .await;
    assert_eq!(categories(&o), (C::Omitted, Source::Manual, C::BestCase));
    let o = update(
        &mut w,
        &rep,
        &id,
        opb::Opportunity {
            forecast_category_source: Source::Status.into(),
            ..Default::default()
        },
        &["forecast_category_source"],
    )
    .await;
    assert_eq!(categories(&o), (C::BestCase, Source::Status, C::BestCase));
    assert_eq!(
        categories(&w.get(&rep, &id).await),
        (C::BestCase, Source::Status, C::BestCase)
    );

    // Never CLOSED (the WON status's) nor unset by hand; MANUAL needs its value.
    for (fields, paths, field) in [
        (
            with_category(C::Closed),
            &["forecast_category"][..],
            "opportunity.forecast_category",
        ),
        (
            with_category(C::Unspecified),
            &["forecast_category"][..],
            "opportunity.forecast_category",
        ),
        (
            opb::Opportunity {
                forecast_category_source: Source::Manual.into(),
                ..Default::default()
            },
            &["forecast_category_source"][..],
            "opportunity.forecast_category_source",
        ),
        (
            with_probability(101),
            &["probability"][..],
            "opportunity.probability",
        ),
    ] {
        let error = try_update(&mut w, &rep, &id, fields, paths)
            .await
            .expect_err(field);
        assert_violation(&error, field);
    }
    let o = w.get(&rep, &id).await;
    assert_eq!(categories(&o), (C::BestCase, Source::Status, C::BestCase));
    assert_eq!(probabilities(&o), (50, Source::Status, 50));

    // R17: the probability the same way.
    let o = update(&mut w, &rep, &id, with_probability(33), &["probability"]).await;
    assert_eq!(probabilities(&o), (33, Source::Manual, 50));
    assert_eq!(categories(&o), (C::BestCase, Source::Status, C::BestCase));
    let o = update(
        &mut w,
        &rep,
        &id,
        opb::Opportunity {
            probability_source: Source::Status.into(),
            ..Default::default()
        },
        &["probability_source"],
    )
    .await;
    assert_eq!(probabilities(&o), (50, Source::Status, 50));

    // Both set with a status change in one update: set in the new status.
    let o = update(
        &mut w,
        &rep,
        &id,
        opb::Opportunity {
            status_id: CONSIDERING.to_owned(),
            forecast_category: C::Pipeline.into(),
            probability: 65,
            ..Default::default()
        },
        &["status_id", "forecast_category", "probability"],
    )
    .await;
    assert_eq!(o.status_id, CONSIDERING);
    assert_eq!(categories(&o), (C::Pipeline, Source::Manual, C::Commit));
    assert_eq!(probabilities(&o), (65, Source::Manual, 70));

    // Won: CLOSED and 100 from the status, the overrides gone; none can be set.
    let o = change(&mut w, &rep, &id, WON).await;
    assert_eq!(categories(&o), (C::Closed, Source::Status, C::Closed));
    assert_eq!(probabilities(&o), (100, Source::Status, 100));
    for (fields, path, field) in [
        (
            with_category(C::Commit),
            "forecast_category",
            "opportunity.forecast_category",
        ),
        (
            with_probability(90),
            "probability",
            "opportunity.probability",
        ),
    ] {
        let error = try_update(&mut w, &rep, &id, fields, &[path])
            .await
            .expect_err("no override on a won opportunity");
        assert_violation(&error, field);
    }
    // Nor with a move to LOST in the same call.
    let error = try_update(
        &mut w,
        &rep,
        &id,
        opb::Opportunity {
            status_id: LOST.to_owned(),
            forecast_category: C::Commit.into(),
            ..Default::default()
        },
        &["status_id", "forecast_category"],
    )
    .await
    .expect_err("no override with a move to LOST");
    assert_violation(&error, "opportunity.forecast_category");
    let o = w.get(&rep, &id).await;
    assert_eq!(o.status_id, WON);
    assert_eq!(categories(&o), (C::Closed, Source::Status, C::Closed));

    // A status's category changed: the opportunities following it move, the overridden
    // ones keep theirs.
    let follows = create(
        &mut w,
        &rep,
        &customer.id,
        SENT_EMAIL,
        Some(money("THB", 200, 0)),
        Some(date(2031, 2, 10)),
    )
    .await;
    let keeps = create(
        &mut w,
        &rep,
        &customer.id,
        SENT_EMAIL,
        Some(money("THB", 300, 0)),
        Some(date(2031, 2, 20)),
    )
    .await;
    update(
        &mut w,
        &rep,
        &keeps.id,
        with_category(C::Commit),
        &["forecast_category"],
    )
    .await;
    set_status_category(&mut w, &admin, SENT_EMAIL, C::BestCase)
        .await
        .expect("Sent email to BEST_CASE");
    assert_eq!(
        categories(&w.get(&rep, &follows.id).await),
        (C::BestCase, Source::Status, C::BestCase)
    );
    assert_eq!(
        categories(&w.get(&rep, &keeps.id).await),
        (C::Commit, Source::Manual, C::BestCase)
    );
    // And the forecast counts them so (Sent email is 30%).
    let got = forecast(
        &mut w,
        &rep,
        range(
            date(2031, 2, 1),
            date(2031, 2, 28),
            opb::ForecastPeriodKind::Month,
        ),
    )
    .await
    .expect("February");
    let categories_of_february = vec![
        category(C::BestCase, vec![total("THB", 1, (200, 0), (60, 0))]),
        category(C::Commit, vec![total("THB", 1, (300, 0), (90, 0))]),
    ];
    assert_forecast(
        &got,
        &[period(
            date(2031, 2, 1),
            date(2031, 2, 28),
            categories_of_february.clone(),
            vec![owner(A1, categories_of_february)],
        )],
        "February after the status's change",
    );
}

/// The fixture of the forecast: every one of [`PEOPLE`] recorded, then their opportunities
/// (see the comments for what each counts as). Returns nothing: the expected answers are
/// written out in the test.
async fn forecast_fixture(w: &mut World) {
    let admin = admin_token();
    let customer = w.customer(&admin, "Forecast Holdings").await.id;
    let (a1, a2, ma, b1, b2) = (
        token_of(A1),
        token_of(A2),
        token_of(MA),
        token_of(B1),
        token_of(B2),
    );
    let thb = |units, nanos| Some(money("THB", units, nanos));
    let usd = |units, nanos| Some(money("USD", units, nanos));
    let on = |month, day| Some(date(2031, month, day));

    // rep-b2 first: the two Boonmee Reps are ordered by id, not by when they appeared.
    // Lost in January: OMITTED, USD 300, weighted 0.
    let o = create(w, &b2, &customer, INTERESTED, usd(300, 0), on(1, 25)).await;
    let o = change(w, &b2, &o.id, LOST).await;
    assert_eq!(categories(&o), (C::Omitted, Source::Status, C::Omitted));

    // January.
    // Interested 10%: PIPELINE, THB 1000.5, weighted 100.05.
    create(
        w,
        &a1,
        &customer,
        INTERESTED,
        thb(1000, 500_000_000),
        on(1, 10),
    )
    .await;
    // Quotation (BEST_CASE) at 33% by hand, twice: USD 100.00000025 each, weighted
    // 33.0000000825 each, 66.000000165 together (rounded once, not per deal).
    for day in [31, 16] {
        let o = create(w, &a1, &customer, QUOTATION, usd(100, 250), on(1, day)).await;
        let o = update(w, &a1, &o.id, with_probability(33), &["probability"]).await;
        assert_eq!(probabilities(&o), (33, Source::Manual, 50));
        assert_eq!(categories(&o), (C::BestCase, Source::Status, C::BestCase));
    }
    // Quotation, COMMIT and 33% by hand: USD 100.00000025, weighted 33.0000000825, half to
    // even 33.000000082.
    let o = create(w, &a2, &customer, QUOTATION, usd(100, 250), on(1, 15)).await;
    let o = update(
        w,
        &a2,
        &o.id,
        opb::Opportunity {
            probability: 33,
            forecast_category: C::Commit.into(),
            ..Default::default()
        },
        &["probability", "forecast_category"],
    )
    .await;
    assert_eq!(categories(&o), (C::Commit, Source::Manual, C::BestCase));
    // No amount: PIPELINE, counted only.
    create(w, &a1, &customer, INTERESTED, None, on(1, 1)).await;
    // Considering and comparing 70%: COMMIT, THB 2000, weighted 1400.
    create(w, &ma, &customer, CONSIDERING, thb(2000, 0), on(1, 20)).await;
    // Won: CLOSED, THB 5000, weighted 5000.
    let o = create(w, &b1, &customer, INTERESTED, thb(5000, 0), on(1, 5)).await;
    change(w, &b1, &o.id, WON).await;

    // February: nothing.

    // March.
    // Sent email 30%, OMITTED by hand: THB 999.99, weighted 299.997.
    let o = create(
        w,
        &a2,
        &customer,
        SENT_EMAIL,
        thb(999, 990_000_000),
        on(3, 31),
    )
    .await;
    update(
        w,
        &a2,
        &o.id,
        with_category(C::Omitted),
        &["forecast_category"],
    )
    .await;
    // Presented (PIPELINE) at 75% by hand: THB 400, weighted 300.
    let o = create(w, &a1, &customer, PRESENTED, thb(400, 0), on(3, 1)).await;
    update(w, &a1, &o.id, with_probability(75), &["probability"]).await;
    // No amount: PIPELINE.
    create(w, &b1, &customer, INTERESTED, None, on(3, 15)).await;
    // COMMIT and 33% by hand, then won: both reset, CLOSED at 100%, THB 1234.56.
    let o = create(
        w,
        &a2,
        &customer,
        QUOTATION,
        thb(1234, 560_000_000),
        on(3, 10),
    )
    .await;
    update(
        w,
        &a2,
        &o.id,
        opb::Opportunity {
            probability: 33,
            forecast_category: C::Commit.into(),
            ..Default::default()
        },
        &["probability", "forecast_category"],
    )
    .await;
    let o = change(w, &a2, &o.id, WON).await;
    assert_eq!(categories(&o), (C::Closed, Source::Status, C::Closed));
    assert_eq!(probabilities(&o), (100, Source::Status, 100));
    // Interested 10%: PIPELINE, THB 100, weighted 10.
    create(w, &ma, &customer, INTERESTED, thb(100, 0), on(3, 20)).await;

    // April to June.
    // Quotation 50%: BEST_CASE, THB 800, weighted 400.
    create(w, &a1, &customer, QUOTATION, thb(800, 0), on(4, 1)).await;
    // Considering (COMMIT) at 90% by hand: USD 50.5, weighted 45.45.
    let o = create(
        w,
        &b1,
        &customer,
        CONSIDERING,
        usd(50, 500_000_000),
        on(5, 20),
    )
    .await;
    update(w, &b1, &o.id, with_probability(90), &["probability"]).await;
    // No amount, on the last day of the quarter range below.
    create(w, &ma, &customer, INTERESTED, None, on(6, 15)).await;
    // The day after it.
    create(w, &ma, &customer, INTERESTED, thb(1, 0), on(6, 16)).await;

    // Outside every range asked: the day before, no close date, after June.
    create(
        w,
        &a1,
        &customer,
        INTERESTED,
        thb(7777, 0),
        Some(date(2030, 12, 31)),
    )
    .await;
    let o = create(w, &a2, &customer, INTERESTED, thb(8888, 0), None).await;
    update(
        w,
        &a2,
        &o.id,
        with_category(C::Commit),
        &["forecast_category"],
    )
    .await;
    create(w, &b1, &customer, INTERESTED, thb(9999, 0), on(7, 1)).await;
}

#[tokio::test]
async fn r20_forecast_totals_for_a_known_fixture_per_currency_and_role() {
    let mut w = World::new().await;
    forecast_fixture(&mut w).await;
    let admin = admin_token();

    // The fixture's totals, in (units, nanos).
    let usd_two_at_33 = || total("USD", 2, (200, 500), (66, 165));
    let usd_one_at_33 = || total("USD", 1, (100, 250), (33, 82));
    let thb_1000_5 = || total("THB", 1, (1000, 500_000_000), (100, 50_000_000));
    let thb_won_march = || total("THB", 1, (1234, 560_000_000), (1234, 560_000_000));
    let thb_omitted_march = || total("THB", 1, (999, 990_000_000), (299, 997_000_000));
    let usd_lost = || total("USD", 1, (300, 0), (0, 0));

    let jan = (date(2031, 1, 1), date(2031, 1, 31));
    let feb = (date(2031, 2, 1), date(2031, 2, 28));
    let mar = (date(2031, 3, 1), date(2031, 3, 31));
    let empty = |(start, end): (common::Date, common::Date)| period(start, end, vec![], vec![]);

    // Per owner, per month.
    let jan_b1 = || {
        vec![category(
            C::Closed,
            vec![total("THB", 1, (5000, 0), (5000, 0))],
        )]
    };
    let jan_b2 = || vec![category(C::Omitted, vec![usd_lost()])];
    let jan_ma = || {
        vec![category(
            C::Commit,
            vec![total("THB", 1, (2000, 0), (1400, 0))],
        )]
    };
    let jan_a2 = || vec![category(C::Commit, vec![usd_one_at_33()])];
    let jan_a1 = || {
        vec![
            category(C::Pipeline, vec![none(1), thb_1000_5()]),
            category(C::BestCase, vec![usd_two_at_33()]),
        ]
    };
    let mar_b1 = || vec![category(C::Pipeline, vec![none(1)])];
    let mar_ma = || {
        vec![category(
            C::Pipeline,
            vec![total("THB", 1, (100, 0), (10, 0))],
        )]
    };
    let mar_a2 = || {
        vec![
            category(C::Closed, vec![thb_won_march()]),
            category(C::Omitted, vec![thb_omitted_march()]),
        ]
    };
    let mar_a1 = || {
        vec![category(
            C::Pipeline,
            vec![total("THB", 1, (400, 0), (300, 0))],
        )]
    };

    // An admin, by month: every owner; February empty; the deals of 2030-12-31, of July and
    // without a close date nowhere.
    let admin_months = vec![
        period(
            jan.0,
            jan.1,
            vec![
                category(C::Pipeline, vec![none(1), thb_1000_5()]),
                category(C::BestCase, vec![usd_two_at_33()]),
                category(
                    C::Commit,
                    vec![total("THB", 1, (2000, 0), (1400, 0)), usd_one_at_33()],
                ),
                category(C::Closed, vec![total("THB", 1, (5000, 0), (5000, 0))]),
                category(C::Omitted, vec![usd_lost()]),
            ],
            vec![
                owner(B1, jan_b1()),
                owner(B2, jan_b2()),
                owner(MA, jan_ma()),
                owner(A2, jan_a2()),
                owner(A1, jan_a1()),
            ],
        ),
        empty(feb),
        period(
            mar.0,
            mar.1,
            vec![
                category(
                    C::Pipeline,
                    vec![none(1), total("THB", 2, (500, 0), (310, 0))],
                ),
                category(C::Closed, vec![thb_won_march()]),
                category(C::Omitted, vec![thb_omitted_march()]),
            ],
            vec![
                owner(B1, mar_b1()),
                owner(MA, mar_ma()),
                owner(A2, mar_a2()),
                owner(A1, mar_a1()),
            ],
        ),
    ];
    let got = forecast(&mut w, &admin, first_quarter_by_month())
        .await
        .expect("admin, by month");
    assert_forecast(&got, &admin_months, "admin by month");
    // MONTH said is the default.
    let mut months = first_quarter_by_month();
    months.period_kind = opb::ForecastPeriodKind::Month.into();
    let got = forecast(&mut w, &admin, months).await.expect("MONTH");
    assert_forecast(&got, &admin_months, "admin by MONTH");

    // One day: the period is that day; one deal, its weighted amount half to even.
    let day = date(2031, 1, 31);
    let got = forecast(
        &mut w,
        &admin,
        range(day, day, opb::ForecastPeriodKind::Quarter),
    )
    .await
    .expect("one day");
    assert_forecast(
        &got,
        &[period(
            day,
            day,
            vec![category(
                C::BestCase,
                vec![total("USD", 1, (100, 250), (33, 82))],
            )],
            vec![owner(
                A1,
                vec![category(
                    C::BestCase,
                    vec![total("USD", 1, (100, 250), (33, 82))],
                )],
            )],
        )],
        "2031-01-31",
    );

    // An admin, by quarter, from mid-January to mid-June: both quarters cut to the range.
    let got = forecast(
        &mut w,
        &admin,
        range(
            date(2031, 1, 16),
            date(2031, 6, 15),
            opb::ForecastPeriodKind::Quarter,
        ),
    )
    .await
    .expect("admin, by quarter");
    assert_forecast(
        &got,
        &[
            period(
                date(2031, 1, 16),
                date(2031, 3, 31),
                vec![
                    category(
                        C::Pipeline,
                        vec![none(1), total("THB", 2, (500, 0), (310, 0))],
                    ),
                    category(C::BestCase, vec![usd_two_at_33()]),
                    category(C::Commit, vec![total("THB", 1, (2000, 0), (1400, 0))]),
                    category(C::Closed, vec![thb_won_march()]),
                    category(C::Omitted, vec![thb_omitted_march(), usd_lost()]),
                ],
                vec![
                    owner(B1, vec![category(C::Pipeline, vec![none(1)])]),
                    owner(B2, vec![category(C::Omitted, vec![usd_lost()])]),
                    owner(
                        MA,
                        vec![
                            category(C::Pipeline, vec![total("THB", 1, (100, 0), (10, 0))]),
                            category(C::Commit, vec![total("THB", 1, (2000, 0), (1400, 0))]),
                        ],
                    ),
                    owner(A2, mar_a2()),
                    owner(
                        A1,
                        vec![
                            category(C::Pipeline, vec![total("THB", 1, (400, 0), (300, 0))]),
                            category(C::BestCase, vec![usd_two_at_33()]),
                        ],
                    ),
                ],
            ),
            period(
                date(2031, 4, 1),
                date(2031, 6, 15),
                vec![
                    category(C::Pipeline, vec![none(1)]),
                    category(C::BestCase, vec![total("THB", 1, (800, 0), (400, 0))]),
                    category(
                        C::Commit,
                        vec![total("USD", 1, (50, 500_000_000), (45, 450_000_000))],
                    ),
                ],
                vec![
                    owner(
                        B1,
                        vec![category(
                            C::Commit,
                            vec![total("USD", 1, (50, 500_000_000), (45, 450_000_000))],
                        )],
                    ),
                    owner(MA, vec![category(C::Pipeline, vec![none(1)])]),
                    owner(
                        A1,
                        vec![category(
                            C::BestCase,
                            vec![total("THB", 1, (800, 0), (400, 0))],
                        )],
                    ),
                ],
            ),
        ],
        "admin by quarter",
    );

    // The manager of the north: the team, themselves included.
    let north_months = vec![
        period(
            jan.0,
            jan.1,
            vec![
                category(C::Pipeline, vec![none(1), thb_1000_5()]),
                category(C::BestCase, vec![usd_two_at_33()]),
                category(
                    C::Commit,
                    vec![total("THB", 1, (2000, 0), (1400, 0)), usd_one_at_33()],
                ),
            ],
            vec![
                owner(MA, jan_ma()),
                owner(A2, jan_a2()),
                owner(A1, jan_a1()),
            ],
        ),
        empty(feb),
        period(
            mar.0,
            mar.1,
            vec![
                category(C::Pipeline, vec![total("THB", 2, (500, 0), (310, 0))]),
                category(C::Closed, vec![thb_won_march()]),
                category(C::Omitted, vec![thb_omitted_march()]),
            ],
            vec![
                owner(MA, mar_ma()),
                owner(A2, mar_a2()),
                owner(A1, mar_a1()),
            ],
        ),
    ];
    let manager = token_of(MA);
    let got = forecast(&mut w, &manager, first_quarter_by_month())
        .await
        .expect("manager");
    assert_forecast(&got, &north_months, "the north's manager");
    // The admin's team filter agrees.
    let mut north = first_quarter_by_month();
    north.team = "north".to_owned();
    let got = forecast(&mut w, &admin, north).await.expect("team north");
    assert_forecast(&got, &north_months, "admin, team north");

    // A rep: their own only.
    let a1_months = vec![
        period(jan.0, jan.1, jan_a1(), vec![owner(A1, jan_a1())]),
        empty(feb),
        period(mar.0, mar.1, mar_a1(), vec![owner(A1, mar_a1())]),
    ];
    let got = forecast(&mut w, &token_of(A1), first_quarter_by_month())
        .await
        .expect("rep-a1");
    assert_forecast(&got, &a1_months, "rep-a1");
    // Team and owners together narrow to both: the same.
    let mut both = first_quarter_by_month();
    both.team = "north".to_owned();
    both.owner_ids = vec![A1.to_owned(), B1.to_owned()];
    let got = forecast(&mut w, &admin, both)
        .await
        .expect("north and a1, b1");
    assert_forecast(&got, &a1_months, "admin, team north, owners a1 and b1");

    // An admin's owner filter.
    let mut owners = first_quarter_by_month();
    owners.owner_ids = vec![A2.to_owned(), B2.to_owned()];
    let got = forecast(&mut w, &admin, owners)
        .await
        .expect("owners a2, b2");
    assert_forecast(
        &got,
        &[
            period(
                jan.0,
                jan.1,
                vec![
                    category(C::Commit, vec![usd_one_at_33()]),
                    category(C::Omitted, vec![usd_lost()]),
                ],
                vec![owner(B2, jan_b2()), owner(A2, jan_a2())],
            ),
            empty(feb),
            period(mar.0, mar.1, mar_a2(), vec![owner(A2, mar_a2())]),
        ],
        "admin, owners a2 and b2",
    );
    // An admin's team filter.
    let mut south = first_quarter_by_month();
    south.team = "south".to_owned();
    let got = forecast(&mut w, &admin, south.clone())
        .await
        .expect("team south");
    assert_forecast(
        &got,
        &[
            period(
                jan.0,
                jan.1,
                vec![
                    category(C::Closed, vec![total("THB", 1, (5000, 0), (5000, 0))]),
                    category(C::Omitted, vec![usd_lost()]),
                ],
                vec![owner(B1, jan_b1()), owner(B2, jan_b2())],
            ),
            empty(feb),
            period(mar.0, mar.1, mar_b1(), vec![owner(B1, mar_b1())]),
        ],
        "admin, team south",
    );

    // Filters never widen what a caller sees: outside it, empty periods rather than an error.
    let nothing = [empty(jan), empty(feb), empty(mar)];
    let got = forecast(&mut w, &manager, south)
        .await
        .expect("manager, south");
    assert_forecast(&got, &nothing, "the north's manager asking for the south");
    let mut theirs = first_quarter_by_month();
    theirs.owner_ids = vec![A2.to_owned()];
    let got = forecast(&mut w, &token_of(A1), theirs.clone())
        .await
        .expect("rep-a1 asking for rep-a2");
    assert_forecast(&got, &nothing, "rep-a1 asking for rep-a2");
    theirs.owner_ids = vec![A2.to_owned(), B1.to_owned()];
    let got = forecast(&mut w, &manager, theirs)
        .await
        .expect("manager asking for a2 and b1");
    assert_forecast(
        &got,
        &[
            period(jan.0, jan.1, jan_a2(), vec![owner(A2, jan_a2())]),
            empty(feb),
            period(mar.0, mar.1, mar_a2(), vec![owner(A2, mar_a2())]),
        ],
        "the north's manager asking for a2 and b1",
    );
    // Someone with nothing in the range sees every period, empty.
    let got = forecast(&mut w, &token_of(B2), {
        let mut april = first_quarter_by_month();
        april.start_date = Some(date(2031, 2, 10));
        april.end_date = Some(date(2031, 4, 30));
        april
    })
    .await
    .expect("rep-b2, February to April");
    assert_forecast(
        &got,
        &[
            empty((date(2031, 2, 10), date(2031, 2, 28))),
            empty(mar),
            empty((date(2031, 4, 1), date(2031, 4, 30))),
        ],
        "rep-b2, February to April",
    );

    // Bad requests, each with its field.
    let bad = |start: Option<common::Date>, end: Option<common::Date>, kind: i32| {
        opb::GetForecastSummaryRequest {
            start_date: start,
            end_date: end,
            period_kind: kind,
            ..Default::default()
        }
    };
    let month = opb::ForecastPeriodKind::Month as i32;
    let quarter = opb::ForecastPeriodKind::Quarter as i32;
    for (request, field, why) in [
        (
            bad(None, Some(date(2031, 3, 31)), month),
            "start_date",
            "no start",
        ),
        (
            bad(Some(date(2031, 1, 1)), None, month),
            "end_date",
            "no end",
        ),
        (
            bad(Some(date(2031, 2, 29)), Some(date(2031, 3, 31)), month),
            "start_date",
            "not a calendar date",
        ),
        (
            bad(Some(date(2031, 3, 1)), Some(date(2031, 2, 28)), month),
            "end_date",
            "end before start",
        ),
        (
            bad(Some(date(2031, 1, 1)), Some(date(2041, 1, 1)), month),
            "end_date",
            "121 months",
        ),
        (
            bad(Some(date(2031, 1, 31)), Some(date(2041, 1, 1)), month),
            "end_date",
            "121 months, cut at both ends",
        ),
        (
            bad(Some(date(2031, 1, 1)), Some(date(2061, 1, 1)), quarter),
            "end_date",
            "121 quarters",
        ),
        (
            bad(Some(date(2031, 1, 1)), Some(date(2031, 3, 31)), 9),
            "period_kind",
            "an unknown period kind",
        ),
    ] {
        let error = forecast(&mut w, &admin, request).await.expect_err(why);
        assert_eq!(error.code(), Code::InvalidArgument, "{why}: {error:?}");
        let fields: Vec<String> = field_violations(&error)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, [field], "{why}");
    }
    let error = forecast(&mut w, &admin, opb::GetForecastSummaryRequest::default())
        .await
        .expect_err("no range");
    let mut fields: Vec<String> = field_violations(&error)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    fields.sort();
    assert_eq!(fields, ["end_date", "start_date"]);

    // 120 periods is the most: every one listed, in order, the last cut to the range.
    let got = forecast(
        &mut w,
        &admin,
        range(
            date(2031, 1, 1),
            date(2040, 12, 31),
            opb::ForecastPeriodKind::Month,
        ),
    )
    .await
    .expect("120 months");
    assert_eq!(got.periods.len(), 120);
    assert_eq!(got.periods[1].start_date, Some(date(2031, 2, 1)));
    assert_eq!(got.periods[1].end_date, Some(date(2031, 2, 28)));
    assert_eq!(got.periods[119].start_date, Some(date(2040, 12, 1)));
    assert_eq!(got.periods[119].end_date, Some(date(2040, 12, 31)));
    assert_eq!(got.periods[..3], admin_months[..]);
    let got = forecast(
        &mut w,
        &admin,
        range(
            date(2031, 2, 15),
            date(2060, 12, 30),
            opb::ForecastPeriodKind::Quarter,
        ),
    )
    .await
    .expect("120 quarters");
    assert_eq!(got.periods.len(), 120);
    assert_eq!(got.periods[0].start_date, Some(date(2031, 2, 15)));
    assert_eq!(got.periods[0].end_date, Some(date(2031, 3, 31)));
    assert_eq!(got.periods[2].start_date, Some(date(2031, 7, 1)));
    assert_eq!(got.periods[2].end_date, Some(date(2031, 9, 30)));
    assert_eq!(got.periods[119].start_date, Some(date(2060, 10, 1)));
    assert_eq!(got.periods[119].end_date, Some(date(2060, 12, 30)));
}
