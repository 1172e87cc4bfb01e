//! The event relay: publishes the opportunity change feed (the outbox that every write fills
//! in its own transaction) to NATS JetStream, for services that would rather consume a
//! stream than call WatchOpportunityEvents.
//!
//! - Order: events are read by their delivery position (`seq`, given by the opportunity
//!   service's `sequencer` once no older transaction can still commit), and published one
//!   batch at a time; the next batch starts
//!   only once JetStream acknowledged the previous one, so a subject's messages keep the
//!   order of the changes.
//! - At-least-once: the relay records the last acknowledged position in `event_relay_offsets` after
//!   each batch. After a crash it re-sends what it had published but not recorded; every
//!   message carries `Nats-Msg-Id` = the event id, so JetStream drops those duplicates
//!   within its duplicate window.
//! - Messages: subject `<prefix>.<TYPE>.<opportunity id>` (e.g.
//!   `salesopp.opportunity.events.STATUS_CHANGED.<uuid>`), payload the encoded
//!   `salesopp.opportunity.v1.OpportunityEvent` with its `cursor` set.

use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use salesopp_proto::opportunity::v1 as pb;
use sqlx::PgPool;

/// What one relay publishes where.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The name its progress is recorded under (one row of `event_relay_offsets`).
    pub name: String,
    /// The JetStream stream, created when missing.
    pub stream: String,
    /// The subject prefix; the stream takes `<prefix>.>`.
    pub subject_prefix: String,
    /// Events per batch.
    pub batch: i64,
    /// How long an idle relay waits before looking again.
    pub poll_interval: Duration,
    /// JetStream's de-duplication window: how long a re-sent event is recognised.
    pub duplicate_window: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "nats".into(),
            stream: "SALESOPP_OPPORTUNITY_EVENTS".into(),
            subject_prefix: "salesopp.opportunity.events".into(),
            batch: 500,
            poll_interval: Duration::from_millis(200),
            duplicate_window: Duration::from_secs(3600),
        }
    }
}

/// A relay bound to its database and JetStream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    config: RelayConfig,
}

fn event_type_name(event: &pb::OpportunityEvent) -> &'static str {
    match pb::OpportunityEventType::try_from(event.r#type) {
        Ok(pb::OpportunityEventType::Created) => "CREATED",
        Ok(pb::OpportunityEventType::Updated) => "UPDATED",
        _ => "STATUS_CHANGED",
    }
}

impl Relay {
    /// Connects the relay's stream (creating it when missing) and its offset row.
    pub async fn new(
        pool: PgPool,
        client: async_nats::Client,
        config: RelayConfig,
    ) -> anyhow::Result<Relay> {
        let jetstream = jetstream::new(client);
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot create or open the stream {}: {e}", config.stream)
            })?;
        sqlx::query(
            "insert into event_relay_offsets (relay_name) values ($1) on conflict do nothing",
        )
        .bind(&config.name)
        .execute(&pool)
        .await?;
        Ok(Relay {
            pool,
            jetstream,
            config,
        })
    }

    /// The id of the last event JetStream acknowledged.
    pub async fn offset(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "select last_event_id from event_relay_offsets where relay_name = $1",
        )
        .bind(&self.config.name)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Publishes the next batch; returns how many events it published.
    pub async fn relay_batch(&self) -> anyhow::Result<usize> {
        let after = self.offset().await?;
        let page = salesopp_outbox::read::read_after(&self.pool, after, self.config.batch).await?;
        let rows: Vec<(i64, &pb::OpportunityEvent)> = page
            .events
            .iter()
            .filter_map(|stored| stored.event.as_ref().map(|event| (stored.seq, event)))
            .collect();
        let last = page.through;
        if page.events.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(rows.len());
        for (id, event) in &rows {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
            headers.insert("Content-Type", "application/x-protobuf");
            headers.insert("Salesopp-Event-Type", event_type_name(event));
            let subject = format!(
                "{}.{}.{}",
                self.config.subject_prefix,
                event_type_name(event),
                event.opportunity_id
            );
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, event.encode_to_vec().into())
                .await
                .map_err(|e| anyhow::anyhow!("publish event {id}: {e}"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| anyhow::anyhow!("JetStream did not acknowledge: {e}"))?;
        }
        sqlx::query(
            "update event_relay_offsets set last_event_id = $2, update_time = now()
             where relay_name = $1 and last_event_id < $2",
        )
        .bind(&self.config.name)
        .bind(last)
        .execute(&self.pool)
        .await?;
        Ok(page.events.len())
    }

    /// Publishes until the outbox is drained; returns how many events it published.
    pub async fn catch_up(&self) -> anyhow::Result<usize> {
        let mut published = 0;
        loop {
            match self.relay_batch().await? {
                0 => return Ok(published),
                n => published += n,
            }
        }
    }

    /// Runs until `shutdown` resolves, retrying after failures with a growing pause.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        loop {
            let pause = match self.relay_batch().await {
                Ok(0) => {
                    failures = 0;
                    self.config.poll_interval
                }
                Ok(published) => {
                    failures = 0;
                    tracing::debug!(published, "events relayed");
                    Duration::ZERO
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "relay batch failed: retrying");
                    Duration::from_millis(200 * u64::from(failures.min(50)))
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
