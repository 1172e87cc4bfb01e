//! Seeds the benchmark database by bulk load: the suite's own schema (its migrations), then
//! salespeople, customers, opportunities, their history and their events streamed in with
//! `COPY ... FROM STDIN`, each table on its own connection at once.
//!
//! Why it is fast and still honest to the schema:
//! - Keys, secondary indexes and foreign keys of the loaded tables are read from the catalog,
//!   dropped, and re-created after the load with their own names and definitions. Building
//!   an index once from sorted data is many times cheaper than a million random inserts into
//!   it, and re-adding a foreign key validates every row, so nothing the load wrote escapes
//!   the constraints. Check constraints stay in place during the load.
//! - The user triggers (R1 live customer, R6 live status, R9/R10 history rules) are disabled
//!   only during the COPY, because the generated data satisfies each rule by construction
//!   (no archived customer or status exists; every history chain starts where the previous
//!   entry ended and never repeats a status: see `scheme::opportunity` and its tests), and
//!   enabled again before anything else touches the tables.
//! - Each table is truncated and loaded in one transaction with `COPY ... (FREEZE)`: rows
//!   are written frozen and all-visible, so the index-only pipeline aggregate reads no heap
//!   and no VACUUM has to run before the benchmark. `ANALYZE` then gives the planner its
//!   statistics.
//!
//! The scale is recorded in `bench_seed`, a table of the benchmark's own, so a later run
//! reuses the database when the scale matches.

use std::io::Write as _;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use prost::Message as _;
use salesopp_proto::common::v1::Actor;
use salesopp_proto::opportunity::v1 as pb;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::scheme::{self, OpportunitySeed, Status};

/// What to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SeedPlan {
    pub scale: u64,
    pub customers: u64,
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeedOutcome {
    pub plan: SeedPlan,
    /// Whether this run loaded the data (false: a matching seed was reused).
    pub seeded_now: bool,
    /// Seconds the load took (this run's, or the recorded one of the reused seed).
    pub seconds: f64,
    pub history_entries: i64,
    pub events: i64,
}

/// The loaded tables: their keys, indexes and foreign keys are rebuilt around the load.
const LOADED: [&str; 4] = [
    "customers",
    "opportunities",
    "status_changes",
    "opportunity_events",
];

/// A database name the tool creates and drops: plain lowercase identifiers only, so it is
/// never quoted wrongly or mistaken for another.
pub fn check_database_name(name: &str) -> anyhow::Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    anyhow::ensure!(
        fine,
        "--database-name must be a lowercase identifier (a-z, 0-9, _), at most 63 characters: {name:?}"
    );
    anyhow::ensure!(
        !matches!(name, "postgres" | "template0" | "template1"),
        "--database-name {name:?} is a database the bench must not drop"
    );
    Ok(())
}

/// Makes sure database `name` holds the suite's schema seeded at `plan`: reuses it when its
/// recorded seed matches and its schema is current, and (re)creates and loads it otherwise
/// or when `reseed` is set.
pub async fn ensure(
    admin: &PgConnectOptions,
    name: &str,
    plan: SeedPlan,
    reseed: bool,
) -> anyhow::Result<SeedOutcome> {
    check_database_name(name)?;
    let mut admin_conn = PgConnection::connect_with(admin)
        .await
        .context("connect to the admin DATABASE_URL (scripts/ensure-postgres prints one)")?;
    let exists = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#,
        name
    )
    .fetch_one(&mut admin_conn)
    .await?;
    let options = admin.clone().database(name);
    if exists && !reseed {
        let pool = pool(&options, 1).await?;
        if let Some(outcome) = recorded(&pool, plan).await? {
            pool.close().await;
            return Ok(outcome);
        }
        pool.close().await;
        eprintln!("bench: {name} holds another scale or an older schema: seeding it again");
    }
    sqlx::query(AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&mut admin_conn)
    .await?;
    sqlx::query(AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin_conn)
        .await?;
    admin_conn.close().await?;
    let pool = pool(&options, 6).await?;
    salesopp_kit::db::migrate(&pool).await?;
    let started = Instant::now();
    let (history_entries, events) = load(&pool, plan).await?;
    let seconds = started.elapsed().as_secs_f64();
    sqlx::query(
        "create table bench_seed (
             scale bigint not null, customers bigint not null, seconds double precision not null,
             schema_version bigint not null, history_entries bigint not null,
             events bigint not null, seeded_at timestamptz not null default now())",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "insert into bench_seed (scale, customers, seconds, schema_version, history_entries, events)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(plan.scale as i64)
    .bind(plan.customers as i64)
    .bind(seconds)
    .bind(salesopp_kit::db::required_schema_version())
    .bind(history_entries)
    .bind(events)
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(SeedOutcome {
        plan,
        seeded_now: true,
        seconds,
        history_entries,
        events,
    })
}

async fn pool(options: &PgConnectOptions, max: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .connect_with(options.clone().application_name("salesopp-bench"))
        .await?)
}

/// The seed recorded in the database, when it is `plan`'s on the current schema.
async fn recorded(pool: &PgPool, plan: SeedPlan) -> anyhow::Result<Option<SeedOutcome>> {
    let has_table: bool = sqlx::query_scalar("select to_regclass('bench_seed') is not null")
        .fetch_one(pool)
        .await?;
    if !has_table {
        return Ok(None);
    }
    let row: Option<(i64, i64, f64, i64, i64, i64)> = sqlx::query_as(
        "select scale, customers, seconds, schema_version, history_entries, events
         from bench_seed order by seeded_at desc limit 1",
    )
    .fetch_optional(pool)
    .await?;
    let applied = salesopp_kit::db::applied_schema_version(pool).await?;
    Ok(
        row.and_then(|(scale, customers, seconds, schema, history, events)| {
            let same = scale == plan.scale as i64
                && customers == plan.customers as i64
                && schema == applied
                && applied == salesopp_kit::db::required_schema_version();
            same.then_some(SeedOutcome {
                plan,
                seeded_now: false,
                seconds,
                history_entries: history,
                events,
            })
        }),
    )
}

/// The live statuses in pipeline order.
pub async fn statuses(pool: &PgPool) -> anyhow::Result<Vec<Status>> {
    let rows = sqlx::query!(
        r#"select id, display_name, kind::text as "kind!", probability, position
           from opportunity_statuses where not archived order by position"#
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        rows.iter().any(|r| r.kind == "OPEN"),
        "the database has no OPEN status"
    );
    Ok(rows
        .into_iter()
        .map(|row| Status {
            id: row.id,
            name: row.display_name,
            kind: row.kind,
            probability: row.probability,
            position: row.position,
        })
        .collect())
}

/// A statement that re-creates what the load dropped, in the order it must come back.
struct Rebuild {
    phase: u8,
    sql: String,
}

async fn load(pool: &PgPool, plan: SeedPlan) -> anyhow::Result<(i64, i64)> {
    let statuses = statuses(pool).await?;
    insert_salespeople(pool).await?;
    let rebuilds = drop_structures(pool).await?;
    set_user_triggers(pool, "disable").await?;

    let epoch = Utc::now() - ChronoDuration::days(730);
    let progress = MultiProgress::new();
    let bar = |prefix: &'static str, total: u64| rows_bar(&progress, prefix, total);
    let expected_entries = plan.scale * 4;
    let customers = copy_table(
        pool,
        "customers",
        "id, code, display_name, email, phone, contact_name, owner_id, created_by, updated_by, \
         create_time, update_time",
        bar("customers", plan.customers),
        move |out| customer_rows(plan, epoch, out),
    );
    let opportunity_statuses = statuses.clone();
    let opportunities = copy_table(
        pool,
        "opportunities",
        "id, customer_id, owner_id, title, currency_code, amount, expected_close_date, \
         status_id, state, lost_reason, next_step, close_time, status_change_time, created_by, \
         updated_by, revision, version, create_time, update_time",
        bar("opportunities", plan.scale),
        move |out| opportunity_rows(plan, &opportunity_statuses, epoch, out),
    );
    let history_statuses = statuses.clone();
    let history = copy_table(
        pool,
        "status_changes",
        "id, opportunity_id, sequence, from_status_id, from_display_name, from_kind, \
         from_probability, to_status_id, to_display_name, to_kind, to_probability, \
         changed_by_id, changed_by_name, change_time, note, currency_code, amount, \
         time_in_previous_status, lost_reason",
        bar("status_changes", expected_entries),
        move |out| history_rows(plan, &history_statuses, epoch, out),
    );
    let event_statuses = statuses.clone();
    let events = copy_table(
        pool,
        "opportunity_events",
        "id, event_id, type, opportunity_id, occur_time, actor_id, actor_name, owner_id, \
         payload, version, seq",
        bar("opportunity_events", expected_entries),
        move |out| event_rows(plan, &event_statuses, epoch, out),
    );
    let (customers, opportunities, history, events) =
        tokio::try_join!(customers, opportunities, history, events)?;
    anyhow::ensure!(
        customers == plan.customers && opportunities == plan.scale,
        "loaded {customers} customers and {opportunities} opportunities, expected {} and {}",
        plan.customers,
        plan.scale
    );
    anyhow::ensure!(
        history == events,
        "one event per history entry: {history} entries, {events} events"
    );

    finish_load(pool, rebuilds).await?;
    Ok((history as i64, events as i64))
}

/// `enable` or `disable` the user triggers of the loaded tables.
async fn set_user_triggers(pool: &PgPool, action: &str) -> anyhow::Result<()> {
    for table in LOADED {
        sqlx::query(AssertSqlSafe(format!(
            "alter table {table} {action} trigger user"
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// A progress bar of rows loaded into one table.
fn rows_bar(progress: &MultiProgress, prefix: &'static str, total: u64) -> ProgressBar {
    let bar = progress.add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>20} [{bar:30}] {human_pos}/{human_len} rows {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// After the rows: the triggers back on, the dropped indexes and constraints rebuilt, the
/// pipeline totals and the sequences past what was loaded, fresh statistics.
async fn finish_load(pool: &PgPool, rebuilds: Vec<Rebuild>) -> anyhow::Result<()> {
    set_user_triggers(pool, "enable").await?;
    rebuild(pool, rebuilds).await?;
    // The load ran without the pipeline's delta trigger: its totals come from the rows.
    sqlx::query("select pipeline_totals_rebuild()")
        .execute(pool)
        .await?;
    // R15: nor the history's durations trigger.
    sqlx::query("select status_durations_rebuild()")
        .execute(pool)
        .await?;
    // Sequences past what was loaded: the next event gets the next id and delivery position.
    sqlx::query!(
        "select setval('opportunity_event_seq',
                       coalesce((select max(seq) from opportunity_events), 0) + 1, false)
                    as next_seq,
                setval(pg_get_serial_sequence('opportunity_events', 'id'),
                       coalesce((select max(id) from opportunity_events), 0) + 1, false)
                    as next_id"
    )
    .fetch_one(pool)
    .await?;
    // Statistics of every table, those the rebuilds above filled included: without them the
    // planner guesses (16,000 durations for one opportunity), and nothing else gathers them
    // when autovacuum is off, as it is on the CI machines.
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

async fn insert_salespeople(pool: &PgPool) -> anyhow::Result<()> {
    let people = scheme::salespeople();
    let mut ids: Vec<String> = people.iter().map(|p| p.id.clone()).collect();
    let mut names: Vec<String> = people.iter().map(|p| p.name.clone()).collect();
    let mut teams: Vec<String> = people.iter().map(|p| p.team.clone()).collect();
    let mut roles: Vec<String> = people.iter().map(|p| p.role().to_owned()).collect();
    ids.push(scheme::ADMIN_ID.to_owned());
    names.push(scheme::ADMIN_NAME.to_owned());
    teams.push(String::new());
    roles.push("sales_admin".to_owned());
    sqlx::query!(
        "insert into salespeople (id, display_name, team, roles)
         select id, name, team, array[role]
         from unnest($1::text[], $2::text[], $3::text[], $4::text[]) as t(id, name, team, role)",
        &ids,
        &names,
        &teams,
        &roles
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops the keys, standalone indexes and foreign keys of the loaded tables (and the foreign
/// keys that point at them), returning the statements that bring each back as it was.
async fn drop_structures(pool: &PgPool) -> anyhow::Result<Vec<Rebuild>> {
    let tables: Vec<String> = LOADED.iter().map(|t| (*t).to_owned()).collect();
    let constraints: Vec<(String, String, String, String)> = sqlx::query!(
        r#"select conrelid::regclass::text as "table!", conname::text as "name!",
                  contype::text as "kind!", pg_get_constraintdef(oid) as "definition!"
           from pg_constraint
           where (contype in ('p', 'u') and conrelid = any($1::text[]::regclass[]))
              or (contype = 'f' and (conrelid = any($1::text[]::regclass[])
                                     or confrelid = any($1::text[]::regclass[])))
           order by contype = 'f' desc"#,
        &tables
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|c| (c.table, c.name, c.kind, c.definition))
    .collect();
    let indexes: Vec<(String, String)> = sqlx::query!(
        r#"select i.indexrelid::regclass::text as "name!",
                  pg_get_indexdef(i.indexrelid) as "definition!"
           from pg_index i
           where i.indrelid = any($1::text[]::regclass[])
             and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)"#,
        &tables
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|i| (i.name, i.definition))
    .collect();
    let mut rebuilds = Vec::new();
    // Foreign keys first (they depend on the keys), then the keys and indexes.
    for (table, name, kind, definition) in &constraints {
        sqlx::query(AssertSqlSafe(format!(
            "alter table {table} drop constraint \"{name}\""
        )))
        .execute(pool)
        .await?;
        rebuilds.push(Rebuild {
            phase: if kind == "f" { 2 } else { 0 },
            sql: format!("alter table {table} add constraint \"{name}\" {definition}"),
        });
    }
    for (name, definition) in &indexes {
        sqlx::query(AssertSqlSafe(format!("drop index {name}")))
            .execute(pool)
            .await?;
        rebuilds.push(Rebuild {
            phase: 1,
            sql: definition.clone(),
        });
    }
    Ok(rebuilds)
}

/// Re-creates keys, then indexes, then foreign keys (validating every row), two statements
/// at a time: one per core.
async fn rebuild(pool: &PgPool, mut rebuilds: Vec<Rebuild>) -> anyhow::Result<()> {
    rebuilds.sort_by_key(|r| r.phase);
    let bar = ProgressBar::new(rebuilds.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("keys and indexes");
    for phase in 0..=2 {
        let statements: Vec<String> = rebuilds
            .iter()
            .filter(|r| r.phase == phase)
            .map(|r| r.sql.clone())
            .collect();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(statements));
        let worker = |queue: std::sync::Arc<std::sync::Mutex<Vec<String>>>, bar: ProgressBar| async move {
            let mut conn = pool.acquire().await?;
            sqlx::query("set maintenance_work_mem = '1GB'")
                .execute(&mut *conn)
                .await?;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(sql) = next else {
                    return anyhow::Ok(());
                };
                bar.set_message(sql.chars().take(70).collect::<String>());
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .execute(&mut *conn)
                    .await
                    .with_context(|| format!("re-creating: {sql}"))?;
                bar.inc(1);
            }
        };
        tokio::try_join!(
            worker(queue.clone(), bar.clone()),
            worker(queue.clone(), bar.clone())
        )?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Rows of COPY text are written in chunks of about this many bytes.
const CHUNK: usize = 1 << 20;

/// Where a generator puts its rows: full chunks go to the COPY, with their row counts.
struct Rows {
    buffer: Vec<u8>,
    rows: u64,
    sender: mpsc::Sender<(Vec<u8>, u64)>,
}

impl Rows {
    /// Ends a row; sends the chunk when full. False once the COPY side has gone away.
    fn end_row(&mut self) -> bool {
        self.buffer.push(b'\n');
        self.rows += 1;
        if self.buffer.len() >= CHUNK {
            return self.flush();
        }
        true
    }

    fn flush(&mut self) -> bool {
        if self.buffer.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK + 4096));
        let rows = std::mem::take(&mut self.rows);
        self.sender.blocking_send((chunk, rows)).is_ok()
    }

    /// A text field, escaped for COPY's text format, then a tab.
    fn text(&mut self, value: &str) {
        for byte in value.bytes() {
            match byte {
                b'\\' => self.buffer.extend_from_slice(b"\\\\"),
                b'\t' => self.buffer.extend_from_slice(b"\\t"),
                b'\n' => self.buffer.extend_from_slice(b"\\n"),
                b'\r' => self.buffer.extend_from_slice(b"\\r"),
                other => self.buffer.push(other),
            }
        }
        self.buffer.push(b'\t');
    }

    /// A field that needs no escaping (ids, numbers, timestamps), then a tab.
    fn plain(&mut self, value: impl std::fmt::Display) {
        let _ = write!(self.buffer, "{value}\t");
    }

    fn null(&mut self) {
        self.buffer.extend_from_slice(b"\\N\t");
    }

    fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    fn time(&mut self, time: DateTime<Utc>) {
        let _ = write!(self.buffer, "{}\t", time.format("%Y-%m-%d %H:%M:%S+00"));
    }

    fn bytea(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.buffer.extend_from_slice(b"\\\\x");
        for byte in bytes {
            self.buffer.push(HEX[(byte >> 4) as usize]);
            self.buffer.push(HEX[(byte & 15) as usize]);
        }
        self.buffer.push(b'\t');
    }

    /// Replaces the last field's tab with the row's end.
    fn last(&mut self) -> bool {
        if self.buffer.last() == Some(&b'\t') {
            self.buffer.pop();
        }
        self.end_row()
    }
}

/// Streams what `generate` writes into `table` with one COPY, in a transaction that
/// truncates the table first so the rows can be written frozen. Returns the rows copied.
async fn copy_table(
    pool: &PgPool,
    table: &'static str,
    columns: &str,
    bar: ProgressBar,
    generate: impl FnOnce(&mut Rows) + Send + 'static,
) -> anyhow::Result<u64> {
    let (sender, mut receiver) = mpsc::channel::<(Vec<u8>, u64)>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut rows = Rows {
            buffer: Vec::with_capacity(CHUNK + 4096),
            rows: 0,
            sender,
        };
        generate(&mut rows);
        rows.flush();
    });
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("set local synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!("truncate {table}")))
        .execute(&mut *tx)
        .await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "copy {table} ({columns}) from stdin with (freeze)"
        ))
        .await?;
    while let Some((chunk, rows)) = receiver.recv().await {
        copy.send(chunk).await?;
        bar.inc(rows);
    }
    let copied = copy
        .finish()
        .await
        .with_context(|| format!("copy into {table}"))?;
    tx.commit().await?;
    producer.await?;
    bar.finish();
    Ok(copied)
}

fn at(epoch: DateTime<Utc>, offset: i64) -> DateTime<Utc> {
    epoch + ChronoDuration::seconds(offset)
}

fn customer_rows(plan: SeedPlan, epoch: DateTime<Utc>, out: &mut Rows) {
    for i in 1..=plan.customers {
        let c = scheme::customer(i);
        let owner = scheme::salesperson(c.owner).id;
        out.plain(c.id);
        out.text(&c.code);
        out.text(&c.name);
        out.optional_text(c.email.as_deref());
        out.optional_text(c.phone.as_deref());
        out.text(&c.contact);
        out.text(&owner);
        out.text(&owner);
        out.text(&owner);
        out.time(at(epoch, c.create_offset));
        out.time(at(epoch, c.create_offset));
        if !out.last() {
            return;
        }
    }
}

/// The amount as Postgres numeric text: cents over 100.
fn amount_text(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn opportunity_rows(plan: SeedPlan, statuses: &[Status], epoch: DateTime<Utc>, out: &mut Rows) {
    let epoch_date: NaiveDate = epoch.date_naive();
    for i in 1..=plan.scale {
        let o = scheme::opportunity(i, plan.customers, statuses);
        let status = &statuses[o.current()];
        let owner = scheme::salesperson(o.owner).id;
        let last = at(epoch, o.last_offset());
        out.plain(o.id);
        out.plain(scheme::customer_id(o.customer));
        out.text(&owner);
        out.text(&o.title);
        out.plain(o.currency);
        out.plain(amount_text(o.amount_cents));
        match o.close_day {
            Some(day) => out.plain(epoch_date + ChronoDuration::days(day)),
            None => out.null(),
        }
        out.plain(status.id);
        out.plain(&status.kind);
        if status.kind == "LOST" {
            out.text("Chose a competitor");
        } else {
            out.null();
        }
        out.optional_text(o.next_step);
        if status.is_open() {
            out.null();
        } else {
            out.time(last);
        }
        out.time(last);
        out.text(&owner);
        out.text(&owner);
        // One revision and one version per write: each history entry was one.
        out.plain(o.path.len());
        out.plain(o.path.len());
        out.time(at(epoch, o.create_offset()));
        out.time(last);
        if !out.last() {
            return;
        }
    }
}

fn history_rows(plan: SeedPlan, statuses: &[Status], epoch: DateTime<Utc>, out: &mut Rows) {
    for i in 1..=plan.scale {
        let o = scheme::opportunity(i, plan.customers, statuses);
        let owner = scheme::salesperson(o.owner);
        let amount = amount_text(o.amount_cents);
        for (step, &to) in o.path.iter().enumerate() {
            let to = &statuses[to];
            out.plain(entry_id(&o, step, 1));
            out.plain(o.id);
            out.plain(step + 1);
            if step == 0 {
                for _ in 0..4 {
                    out.null();
                }
            } else {
                let from = &statuses[o.path[step - 1]];
                out.plain(from.id);
                out.text(&from.name);
                out.plain(&from.kind);
                out.plain(from.probability);
            }
            out.plain(to.id);
            out.text(&to.name);
            out.plain(&to.kind);
            out.plain(to.probability);
            out.text(&owner.id);
            out.text(&owner.name);
            out.time(at(epoch, o.times[step]));
            out.text("");
            out.plain(o.currency);
            out.plain(&amount);
            if step == 0 {
                out.null();
            } else {
                out.plain(format_args!(
                    "{} seconds",
                    o.times[step] - o.times[step - 1]
                ));
            }
            if to.kind == "LOST" {
                out.text("Chose a competitor");
            } else {
                out.null();
            }
            if !out.last() {
                return;
            }
        }
    }
}

/// A deterministic id for entry `step` of `o` (kind 1: history, 2: event).
fn entry_id(o: &OpportunitySeed, step: usize, kind: u64) -> Uuid {
    let salt = 1_000 * kind + step as u64;
    uuid::Builder::from_random_bytes(
        (u128::from(scheme::mix(o.i, salt)) << 64 | u128::from(scheme::mix(o.i, salt + 500)))
            .to_be_bytes(),
    )
    .into_uuid()
}

/// The payload of a seeded event: a valid `OpportunityEvent` with what a consumer keys on
/// (ids, type, time, actor, version, the opportunity's owner and status after it). The
/// suite's own events also carry the whole opportunity before and after and the history
/// entry; the seed leaves those out to load 4 million events in seconds, not minutes.
fn seeded_event(
    o: &OpportunitySeed,
    step: usize,
    statuses: &[Status],
    owner: &scheme::Salesperson,
    time: DateTime<Utc>,
) -> Vec<u8> {
    let status = &statuses[o.path[step]];
    let version = step as i64 + 1;
    let state = match status.kind.as_str() {
        "WON" => pb::OpportunityState::Won,
        "LOST" => pb::OpportunityState::Lost,
        _ => pb::OpportunityState::Open,
    };
    let event = pb::OpportunityEvent {
        event_id: entry_id(o, step, 2).to_string(),
        r#type: if step == 0 {
            pb::OpportunityEventType::Created
        } else {
            pb::OpportunityEventType::StatusChanged
        }
        .into(),
        opportunity_id: o.id.to_string(),
        occur_time: Some(salesopp_kit::time::timestamp(time)),
        actor: Some(Actor {
            id: owner.id.clone(),
            display_name: owner.name.clone(),
        }),
        after: Some(pb::Opportunity {
            id: o.id.to_string(),
            customer_id: scheme::customer_id(o.customer).to_string(),
            owner_id: owner.id.clone(),
            status_id: status.id.to_string(),
            status_name: status.name.clone(),
            state: state.into(),
            version,
            ..Default::default()
        }),
        version,
        ..Default::default()
    };
    event.encode_to_vec()
}

fn event_rows(plan: SeedPlan, statuses: &[Status], epoch: DateTime<Utc>, out: &mut Rows) {
    let mut id: i64 = 0;
    for i in 1..=plan.scale {
        let o = scheme::opportunity(i, plan.customers, statuses);
        let owner = scheme::salesperson(o.owner);
        for step in 0..o.path.len() {
            id += 1;
            let time = at(epoch, o.times[step]);
            out.plain(id);
            out.plain(entry_id(&o, step, 2));
            out.plain(if step == 0 {
                "CREATED"
            } else {
                "STATUS_CHANGED"
            });
            out.plain(o.id);
            out.time(time);
            out.text(&owner.id);
            out.text(&owner.name);
            out.text(&owner.id);
            out.bytea(&seeded_event(&o, step, statuses, &owner, time));
            // Its version in the opportunity, and its delivery position: events loaded at
            // once are settled, so their position is their id.
            out.plain(step + 1);
            out.plain(id);
            if !out.last() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_plain_identifiers() {
        assert!(check_database_name("salesopp_bench").is_ok());
        assert!(check_database_name("bench; drop database x").is_err());
        assert!(check_database_name("Bench").is_err());
        assert!(check_database_name("postgres").is_err());
        assert!(check_database_name("").is_err());
    }

    #[test]
    fn amounts_are_exact_decimals() {
        assert_eq!(amount_text(100_005), "1000.05");
        assert_eq!(amount_text(7), "0.07");
    }
}
