//! Ids in requests, checked one way in every service: UUIDs (`what` says which id, for the
//! message) and salesperson ids (a token's `sub`).

use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// A required UUID; the problem as a field violation's description.
pub fn parse_uuid(raw: &str, what: &str) -> Result<Uuid, String> {
    if raw.is_empty() {
        return Err(format!("required: {what} (UUID)"));
    }
    Uuid::parse_str(raw).map_err(|_| format!("{raw:?} is not a UUID"))
}

/// A required UUID in request field `field`.
pub fn uuid_field(field: &str, raw: &str, what: &str) -> ApiResult<Uuid> {
    parse_uuid(raw, what).map_err(|why| ApiError::invalid(field, why))
}

/// Longest salesperson id.
pub const MAX_SALESPERSON_ID: usize = 200;

/// An optional salesperson id (`None` when empty: the caller, where that is the default).
pub fn owner(raw: &str) -> Result<Option<String>, String> {
    let owner = raw.trim();
    if owner.is_empty() {
        return Ok(None);
    }
    if owner.len() > MAX_SALESPERSON_ID || owner.chars().any(char::is_control) {
        return Err(format!(
            "must be a salesperson id (a token `sub`), at most {MAX_SALESPERSON_ID} characters"
        ));
    }
    Ok(Some(owner.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_owners() {
        assert!(
            parse_uuid("", "a status id")
                .unwrap_err()
                .contains("a status id")
        );
        assert!(parse_uuid("x", "a status id").is_err());
        assert!(parse_uuid("00000000-0000-4000-8000-000000000001", "id").is_ok());
        assert_eq!(owner("  "), Ok(None));
        assert_eq!(owner(" rep-a1 "), Ok(Some("rep-a1".into())));
        assert!(owner(&"x".repeat(201)).is_err());
        assert!(owner("a\u{7}b").is_err());
    }
}
