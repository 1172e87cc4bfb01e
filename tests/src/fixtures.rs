//! What the end-to-end tests share, so no test file keeps its own copy: the shipped
//! statuses' fixed ids (R2), request ids, field masks, money, and the reading of error
//! details.

use prost_types::FieldMask;
use salesopp_proto::common::v1::Money;
use tonic_types::StatusExt as _;

// The shipped statuses' fixed ids (R2), in pipeline order.
pub const INTERESTED: &str = "00000000-0000-4000-8000-000000000001";
pub const PRESENTED: &str = "00000000-0000-4000-8000-000000000002";
pub const SENT_EMAIL: &str = "00000000-0000-4000-8000-000000000003";
pub const QUOTATION: &str = "00000000-0000-4000-8000-000000000004";
pub const CONSIDERING: &str = "00000000-0000-4000-8000-000000000005";
pub const WON: &str = "00000000-0000-4000-8000-000000000006";
pub const LOST: &str = "00000000-0000-4000-8000-000000000007";
/// Every shipped status, in pipeline order.
pub const SHIPPED_STATUSES: [&str; 7] = [
    INTERESTED,
    PRESENTED,
    SENT_EMAIL,
    QUOTATION,
    CONSIDERING,
    WON,
    LOST,
];

/// A fresh request id (R11).
pub fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An update mask of `paths`.
pub fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// An amount of `currency_code`.
pub fn money(currency_code: &str, units: i64, nanos: i32) -> Money {
    Money {
        currency_code: currency_code.to_owned(),
        units,
        nanos,
    }
}

/// The `ErrorInfo.reason` of an error; fails the test when the status has no `ErrorInfo`
/// (every error the suite answers carries one).
#[track_caller]
pub fn error_reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
        .reason
}

/// The same, checking the error's domain too (e.g. `statusconfig.salesopp.io`).
#[track_caller]
pub fn error_reason_in(status: &tonic::Status, domain: &str) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, domain, "the error's domain");
    info.reason
}
