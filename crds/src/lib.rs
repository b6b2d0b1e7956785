//! The tokenmesh resources (API group `tokenmesh.dev`, version `v1alpha1`).
//!
//! One definition of each resource, read by `kubectl apply` through the
//! operator and by `token-server --config FILE` standalone.

mod duration;
mod resources;

pub use duration::{DurationError, parse_duration};
pub use resources::*;

/// The API group of every tokenmesh resource.
pub const GROUP: &str = "tokenmesh.dev";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in a resource document.
pub const API_VERSION: &str = "tokenmesh.dev/v1alpha1";
