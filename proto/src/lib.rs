//! The tokenmesh gRPC API, generated from `proto/tokenmesh/v1/*.proto`,
//! and the connection wrapper both gRPC servers use.

pub mod one_write;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tokenmesh.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tokenmesh_v1_descriptor");
}

/// The subset of Envoy's `envoy.service.auth.v3` the sidecar serves.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod envoy_auth_v3 {
    tonic::include_proto!("envoy.service.auth.v3");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("envoy_auth_v3_descriptor");
}
