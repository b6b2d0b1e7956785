//! The embedded store: SQLite in the data directory, in WAL mode. A commit is
//! in the log file (the operating system's) before the caller hears of it,
//! so `kill -9` loses nothing acknowledged. Opaque tokens are written by group
//! commit (`batch`): many requests' rows in one transaction.

use std::{
    path::Path,
    str::FromStr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokenmesh_tokens::{revoked::client_grant_id, secret::SecretHash};
use tokio::sync::Notify;

use super::{
    BUMP_KEYS_MARK, ChangeMarks, OpaqueToken, Revocation, RevocationKind, RotationLock, Store,
    StoreError, StoreResult, StoredKey,
    batch::{Batch, Batcher},
    checkpoint::{self, Checkpoints},
    rows::{KeyRow, MarksRow, OpaqueRow, RevocationRow, int},
    signin::{AuthCode, CodeUse, PendingSignIn, RefreshToken, SsoSession, sql::MAX_CODES},
};

/// Versioned schema; each entry runs once, in order.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        pkcs8 BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        activates_at INTEGER NOT NULL,
        retires_at INTEGER,
        publish_until INTEGER
    );
    CREATE TABLE opaque_tokens (
        hash BLOB PRIMARY KEY,
        jti TEXT NOT NULL,
        client_id TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        claims TEXT NOT NULL
    );
    CREATE INDEX opaque_tokens_expiry ON opaque_tokens (expires_at);
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        UNIQUE (kind, id)
    );
    CREATE INDEX revocations_expiry ON revocations (expires_at);
    CREATE TABLE used_once (
        issuer TEXT NOT NULL,
        jti TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (issuer, jti)
    );",
    "CREATE TABLE resources (
        key TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        applied INTEGER NOT NULL
    );
    CREATE TABLE marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO marks (name, value) VALUES ('resources', 0);",
    // Sign-in (store/signin.rs).
    "CREATE TABLE auth_codes (
        hash BLOB PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        code_challenge TEXT,
        scope TEXT NOT NULL,
        nonce TEXT,
        session_id TEXT,
        subject TEXT NOT NULL,
        auth_time INTEGER NOT NULL,
        grant_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        details TEXT NOT NULL,
        used INTEGER NOT NULL
    );
    CREATE INDEX auth_codes_expiry ON auth_codes (expires_at);
    CREATE TABLE sso_sessions (
        hash BLOB PRIMARY KEY,
        sid TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        idp TEXT NOT NULL,
        auth_time INTEGER NOT NULL,
        amr TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        idle_expires_at INTEGER NOT NULL,
        claims TEXT NOT NULL
    );
    CREATE INDEX sso_sessions_expiry ON sso_sessions (idle_expires_at);
    CREATE TABLE refresh_tokens (
        hash BLOB PRIMARY KEY,
        grant_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        scope TEXT NOT NULL,
        session_id TEXT,
        auth_time INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        idle_expires_at INTEGER NOT NULL,
        rotated INTEGER NOT NULL,
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
        state_hash BLOB PRIMARY KEY,
        browser_hash BLOB NOT NULL,
        provider TEXT NOT NULL,
        nonce TEXT NOT NULL,
        verifier TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX upstream_sign_ins_expiry ON upstream_sign_ins (expires_at);",
];

/// One writer connection, so a checkpoint can always restart the WAL (with
/// several writers the WAL grew past a gigabyte under load), and a few readers.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    /// Wakes the checkpoint task, to write or to see the store closed.
    logged: Arc<Notify>,
    tokens: Batcher<TokenWriter>,
    codes: Batcher<signin::CodeWriter>,
}

/// Opaque tokens per transaction, at most.
const MAX_BATCH: usize = 64;

/// `INSERTS[n - 1]` inserts n rows. A batch is one statement, so one
/// transaction of its own (no BEGIN and COMMIT: each is a round trip to the
/// connection's thread, and waking that thread was the largest cost left),
/// and each text is prepared once per connection (sqlx caches them).
static INSERTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (1..=MAX_BATCH)
        .map(|rows| {
            let values = vec!["(?, ?, ?, ?, ?, ?)"; rows].join(", ");
            format!(
                "INSERT INTO opaque_tokens (hash, jti, client_id, grant_id, expires_at, claims) VALUES {values}"
            )
        })
        .collect()
});

/// Writes queued opaque tokens with one statement on the writer connection.
struct TokenWriter {
    writer: SqlitePool,
    /// Wakes the checkpoint task.
    logged: Arc<Notify>,
}

impl Batch for TokenWriter {
    type Item = OpaqueToken;
    type Output = ();

    async fn run(&self, tokens: &[OpaqueToken]) -> StoreResult<Vec<()>> {
        let sql = INSERTS
            .get(tokens.len().wrapping_sub(1))
            .ok_or_else(|| StoreError::Corrupt(format!("a batch of {} tokens", tokens.len())))?;
        let mut insert = sqlx::query(sql.as_str());
        for token in tokens {
            insert = insert
                .bind(token.hash.as_bytes().as_slice())
                .bind(&token.jti)
                .bind(&token.client_id)
                .bind(&token.grant_id)
                .bind(int(token.expires_at))
                .bind(&token.claims);
        }
        insert.execute(&self.writer).await?;
        self.logged.notify_one();
        Ok(vec![(); tokens.len()])
    }
}

/// The data directory holds private signing keys: owner only.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/tokenmesh.db` and migrates it.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        Self::open_with(data_dir, Checkpoints::default()).await
    }

    async fn open_with(data_dir: &Path, checkpoints: Checkpoints) -> StoreResult<Self> {
        create_private_dir(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("tokenmesh.db");
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            // Room for the INSERTs of every batch size besides the rest.
            .statement_cache_capacity(MAX_BATCH + MAX_CODES + 64)
            // Under constant writes the WAL is reused, never shrunk: cap what
            // it keeps after each checkpoint.
            .pragma("journal_size_limit", "67108864")
            // Freed space is zeroed: a deleted or re-encrypted signing key
            // does not linger in the file.
            .pragma("secure_delete", "ON");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            // The writer seldom checkpoints (its commit waits for it): see checkpoint.rs.
            .connect_with(options.clone().pragma(
                "wal_autocheckpoint",
                checkpoints.writer_after_pages.to_string(),
            ))
            .await?;
        migrate(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let logged = Arc::new(Notify::new());
        tokenmesh_tokens::runtime::spawn(
            tracing::info_span!("wal checkpoints"),
            checkpoint::run(checkpointer.clone(), checkpoints, logged.clone()),
        );
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await?;
        let tokens = Batcher::spawn(
            "sqlite_opaque_tokens",
            TokenWriter {
                writer: writer.clone(),
                logged: logged.clone(),
            },
            MAX_BATCH,
        );
        let codes = Batcher::spawn(
            "sqlite_auth_codes",
            signin::CodeWriter {
                writer: writer.clone(),
            },
            MAX_CODES,
        );
        Ok(Self {
            writer,
            reader,
            checkpointer,
            logged,
            tokens,
            codes,
        })
    }

    /// Closes the pools, the writer last: closing the last connection
    /// checkpoints the WAL and removes it.
    pub async fn close(&self) {
        self.checkpointer.close().await;
        self.logged.notify_one();
        self.reader.close().await;
        self.writer.close().await;
    }
}

async fn migrate(writer: &SqlitePool) -> StoreResult<()> {
    let mut tx = writer.begin().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
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
        sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
            .bind(int(index as u64 + 1))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn signing_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, alg, pkcs8, created_at, activates_at, retires_at, publish_until FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(StoredKey::from).collect())
    }

    async fn save_signing_key(&self, key: &StoredKey) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at, activates_at, retires_at, publish_until)
             VALUES (?, ?, ?, ?, ?, ?, ?)
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
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM signing_keys WHERE kid = ?")
            .bind(kid)
            .execute(&mut *tx)
            .await?;
        sqlx::query(BUMP_KEYS_MARK).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn forget_overwritten_keys(&self) -> StoreResult<()> {
        // The new pages reach the database file (whose freed space
        // secure_delete zeroes) and the log is emptied.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn put_opaque_token(&self, token: &OpaqueToken) -> StoreResult<()> {
        self.tokens.submit(token.clone()).await
    }

    async fn opaque_token(&self, hash: &SecretHash) -> StoreResult<Option<OpaqueToken>> {
        let row: Option<OpaqueRow> = sqlx::query_as(
            "SELECT hash, jti, client_id, grant_id, expires_at, claims FROM opaque_tokens WHERE hash = ?",
        )
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|row| row.into_token(*hash)))
    }

    async fn revoke(&self, kind: RevocationKind, id: &str, expires_at: u64) -> StoreResult<i64> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO revocations (kind, id, expires_at) VALUES (?, ?, ?)
             ON CONFLICT (kind, id) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)
             RETURNING seq",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(int(expires_at))
        .fetch_one(&self.writer)
        .await?;
        Ok(seq)
    }

    async fn is_revoked(
        &self,
        jti: &str,
        grant_id: Option<&str>,
        client_id: &str,
    ) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM revocations WHERE (kind = 'jti' AND id = ?) OR (kind = 'grant' AND id IN (?, ?)) LIMIT 1",
        )
        .bind(jti)
        .bind(grant_id)
        .bind(grant_id.map(|g| client_grant_id(g, client_id)))
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    async fn revocations_after(&self, seq: i64, limit: u32) -> StoreResult<Vec<Revocation>> {
        let rows: Vec<RevocationRow> = sqlx::query_as(
            "SELECT seq, kind, id, expires_at FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(Revocation::from).collect())
    }

    async fn use_once(&self, issuer: &str, jti: &str, expires_at: u64) -> StoreResult<bool> {
        let inserted = sqlx::query("INSERT INTO used_once (issuer, jti, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(issuer)
            .bind(jti)
            .bind(int(expires_at))
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(inserted == 1)
    }

    async fn put_resource(&self, key: &str, document: &str) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO resources (key, document, applied) VALUES (?, ?, (SELECT COALESCE(MAX(applied), 0) + 1 FROM resources))
             ON CONFLICT (key) DO UPDATE SET document = excluded.document",
        )
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
                .fetch_all(&self.reader)
                .await?,
        )
    }

    async fn change_marks(&self) -> StoreResult<ChangeMarks> {
        let row: MarksRow = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM revocations) AS revoked,
                (SELECT value FROM marks WHERE name = 'resources') AS resources,
                COALESCE((SELECT value FROM marks WHERE name = 'keys'), 0) AS keys",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(row.into())
    }

    async fn try_lock_rotation(&self) -> StoreResult<Option<RotationLock>> {
        Ok(Some(RotationLock::Local))
    }

    async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        let now = int(now);
        let mut removed = 0;
        // Small batches keep each write lock short.
        for sql in [
            "DELETE FROM opaque_tokens WHERE rowid IN (SELECT rowid FROM opaque_tokens WHERE expires_at < ? LIMIT 500)",
            "DELETE FROM revocations WHERE rowid IN (SELECT rowid FROM revocations WHERE expires_at < ? LIMIT 500)",
            "DELETE FROM used_once WHERE rowid IN (SELECT rowid FROM used_once WHERE expires_at < ? LIMIT 500)",
            "DELETE FROM auth_codes WHERE rowid IN (SELECT rowid FROM auth_codes WHERE expires_at < ? LIMIT 500)",
            "DELETE FROM sso_sessions WHERE rowid IN (SELECT rowid FROM sso_sessions WHERE idle_expires_at < ? LIMIT 500)",
            "DELETE FROM refresh_tokens WHERE rowid IN (SELECT rowid FROM refresh_tokens WHERE idle_expires_at < ? LIMIT 500)",
            "DELETE FROM upstream_sign_ins WHERE rowid IN (SELECT rowid FROM upstream_sign_ins WHERE expires_at < ? LIMIT 500)",
        ] {
            loop {
                let n = sqlx::query(sql)
                    .bind(now)
                    .execute(&self.writer)
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

    async fn put_auth_code(&self, code: &AuthCode) -> StoreResult<()> {
        self.codes.submit(code.clone()).await
    }

    async fn use_auth_code(&self, hash: &SecretHash) -> StoreResult<CodeUse> {
        signin::use_auth_code(&self.writer, hash).await
    }

    async fn put_session(&self, session: &SsoSession) -> StoreResult<()> {
        signin::put_session(&self.writer, session).await
    }

    async fn session(&self, hash: &SecretHash) -> StoreResult<Option<SsoSession>> {
        signin::session(&self.writer, hash).await
    }

    async fn touch_session(&self, hash: &SecretHash, idle_expires_at: u64) -> StoreResult<()> {
        signin::touch_session(&self.writer, hash, idle_expires_at).await
    }

    async fn end_session(&self, sid: &str) -> StoreResult<bool> {
        signin::end_session(&self.writer, sid).await
    }

    async fn put_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        signin::put_refresh_token(&self.writer, token).await
    }

    async fn refresh_token(&self, hash: &SecretHash) -> StoreResult<Option<RefreshToken>> {
        signin::refresh_token(&self.writer, hash).await
    }

    async fn rotate_refresh_token(
        &self,
        old: &SecretHash,
        next: &RefreshToken,
    ) -> StoreResult<bool> {
        signin::rotate_refresh_token(&self.writer, old, next).await
    }

    async fn put_pending_sign_in(&self, pending: &PendingSignIn) -> StoreResult<()> {
        signin::put_pending_sign_in(&self.writer, pending).await
    }

    async fn take_pending_sign_in(
        &self,
        hash: &SecretHash,
        now: u64,
    ) -> StoreResult<Option<PendingSignIn>> {
        signin::take_pending_sign_in(&self.writer, hash, now).await
    }

    async fn consent(&self, subject: &str, client_id: &str) -> StoreResult<Option<String>> {
        signin::consent(&self.reader, subject, client_id).await
    }

    async fn put_consent(&self, subject: &str, client_id: &str, scope: &str) -> StoreResult<()> {
        signin::put_consent(&self.writer, subject, client_id, scope).await
    }
}

/// The sign-in queries on this backend's pools.
mod signin {
    super::super::signin::queries!(SqlitePool, sqlx::Sqlite);
    use super::SqlitePool;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    #[tokio::test]
    async fn the_store_suite_passes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        suite::run(&store).await;
        suite::concurrent_revocations(&store).await;
        suite::concurrent_opaque_tokens(&store).await;
        suite::signin(&store).await;
        suite::pending_sign_ins(&store).await;
        store.close().await;
        let reopened = SqliteStore::open(dir.path()).await.unwrap();
        suite::after_reopen(&reopened).await;
        suite::signin_after_reopen(&reopened).await;
    }

    /// The largest the log and the database files got while `tokens`
    /// opaque tokens were written 64 at a time (the batches of a busy
    /// server), each filed under `key(i)`, with `checkpoints`; every token
    /// is then still there.
    async fn largest_files(
        checkpoints: Checkpoints,
        tokens: u64,
        key: impl Fn(u64) -> SecretHash,
    ) -> (u64, u64) {
        let keys: Vec<SecretHash> = (0..tokens).map(key).collect();
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(dir.path(), checkpoints)
            .await
            .unwrap();
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
        let token = |i: u64| OpaqueToken {
            hash: keys[i as usize],
            jti: format!("jti-{i}"),
            client_id: "client".into(),
            grant_id: String::new(),
            expires_at: 4_000_000_000,
            claims: "{}".repeat(64),
        };
        let (mut log, mut database) = (0, 0);
        for first in (0..tokens).step_by(64) {
            let batch: Vec<OpaqueToken> = (first..tokens.min(first + 64)).map(token).collect();
            for written in
                suite::join_all(batch.iter().map(|t| store.put_opaque_token(t)).collect()).await
            {
                written.unwrap();
            }
            // The checkpoints run on their own clock: give them a turn.
            tokio::time::sleep(Duration::from_millis(1)).await;
            log = log.max(size("tokenmesh.db-wal"));
            database = database.max(size("tokenmesh.db"));
        }
        for i in (0..tokens).step_by(97) {
            let found = store.opaque_token(&token(i).hash).await.unwrap();
            assert_eq!(found, Some(token(i)));
        }
        store.close().await;
        (log, database)
    }

    /// Opaque tokens as they are filed: in issue order (`opaque::key`).
    fn issue_order(_: u64) -> SecretHash {
        tokenmesh_tokens::opaque::key(&tokenmesh_tokens::opaque::new_token(1_700_000_000).unwrap())
    }

    /// No checkpoints but the task's one after the first batch.
    const NEVER: Checkpoints = Checkpoints {
        pause: Duration::from_secs(3600),
        writer_after_pages: 0,
        restart_above_pages: i64::MAX,
    };

    /// The writer seldom waits for a checkpoint: the background task copies
    /// the log into the database after writes, and the writer's own
    /// checkpoint (with little left to copy) starts the log over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_run_beside_the_writer_and_the_log_starts_over() {
        const MIB: u64 = 1 << 20;
        let (grown, untouched) = largest_files(NEVER, 20_000, issue_order).await;
        assert!(
            grown > 12 * MIB,
            "without checkpoints the log holds every commit: {grown} bytes"
        );
        assert!(
            untouched < MIB / 4,
            "and little reaches the database: {untouched} bytes"
        );
        let task_only = Checkpoints {
            pause: Duration::from_millis(1),
            writer_after_pages: 0,
            restart_above_pages: i64::MAX,
        };
        let (_, copied) = largest_files(task_only, 20_000, issue_order).await;
        assert!(
            copied > 2 * untouched,
            "the task copies the log into the database: {copied} bytes, {untouched} without"
        );
        // The writer's checkpoints bound it near 4 MiB.
        let (bounded, _) = largest_files(Checkpoints::default(), 20_000, issue_order).await;
        assert!(
            bounded < grown / 2 && bounded < 8 * MIB,
            "{bounded} bytes of log with checkpoints, {grown} without"
        );
    }

    /// Filed in issue order, a batch of tokens writes a few pages; filed by
    /// a random digest (as before), one page per token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_filed_in_issue_order_write_a_fraction_of_the_log() {
        let (ordered, _) = largest_files(NEVER, 6000, issue_order).await;
        let (random, _) = largest_files(NEVER, 6000, |i| {
            SecretHash::of(format!("random-{i}").as_bytes())
        })
        .await;
        assert!(
            ordered * 2 < random,
            "{ordered} bytes of log in issue order, {random} by digest"
        );
    }
}
