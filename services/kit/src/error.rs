//! The one error type of the suite and its single mapping to `tonic::Status`, with
//! `google.rpc` details: `BadRequest` field violations, `PreconditionFailure`, `ErrorInfo`.
//!
//! Internal causes are logged here with their cause and answered with a generic message, so
//! no SQL, stack or secret reaches a client.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `ErrorInfo.domain` of every error the suite answers.
pub const ERROR_DOMAIN: &str = "salesopp";

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
        resource: &'static str,
        field: &'static str,
        message: String,
    },
    /// The system is not in a state that allows the call; `kind` is the violation type
    /// (e.g. `STATUS_IN_USE`), `subject` what it is about.
    #[error("{description}")]
    FailedPrecondition {
        kind: &'static str,
        subject: String,
        description: String,
    },
    /// The `etag` precondition does not hold, or a concurrent change won: read again, retry.
    #[error("{message}")]
    Aborted {
        reason: &'static str,
        message: String,
    },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
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
        kind: &'static str,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::FailedPrecondition {
            kind,
            subject: subject.into(),
            description: description.into(),
        }
    }

    pub fn stale_etag(resource: &'static str) -> Self {
        Self::Aborted {
            reason: "ETAG_MISMATCH",
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
}

fn info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                let mut details = info("INVALID_ARGUMENT", HashMap::new());
                let summary = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                tonic::Status::with_error_details(Code::InvalidArgument, summary, details)
            }
            ApiError::NotFound { resource, id } => {
                let mut details = info(
                    "NOT_FOUND",
                    HashMap::from([("resource".to_owned(), resource.to_owned())]),
                );
                details.set_resource_info(resource, id.clone(), "", "");
                tonic::Status::with_error_details(
                    Code::NotFound,
                    format!("{resource} {id:?} not found"),
                    details,
                )
            }
            ApiError::AlreadyExists {
                resource,
                field,
                message,
            } => tonic::Status::with_error_details(
                Code::AlreadyExists,
                message,
                info(
                    "ALREADY_EXISTS",
                    HashMap::from([
                        ("resource".to_owned(), resource.to_owned()),
                        ("field".to_owned(), field.to_owned()),
                    ]),
                ),
            ),
            ApiError::FailedPrecondition {
                kind,
                subject,
                description,
            } => {
                let mut details = info(kind, HashMap::new());
                details.add_precondition_failure_violation(kind, subject, description.clone());
                tonic::Status::with_error_details(Code::FailedPrecondition, description, details)
            }
            ApiError::Aborted { reason, message } => tonic::Status::with_error_details(
                Code::Aborted,
                message,
                info(reason, HashMap::new()),
            ),
            ApiError::PermissionDenied(message) => tonic::Status::with_error_details(
                Code::PermissionDenied,
                message,
                info("PERMISSION_DENIED", HashMap::new()),
            ),
            ApiError::Unauthenticated(message) => tonic::Status::with_error_details(
                Code::Unauthenticated,
                message,
                info("UNAUTHENTICATED", HashMap::new()),
            ),
            ApiError::Unavailable(message) => {
                tracing::warn!(error = %message, "answering UNAVAILABLE");
                tonic::Status::with_error_details(
                    Code::Unavailable,
                    "the service cannot reach its database: retry later",
                    info("DATABASE_UNAVAILABLE", HashMap::new()),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// SQLSTATE of the schema's own rule violations (`salesopp_violation` in the migration).
const SCHEMA_RULE_VIOLATION: &str = "SO001";

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(SCHEMA_RULE_VIOLATION) => {
                    Self::failed_precondition("SCHEMA_RULE", "", db.message().to_owned())
                }
                // Serialization failure and deadlock: a concurrent change won; safe to retry.
                Some("40001") | Some("40P01") => Self::Aborted {
                    reason: "CONCURRENT_CHANGE",
                    message: "a concurrent change conflicted with this one: retry".to_owned(),
                },
                // Unique and foreign-key violations the services did not expect are bugs:
                // each service maps the constraints it knows before this fallback.
                _ => Self::Internal(format!(
                    "database error {:?} on constraint {:?}: {}",
                    db.code(),
                    db.constraint(),
                    db.message()
                )),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
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
