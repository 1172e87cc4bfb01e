//! The writer: the outbox row every opportunity change adds in its own transaction.

use chrono::{DateTime, Utc};
use salesopp_kit::error::{ApiError, ApiResult};
use sqlx::PgConnection;
use uuid::Uuid;

/// One outbox row to write.
pub struct NewEvent<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub opportunity_id: Uuid,
    pub time: DateTime<Utc>,
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub request_id: Option<&'a str>,
    pub owner_id: &'a str,
    pub previous_owner_id: Option<&'a str>,
    /// The opportunity's version this event makes (its current one + 1).
    pub version: i64,
    pub payload: Vec<u8>,
}

/// Appends `event` in the caller's transaction, which holds the opportunity's row lock, and
/// moves the opportunity to the event's version in the same statement (one write, one
/// version); wakes the sequencer when the transaction commits. Writers take no other lock:
/// the order of delivery is the sequencer's work, after commit.
pub async fn append(tx: &mut PgConnection, event: &NewEvent<'_>) -> ApiResult<()> {
    let written = sqlx::query(
        "with bumped as (
             update opportunities set version = $11 where id = $3 and version = $11 - 1
             returning version)
         insert into opportunity_events
             (event_id, type, opportunity_id, occur_time, actor_id, actor_name, request_id,
              owner_id, previous_owner_id, payload, version)
         select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, bumped.version
         from bumped, (select pg_notify('salesopp_events', '')) wake",
    )
    .bind(event.event_id)
    .bind(event.event_type)
    .bind(event.opportunity_id)
    .bind(event.time)
    .bind(event.actor_id)
    .bind(event.actor_name)
    .bind(event.request_id)
    .bind(event.owner_id)
    .bind(event.previous_owner_id)
    .bind(&event.payload)
    .bind(event.version)
    .execute(tx)
    .await?;
    if written.rows_affected() != 1 {
        return Err(ApiError::internal(format!(
            "opportunity {} is not at version {} (its row lock is not held?)",
            event.opportunity_id,
            event.version - 1
        )));
    }
    Ok(())
}
