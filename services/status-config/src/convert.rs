//! Protobuf <-> domain for the status configuration: every request field is validated here,
//! and every problem is reported as a field violation naming the request's field path.

use salesopp_kit::error::{ApiError, ApiResult, FieldViolations, update_paths};
use salesopp_kit::ids;
use salesopp_kit::time::timestamp;
use salesopp_proto::statusconfig::v1 as pb;
use uuid::Uuid;

use salesopp_kit::idempotency::request_id;
use salesopp_kit::{PageRequest, Retry};

use crate::domain::input::{
    CreateStatus, DeleteStatus, GetStatus, ListStatuses, ReorderStatuses, SetDefaultStatus,
    UpdateStatus,
};
use crate::domain::{
    LocalizedNames, NewStatus, StatusKind, StatusName, StatusPatch, forecast_category_for,
    open_probability, stale_after_days_for,
};
use crate::store::StatusRow;

pub fn kind_to_proto(kind: StatusKind) -> pb::StatusKind {
    match kind {
        StatusKind::Open => pb::StatusKind::Open,
        StatusKind::Won => pb::StatusKind::Won,
        StatusKind::Lost => pb::StatusKind::Lost,
    }
}

pub fn status_to_proto(row: &StatusRow) -> pb::OpportunityStatus {
    pb::OpportunityStatus {
        id: row.id.to_string(),
        display_name: row.display_name.clone(),
        localized_names: row.localized_names.0.clone(),
        probability: i32::from(row.probability),
        kind: kind_to_proto(row.kind()).into(),
        position: row.position,
        is_default: row.is_default,
        archived: row.archived,
        etag: row.etag(),
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        stale_after_days: row.stale_after_days,
        forecast_category: salesopp_proto::common::v1::ForecastCategory::from_str_name(&format!(
            "FORECAST_CATEGORY_{}",
            row.forecast_category
        ))
        .unwrap_or_default()
        .into(),
    }
}

fn names(
    violations: &mut FieldViolations,
    field: &str,
    status: &pb::OpportunityStatus,
) -> Option<LocalizedNames> {
    match LocalizedNames::parse(&status.localized_names) {
        Ok(names) => Some(names),
        Err(problems) => {
            for (suffix, why) in problems {
                violations.add(format!("{field}{suffix}"), why);
            }
            None
        }
    }
}

/// CreateStatus: only OPEN statuses can be created (R3).
fn new_status(request: &pb::CreateStatusRequest) -> ApiResult<NewStatus> {
    let mut violations = FieldViolations::new();
    salesopp_kit::idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let Some(status) = &request.status else {
        violations.add("status", "required");
        return Err(violations.into_result().unwrap_err());
    };
    let display_name = violations.check(
        "status.display_name",
        StatusName::parse(&status.display_name),
    );
    let localized_names = names(&mut violations, "status.localized_names", status);
    match pb::StatusKind::try_from(status.kind) {
        Ok(pb::StatusKind::Unspecified | pb::StatusKind::Open) => {}
        Ok(pb::StatusKind::Won | pb::StatusKind::Lost) => violations.add(
            "status.kind",
            "only OPEN statuses can be created: the WON and LOST statuses exist exactly once (R3)",
        ),
        Err(_) => violations.add("status.kind", format!("unknown kind {}", status.kind)),
    }
    let probability = violations.check("status.probability", open_probability(status.probability));
    let stale_after_days = violations.check(
        "status.stale_after_days",
        stale_after_days_for(StatusKind::Open, status.stale_after_days),
    );
    let forecast_category = match status.forecast_category {
        0 => None,
        raw => violations.check(
            "status.forecast_category",
            forecast_category_for(StatusKind::Open, raw),
        ),
    };
    if status.position < 0 {
        violations.add(
            "status.position",
            "must be 0 (after the last OPEN status) or a 1-based position",
        );
    }
    violations.into_result()?;
    match (display_name, localized_names, probability, stale_after_days) {
        (Some(display_name), Some(localized_names), Some(probability), Some(stale_after_days)) => {
            Ok(NewStatus {
                localized_names: localized_names.with_defaults(display_name.as_str()),
                display_name,
                probability,
                stale_after_days,
                forecast_category,
                position: u32::try_from(status.position).ok().filter(|p| *p > 0),
                make_default: status.is_default,
            })
        }
        _ => Err(ApiError::internal("validated status without its values")),
    }
}

/// The paths UpdateStatus may change.
const MUTABLE_PATHS: [&str; 5] = [
    "display_name",
    "localized_names",
    "probability",
    "stale_after_days",
    "forecast_category",
];

/// UpdateStatus: the status id, the etag precondition, and the patch of the masked fields.
fn status_patch(
    request: &pb::UpdateStatusRequest,
) -> ApiResult<(Uuid, Option<String>, StatusPatch)> {
    let mut violations = FieldViolations::new();
    let Some(status) = &request.status else {
        return Err(ApiError::invalid("status", "required"));
    };
    let id = violations.check("status.id", ids::parse_uuid(&status.id, "a status id"));
    salesopp_kit::idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let paths = update_paths(
        request.update_mask.as_ref(),
        &MUTABLE_PATHS,
        &[
            ("display_name", !status.display_name.is_empty()),
            ("localized_names", !status.localized_names.is_empty()),
            ("probability", status.probability != 0),
            ("stale_after_days", status.stale_after_days != 0),
            ("forecast_category", status.forecast_category != 0),
        ],
        &mut violations,
    );
    let star = request
        .update_mask
        .as_ref()
        .is_some_and(|m| m.paths.iter().any(|p| p == "*"));
    let mut patch = StatusPatch::default();
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                patch.display_name = violations.check(
                    "status.display_name",
                    StatusName::parse(&status.display_name),
                );
            }
            "localized_names" => {
                patch.localized_names = names(&mut violations, "status.localized_names", status);
            }
            "probability" => patch.probability = Some(status.probability),
            // Checked against the kind once the status is read. Under `*` an unset category
            // keeps the current one (a client that does not know the field changes nothing).
            "forecast_category" if star && status.forecast_category == 0 => {}
            "forecast_category" => patch.forecast_category = Some(status.forecast_category),
            // The range here, with the other fields; the kind once the status is read.
            "stale_after_days" => {
                patch.stale_after_days = violations.check(
                    "status.stale_after_days",
                    stale_after_days_for(StatusKind::Open, status.stale_after_days),
                );
            }
            "kind" => violations.add("update_mask", "kind is immutable (R3)"),
            "position" => violations.add("update_mask", "position is set with ReorderStatuses"),
            "is_default" => {
                violations.add("update_mask", "the default is set with SetDefaultStatus")
            }
            "archived" => violations.add("update_mask", "statuses are archived with DeleteStatus"),
            "id" | "etag" | "create_time" | "update_time" => {
                violations.add("update_mask", format!("{path} is output only"))
            }
            other => violations.add("update_mask", format!("unknown field {other:?}")),
        }
    }
    violations.into_result()?;
    let etag = (!status.etag.is_empty()).then(|| status.etag.clone());
    Ok((
        id.ok_or_else(|| ApiError::internal("validated id missing"))?,
        etag,
        patch,
    ))
}

/// ReorderStatuses: the ids, each a UUID, none twice.
fn reorder_ids(request: &pb::ReorderStatusesRequest) -> ApiResult<Vec<Uuid>> {
    let mut violations = FieldViolations::new();
    let mut ids = Vec::with_capacity(request.status_ids.len());
    salesopp_kit::idempotency::request_id(&mut violations, "request_id", &request.request_id);
    if request.status_ids.is_empty() {
        violations.add(
            "status_ids",
            "required: every non-archived status id, in the new order",
        );
    }
    for (index, raw) in request.status_ids.iter().enumerate() {
        if let Some(id) = violations.check(
            &format!("status_ids[{index}]"),
            ids::parse_uuid(raw, "a status id"),
        ) {
            if ids.contains(&id) {
                violations.add(
                    format!("status_ids[{index}]"),
                    format!("{id} is listed twice"),
                );
            }
            ids.push(id);
        }
    }
    violations.into_result()?;
    Ok(ids)
}

/// Page sizes of ListStatuses.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 500;

fn optional(etag: &str) -> Option<String> {
    (!etag.is_empty()).then(|| etag.to_owned())
}

impl TryFrom<&pb::ListStatusesRequest> for ListStatuses {
    type Error = ApiError;

    fn try_from(request: &pb::ListStatusesRequest) -> ApiResult<Self> {
        Ok(Self {
            show_archived: request.show_archived,
            page: PageRequest::new(
                request.page_size,
                &request.page_token,
                DEFAULT_PAGE_SIZE,
                MAX_PAGE_SIZE,
            )?,
        })
    }
}

impl TryFrom<&pb::GetStatusRequest> for GetStatus {
    type Error = ApiError;

    fn try_from(request: &pb::GetStatusRequest) -> ApiResult<Self> {
        Ok(Self {
            id: ids::uuid_field("id", &request.id, "a status id")?,
        })
    }
}

impl TryFrom<&pb::CreateStatusRequest> for CreateStatus {
    type Error = ApiError;

    fn try_from(request: &pb::CreateStatusRequest) -> ApiResult<Self> {
        Ok(Self {
            status: new_status(request)?,
            retry: Retry::of("CreateStatus", optional(&request.request_id), request),
        })
    }
}

impl TryFrom<&pb::UpdateStatusRequest> for UpdateStatus {
    type Error = ApiError;

    fn try_from(request: &pb::UpdateStatusRequest) -> ApiResult<Self> {
        let (id, etag, patch) = status_patch(request)?;
        Ok(Self {
            id,
            etag,
            patch,
            retry: Retry::of("UpdateStatus", optional(&request.request_id), request),
        })
    }
}

impl TryFrom<&pb::DeleteStatusRequest> for DeleteStatus {
    type Error = ApiError;

    fn try_from(request: &pb::DeleteStatusRequest) -> ApiResult<Self> {
        let mut violations = FieldViolations::new();
        let id = violations.check("id", ids::parse_uuid(&request.id, "a status id"));
        let replacement = match request.replacement_status_id.as_str() {
            "" => None,
            raw => violations.check("replacement_status_id", ids::parse_uuid(raw, "a status id")),
        };
        let request_id = request_id(&mut violations, "request_id", &request.request_id);
        violations.into_result()?;
        Ok(Self {
            id: id.ok_or_else(|| ApiError::internal("validated id missing"))?,
            replacement,
            etag: optional(&request.etag),
            retry: Retry::of("DeleteStatus", request_id, request),
        })
    }
}

impl TryFrom<&pb::SetDefaultStatusRequest> for SetDefaultStatus {
    type Error = ApiError;

    fn try_from(request: &pb::SetDefaultStatusRequest) -> ApiResult<Self> {
        let mut violations = FieldViolations::new();
        let id = violations.check("id", ids::parse_uuid(&request.id, "a status id"));
        let request_id = request_id(&mut violations, "request_id", &request.request_id);
        violations.into_result()?;
        Ok(Self {
            id: id.ok_or_else(|| ApiError::internal("validated id missing"))?,
            etag: optional(&request.etag),
            retry: Retry::of("SetDefaultStatus", request_id, request),
        })
    }
}

impl TryFrom<&pb::ReorderStatusesRequest> for ReorderStatuses {
    type Error = ApiError;

    fn try_from(request: &pb::ReorderStatusesRequest) -> ApiResult<Self> {
        Ok(Self {
            ids: reorder_ids(request)?,
            retry: Retry::of("ReorderStatuses", optional(&request.request_id), request),
        })
    }
}
