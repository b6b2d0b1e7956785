//! The tokenmesh resources (API group `tokenmesh.dev`, version `v1alpha1`).
//!
//! One definition of each resource, read by `kubectl apply` through the
//! operator and by `token-server --config FILE` standalone.

mod client_id;
mod duration;
mod resources;
mod sign_in;

pub use client_id::{check_client_id, default_client_id};
pub use duration::{DurationError, parse_duration};
pub use resources::*;
pub use sign_in::*;

/// The API group of every tokenmesh resource.
pub const GROUP: &str = "tokenmesh.dev";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in a resource document.
pub const API_VERSION: &str = "tokenmesh.dev/v1alpha1";
