//! The event relay against the real NATS JetStream (127.0.0.1:4222, or SALESOPP_TEST_NATS_URL):
//! every committed event is published once, in order, with its event id as `Nats-Msg-Id`;
//! a relay that crashed before recording its progress re-sends, and JetStream drops the
//! duplicates.

use prost::Message as _;
use salesopp_proto::common::v1::Money;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_relay::{Relay, RelayConfig};
use salesopp_tests::{TestSuite, authed, rep_token};

const QUOTATION: &str = "00000000-0000-4000-8000-000000000004";
const CLOSED_WON: &str = "00000000-0000-4000-8000-000000000006";

fn nats_url() -> String {
    std::env::var("SALESOPP_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A stream and subject prefix of this test's own, removed at the end.
fn config(tag: &str) -> RelayConfig {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    RelayConfig {
        name: format!("test-{tag}"),
        stream: format!("SALESOPP_TEST_{unique}"),
        subject_prefix: format!("salesopp-test.{unique}"),
        ..Default::default()
    }
}

/// Creates a customer and an opportunity and moves it twice: three events.
async fn three_events(suite: &TestSuite) -> String {
    let rep = rep_token();
    let customer = suite
        .customers()
        .await
        .create_customer(authed(
            &rep,
            cpb::CreateCustomerRequest {
                customer: Some(cpb::Customer {
                    display_name: "บริษัท สยามพาณิชย์ จำกัด".into(),
                    ..Default::default()
                }),
                request_id: "relay-customer".into(),
            },
        ))
        .await
        .expect("customer")
        .into_inner();
    let mut opportunities = suite.opportunities().await;
    let opportunity = opportunities
        .create_opportunity(authed(
            &rep,
            pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    customer_id: customer.id,
                    title: "Relay me".into(),
                    amount: Some(Money {
                        currency_code: "THB".into(),
                        units: 1000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                request_id: "relay-opportunity".into(),
                note: String::new(),
            },
        ))
        .await
        .expect("opportunity")
        .into_inner();
    for (step, status) in [QUOTATION, CLOSED_WON].iter().enumerate() {
        opportunities
            .change_opportunity_status(authed(
                &rep,
                pb::ChangeOpportunityStatusRequest {
                    opportunity_id: opportunity.id.clone(),
                    status_id: (*status).into(),
                    request_id: format!("relay-step-{step}"),
                    ..Default::default()
                },
            ))
            .await
            .expect("status change");
    }
    place_events(suite).await;
    opportunity.id
}

/// Places every committed event now (a sequencer pass of the test's own), so the relay's
/// next read sees them without waiting for the suite's sequencer.
async fn place_events(suite: &TestSuite) {
    let mut conn = suite.db.acquire().await.expect("a connection");
    salesopp_outbox::sequencer::sequence(&mut conn)
        .await
        .expect("a sequencer pass");
}

/// The stream's messages: (subject, Nats-Msg-Id, decoded event).
async fn messages(
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(String, String, pb::OpportunityEvent)> {
    let mut handle = jetstream
        .get_stream(stream)
        .await
        .expect("the relay's stream");
    let count = handle.info().await.expect("stream info").state.messages;
    let mut out = Vec::new();
    for sequence in 1..=count {
        let message = handle
            .get_raw_message(sequence)
            .await
            .expect("stored message");
        let id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let event =
            pb::OpportunityEvent::decode(message.payload.as_ref()).expect("an OpportunityEvent");
        out.push((message.subject.to_string(), id, event));
    }
    out
}

#[tokio::test]
async fn relay_publishes_every_event_once_in_order_and_resends_are_deduplicated() {
    let suite = TestSuite::spawn().await;
    let opportunity_id = three_events(&suite).await;
    let client = async_nats::connect(nats_url())
        .await
        .expect("NATS with JetStream runs at 127.0.0.1:4222 (scripts/ensure-nats)");
    let jetstream = async_nats::jetstream::new(client.clone());
    let config = config("dedup");
    let relay = Relay::new(suite.db.clone(), client.clone(), config.clone())
        .await
        .expect("relay");

    assert_eq!(relay.catch_up().await.expect("relay"), 3);
    let outbox: Vec<(i64, uuid::Uuid, String)> =
        sqlx::query_as("select seq, event_id, type from opportunity_events order by seq")
            .fetch_all(&suite.db)
            .await
            .expect("outbox");
    assert_eq!(relay.offset().await.expect("offset"), outbox[2].0);
    let published = messages(&jetstream, &config.stream).await;
    assert_eq!(published.len(), 3);
    for ((subject, msg_id, event), (id, event_id, kind)) in published.iter().zip(&outbox) {
        assert_eq!(*msg_id, event_id.to_string(), "Nats-Msg-Id is the event id");
        assert_eq!(event.event_id, event_id.to_string());
        assert_eq!(
            *subject,
            format!("{}.{kind}.{opportunity_id}", config.subject_prefix)
        );
        assert_eq!(event.cursor, salesopp_outbox::cursor(*id));
    }
    assert_eq!(relay.catch_up().await.expect("nothing new"), 0);

    // A crash after publishing but before recording the offset: the relay sends again.
    sqlx::query("update event_relay_offsets set last_event_id = 0 where relay_name = $1")
        .bind(&config.name)
        .execute(&suite.db)
        .await
        .expect("rewind");
    assert_eq!(relay.catch_up().await.expect("re-send"), 3);
    assert_eq!(
        messages(&jetstream, &config.stream).await.len(),
        3,
        "JetStream dropped the re-sent events as duplicates"
    );

    // New events continue the stream, in order.
    let rep = rep_token();
    suite
        .opportunities()
        .await
        .change_opportunity_status(authed(
            &rep,
            pb::ChangeOpportunityStatusRequest {
                opportunity_id: opportunity_id.clone(),
                status_id: QUOTATION.into(),
                request_id: "relay-reopen".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("reopen");
    place_events(&suite).await;
    assert_eq!(relay.catch_up().await.expect("the new event"), 1);
    let published = messages(&jetstream, &config.stream).await;
    assert_eq!(published.len(), 4);
    let changes: Vec<String> = published
        .iter()
        .filter_map(|(_, _, e)| e.status_change.as_ref())
        .filter_map(|c| c.to_status.as_ref().map(|s| s.display_name.clone()))
        .collect();
    assert_eq!(
        changes,
        ["Interested", "Quotation", "Closed won", "Quotation"]
    );

    jetstream
        .delete_stream(&config.stream)
        .await
        .expect("clean up the stream");
}

#[tokio::test]
async fn relay_run_follows_new_events_until_shutdown() {
    let suite = TestSuite::spawn().await;
    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let jetstream = async_nats::jetstream::new(client.clone());
    let config = config("run");
    let relay = Relay::new(suite.db.clone(), client, config.clone())
        .await
        .expect("relay");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    three_events(&suite).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while messages(&jetstream, &config.stream).await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running relay published the events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.expect("the relay stops on shutdown");
    jetstream
        .delete_stream(&config.stream)
        .await
        .expect("clean up the stream");
}
