//! Sign-in in process: the authorization endpoint, the login and consent
//! forms, codes, refresh tokens, UserInfo and logout, driven through the
//! router with a cookie jar and a manual clock.

use std::{collections::BTreeMap, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tokenmesh_tokens::listen::tls::PeerCertificate;
use tower::ServiceExt;

use crate::{
    harness::{Config, jwt_part},
    in_process::{App, ISSUER},
    oauth::ES256_SPEC,
};

// RFC 7636 Appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const PASSWORD: &str = "correct horse battery staple";
pub const CALLBACK: &str = "https://app.example/cb";

/// The shared config, a static provider with alice, a public web client
/// (consent required) and a first-party confidential one (implicit).
pub fn config() -> Config {
    config_with(ES256_SPEC)
}

/// [`config`] with the TokenServer `spec`.
pub fn config_with(spec: &str) -> Config {
    let hash = tokenmesh_core::password::hash(PASSWORD).unwrap();
    let config = Config::new(spec);
    config.append(&format!(
        r##"---
apiVersion: tokenmesh.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: dev-users}}
spec:
  type: static
  displayName: Dev users
  static:
    users:
      - username: alice
        passwordHash: "{hash}"
        claims: {{name: Alice Example, email: alice@example.com, email_verified: true}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: web}}
spec:
  clientId: web
  grantTypes: [authorization_code, refresh_token]
  authentication: {{method: none}}
  scopes: ["orders:read"]
  audiences: [orders]
  redirectUris: ["{CALLBACK}", "http://127.0.0.1/native"]
  postLogoutRedirectUris: ["https://app.example/bye"]
  identityProviders: [dev-users]
  branding: {{displayName: Example Web, primaryColor: "#0a7d4f"}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: portal}}
spec:
  clientId: portal
  grantTypes: [authorization_code, refresh_token]
  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}
  scopes: ["orders:read"]
  audiences: [orders]
  redirectUris: ["https://portal.example/cb"]
  identityProviders: [dev-users]
  consent: implicit
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: vault}}
spec:
  clientId: vault
  grantTypes: [authorization_code]
  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}
  scopes: ["orders:read", openid, profile, email]
  audiences: [orders]
  redirectUris: ["https://vault.example/cb"]
  identityProviders: [dev-users]
  consent: implicit
  accessToken: {{binding: mtls}}
  claims: {{tenant: vault-team}}
  userInfo: {{algorithm: ES256}}
"##
    ));
    config
}

/// A browser: the app, and the cookies it was given.
/// (`vault` lists the OpenID Connect scopes, built in, without Scope
/// resources; its tokens are bound to its TLS certificate and its UserInfo
/// answers are signed.)
pub struct Browser {
    pub app: App,
    pub cookies: BTreeMap<String, String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> url::Url {
        url::Url::parse(self.headers[header::LOCATION].to_str().unwrap()).unwrap()
    }

    /// A parameter of the redirect's query.
    pub fn param(&self, name: &str) -> Option<String> {
        self.location()
            .query_pairs()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The value of the form field `name` on the page.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(
            self.body[start..end]
                .replace("&quot;", "\"")
                .replace("&amp;", "&"),
        )
    }

    /// Every hidden field of the page's first form.
    pub fn hidden(&self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        let mut rest = self.body.as_str();
        while let Some(at) = rest.find("<input type=\"hidden\" name=\"") {
            rest = &rest[at + 27..];
            let name_end = rest.find('"').unwrap();
            let name = rest[..name_end].to_owned();
            let value_at = rest.find("value=\"").unwrap() + 7;
            let value_end = rest[value_at..].find('"').unwrap() + value_at;
            let value = rest[value_at..value_end]
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            if fields.iter().any(|(n, _)| *n == name) && name == "action" {
                break;
            }
            fields.push((name, value));
            rest = &rest[value_end..];
        }
        fields
    }
}

impl Browser {
    async fn new() -> Self {
        Self::with(config()).await
    }

    /// A browser of a server with `config`.
    pub async fn with(config: Config) -> Self {
        Self {
            app: App::start(config).await,
            cookies: BTreeMap::new(),
        }
    }

    async fn send(&mut self, request: http::request::Builder, body: String) -> Answer {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let request = request
            .header(header::COOKIE, cookie.join("; "))
            .body(Body::from(body))
            .unwrap();
        let response = token_server::http::router(self.app.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, _) = set.split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), value.into());
            }
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&mut self, path_and_query: &str) -> Answer {
        self.send(Request::get(path_and_query), String::new()).await
    }

    pub async fn post(&mut self, path: &str, form: &[(String, String)]) -> Answer {
        let body = serde_urlencoded::to_string(form).unwrap();
        self.send(
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            body,
        )
        .await
    }

    /// Submits the page's form with its hidden fields and `extra`.
    pub async fn submit(&mut self, page: &Answer, extra: &[(&str, &str)]) -> Answer {
        let mut form = page.hidden();
        form.extend(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        self.post("/oauth2/authorize", &form).await
    }

    /// Signs in as alice on the login page.
    async fn log_in(&mut self, page: &Answer) -> Answer {
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        self.submit(page, &[("username", "alice"), ("password", PASSWORD)])
            .await
    }

    /// POSTs to the token endpoint (as `client`, or a public client).
    async fn token(&self, client: Option<&str>, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let (status, _, body) = self.app.post("/oauth2/token", client, form).await;
        (status, body)
    }
}

pub fn authorize_url(client: &str, redirect: &str, extra: &[(&str, &str)]) -> String {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("scope", "openid profile email offline_access orders:read"),
        ("state", "st-1"),
        ("nonce", "no-1"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    for (name, value) in extra {
        params.retain(|(n, _)| n != name);
        if !value.is_empty() {
            params.push((name, value));
        }
    }
    format!(
        "/oauth2/authorize?{}",
        serde_urlencoded::to_string(&params).unwrap()
    )
}

/// Signs alice in to `web` and consents; the redirect with the code.
async fn code_for_web(browser: &mut Browser) -> Answer {
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let consent = browser.log_in(&login).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(
        consent.body.contains("Example Web wants to"),
        "{}",
        consent.body
    );
    browser.submit(&consent, &[("decision", "allow")]).await
}

pub async fn redeem(browser: &Browser, code: &str) -> (StatusCode, Value) {
    browser
        .token(
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "web"),
                ("code", code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
            ],
        )
        .await
}

#[tokio::test]
async fn the_code_flow_signs_in_consents_and_issues_tokens_for_the_user() {
    let mut browser = Browser::new().await;
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(
        login
            .body
            .contains("<label for=\"username-0\">Username</label>")
    );
    assert!(login.body.contains("--primary:#0a7d4f"), "branded");
    let set_cookie = login.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    assert!(!set_cookie.contains("Secure"), "the issuer is on loopback");

    let consent = browser.log_in(&login).await;
    let session_cookie = browser.cookies.get("tokenmesh_session").cloned();
    assert!(session_cookie.is_some(), "signed in");
    assert!(consent.body.contains("See your email address"));
    let back = browser.submit(&consent, &[("decision", "allow")]).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    assert!(back.location().as_str().starts_with(CALLBACK));
    assert_eq!(back.param("state").as_deref(), Some("st-1"));
    assert_eq!(back.param("iss").as_deref(), Some(ISSUER));
    let code = back.param("code").unwrap();

    let (status, body) = redeem(&browser, &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = jwt_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["client_id"], "web");
    assert_eq!(access["aud"], "orders");
    let id_token = body["id_token"].as_str().unwrap();
    assert_eq!(jwt_part(id_token, 0)["alg"], "RS256");
    let id = jwt_part(id_token, 1);
    assert_eq!(id["iss"], ISSUER);
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["aud"], "web");
    assert_eq!(id["azp"], "web");
    assert_eq!(id["nonce"], "no-1");
    assert_eq!(id["amr"], serde_json::json!(["pwd"]));
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["name"], "Alice Example");
    assert!(id["sid"].is_string() && id["auth_time"].is_u64() && id["at_hash"].is_string());
    assert!(body["refresh_token"].as_str().unwrap().starts_with("tmr_"));

    // UserInfo with the access token.
    let (status, info) = userinfo(&browser, body["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.com");

    // SSO and remembered consent: the next request goes straight back.
    let again = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    assert_eq!(again.status, StatusCode::FOUND, "{}", again.body);
    assert!(again.param("code").is_some());
}

pub async fn userinfo(browser: &Browser, token: &str) -> (StatusCode, Value) {
    let request = Request::get("/oauth2/userinfo")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(browser, request).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_replayed_code_is_refused_and_revokes_what_it_issued() {
    let mut browser = Browser::new().await;
    let code = code_for_web(&mut browser).await.param("code").unwrap();
    let (status, first) = redeem(&browser, &code).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = redeem(&browser, &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(again["error"], "invalid_grant");
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(browser.app.introspect(access).await["active"], false);
    let (status, refreshed) = browser
        .token(
            None,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "web"),
                ("refresh_token", first["refresh_token"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refreshed}");
}

#[tokio::test]
async fn codes_expire_after_60_seconds_and_need_the_pkce_verifier() {
    let mut browser = Browser::new().await;
    let code = code_for_web(&mut browser).await.param("code").unwrap();
    browser.app.clock.advance(Duration::from_secs(60));
    let (status, body) = redeem(&browser, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let back = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let code = back.param("code").unwrap();
    for wrong in [None, Some("x".repeat(43))] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", "web"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
        ];
        if let Some(wrong) = &wrong {
            form.push(("code_verifier", wrong));
        }
        let (status, body) = browser.token(None, &form).await;
        assert_eq!(body["error"], "invalid_grant", "{wrong:?}");
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reuse_revokes_the_grant() {
    let mut browser = Browser::new().await;
    let code = code_for_web(&mut browser).await.param("code").unwrap();
    let (_, first) = redeem(&browser, &code).await;
    let refresh = |token: String| {
        let browser = &browser;
        async move {
            browser
                .token(
                    None,
                    &[
                        ("grant_type", "refresh_token"),
                        ("client_id", "web"),
                        ("refresh_token", &token),
                    ],
                )
                .await
        }
    };
    let old = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, second) = refresh(old.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let newer = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(newer, old);
    assert!(second["id_token"].is_string());
    let (status, reused) = refresh(old).await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // The whole grant: the newest refresh token and its access token too.
    let (status, _) = refresh(newer).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(browser.app.introspect(access).await["active"], false);
}

#[tokio::test]
async fn unknown_clients_and_unregistered_redirect_uris_get_a_page_never_a_redirect() {
    let mut browser = Browser::new().await;
    for url in [
        authorize_url("nobody", CALLBACK, &[]),
        authorize_url("web", "https://evil.example/cb", &[]),
        authorize_url("web", "https://app.example/cb/../x", &[]),
        authorize_url("web", CALLBACK, &[("client_id", "")]),
    ] {
        let answer = browser.get(&url).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{url}");
        assert!(answer.headers.get(header::LOCATION).is_none(), "{url}");
        assert!(answer.body.contains("We could not sign you in"));
    }
    // A request past the body limit: a page too (413).
    let huge = browser
        .post(
            "/oauth2/authorize",
            &[
                ("client_id".into(), "web".into()),
                ("state".into(), "s".repeat(70_000)),
            ],
        )
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(huge.headers.get(header::LOCATION).is_none());
    // One parameter too long, the client valid: back to it, without the state.
    let long = browser
        .get(&authorize_url(
            "web",
            CALLBACK,
            &[("state", &"s".repeat(3000))],
        ))
        .await;
    assert_eq!(long.status, StatusCode::FOUND);
    assert_eq!(long.param("error").as_deref(), Some("invalid_request"));
    assert_eq!(long.param("state"), None);
}

#[tokio::test]
async fn errors_with_a_valid_client_go_back_to_its_redirect_uri() {
    let mut browser = Browser::new().await;
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("code_challenge", ""), ("code_challenge_method", "")],
            "invalid_request",
        ),
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("prompt", "none")], "login_required"),
        (&[("nonce", &"n".repeat(3000))], "invalid_request"),
    ];
    for (extra, error) in cases {
        let answer = browser.get(&authorize_url("web", CALLBACK, extra)).await;
        assert_eq!(
            answer.status,
            StatusCode::FOUND,
            "{extra:?}: {}",
            answer.body
        );
        assert!(answer.location().as_str().starts_with(CALLBACK));
        assert_eq!(answer.param("error").as_deref(), Some(error), "{extra:?}");
        assert_eq!(answer.param("state").as_deref(), Some("st-1"));
        assert_eq!(answer.param("iss").as_deref(), Some(ISSUER));
    }
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused() {
    let mut browser = Browser::new().await;
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let mut form: Vec<(String, String)> = login
        .hidden()
        .into_iter()
        .filter(|(n, _)| n != "csrf_token")
        .collect();
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), PASSWORD.into()));
    let refused = browser.post("/oauth2/authorize", &form).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(!browser.cookies.contains_key("tokenmesh_session"));
    // Another browser's token (a forged form) fails the same way.
    form.push(("csrf_token".into(), "forged".into()));
    assert_eq!(
        browser.post("/oauth2/authorize", &form).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(login.field("csrf_token").is_some());
}

#[tokio::test]
async fn a_wrong_password_shows_the_form_again() {
    let mut browser = Browser::new().await;
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let again = browser
        .submit(&login, &[("username", "alice"), ("password", "wrong")])
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(again.body.contains("role=\"alert\""));
    assert!(!browser.cookies.contains_key("tokenmesh_session"));
}

#[tokio::test]
async fn a_first_party_client_skips_consent_and_logout_ends_the_session() {
    let mut browser = Browser::new().await;
    let portal_cb = "https://portal.example/cb";
    let login = browser.get(&authorize_url("portal", portal_cb, &[])).await;
    let back = browser.log_in(&login).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let code = back.param("code").unwrap();
    let (status, body) = browser
        .token(
            Some("portal"),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", portal_cb),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id_token = body["id_token"].as_str().unwrap().to_owned();

    // SSO: web asks consent, but no password.
    let consent = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    assert!(consent.body.contains("wants to"), "{}", consent.body);

    // Logout with the portal's ID token, back to... portal has none: a page.
    let out = browser
        .get(&format!(
            "/oauth2/logout?{}",
            serde_urlencoded::to_string([("id_token_hint", id_token.as_str())]).unwrap()
        ))
        .await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.body.contains("signed out"));
    let after = browser
        .get(&authorize_url("web", CALLBACK, &[("prompt", "none")]))
        .await;
    assert_eq!(after.param("error").as_deref(), Some("login_required"));

    // A registered post-logout URI gets the state back; another is refused.
    let bye = browser
        .get("/oauth2/logout?client_id=web&post_logout_redirect_uri=https%3A%2F%2Fapp.example%2Fbye&state=s9")
        .await;
    assert_eq!(bye.status, StatusCode::FOUND);
    assert_eq!(bye.location().as_str(), "https://app.example/bye?state=s9");
    let evil = browser
        .get("/oauth2/logout?client_id=web&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F")
        .await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST);
    assert!(evil.headers.get(header::LOCATION).is_none());
}

#[tokio::test]
async fn discovery_lists_the_sign_in_endpoints_truthfully() {
    let browser = Browser::new().await;
    let response = token_server::http::router(browser.app.state.clone())
        .oneshot(
            Request::get("/.well-known/openid-configuration")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{ISSUER}/oauth2/authorize")
    );
    assert_eq!(
        doc["userinfo_endpoint"],
        format!("{ISSUER}/oauth2/userinfo")
    );
    assert_eq!(
        doc["end_session_endpoint"],
        format!("{ISSUER}/oauth2/logout")
    );
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert!(
        doc["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from("none"))
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_grant() {
    let mut browser = Browser::new().await;
    let code = code_for_web(&mut browser).await.param("code").unwrap();
    let (_, tokens) = redeem(&browser, &code).await;
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let (status, _, _) = browser
        .app
        .send(
            "/oauth2/revoke",
            None,
            &[("client_id", "web"), ("token", refresh_token)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = browser
        .token(
            None,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "web"),
                ("refresh_token", refresh_token),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(browser.app.introspect(access).await["active"], false);
}

#[tokio::test]
async fn a_new_login_ends_the_browsers_previous_session() {
    let mut browser = Browser::new().await;
    code_for_web(&mut browser).await;
    let first = browser.cookies["tokenmesh_session"].clone();
    let login = browser
        .get(&authorize_url("web", CALLBACK, &[("prompt", "login")]))
        .await;
    let back = browser.log_in(&login).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    assert_ne!(browser.cookies["tokenmesh_session"], first);
    // The old cookie (a copy someone kept) no longer signs anyone in.
    browser.cookies.insert("tokenmesh_session".into(), first);
    let stale = browser
        .get(&authorize_url("web", CALLBACK, &[("prompt", "none")]))
        .await;
    assert_eq!(stale.param("error").as_deref(), Some("login_required"));
}

#[tokio::test]
async fn password_guessing_is_slowed_per_user() {
    let mut browser = Browser::new().await;
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    for _ in 0..5 {
        let wrong = browser
            .submit(&login, &[("username", "alice"), ("password", "guess")])
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    // The sixth attempt is not even checked, the right password neither.
    let limited = browser.log_in(&login).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    assert!(!browser.cookies.contains_key("tokenmesh_session"));
    browser.app.clock.advance(Duration::from_secs(5));
    let consent = browser.log_in(&login).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(browser.cookies.contains_key("tokenmesh_session"));
}

/// Sends `request` through the router.
async fn call(browser: &Browser, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let response = token_server::http::router(browser.app.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn challenges(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

const PASSWORD_ACR: &str = "urn:tokenmesh:acr:password";

#[tokio::test]
async fn the_claims_parameter_and_acr_reach_the_id_token_userinfo_and_refreshes() {
    let mut browser = Browser::new().await;
    let claims = format!(
        r#"{{"id_token": {{"email": {{"essential": true}}, "acr": {{"essential": true, "values": ["{PASSWORD_ACR}"]}}}}, "userinfo": {{"name": null}}, "x": 1}}"#
    );
    let url = authorize_url(
        "web",
        CALLBACK,
        &[
            ("scope", "openid offline_access orders:read"),
            ("claims", &claims),
        ],
    );
    let login = browser.get(&url).await;
    assert!(
        login
            .hidden()
            .iter()
            .any(|(n, v)| n == "claims" && *v == claims),
        "carried through the login form"
    );
    let consent = browser.log_in(&login).await;
    assert!(
        consent.body.contains("See your email address"),
        "{}",
        consent.body
    );
    let back = browser.submit(&consent, &[("decision", "allow")]).await;
    let (status, body) = redeem(&browser, &back.param("code").unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = jwt_part(body["id_token"].as_str().unwrap(), 1);
    assert_eq!(id["email"], "alice@example.com", "asked for the ID token");
    assert_eq!(id["acr"], PASSWORD_ACR);
    assert!(id.get("name").is_none(), "asked for UserInfo only: {id}");
    let (status, info) = userinfo(&browser, body["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        info,
        serde_json::json!({"sub": "alice", "name": "Alice Example"})
    );

    // Kept across a refresh.
    let (status, refreshed) = browser
        .token(
            None,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "web"),
                ("refresh_token", body["refresh_token"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let id = jwt_part(refreshed["id_token"].as_str().unwrap(), 1);
    assert_eq!(
        (id["email"].as_str(), id["acr"].as_str()),
        (Some("alice@example.com"), Some(PASSWORD_ACR))
    );
    let (_, info) = userinfo(&browser, refreshed["access_token"].as_str().unwrap()).await;
    assert_eq!(info["name"], "Alice Example");

    // A malformed claims parameter, an essential acr nobody here can meet.
    for (claims, error) in [
        (r#"{"userinfo": ["email"]}"#, "invalid_request"),
        ("{not json", "invalid_request"),
        (
            r#"{"id_token": {"acr": {"essential": true, "values": ["urn:gold"]}}}"#,
            "unmet_authentication_requirements",
        ),
    ] {
        let answer = browser
            .get(&authorize_url("web", CALLBACK, &[("claims", claims)]))
            .await;
        assert_eq!(answer.status, StatusCode::FOUND, "{claims}");
        assert_eq!(answer.param("error").as_deref(), Some(error), "{claims}");
        assert_eq!(answer.param("state").as_deref(), Some("st-1"));
    }
    // acr_values is voluntary: the sign-in goes on with what happened.
    let answer = browser
        .get(&authorize_url(
            "web",
            CALLBACK,
            &[("acr_values", "urn:gold")],
        ))
        .await;
    let (_, body) = redeem(&browser, &answer.param("code").unwrap()).await;
    assert_eq!(
        jwt_part(body["id_token"].as_str().unwrap(), 1)["acr"],
        PASSWORD_ACR
    );
}

/// Signs alice in to `vault` over a connection with `certificate`; its tokens.
async fn vault_tokens(browser: &mut Browser, certificate: &PeerCertificate) -> Value {
    let login = browser
        .get(&authorize_url(
            "vault",
            "https://vault.example/cb",
            &[("scope", "openid profile")],
        ))
        .await;
    let back = browser.log_in(&login).await;
    let code = back.param("code").unwrap();
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", "https://vault.example/cb"),
        ("code_verifier", VERIFIER),
    ])
    .unwrap();
    let request = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, crate::harness::basic_auth("vault"))
        .extension(certificate.clone())
        .body(Body::from(form))
        .unwrap();
    let (status, _, body) = call(browser, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn peer(der: &[u8]) -> PeerCertificate {
    PeerCertificate {
        der: rustls_pki_types::CertificateDer::from(der.to_vec()),
        chain_verified: true,
    }
}

#[tokio::test]
async fn userinfo_signs_for_its_client_and_takes_a_certificate_bound_token_over_its_connection() {
    let mut browser = Browser::new().await;
    let holder = peer(b"the vault's certificate");
    let tokens = vault_tokens(&mut browser, &holder).await;
    let access = tokens["access_token"].as_str().unwrap();
    let cnf = &jwt_part(access, 1)["cnf"];
    assert_eq!(
        cnf["x5t#S256"],
        tokenmesh_tokens::claims::x5t_s256(b"the vault's certificate")
    );
    let id = jwt_part(tokens["id_token"].as_str().unwrap(), 1);
    assert_eq!(id["tenant"], "vault-team", "spec.claims in the ID token");
    assert_eq!(id["acr"], PASSWORD_ACR);

    let ask = |certificate: Option<&PeerCertificate>| {
        let mut request = Request::post("/oauth2/userinfo")
            .header(header::AUTHORIZATION, format!("Bearer {access}"));
        if let Some(certificate) = certificate {
            request = request.extension(certificate.clone());
        }
        request.body(Body::empty()).unwrap()
    };
    for other in [None, Some(peer(b"another certificate"))] {
        let (status, headers, _) = call(&browser, ask(other.as_ref())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{other:?}");
        assert_eq!(challenges(&headers), ["Bearer error=\"invalid_token\""]);
    }
    let (status, headers, jwt) = call(&browser, ask(Some(&holder))).await;
    assert_eq!(status, StatusCode::OK, "{jwt}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/jwt");
    assert_eq!(jwt_part(&jwt, 0)["alg"], "ES256");
    let keys = browser.app.state.keys.snapshot();
    let expected = tokenmesh_tokens::verify::Expected {
        typ: Some("JWT"),
        issuers: &[ISSUER],
        audiences: &["vault"],
        require_exp: false,
        leeway: 0,
        now: browser.app.state.now(),
    };
    let claims = tokenmesh_tokens::verify::verify(&jwt, &keys.verify, &expected).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["name"], "Alice Example");
    assert!(claims.get("email").is_none(), "no email scope");

    let (_, _, doc) = call(
        &browser,
        Request::get("/.well-known/openid-configuration")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["userinfo_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(doc["claims_parameter_supported"], true);
    assert_eq!(
        doc["acr_values_supported"],
        serde_json::json!([PASSWORD_ACR])
    );
}

#[tokio::test]
async fn userinfo_takes_a_dpop_bound_token_only_with_a_proof_of_its_key() {
    use tokenmesh_tokens::{Algorithm, clock::Clock, dpop::create::ProofKey};
    let mut browser = Browser::new().await;
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let clock = browser.app.clock.clone();
    let now = || clock.unix();
    let code = code_for_web(&mut browser).await.param("code").unwrap();
    let token_proof = key
        .proof("POST", &format!("{ISSUER}/oauth2/token"), None, None, now())
        .unwrap();
    let (status, _, body) = browser
        .app
        .post_with(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "web"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
            ],
            &[("DPoP", &token_proof)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let access = body["access_token"].as_str().unwrap();
    let url = format!("{ISSUER}/oauth2/userinfo");
    let ask = |scheme: &str, proof: Option<&str>| {
        let mut request = Request::get("/oauth2/userinfo")
            .header(header::AUTHORIZATION, format!("{scheme} {access}"));
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        request.body(Body::empty()).unwrap()
    };
    let good = key.proof("GET", &url, Some(access), None, now()).unwrap();
    let other_key = ProofKey::generate(Algorithm::ES256).unwrap();
    let refusals = [
        (ask("Bearer", None), "DPoP error=\"invalid_token\""),
        (ask("Bearer", Some(&good)), "DPoP error=\"invalid_token\""),
        (ask("DPoP", None), "DPoP error=\"invalid_dpop_proof\""),
        (
            ask(
                "DPoP",
                Some(&key.proof("GET", &url, None, None, now()).unwrap()),
            ),
            "DPoP error=\"invalid_dpop_proof\"",
        ),
        (
            ask(
                "DPoP",
                Some(&key.proof("POST", &url, Some(access), None, now()).unwrap()),
            ),
            "DPoP error=\"invalid_dpop_proof\"",
        ),
        (
            ask(
                "DPoP",
                Some(
                    &other_key
                        .proof("GET", &url, Some(access), None, now())
                        .unwrap(),
                ),
            ),
            "DPoP error=\"invalid_dpop_proof\"",
        ),
    ];
    for (i, (request, challenge)) in refusals.into_iter().enumerate() {
        let (status, headers, _) = call(&browser, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "case {i}");
        let got = challenges(&headers);
        assert_eq!(got.len(), 1, "case {i}: {got:?}");
        assert!(got[0].starts_with(challenge), "case {i}: {got:?}");
        assert!(got[0].contains("algs=\"ES256"), "case {i}: {got:?}");
    }
    let (status, _, info) = call(&browser, ask("DPoP", Some(&good))).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(
        serde_json::from_str::<Value>(&info).unwrap()["sub"],
        "alice"
    );
    let (status, _, _) = call(&browser, ask("DPoP", Some(&good))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a proof is used once");
    // No token at all: both schemes are offered.
    let (status, headers, _) = call(
        &browser,
        Request::get("/oauth2/userinfo")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let got = challenges(&headers);
    assert_eq!(got[0], "Bearer");
    assert!(got[1].starts_with("DPoP algs="), "{got:?}");
}

#[tokio::test]
async fn userinfo_keeps_the_token_endpoints_dpop_nonce_policy() {
    use tokenmesh_tokens::{Algorithm, clock::Clock, dpop::create::ProofKey};
    let spec = "{signing: {algorithm: ES256}, dpop: {requireNonce: true}}";
    let mut browser = Browser::with(config_with(spec)).await;
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let clock = browser.app.clock.clone();
    let code = code_for_web(&mut browser).await.param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "web"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ];
    let token_url = format!("{ISSUER}/oauth2/token");
    let first = key
        .proof("POST", &token_url, None, None, clock.unix())
        .unwrap();
    let (status, headers, body) = browser
        .app
        .post_with("/oauth2/token", None, &form, &[("DPoP", &first)])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("use_dpop_nonce"))
    );
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();
    let proof = key
        .proof("POST", &token_url, None, Some(&nonce), clock.unix())
        .unwrap();
    let (status, _, body) = browser
        .app
        .post_with("/oauth2/token", None, &form, &[("DPoP", &proof)])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();

    let url = format!("{ISSUER}/oauth2/userinfo");
    let ask = |proof: String| {
        Request::get("/oauth2/userinfo")
            .header(header::AUTHORIZATION, format!("DPoP {access}"))
            .header("DPoP", proof)
            .body(Body::empty())
            .unwrap()
    };
    let without = key
        .proof("GET", &url, Some(access), None, clock.unix())
        .unwrap();
    let (status, headers, _) = call(&browser, ask(without)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenges(&headers)[0].starts_with("DPoP error=\"use_dpop_nonce\""),
        "{headers:?}"
    );
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();
    let with = key
        .proof("GET", &url, Some(access), Some(&nonce), clock.unix())
        .unwrap();
    let (status, headers, info) = call(&browser, ask(with)).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert!(
        headers.contains_key("dpop-nonce"),
        "a fresh nonce comes along"
    );
}

#[tokio::test]
async fn a_request_naming_another_user_gets_a_login_and_no_tokens_for_the_signed_in_one() {
    let mut browser = Browser::new().await;
    code_for_web(&mut browser).await;
    let naming = |sub: &str| {
        let claims = format!(r#"{{"id_token": {{"sub": {{"value": "{sub}"}}}}}}"#);
        authorize_url("web", CALLBACK, &[("claims", &claims)])
    };
    // alice's session: a request for alice goes straight back with a code.
    let same = browser.get(&naming("alice")).await;
    assert_eq!(same.status, StatusCode::FOUND, "{}", same.body);
    assert!(same.param("code").is_some());
    // A request for bob: the login page, not alice's session.
    let login = browser.get(&naming("bob")).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("name=\"password\""), "{}", login.body);
    // alice signs in anyway: no code for her.
    let refused = browser.log_in(&login).await;
    assert_eq!(refused.param("error").as_deref(), Some("access_denied"));
    assert!(refused.param("code").is_none());
    let none = browser.get(&format!("{}&prompt=none", naming("bob"))).await;
    assert_eq!(none.param("error").as_deref(), Some("login_required"));
}
