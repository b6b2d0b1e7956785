//! The side effects the domain needs, each behind a small trait the token
//! server implements (and tests fake).

use std::future::Future;

use tokenmesh_crds::SigningAlgorithm;
use tokenmesh_tokens::{claims::AccessTokenClaims, secret::SecretHash};

use crate::{
    error::OAuthError,
    registry::{KubernetesSettings, ServiceAccount},
    signin::{
        grant::{CodeRecord, CodeRedemption, RefreshRecord},
        id_token::IdTokenClaims,
    },
};

/// Signs access tokens with the current key of an algorithm.
pub trait Signer: Send + Sync {
    fn sign_access_token(
        &self,
        alg: SigningAlgorithm,
        claims: &AccessTokenClaims,
    ) -> Result<String, OAuthError>;
}

/// Where opaque tokens' claims are kept, by digest of the token value.
pub trait OpaqueTokens: Send + Sync {
    /// Returns once the record is durable: a token answered is never lost.
    fn put_opaque_token(
        &self,
        hash: SecretHash,
        claims: &AccessTokenClaims,
    ) -> impl Future<Output = Result<(), OAuthError>> + Send;
}

/// Tokens presented to this server (subject and actor tokens).
pub trait PresentedTokens: Send + Sync {
    /// The claims of `token` if this server issued it and it is active:
    /// known, signed by a published key, not expired, not revoked.
    fn active_claims(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Option<AccessTokenClaims>, OAuthError>> + Send;
}

/// Client assertions are used once (RFC 7523 §3, `jti`).
pub trait AssertionReplay: Send + Sync {
    /// True the first time `jti` of `client_id` is seen; remembered until
    /// `until` (unix seconds).
    fn use_once(
        &self,
        client_id: &str,
        jti: &str,
        until: u64,
    ) -> impl Future<Output = Result<bool, OAuthError>> + Send;
}

/// Whether an assertion is a service-account token of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterToken {
    /// It is: verify it as one.
    Yes,
    /// It is not; the cluster's issuer, when known, for the message.
    No { cluster_issuer: Option<String> },
}

/// Verifies the cluster's service-account tokens (TokenServer
/// `spec.kubernetes`).
pub trait ServiceAccountTokens: Send + Sync {
    /// Routes an assertion by its unverified `iss` and `sub`;
    /// `KeysUnavailable` when the verifier cannot be set up.
    fn is_cluster_token(
        &self,
        settings: &KubernetesSettings,
        iss: &str,
        sub: Option<&str>,
    ) -> Result<ClusterToken, OAuthError>;

    /// The service account a token proves, or the refusal to answer with
    /// (`invalid_client`, or `temporarily_unavailable` when the cluster
    /// cannot be asked).
    fn verify(
        &self,
        settings: &KubernetesSettings,
        token: &str,
        now: u64,
    ) -> impl Future<Output = Result<ServiceAccount, OAuthError>> + Send;
}

/// One-time authorization codes, by digest of the code.
pub trait AuthorizationCodes: Send + Sync {
    /// Returns once the code is durable.
    fn put_code(
        &self,
        hash: SecretHash,
        code: &CodeRecord,
    ) -> impl Future<Output = Result<(), OAuthError>> + Send;

    /// Redeems a code, atomically: exactly one redemption is `First`.
    fn use_code(
        &self,
        hash: SecretHash,
    ) -> impl Future<Output = Result<CodeRedemption, OAuthError>> + Send;
}

/// Refresh tokens, by digest of the token.
pub trait RefreshTokens: Send + Sync {
    fn put_refresh_token(
        &self,
        hash: SecretHash,
        token: &RefreshRecord,
    ) -> impl Future<Output = Result<(), OAuthError>> + Send;

    fn refresh_token(
        &self,
        hash: SecretHash,
    ) -> impl Future<Output = Result<Option<RefreshRecord>, OAuthError>> + Send;

    /// Marks `old` rotated and stores `next` at once; false (nothing
    /// written) when `old` was rotated already.
    fn rotate_refresh_token(
        &self,
        old: SecretHash,
        next_hash: SecretHash,
        next: &RefreshRecord,
    ) -> impl Future<Output = Result<bool, OAuthError>> + Send;
}

/// Revocation of a whole grant (every token issued under it), and the check.
pub trait Grants: Send + Sync {
    /// Revokes the grant until `until` (when its last token expires).
    fn revoke_grant(
        &self,
        grant_id: &str,
        until: u64,
    ) -> impl Future<Output = Result<(), OAuthError>> + Send;

    fn is_grant_revoked(
        &self,
        grant_id: &str,
        client_id: &str,
    ) -> impl Future<Output = Result<bool, OAuthError>> + Send;
}

/// Signs ID tokens (`typ: JWT`).
pub trait IdTokenSigner: Send + Sync {
    fn sign_id_token(
        &self,
        alg: SigningAlgorithm,
        claims: &IdTokenClaims,
    ) -> Result<String, OAuthError>;
}
