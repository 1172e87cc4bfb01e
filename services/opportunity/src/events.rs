//! The change feed: the outbox rows every opportunity write adds in its own transaction, and
//! `WatchOpportunityEvents`, which streams them from a cursor.
//!
//! Ordering: writers never wait for each other here. Each event records its transaction
//! (`xact_id`) and the opportunity's new `version`, and commits with its write; the
//! sequencer ([`crate::sequencer`]) later gives it its delivery position `seq`, once no
//! older transaction can still commit. Readers follow `seq`, so a reader never skips an
//! event that commits late: it has no position until it and everything older is settled.
//!
//! Delivery is at-least-once: a reader resumes after the cursor of the last event it
//! processed, and a reconnect may repeat events it had received but not processed.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use prost::Message as _;
use salesopp_kit::error::{ApiError, ApiResult};
use salesopp_proto::opportunity::v1 as pb;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::Visibility;

/// How often an idle stream looks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Most events read per query.
const BATCH: i64 = 200;

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
/// version); wakes the sequencer when the transaction commits.
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

/// The opaque cursor of an event id.
pub fn cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("ev1:{id}"))
}

pub fn parse_cursor(cursor: &str) -> ApiResult<i64> {
    if cursor.is_empty() {
        return Ok(0);
    }
    let invalid = || ApiError::invalid("after_cursor", "not a cursor this stream sent");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix("ev1:")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .ok_or_else(invalid)
}

/// What a watcher asked for.
#[derive(Debug, Clone)]
pub struct Watch {
    pub visibility: Visibility,
    pub after: i64,
    /// Stored type names; empty means every type.
    pub types: Vec<String>,
}

pub fn watch_request(
    visibility: Visibility,
    request: &pb::WatchOpportunityEventsRequest,
) -> ApiResult<Watch> {
    let after = parse_cursor(&request.after_cursor)?;
    let mut types = Vec::new();
    for (index, raw) in request.types.iter().enumerate() {
        match pb::OpportunityEventType::try_from(*raw) {
            Ok(pb::OpportunityEventType::Created) => types.push("CREATED".to_owned()),
            Ok(pb::OpportunityEventType::Updated) => types.push("UPDATED".to_owned()),
            Ok(pb::OpportunityEventType::StatusChanged) => types.push("STATUS_CHANGED".to_owned()),
            _ => {
                return Err(ApiError::invalid(
                    format!("types[{index}]"),
                    "must be CREATED, UPDATED or STATUS_CHANGED",
                ));
            }
        }
    }
    Ok(Watch {
        visibility,
        after,
        types,
    })
}

/// The next events after `after` that the watcher may see (R12: the owner before or after
/// the change is visible to them).
async fn next_batch(
    pool: &PgPool,
    watch: &Watch,
    after: i64,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new(
        "select e.seq, e.payload from opportunity_events e where e.seq > ",
    );
    query.push_bind(after);
    if !watch.types.is_empty() {
        query
            .push(" and e.type = any(")
            .push_bind(watch.types.clone())
            .push(")");
    }
    match &watch.visibility {
        Visibility::All => {}
        Visibility::Own { me } => {
            query
                .push(" and (e.owner_id = ")
                .push_bind(me.clone())
                .push(" or e.previous_owner_id = ")
                .push_bind(me.clone())
                .push(")");
        }
        Visibility::Team { me, team } => {
            query
                .push(" and (e.owner_id = ")
                .push_bind(me.clone())
                .push(" or e.previous_owner_id = ")
                .push_bind(me.clone())
                .push(" or e.owner_id = any(array(select id from salespeople where team = ")
                .push_bind(team.clone())
                .push(")) or e.previous_owner_id = any(array(select id from salespeople where team = ")
                .push_bind(team.clone())
                .push(")))");
        }
    }
    query.push(" order by e.seq limit ").push_bind(BATCH);
    query.build_query_as().fetch_all(pool).await
}

/// Streams events into `sender` until the watcher goes away. Database errors end the
/// stream with UNAVAILABLE; the watcher resumes from its last cursor.
pub async fn stream(
    pool: PgPool,
    watch: Watch,
    sender: mpsc::Sender<Result<pb::OpportunityEvent, tonic::Status>>,
) {
    let mut after = watch.after;
    loop {
        let batch = match next_batch(&pool, &watch, after).await {
            Ok(batch) => batch,
            Err(error) => {
                let _ = sender.send(Err(ApiError::from(error).into())).await;
                return;
            }
        };
        let full = batch.len() as i64 == BATCH;
        for (id, payload) in batch {
            after = id;
            let mut event = match pb::OpportunityEvent::decode(payload.as_slice()) {
                Ok(event) => event,
                Err(error) => {
                    let _ = sender.send(Err(ApiError::internal(error).into())).await;
                    return;
                }
            };
            event.cursor = cursor(id);
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if !full {
            tokio::select! {
                _ = sender.closed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip_and_refuse_garbage() {
        assert_eq!(parse_cursor(&cursor(42)).unwrap(), 42);
        assert_eq!(parse_cursor("").unwrap(), 0);
        assert!(parse_cursor("nope").is_err());
        assert!(parse_cursor(&URL_SAFE_NO_PAD.encode("ev1:-3")).is_err());
    }
}
