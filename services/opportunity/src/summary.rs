//! R14 at scale: the pipeline summary read from the per-(owner, status, currency) totals the
//! schema keeps (migration `pipeline_totals`), not from every opportunity; and the fold that
//! moves the writes' deltas into those totals, one replica at a time.
//!
//! The totals answer every summary whose filters are about owners and states (the caller's
//! visibility, `owner_ids`, `team`, `states`): what a rep, a manager and an admin ask for on
//! their boards. A summary over a customer or an expected close date range still aggregates
//! the opportunities themselves ([`crate::store::pipeline_query`]).
//!
//! A summary from the totals is kept ([`Cache`]) with the [`Stamp`] of the state it was read
//! in, and answered again, without reading the totals, while a fresh stamp is the same: a
//! board refreshed by many managers costs one small statement a call until something it
//! sums changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder};

use crate::domain::Visibility;
use crate::store::{OpportunityFilter, PipelineRow, PipelineSource, pipeline_groups};

/// The lock one replica's fold holds.
const FOLD_LOCK: i64 = 0x5a1e_5000_f01d;

/// Deltas moved per fold statement.
pub const FOLD_BATCH: i64 = 10_000;

/// How often a replica folds.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the totals can answer `filter`: nothing in it is about a customer, dates, statuses
/// or text, which the totals do not keep.
pub fn answers(filter: &OpportunityFilter) -> bool {
    filter.customer_id.is_none()
        && filter.close_from.is_none()
        && filter.close_to.is_none()
        && filter.status_ids.is_empty()
        && filter.pattern.is_none()
}

/// The totals and the deltas not folded yet, as groups of opportunities with the
/// opportunities' column names (`o`), and `count`: the pipeline's grouping sets over them are
/// the same rows, in the same order, as over the opportunities themselves. One statement,
/// so one snapshot: exact.
const GROUPS: &str = "(
    select t.owner_id, t.status_id, st.kind as state,
           nullif(t.currency_code, '') as currency_code,
           sum(t.count) as count,
           case when t.currency_code <> '' then sum(t.amount) end as amount,
           sum(t.manual_amount) as manual_amount, sum(t.manual_weighted) as manual_weighted
    from (select owner_id, status_id, currency_code, count, amount, manual_amount,
                 manual_weighted
          from pipeline_totals
          union all
          select owner_id, status_id, currency_code, count, amount, manual_amount,
                 manual_weighted
          from pipeline_deltas) t
    join opportunity_statuses st on st.id = t.status_id
    group by t.owner_id, t.status_id, st.kind, t.currency_code
    having sum(t.count) <> 0
) o";

/// The summary's query over the totals.
pub fn query(visibility: &Visibility, filter: &OpportunityFilter) -> QueryBuilder<Postgres> {
    pipeline_groups(PipelineSource::Groups(GROUPS), visibility, filter)
}

pub async fn pipeline<'e>(
    db: impl PgExecutor<'e>,
    visibility: &Visibility,
    filter: &OpportunityFilter,
) -> Result<Vec<PipelineRow>, sqlx::Error> {
    query(visibility, filter)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// What a summary from the totals is read from, as of one snapshot: equal stamps of one
/// server, read at two moments, mean the same summary.
///
/// - The totals' generation and the number of deltas: writers only add deltas, and whatever
///   takes one away or changes a total adds one to the generation (migration
///   `pipeline_generation`, by triggers), so with the generation unchanged the visible deltas
///   can only have grown, and the same count is the same deltas.
/// - The statuses (whole rows: name, position, probability, kind) and the salespeople's
///   names and teams (a manager's visibility), as digests: they change rarely, and each is
///   read whole.
/// - Whether the server is a standby: a replica and the primary make each transaction
///   visible in a different order, so their counts are not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    generation: i64,
    deltas: i64,
    statuses: String,
    salespeople: String,
    standby: bool,
}

/// The stamp of the state `db` sees now. It reads neither the totals nor the deltas' rows
/// beyond counting them.
pub async fn stamp<'e>(db: impl PgExecutor<'e>) -> Result<Stamp, sqlx::Error> {
    let row = sqlx::query!(
        r#"select (select generation from pipeline_generation) as "generation!",
                  (select count(*) from pipeline_deltas) as "deltas!",
                  (select coalesce(md5(string_agg(s::text, E'\x1e' order by s.id)), '')
                   from opportunity_statuses s) as "statuses!",
                  (select coalesce(md5(string_agg(p.id || E'\x1f' || p.display_name
                                                  || E'\x1f' || p.team,
                                                  E'\x1e' order by p.id collate "C")), '')
                   from salespeople p) as "salespeople!",
                  pg_is_in_recovery() as "standby!""#
    )
    .fetch_one(db)
    .await?;
    Ok(Stamp {
        generation: row.generation,
        deltas: row.deltas,
        statuses: row.statuses,
        salespeople: row.salespeople,
        standby: row.standby,
    })
}

/// Most summary groups kept across all cached answers (an admin's summary of 200 owners, 7
/// statuses and 3 currencies is about 6,000): a few MiB.
pub const CACHED_GROUPS: usize = 60_000;

/// Summaries from the totals, by what they were asked (the caller's visibility and the
/// filters), each with its [`Stamp`]. Bounded by [`CACHED_GROUPS`]: the oldest answers go
/// first.
#[derive(Debug)]
pub struct Cache<T> {
    state: Mutex<CacheState<T>>,
}

#[derive(Debug)]
struct CacheState<T> {
    answers: HashMap<String, Cached<T>>,
    groups: usize,
    next: u64,
}

#[derive(Debug)]
struct Cached<T> {
    stamp: Stamp,
    answer: T,
    groups: usize,
    order: u64,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            state: Mutex::new(CacheState {
                answers: HashMap::new(),
                groups: 0,
                next: 0,
            }),
        }
    }
}

impl<T: Clone> Cache<T> {
    /// The answer kept for `key`, if it was read at `stamp`.
    pub fn get(&self, key: &str, stamp: &Stamp) -> Option<T> {
        let state = self.state.lock().ok()?;
        let answer = state
            .answers
            .get(key)
            .filter(|cached| cached.stamp == *stamp)
            .map(|cached| cached.answer.clone());
        salesopp_kit::metrics::metrics()
            .pipeline_summary_cache
            .with_label_values(&[if answer.is_some() { "hit" } else { "miss" }])
            .inc();
        answer
    }

    /// Keeps `answer` of `groups` groups for `key`, read at `stamp` (a stamp taken before the
    /// answer was read: a later stamp equal to it means nothing changed in between either).
    pub fn put(&self, key: String, stamp: Stamp, answer: T, groups: usize) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if groups > CACHED_GROUPS {
            return;
        }
        if let Some(old) = state.answers.remove(&key) {
            state.groups -= old.groups;
        }
        while state.groups + groups > CACHED_GROUPS {
            let oldest = state
                .answers
                .iter()
                .min_by_key(|(_, cached)| cached.order)
                .map(|(key, _)| key.clone());
            let Some(removed) = oldest.and_then(|key| state.answers.remove(&key)) else {
                break;
            };
            state.groups -= removed.groups;
        }
        let order = state.next;
        state.next += 1;
        state.groups += groups;
        state.answers.insert(
            key,
            Cached {
                stamp,
                answer,
                groups,
                order,
            },
        );
    }
}

/// Moves up to `batch` deltas into the totals, in one statement: each delta is either still a
/// delta or already in a total, in every snapshot. Only one replica folds at a time (another
/// finds the lock taken and returns 0). The number of deltas moved.
pub async fn fold(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !salesopp_kit::db::try_xact_lock(&mut tx, FOLD_LOCK).await? {
        return Ok(0);
    }
    let moved = sqlx::query_scalar!(
        r#"with moved as (
             delete from pipeline_deltas
             where id in (select id from pipeline_deltas order by id limit $1)
             returning owner_id, status_id, currency_code, count, amount, manual_amount,
                       manual_weighted
         ), summed as (
             select owner_id, status_id, currency_code, sum(count) as count,
                    sum(amount) as amount, sum(manual_amount) as manual_amount,
                    sum(manual_weighted) as manual_weighted, count(*) as deltas
             from moved group by owner_id, status_id, currency_code
         ), added as (
             insert into pipeline_totals as t
                 (owner_id, status_id, currency_code, count, amount, manual_amount, manual_weighted)
             select owner_id, status_id, currency_code, count, amount, manual_amount,
                    manual_weighted
             from summed
             on conflict (owner_id, status_id, currency_code) do update
                 set count = t.count + excluded.count, amount = t.amount + excluded.amount,
                     manual_amount = t.manual_amount + excluded.manual_amount,
                     manual_weighted = t.manual_weighted + excluded.manual_weighted
         )
         select coalesce(sum(deltas), 0)::bigint as "moved!" from summed"#,
        batch
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(moved as u64)
}

/// Deltas a replica folds between two vacuums of `pipeline_deltas`. A fold deletes every
/// delta it moves, and until a vacuum the dead rows are read by every summary from the totals
/// and by its stamp's count: measured at 1,000,000 opportunities with 314,000 of them, the
/// stamp took 8 ms instead of 0.4 and team summaries fell from 1,160 to 458 calls/s.
/// Autovacuum may be off, and when on it comes about once a minute, so the fold vacuums the
/// table itself (about 40,000 deltas at most, a few MiB, stay dead between two vacuums).
pub const VACUUM_AFTER: u64 = 20_000;

/// Folds every `interval` until the process ends; a fold that moved a full batch goes again
/// at once. After every [`VACUUM_AFTER`] deltas moved, vacuums the deltas (a replica that
/// finds another vacuuming skips it).
pub async fn run(pool: PgPool, interval: Duration) {
    let mut moved_since_vacuum = 0;
    loop {
        match fold(&pool, FOLD_BATCH).await {
            Ok(moved) => {
                moved_since_vacuum += moved;
                if moved_since_vacuum >= VACUUM_AFTER {
                    match sqlx::query("vacuum (skip_locked) pipeline_deltas")
                        .execute(&pool)
                        .await
                    {
                        Ok(_) => moved_since_vacuum = 0,
                        Err(error) => {
                            tracing::warn!(%error, "vacuum of the pipeline deltas failed")
                        }
                    }
                }
                if moved as i64 >= FOLD_BATCH {
                    continue;
                }
            }
            Err(error) => tracing::warn!(%error, "pipeline fold failed: retrying later"),
        }
        tokio::time::sleep(interval).await;
    }
}
