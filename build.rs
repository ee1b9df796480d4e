//! Compiles proto/agentkeeper/v1/agentkeeper.proto with protox (pure Rust, no system protoc) and
//! generates the prost messages plus tonic clients and servers. The encoded descriptor set is
//! kept in OUT_DIR too, for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/agentkeeper/v1/agentkeeper.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("agentkeeper_descriptor.bin"), encoded)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
