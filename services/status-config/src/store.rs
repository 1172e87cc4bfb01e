//! The SQL of the status configuration, checked at build time (`query!`, `query_as!`; the
//! offline data is in `.sqlx/`). Every function runs on the executor it is given, so the
//! service decides the transaction; the schema backs each rule (R3, R4) as well.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{NewStatus, StatusKind};

/// A status row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusRow {
    pub id: Uuid,
    pub display_name: String,
    pub localized_names: Json<BTreeMap<String, String>>,
    pub probability: i16,
    pub kind: StatusKind,
    pub position: i32,
    pub is_default: bool,
    pub archived: bool,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// R16: days without a change before an OPEN opportunity here is stale; 0 = never.
    pub stale_after_days: i32,
    /// R20: the forecast category of the opportunities here that do not override it.
    pub forecast_category: String,
}

impl StatusRow {
    pub fn kind(&self) -> StatusKind {
        self.kind
    }

    pub fn etag(&self) -> String {
        self.revision.to_string()
    }
}

/// Serializes configuration writers: positions and the default are decided over the whole
/// table. Opportunity writes (row and key-share locks) are not blocked by this mode.
pub async fn lock_for_configuration(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("lock table opportunity_statuses in share row exclusive mode")
        .execute(tx)
        .await?;
    Ok(())
}

#[tracing::instrument(name = "SELECT opportunity_statuses", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunity_statuses"))]
pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<StatusRow>, sqlx::Error> {
    sqlx::query_as!(
        StatusRow,
        r#"select id, display_name,
                  localized_names as "localized_names: Json<BTreeMap<String, String>>",
                  probability, kind::text as "kind!: StatusKind", position, is_default, archived,
                  revision, create_time, update_time, stale_after_days, forecast_category
           from opportunity_statuses where id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// The status, locked `FOR NO KEY UPDATE`: a write that puts an opportunity in it (the
/// schema's `opportunity_status_is_live` trigger takes a share lock on the row) either
/// committed before, and is seen by what follows, or waits for this transaction to end (R6:
/// DeleteStatus counts and moves every opportunity). Key-share locks (history entries that
/// name the status as where they came from) do not wait on it, so no deadlock.
pub async fn get_for_update(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<StatusRow>, sqlx::Error> {
    sqlx::query_as!(
        StatusRow,
        r#"select id, display_name,
                  localized_names as "localized_names: Json<BTreeMap<String, String>>",
                  probability, kind::text as "kind!: StatusKind", position, is_default, archived,
                  revision, create_time, update_time, stale_after_days, forecast_category
           from opportunity_statuses where id = $1 for no key update"#,
        id
    )
    .fetch_optional(tx)
    .await
}

/// One page in pipeline order, after `after_position`.
#[tracing::instrument(name = "SELECT opportunity_statuses", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "opportunity_statuses"))]
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    show_archived: bool,
    after_position: Option<i32>,
    limit: i64,
) -> Result<Vec<StatusRow>, sqlx::Error> {
    sqlx::query_as!(
        StatusRow,
        r#"select id, display_name,
                  localized_names as "localized_names: Json<BTreeMap<String, String>>",
                  probability, kind::text as "kind!: StatusKind", position, is_default, archived,
                  revision, create_time, update_time, stale_after_days, forecast_category
           from opportunity_statuses
           where ($1 or not archived) and position > $2
           order by position
           limit $3"#,
        show_archived,
        after_position.unwrap_or(0),
        limit
    )
    .fetch_all(db)
    .await
}

/// The live (non-archived) statuses in pipeline order.
pub async fn list_live(tx: &mut PgConnection) -> Result<Vec<StatusRow>, sqlx::Error> {
    sqlx::query_as!(
        StatusRow,
        r#"select id, display_name,
                  localized_names as "localized_names: Json<BTreeMap<String, String>>",
                  probability, kind::text as "kind!: StatusKind", position, is_default, archived,
                  revision, create_time, update_time, stale_after_days, forecast_category
           from opportunity_statuses where not archived order by position"#
    )
    .fetch_all(tx)
    .await
}

/// Inserts an OPEN status at `position` (shifting the ones at and after it).
pub async fn insert(
    tx: &mut PgConnection,
    status: &NewStatus,
    position: i32,
    actor_id: &str,
) -> Result<StatusRow, sqlx::Error> {
    sqlx::query!(
        "update opportunity_statuses set position = position + 1 where position >= $1",
        position
    )
    .execute(&mut *tx)
    .await?;
    if status.make_default {
        clear_default(&mut *tx).await?;
    }
    sqlx::query_as!(
        StatusRow,
        r#"insert into opportunity_statuses
               (display_name, localized_names, probability, kind, position, is_default,
                stale_after_days, forecast_category, updated_by)
           values ($1, $2, $3, 'OPEN', $4, $5, $6, $7, $8)
           returning id, display_name,
                     localized_names as "localized_names: Json<BTreeMap<String, String>>",
                     probability, kind::text as "kind!: StatusKind", position, is_default,
                     archived, revision, create_time, update_time, stale_after_days,
                     forecast_category"#,
        status.display_name.as_str(),
        Json(status.localized_names.as_map()) as _,
        i16::from(status.probability),
        position,
        status.make_default,
        status.stale_after_days,
        status.forecast_category.as_deref(),
        actor_id
    )
    .fetch_one(tx)
    .await
}

async fn clear_default(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update opportunity_statuses
         set is_default = false, revision = revision + 1, update_time = salesopp_now()
         where is_default"
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The values an update writes, every one of them (the current ones where unchanged).
pub struct StatusValues<'a> {
    pub display_name: &'a str,
    pub localized_names: &'a BTreeMap<String, String>,
    pub probability: i16,
    pub stale_after_days: i32,
    /// R20: as stored (`PIPELINE`, ...).
    pub forecast_category: &'a str,
}

/// Writes `values` by `actor_id` (the one a probability change is recorded by, R18).
pub async fn update(
    tx: &mut PgConnection,
    id: Uuid,
    values: &StatusValues<'_>,
    actor_id: &str,
) -> Result<StatusRow, sqlx::Error> {
    sqlx::query_as!(
        StatusRow,
        r#"update opportunity_statuses
           set display_name = $2, localized_names = $3, probability = $4,
               stale_after_days = $5, forecast_category = $6, updated_by = $7,
               revision = revision + 1, update_time = salesopp_now()
           where id = $1
           returning id, display_name,
                     localized_names as "localized_names: Json<BTreeMap<String, String>>",
                     probability, kind::text as "kind!: StatusKind", position, is_default,
                     archived, revision, create_time, update_time, stale_after_days,
                     forecast_category"#,
        id,
        values.display_name,
        Json(values.localized_names) as _,
        values.probability,
        values.stale_after_days,
        values.forecast_category,
        actor_id
    )
    .fetch_one(tx)
    .await
}

/// R4: makes `id` the default and the previous default not, in the caller's transaction.
pub async fn set_default(tx: &mut PgConnection, id: Uuid) -> Result<StatusRow, sqlx::Error> {
    clear_default(&mut *tx).await?;
    sqlx::query_as!(
        StatusRow,
        r#"update opportunity_statuses
           set is_default = true, revision = revision + 1, update_time = salesopp_now()
           where id = $1
           returning id, display_name,
                     localized_names as "localized_names: Json<BTreeMap<String, String>>",
                     probability, kind::text as "kind!: StatusKind", position, is_default,
                     archived, revision, create_time, update_time, stale_after_days,
                     forecast_category"#,
        id
    )
    .fetch_one(tx)
    .await
}

/// How many opportunities are in the status (R6).
pub async fn opportunities_in(tx: &mut PgConnection, id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from opportunities where status_id = $1"#,
        id
    )
    .fetch_one(tx)
    .await
}

/// Archives a status and moves it after every other, keeping live positions 1..n.
pub async fn archive(tx: &mut PgConnection, id: Uuid) -> Result<StatusRow, sqlx::Error> {
    let old_position = sqlx::query_scalar!(
        "select position from opportunity_statuses where id = $1",
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "update opportunity_statuses
         set archived = true, archive_time = salesopp_now(), revision = revision + 1, update_time = salesopp_now(),
             position = (select max(position) + 1 from opportunity_statuses)
         where id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "update opportunity_statuses set position = position - 1 where position > $1",
        old_position
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query_as!(
        StatusRow,
        r#"select id, display_name,
                  localized_names as "localized_names: Json<BTreeMap<String, String>>",
                  probability, kind::text as "kind!: StatusKind", position, is_default, archived,
                  revision, create_time, update_time, stale_after_days, forecast_category
           from opportunity_statuses where id = $1"#,
        id
    )
    .fetch_one(tx)
    .await
}

/// Sets the live statuses' positions to their order in `ids` (1-based); archived statuses
/// follow them in their previous order. Bumps the etag of statuses whose position changed.
pub async fn reorder(tx: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "with wanted as (
             select id, ordinality::int as position from unnest($1::uuid[]) with ordinality as t(id, ordinality)
         ),
         archived as (
             select id, (cardinality($1::uuid[]) + row_number() over (order by position))::int as position
             from opportunity_statuses where archived
         ),
         target as (select * from wanted union all select * from archived)
         update opportunity_statuses s
         set position = target.position, revision = s.revision + 1, update_time = salesopp_now()
         from target
         where s.id = target.id and s.position <> target.position",
        ids
    )
    .execute(tx)
    .await?;
    Ok(())
}
