//! Fetching the cluster's service-account keys the way any OIDC relying
//! party does: `<discovery>/.well-known/openid-configuration`, then its
//! `jwks_uri`. Bounded in time and size; rustls only.

use std::time::Duration;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;
use tokenmesh_tokens::{jwk::JwkSet, verify::KeySet};

use super::KubernetesSettings;
use crate::bounded_body::{BodyError, error_chain};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery and JWKS documents are a few KiB; anything larger is refused.
const MAX_BODY: usize = 256 * 1024;

/// Why the keys could not be had. Messages name URLs and files, never a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("{url} cannot be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url}: {message}")]
    Document { url: String, message: String },
    /// The API server signs with another issuer than the one configured:
    /// none of its tokens would ever verify.
    #[error(
        "the cluster's service-account issuer is `{discovered}` ({url}), not `{configured}` as spec.kubernetes.issuer says: set it to `{discovered}`, or leave it out to use the discovered one"
    )]
    IssuerMismatch {
        url: String,
        configured: String,
        discovered: String,
    },
}

/// What discovery found: the issuer in the document and its keys.
pub struct Discovered {
    pub issuer: String,
    pub keys: KeySet,
}

/// Whether keys fetched from `url` can be trusted to arrive unchanged:
/// https, or plain http to this machine (tests, a local proxy).
pub use tokenmesh_core::registry::confidential_url;

/// The part of the OIDC discovery document used here.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// What the API server answered a TokenReview.
#[derive(Deserialize, Default)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: ReviewedUser,
}

#[derive(Deserialize, Default)]
struct ReviewedUser {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct TokenReview {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    status: TokenReviewStatus,
}

pub struct Fetcher {
    http: reqwest::Client,
    settings: KubernetesSettings,
}

impl Fetcher {
    pub fn new(settings: &KubernetesSettings) -> Result<Self, FetchError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect could carry the bearer token to another host.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| FetchError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| FetchError::File {
                    path: path.display().to_string(),
                    message: format!("not a PEM certificate bundle: {e}"),
                })?;
            // The cluster CA alone: the API server is not vouched for by public roots.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| FetchError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            settings: settings.clone(),
        })
    }

    /// Discovery, then the JWKS. The document must name the configured
    /// issuer, if one is. Keys that cannot verify anything (unknown type,
    /// `use: enc`) are skipped; a set with no usable key is an error.
    pub async fn keys(&self) -> Result<Discovered, FetchError> {
        let base = &self.settings.discovery_url;
        let url = format!("{base}/.well-known/openid-configuration");
        let discovery: Discovery = self.get_json(&url, "application/json").await?;
        if let Some(configured) = &self.settings.issuer
            && discovery.issuer != *configured
        {
            return Err(FetchError::IssuerMismatch {
                url,
                configured: configured.clone(),
                discovered: discovery.issuer,
            });
        }
        let jwks_url = self.jwks_url(&discovery.issuer, &discovery.jwks_uri);
        if !confidential_url(&jwks_url) {
            return Err(FetchError::Document {
                url,
                message:
                    "the jwks_uri is not https: keys must not travel where they can be changed"
                        .into(),
            });
        }
        // The API server answers 406 to a JWKS request accepting only application/json.
        let jwks: JwkSet = self
            .get_json(&jwks_url, "application/jwk-set+json, application/json")
            .await?;
        let (keys, unusable) = KeySet::from_jwks(&jwks);
        for err in unusable {
            tracing::debug!(url = %jwks_url, error = %err, "service-account key skipped");
        }
        if keys.is_empty() {
            return Err(FetchError::Document {
                url: jwks_url,
                message: "the JWK Set holds no usable signing key".into(),
            });
        }
        Ok(Discovered {
            issuer: discovery.issuer,
            keys,
        })
    }

    /// Asks the API server whether it still accepts `token` for the
    /// audience, and as whom: `Some(username)` when it does.
    pub async fn review(&self, token: &str) -> Result<Option<String>, FetchError> {
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.settings.api_server_url
        );
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.settings.audience]},
        });
        let request = self
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body);
        let review: TokenReview = self.send_json(request, &url, true).await?;
        if review.kind != "TokenReview" {
            return Err(FetchError::Document {
                url,
                message: format!("answered a `{}`, not a TokenReview", review.kind),
            });
        }
        let status = review.status;
        Ok(status.authenticated.then_some(status.user.username))
    }

    /// The API server names its JWKS under its issuer
    /// (`https://kubernetes.default.svc/openid/v1/jwks`) or, by default,
    /// under the address it advertises (`https://10.0.0.1:6443/openid/v1/jwks`
    /// on kubeadm, kind, minikube), where the credential does not go and the
    /// default RBAC refuses an anonymous read (403). Either way it serves the
    /// same keys at its own `/openid/v1/jwks`, so the fetch follows discovery
    /// to the address that answered it. A `jwks_uri` elsewhere (a cloud
    /// provider's public bucket) is used as it is.
    fn jwks_url(&self, issuer: &str, jwks_uri: &str) -> String {
        let api_server_keys = reqwest::Url::parse(jwks_uri)
            .is_ok_and(|url| url.path() == API_SERVER_JWKS_PATH && url.query().is_none());
        match jwks_uri.strip_prefix(issuer) {
            Some(rest) if rest.starts_with('/') => {
                format!("{}{rest}", self.settings.discovery_url)
            }
            _ if api_server_keys => {
                format!("{}{API_SERVER_JWKS_PATH}", self.settings.discovery_url)
            }
            _ => jwks_uri.to_owned(),
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        accept: &'static str,
    ) -> Result<T, FetchError> {
        let request = self.http.get(url).header(reqwest::header::ACCEPT, accept);
        // The credential goes only to the discovery address, never to a
        // third-party jwks_uri.
        let credential = same_origin(url, &self.settings.discovery_url);
        self.send_json(request, url, credential).await
    }

    /// Sends `request`, with the token file's bearer when `credential`, and
    /// reads a bounded JSON answer.
    async fn send_json<T: DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
        url: &str,
        credential: bool,
    ) -> Result<T, FetchError> {
        if let Some(path) = &self.settings.token_file
            && credential
        {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| FetchError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            request = request.bearer_auth(token.trim());
        }
        let unreachable = |e: reqwest::Error| FetchError::Unreachable {
            url: url.to_owned(),
            message: error_chain(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 => {
                    " (the API server serves discovery to authenticated service accounts: set tokenFile)"
                }
                403 => {
                    " (tokenFile's account lacks the permission: discovery, or create tokenreviews)"
                }
                _ => "",
            };
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                hint,
            });
        }
        let too_large = || FetchError::Document {
            url: url.to_owned(),
            message: format!("larger than {MAX_BODY} bytes"),
        };
        let body = crate::bounded_body::read(response, MAX_BODY)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => too_large(),
                BodyError::Read(e) => unreachable(e),
            })?;
        serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: url.to_owned(),
            message: format!("not the expected JSON: {e}"),
        })
    }
}

/// Where kube-apiserver serves its service-account keys, whatever
/// `jwks_uri` it advertises.
const API_SERVER_JWKS_PATH: &str = "/openid/v1/jwks";

fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_the_discovery_origin() {
        assert!(same_origin(
            "https://127.0.0.1:6443/openid/v1/jwks",
            "https://127.0.0.1:6443"
        ));
        assert!(!same_origin(
            "https://127.0.0.1:6443.evil.example/jwks",
            "https://127.0.0.1:6443"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:6443/jwks",
            "https://127.0.0.1:6443"
        ));
        assert!(!same_origin(
            "https://bucket.example/keys",
            "https://127.0.0.1:6443"
        ));
    }

    /// A fetcher whose discovery (and API server) is at `url`.
    fn fetcher(url: &str) -> Fetcher {
        Fetcher::new(&KubernetesSettings {
            issuer: None,
            audience: "tokenmesh".into(),
            discovery_url: url.into(),
            ca_file: None,
            token_file: None,
            token_review: false,
            api_server_url: url.into(),
        })
        .unwrap()
    }

    #[test]
    fn the_jwks_follows_discovery_to_the_reachable_address() {
        const ISSUER: &str = "https://kubernetes.default.svc";
        let fetcher = fetcher("https://127.0.0.1:6443");
        assert_eq!(
            fetcher.jwks_url(ISSUER, "https://kubernetes.default.svc/openid/v1/jwks"),
            "https://127.0.0.1:6443/openid/v1/jwks"
        );
        assert_eq!(
            fetcher.jwks_url(ISSUER, "https://kubernetes.default.svc.evil/jwks"),
            "https://kubernetes.default.svc.evil/jwks"
        );
        assert_eq!(
            fetcher.jwks_url(ISSUER, "https://oidc.example/keys"),
            "https://oidc.example/keys"
        );
    }

    /// kube-apiserver's default `jwks_uri` is under the address it
    /// advertises, not its issuer: read as it is, the fetch went there
    /// without the credential and the default RBAC answered 403, so no
    /// sidecar of a real cluster could sign in.
    #[test]
    fn the_api_servers_advertised_jwks_uri_is_read_where_discovery_answered() {
        const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
        let fetcher = fetcher("https://kubernetes.default.svc");
        let url = fetcher.jwks_url(ISSUER, "https://172.18.0.2:6443/openid/v1/jwks");
        assert_eq!(url, "https://kubernetes.default.svc/openid/v1/jwks");
        assert!(same_origin(&url, "https://kubernetes.default.svc"));
        // Another path on another host is someone else's document.
        assert_eq!(
            fetcher.jwks_url(ISSUER, "https://172.18.0.2:6443/openid/v1/jwks/other"),
            "https://172.18.0.2:6443/openid/v1/jwks/other"
        );
    }
}
