//! R14 from the totals the writes keep: at every moment, in one snapshot, the summary read
//! from `pipeline_totals` plus the deltas not folded yet is exactly the aggregate over the
//! opportunities themselves, while callers create, move, re-price and hand on opportunities
//! and two folders (as two replicas would) move deltas into the totals at the same time.

use salesopp_kit::OpportunityState;
use salesopp_kit::Visibility;
use salesopp_opportunity::store::{self, OpportunityFilter, PipelineRow};
use salesopp_opportunity::summary;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_tests::fixtures::{SHIPPED_STATUSES, mask, money};
use salesopp_tests::{TestSuite, World, admin_token, authed, manager_token, token};
use sqlx::PgPool;

/// Owners in two teams, and the token of each.
const OWNERS: [(&str, &str); 4] = [
    ("rep-n1", "north"),
    ("rep-n2", "north"),
    ("rep-s1", "south"),
    ("rep-s2", "south"),
];

fn owner_token(index: usize) -> String {
    let (id, team) = OWNERS[index % OWNERS.len()];
    token(id, id, team, &["sales_rep"])
}

/// A small deterministic generator: the same run every time.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn amount(rng: &mut Lcg) -> Option<salesopp_proto::common::v1::Money> {
    match rng.next(3) {
        0 => None,
        1 => Some(money("THB", rng.next(1_000_000) as i64, 500_000_000)),
        _ => Some(money("USD", rng.next(50_000) as i64, 0)),
    }
}

/// The two summaries of `filter` for `visibility`, read in one repeatable-read snapshot.
async fn both(
    db: &PgPool,
    visibility: &Visibility,
    filter: &OpportunityFilter,
) -> (Vec<PipelineRow>, Vec<PipelineRow>) {
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *tx)
        .await
        .expect("isolation");
    let from_totals = summary::pipeline(&mut *tx, visibility, filter)
        .await
        .expect("summary from the totals");
    let from_rows = store::pipeline(&mut *tx, visibility, filter)
        .await
        .expect("summary from the rows");
    tx.commit().await.expect("commit");
    (from_totals, from_rows)
}

/// Every shape the boards ask for: the admin's, a manager's team, a rep's own, by state.
fn shapes() -> Vec<(Visibility, OpportunityFilter)> {
    vec![
        (Visibility::All, OpportunityFilter::default()),
        (
            Visibility::Team {
                me: "mgr-n".into(),
                team: "north".into(),
            },
            OpportunityFilter::default(),
        ),
        (
            Visibility::Own {
                me: "rep-s1".into(),
            },
            OpportunityFilter::default(),
        ),
        (
            Visibility::All,
            OpportunityFilter {
                team: Some("south".into()),
                states: vec![OpportunityState::Open, OpportunityState::Won],
                ..Default::default()
            },
        ),
        (
            Visibility::All,
            OpportunityFilter {
                owner_ids: vec!["rep-n2".into(), "rep-s2".into()],
                ..Default::default()
            },
        ),
    ]
}

async fn assert_totals_exact(db: &PgPool, when: &str) {
    for (visibility, filter) in shapes() {
        let (from_totals, from_rows) = both(db, &visibility, &filter).await;
        assert_eq!(
            format!("{from_totals:#?}"),
            format!("{from_rows:#?}"),
            "{when}: the totals disagree with the rows for {visibility:?} {filter:?}"
        );
    }
}

/// Creates `opportunity` as `token`; its id.
async fn create(world: &mut World, token: &str, opportunity: pb::Opportunity) -> String {
    let request = pb::CreateOpportunityRequest {
        opportunity: Some(opportunity),
        ..Default::default()
    };
    world
        .try_create_request(token, request)
        .await
        .expect("create")
        .id
}

/// Folds until no delta is left.
async fn fold_all(db: &PgPool) {
    while summary::fold(db, summary::FOLD_BATCH).await.expect("fold") > 0 {}
}

/// Writes a caller makes: a new opportunity, a status move, a new amount, a hand-over.
async fn write(suite: &TestSuite, customer_id: &str, ids: &[String], rng: &mut Lcg) {
    let mut opportunities = suite.opportunities().await;
    let admin = admin_token();
    match rng.next(4) {
        0 => {
            let owner = rng.next(OWNERS.len() as u64) as usize;
            opportunities
                .create_opportunity(authed(
                    &owner_token(owner),
                    pb::CreateOpportunityRequest {
                        opportunity: Some(pb::Opportunity {
                            customer_id: customer_id.to_owned(),
                            title: format!("Deal {}", rng.next(1_000_000)),
                            amount: amount(rng),
                            status_id: SHIPPED_STATUSES[rng.next(7) as usize].to_owned(),
                            lost_reason: String::new(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .expect("create");
        }
        1 => {
            let id = &ids[rng.next(ids.len() as u64) as usize];
            opportunities
                .change_opportunity_status(authed(
                    &admin,
                    pb::ChangeOpportunityStatusRequest {
                        opportunity_id: id.clone(),
                        status_id: SHIPPED_STATUSES[rng.next(7) as usize].to_owned(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("change status");
        }
        2 => {
            let id = &ids[rng.next(ids.len() as u64) as usize];
            opportunities
                .update_opportunity(authed(
                    &admin,
                    pb::UpdateOpportunityRequest {
                        opportunity: Some(pb::Opportunity {
                            id: id.clone(),
                            amount: amount(rng),
                            ..Default::default()
                        }),
                        update_mask: mask(&["amount"]),
                        ..Default::default()
                    },
                ))
                .await
                .expect("new amount");
        }
        _ => {
            let id = &ids[rng.next(ids.len() as u64) as usize];
            let (owner, _) = OWNERS[rng.next(OWNERS.len() as u64) as usize];
            opportunities
                .update_opportunity(authed(
                    &admin,
                    pb::UpdateOpportunityRequest {
                        opportunity: Some(pb::Opportunity {
                            id: id.clone(),
                            owner_id: owner.to_owned(),
                            ..Default::default()
                        }),
                        update_mask: mask(&["owner_id"]),
                        ..Default::default()
                    },
                ))
                .await
                .expect("hand over");
        }
    }
}

#[tokio::test]
async fn r14_pipeline_totals_are_exact_under_concurrent_writes_and_two_folders() {
    let mut world = World::new().await;
    let customer = world.customer(&admin_token(), "บริษัท ทดสอบ จำกัด").await;
    // Every owner has called once, so they can be handed opportunities.
    let mut ids = Vec::new();
    let mut rng = Lcg(14);
    for index in 0..40 {
        let opportunity = pb::Opportunity {
            customer_id: customer.id.clone(),
            title: format!("Opening {index}"),
            amount: amount(&mut rng),
            ..Default::default()
        };
        ids.push(create(&mut world, &owner_token(index), opportunity).await);
    }
    let suite = &world.suite;
    assert_totals_exact(&suite.db, "after the first creates").await;

    // Four callers write while two folders fold in small batches, and the summaries are
    // compared in between.
    let writers = (0..4u64).map(|writer| {
        let (customer_id, ids) = (customer.id.clone(), ids.clone());
        async move {
            let mut rng = Lcg(100 + writer);
            for _ in 0..40 {
                write(suite, &customer_id, &ids, &mut rng).await;
            }
        }
    });
    let writing = futures::future::join_all(writers);
    let folding = async {
        let fold = |batch| summary::fold(&suite.db, batch);
        let mut moved = 0;
        for round in 0..200 {
            let (a, b) = tokio::join!(fold(3), fold(5));
            moved += a.expect("fold") + b.expect("fold");
            if round % 20 == 0 {
                assert_totals_exact(&suite.db, "while writing and folding").await;
            }
            tokio::task::yield_now().await;
        }
        moved
    };
    let (_, moved) = tokio::join!(writing, folding);
    assert!(
        moved > 0,
        "the folders moved no delta: the test proves nothing"
    );
    assert_totals_exact(&suite.db, "after the writes").await;

    // Folded to the end: no delta is left, and the totals alone are still exact.
    fold_all(&suite.db).await;
    let left: i64 = sqlx::query_scalar("select count(*) from pipeline_deltas")
        .fetch_one(&suite.db)
        .await
        .expect("count deltas");
    assert_eq!(left, 0);
    assert_totals_exact(&suite.db, "with every delta folded").await;

    // And they are what a rebuild from the rows makes.
    let totals = || async {
        sqlx::query_as::<_, (String, uuid::Uuid, String, i64, String)>(
            "select owner_id, status_id, currency_code, count, amount::text from pipeline_totals
             where count <> 0 order by 1, 2, 3",
        )
        .fetch_all(&suite.db)
        .await
        .expect("totals")
    };
    let folded = totals().await;
    sqlx::query("select pipeline_totals_rebuild()")
        .execute(&suite.db)
        .await
        .expect("rebuild");
    let rebuilt = totals().await;
    let normalized = |rows: Vec<(String, uuid::Uuid, String, i64, String)>| -> Vec<_> {
        rows.into_iter()
            .map(|(owner, status, currency, count, amount)| {
                let amount: f64 = amount.parse().expect("numeric");
                (owner, status, currency, count, format!("{amount:.9}"))
            })
            .collect()
    };
    assert_eq!(normalized(folded), normalized(rebuilt));
}

#[tokio::test]
async fn r14_a_fold_waits_for_no_writer_and_two_folds_never_count_twice() {
    let mut world = World::new().await;
    // A write transaction that has added deltas and stays open: a fold neither waits for it
    // nor sees its deltas; once it commits they are folded exactly once.
    world.customer(&admin_token(), "Fold Co").await;
    let suite = &world.suite;
    let mut held = suite.db.begin().await.expect("begin");
    sqlx::query(
        "insert into pipeline_deltas (owner_id, status_id, currency_code, count, amount)
         values ('rep-held', $1, 'THB', 1, 10)",
    )
    .bind(uuid::Uuid::parse_str(SHIPPED_STATUSES[0]).expect("id"))
    .execute(&mut *held)
    .await
    .expect("held delta");
    let moved = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        summary::fold(&suite.db, summary::FOLD_BATCH),
    )
    .await
    .expect("the fold waited on an open write: it must not")
    .expect("fold");
    assert_eq!(moved, 0, "an uncommitted delta was folded");
    held.commit().await.expect("commit");
    let (a, b) = tokio::join!(
        summary::fold(&suite.db, summary::FOLD_BATCH),
        summary::fold(&suite.db, summary::FOLD_BATCH)
    );
    let moved = a.expect("fold") + b.expect("fold");
    // The suite's own background fold may have taken it first; never twice.
    let (count, amount): (i64, String) = sqlx::query_as(
        "select count, amount::text from pipeline_totals where owner_id = 'rep-held'",
    )
    .fetch_one(&suite.db)
    .await
    .expect("folded total");
    assert!(moved <= 1);
    assert_eq!((count, amount.parse::<f64>().expect("numeric")), (1, 10.0));
}

/// GetPipelineSummary as `token` sees it, answered from the totals (and so from the cache
/// when nothing changed), and the same summary aggregated from the opportunities themselves:
/// a customer filter, which the totals do not keep, over the one customer every opportunity
/// here has, so the same groups; no cache holds it.
async fn cached_and_fresh(
    suite: &TestSuite,
    token: &str,
    customer_id: &str,
) -> (
    pb::GetPipelineSummaryResponse,
    pb::GetPipelineSummaryResponse,
) {
    let mut opportunities = suite.opportunities().await;
    let cached = opportunities
        .get_pipeline_summary(authed(token, pb::GetPipelineSummaryRequest::default()))
        .await
        .expect("summary from the totals")
        .into_inner();
    let fresh = opportunities
        .get_pipeline_summary(authed(
            token,
            pb::GetPipelineSummaryRequest {
                customer_id: customer_id.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("summary from the rows")
        .into_inner();
    (cached, fresh)
}

/// The admin's and a manager's summaries are exactly what the rows say.
async fn assert_cache_exact(suite: &TestSuite, customer_id: &str, when: &str) {
    for token in [admin_token(), manager_token()] {
        let (cached, fresh) = cached_and_fresh(suite, &token, customer_id).await;
        assert_eq!(
            cached, fresh,
            "{when}: the summary is not what the rows say"
        );
        assert!(!cached.by_owner.is_empty(), "{when}: nothing summed");
    }
}

/// Waits until a summary's statement waits for a lock on `pipeline_totals`.
async fn wait_for_a_summary_waiting_on_the_totals(db: &PgPool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid
             where l.relation = 'pipeline_totals'::regclass and not l.granted
               and a.query like 'select g.grouping%'",
        )
        .fetch_one(db)
        .await
        .expect("locks");
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no summary read the totals: the write was answered from the cache"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn r14_a_cached_summary_is_answered_again_only_until_what_it_sums_changes() {
    let mut world = World::new().await;
    let customer = world.customer(&admin_token(), "Cache Co").await;
    // The manager's team (north) and everyone else's opportunities.
    let mut rng = Lcg(7);
    let mut ids = Vec::new();
    for index in 0..12 {
        let owner = if index % 3 == 0 {
            manager_token()
        } else {
            owner_token(index)
        };
        let opportunity = pb::Opportunity {
            customer_id: customer.id.clone(),
            title: format!("Cached {index}"),
            amount: amount(&mut rng),
            status_id: SHIPPED_STATUSES[index % 5].to_owned(),
            ..Default::default()
        };
        ids.push(create(&mut world, &owner, opportunity).await);
    }
    let suite = &world.suite;
    let mut opportunities = suite.opportunities().await;
    // Folded first, so that the background fold has nothing left to change.
    fold_all(&suite.db).await;
    assert_cache_exact(suite, &customer.id, "at first").await;
    let (before, _) = cached_and_fresh(suite, &admin_token(), &customer.id).await;

    // Nothing changed: the summary is answered without reading the totals, even while a
    // session holds them locked.
    let mut locked = suite.db.begin().await.expect("begin");
    sqlx::query("lock table pipeline_totals in access exclusive mode")
        .execute(&mut *locked)
        .await
        .expect("lock the totals");
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        opportunities.get_pipeline_summary(authed(
            &admin_token(),
            pb::GetPipelineSummaryRequest::default(),
        )),
    )
    .await
    .expect("the unchanged summary read the locked totals: it was not kept")
    .expect("summary")
    .into_inner();
    assert_eq!(again, before);

    // A write (a delta; the totals stay locked): the next summary reads them, so it waits.
    opportunities
        .change_opportunity_status(authed(
            &admin_token(),
            pb::ChangeOpportunityStatusRequest {
                opportunity_id: ids[0].clone(),
                status_id: SHIPPED_STATUSES[6].to_owned(),
                lost_reason: "Budget cut".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("change status");
    let waiting = tokio::spawn({
        let mut opportunities = suite.opportunities().await;
        async move {
            opportunities
                .get_pipeline_summary(authed(
                    &admin_token(),
                    pb::GetPipelineSummaryRequest::default(),
                ))
                .await
        }
    });
    wait_for_a_summary_waiting_on_the_totals(&suite.db).await;
    locked.rollback().await.expect("unlock");
    let after = waiting
        .await
        .expect("task")
        .expect("summary after the write")
        .into_inner();
    assert_ne!(after, before, "the write changed nothing it sums");
    assert_cache_exact(suite, &customer.id, "after a status change").await;

    // Every other kind of change to what a summary sums or shows.
    write(suite, &customer.id, &ids, &mut Lcg(3)).await;
    assert_cache_exact(suite, &customer.id, "after a write").await;
    while summary::fold(&suite.db, 2).await.expect("fold") > 0 {
        assert_cache_exact(suite, &customer.id, "while folding").await;
    }
    assert_cache_exact(suite, &customer.id, "after the fold").await;
    sqlx::query("select pipeline_totals_rebuild()")
        .execute(&suite.db)
        .await
        .expect("rebuild");
    assert_cache_exact(suite, &customer.id, "after a rebuild").await;
    for (change, sql) in [
        (
            "a status's probability",
            "update opportunity_statuses set probability = 35, updated_by = 'admin-1'
             where probability = 20",
        ),
        (
            "a status's name",
            "update opportunity_statuses set display_name = display_name || ' (new)'
             where position = 2",
        ),
        (
            "an owner's name",
            "update salespeople set display_name = 'Renamed' where id = 'rep-n2'",
        ),
        (
            "an owner's team (the manager now sees them)",
            "update salespeople set team = 'north' where id = 'rep-s1'",
        ),
    ] {
        let (before, _) = cached_and_fresh(suite, &admin_token(), &customer.id).await;
        let (team_before, _) = cached_and_fresh(suite, &manager_token(), &customer.id).await;
        let changed = sqlx::query(sql)
            .execute(&suite.db)
            .await
            .expect("change")
            .rows_affected();
        assert!(changed > 0, "{change}: the test changed nothing");
        assert_cache_exact(suite, &customer.id, &format!("after {change}")).await;
        let (after, _) = cached_and_fresh(suite, &admin_token(), &customer.id).await;
        let (team_after, _) = cached_and_fresh(suite, &manager_token(), &customer.id).await;
        assert!(
            after != before || team_after != team_before,
            "{change}: the summaries did not change, so the test proves nothing"
        );
    }
}

#[tokio::test]
async fn r14_the_fold_vacuums_the_deltas_it_deleted() {
    let world = World::new().await;
    let db = &world.suite.db;
    // As many deltas as writes leave before a vacuum is due (they cancel out: no total moves).
    sqlx::query(
        "insert into pipeline_deltas (owner_id, status_id, currency_code, count, amount)
         select 'rep-vacuum', $1, 'THB', case when i % 2 = 0 then 1 else -1 end,
                case when i % 2 = 0 then 1 else -1 end
         from generate_series(1, $2) i",
    )
    .bind(uuid::Uuid::parse_str(SHIPPED_STATUSES[0]).expect("id"))
    .bind(summary::VACUUM_AFTER as i64)
    .execute(db)
    .await
    .expect("deltas");
    // The suite's background fold moves them and then vacuums the table.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (left, vacuumed): (i64, bool) = sqlx::query_as(
            "select (select count(*) from pipeline_deltas),
                    (select last_vacuum is not null from pg_stat_user_tables
                     where relname = 'pipeline_deltas')",
        )
        .fetch_one(db)
        .await
        .expect("deltas and their table's vacuum");
        if left == 0 && vacuumed {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} deltas left, vacuumed: {vacuumed}: the fold did not vacuum what it deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
