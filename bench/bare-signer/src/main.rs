//! The floor under JWT issuance in `bench/run.sh`: parse the form, sign one
//! RFC 9068 access token with a parsed key, answer as RFC 6749 does. No
//! client authentication, policy, store or metrics, so the gap between this
//! and the token server is what tokenmesh itself costs.
//!
//! `bare-signer ADDR ISSUER [ES256|EdDSA]`

use std::{process::ExitCode, sync::Arc};
use tokenmesh_tokens::clock::{Clock, SystemClock};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokenmesh_tokens::{
    Algorithm, claims::ACCESS_TOKEN_TYP, secret::random_id, signing::SigningKey,
};

struct Signer {
    key: SigningKey,
    issuer: String,
}

async fn token(State(signer): State<Arc<Signer>>, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let scope = form
        .iter()
        .find(|(name, _)| name == "scope")
        .map_or("", |(_, value)| value.as_str());
    let Ok(jti) = random_id() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let now = SystemClock.unix();
    let claims = json!({
        "iss": signer.issuer, "sub": "bench", "aud": "orders", "exp": now + 300,
        "iat": now, "nbf": now, "jti": jti, "client_id": "bench", "scope": scope,
    });
    let Ok(jwt) = signer.key.sign_jwt(ACCESS_TOKEN_TYP, &claims) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body =
        json!({"access_token": jwt, "token_type": "Bearer", "expires_in": 300, "scope": scope});
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(issuer)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bare-signer ADDR ISSUER [ES256|EdDSA]");
        return ExitCode::from(2);
    };
    let alg = match args.get(2).map(String::as_str) {
        None | Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some(other) => {
            eprintln!("bare-signer: unknown algorithm {other}");
            return ExitCode::from(2);
        }
    };
    let key = match SigningKey::generate("bare".into(), alg) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("bare-signer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signer = Arc::new(Signer {
        key,
        issuer: issuer.clone(),
    });
    let app = Router::new()
        .route("/oauth2/token", post(token))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(signer);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("bare-signer: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-signer: {e}");
            ExitCode::FAILURE
        }
    }
}
