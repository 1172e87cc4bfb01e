//! R12 as one predicate: who a caller may see and change. Lists render it into SQL (the
//! opportunity store), gets and streams test each row with it, the customer archive rule
//! and the gateway's pipeline board ask it of one owner.

use crate::identity::{Role, Sales};

/// Who the caller may see and change (R12), rendered into SQL by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// `sales_admin`: every opportunity.
    All,
    /// `sales_manager`: their own and those of every salesperson of `team`.
    Team { me: String, team: String },
    /// `sales_rep`: their own.
    Own { me: String },
}

impl Visibility {
    /// What a caller with a sales role sees: an admin everything, a manager with a team
    /// that team (and their own), everyone else their own.
    pub fn of(caller: Sales<'_>) -> Visibility {
        if caller.has_role(Role::SalesAdmin) {
            Visibility::All
        } else if caller.has_role(Role::SalesManager) && !caller.team.is_empty() {
            Visibility::Team {
                me: caller.id.clone(),
                team: caller.team.clone(),
            }
        } else {
            Visibility::Own {
                me: caller.id.clone(),
            }
        }
    }

    /// Whether an opportunity owned by `owner_id` (of `owner_team`) is visible.
    pub fn sees(&self, owner_id: &str, owner_team: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Team { me, team } => owner_id == me || owner_team == team,
            Visibility::Own { me } => owner_id == me,
        }
    }
}
