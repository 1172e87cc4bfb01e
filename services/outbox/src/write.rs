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
    pub payload: &'a [u8],
}

/// [`append`]'s statement (the benchmark's pgbench script runs this same text). The select
/// list names each value's type: Postgres reads an untyped `$n` there as text.
pub const APPEND_SQL: &str = include_str!("../queries/append.sql");

/// Appends `event` in the caller's transaction, which holds the opportunity's row lock and
/// whose own write of the row already moved it to the event's version (an insert at version
/// 1, a status move at the next): one write of the row per change, so no second version of
/// it (and of its index entries) just for the number. The statement checks the version; the
/// unique (opportunity, version) index makes each version one event. Writers take no other
/// lock, and notify nobody in their transaction: the caller wakes the sequencer once it has
/// committed ([`crate::Wake::committed`]); the order of delivery is the sequencer's work.
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
        event.payload,
        event.version
    )
    .execute(tx)
    .await?;
    if written.rows_affected() != 1 {
        return Err(ApiError::internal(format!(
            "opportunity {} is not at version {} (was it written at its event's version?)",
            event.opportunity_id, event.version
        )));
    }
    Ok(())
}

/// [`append`] for a change whose writes did not move the opportunity's version (an update
/// of its fields, the stale sweep's mark): this statement moves it, from the event's
/// version - 1, under the row lock the caller holds.
pub async fn append_moving(tx: &mut PgConnection, event: &NewEvent<'_>) -> ApiResult<()> {
    let written = sqlx::query_file!(
        "queries/append_moving.sql",
        event.event_id,
        event.event_type,
        event.opportunity_id,
        event.time,
        event.actor_id,
        event.actor_name,
        event.request_id,
        event.owner_id,
        event.previous_owner_id,
        event.payload,
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

/// [`append`] for many opportunities at once (R21 batches): one statement checks that each
/// is at its event's version (the batch's insert or move wrote it) and writes the events.
/// The caller holds every opportunity's row lock, and each opportunity appears once.
pub async fn append_many(tx: &mut PgConnection, events: &[NewEvent<'_>]) -> ApiResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let actor_ids: Vec<&str> = events.iter().map(|e| e.actor_id).collect();
    let actor_names: Vec<&str> = events.iter().map(|e| e.actor_name).collect();
    let request_ids: Vec<Option<&str>> = events.iter().map(|e| e.request_id).collect();
    let owner_ids: Vec<&str> = events.iter().map(|e| e.owner_id).collect();
    let previous_owner_ids: Vec<Option<&str>> =
        events.iter().map(|e| e.previous_owner_id).collect();
    let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let opportunity_ids: Vec<Uuid> = events.iter().map(|e| e.opportunity_id).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.time).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload).collect();
    let written = sqlx::query!(
        r#"with item as (
             select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[],
                                  $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                                  $10::bytea[], $11::bigint[])
                 as e (event_id, type, opportunity_id, occur_time, actor_id, actor_name,
                       request_id, owner_id, previous_owner_id, payload, version)),
         at_version as (
             select o.id, o.version from opportunities o join item on o.id = item.opportunity_id
             where o.id = any($3) and o.version = item.version)
         insert into opportunity_events
             (event_id, type, opportunity_id, occur_time, actor_id, actor_name, request_id,
              owner_id, previous_owner_id, payload, version)
         select item.event_id, item.type, item.opportunity_id, item.occur_time, item.actor_id,
                item.actor_name, item.request_id, item.owner_id, item.previous_owner_id,
                item.payload, at_version.version
         from item join at_version on at_version.id = item.opportunity_id"#,
        &event_ids,
        &types as &[&str],
        &opportunity_ids,
        &times,
        &actor_ids as &[&str],
        &actor_names as &[&str],
        &request_ids as &[Option<&str>],
        &owner_ids as &[&str],
        &previous_owner_ids as &[Option<&str>],
        &payloads as &[&[u8]],
        &versions,
    )
    .execute(tx)
    .await?;
    if written.rows_affected() != events.len() as u64 {
        return Err(ApiError::internal(format!(
            "{} of {} opportunities were not at their event's version (written at it?)",
            events.len() as u64 - written.rows_affected(),
            events.len()
        )));
    }
    Ok(())
}
