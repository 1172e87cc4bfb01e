//! The batch calls (R21): BatchCreateOpportunities and BatchChangeOpportunityStatus. Each
//! item goes through the rules of its single call (the same rule functions of `service`),
//! read and written for the whole batch at once: one statement claims the items' request
//! ids, one reads their statuses, one their customers or rows, one writes the opportunities,
//! one their history entries, one their events.

use std::collections::{HashMap, HashSet};

use salesopp_kit::batch::Items;
use salesopp_kit::error::{ApiError, ApiResult};
use salesopp_kit::idempotency::write;
use salesopp_kit::{Principal, Sales, people};
use salesopp_proto::opportunity::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::convert::{
    self, BatchChangeInput, BatchCreateInput, ChangeInput, NewOpportunityInput,
    opportunity_to_proto, status_change_to_proto,
};
use crate::domain::{self, Visibility};
use crate::service::{
    check_etag, customer_takes_opportunities, owner_allowed, usable_status, visible, with_durations,
};
use crate::status_change::{self, Change, Event};
use crate::store::{self, NewStatusChange, Overrides, StatusInfo};

/// The distinct values of `values`, sorted (the order locks are taken in).
fn distinct<T: Ord + Copy>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut values: Vec<T> = values.collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// R21 for CreateOpportunity: every item checked as the single call checks it (R5 default
/// status, R1 customer, R12 owner), then all written at one moment.
pub async fn create(
    pool: &PgPool,
    caller: Sales<'_>,
    input: BatchCreateInput,
) -> ApiResult<pb::BatchCreateOpportunitiesResponse> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let BatchCreateInput(batch) = input;
    let retry = batch.retry.clone();
    let response = write(pool, caller, &retry, async |tx| {
        let mut items: Items<NewOpportunityInput, pb::Opportunity> = Items::new(batch);
        items.claim(tx, &caller.id, |input| &input.retry).await?;
        // Statuses, then customers, then the new rows: the order of the single call.
        let named = distinct(items.pending().filter_map(|(_, input)| input.status_id));
        let statuses: HashMap<Uuid, StatusInfo> = store::share_statuses(tx, &named)
            .await?
            .into_iter()
            .map(|status| (status.id, status))
            .collect();
        let default = match items.pending().any(|(_, input)| input.status_id.is_none()) {
            true => Some(store::share_default_status(tx).await?),
            false => None,
        };
        let customer_ids = distinct(items.pending().map(|(_, input)| input.customer_id));
        let customers: HashMap<Uuid, bool> = store::share_customers(tx, &customer_ids)
            .await?
            .into_iter()
            .collect();
        let owner = |input: &NewOpportunityInput| -> String {
            input.owner_id.clone().unwrap_or_else(|| caller.id.clone())
        };
        let others: Vec<String> = items
            .pending()
            .map(|(_, input)| owner(input))
            .filter(|id| *id != caller.id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let teams = people::teams_of(tx, &others).await?;
        let mut checked: Vec<(usize, StatusInfo, String)> = Vec::new();
        let mut refused = Vec::new();
        for (index, input) in items.pending() {
            let status = match input.status_id {
                Some(id) => usable_status("opportunity.status_id", id, statuses.get(&id).cloned()),
                None => default
                    .clone()
                    .ok_or_else(|| ApiError::internal("the default status was not read")),
            };
            let owner_id = owner(input);
            let result = status.and_then(|status| {
                domain::check_lost_reason(
                    "opportunity.lost_reason",
                    status.kind,
                    input.lost_reason.is_some(),
                )?;
                customer_takes_opportunities(
                    input.customer_id,
                    customers.get(&input.customer_id).copied(),
                )?;
                if owner_id != caller.id {
                    owner_allowed(
                        &visibility,
                        "opportunity.owner_id",
                        &owner_id,
                        teams.get(&owner_id).cloned(),
                    )?;
                }
                Ok(status)
            });
            match result {
                Ok(status) => checked.push((index, status, owner_id)),
                Err(error) => refused.push((index, error)),
            }
        }
        for (index, error) in refused {
            items.fail(index, error);
        }
        if items.atomic_failed() {
            return Err(items.atomic_failure());
        }
        if checked.is_empty() {
            let (opportunities, errors) = items.finish(tx, &caller.id).await?;
            return Ok(pb::BatchCreateOpportunitiesResponse {
                opportunities,
                errors,
            });
        }
        let time = store::clock(tx).await?;
        let ids: Vec<Uuid> = checked.iter().map(|_| Uuid::new_v4()).collect();
        let new: Vec<store::NewOpportunity> = checked
            .iter()
            .zip(&ids)
            .map(|((index, status, owner_id), id)| {
                let input = items.input(*index);
                store::NewOpportunity {
                    id: *id,
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
                }
            })
            .collect();
        store::insert_many(tx, &new, &caller.id, time).await?;
        // R9: each first status is its first history entry.
        let entries: Vec<NewStatusChange> = checked
            .iter()
            .zip(&ids)
            .map(|((index, status, _), id)| {
                let input = items.input(*index);
                NewStatusChange {
                    opportunity_id: *id,
                    from: None,
                    to: status,
                    actor_id: &caller.id,
                    actor_name: &caller.display_name,
                    time,
                    note: &input.note,
                    amount: input.amount.as_ref(),
                    lost_reason: input.lost_reason.as_deref(),
                    request_id: input.retry.request_id(),
                    from_manual_probability: None,
                    to_manual_probability: None,
                }
            })
            .collect();
        let mut entries: HashMap<Uuid, store::StatusChangeRow> =
            store::append_status_changes(tx, &entries)
                .await?
                .into_iter()
                .map(|entry| (entry.opportunity_id, entry))
                .collect();
        drop(new);
        let mut rows: HashMap<Uuid, store::OpportunityRow> = store::get_many(tx, &ids)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        let mut events = Vec::with_capacity(ids.len());
        let mut created = Vec::with_capacity(ids.len());
        for ((index, _, _), id) in checked.iter().zip(&ids) {
            let (Some(row), Some(entry)) = (rows.remove(id), entries.remove(id)) else {
                return Err(ApiError::internal("a created opportunity is not readable"));
            };
            let request_id = items.input(*index).retry.request_id();
            let mut opportunity = opportunity_to_proto(&row);
            let event = Event::new(
                status_change::CREATED,
                caller,
                time,
                None,
                opportunity.clone(),
                Some(status_change_to_proto(&entry)),
                request_id,
            )?;
            opportunity.version = event.version;
            events.push((event, request_id));
            created.push(opportunity);
        }
        let outbox: Vec<_> = events
            .iter()
            .map(|(event, request_id)| event.row(caller, time, *request_id))
            .collect();
        salesopp_outbox::append_many(tx, &outbox).await?;
        // R15: a new opportunity has been in its first status once, since the write's clock;
        // known without reading it back (the history trigger wrote the same row).
        for (((_, status, _), id), opportunity) in checked.iter().zip(&ids).zip(&mut created) {
            opportunity.status_durations = vec![convert::status_duration_to_proto(
                &store::StatusDurationRow::first(*id, status, time),
            )];
        }
        for ((index, _, _), opportunity) in checked.iter().zip(created) {
            items.done(*index, opportunity);
        }
        let (opportunities, errors) = items.finish(tx, &caller.id).await?;
        Ok(pb::BatchCreateOpportunitiesResponse {
            opportunities,
            errors,
        })
    })
    .await?;
    tracing::info!(
        created = response.opportunities.iter().filter(|o| !o.id.is_empty()).count(),
        failed = response.errors.len(),
        actor = %caller.id,
        "opportunities created in a batch"
    );
    Ok(response)
}

/// R21 for ChangeOpportunityStatus: every item checked as the single call checks it (its
/// target status, lost reason, scope, etag), then all moved at one moment, each with its
/// history entry and STATUS_CHANGED event.
pub async fn change_status(
    pool: &PgPool,
    caller: Sales<'_>,
    input: BatchChangeInput,
) -> ApiResult<pb::BatchChangeOpportunityStatusResponse> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let BatchChangeInput(batch) = input;
    let retry = batch.retry.clone();
    let response = write(pool, caller, &retry, async |tx| {
        let mut items: Items<ChangeInput, pb::ChangeOpportunityStatusResponse> =
            Items::new(batch);
        let mut first_of: HashMap<Uuid, usize> = HashMap::new();
        let mut repeated = Vec::new();
        for (index, input) in items.pending() {
            if let Some(first) = first_of.insert(input.opportunity_id, index) {
                first_of.insert(input.opportunity_id, first);
                repeated.push((index, first));
            }
        }
        for (index, first) in repeated {
            items.fail(
                index,
                ApiError::invalid(
                    "opportunity_id",
                    format!(
                        "requests[{first}] changes the same opportunity: one change per opportunity in a batch"
                    ),
                ),
            );
        }
        items.claim(tx, &caller.id, |input| &input.retry).await?;
        // The targets, then the opportunities' own statuses, then their rows: the order of
        // the single call.
        let targets = distinct(items.pending().map(|(_, input)| input.status_id));
        let targets: HashMap<Uuid, StatusInfo> = store::share_statuses(tx, &targets)
            .await?
            .into_iter()
            .map(|status| (status.id, status))
            .collect();
        let ids = distinct(items.pending().map(|(_, input)| input.opportunity_id));
        let mut rows: HashMap<Uuid, store::OpportunityRow> =
            store::lock_many_in_their_statuses(tx, &ids)
                .await?
                .into_iter()
                .map(|row| (row.id, row))
                .collect();
        // (index, the row as locked, its target), for the items that move.
        let mut moving: Vec<(usize, store::OpportunityRow, StatusInfo)> = Vec::new();
        let mut outcomes = Vec::new();
        for (index, input) in items.pending() {
            let checked = usable_status(
                "status_id",
                input.status_id,
                targets.get(&input.status_id).cloned(),
            )
            .and_then(|target| {
                domain::check_lost_reason("lost_reason", target.kind, input.lost_reason.is_some())?;
                let current = visible(
                    &visibility,
                    input.opportunity_id,
                    rows.remove(&input.opportunity_id),
                )?;
                check_etag(&current, input.etag.as_ref())?;
                Ok((current, target))
            });
            match checked {
                // R8: moving to the status it already has records nothing.
                Ok((current, target)) if current.status_id == target.id => {
                    outcomes.push((index, Ok(current)))
                }
                Ok((current, target)) => moving.push((index, current, target)),
                Err(error) => outcomes.push((index, Err(error))),
            }
        }
        let mut unchanged = Vec::new();
        for (index, outcome) in outcomes {
            match outcome {
                Ok(current) => unchanged.push((index, opportunity_to_proto(&current))),
                Err(error) => items.fail(index, error),
            }
        }
        if items.atomic_failed() {
            return Err(items.atomic_failure());
        }
        let moves: Vec<store::Move> = moving
            .iter()
            .map(|(index, current, target)| store::Move {
                id: current.id,
                status: target,
                lost_reason: items.input(*index).lost_reason.as_deref(),
            })
            .collect();
        let mut moved: HashMap<Uuid, store::Moved> =
            store::move_many_to_status(tx, &moves, &caller.id)
                .await?
                .into_iter()
                .collect();
        drop(moves);
        let no_overrides = Overrides::default();
        let mut afters = Vec::with_capacity(moving.len());
        for (index, current, target) in &moving {
            let input = items.input(*index);
            let change = Change {
                to: target,
                note: &input.note,
                lost_reason: input.lost_reason.as_deref(),
                request_id: input.retry.request_id(),
                overrides: &no_overrides,
            };
            let done = moved
                .remove(&current.id)
                .ok_or_else(|| ApiError::internal("a locked opportunity was not moved"))?;
            afters.push(status_change::moved_row(current, &change, done, caller));
        }
        let froms: Vec<StatusInfo> = moving
            .iter()
            .map(|(_, current, _)| status_change::current_status(current))
            .collect();
        let amounts: Vec<Option<domain::Money>> =
            moving.iter().map(|(_, current, _)| current.money()).collect();
        let entries: Vec<NewStatusChange> = moving
            .iter()
            .zip(&froms)
            .zip(&afters)
            .zip(&amounts)
            .map(|((((index, current, target), from), after), amount)| {
                let input = items.input(*index);
                NewStatusChange {
                    opportunity_id: current.id,
                    from: Some((from, current.status_change_time)),
                    to: target,
                    actor_id: &caller.id,
                    actor_name: &caller.display_name,
                    time: after.status_change_time,
                    note: &input.note,
                    amount: amount.as_ref(),
                    lost_reason: input.lost_reason.as_deref(),
                    request_id: input.retry.request_id(),
                    from_manual_probability: current.manual_probability,
                    to_manual_probability: None,
                }
            })
            .collect();
        let mut written: HashMap<Uuid, store::StatusChangeRow> =
            store::append_status_changes(tx, &entries)
                .await?
                .into_iter()
                .map(|entry| (entry.opportunity_id, entry))
                .collect();
        drop(entries);
        let mut events = Vec::with_capacity(moving.len());
        let mut answers = Vec::with_capacity(moving.len() + unchanged.len());
        for ((index, current, _), after) in moving.iter().zip(afters) {
            let entry = written
                .remove(&current.id)
                .ok_or_else(|| ApiError::internal("a moved opportunity has no history entry"))?;
            let request_id = items.input(*index).retry.request_id();
            let status_change = status_change_to_proto(&entry);
            let mut opportunity = opportunity_to_proto(&after);
            let event = Event::new(
                status_change::STATUS_CHANGED,
                caller,
                after.status_change_time,
                Some(opportunity_to_proto(current)),
                opportunity.clone(),
                Some(status_change.clone()),
                request_id,
            )?;
            opportunity.version = event.version;
            events.push((event, request_id, after.status_change_time));
            answers.push((*index, opportunity, Some(status_change)));
        }
        let outbox: Vec<_> = events
            .iter()
            .map(|(event, request_id, time)| event.row(caller, *time, *request_id))
            .collect();
        salesopp_outbox::append_many(tx, &outbox).await?;
        answers.extend(
            unchanged
                .into_iter()
                .map(|(index, opportunity)| (index, opportunity, None)),
        );
        let mut opportunities: Vec<pb::Opportunity> =
            answers.iter().map(|(_, o, _)| o.clone()).collect();
        with_durations(&mut *tx, &mut opportunities).await?;
        for ((index, _, status_change), opportunity) in answers.into_iter().zip(opportunities) {
            items.done(
                index,
                pb::ChangeOpportunityStatusResponse {
                    opportunity: Some(opportunity),
                    status_change,
                },
            );
        }
        let (responses, errors) = items.finish(tx, &caller.id).await?;
        Ok(pb::BatchChangeOpportunityStatusResponse { responses, errors })
    })
    .await?;
    tracing::info!(
        changed = response.responses.iter().filter(|r| r.status_change.is_some()).count(),
        failed = response.errors.len(),
        actor = %caller.id,
        "opportunity statuses changed in a batch"
    );
    Ok(response)
}
