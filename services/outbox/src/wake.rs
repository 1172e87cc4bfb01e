//! The wake-up call to the sequencer, sent after a write commits, never inside it.
//!
//! Why not `NOTIFY` in the writer's own transaction. Postgres serializes every committing
//! transaction that notifies: `PreCommit_Notify` takes one database-wide lock and holds it
//! until the commit record is flushed, so writers that notify commit one fsync at a time and
//! group commit cannot gather them. Measured here with pgbench, 16 clients, an insert and a
//! commit: 2,350-2,760 transactions/s alone, 890-960 with a `pg_notify` in the transaction
//! (the same `NOTIFY` after the commit: 1,990-2,120). A write instead calls
//! [`Wake::committed`] once it has committed; one task per process sends the `NOTIFY` on a
//! connection of its own, in a transaction that writes nothing, so nothing is flushed while
//! it holds the lock. Commits that arrive while one is on its way are folded into one more
//! (a single stored permit), so under load it costs one statement per round trip, not one
//! per write, and a writer never waits for it.
//!
//! A wake-up that is lost (the task's connection dropped, the process died between the
//! commit and the send) only delays placement until the sequencer's next poll
//! ([`crate::sequencer`] polls besides): placement needs no wake-up to be correct.

use std::sync::Arc;
use std::time::Duration;

use salesopp_kit::db::OwnConnection;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::sequencer::CHANNEL;

/// A handle on the process's wake-up task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Wake {
    pending: Arc<Notify>,
}

impl Wake {
    /// Starts sending wake-ups to the sequencer of `pool`'s database until the returned task
    /// is dropped or aborted.
    pub fn start(pool: PgPool) -> (Wake, tokio::task::JoinHandle<()>) {
        let pending = Arc::new(Notify::new());
        let task = tokio::spawn(run(pool, pending.clone()));
        (Wake { pending }, task)
    }

    /// Tells the sequencer that a transaction which appended events has committed.
    pub fn committed(&self) {
        self.pending.notify_one();
    }

    /// Awaits `write` and, if it succeeded (so it committed), wakes the sequencer.
    pub async fn after<T, E>(&self, write: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let written = write.await;
        if written.is_ok() {
            self.committed();
        }
        written
    }
}

async fn run(pool: PgPool, pending: Arc<Notify>) {
    let mut connection = OwnConnection::new(pool);
    loop {
        pending.notified().await;
        let conn = match connection.get().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "event wake-up: no connection, the sequencer polls");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(error) = sqlx::query!("select pg_notify($1, '')", CHANNEL)
            .execute(conn)
            .await
        {
            tracing::warn!(%error, "event wake-up failed: reconnecting");
            connection.reset();
        }
    }
}
