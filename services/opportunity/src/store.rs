//! The SQL of opportunities, their history and their events. Functions run on the executor
//! they are given; the service decides the transaction. Every fixed statement is checked at
//! build time (`query!`, `query_as!`; the offline data is in `.sqlx/`). List and summary
//! queries are built with `QueryBuilder` (their shape varies with the filters) and always
//! carry the caller's visibility (R12) inside the SQL, so no row is read and then dropped in
//! memory.

use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use salesopp_kit::error::{ApiError, ApiResult, Reason};
use salesopp_kit::{OpportunityState, StatusKind};

use crate::domain::{Money, Visibility};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpportunityRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub owner_id: String,
    pub owner_team: String,
    pub title: String,
    pub currency_code: Option<String>,
    pub amount: Option<String>,
    pub expected_close_date: Option<NaiveDate>,
    pub status_id: Uuid,
    pub status_name: String,
    /// R17: the effective probability (the manual one, else the status's).
    pub probability: i16,
    pub status_probability: i16,
    pub manual_probability: Option<i16>,
    /// R20: the effective forecast category (the manual one, else the status's).
    pub forecast_category: String,
    pub status_forecast_category: String,
    pub manual_forecast_category: Option<String>,
    pub state: OpportunityState,
    pub lost_reason: Option<String>,
    pub next_step: Option<String>,
    pub close_time: Option<DateTime<Utc>>,
    pub status_change_time: DateTime<Utc>,
    pub revision: i64,
    /// Writes so far: the version of the opportunity's latest event.
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub created_by: String,
    pub created_by_name: String,
    pub updated_by: String,
    pub updated_by_name: String,
    /// R16: when the opportunity became stale, as of the reading statement's clock; `None`
    /// while it is not (always `None` just after a change).
    pub stale_since: Option<DateTime<Utc>>,
    /// R18: how often the expected close date moved later, and by how many days in all.
    pub close_date_push_count: i32,
    pub close_date_slip_days: i32,
}

impl OpportunityRow {
    pub fn etag(&self) -> String {
        self.revision.to_string()
    }

    /// Its overrides (R17, R20) as they are.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            probability: self.manual_probability,
            forecast_category: self.manual_forecast_category.clone(),
        }
    }

    /// The amount; `None` when it is not known yet.
    pub fn money(&self) -> Option<Money> {
        Money::from_row(self.currency_code.as_deref(), self.amount.as_deref())
    }
}

/// GetOpportunity's SELECT, checked by [`get`] (the benchmark's pgbench script runs this same
/// text, and every list reads the same columns: [`select_opportunity`]).
pub const GET_SQL: &str = include_str!("../queries/get.sql");

/// The select list and joins of every opportunity read: GetOpportunity's statement up to its
/// `where`, with plain column names for `FromRow`.
static SELECT_OPPORTUNITY: LazyLock<String> = LazyLock::new(|| {
    let select = GET_SQL.trim_end().strip_suffix("where o.id = $1");
    salesopp_kit::db::plain_column_names(
        select.expect("queries/get.sql ends with `where o.id = $1`"),
    )
});

fn select_opportunity() -> &'static str {
    &SELECT_OPPORTUNITY
}

#[tracing::instrument(name = "SELECT opportunities", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunities"))]
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<OpportunityRow>, sqlx::Error> {
    sqlx::query_file_as!(OpportunityRow, "queries/get.sql", id)
        .fetch_optional(db)
        .await
}

/// Reads the opportunity and locks it for the rest of the transaction: every change to one
/// opportunity is serialized here (R10).
pub async fn lock(tx: &mut PgConnection, id: Uuid) -> Result<Option<OpportunityRow>, sqlx::Error> {
    // The lock is taken on the opportunity alone, then the row read with its joins: a
    // `for update of o` on the joined query would re-check the join against the rows the
    // query first saw, and lose the opportunity when a concurrent change moved its status.
    let locked = sqlx::query_scalar!("select id from opportunities where id = $1 for update", id)
        .fetch_optional(&mut *tx)
        .await?;
    match locked {
        Some(_) => get(tx, id).await,
        None => Ok(None),
    }
}

/// [`lock`], after holding the opportunity's current status FOR SHARE: a write takes its
/// status before its opportunity, like DeleteStatus (status, then its opportunities, R6), so
/// the two never wait on each other in a cycle; and a concurrent change of that status's
/// probability either comes before this write, and the write sees it, or waits for it (R17,
/// R18). A move between the two reads is retried; `None` when no opportunity has the id.
pub async fn lock_in_its_status(
    tx: &mut PgConnection,
    id: Uuid,
) -> ApiResult<Option<OpportunityRow>> {
    Ok(lock_after_statuses(tx, id, None).await?.1)
}

/// [`lock_in_its_status`] for a write that moves the opportunity to the status `target`: the
/// target is held FOR SHARE in the same statement as the opportunity's current status (a
/// round trip less), the two in id order, and both before the opportunity's row. The
/// target's row (`None`: no status has its id) and the opportunity (`None`: no opportunity
/// has the id).
pub async fn lock_moving_to(
    tx: &mut PgConnection,
    id: Uuid,
    target: Uuid,
) -> ApiResult<(Option<StatusInfo>, Option<OpportunityRow>)> {
    lock_after_statuses(tx, id, Some(target)).await
}

async fn lock_after_statuses(
    tx: &mut PgConnection,
    id: Uuid,
    target: Option<Uuid>,
) -> ApiResult<(Option<StatusInfo>, Option<OpportunityRow>)> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let (target_status, current) = share_statuses_of_write(tx, id, target).await?;
        let Some(current) = current else {
            return Ok((target_status, None));
        };
        match lock(tx, id).await? {
            Some(row) if row.status_id != current => continue,
            row => return Ok((target_status, row)),
        }
    }
    Err(ApiError::Aborted {
        reason: Reason::ConcurrentChange,
        message: "the opportunity kept changing status during the call: retry".into(),
    })
}

/// The status `target` (when the write moves the opportunity) and the opportunity's current
/// status, held FOR SHARE in id order: the target's row and the current status's id (`None`
/// when no opportunity has the id).
pub async fn share_statuses_of_write(
    tx: &mut PgConnection,
    id: Uuid,
    target: Option<Uuid>,
) -> Result<(Option<StatusInfo>, Option<Uuid>), sqlx::Error> {
    let statuses = sqlx::query_file!("queries/share_statuses_of_write.sql", target, id)
        .fetch_all(&mut *tx)
        .await?;
    let current = statuses.first().and_then(|status| status.current_status_id);
    let target = target.and_then(|target| {
        statuses
            .into_iter()
            .find(|status| status.id == target)
            .map(|s| StatusInfo {
                id: s.id,
                display_name: s.display_name,
                kind: s.kind,
                probability: s.probability,
                forecast_category: s.forecast_category,
                archived: s.archived,
            })
    });
    Ok((target, current))
}

/// The ids of the opportunities in a status, locked, in id order (R6 moves them).
pub async fn lock_in_status(
    tx: &mut PgConnection,
    status_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select id from opportunities where status_id = $1 order by id for update",
        status_id
    )
    .fetch_all(tx)
    .await
}

/// A status as a change needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusInfo {
    pub id: Uuid,
    pub display_name: String,
    pub kind: StatusKind,
    pub probability: i16,
    pub forecast_category: String,
    pub archived: bool,
}

/// Reads a status and holds it (FOR SHARE) so it cannot be archived under this change (R6).
pub async fn share_status(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<StatusInfo>, sqlx::Error> {
    sqlx::query_as!(
        StatusInfo,
        r#"select id, display_name, kind::text as "kind!: StatusKind", probability,
                  forecast_category, archived
           from opportunity_statuses where id = $1 for share"#,
        id
    )
    .fetch_optional(tx)
    .await
}

/// The default status (R5), held FOR SHARE.
///
/// A concurrent SetDefaultStatus can move the default while this waits for the old default's
/// row: the locked row then no longer matches and none is returned. The statement is run
/// again, and its new snapshot sees the new default (R4: there always is exactly one).
pub async fn share_default_status(tx: &mut PgConnection) -> ApiResult<StatusInfo> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let default = sqlx::query_as!(
            StatusInfo,
            r#"select id, display_name, kind::text as "kind!: StatusKind", probability,
                      forecast_category, archived
               from opportunity_statuses where is_default for share"#
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(default) = default {
            return Ok(default);
        }
    }
    // Moved on every attempt: as for any other conflict, the client retries.
    Err(ApiError::Aborted {
        reason: Reason::ConcurrentChange,
        message: "the default status kept moving during the call: retry".into(),
    })
}

/// The customer's `archived` flag, held FOR SHARE so it cannot be archived under a new
/// opportunity (R1); `None` when no customer has the id.
pub async fn share_customer(tx: &mut PgConnection, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!("select archived from customers where id = $1 for share", id)
        .fetch_optional(tx)
        .await
}

/// The database clock, read after the locks are held, so change times follow lock order.
pub async fn clock(tx: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar!(r#"select salesopp_now() as "now!""#)
        .fetch_one(tx)
        .await
}

pub struct NewOpportunity<'a> {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub owner_id: &'a str,
    pub title: &'a str,
    pub amount: Option<&'a Money>,
    pub expected_close_date: Option<NaiveDate>,
    pub status: &'a StatusInfo,
    pub lost_reason: Option<&'a str>,
    pub next_step: Option<&'a str>,
    pub actor_id: &'a str,
    pub time: DateTime<Utc>,
}

/// Inserts a checked new opportunity at version 1, its CREATED event's (outbox `append`
/// checks it).
pub async fn insert(tx: &mut PgConnection, new: &NewOpportunity<'_>) -> Result<(), sqlx::Error> {
    // The amount is bound as its decimal text (no decimal crate here) and the kind as its
    // name, which the macro cannot match with `status_kind`: `as StatusKind` says so.
    sqlx::query!(
        "insert into opportunities
             (id, customer_id, owner_id, title, currency_code, amount, expected_close_date,
              status_id, state, lost_reason, next_step, close_time, status_change_time,
              created_by, updated_by, create_time, update_time, version)
         values ($1, $2, $3, $4, $5, $6::text::numeric, $7, $8, $9::status_kind, $10, $11,
                 case when $9 = 'OPEN' then null else $12::timestamptz end, $12, $13, $13, $12, $12,
                 1)",
        new.id,
        new.customer_id,
        new.owner_id,
        new.title,
        new.amount.map(|m| m.currency_code.as_str()),
        new.amount.map(Money::decimal),
        new.expected_close_date,
        new.status.id,
        new.status.kind as StatusKind,
        new.lost_reason,
        new.next_step,
        new.time,
        new.actor_id,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The statuses with these ids, held FOR SHARE in id order (a batch's targets, R21).
pub async fn share_statuses(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<StatusInfo>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as!(
        StatusInfo,
        r#"select id, display_name, kind::text as "kind!: StatusKind", probability,
                  forecast_category, archived
           from opportunity_statuses where id = any($1) order by id for share"#,
        ids
    )
    .fetch_all(tx)
    .await
}

/// The `archived` flags of these customers, held FOR SHARE in id order (R1 for a batch);
/// a customer that does not exist is missing.
pub async fn share_customers(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query!(
        "select id, archived from customers where id = any($1) order by id for share",
        ids
    )
    .fetch_all(tx)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.archived)).collect())
}

/// Inserts a batch of checked new opportunities in one statement (R21), all at `time` by
/// `actor_id` (every item of a batch has the batch's moment and actor).
pub async fn insert_many(
    tx: &mut PgConnection,
    new: &[NewOpportunity<'_>],
    actor_id: &str,
    time: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = new.iter().map(|n| n.id).collect();
    let customers: Vec<Uuid> = new.iter().map(|n| n.customer_id).collect();
    let owners: Vec<&str> = new.iter().map(|n| n.owner_id).collect();
    let titles: Vec<&str> = new.iter().map(|n| n.title).collect();
    let currencies: Vec<Option<&str>> = new
        .iter()
        .map(|n| n.amount.map(|m| m.currency_code.as_str()))
        .collect();
    let amounts: Vec<Option<String>> = new.iter().map(|n| n.amount.map(Money::decimal)).collect();
    let dates: Vec<Option<NaiveDate>> = new.iter().map(|n| n.expected_close_date).collect();
    let statuses: Vec<Uuid> = new.iter().map(|n| n.status.id).collect();
    let kinds: Vec<&str> = new.iter().map(|n| n.status.kind.as_str()).collect();
    let lost_reasons: Vec<Option<&str>> = new.iter().map(|n| n.lost_reason).collect();
    let next_steps: Vec<Option<&str>> = new.iter().map(|n| n.next_step).collect();
    sqlx::query!(
        "insert into opportunities
             (id, customer_id, owner_id, title, currency_code, amount, expected_close_date,
              status_id, state, lost_reason, next_step, close_time, status_change_time,
              created_by, updated_by, create_time, update_time, version)
         select item.id, item.customer_id, item.owner_id, item.title, item.currency_code,
                item.amount::numeric, item.expected_close_date, item.status_id,
                item.kind::status_kind, item.lost_reason, item.next_step,
                case when item.kind = 'OPEN' then null else $12::timestamptz end, $12,
                $13, $13, $12, $12, 1
         from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::date[], $8::uuid[], $9::text[], $10::text[], $11::text[])
              as item (id, customer_id, owner_id, title, currency_code, amount,
                       expected_close_date, status_id, kind, lost_reason, next_step)",
        &ids,
        &customers,
        &owners as &[&str],
        &titles as &[&str],
        &currencies as &[Option<&str>],
        &amounts as &[Option<String>],
        &dates as &[Option<NaiveDate>],
        &statuses,
        &kinds as &[&str],
        &lost_reasons as &[Option<&str>],
        &next_steps as &[Option<&str>],
        time,
        actor_id,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The opportunities with these ids, in no particular order (a batch's answers, R21).
pub async fn get_many(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<OpportunityRow>, sqlx::Error> {
    let mut query = QueryBuilder::new(select_opportunity());
    query.push("where o.id = any(").push_bind(ids).push(")");
    query.build_query_as().fetch_all(tx).await
}

/// The fields an update writes besides the status.
pub struct Fields<'a> {
    pub owner_id: &'a str,
    pub title: &'a str,
    pub amount: Option<&'a Money>,
    pub expected_close_date: Option<NaiveDate>,
    pub next_step: Option<&'a str>,
    pub lost_reason: Option<&'a str>,
    /// R17, R20: the overrides in the current status.
    pub overrides: &'a Overrides,
}

/// The overrides an opportunity has after a write (R17, R20); `None` follows the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub probability: Option<i16>,
    pub forecast_category: Option<String>,
}

pub async fn update_fields(
    tx: &mut PgConnection,
    id: Uuid,
    fields: &Fields<'_>,
    actor_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update opportunities
         set owner_id = $2, title = $3, currency_code = $4, amount = $5::text::numeric,
             expected_close_date = $6, next_step = $7, lost_reason = $8, updated_by = $9,
             manual_probability = $10, manual_forecast_category = $11,
             revision = revision + 1, update_time = salesopp_now()
         where id = $1",
        id,
        fields.owner_id,
        fields.title,
        fields.amount.map(|m| m.currency_code.as_str()),
        fields.amount.map(Money::decimal),
        fields.expected_close_date,
        fields.next_step,
        fields.lost_reason,
        actor_id,
        fields.overrides.probability,
        fields.overrides.forecast_category.as_deref(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// What a move to another status changed, as the moving statement returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Moved {
    /// The moment of the move (the statement's clock): its history entry and event time.
    pub time: DateTime<Utc>,
    pub close_time: Option<DateTime<Utc>>,
    pub lost_reason: Option<String>,
    pub revision: i64,
    /// The opportunity's version after the move: its event's.
    pub version: i64,
    pub updated_by_name: String,
}

/// The status durations of one opportunity ([`durations`]), as the benchmark's pgbench
/// scripts issue them too.
pub const DURATIONS_OF_ONE_SQL: &str = include_str!("../queries/durations_of_one.sql");

/// [`move_to_status`]'s statement (the benchmark's pgbench script runs this same text).
pub const MOVE_TO_STATUS_SQL: &str = include_str!("../queries/move_to_status.sql");

/// [`share_statuses_of_write`]'s statement (the benchmark's pgbench script runs it too).
pub const SHARE_STATUSES_OF_WRITE_SQL: &str =
    include_str!("../queries/share_statuses_of_write.sql");

/// Moves the opportunity to `status` now (R8): closes it on WON/LOST, reopens it on OPEN,
/// keeps the lost reason only in LOST. One statement reads the clock, writes the row and
/// returns what changed, so the caller needs no second read of the row.
pub async fn move_to_status(
    tx: &mut PgConnection,
    id: Uuid,
    status: &StatusInfo,
    lost_reason: Option<&str>,
    actor_id: &str,
    overrides: &Overrides,
) -> Result<Moved, sqlx::Error> {
    sqlx::query_file_as!(
        Moved,
        "queries/move_to_status.sql",
        id,
        status.id,
        status.kind as StatusKind,
        lost_reason,
        actor_id,
        overrides.probability,
        overrides.forecast_category.as_deref()
    )
    .fetch_one(tx)
    .await
}

/// One opportunity of a batch to move (R21): to `status`, with the lost reason the call gave.
pub struct Move<'a> {
    pub id: Uuid,
    pub status: &'a StatusInfo,
    pub lost_reason: Option<&'a str>,
}

/// [`move_to_status`] for a batch (R21), without overrides (BatchChangeOpportunityStatus
/// sets none): one statement moves them all and returns what changed for each. The caller
/// holds their row locks and each opportunity appears once.
pub async fn move_many_to_status(
    tx: &mut PgConnection,
    moves: &[Move<'_>],
    actor_id: &str,
) -> Result<Vec<(Uuid, Moved)>, sqlx::Error> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = moves.iter().map(|m| m.id).collect();
    let statuses: Vec<Uuid> = moves.iter().map(|m| m.status.id).collect();
    let kinds: Vec<&str> = moves.iter().map(|m| m.status.kind.as_str()).collect();
    let lost_reasons: Vec<Option<&str>> = moves.iter().map(|m| m.lost_reason).collect();
    let rows = sqlx::query!(
        r#"update opportunities o
           set status_id = item.status_id, state = item.kind::status_kind,
               close_time = case when item.kind = 'OPEN' then null
                                 when o.state = 'OPEN' or o.state::text <> item.kind then t.now
                                 else o.close_time end,
               lost_reason = case when item.kind = 'LOST' then item.lost_reason else null end,
               status_change_time = t.now, updated_by = $5,
               manual_probability = null, manual_forecast_category = null,
               override_status_id = null,
               revision = o.revision + 1, update_time = t.now, version = o.version + 1
           from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                    as item (id, status_id, kind, lost_reason),
                (select salesopp_now() as now) t
           where o.id = any($1) and o.id = item.id
           returning o.id, t.now as "time!", o.close_time, o.lost_reason, o.revision, o.version,
                     (select display_name from salespeople where id = $5) as "updated_by_name!""#,
        &ids,
        &statuses,
        &kinds as &[&str],
        &lost_reasons as &[Option<&str>],
        actor_id,
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.id,
                Moved {
                    time: row.time,
                    close_time: row.close_time,
                    lost_reason: row.lost_reason,
                    revision: row.revision,
                    version: row.version,
                    updated_by_name: row.updated_by_name,
                },
            )
        })
        .collect())
}

/// Locks the opportunities with these ids in id order, after holding FOR SHARE the statuses
/// they are in (the order of [`lock_in_its_status`], for a batch, R21), and reads them.
/// One whose status moved between the two reads has its new status held too, under its
/// row lock (as [`lock_in_its_status`] does on a retry). A missing id is missing.
pub async fn lock_many_in_their_statuses(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<OpportunityRow>, sqlx::Error> {
    let mut held: Vec<Uuid> = sqlx::query_scalar!(
        r#"select s.id as "id!" from opportunity_statuses s
           where s.id in (select o.status_id from opportunities o where o.id = any($1))
           order by s.id for share"#,
        ids
    )
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query_scalar!(
        "select id from opportunities where id = any($1) order by id for update",
        ids
    )
    .fetch_all(&mut *tx)
    .await?;
    let rows = get_many(tx, ids).await?;
    held.sort_unstable();
    let mut moved: Vec<Uuid> = rows
        .iter()
        .map(|row| row.status_id)
        .filter(|status| held.binary_search(status).is_err())
        .collect();
    if !moved.is_empty() {
        moved.sort_unstable();
        moved.dedup();
        sqlx::query!(
            "select id from opportunity_statuses where id = any($1) order by id for share",
            &moved
        )
        .fetch_all(&mut *tx)
        .await?;
    }
    Ok(rows)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusChangeRow {
    pub id: Uuid,
    pub opportunity_id: Uuid,
    pub sequence: i32,
    pub from_status_id: Option<Uuid>,
    pub from_display_name: Option<String>,
    pub from_kind: Option<StatusKind>,
    pub from_probability: Option<i16>,
    pub to_status_id: Uuid,
    pub to_display_name: String,
    pub to_kind: StatusKind,
    pub to_probability: i16,
    pub changed_by_id: String,
    pub changed_by_name: String,
    pub change_time: DateTime<Utc>,
    pub note: String,
    pub currency_code: Option<String>,
    pub amount: Option<String>,
    pub micros_in_previous_status: Option<i64>,
    pub lost_reason: Option<String>,
    pub request_id: Option<String>,
    /// R17: the manual probabilities before and after the change (`None`: the status's).
    pub from_manual_probability: Option<i16>,
    pub to_manual_probability: Option<i16>,
}

/// One history entry to append (R9): the snapshots are of this moment (R7).
pub struct NewStatusChange<'a> {
    pub opportunity_id: Uuid,
    pub from: Option<(&'a StatusInfo, DateTime<Utc>)>,
    pub to: &'a StatusInfo,
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub time: DateTime<Utc>,
    pub note: &'a str,
    pub amount: Option<&'a Money>,
    pub lost_reason: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// R17: the manual probabilities before and after (`None`: the status's).
    pub from_manual_probability: Option<i16>,
    pub to_manual_probability: Option<i16>,
}

/// Appends the next entry of the opportunity's chain; the caller holds the opportunity's lock.
pub async fn append_status_change(
    tx: &mut PgConnection,
    change: &NewStatusChange<'_>,
) -> Result<StatusChangeRow, sqlx::Error> {
    let (from, entered) = match change.from {
        Some((status, entered)) => (Some(status), Some(entered)),
        None => (None, None),
    };
    sqlx::query_as!(
        StatusChangeRow,
        r#"insert into status_changes
               (opportunity_id, sequence, from_status_id, from_display_name, from_kind, from_probability,
                to_status_id, to_display_name, to_kind, to_probability, changed_by_id, changed_by_name,
                change_time, note, currency_code, amount, time_in_previous_status, lost_reason, request_id,
                from_manual_probability, to_manual_probability)
           values ($1,
                   (select coalesce(max(sequence), 0) + 1 from status_changes where opportunity_id = $1),
                   $2, $3, $4::status_kind, $5, $6, $7, $8::status_kind, $9, $10, $11, $12, $13, $14,
                   $15::text::numeric, $12::timestamptz - $16::timestamptz, $17, $18, $19, $20)
           returning id, opportunity_id, sequence, from_status_id, from_display_name,
                     from_kind::text as "from_kind: StatusKind", from_probability, to_status_id,
                     to_display_name, to_kind::text as "to_kind!: StatusKind", to_probability,
                     changed_by_id, changed_by_name, change_time, note, currency_code,
                     amount::text as amount,
                     (extract(epoch from time_in_previous_status) * 1000000)::bigint
                         as micros_in_previous_status,
                     lost_reason, request_id, from_manual_probability, to_manual_probability"#,
        change.opportunity_id,
        from.map(|s| s.id),
        from.map(|s| s.display_name.as_str()),
        from.map(|s| s.kind) as Option<StatusKind>,
        from.map(|s| s.probability),
        change.to.id,
        &change.to.display_name,
        change.to.kind as StatusKind,
        change.to.probability,
        change.actor_id,
        change.actor_name,
        change.time,
        change.note,
        change.amount.map(|m| m.currency_code.as_str()),
        change.amount.map(Money::decimal),
        entered,
        change.lost_reason,
        change.request_id,
        change.from_manual_probability,
        change.to_manual_probability,
    )
    .fetch_one(tx)
    .await
}

/// [`append_status_change`] for a batch (R21): one entry for each of many opportunities,
/// each the next of its own chain, in one statement; the caller holds their locks and each
/// opportunity appears once. The entries come back in no particular order.
pub async fn append_status_changes(
    tx: &mut PgConnection,
    changes: &[NewStatusChange<'_>],
) -> Result<Vec<StatusChangeRow>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    fn from<'a>(change: &NewStatusChange<'a>) -> Option<&'a StatusInfo> {
        change.from.map(|(status, _)| status)
    }
    let opportunities: Vec<Uuid> = changes.iter().map(|c| c.opportunity_id).collect();
    let from_ids: Vec<Option<Uuid>> = changes.iter().map(|c| from(c).map(|s| s.id)).collect();
    let from_names: Vec<Option<&str>> = changes
        .iter()
        .map(|c| from(c).map(|s| s.display_name.as_str()))
        .collect();
    let from_kinds: Vec<Option<&str>> = changes
        .iter()
        .map(|c| from(c).map(|s| s.kind.as_str()))
        .collect();
    let from_probabilities: Vec<Option<i16>> = changes
        .iter()
        .map(|c| from(c).map(|s| s.probability))
        .collect();
    let entered: Vec<Option<DateTime<Utc>>> = changes
        .iter()
        .map(|c| c.from.map(|(_, entered)| entered))
        .collect();
    let to_ids: Vec<Uuid> = changes.iter().map(|c| c.to.id).collect();
    let to_names: Vec<&str> = changes.iter().map(|c| c.to.display_name.as_str()).collect();
    let to_kinds: Vec<&str> = changes.iter().map(|c| c.to.kind.as_str()).collect();
    let to_probabilities: Vec<i16> = changes.iter().map(|c| c.to.probability).collect();
    let actor_ids: Vec<&str> = changes.iter().map(|c| c.actor_id).collect();
    let actor_names: Vec<&str> = changes.iter().map(|c| c.actor_name).collect();
    let times: Vec<DateTime<Utc>> = changes.iter().map(|c| c.time).collect();
    let notes: Vec<&str> = changes.iter().map(|c| c.note).collect();
    let currencies: Vec<Option<&str>> = changes
        .iter()
        .map(|c| c.amount.map(|m| m.currency_code.as_str()))
        .collect();
    let amounts: Vec<Option<String>> = changes
        .iter()
        .map(|c| c.amount.map(Money::decimal))
        .collect();
    let lost_reasons: Vec<Option<&str>> = changes.iter().map(|c| c.lost_reason).collect();
    let request_ids: Vec<Option<&str>> = changes.iter().map(|c| c.request_id).collect();
    let from_manual: Vec<Option<i16>> = changes.iter().map(|c| c.from_manual_probability).collect();
    let to_manual: Vec<Option<i16>> = changes.iter().map(|c| c.to_manual_probability).collect();
    sqlx::query_as!(
        StatusChangeRow,
        r#"insert into status_changes
               (opportunity_id, sequence, from_status_id, from_display_name, from_kind, from_probability,
                to_status_id, to_display_name, to_kind, to_probability, changed_by_id, changed_by_name,
                change_time, note, currency_code, amount, time_in_previous_status, lost_reason, request_id,
                from_manual_probability, to_manual_probability)
           select e.opportunity_id,
                  (select coalesce(max(s.sequence), 0) + 1 from status_changes s
                   where s.opportunity_id = e.opportunity_id),
                  e.from_status_id, e.from_display_name, e.from_kind::status_kind, e.from_probability,
                  e.to_status_id, e.to_display_name, e.to_kind::status_kind, e.to_probability,
                  e.changed_by_id, e.changed_by_name, e.change_time, e.note, e.currency_code,
                  e.amount::numeric, e.change_time - e.entered, e.lost_reason, e.request_id,
                  e.from_manual_probability, e.to_manual_probability
           from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::smallint[],
                       $6::timestamptz[], $7::uuid[], $8::text[], $9::text[], $10::smallint[],
                       $11::text[], $12::text[], $13::timestamptz[], $14::text[], $15::text[],
                       $16::text[], $17::text[], $18::text[], $19::smallint[], $20::smallint[])
                as e (opportunity_id, from_status_id, from_display_name, from_kind,
                      from_probability, entered, to_status_id, to_display_name, to_kind,
                      to_probability, changed_by_id, changed_by_name, change_time, note,
                      currency_code, amount, lost_reason, request_id, from_manual_probability,
                      to_manual_probability)
           returning id, opportunity_id, sequence, from_status_id, from_display_name,
                     from_kind::text as "from_kind: StatusKind", from_probability, to_status_id,
                     to_display_name, to_kind::text as "to_kind!: StatusKind", to_probability,
                     changed_by_id, changed_by_name, change_time, note, currency_code,
                     amount::text as amount,
                     (extract(epoch from time_in_previous_status) * 1000000)::bigint
                         as micros_in_previous_status,
                     lost_reason, request_id, from_manual_probability, to_manual_probability"#,
        &opportunities,
        &from_ids as &[Option<Uuid>],
        &from_names as &[Option<&str>],
        &from_kinds as &[Option<&str>],
        &from_probabilities as &[Option<i16>],
        &entered as &[Option<DateTime<Utc>>],
        &to_ids,
        &to_names as &[&str],
        &to_kinds as &[&str],
        &to_probabilities,
        &actor_ids as &[&str],
        &actor_names as &[&str],
        &times,
        &notes as &[&str],
        &currencies as &[Option<&str>],
        &amounts as &[Option<String>],
        &lost_reasons as &[Option<&str>],
        &request_ids as &[Option<&str>],
        &from_manual as &[Option<i16>],
        &to_manual as &[Option<i16>],
    )
    .fetch_all(tx)
    .await
}

/// A page of an opportunity's history, oldest or newest first, after `after_sequence`.
#[tracing::instrument(name = "SELECT status_changes", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "status_changes"))]
pub async fn history<'e>(
    db: impl PgExecutor<'e>,
    opportunity_id: Uuid,
    newest_first: bool,
    after_sequence: Option<i32>,
    limit: i64,
) -> Result<Vec<StatusChangeRow>, sqlx::Error> {
    if newest_first {
        sqlx::query_as!(
            StatusChangeRow,
            r#"select id, opportunity_id, sequence, from_status_id, from_display_name,
                      from_kind::text as "from_kind: StatusKind", from_probability, to_status_id,
                      to_display_name, to_kind::text as "to_kind!: StatusKind", to_probability,
                      changed_by_id, changed_by_name, change_time, note, currency_code,
                      amount::text as amount,
                      (extract(epoch from time_in_previous_status) * 1000000)::bigint
                          as micros_in_previous_status,
                      lost_reason, request_id, from_manual_probability, to_manual_probability
               from status_changes where opportunity_id = $1 and sequence < $2
               order by sequence desc limit $3"#,
            opportunity_id,
            after_sequence.unwrap_or(i32::MAX),
            limit
        )
        .fetch_all(db)
        .await
    } else {
        sqlx::query_as!(
            StatusChangeRow,
            r#"select id, opportunity_id, sequence, from_status_id, from_display_name,
                      from_kind::text as "from_kind: StatusKind", from_probability, to_status_id,
                      to_display_name, to_kind::text as "to_kind!: StatusKind", to_probability,
                      changed_by_id, changed_by_name, change_time, note, currency_code,
                      amount::text as amount,
                      (extract(epoch from time_in_previous_status) * 1000000)::bigint
                          as micros_in_previous_status,
                      lost_reason, request_id, from_manual_probability, to_manual_probability
               from status_changes where opportunity_id = $1 and sequence > $2
               order by sequence limit $3"#,
            opportunity_id,
            after_sequence.unwrap_or(0),
            limit
        )
        .fetch_all(db)
        .await
    }
}

/// The time an opportunity has spent in one status (R15), as of the reading statement's
/// clock ([`durations`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusDurationRow {
    pub opportunity_id: Uuid,
    pub status_id: Uuid,
    pub display_name: String,
    pub entries: i32,
    /// Every stay, the current one counted up to the statement's clock.
    pub cumulative_micros: i64,
    /// The current stay, for the status the opportunity is in now.
    pub current_stay_micros: Option<i64>,
    pub last_entered_time: DateTime<Utc>,
    pub last_exited_time: Option<DateTime<Utc>>,
}

impl StatusDurationRow {
    /// The durations of an opportunity created at `time` in `status`, as of that moment: one
    /// entry, no time spent yet.
    pub fn first(opportunity_id: Uuid, status: &StatusInfo, time: DateTime<Utc>) -> Self {
        StatusDurationRow {
            opportunity_id,
            status_id: status.id,
            display_name: status.display_name.clone(),
            entries: 1,
            cumulative_micros: 0,
            current_stay_micros: Some(0),
            last_entered_time: time,
            last_exited_time: None,
        }
    }
}

/// The status durations (R15) of the opportunities `ids`, by opportunity, each in pipeline
/// order: one statement for a whole page, whatever its length. The trigger on the history
/// keeps the ended stays; the current stay is counted here, up to `salesopp_now()`.
pub async fn durations<'e>(
    db: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<StatusDurationRow>, sqlx::Error> {
    // One opportunity by `=`: an array parameter keeps Postgres planning the statement
    // again at every call (its generic plan is costed for ten elements), which cost a
    // GetOpportunity more than its reads.
    if let [id] = ids {
        return sqlx::query_file_as!(StatusDurationRow, "queries/durations_of_one.sql", id)
            .fetch_all(db)
            .await;
    }
    sqlx::query_as!(
        StatusDurationRow,
        r#"select opportunity_id as "opportunity_id!", status_id as "status_id!",
                  display_name as "display_name!", entries as "entries!",
                  cumulative_micros as "cumulative_micros!", current_stay_micros,
                  last_entered_time as "last_entered_time!", last_exited_time
           from opportunity_status_durations_now
           where opportunity_id = any($1)
           order by opportunity_id, position"#,
        ids
    )
    .fetch_all(db)
    .await
}

/// One status's velocity over a period (R15), as [`velocity_query`] returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VelocityRow {
    pub status_id: Uuid,
    pub display_name: String,
    pub position: i32,
    pub kind: StatusKind,
    pub entered_count: i64,
    pub exited_count: i64,
    pub median_micros: Option<i64>,
    pub p90_micros: Option<i64>,
    pub won_count: i64,
}

/// R15 velocity: the history entries of `[start, end)` of the opportunities the caller may
/// see (R12) and `filter` keeps (by current owner), per status they entered: how many, the
/// median and 90th percentile of the stays that followed (each until the next entry of the
/// opportunity's chain, or `salesopp_now()` when there is none), and how many reached WON
/// then or later. The period is read from `status_change_time_idx`; the next entry and the
/// WON check are probes of the chain's `(opportunity_id, sequence)` key.
pub fn velocity_query(
    visibility: &Visibility,
    filter: &OpportunityFilter,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(
        "with period as (
             select e.opportunity_id, e.sequence, e.to_status_id as status_id, e.change_time
             from status_changes e
             join opportunities o on o.id = e.opportunity_id
             where e.change_time >= ",
    );
    query
        .push_bind(start)
        .push(" and e.change_time < ")
        .push_bind(end);
    push_visibility(&mut query, visibility);
    push_filter(&mut query, filter);
    query.push(
        "), stays as (
             select p.status_id, coalesce(n.change_time, t.now) - p.change_time as stay,
                    n.change_time is not null as exited,
                    exists (select 1 from status_changes w
                            where w.opportunity_id = p.opportunity_id
                              and w.sequence >= p.sequence and w.to_kind = 'WON') as won
             from period p
             cross join (select salesopp_now() as now) t
             left join status_changes n
                 on n.opportunity_id = p.opportunity_id and n.sequence = p.sequence + 1
         ), per_status as (
             select status_id, count(*) as entered_count,
                    count(*) filter (where exited) as exited_count,
                    percentile_cont(0.5) within group (order by stay) as median,
                    percentile_cont(0.9) within group (order by stay) as p90,
                    count(*) filter (where won) as won_count
             from stays group by status_id
         )
         select st.id as status_id, st.display_name, st.position, st.kind::text as kind,
                coalesce(v.entered_count, 0) as entered_count,
                coalesce(v.exited_count, 0) as exited_count,
                (extract(epoch from v.median) * 1000000)::bigint as median_micros,
                (extract(epoch from v.p90) * 1000000)::bigint as p90_micros,
                coalesce(v.won_count, 0) as won_count
         from opportunity_statuses st
         left join per_status v on v.status_id = st.id
         where not st.archived or v.entered_count > 0
         order by st.position",
    );
    query
}

pub async fn velocity<'e>(
    db: impl PgExecutor<'e>,
    visibility: &Visibility,
    filter: &OpportunityFilter,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<VelocityRow>, sqlx::Error> {
    velocity_query(visibility, filter, start, end)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// Renders the caller's visibility (R12) as a condition on `o.owner_id`.
///
/// A manager's scope is one `= any(array)` (the team's salespeople and the manager), not an
/// `or` of two conditions: an array is an index condition on the leading `owner_id` of
/// `opportunity_pipeline_idx`, so the team's pipeline stays an index-only aggregate, where
/// an `or` is planned as a bitmap that reads the team's rows from the table.
pub fn push_visibility(query: &mut QueryBuilder<Postgres>, visibility: &Visibility) {
    match visibility {
        Visibility::All => {
            query.push(" and true");
        }
        Visibility::Team { me, team } => {
            query
                .push(" and o.owner_id = any(array(select id from salespeople where team = ")
                .push_bind(team.clone())
                .push(") || ")
                .push_bind(me.clone())
                .push("::text)");
        }
        Visibility::Own { me } => {
            query.push(" and o.owner_id = ").push_bind(me.clone());
        }
    }
}

/// The filters of ListOpportunities and GetPipelineSummary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OpportunityFilter {
    pub owner_ids: Vec<String>,
    pub team: Option<String>,
    pub customer_id: Option<Uuid>,
    pub status_ids: Vec<Uuid>,
    pub states: Vec<OpportunityState>,
    pub close_from: Option<NaiveDate>,
    pub close_to: Option<NaiveDate>,
    /// A `LIKE` pattern ([`salesopp_kit::text::like_substring`]); Postgres lowercases it.
    pub pattern: Option<String>,
    /// R16: stale opportunities only.
    pub stale_only: bool,
}

pub fn push_filter(query: &mut QueryBuilder<Postgres>, filter: &OpportunityFilter) {
    push_owner_filter(query, filter);
    if let Some(customer_id) = filter.customer_id {
        query.push(" and o.customer_id = ").push_bind(customer_id);
    }
    if !filter.status_ids.is_empty() {
        query
            .push(" and o.status_id = any(")
            .push_bind(filter.status_ids.clone())
            .push(")");
    }
    if !filter.states.is_empty() {
        query
            .push(" and o.state = any(")
            .push_bind(filter.states.clone())
            .push("::status_kind[])");
    }
    push_close_dates_and_text(query, filter);
    if filter.stale_only {
        // `salesopp_stale_since(..) is not null`, written so the planner sees the open state
        // and each status's cutoff; the clock read once per statement (an init plan), so the
        // cutoff can bound an index scan.
        query.push(
            " and o.state = 'OPEN' and exists (select 1 from opportunity_statuses st \
             where st.id = o.status_id and st.stale_after_days > 0 \
             and o.update_time <= (select salesopp_now()) - st.stale_after_days * interval '24 hours')",
        );
    }
}

/// The filters on owners alone: `owner_ids` and `team`.
fn push_owner_filter(query: &mut QueryBuilder<Postgres>, filter: &OpportunityFilter) {
    // One owner is an equality, not `= any` of a one-element array: only an equality on
    // `owner_id` lets the owner indexes return the rows in the list's order, so a page is its
    // first 51 entries there instead of every row of that owner, sorted.
    match filter.owner_ids.as_slice() {
        [] => {}
        [owner_id] => {
            query.push(" and o.owner_id = ").push_bind(owner_id.clone());
        }
        owner_ids => {
            query
                .push(" and o.owner_id = any(")
                .push_bind(owner_ids.to_vec())
                .push(")");
        }
    }
    if let Some(team) = &filter.team {
        query
            .push(" and o.owner_id = any(array(select id from salespeople where team = ")
            .push_bind(team.clone())
            .push("))");
    }
}

/// The expected close date range and the free text (R13) of `filter`.
fn push_close_dates_and_text(query: &mut QueryBuilder<Postgres>, filter: &OpportunityFilter) {
    // The close-date range is written on the expression the close-date indexes hold
    // (`coalesce(expected_close_date, 'infinity')`), so it is their index condition; on the
    // bare column it could only filter a walk of them. Same rows: an unknown date is never
    // in a range (`is not null`), and `to` is a real date, never 'infinity'.
    if let Some(from) = filter.close_from {
        query
            .push(" and coalesce(o.expected_close_date, 'infinity'::date) >= ")
            .push_bind(from)
            .push(" and o.expected_close_date is not null");
    }
    if let Some(to) = filter.close_to {
        query
            .push(" and coalesce(o.expected_close_date, 'infinity'::date) <= ")
            .push_bind(to);
    }
    if let Some(pattern) = &filter.pattern {
        query
            .push(" and (lower(o.title || E'\\n' || coalesce(o.next_step, '')) like lower(")
            .push_bind(pattern.clone())
            .push(
                ") or o.customer_id = any(array(select c.id from customers c where \
                 lower(c.display_name || E'\\n' || coalesce(c.code, '') || E'\\n' || coalesce(c.contact_name, '') \
                 || E'\\n' || coalesce(c.email, '') || E'\\n' || coalesce(c.phone, '')) like lower(",
            )
            .push_bind(pattern.clone())
            .push("))))");
    }
}

/// The order of an opportunity list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ListOrder {
    UpdateTimeDesc,
    ExpectedCloseDate,
    AmountDesc,
}

/// Where a page starts: the last row's sort key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ListAfter {
    UpdateTime(DateTime<Utc>, Uuid),
    /// `'infinity'` stands for an unknown close date (sorted last).
    CloseDate(String, Uuid),
    Amount(String, Uuid),
}

pub fn list_query(
    visibility: &Visibility,
    filter: &OpportunityFilter,
    order: ListOrder,
    after: Option<&ListAfter>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(select_opportunity());
    query.push("where true");
    push_visibility(&mut query, visibility);
    push_filter(&mut query, filter);
    match after {
        Some(ListAfter::UpdateTime(time, id)) => {
            query
                .push(" and (o.update_time, o.id) < (")
                .push_bind(*time)
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
        Some(ListAfter::CloseDate(date, id)) => {
            query
                .push(" and (coalesce(o.expected_close_date, 'infinity'::date), o.id) > (")
                .push_bind(date.clone())
                .push("::date, ")
                .push_bind(*id)
                .push(")");
        }
        Some(ListAfter::Amount(amount, id)) => {
            query
                .push(" and (coalesce(o.amount, -1), o.id) < (")
                .push_bind(amount.clone())
                .push("::numeric, ")
                .push_bind(*id)
                .push(")");
        }
        None => {}
    }
    query.push(match order {
        ListOrder::UpdateTimeDesc => " order by o.update_time desc, o.id desc",
        ListOrder::ExpectedCloseDate => {
            " order by coalesce(o.expected_close_date, 'infinity'::date), o.id"
        }
        // Opportunities without an amount come last: -1 stands for them.
        ListOrder::AmountDesc => " order by coalesce(o.amount, -1) desc, o.id desc",
    });
    // The page's size written into the statement, not bound: a bound limit makes Postgres cost
    // the prepared statement's generic plan for a tenth of the matching rows, so it plans
    // every call again (about 1.5 ms of 2.5 for a page of an owner's 5,000 opportunities at
    // 1,000,000). Written in, the generic plan is costed for the page and kept. Not with a
    // text search: how rare the text is decides the plan, and only a plan made for the
    // pattern knows that.
    match filter.pattern {
        None => query.push(format_args!(" limit {limit}")),
        Some(_) => query.push(" limit ").push_bind(limit),
    };
    query
}

#[tracing::instrument(name = "SELECT opportunities", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunities"))]
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    visibility: &Visibility,
    filter: &OpportunityFilter,
    order: ListOrder,
    after: Option<&ListAfter>,
    limit: i64,
) -> Result<Vec<OpportunityRow>, sqlx::Error> {
    list_query(visibility, filter, order, after, limit)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// Which grouping of the pipeline (R14) a [`PipelineRow`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineGroup {
    /// Per status and currency.
    Status,
    /// Per owner, status and currency.
    OwnerStatus,
    /// Per owner, state and currency.
    OwnerState,
    /// Per state and currency: the overall totals.
    State,
}

/// One group of the pipeline (R14), in one currency (`None`: opportunities without an amount).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PipelineRow {
    /// `grouping(owner_id, status_id, state)`: which columns the group leaves out.
    pub grouping: i32,
    pub owner_id: Option<String>,
    pub owner_name: Option<String>,
    pub status_id: Option<Uuid>,
    pub state: Option<OpportunityState>,
    pub currency_code: Option<String>,
    pub count: i64,
    pub total: Option<String>,
    /// The exact sum of amount x probability (percent): 100 times the weighted amount.
    pub weighted_x100: Option<String>,
}

impl PipelineRow {
    pub fn group(&self) -> PipelineGroup {
        // One bit per column left out of the group: owner 4, status 2, state 1.
        match self.grouping {
            5 => PipelineGroup::Status,
            1 => PipelineGroup::OwnerStatus,
            2 => PipelineGroup::OwnerState,
            _ => PipelineGroup::State,
        }
    }
}

/// Every grouping in one pass, exact: `weighted_x100` is the exact sum of amount x
/// probability; the service divides by 100 and rounds once per group, half to even, to the
/// nano ([`crate::domain::Money::weighted`]), so a total is never a sum of rounded parts.
/// Probabilities are the effective ones: a manual one (R17), else the status's current one (R7).
pub fn pipeline_query(
    visibility: &Visibility,
    filter: &OpportunityFilter,
) -> QueryBuilder<Postgres> {
    pipeline_groups(PipelineSource::Rows, visibility, filter)
}

/// What a pipeline summary aggregates: a relation named `o` with the opportunities' columns
/// `owner_id`, `status_id`, `state`, `currency_code` and `amount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineSource {
    /// The opportunities themselves: one row each.
    Rows,
    /// Groups of opportunities that share owner, status and currency, `count` rows each, with
    /// `amount` their sum (`crate::summary`): the SQL of that relation.
    Groups(&'static str),
    /// R19: every opportunity as it stood at this moment, from its history
    /// ([`push_as_of`]), weighed with its probability of that moment.
    AsOf(DateTime<Utc>),
}

/// The summary's grouping sets over `source`, with the caller's visibility and the filters.
pub fn pipeline_groups(
    source: PipelineSource,
    visibility: &Visibility,
    filter: &OpportunityFilter,
) -> QueryBuilder<Postgres> {
    // R17: each opportunity weighed with its effective probability; a group of the totals
    // keeps its overridden opportunities' amount and weighted sum apart.
    let (count, weighted) = match source {
        PipelineSource::Groups(_) => (
            "sum(o.count)::bigint",
            "sum((o.amount - o.manual_amount) * s.probability + o.manual_weighted)",
        ),
        PipelineSource::Rows | PipelineSource::AsOf(_) => (
            "count(*)",
            "sum(o.amount * coalesce(o.manual_probability, s.probability))",
        ),
    };
    let mut query = QueryBuilder::new(
        "select g.grouping, g.owner_id, sp.display_name as owner_name, g.status_id,
                g.state::text as state, g.currency_code, g.count, g.total::text as total,
                g.weighted_x100::text as weighted_x100
         from (
             select grouping(o.owner_id, o.status_id, o.state) as grouping,
                    case when grouping(o.owner_id) = 0 then o.owner_id end as owner_id,
                    case when grouping(o.status_id) = 0 then o.status_id end as status_id,
                    case when grouping(o.state) = 0 then o.state end as state,
                    o.currency_code, ",
    );
    query
        .push(count)
        .push(" as count, sum(o.amount) as total, ")
        .push(weighted)
        .push(" as weighted_x100 from ");
    match source {
        PipelineSource::Rows => {
            query.push("opportunities o join opportunity_statuses s on s.id = o.status_id");
        }
        PipelineSource::Groups(relation) => {
            query
                .push(relation)
                .push(" join opportunity_statuses s on s.id = o.status_id");
        }
        PipelineSource::AsOf(at) => {
            push_as_of(&mut query, at, visibility, filter);
            // Each status's probability of then, once per status (`offset 0` keeps the
            // subquery from being merged into the join, which would compute it per row).
            query
                .push(" join (select id, salesopp_status_probability_at(id, ")
                .push_bind(at)
                .push(
                    ") as probability from opportunity_statuses offset 0) s on s.id = o.status_id",
                );
        }
    }
    query.push(" where true");
    push_visibility(&mut query, visibility);
    push_filter(&mut query, filter);
    query.push(
        " group by grouping sets ((o.status_id, o.currency_code),
                                  (o.owner_id, o.status_id, o.currency_code),
                                  (o.owner_id, o.state, o.currency_code),
                                  (o.state, o.currency_code))
         ) g
         left join salespeople sp on sp.id = g.owner_id
         left join opportunity_statuses st on st.id = g.status_id
         order by g.grouping, sp.display_name, g.owner_id, st.position, g.state,
                  g.currency_code nulls first",
    );
    query
}

/// R19: the relation `o` of every opportunity as it stood at `at`, with the columns the
/// summary reads, in two parts:
///
/// - an opportunity not changed since `at` (`update_time <= at`: every change, status moves
///   included, stamps `update_time` with its own time) is as it is now: its row alone;
/// - one changed since, and created by then, has its status and state from its last status
///   change up to `at`, and its owner, amount (with currency), customer and expected close
///   date each the new value of the field's last change up to `at`, else the old value of
///   its first change after, else the current column (migration `field_history`); and its
///   effective probability likewise from the probability history, which records every
///   change of it (R17: status changes, overrides, a status's own re-weighting), as
///   `manual_probability`, which the summary takes over the status's probability of then;
///   with no probability change recorded, its current override, else its status's
///   probability of then (a status re-weighted before the history listed re-weightings per
///   opportunity is still read right). An unchanged one keeps its override, or follows its
///   status's probability of then.
///
/// A caller who sees only some owners, or an owner filter, reads in the first part the rows
/// of those owners (their owner has not changed), in the second those owned by them now or
/// whose owner changed after `at` (index reads both); the owner of then is filtered exactly
/// by the summary's conditions on `o`.
fn push_as_of(
    query: &mut QueryBuilder<Postgres>,
    at: DateTime<Utc>,
    visibility: &Visibility,
    filter: &OpportunityFilter,
) {
    let scoped = !matches!(visibility, Visibility::All)
        || !filter.owner_ids.is_empty()
        || filter.team.is_some();
    query.push(
        "(select o.id, o.status_id, o.state, o.owner_id, o.currency_code, o.amount,
                 o.customer_id, o.expected_close_date, o.manual_probability
          from opportunities o where o.update_time <= ",
    );
    query.push_bind(at);
    push_visibility(query, visibility);
    push_owner_filter(query, filter);
    query.push(
        " union all
          select o.id, sc.to_status_id, sc.to_kind,
                 case when f.owner is null then o.owner_id else f.owner #>> '{}' end,
                 case when f.amount is null then o.currency_code
                      else f.amount ->> 'currencyCode' end,
                 case when f.amount is null then o.amount
                      else salesopp_value_amount(f.amount) end,
                 case when f.customer is null then o.customer_id
                      else (f.customer #>> '{}')::uuid end,
                 case when f.close_date is null then o.expected_close_date
                      else salesopp_value_date(f.close_date) end,
                 coalesce((f.probability #>> '{}')::smallint, o.manual_probability)
          from opportunities o
          cross join lateral (
              select c.to_status_id, c.to_kind from status_changes c
              where c.opportunity_id = o.id and c.change_time <= ",
    );
    query.push_bind(at).push(
        " order by c.sequence desc limit 1) sc
          cross join lateral (select",
    );
    for (i, (column, field)) in [
        ("owner", "owner_id"),
        ("amount", "amount"),
        ("customer", "customer_id"),
        ("close_date", "expected_close_date"),
        ("probability", "probability"),
    ]
    .into_iter()
    .enumerate()
    {
        query
            .push(if i == 0 { " " } else { ", " })
            .push(format_args!(
                "coalesce((array_agg(h.new_value order by h.id desc) \
                 filter (where h.field = '{field}' and h.change_time <= "
            ))
            .push_bind(at)
            .push(format_args!(
                "))[1], (array_agg(h.old_value order by h.id) \
                 filter (where h.field = '{field}' and h.change_time > "
            ))
            .push_bind(at)
            .push(format_args!("))[1]) as {column}"));
    }
    query.push(
        " from opportunity_field_changes h
          where h.opportunity_id = o.id
            and h.field in ('owner_id', 'amount', 'customer_id', 'expected_close_date',
                            'probability')) f
          where o.update_time > ",
    );
    query
        .push_bind(at)
        .push(" and o.create_time <= ")
        .push_bind(at);
    if scoped {
        query.push(" and ((true");
        push_visibility(query, visibility);
        push_owner_filter(query, filter);
        query
            .push(
                ") or o.id = any(array(select distinct opportunity_id from opportunity_field_changes \
                 where field = 'owner_id' and change_time > ",
            )
            .push_bind(at)
            .push(")))");
    }
    query.push(") o");
}

#[tracing::instrument(name = "SELECT opportunities", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunities"))]
pub async fn pipeline<'e>(
    db: impl PgExecutor<'e>,
    visibility: &Visibility,
    filter: &OpportunityFilter,
) -> Result<Vec<PipelineRow>, sqlx::Error> {
    pipeline_query(visibility, filter)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// A live status as the summary's rows need it: id, name, position, probability, kind.
pub type LiveStatus = (Uuid, String, i32, i16, StatusKind);

/// The live statuses in pipeline order, for the summary's rows.
#[tracing::instrument(name = "SELECT opportunity_statuses", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunity_statuses"))]
pub async fn live_statuses<'e>(db: impl PgExecutor<'e>) -> Result<Vec<LiveStatus>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select id, display_name, position, probability, kind::text as "kind!: StatusKind"
           from opportunity_statuses where not archived order by position"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|s| (s.id, s.display_name, s.position, s.probability, s.kind))
        .collect())
}

/// R19: the statuses of a summary as of `at`: the live ones that existed then and those in
/// `held` (archived since), in pipeline order, each with its probability of then.
#[tracing::instrument(name = "SELECT opportunity_statuses", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunity_statuses"))]
pub async fn statuses_as_of<'e>(
    db: impl PgExecutor<'e>,
    at: DateTime<Utc>,
    held: &[Uuid],
) -> Result<Vec<LiveStatus>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select id, display_name, position,
                  salesopp_status_probability_at(id, $1) as "probability!",
                  kind::text as "kind!: StatusKind"
           from opportunity_statuses
           where (not archived and create_time <= $1) or id = any($2) order by position"#,
        at,
        held
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|s| (s.id, s.display_name, s.position, s.probability, s.kind))
        .collect())
}

/// Whether `at` is after the database's clock (the one every write is stamped with).
pub async fn is_future<'e>(
    db: impl PgExecutor<'e>,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select $1 > salesopp_now() as "future!""#, at)
        .fetch_one(db)
        .await
}

/// One group of the forecast (R20): a period, a category and a currency, of one owner or of
/// every owner together (`owner_id` `None`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ForecastRow {
    pub period_start: NaiveDate,
    pub owner_id: Option<String>,
    pub owner_name: Option<String>,
    pub category: String,
    pub currency_code: Option<String>,
    pub count: i64,
    pub total: Option<String>,
    /// The exact sum of amount x effective probability (percent).
    pub weighted_x100: Option<String>,
}

/// R20: the opportunities the caller may see (R12) and `filter` keeps (owners, team) whose
/// expected close date is in `start..=end`, per period (`unit`: `month` or `quarter`) x
/// effective category x currency, for every owner together and for each owner; in period
/// order, every owner together first, then owners by name, categories in forecast order.
/// The range is read from the close-date indexes, which hold every column summed.
pub fn forecast_query(
    visibility: &Visibility,
    filter: &OpportunityFilter,
    start: NaiveDate,
    end: NaiveDate,
    unit: &'static str,
) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(format!(
        "select g.period_start, g.owner_id, sp.display_name as owner_name, g.category,
                g.currency_code, g.count, g.total::text as total,
                g.weighted_x100::text as weighted_x100
         from (
             select f.period_start,
                    case when grouping(f.owner_id) = 0 then f.owner_id end as owner_id,
                    f.category, f.currency_code, count(*) as count, sum(f.amount) as total,
                    sum(f.amount * f.probability) as weighted_x100
             from (
                 select date_trunc('{unit}', o.expected_close_date::timestamp)::date as period_start,
                        o.owner_id, coalesce(o.manual_forecast_category, s.forecast_category) as category,
                        o.currency_code, o.amount,
                        coalesce(o.manual_probability, s.probability) as probability
                 from opportunities o join opportunity_statuses s on s.id = o.status_id
                 where coalesce(o.expected_close_date, 'infinity'::date) >= "
    ));
    query
        .push_bind(start)
        .push(" and coalesce(o.expected_close_date, 'infinity'::date) <= ")
        .push_bind(end);
    push_visibility(&mut query, visibility);
    push_owner_filter(&mut query, filter);
    query.push(
        ") f
             group by grouping sets ((f.period_start, f.category, f.currency_code),
                                     (f.period_start, f.owner_id, f.category, f.currency_code))
         ) g
         left join salespeople sp on sp.id = g.owner_id
         order by g.period_start, g.owner_id is not null, sp.display_name, g.owner_id,
                  array_position(array['PIPELINE', 'BEST_CASE', 'COMMIT', 'CLOSED', 'OMITTED'],
                                 g.category),
                  g.currency_code nulls first",
    );
    query
}

#[tracing::instrument(name = "SELECT opportunities", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunities"))]
pub async fn forecast<'e>(
    db: impl PgExecutor<'e>,
    visibility: &Visibility,
    filter: &OpportunityFilter,
    start: NaiveDate,
    end: NaiveDate,
    unit: &'static str,
) -> Result<Vec<ForecastRow>, sqlx::Error> {
    forecast_query(visibility, filter, start, end, unit)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// One change of one field (R18).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FieldChangeRow {
    pub id: i64,
    pub opportunity_id: Uuid,
    pub field: String,
    pub old_value: serde_json::Value,
    pub new_value: serde_json::Value,
    pub changed_by_id: String,
    pub changed_by_name: String,
    pub change_time: DateTime<Utc>,
}

/// The field history of one opportunity (R18), in the order of the changes (or newest
/// first), after `after_id`, of `fields` only unless empty.
#[tracing::instrument(name = "SELECT opportunity_field_changes", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunity_field_changes"))]
pub async fn field_changes<'e>(
    db: impl PgExecutor<'e>,
    opportunity_id: Uuid,
    fields: &[String],
    newest_first: bool,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<FieldChangeRow>, sqlx::Error> {
    if newest_first {
        sqlx::query_as!(
            FieldChangeRow,
            "select id, opportunity_id, field, old_value, new_value, changed_by_id,
                    changed_by_name, change_time
             from opportunity_field_changes
             where opportunity_id = $1 and (cardinality($2::text[]) = 0 or field = any($2))
               and id < $3
             order by id desc limit $4",
            opportunity_id,
            fields,
            after_id.unwrap_or(i64::MAX),
            limit
        )
        .fetch_all(db)
        .await
    } else {
        sqlx::query_as!(
            FieldChangeRow,
            "select id, opportunity_id, field, old_value, new_value, changed_by_id,
                    changed_by_name, change_time
             from opportunity_field_changes
             where opportunity_id = $1 and (cardinality($2::text[]) = 0 or field = any($2))
               and id > $3
             order by id limit $4",
            opportunity_id,
            fields,
            after_id.unwrap_or(0),
            limit
        )
        .fetch_all(db)
        .await
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SalespersonRow {
    pub id: String,
    pub display_name: String,
    pub team: String,
    pub roles: Vec<String>,
    pub first_seen_time: DateTime<Utc>,
    pub last_seen_time: DateTime<Utc>,
    /// `lower(display_name)` as Postgres computes it: the page token's key.
    pub sort_name: String,
}

pub fn salespeople_query(
    pattern: Option<&str>,
    team: Option<&str>,
    ids: &[String],
    after: Option<&(String, String)>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(
        "select id, display_name, team, roles, first_seen_time, last_seen_time,
                lower(display_name) as sort_name
         from salespeople where true",
    );
    if let Some(pattern) = pattern {
        query
            .push(" and lower(display_name) like lower(")
            .push_bind(pattern.to_owned())
            .push(")");
    }
    if let Some(team) = team {
        query.push(" and team = ").push_bind(team.to_owned());
    }
    if !ids.is_empty() {
        query
            .push(" and id = any(")
            .push_bind(ids.to_vec())
            .push(")");
    }
    if let Some((name, id)) = after {
        query
            .push(" and (lower(display_name), id) > (")
            .push_bind(name.clone())
            .push(", ")
            .push_bind(id.clone())
            .push(")");
    }
    query
        .push(" order by lower(display_name), id limit ")
        .push_bind(limit);
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_the_columns_of_get_by_their_plain_names() {
        let select = select_opportunity();
        assert!(
            select.starts_with("select o.id, o.customer_id,"),
            "{select}"
        );
        assert!(
            select
                .trim_end()
                .ends_with("join salespeople ub on ub.id = o.updated_by")
        );
        assert!(select.contains("o.state::text as state,"), "{select}");
        assert!(!select.contains('"'), "{select}");
    }
}
