//! One function per call of the opportunity service. Each write is one transaction that
//! takes its locks in one order (statuses, then the customer, then the opportunity), records
//! the acting salesperson, and writes its outbox event; a failed call changes nothing.

use std::collections::BTreeMap;

use salesopp_kit::error::{ApiError, ApiResult, FieldViolations, Reason};
use salesopp_kit::idempotency::{self, Claim};
use salesopp_kit::{OpportunityState, Principal, Sales, paging, people};
use salesopp_proto::common::v1 as common;
use salesopp_proto::opportunity::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{self, opportunity_to_proto, status_change_to_proto};
use crate::domain::{self, Money, Visibility};
use crate::status_change::{self, Change};
use crate::store::{
    self, ListAfter, ListOrder, NewStatusChange, OpportunityFilter, OpportunityRow, PipelineGroup,
    StatusInfo,
};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;

const RESOURCE: &str = "opportunity";

/// AIP-211: a caller who may not see an opportunity learns nothing of it, not even whether
/// it exists; only an admin (who sees everything) is told NOT_FOUND.
fn hidden(visibility: &Visibility, id: Uuid) -> ApiError {
    match visibility {
        Visibility::All => ApiError::not_found(RESOURCE, id.to_string()),
        _ => ApiError::out_of_scope(format!(
            "the caller may not see opportunity {id} (or it does not exist)"
        )),
    }
}

fn visible(
    visibility: &Visibility,
    id: Uuid,
    row: Option<OpportunityRow>,
) -> ApiResult<OpportunityRow> {
    match row {
        Some(row) if visibility.sees(&row.owner_id, &row.owner_team) => Ok(row),
        _ => Err(hidden(visibility, id)),
    }
}

/// A status a call moves to: it exists and is not archived; held so it stays so.
async fn target_status(tx: &mut PgConnection, field: &str, id: Uuid) -> ApiResult<StatusInfo> {
    match store::share_status(tx, id).await? {
        None => Err(ApiError::invalid(
            field,
            format!("no status has the id {id}"),
        )),
        Some(status) if status.archived => Err(ApiError::invalid(
            field,
            "the status is archived: choose a current status",
        )),
        Some(status) => Ok(status),
    }
}

/// Whether `caller` may make `owner_id` an opportunity's owner (R12).
async fn check_owner(
    tx: &mut PgConnection,
    caller: &Principal,
    visibility: &Visibility,
    field: &str,
    owner_id: &str,
) -> ApiResult<()> {
    if owner_id == caller.id {
        return Ok(());
    }
    let team = people::team_of(tx, owner_id).await?;
    match (visibility, team) {
        (Visibility::Own { .. }, _) => Err(ApiError::out_of_scope(
            "a sales rep owns only their own opportunities: a manager or an admin reassigns them",
        )),
        (_, None) => Err(ApiError::invalid(
            field,
            format!(
                "no salesperson {owner_id:?} is known: they appear once they have used the suite"
            ),
        )),
        (Visibility::Team { team: mine, .. }, Some(theirs)) if *mine != theirs => Err(
            ApiError::out_of_scope("a sales manager assigns opportunities only within their team"),
        ),
        _ => Ok(()),
    }
}

pub async fn create(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::CreateOpportunityRequest,
) -> ApiResult<pb::Opportunity> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let input = convert::new_opportunity(request)?;
    let mut tx = pool.begin().await?;
    const METHOD: &str = "CreateOpportunity";
    let request_id = input.request_id.as_deref();
    if let Claim::Replay(first) =
        idempotency::claim(&mut tx, &caller.id, METHOD, request_id, request).await?
    {
        return Ok(first);
    }
    people::record(&mut tx, caller).await?;
    // R5: no status given means the default status.
    let status = match input.status_id {
        Some(id) => target_status(&mut tx, "opportunity.status_id", id).await?,
        None => store::share_default_status(&mut tx).await?,
    };
    domain::check_lost_reason(
        "opportunity.lost_reason",
        status.kind,
        input.lost_reason.is_some(),
    )?;
    // R1: an existing customer, not archived.
    match store::share_customer(&mut tx, input.customer_id).await? {
        None => {
            return Err(ApiError::invalid(
                "opportunity.customer_id",
                format!("no customer has the id {}", input.customer_id),
            ));
        }
        Some(true) => {
            return Err(ApiError::failed_precondition(
                Reason::CustomerArchived,
                input.customer_id.to_string(),
                "the customer is archived and takes no new opportunities (R1)",
            ));
        }
        Some(false) => {}
    }
    let owner_id = input.owner_id.clone().unwrap_or_else(|| caller.id.clone());
    check_owner(
        &mut tx,
        caller,
        &visibility,
        "opportunity.owner_id",
        &owner_id,
    )
    .await?;
    let time = store::clock(&mut tx).await?;
    let id = Uuid::new_v4();
    store::insert(
        &mut tx,
        &store::NewOpportunity {
            id,
            customer_id: input.customer_id,
            owner_id: &owner_id,
            title: &input.title,
            amount: input.amount.as_ref(),
            expected_close_date: input.expected_close_date,
            status: &status,
            lost_reason: input.lost_reason.as_deref(),
            next_step: input.next_step.as_deref(),
            actor_id: &caller.id,
            time,
        },
    )
    .await?;
    // R9: the first status is the first history entry.
    let entry = store::append_status_change(
        &mut tx,
        &NewStatusChange {
            opportunity_id: id,
            from: None,
            to: &status,
            actor_id: &caller.id,
            actor_name: &caller.display_name,
            time,
            note: &input.note,
            amount: input.amount.as_ref(),
            lost_reason: input.lost_reason.as_deref(),
            request_id,
        },
    )
    .await?;
    let row = store::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::internal("created opportunity not readable"))?;
    let mut response = opportunity_to_proto(&row);
    response.version = status_change::append_event(
        &mut tx,
        status_change::CREATED,
        caller,
        time,
        None,
        response.clone(),
        Some(status_change_to_proto(&entry)),
        request_id,
    )
    .await?;
    idempotency::complete(&mut tx, &caller.id, METHOD, request_id, &response).await?;
    tx.commit().await?;
    tracing::info!(opportunity_id = %id, actor = %caller.id, "opportunity created");
    Ok(response)
}

pub async fn get(pool: &PgPool, caller: Sales<'_>, id: Uuid) -> ApiResult<pb::Opportunity> {
    let visibility = Visibility::of(caller);
    let row = visible(&visibility, id, store::get(pool, id).await?)?;
    Ok(opportunity_to_proto(&row))
}

pub async fn update(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::UpdateOpportunityRequest,
) -> ApiResult<pb::Opportunity> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let input = convert::update_input(request)?;
    let mut tx = pool.begin().await?;
    const METHOD: &str = "UpdateOpportunity";
    if let Claim::Replay(first) = idempotency::claim(
        &mut tx,
        &caller.id,
        METHOD,
        input.request_id.as_deref(),
        request,
    )
    .await?
    {
        return Ok(first);
    }
    people::record(&mut tx, caller).await?;
    let patch = &input.patch;
    let target = match patch.status_id {
        Some(id) => Some(target_status(&mut tx, "opportunity.status_id", id).await?),
        None => None,
    };
    let current = visible(&visibility, input.id, store::lock(&mut tx, input.id).await?)?;
    if input
        .etag
        .as_ref()
        .is_some_and(|etag| *etag != current.etag())
    {
        return Err(ApiError::stale_etag(RESOURCE));
    }
    let before = opportunity_to_proto(&current);
    let moving = target.as_ref().filter(|t| t.id != current.status_id);
    // A lost reason belongs to the LOST status: the one moved to, or else the current one.
    let lost_kind = moving.map_or(current.state.kind(), |t| t.kind);
    domain::check_lost_reason(
        "opportunity.lost_reason",
        lost_kind,
        matches!(patch.lost_reason, Some(Some(_))),
    )?;
    if let Some(owner_id) = &patch.owner_id
        && *owner_id != current.owner_id
    {
        check_owner(
            &mut tx,
            caller,
            &visibility,
            "opportunity.owner_id",
            owner_id,
        )
        .await?;
    }
    let amount = patch.amount.clone().unwrap_or_else(|| current.money());
    let amount = amount.as_ref();
    let fields = store::Fields {
        owner_id: patch.owner_id.as_deref().unwrap_or(&current.owner_id),
        title: patch.title.as_deref().unwrap_or(&current.title),
        amount,
        expected_close_date: patch
            .expected_close_date
            .unwrap_or(current.expected_close_date),
        next_step: match &patch.next_step {
            Some(next_step) => next_step.as_deref(),
            None => current.next_step.as_deref(),
        },
        lost_reason: match (&patch.lost_reason, moving) {
            (Some(reason), None) => reason.as_deref(),
            _ => current.lost_reason.as_deref(),
        },
    };
    let fields_change = fields.owner_id != current.owner_id
        || fields.title != current.title
        || fields.amount != current.money().as_ref()
        || fields.expected_close_date != current.expected_close_date
        || fields.next_step != current.next_step.as_deref()
        || fields.lost_reason != current.lost_reason.as_deref();
    if fields_change {
        store::update_fields(&mut tx, current.id, &fields, &caller.id).await?;
    }
    let response = match moving {
        Some(to) => {
            let updated = store::lock(&mut tx, current.id)
                .await?
                .ok_or_else(|| ApiError::internal("opportunity vanished under its lock"))?;
            let lost_reason = match &patch.lost_reason {
                Some(reason) => reason.as_deref(),
                None => None,
            };
            let change = Change {
                to,
                note: &input.note,
                lost_reason,
                request_id: input.request_id.as_deref(),
            };
            match status_change::change_status(&mut tx, &updated, &before, change, caller).await? {
                Some((after, _)) => opportunity_to_proto(&after),
                None => opportunity_to_proto(&updated),
            }
        }
        None if fields_change => {
            let after = store::get(&mut *tx, current.id)
                .await?
                .ok_or_else(|| ApiError::internal("opportunity vanished under its lock"))?;
            let time = after.update_time;
            let mut after = opportunity_to_proto(&after);
            after.version = status_change::append_event(
                &mut tx,
                status_change::UPDATED,
                caller,
                time,
                Some(before),
                after.clone(),
                None,
                input.request_id.as_deref(),
            )
            .await?;
            after
        }
        None => before,
    };
    idempotency::complete(
        &mut tx,
        &caller.id,
        METHOD,
        input.request_id.as_deref(),
        &response,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(opportunity_id = %current.id, actor = %caller.id, "opportunity updated");
    Ok(response)
}

pub async fn change_status(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::ChangeOpportunityStatusRequest,
) -> ApiResult<pb::ChangeOpportunityStatusResponse> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let input = convert::change_input(request)?;
    let mut tx = pool.begin().await?;
    const METHOD: &str = "ChangeOpportunityStatus";
    let request_id = input.request_id.as_deref();
    if let Claim::Replay(first) =
        idempotency::claim(&mut tx, &caller.id, METHOD, request_id, request).await?
    {
        return Ok(first);
    }
    people::record(&mut tx, caller).await?;
    let target = target_status(&mut tx, "status_id", input.status_id).await?;
    domain::check_lost_reason("lost_reason", target.kind, input.lost_reason.is_some())?;
    let current = visible(
        &visibility,
        input.opportunity_id,
        store::lock(&mut tx, input.opportunity_id).await?,
    )?;
    if input
        .etag
        .as_ref()
        .is_some_and(|etag| *etag != current.etag())
    {
        return Err(ApiError::stale_etag(RESOURCE));
    }
    let before = opportunity_to_proto(&current);
    let change = Change {
        to: &target,
        note: &input.note,
        lost_reason: input.lost_reason.as_deref(),
        request_id,
    };
    let response =
        match status_change::change_status(&mut tx, &current, &before, change, caller).await? {
            Some((after, entry)) => pb::ChangeOpportunityStatusResponse {
                opportunity: Some(opportunity_to_proto(&after)),
                status_change: Some(status_change_to_proto(&entry)),
            },
            // R8: moving to the status it already has records nothing.
            None => pb::ChangeOpportunityStatusResponse {
                opportunity: Some(before),
                status_change: None,
            },
        };
    idempotency::complete(&mut tx, &caller.id, METHOD, request_id, &response).await?;
    tx.commit().await?;
    tracing::info!(opportunity_id = %current.id, actor = %caller.id, "opportunity status changed");
    Ok(response)
}

fn close_range(
    violations: &mut FieldViolations,
    from: Option<&common::Date>,
    to: Option<&common::Date>,
) -> (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>) {
    let from = convert::date(violations, "expected_close_date_from", from);
    let to = convert::date(violations, "expected_close_date_to", to);
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        violations.add(
            "expected_close_date_to",
            "must not be before expected_close_date_from",
        );
    }
    (from, to)
}

fn states(violations: &mut FieldViolations, raw: &[i32]) -> Vec<OpportunityState> {
    let mut states = Vec::new();
    for (index, state) in raw.iter().enumerate() {
        match pb::OpportunityState::try_from(*state) {
            Ok(pb::OpportunityState::Open) => states.push(OpportunityState::Open),
            Ok(pb::OpportunityState::Won) => states.push(OpportunityState::Won),
            Ok(pb::OpportunityState::Lost) => states.push(OpportunityState::Lost),
            _ => violations.add(format!("states[{index}]"), "must be OPEN, WON or LOST"),
        }
    }
    states.sort_by_key(|state| state.as_str());
    states.dedup();
    states
}

fn owner_ids(violations: &mut FieldViolations, raw: &[String]) -> Vec<String> {
    let mut owners = Vec::new();
    for (index, owner) in raw.iter().enumerate() {
        if owner.trim().is_empty() {
            violations.add(format!("owner_ids[{index}]"), "must not be empty");
        } else {
            owners.push(owner.trim().to_owned());
        }
    }
    owners.sort();
    owners.dedup();
    owners
}

fn optional_uuid(violations: &mut FieldViolations, field: &str, raw: &str) -> Option<Uuid> {
    if raw.is_empty() {
        None
    } else {
        violations.check(field, salesopp_kit::ids::parse_uuid(raw, "an id"))
    }
}

fn list_filter(
    request: &pb::ListOpportunitiesRequest,
) -> ApiResult<(OpportunityFilter, ListOrder)> {
    let mut violations = FieldViolations::new();
    let owner_ids = owner_ids(&mut violations, &request.owner_ids);
    let customer_id = optional_uuid(&mut violations, "customer_id", &request.customer_id);
    let mut status_ids = Vec::new();
    for (index, raw) in request.status_ids.iter().enumerate() {
        if let Some(id) = violations.check(
            &format!("status_ids[{index}]"),
            salesopp_kit::ids::parse_uuid(raw, "a status id"),
        ) {
            status_ids.push(id);
        }
    }
    status_ids.sort();
    status_ids.dedup();
    let states = states(&mut violations, &request.states);
    let (close_from, close_to) = close_range(
        &mut violations,
        request.expected_close_date_from.as_ref(),
        request.expected_close_date_to.as_ref(),
    );
    let query = request.query.trim();
    if query.chars().count() > domain::MAX_QUERY_CHARS {
        violations.add(
            "query",
            format!("must be at most {} characters", domain::MAX_QUERY_CHARS),
        );
    }
    if query.chars().any(char::is_control) {
        violations.add("query", "must not contain control characters");
    }
    let order = match request.order_by.trim() {
        "" | "update_time desc" => ListOrder::UpdateTimeDesc,
        "expected_close_date" | "expected_close_date asc" => ListOrder::ExpectedCloseDate,
        "amount desc" => ListOrder::AmountDesc,
        other => {
            violations.add(
                "order_by",
                format!("{other:?} is not supported: use \"update_time desc\", \"expected_close_date\" or \"amount desc\""),
            );
            ListOrder::UpdateTimeDesc
        }
    };
    violations.into_result()?;
    Ok((
        OpportunityFilter {
            owner_ids,
            team: None,
            customer_id,
            status_ids,
            states,
            close_from,
            close_to,
            pattern: (!query.is_empty()).then(|| domain::like_substring(query)),
        },
        order,
    ))
}

pub async fn list(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::ListOpportunitiesRequest,
) -> ApiResult<pb::ListOpportunitiesResponse> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let page_size = paging::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let (filter, order) = list_filter(request)?;
    let fingerprint = paging::fingerprint(&("opportunities", &caller.id, &filter, order));
    let after: Option<ListAfter> = paging::decode(&request.page_token, &fingerprint)?;
    let mut rows = store::list(
        pool,
        &visibility,
        &filter,
        order,
        after.as_ref(),
        i64::from(page_size) + 1,
    )
    .await?;
    let next_page_token = if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|last| {
                let key = match order {
                    ListOrder::UpdateTimeDesc => ListAfter::UpdateTime(last.update_time, last.id),
                    ListOrder::ExpectedCloseDate => ListAfter::CloseDate(
                        last.expected_close_date
                            .map_or_else(|| "infinity".to_owned(), |d| d.to_string()),
                        last.id,
                    ),
                    ListOrder::AmountDesc => ListAfter::Amount(
                        last.amount.clone().unwrap_or_else(|| "-1".to_owned()),
                        last.id,
                    ),
                };
                paging::encode(&fingerprint, &key)
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListOpportunitiesResponse {
        opportunities: rows.iter().map(opportunity_to_proto).collect(),
        next_page_token,
    })
}

pub async fn history(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::ListStatusHistoryRequest,
) -> ApiResult<pb::ListStatusHistoryResponse> {
    let visibility = Visibility::of(caller);
    let id = salesopp_kit::ids::uuid_field(
        "opportunity_id",
        &request.opportunity_id,
        "the opportunity's id",
    )?;
    let page_size = paging::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let fingerprint = paging::fingerprint(&("history", id, request.newest_first));
    let after: Option<i32> = paging::decode(&request.page_token, &fingerprint)?;
    visible(&visibility, id, store::get(pool, id).await?)?;
    let mut rows = store::history(
        pool,
        id,
        request.newest_first,
        after,
        i64::from(page_size) + 1,
    )
    .await?;
    let next_page_token = if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|last| paging::encode(&fingerprint, &last.sequence))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListStatusHistoryResponse {
        status_changes: rows.iter().map(status_change_to_proto).collect(),
        next_page_token,
    })
}

fn currency_total(row: &store::PipelineRow) -> ApiResult<pb::CurrencyTotal> {
    let currency_code = row.currency_code.clone().unwrap_or_default();
    let total_amount = row
        .total
        .as_deref()
        .map(|text| {
            Money::from_decimal(&currency_code, text)
                .map(|m| convert::money_to_proto(&m))
                .ok_or_else(|| {
                    ApiError::internal(format!("pipeline total {text} does not fit Money"))
                })
        })
        .transpose()?;
    let weighted_amount = row
        .weighted_x100
        .as_deref()
        .map(|text| {
            Money::weighted(&currency_code, text)
                .map(|m| convert::money_to_proto(&m))
                .ok_or_else(|| ApiError::internal("pipeline weighted total does not fit Money"))
        })
        .transpose()?;
    Ok(pb::CurrencyTotal {
        currency_code,
        count: row.count,
        total_amount,
        weighted_amount,
    })
}

/// Adds `total` to `totals` under its state (open, won or lost apart).
fn add_to_state(
    totals: &mut pb::PipelineTotals,
    state: Option<OpportunityState>,
    total: pb::CurrencyTotal,
) {
    match state {
        Some(OpportunityState::Won) => totals.won.push(total),
        Some(OpportunityState::Lost) => totals.lost.push(total),
        Some(OpportunityState::Open) | None => totals.open.push(total),
    }
}

pub async fn pipeline(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::GetPipelineSummaryRequest,
) -> ApiResult<pb::GetPipelineSummaryResponse> {
    let visibility = Visibility::of(caller);
    let mut violations = FieldViolations::new();
    let owner_ids = owner_ids(&mut violations, &request.owner_ids);
    let states = states(&mut violations, &request.states);
    let (close_from, close_to) = close_range(
        &mut violations,
        request.expected_close_date_from.as_ref(),
        request.expected_close_date_to.as_ref(),
    );
    let customer_id = optional_uuid(&mut violations, "customer_id", &request.customer_id);
    let team = request.team.trim();
    if team.chars().count() > 200 {
        violations.add("team", "must be at most 200 characters");
    }
    violations.into_result()?;
    let filter = OpportunityFilter {
        owner_ids,
        team: (!team.is_empty()).then(|| team.to_owned()),
        customer_id,
        status_ids: Vec::new(),
        states,
        close_from,
        close_to,
        pattern: None,
    };
    let rows = store::pipeline(pool, &visibility, &filter).await?;
    let statuses = store::live_statuses(pool).await?;
    let mut per_status: BTreeMap<Uuid, Vec<pb::CurrencyTotal>> = BTreeMap::new();
    let mut by_owner_status: Vec<pb::PipelineOwnerStatusTotal> = Vec::new();
    let mut by_owner: Vec<pb::PipelineOwnerTotal> = Vec::new();
    let mut total = pb::PipelineTotals::default();
    for row in &rows {
        let currency_total = currency_total(row)?;
        let owner_id = row.owner_id.clone().unwrap_or_default();
        let status_id = row.status_id.map(|id| id.to_string()).unwrap_or_default();
        match row.group() {
            PipelineGroup::Status => per_status
                .entry(row.status_id.unwrap_or_default())
                .or_default()
                .push(currency_total),
            PipelineGroup::OwnerStatus => match by_owner_status
                .last_mut()
                .filter(|last| last.owner_id == owner_id && last.status_id == status_id)
            {
                Some(last) => last.totals.push(currency_total),
                None => by_owner_status.push(pb::PipelineOwnerStatusTotal {
                    owner_id,
                    owner_display_name: row.owner_name.clone().unwrap_or_default(),
                    status_id,
                    totals: vec![currency_total],
                }),
            },
            PipelineGroup::OwnerState => {
                if by_owner.last().is_none_or(|last| last.owner_id != owner_id) {
                    by_owner.push(pb::PipelineOwnerTotal {
                        owner_id,
                        owner_display_name: row.owner_name.clone().unwrap_or_default(),
                        totals: Some(pb::PipelineTotals::default()),
                    });
                }
                if let Some(totals) = by_owner.last_mut().and_then(|o| o.totals.as_mut()) {
                    add_to_state(totals, row.state, currency_total);
                }
            }
            PipelineGroup::State => add_to_state(&mut total, row.state, currency_total),
        }
    }
    let by_status = statuses
        .iter()
        .map(
            |(id, name, position, probability, kind)| pb::PipelineStatusTotal {
                status_id: id.to_string(),
                status_display_name: name.clone(),
                position: *position,
                probability: i32::from(*probability),
                kind: convert::kind_to_proto(*kind).into(),
                totals: per_status.remove(id).unwrap_or_default(),
            },
        )
        .collect();
    Ok(pb::GetPipelineSummaryResponse {
        by_status,
        by_owner_status,
        by_owner,
        total: Some(total),
    })
}

pub async fn salespeople(
    pool: &PgPool,
    _caller: Sales<'_>,
    request: &pb::ListSalespeopleRequest,
) -> ApiResult<pb::ListSalespeopleResponse> {
    let mut violations = FieldViolations::new();
    let page_size = paging::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let query = request.query.trim();
    if query.chars().count() > domain::MAX_QUERY_CHARS || query.chars().any(char::is_control) {
        violations.add(
            "query",
            "must be at most 200 characters, with no control characters",
        );
    }
    if request.ids.len() > MAX_PAGE_SIZE as usize {
        violations.add("ids", format!("at most {MAX_PAGE_SIZE} ids"));
    }
    let ids = owner_ids(&mut violations, &request.ids);
    violations.into_result()?;
    let pattern = (!query.is_empty()).then(|| domain::like_substring(query));
    let team = request.team.trim();
    let team = (!team.is_empty()).then_some(team);
    let fingerprint = paging::fingerprint(&("salespeople", &pattern, team, &ids));
    let after: Option<(String, String)> = paging::decode(&request.page_token, &fingerprint)?;
    let mut rows: Vec<store::SalespersonRow> = store::salespeople_query(
        pattern.as_deref(),
        team,
        &ids,
        after.as_ref(),
        i64::from(page_size) + 1,
    )
    .build_query_as()
    .fetch_all(pool)
    .await?;
    let next_page_token = if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|last| paging::encode(&fingerprint, &(last.sort_name.clone(), last.id.clone())))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListSalespeopleResponse {
        salespeople: rows.iter().map(convert::salesperson_to_proto).collect(),
        next_page_token,
    })
}
