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

/// What a list request asks of paging: its validated `page_size` and its raw `page_token`,
/// decoded with the request and opened by the service against the query it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    pub token: String,
}

impl PageRequest {
    /// `page_size` (0 for `default`, at most `max`) and `page_token` as the request has them.
    pub fn new(size: i32, token: &str, default: u32, max: u32) -> Result<Self, ApiError> {
        Ok(Self {
            size: page_size(size, default, max)?,
            token: token.to_owned(),
        })
    }

    /// The page of the query identified by `filters`: where it starts (a token of another
    /// query is refused), how many rows to fetch, and the next token once fetched.
    pub fn open<K: DeserializeOwned>(&self, filters: &impl Serialize) -> Result<Page<K>, ApiError> {
        let fingerprint = fingerprint(filters);
        let after = decode(&self.token, &fingerprint)?;
        Ok(Page {
            size: self.size,
            fingerprint,
            after,
        })
    }
}

/// One page of a keyset list (AIP-158).
#[derive(Debug)]
pub struct Page<K> {
    size: u32,
    fingerprint: String,
    /// The sort key of the last row of the previous page; `None` on the first page.
    pub after: Option<K>,
}

impl<K: Serialize> Page<K> {
    /// The rows to fetch: one more than the page, which tells whether another page follows.
    pub fn limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// Keeps the page's rows of `rows` (fetched with [`Page::limit`]) and returns the token
    /// of the next page, made from the last row's `key`: empty when this page is the last.
    pub fn next_token<T>(&self, rows: &mut Vec<T>, key: impl FnOnce(&T) -> K) -> String {
        if rows.len() <= self.size as usize {
            return String::new();
        }
        rows.truncate(self.size as usize);
        rows.last()
            .map(|last| encode(&self.fingerprint, &key(last)))
            .unwrap_or_default()
    }
}
