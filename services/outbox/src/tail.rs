//! The tail: one database reader per process that follows the feed's head and fans every
//! new page out, in memory, to all the streams open in the process.
//!
//! It wakes when the sequencer's commit notifies [`PLACED_CHANNEL`] (milliseconds after a
//! write commits) and polls slowly besides, in case a notification was lost with its
//! connection. A stream is never fed from memory alone: it first catches up from the
//! database after its own position, subscribing before its last catch-up read, so the pages
//! it then receives start no later than where its reading stopped (positions become visible
//! in increasing order). A stream that falls more than [`CAPACITY`] pages behind loses its
//! place in the fan-out and catches up from the database again at its own pace: a slow
//! consumer costs its own reads, never the process's memory.

use std::sync::Arc;
use std::time::Duration;

use salesopp_kit::db::OwnConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;

use crate::read::{self, Page, ReadError};
use crate::sequencer::PLACED_CHANNEL;

/// Pages kept for subscribers that are behind.
pub const CAPACITY: usize = 128;
/// Most events per page.
pub const PAGE: i64 = 200;
/// How often the tail looks without being woken.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// A handle on the process's tail; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tail {
    pages: broadcast::Sender<Arc<Page>>,
}

impl Tail {
    /// Starts following the feed of `pool` until the returned task is dropped or aborted.
    pub fn start(pool: PgPool) -> (Tail, tokio::task::JoinHandle<()>) {
        let (pages, _) = broadcast::channel(CAPACITY);
        let tail = Tail {
            pages: pages.clone(),
        };
        (tail, tokio::spawn(run(pool, pages)))
    }

    /// The pages published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Page>> {
        self.pages.subscribe()
    }
}

async fn run(pool: PgPool, pages: broadcast::Sender<Arc<Page>>) {
    let mut head = None;
    let mut listener: Option<PgListener> = None;
    // A connection of its own: a page must not wait for one behind the calls that share the
    // pool (under load each holds its connection for a whole transaction).
    let mut connection = OwnConnection::new(pool.clone());
    let mut failures: u32 = 0;
    loop {
        let stepped = match connection.get().await {
            Ok(conn) => step(conn, &pages, &mut head).await,
            Err(error) => Err(error),
        };
        match stepped {
            Ok(more) => {
                failures = 0;
                if more {
                    continue;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, failures, "event tail: retrying");
                listener = None;
                connection.reset();
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20)))).await;
                continue;
            }
        }
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        match listener.as_mut() {
            Some(connected) => {
                tokio::select! {
                    received = connected.recv() => if received.is_err() { listener = None },
                    _ = tokio::time::sleep(FALLBACK_POLL) => {}
                }
            }
            None => tokio::time::sleep(FALLBACK_POLL).await,
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(PLACED_CHANNEL).await.ok()?;
    Some(listener)
}

/// Reads and publishes the next page; whether another may follow at once.
async fn step(
    conn: &mut PgConnection,
    pages: &broadcast::Sender<Arc<Page>>,
    head: &mut Option<i64>,
) -> Result<bool, sqlx::Error> {
    // With no stream open there is nobody to read for: keep the head at the latest
    // position (a stream that opens catches up from the database by itself).
    let position = match *head {
        Some(position) if pages.receiver_count() > 0 => position,
        _ => {
            let latest = read::bounds(&mut *conn).await?.latest;
            *head = Some(latest);
            if pages.receiver_count() == 0 {
                return Ok(false);
            }
            latest
        }
    };
    match read::read_after(&mut *conn, position, PAGE).await {
        Ok(page) => {
            if page.events.is_empty() {
                return Ok(false);
            }
            *head = Some(page.through);
            let full = page.full;
            // No receiver left is not an error: the page is simply not needed.
            let _ = pages.send(Arc::new(page));
            Ok(full)
        }
        Err(ReadError::Expired { oldest, .. }) => {
            *head = Some(oldest);
            Ok(true)
        }
        Err(ReadError::Database(error)) => Err(error),
    }
}
