//! Generates the client and server code and the descriptor sets that server
//! reflection publishes. The protos are compiled by `protox`, a protobuf
//! compiler in Rust, so building needs nothing beyond cargo (no `protoc`).

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    generate(
        &["tokenmesh/v1/token.proto", "tokenmesh/v1/control.proto"],
        &out.join("tokenmesh_v1_descriptor.bin"),
    )?;
    generate(
        &["tokenmesh/envoy/auth_v3.proto"],
        &out.join("envoy_auth_v3_descriptor.bin"),
    )?;
    Ok(())
}

/// Compiles `files`, writes their descriptor set to `descriptors` for
/// reflection, and generates the Rust code from the same set.
fn generate(files: &[&str], descriptors: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let set = protox::compile(files, ["."])?;
    std::fs::write(descriptors, set.encode_to_vec())?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure().compile_fds(set)?;
    Ok(())
}
