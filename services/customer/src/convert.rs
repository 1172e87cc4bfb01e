//! Protobuf <-> domain for customers: each request field is validated here and every problem
//! is reported as a field violation naming the request's field path.

use salesopp_kit::error::{ApiError, ApiResult, FieldViolations, update_paths};
use salesopp_kit::ids;
use salesopp_kit::time::timestamp;
use salesopp_proto::common::v1::Actor;
use salesopp_proto::customer::v1 as pb;
use uuid::Uuid;

use crate::domain::{self, CustomerFields, CustomerPatch};
use crate::store::CustomerRow;

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
pub fn new_customer(
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

/// UpdateCustomer: the id, the etag precondition and the patch of the masked fields.
pub fn customer_patch(
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
        match path.as_str() {
            "code" => patch.code = violations.check("customer.code", domain::code(&customer.code)),
            "display_name" => {
                patch.display_name = violations.check(
                    "customer.display_name",
                    domain::display_name(&customer.display_name),
                )
            }
            "email" => {
                patch.email = violations.check("customer.email", domain::email(&customer.email))
            }
            "phone" => {
                patch.phone = violations.check("customer.phone", domain::phone(&customer.phone))
            }
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
            "archived" => {
                violations.add("update_mask", "customers are archived with DeleteCustomer")
            }
            "id" | "etag" | "create_time" | "update_time" | "created_by" | "updated_by" => {
                violations.add("update_mask", format!("{path} is output only"))
            }
            other => violations.add("update_mask", format!("unknown field {other:?}")),
        }
    }
    violations.into_result()?;
    let etag = (!customer.etag.is_empty()).then(|| customer.etag.clone());
    Ok((
        id.ok_or_else(|| ApiError::internal("validated id missing"))?,
        etag,
        patch,
    ))
}
