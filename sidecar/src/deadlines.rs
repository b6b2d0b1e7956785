//! Bounds on slow peers, shared with the token server (`tokenmesh-listen`).

pub use tokenmesh_listen::deadlines::{Stall, Stalled};
