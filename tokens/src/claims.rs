//! The claims of a tokenmesh access token (RFC 9068, with the `act` chain of
//! RFC 8693 and tokenmesh's own members).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `typ` header of a JWT access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// `aud`: one string or an array of them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn from_vec(mut values: Vec<String>) -> Self {
        if values.len() == 1 {
            Self::One(values.remove(0))
        } else {
            Self::Many(values)
        }
    }

    pub fn contains(&self, value: &str) -> bool {
        match self {
            Self::One(one) => one == value,
            Self::Many(many) => many.iter().any(|a| a == value),
        }
    }

    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one.clone()],
            Self::Many(many) => many.clone(),
        }
    }
}

/// An actor in a delegation chain; `act` nests the earlier actors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// How many actors this chain names.
    pub fn depth(&self) -> usize {
        1 + self.act.as_ref().map_or(0, |inner| inner.depth())
    }
}

/// `cnf`: what a bound token's holder must prove.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Confirmation {
    /// SHA-256 thumbprint of the client certificate, base64url (RFC 8705 §3.1).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// JWK SHA-256 thumbprint of the DPoP key, base64url (RFC 9449 §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

impl Confirmation {
    /// Whether the certificate `der` is the one `x5t#S256` names; true
    /// when the token is not certificate-bound. Constant time.
    pub fn holds_certificate(confirmation: Option<&Self>, der: Option<&[u8]>) -> bool {
        let Some(expected) = confirmation.and_then(|c| c.x5t_s256.as_deref()) else {
            return true;
        };
        der.is_some_and(|der| {
            subtle::ConstantTimeEq::ct_eq(x5t_s256(der).as_bytes(), expected.as_bytes()).into()
        })
    }
}

/// `x5t#S256` of a DER certificate: base64url of its SHA-256 (RFC 8705 §3.1).
pub fn x5t_s256(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// The claims tokenmesh puts into every access token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub client_id: String,
    /// Space-separated scopes (RFC 9068 §2.2.3); a claim that is not a
    /// strict scope list (RFC 6749 §3.3) refuses the whole token.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "crate::scope::deserialize_claim"
    )]
    pub scope: String,
    /// Scopes that stop counting before `exp`: scope → unix time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope_exp: BTreeMap<String, u64>,
    /// The grant this token belongs to; revoking the grant revokes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<serde_json::Value>,
    /// Tokens for downstream audiences carried inside this one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub embedded_tokens: BTreeMap<String, String>,
    /// The key the token is bound to (RFC 7800): a client certificate
    /// (RFC 8705) or a DPoP key (RFC 9449). Absent: a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Per-client and policy claims.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl AccessTokenClaims {
    /// The scopes, split on the space character only; anything but a
    /// scope-token never counts (deserialization refuses such a claim).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .split(' ')
            .filter(|s| crate::scope::is_scope_token(s))
    }

    /// Splits the scopes into (still valid, expired) at `now`.
    pub fn scopes_at(&self, now: u64) -> (Vec<&str>, Vec<&str>) {
        self.scopes()
            .partition(|scope| self.scope_exp.get(*scope).is_none_or(|exp| now < *exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://issuer".into(),
            sub: "gateway".into(),
            aud: Audience::One("orders".into()),
            exp: 200,
            iat: 100,
            nbf: 100,
            jti: "j".into(),
            client_id: "gateway".into(),
            scope: "orders:read video_stream_1".into(),
            scope_exp: BTreeMap::from([("video_stream_1".into(), 160)]),
            grant_id: None,
            act: None,
            may_act: None,
            embedded_tokens: BTreeMap::new(),
            cnf: None,
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn expiring_scope_leaves_at_its_time() {
        let c = claims();
        assert_eq!(
            c.scopes_at(159),
            (vec!["orders:read", "video_stream_1"], vec![])
        );
        assert_eq!(
            c.scopes_at(160),
            (vec!["orders:read"], vec!["video_stream_1"])
        );
    }

    /// A tab-joined claim is not three scopes: the token does not parse.
    #[test]
    fn a_scope_claim_split_by_other_whitespace_refuses_the_token() {
        let mut json = serde_json::to_value(claims()).unwrap();
        json["scope"] = "video_stream_x\torders:write\tadmin".into();
        assert!(serde_json::from_value::<AccessTokenClaims>(json.clone()).is_err());
        json["scope"] = "orders:read  video_stream_x".into();
        let parsed: AccessTokenClaims = serde_json::from_value(json).unwrap();
        assert_eq!(
            parsed.scopes().collect::<Vec<_>>(),
            ["orders:read", "video_stream_x"]
        );
        let mut built = claims();
        built.scope = "a\tb c".into();
        assert_eq!(built.scopes().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn single_audience_serialises_as_string() {
        let json = serde_json::to_value(claims()).unwrap();
        assert_eq!(json["aud"], "orders");
        assert!(json.get("act").is_none());
        let many = Audience::from_vec(vec!["a".into(), "b".into()]);
        assert_eq!(
            serde_json::to_value(many).unwrap(),
            serde_json::json!(["a", "b"])
        );
    }

    #[test]
    fn actor_depth_counts_the_chain() {
        let inner = Actor {
            sub: "a".into(),
            client_id: None,
            act: None,
        };
        let outer = Actor {
            sub: "b".into(),
            client_id: None,
            act: Some(Box::new(inner)),
        };
        assert_eq!(outer.depth(), 2);
    }
}
