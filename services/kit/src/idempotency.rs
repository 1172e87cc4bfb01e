//! Safe retries (R11): the first result of each (caller, method, request_id) is kept for
//! 24 hours and returned to every retry; nothing is done twice.
//!
//! The claim is a row inserted at the start of the call's own transaction: a concurrent
//! retry blocks on it until the first commits (and then replays its result) or rolls back
//! (and then does the work itself). A key reused with a different request is refused.

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::ApiError;

/// How long a request id is remembered.
pub const RETENTION_HOURS: i64 = 24;

/// Validates a `request_id` field.
pub fn validate_request_id(field: &str, request_id: &str) -> Result<(), (String, String)> {
    if request_id.is_empty() {
        return Err((
            field.to_owned(),
            "required: a client-chosen id, such as a UUID".into(),
        ));
    }
    if request_id.len() > 100 || request_id.chars().any(char::is_control) {
        return Err((
            field.to_owned(),
            "must be 1..100 printable characters".into(),
        ));
    }
    Ok(())
}

pub enum Claim<R> {
    /// First time: do the work, then [`complete`] in the same transaction.
    New,
    /// A retry: the first call's response.
    Replay(R),
}

/// Claims `(caller, method, request_id)` inside `tx`, or returns the first call's response.
pub async fn claim<Req: Message, Resp: Message + Default>(
    tx: &mut PgConnection,
    caller: &str,
    method: &str,
    request_id: &str,
    request: &Req,
) -> Result<Claim<Resp>, ApiError> {
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

/// Stores the response of a claimed call, in the call's transaction.
pub async fn complete<Resp: Message>(
    tx: &mut PgConnection,
    caller: &str,
    method: &str,
    request_id: &str,
    response: &Resp,
) -> Result<(), ApiError> {
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
