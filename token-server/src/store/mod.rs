//! Durable state behind one trait, so a PostgreSQL backend can sit beside the
//! embedded SQLite one without touching callers.

mod batch;
mod checkpoint;
mod data_dir;
mod postgres;
mod rows;
mod signin;
mod sqlite;
#[cfg(test)]
mod suite;

use async_trait::async_trait;
pub use data_dir::DataDirLock;
pub use postgres::PgStore;
pub use signin::{AuthCode, CodeUse, PendingSignIn, RefreshToken, SsoSession};
pub use sqlite::SqliteStore;
use tokenmesh_tokens::secret::SecretHash;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
    /// Another process holds the embedded store's data directory.
    #[error("{0}")]
    InUse(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        // sqlx errors carry no parameter values, so no token reaches the message.
        Self::Unavailable(err.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A signing key as kept in the store: the private key in PKCS#8 DER, or
/// sealed by `key_wrap` when `keyEncryptionKeyRef` is set.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub pkcs8: Vec<u8>,
    pub created_at: u64,
    /// From when it signs.
    pub activates_at: u64,
    /// From when it no longer signs.
    pub retires_at: Option<u64>,
    /// Until when it stays in the JWKS.
    pub publish_until: Option<u64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .field("publish_until", &self.publish_until)
            .finish_non_exhaustive()
    }
}

/// An opaque token, found by the digest of its value.
#[derive(Debug, Clone, PartialEq)]
pub struct OpaqueToken {
    pub hash: SecretHash,
    pub jti: String,
    pub client_id: String,
    pub grant_id: String,
    pub expires_at: u64,
    /// The token's claims as JSON.
    pub claims: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// One token, by its `jti`.
    Token,
    /// Every token issued under a grant.
    Grant,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Token => "jti",
            Self::Grant => "grant",
        }
    }
}

/// A revocation, with its place in the revocation sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub seq: i64,
    pub kind: RevocationKind,
    pub id: String,
    /// When the revoked tokens have all expired; the record may go then.
    pub expires_at: u64,
}

/// See [`Store::change_marks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeMarks {
    /// The latest revocation's `seq`.
    pub revoked: i64,
    /// Bumped by every `put_resource`.
    pub resources: i64,
    /// Bumped by every signing-key write or deletion.
    pub keys: i64,
}

/// Bumps the `keys` mark, in the transaction that changed a signing key.
pub(crate) const BUMP_KEYS_MARK: &str = "INSERT INTO marks (name, value) VALUES ('keys', 1) ON CONFLICT (name) DO UPDATE SET value = marks.value + 1";

#[async_trait]
pub trait Store: Send + Sync {
    /// Flushes and closes connections (on shutdown).
    async fn close(&self);

    /// Whether the store answers.
    async fn ping(&self) -> StoreResult<()>;

    async fn signing_keys(&self) -> StoreResult<Vec<StoredKey>>;
    /// Inserts or updates a key.
    async fn save_signing_key(&self, key: &StoredKey) -> StoreResult<()>;
    async fn delete_signing_key(&self, kid: &str) -> StoreResult<()>;
    /// After keys were rewritten in place (sealed): leaves no copy of what
    /// they were in files the store keeps (SQLite: its write-ahead log).
    async fn forget_overwritten_keys(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn put_opaque_token(&self, token: &OpaqueToken) -> StoreResult<()>;
    async fn opaque_token(&self, hash: &SecretHash) -> StoreResult<Option<OpaqueToken>>;

    /// Records a revocation and returns its sequence number.
    async fn revoke(&self, kind: RevocationKind, id: &str, expires_at: u64) -> StoreResult<i64>;
    /// Whether the token `jti`, its grant, or what the grant issued to
    /// `client_id` ([`client_grant_id`](tokenmesh_tokens::revoked::client_grant_id)) is revoked.
    async fn is_revoked(
        &self,
        jti: &str,
        grant_id: Option<&str>,
        client_id: &str,
    ) -> StoreResult<bool>;
    /// Revocations after `seq`, oldest first.
    async fn revocations_after(&self, seq: i64, limit: u32) -> StoreResult<Vec<Revocation>>;

    /// Records a single-use identifier (`jti` of a client assertion); false
    /// when it was seen before.
    async fn use_once(&self, issuer: &str, jti: &str, expires_at: u64) -> StoreResult<bool>;

    /// Drops what expired before `now`; returns how many rows went.
    async fn purge_expired(&self, now: u64) -> StoreResult<u64>;

    /// Stores a resource applied through ControlService (`key` is Kind/name);
    /// an empty document is a deletion (a tombstone, so a resource from a
    /// file stays deleted on every replica).
    async fn put_resource(&self, key: &str, document: &str) -> StoreResult<()>;
    /// Every stored resource document, in the order they were first applied.
    async fn resources(&self) -> StoreResult<Vec<(String, String)>>;

    /// Marks that move when any replica revokes, changes resources or
    /// changes signing keys.
    async fn change_marks(&self) -> StoreResult<ChangeMarks>;

    /// Takes the key-rotation lock if no other replica holds it.
    async fn try_lock_rotation(&self) -> StoreResult<Option<RotationLock>>;

    /// Stores a new authorization code; returns once it is durable.
    async fn put_auth_code(&self, code: &AuthCode) -> StoreResult<()>;
    /// Redeems the code whose digest is `hash`: the first redemption, a
    /// replay, or no such code. Atomic, so two redemptions racing see one
    /// `First`.
    async fn use_auth_code(&self, hash: &SecretHash) -> StoreResult<CodeUse>;

    async fn put_session(&self, session: &SsoSession) -> StoreResult<()>;
    async fn session(&self, hash: &SecretHash) -> StoreResult<Option<SsoSession>>;
    /// Moves a session's idle end (it was used).
    async fn touch_session(&self, hash: &SecretHash, idle_expires_at: u64) -> StoreResult<()>;
    /// Ends the session whose public id is `sid`; false when there was none.
    async fn end_session(&self, sid: &str) -> StoreResult<bool>;

    async fn put_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    async fn refresh_token(&self, hash: &SecretHash) -> StoreResult<Option<RefreshToken>>;
    /// Marks `old` rotated and stores `next`, in one transaction; false,
    /// and nothing written, when `old` was rotated already (a reuse).
    async fn rotate_refresh_token(
        &self,
        old: &SecretHash,
        next: &RefreshToken,
    ) -> StoreResult<bool>;

    /// Keeps a sign-in sent to an upstream OpenID Provider until it comes back.
    async fn put_pending_sign_in(&self, pending: &PendingSignIn) -> StoreResult<()>;
    /// Takes the pending sign-in whose `state` digest is `hash`: atomically
    /// (of two takes racing, one gets it), once, and only before it expired.
    async fn take_pending_sign_in(
        &self,
        hash: &SecretHash,
        now: u64,
    ) -> StoreResult<Option<PendingSignIn>>;

    /// The scopes `subject` consented to for `client_id` (space-separated).
    async fn consent(&self, subject: &str, client_id: &str) -> StoreResult<Option<String>>;
    /// Records (replaces) the scopes consented to.
    async fn put_consent(&self, subject: &str, client_id: &str, scope: &str) -> StoreResult<()>;
}

/// Held while one replica rotates signing keys; released with [`RotationLock::release`].
pub enum RotationLock {
    /// A single replica needs no lock.
    Local,
    /// A PostgreSQL session-level advisory lock, held by this connection.
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl RotationLock {
    pub async fn release(self) {
        if let Self::Postgres(mut connection) = self {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(postgres::ROTATION_LOCK)
                .execute(&mut *connection)
                .await;
        }
    }
}
