//! CustomerService end to end: every call against the real Postgres over real gRPC, each test
//! on its own database. Tests named `rNN_...` prove the DESIGN.md rule they name (R1, R11,
//! R12, R13); the others prove the rest of the contract in `customer.proto`.
//!
//! Every failed write is followed by a check that nothing changed: a snapshot of the
//! customers, idempotency records, salespeople and opportunities taken before the call is
//! compared with one taken after it. No timing is asserted anywhere.

use std::collections::{BTreeMap, HashSet};

use salesopp_proto::customer::v1 as pb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_tests::fixtures::mask;
use salesopp_tests::{
    TestSuite, admin_token, authed, expect_code, expect_invalid, expect_invalid_fields,
    field_violations, manager_token, rep_token, token,
};
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;
use uuid::Uuid;

type Client = CustomerServiceClient<Channel>;

const OPEN_STATUS: &str = "00000000-0000-4000-8000-000000000001";
const WON_STATUS: &str = "00000000-0000-4000-8000-000000000006";
const LOST_STATUS: &str = "00000000-0000-4000-8000-000000000007";

// ---------------------------------------------------------------------------------------
// The cast (besides the harness's rep-a1 "north", mgr-a "north", admin-1 "hq")
// ---------------------------------------------------------------------------------------

/// A second rep of rep-a1's team.
fn rep_a2_token() -> String {
    token("rep-a2", "Niran Rep", "north", &["sales_rep"])
}

/// A rep of another team.
fn rep_b_token() -> String {
    token("rep-b1", "Suda Rep", "south", &["sales_rep"])
}

/// A manager of another team.
fn manager_b_token() -> String {
    token("mgr-b", "Boon Manager", "south", &["sales_manager"])
}

/// A valid token with no sales role.
fn no_role_token() -> String {
    token("viewer-1", "No Role", "north", &[])
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn named(name: &str) -> pb::Customer {
    pb::Customer {
        display_name: name.to_owned(),
        ..Default::default()
    }
}

fn create_request(customer: pb::Customer) -> pb::CreateCustomerRequest {
    pb::CreateCustomerRequest {
        customer: Some(customer),
        request_id: Uuid::new_v4().to_string(),
    }
}

async fn create(client: &mut Client, token: &str, customer: pb::Customer) -> pb::Customer {
    client
        .create_customer(authed(token, create_request(customer)))
        .await
        .expect("create customer")
        .into_inner()
}

async fn get(client: &mut Client, token: &str, id: &str) -> pb::Customer {
    client
        .get_customer(authed(token, pb::GetCustomerRequest { id: id.to_owned() }))
        .await
        .expect("get customer")
        .into_inner()
}

async fn update(
    client: &mut Client,
    token: &str,
    customer: pb::Customer,
    paths: &[&str],
) -> Result<pb::Customer, tonic::Status> {
    client
        .update_customer(authed(
            token,
            pb::UpdateCustomerRequest {
                request_id: String::new(),
                customer: Some(customer),
                update_mask: mask(paths),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn delete(
    client: &mut Client,
    token: &str,
    id: &str,
    etag: &str,
) -> Result<pb::Customer, tonic::Status> {
    client
        .delete_customer(authed(
            token,
            pb::DeleteCustomerRequest {
                request_id: String::new(),
                id: id.to_owned(),
                etag: etag.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn list(
    client: &mut Client,
    token: &str,
    request: pb::ListCustomersRequest,
) -> Result<pb::ListCustomersResponse, tonic::Status> {
    client
        .list_customers(authed(token, request))
        .await
        .map(tonic::Response::into_inner)
}

fn search(query: &str) -> pb::ListCustomersRequest {
    pb::ListCustomersRequest {
        query: query.to_owned(),
        page_size: 500,
        ..Default::default()
    }
}

/// Every page of `request`, followed to the end (guarded against a token that never ends).
async fn list_all(
    client: &mut Client,
    token: &str,
    mut request: pb::ListCustomersRequest,
) -> Vec<pb::Customer> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let page = list(client, token, request.clone()).await.expect("list");
        all.extend(page.customers);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
    panic!("the list never ended: over 1000 pages");
}

fn names(customers: &[pb::Customer]) -> Vec<String> {
    customers.iter().map(|c| c.display_name.clone()).collect()
}

fn ids(customers: &[pb::Customer]) -> Vec<String> {
    customers.iter().map(|c| c.id.clone()).collect()
}

/// Everything a customer call may write, as one comparable text.
async fn snapshot(db: &PgPool) -> String {
    sqlx::query_scalar(
        "select jsonb_build_object(
             'customers', (select coalesce(jsonb_agg(to_jsonb(c) order by c.id), '[]')
                           from customers c),
             'idempotency', (select coalesce(jsonb_agg(to_jsonb(r)
                                  order by r.caller_id, r.method, r.request_id), '[]')
                             from idempotency_records r),
             -- Salespeople are left out: a caller is recorded on their first call, failed or
             -- not (R12), which is not a change the call made.
             'opportunities', (select coalesce(jsonb_agg(to_jsonb(o) order by o.id), '[]')
                               from opportunities o))::text",
    )
    .fetch_one(db)
    .await
    .expect("snapshot")
}

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect("count")
}

/// Inserts an opportunity row for `customer` in `status` (fixture: the opportunity service
/// does not exist yet). `owner` must be a recorded salesperson.
async fn insert_opportunity(
    db: &PgPool,
    customer: &str,
    owner: &str,
    status: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "insert into opportunities (customer_id, owner_id, title, currency_code, amount,
                                    status_id, state, close_time, status_change_time,
                                    created_by, updated_by)
         select $1::uuid, $2, 'Fixture deal', 'THB', 1000, s.id, s.kind,
                case when s.kind = 'OPEN' then null else now() end, now(), $2, $2
         from opportunity_statuses s where s.id = $3::uuid
         returning id",
    )
    .bind(customer)
    .bind(owner)
    .bind(status)
    .fetch_one(db)
    .await
}

fn error_info(status: &tonic::Status) -> (String, BTreeMap<String, String>) {
    let info = status
        .get_details_error_info()
        .expect("the error carries an ErrorInfo");
    (info.reason, info.metadata.into_iter().collect())
}

// =======================================================================================
// CreateCustomer
// =======================================================================================

#[tokio::test]
async fn create_customer_returns_the_validated_customer_with_its_actors() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "  บริษัท สยามพาณิชย์ จำกัด  ".into(),
            code: " ERP-001 ".into(),
            email: " Sales@SIAM-Panich.CO.TH ".into(),
            phone: "081-234-5678".into(),
            contact_name: " คุณสมศรี ใจดี ".into(),
            tax_id: "0-1055-36000-98-4".into(),
            address: " 99 ถนนสีลม\nบางรัก กรุงเทพฯ 10500 ".into(),
            // Output-only fields are ignored on create.
            id: Uuid::new_v4().to_string(),
            archived: true,
            etag: "999".into(),
            ..Default::default()
        },
    )
    .await;

    assert!(Uuid::parse_str(&created.id).is_ok());
    assert_eq!(created.display_name, "บริษัท สยามพาณิชย์ จำกัด");
    assert_eq!(created.code, "ERP-001");
    assert_eq!(created.email, "Sales@siam-panich.co.th");
    assert_eq!(
        created.phone, "+66812345678",
        "phone canonicalized to E.164"
    );
    assert_eq!(created.contact_name, "คุณสมศรี ใจดี");
    assert_eq!(
        created.tax_id, "0105536000984",
        "tax id stored as its 13 digits"
    );
    assert_eq!(created.address, "99 ถนนสีลม\nบางรัก กรุงเทพฯ 10500");
    assert_eq!(created.owner_id, "rep-a1", "owner defaults to the caller");
    assert!(!created.archived);
    assert!(!created.etag.is_empty() && created.etag != "999");
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);
    let created_by = created.created_by.clone().expect("created_by");
    assert_eq!(created_by.id, "rep-a1");
    assert_eq!(created_by.display_name, "Somchai Rep");
    assert_eq!(created.updated_by, created.created_by);

    // What was stored is what was answered, and reads answer the same.
    assert_eq!(get(&mut client, &rep_token(), &created.id).await, created);
    let (phone, tax_id, owner, created_by, updated_by): (String, String, String, String, String) =
        sqlx::query_as(
            "select phone, tax_id, owner_id, created_by, updated_by from customers where id = $1",
        )
        .bind(Uuid::parse_str(&created.id).unwrap())
        .fetch_one(&suite.db)
        .await
        .unwrap();
    assert_eq!(
        (phone.as_str(), tax_id.as_str(), owner.as_str()),
        ("+66812345678", "0105536000984", "rep-a1")
    );
    assert_eq!(
        (created_by.as_str(), updated_by.as_str()),
        ("rep-a1", "rep-a1")
    );
    // The caller is recorded as a salesperson on their first write (R12).
    let (name, team): (String, String) =
        sqlx::query_as("select display_name, team from salespeople where id = 'rep-a1'")
            .fetch_one(&suite.db)
            .await
            .unwrap();
    assert_eq!((name.as_str(), team.as_str()), ("Somchai Rep", "north"));
}

#[tokio::test]
async fn create_customer_needs_only_a_display_name_in_any_script() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let minimal = create(&mut client, &rep_token(), named("ACME Co., Ltd.")).await;
    assert_eq!(minimal.display_name, "ACME Co., Ltd.");
    for empty in [
        &minimal.code,
        &minimal.email,
        &minimal.phone,
        &minimal.contact_name,
        &minimal.tax_id,
        &minimal.address,
    ] {
        assert!(empty.is_empty());
    }
    let (code, email, phone): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("select code, email, phone from customers where id = $1")
            .bind(Uuid::parse_str(&minimal.id).unwrap())
            .fetch_one(&suite.db)
            .await
            .unwrap();
    assert_eq!(
        (code, email, phone),
        (None, None, None),
        "empty is stored as none"
    );

    // 200 characters (code points) after trimming, in Thai, Latin, Japanese, Greek.
    for name in [
        "ก".repeat(200),
        "x".repeat(200),
        "株式会社".repeat(50),
        format!("  {}  ", "Ω".repeat(200)),
    ] {
        let created = create(&mut client, &rep_token(), named(&name)).await;
        assert_eq!(created.display_name, name.trim());
        assert_eq!(created.display_name.chars().count(), 200);
    }
    // Names are not unique.
    let twin = create(&mut client, &rep_token(), named("ACME Co., Ltd.")).await;
    assert_ne!(twin.id, minimal.id);
}

#[tokio::test]
async fn create_customer_canonicalizes_phone_numbers() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    for (input, canonical) in [
        ("081-234-5678", "+66812345678"),
        ("0812345678", "+66812345678"),
        ("081.234.5678", "+66812345678"),
        ("(081) 234 5678", "+66812345678"),
        ("+66 81 234 5678", "+66812345678"),
        ("+66812345678", "+66812345678"),
        ("02 123 4567", "+6621234567"),
        ("+1 (415) 555-0100", "+14155550100"),
    ] {
        let created = create(
            &mut client,
            &rep_token(),
            pb::Customer {
                display_name: format!("Phone {input}"),
                phone: input.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(created.phone, canonical, "{input:?}");
    }
}

/// One table of every CreateCustomer validation error and the field violation it names.
#[tokio::test]
async fn create_customer_validation_errors_name_their_field_and_change_nothing() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    // Record rep-a1 and one customer, so "nothing changed" compares a non-empty state.
    create(&mut client, &rep_token(), named("Existing")).await;

    let valid = || named("Valid Co.");
    let with = |edit: &dyn Fn(&mut pb::Customer)| {
        let mut customer = valid();
        edit(&mut customer);
        create_request(customer)
    };
    let cases: Vec<(&str, pb::CreateCustomerRequest, &str)> = vec![
        (
            "no customer",
            pb::CreateCustomerRequest {
                customer: None,
                request_id: "r-1".into(),
            },
            "customer",
        ),
        (
            "request_id over 100 characters",
            pb::CreateCustomerRequest {
                customer: Some(valid()),
                request_id: "r".repeat(101),
            },
            "request_id",
        ),
        (
            "request_id with a control character",
            pb::CreateCustomerRequest {
                customer: Some(valid()),
                request_id: "r\u{7}1".into(),
            },
            "request_id",
        ),
        (
            "empty display_name",
            with(&|c| c.display_name = String::new()),
            "customer.display_name",
        ),
        (
            "blank display_name",
            with(&|c| c.display_name = " \t\u{3000} ".into()),
            "customer.display_name",
        ),
        (
            "display_name of 201 characters",
            with(&|c| c.display_name = "ก".repeat(201)),
            "customer.display_name",
        ),
        (
            "display_name with a control character",
            with(&|c| c.display_name = "Acme\nCo".into()),
            "customer.display_name",
        ),
        (
            "code with a space",
            with(&|c| c.code = "AC 1".into()),
            "customer.code",
        ),
        (
            "code in Thai",
            with(&|c| c.code = "รหัส1".into()),
            "customer.code",
        ),
        (
            "code of 51 characters",
            with(&|c| c.code = "C".repeat(51)),
            "customer.code",
        ),
        (
            "email without @",
            with(&|c| c.email = "no-at-sign".into()),
            "customer.email",
        ),
        (
            "email without a dotted domain",
            with(&|c| c.email = "a@b".into()),
            "customer.email",
        ),
        (
            "email with a space",
            with(&|c| c.email = "a b@example.com".into()),
            "customer.email",
        ),
        (
            "email without local part",
            with(&|c| c.email = "@example.com".into()),
            "customer.email",
        ),
        (
            "email over 254 characters",
            with(&|c| c.email = format!("a@{}.com", "b".repeat(252))),
            "customer.email",
        ),
        (
            "phone too short",
            with(&|c| c.phone = "12345".into()),
            "customer.phone",
        ),
        (
            "phone with a letter",
            with(&|c| c.phone = "081-234-567x".into()),
            "customer.phone",
        ),
        (
            "phone with country code 0",
            with(&|c| c.phone = "+0812345678".into()),
            "customer.phone",
        ),
        (
            "Thai phone with too few digits",
            with(&|c| c.phone = "081-234-56".into()),
            "customer.phone",
        ),
        (
            "phone over 15 digits",
            with(&|c| c.phone = "+1234567890123456".into()),
            "customer.phone",
        ),
        (
            "tax_id with a wrong check digit",
            with(&|c| c.tax_id = "0105536000981".into()),
            "customer.tax_id",
        ),
        (
            "tax_id of 12 digits",
            with(&|c| c.tax_id = "010553600098".into()),
            "customer.tax_id",
        ),
        (
            "tax_id of 14 digits",
            with(&|c| c.tax_id = "01055360009840".into()),
            "customer.tax_id",
        ),
        (
            "tax_id with a letter",
            with(&|c| c.tax_id = "010553600098A".into()),
            "customer.tax_id",
        ),
        (
            "contact_name of 201 characters",
            with(&|c| c.contact_name = "ส".repeat(201)),
            "customer.contact_name",
        ),
        (
            "contact_name with a line break",
            with(&|c| c.contact_name = "Somsri\nJaidee".into()),
            "customer.contact_name",
        ),
        (
            "address of 1001 characters",
            with(&|c| c.address = "a".repeat(1001)),
            "customer.address",
        ),
        (
            "address with a control character",
            with(&|c| c.address = "99 Silom\u{0}Road".into()),
            "customer.address",
        ),
        (
            "owner_id of 201 characters",
            with(&|c| c.owner_id = "o".repeat(201)),
            "customer.owner_id",
        ),
        (
            "owner_id nobody knows",
            with(&|c| c.owner_id = "never-seen".into()),
            "customer.owner_id",
        ),
    ];
    for (case, request, field) in cases {
        let before = snapshot(&suite.db).await;
        let status = client.create_customer(authed(&rep_token(), request)).await;
        let status = expect_code(status, Code::InvalidArgument);
        let violations = field_violations(&status);
        assert!(
            violations.iter().any(|(f, d)| f == field && !d.is_empty()),
            "{case}: no violation for {field:?} in {violations:?}"
        );
        assert_eq!(
            snapshot(&suite.db).await,
            before,
            "{case}: something changed"
        );
    }
}

#[tokio::test]
async fn create_customer_reports_every_violation_at_once() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let before = snapshot(&suite.db).await;
    expect_invalid_fields(
        client
            .create_customer(authed(
                &rep_token(),
                pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        display_name: " ".into(),
                        code: "a b".into(),
                        email: "nope".into(),
                        phone: "12".into(),
                        tax_id: "1".into(),
                        contact_name: "x".repeat(201),
                        address: "y".repeat(1001),
                        ..Default::default()
                    }),
                    request_id: "r".repeat(101),
                },
            ))
            .await,
        &[
            "request_id",
            "customer.display_name",
            "customer.code",
            "customer.email",
            "customer.phone",
            "customer.tax_id",
            "customer.contact_name",
            "customer.address",
        ],
    );
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn create_customer_with_another_known_owner() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    // rep-b1 becomes known by writing once.
    create(&mut client, &rep_b_token(), named("Suda's first")).await;
    let created = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "For Suda".into(),
            owner_id: " rep-b1 ".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.owner_id, "rep-b1");
    assert_eq!(
        created.created_by.unwrap().id,
        "rep-a1",
        "the creator is the caller"
    );
}

#[tokio::test]
async fn create_customer_duplicate_code_is_already_exists_naming_the_code() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let first = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "First".into(),
            code: "ERP-001".into(),
            ..Default::default()
        },
    )
    .await;
    for taken in ["ERP-001", "erp-001", " Erp-001 "] {
        let before = snapshot(&suite.db).await;
        let status = expect_code(
            client
                .create_customer(authed(
                    &rep_b_token(),
                    create_request(pb::Customer {
                        display_name: "Second".into(),
                        code: taken.into(),
                        ..Default::default()
                    }),
                ))
                .await,
            Code::AlreadyExists,
        );
        let (reason, metadata) = error_info(&status);
        assert_eq!(reason, "CUSTOMER_CODE_TAKEN");
        assert_eq!(metadata.get("field").map(String::as_str), Some("code"));
        assert_eq!(
            metadata.get("resource").map(String::as_str),
            Some("customer")
        );
        assert!(status.message().contains("code"), "{:?}", status.message());
        assert_eq!(
            snapshot(&suite.db).await,
            before,
            "{taken}: something changed"
        );
    }

    // Archived customers keep their code: it stays taken.
    delete(&mut client, &rep_token(), &first.id, "")
        .await
        .unwrap();
    let status = expect_code(
        client
            .create_customer(authed(
                &rep_token(),
                create_request(pb::Customer {
                    display_name: "Third".into(),
                    code: "erp-001".into(),
                    ..Default::default()
                }),
            ))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        error_info(&status).1.get("field").map(String::as_str),
        Some("code")
    );
    // A different code is fine.
    let other = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Fourth".into(),
            code: "ERP-002".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(other.code, "ERP-002");
}

// =======================================================================================
// R11: safe retries
// =======================================================================================

#[tokio::test]
async fn r11_create_customer_retry_returns_first_result() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let request = create_request(pb::Customer {
        display_name: "Retry Co.".into(),
        code: "RETRY-1".into(),
        ..Default::default()
    });
    let first = client
        .create_customer(authed(&rep_token(), request.clone()))
        .await
        .unwrap()
        .into_inner();
    let after_first = snapshot(&suite.db).await;
    let retry = client
        .create_customer(authed(&rep_token(), request.clone()))
        .await
        .expect("a retry succeeds (no ALREADY_EXISTS on its own code)")
        .into_inner();
    assert_eq!(retry, first, "a retry answers exactly the first result");
    assert_eq!(
        snapshot(&suite.db).await,
        after_first,
        "a retry creates nothing and changes nothing"
    );
    assert_eq!(count(&suite.db, "select count(*) from customers").await, 1);

    // Even after the customer changed, a retry answers the first result and does not
    // create it again.
    let changed = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: first.id.clone(),
            display_name: "Retry Co. (renamed)".into(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap();
    let late_retry = client
        .create_customer(authed(&rep_token(), request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late_retry, first);
    assert_eq!(count(&suite.db, "select count(*) from customers").await, 1);
    assert_eq!(
        get(&mut client, &rep_token(), &first.id).await,
        changed,
        "the retry did not touch the customer"
    );
}

#[tokio::test]
async fn r11_request_id_reused_for_a_different_request_is_invalid() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let mut request = create_request(named("Original"));
    client
        .create_customer(authed(&rep_token(), request.clone()))
        .await
        .unwrap();
    let before = snapshot(&suite.db).await;
    request.customer = Some(named("Something else"));
    expect_invalid(
        client.create_customer(authed(&rep_token(), request)).await,
        "request_id",
    );
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn r11_a_failed_create_does_not_burn_its_request_id() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let holder = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Holder".into(),
            code: "TAKEN".into(),
            ..Default::default()
        },
    )
    .await;
    let request = create_request(pb::Customer {
        display_name: "Newcomer".into(),
        code: "TAKEN".into(),
        ..Default::default()
    });
    let before = snapshot(&suite.db).await;
    expect_code(
        client
            .create_customer(authed(&rep_token(), request.clone()))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        snapshot(&suite.db).await,
        before,
        "no idempotency record kept"
    );
    // The retry still finds the code taken (it is not answered from a stored failure)...
    expect_code(
        client
            .create_customer(authed(&rep_token(), request.clone()))
            .await,
        Code::AlreadyExists,
    );
    // ...and once the code is free, the same request_id does the work.
    update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: holder.id.clone(),
            code: "FREED".into(),
            ..Default::default()
        },
        &["code"],
    )
    .await
    .unwrap();
    let created = client
        .create_customer(authed(&rep_token(), request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.code, "TAKEN");
    let again = client
        .create_customer(authed(&rep_token(), request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, created);
    assert_eq!(count(&suite.db, "select count(*) from customers").await, 2);
}

#[tokio::test]
async fn r11_concurrent_creates_with_the_same_request_id_create_one_customer() {
    let suite = TestSuite::spawn().await;
    let client = suite.customers().await;
    let request = create_request(pb::Customer {
        display_name: "Concurrent Co.".into(),
        code: "CONC-1".into(),
        ..Default::default()
    });
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            client
                .create_customer(authed(&rep_token(), request))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let results = futures::future::join_all(calls).await;
    let answers: Vec<pb::Customer> = results
        .into_iter()
        .map(|r| r.expect("every concurrent retry succeeds"))
        .collect();
    assert_eq!(answers.len(), 8);
    for answer in &answers {
        assert_eq!(answer, &answers[0], "every call answers the same customer");
    }
    assert_eq!(count(&suite.db, "select count(*) from customers").await, 1);
    assert_eq!(
        count(&suite.db, "select count(*) from idempotency_records").await,
        1
    );
    let stored: Uuid = sqlx::query_scalar("select id from customers")
        .fetch_one(&suite.db)
        .await
        .unwrap();
    assert_eq!(stored.to_string(), answers[0].id);
}

#[tokio::test]
async fn r11_the_same_request_id_from_two_callers_creates_two_customers() {
    let suite = TestSuite::spawn().await;
    let client = suite.customers().await;
    let request = create_request(named("Shared Key Co."));
    let call = |token: String| {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            client
                .create_customer(authed(&token, request))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let (a, b) = tokio::join!(call(rep_token()), call(rep_b_token()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.id, b.id);
    assert_eq!(a.owner_id, "rep-a1");
    assert_eq!(b.owner_id, "rep-b1");
    assert_eq!(count(&suite.db, "select count(*) from customers").await, 2);
    // Each caller's retry answers their own first result.
    let mut client = client.clone();
    let retry_b = client
        .create_customer(authed(&rep_b_token(), request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry_b, b);
    assert_eq!(count(&suite.db, "select count(*) from customers").await, 2);
}

// =======================================================================================
// GetCustomer and R12 (who reads, who writes)
// =======================================================================================

#[tokio::test]
async fn get_customer_errors() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    expect_invalid(
        client
            .get_customer(authed(
                &rep_token(),
                pb::GetCustomerRequest { id: String::new() },
            ))
            .await,
        "id",
    );
    expect_invalid(
        client
            .get_customer(authed(
                &rep_token(),
                pb::GetCustomerRequest {
                    id: "not-a-uuid".into(),
                },
            ))
            .await,
        "id",
    );
    let status = expect_code(
        client
            .get_customer(authed(
                &rep_token(),
                pb::GetCustomerRequest {
                    id: Uuid::new_v4().to_string(),
                },
            ))
            .await,
        Code::NotFound,
    );
    assert_eq!(error_info(&status).0, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn r12_every_sales_role_reads_every_customer() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let owned_by_south = create(&mut client, &rep_b_token(), named("South Co.")).await;
    let owned_by_north = create(&mut client, &rep_token(), named("North Co.")).await;
    for reader in [
        rep_token(),
        rep_b_token(),
        rep_a2_token(),
        manager_token(),
        manager_b_token(),
        admin_token(),
    ] {
        assert_eq!(
            get(&mut client, &reader, &owned_by_south.id).await,
            owned_by_south
        );
        assert_eq!(
            get(&mut client, &reader, &owned_by_north.id).await,
            owned_by_north
        );
        let listed = list(&mut client, &reader, pb::ListCustomersRequest::default())
            .await
            .unwrap();
        assert_eq!(names(&listed.customers), ["North Co.", "South Co."]);
    }
}

#[tokio::test]
async fn r12_calls_need_a_token_and_a_sales_role() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let existing = create(&mut client, &rep_token(), named("Existing")).await;
    let before = snapshot(&suite.db).await;

    // No token at all: UNAUTHENTICATED, for every call.
    let unauthenticated = [
        client
            .create_customer(create_request(named("x")))
            .await
            .map(|_| ()),
        client
            .get_customer(pb::GetCustomerRequest {
                id: existing.id.clone(),
            })
            .await
            .map(|_| ()),
        client
            .update_customer(pb::UpdateCustomerRequest {
                request_id: String::new(),
                customer: Some(pb::Customer {
                    id: existing.id.clone(),
                    display_name: "x".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .map(|_| ()),
        client
            .list_customers(pb::ListCustomersRequest::default())
            .await
            .map(|_| ()),
        client
            .delete_customer(pb::DeleteCustomerRequest {
                request_id: String::new(),
                id: existing.id.clone(),
                etag: String::new(),
            })
            .await
            .map(|_| ()),
    ];
    for result in unauthenticated {
        expect_code(result, Code::Unauthenticated);
    }

    // A valid token without a sales role: PERMISSION_DENIED, for every call.
    let no_role = no_role_token();
    expect_code(
        client
            .create_customer(authed(&no_role, create_request(named("x"))))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        client
            .get_customer(authed(
                &no_role,
                pb::GetCustomerRequest {
                    id: existing.id.clone(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        update(
            &mut client,
            &no_role,
            pb::Customer {
                id: existing.id.clone(),
                display_name: "x".into(),
                ..Default::default()
            },
            &["display_name"],
        )
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        list(&mut client, &no_role, pb::ListCustomersRequest::default()).await,
        Code::PermissionDenied,
    );
    expect_code(
        delete(&mut client, &no_role, &existing.id, "").await,
        Code::PermissionDenied,
    );
    assert_eq!(snapshot(&suite.db).await, before, "nothing changed");
}

// =======================================================================================
// UpdateCustomer
// =======================================================================================

#[tokio::test]
async fn update_customer_changes_only_the_masked_fields_and_records_who() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Before Co.".into(),
            code: "BEFORE".into(),
            email: "a@before.com".into(),
            phone: "0812345678".into(),
            ..Default::default()
        },
    )
    .await;
    // Another rep, of another team, edits the shared directory (R12).
    let updated = update(
        &mut client,
        &rep_b_token(),
        pb::Customer {
            id: created.id.clone(),
            display_name: "  After Co.  ".into(),
            phone: "02-123-4567".into(),
            // Set but not in the mask: ignored.
            email: "ignored@after.com".into(),
            code: "IGNORED".into(),
            ..Default::default()
        },
        &["display_name", "phone"],
    )
    .await
    .unwrap();
    assert_eq!(updated.display_name, "After Co.");
    assert_eq!(updated.phone, "+6621234567");
    assert_eq!(updated.email, "a@before.com");
    assert_eq!(updated.code, "BEFORE");
    assert_eq!(updated.owner_id, "rep-a1");
    assert_ne!(updated.etag, created.etag, "every write changes the etag");
    assert_eq!(updated.create_time, created.create_time);
    let (updated_secs, created_secs) = (updated.update_time.unwrap(), created.update_time.unwrap());
    assert!(
        (updated_secs.seconds, updated_secs.nanos) >= (created_secs.seconds, created_secs.nanos)
    );
    assert_eq!(updated.created_by, created.created_by, "the creator stays");
    let updated_by = updated.updated_by.clone().unwrap();
    assert_eq!(
        (updated_by.id.as_str(), updated_by.display_name.as_str()),
        ("rep-b1", "Suda Rep")
    );
    assert_eq!(get(&mut client, &rep_token(), &created.id).await, updated);
    let (created_by, updated_by): (String, String) =
        sqlx::query_as("select created_by, updated_by from customers where id = $1")
            .bind(Uuid::parse_str(&created.id).unwrap())
            .fetch_one(&suite.db)
            .await
            .unwrap();
    assert_eq!(
        (created_by.as_str(), updated_by.as_str()),
        ("rep-a1", "rep-b1")
    );
}

#[tokio::test]
async fn update_customer_mask_forms() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    create(&mut client, &rep_b_token(), named("Records rep-b1")).await;
    let created = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Mask Co.".into(),
            code: "MASK".into(),
            email: "a@mask.com".into(),
            phone: "0812345678".into(),
            contact_name: "Somsri".into(),
            tax_id: "0105536000984".into(),
            address: "Bangkok".into(),
            ..Default::default()
        },
    )
    .await;

    // No mask: every field set in the request, and only those.
    let no_mask = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: created.id.clone(),
            contact_name: "Somchai".into(),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    assert_eq!(no_mask.contact_name, "Somchai");
    assert_eq!(no_mask.display_name, "Mask Co.");
    assert_eq!(no_mask.email, "a@mask.com");

    // A named field left empty is cleared.
    let cleared = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: created.id.clone(),
            ..Default::default()
        },
        &[
            "email",
            "phone",
            "code",
            "tax_id",
            "address",
            "contact_name",
        ],
    )
    .await
    .unwrap();
    for field in [
        &cleared.email,
        &cleared.phone,
        &cleared.code,
        &cleared.tax_id,
        &cleared.address,
        &cleared.contact_name,
    ] {
        assert!(field.is_empty(), "{cleared:?}");
    }
    let nulls: i64 = sqlx::query_scalar(
        "select count(*) from customers where id = $1 and email is null and phone is null
             and code is null and tax_id is null and address is null and contact_name is null",
    )
    .bind(Uuid::parse_str(&created.id).unwrap())
    .fetch_one(&suite.db)
    .await
    .unwrap();
    assert_eq!(nulls, 1, "cleared fields are stored as null");

    // "*": every mutable field, as given.
    let star = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: created.id.clone(),
            display_name: "Star Co.".into(),
            code: "STAR".into(),
            email: "s@star.com".into(),
            phone: "+66 2 123 4567".into(),
            contact_name: "Star".into(),
            tax_id: "0105536000984".into(),
            address: "Chiang Mai".into(),
            owner_id: "rep-b1".into(),
            ..Default::default()
        },
        &["*"],
    )
    .await
    .unwrap();
    assert_eq!(
        (
            star.display_name.as_str(),
            star.code.as_str(),
            star.email.as_str(),
            star.phone.as_str(),
            star.contact_name.as_str(),
            star.tax_id.as_str(),
            star.address.as_str(),
            star.owner_id.as_str(),
        ),
        (
            "Star Co.",
            "STAR",
            "s@star.com",
            "+6621234567",
            "Star",
            "0105536000984",
            "Chiang Mai",
            "rep-b1"
        )
    );

    // The matching etag is accepted.
    let with_etag = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: created.id.clone(),
            etag: star.etag.clone(),
            display_name: "Etag Co.".into(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap();
    assert_eq!(with_etag.display_name, "Etag Co.");
    assert_ne!(with_etag.etag, star.etag);
}

/// One table of every UpdateCustomer validation error and its field violation.
#[tokio::test]
async fn update_customer_validation_errors_name_their_field_and_change_nothing() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(&mut client, &rep_token(), named("Stable Co.")).await;
    let id = created.id.clone();
    let valid = || pb::Customer {
        id: id.clone(),
        display_name: "Valid".into(),
        ..Default::default()
    };
    let with = |edit: &dyn Fn(&mut pb::Customer), paths: &[&str]| pb::UpdateCustomerRequest {
        request_id: String::new(),
        customer: Some({
            let mut customer = valid();
            edit(&mut customer);
            customer
        }),
        update_mask: mask(paths),
    };
    let cases: Vec<(&str, pb::UpdateCustomerRequest, &str)> = vec![
        (
            "no customer",
            pb::UpdateCustomerRequest {
                request_id: String::new(),
                customer: None,
                update_mask: mask(&["display_name"]),
            },
            "customer",
        ),
        (
            "no id",
            with(&|c| c.id = String::new(), &["display_name"]),
            "customer.id",
        ),
        (
            "id not a UUID",
            with(&|c| c.id = "42".into(), &["display_name"]),
            "customer.id",
        ),
        ("unknown path", with(&|_| {}, &["colour"]), "update_mask"),
        ("immutable id", with(&|_| {}, &["id"]), "update_mask"),
        ("immutable etag", with(&|_| {}, &["etag"]), "update_mask"),
        (
            "immutable create_time",
            with(&|_| {}, &["create_time"]),
            "update_mask",
        ),
        (
            "immutable update_time",
            with(&|_| {}, &["update_time"]),
            "update_mask",
        ),
        (
            "immutable created_by",
            with(&|_| {}, &["created_by"]),
            "update_mask",
        ),
        (
            "immutable updated_by",
            with(&|_| {}, &["updated_by"]),
            "update_mask",
        ),
        (
            "archived is DeleteCustomer's",
            with(&|_| {}, &["archived"]),
            "update_mask",
        ),
        (
            "* with another path",
            with(&|_| {}, &["*", "display_name"]),
            "update_mask",
        ),
        (
            "nothing to update",
            with(&|c| c.display_name = String::new(), &[]),
            "update_mask",
        ),
        (
            "display_name cleared",
            with(&|c| c.display_name = "  ".into(), &["display_name"]),
            "customer.display_name",
        ),
        (
            "display_name of 201 characters",
            with(&|c| c.display_name = "ก".repeat(201), &["display_name"]),
            "customer.display_name",
        ),
        (
            "code invalid",
            with(&|c| c.code = "no spaces allowed".into(), &["code"]),
            "customer.code",
        ),
        (
            "email invalid",
            with(&|c| c.email = "nope".into(), &["email"]),
            "customer.email",
        ),
        (
            "phone invalid",
            with(&|c| c.phone = "call me".into(), &["phone"]),
            "customer.phone",
        ),
        (
            "tax_id check digit",
            with(&|c| c.tax_id = "0105536000985".into(), &["tax_id"]),
            "customer.tax_id",
        ),
        (
            "contact_name too long",
            with(&|c| c.contact_name = "c".repeat(201), &["contact_name"]),
            "customer.contact_name",
        ),
        (
            "address too long",
            with(&|c| c.address = "a".repeat(1001), &["address"]),
            "customer.address",
        ),
        (
            "owner_id cleared",
            with(&|_| {}, &["owner_id"]),
            "customer.owner_id",
        ),
        (
            "owner_id nobody knows",
            with(&|c| c.owner_id = "never-seen".into(), &["owner_id"]),
            "customer.owner_id",
        ),
        (
            "owner_id too long",
            with(&|c| c.owner_id = "o".repeat(201), &["owner_id"]),
            "customer.owner_id",
        ),
    ];
    for (case, request, field) in cases {
        let before = snapshot(&suite.db).await;
        let result = client.update_customer(authed(&rep_token(), request)).await;
        let status = expect_code(result, Code::InvalidArgument);
        let violations = field_violations(&status);
        assert!(
            violations.iter().any(|(f, d)| f == field && !d.is_empty()),
            "{case}: no violation for {field:?} in {violations:?}"
        );
        assert_eq!(
            snapshot(&suite.db).await,
            before,
            "{case}: something changed"
        );
    }
    assert_eq!(get(&mut client, &rep_token(), &created.id).await, created);
}

#[tokio::test]
async fn update_customer_stale_etag_is_aborted() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(&mut client, &rep_token(), named("Etag Co.")).await;
    let newer = update(
        &mut client,
        &rep_a2_token(),
        pb::Customer {
            id: created.id.clone(),
            etag: created.etag.clone(),
            display_name: "Newer".into(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap();
    let before = snapshot(&suite.db).await;
    for stale in [created.etag.as_str(), "not-an-etag"] {
        let status = expect_code(
            update(
                &mut client,
                &rep_token(),
                pb::Customer {
                    id: created.id.clone(),
                    etag: stale.to_owned(),
                    display_name: "Lost update".into(),
                    ..Default::default()
                },
                &["display_name"],
            )
            .await,
            Code::Aborted,
        );
        assert_eq!(error_info(&status).0, "ETAG_MISMATCH");
        assert_eq!(snapshot(&suite.db).await, before);
    }
    assert_eq!(get(&mut client, &rep_token(), &created.id).await, newer);
}

#[tokio::test]
async fn update_customer_to_a_taken_code_is_already_exists() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Holder".into(),
            code: "HOLD-1".into(),
            ..Default::default()
        },
    )
    .await;
    let other = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Other".into(),
            code: "OTHER".into(),
            ..Default::default()
        },
    )
    .await;
    let before = snapshot(&suite.db).await;
    let status = expect_code(
        update(
            &mut client,
            &rep_token(),
            pb::Customer {
                id: other.id.clone(),
                code: "hold-1".into(),
                ..Default::default()
            },
            &["code"],
        )
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        error_info(&status).1.get("field").map(String::as_str),
        Some("code")
    );
    assert_eq!(snapshot(&suite.db).await, before);
    // Keeping one's own code, in another case, is no conflict.
    let recased = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: other.id.clone(),
            code: "other".into(),
            ..Default::default()
        },
        &["code"],
    )
    .await
    .unwrap();
    assert_eq!(recased.code, "other");
}

#[tokio::test]
async fn update_archived_customer_is_failed_precondition() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(&mut client, &rep_token(), named("Soon Archived")).await;
    let archived = delete(&mut client, &rep_token(), &created.id, "")
        .await
        .unwrap();
    let before = snapshot(&suite.db).await;
    let status = expect_code(
        update(
            &mut client,
            &admin_token(),
            pb::Customer {
                id: created.id.clone(),
                display_name: "Revived".into(),
                ..Default::default()
            },
            &["display_name"],
        )
        .await,
        Code::FailedPrecondition,
    );
    let failure = status
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "CUSTOMER_ARCHIVED");
    assert_eq!(failure.violations[0].subject, created.id);
    assert_eq!(snapshot(&suite.db).await, before);
    assert_eq!(get(&mut client, &rep_token(), &created.id).await, archived);
}

#[tokio::test]
async fn update_unknown_customer_is_not_found() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    create(&mut client, &rep_token(), named("Someone")).await;
    let before = snapshot(&suite.db).await;
    expect_code(
        update(
            &mut client,
            &rep_token(),
            pb::Customer {
                id: Uuid::new_v4().to_string(),
                display_name: "Ghost".into(),
                ..Default::default()
            },
            &["display_name"],
        )
        .await,
        Code::NotFound,
    );
    assert_eq!(snapshot(&suite.db).await, before);
}

// =======================================================================================
// DeleteCustomer (archive) and R1
// =======================================================================================

#[tokio::test]
async fn r01_archived_customer_is_still_readable_by_id() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Archive Me".into(),
            code: "ARCH".into(),
            ..Default::default()
        },
    )
    .await;
    let archived = delete(&mut client, &manager_token(), &created.id, &created.etag)
        .await
        .unwrap();
    assert!(archived.archived);
    assert_eq!(archived.id, created.id);
    assert_eq!(archived.display_name, "Archive Me");
    assert_eq!(archived.code, "ARCH");
    assert_ne!(archived.etag, created.etag);
    assert_eq!(archived.created_by, created.created_by);
    assert_eq!(archived.updated_by.clone().unwrap().id, "mgr-a");
    for reader in [rep_token(), rep_b_token(), manager_b_token(), admin_token()] {
        assert_eq!(get(&mut client, &reader, &created.id).await, archived);
    }
    let (is_archived, has_archive_time): (bool, bool) =
        sqlx::query_as("select archived, archive_time is not null from customers where id = $1")
            .bind(Uuid::parse_str(&created.id).unwrap())
            .fetch_one(&suite.db)
            .await
            .unwrap();
    assert!(
        is_archived && has_archive_time,
        "a soft delete: the row stays"
    );
}

#[tokio::test]
async fn r01_opportunity_needs_an_existing_customer() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let customer = create(&mut client, &rep_token(), named("Real Customer")).await;
    let before = snapshot(&suite.db).await;
    let error = insert_opportunity(
        &suite.db,
        &Uuid::new_v4().to_string(),
        "rep-a1",
        OPEN_STATUS,
    )
    .await
    .expect_err("the schema refuses an opportunity for an unknown customer");
    let db_error = error.as_database_error().expect("a database error");
    assert_eq!(db_error.code().as_deref(), Some("23503"), "{db_error}");
    assert_eq!(snapshot(&suite.db).await, before);
    // The same row with a real customer is accepted (the fixture itself is sound).
    insert_opportunity(&suite.db, &customer.id, "rep-a1", OPEN_STATUS)
        .await
        .expect("an opportunity for an existing customer");
}

/// R1 says an opportunity belongs to a non-archived customer, and the migration says every
/// rule the database can hold is held by a constraint. This one is not: a raw insert of an
/// opportunity for an archived customer is accepted.
#[tokio::test]
async fn r01_schema_refuses_an_opportunity_for_an_archived_customer() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let customer = create(&mut client, &rep_token(), named("Gone Co.")).await;
    delete(&mut client, &rep_token(), &customer.id, "")
        .await
        .unwrap();
    let before = snapshot(&suite.db).await;
    let error = insert_opportunity(&suite.db, &customer.id, "rep-a1", OPEN_STATUS)
        .await
        .expect_err("an opportunity was inserted for an archived customer");
    // The schema's own rule refused it (R1), not some other failure of the insert.
    let database = error.as_database_error().expect("a database error");
    assert_eq!(database.code().as_deref(), Some("SO001"), "{error}");
    assert_eq!(database.constraint(), Some("CUSTOMER_ARCHIVED"), "{error}");
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn delete_customer_twice_returns_the_archived_customer_unchanged() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(&mut client, &rep_token(), named("Twice")).await;
    let first = delete(&mut client, &rep_token(), &created.id, "")
        .await
        .unwrap();
    let after_first = snapshot(&suite.db).await;
    let second = delete(&mut client, &rep_token(), &created.id, "")
        .await
        .unwrap();
    assert_eq!(second, first);
    // With its current etag too.
    let third = delete(&mut client, &admin_token(), &created.id, &first.etag)
        .await
        .unwrap();
    assert_eq!(third, first);
    assert_eq!(snapshot(&suite.db).await, after_first);
}

#[tokio::test]
async fn delete_customer_stale_etag_is_aborted() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let created = create(&mut client, &rep_token(), named("Etag")).await;
    let renamed = update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: created.id.clone(),
            display_name: "Renamed".into(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap();
    let before = snapshot(&suite.db).await;
    let status = expect_code(
        delete(&mut client, &rep_token(), &created.id, &created.etag).await,
        Code::Aborted,
    );
    assert_eq!(error_info(&status).0, "ETAG_MISMATCH");
    assert_eq!(snapshot(&suite.db).await, before);
    assert!(!get(&mut client, &rep_token(), &created.id).await.archived);
    // The current etag works; afterwards a retry with the pre-archive etag answers the
    // archived customer (AIP-135), changing nothing.
    let archived = delete(&mut client, &rep_token(), &created.id, &renamed.etag)
        .await
        .unwrap();
    assert!(archived.archived);
    let after = snapshot(&suite.db).await;
    let again = delete(&mut client, &rep_token(), &created.id, &renamed.etag)
        .await
        .unwrap();
    assert_eq!(again, archived);
    assert_eq!(snapshot(&suite.db).await, after);
}

#[tokio::test]
async fn delete_customer_errors() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    create(&mut client, &rep_token(), named("Someone")).await;
    let before = snapshot(&suite.db).await;
    expect_invalid(delete(&mut client, &rep_token(), "", "").await, "id");
    expect_invalid(delete(&mut client, &rep_token(), "nope", "").await, "id");
    expect_code(
        delete(&mut client, &rep_token(), &Uuid::new_v4().to_string(), "").await,
        Code::NotFound,
    );
    assert_eq!(snapshot(&suite.db).await, before);
}

#[tokio::test]
async fn delete_customer_with_open_opportunities_is_failed_precondition_saying_how_many() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let customer = create(&mut client, &rep_token(), named("Busy Co.")).await;
    let open_1 = insert_opportunity(&suite.db, &customer.id, "rep-a1", OPEN_STATUS)
        .await
        .unwrap();
    let open_2 = insert_opportunity(
        &suite.db,
        &customer.id,
        "rep-a1",
        "00000000-0000-4000-8000-000000000004",
    )
    .await
    .unwrap();
    // Closed ones do not block.
    insert_opportunity(&suite.db, &customer.id, "rep-a1", WON_STATUS)
        .await
        .unwrap();
    insert_opportunity(&suite.db, &customer.id, "rep-a1", LOST_STATUS)
        .await
        .unwrap();
    // Another customer's open opportunity does not count.
    let other = create(&mut client, &rep_token(), named("Other Co.")).await;
    insert_opportunity(&suite.db, &other.id, "rep-a1", OPEN_STATUS)
        .await
        .unwrap();

    let before = snapshot(&suite.db).await;
    for caller in [rep_token(), admin_token()] {
        let status = expect_code(
            delete(&mut client, &caller, &customer.id, "").await,
            Code::FailedPrecondition,
        );
        assert!(
            status.message().contains("2 open opportunities"),
            "the message says how many: {:?}",
            status.message()
        );
        let failure = status
            .get_details_precondition_failure()
            .expect("a PreconditionFailure");
        assert_eq!(
            failure.violations[0].r#type,
            "CUSTOMER_HAS_OPEN_OPPORTUNITIES"
        );
        assert_eq!(failure.violations[0].subject, customer.id);
        assert_eq!(snapshot(&suite.db).await, before);
    }

    // Close one: the count follows.
    sqlx::query(
        "update opportunities set status_id = $2::uuid, state = 'WON', close_time = now()
         where id = $1",
    )
    .bind(open_1)
    .bind(WON_STATUS)
    .execute(&suite.db)
    .await
    .unwrap();
    let status = expect_code(
        delete(&mut client, &rep_token(), &customer.id, "").await,
        Code::FailedPrecondition,
    );
    assert!(
        status.message().contains("1 open opportunit"),
        "{:?}",
        status.message()
    );
    // Close the last: now it can be archived.
    sqlx::query(
        "update opportunities set status_id = $2::uuid, state = 'LOST', close_time = now()
         where id = $1",
    )
    .bind(open_2)
    .bind(LOST_STATUS)
    .execute(&suite.db)
    .await
    .unwrap();
    let archived = delete(&mut client, &rep_token(), &customer.id, "")
        .await
        .unwrap();
    assert!(archived.archived);
}

#[tokio::test]
async fn r12_only_owner_manager_or_admin_archive() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    // Everyone writes once, so their teams are recorded.
    for who in [
        rep_a2_token(),
        rep_b_token(),
        manager_token(),
        manager_b_token(),
        admin_token(),
    ] {
        create(&mut client, &who, named("Warm-up")).await;
    }
    let owned_by_a1 = || async {
        let mut client = suite.customers().await;
        create(&mut client, &rep_token(), named("Owned by rep-a1")).await
    };

    // Refused: another rep of the owner's team, a rep of another team, a manager of
    // another team. Each refusal changes nothing.
    let target = owned_by_a1().await;
    for (who, caller) in [
        ("rep of the same team", rep_a2_token()),
        ("rep of another team", rep_b_token()),
        ("manager of another team", manager_b_token()),
    ] {
        let before = snapshot(&suite.db).await;
        let status = expect_code(
            delete(&mut client, &caller, &target.id, "").await,
            Code::PermissionDenied,
        );
        assert_eq!(error_info(&status).0, "OUT_OF_SCOPE", "{who}");
        assert_eq!(
            snapshot(&suite.db).await,
            before,
            "{who}: something changed"
        );
    }
    assert!(!get(&mut client, &rep_token(), &target.id).await.archived);

    // Allowed: the owner, a manager of the owner's team, an admin.
    for (who, caller) in [
        ("the owner", rep_token()),
        ("the owner's manager", manager_token()),
        ("an admin", admin_token()),
    ] {
        let target = owned_by_a1().await;
        let archived = delete(&mut client, &caller, &target.id, "")
            .await
            .unwrap_or_else(|status| panic!("{who} may archive: {status:?}"));
        assert!(archived.archived, "{who}");
    }

    // Ownership follows the owner field: once rep-b1 owns it, rep-b1 and mgr-b may archive it.
    let moved = owned_by_a1().await;
    update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: moved.id.clone(),
            owner_id: "rep-b1".into(),
            ..Default::default()
        },
        &["owner_id"],
    )
    .await
    .unwrap();
    expect_code(
        delete(&mut client, &manager_token(), &moved.id, "").await,
        Code::PermissionDenied,
    );
    assert!(
        delete(&mut client, &manager_b_token(), &moved.id, "")
            .await
            .unwrap()
            .archived
    );
}

// =======================================================================================
// ListCustomers
// =======================================================================================

#[tokio::test]
async fn list_hides_archived_customers_unless_asked() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let live = create(&mut client, &rep_token(), named("Live Co.")).await;
    let gone = create(&mut client, &rep_token(), named("Gone Co.")).await;
    let gone = delete(&mut client, &rep_token(), &gone.id, "")
        .await
        .unwrap();

    let default = list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest::default(),
    )
    .await
    .unwrap();
    assert_eq!(ids(&default.customers), std::slice::from_ref(&live.id));
    assert!(default.next_page_token.is_empty());

    let all = list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            show_archived: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.customers, [gone.clone(), live.clone()]);

    // Search hides them too, unless asked.
    let searched = list(&mut client, &rep_token(), search("gone"))
        .await
        .unwrap();
    assert!(searched.customers.is_empty());
    let searched = list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            show_archived: true,
            ..search("gone")
        },
    )
    .await
    .unwrap();
    assert_eq!(searched.customers, [gone]);
}

#[tokio::test]
async fn r13_search_finds_thai_substring() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let siam = create(&mut client, &rep_token(), named("บริษัท สยามพาณิชย์ จำกัด")).await;
    let siam_cement = create(&mut client, &rep_token(), named("ห้างหุ้นส่วนจำกัด ปูนซิเมนต์สยาม")).await;
    let by_contact = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Northern Trading".into(),
            contact_name: "คุณสมศรี สยามวงศ์".into(),
            ..Default::default()
        },
    )
    .await;
    let unrelated = create(&mut client, &rep_token(), named("บริษัท ไทยรุ่งเรือง จำกัด")).await;
    create(&mut client, &rep_token(), named("ACME Co., Ltd.")).await;

    let found = list(&mut client, &rep_token(), search("สยาม"))
        .await
        .unwrap();
    let mut found_ids = ids(&found.customers);
    found_ids.sort();
    let mut expected = vec![
        siam.id.clone(),
        siam_cement.id.clone(),
        by_contact.id.clone(),
    ];
    expected.sort();
    assert_eq!(found_ids, expected, "{:?}", names(&found.customers));

    // A substring in the middle of a word, and across a space.
    let found = list(&mut client, &rep_token(), search("พาณิช"))
        .await
        .unwrap();
    assert_eq!(ids(&found.customers), std::slice::from_ref(&siam.id));
    let found = list(&mut client, &rep_token(), search("ษัท สยาม"))
        .await
        .unwrap();
    assert_eq!(ids(&found.customers), std::slice::from_ref(&siam.id));
    // Shorter than a trigram still works.
    let found = list(&mut client, &rep_token(), search("ไทย"))
        .await
        .unwrap();
    assert_eq!(ids(&found.customers), std::slice::from_ref(&unrelated.id));
    let found = list(&mut client, &rep_token(), search("จำกัด"))
        .await
        .unwrap();
    assert_eq!(found.customers.len(), 3);
    // Surrounding spaces are trimmed; nothing matches what is absent.
    let found = list(&mut client, &rep_token(), search("  สยามพาณิชย์  "))
        .await
        .unwrap();
    assert_eq!(ids(&found.customers), [siam.id]);
    let found = list(&mut client, &rep_token(), search("เชียงใหม่"))
        .await
        .unwrap();
    assert!(found.customers.is_empty());
}

#[tokio::test]
async fn r13_search_finds_latin_substring_ignoring_case_in_every_field() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let acme = create(&mut client, &rep_token(), named("ACME Co., Ltd.")).await;
    let acme_trading = create(&mut client, &rep_token(), named("Acme Trading")).await;
    let by_code = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Code Holder".into(),
            code: "ERP-77-ZX".into(),
            ..Default::default()
        },
    )
    .await;
    let by_email = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Mail Holder".into(),
            email: "Purchasing@Northwind.example".into(),
            ..Default::default()
        },
    )
    .await;
    let by_phone = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Phone Holder".into(),
            phone: "089-765-4321".into(),
            ..Default::default()
        },
    )
    .await;
    let by_contact = create(
        &mut client,
        &rep_token(),
        pb::Customer {
            display_name: "Contact Holder".into(),
            contact_name: "Ms. Wilhelmina Jones".into(),
            ..Default::default()
        },
    )
    .await;
    let percent = create(&mut client, &rep_token(), named("100% Natural_Foods")).await;

    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("acme", vec![&acme.id, &acme_trading.id]),
        ("ACME", vec![&acme.id, &acme_trading.id]),
        ("aCmE cO", vec![&acme.id]),
        ("co., ltd", vec![&acme.id]),
        ("erp-77", vec![&by_code.id]),
        ("77-zx", vec![&by_code.id]),
        ("northwind", vec![&by_email.id]),
        ("purchasing@", vec![&by_email.id]),
        ("+66897", vec![&by_phone.id]),
        ("7654321", vec![&by_phone.id]),
        ("WILHELMINA", vec![&by_contact.id]),
        // LIKE wildcards are matched literally.
        ("100%", vec![&percent.id]),
        ("l_f", vec![&percent.id]),
        ("%", vec![&percent.id]),
        ("_", vec![&percent.id]),
        ("zz", vec![]),
    ];
    for (query, expected) in cases {
        let found = list(&mut client, &rep_token(), search(query))
            .await
            .unwrap();
        let mut found = ids(&found.customers);
        found.sort();
        let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        expected.sort();
        assert_eq!(found, expected, "query {query:?}");
    }
    // A match never spans two fields: "ltd" + the code's start.
    let found = list(&mut client, &rep_token(), search("holder erp"))
        .await
        .unwrap();
    assert!(found.customers.is_empty());
}

/// The search text itself, in any script, finds the customer it was copied from. Rust's
/// `to_lowercase` (which lowercases the query) and Postgres's `lower` (which lowercases the
/// indexed text) disagree on some letters: a final Greek capital sigma becomes 'ς' in Rust and
/// 'σ' in Postgres, a Turkish 'İ' becomes "i̇" in Rust and 'i' in Postgres.
#[tokio::test]
async fn r13_search_finds_its_own_text_in_any_script() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let greek = create(&mut client, &rep_token(), named("ΟΔΟΣ Α.Ε.")).await;
    let turkish = create(&mut client, &rep_token(), named("İZMİR TİCARET")).await;
    for (query, expected) in [("ΟΔΟΣ", &greek.id), ("İZMİR", &turkish.id)] {
        let found = list(&mut client, &rep_token(), search(query))
            .await
            .unwrap();
        assert_eq!(
            ids(&found.customers),
            std::slice::from_ref(expected),
            "query {query:?}"
        );
    }
}

#[tokio::test]
async fn list_filters_by_owner() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let a = create(&mut client, &rep_token(), named("A's")).await;
    let b = create(&mut client, &rep_b_token(), named("B's")).await;
    let m = create(&mut client, &manager_token(), named("M's")).await;
    let owned = |owners: &[&str]| pb::ListCustomersRequest {
        owner_ids: owners.iter().map(|o| (*o).to_owned()).collect(),
        ..Default::default()
    };
    let found = list(&mut client, &rep_token(), owned(&["rep-b1"]))
        .await
        .unwrap();
    assert_eq!(found.customers, std::slice::from_ref(&b));
    let found = list(
        &mut client,
        &rep_token(),
        owned(&["rep-a1", "mgr-a", "rep-a1"]),
    )
    .await
    .unwrap();
    assert_eq!(found.customers, [a.clone(), m.clone()]);
    let found = list(&mut client, &rep_token(), owned(&["nobody"]))
        .await
        .unwrap();
    assert!(found.customers.is_empty());
    // With a search on top.
    let found = list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            query: "'s".into(),
            ..owned(&["rep-a1", "rep-b1"])
        },
    )
    .await
    .unwrap();
    assert_eq!(found.customers, [a, b]);
}

#[tokio::test]
async fn list_orders_by_name_ignoring_case_or_by_update_time() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let banana = create(&mut client, &rep_token(), named("banana")).await;
    let apple = create(&mut client, &rep_token(), named("Apple")).await;
    let cherry = create(&mut client, &rep_token(), named("CHERRY")).await;
    let twin_1 = create(&mut client, &rep_token(), named("Twin")).await;
    let twin_2 = create(&mut client, &rep_token(), named("twin")).await;
    let thai = create(&mut client, &rep_token(), named("กรุงเทพ")).await;

    let mut twins = [twin_1.id.clone(), twin_2.id.clone()];
    twins.sort();
    let expected_by_name = vec![
        apple.id.clone(),
        banana.id.clone(),
        cherry.id.clone(),
        twins[0].clone(),
        twins[1].clone(),
        thai.id.clone(),
    ];
    for order_by in ["", "display_name"] {
        let found = list(
            &mut client,
            &rep_token(),
            pb::ListCustomersRequest {
                order_by: order_by.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(ids(&found.customers), expected_by_name, "{order_by:?}");
        // And the same one page at a time.
        let paged = list_all(
            &mut client,
            &rep_token(),
            pb::ListCustomersRequest {
                order_by: order_by.into(),
                page_size: 1,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(ids(&paged), expected_by_name);
    }

    // Touch banana: it becomes the most recently updated.
    update(
        &mut client,
        &rep_token(),
        pb::Customer {
            id: banana.id.clone(),
            contact_name: "fresh".into(),
            ..Default::default()
        },
        &["contact_name"],
    )
    .await
    .unwrap();
    let expected_by_time = vec![
        banana.id.clone(),
        thai.id.clone(),
        twin_2.id.clone(),
        twin_1.id.clone(),
        cherry.id.clone(),
        apple.id.clone(),
    ];
    let request = pb::ListCustomersRequest {
        order_by: "update_time desc".into(),
        ..Default::default()
    };
    let found = list(&mut client, &rep_token(), request.clone())
        .await
        .unwrap();
    assert_eq!(ids(&found.customers), expected_by_time);
    let paged = list_all(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            page_size: 2,
            ..request
        },
    )
    .await;
    assert_eq!(ids(&paged), expected_by_time);
}

#[tokio::test]
async fn list_page_size_is_bounded() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    create(&mut client, &rep_token(), named("Seed")).await;
    sqlx::query(
        "insert into customers (display_name, owner_id, created_by, updated_by)
         select 'Bulk ' || lpad(i::text, 4, '0'), 'rep-a1', 'rep-a1', 'rep-a1'
         from generate_series(1, 520) i",
    )
    .execute(&suite.db)
    .await
    .unwrap();
    let page = |size: i32| pb::ListCustomersRequest {
        page_size: size,
        ..Default::default()
    };
    let default = list(&mut client, &rep_token(), page(0)).await.unwrap();
    assert_eq!(default.customers.len(), 50, "0 means the default, 50");
    assert!(!default.next_page_token.is_empty());
    let max = list(&mut client, &rep_token(), page(1000)).await.unwrap();
    assert_eq!(max.customers.len(), 500, "at most 500 per page");
    assert!(!max.next_page_token.is_empty());
    let exact = list(&mut client, &rep_token(), page(500)).await.unwrap();
    assert_eq!(exact.customers, max.customers);
    let one = list(&mut client, &rep_token(), page(1)).await.unwrap();
    assert_eq!(one.customers.len(), 1);
    // The last page has no token; page_size may change between pages.
    let rest = list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            page_size: 100,
            page_token: max.next_page_token,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(rest.customers.len(), 21);
    assert!(rest.next_page_token.is_empty());
    expect_invalid(list(&mut client, &rep_token(), page(-1)).await, "page_size");
}

#[tokio::test]
async fn list_validation_errors_name_their_field() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    create(&mut client, &rep_token(), named("Someone")).await;
    let cases: Vec<(&str, pb::ListCustomersRequest, &str)> = vec![
        (
            "negative page_size",
            pb::ListCustomersRequest {
                page_size: -5,
                ..Default::default()
            },
            "page_size",
        ),
        (
            "garbage page_token",
            pb::ListCustomersRequest {
                page_token: "not a token".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            "base64 but not a token",
            pb::ListCustomersRequest {
                page_token: "eyJmb28iOiJiYXIifQ".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            "unknown order_by",
            pb::ListCustomersRequest {
                order_by: "create_time".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            "order_by with SQL",
            pb::ListCustomersRequest {
                order_by: "display_name; drop table customers".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            "query of 201 characters",
            pb::ListCustomersRequest {
                query: "ก".repeat(201),
                ..Default::default()
            },
            "query",
        ),
        (
            "query with a control character",
            pb::ListCustomersRequest {
                query: "acme\nco".into(),
                ..Default::default()
            },
            "query",
        ),
        (
            "empty owner id",
            pb::ListCustomersRequest {
                owner_ids: vec!["rep-a1".into(), " ".into()],
                ..Default::default()
            },
            "owner_ids[1]",
        ),
    ];
    for (case, request, field) in cases {
        let status = expect_code(
            list(&mut client, &rep_token(), request).await,
            Code::InvalidArgument,
        );
        let violations = field_violations(&status);
        assert!(
            violations.iter().any(|(f, _)| f == field),
            "{case}: no violation for {field:?} in {violations:?}"
        );
    }
    // 200 characters is fine.
    list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            query: "ก".repeat(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn list_page_token_reused_with_other_filters_is_invalid() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    for i in 0..4 {
        create(&mut client, &rep_token(), named(&format!("Acme {i}"))).await;
    }
    let first = pb::ListCustomersRequest {
        page_size: 2,
        query: "acme".into(),
        ..Default::default()
    };
    let page = list(&mut client, &rep_token(), first.clone())
        .await
        .unwrap();
    assert!(!page.next_page_token.is_empty());
    let next = pb::ListCustomersRequest {
        page_token: page.next_page_token.clone(),
        ..first.clone()
    };
    // The same filters continue.
    let second = list(&mut client, &rep_token(), next.clone()).await.unwrap();
    assert_eq!(second.customers.len(), 2);
    let changed: Vec<(&str, pb::ListCustomersRequest)> = vec![
        (
            "other query",
            pb::ListCustomersRequest {
                query: "acme 1".into(),
                ..next.clone()
            },
        ),
        (
            "no query",
            pb::ListCustomersRequest {
                query: String::new(),
                ..next.clone()
            },
        ),
        (
            "owner filter",
            pb::ListCustomersRequest {
                owner_ids: vec!["rep-a1".into()],
                ..next.clone()
            },
        ),
        (
            "show_archived",
            pb::ListCustomersRequest {
                show_archived: true,
                ..next.clone()
            },
        ),
        (
            "other order",
            pb::ListCustomersRequest {
                order_by: "update_time desc".into(),
                ..next.clone()
            },
        ),
        (
            "truncated token",
            pb::ListCustomersRequest {
                page_token: next.page_token[..next.page_token.len() - 3].to_owned(),
                ..next.clone()
            },
        ),
    ];
    for (case, request) in changed {
        let status = expect_invalid(list(&mut client, &rep_token(), request).await, "page_token");
        assert!(!status.message().is_empty(), "{case}");
    }
}

/// Keyset pagination by name: rows inserted between pages, before and after the cursor
/// (and with the very name of the cursor's row), neither repeat a row nor hide one that
/// existed when the listing started.
#[tokio::test]
async fn r13_name_pagination_is_stable_while_rows_are_inserted() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let mut initial = Vec::new();
    for i in (10..=150).step_by(10) {
        initial.push(create(&mut client, &rep_token(), named(&format!("N-{i:03}"))).await);
    }
    let request = pb::ListCustomersRequest {
        page_size: 5,
        ..Default::default()
    };
    let page_1 = list(&mut client, &rep_token(), request.clone())
        .await
        .unwrap();
    assert_eq!(
        names(&page_1.customers),
        ["N-010", "N-020", "N-030", "N-040", "N-050"]
    );

    // Inserted between pages 1 and 2: before the cursor, at it, and after it.
    let mut inserted_after_cursor = Vec::new();
    for name in ["N-005", "N-045", "n-050", "N-050", "N-055", "N-200"] {
        let created = create(&mut client, &rep_b_token(), named(name)).await;
        if name.to_lowercase().as_str() > "n-050" {
            inserted_after_cursor.push(created.id);
        }
    }
    let page_2 = list(
        &mut client,
        &rep_token(),
        pb::ListCustomersRequest {
            page_token: page_1.next_page_token.clone(),
            ..request.clone()
        },
    )
    .await
    .unwrap();
    // Inserted between pages 2 and 3.
    for name in ["N-001", "N-095", "N-125", "N-300"] {
        let created = create(&mut client, &rep_b_token(), named(name)).await;
        if name != "N-001" {
            inserted_after_cursor.push(created.id);
        }
    }
    let mut seen = ids(&page_1.customers);
    seen.extend(ids(&page_2.customers));
    let mut token = page_2.next_page_token;
    while !token.is_empty() {
        let page = list(
            &mut client,
            &rep_token(),
            pb::ListCustomersRequest {
                page_token: token,
                ..request.clone()
            },
        )
        .await
        .unwrap();
        seen.extend(ids(&page.customers));
        token = page.next_page_token;
    }

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row repeats: {seen:?}");
    for customer in &initial {
        assert!(
            unique.contains(&customer.id),
            "{} existed at the start and vanished",
            customer.display_name
        );
    }
    // Rows that sort after the cursor at the time of the next page are served too.
    let page_2_ids = ids(&page_2.customers);
    for id in &inserted_after_cursor {
        assert!(
            unique.contains(id),
            "a row inserted after the cursor was skipped"
        );
    }
    // Page 2 starts right after N-050 (ties on the name broken by id) and holds N-055.
    let page_2_names = names(&page_2.customers);
    assert!(
        page_2_names.contains(&"N-055".to_owned()),
        "{page_2_names:?}"
    );
    assert!(
        !page_2_names.iter().any(|n| n.as_str() < "N-050"),
        "{page_2_names:?}"
    );
    assert!(!page_2_ids.is_empty());
    // The whole listing is in order.
    let all: Vec<pb::Customer> = {
        let mut by_id = std::collections::HashMap::new();
        for c in list_all(
            &mut client,
            &rep_token(),
            pb::ListCustomersRequest {
                page_size: 500,
                ..Default::default()
            },
        )
        .await
        {
            by_id.insert(c.id.clone(), c);
        }
        seen.iter().map(|id| by_id[id].clone()).collect()
    };
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|c| (c.display_name.to_lowercase(), c.id.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "pages follow the name order");
}

/// Keyset pagination by update time, newest first: rows created between pages are newer
/// than the cursor (they belong before it and are not served); rows older than the cursor
/// (inserted with an old update time) are served; nothing repeats or vanishes.
#[tokio::test]
async fn r13_update_time_pagination_is_stable_while_rows_are_inserted() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let mut initial = Vec::new();
    for i in 0..12 {
        initial.push(create(&mut client, &rep_token(), named(&format!("T-{i:02}"))).await);
    }
    let request = pb::ListCustomersRequest {
        page_size: 5,
        order_by: "update_time desc".into(),
        ..Default::default()
    };
    let page_1 = list(&mut client, &rep_token(), request.clone())
        .await
        .unwrap();
    assert_eq!(
        names(&page_1.customers),
        ["T-11", "T-10", "T-09", "T-08", "T-07"]
    );
    // Newer rows (before the cursor) and one row far in the past (after it).
    for i in 0..3 {
        create(&mut client, &rep_token(), named(&format!("New-{i}"))).await;
    }
    let old: Uuid = sqlx::query_scalar(
        "insert into customers (display_name, owner_id, created_by, updated_by, create_time,
                                update_time)
         values ('Old', 'rep-a1', 'rep-a1', 'rep-a1', now() - interval '1 year',
                 now() - interval '1 year')
         returning id",
    )
    .fetch_one(&suite.db)
    .await
    .unwrap();
    let rest = {
        let mut rest = Vec::new();
        let mut token = page_1.next_page_token.clone();
        while !token.is_empty() {
            let page = list(
                &mut client,
                &rep_token(),
                pb::ListCustomersRequest {
                    page_token: token,
                    ..request.clone()
                },
            )
            .await
            .unwrap();
            rest.extend(page.customers);
            token = page.next_page_token;
        }
        rest
    };
    assert_eq!(
        names(&rest),
        [
            "T-06", "T-05", "T-04", "T-03", "T-02", "T-01", "T-00", "Old"
        ]
    );
    assert_eq!(rest.last().unwrap().id, old.to_string());
    let mut seen = ids(&page_1.customers);
    seen.extend(ids(&rest));
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no repeats");
    for customer in &initial {
        assert!(
            unique.contains(&customer.id),
            "{} vanished",
            customer.display_name
        );
    }
}

/// Names in any script page correctly. The page token carries Rust's lowercase of the last
/// name, while the query compares with Postgres's `lower`: for a name ending in a Greek
/// capital sigma these differ ('ς' and 'σ'), so the cursor sorts before its own row and the
/// row is served again, forever.
#[tokio::test]
async fn r13_name_pagination_in_any_script_neither_repeats_nor_skips() {
    let suite = TestSuite::spawn().await;
    let mut client = suite.customers().await;
    let mut created = Vec::new();
    for name in ["ΑΛΦΑΣ", "ΒΗΤΑΣ", "İSTANBUL", "IZMIR", "Zeta"] {
        created.push(create(&mut client, &rep_token(), named(name)).await);
    }
    let request = pb::ListCustomersRequest {
        page_size: 1,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..20 {
        let page = list(
            &mut client,
            &rep_token(),
            pb::ListCustomersRequest {
                page_token: token,
                ..request.clone()
            },
        )
        .await
        .unwrap();
        seen.extend(ids(&page.customers));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a row repeated: {seen:?}");
    for customer in &created {
        assert!(
            unique.contains(&customer.id),
            "{} was skipped",
            customer.display_name
        );
    }
}
