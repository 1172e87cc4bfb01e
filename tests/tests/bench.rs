//! `salesopp bench` end to end on a tiny scale: seeds a database of the test's own (a
//! [`TestDatabase`], which the seed fills and the test drops), serves the suite on it in this
//! process, and runs one second of two workloads and their pgbench comparison. It checks
//! that calls were made and none failed with INTERNAL, and that the seed respects the
//! schema's rules; no timing is asserted (the machine is shared).

use salesopp_bench::seed::{self, SeedPlan};
use salesopp_bench::{BenchArgs, Workload};
use salesopp_kit::config::AuthArgs;
use salesopp_tests::{SECRET, SuiteOptions, TestDatabase, TestSuite, admin_options, admin_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_a_tiny_scale_and_benches_two_workloads() {
    // The seed drops and creates the database it is named (the test's, made empty here).
    let database = TestDatabase::create_empty().await;
    let name = database.name.clone();
    let plan = SeedPlan {
        scale: 600,
        customers: 60,
    };
    let seeded = seed::ensure(&admin_options(), &name, plan, true)
        .await
        .expect("seed the database");
    assert!(seeded.seeded_now);
    assert!(seeded.history_entries >= 600 && seeded.history_entries == seeded.events);

    // The seed keeps the schema's rules: versions count events, positions are ids, the
    // sequences are past what was loaded, and triggers are enabled again.
    let pool = database.pool().await;
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

    // The suite served in this process on the seeded database, driven through --url.
    let mut suite = TestSuite::serve(database, pool, SuiteOptions::default()).await;
    let out = tempfile::tempdir().expect("tempdir");
    let has_pgbench = std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let report = salesopp_bench::run(BenchArgs {
        database_url: admin_url(),
        database_name: name,
        reseed: false,
        scale: plan.scale,
        customers: Some(plan.customers),
        duration: 1,
        warmup: 0,
        concurrency: 4,
        workloads: vec![Workload::ChangeStatusCallers, Workload::Get],
        out: out.path().to_owned(),
        url: Some(suite.url()),
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
    suite.stop().await.expect("the suite stops");

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
