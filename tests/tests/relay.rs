//! The event relay against a real NATS JetStream that each test starts on its own port
//! (`salesopp_tests::nats::NatsServer`), so it can stop and restart it, and against the real
//! Postgres. In every case the stream is read back at the end: the sequence of its
//! `Nats-Msg-Id`s must equal the events' ids in position order, each once ("every event
//! once, in order"). Nothing is timed: the tests wait for conditions, with generous bounds.
//!
//! The relay runs in the test process (`Relay::run`) or as the real `salesopp relay`
//! command line in a child process (`salesopp_tests::relay_process`), which a test can
//! SIGKILL mid-batch or SIGTERM.

use std::future::Future;
use std::time::Duration;

use prost::Message as _;
use salesopp_proto::common::v1::Money;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_relay::{LeaseConfig, Relay, RelayConfig};
use salesopp_tests::nats::{NatsServer, stored_messages};
use salesopp_tests::relay_process::RelayCommand;
use salesopp_tests::wait::placed_head;
use salesopp_tests::{TestSuite, authed, rep_token};
use sqlx::PgPool;
use tonic::transport::Channel;

const PRESENTED: &str = "00000000-0000-4000-8000-000000000002";
const QUOTATION: &str = "00000000-0000-4000-8000-000000000004";
const CLOSED_WON: &str = "00000000-0000-4000-8000-000000000006";
/// The bound of every wait: generous, so a loaded machine does not fail a test.
const PATIENCE: Duration = Duration::from_secs(120);
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_salesopp-under-test")
}

/// A stream and subject prefix of the test's own; a short lease, so take-overs are quick.
fn config(tag: &str) -> RelayConfig {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    RelayConfig {
        name: format!("test-{tag}"),
        stream: format!("SALESOPP_TEST_{unique}"),
        subject_prefix: format!("salesopp-test.{unique}"),
        poll_interval: Duration::from_millis(200),
        publish_timeout: Duration::from_secs(2),
        lease: LeaseConfig {
            ttl: Duration::from_secs(3),
            renew_interval: Duration::from_millis(750),
            standby_poll: Duration::from_millis(250),
        },
        ..Default::default()
    }
}

/// Waits until `condition` holds, panicking with `what` after [`PATIENCE`].
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One opportunity that a test changes again and again (one event per change).
#[derive(Clone)]
struct Writer {
    client: OpportunityServiceClient<Channel>,
    token: String,
    opportunity_id: String,
}

impl Writer {
    /// Creates a customer and an opportunity: its first event.
    async fn new(suite: &TestSuite, tag: &str) -> Writer {
        let token = rep_token();
        let customer = suite
            .customers()
            .await
            .create_customer(authed(
                &token,
                cpb::CreateCustomerRequest {
                    customer: Some(cpb::Customer {
                        display_name: format!("บริษัท สยามพาณิชย์ จำกัด {tag}"),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("customer")
            .into_inner();
        let mut client = suite.opportunities().await;
        let opportunity = client
            .create_opportunity(authed(
                &token,
                pb::CreateOpportunityRequest {
                    opportunity: Some(pb::Opportunity {
                        customer_id: customer.id,
                        title: format!("Relay me {tag}"),
                        amount: Some(Money {
                            currency_code: "THB".into(),
                            units: 1000,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                    note: String::new(),
                },
            ))
            .await
            .expect("opportunity")
            .into_inner();
        Writer {
            client,
            token,
            opportunity_id: opportunity.id,
        }
    }

    /// Moves the opportunity `count` times, between Presented and Quotation.
    async fn changes(mut self, count: usize) {
        for step in 0..count {
            let status = if step % 2 == 0 { PRESENTED } else { QUOTATION };
            self.client
                .change_opportunity_status(authed(
                    &self.token,
                    pb::ChangeOpportunityStatusRequest {
                        opportunity_id: self.opportunity_id.clone(),
                        status_id: status.into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("status change");
        }
    }
}

/// `writers` opportunities changed `each` times concurrently (plus their creations).
async fn write_events(suite: &TestSuite, writers: usize, each: usize) {
    let mut tasks = Vec::new();
    for n in 0..writers {
        let writer = Writer::new(suite, &format!("{n}-{}", uuid::Uuid::new_v4())).await;
        tasks.push(tokio::spawn(writer.changes(each)));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

/// The ids of every placed event that is not a dead letter, in position order, once every
/// committed event is placed.
async fn expected_ids(db: &PgPool) -> Vec<String> {
    wait_until("every committed event placed by the sequencer", || async {
        let unplaced: i64 =
            sqlx::query_scalar("select count(*) from opportunity_events where seq is null")
                .fetch_one(db)
                .await
                .expect("count unplaced");
        unplaced == 0
    })
    .await;
    sqlx::query_scalar(
        "select e.event_id::text from opportunity_events e
         where e.seq is not null
           and not exists (select 1 from event_dead_letters d where d.seq = e.seq)
         order by e.seq",
    )
    .fetch_all(db)
    .await
    .expect("outbox")
}

/// The `Nats-Msg-Id`s of the stream, in stream order.
async fn stored_ids(nats: &NatsServer, stream: &str) -> Vec<String> {
    stored_messages(&nats.jetstream().await, stream)
        .await
        .iter()
        .map(|message| message.msg_id())
        .collect()
}

/// Waits until the stream holds as many messages as there are events, then asserts it
/// holds every event once, in order.
async fn assert_every_event_once_in_order(nats: &NatsServer, stream: &str, db: &PgPool) {
    let expected = expected_ids(db).await;
    assert!(!expected.is_empty());
    wait_until("the stream holds every event", || async {
        stored_ids(nats, stream).await.len() >= expected.len()
    })
    .await;
    let stored = stored_ids(nats, stream).await;
    let mut unique = stored.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "no event twice in the stream");
    assert_eq!(stored, expected, "the stream holds every event, in order");
}

async fn count(nats: &NatsServer, stream: &str) -> usize {
    stored_ids(nats, stream).await.len()
}

/// A relay running in this process until stopped.
struct Running {
    /// The relay's NATS client, to see what the relay sees of NATS.
    client: async_nats::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_relay(db: &PgPool, nats_url: &str, config: RelayConfig) -> (Relay, Running) {
    let client = salesopp_relay::connect(nats_url)
        .await
        .expect("a NATS client (it connects in the background)");
    let relay = Relay::new(db.clone(), client.clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    (relay, Running { client, stop, task })
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the relay stops at shutdown")
            .expect("the relay task");
    }
}

/// Who holds the lease of `name` now: (holder's host name, epoch), if anyone does.
async fn lease_holder(db: &PgPool, name: &str) -> Option<(String, i64)> {
    sqlx::query_as(
        "select holder_name, epoch from event_relay_leases
         where relay_name = $1 and expire_time > now()",
    )
    .bind(name)
    .fetch_optional(db)
    .await
    .expect("lease")
}

fn relay_command(suite: &TestSuite, nats: &NatsServer, config: &RelayConfig) -> RelayCommand {
    RelayCommand::new(
        binary(),
        &suite.database.url(),
        &nats.url(),
        &config.stream,
        &config.subject_prefix,
    )
    .set("SALESOPP_RELAY_NAME", &config.name)
}

#[tokio::test]
async fn relay_publishes_with_cloudevents_headers_and_resends_are_deduplicated() {
    let suite = TestSuite::spawn().await;
    let nats = NatsServer::start_new().await;
    let writer = Writer::new(&suite, "headers").await;
    let opportunity_id = writer.opportunity_id.clone();
    writer.clone().changes(1).await;
    let mut client = writer.client.clone();
    client
        .change_opportunity_status(authed(
            &writer.token,
            pb::ChangeOpportunityStatusRequest {
                opportunity_id: opportunity_id.clone(),
                status_id: CLOSED_WON.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("won");
    let expected = expected_ids(&suite.db).await;
    assert_eq!(expected.len(), 3);

    let config = config("headers");
    let client = salesopp_relay::connect(&nats.url()).await.expect("NATS");
    let relay = Relay::new(suite.db.clone(), client, config.clone());
    assert_eq!(relay.catch_up().await.expect("relay"), 3);

    let outbox: Vec<(i64, uuid::Uuid, String)> =
        sqlx::query_as("select seq, event_id, type from opportunity_events order by seq")
            .fetch_all(&suite.db)
            .await
            .expect("outbox");
    assert_eq!(relay.offset().await.expect("offset"), outbox[2].0);
    let jetstream = nats.jetstream().await;
    let published = stored_messages(&jetstream, &config.stream).await;
    assert_eq!(published.len(), 3);
    for (message, (seq, event_id, kind)) in published.iter().zip(&outbox) {
        let kind = kind.to_ascii_lowercase();
        let event = pb::OpportunityEvent::decode(message.payload.as_slice()).expect("protobuf");
        assert_eq!(message.subject, format!("{}.{kind}", config.subject_prefix));
        assert_eq!(message.msg_id(), event_id.to_string(), "Nats-Msg-Id");
        assert_eq!(event.event_id, event_id.to_string());
        assert_eq!(event.cursor, salesopp_outbox::cursor(*seq));
        assert_eq!(message.header("ce-specversion"), "1.0");
        assert_eq!(message.header("ce-id"), event_id.to_string());
        assert_eq!(
            message.header("ce-type"),
            format!("io.salesopp.opportunity.{kind}.v1")
        );
        assert_eq!(message.header("ce-source"), "/salesopp/opportunity");
        assert_eq!(message.header("ce-subject"), opportunity_id);
        assert_eq!(message.header("content-type"), "application/protobuf");
        let time = chrono::DateTime::parse_from_rfc3339(&message.header("ce-time"))
            .expect("ce-time is RFC 3339");
        let occur = event.occur_time.expect("occur_time");
        assert_eq!(time.timestamp(), occur.seconds);
    }
    assert_eq!(
        published
            .iter()
            .map(|m| m.subject.rsplit('.').next().unwrap_or("").to_owned())
            .collect::<Vec<_>>(),
        ["created", "status_changed", "status_changed"]
    );
    assert_eq!(relay.catch_up().await.expect("nothing new"), 0);

    // A crash after publishing but before recording: the relay sends again, JetStream
    // drops the duplicates by Nats-Msg-Id.
    sqlx::query("update event_relay_offsets set last_event_id = 0 where relay_name = $1")
        .bind(&config.name)
        .execute(&suite.db)
        .await
        .expect("rewind");
    assert_eq!(relay.catch_up().await.expect("re-send"), 3);
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
}

/// Done-when 1: NATS stopped mid-stream and restarted.
#[tokio::test]
async fn relay_survives_nats_stopped_mid_stream_every_event_once_in_order() {
    let suite = TestSuite::spawn().await;
    let mut nats = NatsServer::start_new().await;
    let config = config("nats-restart");
    // A backlog, so NATS stops while the relay is publishing it.
    write_events(&suite, 3, 60).await;
    let (relay, running) = start_relay(&suite.db, &nats.url(), config.clone()).await;
    wait_until("the relay publishes", || async {
        count(&nats, &config.stream).await >= 5
    })
    .await;
    nats.stop().await;
    // Events written while NATS is down: once the relay's client has seen NATS go and the
    // events are placed, the relay has them to publish and cannot, so it retries meanwhile.
    write_events(&suite, 2, 15).await;
    wait_until("the relay's client sees NATS down", || async {
        running.client.connection_state() == async_nats::connection::State::Disconnected
    })
    .await;
    let head = placed_head(&suite.db).await;
    let offset = relay.offset().await.expect("the relay's offset");
    assert!(
        offset < head,
        "the relay is behind while NATS is down: {offset} < {head}"
    );
    nats.start().await;
    write_events(&suite, 1, 10).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    running.stop().await;
}

/// Done-when 2: the real `salesopp relay` SIGKILLed mid-batch and started again.
#[tokio::test]
async fn relay_process_killed_mid_batch_and_restarted_every_event_once_in_order() {
    let suite = TestSuite::spawn().await;
    let nats = NatsServer::start_new().await;
    let config = config("killed");
    write_events(&suite, 4, 75).await;
    let command = relay_command(&suite, &nats, &config);
    let mut first = command.spawn("relay-first");
    wait_until("the first relay publishes", || async {
        count(&nats, &config.stream).await >= 1
    })
    .await;
    first.kill().await;
    let published = count(&nats, &config.stream).await;
    let recorded: Option<i64> =
        sqlx::query_scalar("select last_event_id from event_relay_offsets where relay_name = $1")
            .bind(&config.name)
            .fetch_optional(&suite.db)
            .await
            .expect("offset");
    eprintln!("killed after {published} messages, progress recorded through {recorded:?}");

    let second = command.spawn("relay-second");
    write_events(&suite, 1, 10).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    assert_eq!(
        lease_holder(&suite.db, &config.name).await.map(|h| h.0),
        Some("relay-second".to_owned()),
        "the restarted relay took the lease over: {}",
        second.log_tail()
    );
}

/// Done-when 3: two relays, exactly one publishing; the other takes over when the first is
/// killed; at SIGTERM the active one releases its lease and exits.
#[tokio::test]
async fn two_relays_one_publishes_the_other_takes_over_when_it_is_killed() {
    let suite = TestSuite::spawn().await;
    let nats = NatsServer::start_new().await;
    let config = config("pair");
    let command = relay_command(&suite, &nats, &config);
    let mut relays = [command.spawn("relay-a"), command.spawn("relay-b")];
    write_events(&suite, 2, 25).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    let published = count(&nats, &config.stream).await as f64;

    let (holder, epoch) = lease_holder(&suite.db, &config.name)
        .await
        .expect("one relay holds the lease");
    let active = relays
        .iter()
        .position(|relay| relay.host == holder)
        .expect("the holder is one of the two");
    let standby = 1 - active;
    wait_until("both relays report their metrics", || async {
        relays[active].metric("salesopp_events_relayed_total").await == Some(published)
            && relays[standby]
                .metric("salesopp_events_relayed_total")
                .await
                == Some(0.0)
    })
    .await;
    assert_eq!(relays[active].health("").await, Some(SERVING));
    assert_eq!(
        relays[standby].health("").await,
        Some(SERVING),
        "a healthy standby"
    );
    assert_eq!(
        relays[active].health("salesopp.relay.active").await,
        Some(SERVING)
    );
    assert_eq!(
        relays[standby].health("salesopp.relay.active").await,
        Some(NOT_SERVING)
    );
    wait_until("the active relay reports no lag", || async {
        relays[active]
            .metric("salesopp_event_relay_lag_events")
            .await
            == Some(0.0)
    })
    .await;

    // The active one dies holding its lease: the standby takes over once it runs out.
    relays[active].kill().await;
    write_events(&suite, 2, 10).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    let (new_holder, new_epoch) = lease_holder(&suite.db, &config.name)
        .await
        .expect("the standby holds the lease");
    assert_eq!(new_holder, relays[standby].host);
    assert!(new_epoch > epoch, "a new term of the lease");
    wait_until("the new active relay counts what it published", || async {
        relays[standby]
            .metric("salesopp_events_relayed_total")
            .await
            .is_some_and(|relayed| relayed > 0.0)
    })
    .await;

    // Started again, the killed one stands by; SIGTERM on the active one releases the lease
    // and the other takes over.
    let restarted = command.spawn(&format!("{}-again", relays[active].host));
    wait_until("the restarted relay is healthy", || async {
        restarted.health("").await == Some(SERVING)
    })
    .await;
    let status = relays[standby].terminate(PATIENCE).await;
    assert!(
        status.success(),
        "the relay exits cleanly at SIGTERM: {status}"
    );
    wait_until("the restarted relay takes the released lease", || async {
        lease_holder(&suite.db, &config.name).await.map(|h| h.0) == Some(restarted.host.clone())
    })
    .await;
    write_events(&suite, 1, 10).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
}

/// Done-when 4: the relay started while NATS is down, then NATS started.
#[tokio::test]
async fn relay_started_while_nats_is_down_waits_then_publishes_every_event_once_in_order() {
    let suite = TestSuite::spawn().await;
    let mut nats = NatsServer::reserve();
    let config = config("nats-late");
    let mut relay = relay_command(&suite, &nats, &config).spawn("relay-early");
    write_events(&suite, 2, 10).await;
    wait_until("the relay runs, holding its lease, NATS down", || async {
        lease_holder(&suite.db, &config.name).await.map(|h| h.0) == Some("relay-early".into())
    })
    .await;
    assert_eq!(
        relay.health("").await,
        Some(SERVING),
        "waiting for NATS is healthy"
    );
    nats.start().await;
    write_events(&suite, 1, 5).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    let status = relay.terminate(PATIENCE).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        lease_holder(&suite.db, &config.name).await,
        None,
        "released at SIGTERM"
    );
}

/// Done-when 5: an undecodable event is set aside in the dead-letter table and the events
/// after it are published.
#[tokio::test]
async fn an_undecodable_event_goes_to_the_dead_letters_and_the_relay_moves_on() {
    let suite = TestSuite::spawn().await;
    let nats = NatsServer::start_new().await;
    let config = config("dead-letter");
    let writer = Writer::new(&suite, "dead-letter").await;
    let opportunity_id: uuid::Uuid = writer.opportunity_id.parse().expect("uuid");
    // A row no OpportunityEvent decodes from, as the opportunity's next version.
    let garbage = vec![0xff_u8, 0xff, 0xff, 0xff];
    let (garbage_id,): (uuid::Uuid,) = sqlx::query_as(
        "with bumped as (
             update opportunities set version = version + 1 where id = $1 returning version)
         insert into opportunity_events
             (type, opportunity_id, occur_time, actor_id, actor_name, owner_id, payload, version)
         select 'UPDATED', $1, now(), 'test', 'Test', 'rep-a1', $2, bumped.version from bumped
         returning event_id",
    )
    .bind(opportunity_id)
    .bind(&garbage)
    .fetch_one(&suite.db)
    .await
    .expect("insert the undecodable event");
    let mut conn = suite.db.acquire().await.expect("a connection");
    salesopp_outbox::sequencer::sequence(&mut conn)
        .await
        .expect("a sequencer pass");
    drop(conn);
    writer.clone().changes(2).await;

    let dead_before = salesopp_kit::metrics::metrics().events.dead_letters.get();
    let (_relay, running) = start_relay(&suite.db, &nats.url(), config.clone()).await;
    // The events the stream must hold are those not dead-lettered: known once the relay has
    // set the garbage aside (before, the garbage would count as one the stream must hold).
    wait_until("the relay sets the garbage aside", || async {
        let dead: i64 =
            sqlx::query_scalar("select count(*) from event_dead_letters where relay_name = $1")
                .bind(&config.name)
                .fetch_one(&suite.db)
                .await
                .expect("count dead letters");
        dead == 1
    })
    .await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    let (seq, event_id, payload, error): (i64, uuid::Uuid, Vec<u8>, String) = sqlx::query_as(
        "select seq, event_id, payload, error from event_dead_letters where relay_name = $1",
    )
    .bind(&config.name)
    .fetch_one(&suite.db)
    .await
    .expect("one dead letter");
    let garbage_seq: i64 =
        sqlx::query_scalar("select seq from opportunity_events where event_id = $1")
            .bind(garbage_id)
            .fetch_one(&suite.db)
            .await
            .expect("the garbage's position");
    assert_eq!((seq, event_id, payload), (garbage_seq, garbage_id, garbage));
    assert!(!error.is_empty());
    assert!(salesopp_kit::metrics::metrics().events.dead_letters.get() > dead_before);
    let stored = stored_ids(&nats, &config.stream).await;
    assert_eq!(
        stored.len(),
        3,
        "the creation and the two changes, not the garbage"
    );
    assert!(!stored.contains(&garbage_id.to_string()));

    // Still relaying.
    writer.changes(1).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    running.stop().await;
}

#[tokio::test]
async fn relay_run_stops_at_shutdown_and_releases_its_lease() {
    let suite = TestSuite::spawn().await;
    let nats = NatsServer::start_new().await;
    let config = config("run");
    let (relay, running) = start_relay(&suite.db, &nats.url(), config.clone()).await;
    write_events(&suite, 1, 2).await;
    assert_every_event_once_in_order(&nats, &config.stream, &suite.db).await;
    let holder: uuid::Uuid =
        sqlx::query_scalar("select holder from event_relay_leases where relay_name = $1")
            .bind(&config.name)
            .fetch_one(&suite.db)
            .await
            .expect("lease row");
    assert_eq!(holder, relay.lease().holder);
    running.stop().await;
    assert_eq!(lease_holder(&suite.db, &config.name).await, None);
}

/// The lease: one holder at a time; only the holder records progress (fencing); released,
/// it goes to the next one at once.
#[tokio::test]
async fn only_the_lease_holder_records_progress() {
    let suite = TestSuite::spawn().await;
    let name = "test-fencing";
    sqlx::query("insert into event_relay_offsets (relay_name) values ($1)")
        .bind(name)
        .execute(&suite.db)
        .await
        .expect("offset row");
    let lease_config = LeaseConfig {
        ttl: Duration::from_secs(30),
        ..Default::default()
    };
    let first = salesopp_relay::Lease::new(suite.db.clone(), name, lease_config);
    let second = salesopp_relay::Lease::new(suite.db.clone(), name, lease_config);
    assert!(first.acquire().await.expect("acquire").is_some());
    assert!(first.acquire().await.expect("renew").is_some(), "renewed");
    assert!(second.acquire().await.expect("acquire").is_none(), "held");
    assert!(!second.record(7).await.expect("record"), "fenced");
    assert!(first.record(5).await.expect("record"));
    let offset = || async {
        sqlx::query_scalar::<_, i64>(
            "select last_event_id from event_relay_offsets where relay_name = $1",
        )
        .bind(name)
        .fetch_one(&suite.db)
        .await
        .expect("offset")
    };
    assert_eq!(offset().await, 5);
    assert!(first.release().await.expect("release"));
    assert!(second.acquire().await.expect("take over").is_some());
    assert!(
        !first.record(9).await.expect("record"),
        "the old holder is fenced"
    );
    assert!(second.record(6).await.expect("record"));
    assert_eq!(offset().await, 6);
    assert!(first.acquire().await.expect("acquire").is_none());
    let epoch: i64 =
        sqlx::query_scalar("select epoch from event_relay_leases where relay_name = $1")
            .bind(name)
            .fetch_one(&suite.db)
            .await
            .expect("epoch");
    assert_eq!(epoch, 2, "one change of holder");
}
