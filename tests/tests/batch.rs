//! The batch calls (DESIGN.md R21) end to end: BatchCreateCustomers, BatchCreateOpportunities
//! and BatchChangeOpportunityStatus over real gRPC, on real Postgres (one database per test).
//! Each item of a batch is held to exactly the rules of its single call: validation, R1, R5,
//! R8, R9 (one history entry per change), R10 (etag), R11 (its `request_id`, shared with the
//! single call), R12 (scope) and the outbox (one event per change). Atomic by default (a
//! failed batch writes nothing: a snapshot of every table a call may write is the same
//! before and after it); with `allow_partial_success` the valid items are written and each
//! failed one comes back with its index and its `google.rpc.Status`.
//!
//! Nothing here sleeps or asserts how fast anything happens: durations come from the
//! database's test clock (`World::set_clock`), concurrency from two calls in flight at once.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use salesopp_proto::common::v1::{Actor, BatchItemError, Money};
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_proto::statusconfig::v1::StatusKind;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, WON, change_request,
    error_reason, money, rid,
};
use salesopp_tests::{
    admin_token, authed, expect_code, expect_invalid, field_violations, manager_token, rep_token,
    token,
};
use sqlx::types::chrono::{DateTime, TimeZone as _, Utc};
use tonic::{Code, Status};

/// A well-formed UUID that no row has.
const UNKNOWN: &str = "6f1c1a8e-0000-4000-8000-00000000dead";

/// The most items a batch takes.
const MAX_ITEMS: usize = 1000;

// ---------------------------------------------------------------------------------------
// The cast: the harness's rep-a1 "Somchai Rep" (north), mgr-a "Malee Manager" (north) and
// admin-1 "Araya Admin" (hq), and these.
// ---------------------------------------------------------------------------------------

const REP_A1: &str = "rep-a1";
const REP_A2: &str = "rep-a2";
const REP_B1: &str = "rep-b1";
const MGR_A: &str = "mgr-a";

/// A second rep of rep-a1's team.
fn rep_a2_token() -> String {
    token(REP_A2, "Niran Rep", "north", &["sales_rep"])
}

/// A rep of another team.
fn rep_b_token() -> String {
    token(REP_B1, "Suda Rep", "south", &["sales_rep"])
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

fn thb(units: i64) -> Money {
    money("THB", units, 0)
}

fn actor(id: &str, name: &str) -> Option<Actor> {
    Some(Actor {
        id: id.to_owned(),
        display_name: name.to_owned(),
    })
}

fn snapshot_of(id: &str, name: &str, kind: StatusKind, probability: i32) -> pb::StatusSnapshot {
    pb::StatusSnapshot {
        id: id.to_owned(),
        display_name: name.to_owned(),
        kind: kind.into(),
        probability,
    }
}

/// The shipped status `id` as history records it.
fn shipped(id: &str) -> pb::StatusSnapshot {
    match id {
        INTERESTED => snapshot_of(id, "Interested", StatusKind::Open, 10),
        PRESENTED => snapshot_of(id, "Presented", StatusKind::Open, 20),
        SENT_EMAIL => snapshot_of(id, "Sent email", StatusKind::Open, 30),
        QUOTATION => snapshot_of(id, "Quotation", StatusKind::Open, 50),
        CONSIDERING => snapshot_of(id, "Considering and comparing", StatusKind::Open, 70),
        WON => snapshot_of(id, "Closed won", StatusKind::Won, 100),
        LOST => snapshot_of(id, "Closed lost", StatusKind::Lost, 0),
        other => panic!("not a shipped status: {other}"),
    }
}

fn state(o: &pb::Opportunity) -> pb::OpportunityState {
    pb::OpportunityState::try_from(o.state).expect("a known state")
}

fn seconds(time: &Option<prost_types::Timestamp>) -> i64 {
    time.as_ref().expect("a timestamp").seconds
}

fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, hour, minute, 0)
        .single()
        .expect("a valid time")
}

/// The status the opportunity of item `i` is created in: none named (the default, R5) for
/// half of them, Presented or Quotation for the others.
fn named_status(i: usize) -> Option<&'static str> {
    match i % 4 {
        1 => Some(PRESENTED),
        3 => Some(QUOTATION),
        _ => None,
    }
}

/// CreateOpportunity request `i` of a batch, with its own request id.
fn opportunity_item(customer: &str, i: usize) -> pb::CreateOpportunityRequest {
    pb::CreateOpportunityRequest {
        opportunity: Some(pb::Opportunity {
            customer_id: customer.to_owned(),
            title: format!("ติดตั้งระบบ ERP สาขาที่ {i}"),
            amount: Some(thb(10_000 + i as i64)),
            status_id: named_status(i).unwrap_or_default().to_owned(),
            next_step: "นัดสาธิตระบบ".to_owned(),
            ..Default::default()
        }),
        request_id: rid(),
        note: format!("นำเข้าจาก ERP รายการ {i}"),
    }
}

fn draft_of(request: &mut pb::CreateOpportunityRequest) -> &mut pb::Opportunity {
    request
        .opportunity
        .as_mut()
        .expect("an item has its opportunity")
}

/// The three bad items of the 1,000-item opportunity batch and the field each one fails.
const BAD_OPPORTUNITIES: [(usize, &str); 3] = [
    (17, "requests[17].opportunity.title"),
    (500, "requests[500].opportunity.customer_id"),
    (998, "requests[998].opportunity.status_id"),
];

/// 1,000 CreateOpportunity requests of which 3 are bad: an empty title (refused as the
/// request is read), a customer and a status that do not exist (refused against the
/// database).
fn thousand_opportunities(customer: &str) -> Vec<pb::CreateOpportunityRequest> {
    let mut requests: Vec<_> = (0..MAX_ITEMS)
        .map(|i| opportunity_item(customer, i))
        .collect();
    spoil_opportunities(&mut requests);
    requests
}

fn spoil_opportunities(requests: &mut [pb::CreateOpportunityRequest]) {
    draft_of(&mut requests[17]).title = "   ".to_owned();
    draft_of(&mut requests[500]).customer_id = UNKNOWN.to_owned();
    draft_of(&mut requests[998]).status_id = UNKNOWN.to_owned();
}

/// The same requests with the three bad items fixed (their request ids kept).
fn fix_opportunities(requests: &mut [pb::CreateOpportunityRequest], customer: &str) {
    draft_of(&mut requests[17]).title = "ติดตั้งระบบ ERP สาขาที่ 17 (แก้ไข)".to_owned();
    draft_of(&mut requests[500]).customer_id = customer.to_owned();
    draft_of(&mut requests[998]).status_id = String::new();
}

fn create_batch(
    requests: Vec<pb::CreateOpportunityRequest>,
    allow_partial_success: bool,
) -> pb::BatchCreateOpportunitiesRequest {
    pb::BatchCreateOpportunitiesRequest {
        requests,
        allow_partial_success,
        request_id: String::new(),
    }
}

fn change_batch(
    requests: Vec<pb::ChangeOpportunityStatusRequest>,
    allow_partial_success: bool,
) -> pb::BatchChangeOpportunityStatusRequest {
    pb::BatchChangeOpportunityStatusRequest {
        requests,
        allow_partial_success,
        request_id: String::new(),
    }
}

/// CreateCustomer request `i` of a batch: a Thai company, with a code, an email and a contact.
fn customer_item(i: usize) -> cpb::CreateCustomerRequest {
    cpb::CreateCustomerRequest {
        customer: Some(cpb::Customer {
            code: format!("TH-{i:04}"),
            display_name: format!("บริษัท ไทยเทรดดิ้ง สาขา {i} จำกัด"),
            email: format!("sales{i}@Example.CO.TH"),
            contact_name: format!("คุณสมศรี ใจดี {i}"),
            address: format!("{i} ถนนสุขุมวิท กรุงเทพมหานคร"),
            ..Default::default()
        }),
        request_id: rid(),
    }
}

fn customer_of(request: &mut cpb::CreateCustomerRequest) -> &mut cpb::Customer {
    request.customer.as_mut().expect("an item has its customer")
}

/// 1,000 CreateCustomer requests of which 3 are bad: an empty name, a malformed email, and
/// the code of item 5 again (in another case).
fn thousand_customers() -> Vec<cpb::CreateCustomerRequest> {
    let mut requests: Vec<_> = (0..MAX_ITEMS).map(customer_item).collect();
    customer_of(&mut requests[10]).display_name = String::new();
    customer_of(&mut requests[400]).email = "somchai.example.co.th".to_owned();
    customer_of(&mut requests[999]).code = "th-0005".to_owned();
    requests
}

fn customer_batch(
    requests: Vec<cpb::CreateCustomerRequest>,
    allow_partial_success: bool,
) -> cpb::BatchCreateCustomersRequest {
    cpb::BatchCreateCustomersRequest {
        requests,
        allow_partial_success,
        request_id: String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Reading the per-item errors
// ---------------------------------------------------------------------------------------

/// A failed item's `google.rpc.Status` as the `tonic::Status` a single call would have
/// answered, so the harness's readers of error details apply to it.
fn item_status(error: &BatchItemError) -> Status {
    let status = error
        .status
        .clone()
        .unwrap_or_else(|| panic!("item {} failed without a status", error.index));
    Status::with_details(
        Code::from_i32(status.code),
        status.message.clone(),
        status.encode_to_vec().into(),
    )
}

fn error_indexes(errors: &[BatchItemError]) -> Vec<i32> {
    errors.iter().map(|e| e.index).collect()
}

fn violation_fields(status: &Status) -> BTreeSet<String> {
    field_violations(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

/// Asserts failed item `error` answered what a single call answers for bad input: an
/// INVALID_ARGUMENT whose one violation is `field` (named for the item).
#[track_caller]
fn assert_bad_item(error: &BatchItemError, field: &str) {
    let status = item_status(error);
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "item {}: {status:?}",
        error.index
    );
    assert_eq!(
        violation_fields(&status),
        BTreeSet::from([field.to_owned()]),
        "item {}'s violations",
        error.index
    );
    assert_eq!(error_reason(&status), "INVALID_FIELD");
    assert!(status.message().contains(field), "{status:?}");
}

// ---------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------

salesopp_tests::world! {
    /// The shared world, and the customer the batches' opportunities are of (created by
    /// rep-a1, who is so recorded).
    struct World {
        customer: String,
    }
}

impl World {
    async fn new() -> World {
        let mut world = salesopp_tests::World::new().await;
        let customer = world.customer(&rep_token(), "บริษัท สยามค้าส่ง จำกัด").await.id;
        World { world, customer }
    }

    async fn batch_create(
        &mut self,
        token: &str,
        request: pb::BatchCreateOpportunitiesRequest,
    ) -> Result<pb::BatchCreateOpportunitiesResponse, Status> {
        self.opps
            .batch_create_opportunities(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn batch_change(
        &mut self,
        token: &str,
        request: pb::BatchChangeOpportunityStatusRequest,
    ) -> Result<pb::BatchChangeOpportunityStatusResponse, Status> {
        self.opps
            .batch_change_opportunity_status(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn batch_customers(
        &mut self,
        token: &str,
        request: cpb::BatchCreateCustomersRequest,
    ) -> Result<cpb::BatchCreateCustomersResponse, Status> {
        self.customers
            .batch_create_customers(authed(token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `count` opportunities of rep-a1 in the default status, made by one batch.
    async fn opportunities(&mut self, count: usize) -> Vec<pb::Opportunity> {
        let customer = self.customer.clone();
        let requests = (0..count)
            .map(|i| {
                let mut request = opportunity_item(&customer, i);
                draft_of(&mut request).status_id = String::new();
                request
            })
            .collect();
        let created = self
            .batch_create(&rep_token(), create_batch(requests, false))
            .await
            .expect("create the opportunities");
        assert!(created.errors.is_empty());
        created.opportunities
    }

    /// Makes the caller of `token` known (R12: recorded on their first call).
    async fn introduce(&mut self, token: &str) {
        self.opps
            .list_opportunities(authed(
                token,
                pb::ListOpportunitiesRequest {
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("a first call records the caller");
    }

    /// Everything a batch may write, as one comparable text (the directory of salespeople
    /// is left out: a caller is recorded on their first call, failed or not).
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
                 'durations', (select coalesce(jsonb_agg(to_jsonb(d) order by d::text), '[]')
                               from opportunity_status_durations d),
                 'idempotency', (select coalesce(jsonb_agg(to_jsonb(r)
                                     order by r.caller_id, r.method, r.request_id), '[]')
                                 from idempotency_records r),
                 'customers', (select coalesce(jsonb_agg(to_jsonb(c) order by c.id), '[]')
                               from customers c))::text",
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

    async fn counts(&self) -> (i64, i64, i64) {
        (
            self.count("select count(*) from opportunities").await,
            self.count("select count(*) from status_changes").await,
            self.count("select count(*) from opportunity_events").await,
        )
    }

    /// Every history entry, per opportunity, in sequence order.
    async fn history_rows(&self) -> BTreeMap<String, Vec<HistoryRow>> {
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "select opportunity_id::text, sequence, from_status_id::text, to_status_id::text,
                    request_id, note
             from status_changes order by opportunity_id, sequence",
        )
        .fetch_all(self.db())
        .await
        .expect("read the history");
        let mut by_opportunity: BTreeMap<String, Vec<HistoryRow>> = BTreeMap::new();
        for row in rows {
            by_opportunity.entry(row.0.clone()).or_default().push(row);
        }
        by_opportunity
    }

    /// Every outbox event, per opportunity, in version order.
    async fn event_rows(&self) -> BTreeMap<String, Vec<EventRow>> {
        let rows: Vec<StoredEvent> = sqlx::query_as(
            "select opportunity_id::text, type, version, request_id, payload
             from opportunity_events order by opportunity_id, version",
        )
        .fetch_all(self.db())
        .await
        .expect("read the events");
        let mut by_opportunity: BTreeMap<String, Vec<EventRow>> = BTreeMap::new();
        for (opportunity_id, kind, version, request_id, payload) in rows {
            let event = pb::OpportunityEvent::decode(payload.as_slice()).expect("an event");
            by_opportunity
                .entry(opportunity_id)
                .or_default()
                .push(EventRow {
                    kind,
                    version,
                    request_id,
                    event,
                });
        }
        by_opportunity
    }
}

/// (opportunity, sequence, from status, to status, request id, note) of a history entry.
type HistoryRow = (String, i32, Option<String>, String, Option<String>, String);

/// (opportunity, type, version, request id, payload) of an outbox row.
type StoredEvent = (String, String, i64, Option<String>, Vec<u8>);

struct EventRow {
    kind: String,
    version: i64,
    request_id: Option<String>,
    event: pb::OpportunityEvent,
}

#[track_caller]
fn assert_unchanged(before: &str, after: &str, what: &str) {
    assert!(before == after, "{what} changed the database");
}

/// Asserts the opportunities `created` of a partial batch of `requests` by rep-a1: the
/// failed items (`failed`) have an empty opportunity, every other one is its request as
/// CreateOpportunity would create it (R5: `default` when no status was named) with
/// exactly one history entry (from none to its status, R9) and one CREATED event (its
/// version the opportunity's, its request id the item's).
async fn assert_created(
    w: &World,
    requests: &[pb::CreateOpportunityRequest],
    created: &[pb::Opportunity],
    failed: &[usize],
    default: &str,
) {
    assert_eq!(created.len(), requests.len(), "one answer per request");
    let history = w.history_rows().await;
    let events = w.event_rows().await;
    let mut written = 0;
    for (i, (request, o)) in requests.iter().zip(created).enumerate() {
        if failed.contains(&i) {
            assert_eq!(
                o,
                &pb::Opportunity::default(),
                "failed item {i} has no opportunity"
            );
            continue;
        }
        written += 1;
        let draft = request.opportunity.as_ref().expect("a draft");
        let status = if draft.status_id.is_empty() {
            default
        } else {
            draft.status_id.as_str()
        };
        assert!(!o.id.is_empty(), "item {i} was written");
        assert_eq!(o.title, draft.title.trim(), "item {i}");
        assert_eq!(o.customer_id, draft.customer_id, "item {i}");
        assert_eq!(o.amount, draft.amount, "item {i}");
        assert_eq!(o.owner_id, REP_A1, "item {i}");
        assert_eq!(o.status_id, status, "item {i}: R5");
        assert_eq!(o.probability, shipped(status).probability, "item {i}");
        assert_eq!(state(o), pb::OpportunityState::Open, "item {i}");
        assert_eq!(o.created_by, actor(REP_A1, "Somchai Rep"), "item {i}");
        assert_eq!(o.version, 1, "item {i}: created");

        let entries = history.get(&o.id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            entries.len(),
            1,
            "item {i}: one history entry (R9): {entries:?}"
        );
        let (_, sequence, from, to, request_id, note) = &entries[0];
        assert_eq!(*sequence, 1, "item {i}");
        assert_eq!(
            *from, None,
            "item {i}: the first entry comes from no status"
        );
        assert_eq!(to, status, "item {i}");
        assert_eq!(
            request_id.as_deref(),
            Some(request.request_id.as_str()),
            "item {i}"
        );
        assert_eq!(note, &request.note, "item {i}");

        let feed = events.get(&o.id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(feed.len(), 1, "item {i}: one event");
        let event = &feed[0];
        assert_eq!(event.kind, "CREATED", "item {i}");
        assert_eq!(event.version, o.version, "item {i}: the event's version");
        assert_eq!(
            event.request_id.as_deref(),
            Some(request.request_id.as_str())
        );
        assert_eq!(event.event.r#type, pb::OpportunityEventType::Created as i32);
        assert_eq!(event.event.version, o.version, "item {i}");
        assert_eq!(event.event.request_id, request.request_id, "item {i}");
        assert_eq!(event.event.opportunity_id, o.id);
        assert_eq!(event.event.before, None, "item {i}: CREATED has no before");
        let after = event.event.after.as_ref().expect("the event's after");
        assert_eq!(after.id, o.id);
        assert_eq!(after.status_id, status);
        assert_eq!(after.version, o.version);
        let change = event.event.status_change.as_ref().expect("the first entry");
        assert_eq!(change.from_status, None);
        assert_eq!(change.to_status, Some(shipped(status)));
        assert_eq!(change.request_id, request.request_id);
    }
    let unique: BTreeSet<&str> = created
        .iter()
        .filter(|o| !o.id.is_empty())
        .map(|o| o.id.as_str())
        .collect();
    assert_eq!(unique.len(), written, "every item has its own opportunity");
}

// =======================================================================================
// R21: BatchCreateOpportunities
// =======================================================================================

#[tokio::test]
async fn r21_a_1000_item_batch_with_3_bad_items_writes_nothing_atomically() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer.clone();
    let mut requests = thousand_opportunities(&customer);
    let before = w.snapshot().await;

    let status = expect_code(
        w.batch_create(&rep, create_batch(requests.clone(), false))
            .await,
        Code::InvalidArgument,
    );
    assert_unchanged(
        &before,
        &w.snapshot().await,
        "an atomic batch with bad items",
    );
    assert_eq!(
        w.counts().await,
        (0, 0, 0),
        "no opportunity, history or event"
    );
    // What it answers names bad items, and only them.
    let named = violation_fields(&status);
    assert!(!named.is_empty(), "a BadRequest: {status:?}");
    let bad: BTreeSet<String> = BAD_OPPORTUNITIES
        .iter()
        .map(|(_, field)| (*field).to_owned())
        .collect();
    assert!(named.is_subset(&bad), "{named:?} names a good item");

    // Fixed, the same batch (the same request ids: none was kept by the failed call) writes
    // all 1,000.
    fix_opportunities(&mut requests, &customer);
    let created = w
        .batch_create(&rep, create_batch(requests.clone(), false))
        .await
        .expect("the fixed batch");
    assert!(created.errors.is_empty(), "{:?}", created.errors);
    assert_created(&w, &requests, &created.opportunities, &[], INTERESTED).await;
    assert_eq!(w.counts().await, (1000, 1000, 1000));
}

#[tokio::test]
async fn r21_an_atomic_batch_names_every_bad_item_at_once() {
    // All the failures are bad input, some found as the request is read (an empty title),
    // some against the database (no such customer, no such status): one INVALID_ARGUMENT
    // names each of them, so the client fixes them all at once.
    let mut w = World::new().await;
    let customer = w.customer.clone();
    let mut requests: Vec<_> = (0..5).map(|i| opportunity_item(&customer, i)).collect();
    draft_of(&mut requests[1]).title = String::new();
    draft_of(&mut requests[3]).customer_id = UNKNOWN.to_owned();
    draft_of(&mut requests[4]).status_id = UNKNOWN.to_owned();
    let before = w.snapshot().await;
    let status = expect_code(
        w.batch_create(&rep_token(), create_batch(requests, false))
            .await,
        Code::InvalidArgument,
    );
    assert_unchanged(
        &before,
        &w.snapshot().await,
        "an atomic batch with bad items",
    );
    assert_eq!(
        violation_fields(&status),
        BTreeSet::from([
            "requests[1].opportunity.title".to_owned(),
            "requests[3].opportunity.customer_id".to_owned(),
            "requests[4].opportunity.status_id".to_owned(),
        ]),
        "every bad item, each named requests[i].field: {status:?}"
    );
}

#[tokio::test]
async fn r21_partial_success_writes_the_997_good_items_and_reports_the_3_bad_ones() {
    let mut w = World::new().await;
    let rep = rep_token();
    // R5 is the default of the moment, not a fixed status.
    w.statuses
        .set_default_status(authed(
            &admin_token(),
            spb::SetDefaultStatusRequest {
                id: SENT_EMAIL.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("make Sent email the default");
    let customer = w.customer.clone();
    let requests = thousand_opportunities(&customer);

    let response = w
        .batch_create(&rep, create_batch(requests.clone(), true))
        .await
        .expect("a partial batch succeeds");
    assert_eq!(
        error_indexes(&response.errors),
        [17, 500, 998],
        "in request order"
    );
    for (error, (_, field)) in response.errors.iter().zip(BAD_OPPORTUNITIES) {
        assert_bad_item(error, field);
    }
    let failed: Vec<usize> = BAD_OPPORTUNITIES.iter().map(|(i, _)| *i).collect();
    assert_created(&w, &requests, &response.opportunities, &failed, SENT_EMAIL).await;
    assert_eq!(w.counts().await, (997, 997, 997));

    // What the batch answered is what the suite reads back, history included.
    for i in [0, 1, 2, 3, 999] {
        let o = &response.opportunities[i];
        let read = w.get(&rep, &o.id).await;
        assert_eq!(
            (
                read.id.as_str(),
                read.status_id.as_str(),
                read.version,
                read.etag.as_str()
            ),
            (
                o.id.as_str(),
                o.status_id.as_str(),
                o.version,
                o.etag.as_str()
            )
        );
        let history = w.history(&rep, &o.id).await;
        assert_eq!(history.len(), 1, "item {i}");
        assert_eq!(history[0].from_status, None);
        assert_eq!(history[0].to_status, Some(shipped(&o.status_id)));
        assert_eq!(history[0].changed_by, actor(REP_A1, "Somchai Rep"));
        assert_eq!(history[0].request_id, requests[i].request_id);
        assert_eq!(history[0].note, requests[i].note);
        assert_eq!(
            history[0].amount,
            requests[i].opportunity.as_ref().unwrap().amount
        );
    }
}

#[tokio::test]
async fn r21_retried_items_answer_their_first_result_and_write_nothing_twice() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer.clone();
    let mut requests = thousand_opportunities(&customer);
    let first = w
        .batch_create(&rep, create_batch(requests.clone(), true))
        .await
        .expect("the first batch");
    assert_eq!(error_indexes(&first.errors), [17, 500, 998]);
    assert_eq!(w.counts().await, (997, 997, 997));

    // The same batch again (the same items and request ids, no batch request id): each
    // written item answers its first result; the bad ones fail again.
    let again = w
        .batch_create(&rep, create_batch(requests.clone(), true))
        .await
        .expect("the retried batch");
    assert_eq!(
        again.opportunities, first.opportunities,
        "the first results"
    );
    assert_eq!(error_indexes(&again.errors), [17, 500, 998]);
    assert_eq!(w.counts().await, (997, 997, 997), "nothing written twice");

    // A single CreateOpportunity with an item's request and request id is that item.
    let single = w
        .try_create_request(&rep, requests[3].clone())
        .await
        .expect("the single call");
    assert_eq!(single, first.opportunities[3]);
    // The same request id with another request is refused, in a batch as in a single call.
    let mut changed = requests[4].clone();
    draft_of(&mut changed).title = "Another deal".to_owned();
    expect_invalid(
        w.try_create_request(&rep, changed.clone()).await,
        "request_id",
    );
    let refused = w
        .batch_create(&rep, create_batch(vec![changed.clone()], true))
        .await
        .expect("a partial batch");
    assert_eq!(error_indexes(&refused.errors), [0]);
    assert_bad_item(&refused.errors[0], "requests[0].request_id");
    expect_invalid(
        w.batch_create(&rep, create_batch(vec![changed], false))
            .await,
        "requests[0].request_id",
    );
    assert_eq!(w.counts().await, (997, 997, 997));

    // A request id first used by a single call: a batch item with the same request replays
    // it, beside a new item that is written.
    let earlier = opportunity_item(&customer, 5000);
    let by_single = w
        .try_create_request(&rep, earlier.clone())
        .await
        .expect("a single call");
    let next = opportunity_item(&customer, 5001);
    let mixed = w
        .batch_create(&rep, create_batch(vec![earlier, next], false))
        .await
        .expect("a batch with a replayed item");
    assert_eq!(
        mixed.opportunities[0], by_single,
        "the single call's result"
    );
    assert!(!mixed.opportunities[1].id.is_empty());
    assert_ne!(mixed.opportunities[1].id, by_single.id);
    assert_eq!(
        w.counts().await,
        (999, 999, 999),
        "only the new item was written"
    );

    // Two items with one request id: the second is refused.
    let twin = opportunity_item(&customer, 6000);
    let mut second = opportunity_item(&customer, 6001);
    second.request_id = twin.request_id.clone();
    let before = w.snapshot().await;
    expect_invalid(
        w.batch_create(
            &rep,
            create_batch(vec![twin.clone(), second.clone()], false),
        )
        .await,
        "requests[1].request_id",
    );
    assert_unchanged(
        &before,
        &w.snapshot().await,
        "an atomic batch with twin request ids",
    );
    let twins = w
        .batch_create(&rep, create_batch(vec![twin, second], true))
        .await
        .expect("a partial batch with twin request ids");
    assert_eq!(error_indexes(&twins.errors), [1]);
    assert_bad_item(&twins.errors[0], "requests[1].request_id");
    assert!(!twins.opportunities[0].id.is_empty());
    assert_eq!(w.counts().await, (1000, 1000, 1000));

    // A batch request id: its retry answers the whole first response, even for items that
    // carry no request id of their own.
    let items: Vec<_> = (7000..7003)
        .map(|i| pb::CreateOpportunityRequest {
            request_id: String::new(),
            ..opportunity_item(&customer, i)
        })
        .collect();
    let whole = pb::BatchCreateOpportunitiesRequest {
        requests: items,
        allow_partial_success: false,
        request_id: rid(),
    };
    let answered = w.batch_create(&rep, whole.clone()).await.expect("a batch");
    assert_eq!(w.counts().await, (1003, 1003, 1003));
    let replayed = w
        .batch_create(&rep, whole.clone())
        .await
        .expect("its retry");
    assert_eq!(replayed, answered, "the first response");
    assert_eq!(
        w.counts().await,
        (1003, 1003, 1003),
        "nothing written twice"
    );
    let mut other = whole.clone();
    other.requests.pop();
    expect_invalid(w.batch_create(&rep, other).await, "request_id");
    // Without it the same items are new items.
    let fresh = w
        .batch_create(
            &rep,
            pb::BatchCreateOpportunitiesRequest {
                request_id: String::new(),
                ..whole
            },
        )
        .await
        .expect("the same items, not de-duplicated");
    assert!(
        fresh
            .opportunities
            .iter()
            .zip(&answered.opportunities)
            .all(|(a, b)| a.id != b.id)
    );
    assert_eq!(w.counts().await, (1006, 1006, 1006));

    // The three failed items of the first batch, fixed and sent again with their request ids
    // (their claims were given back): now written, the 997 others still replayed.
    fix_opportunities(&mut requests, &customer);
    let fixed = w
        .batch_create(&rep, create_batch(requests.clone(), true))
        .await
        .expect("the fixed batch");
    assert!(fixed.errors.is_empty(), "{:?}", fixed.errors);
    for (i, (now, then)) in fixed
        .opportunities
        .iter()
        .zip(&first.opportunities)
        .enumerate()
    {
        if [17, 500, 998].contains(&i) {
            assert!(!now.id.is_empty(), "item {i} written now");
            assert_eq!(now.title, requests[i].opportunity.as_ref().unwrap().title);
        } else {
            assert_eq!(now, then, "item {i} replayed");
        }
    }
    assert_eq!(
        w.counts().await,
        (1009, 1009, 1009),
        "the 3 fixed items alone"
    );
}

// =======================================================================================
// R21: BatchCreateCustomers
// =======================================================================================

/// Whether `status` names only the bad items of [`thousand_customers`].
fn names_only_bad_customers(status: &Status) -> bool {
    match status.code() {
        Code::InvalidArgument => {
            let named = violation_fields(status);
            !named.is_empty()
                && named.iter().all(|f| {
                    f == "requests[10].customer.display_name"
                        || f == "requests[400].customer.email"
                        || f.starts_with("requests[999].")
                })
        }
        Code::AlreadyExists => status.message().starts_with("requests[999]: "),
        _ => false,
    }
}

#[tokio::test]
async fn r21_a_1000_customer_batch_with_3_bad_items_writes_nothing_atomically() {
    let mut w = World::new().await;
    let rep = rep_token();
    let mut requests = thousand_customers();
    let before = w.snapshot().await;
    let status = w
        .batch_customers(&rep, customer_batch(requests.clone(), false))
        .await
        .expect_err("an atomic batch with bad items fails");
    assert_unchanged(&before, &w.snapshot().await, "an atomic customer batch");
    assert!(names_only_bad_customers(&status), "{status:?}");

    // Fixed (the same request ids), all 1,000 are written.
    customer_of(&mut requests[10]).display_name = "ห้างหุ้นส่วน ทดสอบ".to_owned();
    customer_of(&mut requests[400]).email = "somchai@example.co.th".to_owned();
    customer_of(&mut requests[999]).code = "TH-1999".to_owned();
    let created = w
        .batch_customers(&rep, customer_batch(requests, false))
        .await
        .expect("the fixed batch");
    assert!(created.errors.is_empty());
    assert_eq!(created.customers.len(), 1000);
    assert!(created.customers.iter().all(|c| !c.id.is_empty()));
    assert_eq!(w.count("select count(*) from customers").await, 1001);
}

#[tokio::test]
async fn r21_an_atomic_batch_with_bad_input_and_another_refusal_answers_the_refusal() {
    // The atomic rule: every violation when all failures are bad input, else the first
    // failure that is not (here: the code item 2 repeats), named for its item.
    let mut w = World::new().await;
    let mut requests: Vec<_> = (0..3).map(customer_item).collect();
    customer_of(&mut requests[0]).display_name = String::new();
    customer_of(&mut requests[2]).code = "th-0001".to_owned();
    let before = w.snapshot().await;
    let status = expect_code(
        w.batch_customers(&rep_token(), customer_batch(requests, false))
            .await,
        Code::AlreadyExists,
    );
    assert_unchanged(&before, &w.snapshot().await, "an atomic customer batch");
    assert!(status.message().starts_with("requests[2]: "), "{status:?}");
    assert_eq!(error_reason(&status), "CUSTOMER_CODE_TAKEN");
}

#[tokio::test]
async fn r21_partial_customer_batch_writes_the_good_items_in_thai_and_reports_each_bad_one() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customers_before = w.count("select count(*) from customers").await;
    let mut requests = thousand_customers();
    let response = w
        .batch_customers(&rep, customer_batch(requests.clone(), true))
        .await
        .expect("a partial batch succeeds");
    assert_eq!(error_indexes(&response.errors), [10, 400, 999]);
    assert_bad_item(&response.errors[0], "requests[10].customer.display_name");
    assert_bad_item(&response.errors[1], "requests[400].customer.email");
    let taken = item_status(&response.errors[2]);
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert_eq!(error_reason(&taken), "CUSTOMER_CODE_TAKEN");
    assert!(taken.message().starts_with("requests[999]: "), "{taken:?}");
    assert!(
        taken.message().contains("requests[5]"),
        "names the first: {taken:?}"
    );

    assert_eq!(response.customers.len(), 1000);
    for (i, (request, c)) in requests.iter().zip(&response.customers).enumerate() {
        if [10, 400, 999].contains(&i) {
            assert_eq!(c, &cpb::Customer::default(), "failed item {i}");
            continue;
        }
        let asked = request.customer.as_ref().unwrap();
        assert!(!c.id.is_empty());
        assert_eq!(c.display_name, asked.display_name, "item {i}: Thai as sent");
        assert_eq!(c.code, asked.code);
        assert_eq!(
            c.email,
            format!("sales{i}@example.co.th"),
            "as CreateCustomer keeps it"
        );
        assert_eq!(c.contact_name, asked.contact_name);
        assert_eq!(c.address, asked.address);
        assert_eq!(c.owner_id, REP_A1);
        assert!(!c.archived);
    }
    let ids: BTreeSet<&str> = response
        .customers
        .iter()
        .filter(|c| !c.id.is_empty())
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids.len(), 997);
    assert_eq!(
        w.count("select count(*) from customers").await,
        customers_before + 997
    );
    // As the directory reads them, in Thai.
    let read = w
        .customers
        .get_customer(authed(
            &rep,
            cpb::GetCustomerRequest {
                id: response.customers[123].id.clone(),
            },
        ))
        .await
        .expect("get a batch's customer")
        .into_inner();
    assert_eq!(read, response.customers[123]);
    assert_eq!(read.display_name, "บริษัท ไทยเทรดดิ้ง สาขา 123 จำกัด");

    // R11 per item: the batch again answers the same customers and writes none twice; a
    // single CreateCustomer with an item's request is that item.
    let again = w
        .batch_customers(&rep, customer_batch(requests.clone(), true))
        .await
        .expect("the retried batch");
    assert_eq!(again.customers, response.customers);
    assert_eq!(error_indexes(&again.errors), [10, 400, 999]);
    let single = w
        .customers
        .create_customer(authed(&rep, requests[7].clone()))
        .await
        .expect("the single call replays the item")
        .into_inner();
    assert_eq!(single, response.customers[7]);
    assert_eq!(
        w.count("select count(*) from customers").await,
        customers_before + 997,
        "nothing written twice"
    );

    // A code already taken (by a committed customer, ignoring case) fails that item alone;
    // atomically, the whole batch, naming the item.
    let mut taken_item = customer_item(2000);
    customer_of(&mut taken_item).code = "th-0001".to_owned();
    let new_item = customer_item(2001);
    let partial = w
        .batch_customers(
            &rep,
            customer_batch(vec![taken_item.clone(), new_item.clone()], true),
        )
        .await
        .expect("a partial batch");
    assert_eq!(error_indexes(&partial.errors), [0]);
    let status = item_status(&partial.errors[0]);
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_reason(&status), "CUSTOMER_CODE_TAKEN");
    assert_eq!(partial.customers[1].code, "TH-2001");
    let mut taken_again = customer_item(3000);
    customer_of(&mut taken_again).code = "Th-0002".to_owned();
    let before = w.snapshot().await;
    let status = expect_code(
        w.batch_customers(
            &rep,
            customer_batch(vec![customer_item(3001), taken_again], false),
        )
        .await,
        Code::AlreadyExists,
    );
    assert!(status.message().starts_with("requests[1]: "), "{status:?}");
    assert_eq!(error_reason(&status), "CUSTOMER_CODE_TAKEN");
    assert_unchanged(
        &before,
        &w.snapshot().await,
        "an atomic batch with a taken code",
    );

    // The three failed items fixed, with their request ids: written now.
    customer_of(&mut requests[10]).display_name = "ห้างหุ้นส่วน ทดสอบ".to_owned();
    customer_of(&mut requests[400]).email = "somchai@example.co.th".to_owned();
    customer_of(&mut requests[999]).code = "TH-1999".to_owned();
    let fixed = w
        .batch_customers(&rep, customer_batch(requests, true))
        .await
        .expect("the fixed batch");
    assert!(fixed.errors.is_empty(), "{:?}", fixed.errors);
    for (i, (now, then)) in fixed.customers.iter().zip(&response.customers).enumerate() {
        if [10, 400, 999].contains(&i) {
            assert!(!now.id.is_empty(), "item {i} written now");
        } else {
            assert_eq!(now, then, "item {i} replayed");
        }
    }
    assert_eq!(fixed.customers[999].code, "TH-1999");
    assert_eq!(
        w.count("select count(*) from customers").await,
        customers_before + 1001
    );
}

// =======================================================================================
// R21: BatchChangeOpportunityStatus
// =======================================================================================

#[tokio::test]
async fn r21_a_batch_status_change_records_one_history_entry_and_event_per_opportunity() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.set_clock(at(9, 0)).await;
    let created = w.opportunities(40).await;
    // R15: each answer's durations are what GetOpportunity reads at the same clock.
    for opportunity in &created {
        let read = w
            .opps
            .get_opportunity(authed(
                &rep,
                pb::GetOpportunityRequest {
                    id: opportunity.id.clone(),
                },
            ))
            .await
            .expect("read the created opportunity")
            .into_inner();
        assert_eq!(read.status_durations.len(), 1);
        assert_eq!(opportunity.status_durations, read.status_durations);
    }
    // 90 minutes in Interested, then each moves.
    w.set_clock(at(10, 30)).await;
    let target = |i: usize| [PRESENTED, QUOTATION, WON, LOST][i % 4];
    let requests: Vec<_> = created
        .iter()
        .enumerate()
        .map(|(i, o)| pb::ChangeOpportunityStatusRequest {
            note: format!("ลูกค้าตอบรับ {i}"),
            lost_reason: if target(i) == LOST {
                "ราคาสูงกว่าคู่แข่ง".to_owned()
            } else {
                String::new()
            },
            etag: o.etag.clone(),
            ..change_request(&o.id, target(i))
        })
        .collect();
    let response = w
        .batch_change(&rep, change_batch(requests.clone(), false))
        .await
        .expect("the batch");
    assert!(response.errors.is_empty());
    assert_eq!(response.responses.len(), 40);
    let events = w.event_rows().await;
    let history = w.history_rows().await;
    for (i, (request, answer)) in requests.iter().zip(&response.responses).enumerate() {
        let before = &created[i];
        let o = answer.opportunity.as_ref().expect("the opportunity");
        let change = answer.status_change.as_ref().expect("a status change");
        assert_eq!(o.id, before.id);
        assert_eq!(o.status_id, target(i));
        assert_eq!(o.version, 2, "item {i}");
        assert_ne!(o.etag, before.etag);
        assert_eq!(seconds(&o.status_change_time), at(10, 30).timestamp());
        match target(i) {
            WON => {
                assert_eq!(state(o), pb::OpportunityState::Won);
                assert_eq!(seconds(&o.close_time), at(10, 30).timestamp());
                assert_eq!(o.probability, 100);
            }
            LOST => {
                assert_eq!(state(o), pb::OpportunityState::Lost);
                assert_eq!(seconds(&o.close_time), at(10, 30).timestamp());
                assert_eq!(o.lost_reason, "ราคาสูงกว่าคู่แข่ง");
                assert_eq!(change.lost_reason, "ราคาสูงกว่าคู่แข่ง");
            }
            _ => {
                assert_eq!(state(o), pb::OpportunityState::Open);
                assert_eq!(o.close_time, None);
            }
        }
        // The entry: the snapshots of both statuses, who, when, how long before.
        assert_eq!(change.opportunity_id, o.id);
        assert_eq!(change.from_status, Some(shipped(INTERESTED)));
        assert_eq!(change.to_status, Some(shipped(target(i))));
        assert_eq!(change.changed_by, actor(REP_A1, "Somchai Rep"));
        assert_eq!(seconds(&change.change_time), at(10, 30).timestamp());
        assert_eq!(
            change.time_in_previous_status,
            Some(prost_types::Duration {
                seconds: 90 * 60,
                nanos: 0
            }),
            "item {i}"
        );
        assert_eq!(change.note, request.note);
        assert_eq!(change.request_id, request.request_id);
        assert_eq!(change.amount, before.amount);

        let entries = &history[&o.id];
        assert_eq!(entries.len(), 2, "item {i}: one new entry");
        assert_eq!(entries[1].1, 2);
        assert_eq!(entries[1].2.as_deref(), Some(INTERESTED));
        assert_eq!(entries[1].3, target(i));
        let feed = &events[&o.id];
        assert_eq!(feed.len(), 2, "item {i}: one new event");
        let event = &feed[1];
        assert_eq!(event.kind, "STATUS_CHANGED");
        assert_eq!(event.version, 2);
        assert_eq!(
            event.request_id.as_deref(),
            Some(request.request_id.as_str())
        );
        assert_eq!(event.event.version, o.version);
        assert_eq!(
            event.event.before.as_ref().map(|b| b.status_id.as_str()),
            Some(INTERESTED)
        );
        assert_eq!(
            event
                .event
                .after
                .as_ref()
                .map(|a| (a.status_id.as_str(), a.version)),
            Some((target(i), 2))
        );
        assert_eq!(event.event.status_change.as_ref(), Some(change));
    }
    // ListStatusHistory says what the batch answered.
    for i in [0, 2, 3] {
        let o = answer_of(&response, i);
        let read = w.history(&rep, &o.id).await;
        assert_eq!(read.len(), 2);
        assert_eq!(Some(&read[1]), response.responses[i].status_change.as_ref());
    }

    // R11 per item, with the single call: an item sent again alone answers its first result,
    // and a batch item carrying a single call's request id replays that call.
    let single = w
        .try_change(&rep, requests[0].clone())
        .await
        .expect("the single call replays the item");
    assert_eq!(single, response.responses[0]);
    let alone = change_request(&created[0].id, CONSIDERING);
    let by_single = w
        .try_change(&rep, alone.clone())
        .await
        .expect("a single change");
    let counts = w.counts().await;
    let replay = w
        .batch_change(&rep, change_batch(vec![alone], false))
        .await
        .expect("a batch replaying it");
    assert_eq!(replay.responses, vec![by_single]);
    let again = w
        .batch_change(&rep, change_batch(requests, false))
        .await
        .expect("the whole batch again");
    assert_eq!(again.responses, response.responses, "the first results");
    assert_eq!(w.counts().await, counts, "nothing recorded twice");
}

fn answer_of(response: &pb::BatchChangeOpportunityStatusResponse, i: usize) -> &pb::Opportunity {
    response.responses[i]
        .opportunity
        .as_ref()
        .expect("the opportunity")
}

#[tokio::test]
async fn r21_each_status_change_item_is_checked_like_the_single_call() {
    let mut w = World::new().await;
    let rep = rep_token();
    let o = w.opportunities(6).await;
    // o[1] changes after its etag was read: that etag is stale.
    let stale = o[1].etag.clone();
    w.try_change(&rep, change_request(&o[1].id, QUOTATION))
        .await
        .expect("a change in between");
    let requests = vec![
        // 0: moves, with its current etag.
        pb::ChangeOpportunityStatusRequest {
            etag: o[0].etag.clone(),
            ..change_request(&o[0].id, PRESENTED)
        },
        // 1: a stale etag (R10).
        pb::ChangeOpportunityStatusRequest {
            etag: stale,
            ..change_request(&o[1].id, PRESENTED)
        },
        // 2: a lost reason with a status that is not LOST.
        pb::ChangeOpportunityStatusRequest {
            lost_reason: "งบประมาณไม่พอ".to_owned(),
            ..change_request(&o[2].id, WON)
        },
        // 3: the status it already has (R8): answered, nothing recorded.
        change_request(&o[3].id, INTERESTED),
        // 4: o[0] again.
        change_request(&o[0].id, QUOTATION),
        // 5: no such status.
        change_request(&o[4].id, UNKNOWN),
        // 6: LOST with its reason.
        pb::ChangeOpportunityStatusRequest {
            lost_reason: "เลือกผู้ขายรายอื่น".to_owned(),
            ..change_request(&o[5].id, LOST)
        },
    ];

    // Atomically: the first failure that is not bad input (the stale etag), nothing written.
    let before = w.snapshot().await;
    let status = expect_code(
        w.batch_change(&rep, change_batch(requests.clone(), false))
            .await,
        Code::Aborted,
    );
    assert_unchanged(
        &before,
        &w.snapshot().await,
        "an atomic batch with failed items",
    );
    assert_eq!(error_reason(&status), "ETAG_MISMATCH");
    assert!(status.message().starts_with("requests[1]: "), "{status:?}");

    // With partial success: each failure is its single call's, the others are written.
    let response = w
        .batch_change(&rep, change_batch(requests.clone(), true))
        .await
        .expect("a partial batch");
    assert_eq!(error_indexes(&response.errors), [1, 2, 4, 5]);
    let stale_item = item_status(&response.errors[0]);
    assert_eq!(stale_item.code(), Code::Aborted, "{stale_item:?}");
    assert_eq!(error_reason(&stale_item), "ETAG_MISMATCH");
    assert!(stale_item.message().starts_with("requests[1]: "));
    assert_bad_item(&response.errors[1], "requests[2].lost_reason");
    assert_bad_item(&response.errors[2], "requests[4].opportunity_id");
    assert_bad_item(&response.errors[3], "requests[5].status_id");
    for i in [1, 2, 4, 5] {
        assert_eq!(
            response.responses[i],
            pb::ChangeOpportunityStatusResponse::default(),
            "failed item {i}"
        );
    }

    let moved = &response.responses[0];
    assert_eq!(answer_of(&response, 0).status_id, PRESENTED);
    assert!(moved.status_change.is_some());
    // R8: the opportunity as it is, no entry, no event, no new version.
    let unchanged = &response.responses[3];
    assert_eq!(unchanged.status_change, None);
    let same = answer_of(&response, 3);
    assert_eq!(
        (same.status_id.as_str(), same.version, same.etag.as_str()),
        (INTERESTED, 1, o[3].etag.as_str())
    );
    let lost = answer_of(&response, 6);
    assert_eq!(state(lost), pb::OpportunityState::Lost);
    assert_eq!(lost.lost_reason, "เลือกผู้ขายรายอื่น");

    let history = w.history_rows().await;
    let events = w.event_rows().await;
    let entries = |i: usize| history[&o[i].id].len();
    let feed = |i: usize| events[&o[i].id].len();
    // o[1] had its change in between; o[2] and o[4] failed; o[3] stayed.
    assert_eq!(
        (0..6).map(entries).collect::<Vec<_>>(),
        [2, 2, 1, 1, 1, 2],
        "history per opportunity"
    );
    assert_eq!(
        (0..6).map(feed).collect::<Vec<_>>(),
        [2, 2, 1, 1, 1, 2],
        "events per opportunity"
    );
    assert_eq!(w.get(&rep, &o[1].id).await.status_id, QUOTATION);
    assert_eq!(w.get(&rep, &o[2].id).await.status_id, INTERESTED);
}

// =======================================================================================
// R12: every item within the caller's scope
// =======================================================================================

#[tokio::test]
async fn r12_a_reps_batch_item_for_another_owner_fails_as_the_single_call() {
    let mut w = World::new().await;
    let rep = rep_token();
    w.introduce(&rep_a2_token()).await;
    let customer = w.customer.clone();
    let mut requests: Vec<_> = (0..4).map(|i| opportunity_item(&customer, i)).collect();
    draft_of(&mut requests[2]).owner_id = REP_A2.to_owned();

    let before = w.snapshot().await;
    let single = expect_code(
        w.try_create_request(&rep, requests[2].clone()).await,
        Code::PermissionDenied,
    );
    assert_eq!(error_reason(&single), "OUT_OF_SCOPE");
    let status = expect_code(
        w.batch_create(&rep, create_batch(requests.clone(), false))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(error_reason(&status), "OUT_OF_SCOPE");
    assert_eq!(
        status.message(),
        format!("requests[2]: {}", single.message()),
        "the single call's answer, named for the item"
    );
    assert_unchanged(&before, &w.snapshot().await, "an atomic batch out of scope");

    let response = w
        .batch_create(&rep, create_batch(requests.clone(), true))
        .await
        .expect("a partial batch");
    assert_eq!(error_indexes(&response.errors), [2]);
    let item = item_status(&response.errors[0]);
    assert_eq!(item.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&item), "OUT_OF_SCOPE");
    assert_eq!(item.message(), status.message());
    assert_eq!(response.opportunities[2], pb::Opportunity::default());
    for i in [0, 1, 3] {
        assert_eq!(response.opportunities[i].owner_id, REP_A1);
    }
    assert_eq!(w.counts().await, (3, 3, 3));
}

#[tokio::test]
async fn r12_a_managers_batch_creates_for_their_team_and_not_another() {
    let mut w = World::new().await;
    let manager = manager_token();
    w.introduce(&rep_a2_token()).await;
    w.introduce(&rep_b_token()).await;
    let customer = w.customer.clone();
    let owners = [REP_A1, REP_A2, MGR_A, REP_B1, "ghost-1", ""];
    let requests: Vec<_> = owners
        .iter()
        .enumerate()
        .map(|(i, owner)| {
            let mut request = opportunity_item(&customer, i);
            draft_of(&mut request).owner_id = (*owner).to_owned();
            request
        })
        .collect();
    let before = w.snapshot().await;
    let status = expect_code(
        w.batch_create(&manager, create_batch(requests.clone(), false))
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().starts_with("requests[3]: "), "{status:?}");
    assert_unchanged(&before, &w.snapshot().await, "an atomic batch out of scope");

    let response = w
        .batch_create(&manager, create_batch(requests.clone(), true))
        .await
        .expect("a partial batch");
    assert_eq!(error_indexes(&response.errors), [3, 4]);
    let other_team = item_status(&response.errors[0]);
    assert_eq!(other_team.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&other_team), "OUT_OF_SCOPE");
    // Nobody names a salesperson who never used the suite.
    assert_bad_item(&response.errors[1], "requests[4].opportunity.owner_id");
    let owner_of = |i: usize| response.opportunities[i].owner_id.as_str();
    assert_eq!(
        [owner_of(0), owner_of(1), owner_of(2), owner_of(5)],
        [REP_A1, REP_A2, MGR_A, MGR_A]
    );
    for i in [0, 1, 2, 5] {
        assert_eq!(
            response.opportunities[i].created_by,
            actor(MGR_A, "Malee Manager")
        );
    }
    // The rep of the team sees what the manager assigned them.
    let assigned = &response.opportunities[1];
    assert_eq!(w.get(&rep_a2_token(), &assigned.id).await.id, assigned.id);
    // An admin assigns anyone.
    let by_admin = w
        .batch_create(
            &admin_token(),
            create_batch(vec![requests[3].clone()], false),
        )
        .await
        .expect("an admin assigns another team's rep");
    assert_eq!(by_admin.opportunities[0].owner_id, REP_B1);
}

#[tokio::test]
async fn r12_a_reps_batch_status_change_is_refused_for_opportunities_it_may_not_see() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer.clone();
    let mine = w.opportunities(2).await;
    let teammates = w
        .try_create_request(&rep_a2_token(), opportunity_item(&customer, 10))
        .await
        .expect("a teammate's opportunity");
    let other_team = w
        .try_create_request(&rep_b_token(), opportunity_item(&customer, 11))
        .await
        .expect("another team's opportunity");
    let requests = vec![
        change_request(&mine[0].id, PRESENTED),
        change_request(&teammates.id, PRESENTED),
        change_request(&other_team.id, PRESENTED),
        change_request(UNKNOWN, PRESENTED),
        change_request(&mine[1].id, PRESENTED),
    ];
    let before = w.snapshot().await;
    // What the single call answers for each item the rep may not see.
    let mut singles = Vec::new();
    for i in [1, 2, 3] {
        let status = expect_code(
            w.try_change(&rep, requests[i].clone()).await,
            Code::PermissionDenied,
        );
        singles.push(status.message().to_owned());
    }
    let status = expect_code(
        w.batch_change(&rep, change_batch(requests.clone(), false))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(status.message(), format!("requests[1]: {}", singles[0]));
    assert_unchanged(&before, &w.snapshot().await, "an atomic batch out of scope");

    let response = w
        .batch_change(&rep, change_batch(requests.clone(), true))
        .await
        .expect("a partial batch");
    assert_eq!(error_indexes(&response.errors), [1, 2, 3]);
    for (error, single) in response.errors.iter().zip(&singles) {
        let item = item_status(error);
        assert_eq!(item.code(), Code::PermissionDenied);
        assert_eq!(error_reason(&item), "OUT_OF_SCOPE");
        assert_eq!(
            item.message(),
            format!("requests[{}]: {single}", error.index)
        );
        // AIP-211: nothing of the opportunity leaks.
        assert!(!item.message().contains("ERP"), "{item:?}");
    }
    assert_eq!(answer_of(&response, 0).status_id, PRESENTED);
    assert_eq!(answer_of(&response, 4).status_id, PRESENTED);
    assert_eq!(
        w.get(&rep_a2_token(), &teammates.id).await.status_id,
        INTERESTED
    );

    // The team's manager changes the team's, not another team's; an admin is told that an
    // unknown opportunity does not exist.
    let manager = w
        .batch_change(
            &manager_token(),
            change_batch(
                vec![
                    change_request(&teammates.id, QUOTATION),
                    change_request(&other_team.id, QUOTATION),
                ],
                true,
            ),
        )
        .await
        .expect("the manager's batch");
    assert_eq!(error_indexes(&manager.errors), [1]);
    assert_eq!(
        item_status(&manager.errors[0]).code(),
        Code::PermissionDenied
    );
    assert_eq!(answer_of(&manager, 0).status_id, QUOTATION);
    let admin = w
        .batch_change(
            &admin_token(),
            change_batch(
                vec![
                    change_request(&other_team.id, QUOTATION),
                    change_request(UNKNOWN, QUOTATION),
                ],
                true,
            ),
        )
        .await
        .expect("the admin's batch");
    assert_eq!(error_indexes(&admin.errors), [1]);
    assert_eq!(item_status(&admin.errors[0]).code(), Code::NotFound);
    assert_eq!(answer_of(&admin, 0).status_id, QUOTATION);
    expect_code(
        w.batch_change(
            &admin_token(),
            change_batch(vec![change_request(UNKNOWN, QUOTATION)], false),
        )
        .await,
        Code::NotFound,
    );
}

// =======================================================================================
// R21: 1..1,000 items
// =======================================================================================

#[tokio::test]
async fn r21_a_batch_takes_1_to_1000_items() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer.clone();
    let before = w.snapshot().await;
    let only_requests = |status: Status| {
        assert_eq!(
            violation_fields(&status),
            BTreeSet::from(["requests".to_owned()]),
            "{status:?}"
        );
    };
    for size in [0, MAX_ITEMS + 1] {
        for partial in [false, true] {
            let opportunities = (0..size).map(|i| opportunity_item(&customer, i)).collect();
            only_requests(expect_code(
                w.batch_create(&rep, create_batch(opportunities, partial))
                    .await,
                Code::InvalidArgument,
            ));
            let changes = (0..size)
                .map(|_| change_request(&uuid::Uuid::new_v4().to_string(), WON))
                .collect();
            only_requests(expect_code(
                w.batch_change(&rep, change_batch(changes, partial)).await,
                Code::InvalidArgument,
            ));
            let customers = (0..size).map(customer_item).collect();
            only_requests(expect_code(
                w.batch_customers(&rep, customer_batch(customers, partial))
                    .await,
                Code::InvalidArgument,
            ));
        }
    }
    assert_unchanged(
        &before,
        &w.snapshot().await,
        "batches of no or too many items",
    );
    // One item is a batch.
    let one = w
        .batch_create(
            &rep,
            create_batch(vec![opportunity_item(&customer, 0)], false),
        )
        .await
        .expect("a batch of one");
    assert_eq!(one.opportunities.len(), 1);
}

// =======================================================================================
// R10 + R21: concurrent batches
// =======================================================================================

#[tokio::test]
async fn r21_concurrent_batch_status_changes_over_overlapping_opportunities_never_deadlock() {
    let mut w = World::new().await;
    let created = w.opportunities(300).await;
    let ids: Vec<String> = created.iter().map(|o| o.id.clone()).collect();
    let rep = rep_token();
    let manager = manager_token();
    // Each round moves 0..200 (in order, by the rep) and 100..300 (in reverse order, by the
    // manager) at once; each round's targets differ from the round before, so every item
    // moves.
    let rounds = [
        (PRESENTED, SENT_EMAIL),
        (QUOTATION, CONSIDERING),
        (PRESENTED, SENT_EMAIL),
        (QUOTATION, CONSIDERING),
    ];
    for (round, (first_to, second_to)) in rounds.iter().enumerate() {
        let first: Vec<_> = ids[0..200]
            .iter()
            .map(|id| change_request(id, first_to))
            .collect();
        let second: Vec<_> = ids[100..300]
            .iter()
            .rev()
            .map(|id| change_request(id, second_to))
            .collect();
        let mut one = w.opps.clone();
        let mut other = w.opps.clone();
        let (a, b) = tokio::join!(
            one.batch_change_opportunity_status(authed(&rep, change_batch(first, false))),
            other.batch_change_opportunity_status(authed(&manager, change_batch(second, false))),
        );
        for (who, result) in [("the rep's", a), ("the manager's", b)] {
            let response = result
                .unwrap_or_else(|status| panic!("round {round}: {who} batch failed: {status:?}"))
                .into_inner();
            assert!(response.errors.is_empty());
            assert!(
                response.responses.iter().all(|r| r.status_change.is_some()),
                "round {round}: every item of {who} batch moved"
            );
        }
    }
    // Every chain is whole: sequences 1..n, each entry starting where the one before ended,
    // no change lost, one event per version.
    let history = w.history_rows().await;
    let events = w.event_rows().await;
    for (i, id) in ids.iter().enumerate() {
        let expected = if (100..200).contains(&i) { 9 } else { 5 };
        let chain = &history[id];
        assert_eq!(chain.len(), expected, "opportunity {i}: no change lost");
        for (k, entry) in chain.iter().enumerate() {
            assert_eq!(
                entry.1,
                k as i32 + 1,
                "opportunity {i}: consecutive sequences"
            );
            if k == 0 {
                assert_eq!(entry.2, None);
            } else {
                assert_eq!(entry.2.as_deref(), Some(chain[k - 1].3.as_str()), "no gap");
            }
        }
        let versions: Vec<i64> = events[id].iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=expected as i64).collect::<Vec<_>>(),
            "opportunity {i}"
        );
        let now = w.get(&rep, id).await;
        assert_eq!(now.version, expected as i64);
        assert_eq!(
            now.status_id,
            chain[expected - 1].3,
            "the last entry is where it is"
        );
    }
}

// =======================================================================================
// Imports (`salesopp import customers|opportunities FILE.csv`, through the batch calls)
// =======================================================================================

// ---------------------------------------------------------------------------------------
// The importer: `salesopp import` over the batch calls
// ---------------------------------------------------------------------------------------

/// The rows of the 100,000-opportunity file.
const IMPORT_ROWS: u64 = 100_000;

/// A CSV of `rows` opportunities for `customers` (Thai titles, amounts, dates, status names
/// and ids), one per line after the header, each title naming its line.
fn opportunities_csv(rows: u64, customers: &[String]) -> String {
    let mut csv =
        String::from("customer_id,title,amount,currency_code,expected_close_date,status,note\n");
    for n in 0..rows {
        let line = n + 2;
        let customer = &customers[n as usize % customers.len()];
        let status = ["", "นำเสนอ", "Quotation", "เสนอราคา"][n as usize % 4];
        csv.push_str(&format!(
            "{customer},\"ระบบคลังสินค้า line {line}\",{}.{:02},THB,2027-{:02}-{:02},{status},imported\n",
            10_000 + n * 7,
            n % 100,
            1 + n % 12,
            1 + n % 28,
        ));
    }
    csv
}

/// How many of the kind of row each table holds for the import's opportunities.
async fn imported(db: &sqlx::PgPool) -> (i64, i64, i64, i64, i64) {
    sqlx::query_as(
        "select (select count(*) from opportunities),
                (select count(distinct title) from opportunities),
                (select count(*) from status_changes),
                (select count(*) from status_changes where sequence = 1 and from_status_id is null
                     and request_id like 'import:%'),
                (select count(distinct opportunity_id) from opportunity_events
                  where type = 'CREATED' and version = 1 and request_id like 'import:%')",
    )
    .fetch_one(db)
    .await
    .expect("count the imported rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r21_an_import_of_100000_opportunities_interrupted_twice_ends_with_exactly_100000() {
    use salesopp::import::{self, ImportOptions, Kind};

    let mut w = World::new().await;
    let admin = admin_token();
    let mut customers = Vec::new();
    for n in 0..10 {
        customers.push(w.customer(&admin, &format!("ลูกค้านำเข้า {n}")).await.id);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("opportunities.csv");
    std::fs::write(&file, opportunities_csv(IMPORT_ROWS, &customers)).expect("write the csv");
    let options = || ImportOptions::new(Kind::Opportunities, &file, w.suite.url(), admin.clone());

    // Interrupted after 30,000 rows, as a stop between batches would.
    let first = import::run(ImportOptions {
        stop_after_rows: Some(30_000),
        ..options()
    })
    .await
    .expect("the first run");
    assert_eq!(
        (first.written, first.unread),
        (30_000, IMPORT_ROWS - 30_000),
        "{first}"
    );
    assert!(first.failed.is_empty(), "{first}");

    // Interrupted again in the middle of its batches: the client goes away while batches
    // are in flight (their transactions roll back or commit whole).
    let second = tokio::spawn(import::run(options()));
    while imported(w.db()).await.0 < 60_000 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    second.abort();
    let _ = second.await;
    let at_the_kill = imported(w.db()).await.0;
    assert!(
        (60_000..IMPORT_ROWS as i64).contains(&at_the_kill),
        "the second run was stopped part way: {at_the_kill} written"
    );

    // Run again to the end: what was written is replayed, the rest created.
    let last = import::run(options()).await.expect("the last run");
    assert!(last.ok(), "{last}");
    assert_eq!(
        (last.read, last.written),
        (IMPORT_ROWS, IMPORT_ROWS),
        "{last}"
    );
    eprintln!(
        "import of {IMPORT_ROWS} opportunities, resumed with {at_the_kill} already written: \
         {:.1} s, {:.0} rows/s (this build, this machine; no timing is asserted)",
        last.elapsed.as_secs_f64(),
        last.rows_per_second()
    );

    // Exactly one opportunity per line, each with its first history entry and CREATED event.
    let rows = IMPORT_ROWS as i64;
    assert_eq!(imported(w.db()).await, (rows, rows, rows, rows, rows));
    let request_ids: i64 = sqlx::query_scalar(
        "select count(*) from idempotency_records
          where method = 'CreateOpportunity' and request_id like 'import:%'",
    )
    .fetch_one(w.db())
    .await
    .expect("count the request ids");
    assert_eq!(
        request_ids, rows,
        "one request id per line, kept for its retries"
    );
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "select s.display_name, count(*) from opportunities o
           join opportunity_statuses s on s.id = o.status_id
          group by s.display_name order by s.display_name",
    )
    .fetch_all(w.db())
    .await
    .expect("count by status");
    assert_eq!(
        by_status,
        [
            ("Interested".to_owned(), rows / 4),
            ("Presented".to_owned(), rows / 4),
            ("Quotation".to_owned(), rows / 2),
        ],
        "the default status where the row names none (R5), else the status named, in Thai or English"
    );
}
