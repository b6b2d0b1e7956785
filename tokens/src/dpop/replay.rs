//! A bounded in-memory memory of DPoP proofs seen, for a resource server
//! (the sidecar) that checks proofs without a shared store. A proof is
//! remembered until its `iat` window closes; when the memory is full of
//! proofs still in their window, new proofs are refused rather than an
//! old one forgotten (which would let it be replayed).

use std::{collections::HashMap, sync::Mutex};

use super::Proof;

#[derive(Debug)]
pub struct ReplayWindow {
    capacity: usize,
    /// (jkt, jti) → unix seconds until which a replay could be accepted.
    seen: Mutex<HashMap<(String, String), u64>>,
}

/// Why a proof was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The same key's proof with this `jti` came before.
    Seen,
    /// Too many proofs in their window to remember one more.
    Full,
}

impl ReplayWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `proof` the first time it is seen at `now`; remembers it until
    /// `until` (unix seconds).
    pub fn use_once(&self, proof: &Proof, until: u64, now: u64) -> Result<(), Replay> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (proof.jkt.clone(), proof.jti.clone());
        if seen.get(&key).is_some_and(|until| *until >= now) {
            return Err(Replay::Seen);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= self.capacity {
                return Err(Replay::Full);
            }
        }
        seen.insert(key, until);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(jti: &str) -> Proof {
        Proof {
            jkt: "k".into(),
            jti: jti.into(),
            iat: 100,
            nonce: None,
        }
    }

    #[test]
    fn a_proof_is_taken_once_within_its_window_and_full_means_refused() {
        let window = ReplayWindow::new(2);
        assert_eq!(window.use_once(&proof("a"), 160, 100), Ok(()));
        assert_eq!(window.use_once(&proof("a"), 160, 150), Err(Replay::Seen));
        assert_eq!(window.use_once(&proof("b"), 160, 150), Ok(()));
        assert_eq!(window.use_once(&proof("c"), 160, 150), Err(Replay::Full));
        // Once their window closed, old proofs make room.
        assert_eq!(window.use_once(&proof("c"), 260, 161), Ok(()));
    }
}
