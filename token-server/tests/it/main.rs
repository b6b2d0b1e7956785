//! Integration tests: the real `token-server` binary on an ephemeral port,
//! driven over HTTP. One test binary (every file in tests/ links separately).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dpop;
mod durability;
mod examples;
mod exchange;
mod federation;
mod grpc;
mod harness;
mod in_process;
mod limits;
mod mtls;
mod oauth;
mod replicas;
mod service_accounts;
mod sign_in;
mod startup;
mod tls;
mod upstream;
