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

use super::{ChangeMarks, OpaqueToken, Revocation, RevocationKind, StoredKey};

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
