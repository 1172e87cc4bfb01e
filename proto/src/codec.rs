//! The codec of every salesopp service and client: prost's encoding, with two differences on
//! decoding a request. Bytes that do not decode answer `INVALID_ARGUMENT` (reason
//! `MALFORMED_REQUEST`) instead of prost's `INTERNAL`, and every decoded request passes
//! [`crate::input::check`] (reason `INVALID_FIELD`, one `BadRequest` violation per field)
//! before its handler runs. Responses are decoded as prost does.

use std::marker::PhantomData;

use prost::bytes::Buf as _;
use prost::{Message, Name};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `ErrorInfo.reason` of a request whose bytes do not decode.
pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";
/// The `ErrorInfo.reason` of a request with a field violation.
pub const INVALID_FIELD: &str = "INVALID_FIELD";

/// The `ErrorInfo.domain` of the services of a protobuf package: `salesopp.opportunity.v1`
/// is `opportunity.salesopp.io` (AIP-193: the service's name).
pub fn domain_of_package(package: &str) -> &'static str {
    match package {
        "salesopp.customer.v1" => "customer.salesopp.io",
        "salesopp.opportunity.v1" => "opportunity.salesopp.io",
        "salesopp.statusconfig.v1" => "statusconfig.salesopp.io",
        "salesopp.gateway.v1" => "gateway.salesopp.io",
        _ => "salesopp.io",
    }
}

/// [`tonic_prost::ProstCodec`] with the request check above.
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { _type: PhantomData }
    }
}

/// Decodes `U`, checking it when it is a request.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    _type: PhantomData<U>,
}

/// Most violations answered (HTTP/2 peers refuse large response headers).
const MAX_VIOLATIONS: usize = 20;
/// Longest message or field path answered, in characters.
const MAX_CHARS: usize = 500;

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

fn invalid(domain: &str, reason: &str, message: String, details: ErrorDetails) -> Status {
    let mut details = details;
    details.set_error_info(reason, domain, std::collections::HashMap::new());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

impl<U: Message + Name + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let domain = domain_of_package(U::PACKAGE);
        let message = U::decode(bytes.clone()).map_err(|error| {
            invalid(
                domain,
                MALFORMED_REQUEST,
                clip(&format!(
                    "the request does not decode as {}: {error}",
                    U::NAME
                )),
                ErrorDetails::new(),
            )
        })?;
        // Only requests come from outside; responses are the services' own.
        if U::NAME.ends_with("Request") {
            let violations = crate::input::check(&U::full_name(), &bytes);
            if !violations.is_empty() {
                let mut details = ErrorDetails::new();
                let shown = &violations[..violations.len().min(MAX_VIOLATIONS)];
                let summary = shown
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                for violation in shown {
                    details.add_bad_request_violation(
                        clip(&violation.field),
                        violation.description.clone(),
                    );
                }
                if violations.len() > shown.len() {
                    let more = violations.len() - shown.len();
                    details.add_bad_request_violation(
                        "",
                        format!("and {more} more violations, not listed"),
                    );
                }
                return Err(invalid(domain, INVALID_FIELD, clip(&summary), details));
            }
        }
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
