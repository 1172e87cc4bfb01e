//! Waiting for a state of the test's database (or of anything a test asks, [`until`]):
//! polled, with a generous bound that only guards against a hang (a loaded machine never fails a test by being slow).

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;

/// The bound of every wait here.
const PATIENCE: Duration = Duration::from_secs(30);
/// How often the database is asked again.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `check()` holds; `what` names the state that never came.
pub async fn until<Check, Holds>(what: &str, mut check: Check)
where
    Check: FnMut() -> Holds,
    Holds: Future<Output = bool>,
{
    until_some(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// Waits until `check()` finds something, and returns it; `what` names what never came.
pub async fn until_some<T, Check, Found>(what: &str, mut check: Check) -> T
where
    Check: FnMut() -> Found,
    Found: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The position of the newest placed event, once every committed event is placed.
pub async fn placed_head(db: &PgPool) -> i64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (unplaced, head): (i64, Option<i64>) = sqlx::query_as(
            "select count(*) filter (where seq is null), max(seq) from opportunity_events",
        )
        .fetch_one(db)
        .await
        .expect("read the feed's head");
        if unplaced == 0 {
            return head.unwrap_or(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events stay unplaced"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until a session of the test's database waits for a lock (`pg_stat_activity`), or
/// `done()` says the work that would wait has finished; `what` says which wait, when it
/// never comes.
pub async fn until_a_lock_wait(db: &PgPool, what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 || done() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(POLL).await;
    }
}
