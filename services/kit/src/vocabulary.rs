//! The words every service shares, as types: a status's kind and an opportunity's state,
//! stored as their names (`OPEN`, `WON`, `LOST`) and read back into these enums by sqlx, so
//! no service compares kind strings. The rules that belong to the words live here too: R3
//! (the probability a closing kind is fixed at) and R8 (a lost reason belongs to LOST).

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// Declares a text-stored enum: its names, parsing, and its sqlx text encoding (so a
/// `kind::text` column reads as the enum and a bound value is its name).
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant,)* }

        impl $name {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// The value of a stored name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // As the name, so what hashes or stores a value (page-token filters) keeps its form.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &PgTypeInfo) -> bool {
                <&str as PgHasArrayType>::array_compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<Postgres>>::decode(value)?;
                $name::parse(text)
                    .ok_or_else(|| format!("{text:?} is not a {}", stringify!($name)).into())
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
    };
}

stored_enum! {
    /// A status's kind (R2, R3): an open step of the pipeline, or one of the two closings.
    StatusKind { Open = "OPEN", Won = "WON", Lost = "LOST" }
}

stored_enum! {
    /// Where an opportunity stands: the kind of its current status.
    OpportunityState { Open = "OPEN", Won = "WON", Lost = "LOST" }
}

impl StatusKind {
    /// R3: the probability a closing status is fixed at.
    pub fn fixed_probability(self) -> Option<u8> {
        match self {
            StatusKind::Open => None,
            StatusKind::Won => Some(100),
            StatusKind::Lost => Some(0),
        }
    }

    /// R8: a lost reason is recorded only with the LOST status.
    pub fn takes_lost_reason(self) -> bool {
        self == StatusKind::Lost
    }

    /// The state of an opportunity in a status of this kind.
    pub fn state(self) -> OpportunityState {
        match self {
            StatusKind::Open => OpportunityState::Open,
            StatusKind::Won => OpportunityState::Won,
            StatusKind::Lost => OpportunityState::Lost,
        }
    }
}

impl OpportunityState {
    /// The kind of the status an opportunity in this state is in.
    pub fn kind(self) -> StatusKind {
        match self {
            OpportunityState::Open => StatusKind::Open,
            OpportunityState::Won => StatusKind::Won,
            OpportunityState::Lost => StatusKind::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for kind in [StatusKind::Open, StatusKind::Won, StatusKind::Lost] {
            assert_eq!(StatusKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.state().kind(), kind);
            assert_eq!(kind.state().as_str(), kind.as_str());
        }
        assert_eq!(StatusKind::parse("open"), None);
        assert!(StatusKind::Lost.takes_lost_reason());
        assert!(!StatusKind::Won.takes_lost_reason());
    }
}
