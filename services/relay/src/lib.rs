//! The event relay: publishes the opportunity change feed (the outbox every write fills in
//! its own transaction, placed in delivery order by the outbox's sequencer) to NATS
//! JetStream, for services that would rather consume a stream than call
//! WatchOpportunityEvents. Messages are described in [`message`].
//!
//! - **One active relay across replicas.** A lease in Postgres ([`lease`]): the replica
//!   holding it publishes, the others stand by and take over within `ttl + standby_poll`
//!   (8 s + 1 s by default) of the holder's death, at once when it released the lease at
//!   SIGTERM. Progress is recorded only while the lease is held (fencing).
//! - **Order that no failure can break: one message at a time.** Each event is published
//!   only once JetStream acknowledged the one before it, and a failed publish is retried
//!   (the same event, with the same `Nats-Msg-Id`) before anything after it is sent. So
//!   when event n is stored, every event before n is already stored: a retry can only
//!   re-send n, which JetStream drops as a duplicate if the lost attempt was stored after
//!   all. The same holds across processes: every relay, a stale one that has not noticed
//!   its lease is gone included, sends the events in the same position order under the
//!   same rule, so anything it stores lands after everything before it; at worst it is a
//!   duplicate of what the active one sent. Chosen over pipelining with JetStream's
//!   `Nats-Expected-Last-Sequence`: that needs the relay to learn the stream's last
//!   sequence again after every failure and to tell its own earlier attempt from another
//!   writer's, for a throughput (thousands of events a second, one round trip each) this
//!   feed does not need.
//! - **At-least-once, de-duplicated.** Progress (`event_relay_offsets`) is recorded after
//!   each page; after a crash the relay resumes after the stream's last message when that is
//!   an event further on (so nothing published is sent again, even after JetStream's
//!   duplicate window), else after the recorded position, and JetStream drops what it
//!   re-sends within its duplicate window by `Nats-Msg-Id`.
//! - **Waits for NATS.** The client connects in the background and reconnects forever; the
//!   stream is created or updated (subjects, limits) each time the relay becomes active,
//!   retried until NATS answers. While NATS is away the same event is retried with a growing
//!   pause (at most 5 s).
//! - **Never halts on a bad row.** An event whose payload does not decode is logged,
//!   counted (`salesopp_event_dead_letters_total`) and kept in `event_dead_letters` with its
//!   position, id, payload and error; the relay moves on. Events deleted by retention before
//!   they were relayed (a relay stopped for longer than `SALESOPP_EVENT_RETENTION`) are
//!   skipped with an error in the log: they cannot be published any more.
//! - **Wakes at once.** The sequencer's NOTIFY on placing events wakes the relay; it polls
//!   slowly besides.

pub mod health;
pub mod lease;
pub mod message;

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use prost::Message as _;
use salesopp_outbox::read::{self, ReadError};
use salesopp_outbox::sequencer::PLACED_CHANNEL;
use salesopp_outbox::{Page, StoredEvent};
use salesopp_proto::opportunity::v1 as pb;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::Instant;

pub use lease::{Lease, LeaseConfig};

/// The JetStream stream's limits, applied every time the relay becomes active.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// How long a message is kept (zero: no limit).
    pub max_age: Duration,
    /// How many bytes the stream keeps, oldest dropped first (-1: no limit).
    pub max_bytes: i64,
    /// How long JetStream recognises a re-sent event by its `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Copies of the stream in a NATS cluster.
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(3600),
            replicas: 1,
        }
    }
}

/// What one relay publishes where.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The name its lease and progress are recorded under.
    pub name: String,
    /// The JetStream stream, created or updated when the relay becomes active.
    pub stream: String,
    /// The subject prefix: messages go to `<prefix>.<type>`, the stream takes `<prefix>.>`.
    pub subject_prefix: String,
    /// Events read per page (progress is recorded after each).
    pub batch: i64,
    /// How long an idle relay waits for a wake-up before looking again.
    pub poll_interval: Duration,
    /// How long a publish waits for JetStream's acknowledgement.
    pub publish_timeout: Duration,
    pub limits: StreamLimits,
    pub lease: LeaseConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "nats".into(),
            stream: "SALESOPP_OPPORTUNITY_EVENTS".into(),
            subject_prefix: "salesopp.opportunity".into(),
            batch: 100,
            poll_interval: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(5),
            limits: StreamLimits::default(),
            lease: LeaseConfig::default(),
        }
    }
}

/// What a relay process is doing, for its health service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStatus {
    /// It holds the lease (and publishes).
    pub active: bool,
    /// Its last lease query reached the database.
    pub database_reachable: bool,
    /// SIGTERM (or the caller's shutdown) arrived.
    pub stopping: bool,
}

impl RelayStatus {
    /// Healthy: the database answers (active or standing by), and not stopping.
    pub fn healthy(&self) -> bool {
        self.database_reachable && !self.stopping
    }
}

/// Connects to NATS in the background (the relay starts while NATS is down) and
/// reconnects forever, logging each change of connection.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("salesopp-relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS: reconnecting")
                }
                other => tracing::info!(event = %other, "NATS client event"),
            }
        })
        .connect(url)
        .await
}

/// A relay bound to its database and JetStream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    config: RelayConfig,
    lease: Lease,
    status: watch::Sender<RelayStatus>,
}

/// The signals a publishing term watches: the lease's trusted end, and shutdown.
struct Signals {
    lease: watch::Receiver<Option<Instant>>,
    stop: watch::Receiver<bool>,
}

impl Signals {
    fn may_publish(&self) -> bool {
        !*self.stop.borrow()
            && self
                .lease
                .borrow()
                .is_some_and(|until| Instant::now() < until)
    }

    /// Sleeps `pause`, or less when shutdown or a change of the lease comes first.
    async fn pause(&mut self, pause: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.stop.changed() => {}
            _ = self.lease.changed() => {}
        }
    }
}

/// How a page ended.
struct PageOutcome {
    /// The position handled through (published or set aside).
    through: i64,
    /// Events handled.
    handled: usize,
    /// Whether publishing stopped early (shutdown or the lease ran out).
    interrupted: bool,
}

impl Relay {
    /// A relay on `pool` publishing through `client` (see [`connect`]). Nothing is asked of
    /// NATS or the database until it runs.
    pub fn new(pool: PgPool, client: async_nats::Client, config: RelayConfig) -> Relay {
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(config.publish_timeout);
        let lease = Lease::new(pool.clone(), &config.name, config.lease);
        Relay {
            pool,
            jetstream,
            config,
            lease,
            status: watch::Sender::new(RelayStatus::default()),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// This process's lease (its holder id is in `event_relay_leases` while it is active).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Follows what the relay is doing (for health).
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    /// The position of the last event recorded as published (0 when none).
    pub async fn offset(&self) -> anyhow::Result<i64> {
        let offset = sqlx::query_scalar!(
            "select last_event_id from event_relay_offsets where relay_name = $1",
            &self.config.name
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(offset.unwrap_or(0))
    }

    /// Runs until `shutdown` resolves: stands by until it holds the lease, publishes while
    /// it does, and at shutdown stops publishing, records its progress and releases the
    /// lease. Failures (database, NATS) are logged and retried, never fatal.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (lease_tx, lease_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let publisher = async {
            self.publish_while_held(Signals {
                lease: lease_rx,
                stop: stop_rx,
            })
            .await;
            let _ = done_tx.send(true);
        };
        let stopper = async {
            tokio::select! {
                _ = shutdown => {
                    tracing::info!("relay stopping: publishing stops, the lease is released");
                    self.status.send_modify(|status| status.stopping = true);
                    let _ = stop_tx.send(true);
                }
                _ = async { let mut done = done_rx.clone(); let _ = done.wait_for(|done| *done).await; } => {}
            }
        };
        tokio::join!(
            publisher,
            self.keep_lease(lease_tx, done_rx.clone()),
            stopper
        );
    }

    /// Takes, renews and finally releases the lease, and keeps the lag metrics current.
    async fn keep_lease(
        &self,
        lease: watch::Sender<Option<Instant>>,
        mut done: watch::Receiver<bool>,
    ) {
        let config = *self.lease.config();
        let query_timeout = config.renew_interval.max(Duration::from_secs(1));
        let mut held = false;
        while !*done.borrow() {
            held = self
                .renew(query_timeout, &lease, held)
                .await
                .unwrap_or(held);
            if let Err(error) = self.update_lag().await {
                tracing::debug!(%error, "relay lag not measured");
            }
            let pause = if held {
                config.renew_interval
            } else {
                config.standby_poll
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = done.changed() => {}
            }
        }
        lease.send_replace(None);
        match self.lease.release().await {
            Ok(true) => tracing::info!("relay lease released"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "relay lease not released: it expires by itself"),
        }
        self.status.send_modify(|status| status.active = false);
    }

    /// One try to take or renew the lease: whether it is held now (`None`: the database did
    /// not say, and a lease held runs out by itself, so publishing stops at its end).
    async fn renew(
        &self,
        query_timeout: Duration,
        lease: &watch::Sender<Option<Instant>>,
        held: bool,
    ) -> Option<bool> {
        match tokio::time::timeout(query_timeout, self.lease.acquire()).await {
            Ok(Ok(Some(until))) => {
                if !held {
                    tracing::info!(holder = %self.lease.holder, "relay lease taken: publishing");
                }
                lease.send_replace(Some(until));
                self.status.send_modify(|status| {
                    status.active = true;
                    status.database_reachable = true;
                });
                Some(true)
            }
            Ok(Ok(None)) => {
                if held {
                    tracing::warn!("relay lease held by another process: standing by");
                }
                lease.send_replace(None);
                self.status.send_modify(|status| {
                    status.active = false;
                    status.database_reachable = true;
                });
                Some(false)
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "relay lease: database unreachable");
                self.status
                    .send_modify(|status| status.database_reachable = false);
                None
            }
            Err(_) => {
                tracing::warn!("relay lease: the database did not answer in time");
                self.status
                    .send_modify(|status| status.database_reachable = false);
                None
            }
        }
    }

    /// Publishes during each term of holding the lease, until shutdown.
    async fn publish_while_held(&self, mut signals: Signals) {
        let mut failures: u32 = 0;
        loop {
            while !signals.may_publish() {
                if *signals.stop.borrow() {
                    return;
                }
                signals.pause(Duration::from_secs(60)).await;
            }
            match self.term(&mut signals).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "relay: retrying");
                    signals.pause(backoff(failures)).await;
                }
            }
        }
    }

    /// One term of holding the lease: prepares the stream, then publishes page after page
    /// until the lease runs out or shutdown.
    async fn term(&self, signals: &mut Signals) -> anyhow::Result<()> {
        self.ensure_stream(signals).await?;
        if !signals.may_publish() {
            return Ok(());
        }
        sqlx::query!(
            "insert into event_relay_offsets (relay_name) values ($1) on conflict do nothing",
            &self.config.name
        )
        .execute(&self.pool)
        .await?;
        let recorded = self.offset().await?;
        let mut position = recorded;
        if let Some(tail) = self.stream_tail_position().await
            && tail > position
        {
            tracing::info!(
                recorded,
                tail,
                "the stream holds events past the recorded position: resuming after them"
            );
            position = tail;
        }
        tracing::info!(after = position, "relaying events to NATS JetStream");
        let mut listener = self.listen().await;
        loop {
            let page = match read::read_after(&self.pool, position, self.config.batch).await {
                Ok(page) => page,
                Err(ReadError::Expired { after, oldest }) => {
                    tracing::error!(
                        after,
                        oldest,
                        "events were deleted by retention before the relay published them: \
                         they are skipped, resuming at the oldest kept event"
                    );
                    position = oldest;
                    continue;
                }
                Err(ReadError::Database(error)) => return Err(error.into()),
            };
            let outcome = self.relay_page(&page, position, signals).await?;
            position = outcome.through;
            if outcome.handled > 0 && !self.lease.record(position).await? {
                tracing::warn!(
                    position,
                    "relay lease lost: progress not recorded, standing by"
                );
                return Ok(());
            }
            if outcome.interrupted {
                return Ok(());
            }
            if !page.full {
                if !signals.may_publish() {
                    return Ok(());
                }
                self.idle(&mut listener, signals).await;
            }
        }
    }

    /// Publishes (or sets aside) the events of `page` in order, each only once the one
    /// before it is acknowledged.
    async fn relay_page(
        &self,
        page: &Page,
        after: i64,
        signals: &mut Signals,
    ) -> anyhow::Result<PageOutcome> {
        let metrics = &salesopp_kit::metrics::metrics().events;
        let mut outcome = PageOutcome {
            through: after,
            handled: 0,
            interrupted: false,
        };
        for stored in &page.events {
            match &stored.event {
                Some(event) => {
                    let mut failures: u32 = 0;
                    loop {
                        if !signals.may_publish() {
                            outcome.interrupted = true;
                            return Ok(outcome);
                        }
                        match self.publish(stored, event).await {
                            Ok(ack) => {
                                if ack.duplicate {
                                    tracing::debug!(seq = stored.seq, "already in the stream");
                                }
                                metrics.relayed.inc();
                                break;
                            }
                            Err(error) => {
                                failures = failures.saturating_add(1);
                                tracing::warn!(
                                    seq = stored.seq,
                                    %error,
                                    failures,
                                    "publish failed: retrying the same event"
                                );
                                if error.kind() == PublishErrorKind::StreamNotFound {
                                    self.ensure_stream(signals).await?;
                                }
                                signals.pause(backoff(failures)).await;
                            }
                        }
                    }
                }
                None => {
                    if !signals.may_publish() {
                        outcome.interrupted = true;
                        return Ok(outcome);
                    }
                    self.dead_letter(stored).await?;
                }
            }
            outcome.through = stored.seq;
            outcome.handled += 1;
        }
        Ok(outcome)
    }

    /// Publishes one event and waits for JetStream's acknowledgement.
    async fn publish(
        &self,
        stored: &StoredEvent,
        event: &pb::OpportunityEvent,
    ) -> Result<PublishAck, async_nats::jetstream::context::PublishError> {
        let ack = self
            .jetstream
            .send_publish(
                message::subject(&self.config.subject_prefix, stored),
                PublishMessage::build()
                    .payload(message::payload(event).into())
                    .headers(message::headers(stored, event)),
            )
            .await?;
        ack.await
    }

    /// Sets an undecodable event aside in `event_dead_letters` (once) and counts it.
    async fn dead_letter(&self, stored: &StoredEvent) -> anyhow::Result<()> {
        let error = match pb::OpportunityEvent::decode(stored.payload.as_slice()) {
            Err(error) => error.to_string(),
            Ok(_) => "the payload did not decode when read".to_owned(),
        };
        let inserted = sqlx::query!(
            "insert into event_dead_letters
                 (relay_name, seq, event_id, event_type, opportunity_id, payload, error)
             select $1, e.seq, e.event_id, e.type, e.opportunity_id, e.payload, $3
             from opportunity_events e where e.seq = $2
             on conflict do nothing",
            &self.config.name,
            stored.seq,
            &error
        )
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            salesopp_kit::metrics::metrics().events.dead_letters.inc();
            tracing::error!(
                seq = stored.seq,
                opportunity_id = %stored.opportunity_id,
                %error,
                "an event does not decode: set aside in event_dead_letters, relaying the next"
            );
        }
        Ok(())
    }

    /// Creates the stream, or updates its subjects and limits, retrying until NATS answers
    /// (or the lease runs out, or shutdown).
    async fn ensure_stream(&self, signals: &mut Signals) -> anyhow::Result<()> {
        let limits = self.config.limits;
        let config = jetstream::stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            max_age: limits.max_age,
            max_bytes: limits.max_bytes,
            duplicate_window: limits.duplicate_window,
            num_replicas: limits.replicas,
            ..Default::default()
        };
        let mut failures: u32 = 0;
        while signals.may_publish() {
            match self.jetstream.create_or_update_stream(config.clone()).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        stream = %self.config.stream,
                        %error,
                        failures,
                        "cannot create or update the stream: retrying"
                    );
                    signals.pause(backoff(failures)).await;
                }
            }
        }
        Ok(())
    }

    /// The position of the event the stream's last message carries, when that message is
    /// still there and is one of this database's events.
    async fn stream_tail_position(&self) -> Option<i64> {
        let mut stream = self.jetstream.get_stream(&self.config.stream).await.ok()?;
        let last = stream.info().await.ok()?.state.last_sequence;
        if last == 0 {
            return None;
        }
        let message = stream.get_raw_message(last).await.ok()?;
        let id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)?
            .as_str()
            .parse::<uuid::Uuid>()
            .ok()?;
        sqlx::query_scalar!("select seq from opportunity_events where event_id = $1", id)
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten()
            .flatten()
    }

    /// A listener woken when the sequencer places events; `None` (polling only) when it
    /// cannot be had now.
    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(PLACED_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Waits for new events: a wake-up, the poll interval, shutdown or a lease change.
    async fn idle(&self, listener: &mut Option<PgListener>, signals: &mut Signals) {
        let poll = self.config.poll_interval;
        let lost = match listener.as_mut() {
            Some(active) => tokio::select! {
                notification = active.recv() => notification.is_err(),
                _ = signals.pause(poll) => false,
            },
            None => {
                signals.pause(poll).await;
                true
            }
        };
        if lost {
            *listener = self.listen().await;
        }
    }

    /// Sets the lag gauges from the recorded position: events placed after it (counted up
    /// to 100,000) and the age of the oldest of them.
    async fn update_lag(&self) -> Result<(), sqlx::Error> {
        let lag = sqlx::query!(
            r#"select count(*) as "behind!", extract(epoch from now() - min(e.occur_time))::float8 as age
             from (select e.occur_time
                   from opportunity_events e
                   where e.seq > coalesce((select last_event_id from event_relay_offsets
                                           where relay_name = $1), 0)
                   order by e.seq limit 100000) e"#,
            &self.config.name
        )
        .fetch_one(&self.pool)
        .await?;
        let (behind, age) = (lag.behind, lag.age);
        let metrics = &salesopp_kit::metrics::metrics().events;
        metrics.relay_lag_events.set(behind);
        metrics.relay_lag_seconds.set(age.unwrap_or(0.0).max(0.0));
        Ok(())
    }

    /// Takes the lease and publishes until every placed event is published (for tests and
    /// one-off runs); fails when another process holds the lease.
    pub async fn catch_up(&self) -> anyhow::Result<usize> {
        let until = self
            .lease
            .acquire()
            .await?
            .ok_or_else(|| anyhow::anyhow!("another relay holds the lease"))?;
        let (_lease_tx, lease) = watch::channel(Some(until));
        let (_stop_tx, stop) = watch::channel(false);
        let mut signals = Signals { lease, stop };
        self.ensure_stream(&mut signals).await?;
        sqlx::query!(
            "insert into event_relay_offsets (relay_name) values ($1) on conflict do nothing",
            &self.config.name
        )
        .execute(&self.pool)
        .await?;
        let mut position = self.offset().await?;
        let mut handled = 0;
        loop {
            let page = read::read_after(&self.pool, position, self.config.batch).await?;
            let outcome = self.relay_page(&page, position, &mut signals).await?;
            anyhow::ensure!(!outcome.interrupted, "the lease ran out");
            if outcome.handled == 0 {
                return Ok(handled);
            }
            handled += outcome.handled;
            position = outcome.through;
            anyhow::ensure!(self.lease.record(position).await?, "the lease was lost");
        }
    }
}

/// The pause after `failures` failures in a row: 200 ms more each time, at most 5 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200 * u64::from(failures.min(25)))
}
