//! Bounded HTTP/1 and HTTP/2 listeners, shared by the token server and the
//! sidecar: slow and idle clients are cut off, the number of connections is
//! capped, and TLS certificates and client CA bundles are reloaded from
//! their files without a restart.

pub mod client_ca;
pub mod deadlines;
pub mod reload;
pub mod serve;
pub mod tls;

pub use serve::{Limits, serve};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
