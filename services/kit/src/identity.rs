//! Who is calling: the [`Principal`] the auth layer derives from a verified token, and its
//! sales [`Role`]s (R12). Depends on nothing else of the kit but errors, so both the token
//! layer (`auth`) and the salesperson records (`people`) build on it without a cycle.

use std::collections::BTreeSet;

use crate::error::ApiError;

/// A sales role, from the token's `roles` claim (R12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    SalesRep,
    SalesManager,
    SalesAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SalesRep => "sales_rep",
            Role::SalesManager => "sales_manager",
            Role::SalesAdmin => "sales_admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sales_rep" => Some(Role::SalesRep),
            "sales_manager" => Some(Role::SalesManager),
            "sales_admin" => Some(Role::SalesAdmin),
            _ => None,
        }
    }
}

/// The authenticated caller of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub display_name: String,
    pub team: String,
    pub roles: BTreeSet<Role>,
    /// Set by the auth layer when this caller's salesperson row is known to exist in the
    /// service's database (its recorder wrote or remembers it): a write then needs no
    /// statement of its own to make sure of it ([`crate::people::record`]).
    pub recorded: bool,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn has_sales_role(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Any sales role: what reading the suite's shared data takes (R12).
    pub fn require_sales_role(&self) -> Result<(), ApiError> {
        if self.has_sales_role() {
            Ok(())
        } else {
            Err(ApiError::role_required(
                "the caller has no sales role (sales_rep, sales_manager or sales_admin)",
            ))
        }
    }

    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(ApiError::role_required(format!(
                "this call requires the {} role",
                role.as_str()
            )))
        }
    }

    /// The principal the auth layer attached to `request`. A handler reached without one
    /// was mounted without the auth layer: refuse rather than act anonymously.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Principal, ApiError> {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::token_missing("missing bearer token"))
    }
}

/// A caller proven to hold a sales role: what reading the suite's shared data takes (R12).
/// Only [`Principal::sales`] makes one, so a service function that takes it cannot be reached
/// without the check, and never repeats it.
#[derive(Debug, Clone, Copy)]
pub struct Sales<'a>(&'a Principal);

/// A caller proven to hold `sales_admin`: what configuration takes (R12). Made only by
/// [`Principal::admin`].
#[derive(Debug, Clone, Copy)]
pub struct Admin<'a>(&'a Principal);

impl std::ops::Deref for Sales<'_> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        self.0
    }
}

impl std::ops::Deref for Admin<'_> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        self.0
    }
}

impl Principal {
    /// The proof that the caller has a sales role, or ROLE_REQUIRED.
    pub fn sales(&self) -> Result<Sales<'_>, ApiError> {
        self.require_sales_role().map(|()| Sales(self))
    }

    /// The proof that the caller is a sales admin, or ROLE_REQUIRED.
    pub fn admin(&self) -> Result<Admin<'_>, ApiError> {
        self.require(Role::SalesAdmin).map(|()| Admin(self))
    }
}
