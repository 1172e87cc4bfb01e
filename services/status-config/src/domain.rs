//! Validated status values and the rules that need no database: R2 (names), R3 (what each
//! kind's probability may be). Bad values never get past these constructors.

use std::collections::BTreeMap;

pub use salesopp_kit::StatusKind;

/// Longest display or localized name.
pub const MAX_NAME_CHARS: usize = 100;

/// A trimmed name of 1..=100 characters, in any script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusName(String);

impl StatusName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("required: 1 to 100 characters".into());
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Names by language tag; [`LocalizedNames::with_defaults`] makes them hold at least `th`
/// and `en` (R2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalizedNames(BTreeMap<String, String>);

/// The languages every status is named in.
pub const REQUIRED_LANGUAGES: [&str; 2] = ["th", "en"];

fn is_language_tag(tag: &str) -> bool {
    // BCP 47 shape: a 2-3 letter primary language, then subtags of 1-8 letters or digits.
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.chars().all(|c| c.is_ascii_lowercase())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl LocalizedNames {
    /// Validates every entry; each problem is reported as (field suffix, description).
    pub fn parse(raw: &BTreeMap<String, String>) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut names = BTreeMap::new();
        for (tag, name) in raw {
            if !is_language_tag(tag) {
                problems.push((
                    format!("[{tag:?}]"),
                    "keys are lower-case BCP 47 language tags, such as \"th\" or \"en\"".into(),
                ));
                continue;
            }
            match StatusName::parse(name) {
                Ok(name) => {
                    names.insert(tag.clone(), name.0);
                }
                Err(why) => problems.push((format!("[{tag:?}]"), why)),
            }
        }
        if problems.is_empty() {
            Ok(Self(names))
        } else {
            Err(problems)
        }
    }

    /// R2: every required language named, the display name standing in for a missing one.
    pub fn with_defaults(mut self, display_name: &str) -> Self {
        for language in REQUIRED_LANGUAGES {
            self.0
                .entry(language.to_owned())
                .or_insert_with(|| display_name.to_owned());
        }
        self
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// R3: an OPEN status's probability is strictly between 0 and 100.
pub fn open_probability(raw: i32) -> Result<u8, String> {
    if (1..=99).contains(&raw) {
        Ok(raw as u8)
    } else {
        Err(format!(
            "an OPEN status's probability must be between 1 and 99 (R3), got {raw}"
        ))
    }
}

/// The longest `stale_after_days` (R16): ten years.
pub const MAX_STALE_AFTER_DAYS: i32 = 3650;

/// R16: the `stale_after_days` a status of `kind` may have: 0 (never) to ten years for an
/// OPEN status; only 0 for a closing one, which is never stale.
pub fn stale_after_days_for(kind: StatusKind, raw: i32) -> Result<i32, String> {
    match kind {
        _ if !(0..=MAX_STALE_AFTER_DAYS).contains(&raw) => Err(format!(
            "must be between 0 (never stale) and {MAX_STALE_AFTER_DAYS} days, got {raw}"
        )),
        StatusKind::Open => Ok(raw),
        _ if raw == 0 => Ok(0),
        _ => Err("a closing status (WON, LOST) is never stale: only 0 is allowed (R16)".into()),
    }
}

/// R20: the forecast category a status of `kind` may have, as stored: WON's is CLOSED and
/// LOST's OMITTED (fixed); an OPEN status's PIPELINE, BEST_CASE, COMMIT or OMITTED.
pub fn forecast_category_for(kind: StatusKind, raw: i32) -> Result<String, String> {
    use salesopp_proto::common::v1::ForecastCategory as C;
    let category = C::try_from(raw).unwrap_or(C::Unspecified);
    let name = category
        .as_str_name()
        .trim_start_matches("FORECAST_CATEGORY_");
    match (kind, category) {
        (StatusKind::Won, C::Closed) | (StatusKind::Lost, C::Omitted) => Ok(name.to_owned()),
        (StatusKind::Won, _) => Err("the WON status's forecast category is fixed: CLOSED".into()),
        (StatusKind::Lost, _) => {
            Err("the LOST status's forecast category is fixed: OMITTED".into())
        }
        (StatusKind::Open, C::Pipeline | C::BestCase | C::Commit | C::Omitted) => {
            Ok(name.to_owned())
        }
        (StatusKind::Open, _) => Err(format!(
            "an OPEN status's forecast category is PIPELINE, BEST_CASE, COMMIT or OMITTED, got {}",
            category.as_str_name()
        )),
    }
}

/// R3: the probability a status of `kind` may be set to.
pub fn probability_for(kind: StatusKind, raw: i32) -> Result<u8, String> {
    match kind.fixed_probability() {
        None => open_probability(raw),
        Some(fixed) if raw == i32::from(fixed) => Ok(fixed),
        Some(fixed) => Err(format!(
            "the {} status's probability is fixed at {fixed} (R3)",
            kind.as_str()
        )),
    }
}

/// A status to create: always OPEN (R3: WON and LOST exist exactly once each).
#[derive(Debug, Clone)]
pub struct NewStatus {
    pub display_name: StatusName,
    pub localized_names: LocalizedNames,
    pub probability: u8,
    /// R16: checked by [`stale_after_days_for`].
    pub stale_after_days: i32,
    /// R20: checked by [`forecast_category_for`]; `None` is the kind's default (PIPELINE).
    pub forecast_category: Option<String>,
    /// 1-based place to insert at; `None` places it after the last OPEN status.
    pub position: Option<u32>,
    pub make_default: bool,
}

/// The changes of an UpdateStatus call; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct StatusPatch {
    pub display_name: Option<StatusName>,
    pub localized_names: Option<LocalizedNames>,
    /// Checked against the status's kind by [`probability_for`] once the status is read.
    pub probability: Option<i32>,
    /// Checked against the status's kind by [`stale_after_days_for`] once the status is read.
    pub stale_after_days: Option<i32>,
    /// Checked against the status's kind by [`forecast_category_for`] once it is read.
    pub forecast_category: Option<i32>,
}

/// The decoded input of each call: what the service function works on, every field
/// already validated (convert.rs).
pub mod input {
    use salesopp_kit::{PageRequest, Retry};
    use uuid::Uuid;

    use super::{NewStatus, StatusPatch};

    pub struct ListStatuses {
        pub show_archived: bool,
        pub page: PageRequest,
    }

    pub struct GetStatus {
        pub id: Uuid,
    }

    pub struct CreateStatus {
        pub status: NewStatus,
        pub retry: Retry,
    }

    pub struct UpdateStatus {
        pub id: Uuid,
        pub etag: Option<String>,
        pub patch: StatusPatch,
        pub retry: Retry,
    }

    pub struct DeleteStatus {
        pub id: Uuid,
        /// R6: where the opportunities still in the status move.
        pub replacement: Option<Uuid>,
        pub etag: Option<String>,
        pub retry: Retry,
    }

    pub struct SetDefaultStatus {
        pub id: Uuid,
        pub etag: Option<String>,
        pub retry: Retry,
    }

    pub struct ReorderStatuses {
        pub ids: Vec<Uuid>,
        pub retry: Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r16_stale_after_days_is_0_to_ten_years_and_0_for_closing_statuses() {
        assert_eq!(stale_after_days_for(StatusKind::Open, 0), Ok(0));
        assert_eq!(stale_after_days_for(StatusKind::Open, 14), Ok(14));
        assert_eq!(stale_after_days_for(StatusKind::Open, 3650), Ok(3650));
        assert!(stale_after_days_for(StatusKind::Open, 3651).is_err());
        assert!(stale_after_days_for(StatusKind::Open, -1).is_err());
        assert_eq!(stale_after_days_for(StatusKind::Won, 0), Ok(0));
        assert!(stale_after_days_for(StatusKind::Won, 7).is_err());
        assert!(stale_after_days_for(StatusKind::Lost, 7).is_err());
    }

    #[test]
    fn r03_open_probability_is_strictly_between_0_and_100() {
        assert!(open_probability(0).is_err());
        assert!(open_probability(100).is_err());
        assert!(open_probability(-5).is_err());
        assert_eq!(open_probability(1), Ok(1));
        assert_eq!(open_probability(99), Ok(99));
    }

    #[test]
    fn r03_closing_probabilities_are_fixed() {
        assert_eq!(probability_for(StatusKind::Won, 100), Ok(100));
        assert!(probability_for(StatusKind::Won, 90).is_err());
        assert_eq!(probability_for(StatusKind::Lost, 0), Ok(0));
        assert!(probability_for(StatusKind::Lost, 10).is_err());
    }

    #[test]
    fn r02_missing_localized_names_are_the_display_name() {
        let only_en = BTreeMap::from([("en".to_owned(), "Negotiation".to_owned())]);
        let names = LocalizedNames::parse(&only_en)
            .unwrap()
            .with_defaults("Negotiating");
        assert_eq!(names.as_map()["en"], "Negotiation");
        assert_eq!(names.as_map()["th"], "Negotiating");
        let both = BTreeMap::from([
            ("en".to_owned(), " Negotiation ".to_owned()),
            ("th".to_owned(), "เจรจาต่อรอง".to_owned()),
        ]);
        let names = LocalizedNames::parse(&both).unwrap().with_defaults("x");
        assert_eq!(names.as_map()["en"], "Negotiation");
        assert_eq!(names.as_map()["th"], "เจรจาต่อรอง");
        let none = LocalizedNames::parse(&BTreeMap::new())
            .unwrap()
            .with_defaults("Demo");
        assert_eq!(none.as_map().len(), 2);
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert!(StatusName::parse("   ").is_err());
        assert!(StatusName::parse(&"ก".repeat(101)).is_err());
        assert_eq!(StatusName::parse(" สนใจ ").unwrap().as_str(), "สนใจ");
        assert!(!is_language_tag("TH"));
        assert!(is_language_tag("zh-Hant"));
    }
}
