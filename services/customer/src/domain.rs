//! Validated customer values. Every parser trims its input, treats empty as "not given"
//! where the field is optional, and explains a refusal in words a caller can act on.

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
pub const MAX_CONTACT_NAME_CHARS: usize = 200;
pub const MAX_ADDRESS_CHARS: usize = 1000;
pub const MAX_CODE_CHARS: usize = 50;
pub const MAX_EMAIL_CHARS: usize = 254;

fn has_control(text: &str, allow_newlines: bool) -> bool {
    text.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\r' || c == '\t')))
}

/// Required display name: trimmed, 1..=200 characters, any script.
pub fn display_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("required: the customer's name, 1 to 200 characters".into());
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(format!(
            "must be at most {MAX_DISPLAY_NAME_CHARS} characters"
        ));
    }
    if has_control(name, false) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_owned())
}

/// Optional code: 1..=50 ASCII letters, digits, `-` or `_`.
pub fn code(raw: &str) -> Result<Option<String>, String> {
    let code = raw.trim();
    if code.is_empty() {
        return Ok(None);
    }
    if code.len() > MAX_CODE_CHARS {
        return Err(format!("must be at most {MAX_CODE_CHARS} characters"));
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("may hold only ASCII letters, digits, '-' and '_'".into());
    }
    Ok(Some(code.to_owned()))
}

/// Optional email: one `local@domain` address with a dotted domain.
pub fn email(raw: &str) -> Result<Option<String>, String> {
    let email = raw.trim();
    if email.is_empty() {
        return Ok(None);
    }
    let invalid = || format!("{email:?} is not an email address (name@example.com)");
    if email.len() > MAX_EMAIL_CHARS || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
        return Err(invalid());
    }
    Ok(Some(format!("{local}@{}", domain.to_lowercase())))
}

/// Optional phone, canonicalized to E.164. Spaces, `-`, `.` and parentheses are ignored; a
/// Thai local number (leading 0, 9 or 10 digits) becomes +66 without the 0.
pub fn phone(raw: &str) -> Result<Option<String>, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        format!(
            "{text:?} is not a phone number: use E.164 (+66812345678) or a Thai number (081-234-5678)"
        )
    };
    let (international, rest) = match text.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut digits = String::new();
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(invalid()),
        }
    }
    let e164 = if international {
        digits
    } else if let Some(national) = digits.strip_prefix('0') {
        if !(8..=9).contains(&national.len()) {
            return Err(invalid());
        }
        format!("66{national}")
    } else {
        return Err(invalid());
    };
    // E.164: a country code that does not start with 0, at most 15 digits in all.
    if !(8..=15).contains(&e164.len()) || e164.starts_with('0') {
        return Err(invalid());
    }
    Ok(Some(format!("+{e164}")))
}

/// Optional Thai tax id: 13 digits, the last the check digit of the first 12.
pub fn tax_id(raw: &str) -> Result<Option<String>, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let digits: String = text.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if digits.len() != 13 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err("a Thai tax id has 13 digits".into());
    }
    let values: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = values[..12]
        .iter()
        .enumerate()
        .map(|(i, d)| d * (13 - i as u32))
        .sum();
    let check = (11 - sum % 11) % 10;
    if check != values[12] {
        return Err("the check digit (the 13th) does not match the first 12 digits".into());
    }
    Ok(Some(digits))
}

/// Optional free text of at most `max` characters.
pub fn text(raw: &str, max: usize, allow_newlines: bool) -> Result<Option<String>, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if has_control(text, allow_newlines) {
        return Err("must not contain control characters".into());
    }
    Ok(Some(text.to_owned()))
}

/// The writable fields of a customer, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerFields {
    pub code: Option<String>,
    pub display_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub contact_name: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
}

/// The changes of an UpdateCustomer call: `Some(value)` sets a field (`Some(None)` clears an
/// optional one), `None` leaves it.
#[derive(Debug, Clone, Default)]
pub struct CustomerPatch {
    pub code: Option<Option<String>>,
    pub display_name: Option<String>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub contact_name: Option<Option<String>>,
    pub tax_id: Option<Option<String>>,
    pub address: Option<Option<String>>,
    pub owner_id: Option<String>,
}

impl CustomerPatch {
    pub fn apply(&self, fields: &mut CustomerFields) {
        if let Some(code) = &self.code {
            fields.code.clone_from(code);
        }
        if let Some(name) = &self.display_name {
            fields.display_name.clone_from(name);
        }
        if let Some(email) = &self.email {
            fields.email.clone_from(email);
        }
        if let Some(phone) = &self.phone {
            fields.phone.clone_from(phone);
        }
        if let Some(contact) = &self.contact_name {
            fields.contact_name.clone_from(contact);
        }
        if let Some(tax_id) = &self.tax_id {
            fields.tax_id.clone_from(tax_id);
        }
        if let Some(address) = &self.address {
            fields.address.clone_from(address);
        }
    }
}

pub use salesopp_kit::text::like_substring;

/// The decoded input of each call: what the service function works on, every field
/// already validated (convert.rs).
pub mod input {
    use salesopp_kit::{PageRequest, Retry};
    use uuid::Uuid;

    use super::{CustomerFields, CustomerPatch};

    pub struct GetCustomer {
        pub id: Uuid,
    }

    pub struct CreateCustomer {
        pub fields: CustomerFields,
        /// `None`: the caller owns it.
        pub owner_id: Option<String>,
        pub retry: Retry,
    }

    /// BatchCreateCustomers (R21): each item a CreateCustomer.
    pub struct BatchCreateCustomers(pub salesopp_kit::batch::Batch<CreateCustomer>);

    pub struct UpdateCustomer {
        pub id: Uuid,
        pub etag: Option<String>,
        pub patch: CustomerPatch,
        pub retry: Retry,
    }

    pub struct DeleteCustomer {
        pub id: Uuid,
        pub etag: Option<String>,
        pub retry: Retry,
    }

    /// The filters and order live in the store's terms (`ListFilter`), which the page token's
    /// fingerprint covers.
    pub struct ListCustomers<Filter> {
        pub filter: Filter,
        pub page: PageRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_become_e164() {
        assert_eq!(
            phone("081-234-5678").unwrap().as_deref(),
            Some("+66812345678")
        );
        assert_eq!(
            phone("02 123 4567").unwrap().as_deref(),
            Some("+6621234567")
        );
        assert_eq!(
            phone("+66 81 234 5678").unwrap().as_deref(),
            Some("+66812345678")
        );
        assert_eq!(
            phone("+1 (415) 555-0100").unwrap().as_deref(),
            Some("+14155550100")
        );
        assert!(phone("12345").is_err());
        assert!(phone("081-234-567x").is_err());
        assert!(phone("+0812345678").is_err());
        assert_eq!(phone("  ").unwrap(), None);
    }

    #[test]
    fn thai_tax_ids_need_their_check_digit() {
        assert_eq!(
            tax_id("0-1055-36000-98-4").unwrap().as_deref(),
            Some("0105536000984")
        );
        assert!(tax_id("0105536000981").is_err());
        assert!(tax_id("010553600098").is_err());
    }

    #[test]
    fn emails_are_checked_and_domains_lowercased() {
        assert_eq!(
            email(" Sales@ACME.co.th ").unwrap().as_deref(),
            Some("Sales@acme.co.th")
        );
        assert!(email("no-at-sign").is_err());
        assert!(email("a@b").is_err());
        assert!(email("a b@c.com").is_err());
    }

    #[test]
    fn names_take_any_script() {
        assert_eq!(
            display_name("  บริษัท สยามพาณิชย์ จำกัด ").unwrap(),
            "บริษัท สยามพาณิชย์ จำกัด"
        );
        assert!(display_name("").is_err());
        assert!(display_name(&"a".repeat(201)).is_err());
        assert!(code("AC 1").is_err());
        assert_eq!(code("ERP-001").unwrap().as_deref(), Some("ERP-001"));
    }

    #[test]
    fn like_patterns_escape_wildcards() {}
}
