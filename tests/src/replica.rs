//! A primary [`PgCluster`] and its streaming hot standby, for the tests of
//! `DATABASE_READ_URL`: a test database made and migrated on the primary and waited for on
//! the standby; replay paused and resumed (`pg_wal_replay_pause`), so that what the replica
//! has not applied is known exactly, without timing; and a wait until the standby has
//! applied everything the primary had committed.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

use crate::TestDatabase;
use crate::cluster::PgCluster;

/// The bound of every wait here: it only guards against a hang.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// A primary and a hot standby streaming from it.
#[derive(Debug)]
pub struct Replicated {
    // Dropped in this order: the standby stops before its primary.
    pub standby: PgCluster,
    pub primary: PgCluster,
}

impl Replicated {
    /// Starts a primary and a standby of it, replaying.
    pub async fn start() -> Replicated {
        let primary = PgCluster::start_primary().await;
        // The marks of `until_replayed`, in the primary's `postgres` database: outside the
        // suite's schema, replicated like everything else.
        let mut connection = connect(primary.options()).await;
        sqlx::query("create table replication_marks (id bigint generated always as identity)")
            .execute(&mut connection)
            .await
            .expect("create replication_marks");
        let standby = primary.standby().await;
        Replicated { standby, primary }
    }

    /// A database with the suite's schema, made and migrated on the primary, once the
    /// standby has it too.
    pub async fn database(&self) -> TestDatabase {
        let database = TestDatabase::create_in(self.primary.options()).await;
        self.until_replayed().await;
        database
    }

    /// The standby's connect options for `database` (what `DATABASE_READ_URL` names).
    pub fn read_options(&self, database: &TestDatabase) -> PgConnectOptions {
        self.standby.options().database(&database.name)
    }

    /// The standby's URL of `database`.
    pub fn read_url(&self, database: &TestDatabase) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.standby.port(),
            database.name
        )
    }

    /// The primary's URL of `database`.
    pub fn primary_url(&self, database: &TestDatabase) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.primary.port(),
            database.name
        )
    }

    /// Stops the standby's replay: it keeps receiving WAL and answering queries, but what
    /// commits on the primary from now on is not visible there until [`Self::resume_replay`].
    /// Once the pause is requested, replay checks it before every record it applies.
    pub async fn pause_replay(&self) {
        let mut standby = connect(self.standby.options()).await;
        sqlx::query("select pg_wal_replay_pause()")
            .execute(&mut standby)
            .await
            .expect("pg_wal_replay_pause");
        let paused: bool = sqlx::query_scalar("select pg_is_wal_replay_paused()")
            .fetch_one(&mut standby)
            .await
            .expect("pg_is_wal_replay_paused");
        assert!(paused, "replay did not take the pause");
    }

    /// Lets the standby's replay go on.
    pub async fn resume_replay(&self) {
        let mut standby = connect(self.standby.options()).await;
        sqlx::query("select pg_wal_replay_resume()")
            .execute(&mut standby)
            .await
            .expect("pg_wal_replay_resume");
    }

    /// Waits until the standby has applied everything the primary had committed when this
    /// was called: a mark committed now on the primary is visible on the standby, and WAL
    /// is applied in order. (Replay must not be paused.)
    pub async fn until_replayed(&self) {
        let mut primary = connect(self.primary.options()).await;
        let mark: i64 =
            sqlx::query_scalar("insert into replication_marks default values returning id")
                .fetch_one(&mut primary)
                .await
                .expect("commit a replication mark");
        let mut standby = connect(self.standby.options()).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let replayed: bool =
                sqlx::query_scalar("select exists (select from replication_marks where id = $1)")
                    .bind(mark)
                    .fetch_one(&mut standby)
                    .await
                    .expect("read replication_marks on the standby");
            if replayed {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the standby never replayed mark {mark}: see {}",
                self.standby.log_file().display()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn connect(options: PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(&options)
        .await
        .expect("connect to a test cluster")
}
