//! Salespeople are recorded from their tokens (R12): the first write a principal makes
//! records them, and every later one keeps their name, team and roles up to date, so
//! managers can find them by name and every recorded actor resolves.

use sqlx::PgConnection;

use crate::auth::Principal;

/// Records `principal` in the caller's transaction. Writes only when something changed (or
/// once an hour, to keep `last_seen_time` useful), so it is cheap on every write.
pub async fn record(tx: &mut PgConnection, principal: &Principal) -> Result<(), sqlx::Error> {
    let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    sqlx::query(
        "insert into salespeople (id, display_name, team, roles)
         values ($1, $2, $3, $4)
         on conflict (id) do update
             set display_name = excluded.display_name, team = excluded.team,
                 roles = excluded.roles, last_seen_time = now()
             where (salespeople.display_name, salespeople.team, salespeople.roles)
                       is distinct from (excluded.display_name, excluded.team, excluded.roles)
                or salespeople.last_seen_time < now() - interval '1 hour'",
    )
    .bind(&principal.id)
    .bind(&principal.display_name)
    .bind(&principal.team)
    .bind(&roles)
    .execute(tx)
    .await?;
    Ok(())
}

/// The team of a recorded salesperson; `None` when they have never called the suite.
pub async fn team_of(tx: &mut PgConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select team from salespeople where id = $1")
        .bind(id)
        .fetch_optional(tx)
        .await
}

/// Records every principal on their first call, reads included (R12: "salespeople are
/// recorded from their token on first use"), and again whenever their name, team or roles
/// change. Remembers what it wrote, so a steady caller costs no write.
#[derive(Debug, Clone)]
pub struct Recorder {
    pool: sqlx::PgPool,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Principal>>>,
}

/// Most principals remembered; past it the memory starts over (a write each, once).
const MAX_REMEMBERED: usize = 100_000;

impl Recorder {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            seen: Default::default(),
        }
    }

    pub async fn remember(&self, principal: &Principal) {
        let known = self
            .seen
            .lock()
            .map(|seen| seen.get(&principal.id) == Some(principal))
            .unwrap_or(false);
        if known {
            return;
        }
        let written = match self.pool.acquire().await {
            Ok(mut connection) => record(&mut connection, principal).await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => {
                if let Ok(mut seen) = self.seen.lock() {
                    if seen.len() >= MAX_REMEMBERED {
                        seen.clear();
                    }
                    seen.insert(principal.id.clone(), principal.clone());
                }
            }
            // The call itself will meet the same database problem and answer for it.
            Err(error) => tracing::warn!(%error, "could not record the caller"),
        }
    }
}
