//! What the tokenmesh token server and sidecar share about tokens: the
//! access-token claims, JWT signing with keys parsed once, JWT verification
//! against a key set, JSON Web Keys, secret hashing, the bounded set of
//! revoked ids, and what counts as a loopback host.

pub mod cache;
pub mod claims;
pub mod jwk;
pub mod net;
pub mod revoked;
pub mod secret;
pub mod signing;
pub mod verify;

pub use jsonwebtoken::Algorithm;
