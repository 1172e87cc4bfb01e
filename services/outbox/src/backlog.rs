//! The outbox backlog: events written that the sequencer has not placed yet, and the age of
//! the oldest of them, measured by a query of its own every few seconds (beside the
//! sequencer, not inside it, so a stuck or absent sequencer still shows). Every process
//! that runs a sequencer measures it; they all see the same table, so dashboards and alerts
//! take the `max` across them.

use std::time::Duration;

use sqlx::PgPool;

/// How often the backlog is measured.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Most unplaced events counted (the count reads the partial index of unplaced events).
const COUNT_LIMIT: i64 = 100_000;

/// The backlog now: (unplaced events up to 100,000, age in seconds of the oldest).
pub async fn measure(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let (events, age): (i64, Option<f64>) = sqlx::query_as(
        "select count(*), extract(epoch from now() - min(e.occur_time))::float8
         from (select e.occur_time from opportunity_events e
               where e.seq is null limit $1) e",
    )
    .bind(COUNT_LIMIT)
    .fetch_one(pool)
    .await?;
    Ok((events, age.unwrap_or(0.0).max(0.0)))
}

/// Sets the backlog gauges every `interval` until the task is dropped; a failed measure is
/// logged and leaves the last values.
pub async fn run(pool: PgPool, interval: Duration) {
    let metrics = &salesopp_kit::metrics::metrics().events;
    loop {
        match measure(&pool).await {
            Ok((events, age)) => {
                metrics.outbox_backlog_events.set(events);
                metrics.outbox_backlog_seconds.set(age);
            }
            Err(error) => tracing::debug!(%error, "outbox backlog: cannot measure"),
        }
        tokio::time::sleep(interval).await;
    }
}
