//! The salesopp gRPC contracts (`proto/salesopp/**`), generated at build time.
//!
//! One module per protobuf package; [`FILE_DESCRIPTOR_SET`] is what reflection serves.
//! Every generated service and client uses [`codec::CheckedCodec`], so each request passes
//! [`input::check`] before a handler sees it.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod codec;
pub mod input;

/// The encoded `google.protobuf.FileDescriptorSet` of every salesopp proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/salesopp_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("salesopp.common.v1");
    }
}

pub mod statusconfig {
    pub mod v1 {
        tonic::include_proto!("salesopp.statusconfig.v1");
    }
}

pub mod customer {
    pub mod v1 {
        tonic::include_proto!("salesopp.customer.v1");
    }
}

pub mod opportunity {
    pub mod v1 {
        tonic::include_proto!("salesopp.opportunity.v1");
    }
}

pub mod gateway {
    pub mod v1 {
        tonic::include_proto!("salesopp.gateway.v1");
    }
}
