//! End-to-end tests live in `mesh/`; this crate has no library code.
