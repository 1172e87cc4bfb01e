//! What one event becomes on NATS: its subject, its headers and its payload.
//!
//! - Subject `<prefix>.<type>`, the type in lower case (`created`, `updated`,
//!   `status_changed`), so a consumer subscribes to `<prefix>.>` or to one type.
//! - Payload: the encoded `salesopp.opportunity.v1.OpportunityEvent`, its `cursor` set (a
//!   consumer may resume WatchOpportunityEvents from it).
//! - Headers: `Nats-Msg-Id` = the event id (JetStream's de-duplication key) and the
//!   CloudEvents 1.0 binary-mode attributes: `ce-specversion`, `ce-id` (the event id),
//!   `ce-type` (`io.salesopp.opportunity.<type>.v1`), `ce-source`, `ce-time` (the change's
//!   time, RFC 3339), `ce-subject` (the opportunity id), and `content-type`.

use async_nats::HeaderMap;
use chrono::SecondsFormat;
use prost::Message as _;
use salesopp_outbox::StoredEvent;
use salesopp_proto::opportunity::v1 as pb;

/// `ce-source` of every event.
pub const SOURCE: &str = "/salesopp/opportunity";
/// `content-type` of every payload.
pub const CONTENT_TYPE: &str = "application/protobuf";

/// The lower-case type token: the stored type (`CREATED`, ...) in lower case.
pub fn type_token(stored: &StoredEvent) -> String {
    stored.event_type.to_ascii_lowercase()
}

/// The subject an event is published on.
pub fn subject(prefix: &str, stored: &StoredEvent) -> String {
    format!("{prefix}.{}", type_token(stored))
}

/// The headers of an event's message.
pub fn headers(stored: &StoredEvent, event: &pb::OpportunityEvent) -> HeaderMap {
    let token = type_token(stored);
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", event.event_id.as_str());
    headers.insert(
        "ce-type",
        format!("io.salesopp.opportunity.{token}.v1").as_str(),
    );
    headers.insert("ce-source", SOURCE);
    headers.insert(
        "ce-time",
        stored
            .occur_time
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .as_str(),
    );
    headers.insert("ce-subject", stored.opportunity_id.to_string().as_str());
    headers.insert("content-type", CONTENT_TYPE);
    headers
}

/// The payload of an event's message.
pub fn payload(event: &pb::OpportunityEvent) -> Vec<u8> {
    event.encode_to_vec()
}
