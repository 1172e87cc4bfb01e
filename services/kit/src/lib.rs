//! What every salesopp service shares: configuration, telemetry (logs, OTLP traces, a span
//! per call), the Postgres pool and the schema check, identity (JWT), the one error type
//! mapped to `tonic::Status`, idempotency records, page tokens, and [`serve`] with health,
//! reflection and graceful shutdown.

pub mod auth;
pub mod batch;
pub mod config;
pub mod db;
pub mod error;
pub mod handle;
pub mod idempotency;
pub mod identity;
pub mod ids;
pub mod metrics;
pub mod paging;
pub mod people;
pub mod serve;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod trace;
pub mod visibility;
pub mod vocabulary;

pub use auth::Authenticator;
pub use error::{ApiError, ApiResult, FieldViolations};
pub use idempotency::Retry;
pub use identity::{Admin, Principal, Role, Sales};
pub use paging::{Page, PageRequest};
pub use serve::{ServeOptions, serve};
pub use visibility::Visibility;
pub use vocabulary::{OpportunityState, StatusKind};
