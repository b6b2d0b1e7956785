//! Signing keys in a Secret the operator manages: for each TokenServer, the
//! Secret `<name>-signing-keys` holds `<activatesAt>-<kid>.pem` entries that
//! every token-server replica mounts (`signing.keyDirectory`), so all sign
//! with the same keys and publish the same JWKS. A successor key is added a
//! rotation period ahead (published before it signs); a key leaves once its
//! successor has signed for longer than any token lives.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use tokenmesh_crds::{SigningAlgorithm, TokenServer, parse_duration};
use tokenmesh_tokens::{Algorithm, secret::random_id, signing::SigningKey};

/// Defaults of the TokenServer resource (see docs/configuration.md).
const DEFAULT_ROTATION: u64 = 86_400;
const DEFAULT_MAX_TTL: u64 = 86_400;
const LEEWAY: u64 = 60;

pub fn secret_name(server: &TokenServer) -> String {
    format!("{}-signing-keys", kube::ResourceExt::name_any(server))
}

/// A key entry's name: `<activatesAt>-<kid>.pem`.
fn parse_entry(name: &str) -> Option<(u64, &str)> {
    let (at, kid) = name.strip_suffix(".pem")?.split_once('-')?;
    Some((at.parse().ok()?, kid))
}

/// What the Secret should hold next, and when to look again.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyPlan {
    /// Entries to add: (activatesAt, algorithm).
    pub add: Vec<u64>,
    /// Entry names to remove.
    pub remove: Vec<String>,
    /// The next moment something changes (a key activates or can go).
    pub next_change: u64,
}

/// Decides from the entry names alone, at `now`.
pub fn plan(entries: &[String], now: u64, period: u64, max_ttl: u64) -> KeyPlan {
    let mut keys: Vec<(u64, &String)> = entries
        .iter()
        .filter_map(|e| parse_entry(e).map(|(at, _)| (at, e)))
        .collect();
    keys.sort();
    let active: Vec<&(u64, &String)> = keys.iter().filter(|(at, _)| *at <= now).collect();
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let newest_active = active.last().map(|(at, _)| *at);
    match newest_active {
        None => {
            add.push(now);
            add.push(now + period);
        }
        Some(current) => {
            // Older active keys go once the current one has signed longer than a token lives.
            if now >= current + max_ttl + LEEWAY {
                remove.extend(
                    active[..active.len() - 1]
                        .iter()
                        .map(|(_, name)| (*name).clone()),
                );
            }
            if !keys.iter().any(|(at, _)| *at > now) {
                add.push((current + period).max(now + 1));
            }
        }
    }
    let upcoming = keys
        .iter()
        .map(|(at, _)| *at)
        .chain(add.iter().copied())
        .filter(|at| *at > now)
        .min();
    let retire = newest_active
        .filter(|_| active.len() > 1)
        .map(|at| at + max_ttl + LEEWAY)
        .filter(|t| *t > now);
    let next_change = [upcoming, retire]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + period);
    KeyPlan {
        add,
        remove,
        next_change,
    }
}

/// The rotation period and the longest token lifetime of a TokenServer.
pub fn periods(server: &TokenServer) -> (u64, u64) {
    let secs = |text: &Option<String>, default: u64| {
        text.as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map_or(default, |d| d.as_secs().max(1))
    };
    (
        secs(&server.spec.signing.rotation_period, DEFAULT_ROTATION),
        secs(&server.spec.max_access_token_ttl, DEFAULT_MAX_TTL),
    )
}

/// A new key for the TokenServer's algorithm: (entry name, PEM).
pub fn new_key(alg: SigningAlgorithm, activates_at: u64) -> Result<(String, String), String> {
    let kid = random_id().map_err(|_| "no randomness".to_owned())?;
    let jose = match alg {
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    };
    let key = SigningKey::generate(kid.clone(), jose).map_err(|e| e.to_string())?;
    let body = STANDARD.encode(key.pkcs8());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    // kids are base64url: '-' inside is fine, the name splits at the first '-'.
    Ok((format!("{activates_at}-{kid}.pem"), pem))
}

/// Applies a plan to the Secret's data.
pub fn apply(
    data: &mut BTreeMap<String, Vec<u8>>,
    plan: &KeyPlan,
    alg: SigningAlgorithm,
) -> Result<(), String> {
    for name in &plan.remove {
        data.remove(name);
    }
    for at in &plan.add {
        let (name, pem) = new_key(alg, *at)?;
        data.insert(name, pem.into_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn first_keys_sign_now_and_next_period() {
        let p = plan(&[], 1000, 100, 50);
        assert_eq!(p.add, vec![1000, 1100]);
        assert_eq!(p.next_change, 1100);
    }

    #[test]
    fn the_successor_is_published_a_period_ahead_and_the_old_key_leaves_after_the_longest_token() {
        let entries = names(&["1000-a.pem", "1100-b.pem"]);
        assert_eq!(
            plan(&entries, 1050, 100, 50),
            KeyPlan {
                add: vec![],
                remove: vec![],
                next_change: 1100
            }
        );
        // b takes over: a successor is added, a stays published.
        let p = plan(&entries, 1100, 100, 50);
        assert_eq!(p.add, vec![1200]);
        assert!(p.remove.is_empty());
        assert_eq!(p.next_change, 1200);
        let entries = names(&["1000-a.pem", "1100-b.pem", "1200-c.pem"]);
        let p = plan(&entries, 1150, 100, 50);
        assert!(p.remove.is_empty());
        assert_eq!(p.next_change, 1200);
        let p = plan(
            &names(&["1000-a.pem", "1100-b.pem", "1300-c.pem"]),
            1210,
            100,
            50,
        );
        assert_eq!(
            p.remove,
            vec!["1000-a.pem".to_owned()],
            "b signed for max_ttl + leeway"
        );
        assert!(
            plan(&names(&["junk", "..data"]), 5, 10, 10).add.len() == 2,
            "unknown entries are ignored"
        );
    }

    #[test]
    fn new_keys_load_as_the_token_server_reads_them() {
        let (name, pem) = new_key(SigningAlgorithm::EdDSA, 42).unwrap();
        assert_eq!(parse_entry(&name).map(|(at, _)| at), Some(42));
        use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            SigningKey::detect_algorithm(der.secret_pkcs8_der()),
            Some(Algorithm::EdDSA)
        );
    }
}
