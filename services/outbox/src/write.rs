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

/// [`append`]'s statement (the benchmark's pgbench script runs this same text). The select
/// list names each value's type: Postgres reads an untyped `$n` there as text.
pub const APPEND_SQL: &str = include_str!("../queries/append.sql");

/// Appends `event` in the caller's transaction, which holds the opportunity's row lock, and
/// moves the opportunity to the event's version in the same statement (one write, one
/// version); wakes the sequencer when the transaction commits. Writers take no other lock:
/// the order of delivery is the sequencer's work, after commit.
pub async fn append(tx: &mut PgConnection, event: &NewEvent<'_>) -> ApiResult<()> {
    let written = sqlx::query_file!(
        "queries/append.sql",
        event.event_id,
        event.event_type,
        event.opportunity_id,
        event.time,
        event.actor_id,
        event.actor_name,
        event.request_id,
        event.owner_id,
        event.previous_owner_id,
        &event.payload,
        event.version
    )
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
