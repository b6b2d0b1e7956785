//! The row types both backends read, with one mapping to the store's types:
//! each backend keeps only its SQL. Integers are `i64` in both databases
//! (SQLite INTEGER, PostgreSQL BIGINT) and `u64` outside the store.
//!
//! `sqlx::FromRow` is implemented by `from_row!` for SQLite's and
//! PostgreSQL's rows rather than derived: the derive (sqlx's `derive`
//! feature) would also build sqlx's macro crate with both drivers and TLS for
//! the build host, a second aws-lc and SQLite compile in every release build.

use sqlx::{FromRow, Row, postgres::PgRow, sqlite::SqliteRow};
use tokenmesh_tokens::secret::SecretHash;

use super::{
    ChangeMarks, OpaqueToken, Revocation, RevocationKind, StoredKey,
    signin::{AuthCode, PendingSignIn, RefreshToken, SsoSession},
};

pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// `signing_keys`: `SELECT kid, alg, pkcs8, created_at, activates_at, retires_at, publish_until`.
pub(super) struct KeyRow {
    kid: String,
    alg: String,
    pkcs8: Vec<u8>,
    created_at: i64,
    activates_at: i64,
    retires_at: Option<i64>,
    publish_until: Option<i64>,
}

impl From<KeyRow> for StoredKey {
    fn from(row: KeyRow) -> Self {
        Self {
            kid: row.kid,
            alg: row.alg,
            pkcs8: row.pkcs8,
            created_at: uint(row.created_at),
            activates_at: uint(row.activates_at),
            retires_at: row.retires_at.map(uint),
            publish_until: row.publish_until.map(uint),
        }
    }
}

/// `opaque_tokens`: `SELECT hash, jti, client_id, grant_id, expires_at, claims`.
#[derive(Clone)]
pub(super) struct OpaqueRow {
    pub(super) hash: Vec<u8>,
    jti: String,
    client_id: String,
    grant_id: String,
    expires_at: i64,
    claims: String,
}

impl OpaqueRow {
    /// The token whose digest is `hash` (the row's own is what was asked for).
    pub(super) fn into_token(self, hash: SecretHash) -> OpaqueToken {
        OpaqueToken {
            hash,
            jti: self.jti,
            client_id: self.client_id,
            grant_id: self.grant_id,
            expires_at: uint(self.expires_at),
            claims: self.claims,
        }
    }
}

/// `revocations`: `SELECT seq, kind, id, expires_at`.
pub(super) struct RevocationRow {
    seq: i64,
    kind: String,
    id: String,
    expires_at: i64,
}

impl From<RevocationRow> for Revocation {
    fn from(row: RevocationRow) -> Self {
        Self {
            seq: row.seq,
            kind: if row.kind == RevocationKind::Grant.as_str() {
                RevocationKind::Grant
            } else {
                RevocationKind::Token
            },
            id: row.id,
            expires_at: uint(row.expires_at),
        }
    }
}

/// `SELECT ... AS revoked, ... AS resources, ... AS keys`.
pub(super) struct MarksRow {
    revoked: i64,
    resources: i64,
    keys: i64,
}

impl From<MarksRow> for ChangeMarks {
    fn from(row: MarksRow) -> Self {
        Self {
            revoked: row.revoked,
            resources: row.resources,
            keys: row.keys,
        }
    }
}

fn hash_of(bytes: &[u8]) -> Result<SecretHash, sqlx::Error> {
    SecretHash::from_bytes(bytes)
        .ok_or_else(|| sqlx::Error::Decode("a stored digest is not 32 bytes".into()))
}

/// `auth_codes`, with `used` (`signin::sql::USE_CODE`).
pub(super) struct CodeRow {
    hash: Vec<u8>,
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    scope: String,
    nonce: Option<String>,
    session_id: Option<String>,
    subject: String,
    auth_time: i64,
    grant_id: String,
    expires_at: i64,
    details: String,
    pub(super) used: i64,
}

impl TryFrom<CodeRow> for AuthCode {
    type Error = sqlx::Error;
    fn try_from(row: CodeRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            hash: hash_of(&row.hash)?,
            client_id: row.client_id,
            redirect_uri: row.redirect_uri,
            code_challenge: row.code_challenge,
            scope: row.scope,
            nonce: row.nonce,
            session_id: row.session_id,
            subject: row.subject,
            auth_time: uint(row.auth_time),
            grant_id: row.grant_id,
            expires_at: uint(row.expires_at),
            details: row.details,
        })
    }
}

/// `sso_sessions` (`signin::sql::SESSION`).
pub(super) struct SessionRow {
    hash: Vec<u8>,
    sid: String,
    subject: String,
    idp: String,
    auth_time: i64,
    amr: String,
    expires_at: i64,
    idle_expires_at: i64,
    claims: String,
}

impl TryFrom<SessionRow> for SsoSession {
    type Error = sqlx::Error;
    fn try_from(row: SessionRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            hash: hash_of(&row.hash)?,
            sid: row.sid,
            subject: row.subject,
            idp: row.idp,
            auth_time: uint(row.auth_time),
            amr: row.amr,
            expires_at: uint(row.expires_at),
            idle_expires_at: uint(row.idle_expires_at),
            claims: row.claims,
        })
    }
}

/// `refresh_tokens` (`signin::sql::REFRESH`).
pub(super) struct RefreshRow {
    hash: Vec<u8>,
    grant_id: String,
    client_id: String,
    subject: String,
    scope: String,
    session_id: Option<String>,
    auth_time: i64,
    expires_at: i64,
    idle_expires_at: i64,
    rotated: i64,
    details: String,
}

impl TryFrom<RefreshRow> for RefreshToken {
    type Error = sqlx::Error;
    fn try_from(row: RefreshRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            hash: hash_of(&row.hash)?,
            grant_id: row.grant_id,
            client_id: row.client_id,
            subject: row.subject,
            scope: row.scope,
            session_id: row.session_id,
            auth_time: uint(row.auth_time),
            expires_at: uint(row.expires_at),
            idle_expires_at: uint(row.idle_expires_at),
            rotated: row.rotated != 0,
            details: row.details,
        })
    }
}

/// `upstream_sign_ins` (`signin::sql::TAKE_PENDING`).
pub(super) struct PendingRow {
    state_hash: Vec<u8>,
    browser_hash: Vec<u8>,
    provider: String,
    nonce: String,
    verifier: String,
    request: String,
    created_at: i64,
    expires_at: i64,
}

impl TryFrom<PendingRow> for PendingSignIn {
    type Error = sqlx::Error;
    fn try_from(row: PendingRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            state_hash: hash_of(&row.state_hash)?,
            browser_hash: hash_of(&row.browser_hash)?,
            provider: row.provider,
            nonce: row.nonce,
            verifier: row.verifier,
            request: row.request,
            created_at: uint(row.created_at),
            expires_at: uint(row.expires_at),
        })
    }
}

/// `impl FromRow` for each backend's row: the row type and its columns,
/// read by name.
macro_rules! from_row {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        from_row!(@impl SqliteRow, $ty { $($field),* });
        from_row!(@impl PgRow, $ty { $($field),* });
    };
    (@impl $row:ty, $ty:ident { $($field:ident),* }) => {
        impl FromRow<'_, $row> for $ty {
            fn from_row(row: &$row) -> Result<Self, sqlx::Error> {
                Ok(Self { $($field: row.try_get(stringify!($field))?),* })
            }
        }
    };
}

from_row!(KeyRow {
    kid,
    alg,
    pkcs8,
    created_at,
    activates_at,
    retires_at,
    publish_until
});
from_row!(OpaqueRow {
    hash,
    jti,
    client_id,
    grant_id,
    expires_at,
    claims
});
from_row!(RevocationRow {
    seq,
    kind,
    id,
    expires_at
});
from_row!(MarksRow {
    revoked,
    resources,
    keys
});
from_row!(CodeRow {
    hash,
    client_id,
    redirect_uri,
    code_challenge,
    scope,
    nonce,
    session_id,
    subject,
    auth_time,
    grant_id,
    expires_at,
    details,
    used
});
from_row!(SessionRow {
    hash,
    sid,
    subject,
    idp,
    auth_time,
    amr,
    expires_at,
    idle_expires_at,
    claims
});
from_row!(RefreshRow {
    hash,
    grant_id,
    client_id,
    subject,
    scope,
    session_id,
    auth_time,
    expires_at,
    idle_expires_at,
    rotated,
    details
});
from_row!(PendingRow {
    state_hash,
    browser_hash,
    provider,
    nonce,
    verifier,
    request,
    created_at,
    expires_at
});
