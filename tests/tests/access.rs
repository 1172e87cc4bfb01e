//! The access rules (DESIGN.md R12 and "Identity") as one table: every call of the four
//! services, made by every kind of caller, against their own, a teammate's, another team's
//! and an unknown target, answers exactly the code the table says; lists, totals, history,
//! the event stream and the gateway's screens hold exactly the rows the caller may see; and a
//! write that is refused changes nothing (a snapshot of every table a call may write is the
//! same before and after it), while a write that is allowed changes something.
//!
//! The suite is configured with an audience, so every valid token carries `aud: salesopp`.
//! The four bad tokens carry the admin's claims: only the flaw of the token can refuse them.
//!
//! `cargo test -p salesopp-tests --test access -- --nocapture` prints the matrix: it is the
//! one in README.md's "Security model".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use salesopp_kit::auth::{Audience, Claims, TokenRequest, mint_hs256};
use salesopp_proto::common::v1::Money;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::opportunity::v1 as opb;
use salesopp_proto::statusconfig::v1 as spb;
use salesopp_tests::fixtures::{
    CONSIDERING, INTERESTED, LOST, PRESENTED, QUOTATION, SENT_EMAIL, SHIPPED_STATUSES, WON, mask,
    money, rid,
};
use salesopp_tests::wait::placed_head;
use salesopp_tests::{SECRET, SuiteOptions, authed, mint};
use tonic::{Code, Status};
use uuid::Uuid;

/// The audience the suite requires.
const AUDIENCE: &str = "salesopp";

/// A well-formed id that no row has (opportunity, customer or status).
const UNKNOWN: &str = "6f1c1a8e-0000-4000-8000-00000000dead";

fn probability(status: &str) -> i128 {
    match status {
        INTERESTED => 10,
        PRESENTED => 20,
        SENT_EMAIL => 30,
        QUOTATION => 50,
        CONSIDERING => 70,
        WON => 100,
        LOST => 0,
        other => panic!("not a shipped status: {other}"),
    }
}

fn is_open(status: &str) -> bool {
    status != WON && status != LOST
}

// ---------------------------------------------------------------------------------------
// The callers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// `sales_rep` of team A.
    A1,
    /// Another `sales_rep` of team A.
    A2,
    /// `sales_rep` of team B.
    B1,
    /// `sales_manager` of team A.
    MgrA,
    /// `sales_manager` of team B.
    MgrB,
    /// `sales_admin` (team hq).
    Admin,
    /// A valid token whose only role is not a sales role (and whose team is A).
    NoRole,
    /// No `authorization` metadata at all.
    NoToken,
    /// The admin's claims, expired an hour ago (well past the 30 s clock skew).
    Expired,
    /// The admin's claims, signed with another HS256 secret.
    WrongKey,
    /// The admin's claims, for another audience.
    WrongAudience,
}

use Caller::*;

/// The columns of the matrix, in order.
const CALLERS: [Caller; 11] = [
    A1,
    A2,
    B1,
    MgrA,
    MgrB,
    Admin,
    NoRole,
    NoToken,
    Expired,
    WrongKey,
    WrongAudience,
];

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn request(sub: &str, name: &str, team: &str, roles: &[&str]) -> TokenRequest {
    TokenRequest {
        sub: sub.to_owned(),
        name: name.to_owned(),
        team: team.to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        ttl_seconds: 600,
        issuer: None,
        audience: Some(AUDIENCE.to_owned()),
    }
}

fn admin_request() -> TokenRequest {
    request("admin", "Araya Admin", "hq", &["sales_admin"])
}

impl Caller {
    fn column(self) -> &'static str {
        match self {
            A1 => "rep a1",
            A2 => "rep a2",
            B1 => "rep b1",
            MgrA => "mgr A",
            MgrB => "mgr B",
            Admin => "admin",
            NoRole => "no role",
            NoToken => "no token",
            Expired => "expired",
            WrongKey => "wrong key",
            WrongAudience => "wrong aud",
        }
    }

    /// The token's `sub`.
    fn id(self) -> &'static str {
        match self {
            A1 => "a1",
            A2 => "a2",
            B1 => "b1",
            MgrA => "mgr-a",
            MgrB => "mgr-b",
            NoRole => "viewer",
            Admin | NoToken | Expired | WrongKey | WrongAudience => "admin",
        }
    }

    fn token(self) -> Option<String> {
        Some(match self {
            A1 => mint(request("a1", "Anan Rep", "A", &["sales_rep"])),
            A2 => mint(request("a2", "Aree Rep", "A", &["sales_rep"])),
            B1 => mint(request("b1", "Boon Rep", "B", &["sales_rep"])),
            MgrA => mint(request("mgr-a", "Malee Manager", "A", &["sales_manager"])),
            MgrB => mint(request("mgr-b", "Montri Manager", "B", &["sales_manager"])),
            Admin => mint(admin_request()),
            NoRole => mint(request("viewer", "Vichai Viewer", "A", &["viewer"])),
            NoToken => return None,
            Expired => {
                let admin = admin_request();
                let now = unix_now();
                let claims = Claims {
                    sub: admin.sub,
                    name: admin.name,
                    team: admin.team,
                    roles: admin.roles,
                    exp: now - 3600,
                    nbf: None,
                    iat: Some(now - 4200),
                    iss: None,
                    aud: Some(Audience::One(AUDIENCE.to_owned())),
                };
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &claims,
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .expect("mint an expired token")
            }
            WrongKey => mint_hs256(b"not-the-suite-secret-9876543210", &admin_request())
                .expect("mint a token with another key"),
            WrongAudience => mint(TokenRequest {
                audience: Some("another-service".to_owned()),
                ..admin_request()
            }),
        })
    }

    /// The owners whose opportunities the caller may see (R12), written out, not derived.
    fn sees(self) -> &'static [&'static str] {
        match self {
            A1 => &["a1"],
            A2 => &["a2"],
            B1 => &["b1"],
            MgrA => &["a1", "a2", "mgr-a"],
            MgrB => &["b1", "mgr-b"],
            Admin => &["a1", "a2", "b1", "mgr-a", "mgr-b", "admin"],
            NoRole | NoToken | Expired | WrongKey | WrongAudience => &[],
        }
    }
}

/// `message` as `caller` sends it.
fn req<T>(caller: Caller, message: T) -> tonic::Request<T> {
    match caller.token() {
        Some(token) => authed(&token, message),
        None => tonic::Request::new(message),
    }
}

// ---------------------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------------------

/// Whose resource a row targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    OfA1,
    OfA2,
    OfB1,
    OfMgrA,
    /// The caller.
    Me,
    /// No such resource.
    Unknown,
}

use Who::*;

impl Who {
    fn label(self) -> &'static str {
        match self {
            OfA1 => "a1's",
            OfA2 => "a2's",
            OfB1 => "b1's",
            OfMgrA => "mgr A's",
            Me => "own",
            Unknown => "unknown id",
        }
    }

    /// The salesperson this stands for.
    fn owner(self, caller: Caller) -> Option<Caller> {
        match self {
            OfA1 => Some(A1),
            OfA2 => Some(A2),
            OfB1 => Some(B1),
            OfMgrA => Some(MgrA),
            Me => Some(caller),
            Unknown => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    ListStatuses,
    GetStatus,
    GetUnknownStatus,
    CreateStatus,
    UpdateStatus,
    DeleteStatus,
    SetDefaultStatus,
    ReorderStatuses,
    CreateCustomer,
    GetCustomer(Who),
    UpdateCustomer(Who),
    ListCustomers,
    DeleteCustomer(Who),
    /// For the given owner (`Me`: `owner_id` left empty).
    CreateOpportunity(Who),
    GetOpportunity(Who),
    UpdateOpportunity(Who),
    /// UpdateOpportunity of a1's opportunity with `owner_id` in the mask.
    ReassignA1sTo(Who),
    ChangeOpportunityStatus(Who),
    ListOpportunities,
    ListStatusHistory(Who),
    GetPipelineSummary,
    ListSalespeople,
    WatchOpportunityEvents,
    GetOpportunityWithHistory(Who),
    GetCustomerOverview(Who),
    GetSalespersonPipeline(Who),
}

use Call::*;

impl Call {
    fn label(self) -> String {
        match self {
            ListStatuses => "StatusConfig.ListStatuses".into(),
            GetStatus => "StatusConfig.GetStatus".into(),
            GetUnknownStatus => "StatusConfig.GetStatus (unknown id)".into(),
            CreateStatus => "StatusConfig.CreateStatus".into(),
            UpdateStatus => "StatusConfig.UpdateStatus".into(),
            DeleteStatus => "StatusConfig.DeleteStatus".into(),
            SetDefaultStatus => "StatusConfig.SetDefaultStatus".into(),
            ReorderStatuses => "StatusConfig.ReorderStatuses".into(),
            CreateCustomer => "Customer.CreateCustomer".into(),
            GetCustomer(who) => format!("Customer.GetCustomer ({})", who.label()),
            UpdateCustomer(who) => format!("Customer.UpdateCustomer ({})", who.label()),
            ListCustomers => "Customer.ListCustomers".into(),
            DeleteCustomer(who) => format!("Customer.DeleteCustomer ({})", who.label()),
            CreateOpportunity(Me) => "Opportunity.CreateOpportunity (for self)".into(),
            CreateOpportunity(who) => format!(
                "Opportunity.CreateOpportunity (for {})",
                who.label().trim_end_matches("'s")
            ),
            GetOpportunity(who) => format!("Opportunity.GetOpportunity ({})", who.label()),
            UpdateOpportunity(who) => {
                format!("Opportunity.UpdateOpportunity ({})", who.label())
            }
            ReassignA1sTo(who) => format!(
                "Opportunity.UpdateOpportunity (reassign a1's to {})",
                who.label().trim_end_matches("'s")
            ),
            ChangeOpportunityStatus(who) => {
                format!("Opportunity.ChangeOpportunityStatus ({})", who.label())
            }
            ListOpportunities => "Opportunity.ListOpportunities".into(),
            ListStatusHistory(who) => {
                format!("Opportunity.ListStatusHistory ({})", who.label())
            }
            GetPipelineSummary => "Opportunity.GetPipelineSummary".into(),
            ListSalespeople => "Opportunity.ListSalespeople".into(),
            WatchOpportunityEvents => "Opportunity.WatchOpportunityEvents".into(),
            GetOpportunityWithHistory(who) => {
                format!("Gateway.GetOpportunityWithHistory ({})", who.label())
            }
            GetCustomerOverview(Unknown) => "Gateway.GetCustomerOverview (unknown id)".into(),
            GetCustomerOverview(who) => {
                format!("Gateway.GetCustomerOverview ({} customer)", who.label())
            }
            GetSalespersonPipeline(Unknown) => {
                "Gateway.GetSalespersonPipeline (unknown salesperson)".into()
            }
            GetSalespersonPipeline(who) => {
                format!("Gateway.GetSalespersonPipeline ({})", who.label())
            }
        }
    }

    /// Writes run after every read, each on targets made for it.
    fn is_write(self) -> bool {
        matches!(
            self,
            CreateStatus
                | UpdateStatus
                | DeleteStatus
                | SetDefaultStatus
                | ReorderStatuses
                | CreateCustomer
                | UpdateCustomer(_)
                | DeleteCustomer(_)
                | CreateOpportunity(_)
                | UpdateOpportunity(_)
                | ReassignA1sTo(_)
                | ChangeOpportunityStatus(_)
        )
    }
}

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

const OK: Code = Code::Ok;
const DENIED: Code = Code::PermissionDenied;
const NOT_FOUND: Code = Code::NotFound;
const UNAUTH: Code = Code::Unauthenticated;

/// The six sales callers' codes (rep a1, rep a2, rep b1, mgr A, mgr B, admin), then the
/// bad identities': no sales role is PERMISSION_DENIED, no token, an expired token, a token
/// signed with another key and a token for another audience are UNAUTHENTICATED, always.
fn sales(codes: [Code; 6]) -> [Code; 11] {
    let [a1, a2, b1, mgr_a, mgr_b, admin] = codes;
    [
        a1, a2, b1, mgr_a, mgr_b, admin, DENIED, UNAUTH, UNAUTH, UNAUTH, UNAUTH,
    ]
}

/// Every call, and the code each caller gets: one row per call and target, the columns
/// `sales([rep a1, rep a2, rep b1, mgr A, mgr B, admin])`.
#[rustfmt::skip]
fn matrix() -> Vec<(Call, [Code; 11])> {
    vec![
        // Statuses: read by every sales role, configured by the admin alone.
        (ListStatuses,                         sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetStatus,                            sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetUnknownStatus,                     sales([NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND])),
        (CreateStatus,                         sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    OK])),
        (UpdateStatus,                         sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    OK])),
        (DeleteStatus,                         sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    OK])),
        (SetDefaultStatus,                     sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    OK])),
        (ReorderStatuses,                      sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    OK])),
        // Customers: a shared directory every sales role reads, creates and changes;
        // archived only by the owner, a manager of the owner's team, or an admin.
        (CreateCustomer,                       sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetCustomer(OfA1),                    sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetCustomer(OfB1),                    sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetCustomer(Unknown),                 sales([NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND])),
        (UpdateCustomer(OfA1),                 sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (UpdateCustomer(OfA2),                 sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (UpdateCustomer(OfB1),                 sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (UpdateCustomer(Unknown),              sales([NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND])),
        (ListCustomers,                        sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (DeleteCustomer(OfA1),                 sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (DeleteCustomer(OfA2),                 sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (DeleteCustomer(OfB1),                 sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (DeleteCustomer(Unknown),              sales([NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND])),
        // Opportunities: a rep's own; a manager's team's and own; all for the admin. Only
        // managers (in their team) and admins give one to someone else. An unknown id is
        // PERMISSION_DENIED to whoever does not see everything (AIP-211).
        (CreateOpportunity(Me),                sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (CreateOpportunity(OfA2),              sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (CreateOpportunity(OfB1),              sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (GetOpportunity(OfA1),                 sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (GetOpportunity(OfA2),                 sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (GetOpportunity(OfB1),                 sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (GetOpportunity(OfMgrA),               sales([DENIED,    DENIED,    DENIED,    OK,        DENIED,    OK])),
        (GetOpportunity(Unknown),              sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    NOT_FOUND])),
        (UpdateOpportunity(OfA1),              sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (UpdateOpportunity(OfA2),              sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (UpdateOpportunity(OfB1),              sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (UpdateOpportunity(Unknown),           sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    NOT_FOUND])),
        (ReassignA1sTo(OfA2),                  sales([DENIED,    DENIED,    DENIED,    OK,        DENIED,    OK])),
        (ReassignA1sTo(OfB1),                  sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    OK])),
        (ChangeOpportunityStatus(OfA1),        sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (ChangeOpportunityStatus(OfA2),        sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (ChangeOpportunityStatus(OfB1),        sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (ChangeOpportunityStatus(Unknown),     sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    NOT_FOUND])),
        (ListOpportunities,                    sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (ListStatusHistory(OfA1),              sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (ListStatusHistory(OfA2),              sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (ListStatusHistory(OfB1),              sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (ListStatusHistory(Unknown),           sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    NOT_FOUND])),
        (GetPipelineSummary,                   sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (ListSalespeople,                      sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (WatchOpportunityEvents,               sales([OK,        OK,        OK,        OK,        OK,        OK])),
        // The gateway forwards the caller's token: the same rules, composed.
        (GetOpportunityWithHistory(OfA1),      sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (GetOpportunityWithHistory(OfA2),      sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (GetOpportunityWithHistory(OfB1),      sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        (GetOpportunityWithHistory(Unknown),   sales([DENIED,    DENIED,    DENIED,    DENIED,    DENIED,    NOT_FOUND])),
        (GetCustomerOverview(OfA1),            sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetCustomerOverview(OfA2),            sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetCustomerOverview(OfB1),            sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetCustomerOverview(Unknown),         sales([NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND])),
        (GetSalespersonPipeline(Me),           sales([OK,        OK,        OK,        OK,        OK,        OK])),
        (GetSalespersonPipeline(OfA1),         sales([OK,        DENIED,    DENIED,    OK,        DENIED,    OK])),
        (GetSalespersonPipeline(OfA2),         sales([DENIED,    OK,        DENIED,    OK,        DENIED,    OK])),
        (GetSalespersonPipeline(OfB1),         sales([DENIED,    DENIED,    OK,        DENIED,    OK,        OK])),
        // Salespeople are a directory every sales role reads (ListSalespeople): an unknown
        // one is NOT_FOUND to all (gateway.proto).
        (GetSalespersonPipeline(Unknown),      sales([NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND])),
    ]
}

// ---------------------------------------------------------------------------------------
// The seed: what every read row is checked against
// ---------------------------------------------------------------------------------------

/// One seeded opportunity: created by its owner in `first`, then moved to `then`.
struct Spec {
    owner: Caller,
    customer_of: Caller,
    currency: &'static str,
    units: i64,
    nanos: i32,
    first: &'static str,
    then: Option<&'static str>,
}

/// Each rep owns two opportunities in distinct statuses and currencies; b1's second one is
/// with a1's customer (so a customer's screen mixes teams); mgr A owns one (a manager sees
/// their own). The ones that moved are the targets of the per-opportunity rows.
const SPECS: [Spec; 7] = [
    Spec {
        owner: A1,
        customer_of: A1,
        currency: "THB",
        units: 100_000,
        nanos: 0,
        first: INTERESTED,
        then: None,
    },
    Spec {
        owner: A1,
        customer_of: A1,
        currency: "USD",
        units: 2_000,
        nanos: 0,
        first: INTERESTED,
        then: Some(QUOTATION),
    },
    Spec {
        owner: A2,
        customer_of: A2,
        currency: "THB",
        units: 50_000,
        nanos: 500_000_000,
        first: PRESENTED,
        then: None,
    },
    Spec {
        owner: A2,
        customer_of: A2,
        currency: "EUR",
        units: 3_000,
        nanos: 0,
        first: INTERESTED,
        then: Some(CONSIDERING),
    },
    Spec {
        owner: B1,
        customer_of: B1,
        currency: "THB",
        units: 80_000,
        nanos: 0,
        first: SENT_EMAIL,
        then: None,
    },
    Spec {
        owner: B1,
        customer_of: A1,
        currency: "USD",
        units: 1_000,
        nanos: 0,
        first: INTERESTED,
        then: Some(WON),
    },
    Spec {
        owner: MgrA,
        customer_of: A2,
        currency: "JPY",
        units: 500_000,
        nanos: 0,
        first: INTERESTED,
        then: Some(PRESENTED),
    },
];

#[derive(Debug, Clone)]
struct Seeded {
    id: String,
    owner: &'static str,
    customer: String,
    currency: &'static str,
    /// The amount in nanos.
    amount: i128,
    /// The first status and, when it moved, the second.
    statuses: Vec<&'static str>,
}

impl Seeded {
    fn status(&self) -> &'static str {
        self.statuses.last().copied().expect("a status")
    }
}

fn nanos(money: Option<&Money>) -> i128 {
    money.map_or(0, |m| {
        i128::from(m.units) * 1_000_000_000 + i128::from(m.nanos)
    })
}

/// Count, total and weighted amount (in nanos) per key; the key ends with the currency.
type Totals = BTreeMap<Vec<String>, (i64, i128, i128)>;

fn expected_totals<'a>(
    opportunities: impl Iterator<Item = &'a Seeded>,
    key: impl Fn(&Seeded) -> Vec<String>,
) -> Totals {
    let mut totals = Totals::new();
    for o in opportunities {
        let weighted = o.amount * probability(o.status());
        assert_eq!(weighted % 100, 0, "seed amounts weigh exactly to the nano");
        let entry = totals.entry(key(o)).or_default();
        entry.0 += 1;
        entry.1 += o.amount;
        entry.2 += weighted / 100;
    }
    totals
}

fn add_totals(totals: &mut Totals, key: Vec<String>, found: &[opb::CurrencyTotal]) {
    for t in found {
        let mut key = key.clone();
        key.push(t.currency_code.clone());
        let previous = totals.insert(
            key.clone(),
            (
                t.count,
                nanos(t.total_amount.as_ref()),
                nanos(t.weighted_amount.as_ref()),
            ),
        );
        assert!(previous.is_none(), "one total per {key:?}");
    }
}

/// Problems found in an answer.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn same<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    fn check(&mut self, what: &str, ok: bool) {
        if !ok {
            self.0.push(what.to_owned());
        }
    }
}

struct Outcome {
    code: Code,
    message: String,
    problems: Vec<String>,
}

fn outcome<T>(
    result: Result<tonic::Response<T>, Status>,
    check: impl FnOnce(T, &mut Problems),
) -> Outcome {
    match result {
        Ok(response) => {
            let mut problems = Problems::default();
            check(response.into_inner(), &mut problems);
            Outcome {
                code: Code::Ok,
                message: String::new(),
                problems: problems.0,
            }
        }
        Err(status) => refused(&status),
    }
}

fn refused(status: &Status) -> Outcome {
    Outcome {
        code: status.code(),
        message: status.message().to_owned(),
        problems: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------

salesopp_tests::world! {
    /// The shared world, and what was seeded in it.
    struct World {
        /// The seeded customer of each rep, by their id.
        customer_of: BTreeMap<&'static str, String>,
        seeded: Vec<Seeded>,
    }
}

impl World {
    async fn new() -> World {
        let world = salesopp_tests::World::with(SuiteOptions {
            audience: Some(AUDIENCE.to_owned()),
            // Streams say soon how far they have read, so watch() knows when it has all.
            streams: salesopp_opportunity::events::StreamConfig {
                heartbeat: Duration::from_millis(200),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let mut world = World {
            world,
            customer_of: BTreeMap::new(),
            seeded: Vec::new(),
        };
        world.seed().await;
        world
    }

    async fn seed(&mut self) {
        // Every sales caller has called once, so all are recorded salespeople.
        for caller in [A1, A2, B1, MgrA, MgrB, Admin] {
            self.statuses
                .list_statuses(req(caller, spb::ListStatusesRequest::default()))
                .await
                .expect("a sales caller lists the statuses");
        }
        for owner in [A1, A2, B1] {
            let id = self.make_customer(owner).await;
            self.customer_of.insert(owner.id(), id);
        }
        for spec in &SPECS {
            let customer = self.customer_of[spec.customer_of.id()].clone();
            let created = self
                .opps
                .create_opportunity(req(
                    spec.owner,
                    opb::CreateOpportunityRequest {
                        opportunity: Some(opb::Opportunity {
                            customer_id: customer.clone(),
                            title: format!("{} {}", spec.owner.id(), spec.currency),
                            amount: Some(money(spec.currency, spec.units, spec.nanos)),
                            status_id: spec.first.to_owned(),
                            ..Default::default()
                        }),
                        request_id: rid(),
                        note: String::new(),
                    },
                ))
                .await
                .expect("seed an opportunity")
                .into_inner();
            let mut statuses = vec![spec.first];
            if let Some(then) = spec.then {
                self.opps
                    .change_opportunity_status(req(
                        spec.owner,
                        opb::ChangeOpportunityStatusRequest {
                            opportunity_id: created.id.clone(),
                            status_id: then.to_owned(),
                            request_id: rid(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .expect("seed a status change");
                statuses.push(then);
            }
            self.seeded.push(Seeded {
                id: created.id,
                owner: spec.owner.id(),
                customer,
                currency: spec.currency,
                amount: i128::from(spec.units) * 1_000_000_000 + i128::from(spec.nanos),
                statuses,
            });
        }
    }

    /// The seeded opportunity the per-opportunity read rows target: the owner's one that moved.
    fn target(&self, who: Who, caller: Caller) -> Option<&Seeded> {
        let owner = who.owner(caller)?.id();
        self.seeded
            .iter()
            .find(|o| o.owner == owner && o.statuses.len() == 2)
    }

    fn visible_to(&self, caller: Caller) -> impl Iterator<Item = &Seeded> {
        self.seeded
            .iter()
            .filter(move |o| caller.sees().contains(&o.owner))
    }

    async fn make_customer(&self, owner: Caller) -> String {
        self.customers
            .clone()
            .create_customer(req(
                owner,
                cpb::CreateCustomerRequest {
                    customer: Some(cpb::Customer {
                        display_name: format!("Customer of {} {}", owner.id(), Uuid::new_v4()),
                        ..Default::default()
                    }),
                    request_id: rid(),
                },
            ))
            .await
            .expect("make a customer")
            .into_inner()
            .id
    }

    /// A fresh opportunity of `owner`, with a1's customer, in Interested.
    async fn make_opportunity(&self, owner: Caller) -> String {
        self.opps
            .clone()
            .create_opportunity(req(
                owner,
                opb::CreateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        customer_id: self.customer_of["a1"].clone(),
                        title: "A target".into(),
                        amount: Some(money("THB", 1_000, 0)),
                        status_id: INTERESTED.into(),
                        ..Default::default()
                    }),
                    request_id: rid(),
                    note: String::new(),
                },
            ))
            .await
            .expect("make an opportunity")
            .into_inner()
            .id
    }

    /// A fresh OPEN status, made by the admin.
    async fn make_status(&self) -> String {
        let name = format!("Target {}", &Uuid::new_v4().simple().to_string()[..8]);
        self.statuses
            .clone()
            .create_status(req(
                Admin,
                spb::CreateStatusRequest {
                    status: Some(spb::OpportunityStatus {
                        display_name: name.clone(),
                        localized_names: BTreeMap::from([
                            ("th".to_owned(), format!("ไทย {name}")),
                            ("en".to_owned(), name),
                        ])
                        .into_iter()
                        .collect(),
                        probability: 40,
                        ..Default::default()
                    }),
                    request_id: rid(),
                },
            ))
            .await
            .expect("make a status")
            .into_inner()
            .id
    }

    /// Everything a call may write, as one comparable text. Salespeople are left out: a
    /// caller is recorded on their first call, which is not a change the call made.
    async fn snapshot(&self) -> String {
        sqlx::query_scalar(
            "select jsonb_build_object(
                 'opportunities', (select coalesce(jsonb_agg(to_jsonb(o) order by o.id), '[]')
                                   from opportunities o),
                 'history', (select coalesce(jsonb_agg(to_jsonb(h) order by h.id), '[]')
                             from status_changes h),
                 'events', (select coalesce(jsonb_agg(to_jsonb(e) - 'seq' order by e.id), '[]')
                            from opportunity_events e),
                 'idempotency', (select coalesce(jsonb_agg(to_jsonb(r)
                                     order by r.caller_id, r.method, r.request_id), '[]')
                                 from idempotency_records r),
                 'customers', (select coalesce(jsonb_agg(to_jsonb(c) order by c.id), '[]')
                               from customers c),
                 'statuses', (select coalesce(jsonb_agg(to_jsonb(s) order by s.id), '[]')
                              from opportunity_statuses s))::text",
        )
        .fetch_one(self.db())
        .await
        .expect("snapshot")
    }

    /// Runs a write: an allowed one must change something, a refused one nothing.
    async fn write<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
        check: impl FnOnce(T, &mut Problems),
    ) -> Outcome {
        let before = self.snapshot().await;
        let result = call.await;
        let after = self.snapshot().await;
        let mut outcome = outcome(result, check);
        if outcome.code == Code::Ok && before == after {
            outcome.problems.push("allowed, but changed nothing".into());
        }
        if outcome.code != Code::Ok && before != after {
            outcome
                .problems
                .push(format!("refused ({:?}) but changed data", outcome.code));
        }
        outcome
    }

    async fn run(&self, caller: Caller, call: Call) -> Outcome {
        let mut statuses = self.statuses.clone();
        let mut customers = self.customers.clone();
        let mut opportunities = self.opps.clone();
        let mut gateway = self.gateway.clone();
        match call {
            // -------------------------------------------------------------- statuses
            ListStatuses => outcome(
                statuses
                    .list_statuses(req(caller, spb::ListStatusesRequest::default()))
                    .await,
                |r, p| {
                    let ids: Vec<&str> = r.statuses.iter().map(|s| s.id.as_str()).collect();
                    p.same("statuses", ids, SHIPPED_STATUSES.to_vec());
                },
            ),
            GetStatus | GetUnknownStatus => {
                let id = if call == GetStatus {
                    INTERESTED
                } else {
                    UNKNOWN
                };
                outcome(
                    statuses
                        .get_status(req(caller, spb::GetStatusRequest { id: id.into() }))
                        .await,
                    |r, p| p.same("status id", r.id.as_str(), id),
                )
            }
            CreateStatus => {
                let name = format!("Created {}", &Uuid::new_v4().simple().to_string()[..8]);
                let request = spb::CreateStatusRequest {
                    status: Some(spb::OpportunityStatus {
                        display_name: name.clone(),
                        localized_names: [
                            ("th".to_owned(), format!("ไทย {name}")),
                            ("en".to_owned(), name.clone()),
                        ]
                        .into_iter()
                        .collect(),
                        probability: 40,
                        ..Default::default()
                    }),
                    request_id: rid(),
                };
                self.write(statuses.create_status(req(caller, request)), |r, p| {
                    p.same("display name", r.display_name.as_str(), name.as_str())
                })
                .await
            }
            UpdateStatus => {
                let id = self.make_status().await;
                let request = spb::UpdateStatusRequest {
                    request_id: String::new(),
                    status: Some(spb::OpportunityStatus {
                        id,
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                };
                self.write(statuses.update_status(req(caller, request)), |r, p| {
                    p.same("display name", r.display_name.as_str(), "Renamed")
                })
                .await
            }
            DeleteStatus => {
                let id = self.make_status().await;
                let request = spb::DeleteStatusRequest {
                    id,
                    ..Default::default()
                };
                self.write(statuses.delete_status(req(caller, request)), |r, p| {
                    p.check(
                        "the status is archived",
                        r.status.is_some_and(|s| s.archived),
                    );
                })
                .await
            }
            SetDefaultStatus => {
                let id = self.make_status().await;
                let request = spb::SetDefaultStatusRequest {
                    id,
                    ..Default::default()
                };
                let outcome = self
                    .write(statuses.set_default_status(req(caller, request)), |r, p| {
                        p.check("the status is the default", r.is_default);
                    })
                    .await;
                if outcome.code == Code::Ok {
                    // Interested is the default again for the rows that follow.
                    statuses
                        .set_default_status(req(
                            Admin,
                            spb::SetDefaultStatusRequest {
                                id: INTERESTED.into(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .expect("restore the default");
                }
                outcome
            }
            ReorderStatuses => {
                let mut ids: Vec<String> = statuses
                    .list_statuses(req(
                        Admin,
                        spb::ListStatusesRequest {
                            page_size: 500,
                            ..Default::default()
                        },
                    ))
                    .await
                    .expect("list the statuses")
                    .into_inner()
                    .statuses
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                ids.swap(0, 1);
                let request = spb::ReorderStatusesRequest {
                    request_id: String::new(),
                    status_ids: ids.clone(),
                };
                self.write(statuses.reorder_statuses(req(caller, request)), |r, p| {
                    let got: Vec<String> = r.statuses.into_iter().map(|s| s.id).collect();
                    p.same("order", got, ids);
                })
                .await
            }
            // -------------------------------------------------------------- customers
            CreateCustomer => {
                let request = cpb::CreateCustomerRequest {
                    customer: Some(cpb::Customer {
                        display_name: format!("New customer {}", Uuid::new_v4()),
                        ..Default::default()
                    }),
                    request_id: rid(),
                };
                self.write(customers.create_customer(req(caller, request)), |r, p| {
                    p.same("owner", r.owner_id.as_str(), caller.id())
                })
                .await
            }
            GetCustomer(who) => {
                let id = match who.owner(caller) {
                    Some(owner) => self.customer_of[owner.id()].clone(),
                    None => UNKNOWN.to_owned(),
                };
                outcome(
                    customers
                        .get_customer(req(caller, cpb::GetCustomerRequest { id: id.clone() }))
                        .await,
                    |r, p| p.same("customer id", r.id, id),
                )
            }
            UpdateCustomer(who) => {
                let id = match who.owner(caller) {
                    Some(owner) => self.make_customer(owner).await,
                    None => UNKNOWN.to_owned(),
                };
                let name = format!("Renamed {}", Uuid::new_v4());
                let request = cpb::UpdateCustomerRequest {
                    request_id: String::new(),
                    customer: Some(cpb::Customer {
                        id,
                        display_name: name.clone(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                };
                self.write(customers.update_customer(req(caller, request)), |r, p| {
                    p.same("display name", r.display_name, name)
                })
                .await
            }
            ListCustomers => outcome(
                customers
                    .list_customers(req(caller, cpb::ListCustomersRequest::default()))
                    .await,
                |r, p| {
                    let got: BTreeSet<String> = r.customers.into_iter().map(|c| c.id).collect();
                    let want: BTreeSet<String> = self.customer_of.values().cloned().collect();
                    p.same("customers", got, want);
                },
            ),
            DeleteCustomer(who) => {
                let id = match who.owner(caller) {
                    Some(owner) => self.make_customer(owner).await,
                    None => UNKNOWN.to_owned(),
                };
                let request = cpb::DeleteCustomerRequest {
                    request_id: String::new(),
                    id,
                    etag: String::new(),
                };
                self.write(customers.delete_customer(req(caller, request)), |r, p| {
                    p.check("the customer is archived", r.archived)
                })
                .await
            }
            // -------------------------------------------------------------- opportunities
            CreateOpportunity(who) => {
                let owner = match who {
                    Me => String::new(),
                    other => other.owner(caller).expect("an owner").id().to_owned(),
                };
                let want_owner = if owner.is_empty() {
                    caller.id().to_owned()
                } else {
                    owner.clone()
                };
                let request = opb::CreateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        customer_id: self.customer_of["a1"].clone(),
                        owner_id: owner,
                        title: "Created in the matrix".into(),
                        amount: Some(money("THB", 5_000, 0)),
                        ..Default::default()
                    }),
                    request_id: rid(),
                    note: String::new(),
                };
                self.write(
                    opportunities.create_opportunity(req(caller, request)),
                    |r, p| p.same("owner", r.owner_id, want_owner),
                )
                .await
            }
            GetOpportunity(who) => {
                let id = self.target(who, caller).map_or(UNKNOWN, |o| o.id.as_str());
                outcome(
                    opportunities
                        .get_opportunity(req(caller, opb::GetOpportunityRequest { id: id.into() }))
                        .await,
                    |r, p| p.same("opportunity id", r.id.as_str(), id),
                )
            }
            UpdateOpportunity(who) => {
                let id = match who.owner(caller) {
                    Some(owner) => self.make_opportunity(owner).await,
                    None => UNKNOWN.to_owned(),
                };
                let request = opb::UpdateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        id,
                        title: "Retitled".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["title"]),
                    ..Default::default()
                };
                self.write(
                    opportunities.update_opportunity(req(caller, request)),
                    |r, p| p.same("title", r.title.as_str(), "Retitled"),
                )
                .await
            }
            ReassignA1sTo(who) => {
                let id = self.make_opportunity(A1).await;
                let to = who.owner(caller).expect("an owner").id();
                let request = opb::UpdateOpportunityRequest {
                    opportunity: Some(opb::Opportunity {
                        id,
                        owner_id: to.into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["owner_id"]),
                    ..Default::default()
                };
                self.write(
                    opportunities.update_opportunity(req(caller, request)),
                    |r, p| p.same("owner", r.owner_id.as_str(), to),
                )
                .await
            }
            ChangeOpportunityStatus(who) => {
                let id = match who.owner(caller) {
                    Some(owner) => self.make_opportunity(owner).await,
                    None => UNKNOWN.to_owned(),
                };
                let request = opb::ChangeOpportunityStatusRequest {
                    opportunity_id: id,
                    status_id: QUOTATION.into(),
                    request_id: rid(),
                    ..Default::default()
                };
                self.write(
                    opportunities.change_opportunity_status(req(caller, request)),
                    |r, p| {
                        p.same(
                            "status",
                            r.opportunity.map(|o| o.status_id),
                            Some(QUOTATION.to_owned()),
                        );
                        p.check("a history entry", r.status_change.is_some());
                    },
                )
                .await
            }
            ListOpportunities => outcome(
                opportunities
                    .list_opportunities(req(caller, opb::ListOpportunitiesRequest::default()))
                    .await,
                |r, p| {
                    let got: BTreeSet<String> = r.opportunities.into_iter().map(|o| o.id).collect();
                    let want: BTreeSet<String> =
                        self.visible_to(caller).map(|o| o.id.clone()).collect();
                    p.same("opportunities", got, want);
                    p.check("one page", r.next_page_token.is_empty());
                },
            ),
            ListStatusHistory(who) => {
                let target = self.target(who, caller);
                let id = target.map_or(UNKNOWN, |o| o.id.as_str());
                outcome(
                    opportunities
                        .list_status_history(req(
                            caller,
                            opb::ListStatusHistoryRequest {
                                opportunity_id: id.into(),
                                ..Default::default()
                            },
                        ))
                        .await,
                    |r, p| {
                        let got: Vec<(String, String)> = r
                            .status_changes
                            .iter()
                            .map(|c| {
                                (
                                    c.opportunity_id.clone(),
                                    c.to_status
                                        .as_ref()
                                        .map(|s| s.id.clone())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect();
                        let want: Vec<(String, String)> = target
                            .map(|o| {
                                o.statuses
                                    .iter()
                                    .map(|s| (o.id.clone(), (*s).to_owned()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        p.same("history", got, want);
                    },
                )
            }
            GetPipelineSummary => outcome(
                opportunities
                    .get_pipeline_summary(req(caller, opb::GetPipelineSummaryRequest::default()))
                    .await,
                |r, p| {
                    let ids: Vec<&str> = r.by_status.iter().map(|s| s.status_id.as_str()).collect();
                    p.same("statuses", ids, SHIPPED_STATUSES.to_vec());
                    let mut by_status = Totals::new();
                    for s in &r.by_status {
                        add_totals(&mut by_status, vec![s.status_id.clone()], &s.totals);
                    }
                    p.same(
                        "totals by status",
                        by_status,
                        expected_totals(self.visible_to(caller), |o| {
                            vec![o.status().to_owned(), o.currency.to_owned()]
                        }),
                    );
                    let mut by_owner = Totals::new();
                    for s in &r.by_owner_status {
                        add_totals(
                            &mut by_owner,
                            vec![s.owner_id.clone(), s.status_id.clone()],
                            &s.totals,
                        );
                    }
                    p.same(
                        "totals by owner and status",
                        by_owner,
                        expected_totals(self.visible_to(caller), |o| {
                            vec![
                                o.owner.to_owned(),
                                o.status().to_owned(),
                                o.currency.to_owned(),
                            ]
                        }),
                    );
                },
            ),
            ListSalespeople => outcome(
                opportunities
                    .list_salespeople(req(caller, opb::ListSalespeopleRequest::default()))
                    .await,
                |r, p| {
                    let got: BTreeSet<String> = r.salespeople.into_iter().map(|s| s.id).collect();
                    let want: BTreeSet<String> = ["a1", "a2", "b1", "mgr-a", "mgr-b", "admin"]
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                    p.same("salespeople", got, want);
                },
            ),
            WatchOpportunityEvents => self.watch(caller).await,
            // -------------------------------------------------------------- gateway
            GetOpportunityWithHistory(who) => {
                let target = self.target(who, caller);
                let id = target.map_or(UNKNOWN, |o| o.id.as_str());
                outcome(
                    gateway
                        .get_opportunity_with_history(req(
                            caller,
                            gpb::GetOpportunityWithHistoryRequest {
                                opportunity_id: id.into(),
                                history_page_size: 0,
                            },
                        ))
                        .await,
                    |r, p| {
                        let Some(target) = target else {
                            p.check("no answer for an unknown id", false);
                            return;
                        };
                        p.same(
                            "opportunity",
                            r.opportunity.map(|o| o.id),
                            Some(target.id.clone()),
                        );
                        p.same(
                            "customer",
                            r.customer.map(|c| c.id),
                            Some(target.customer.clone()),
                        );
                        p.same(
                            "current status",
                            r.current_status.map(|s| s.id),
                            Some(target.status().to_owned()),
                        );
                        let history: Vec<String> = r
                            .status_history
                            .iter()
                            .map(|c| {
                                c.to_status
                                    .as_ref()
                                    .map(|s| s.id.clone())
                                    .unwrap_or_default()
                            })
                            .collect();
                        let want: Vec<String> =
                            target.statuses.iter().map(|s| (*s).to_owned()).collect();
                        p.same("history", history, want);
                    },
                )
            }
            GetCustomerOverview(who) => {
                let id = match who.owner(caller) {
                    Some(owner) => self.customer_of[owner.id()].clone(),
                    None => UNKNOWN.to_owned(),
                };
                outcome(
                    gateway
                        .get_customer_overview(req(
                            caller,
                            gpb::GetCustomerOverviewRequest {
                                customer_id: id.clone(),
                                ..Default::default()
                            },
                        ))
                        .await,
                    |r, p| {
                        p.same("customer", r.customer.map(|c| c.id), Some(id.clone()));
                        let visible = || self.visible_to(caller).filter(|o| o.customer == id);
                        let got: BTreeSet<String> =
                            r.opportunities.into_iter().map(|o| o.id).collect();
                        let want: BTreeSet<String> = visible().map(|o| o.id.clone()).collect();
                        p.same("opportunities", got, want);
                        let mut open = Totals::new();
                        add_totals(&mut open, Vec::new(), &r.pipeline_totals);
                        p.same(
                            "open totals",
                            open,
                            expected_totals(visible().filter(|o| is_open(o.status())), |o| {
                                vec![o.currency.to_owned()]
                            }),
                        );
                        let mut by_status = Totals::new();
                        for s in &r.pipeline_by_status {
                            add_totals(&mut by_status, vec![s.status_id.clone()], &s.totals);
                        }
                        p.same(
                            "totals by status",
                            by_status,
                            expected_totals(visible(), |o| {
                                vec![o.status().to_owned(), o.currency.to_owned()]
                            }),
                        );
                    },
                )
            }
            GetSalespersonPipeline(who) => {
                let person = who.owner(caller).map_or("nobody-known", Caller::id);
                let salesperson_id = if who == Me {
                    String::new()
                } else {
                    person.to_owned()
                };
                outcome(
                    gateway
                        .get_salesperson_pipeline(req(
                            caller,
                            gpb::GetSalespersonPipelineRequest {
                                salesperson_id,
                                ..Default::default()
                            },
                        ))
                        .await,
                    |r, p| {
                        p.same(
                            "salesperson",
                            r.salesperson.map(|s| s.id),
                            Some(person.to_owned()),
                        );
                        let theirs = || self.seeded.iter().filter(|o| o.owner == person);
                        let mut placed = BTreeSet::new();
                        let mut totals = Totals::new();
                        for stage in &r.stages {
                            let status = stage.status.as_ref().map(|s| s.id.clone());
                            for o in stage
                                .opportunities
                                .iter()
                                .filter_map(|o| o.opportunity.as_ref())
                            {
                                p.same(
                                    "stage of the opportunity",
                                    Some(o.status_id.clone()),
                                    status.clone(),
                                );
                                placed.insert(o.id.clone());
                            }
                            add_totals(
                                &mut totals,
                                vec![status.unwrap_or_default()],
                                &stage.totals,
                            );
                        }
                        let want: BTreeSet<String> = theirs().map(|o| o.id.clone()).collect();
                        p.same("opportunities", placed, want);
                        p.same(
                            "stage totals",
                            totals,
                            expected_totals(theirs(), |o| {
                                vec![o.status().to_owned(), o.currency.to_owned()]
                            }),
                        );
                    },
                )
            }
        }
    }

    /// Reads the stream until a heartbeat says it has read past every event written, and
    /// compares the events it sent with the visible ones: exactly, nothing waited out.
    async fn watch(&self, caller: Caller) -> Outcome {
        let mut want: BTreeMap<(String, i32), usize> = BTreeMap::new();
        for o in self.visible_to(caller) {
            *want
                .entry((o.id.clone(), opb::OpportunityEventType::Created as i32))
                .or_default() += 1;
            if o.statuses.len() > 1 {
                *want
                    .entry((
                        o.id.clone(),
                        opb::OpportunityEventType::StatusChanged as i32,
                    ))
                    .or_default() += 1;
            }
        }
        let mut stream = match self
            .opps
            .clone()
            .watch_opportunity_events(req(caller, opb::WatchOpportunityEventsRequest::default()))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return refused(&status),
        };
        // Every event written is placed (has its position) before the head is read.
        let head = placed_head(self.db()).await;
        let mut got: BTreeMap<(String, i32), usize> = BTreeMap::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Err(status)) => return refused(&status),
                Ok(Ok(Some(message))) => match message.kind {
                    Some(opb::watch_opportunity_events_response::Kind::Event(event)) => {
                        *got.entry((event.opportunity_id, event.r#type)).or_default() += 1;
                    }
                    Some(opb::watch_opportunity_events_response::Kind::Heartbeat(beat))
                        if salesopp_outbox::parse_cursor(&beat.cursor).unwrap_or(0) >= head =>
                    {
                        break;
                    }
                    Some(opb::watch_opportunity_events_response::Kind::Heartbeat(_)) | None => {}
                },
            }
        }
        let mut problems = Problems::default();
        problems.same("events (opportunity, type)", got, want);
        Outcome {
            code: Code::Ok,
            message: String::new(),
            problems: problems.0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------

fn short(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::PermissionDenied => "DENIED",
        Code::NotFound => "NOT_FOUND",
        Code::Unauthenticated => "UNAUTH",
        Code::InvalidArgument => "INVALID",
        Code::FailedPrecondition => "PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::AlreadyExists => "EXISTS",
        Code::Unavailable => "UNAVAILABLE",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}

/// The matrix as a Markdown table: the code seen, and `got X, want Y` where they differ.
fn render(rows: &[(Call, [Code; 11])], seen: &[[Option<Code>; 11]]) -> String {
    let mut lines = Vec::new();
    let header: Vec<String> = std::iter::once("call".to_owned())
        .chain(CALLERS.iter().map(|c| c.column().to_owned()))
        .collect();
    let mut table: Vec<Vec<String>> = vec![header];
    for ((call, expected), seen) in rows.iter().zip(seen) {
        let mut line = vec![call.label()];
        for (want, got) in expected.iter().zip(seen) {
            line.push(match got {
                Some(got) if got == want => short(*got).to_owned(),
                Some(got) => format!("got {}, want {}", short(*got), short(*want)),
                None => "not run".to_owned(),
            });
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| {
            table
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (index, line) in table.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        lines.push(format!("| {} |", cells.join(" | ")));
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            lines.push(format!("|-{}-|", rule.join("-|-")));
        }
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// R12 and "Identity": every caller against every call, as the table says.
#[tokio::test]
async fn r12_access_matrix() {
    let world = World::new().await;
    let rows = matrix();
    let mut seen = vec![[None; 11]; rows.len()];
    let mut failures = Vec::new();
    // Reads first, on the seed alone; then the writes, each on targets made for it.
    for writes in [false, true] {
        for (index, (call, expected)) in rows.iter().enumerate() {
            if call.is_write() != writes {
                continue;
            }
            for (column, caller) in CALLERS.iter().enumerate() {
                let outcome = world.run(*caller, *call).await;
                seen[index][column] = Some(outcome.code);
                if outcome.code != expected[column] {
                    failures.push(format!(
                        "{} by {}: got {:?} ({}), want {:?}",
                        call.label(),
                        caller.column(),
                        outcome.code,
                        outcome.message,
                        expected[column]
                    ));
                }
                for problem in outcome.problems {
                    failures.push(format!(
                        "{} by {}: {problem}",
                        call.label(),
                        caller.column()
                    ));
                }
            }
        }
    }
    println!(
        "\nOK: allowed; DENIED: PERMISSION_DENIED; NOT_FOUND; UNAUTH: UNAUTHENTICATED\n\n{}\n",
        render(&rows, &seen)
    );
    assert!(
        failures.is_empty(),
        "{} cells of the access matrix are wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Rules found by the matrix and enforced since: each with a test of its own
// ---------------------------------------------------------------------------------------

/// A customer is archived only by its owner, a manager of the owner's team, or an admin
/// (R12). Any sales role may change a customer, but giving it another owner is what decides
/// who may archive it, so it takes what archiving takes: otherwise a rep of another team
/// archives b1's customer in two calls (make it theirs, then archive it as its owner).
#[tokio::test]
async fn r12_customer_owner_change_takes_what_archiving_takes() {
    let world = World::new().await;
    let id = world.make_customer(B1).await;
    let mut customers = world.customers.clone();
    let before = world.snapshot().await;
    let take = customers
        .update_customer(req(
            A1,
            cpb::UpdateCustomerRequest {
                request_id: String::new(),
                customer: Some(cpb::Customer {
                    id: id.clone(),
                    owner_id: "a1".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["owner_id"]),
            },
        ))
        .await;
    let archive = customers
        .delete_customer(req(
            A1,
            cpb::DeleteCustomerRequest {
                request_id: String::new(),
                id: id.clone(),
                etag: String::new(),
            },
        ))
        .await;
    let take = take.map(|r| r.into_inner().owner_id);
    let archive = archive.map(|r| r.into_inner().archived);
    assert_eq!(
        take.as_ref().map_err(Status::code),
        Err(DENIED),
        "rep a1 made b1's customer theirs: {take:?}; then archiving it answered {archive:?}"
    );
    assert_eq!(archive.map_err(|s| s.code()), Err(DENIED));
    assert_eq!(
        before,
        world.snapshot().await,
        "the refused calls changed data"
    );
    // The rule's own cases still hold: b1's manager may give it to their team, the admin
    // to anyone.
    for (caller, owner) in [(MgrB, "mgr-b"), (Admin, "a1")] {
        let given = customers
            .update_customer(req(
                caller,
                cpb::UpdateCustomerRequest {
                    request_id: String::new(),
                    customer: Some(cpb::Customer {
                        id: id.clone(),
                        owner_id: owner.into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["owner_id"]),
                },
            ))
            .await
            .map(|r| r.into_inner().owner_id);
        assert_eq!(given.map_err(|s| s.code()), Ok(owner.to_owned()));
    }
}
