//! The PostgreSQL store, for several token-server replicas on one database.
//! Migrations run on start under an advisory lock, so replicas starting
//! together migrate once. Opaque tokens are written, and looked up, many
//! requests' at a time (`batch`): one statement and one round trip for all
//! the requests that queued while the previous one ran.

use std::{collections::HashMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokenmesh_tokens::{revoked::client_grant_id, secret::SecretHash};

use super::{
    BUMP_KEYS_MARK, ChangeMarks, OpaqueToken, Revocation, RevocationKind, RotationLock, Store,
    StoreError, StoreResult, StoredKey,
    batch::{Batch, Batcher},
    rows::{KeyRow, MarksRow, OpaqueRow, RevocationRow, int},
    signin::{AuthCode, CodeUse, PendingSignIn, RefreshToken, SsoSession, sql::MAX_CODES},
};

/// Advisory lock ids (arbitrary, fixed).
pub const ROTATION_LOCK: i64 = 0x746f_6b65_6e6d_0001;
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e6d_0002;
const REVOCATION_LOCK: i64 = 0x746f_6b65_6e6d_0003;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        pkcs8 BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        activates_at BIGINT NOT NULL,
        retires_at BIGINT,
        publish_until BIGINT
    );
    CREATE TABLE opaque_tokens (
        hash BYTEA PRIMARY KEY,
        jti TEXT NOT NULL,
        client_id TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        claims TEXT NOT NULL
    );
    CREATE INDEX opaque_tokens_expiry ON opaque_tokens (expires_at);
    CREATE TABLE revocations (
        seq BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        UNIQUE (kind, id)
    );
    CREATE INDEX revocations_expiry ON revocations (expires_at);
    CREATE TABLE used_once (
        issuer TEXT NOT NULL,
        jti TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (issuer, jti)
    );
    CREATE INDEX used_once_expiry ON used_once (expires_at);
    CREATE TABLE resources (
        key TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        applied BIGSERIAL NOT NULL
    );
    CREATE TABLE marks (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO marks (name, value) VALUES ('resources', 0);",
    // Sign-in (store/signin.rs).
    "CREATE TABLE auth_codes (
        hash BYTEA PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        code_challenge TEXT,
        scope TEXT NOT NULL,
        nonce TEXT,
        session_id TEXT,
        subject TEXT NOT NULL,
        auth_time BIGINT NOT NULL,
        grant_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        details TEXT NOT NULL,
        used BIGINT NOT NULL
    );
    CREATE INDEX auth_codes_expiry ON auth_codes (expires_at);
    CREATE TABLE sso_sessions (
        hash BYTEA PRIMARY KEY,
        sid TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        idp TEXT NOT NULL,
        auth_time BIGINT NOT NULL,
        amr TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        idle_expires_at BIGINT NOT NULL,
        claims TEXT NOT NULL
    );
    CREATE INDEX sso_sessions_expiry ON sso_sessions (idle_expires_at);
    CREATE TABLE refresh_tokens (
        hash BYTEA PRIMARY KEY,
        grant_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        scope TEXT NOT NULL,
        session_id TEXT,
        auth_time BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        idle_expires_at BIGINT NOT NULL,
        rotated BIGINT NOT NULL,
        details TEXT NOT NULL
    );
    CREATE INDEX refresh_tokens_expiry ON refresh_tokens (idle_expires_at);
    CREATE TABLE consents (
        subject TEXT NOT NULL,
        client_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        PRIMARY KEY (subject, client_id)
    );",
    // Sign-ins waiting for an upstream OpenID Provider (store/signin.rs).
    "CREATE TABLE upstream_sign_ins (
        state_hash BYTEA PRIMARY KEY,
        browser_hash BYTEA NOT NULL,
        provider TEXT NOT NULL,
        nonce TEXT NOT NULL,
        verifier TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX upstream_sign_ins_expiry ON upstream_sign_ins (expires_at);",
];

pub struct PgStore {
    pool: PgPool,
    writes: Batcher<TokenWriter>,
    reads: Batcher<TokenReader>,
    codes: Batcher<signin::CodeWriter>,
}

/// Opaque tokens per statement, at most.
const MAX_BATCH: usize = 256;

/// Inserts queued opaque tokens with one statement (its own transaction).
struct TokenWriter {
    pool: PgPool,
}

impl Batch for TokenWriter {
    type Item = OpaqueToken;
    type Output = ();

    async fn run(&self, tokens: &[OpaqueToken]) -> StoreResult<Vec<()>> {
        let column = |f: fn(&OpaqueToken) -> &String| -> Vec<&str> {
            tokens.iter().map(|t| f(t).as_str()).collect()
        };
        sqlx::query(
            "INSERT INTO opaque_tokens (hash, jti, client_id, grant_id, expires_at, claims)
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])",
        )
        .bind(tokens.iter().map(|t| t.hash.as_bytes().as_slice()).collect::<Vec<_>>())
        .bind(column(|t| &t.jti))
        .bind(column(|t| &t.client_id))
        .bind(column(|t| &t.grant_id))
        .bind(tokens.iter().map(|t| int(t.expires_at)).collect::<Vec<_>>())
        .bind(column(|t| &t.claims))
        .execute(&self.pool)
        .await?;
        Ok(vec![(); tokens.len()])
    }
}

/// Looks queued opaque-token digests up with one statement.
struct TokenReader {
    pool: PgPool,
}

impl Batch for TokenReader {
    type Item = SecretHash;
    type Output = Option<OpaqueToken>;

    async fn run(&self, hashes: &[SecretHash]) -> StoreResult<Vec<Option<OpaqueToken>>> {
        let rows: Vec<OpaqueRow> = sqlx::query_as(
            "SELECT hash, jti, client_id, grant_id, expires_at, claims FROM opaque_tokens WHERE hash = ANY($1)",
        )
        .bind(hashes.iter().map(|h| h.as_bytes().as_slice()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let found: HashMap<&[u8], &OpaqueRow> =
            rows.iter().map(|row| (row.hash.as_slice(), row)).collect();
        Ok(hashes
            .iter()
            .map(|hash| {
                found
                    .get(hash.as_bytes().as_slice())
                    .map(|row| (*row).clone().into_token(*hash))
            })
            .collect())
    }
}

impl PgStore {
    /// Connects (TLS as the URL's `sslmode` says), with a bounded pool, and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let store = Self::open(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("the database URL does not parse: {e}")))?
            .application_name("tokenmesh-token-server")
            .options([("statement_timeout", "5s"), ("lock_timeout", "2s")]);
        // One plain connection first: when the database is away, its error
        // (refused, TLS, authentication) says why, where the pool would only
        // say it timed out.
        let probe = sqlx::ConnectOptions::connect(&options).await?;
        sqlx::Connection::close(probe).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .idle_timeout(Duration::from_secs(300))
            .connect_with(options)
            .await?;
        let writes = Batcher::spawn(
            "postgres_opaque_token_writes",
            TokenWriter { pool: pool.clone() },
            MAX_BATCH,
        );
        let reads = Batcher::spawn(
            "postgres_opaque_token_reads",
            TokenReader { pool: pool.clone() },
            MAX_BATCH,
        );
        let codes = Batcher::spawn(
            "postgres_auth_codes",
            signin::CodeWriter {
                writer: pool.clone(),
            },
            MAX_CODES,
        );
        Ok(Self {
            pool,
            writes,
            reads,
            codes,
        })
    }

    /// The schema version this build migrates to.
    pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

    /// Applies the migrations not applied yet; returns how many.
    pub async fn migrate(&self) -> StoreResult<usize> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        // Created only when missing: `IF NOT EXISTS` would log a notice on every start.
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('schema_version')::text")
                .fetch_one(&mut *tx)
                .await?;
        if exists.is_none() {
            sqlx::query("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                .execute(&mut *tx)
                .await?;
        }
        let current: Option<i32> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?;
        let current = usize::try_from(current.unwrap_or(0)).unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "schema version {current} is newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i32::try_from(index + 1).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(MIGRATIONS.len() - current)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn signing_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, alg, pkcs8, created_at, activates_at, retires_at, publish_until FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(StoredKey::from).collect())
    }

    async fn save_signing_key(&self, key: &StoredKey) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at, activates_at, retires_at, publish_until)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (kid) DO UPDATE SET pkcs8 = excluded.pkcs8,
                activates_at = excluded.activates_at, retires_at = excluded.retires_at,
                publish_until = excluded.publish_until",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.pkcs8)
        .bind(int(key.created_at))
        .bind(int(key.activates_at))
        .bind(key.retires_at.map(int))
        .bind(key.publish_until.map(int))
        .execute(&mut *tx)
        .await?;
        sqlx::query(BUMP_KEYS_MARK).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_signing_key(&self, kid: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(&mut *tx)
            .await?;
        sqlx::query(BUMP_KEYS_MARK).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_opaque_token(&self, token: &OpaqueToken) -> StoreResult<()> {
        self.writes.submit(token.clone()).await
    }

    async fn opaque_token(&self, hash: &SecretHash) -> StoreResult<Option<OpaqueToken>> {
        self.reads.submit(*hash).await
    }

    async fn revoke(&self, kind: RevocationKind, id: &str, expires_at: u64) -> StoreResult<i64> {
        // Readers follow `seq` with a cursor, so a revocation must commit
        // before any with a higher `seq` is visible: one writer at a time,
        // holding the lock from taking the number until the commit.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(REVOCATION_LOCK)
            .execute(&mut *tx)
            .await?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO revocations (kind, id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (kind, id) DO UPDATE SET expires_at = GREATEST(revocations.expires_at, excluded.expires_at)
             RETURNING seq",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(int(expires_at))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn is_revoked(
        &self,
        jti: &str,
        grant_id: Option<&str>,
        client_id: &str,
    ) -> StoreResult<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM revocations WHERE (kind = 'jti' AND id = $1) OR (kind = 'grant' AND id IN ($2, $3)) LIMIT 1",
        )
        .bind(jti)
        .bind(grant_id)
        .bind(grant_id.map(|g| client_grant_id(g, client_id)))
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn revocations_after(&self, seq: i64, limit: u32) -> StoreResult<Vec<Revocation>> {
        let rows: Vec<RevocationRow> = sqlx::query_as(
            "SELECT seq, kind, id, expires_at FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Revocation::from).collect())
    }

    async fn use_once(&self, issuer: &str, jti: &str, expires_at: u64) -> StoreResult<bool> {
        let inserted =
            sqlx::query("INSERT INTO used_once (issuer, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(issuer)
                .bind(jti)
                .bind(int(expires_at))
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(inserted == 1)
    }

    async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        let now = int(now);
        let mut removed = 0;
        // Small batches: no long locks on a shared database.
        for sql in [
            "DELETE FROM opaque_tokens WHERE ctid IN (SELECT ctid FROM opaque_tokens WHERE expires_at < $1 LIMIT 500)",
            "DELETE FROM revocations WHERE ctid IN (SELECT ctid FROM revocations WHERE expires_at < $1 LIMIT 500)",
            "DELETE FROM used_once WHERE ctid IN (SELECT ctid FROM used_once WHERE expires_at < $1 LIMIT 500)",
            "DELETE FROM auth_codes WHERE ctid IN (SELECT ctid FROM auth_codes WHERE expires_at < $1 LIMIT 500)",
            "DELETE FROM sso_sessions WHERE ctid IN (SELECT ctid FROM sso_sessions WHERE idle_expires_at < $1 LIMIT 500)",
            "DELETE FROM refresh_tokens WHERE ctid IN (SELECT ctid FROM refresh_tokens WHERE idle_expires_at < $1 LIMIT 500)",
            "DELETE FROM upstream_sign_ins WHERE ctid IN (SELECT ctid FROM upstream_sign_ins WHERE expires_at < $1 LIMIT 500)",
        ] {
            loop {
                let n = sqlx::query(sql)
                    .bind(now)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                removed += n;
                if n < 500 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    async fn put_resource(&self, key: &str, document: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO resources (key, document) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET document = excluded.document")
            .bind(key)
            .bind(document)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE marks SET value = value + 1 WHERE name = 'resources'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn resources(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT key, document FROM resources ORDER BY applied")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn change_marks(&self) -> StoreResult<ChangeMarks> {
        let row: MarksRow = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM revocations) AS revoked,
                (SELECT value FROM marks WHERE name = 'resources') AS resources,
                COALESCE((SELECT value FROM marks WHERE name = 'keys'), 0) AS keys",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    async fn try_lock_rotation(&self) -> StoreResult<Option<RotationLock>> {
        let mut connection = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(ROTATION_LOCK)
            .fetch_one(&mut *connection)
            .await?;
        Ok(locked.then_some(RotationLock::Postgres(connection)))
    }

    async fn put_auth_code(&self, code: &AuthCode) -> StoreResult<()> {
        self.codes.submit(code.clone()).await
    }

    async fn use_auth_code(&self, hash: &SecretHash) -> StoreResult<CodeUse> {
        signin::use_auth_code(&self.pool, hash).await
    }

    async fn put_session(&self, session: &SsoSession) -> StoreResult<()> {
        signin::put_session(&self.pool, session).await
    }

    async fn session(&self, hash: &SecretHash) -> StoreResult<Option<SsoSession>> {
        signin::session(&self.pool, hash).await
    }

    async fn touch_session(&self, hash: &SecretHash, idle_expires_at: u64) -> StoreResult<()> {
        signin::touch_session(&self.pool, hash, idle_expires_at).await
    }

    async fn end_session(&self, sid: &str) -> StoreResult<bool> {
        signin::end_session(&self.pool, sid).await
    }

    async fn put_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        signin::put_refresh_token(&self.pool, token).await
    }

    async fn refresh_token(&self, hash: &SecretHash) -> StoreResult<Option<RefreshToken>> {
        signin::refresh_token(&self.pool, hash).await
    }

    async fn rotate_refresh_token(
        &self,
        old: &SecretHash,
        next: &RefreshToken,
    ) -> StoreResult<bool> {
        signin::rotate_refresh_token(&self.pool, old, next).await
    }

    async fn put_pending_sign_in(&self, pending: &PendingSignIn) -> StoreResult<()> {
        signin::put_pending_sign_in(&self.pool, pending).await
    }

    async fn take_pending_sign_in(
        &self,
        hash: &SecretHash,
        now: u64,
    ) -> StoreResult<Option<PendingSignIn>> {
        signin::take_pending_sign_in(&self.pool, hash, now).await
    }

    async fn consent(&self, subject: &str, client_id: &str) -> StoreResult<Option<String>> {
        signin::consent(&self.pool, subject, client_id).await
    }

    async fn put_consent(&self, subject: &str, client_id: &str, scope: &str) -> StoreResult<()> {
        signin::put_consent(&self.pool, subject, client_id, scope).await
    }
}

/// The sign-in queries on this backend's pools.
mod signin {
    super::super::signin::queries!(PgPool, sqlx::Postgres);
    use super::PgPool;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    /// A fresh database on the test cluster (`TOKENMESH_TEST_DATABASE_URL`,
    /// started by `.ci/run` through tests/pg/throwaway.sh).
    pub async fn fresh_database() -> String {
        let admin = std::env::var("TOKENMESH_TEST_DATABASE_URL")
            .expect("TOKENMESH_TEST_DATABASE_URL: start a cluster with `eval $(tests/pg/throwaway.sh start)` (or run .ci/run)");
        let pool = PgPool::connect(&admin).await.unwrap();
        let name = format!(
            "t_{}",
            tokenmesh_tokens::secret::random_id()
                .unwrap()
                .to_ascii_lowercase()
                .replace('-', "_")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    }

    #[tokio::test]
    async fn the_store_suite_passes_on_postgres() {
        let url = fresh_database().await;
        let store = PgStore::connect(&url, 4).await.unwrap();
        suite::run(&store).await;
        suite::concurrent_revocations(&store).await;
        suite::concurrent_opaque_tokens(&store).await;
        suite::signin(&store).await;
        suite::pending_sign_ins(&store).await;
        // A second replica migrates nothing and sees the same data; the
        // rotation lock is one replica's at a time.
        let other = PgStore::connect(&url, 2).await.unwrap();
        assert_eq!(other.migrate().await.unwrap(), 0);
        let held = store.try_lock_rotation().await.unwrap().unwrap();
        assert!(other.try_lock_rotation().await.unwrap().is_none());
        held.release().await;
        other
            .try_lock_rotation()
            .await
            .unwrap()
            .unwrap()
            .release()
            .await;
        store.close().await;
        suite::after_reopen(&other).await;
        suite::signin_after_reopen(&other).await;
    }

    /// TLS to the database as `sslmode` says: `verify-full` with the right
    /// CA connects over TLS; with another CA, or none (the system roots),
    /// it is refused rather than falling back.
    #[tokio::test]
    async fn tls_to_the_database_is_verified() {
        let url = fresh_database().await;
        let ca = std::env::var("TOKENMESH_TEST_PG_CA").expect(
            "TOKENMESH_TEST_PG_CA: tests/pg/throwaway.sh starts PostgreSQL with TLS and exports it",
        );
        let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
        let store = PgStore::connect(&verified, 1).await.unwrap();
        let over_tls: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert!(over_tls);
        store.close().await;

        let dir = tempfile::tempdir().unwrap();
        let other_ca = dir.path().join("other-ca.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=another-ca", "-keyout"])
            .arg(dir.path().join("other-ca.key"))
            .arg("-out")
            .arg(&other_ca)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        for refused in [
            format!(
                "{url}?sslmode=verify-full&sslrootcert={}",
                other_ca.display()
            ),
            format!("{url}?sslmode=verify-full"),
        ] {
            let err = PgStore::connect(&refused, 1).await.err().unwrap();
            assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        }
    }
}
