//! One function per call of the customer directory. Writes run in one transaction each and
//! record the acting salesperson in it; a failed call rolls back and changes nothing.

use salesopp_kit::error::{ApiError, ApiResult, Reason, violated_constraint};
use salesopp_kit::idempotency::{Claim, Retry};
use salesopp_kit::{Principal, Role, Sales, paging, people};
use salesopp_proto::customer::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{self, customer_to_proto};
use crate::domain::{self, CustomerPatch};
use crate::store::{self, ListAfter, ListFilter, ListOrder};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const MAX_QUERY_CHARS: usize = 200;

const RESOURCE: &str = "customer";

fn map_write_error(error: sqlx::Error) -> ApiError {
    match violated_constraint(&error) {
        Some("customer_code_unique_idx") => ApiError::AlreadyExists {
            reason: Reason::CustomerCodeTaken,
            resource: RESOURCE,
            field: "code",
            message: "another customer already has this code (codes are unique, ignoring case)"
                .into(),
        },
        _ => error.into(),
    }
}

async fn fetch(tx: &mut PgConnection, id: Uuid) -> ApiResult<pb::Customer> {
    let row = store::get(tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
    Ok(customer_to_proto(&row))
}

/// An owner other than the caller must be a salesperson the suite knows.
async fn check_owner(tx: &mut PgConnection, caller: &Principal, owner_id: &str) -> ApiResult<()> {
    if owner_id != caller.id && people::team_of(tx, owner_id).await?.is_none() {
        return Err(ApiError::invalid(
            "customer.owner_id",
            format!(
                "no salesperson {owner_id:?} is known: they appear once they have used the suite"
            ),
        ));
    }
    Ok(())
}

pub async fn create(
    pool: &PgPool,
    caller: Sales<'_>,
    request: &pb::CreateCustomerRequest,
) -> ApiResult<pb::Customer> {
    let caller: &Principal = &caller;
    let (fields, owner) = convert::new_customer(request)?;
    let retry = Retry::new("CreateCustomer", &request.request_id, request);
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    people::record(&mut tx, caller).await?;
    let owner_id = owner.unwrap_or_else(|| caller.id.clone());
    check_owner(&mut tx, caller, &owner_id).await?;
    let id = store::insert(&mut tx, &fields, &owner_id, &caller.id)
        .await
        .map_err(map_write_error)?;
    let response = fetch(&mut tx, id).await?;
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await.map_err(map_write_error)?;
    tracing::info!(customer_id = %id, actor = %caller.id, "customer created");
    Ok(response)
}

pub async fn get(pool: &PgPool, _caller: Sales<'_>, id: Uuid) -> ApiResult<pb::Customer> {
    let row = store::get(pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
    Ok(customer_to_proto(&row))
}

pub async fn update(
    pool: &PgPool,
    caller: Sales<'_>,
    retry: Retry<'_, pb::UpdateCustomerRequest>,
    id: Uuid,
    etag: Option<&str>,
    patch: CustomerPatch,
) -> ApiResult<pb::Customer> {
    let caller: &Principal = &caller;
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    let (revision, archived, owner_id) = store::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
    if etag.is_some_and(|etag| etag != revision.to_string()) {
        return Err(ApiError::stale_etag(RESOURCE));
    }
    if archived {
        return Err(ApiError::failed_precondition(
            Reason::CustomerArchived,
            id.to_string(),
            "an archived customer is read-only",
        ));
    }
    people::record(&mut tx, caller).await?;
    let current = store::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
    let mut fields = current.fields();
    patch.apply(&mut fields);
    // Handing a customer to another owner takes what archiving it takes (R12): otherwise a
    // rep could make any customer their own and then archive it.
    if patch.owner_id.as_ref().is_some_and(|new| *new != owner_id)
        && !may_archive(&mut tx, caller, &owner_id).await?
    {
        return Err(ApiError::out_of_scope(
            "a customer's owner is changed by its owner, a manager of the owner's team, or an admin",
        ));
    }
    let owner_id = patch.owner_id.clone().unwrap_or(owner_id);
    check_owner(&mut tx, caller, &owner_id).await?;
    store::update(&mut tx, id, &fields, &owner_id, &caller.id)
        .await
        .map_err(map_write_error)?;
    let response = fetch(&mut tx, id).await?;
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await.map_err(map_write_error)?;
    tracing::info!(customer_id = %id, actor = %caller.id, "customer updated");
    Ok(response)
}

/// Whether `caller` may archive a customer owned by `owner_id` (R12): the owner, a manager
/// of the owner's team, or an admin.
async fn may_archive(tx: &mut PgConnection, caller: &Principal, owner_id: &str) -> ApiResult<bool> {
    if caller.has_role(Role::SalesAdmin) || caller.id == owner_id {
        return Ok(true);
    }
    if caller.has_role(Role::SalesManager) && !caller.team.is_empty() {
        let owner_team = people::team_of(tx, owner_id).await?;
        return Ok(owner_team.as_deref() == Some(caller.team.as_str()));
    }
    Ok(false)
}

pub async fn delete(
    pool: &PgPool,
    caller: Sales<'_>,
    retry: Retry<'_, pb::DeleteCustomerRequest>,
    id: Uuid,
    etag: Option<&str>,
) -> ApiResult<pb::Customer> {
    let caller: &Principal = &caller;
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = retry.claim(&mut tx, caller).await? {
        return Ok(first);
    }
    let (revision, archived, owner_id) = store::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
    if !may_archive(&mut tx, caller, &owner_id).await? {
        return Err(ApiError::out_of_scope(
            "a customer is archived by its owner, a manager of the owner's team, or an admin",
        ));
    }
    // AIP-135: deleting what is already archived answers it, whatever the etag (a retry
    // of a delete that succeeded carries the etag from before it).
    if archived {
        return fetch(&mut tx, id).await;
    }
    if etag.is_some_and(|etag| etag != revision.to_string()) {
        return Err(ApiError::stale_etag(RESOURCE));
    }
    let open = store::open_opportunities(&mut tx, id).await?;
    if open > 0 {
        return Err(ApiError::failed_precondition(
            Reason::CustomerHasOpenOpportunities,
            id.to_string(),
            format!(
                "the customer has {open} open opportunities: close or move them before archiving"
            ),
        ));
    }
    people::record(&mut tx, caller).await?;
    store::archive(&mut tx, id, &caller.id).await?;
    let response = fetch(&mut tx, id).await?;
    retry.complete(&mut tx, caller, &response).await?;
    tx.commit().await?;
    tracing::info!(customer_id = %id, actor = %caller.id, "customer archived");
    Ok(response)
}

fn list_filter(request: &pb::ListCustomersRequest) -> ApiResult<ListFilter> {
    let mut violations = salesopp_kit::FieldViolations::new();
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

pub async fn list(
    pool: &PgPool,
    _caller: Sales<'_>,
    request: &pb::ListCustomersRequest,
) -> ApiResult<pb::ListCustomersResponse> {
    let page_size = paging::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let filter = list_filter(request)?;
    let fingerprint = paging::fingerprint(&("customers", &filter));
    let after: Option<ListAfter> = paging::decode(&request.page_token, &fingerprint)?;
    let matches_order = matches!(
        (&after, filter.order),
        (None, _)
            | (Some(ListAfter::Name(..)), ListOrder::DisplayName)
            | (Some(ListAfter::UpdateTime(..)), ListOrder::UpdateTimeDesc)
    );
    if !matches_order {
        return Err(ApiError::invalid(
            "page_token",
            "not a page token of this order",
        ));
    }
    let mut rows = store::list(pool, &filter, after.as_ref(), i64::from(page_size) + 1).await?;
    let next_page_token = if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        match rows.last() {
            Some(last) => {
                let key = match filter.order {
                    ListOrder::DisplayName => ListAfter::Name(last.name_key.clone(), last.id),
                    ListOrder::UpdateTimeDesc => ListAfter::UpdateTime(last.update_time, last.id),
                };
                paging::encode(&fingerprint, &key)
            }
            None => String::new(),
        }
    } else {
        String::new()
    };
    Ok(pb::ListCustomersResponse {
        customers: rows.iter().map(customer_to_proto).collect(),
        next_page_token,
    })
}
