//! StatusConfigService end to end: real Postgres (one database per test), real gRPC.
//!
//! Each test is named after the rule of DESIGN.md it proves (R2-R7, R11, R12), or `aip_` for
//! the API contract every call keeps (ids, etags, masks, pages). Every failed write is checked
//! to have changed nothing, by comparing a snapshot of the tables before and after.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use salesopp_kit::auth::{TokenRequest, mint_hs256};
use salesopp_proto::statusconfig::v1 as pb;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, WON, mask,
};
use salesopp_tests::wait::until_a_lock_wait;
use salesopp_tests::{
    TestSuite, admin_token, authed, expect_code, expect_invalid, expect_invalid_fields,
    field_violations, manager_token, rep_token, token,
};
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;
use uuid::Uuid;

type Api = StatusConfigServiceClient<Channel>;

/// No status has this id.
const UNKNOWN: &str = "6f1c1a8e-0000-4000-8000-00000000dead";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn admin<T>(message: T) -> tonic::Request<T> {
    authed(&admin_token(), message)
}

fn names(th: &str, en: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("th".to_owned(), th.to_owned()),
        ("en".to_owned(), en.to_owned()),
    ])
}

/// An OPEN status to create, named `name` in English and `th` in Thai.
fn draft(name: &str, th: &str, probability: i32) -> pb::OpportunityStatus {
    pb::OpportunityStatus {
        display_name: name.to_owned(),
        localized_names: names(th, name),
        probability,
        ..Default::default()
    }
}

fn create_request(status: pb::OpportunityStatus) -> pb::CreateStatusRequest {
    pb::CreateStatusRequest {
        status: Some(status),
        request_id: Uuid::new_v4().to_string(),
    }
}

async fn create(api: &mut Api, name: &str, probability: i32) -> pb::OpportunityStatus {
    api.create_status(admin(create_request(draft(
        name,
        &format!("ไทย {name}"),
        probability,
    ))))
    .await
    .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
    .into_inner()
}

async fn get(api: &mut Api, id: &str) -> pb::OpportunityStatus {
    api.get_status(admin(pb::GetStatusRequest { id: id.to_owned() }))
        .await
        .unwrap_or_else(|e| panic!("get {id}: {e:?}"))
        .into_inner()
}

/// Every status (one page), live ones only unless `show_archived`.
async fn list(api: &mut Api, show_archived: bool) -> Vec<pb::OpportunityStatus> {
    let response = api
        .list_statuses(admin(pb::ListStatusesRequest {
            page_size: 500,
            show_archived,
            ..Default::default()
        }))
        .await
        .expect("list statuses")
        .into_inner();
    assert!(response.next_page_token.is_empty());
    response.statuses
}

async fn delete(api: &mut Api, id: &str) -> pb::DeleteStatusResponse {
    api.delete_status(admin(pb::DeleteStatusRequest {
        id: id.to_owned(),
        ..Default::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("delete {id}: {e:?}"))
    .into_inner()
}

fn ids(statuses: &[pb::OpportunityStatus]) -> Vec<String> {
    statuses.iter().map(|s| s.id.clone()).collect()
}

fn by_id<'a>(statuses: &'a [pb::OpportunityStatus], id: &str) -> &'a pb::OpportunityStatus {
    statuses
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("status {id} not listed"))
}

/// Everything the status configuration could touch, as text: the statuses, the idempotency
/// records, the opportunities, their history and events. Equal snapshots: nothing changed.
async fn snapshot(db: &PgPool) -> String {
    sqlx::query_scalar(
        "select concat_ws(E'\n--\n',
             (select string_agg(t::text, E'\n' order by t.id) from opportunity_statuses t),
             (select string_agg(t::text, E'\n' order by t.caller_id, t.method, t.request_id)
                from idempotency_records t),
             (select string_agg(t::text, E'\n' order by t.id) from opportunities t),
             (select string_agg(t::text, E'\n' order by t.id) from status_changes t),
             (select count(*)::text from opportunity_events))",
    )
    .fetch_one(db)
    .await
    .expect("snapshot")
}

async fn count_statuses(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from opportunity_statuses")
        .fetch_one(db)
        .await
        .expect("count statuses")
}

async fn default_ids(db: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select id::text from opportunity_statuses where is_default")
        .fetch_all(db)
        .await
        .expect("default statuses")
}

/// Asserts the live statuses hold positions 1..n in list order, and archived ones follow.
async fn assert_positions_contiguous(api: &mut Api) {
    let all = list(api, true).await;
    let positions: Vec<i32> = all.iter().map(|s| s.position).collect();
    let expected: Vec<i32> = (1..=all.len() as i32).collect();
    assert_eq!(positions, expected, "positions of {all:#?}");
    let first_archived = all.iter().position(|s| s.archived).unwrap_or(all.len());
    assert!(
        all[first_archived..].iter().all(|s| s.archived),
        "archived statuses come after every live one: {all:#?}"
    );
}

/// The (type, subject, description) of a FAILED_PRECONDITION's `PreconditionFailure`.
fn precondition(status: &tonic::Status) -> (String, String, String) {
    let failure = status
        .get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure in {status:?}"));
    let violation = failure
        .violations
        .first()
        .unwrap_or_else(|| panic!("empty PreconditionFailure in {status:?}"));
    (
        violation.r#type.clone(),
        violation.subject.clone(),
        violation.description.clone(),
    )
}

/// Every error of this service names its own domain.
#[track_caller]
fn error_reason(status: &tonic::Status) -> String {
    salesopp_tests::fixtures::error_reason_in(status, "statusconfig.salesopp.io")
}

/// The SQLSTATE and constraint of a failed raw statement.
fn db_error(error: sqlx::Error) -> (String, Option<String>) {
    let db = error
        .as_database_error()
        .unwrap_or_else(|| panic!("not a database error: {error:?}"));
    (
        db.code().map(|c| c.into_owned()).unwrap_or_default(),
        db.constraint().map(str::to_owned),
    )
}

/// Walks every page of ListStatuses as a sales rep; returns the statuses and the page sizes.
async fn walk(
    api: &Api,
    show_archived: bool,
    page_size: i32,
) -> (Vec<pb::OpportunityStatus>, Vec<usize>) {
    let mut api = api.clone();
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .list_statuses(authed(
                &rep_token(),
                pb::ListStatusesRequest {
                    page_size,
                    page_token: page_token.clone(),
                    show_archived,
                },
            ))
            .await
            .expect("page")
            .into_inner();
        assert!(page.statuses.len() <= page_size as usize);
        pages.push(page.statuses.len());
        seen.extend(page.statuses);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        assert!(pages.len() < 20, "pagination does not end");
    }
    (seen, pages)
}

/// `message` with `token` as its bearer, or with no token at all.
fn maybe_authed<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    match token {
        Some(token) => authed(token, message),
        None => tonic::Request::new(message),
    }
}

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).expect("uuid")
}

/// Puts `count` fixture opportunities in `status_id` (raw SQL: the opportunity service is
/// not under test here), with their salesperson and customer. Returns their ids.
async fn put_opportunities(db: &PgPool, status_id: &str, count: i32) -> Vec<Uuid> {
    put_opportunities_with(db, status_id, count, true).await
}

/// `with_history: false` leaves the history to the test, which writes its own chain.
async fn put_opportunities_with(
    db: &PgPool,
    status_id: &str,
    count: i32,
    with_history: bool,
) -> Vec<Uuid> {
    sqlx::query(
        "insert into salespeople (id, display_name, team, roles)
         values ('fixture-rep', 'Fixture Rep', 'north', '{sales_rep}')
         on conflict (id) do nothing",
    )
    .execute(db)
    .await
    .expect("fixture salesperson");
    let customer: Uuid = sqlx::query_scalar(
        "insert into customers (display_name, owner_id, created_by, updated_by)
         values ('Fixture Co., Ltd.', 'fixture-rep', 'fixture-rep', 'fixture-rep')
         returning id",
    )
    .fetch_one(db)
    .await
    .expect("fixture customer");
    // Each opportunity with its first history entry, as CreateOpportunity writes them (R9).
    sqlx::query_scalar(
        "with created as (
             insert into opportunities (customer_id, owner_id, title, currency_code, amount,
                                        status_id, state, close_time, status_change_time,
                                        created_by, updated_by)
             select $1, 'fixture-rep', 'Deal ' || g, 'THB', 1000 * g,
                    s.id, s.kind, case when s.kind = 'OPEN' then null else now() end, now(),
                    'fixture-rep', 'fixture-rep'
             from opportunity_statuses s, generate_series(1, $3) g
             where s.id = $2
             returning id, status_id, amount, status_change_time
         ),
         history as (
             insert into status_changes (opportunity_id, sequence, to_status_id, to_display_name,
                                         to_kind, to_probability, changed_by_id, changed_by_name,
                                         change_time, currency_code, amount)
             select c.id, 1, s.id, s.display_name, s.kind, s.probability, 'fixture-rep',
                    'Fixture Rep', c.status_change_time, 'THB', c.amount
             from created c join opportunity_statuses s on s.id = c.status_id
             where $4
         )
         select id from created",
    )
    .bind(customer)
    .bind(uuid(status_id))
    .bind(count)
    .bind(with_history)
    .fetch_all(db)
    .await
    .expect("fixture opportunities")
}

async fn opportunities_in(db: &PgPool, status_id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from opportunities where status_id = $1")
        .bind(uuid(status_id))
        .fetch_one(db)
        .await
        .expect("count opportunities")
}

// ---------------------------------------------------------------------------------------
// R2 Statuses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn r02_fresh_database_ships_the_default_statuses() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let listed = api
        .list_statuses(authed(&rep_token(), pb::ListStatusesRequest::default()))
        .await
        .expect("a sales rep lists the statuses")
        .into_inner();
    assert!(listed.next_page_token.is_empty());
    let expected = [
        (INTERESTED, "Interested", "สนใจ", 10, pb::StatusKind::Open),
        (PRESENTED, "Presented", "นำเสนอ", 20, pb::StatusKind::Open),
        (
            SENT_EMAIL,
            "Sent email",
            "ส่ง Email",
            30,
            pb::StatusKind::Open,
        ),
        (QUOTATION, "Quotation", "เสนอราคา", 50, pb::StatusKind::Open),
        (
            CONSIDERING,
            "Considering and comparing",
            "พิจารณา และเปรียบเทียบ",
            70,
            pb::StatusKind::Open,
        ),
        (WON, "Closed won", "ปิดการขายสำเร็จ", 100, pb::StatusKind::Won),
        (
            LOST,
            "Closed lost",
            "ปิดการขายไม่สำเร็จ",
            0,
            pb::StatusKind::Lost,
        ),
    ];
    assert_eq!(listed.statuses.len(), expected.len(), "{listed:#?}");
    for (index, (status, (id, en, th, probability, kind))) in
        listed.statuses.iter().zip(expected).enumerate()
    {
        assert_eq!(status.id, id);
        assert_eq!(status.display_name, en);
        assert_eq!(status.localized_names, names(th, en), "{en}");
        assert_eq!(status.probability, probability, "{en}");
        assert_eq!(status.kind(), kind, "{en}");
        assert_eq!(status.position, index as i32 + 1, "{en}");
        assert_eq!(status.is_default, id == INTERESTED, "{en}");
        assert!(!status.archived, "{en}");
        assert!(!status.etag.is_empty(), "{en}");
        assert!(status.create_time.is_some() && status.update_time.is_some());
        // GetStatus answers the same resource.
        assert_eq!(&get(&mut api, id).await, status);
    }
    // Archived ones included: there are none yet.
    assert_eq!(list(&mut api, true).await, listed.statuses);
}

#[tokio::test]
async fn r02_create_status_validates_localized_names() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;

    let cases: Vec<(BTreeMap<String, String>, &str)> = vec![
        // Present but blank or too long.
        (
            names("   ", "Negotiation"),
            "status.localized_names[\"th\"]",
        ),
        (
            names("เจรจาต่อรอง", &"n".repeat(101)),
            "status.localized_names[\"en\"]",
        ),
        // Keys are lower-case language tags.
        (
            BTreeMap::from([
                ("th".to_owned(), "เจรจาต่อรอง".to_owned()),
                ("en".to_owned(), "Negotiation".to_owned()),
                ("EN".to_owned(), "Negotiation".to_owned()),
            ]),
            "status.localized_names[\"EN\"]",
        ),
    ];
    for (localized_names, field) in cases {
        let mut status = draft("Negotiation", "unused", 60);
        status.localized_names = localized_names.clone();
        let failed = expect_invalid(
            api.create_status(admin(create_request(status))).await,
            field,
        );
        assert!(
            field_violations(&failed)
                .iter()
                .all(|(f, _)| f.starts_with("status.localized_names")),
            "{localized_names:?}: {failed:?}"
        );
        assert_eq!(snapshot(&suite.db).await, before, "{localized_names:?}");
    }
    // R2: a missing language is named by the display name.
    let mut status = draft("Haggling", "unused", 60);
    status.localized_names = BTreeMap::from([("en".to_owned(), "Bargaining".to_owned())]);
    let created = api
        .create_status(admin(create_request(status)))
        .await
        .expect("create with English only")
        .into_inner();
    assert_eq!(created.localized_names["th"], "Haggling");
    assert_eq!(created.localized_names["en"], "Bargaining");

    // Both, plus another language: created, values trimmed.
    let mut status = draft("Negotiation", "unused", 60);
    status.localized_names = BTreeMap::from([
        ("th".to_owned(), "  เจรจาต่อรอง ".to_owned()),
        ("en".to_owned(), "Negotiation ".to_owned()),
        ("zh-Hant".to_owned(), "談判".to_owned()),
    ]);
    let created = api
        .create_status(admin(create_request(status)))
        .await
        .expect("create with th and en")
        .into_inner();
    assert_eq!(
        created.localized_names,
        BTreeMap::from([
            ("th".to_owned(), "เจรจาต่อรอง".to_owned()),
            ("en".to_owned(), "Negotiation".to_owned()),
            ("zh-Hant".to_owned(), "談判".to_owned()),
        ])
    );
    assert_eq!(get(&mut api, &created.id).await, created);
}

#[tokio::test]
async fn r02_create_status_validates_display_name_probability_and_request() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;

    for bad_name in ["", "   ", "\t\n", &"x".repeat(101), "Nego\u{0}tiation"] {
        expect_invalid(
            api.create_status(admin(create_request(draft(bad_name, "เจรจา", 60))))
                .await,
            "status.display_name",
        );
        assert_eq!(snapshot(&suite.db).await, before, "{bad_name:?}");
    }
    // No status at all.
    expect_invalid(
        api.create_status(admin(pb::CreateStatusRequest {
            status: None,
            request_id: Uuid::new_v4().to_string(),
        }))
        .await,
        "status",
    );
    // Every problem is reported at once.
    expect_invalid_fields(
        api.create_status(admin(pb::CreateStatusRequest {
            status: Some(pb::OpportunityStatus {
                display_name: " ".into(),
                probability: 0,
                position: -1,
                ..Default::default()
            }),
            request_id: "r".repeat(101),
        }))
        .await,
        &[
            "request_id",
            "status.display_name",
            "status.probability",
            "status.position",
        ],
    );
    // request_id bounds.
    let mut request = create_request(draft("Negotiation", "เจรจา", 60));
    request.request_id = "r".repeat(101);
    expect_invalid(api.create_status(admin(request)).await, "request_id");
    assert_eq!(snapshot(&suite.db).await, before);

    // Trimmed; 100 characters in any script is the limit.
    let created = create(&mut api, "  Negotiation \t", 60).await;
    assert_eq!(created.display_name, "Negotiation");
    let thai = "ก".repeat(100);
    let created = api
        .create_status(admin(create_request(draft(&thai, &thai, 65))))
        .await
        .expect("100 Thai characters")
        .into_inner();
    assert_eq!(created.display_name, thai);
    assert_eq!(created.kind(), pb::StatusKind::Open);
    assert_eq!(created.probability, 65);
    assert!(!created.is_default && !created.archived);
    // Output-only fields of the request are ignored.
    let mut status = draft("Follow-up", "ติดตาม", 40);
    status.id = UNKNOWN.into();
    status.archived = true;
    status.etag = "42".into();
    let created = api
        .create_status(admin(create_request(status)))
        .await
        .expect("create ignores output-only fields")
        .into_inner();
    assert_ne!(created.id, UNKNOWN);
    assert!(!created.archived);
}

#[tokio::test]
async fn r02_duplicate_display_name_ignoring_case_already_exists() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;

    for name in ["Interested", "interested", " PRESENTED ", "closed WON"] {
        let failed = expect_code(
            api.create_status(admin(create_request(draft(name, "ซ้ำ", 40))))
                .await,
            Code::AlreadyExists,
        );
        assert_eq!(error_reason(&failed), "STATUS_NAME_TAKEN");
        assert_eq!(snapshot(&suite.db).await, before, "{name}");
    }
    // Renaming into a taken name, too.
    let failed = expect_code(
        api.update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                display_name: "quotation".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(error_reason(&failed), "STATUS_NAME_TAKEN");
    assert_eq!(snapshot(&suite.db).await, before);

    // A status may change the case of its own name.
    let renamed = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                display_name: "PRESENTED".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .expect("change the case of its own name")
        .into_inner();
    assert_eq!(renamed.display_name, "PRESENTED");

    // Names are unique among live statuses: an archived one's name is free again.
    delete(&mut api, SENT_EMAIL).await;
    let again = create(&mut api, "sent EMAIL", 30).await;
    assert_eq!(again.display_name, "sent EMAIL");
}

#[tokio::test]
async fn r02_create_status_places_it_after_the_last_open_status_or_where_asked() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;

    let negotiation = create(&mut api, "Negotiation", 80).await;
    assert_eq!(negotiation.position, 6, "after the last OPEN status");
    let listed = list(&mut api, false).await;
    assert_eq!(
        ids(&listed),
        [
            INTERESTED,
            PRESENTED,
            SENT_EMAIL,
            QUOTATION,
            CONSIDERING,
            &negotiation.id,
            WON,
            LOST
        ]
    );

    let mut first = draft("Lead", "ลูกค้าเป้าหมาย", 5);
    first.position = 1;
    let first = api
        .create_status(admin(create_request(first)))
        .await
        .expect("create at position 1")
        .into_inner();
    assert_eq!(first.position, 1);
    let mut far = draft("Far away", "ไกล", 50);
    far.position = 999;
    let far = api
        .create_status(admin(create_request(far)))
        .await
        .expect("create past the end")
        .into_inner();
    assert_eq!(far.position, 10, "a position past the end places it last");
    let listed = list(&mut api, false).await;
    assert_eq!(
        ids(&listed),
        [
            &first.id,
            INTERESTED,
            PRESENTED,
            SENT_EMAIL,
            QUOTATION,
            CONSIDERING,
            &negotiation.id,
            WON,
            LOST,
            &far.id
        ]
    );
    assert_positions_contiguous(&mut api).await;
}

// ---------------------------------------------------------------------------------------
// R3 Closing statuses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn r03_create_status_cannot_make_won_or_lost() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    for (kind, probability) in [
        (pb::StatusKind::Won as i32, 100),
        (pb::StatusKind::Lost as i32, 0),
        (pb::StatusKind::Won as i32, 50),
        (42, 50),
    ] {
        let mut status = draft("Second close", "ปิดอีก", probability);
        status.kind = kind;
        expect_invalid(
            api.create_status(admin(create_request(status))).await,
            "status.kind",
        );
        assert_eq!(snapshot(&suite.db).await, before, "kind {kind}");
    }
    let mut status = draft("Negotiation", "เจรจา", 60);
    status.kind = pb::StatusKind::Open as i32;
    let created = api
        .create_status(admin(create_request(status)))
        .await
        .expect("an OPEN status")
        .into_inner();
    assert_eq!(created.kind(), pb::StatusKind::Open);
}

#[tokio::test]
async fn r03_open_probability_is_strictly_between_0_and_100() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    for probability in [0, 100, -1, 101, i32::MIN, i32::MAX] {
        expect_invalid(
            api.create_status(admin(create_request(draft("Edge", "ขอบ", probability))))
                .await,
            "status.probability",
        );
        expect_invalid(
            api.update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: PRESENTED.into(),
                    probability,
                    ..Default::default()
                }),
                update_mask: mask(&["probability"]),
            }))
            .await,
            "status.probability",
        );
        assert_eq!(
            snapshot(&suite.db).await,
            before,
            "probability {probability}"
        );
    }
    assert_eq!(create(&mut api, "Almost lost", 1).await.probability, 1);
    assert_eq!(create(&mut api, "Almost won", 99).await.probability, 99);
    let updated = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                probability: 99,
                ..Default::default()
            }),
            update_mask: mask(&["probability"]),
        }))
        .await
        .expect("99 is an OPEN probability")
        .into_inner();
    assert_eq!(updated.probability, 99);
}

#[tokio::test]
async fn r03_closing_statuses_can_be_renamed_but_keep_kind_and_probability() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;

    let won = get(&mut api, WON).await;
    let renamed = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: WON.into(),
                display_name: "Deal signed".into(),
                localized_names: names("เซ็นสัญญาแล้ว", "Deal signed"),
                ..Default::default()
            }),
            update_mask: mask(&["display_name", "localized_names"]),
        }))
        .await
        .expect("rename WON")
        .into_inner();
    assert_eq!(renamed.display_name, "Deal signed");
    assert_eq!(renamed.localized_names, names("เซ็นสัญญาแล้ว", "Deal signed"));
    assert_eq!(renamed.kind(), pb::StatusKind::Won);
    assert_eq!(renamed.probability, 100);
    assert_eq!(renamed.position, won.position);
    assert_ne!(renamed.etag, won.etag);

    let renamed_lost = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: LOST.into(),
                display_name: "Deal lost".into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .expect("rename LOST")
        .into_inner();
    assert_eq!(renamed_lost.display_name, "Deal lost");
    assert_eq!(renamed_lost.kind(), pb::StatusKind::Lost);
    assert_eq!(renamed_lost.probability, 0);

    let before = snapshot(&suite.db).await;
    for (id, probability) in [(WON, 90), (WON, 0), (WON, 101), (LOST, 10), (LOST, 100)] {
        expect_invalid(
            api.update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: id.into(),
                    probability,
                    ..Default::default()
                }),
                update_mask: mask(&["probability"]),
            }))
            .await,
            "status.probability",
        );
        assert_eq!(snapshot(&suite.db).await, before, "{id} to {probability}");
    }
    // A rename that also sends another probability changes nothing at all.
    expect_invalid(
        api.update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: WON.into(),
                display_name: "Won big".into(),
                probability: 95,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await,
        "status.probability",
    );
    assert_eq!(snapshot(&suite.db).await, before);
    // The fixed value itself is accepted.
    let same = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: WON.into(),
                probability: 100,
                ..Default::default()
            }),
            update_mask: mask(&["probability"]),
        }))
        .await
        .expect("WON at 100")
        .into_inner();
    assert_eq!(same.probability, 100);
    assert_eq!(same.kind(), pb::StatusKind::Won);
}

#[tokio::test]
async fn r03_kind_in_update_mask_is_invalid() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    for (id, kind) in [
        (PRESENTED, pb::StatusKind::Won),
        (WON, pb::StatusKind::Open),
        (LOST, pb::StatusKind::Won),
    ] {
        for paths in [&["kind"][..], &["display_name", "kind"][..]] {
            expect_invalid(
                api.update_status(admin(pb::UpdateStatusRequest {
                    request_id: String::new(),
                    status: Some(pb::OpportunityStatus {
                        id: id.into(),
                        display_name: "Renamed".into(),
                        kind: kind as i32,
                        ..Default::default()
                    }),
                    update_mask: mask(paths),
                }))
                .await,
                "update_mask",
            );
            assert_eq!(snapshot(&suite.db).await, before, "{id} {paths:?}");
        }
    }
    // Without a mask a kind in the request is not a field UpdateStatus changes.
    let updated = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                display_name: "Demo given".into(),
                kind: pb::StatusKind::Won as i32,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .expect("rename")
        .into_inner();
    assert_eq!(updated.kind(), pb::StatusKind::Open);
    assert_eq!(updated.probability, 20);
}

#[tokio::test]
async fn r03_closing_statuses_cannot_be_deleted() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    for id in [WON, LOST] {
        for replacement in ["", PRESENTED] {
            let failed = expect_code(
                api.delete_status(admin(pb::DeleteStatusRequest {
                    request_id: String::new(),
                    id: id.into(),
                    replacement_status_id: replacement.into(),
                    etag: String::new(),
                }))
                .await,
                Code::FailedPrecondition,
            );
            let (kind, subject, _) = precondition(&failed);
            assert_eq!(kind, "STATUS_CLOSING");
            assert_eq!(subject, id);
            assert_eq!(snapshot(&suite.db).await, before);
        }
    }
    let all = list(&mut api, true).await;
    assert_eq!(all.len(), 7);
    assert!(all.iter().all(|s| !s.archived));
}

#[tokio::test]
async fn r03_database_enforces_closing_statuses() {
    let suite = TestSuite::spawn().await;
    let db = &suite.db;
    let before = snapshot(db).await;

    // A second WON (or LOST) status.
    for kind in ["WON", "LOST"] {
        let error = sqlx::query(
            "insert into opportunity_statuses (display_name, localized_names, probability, kind, position)
             values ('Second ' || $1, '{\"th\": \"ซ้ำ\", \"en\": \"Twice\"}',
                     case when $1 = 'WON' then 100 else 0 end, $1::status_kind, 99)",
        )
        .bind(kind)
        .execute(db)
        .await
        .expect_err("a second closing status");
        assert_eq!(
            db_error(error),
            (
                "23505".to_owned(),
                Some("status_one_per_closing_kind_idx".to_owned())
            ),
            "{kind}"
        );
    }
    // A kind changed, either way.
    for sql in [
        "update opportunity_statuses set kind = 'OPEN', probability = 50
         where id = '00000000-0000-4000-8000-000000000006'",
        "update opportunity_statuses set kind = 'OPEN', probability = 50
         where id = '00000000-0000-4000-8000-000000000007'",
        "update opportunity_statuses set kind = 'WON', probability = 100
         where id = '00000000-0000-4000-8000-000000000002'",
    ] {
        let error = sqlx::query(sql).execute(db).await.expect_err(sql);
        assert_eq!(db_error(error).0, "SO001", "{sql}");
    }
    // A status erased: WON, LOST, or an OPEN one.
    for id in [WON, LOST, PRESENTED] {
        let error = sqlx::query("delete from opportunity_statuses where id = $1")
            .bind(uuid(id))
            .execute(db)
            .await
            .expect_err("delete a status row");
        assert_eq!(db_error(error).0, "SO001", "{id}");
    }
    // Probabilities that do not fit the kind.
    for sql in [
        "update opportunity_statuses set probability = 100 where id = '00000000-0000-4000-8000-000000000002'",
        "update opportunity_statuses set probability = 0 where id = '00000000-0000-4000-8000-000000000002'",
        "update opportunity_statuses set probability = 90 where id = '00000000-0000-4000-8000-000000000006'",
        "update opportunity_statuses set probability = 10 where id = '00000000-0000-4000-8000-000000000007'",
        "insert into opportunity_statuses (display_name, localized_names, probability, kind, position)
         values ('Sure thing', '{\"th\": \"แน่นอน\", \"en\": \"Sure thing\"}', 100, 'OPEN', 99)",
    ] {
        let error = sqlx::query(sql).execute(db).await.expect_err(sql);
        assert_eq!(
            db_error(error),
            (
                "23514".to_owned(),
                Some("status_probability_fits_kind".to_owned())
            ),
            "{sql}"
        );
    }
    // The closing statuses are never archived.
    let error = sqlx::query(
        "update opportunity_statuses set archived = true, archive_time = now()
         where id = '00000000-0000-4000-8000-000000000006'",
    )
    .execute(db)
    .await
    .expect_err("archive WON");
    assert_eq!(
        db_error(error),
        (
            "23514".to_owned(),
            Some("status_closing_never_archived".to_owned())
        )
    );
    assert_eq!(snapshot(db).await, before);
}

// ---------------------------------------------------------------------------------------
// R4 One default
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn r04_set_default_status_moves_the_default() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let old = get(&mut api, INTERESTED).await;
    let new = get(&mut api, QUOTATION).await;
    assert!(old.is_default && !new.is_default);

    let answered = api
        .set_default_status(admin(pb::SetDefaultStatusRequest {
            request_id: String::new(),
            id: QUOTATION.into(),
            etag: new.etag.clone(),
        }))
        .await
        .expect("set the default")
        .into_inner();
    assert!(answered.is_default);
    assert_eq!(answered.id, QUOTATION);
    assert_ne!(answered.etag, new.etag);

    let listed = list(&mut api, true).await;
    let defaults: Vec<&str> = listed
        .iter()
        .filter(|s| s.is_default)
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(defaults, [QUOTATION]);
    let old_now = by_id(&listed, INTERESTED);
    assert!(!old_now.is_default);
    assert_ne!(
        old_now.etag, old.etag,
        "the old default changed, so its etag did"
    );
    assert_eq!(by_id(&listed, QUOTATION), &answered);
    // Nothing moved in the pipeline.
    assert_eq!(
        listed.iter().map(|s| s.position).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(default_ids(&suite.db).await, [QUOTATION]);

    // Setting the default that already is one changes nothing.
    let before = snapshot(&suite.db).await;
    let again = api
        .set_default_status(admin(pb::SetDefaultStatusRequest {
            request_id: String::new(),
            id: QUOTATION.into(),
            etag: String::new(),
        }))
        .await
        .expect("set the same default")
        .into_inner();
    assert_eq!(again, answered);
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn r04_default_must_be_a_live_open_status() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    delete(&mut api, SENT_EMAIL).await;
    let before = snapshot(&suite.db).await;
    for (id, reason) in [
        (WON, "STATUS_NOT_OPEN"),
        (LOST, "STATUS_NOT_OPEN"),
        (SENT_EMAIL, "STATUS_ARCHIVED"),
    ] {
        let failed = expect_code(
            api.set_default_status(admin(pb::SetDefaultStatusRequest {
                request_id: String::new(),
                id: id.into(),
                etag: String::new(),
            }))
            .await,
            Code::FailedPrecondition,
        );
        assert_eq!(precondition(&failed).0, reason, "{id}");
        assert_eq!(precondition(&failed).1, id);
        assert_eq!(snapshot(&suite.db).await, before, "{id}");
    }
    assert_eq!(default_ids(&suite.db).await, [INTERESTED]);
}

#[tokio::test]
async fn r04_create_status_as_default_moves_the_default() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let old = get(&mut api, INTERESTED).await;
    let mut status = draft("Walk-in", "ลูกค้าเดินเข้ามา", 15);
    status.is_default = true;
    let created = api
        .create_status(admin(create_request(status)))
        .await
        .expect("create as default")
        .into_inner();
    assert!(created.is_default);
    let old_now = get(&mut api, INTERESTED).await;
    assert!(!old_now.is_default);
    assert_ne!(old_now.etag, old.etag);
    assert_eq!(
        default_ids(&suite.db).await,
        std::slice::from_ref(&created.id)
    );
    let listed = list(&mut api, false).await;
    assert_eq!(listed.iter().filter(|s| s.is_default).count(), 1);
}

#[tokio::test]
async fn r04_database_enforces_exactly_one_default() {
    let suite = TestSuite::spawn().await;
    let db = &suite.db;
    let before = snapshot(db).await;

    // A second default violates the partial unique index at once.
    let error = sqlx::query(
        "update opportunity_statuses set is_default = true
         where id = '00000000-0000-4000-8000-000000000002'",
    )
    .execute(db)
    .await
    .expect_err("a second default");
    assert_eq!(
        db_error(error),
        (
            "23505".to_owned(),
            Some("status_one_default_idx".to_owned())
        )
    );

    // Unsetting the only default fails when the transaction commits.
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("update opportunity_statuses set is_default = false where is_default")
        .execute(&mut *tx)
        .await
        .expect("the statement itself passes: the check is deferred to commit");
    let error = tx.commit().await.expect_err("commit without a default");
    assert_eq!(db_error(error).0, "SO001");
    // Also as a statement of its own.
    let error = sqlx::query("update opportunity_statuses set is_default = false where is_default")
        .execute(db)
        .await
        .expect_err("no default");
    assert_eq!(db_error(error).0, "SO001");

    // The default is a live OPEN status.
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("update opportunity_statuses set is_default = false where is_default")
        .execute(&mut *tx)
        .await
        .expect("unset");
    let error = sqlx::query(
        "update opportunity_statuses set is_default = true
         where id = '00000000-0000-4000-8000-000000000006'",
    )
    .execute(&mut *tx)
    .await
    .expect_err("WON as the default");
    assert_eq!(
        db_error(error),
        (
            "23514".to_owned(),
            Some("status_default_is_open_and_live".to_owned())
        )
    );
    tx.rollback().await.expect("rollback");

    // Moving it in one transaction is fine.
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("update opportunity_statuses set is_default = false where is_default")
        .execute(&mut *tx)
        .await
        .expect("unset");
    sqlx::query(
        "update opportunity_statuses set is_default = true
         where id = '00000000-0000-4000-8000-000000000002'",
    )
    .execute(&mut *tx)
    .await
    .expect("set");
    tx.rollback().await.expect("rollback");

    assert_eq!(snapshot(db).await, before);
    assert_eq!(default_ids(db).await, [INTERESTED]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r04_concurrent_set_default_leaves_exactly_one_default() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let mut open_ids = vec![
        INTERESTED.to_owned(),
        PRESENTED.to_owned(),
        SENT_EMAIL.to_owned(),
        QUOTATION.to_owned(),
        CONSIDERING.to_owned(),
    ];
    for (index, name) in ["Extra 1", "Extra 2", "Extra 3", "Extra 4", "Extra 5"]
        .iter()
        .enumerate()
    {
        open_ids.push(create(&mut api, name, 40 + index as i32).await.id);
    }
    assert_eq!(open_ids.len(), 10);

    for round in 0..3 {
        // Another order each round.
        open_ids.rotate_left(3);
        let calls = open_ids.iter().map(|id| {
            let mut api = api.clone();
            let id = id.clone();
            async move {
                api.set_default_status(admin(pb::SetDefaultStatusRequest {
                    request_id: String::new(),
                    id: id.clone(),
                    etag: String::new(),
                }))
                .await
                .map(|r| (id, r.into_inner()))
            }
        });
        // Two creates that make their new status the default race with them.
        let creates = (0..2).map(|index| {
            let mut api = api.clone();
            async move {
                let mut status = draft(&format!("Hot lead {round}.{index}"), "ลูกค้าร้อน", 30);
                status.is_default = true;
                api.create_status(admin(create_request(status)))
                    .await
                    .map(|r| {
                        let status = r.into_inner();
                        (status.id.clone(), status)
                    })
            }
        });
        let (mut results, created) = tokio::join!(join_all(calls), join_all(creates));
        results.extend(created);
        let mut succeeded = Vec::new();
        for result in results {
            match result {
                Ok((id, status)) => {
                    assert!(status.is_default);
                    assert_eq!(status.id, id);
                    succeeded.push(id);
                }
                // A clean failure: retryable, never an internal error.
                Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
            }
        }
        assert!(!succeeded.is_empty(), "round {round}: none succeeded");
        let defaults = default_ids(&suite.db).await;
        assert_eq!(defaults.len(), 1, "round {round}: {defaults:?}");
        assert!(succeeded.contains(&defaults[0]), "round {round}");
        let listed = list(&mut api, true).await;
        assert_eq!(
            listed.iter().filter(|s| s.is_default).count(),
            1,
            "round {round}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// R6 Deleting a status
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn r06_delete_unused_status_archives_it() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = get(&mut api, SENT_EMAIL).await;

    let deleted = api
        .delete_status(admin(pb::DeleteStatusRequest {
            request_id: String::new(),
            id: SENT_EMAIL.into(),
            replacement_status_id: String::new(),
            etag: before.etag.clone(),
        }))
        .await
        .expect("delete an unused status")
        .into_inner();
    assert_eq!(deleted.moved_opportunity_count, 0);
    let archived = deleted.status.expect("the archived status");
    assert_eq!(archived.id, SENT_EMAIL);
    assert!(archived.archived);
    assert_eq!(archived.display_name, before.display_name);
    assert_eq!(archived.localized_names, before.localized_names);
    assert_eq!(archived.probability, before.probability);
    assert_ne!(archived.etag, before.etag);

    // Hidden from the pipeline, which stays 1..n.
    let live = list(&mut api, false).await;
    assert_eq!(
        ids(&live),
        [INTERESTED, PRESENTED, QUOTATION, CONSIDERING, WON, LOST]
    );
    assert_eq!(
        live.iter().map(|s| s.position).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    // Listed after the live ones when asked for, and still readable.
    let all = list(&mut api, true).await;
    assert_eq!(all.len(), 7);
    assert_eq!(all.last(), Some(&archived));
    assert_eq!(get(&mut api, SENT_EMAIL).await, archived);
    assert_positions_contiguous(&mut api).await;
    // Not erased: the row is still there.
    assert_eq!(count_statuses(&suite.db).await, 7);

    // Deleting it again changes nothing.
    let snap = snapshot(&suite.db).await;
    let again = delete(&mut api, SENT_EMAIL).await;
    assert_eq!(again.status.as_ref(), Some(&archived));
    assert_eq!(snapshot(&suite.db).await, snap);

    // A second archive keeps the order: live 1..n, archived after.
    delete(&mut api, PRESENTED).await;
    assert_positions_contiguous(&mut api).await;
    let live = list(&mut api, false).await;
    assert_eq!(ids(&live), [INTERESTED, QUOTATION, CONSIDERING, WON, LOST]);
    let created = create(&mut api, "Negotiation", 60).await;
    assert_eq!(created.position, 4);
    assert_positions_contiguous(&mut api).await;
}

#[tokio::test]
async fn r06_delete_default_status_fails() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    let failed = expect_code(
        api.delete_status(admin(pb::DeleteStatusRequest {
            request_id: String::new(),
            id: INTERESTED.into(),
            replacement_status_id: PRESENTED.into(),
            etag: String::new(),
        }))
        .await,
        Code::FailedPrecondition,
    );
    let (kind, subject, _) = precondition(&failed);
    assert_eq!(
        (kind.as_str(), subject.as_str()),
        ("STATUS_IS_DEFAULT", INTERESTED)
    );
    assert_eq!(snapshot(&suite.db).await, before);

    // Once another status is the default, it can go.
    api.set_default_status(admin(pb::SetDefaultStatusRequest {
        request_id: String::new(),
        id: PRESENTED.into(),
        etag: String::new(),
    }))
    .await
    .expect("move the default");
    let deleted = delete(&mut api, INTERESTED).await;
    assert!(deleted.status.expect("status").archived);
    assert_eq!(default_ids(&suite.db).await, [PRESENTED]);
}

#[tokio::test]
async fn r06_delete_status_in_use_needs_replacement() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    put_opportunities(&suite.db, QUOTATION, 3).await;
    put_opportunities(&suite.db, PRESENTED, 1).await;
    let before = snapshot(&suite.db).await;

    let failed = expect_code(
        api.delete_status(admin(pb::DeleteStatusRequest {
            id: QUOTATION.into(),
            ..Default::default()
        }))
        .await,
        Code::FailedPrecondition,
    );
    let (kind, subject, description) = precondition(&failed);
    assert_eq!(kind, "STATUS_IN_USE");
    assert_eq!(subject, QUOTATION);
    assert!(
        failed.message().contains('3') && description.contains('3'),
        "the message says how many opportunities: {failed:?}"
    );
    assert!(
        failed.message().contains("replacement_status_id"),
        "{failed:?}"
    );
    assert_eq!(snapshot(&suite.db).await, before);
    assert_eq!(opportunities_in(&suite.db, QUOTATION).await, 3);
    assert!(!get(&mut api, QUOTATION).await.archived);

    let failed = expect_code(
        api.delete_status(admin(pb::DeleteStatusRequest {
            id: PRESENTED.into(),
            ..Default::default()
        }))
        .await,
        Code::FailedPrecondition,
    );
    assert!(failed.message().contains('1'), "{failed:?}");
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn r06_delete_status_replacement_must_be_another_live_open_status() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    delete(&mut api, SENT_EMAIL).await;
    put_opportunities(&suite.db, QUOTATION, 2).await;
    let before = snapshot(&suite.db).await;

    for replacement in [WON, LOST, SENT_EMAIL, UNKNOWN, QUOTATION, "not-a-uuid"] {
        expect_invalid(
            api.delete_status(admin(pb::DeleteStatusRequest {
                request_id: String::new(),
                id: QUOTATION.into(),
                replacement_status_id: replacement.into(),
                etag: String::new(),
            }))
            .await,
            "replacement_status_id",
        );
        assert_eq!(snapshot(&suite.db).await, before, "{replacement}");
    }
    assert_eq!(opportunities_in(&suite.db, QUOTATION).await, 2);
    assert!(!get(&mut api, QUOTATION).await.archived);
}

/// R6's success path: opportunities in the deleted status move to the replacement, each as a
/// normal status change. The move is the shared status-change implementation of the
/// opportunity service (DESIGN.md: one implementation, used by both).
#[tokio::test]
async fn r06_delete_status_in_use_moves_opportunities_to_the_replacement() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let moved = put_opportunities(&suite.db, QUOTATION, 3).await;
    let deleted = api
        .delete_status(admin(pb::DeleteStatusRequest {
            request_id: String::new(),
            id: QUOTATION.into(),
            replacement_status_id: CONSIDERING.into(),
            etag: String::new(),
        }))
        .await
        .expect("delete with a replacement")
        .into_inner();
    assert_eq!(deleted.moved_opportunity_count, 3);
    assert!(deleted.status.expect("status").archived);
    assert_eq!(opportunities_in(&suite.db, QUOTATION).await, 0);
    assert_eq!(opportunities_in(&suite.db, CONSIDERING).await, 3);
    let changes: i64 = sqlx::query_scalar(
        "select count(*) from status_changes
         where to_status_id = $1 and opportunity_id = any($2)",
    )
    .bind(uuid(CONSIDERING))
    .bind(&moved)
    .fetch_one(&suite.db)
    .await
    .expect("count history");
    assert_eq!(
        changes, 3,
        "each move is a status change with a history entry"
    );
}

// ---------------------------------------------------------------------------------------
// R7 History never rewritten
// ---------------------------------------------------------------------------------------

/// sequence, from_display_name, from_probability, to_display_name, to_probability.
type HistoryRow = (i32, Option<String>, Option<i16>, String, i16);

#[tokio::test]
async fn r07_renaming_a_status_never_rewrites_history() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let db = &suite.db;
    let opportunity = put_opportunities_with(db, PRESENTED, 1, false).await[0];
    // Its history: created in Interested, then moved to Presented.
    sqlx::query(
        "insert into status_changes (opportunity_id, sequence, to_status_id, to_display_name,
                                     to_kind, to_probability, changed_by_id, changed_by_name,
                                     change_time, currency_code, amount)
         values ($1, 1, $2, 'Interested', 'OPEN', 10, 'fixture-rep', 'Fixture Rep',
                 now() - interval '2 days', 'THB', 1000)",
    )
    .bind(opportunity)
    .bind(uuid(INTERESTED))
    .execute(db)
    .await
    .expect("first history entry");
    sqlx::query(
        "insert into status_changes (opportunity_id, sequence, from_status_id, from_display_name,
                                     from_kind, from_probability, to_status_id, to_display_name,
                                     to_kind, to_probability, changed_by_id, changed_by_name,
                                     change_time, currency_code, amount, time_in_previous_status)
         values ($1, 2, $2, 'Interested', 'OPEN', 10, $3, 'Presented', 'OPEN', 20,
                 'fixture-rep', 'Fixture Rep', now() - interval '1 day', 'THB', 1000,
                 interval '1 day')",
    )
    .bind(opportunity)
    .bind(uuid(INTERESTED))
    .bind(uuid(PRESENTED))
    .execute(db)
    .await
    .expect("second history entry");
    let history = || async {
        sqlx::query_scalar::<_, String>(
            "select string_agg(t::text, E'\n' order by sequence) from status_changes t",
        )
        .fetch_one(db)
        .await
        .expect("history")
    };
    let before = history().await;

    for (id, name, th, probability) in [
        (INTERESTED, "Lead in", "ลูกค้าสนใจ", 15),
        (PRESENTED, "Demo done", "สาธิตแล้ว", 35),
    ] {
        let updated = api
            .update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: id.into(),
                    display_name: name.into(),
                    localized_names: names(th, name),
                    probability,
                    ..Default::default()
                }),
                update_mask: mask(&["*"]),
            }))
            .await
            .expect("rename and re-weigh")
            .into_inner();
        assert_eq!(
            (updated.display_name.as_str(), updated.probability),
            (name, probability)
        );
    }
    // The statuses changed; what history says did not.
    assert_eq!(history().await, before);
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "select sequence, from_display_name, from_probability, to_display_name, to_probability
         from status_changes where opportunity_id = $1 order by sequence",
    )
    .bind(opportunity)
    .fetch_all(db)
    .await
    .expect("history rows");
    assert_eq!(
        rows,
        [
            (1, None, None, "Interested".to_owned(), 10),
            (
                2,
                Some("Interested".to_owned()),
                Some(10),
                "Presented".to_owned(),
                20
            ),
        ]
    );
    // Archiving a status that history names keeps it resolvable.
    api.set_default_status(admin(pb::SetDefaultStatusRequest {
        request_id: String::new(),
        id: QUOTATION.into(),
        etag: String::new(),
    }))
    .await
    .expect("move the default");
    delete(&mut api, INTERESTED).await;
    assert_eq!(history().await, before);
    assert_eq!(get(&mut api, INTERESTED).await.display_name, "Lead in");
}

// ---------------------------------------------------------------------------------------
// R11 Safe retries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn r11_create_status_retry_returns_the_first_result() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let request = create_request(draft("Negotiation", "เจรจา", 60));
    let first = api
        .create_status(admin(request.clone()))
        .await
        .expect("first")
        .into_inner();
    // Something changes the status in between: the retry still answers the first result.
    api.update_status(admin(pb::UpdateStatusRequest {
        request_id: String::new(),
        status: Some(pb::OpportunityStatus {
            id: first.id.clone(),
            probability: 65,
            ..Default::default()
        }),
        update_mask: mask(&["probability"]),
    }))
    .await
    .expect("update");
    let snap = snapshot(&suite.db).await;
    for _ in 0..3 {
        let retry = api
            .create_status(admin(request.clone()))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(retry, first);
    }
    assert_eq!(snapshot(&suite.db).await, snap, "a retry does nothing");
    assert_eq!(count_statuses(&suite.db).await, 8);
    let named: i64 = sqlx::query_scalar(
        "select count(*) from opportunity_statuses where display_name = 'Negotiation'",
    )
    .fetch_one(&suite.db)
    .await
    .expect("count");
    assert_eq!(named, 1);

    // The key belongs to its caller: another admin's same key is a request of its own.
    let other_admin = token("admin-2", "Boon Admin", "hq", &["sales_admin"]);
    let mut other = request.clone();
    other.status = Some(draft("Contract review", "ตรวจสัญญา", 85));
    let theirs = api
        .create_status(authed(&other_admin, other))
        .await
        .expect("another caller's request")
        .into_inner();
    assert_ne!(theirs.id, first.id);
    assert_eq!(count_statuses(&suite.db).await, 9);
}

#[tokio::test]
async fn r11_same_request_id_with_a_different_request_is_invalid() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let request = create_request(draft("Negotiation", "เจรจา", 60));
    let first = api
        .create_status(admin(request.clone()))
        .await
        .expect("first")
        .into_inner();
    let before = snapshot(&suite.db).await;
    for changed in [
        draft("Negotiation", "เจรจา", 61),
        draft("Negotiations", "เจรจา", 60),
        draft("Contract review", "ตรวจสัญญา", 85),
    ] {
        let mut reused = request.clone();
        reused.status = Some(changed);
        expect_invalid(api.create_status(admin(reused)).await, "request_id");
        assert_eq!(snapshot(&suite.db).await, before);
    }
    // The original still replays.
    let retry = api
        .create_status(admin(request.clone()))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retry, first);

    // A key is remembered for 24 hours; after that it is free for a new request.
    sqlx::query("update idempotency_records set create_time = now() - interval '25 hours'")
        .execute(&suite.db)
        .await
        .expect("age the record");
    let mut reused = request.clone();
    reused.status = Some(draft("Contract review", "ตรวจสัญญา", 85));
    let fresh = api
        .create_status(admin(reused))
        .await
        .expect("an expired key is free again")
        .into_inner();
    assert_ne!(fresh.id, first.id);
    assert_eq!(fresh.display_name, "Contract review");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r11_concurrent_creates_with_one_request_id_create_one_status() {
    let suite = TestSuite::spawn().await;
    let api = suite.statuses().await;
    let request = create_request(draft("Negotiation", "เจรจา", 60));
    let calls = (0..8).map(|_| {
        let mut api = api.clone();
        let request = request.clone();
        async move { api.create_status(admin(request)).await }
    });
    let results = join_all(calls).await;
    let created: Vec<pb::OpportunityStatus> = results
        .into_iter()
        .map(|r| r.expect("every concurrent retry succeeds").into_inner())
        .collect();
    let distinct: BTreeSet<&str> = created.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(distinct.len(), 1, "{created:#?}");
    assert!(created.iter().all(|s| *s == created[0]));
    assert_eq!(count_statuses(&suite.db).await, 8);
    let records: i64 = sqlx::query_scalar("select count(*) from idempotency_records")
        .fetch_one(&suite.db)
        .await
        .expect("count");
    assert_eq!(records, 1);
}

// ---------------------------------------------------------------------------------------
// R12 Visibility: who may read and configure statuses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn r12_only_sales_admin_configures_statuses() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    let interested = get(&mut api, INTERESTED).await;
    for who in [rep_token(), manager_token()] {
        let failed = expect_code(
            api.create_status(authed(&who, create_request(draft("Mine", "ของฉัน", 50))))
                .await,
            Code::PermissionDenied,
        );
        assert_eq!(error_reason(&failed), "ROLE_REQUIRED");
        expect_code(
            api.update_status(authed(
                &who,
                pb::UpdateStatusRequest {
                    request_id: String::new(),
                    status: Some(pb::OpportunityStatus {
                        id: PRESENTED.into(),
                        display_name: "Mine".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                },
            ))
            .await,
            Code::PermissionDenied,
        );
        expect_code(
            api.delete_status(authed(
                &who,
                pb::DeleteStatusRequest {
                    id: SENT_EMAIL.into(),
                    ..Default::default()
                },
            ))
            .await,
            Code::PermissionDenied,
        );
        expect_code(
            api.set_default_status(authed(
                &who,
                pb::SetDefaultStatusRequest {
                    request_id: String::new(),
                    id: PRESENTED.into(),
                    etag: String::new(),
                },
            ))
            .await,
            Code::PermissionDenied,
        );
        // A valid permutation: only the role is wrong.
        let order = [
            PRESENTED,
            INTERESTED,
            SENT_EMAIL,
            QUOTATION,
            CONSIDERING,
            WON,
            LOST,
        ];
        expect_code(
            api.reorder_statuses(authed(
                &who,
                pb::ReorderStatusesRequest {
                    request_id: String::new(),
                    status_ids: order.iter().map(|s| (*s).to_owned()).collect(),
                },
            ))
            .await,
            Code::PermissionDenied,
        );
        assert_eq!(snapshot(&suite.db).await, before);

        // Every sales role reads.
        let listed = api
            .list_statuses(authed(&who, pb::ListStatusesRequest::default()))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.statuses.len(), 7);
        let got = api
            .get_status(authed(
                &who,
                pb::GetStatusRequest {
                    id: INTERESTED.into(),
                },
            ))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(got, interested);
    }
}

#[tokio::test]
async fn r12_a_token_without_a_sales_role_cannot_read() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    for roles in [&[][..], &["viewer"][..], &["SALES_ADMIN"][..]] {
        let nobody = token("svc-1", "Some Service", "", roles);
        let failed = expect_code(
            api.list_statuses(authed(&nobody, pb::ListStatusesRequest::default()))
                .await,
            Code::PermissionDenied,
        );
        assert_eq!(error_reason(&failed), "ROLE_REQUIRED");
        expect_code(
            api.get_status(authed(
                &nobody,
                pb::GetStatusRequest {
                    id: INTERESTED.into(),
                },
            ))
            .await,
            Code::PermissionDenied,
        );
        expect_code(
            api.create_status(authed(&nobody, create_request(draft("X", "เอ็กซ์", 50))))
                .await,
            Code::PermissionDenied,
        );
    }
}

#[tokio::test]
async fn r12_calls_without_a_valid_token_are_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    let forged = mint_hs256(
        b"not-the-secret-of-this-suite-000",
        &TokenRequest {
            sub: "admin-1".into(),
            name: "Araya Admin".into(),
            team: "hq".into(),
            roles: vec!["sales_admin".into()],
            ttl_seconds: 600,
            issuer: None,
            audience: None,
        },
    )
    .expect("mint");
    // None, garbage, and a token signed with another secret.
    for token in [None, Some("garbage"), Some(forged.as_str())] {
        expect_code(
            api.list_statuses(maybe_authed(token, pb::ListStatusesRequest::default()))
                .await,
            Code::Unauthenticated,
        );
        expect_code(
            api.get_status(maybe_authed(
                token,
                pb::GetStatusRequest {
                    id: INTERESTED.into(),
                },
            ))
            .await,
            Code::Unauthenticated,
        );
        expect_code(
            api.create_status(maybe_authed(token, create_request(draft("X", "เอ็กซ์", 50))))
                .await,
            Code::Unauthenticated,
        );
        expect_code(
            api.update_status(maybe_authed(
                token,
                pb::UpdateStatusRequest {
                    request_id: String::new(),
                    status: Some(pb::OpportunityStatus {
                        id: PRESENTED.into(),
                        display_name: "X".into(),
                        ..Default::default()
                    }),
                    update_mask: None,
                },
            ))
            .await,
            Code::Unauthenticated,
        );
        expect_code(
            api.delete_status(maybe_authed(
                token,
                pb::DeleteStatusRequest {
                    id: SENT_EMAIL.into(),
                    ..Default::default()
                },
            ))
            .await,
            Code::Unauthenticated,
        );
        expect_code(
            api.set_default_status(maybe_authed(
                token,
                pb::SetDefaultStatusRequest {
                    request_id: String::new(),
                    id: PRESENTED.into(),
                    etag: String::new(),
                },
            ))
            .await,
            Code::Unauthenticated,
        );
        expect_code(
            api.reorder_statuses(maybe_authed(
                token,
                pb::ReorderStatusesRequest {
                    request_id: String::new(),
                    status_ids: vec![INTERESTED.into()],
                },
            ))
            .await,
            Code::Unauthenticated,
        );
    }
    assert_eq!(snapshot(&suite.db).await, before);
}

// ---------------------------------------------------------------------------------------
// The API contract of every call (AIP): ids, NOT_FOUND, etags, masks, order, pages
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn aip_every_call_rejects_a_malformed_id() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    for bad in ["", "not-a-uuid", "00000000-0000-4000-8000-00000000000", "1"] {
        expect_invalid(
            api.get_status(admin(pb::GetStatusRequest { id: bad.into() }))
                .await,
            "id",
        );
        expect_invalid(
            api.update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: bad.into(),
                    display_name: "Renamed".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            }))
            .await,
            "status.id",
        );
        expect_invalid(
            api.delete_status(admin(pb::DeleteStatusRequest {
                id: bad.into(),
                ..Default::default()
            }))
            .await,
            "id",
        );
        expect_invalid(
            api.set_default_status(admin(pb::SetDefaultStatusRequest {
                request_id: String::new(),
                id: bad.into(),
                etag: String::new(),
            }))
            .await,
            "id",
        );
        expect_invalid(
            api.reorder_statuses(admin(pb::ReorderStatusesRequest {
                request_id: String::new(),
                status_ids: vec![
                    INTERESTED.into(),
                    bad.into(),
                    PRESENTED.into(),
                    SENT_EMAIL.into(),
                    QUOTATION.into(),
                    CONSIDERING.into(),
                    WON.into(),
                    LOST.into(),
                ],
            }))
            .await,
            "status_ids[1]",
        );
        assert_eq!(snapshot(&suite.db).await, before, "{bad:?}");
    }
    // UpdateStatus without a status at all.
    expect_invalid(
        api.update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: None,
            update_mask: mask(&["display_name"]),
        }))
        .await,
        "status",
    );
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn aip_every_call_answers_not_found_for_an_unknown_id() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    let check = |status: tonic::Status| {
        assert_eq!(error_reason(&status), "STATUS_NOT_FOUND");
        let resource = status
            .get_details_resource_info()
            .expect("ResourceInfo of NOT_FOUND");
        assert_eq!(resource.resource_name, UNKNOWN);
    };
    check(expect_code(
        api.get_status(admin(pb::GetStatusRequest { id: UNKNOWN.into() }))
            .await,
        Code::NotFound,
    ));
    check(expect_code(
        api.update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: UNKNOWN.into(),
                display_name: "Ghost".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await,
        Code::NotFound,
    ));
    check(expect_code(
        api.delete_status(admin(pb::DeleteStatusRequest {
            request_id: String::new(),
            id: UNKNOWN.into(),
            replacement_status_id: PRESENTED.into(),
            etag: String::new(),
        }))
        .await,
        Code::NotFound,
    ));
    check(expect_code(
        api.set_default_status(admin(pb::SetDefaultStatusRequest {
            request_id: String::new(),
            id: UNKNOWN.into(),
            etag: String::new(),
        }))
        .await,
        Code::NotFound,
    ));
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn aip_stale_etag_is_aborted_and_a_matching_etag_works() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let stale = get(&mut api, PRESENTED).await;
    // Someone else changes it.
    let current = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                probability: 25,
                etag: stale.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["probability"]),
        }))
        .await
        .expect("update with the current etag")
        .into_inner();
    assert_ne!(current.etag, stale.etag);
    assert_eq!(current.probability, 25);

    let before = snapshot(&suite.db).await;
    for etag in [stale.etag.as_str(), "999", "garbage"] {
        let failed = expect_code(
            api.update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: PRESENTED.into(),
                    display_name: "Lost update".into(),
                    etag: etag.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            }))
            .await,
            Code::Aborted,
        );
        assert_eq!(error_reason(&failed), "ETAG_MISMATCH");
        expect_code(
            api.set_default_status(admin(pb::SetDefaultStatusRequest {
                request_id: String::new(),
                id: PRESENTED.into(),
                etag: etag.into(),
            }))
            .await,
            Code::Aborted,
        );
        expect_code(
            api.delete_status(admin(pb::DeleteStatusRequest {
                request_id: String::new(),
                id: PRESENTED.into(),
                replacement_status_id: String::new(),
                etag: etag.into(),
            }))
            .await,
            Code::Aborted,
        );
        assert_eq!(snapshot(&suite.db).await, before, "etag {etag:?}");
    }

    // Each call with the current etag goes through, and answers the next etag.
    let renamed = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                display_name: "Demo given".into(),
                etag: current.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .expect("update with the current etag")
        .into_inner();
    assert_eq!(renamed.display_name, "Demo given");
    assert_eq!(renamed.probability, 25);
    assert_ne!(renamed.etag, current.etag);
    assert_eq!(get(&mut api, PRESENTED).await, renamed);

    let default = api
        .set_default_status(admin(pb::SetDefaultStatusRequest {
            request_id: String::new(),
            id: PRESENTED.into(),
            etag: renamed.etag.clone(),
        }))
        .await
        .expect("set default with the current etag")
        .into_inner();
    assert!(default.is_default);

    let quotation = get(&mut api, QUOTATION).await;
    let deleted = api
        .delete_status(admin(pb::DeleteStatusRequest {
            request_id: String::new(),
            id: QUOTATION.into(),
            replacement_status_id: String::new(),
            etag: quotation.etag.clone(),
        }))
        .await
        .expect("delete with the current etag")
        .into_inner();
    assert!(deleted.status.expect("status").archived);
}

#[tokio::test]
async fn aip_update_mask_accepts_only_mutable_fields() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    let full = pb::OpportunityStatus {
        id: PRESENTED.into(),
        display_name: "Demo given".into(),
        localized_names: names("สาธิตแล้ว", "Demo given"),
        probability: 25,
        position: 5,
        is_default: true,
        archived: true,
        ..Default::default()
    };
    for paths in [
        &["id"][..],
        &["etag"],
        &["create_time"],
        &["update_time"],
        &["position"],
        &["is_default"],
        &["archived"],
        &["colour"],
        &["status.display_name"],
        &["display_name", "colour"],
        &["*", "display_name"],
    ] {
        expect_invalid(
            api.update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(full.clone()),
                update_mask: mask(paths),
            }))
            .await,
            "update_mask",
        );
        assert_eq!(snapshot(&suite.db).await, before, "{paths:?}");
    }
    // An empty update: no mask and nothing set.
    for update_mask in [None, mask(&[])] {
        expect_invalid(
            api.update_status(admin(pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: PRESENTED.into(),
                    ..Default::default()
                }),
                update_mask,
            }))
            .await,
            "update_mask",
        );
        assert_eq!(snapshot(&suite.db).await, before);
    }
    // A masked field that is invalid names the resource field.
    expect_invalid(
        api.update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await,
        "status.display_name",
    );
    expect_invalid(
        api.update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                localized_names: BTreeMap::from([("EN".to_owned(), "Demo".to_owned())]),
                ..Default::default()
            }),
            update_mask: mask(&["localized_names"]),
        }))
        .await,
        "status.localized_names[\"EN\"]",
    );
    assert_eq!(snapshot(&suite.db).await, before);

    // Only the masked field changes, whatever else the request holds.
    let updated = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(full.clone()),
            update_mask: mask(&["probability"]),
        }))
        .await
        .expect("masked probability")
        .into_inner();
    assert_eq!(updated.probability, 25);
    assert_eq!(updated.display_name, "Presented");
    assert_eq!(updated.localized_names, names("นำเสนอ", "Presented"));
    assert_eq!(updated.position, 2);
    assert!(!updated.is_default && !updated.archived);

    // No mask: the fields the request sets.
    let updated = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                id: PRESENTED.into(),
                display_name: "  Demo given ".into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .expect("no mask")
        .into_inner();
    assert_eq!(updated.display_name, "Demo given");
    assert_eq!(updated.probability, 25);
    assert_eq!(updated.localized_names, names("นำเสนอ", "Presented"));

    // `*`: all three mutable fields, and nothing else.
    let updated = api
        .update_status(admin(pb::UpdateStatusRequest {
            request_id: String::new(),
            status: Some(pb::OpportunityStatus {
                display_name: "Demo done".into(),
                localized_names: names("สาธิตเสร็จ", "Demo done"),
                probability: 30,
                ..full
            }),
            update_mask: mask(&["*"]),
        }))
        .await
        .expect("update *")
        .into_inner();
    assert_eq!(updated.display_name, "Demo done");
    assert_eq!(updated.localized_names, names("สาธิตเสร็จ", "Demo done"));
    assert_eq!(updated.probability, 30);
    assert_eq!(updated.position, 2);
    assert!(!updated.is_default && !updated.archived);
    assert_eq!(updated.kind(), pb::StatusKind::Open);
    assert_eq!(get(&mut api, PRESENTED).await, updated);
}

#[tokio::test]
async fn aip_reorder_statuses_takes_exactly_the_live_statuses() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    delete(&mut api, SENT_EMAIL).await;
    let live = [INTERESTED, PRESENTED, QUOTATION, CONSIDERING, WON, LOST];
    let before = snapshot(&suite.db).await;
    let reorder = |status_ids: Vec<&str>| {
        admin(pb::ReorderStatusesRequest {
            request_id: String::new(),
            status_ids: status_ids.into_iter().map(str::to_owned).collect(),
        })
    };

    // Missing one.
    expect_invalid(
        api.reorder_statuses(reorder(live[..5].to_vec())).await,
        "status_ids",
    );
    // Empty.
    expect_invalid(api.reorder_statuses(reorder(vec![])).await, "status_ids");
    // Twice.
    let mut twice = live.to_vec();
    twice.push(PRESENTED);
    expect_invalid(api.reorder_statuses(reorder(twice)).await, "status_ids[6]");
    // Unknown.
    let mut unknown = live.to_vec();
    unknown.push(UNKNOWN);
    expect_invalid(
        api.reorder_statuses(reorder(unknown)).await,
        "status_ids[6]",
    );
    // Unknown in place of a live one.
    let mut swapped = live.to_vec();
    swapped[1] = UNKNOWN;
    let failed = expect_invalid(
        api.reorder_statuses(reorder(swapped)).await,
        "status_ids[1]",
    );
    assert!(
        field_violations(&failed)
            .iter()
            .any(|(f, why)| f == "status_ids" && why.contains(PRESENTED)),
        "the missing one is named: {failed:?}"
    );
    // Archived.
    let mut archived = live.to_vec();
    archived.insert(0, SENT_EMAIL);
    expect_invalid(
        api.reorder_statuses(reorder(archived)).await,
        "status_ids[0]",
    );
    assert_eq!(snapshot(&suite.db).await, before);

    // A valid permutation: positions follow it, archived ones stay after.
    let old: BTreeMap<String, pb::OpportunityStatus> = list(&mut api, true)
        .await
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let order = vec![PRESENTED, INTERESTED, QUOTATION, CONSIDERING, LOST, WON];
    let reordered = api
        .reorder_statuses(reorder(order.clone()))
        .await
        .expect("reorder")
        .into_inner()
        .statuses;
    assert_eq!(ids(&reordered), order);
    assert_eq!(
        reordered.iter().map(|s| s.position).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    for status in &reordered {
        let was = &old[&status.id];
        if status.position == was.position {
            assert_eq!(
                status.etag, was.etag,
                "{} did not move",
                status.display_name
            );
        } else {
            assert_ne!(status.etag, was.etag, "{} moved", status.display_name);
        }
        // Nothing but the position changed.
        assert_eq!(status.display_name, was.display_name);
        assert_eq!(status.probability, was.probability);
        assert_eq!(status.is_default, was.is_default);
    }
    assert_eq!(list(&mut api, false).await, reordered);
    let all = list(&mut api, true).await;
    assert_eq!(all.last().map(|s| s.id.as_str()), Some(SENT_EMAIL));
    assert_eq!(all.last().map(|s| s.position), Some(7));
    assert_positions_contiguous(&mut api).await;

    // The same order again moves nothing.
    let snap = snapshot(&suite.db).await;
    let same = api
        .reorder_statuses(reorder(order.clone()))
        .await
        .expect("reorder again")
        .into_inner()
        .statuses;
    assert_eq!(same, reordered);
    assert_eq!(snapshot(&suite.db).await, snap);

    // A status created afterwards goes after the last OPEN status of the new order.
    let created = create(&mut api, "Negotiation", 80).await;
    assert_eq!(created.position, 5);
    assert_eq!(
        ids(&list(&mut api, false).await),
        [
            PRESENTED,
            INTERESTED,
            QUOTATION,
            CONSIDERING,
            &created.id,
            LOST,
            WON
        ]
    );
}

#[tokio::test]
async fn aip_list_statuses_pages_through_every_status() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let everything = list(&mut api, false).await;
    assert_eq!(everything.len(), 7);

    let (seen, pages) = walk(&api, false, 3).await;
    assert_eq!(pages, [3, 3, 1]);
    assert_eq!(seen, everything, "every status once, in order");
    let (seen, pages) = walk(&api, false, 7).await;
    assert_eq!(pages, [7]);
    assert_eq!(seen, everything);
    let (seen, _) = walk(&api, false, 1).await;
    assert_eq!(seen, everything);

    // With archived statuses: hidden unless asked for, then listed last.
    delete(&mut api, PRESENTED).await;
    let (live, pages) = walk(&api, false, 3).await;
    assert_eq!(pages, [3, 3]);
    assert_eq!(
        ids(&live),
        [INTERESTED, SENT_EMAIL, QUOTATION, CONSIDERING, WON, LOST]
    );
    let (all, pages) = walk(&api, true, 3).await;
    assert_eq!(pages, [3, 3, 1]);
    assert_eq!(all.len(), 7);
    assert_eq!(all.last().map(|s| s.id.as_str()), Some(PRESENTED));
    let distinct: BTreeSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(distinct.len(), 7, "no repeat");

    // A token belongs to its request: other filters, garbage, and bad sizes are refused.
    let first = api
        .list_statuses(admin(pb::ListStatusesRequest {
            page_size: 3,
            ..Default::default()
        }))
        .await
        .expect("first page")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    expect_invalid(
        api.list_statuses(admin(pb::ListStatusesRequest {
            page_size: 3,
            page_token: first.next_page_token.clone(),
            show_archived: true,
        }))
        .await,
        "page_token",
    );
    for garbage in ["garbage", "!!!", "eyJmIjoieCIsImsiOjN9"] {
        expect_invalid(
            api.list_statuses(admin(pb::ListStatusesRequest {
                page_size: 3,
                page_token: garbage.into(),
                show_archived: false,
            }))
            .await,
            "page_token",
        );
    }
    for page_size in [-1, i32::MIN] {
        expect_invalid(
            api.list_statuses(admin(pb::ListStatusesRequest {
                page_size,
                ..Default::default()
            }))
            .await,
            "page_size",
        );
    }
    // Another page size with the same token is fine (AIP-158).
    let rest = api
        .list_statuses(admin(pb::ListStatusesRequest {
            page_size: 10,
            page_token: first.next_page_token,
            show_archived: false,
        }))
        .await
        .expect("next page with another size")
        .into_inner();
    assert_eq!(rest.statuses.len(), 3);
    assert!(rest.next_page_token.is_empty());
    // Beyond the maximum: clamped, not refused.
    let big = api
        .list_statuses(admin(pb::ListStatusesRequest {
            page_size: 100_000,
            ..Default::default()
        }))
        .await
        .expect("huge page size")
        .into_inner();
    assert_eq!(big.statuses.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r06_delete_status_counts_opportunities_moved_in_concurrently() {
    let suite = TestSuite::spawn().await;
    let api = suite.statuses().await;
    put_opportunities(&suite.db, PRESENTED, 1).await;
    // An opportunity write in flight: it moves an opportunity into Quotation, not committed yet.
    let mut tx = suite.db.begin().await.expect("begin");
    sqlx::query(
        "update opportunities set status_id = $1, status_change_time = now() where status_id = $2",
    )
    .bind(uuid(QUOTATION))
    .bind(uuid(PRESENTED))
    .execute(&mut *tx)
    .await
    .expect("move into Quotation");
    let deleting = tokio::spawn({
        let mut api = api.clone();
        async move {
            api.delete_status(admin(pb::DeleteStatusRequest {
                id: QUOTATION.into(),
                ..Default::default()
            }))
            .await
        }
    });
    // Let the delete run as far as it goes while the move is in flight: until it finishes or
    // waits for a lock (polled; no timing is asserted).
    until_a_lock_wait(
        &suite.db,
        "the delete neither finished nor waited for the move",
        || deleting.is_finished(),
    )
    .await;
    tx.commit().await.expect("commit the move");
    let result = deleting.await.expect("delete task");
    // Either order of the two is fine; an opportunity left in an archived status is not.
    let stranded: i64 = sqlx::query_scalar(
        "select count(*) from opportunities o join opportunity_statuses s on s.id = o.status_id
         where s.archived",
    )
    .fetch_one(&suite.db)
    .await
    .expect("count stranded");
    assert_eq!(stranded, 0, "delete answered {result:?}");
    let failed = expect_code(result, Code::FailedPrecondition);
    assert_eq!(precondition(&failed).0, "STATUS_IN_USE");
}

#[tokio::test]
async fn r12_permission_is_checked_before_the_request_is_read() {
    let suite = TestSuite::spawn().await;
    let mut api = suite.statuses().await;
    let before = snapshot(&suite.db).await;
    let rep = rep_token();
    // Malformed requests from a caller who may not make them at all: PERMISSION_DENIED.
    expect_code(
        api.create_status(authed(
            &rep,
            pb::CreateStatusRequest {
                status: None,
                request_id: String::new(),
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        api.update_status(authed(
            &rep,
            pb::UpdateStatusRequest {
                request_id: String::new(),
                status: Some(pb::OpportunityStatus {
                    id: "bad".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["kind"]),
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        api.delete_status(authed(
            &rep,
            pb::DeleteStatusRequest {
                request_id: String::new(),
                id: "bad".into(),
                replacement_status_id: "bad".into(),
                etag: String::new(),
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        api.set_default_status(authed(
            &rep,
            pb::SetDefaultStatusRequest {
                request_id: String::new(),
                id: "bad".into(),
                etag: String::new(),
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        api.reorder_statuses(authed(&rep, pb::ReorderStatusesRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    let nobody = token("svc-1", "Some Service", "", &[]);
    expect_code(
        api.get_status(authed(&nobody, pb::GetStatusRequest { id: "bad".into() }))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        api.list_statuses(authed(
            &nobody,
            pb::ListStatusesRequest {
                page_size: -1,
                page_token: "garbage".into(),
                show_archived: false,
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r02_concurrent_creates_and_deletes_keep_the_pipeline_order_whole() {
    let suite = TestSuite::spawn().await;
    let api = suite.statuses().await;
    let creates = (0..6).map(|index| {
        let mut api = api.clone();
        async move {
            let mut status = draft(&format!("Stage {index}"), &format!("ขั้น {index}"), 40);
            // Some at a place of their own, some after the last OPEN status.
            status.position = if index % 2 == 0 { 0 } else { index };
            api.create_status(admin(create_request(status)))
                .await
                .map(|r| r.into_inner())
        }
    });
    let deletes = [PRESENTED, SENT_EMAIL, CONSIDERING].map(|id| {
        let mut api = api.clone();
        async move {
            api.delete_status(admin(pb::DeleteStatusRequest {
                id: id.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
        }
    });
    let (created, deleted) = tokio::join!(join_all(creates), join_all(deletes));
    for result in &created {
        assert!(result.is_ok(), "{result:?}");
    }
    for result in &deleted {
        assert!(result.is_ok(), "{result:?}");
    }
    let mut api = api.clone();
    assert_positions_contiguous(&mut api).await;
    let live = list(&mut api, false).await;
    assert_eq!(live.len(), 7 - 3 + 6);
    let all = list(&mut api, true).await;
    assert_eq!(all.len(), 7 + 6);
    assert_eq!(
        all.iter().filter(|s| s.archived).count(),
        3,
        "the deleted ones, last"
    );
    // Each create is live under its own name; each deletion archived exactly its status.
    for status in created.iter().map(|r| r.as_ref().unwrap()) {
        let listed = live
            .iter()
            .find(|s| s.id == status.id)
            .expect("created and live");
        assert_eq!(listed.display_name, status.display_name);
    }
    for id in [PRESENTED, SENT_EMAIL, CONSIDERING] {
        assert!(
            all.iter().any(|s| s.id == id && s.archived),
            "{id} archived"
        );
        assert!(live.iter().all(|s| s.id != id), "{id} not live");
    }
    assert_eq!(default_ids(&suite.db).await, [INTERESTED]);
}
