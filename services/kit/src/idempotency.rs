//! Safe retries (R11): the first result of each (caller, method, request_id) is kept for
//! 24 hours and returned to every retry; nothing is done twice.
//!
//! The claim is a row inserted at the start of the call's own transaction: a concurrent
//! retry blocks on it until the first commits (and then replays its result) or rolls back
//! (and then does the work itself). A key reused with a different request is refused.

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::error::{ApiError, FieldViolations};
use crate::identity::Principal;
use crate::people;

/// How long a request id is remembered.
pub const RETENTION_HOURS: i64 = 24;

/// The `request_id` of a request (AIP-155: optional): `None` when empty, else 1..100
/// printable characters (a violation on `field` otherwise).
pub fn request_id(violations: &mut FieldViolations, field: &str, raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    if raw.chars().count() > 100 || raw.chars().any(char::is_control) {
        violations.add(
            field,
            "must be 1..100 printable characters (a UUID is a good choice)",
        );
        return None;
    }
    Some(raw.to_owned())
}

/// The `request_id` of a request with no other field to check: `INVALID_ARGUMENT` on
/// `request_id` when malformed.
pub fn parse_request_id(raw: &str) -> Result<Option<String>, ApiError> {
    let mut violations = FieldViolations::new();
    let request_id = request_id(&mut violations, "request_id", raw);
    violations.into_result()?;
    Ok(request_id)
}

enum Claim<R> {
    /// First time: do the work, then [`complete`] in the same transaction.
    New,
    /// A retry: the first call's response.
    Replay(R),
}

/// What de-duplicates one write (R11): its method, the request's optional `request_id`, and
/// a hash of the whole request (a reused id must come with the same request). Made while the
/// request is decoded, so the service function needs nothing of the wire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub method: &'static str,
    pub request_id: Option<String>,
    hash: Vec<u8>,
}

impl Retry {
    /// For `request` of `method`, whose `request_id` is already validated.
    pub fn of<Req: Message>(
        method: &'static str,
        request_id: Option<String>,
        request: &Req,
    ) -> Self {
        Self {
            method,
            request_id,
            hash: Sha256::digest(request.encode_to_vec()).to_vec(),
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

/// One write (R11), the one way every service begins and ends one: a transaction that
/// claims the request id (a retry answers the first response and does nothing), makes sure
/// the caller's salesperson row exists ([`people::record`]), runs `work`, stores its
/// response for retries and commits. An error anywhere rolls everything back. Traced as one
/// span (the transaction), with `salesopp.replayed` set when a retry answered the first
/// response.
#[tracing::instrument(
    name = "write transaction",
    skip_all,
    fields(
        otel.kind = "client",
        db.system.name = "postgresql",
        salesopp.method = retry.method,
        salesopp.replayed = false,
    )
)]
pub async fn write<Resp, Work>(
    pool: &PgPool,
    caller: &Principal,
    retry: &Retry,
    work: Work,
) -> Result<Resp, ApiError>
where
    Resp: Message + Default,
    Work: AsyncFnOnce(&mut PgConnection) -> Result<Resp, ApiError>,
{
    let mut tx = pool.begin().await?;
    if let Claim::Replay(first) = claim(&mut tx, &caller.id, retry).await? {
        tracing::Span::current().record("salesopp.replayed", true);
        return Ok(first);
    }
    people::record(&mut tx, caller).await?;
    let response = work(&mut tx).await?;
    complete(&mut tx, &caller.id, retry, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Claims `(caller, method, request_id)` inside `tx`, or returns the first call's response.
/// A call without a request id is always new (it is not de-duplicated).
async fn claim<Resp: Message + Default>(
    tx: &mut PgConnection,
    caller: &str,
    retry: &Retry,
) -> Result<Claim<Resp>, ApiError> {
    let Some(request_id) = retry.request_id() else {
        return Ok(Claim::New);
    };
    let claimed = sqlx::query_scalar!(
        r#"insert into idempotency_records (caller_id, method, request_id, request_hash, response)
         values ($1, $2, $3, $4, '')
         on conflict (caller_id, method, request_id) do update
             set request_hash = excluded.request_hash, response = '', create_time = now()
             where idempotency_records.create_time < now() - make_interval(hours => $5)
         returning 1 as "claimed!""#,
        caller,
        retry.method,
        request_id,
        &retry.hash,
        RETENTION_HOURS as i32,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_some() {
        return Ok(Claim::New);
    }
    let first = sqlx::query!(
        "select request_hash, response from idempotency_records
         where caller_id = $1 and method = $2 and request_id = $3",
        caller,
        retry.method,
        request_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let (first_hash, response) = (first.request_hash, first.response);
    if first_hash != retry.hash {
        return Err(ApiError::invalid(
            "request_id",
            "this request_id was already used for a different request",
        ));
    }
    let response = Resp::decode(response.as_slice()).map_err(ApiError::internal)?;
    Ok(Claim::Replay(response))
}

/// Stores the response of a claimed call, in the call's transaction (nothing without a
/// request id).
async fn complete<Resp: Message>(
    tx: &mut PgConnection,
    caller: &str,
    retry: &Retry,
    response: &Resp,
) -> Result<(), ApiError> {
    let Some(request_id) = retry.request_id() else {
        return Ok(());
    };
    sqlx::query!(
        "update idempotency_records set response = $4
         where caller_id = $1 and method = $2 and request_id = $3",
        caller,
        retry.method,
        request_id,
        response.encode_to_vec(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What the claim of one batch item's request id found (R11 per item, [`crate::batch`]).
pub enum ItemClaim<R> {
    /// First time: write the item, then [`complete_items`] in the same transaction.
    New,
    /// A retry: the first call's answer for the item.
    Replay(R),
    /// The id was used with a different request.
    Refused(ApiError),
}

/// Claims the request ids of a batch's items at once, each under its single call's method,
/// so a batch item and a single call with the same id are one request. Ids are claimed in
/// their sort order, so two batches sharing ids wait on each other rather than deadlock.
/// Every retry must carry a request id.
pub async fn claim_items<Resp: Message + Default>(
    tx: &mut PgConnection,
    caller: &str,
    retries: &[&Retry],
) -> Result<Vec<ItemClaim<Resp>>, ApiError> {
    let Some(method) = retries.first().map(|r| r.method) else {
        return Ok(Vec::new());
    };
    if retries.iter().any(|r| r.method != method) {
        return Err(ApiError::internal(
            "a batch claims one method's request ids",
        ));
    }
    let ids: Vec<&str> = retries
        .iter()
        .map(|r| {
            r.request_id()
                .ok_or_else(|| ApiError::internal("a batch claim without an id"))
        })
        .collect::<Result<_, _>>()?;
    let hashes: Vec<Vec<u8>> = retries.iter().map(|r| r.hash.clone()).collect();
    let claimed: std::collections::HashSet<String> = sqlx::query_scalar!(
        r#"insert into idempotency_records (caller_id, method, request_id, request_hash, response)
         select $1, $2, item.request_id, item.request_hash, ''
         from unnest($3::text[], $4::bytea[]) as item (request_id, request_hash)
         order by item.request_id
         on conflict (caller_id, method, request_id) do update
             set request_hash = excluded.request_hash, response = '', create_time = now()
             where idempotency_records.create_time < now() - make_interval(hours => $5)
         returning request_id"#,
        caller,
        method,
        &ids as &[&str],
        &hashes,
        RETENTION_HOURS as i32,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let taken: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !claimed.contains(*id))
        .collect();
    let mut firsts = std::collections::HashMap::new();
    if !taken.is_empty() {
        for first in sqlx::query!(
            "select request_id, request_hash, response from idempotency_records
             where caller_id = $1 and method = $2 and request_id = any($3)",
            caller,
            method,
            &taken as &[&str],
        )
        .fetch_all(&mut *tx)
        .await?
        {
            firsts.insert(first.request_id, (first.request_hash, first.response));
        }
    }
    retries
        .iter()
        .zip(&ids)
        .map(|(retry, id)| {
            if claimed.contains(*id) {
                return Ok(ItemClaim::New);
            }
            let (hash, response) = firsts
                .remove(*id)
                .ok_or_else(|| ApiError::internal("a taken request id has no record"))?;
            if hash != retry.hash {
                return Ok(ItemClaim::Refused(ApiError::invalid(
                    "request_id",
                    "this request_id was already used for a different request",
                )));
            }
            let response = Resp::decode(response.as_slice()).map_err(ApiError::internal)?;
            Ok(ItemClaim::Replay(response))
        })
        .collect()
}

/// Stores the answers of claimed batch items, in the batch's transaction.
pub async fn complete_items<Resp: Message>(
    tx: &mut PgConnection,
    caller: &str,
    items: &[(Retry, Resp)],
) -> Result<(), ApiError> {
    let Some(method) = items.first().map(|(r, _)| r.method) else {
        return Ok(());
    };
    let ids: Vec<&str> = items.iter().filter_map(|(r, _)| r.request_id()).collect();
    let responses: Vec<Vec<u8>> = items.iter().map(|(_, resp)| resp.encode_to_vec()).collect();
    sqlx::query!(
        // `request_id = any($3)` finds the rows by the primary key: joined to the unnest
        // alone, the planner may read every record of the caller (it cannot see the
        // array's length).
        "update idempotency_records r set response = item.response
         from unnest($3::text[], $4::bytea[]) as item (request_id, response)
         where r.caller_id = $1 and r.method = $2 and r.request_id = any($3)
           and r.request_id = item.request_id",
        caller,
        method,
        &ids as &[&str],
        &responses,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Gives back the claims of batch items that were not written (partial success), so their
/// retries are tried again.
pub async fn release_items(
    tx: &mut PgConnection,
    caller: &str,
    retries: &[Retry],
) -> Result<(), ApiError> {
    let Some(method) = retries.first().map(|r| r.method) else {
        return Ok(());
    };
    let ids: Vec<&str> = retries.iter().filter_map(|r| r.request_id()).collect();
    sqlx::query!(
        "delete from idempotency_records
         where caller_id = $1 and method = $2 and request_id = any($3)",
        caller,
        method,
        &ids as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
