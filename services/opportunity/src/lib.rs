//! `salesopp.opportunity.v1.OpportunityService`: opportunities, their status changes and
//! history, the pipeline views (DESIGN.md R1, R5-R14).
//!
//! - `domain`: validated values (money, dates, texts) and the visibility rule (R12).
//! - `store`: the SQL, over any executor; visibility rendered inside every query.
//! - `status_change`: the one implementation of a status change (R8, R9), also used by
//!   status deletion (R6).
//! - `events`: WatchOpportunityEvents over the outbox crate (`salesopp_outbox`): where a
//!   stream starts, its filters, heartbeats, the per-caller cap and shutdown.
//! - `stale`: the sweep that writes one STALE event per quiet stretch (R16).
//! - `service`: one function per call; opens the transactions.
//! - `batch`: the batch calls (R21), each item under its single call's rules, set-based.
//! - `convert`: protobuf <-> domain.
//! - `grpc`: the tonic trait, thin.

pub mod batch;
pub mod convert;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod service;
pub mod stale;
pub mod status_change;
pub mod store;
pub mod summary;

pub use grpc::Opportunities;
pub use salesopp_proto::opportunity::v1::opportunity_service_server::OpportunityServiceServer;

/// The fully qualified gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "salesopp.opportunity.v1.OpportunityService";
