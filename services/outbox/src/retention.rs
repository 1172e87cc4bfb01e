//! Retention: events older than the configured retention (`SALESOPP_EVENT_RETENTION`, 30
//! days by default) and idempotency records older than their 24 hours (R11) are deleted, in
//! small batches so no long lock or transaction holds writers back, by one replica at a
//! time (a transaction-scoped advisory lock per batch; the others skip the batch).
//!
//! Events go from the oldest position up, never leaving a hole: a batch deletes the longest
//! run of old events at the start of the feed and records the position it deleted through
//! in `event_retention`, in the same transaction. Readers compare their position with it in
//! the snapshot of every read, so a cursor from before it answers OUT_OF_RANGE, with the
//! oldest available cursor, instead of skipping silently.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The lock one replica's batch holds.
const RETENTION_LOCK: i64 = 0x5a1e_500f_5e92;

/// What is kept, and how it is swept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long events are kept.
    pub events: Duration,
    /// How long idempotency records are kept (R11: 24 hours).
    pub idempotency: Duration,
    /// Rows per delete.
    pub batch: i64,
    /// How often the sweep runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            events: Duration::from_secs(30 * 24 * 3600),
            idempotency: Duration::from_secs(24 * 3600),
            batch: 1_000,
            interval: Duration::from_secs(60),
        }
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub events: u64,
    pub idempotency_records: u64,
}

fn before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

/// Deletes, as of `now`, everything past its retention; stops early when another replica
/// is sweeping.
pub async fn sweep(
    pool: &PgPool,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Result<Swept, sqlx::Error> {
    let mut swept = Swept::default();
    let events_before = before(now, retention.events);
    loop {
        let Some(deleted) = delete_events(pool, retention.batch, events_before).await? else {
            return Ok(swept);
        };
        swept.events += deleted;
        if deleted < retention.batch as u64 {
            break;
        }
    }
    let records_before = before(now, retention.idempotency);
    loop {
        let Some(deleted) = delete_records(pool, retention.batch, records_before).await? else {
            return Ok(swept);
        };
        swept.idempotency_records += deleted;
        if deleted < retention.batch as u64 {
            break;
        }
    }
    let metrics = &salesopp_kit::metrics::metrics().events.retained_deleted;
    metrics
        .with_label_values(&["opportunity_events"])
        .inc_by(swept.events);
    metrics
        .with_label_values(&["idempotency_records"])
        .inc_by(swept.idempotency_records);
    Ok(swept)
}

/// One batch of the oldest events past retention, deleted with the horizon moved past them
/// in the same transaction; `None` when another replica is sweeping.
async fn delete_events(
    pool: &PgPool,
    batch: i64,
    events_before: DateTime<Utc>,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !salesopp_kit::db::try_xact_lock(&mut tx, RETENTION_LOCK).await? {
        return Ok(None);
    }
    // The oldest placed events, and how many of them, from the start, are past it.
    let gone = sqlx::query!(
        r#"with head as (
               select e.seq, e.occur_time,
                      bool_and(e.occur_time < $2) over (order by e.seq) as old
               from opportunity_events e, event_retention r
               where e.seq > r.deleted_through
               order by e.seq limit $1),
           gone as (
               delete from opportunity_events e
               using head
               where e.seq = head.seq and head.old
               returning e.seq, e.occur_time)
           select count(*) as "deleted!", max(seq) as through, max(occur_time) as through_time
           from gone"#,
        batch,
        events_before
    )
    .fetch_one(&mut *tx)
    .await?;
    let deleted = gone.deleted;
    if let Some(through) = gone.through {
        sqlx::query!(
            "update event_retention
             set deleted_through = greatest(deleted_through, $1),
                 deleted_through_time = greatest(deleted_through_time, $2)",
            through,
            gone.through_time
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(deleted as u64))
}

/// One batch of idempotency records past retention; `None` when another replica is sweeping.
async fn delete_records(
    pool: &PgPool,
    batch: i64,
    records_before: DateTime<Utc>,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !salesopp_kit::db::try_xact_lock(&mut tx, RETENTION_LOCK).await? {
        return Ok(None);
    }
    let deleted = sqlx::query!(
        "delete from idempotency_records
         where ctid = any(array(select ctid from idempotency_records
                                where create_time < $2 limit $1))",
        batch,
        records_before
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(deleted))
}

/// Sweeps every `retention.interval` until the task is dropped; errors are logged and the
/// next sweep tries again.
pub async fn run(pool: PgPool, retention: Retention) {
    loop {
        match sweep(&pool, &retention, Utc::now()).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(?swept, "retention swept");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention sweep failed: retrying later"),
        }
        tokio::time::sleep(retention.interval).await;
    }
}
