//! The generated `agentkeeper.v1` wire types (and the cluster peers' `agentkeeper.peer.v1`), clients and servers.
//!
//! Architecture invariant: only `server/` (and tests and tools) use these types; the core never
//! sees a protobuf type. Conversions live in `server/convert.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("agentkeeper.v1");

/// Traffic between a cluster's nodes (internal: never served to clients).
pub mod peer {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("agentkeeper.peer.v1");
}

/// The encoded FileDescriptorSet of agentkeeper.proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agentkeeper_descriptor");
