//! R19 the pipeline as it stood: `GetPipelineSummaryRequest.as_of` against a replay of a
//! generated history, computed here independently of the server: 1,000 opportunities
//! created, moved, re-priced (currencies included), reassigned and closed over time, and
//! statuses re-weighted, each step at a known moment of the database's test clock.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use salesopp_proto::common::v1 as common;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{LOST, SHIPPED_STATUSES, WON, change_request, mask, money, rid};
use salesopp_tests::{World, admin_token, authed, field_violations, manager_token, token};
use tonic::Code;

const OPPORTUNITIES: usize = 1_000;
const OWNERS: [(&str, &str); 4] = [
    ("rep-a1", "north"),
    ("rep-a2", "north"),
    ("rep-b1", "south"),
    ("rep-b2", "south"),
];
const CURRENCIES: [&str; 3] = ["THB", "USD", ""];

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 1, 5, 8, 0, 0).unwrap()
}

fn ts(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn rep(owner: &str) -> String {
    let team = OWNERS
        .iter()
        .find(|(id, _)| *id == owner)
        .expect("an owner")
        .1;
    token(owner, &format!("Rep {owner}"), team, &["sales_rep"])
}

/// What the summary reads of one opportunity at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Deal {
    owner: String,
    status: String,
    /// "" without an amount.
    currency: &'static str,
    /// In nanos; 0 without an amount.
    amount: i128,
    /// The expected close date (year, month, day), if any.
    close: Option<(i32, i32, i32)>,
}

/// One opportunity's id and its states in order, each from its moment on.
type Timeline = (String, Vec<(DateTime<Utc>, Deal)>);

/// The model: every opportunity's states in order, each from its moment on, and every
/// status's probabilities in order, each from its moment on.
#[derive(Default)]
struct Model {
    deals: Vec<Timeline>,
    probabilities: HashMap<String, Vec<(DateTime<Utc>, i32)>>,
}

/// Count, total and weighted total x 100, in nanos.
type Totals = (i64, i128, i128);

impl Model {
    fn probability(&self, status: &str, at: DateTime<Utc>) -> i32 {
        let changes = &self.probabilities[status];
        changes
            .iter()
            .rev()
            .find(|(from, _)| *from <= at)
            .unwrap_or(&changes[0])
            .1
    }

    /// Per (owner, status, currency), of the opportunities `keep` keeps, at `at`.
    fn at(
        &self,
        at: DateTime<Utc>,
        keep: impl Fn(&Deal) -> bool,
    ) -> BTreeMap<(String, String, String), Totals> {
        let mut groups: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
        for (_, states) in &self.deals {
            let Some((_, deal)) = states.iter().rev().find(|(from, _)| *from <= at) else {
                continue;
            };
            if !keep(deal) {
                continue;
            }
            let p = i128::from(self.probability(&deal.status, at));
            let group = groups
                .entry((
                    deal.owner.clone(),
                    deal.status.clone(),
                    deal.currency.to_owned(),
                ))
                .or_default();
            group.0 += 1;
            group.1 += deal.amount;
            group.2 += deal.amount * p;
        }
        groups
    }
}

fn nanos(money: &common::Money) -> i128 {
    i128::from(money.units) * 1_000_000_000 + i128::from(money.nanos)
}

/// The summary's owner x status totals in the model's terms; checks each weighted amount is
/// the exact weighted total (the fixture's amounts are whole cents, so it needs no rounding).
fn answered(
    summary: &opb::GetPipelineSummaryResponse,
) -> BTreeMap<(String, String, String), Totals> {
    let mut groups = BTreeMap::new();
    for entry in &summary.by_owner_status {
        for total in &entry.totals {
            let amount = total.total_amount.as_ref().map_or(0, nanos);
            let weighted = total.weighted_amount.as_ref().map_or(0, nanos) * 100;
            assert_eq!(
                total.total_amount.is_some(),
                !total.currency_code.is_empty(),
                "{total:?}"
            );
            groups.insert(
                (
                    entry.owner_id.clone(),
                    entry.status_id.clone(),
                    total.currency_code.clone(),
                ),
                (total.count, amount, weighted),
            );
        }
    }
    groups
}

async fn summary(
    w: &mut World,
    caller: &str,
    request: opb::GetPipelineSummaryRequest,
) -> Result<opb::GetPipelineSummaryResponse, tonic::Status> {
    w.opps
        .get_pipeline_summary(authed(caller, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn as_of(w: &mut World, caller: &str, at: DateTime<Utc>) -> opb::GetPipelineSummaryResponse {
    summary(
        w,
        caller,
        opb::GetPipelineSummaryRequest {
            as_of: Some(ts(at)),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("as of {at}: {e:?}"))
}

/// A close date in 2031 or 2032, or none (one in five).
fn random_close(rng: &mut fastrand::Rng) -> Option<(i32, i32, i32)> {
    (rng.u8(..5) > 0).then(|| (rng.i32(2031..=2032), rng.i32(1..=12), rng.i32(1..=28)))
}

fn date_of((year, month, day): (i32, i32, i32)) -> common::Date {
    common::Date { year, month, day }
}

fn random_amount(rng: &mut fastrand::Rng) -> (&'static str, Option<common::Money>, i128) {
    let currency = CURRENCIES[rng.usize(..CURRENCIES.len())];
    if currency.is_empty() {
        return ("", None, 0);
    }
    let units = rng.i64(0..2_000_000);
    let cents = rng.i32(0..100);
    let nanos = cents * 10_000_000;
    (
        currency,
        Some(money(currency, units, nanos)),
        i128::from(units) * 1_000_000_000 + i128::from(nanos),
    )
}

/// Builds the history through the API, one step per moment, and returns the model and the
/// moment of every step.
async fn generate(w: &mut World, rng: &mut fastrand::Rng) -> (Model, Vec<DateTime<Utc>>) {
    let admin = admin_token();
    let mut model = Model::default();
    let statuses = w
        .statuses
        .list_statuses(authed(&admin, spb::ListStatusesRequest::default()))
        .await
        .expect("statuses")
        .into_inner()
        .statuses;
    let open: Vec<String> = statuses
        .iter()
        .filter(|s| s.kind() == spb::StatusKind::Open)
        .map(|s| s.id.clone())
        .collect();
    for s in &statuses {
        model.probabilities.insert(
            s.id.clone(),
            vec![(t0() - Duration::days(3650), s.probability)],
        );
    }
    // Every owner recorded by a first call.
    for (owner, _) in OWNERS {
        summary(w, &rep(owner), opb::GetPipelineSummaryRequest::default())
            .await
            .expect("a first call");
    }
    let customer = w.customer(&admin, "As of Co").await;
    let mut now = t0();
    let mut moments = Vec::new();
    while model.deals.len() < OPPORTUNITIES || moments.len() < 2 * OPPORTUNITIES + 400 {
        // Steps of up to an hour; one in ten at the same moment as the step before.
        if rng.u8(..10) > 0 {
            now += Duration::milliseconds(rng.i64(1..3_600_000));
        }
        w.set_clock(now).await;
        moments.push(now);
        let roll = rng.u8(..100);
        if model.deals.len() < 200 || (roll < 40 && model.deals.len() < OPPORTUNITIES) {
            let owner = OWNERS[rng.usize(..OWNERS.len())].0;
            let status = open[rng.usize(..open.len())].clone();
            let (currency, amount, value) = random_amount(rng);
            let close = random_close(rng);
            let created = w
                .try_create_request(
                    &admin,
                    opb::CreateOpportunityRequest {
                        opportunity: Some(opb::Opportunity {
                            customer_id: customer.id.clone(),
                            owner_id: owner.to_owned(),
                            title: format!("Deal {}", model.deals.len()),
                            amount,
                            expected_close_date: close.map(date_of),
                            status_id: status.clone(),
                            ..Default::default()
                        }),
                        request_id: rid(),
                        ..Default::default()
                    },
                )
                .await
                .expect("create");
            let deal = Deal {
                owner: owner.to_owned(),
                status,
                currency,
                amount: value,
                close,
            };
            model.deals.push((created.id, vec![(now, deal)]));
            continue;
        }
        let i = rng.usize(..model.deals.len());
        let (id, states) = &mut model.deals[i];
        let mut deal = states.last().expect("a state").1.clone();
        match roll {
            40..=69 => {
                // Any other status, closing and reopening included.
                let to = SHIPPED_STATUSES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .filter(|s| *s != deal.status)
                    .nth(rng.usize(..SHIPPED_STATUSES.len() - 1))
                    .expect("a status");
                w.opps
                    .change_opportunity_status(authed(&admin, change_request(id, &to)))
                    .await
                    .expect("change status");
                deal.status = to;
            }
            70..=79 => {
                let (currency, amount, value) = random_amount(rng);
                update(
                    w,
                    &admin,
                    id,
                    opb::Opportunity {
                        amount,
                        ..Default::default()
                    },
                    "amount",
                )
                .await;
                deal.currency = currency;
                deal.amount = value;
            }
            80..=84 => {
                let close = random_close(rng);
                let expected_close_date = close.map(date_of);
                update(
                    w,
                    &admin,
                    id,
                    opb::Opportunity {
                        expected_close_date,
                        ..Default::default()
                    },
                    "expected_close_date",
                )
                .await;
                deal.close = close;
            }
            85..=94 => {
                let owner = OWNERS[rng.usize(..OWNERS.len())].0;
                let owner_id = owner.to_owned();
                update(
                    w,
                    &admin,
                    id,
                    opb::Opportunity {
                        owner_id,
                        ..Default::default()
                    },
                    "owner_id",
                )
                .await;
                deal.owner = owner.to_owned();
            }
            _ => {
                // A status re-weighted: every opportunity in it, from now on.
                let status = open[rng.usize(..open.len())].clone();
                let probability = rng.i32(1..100);
                w.statuses
                    .update_status(authed(
                        &admin,
                        spb::UpdateStatusRequest {
                            status: Some(spb::OpportunityStatus {
                                id: status.clone(),
                                probability,
                                ..Default::default()
                            }),
                            update_mask: mask(&["probability"]),
                            request_id: rid(),
                        },
                    ))
                    .await
                    .expect("re-weigh a status");
                model
                    .probabilities
                    .get_mut(&status)
                    .expect("a status")
                    .push((now, probability));
                continue;
            }
        }
        states.push((now, deal));
    }
    (model, moments)
}

async fn update(w: &mut World, caller: &str, id: &str, fields: opb::Opportunity, path: &str) {
    w.try_update_request(
        caller,
        opb::UpdateOpportunityRequest {
            opportunity: Some(opb::Opportunity {
                id: id.to_owned(),
                ..fields
            }),
            update_mask: mask(&[path]),
            request_id: rid(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("update {path}: {e:?}"));
}

#[tokio::test]
async fn r19_as_of_equals_a_replay_of_the_history_at_ten_random_moments() {
    let mut w = World::new().await;
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (model, steps) = generate(&mut w, &mut rng).await;
    let (first, last) = (steps[0], *steps.last().expect("steps"));
    assert!(
        model.deals.iter().any(|(_, s)| s.len() > 3),
        "some deals changed often"
    );

    // Ten moments: four anywhere in the history, four exactly at a step (a change made at
    // that moment counts), one before anything, and the last step.
    let mut moments: Vec<DateTime<Utc>> = (0..4)
        .map(|_| first + Duration::milliseconds(rng.i64(0..(last - first).num_milliseconds())))
        .collect();
    moments.extend((0..4).map(|_| steps[rng.usize(..steps.len())]));
    moments.push(first - Duration::microseconds(1));
    moments.push(last);
    let admin = admin_token();
    for at in &moments {
        let got = as_of(&mut w, &admin, *at).await;
        let want = model.at(*at, |_| true);
        assert_eq!(answered(&got), want, "as of {at} (seed {seed})");
        // The statuses with their probabilities of then; the overall totals agree.
        for status in &got.by_status {
            assert_eq!(
                status.probability,
                model.probability(&status.status_id, *at),
                "{at}"
            );
        }
        let total = got.total.as_ref().expect("total");
        let count = |totals: &[opb::CurrencyTotal]| totals.iter().map(|t| t.count).sum::<i64>();
        let closed = |status: &str| {
            want.iter()
                .filter(|((_, s, _), _)| s == status)
                .map(|(_, t)| t.0)
                .sum::<i64>()
        };
        assert_eq!(count(&total.won), closed(WON), "{at}");
        assert_eq!(count(&total.lost), closed(LOST), "{at}");
        let all: i64 = want.values().map(|t| t.0).sum();
        assert_eq!(count(&total.open), all - closed(WON) - closed(LOST), "{at}");
    }
    assert!(
        as_of(&mut w, &admin, moments[8])
            .await
            .by_owner_status
            .is_empty()
    );

    // The last moment is now: the same answer as without `as_of`.
    let live = summary(&mut w, &admin, opb::GetPipelineSummaryRequest::default())
        .await
        .expect("live summary");
    assert_eq!(
        answered(&live),
        answered(&as_of(&mut w, &admin, last).await)
    );

    // R12 and the owner filters apply to the owner of then.
    let at = moments[0];
    let mine = as_of(&mut w, &rep("rep-a1"), at).await;
    assert_eq!(
        answered(&mine),
        model.at(at, |d| d.owner == "rep-a1"),
        "rep-a1 as of {at}"
    );
    let team = as_of(&mut w, &manager_token(), at).await;
    assert_eq!(
        answered(&team),
        model.at(at, |d| d.owner.starts_with("rep-a")),
        "north as of {at}"
    );
    let south = summary(
        &mut w,
        &admin,
        opb::GetPipelineSummaryRequest {
            as_of: Some(ts(at)),
            team: "south".to_owned(),
            states: vec![opb::OpportunityState::Open.into()],
            ..Default::default()
        },
    )
    .await
    .expect("south, open");
    let closing = [WON, LOST];
    assert_eq!(
        answered(&south),
        model.at(at, |d| d.owner.starts_with("rep-b")
            && !closing.contains(&d.status.as_str())),
        "south open as of {at}"
    );
    // The expected close dates of then: a range keeps the deals expected in it then.
    let at = moments[1];
    let (from, to) = ((2031, 4, 1), (2031, 9, 30));
    let ranged = summary(
        &mut w,
        &admin,
        opb::GetPipelineSummaryRequest {
            as_of: Some(ts(at)),
            expected_close_date_from: Some(date_of(from)),
            expected_close_date_to: Some(date_of(to)),
            ..Default::default()
        },
    )
    .await
    .expect("a close date range");
    let want = model.at(at, |d| d.close.is_some_and(|c| c >= from && c <= to));
    assert!(!want.is_empty(), "the range holds deals");
    assert_eq!(answered(&ranged), want, "close dates in range as of {at}");
}

#[tokio::test]
async fn r19_as_of_in_the_future_or_out_of_range_is_invalid_argument() {
    let mut w = World::new().await;
    let admin = admin_token();
    w.set_clock(t0()).await;
    for (at, field, why) in [
        (ts(t0() + Duration::seconds(1)), "as_of", "in the future"),
        (
            prost_types::Timestamp {
                seconds: -70_000_000_000,
                nanos: 0,
            },
            "as_of.seconds",
            "0001-01-01",
        ),
        (
            prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            },
            "as_of.nanos",
            "0..999,999,999",
        ),
    ] {
        let error = summary(
            &mut w,
            &admin,
            opb::GetPipelineSummaryRequest {
                as_of: Some(at),
                ..Default::default()
            },
        )
        .await
        .expect_err(why);
        assert_eq!(error.code(), Code::InvalidArgument, "{why}");
        let violations = field_violations(&error);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].0, field);
        assert!(violations[0].1.contains(why), "{violations:?}");
    }
    // The present moment is not the future.
    as_of(&mut w, &admin, t0()).await;
}
