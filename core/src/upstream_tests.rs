//! The upstream ID token rules, the local subject and the claim mapping.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokenmesh_tokens::{
    Algorithm,
    signing::SigningKey,
    verify::{KeySet, VerifyError, VerifyingKey},
};

use super::*;
use crate::{document::parse_documents, registry::Registry};

const ISSUER: &str = "https://login.corp.example";
const NOW: u64 = 1_800_000_000;

fn key() -> SigningKey {
    SigningKey::generate("up-1".into(), Algorithm::RS256).unwrap()
}

fn keys(key: &SigningKey) -> KeySet {
    KeySet::new(vec![VerifyingKey::from_jwk(&key.public_jwk()).unwrap()])
}

fn rules() -> IdTokenRules<'static> {
    IdTokenRules {
        issuer: ISSUER,
        client_id: "tokenmesh",
        nonce: "n-0S6_WzA2Mj",
        now: NOW,
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": "tokenmesh", "sub": "248289761001", "exp": NOW + 300, "iat": NOW - 5,
        "nonce": "n-0S6_WzA2Mj", "auth_time": NOW - 10, "email": "jane@corp.example", "name": "Jane Doe",
        "roles": ["shop-admin", "hr"]
    })
}

/// `claims()` with `patch` applied (a null removes a claim), signed by `key`.
fn id_token(key: &SigningKey, patch: Value) -> String {
    let mut c = claims();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    key.sign_jwt("JWT", &c).unwrap()
}

#[test]
fn a_good_id_token_verifies_and_every_rule_is_enforced() {
    let key = key();
    let keys = keys(&key);
    let check = |patch: Value| verify_id_token(&id_token(&key, patch), &keys, &rules());
    assert_eq!(check(json!({})).unwrap()["sub"], "248289761001");
    for (patch, error) in [
        (
            json!({"iss": "https://evil.example"}),
            UpstreamError::IdToken(VerifyError::Issuer),
        ),
        (
            json!({"aud": "someone-else"}),
            UpstreamError::IdToken(VerifyError::Audience),
        ),
        (
            json!({"exp": NOW - LEEWAY - 1}),
            UpstreamError::IdToken(VerifyError::Expired),
        ),
        (
            json!({"exp": null}),
            UpstreamError::IdToken(VerifyError::Claim("exp")),
        ),
        (json!({"iat": null}), UpstreamError::Claim("iat")),
        (
            json!({"iat": NOW + LEEWAY + 1}),
            UpstreamError::IssuedInFuture,
        ),
        (json!({"sub": ""}), UpstreamError::Claim("sub")),
        (json!({"nonce": "another"}), UpstreamError::Nonce),
        (json!({"nonce": null}), UpstreamError::Nonce),
        (
            json!({"aud": ["tokenmesh", "other"]}),
            UpstreamError::AuthorizedParty,
        ),
        (json!({"azp": "other"}), UpstreamError::AuthorizedParty),
    ] {
        assert_eq!(check(patch.clone()), Err(error), "{patch}");
    }
    assert!(check(json!({"aud": ["tokenmesh", "other"], "azp": "tokenmesh"})).is_ok());
    assert!(check(json!({"exp": NOW - 5})).is_ok(), "within the leeway");
}

#[test]
fn an_id_token_signed_otherwise_than_by_the_upstreams_keys_is_refused() {
    let key = key();
    let keys = keys(&key);
    let other = SigningKey::generate("up-1".into(), Algorithm::RS256).unwrap();
    assert_eq!(
        verify_id_token(&id_token(&other, json!({})), &keys, &rules()),
        Err(UpstreamError::IdToken(VerifyError::Signature))
    );
    // alg none, and HS256 keyed with anything: refused whatever the key set.
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "HS256", "kid": "up-1"}),
    ] {
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let token = format!("{header}.{payload}.c2ln");
        assert!(
            matches!(
                verify_id_token(&token, &keys, &rules()),
                Err(UpstreamError::IdToken(
                    VerifyError::Algorithm(_) | VerifyError::Malformed
                ))
            ),
            "{header}"
        );
    }
}

#[test]
fn the_local_subject_is_stable_and_bound_to_issuer_and_subject() {
    let a = local_subject(ISSUER, "248289761001");
    assert_eq!(a, local_subject(ISSUER, "248289761001"));
    assert_eq!(a.len(), 43);
    assert!(!a.contains("248289761001"));
    assert_ne!(a, local_subject("https://other.example", "248289761001"));
    // Length prefixes: moving a character from issuer to subject changes it.
    assert_ne!(local_subject("ab", "c"), local_subject("a", "bc"));
}

fn provider(extra: &str) -> Arc<crate::registry::IdentityProvider> {
    let yaml = format!(
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {{name: corp}}\nspec:\n  type: oidc\n  oidc:\n    issuer: {ISSUER}\n    clientId: tokenmesh\n{extra}"
    );
    let docs = parse_documents(None, &yaml).unwrap();
    let reg = Registry::new("https://issuer.test".into(), None)
        .from_documents(
            &docs,
            &crate::registry::FileSecrets {
                dir: "/nonexistent".into(),
            },
        )
        .unwrap();
    reg.identity_provider("corp").unwrap().clone()
}

fn oidc(provider: &crate::registry::IdentityProvider) -> &UpstreamOidc {
    match &provider.kind {
        crate::registry::ProviderKind::Oidc(oidc) => oidc,
        crate::registry::ProviderKind::Static(_) => unreachable!(),
    }
}

#[test]
fn claims_map_by_cel_and_default_to_the_standard_ones() {
    let token = claims().as_object().unwrap().clone();
    let plain = provider("");
    let found = identity(oidc(&plain), &token, None).unwrap();
    assert_eq!(found.subject, local_subject(ISSUER, "248289761001"));
    assert_eq!(found.upstream_subject, "248289761001");
    assert_eq!(found.auth_time, Some(NOW - 10));
    assert_eq!(found.amr, ["fed"], "no amr upstream: federated");
    assert_eq!(
        Value::Object(found.claims),
        json!({"email": "jane@corp.example", "name": "Jane Doe"}),
        "only the standard claims, never iss/aud/nonce or roles"
    );

    let mapped = provider(
        "    subjectClaim: email\n    claimMappings:\n      groups: \"claims.roles.filter(r, r.startsWith('shop-'))\"\n      display: \"claims.name + ' (corp)'\"\n      nickname: \"has(claims.nickname) ? claims.nickname : null\"\n",
    );
    let userinfo = json!({"sub": "248289761001", "name": "Jane Q. Doe"});
    let found = identity(oidc(&mapped), &token, userinfo.as_object()).unwrap();
    assert_eq!(found.upstream_subject, "jane@corp.example");
    assert_eq!(found.subject, local_subject(ISSUER, "jane@corp.example"));
    assert_eq!(
        Value::Object(found.claims),
        json!({"groups": ["shop-admin"], "display": "Jane Q. Doe (corp)"}),
        "UserInfo on top of the ID token; a null leaves the claim out"
    );
}

#[test]
fn userinfo_of_another_subject_or_a_missing_subject_claim_is_refused() {
    let token = claims().as_object().unwrap().clone();
    let plain = provider("");
    let other = json!({"sub": "someone-else"});
    assert_eq!(
        identity(oidc(&plain), &token, other.as_object()),
        Err(UpstreamError::UserInfoSubject)
    );
    let by_upn = provider("    subjectClaim: upn\n");
    assert_eq!(
        identity(oidc(&by_upn), &token, None),
        Err(UpstreamError::Subject("upn".into()))
    );
    let failing = provider("    claimMappings: {groups: \"claims.missing.field\"}\n");
    assert!(matches!(
        identity(oidc(&failing), &token, None),
        Err(UpstreamError::Mapping { claim, .. }) if claim == "groups"
    ));
}

#[test]
fn the_upstream_amr_is_passed_on_only_as_a_short_list_of_method_names() {
    let plain = provider("");
    let amr_of = |amr: Value| {
        let mut token = claims().as_object().unwrap().clone();
        token.insert("amr".into(), amr);
        identity(oidc(&plain), &token, None).unwrap().amr
    };
    assert_eq!(amr_of(json!(["pwd", "mfa", "otp"])), ["pwd", "mfa", "otp"]);
    assert_eq!(
        amr_of(json!(["hwk", "a b<script>", 7])),
        ["hwk"],
        "what is not a method name is dropped"
    );
    assert_eq!(amr_of(json!("pwd")), ["fed"], "not a list");
    assert_eq!(amr_of(json!([])), ["fed"]);
    assert_eq!(amr_of(json!(vec!["pwd"; MAX_AMR + 1])), ["fed"], "too many");
    assert_eq!(amr_of(json!(["x".repeat(33)])), ["fed"], "too long");
}
