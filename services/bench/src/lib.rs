//! `salesopp bench`: like pgbench, for the suite. It seeds a database at a chosen scale by
//! bulk load ([`seed`], the data shape in [`scheme`]), starts `salesopp serve` on it
//! ([`server`]), drives each workload over real gRPC at a chosen concurrency and duration
//! ([`drive`]), then runs pgbench at the same concurrency on the same data with the calls'
//! own SQL and with a minimal reference ([`pgbench`]), and writes the report as JSON,
//! markdown and an SVG chart ([`report`]).
//!
//! The suite and Postgres are measured on the same machine in the same run, so the ratios
//! say how much of what Postgres can do the suite delivers, whatever the machine.

pub mod drive;
pub mod pgbench;
pub mod report;
pub mod scheme;
pub mod seed;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use salesopp_kit::config::AuthArgs;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use drive::Workload;

/// The command line of `salesopp bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Admin Postgres URL (one allowed to create databases), as `scripts/ensure-postgres`
    /// prints it; the benchmark database is made beside the database it names.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The benchmark's database: created, seeded and reused by name.
    #[arg(long, default_value = "salesopp_bench")]
    pub database_name: String,
    /// Seed again even when the database holds this scale already.
    #[arg(long)]
    pub reseed: bool,
    /// Opportunities to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub scale: u64,
    /// Customers to seed; one per ten opportunities when absent.
    #[arg(long)]
    pub customers: Option<u64>,
    /// Seconds each workload is measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds each workload runs before it is measured.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent calls (tasks, each with its own connection); pgbench gets as many clients.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Workloads to run, comma-separated; all of them when absent.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    /// Where report.json, report.md, report.svg and the server's log go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Drive a suite already running there (its database must be --database-name, seeded
    /// by this tool, and its HS256 secret given by SALESOPP_AUTH_HS256_SECRET) instead of
    /// starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// The salesopp binary to serve with; default: this program, or the release build.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Connections in the served suite's pool; default: the concurrency, at least 10 (the
    /// suite's default).
    #[arg(long)]
    pub server_pool: Option<u32>,
    /// Skip the pgbench comparison.
    #[arg(long)]
    pub no_pgbench: bool,
    // The suite's token settings, for --url.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The admin URL with its database replaced by `name` (for the served child process).
pub fn url_with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .map(|at| at + 3)
        .ok_or_else(|| anyhow::anyhow!("DATABASE_URL is not a postgres:// URL"))?;
    let rest = &url[scheme_end..];
    let query_at = rest.find('?').unwrap_or(rest.len());
    let path_at = rest[..query_at].find('/').unwrap_or(query_at);
    Ok(format!(
        "{}{}/{name}{}",
        &url[..scheme_end],
        &rest[..path_at],
        &rest[query_at..]
    ))
}

fn machine(postgres: String) -> report::Machine {
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    report::Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        postgres,
    }
}

/// Statements per call from pg_stat_statements, when the server loads it: calls of one
/// workload made one at a time, divided by the calls. None when it is not loaded.
async fn measured_statements(
    context: &Arc<drive::Context>,
    workload: Workload,
) -> anyhow::Result<Option<f64>> {
    let loaded = sqlx::query_scalar!(
        r#"select current_setting('shared_preload_libraries') like '%pg_stat_statements%'
               as "loaded!""#
    )
    .fetch_one(&context.db)
    .await?;
    if !loaded {
        return Ok(None);
    }
    // The view is not in the schema the checked statements are built against: these run as
    // they are.
    sqlx::query("create extension if not exists pg_stat_statements")
        .execute(&context.db)
        .await?;
    const CALLS: u64 = 200;
    let total = "select coalesce(sum(calls), 0)::float8 from pg_stat_statements
                 where dbid = (select oid from pg_database where datname = current_database())
                   and query not like '%pg_stat_statements%'";
    let before: f64 = sqlx::query_scalar(total).fetch_one(&context.db).await?;
    drive::sequential(context, workload, CALLS).await?;
    let after: f64 = sqlx::query_scalar(total).fetch_one(&context.db).await?;
    Ok(Some((after - before) / CALLS as f64))
}

/// Seeds (when needed), serves, drives, compares with pgbench, and writes the report into
/// `args.out`; prints the markdown table.
pub async fn run(args: BenchArgs) -> anyhow::Result<report::Report> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 second");
    anyhow::ensure!(args.scale >= 1, "--scale must be at least 1");
    let started_at = chrono::Utc::now().to_rfc3339();
    let workloads = chosen_workloads(&args.workloads);
    let Seeded {
        plan,
        seed,
        bench_url,
        db,
        postgres,
        statuses,
    } = seed_database(&args).await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let pool_size = args.server_pool.unwrap_or(args.concurrency.max(10) as u32);
    let mut suite = start_suite(&args, &bench_url, pool_size).await?;
    let pid = suite.pid();
    let idle = pid.and_then(server::memory_of);
    let context = Arc::new(drive::Context {
        url: suite.url.clone(),
        tokens: suite.tokens.clone(),
        db: db.clone(),
        statuses,
        scale: plan.scale,
        customers: plan.customers,
        concurrency: args.concurrency,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
        acks: drive::Acks::default(),
    });

    let outcome = drive_all(&context, &workloads, pid).await;
    let measured = match outcome {
        Ok(measured) => measured,
        Err(error) => {
            let _ = suite.stop().await;
            return Err(error);
        }
    };
    let peak = pid.and_then(server::memory_of).map(|m| m.hwm_kib);

    let round_trips = round_trips(&context, &workloads).await;

    let inputs = PgbenchRun {
        db: &db,
        database_url: &bench_url,
        scale: plan.scale,
        customers: plan.customers,
        args: &args,
    };
    let pgbench_results = match run_pgbench(&inputs, &workloads).await {
        Ok(results) => results,
        Err(error) => {
            let _ = suite.stop().await;
            return Err(error);
        }
    };
    suite.stop().await?;

    let mut report = report::Report {
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(postgres),
        seed,
        concurrency: args.concurrency,
        warmup_seconds: args.warmup as f64,
        duration_seconds: args.duration as f64,
        server: report::ServerInfo {
            url: context.url.clone(),
            spawned: args.url.is_none(),
            pool_size: args.url.is_none().then_some(pool_size),
            idle_rss_kib: idle.map(|m| m.rss_kib),
            peak_rss_kib: peak,
        },
        workloads: measured,
        pgbench: pgbench_results,
        ratios: Vec::new(),
        round_trips,
    };
    db.close().await;
    publish(&mut report, &args.out)?;
    Ok(report)
}

/// The ratios computed, the report written (JSON, markdown, SVG) and its table printed.
fn publish(report: &mut report::Report, out: &std::path::Path) -> anyhow::Result<()> {
    report.compute_ratios();
    report.write(out)?;
    println!("{}", report.markdown());
    eprintln!("bench: report in {}/report.{{json,md,svg}}", out.display());
    Ok(())
}

/// The suite under test: the one at `--url`, or this binary's `serve` spawned on the bench
/// database with a pool of `pool_size`.
async fn start_suite(
    args: &BenchArgs,
    bench_url: &str,
    pool_size: u32,
) -> anyhow::Result<server::Suite> {
    match &args.url {
        Some(url) => server::Suite::external(url, &args.auth).await,
        None => {
            let binary = server::server_binary(args.server_bin.as_deref())?;
            eprintln!("bench: serving with {} serve", binary.display());
            server::Suite::spawn(&binary, bench_url, pool_size, &args.out.join("server.log")).await
        }
    }
}

/// The seeded database the run measures, and what the report says of it.
struct Seeded {
    plan: seed::SeedPlan,
    seed: seed::SeedOutcome,
    bench_url: String,
    db: sqlx::PgPool,
    postgres: String,
    statuses: Vec<scheme::Status>,
}

/// Seeds the bench database at the asked scale (or reuses it) and connects to it.
async fn seed_database(args: &BenchArgs) -> anyhow::Result<Seeded> {
    let admin: PgConnectOptions = args
        .database_url
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let plan = seed::SeedPlan {
        scale: args.scale,
        customers: args
            .customers
            .unwrap_or_else(|| scheme::customers_for(args.scale))
            .max(1),
    };
    eprintln!(
        "bench: database {} at {} opportunities, {} customers",
        args.database_name, plan.scale, plan.customers
    );
    let seed = seed::ensure(&admin, &args.database_name, plan, args.reseed).await?;
    eprintln!(
        "bench: seed {} ({:.1} s)",
        if seed.seeded_now { "loaded" } else { "reused" },
        seed.seconds
    );
    let bench_url = url_with_database(&args.database_url, &args.database_name)?;
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(
            admin
                .clone()
                .database(&args.database_name)
                .application_name("salesopp-bench"),
        )
        .await?;
    let postgres = sqlx::query_scalar!(r#"select version() as "version!""#)
        .fetch_one(&db)
        .await?;
    let statuses = seed::statuses(&db).await?;

    Ok(Seeded {
        plan,
        seed,
        bench_url,
        db,
        postgres,
        statuses,
    })
}

/// The workloads asked for, each once, in the order given; all of them when none is.
fn chosen_workloads(asked: &[Workload]) -> Vec<Workload> {
    if asked.is_empty() {
        return Workload::ALL.to_vec();
    }
    let mut chosen = asked.to_vec();
    chosen.dedup();
    chosen
}

/// Statements per call of the two calls pgbench runs: measured by pg_stat_statements where
/// the server has it, else counted from the code (the pgbench (a) scripts).
async fn round_trips(
    context: &Arc<drive::Context>,
    workloads: &[Workload],
) -> Vec<report::RoundTrips> {
    let mut round_trips = Vec::new();
    for (workload, call, from_code) in [
        // From the code, as the pgbench (a) scripts write them: one number each.
        (
            Workload::ChangeStatus,
            "ChangeOpportunityStatus",
            f64::from(pgbench::Script::ChangeAsIssued.statements()),
        ),
        (
            Workload::Get,
            "GetOpportunity",
            f64::from(pgbench::Script::GetAsIssued.statements()),
        ),
    ] {
        if !workloads.contains(&workload) {
            continue;
        }
        let (statements, source) = match measured_statements(context, workload).await {
            Ok(Some(n)) => (
                n,
                "pg_stat_statements (includes the sequencer's and health probes' statements meanwhile)"
                    .to_owned(),
            ),
            _ => (
                from_code,
                "from the code (pg_stat_statements is not loaded by this server); the \
                 pgbench (a) script is those statements"
                    .to_owned(),
            ),
        };
        round_trips.push(report::RoundTrips {
            call,
            statements,
            source,
        });
    }

    round_trips
}

/// What pgbench is run with: the seeded database and the run's settings.
struct PgbenchRun<'a> {
    db: &'a sqlx::PgPool,
    database_url: &'a str,
    scale: u64,
    customers: u64,
    args: &'a BenchArgs,
}

/// pgbench (a) and (b) for each measured call among `workloads`.
async fn run_pgbench(
    run: &PgbenchRun<'_>,
    workloads: &[Workload],
) -> anyhow::Result<Vec<pgbench::Measured>> {
    let args = run.args;
    if args.no_pgbench {
        return Ok(Vec::new());
    }
    let mut pgbench_results = Vec::new();
    let scripts: Vec<pgbench::Script> = [
        (
            workloads
                .iter()
                .any(|w| matches!(w, Workload::ChangeStatus | Workload::ChangeStatusCallers)),
            vec![
                pgbench::Script::ChangeAsIssued,
                pgbench::Script::ChangeReference,
            ],
        ),
        (
            workloads.contains(&Workload::Get),
            vec![pgbench::Script::GetAsIssued, pgbench::Script::GetReference],
        ),
        (
            workloads.contains(&Workload::BatchCreate),
            vec![pgbench::Script::BatchCreateReference],
        ),
    ]
    .into_iter()
    .filter(|(wanted, _)| *wanted)
    .flat_map(|(_, scripts)| scripts)
    .collect();
    if !scripts.is_empty() {
        let (event_payload, stored_response) = pgbench::sample_sizes(run.db).await?;
        let inputs = pgbench::Inputs {
            database_url: run.database_url.to_owned(),
            scale: run.scale,
            customers: run.customers,
            concurrency: args.concurrency,
            warmup: Duration::from_secs(args.warmup),
            duration: Duration::from_secs(args.duration),
            caller_id: scheme::ADMIN_ID.to_owned(),
            caller_name: scheme::ADMIN_NAME.to_owned(),
            event_payload,
            stored_response,
        };
        let dir = tempfile::tempdir()?;
        for script in scripts {
            eprintln!("bench: pgbench {}", script.label());
            match pgbench::run(script, &inputs, dir.path()).await {
                Ok(result) => {
                    eprintln!(
                        "bench: pgbench {}: {:.0} tx/s, p99 {:.2} ms",
                        result.label, result.per_second, result.latency.p99_ms
                    );
                    pgbench_results.push(result);
                }
                Err(error) => return Err(error.context(format!("pgbench {}", script.label()))),
            }
        }
    }
    Ok(pgbench_results)
}

async fn drive_all(
    context: &Arc<drive::Context>,
    workloads: &[Workload],
    pid: Option<u32>,
) -> anyhow::Result<Vec<drive::Measured>> {
    let mut measured = Vec::with_capacity(workloads.len());
    for &workload in workloads {
        let result = drive::run(context, workload, move || {
            pid.and_then(server::memory_of).map(|m| m.rss_kib)
        })
        .await
        .with_context(|| format!("workload {}", workload.name()))?;
        eprintln!(
            "bench: {:<22} {:>8.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:?}",
            workload.name(),
            result.per_second,
            result.latency.p50_ms,
            result.latency.p99_ms,
            result.errors
        );
        measured.push(result);
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_bench_database() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h/db?sslmode=require", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=require"
        );
        assert_eq!(
            url_with_database("postgres://h:5432", "b").unwrap(),
            "postgres://h:5432/b"
        );
        assert!(url_with_database("nonsense", "b").is_err());
    }
}
