//! Salespeople are recorded from their tokens (R12): the first call a principal makes
//! records them, and later ones keep their name, team, roles and last call up to date, so
//! managers can find them by name; every write makes sure its actor's row exists, so every
//! recorded actor resolves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::identity::Principal;

/// Makes sure `principal` is recorded, in the caller's write transaction, so the rows that
/// name them (owners, actors) always resolve. It inserts only a missing row and never touches
/// an existing one: `ON CONFLICT DO NOTHING` takes no lock on the conflicting row (`DO UPDATE
/// ... WHERE` would lock it even when its WHERE is false), so one caller's concurrent writes
/// (an ERP's service account, an import) never queue on their own salesperson row. Names,
/// teams, roles and `last_seen_time` are kept up to date by [`Recorder`], outside writes.
///
/// A caller the auth layer has confirmed as recorded (`principal.recorded`) costs no
/// statement at all: their row exists and rows of salespeople are never deleted.
pub async fn record(tx: &mut PgConnection, principal: &Principal) -> Result<(), sqlx::Error> {
    if principal.recorded {
        return Ok(());
    }
    let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    sqlx::query!(
        "insert into salespeople (id, display_name, team, roles) values ($1, $2, $3, $4)
         on conflict (id) do nothing",
        principal.id,
        principal.display_name,
        principal.team,
        &roles as &[&str],
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Records `principal` as of now, in a statement of its own: their latest name, team and
/// roles, and `last_seen_time`.
async fn upsert(pool: &sqlx::PgPool, principal: &Principal) -> Result<(), sqlx::Error> {
    let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    sqlx::query!(
        "insert into salespeople (id, display_name, team, roles)
         values ($1, $2, $3, $4)
         on conflict (id) do update
             set display_name = excluded.display_name, team = excluded.team,
                 roles = excluded.roles, last_seen_time = now()",
        principal.id,
        principal.display_name,
        principal.team,
        &roles as &[&str],
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The team of a recorded salesperson; `None` when they have never called the suite.
pub async fn team_of(tx: &mut PgConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!("select team from salespeople where id = $1", id)
        .fetch_optional(tx)
        .await
}

/// The teams of the recorded salespeople among `ids` (R21: a batch reads its owners at
/// once); one never recorded is missing from the map.
pub async fn teams_of(
    tx: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query!("select id, team from salespeople where id = any($1)", ids)
        .fetch_all(tx)
        .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.team)).collect())
}

/// Records every principal on their first call, reads included (R12: "salespeople are
/// recorded from their token on first use"), again whenever their name, team or roles
/// change, and at most once per [`SEEN_REFRESH`] otherwise, so `last_seen_time` is the
/// last call to within that period. Remembers what it wrote, so a steady caller costs no
/// write, and writes outside any call's transaction.
#[derive(Debug, Clone)]
pub struct Recorder {
    pool: sqlx::PgPool,
    seen: Arc<Mutex<HashMap<String, (Principal, Instant)>>>,
}

/// How stale `last_seen_time` may get for a caller who keeps calling.
pub const SEEN_REFRESH: Duration = Duration::from_secs(15 * 60);

/// Most principals remembered; past it the memory starts over (a write each, once).
const MAX_REMEMBERED: usize = 100_000;

impl Recorder {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            seen: Default::default(),
        }
    }

    /// Records `principal` when needed; whether their row is now known to exist.
    pub async fn remember(&self, principal: &Principal) -> bool {
        let known = self
            .seen
            .lock()
            .map(|seen| {
                seen.get(&principal.id).is_some_and(|(recorded, when)| {
                    recorded == principal && when.elapsed() < SEEN_REFRESH
                })
            })
            .unwrap_or(false);
        if known {
            return true;
        }
        match upsert(&self.pool, principal).await {
            Ok(()) => {
                if let Ok(mut seen) = self.seen.lock() {
                    if seen.len() >= MAX_REMEMBERED {
                        seen.clear();
                    }
                    seen.insert(principal.id.clone(), (principal.clone(), Instant::now()));
                }
                true
            }
            // The call itself will meet the same database problem and answer for it.
            Err(error) => {
                tracing::warn!(%error, "could not record the caller");
                false
            }
        }
    }
}
