//! Fakes of the sign-in ports and a registry with sign-in clients.

use std::{collections::HashMap, sync::Mutex};

use tokenmesh_tokens::secret::SecretHash;

use crate::{
    OAuthError,
    ports::{AuthorizationCodes, Grants, RefreshTokens},
    registry::Registry,
    testing::{doc, registry, scopes},
};

use super::{
    authorize::AuthorizeParams,
    grant::{Authorization, CodeRecord, CodeRedemption, RefreshRecord},
};

// RFC 7636 Appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// Clients `web` and `other` with the sign-in grants and a static provider.
pub fn web_registry() -> Registry {
    let client = |id: &str| {
        doc(
            "OAuthClient",
            id,
            &format!(
                "  clientId: {id}\n  grantTypes: [authorization_code, refresh_token]\n  authentication: {{method: client_secret_basic, secretRef: {{name: s, key: k}}}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  redirectUris: [\"https://app.example/cb\", \"https://app.example/2\"]\n  identityProviders: [dev]\n"
            ),
        )
    };
    let provider = doc(
        "IdentityProvider",
        "dev",
        &format!(
            "  type: static\n  static:\n    users: [{{username: alice, passwordHash: \"{}\"}}]\n",
            crate::password::DUMMY_HASH
        ),
    );
    registry(&(scopes() + &provider + &client("web") + &client("other")))
}

pub fn params() -> AuthorizeParams {
    AuthorizeParams {
        response_type: Some("code".into()),
        client_id: Some("web".into()),
        redirect_uri: Some("https://app.example/cb".into()),
        scope: Some("openid profile orders:read".into()),
        state: Some("xyz".into()),
        nonce: Some("n-1".into()),
        code_challenge: Some(CHALLENGE.into()),
        code_challenge_method: Some("S256".into()),
        ..AuthorizeParams::default()
    }
}

pub fn authorization() -> Authorization {
    Authorization {
        grant_id: "grant-1".into(),
        client_id: "web".into(),
        subject: "alice".into(),
        scopes: vec!["openid".into(), "profile".into()],
        audiences: vec!["orders".into()],
        sid: Some("sid-1".into()),
        auth_time: crate::testing::NOW - 100,
        amr: vec!["pwd".into()],
        acr: None,
        claims: serde_json::Map::new(),
        requested_claims: None,
    }
}

#[derive(Default)]
pub struct SignInPorts {
    /// Codes by digest, with their use count.
    pub codes: Mutex<HashMap<SecretHash, (CodeRecord, u32)>>,
    pub refresh: Mutex<HashMap<SecretHash, RefreshRecord>>,
    /// Grants revoked, with until when.
    pub revoked: Mutex<Vec<(String, u64)>>,
}

impl AuthorizationCodes for SignInPorts {
    async fn put_code(&self, hash: SecretHash, code: &CodeRecord) -> Result<(), OAuthError> {
        self.codes.lock().unwrap().insert(hash, (code.clone(), 0));
        Ok(())
    }

    async fn use_code(&self, hash: SecretHash) -> Result<CodeRedemption, OAuthError> {
        Ok(match self.codes.lock().unwrap().get_mut(&hash) {
            None => CodeRedemption::Unknown,
            Some((record, uses)) => {
                *uses += 1;
                if *uses == 1 {
                    CodeRedemption::First(record.clone())
                } else {
                    CodeRedemption::Replayed(record.clone())
                }
            }
        })
    }
}

impl RefreshTokens for SignInPorts {
    async fn put_refresh_token(
        &self,
        hash: SecretHash,
        token: &RefreshRecord,
    ) -> Result<(), OAuthError> {
        self.refresh.lock().unwrap().insert(hash, token.clone());
        Ok(())
    }

    async fn refresh_token(&self, hash: SecretHash) -> Result<Option<RefreshRecord>, OAuthError> {
        Ok(self.refresh.lock().unwrap().get(&hash).cloned())
    }

    async fn rotate_refresh_token(
        &self,
        old: SecretHash,
        next_hash: SecretHash,
        next: &RefreshRecord,
    ) -> Result<bool, OAuthError> {
        let mut tokens = self.refresh.lock().unwrap();
        match tokens.get_mut(&old) {
            Some(record) if !record.rotated => record.rotated = true,
            _ => return Ok(false),
        }
        tokens.insert(next_hash, next.clone());
        Ok(true)
    }
}

impl Grants for SignInPorts {
    async fn revoke_grant(&self, grant_id: &str, until: u64) -> Result<(), OAuthError> {
        self.revoked
            .lock()
            .unwrap()
            .push((grant_id.to_owned(), until));
        Ok(())
    }

    async fn is_grant_revoked(&self, grant_id: &str, _: &str) -> Result<bool, OAuthError> {
        Ok(self
            .revoked
            .lock()
            .unwrap()
            .iter()
            .any(|(g, _)| g == grant_id))
    }
}
