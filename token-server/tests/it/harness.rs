//! Starting the real binary with a generated configuration.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokenmesh_tokens::{Algorithm, signing::SigningKey};
use tokio::time::Instant;

/// Now, in unix seconds, as the server under test reads it.
pub fn now() -> u64 {
    tokenmesh_tokens::clock::Clock::unix(&tokenmesh_tokens::clock::SystemClock)
}

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A configuration folder with the secret files the documents refer to.
pub struct Config {
    pub dir: tempfile::TempDir,
    /// The private key of the `batch` (private_key_jwt) client.
    pub batch_key: SigningKey,
}

impl Config {
    pub fn new(server_spec: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let batch_key = SigningKey::generate("batch-1".into(), Algorithm::ES256).unwrap();
        let jwk = serde_json::to_string(&batch_key.public_jwk()).unwrap();
        let yaml = format!(
            r#"apiVersion: tokenmesh.dev/v1alpha1
kind: TokenServer
metadata: {{name: default}}
spec: {server_spec}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: Scope
metadata: {{name: orders-read}}
spec: {{name: "orders:read"}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: Scope
metadata: {{name: orders-write}}
spec: {{name: "orders:write"}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: Scope
metadata: {{name: video}}
spec: {{prefix: video_stream_, ttl: 1s}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: gateway}}
spec:
  clientId: gateway
  grantTypes: [client_credentials]
  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}
  scopes: ["orders:read", "orders:write", video_stream_]
  audiences: [orders, payments]
  allowIntrospection: true
  accessToken: {{format: jwt, ttl: 300s}}
  claims: {{tenant: acme}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: poster}}
spec:
  grantTypes: [client_credentials]
  authentication: {{method: client_secret_post, secretRef: {{name: shared, key: client_secret}}}}
  scopes: ["orders:read"]
  audiences: [orders]
  accessToken: {{format: jwt, algorithm: EdDSA}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: batch}}
spec:
  clientId: batch
  authentication:
    method: private_key_jwt
    jwks: {{keys: [{jwk}]}}
  scopes: ["orders:read"]
  audiences: [orders]
  accessToken: {{format: opaque, ttl: 600s}}
"#
        );
        std::fs::write(dir.path().join("tokenmesh.yaml"), yaml).unwrap();
        let config = Self { dir, batch_key };
        config.write_secret("shared", "client_secret", &format!("{SECRET}\n"));
        config
    }

    /// Writes `secrets/<name>/<key>`, the layout of a mounted Secret.
    pub fn write_secret(&self, name: &str, key: &str, value: &str) {
        let dir = self.dir.path().join("secrets").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(key), value).unwrap();
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join("tokenmesh.yaml")
    }

    /// Appends YAML documents (each starting with `---`) to the configuration.
    pub fn append(&self, documents: &str) {
        let mut yaml = std::fs::read_to_string(self.file()).unwrap();
        yaml += documents;
        std::fs::write(self.file(), yaml).unwrap();
    }
}

pub use tokenmesh_e2e::free_port;

pub struct Server {
    child: Child,
    /// The `iss` (the base URL, unless replicas share one).
    pub issuer: String,
    pub base: String,
    pub port: u16,
    pub grpc: String,
    data_dir: PathBuf,
    config: PathBuf,
    extra: Vec<String>,
    pub http: reqwest::Client,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_token-server")
}

pub const ADMIN_TOKEN: &str = "integration-admin-token-0123456789abcdef";

/// Whether this run uses PostgreSQL (`TOKENMESH_IT_DATABASE=postgres`).
pub fn postgres() -> bool {
    std::env::var("TOKENMESH_IT_DATABASE").is_ok_and(|v| v == "postgres")
}

/// A fresh database on the test cluster (`TOKENMESH_TEST_DATABASE_URL`).
pub async fn fresh_database() -> String {
    let admin = std::env::var("TOKENMESH_TEST_DATABASE_URL")
        .expect("TOKENMESH_TEST_DATABASE_URL: start a cluster with `eval \"$(tests/pg/throwaway.sh start)\"` (.ci/run does)");
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    let name = format!(
        "it_{}",
        tokenmesh_tokens::secret::random_id()
            .unwrap()
            .to_ascii_lowercase()
            .replace('-', "_")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn spawn(mut command: Command) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn command(
    config: &Path,
    port: u16,
    grpc_port: u16,
    data_dir: &Path,
    extra: &[String],
    issuer: &str,
) -> Command {
    std::fs::create_dir_all(data_dir).unwrap();
    let admin = data_dir.join("admin-token");
    std::fs::write(&admin, ADMIN_TOKEN).unwrap();
    let mut command = Command::new(binary());
    command
        .arg("--admin-token-file")
        .arg(&admin)
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc_port}"))
        .arg("--config")
        .arg(config)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--issuer")
        .arg(issuer)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra);
    command
}

impl Server {
    pub async fn start(config: &Config, data_dir: &Path) -> Self {
        Self::start_with(config, data_dir, Vec::new(), reqwest::Client::new(), "http").await
    }

    pub async fn start_with(
        config: &Config,
        data_dir: &Path,
        extra: Vec<String>,
        http: reqwest::Client,
        scheme: &str,
    ) -> Self {
        let port = free_port();
        let issuer = format!("{scheme}://127.0.0.1:{port}");
        Self::spawn_ready(config, data_dir, extra, http, scheme, port, issuer).await
    }

    /// A replica: its own ports, a shared database and issuer.
    pub async fn start_replica(
        config: &Config,
        data_dir: &Path,
        database_url: &str,
        issuer: &str,
    ) -> Self {
        let extra = vec!["--database-url".to_owned(), database_url.to_owned()];
        Self::spawn_ready(
            config,
            data_dir,
            extra,
            reqwest::Client::new(),
            "http",
            free_port(),
            issuer.to_owned(),
        )
        .await
    }

    async fn spawn_ready(
        config: &Config,
        data_dir: &Path,
        mut extra: Vec<String>,
        http: reqwest::Client,
        scheme: &str,
        port: u16,
        issuer: String,
    ) -> Self {
        if postgres() && !extra.iter().any(|a| a == "--database-url") {
            extra.extend(["--database-url".to_owned(), fresh_database().await]);
        }
        let grpc_port = free_port();
        let child = spawn(command(
            &config.file(),
            port,
            grpc_port,
            data_dir,
            &extra,
            &issuer,
        ));
        let server = Self {
            child,
            issuer,
            base: format!("{scheme}://127.0.0.1:{port}"),
            port,
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            data_dir: data_dir.to_path_buf(),
            config: config.file(),
            extra,
            http,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = self.http.get(format!("{}/readyz", self.base)).send().await
                && resp.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "token-server did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then start again on the same port and data.
    pub async fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.restart().await;
    }

    /// Starts a killed server again on the same ports and data.
    pub async fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "restart: the server is still running"
        );
        self.child = spawn(self.command());
        self.wait_ready().await;
    }

    /// The command line this server was started with.
    fn command(&self) -> Command {
        let grpc_port: u16 = self.grpc.rsplit(':').next().unwrap().parse().unwrap();
        command(
            &self.config,
            self.port,
            grpc_port,
            &self.data_dir,
            &self.extra,
            &self.issuer,
        )
    }

    /// GET `path`: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The JWKS document as served.
    pub async fn jwks_text(&self) -> String {
        let (status, body) = self.get("/jwks").await;
        assert_eq!(status, 200);
        body
    }

    pub async fn jwks(&self) -> tokenmesh_tokens::jwk::JwkSet {
        serde_json::from_str(&self.jwks_text().await).unwrap()
    }

    /// Starts the binary again as it last ran (this one stopped), for a
    /// start that must be refused: what it printed before it gave up.
    pub fn start_refused(&self) -> String {
        refused(self.command())
    }

    /// Another server on this one's data directory and configuration, on
    /// ports of its own, for a start that must be refused.
    pub fn second_on_same_data_dir(&self) -> String {
        refused(command(
            &self.config,
            free_port(),
            free_port(),
            &self.data_dir,
            &self.extra,
            &self.issuer,
        ))
    }

    /// The store this server uses, opened directly (stop the server first).
    pub async fn open_store(&self) -> Box<dyn token_server::store::Store> {
        match self.extra.iter().position(|a| a == "--database-url") {
            Some(at) => Box::new(
                token_server::store::PgStore::connect(&self.extra[at + 1], 2)
                    .await
                    .unwrap(),
            ),
            None => Box::new(
                token_server::store::SqliteStore::open(&self.data_dir)
                    .await
                    .unwrap(),
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and the exit status once the server is gone.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(
        &self,
        path: &str,
        auth: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).form(form);
        if let Some((id, secret)) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        req.send().await.unwrap()
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> serde_json::Value {
        let mut full = vec![("grant_type", "client_credentials")];
        full.extend_from_slice(form);
        let resp = self
            .post("/oauth2/token", Some(("gateway", SECRET)), &full)
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        let resp = self
            .post(
                "/oauth2/introspect",
                Some(("gateway", SECRET)),
                &[("token", token)],
            )
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command`, which must exit with a failure within 20 s: what it
/// printed to stderr before it gave up.
fn refused(mut command: Command) -> String {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the token server started; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{:?}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the binary to completion (for startup failures).
pub fn run_to_exit(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A JWT's header (`part` 0) or claims (`part` 1), not verified.
pub fn jwt_part(token: &str, part: usize) -> serde_json::Value {
    use base64::Engine;
    let encoded = token.split('.').nth(part).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

/// `Basic` credentials of client `id` with the shared secret.
pub fn basic_auth(id: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{SECRET}"));
    format!("Basic {encoded}")
}

/// The next message of a gRPC stream within `within`; panics on a timeout,
/// the stream's end or an error.
pub async fn next_message<T>(stream: &mut tonic::Streaming<T>, within: std::time::Duration) -> T {
    tokio::time::timeout(within, tokio_stream::StreamExt::next(stream))
        .await
        .unwrap_or_else(|_| panic!("no message within {within:?}"))
        .expect("the stream ended")
        .expect("the stream failed")
}

/// A test CA made with openssl, and serving certificates it signs for
/// 127.0.0.1 and localhost.
pub struct TestCa {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl makes the test certificates");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl TestCa {
    /// An HTTPS client that trusts this CA and nothing else.
    pub fn client(&self) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(&std::fs::read(&self.cert).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([root])
            .build()
            .unwrap()
    }

    pub fn new(dir: &Path) -> Self {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        openssl(
            &[
                &["req", "-x509", "-days", "1", "-subj", "/CN=test CA"][..],
                &EC[..],
                &["-keyout", &k, "-out", &c][..],
            ]
            .concat(),
        );
        Self {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// `<name>.crt` and `<name>.key`, a new key each time.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let p = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        let s = |path: &Path| path.display().to_string();
        let (cert, key, csr, ext) = (p("crt"), p("key"), p("csr"), p("ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            &[
                &["req", "-subj", &format!("/CN={name}")][..],
                &EC[..],
                &["-keyout", &s(&key), "-out", &s(&csr)][..],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &s(&csr),
            "-CA",
            &s(&self.cert),
            "-CAkey",
            &s(&self.key),
            "-CAcreateserial",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&cert),
        ]);
        (cert, key)
    }
}
