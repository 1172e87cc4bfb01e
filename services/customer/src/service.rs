//! One function per call of the customer directory. Writes run in one transaction each and
//! record the acting salesperson in it; a failed call rolls back and changes nothing.

use salesopp_kit::error::{ApiError, ApiResult, Reason, violated_constraint};
use std::collections::HashMap;

use salesopp_kit::batch::Items;
use salesopp_kit::idempotency::write;
use salesopp_kit::{Principal, Sales, Visibility, people};
use salesopp_proto::customer::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::customer_to_proto;
use crate::domain::input::{
    BatchCreateCustomers, CreateCustomer, DeleteCustomer, GetCustomer, ListCustomers,
    UpdateCustomer,
};
use crate::store::{self, ListAfter, ListFilter, ListOrder};

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
        return Err(unknown_owner(owner_id));
    }
    Ok(())
}

fn unknown_owner(owner_id: &str) -> ApiError {
    ApiError::invalid(
        "customer.owner_id",
        format!("no salesperson {owner_id:?} is known: they appear once they have used the suite"),
    )
}

pub async fn create(
    pool: &PgPool,
    caller: Sales<'_>,
    input: CreateCustomer,
) -> ApiResult<pb::Customer> {
    let caller: &Principal = &caller;
    let owner_id = input.owner_id.unwrap_or_else(|| caller.id.clone());
    let fields = &input.fields;
    let response = write(pool, caller, &input.retry, async |tx| {
        check_owner(tx, caller, &owner_id).await?;
        let id = store::insert(tx, fields, &owner_id, &caller.id)
            .await
            .map_err(map_write_error)?;
        fetch(tx, id).await
    })
    .await?;
    tracing::info!(customer_id = %response.id, actor = %caller.id, "customer created");
    Ok(response)
}

fn code_taken(message: String) -> ApiError {
    ApiError::AlreadyExists {
        reason: Reason::CustomerCodeTaken,
        resource: RESOURCE,
        field: "code",
        message,
    }
}

/// R21: every item as CreateCustomer would create it, in one transaction and a few
/// statements: the request ids claimed at once, the owners read at once, one insert.
pub async fn batch_create(
    pool: &PgPool,
    caller: Sales<'_>,
    input: BatchCreateCustomers,
) -> ApiResult<pb::BatchCreateCustomersResponse> {
    let caller: &Principal = &caller;
    let BatchCreateCustomers(batch) = input;
    let retry = batch.retry.clone();
    let response = write(pool, caller, &retry, async |tx| {
        let mut items: Items<CreateCustomer, pb::Customer> = Items::new(batch);
        items.claim(tx, &caller.id, |input| &input.retry).await?;
        let owner = |input: &CreateCustomer| -> String {
            input.owner_id.clone().unwrap_or_else(|| caller.id.clone())
        };
        let others: Vec<String> = items
            .pending()
            .map(|(_, input)| owner(input))
            .filter(|id| *id != caller.id)
            .collect();
        let known = people::teams_of(tx, &others).await?;
        let mut refused = Vec::new();
        let mut codes = HashMap::new();
        for (index, input) in items.pending() {
            let owner_id = owner(input);
            if owner_id != caller.id && !known.contains_key(&owner_id) {
                refused.push((index, unknown_owner(&owner_id)));
                continue;
            }
            if let Some(code) = &input.fields.code
                && let Some(first) = codes.insert(code.to_lowercase(), index)
            {
                codes.insert(code.to_lowercase(), first);
                refused.push((
                    index,
                    code_taken(format!(
                        "requests[{first}] has the same code (codes are unique, ignoring case)"
                    )),
                ));
            }
        }
        for (index, error) in refused {
            items.fail(index, error);
        }
        if items.atomic_failed() {
            return Err(items.atomic_failure());
        }
        let owners: Vec<(usize, Uuid, String)> = items
            .pending()
            .map(|(index, input)| (index, Uuid::new_v4(), owner(input)))
            .collect();
        let new: Vec<store::NewCustomer> = owners
            .iter()
            .map(|(index, id, owner_id)| store::NewCustomer {
                id: *id,
                fields: &items.input(*index).fields,
                owner_id,
            })
            .collect();
        let written = store::insert_many(tx, &new, &caller.id).await?;
        let mut rows: HashMap<Uuid, store::CustomerRow> = store::get_many(tx, &written)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        drop(new);
        for (index, id, _) in owners {
            match rows.remove(&id) {
                Some(row) => items.done(index, customer_to_proto(&row)),
                None => items.fail(
                    index,
                    code_taken(
                        "another customer already has this code (codes are unique, ignoring case)"
                            .into(),
                    ),
                ),
            }
        }
        let (customers, errors) = items.finish(tx, &caller.id).await?;
        Ok(pb::BatchCreateCustomersResponse { customers, errors })
    })
    .await?;
    tracing::info!(
        created = response.customers.iter().filter(|c| !c.id.is_empty()).count(),
        failed = response.errors.len(),
        actor = %caller.id,
        "customers created in a batch"
    );
    Ok(response)
}

pub async fn get(pool: &PgPool, _caller: Sales<'_>, input: GetCustomer) -> ApiResult<pb::Customer> {
    let row = store::get(pool, input.id)
        .await?
        .ok_or_else(|| ApiError::not_found(RESOURCE, input.id.to_string()))?;
    Ok(customer_to_proto(&row))
}

pub async fn update(
    pool: &PgPool,
    caller: Sales<'_>,
    input: UpdateCustomer,
) -> ApiResult<pb::Customer> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let UpdateCustomer {
        id,
        etag,
        patch,
        retry,
    } = input;
    let response = write(pool, caller, &retry, async |tx| {
        let (revision, archived, owner_id) = store::lock(tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
        if etag.as_ref().is_some_and(|etag| *etag != revision.to_string()) {
            return Err(ApiError::stale_etag(RESOURCE));
        }
        if archived {
            return Err(ApiError::failed_precondition(
                Reason::CustomerArchived,
                id.to_string(),
                "an archived customer is read-only",
            ));
        }
        let current = store::get(&mut *tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
        let mut fields = current.fields();
        patch.apply(&mut fields);
        // Handing a customer to another owner takes what archiving it takes (R12): otherwise
        // a rep could make any customer their own and then archive it.
        if patch.owner_id.as_ref().is_some_and(|new| *new != owner_id)
            && !sees(tx, &visibility, &owner_id).await?
        {
            return Err(ApiError::out_of_scope(
                "a customer's owner is changed by its owner, a manager of the owner's team, or an admin",
            ));
        }
        let owner_id = patch.owner_id.clone().unwrap_or(owner_id);
        check_owner(tx, caller, &owner_id).await?;
        store::update(tx, id, &fields, &owner_id, &caller.id)
            .await
            .map_err(map_write_error)?;
        fetch(tx, id).await
    })
    .await?;
    tracing::info!(customer_id = %id, actor = %caller.id, "customer updated");
    Ok(response)
}

/// Whether the caller's R12 scope takes in a customer owned by `owner_id`: the owner, a
/// manager of the owner's team, or an admin may archive it or hand it on.
async fn sees(tx: &mut PgConnection, visibility: &Visibility, owner_id: &str) -> ApiResult<bool> {
    let owner_team = match visibility {
        Visibility::Team { .. } => people::team_of(tx, owner_id).await?.unwrap_or_default(),
        _ => String::new(),
    };
    Ok(visibility.sees(owner_id, &owner_team))
}

pub async fn delete(
    pool: &PgPool,
    caller: Sales<'_>,
    input: DeleteCustomer,
) -> ApiResult<pb::Customer> {
    let visibility = Visibility::of(caller);
    let caller: &Principal = &caller;
    let id = input.id;
    let response = write(pool, caller, &input.retry, async |tx| {
        let (revision, archived, owner_id) = store::lock(tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found(RESOURCE, id.to_string()))?;
        if !sees(tx, &visibility, &owner_id).await? {
            return Err(ApiError::out_of_scope(
                "a customer is archived by its owner, a manager of the owner's team, or an admin",
            ));
        }
        // AIP-135: deleting what is already archived answers it, whatever the etag (a retry
        // of a delete that succeeded carries the etag from before it).
        if archived {
            return fetch(tx, id).await;
        }
        if input.etag.as_ref().is_some_and(|etag| *etag != revision.to_string()) {
            return Err(ApiError::stale_etag(RESOURCE));
        }
        let open = store::open_opportunities(tx, id).await?;
        if open > 0 {
            return Err(ApiError::failed_precondition(
                Reason::CustomerHasOpenOpportunities,
                id.to_string(),
                format!(
                    "the customer has {open} open opportunities: close or move them before archiving"
                ),
            ));
        }
        store::archive(tx, id, &caller.id).await?;
        fetch(tx, id).await
    })
    .await?;
    tracing::info!(customer_id = %id, actor = %caller.id, "customer archived");
    Ok(response)
}

pub async fn list(
    pool: &PgPool,
    _caller: Sales<'_>,
    input: ListCustomers<ListFilter>,
) -> ApiResult<pb::ListCustomersResponse> {
    let filter = &input.filter;
    let page = input.page.open::<ListAfter>(&("customers", filter))?;
    let matches_order = matches!(
        (&page.after, filter.order),
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
    let mut rows = store::list(pool, filter, page.after.as_ref(), page.limit()).await?;
    let next_page_token = page.next_token(&mut rows, |last| match filter.order {
        ListOrder::DisplayName => ListAfter::Name(last.name_key.clone(), last.id),
        ListOrder::UpdateTimeDesc => ListAfter::UpdateTime(last.update_time, last.id),
    });
    Ok(pb::ListCustomersResponse {
        customers: rows.iter().map(customer_to_proto).collect(),
        next_page_token,
    })
}
