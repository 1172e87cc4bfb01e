//! The write path waits only for the rows a write changes: the acting salesperson's row is
//! made sure of without a lock, so one caller's concurrent writes (an ERP's service account,
//! an import) never queue on it. Shown directly with two connections: a transaction that
//! recorded the caller and stays open does not hold back that caller's next write.
//!
//! No timing is asserted: the held transaction stays open until the write has answered, and
//! a generous deadline only guards against the hang the old lock caused.

use std::time::Duration;

use salesopp_kit::{Principal, Role, people};
use salesopp_proto::customer::v1 as cpb;
use salesopp_tests::{TestSuite, authed, rep_token};

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_callers_writes_do_not_queue_on_their_salesperson_row() {
    let suite = TestSuite::spawn().await;
    let mut customers = suite.customers().await;
    let first = |name: &str| cpb::CreateCustomerRequest {
        customer: Some(cpb::Customer {
            display_name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The rep exists (their first call records them).
    customers
        .create_customer(authed(&rep_token(), first("First Co")))
        .await
        .expect("first write");

    // Another transaction records the same caller, as every write does, and stays open.
    let rep = Principal {
        id: "rep-a1".into(),
        display_name: "Somchai Rep (renamed)".into(),
        team: "north".into(),
        roles: [Role::SalesRep].into(),
        recorded: false,
    };
    let mut held = suite.db.begin().await.expect("begin");
    people::record(&mut held, &rep)
        .await
        .expect("record in the held transaction");

    // The caller's next write completes while that transaction is still open.
    let write = customers.create_customer(authed(&rep_token(), first("Second Co")));
    let answered = tokio::time::timeout(PATIENCE, write)
        .await
        .expect("the write waited on the caller's salesperson row: it must not");
    answered.expect("second write");
    held.rollback().await.expect("rollback");

    let count: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&suite.db)
        .await
        .expect("count");
    assert_eq!(count, 2);
}
