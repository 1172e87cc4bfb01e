//! The change feed end to end (DESIGN.md "Events", R12): every opportunity write adds one
//! outbox row in its own transaction, and `WatchOpportunityEvents` streams those rows from a
//! cursor, in commit order, to the callers who may see the opportunity.
//!
//! Real Postgres (one database per test) and real gRPC. Streams are read with a generous
//! per-event bound (10 s) so a slow machine never fails a test; nothing here asserts how fast
//! anything happens. The one place that checks for the absence of an event (the commit-order
//! test) first proves from `pg_locks` that the write it waits for is blocked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use prost::Message as _;
use prost_types::Timestamp;
use salesopp_opportunity::events::StreamConfig;
use salesopp_proto::common::v1::{Actor, Date, Money};
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::watch_opportunity_events_request::{Start, StartPosition};
use salesopp_proto::opportunity::v1::watch_opportunity_events_response::{Heartbeat, Kind};
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, WON, change_request, mask, rid,
};
use salesopp_tests::wait::placed_head;
use salesopp_tests::{
    SuiteOptions, admin_token, authed, expect_code, expect_invalid, manager_token, rep_token, token,
};
use sqlx::PgPool;
use tonic::{Code, Status, Streaming};
use uuid::Uuid;

/// The most a test waits for one event that must come.
const WAIT: Duration = Duration::from_secs(10);

const CREATED: i32 = pb::OpportunityEventType::Created as i32;
const UPDATED: i32 = pb::OpportunityEventType::Updated as i32;
const STATUS_CHANGED: i32 = pb::OpportunityEventType::StatusChanged as i32;

// ---------------------------------------------------------------------------------------
// The cast: the harness's rep-a1 (north), mgr-a (north) and admin-1, and these.
// ---------------------------------------------------------------------------------------

/// An opportunity as an event carries it: without `status_durations`, which change with the
/// clock and so are left out of the change feed (the contract says so).
fn as_in_events(opportunity: &pb::Opportunity) -> pb::Opportunity {
    pb::Opportunity {
        status_durations: Vec::new(),
        ..opportunity.clone()
    }
}
fn rep_a2_token() -> String {
    token("rep-a2", "Niran Rep", "north", &["sales_rep"])
}

fn rep_b1_token() -> String {
    token("rep-b1", "Suda Rep", "south", &["sales_rep"])
}

fn manager_b_token() -> String {
    token("mgr-b", "Boon Manager", "south", &["sales_manager"])
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

fn thb(units: i64) -> Money {
    Money {
        currency_code: "THB".to_owned(),
        units,
        nanos: 0,
    }
}

fn actor(id: &str, name: &str) -> Option<Actor> {
    Some(Actor {
        id: id.to_owned(),
        display_name: name.to_owned(),
    })
}

fn draft(customer_id: &str, title: &str) -> pb::Opportunity {
    pb::Opportunity {
        customer_id: customer_id.to_owned(),
        title: title.to_owned(),
        amount: Some(thb(100_000)),
        ..Default::default()
    }
}

fn update_request(
    opportunity: pb::Opportunity,
    paths: &[&str],
    request_id: &str,
) -> pb::UpdateOpportunityRequest {
    pb::UpdateOpportunityRequest {
        opportunity: Some(opportunity),
        update_mask: mask(paths),
        note: String::new(),
        request_id: request_id.to_owned(),
    }
}

fn micros(time: &Option<Timestamp>) -> i128 {
    let time = time.as_ref().expect("a timestamp");
    i128::from(time.seconds) * 1_000_000 + i128::from(time.nanos) / 1000
}

fn event_ids(events: &[pb::OpportunityEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// A stream being read
// ---------------------------------------------------------------------------------------

struct Watcher {
    stream: Streaming<pb::WatchOpportunityEventsResponse>,
}

impl Watcher {
    /// The next message, event or heartbeat; fails the test if none comes within [`WAIT`] or
    /// the stream ends.
    async fn next_message(&mut self) -> Kind {
        match tokio::time::timeout(WAIT, self.stream.message()).await {
            Err(_) => panic!("no message within {WAIT:?}"),
            Ok(Err(status)) => panic!("the stream failed: {status:?}"),
            Ok(Ok(None)) => panic!("the stream ended"),
            Ok(Ok(Some(message))) => message.kind.expect("an event or a heartbeat"),
        }
    }

    /// The next event, past any heartbeat.
    async fn next(&mut self) -> pb::OpportunityEvent {
        loop {
            if let Kind::Event(event) = self.next_message().await {
                return event;
            }
        }
    }

    /// The next heartbeat, past any event.
    async fn next_heartbeat(&mut self) -> Heartbeat {
        loop {
            if let Kind::Heartbeat(heartbeat) = self.next_message().await {
                return heartbeat;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<pb::OpportunityEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }

    /// Every event up to and including the one with `event_id`.
    async fn until(&mut self, event_id: &str) -> Vec<pb::OpportunityEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let done = event.event_id == event_id;
            events.push(event);
            if done {
                return events;
            }
            assert!(events.len() < 10_000, "never saw event {event_id}");
        }
    }
}

/// One outbox row: (id, event_id, type, opportunity_id).
type Row = (i64, String, String, String);

// ---------------------------------------------------------------------------------------
// The world of one test
// ---------------------------------------------------------------------------------------

salesopp_tests::world! {
    /// The shared world, and the customer its opportunities are of.
    struct World {
        customer: String,
    }
}

impl World {
    /// A suite with one customer, created by the admin.
    async fn new() -> World {
        World::with_streams(StreamConfig::default()).await
    }

    /// The same, with streams that behave as `streams` says.
    async fn with_streams(streams: StreamConfig) -> World {
        let mut world = salesopp_tests::World::with(SuiteOptions {
            streams,
            ..Default::default()
        })
        .await;
        let customer = world
            .customer(&admin_token(), "Siam Widgets Co., Ltd.")
            .await
            .id;
        World { world, customer }
    }

    async fn try_watch(
        &self,
        token: &str,
        after_cursor: &str,
        types: &[i32],
    ) -> Result<Watcher, Status> {
        self.try_watch_with(
            token,
            pb::WatchOpportunityEventsRequest {
                start: Some(Start::AfterCursor(after_cursor.to_owned())),
                types: types.to_vec(),
                ..Default::default()
            },
        )
        .await
    }

    async fn watch(&self, token: &str, after_cursor: &str, types: &[i32]) -> Watcher {
        self.try_watch(token, after_cursor, types)
            .await
            .expect("watch opportunity events")
    }

    /// An opportunity of the world's customer, owned by the caller unless `owner` is given.
    async fn create_for(&mut self, token: &str, title: &str, owner: &str) -> pb::Opportunity {
        let mut opportunity = draft(&self.customer, title);
        opportunity.owner_id = owner.to_owned();
        self.try_create_request(
            token,
            pb::CreateOpportunityRequest {
                opportunity: Some(opportunity),
                request_id: rid(),
                note: String::new(),
            },
        )
        .await
        .expect("create opportunity")
    }

    async fn create(&mut self, token: &str, title: &str) -> pb::Opportunity {
        self.create_for(token, title, "").await
    }

    async fn change(
        &mut self,
        token: &str,
        id: &str,
        status_id: &str,
    ) -> pb::ChangeOpportunityStatusResponse {
        self.try_change(token, change_request(id, status_id))
            .await
            .expect("change opportunity status")
    }

    async fn update(
        &mut self,
        token: &str,
        opportunity: pb::Opportunity,
        paths: &[&str],
    ) -> pb::Opportunity {
        self.try_update_request(token, update_request(opportunity, paths, ""))
            .await
            .expect("update opportunity")
    }

    /// The outbox in delivery order (by position; events not placed yet last, by id).
    async fn delivered_rows(&self) -> Vec<Row> {
        sqlx::query_as(
            "select id, event_id::text, type, opportunity_id::text
             from opportunity_events order by seq nulls last, id",
        )
        .fetch_all(self.db())
        .await
        .expect("read the outbox")
    }

    /// Each event's delivery position, by event id.
    async fn positions_by_event(&self) -> BTreeMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "select event_id::text, seq from opportunity_events where seq is not null",
        )
        .fetch_all(self.db())
        .await
        .expect("read the positions")
        .into_iter()
        .collect()
    }

    /// The outbox, in id order.
    async fn rows(&self) -> Vec<Row> {
        sqlx::query_as(
            "select id, event_id::text, type, opportunity_id::text
             from opportunity_events order by id",
        )
        .fetch_all(self.db())
        .await
        .expect("read the outbox")
    }

    /// The rows added since `before` (a previous [`World::rows`]), checking none went away.
    async fn rows_since(&self, before: &[Row]) -> Vec<Row> {
        let now = self.rows().await;
        assert!(now.len() >= before.len(), "outbox rows went away");
        assert_eq!(&now[..before.len()], before, "outbox rows were rewritten");
        now[before.len()..].to_vec()
    }

    /// The event_id of the one outbox row the last write added (asserting it added one).
    async fn one_new(&self, before: &mut Vec<Row>) -> String {
        let added = self.rows_since(before).await;
        assert_eq!(added.len(), 1, "one write, one event: {added:?}");
        before.extend(added.iter().cloned());
        added[0].1.clone()
    }

    /// Outbox ids by event_id.
    async fn ids_by_event(&self) -> BTreeMap<String, i64> {
        self.rows()
            .await
            .into_iter()
            .map(|(id, event_id, _, _)| (event_id, id))
            .collect()
    }
}

/// `before` with the changes of `changed` and the bookkeeping every write changes (etag,
/// update time, who updated it) taken from `after`, must equal `after`.
fn assert_differs_only_in(
    before: &pb::Opportunity,
    after: &pb::Opportunity,
    changed: impl FnOnce(&mut pb::Opportunity),
) {
    assert_ne!(before.etag, after.etag, "a write changes the etag");
    assert!(micros(&after.update_time) >= micros(&before.update_time));
    let mut expected = before.clone();
    changed(&mut expected);
    expected.etag = after.etag.clone();
    assert_eq!(after.version, before.version + 1, "one write, one version");
    expected.version = after.version;
    expected.update_time = after.update_time;
    expected.updated_by = after.updated_by.clone();
    // The durations' current stay counts up with the clock between the two reads.
    expected.status_durations = after.status_durations.clone();
    assert_eq!(&expected, after);
}

// =======================================================================================
// Every write emits exactly one event, in its transaction
// =======================================================================================

#[tokio::test]
async fn create_emits_one_created_event_with_after_and_the_first_history_entry() {
    let mut w = World::new().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let mut rows = w.rows().await;
    assert!(rows.is_empty());

    // A rep creates their own opportunity, with a note, a date and a next step.
    let request_id = rid();
    let mut opportunity = draft(&w.customer, "ERP rollout, 40 seats");
    opportunity.expected_close_date = Some(Date {
        year: 2027,
        month: 3,
        day: 31,
    });
    opportunity.next_step = "Demo on Friday".to_owned();
    let request = pb::CreateOpportunityRequest {
        opportunity: Some(opportunity),
        request_id: request_id.clone(),
        note: "met at the trade fair".to_owned(),
    };
    let created = w
        .try_create_request(&rep_token(), request.clone())
        .await
        .expect("create");
    let event_id = w.one_new(&mut rows).await;

    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert!(Uuid::parse_str(&event.event_id).is_ok());
    assert!(!event.cursor.is_empty());
    assert_eq!(event.r#type, CREATED);
    assert_eq!(event.opportunity_id, created.id);
    assert_eq!(event.actor, actor("rep-a1", "Somchai Rep"));
    assert_eq!(event.before, None, "a CREATED event has no before");
    assert_eq!(event.after.as_ref(), Some(&as_in_events(&created)));
    assert_eq!(event.request_id, request_id);
    assert_eq!(micros(&event.occur_time), micros(&created.update_time));
    let history = w.history(&admin_token(), &created.id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(event.status_change.as_ref(), Some(&history[0]));
    let first = event.status_change.unwrap();
    assert_eq!(first.from_status, None);
    assert_eq!(first.to_status.unwrap().id, INTERESTED);
    assert_eq!(first.note, "met at the trade fair");
    assert_eq!(first.request_id, request_id);

    // A retry of the same create returns the first result and writes no second event.
    let again = w
        .try_create_request(&rep_token(), request)
        .await
        .expect("retry create");
    assert_eq!(again, created);
    assert!(w.rows_since(&rows).await.is_empty());

    // A manager creating for a rep of their team: the actor is the manager, the owner the rep.
    let for_rep = w
        .create_for(&manager_token(), "Warehouse scanners", "rep-a1")
        .await;
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, CREATED);
    assert_eq!(event.actor, actor("mgr-a", "Malee Manager"));
    assert_eq!(event.after.as_ref().unwrap().owner_id, "rep-a1");
    assert_eq!(event.after.as_ref(), Some(&as_in_events(&for_rep)));
    assert_eq!(
        event.status_change.as_ref(),
        Some(&w.history(&admin_token(), &for_rep.id).await[0])
    );

    // Created straight in the LOST status: still one CREATED event, with that first entry.
    let mut lost = draft(&w.customer, "Lost from the start");
    lost.status_id = LOST.to_owned();
    lost.lost_reason = "went with a competitor".to_owned();
    let lost = w
        .try_create_request(
            &rep_token(),
            pb::CreateOpportunityRequest {
                opportunity: Some(lost),
                request_id: rid(),
                note: String::new(),
            },
        )
        .await
        .expect("create lost");
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, CREATED);
    assert_eq!(event.after.as_ref(), Some(&as_in_events(&lost)));
    let entry = event.status_change.unwrap();
    assert_eq!(entry.to_status.unwrap().id, LOST);
    assert_eq!(entry.lost_reason, "went with a competitor");
}

#[tokio::test]
async fn update_without_status_emits_updated_whose_before_and_after_differ_only_in_the_change() {
    let mut w = World::new().await;
    let created = w.create(&rep_token(), "CRM licences").await;
    let mut rows = w.rows().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(watcher.next().await.r#type, CREATED);

    // Title, amount and next step, with a request id.
    let before = w.get(&rep_token(), &created.id).await;
    let request_id = rid();
    let request = update_request(
        pb::Opportunity {
            id: created.id.clone(),
            title: "CRM licences, 120 seats".to_owned(),
            amount: Some(thb(360_000)),
            next_step: "Send the quotation".to_owned(),
            ..Default::default()
        },
        &["title", "amount", "next_step"],
        &request_id,
    );
    let after = w
        .try_update_request(&rep_token(), request.clone())
        .await
        .expect("update");
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, UPDATED);
    assert_eq!(event.opportunity_id, created.id);
    assert_eq!(event.actor, actor("rep-a1", "Somchai Rep"));
    assert_eq!(event.request_id, request_id);
    assert_eq!(
        event.status_change, None,
        "an UPDATED event has no status change"
    );
    assert_eq!(event.before.as_ref(), Some(&as_in_events(&before)));
    assert_eq!(event.after.as_ref(), Some(&as_in_events(&after)));
    assert_differs_only_in(&before, &after, |o| {
        o.title = "CRM licences, 120 seats".to_owned();
        o.amount = Some(thb(360_000));
        o.next_step = "Send the quotation".to_owned();
    });
    assert_eq!(after.updated_by, actor("rep-a1", "Somchai Rep"));

    // A retry with the same request id returns the first result and writes no event.
    let retried = w
        .try_update_request(&rep_token(), request)
        .await
        .expect("retry the update");
    assert_eq!(retried, after);
    assert!(w.rows_since(&rows).await.is_empty());

    // By a manager, without a request id: the actor is the manager; request_id is empty.
    let before = after;
    let after = w
        .update(
            &manager_token(),
            pb::Opportunity {
                id: created.id.clone(),
                expected_close_date: Some(Date {
                    year: 2027,
                    month: 6,
                    day: 30,
                }),
                ..Default::default()
            },
            &["expected_close_date"],
        )
        .await;
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, UPDATED);
    assert_eq!(event.actor, actor("mgr-a", "Malee Manager"));
    assert_eq!(event.request_id, "");
    assert_eq!(event.before.as_ref(), Some(&as_in_events(&before)));
    assert_eq!(event.after.as_ref(), Some(&as_in_events(&after)));
    assert_differs_only_in(&before, &after, |o| {
        o.expected_close_date = Some(Date {
            year: 2027,
            month: 6,
            day: 30,
        });
    });
    assert_eq!(after.updated_by, actor("mgr-a", "Malee Manager"));

    // `status_id` in the mask with the current status, and a field change: UPDATED, not
    // STATUS_CHANGED, and no history entry.
    let before = after;
    let after = w
        .update(
            &rep_token(),
            pb::Opportunity {
                id: created.id.clone(),
                status_id: INTERESTED.to_owned(),
                next_step: "Call the CFO".to_owned(),
                ..Default::default()
            },
            &["status_id", "next_step"],
        )
        .await;
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, UPDATED);
    assert_eq!(event.status_change, None);
    assert_differs_only_in(&before, &after, |o| {
        o.next_step = "Call the CFO".to_owned();
    });
    assert_eq!(w.history(&admin_token(), &created.id).await.len(), 1);

    // An update that changes nothing writes no event.
    let unchanged = w
        .update(
            &rep_token(),
            pb::Opportunity {
                id: created.id.clone(),
                title: "CRM licences, 120 seats".to_owned(),
                ..Default::default()
            },
            &["title"],
        )
        .await;
    assert_eq!(as_in_events(&unchanged), as_in_events(&after));
    assert!(w.rows_since(&rows).await.is_empty());
}

#[tokio::test]
async fn a_status_change_emits_status_changed_with_the_history_entry_from_either_call() {
    let mut w = World::new().await;
    let created = w.create(&rep_token(), "Fleet telematics").await;
    let mut rows = w.rows().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(watcher.next().await.r#type, CREATED);

    // ChangeOpportunityStatus, with a note.
    let before = w.get(&rep_token(), &created.id).await;
    let mut request = change_request(&created.id, PRESENTED);
    request.note = "demo went well".to_owned();
    let response = w
        .try_change(&rep_token(), request.clone())
        .await
        .expect("change");
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, STATUS_CHANGED);
    assert_eq!(event.opportunity_id, created.id);
    assert_eq!(event.actor, actor("rep-a1", "Somchai Rep"));
    assert_eq!(event.request_id, request.request_id);
    assert_eq!(event.before.as_ref(), Some(&as_in_events(&before)));
    assert_eq!(event.after, response.opportunity.as_ref().map(as_in_events));
    assert_eq!(event.status_change, response.status_change);
    let history = w.history(&admin_token(), &created.id).await;
    assert_eq!(history.len(), 2);
    assert_eq!(event.status_change.as_ref(), Some(&history[1]));
    assert_eq!(history[1].note, "demo went well");
    assert_eq!(
        micros(&event.occur_time),
        micros(&event.after.as_ref().unwrap().update_time)
    );

    // A retry of the same call records nothing more.
    let again = w
        .try_change(&rep_token(), request)
        .await
        .expect("retry change");
    assert_eq!(again, response);
    assert!(w.rows_since(&rows).await.is_empty());

    // UpdateOpportunity with `status_id` and another field: one STATUS_CHANGED event whose
    // before is the opportunity before the call and whose after has both changes.
    let before = response.opportunity.unwrap();
    let request_id = rid();
    let mut request = update_request(
        pb::Opportunity {
            id: created.id.clone(),
            status_id: QUOTATION.to_owned(),
            title: "Fleet telematics, 80 trucks".to_owned(),
            ..Default::default()
        },
        &["status_id", "title"],
        &request_id,
    );
    request.note = "quotation sent".to_owned();
    let after = w
        .try_update_request(&rep_token(), request)
        .await
        .expect("update");
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, STATUS_CHANGED);
    assert_eq!(event.request_id, request_id);
    assert_eq!(event.before.as_ref(), Some(&as_in_events(&before)));
    assert_eq!(event.after.as_ref(), Some(&as_in_events(&after)));
    assert_eq!(after.status_id, QUOTATION);
    assert_eq!(after.title, "Fleet telematics, 80 trucks");
    let history = w.history(&admin_token(), &created.id).await;
    assert_eq!(history.len(), 3);
    assert_eq!(event.status_change.as_ref(), Some(&history[2]));
    assert_eq!(history[2].note, "quotation sent");
    assert_eq!(history[2].request_id, request_id);
    assert_eq!(
        micros(&event.occur_time),
        micros(&event.after.as_ref().unwrap().update_time)
    );

    // To LOST with a reason, by the manager: the entry carries the reason; after is closed.
    let before = after;
    let mut request = change_request(&created.id, LOST);
    request.lost_reason = "budget cut".to_owned();
    let response = w.try_change(&manager_token(), request).await.expect("lose");
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.r#type, STATUS_CHANGED);
    assert_eq!(event.actor, actor("mgr-a", "Malee Manager"));
    assert_eq!(event.before.as_ref(), Some(&as_in_events(&before)));
    assert_eq!(event.after, response.opportunity.as_ref().map(as_in_events));
    assert!(event.after.as_ref().unwrap().close_time.is_some());
    assert_eq!(event.status_change, response.status_change);
    assert_eq!(
        event.status_change.as_ref().unwrap().lost_reason,
        "budget cut"
    );
    assert_eq!(
        event.status_change.as_ref(),
        w.history(&admin_token(), &created.id).await.last()
    );
}

#[tokio::test]
async fn a_status_change_to_the_same_status_emits_nothing() {
    let mut w = World::new().await;
    let created = w.create(&rep_token(), "Solar panels").await;
    let marker_opportunity = w.create(&rep_token(), "Marker").await;
    let rows = w.rows().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(watcher.take(2).await.len(), 2);

    let response = w.change(&rep_token(), &created.id, INTERESTED).await;
    assert_eq!(response.status_change, None);
    let same = w
        .update(
            &rep_token(),
            pb::Opportunity {
                id: created.id.clone(),
                status_id: INTERESTED.to_owned(),
                ..Default::default()
            },
            &["status_id"],
        )
        .await;
    assert_eq!(same.status_id, INTERESTED);
    assert!(w.rows_since(&rows).await.is_empty());
    assert_eq!(w.history(&admin_token(), &created.id).await.len(), 1);

    // The next event the stream sends is the next write's.
    w.change(&rep_token(), &marker_opportunity.id, PRESENTED)
        .await;
    let event = watcher.next().await;
    assert_eq!(event.opportunity_id, marker_opportunity.id);
    assert_eq!(event.r#type, STATUS_CHANGED);
}

#[tokio::test]
async fn a_failed_write_emits_nothing() {
    let mut w = World::new().await;
    let mine = w.create(&rep_token(), "Mine").await;
    let theirs = w.create(&rep_b1_token(), "Theirs").await;
    let marker_opportunity = w.create(&rep_token(), "Marker").await;
    let rows = w.rows().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(watcher.take(3).await.len(), 3);

    // A stale etag, on either call.
    let mut stale = change_request(&mine.id, PRESENTED);
    stale.etag = "stale".to_owned();
    expect_code(w.try_change(&rep_token(), stale).await, Code::Aborted);
    let stale = pb::Opportunity {
        id: mine.id.clone(),
        title: "Renamed".to_owned(),
        etag: "stale".to_owned(),
        ..Default::default()
    };
    expect_code(
        w.try_update_request(&rep_token(), update_request(stale, &["title"], ""))
            .await,
        Code::Aborted,
    );
    // A lost reason with an OPEN status.
    let mut reason = change_request(&mine.id, PRESENTED);
    reason.lost_reason = "no".to_owned();
    expect_invalid(w.try_change(&rep_token(), reason).await, "lost_reason");
    // An unknown status.
    expect_invalid(
        w.try_change(
            &rep_token(),
            change_request(&mine.id, "6f1c1a8e-0000-4000-8000-00000000dead"),
        )
        .await,
        "status_id",
    );
    // Another rep's opportunity, by either call.
    expect_code(
        w.try_change(&rep_token(), change_request(&theirs.id, PRESENTED))
            .await,
        Code::PermissionDenied,
    );
    // Updates: another rep's opportunity, a rep giving theirs away, and a status change with
    // a bad title.
    let updates = [
        (
            pb::Opportunity {
                id: theirs.id.clone(),
                title: "Mine now".to_owned(),
                ..Default::default()
            },
            vec!["title"],
            Code::PermissionDenied,
            None,
        ),
        (
            pb::Opportunity {
                id: mine.id.clone(),
                owner_id: "rep-b1".to_owned(),
                ..Default::default()
            },
            vec!["owner_id"],
            Code::PermissionDenied,
            None,
        ),
        (
            pb::Opportunity {
                id: mine.id.clone(),
                status_id: WON.to_owned(),
                title: "   ".to_owned(),
                ..Default::default()
            },
            vec!["status_id", "title"],
            Code::InvalidArgument,
            Some("opportunity.title"),
        ),
    ];
    for (opportunity, paths, code, field) in updates {
        let request = update_request(opportunity, &paths, "");
        let status = expect_code(w.try_update_request(&rep_token(), request).await, code);
        if let Some(field) = field {
            expect_invalid(Err::<(), _>(status), field);
        }
    }
    // A create with an unknown customer, and one with a lost reason in an OPEN status.
    let mut unknown = draft("6f1c1a8e-0000-4000-8000-00000000dead", "Nobody");
    unknown.status_id = PRESENTED.to_owned();
    let mut reason = draft(&w.customer, "Reason without loss");
    reason.lost_reason = "why".to_owned();
    for (opportunity, field) in [
        (unknown, "opportunity.customer_id"),
        (reason, "opportunity.lost_reason"),
    ] {
        let request = pb::CreateOpportunityRequest {
            opportunity: Some(opportunity),
            request_id: rid(),
            note: String::new(),
        };
        expect_invalid(w.try_create_request(&rep_token(), request).await, field);
    }
    // A request id reused for a different change.
    let first = w
        .try_change(&rep_token(), change_request(&mine.id, PRESENTED))
        .await
        .expect("change");
    let mut rows = rows;
    w.one_new(&mut rows).await;
    assert_eq!(watcher.next().await.r#type, STATUS_CHANGED);
    let mut reused = change_request(&mine.id, QUOTATION);
    reused.request_id = first.status_change.unwrap().request_id;
    expect_invalid(w.try_change(&rep_token(), reused).await, "request_id");

    assert!(
        w.rows_since(&rows).await.is_empty(),
        "a failed write wrote an event"
    );
    assert_eq!(w.history(&admin_token(), &mine.id).await.len(), 2);

    // The next event the stream sends is the next successful write's.
    w.change(&rep_token(), &marker_opportunity.id, PRESENTED)
        .await;
    let event = watcher.next().await;
    assert_eq!(event.opportunity_id, marker_opportunity.id);
}

#[tokio::test]
async fn r06_delete_status_with_a_replacement_emits_one_status_changed_per_moved_opportunity() {
    let mut w = World::new().await;
    let mut moved = Vec::new();
    for (token, title) in [
        (rep_token(), "A1 first"),
        (rep_token(), "A1 second"),
        (rep_b1_token(), "B1 only"),
    ] {
        let created = w.create(&token, title).await;
        w.change(&token, &created.id, PRESENTED).await;
        moved.push(w.get(&admin_token(), &created.id).await);
    }
    let stays = w.create(&rep_token(), "Stays interested").await;
    let mut rows = w.rows().await;
    let mut admin = w.watch(&admin_token(), "", &[]).await;
    let replayed = admin.take(rows.len()).await;
    let from = replayed.last().unwrap().cursor.clone();
    let mut rep_a1 = w.watch(&rep_token(), &from, &[]).await;
    let mut rep_b1 = w.watch(&rep_b1_token(), &from, &[]).await;

    let response = w
        .statuses
        .delete_status(authed(
            &admin_token(),
            spb::DeleteStatusRequest {
                request_id: String::new(),
                id: PRESENTED.to_owned(),
                replacement_status_id: QUOTATION.to_owned(),
                etag: String::new(),
            },
        ))
        .await
        .expect("delete status")
        .into_inner();
    assert_eq!(response.moved_opportunity_count, 3);
    let added = w.rows_since(&rows).await;
    assert_eq!(added.len(), 3, "one event per moved opportunity: {added:?}");
    rows.extend(added.iter().cloned());

    let events = admin.take(3).await;
    assert_eq!(
        event_ids(&events),
        added.iter().map(|r| r.1.clone()).collect::<Vec<_>>()
    );
    let mut seen = BTreeSet::new();
    for event in &events {
        assert_eq!(event.r#type, STATUS_CHANGED);
        assert_eq!(event.actor, actor("admin-1", "Araya Admin"));
        assert_eq!(event.request_id, "");
        let before = moved
            .iter()
            .find(|o| o.id == event.opportunity_id)
            .expect("a moved opportunity");
        assert!(seen.insert(event.opportunity_id.clone()), "moved twice");
        assert_eq!(event.before.as_ref(), Some(&as_in_events(before)));
        let after = event.after.as_ref().unwrap();
        assert_eq!(after.status_id, QUOTATION);
        assert_eq!(
            after,
            &as_in_events(&w.get(&admin_token(), &event.opportunity_id).await)
        );
        let history = w.history(&admin_token(), &event.opportunity_id).await;
        assert_eq!(history.len(), 3);
        assert_eq!(event.status_change.as_ref(), Some(&history[2]));
        let entry = event.status_change.as_ref().unwrap();
        assert_eq!(entry.from_status.as_ref().unwrap().id, PRESENTED);
        assert_eq!(entry.to_status.as_ref().unwrap().id, QUOTATION);
        assert_eq!(entry.changed_by, actor("admin-1", "Araya Admin"));
    }
    assert!(!seen.contains(&stays.id));

    // Each rep's stream has only their own moves.
    let a1 = rep_a1.take(2).await;
    assert_eq!(
        event_ids(&a1),
        event_ids(
            &events
                .iter()
                .filter(|e| e.after.as_ref().unwrap().owner_id == "rep-a1")
                .cloned()
                .collect::<Vec<_>>()
        )
    );
    let b1 = rep_b1.next().await;
    assert_eq!(b1.after.as_ref().unwrap().owner_id, "rep-b1");
    // Nothing else was moved or written.
    assert_eq!(w.history(&admin_token(), &stays.id).await.len(), 1);
    assert!(w.rows_since(&rows).await.is_empty());
}

// =======================================================================================
// The stream
// =======================================================================================

#[tokio::test]
async fn the_stream_replays_everything_in_id_order_then_follows_new_commits() {
    let mut w = World::new().await;
    let first = w.create(&rep_token(), "First").await;
    let second = w.create(&rep_b1_token(), "Second").await;
    w.change(&rep_token(), &first.id, PRESENTED).await;
    w.update(
        &rep_b1_token(),
        pb::Opportunity {
            id: second.id.clone(),
            title: "Second, renamed".to_owned(),
            ..Default::default()
        },
        &["title"],
    )
    .await;
    w.change(&rep_b1_token(), &second.id, WON).await;
    let mut rows = w.rows().await;
    assert_eq!(rows.len(), 5);

    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let replayed = watcher.take(rows.len()).await;
    assert_eq!(
        event_ids(&replayed),
        rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        "the replay is the outbox in id order"
    );
    assert_eq!(
        replayed.iter().map(|e| e.r#type).collect::<Vec<_>>(),
        vec![CREATED, CREATED, STATUS_CHANGED, UPDATED, STATUS_CHANGED]
    );
    let cursors: BTreeSet<&str> = replayed.iter().map(|e| e.cursor.as_str()).collect();
    assert_eq!(
        cursors.len(),
        replayed.len(),
        "every event has its own cursor"
    );

    // The stream stays open: each new commit comes, in order.
    for (step, status) in [QUOTATION, CONSIDERING, WON].into_iter().enumerate() {
        let response = w.change(&rep_token(), &first.id, status).await;
        let event_id = w.one_new(&mut rows).await;
        let event = watcher.next().await;
        assert_eq!(event.event_id, event_id, "step {step}");
        assert_eq!(event.status_change, response.status_change);
    }
    let third = w.create(&manager_token(), "Third").await;
    let event_id = w.one_new(&mut rows).await;
    let event = watcher.next().await;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.opportunity_id, third.id);

    // A second watcher from the start gets the same sequence.
    let mut again = w.watch(&admin_token(), "", &[]).await;
    let all = again.take(rows.len()).await;
    assert_eq!(
        event_ids(&all),
        rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn each_cursor_resumes_after_its_event() {
    let mut w = World::new().await;
    let one = w.create(&rep_token(), "One").await;
    let two = w.create(&rep_token(), "Two").await;
    for status in [PRESENTED, SENT_EMAIL, QUOTATION] {
        w.change(&rep_token(), &one.id, status).await;
        w.change(&rep_token(), &two.id, status).await;
    }
    let rows = w.rows().await;
    assert_eq!(rows.len(), 8);
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let all = watcher.take(rows.len()).await;

    // After the 3rd event's cursor: the 4th onwards, in the same order.
    let mut resumed = w.watch(&admin_token(), &all[2].cursor, &[]).await;
    let rest = resumed.take(all.len() - 3).await;
    assert_eq!(event_ids(&rest), event_ids(&all[3..]));
    assert_eq!(
        rest.iter().map(|e| e.cursor.clone()).collect::<Vec<_>>(),
        all[3..]
            .iter()
            .map(|e| e.cursor.clone())
            .collect::<Vec<_>>(),
        "an event's cursor does not depend on where the stream started"
    );

    // Every cursor resumes right after its own event.
    for (index, event) in all.iter().enumerate().take(all.len() - 1) {
        let mut resumed = w.watch(&admin_token(), &event.cursor, &[]).await;
        assert_eq!(resumed.next().await.event_id, all[index + 1].event_id);
    }

    // After the last cursor: nothing until the next commit, then that.
    let mut tail = w
        .watch(&admin_token(), &all.last().unwrap().cursor, &[])
        .await;
    let response = w.change(&rep_token(), &one.id, WON).await;
    let event = tail.next().await;
    assert_eq!(event.status_change, response.status_change);
    assert_eq!(watcher.next().await.event_id, event.event_id);
    // And the resumed stream keeps following too.
    assert_eq!(resumed.next().await.event_id, event.event_id);
}

#[tokio::test]
async fn the_events_of_one_opportunity_come_in_the_order_of_its_history() {
    let mut w = World::new().await;
    let tracked = w.create(&rep_token(), "Tracked").await;
    let other = w.create(&rep_token(), "Other").await;
    let path = [
        PRESENTED,
        LOST,
        INTERESTED,
        QUOTATION,
        WON,
        CONSIDERING,
        SENT_EMAIL,
    ];
    for (step, status) in path.into_iter().enumerate() {
        w.change(&rep_token(), &tracked.id, status).await;
        w.change(&rep_token(), &other.id, path[path.len() - 1 - step])
            .await;
        if step % 2 == 0 {
            w.update(
                &rep_token(),
                pb::Opportunity {
                    id: tracked.id.clone(),
                    next_step: format!("step {step}"),
                    ..Default::default()
                },
                &["next_step"],
            )
            .await;
        }
    }
    let rows = w.rows().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let all = watcher.take(rows.len()).await;
    for id in [&tracked.id, &other.id] {
        let mine: Vec<&pb::OpportunityEvent> =
            all.iter().filter(|e| e.opportunity_id == *id).collect();
        let entries: Vec<pb::StatusChange> = mine
            .iter()
            .filter_map(|e| e.status_change.clone())
            .collect();
        assert_eq!(
            entries,
            w.history(&admin_token(), id).await,
            "events follow the history"
        );
        assert_eq!(mine[0].r#type, CREATED);
        // Each event's before is the previous event's after: no change is missing.
        for pair in mine.windows(2) {
            assert_eq!(pair[1].before, pair[0].after, "a gap in {id}'s events");
        }
    }
}

#[tokio::test]
async fn the_types_filter_keeps_only_those_types_and_its_cursors_resume_with_it() {
    let mut w = World::new().await;
    let one = w.create(&rep_token(), "One").await;
    w.change(&rep_token(), &one.id, PRESENTED).await;
    w.update(
        &rep_token(),
        pb::Opportunity {
            id: one.id.clone(),
            title: "One, renamed".to_owned(),
            ..Default::default()
        },
        &["title"],
    )
    .await;
    let two = w.create(&rep_token(), "Two").await;
    w.change(&rep_token(), &two.id, QUOTATION).await;
    w.change(&rep_token(), &one.id, WON).await;
    w.update(
        &rep_token(),
        pb::Opportunity {
            id: two.id.clone(),
            next_step: "Call".to_owned(),
            ..Default::default()
        },
        &["next_step"],
    )
    .await;
    let rows = w.rows().await;
    let all = w
        .watch(&admin_token(), "", &[])
        .await
        .take(rows.len())
        .await;

    for types in [
        vec![STATUS_CHANGED],
        vec![CREATED],
        vec![UPDATED],
        vec![CREATED, UPDATED],
        vec![UPDATED, STATUS_CHANGED, UPDATED],
    ] {
        let wanted: Vec<&pb::OpportunityEvent> =
            all.iter().filter(|e| types.contains(&e.r#type)).collect();
        let mut filtered = w.watch(&admin_token(), "", &types).await;
        let got = filtered.take(wanted.len()).await;
        assert_eq!(
            event_ids(&got),
            wanted
                .iter()
                .map(|e| e.event_id.clone())
                .collect::<Vec<_>>(),
            "types {types:?}"
        );
        // A filtered event's cursor resumes after it with the same filter.
        let mut resumed = w.watch(&admin_token(), &got[0].cursor, &types).await;
        let rest = resumed.take(got.len() - 1).await;
        assert_eq!(event_ids(&rest), event_ids(&got[1..]), "types {types:?}");
    }

    // A live filtered stream skips the other types: the next STATUS_CHANGED comes next.
    let mut live = w
        .watch(
            &admin_token(),
            &all.last().unwrap().cursor,
            &[STATUS_CHANGED],
        )
        .await;
    w.update(
        &rep_token(),
        pb::Opportunity {
            id: two.id.clone(),
            next_step: "Visit".to_owned(),
            ..Default::default()
        },
        &["next_step"],
    )
    .await;
    w.create(&rep_token(), "Three").await;
    let response = w.change(&rep_token(), &two.id, LOST).await;
    let event = live.next().await;
    assert_eq!(event.r#type, STATUS_CHANGED);
    assert_eq!(event.status_change, response.status_change);
}

#[tokio::test]
async fn a_malformed_after_cursor_is_invalid_argument() {
    let mut w = World::new().await;
    w.create(&rep_token(), "One").await;
    let real = w.watch(&admin_token(), "", &[]).await.next().await.cursor;
    for cursor in [
        "nope",
        "%%%",
        "ev1:1",
        "not a cursor this stream sent",
        &format!("{real}!"),
    ] {
        expect_invalid(
            w.try_watch(&admin_token(), cursor, &[]).await.map(|_| ()),
            "after_cursor",
        );
    }
}

#[tokio::test]
async fn an_unspecified_or_unknown_event_type_is_invalid_argument() {
    let w = World::new().await;
    expect_invalid(
        w.try_watch(
            &admin_token(),
            "",
            &[pb::OpportunityEventType::Unspecified as i32],
        )
        .await
        .map(|_| ()),
        "types[0]",
    );
    expect_invalid(
        w.try_watch(&admin_token(), "", &[CREATED, 0])
            .await
            .map(|_| ()),
        "types[1]",
    );
    expect_code(
        w.try_watch(&admin_token(), "", &[STATUS_CHANGED, 99])
            .await
            .map(|_| ()),
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn watching_without_a_token_is_unauthenticated() {
    let w = World::new().await;
    let result = w
        .opps
        .clone()
        .watch_opportunity_events(pb::WatchOpportunityEventsRequest::default())
        .await
        .map(|_| ());
    expect_code(result, Code::Unauthenticated);
    expect_code(
        w.try_watch("not-a-token", "", &[]).await.map(|_| ()),
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn watching_without_a_sales_role_is_permission_denied() {
    let mut w = World::new().await;
    w.create(&rep_token(), "One").await;
    for roles in [&[][..], &["auditor"][..]] {
        expect_code(
            w.try_watch(&token("nobody", "No Role", "north", roles), "", &[])
                .await
                .map(|_| ()),
            Code::PermissionDenied,
        );
    }
}

// =======================================================================================
// Visibility (R12)
// =======================================================================================

/// Who watches in the visibility tests.
const VIEWERS: [&str; 6] = ["rep-a1", "rep-a2", "rep-b1", "mgr-a", "mgr-b", "admin-1"];

fn viewer_token(viewer: &str) -> String {
    match viewer {
        "rep-a1" => rep_token(),
        "rep-a2" => rep_a2_token(),
        "rep-b1" => rep_b1_token(),
        "mgr-a" => manager_token(),
        "mgr-b" => manager_b_token(),
        "admin-1" => admin_token(),
        other => panic!("no viewer {other}"),
    }
}

/// The events written so far, each with the viewers who may see it.
struct Log {
    rows: Vec<Row>,
    events: Vec<(String, BTreeSet<&'static str>)>,
}

impl Log {
    /// Records the one event the last write added, seen by `viewers` (the admin always).
    async fn add(&mut self, w: &World, viewers: &[&'static str]) -> String {
        let event_id = w.one_new(&mut self.rows).await;
        let mut set: BTreeSet<&'static str> = viewers.iter().copied().collect();
        set.insert("admin-1");
        self.events.push((event_id.clone(), set));
        event_id
    }

    /// What `viewer` should receive, in order, up to and including `last`.
    fn expected(&self, viewer: &str, last: &str) -> Vec<String> {
        let end = self
            .events
            .iter()
            .position(|(id, _)| id == last)
            .expect("a logged event");
        self.events[..=end]
            .iter()
            .filter(|(_, viewers)| viewers.contains(viewer))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[tokio::test]
async fn r12_each_stream_has_only_the_events_its_caller_may_see() {
    let mut w = World::new().await;
    // Live watchers, open before anything is written (opening records each viewer).
    let mut live = BTreeMap::new();
    for viewer in VIEWERS {
        live.insert(viewer, w.watch(&viewer_token(viewer), "", &[]).await);
    }
    let mut log = Log {
        rows: w.rows().await,
        events: Vec::new(),
    };
    let (a1, a2, b1, ma, mb) = (
        rep_token(),
        rep_a2_token(),
        rep_b1_token(),
        manager_token(),
        manager_b_token(),
    );
    let admin = admin_token();

    let o1 = w.create(&a1, "O1 of a1").await;
    log.add(&w, &["rep-a1", "mgr-a"]).await;
    let o2 = w.create(&a2, "O2 of a2").await;
    log.add(&w, &["rep-a2", "mgr-a"]).await;
    let o3 = w.create(&b1, "O3 of b1").await;
    log.add(&w, &["rep-b1", "mgr-b"]).await;
    let o4 = w.create(&ma, "O4 of mgr-a").await;
    log.add(&w, &["mgr-a"]).await;
    let o5 = w.create(&mb, "O5 of mgr-b").await;
    log.add(&w, &["mgr-b"]).await;
    let o6 = w.create(&a1, "O6 of a1").await;
    log.add(&w, &["rep-a1", "mgr-a"]).await;
    w.change(&a1, &o1.id, PRESENTED).await;
    log.add(&w, &["rep-a1", "mgr-a"]).await;

    // The admin reassigns O1 from a1 to a2: both see that event; later ones only a2.
    let moved = w
        .update(
            &admin,
            pb::Opportunity {
                id: o1.id.clone(),
                owner_id: "rep-a2".to_owned(),
                ..Default::default()
            },
            &["owner_id"],
        )
        .await;
    assert_eq!(moved.owner_id, "rep-a2");
    log.add(&w, &["rep-a1", "rep-a2", "mgr-a"]).await;
    w.change(&a2, &o1.id, QUOTATION).await;
    log.add(&w, &["rep-a2", "mgr-a"]).await;
    w.update(
        &a2,
        pb::Opportunity {
            id: o1.id.clone(),
            title: "O1, now a2's".to_owned(),
            ..Default::default()
        },
        &["title"],
    )
    .await;
    log.add(&w, &["rep-a2", "mgr-a"]).await;
    // A manager creates for a rep of their team.
    let o7 = w.create_for(&ma, "O7 of a1, by mgr-a", "rep-a1").await;
    log.add(&w, &["rep-a1", "mgr-a"]).await;
    // The admin moves O6 to the other team and closes it in the same call.
    w.update(
        &admin,
        pb::Opportunity {
            id: o6.id.clone(),
            owner_id: "rep-b1".to_owned(),
            status_id: WON.to_owned(),
            ..Default::default()
        },
        &["owner_id", "status_id"],
    )
    .await;
    log.add(&w, &["rep-a1", "rep-b1", "mgr-a", "mgr-b"]).await;
    w.change(&b1, &o6.id, LOST).await;
    log.add(&w, &["rep-b1", "mgr-b"]).await;
    // A manager changes a team member's opportunity.
    w.change(&ma, &o2.id, SENT_EMAIL).await;
    log.add(&w, &["rep-a2", "mgr-a"]).await;

    // Two rounds of one write per viewer; each viewer reads up to its second-round one.
    let mut last = BTreeMap::new();
    for status in [PRESENTED, QUOTATION] {
        w.change(&a1, &o7.id, status).await;
        last.insert("rep-a1", log.add(&w, &["rep-a1", "mgr-a"]).await);
        w.change(&a2, &o2.id, status).await;
        last.insert("rep-a2", log.add(&w, &["rep-a2", "mgr-a"]).await);
        w.change(&b1, &o3.id, status).await;
        last.insert("rep-b1", log.add(&w, &["rep-b1", "mgr-b"]).await);
        w.change(&ma, &o4.id, status).await;
        last.insert("mgr-a", log.add(&w, &["mgr-a"]).await);
        w.change(&mb, &o5.id, status).await;
        last.insert("mgr-b", log.add(&w, &["mgr-b"]).await);
    }
    w.change(&admin, &o3.id, CONSIDERING).await;
    last.insert("admin-1", log.add(&w, &["rep-b1", "mgr-b"]).await);

    for viewer in VIEWERS {
        let expected = log.expected(viewer, &last[viewer]);
        let got = live.get_mut(viewer).unwrap().until(&last[viewer]).await;
        assert_eq!(event_ids(&got), expected, "{viewer}'s live stream");
        // The same from a replay.
        let replayed = w
            .watch(&viewer_token(viewer), "", &[])
            .await
            .until(&last[viewer])
            .await;
        assert_eq!(event_ids(&replayed), expected, "{viewer}'s replay");
    }
    assert_eq!(
        log.expected("admin-1", &last["admin-1"]).len(),
        log.rows.len(),
        "the admin sees everything"
    );
}

#[tokio::test]
async fn r12_a_reassignment_is_seen_by_both_owners_and_later_events_only_by_the_new_one() {
    let mut w = World::new().await;
    let o = w.create(&rep_token(), "Changes hands").await;
    let marker_a1 = w.create(&rep_token(), "Stays with a1").await;
    let marker_a2 = w.create(&rep_a2_token(), "a2's own").await;
    let rows = w.rows().await;
    let mut a1 = w.watch(&rep_token(), "", &[]).await;
    let mut a2 = w.watch(&rep_a2_token(), "", &[]).await;
    assert_eq!(a1.take(2).await.len(), 2);
    assert_eq!(a2.take(1).await.len(), 1);

    let reassigned = w
        .update(
            &admin_token(),
            pb::Opportunity {
                id: o.id.clone(),
                owner_id: "rep-a2".to_owned(),
                ..Default::default()
            },
            &["owner_id"],
        )
        .await;
    let added = w.rows_since(&rows).await;
    assert_eq!(added.len(), 1);
    for watcher in [&mut a1, &mut a2] {
        let event = watcher.next().await;
        assert_eq!(event.event_id, added[0].1);
        assert_eq!(event.r#type, UPDATED);
        assert_eq!(event.actor, actor("admin-1", "Araya Admin"));
        assert_eq!(event.before.as_ref().unwrap().owner_id, "rep-a1");
        assert_eq!(event.after.as_ref(), Some(&as_in_events(&reassigned)));
    }

    // Later events of it: a2 only. Then a marker for each: a1's next event is its marker.
    let later = w.change(&rep_a2_token(), &o.id, PRESENTED).await;
    expect_code(
        w.try_change(&rep_token(), change_request(&o.id, QUOTATION))
            .await,
        Code::PermissionDenied,
    );
    w.change(&rep_token(), &marker_a1.id, PRESENTED).await;
    w.change(&rep_a2_token(), &marker_a2.id, PRESENTED).await;
    let event = a2.next().await;
    assert_eq!(event.opportunity_id, o.id);
    assert_eq!(event.status_change, later.status_change);
    assert_eq!(a2.next().await.opportunity_id, marker_a2.id);
    assert_eq!(a1.next().await.opportunity_id, marker_a1.id);
}

// =======================================================================================
// Commit order
// =======================================================================================

/// The delivery position of an event: `None` while the sequencer has not placed it.
async fn position_of(db: &PgPool, event_id: &str) -> Option<i64> {
    sqlx::query_scalar("select seq from opportunity_events where event_id = $1::uuid")
        .bind(event_id)
        .fetch_one(db)
        .await
        .expect("read the event's position")
}

/// A writer holds its transaction open after writing its event (with a lower id); another
/// caller's write meanwhile commits at once (writers never wait for each other: no global
/// lock) and is placed and delivered at once (it does not wait for the open transaction).
/// The held event, committed later, is placed after it and delivered next: a reader past
/// the higher id never skips it, and positions follow commit order. Shown directly with two
/// connections and a sequencer pass of the test's own, so nothing depends on timing.
#[tokio::test]
async fn an_event_committed_late_with_a_lower_id_is_not_skipped() {
    let mut w = World::new().await;
    let early = w.create(&rep_token(), "Held open").await;
    let late = w.create(&rep_b1_token(), "Changes meanwhile").await;
    let before_rows = w.rows().await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(watcher.take(before_rows.len()).await.len(), 2);

    // A writer that follows the protocol of events.rs: the row lock, the next version, its
    // event, kept open.
    let raw_event_id = Uuid::new_v4();
    let raw_after = w.get(&admin_token(), &early.id).await;
    let version = raw_after.version + 1;
    let payload = pb::OpportunityEvent {
        event_id: raw_event_id.to_string(),
        cursor: String::new(),
        r#type: UPDATED,
        opportunity_id: early.id.clone(),
        occur_time: raw_after.update_time,
        actor: actor("raw-writer", "Raw Writer"),
        before: Some(raw_after.clone()),
        after: Some(pb::Opportunity {
            version,
            ..raw_after.clone()
        }),
        status_change: None,
        request_id: String::new(),
        version,
    }
    .encode_to_vec();
    let early_id = Uuid::parse_str(&early.id).unwrap();
    let mut raw = w.db().begin().await.expect("begin the raw transaction");
    sqlx::query("update opportunities set version = $2 where id = $1")
        .bind(early_id)
        .bind(version)
        .execute(&mut *raw)
        .await
        .expect("lock the opportunity and move its version");
    let raw_id: i64 = sqlx::query_scalar(
        "insert into opportunity_events
             (event_id, type, opportunity_id, occur_time, actor_id, actor_name, request_id,
              owner_id, previous_owner_id, payload, version)
         values ($1, 'UPDATED', $2, now(), 'raw-writer', 'Raw Writer', null, $3, null, $4, $5)
         returning id",
    )
    .bind(raw_event_id)
    .bind(early_id)
    .bind(&raw_after.owner_id)
    .bind(&payload)
    .bind(version)
    .fetch_one(&mut *raw)
    .await
    .expect("insert the raw event");

    // A real call on another opportunity now: it completes while the raw one is open.
    let response = tokio::time::timeout(
        WAIT,
        w.opps.change_opportunity_status(authed(
            &rep_b1_token(),
            change_request(&late.id, PRESENTED),
        )),
    )
    .await
    .expect("the write does not wait for another writer's open transaction")
    .expect("the call succeeds")
    .into_inner();
    let late_event: String = sqlx::query_scalar(
        "select event_id::text from opportunity_events
         where opportunity_id = $1::uuid and type = 'STATUS_CHANGED'",
    )
    .bind(&late.id)
    .fetch_one(w.db())
    .await
    .expect("the call's event");
    assert!(w.ids_by_event().await[&late_event] > raw_id, "a higher id");
    // Committed, so placed, while the raw transaction with the lower id is still open.
    let mut sequencer = w.db().acquire().await.expect("a connection");
    salesopp_outbox::sequencer::sequence(&mut sequencer)
        .await
        .expect("a sequencer pass");
    assert!(position_of(w.db(), &late_event).await.is_some());
    assert_eq!(
        w.rows().await.len(),
        before_rows.len() + 1,
        "the raw row is not visible"
    );
    let first = watcher.next().await;
    assert_eq!(
        first.event_id, late_event,
        "the committed call's event first"
    );
    assert_eq!(first.opportunity_id, late.id);
    assert_eq!(first.r#type, STATUS_CHANGED);
    assert_eq!(first.status_change, response.status_change);

    raw.commit().await.expect("commit the raw transaction");
    let second = watcher.next().await;
    assert_eq!(
        second.event_id,
        raw_event_id.to_string(),
        "the raw event, with the lower id, is not skipped"
    );
    assert_eq!(second.opportunity_id, early.id);
    assert_eq!(second.version, version);
    assert!(
        position_of(w.db(), &first.event_id).await < position_of(w.db(), &second.event_id).await,
        "positions follow commit order"
    );
    // Resuming after the call's event gets the raw one.
    let mut resumed = w.watch(&admin_token(), &first.cursor, &[]).await;
    assert_eq!(resumed.next().await.event_id, second.event_id);
}

/// A committed write wakes the sequencer: its process sends `NOTIFY salesopp_events` once
/// the write has committed (`salesopp_outbox::wake`), and the write's own statements notify
/// nobody (a `NOTIFY` in the transaction would make every writer's commit wait for the
/// others'). Without the wake-up no notification comes at all, and the wait fails.
#[tokio::test]
async fn a_committed_write_wakes_the_sequencer_after_its_commit() {
    let mut w = World::new().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(w.db())
        .await
        .expect("a listener");
    listener
        .listen(salesopp_outbox::sequencer::CHANNEL)
        .await
        .expect("listen to the sequencer's channel");
    w.create(&rep_token(), "Wakes the sequencer").await;
    tokio::time::timeout(WAIT, listener.recv())
        .await
        .expect("a wake-up after the commit")
        .expect("the notification");
    assert!(
        !salesopp_outbox::write::APPEND_SQL.contains("notify"),
        "the event insert notifies nobody in the write's transaction"
    );
}

/// Writes one event of `opportunity` at its next version in `tx` (which takes the row lock),
/// as events.rs does; returns the event id.
async fn raw_event(
    tx: &mut sqlx::PgConnection,
    opportunity: &pb::Opportunity,
    version: i64,
) -> String {
    let event_id = Uuid::new_v4();
    let payload = pb::OpportunityEvent {
        event_id: event_id.to_string(),
        r#type: UPDATED,
        opportunity_id: opportunity.id.clone(),
        occur_time: opportunity.update_time,
        actor: actor("raw-writer", "Raw Writer"),
        before: Some(opportunity.clone()),
        after: Some(pb::Opportunity {
            version,
            ..opportunity.clone()
        }),
        version,
        ..Default::default()
    }
    .encode_to_vec();
    let id = Uuid::parse_str(&opportunity.id).unwrap();
    sqlx::query("update opportunities set version = $2 where id = $1 and version = $2 - 1")
        .bind(id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .expect("lock the opportunity at its version");
    sqlx::query(
        "insert into opportunity_events
             (event_id, type, opportunity_id, occur_time, actor_id, actor_name, owner_id,
              payload, version)
         values ($1, 'UPDATED', $2, now(), 'raw-writer', 'Raw Writer', $3, $4, $5)",
    )
    .bind(event_id)
    .bind(id)
    .bind(&opportunity.owner_id)
    .bind(&payload)
    .bind(version)
    .execute(&mut *tx)
    .await
    .expect("insert the event");
    event_id.to_string()
}

/// The trap of ordering by transaction id: a transaction id is assigned at a transaction's
/// first write, not at its commit, so two writers of one opportunity can take their ids in
/// one order and its row lock in the other (as a status deletion moving many opportunities
/// always can). Version n+1 then has the lower transaction id; it is still delivered after
/// version n.
#[tokio::test]
async fn r10_versions_are_delivered_in_order_when_transaction_ids_are_not() {
    let mut w = World::new().await;
    let o = w.create(&rep_token(), "Contended").await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(watcher.next().await.version, 1);

    // The older transaction takes its id first (its first write is elsewhere)...
    let mut older = w.db().begin().await.expect("begin the older writer");
    let older_xid: String = sqlx::query_scalar("select pg_current_xact_id()::text")
        .fetch_one(&mut *older)
        .await
        .expect("assign the older transaction id");
    // ...the younger takes the row lock, writes version 2 and commits...
    let mut younger = w.db().begin().await.expect("begin the younger writer");
    let younger_event = raw_event(&mut younger, &o, 2).await;
    let younger_xid: String = sqlx::query_scalar("select pg_current_xact_id()::text")
        .fetch_one(&mut *younger)
        .await
        .expect("the younger transaction id");
    assert!(older_xid.parse::<u64>().unwrap() < younger_xid.parse::<u64>().unwrap());
    younger.commit().await.expect("commit version 2");
    // ...then the older one writes version 3.
    let older_event = raw_event(&mut older, &o, 3).await;
    older.commit().await.expect("commit version 3");

    let second = watcher.next().await;
    let third = watcher.next().await;
    assert_eq!(
        (second.event_id.as_str(), second.version),
        (younger_event.as_str(), 2)
    );
    assert_eq!(
        (third.event_id.as_str(), third.version),
        (older_event.as_str(), 3)
    );
    let positions = w.positions_by_event().await;
    assert!(positions[&younger_event] < positions[&older_event]);
}

/// Many writers on few opportunities, a status deletion (R6) moving them meanwhile, and
/// watchers from the start, one resuming from its cursor now and then: every watcher gets
/// every event, per opportunity in version order with no gap, none at or before a cursor
/// it was past.
#[tokio::test]
async fn r06_r10_concurrent_writers_and_a_deletion_keep_versions_in_order() {
    const OPPORTUNITIES: usize = 4;
    const WRITERS: usize = 12;
    const CHANGES: usize = 6;
    let mut w = World::new().await;
    let doomed = w
        .statuses
        .create_status(authed(
            &admin_token(),
            salesopp_proto::statusconfig::v1::CreateStatusRequest {
                status: Some(salesopp_proto::statusconfig::v1::OpportunityStatus {
                    display_name: "Doomed".into(),
                    probability: 33,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create a status to delete")
        .into_inner();
    let mut created = Vec::new();
    for i in 0..OPPORTUNITIES {
        created.push(w.create(&admin_token(), &format!("Shared {i}")).await);
    }
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let mut events = watcher.take(OPPORTUNITIES).await;
    let statuses = [PRESENTED, SENT_EMAIL, doomed.id.as_str(), QUOTATION];
    let writers = (0..WRITERS).map(|writer| {
        let mut opps = w.opps.clone();
        let ids: Vec<String> = created.iter().map(|o| o.id.clone()).collect();
        let statuses: Vec<String> = statuses.iter().map(|s| (*s).to_owned()).collect();
        async move {
            for change in 0..CHANGES {
                let id = &ids[(writer + change) % ids.len()];
                let status = &statuses[(writer * 7 + change) % statuses.len()];
                // A write may race the deletion into an archived status: refused, no event.
                let _ = opps
                    .change_opportunity_status(authed(&admin_token(), change_request(id, status)))
                    .await;
            }
        }
    });
    let mut statuses_api = w.statuses.clone();
    let doomed_id = doomed.id.clone();
    let deletion = async move {
        statuses_api
            .delete_status(authed(
                &admin_token(),
                salesopp_proto::statusconfig::v1::DeleteStatusRequest {
                    id: doomed_id,
                    replacement_status_id: CONSIDERING.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("delete the status, moving its opportunities")
    };
    futures::join!(join_all(writers), deletion);
    let total = w.rows().await.len();
    let mut resumed_at = Vec::new();
    while events.len() < total {
        // Now and then reconnect from the last cursor, as a consumer restarting would.
        if events.len() % 9 == 0 {
            let cursor = events.last().map(|e| e.cursor.clone()).unwrap_or_default();
            resumed_at.push(events.len());
            watcher = w.watch(&admin_token(), &cursor, &[]).await;
        }
        events.push(watcher.next().await);
    }
    assert_eq!(events.len(), total);
    assert_versions_in_order(&events);
    let unique: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(unique.len(), total, "nothing twice after a resume");
    assert!(!resumed_at.is_empty());
}

#[tokio::test]
async fn concurrent_writers_none_missing_in_strictly_increasing_order() {
    const WRITERS: usize = 10;
    const CHANGES: usize = 5;
    let mut w = World::new().await;
    let tokens: Vec<String> = (0..WRITERS)
        .map(|i| {
            token(
                &format!("rep-w{i}"),
                &format!("Writer {i}"),
                "west",
                &["sales_rep"],
            )
        })
        .collect();
    let mut first = w.watch(&admin_token(), "", &[]).await;
    let mut second = w.watch(&manager_token(), "", &[]).await;
    let mut third = w.watch(&admin_token(), "", &[]).await;

    let writers = tokens.iter().enumerate().map(|(i, token)| {
        let mut opps = w.opps.clone();
        let customer = w.customer.clone();
        let token = token.clone();
        async move {
            let created = opps
                .create_opportunity(authed(
                    &token,
                    pb::CreateOpportunityRequest {
                        opportunity: Some(draft(&customer, &format!("Writer {i}'s"))),
                        request_id: rid(),
                        note: String::new(),
                    },
                ))
                .await
                .expect("create")
                .into_inner();
            // No status equals the one before it (INTERESTED, where it starts, is left out),
            // so every change writes one event.
            let path = [PRESENTED, QUOTATION, LOST, SENT_EMAIL, WON];
            for status in path.iter().cycle().skip(i).take(CHANGES) {
                opps.change_opportunity_status(authed(&token, change_request(&created.id, status)))
                    .await
                    .expect("change");
            }
            opps.update_opportunity(authed(
                &token,
                update_request(
                    pb::Opportunity {
                        id: created.id.clone(),
                        next_step: format!("done by writer {i}"),
                        ..Default::default()
                    },
                    &["next_step"],
                    "",
                ),
            ))
            .await
            .expect("update");
        }
    });
    join_all(writers).await;

    let rows = w.rows().await;
    assert_eq!(rows.len(), WRITERS * (CHANGES + 2));
    let first_events = first.take(rows.len()).await;
    let third_events = third.take(rows.len()).await;
    // Every event delivered is placed; the table in position order is what was delivered.
    let positions = w.positions_by_event().await;
    let table: Vec<String> = w
        .delivered_rows()
        .await
        .iter()
        .map(|r| r.1.clone())
        .collect();
    for events in [first_events.clone(), third_events] {
        assert_eq!(event_ids(&events), table, "every event, in position order");
        let received: Vec<i64> = events.iter().map(|e| positions[&e.event_id]).collect();
        assert!(
            received.windows(2).all(|pair| pair[0] < pair[1]),
            "positions strictly increase: {received:?}"
        );
        assert_versions_in_order(&events);
        let cursors: BTreeSet<&str> = events.iter().map(|e| e.cursor.as_str()).collect();
        assert_eq!(cursors.len(), events.len());
    }
    // The manager of another team sees none of the west team's events: its next event is
    // its own.
    let own = w.create(&manager_token(), "Manager's own").await;
    let event = second.next().await;
    assert_eq!(event.opportunity_id, own.id);
    // Cursors taken along the way resume right after their events.
    for index in (0..first_events.len() - 1).step_by(7) {
        let mut resumed = w
            .watch(&admin_token(), &first_events[index].cursor, &[])
            .await;
        assert_eq!(
            resumed.next().await.event_id,
            first_events[index + 1].event_id
        );
    }
}

#[tokio::test]
async fn writers_racing_a_live_watcher_are_all_delivered_in_position_order() {
    // The same guarantee while the watcher polls during the writes, many rounds over: any
    // event placed out of order would be skipped and the comparison with the table fail.
    const WRITERS: usize = 10;
    const ROUNDS: usize = 4;
    let mut w = World::new().await;
    let mut created = Vec::new();
    for i in 0..WRITERS {
        created.push(w.create(&admin_token(), &format!("Racer {i}")).await);
    }
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let mut received = watcher.take(WRITERS).await;
    let statuses = [PRESENTED, SENT_EMAIL, QUOTATION, CONSIDERING];
    for round in 0..ROUNDS {
        let writes = created.iter().enumerate().map(|(i, o)| {
            let mut opps = w.opps.clone();
            let status = statuses[(round + i + 1) % statuses.len()];
            let id = o.id.clone();
            async move {
                opps.change_opportunity_status(authed(&admin_token(), change_request(&id, status)))
                    .await
                    .expect("change")
            }
        });
        let (responses, events) = futures::join!(join_all(writes), watcher.take(WRITERS));
        assert_eq!(responses.len(), WRITERS);
        received.extend(events);
    }
    let rows = w.delivered_rows().await;
    assert_eq!(rows.len(), WRITERS * (ROUNDS + 1));
    assert_eq!(
        event_ids(&received),
        rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>()
    );
    assert_versions_in_order(&received);
}

/// Per opportunity, the versions delivered are 1, 2, 3... with no gap and no repeat.
#[track_caller]
fn assert_versions_in_order(events: &[pb::OpportunityEvent]) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for event in events {
        let previous = last
            .insert(&event.opportunity_id, event.version)
            .unwrap_or(0);
        assert_eq!(
            event.version,
            previous + 1,
            "opportunity {} went from version {previous} to {}",
            event.opportunity_id,
            event.version
        );
        assert_eq!(
            event.after.as_ref().map(|a| a.version),
            Some(event.version),
            "the event's after has its version"
        );
    }
}

// =======================================================================================
// occur_time
// =======================================================================================

#[tokio::test]
async fn occur_time_is_the_update_time_of_after_for_every_type() {
    let mut w = World::new().await;
    let created = w.create(&rep_token(), "Timed").await;
    w.change(&rep_token(), &created.id, PRESENTED).await;
    w.update(
        &rep_token(),
        pb::Opportunity {
            id: created.id.clone(),
            title: "Timed, renamed".to_owned(),
            ..Default::default()
        },
        &["title"],
    )
    .await;
    let events = w.watch(&admin_token(), "", &[]).await.take(3).await;
    for event in &events {
        assert_eq!(
            micros(&event.occur_time),
            micros(&event.after.as_ref().unwrap().update_time),
            "type {}",
            event.r#type
        );
    }
}

// =======================================================================================
// Where a stream starts, its filters, heartbeats, retention, the cap, slow consumers and
// shutdown (DESIGN.md "Events")
// =======================================================================================

/// Streams with a short heartbeat, so a test sees one soon after the stream goes quiet.
fn quick_heartbeats() -> StreamConfig {
    StreamConfig {
        heartbeat: Duration::from_millis(200),
        ..StreamConfig::default()
    }
}

impl World {
    async fn try_watch_with(
        &self,
        token: &str,
        request: pb::WatchOpportunityEventsRequest,
    ) -> Result<Watcher, Status> {
        self.opps
            .clone()
            .watch_opportunity_events(authed(token, request))
            .await
            .map(|response| Watcher {
                stream: response.into_inner(),
            })
    }

    async fn watch_with(&self, token: &str, request: pb::WatchOpportunityEventsRequest) -> Watcher {
        self.try_watch_with(token, request)
            .await
            .expect("watch opportunity events")
    }
}

impl Watcher {
    /// Every event until the first heartbeat whose cursor is at or past `position`: what
    /// the stream sent up to there, and nothing filtered in between is missed.
    async fn events_through(&mut self, position: i64) -> Vec<pb::OpportunityEvent> {
        let mut events = Vec::new();
        loop {
            match self.next_message().await {
                Kind::Event(event) => events.push(event),
                Kind::Heartbeat(heartbeat) => {
                    let at = salesopp_outbox::parse_cursor(&heartbeat.cursor).expect("a cursor");
                    if at >= position {
                        return events;
                    }
                }
            }
            assert!(events.len() < 10_000, "never got past position {position}");
        }
    }
}

fn start(start: Start) -> pb::WatchOpportunityEventsRequest {
    pb::WatchOpportunityEventsRequest {
        start: Some(start),
        ..Default::default()
    }
}

#[tokio::test]
async fn start_position_latest_sends_only_what_commits_after_it() {
    let mut w = World::with_streams(quick_heartbeats()).await;
    w.create(&rep_token(), "Before").await;
    let head = placed_head(w.db()).await;
    let mut latest = w
        .watch_with(
            &admin_token(),
            start(Start::StartPosition(StartPosition::Latest as i32)),
        )
        .await;
    // Its first heartbeat already carries the head: saving it resumes from now.
    let heartbeat = latest.next_heartbeat().await;
    assert_eq!(salesopp_outbox::parse_cursor(&heartbeat.cursor), Some(head));
    let after = w.create(&rep_token(), "After").await;
    let event = latest.next().await;
    assert_eq!(event.opportunity_id, after.id);
    assert_eq!(event.r#type, CREATED);
    // OLDEST (and no start at all) begin with the first event.
    for request in [
        start(Start::StartPosition(StartPosition::Oldest as i32)),
        pb::WatchOpportunityEventsRequest::default(),
    ] {
        let mut oldest = w.watch_with(&admin_token(), request).await;
        assert_eq!(oldest.next().await.after.unwrap().title, "Before");
    }
}

#[tokio::test]
async fn start_time_starts_with_the_events_that_occurred_at_or_after_it() {
    let mut w = World::new().await;
    let first = w.create(&rep_token(), "First").await;
    let second = w.create(&rep_token(), "Second").await;
    let third = w.create(&rep_token(), "Third").await;
    let mut stream = w
        .watch_with(
            &admin_token(),
            start(Start::StartTime(second.create_time.unwrap())),
        )
        .await;
    let events = stream.take(2).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.opportunity_id.as_str())
            .collect::<Vec<_>>(),
        [second.id.as_str(), third.id.as_str()],
        "from {} on, not {}",
        second.title,
        first.title
    );
    // A time after every event starts at the head.
    let mut later = w
        .watch_with(
            &admin_token(),
            start(Start::StartTime(Timestamp {
                seconds: third.create_time.unwrap().seconds + 3600,
                nanos: 0,
            })),
        )
        .await;
    let fourth = w.create(&rep_token(), "Fourth").await;
    assert_eq!(later.next().await.opportunity_id, fourth.id);
    // A time that is not one: INVALID_ARGUMENT on the field.
    expect_invalid(
        w.try_watch_with(
            &admin_token(),
            start(Start::StartTime(Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            })),
        )
        .await
        .map(|_| ()),
        "start_time.seconds",
    );
}

#[tokio::test]
async fn each_filter_sends_only_what_it_names_before_or_after_the_change() {
    let mut w = World::with_streams(quick_heartbeats()).await;
    let other_customer = w.customer(&admin_token(), "Other Customer").await.id;
    let ours = w.create(&rep_token(), "Ours").await; // rep-a1, our customer, INTERESTED
    let theirs = w.create(&rep_b1_token(), "Theirs").await; // rep-b1
    let mut elsewhere = draft(&other_customer, "Elsewhere");
    elsewhere.owner_id = String::new();
    let elsewhere = w
        .try_create_request(
            &rep_token(),
            pb::CreateOpportunityRequest {
                opportunity: Some(elsewhere),
                request_id: rid(),
                note: String::new(),
            },
        )
        .await
        .expect("create elsewhere");
    // Ours leaves INTERESTED; theirs enters QUOTATION.
    w.change(&rep_token(), &ours.id, PRESENTED).await;
    w.change(&rep_b1_token(), &theirs.id, QUOTATION).await;
    let head = placed_head(w.db()).await;

    let seen = |events: Vec<pb::OpportunityEvent>| {
        events
            .into_iter()
            .map(|e| (e.after.unwrap().title, e.r#type))
            .collect::<Vec<_>>()
    };
    type Case = (
        &'static str,
        pb::WatchOpportunityEventsRequest,
        Vec<(&'static str, i32)>,
    );
    let cases: [Case; 4] = [
        (
            "owner",
            pb::WatchOpportunityEventsRequest {
                owner_ids: vec!["rep-b1".into()],
                ..Default::default()
            },
            vec![("Theirs", CREATED), ("Theirs", STATUS_CHANGED)],
        ),
        (
            "customer",
            pb::WatchOpportunityEventsRequest {
                customer_ids: vec![other_customer.to_uppercase()],
                ..Default::default()
            },
            vec![("Elsewhere", CREATED)],
        ),
        (
            "status entered or left",
            pb::WatchOpportunityEventsRequest {
                status_ids: vec![PRESENTED.into(), QUOTATION.into()],
                ..Default::default()
            },
            vec![("Ours", STATUS_CHANGED), ("Theirs", STATUS_CHANGED)],
        ),
        (
            "status and type together",
            pb::WatchOpportunityEventsRequest {
                status_ids: vec![INTERESTED.into()],
                types: vec![CREATED],
                ..Default::default()
            },
            vec![
                ("Ours", CREATED),
                ("Theirs", CREATED),
                ("Elsewhere", CREATED),
            ],
        ),
    ];
    for (what, request, want) in cases {
        let mut stream = w.watch_with(&admin_token(), request).await;
        let got = seen(stream.events_through(head).await);
        let want: Vec<(String, i32)> = want.into_iter().map(|(t, k)| (t.to_owned(), k)).collect();
        assert_eq!(got, want, "{what}");
    }
    // A filter never widens what the caller may see (R12): rep-a1 asking for rep-b1's.
    let mut narrowed = w
        .watch_with(
            &rep_token(),
            pb::WatchOpportunityEventsRequest {
                owner_ids: vec!["rep-b1".into()],
                ..Default::default()
            },
        )
        .await;
    assert!(narrowed.events_through(head).await.is_empty());
    let _ = elsewhere;
}

#[tokio::test]
async fn heartbeats_carry_the_position_on_an_idle_and_on_a_filtered_stream() {
    let mut w = World::with_streams(quick_heartbeats()).await;
    // Idle: nothing was ever written; the heartbeat's cursor resumes from the start.
    let mut idle = w.watch(&admin_token(), "", &[]).await;
    let beat = idle.next_heartbeat().await;
    assert_eq!(salesopp_outbox::parse_cursor(&beat.cursor), Some(0));
    assert!(beat.time.is_some());
    // Filtered: only UPDATED is asked for, three CREATED go by; the heartbeat moves past
    // them, so a consumer that saves it does not read them again.
    let mut filtered = w.watch(&admin_token(), "", &[UPDATED]).await;
    for title in ["One", "Two", "Three"] {
        w.create(&rep_token(), title).await;
    }
    let head = placed_head(w.db()).await;
    assert!(filtered.events_through(head).await.is_empty());
    let saved = filtered.next_heartbeat().await.cursor;
    assert_eq!(salesopp_outbox::parse_cursor(&saved), Some(head));
    let one = w.rows().await[0].3.clone();
    w.update(
        &rep_token(),
        pb::Opportunity {
            id: one.clone(),
            title: "One, renamed".into(),
            ..Default::default()
        },
        &["title"],
    )
    .await;
    let mut resumed = w.watch(&admin_token(), &saved, &[]).await;
    let next = resumed.next().await;
    assert_eq!((next.opportunity_id, next.r#type), (one, UPDATED));
    // The idle stream saw the same events as they came.
    assert_eq!(idle.take(4).await.len(), 4);
}

#[tokio::test]
async fn retention_deletes_old_events_and_records_and_an_expired_cursor_is_out_of_range() {
    use salesopp_outbox::retention::{Retention, Swept, sweep};
    use tonic_types::StatusExt as _;
    let mut w = World::new().await;
    let first = w.create(&rep_token(), "Old one").await;
    w.create(&rep_token(), "Old two").await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    let old = watcher.take(2).await;
    let records: i64 = sqlx::query_scalar("select count(*) from idempotency_records")
        .fetch_one(w.db())
        .await
        .unwrap();
    assert!(records >= 2, "the creates' request ids are recorded");

    // Forty days later, as the sweep's clock says; two replicas sweep at once.
    let later = chrono::Utc::now() + chrono::Duration::days(40);
    let retention = Retention {
        batch: 1,
        ..Retention::default()
    };
    let (a, b) = tokio::join!(
        sweep(w.db(), &retention, later),
        sweep(w.db(), &retention, later)
    );
    let (a, b) = (a.expect("sweep a"), b.expect("sweep b"));
    assert_eq!(a.events + b.events, 2, "every event, once: {a:?} {b:?}");
    assert!(a.idempotency_records + b.idempotency_records >= records as u64);
    // Nothing newer than the retention goes: a sweep as of now deletes nothing more.
    let fresh = w.create(&rep_token(), "Fresh").await;
    assert_eq!(
        sweep(w.db(), &Retention::default(), chrono::Utc::now())
            .await
            .unwrap(),
        Swept::default()
    );

    // The first event's cursor is older than what is kept: OUT_OF_RANGE, with where to go.
    let expired = w
        .try_watch(&admin_token(), &old[0].cursor, &[])
        .await
        .map(|_| ())
        .expect_err("an expired cursor");
    assert_eq!(expired.code(), Code::OutOfRange, "{expired:?}");
    let info = expired
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "CURSOR_EXPIRED");
    let oldest = info.metadata["oldest_cursor"].clone();
    // So is a start_time of that age.
    let too_old = w
        .try_watch_with(
            &admin_token(),
            start(Start::StartTime(first.create_time.unwrap())),
        )
        .await
        .map(|_| ())
        .expect_err("an expired start_time");
    assert_eq!(too_old.code(), Code::OutOfRange);
    // From the oldest cursor, and from OLDEST, the stream goes on with what is kept.
    let mut resumed = w.watch(&admin_token(), &oldest, &[]).await;
    assert_eq!(resumed.next().await.opportunity_id, fresh.id);
    let mut from_oldest = w.watch(&admin_token(), "", &[]).await;
    assert_eq!(from_oldest.next().await.opportunity_id, fresh.id);
    // A stream already open past the deleted events goes on undisturbed.
    assert_eq!(watcher.next().await.opportunity_id, fresh.id);
}

#[tokio::test]
async fn a_caller_holds_at_most_the_configured_number_of_streams() {
    let w = World::with_streams(StreamConfig {
        streams_per_caller: 2,
        ..StreamConfig::default()
    })
    .await;
    let one = w.watch(&rep_token(), "", &[]).await;
    let _two = w.watch(&rep_token(), "", &[]).await;
    let refused = w
        .try_watch(&rep_token(), "", &[])
        .await
        .map(|_| ())
        .expect_err("a third stream");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    {
        use tonic_types::StatusExt as _;
        let info = refused
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.reason, "TOO_MANY_STREAMS");
    }
    // Another caller is not counted against this one.
    let _other = w.watch(&rep_b1_token(), "", &[]).await;
    // Closing one frees its place (the server notices the stream went away).
    drop(one);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match w.try_watch(&rep_token(), "", &[]).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place is never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

#[tokio::test]
async fn a_slow_consumer_falls_back_to_the_database_and_misses_nothing() {
    let mut w = World::new().await;
    // Opened and not read: its buffers fill while the tail publishes more pages than it
    // keeps, one per write, so the stream loses its place in the fan-out.
    let mut slow = w.watch(&admin_token(), "", &[]).await;
    let mut fast = w.watch(&admin_token(), "", &[]).await;
    let writes = salesopp_outbox::tail::CAPACITY + 72;
    let mut created = Vec::new();
    for n in 0..writes {
        let opportunity = w.create(&rep_token(), &format!("Deal {n}")).await;
        // The fast one keeps up, so every write is its own page of the tail.
        assert_eq!(fast.next().await.opportunity_id, opportunity.id);
        created.push(opportunity.id);
    }
    let received: Vec<String> = slow
        .take(writes)
        .await
        .into_iter()
        .map(|e| e.opportunity_id)
        .collect();
    assert_eq!(received, created, "every event, once, in order");
}

#[tokio::test]
async fn open_streams_end_with_unavailable_when_the_server_stops() {
    use tonic_types::StatusExt as _;
    let mut w = World::new().await;
    w.create(&rep_token(), "One").await;
    let mut watcher = w.watch(&admin_token(), "", &[]).await;
    watcher.next().await;
    let stopped = tokio::spawn(async move {
        let mut suite = w.world.suite;
        suite.stop().await
    });
    let end = loop {
        match tokio::time::timeout(WAIT, watcher.stream.message()).await {
            Err(_) => panic!("the stream outlived the shutdown"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let info = end
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "SERVER_STOPPING");
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("the server stops within its grace period")
        .expect("the stop task")
        .expect("a clean stop");
}

/// Fifty writers at once (several on the same opportunities, five of them holding their
/// transaction open after writing their event until other writers wait for it or overtake
/// it) and three consumers, one of which reconnects now and then with its last cursor: every
/// consumer gets every committed event, per opportunity in version order with no gap, and
/// never one at or before a position it was already past.
#[tokio::test]
async fn fifty_writers_some_holding_their_transaction_and_three_consumers_miss_nothing() {
    const SHARED: usize = 6;
    const WRITERS: usize = 45;
    const HOLDERS: usize = 5;
    const WRITES: usize = 6;
    let mut w = World::new().await;
    let mut shared = Vec::new();
    for i in 0..SHARED {
        shared.push(w.create(&admin_token(), &format!("Shared {i}")).await);
    }
    let mut own = Vec::new();
    for i in 0..HOLDERS {
        own.push(w.create(&admin_token(), &format!("Held {i}")).await);
    }

    // The consumers, from the oldest event, until told how many events there are.
    let (target_tx, target_rx) = tokio::sync::watch::channel(usize::MAX);
    let consumers: Vec<_> = (0..3)
        .map(|consumer| {
            let opps = w.opps.clone();
            let mut target = target_rx.clone();
            tokio::spawn(async move {
                let open = |cursor: String| {
                    let mut opps = opps.clone();
                    async move {
                        opps.watch_opportunity_events(authed(
                            &admin_token(),
                            pb::WatchOpportunityEventsRequest {
                                start: Some(Start::AfterCursor(cursor)),
                                ..Default::default()
                            },
                        ))
                        .await
                        .expect("watch")
                        .into_inner()
                    }
                };
                let mut stream = open(String::new()).await;
                let mut events: Vec<pb::OpportunityEvent> = Vec::new();
                let mut reconnects = 0;
                while events.len() < *target.borrow_and_update() {
                    let message = tokio::select! {
                        message = tokio::time::timeout(WAIT, stream.message()) => message,
                        _ = target.changed() => continue,
                    };
                    match message.expect("a message within the wait") {
                        Ok(Some(pb::WatchOpportunityEventsResponse {
                            kind: Some(Kind::Event(event)),
                        })) => {
                            events.push(event);
                            // The third consumer restarts every 17 events.
                            if consumer == 2 && events.len().is_multiple_of(17) {
                                reconnects += 1;
                                stream = open(events.last().unwrap().cursor.clone()).await;
                            }
                        }
                        Ok(Some(_)) => {}
                        other => panic!("consumer {consumer}: the stream ended: {other:?}"),
                    }
                }
                (events, reconnects)
            })
        })
        .collect();

    let writers_done = AtomicUsize::new(0);
    let writers = (0..WRITERS).map(|writer| {
        let mut opps = w.opps.clone();
        let ids: Vec<String> = shared.iter().map(|o| o.id.clone()).collect();
        let writers_done = &writers_done;
        async move {
            let statuses = [PRESENTED, SENT_EMAIL, QUOTATION, CONSIDERING];
            for write in 0..WRITES {
                let id = &ids[(writer + write) % ids.len()];
                let status = statuses[(writer * 3 + write) % statuses.len()];
                // Changing to the status it is already in writes nothing: allowed.
                opps.change_opportunity_status(authed(&admin_token(), change_request(id, status)))
                    .await
                    .expect("a status change");
            }
            writers_done.fetch_add(1, Ordering::SeqCst);
        }
    });
    let holders = (0..HOLDERS).map(|holder| {
        let db = w.db().clone();
        let writers_done = &writers_done;
        // Two hold a shared opportunity (its writers wait for that row only), three their own.
        let target = if holder < 2 {
            shared[holder].clone()
        } else {
            own[holder].clone()
        };
        async move {
            let id = Uuid::parse_str(&target.id).unwrap();
            let mut tx = db.begin().await.expect("begin");
            let (version, owner_id): (i64, String) = sqlx::query_as(
                "select version, owner_id from opportunities where id = $1 for update",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .expect("lock the opportunity");
            let snapshot = pb::Opportunity {
                owner_id,
                version,
                ..target.clone()
            };
            let event_id = raw_event(&mut tx, &snapshot, version + 1).await;
            let (held, pid): (i64, i32) = sqlx::query_as(
                "select id, pg_backend_pid() from opportunity_events where event_id = $1::uuid",
            )
            .bind(&event_id)
            .fetch_one(&mut *tx)
            .await
            .expect("the held event's id");
            // Held until a writer waits for it (a shared opportunity), or until an event
            // written after it has committed (its own: its id is taken, its position is not);
            // or until every writer is done, when there is nothing left to overtake it.
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (blocked, later): (i64, i64) = sqlx::query_as(
                    "select (select count(*) from pg_stat_activity
                             where $1 = any(pg_blocking_pids(pid))),
                            (select count(*) from opportunity_events where id > $2)",
                )
                .bind(pid)
                .bind(held)
                .fetch_one(&db)
                .await
                .expect("what the held event holds up");
                let overtaken = if holder < 2 { blocked > 0 } else { later > 0 };
                if overtaken || writers_done.load(Ordering::SeqCst) == WRITERS {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "holder {holder}: nothing waited for or overtook the held event"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.commit().await.expect("commit after holding");
        }
    });
    futures::join!(join_all(writers), join_all(holders));

    let committed = w.rows().await;
    target_tx.send(committed.len()).expect("consumers listen");
    let expected: BTreeSet<String> = committed.iter().map(|row| row.1.clone()).collect();
    for (consumer, handle) in consumers.into_iter().enumerate() {
        let (events, reconnects) = tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("the consumer finishes")
            .expect("the consumer's task");
        let got: BTreeSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(got, expected, "consumer {consumer}: every committed event");
        assert_eq!(
            events.len(),
            expected.len(),
            "consumer {consumer}: each once"
        );
        assert_versions_in_order(&events);
        let positions: Vec<i64> = events
            .iter()
            .map(|e| salesopp_outbox::parse_cursor(&e.cursor).expect("a cursor"))
            .collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "consumer {consumer}: positions only go forward"
        );
        if consumer == 2 {
            assert!(reconnects > 0, "the third consumer reconnected");
        }
    }
}
