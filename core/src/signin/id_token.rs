//! ID tokens (OIDC Core §2, §3.1.3.6–7) and the user's claims each scope
//! releases (§5.4), for the ID token and UserInfo alike.

use aws_lc_rs::digest;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmesh_crds::SigningAlgorithm;

use super::{
    claims::{self, Target},
    grant::Authorization,
};

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

impl IdTokenClaims {
    /// The client's `spec.claims` ("in every token of this client"), where
    /// neither the ID token nor the user has a claim of that name.
    pub fn add_client_claims(&mut self, client_claims: &Map<String, Value>) {
        for (name, value) in client_claims {
            if !ID_TOKEN_CLAIMS.contains(&name.as_str()) {
                self.extra
                    .entry(name.clone())
                    .or_insert_with(|| value.clone());
            }
        }
    }
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

/// The user's claims `authorization` releases to `target`: by scope, and
/// as the `claims` parameter asked ([`claims::release`]).
pub fn user_claims(authorization: &Authorization, target: Target) -> Map<String, Value> {
    claims::release(
        |s| authorization.has_scope(s),
        &authorization.claims,
        authorization.requested_claims.as_ref(),
        target,
    )
}

/// What an ID token says about `authorization`. `access_token` is the one
/// issued with it, for `at_hash`. Add the client's own claims with
/// [`IdTokenClaims::add_client_claims`].
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
        extra: user_claims(authorization, Target::IdToken),
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

    #[test]
    fn the_claims_parameter_and_the_clients_claims_reach_the_id_token() {
        let mut grant = authorization();
        grant.acr = Some(crate::signin::claims::PASSWORD.into());
        grant
            .claims
            .insert("email".into(), "alice@example.com".into());
        grant.claims.insert("name".into(), "Alice".into());
        grant.requested_claims = Some(
            crate::signin::claims::ClaimsRequest::parse(
                r#"{"id_token": {"email": {"essential": true}}, "userinfo": {"phone_number": null}}"#,
            )
            .unwrap(),
        );
        let mut c = claims(
            "https://i.test",
            &grant,
            None,
            None,
            SigningAlgorithm::RS256,
            60,
            1,
        );
        c.add_client_claims(
            &serde_json::from_value(
                serde_json::json!({"tenant": "shop", "name": "Not Alice", "nonce": "x"}),
            )
            .unwrap(),
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["email"], "alice@example.com", "asked for the ID token");
        assert_eq!(json["name"], "Alice", "the user's claim wins");
        assert_eq!(json["tenant"], "shop");
        assert_eq!(json["acr"], crate::signin::claims::PASSWORD);
        assert!(
            json.get("nonce").is_none(),
            "no client claim over an ID token claim"
        );
        let user = user_claims(&grant, Target::UserInfo);
        assert!(user.get("email").is_none(), "asked for the ID token only");
    }
}
