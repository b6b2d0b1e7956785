//! The real token server and sidecars on loopback, with four small
//! applications: frontend client → gateway →(share) orders →(exchange)
//! payments →(embed) ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod credentials;
mod dpop;
mod harness;
mod resource;
mod setup;
mod traces;
mod traffic;
