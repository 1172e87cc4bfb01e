//! OpportunityService end to end: customers made through CustomerService, opportunities
//! through OpportunityService, statuses configured through StatusConfigService; real Postgres
//! (one database per test) and real gRPC. Tests named `rNN_...` prove the DESIGN.md rule they
//! name (R1, R5, R7-R14); the others prove the rest of `opportunity.proto` (validation,
//! masks, etags, salespeople).
//!
//! Every failed write is followed by a check that nothing changed: a snapshot of every table
//! a call may write, taken before the call, is compared with one taken after it. No timing is
//! asserted anywhere: durations are checked against the recorded times, never a clock.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::future::join_all;
use prost_types::Timestamp;
use salesopp_proto::common::v1::{Actor, Date, Money};
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_proto::statusconfig::v1::StatusKind;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, SHIPPED_STATUSES, WON,
    change_request, error_reason, mask, money, rid,
};
use salesopp_tests::settled::Settled as _;
use salesopp_tests::{
    admin_token, authed, expect_code, expect_invalid, expect_invalid_fields, field_violations,
    manager_token, rep_token, token,
};
use tonic::{Code, Status};
use uuid::Uuid;

/// A well-formed UUID that no row has.
const UNKNOWN: &str = "6f1c1a8e-0000-4000-8000-00000000dead";

// ---------------------------------------------------------------------------------------
// The cast: the harness's rep-a1 "Somchai Rep" (north), mgr-a "Malee Manager" (north) and
// admin-1 "Araya Admin" (hq), and these.
// ---------------------------------------------------------------------------------------

const REP_A1: &str = "rep-a1";
const REP_A2: &str = "rep-a2";
const REP_B1: &str = "rep-b1";
const MGR_A: &str = "mgr-a";
const ADMIN: &str = "admin-1";

/// A second rep of rep-a1's team.
fn rep_a2_token() -> String {
    token(REP_A2, "Niran Rep", "north", &["sales_rep"])
}

/// A rep of another team.
fn rep_b_token() -> String {
    token(REP_B1, "Suda Rep", "south", &["sales_rep"])
}

/// A manager of another team.
fn manager_b_token() -> String {
    token("mgr-b", "Boon Manager", "south", &["sales_manager"])
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

fn thb(units: i64, nanos: i32) -> Money {
    money("THB", units, nanos)
}

fn day(year: i32, month: i32, day: i32) -> Date {
    Date { year, month, day }
}

/// An opportunity to create: the three required fields.
fn draft(customer_id: &str, title: &str, amount: Money) -> pb::Opportunity {
    pb::Opportunity {
        customer_id: customer_id.to_owned(),
        title: title.to_owned(),
        amount: Some(amount),
        ..Default::default()
    }
}

fn create_request(opportunity: pb::Opportunity) -> pb::CreateOpportunityRequest {
    pb::CreateOpportunityRequest {
        opportunity: Some(opportunity),
        request_id: rid(),
        note: String::new(),
    }
}

fn snapshot_of(id: &str, name: &str, kind: StatusKind, probability: i32) -> pb::StatusSnapshot {
    pb::StatusSnapshot {
        id: id.to_owned(),
        display_name: name.to_owned(),
        kind: kind.into(),
        probability,
    }
}

fn actor(id: &str, name: &str) -> Option<Actor> {
    Some(Actor {
        id: id.to_owned(),
        display_name: name.to_owned(),
    })
}

fn micros(time: &Option<Timestamp>) -> i128 {
    let time = time.as_ref().expect("a timestamp");
    i128::from(time.seconds) * 1_000_000 + i128::from(time.nanos) / 1000
}

fn duration_micros(duration: &Option<prost_types::Duration>) -> i128 {
    let duration = duration.as_ref().expect("a duration");
    i128::from(duration.seconds) * 1_000_000 + i128::from(duration.nanos) / 1000
}

fn ids(opportunities: &[pb::Opportunity]) -> Vec<String> {
    opportunities.iter().map(|o| o.id.clone()).collect()
}

fn id_set(opportunities: &[pb::Opportunity]) -> BTreeSet<String> {
    opportunities.iter().map(|o| o.id.clone()).collect()
}

fn set_of(opportunities: &[&pb::Opportunity]) -> BTreeSet<String> {
    opportunities.iter().map(|o| o.id.clone()).collect()
}

fn state(o: &pb::Opportunity) -> pb::OpportunityState {
    pb::OpportunityState::try_from(o.state).expect("a known state")
}

/// A tiny deterministic generator (xorshift), seeded per test run.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = (Uuid::new_v4().as_u128() as u64) | 1;
        (Rng(seed), seed)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------
// The world of one test: a suite and its three clients.
// ---------------------------------------------------------------------------------------

salesopp_tests::world! {
    /// The shared world, with this file's calls.
    struct World {}
}

impl World {
    async fn new() -> World {
        World {
            world: salesopp_tests::World::new().await,
        }
    }

    async fn try_create(
        &mut self,
        token: &str,
        opportunity: pb::Opportunity,
    ) -> Result<pb::Opportunity, Status> {
        self.try_create_request(token, create_request(opportunity))
            .await
    }

    async fn create(&mut self, token: &str, opportunity: pb::Opportunity) -> pb::Opportunity {
        self.try_create(token, opportunity)
            .await
            .expect("create opportunity")
    }

    async fn change(
        &mut self,
        token: &str,
        id: &str,
        status_id: &str,
        note: &str,
    ) -> pb::ChangeOpportunityStatusResponse {
        let mut request = change_request(id, status_id);
        request.note = note.to_owned();
        self.try_change(token, request)
            .await
            .expect("change opportunity status")
    }

    async fn try_update(
        &mut self,
        token: &str,
        opportunity: pb::Opportunity,
        paths: &[&str],
    ) -> Result<pb::Opportunity, Status> {
        self.try_update_request(
            token,
            pb::UpdateOpportunityRequest {
                opportunity: Some(opportunity),
                update_mask: if paths.is_empty() { None } else { mask(paths) },
                note: String::new(),
                request_id: String::new(),
            },
        )
        .await
    }

    async fn try_list(
        &mut self,
        token: &str,
        request: pb::ListOpportunitiesRequest,
    ) -> Result<pb::ListOpportunitiesResponse, Status> {
        self.opps
            .list_opportunities(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every page of `request` (with its page size), checking no row comes twice.
    async fn list_all(
        &mut self,
        token: &str,
        mut request: pb::ListOpportunitiesRequest,
    ) -> Vec<pb::Opportunity> {
        let mut all: Vec<pb::Opportunity> = Vec::new();
        for _ in 0..1000 {
            let page = self
                .try_list(token, request.clone())
                .await
                .expect("list opportunities");
            if request.page_size > 0 {
                assert!(page.opportunities.len() <= request.page_size as usize);
            }
            all.extend(page.opportunities);
            if page.next_page_token.is_empty() {
                let unique: HashSet<&str> = all.iter().map(|o| o.id.as_str()).collect();
                assert_eq!(unique.len(), all.len(), "a row came twice across pages");
                return all;
            }
            request.page_token = page.next_page_token;
        }
        panic!("the pages never ended");
    }

    async fn pipeline(
        &mut self,
        token: &str,
        request: pb::GetPipelineSummaryRequest,
    ) -> Result<pb::GetPipelineSummaryResponse, Status> {
        self.opps
            .get_pipeline_summary(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn salespeople(
        &mut self,
        token: &str,
        request: pb::ListSalespeopleRequest,
    ) -> Result<pb::ListSalespeopleResponse, Status> {
        self.opps
            .list_salespeople(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Everything a call may write, as one comparable text.
    async fn snapshot(&self) -> String {
        sqlx::query_scalar(
            "select jsonb_build_object(
                 'opportunities', (select coalesce(jsonb_agg(to_jsonb(o) order by o.id), '[]')
                                   from opportunities o),
                 'history', (select coalesce(jsonb_agg(to_jsonb(h) order by h.id), '[]')
                             from status_changes h),
                 'events', (select coalesce(jsonb_agg(jsonb_build_object(
                                'id', e.id, 'event_id', e.event_id, 'type', e.type,
                                'opportunity_id', e.opportunity_id, 'payload', md5(e.payload))
                                order by e.id), '[]')
                            from opportunity_events e),
                 'idempotency', (select coalesce(jsonb_agg(to_jsonb(r)
                                     order by r.caller_id, r.method, r.request_id), '[]')
                                 from idempotency_records r),
                 -- The directory of salespeople is left out: a caller is recorded on their
                 -- first call, failed or not (R12), which is not a change the call made.
                 'customers', (select coalesce(jsonb_agg(to_jsonb(c) order by c.id), '[]')
                               from customers c),
                 'statuses', (select coalesce(jsonb_agg(to_jsonb(s) order by s.id), '[]')
                              from opportunity_statuses s))::text",
        )
        .fetch_one(self.db())
        .await
        .expect("snapshot")
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.db())
            .await
            .expect("count")
    }

    /// The event types of one opportunity, in outbox order.
    async fn event_types(&self, id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "select type from opportunity_events where opportunity_id = $1::uuid order by id",
        )
        .bind(id)
        .fetch_all(self.db())
        .await
        .expect("event types")
    }

    async fn archive_customer(&mut self, token: &str, id: &str) {
        self.customers
            .delete_customer(authed(
                token,
                cpb::DeleteCustomerRequest {
                    request_id: String::new(),
                    id: id.to_owned(),
                    etag: String::new(),
                },
            ))
            .await
            .expect("archive the customer");
    }

    async fn archive_status(&mut self, id: &str) {
        self.statuses
            .delete_status(authed(
                &admin_token(),
                spb::DeleteStatusRequest {
                    request_id: String::new(),
                    id: id.to_owned(),
                    replacement_status_id: String::new(),
                    etag: String::new(),
                },
            ))
            .await
            .expect("archive the status");
    }
}

/// Asserts `result` failed with `code` and that the tables are as `before`.
#[track_caller]
fn assert_unchanged(before: &str, after: &str, what: &str) {
    assert!(
        before == after,
        "{what}: the failed call changed the database"
    );
}

// =======================================================================================
// R9: the seed's story
// =======================================================================================

/// The seed's story: a customer gets in touch, the salesperson records them, opens an
/// opportunity (in the default status, Interested), then moves it to Quotation when they ask
/// for a price, to Considering and comparing while they think, and to Closed won.
#[tokio::test]
async fn r09_seed_story_records_four_history_entries() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "บริษัท สยามเทค จำกัด").await.id;

    let create = pb::CreateOpportunityRequest {
        opportunity: Some(pb::Opportunity {
            expected_close_date: Some(day(2026, 6, 30)),
            next_step: "Present the fleet module".to_owned(),
            ..draft(&customer, "ERP for 20 branches", thb(250_000, 0))
        }),
        request_id: rid(),
        note: "First call: interested in 20 licences".to_owned(),
    };
    let created = w
        .try_create_request(&rep, create.clone())
        .await
        .expect("create");
    assert_eq!(created.status_id, INTERESTED, "R5: the default status");
    assert_eq!(created.status_name, "Interested");
    assert_eq!(created.probability, 10);
    assert_eq!(state(&created), pb::OpportunityState::Open);
    assert_eq!(created.owner_id, REP_A1);
    assert_eq!(created.customer_id, customer);
    assert_eq!(created.created_by, actor(REP_A1, "Somchai Rep"));
    assert_eq!(created.updated_by, actor(REP_A1, "Somchai Rep"));
    assert!(created.close_time.is_none());
    assert_eq!(
        micros(&created.status_change_time),
        micros(&created.create_time)
    );
    let id = created.id.clone();

    let quotation = w
        .change(&rep, &id, QUOTATION, "Customer asked for a quotation")
        .await;
    // The amount changes while the customer negotiates: later entries record the new amount.
    let mut repriced = pb::Opportunity {
        id: id.clone(),
        amount: Some(thb(240_000, 500_000_000)),
        ..Default::default()
    };
    repriced.etag = quotation.opportunity.as_ref().unwrap().etag.clone();
    w.try_update(&rep, repriced, &["amount"])
        .await
        .expect("reprice");
    // The team's manager follows up (R12: a manager changes their team's opportunities).
    let considering = w
        .change(
            &manager_token(),
            &id,
            CONSIDERING,
            "Comparing with two other vendors",
        )
        .await;
    let won = w.change(&rep, &id, WON, "PO received").await;

    let history = w.history(&rep, &id).await;
    assert_eq!(history.len(), 4, "{history:#?}");
    let expected = [
        (
            None,
            snapshot_of(INTERESTED, "Interested", StatusKind::Open, 10),
            (REP_A1, "Somchai Rep"),
            "First call: interested in 20 licences",
            thb(250_000, 0),
        ),
        (
            Some(snapshot_of(INTERESTED, "Interested", StatusKind::Open, 10)),
            snapshot_of(QUOTATION, "Quotation", StatusKind::Open, 50),
            (REP_A1, "Somchai Rep"),
            "Customer asked for a quotation",
            thb(250_000, 0),
        ),
        (
            Some(snapshot_of(QUOTATION, "Quotation", StatusKind::Open, 50)),
            snapshot_of(
                CONSIDERING,
                "Considering and comparing",
                StatusKind::Open,
                70,
            ),
            (MGR_A, "Malee Manager"),
            "Comparing with two other vendors",
            thb(240_000, 500_000_000),
        ),
        (
            Some(snapshot_of(
                CONSIDERING,
                "Considering and comparing",
                StatusKind::Open,
                70,
            )),
            snapshot_of(WON, "Closed won", StatusKind::Won, 100),
            (REP_A1, "Somchai Rep"),
            "PO received",
            thb(240_000, 500_000_000),
        ),
    ];
    for (index, (entry, (from, to, (by_id, by_name), note, amount))) in
        history.iter().zip(expected).enumerate()
    {
        assert!(!entry.id.is_empty());
        assert_eq!(entry.opportunity_id, id, "entry {index}");
        assert_eq!(entry.from_status, from, "entry {index}: from_status");
        assert_eq!(entry.to_status, Some(to), "entry {index}: to_status");
        assert_eq!(entry.changed_by, actor(by_id, by_name), "entry {index}");
        assert_eq!(entry.note, note, "entry {index}: note");
        assert_eq!(entry.amount, Some(amount), "entry {index}: amount");
        assert_eq!(entry.lost_reason, "", "entry {index}");
        if index == 0 {
            assert!(
                entry.time_in_previous_status.is_none(),
                "the first entry has no previous status: {:?}",
                entry.time_in_previous_status
            );
        } else {
            let spent = duration_micros(&entry.time_in_previous_status);
            let between = micros(&entry.change_time) - micros(&history[index - 1].change_time);
            assert!(between >= 0, "entries in time order");
            assert_eq!(
                spent, between,
                "entry {index}: time_in_previous_status is the time since the previous change"
            );
        }
    }
    assert_eq!(history[0].request_id, create.request_id);
    assert_eq!(
        micros(&history[0].change_time),
        micros(&created.create_time)
    );
    // Each call answered with the entry it recorded.
    assert_eq!(quotation.status_change.as_ref(), Some(&history[1]));
    assert_eq!(considering.status_change.as_ref(), Some(&history[2]));
    assert_eq!(won.status_change.as_ref(), Some(&history[3]));

    let closed = w.get(&rep, &id).await;
    assert_eq!(won.opportunity.settled(), Some(closed.settled()));
    assert_eq!(state(&closed), pb::OpportunityState::Won);
    assert_eq!(closed.status_id, WON);
    assert_eq!(closed.status_name, "Closed won");
    assert_eq!(closed.probability, 100);
    assert_eq!(micros(&closed.close_time), micros(&history[3].change_time));
    assert_eq!(
        micros(&closed.status_change_time),
        micros(&history[3].change_time)
    );
    assert_eq!(closed.amount, Some(thb(240_000, 500_000_000)));
    assert_eq!(closed.updated_by, actor(REP_A1, "Somchai Rep"));
    assert_eq!(closed.created_by, actor(REP_A1, "Somchai Rep"));
    // The outbox has one event per change, in order.
    assert_eq!(
        w.event_types(&id).await,
        [
            "CREATED",
            "STATUS_CHANGED",
            "UPDATED",
            "STATUS_CHANGED",
            "STATUS_CHANGED"
        ]
    );
}

// =======================================================================================
// R1: customers first
// =======================================================================================

#[tokio::test]
async fn r01_unknown_customer_is_invalid_and_creates_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.customer(&rep, "Existing customer").await;
    let before = w.snapshot().await;
    let status = expect_invalid(
        w.try_create(&rep, draft(UNKNOWN, "Deal", thb(1000, 0)))
            .await,
        "opportunity.customer_id",
    );
    assert_eq!(field_violations(&status).len(), 1, "{status:?}");
    assert_unchanged(&before, &w.snapshot().await, "unknown customer");
    assert_eq!(w.count("select count(*) from opportunities").await, 0);
}

#[tokio::test]
async fn r01_archived_customer_is_failed_precondition_and_creates_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Closed shop").await.id;
    w.archive_customer(&rep, &customer).await;
    let before = w.snapshot().await;
    let status = expect_code(
        w.try_create(&rep, draft(&customer, "Deal", thb(1000, 0)))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(error_reason(&status), "CUSTOMER_ARCHIVED");
    assert_unchanged(&before, &w.snapshot().await, "archived customer");
    assert_eq!(w.count("select count(*) from opportunities").await, 0);
    // The same for an admin, and with an explicit status.
    let status = expect_code(
        w.try_create(
            &admin_token(),
            pb::Opportunity {
                status_id: QUOTATION.to_owned(),
                ..draft(&customer, "Deal", thb(1000, 0))
            },
        )
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(error_reason(&status), "CUSTOMER_ARCHIVED");
    assert_unchanged(&before, &w.snapshot().await, "archived customer (admin)");
}

// =======================================================================================
// R5: default on create
// =======================================================================================

#[tokio::test]
async fn r05_no_status_means_the_default_status() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Default Co").await.id;
    let created = w.create(&rep, draft(&customer, "Deal", thb(1, 0))).await;
    assert_eq!(created.status_id, INTERESTED);
    assert_eq!(created.status_name, "Interested");
    assert_eq!(created.probability, 10);
    let history = w.history(&rep, &created.id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0].to_status,
        Some(snapshot_of(INTERESTED, "Interested", StatusKind::Open, 10))
    );
    // A status given on create is honoured, closing ones included.
    let quoted = w
        .create(
            &rep,
            pb::Opportunity {
                status_id: QUOTATION.to_owned(),
                ..draft(&customer, "Quoted", thb(1, 0))
            },
        )
        .await;
    assert_eq!(quoted.status_id, QUOTATION);
    assert_eq!(state(&quoted), pb::OpportunityState::Open);
    let won = w
        .create(
            &rep,
            pb::Opportunity {
                status_id: WON.to_owned(),
                ..draft(&customer, "Already won", thb(1, 0))
            },
        )
        .await;
    assert_eq!(state(&won), pb::OpportunityState::Won);
    assert_eq!(micros(&won.close_time), micros(&won.create_time));
}

#[tokio::test]
async fn r05_a_new_default_applies_to_later_creates() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Default Co").await.id;
    let earlier = w.create(&rep, draft(&customer, "Earlier", thb(1, 0))).await;
    assert_eq!(earlier.status_id, INTERESTED);
    let status = w
        .statuses
        .set_default_status(authed(
            &admin_token(),
            spb::SetDefaultStatusRequest {
                request_id: String::new(),
                id: PRESENTED.to_owned(),
                etag: String::new(),
            },
        ))
        .await
        .expect("set default")
        .into_inner();
    assert!(status.is_default);
    let later = w.create(&rep, draft(&customer, "Later", thb(1, 0))).await;
    assert_eq!(later.status_id, PRESENTED);
    assert_eq!(later.status_name, "Presented");
    assert_eq!(later.probability, 20);
    assert_eq!(
        w.history(&rep, &later.id).await[0].to_status,
        Some(snapshot_of(PRESENTED, "Presented", StatusKind::Open, 20))
    );
    // Opportunities created before keep their status.
    assert_eq!(w.get(&rep, &earlier.id).await.status_id, INTERESTED);
    // An explicit status still wins over the default.
    let explicit = w
        .create(
            &rep,
            pb::Opportunity {
                status_id: INTERESTED.to_owned(),
                ..draft(&customer, "Explicit", thb(1, 0))
            },
        )
        .await;
    assert_eq!(explicit.status_id, INTERESTED);
}

// =======================================================================================
// R7: history never rewritten
// =======================================================================================

#[tokio::test]
async fn r07_renaming_a_status_changes_opportunities_not_history() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Rename Co").await.id;
    let opportunity = w.create(&rep, draft(&customer, "Deal", thb(1000, 0))).await;
    let id = opportunity.id.clone();
    w.change(&rep, &id, QUOTATION, "quote").await;
    let history_before = w.history(&rep, &id).await;
    assert_eq!(history_before.len(), 2);

    let renamed = w
        .statuses
        .update_status(authed(
            &admin_token(),
            spb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(spb::OpportunityStatus {
                    id: QUOTATION.to_owned(),
                    display_name: "Quote sent".to_owned(),
                    probability: 55,
                    ..Default::default()
                }),
                update_mask: mask(&["display_name", "probability"]),
            },
        ))
        .await
        .expect("rename the status")
        .into_inner();
    assert_eq!(renamed.display_name, "Quote sent");
    assert_eq!(renamed.probability, 55);
    // The closing statuses can be renamed too.
    w.statuses
        .update_status(authed(
            &admin_token(),
            spb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(spb::OpportunityStatus {
                    id: INTERESTED.to_owned(),
                    display_name: "Lead".to_owned(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            },
        ))
        .await
        .expect("rename Interested");

    // What the opportunity shows from now on follows the status.
    let now = w.get(&rep, &id).await;
    assert_eq!(now.status_id, QUOTATION);
    assert_eq!(now.status_name, "Quote sent");
    assert_eq!(now.probability, 55);
    let listed = w
        .list_all(&rep, pb::ListOpportunitiesRequest::default())
        .await;
    assert_eq!(listed[0].status_name, "Quote sent");
    assert_eq!(listed[0].probability, 55);
    // What history says does not.
    assert_eq!(w.history(&rep, &id).await, history_before);
    assert_eq!(
        history_before[1].to_status,
        Some(snapshot_of(QUOTATION, "Quotation", StatusKind::Open, 50))
    );
    assert_eq!(
        history_before[0].to_status,
        Some(snapshot_of(INTERESTED, "Interested", StatusKind::Open, 10))
    );
    // The next change records the status as it applies now.
    let next = w.change(&rep, &id, CONSIDERING, "").await;
    assert_eq!(
        next.status_change.unwrap().from_status,
        Some(snapshot_of(QUOTATION, "Quote sent", StatusKind::Open, 55))
    );
    let history = w.history(&rep, &id).await;
    assert_eq!(history[..2], history_before[..]);
}

// =======================================================================================
// R8: status changes
// =======================================================================================

#[tokio::test]
async fn r08_any_status_to_any_status_closes_and_reopens() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Roundabout Co").await.id;
    let opportunity = w.create(&rep, draft(&customer, "Deal", thb(5000, 0))).await;
    let id = opportunity.id.clone();

    // Skipping ahead, back, to WON from an early status, out of WON, into and out of LOST,
    // from LOST straight to WON and from WON straight to LOST.
    let walk: [(&str, Option<&str>); 12] = [
        (CONSIDERING, None),
        (PRESENTED, None),
        (WON, None),
        (SENT_EMAIL, None),
        (LOST, Some("Price too high")),
        (INTERESTED, None),
        (LOST, Some("Chose a competitor")),
        (WON, None),
        (LOST, None),
        (QUOTATION, None),
        (WON, None),
        (INTERESTED, None),
    ];
    let mut previous = INTERESTED.to_owned();
    for (step, (target, reason)) in walk.iter().enumerate() {
        let mut request = change_request(&id, target);
        request.lost_reason = reason.unwrap_or_default().to_owned();
        let before = w.get(&rep, &id).await;
        let response = w.try_change(&rep, request).await.expect("change");
        let after = response.opportunity.expect("the opportunity");
        let entry = response.status_change.expect("an entry for a real move");
        assert_eq!(
            entry.from_status.as_ref().unwrap().id,
            previous,
            "step {step}"
        );
        assert_eq!(entry.to_status.as_ref().unwrap().id, *target, "step {step}");
        assert_eq!(after.status_id, *target, "step {step}");
        assert_ne!(
            after.etag, before.etag,
            "step {step}: every write changes the etag"
        );
        assert_eq!(
            micros(&after.status_change_time),
            micros(&entry.change_time),
            "step {step}"
        );
        match *target {
            WON => {
                assert_eq!(state(&after), pb::OpportunityState::Won, "step {step}");
                assert_eq!(
                    micros(&after.close_time),
                    micros(&entry.change_time),
                    "step {step}: moving to WON closes it now"
                );
                assert_eq!(after.lost_reason, "", "step {step}");
            }
            LOST => {
                assert_eq!(state(&after), pb::OpportunityState::Lost, "step {step}");
                assert_eq!(
                    micros(&after.close_time),
                    micros(&entry.change_time),
                    "step {step}: moving to LOST closes it now"
                );
                assert_eq!(after.lost_reason, reason.unwrap_or_default(), "step {step}");
                assert_eq!(entry.lost_reason, reason.unwrap_or_default(), "step {step}");
            }
            _ => {
                assert_eq!(state(&after), pb::OpportunityState::Open, "step {step}");
                assert!(
                    after.close_time.is_none(),
                    "step {step}: an OPEN status reopens it"
                );
                assert_eq!(
                    after.lost_reason, "",
                    "step {step}: the lost reason is cleared"
                );
            }
        }
        assert_eq!(
            w.get(&rep, &id).await.settled(),
            after.settled(),
            "step {step}"
        );
        previous = target.to_string();
    }
    let history = w.history(&rep, &id).await;
    assert_eq!(history.len(), 1 + walk.len());
    // Every default status was visited, some many times.
    let visited: BTreeSet<&str> = history
        .iter()
        .map(|e| e.to_status.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(visited, SHIPPED_STATUSES.into_iter().collect());
}

#[tokio::test]
async fn r08_lost_reason_only_with_the_lost_status() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Reasons Co").await.id;
    let open = w
        .create(&rep, draft(&customer, "Open deal", thb(10, 0)))
        .await;

    // ChangeOpportunityStatus: to any non-LOST status (OPEN or WON) with a reason.
    for target in [QUOTATION, WON, INTERESTED] {
        let before = w.snapshot().await;
        let mut request = change_request(&open.id, target);
        request.lost_reason = "Budget cut".to_owned();
        expect_invalid(w.try_change(&rep, request).await, "lost_reason");
        assert_unchanged(&before, &w.snapshot().await, target);
    }
    // CreateOpportunity: a reason with the default or a WON status.
    for status_id in ["", WON] {
        let before = w.snapshot().await;
        expect_invalid(
            w.try_create(
                &rep,
                pb::Opportunity {
                    status_id: status_id.to_owned(),
                    lost_reason: "Budget cut".to_owned(),
                    ..draft(&customer, "Deal", thb(1, 0))
                },
            )
            .await,
            "opportunity.lost_reason",
        );
        assert_unchanged(&before, &w.snapshot().await, "create with a lost reason");
    }
    // UpdateOpportunity: a reason on an OPEN opportunity, or with a move to a non-LOST one.
    let before = w.snapshot().await;
    expect_invalid(
        w.try_update(
            &rep,
            pb::Opportunity {
                id: open.id.clone(),
                lost_reason: "Budget cut".to_owned(),
                ..Default::default()
            },
            &["lost_reason"],
        )
        .await,
        "opportunity.lost_reason",
    );
    expect_invalid(
        w.try_update(
            &rep,
            pb::Opportunity {
                id: open.id.clone(),
                status_id: WON.to_owned(),
                lost_reason: "Budget cut".to_owned(),
                ..Default::default()
            },
            &["status_id", "lost_reason"],
        )
        .await,
        "opportunity.lost_reason",
    );
    assert_unchanged(&before, &w.snapshot().await, "update with a lost reason");

    // LOST accepts it, on create and on every way of moving there.
    let lost = w
        .create(
            &rep,
            pb::Opportunity {
                status_id: LOST.to_owned(),
                lost_reason: "  No budget this year  ".to_owned(),
                ..draft(&customer, "Lost on arrival", thb(1, 0))
            },
        )
        .await;
    assert_eq!(state(&lost), pb::OpportunityState::Lost);
    assert_eq!(lost.lost_reason, "No budget this year");
    assert_eq!(
        w.history(&rep, &lost.id).await[0].lost_reason,
        "No budget this year"
    );

    let mut request = change_request(&open.id, LOST);
    request.lost_reason = "Chose a competitor".to_owned();
    let moved = w
        .try_change(&rep, request)
        .await
        .expect("to LOST with a reason");
    assert_eq!(
        moved.opportunity.as_ref().unwrap().lost_reason,
        "Chose a competitor"
    );
    assert_eq!(
        moved.status_change.unwrap().lost_reason,
        "Chose a competitor"
    );
    // While LOST, the reason can be edited.
    let edited = w
        .try_update(
            &rep,
            pb::Opportunity {
                id: open.id.clone(),
                lost_reason: "Chose a cheaper competitor".to_owned(),
                ..Default::default()
            },
            &["lost_reason"],
        )
        .await
        .expect("edit the reason while LOST");
    assert_eq!(edited.lost_reason, "Chose a cheaper competitor");
    // And UpdateOpportunity moves to LOST with a reason too.
    let other = w
        .create(&rep, draft(&customer, "Other deal", thb(10, 0)))
        .await;
    let updated = w
        .try_update_request(
            &rep,
            pb::UpdateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    id: other.id.clone(),
                    status_id: LOST.to_owned(),
                    lost_reason: "Project cancelled".to_owned(),
                    ..Default::default()
                }),
                update_mask: mask(&["status_id", "lost_reason"]),
                note: "Called off".to_owned(),
                request_id: String::new(),
            },
        )
        .await
        .expect("update to LOST with a reason");
    assert_eq!(state(&updated), pb::OpportunityState::Lost);
    assert_eq!(updated.lost_reason, "Project cancelled");
    let entry = w.history(&rep, &other.id).await.pop().unwrap();
    assert_eq!(entry.lost_reason, "Project cancelled");
    assert_eq!(entry.note, "Called off");
}

#[tokio::test]
async fn r08_moving_to_the_current_status_records_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Same Co").await.id;
    let created = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    let id = created.id.clone();
    let moved = w.change(&rep, &id, QUOTATION, "").await;
    let current = moved.opportunity.unwrap();
    let history = w.history(&rep, &id).await;
    let events = w.event_types(&id).await;

    // ChangeOpportunityStatus to the status it has, with and without the etag.
    let mut request = change_request(&id, QUOTATION);
    request.note = "no move".to_owned();
    request.etag = current.etag.clone();
    let same = w.try_change(&rep, request).await.expect("same status");
    assert!(same.status_change.is_none(), "{same:?}");
    assert_eq!(same.opportunity.settled(), Some(current.settled()));
    assert_eq!(same.opportunity.unwrap().etag, current.etag);
    // UpdateOpportunity with the same status in its mask.
    let updated = w
        .try_update_request(
            &rep,
            pb::UpdateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    id: id.clone(),
                    status_id: QUOTATION.to_owned(),
                    etag: current.etag.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["status_id"]),
                note: "no move either".to_owned(),
                request_id: String::new(),
            },
        )
        .await
        .expect("update to the same status");
    assert_eq!(updated.settled(), current.settled());

    assert_eq!(w.history(&rep, &id).await, history, "nothing recorded");
    assert_eq!(w.event_types(&id).await, events, "no event");
    assert_eq!(
        w.get(&rep, &id).await.settled(),
        current.settled(),
        "nothing changed"
    );
}

#[tokio::test]
async fn r08_update_with_status_in_mask_records_like_change_status() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Twins Co").await.id;
    let by_change = w.create(&rep, draft(&customer, "A", thb(777, 7))).await;
    let by_update = w.create(&rep, draft(&customer, "B", thb(777, 7))).await;

    let changed = w
        .change(&rep, &by_change.id, WON, "Signed the contract")
        .await;
    let updated = w
        .try_update_request(
            &rep,
            pb::UpdateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    id: by_update.id.clone(),
                    status_id: WON.to_owned(),
                    etag: by_update.etag.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["status_id"]),
                note: "Signed the contract".to_owned(),
                request_id: rid(),
            },
        )
        .await
        .expect("update the status");

    let a = w.history(&rep, &by_change.id).await;
    let b = w.history(&rep, &by_update.id).await;
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2, "the edit call recorded one entry: {b:#?}");
    let (a, b) = (&a[1], &b[1]);
    assert_eq!(a.from_status, b.from_status);
    assert_eq!(
        b.to_status,
        Some(snapshot_of(WON, "Closed won", StatusKind::Won, 100))
    );
    assert_eq!(a.to_status, b.to_status);
    assert_eq!(a.changed_by, b.changed_by);
    assert_eq!(b.note, "Signed the contract");
    assert_eq!(a.note, b.note);
    assert_eq!(a.amount, b.amount);
    assert_eq!(b.opportunity_id, by_update.id);
    let spent = duration_micros(&b.time_in_previous_status);
    assert_eq!(
        spent,
        micros(&b.change_time) - micros(&by_update.status_change_time)
    );
    // The opportunity is in the same state either way.
    let a_now = changed.opportunity.unwrap();
    assert_eq!(state(&updated), pb::OpportunityState::Won);
    assert_eq!(state(&a_now), state(&updated));
    assert_eq!(micros(&updated.close_time), micros(&b.change_time));
    assert_eq!(micros(&updated.status_change_time), micros(&b.change_time));
    assert_ne!(updated.etag, by_update.etag);
    assert_eq!(
        w.event_types(&by_update.id).await,
        w.event_types(&by_change.id).await
    );

    // Other fields and the status in one edit: both apply, one entry with the new amount.
    let both = w
        .try_update_request(
            &rep,
            pb::UpdateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    id: by_update.id.clone(),
                    title: "B, renewed".to_owned(),
                    amount: Some(thb(900, 0)),
                    status_id: QUOTATION.to_owned(),
                    ..Default::default()
                }),
                update_mask: mask(&["title", "amount", "status_id"]),
                note: "Reopened for the renewal".to_owned(),
                request_id: String::new(),
            },
        )
        .await
        .expect("update fields and the status");
    assert_eq!(both.title, "B, renewed");
    assert_eq!(both.status_id, QUOTATION);
    assert_eq!(state(&both), pb::OpportunityState::Open);
    assert!(both.close_time.is_none());
    let history = w.history(&rep, &by_update.id).await;
    assert_eq!(history.len(), 3);
    let last = &history[2];
    assert_eq!(last.note, "Reopened for the renewal");
    assert_eq!(last.from_status.as_ref().unwrap().id, WON);
    assert_eq!(last.to_status.as_ref().unwrap().id, QUOTATION);
    assert_eq!(last.amount, Some(thb(900, 0)));
}

#[tokio::test]
async fn r08_an_archived_status_cannot_be_chosen() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Archive Co").await.id;
    let opportunity = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    w.archive_status(PRESENTED).await;

    let before = w.snapshot().await;
    expect_invalid(
        w.try_change(&rep, change_request(&opportunity.id, PRESENTED))
            .await,
        "status_id",
    );
    expect_invalid(
        w.try_update(
            &rep,
            pb::Opportunity {
                id: opportunity.id.clone(),
                status_id: PRESENTED.to_owned(),
                ..Default::default()
            },
            &["status_id"],
        )
        .await,
        "opportunity.status_id",
    );
    expect_invalid(
        w.try_create(
            &rep,
            pb::Opportunity {
                status_id: PRESENTED.to_owned(),
                ..draft(&customer, "Deal", thb(10, 0))
            },
        )
        .await,
        "opportunity.status_id",
    );
    assert_unchanged(&before, &w.snapshot().await, "archived status");
}

// =======================================================================================
// R9: history
// =======================================================================================

#[tokio::test]
async fn r09_history_is_append_only_in_the_database() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Ledger Co").await.id;
    let opportunity = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    w.change(&rep, &opportunity.id, QUOTATION, "quote").await;
    let before = w.snapshot().await;

    for sql in [
        "update status_changes set note = 'rewritten'",
        "update status_changes set to_display_name = 'Other' where sequence = 1",
        "delete from status_changes",
        "delete from status_changes where sequence = 2",
        "truncate status_changes cascade",
    ] {
        let error = sqlx::query(sql)
            .execute(w.db())
            .await
            .expect_err("history is append-only");
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("SO001"), "{sql}: {error}");
    }
    // An entry that does not start where the last one ended is refused too (R10).
    let error = sqlx::query(
        "insert into status_changes (opportunity_id, sequence, from_status_id, from_display_name,
             from_kind, from_probability, to_status_id, to_display_name, to_kind, to_probability,
             changed_by_id, changed_by_name, change_time, currency_code, amount,
             time_in_previous_status)
         values ($1::uuid, 3, $2::uuid, 'Interested', 'OPEN', 10, $3::uuid, 'Closed won', 'WON',
                 100, 'rep-a1', 'Somchai Rep', now(), 'THB', 10, interval '1 second')",
    )
    .bind(&opportunity.id)
    .bind(INTERESTED)
    .bind(WON)
    .execute(w.db())
    .await
    .expect_err("a gap in the chain");
    assert_eq!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("SO001"),
        "{error}"
    );
    assert_unchanged(&before, &w.snapshot().await, "raw SQL on history");
}

#[tokio::test]
async fn r09_history_paginates_oldest_and_newest_first() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Pages Co").await.id;
    let opportunity = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    let id = opportunity.id.clone();
    for (index, status) in [PRESENTED, SENT_EMAIL, QUOTATION, CONSIDERING]
        .iter()
        .enumerate()
    {
        w.change(&rep, &id, status, &format!("step {index}")).await;
    }
    let all = w.history(&rep, &id).await;
    assert_eq!(all.len(), 5);
    let targets: Vec<&str> = all
        .iter()
        .map(|e| e.to_status.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(
        targets,
        [INTERESTED, PRESENTED, SENT_EMAIL, QUOTATION, CONSIDERING]
    );
    for newest_first in [false, true] {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = w
                .try_history(
                    &rep,
                    pb::ListStatusHistoryRequest {
                        opportunity_id: id.clone(),
                        page_size: 2,
                        page_token: token.clone(),
                        newest_first,
                    },
                )
                .await
                .expect("a page of history");
            assert!(page.status_changes.len() <= 2);
            pages.push(page.status_changes.len());
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
            // A token is only good for the order it came from.
            expect_invalid(
                w.try_history(
                    &rep,
                    pb::ListStatusHistoryRequest {
                        opportunity_id: id.clone(),
                        page_size: 2,
                        page_token: token.clone(),
                        newest_first: !newest_first,
                    },
                )
                .await,
                "page_token",
            );
        }
        assert_eq!(pages, [2, 2, 1], "newest_first={newest_first}");
        // Walk again collecting entries.
        let mut walked = Vec::new();
        let mut token = String::new();
        loop {
            let page = w
                .try_history(
                    &rep,
                    pb::ListStatusHistoryRequest {
                        opportunity_id: id.clone(),
                        page_size: 2,
                        page_token: token,
                        newest_first,
                    },
                )
                .await
                .expect("a page of history");
            walked.extend(page.status_changes);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let mut expected = all.clone();
        if newest_first {
            expected.reverse();
        }
        assert_eq!(walked, expected, "newest_first={newest_first}");
    }
}

// =======================================================================================
// R10: consistent under concurrency
// =======================================================================================

/// Checks the chain of `history`: in sequence order, the first with no previous status, each
/// later one starting where the one before ended, never a move to the same status.
#[track_caller]
fn assert_unbroken_chain(history: &[pb::StatusChange], context: &str) {
    assert!(!history.is_empty());
    assert!(history[0].from_status.is_none(), "{context}");
    for pair in history.windows(2) {
        let (before, entry) = (&pair[0], &pair[1]);
        let from = entry
            .from_status
            .as_ref()
            .expect("a later entry has a from");
        let to = entry.to_status.as_ref().expect("a to");
        assert_eq!(
            Some(from),
            before.to_status.as_ref(),
            "{context}: a gap in the chain"
        );
        assert_ne!(from.id, to.id, "{context}: a move to the same status");
        assert!(
            micros(&entry.change_time) >= micros(&before.change_time),
            "{context}: entries out of time order"
        );
        assert_eq!(
            duration_micros(&entry.time_in_previous_status),
            micros(&entry.change_time) - micros(&before.change_time),
            "{context}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_concurrent_status_changes_keep_an_unbroken_chain() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Race Co").await.id;
    let created = w
        .create(&rep, draft(&customer, "Contended", thb(10, 0)))
        .await;
    let id = created.id.clone();
    let stale_etag = created.etag.clone();
    w.change(&rep, &id, PRESENTED, "").await;

    let (mut rng, seed) = Rng::seeded();
    let mut calls = Vec::new();
    for index in 0..20 {
        let mut request = change_request(&id, SHIPPED_STATUSES[rng.below(SHIPPED_STATUSES.len())]);
        request.note = format!("call {index}");
        let stale = index % 4 == 0;
        if stale {
            request.etag = stale_etag.clone();
        }
        let mut client = w.opps.clone();
        let rep = rep.clone();
        calls.push(tokio::spawn(async move {
            let result = client
                .change_opportunity_status(authed(&rep, request))
                .await
                .map(tonic::Response::into_inner);
            (stale, result)
        }));
    }
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();

    let mut recorded = Vec::new();
    for (index, (stale, result)) in results.iter().enumerate() {
        match result {
            Err(status) => {
                assert_ne!(status.code(), Code::Internal, "seed {seed}: call {index}");
                assert!(*stale, "seed {seed}: call {index} failed: {status:?}");
                assert_eq!(status.code(), Code::Aborted, "seed {seed}: call {index}");
            }
            Ok(response) => {
                assert!(
                    !stale,
                    "seed {seed}: call {index} with a stale etag succeeded"
                );
                if let Some(entry) = &response.status_change {
                    recorded.push(entry.clone());
                }
            }
        }
    }
    let history = w.history(&rep, &id).await;
    assert_unbroken_chain(&history, &format!("seed {seed}"));
    assert_eq!(
        history.len(),
        2 + recorded.len(),
        "seed {seed}: one entry per call that answered with one"
    );
    for entry in &recorded {
        assert_eq!(
            history.iter().filter(|e| *e == entry).count(),
            1,
            "seed {seed}: each answered entry is in the history once"
        );
    }
    let last = history.last().unwrap();
    let now = w.get(&rep, &id).await;
    assert_eq!(now.status_id, last.to_status.as_ref().unwrap().id);
    assert_eq!(micros(&now.status_change_time), micros(&last.change_time));
}

/// R10 under a real race: calls that all carry the opportunity's current etag, released
/// together. Exactly one is applied; every other one is ABORTED with ETAG_MISMATCH (its etag
/// went stale while it waited for the row), and the history has exactly one new entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_calls_racing_with_the_same_current_etag_exactly_one_wins() {
    const CALLS: usize = 12;
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Etag Race Co").await.id;
    let created = w
        .create(&rep, draft(&customer, "Contended etag", thb(10, 0)))
        .await;
    let before = w.history(&rep, &created.id).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let targets = [PRESENTED, SENT_EMAIL, QUOTATION, CONSIDERING];
    let calls: Vec<_> = (0..CALLS)
        .map(|index| {
            let mut request = change_request(&created.id, targets[index % targets.len()]);
            request.etag = created.etag.clone();
            let mut client = w.opps.clone();
            let rep = rep.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                client
                    .change_opportunity_status(authed(&rep, request))
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one call wins: {results:?}");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert_eq!(error_reason(status), "ETAG_MISMATCH");
    }
    let history = w.history(&rep, &created.id).await;
    assert_unbroken_chain(&history, "etag race");
    assert_eq!(history.len(), before.len() + 1, "one new entry");
    assert_eq!(
        history.last(),
        winners[0].status_change.as_ref(),
        "the winner's entry"
    );
}

/// The same race between different callers who may all change the opportunity: its owner,
/// the owner's manager and an admin. No call may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_concurrent_changes_by_several_callers_are_all_applied() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Race Co").await.id;
    let created = w
        .create(&rep, draft(&customer, "Contended", thb(10, 0)))
        .await;
    let id = created.id.clone();
    // Record the other callers first.
    w.customer(&manager_token(), "Manager's customer").await;
    w.customer(&admin_token(), "Admin's customer").await;

    let callers = [rep.clone(), manager_token(), admin_token()];
    let (mut rng, seed) = Rng::seeded();
    let mut calls = Vec::new();
    for index in 0..24 {
        let request = change_request(&id, SHIPPED_STATUSES[rng.below(SHIPPED_STATUSES.len())]);
        let token = callers[index % callers.len()].clone();
        let mut client = w.opps.clone();
        calls.push(tokio::spawn(async move {
            client
                .change_opportunity_status(authed(&token, request))
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut recorded = 0;
    let mut failures = Vec::new();
    for (index, result) in join_all(calls).await.into_iter().enumerate() {
        match result.expect("task") {
            Ok(response) => recorded += usize::from(response.status_change.is_some()),
            Err(status) => failures.push((index, status.code(), status.message().to_owned())),
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: calls failed: {failures:#?}"
    );
    let history = w.history(&rep, &id).await;
    assert_unbroken_chain(&history, &format!("seed {seed}"));
    assert_eq!(history.len(), 1 + recorded, "seed {seed}");
}

#[tokio::test]
async fn r10_stale_etag_is_aborted_and_changes_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Etag Co").await.id;
    let created = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    let moved = w.change(&rep, &created.id, QUOTATION, "").await;
    let current = moved.opportunity.unwrap();

    let before = w.snapshot().await;
    let mut request = change_request(&created.id, WON);
    request.etag = created.etag.clone();
    let status = expect_code(w.try_change(&rep, request).await, Code::Aborted);
    assert_eq!(error_reason(&status), "ETAG_MISMATCH");
    // Even a move to the status it already has checks the etag first.
    let mut request = change_request(&created.id, QUOTATION);
    request.etag = created.etag.clone();
    expect_code(w.try_change(&rep, request).await, Code::Aborted);
    // UpdateOpportunity too.
    let status = expect_code(
        w.try_update(
            &rep,
            pb::Opportunity {
                id: created.id.clone(),
                title: "Overwrite".to_owned(),
                etag: created.etag.clone(),
                ..Default::default()
            },
            &["title"],
        )
        .await,
        Code::Aborted,
    );
    assert_eq!(error_reason(&status), "ETAG_MISMATCH");
    assert_unchanged(&before, &w.snapshot().await, "stale etag");

    // The current etag works.
    let mut request = change_request(&created.id, WON);
    request.etag = current.etag.clone();
    w.try_change(&rep, request).await.expect("current etag");
}

// =======================================================================================
// R11: safe retries
// =======================================================================================

#[tokio::test]
async fn r11_retried_status_change_records_once_and_replays_the_response() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Retry Co").await.id;
    let created = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    let mut request = change_request(&created.id, QUOTATION);
    request.note = "quote please".to_owned();

    let first = w.try_change(&rep, request.clone()).await.expect("first");
    assert!(first.status_change.is_some());
    let after_first = w.snapshot().await;
    let retry = w.try_change(&rep, request.clone()).await.expect("retry");
    assert_eq!(retry, first, "a retry returns the first result");
    assert_unchanged(&after_first, &w.snapshot().await, "a retry does nothing");
    assert_eq!(w.history(&rep, &created.id).await.len(), 2);
    assert_eq!(
        w.history(&rep, &created.id).await[1].request_id,
        request.request_id
    );

    // Even after the opportunity moved on, the retry still answers what the first call did.
    w.change(&rep, &created.id, WON, "").await;
    let later = w
        .try_change(&rep, request.clone())
        .await
        .expect("late retry");
    assert_eq!(later, first);
    assert_eq!(w.get(&rep, &created.id).await.status_id, WON);
    assert_eq!(w.history(&rep, &created.id).await.len(), 3);

    // The same id from another caller is another request.
    let manager_change = w
        .try_change(&manager_token(), request.clone())
        .await
        .expect("another caller's request");
    assert!(manager_change.status_change.is_some());
    assert_eq!(w.get(&rep, &created.id).await.status_id, QUOTATION);
}

#[tokio::test]
async fn r11_request_id_reused_with_another_body_is_invalid() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Reuse Co").await.id;
    let created = w.create(&rep, draft(&customer, "Deal", thb(10, 0))).await;
    let request = change_request(&created.id, QUOTATION);
    w.try_change(&rep, request.clone()).await.expect("first");

    let before = w.snapshot().await;
    let mut other = request.clone();
    other.status_id = CONSIDERING.to_owned();
    expect_invalid(w.try_change(&rep, other).await, "request_id");
    let mut other = request.clone();
    other.note = "a different note".to_owned();
    expect_invalid(w.try_change(&rep, other).await, "request_id");
    assert_unchanged(&before, &w.snapshot().await, "reused change request_id");

    let create = create_request(draft(&customer, "Original", thb(10, 0)));
    w.try_create_request(&rep, create.clone())
        .await
        .expect("create");
    let before = w.snapshot().await;
    let mut other = create.clone();
    other.opportunity.as_mut().unwrap().title = "Different".to_owned();
    expect_invalid(w.try_create_request(&rep, other).await, "request_id");
    assert_unchanged(&before, &w.snapshot().await, "reused create request_id");
}

#[tokio::test]
async fn r11_retried_create_creates_one_opportunity() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Retry Co").await.id;
    let request = pb::CreateOpportunityRequest {
        note: "hello".to_owned(),
        ..create_request(draft(&customer, "Once", thb(10, 0)))
    };
    let first = w
        .try_create_request(&rep, request.clone())
        .await
        .expect("first");
    let after_first = w.snapshot().await;
    for _ in 0..3 {
        let retry = w
            .try_create_request(&rep, request.clone())
            .await
            .expect("retry");
        assert_eq!(retry, first);
    }
    assert_unchanged(&after_first, &w.snapshot().await, "retries do nothing");
    assert_eq!(w.count("select count(*) from opportunities").await, 1);
    assert_eq!(w.count("select count(*) from status_changes").await, 1);
    assert_eq!(w.count("select count(*) from opportunity_events").await, 1);
    // A failed create does not burn its request id.
    let failing = create_request(draft(UNKNOWN, "Fails", thb(10, 0)));
    expect_invalid(
        w.try_create_request(&rep, failing.clone()).await,
        "opportunity.customer_id",
    );
    let mut fixed = failing.clone();
    fixed.opportunity.as_mut().unwrap().customer_id = customer.clone();
    // Same id, different body: the failed call left no record, so this is a first call.
    w.try_create_request(&rep, fixed)
        .await
        .expect("the id of a failed call is free");
    assert_eq!(w.count("select count(*) from opportunities").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r11_concurrent_identical_creates_create_one() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Burst Co").await.id;
    let request = create_request(draft(&customer, "Double click", thb(10, 0)));
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = w.opps.clone();
        let request = request.clone();
        let rep = rep.clone();
        calls.push(tokio::spawn(async move {
            client
                .create_opportunity(authed(&rep, request))
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let results: Vec<pb::Opportunity> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("every call succeeds"))
        .collect();
    for result in &results {
        assert_eq!(result, &results[0]);
    }
    assert_eq!(w.count("select count(*) from opportunities").await, 1);
    assert_eq!(w.count("select count(*) from status_changes").await, 1);
    assert_eq!(w.count("select count(*) from opportunity_events").await, 1);
    assert_eq!(w.history(&rep, &results[0].id).await.len(), 1);
}

// =======================================================================================
// R12: visibility (the basics)
// =======================================================================================

/// rep-a1 and rep-a2 (north) and rep-b1 (south) each own opportunities; mgr-a (north) one.
struct Cast {
    a1: pb::Opportunity,
    a1_second: pb::Opportunity,
    a2: pb::Opportunity,
    b1: pb::Opportunity,
    mgr_a: pb::Opportunity,
}

async fn cast(w: &mut World) -> Cast {
    let customer = w.customer(&rep_token(), "Shared Customer").await.id;
    let a1 = w
        .create(&rep_token(), draft(&customer, "A1 deal", thb(100, 0)))
        .await;
    let a1_second = w
        .create(&rep_token(), draft(&customer, "A1 second", thb(100, 0)))
        .await;
    let a2 = w
        .create(&rep_a2_token(), draft(&customer, "A2 deal", thb(100, 0)))
        .await;
    let b1 = w
        .create(&rep_b_token(), draft(&customer, "B1 deal", thb(100, 0)))
        .await;
    let mgr_a = w
        .create(
            &manager_token(),
            draft(&customer, "Manager deal", thb(100, 0)),
        )
        .await;
    Cast {
        a1,
        a1_second,
        a2,
        b1,
        mgr_a,
    }
}

#[tokio::test]
async fn r12_get_follows_visibility() {
    let mut w = World::new().await;
    let c = cast(&mut w).await;
    let rep = rep_token();
    let manager = manager_token();
    let manager_b = manager_b_token();
    let admin = admin_token();

    assert_eq!(w.get(&rep, &c.a1.id).await.settled(), c.a1.settled());
    let status = expect_code(w.try_get(&rep, &c.a2.id).await, Code::PermissionDenied);
    assert!(!status.message().contains("A2 deal"));
    expect_code(w.try_get(&rep, &c.b1.id).await, Code::PermissionDenied);
    expect_code(w.try_get(&rep, &c.mgr_a.id).await, Code::PermissionDenied);
    // A manager sees their team's (and their own), not another team's.
    for o in [&c.a1, &c.a2, &c.mgr_a] {
        assert_eq!(w.get(&manager, &o.id).await.settled(), o.settled());
    }
    expect_code(w.try_get(&manager, &c.b1.id).await, Code::PermissionDenied);
    assert_eq!(w.get(&manager_b, &c.b1.id).await.settled(), c.b1.settled());
    for o in [&c.a1, &c.a2, &c.mgr_a] {
        expect_code(w.try_get(&manager_b, &o.id).await, Code::PermissionDenied);
    }
    // An admin sees everything.
    for o in [&c.a1, &c.a2, &c.b1, &c.mgr_a] {
        assert_eq!(w.get(&admin, &o.id).await.settled(), o.settled());
    }
    // An unknown id tells a rep or a manager nothing; an admin learns it does not exist.
    expect_code(w.try_get(&rep, UNKNOWN).await, Code::PermissionDenied);
    expect_code(w.try_get(&manager, UNKNOWN).await, Code::PermissionDenied);
    expect_code(w.try_get(&admin, UNKNOWN).await, Code::NotFound);

    // History follows the same rule.
    let history = |id: &str| pb::ListStatusHistoryRequest {
        opportunity_id: id.to_owned(),
        ..Default::default()
    };
    expect_code(
        w.try_history(&rep, history(&c.a2.id)).await,
        Code::PermissionDenied,
    );
    w.try_history(&manager, history(&c.a2.id))
        .await
        .expect("the manager reads the team's history");
    expect_code(
        w.try_history(&manager_b, history(&c.a2.id)).await,
        Code::PermissionDenied,
    );
    expect_code(
        w.try_history(&admin, history(UNKNOWN)).await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn r12_changes_follow_visibility() {
    let mut w = World::new().await;
    let c = cast(&mut w).await;
    let before = w.snapshot().await;
    expect_code(
        w.try_change(&rep_token(), change_request(&c.a2.id, WON))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        w.try_change(&manager_b_token(), change_request(&c.a1.id, WON))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        w.try_update(
            &rep_token(),
            pb::Opportunity {
                id: c.b1.id.clone(),
                title: "Mine now".to_owned(),
                ..Default::default()
            },
            &["title"],
        )
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        w.try_change(&rep_token(), change_request(UNKNOWN, WON))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        w.try_change(&admin_token(), change_request(UNKNOWN, WON))
            .await,
        Code::NotFound,
    );
    assert_unchanged(&before, &w.snapshot().await, "changes outside visibility");
    // The manager of the team changes a rep's opportunity; an admin anyone's.
    w.try_change(&manager_token(), change_request(&c.a2.id, WON))
        .await
        .expect("manager changes the team's");
    w.try_change(&admin_token(), change_request(&c.b1.id, LOST))
        .await
        .expect("admin changes anyone's");
}

#[tokio::test]
async fn r12_lists_only_include_visible_rows() {
    let mut w = World::new().await;
    let c = cast(&mut w).await;
    let all = pb::ListOpportunitiesRequest {
        page_size: 2,
        ..Default::default()
    };
    let seen = |o: &[&pb::Opportunity]| set_of(o);
    assert_eq!(
        id_set(&w.list_all(&rep_token(), all.clone()).await),
        seen(&[&c.a1, &c.a1_second])
    );
    assert_eq!(
        id_set(&w.list_all(&rep_a2_token(), all.clone()).await),
        seen(&[&c.a2])
    );
    assert_eq!(
        id_set(&w.list_all(&manager_token(), all.clone()).await),
        seen(&[&c.a1, &c.a1_second, &c.a2, &c.mgr_a])
    );
    assert_eq!(
        id_set(&w.list_all(&manager_b_token(), all.clone()).await),
        seen(&[&c.b1])
    );
    assert_eq!(
        id_set(&w.list_all(&admin_token(), all.clone()).await),
        seen(&[&c.a1, &c.a1_second, &c.a2, &c.b1, &c.mgr_a])
    );
    // Asking for someone else's narrows to nothing rather than failing.
    let theirs = pb::ListOpportunitiesRequest {
        owner_ids: vec![REP_A2.to_owned(), REP_B1.to_owned()],
        ..Default::default()
    };
    assert!(w.list_all(&rep_token(), theirs.clone()).await.is_empty());
    assert_eq!(
        id_set(&w.list_all(&manager_token(), theirs).await),
        seen(&[&c.a2])
    );
}

#[tokio::test]
async fn r12_owner_on_create_follows_the_role() {
    let mut w = World::new().await;
    let customer = w.customer(&rep_token(), "Owners Co").await.id;
    w.customer(&rep_a2_token(), "Recorded A2").await;
    w.customer(&rep_b_token(), "Recorded B1").await;
    let with_owner = |owner: &str| pb::Opportunity {
        owner_id: owner.to_owned(),
        ..draft(&customer, "Assigned", thb(1, 0))
    };
    let before = w.snapshot().await;
    // A rep names only themselves.
    expect_code(
        w.try_create(&rep_token(), with_owner(REP_A2)).await,
        Code::PermissionDenied,
    );
    // A manager names their team, not another.
    expect_code(
        w.try_create(&manager_token(), with_owner(REP_B1)).await,
        Code::PermissionDenied,
    );
    // Nobody names a salesperson who never used the suite.
    expect_invalid(
        w.try_create(&admin_token(), with_owner("ghost-1")).await,
        "opportunity.owner_id",
    );
    assert_unchanged(&before, &w.snapshot().await, "owner not allowed");

    let mine = w.create(&rep_token(), with_owner(REP_A1)).await;
    assert_eq!(mine.owner_id, REP_A1);
    let assigned = w.create(&manager_token(), with_owner(REP_A2)).await;
    assert_eq!(assigned.owner_id, REP_A2);
    assert_eq!(assigned.created_by, actor(MGR_A, "Malee Manager"));
    assert_eq!(
        w.get(&rep_a2_token(), &assigned.id).await.settled(),
        assigned.settled()
    );
    let by_admin = w.create(&admin_token(), with_owner(REP_B1)).await;
    assert_eq!(by_admin.owner_id, REP_B1);
    assert_eq!(
        w.get(&rep_b_token(), &by_admin.id).await.settled(),
        by_admin.settled()
    );
}

// =======================================================================================
// R13: search
// =======================================================================================

/// The search fixture: three customers, six opportunities of three reps.
struct Catalogue {
    siam: String,
    acme: String,
    northwind: String,
    o1: pb::Opportunity,
    o2: pb::Opportunity,
    o3: pb::Opportunity,
    o4: pb::Opportunity,
    o5: pb::Opportunity,
    o6: pb::Opportunity,
}

async fn catalogue(w: &mut World) -> Catalogue {
    let rep = rep_token();
    let a2 = rep_a2_token();
    let b1 = rep_b_token();
    let siam = w.customer(&rep, "บริษัท สยามพัฒนา จำกัด").await.id;
    let acme = w.customer(&rep, "Acme Trading Co., Ltd.").await.id;
    let northwind = w.customer(&a2, "Northwind Foods").await.id;

    let o1 = w
        .create(
            &rep,
            pb::Opportunity {
                expected_close_date: Some(day(2026, 3, 15)),
                ..draft(&siam, "ERP rollout", thb(500_000, 0))
            },
        )
        .await;
    let o2 = w
        .create(
            &rep,
            pb::Opportunity {
                expected_close_date: Some(day(2026, 4, 1)),
                status_id: QUOTATION.to_owned(),
                ..draft(&acme, "Fleet GPS trackers", money("USD", 12_000, 0))
            },
        )
        .await;
    let o2 = w.change(&rep, &o2.id, WON, "").await.opportunity.unwrap();
    let o3 = w
        .create(
            &a2,
            pb::Opportunity {
                status_id: CONSIDERING.to_owned(),
                next_step: "Send the revised FLEET proposal".to_owned(),
                ..draft(&northwind, "Cold storage", thb(2_000_000, 0))
            },
        )
        .await;
    let o4 = w
        .create(
            &b1,
            pb::Opportunity {
                expected_close_date: Some(day(2026, 3, 31)),
                status_id: LOST.to_owned(),
                lost_reason: "Budget".to_owned(),
                ..draft(&siam, "Warehouse racks", thb(750_000, 250_000_000))
            },
        )
        .await;
    let o5 = w
        .create(
            &b1,
            pb::Opportunity {
                expected_close_date: Some(day(2026, 5, 10)),
                status_id: PRESENTED.to_owned(),
                ..draft(&northwind, "ระบบบัญชี สยาม cloud", thb(90_000, 0))
            },
        )
        .await;
    let o6 = w
        .create(&a2, draft(&acme, "Spare parts", thb(500_000, 0)))
        .await;
    Catalogue {
        siam,
        acme,
        northwind,
        o1,
        o2,
        o3,
        o4,
        o5,
        o6,
    }
}

#[tokio::test]
async fn r13_list_filters_by_owner_customer_status_state_and_dates() {
    let mut w = World::new().await;
    let c = catalogue(&mut w).await;
    let admin = admin_token();
    let cases: Vec<(&str, pb::ListOpportunitiesRequest, Vec<&pb::Opportunity>)> = vec![
        (
            "everything",
            pb::ListOpportunitiesRequest::default(),
            vec![&c.o1, &c.o2, &c.o3, &c.o4, &c.o5, &c.o6],
        ),
        (
            "one owner",
            pb::ListOpportunitiesRequest {
                owner_ids: vec![REP_A1.to_owned()],
                ..Default::default()
            },
            vec![&c.o1, &c.o2],
        ),
        (
            "many owners",
            pb::ListOpportunitiesRequest {
                owner_ids: vec![REP_A1.to_owned(), REP_B1.to_owned()],
                ..Default::default()
            },
            vec![&c.o1, &c.o2, &c.o4, &c.o5],
        ),
        (
            "an owner with none",
            pb::ListOpportunitiesRequest {
                owner_ids: vec![MGR_A.to_owned()],
                ..Default::default()
            },
            vec![],
        ),
        (
            "customer",
            pb::ListOpportunitiesRequest {
                customer_id: c.siam.clone(),
                ..Default::default()
            },
            vec![&c.o1, &c.o4],
        ),
        (
            "customer 2",
            pb::ListOpportunitiesRequest {
                customer_id: c.acme.clone(),
                ..Default::default()
            },
            vec![&c.o2, &c.o6],
        ),
        (
            "statuses",
            pb::ListOpportunitiesRequest {
                status_ids: vec![INTERESTED.to_owned(), CONSIDERING.to_owned()],
                ..Default::default()
            },
            vec![&c.o1, &c.o3, &c.o6],
        ),
        (
            "won",
            pb::ListOpportunitiesRequest {
                states: vec![pb::OpportunityState::Won.into()],
                ..Default::default()
            },
            vec![&c.o2],
        ),
        (
            "lost",
            pb::ListOpportunitiesRequest {
                states: vec![pb::OpportunityState::Lost.into()],
                ..Default::default()
            },
            vec![&c.o4],
        ),
        (
            "open",
            pb::ListOpportunitiesRequest {
                states: vec![pb::OpportunityState::Open.into()],
                ..Default::default()
            },
            vec![&c.o1, &c.o3, &c.o5, &c.o6],
        ),
        (
            "closed",
            pb::ListOpportunitiesRequest {
                states: vec![
                    pb::OpportunityState::Won.into(),
                    pb::OpportunityState::Lost.into(),
                ],
                ..Default::default()
            },
            vec![&c.o2, &c.o4],
        ),
        (
            "dates, both bounds inclusive",
            pb::ListOpportunitiesRequest {
                expected_close_date_from: Some(day(2026, 3, 15)),
                expected_close_date_to: Some(day(2026, 3, 31)),
                ..Default::default()
            },
            vec![&c.o1, &c.o4],
        ),
        (
            "dates from (unknown dates left out)",
            pb::ListOpportunitiesRequest {
                expected_close_date_from: Some(day(2026, 4, 1)),
                ..Default::default()
            },
            vec![&c.o2, &c.o5],
        ),
        (
            "dates to",
            pb::ListOpportunitiesRequest {
                expected_close_date_to: Some(day(2026, 3, 20)),
                ..Default::default()
            },
            vec![&c.o1],
        ),
        (
            "combined",
            pb::ListOpportunitiesRequest {
                owner_ids: vec![REP_B1.to_owned()],
                states: vec![pb::OpportunityState::Open.into()],
                ..Default::default()
            },
            vec![&c.o5],
        ),
        (
            "combined 2",
            pb::ListOpportunitiesRequest {
                customer_id: c.northwind.clone(),
                status_ids: vec![PRESENTED.to_owned()],
                expected_close_date_from: Some(day(2026, 1, 1)),
                ..Default::default()
            },
            vec![&c.o5],
        ),
    ];
    for (name, request, expected) in cases {
        let listed = w
            .list_all(
                &admin,
                pb::ListOpportunitiesRequest {
                    page_size: 2,
                    ..request
                },
            )
            .await;
        assert_eq!(id_set(&listed), set_of(&expected), "{name}");
    }
}

#[tokio::test]
async fn r13_free_text_matches_title_next_step_and_customer_name() {
    let mut w = World::new().await;
    let c = catalogue(&mut w).await;
    let admin = admin_token();
    let cases: Vec<(&str, Vec<&pb::Opportunity>)> = vec![
        // Thai: the customer's name (o1, o4) and a title (o5).
        ("สยาม", vec![&c.o1, &c.o4, &c.o5]),
        ("สยามพัฒนา", vec![&c.o1, &c.o4]),
        ("ระบบบัญชี", vec![&c.o5]),
        // Latin, ignoring case: a title (o2) and a next step (o3).
        ("fleet", vec![&c.o2, &c.o3]),
        ("FLEET", vec![&c.o2, &c.o3]),
        ("FlEeT gPs", vec![&c.o2]),
        ("revised fleet", vec![&c.o3]),
        // The customer's name, ignoring case.
        ("ACME", vec![&c.o2, &c.o6]),
        ("northwind", vec![&c.o3, &c.o5]),
        ("  erp  ", vec![&c.o1]),
        ("Cloud", vec![&c.o5]),
        ("nothing like this", vec![]),
        // LIKE's wildcards match only themselves.
        ("%", vec![]),
        ("_", vec![]),
        ("Fleet%", vec![]),
    ];
    for (query, expected) in cases {
        let listed = w
            .list_all(
                &admin,
                pb::ListOpportunitiesRequest {
                    query: query.to_owned(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(id_set(&listed), set_of(&expected), "query {query:?}");
    }
    // Free text narrows with the other filters and with visibility.
    let listed = w
        .list_all(
            &admin,
            pb::ListOpportunitiesRequest {
                query: "สยาม".to_owned(),
                owner_ids: vec![REP_B1.to_owned()],
                ..Default::default()
            },
        )
        .await;
    assert_eq!(id_set(&listed), set_of(&[&c.o4, &c.o5]));
    let listed = w
        .list_all(
            &rep_token(),
            pb::ListOpportunitiesRequest {
                query: "สยาม".to_owned(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(id_set(&listed), set_of(&[&c.o1]));
}

/// Free text finds a customer's opportunities by anything that finds the customer in the
/// directory (its code, contact or email as well as its name), and nothing else.
#[tokio::test]
async fn r13_free_text_matches_the_customers_directory_fields() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w
        .customer_with(
            &rep,
            cpb::Customer {
                display_name: "Plain Name Ltd".to_owned(),
                code: "ZQX-42".to_owned(),
                contact_name: "Khun Zebedee".to_owned(),
                email: "buyer@zqx-example.co.th".to_owned(),
                ..Default::default()
            },
        )
        .await;
    w.create(&rep, draft(&customer.id, "Deal", thb(1, 0))).await;
    for query in ["zqx", "zebedee", "buyer@", "plain name"] {
        let listed = w
            .list_all(
                &rep,
                pb::ListOpportunitiesRequest {
                    query: query.to_owned(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(
            listed.len(),
            1,
            "query {query:?} finds the customer's opportunity"
        );
    }
    let none = w
        .list_all(
            &rep,
            pb::ListOpportunitiesRequest {
                query: "no-such-text".to_owned(),
                ..Default::default()
            },
        )
        .await;
    assert!(none.is_empty(), "{none:?}");
}

fn sort_key_close_date(o: &pb::Opportunity) -> (i64, String) {
    let date = o.expected_close_date.as_ref().map_or(i64::MAX, |d| {
        i64::from(d.year) * 10_000 + i64::from(d.month) * 100 + i64::from(d.day)
    });
    (date, o.id.clone())
}

fn amount_value(o: &pb::Opportunity) -> i128 {
    let amount = o.amount.as_ref().expect("an amount");
    i128::from(amount.units) * 1_000_000_000 + i128::from(amount.nanos)
}

#[tokio::test]
async fn r13_orders_and_keyset_pagination_walk_every_row_once() {
    let mut w = World::new().await;
    let c = catalogue(&mut w).await;
    let admin = admin_token();
    // Touch o3 last: it comes first by update time.
    let touched = w
        .try_update(
            &rep_a2_token(),
            pb::Opportunity {
                id: c.o3.id.clone(),
                title: "Cold storage, phase 2".to_owned(),
                ..Default::default()
            },
            &["title"],
        )
        .await
        .expect("touch o3");

    // update_time desc (also the default).
    for order_by in ["", "update_time desc"] {
        let full = w
            .list_all(
                &admin,
                pb::ListOpportunitiesRequest {
                    page_size: 500,
                    order_by: order_by.to_owned(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(full.len(), 6);
        assert_eq!(full[0].id, touched.id, "the last updated comes first");
        for pair in full.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                (micros(&a.update_time), &a.id) > (micros(&b.update_time), &b.id),
                "order {order_by:?}: {} then {}",
                a.title,
                b.title
            );
        }
    }
    // expected_close_date: soonest first, unknown dates last (o3, o6 by id).
    let by_date = w
        .list_all(
            &admin,
            pb::ListOpportunitiesRequest {
                page_size: 500,
                order_by: "expected_close_date".to_owned(),
                ..Default::default()
            },
        )
        .await;
    let mut unknown = [c.o3.id.clone(), c.o6.id.clone()];
    unknown.sort();
    assert_eq!(
        ids(&by_date),
        [
            c.o1.id.clone(),
            c.o4.id.clone(),
            c.o2.id.clone(),
            c.o5.id.clone(),
            unknown[0].clone(),
            unknown[1].clone()
        ]
    );
    // amount desc, by value whatever the currency; the tie (o1, o6) broken by id.
    let by_amount = w
        .list_all(
            &admin,
            pb::ListOpportunitiesRequest {
                page_size: 500,
                order_by: "amount desc".to_owned(),
                ..Default::default()
            },
        )
        .await;
    let mut tie = [c.o1.id.clone(), c.o6.id.clone()];
    tie.sort();
    assert_eq!(
        ids(&by_amount),
        [
            c.o3.id.clone(),
            c.o4.id.clone(),
            tie[1].clone(),
            tie[0].clone(),
            c.o5.id.clone(),
            c.o2.id.clone()
        ]
    );
    for pair in by_amount.windows(2) {
        assert!(amount_value(&pair[0]) >= amount_value(&pair[1]));
    }
    for pair in by_date.windows(2) {
        assert!(sort_key_close_date(&pair[0]) < sort_key_close_date(&pair[1]));
    }

    // Every order, every page size, filtered or not: the pages walk the same rows in the same
    // order as one big page, each row once.
    for order_by in ["update_time desc", "expected_close_date", "amount desc"] {
        for filter in [
            pb::ListOpportunitiesRequest::default(),
            pb::ListOpportunitiesRequest {
                states: vec![pb::OpportunityState::Open.into()],
                ..Default::default()
            },
            pb::ListOpportunitiesRequest {
                query: "สยาม".to_owned(),
                ..Default::default()
            },
        ] {
            let request = pb::ListOpportunitiesRequest {
                order_by: order_by.to_owned(),
                ..filter
            };
            let full = w
                .list_all(
                    &admin,
                    pb::ListOpportunitiesRequest {
                        page_size: 500,
                        ..request.clone()
                    },
                )
                .await;
            for page_size in [1, 2, 4] {
                let walked = w
                    .list_all(
                        &admin,
                        pb::ListOpportunitiesRequest {
                            page_size,
                            ..request.clone()
                        },
                    )
                    .await;
                assert_eq!(
                    ids(&walked),
                    ids(&full),
                    "order {order_by:?}, page size {page_size}, query {:?}",
                    request.query
                );
            }
        }
    }
    // Page size 2 over six rows: three pages, the last one without a token.
    let first = w
        .try_list(
            &admin,
            pb::ListOpportunitiesRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .expect("first page");
    assert_eq!(first.opportunities.len(), 2);
    assert!(!first.next_page_token.is_empty());
    // A token used with other filters is refused.
    expect_invalid(
        w.try_list(
            &admin,
            pb::ListOpportunitiesRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
                order_by: "amount desc".to_owned(),
                ..Default::default()
            },
        )
        .await,
        "page_token",
    );
    expect_invalid(
        w.try_list(
            &admin,
            pb::ListOpportunitiesRequest {
                page_size: 2,
                page_token: "garbage".to_owned(),
                ..Default::default()
            },
        )
        .await,
        "page_token",
    );
}

#[tokio::test]
async fn r13_list_validation_errors_name_their_field() {
    let mut w = World::new().await;
    let admin = admin_token();
    let long_query = "ก".repeat(201);
    let cases: Vec<(pb::ListOpportunitiesRequest, &str)> = vec![
        (
            pb::ListOpportunitiesRequest {
                order_by: "title".to_owned(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListOpportunitiesRequest {
                order_by: "amount asc".to_owned(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListOpportunitiesRequest {
                states: vec![pb::OpportunityState::Unspecified.into()],
                ..Default::default()
            },
            "states[0]",
        ),
        (
            pb::ListOpportunitiesRequest {
                states: vec![pb::OpportunityState::Open.into(), 42],
                ..Default::default()
            },
            "states[1]",
        ),
        (
            pb::ListOpportunitiesRequest {
                customer_id: "not-a-uuid".to_owned(),
                ..Default::default()
            },
            "customer_id",
        ),
        (
            pb::ListOpportunitiesRequest {
                status_ids: vec![INTERESTED.to_owned(), "nope".to_owned()],
                ..Default::default()
            },
            "status_ids[1]",
        ),
        (
            pb::ListOpportunitiesRequest {
                owner_ids: vec![" ".to_owned()],
                ..Default::default()
            },
            "owner_ids[0]",
        ),
        (
            pb::ListOpportunitiesRequest {
                expected_close_date_from: Some(day(2026, 2, 30)),
                ..Default::default()
            },
            "expected_close_date_from",
        ),
        (
            pb::ListOpportunitiesRequest {
                expected_close_date_from: Some(day(2026, 5, 1)),
                expected_close_date_to: Some(day(2026, 4, 30)),
                ..Default::default()
            },
            "expected_close_date_to",
        ),
        (
            pb::ListOpportunitiesRequest {
                query: long_query,
                ..Default::default()
            },
            "query",
        ),
        (
            pb::ListOpportunitiesRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
    ];
    for (request, field) in cases {
        expect_invalid(w.try_list(&admin, request).await, field);
    }
    // 200 characters is fine.
    w.try_list(
        &admin,
        pb::ListOpportunitiesRequest {
            query: "ก".repeat(200),
            ..Default::default()
        },
    )
    .await
    .expect("a 200-character query");
}

// =======================================================================================
// R14: pipeline
// =======================================================================================

/// (currency, count, total, weighted), totals as (units, nanos).
type Total = (String, i64, (i64, i32), (i64, i32));

fn totals(totals: &[pb::CurrencyTotal]) -> Vec<Total> {
    totals
        .iter()
        .map(|t| {
            let total = t.total_amount.as_ref().expect("a total");
            let weighted = t.weighted_amount.as_ref().expect("a weighted total");
            assert_eq!(total.currency_code, t.currency_code);
            assert_eq!(weighted.currency_code, t.currency_code);
            (
                t.currency_code.clone(),
                t.count,
                (total.units, total.nanos),
                (weighted.units, weighted.nanos),
            )
        })
        .collect()
}

fn total(currency: &str, count: i64, sum: (i64, i32), weighted: (i64, i32)) -> Total {
    (currency.to_owned(), count, sum, weighted)
}

/// The non-empty totals per status.
fn by_status(summary: &pb::GetPipelineSummaryResponse) -> BTreeMap<String, Vec<Total>> {
    summary
        .by_status
        .iter()
        .filter(|s| !s.totals.is_empty())
        .map(|s| (s.status_id.clone(), totals(&s.totals)))
        .collect()
}

/// The totals per (owner, status).
fn by_owner(summary: &pb::GetPipelineSummaryResponse) -> BTreeMap<(String, String), Vec<Total>> {
    let mut map = BTreeMap::new();
    for row in &summary.by_owner_status {
        assert!(!row.totals.is_empty(), "an owner row is never empty");
        let previous = map.insert(
            (row.owner_id.clone(), row.status_id.clone()),
            totals(&row.totals),
        );
        assert!(previous.is_none(), "one row per owner and status");
    }
    map
}

fn key(owner: &str, status: &str) -> (String, String) {
    (owner.to_owned(), status.to_owned())
}

/// rep-a1: THB 1,000,000.50 and THB 200,000 and USD 10,000 in Sent email (30%);
/// rep-a2: THB 333,333.33 in Quotation (50%); rep-b1: THB 100,000 in Considering (70%),
/// THB 50,000 WON, THB 40,000 LOST.
async fn pipeline_fixture(w: &mut World) -> String {
    let customer = w.customer(&rep_token(), "Pipeline Co").await.id;
    let other_customer = w.customer(&rep_token(), "Other Co").await.id;
    let with = |status: &str, amount: Money, date: Option<Date>, customer: &str| pb::Opportunity {
        status_id: status.to_owned(),
        expected_close_date: date,
        ..draft(customer, "Deal", amount)
    };
    let rep = rep_token();
    w.create(
        &rep,
        with(
            SENT_EMAIL,
            thb(1_000_000, 500_000_000),
            Some(day(2026, 3, 1)),
            &customer,
        ),
    )
    .await;
    w.create(
        &rep,
        with(
            SENT_EMAIL,
            thb(200_000, 0),
            Some(day(2026, 4, 1)),
            &customer,
        ),
    )
    .await;
    w.create(
        &rep,
        with(SENT_EMAIL, money("USD", 10_000, 0), None, &customer),
    )
    .await;
    w.create(
        &rep_a2_token(),
        with(
            QUOTATION,
            thb(333_333, 330_000_000),
            Some(day(2026, 3, 15)),
            &other_customer,
        ),
    )
    .await;
    let b1 = rep_b_token();
    w.create(
        &b1,
        with(
            CONSIDERING,
            thb(100_000, 0),
            Some(day(2026, 6, 30)),
            &customer,
        ),
    )
    .await;
    w.create(
        &b1,
        with(WON, thb(50_000, 0), Some(day(2026, 2, 1)), &customer),
    )
    .await;
    w.create(
        &b1,
        pb::Opportunity {
            lost_reason: "Price".to_owned(),
            ..with(LOST, thb(40_000, 0), None, &customer)
        },
    )
    .await;
    other_customer
}

#[tokio::test]
async fn r14_pipeline_per_status_and_owner_with_exact_weighted_amounts() {
    let mut w = World::new().await;
    pipeline_fixture(&mut w).await;
    let summary = w
        .pipeline(&admin_token(), pb::GetPipelineSummaryRequest::default())
        .await
        .expect("pipeline");

    // One entry per live status, in pipeline order, with its current name and probability.
    let shape: Vec<(String, String, i32, i32, i32)> = summary
        .by_status
        .iter()
        .map(|s| {
            (
                s.status_id.clone(),
                s.status_display_name.clone(),
                s.position,
                s.probability,
                s.kind,
            )
        })
        .collect();
    let open = i32::from(StatusKind::Open);
    assert_eq!(
        shape,
        [
            (INTERESTED.to_owned(), "Interested".to_owned(), 1, 10, open),
            (PRESENTED.to_owned(), "Presented".to_owned(), 2, 20, open),
            (SENT_EMAIL.to_owned(), "Sent email".to_owned(), 3, 30, open),
            (QUOTATION.to_owned(), "Quotation".to_owned(), 4, 50, open),
            (
                CONSIDERING.to_owned(),
                "Considering and comparing".to_owned(),
                5,
                70,
                open
            ),
            (
                WON.to_owned(),
                "Closed won".to_owned(),
                6,
                100,
                i32::from(StatusKind::Won)
            ),
            (
                LOST.to_owned(),
                "Closed lost".to_owned(),
                7,
                0,
                i32::from(StatusKind::Lost)
            ),
        ]
    );
    assert_eq!(
        by_status(&summary),
        BTreeMap::from([
            (
                SENT_EMAIL.to_owned(),
                vec![
                    // 1,000,000.50 x 30% = 300,000.15; 200,000 x 30% = 60,000.
                    total("THB", 2, (1_200_000, 500_000_000), (360_000, 150_000_000)),
                    total("USD", 1, (10_000, 0), (3_000, 0)),
                ]
            ),
            (
                QUOTATION.to_owned(),
                // 333,333.33 x 50% = 166,666.665, exact.
                vec![total(
                    "THB",
                    1,
                    (333_333, 330_000_000),
                    (166_666, 665_000_000)
                )]
            ),
            (
                CONSIDERING.to_owned(),
                vec![total("THB", 1, (100_000, 0), (70_000, 0))]
            ),
            (
                WON.to_owned(),
                vec![total("THB", 1, (50_000, 0), (50_000, 0))]
            ),
            (LOST.to_owned(), vec![total("THB", 1, (40_000, 0), (0, 0))]),
        ])
    );
    assert_eq!(
        by_owner(&summary),
        BTreeMap::from([
            (
                key(REP_A1, SENT_EMAIL),
                vec![
                    total("THB", 2, (1_200_000, 500_000_000), (360_000, 150_000_000)),
                    total("USD", 1, (10_000, 0), (3_000, 0)),
                ]
            ),
            (
                key(REP_A2, QUOTATION),
                vec![total(
                    "THB",
                    1,
                    (333_333, 330_000_000),
                    (166_666, 665_000_000)
                )]
            ),
            (
                key(REP_B1, CONSIDERING),
                vec![total("THB", 1, (100_000, 0), (70_000, 0))]
            ),
            (
                key(REP_B1, WON),
                vec![total("THB", 1, (50_000, 0), (50_000, 0))]
            ),
            (
                key(REP_B1, LOST),
                vec![total("THB", 1, (40_000, 0), (0, 0))]
            ),
        ])
    );
    let names: BTreeMap<&str, &str> = summary
        .by_owner_status
        .iter()
        .map(|r| (r.owner_id.as_str(), r.owner_display_name.as_str()))
        .collect();
    assert_eq!(
        names,
        BTreeMap::from([
            (REP_A1, "Somchai Rep"),
            (REP_A2, "Niran Rep"),
            (REP_B1, "Suda Rep")
        ])
    );
    // The single THB 1,000,000.50 at 30%, alone: weighted exactly 300,000.15.
    let alone = w
        .pipeline(
            &admin_token(),
            pb::GetPipelineSummaryRequest {
                expected_close_date_from: Some(day(2026, 3, 1)),
                expected_close_date_to: Some(day(2026, 3, 1)),
                ..Default::default()
            },
        )
        .await
        .expect("pipeline");
    assert_eq!(
        by_status(&alone),
        BTreeMap::from([(
            SENT_EMAIL.to_owned(),
            vec![total(
                "THB",
                1,
                (1_000_000, 500_000_000),
                (300_000, 150_000_000)
            )]
        )])
    );
}

#[tokio::test]
async fn r14_currencies_are_never_added_together() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Multi Co").await.id;
    for amount in [
        thb(100, 0),
        money("USD", 100, 0),
        money("EUR", 0, 500_000_000),
        thb(0, 1),
    ] {
        w.create(&rep, draft(&customer, "Deal", amount)).await;
    }
    let summary = w
        .pipeline(&rep, pb::GetPipelineSummaryRequest::default())
        .await
        .expect("pipeline");
    // Ordered by currency code; 10% of each, nothing converted.
    let expected = vec![
        total("EUR", 1, (0, 500_000_000), (0, 50_000_000)),
        total("THB", 2, (100, 1), (10, 0)),
        total("USD", 1, (100, 0), (10, 0)),
    ];
    assert_eq!(
        summary
            .by_status
            .iter()
            .find(|s| s.status_id == INTERESTED)
            .map(|s| totals(&s.totals)),
        Some(expected.clone())
    );
    assert_eq!(
        by_owner(&summary),
        BTreeMap::from([(key(REP_A1, INTERESTED), expected)])
    );
}

/// 0.000000025 THB at 10% is 0.0000000025: half a nano, rounded half to even to 2 nanos
/// (0.000000035 USD at 10% rounds up to 4).
#[tokio::test]
async fn r14_weighted_amount_rounds_half_to_even() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Tiny Co").await.id;
    w.create(&rep, draft(&customer, "Tiny", thb(0, 25))).await;
    w.create(&rep, draft(&customer, "Tiny", money("USD", 0, 35)))
        .await;
    let summary = w
        .pipeline(&rep, pb::GetPipelineSummaryRequest::default())
        .await
        .expect("pipeline");
    assert_eq!(
        by_status(&summary),
        BTreeMap::from([(
            INTERESTED.to_owned(),
            vec![
                total("THB", 1, (0, 25), (0, 2)),
                total("USD", 1, (0, 35), (0, 4)),
            ]
        )])
    );
}

/// Two VND 1,000,000,000,000.000000005 at 10%: exactly 200,000,000,000.000000001 in all,
/// rounded once. Rounding each opportunity's share first gives 2 nanos.
#[tokio::test]
async fn r14_weighted_amount_is_rounded_once_for_large_amounts() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Big Co").await.id;
    for _ in 0..2 {
        w.create(
            &rep,
            draft(&customer, "Big", money("VND", 1_000_000_000_000, 5)),
        )
        .await;
    }
    let summary = w
        .pipeline(&rep, pb::GetPipelineSummaryRequest::default())
        .await
        .expect("pipeline");
    assert_eq!(
        by_status(&summary),
        BTreeMap::from([(
            INTERESTED.to_owned(),
            vec![total(
                "VND",
                2,
                (2_000_000_000_000, 10),
                (200_000_000_000, 1)
            )]
        )])
    );
}

/// A named summary request and the (owner, status) pairs it keeps.
type PipelineCase = (
    &'static str,
    pb::GetPipelineSummaryRequest,
    Vec<(&'static str, &'static str)>,
);

#[tokio::test]
async fn r14_pipeline_filters_by_owner_team_state_dates_and_customer() {
    let mut w = World::new().await;
    let other_customer = pipeline_fixture(&mut w).await;
    let admin = admin_token();
    let cases: Vec<PipelineCase> = vec![
        (
            "one owner",
            pb::GetPipelineSummaryRequest {
                owner_ids: vec![REP_B1.to_owned()],
                ..Default::default()
            },
            vec![(REP_B1, CONSIDERING), (REP_B1, WON), (REP_B1, LOST)],
        ),
        (
            "many owners",
            pb::GetPipelineSummaryRequest {
                owner_ids: vec![REP_A2.to_owned(), REP_B1.to_owned()],
                ..Default::default()
            },
            vec![
                (REP_A2, QUOTATION),
                (REP_B1, CONSIDERING),
                (REP_B1, WON),
                (REP_B1, LOST),
            ],
        ),
        (
            "team",
            pb::GetPipelineSummaryRequest {
                team: "north".to_owned(),
                ..Default::default()
            },
            vec![(REP_A1, SENT_EMAIL), (REP_A2, QUOTATION)],
        ),
        (
            "closed",
            pb::GetPipelineSummaryRequest {
                states: vec![
                    pb::OpportunityState::Won.into(),
                    pb::OpportunityState::Lost.into(),
                ],
                ..Default::default()
            },
            vec![(REP_B1, WON), (REP_B1, LOST)],
        ),
        (
            "dates",
            pb::GetPipelineSummaryRequest {
                expected_close_date_from: Some(day(2026, 3, 1)),
                expected_close_date_to: Some(day(2026, 4, 1)),
                ..Default::default()
            },
            vec![(REP_A1, SENT_EMAIL), (REP_A2, QUOTATION)],
        ),
        (
            "customer",
            pb::GetPipelineSummaryRequest {
                customer_id: other_customer.clone(),
                ..Default::default()
            },
            vec![(REP_A2, QUOTATION)],
        ),
        (
            "unknown team",
            pb::GetPipelineSummaryRequest {
                team: "west".to_owned(),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (name, request, expected) in cases {
        let summary = w.pipeline(&admin, request).await.expect(name);
        let keys: BTreeSet<(String, String)> = by_owner(&summary).into_keys().collect();
        let expected_keys: BTreeSet<(String, String)> =
            expected.iter().map(|(o, s)| key(o, s)).collect();
        assert_eq!(keys, expected_keys, "{name}");
        let statuses: BTreeSet<String> = by_status(&summary).into_keys().collect();
        let expected_statuses: BTreeSet<String> =
            expected.iter().map(|(_, s)| (*s).to_owned()).collect();
        assert_eq!(statuses, expected_statuses, "{name}");
        assert_eq!(summary.by_status.len(), 7, "{name}: every live status");
    }
    // The date range keeps only the opportunities in it, with their amounts.
    let summary = w
        .pipeline(
            &admin,
            pb::GetPipelineSummaryRequest {
                expected_close_date_from: Some(day(2026, 3, 2)),
                expected_close_date_to: Some(day(2026, 4, 1)),
                ..Default::default()
            },
        )
        .await
        .expect("pipeline");
    assert_eq!(
        by_status(&summary),
        BTreeMap::from([
            (
                SENT_EMAIL.to_owned(),
                vec![total("THB", 1, (200_000, 0), (60_000, 0))]
            ),
            (
                QUOTATION.to_owned(),
                vec![total(
                    "THB",
                    1,
                    (333_333, 330_000_000),
                    (166_666, 665_000_000)
                )]
            ),
        ])
    );
    // Bad filters name their field.
    for (request, field) in [
        (
            pb::GetPipelineSummaryRequest {
                states: vec![0],
                ..Default::default()
            },
            "states[0]",
        ),
        (
            pb::GetPipelineSummaryRequest {
                customer_id: "x".to_owned(),
                ..Default::default()
            },
            "customer_id",
        ),
        (
            pb::GetPipelineSummaryRequest {
                expected_close_date_to: Some(day(2026, 2, 30)),
                ..Default::default()
            },
            "expected_close_date_to",
        ),
        (
            pb::GetPipelineSummaryRequest {
                owner_ids: vec![String::new()],
                ..Default::default()
            },
            "owner_ids[0]",
        ),
    ] {
        expect_invalid(w.pipeline(&admin, request).await, field);
    }
}

#[tokio::test]
async fn r14_a_summary_counts_only_what_the_caller_sees() {
    let mut w = World::new().await;
    pipeline_fixture(&mut w).await;
    let mine = w
        .pipeline(&rep_token(), pb::GetPipelineSummaryRequest::default())
        .await
        .expect("rep pipeline");
    assert_eq!(
        by_status(&mine),
        BTreeMap::from([(
            SENT_EMAIL.to_owned(),
            vec![
                total("THB", 2, (1_200_000, 500_000_000), (360_000, 150_000_000)),
                total("USD", 1, (10_000, 0), (3_000, 0)),
            ]
        )])
    );
    assert_eq!(
        by_owner(&mine).into_keys().collect::<Vec<_>>(),
        [key(REP_A1, SENT_EMAIL)]
    );
    // Asking for someone else's gives nothing, not an error.
    let theirs = w
        .pipeline(
            &rep_token(),
            pb::GetPipelineSummaryRequest {
                owner_ids: vec![REP_B1.to_owned()],
                ..Default::default()
            },
        )
        .await
        .expect("rep pipeline");
    assert!(by_status(&theirs).is_empty());
    assert!(theirs.by_owner_status.is_empty());
    assert_eq!(theirs.by_status.len(), 7);
    // A manager: their team.
    let team = w
        .pipeline(&manager_token(), pb::GetPipelineSummaryRequest::default())
        .await
        .expect("manager pipeline");
    assert_eq!(
        by_owner(&team).into_keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([key(REP_A1, SENT_EMAIL), key(REP_A2, QUOTATION)])
    );
    let south = w
        .pipeline(&manager_b_token(), pb::GetPipelineSummaryRequest::default())
        .await
        .expect("manager pipeline");
    assert_eq!(
        by_owner(&south).into_keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            key(REP_B1, CONSIDERING),
            key(REP_B1, WON),
            key(REP_B1, LOST)
        ])
    );
    // Another team's filter through a manager's eyes: nothing.
    let other_team = w
        .pipeline(
            &manager_token(),
            pb::GetPipelineSummaryRequest {
                team: "south".to_owned(),
                ..Default::default()
            },
        )
        .await
        .expect("manager pipeline");
    assert!(other_team.by_owner_status.is_empty());
}

/// The owner rows come ordered by owner display name, then owner id, then pipeline order.
#[tokio::test]
async fn r14_owner_rows_follow_owner_name_then_pipeline_order() {
    let mut w = World::new().await;
    let somchai = rep_token();
    // Anan's id sorts after Somchai's, his name before.
    let anan = token("rep-z9", "Anan Rep", "north", &["sales_rep"]);
    let customer = w.customer(&somchai, "Order Co").await.id;
    // Quotation first in the pipeline: its id no longer follows its position.
    let mut order = vec![QUOTATION.to_owned(), INTERESTED.to_owned()];
    order.extend(
        [PRESENTED, SENT_EMAIL, CONSIDERING, WON, LOST]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    w.statuses
        .reorder_statuses(authed(
            &admin_token(),
            spb::ReorderStatusesRequest {
                status_ids: order,
                request_id: String::new(),
            },
        ))
        .await
        .expect("reorder");
    for token in [&somchai, &anan] {
        for status in [INTERESTED, QUOTATION] {
            w.create(
                token,
                pb::Opportunity {
                    status_id: status.to_owned(),
                    ..draft(&customer, "Deal", thb(1, 0))
                },
            )
            .await;
        }
    }
    let summary = w
        .pipeline(&admin_token(), pb::GetPipelineSummaryRequest::default())
        .await
        .expect("pipeline");
    assert_eq!(summary.by_status[0].status_id, QUOTATION);
    let rows: Vec<(String, String)> = summary
        .by_owner_status
        .iter()
        .map(|r| (r.owner_display_name.clone(), r.status_id.clone()))
        .collect();
    assert_eq!(
        rows,
        [
            ("Anan Rep".to_owned(), QUOTATION.to_owned()),
            ("Anan Rep".to_owned(), INTERESTED.to_owned()),
            ("Somchai Rep".to_owned(), QUOTATION.to_owned()),
            ("Somchai Rep".to_owned(), INTERESTED.to_owned()),
        ]
    );
}

// =======================================================================================
// Validation: every bad input names its field and changes nothing
// =======================================================================================

#[tokio::test]
async fn create_validation_errors_name_their_field_and_change_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Valid Co").await.id;
    let ok = || draft(&customer, "Deal", thb(1000, 0));
    let cases: Vec<(&str, pb::CreateOpportunityRequest)> = vec![
        (
            "opportunity.title",
            create_request(pb::Opportunity {
                title: String::new(),
                ..ok()
            }),
        ),
        (
            "opportunity.title",
            create_request(pb::Opportunity {
                title: "   ".to_owned(),
                ..ok()
            }),
        ),
        (
            "opportunity.title",
            create_request(pb::Opportunity {
                title: "ก".repeat(201),
                ..ok()
            }),
        ),
        (
            "opportunity.title",
            create_request(pb::Opportunity {
                title: "two\nlines".to_owned(),
                ..ok()
            }),
        ),
        (
            "opportunity.amount",
            create_request(pb::Opportunity {
                amount: Some(thb(-1, 0)),
                ..ok()
            }),
        ),
        (
            "opportunity.amount",
            create_request(pb::Opportunity {
                amount: Some(thb(0, -5)),
                ..ok()
            }),
        ),
        (
            "opportunity.amount.currency_code",
            create_request(pb::Opportunity {
                amount: Some(money("thb", 1, 0)),
                ..ok()
            }),
        ),
        (
            "opportunity.amount.currency_code",
            create_request(pb::Opportunity {
                amount: Some(money("XYZ", 1, 0)),
                ..ok()
            }),
        ),
        (
            "opportunity.amount.currency_code",
            create_request(pb::Opportunity {
                amount: Some(money("", 1, 0)),
                ..ok()
            }),
        ),
        (
            "opportunity.amount.nanos",
            create_request(pb::Opportunity {
                amount: Some(thb(1, 1_000_000_000)),
                ..ok()
            }),
        ),
        (
            "opportunity.expected_close_date",
            create_request(pb::Opportunity {
                expected_close_date: Some(day(2026, 2, 30)),
                ..ok()
            }),
        ),
        (
            "opportunity.expected_close_date",
            create_request(pb::Opportunity {
                expected_close_date: Some(day(2026, 13, 1)),
                ..ok()
            }),
        ),
        (
            "opportunity.expected_close_date",
            create_request(pb::Opportunity {
                expected_close_date: Some(day(0, 0, 0)),
                ..ok()
            }),
        ),
        (
            "opportunity.customer_id",
            create_request(pb::Opportunity {
                customer_id: "not-a-uuid".to_owned(),
                ..ok()
            }),
        ),
        (
            "opportunity.customer_id",
            create_request(pb::Opportunity {
                customer_id: String::new(),
                ..ok()
            }),
        ),
        (
            "opportunity.status_id",
            create_request(pb::Opportunity {
                status_id: "nope".to_owned(),
                ..ok()
            }),
        ),
        (
            "opportunity.status_id",
            create_request(pb::Opportunity {
                status_id: UNKNOWN.to_owned(),
                ..ok()
            }),
        ),
        (
            "opportunity.next_step",
            create_request(pb::Opportunity {
                next_step: "ก".repeat(1001),
                ..ok()
            }),
        ),
        (
            "opportunity.lost_reason",
            create_request(pb::Opportunity {
                status_id: LOST.to_owned(),
                lost_reason: "ก".repeat(1001),
                ..ok()
            }),
        ),
        (
            "note",
            pb::CreateOpportunityRequest {
                note: "ก".repeat(2001),
                ..create_request(ok())
            },
        ),
        (
            "request_id",
            pb::CreateOpportunityRequest {
                request_id: "x".repeat(101),
                ..create_request(ok())
            },
        ),
        (
            "opportunity",
            pb::CreateOpportunityRequest {
                opportunity: None,
                ..create_request(ok())
            },
        ),
    ];
    let before = w.snapshot().await;
    for (field, request) in cases {
        let context = format!("{field}: {request:?}");
        let status = expect_invalid(w.try_create_request(&rep, request).await, field);
        assert!(
            field_violations(&status)
                .iter()
                .all(|(_, description)| !description.is_empty()),
            "{context}"
        );
        assert_unchanged(&before, &w.snapshot().await, &context);
    }
    // Every problem at once.
    expect_invalid_fields(
        w.try_create_request(
            &rep,
            pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    customer_id: "bad".to_owned(),
                    title: String::new(),
                    amount: Some(money("thb", -1, 0)),
                    expected_close_date: Some(day(2026, 2, 30)),
                    ..Default::default()
                }),
                request_id: "r\u{7}".into(),
                note: "ก".repeat(2001),
            },
        )
        .await,
        &[
            "opportunity.customer_id",
            "opportunity.title",
            "opportunity.amount",
            "opportunity.amount.currency_code",
            "opportunity.expected_close_date",
            "request_id",
            "note",
        ],
    );
    assert_unchanged(&before, &w.snapshot().await, "every problem at once");
    // The limits themselves are fine: 200-character title, 2000-character note, zero amount,
    // 29 February of a leap year, a trimmed title.
    let created = w
        .try_create_request(
            &rep,
            pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    expected_close_date: Some(day(2028, 2, 29)),
                    next_step: "ข".repeat(1000),
                    ..draft(&customer, &"ก".repeat(200), thb(0, 0))
                }),
                note: "ค".repeat(2000),
                request_id: "r".repeat(100),
            },
        )
        .await
        .expect("the limits are allowed");
    assert_eq!(created.title.chars().count(), 200);
    assert_eq!(created.amount, Some(thb(0, 0)));
    assert_eq!(created.expected_close_date, Some(day(2028, 2, 29)));
    let trimmed = w
        .create(
            &rep,
            draft(&customer, "  Trimmed title  ", thb(0, 999_999_999)),
        )
        .await;
    assert_eq!(trimmed.title, "Trimmed title");
    assert_eq!(trimmed.amount, Some(thb(0, 999_999_999)));
}

#[tokio::test]
async fn change_status_validation_errors_name_their_field_and_change_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Valid Co").await.id;
    let o = w.create(&rep, draft(&customer, "Deal", thb(1, 0))).await;
    let ok = || change_request(&o.id, QUOTATION);
    let cases: Vec<(&str, pb::ChangeOpportunityStatusRequest)> = vec![
        (
            "opportunity_id",
            pb::ChangeOpportunityStatusRequest {
                opportunity_id: "not-a-uuid".to_owned(),
                ..ok()
            },
        ),
        (
            "opportunity_id",
            pb::ChangeOpportunityStatusRequest {
                opportunity_id: String::new(),
                ..ok()
            },
        ),
        (
            "status_id",
            pb::ChangeOpportunityStatusRequest {
                status_id: "nope".to_owned(),
                ..ok()
            },
        ),
        (
            "status_id",
            pb::ChangeOpportunityStatusRequest {
                status_id: String::new(),
                ..ok()
            },
        ),
        (
            "status_id",
            pb::ChangeOpportunityStatusRequest {
                status_id: UNKNOWN.to_owned(),
                ..ok()
            },
        ),
        (
            "note",
            pb::ChangeOpportunityStatusRequest {
                note: "ก".repeat(2001),
                ..ok()
            },
        ),
        (
            "lost_reason",
            pb::ChangeOpportunityStatusRequest {
                status_id: LOST.to_owned(),
                lost_reason: "ก".repeat(1001),
                ..ok()
            },
        ),
        (
            "request_id",
            pb::ChangeOpportunityStatusRequest {
                request_id: "x".repeat(101),
                ..ok()
            },
        ),
    ];
    let before = w.snapshot().await;
    for (field, request) in cases {
        let context = format!("{field}: {:?}", request.status_id);
        expect_invalid(w.try_change(&rep, request).await, field);
        assert_unchanged(&before, &w.snapshot().await, &context);
    }
    // A 2000-character note is fine.
    let moved = w
        .try_change(
            &rep,
            pb::ChangeOpportunityStatusRequest {
                note: "ก".repeat(2000),
                ..ok()
            },
        )
        .await
        .expect("a 2000-character note");
    assert_eq!(moved.status_change.unwrap().note.chars().count(), 2000);
}

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Edit Co").await.id;
    let o = w
        .create(
            &rep,
            pb::Opportunity {
                expected_close_date: Some(day(2026, 3, 1)),
                next_step: "Call back".to_owned(),
                ..draft(&customer, "Original", thb(100, 0))
            },
        )
        .await;

    // Only the masked field changes, though others are set in the message.
    let titled = w
        .try_update(
            &manager_token(),
            pb::Opportunity {
                id: o.id.clone(),
                title: "  Renamed  ".to_owned(),
                next_step: "ignored".to_owned(),
                amount: Some(thb(999, 0)),
                etag: o.etag.clone(),
                ..Default::default()
            },
            &["title"],
        )
        .await
        .expect("update the title");
    assert_eq!(titled.title, "Renamed");
    assert_eq!(titled.next_step, "Call back");
    assert_eq!(titled.amount, Some(thb(100, 0)));
    assert_eq!(titled.expected_close_date, Some(day(2026, 3, 1)));
    assert_ne!(titled.etag, o.etag);
    assert_eq!(titled.updated_by, actor(MGR_A, "Malee Manager"));
    assert_eq!(titled.created_by, actor(REP_A1, "Somchai Rep"));
    assert_eq!(titled.status_id, INTERESTED);
    assert_eq!(
        micros(&titled.status_change_time),
        micros(&o.status_change_time)
    );
    assert!(micros(&titled.update_time) >= micros(&o.update_time));
    assert_eq!(w.get(&rep, &o.id).await.settled(), titled.settled());
    // No history for a change that is not a status change.
    assert_eq!(w.history(&rep, &o.id).await.len(), 1);

    // Named optional fields left empty are cleared.
    let cleared = w
        .try_update(
            &rep,
            pb::Opportunity {
                id: o.id.clone(),
                ..Default::default()
            },
            &["expected_close_date", "next_step"],
        )
        .await
        .expect("clear");
    assert!(cleared.expected_close_date.is_none());
    assert_eq!(cleared.next_step, "");
    assert_eq!(cleared.title, "Renamed");

    // No mask: every field set in the message.
    let implicit = w
        .try_update(
            &rep,
            pb::Opportunity {
                id: o.id.clone(),
                amount: Some(money("USD", 5, 250_000_000)),
                expected_close_date: Some(day(2026, 12, 31)),
                ..Default::default()
            },
            &[],
        )
        .await
        .expect("implicit mask");
    assert_eq!(implicit.amount, Some(money("USD", 5, 250_000_000)));
    assert_eq!(implicit.expected_close_date, Some(day(2026, 12, 31)));
    assert_eq!(implicit.title, "Renamed");
    assert_eq!(w.history(&rep, &o.id).await.len(), 1);
    assert_eq!(
        w.event_types(&o.id).await,
        ["CREATED", "UPDATED", "UPDATED", "UPDATED"]
    );
}

#[tokio::test]
async fn update_validation_errors_name_their_field_and_change_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Valid Co").await.id;
    let o = w.create(&rep, draft(&customer, "Deal", thb(1, 0))).await;
    let with = |fill: pb::Opportunity| pb::Opportunity {
        id: o.id.clone(),
        ..fill
    };
    let cases: Vec<(&str, pb::Opportunity, Vec<&str>)> = vec![
        (
            "update_mask",
            with(pb::Opportunity {
                customer_id: customer.clone(),
                ..Default::default()
            }),
            vec!["customer_id"],
        ),
        ("update_mask", with(Default::default()), vec!["state"]),
        ("update_mask", with(Default::default()), vec!["etag"]),
        ("update_mask", with(Default::default()), vec!["close_time"]),
        ("update_mask", with(Default::default()), vec!["foo"]),
        (
            "update_mask",
            with(pb::Opportunity {
                title: "x".to_owned(),
                ..Default::default()
            }),
            vec!["*", "title"],
        ),
        // Nothing to update: no mask and no field set.
        ("update_mask", with(Default::default()), vec![]),
        ("opportunity.title", with(Default::default()), vec!["title"]),
        (
            "opportunity.amount",
            with(pb::Opportunity {
                amount: Some(thb(-5, 0)),
                ..Default::default()
            }),
            vec!["amount"],
        ),
        (
            "opportunity.amount.currency_code",
            with(pb::Opportunity {
                amount: Some(money("thb", 5, 0)),
                ..Default::default()
            }),
            vec!["amount"],
        ),
        (
            "opportunity.amount.nanos",
            with(pb::Opportunity {
                amount: Some(thb(5, 1_000_000_000)),
                ..Default::default()
            }),
            vec!["amount"],
        ),
        (
            "opportunity.expected_close_date",
            with(pb::Opportunity {
                expected_close_date: Some(day(2026, 2, 30)),
                ..Default::default()
            }),
            vec!["expected_close_date"],
        ),
        (
            "opportunity.status_id",
            with(Default::default()),
            vec!["status_id"],
        ),
        (
            "opportunity.status_id",
            with(pb::Opportunity {
                status_id: "nope".to_owned(),
                ..Default::default()
            }),
            vec!["status_id"],
        ),
        (
            "opportunity.status_id",
            with(pb::Opportunity {
                status_id: UNKNOWN.to_owned(),
                ..Default::default()
            }),
            vec!["status_id"],
        ),
        (
            "opportunity.owner_id",
            with(Default::default()),
            vec!["owner_id"],
        ),
        (
            "opportunity.next_step",
            with(pb::Opportunity {
                next_step: "ก".repeat(1001),
                ..Default::default()
            }),
            vec!["next_step"],
        ),
        (
            "opportunity.id",
            pb::Opportunity {
                id: "not-a-uuid".to_owned(),
                title: "x".to_owned(),
                ..Default::default()
            },
            vec!["title"],
        ),
    ];
    let before = w.snapshot().await;
    for (field, opportunity, paths) in cases {
        let context = format!("{field} with {paths:?}");
        let status = expect_code(
            w.try_update(&rep, opportunity, &paths).await,
            Code::InvalidArgument,
        );
        let violations = field_violations(&status);
        assert!(
            violations.iter().any(|(f, _)| f == field),
            "{context}: {violations:?}"
        );
        assert_unchanged(&before, &w.snapshot().await, &context);
    }
    // A note over 2000 characters, and a missing opportunity.
    expect_invalid(
        w.try_update_request(
            &rep,
            pb::UpdateOpportunityRequest {
                opportunity: Some(with(pb::Opportunity {
                    status_id: WON.to_owned(),
                    ..Default::default()
                })),
                update_mask: mask(&["status_id"]),
                note: "ก".repeat(2001),
                request_id: String::new(),
            },
        )
        .await,
        "note",
    );
    expect_invalid(
        w.try_update_request(&rep, pb::UpdateOpportunityRequest::default())
            .await,
        "opportunity",
    );
    // An unknown opportunity: NOT_FOUND for an admin.
    expect_code(
        w.try_update(
            &admin_token(),
            pb::Opportunity {
                id: UNKNOWN.to_owned(),
                title: "x".to_owned(),
                ..Default::default()
            },
            &["title"],
        )
        .await,
        Code::NotFound,
    );
    assert_unchanged(&before, &w.snapshot().await, "note, missing, unknown");
}

#[tokio::test]
async fn update_with_a_stale_etag_is_aborted_and_changes_nothing() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Etag Co").await.id;
    let o = w.create(&rep, draft(&customer, "Deal", thb(1, 0))).await;
    let current = w
        .try_update(
            &rep,
            pb::Opportunity {
                id: o.id.clone(),
                title: "First edit".to_owned(),
                etag: o.etag.clone(),
                ..Default::default()
            },
            &["title"],
        )
        .await
        .expect("first edit");
    let before = w.snapshot().await;
    for (paths, fill) in [
        (
            vec!["title"],
            pb::Opportunity {
                title: "Second edit".to_owned(),
                ..Default::default()
            },
        ),
        (
            vec!["status_id"],
            pb::Opportunity {
                status_id: WON.to_owned(),
                ..Default::default()
            },
        ),
    ] {
        expect_code(
            w.try_update(
                &rep,
                pb::Opportunity {
                    id: o.id.clone(),
                    etag: o.etag.clone(),
                    ..fill
                },
                &paths,
            )
            .await,
            Code::Aborted,
        );
        assert_unchanged(&before, &w.snapshot().await, "stale etag");
    }
    let second = w
        .try_update(
            &rep,
            pb::Opportunity {
                id: o.id.clone(),
                title: "Second edit".to_owned(),
                etag: current.etag.clone(),
                ..Default::default()
            },
            &["title"],
        )
        .await
        .expect("the current etag");
    assert_eq!(second.title, "Second edit");
}

#[tokio::test]
async fn get_and_history_bad_ids_are_invalid() {
    let mut w = World::new().await;
    let rep = rep_token();
    expect_invalid(w.try_get(&rep, "not-a-uuid").await, "id");
    expect_invalid(w.try_get(&rep, "").await, "id");
    expect_invalid(
        w.try_history(
            &rep,
            pb::ListStatusHistoryRequest {
                opportunity_id: "nope".to_owned(),
                ..Default::default()
            },
        )
        .await,
        "opportunity_id",
    );
    expect_invalid(
        w.try_history(
            &rep,
            pb::ListStatusHistoryRequest {
                opportunity_id: UNKNOWN.to_owned(),
                page_size: -1,
                ..Default::default()
            },
        )
        .await,
        "page_size",
    );
}

// =======================================================================================
// ListSalespeople
// =======================================================================================

#[tokio::test]
async fn list_salespeople_searches_filters_and_paginates() {
    let mut w = World::new().await;
    let thai = token("rep-t1", "สมศักดิ์ ใจดี", "south", &["sales_rep"]);
    // Each records its caller.
    for token in [
        rep_token(),
        rep_a2_token(),
        rep_b_token(),
        manager_token(),
        admin_token(),
        thai.clone(),
    ] {
        w.customer(&token, "Recorded via a customer").await;
    }
    let rep = rep_token();
    let search = |query: &str, team: &str| pb::ListSalespeopleRequest {
        query: query.to_owned(),
        team: team.to_owned(),
        ..Default::default()
    };
    let found = |r: &pb::ListSalespeopleResponse| -> Vec<String> {
        r.salespeople.iter().map(|s| s.id.clone()).collect()
    };

    // By name, Latin ignoring case, ordered by name.
    for query in ["rep", "REP", "Rep"] {
        let listed = w
            .salespeople(&rep, search(query, ""))
            .await
            .expect("search");
        assert_eq!(found(&listed), [REP_A2, REP_A1, REP_B1], "query {query:?}");
    }
    let listed = w
        .salespeople(&rep, search("malee", ""))
        .await
        .expect("search");
    assert_eq!(found(&listed), [MGR_A]);
    let manager = &listed.salespeople[0];
    assert_eq!(manager.display_name, "Malee Manager");
    assert_eq!(manager.team, "north");
    assert_eq!(manager.roles, ["sales_manager"]);
    assert!(manager.first_seen_time.is_some() && manager.last_seen_time.is_some());
    // By name in Thai.
    let listed = w
        .salespeople(&rep, search("ใจดี", ""))
        .await
        .expect("search");
    assert_eq!(found(&listed), ["rep-t1"]);
    assert_eq!(listed.salespeople[0].display_name, "สมศักดิ์ ใจดี");
    // By team, exactly.
    let listed = w
        .salespeople(&rep, search("", "north"))
        .await
        .expect("team");
    assert_eq!(found(&listed), [MGR_A, REP_A2, REP_A1]);
    let listed = w
        .salespeople(&rep, search("", "south"))
        .await
        .expect("team");
    assert_eq!(
        found(&listed).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([REP_B1.to_owned(), "rep-t1".to_owned()])
    );
    let listed = w.salespeople(&rep, search("", "nort")).await.expect("team");
    assert!(listed.salespeople.is_empty());
    let listed = w
        .salespeople(&rep, search("rep", "south"))
        .await
        .expect("both");
    assert_eq!(found(&listed), [REP_B1]);
    let listed = w
        .salespeople(&rep, search("%", ""))
        .await
        .expect("wildcard");
    assert!(listed.salespeople.is_empty());

    // Pages of two walk everyone once, in the order of one big page.
    let everyone = w
        .salespeople(
            &rep,
            pb::ListSalespeopleRequest {
                page_size: 500,
                ..Default::default()
            },
        )
        .await
        .expect("everyone");
    assert_eq!(everyone.salespeople.len(), 6);
    assert!(everyone.next_page_token.is_empty());
    let mut walked = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = w
            .salespeople(
                &rep,
                pb::ListSalespeopleRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("a page");
        assert!(page.salespeople.len() <= 2);
        walked.extend(found(&page));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(walked, found(&everyone));
    // Latin names in name order: Araya, Malee, Niran, Somchai, Suda.
    let latin: Vec<String> = found(&everyone)
        .into_iter()
        .filter(|id| id != "rep-t1")
        .collect();
    assert_eq!(latin, [ADMIN, MGR_A, REP_A2, REP_A1, REP_B1]);

    // Bad input.
    expect_invalid(
        w.salespeople(&rep, search(&"ก".repeat(201), "")).await,
        "query",
    );
    expect_invalid(
        w.salespeople(
            &rep,
            pb::ListSalespeopleRequest {
                page_size: -1,
                ..Default::default()
            },
        )
        .await,
        "page_size",
    );
    let first = w
        .salespeople(
            &rep,
            pb::ListSalespeopleRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .expect("first page");
    expect_invalid(
        w.salespeople(
            &rep,
            pb::ListSalespeopleRequest {
                page_size: 2,
                page_token: first.next_page_token,
                team: "north".to_owned(),
                ..Default::default()
            },
        )
        .await,
        "page_token",
    );
    // Every sales role may read it; a token without one may not.
    w.salespeople(&manager_b_token(), search("", ""))
        .await
        .expect("a manager reads it");
    expect_code(
        w.salespeople(&token("nobody", "No Role", "north", &[]), search("", ""))
            .await,
        Code::PermissionDenied,
    );
}

/// "Salespeople are recorded from their token on first use, so managers can find them by
/// name": a new rep who has only looked around is findable, and assignable.
#[tokio::test]
async fn r12_salespeople_are_recorded_on_their_first_call() {
    let mut w = World::new().await;
    let newcomer = token("rep-new", "Kittipong Newcomer", "north", &["sales_rep"]);
    w.try_list(&newcomer, pb::ListOpportunitiesRequest::default())
        .await
        .expect("the newcomer looks around");
    let listed = w
        .salespeople(
            &manager_token(),
            pb::ListSalespeopleRequest {
                query: "kittipong".to_owned(),
                ..Default::default()
            },
        )
        .await
        .expect("search");
    assert_eq!(
        listed
            .salespeople
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["rep-new"]
    );
    let customer = w.customer(&manager_token(), "For the newcomer").await.id;
    w.try_create(
        &manager_token(),
        pb::Opportunity {
            owner_id: "rep-new".to_owned(),
            ..draft(&customer, "First deal", thb(1, 0))
        },
    )
    .await
    .expect("assign to the newcomer");
}
