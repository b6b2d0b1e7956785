//! In-memory fakes of the ports and a registry from YAML, for the core's
//! unit tests.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use tokenmesh_crds::{SecretKeyRef, SigningAlgorithm};
use tokenmesh_tokens::{claims::AccessTokenClaims, secret::SecretHash};

use crate::{
    OAuthError,
    document::parse_documents,
    ports::{
        AssertionReplay, ClusterToken, OpaqueTokens, PresentedTokens, ServiceAccountTokens, Signer,
    },
    registry::{KubernetesSettings, Registry, SecretSource, ServiceAccount},
};

pub const ISSUER: &str = "https://issuer.test";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const NOW: u64 = 1_800_000_000;

struct Secrets;
impl SecretSource for Secrets {
    fn read(&self, _: &SecretKeyRef) -> Result<Vec<u8>, String> {
        Ok(SECRET.as_bytes().to_vec())
    }
}

/// A registry of `yaml`, with the issuer [`ISSUER`].
pub fn registry(yaml: &str) -> Registry {
    let docs = parse_documents(None, yaml).unwrap();
    Registry::new(ISSUER.into(), Some(ISSUER.into()))
        .from_documents(&docs, &Secrets)
        .unwrap()
}

/// The ports, in memory. A "signed" token is `signed.<alg>.<jti>`, and it is
/// active (to [`PresentedTokens`]) once signed or stored, unless revoked.
#[derive(Default)]
pub struct FakePorts {
    pub active: Mutex<HashMap<String, AccessTokenClaims>>,
    pub opaque: Mutex<HashMap<SecretHash, AccessTokenClaims>>,
    pub used: Mutex<HashSet<(String, String)>>,
    /// The service account the cluster vouches for, if any.
    pub cluster: Option<Result<ServiceAccount, OAuthError>>,
}

impl FakePorts {
    /// Makes `token` stand for `claims`, as if this server had issued it.
    pub fn present(&self, token: &str, claims: AccessTokenClaims) {
        self.active.lock().unwrap().insert(token.to_owned(), claims);
    }

    pub fn claims_of(&self, token: &str) -> AccessTokenClaims {
        self.active.lock().unwrap()[token].clone()
    }
}

impl Signer for FakePorts {
    fn sign_access_token(
        &self,
        alg: SigningAlgorithm,
        claims: &AccessTokenClaims,
    ) -> Result<String, OAuthError> {
        let token = format!("signed.{}.{}", alg.as_str(), claims.jti);
        self.present(&token, claims.clone());
        Ok(token)
    }
}

impl OpaqueTokens for FakePorts {
    async fn put_opaque_token(
        &self,
        hash: SecretHash,
        claims: &AccessTokenClaims,
    ) -> Result<(), OAuthError> {
        self.opaque.lock().unwrap().insert(hash, claims.clone());
        Ok(())
    }
}

impl PresentedTokens for FakePorts {
    async fn active_claims(&self, token: &str) -> Result<Option<AccessTokenClaims>, OAuthError> {
        let hash = tokenmesh_tokens::opaque::key(token);
        Ok(self
            .active
            .lock()
            .unwrap()
            .get(token)
            .cloned()
            .or_else(|| self.opaque.lock().unwrap().get(&hash).cloned()))
    }
}

impl AssertionReplay for FakePorts {
    async fn use_once(&self, client_id: &str, jti: &str, _until: u64) -> Result<bool, OAuthError> {
        Ok(self
            .used
            .lock()
            .unwrap()
            .insert((client_id.to_owned(), jti.to_owned())))
    }
}

impl ServiceAccountTokens for FakePorts {
    fn is_cluster_token(
        &self,
        _: &KubernetesSettings,
        iss: &str,
        _: Option<&str>,
    ) -> Result<ClusterToken, OAuthError> {
        Ok(if iss == "https://kubernetes.default.svc" {
            ClusterToken::Yes
        } else {
            ClusterToken::No {
                cluster_issuer: Some("https://kubernetes.default.svc".into()),
            }
        })
    }

    async fn verify(
        &self,
        _: &KubernetesSettings,
        _: &str,
        _: u64,
    ) -> Result<ServiceAccount, OAuthError> {
        self.cluster
            .clone()
            .unwrap_or(Err(OAuthError::KeysUnavailable))
    }
}

/// `kind: <kind>` document text with `spec`.
pub fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

/// Scopes `orders:read`, `orders:write` and the prefix `video_` (60 s).
pub fn scopes() -> String {
    doc("Scope", "r", "  name: \"orders:read\"\n")
        + &doc("Scope", "w", "  name: \"orders:write\"\n")
        + &doc("Scope", "v", "  prefix: video_\n  ttl: 60s\n")
}

/// A client of `client_secret_basic` with the token-exchange grant too.
pub fn client(id: &str, audiences: &str, extra: &str) -> String {
    doc(
        "OAuthClient",
        id,
        &format!(
            "  clientId: {id}\n  grantTypes: [client_credentials, \"urn:ietf:params:oauth:grant-type:token-exchange\"]\n  authentication: {{method: client_secret_basic, secretRef: {{name: s, key: k}}}}\n  scopes: [\"orders:read\", \"orders:write\", video_]\n  audiences: [{audiences}]\n{extra}"
        ),
    )
}
