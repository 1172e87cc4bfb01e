//! What a downstream call carries from the caller's call: the bearer token (so the services
//! check the caller, not the gateway), the remaining deadline, and the call's trace context
//! (the caller's trace, with the gateway's span as the parent: `salesopp_kit::trace`).
//! A downstream failure keeps its code and details, except that an unreachable service is
//! answered UNAVAILABLE naming the part that failed.

use std::collections::HashMap;
use std::time::Duration;

use salesopp_kit::error::{self, Reason};
use salesopp_kit::trace::CallTrace;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// Metadata passed through unchanged. Not `traceparent`: each downstream call carries the
/// context of its own client span instead (`salesopp_kit::trace::ClientTraceLayer`).
const FORWARDED: [&str; 1] = ["authorization"];

/// The caller's context, captured when its call arrives.
#[derive(Debug, Clone)]
pub struct Forward {
    metadata: Vec<(&'static str, MetadataValue<tonic::metadata::Ascii>)>,
    deadline: Option<Instant>,
    trace: Option<CallTrace>,
}

/// Parses a `grpc-timeout` header value ("<up to 8 digits><H|M|S|m|u|n>").
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

impl Forward {
    pub fn capture<T>(request: &tonic::Request<T>) -> Forward {
        let metadata = request.metadata();
        let forwarded = FORWARDED
            .iter()
            .filter_map(|key| metadata.get(*key).map(|value| (*key, value.clone())))
            .collect();
        let deadline = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        Forward {
            metadata: forwarded,
            deadline,
            trace: request.extensions().get::<CallTrace>().cloned(),
        }
    }

    /// Time left before the caller's deadline, if it set one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// A downstream request carrying the caller's token and remaining time, and the call's
    /// trace context for the client span to carry on.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (key, value) in &self.metadata {
            request.metadata_mut().insert(*key, value.clone());
        }
        if let Some(trace) = &self.trace {
            request.extensions_mut().insert(trace.clone());
        }
        if let Some(remaining) = self.remaining() {
            request.set_timeout(remaining.max(Duration::from_millis(1)));
        }
        request
    }
}

/// The downstream service a combined call depends on, for error messages.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Customer,
    Opportunity,
    StatusConfig,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Customer => "customer service",
            Part::Opportunity => "opportunity service",
            Part::StatusConfig => "status-config service",
        }
    }
}

/// Maps a downstream failure: the caller gets the service's own answer (permission, not
/// found, invalid argument...), except when the service could not be reached.
pub fn downstream(part: Part) -> impl Fn(Status) -> Status {
    move |status| match status.code() {
        Code::Unavailable | Code::Unknown if status.get_details_error_info().is_none() => {
            let reason = Reason::DownstreamUnavailable;
            let details = error::error_info(
                reason,
                HashMap::from([("part".to_owned(), part.name().to_owned())]),
            );
            error::status(
                reason,
                format!("the {} is unavailable: {}", part.name(), status.message()),
                details,
            )
        }
        _ => status,
    }
}

/// One downstream call of a combined call: its answer's message, or its failure as
/// [`downstream`] maps it for `part`.
pub async fn leg<T>(
    part: Part,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(downstream(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
    }
}
