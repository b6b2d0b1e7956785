//! ID tokens (OIDC Core §2, §3.1.3.6–7) and the user's claims each scope
//! releases (§5.4), for the ID token and UserInfo alike.

use aws_lc_rs::digest;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmesh_crds::SigningAlgorithm;

use super::grant::Authorization;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub auth_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The client, as the only audience (§2: when it differs from `aud`,
    /// which it never does here, but certified clients expect it).
    pub azp: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The claims each OpenID Connect scope releases (OIDC Core §5.4).
pub const BY_SCOPE: [(&str, &[&str]); 4] = [
    (
        "profile",
        &[
            "name",
            "family_name",
            "given_name",
            "middle_name",
            "nickname",
            "preferred_username",
            "profile",
            "picture",
            "website",
            "gender",
            "birthdate",
            "zoneinfo",
            "locale",
            "updated_at",
        ],
    ),
    ("email", &["email", "email_verified"]),
    ("address", &["address"]),
    ("phone", &["phone_number", "phone_number_verified"]),
];

/// The claims an ID token carries about the authentication itself.
pub const ID_TOKEN_CLAIMS: [&str; 12] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "acr",
    "amr",
    "sid",
    "azp",
];

/// Every claim ID tokens and UserInfo may carry, for discovery.
pub fn claims_supported() -> Vec<&'static str> {
    ID_TOKEN_CLAIMS
        .into_iter()
        .chain(BY_SCOPE.iter().flat_map(|(_, names)| names.iter().copied()))
        .collect()
}

/// The user's claims the granted scopes release.
pub fn user_claims(authorization: &Authorization) -> Map<String, Value> {
    released(|s| authorization.has_scope(s), &authorization.claims)
}

/// Of `claims`, those a scope `granted` releases.
pub fn released(granted: impl Fn(&str) -> bool, claims: &Map<String, Value>) -> Map<String, Value> {
    BY_SCOPE
        .iter()
        .filter(|(scope, _)| granted(scope))
        .flat_map(|(_, names)| names.iter())
        .filter_map(|name| claims.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect()
}

/// What an ID token says about `authorization`. `access_token` is the one
/// issued with it, for `at_hash`.
pub fn claims(
    issuer: &str,
    authorization: &Authorization,
    nonce: Option<&str>,
    access_token: Option<&str>,
    alg: SigningAlgorithm,
    ttl: u64,
    now: u64,
) -> IdTokenClaims {
    IdTokenClaims {
        iss: issuer.to_owned(),
        sub: authorization.subject.clone(),
        aud: authorization.client_id.clone(),
        exp: now.saturating_add(ttl),
        iat: now,
        auth_time: authorization.auth_time,
        nonce: nonce.map(str::to_owned),
        at_hash: access_token.map(|token| at_hash(alg, token)),
        acr: authorization.acr.clone(),
        amr: authorization.amr.clone(),
        sid: authorization.sid.clone(),
        azp: authorization.client_id.clone(),
        extra: user_claims(authorization),
    }
}

/// The left half of the access token's digest with the hash of `alg`
/// (OIDC Core §3.1.3.6; Ed25519 signs with SHA-512).
pub fn at_hash(alg: SigningAlgorithm, access_token: &str) -> String {
    let hash = match alg {
        SigningAlgorithm::EdDSA => &digest::SHA512,
        _ => &digest::SHA256,
    };
    let digest = digest::digest(hash, access_token.as_bytes());
    let bytes = digest.as_ref();
    URL_SAFE_NO_PAD.encode(bytes.get(..bytes.len() / 2).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signin::testing::authorization;

    #[test]
    fn at_hash_matches_the_oidc_example() {
        // OIDC Core Appendix A.3 (RS256).
        assert_eq!(
            at_hash(
                SigningAlgorithm::RS256,
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }

    #[test]
    fn the_id_token_names_the_session_and_releases_claims_by_scope() {
        let mut grant = authorization();
        grant.claims.insert("name".into(), "Alice".into());
        grant
            .claims
            .insert("email".into(), "alice@example.com".into());
        grant
            .claims
            .insert("groups".into(), serde_json::json!(["admins"]));
        let c = claims(
            "https://issuer.test",
            &grant,
            Some("n-1"),
            Some("at"),
            SigningAlgorithm::ES256,
            300,
            1000,
        );
        assert_eq!(
            (c.sub.as_str(), c.aud.as_str(), c.azp.as_str()),
            ("alice", "web", "web")
        );
        assert_eq!((c.exp, c.iat, c.auth_time), (1300, 1000, grant.auth_time));
        assert_eq!(c.nonce.as_deref(), Some("n-1"));
        assert_eq!(c.sid.as_deref(), Some("sid-1"));
        assert_eq!(c.amr, ["pwd"]);
        assert!(c.at_hash.is_some());
        assert_eq!(c.extra.get("name"), Some(&Value::from("Alice")));
        assert!(c.extra.get("email").is_none(), "no email scope");
        assert!(c.extra.get("groups").is_none(), "no scope releases it");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["name"], "Alice");
    }
}
