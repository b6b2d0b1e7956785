//! Passwords of `static` users: argon2id PHC strings, checked when a
//! provider is applied (algorithm and cost bounds) and verified at sign-in.
//!
//! Verification is deliberately slow (an argon2id hash, ~20 ms with the
//! default cost m=19 MiB, t=2 on one core): run it off the async threads
//! (`spawn_blocking`). The comparison of the computed and stored hashes is
//! constant time (`password-hash` compares with `subtle`).

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};

/// Longest password verified or hashed: argon2 takes any length, a form
/// field should not make the server hash megabytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The weakest cost accepted, from OWASP's password storage cheat sheet
/// (argon2id: m=7 MiB with t=5 up to m=46 MiB with t=1; all have m·t ≥
/// 35840 KiB).
const MIN_MEMORY_KIB: u32 = 7168;
const MIN_MEMORY_TIME: u64 = 35_840;
/// The costliest accepted: one sign-in attempt must not take the server's
/// memory or a core for long.
const MAX_MEMORY_KIB: u32 = 262_144;
const MAX_TIME: u32 = 16;
const MAX_LANES: u32 = 8;

/// A password hash that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("not a PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash): {0}")]
    Malformed(String),
    #[error("`{0}` is not argon2id: hash passwords with `token-server hash-password`")]
    Algorithm(String),
    #[error("argon2 version {0} is not 19 (0x13)")]
    Version(u32),
    #[error(
        "the cost m={m} KiB, t={t} is below OWASP's minimum for argon2id (m·t at least {MIN_MEMORY_TIME} KiB, m at least {MIN_MEMORY_KIB} KiB)"
    )]
    TooWeak { m: u32, t: u32 },
    #[error(
        "the cost m={m} KiB, t={t}, p={p} is above the most accepted (m {MAX_MEMORY_KIB} KiB, t {MAX_TIME}, p {MAX_LANES})"
    )]
    TooCostly { m: u32, t: u32, p: u32 },
    #[error("a password is 1 to {MAX_PASSWORD_LEN} bytes")]
    Length,
    #[error("no randomness for the salt")]
    Random,
}

/// Checks that `phc` is an argon2id hash of an accepted cost.
pub fn check_hash(phc: &str) -> Result<(), PasswordError> {
    let hash = PasswordHash::new(phc).map_err(|e| PasswordError::Malformed(e.to_string()))?;
    if hash.algorithm != Algorithm::Argon2id.ident() {
        return Err(PasswordError::Algorithm(hash.algorithm.to_string()));
    }
    if let Some(version) = hash.version
        && version != u32::from(Version::V0x13)
    {
        return Err(PasswordError::Version(version));
    }
    let params = Params::try_from(&hash).map_err(|e| PasswordError::Malformed(e.to_string()))?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if m < MIN_MEMORY_KIB || u64::from(m) * u64::from(t) < MIN_MEMORY_TIME {
        return Err(PasswordError::TooWeak { m, t });
    }
    if m > MAX_MEMORY_KIB || t > MAX_TIME || p > MAX_LANES {
        return Err(PasswordError::TooCostly { m, t, p });
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err(PasswordError::Malformed("no salt or no hash".into()));
    }
    Ok(())
}

/// Whether `password` is the one hashed in `phc` (checked by
/// [`check_hash`] before). A malformed hash matches nothing.
pub fn verify(phc: &str, password: &str) -> bool {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// An argon2id PHC string of `password` with a random salt and the default
/// cost (m=19 MiB, t=2, p=1: OWASP's first recommendation).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::Length);
    }
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| PasswordError::Random)?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Malformed(e.to_string()))
}

/// What an unknown user's password is verified against, so that the time
/// of an answer does not tell whether the user exists. The default cost,
/// like the hashes `hash-password` makes.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dG9rZW5tZXNoLWR1bW15$+0Ak0QZ1m0R5Qp6s3i7m1m6rj3dC7O5T0m8n0t5kC8c";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        check_hash(&phc).unwrap();
        assert!(verify(&phc, "correct horse"));
        assert!(!verify(&phc, "correct horsE"));
        assert!(!verify(&phc, ""));
        assert!(!verify("not a hash", "correct horse"));
        assert_ne!(
            hash("correct horse").unwrap(),
            phc,
            "a fresh salt each time"
        );
    }

    #[test]
    fn weak_foreign_or_costly_hashes_are_refused() {
        assert_eq!(check_hash(DUMMY_HASH), Ok(()));
        let with = |params: &str| DUMMY_HASH.replace("m=19456,t=2,p=1", params);
        assert!(matches!(
            check_hash(&with("m=4096,t=3,p=1")),
            Err(PasswordError::TooWeak { .. })
        ));
        assert!(matches!(
            check_hash(&with("m=19456,t=1,p=1")),
            Err(PasswordError::TooWeak { .. })
        ));
        assert!(matches!(
            check_hash(&with("m=1048576,t=2,p=1")),
            Err(PasswordError::TooCostly { .. })
        ));
        assert!(matches!(
            check_hash(&DUMMY_HASH.replace("argon2id", "argon2i")),
            Err(PasswordError::Algorithm(_))
        ));
        assert!(matches!(
            check_hash("$2b$12$abcdefghijklmnopqrstuv"),
            Err(PasswordError::Malformed(_) | PasswordError::Algorithm(_))
        ));
        assert_eq!(hash(""), Err(PasswordError::Length));
        assert_eq!(
            hash(&"x".repeat(MAX_PASSWORD_LEN + 1)),
            Err(PasswordError::Length)
        );
    }
}
