//! Refresh tokens (RFC 6749 §6, RFC 9700 §4.14): opaque, stored by digest,
//! rotated on every use. A rotated token presented again means two parties
//! hold it: the whole grant is revoked.

use tokenmesh_crds::GrantType;
use tokenmesh_tokens::secret::{SecretHash, random_token};

use crate::{
    error::OAuthError,
    plan,
    ports::{Grants, RefreshTokens},
    registry::{Client, SignIn},
};

use super::grant::{Authorization, RefreshRecord};

/// Prefix of refresh tokens, so secret scanners can find leaked ones.
pub const REFRESH_PREFIX: &str = "tmr_";
const MAX_TOKEN: usize = 256;

/// Whether a grant gets a refresh token: the client must have the grant
/// type, and an OpenID Connect grant must have asked `offline_access`.
pub fn is_offered(client: &Client, authorization: &Authorization) -> bool {
    client.grant_types.contains(&GrantType::RefreshToken)
        && (!authorization.is_oidc() || authorization.has_scope("offline_access"))
}

fn new_value() -> Result<(String, SecretHash), OAuthError> {
    let token = format!(
        "{REFRESH_PREFIX}{}",
        random_token().map_err(|_| OAuthError::Internal)?
    );
    let hash = SecretHash::of(token.as_bytes());
    Ok((token, hash))
}

/// Issues the first refresh token of a grant.
pub async fn issue(
    ports: &impl RefreshTokens,
    settings: &SignIn,
    authorization: &Authorization,
    now: u64,
) -> Result<String, OAuthError> {
    let (token, hash) = new_value()?;
    let expires_at = now.saturating_add(settings.refresh_token_ttl.as_secs());
    let record = RefreshRecord {
        authorization: authorization.clone(),
        expires_at,
        idle_expires_at: now
            .saturating_add(settings.refresh_token_idle_ttl.as_secs())
            .min(expires_at),
        rotated: false,
    };
    ports.put_refresh_token(hash, &record).await?;
    Ok(token)
}

/// A refresh: the authorization for the new access token (its scopes
/// narrowed as asked) and the next refresh token.
#[derive(Debug)]
pub struct Refreshed {
    pub authorization: Authorization,
    pub refresh_token: String,
}

/// Uses a refresh token: checks it, rotates it, and answers with what the
/// new access token may carry (`scope` may only narrow, RFC 6749 §6).
pub async fn refresh(
    ports: &(impl RefreshTokens + Grants),
    client: &Client,
    settings: &SignIn,
    token: &str,
    scope: Option<&str>,
    now: u64,
) -> Result<Refreshed, OAuthError> {
    if !client.grant_types.contains(&GrantType::RefreshToken) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use the refresh_token grant".into(),
        ));
    }
    if token.len() > MAX_TOKEN {
        return Err(invalid());
    }
    let hash = SecretHash::of(token.as_bytes());
    let record = ports.refresh_token(hash).await?.ok_or_else(invalid)?;
    let grant = &record.authorization;
    // Another client's token is as if unknown: nothing is revealed.
    if grant.client_id != client.id {
        return Err(invalid());
    }
    if ports.is_grant_revoked(&grant.grant_id, &client.id).await? {
        return Err(invalid());
    }
    if record.rotated {
        return Err(reused(ports, &record).await);
    }
    if record.expires_at <= now || record.idle_expires_at <= now {
        return Err(OAuthError::InvalidGrant(
            "the refresh token has expired".into(),
        ));
    }
    let scopes = match scope {
        None => grant.scopes.clone(),
        Some(text) => {
            let asked = plan::requested_scopes(text)?;
            if let Some(extra) = asked.iter().find(|s| !grant.scopes.contains(s)) {
                return Err(OAuthError::InvalidScope(
                    format!("scope {} was not granted", plan::printable(extra)).into(),
                ));
            }
            asked
        }
    };
    let (next_token, next_hash) = new_value()?;
    let next = RefreshRecord {
        authorization: grant.clone(),
        expires_at: record.expires_at,
        idle_expires_at: now
            .saturating_add(settings.refresh_token_idle_ttl.as_secs())
            .min(record.expires_at),
        rotated: false,
    };
    if !ports.rotate_refresh_token(hash, next_hash, &next).await? {
        // Used at the same moment by someone else: a reuse too.
        return Err(reused(ports, &record).await);
    }
    Ok(Refreshed {
        authorization: Authorization {
            scopes,
            ..grant.clone()
        },
        refresh_token: next_token,
    })
}

/// RFC 7009 for a refresh token: revokes its whole grant (§2.1: the access
/// tokens of the grant go with it) until `until`. An unknown token is no
/// error (§2.2); another client's is.
pub async fn revoke(
    ports: &(impl RefreshTokens + Grants),
    client: &Client,
    token: &str,
    until: u64,
) -> Result<(), OAuthError> {
    if token.len() > MAX_TOKEN {
        return Ok(());
    }
    let Some(record) = ports
        .refresh_token(SecretHash::of(token.as_bytes()))
        .await?
    else {
        return Ok(());
    };
    let grant = &record.authorization;
    if grant.client_id != client.id {
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client".into(),
        ));
    }
    ports
        .revoke_grant(&grant.grant_id, until.max(record.expires_at))
        .await?;
    tracing::info!(client_id = %client.id, grant_id = %grant.grant_id, "refresh token revoked with its grant");
    Ok(())
}

/// Revokes the grant of a reused token; the error to answer with.
async fn reused(ports: &impl Grants, record: &RefreshRecord) -> OAuthError {
    let grant = &record.authorization;
    if let Err(err) = ports.revoke_grant(&grant.grant_id, record.expires_at).await {
        return err;
    }
    tracing::info!(client_id = %grant.client_id, grant_id = %grant.grant_id, "refresh token reused: its grant is revoked");
    OAuthError::InvalidGrant("the refresh token was used before; its grant is revoked".into())
}

fn invalid() -> OAuthError {
    OAuthError::InvalidGrant("the refresh token is not valid".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        signin::testing::{SignInPorts, authorization, web_registry},
        testing::NOW,
    };

    #[tokio::test]
    async fn each_use_rotates_and_a_reuse_revokes_the_grant() {
        let reg = web_registry();
        let web = reg.client("web").unwrap();
        let settings = web.sign_in.clone();
        let ports = SignInPorts::default();
        let mut grant = authorization();
        grant.requested_claims = Some(
            crate::signin::claims::ClaimsRequest::parse(r#"{"userinfo": {"email": null}}"#)
                .unwrap(),
        );
        let first = issue(&ports, &settings, &grant, NOW).await.unwrap();
        assert!(first.starts_with(REFRESH_PREFIX));
        let second = refresh(&ports, web, &settings, &first, None, NOW + 10)
            .await
            .unwrap();
        assert_ne!(second.refresh_token, first);
        assert_eq!(second.authorization, grant, "the claims request too");
        let third = refresh(
            &ports,
            web,
            &settings,
            &second.refresh_token,
            Some("openid"),
            NOW + 20,
        )
        .await
        .unwrap();
        assert_eq!(third.authorization.scopes, ["openid"]);
        assert!(ports.revoked.lock().unwrap().is_empty());

        let reuse = refresh(&ports, web, &settings, &first, None, NOW + 30).await;
        assert!(matches!(reuse, Err(OAuthError::InvalidGrant(_))));
        assert_eq!(ports.revoked.lock().unwrap().len(), 1);
        // The newest token of the grant is revoked with it.
        let newest = refresh(&ports, web, &settings, &third.refresh_token, None, NOW + 40).await;
        assert!(matches!(newest, Err(OAuthError::InvalidGrant(_))));
    }

    #[tokio::test]
    async fn scopes_only_narrow_and_tokens_expire_and_stay_with_their_client() {
        let reg = web_registry();
        let web = reg.client("web").unwrap();
        let settings = web.sign_in.clone();
        let ports = SignInPorts::default();
        let token = issue(&ports, &settings, &authorization(), NOW)
            .await
            .unwrap();
        let wider = refresh(&ports, web, &settings, &token, Some("openid email"), NOW).await;
        assert!(matches!(wider, Err(OAuthError::InvalidScope(_))));
        let other = refresh(
            &ports,
            reg.client("other").unwrap(),
            &settings,
            &token,
            None,
            NOW,
        )
        .await;
        assert!(matches!(
            other,
            Err(OAuthError::InvalidGrant(_)) | Err(OAuthError::UnauthorizedClient(_))
        ));
        let idle = NOW + settings.refresh_token_idle_ttl.as_secs();
        let expired = refresh(&ports, web, &settings, &token, None, idle).await;
        assert!(matches!(expired, Err(OAuthError::InvalidGrant(_))));
        assert!(ports.revoked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn revoking_a_refresh_token_revokes_its_grant_for_its_client_only() {
        let reg = web_registry();
        let web = reg.client("web").unwrap();
        let settings = web.sign_in.clone();
        let ports = SignInPorts::default();
        let token = issue(&ports, &settings, &authorization(), NOW)
            .await
            .unwrap();
        let other = revoke(&ports, reg.client("other").unwrap(), &token, NOW).await;
        assert!(matches!(other, Err(OAuthError::UnauthorizedClient(_))));
        revoke(&ports, web, "tmr_unknown", NOW).await.unwrap();
        assert!(ports.revoked.lock().unwrap().is_empty());
        revoke(&ports, web, &token, NOW).await.unwrap();
        assert_eq!(ports.revoked.lock().unwrap()[0].0, "grant-1");
        let after = refresh(&ports, web, &settings, &token, None, NOW + 1).await;
        assert!(matches!(after, Err(OAuthError::InvalidGrant(_))));
    }

    #[test]
    fn oidc_grants_get_a_refresh_token_only_with_offline_access() {
        let reg = web_registry();
        let web = reg.client("web").unwrap();
        let mut grant = authorization();
        assert!(!is_offered(web, &grant));
        grant.scopes.push("offline_access".into());
        assert!(is_offered(web, &grant));
        grant.scopes.retain(|s| s != "openid");
        grant.scopes.retain(|s| s != "offline_access");
        assert!(
            is_offered(web, &grant),
            "plain OAuth: the grant type decides"
        );
    }
}
