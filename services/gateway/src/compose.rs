//! The combined calls. Each makes a fixed number of downstream calls whatever the number of
//! opportunities or history entries (lists are fetched a page at a time, customers resolved
//! in one batch by id), and runs the independent ones concurrently. No part is ever left out:
//! when a part fails, the combined call fails with that part's answer, so a screen never
//! shows a half-truth as if it were whole.

use std::collections::{BTreeMap, BTreeSet};

use salesopp_kit::trace::ClientTrace;
use salesopp_kit::{Principal, Visibility};
use salesopp_proto::common::v1 as common;
use salesopp_proto::customer::v1 as customer;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1 as pb;
use salesopp_proto::opportunity::v1 as opportunity;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::statusconfig::v1 as statusconfig;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use tonic::Status;

use crate::balance::Instances;
use crate::forward::{Forward, Part, leg};

pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 500;
pub const DEFAULT_PER_STAGE: i32 = 100;

/// One service's ready instances (`balance`), each call on them traced as a client span.
pub type Downstream = ClientTrace<Instances>;

/// The three services, each reached through its ready instances (one multiplexed
/// connection each, `balance`). A call borrows its client mutably, so each concurrent leg
/// has a clone of its own (sharing the instances).
#[derive(Debug, Clone)]
pub struct Clients {
    pub customers: CustomerServiceClient<Downstream>,
    pub opportunities: OpportunityServiceClient<Downstream>,
    pub statuses: StatusConfigServiceClient<Downstream>,
}

fn invalid(field: &str, description: impl Into<String>) -> Status {
    Status::from(salesopp_kit::ApiError::invalid(field, description))
}

fn uuid_field(field: &str, raw: &str, what: &str) -> Result<String, Status> {
    salesopp_kit::ids::uuid_field(field, raw, what)
        .map(|id| id.to_string())
        .map_err(Status::from)
}

fn page_size(field: &str, raw: i32, default: i32) -> Result<i32, Status> {
    match raw {
        0 => Ok(default),
        n if n < 0 => Err(invalid(field, "must not be negative")),
        n => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

impl Clients {
    async fn live_statuses(
        &self,
        forward: &Forward,
    ) -> Result<Vec<statusconfig::OpportunityStatus>, Status> {
        let request = statusconfig::ListStatusesRequest {
            page_size: 500,
            ..Default::default()
        };
        Ok(leg(
            Part::StatusConfig,
            self.statuses
                .clone()
                .list_statuses(forward.request(request)),
        )
        .await?
        .statuses)
    }

    pub async fn opportunity_with_history(
        &self,
        forward: &Forward,
        request: pb::GetOpportunityWithHistoryRequest,
    ) -> Result<pb::GetOpportunityWithHistoryResponse, Status> {
        let id = uuid_field(
            "opportunity_id",
            &request.opportunity_id,
            "the opportunity's id",
        )?;
        let history_page_size = page_size(
            "history_page_size",
            request.history_page_size,
            DEFAULT_PAGE_SIZE,
        )?;
        let (mut opportunities, mut histories) =
            (self.opportunities.clone(), self.opportunities.clone());
        let get = leg(
            Part::Opportunity,
            opportunities.get_opportunity(
                forward.request(opportunity::GetOpportunityRequest { id: id.clone() }),
            ),
        );
        let history = leg(
            Part::Opportunity,
            histories.list_status_history(forward.request(opportunity::ListStatusHistoryRequest {
                opportunity_id: id.clone(),
                page_size: history_page_size,
                page_token: String::new(),
                newest_first: false,
            })),
        );
        // The customer needs the opportunity's customer_id: it follows the first round.
        let (opportunity, history, statuses) =
            tokio::try_join!(get, history, self.live_statuses(forward))?;
        let customer = leg(
            Part::Customer,
            self.customers
                .clone()
                .get_customer(forward.request(customer::GetCustomerRequest {
                    id: opportunity.customer_id.clone(),
                })),
        )
        .await?;
        let current_status = statuses
            .iter()
            .find(|s| s.id == opportunity.status_id)
            .cloned();
        Ok(pb::GetOpportunityWithHistoryResponse {
            opportunity: Some(opportunity),
            customer: Some(customer),
            current_status,
            pipeline_statuses: statuses,
            status_history: history.status_changes,
            history_next_page_token: history.next_page_token,
        })
    }

    pub async fn customer_overview(
        &self,
        forward: &Forward,
        request: pb::GetCustomerOverviewRequest,
    ) -> Result<pb::GetCustomerOverviewResponse, Status> {
        let id = uuid_field("customer_id", &request.customer_id, "the customer's id")?;
        let page_size = page_size("page_size", request.page_size, DEFAULT_PAGE_SIZE)?;
        let (mut customers, mut lists, mut summaries) = (
            self.customers.clone(),
            self.opportunities.clone(),
            self.opportunities.clone(),
        );
        let get = leg(
            Part::Customer,
            customers
                .get_customer(forward.request(customer::GetCustomerRequest { id: id.clone() })),
        );
        let list = leg(
            Part::Opportunity,
            lists.list_opportunities(forward.request(opportunity::ListOpportunitiesRequest {
                customer_id: id.clone(),
                page_size,
                page_token: request.page_token.clone(),
                ..Default::default()
            })),
        );
        let summary = leg(
            Part::Opportunity,
            summaries.get_pipeline_summary(forward.request(
                opportunity::GetPipelineSummaryRequest {
                    customer_id: id.clone(),
                    ..Default::default()
                },
            )),
        );
        let (customer, list, statuses, summary) =
            tokio::try_join!(get, list, self.live_statuses(forward), summary)?;
        let open_totals = sum_totals(
            summary
                .by_status
                .iter()
                .filter(|s| s.kind == statusconfig::StatusKind::Open as i32)
                .flat_map(|s| s.totals.iter()),
        );
        Ok(pb::GetCustomerOverviewResponse {
            customer: Some(customer),
            opportunities: list.opportunities,
            next_page_token: list.next_page_token,
            statuses,
            pipeline_totals: open_totals,
            pipeline_by_status: summary.by_status,
        })
    }

    pub async fn salesperson_pipeline(
        &self,
        forward: &Forward,
        caller: &Principal,
        request: pb::GetSalespersonPipelineRequest,
    ) -> Result<pb::GetSalespersonPipelineResponse, Status> {
        let salesperson_id = match request.salesperson_id.trim() {
            "" => caller.id.clone(),
            id => id.to_owned(),
        };
        let per_stage = page_size(
            "opportunities_per_stage",
            request.opportunities_per_stage,
            DEFAULT_PER_STAGE,
        )?;
        let (mut salespeople, mut summaries) =
            (self.opportunities.clone(), self.opportunities.clone());
        let people = leg(
            Part::Opportunity,
            salespeople.list_salespeople(forward.request(opportunity::ListSalespeopleRequest {
                ids: vec![salesperson_id.clone()],
                page_size: 1,
                ..Default::default()
            })),
        );
        let summary = leg(
            Part::Opportunity,
            summaries.get_pipeline_summary(forward.request(
                opportunity::GetPipelineSummaryRequest {
                    owner_ids: vec![salesperson_id.clone()],
                    expected_close_date_from: request.expected_close_date_from,
                    expected_close_date_to: request.expected_close_date_to,
                    ..Default::default()
                },
            )),
        );
        let stages = self.stage_pages(forward, &salesperson_id, &request, per_stage);
        let (people, summary, (statuses, pages)) = tokio::try_join!(people, summary, stages)?;
        let salesperson = people.salespeople.into_iter().next().ok_or_else(|| {
            Status::from(salesopp_kit::ApiError::not_found(
                "salesperson",
                salesperson_id.clone(),
            ))
        })?;
        // R12: the board of someone the caller may not follow is refused, not shown empty.
        if !Visibility::of(caller.sales()?).sees(&salesperson.id, &salesperson.team) {
            return Err(Status::from(salesopp_kit::ApiError::out_of_scope(
                "the caller may not see this salesperson's pipeline",
            )));
        }
        let customer_ids: BTreeSet<String> = pages
            .iter()
            .flat_map(|page| page.opportunities.iter().map(|o| o.customer_id.clone()))
            .collect();
        let names = self.customer_names(forward, customer_ids).await?;
        let stages = board(statuses, pages, summary, &names);
        Ok(pb::GetSalespersonPipelineResponse {
            salesperson: Some(salesperson),
            stages,
        })
    }

    /// One page of the salesperson's opportunities per live stage, all at once: the number
    /// of calls follows the number of statuses, never the number of opportunities.
    async fn stage_pages(
        &self,
        forward: &Forward,
        salesperson_id: &str,
        request: &pb::GetSalespersonPipelineRequest,
        per_stage: i32,
    ) -> Result<
        (
            Vec<statusconfig::OpportunityStatus>,
            Vec<opportunity::ListOpportunitiesResponse>,
        ),
        Status,
    > {
        let statuses = self.live_statuses(forward).await?;
        let mut clients = vec![self.opportunities.clone(); statuses.len()];
        let pages = futures::future::try_join_all(statuses.iter().zip(&mut clients).map(
            |(status, client)| {
                let request = opportunity::ListOpportunitiesRequest {
                    owner_ids: vec![salesperson_id.to_owned()],
                    status_ids: vec![status.id.clone()],
                    expected_close_date_from: request.expected_close_date_from,
                    expected_close_date_to: request.expected_close_date_to,
                    page_size: per_stage,
                    // Within a stage, the sales closing soonest first (unknown dates last).
                    order_by: "expected_close_date".to_owned(),
                    ..Default::default()
                };
                leg(
                    Part::Opportunity,
                    client.list_opportunities(forward.request(request)),
                )
            },
        ))
        .await?;
        Ok((statuses, pages))
    }

    /// Customer names by id, in batches of the list's maximum page.
    async fn customer_names(
        &self,
        forward: &Forward,
        ids: BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, Status> {
        let ids: Vec<String> = ids.into_iter().collect();
        let chunks: Vec<&[String]> = ids.chunks(MAX_PAGE_SIZE as usize).collect();
        let mut clients = vec![self.customers.clone(); chunks.len()];
        let batches = futures::future::try_join_all(chunks.iter().zip(&mut clients).map(
            |(chunk, client)| {
                let request = customer::ListCustomersRequest {
                    ids: chunk.to_vec(),
                    page_size: MAX_PAGE_SIZE,
                    show_archived: true,
                    ..Default::default()
                };
                leg(
                    Part::Customer,
                    client.list_customers(forward.request(request)),
                )
            },
        ))
        .await?;
        Ok(batches
            .into_iter()
            .flat_map(|batch| batch.customers)
            .map(|c| (c.id, c.display_name))
            .collect())
    }
}

/// Adds totals per currency exactly (no conversion between currencies).
pub fn sum_totals<'a>(
    totals: impl Iterator<Item = &'a opportunity::CurrencyTotal>,
) -> Vec<opportunity::CurrencyTotal> {
    let mut sums: BTreeMap<String, (i64, i128, i128)> = BTreeMap::new();
    for total in totals {
        let entry = sums.entry(total.currency_code.clone()).or_default();
        entry.0 += total.count;
        entry.1 += nanos(total.total_amount.as_ref());
        entry.2 += nanos(total.weighted_amount.as_ref());
    }
    sums.into_iter()
        .map(
            |(currency_code, (count, total, weighted))| opportunity::CurrencyTotal {
                total_amount: Some(money(&currency_code, total)),
                weighted_amount: Some(money(&currency_code, weighted)),
                currency_code,
                count,
            },
        )
        .collect()
}

fn nanos(money: Option<&common::Money>) -> i128 {
    money.map_or(0, |m| {
        i128::from(m.units) * 1_000_000_000 + i128::from(m.nanos)
    })
}

fn money(currency_code: &str, nanos: i128) -> common::Money {
    common::Money {
        currency_code: currency_code.to_owned(),
        units: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

/// The board's stages: each live status with its totals and its page of opportunities,
/// each named with its customer.
fn board(
    statuses: Vec<statusconfig::OpportunityStatus>,
    pages: Vec<opportunity::ListOpportunitiesResponse>,
    summary: opportunity::GetPipelineSummaryResponse,
    names: &BTreeMap<String, String>,
) -> Vec<pb::PipelineStage> {
    let mut totals: BTreeMap<String, Vec<opportunity::CurrencyTotal>> = summary
        .by_status
        .into_iter()
        .map(|s| (s.status_id, s.totals))
        .collect();
    statuses
        .into_iter()
        .zip(pages)
        .map(|(status, page)| pb::PipelineStage {
            totals: totals.remove(&status.id).unwrap_or_default(),
            more_opportunities: !page.next_page_token.is_empty(),
            opportunities: page
                .opportunities
                .into_iter()
                .map(|o| pb::PipelineOpportunity {
                    customer_display_name: names.get(&o.customer_id).cloned().unwrap_or_default(),
                    // R15: this stay in the current status, by the opportunity service's clock.
                    time_in_status: o
                        .status_durations
                        .iter()
                        .find(|d| d.status_id == o.status_id)
                        .and_then(|d| d.current_stay),
                    // R16: by the same clock.
                    stale: o.stale_since.is_some(),
                    opportunity: Some(o),
                })
                .collect(),
            status: Some(status),
        })
        .collect()
}
