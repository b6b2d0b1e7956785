//! Starting the token server, sidecars and applications.

use std::{
    convert::Infallible,
    io::BufRead,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

pub const SECRET: &str = "mesh-test-client-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "mesh-test-admin-token-0123456789abcdef0123";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The `kid` of `keyed-svc`'s registered key (it authenticates by private_key_jwt).
pub const KEYED_KID: &str = "keyed-1";

pub use tokenmesh_e2e::free_port;

pub use tokenmesh_e2e::binary;

/// An ExchangePolicy document.
pub fn policy(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {{name: {name}}}\nspec:\n{body}"
    )
}

pub const ORDERS_TO_PAYMENTS: &str = "  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders-svc]}\n  to: {audience: payments, scopes: [\"orders:read\"], hosts: [payments.local]}\n  ttl: 120s\n";

/// PKCS#8 DER as PEM.
fn private_key_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// `keyed` is the public JWK of `keyed-svc`, a private_key_jwt client.
fn config(keyed: &str) -> String {
    let client = |name: &str, audiences: &str, format: &str| {
        format!(
            "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}}}\nspec:\n  grantTypes: [client_credentials, \"{EXCHANGE}\"]\n  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}\n  scopes: [\"orders:read\", \"orders:write\"]\n  audiences: [{audiences}]\n  allowIntrospection: true\n  accessToken: {{format: {format}, ttl: 300s}}\n"
        )
    };
    let mut yaml = String::from(
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-read}\nspec: {name: \"orders:read\"}\n---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-write}\nspec: {name: \"orders:write\"}\n",
    );
    yaml += &client("frontend", "gateway, orders", "jwt");
    yaml += &client("frontend-opaque", "gateway, orders", "opaque");
    yaml += &client("short-lived", "gateway", "jwt").replace("ttl: 300s", "ttl: 1s");
    for name in ["gateway-svc", "orders-svc", "payments-svc", "ledger-svc"] {
        yaml += &client(name, "internal", "jwt");
    }
    yaml += &client("keyed-svc", "internal", "jwt").replace(
        "{method: client_secret_basic, secretRef: {name: shared, key: client_secret}}",
        &format!("{{method: private_key_jwt, jwks: {{keys: [{keyed}]}}}}"),
    );
    // A sidecar's client without allowIntrospection.
    yaml += &client("blind-svc", "internal", "jwt").replace("  allowIntrospection: true\n", "");
    yaml += &policy(
        "share-orders",
        "  mode: share\n  from: {clients: [frontend, frontend-opaque]}\n  to: {audience: orders, hosts: [orders.local]}\n",
    );
    yaml += &policy("orders-to-payments", ORDERS_TO_PAYMENTS);
    yaml += &policy(
        "embed-ledger",
        "  mode: embed\n  from: {audiences: [payments], clients: [orders-svc]}\n  to: {audience: ledger, scopes: [\"orders:read\"], hosts: [ledger.local]}\n  ttl: 60s\n",
    );
    yaml
}

pub struct TokenServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub http: String,
    pub grpc: String,
    args: Vec<String>,
}

impl TokenServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`TokenServer::start`] with more flags.
    pub async fn start_with(extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keyed = tokenmesh_tokens::signing::SigningKey::generate(
            KEYED_KID.into(),
            tokenmesh_tokens::Algorithm::ES256,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("keyed-svc.pem"),
            private_key_pem(keyed.pkcs8()),
        )
        .unwrap();
        let jwk = serde_json::to_string(&keyed.public_jwk()).unwrap();
        std::fs::write(dir.path().join("tokenmesh.yaml"), config(&jwk)).unwrap();
        std::fs::create_dir_all(dir.path().join("secrets/shared")).unwrap();
        std::fs::write(dir.path().join("secrets/shared/client_secret"), SECRET).unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
        let (http, grpc) = (free_port(), free_port());
        let args: Vec<String> = vec![
            "--config".into(),
            dir.path().join("tokenmesh.yaml").display().to_string(),
            "--http-addr".into(),
            format!("127.0.0.1:{http}"),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
            "--issuer".into(),
            format!("http://127.0.0.1:{http}"),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--admin-token-file".into(),
            dir.path().join("admin-token").display().to_string(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
        let mut server = Self {
            child: None,
            dir,
            http: format!("http://127.0.0.1:{http}"),
            grpc: format!("http://127.0.0.1:{grpc}"),
            args,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary("token-server"))
            .args(&self.args)
            // Spans (when exported) leave within 0.1 s, not 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_ok(&format!("{}/readyz", self.http)).await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("secrets/shared/client_secret")
    }

    /// The private key of `keyed-svc` (PKCS#8 PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("keyed-svc.pem")
    }

    pub async fn token(&self, client: &str, audience: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(audience) = audience {
            form.push(("audience", audience));
        }
        let resp = reqwest::Client::new()
            .post(format!("{}/oauth2/token", self.http))
            .basic_auth(client, Some(SECRET))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn revoke(&self, client: &str, token: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/oauth2/revoke", self.http))
            .basic_auth(client, Some(SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    /// Applies one resource document through ControlService, as the operator does.
    pub async fn apply(&self, document: String) {
        use tokenmesh_proto::v1::{ApplyRequest, control_service_client::ControlServiceClient};
        let mut control = ControlServiceClient::connect(self.grpc.clone())
            .await
            .unwrap();
        let mut request = tonic::Request::new(ApplyRequest { document });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        control.apply(request).await.unwrap();
    }

    /// `tokenmesh_tokens_issued_total` for one grant type.
    pub async fn issued(&self, grant_type: &str) -> u64 {
        metric(
            &format!("{}/metrics", self.http),
            &format!("tokenmesh_tokens_issued_total{{grant_type=\"{grant_type}\""),
        )
        .await
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of the samples of a counter whose line starts with `prefix`.
pub async fn metric(url: &str, prefix: &str) -> u64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub async fn wait_ok(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = reqwest::get(url).await
            && resp.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small application: records what it receives, and calls `next` (if
/// any) through its sidecar's outbound proxy with the same Authorization.
pub struct App {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl App {
    pub async fn start(next: Option<(String, SocketAddr)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let next = next.clone();
                let counter = counter.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let next = next.clone();
                    async move { Ok::<_, Infallible>(handle(request, next).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn handle(
    request: Request<Incoming>,
    next: Option<(String, SocketAddr)>,
) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A test may send the application elsewhere.
    let next = match (
        request
            .headers()
            .get("x-next")
            .and_then(|v| v.to_str().ok()),
        next,
    ) {
        (Some(url), Some((_, proxy))) => Some((url.to_owned(), proxy)),
        (_, next) => next,
    };
    let path = request.uri().path_and_query().map(|p| p.to_string());
    // Every header, every value: what a second Authorization would carry.
    let mut headers = serde_json::Map::new();
    for name in request.headers().keys() {
        let values: Vec<Value> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| json!(String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let mut body = json!({"received": authorization, "path": path, "headers": headers});
    if let Some((url, proxy)) = next {
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
            .build()
            .unwrap();
        let mut call = client.get(url);
        if let Some(value) = &authorization {
            call = call.header("authorization", value);
        }
        // As a traced application does: its call belongs to the request's trace.
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = request.headers().get(name) {
                call = call.header(name, value.clone());
            }
        }
        match call.send().await {
            Ok(resp) => {
                body["next_status"] = json!(resp.status().as_u16());
                let text = resp.text().await.unwrap_or_default();
                body["next"] = serde_json::from_str(&text).unwrap_or(Value::String(text));
            }
            Err(err) => body["next_error"] = json!(err.to_string()),
        }
    }
    Response::new(Full::new(Bytes::from(body.to_string())))
}

pub struct Sidecar {
    child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// What it has logged so far (it also goes to this process's stderr).
    logs: Arc<Mutex<String>>,
}

impl Sidecar {
    /// Starts a sidecar for `app`; its outbound proxy on `outbound_port`
    /// (chosen first, since the application must know it).
    pub async fn start(
        server: &TokenServer,
        client_id: &str,
        audience: &str,
        app: SocketAddr,
        resolve: &[(&str, SocketAddr)],
        outbound_port: u16,
    ) -> Self {
        Self::start_with(
            server,
            client_id,
            audience,
            app,
            resolve,
            outbound_port,
            &[],
        )
        .await
    }

    /// [`Sidecar::start`] with more flags.
    pub async fn start_with(
        server: &TokenServer,
        client_id: &str,
        audience: &str,
        app: SocketAddr,
        resolve: &[(&str, SocketAddr)],
        outbound_port: u16,
        extra: &[String],
    ) -> Self {
        let mut args = vec![
            "--client-secret-file".to_owned(),
            server.secret_file().display().to_string(),
        ];
        for (host, target) in resolve {
            args.push("--resolve".into());
            args.push(format!("{host}={target}"));
        }
        args.extend_from_slice(extra);
        let sidecar = Self::launch(&server.grpc, client_id, audience, app, outbound_port, &args);
        sidecar.wait_ready().await;
        sidecar
    }

    /// Starts a sidecar without waiting for it; `args` must give its
    /// credential.
    pub fn launch(
        token_server: &str,
        client_id: &str,
        audience: &str,
        app: SocketAddr,
        outbound_port: u16,
        args: &[String],
    ) -> Self {
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (inbound, outbound, admin) =
            (local(free_port()), local(outbound_port), local(free_port()));
        let mut command = Command::new(binary("tokenmesh-sidecar"));
        command
            .args([
                "--token-server",
                token_server,
                "--client-id",
                client_id,
                "--audience",
                audience,
            ])
            .args([
                "--inbound-addr",
                &inbound.to_string(),
                "--app-addr",
                &app.to_string(),
            ])
            .args([
                "--outbound-addr",
                &outbound.to_string(),
                "--admin-addr",
                &admin.to_string(),
            ])
            .args(["--clock-skew", "0s"])
            .args(args)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("{line}");
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Self {
            child,
            inbound,
            outbound,
            admin,
            logs,
        }
    }

    pub async fn wait_ready(&self) {
        wait_ok(&format!("http://{}/readyz", self.admin)).await;
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits up to 10 s for a log line containing `needle`; the line.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.logs().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with `{needle}`:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metric(&self, name: &str) -> u64 {
        metric(&format!("http://{}/metrics", self.admin), name).await
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An application that calls `next` (a host and where its sidecar listens)
/// through its own sidecar, which is `client_id` for `audience`.
pub async fn caller(
    server: &TokenServer,
    client_id: &str,
    audience: &str,
    next: (&str, SocketAddr),
    extra: &[String],
) -> (App, Sidecar) {
    let out = free_port();
    let proxy = SocketAddr::from(([127, 0, 0, 1], out));
    let app = App::start(Some((format!("http://{}/hop", next.0), proxy))).await;
    let sidecar =
        Sidecar::start_with(server, client_id, audience, app.addr, &[next], out, extra).await;
    (app, sidecar)
}

/// The whole mesh: gateway → orders → payments → ledger, each behind its sidecar.
pub struct Mesh {
    pub server: TokenServer,
    pub apps: Vec<App>,
    pub sidecars: Vec<Sidecar>,
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Mesh::start`] with flags for the token server and every sidecar.
    pub async fn start_with(extra: &[String]) -> Self {
        let server = TokenServer::start_with(extra).await;
        // Built from the end of the chain, so each knows where the next listens.
        let ledger_app = App::start(None).await;
        let ledger = Sidecar::start_with(
            &server,
            "ledger-svc",
            "ledger",
            ledger_app.addr,
            &[],
            free_port(),
            extra,
        )
        .await;
        let ledger_at = ("ledger.local", ledger.inbound);
        let (payments_app, payments) =
            caller(&server, "payments-svc", "payments", ledger_at, extra).await;
        let payments_at = ("payments.local", payments.inbound);
        let (orders_app, orders) =
            caller(&server, "orders-svc", "orders", payments_at, extra).await;
        let orders_at = ("orders.local", orders.inbound);
        let (gateway_app, gateway) =
            caller(&server, "gateway-svc", "gateway", orders_at, extra).await;
        Self {
            server,
            apps: vec![gateway_app, orders_app, payments_app, ledger_app],
            sidecars: vec![gateway, orders, payments, ledger],
        }
    }

    /// Calls the gateway through its sidecar with `token`.
    pub async fn call(&self, token: Option<&str>) -> (u16, Value, Option<String>) {
        self.call_with(token, None).await
    }

    /// Like [`Mesh::call`], as part of the trace `traceparent` names.
    pub async fn call_traced(
        &self,
        token: &str,
        traceparent: &str,
    ) -> (u16, Value, Option<String>) {
        self.send(
            reqwest::Client::new()
                .get(format!("http://{}/hop", self.sidecars[0].inbound))
                .bearer_auth(token)
                .header("traceparent", traceparent),
        )
        .await
    }

    /// Like [`Mesh::call`], with the gateway told to call `next` instead.
    pub async fn call_with(
        &self,
        token: Option<&str>,
        next: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut call =
            reqwest::Client::new().get(format!("http://{}/hop", self.sidecars[0].inbound));
        if let Some(next) = next {
            call = call.header("x-next", next);
        }
        if let Some(token) = token {
            call = call.bearer_auth(token);
        }
        self.send(call).await
    }

    async fn send(&self, call: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
        let (status, challenge, body) = answer(call).await;
        (status, body, challenge)
    }
}

/// Sends `call`: the status, the `WWW-Authenticate` challenge and the body
/// (JSON, or the text as a string).
async fn answer(call: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let resp = call.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// GET `url` with one header per (name, value), in order, through
/// `proxy` if any: the status, the `WWW-Authenticate` challenge and the
/// body (JSON, or the text as a string).
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
    proxy: Option<SocketAddr>,
) -> (u16, Option<String>, Value) {
    let mut client = reqwest::Client::builder();
    if let Some(proxy) = proxy {
        client = client.proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap());
    }
    let mut call = client.build().unwrap().get(url);
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    answer(call).await
}

/// The claims of a JWT, decoded without verification (the sidecars verified it).
pub fn claims(authorization: &Value) -> Value {
    use base64::Engine;
    let token = authorization
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
