//! `salesopp.statusconfig.v1.StatusConfigService`: the configurable stages of the sales
//! pipeline and their win probabilities (DESIGN.md R2-R7).
//!
//! - `domain`: validated values and the rules that need no database (R3 probabilities).
//! - `store`: the SQL, over any executor.
//! - `service`: one function per call; opens the transactions.
//! - `convert`: protobuf <-> domain.
//! - `grpc`: the tonic trait, thin.

pub mod convert;
pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

pub use grpc::StatusConfig;
pub use salesopp_proto::statusconfig::v1::status_config_service_server::StatusConfigServiceServer;

/// The fully qualified gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "salesopp.statusconfig.v1.StatusConfigService";
