//! Opaque page tokens for keyset pagination (AIP-158).
//!
//! A token carries the sort key of the last row served and a fingerprint of the request's
//! other fields; a token reused with different filters is refused, not silently misapplied.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<K> {
    /// Fingerprint of the request's filters.
    f: String,
    /// The last row's sort key.
    k: K,
}

/// A short fingerprint of whatever identifies a query (filters, order).
pub fn fingerprint(parts: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(parts).unwrap_or_default();
    let digest = Sha256::digest(bytes);
    URL_SAFE_NO_PAD.encode(&digest[..9])
}

pub fn encode<K: Serialize>(query_fingerprint: &str, key: &K) -> String {
    let envelope = Envelope {
        f: query_fingerprint.to_owned(),
        k: key,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// Decodes a page token; `None` for the first page.
pub fn decode<K: DeserializeOwned>(
    token: &str,
    query_fingerprint: &str,
) -> Result<Option<K>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ApiError::invalid("page_token", "not a page token this list returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let envelope: Envelope<K> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if envelope.f != query_fingerprint {
        return Err(ApiError::invalid(
            "page_token",
            "the page token belongs to a request with other filters or order",
        ));
    }
    Ok(Some(envelope.k))
}

/// The page size a list serves: `requested` when in 1..=max, `default` for 0.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, ApiError> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        n => Ok((n as u32).min(max)),
    }
}
