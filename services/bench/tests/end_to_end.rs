//! `salesopp bench` end to end on a tiny scale: seeds its own database from the admin
//! `DATABASE_URL` (scripts/ensure-postgres), serves the suite in this process, and runs one
//! second of two workloads and their pgbench comparison. It checks that calls were made and
//! none failed with INTERNAL, and that the seed respects the schema's rules; no timing is
//! asserted (the machine is shared).

use std::time::Duration;

use salesopp_bench::seed::{self, SeedPlan};
use salesopp_bench::{BenchArgs, Workload};
use salesopp_kit::config::AuthArgs;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

const SECRET: &str = "bench-test-secret-0123456789";

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Drops the test's database however the test ends.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok(options) = admin_url().parse::<PgConnectOptions>()
                        && let Ok(mut admin) = PgConnection::connect_with(&options).await
                    {
                        let _ = sqlx::query(AssertSqlSafe(format!(
                            "drop database if exists {name} with (force)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_a_tiny_scale_and_benches_two_workloads() {
    let name = format!("salesopp_bench_test_{}", uuid::Uuid::new_v4().simple());
    let _cleanup = DropDatabase(name.clone());
    let admin: PgConnectOptions = admin_url().parse().expect("DATABASE_URL");
    let plan = SeedPlan {
        scale: 600,
        customers: 60,
    };
    let seeded = seed::ensure(&admin, &name, plan, true)
        .await
        .expect("seed the database");
    assert!(seeded.seeded_now);
    assert!(seeded.history_entries >= 600 && seeded.history_entries == seeded.events);

    // The seed keeps the schema's rules: versions count events, positions are ids, the
    // sequences are past what was loaded, and triggers are enabled again.
    let pool = salesopp_kit::db::pool_options(4).connect_lazy_with(admin.clone().database(&name));
    let wrong_versions: i64 = sqlx::query_scalar(
        "select count(*) from opportunities o
         where o.version <> (select count(*) from opportunity_events e where e.opportunity_id = o.id)",
    )
    .fetch_one(&pool)
    .await
    .expect("count versions");
    assert_eq!(wrong_versions, 0);
    let (max_seq, next_seq): (i64, i64) = sqlx::query_as(
        "select max(seq), nextval('opportunity_event_seq') from opportunity_events where seq = id",
    )
    .fetch_one(&pool)
    .await
    .expect("sequence");
    assert!(next_seq > max_seq);
    let disabled: i64 = sqlx::query_scalar(
        "select count(*) from pg_trigger where not tgisinternal and tgenabled = 'D'",
    )
    .fetch_one(&pool)
    .await
    .expect("triggers");
    assert_eq!(disabled, 0, "every user trigger is enabled after the load");

    // The suite served in this process, driven through --url.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(salesopp::serve(
        salesopp::ServeConfig {
            pool: Some(pool.clone()),
            auth: salesopp_kit::Authenticator::hs256(SECRET.as_bytes(), None, None),
            services: salesopp::ServiceKind::ALL.to_vec(),
            gateway_endpoints: None,
            grace: Duration::from_secs(2),
            health_interval: Duration::from_millis(500),
            metrics_listener: None,
            streams: Default::default(),
            retention: Default::default(),
        },
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let out = tempfile::tempdir().expect("tempdir");
    let has_pgbench = std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let report = salesopp_bench::run(BenchArgs {
        database_url: admin_url(),
        database_name: name.clone(),
        reseed: false,
        scale: plan.scale,
        customers: Some(plan.customers),
        duration: 1,
        warmup: 0,
        concurrency: 4,
        workloads: vec![Workload::ChangeStatusCallers, Workload::Get],
        out: out.path().to_owned(),
        url: Some(format!("http://{addr}")),
        server_bin: None,
        server_pool: None,
        no_pgbench: !has_pgbench,
        auth: AuthArgs {
            auth_hs256_secret: Some(SECRET.to_owned()),
            ..AuthArgs::default()
        },
    })
    .await
    .expect("bench run");
    let _ = stop.send(());
    let _ = server.await;

    assert!(!report.seed.seeded_now, "the seed of this scale is reused");
    assert_eq!(report.workloads.len(), 2);
    for measured in &report.workloads {
        assert!(measured.calls > 0, "{measured:?}");
        assert!(
            !measured.errors.contains_key("Internal"),
            "INTERNAL errors: {measured:?}"
        );
    }
    if has_pgbench {
        assert_eq!(report.pgbench.len(), 4);
        for run in &report.pgbench {
            assert!(run.transactions > 0 && run.failed == 0, "{run:?}");
        }
        assert_eq!(report.ratios.len(), 4);
    }
    for file in ["report.json", "report.md", "report.svg"] {
        let written = std::fs::metadata(out.path().join(file)).expect(file);
        assert!(written.len() > 0, "{file} is empty");
    }
}
