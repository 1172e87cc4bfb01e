//! `salesopp demo` and `salesopp token` (services/salesopp/src/demo.rs, `TokenMinter`):
//! the demo played twice, or after a run stopped midway, records its story once; the demo and
//! the tokens carry the suite's issuer and audience; the demo finds the suite where
//! `SALESOPP_LISTEN` says it listens.

// Request literals end with `..Default::default()`: fields are being added to the contracts.
#![allow(clippy::needless_update)]

use salesopp::TokenMinter;
use salesopp::demo::{self, CUSTOMER_CODE, OPPORTUNITY_TITLE};
use salesopp_kit::config::AuthArgs;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::CONSIDERING;
use salesopp_tests::{SECRET, SuiteOptions, TestSuite, admin_token, authed};

const ISSUER: &str = "https://id.salesopp.test/";
const AUDIENCE: &str = "salesopp-api";

fn minter(issuer: Option<&str>, audience: Option<&str>) -> TokenMinter {
    TokenMinter::new(&AuthArgs {
        auth_hs256_secret: Some(SECRET.to_owned()),
        auth_issuer: issuer.map(str::to_owned),
        auth_audience: audience.map(str::to_owned),
        ..Default::default()
    })
    .expect("a minter")
}

/// What the database holds, table by table (each test has a database of its own).
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    customers: i64,
    story_customers: i64,
    opportunities: i64,
    story_opportunities: i64,
    status_changes: i64,
    events: i64,
}

async fn count(suite: &TestSuite, sql: &'static str, binds: &[&str]) -> i64 {
    let mut query = sqlx::query_scalar::<_, i64>(sql);
    for bind in binds {
        query = query.bind(bind.to_string());
    }
    query.fetch_one(&suite.db).await.expect(sql)
}

async fn counts(suite: &TestSuite) -> Counts {
    let story = [CUSTOMER_CODE, OPPORTUNITY_TITLE];
    Counts {
        customers: count(suite, "select count(*) from customers", &[]).await,
        story_customers: count(
            suite,
            "select count(*) from customers where lower(code) = lower($1)",
            &story[..1],
        )
        .await,
        opportunities: count(suite, "select count(*) from opportunities", &[]).await,
        story_opportunities: count(
            suite,
            "select count(*) from opportunities o join customers c on c.id = o.customer_id
             where lower(c.code) = lower($1) and o.title = $2",
            &story,
        )
        .await,
        status_changes: count(suite, "select count(*) from status_changes", &[]).await,
        events: count(suite, "select count(*) from opportunity_events", &[]).await,
    }
}

/// The story's step 4: the manager's board of the salesperson's pipeline.
fn board(text: &str) -> &str {
    let (_, rest) = text.split_once("\n4. ").expect("step 4");
    let (board, _) = rest
        .split_once("\n5. The opportunity with its status history")
        .expect("step 5");
    board
}

/// The story's step 5: the opportunity with its status history.
fn detail(text: &str) -> &str {
    let (_, detail) = text
        .split_once("5. The opportunity with its status history")
        .expect("step 5");
    detail
}

/// The history lines of step 5.
fn history_lines(text: &str) -> Vec<&str> {
    detail(text)
        .lines()
        .filter(|line| line.contains(" -> ") && line.contains(" by "))
        .collect()
}

/// The story once, whole: one customer, one opportunity moved four times, one board entry;
/// its steps 4 and 5 read through the gateway (the board, and the detail with its history).
fn assert_one_story(text: &str, counts: &Counts) {
    assert_eq!(
        counts,
        &Counts {
            customers: 1,
            story_customers: 1,
            opportunities: 1,
            story_opportunities: 1,
            status_changes: 5,
            events: 5,
        },
        "{text}"
    );
    assert!(text.contains("บริษัท สยามพาณิชย์ จำกัด"), "{text}");
    for thai in [
        "สนใจ",
        "นำเสนอ",
        "ส่ง Email",
        "เสนอราคา",
        "พิจารณา และเปรียบเทียบ",
        "ปิดการขายสำเร็จ",
        "ปิดการขายไม่สำเร็จ",
    ] {
        assert!(text.contains(thai), "{thai} in {text}");
    }
    let board = board(text);
    assert!(
        board.contains("* บริษัท สยามพาณิชย์ จำกัด / ระบบ ERP สำหรับคลังสินค้า"),
        "the won opportunity with its customer's name on the board: {board}"
    );
    let won = board
        .lines()
        .find(|line| line.contains("ปิดการขายสำเร็จ"))
        .expect("the Closed won stage");
    assert!(
        won.contains("THB 1,250,000 x1 (weighted THB 1,250,000)"),
        "{won}"
    );
    assert_eq!(
        board.lines().filter(|line| line.contains("* ")).count(),
        1,
        "{board}"
    );
    let detail = detail(text);
    assert!(detail.contains("closed: yes"), "{detail}");
    assert!(detail.contains("[Closed won]"), "{detail}");
    let history = history_lines(text);
    assert_eq!(history.len(), 5, "{text}");
    assert!(history[0].trim_start().starts_with("(created)"), "{text}");
    for (line, to) in history.iter().zip([
        "Interested 10%",
        "Sent email 30%",
        "Quotation 50%",
        "Considering and comparing 70%",
        "Closed won 100%",
    ]) {
        assert!(line.contains(to), "{to} in {line}");
        assert!(line.contains("Somchai Jaidee"), "{line}");
    }
}

#[tokio::test]
async fn the_demo_played_twice_records_its_story_once() {
    let suite = TestSuite::spawn().await;
    let first = demo::run(&suite.url(), SECRET)
        .await
        .expect("the first run");
    let after_first = counts(&suite).await;
    assert_one_story(&first, &after_first);
    assert!(first.starts_with("1. "), "nothing to report first: {first}");

    let second = demo::run(&suite.url(), SECRET)
        .await
        .expect("the second run");
    println!("{second}");
    assert_eq!(
        counts(&suite).await,
        after_first,
        "the second run added nothing"
    );
    assert_one_story(&second, &after_first);
    // The same story and figures, after a line saying it was found.
    let (preface, story) = second.split_once('\n').expect("a preface");
    assert!(
        preface.contains("already played") && preface.contains("nothing added"),
        "{preface}"
    );
    assert_eq!(story, first, "the second run tells the same story");
    assert_eq!(board(&second), board(&first));

    // And a third time, the same.
    let third = demo::run(&suite.url(), SECRET)
        .await
        .expect("the third run");
    assert_eq!(third, second);
    assert_eq!(counts(&suite).await, after_first);
}

#[tokio::test]
async fn a_demo_stopped_midway_is_completed_by_the_next_run_not_repeated() {
    let suite = TestSuite::spawn().await;
    let admin = admin_token();
    let mut statuses = suite.statuses().await;
    let rename = |name: &str| {
        authed(
            &admin,
            spb::UpdateStatusRequest {
                status: Some(spb::OpportunityStatus {
                    id: CONSIDERING.to_owned(),
                    display_name: name.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".to_owned()],
                }),
                ..Default::default()
            },
        )
    };
    // Without the "Considering and comparing" status, the demo stops after its second step
    // (it looks each status up by name as it gets to it).
    statuses
        .update_status(rename("Comparing"))
        .await
        .expect("rename the status");
    let stopped = demo::run(&suite.url(), SECRET).await;
    let error = stopped.expect_err("the demo stops midway");
    assert!(
        error.to_string().contains("Considering and comparing"),
        "{error:#}"
    );
    let midway = counts(&suite).await;
    assert_eq!(
        (
            midway.story_customers,
            midway.story_opportunities,
            midway.status_changes
        ),
        (1, 1, 3),
        "customer, opportunity, creation and two steps recorded: {midway:?}"
    );

    statuses
        .update_status(rename("Considering and comparing"))
        .await
        .expect("rename it back");
    let completed = demo::run(&suite.url(), SECRET)
        .await
        .expect("the next run completes the story");
    println!("{completed}");
    assert_one_story(&completed, &counts(&suite).await);
    assert!(
        completed.starts_with("(The story was partly played"),
        "{completed}"
    );
    // Every entry of the history once, in the story's order.
    let recorded: Vec<String> =
        sqlx::query_scalar("select to_display_name from status_changes order by sequence")
            .fetch_all(&suite.db)
            .await
            .expect("history");
    assert_eq!(
        recorded,
        [
            "Interested",
            "Sent email",
            "Quotation",
            "Considering and comparing",
            "Closed won"
        ]
    );

    let again = demo::run(&suite.url(), SECRET).await.expect("once more");
    assert_one_story(&again, &counts(&suite).await);
    assert_eq!(
        again.split_once('\n').map(|(_, story)| story),
        completed.split_once('\n').map(|(_, story)| story)
    );
}

#[tokio::test]
async fn the_demo_mints_the_issuer_and_audience_the_suite_requires() {
    let suite = TestSuite::spawn_with(SuiteOptions {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        ..Default::default()
    })
    .await;
    // Without them (as before the fix), or with only one, the suite refuses the story's tokens.
    for (issuer, audience) in [(None, None), (Some(ISSUER), None), (None, Some(AUDIENCE))] {
        let error = demo::play(&suite.url(), &minter(issuer, audience))
            .await
            .expect_err("refused");
        let status = error
            .downcast_ref::<tonic::Status>()
            .unwrap_or_else(|| panic!("a gRPC status: {error:#}"));
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{issuer:?} {audience:?}: {error:#}"
        );
        assert!(
            format!("{error:#}").contains("SALESOPP_AUTH_ISSUER"),
            "says what to set: {error:#}"
        );
    }
    assert_eq!(
        counts(&suite).await.customers,
        0,
        "a refused demo wrote nothing"
    );

    let text = demo::play(&suite.url(), &minter(Some(ISSUER), Some(AUDIENCE)))
        .await
        .expect("the demo with the suite's issuer and audience");
    assert_one_story(&text, &counts(&suite).await);
}

#[test]
fn a_minted_token_carries_the_issuer_and_audience() {
    let roles = vec!["sales_manager".to_owned()];
    let token = minter(Some(ISSUER), Some(AUDIENCE))
        .mint("malee", "Malee Srisuk", "bangkok-north", &roles, 600)
        .expect("mint");

    // The claims, decoded.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("a valid HS256 token with that issuer and audience")
    .claims;
    assert_eq!(claims["iss"], ISSUER, "{claims}");
    assert_eq!(claims["aud"], AUDIENCE, "{claims}");
    assert_eq!(claims["sub"], "malee", "{claims}");
    assert_eq!(claims["team"], "bangkok-north", "{claims}");
    assert_eq!(
        claims["roles"],
        serde_json::json!(["sales_manager"]),
        "{claims}"
    );

    // A suite configured with them accepts it, and refuses one minted without them.
    let suite_auth = salesopp_kit::Authenticator::hs256(
        SECRET.as_bytes(),
        Some(ISSUER.to_owned()),
        Some(AUDIENCE.to_owned()),
    );
    let principal = suite_auth.verify(&token).expect("accepted");
    assert_eq!(principal.id, "malee");
    let bare = minter(None, None)
        .mint("malee", "Malee Srisuk", "bangkok-north", &roles, 600)
        .expect("mint");
    assert!(suite_auth.verify(&bare).is_err(), "no iss/aud: refused");
    let bare_claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&bare)
        .expect("decode")
        .claims;
    assert!(bare_claims.get("iss").is_none() && bare_claims.get("aud").is_none());
}

#[test]
fn tokens_are_minted_only_for_a_suite_that_verifies_them_with_the_secret() {
    let no_secret = TokenMinter::new(&AuthArgs::default()).expect_err("no secret");
    assert!(
        no_secret.to_string().contains("SALESOPP_AUTH_HS256_SECRET"),
        "{no_secret}"
    );
    let short = TokenMinter::new(&AuthArgs {
        auth_hs256_secret: Some("short".to_owned()),
        ..Default::default()
    })
    .expect_err("a secret the suite refuses to start with");
    assert!(short.to_string().contains("16 bytes"), "{short}");
    let jwks = TokenMinter::new(&AuthArgs {
        auth_hs256_secret: Some(SECRET.to_owned()),
        auth_jwks: Some("/etc/salesopp/jwks.json".to_owned()),
        ..Default::default()
    })
    .expect_err("a suite on a JWKS takes no development token");
    assert!(jwks.to_string().contains("SALESOPP_AUTH_JWKS"), "{jwks}");
}

#[test]
fn the_demo_calls_the_suite_where_salesopp_listen_says_it_listens() {
    let at = |listen: &str| listen.parse().expect("an address");
    assert_eq!(
        demo::suite_url(None, at("127.0.0.1:50999")),
        "http://127.0.0.1:50999"
    );
    assert_eq!(
        demo::suite_url(None, at("0.0.0.0:6001")),
        "http://127.0.0.1:6001",
        "an unspecified address is reached on loopback"
    );
    assert_eq!(
        demo::suite_url(None, at("[::]:6002")),
        "http://127.0.0.1:6002"
    );
    assert_eq!(demo::suite_url(None, at("[::1]:6003")), "http://[::1]:6003");
    assert_eq!(
        demo::suite_url(None, at("10.1.2.3:6004")),
        "http://10.1.2.3:6004"
    );
    // A URL given (--url, SALESOPP_URL) wins; an empty one is none.
    assert_eq!(
        demo::suite_url(Some("http://suite.internal:8443"), at("127.0.0.1:50999")),
        "http://suite.internal:8443"
    );
    assert_eq!(
        demo::suite_url(Some(""), at("127.0.0.1:50999")),
        "http://127.0.0.1:50999"
    );
}

#[tokio::test]
async fn the_demo_plays_against_the_suite_at_its_listen_address() {
    let suite = TestSuite::spawn().await;
    // The suite listens on a port of its own, not 50051; no URL is given.
    assert_ne!(suite.addr.port(), 50051);
    let url = demo::suite_url(None, suite.addr);
    let text = demo::play(&url, &minter(None, None))
        .await
        .expect("the demo reaches the suite");
    assert_one_story(&text, &counts(&suite).await);
}
