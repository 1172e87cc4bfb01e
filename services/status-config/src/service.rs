//! One function per call of the status configuration. Each write runs in one transaction,
//! serialized with the other configuration writes, so positions and the default (R4) are
//! always decided on the current state; a failed call rolls back and changes nothing.

use salesopp_kit::error::{ApiError, ApiResult, Reason, violated_constraint};
use salesopp_kit::idempotency::{self, Claim, Retry};
use salesopp_kit::paging;
use salesopp_kit::{Admin, Principal, Sales};
use salesopp_proto::statusconfig::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::convert::{self, status_to_proto};
use crate::domain::{StatusKind, StatusPatch, probability_for};
use crate::store::{self, StatusRow};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 500;

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
    request: &pb::ListStatusesRequest,
) -> ApiResult<pb::ListStatusesResponse> {
    let page_size = paging::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let fingerprint = paging::fingerprint(&("statuses", request.show_archived));
    let after: Option<i32> = paging::decode(&request.page_token, &fingerprint)?;
    let mut rows =
        store::list(pool, request.show_archived, after, i64::from(page_size) + 1).await?;
    let next_page_token = if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|last| paging::encode(&fingerprint, &last.position))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListStatusesResponse {
        statuses: rows.iter().map(status_to_proto).collect(),
        next_page_token,
    })
}

pub async fn get(pool: &PgPool, _caller: Sales<'_>, id: Uuid) -> ApiResult<pb::OpportunityStatus> {
    let row = store::get(pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
    Ok(status_to_proto(&row))
}

pub async fn create(
    pool: &PgPool,
    caller: Admin<'_>,
    request: &pb::CreateStatusRequest,
) -> ApiResult<pb::OpportunityStatus> {
    let caller: &Principal = &caller;
    let status = convert::new_status(request)?;
    let request_id = (!request.request_id.is_empty()).then_some(request.request_id.as_str());
    let mut tx = pool.begin().await?;
    const METHOD: &str = "CreateStatus";
    if let Claim::Replay(first) =
        idempotency::claim(&mut tx, &caller.id, METHOD, request_id, request).await?
    {
        return Ok(first);
    }
    store::lock_for_configuration(&mut tx).await?;
    let live = store::list_live(&mut tx).await?;
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
    let row = store::insert(&mut tx, &status, position)
        .await
        .map_err(map_write_error)?;
    let response = status_to_proto(&row);
    idempotency::complete(&mut tx, &caller.id, METHOD, request_id, &response).await?;
    tx.commit().await.map_err(map_write_error)?;
    tracing::info!(status_id = %row.id, actor = %caller.id, "status created");
    Ok(response)
}

pub async fn update(
    pool: &PgPool,
    caller: Admin<'_>,
    retry: Retry<'_, pb::UpdateStatusRequest>,
    id: Uuid,
    etag: Option<&str>,
    patch: StatusPatch,
) -> ApiResult<pb::OpportunityStatus> {
    let caller: &Principal = &caller;
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    store::lock_for_configuration(&mut tx).await?;
    let current = load(&mut tx, id).await?;
    check_etag(&current, etag)?;
    let kind = current.kind();
    let probability = match patch.probability {
        Some(raw) => probability_for(kind, raw)
            .map_err(|why| ApiError::invalid("status.probability", why))?
            .into(),
        None => current.probability,
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
    let row = store::update(&mut tx, id, display_name, localized_names, probability)
        .await
        .map_err(map_write_error)?;
    let response = status_to_proto(&row);
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await.map_err(map_write_error)?;
    tracing::info!(status_id = %id, actor = %caller.id, "status updated");
    Ok(response)
}

pub async fn set_default(
    pool: &PgPool,
    caller: Admin<'_>,
    retry: Retry<'_, pb::SetDefaultStatusRequest>,
    id: Uuid,
    etag: Option<&str>,
) -> ApiResult<pb::OpportunityStatus> {
    let caller: &Principal = &caller;
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    store::lock_for_configuration(&mut tx).await?;
    let current = load(&mut tx, id).await?;
    check_etag(&current, etag)?;
    if current.archived {
        return Err(ApiError::failed_precondition(
            Reason::StatusArchived,
            id.to_string(),
            "an archived status cannot be the default",
        ));
    }
    if current.kind() != StatusKind::Open {
        return Err(ApiError::failed_precondition(
            Reason::StatusNotOpen,
            id.to_string(),
            "the default status must be an OPEN status (R4)",
        ));
    }
    if current.is_default {
        return Ok(status_to_proto(&current));
    }
    let row = store::set_default(&mut tx, id).await?;
    let response = status_to_proto(&row);
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await?;
    tracing::info!(status_id = %id, actor = %caller.id, "default status set");
    Ok(response)
}

pub async fn delete(
    pool: &PgPool,
    caller: Admin<'_>,
    retry: Retry<'_, pb::DeleteStatusRequest>,
    id: Uuid,
    replacement: Option<Uuid>,
    etag: Option<&str>,
) -> ApiResult<pb::DeleteStatusResponse> {
    let caller: &Principal = &caller;
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    store::lock_for_configuration(&mut tx).await?;
    // Locked so that no opportunity enters it unseen between the count below and the commit.
    let current = store::get_for_update(&mut tx, id)
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
    check_etag(&current, etag)?;
    if current.kind() != StatusKind::Open {
        return Err(ApiError::failed_precondition(
            Reason::StatusClosing,
            id.to_string(),
            format!(
                "the {} status can be renamed but never deleted (R3)",
                current.kind().as_str()
            ),
        ));
    }
    if current.is_default {
        return Err(ApiError::failed_precondition(
            Reason::StatusIsDefault,
            id.to_string(),
            "the default status cannot be deleted: make another status the default first (R6)",
        ));
    }
    if let Some(replacement) = replacement {
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
    }
    let in_use = store::opportunities_in(&mut tx, id).await?;
    let moved = match (in_use, replacement) {
        (0, _) => 0,
        (_, None) => {
            return Err(ApiError::failed_precondition(
                Reason::StatusInUse,
                id.to_string(),
                match in_use {
                    1 => "1 opportunity is in this status: name a replacement_status_id to move it to (R6)".to_owned(),
                    n => format!("{n} opportunities are in this status: name a replacement_status_id to move them to (R6)"),
                },
            ));
        }
        // Each move is a normal status change (history entry and event), made by the one
        // implementation the opportunity service uses, in this transaction.
        (_, Some(replacement)) => {
            salesopp_kit::people::record(&mut tx, caller).await?;
            let note = format!("status {:?} was deleted", current.display_name);
            salesopp_opportunity::status_change::move_all(&mut tx, id, replacement, &note, caller)
                .await?
        }
    };
    let row = store::archive(&mut tx, id).await?;
    let response = pb::DeleteStatusResponse {
        status: Some(status_to_proto(&row)),
        moved_opportunity_count: moved,
    };
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await?;
    tracing::info!(status_id = %id, actor = %caller.id, "status archived");
    Ok(response)
}

pub async fn reorder(
    pool: &PgPool,
    caller: Admin<'_>,
    retry: Retry<'_, pb::ReorderStatusesRequest>,
    ids: &[Uuid],
) -> ApiResult<pb::ReorderStatusesResponse> {
    let caller: &Principal = &caller;
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    store::lock_for_configuration(&mut tx).await?;
    let live = store::list_live(&mut tx).await?;
    let mut violations = salesopp_kit::FieldViolations::new();
    for (index, id) in ids.iter().enumerate() {
        if !live.iter().any(|s| s.id == *id) {
            violations.add(
                format!("status_ids[{index}]"),
                format!("{id} is not a non-archived status"),
            );
        }
    }
    for status in &live {
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
    violations.into_result()?;
    store::reorder(&mut tx, ids).await?;
    let rows = store::list_live(&mut tx).await?;
    let response = pb::ReorderStatusesResponse {
        statuses: rows.iter().map(status_to_proto).collect(),
    };
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await?;
    tracing::info!(actor = %caller.id, "statuses reordered");
    Ok(response)
}
