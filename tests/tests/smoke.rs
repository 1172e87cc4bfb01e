//! The harness itself works: a suite comes up on its own database and answers.

use salesopp_proto::statusconfig::v1 as pb;
use salesopp_tests::{TestSuite, authed, rep_token};

#[tokio::test]
async fn suite_serves_on_its_own_database() {
    let suite = TestSuite::spawn().await;
    let mut statuses = suite.statuses().await;
    let listed = statuses
        .list_statuses(authed(&rep_token(), pb::ListStatusesRequest::default()))
        .await
        .expect("list statuses")
        .into_inner();
    assert_eq!(listed.statuses.len(), 7);
}
