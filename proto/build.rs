//! Generates the client and server code and the descriptor sets that server
//! reflection publishes. Needs `protoc` (Debian: protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tokenmesh_v1_descriptor.bin"))
        .compile_protos(
            &["tokenmesh/v1/token.proto", "tokenmesh/v1/control.proto"],
            &["."],
        )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("envoy_auth_v3_descriptor.bin"))
        .compile_protos(&["tokenmesh/envoy/auth_v3.proto"], &["."])?;
    Ok(())
}
