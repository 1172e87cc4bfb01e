//! The limit: what Postgres itself does with the same work, measured by `pgbench` at the
//! same concurrency and duration on the same database, right after the suite's run.
//!
//! Two scripts per call:
//! - (a) **the call's own SQL**: the statements the service issues, in its order, with its
//!   texts and the values it binds (typed as sqlx binds them), read from
//!   services/opportunity/src/service.rs, store.rs, status_change.rs, events.rs and
//!   services/kit/src/idempotency.rs and people.rs. GetOpportunity's SELECT, the move to the
//!   new status and the event insert are not restated: they are the crates' own texts
//!   (`store::GET_SQL`, `store::MOVE_TO_STATUS_SQL`, `outbox::write::APPEND_SQL`, which the
//!   checked macros compile) with each `$n` mapped to a pgbench variable ([`as_pgbench`]).
//!   Postgres infers those the types the macros checked the binds against. One difference,
//!   said where it is: the target status is chosen inside the status read (the next OPEN
//!   status after the current one, the rule the suite's workload applies in Rust) since
//!   pgbench cannot know the current status before reading it; it is a lookup in the 7-row
//!   status table.
//! - (b) **the reference**: the same durable work in the fewest statements on the same
//!   tables, indexes and triggers: update the row (returning what the history needs),
//!   insert the history entry, the event with a payload of the size the suite writes, the
//!   idempotency record with a response of the size the suite stores, commit. For a read:
//!   the opportunity row by primary key. For BatchCreateOpportunities, (b) only: the items'
//!   rows, history entries, events and idempotency records in one statement.
//!
//! Each pgbench client changes only the opportunities numbered `client_id` modulo the
//! clients, as each suite task does, so neither side waits on another's row.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::process::Command;

use crate::drive::{BATCH_ITEMS, Latency};

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Script {
    /// The statements of ChangeOpportunityStatus, as the service issues them.
    ChangeAsIssued,
    /// The same durable work in the fewest statements.
    ChangeReference,
    /// GetOpportunity's SELECT and its status durations (R15).
    GetAsIssued,
    /// The opportunity row by primary key.
    GetReference,
    /// The durable work of a BatchCreateOpportunities of [`BATCH_ITEMS`] items in one
    /// statement: the rows, their first history entries, their CREATED events, their
    /// idempotency records (the rules' triggers fire as for the suite).
    BatchCreateReference,
}

impl Script {
    pub fn label(self) -> &'static str {
        match self {
            Script::ChangeAsIssued => "(a) ChangeOpportunityStatus's own SQL",
            Script::ChangeReference => "(b) reference change",
            Script::GetAsIssued => "(a) GetOpportunity's own SQL",
            Script::GetReference => "(b) primary-key read",
            Script::BatchCreateReference => "(b) reference batch create, 100 items",
        }
    }

    /// Statements per transaction, BEGIN and COMMIT included, counted in the script (which
    /// is [`Script::text`]).
    pub fn statements(self) -> u32 {
        match self {
            Script::ChangeAsIssued => 11,
            Script::ChangeReference => 6,
            Script::GetAsIssued => 2,
            Script::GetReference => 1,
            Script::BatchCreateReference => 3,
        }
    }
}

/// What pgbench measured for one script.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub script: Script,
    pub label: &'static str,
    pub statements: u32,
    pub transactions: u64,
    pub failed: u64,
    pub per_second: f64,
    pub latency: Latency,
}

/// The values the scripts need from the data the suite wrote.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub database_url: String,
    pub scale: u64,
    /// Customers seeded: `md5('customer-' || i)::uuid` for i in 1..=customers.
    pub customers: u64,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub caller_id: String,
    pub caller_name: String,
    /// A STATUS_CHANGED event payload as the suite writes it (its size is what matters).
    pub event_payload: Vec<u8>,
    /// A ChangeOpportunityStatus response as the idempotency record stores it.
    pub stored_response: Vec<u8>,
}

/// A payload and a response the suite wrote during this run, else stand-ins of the sizes
/// it writes (about 1.9 kB and 1.2 kB) when no change workload ran.
pub async fn sample_sizes(db: &PgPool) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let payload = sqlx::query_scalar!(
        "select payload from opportunity_events
         where type = 'STATUS_CHANGED' and request_id is not null
         order by id desc limit 1"
    )
    .fetch_optional(db)
    .await?;
    let response = sqlx::query_scalar!(
        "select response from idempotency_records
         where method = 'ChangeOpportunityStatus' and length(response) > 0
         order by create_time desc limit 1"
    )
    .fetch_optional(db)
    .await?;
    Ok((
        payload.unwrap_or_else(|| vec![0x5a; 1_900]),
        response.unwrap_or_else(|| vec![0x5a; 1_200]),
    ))
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2 + 12);
    text.push_str("'\\x");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text.push_str("'::bytea");
    text
}

/// The opportunity a transaction works on: number `n`, its id as the seed made it.
const OPPORTUNITY: &str = "md5('opportunity-' || :n)::uuid";

/// The status after `c` (an `opportunity_statuses` row) in the workload's rule
/// (`scheme::next_status`): the next live OPEN status in pipeline order, wrapping; the
/// first OPEN one from a closed status.
const NEXT_STATUS: &str = "coalesce(
        (select s.id from opportunity_statuses s
         where c.kind = 'OPEN' and s.kind = 'OPEN' and not s.archived and s.position > c.position
         order by s.position limit 1),
        (select s.id from opportunity_statuses s
         where s.kind = 'OPEN' and not s.archived order by s.position limit 1))";

/// A statement of the service as pgbench runs it: each `$n` becomes `(values[n - 1])` (a
/// pgbench variable or an expression of them), and sqlx's column overrides (`as "time!"`)
/// the plain names that `\gset` makes variables of. Panics when `values` does not fit the
/// statement: the script would not be the service's.
fn as_pgbench(sql: &str, values: &[&str]) -> String {
    let sql = salesopp_kit::db::plain_column_names(sql.trim_end());
    let mut used = vec![false; values.len()];
    let mut text = String::with_capacity(sql.len());
    let mut rest = sql.as_str();
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let n: usize = rest[at + 1..at + 1 + digits]
            .parse()
            .unwrap_or_else(|_| panic!("a `$` that is no parameter in:\n{sql}"));
        let value = values
            .get(n.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no value for ${n} in:\n{sql}"));
        used[n - 1] = true;
        text.push('(');
        text.push_str(value);
        text.push(')');
        rest = &rest[at + 1 + digits..];
    }
    text.push_str(rest);
    assert!(
        used.iter().all(|u| *u),
        "more values than parameters in:\n{sql}"
    );
    text
}

/// Picks this client's opportunity: numbered `client_id` modulo the clients.
const PICK_OWN: &str = "\\set k random(0, (:scale - 1 - :client_id) / :nclients)
\\set n 1 + :client_id + :nclients * :k
\\set r random(1, 1000000000000000)
";

impl Script {
    /// The pgbench script. Variables: `scale`, `customers`, `nclients`, `caller`,
    /// `caller_name` (given with -D), `client_id` (pgbench's own).
    pub fn text(self, inputs: &Inputs) -> String {
        match self {
            Script::GetAsIssued => format!(
                "\\set n random(1, :scale)\n{};\n{};\n",
                get_sql(),
                durations_sql()
            ),
            Script::GetReference => {
                format!(
                    "\\set n random(1, :scale)\nselect * from opportunities where id = {OPPORTUNITY};\n"
                )
            }
            Script::ChangeAsIssued => change_as_issued(inputs),
            Script::ChangeReference => change_reference(inputs),
            Script::BatchCreateReference => batch_create_reference(inputs),
        }
    }
}

/// GetOpportunity's SELECT and, in the change, store::lock's second read.
fn get_sql() -> String {
    as_pgbench(salesopp_opportunity::store::GET_SQL, &[OPPORTUNITY])
}

/// The status durations of the opportunity read (R15), which GetOpportunity and the change
/// answer with.
fn durations_sql() -> String {
    as_pgbench(
        salesopp_opportunity::store::DURATIONS_OF_ONE_SQL,
        &[OPPORTUNITY],
    )
}

/// The 11 statements ChangeOpportunityStatus issues, the store's own texts where it has them.
fn change_as_issued(inputs: &Inputs) -> String {
    let payload = hex(&inputs.event_payload);
    let response = hex(&inputs.stored_response);
    // The request hash is a SHA-256: 32 bytes.
    let hash = hex(&[0xab; 32]);
    let get = get_sql();
    let durations = durations_sql();
    let target = format!(
        "select {NEXT_STATUS} from opportunities o join opportunity_statuses c on c.id = o.status_id \
         where o.id = {OPPORTUNITY}"
    );
    let share_statuses = as_pgbench(
        salesopp_opportunity::store::SHARE_STATUSES_OF_WRITE_SQL,
        &[&target, OPPORTUNITY],
    );
    // The row moved and its clock read, returning `time` and what changed.
    let move_to_status = as_pgbench(
        salesopp_opportunity::store::MOVE_TO_STATUS_SQL,
        &[
            OPPORTUNITY,
            ":to_id",
            ":to_kind",
            "null",
            ":caller",
            "null",
            "null",
        ],
    );
    // The change's event, as the service appends it at the opportunity's next version.
    let append_event = as_pgbench(
        salesopp_outbox::write::APPEND_SQL,
        &[
            "gen_random_uuid()",
            "'STATUS_CHANGED'",
            OPPORTUNITY,
            ":time",
            ":caller",
            ":caller_name",
            "'pgbench-' || :r",
            ":cur_owner_id",
            "null",
            &payload,
            "(:cur_version)::bigint + 1",
        ],
    );
    let history_columns = "id, opportunity_id, sequence, from_status_id, from_display_name, \
        from_kind::text as from_kind, from_probability, to_status_id, to_display_name, \
        to_kind::text as to_kind, to_probability, changed_by_id, changed_by_name, change_time, \
        note, currency_code, amount::text as amount, \
        (extract(epoch from time_in_previous_status) * 1000000)::bigint as micros_in_previous_status, \
        lost_reason, request_id, from_manual_probability, to_manual_probability";
    format!(
        "{PICK_OWN}BEGIN;
-- kit idempotency::claim
insert into idempotency_records (caller_id, method, request_id, request_hash, response)
 values (:caller, 'ChangeOpportunityStatus', 'pgbench-' || :r, {hash}, '')
 on conflict (caller_id, method, request_id) do update
     set request_hash = excluded.request_hash, response = '', create_time = now()
     where idempotency_records.create_time < now() - make_interval(hours => 24)
 returning 1;
-- kit people::record: no statement (the auth layer has recorded the caller)
-- store::lock_moving_to: the target status (chosen here: see the module's note) and the
-- current one FOR SHARE in one statement (the target is the row that is not the current
-- one: the workload always moves), then the row
with locked as materialized (
{share_statuses}
) select id, display_name, kind, probability, forecast_category, archived
  from locked where id is distinct from current_status_id \\gset to_
select id from opportunities where id = {OPPORTUNITY} for update;
{get} \\gset cur_
-- store::move_to_status (reads the clock and returns what changed)
{move_to_status} \\gset
-- store::append_status_change
insert into status_changes
     (opportunity_id, sequence, from_status_id, from_display_name, from_kind, from_probability,
      to_status_id, to_display_name, to_kind, to_probability, changed_by_id, changed_by_name,
      change_time, note, currency_code, amount, time_in_previous_status, lost_reason, request_id,
      from_manual_probability, to_manual_probability)
 values ({OPPORTUNITY},
 (select coalesce(max(sequence), 0) + 1 from status_changes where opportunity_id = {OPPORTUNITY}),
 (:cur_status_id)::uuid, :cur_status_name, (:cur_state)::text::status_kind, (:cur_status_probability)::smallint,
 (:to_id)::uuid, :to_display_name, (:to_kind)::text::status_kind, (:to_probability)::smallint,
 :caller, :caller_name, (:time)::timestamptz, '', :cur_currency_code, (:cur_amount)::text::numeric,
 (:time)::timestamptz - (:cur_status_change_time)::timestamptz, null, 'pgbench-' || :r,
 (nullif(:cur_manual_probability, ''))::smallint, null)
 returning {history_columns};
-- events::append (outbox::write::append)
{append_event};
-- service::with_durations_one: the answer's status durations (R15)
{durations};
-- kit idempotency::complete
update idempotency_records set response = {response}
 where caller_id = :caller and method = 'ChangeOpportunityStatus' and request_id = 'pgbench-' || :r;
COMMIT;
"
    )
}

/// A BatchCreateOpportunities' durable work in one statement, as the workload sends it:
/// [`BATCH_ITEMS`] opportunities of random seeded customers owned by the caller, in the
/// default status, each with its first history entry, its CREATED event (a payload of the
/// size the suite writes) and its idempotency record. The triggers that keep the rules
/// (customer live, status live, pipeline totals, durations, history chain) and the foreign
/// keys run as they do for the suite; what the suite adds is reading and checking the items
/// (statuses, customers, owners), the answers and the round trips.
fn batch_create_reference(inputs: &Inputs) -> String {
    let payload = hex(&inputs.event_payload);
    let response = hex(&inputs.stored_response);
    let hash = hex(&[0xab; 32]);
    let items = BATCH_ITEMS;
    format!(
        "\\set r random(1, 1000000000000000)
BEGIN;
with o as (
 insert into opportunities
     (id, customer_id, owner_id, title, currency_code, amount, status_id, state,
      status_change_time, created_by, updated_by, create_time, update_time, version)
 select gen_random_uuid(), md5('customer-' || (1 + ((:r)::bigint + g * 7919) % :customers))::uuid,
        :caller, 'Bench batch deal ' || :r || '-' || g, 'THB', (1000 + ((:r)::bigint + g) % 5000000)::numeric,
        d.id, d.kind, now(), :caller, :caller, now(), now(), 1
 from generate_series(1, {items}) g, opportunity_statuses d where d.is_default
 returning id, owner_id, amount, currency_code, status_id),
h as (
 insert into status_changes
     (opportunity_id, sequence, to_status_id, to_display_name, to_kind, to_probability,
      changed_by_id, changed_by_name, change_time, currency_code, amount, request_id)
 select o.id, 1, s.id, s.display_name, s.kind, s.probability, :caller, :caller_name, now(),
        o.currency_code, o.amount, 'pgbench-' || :r
 from o join opportunity_statuses s on s.id = o.status_id
 returning 1),
e as (
 insert into opportunity_events
     (type, opportunity_id, occur_time, actor_id, actor_name, request_id, owner_id, payload,
      version)
 select 'CREATED', o.id, now(), :caller, :caller_name, 'pgbench-' || :r, o.owner_id, {payload}, 1
 from o
 returning 1)
insert into idempotency_records (caller_id, method, request_id, request_hash, response)
select :caller, 'CreateOpportunity', 'pgbench-' || :r || '-' || g, {hash}, {response}
from generate_series(1, {items}) g;
COMMIT;
"
    )
}

/// The same durable work in the fewest statements, on the same tables and indexes.
fn change_reference(inputs: &Inputs) -> String {
    let payload = hex(&inputs.event_payload);
    let response = hex(&inputs.stored_response);
    // The request hash is a SHA-256: 32 bytes.
    let hash = hex(&[0xab; 32]);
    format!(
        "{PICK_OWN}BEGIN;
update opportunities o
 set status_id = t.id, state = t.kind,
     close_time = case when t.kind = 'OPEN' then null else coalesce(o.close_time, now()) end,
     lost_reason = null, status_change_time = now(), updated_by = :caller,
     revision = o.revision + 1, version = o.version + 1, update_time = now()
 from opportunities prev join opportunity_statuses c on c.id = prev.status_id,
      opportunity_statuses t
 where o.id = {OPPORTUNITY} and prev.id = o.id and t.id = {NEXT_STATUS}
 returning c.id as from_id, c.display_name as from_name, c.kind::text as from_kind,
   c.probability as from_probability, t.id as to_id, t.display_name as to_name,
   t.kind::text as to_kind, t.probability as to_probability,
   prev.status_change_time as entered, o.currency_code, o.amount::text as amount,
   o.version, o.owner_id \\gset
insert into status_changes
     (opportunity_id, sequence, from_status_id, from_display_name, from_kind, from_probability,
      to_status_id, to_display_name, to_kind, to_probability, changed_by_id, changed_by_name,
      change_time, note, currency_code, amount, time_in_previous_status, request_id)
 values ({OPPORTUNITY},
 (select coalesce(max(sequence), 0) + 1 from status_changes where opportunity_id = {OPPORTUNITY}),
 (:from_id)::uuid, :from_name, (:from_kind)::text::status_kind, (:from_probability)::smallint,
 (:to_id)::uuid, :to_name, (:to_kind)::text::status_kind, (:to_probability)::smallint,
 :caller, :caller_name, now(), '', :currency_code, (:amount)::text::numeric,
 now() - (:entered)::timestamptz, 'pgbench-' || :r);
insert into opportunity_events
     (event_id, type, opportunity_id, occur_time, actor_id, actor_name, request_id, owner_id,
      payload, version)
 values (gen_random_uuid(), 'STATUS_CHANGED', {OPPORTUNITY}, now(), :caller, :caller_name,
 'pgbench-' || :r, :owner_id, {payload}, (:version)::bigint);
insert into idempotency_records (caller_id, method, request_id, request_hash, response)
 values (:caller, 'ChangeOpportunityStatus', 'pgbench-' || :r, {hash}, {response});
COMMIT;
"
    )
}

/// Runs `script` with pgbench: a warmup pass, then the measured one with a per-transaction
/// log, from which the latency percentiles are read.
pub async fn run(script: Script, inputs: &Inputs, dir: &Path) -> anyhow::Result<Measured> {
    let file = dir.join(format!("{script:?}.sql"));
    std::fs::write(&file, script.text(inputs))?;
    if !inputs.warmup.is_zero() {
        pgbench(&file, inputs, inputs.warmup, None).await?;
    }
    let log_prefix = dir.join(format!("{script:?}-log"));
    let output = pgbench(&file, inputs, inputs.duration, Some(&log_prefix)).await?;
    let number = |prefix: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let per_second =
        number("tps =").with_context(|| format!("no tps in pgbench's output:\n{output}"))?;
    let transactions = number("number of transactions actually processed:").unwrap_or(0.0) as u64;
    let failed = number("number of failed transactions:").unwrap_or(0.0) as u64;
    let latency = Latency::of(&transaction_log(dir, &format!("{script:?}-log"))?);
    Ok(Measured {
        script,
        label: script.label(),
        statements: script.statements(),
        transactions,
        failed,
        per_second,
        latency,
    })
}

async fn pgbench(
    file: &Path,
    inputs: &Inputs,
    duration: Duration,
    log_prefix: Option<&Path>,
) -> anyhow::Result<String> {
    let clients = inputs.concurrency.max(1);
    let mut command = Command::new("pgbench");
    command
        .arg("--no-vacuum")
        .arg("--protocol=prepared")
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--time={}", duration.as_secs().max(1)))
        .arg(format!("--file={}", file.display()))
        .arg(format!("--define=scale={}", inputs.scale))
        .arg(format!("--define=customers={}", inputs.customers))
        .arg(format!("--define=nclients={clients}"))
        .arg(format!("--define=caller={}", inputs.caller_id))
        .arg(format!("--define=caller_name={}", inputs.caller_name));
    if let Some(prefix) = log_prefix {
        command
            .arg("--log")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    let output = command
        .arg(&inputs.database_url)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pgbench (apt-get install postgresql-client, or --no-pgbench)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    // pgbench reports aborted clients on stderr and still exits 0 in some versions.
    anyhow::ensure!(
        !stderr.contains("aborted in command"),
        "a pgbench client aborted:\n{stderr}"
    );
    Ok(stdout)
}

/// The latencies (µs, third column) of every pgbench transaction log `dir/<prefix>.*`.
fn transaction_log(dir: &Path, prefix: &str) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(&format!("{prefix}.")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        for line in text.lines() {
            if let Some(micros) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                let _ = histogram.record(micros.max(1));
            }
        }
    }
    Ok(histogram)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            database_url: String::new(),
            scale: 10,
            customers: 5,
            concurrency: 2,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            caller_id: "bench-admin".into(),
            caller_name: "Bench Admin".into(),
            event_payload: vec![1, 2, 255],
            stored_response: vec![0],
        }
    }

    #[test]
    fn each_parameter_becomes_its_value_and_overrides_plain_names() {
        let values = ["1", "2", "3", "4", "5", "6", "7", "8", ":nine", "'t' || :r"];
        assert_eq!(
            as_pgbench(
                r#"select $1, $2, $3, $4, $5, $6, $7, $8, $9::text, $10 || $1 as "d!"
                "#,
                &values
            ),
            "select (1), (2), (3), (4), (5), (6), (7), (8), (:nine)::text, ('t' || :r) || (1) as d"
        );
    }

    /// The counted statements are the script's: each ends with `;` or `\gset`.
    #[test]
    fn statement_counts_match_the_scripts() {
        for script in [
            Script::ChangeAsIssued,
            Script::ChangeReference,
            Script::GetAsIssued,
            Script::GetReference,
            Script::BatchCreateReference,
        ] {
            let text = script.text(&inputs());
            let ends = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .filter(|l| {
                    l.trim_end().ends_with(';')
                        || l.trim_end().ends_with("\\gset")
                        || l.trim_end().ends_with("\\gset to_")
                        || l.trim_end().ends_with("\\gset cur_")
                })
                .count();
            assert_eq!(ends as u32, script.statements(), "{script:?}:\n{text}");
        }
        assert!(
            Script::ChangeAsIssued
                .text(&inputs())
                .contains("'\\x0102ff'::bytea")
        );
    }
}
