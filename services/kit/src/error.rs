//! The one error type of the suite and its single mapping to `tonic::Status`, with
//! `google.rpc` details: `BadRequest` field violations, `PreconditionFailure`, `ErrorInfo`.
//!
//! Internal causes are logged here with their cause and answered with a generic message, so
//! no SQL, stack or secret reaches a client.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `ErrorInfo.domain` of errors raised outside any service's call (see [`with_domain`]).
pub const ERROR_DOMAIN: &str = "salesopp.io";

tokio::task_local! {
    /// The `ErrorInfo.domain` of the call being served: its service's name.
    static DOMAIN: &'static str;
}

/// Runs `call` with `domain` as the `ErrorInfo.domain` of every error it answers.
pub async fn with_domain<F: std::future::Future>(domain: &'static str, call: F) -> F::Output {
    DOMAIN.scope(domain, call).await
}

/// The error domain of a gRPC service: `salesopp.opportunity.v1.OpportunityService` is
/// `opportunity.salesopp.io` (AIP-193: the service's name, DNS-like), the same domain the
/// codec's input check answers with ([`salesopp_proto::codec::domain_of_package`]).
pub fn domain_of_service(service: &str) -> &'static str {
    let package = service.rsplit_once('.').map_or("", |(package, _)| package);
    salesopp_proto::codec::domain_of_package(package)
}

/// The domain errors are answered with right now.
pub fn current_domain() -> &'static str {
    DOMAIN.try_with(|domain| *domain).unwrap_or(ERROR_DOMAIN)
}

/// How long a client should wait before retrying an `UNAVAILABLE` or `ABORTED` answer.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

macro_rules! reasons {
    ($($variant:ident = $name:literal, $code:ident, $when:literal, $action:literal;)*) => {
        /// Every `ErrorInfo.reason` the suite answers: one per rule or situation, each with
        /// its gRPC code, when it happens and what a client should do. The README's error
        /// table is this table (a test keeps them equal).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason { $($variant,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            pub fn code(self) -> Code {
                match self { $(Reason::$variant => Code::$code,)* }
            }

            /// When a call answers it.
            pub fn when(self) -> &'static str {
                match self { $(Reason::$variant => $when,)* }
            }

            /// What the client should do.
            pub fn action(self) -> &'static str {
                match self { $(Reason::$variant => $action,)* }
            }

            pub fn parse(name: &str) -> Option<Reason> {
                match name { $($name => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    InvalidField = "INVALID_FIELD", InvalidArgument,
        "a request field is missing, malformed, too long or out of range; `BadRequest` names each field (`request_id` when the id was used for a different request)",
        "fix the named fields; retrying the same request fails the same way";
    MalformedRequest = "MALFORMED_REQUEST", InvalidArgument,
        "the request bytes do not decode as the call's message (e.g. invalid UTF-8 in a string)",
        "fix the client's encoding";
    TokenMissing = "TOKEN_MISSING", Unauthenticated,
        "no `authorization: Bearer <JWT>` metadata, or not a bearer token",
        "send a token";
    TokenInvalid = "TOKEN_INVALID", Unauthenticated,
        "the token is expired, not yet valid, badly signed, for another audience or issuer, or lacks `sub`",
        "get a new token from the identity provider";
    RoleRequired = "ROLE_REQUIRED", PermissionDenied,
        "the caller's roles do not allow the call (no sales role, or an admin-only call)",
        "use an identity with the role; retrying does not help";
    OutOfScope = "OUT_OF_SCOPE", PermissionDenied,
        "the opportunity or customer is not the caller's to see or change (R12), or does not exist (AIP-211)",
        "act within your own or your team's opportunities";
    OpportunityNotFound = "OPPORTUNITY_NOT_FOUND", NotFound,
        "no opportunity has the id (answered to admins; others get OUT_OF_SCOPE)",
        "check the id";
    CustomerNotFound = "CUSTOMER_NOT_FOUND", NotFound,
        "no customer has the id",
        "check the id";
    StatusNotFound = "STATUS_NOT_FOUND", NotFound,
        "no status has the id",
        "check the id";
    SalespersonNotFound = "SALESPERSON_NOT_FOUND", NotFound,
        "no salesperson with the id has used the suite yet",
        "check the id; salespeople appear after their first call";
    CustomerCodeTaken = "CUSTOMER_CODE_TAKEN", AlreadyExists,
        "another customer (archived ones included) has the code, ignoring case",
        "choose another code, or use the existing customer";
    StatusNameTaken = "STATUS_NAME_TAKEN", AlreadyExists,
        "another live status has the display name, ignoring case",
        "choose another name";
    CustomerArchived = "CUSTOMER_ARCHIVED", FailedPrecondition,
        "the customer is archived and takes no new opportunities (R1)",
        "use a live customer";
    CustomerHasOpenOpportunities = "CUSTOMER_HAS_OPEN_OPPORTUNITIES", FailedPrecondition,
        "a customer with open opportunities cannot be archived",
        "close or move its open opportunities first";
    StatusArchived = "STATUS_ARCHIVED", FailedPrecondition,
        "the status is archived (R6): it takes no opportunities and cannot be the default",
        "choose a live status";
    StatusInUse = "STATUS_IN_USE", FailedPrecondition,
        "opportunities sit in the status being deleted and no replacement was named (R6)",
        "send `replacement_status_id`";
    StatusIsDefault = "STATUS_IS_DEFAULT", FailedPrecondition,
        "the default status cannot be deleted (R4, R6)",
        "make another status the default first";
    StatusClosing = "STATUS_CLOSING", FailedPrecondition,
        "the WON and LOST statuses are never deleted and never change kind or probability (R3)",
        "rename them instead";
    StatusNeverErased = "STATUS_NEVER_ERASED", FailedPrecondition,
        "a status row cannot be erased: DeleteStatus archives it, so history still resolves it (R6)",
        "call DeleteStatus";
    StatusKindImmutable = "STATUS_KIND_IMMUTABLE", FailedPrecondition,
        "a status's kind (OPEN, WON, LOST) never changes (R3)",
        "create a new status of the other kind";
    StatusNotOpen = "STATUS_NOT_OPEN", FailedPrecondition,
        "only an OPEN status can be the default (R4)",
        "choose an OPEN status";
    DefaultStatusRequired = "DEFAULT_STATUS_REQUIRED", FailedPrecondition,
        "exactly one live OPEN status must be the default at the end of every change (R4)",
        "set another default in the same change";
    HistoryAppendOnly = "HISTORY_APPEND_ONLY", FailedPrecondition,
        "status history is never edited or deleted (R9)",
        "history cannot change: record a new status change instead";
    HistoryChainBroken = "HISTORY_CHAIN_BROKEN", FailedPrecondition,
        "a status change must start from the status the previous change ended in (R10)",
        "read the opportunity again and retry";
    CustomerImmutable = "CUSTOMER_IMMUTABLE", FailedPrecondition,
        "an opportunity's customer never changes",
        "create a new opportunity for the other customer";
    EtagMismatch = "ETAG_MISMATCH", Aborted,
        "the `etag` sent is not the resource's current one: it changed since it was read (R10)",
        "read it again, re-apply the change, retry with the new etag";
    ConcurrentChange = "CONCURRENT_CHANGE", Aborted,
        "a concurrent transaction conflicted with this one (serialization failure or deadlock); nothing was written",
        "retry after the RetryInfo delay";
    CursorExpired = "CURSOR_EXPIRED", OutOfRange,
        "the stream's cursor or `start_time` is older than the retained events (`SALESOPP_EVENT_RETENTION`); metadata `oldest_cursor` is where the kept events begin",
        "resume from `oldest_cursor` (and reconcile what was missed from the resources themselves)";
    TooManyStreams = "TOO_MANY_STREAMS", ResourceExhausted,
        "the caller already holds the most open event streams one server allows (`SALESOPP_EVENT_STREAMS_PER_CALLER`)",
        "close a stream, or share one stream between consumers";
    ServerStopping = "SERVER_STOPPING", Unavailable,
        "the server is shutting down and ended the open stream",
        "reconnect (another replica answers) with the last cursor received";
    DatabaseUnavailable = "DATABASE_UNAVAILABLE", Unavailable,
        "the service cannot reach its database (restart, failover, connection limit); nothing was written",
        "retry after the RetryInfo delay, with the same request_id";
    DownstreamUnavailable = "DOWNSTREAM_UNAVAILABLE", Unavailable,
        "the gateway cannot reach one of the services it composes (metadata `part` names it)",
        "retry after the RetryInfo delay";
    DeadlineExceeded = "DEADLINE_EXCEEDED", DeadlineExceeded,
        "the call's deadline passed before it finished; a write may or may not have committed",
        "retry with the same request_id: a committed write is replayed, not repeated";
    InternalError = "INTERNAL_ERROR", Internal,
        "a bug: the cause is logged on the server, never sent",
        "report it with the time and method";
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The README's error table: one row per reason.
pub fn reasons_markdown() -> String {
    let mut table =
        String::from("| code | reason | when | what the client should do |\n|---|---|---|---|\n");
    for reason in Reason::ALL {
        table.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            code_name(reason.code()),
            reason.as_str(),
            reason.when(),
            reason.action()
        ));
    }
    table
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// One field's problem: the request field's path (e.g. `status.probability`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects every problem of a request, so a client learns of all of them in one answer.
#[derive(Debug, Default, Clone)]
pub struct FieldViolations(Vec<FieldViolation>);

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was added, else the `INVALID_ARGUMENT` error holding them all.
    pub fn into_result(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }

    /// Records the violation of `result` (if any) and gives back its value.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: one violation per offending field.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{message}")]
    AlreadyExists {
        reason: Reason,
        resource: &'static str,
        field: &'static str,
        message: String,
    },
    /// The system is not in a state that allows the call; `reason` names the rule,
    /// `subject` what it is about.
    #[error("{description}")]
    FailedPrecondition {
        reason: Reason,
        subject: String,
        description: String,
    },
    /// The `etag` precondition does not hold, or a concurrent change won: read again, retry.
    #[error("{message}")]
    Aborted { reason: Reason, message: String },
    #[error("{message}")]
    PermissionDenied { reason: Reason, message: String },
    #[error("{message}")]
    Unauthenticated { reason: Reason, message: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = FieldViolations::new();
        violations.add(field, description);
        Self::InvalidArgument(violations.0)
    }

    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            resource,
            id: id.into(),
        }
    }

    pub fn failed_precondition(
        reason: Reason,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::FailedPrecondition {
            reason,
            subject: subject.into(),
            description: description.into(),
        }
    }

    /// The caller's roles do not allow the call.
    pub fn role_required(message: impl Into<String>) -> Self {
        Self::PermissionDenied {
            reason: Reason::RoleRequired,
            message: message.into(),
        }
    }

    /// The resource is not the caller's to see or change (R12).
    pub fn out_of_scope(message: impl Into<String>) -> Self {
        Self::PermissionDenied {
            reason: Reason::OutOfScope,
            message: message.into(),
        }
    }

    pub fn token_missing(message: impl Into<String>) -> Self {
        Self::Unauthenticated {
            reason: Reason::TokenMissing,
            message: message.into(),
        }
    }

    pub fn token_invalid(message: impl Into<String>) -> Self {
        Self::Unauthenticated {
            reason: Reason::TokenInvalid,
            message: message.into(),
        }
    }

    pub fn stale_etag(resource: &'static str) -> Self {
        Self::Aborted {
            reason: Reason::EtagMismatch,
            message: format!("the {resource} changed since it was read: read it again and retry"),
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// The violations, when this is `InvalidArgument` (for tests and callers that merge them).
    pub fn field_violations(&self) -> &[FieldViolation] {
        match self {
            Self::InvalidArgument(violations) => violations,
            _ => &[],
        }
    }

    /// The reason this error answers with.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidArgument(_) => Reason::InvalidField,
            Self::NotFound { resource, .. } => not_found_reason(resource),
            Self::AlreadyExists { reason, .. }
            | Self::FailedPrecondition { reason, .. }
            | Self::Aborted { reason, .. }
            | Self::PermissionDenied { reason, .. }
            | Self::Unauthenticated { reason, .. } => *reason,
            Self::Unavailable(_) => Reason::DatabaseUnavailable,
            Self::Internal(_) => Reason::InternalError,
        }
    }
}

fn not_found_reason(resource: &str) -> Reason {
    match resource {
        "opportunity" => Reason::OpportunityNotFound,
        "customer" => Reason::CustomerNotFound,
        "status" => Reason::StatusNotFound,
        _ => Reason::SalespersonNotFound,
    }
}

/// The `ErrorInfo` of `reason` in the current call's domain.
pub fn error_info(reason: Reason, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason.as_str(), current_domain(), metadata)
}

/// Longest message an error answers with, in characters: a message may quote the input, and
/// HTTP/2 peers refuse response headers past a few kilobytes (16 KiB by default in tonic).
pub const MAX_MESSAGE_CHARS: usize = 500;
/// Most field violations answered; past it the last one says how many more there were.
pub const MAX_VIOLATIONS: usize = 20;
/// Longest field path or description of one violation, in characters.
const MAX_VIOLATION_CHARS: usize = 200;

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// A status of `reason`'s code with its `ErrorInfo` (and `RetryInfo` when retrying helps).
pub fn status(
    reason: Reason,
    message: impl Into<String>,
    mut details: ErrorDetails,
) -> tonic::Status {
    let message = clip(&message.into(), MAX_MESSAGE_CHARS);
    if matches!(reason.code(), Code::Unavailable | Code::Aborted) && reason != Reason::EtagMismatch
    {
        details.set_retry_info(Some(RETRY_DELAY));
    }
    tonic::Status::with_error_details(reason.code(), message, details)
}

/// INVALID_ARGUMENT with one BadRequest violation per field (at most [`MAX_VIOLATIONS`],
/// then one saying how many more), the message their summary.
fn bad_request(reason: Reason, mut violations: Vec<FieldViolation>) -> tonic::Status {
    let mut details = error_info(reason, HashMap::new());
    let more = violations.len().saturating_sub(MAX_VIOLATIONS);
    violations.truncate(MAX_VIOLATIONS);
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    for violation in violations {
        details.add_bad_request_violation(
            clip(&violation.field, MAX_VIOLATION_CHARS),
            clip(&violation.description, MAX_VIOLATION_CHARS),
        );
    }
    if more > 0 {
        details.add_bad_request_violation("", format!("and {more} more violations, not listed"));
    }
    status(reason, summary, details)
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let reason = error.reason();
        match error {
            ApiError::InvalidArgument(violations) => bad_request(reason, violations),
            ApiError::NotFound { resource, id } => {
                let id = clip(&id, MAX_VIOLATION_CHARS);
                let mut details = error_info(
                    reason,
                    HashMap::from([("resource".to_owned(), resource.to_owned())]),
                );
                details.set_resource_info(resource, id.clone(), "", "");
                status(reason, format!("{resource} {id:?} not found"), details)
            }
            ApiError::AlreadyExists {
                resource,
                field,
                message,
                ..
            } => status(
                reason,
                message,
                error_info(
                    reason,
                    HashMap::from([
                        ("resource".to_owned(), resource.to_owned()),
                        ("field".to_owned(), field.to_owned()),
                    ]),
                ),
            ),
            ApiError::FailedPrecondition {
                subject,
                description,
                ..
            } => {
                let mut details = error_info(reason, HashMap::new());
                details.add_precondition_failure_violation(
                    reason.as_str(),
                    clip(&subject, MAX_VIOLATION_CHARS),
                    clip(&description, MAX_MESSAGE_CHARS),
                );
                status(reason, description, details)
            }
            ApiError::Aborted { message, .. }
            | ApiError::PermissionDenied { message, .. }
            | ApiError::Unauthenticated { message, .. } => {
                status(reason, message, error_info(reason, HashMap::new()))
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "answering UNAVAILABLE");
                status(
                    reason,
                    "the service cannot reach its database: retry later",
                    error_info(reason, HashMap::new()),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                status(reason, "internal error", error_info(reason, HashMap::new()))
            }
        }
    }
}

/// SQLSTATE of the schema's own rule violations (`salesopp_violation` in the migrations);
/// the error's constraint name is the rule's [`Reason`].
const SCHEMA_RULE_VIOLATION: &str = "SO001";

/// What a SQLSTATE means to a client: the one table from database errors to answers.
fn classify(sqlstate: &str) -> Option<ApiError> {
    let class = sqlstate.get(..2).unwrap_or_default();
    match (class, sqlstate) {
        // Serialization failure and deadlock: a concurrent change won; safe to retry.
        (_, "40001" | "40P01") => Some(ApiError::Aborted {
            reason: Reason::ConcurrentChange,
            message: "a concurrent change conflicted with this one: retry".to_owned(),
        }),
        // Connection exceptions; admin, crash and cannot-connect-now shutdowns (a restart,
        // a failover); too many connections; out of memory or disk; the server's own
        // statement or idle timeouts; a read-only standby after a failover.
        ("08", _)
        | (_, "57P01" | "57P02" | "57P03" | "57P05" | "53000" | "53100" | "53200" | "53300")
        | (_, "53400" | "25006" | "57014" | "25P03") => Some(ApiError::Unavailable(format!(
            "database answered SQLSTATE {sqlstate}"
        ))),
        _ => None,
    }
}

/// The error a schema rule (`SO001`) answers: its reason is the constraint name it raised.
fn schema_rule(constraint: Option<&str>, message: &str) -> ApiError {
    match constraint.and_then(Reason::parse) {
        Some(reason) if reason.code() == Code::FailedPrecondition => {
            ApiError::failed_precondition(reason, "", message.to_owned())
        }
        _ => ApiError::Internal(format!(
            "schema rule {constraint:?} without a known reason: {message}"
        )),
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) => {
                let code = db.code();
                match code.as_deref() {
                    Some(SCHEMA_RULE_VIOLATION) => schema_rule(db.constraint(), db.message()),
                    Some(sqlstate) => classify(sqlstate).unwrap_or_else(|| {
                        // Unique and foreign-key violations the services did not expect
                        // are bugs: each service maps the constraints it knows first.
                        Self::Internal(format!(
                            "database error {sqlstate} on constraint {:?}: {}",
                            db.constraint(),
                            db.message()
                        ))
                    }),
                    None => Self::Internal(db.message().to_owned()),
                }
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error.to_string()),
            _ => Self::Internal(error.to_string()),
        }
    }
}

/// The constraint a database error names, for services to map their own constraints.
pub fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// The paths an update applies (AIP-134): the mask's paths; `*` for every path in
/// `mutable`; no mask for every path whose field the request sets (`set`: path, is set).
/// Problems with the mask itself are added to `violations`.
pub fn update_paths(
    mask: Option<&prost_types::FieldMask>,
    mutable: &[&str],
    set: &[(&str, bool)],
    violations: &mut FieldViolations,
) -> Vec<String> {
    let paths: Vec<String> = mask.map(|m| m.paths.clone()).unwrap_or_default();
    if paths.iter().any(|p| p == "*") {
        if paths.len() > 1 {
            violations.add("update_mask", "\"*\" cannot be combined with other paths");
        }
        return mutable.iter().map(|p| (*p).to_owned()).collect();
    }
    if !paths.is_empty() {
        return paths;
    }
    let implied: Vec<String> = set
        .iter()
        .filter(|(_, is_set)| *is_set)
        .map(|(path, _)| (*path).to_owned())
        .collect();
    if implied.is_empty() {
        violations.add(
            "update_mask",
            "nothing to update: set update_mask or the fields to change",
        );
    }
    implied
}
