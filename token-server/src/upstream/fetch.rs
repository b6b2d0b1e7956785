//! Requests to the upstream: discovery and JWKS (the key source of the
//! upstream's [`RemoteKeySet`](tokenmesh_tokens::keyset::RemoteKeySet)),
//! the code exchange and UserInfo.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use tokenmesh_core::registry::{UpstreamOidc, confidential_url};
use tokenmesh_tokens::{
    jwk::JwkSet,
    keyset::{FetchKeys, Keys},
    verify::KeySet,
};

use super::UpstreamFailure;
use crate::bounded_body::{self, BodyError, error_chain};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery, JWKS, token and UserInfo answers are a few KiB.
const MAX_BODY: usize = 256 * 1024;

/// Why a request to the upstream failed. Names URLs, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("{url} cannot be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Document { url: String, message: String },
}

/// The part of the discovery document (OpenID Connect Discovery §3) used.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// The token endpoint's answer (OpenID Connect Core §3.1.3.3).
#[derive(Deserialize)]
pub struct TokenAnswer {
    pub id_token: String,
    #[serde(default)]
    pub access_token: Option<String>,
}

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Result<Self, FetchFailure> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect could take the code or the secret elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FetchFailure::Setup(e.to_string()))?;
        Ok(Self { client })
    }

    /// Discovery at `<issuer>/.well-known/openid-configuration`: its
    /// `issuer` must be ours exactly (Discovery §4.3) and every endpoint
    /// https (loopback http).
    pub async fn discovery(&self, issuer: &str) -> Result<Discovery, FetchFailure> {
        let url = format!("{issuer}/.well-known/openid-configuration");
        let discovery: Discovery = self.get_json(&url, "application/json").await?;
        if discovery.issuer != issuer {
            return Err(FetchFailure::Document {
                url,
                message: format!(
                    "names the issuer `{}`, not `{issuer}`: the IdentityProvider's issuer must be the upstream's exactly",
                    discovery.issuer
                ),
            });
        }
        for (field, endpoint) in [
            (
                "authorization_endpoint",
                Some(&discovery.authorization_endpoint),
            ),
            ("token_endpoint", Some(&discovery.token_endpoint)),
            ("jwks_uri", Some(&discovery.jwks_uri)),
            ("userinfo_endpoint", discovery.userinfo_endpoint.as_ref()),
        ] {
            if let Some(endpoint) = endpoint
                && !confidential_url(endpoint)
            {
                return Err(FetchFailure::Document {
                    url,
                    message: format!(
                        "{field} `{endpoint}` is not https (plain http only to loopback)"
                    ),
                });
            }
        }
        Ok(discovery)
    }

    /// The upstream's signing keys; keys that cannot verify are skipped.
    pub async fn jwks(&self, url: &str) -> Result<KeySet, FetchFailure> {
        let jwks: JwkSet = self
            .get_json(url, "application/jwk-set+json, application/json")
            .await?;
        let (keys, unusable) = KeySet::from_jwks(&jwks);
        for err in unusable {
            tracing::debug!(%url, error = %err, "upstream key skipped");
        }
        if keys.is_empty() {
            return Err(FetchFailure::Document {
                url: url.to_owned(),
                message: "the JWK Set holds no usable signing key".into(),
            });
        }
        Ok(keys)
    }

    /// The authorization code grant at the upstream's token endpoint, with
    /// the PKCE verifier, and the client secret (HTTP Basic, its parts
    /// form-encoded as RFC 6749 §2.3.1 says) when there is one.
    pub async fn exchange(
        &self,
        url: &str,
        oidc: &UpstreamOidc,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenAnswer, UpstreamFailure> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        match &oidc.client_secret {
            Some(secret) => {
                let encode = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                request =
                    request.basic_auth(encode(&oidc.client_id), Some(encode(secret.expose())));
            }
            None => form.push(("client_id", &oidc.client_id)),
        }
        let (status, body) = self.send(request.form(&form), url).await?;
        if status == 400 || status == 401 {
            return Err(UpstreamFailure::Refused {
                error: oauth_error(&body),
            });
        }
        if !(200..300).contains(&status) {
            return Err(FetchFailure::Status {
                url: url.to_owned(),
                status,
            }
            .into());
        }
        serde_json::from_slice(&body).map_err(|e| {
            FetchFailure::Document {
                url: url.to_owned(),
                message: format!("not a token response with an id_token: {e}"),
            }
            .into()
        })
    }

    /// UserInfo with the upstream's access token (JSON answers only).
    pub async fn userinfo(&self, url: &str, access_token: &str) -> Result<Value, FetchFailure> {
        let request = self
            .client
            .get(url)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json");
        let (status, body) = self.send(request, url).await?;
        if !(200..300).contains(&status) {
            return Err(FetchFailure::Status {
                url: url.to_owned(),
                status,
            });
        }
        let claims: Map<String, Value> = parse(&body, url)?;
        Ok(Value::Object(claims))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        accept: &'static str,
    ) -> Result<T, FetchFailure> {
        let request = self.client.get(url).header(reqwest::header::ACCEPT, accept);
        let (status, body) = self.send(request, url).await?;
        if !(200..300).contains(&status) {
            return Err(FetchFailure::Status {
                url: url.to_owned(),
                status,
            });
        }
        parse(&body, url)
    }

    /// Sends `request` and reads at most [`MAX_BODY`] of the answer.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(u16, Vec<u8>), FetchFailure> {
        let unreachable = |e: reqwest::Error| FetchFailure::Unreachable {
            url: url.to_owned(),
            message: error_chain(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = bounded_body::read(response, MAX_BODY)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => FetchFailure::Document {
                    url: url.to_owned(),
                    message: format!("larger than {MAX_BODY} bytes"),
                },
                BodyError::Read(e) => unreachable(e),
            })?;
        Ok((status, body))
    }
}

fn parse<T: DeserializeOwned>(body: &[u8], url: &str) -> Result<T, FetchFailure> {
    serde_json::from_slice(body).map_err(|e| FetchFailure::Document {
        url: url.to_owned(),
        message: format!("not the expected JSON: {e}"),
    })
}

/// The `error` of an RFC 6749 §5.2 answer, bounded and printable.
fn oauth_error(body: &[u8]) -> String {
    let code = serde_json::from_slice::<Map<String, Value>>(body)
        .ok()
        .and_then(|m| m.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "an answer that is not RFC 6749 JSON".into());
    code.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

/// The upstream's keys, fetched through its discovery document, which is
/// kept for the endpoints it names.
pub struct UpstreamKeys {
    http: Http,
    issuer: String,
    discovery: Arc<ArcSwapOption<Discovery>>,
}

impl UpstreamKeys {
    pub fn new(http: Http, issuer: &str, discovery: Arc<ArcSwapOption<Discovery>>) -> Self {
        Self {
            http,
            issuer: issuer.to_owned(),
            discovery,
        }
    }
}

impl FetchKeys for UpstreamKeys {
    type Error = FetchFailure;

    async fn fetch(&self) -> Result<Keys, FetchFailure> {
        let discovery = self.http.discovery(&self.issuer).await?;
        let set = self.http.jwks(&discovery.jwks_uri).await?;
        tracing::info!(issuer = %self.issuer, "upstream discovery and keys fetched");
        self.discovery.store(Some(Arc::new(discovery)));
        Ok(Keys {
            issuer: self.issuer.clone(),
            set,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::oauth_error;

    #[test]
    fn only_a_bounded_printable_error_code_of_the_upstream_is_repeated() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_grant","error_description":"x"}"#),
            "invalid_grant"
        );
        assert_eq!(
            oauth_error(b"<html>"),
            "an answer that is not RFC 6749 JSON"
        );
        let long = format!(r#"{{"error":"{}\u001b[31m"}}"#, "a".repeat(100));
        let code = oauth_error(long.as_bytes());
        assert_eq!(code.len(), 64);
        assert!(
            code.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "{code}"
        );
    }
}
