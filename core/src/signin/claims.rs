//! The `claims` request parameter (OIDC Core §5.5) and the authentication
//! context class (`acr`, §2, §3.1.2.1, §5.5.1.1).
//!
//! A client may ask for individual claims of the user, for the ID token or
//! for UserInfo, beside (or instead of) the scopes that release them by
//! groups (§5.4). Only the standard claims of [`id_token::BY_SCOPE`] are ever
//! released, and only those the user has: a request names what it would
//! like, never widens what a client may receive. The consent the user gives
//! covers the scopes whose claims are asked for, by scope or one by one
//! ([`ClaimsRequest::consent_scopes`]).
//!
//! `acr`: the server states one class, [`PASSWORD`], for a password checked
//! here against a `static` IdentityProvider (single factor; no assurance
//! level of ISO/IEC 29115 or NIST 800-63 is claimed). Any other sign-in
//! carries no `acr`. An essential `acr` that cannot be met is
//! `unmet_authentication_requirements` (OpenID Connect Core Unmet
//! Authentication Requirements 1.0) rather than `access_denied`: the client
//! learns that the authentication, not the user, fell short.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::OAuthError;

use super::id_token::BY_SCOPE;

/// The `acr` of a password checked by this server (a `static` provider).
pub const PASSWORD: &str = "urn:tokenmesh:acr:password";
/// Every `acr` this server may state, for discovery.
pub const ACR_VALUES_SUPPORTED: [&str; 1] = [PASSWORD];

/// Longest `claims` parameter accepted (JSON text).
pub const MAX_CLAIMS_PARAM: usize = 4096;
/// Most claims one member (`id_token`, `userinfo`) may request.
const MAX_CLAIMS: usize = 32;
/// Most `values` one claim request may list.
const MAX_VALUES: usize = 16;
/// Most `acr_values` a request may list.
const MAX_ACR_VALUES: usize = 16;

/// Where a claim is asked to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    IdToken,
    UserInfo,
}

/// The `claims` parameter, reduced to what this server understands: the
/// claims it can release (and `acr`), each with its request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimsRequest {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub userinfo: BTreeMap<String, ClaimRequest>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub id_token: BTreeMap<String, ClaimRequest>,
}

/// One claim's request (§5.5.1): `null`, or `essential`, `value`, `values`
/// (`value` kept as a one-element `values`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub essential: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Value>,
}

/// Whether `name` is a claim a `claims` request may ask this server for.
fn understood(name: &str) -> bool {
    matches!(name, "acr" | "sub") || scope_of(name).is_some()
}

/// The OpenID Connect scope that releases `claim`.
fn scope_of(claim: &str) -> Option<&'static str> {
    BY_SCOPE
        .iter()
        .find(|(_, names)| names.contains(&claim))
        .map(|(scope, _)| *scope)
}

fn invalid(text: &'static str) -> OAuthError {
    OAuthError::InvalidRequest(text.into())
}

impl ClaimsRequest {
    /// Parses the `claims` parameter: a JSON object whose `userinfo` and
    /// `id_token` members name claims. Unknown members and claims are
    /// ignored (§5.5); anything malformed is `invalid_request`.
    pub fn parse(text: &str) -> Result<Self, OAuthError> {
        if text.len() > MAX_CLAIMS_PARAM {
            return Err(invalid("the claims parameter is too long"));
        }
        let Ok(Value::Object(top)) = serde_json::from_str::<Value>(text) else {
            return Err(invalid("the claims parameter must be a JSON object"));
        };
        Ok(Self {
            userinfo: member(top.get("userinfo"))?,
            id_token: member(top.get("id_token"))?,
        })
    }

    fn of(&self, target: Target) -> &BTreeMap<String, ClaimRequest> {
        match target {
            Target::IdToken => &self.id_token,
            Target::UserInfo => &self.userinfo,
        }
    }

    /// The standard claims asked for `target`, one by one.
    pub fn requested(&self, target: Target) -> impl Iterator<Item = &str> {
        self.of(target)
            .keys()
            .map(String::as_str)
            .filter(|name| scope_of(name).is_some())
    }

    /// The scopes whose claims this request asks for, to be consented with
    /// the requested scopes.
    pub fn consent_scopes(&self) -> Vec<&'static str> {
        let mut scopes: Vec<&'static str> = self
            .requested(Target::IdToken)
            .chain(self.requested(Target::UserInfo))
            .filter_map(scope_of)
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        scopes
    }

    /// The user `claims.id_token.sub` names with a `value` (§3.1.2.2): the
    /// answer may be about that user only.
    pub fn required_subject(&self) -> Option<&str> {
        self.id_token.get("sub")?.values.first()?.as_str()
    }

    /// What the ID token's `acr` must be, from `claims.id_token.acr`.
    fn acr(&self) -> Option<&ClaimRequest> {
        self.id_token.get("acr")
    }
}

fn member(value: Option<&Value>) -> Result<BTreeMap<String, ClaimRequest>, OAuthError> {
    let entries = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            return Err(invalid(
                "claims.userinfo and claims.id_token must be objects",
            ));
        }
    };
    if entries.len() > MAX_CLAIMS {
        return Err(invalid("the claims parameter asks for too many claims"));
    }
    let mut requests = BTreeMap::new();
    for (name, request) in entries {
        let request = claim_request(name, request)?;
        if understood(name) {
            requests.insert(name.clone(), request);
        }
    }
    Ok(requests)
}

fn claim_request(name: &str, value: &Value) -> Result<ClaimRequest, OAuthError> {
    let fields = match value {
        Value::Null => return Ok(ClaimRequest::default()),
        Value::Object(fields) => fields,
        _ => return Err(invalid("a claim's request must be null or an object")),
    };
    let essential = match fields.get("essential") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(essential)) => *essential,
        Some(_) => return Err(invalid("essential must be true or false")),
    };
    // `sub` names one user (§3.1.2.2): one string `value`, never `values`,
    // which would leave the restriction to whichever came first.
    if name == "sub"
        && (fields
            .get("value")
            .is_some_and(|v| !v.is_string() && !v.is_null())
            || fields.get("values").is_some_and(|v| !v.is_null()))
    {
        return Err(invalid("claims.id_token.sub takes one string value"));
    }
    let mut values = match fields.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) if values.len() <= MAX_VALUES => values.clone(),
        Some(Value::Array(_)) => return Err(invalid("a claim's values are too many")),
        Some(_) => return Err(invalid("values must be an array")),
    };
    if let Some(value) = fields.get("value").filter(|v| !v.is_null()) {
        values.insert(0, value.clone());
    }
    Ok(ClaimRequest { essential, values })
}

/// Of the user's `claims`, those released to `target`: the claims of the
/// `granted` scopes (§5.4), and the standard claims the request asks for
/// one by one (§5.5). A claim the user does not have is left out.
pub fn release(
    granted: impl Fn(&str) -> bool,
    claims: &Map<String, Value>,
    request: Option<&ClaimsRequest>,
    target: Target,
) -> Map<String, Value> {
    let by_scope = BY_SCOPE
        .iter()
        .filter(|(scope, _)| granted(scope))
        .flat_map(|(_, names)| names.iter().copied());
    let asked = request
        .into_iter()
        .flat_map(|request| request.requested(target));
    by_scope
        .chain(asked)
        .filter_map(|name| claims.get(name).map(|v| (name.to_owned(), v.clone())))
        .collect()
}

/// The claims UserInfo answers from an access token's claims: the standard
/// claims it carries, except those of a scope the token holds but whose
/// time is up (`active` says which scopes still count). A claim the token
/// carries without its scope was asked for one by one.
pub fn userinfo_claims(
    token_scopes: &[&str],
    active: &[&str],
    carried: &Map<String, Value>,
) -> Map<String, Value> {
    carried
        .iter()
        .filter(|(name, _)| {
            scope_of(name)
                .is_some_and(|scope| !token_scopes.contains(&scope) || active.contains(&scope))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The requested authentication context: `claims.id_token.acr` when it
/// names values or is essential, else `acr_values` (voluntary, §3.1.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcrRequest {
    pub values: Vec<String>,
    pub essential: bool,
}

impl AcrRequest {
    pub fn of(
        acr_values: Option<&str>,
        claims: Option<&ClaimsRequest>,
    ) -> Result<Self, OAuthError> {
        if let Some(acr) = claims.and_then(ClaimsRequest::acr)
            && (acr.essential || !acr.values.is_empty())
        {
            let values = acr
                .values
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| invalid("acr values must be strings"))?;
            return Ok(Self {
                values,
                essential: acr.essential,
            });
        }
        let values: Vec<String> = acr_values
            .unwrap_or("")
            .split(' ')
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        if values.len() > MAX_ACR_VALUES {
            return Err(invalid("too many acr_values"));
        }
        Ok(Self {
            values,
            essential: false,
        })
    }

    /// Whether a sign-in with `acr` meets an essential request.
    pub fn is_met_by(&self, acr: Option<&str>) -> bool {
        !self.essential
            || acr.is_some_and(|acr| self.values.is_empty() || self.values.iter().any(|v| v == acr))
    }

    /// Refuses a request no sign-in here can meet, before anyone signs in.
    pub fn check_possible(&self) -> Result<(), OAuthError> {
        if ACR_VALUES_SUPPORTED
            .iter()
            .any(|acr| self.is_met_by(Some(acr)))
        {
            Ok(())
        } else {
            Err(unmet())
        }
    }

    /// Refuses a sign-in whose `acr` does not meet an essential request.
    pub fn check(&self, acr: Option<&str>) -> Result<(), OAuthError> {
        if self.is_met_by(acr) {
            Ok(())
        } else {
            Err(unmet())
        }
    }
}

fn unmet() -> OAuthError {
    OAuthError::UnmetAuthenticationRequirements(
        "the essential acr requested cannot be met by this sign-in".into(),
    )
}

/// The `acr` of a sign-in: [`PASSWORD`] when a `static` provider of this
/// server checked a password (`amr` `pwd`), else none.
pub fn of_sign_in(static_provider: bool, amr: &[String]) -> Option<String> {
    (static_provider && amr.iter().any(|m| m == "pwd")).then(|| PASSWORD.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_claims_parameter_is_parsed_bounded_and_reduced_to_known_claims() {
        let request = ClaimsRequest::parse(
            r#"{"userinfo": {"email": {"essential": true}, "groups": null, "nickname": null},
                "id_token": {"acr": {"values": ["urn:x", "urn:y"]}, "name": {"value": "Alice"}, "auth_time": {"essential": true}},
                "other": 1}"#,
        )
        .unwrap();
        assert_eq!(
            request.userinfo.keys().collect::<Vec<_>>(),
            ["email", "nickname"],
            "groups is no standard claim: ignored"
        );
        assert!(request.userinfo["email"].essential);
        assert_eq!(
            request.id_token["acr"].values,
            [json!("urn:x"), json!("urn:y")]
        );
        assert_eq!(request.id_token["name"].values, [json!("Alice")]);
        assert!(
            !request.id_token.contains_key("auth_time"),
            "always in the ID token"
        );
        assert_eq!(request.consent_scopes(), ["email", "profile"]);
        assert_eq!(
            ClaimsRequest::parse("{}").unwrap(),
            ClaimsRequest::default()
        );
        for bad in [
            "[]",
            "not json",
            r#"{"userinfo": []}"#,
            r#"{"userinfo": {"email": true}}"#,
            r#"{"id_token": {"email": {"essential": "yes"}}}"#,
            r#"{"id_token": {"email": {"values": "a"}}}"#,
            r#"{"id_token": {"sub": {"value": 7}}}"#,
            r#"{"id_token": {"sub": {"values": [7]}}}"#,
            r#"{"id_token": {"sub": {"values": ["bob", "eve"]}}}"#,
        ] {
            assert!(
                matches!(
                    ClaimsRequest::parse(bad),
                    Err(OAuthError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        let many: Map<String, Value> = (0..=MAX_CLAIMS)
            .map(|i| (format!("c{i}"), Value::Null))
            .collect();
        let many = json!({ "userinfo": many }).to_string();
        assert!(ClaimsRequest::parse(&many).is_err());
        let long = format!(
            r#"{{"userinfo": {{"email": {{"value": "{}"}}}}}}"#,
            "a".repeat(MAX_CLAIMS_PARAM)
        );
        assert!(ClaimsRequest::parse(&long).is_err());
    }

    #[test]
    fn release_gives_scoped_and_requested_claims_the_user_has_to_their_target_only() {
        let user: Map<String, Value> = serde_json::from_value(json!({
            "name": "Alice", "email": "alice@example.com", "email_verified": true,
            "groups": ["admins"], "phone_number": "+1 555"
        }))
        .unwrap();
        let request = ClaimsRequest::parse(
            r#"{"id_token": {"email": null, "address": null, "groups": null}, "userinfo": {"phone_number": null}}"#,
        )
        .unwrap();
        let profile = |s: &str| s == "profile";
        let id = release(profile, &user, Some(&request), Target::IdToken);
        assert_eq!(
            Value::Object(id),
            json!({"name": "Alice", "email": "alice@example.com"}),
            "no address: alice has none; no groups: no standard claim"
        );
        let info = release(profile, &user, Some(&request), Target::UserInfo);
        assert_eq!(
            Value::Object(info),
            json!({"name": "Alice", "phone_number": "+1 555"})
        );
        let plain = release(|_| false, &user, None, Target::UserInfo);
        assert!(plain.is_empty());
    }

    #[test]
    fn userinfo_withholds_claims_of_an_expired_scope_only() {
        let carried: Map<String, Value> = serde_json::from_value(json!({
            "name": "Alice", "email": "a@example.com", "tenant": "shop"
        }))
        .unwrap();
        let all = userinfo_claims(&["openid", "profile"], &["openid", "profile"], &carried);
        assert_eq!(
            Value::Object(all),
            json!({"name": "Alice", "email": "a@example.com"}),
            "email was asked for one by one; tenant is no user claim"
        );
        let expired = userinfo_claims(&["openid", "profile"], &["openid"], &carried);
        assert_eq!(Value::Object(expired), json!({"email": "a@example.com"}));
    }

    #[test]
    fn an_essential_acr_is_met_or_refused() {
        let essential = |values: &str| {
            let text =
                format!(r#"{{"id_token": {{"acr": {{"essential": true, "values": {values}}}}}}}"#);
            AcrRequest::of(None, Some(&ClaimsRequest::parse(&text).unwrap())).unwrap()
        };
        let ours = essential(&format!(r#"["{PASSWORD}"]"#));
        assert_eq!(ours.check_possible(), Ok(()));
        assert_eq!(ours.check(Some(PASSWORD)), Ok(()));
        assert!(matches!(
            ours.check(None),
            Err(OAuthError::UnmetAuthenticationRequirements(_))
        ));
        let foreign = essential(r#"["urn:mace:incommon:iap:silver"]"#);
        assert!(matches!(
            foreign.check_possible(),
            Err(OAuthError::UnmetAuthenticationRequirements(_))
        ));
        let any = essential("[]");
        assert_eq!(any.check(Some(PASSWORD)), Ok(()));
        assert!(
            any.check(None).is_err(),
            "essential: some acr must be stated"
        );

        let voluntary = AcrRequest::of(Some("urn:a urn:b"), None).unwrap();
        assert_eq!(voluntary.values, ["urn:a", "urn:b"]);
        assert_eq!(voluntary.check(None), Ok(()), "acr_values is voluntary");
        let numbers = r#"{"id_token": {"acr": {"essential": true, "values": [1]}}}"#;
        assert!(AcrRequest::of(None, Some(&ClaimsRequest::parse(numbers).unwrap())).is_err());
        let many = vec!["a"; MAX_ACR_VALUES + 1].join(" ");
        assert!(AcrRequest::of(Some(&many), None).is_err());
    }

    #[test]
    fn only_a_password_checked_here_states_an_acr() {
        let pwd = vec!["pwd".to_owned()];
        assert_eq!(of_sign_in(true, &pwd).as_deref(), Some(PASSWORD));
        assert_eq!(of_sign_in(false, &pwd), None);
        assert_eq!(of_sign_in(true, &[]), None);
    }
}
