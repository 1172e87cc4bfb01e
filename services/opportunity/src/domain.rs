//! Validated opportunity values: money (ISO 4217, never negative, exact to the nano), dates,
//! texts; and the visibility rule of R12 as data the queries render into SQL.

use chrono::NaiveDate;
use salesopp_kit::StatusKind;
use salesopp_kit::error::{ApiError, ApiResult};

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_NEXT_STEP_CHARS: usize = 1000;
pub const MAX_LOST_REASON_CHARS: usize = 1000;
pub const MAX_NOTE_CHARS: usize = 2000;
pub const MAX_QUERY_CHARS: usize = 200;

/// Active ISO 4217 alphabetic codes.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL \
BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP \
GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW \
KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO \
NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD \
SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD \
XCG XOF XPF YER ZAR ZMW ZWG";

pub fn is_currency(code: &str) -> bool {
    code.len() == 3 && ISO_4217.split_whitespace().any(|c| c == code)
}

/// A non-negative amount of one currency, exact to the nano.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub currency_code: String,
    pub units: i64,
    pub nanos: i32,
}

impl Money {
    /// Validates a protobuf Money's parts; problems as (field suffix, description).
    pub fn parse(
        currency_code: &str,
        units: i64,
        nanos: i32,
    ) -> Result<Money, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if !is_currency(currency_code) {
            problems.push((
                ".currency_code",
                format!("{currency_code:?} is not an ISO 4217 currency code (e.g. \"THB\")"),
            ));
        }
        if units < 0 || nanos < 0 {
            problems.push(("", "must not be negative".to_owned()));
        }
        if !(0..=999_999_999).contains(&nanos) && nanos >= 0 {
            problems.push((".nanos", "must be 0..999,999,999".to_owned()));
        }
        if problems.is_empty() {
            Ok(Money {
                currency_code: currency_code.to_owned(),
                units,
                nanos,
            })
        } else {
            Err(problems)
        }
    }

    /// The weighted amount from the exact sum of amount x probability (percent) as Postgres
    /// `numeric` text: divided by 100 and rounded once to the nano, half to even.
    pub fn weighted(currency_code: &str, sum_x100: &str) -> Option<Money> {
        let (whole, fraction) = sum_x100.split_once('.').unwrap_or((sum_x100, ""));
        if whole.starts_with('-')
            || fraction.len() > 9
            || !fraction.chars().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let whole: i128 = whole.parse().ok()?;
        let fraction: i128 = format!("{fraction:0<9}").parse().ok()?;
        let nanos_x100 = whole.checked_mul(1_000_000_000)?.checked_add(fraction)?;
        let (quotient, remainder) = (nanos_x100 / 100, nanos_x100 % 100);
        let nanos = match remainder.cmp(&50) {
            std::cmp::Ordering::Less => quotient,
            std::cmp::Ordering::Greater => quotient + 1,
            std::cmp::Ordering::Equal => quotient + (quotient % 2),
        };
        Some(Money {
            currency_code: currency_code.to_owned(),
            units: i64::try_from(nanos / 1_000_000_000).ok()?,
            nanos: (nanos % 1_000_000_000) as i32,
        })
    }

    /// The amount stored as `currency_code` and `amount` text; `None` when either is null.
    pub fn from_row(currency_code: Option<&str>, amount: Option<&str>) -> Option<Money> {
        Money::from_decimal(currency_code?, amount?)
    }

    /// The exact decimal text Postgres takes as `numeric`.
    pub fn decimal(&self) -> String {
        format!("{}.{:09}", self.units, self.nanos)
    }

    /// Reads Postgres `numeric` text (non-negative, at most 9 decimals after rounding).
    pub fn from_decimal(currency_code: &str, text: &str) -> Option<Money> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let units: i64 = whole.parse().ok()?;
        let mut digits: String = fraction.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        let nanos: i32 = digits.parse().ok()?;
        Some(Money {
            currency_code: currency_code.to_owned(),
            units,
            nanos,
        })
    }
}

/// A calendar date from its parts.
pub fn date(year: i32, month: i32, day: i32) -> Result<NaiveDate, String> {
    if !(1..=9999).contains(&year) {
        return Err("year must be 1..9999".into());
    }
    u32::try_from(month)
        .ok()
        .zip(u32::try_from(day).ok())
        .and_then(|(m, d)| NaiveDate::from_ymd_opt(year, m, d))
        .ok_or_else(|| format!("{year:04}-{month:02}-{day:02} is not a calendar date"))
}

/// Trimmed text of at most `max` characters; `None` when empty.
pub fn text(raw: &str, max: usize) -> Result<Option<String>, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err("must not contain control characters".into());
    }
    Ok(Some(text.to_owned()))
}

/// R8: a lost reason is accepted only with the LOST status, the one the opportunity moves
/// to or, when its status does not change, the one it is in. `field` names the request field.
pub fn check_lost_reason(field: &str, kind: StatusKind, given: bool) -> ApiResult<()> {
    if given && !kind.takes_lost_reason() {
        return Err(ApiError::invalid(
            field,
            "a lost reason is accepted only with the LOST status (the one the opportunity is in or moves to)",
        ));
    }
    Ok(())
}

/// Required title: trimmed, 1..=200 characters, one line.
pub fn title(raw: &str) -> Result<String, String> {
    let title = raw.trim();
    if title.is_empty() {
        return Err("required: 1 to 200 characters".into());
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(format!("must be at most {MAX_TITLE_CHARS} characters"));
    }
    if title.chars().any(char::is_control) {
        return Err("must be one line with no control characters".into());
    }
    Ok(title.to_owned())
}

pub use salesopp_kit::Visibility;

pub use salesopp_kit::text::like_substring;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact_and_never_negative() {
        let money = Money::parse("THB", 1_500_000, 500_000_000).unwrap();
        assert_eq!(money.decimal(), "1500000.500000000");
        assert_eq!(Money::from_decimal("THB", "1500000.500000000"), Some(money));
        assert_eq!(
            Money::from_decimal("THB", "12.5").unwrap().nanos,
            500_000_000
        );
        assert!(Money::parse("THB", -1, 0).is_err());
        assert!(Money::parse("thb", 1, 0).is_err());
        assert!(Money::parse("XYZ", 1, 0).is_err());
        assert!(Money::parse("USD", 1, 1_000_000_000).is_err());
    }

    #[test]
    fn r14_weighted_amounts_round_once_half_to_even() {
        // 1,000,000.50 at 30%: 30,000,015 x100 -> 300,000.15 exactly.
        assert_eq!(
            Money::weighted("THB", "30000015.000000000")
                .unwrap()
                .decimal(),
            "300000.150000000"
        );
        // 0.000000025 at 10% = 0.0000000025: half, to even -> 2 nanos.
        assert_eq!(Money::weighted("THB", "0.000000250").unwrap().nanos, 2);
        // 0.000000035 at 10% = 0.0000000035: half, to even -> 4 nanos.
        assert_eq!(Money::weighted("THB", "0.000000350").unwrap().nanos, 4);
        assert!(Money::weighted("THB", "-1").is_none());
    }

    #[test]
    fn dates_must_exist() {
        assert!(date(2026, 2, 29).is_err());
        assert!(date(2028, 2, 29).is_ok());
        assert!(date(2026, 13, 1).is_err());
        assert!(date(0, 1, 1).is_err());
    }

    #[test]
    fn r12_visibility_by_role() {
        let rep = Visibility::Own { me: "a1".into() };
        assert!(rep.sees("a1", "north"));
        assert!(!rep.sees("a2", "north"));
        let manager = Visibility::Team {
            me: "m".into(),
            team: "north".into(),
        };
        assert!(manager.sees("a2", "north"));
        assert!(!manager.sees("b1", "south"));
        assert!(Visibility::All.sees("anyone", ""));
    }
}
