//! What the tokenmesh token server and sidecar share about tokens: the
//! access-token claims, JWT signing with keys parsed once, JWT verification
//! against a key set, JSON Web Keys, and secret hashing.

pub mod cache;
pub mod claims;
pub mod jwk;
pub mod secret;
pub mod signing;
pub mod verify;

pub use jsonwebtoken::Algorithm;
