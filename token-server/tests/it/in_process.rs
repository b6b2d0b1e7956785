//! The HTTP API in process: `router(state)` driven with `oneshot`, without
//! a socket or the binary, and with a manual clock, so what depends on time
//! is tested by moving the clock instead of sleeping.

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use token_server::{
    RegistrySource, config,
    registry::FileSecrets,
    state::{AppState, Parts},
    store::SqliteStore,
};
use tokenmesh_tokens::{
    clock::ManualClock,
    opaque,
    secret::{SecretHash, random_token},
};
use tower::ServiceExt;

use crate::{
    harness::{Config, SECRET, basic_auth},
    oauth::ES256_SPEC,
};

pub const ISSUER: &str = "http://127.0.0.1:8080";

pub struct App {
    pub state: Arc<AppState>,
    pub clock: Arc<ManualClock>,
    _config: Config,
    _data: tempfile::TempDir,
}

impl App {
    pub async fn start(config: Config) -> Self {
        let source = RegistrySource {
            documents: config::load_paths(&[config.file()]).unwrap(),
            default_issuer: ISSUER.into(),
            issuer_override: None,
        };
        let secrets = FileSecrets {
            dir: config.dir.path().join("secrets"),
        };
        let registry = source.build(&secrets, &[]).unwrap();
        let data = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(data.path()).await.unwrap());
        let clock = ManualClock::starting_now();
        let parts = Parts {
            source,
            secrets: Box::new(secrets),
            stored: Vec::new(),
            clock: clock.clone(),
            admin: None,
            max_revocations: 1000,
            revoke_rate: 10.0,
            revoke_burst: 100,
            opaque_token_cache: 100,
            client_certificates: false,
        };
        let state = AppState::start(registry, store, parts).await.unwrap();
        Self {
            state,
            clock,
            _config: config,
            _data: data,
        }
    }

    /// POSTs a form as `client` (HTTP Basic), returning the status, the
    /// headers and the JSON body.
    pub async fn post(
        &self,
        path: &str,
        client: Option<&str>,
        form: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        self.post_with(path, client, form, &[]).await
    }

    /// [`App::post`] with more request headers.
    pub async fn post_with(
        &self,
        path: &str,
        client: Option<&str>,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        let (status, headers, bytes) = self.send(path, client, form, headers).await;
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    /// POSTs a form with `headers`; the body as bytes.
    pub async fn send(
        &self,
        path: &str,
        client: Option<&str>,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
        let mut request =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(client) = client {
            request = request.header(header::AUTHORIZATION, basic_auth(client));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = serde_urlencoded::to_string(form).unwrap();
        let response = token_server::http::router(self.state.clone())
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes)
    }

    async fn token(&self, form: &[(&str, &str)]) -> String {
        let mut form = form.to_vec();
        form.push(("grant_type", "client_credentials"));
        let (status, _, body) = self.post("/oauth2/token", Some("gateway"), &form).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// An opaque token of the client `opaque` (see [`opaque_client`]).
    async fn opaque_token(&self) -> String {
        let form = [("grant_type", "client_credentials")];
        let (status, _, body) = self.post("/oauth2/token", Some("opaque"), &form).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn introspect(&self, token: &str) -> Value {
        let (status, _, body) = self
            .post("/oauth2/introspect", Some("gateway"), &[("token", token)])
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// The ES256 gateway and a client `opaque` with opaque tokens of 60 s.
fn opaque_client() -> Config {
    let config = Config::new(ES256_SPEC);
    config.append(
        "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: opaque}\nspec:\n  clientId: opaque\n  grantTypes: [client_credentials]\n  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  accessToken: {format: opaque, ttl: 60s}\n",
    );
    config
}

#[tokio::test]
async fn expiring_scope_leaves_the_token_but_the_token_stays() {
    let app = App::start(Config::new(ES256_SPEC)).await;
    let token = app.token(&[("scope", "orders:read video_stream_7")]).await;
    let fresh = app.introspect(&token).await;
    assert_eq!(fresh["scope"], "orders:read video_stream_7");

    app.clock.advance(Duration::from_millis(2100));
    let later = app.introspect(&token).await;
    assert_eq!(later["active"], true);
    assert_eq!(later["scope"], "orders:read");
    assert_eq!(later["expired_scope"], "video_stream_7");
}

#[tokio::test]
async fn a_token_is_inactive_once_its_lifetime_has_passed() {
    let app = App::start(Config::new(ES256_SPEC)).await;
    let token = app.token(&[]).await;
    // The gateway's tokens live 300 s.
    app.clock.advance(Duration::from_secs(299));
    assert_eq!(app.introspect(&token).await["active"], true);
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(
        app.introspect(&token).await,
        serde_json::json!({"active": false})
    );
}

#[tokio::test]
async fn an_opaque_token_expires_with_the_clock() {
    let app = App::start(opaque_client()).await;
    let token = &app.opaque_token().await;
    assert!(token.starts_with("tmo_"));
    assert_eq!(app.introspect(token).await["client_id"], "opaque");
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(app.introspect(token).await["active"], false);
}

/// Opaque tokens are filed in issue order (`tokenmesh_tokens::opaque`);
/// those of earlier versions, filed by their digest alone, still resolve.
#[tokio::test]
async fn opaque_tokens_of_earlier_versions_still_resolve() {
    let app = App::start(opaque_client()).await;
    let token = &app.opaque_token().await;
    let store = &app.state.store;
    assert!(
        store
            .opaque_token(&SecretHash::of(token.as_bytes()))
            .await
            .unwrap()
            .is_none()
    );
    let mut row = store
        .opaque_token(&opaque::key(token))
        .await
        .unwrap()
        .unwrap();

    // The same claims under a value of the earlier format, filed as it was.
    let earlier = format!("tmo_{}", random_token().unwrap());
    row.hash = SecretHash::of(earlier.as_bytes());
    store.put_opaque_token(&row).await.unwrap();
    let found = app.introspect(&earlier).await;
    assert_eq!(found["active"], true, "{found}");
    assert_eq!(found["client_id"], "opaque");
    let (status, _, _) = app
        .send(
            "/oauth2/revoke",
            Some("opaque"),
            &[("token", &earlier)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.introspect(&earlier).await["active"], false);
}

#[tokio::test]
async fn oauth_errors_are_mapped_once_to_status_body_and_headers() {
    let app = App::start(Config::new(ES256_SPEC)).await;

    let (status, headers, body) = app
        .post(
            "/oauth2/token",
            None,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(
        headers[header::WWW_AUTHENTICATE],
        "Basic realm=\"tokenmesh\""
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");

    let (status, _, body) = app
        .post(
            "/oauth2/token",
            Some("gateway"),
            &[("grant_type", "password")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, _, body) = app
        .post(
            "/oauth2/token",
            Some("gateway"),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders:delete"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");

    // client_secret_post for a client registered with Basic.
    let (status, _, body) = app
        .post(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "gateway"),
                ("client_secret", SECRET),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
}
