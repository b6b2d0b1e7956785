//! One-time authorization codes (RFC 6749 §4.1.2, §4.1.3): random, stored
//! by digest only, valid 60 s, bound to the client, the redirect URI and the
//! PKCE challenge. A code redeemed twice revokes what it issued.

use tokenmesh_tokens::secret::{SecretHash, random_token};

use crate::{
    error::OAuthError,
    ports::{AuthorizationCodes, Grants},
    registry::Client,
};

use super::{
    authorize::AuthorizationRequest,
    grant::{Authorization, CodeRecord, CodeRedemption},
    pkce,
};

/// Prefix of codes, so secret scanners can find leaked ones.
pub const CODE_PREFIX: &str = "tmc_";
pub const CODE_TTL: u64 = 60;
const MAX_CODE: usize = 256;

/// Issues a code for `authorization`, as `request` asked.
pub async fn issue(
    ports: &impl AuthorizationCodes,
    request: &AuthorizationRequest,
    authorization: Authorization,
    now: u64,
) -> Result<String, OAuthError> {
    let code = format!(
        "{CODE_PREFIX}{}",
        random_token().map_err(|_| OAuthError::Internal)?
    );
    let record = CodeRecord {
        authorization,
        redirect_uri: request.requested_redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        nonce: request.nonce.clone(),
        expires_at: now.saturating_add(CODE_TTL),
    };
    ports
        .put_code(SecretHash::of(code.as_bytes()), &record)
        .await?;
    Ok(code)
}

/// What the token request presents with the code.
#[derive(Debug, Default, Clone, Copy)]
pub struct Redemption<'a> {
    pub code: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: Option<&'a str>,
}

/// Redeems a code for `client`. A replay revokes the grant the code
/// started until `revoke_until` (when anything it issued has expired).
pub async fn redeem(
    ports: &(impl AuthorizationCodes + Grants),
    client: &Client,
    presented: Redemption<'_>,
    now: u64,
    revoke_until: u64,
) -> Result<CodeRecord, OAuthError> {
    if presented.code.len() > MAX_CODE {
        return Err(grant("the code is not valid"));
    }
    let record = match ports
        .use_code(SecretHash::of(presented.code.as_bytes()))
        .await?
    {
        CodeRedemption::First(record) => record,
        CodeRedemption::Unknown => return Err(grant("the code is not valid")),
        CodeRedemption::Replayed(record) => {
            let grant_id = &record.authorization.grant_id;
            ports.revoke_grant(grant_id, revoke_until).await?;
            tracing::info!(client_id = %record.authorization.client_id, %grant_id, "authorization code replayed: its grant is revoked");
            return Err(grant(
                "the code was used before; the tokens it issued are revoked",
            ));
        }
    };
    if record.authorization.client_id != client.id {
        return Err(grant("the code was issued to another client"));
    }
    if record.expires_at <= now {
        return Err(grant("the code has expired"));
    }
    if !record.redirect_uri.is_empty() && presented.redirect_uri != Some(&record.redirect_uri) {
        return Err(grant(
            "redirect_uri differs from the authorization request's",
        ));
    }
    match (&record.code_challenge, presented.code_verifier) {
        (Some(challenge), Some(verifier)) if pkce::verifies(challenge, verifier) => {}
        (Some(_), Some(_)) => return Err(grant("code_verifier does not match the code_challenge")),
        (Some(_), None) => return Err(grant("missing code_verifier")),
        // A verifier for a code without a challenge: a downgrade attempt.
        (None, Some(_)) => return Err(grant("the code was issued without a code_challenge")),
        (None, None) => {}
    }
    Ok(record)
}

fn grant(text: &'static str) -> OAuthError {
    OAuthError::InvalidGrant(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signin::testing::{SignInPorts, VERIFIER, authorization, params, web_registry};
    use crate::{signin::authorize, testing::NOW};

    async fn issued(ports: &SignInPorts) -> String {
        let request = authorize::validate(&web_registry(), &params(), NOW).unwrap();
        issue(ports, &request, authorization(), NOW).await.unwrap()
    }

    fn redemption(code: &str) -> Redemption<'_> {
        Redemption {
            code,
            redirect_uri: Some("https://app.example/cb"),
            code_verifier: Some(VERIFIER),
        }
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once_and_a_replay_revokes_its_grant() {
        let reg = web_registry();
        let web = reg.client("web").unwrap();
        let ports = SignInPorts::default();
        let code = issued(&ports).await;
        assert!(code.starts_with(CODE_PREFIX));
        assert!(
            ports
                .codes
                .lock()
                .unwrap()
                .contains_key(&SecretHash::of(code.as_bytes())),
            "stored by digest"
        );
        let record = redeem(&ports, web, redemption(&code), NOW + 1, NOW + 999)
            .await
            .unwrap();
        assert_eq!(record.authorization, authorization());
        assert!(ports.revoked.lock().unwrap().is_empty());
        let again = redeem(&ports, web, redemption(&code), NOW + 2, NOW + 999).await;
        assert!(matches!(again, Err(OAuthError::InvalidGrant(_))));
        assert_eq!(
            ports.revoked.lock().unwrap().as_slice(),
            [("grant-1".to_owned(), NOW + 999)]
        );
    }

    #[tokio::test]
    async fn a_code_is_bound_to_pkce_the_redirect_uri_the_client_and_60_seconds() {
        let reg = web_registry();
        let web = reg.client("web").unwrap();
        let other = reg.client("other").unwrap();
        let ports = SignInPorts::default();
        let cases: [(Redemption<'static>, &Client, u64); 6] = [
            (
                Redemption {
                    code_verifier: None,
                    ..redemption("")
                },
                web,
                NOW,
            ),
            (
                Redemption {
                    code_verifier: Some("wrong-verifier-wrong-verifier-wrong-verifier-x"),
                    ..redemption("")
                },
                web,
                NOW,
            ),
            (
                Redemption {
                    redirect_uri: Some("https://app.example/other"),
                    ..redemption("")
                },
                web,
                NOW,
            ),
            (
                Redemption {
                    redirect_uri: None,
                    ..redemption("")
                },
                web,
                NOW,
            ),
            (redemption(""), other, NOW),
            (redemption(""), web, NOW + CODE_TTL),
        ];
        for (i, (presented, client, at)) in cases.into_iter().enumerate() {
            let code = issued(&ports).await;
            let presented = Redemption {
                code: &code,
                ..presented
            };
            let refused = redeem(&ports, client, presented, at, NOW + 999).await;
            assert!(
                matches!(refused, Err(OAuthError::InvalidGrant(_))),
                "case {i}: {refused:?}"
            );
        }
        assert!(matches!(
            redeem(&ports, web, redemption("tmc_unknown"), NOW, NOW).await,
            Err(OAuthError::InvalidGrant(_))
        ));
        assert!(ports.revoked.lock().unwrap().is_empty());
    }
}
