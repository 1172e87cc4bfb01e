//! R16 stale deals: the sweep that writes one `STALE` event when an open opportunity has gone
//! `stale_after_days` of its status without a change.
//!
//! Being stale needs no write: `stale_since` is computed on every read from `update_time` and
//! the status's threshold (`salesopp_stale_since`, migrations/20261201000007_stale_deals.sql),
//! so it is exact, a threshold change applies at once, and any change resets it. The sweep
//! only tells the event consumers: it finds the stale opportunities not yet told about in
//! this quiet stretch (`stale_notified_for` differs from `update_time`) through a partial
//! index that holds just those, writes the event and marks the stretch, in one transaction.
//!
//! One replica sweeps at a time (a transaction-scoped advisory lock; the others skip that
//! round), and an opportunity a write holds is skipped (`skip locked`): the write resets it.
//! The mark and the event commit together, so a crash leaves neither.

use std::time::Duration;

use salesopp_kit::Principal;
use salesopp_kit::error::ApiResult;
use sqlx::PgPool;

use crate::convert::opportunity_to_proto;
use crate::status_change::{STALE, Version, append_event};
use crate::store;

/// The lock one replica's sweep holds.
const STALE_LOCK: i64 = 0x5a1e_57a1_e000;

/// How often each replica tries a sweep, unless `SALESOPP_STALE_INTERVAL` says otherwise.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The candidates of one sweep, per status with a threshold oldest first, read from the
/// partial index (status_id, update_time) of the open opportunities not yet told about
/// (the plan check runs this same text).
pub const DUE_SQL: &str = include_str!("../queries/stale_due.sql");

/// The most events one sweep transaction writes (a write to one of them waits for the
/// batch to commit); a full batch goes again at once.
pub const BATCH: i64 = 100;

/// Who the STALE events name as their actor: the service itself.
pub fn actor() -> Principal {
    Principal {
        id: "salesopp".to_owned(),
        display_name: "salesopp".to_owned(),
        team: String::new(),
        roles: Default::default(),
        recorded: true,
    }
}

/// One sweep of up to `batch` opportunities, as of `salesopp_now()`: the number of STALE
/// events written, or `None` when another replica is sweeping.
pub async fn sweep(pool: &PgPool, batch: i64) -> ApiResult<Option<u64>> {
    let metrics = &salesopp_kit::metrics::metrics().events;
    let mut tx = pool.begin().await?;
    if !salesopp_kit::db::try_xact_lock(&mut tx, STALE_LOCK).await? {
        metrics.stale_sweeps.with_label_values(&["skipped"]).inc();
        return Ok(None);
    }
    // The candidates ([`DUE_SQL`]), then locked, skipping any a write holds.
    let due = sqlx::query_file_scalar!("queries/stale_due.sql", batch)
        .fetch_all(&mut *tx)
        .await?;
    let locked = sqlx::query_scalar!(
        "select id from opportunities
         where id = any($1) and stale_notified_for is distinct from update_time
         order by id for update skip locked",
        &due
    )
    .fetch_all(&mut *tx)
    .await?;
    let actor = actor();
    let time = store::clock(&mut tx).await?;
    let mut sent = 0;
    for id in locked {
        // Read again under the lock: what is written is the opportunity as it is now.
        let Some(row) = store::get(&mut *tx, id).await? else {
            continue;
        };
        if row.stale_since.is_none() {
            continue;
        }
        sqlx::query!(
            "update opportunities set stale_notified_for = update_time where id = $1",
            id
        )
        .execute(&mut *tx)
        .await?;
        append_event(
            &mut tx,
            STALE,
            &actor,
            time,
            None,
            opportunity_to_proto(&row),
            None,
            None,
            Version::ByEvent,
        )
        .await?;
        sent += 1;
    }
    tx.commit().await?;
    metrics.stale_sweeps.with_label_values(&["ran"]).inc();
    metrics.stale_events.inc_by(sent);
    Ok(Some(sent))
}

/// Sweeps every `interval` until the task is dropped; a full batch goes again at once;
/// errors are logged and the next round tries again. A sweep that told of any wakes the
/// event sequencer through `wake`.
pub async fn run(pool: PgPool, interval: Duration, wake: salesopp_outbox::Wake) {
    loop {
        let swept = sweep(&pool, BATCH).await;
        if matches!(swept, Ok(Some(sent)) if sent > 0) {
            wake.committed();
        }
        match swept {
            Ok(Some(sent)) if sent as i64 >= BATCH => continue,
            Ok(Some(sent)) if sent > 0 => tracing::info!(sent, "stale opportunities told"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "stale sweep failed: retrying later"),
        }
        tokio::time::sleep(interval).await;
    }
}
