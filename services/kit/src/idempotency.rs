//! Safe retries (R11): the first result of each (caller, method, request_id) is kept for
//! 24 hours and returned to every retry; nothing is done twice.
//!
//! The claim is a row inserted at the start of the call's own transaction: a concurrent
//! retry blocks on it until the first commits (and then replays its result) or rolls back
//! (and then does the work itself). A key reused with a different request is refused.

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{ApiError, FieldViolations};

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

pub enum Claim<R> {
    /// First time: do the work, then [`complete`] in the same transaction.
    New,
    /// A retry: the first call's response.
    Replay(R),
}

/// Claims `(caller, method, request_id)` inside `tx`, or returns the first call's response.
/// A call without a request id is always new (it is not de-duplicated).
pub async fn claim<Req: Message, Resp: Message + Default>(
    tx: &mut PgConnection,
    caller: &str,
    method: &str,
    request_id: Option<&str>,
    request: &Req,
) -> Result<Claim<Resp>, ApiError> {
    let Some(request_id) = request_id else {
        return Ok(Claim::New);
    };
    let hash = Sha256::digest(request.encode_to_vec()).to_vec();
    let claimed: Option<i32> = sqlx::query_scalar(
        "insert into idempotency_records (caller_id, method, request_id, request_hash, response)
         values ($1, $2, $3, $4, '')
         on conflict (caller_id, method, request_id) do update
             set request_hash = excluded.request_hash, response = '', create_time = now()
             where idempotency_records.create_time < now() - make_interval(hours => $5)
         returning 1",
    )
    .bind(caller)
    .bind(method)
    .bind(request_id)
    .bind(&hash)
    .bind(RETENTION_HOURS as i32)
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_some() {
        return Ok(Claim::New);
    }
    let (first_hash, response): (Vec<u8>, Vec<u8>) = sqlx::query_as(
        "select request_hash, response from idempotency_records
         where caller_id = $1 and method = $2 and request_id = $3",
    )
    .bind(caller)
    .bind(method)
    .bind(request_id)
    .fetch_one(&mut *tx)
    .await?;
    if first_hash != hash {
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
pub async fn complete<Resp: Message>(
    tx: &mut PgConnection,
    caller: &str,
    method: &str,
    request_id: Option<&str>,
    response: &Resp,
) -> Result<(), ApiError> {
    let Some(request_id) = request_id else {
        return Ok(());
    };
    sqlx::query(
        "update idempotency_records set response = $4
         where caller_id = $1 and method = $2 and request_id = $3",
    )
    .bind(caller)
    .bind(method)
    .bind(request_id)
    .bind(response.encode_to_vec())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What de-duplicates one write (R11): its method, the request's optional `request_id`, and
/// the request itself (a reused id must come with the same request).
#[derive(Debug, Clone, Copy)]
pub struct Retry<'a, Req> {
    pub method: &'static str,
    pub request_id: Option<&'a str>,
    pub request: &'a Req,
}

impl<'a, Req: Message> Retry<'a, Req> {
    /// For `request`, whose `request_id` field is `raw` (already validated).
    pub fn new(method: &'static str, raw: &'a str, request: &'a Req) -> Self {
        Self {
            method,
            request_id: (!raw.is_empty()).then_some(raw),
            request,
        }
    }

    /// [`claim`] for `caller` in `tx`.
    pub async fn claim<Resp: Message + Default>(
        &self,
        tx: &mut PgConnection,
        caller: &crate::Principal,
    ) -> Result<Claim<Resp>, ApiError> {
        claim(tx, &caller.id, self.method, self.request_id, self.request).await
    }

    /// [`complete`] for `caller` in `tx`.
    pub async fn complete<Resp: Message>(
        &self,
        tx: &mut PgConnection,
        caller: &crate::Principal,
        response: &Resp,
    ) -> Result<(), ApiError> {
        complete(tx, &caller.id, self.method, self.request_id, response).await
    }
}
