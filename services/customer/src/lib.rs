//! `salesopp.customer.v1.CustomerService`: the shared customer directory that every
//! opportunity belongs to (DESIGN.md R1), searchable in Thai and English (R13), readable by
//! every sales role (R12).
//!
//! - `domain`: validated values (names, codes, E.164 phones, Thai tax ids).
//! - `store`: the SQL, over any executor.
//! - `service`: one function per call; opens the transactions.
//! - `convert`: protobuf <-> domain.
//! - `grpc`: the tonic trait, thin.

pub mod convert;
pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

pub use grpc::Customers;
pub use salesopp_proto::customer::v1::customer_service_server::CustomerServiceServer;

/// The fully qualified gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "salesopp.customer.v1.CustomerService";
