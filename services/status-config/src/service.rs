//! One function per call of the status configuration. Each write runs in one transaction,
//! serialized with the other configuration writes, so positions and the default (R4) are
//! always decided on the current state; a failed call rolls back and changes nothing.

use salesopp_kit::error::{ApiError, ApiResult, Reason, violated_constraint};
use salesopp_kit::idempotency::write;
use salesopp_kit::{Admin, Principal, Sales};
use salesopp_proto::statusconfig::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::status_to_proto;
use crate::domain::input::{
    CreateStatus, DeleteStatus, GetStatus, ListStatuses, ReorderStatuses, SetDefaultStatus,
    UpdateStatus,
};
use crate::domain::{StatusKind, forecast_category_for, probability_for, stale_after_days_for};
use crate::store::{self, StatusRow};

const RESOURCE: &str = "status";

fn map_write_error(error: sqlx::Error) -> ApiError {
    match violated_constraint(&error) {
        Some("status_live_name_unique_idx") => ApiError::AlreadyExists {
            reason: Reason::StatusNameTaken,
            resource: RESOURCE,
            field: "display_name",
            message:
                "a status with this display_name already exists (names are unique, ignoring case)"
                    .into(),
        },
        _ => error.into(),
    }
}

async fn load(tx: &mut sqlx::PgConnection, id: Uuid) -> ApiResult<StatusRow> {
    store::get(tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))
}

fn check_etag(row: &StatusRow, etag: Option<&str>) -> ApiResult<()> {
    match etag {
        Some(etag) if etag != row.etag() => Err(ApiError::stale_etag(RESOURCE)),
        _ => Ok(()),
    }
}

pub async fn list(
    pool: &PgPool,
    _caller: Sales<'_>,
    input: ListStatuses,
) -> ApiResult<pb::ListStatusesResponse> {
    let page = input.page.open(&("statuses", input.show_archived))?;
    let mut rows = store::list(pool, input.show_archived, page.after, page.limit()).await?;
    let next_page_token = page.next_token(&mut rows, |last| last.position);
    Ok(pb::ListStatusesResponse {
        statuses: rows.iter().map(status_to_proto).collect(),
        next_page_token,
    })
}

pub async fn get(
    pool: &PgPool,
    _caller: Sales<'_>,
    input: GetStatus,
) -> ApiResult<pb::OpportunityStatus> {
    let row = store::get(pool, input.id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, input.id.to_string()))?;
    Ok(status_to_proto(&row))
}

pub async fn create(
    pool: &PgPool,
    caller: Admin<'_>,
    input: CreateStatus,
) -> ApiResult<pb::OpportunityStatus> {
    let caller: &Principal = &caller;
    let status = &input.status;
    let response = write(pool, caller, &input.retry, async |tx| {
        store::lock_for_configuration(tx).await?;
        let live = store::list_live(tx).await?;
        let after_last_open = live
            .iter()
            .filter(|s| s.kind() == StatusKind::Open)
            .map(|s| s.position)
            .max()
            .unwrap_or(0)
            + 1;
        let position = match status.position {
            None => after_last_open,
            Some(wanted) => i32::try_from(wanted)
                .unwrap_or(i32::MAX)
                .min(live.len() as i32 + 1),
        };
        let row = store::insert(tx, status, position, &caller.id)
            .await
            .map_err(map_write_error)?;
        Ok(status_to_proto(&row))
    })
    .await?;
    tracing::info!(status_id = %response.id, actor = %caller.id, "status created");
    Ok(response)
}

pub async fn update(
    pool: &PgPool,
    caller: Admin<'_>,
    input: UpdateStatus,
) -> ApiResult<pb::OpportunityStatus> {
    let caller: &Principal = &caller;
    let UpdateStatus {
        id,
        etag,
        patch,
        retry,
    } = input;
    let response = write(pool, caller, &retry, async |tx| {
        store::lock_for_configuration(tx).await?;
        let current = load(tx, id).await?;
        check_etag(&current, etag.as_deref())?;
        let probability = match patch.probability {
            Some(raw) => probability_for(current.kind(), raw)
                .map_err(|why| ApiError::invalid("status.probability", why))?
                .into(),
            None => current.probability,
        };
        let stale_after_days = match patch.stale_after_days {
            Some(raw) => stale_after_days_for(current.kind(), raw)
                .map_err(|why| ApiError::invalid("status.stale_after_days", why))?,
            None => current.stale_after_days,
        };
        let forecast_category = match patch.forecast_category {
            Some(raw) => forecast_category_for(current.kind(), raw)
                .map_err(|why| ApiError::invalid("status.forecast_category", why))?,
            None => current.forecast_category.clone(),
        };
        let display_name = patch
            .display_name
            .as_ref()
            .map_or(current.display_name.as_str(), |name| name.as_str());
        // R2: a language left out of new names is named by the (new or current) display name.
        let localized_names = patch
            .localized_names
            .map(|names| names.with_defaults(display_name));
        let localized_names = localized_names
            .as_ref()
            .map_or(&current.localized_names.0, |names| names.as_map());
        let values = store::StatusValues {
            display_name,
            localized_names,
            probability,
            stale_after_days,
            forecast_category: &forecast_category,
        };
        let row = store::update(tx, id, &values, &caller.id)
            .await
            .map_err(map_write_error)?;
        Ok(status_to_proto(&row))
    })
    .await?;
    tracing::info!(status_id = %id, actor = %caller.id, "status updated");
    Ok(response)
}

pub async fn set_default(
    pool: &PgPool,
    caller: Admin<'_>,
    input: SetDefaultStatus,
) -> ApiResult<pb::OpportunityStatus> {
    let caller: &Principal = &caller;
    let id = input.id;
    let response = write(pool, caller, &input.retry, async |tx| {
        store::lock_for_configuration(tx).await?;
        let current = load(tx, id).await?;
        check_etag(&current, input.etag.as_deref())?;
        check_can_be_default(&current)?;
        if current.is_default {
            return Ok(status_to_proto(&current));
        }
        Ok(status_to_proto(&store::set_default(tx, id).await?))
    })
    .await?;
    tracing::info!(status_id = %id, actor = %caller.id, "default status set");
    Ok(response)
}

/// R4: the default is a current OPEN status.
fn check_can_be_default(status: &StatusRow) -> ApiResult<()> {
    if status.archived {
        return Err(ApiError::failed_precondition(
            Reason::StatusArchived,
            status.id.to_string(),
            "an archived status cannot be the default",
        ));
    }
    if status.kind() != StatusKind::Open {
        return Err(ApiError::failed_precondition(
            Reason::StatusNotOpen,
            status.id.to_string(),
            "the default status must be an OPEN status (R4)",
        ));
    }
    Ok(())
}

pub async fn delete(
    pool: &PgPool,
    caller: Admin<'_>,
    input: DeleteStatus,
) -> ApiResult<pb::DeleteStatusResponse> {
    let caller: &Principal = &caller;
    let id = input.id;
    let response = write(pool, caller, &input.retry, async |tx| {
        store::lock_for_configuration(tx).await?;
        // Locked so that no opportunity enters it unseen between the count and the commit.
        let current = store::get_for_update(tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
        // AIP-135: deleting what is already archived answers it, whatever the etag (a retry
        // of a delete that succeeded carries the etag from before it).
        if current.archived {
            return Ok(pb::DeleteStatusResponse {
                status: Some(status_to_proto(&current)),
                moved_opportunity_count: 0,
            });
        }
        check_etag(&current, input.etag.as_deref())?;
        check_deletable(&current)?;
        if let Some(replacement) = input.replacement {
            check_replacement(tx, id, replacement).await?;
        }
        let moved = move_opportunities(tx, caller, &current, input.replacement).await?;
        let row = store::archive(tx, id).await?;
        Ok(pb::DeleteStatusResponse {
            status: Some(status_to_proto(&row)),
            moved_opportunity_count: moved,
        })
    })
    .await?;
    tracing::info!(status_id = %id, actor = %caller.id, "status archived");
    Ok(response)
}

/// R3, R6: only an OPEN status that is not the default can be deleted.
fn check_deletable(status: &StatusRow) -> ApiResult<()> {
    if status.kind() != StatusKind::Open {
        return Err(ApiError::failed_precondition(
            Reason::StatusClosing,
            status.id.to_string(),
            format!(
                "the {} status can be renamed but never deleted (R3)",
                status.kind().as_str()
            ),
        ));
    }
    if status.is_default {
        return Err(ApiError::failed_precondition(
            Reason::StatusIsDefault,
            status.id.to_string(),
            "the default status cannot be deleted: make another status the default first (R6)",
        ));
    }
    Ok(())
}

/// R6: the replacement is another current OPEN status.
async fn check_replacement(tx: &mut PgConnection, id: Uuid, replacement: Uuid) -> ApiResult<()> {
    if replacement == id {
        return Err(ApiError::invalid(
            "replacement_status_id",
            "the replacement must be another status",
        ));
    }
    let target = store::get(&mut *tx, replacement).await?.ok_or_else(|| {
        ApiError::invalid(
            "replacement_status_id",
            format!("no status has the id {replacement}"),
        )
    })?;
    if target.archived || target.kind() != StatusKind::Open {
        return Err(ApiError::invalid(
            "replacement_status_id",
            "the replacement must be a non-archived OPEN status (R6)",
        ));
    }
    Ok(())
}

/// R6: the opportunities still in `status` move to `replacement`, each by a normal status
/// change (history entry and event) of the one implementation the opportunity service uses,
/// in this transaction; without a replacement, a status in use is not deleted.
async fn move_opportunities(
    tx: &mut PgConnection,
    caller: &Principal,
    status: &StatusRow,
    replacement: Option<Uuid>,
) -> ApiResult<i64> {
    let in_use = store::opportunities_in(tx, status.id).await?;
    match (in_use, replacement) {
        (0, _) => Ok(0),
        (_, None) => Err(ApiError::failed_precondition(
            Reason::StatusInUse,
            status.id.to_string(),
            match in_use {
                1 => "1 opportunity is in this status: name a replacement_status_id to move it to (R6)".to_owned(),
                n => format!("{n} opportunities are in this status: name a replacement_status_id to move them to (R6)"),
            },
        )),
        (_, Some(replacement)) => {
            let note = format!("status {:?} was deleted", status.display_name);
            salesopp_opportunity::status_change::move_all(tx, status.id, replacement, &note, caller)
                .await
        }
    }
}

pub async fn reorder(
    pool: &PgPool,
    caller: Admin<'_>,
    input: ReorderStatuses,
) -> ApiResult<pb::ReorderStatusesResponse> {
    let caller: &Principal = &caller;
    let ids = &input.ids;
    let response = write(pool, caller, &input.retry, async |tx| {
        store::lock_for_configuration(tx).await?;
        let live = store::list_live(tx).await?;
        check_order(&live, ids)?;
        store::reorder(tx, ids).await?;
        let rows = store::list_live(tx).await?;
        Ok(pb::ReorderStatusesResponse {
            statuses: rows.iter().map(status_to_proto).collect(),
        })
    })
    .await?;
    tracing::info!(actor = %caller.id, "statuses reordered");
    Ok(response)
}

/// R2: a new pipeline order names every non-archived status once, and nothing else.
fn check_order(live: &[StatusRow], ids: &[Uuid]) -> ApiResult<()> {
    let mut violations = salesopp_kit::FieldViolations::new();
    for (index, id) in ids.iter().enumerate() {
        if !live.iter().any(|s| s.id == *id) {
            violations.add(
                format!("status_ids[{index}]"),
                format!("{id} is not a non-archived status"),
            );
        }
    }
    for status in live {
        if !ids.contains(&status.id) {
            violations.add(
                "status_ids",
                format!(
                    "missing {} ({}): list every non-archived status",
                    status.id, status.display_name
                ),
            );
        }
    }
    violations.into_result()
}
