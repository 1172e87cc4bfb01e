//! Protobuf <-> domain for customers: each request field is validated here and every problem
//! is reported as a field violation naming the request's field path.

use salesopp_kit::error::{ApiError, ApiResult, FieldViolations, update_paths};
use salesopp_kit::ids;
use salesopp_kit::time::timestamp;
use salesopp_proto::common::v1::Actor;
use salesopp_proto::customer::v1 as pb;
use uuid::Uuid;

use salesopp_kit::idempotency::request_id;
use salesopp_kit::{PageRequest, Retry};

use salesopp_kit::batch::Batch;

use crate::domain::input::{
    BatchCreateCustomers, CreateCustomer, DeleteCustomer, GetCustomer, ListCustomers,
    UpdateCustomer,
};
use crate::domain::{self, CustomerFields, CustomerPatch};
use crate::store::{CustomerRow, ListFilter, ListOrder};

pub fn customer_to_proto(row: &CustomerRow) -> pb::Customer {
    pb::Customer {
        id: row.id.to_string(),
        code: row.code.clone().unwrap_or_default(),
        display_name: row.display_name.clone(),
        email: row.email.clone().unwrap_or_default(),
        phone: row.phone.clone().unwrap_or_default(),
        contact_name: row.contact_name.clone().unwrap_or_default(),
        tax_id: row.tax_id.clone().unwrap_or_default(),
        address: row.address.clone().unwrap_or_default(),
        owner_id: row.owner_id.clone(),
        archived: row.archived,
        etag: row.etag(),
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        created_by: Some(Actor {
            id: row.created_by.clone(),
            display_name: row.created_by_name.clone(),
        }),
        updated_by: Some(Actor {
            id: row.updated_by.clone(),
            display_name: row.updated_by_name.clone(),
        }),
    }
}

/// CreateCustomer: the validated fields and the owner (`None`: the caller).
fn new_customer(
    request: &pb::CreateCustomerRequest,
) -> ApiResult<(CustomerFields, Option<String>)> {
    let mut violations = FieldViolations::new();
    salesopp_kit::idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let Some(customer) = &request.customer else {
        violations.add("customer", "required");
        return Err(violations.into_result().unwrap_err());
    };
    let fields = CustomerFields {
        display_name: violations
            .check(
                "customer.display_name",
                domain::display_name(&customer.display_name),
            )
            .unwrap_or_default(),
        code: violations
            .check("customer.code", domain::code(&customer.code))
            .flatten(),
        email: violations
            .check("customer.email", domain::email(&customer.email))
            .flatten(),
        phone: violations
            .check("customer.phone", domain::phone(&customer.phone))
            .flatten(),
        contact_name: violations
            .check(
                "customer.contact_name",
                domain::text(
                    &customer.contact_name,
                    domain::MAX_CONTACT_NAME_CHARS,
                    false,
                ),
            )
            .flatten(),
        tax_id: violations
            .check("customer.tax_id", domain::tax_id(&customer.tax_id))
            .flatten(),
        address: violations
            .check(
                "customer.address",
                domain::text(&customer.address, domain::MAX_ADDRESS_CHARS, true),
            )
            .flatten(),
    };
    let owner = violations
        .check("customer.owner_id", ids::owner(&customer.owner_id))
        .flatten();
    violations.into_result()?;
    Ok((fields, owner))
}

const MUTABLE_PATHS: [&str; 8] = [
    "code",
    "display_name",
    "email",
    "phone",
    "contact_name",
    "tax_id",
    "address",
    "owner_id",
];

/// One path of UpdateCustomer's mask into `patch`, or its violation.
fn patch_path(
    violations: &mut FieldViolations,
    patch: &mut CustomerPatch,
    customer: &pb::Customer,
    path: &str,
) {
    match path {
        "code" => patch.code = violations.check("customer.code", domain::code(&customer.code)),
        "display_name" => {
            patch.display_name = violations.check(
                "customer.display_name",
                domain::display_name(&customer.display_name),
            )
        }
        "email" => patch.email = violations.check("customer.email", domain::email(&customer.email)),
        "phone" => patch.phone = violations.check("customer.phone", domain::phone(&customer.phone)),
        "contact_name" => {
            patch.contact_name = violations.check(
                "customer.contact_name",
                domain::text(
                    &customer.contact_name,
                    domain::MAX_CONTACT_NAME_CHARS,
                    false,
                ),
            )
        }
        "tax_id" => {
            patch.tax_id = violations.check("customer.tax_id", domain::tax_id(&customer.tax_id))
        }
        "address" => {
            patch.address = violations.check(
                "customer.address",
                domain::text(&customer.address, domain::MAX_ADDRESS_CHARS, true),
            )
        }
        "owner_id" => match ids::owner(&customer.owner_id) {
            Ok(Some(owner)) => patch.owner_id = Some(owner),
            Ok(None) => violations.add(
                "customer.owner_id",
                "cannot be cleared: every customer has an owner",
            ),
            Err(why) => violations.add("customer.owner_id", why),
        },
        "archived" => violations.add("update_mask", "customers are archived with DeleteCustomer"),
        "id" | "etag" | "create_time" | "update_time" | "created_by" | "updated_by" => {
            violations.add("update_mask", format!("{path} is output only"))
        }
        other => violations.add("update_mask", format!("unknown field {other:?}")),
    }
}

/// UpdateCustomer: the id, the etag precondition and the patch of the masked fields.
fn customer_patch(
    request: &pb::UpdateCustomerRequest,
) -> ApiResult<(Uuid, Option<String>, CustomerPatch)> {
    let Some(customer) = &request.customer else {
        return Err(ApiError::invalid("customer", "required"));
    };
    let mut violations = FieldViolations::new();
    salesopp_kit::idempotency::request_id(&mut violations, "request_id", &request.request_id);
    let id = match ids::uuid_field("customer.id", &customer.id, "a customer id") {
        Ok(id) => Some(id),
        Err(error) => {
            for v in error.field_violations() {
                violations.add(v.field.clone(), v.description.clone());
            }
            None
        }
    };
    let paths = update_paths(
        request.update_mask.as_ref(),
        &MUTABLE_PATHS,
        &[
            ("code", !customer.code.is_empty()),
            ("display_name", !customer.display_name.is_empty()),
            ("email", !customer.email.is_empty()),
            ("phone", !customer.phone.is_empty()),
            ("contact_name", !customer.contact_name.is_empty()),
            ("tax_id", !customer.tax_id.is_empty()),
            ("address", !customer.address.is_empty()),
            ("owner_id", !customer.owner_id.is_empty()),
        ],
        &mut violations,
    );
    let mut patch = CustomerPatch::default();
    for path in &paths {
        patch_path(&mut violations, &mut patch, customer, path);
    }
    violations.into_result()?;
    let etag = (!customer.etag.is_empty()).then(|| customer.etag.clone());
    Ok((
        id.ok_or_else(|| ApiError::internal("validated id missing"))?,
        etag,
        patch,
    ))
}

/// Page sizes of ListCustomers, and the longest search text.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const MAX_QUERY_CHARS: usize = 200;

fn optional(raw: &str) -> Option<String> {
    (!raw.is_empty()).then(|| raw.to_owned())
}

impl TryFrom<&pb::GetCustomerRequest> for GetCustomer {
    type Error = ApiError;

    fn try_from(request: &pb::GetCustomerRequest) -> ApiResult<Self> {
        Ok(Self {
            id: ids::uuid_field("id", &request.id, "a customer id")?,
        })
    }
}

impl TryFrom<&pb::CreateCustomerRequest> for CreateCustomer {
    type Error = ApiError;

    fn try_from(request: &pb::CreateCustomerRequest) -> ApiResult<Self> {
        let (fields, owner_id) = new_customer(request)?;
        Ok(Self {
            fields,
            owner_id,
            retry: Retry::of("CreateCustomer", optional(&request.request_id), request),
        })
    }
}

impl TryFrom<&pb::BatchCreateCustomersRequest> for BatchCreateCustomers {
    type Error = ApiError;

    fn try_from(request: &pb::BatchCreateCustomersRequest) -> ApiResult<Self> {
        Batch::decode(
            "BatchCreateCustomers",
            &request.requests,
            request.allow_partial_success,
            &request.request_id,
            request,
        )
        .map(Self)
    }
}

impl TryFrom<&pb::UpdateCustomerRequest> for UpdateCustomer {
    type Error = ApiError;

    fn try_from(request: &pb::UpdateCustomerRequest) -> ApiResult<Self> {
        let (id, etag, patch) = customer_patch(request)?;
        Ok(Self {
            id,
            etag,
            patch,
            retry: Retry::of("UpdateCustomer", optional(&request.request_id), request),
        })
    }
}

impl TryFrom<&pb::DeleteCustomerRequest> for DeleteCustomer {
    type Error = ApiError;

    fn try_from(request: &pb::DeleteCustomerRequest) -> ApiResult<Self> {
        let mut violations = FieldViolations::new();
        let id = violations.check("id", ids::parse_uuid(&request.id, "a customer id"));
        let request_id = request_id(&mut violations, "request_id", &request.request_id);
        violations.into_result()?;
        Ok(Self {
            id: id.ok_or_else(|| ApiError::internal("validated id missing"))?,
            etag: optional(&request.etag),
            retry: Retry::of("DeleteCustomer", request_id, request),
        })
    }
}

impl TryFrom<&pb::ListCustomersRequest> for ListCustomers<ListFilter> {
    type Error = ApiError;

    fn try_from(request: &pb::ListCustomersRequest) -> ApiResult<Self> {
        Ok(Self {
            page: PageRequest::new(
                request.page_size,
                &request.page_token,
                DEFAULT_PAGE_SIZE,
                MAX_PAGE_SIZE,
            )?,
            filter: list_filter(request)?,
        })
    }
}

fn list_filter(request: &pb::ListCustomersRequest) -> ApiResult<ListFilter> {
    let mut violations = FieldViolations::new();
    let query = request.query.trim();
    if query.chars().count() > MAX_QUERY_CHARS {
        violations.add(
            "query",
            format!("must be at most {MAX_QUERY_CHARS} characters"),
        );
    }
    if query.chars().any(char::is_control) {
        violations.add("query", "must not contain control characters");
    }
    for (index, owner) in request.owner_ids.iter().enumerate() {
        if owner.trim().is_empty() {
            violations.add(format!("owner_ids[{index}]"), "must not be empty");
        }
    }
    let mut ids = Vec::with_capacity(request.ids.len());
    if request.ids.len() > MAX_PAGE_SIZE as usize {
        violations.add("ids", format!("at most {MAX_PAGE_SIZE} ids"));
    }
    for (index, raw) in request.ids.iter().enumerate() {
        match Uuid::parse_str(raw) {
            Ok(id) => ids.push(id),
            Err(_) => violations.add(format!("ids[{index}]"), format!("{raw:?} is not a UUID")),
        }
    }
    ids.sort();
    ids.dedup();
    let order = match request.order_by.trim() {
        "" | "display_name" | "display_name asc" => Some(ListOrder::DisplayName),
        "update_time desc" => Some(ListOrder::UpdateTimeDesc),
        other => {
            violations.add(
                "order_by",
                format!("{other:?} is not a supported order: use \"display_name\" or \"update_time desc\""),
            );
            None
        }
    };
    violations.into_result()?;
    let mut owner_ids: Vec<String> = request
        .owner_ids
        .iter()
        .map(|o| o.trim().to_owned())
        .collect();
    owner_ids.sort();
    owner_ids.dedup();
    Ok(ListFilter {
        pattern: (!query.is_empty()).then(|| domain::like_substring(query)),
        owner_ids,
        ids,
        show_archived: request.show_archived,
        order: order.unwrap_or(ListOrder::DisplayName),
    })
}
