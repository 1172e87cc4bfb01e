//! The one input check every request of every salesopp call passes before its handler runs
//! (the codec in [`crate::codec`] applies it): text a database or a client library cannot
//! hold, sizes no call accepts, and well-known values out of their range are refused as
//! `INVALID_ARGUMENT` with one field violation each, never left to reach Postgres as an
//! internal error. Each service's own validation then checks what the field means.
//!
//! The walk is generic over the message (its descriptor from [`crate::FILE_DESCRIPTOR_SET`]),
//! so a field added to the contracts is covered without a line of code.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage as _, Value};

/// Longest text any field may hold, in characters (each call's own limits are lower).
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Most elements of any repeated or map field.
pub const MAX_ELEMENTS: usize = 1_000;
/// Deepest nesting of messages.
const MAX_DEPTH: usize = 16;
/// google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
/// google.protobuf.Duration's range: about +-10,000 years.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// One field's problem: its path in the request (`opportunity.title`, `owner_ids[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes")
});

/// The violations of the encoded message `bytes` of type `full_name` (e.g.
/// `salesopp.opportunity.v1.CreateOpportunityRequest`); empty when it passes. A type the
/// descriptor set does not hold passes (nothing is known of it).
pub fn check(full_name: &str, bytes: &[u8]) -> Vec<Violation> {
    let Some(descriptor) = POOL.get_message_by_name(full_name) else {
        return Vec::new();
    };
    let mut violations = Vec::new();
    match DynamicMessage::decode(descriptor, bytes) {
        Ok(message) => walk(&message, "", 0, &mut violations),
        Err(error) => violations.push(Violation {
            field: String::new(),
            description: format!("the request does not decode: {error}"),
        }),
    }
    violations
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn add(violations: &mut Vec<Violation>, field: String, description: impl Into<String>) {
    violations.push(Violation {
        field,
        description: description.into(),
    });
}

fn walk(message: &DynamicMessage, prefix: &str, depth: usize, violations: &mut Vec<Violation>) {
    if depth > MAX_DEPTH {
        add(violations, prefix.to_owned(), "nested too deeply");
        return;
    }
    well_known(message, prefix, violations);
    for (field, value) in message.fields() {
        let path = join(prefix, field.name());
        match value {
            Value::List(items) => {
                if items.len() > MAX_ELEMENTS {
                    add(
                        violations,
                        path.clone(),
                        format!("at most {MAX_ELEMENTS} elements"),
                    );
                }
                for (index, item) in items.iter().enumerate().take(MAX_ELEMENTS) {
                    value_check(item, &format!("{path}[{index}]"), depth, violations);
                }
            }
            Value::Map(entries) => {
                if entries.len() > MAX_ELEMENTS {
                    add(
                        violations,
                        path.clone(),
                        format!("at most {MAX_ELEMENTS} entries"),
                    );
                }
                for (key, item) in entries.iter().take(MAX_ELEMENTS) {
                    let entry = match key {
                        MapKey::String(text) => {
                            let entry = format!("{path}[{text:?}]");
                            text_check(text, &entry, violations);
                            entry
                        }
                        other => format!("{path}[{other:?}]"),
                    };
                    value_check(item, &entry, depth, violations);
                }
            }
            single => value_check(single, &path, depth, violations),
        }
    }
}

fn value_check(value: &Value, path: &str, depth: usize, violations: &mut Vec<Violation>) {
    match value {
        Value::String(text) => text_check(text, path, violations),
        Value::Message(message) => walk(message, path, depth + 1, violations),
        _ => {}
    }
}

/// A character no text field may hold: NUL (Postgres text cannot store it) and Unicode
/// noncharacters (never interchanged).
fn forbidden(c: char) -> bool {
    let code = u32::from(c);
    c == '\0' || (0xFDD0..=0xFDEF).contains(&code) || (code & 0xFFFE) == 0xFFFE
}

fn text_check(text: &str, path: &str, violations: &mut Vec<Violation>) {
    if text.chars().any(forbidden) {
        add(
            violations,
            path.to_owned(),
            "must not contain NUL or Unicode noncharacters",
        );
    }
    if text.chars().nth(MAX_TEXT_CHARS).is_some() {
        add(
            violations,
            path.to_owned(),
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        );
    }
}

fn integer(message: &DynamicMessage, name: &str) -> i64 {
    match message.get_field_by_name(name).as_deref() {
        Some(Value::I64(value)) => *value,
        Some(Value::I32(value)) => i64::from(*value),
        _ => 0,
    }
}

/// The ranges the well-known types define, so no call reads a nonsense time.
fn well_known(message: &DynamicMessage, prefix: &str, violations: &mut Vec<Violation>) {
    let name = message.descriptor().full_name().to_owned();
    let (seconds, nanos) = (integer(message, "seconds"), integer(message, "nanos"));
    match name.as_str() {
        "google.protobuf.Timestamp" => {
            if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
                add(
                    violations,
                    join(prefix, "seconds"),
                    "must be within 0001-01-01 and 9999-12-31",
                );
            }
            if !(0..1_000_000_000).contains(&nanos) {
                add(violations, join(prefix, "nanos"), "must be 0..999,999,999");
            }
        }
        "google.protobuf.Duration" => {
            // unsigned_abs: i64::MIN seconds (a fuzzer's favourite) has no i64 absolute value.
            if seconds.unsigned_abs() > MAX_DURATION_SECONDS.unsigned_abs() {
                add(
                    violations,
                    join(prefix, "seconds"),
                    "must be within +-10,000 years",
                );
            }
            if nanos.unsigned_abs() >= 1_000_000_000
                || (seconds != 0 && nanos != 0 && (seconds < 0) != (nanos < 0))
            {
                add(
                    violations,
                    join(prefix, "nanos"),
                    "must be -999,999,999..999,999,999 with the sign of seconds",
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::opportunity::v1 as pb;

    fn violations_of<M: prost::Message + prost::Name>(message: &M) -> Vec<Violation> {
        check(&M::full_name(), &message.encode_to_vec())
    }

    #[test]
    fn the_most_negative_duration_is_a_violation_not_an_overflow() {
        let change = pb::StatusChange {
            time_in_previous_status: Some(prost_types::Duration {
                seconds: i64::MIN,
                nanos: i32::MIN,
            }),
            ..Default::default()
        };
        let fields: Vec<String> = violations_of(&change)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "time_in_previous_status.seconds",
                "time_in_previous_status.nanos"
            ]
        );
    }

    #[test]
    fn nul_in_any_text_is_a_violation_of_that_field() {
        let request = pb::ListSalespeopleRequest {
            query: "ab\0c".into(),
            ids: vec!["ok".into(), "b\0".into()],
            ..Default::default()
        };
        let fields: Vec<String> = violations_of(&request)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["query", "ids[1]"]);
    }

    #[test]
    fn nested_and_map_text_is_checked_too() {
        let request = crate::statusconfig::v1::CreateStatusRequest {
            status: Some(crate::statusconfig::v1::OpportunityStatus {
                display_name: "x\u{FFFF}".into(),
                localized_names: [("th\0".to_owned(), "ok".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fields: Vec<String> = violations_of(&request)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(
            fields.contains(&"status.display_name".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("status.localized_names[")),
            "{fields:?}"
        );
    }

    #[test]
    fn over_long_text_and_too_many_elements_are_refused() {
        let request = pb::ListOpportunitiesRequest {
            query: "ก".repeat(MAX_TEXT_CHARS + 1),
            owner_ids: vec!["a".into(); MAX_ELEMENTS + 1],
            ..Default::default()
        };
        let fields: Vec<String> = violations_of(&request)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["owner_ids", "query"]);
        let fine = pb::ListOpportunitiesRequest {
            query: "สยาม acme %_".into(),
            ..Default::default()
        };
        assert!(violations_of(&fine).is_empty());
    }

    #[test]
    fn timestamps_out_of_range_are_refused() {
        let request = pb::WatchOpportunityEventsRequest::default();
        assert!(violations_of(&request).is_empty());
        let mut bytes = Vec::new();
        // A message holding only a Timestamp-typed field is exercised through the pool.
        let timestamp = POOL
            .get_message_by_name("google.protobuf.Timestamp")
            .expect("the pool knows Timestamp");
        let mut message = DynamicMessage::new(timestamp);
        message.set_field_by_name("seconds", Value::I64(MAX_TIMESTAMP_SECONDS + 1));
        message.set_field_by_name("nanos", Value::I32(-1));
        message.encode(&mut bytes).expect("encode");
        let fields: Vec<String> = check("google.protobuf.Timestamp", &bytes)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["seconds", "nanos"]);
    }
}
