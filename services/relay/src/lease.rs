//! The relay's lease: one row per relay name in `event_relay_leases`, so that one replica
//! publishes and the others stand by.
//!
//! - Taking and renewing are one statement: the row is claimed when it is free (expired by
//!   Postgres' clock, the one clock every replica shares) or already ours, and its expiry
//!   moves to `now() + ttl`. A standby retries every `standby_poll`; a killed holder's lease
//!   runs out after at most `ttl`, so a standby takes over within `ttl + standby_poll`.
//! - The holder believes its lease only until `ttl - margin` after it *sent* the renewal
//!   (its own monotonic clock), so it stops publishing before Postgres can hand the lease
//!   to anyone else, even when renewals fail because the database is unreachable.
//! - Fencing: progress is recorded by [`Lease::record`], whose statement checks (and
//!   share-locks) the lease row, so a relay that lost its lease cannot record anything.
//! - Release at shutdown expires the row at once: a standby takes over at its next poll.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

/// How the lease is held.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// How long a taken or renewed lease lasts without renewal.
    pub ttl: Duration,
    /// How often the holder renews it.
    pub renew_interval: Duration,
    /// How often a standby tries to take it.
    pub standby_poll: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(8),
            renew_interval: Duration::from_secs(2),
            standby_poll: Duration::from_secs(1),
        }
    }
}

impl LeaseConfig {
    /// How long before the database's expiry the holder stops trusting its lease.
    fn margin(&self) -> Duration {
        (self.ttl / 4).min(Duration::from_secs(1))
    }
}

/// One process's claim on a relay name.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: PgPool,
    relay_name: String,
    /// This process's id in the lease row.
    pub holder: Uuid,
    holder_name: String,
    config: LeaseConfig,
}

impl Lease {
    pub fn new(pool: PgPool, relay_name: &str, config: LeaseConfig) -> Lease {
        let holder_name = std::env::var("HOSTNAME").unwrap_or_default();
        Lease {
            pool,
            relay_name: relay_name.to_owned(),
            holder: Uuid::new_v4(),
            holder_name,
            config,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Takes the lease when it is free, or renews it when it is ours. `Some(until)`: held,
    /// trusted until that instant; `None`: another process holds it.
    pub async fn acquire(&self) -> Result<Option<Instant>, sqlx::Error> {
        let sent = Instant::now();
        let epoch = sqlx::query_scalar!(
            "insert into event_relay_leases as l
                 (relay_name, holder, holder_name, expire_time)
             values ($1, $2, $3, now() + make_interval(secs => $4))
             on conflict (relay_name) do update
             set holder = excluded.holder,
                 holder_name = excluded.holder_name,
                 epoch = case when l.holder = excluded.holder then l.epoch else l.epoch + 1 end,
                 acquire_time = case when l.holder = excluded.holder then l.acquire_time
                                     else now() end,
                 renew_time = now(),
                 expire_time = excluded.expire_time
             where l.holder = excluded.holder or l.expire_time <= now()
             returning epoch",
            &self.relay_name,
            self.holder,
            &self.holder_name,
            self.config.ttl.as_secs_f64()
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(epoch.map(|_| sent + self.config.ttl.saturating_sub(self.config.margin())))
    }

    /// Gives the lease up (when ours), so a standby takes it at its next poll.
    pub async fn release(&self) -> Result<bool, sqlx::Error> {
        let released = sqlx::query!(
            "update event_relay_leases set expire_time = now() - interval '1 millisecond'
             where relay_name = $1 and holder = $2 and expire_time > now()",
            &self.relay_name,
            self.holder
        )
        .execute(&self.pool)
        .await?;
        Ok(released.rows_affected() == 1)
    }

    /// Records that every event up to position `through` is published, when (and only
    /// when) this process still holds the lease; `false` when it does not.
    pub async fn record(&self, through: i64) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar!(
            r#"with lease as (
                 select 1 from event_relay_leases
                 where relay_name = $1 and holder = $2 and expire_time > now()
                 for share),
             moved as (
                 update event_relay_offsets
                 set last_event_id = greatest(last_event_id, $3), update_time = now()
                 where relay_name = $1 and exists (select 1 from lease)
                 returning 1)
             select exists (select 1 from lease) and exists (select 1 from moved) as "recorded!""#,
            &self.relay_name,
            self.holder,
            through
        )
        .fetch_one(&self.pool)
        .await
    }
}
