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
