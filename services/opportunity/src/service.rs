//! One function per call of the opportunity service. Each write is one transaction that
//! takes its locks in one order (statuses, then the customer, then the opportunity), records
//! the acting salesperson, and writes its outbox event; a failed call changes nothing.

use std::collections::BTreeMap;

use salesopp_kit::error::{ApiError, ApiResult, Reason};
use salesopp_kit::idempotency::write;
use salesopp_kit::{OpportunityState, Principal, Sales, people};
use salesopp_proto::opportunity::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{
    self, ChangeInput, ChangesInput, ForecastInput, GetInput, HistoryInput, ListInput,
    NewOpportunityInput, OpportunityPatch, PipelineInput, SalespeopleInput, UpdateInput,
    VelocityInput, opportunity_to_proto, status_change_to_proto,
};
use crate::domain::{self, Money, Visibility};
use crate::status_change::{self, Change};
use crate::store::{
    self, ListAfter, ListOrder, NewStatusChange, OpportunityRow, Overrides, PipelineGroup,
    StatusInfo,
};
use crate::summary;

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

pub(crate) fn visible(
    visibility: &Visibility,
    id: Uuid,
    row: Option<OpportunityRow>,
) -> ApiResult<OpportunityRow> {
    match row {
        Some(row) if visibility.sees(&row.owner_id, &row.owner_team) => Ok(row),
        _ => Err(hidden(visibility, id)),
    }
}

/// R15: fills each opportunity's `status_durations`, read in one statement for them all.
pub(crate) async fn with_durations<'e>(
    db: impl sqlx::PgExecutor<'e>,
    opportunities: &mut [pb::Opportunity],
) -> ApiResult<()> {
    let ids = opportunities
        .iter()
        .map(|o| Uuid::parse_str(&o.id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    let mut by_id: BTreeMap<Uuid, Vec<pb::StatusDuration>> = BTreeMap::new();
    for row in store::durations(db, &ids).await? {
        by_id
            .entry(row.opportunity_id)
            .or_default()
            .push(convert::status_duration_to_proto(&row));
    }
    for (opportunity, id) in opportunities.iter_mut().zip(&ids) {
        opportunity.status_durations = by_id.remove(id).unwrap_or_default();
    }
    Ok(())
}

/// One opportunity with its `status_durations` (R15).
async fn with_durations_one<'e>(
    db: impl sqlx::PgExecutor<'e>,
    mut opportunity: pb::Opportunity,
) -> ApiResult<pb::Opportunity> {
    with_durations(db, std::slice::from_mut(&mut opportunity)).await?;
    Ok(opportunity)
}

/// A status a call moves to: it exists and is not archived; held so it stays so.
async fn target_status(tx: &mut PgConnection, field: &str, id: Uuid) -> ApiResult<StatusInfo> {
    usable_status(field, id, store::share_status(tx, id).await?)
}

/// The rule of [`target_status`] on the status read (`None`: no status has the id).
pub(crate) fn usable_status(
    field: &str,
    id: Uuid,
    status: Option<StatusInfo>,
) -> ApiResult<StatusInfo> {
    match status {
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
    owner_allowed(visibility, field, owner_id, team)
}

/// The rule of [`check_owner`] for an owner other than the caller, whose team (`None`: never
/// recorded) is read.
pub(crate) fn owner_allowed(
    visibility: &Visibility,
    field: &str,
    owner_id: &str,
    team: Option<String>,
) -> ApiResult<()> {
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
    input: NewOpportunityInput,
) -> ApiResult<pb::Opportunity> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let input = &input;
    let response = write(pool, caller, &input.retry, async |tx| {
        // R5: no status given means the default status.
        let status = match input.status_id {
            Some(id) => target_status(tx, "opportunity.status_id", id).await?,
            None => store::share_default_status(tx).await?,
        };
        domain::check_lost_reason(
            "opportunity.lost_reason",
            status.kind,
            input.lost_reason.is_some(),
        )?;
        check_customer(tx, input.customer_id).await?;
        let owner_id = input.owner_id.as_deref().unwrap_or(&caller.id);
        check_owner(tx, caller, &visibility, "opportunity.owner_id", owner_id).await?;
        insert(tx, caller, input, &status, owner_id).await
    })
    .await?;
    tracing::info!(opportunity_id = %response.id, actor = %caller.id, "opportunity created");
    Ok(response)
}

/// R1: an opportunity belongs to an existing customer that is not archived (held so it
/// stays so until the commit).
async fn check_customer(tx: &mut PgConnection, customer_id: Uuid) -> ApiResult<()> {
    customer_takes_opportunities(customer_id, store::share_customer(tx, customer_id).await?)
}

/// The rule of [`check_customer`] on the customer's `archived` flag (`None`: no customer).
pub(crate) fn customer_takes_opportunities(
    customer_id: Uuid,
    archived: Option<bool>,
) -> ApiResult<()> {
    match archived {
        None => Err(ApiError::invalid(
            "opportunity.customer_id",
            format!("no customer has the id {customer_id}"),
        )),
        Some(true) => Err(ApiError::failed_precondition(
            Reason::CustomerArchived,
            customer_id.to_string(),
            "the customer is archived and takes no new opportunities (R1)",
        )),
        Some(false) => Ok(()),
    }
}

/// Writes a checked new opportunity, its first history entry (R9) and its CREATED event.
async fn insert(
    tx: &mut PgConnection,
    caller: &Principal,
    input: &NewOpportunityInput,
    status: &StatusInfo,
    owner_id: &str,
) -> ApiResult<pb::Opportunity> {
    let request_id = input.retry.request_id();
    let time = store::clock(tx).await?;
    let id = Uuid::new_v4();
    store::insert(
        tx,
        &store::NewOpportunity {
            id,
            customer_id: input.customer_id,
            owner_id,
            title: &input.title,
            amount: input.amount.as_ref(),
            expected_close_date: input.expected_close_date,
            status,
            lost_reason: input.lost_reason.as_deref(),
            next_step: input.next_step.as_deref(),
            actor_id: &caller.id,
            time,
        },
    )
    .await?;
    // R9: the first status is the first history entry.
    let entry = store::append_status_change(
        tx,
        &NewStatusChange {
            opportunity_id: id,
            from: None,
            to: status,
            actor_id: &caller.id,
            actor_name: &caller.display_name,
            time,
            note: &input.note,
            amount: input.amount.as_ref(),
            lost_reason: input.lost_reason.as_deref(),
            request_id,
            from_manual_probability: None,
            to_manual_probability: None,
        },
    )
    .await?;
    let row = store::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::internal("created opportunity not readable"))?;
    let mut response = opportunity_to_proto(&row);
    response.version = status_change::append_event(
        tx,
        status_change::CREATED,
        caller,
        time,
        None,
        response.clone(),
        Some(status_change_to_proto(&entry)),
        request_id,
        status_change::Version::Written,
    )
    .await?;
    with_durations_one(&mut *tx, response).await
}

pub async fn get(pool: &PgPool, caller: Sales<'_>, input: GetInput) -> ApiResult<pb::Opportunity> {
    let visibility = Visibility::of(caller);
    let row = visible(&visibility, input.id, store::get(pool, input.id).await?)?;
    with_durations_one(pool, opportunity_to_proto(&row)).await
}

/// R10: a stale etag precondition is refused.
pub(crate) fn check_etag(current: &OpportunityRow, etag: Option<&String>) -> ApiResult<()> {
    match etag {
        Some(etag) if *etag != current.etag() => Err(ApiError::stale_etag(RESOURCE)),
        _ => Ok(()),
    }
}

pub async fn update(
    pool: &PgPool,
    caller: Sales<'_>,
    input: UpdateInput,
) -> ApiResult<pb::Opportunity> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let input = &input;
    let response = write(pool, caller, &input.retry, async |tx| {
        let patch = &input.patch;
        let (target, current) = match patch.status_id {
            Some(status_id) => {
                let (target, current) = store::lock_moving_to(tx, input.id, status_id).await?;
                let target = usable_status("opportunity.status_id", status_id, target)?;
                (Some(target), current)
            }
            None => (None, store::lock_in_its_status(tx, input.id).await?),
        };
        let current = visible(&visibility, input.id, current)?;
        check_etag(&current, input.etag.as_ref())?;
        let moving = target.as_ref().filter(|t| t.id != current.status_id);
        // R8: a lost reason belongs to the LOST status: the one moved to, or else the current.
        let lost_kind = moving.map_or(current.state.kind(), |t| t.kind);
        domain::check_lost_reason(
            "opportunity.lost_reason",
            lost_kind,
            matches!(patch.lost_reason, Some(Some(_))),
        )?;
        if let Some(owner_id) = &patch.owner_id
            && *owner_id != current.owner_id
        {
            check_owner(tx, caller, &visibility, "opportunity.owner_id", owner_id).await?;
        }
        let overrides = overrides_after(&current, patch, moving)?;
        let before = opportunity_to_proto(&current);
        let fields_changed =
            update_fields(tx, caller, &current, patch, moving.is_some(), &overrides).await?;
        let updated = match moving {
            Some(to) => move_in_update(tx, caller, input, &before, to, &overrides).await?,
            None if fields_changed => record_update(tx, caller, input, before).await?,
            None => before,
        };
        with_durations_one(&mut *tx, updated).await
    })
    .await?;
    tracing::info!(opportunity_id = %input.id, actor = %caller.id, "opportunity updated");
    Ok(response)
}

/// R17, R20: the overrides the opportunity has after the update: a status change resets
/// them (to the new status's values), then the mask's are set in the status it ends in,
/// which must be OPEN (WON is always 100 and CLOSED, LOST 0 and OMITTED).
fn overrides_after(
    current: &OpportunityRow,
    patch: &OpportunityPatch,
    moving: Option<&StatusInfo>,
) -> ApiResult<Overrides> {
    let mut overrides = match moving {
        Some(_) => Overrides::default(),
        None => current.overrides(),
    };
    if let Some(probability) = patch.probability {
        overrides.probability = probability;
    }
    if let Some(category) = &patch.forecast_category {
        overrides.forecast_category = category.clone();
    }
    // A status change resets the overrides: only those the mask names are set in the new
    // status, not those an opportunity read and sent back whole (`*`, an empty mask) had.
    if moving.is_some() && !patch.overrides_named {
        overrides = Overrides::default();
    }
    let kind = moving.map_or(current.state.kind(), |to| to.kind);
    if kind != salesopp_kit::StatusKind::Open {
        let why = "set by hand only on an open opportunity: WON is always 100 and CLOSED, \
                   LOST 0 and OMITTED";
        if overrides.probability.is_some() {
            return Err(ApiError::invalid("opportunity.probability", why));
        }
        if overrides.forecast_category.is_some() {
            return Err(ApiError::invalid("opportunity.forecast_category", why));
        }
    }
    Ok(overrides)
}

/// Writes the masked fields other than the status, when they change anything; whether they
/// did. A lost reason given with a move is the move's (R8), not a field change, and so are
/// the overrides (`overrides`, set in the new status).
async fn update_fields(
    tx: &mut PgConnection,
    caller: &Principal,
    current: &OpportunityRow,
    patch: &OpportunityPatch,
    moving: bool,
    overrides: &Overrides,
) -> ApiResult<bool> {
    let current_overrides = current.overrides();
    let overrides = if moving {
        &current_overrides
    } else {
        overrides
    };
    let current_amount = current.money();
    let amount = patch
        .amount
        .clone()
        .unwrap_or_else(|| current_amount.clone());
    let fields = store::Fields {
        owner_id: patch.owner_id.as_deref().unwrap_or(&current.owner_id),
        title: patch.title.as_deref().unwrap_or(&current.title),
        amount: amount.as_ref(),
        expected_close_date: patch
            .expected_close_date
            .unwrap_or(current.expected_close_date),
        next_step: match &patch.next_step {
            Some(next_step) => next_step.as_deref(),
            None => current.next_step.as_deref(),
        },
        lost_reason: match &patch.lost_reason {
            Some(reason) if !moving => reason.as_deref(),
            _ => current.lost_reason.as_deref(),
        },
        overrides,
    };
    let changed = fields.owner_id != current.owner_id
        || fields.title != current.title
        || fields.amount != current_amount.as_ref()
        || fields.expected_close_date != current.expected_close_date
        || fields.next_step != current.next_step.as_deref()
        || fields.lost_reason != current.lost_reason.as_deref()
        || *overrides != current_overrides;
    if changed {
        store::update_fields(tx, current.id, &fields, &caller.id).await?;
    }
    Ok(changed)
}

/// R8: the status part of an update, by the one status-change implementation, on the row
/// as the update's other fields left it; the event's `before` is the row as first read.
async fn move_in_update(
    tx: &mut PgConnection,
    caller: &Principal,
    input: &UpdateInput,
    before: &pb::Opportunity,
    to: &StatusInfo,
    overrides: &Overrides,
) -> ApiResult<pb::Opportunity> {
    let updated = store::lock(tx, input.id)
        .await?
        .ok_or_else(|| ApiError::internal("opportunity vanished under its lock"))?;
    let change = Change {
        to,
        note: &input.note,
        lost_reason: input.patch.lost_reason.as_ref().and_then(|r| r.as_deref()),
        request_id: input.retry.request_id(),
        overrides,
    };
    Ok(
        match status_change::change_status(tx, &updated, before, change, caller).await? {
            Some((after, _)) => opportunity_to_proto(&after),
            None => opportunity_to_proto(&updated),
        },
    )
}

/// The UPDATED event of an update that changed fields but not the status.
async fn record_update(
    tx: &mut PgConnection,
    caller: &Principal,
    input: &UpdateInput,
    before: pb::Opportunity,
) -> ApiResult<pb::Opportunity> {
    let after = store::get(&mut *tx, input.id)
        .await?
        .ok_or_else(|| ApiError::internal("opportunity vanished under its lock"))?;
    let time = after.update_time;
    let mut after = opportunity_to_proto(&after);
    after.version = status_change::append_event(
        tx,
        status_change::UPDATED,
        caller,
        time,
        Some(before),
        after.clone(),
        None,
        input.retry.request_id(),
        status_change::Version::ByEvent,
    )
    .await?;
    Ok(after)
}

pub async fn change_status(
    pool: &PgPool,
    caller: Sales<'_>,
    input: ChangeInput,
) -> ApiResult<pb::ChangeOpportunityStatusResponse> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let input = &input;
    let response = write(pool, caller, &input.retry, async |tx| {
        let (target, current) =
            store::lock_moving_to(tx, input.opportunity_id, input.status_id).await?;
        let target = usable_status("status_id", input.status_id, target)?;
        domain::check_lost_reason("lost_reason", target.kind, input.lost_reason.is_some())?;
        let current = visible(&visibility, input.opportunity_id, current)?;
        check_etag(&current, input.etag.as_ref())?;
        let before = opportunity_to_proto(&current);
        let change = Change {
            to: &target,
            note: &input.note,
            lost_reason: input.lost_reason.as_deref(),
            request_id: input.retry.request_id(),
            overrides: &Overrides::default(),
        };
        let (after, status_change) =
            match status_change::change_status(tx, &current, &before, change, caller).await? {
                Some((after, entry)) => (
                    opportunity_to_proto(&after),
                    Some(status_change_to_proto(&entry)),
                ),
                // R8: moving to the status it already has records nothing.
                None => (before, None),
            };
        Ok(pb::ChangeOpportunityStatusResponse {
            opportunity: Some(with_durations_one(&mut *tx, after).await?),
            status_change,
        })
    })
    .await?;
    tracing::info!(opportunity_id = %input.opportunity_id, actor = %caller.id, "opportunity status changed");
    Ok(response)
}

pub async fn list(
    pool: &PgPool,
    caller: Sales<'_>,
    input: ListInput,
) -> ApiResult<pb::ListOpportunitiesResponse> {
    let visibility = Visibility::of(caller);
    let ListInput {
        filter,
        order,
        page,
    } = input;
    let page = page.open::<ListAfter>(&("opportunities", &caller.id, &filter, order))?;
    let mut rows = store::list(
        pool,
        &visibility,
        &filter,
        order,
        page.after.as_ref(),
        page.limit(),
    )
    .await?;
    let next_page_token = page.next_token(&mut rows, |last| match order {
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
    });
    let mut opportunities: Vec<pb::Opportunity> = rows.iter().map(opportunity_to_proto).collect();
    with_durations(pool, &mut opportunities).await?;
    Ok(pb::ListOpportunitiesResponse {
        opportunities,
        next_page_token,
    })
}

pub async fn history(
    pool: &PgPool,
    caller: Sales<'_>,
    input: HistoryInput,
) -> ApiResult<pb::ListStatusHistoryResponse> {
    let visibility = Visibility::of(caller);
    let id = input.opportunity_id;
    let page = input
        .page
        .open::<i32>(&("history", id, input.newest_first))?;
    visible(&visibility, id, store::get(pool, id).await?)?;
    let mut rows = store::history(pool, id, input.newest_first, page.after, page.limit()).await?;
    let next_page_token = page.next_token(&mut rows, |last| last.sequence);
    Ok(pb::ListStatusHistoryResponse {
        status_changes: rows.iter().map(status_change_to_proto).collect(),
        next_page_token,
    })
}

/// R18: the field history of one opportunity the caller may see.
pub async fn changes(
    pool: &PgPool,
    caller: Sales<'_>,
    input: ChangesInput,
) -> ApiResult<pb::ListOpportunityChangesResponse> {
    let visibility = Visibility::of(caller);
    let id = input.opportunity_id;
    let page = input
        .page
        .open::<i64>(&("changes", id, input.newest_first, &input.fields))?;
    visible(&visibility, id, store::get(pool, id).await?)?;
    let mut rows = store::field_changes(
        pool,
        id,
        &input.fields,
        input.newest_first,
        page.after,
        page.limit(),
    )
    .await?;
    let next_page_token = page.next_token(&mut rows, |last| last.id);
    Ok(pb::ListOpportunityChangesResponse {
        field_changes: rows.iter().map(convert::field_change_to_proto).collect(),
        next_page_token,
    })
}

fn currency_total(row: &store::PipelineRow) -> ApiResult<pb::CurrencyTotal> {
    currency_total_of(
        row.currency_code.as_deref(),
        row.count,
        row.total.as_deref(),
        row.weighted_x100.as_deref(),
    )
}

/// One currency's total from its count, exact sum and exact weighted sum x 100 (R14).
fn currency_total_of(
    currency_code: Option<&str>,
    count: i64,
    total: Option<&str>,
    weighted_x100: Option<&str>,
) -> ApiResult<pb::CurrencyTotal> {
    let currency_code = currency_code.unwrap_or_default().to_owned();
    let total_amount = total
        .map(|text| {
            Money::from_decimal(&currency_code, text)
                .map(|m| convert::money_to_proto(&m))
                .ok_or_else(|| {
                    ApiError::internal(format!("pipeline total {text} does not fit Money"))
                })
        })
        .transpose()?;
    let weighted_amount = weighted_x100
        .map(|text| {
            Money::weighted(&currency_code, text)
                .map(|m| convert::money_to_proto(&m))
                .ok_or_else(|| ApiError::internal("pipeline weighted total does not fit Money"))
        })
        .transpose()?;
    Ok(pb::CurrencyTotal {
        currency_code,
        count,
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

/// The cache of the summaries the totals answer ([`summary::Cache`]).
pub type SummaryCache = summary::Cache<pb::GetPipelineSummaryResponse>;

pub async fn pipeline(
    pool: &PgPool,
    cache: &SummaryCache,
    caller: Sales<'_>,
    input: PipelineInput,
) -> ApiResult<pb::GetPipelineSummaryResponse> {
    let visibility = Visibility::of(caller);
    let filter = &input.filter;
    let (rows, statuses) = match input.as_of {
        // R19: the pipeline as it stood, from the history; its statuses are the live ones
        // and those that held an opportunity then, with their probabilities of then.
        Some(at) => {
            if store::is_future(pool, at).await? {
                return Err(ApiError::invalid(
                    "as_of",
                    "is in the future: the pipeline is known up to now",
                ));
            }
            let rows = store::pipeline_groups(store::PipelineSource::AsOf(at), &visibility, filter)
                .build_query_as::<store::PipelineRow>()
                .fetch_all(pool)
                .await?;
            let held: Vec<Uuid> = rows.iter().filter_map(|row| row.status_id).collect();
            let statuses = store::statuses_as_of(pool, at, &held).await?;
            (rows, statuses)
        }
        // R14: the totals the writes keep answer the boards, and the same answer again while
        // nothing it sums has changed; other filters aggregate the rows.
        None if summary::answers(filter) => {
            let key = format!("{visibility:?} {filter:?}");
            // Taken before the answer is read: the same stamp later means nothing changed
            // in between either.
            let stamp = summary::stamp(pool).await?;
            if let Some(answer) = cache.get(&key, &stamp) {
                return Ok(answer);
            }
            let rows = summary::pipeline(pool, &visibility, filter).await?;
            let answer = respond(&rows, &store::live_statuses(pool).await?)?;
            cache.put(key, stamp, answer.clone(), rows.len());
            return Ok(answer);
        }
        None => (
            store::pipeline(pool, &visibility, filter).await?,
            store::live_statuses(pool).await?,
        ),
    };
    respond(&rows, &statuses)
}

/// The response of the summary's grouping rows over `statuses`.
fn respond(
    rows: &[store::PipelineRow],
    statuses: &[store::LiveStatus],
) -> ApiResult<pb::GetPipelineSummaryResponse> {
    let mut summary = Summary::default();
    for row in rows {
        summary.add(row)?;
    }
    Ok(summary.finish(statuses))
}

/// R14: the pipeline's grouping sets folded into the response, one row at a time.
#[derive(Default)]
struct Summary {
    per_status: BTreeMap<Uuid, Vec<pb::CurrencyTotal>>,
    by_owner_status: Vec<pb::PipelineOwnerStatusTotal>,
    by_owner: Vec<pb::PipelineOwnerTotal>,
    total: pb::PipelineTotals,
}

impl Summary {
    /// Adds one grouping row (rows come ordered by owner, then status).
    fn add(&mut self, row: &store::PipelineRow) -> ApiResult<()> {
        let currency_total = currency_total(row)?;
        let owner_id = row.owner_id.clone().unwrap_or_default();
        let status_id = row.status_id.map(|id| id.to_string()).unwrap_or_default();
        match row.group() {
            PipelineGroup::Status => self
                .per_status
                .entry(row.status_id.unwrap_or_default())
                .or_default()
                .push(currency_total),
            PipelineGroup::OwnerStatus => match self
                .by_owner_status
                .last_mut()
                .filter(|last| last.owner_id == owner_id && last.status_id == status_id)
            {
                Some(last) => last.totals.push(currency_total),
                None => self.by_owner_status.push(pb::PipelineOwnerStatusTotal {
                    owner_id,
                    owner_display_name: row.owner_name.clone().unwrap_or_default(),
                    status_id,
                    totals: vec![currency_total],
                }),
            },
            PipelineGroup::OwnerState => {
                if self
                    .by_owner
                    .last()
                    .is_none_or(|last| last.owner_id != owner_id)
                {
                    self.by_owner.push(pb::PipelineOwnerTotal {
                        owner_id,
                        owner_display_name: row.owner_name.clone().unwrap_or_default(),
                        totals: Some(pb::PipelineTotals::default()),
                    });
                }
                if let Some(totals) = self.by_owner.last_mut().and_then(|o| o.totals.as_mut()) {
                    add_to_state(totals, row.state, currency_total);
                }
            }
            PipelineGroup::State => add_to_state(&mut self.total, row.state, currency_total),
        }
        Ok(())
    }

    /// The response: every live status in pipeline order, with its totals or none.
    fn finish(
        mut self,
        statuses: &[(Uuid, String, i32, i16, salesopp_kit::StatusKind)],
    ) -> pb::GetPipelineSummaryResponse {
        let by_status = statuses
            .iter()
            .map(
                |(id, name, position, probability, kind)| pb::PipelineStatusTotal {
                    status_id: id.to_string(),
                    status_display_name: name.clone(),
                    position: *position,
                    probability: i32::from(*probability),
                    kind: convert::kind_to_proto(*kind).into(),
                    totals: self.per_status.remove(id).unwrap_or_default(),
                },
            )
            .collect();
        pb::GetPipelineSummaryResponse {
            by_status,
            by_owner_status: self.by_owner_status,
            by_owner: self.by_owner,
            total: Some(self.total),
        }
    }
}

/// R20: the forecast per period x salesperson x category, per currency, of the
/// opportunities the caller may see.
pub async fn forecast(
    pool: &PgPool,
    caller: Sales<'_>,
    input: ForecastInput,
) -> ApiResult<pb::GetForecastSummaryResponse> {
    let visibility = Visibility::of(caller);
    let rows = store::forecast(
        pool,
        &visibility,
        &input.filter,
        input.start,
        input.end,
        input.kind.unit(),
    )
    .await?;
    let mut periods: Vec<pb::ForecastPeriod> = Vec::new();
    let mut starts = Vec::new();
    for (first, last) in input.periods() {
        starts.push(input.kind.start_of(first));
        periods.push(pb::ForecastPeriod {
            start_date: Some(convert::date_to_proto(first)),
            end_date: Some(convert::date_to_proto(last)),
            categories: Vec::new(),
            by_owner: Vec::new(),
        });
    }
    for row in &rows {
        let Some(period) = starts
            .iter()
            .position(|start| *start == row.period_start)
            .and_then(|i| periods.get_mut(i))
        else {
            return Err(ApiError::internal("forecast row outside its periods"));
        };
        let total = currency_total_of(
            row.currency_code.as_deref(),
            row.count,
            row.total.as_deref(),
            row.weighted_x100.as_deref(),
        )?;
        let categories = match &row.owner_id {
            None => &mut period.categories,
            Some(owner_id) => {
                if period
                    .by_owner
                    .last()
                    .is_none_or(|last| last.owner_id != *owner_id)
                {
                    period.by_owner.push(pb::ForecastOwnerTotal {
                        owner_id: owner_id.clone(),
                        owner_display_name: row.owner_name.clone().unwrap_or_default(),
                        categories: Vec::new(),
                    });
                }
                match period.by_owner.last_mut() {
                    Some(owner) => &mut owner.categories,
                    None => return Err(ApiError::internal("forecast owner missing")),
                }
            }
        };
        let category = convert::category_to_proto(&row.category) as i32;
        match categories
            .last_mut()
            .filter(|last| last.category == category)
        {
            Some(last) => last.totals.push(total),
            None => categories.push(pb::ForecastCategoryTotal {
                category,
                totals: vec![total],
            }),
        }
    }
    Ok(pb::GetForecastSummaryResponse { periods })
}

/// R15: how fast the opportunities the caller may see moved through each status in a period.
pub async fn velocity(
    pool: &PgPool,
    caller: Sales<'_>,
    input: VelocityInput,
) -> ApiResult<pb::GetPipelineVelocityResponse> {
    let visibility = Visibility::of(caller);
    let rows = store::velocity(pool, &visibility, &input.filter, input.start, input.end).await?;
    Ok(pb::GetPipelineVelocityResponse {
        statuses: rows.iter().map(convert::velocity_to_proto).collect(),
    })
}

pub async fn salespeople(
    pool: &PgPool,
    _caller: Sales<'_>,
    input: SalespeopleInput,
) -> ApiResult<pb::ListSalespeopleResponse> {
    let team = input.team.as_deref();
    let page =
        input
            .page
            .open::<(String, String)>(&("salespeople", &input.pattern, team, &input.ids))?;
    let mut rows: Vec<store::SalespersonRow> = store::salespeople_query(
        input.pattern.as_deref(),
        team,
        &input.ids,
        page.after.as_ref(),
        page.limit(),
    )
    .build_query_as()
    .fetch_all(pool)
    .await?;
    let next_page_token =
        page.next_token(&mut rows, |last| (last.sort_name.clone(), last.id.clone()));
    Ok(pb::ListSalespeopleResponse {
        salespeople: rows.iter().map(convert::salesperson_to_proto).collect(),
        next_page_token,
    })
}
