//! The sequencer: gives each committed event its delivery position (`seq`), so that readers
//! (WatchOpportunityEvents, the NATS relay) can follow one increasing number and never skip
//! an event, while writers never wait for each other.
//!
//! Why this design. Event ids come from a sequence, handed out in the order transactions
//! ask, not the order they commit: a reader past id N could later see N-1 commit. Taking a
//! global lock from the event insert to commit (an earlier design) serialized the last step
//! of every write in the cluster. Instead readers follow `seq`, which the sequencer draws
//! when it places events, in one transaction at a time (one sequencer across replicas: a
//! session advisory lock; each batch under a transaction lock), so positions become visible
//! in increasing order: an event that commits late is placed late, after everything placed
//! before it, and no reader can skip it. Each pass places what has committed since the last
//! one, so the feed is in commit order between passes, and in event id order within one.
//!
//! An earlier version waited, before placing an event, until every transaction older than
//! its own had ended (a horizon read from `pg_stat_activity`), to place events in
//! transaction order. Under load that made each event wait for the slowest write that began
//! before it: about 70 ms at the median from a write's acknowledgement to its event's
//! receipt at 16 concurrent calls on 1,000,000 opportunities. Transaction order is not commit
//! order either; placing at commit is closer to it.
//!
//! Per opportunity, versions come in order: the writer of version n+1 waits for n's row lock,
//! so n has committed, and is visible to every snapshot that sees n+1, before n+1 takes its
//! event id, and n+1's id is the greater. The sequencer still checks it: it places an event
//! only once the event of the version before it is placed (in an earlier pass, or before it
//! in the same one), so a writer that broke the protocol holds back its own opportunity's
//! events, never the others'.
//!
//! Latency: once a write has committed, its process sends `NOTIFY salesopp_events` (never in
//! the write's own transaction: [`crate::wake`] says why); the sequencer listens, and polls
//! besides, for a lost wake-up and for writers that send none. It notifies
//! `salesopp_events_placed` in its own commit, which wakes every process's tail.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// The session advisory lock that makes one sequencer active across replicas.
const SEQUENCER_LOCK: i64 = 0x5a1e_500f_5e90;
/// The transaction lock each placing batch takes (a test holds it to stop placement).
pub const BATCH_LOCK: i64 = 0x5a1e_500f_5e91;
/// The channel a process notifies once a write of events has committed ([`crate::wake`]).
pub const CHANNEL: &str = "salesopp_events";
/// The channel the sequencer notifies when it placed events: every process's tail
/// ([`crate::tail`]) listens to it.
pub const PLACED_CHANNEL: &str = "salesopp_events_placed";
/// Most events placed per transaction.
const BATCH: i64 = 1_000;
/// How often the active sequencer looks without being woken (a wake-up lost with its
/// connection or its process, a writer that sends none).
const FALLBACK_POLL: Duration = Duration::from_millis(100);
/// How often a standby tries to become the active sequencer.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Places every settled event that is ready, in batches; returns how many it placed.
pub async fn sequence(conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
    let mut placed = 0;
    loop {
        let batch = sequence_batch(conn).await?;
        placed += batch.0;
        salesopp_kit::metrics::metrics()
            .events
            .placed
            .inc_by(batch.0 as u64);
        if !batch.1 {
            return Ok(placed);
        }
    }
}

/// One transaction's worth: (placed, whether a full batch was read).
async fn sequence_batch(conn: &mut PgConnection) -> Result<(usize, bool), sqlx::Error> {
    let mut tx = conn.begin().await?;
    // Batches one at a time, whoever runs them (the active sequencer, a test): positions
    // become visible in increasing order and no event is placed twice. Writers never take it.
    // And plain index scans only (`set local`), whatever the statistics say (a table that
    // grew fast has none yet): the candidates come in order from the partial index of
    // unplaced events, each previous version is one probe of the (opportunity, version)
    // index, and an index scan marks the entries of placed events dead as it passes them. A
    // bitmap scan does not, so until a vacuum each batch would read every event placed since
    // the last one. One statement for both: a round trip less per batch.
    sqlx::query!(
        "select pg_advisory_xact_lock($1), set_config('enable_bitmapscan', 'off', true)",
        BATCH_LOCK
    )
    .fetch_one(&mut *tx)
    .await?;
    // Committed unplaced events, by id, each with whether the event of its previous version
    // is itself still unplaced.
    let candidates: Vec<(i64, Uuid, i64, bool)> = sqlx::query!(
        // The previous version found by the (opportunity, version) index alone and its `seq`
        // read from the row: as a condition, `seq is null` would be an index condition on
        // the `seq` index too, which holds every unplaced event (and, until a vacuum, every
        // event placed since): one read of those per candidate.
        r#"select e.id, e.opportunity_id, e.version,
                coalesce((select p.seq is null from opportunity_events p
                          where p.opportunity_id = e.opportunity_id
                            and p.version = e.version - 1), false) as "waits!"
         from opportunity_events e
         where e.seq is null
         order by e.id
         limit $1"#,
        BATCH
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|e| (e.id, e.opportunity_id, e.version, e.waits))
    .collect();
    let full = candidates.len() as i64 == BATCH;
    let ready = ready_in_order(&candidates);
    if !ready.is_empty() {
        // Materialized: positions are drawn once, in placement order (a subquery could be
        // rescanned by the join and draw them again). The notification is delivered at
        // commit, when the positions become visible.
        sqlx::query!(
            "with placed as materialized (
                 select u.id, nextval('opportunity_event_seq') as seq
                 from unnest($1::bigint[]) with ordinality as u(id, position)
                 order by u.position),
             woken as materialized (select pg_notify($2, ''))
             update opportunity_events e set seq = placed.seq
             from placed, woken
             where e.id = placed.id and e.seq is null",
            &ready,
            PLACED_CHANNEL
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // A full batch that placed nothing is waiting on versions outside it: stop looping.
    Ok((ready.len(), full && !ready.is_empty()))
}

/// The candidates that may be placed now, in placement order: id order, except that an event
/// whose previous version is unplaced waits until that version is placed (in this batch,
/// then it follows it; else in a later pass).
fn ready_in_order(candidates: &[(i64, Uuid, i64, bool)]) -> Vec<i64> {
    let mut placed_now = std::collections::HashSet::new();
    let mut ready = Vec::new();
    let mut waiting: Vec<&(i64, Uuid, i64, bool)> = candidates.iter().collect();
    loop {
        let before = ready.len();
        waiting.retain(|(id, opportunity_id, version, waits)| {
            if !waits || placed_now.contains(&(*opportunity_id, version - 1)) {
                placed_now.insert((*opportunity_id, *version));
                ready.push(*id);
                false
            } else {
                true
            }
        });
        if ready.len() == before || waiting.is_empty() {
            return ready;
        }
    }
}

/// Runs the sequencer until the task is dropped: a standby until it holds the lock, then the
/// active one, placing events when woken or polled. Database errors are logged and retried.
pub async fn run(pool: PgPool) {
    loop {
        match run_once(&pool).await {
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, "event sequencer: retrying"),
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }
}

/// Becomes active (or returns when another sequencer is), then sequences until an error.
async fn run_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    // A connection of its own: the session lock lives as long as it does.
    let mut conn = pool.acquire().await?.detach();
    let active = sqlx::query_scalar!(
        r#"select pg_try_advisory_lock($1) as "active!""#,
        SEQUENCER_LOCK
    )
    .fetch_one(&mut conn)
    .await?;
    if !active {
        return Ok(());
    }
    tracing::info!("event sequencer active");
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        sequence(&mut conn).await?;
        tokio::select! {
            notification = listener.recv() => { notification?; }
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_waits_for_the_one_before_it_unless_placed_in_the_same_batch() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        // Id order put a's version 3 before its version 2 (a writer broke the protocol).
        let candidates = [
            (10, a, 3, true),
            (11, b, 1, false),
            (12, a, 2, false),
            (13, a, 4, true),
        ];
        // Version 2 is placed first, then 3 and 4 follow it in the same batch.
        assert_eq!(ready_in_order(&candidates), [11, 12, 10, 13]);
        // A version whose predecessor is not in the batch waits for a later pass.
        assert_eq!(ready_in_order(&[(20, a, 7, true), (21, b, 2, false)]), [21]);
    }
}
