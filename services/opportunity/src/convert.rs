//! Protobuf <-> domain for opportunities: every request field is validated here and every
//! problem is reported as a field violation naming the request's field path.

use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use salesopp_kit::batch::Batch;
use salesopp_kit::error::{ApiError, ApiResult, FieldViolations, update_paths};
use salesopp_kit::idempotency;
use salesopp_kit::ids;
use salesopp_kit::time::timestamp;
use salesopp_kit::{OpportunityState, PageRequest, Retry, StatusKind};
use salesopp_proto::common::v1 as common;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::statusconfig::v1 as spb;
use uuid::Uuid;

use crate::domain::{self, Money};
use crate::store::{
    FieldChangeRow, ListOrder, OpportunityFilter, OpportunityRow, SalespersonRow, StatusChangeRow,
    StatusDurationRow, VelocityRow,
};

pub fn kind_to_proto(kind: StatusKind) -> spb::StatusKind {
    match kind {
        StatusKind::Open => spb::StatusKind::Open,
        StatusKind::Won => spb::StatusKind::Won,
        StatusKind::Lost => spb::StatusKind::Lost,
    }
}

pub fn state_to_proto(state: OpportunityState) -> pb::OpportunityState {
    match state {
        OpportunityState::Open => pb::OpportunityState::Open,
        OpportunityState::Won => pb::OpportunityState::Won,
        OpportunityState::Lost => pb::OpportunityState::Lost,
    }
}

/// R20: a forecast category as stored (`PIPELINE`, ...) as its protobuf value.
pub fn category_to_proto(category: &str) -> common::ForecastCategory {
    common::ForecastCategory::from_str_name(&format!("FORECAST_CATEGORY_{category}"))
        .unwrap_or(common::ForecastCategory::Unspecified)
}

/// R17, R20: where a value comes from.
fn source_to_proto(manual: bool) -> pb::ValueSource {
    if manual {
        pb::ValueSource::Manual
    } else {
        pb::ValueSource::Status
    }
}

pub fn money_to_proto(money: &Money) -> common::Money {
    common::Money {
        currency_code: money.currency_code.clone(),
        units: money.units,
        nanos: money.nanos,
    }
}

pub fn date_to_proto(date: NaiveDate) -> common::Date {
    common::Date {
        year: date.year(),
        month: date.month() as i32,
        day: date.day() as i32,
    }
}

pub fn opportunity_to_proto(row: &OpportunityRow) -> pb::Opportunity {
    pb::Opportunity {
        id: row.id.to_string(),
        customer_id: row.customer_id.to_string(),
        owner_id: row.owner_id.clone(),
        title: row.title.clone(),
        amount: row.money().as_ref().map(money_to_proto),
        expected_close_date: row.expected_close_date.map(date_to_proto),
        status_id: row.status_id.to_string(),
        status_name: row.status_name.clone(),
        probability: i32::from(row.probability),
        state: state_to_proto(row.state).into(),
        lost_reason: row.lost_reason.clone().unwrap_or_default(),
        next_step: row.next_step.clone().unwrap_or_default(),
        close_time: row.close_time.map(timestamp),
        status_change_time: Some(timestamp(row.status_change_time)),
        etag: row.etag(),
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        created_by: Some(common::Actor {
            id: row.created_by.clone(),
            display_name: row.created_by_name.clone(),
        }),
        updated_by: Some(common::Actor {
            id: row.updated_by.clone(),
            display_name: row.updated_by_name.clone(),
        }),
        version: row.version,
        // Read with one statement per page ([`crate::store::durations`]), by the service.
        status_durations: Vec::new(),
        stale_since: row.stale_since.map(timestamp),
        close_date_push_count: row.close_date_push_count,
        close_date_slip_days: row.close_date_slip_days,
        probability_source: source_to_proto(row.manual_probability.is_some()).into(),
        status_probability: i32::from(row.status_probability),
        forecast_category: category_to_proto(&row.forecast_category).into(),
        forecast_category_source: source_to_proto(row.manual_forecast_category.is_some()).into(),
        status_forecast_category: category_to_proto(&row.status_forecast_category).into(),
    }
}

/// JSON as a `google.protobuf.Value`.
fn json_to_value(json: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields
                .iter()
                .map(|(name, value)| (name.clone(), json_to_value(value)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn field_change_to_proto(row: &FieldChangeRow) -> pb::FieldChange {
    pb::FieldChange {
        opportunity_id: row.opportunity_id.to_string(),
        field: row.field.clone(),
        old_value: Some(json_to_value(&row.old_value)),
        new_value: Some(json_to_value(&row.new_value)),
        changed_by: Some(common::Actor {
            id: row.changed_by_id.clone(),
            display_name: row.changed_by_name.clone(),
        }),
        change_time: Some(timestamp(row.change_time)),
    }
}

pub fn status_change_to_proto(row: &StatusChangeRow) -> pb::StatusChange {
    let from_status = match (
        &row.from_status_id,
        &row.from_display_name,
        &row.from_kind,
        row.from_probability,
    ) {
        (Some(id), Some(name), Some(kind), Some(probability)) => Some(pb::StatusSnapshot {
            id: id.to_string(),
            display_name: name.clone(),
            kind: kind_to_proto(*kind).into(),
            probability: i32::from(probability),
        }),
        _ => None,
    };
    pb::StatusChange {
        id: row.id.to_string(),
        opportunity_id: row.opportunity_id.to_string(),
        from_status,
        to_status: Some(pb::StatusSnapshot {
            id: row.to_status_id.to_string(),
            display_name: row.to_display_name.clone(),
            kind: kind_to_proto(row.to_kind).into(),
            probability: i32::from(row.to_probability),
        }),
        changed_by: Some(common::Actor {
            id: row.changed_by_id.clone(),
            display_name: row.changed_by_name.clone(),
        }),
        change_time: Some(timestamp(row.change_time)),
        note: row.note.clone(),
        amount: Money::from_row(row.currency_code.as_deref(), row.amount.as_deref())
            .as_ref()
            .map(money_to_proto),
        time_in_previous_status: row.micros_in_previous_status.map(duration_to_proto),
        lost_reason: row.lost_reason.clone().unwrap_or_default(),
        request_id: row.request_id.clone().unwrap_or_default(),
        previous_probability: row
            .from_probability
            .map(|status| i32::from(row.from_manual_probability.unwrap_or(status))),
        previous_probability_source: match row.from_probability {
            Some(_) => source_to_proto(row.from_manual_probability.is_some()).into(),
            None => pb::ValueSource::Unspecified.into(),
        },
        probability: i32::from(row.to_manual_probability.unwrap_or(row.to_probability)),
        probability_source: source_to_proto(row.to_manual_probability.is_some()).into(),
    }
}

/// A duration in microseconds, as Postgres measures intervals, as a protobuf Duration.
pub fn duration_to_proto(micros: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn status_duration_to_proto(row: &StatusDurationRow) -> pb::StatusDuration {
    pb::StatusDuration {
        status_id: row.status_id.to_string(),
        display_name: row.display_name.clone(),
        entries: row.entries,
        cumulative: Some(duration_to_proto(row.cumulative_micros)),
        last_entered_time: Some(timestamp(row.last_entered_time)),
        last_exited_time: row.last_exited_time.map(timestamp),
        current_stay: row.current_stay_micros.map(duration_to_proto),
    }
}

pub fn velocity_to_proto(row: &VelocityRow) -> pb::StatusVelocity {
    pb::StatusVelocity {
        status_id: row.status_id.to_string(),
        status_display_name: row.display_name.clone(),
        position: row.position,
        kind: kind_to_proto(row.kind).into(),
        entered_count: row.entered_count,
        exited_count: row.exited_count,
        median_time_in_status: row.median_micros.map(duration_to_proto),
        p90_time_in_status: row.p90_micros.map(duration_to_proto),
        won_count: row.won_count,
        won_share: if row.entered_count == 0 {
            0.0
        } else {
            row.won_count as f64 / row.entered_count as f64
        },
    }
}

pub fn salesperson_to_proto(row: &SalespersonRow) -> pb::Salesperson {
    pb::Salesperson {
        id: row.id.clone(),
        display_name: row.display_name.clone(),
        team: row.team.clone(),
        roles: row.roles.clone(),
        first_seen_time: Some(timestamp(row.first_seen_time)),
        last_seen_time: Some(timestamp(row.last_seen_time)),
    }
}

/// An optional amount: `None` when absent (not known yet) or invalid (a violation each).
fn money(
    violations: &mut FieldViolations,
    field: &str,
    money: Option<&common::Money>,
) -> Option<Money> {
    let money = money?;
    match Money::parse(&money.currency_code, money.units, money.nanos) {
        Ok(money) => Some(money),
        Err(problems) => {
            for (suffix, why) in problems {
                violations.add(format!("{field}{suffix}"), why);
            }
            None
        }
    }
}

pub fn date(
    violations: &mut FieldViolations,
    field: &str,
    date: Option<&common::Date>,
) -> Option<NaiveDate> {
    let date = date?;
    violations.check(field, domain::date(date.year, date.month, date.day))
}

/// A validated CreateOpportunity.
#[derive(Debug, Clone)]
pub struct NewOpportunityInput {
    pub customer_id: Uuid,
    pub owner_id: Option<String>,
    pub title: String,
    pub amount: Option<Money>,
    pub expected_close_date: Option<NaiveDate>,
    pub status_id: Option<Uuid>,
    pub lost_reason: Option<String>,
    pub next_step: Option<String>,
    pub note: String,
    pub retry: Retry,
}

impl TryFrom<&pb::CreateOpportunityRequest> for NewOpportunityInput {
    type Error = ApiError;

    fn try_from(request: &pb::CreateOpportunityRequest) -> ApiResult<Self> {
        new_opportunity(request)
    }
}

fn new_opportunity(request: &pb::CreateOpportunityRequest) -> ApiResult<NewOpportunityInput> {
    let mut violations = FieldViolations::new();
    let request_id = idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let note = violations
        .check("note", domain::text(&request.note, domain::MAX_NOTE_CHARS))
        .flatten();
    let Some(o) = &request.opportunity else {
        violations.add("opportunity", "required");
        return Err(violations.into_result().unwrap_err());
    };
    let customer_id = violations.check(
        "opportunity.customer_id",
        ids::parse_uuid(&o.customer_id, "the customer's id"),
    );
    let owner_id = violations
        .check("opportunity.owner_id", ids::owner(&o.owner_id))
        .flatten();
    let title = violations.check("opportunity.title", domain::title(&o.title));
    let amount = money(&mut violations, "opportunity.amount", o.amount.as_ref());
    let expected_close_date = date(
        &mut violations,
        "opportunity.expected_close_date",
        o.expected_close_date.as_ref(),
    );
    let status_id = match o.status_id.as_str() {
        "" => None,
        raw => violations.check("opportunity.status_id", ids::parse_uuid(raw, "a status id")),
    };
    let lost_reason = violations
        .check(
            "opportunity.lost_reason",
            domain::text(&o.lost_reason, domain::MAX_LOST_REASON_CHARS),
        )
        .flatten();
    let next_step = violations
        .check(
            "opportunity.next_step",
            domain::text(&o.next_step, domain::MAX_NEXT_STEP_CHARS),
        )
        .flatten();
    violations.into_result()?;
    match (customer_id, title) {
        (Some(customer_id), Some(title)) => Ok(NewOpportunityInput {
            customer_id,
            owner_id,
            title,
            amount,
            expected_close_date,
            status_id,
            lost_reason,
            next_step,
            note: note.unwrap_or_default(),
            retry: Retry::of("CreateOpportunity", request_id, request),
        }),
        _ => Err(ApiError::internal(
            "validated opportunity without its values",
        )),
    }
}

/// The changes of an UpdateOpportunity call: `Some` sets (or, for optional fields, clears
/// with `Some(None)`), `None` leaves.
#[derive(Debug, Clone, Default)]
pub struct OpportunityPatch {
    pub title: Option<String>,
    pub amount: Option<Option<Money>>,
    pub expected_close_date: Option<Option<NaiveDate>>,
    pub next_step: Option<Option<String>>,
    pub owner_id: Option<String>,
    pub status_id: Option<Uuid>,
    pub lost_reason: Option<Option<String>>,
    /// R17: `Some(None)` resets to the status's probability.
    pub probability: Option<Option<i16>>,
    /// R20: `Some(None)` resets to the status's category (`PIPELINE`, ...).
    pub forecast_category: Option<Option<String>>,
    /// Whether the mask names the overrides' paths (not `*`, not empty).
    pub overrides_named: bool,
}

/// A validated UpdateOpportunity.
#[derive(Debug, Clone)]
pub struct UpdateInput {
    pub id: Uuid,
    pub etag: Option<String>,
    pub patch: OpportunityPatch,
    pub note: String,
    pub retry: Retry,
}

const MUTABLE_PATHS: [&str; 11] = [
    "title",
    "amount",
    "expected_close_date",
    "next_step",
    "owner_id",
    "status_id",
    "lost_reason",
    "probability",
    "probability_source",
    "forecast_category",
    "forecast_category_source",
];

impl TryFrom<&pb::UpdateOpportunityRequest> for UpdateInput {
    type Error = ApiError;

    fn try_from(request: &pb::UpdateOpportunityRequest) -> ApiResult<Self> {
        update_input(request)
    }
}

/// One path of UpdateOpportunity's mask into `patch`, or its violation.
fn patch_path(
    violations: &mut FieldViolations,
    patch: &mut OpportunityPatch,
    o: &pb::Opportunity,
    path: &str,
) {
    match path {
        "title" => patch.title = violations.check("opportunity.title", domain::title(&o.title)),
        "amount" => patch.amount = Some(money(violations, "opportunity.amount", o.amount.as_ref())),
        "expected_close_date" => {
            patch.expected_close_date = Some(date(
                violations,
                "opportunity.expected_close_date",
                o.expected_close_date.as_ref(),
            ))
        }
        "next_step" => {
            patch.next_step = violations.check(
                "opportunity.next_step",
                domain::text(&o.next_step, domain::MAX_NEXT_STEP_CHARS),
            )
        }
        "owner_id" => match ids::owner(&o.owner_id) {
            Ok(Some(owner)) => patch.owner_id = Some(owner),
            Ok(None) => violations.add(
                "opportunity.owner_id",
                "cannot be cleared: every opportunity has an owner",
            ),
            Err(why) => violations.add("opportunity.owner_id", why),
        },
        "status_id" => {
            patch.status_id = violations.check(
                "opportunity.status_id",
                ids::parse_uuid(&o.status_id, "a status id"),
            )
        }
        "lost_reason" => {
            patch.lost_reason = violations.check(
                "opportunity.lost_reason",
                domain::text(&o.lost_reason, domain::MAX_LOST_REASON_CHARS),
            )
        }
        // Resolved together with their sources ([`overrides`]).
        "probability" | "probability_source" | "forecast_category" | "forecast_category_source" => {
        }
        "customer_id" => violations.add("update_mask", "customer_id is immutable"),
        "id"
        | "etag"
        | "status_name"
        | "state"
        | "close_time"
        | "status_change_time"
        | "create_time"
        | "update_time"
        | "created_by"
        | "updated_by"
        | "version"
        | "status_durations"
        | "stale_since"
        | "close_date_push_count"
        | "close_date_slip_days"
        | "status_probability"
        | "status_forecast_category" => {
            violations.add("update_mask", format!("{path} is output only"))
        }
        other => violations.add("update_mask", format!("unknown field {other:?}")),
    }
}

fn update_input(request: &pb::UpdateOpportunityRequest) -> ApiResult<UpdateInput> {
    let Some(o) = &request.opportunity else {
        return Err(ApiError::invalid("opportunity", "required"));
    };
    let mut violations = FieldViolations::new();
    let id = violations.check(
        "opportunity.id",
        ids::parse_uuid(&o.id, "the opportunity's id"),
    );
    let note = violations
        .check("note", domain::text(&request.note, domain::MAX_NOTE_CHARS))
        .flatten();
    let request_id = idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let paths = update_paths(
        request.update_mask.as_ref(),
        &MUTABLE_PATHS,
        &[
            ("title", !o.title.is_empty()),
            ("amount", o.amount.is_some()),
            ("expected_close_date", o.expected_close_date.is_some()),
            ("next_step", !o.next_step.is_empty()),
            ("owner_id", !o.owner_id.is_empty()),
            ("status_id", !o.status_id.is_empty()),
            ("lost_reason", !o.lost_reason.is_empty()),
            ("probability", o.probability != 0),
            ("probability_source", o.probability_source != 0),
            ("forecast_category", o.forecast_category != 0),
            ("forecast_category_source", o.forecast_category_source != 0),
        ],
        &mut violations,
    );
    let mut patch = OpportunityPatch::default();
    for path in &paths {
        patch_path(&mut violations, &mut patch, o, path);
    }
    let named = request
        .update_mask
        .as_ref()
        .map_or(&[][..], |m| m.paths.as_slice());
    let star = named.iter().any(|p| p == "*");
    patch.overrides_named = !star && !named.is_empty();
    overrides(&mut violations, &mut patch, o, &paths, star);
    violations.into_result()?;
    Ok(UpdateInput {
        id: id.ok_or_else(|| ApiError::internal("validated id missing"))?,
        etag: (!o.etag.is_empty()).then(|| o.etag.clone()),
        patch,
        note: note.unwrap_or_default(),
        retry: Retry::of("UpdateOpportunity", request_id, request),
    })
}

/// R17, R20: the overrides of UpdateOpportunity's mask. A value in the mask sets it by hand
/// unless its source is in the mask as STATUS, which resets it to the status's (so an
/// opportunity read and sent back whole changes nothing); MANUAL alone has no value to set.
/// With `*`, a value whose source is not given (a client that does not know the fields)
/// keeps the current one, as UpdateStatus does with an unset category.
fn overrides(
    violations: &mut FieldViolations,
    patch: &mut OpportunityPatch,
    o: &pb::Opportunity,
    paths: &[String],
    star: bool,
) {
    let has = |path: &str| paths.iter().any(|p| p == path);
    patch.probability = override_value(
        violations,
        star,
        ("probability", has("probability")),
        (
            "probability_source",
            has("probability_source"),
            o.probability_source,
        ),
        || {
            u8::try_from(o.probability)
                .ok()
                .filter(|p| *p <= 100)
                .map(i16::from)
                .ok_or_else(|| format!("must be 0..100 (percent), got {}", o.probability))
        },
    );
    patch.forecast_category = override_value(
        violations,
        star,
        ("forecast_category", has("forecast_category")),
        (
            "forecast_category_source",
            has("forecast_category_source"),
            o.forecast_category_source,
        ),
        || match common::ForecastCategory::try_from(o.forecast_category) {
            Ok(
                category @ (common::ForecastCategory::Pipeline
                | common::ForecastCategory::BestCase
                | common::ForecastCategory::Commit
                | common::ForecastCategory::Omitted),
            ) => Ok(category
                .as_str_name()
                .trim_start_matches("FORECAST_CATEGORY_")
                .to_owned()),
            _ => Err(
                "an open opportunity's category is PIPELINE, BEST_CASE, COMMIT or OMITTED \
                      (CLOSED is the WON status's)"
                    .to_owned(),
            ),
        },
    );
}

/// One override from its value's and its source's mask paths: `None` leaves it, `Some(None)`
/// resets it, `Some(Some(value))` sets it by hand.
fn override_value<T>(
    violations: &mut FieldViolations,
    star: bool,
    (field, value_given): (&str, bool),
    (source_field, source_given, source): (&str, bool, i32),
    value: impl FnOnce() -> Result<T, String>,
) -> Option<Option<T>> {
    let source = source_given.then(|| pb::ValueSource::try_from(source));
    match (value_given, source) {
        (false, None) => None,
        (_, Some(Ok(pb::ValueSource::Status))) => Some(None),
        (_, Some(Ok(pb::ValueSource::Unspecified))) if star => None,
        (true, Some(Ok(pb::ValueSource::Manual | pb::ValueSource::Unspecified)) | None) => {
            violations
                .check(&format!("opportunity.{field}"), value())
                .map(Some)
        }
        (false, Some(Ok(pb::ValueSource::Manual))) => {
            violations.add(
                format!("opportunity.{source_field}"),
                format!("MANUAL needs {field} in the mask as well: the value to set"),
            );
            None
        }
        (_, Some(_)) => {
            violations.add(
                format!("opportunity.{source_field}"),
                "must be STATUS (reset to the status's) or MANUAL",
            );
            None
        }
    }
}

/// A validated ChangeOpportunityStatus.
#[derive(Debug, Clone)]
pub struct ChangeInput {
    pub opportunity_id: Uuid,
    pub status_id: Uuid,
    pub note: String,
    pub lost_reason: Option<String>,
    pub etag: Option<String>,
    pub retry: Retry,
}

impl TryFrom<&pb::ChangeOpportunityStatusRequest> for ChangeInput {
    type Error = ApiError;

    fn try_from(request: &pb::ChangeOpportunityStatusRequest) -> ApiResult<Self> {
        change_input(request)
    }
}

/// A decoded BatchCreateOpportunities (R21): each item a CreateOpportunity.
pub struct BatchCreateInput(pub Batch<NewOpportunityInput>);

impl TryFrom<&pb::BatchCreateOpportunitiesRequest> for BatchCreateInput {
    type Error = ApiError;

    fn try_from(request: &pb::BatchCreateOpportunitiesRequest) -> ApiResult<Self> {
        Batch::decode(
            "BatchCreateOpportunities",
            &request.requests,
            request.allow_partial_success,
            &request.request_id,
            request,
        )
        .map(Self)
    }
}

/// A decoded BatchChangeOpportunityStatus (R21): each item a ChangeOpportunityStatus.
pub struct BatchChangeInput(pub Batch<ChangeInput>);

impl TryFrom<&pb::BatchChangeOpportunityStatusRequest> for BatchChangeInput {
    type Error = ApiError;

    fn try_from(request: &pb::BatchChangeOpportunityStatusRequest) -> ApiResult<Self> {
        Batch::decode(
            "BatchChangeOpportunityStatus",
            &request.requests,
            request.allow_partial_success,
            &request.request_id,
            request,
        )
        .map(Self)
    }
}

fn change_input(request: &pb::ChangeOpportunityStatusRequest) -> ApiResult<ChangeInput> {
    let mut violations = FieldViolations::new();
    let request_id = idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let opportunity_id = violations.check(
        "opportunity_id",
        ids::parse_uuid(&request.opportunity_id, "the opportunity's id"),
    );
    let status_id = violations.check(
        "status_id",
        ids::parse_uuid(&request.status_id, "the status to move to"),
    );
    let note = violations
        .check("note", domain::text(&request.note, domain::MAX_NOTE_CHARS))
        .flatten();
    let lost_reason = violations
        .check(
            "lost_reason",
            domain::text(&request.lost_reason, domain::MAX_LOST_REASON_CHARS),
        )
        .flatten();
    violations.into_result()?;
    match (opportunity_id, status_id) {
        (Some(opportunity_id), Some(status_id)) => Ok(ChangeInput {
            opportunity_id,
            status_id,
            note: note.unwrap_or_default(),
            lost_reason,
            etag: (!request.etag.is_empty()).then(|| request.etag.clone()),
            retry: Retry::of("ChangeOpportunityStatus", request_id, request),
        }),
        _ => Err(ApiError::internal("validated change without its ids")),
    }
}

fn close_range(
    violations: &mut FieldViolations,
    from: Option<&common::Date>,
    to: Option<&common::Date>,
) -> (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>) {
    let from = date(violations, "expected_close_date_from", from);
    let to = date(violations, "expected_close_date_to", to);
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
            stale_only: request.stale_only,
        },
        order,
    ))
}

/// Page sizes of the opportunity service's lists.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;

fn page(size: i32, token: &str) -> ApiResult<PageRequest> {
    PageRequest::new(size, token, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

/// A validated GetOpportunity.
#[derive(Debug, Clone)]
pub struct GetInput {
    pub id: Uuid,
}

impl TryFrom<&pb::GetOpportunityRequest> for GetInput {
    type Error = ApiError;

    fn try_from(request: &pb::GetOpportunityRequest) -> ApiResult<Self> {
        Ok(Self {
            id: ids::uuid_field("id", &request.id, "the opportunity's id")?,
        })
    }
}

/// A validated ListOpportunities (R13).
#[derive(Debug, Clone)]
pub struct ListInput {
    pub filter: OpportunityFilter,
    pub order: ListOrder,
    pub page: PageRequest,
}

impl TryFrom<&pb::ListOpportunitiesRequest> for ListInput {
    type Error = ApiError;

    fn try_from(request: &pb::ListOpportunitiesRequest) -> ApiResult<Self> {
        let page = page(request.page_size, &request.page_token)?;
        let (filter, order) = list_filter(request)?;
        Ok(Self {
            filter,
            order,
            page,
        })
    }
}

/// A validated ListStatusHistory.
#[derive(Debug, Clone)]
pub struct HistoryInput {
    pub opportunity_id: Uuid,
    pub newest_first: bool,
    pub page: PageRequest,
}

impl TryFrom<&pb::ListStatusHistoryRequest> for HistoryInput {
    type Error = ApiError;

    fn try_from(request: &pb::ListStatusHistoryRequest) -> ApiResult<Self> {
        Ok(Self {
            opportunity_id: ids::uuid_field(
                "opportunity_id",
                &request.opportunity_id,
                "the opportunity's id",
            )?,
            newest_first: request.newest_first,
            page: page(request.page_size, &request.page_token)?,
        })
    }
}

/// The fields of an opportunity whose changes are recorded (R18).
pub const HISTORY_FIELDS: [&str; 7] = [
    "amount",
    "expected_close_date",
    "owner_id",
    "title",
    "next_step",
    "customer_id",
    "probability",
];

/// A validated ListOpportunityChanges.
#[derive(Debug, Clone)]
pub struct ChangesInput {
    pub opportunity_id: Uuid,
    /// Sorted, without repeats; empty for every field.
    pub fields: Vec<String>,
    pub newest_first: bool,
    pub page: PageRequest,
}

impl TryFrom<&pb::ListOpportunityChangesRequest> for ChangesInput {
    type Error = ApiError;

    fn try_from(request: &pb::ListOpportunityChangesRequest) -> ApiResult<Self> {
        let page = page(request.page_size, &request.page_token)?;
        let mut violations = FieldViolations::new();
        let opportunity_id = violations.check(
            "opportunity_id",
            ids::parse_uuid(&request.opportunity_id, "the opportunity's id"),
        );
        for (i, field) in request.fields.iter().enumerate() {
            if !HISTORY_FIELDS.contains(&field.as_str()) {
                violations.add(
                    format!("fields[{i}]"),
                    format!(
                        "{field:?} is not a recorded field: one of {}",
                        HISTORY_FIELDS.join(", ")
                    ),
                );
            }
        }
        violations.into_result()?;
        let mut fields = request.fields.clone();
        fields.sort();
        fields.dedup();
        Ok(Self {
            opportunity_id: opportunity_id
                .ok_or_else(|| ApiError::internal("validated id missing"))?,
            fields,
            newest_first: request.newest_first,
            page,
        })
    }
}

/// A validated GetPipelineSummary (R14): the opportunities it sums, and for R19 the moment.
#[derive(Debug, Clone)]
pub struct PipelineInput {
    pub filter: OpportunityFilter,
    pub as_of: Option<DateTime<Utc>>,
}

impl TryFrom<&pb::GetPipelineSummaryRequest> for PipelineInput {
    type Error = ApiError;

    fn try_from(request: &pb::GetPipelineSummaryRequest) -> ApiResult<Self> {
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
        let as_of = request
            .as_of
            .as_ref()
            .and_then(|at| valid_time(&mut violations, "as_of", at));
        violations.into_result()?;
        Ok(Self {
            as_of,
            filter: OpportunityFilter {
                owner_ids,
                team: (!team.is_empty()).then(|| team.to_owned()),
                customer_id,
                status_ids: Vec::new(),
                states,
                close_from,
                close_to,
                pattern: None,
                stale_only: false,
            },
        })
    }
}

/// The length of a forecast period (R20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodKind {
    Month,
    Quarter,
}

impl PeriodKind {
    /// The unit of Postgres' `date_trunc`.
    pub fn unit(self) -> &'static str {
        match self {
            PeriodKind::Month => "month",
            PeriodKind::Quarter => "quarter",
        }
    }

    fn months(self) -> u32 {
        match self {
            PeriodKind::Month => 1,
            PeriodKind::Quarter => 3,
        }
    }

    /// The first day of the period holding `date`.
    pub fn start_of(self, date: NaiveDate) -> NaiveDate {
        let month0 = date.month0() - date.month0() % self.months();
        NaiveDate::from_ymd_opt(date.year(), month0 + 1, 1).unwrap_or(date)
    }

    /// The first day of the next period.
    pub fn next(self, start: NaiveDate) -> Option<NaiveDate> {
        start.checked_add_months(chrono::Months::new(self.months()))
    }
}

/// At most this many periods in one forecast.
pub const MAX_FORECAST_PERIODS: usize = 120;

/// A validated GetForecastSummary (R20).
#[derive(Debug, Clone)]
pub struct ForecastInput {
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub kind: PeriodKind,
    /// `owner_ids` and `team` only.
    pub filter: OpportunityFilter,
}

impl ForecastInput {
    /// The periods of the range, each cut to it: (first day, last day).
    pub fn periods(&self) -> Vec<(NaiveDate, NaiveDate)> {
        let mut periods = Vec::new();
        let mut start = self.kind.start_of(self.start);
        while start <= self.end && periods.len() <= MAX_FORECAST_PERIODS {
            let next = self.kind.next(start);
            let last = next.and_then(|n| n.pred_opt()).unwrap_or(NaiveDate::MAX);
            periods.push((start.max(self.start), last.min(self.end)));
            match next {
                Some(next) => start = next,
                None => break,
            }
        }
        periods
    }
}

impl TryFrom<&pb::GetForecastSummaryRequest> for ForecastInput {
    type Error = ApiError;

    fn try_from(request: &pb::GetForecastSummaryRequest) -> ApiResult<Self> {
        let mut violations = FieldViolations::new();
        let start = date(&mut violations, "start_date", request.start_date.as_ref());
        let end = date(&mut violations, "end_date", request.end_date.as_ref());
        for (field, given) in [
            ("start_date", request.start_date.is_some()),
            ("end_date", request.end_date.is_some()),
        ] {
            if !given {
                violations.add(field, "required");
            }
        }
        let kind = match pb::ForecastPeriodKind::try_from(request.period_kind) {
            Ok(pb::ForecastPeriodKind::Unspecified | pb::ForecastPeriodKind::Month) => {
                Some(PeriodKind::Month)
            }
            Ok(pb::ForecastPeriodKind::Quarter) => Some(PeriodKind::Quarter),
            Err(_) => {
                violations.add("period_kind", "must be MONTH or QUARTER");
                None
            }
        };
        let owner_ids = owner_ids(&mut violations, &request.owner_ids);
        let team = request.team.trim();
        if team.chars().count() > 200 {
            violations.add("team", "must be at most 200 characters");
        }
        let input = match (start, end, kind) {
            (Some(start), Some(end), Some(kind)) => Some(ForecastInput {
                start,
                end,
                kind,
                filter: OpportunityFilter {
                    owner_ids,
                    team: (!team.is_empty()).then(|| team.to_owned()),
                    ..OpportunityFilter::default()
                },
            }),
            _ => None,
        };
        if let Some(input) = &input {
            if input.end < input.start {
                violations.add("end_date", "must not be before start_date");
            } else if input.periods().len() > MAX_FORECAST_PERIODS {
                violations.add(
                    "end_date",
                    format!("the range spans more than {MAX_FORECAST_PERIODS} periods"),
                );
            }
        }
        violations.into_result()?;
        input.ok_or_else(|| ApiError::internal("validated forecast without its range"))
    }
}

/// A validated ListSalespeople.
#[derive(Debug, Clone)]
pub struct SalespeopleInput {
    /// A `LIKE` pattern over names, lowercased by Postgres.
    pub pattern: Option<String>,
    pub team: Option<String>,
    pub ids: Vec<String>,
    pub page: PageRequest,
}

impl TryFrom<&pb::ListSalespeopleRequest> for SalespeopleInput {
    type Error = ApiError;

    fn try_from(request: &pb::ListSalespeopleRequest) -> ApiResult<Self> {
        let page = page(request.page_size, &request.page_token)?;
        let mut violations = FieldViolations::new();
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
        let team = request.team.trim();
        Ok(Self {
            pattern: (!query.is_empty()).then(|| domain::like_substring(query)),
            team: (!team.is_empty()).then(|| team.to_owned()),
            ids,
            page,
        })
    }
}

/// A validated GetPipelineVelocity (R15): the period and the owners it counts.
#[derive(Debug, Clone)]
pub struct VelocityInput {
    pub filter: OpportunityFilter,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A required request time; a violation when unset or out of range.
fn required_time(
    violations: &mut FieldViolations,
    field: &str,
    time: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    let Some(time) = time else {
        violations.add(field, "is required");
        return None;
    };
    valid_time(violations, field, time)
}

/// A request time, or a violation when it is none (the range of `google.protobuf.Timestamp`
/// is checked for every request before it gets here: `salesopp_proto::input`).
fn valid_time(
    violations: &mut FieldViolations,
    field: &str,
    time: &prost_types::Timestamp,
) -> Option<DateTime<Utc>> {
    let parsed = u32::try_from(time.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(time.seconds, nanos));
    if parsed.is_none() {
        violations.add(field, "not a valid time");
    }
    parsed
}

impl TryFrom<&pb::GetPipelineVelocityRequest> for VelocityInput {
    type Error = ApiError;

    fn try_from(request: &pb::GetPipelineVelocityRequest) -> ApiResult<Self> {
        let mut violations = FieldViolations::new();
        let owner_ids = owner_ids(&mut violations, &request.owner_ids);
        let team = request.team.trim();
        if team.chars().count() > 200 {
            violations.add("team", "must be at most 200 characters");
        }
        if !request.owner_ids.is_empty() && !team.is_empty() {
            violations.add("team", "give owner_ids or team, not both");
        }
        let start = required_time(&mut violations, "start_time", request.start_time.as_ref());
        let end = required_time(&mut violations, "end_time", request.end_time.as_ref());
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            violations.add("end_time", "must be after start_time");
        }
        violations.into_result()?;
        match (start, end) {
            (Some(start), Some(end)) => Ok(Self {
                filter: OpportunityFilter {
                    owner_ids,
                    team: (!team.is_empty()).then(|| team.to_owned()),
                    ..OpportunityFilter::default()
                },
                start,
                end,
            }),
            _ => Err(ApiError::internal("validated period without its bounds")),
        }
    }
}
