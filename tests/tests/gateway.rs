//! GatewayService end to end: the three combined calls (GetOpportunityWithHistory,
//! GetCustomerOverview, GetSalespersonPipeline) through real gRPC, the gateway calling the
//! customer, opportunity and status-config services over loopback exactly as `salesopp
//! serve` hosts them, on a real Postgres (one database per test).
//!
//! Each combined call's answer is checked against what the underlying services answer for
//! the same caller when called directly: the gateway adds no rule of its own except the
//! salesperson pipeline's visibility, and passes every other answer through unchanged.
//! Downstream failures use gateway-only servers pointed at a closed port; the forwarding of
//! the caller's token, deadline and trace context uses a fake status-config service that
//! records what it receives; that the independent legs of each combined call are in flight
//! together uses fake parts whose legs wait for each other at a barrier. No timing is
//! asserted: waits are for a signal or poll for a state, with a generous limit that only
//! guards against hangs. (The demo's story, whose board and detail go through the gateway,
//! is checked in demo.rs.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost_types::FieldMask;
use salesopp::{ServeConfig, ServiceKind};
use salesopp_gateway::grpc::Endpoints;
use salesopp_kit::Authenticator;
use salesopp_proto::common::v1::{Date, Money};
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_server::{
    CustomerService, CustomerServiceServer,
};
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::opportunity::v1::opportunity_service_server::{
    OpportunityService, OpportunityServiceServer,
};
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use salesopp_proto::statusconfig::v1::status_config_service_server::{
    StatusConfigService, StatusConfigServiceServer,
};
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, SHIPPED_STATUSES, WON,
    change_request, money, rid,
};
use salesopp_tests::settled::Settled as _;
use salesopp_tests::{
    SECRET, TestSuite, admin_token, authed, expect_code, expect_invalid, manager_token, rep_token,
    token,
};
use tokio::sync::{Barrier, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

type Gateway = GatewayServiceClient<Channel>;

/// A well-formed UUID that no row has.
const UNKNOWN: &str = "6f1c1a8e-0000-4000-8000-00000000dead";

/// Guards every wait against a hang; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The cast: the harness's rep-a1 "Somchai Rep" (north), mgr-a "Malee Manager" (north) and
// admin-1 "Araya Admin" (hq), and these.
// ---------------------------------------------------------------------------------------

const REP_A1: &str = "rep-a1";
const REP_A2: &str = "rep-a2";

/// A second rep of rep-a1's team.
fn rep_a2_token() -> String {
    token(REP_A2, "Niran Rep", "north", &["sales_rep"])
}

/// A rep of another team.
fn rep_b_token() -> String {
    token("rep-b1", "Suda Rep", "south", &["sales_rep"])
}

/// A manager of another team.
fn manager_b_token() -> String {
    token("mgr-b", "Boon Manager", "south", &["sales_manager"])
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

fn day(year: i32, month: i32, day: i32) -> Date {
    Date { year, month, day }
}

/// A total of `count` opportunities: `total` and `weighted` as (units, nanos).
fn total(
    currency: &str,
    count: i64,
    total: (i64, i32),
    weighted: (i64, i32),
) -> opb::CurrencyTotal {
    opb::CurrencyTotal {
        currency_code: currency.to_owned(),
        count,
        total_amount: Some(money(currency, total.0, total.1)),
        weighted_amount: Some(money(currency, weighted.0, weighted.1)),
    }
}

fn ids(opportunities: &[opb::Opportunity]) -> Vec<String> {
    opportunities.iter().map(|o| o.id.clone()).collect()
}

fn id_set<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    ids.into_iter().map(str::to_owned).collect()
}

fn status_ids(statuses: &[spb::OpportunityStatus]) -> Vec<String> {
    statuses.iter().map(|s| s.id.clone()).collect()
}

/// Asserts two failures are the same answer: code, message and details.
#[track_caller]
fn assert_same_answer(gateway: &Status, service: &Status, what: &str) {
    assert_eq!(gateway.code(), service.code(), "{what}: code");
    assert_eq!(gateway.message(), service.message(), "{what}: message");
    assert_eq!(gateway.details(), service.details(), "{what}: details");
}

/// `message` with the caller's token and `extra` metadata.
fn authed_with<T>(token: &str, message: T, extra: &[(&'static str, &str)]) -> Request<T> {
    let mut request = authed(token, message);
    for (key, value) in extra {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ascii metadata"));
    }
    request
}

/// A request without any token.
fn anonymous<T>(message: T) -> Request<T> {
    Request::new(message)
}

// ---------------------------------------------------------------------------------------
// The world of one test: a suite, its four clients, and fixture helpers.
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

    async fn rename_customer(&mut self, token: &str, id: &str, name: &str) {
        self.customers
            .update_customer(authed(
                token,
                cpb::UpdateCustomerRequest {
                    request_id: String::new(),
                    customer: Some(cpb::Customer {
                        id: id.to_owned(),
                        display_name: name.to_owned(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["display_name".to_owned()],
                    }),
                },
            ))
            .await
            .expect("rename customer");
    }

    async fn get_customer(&mut self, token: &str, id: &str) -> cpb::Customer {
        self.customers
            .get_customer(authed(token, cpb::GetCustomerRequest { id: id.to_owned() }))
            .await
            .expect("get customer")
            .into_inner()
    }

    /// An opportunity created by `token` (its owner) in `status` (None: the default).
    async fn opportunity(
        &mut self,
        token: &str,
        customer_id: &str,
        title: &str,
        amount: Money,
        close: Option<Date>,
        status: Option<&str>,
    ) -> opb::Opportunity {
        self.opps
            .create_opportunity(authed(
                token,
                opb::CreateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        customer_id: customer_id.to_owned(),
                        title: title.to_owned(),
                        amount: Some(amount),
                        expected_close_date: close,
                        status_id: status.unwrap_or_default().to_owned(),
                        ..Default::default()
                    }),
                    request_id: rid(),
                    note: format!("created {title}"),
                },
            ))
            .await
            .expect("create opportunity")
            .into_inner()
    }

    async fn change(&mut self, token: &str, id: &str, status_id: &str, note: &str) {
        let mut request = change_request(id, status_id);
        request.note = note.to_owned();
        self.try_change(token, request)
            .await
            .expect("change status");
    }

    async fn history_page(
        &mut self,
        token: &str,
        id: &str,
        page_size: i32,
        page_token: &str,
    ) -> opb::ListStatusHistoryResponse {
        self.opps
            .list_status_history(authed(
                token,
                opb::ListStatusHistoryRequest {
                    opportunity_id: id.to_owned(),
                    page_size,
                    page_token: page_token.to_owned(),
                    newest_first: false,
                },
            ))
            .await
            .expect("list status history")
            .into_inner()
    }

    async fn live_statuses(&mut self, token: &str) -> Vec<spb::OpportunityStatus> {
        self.statuses
            .list_statuses(authed(token, spb::ListStatusesRequest::default()))
            .await
            .expect("list statuses")
            .into_inner()
            .statuses
    }

    async fn list(
        &mut self,
        token: &str,
        request: opb::ListOpportunitiesRequest,
    ) -> opb::ListOpportunitiesResponse {
        self.opps
            .list_opportunities(authed(token, request))
            .await
            .expect("list opportunities")
            .into_inner()
    }

    async fn summary(
        &mut self,
        token: &str,
        request: opb::GetPipelineSummaryRequest,
    ) -> opb::GetPipelineSummaryResponse {
        self.opps
            .get_pipeline_summary(authed(token, request))
            .await
            .expect("get pipeline summary")
            .into_inner()
    }

    async fn try_detail(
        &mut self,
        token: &str,
        opportunity_id: &str,
        history_page_size: i32,
    ) -> Result<gpb::GetOpportunityWithHistoryResponse, Status> {
        self.gateway
            .get_opportunity_with_history(authed(
                token,
                gpb::GetOpportunityWithHistoryRequest {
                    opportunity_id: opportunity_id.to_owned(),
                    history_page_size,
                },
            ))
            .await
            .map(Response::into_inner)
    }

    async fn try_overview(
        &mut self,
        token: &str,
        customer_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<gpb::GetCustomerOverviewResponse, Status> {
        self.gateway
            .get_customer_overview(authed(
                token,
                gpb::GetCustomerOverviewRequest {
                    customer_id: customer_id.to_owned(),
                    page_size,
                    page_token: page_token.to_owned(),
                },
            ))
            .await
            .map(Response::into_inner)
    }

    async fn try_board(
        &mut self,
        token: &str,
        request: gpb::GetSalespersonPipelineRequest,
    ) -> Result<gpb::GetSalespersonPipelineResponse, Status> {
        self.gateway
            .get_salesperson_pipeline(authed(token, request))
            .await
            .map(Response::into_inner)
    }

    async fn board_of(
        &mut self,
        token: &str,
        salesperson_id: &str,
        per_stage: i32,
    ) -> gpb::GetSalespersonPipelineResponse {
        self.try_board(
            token,
            gpb::GetSalespersonPipelineRequest {
                salesperson_id: salesperson_id.to_owned(),
                opportunities_per_stage: per_stage,
                ..Default::default()
            },
        )
        .await
        .expect("get salesperson pipeline")
    }
}

/// rep-a1's book: two customers, five opportunities over four statuses and two currencies,
/// and, on the first customer, one opportunity each of rep-a2 (same team) and rep-b1 (other
/// team).
struct Book {
    c1: cpb::Customer,
    c2: cpb::Customer,
    /// C1, THB 100,000, Interested, closes 2031-03-01.
    o1: opb::Opportunity,
    /// C2, USD 2,500.50, Interested, closes 2031-01-15.
    o2: opb::Opportunity,
    /// C1, THB 1,000,000, Quotation, no close date.
    o3: opb::Opportunity,
    /// C2, THB 400,000, Closed won.
    o4: opb::Opportunity,
    /// C1, THB 50,000, Closed lost.
    o5: opb::Opportunity,
    /// C1, THB 70,000, Presented, owned by rep-a2.
    a2: opb::Opportunity,
    /// C1, USD 1,000, Interested, owned by rep-b1.
    b1: opb::Opportunity,
}

impl Book {
    async fn seed(w: &mut World) -> Book {
        let rep = rep_token();
        let c1 = w.customer(&rep, "บริษัท หนึ่ง จำกัด").await;
        let c2 = w.customer(&rep, "Two Trading Co., Ltd.").await;
        let o1 = w
            .opportunity(
                &rep,
                &c1.id,
                "Warehouse racks",
                money("THB", 100_000, 0),
                Some(day(2031, 3, 1)),
                None,
            )
            .await;
        let o2 = w
            .opportunity(
                &rep,
                &c2.id,
                "Forklift lease",
                money("USD", 2_500, 500_000_000),
                Some(day(2031, 1, 15)),
                None,
            )
            .await;
        let o3 = w
            .opportunity(
                &rep,
                &c1.id,
                "ERP rollout",
                money("THB", 1_000_000, 0),
                None,
                Some(QUOTATION),
            )
            .await;
        let o4 = w
            .opportunity(
                &rep,
                &c2.id,
                "Scanners",
                money("THB", 400_000, 0),
                None,
                None,
            )
            .await;
        w.change(&rep, &o4.id, WON, "PO received").await;
        let o5 = w
            .opportunity(
                &rep,
                &c1.id,
                "Printers",
                money("THB", 50_000, 0),
                None,
                None,
            )
            .await;
        w.change(&rep, &o5.id, LOST, "Went elsewhere").await;
        let a2 = w
            .opportunity(
                &rep_a2_token(),
                &c1.id,
                "Conveyor",
                money("THB", 70_000, 0),
                None,
                Some(PRESENTED),
            )
            .await;
        let b1 = w
            .opportunity(
                &rep_b_token(),
                &c1.id,
                "Labels",
                money("USD", 1_000, 0),
                None,
                None,
            )
            .await;
        // Read back after every change, so each holds its current fields.
        let admin = admin_token();
        Book {
            o1: w.get(&admin, &o1.id).await,
            o2: w.get(&admin, &o2.id).await,
            o3: w.get(&admin, &o3.id).await,
            o4: w.get(&admin, &o4.id).await,
            o5: w.get(&admin, &o5.id).await,
            a2: w.get(&admin, &a2.id).await,
            b1: w.get(&admin, &b1.id).await,
            c1,
            c2,
        }
    }
}

// ---------------------------------------------------------------------------------------
// GetOpportunityWithHistory
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn opportunity_with_history_has_every_part() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "บริษัท สยามพาณิชย์ จำกัด").await;
    let created = w
        .opportunity(
            &rep,
            &customer.id,
            "ระบบ ERP",
            money("THB", 1_250_000, 0),
            Some(day(2031, 6, 30)),
            None,
        )
        .await;
    w.change(&rep, &created.id, SENT_EMAIL, "brochure sent")
        .await;
    w.change(&rep, &created.id, QUOTATION, "asked for a quote")
        .await;
    w.change(&rep, &created.id, CONSIDERING, "comparing").await;

    for caller in [rep.clone(), manager_token(), admin_token()] {
        let detail = w.try_detail(&caller, &created.id, 0).await.expect("detail");
        // Every part is what the owning service answers for the same caller.
        let opportunity = w.get(&caller, &created.id).await;
        assert_eq!(detail.opportunity.settled(), Some(opportunity.settled()));
        assert_eq!(opportunity.status_id, CONSIDERING);
        assert_eq!(
            detail.customer.as_ref(),
            Some(&w.get_customer(&caller, &customer.id).await)
        );
        let statuses = w.live_statuses(&caller).await;
        assert_eq!(detail.pipeline_statuses, statuses);
        assert_eq!(
            status_ids(&detail.pipeline_statuses),
            SHIPPED_STATUSES.to_vec()
        );
        let current = detail.current_status.expect("the current status");
        assert_eq!(current.id, CONSIDERING);
        assert_eq!(
            Some(&current),
            statuses.iter().find(|s| s.id == CONSIDERING)
        );
        assert_eq!(current.display_name, "Considering and comparing");
        assert_eq!(current.probability, 70);
        // The whole history in one default page, oldest first, as ListStatusHistory has it.
        let history = w.history_page(&caller, &created.id, 0, "").await;
        assert_eq!(detail.status_history, history.status_changes);
        assert!(detail.history_next_page_token.is_empty());
        let path: Vec<(String, String)> = detail
            .status_history
            .iter()
            .map(|entry| {
                (
                    entry
                        .from_status
                        .as_ref()
                        .map(|s| s.id.clone())
                        .unwrap_or_default(),
                    entry.to_status.as_ref().expect("to status").id.clone(),
                )
            })
            .collect();
        assert_eq!(
            path,
            vec![
                (String::new(), INTERESTED.to_owned()),
                (INTERESTED.to_owned(), SENT_EMAIL.to_owned()),
                (SENT_EMAIL.to_owned(), QUOTATION.to_owned()),
                (QUOTATION.to_owned(), CONSIDERING.to_owned()),
            ]
        );
        assert_eq!(
            detail
                .status_history
                .iter()
                .map(|e| e.note.as_str())
                .collect::<Vec<_>>(),
            vec![
                "created ระบบ ERP",
                "brochure sent",
                "asked for a quote",
                "comparing"
            ]
        );
        assert!(
            detail
                .status_history
                .iter()
                .all(|e| e.opportunity_id == created.id)
        );
    }
}

#[tokio::test]
async fn opportunity_with_history_pages_history_oldest_first() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Paging Co.").await;
    let created = w
        .opportunity(
            &rep,
            &customer.id,
            "Many moves",
            money("THB", 10_000, 0),
            None,
            None,
        )
        .await;
    // 1 + 6 entries: back and forth through the open statuses.
    let moves = [
        PRESENTED,
        SENT_EMAIL,
        QUOTATION,
        PRESENTED,
        CONSIDERING,
        WON,
    ];
    for (index, status) in moves.iter().enumerate() {
        w.change(&rep, &created.id, status, &format!("move {index}"))
            .await;
    }
    let all = w.history_page(&rep, &created.id, 500, "").await;
    assert_eq!(all.status_changes.len(), 7);
    assert!(all.next_page_token.is_empty());

    let first = w.try_detail(&rep, &created.id, 3).await.expect("detail");
    assert_eq!(first.status_history, all.status_changes[..3].to_vec());
    assert!(
        !first.history_next_page_token.is_empty(),
        "a next-page token when the history goes on"
    );
    // The token continues with ListStatusHistory: same opportunity, page size, oldest first.
    let second = w
        .history_page(&rep, &created.id, 3, &first.history_next_page_token)
        .await;
    assert_eq!(second.status_changes, all.status_changes[3..6].to_vec());
    assert!(!second.next_page_token.is_empty());
    let third = w
        .history_page(&rep, &created.id, 3, &second.next_page_token)
        .await;
    assert_eq!(third.status_changes, all.status_changes[6..].to_vec());
    assert!(third.next_page_token.is_empty());

    // Oldest first: change times never go backwards.
    let times: Vec<(i64, i32)> = all
        .status_changes
        .iter()
        .map(|e| {
            let t = e.change_time.as_ref().expect("change time");
            (t.seconds, t.nanos)
        })
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));

    // A page exactly as long as the history: no token.
    let exact = w.try_detail(&rep, &created.id, 7).await.expect("detail");
    assert_eq!(exact.status_history, all.status_changes);
    assert!(exact.history_next_page_token.is_empty());
    // Above the maximum is capped, not refused.
    let capped = w
        .try_detail(&rep, &created.id, 100_000)
        .await
        .expect("detail");
    assert_eq!(capped.status_history, all.status_changes);
}

#[tokio::test]
async fn opportunity_with_history_shows_archived_customer_and_live_statuses() {
    let mut w = World::new().await;
    let rep = rep_token();
    let admin = admin_token();
    let customer = w.customer(&rep, "Closing Down Ltd.").await;
    let created = w
        .opportunity(
            &rep,
            &customer.id,
            "Last order",
            money("THB", 5_000, 0),
            None,
            None,
        )
        .await;
    w.change(&rep, &created.id, WON, "done").await;
    // The customer is archived once nothing is open with it: the detail still shows it.
    w.customers
        .delete_customer(authed(
            &rep,
            cpb::DeleteCustomerRequest {
                request_id: String::new(),
                id: customer.id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .expect("archive the customer");
    // A new status, then archived: not among the pipeline's statuses.
    let extra = w
        .statuses
        .create_status(authed(
            &admin,
            spb::CreateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    display_name: "Demo booked".to_owned(),
                    localized_names: [("th", "นัดสาธิต"), ("en", "Demo booked")]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    probability: 40,
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("create status")
        .into_inner();
    let with_extra = w.try_detail(&rep, &created.id, 0).await.expect("detail");
    assert!(status_ids(&with_extra.pipeline_statuses).contains(&extra.id));
    assert_eq!(with_extra.pipeline_statuses, w.live_statuses(&rep).await);
    w.statuses
        .delete_status(authed(
            &admin,
            spb::DeleteStatusRequest {
                id: extra.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("delete status");
    // Renaming the current status shows the new name now (R7: history keeps the old one).
    w.statuses
        .update_status(authed(
            &admin,
            spb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(spb::OpportunityStatus {
                    id: WON.to_owned(),
                    display_name: "Won".to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".to_owned()],
                }),
            },
        ))
        .await
        .expect("rename the WON status");

    let detail = w.try_detail(&rep, &created.id, 0).await.expect("detail");
    let shown = detail.customer.expect("the customer");
    assert!(shown.archived, "the archived customer is shown, archived");
    assert_eq!(shown, w.get_customer(&rep, &customer.id).await);
    assert_eq!(
        status_ids(&detail.pipeline_statuses),
        SHIPPED_STATUSES.to_vec()
    );
    assert_eq!(detail.current_status.expect("current").display_name, "Won");
    let last = detail.status_history.last().expect("history");
    assert_eq!(
        last.to_status.as_ref().expect("to").display_name,
        "Closed won"
    );
}

// ---------------------------------------------------------------------------------------
// GetCustomerOverview
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn customer_overview_has_customer_opportunities_statuses_and_totals() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();

    let overview = w
        .try_overview(&rep, &book.c1.id, 0, "")
        .await
        .expect("overview");
    assert_eq!(
        overview.customer.as_ref(),
        Some(&w.get_customer(&rep, &book.c1.id).await)
    );
    assert_eq!(overview.statuses, w.live_statuses(&rep).await);
    assert_eq!(status_ids(&overview.statuses), SHIPPED_STATUSES.to_vec());
    // rep-a1 sees their three opportunities with C1, most recently updated first, exactly as
    // ListOpportunities gives them.
    let listed = w
        .list(
            &rep,
            opb::ListOpportunitiesRequest {
                customer_id: book.c1.id.clone(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        overview.opportunities.settled(),
        listed.opportunities.settled()
    );
    assert_eq!(
        id_set(ids(&overview.opportunities).iter().map(String::as_str)),
        id_set([
            book.o1.id.as_str(),
            book.o3.id.as_str(),
            book.o5.id.as_str()
        ])
    );
    let updated: Vec<(i64, i32)> = overview
        .opportunities
        .iter()
        .map(|o| {
            let t = o.update_time.as_ref().expect("update time");
            (t.seconds, t.nanos)
        })
        .collect();
    assert!(updated.windows(2).all(|pair| pair[0] >= pair[1]));
    assert!(overview.next_page_token.is_empty());
    // Open totals: Interested 100,000 at 10% + Quotation 1,000,000 at 50%; LOST left out.
    assert_eq!(
        overview.pipeline_totals,
        vec![total("THB", 2, (1_100_000, 0), (510_000, 0))]
    );
    // Per status: as GetPipelineSummary gives them for this customer and caller.
    let summary = w
        .summary(
            &rep,
            opb::GetPipelineSummaryRequest {
                customer_id: book.c1.id.clone(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(overview.pipeline_by_status, summary.by_status);
    let by_status: BTreeMap<&str, &Vec<opb::CurrencyTotal>> = overview
        .pipeline_by_status
        .iter()
        .map(|s| (s.status_id.as_str(), &s.totals))
        .collect();
    assert_eq!(
        overview
            .pipeline_by_status
            .iter()
            .map(|s| s.status_id.as_str())
            .collect::<Vec<_>>(),
        SHIPPED_STATUSES.to_vec()
    );
    assert_eq!(by_status[LOST], &vec![total("THB", 1, (50_000, 0), (0, 0))]);
    assert!(by_status[PRESENTED].is_empty(), "rep-a2's is not rep-a1's");

    // The manager of the team sees rep-a2's too; the admin sees rep-b1's in USD as well.
    let manager = w
        .try_overview(&manager_token(), &book.c1.id, 0, "")
        .await
        .expect("overview");
    assert_eq!(
        id_set(ids(&manager.opportunities).iter().map(String::as_str)),
        id_set([
            book.o1.id.as_str(),
            book.o3.id.as_str(),
            book.o5.id.as_str(),
            book.a2.id.as_str()
        ])
    );
    assert_eq!(
        manager.pipeline_totals,
        vec![total("THB", 3, (1_170_000, 0), (524_000, 0))]
    );
    let admin = w
        .try_overview(&admin_token(), &book.c1.id, 0, "")
        .await
        .expect("overview");
    assert_eq!(admin.opportunities.len(), 5);
    assert!(ids(&admin.opportunities).contains(&book.b1.id));
    assert_eq!(
        admin.pipeline_totals,
        vec![
            total("THB", 3, (1_170_000, 0), (524_000, 0)),
            total("USD", 1, (1_000, 0), (100, 0)),
        ],
        "one total per currency, ordered by currency code, never converted"
    );

    // The other customer: USD at 10% with nanos, and a WON one that is not open.
    let c2 = w
        .try_overview(&rep, &book.c2.id, 0, "")
        .await
        .expect("overview");
    assert_eq!(
        id_set(ids(&c2.opportunities).iter().map(String::as_str)),
        id_set([book.o2.id.as_str(), book.o4.id.as_str()])
    );
    assert_eq!(
        c2.pipeline_totals,
        vec![total("USD", 1, (2_500, 500_000_000), (250, 50_000_000))]
    );

    // A rep of another team: the customer (a shared directory), only their own opportunity.
    let other = w
        .try_overview(&rep_b_token(), &book.c1.id, 0, "")
        .await
        .expect("overview");
    assert_eq!(other.customer.expect("customer").id, book.c1.id);
    assert_eq!(ids(&other.opportunities), vec![book.b1.id.clone()]);
    assert_eq!(
        other.pipeline_totals,
        vec![total("USD", 1, (1_000, 0), (100, 0))]
    );

    // A customer without opportunities: empty lists, every status with empty totals.
    let lonely = w.customer(&rep, "Nobody Yet").await;
    let empty = w
        .try_overview(&rep, &lonely.id, 0, "")
        .await
        .expect("overview");
    assert!(empty.opportunities.is_empty());
    assert!(empty.pipeline_totals.is_empty());
    assert_eq!(empty.pipeline_by_status.len(), 7);
    assert!(empty.pipeline_by_status.iter().all(|s| s.totals.is_empty()));
}

#[tokio::test]
async fn customer_overview_pages_opportunities() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let admin = admin_token();
    let all = w
        .list(
            &admin,
            opb::ListOpportunitiesRequest {
                customer_id: book.c1.id.clone(),
                page_size: 500,
                ..Default::default()
            },
        )
        .await
        .opportunities;
    assert_eq!(all.len(), 5);

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = w
            .try_overview(&admin, &book.c1.id, 2, &token)
            .await
            .expect("overview page");
        pages += 1;
        assert!(page.opportunities.len() <= 2);
        // Totals and statuses cover every page, whichever page this is.
        assert_eq!(
            page.pipeline_totals,
            vec![
                total("THB", 3, (1_170_000, 0), (524_000, 0)),
                total("USD", 1, (1_000, 0), (100, 0)),
            ]
        );
        assert_eq!(status_ids(&page.statuses), SHIPPED_STATUSES.to_vec());
        seen.extend(page.opportunities);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "the pages never end");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen.settled(),
        all.settled(),
        "the pages together are the list, in order"
    );
}

// ---------------------------------------------------------------------------------------
// GetSalespersonPipeline
// ---------------------------------------------------------------------------------------

/// Checks rep-a1's board against the book and against the services.
async fn check_board(
    w: &mut World,
    book: &Book,
    caller: &str,
    board: &gpb::GetSalespersonPipelineResponse,
) {
    let person = board.salesperson.as_ref().expect("the salesperson");
    assert_eq!(person.id, REP_A1);
    assert_eq!(person.display_name, "Somchai Rep");
    assert_eq!(person.team, "north");

    let statuses = w.live_statuses(caller).await;
    assert_eq!(
        board
            .stages
            .iter()
            .map(|s| s.status.clone().expect("status"))
            .collect::<Vec<_>>(),
        statuses,
        "one stage per live status, in pipeline order"
    );
    assert_eq!(
        board
            .stages
            .iter()
            .map(|s| s.status.as_ref().expect("status").id.as_str())
            .collect::<Vec<_>>(),
        SHIPPED_STATUSES.to_vec()
    );
    let names: BTreeMap<&str, &str> = [
        (book.c1.id.as_str(), "บริษัท หนึ่ง จำกัด"),
        (book.c2.id.as_str(), "Two Trading Co., Ltd."),
    ]
    .into_iter()
    .collect();
    let expected: BTreeMap<&str, (Vec<&opb::Opportunity>, Vec<opb::CurrencyTotal>)> = [
        (
            INTERESTED,
            (
                vec![&book.o1, &book.o2],
                vec![
                    total("THB", 1, (100_000, 0), (10_000, 0)),
                    total("USD", 1, (2_500, 500_000_000), (250, 50_000_000)),
                ],
            ),
        ),
        (PRESENTED, (vec![], vec![])),
        (SENT_EMAIL, (vec![], vec![])),
        (
            QUOTATION,
            (
                vec![&book.o3],
                vec![total("THB", 1, (1_000_000, 0), (500_000, 0))],
            ),
        ),
        (CONSIDERING, (vec![], vec![])),
        (
            WON,
            (
                vec![&book.o4],
                vec![total("THB", 1, (400_000, 0), (400_000, 0))],
            ),
        ),
        (
            LOST,
            (vec![&book.o5], vec![total("THB", 1, (50_000, 0), (0, 0))]),
        ),
    ]
    .into_iter()
    .collect();
    for stage in &board.stages {
        let status_id = stage.status.as_ref().expect("status").id.as_str();
        let (opportunities, totals) = &expected[status_id];
        assert_eq!(&stage.totals, totals, "totals of {status_id}");
        assert!(!stage.more_opportunities, "{status_id} lists every one");
        let mut listed: Vec<&opb::Opportunity> = stage
            .opportunities
            .iter()
            .map(|item| item.opportunity.as_ref().expect("opportunity"))
            .collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        let mut wanted = opportunities.clone();
        wanted.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            listed.iter().map(|o| o.settled()).collect::<Vec<_>>(),
            wanted.iter().map(|o| o.settled()).collect::<Vec<_>>(),
            "opportunities of {status_id}"
        );
        for item in &stage.opportunities {
            let o = item.opportunity.as_ref().expect("opportunity");
            assert_eq!(o.status_id, status_id);
            assert_eq!(
                item.customer_display_name,
                names[o.customer_id.as_str()],
                "customer name of {}",
                o.title
            );
        }
    }
    // Stage totals are GetPipelineSummary's for the salesperson.
    let summary = w
        .summary(
            caller,
            opb::GetPipelineSummaryRequest {
                owner_ids: vec![REP_A1.to_owned()],
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        board.stages.len(),
        summary.by_status.len(),
        "one stage per status of the summary"
    );
    for (stage, sum) in board.stages.iter().zip(&summary.by_status) {
        assert_eq!(stage.status.as_ref().expect("status").id, sum.status_id);
        assert_eq!(stage.totals, sum.totals);
    }
}

#[tokio::test]
async fn salesperson_pipeline_groups_by_status_in_pipeline_order() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();
    // The rep's own board (empty id: the caller), the same by id, the team manager's view
    // and the admin's: all the same board.
    let own = w.board_of(&rep, "", 0).await;
    check_board(&mut w, &book, &rep, &own).await;
    let by_id = w.board_of(&rep, REP_A1, 0).await;
    assert_eq!(by_id.settled(), own.settled());
    let manager = manager_token();
    let managed = w.board_of(&manager, REP_A1, 0).await;
    check_board(&mut w, &book, &manager, &managed).await;
    assert_eq!(managed.settled(), own.settled());
    let admin = admin_token();
    let admin_view = w.board_of(&admin, REP_A1, 0).await;
    check_board(&mut w, &book, &admin, &admin_view).await;
    assert_eq!(admin_view.settled(), own.settled());

    // The board shows a customer's current name.
    w.rename_customer(&rep, &book.c2.id, "Two Trading (Thailand) Co., Ltd.")
        .await;
    let renamed = w.board_of(&rep, "", 0).await;
    let names: BTreeSet<String> = renamed
        .stages
        .iter()
        .flat_map(|s| s.opportunities.iter())
        .filter(|item| item.opportunity.as_ref().expect("o").customer_id == book.c2.id)
        .map(|item| item.customer_display_name.clone())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["Two Trading (Thailand) Co., Ltd.".to_owned()])
    );

    // rep-a2's board: their one opportunity, in Presented.
    let a2 = w.board_of(&rep_a2_token(), "", 0).await;
    let listed: Vec<(String, String)> = a2
        .stages
        .iter()
        .flat_map(|s| {
            s.opportunities.iter().map(|item| {
                (
                    s.status.as_ref().expect("status").id.clone(),
                    item.opportunity.as_ref().expect("o").id.clone(),
                )
            })
        })
        .collect();
    assert_eq!(listed, vec![(PRESENTED.to_owned(), book.a2.id.clone())]);
}

#[tokio::test]
async fn salesperson_pipeline_says_when_a_stage_holds_more() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();
    // A third one in Interested, with C2.
    w.opportunity(
        &rep,
        &book.c2.id,
        "Shelving",
        money("THB", 20_000, 0),
        None,
        None,
    )
    .await;
    let interested_totals = vec![
        total("THB", 2, (120_000, 0), (12_000, 0)),
        total("USD", 1, (2_500, 500_000_000), (250, 50_000_000)),
    ];
    for (per_stage, listed, more) in [(1, 1, true), (2, 2, true), (3, 3, false), (0, 3, false)] {
        let board = w.board_of(&rep, "", per_stage).await;
        let interested = &board.stages[0];
        assert_eq!(interested.status.as_ref().expect("status").id, INTERESTED);
        assert_eq!(
            interested.opportunities.len(),
            listed,
            "per stage {per_stage}"
        );
        assert_eq!(interested.more_opportunities, more, "per stage {per_stage}");
        assert_eq!(
            interested.totals, interested_totals,
            "totals cover the whole stage (per stage {per_stage})"
        );
        for stage in &board.stages[1..] {
            assert!(stage.opportunities.len() <= 1);
            assert!(
                !stage.more_opportunities,
                "a stage of at most one never has more (per stage {per_stage})"
            );
        }
        // Every listed one carries its customer's name.
        assert!(
            board
                .stages
                .iter()
                .flat_map(|s| s.opportunities.iter())
                .all(|item| !item.customer_display_name.is_empty())
        );
    }
    // What the stage holds beyond the listed ones is found with ListOpportunities filtered
    // by owner and status.
    let board = w.board_of(&rep, "", 1).await;
    let rest = w
        .list(
            &rep,
            opb::ListOpportunitiesRequest {
                owner_ids: vec![REP_A1.to_owned()],
                status_ids: vec![INTERESTED.to_owned()],
                ..Default::default()
            },
        )
        .await;
    assert_eq!(rest.opportunities.len(), 3);
    let first = board.stages[0].opportunities[0]
        .opportunity
        .as_ref()
        .expect("o");
    assert!(ids(&rest.opportunities).contains(&first.id));
}

#[tokio::test]
async fn salesperson_pipeline_lists_a_stage_soonest_close_date_first() {
    let mut w = World::new().await;
    let rep = rep_token();
    let customer = w.customer(&rep, "Order Co.").await;
    // Created in close-date order, so that the most recently updated comes last by date.
    let mut wanted = Vec::new();
    for (title, close) in [
        ("first to close", Some(day(2031, 1, 10))),
        ("second to close", Some(day(2031, 2, 10))),
        ("third to close", Some(day(2031, 3, 10))),
        ("no date", None),
    ] {
        let o = w
            .opportunity(
                &rep,
                &customer.id,
                title,
                money("THB", 1_000, 0),
                close,
                None,
            )
            .await;
        wanted.push(o.id);
    }
    let board = w.board_of(&rep, "", 0).await;
    let listed: Vec<String> = board.stages[0]
        .opportunities
        .iter()
        .map(|item| item.opportunity.as_ref().expect("o").id.clone())
        .collect();
    assert_eq!(
        listed, wanted,
        "soonest expected close date first, those without one last"
    );
    // A page of one holds the soonest one.
    let first = w.board_of(&rep, "", 1).await;
    assert_eq!(
        first.stages[0].opportunities[0]
            .opportunity
            .as_ref()
            .expect("o")
            .id,
        wanted[0]
    );
}

#[tokio::test]
async fn salesperson_pipeline_filters_by_expected_close_date() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();
    // January 2031: only o2 (USD); o1 closes in March; the others have no date.
    let board = w
        .try_board(
            &rep,
            gpb::GetSalespersonPipelineRequest {
                expected_close_date_from: Some(day(2031, 1, 1)),
                expected_close_date_to: Some(day(2031, 1, 31)),
                ..Default::default()
            },
        )
        .await
        .expect("board");
    assert_eq!(board.stages.len(), 7);
    for stage in &board.stages {
        let status_id = stage.status.as_ref().expect("status").id.as_str();
        if status_id == INTERESTED {
            assert_eq!(
                stage
                    .opportunities
                    .iter()
                    .map(|item| item.opportunity.as_ref().expect("o").id.clone())
                    .collect::<Vec<_>>(),
                vec![book.o2.id.clone()]
            );
            assert_eq!(
                stage.opportunities[0].customer_display_name,
                "Two Trading Co., Ltd."
            );
            assert_eq!(
                stage.totals,
                vec![total("USD", 1, (2_500, 500_000_000), (250, 50_000_000))]
            );
        } else {
            assert!(stage.opportunities.is_empty(), "{status_id}");
            assert!(stage.totals.is_empty(), "{status_id}");
        }
    }
    // From March on: o1 only.
    let march = w
        .try_board(
            &rep,
            gpb::GetSalespersonPipelineRequest {
                expected_close_date_from: Some(day(2031, 3, 1)),
                ..Default::default()
            },
        )
        .await
        .expect("board");
    let listed: Vec<String> = march
        .stages
        .iter()
        .flat_map(|s| s.opportunities.iter())
        .map(|item| item.opportunity.as_ref().expect("o").id.clone())
        .collect();
    assert_eq!(listed, vec![book.o1.id.clone()]);
    assert_eq!(
        march.stages[0].totals,
        vec![total("THB", 1, (100_000, 0), (10_000, 0))]
    );
}

#[tokio::test]
async fn salesperson_pipeline_follows_the_configured_order() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let admin = admin_token();
    let order = [
        QUOTATION,
        INTERESTED,
        SENT_EMAIL,
        PRESENTED,
        CONSIDERING,
        WON,
        LOST,
    ];
    w.statuses
        .reorder_statuses(authed(
            &admin,
            spb::ReorderStatusesRequest {
                request_id: String::new(),
                status_ids: order.iter().map(|s| (*s).to_owned()).collect(),
            },
        ))
        .await
        .expect("reorder statuses");
    let board = w.board_of(&rep_token(), "", 0).await;
    assert_eq!(
        board
            .stages
            .iter()
            .map(|s| s.status.as_ref().expect("status").id.as_str())
            .collect::<Vec<_>>(),
        order.to_vec()
    );
    assert_eq!(
        board.stages[0].totals,
        vec![total("THB", 1, (1_000_000, 0), (500_000, 0))]
    );
    assert_eq!(
        board.stages[0].opportunities[0]
            .opportunity
            .as_ref()
            .expect("o")
            .id,
        book.o3.id
    );
    // The detail screen's stage bar follows the same order.
    let detail = w
        .try_detail(&rep_token(), &book.o1.id, 0)
        .await
        .expect("detail");
    assert_eq!(status_ids(&detail.pipeline_statuses), order.to_vec());
}

// ---------------------------------------------------------------------------------------
// Permission, authentication, not found, invalid arguments
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn opportunity_with_history_refuses_as_the_opportunity_service_does() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    // Reps of the same and of another team, a manager of another team; an unknown id for a
    // rep (AIP-211: PERMISSION_DENIED, not NOT_FOUND).
    let cases = [
        (rep_a2_token(), book.o1.id.clone(), "a rep of the same team"),
        (rep_b_token(), book.o1.id.clone(), "a rep of another team"),
        (
            manager_b_token(),
            book.o1.id.clone(),
            "a manager of another team",
        ),
        (
            rep_token(),
            book.b1.id.clone(),
            "rep-a1 asking for rep-b1's",
        ),
        (
            rep_token(),
            UNKNOWN.to_owned(),
            "a rep asking for an unknown id",
        ),
    ];
    for (caller, id, what) in cases {
        let direct = w.try_get(&caller, &id).await.expect_err(what);
        assert_eq!(direct.code(), Code::PermissionDenied, "{what}");
        let combined = expect_code(w.try_detail(&caller, &id, 0).await, Code::PermissionDenied);
        assert_same_answer(&combined, &direct, what);
    }
    // Those who may see it get it.
    for caller in [rep_token(), manager_token(), admin_token()] {
        let detail = w.try_detail(&caller, &book.o1.id, 0).await.expect("detail");
        assert_eq!(detail.opportunity.expect("o").id, book.o1.id);
    }
}

#[tokio::test]
async fn salesperson_pipeline_is_refused_to_who_may_not_follow_them() {
    let mut w = World::new().await;
    Book::seed(&mut w).await;
    for (caller, what) in [
        (rep_a2_token(), "a rep of the same team"),
        (rep_b_token(), "a rep of another team"),
        (manager_b_token(), "a manager of another team"),
    ] {
        let status = expect_code(
            w.try_board(
                &caller,
                gpb::GetSalespersonPipelineRequest {
                    salesperson_id: REP_A1.to_owned(),
                    ..Default::default()
                },
            )
            .await,
            Code::PermissionDenied,
        );
        assert!(!status.message().is_empty(), "{what}");
    }
    // rep-a1 asking for rep-a2's (recorded when they created their opportunity).
    expect_code(
        w.try_board(
            &rep_token(),
            gpb::GetSalespersonPipelineRequest {
                salesperson_id: REP_A2.to_owned(),
                ..Default::default()
            },
        )
        .await,
        Code::PermissionDenied,
    );
    // The manager of the team and the admin may.
    for caller in [manager_token(), admin_token()] {
        let board = w.board_of(&caller, REP_A1, 0).await;
        assert_eq!(board.salesperson.expect("salesperson").id, REP_A1);
        assert_eq!(
            board
                .stages
                .iter()
                .map(|s| s.opportunities.len())
                .sum::<usize>(),
            5
        );
        let other = w.board_of(&caller, REP_A2, 0).await;
        assert_eq!(other.salesperson.expect("salesperson").id, REP_A2);
    }
}

#[tokio::test]
async fn combined_calls_need_a_valid_token_and_a_sales_role() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let foreign = salesopp_kit::auth::mint_hs256(
        b"another-secret-entirely-0123456789",
        &salesopp_kit::auth::TokenRequest {
            sub: REP_A1.to_owned(),
            name: "Somchai Rep".to_owned(),
            team: "north".to_owned(),
            roles: vec!["sales_rep".to_owned()],
            ttl_seconds: 600,
            issuer: None,
            audience: None,
        },
    )
    .expect("mint");
    let detail = gpb::GetOpportunityWithHistoryRequest {
        opportunity_id: book.o1.id.clone(),
        history_page_size: 0,
    };
    let overview = gpb::GetCustomerOverviewRequest {
        customer_id: book.c1.id.clone(),
        ..Default::default()
    };
    let board = gpb::GetSalespersonPipelineRequest {
        salesperson_id: REP_A1.to_owned(),
        ..Default::default()
    };
    // No token.
    expect_code(
        w.gateway
            .get_opportunity_with_history(anonymous(detail.clone()))
            .await,
        Code::Unauthenticated,
    );
    expect_code(
        w.gateway
            .get_customer_overview(anonymous(overview.clone()))
            .await,
        Code::Unauthenticated,
    );
    expect_code(
        w.gateway
            .get_salesperson_pipeline(anonymous(board.clone()))
            .await,
        Code::Unauthenticated,
    );
    // A malformed token and one signed with another secret.
    for bad in ["not-a-token".to_owned(), foreign] {
        expect_code(
            w.gateway
                .get_opportunity_with_history(authed(&bad, detail.clone()))
                .await,
            Code::Unauthenticated,
        );
        expect_code(
            w.gateway
                .get_customer_overview(authed(&bad, overview.clone()))
                .await,
            Code::Unauthenticated,
        );
        expect_code(
            w.gateway
                .get_salesperson_pipeline(authed(&bad, board.clone()))
                .await,
            Code::Unauthenticated,
        );
    }
    // A valid token without a sales role.
    let no_role = token("robot-1", "Robot", "north", &[]);
    expect_code(
        w.gateway
            .get_opportunity_with_history(authed(&no_role, detail))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        w.gateway
            .get_customer_overview(authed(&no_role, overview))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        w.gateway
            .get_salesperson_pipeline(authed(&no_role, board))
            .await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let mut w = World::new().await;
    Book::seed(&mut w).await;
    let admin = admin_token();
    // An admin sees everything, so an unknown opportunity is NOT_FOUND: the same answer as
    // GetOpportunity's.
    let direct = w.try_get(&admin, UNKNOWN).await.expect_err("unknown");
    assert_eq!(direct.code(), Code::NotFound);
    let combined = expect_code(w.try_detail(&admin, UNKNOWN, 0).await, Code::NotFound);
    assert_same_answer(&combined, &direct, "unknown opportunity");
    // An unknown customer, for any sales role (customers are a shared directory).
    for caller in [admin.clone(), manager_token(), rep_token()] {
        let status = expect_code(
            w.try_overview(&caller, UNKNOWN, 0, "").await,
            Code::NotFound,
        );
        let direct = w
            .customers
            .get_customer(authed(
                &caller,
                cpb::GetCustomerRequest {
                    id: UNKNOWN.to_owned(),
                },
            ))
            .await
            .expect_err("unknown customer");
        assert_same_answer(&status, &direct, "unknown customer");
    }
    // An unknown salesperson.
    for caller in [admin, manager_token()] {
        let status = expect_code(
            w.try_board(
                &caller,
                gpb::GetSalespersonPipelineRequest {
                    salesperson_id: "nobody-ever".to_owned(),
                    ..Default::default()
                },
            )
            .await,
            Code::NotFound,
        );
        assert!(
            status.message().contains("nobody-ever"),
            "the message names the id: {status:?}"
        );
    }
}

#[tokio::test]
async fn bad_arguments_name_the_field() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();
    for bad in ["", "not-a-uuid", "00000000-0000-4000-8000-00000000000Z"] {
        expect_invalid(w.try_detail(&rep, bad, 0).await, "opportunity_id");
        expect_invalid(w.try_overview(&rep, bad, 0, "").await, "customer_id");
    }
    expect_invalid(
        w.try_detail(&rep, &book.o1.id, -1).await,
        "history_page_size",
    );
    expect_invalid(w.try_overview(&rep, &book.c1.id, -1, "").await, "page_size");
    expect_invalid(
        w.try_overview(&rep, &book.c1.id, 0, "garbage-token").await,
        "page_token",
    );
    expect_invalid(
        w.try_board(
            &rep,
            gpb::GetSalespersonPipelineRequest {
                opportunities_per_stage: -1,
                ..Default::default()
            },
        )
        .await,
        "opportunities_per_stage",
    );
    expect_invalid(
        w.try_board(
            &rep,
            gpb::GetSalespersonPipelineRequest {
                expected_close_date_from: Some(day(2031, 13, 1)),
                ..Default::default()
            },
        )
        .await,
        "expected_close_date_from",
    );
    expect_invalid(
        w.try_board(
            &rep,
            gpb::GetSalespersonPipelineRequest {
                expected_close_date_to: Some(day(2031, 2, 30)),
                ..Default::default()
            },
        )
        .await,
        "expected_close_date_to",
    );
}

// ---------------------------------------------------------------------------------------
// A gateway of its own, pointed at chosen endpoints
// ---------------------------------------------------------------------------------------

/// A gateway-only process (no database), as `salesopp serve --service gateway` runs it.
struct GatewayOnly {
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl GatewayOnly {
    async fn start(endpoints: Endpoints) -> GatewayOnly {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, stop) = oneshot::channel::<()>();
        let config = ServeConfig {
            pools: None,
            auth: Authenticator::hs256(SECRET.as_bytes(), None, None),
            services: vec![ServiceKind::Gateway],
            gateway_endpoints: Some(endpoints),
            gateway_resolve_interval: salesopp_gateway::balance::DEFAULT_RESOLVE_INTERVAL,
            grace: Duration::from_secs(1),
            health_interval: Duration::from_millis(100),
            metrics_listener: None,
            streams: Default::default(),
            retention: Default::default(),
            stale_interval: None,
        };
        let server = tokio::spawn(salesopp::serve(config, listener, async move {
            let _ = stop.await;
        }));
        GatewayOnly {
            url,
            shutdown: Some(shutdown),
            server,
        }
    }

    async fn client(&self) -> Gateway {
        // The listener is bound before the server task runs: a connection waits in its
        // backlog until the server takes it.
        let channel = Channel::from_shared(self.url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the gateway");
        GatewayServiceClient::new(channel)
    }
}

impl Drop for GatewayOnly {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

/// A URL where nothing listens (a port just bound and released).
async fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[track_caller]
fn assert_unavailable(status: &Status, part: &str, what: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status.message().contains(part),
        "{what}: the message names the {part}: {status:?}"
    );
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{what}: an ErrorInfo: {status:?}"));
    assert_eq!(info.reason, "DOWNSTREAM_UNAVAILABLE", "{what}");
    assert_eq!(info.domain, "gateway.salesopp.io", "{what}");
    assert_eq!(
        info.metadata.get("part").map(String::as_str),
        Some(part),
        "{what}"
    );
}

#[tokio::test]
async fn a_downstream_service_unavailable_is_named() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let up = w.suite.url();
    let down = closed_port_url().await;
    let rep = rep_token();
    let parts = [
        (
            "customer service",
            Endpoints {
                customer: down.clone(),
                opportunity: up.clone(),
                status_config: up.clone(),
            },
        ),
        (
            "opportunity service",
            Endpoints {
                customer: up.clone(),
                opportunity: down.clone(),
                status_config: up.clone(),
            },
        ),
        (
            "status-config service",
            Endpoints {
                customer: up.clone(),
                opportunity: up.clone(),
                status_config: down.clone(),
            },
        ),
    ];
    for (part, endpoints) in parts {
        let gateway = GatewayOnly::start(endpoints).await;
        let mut client = gateway.client().await;
        let status = client
            .get_opportunity_with_history(authed(
                &rep,
                gpb::GetOpportunityWithHistoryRequest {
                    opportunity_id: book.o1.id.clone(),
                    history_page_size: 0,
                },
            ))
            .await
            .expect_err("a part is down");
        assert_unavailable(&status, part, "GetOpportunityWithHistory");
        let status = client
            .get_customer_overview(authed(
                &rep,
                gpb::GetCustomerOverviewRequest {
                    customer_id: book.c1.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a part is down");
        assert_unavailable(&status, part, "GetCustomerOverview");
        let status = client
            .get_salesperson_pipeline(authed(&rep, gpb::GetSalespersonPipelineRequest::default()))
            .await
            .expect_err("a part is down");
        assert_unavailable(&status, part, "GetSalespersonPipeline");
    }
    // With every part up, the gateway-only process answers like the all-in-one one.
    let gateway = GatewayOnly::start(Endpoints {
        customer: up.clone(),
        opportunity: up.clone(),
        status_config: up,
    })
    .await;
    let mut client = gateway.client().await;
    let remote = client
        .get_salesperson_pipeline(authed(&rep, gpb::GetSalespersonPipelineRequest::default()))
        .await
        .expect("board")
        .into_inner();
    assert_eq!(remote.settled(), w.board_of(&rep, "", 0).await.settled());
}

// ---------------------------------------------------------------------------------------
// Fake parts: downstream services a gateway-only process calls, recording what each call
// carries (token, deadline, trace context) and, for the concurrency tests, holding the legs
// of one combined call at a barrier until all of them have arrived.
// ---------------------------------------------------------------------------------------

/// What one downstream call carried.
#[derive(Debug, Clone, Default)]
struct Seen {
    method: &'static str,
    authorization: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    grpc_timeout: Option<String>,
}

/// The customer every fake opportunity belongs to.
const FAKE_CUSTOMER: &str = "6f1c1a8e-0000-4000-8000-00000000c0de";

/// Fake customer, opportunity and status-config services (one value serves all three).
/// Each call records its metadata, then waits at its method's meeting, if any, and answers
/// the smallest message the gateway composes from. ListStatuses answers from the real
/// suite (with the caller's token) when `real` names one, or "forever" (until cancelled)
/// while `slow` is set.
#[derive(Clone, Default)]
struct Parts {
    real: Option<String>,
    slow: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Set when a slow call is dropped before it finished: its caller gave up.
    abandoned: Arc<AtomicBool>,
    /// Each method's barrier: its calls answer once every leg of the meeting has arrived.
    meetings: Arc<Mutex<HashMap<&'static str, Arc<Barrier>>>>,
}

/// The statuses the fake status-config service answers without a real suite: two stages.
fn fake_statuses() -> Vec<spb::OpportunityStatus> {
    [(INTERESTED, "Interested"), (WON, "Closed won")]
        .into_iter()
        .map(|(id, name)| spb::OpportunityStatus {
            id: id.to_owned(),
            display_name: name.to_owned(),
            ..Default::default()
        })
        .collect()
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn header(request: &Request<impl Sized>, key: &str) -> Option<String> {
    request
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Parts {
    /// Parts whose ListStatuses is answered by `suite`.
    fn forwarding_statuses_to(suite: &TestSuite) -> Parts {
        Parts {
            real: Some(suite.url()),
            ..Default::default()
        }
    }

    /// From now on, the calls of each group wait for each other: no call of a group answers
    /// before all of them have arrived (a method named twice waits for two of its calls).
    /// A gateway that made them one after another would wait at the first one forever.
    fn meet(&self, groups: &[&[&'static str]]) {
        let mut meetings = self.meetings.lock().expect("meetings");
        meetings.clear();
        for group in groups {
            let barrier = Arc::new(Barrier::new(group.len()));
            for method in *group {
                meetings.insert(method, barrier.clone());
            }
        }
    }

    /// Records the call, then waits at its meeting, if it has one.
    async fn arrive<T>(&self, method: &'static str, request: &Request<T>) -> Seen {
        let seen = Seen {
            method,
            authorization: header(request, "authorization"),
            traceparent: header(request, "traceparent"),
            tracestate: header(request, "tracestate"),
            grpc_timeout: header(request, "grpc-timeout"),
        };
        self.seen.lock().expect("seen").push(seen.clone());
        let meeting = self.meetings.lock().expect("meetings").get(method).cloned();
        if let Some(barrier) = meeting {
            barrier.wait().await;
        }
        seen
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// The methods called so far, in the order they arrived.
    fn methods(&self) -> Vec<&'static str> {
        self.seen().iter().map(|seen| seen.method).collect()
    }

    /// Serves `routes` (some of these parts) on a port of their own until the returned
    /// sender is dropped, and says where.
    async fn serve(routes: tonic::service::Routes) -> (String, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        (url, stop)
    }
}

/// The calls of a part that no combined call makes: each answers UNIMPLEMENTED. Written as
/// `#[tonic::async_trait]` writes an `async fn` of the trait, since it does not rewrite what a
/// macro in its impl expands to.
macro_rules! not_a_leg {
    ($($method:ident($request:ty) -> $response:ty;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _: Request<$request>,
        ) -> Pin<
            Box<dyn Future<Output = Result<Response<$response>, Status>> + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(Status::unimplemented("not a part of any combined call")) })
        }
    )*};
}

#[tonic::async_trait]
impl StatusConfigService for Parts {
    async fn list_statuses(
        &self,
        request: Request<spb::ListStatusesRequest>,
    ) -> Result<Response<spb::ListStatusesResponse>, Status> {
        let seen = self.arrive("ListStatuses", &request).await;
        if self.slow.load(Ordering::SeqCst) {
            let guard = SetOnDrop(self.abandoned.clone());
            // The slow part under test: it works until its caller gives up.
            tokio::time::sleep(Duration::from_secs(120)).await;
            std::mem::forget(guard);
            return Err(Status::internal("the slow fake finished its work"));
        }
        let Some(real) = &self.real else {
            return Ok(Response::new(spb::ListStatusesResponse {
                statuses: fake_statuses(),
                ..Default::default()
            }));
        };
        let mut real = StatusConfigServiceClient::connect(real.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut forwarded = Request::new(request.into_inner());
        if let Some(authorization) = seen.authorization {
            forwarded
                .metadata_mut()
                .insert("authorization", authorization.parse().expect("ascii token"));
        }
        real.list_statuses(forwarded).await
    }

    not_a_leg! {
        get_status(spb::GetStatusRequest) -> spb::OpportunityStatus;
        create_status(spb::CreateStatusRequest) -> spb::OpportunityStatus;
        update_status(spb::UpdateStatusRequest) -> spb::OpportunityStatus;
        delete_status(spb::DeleteStatusRequest) -> spb::DeleteStatusResponse;
        set_default_status(spb::SetDefaultStatusRequest) -> spb::OpportunityStatus;
        reorder_statuses(spb::ReorderStatusesRequest) -> spb::ReorderStatusesResponse;
    }
}

/// A fake opportunity in `status_id` of [`FAKE_CUSTOMER`].
fn fake_opportunity(id: &str, status_id: &str) -> opb::Opportunity {
    opb::Opportunity {
        id: id.to_owned(),
        customer_id: FAKE_CUSTOMER.to_owned(),
        status_id: status_id.to_owned(),
        title: format!("Fake in {status_id}"),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl OpportunityService for Parts {
    type WatchOpportunityEventsStream =
        tokio_stream::Empty<Result<opb::WatchOpportunityEventsResponse, Status>>;

    async fn get_opportunity(
        &self,
        request: Request<opb::GetOpportunityRequest>,
    ) -> Result<Response<opb::Opportunity>, Status> {
        self.arrive("GetOpportunity", &request).await;
        Ok(Response::new(fake_opportunity(
            &request.get_ref().id,
            INTERESTED,
        )))
    }

    async fn list_status_history(
        &self,
        request: Request<opb::ListStatusHistoryRequest>,
    ) -> Result<Response<opb::ListStatusHistoryResponse>, Status> {
        self.arrive("ListStatusHistory", &request).await;
        Ok(Response::new(opb::ListStatusHistoryResponse {
            status_changes: vec![opb::StatusChange {
                opportunity_id: request.get_ref().opportunity_id.clone(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn list_opportunities(
        &self,
        request: Request<opb::ListOpportunitiesRequest>,
    ) -> Result<Response<opb::ListOpportunitiesResponse>, Status> {
        self.arrive("ListOpportunities", &request).await;
        let status_id = request.get_ref().status_ids.first().cloned();
        Ok(Response::new(opb::ListOpportunitiesResponse {
            opportunities: vec![fake_opportunity(
                &Uuid::new_v4().to_string(),
                &status_id.unwrap_or_default(),
            )],
            ..Default::default()
        }))
    }

    async fn get_pipeline_summary(
        &self,
        request: Request<opb::GetPipelineSummaryRequest>,
    ) -> Result<Response<opb::GetPipelineSummaryResponse>, Status> {
        self.arrive("GetPipelineSummary", &request).await;
        Ok(Response::new(opb::GetPipelineSummaryResponse::default()))
    }

    async fn list_salespeople(
        &self,
        request: Request<opb::ListSalespeopleRequest>,
    ) -> Result<Response<opb::ListSalespeopleResponse>, Status> {
        self.arrive("ListSalespeople", &request).await;
        Ok(Response::new(opb::ListSalespeopleResponse {
            salespeople: request
                .get_ref()
                .ids
                .iter()
                .map(|id| opb::Salesperson {
                    id: id.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }))
    }

    not_a_leg! {
        create_opportunity(opb::CreateOpportunityRequest) -> opb::Opportunity;
        batch_create_opportunities(opb::BatchCreateOpportunitiesRequest)
            -> opb::BatchCreateOpportunitiesResponse;
        batch_change_opportunity_status(opb::BatchChangeOpportunityStatusRequest)
            -> opb::BatchChangeOpportunityStatusResponse;
        update_opportunity(opb::UpdateOpportunityRequest) -> opb::Opportunity;
        change_opportunity_status(opb::ChangeOpportunityStatusRequest)
            -> opb::ChangeOpportunityStatusResponse;
        watch_opportunity_events(opb::WatchOpportunityEventsRequest)
            -> Self::WatchOpportunityEventsStream;
        get_pipeline_velocity(opb::GetPipelineVelocityRequest)
            -> opb::GetPipelineVelocityResponse;
        list_opportunity_changes(opb::ListOpportunityChangesRequest)
            -> opb::ListOpportunityChangesResponse;
        get_forecast_summary(opb::GetForecastSummaryRequest)
            -> opb::GetForecastSummaryResponse;
    }
}

/// A fake customer with the id asked for.
fn fake_customer(id: &str) -> cpb::Customer {
    cpb::Customer {
        id: id.to_owned(),
        display_name: format!("Customer {id}"),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl CustomerService for Parts {
    async fn get_customer(
        &self,
        request: Request<cpb::GetCustomerRequest>,
    ) -> Result<Response<cpb::Customer>, Status> {
        self.arrive("GetCustomer", &request).await;
        Ok(Response::new(fake_customer(&request.get_ref().id)))
    }

    async fn list_customers(
        &self,
        request: Request<cpb::ListCustomersRequest>,
    ) -> Result<Response<cpb::ListCustomersResponse>, Status> {
        self.arrive("ListCustomers", &request).await;
        Ok(Response::new(cpb::ListCustomersResponse {
            customers: request
                .get_ref()
                .ids
                .iter()
                .map(|id| fake_customer(id))
                .collect(),
            ..Default::default()
        }))
    }

    not_a_leg! {
        create_customer(cpb::CreateCustomerRequest) -> cpb::Customer;
        batch_create_customers(cpb::BatchCreateCustomersRequest)
            -> cpb::BatchCreateCustomersResponse;
        update_customer(cpb::UpdateCustomerRequest) -> cpb::Customer;
        delete_customer(cpb::DeleteCustomerRequest) -> cpb::Customer;
    }
}

/// Fake parts and a gateway-only process that uses them.
struct WithParts {
    parts: Parts,
    gateway: GatewayOnly,
    _stop_parts: oneshot::Sender<()>,
}

impl WithParts {
    /// The fake status-config service (answered from `suite`) and the suite for the rest.
    async fn statuses_only(suite: &TestSuite) -> WithParts {
        let parts = Parts::forwarding_statuses_to(suite);
        let (url, stop) = Parts::serve(tonic::service::Routes::new(
            StatusConfigServiceServer::new(parts.clone()),
        ))
        .await;
        let gateway = GatewayOnly::start(Endpoints {
            customer: suite.url(),
            opportunity: suite.url(),
            status_config: url,
        })
        .await;
        WithParts {
            parts,
            gateway,
            _stop_parts: stop,
        }
    }

    /// Every part fake: no suite, no database.
    async fn all() -> WithParts {
        let parts = Parts::default();
        let (url, stop) = Parts::serve(
            tonic::service::Routes::new(StatusConfigServiceServer::new(parts.clone()))
                .add_service(CustomerServiceServer::new(parts.clone()))
                .add_service(OpportunityServiceServer::new(parts.clone())),
        )
        .await;
        let gateway = GatewayOnly::start(Endpoints {
            customer: url.clone(),
            opportunity: url.clone(),
            status_config: url,
        })
        .await;
        WithParts {
            parts,
            gateway,
            _stop_parts: stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.parts.seen()
    }
}

/// Parses a `grpc-timeout` value.
fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().expect("grpc-timeout digits");
    match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        other => panic!("grpc-timeout unit {other:?}"),
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "salesopp=t61rcWkgMzE";

#[tokio::test]
async fn the_callers_token_deadline_and_trace_context_go_downstream() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let with_parts = WithParts::statuses_only(&w.suite).await;
    let mut client = with_parts.gateway.client().await;
    let rep = rep_token();

    // With a deadline and a trace context.
    let mut request = authed_with(
        &rep,
        gpb::GetOpportunityWithHistoryRequest {
            opportunity_id: book.o1.id.clone(),
            history_page_size: 0,
        },
        &[("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)],
    );
    request.set_timeout(Duration::from_secs(30));
    let detail = client
        .get_opportunity_with_history(request)
        .await
        .expect("detail through the fake")
        .into_inner();
    assert_eq!(
        status_ids(&detail.pipeline_statuses),
        SHIPPED_STATUSES.to_vec()
    );
    assert_eq!(detail.opportunity.expect("o").id, book.o1.id);
    let seen = with_parts.seen();
    assert_eq!(seen.len(), 1, "one ListStatuses call: {seen:?}");
    let seen = &seen[0];
    assert_eq!(
        seen.authorization.as_deref(),
        Some(format!("Bearer {rep}").as_str()),
        "the caller's token, not the gateway's"
    );
    // The caller's trace and flags, with the gateway's call as the parent: its span id, not
    // the caller's (no OpenTelemetry layer in this process: the call's own id).
    let traceparent = seen
        .traceparent
        .as_deref()
        .expect("a traceparent downstream");
    let parts: Vec<&str> = traceparent.split('-').collect();
    let callers: Vec<&str> = TRACEPARENT.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        (callers[0], callers[1], callers[3]),
        "{traceparent}"
    );
    assert_ne!(
        parts[2], callers[2],
        "the gateway's span is the parent: {traceparent}"
    );
    assert_eq!(seen.tracestate.as_deref(), Some(TRACESTATE));
    let remaining = grpc_timeout(seen.grpc_timeout.as_deref().expect("a forwarded deadline"));
    assert!(
        remaining > Duration::ZERO && remaining <= Duration::from_secs(30),
        "the remaining time of the caller's deadline: {remaining:?}"
    );

    // Without a deadline or trace context: none invented.
    let board = client
        .get_salesperson_pipeline(authed(&rep, gpb::GetSalespersonPipelineRequest::default()))
        .await
        .expect("board through the fake")
        .into_inner();
    assert_eq!(board.settled(), w.board_of(&rep, "", 0).await.settled());
    let seen = with_parts.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].grpc_timeout, None);
    assert_eq!(seen[1].traceparent, None);
    assert_eq!(seen[1].tracestate, None);
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some(format!("Bearer {rep}").as_str())
    );
}

/// Whether a failed call's status came over the wire (a server's answer: it carries the
/// response's headers as metadata) rather than from the client's own deadline timer.
fn from_the_wire(status: &Status) -> bool {
    status.metadata().get("content-type").is_some()
}

/// What tonic's client reports when its own timer for the call's deadline fires first:
/// CANCELLED "Timeout expired", made locally (no response headers).
fn is_client_deadline(status: &Status) -> bool {
    status.code() == Code::Cancelled
        && status.message() == "Timeout expired"
        && !from_the_wire(status)
}

#[tokio::test]
async fn a_deadline_shorter_than_a_slow_part_ends_the_call_and_the_part() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let with_parts = WithParts::statuses_only(&w.suite).await;
    with_parts.parts.slow.store(true, Ordering::SeqCst);
    let mut client = with_parts.gateway.client().await;

    let mut request = authed(
        &rep_token(),
        gpb::GetCustomerOverviewRequest {
            customer_id: book.c1.id.clone(),
            ..Default::default()
        },
    );
    request.set_timeout(Duration::from_millis(300));
    // The status-config part would take two minutes; the caller gives 300 ms.
    let status = tokio::time::timeout(PATIENCE, client.get_customer_overview(request))
        .await
        .expect("the call ends with its deadline, not with the slow part")
        .expect_err("the deadline passes first");
    assert!(
        status.code() == Code::DeadlineExceeded || is_client_deadline(&status),
        "a deadline error: {status:?}"
    );
    // The part got the caller's remaining time, not more.
    let seen = with_parts.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let forwarded = grpc_timeout(
        seen[0]
            .grpc_timeout
            .as_deref()
            .expect("a forwarded deadline"),
    );
    assert!(
        forwarded <= Duration::from_millis(300),
        "the forwarded deadline is within the caller's: {forwarded:?}"
    );
    // And the part's work is abandoned once the deadline passes, not left running.
    let started = tokio::time::Instant::now();
    while !with_parts.parts.abandoned.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < PATIENCE,
            "the slow part was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `call` (one poll hands it to tonic's channel, which sends it on its own), keeps it
/// polled until `sent` says it reached the server, then leaves it unpolled until well after
/// its deadline, so that the server's answer is in before the client looks: tonic's client
/// polls the response before its own deadline timer, so the status returned is the
/// server's (see `from_the_wire`).
async fn server_answer<T: std::fmt::Debug>(
    call: impl Future<Output = Result<Response<T>, Status>>,
    sent: impl Fn() -> bool,
    wait: Duration,
) -> Status {
    tokio::pin!(call);
    if let std::task::Poll::Ready(result) = futures::poll!(&mut call) {
        return result.expect_err("a failure");
    }
    let started = tokio::time::Instant::now();
    while !sent() {
        tokio::select! {
            biased;
            result = &mut call => return result.expect_err("a failure"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the call never reached the server"
        );
    }
    // The one wait by time: nothing signals that the server's answer has reached the
    // client's connection, and polling the call to find out would let the client's own
    // deadline timer answer instead. A try whose answer still came from that timer is
    // inconclusive, never a pass (the callers check `from_the_wire`).
    tokio::time::sleep(wait).await;
    call.await.expect_err("a failure")
}

#[tokio::test]
async fn the_gateway_answers_deadline_exceeded_when_the_deadline_passes() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();

    // A part slower than the caller's deadline (the fake status-config service).
    let with_parts = WithParts::statuses_only(&w.suite).await;
    with_parts.parts.slow.store(true, Ordering::SeqCst);
    let mut client = with_parts.gateway.client().await;
    // The server's answer must be in before the client looks (see `server_answer`); on a
    // loaded machine it may come later than the first wait, so a try whose answer came from
    // the client's own timer is inconclusive and made again with a longer wait.
    let mut status = None;
    for wait in [3, 6, 12, 24].map(Duration::from_secs) {
        let mut request = authed(
            &rep,
            gpb::GetOpportunityWithHistoryRequest {
                opportunity_id: book.o1.id.clone(),
                history_page_size: 0,
            },
        );
        request.set_timeout(Duration::from_secs(1));
        let seen_before = with_parts.seen().len();
        let answer = server_answer(
            client.get_opportunity_with_history(request),
            || with_parts.seen().len() > seen_before,
            wait,
        )
        .await;
        if from_the_wire(&answer) {
            status = Some(answer);
            break;
        }
    }
    let status = status.expect("inconclusive every time: the client's own timer answered");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "the gateway's answer once the caller's deadline passed: {status:?}"
    );

    // The real parts, and a deadline far shorter than the work of each combined call.
    let mut detail = authed(
        &rep,
        gpb::GetOpportunityWithHistoryRequest {
            opportunity_id: book.o1.id.clone(),
            history_page_size: 0,
        },
    );
    detail.set_timeout(Duration::from_millis(1));
    let mut overview = authed(
        &rep,
        gpb::GetCustomerOverviewRequest {
            customer_id: book.c1.id.clone(),
            ..Default::default()
        },
    );
    overview.set_timeout(Duration::from_millis(1));
    let mut board = authed(&rep, gpb::GetSalespersonPipelineRequest::default());
    board.set_timeout(Duration::from_millis(1));
    let wait = Duration::from_secs(1);
    let mut gateway = w.gateway.clone();
    let answers = [
        (
            "GetOpportunityWithHistory",
            server_answer(gateway.get_opportunity_with_history(detail), || true, wait).await,
        ),
        (
            "GetCustomerOverview",
            server_answer(gateway.get_customer_overview(overview), || true, wait).await,
        ),
        (
            "GetSalespersonPipeline",
            server_answer(gateway.get_salesperson_pipeline(board), || true, wait).await,
        ),
    ];
    for (call, status) in answers {
        assert!(
            from_the_wire(&status),
            "{call}: inconclusive: the client's own timer answered: {status:?}"
        );
        // A deadline that passes before the gateway's handler even starts is answered by
        // tonic's server transport, which reports its own timeout as CANCELLED "Timeout
        // expired"; once the handler runs, the gateway answers DEADLINE_EXCEEDED (above).
        let transport_timeout =
            status.code() == Code::Cancelled && status.message() == "Timeout expired";
        assert!(
            status.code() == Code::DeadlineExceeded || transport_timeout,
            "{call}: the suite's answer once the caller's deadline passed: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_deadline_shorter_than_the_work_fails_the_call() {
    let mut w = World::new().await;
    let book = Book::seed(&mut w).await;
    let rep = rep_token();
    // Real parts, a deadline far shorter than the work of any combined call.
    for timeout in [Duration::from_millis(1), Duration::from_micros(5)] {
        let mut detail = authed(
            &rep,
            gpb::GetOpportunityWithHistoryRequest {
                opportunity_id: book.o1.id.clone(),
                history_page_size: 0,
            },
        );
        detail.set_timeout(timeout);
        let mut overview = authed(
            &rep,
            gpb::GetCustomerOverviewRequest {
                customer_id: book.c1.id.clone(),
                ..Default::default()
            },
        );
        overview.set_timeout(timeout);
        let mut board = authed(&rep, gpb::GetSalespersonPipelineRequest::default());
        board.set_timeout(timeout);
        let results = [
            w.gateway
                .get_opportunity_with_history(detail)
                .await
                .map(|_| ()),
            w.gateway.get_customer_overview(overview).await.map(|_| ()),
            w.gateway.get_salesperson_pipeline(board).await.map(|_| ()),
        ];
        for (result, call) in results.into_iter().zip([
            "GetOpportunityWithHistory",
            "GetCustomerOverview",
            "GetSalespersonPipeline",
        ]) {
            let status = result.expect_err(call);
            assert!(
                status.code() == Code::DeadlineExceeded || is_client_deadline(&status),
                "{call} with {timeout:?}: a deadline error: {status:?}"
            );
        }
    }
    // The same calls with time enough succeed on the same channel.
    let mut request = authed(&rep, gpb::GetSalespersonPipelineRequest::default());
    request.set_timeout(Duration::from_secs(30));
    w.gateway
        .get_salesperson_pipeline(request)
        .await
        .expect("time enough");
}

// ---------------------------------------------------------------------------------------
// Concurrency: the independent legs of a combined call are in flight together. Every part
// is fake, and the legs of one round wait for each other at a barrier (`Parts::meet`): a
// gateway calling them one after another would wait at the first forever and fail by the
// deadline. Nothing is timed.
// ---------------------------------------------------------------------------------------

/// An opportunity id for the fake parts (they answer any).
const FAKE_OPPORTUNITY: &str = "6f1c1a8e-0000-4000-8000-0000000000fa";

/// `message` with the rep's token and a deadline no healthy call comes near: only legs that
/// never meet reach it.
fn patient<T>(message: T) -> Request<T> {
    let mut request = authed(&rep_token(), message);
    request.set_timeout(PATIENCE);
    request
}

/// The answer of a combined call whose legs had to meet.
#[track_caller]
fn met<T>(result: Result<Response<T>, Status>, call: &str) -> T {
    result
        .unwrap_or_else(|status| {
            panic!("{call}: its legs never met (called one after another?): {status:?}")
        })
        .into_inner()
}

fn sorted(methods: &[&'static str]) -> Vec<&'static str> {
    let mut methods = methods.to_vec();
    methods.sort_unstable();
    methods
}

/// Every leg carried the caller's token (the fakes check nothing; the gateway forwards).
#[track_caller]
fn assert_every_leg_carried_the_rep(seen: &[Seen]) {
    let bearer = format!("Bearer {}", rep_token());
    for leg in seen {
        assert_eq!(
            leg.authorization.as_deref(),
            Some(bearer.as_str()),
            "{leg:?}"
        );
    }
}

#[tokio::test]
async fn the_detail_asks_for_the_opportunity_its_history_and_the_statuses_at_once() {
    let with_parts = WithParts::all().await;
    let first_round = ["GetOpportunity", "ListStatusHistory", "ListStatuses"];
    with_parts.parts.meet(&[&first_round]);
    let mut client = with_parts.gateway.client().await;

    let detail = met(
        client
            .get_opportunity_with_history(patient(gpb::GetOpportunityWithHistoryRequest {
                opportunity_id: FAKE_OPPORTUNITY.to_owned(),
                history_page_size: 0,
            }))
            .await,
        "GetOpportunityWithHistory",
    );
    assert_eq!(
        detail.opportunity.expect("the opportunity").id,
        FAKE_OPPORTUNITY
    );
    assert_eq!(detail.customer.expect("the customer").id, FAKE_CUSTOMER);
    assert_eq!(detail.status_history.len(), 1);
    assert_eq!(status_ids(&detail.pipeline_statuses), [INTERESTED, WON]);
    assert_eq!(detail.current_status.expect("its status").id, INTERESTED);
    // The customer follows the first round: it needs the opportunity's customer_id.
    let methods = with_parts.parts.methods();
    assert_eq!(methods.len(), 4, "{methods:?}");
    assert_eq!(sorted(&methods[..3]), sorted(&first_round));
    assert_eq!(methods[3], "GetCustomer");
    assert_every_leg_carried_the_rep(&with_parts.seen());
}

#[tokio::test]
async fn the_overview_asks_for_its_four_parts_at_once() {
    let with_parts = WithParts::all().await;
    let legs = [
        "GetCustomer",
        "ListOpportunities",
        "ListStatuses",
        "GetPipelineSummary",
    ];
    with_parts.parts.meet(&[&legs]);
    let mut client = with_parts.gateway.client().await;

    let overview = met(
        client
            .get_customer_overview(patient(gpb::GetCustomerOverviewRequest {
                customer_id: FAKE_CUSTOMER.to_owned(),
                ..Default::default()
            }))
            .await,
        "GetCustomerOverview",
    );
    assert_eq!(overview.customer.expect("the customer").id, FAKE_CUSTOMER);
    assert_eq!(overview.opportunities.len(), 1);
    assert_eq!(status_ids(&overview.statuses), [INTERESTED, WON]);
    assert_eq!(sorted(&with_parts.parts.methods()), sorted(&legs));
    assert_every_leg_carried_the_rep(&with_parts.seen());
}

#[tokio::test]
async fn the_board_asks_for_its_parts_at_once_then_for_every_stage_at_once() {
    let with_parts = WithParts::all().await;
    let first_round = ["ListSalespeople", "GetPipelineSummary", "ListStatuses"];
    // The fake status-config service answers two statuses: two stages, a page each.
    let stages = ["ListOpportunities", "ListOpportunities"];
    with_parts.parts.meet(&[&first_round, &stages]);
    let mut client = with_parts.gateway.client().await;

    let board = met(
        client
            .get_salesperson_pipeline(patient(gpb::GetSalespersonPipelineRequest::default()))
            .await,
        "GetSalespersonPipeline",
    );
    assert_eq!(board.salesperson.expect("the salesperson").id, REP_A1);
    assert_eq!(board.stages.len(), 2);
    for (stage, status) in board.stages.iter().zip([INTERESTED, WON]) {
        assert_eq!(
            stage.status.as_ref().expect("the stage's status").id,
            status
        );
        assert_eq!(stage.opportunities.len(), 1, "{stage:?}");
        let entry = &stage.opportunities[0];
        assert_eq!(entry.opportunity.as_ref().expect("o").status_id, status);
        assert_eq!(
            entry.customer_display_name,
            fake_customer(FAKE_CUSTOMER).display_name
        );
    }
    // Then the names of the customers on the board, in one batch.
    let methods = with_parts.parts.methods();
    assert_eq!(methods.len(), 6, "{methods:?}");
    assert_eq!(sorted(&methods[..3]), sorted(&first_round));
    assert_eq!(methods[3..5], stages);
    assert_eq!(methods[5], "ListCustomers");
    assert_every_leg_carried_the_rep(&with_parts.seen());
}
