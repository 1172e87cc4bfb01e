//! `WatchOpportunityEvents`: the change feed of the outbox crate (`salesopp_outbox`), as one
//! stream per caller: where it starts, what it lets through (R12 and the caller's filters),
//! heartbeats, the per-caller cap and the end at shutdown.
//!
//! A stream catches up from the database after its start position, page by page, then
//! follows the process's [`Tail`], which reads each new page once for every stream of the
//! process. Falling behind the tail sends it back to reading the database at its own pace
//! (see `salesopp_outbox::tail`), so a slow consumer never makes the process buffer more
//! than the tail's fixed window. Its position advances over events it filters out, and a
//! heartbeat carries that position when there was nothing to send for a while, so a
//! consumer of a rare event type can still save a recent cursor.
//!
//! Delivery is at-least-once: a consumer resumes after the cursor of the last message it
//! processed, and a reconnect may repeat events it had received but not processed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use salesopp_kit::error::{ApiError, ApiResult, FieldViolations, Reason, error_info, status};
use salesopp_outbox::read::{self, ReadError};
use salesopp_outbox::{StoredEvent, Tail, cursor, parse_cursor};
use salesopp_proto::opportunity::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::status_change::{CREATED, STALE, STATUS_CHANGED, UPDATED};
use salesopp_kit::{Sales, Visibility};

/// How streams behave.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// How long a stream may send nothing before it sends a heartbeat.
    pub heartbeat: Duration,
    /// The most streams one caller may hold open on one server.
    pub streams_per_caller: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            streams_per_caller: 32,
        }
    }
}

/// Messages queued per stream before it waits for its consumer.
const STREAM_BUFFER: usize = 64;

/// What goes out on a stream.
pub type Message = Result<pb::WatchOpportunityEventsResponse, Status>;

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    After(i64),
    Oldest,
    Latest,
    Time(DateTime<Utc>),
}

/// What a stream asks for, beyond the caller's visibility (R12).
#[derive(Debug, Clone)]
pub struct Filter {
    /// Stored type names; empty means every type.
    pub types: Vec<&'static str>,
    pub owner_ids: HashSet<String>,
    pub customer_ids: HashSet<String>,
    pub status_ids: HashSet<String>,
}

impl Filter {
    /// Whether `stored` goes out: its opportunity is visible to the caller before or after
    /// the change, and it passes every filter given (each on before or after the change).
    pub fn matches(&self, visibility: &Visibility, stored: &StoredEvent) -> bool {
        let Some(event) = &stored.event else {
            return false;
        };
        let owners = [
            Some((stored.owner_id.as_str(), stored.owner_team.as_deref())),
            stored
                .previous_owner_id
                .as_deref()
                .map(|owner| (owner, stored.previous_owner_team.as_deref())),
        ];
        let sides = [event.before.as_ref(), event.after.as_ref()];
        let visible = owners
            .iter()
            .flatten()
            .any(|(owner, team)| visibility.sees(owner, team.unwrap_or_default()));
        visible
            && (self.types.is_empty() || self.types.contains(&stored.event_type.as_str()))
            && (self.owner_ids.is_empty()
                || owners
                    .iter()
                    .flatten()
                    .any(|(owner, _)| self.owner_ids.contains(*owner)))
            && (self.customer_ids.is_empty()
                || sides
                    .iter()
                    .flatten()
                    .any(|side| self.customer_ids.contains(&side.customer_id)))
            && (self.status_ids.is_empty()
                || sides
                    .iter()
                    .flatten()
                    .any(|side| self.status_ids.contains(&side.status_id)))
    }
}

/// A validated WatchOpportunityEvents request.
#[derive(Debug, Clone)]
pub struct Watch {
    pub start: Start,
    pub filter: Filter,
}

/// Where the request starts its stream; `Oldest` when it says nothing.
fn start(
    violations: &mut FieldViolations,
    start: Option<&pb::watch_opportunity_events_request::Start>,
) -> Start {
    use pb::watch_opportunity_events_request::{Start as PbStart, StartPosition};
    match start {
        None => Start::Oldest,
        Some(PbStart::AfterCursor(text)) if text.is_empty() => Start::Oldest,
        Some(PbStart::AfterCursor(text)) => match parse_cursor(text) {
            Some(after) => Start::After(after),
            None => {
                violations.add("after_cursor", "not a cursor this stream sent");
                Start::Oldest
            }
        },
        Some(PbStart::StartPosition(raw)) => match StartPosition::try_from(*raw) {
            Ok(StartPosition::Unspecified | StartPosition::Oldest) => Start::Oldest,
            Ok(StartPosition::Latest) => Start::Latest,
            Err(_) => {
                violations.add("start_position", "must be OLDEST or LATEST");
                Start::Oldest
            }
        },
        Some(PbStart::StartTime(time)) => {
            match DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0)) {
                Some(time) => Start::Time(time),
                None => {
                    violations.add("start_time", "not a valid time");
                    Start::Oldest
                }
            }
        }
    }
}

impl TryFrom<&pb::WatchOpportunityEventsRequest> for Watch {
    type Error = ApiError;

    fn try_from(request: &pb::WatchOpportunityEventsRequest) -> ApiResult<Self> {
        watch_request(request)
    }
}

/// Reads the request: every malformed field is one violation.
fn watch_request(request: &pb::WatchOpportunityEventsRequest) -> ApiResult<Watch> {
    let mut violations = FieldViolations::new();
    let start = start(&mut violations, request.start.as_ref());
    let mut types = Vec::new();
    for (index, raw) in request.types.iter().enumerate() {
        match pb::OpportunityEventType::try_from(*raw) {
            Ok(pb::OpportunityEventType::Created) => types.push(CREATED),
            Ok(pb::OpportunityEventType::Updated) => types.push(UPDATED),
            Ok(pb::OpportunityEventType::StatusChanged) => types.push(STATUS_CHANGED),
            Ok(pb::OpportunityEventType::Stale) => types.push(STALE),
            _ => violations.add(
                format!("types[{index}]"),
                "must be CREATED, UPDATED, STATUS_CHANGED or STALE",
            ),
        }
    }
    let mut owner_ids = HashSet::new();
    for (index, owner) in request.owner_ids.iter().enumerate() {
        if owner.is_empty() || owner.chars().count() > 200 {
            violations.add(
                format!("owner_ids[{index}]"),
                "must be a salesperson id (1 to 200 characters)",
            );
        } else {
            owner_ids.insert(owner.clone());
        }
    }
    let mut ids = |field: &str, values: &[String]| {
        let mut set = HashSet::new();
        for (index, value) in values.iter().enumerate() {
            match uuid::Uuid::try_parse(value) {
                // Compared with the events' ids as the API writes them (lowercase, hyphens).
                Ok(id) => {
                    set.insert(id.to_string());
                }
                Err(_) => violations.add(format!("{field}[{index}]"), "must be a UUID"),
            }
        }
        set
    };
    let customer_ids = ids("customer_ids", &request.customer_ids);
    let status_ids = ids("status_ids", &request.status_ids);
    violations.into_result()?;
    Ok(Watch {
        start,
        filter: Filter {
            types,
            owner_ids,
            customer_ids,
            status_ids,
        },
    })
}

/// The streams of one server: its database, its tail, its settings, who holds how many
/// streams, and the signal that ends them all.
#[derive(Debug, Clone)]
pub struct Feed {
    pool: sqlx::PgPool,
    tail: Tail,
    config: StreamConfig,
    open: Arc<Mutex<HashMap<String, usize>>>,
    stopping: watch::Receiver<bool>,
}

/// One open stream of a caller, released when the stream ends.
struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
        salesopp_kit::metrics::metrics().events.open_streams.dec();
    }
}

fn expired(oldest: i64) -> Status {
    let reason = Reason::CursorExpired;
    status(
        reason,
        "the events after this position were deleted by retention: resume from oldest_cursor",
        error_info(
            reason,
            HashMap::from([("oldest_cursor".to_owned(), cursor(oldest))]),
        ),
    )
}

fn stopping() -> Status {
    let reason = Reason::ServerStopping;
    status(
        reason,
        "the server is shutting down: reconnect with the last cursor",
        error_info(reason, HashMap::new()),
    )
}

impl Feed {
    /// A feed over `tail`, whose streams end when `stopping` turns true.
    pub fn new(
        pool: sqlx::PgPool,
        tail: Tail,
        config: StreamConfig,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            pool,
            tail,
            config,
            open: Arc::default(),
            stopping,
        }
    }

    fn claim(&self, caller: &str) -> Result<Slot, Status> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(caller.to_owned()).or_default();
        if *count >= self.config.streams_per_caller {
            let reason = Reason::TooManyStreams;
            return Err(status(
                reason,
                format!(
                    "the caller already holds {} open event streams on this server",
                    *count
                ),
                error_info(
                    reason,
                    HashMap::from([(
                        "limit".to_owned(),
                        self.config.streams_per_caller.to_string(),
                    )]),
                ),
            ));
        }
        *count += 1;
        salesopp_kit::metrics::metrics().events.open_streams.inc();
        Ok(Slot {
            open: self.open.clone(),
            caller: caller.to_owned(),
        })
    }

    /// The position the stream resumes after.
    async fn resolve(&self, start: Start) -> Result<i64, Status> {
        let bounds = || async { read::bounds(&self.pool).await.map_err(ReadError::Database) };
        let position = match start {
            Start::After(after) => {
                let oldest = bounds().await.map_err(read_error)?.oldest;
                if after < oldest {
                    return Err(expired(oldest));
                }
                after
            }
            Start::Oldest => bounds().await.map_err(read_error)?.oldest,
            Start::Latest => bounds().await.map_err(read_error)?.latest,
            Start::Time(time) => read::position_at(&self.pool, time)
                .await
                .map_err(read_error)?,
        };
        Ok(position)
    }

    /// Opens a stream for `caller`: checks the cap and the start, then streams in a task of
    /// its own until the consumer goes away or the server stops.
    pub async fn open(
        &self,
        caller: Sales<'_>,
        watch: Watch,
    ) -> Result<mpsc::Receiver<Message>, Status> {
        let visibility = Visibility::of(caller);
        let slot = self.claim(&caller.id)?;
        let after = self.resolve(watch.start).await?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let feed = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut stream = Stream {
                feed: &feed,
                visibility: &visibility,
                filter: &watch.filter,
                sender: &sender,
                after,
                quiet_since: tokio::time::Instant::now(),
            };
            let mut stopping = feed.stopping.clone();
            let end = tokio::select! {
                end = stream.run() => end,
                _ = stopping.wait_for(|stop| *stop) => Some(stopping_status()),
                _ = sender.closed() => None,
            };
            if let Some(status) = end {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(receiver)
    }
}

fn stopping_status() -> Status {
    stopping()
}

fn read_error(error: ReadError) -> Status {
    match error {
        ReadError::Expired { oldest, .. } => expired(oldest),
        ReadError::Database(error) => ApiError::from(error).into(),
    }
}

/// One stream's state while it runs.
struct Stream<'a> {
    feed: &'a Feed,
    visibility: &'a Visibility,
    filter: &'a Filter,
    sender: &'a mpsc::Sender<Message>,
    /// The position read through: every event up to it was sent or filtered out.
    after: i64,
    /// Since when nothing was sent.
    quiet_since: tokio::time::Instant,
}

impl Stream<'_> {
    /// Streams until the consumer leaves (`None`) or an error ends it.
    async fn run(&mut self) -> Option<Status> {
        loop {
            let mut live = match self.catch_up().await {
                Ok(Some(live)) => live,
                Ok(None) => return None,
                Err(status) => return Some(status),
            };
            match self.follow(&mut live).await {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(status) => return Some(status),
            }
        }
    }

    /// Reads the database after `after` until it has read everything placed so far; the
    /// subscription taken before the last read, to follow the tail from there.
    async fn catch_up(&mut self) -> Result<Option<broadcast::Receiver<Arc<read::Page>>>, Status> {
        loop {
            let live = self.feed.tail.subscribe();
            let page = read::read_after(&self.feed.pool, self.after, salesopp_outbox::tail::PAGE)
                .await
                .map_err(read_error)?;
            if !self.deliver(&page.events, page.through, false).await {
                return Ok(None);
            }
            if !page.full {
                return Ok(Some(live));
            }
        }
    }

    /// Follows the tail; `Ok(true)` when it fell behind and must catch up again.
    async fn follow(
        &mut self,
        live: &mut broadcast::Receiver<Arc<read::Page>>,
    ) -> Result<bool, Status> {
        loop {
            let heartbeat_at = self.quiet_since + self.feed.config.heartbeat;
            tokio::select! {
                received = live.recv() => match received {
                    Ok(page) => {
                        if !self.deliver(&page.events, page.through, true).await {
                            return Ok(false);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(true),
                    Err(broadcast::error::RecvError::Closed) => return Err(stopping()),
                },
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    if !self.heartbeat().await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Sends what passes the filter among `events` not yet past, then moves to `through`;
    /// a heartbeat when the stream was quiet too long. False when the consumer left.
    async fn deliver(&mut self, events: &[Arc<StoredEvent>], through: i64, live: bool) -> bool {
        let metrics = &salesopp_kit::metrics::metrics().events;
        for stored in events {
            if stored.seq <= self.after {
                continue;
            }
            self.after = stored.seq;
            if !self.filter.matches(self.visibility, stored) {
                continue;
            }
            let Some(event) = stored.event.clone() else {
                continue;
            };
            let message = pb::WatchOpportunityEventsResponse {
                kind: Some(pb::watch_opportunity_events_response::Kind::Event(event)),
            };
            if self.sender.send(Ok(message)).await.is_err() {
                return false;
            }
            metrics.streamed.inc();
            if live {
                let lag = (Utc::now() - stored.occur_time)
                    .to_std()
                    .unwrap_or_default();
                metrics.stream_lag.observe(lag.as_secs_f64());
            }
            self.quiet_since = tokio::time::Instant::now();
        }
        self.after = self.after.max(through);
        if self.quiet_since.elapsed() >= self.feed.config.heartbeat {
            return self.heartbeat().await;
        }
        true
    }

    async fn heartbeat(&mut self) -> bool {
        let message = pb::WatchOpportunityEventsResponse {
            kind: Some(pb::watch_opportunity_events_response::Kind::Heartbeat(
                pb::watch_opportunity_events_response::Heartbeat {
                    cursor: cursor(self.after),
                    time: Some(salesopp_kit::time::timestamp(Utc::now())),
                },
            )),
        };
        self.quiet_since = tokio::time::Instant::now();
        self.sender.send(Ok(message)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        start: pb::watch_opportunity_events_request::Start,
    ) -> pb::WatchOpportunityEventsRequest {
        pb::WatchOpportunityEventsRequest {
            start: Some(start),
            ..Default::default()
        }
    }

    #[test]
    fn every_malformed_field_is_one_violation() {
        use pb::watch_opportunity_events_request::Start as S;
        let mut bad = request(S::AfterCursor("nope".into()));
        bad.types = vec![0, 9];
        bad.owner_ids = vec![String::new()];
        bad.customer_ids = vec!["x".into()];
        bad.status_ids = vec!["y".into()];
        let error = watch_request(&bad).unwrap_err();
        let fields: Vec<_> = error
            .field_violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "after_cursor",
                "types[0]",
                "types[1]",
                "owner_ids[0]",
                "customer_ids[0]",
                "status_ids[0]"
            ]
        );
    }

    #[test]
    fn the_start_is_read_from_the_request() {
        use pb::watch_opportunity_events_request::{Start as S, StartPosition};
        let start = |r| watch_request(&r).unwrap().start;
        assert_eq!(start(Default::default()), Start::Oldest);
        assert_eq!(start(request(S::AfterCursor(String::new()))), Start::Oldest);
        assert_eq!(start(request(S::AfterCursor(cursor(7)))), Start::After(7));
        assert_eq!(
            start(request(S::StartPosition(StartPosition::Latest as i32))),
            Start::Latest
        );
        assert!(matches!(
            start(request(S::StartTime(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0
            }))),
            Start::Time(_)
        ));
    }
}
