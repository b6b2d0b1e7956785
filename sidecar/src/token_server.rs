//! The gRPC client of the token server, authenticated as this workload,
//! behind [`TokenService`]: the calls the mesh makes, so its decisions are
//! tested against a fake.

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use serde_json::json;
use tokenmesh_proto::v1::{
    CheckShareRequest, CheckShareResponse, ExchangeRequest, ExchangeResponse,
    GetEmbeddedTokenRequest, GetJwksRequest, GetJwksResponse, IntrospectRequest,
    IntrospectResponse, PolicySnapshot, RevocationEvent, WatchPoliciesRequest,
    WatchRevocationsRequest, token_service_client::TokenServiceClient,
};
use tokenmesh_tokens::{
    clock::{SharedClock, SystemClock},
    secret::random_id,
    signing::SigningKey,
};
use tokio_stream::Stream;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::cli::Args;

/// A call to the token server never waits longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--token-server {0}: {1}")]
    Url(String, String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// How this workload proves who it is.
enum Credential {
    /// `authorization: Basic`.
    Secret(String),
    /// A projected service-account token, read again on every use.
    ServiceAccount(PathBuf),
    /// private_key_jwt: a fresh assertion per call.
    PrivateKey { key: SigningKey, audience: String },
}

fn read(path: &PathBuf) -> Result<String, SetupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| SetupError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

impl Credential {
    fn from_args(args: &Args) -> Result<Self, SetupError> {
        if let Some(path) = &args.client_secret_file {
            return Ok(Self::Secret(read(path)?));
        }
        if let Some(path) = &args.service_account_token_file {
            read(path)?;
            return Ok(Self::ServiceAccount(path.clone()));
        }
        let (Some(path), Some(issuer)) = (&args.private_key_file, &args.issuer) else {
            return Err(SetupError::File {
                path: "credential".into(),
                message: "give one credential".into(),
            });
        };
        let fail = |message: String| SetupError::File {
            path: path.display().to_string(),
            message,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| fail(format!("not a PKCS#8 PEM key: {e}")))?;
        let der = der.secret_pkcs8_der().to_vec();
        let alg = SigningKey::detect_algorithm(&der)
            .ok_or_else(|| fail("not a P-256, Ed25519 or RSA key".into()))?;
        // The token server picks the client's key by this kid: a key
        // registered with a kid does not match an assertion without it.
        let kid = args.private_key_id.clone().unwrap_or_default();
        let key = SigningKey::from_pkcs8(kid, alg, der).map_err(|e| fail(e.to_string()))?;
        Ok(Self::PrivateKey {
            key,
            audience: issuer.clone(),
        })
    }
}

/// The host of an `http://` URL unless it is loopback (`localhost`,
/// `*.localhost`, 127.0.0.0/8, `::1`); `None` for other URLs.
pub fn plaintext_remote_host(url: &str) -> Option<String> {
    let uri = url.parse::<http::Uri>().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?.to_ascii_lowercase();
    (!tokenmesh_tokens::net::is_loopback_host(&host)).then_some(host)
}

/// An exchanged token, and the DPoP nonce the token server handed out with
/// it (metadata `dpop-nonce`), if any.
#[derive(Debug, Default)]
pub struct Exchanged {
    pub response: ExchangeResponse,
    pub dpop_nonce: Option<Vec<u8>>,
}

/// The nonce a status or an answer carries in metadata `dpop-nonce`.
pub fn dpop_nonce(metadata: &tonic::metadata::MetadataMap) -> Option<Vec<u8>> {
    metadata
        .get(DPOP_NONCE)
        .map(|value| value.as_encoded_bytes().to_vec())
}

const DPOP_NONCE: &str = tokenmesh_tokens::dpop::nonce::NONCE_HEADER;

/// A stream of updates the token server pushes (WatchPolicies,
/// WatchRevocations).
pub type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The token server as the mesh uses it. A `Status` is its answer as gRPC
/// gives it: the mesh tells refusals from outages by its code.
pub trait TokenService: Send + Sync + 'static {
    /// The OAuth client this workload authenticates as.
    fn client_id(&self) -> &str;

    /// With `proof`, a DPoP proof of this sidecar's key (metadata `dpop`),
    /// the new token is bound to it. A refusal for want of a nonce carries
    /// it in metadata `dpop-nonce`.
    fn exchange(
        &self,
        subject_token: &str,
        audience: &str,
        proof: Option<&str>,
    ) -> impl Future<Output = Result<Exchanged, Status>> + Send;

    fn introspect(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<IntrospectResponse, Status>> + Send;

    fn embedded_token(
        &self,
        token: &str,
        audience: &str,
    ) -> impl Future<Output = Result<String, Status>> + Send;

    fn check_share(
        &self,
        token: &str,
        destination: &str,
    ) -> impl Future<Output = Result<CheckShareResponse, Status>> + Send;

    fn jwks(&self) -> impl Future<Output = Result<GetJwksResponse, Status>> + Send;

    fn watch_policies(
        &self,
    ) -> impl Future<Output = Result<Updates<PolicySnapshot>, Status>> + Send;

    /// Revocations after `after_seq`; with `snapshot`, those in force first
    /// as a few large events.
    fn watch_revocations(
        &self,
        after_seq: i64,
        snapshot: bool,
    ) -> impl Future<Output = Result<Updates<RevocationEvent>, Status>> + Send;
}

pub struct TokenServer {
    client: TokenServiceClient<Channel>,
    /// `--token-server`, named in errors that happen on the way to it.
    url: String,
    client_id: String,
    credential: Credential,
    /// Dates the private_key_jwt assertions.
    clock: SharedClock,
}

/// An error on the way to the token server with its address: by itself a
/// refused connection says "tcp connect error" and an HTTP port's answer
/// "grpc-status header missing", neither saying where. A status the token
/// server decided (no transport error behind it) passes unchanged.
fn on_the_way(url: &str, status: Status) -> Status {
    if status.message().starts_with("grpc-status header missing") {
        let message = format!(
            "the token server at {url} answered, but not with gRPC ({}): is --token-server \
             its gRPC address (port 8081 by default), not the HTTP one?",
            status.message()
        );
        return Status::new(status.code(), message);
    }
    let Some(source) = std::error::Error::source(&status) else {
        return status;
    };
    let mut message = format!("token server {url}: {}", status.message());
    let mut cause = Some(source);
    while let Some(err) = cause {
        let text = err.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = err.source();
    }
    Status::new(status.code(), message)
}

impl TokenServer {
    /// Connects lazily: the channel reconnects by itself when the server comes back.
    pub fn new(args: &Args) -> Result<Self, SetupError> {
        let url = args.token_server.clone();
        let bad = |message: String| SetupError::Url(url.clone(), message);
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &args.token_server_ca {
                let pem = std::fs::read(ca).map_err(|e| SetupError::File {
                    path: ca.display().to_string(),
                    message: e.to_string(),
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        } else if !url.starts_with("http://") {
            return Err(bad("use an http:// or https:// URL".into()));
        } else if let Some(host) = plaintext_remote_host(&url) {
            // Not refused: an install may choose plaintext in the cluster
            // (the chart's tokenServer.tls.enabled=false).
            tracing::warn!(
                %host,
                "--token-server is plaintext http:// to a host that is not loopback: \
                 this workload's credential and the tokens it exchanges cross the network \
                 in clear; use https:// (with --token-server-ca) or protect the path (mTLS, \
                 a NetworkPolicy)"
            );
        }
        Ok(Self {
            client: TokenServiceClient::new(endpoint.connect_lazy()),
            url,
            client_id: args.client_id.clone(),
            credential: Credential::from_args(args)?,
            clock: SystemClock::shared(),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Reads the time from `clock` instead of the system's.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    fn request<T>(&self, body: T, timeout: bool) -> Result<Request<T>, Status> {
        let mut request = Request::new(body);
        if timeout {
            request.set_timeout(CALL_TIMEOUT);
        }
        let metadata = request.metadata_mut();
        crate::hop::trace_into(metadata);
        let invalid = |_| Status::internal("the credential cannot be sent as metadata");
        match &self.credential {
            Credential::Secret(secret) => {
                use base64::Engine;
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{secret}", self.client_id));
                metadata.insert(
                    "authorization",
                    MetadataValue::try_from(format!("Basic {basic}")).map_err(invalid)?,
                );
            }
            Credential::ServiceAccount(path) => {
                let token = read(path).map_err(|e| Status::unauthenticated(e.to_string()))?;
                metadata.insert(
                    "x-client-assertion",
                    MetadataValue::try_from(token).map_err(invalid)?,
                );
            }
            Credential::PrivateKey { key, audience } => {
                let jti = random_id().map_err(|_| Status::internal("no randomness"))?;
                let now = self.clock.unix();
                let claims = json!({"iss": self.client_id, "sub": self.client_id, "aud": audience, "jti": jti, "iat": now, "exp": now + 60});
                let assertion = key
                    .sign_jwt("JWT", &claims)
                    .map_err(|e| Status::internal(e.to_string()))?;
                metadata.insert(
                    "x-client-assertion",
                    MetadataValue::try_from(assertion).map_err(invalid)?,
                );
            }
        }
        Ok(request)
    }
}

impl TokenService for TokenServer {
    fn client_id(&self) -> &str {
        TokenServer::client_id(self)
    }

    async fn exchange(
        &self,
        subject_token: &str,
        audience: &str,
        proof: Option<&str>,
    ) -> Result<Exchanged, Status> {
        let body = ExchangeRequest {
            subject_token: subject_token.into(),
            audience: audience.into(),
            ..Default::default()
        };
        let mut request = self.request(body, true)?;
        if let Some(proof) = proof {
            let proof = MetadataValue::try_from(proof)
                .map_err(|_| Status::internal("the DPoP proof cannot be sent as metadata"))?;
            request.metadata_mut().insert("dpop", proof);
        }
        let answer = self
            .client
            .clone()
            .exchange(request)
            .await
            .map_err(|e| on_the_way(&self.url, e))?;
        Ok(Exchanged {
            dpop_nonce: dpop_nonce(answer.metadata()),
            response: answer.into_inner(),
        })
    }

    async fn introspect(&self, token: &str) -> Result<IntrospectResponse, Status> {
        let body = IntrospectRequest {
            token: token.into(),
        };
        Ok(self
            .client
            .clone()
            .introspect(self.request(body, true)?)
            .await
            .map_err(|e| on_the_way(&self.url, e))?
            .into_inner())
    }

    async fn embedded_token(&self, token: &str, audience: &str) -> Result<String, Status> {
        let body = GetEmbeddedTokenRequest {
            token: token.into(),
            audience: audience.into(),
        };
        Ok(self
            .client
            .clone()
            .get_embedded_token(self.request(body, true)?)
            .await
            .map_err(|e| on_the_way(&self.url, e))?
            .into_inner()
            .token)
    }

    async fn check_share(
        &self,
        token: &str,
        destination: &str,
    ) -> Result<CheckShareResponse, Status> {
        let body = CheckShareRequest {
            token: token.into(),
            destination: destination.into(),
        };
        Ok(self
            .client
            .clone()
            .check_share(self.request(body, true)?)
            .await
            .map_err(|e| on_the_way(&self.url, e))?
            .into_inner())
    }

    async fn jwks(&self) -> Result<GetJwksResponse, Status> {
        Ok(self
            .client
            .clone()
            .get_jwks(self.request(GetJwksRequest {}, true)?)
            .await
            .map_err(|e| on_the_way(&self.url, e))?
            .into_inner())
    }

    async fn watch_policies(&self) -> Result<Updates<PolicySnapshot>, Status> {
        let stream = self
            .client
            .clone()
            .watch_policies(self.request(WatchPoliciesRequest {}, false)?)
            .await
            .map_err(|e| on_the_way(&self.url, e))?;
        Ok(Box::pin(stream.into_inner()))
    }

    async fn watch_revocations(
        &self,
        after_seq: i64,
        snapshot: bool,
    ) -> Result<Updates<RevocationEvent>, Status> {
        let body = WatchRevocationsRequest {
            after_seq,
            snapshot,
        };
        let stream = self
            .client
            .clone()
            .watch_revocations(self.request(body, false)?)
            .await
            .map_err(|e| on_the_way(&self.url, e))?;
        Ok(Box::pin(stream.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{TokenServer, TokenService, plaintext_remote_host};
    use crate::cli::Args;

    /// A client of `url` with a client secret (the folder holds the file).
    fn client(url: &str) -> (tempfile::TempDir, TokenServer) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a-client-secret-0123456789abcdef").unwrap();
        let args = Args::try_parse_from([
            "tokenmesh-sidecar",
            "--token-server",
            url,
            "--client-id",
            "orders-svc",
            "--client-secret-file",
            secret.to_str().unwrap(),
            "--audience",
            "orders",
        ])
        .unwrap();
        (dir, TokenServer::new(&args).unwrap())
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_token_server() {
        let url = {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", closed.local_addr().unwrap())
        };
        let (_dir, server) = client(&url);
        let status = server.jwks().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with(&format!("token server {url}: ")),
            "{}",
            status.message()
        );
        assert!(status.message().contains("refused"), "{}", status.message());
    }

    /// The token server's HTTP port speaks HTTP/2 too, and answers a gRPC
    /// call with a 404 and no grpc-status.
    #[tokio::test]
    async fn the_http_port_is_recognised_as_the_wrong_one() {
        use hyper_util::{
            rt::{TokioExecutor, TokioIo},
            server::conn::auto,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let not_found = hyper::service::service_fn(|_| async {
                    let mut response =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), not_found)
                        .await;
                });
            }
        });
        let (_dir, server) = client(&url);
        let status = server.jwks().await.unwrap_err();
        assert!(
            status.message().contains(&url) && status.message().contains("gRPC address"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn plaintext_to_a_remote_host_is_recognised() {
        for local in [
            "http://127.0.0.1:8081",
            "http://127.9.9.9:1",
            "http://localhost:8081",
            "http://LOCALHOST",
            "http://token.localhost:80",
            "http://[::1]:8081",
            "https://token-server.tokenmesh.svc:8081",
            "not a url",
        ] {
            assert_eq!(plaintext_remote_host(local), None, "{local}");
        }
        for (remote, host) in [
            (
                "http://tokenmesh-token-server.tokenmesh.svc:8081",
                "tokenmesh-token-server.tokenmesh.svc",
            ),
            ("http://10.0.0.7:8081", "10.0.0.7"),
            ("http://[fd00::1]:8081", "[fd00::1]"),
            ("http://localhost.example.com", "localhost.example.com"),
        ] {
            assert_eq!(
                plaintext_remote_host(remote).as_deref(),
                Some(host),
                "{remote}"
            );
        }
    }
}
