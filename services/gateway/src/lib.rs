//! `salesopp.gateway.v1.GatewayService`: combined read calls for screens, composed from the
//! customer, opportunity and status-config services over gRPC. The gateway has no database:
//! it forwards the caller's token, deadline and trace context, so every rule and error of the
//! underlying calls applies unchanged, and it runs independent calls concurrently.
//!
//! - `balance`: every ready instance of each service, watched, called round-robin.
//! - `forward`: what each downstream call carries from the caller's call.
//! - `compose`: the three combined calls.
//! - `grpc`: the tonic trait, thin.

pub mod balance;
pub mod compose;
pub mod forward;
pub mod grpc;

pub use grpc::Gateway;
pub use salesopp_proto::gateway::v1::gateway_service_server::GatewayServiceServer;

/// The fully qualified gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "salesopp.gateway.v1.GatewayService";
