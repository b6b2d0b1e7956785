//! The tokenmesh gRPC API, generated from `proto/tokenmesh/v1/*.proto`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("tokenmesh.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tokenmesh_v1_descriptor");
}
