//! Read replicas (DESIGN.md Operations: "`DATABASE_READ_URL`, when set, serves the read-only
//! calls from a replica (the reads that must see the caller's own write stay on the
//! primary)"), against a real streaming replica: a private primary cluster and a hot standby
//! made of it by `pg_basebackup` ([`Replicated`]).
//!
//! Where a call reads is proved without timing: the standby's replay is paused
//! (`pg_wal_replay_pause`), so what is written then is on the primary and certainly not on
//! the replica, and a call answers with it or without it. Once replay resumes and the
//! standby has applied everything (a mark committed on the primary is visible there), the
//! replica answers with it. The suite without `DATABASE_READ_URL` is every other test file.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use salesopp::ServiceKind;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::cluster::StopMode;
use salesopp_tests::fixtures::{PRESENTED, change_request, mask, money, rid};
use salesopp_tests::replica::Replicated;
use salesopp_tests::scrape::{Scrape, scrape};
use salesopp_tests::{SECRET, SuiteOptions, TestSuite, World, admin_token, authed, wait};
use sqlx::Connection as _;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The suite in this process on a database of `pair`'s primary, reading from its standby.
async fn served_with_replica(pair: &Replicated) -> World {
    let database = pair.database().await;
    let options = SuiteOptions {
        read: Some(pair.read_options(&database)),
        ..Default::default()
    };
    let service_pool = database.pool().await;
    World::of(TestSuite::serve(database, service_pool, options).await).await
}

/// An opportunity of `customer_id` titled `title`, worth `baht` THB, in the default status.
async fn create(world: &mut World, customer_id: &str, title: &str, baht: i64) -> pb::Opportunity {
    world
        .try_create_request(
            &admin_token(),
            pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    customer_id: customer_id.to_owned(),
                    title: title.to_owned(),
                    amount: Some(money("THB", baht, 0)),
                    ..Default::default()
                }),
                request_id: rid(),
                ..Default::default()
            },
        )
        .await
        .expect("create an opportunity")
}

/// Every opportunity ListOpportunities answers, as (id, status id), by id.
async fn listed(world: &mut World) -> Vec<(String, String)> {
    let page = world
        .opps
        .list_opportunities(authed(
            &admin_token(),
            pb::ListOpportunitiesRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .expect("ListOpportunities")
        .into_inner();
    let mut listed: Vec<_> = page
        .opportunities
        .into_iter()
        .map(|o| (o.id, o.status_id))
        .collect();
    listed.sort();
    listed
}

/// The pipeline summary's open count per status (statuses without any left out), and the
/// open total's count.
async fn open_counts(world: &mut World) -> (BTreeMap<String, i64>, i64) {
    let summary = world
        .opps
        .get_pipeline_summary(authed(
            &admin_token(),
            pb::GetPipelineSummaryRequest::default(),
        ))
        .await
        .expect("GetPipelineSummary")
        .into_inner();
    let per_status = summary
        .by_status
        .into_iter()
        .filter(|status| !status.totals.is_empty())
        .map(|status| {
            (
                status.status_id,
                status.totals.iter().map(|t| t.count).sum(),
            )
        })
        .collect();
    let open = summary
        .total
        .map_or(0, |total| total.open.iter().map(|t| t.count).sum());
    (per_status, open)
}

/// The ids of the customers a ListCustomers search for `query` finds.
async fn search(customers: &mut CustomerServiceClient<Channel>, query: &str) -> Vec<String> {
    customers
        .list_customers(authed(
            &admin_token(),
            cpb::ListCustomersRequest {
                query: query.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("ListCustomers")
        .into_inner()
        .customers
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// The display names ListStatuses answers.
async fn status_names(world: &mut World) -> Vec<String> {
    world
        .statuses
        .list_statuses(authed(&admin_token(), spb::ListStatusesRequest::default()))
        .await
        .expect("ListStatuses")
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| s.display_name)
        .collect()
}

/// How many rows of `table` have `id`, asked of the standby directly: what the replica has.
async fn on_standby(pair: &Replicated, world: &World, table: &str, id: &str) -> i64 {
    let options = pair.standby.options().database(&world.suite.database.name);
    let mut standby = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("connect to the standby");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from {table} where id = $1::uuid"
    )))
    .bind(id)
    .fetch_one(&mut standby)
    .await
    .expect("count on the standby")
}

#[tokio::test]
async fn lists_read_from_the_replica_and_writes_stay_on_the_primary() {
    let pair = Replicated::start().await;
    let mut world = served_with_replica(&pair).await;
    let admin = admin_token();
    let customer = world.customer(&admin, "Siam Replica Traders").await;
    let first = create(&mut world, &customer.id, "Replicated pumps", 1_000).await;
    let default_status = first.status_id.clone();
    assert_ne!(default_status, PRESENTED);
    pair.until_replayed().await;
    assert_eq!(
        listed(&mut world).await,
        vec![(first.id.clone(), default_status.clone())]
    );

    pair.pause_replay().await;
    // Writes while the replica applies nothing: each answers with its own result, built in
    // its transaction on the primary, and the Gets read the primary.
    let moved = world
        .try_change(&admin, change_request(&first.id, PRESENTED))
        .await
        .expect("a status change while replay is paused");
    assert_eq!(
        moved.opportunity.as_ref().map(|o| o.status_id.as_str()),
        Some(PRESENTED)
    );
    let second = create(&mut world, &customer.id, "Unreplicated valves", 2_000).await;
    let newcomer = world.customer(&admin, "Bangkok Standby Supplies").await;
    let status = world
        .statuses
        .create_status(authed(
            &admin,
            spb::CreateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    display_name: "Replica Trial".to_owned(),
                    localized_names: BTreeMap::from([
                        ("th".to_owned(), "ทดลองสำเนา".to_owned()),
                        ("en".to_owned(), "Replica Trial".to_owned()),
                    ]),
                    probability: 40,
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("CreateStatus while replay is paused")
        .into_inner();
    assert_eq!(world.get(&admin, &first.id).await.status_id, PRESENTED);
    assert_eq!(
        world.get(&admin, &second.id).await.title,
        "Unreplicated valves"
    );
    let got_customer = world
        .customers
        .get_customer(authed(
            &admin,
            cpb::GetCustomerRequest {
                id: newcomer.id.clone(),
            },
        ))
        .await
        .expect("GetCustomer of a customer the replica has not got")
        .into_inner();
    assert_eq!(got_customer.display_name, "Bangkok Standby Supplies");
    let got_status = world
        .statuses
        .get_status(authed(
            &admin,
            spb::GetStatusRequest {
                id: status.id.clone(),
            },
        ))
        .await
        .expect("GetStatus of a status the replica has not got")
        .into_inner();
    assert_eq!(got_status.display_name, "Replica Trial");

    // The replica has none of it...
    assert_eq!(
        on_standby(&pair, &world, "opportunities", &second.id).await,
        0
    );
    assert_eq!(
        on_standby(&pair, &world, "customers", &newcomer.id).await,
        0
    );
    // ...and the read-only calls answer as it does: as before the pause.
    assert_eq!(
        listed(&mut world).await,
        vec![(first.id.clone(), default_status.clone())],
        "ListOpportunities reads the replica"
    );
    assert_eq!(
        world.history(&admin, &first.id).await.len(),
        1,
        "ListStatusHistory reads the replica: the creation only"
    );
    assert_eq!(
        open_counts(&mut world).await,
        (BTreeMap::from([(default_status.clone(), 1)]), 1),
        "GetPipelineSummary reads the replica"
    );
    assert!(
        search(&mut world.customers, "Standby Supplies")
            .await
            .is_empty(),
        "ListCustomers reads the replica"
    );
    assert!(
        !status_names(&mut world)
            .await
            .contains(&"Replica Trial".to_owned()),
        "ListStatuses reads the replica"
    );

    pair.resume_replay().await;
    pair.until_replayed().await;
    let mut both = vec![
        (first.id.clone(), PRESENTED.to_owned()),
        (second.id.clone(), default_status.clone()),
    ];
    both.sort();
    assert_eq!(listed(&mut world).await, both);
    assert_eq!(world.history(&admin, &first.id).await.len(), 2);
    assert_eq!(
        open_counts(&mut world).await,
        (
            BTreeMap::from([(default_status.clone(), 1), (PRESENTED.to_owned(), 1)]),
            2
        )
    );
    assert_eq!(
        search(&mut world.customers, "Standby Supplies").await,
        vec![newcomer.id.clone()]
    );
    assert!(
        status_names(&mut world)
            .await
            .contains(&"Replica Trial".to_owned())
    );
}

/// A client that writes, reads its result with a Get and writes again with the etag it got
/// is never sent to a replica that is behind: the Gets are the primary's (an etag from the
/// replica would be stale, or the record missing, and the next write refused).
#[tokio::test]
async fn writes_and_the_gets_that_follow_them_stay_on_the_primary_while_the_replica_is_behind() {
    let pair = Replicated::start().await;
    let mut world = served_with_replica(&pair).await;
    let admin = admin_token();
    pair.pause_replay().await;

    let customer = world.customer(&admin, "Chiang Mai Lag Co., Ltd.").await;
    let got = world
        .customers
        .get_customer(authed(
            &admin,
            cpb::GetCustomerRequest {
                id: customer.id.clone(),
            },
        ))
        .await
        .expect("GetCustomer right after CreateCustomer")
        .into_inner();
    let renamed = world
        .customers
        .update_customer(authed(
            &admin,
            cpb::UpdateCustomerRequest {
                customer: Some(cpb::Customer {
                    id: customer.id.clone(),
                    display_name: "Chiang Mai Lag Trading Co., Ltd.".to_owned(),
                    etag: got.etag.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                request_id: rid(),
            },
        ))
        .await
        .expect("UpdateCustomer with the etag GetCustomer gave")
        .into_inner();
    assert_eq!(renamed.display_name, "Chiang Mai Lag Trading Co., Ltd.");

    let created = create(&mut world, &customer.id, "Lagging chillers", 5_000).await;
    let got = world.get(&admin, &created.id).await;
    assert_eq!(got.etag, created.etag);
    let updated = world
        .try_update_request(
            &admin,
            pb::UpdateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    id: created.id.clone(),
                    title: "Lagging chillers, phase 2".to_owned(),
                    etag: got.etag.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["title"]),
                request_id: rid(),
                ..Default::default()
            },
        )
        .await
        .expect("UpdateOpportunity with the etag GetOpportunity gave");
    let got = world.get(&admin, &created.id).await;
    assert_eq!(got.title, "Lagging chillers, phase 2");
    assert_eq!(got.etag, updated.etag);
    let mut change = change_request(&created.id, PRESENTED);
    change.etag = got.etag.clone();
    let changed = world
        .try_change(&admin, change)
        .await
        .expect("ChangeOpportunityStatus with the etag GetOpportunity gave");
    assert_eq!(
        changed.opportunity.map(|o| o.status_id),
        Some(PRESENTED.to_owned())
    );
    assert_eq!(world.get(&admin, &created.id).await.status_id, PRESENTED);

    // All of it while the replica applied nothing.
    assert_eq!(
        on_standby(&pair, &world, "customers", &customer.id).await,
        0
    );
    assert_eq!(
        on_standby(&pair, &world, "opportunities", &created.id).await,
        0
    );
    pair.resume_replay().await;
}

// ---------------------------------------------------------------------------------------
// The real command line
// ---------------------------------------------------------------------------------------

/// `salesopp serve` as a child process with `env` (beside the HS256 secret, a free port and
/// a fast health probe); killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    metrics: std::net::SocketAddr,
    /// Its stdout: the JSON log.
    log: std::path::PathBuf,
    /// Its stderr: where `main` prints the error it ends with.
    errors: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("pick a free port")
        .port()
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stem = std::env::temp_dir().join(format!("salesopp-replica-{}", uuid::Uuid::new_v4()));
        let log = stem.with_extension("log");
        let errors = stem.with_extension("err");
        let out = std::fs::File::create(&log).expect("create the server's log");
        let err = std::fs::File::create(&errors).expect("create the server's stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_salesopp-under-test"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SALESOPP_AUTH_HS256_SECRET", SECRET)
            .env("SALESOPP_LISTEN", format!("127.0.0.1:{port}"))
            .env("SALESOPP_METRICS_LISTEN", metrics.to_string())
            .env("SALESOPP_HEALTH_INTERVAL_SECONDS", "0.1")
            .env("SALESOPP_STARTUP_TIMEOUT_SECONDS", "30")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run salesopp-under-test serve");
        Server {
            child: Some(child),
            port,
            metrics,
            log,
            errors,
        }
    }

    fn log(&self) -> String {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        format!("{}{}", read(&self.log), read(&self.errors))
    }

    async fn channel(&self) -> Option<Channel> {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()
    }

    /// The health status of `service` ("" for the server as a whole).
    async fn health(&self, service: &str) -> Option<ServingStatus> {
        let answer = HealthClient::new(self.channel().await?)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(answer.into_inner().status).ok()
    }

    /// Waits until the server says SERVING (failing, with its log, if it exits first).
    async fn until_serving(&mut self) {
        let child = self.child.as_mut().expect("the server runs");
        if let Some(status) = child.try_wait().expect("server status") {
            panic!("the server exited ({status}):\n{}", self.log());
        }
        let what = format!("the server never became SERVING:\n{}", self.log());
        let server = &*self;
        wait::until(&what, move || async move {
            server.health("").await == Some(ServingStatus::Serving)
        })
        .await;
    }

    /// The first scrape of `/metrics` for which `holds` is true.
    async fn scrape_until(&self, what: &str, holds: impl Fn(&Scrape) -> bool) -> Scrape {
        let (addr, holds) = (self.metrics, &holds);
        wait::until_some(what, move || async move {
            let scraped = scrape(addr).await;
            holds(&scraped).then_some(scraped)
        })
        .await
    }

    async fn customers(&self) -> CustomerServiceClient<Channel> {
        CustomerServiceClient::new(self.channel().await.expect("connect to the server"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.errors);
    }
}

/// A customer named `name`, created by the admin.
async fn create_customer(customers: &mut CustomerServiceClient<Channel>, name: &str) -> String {
    customers
        .create_customer(authed(
            &admin_token(),
            cpb::CreateCustomerRequest {
                customer: Some(cpb::Customer {
                    display_name: name.to_owned(),
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("CreateCustomer")
        .into_inner()
        .id
}

/// `salesopp serve` with `env`, run to its exit, which must be a refusal to start: the one
/// line it printed on stderr (the error `main` returned), with no panic.
async fn refusal(env: &[(&str, &str)]) -> String {
    let mut server = Server::start(env);
    let child = server.child.as_mut().expect("the server runs");
    let status = wait::until_some("salesopp serve did not exit", || {
        std::future::ready(child.try_wait().expect("the server's status"))
    })
    .await;
    server.child = None;
    let printed = server.log();
    assert!(!status.success(), "serve started: {printed}");
    assert!(!printed.contains("panicked"), "a panic: {printed}");
    let errors = std::fs::read_to_string(&server.errors).unwrap_or_default();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {printed}");
    lines[0].to_owned()
}

/// The start-up schema check runs on the replica too: a `DATABASE_READ_URL` whose database
/// has not the schema this build needs (here the standby's `postgres` database) is refused
/// in one line that names it, as is one that is no Postgres URL.
#[tokio::test]
async fn the_replica_is_schema_checked_at_start_up() {
    let pair = Replicated::start().await;
    let database = pair.database().await;
    let primary = pair.primary_url(&database);
    let no_schema = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        pair.standby.port()
    );
    let line = refusal(&[
        ("DATABASE_URL", &primary),
        ("DATABASE_READ_URL", &no_schema),
    ])
    .await;
    for part in [
        "DATABASE_READ_URL (the read replica)",
        "the database schema is at version 0",
    ] {
        assert!(line.contains(part), "no {part:?} in {line:?}");
    }

    let line = refusal(&[
        ("DATABASE_URL", &primary),
        ("DATABASE_READ_URL", "not a URL"),
    ])
    .await;
    assert!(
        line.contains("DATABASE_READ_URL is not a valid Postgres URL"),
        "{line:?}"
    );

    // The replica of the migrated database passes the same check.
    let mut server = Server::start(&[
        ("DATABASE_URL", &primary),
        ("DATABASE_READ_URL", &pair.read_url(&database)),
    ]);
    server.until_serving().await;
}

/// Readiness follows the primary alone: with the standby stopped every service stays
/// SERVING, `salesopp_db_up{pool="read"}` reads 0, and the read-only calls are answered by
/// the primary; once the standby is back they read it again.
#[tokio::test]
async fn readiness_follows_the_primary_and_reads_fall_back_to_it_while_the_replica_is_down() {
    let pair = Replicated::start().await;
    let database = pair.database().await;
    let mut server = Server::start(&[
        ("DATABASE_URL", &pair.primary_url(&database)),
        ("DATABASE_READ_URL", &pair.read_url(&database)),
    ]);
    server.until_serving().await;
    let up = server
        .scrape_until("both pools probed", |s| {
            s.value("salesopp_db_up", &[("pool", "read")]).is_some()
                && s.value("salesopp_db_up", &[("pool", "primary")]).is_some()
        })
        .await;
    assert_eq!(
        up.value("salesopp_db_up", &[("pool", "primary")]),
        Some(1.0)
    );
    assert_eq!(up.value("salesopp_db_up", &[("pool", "read")]), Some(1.0));
    let mut customers = server.customers().await;
    // A read on each pool, so both have a connection to show.
    create_customer(&mut customers, "Nakhon Pool Gauges").await;
    search(&mut customers, "Pool Gauges").await;
    let pools = scrape(server.metrics).await;
    for pool in ["primary", "read"] {
        let idle = pools.value(
            "salesopp_db_pool_connections",
            &[("pool", pool), ("state", "idle")],
        );
        let in_use = pools.value(
            "salesopp_db_pool_connections",
            &[("pool", pool), ("state", "in_use")],
        );
        assert!(
            matches!((idle, in_use), (Some(i), Some(u)) if i + u >= 1.0),
            "{pool} pool gauges: idle {idle:?}, in use {in_use:?}"
        );
    }

    pair.standby.stop(StopMode::Fast).await;
    server
        .scrape_until("the replica probed unreachable", |s| {
            s.value("salesopp_db_up", &[("pool", "read")]) == Some(0.0)
        })
        .await;
    let every = ServiceKind::ALL.map(ServiceKind::grpc_name);
    for service in std::iter::once("").chain(every) {
        assert_eq!(
            server.health(service).await,
            Some(ServingStatus::Serving),
            "{service:?} with the replica down"
        );
    }
    let fallback = create_customer(&mut customers, "Fallback Trading Co., Ltd.").await;
    assert_eq!(
        search(&mut customers, "Fallback Trading").await,
        vec![fallback],
        "the primary answers the search while the replica is down"
    );

    pair.standby.start().await;
    server
        .scrape_until("the replica probed reachable again", |s| {
            s.value("salesopp_db_up", &[("pool", "read")]) == Some(1.0)
        })
        .await;
    pair.until_replayed().await;
    pair.pause_replay().await;
    create_customer(&mut customers, "Returned Replica Co., Ltd.").await;
    assert!(
        search(&mut customers, "Returned Replica").await.is_empty(),
        "the search reads the replica again"
    );
    pair.resume_replay().await;
}
