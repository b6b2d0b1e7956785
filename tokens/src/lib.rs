//! What the tokenmesh token server and sidecar share about tokens: the
//! access-token claims, the clock, JWT signing with keys parsed once, JWT verification
//! against a key set, JSON Web Keys, secret hashing, the bounded set of
//! revoked ids, what counts as a loopback host, the scope-list parser, and
//! durations as resources and flags write them, and the one bounded cache.
//! With the `remote` feature, the cache's single flight and the key set
//! fetched from elsewhere (module `keyset`); with `listen`, the bounded HTTP
//! listeners both servers run; with `runtime`, what every binary starts
//! with: the log, optional OpenTelemetry trace export, the shutdown drain,
//! `spawn` with a span, and the W3C trace context.

pub mod authorization;
pub mod cache;
pub mod claims;
pub mod clock;
pub mod dpop;
pub mod duration;
pub mod jwk;
#[cfg(feature = "remote")]
pub mod keyset;
#[cfg(feature = "listen")]
pub mod listen;
pub mod net;
pub mod opaque;
pub mod revoked;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod scope;
pub mod secret;
pub mod signing;
pub mod verify;

pub use jsonwebtoken::Algorithm;
