//! Bounds on slow peers, shared with the token server (`tokenmesh_tokens::listen`).

pub use tokenmesh_tokens::listen::deadlines::{Stall, Stalled};
