//! The HTTP router and server (plain on loopback, else rustls), with the
//! bounds of `tokenmesh_tokens::listen` on slow and idle clients.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use tokenmesh_tokens::listen::deadlines::Deadline;
use tonic::codegen::Service;
use tracing::Instrument;

use crate::{
    keys::jose_algorithm,
    metrics::{EndpointLabels, HttpLabels},
    oauth,
    state::{
        AUTHORIZATION_PATH, AppState, CALLBACK_PATH, END_SESSION_PATH, INTROSPECTION_PATH,
        JWKS_PATH, REVOCATION_PATH, TOKEN_PATH, USERINFO_PATH,
    },
    traced,
};

const AS_METADATA: &str = "/.well-known/oauth-authorization-server";
const OIDC_METADATA: &str = "/.well-known/openid-configuration";
/// Every route, for metric labels.
const ROUTES: [&str; 13] = [
    AS_METADATA,
    OIDC_METADATA,
    JWKS_PATH,
    TOKEN_PATH,
    INTROSPECTION_PATH,
    REVOCATION_PATH,
    AUTHORIZATION_PATH,
    USERINFO_PATH,
    END_SESSION_PATH,
    CALLBACK_PATH,
    "/healthz",
    "/readyz",
    "/metrics",
];

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(AS_METADATA, get(oauth::metadata))
        .route(OIDC_METADATA, get(oauth::metadata))
        .route(JWKS_PATH, get(oauth::jwks))
        .route(TOKEN_PATH, post(oauth::token))
        .route(INTROSPECTION_PATH, post(oauth::introspect))
        .route(REVOCATION_PATH, post(oauth::revoke))
        .route(
            AUTHORIZATION_PATH,
            get(oauth::authorize_get).post(oauth::authorize_post),
        )
        .route(USERINFO_PATH, get(oauth::userinfo).post(oauth::userinfo))
        .route(
            END_SESSION_PATH,
            get(oauth::logout_get).post(oauth::logout_post),
        )
        .route(CALLBACK_PATH, get(oauth::upstream_callback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers, the default algorithm has a signing key,
/// every stored key opens, and the cluster's service-account issuer (with
/// spec.kubernetes) is the configured one.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let alg = jose_algorithm(state.registry.load().server.algorithm);
    if state.keys.snapshot().signer(alg).is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no signing key").into_response();
    }
    if state.keys.unreadable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "a stored signing key cannot be opened (keyEncryptionKeyRef; see the log)",
        )
            .into_response();
    }
    let kubernetes = state.registry.load().server.kubernetes.clone();
    if let Err(reason) = state.service_accounts.readiness(kubernetes.as_ref()) {
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    match state.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Counts and times a request by route, from `started`: the HTTP
/// listener's requests, in [`bounded`] (as a router layer it cost each
/// request a clone of its route and two boxed futures).
fn track(state: &AppState, endpoint: &'static str, started: Instant, status: u16) {
    let elapsed = state.clock.instant().saturating_duration_since(started);
    state
        .metrics
        .latency
        .get_or_create(&EndpointLabels { endpoint })
        .observe(elapsed.as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&HttpLabels { endpoint, status })
        .inc();
}

/// The route `path` is served by, as a static label (no allocation); every
/// route is a fixed path.
fn endpoint_of(path: &str) -> &'static str {
    ROUTES
        .iter()
        .copied()
        .find(|route| *route == path)
        .unwrap_or("unmatched")
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tokenmesh_tokens::listen::tls::TlsError),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// `app` as a per-connection handler: every request body must have arrived
/// within `body_timeout` of its head, and each request's answer runs in its
/// span (the same for the gRPC listener); with `metrics`, each request is
/// counted and timed by route.
pub fn bounded(
    app: Router,
    body_timeout: Duration,
    metrics: Option<Arc<AppState>>,
) -> impl Fn(hyper::Request<hyper::body::Incoming>) -> Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |request| {
        let span = traced::span(&request);
        let tracked = metrics.clone().map(|state| {
            (
                endpoint_of(request.uri().path()),
                state.clock.instant(),
                state,
            )
        });
        let request = request.map(|body| Deadline::new(body, body_timeout));
        // A Router is always ready, and its error type is Infallible.
        let answer = Service::call(&mut app.clone(), request);
        Box::pin(
            async move {
                let Ok(response) = answer.await;
                if let Some((endpoint, started, state)) = tracked {
                    track(&state, endpoint, started, response.status().as_u16());
                }
                response
            }
            .instrument(span),
        )
    }
}

/// Serves `handler` on `listener` (TLS with `tls`) within `limits` until
/// `shutdown` resolves, then drains in-flight requests.
pub async fn serve<H>(
    handler: H,
    listener: std::net::TcpListener,
    tls: Option<tokenmesh_tokens::listen::tls::Acceptor>,
    limits: tokenmesh_tokens::listen::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Pin<Box<dyn Future<Output = Response> + Send>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokenmesh_tokens::listen::serve(listener, tls, limits, |_| handler.clone(), shutdown).await;
    Ok(())
}
