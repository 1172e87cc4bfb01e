//! The ordered reader: placed events by position, with what every reader needs to filter
//! them without another query (the owners' teams for R12), decoded once.
//!
//! Each read also returns the retention horizon from the same snapshot, so a reader whose
//! position was deleted under it learns so (`Expired`) instead of silently skipping ahead.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message as _;
use salesopp_proto::opportunity::v1 as pb;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::cursor::cursor;

/// One placed event as readers see it.
#[derive(Debug)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_type: String,
    pub opportunity_id: Uuid,
    pub owner_id: String,
    pub previous_owner_id: Option<String>,
    /// The teams of the owners, as recorded now (R12 visibility of managers).
    pub owner_team: Option<String>,
    pub previous_owner_team: Option<String>,
    pub occur_time: DateTime<Utc>,
    /// The decoded event with its `cursor` set; `None` when the stored payload does not
    /// decode (logged; readers skip it and the relay sets it aside).
    pub event: Option<pb::OpportunityEvent>,
    /// The stored payload, for what cannot decode it.
    pub payload: Vec<u8>,
}

/// Events read after a position.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<Arc<StoredEvent>>,
    /// The position read through: the last event's, or the position read after when none.
    pub through: i64,
    /// Whether the page was full (more may follow at once).
    pub full: bool,
}

/// Why a read gave no page.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The position lies before the oldest kept event: `oldest` is the position to resume
    /// after (its cursor starts at the oldest kept event).
    #[error(
        "events after position {after} were deleted by retention; the oldest kept follow position {oldest}"
    )]
    Expired { after: i64, oldest: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Up to `limit` placed events after position `after`, in position order.
pub async fn read_after<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    limit: i64,
) -> Result<Page, ReadError> {
    // The event's columns are null on the retention row alone (no event after the
    // position), a team when no salesperson has the id: `?` says so, since sqlx does not see
    // through these outer joins.
    let rows = sqlx::query!(
        r#"select r.deleted_through, e.seq as "seq?", e.type as "event_type?",
                  e.opportunity_id as "opportunity_id?", e.owner_id as "owner_id?",
                  e.previous_owner_id, so.team as "owner_team?",
                  sp.team as "previous_owner_team?", e.occur_time as "occur_time?",
                  e.payload as "payload?"
           from event_retention r
           left join lateral (
               select * from opportunity_events
               where seq > $1 order by seq limit $2) e on true
           left join salespeople so on so.id = e.owner_id
           left join salespeople sp on sp.id = e.previous_owner_id
           order by e.seq"#,
        after,
        limit
    )
    .fetch_all(db)
    .await?;
    let deleted_through = rows.first().map_or(0, |row| row.deleted_through);
    if after < deleted_through {
        return Err(ReadError::Expired {
            after,
            oldest: deleted_through,
        });
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(seq), Some(event_type), Some(opportunity_id), Some(owner_id)) =
            (row.seq, row.event_type, row.opportunity_id, row.owner_id)
        else {
            continue;
        };
        let payload = row.payload.unwrap_or_default();
        let event = decode(seq, &payload);
        events.push(Arc::new(StoredEvent {
            seq,
            event_type,
            opportunity_id,
            owner_id,
            previous_owner_id: row.previous_owner_id,
            owner_team: row.owner_team,
            previous_owner_team: row.previous_owner_team,
            occur_time: row.occur_time.unwrap_or_default(),
            event,
            payload,
        }));
    }
    let through = events.last().map_or(after, |event| event.seq);
    Ok(Page {
        full: events.len() as i64 == limit,
        events,
        through,
    })
}

/// The event stored at `seq`, with its cursor; `None` (logged) when its payload does not
/// decode, so readers skip it and the relay sets it aside.
fn decode(seq: i64, payload: &[u8]) -> Option<pb::OpportunityEvent> {
    match pb::OpportunityEvent::decode(payload) {
        Ok(mut event) => {
            event.cursor = cursor(seq);
            Some(event)
        }
        Err(error) => {
            tracing::error!(seq, %error, "an outbox event does not decode: skipped");
            None
        }
    }
}

/// Where the retained feed begins and ends now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The position to resume after to get the oldest kept event.
    pub oldest: i64,
    /// The newest placed position (`oldest` when none is kept).
    pub latest: i64,
    /// The occur_time of the newest deleted event, if any was deleted.
    pub deleted_through_time: Option<DateTime<Utc>>,
}

pub async fn bounds<'e>(db: impl PgExecutor<'e>) -> Result<Bounds, sqlx::Error> {
    let bounds = sqlx::query!(
        r#"select r.deleted_through,
                  greatest(r.deleted_through, coalesce((select max(seq) from opportunity_events), 0))
                      as "latest!",
                  r.deleted_through_time
           from event_retention r"#
    )
    .fetch_one(db)
    .await?;
    Ok(Bounds {
        oldest: bounds.deleted_through,
        latest: bounds.latest,
        deleted_through_time: bounds.deleted_through_time,
    })
}

/// Waits (a little: the sequencer places within milliseconds) until every committed event
/// that occurred before `time` has its position, so that none of them can be placed after the
/// position [`position_at`] picks and be sent as if it occurred later.
async fn placed_before(pool: &PgPool, time: DateTime<Utc>) -> Result<(), ReadError> {
    let deadline = tokio::time::Instant::now() + PLACEMENT_PATIENCE;
    loop {
        let waiting = sqlx::query_scalar!(
            r#"select exists (select 1 from opportunity_events
                              where seq is null and occur_time < $1) as "waiting!""#,
            time
        )
        .fetch_one(pool)
        .await?;
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// How long [`position_at`] waits for the sequencer: past it, the stream starts anyway.
const PLACEMENT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The position to resume after so that every placed event that occurred at or after
/// `time` follows (with, possibly, some that occurred a little earlier but committed
/// later); the latest position when none did. `Expired` when events of that time were
/// deleted already.
pub async fn position_at(pool: &PgPool, time: DateTime<Utc>) -> Result<i64, ReadError> {
    let bounds = bounds(pool).await?;
    if bounds
        .deleted_through_time
        .is_some_and(|deleted| time <= deleted)
    {
        return Err(ReadError::Expired {
            after: 0,
            oldest: bounds.oldest,
        });
    }
    placed_before(pool, time).await?;
    let first = sqlx::query_scalar!(
        "select min(seq) from opportunity_events where occur_time >= $1 and seq is not null",
        time
    )
    .fetch_one(pool)
    .await?;
    Ok(match first {
        Some(seq) => (seq - 1).max(bounds.oldest),
        None => bounds.latest,
    })
}
