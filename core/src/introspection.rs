//! What an introspection answer (RFC 7662) says about active claims.

use serde_json::{Map, Value};
use tokenmesh_tokens::claims::AccessTokenClaims;

/// The RFC 7662 response members of active claims at `now`: scopes that
/// expired early move to `expired_scope`.
pub fn introspection_response(claims: &AccessTokenClaims, now: u64) -> Map<String, Value> {
    let mut map = match serde_json::to_value(claims) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let (live, expired) = claims.scopes_at(now);
    map.insert("active".into(), Value::Bool(true));
    map.insert(
        "token_type".into(),
        Value::String(token_type(claims).into()),
    );
    if live.is_empty() {
        map.remove("scope");
    } else {
        map.insert("scope".into(), Value::String(live.join(" ")));
    }
    if !expired.is_empty() {
        map.insert("expired_scope".into(), Value::String(expired.join(" ")));
    }
    map
}

/// How the token is presented: `DPoP` when it is bound to a DPoP key
/// (RFC 9449 §6.2), `Bearer` otherwise.
pub fn token_type(claims: &AccessTokenClaims) -> &'static str {
    if claims.cnf.as_ref().is_some_and(|cnf| cnf.jkt.is_some()) {
        "DPoP"
    } else {
        "Bearer"
    }
}

/// The answer for a token that is not active: `{"active": false}` and
/// nothing else (RFC 7662 §2.2).
pub fn inactive() -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("active".into(), Value::Bool(false));
    map
}
