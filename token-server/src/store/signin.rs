//! What sign-in keeps in the store: one-time authorization codes, SSO
//! sessions, refresh tokens, consents, and sign-ins waiting for an upstream
//! OpenID Provider's answer. Secrets (codes, session cookies,
//! refresh tokens) are found by the digest of their value only; the rest of
//! a grant the store does not query travels as JSON (`details`).

use tokenmesh_tokens::secret::SecretHash;

/// An authorization code (RFC 6749 §4.1.2): lives 60 s, redeemed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCode {
    pub hash: SecretHash,
    pub client_id: String,
    pub redirect_uri: String,
    /// The PKCE `code_challenge` (S256).
    pub code_challenge: Option<String>,
    pub scope: String,
    pub nonce: Option<String>,
    /// The SSO session's public id (`sid`).
    pub session_id: Option<String>,
    pub subject: String,
    pub auth_time: u64,
    /// The grant the code starts: what it issues carries this id, so a
    /// replayed code revokes it all.
    pub grant_id: String,
    pub expires_at: u64,
    pub details: String,
}

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeUse {
    /// Its first redemption.
    First(AuthCode),
    /// It was redeemed before (RFC 6749 §4.1.2: revoke what it issued).
    Replayed(AuthCode),
    Unknown,
}

/// A signed-in user's session, found by the digest of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoSession {
    pub hash: SecretHash,
    /// Its public id, the ID token's `sid`.
    pub sid: String,
    pub subject: String,
    /// The IdentityProvider that authenticated the user.
    pub idp: String,
    pub auth_time: u64,
    /// Authentication methods (RFC 8176), space-separated.
    pub amr: String,
    /// The absolute end.
    pub expires_at: u64,
    /// The end if unused; moved forward by each use.
    pub idle_expires_at: u64,
    /// The user's claims from the IdentityProvider, as JSON.
    pub claims: String,
}

/// A refresh token; rotated on every use (`rotated` once used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub hash: SecretHash,
    /// The grant (family) every rotation of this token belongs to.
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub session_id: Option<String>,
    pub auth_time: u64,
    pub expires_at: u64,
    pub idle_expires_at: u64,
    pub rotated: bool,
    pub details: String,
}

/// A sign-in sent to an upstream OpenID Provider, waiting for the person to
/// come back (`/oauth2/callback`): kept in the store so any replica can take
/// the callback, found by the digest of the `state` sent upstream, taken
/// once.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingSignIn {
    pub state_hash: SecretHash,
    /// The digest of the browser's CSRF cookie: the callback counts only
    /// in the browser that started the sign-in.
    pub browser_hash: SecretHash,
    /// The IdentityProvider's key.
    pub provider: String,
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The authorization request, as a query string.
    pub request: String,
    pub created_at: u64,
    pub expires_at: u64,
}

impl std::fmt::Debug for PendingSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSignIn")
            .field("provider", &self.provider)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The SQL both backends run (sqlx binds `$n` on SQLite too).
pub(super) mod sql {
    use std::sync::LazyLock;

    /// Codes written in one statement, at most (12 parameters each).
    pub const MAX_CODES: usize = 64;

    /// `INSERT_CODES[n - 1]` inserts n codes: one statement, so one
    /// transaction, for all the codes that queued (group commit, `batch`).
    pub static INSERT_CODES: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..MAX_CODES)
            .map(|rows| {
                let values: Vec<String> = (0..=rows)
                    .map(|row| {
                        let params: Vec<String> =
                            (1..=12).map(|i| format!("${}", row * 12 + i)).collect();
                        format!("({}, 0)", params.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, scope, nonce, session_id, subject, auth_time, grant_id, expires_at, details, used) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    });

    /// Counts every redemption: `used` is 1 after the first.
    pub const USE_CODE: &str = "UPDATE auth_codes SET used = used + 1 WHERE hash = $1 RETURNING hash, client_id, redirect_uri, code_challenge, scope, nonce, session_id, subject, auth_time, grant_id, expires_at, details, used";
    pub const INSERT_SESSION: &str = "INSERT INTO sso_sessions (hash, sid, subject, idp, auth_time, amr, expires_at, idle_expires_at, claims)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    pub const SESSION: &str = "SELECT hash, sid, subject, idp, auth_time, amr, expires_at, idle_expires_at, claims FROM sso_sessions WHERE hash = $1";
    pub const TOUCH_SESSION: &str = "UPDATE sso_sessions SET idle_expires_at = $2 WHERE hash = $1";
    pub const END_SESSION: &str = "DELETE FROM sso_sessions WHERE sid = $1";
    pub const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, session_id, auth_time, expires_at, idle_expires_at, rotated, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10)";
    pub const REFRESH: &str = "SELECT hash, grant_id, client_id, subject, scope, session_id, auth_time, expires_at, idle_expires_at, rotated, details FROM refresh_tokens WHERE hash = $1";
    /// Affects a row only the first time: the rotation that wins.
    pub const ROTATE_REFRESH: &str =
        "UPDATE refresh_tokens SET rotated = 1 WHERE hash = $1 AND rotated = 0";
    pub const INSERT_PENDING: &str = "INSERT INTO upstream_sign_ins (state_hash, browser_hash, provider, nonce, verifier, request, created_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    /// One statement: of two takes racing, one gets the row.
    pub const TAKE_PENDING: &str = "DELETE FROM upstream_sign_ins WHERE state_hash = $1 RETURNING state_hash, browser_hash, provider, nonce, verifier, request, created_at, expires_at";
    pub const CONSENT: &str = "SELECT scope FROM consents WHERE subject = $1 AND client_id = $2";
    pub const PUT_CONSENT: &str =
        "INSERT INTO consents (subject, client_id, scope) VALUES ($1, $2, $3)
        ON CONFLICT (subject, client_id) DO UPDATE SET scope = excluded.scope";
}

/// The sign-in queries for one backend's pool type (`writer` for writes,
/// `reader` for reads: the same pool on PostgreSQL): the binding is the
/// same on both, only the pool differs.
macro_rules! queries {
    ($pool:ty, $db:ty) => {
        use sqlx::Row as _;
        use tokenmesh_tokens::secret::SecretHash;

        use crate::store::{
            StoreError, StoreResult,
            rows::{CodeRow, PendingRow, RefreshRow, SessionRow, int},
            signin::{AuthCode, CodeUse, PendingSignIn, RefreshToken, SsoSession, sql},
        };

        fn decode<R, T: TryFrom<R, Error = sqlx::Error>>(row: R) -> StoreResult<T> {
            T::try_from(row).map_err(|e| StoreError::Corrupt(e.to_string()))
        }

        /// Writes the authorization codes that queued, in one statement:
        /// each request is answered once its code is committed.
        pub(super) struct CodeWriter {
            pub(super) writer: $pool,
        }

        impl crate::store::batch::Batch for CodeWriter {
            type Item = AuthCode;
            type Output = ();

            async fn run(&self, codes: &[AuthCode]) -> StoreResult<Vec<()>> {
                let text = sql::INSERT_CODES
                    .get(codes.len().wrapping_sub(1))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("a batch of {} codes", codes.len()))
                    })?;
                let mut insert = sqlx::query(text.as_str());
                for code in codes {
                    insert = insert
                        .bind(code.hash.as_bytes().as_slice())
                        .bind(&code.client_id)
                        .bind(&code.redirect_uri)
                        .bind(&code.code_challenge)
                        .bind(&code.scope)
                        .bind(&code.nonce)
                        .bind(&code.session_id)
                        .bind(&code.subject)
                        .bind(int(code.auth_time))
                        .bind(&code.grant_id)
                        .bind(int(code.expires_at))
                        .bind(&code.details);
                }
                insert.execute(&self.writer).await?;
                Ok(vec![(); codes.len()])
            }
        }

        pub(super) async fn use_auth_code(
            writer: &$pool,
            hash: &SecretHash,
        ) -> StoreResult<CodeUse> {
            let row: Option<CodeRow> = sqlx::query_as(sql::USE_CODE)
                .bind(hash.as_bytes().as_slice())
                .fetch_optional(writer)
                .await?;
            Ok(match row {
                None => CodeUse::Unknown,
                Some(row) if row.used == 1 => CodeUse::First(decode(row)?),
                Some(row) => CodeUse::Replayed(decode(row)?),
            })
        }

        pub(super) async fn put_session(writer: &$pool, session: &SsoSession) -> StoreResult<()> {
            sqlx::query(sql::INSERT_SESSION)
                .bind(session.hash.as_bytes().as_slice())
                .bind(&session.sid)
                .bind(&session.subject)
                .bind(&session.idp)
                .bind(int(session.auth_time))
                .bind(&session.amr)
                .bind(int(session.expires_at))
                .bind(int(session.idle_expires_at.min(session.expires_at)))
                .bind(&session.claims)
                .execute(writer)
                .await?;
            Ok(())
        }

        pub(super) async fn session(
            reader: &$pool,
            hash: &SecretHash,
        ) -> StoreResult<Option<SsoSession>> {
            let row: Option<SessionRow> = sqlx::query_as(sql::SESSION)
                .bind(hash.as_bytes().as_slice())
                .fetch_optional(reader)
                .await?;
            row.map(decode).transpose()
        }

        pub(super) async fn touch_session(
            writer: &$pool,
            hash: &SecretHash,
            idle_expires_at: u64,
        ) -> StoreResult<()> {
            sqlx::query(sql::TOUCH_SESSION)
                .bind(hash.as_bytes().as_slice())
                .bind(int(idle_expires_at))
                .execute(writer)
                .await?;
            Ok(())
        }

        pub(super) async fn end_session(writer: &$pool, sid: &str) -> StoreResult<bool> {
            let ended = sqlx::query(sql::END_SESSION)
                .bind(sid)
                .execute(writer)
                .await?
                .rows_affected();
            Ok(ended > 0)
        }

        pub(super) async fn put_pending_sign_in(
            writer: &$pool,
            pending: &PendingSignIn,
        ) -> StoreResult<()> {
            sqlx::query(sql::INSERT_PENDING)
                .bind(pending.state_hash.as_bytes().as_slice())
                .bind(pending.browser_hash.as_bytes().as_slice())
                .bind(&pending.provider)
                .bind(&pending.nonce)
                .bind(&pending.verifier)
                .bind(&pending.request)
                .bind(int(pending.created_at))
                .bind(int(pending.expires_at))
                .execute(writer)
                .await?;
            Ok(())
        }

        pub(super) async fn take_pending_sign_in(
            writer: &$pool,
            hash: &SecretHash,
            now: u64,
        ) -> StoreResult<Option<PendingSignIn>> {
            let row: Option<PendingRow> = sqlx::query_as(sql::TAKE_PENDING)
                .bind(hash.as_bytes().as_slice())
                .fetch_optional(writer)
                .await?;
            let pending: Option<PendingSignIn> = row.map(decode).transpose()?;
            Ok(pending.filter(|p| p.expires_at > now))
        }

        fn insert_refresh(
            token: &RefreshToken,
        ) -> sqlx::query::Query<'static, $db, <$db as sqlx::Database>::Arguments> {
            sqlx::query(sql::INSERT_REFRESH)
                .bind(token.hash.as_bytes().as_slice())
                .bind(&token.grant_id)
                .bind(&token.client_id)
                .bind(&token.subject)
                .bind(&token.scope)
                .bind(&token.session_id)
                .bind(int(token.auth_time))
                .bind(int(token.expires_at))
                .bind(int(token.idle_expires_at.min(token.expires_at)))
                .bind(&token.details)
        }

        pub(super) async fn put_refresh_token(
            writer: &$pool,
            token: &RefreshToken,
        ) -> StoreResult<()> {
            insert_refresh(token).execute(writer).await?;
            Ok(())
        }

        pub(super) async fn refresh_token(
            reader: &$pool,
            hash: &SecretHash,
        ) -> StoreResult<Option<RefreshToken>> {
            let row: Option<RefreshRow> = sqlx::query_as(sql::REFRESH)
                .bind(hash.as_bytes().as_slice())
                .fetch_optional(reader)
                .await?;
            row.map(decode).transpose()
        }

        pub(super) async fn rotate_refresh_token(
            writer: &$pool,
            old: &SecretHash,
            next: &RefreshToken,
        ) -> StoreResult<bool> {
            let mut tx = writer.begin().await?;
            let won = sqlx::query(sql::ROTATE_REFRESH)
                .bind(old.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !won {
                return Ok(false);
            }
            insert_refresh(next).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }

        pub(super) async fn consent(
            reader: &$pool,
            subject: &str,
            client_id: &str,
        ) -> StoreResult<Option<String>> {
            let row = sqlx::query(sql::CONSENT)
                .bind(subject)
                .bind(client_id)
                .fetch_optional(reader)
                .await?;
            Ok(row.map(|row| row.try_get("scope")).transpose()?)
        }

        pub(super) async fn put_consent(
            writer: &$pool,
            subject: &str,
            client_id: &str,
            scope: &str,
        ) -> StoreResult<()> {
            sqlx::query(sql::PUT_CONSENT)
                .bind(subject)
                .bind(client_id)
                .bind(scope)
                .execute(writer)
                .await?;
            Ok(())
        }
    };
}
pub(super) use queries;
