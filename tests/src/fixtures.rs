//! What the end-to-end tests share, so no test file keeps its own copy: the shipped
//! statuses' fixed ids (R2), request ids, status changes, field masks, money, and the reading
//! of error details.

use prost_types::FieldMask;
use salesopp_proto::common::v1::Money;
use salesopp_proto::opportunity::v1::ChangeOpportunityStatusRequest;
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

/// A status change of `opportunity_id` to `status_id`, with a fresh request id.
pub fn change_request(opportunity_id: &str, status_id: &str) -> ChangeOpportunityStatusRequest {
    ChangeOpportunityStatusRequest {
        opportunity_id: opportunity_id.to_owned(),
        status_id: status_id.to_owned(),
        request_id: rid(),
        ..Default::default()
    }
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

/// SQL for the contact columns (`email, phone, contact_name`) of generated customer `i` in
/// the query-plan tests' seeds: an email on 75%, a phone on two thirds, Thai and Latin
/// contact names. A macro (a literal), so that each seed stays one `concat!`ed constant.
#[macro_export]
macro_rules! seeded_customer_contacts {
    () => {
        r#"    case when i % 4 <> 0 then 'sales' || i || '@example' || (i % 50) || '.co.th' end,
    case when i % 3 <> 0 then '+66' || (800000000 + (i::bigint * 7919) % 100000000) end,
    case when i % 2 = 0
        then 'คุณ' || (array['สมชาย','สมศรี','วิชัย','มาลี','ประยุทธ','สุดา','อำนาจ','นภา',
                            'ธนา','กานดา'])[1 + i % 10]
        else (array['Mr. John','Ms. Mary','Mr. Peter','Ms. Linda','Mr. David','Ms. Susan',
                    'Mr. Tom','Ms. Anna','Mr. Chris','Ms. Kate'])[1 + i % 10]
    end,
"#
    };
}
