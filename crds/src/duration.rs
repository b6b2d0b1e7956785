//! Durations as Kubernetes users write them: one parser, in the tokens crate,
//! for resources and for the binaries' flags alike.

pub use tokenmesh_tokens::duration::{DURATION_PATTERN, DurationError, parse_duration};
