//! How many downstream calls each combined call of the gateway makes, counted by the suite's
//! own metrics (`salesopp_kit::metrics::calls_of`, per gRPC path, process-wide). Its
//! latency is measured by `salesopp bench` (the GetOpportunityWithHistory workload), not
//! here: a test asserts no timings.
//!
//! One test in its own binary: the counters are process-global, so nothing else may call
//! the suite while it counts. The counts are asserted: they are the design (a fixed number of
//! calls per combined call, whatever the number of opportunities, customers or history
//! entries).

use std::collections::BTreeMap;
use std::future::Future;

use salesopp_kit::metrics::calls_of;
use salesopp_proto::common::v1::{Date, Money};
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use salesopp_tests::fixtures::SHIPPED_STATUSES;
use salesopp_tests::{TestSuite, authed, rep_token};
use tonic::transport::Channel;
use uuid::Uuid;

const REP: &str = "rep-a1";

const CUSTOMER: &str = "/salesopp.customer.v1.CustomerService/";
const OPPORTUNITY: &str = "/salesopp.opportunity.v1.OpportunityService/";
const STATUS_CONFIG: &str = "/salesopp.statusconfig.v1.StatusConfigService/";
const GATEWAY: &str = "/salesopp.gateway.v1.GatewayService/";

/// Every read call a combined call may make downstream.
const DOWNSTREAM: [(&str, &str); 9] = [
    (CUSTOMER, "GetCustomer"),
    (CUSTOMER, "ListCustomers"),
    (OPPORTUNITY, "GetOpportunity"),
    (OPPORTUNITY, "ListOpportunities"),
    (OPPORTUNITY, "ListStatusHistory"),
    (OPPORTUNITY, "GetPipelineSummary"),
    (OPPORTUNITY, "ListSalespeople"),
    (STATUS_CONFIG, "ListStatuses"),
    (STATUS_CONFIG, "GetStatus"),
];

/// The calls a combined call made, per downstream method (only those made).
type Counts = BTreeMap<&'static str, u64>;

fn snapshot() -> BTreeMap<&'static str, u64> {
    DOWNSTREAM
        .iter()
        .map(|(service, method)| (*method, calls_of(&format!("{service}{method}"))))
        .collect()
}

/// The downstream calls made while `work` ran, and that `work` itself was one gateway call.
async fn count<T>(gateway_method: &str, work: impl Future<Output = T>) -> (T, Counts) {
    let path = format!("{GATEWAY}{gateway_method}");
    let gateway_before = calls_of(&path);
    let before = snapshot();
    let output = work.await;
    let after = snapshot();
    assert_eq!(
        calls_of(&path) - gateway_before,
        1,
        "one {gateway_method} call counted"
    );
    let counts = after
        .into_iter()
        .map(|(method, n)| (method, n - before[method]))
        .filter(|(_, n)| *n > 0)
        .collect();
    (output, counts)
}

fn counts(pairs: &[(&'static str, u64)]) -> Counts {
    pairs.iter().copied().collect()
}

fn thb(units: i64) -> Money {
    Money {
        currency_code: "THB".to_owned(),
        units,
        nanos: 0,
    }
}

struct Clients {
    gateway: GatewayServiceClient<Channel>,
    opps: OpportunityServiceClient<Channel>,
    customers: CustomerServiceClient<Channel>,
    statuses: StatusConfigServiceClient<Channel>,
}

impl Clients {
    async fn customer(&mut self, token: &str, name: &str) -> String {
        self.customers
            .create_customer(authed(
                token,
                cpb::CreateCustomerRequest {
                    customer: Some(cpb::Customer {
                        display_name: name.to_owned(),
                        ..Default::default()
                    }),
                    request_id: Uuid::new_v4().to_string(),
                },
            ))
            .await
            .expect("create customer")
            .into_inner()
            .id
    }

    async fn opportunity(&mut self, token: &str, customer_id: &str, n: usize) -> String {
        self.opps
            .create_opportunity(authed(
                token,
                opb::CreateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        customer_id: customer_id.to_owned(),
                        title: format!("Opportunity {n}"),
                        amount: Some(thb(10_000 * (n as i64 + 1))),
                        expected_close_date: Some(Date {
                            year: 2031,
                            month: (n % 12) as i32 + 1,
                            day: 15,
                        }),
                        ..Default::default()
                    }),
                    request_id: Uuid::new_v4().to_string(),
                    note: String::new(),
                },
            ))
            .await
            .expect("create opportunity")
            .into_inner()
            .id
    }

    async fn change(&mut self, token: &str, id: &str, status_id: &str) {
        self.opps
            .change_opportunity_status(authed(
                token,
                opb::ChangeOpportunityStatusRequest {
                    opportunity_id: id.to_owned(),
                    status_id: status_id.to_owned(),
                    request_id: Uuid::new_v4().to_string(),
                    ..Default::default()
                },
            ))
            .await
            .expect("change status");
    }

    async fn history_len(&mut self, token: &str, id: &str) -> usize {
        self.opps
            .list_status_history(authed(
                token,
                opb::ListStatusHistoryRequest {
                    opportunity_id: id.to_owned(),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("history")
            .into_inner()
            .status_changes
            .len()
    }

    async fn detail(
        &mut self,
        token: &str,
        id: &str,
        history_page_size: i32,
    ) -> gpb::GetOpportunityWithHistoryResponse {
        self.gateway
            .get_opportunity_with_history(authed(
                token,
                gpb::GetOpportunityWithHistoryRequest {
                    opportunity_id: id.to_owned(),
                    history_page_size,
                },
            ))
            .await
            .expect("GetOpportunityWithHistory")
            .into_inner()
    }

    async fn overview(
        &mut self,
        token: &str,
        customer_id: &str,
    ) -> gpb::GetCustomerOverviewResponse {
        self.gateway
            .get_customer_overview(authed(
                token,
                gpb::GetCustomerOverviewRequest {
                    customer_id: customer_id.to_owned(),
                    page_size: 500,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("GetCustomerOverview")
            .into_inner()
    }

    async fn board(&mut self, token: &str) -> gpb::GetSalespersonPipelineResponse {
        self.gateway
            .get_salesperson_pipeline(authed(
                token,
                gpb::GetSalespersonPipelineRequest {
                    salesperson_id: REP.to_owned(),
                    opportunities_per_stage: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("GetSalespersonPipeline")
            .into_inner()
    }
}

/// One round of the three combined calls, counted; checks what they hold against the seed.
async fn round(
    c: &mut Clients,
    token: &str,
    first_opportunity: &str,
    first_customer: &str,
    seeded: Seeded,
) -> [Counts; 3] {
    let (detail, detail_calls) = count(
        "GetOpportunityWithHistory",
        c.detail(token, first_opportunity, 500),
    )
    .await;
    assert_eq!(detail.status_history.len(), seeded.history_of_first);
    let (overview, overview_calls) =
        count("GetCustomerOverview", c.overview(token, first_customer)).await;
    assert_eq!(overview.opportunities.len(), seeded.with_first_customer);
    let (board, board_calls) = count("GetSalespersonPipeline", c.board(token)).await;
    let on_board: usize = board.stages.iter().map(|s| s.opportunities.len()).sum();
    assert_eq!(on_board, seeded.opportunities);
    let customers_on_board: std::collections::BTreeSet<&str> = board
        .stages
        .iter()
        .flat_map(|s| s.opportunities.iter())
        .map(|item| item.opportunity.as_ref().expect("o").customer_id.as_str())
        .collect();
    assert_eq!(customers_on_board.len(), seeded.customers);
    assert!(
        board
            .stages
            .iter()
            .flat_map(|s| s.opportunities.iter())
            .all(|item| !item.customer_display_name.is_empty()),
        "every customer name resolved"
    );
    // A short history page costs no more than a whole one.
    let (_, paged_calls) = count(
        "GetOpportunityWithHistory",
        c.detail(token, first_opportunity, 2),
    )
    .await;
    assert_eq!(paged_calls, detail_calls);
    [detail_calls, overview_calls, board_calls]
}

#[derive(Debug, Clone, Copy)]
struct Seeded {
    opportunities: usize,
    customers: usize,
    with_first_customer: usize,
    history_of_first: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combined_calls_make_a_fixed_number_of_downstream_calls() {
    let suite = TestSuite::spawn().await;
    let channel = suite.channel().await;
    let mut c = Clients {
        gateway: GatewayServiceClient::new(channel.clone()),
        opps: OpportunityServiceClient::new(channel.clone()),
        customers: CustomerServiceClient::new(channel.clone()),
        statuses: StatusConfigServiceClient::new(channel),
    };
    let rep = rep_token();
    let statuses = c
        .statuses
        .list_statuses(authed(&rep, spb::ListStatusesRequest::default()))
        .await
        .expect("statuses")
        .into_inner()
        .statuses;
    assert_eq!(
        statuses.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        SHIPPED_STATUSES.to_vec()
    );
    let status_count = statuses.len() as u64;

    // Round 1: three opportunities (with three customers), three history entries each.
    let mut customers = Vec::new();
    let mut opportunities = Vec::new();
    for n in 0..3 {
        let customer = c.customer(&rep, &format!("ลูกค้า {n}")).await;
        let id = c.opportunity(&rep, &customer, n).await;
        c.change(&rep, &id, SHIPPED_STATUSES[1]).await;
        c.change(&rep, &id, SHIPPED_STATUSES[(n % 5) + 2]).await;
        customers.push(customer);
        opportunities.push(id);
    }
    assert_eq!(c.history_len(&rep, &opportunities[0]).await, 3);
    let first_opportunity = opportunities[0].clone();
    let first_customer = customers[0].clone();
    let small = round(
        &mut c,
        &rep,
        &first_opportunity,
        &first_customer,
        Seeded {
            opportunities: 3,
            customers: 3,
            with_first_customer: 1,
            history_of_first: 3,
        },
    )
    .await;

    // Round 2: 40 more opportunities over 20 more customers (10 of them with the first
    // customer), spread over every status, and 20 more status changes of the first one.
    for n in 0..20 {
        customers.push(c.customer(&rep, &format!("Customer {n}")).await);
    }
    for n in 0..40 {
        let customer = if n < 10 {
            first_customer.clone()
        } else {
            customers[3 + (n % 20)].clone()
        };
        let id = c.opportunity(&rep, &customer, n + 3).await;
        let target = SHIPPED_STATUSES[n % SHIPPED_STATUSES.len()];
        if target != SHIPPED_STATUSES[0] {
            c.change(&rep, &id, target).await;
        }
        opportunities.push(id);
    }
    for n in 0..20 {
        // Round the first five statuses, never to the status it is already in.
        c.change(&rep, &first_opportunity, SHIPPED_STATUSES[n % 5])
            .await;
    }
    assert_eq!(c.history_len(&rep, &first_opportunity).await, 23);
    let large = round(
        &mut c,
        &rep,
        &first_opportunity,
        &first_customer,
        Seeded {
            opportunities: 43,
            customers: 23,
            with_first_customer: 11,
            history_of_first: 23,
        },
    )
    .await;

    let designed = [
        counts(&[
            ("GetOpportunity", 1),
            ("ListStatusHistory", 1),
            ("ListStatuses", 1),
            ("GetCustomer", 1),
        ]),
        counts(&[
            ("GetCustomer", 1),
            ("ListOpportunities", 1),
            ("ListStatuses", 1),
            ("GetPipelineSummary", 1),
        ]),
        counts(&[
            ("ListSalespeople", 1),
            ("GetPipelineSummary", 1),
            ("ListStatuses", 1),
            ("ListOpportunities", status_count),
            ("ListCustomers", 1),
        ]),
    ];
    let names = [
        "GetOpportunityWithHistory",
        "GetCustomerOverview",
        "GetSalespersonPipeline",
    ];
    println!();
    println!("downstream calls per combined call (3 vs 43 opportunities, 3 vs 23 history entries)");
    println!(
        "{:<27} {:>8} {:>8} {:>8}",
        "combined call", "small", "large", "designed"
    );
    for (i, name) in names.iter().enumerate() {
        let total = |c: &Counts| c.values().sum::<u64>();
        println!(
            "{:<27} {:>8} {:>8} {:>8}",
            name,
            total(&small[i]),
            total(&large[i]),
            total(&designed[i])
        );
        println!("    small: {:?}", small[i]);
        println!("    large: {:?}", large[i]);
    }
    for i in 0..3 {
        assert_eq!(
            small[i], large[i],
            "{}: the calls do not grow with the data",
            names[i]
        );
        assert_eq!(small[i], designed[i], "{}: the designed calls", names[i]);
    }
    assert_eq!(designed[0].values().sum::<u64>(), 4);
    assert_eq!(designed[1].values().sum::<u64>(), 4);
    assert_eq!(designed[2].values().sum::<u64>(), 3 + status_count + 1);
}
