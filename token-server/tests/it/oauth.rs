//! The OAuth endpoints as a client meets them.

use serde_json::{Value, json};
use tokenmesh_tokens::verify::{Expected, KeySet, verify};

use crate::harness::{Config, SECRET, Server, jwt_part, now};

pub const ES256_SPEC: &str = "{signing: {algorithm: ES256}}";

async fn keys(server: &Server) -> KeySet {
    let (keys, errors) = KeySet::from_jwks(&server.jwks().await);
    assert!(errors.is_empty(), "{errors:?}");
    keys
}

fn check(token: &str, keys: &KeySet, issuer: &str, typ: &str) -> serde_json::Map<String, Value> {
    // RFC 9701 answers carry iat but no exp.
    let require_exp = typ == "at+jwt";
    let expected = Expected {
        typ: Some(typ),
        issuers: &[issuer],
        audiences: &[],
        require_exp,
        leeway: 5,
        now: now(),
    };
    verify(token, keys, &expected).unwrap()
}

/// `client_credentials` authenticated by the client assertion `jwt`.
fn assertion_grant(jwt: &str) -> [(&'static str, &str); 3] {
    [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", jwt),
    ]
}

fn assertion_claims(aud: &str, jti: &str) -> Value {
    json!({"iss": "batch", "sub": "batch", "aud": aud, "jti": jti, "exp": now() + 60, "iat": now()})
}

fn assertion(config: &Config, aud: &str, jti: &str) -> String {
    config
        .batch_key
        .sign_jwt("JWT", &assertion_claims(aud, jti))
        .unwrap()
}

#[tokio::test]
async fn discovery_lists_every_endpoint() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let meta: Value = server
            .http
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta["issuer"], server.issuer);
        for (member, path) in [
            ("token_endpoint", "/oauth2/token"),
            ("introspection_endpoint", "/oauth2/introspect"),
            ("revocation_endpoint", "/oauth2/revoke"),
            ("jwks_uri", "/jwks"),
        ] {
            assert_eq!(meta[member], server.url(path), "{member}");
        }
        assert_eq!(
            meta["scopes_supported"],
            json!(["orders:read", "orders:write"])
        );
        // No client signs people in: no ID token is advertised.
        assert_eq!(meta.get("id_token_signing_alg_values_supported"), None);
    }
    // Counted by route and status; a path of no route as "unmatched".
    let missing = server
        .http
        .get(server.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for counted in [
        r#"tokenmesh_http_requests_total{endpoint="/.well-known/openid-configuration",status="200"} 1"#,
        r#"tokenmesh_http_requests_total{endpoint="unmatched",status="404"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }
}

#[tokio::test]
async fn client_credentials_jwt_follows_rfc_9068() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let resp = server
        .token(&[
            ("scope", "orders:read video_stream_movie123"),
            ("audience", "orders"),
        ])
        .await;
    assert_eq!(resp["token_type"], "Bearer");
    assert_eq!(resp["expires_in"], 300);
    assert_eq!(resp["scope"], "orders:read video_stream_movie123");
    let token = resp["access_token"].as_str().unwrap();
    let header = jwt_part(token, 0);
    assert_eq!(header["alg"], "ES256");
    let claims = check(token, &keys(&server).await, &server.issuer, "at+jwt");
    assert_eq!(claims["sub"], "gateway");
    assert_eq!(claims["client_id"], "gateway");
    assert_eq!(claims["aud"], "orders");
    assert_eq!(claims["tenant"], "acme", "per-client claim");
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, 300);
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    assert_eq!(
        claims["scope_exp"]["video_stream_movie123"]
            .as_u64()
            .unwrap(),
        iat + 1
    );

    // RFC 8707 resource picks the audience; no audience means all of the client's.
    let resp = server.token(&[("resource", "payments")]).await;
    let claims = check(
        resp["access_token"].as_str().unwrap(),
        &keys(&server).await,
        &server.issuer,
        "at+jwt",
    );
    assert_eq!(claims["aud"], "payments");
    assert_eq!(
        claims["scope"], "orders:read orders:write",
        "default scopes are the client's named scopes"
    );
    let resp = server.token(&[]).await;
    let claims = check(
        resp["access_token"].as_str().unwrap(),
        &keys(&server).await,
        &server.issuer,
        "at+jwt",
    );
    assert_eq!(claims["aud"], json!(["orders", "payments"]));
}

#[tokio::test]
async fn client_secret_post_gets_an_eddsa_token() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "poster"),
        ("client_secret", SECRET),
    ];
    let resp = server.post("/oauth2/token", None, &form).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = check(
        body["access_token"].as_str().unwrap(),
        &keys(&server).await,
        &server.issuer,
        "at+jwt",
    );
    assert_eq!(claims["client_id"], "poster");
    // Basic is not this client's method.
    let resp = server
        .post(
            "/oauth2/token",
            Some(("poster", SECRET)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn private_key_jwt_opaque_token_introspection_and_replay() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let token_url = server.url("/oauth2/token");
    let jwt = assertion(&config, &token_url, "a-1");
    let form = assertion_grant(&jwt);
    let resp = server.post("/oauth2/token", None, &form).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let opaque = body["access_token"].as_str().unwrap().to_owned();
    assert!(
        opaque.starts_with("tmo_") && opaque.len() >= 4 + 43,
        "{opaque}"
    );
    assert_eq!(body["expires_in"], 600);

    let replay = server.post("/oauth2/token", None, &form).await;
    assert_eq!(replay.status(), 401);
    let err: Value = replay.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client");

    let wrong_aud = assertion(&config, "https://elsewhere", "a-2");
    let form = assertion_grant(&wrong_aud);
    assert_eq!(
        server.post("/oauth2/token", None, &form).await.status(),
        401
    );

    let info = server.introspect(&opaque).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["client_id"], "batch");
    assert_eq!(info["scope"], "orders:read");
    assert_eq!(info["aud"], "orders");

    // RFC 9701: a signed introspection answer.
    let resp = server
        .http
        .post(server.url("/oauth2/introspect"))
        .basic_auth("gateway", Some(SECRET))
        .header("accept", "application/token-introspection+jwt")
        .form(&[("token", opaque.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/token-introspection+jwt"
    );
    let signed = resp.text().await.unwrap();
    let keys = keys(&server).await;
    let claims = check(&signed, &keys, &server.issuer, "token-introspection+jwt");
    assert_eq!(claims["aud"], "gateway");
    assert_eq!(claims["token_introspection"]["active"], true);
    assert_eq!(claims["token_introspection"]["client_id"], "batch");

    // Phantom token: the opaque token's claims as a JWT access token.
    let resp = server
        .http
        .post(server.url("/oauth2/introspect"))
        .basic_auth("gateway", Some(SECRET))
        .header("accept", "application/jwt")
        .form(&[("token", opaque.as_str())])
        .send()
        .await
        .unwrap();
    let phantom = resp.text().await.unwrap();
    let claims = check(&phantom, &keys, &server.issuer, "at+jwt");
    assert_eq!(claims["client_id"], "batch");
    assert_eq!(claims["jti"], info["jti"]);

    // batch may not introspect.
    let jwt = assertion(&config, &server.url("/oauth2/introspect"), "a-3");
    let form = [
        ("token", opaque.as_str()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", jwt.as_str()),
    ];
    assert_eq!(
        server
            .post("/oauth2/introspect", None, &form)
            .await
            .status(),
        403
    );
}

/// Issue #14 item 7: RFC 7515 §4.1.11. An assertion whose `crit` names an
/// extension the server does not understand is refused, though it verifies.
#[tokio::test]
async fn a_client_assertion_with_crit_is_refused() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let token_url = server.url("/oauth2/token");
    let mut header = jsonwebtoken::Header::new(tokenmesh_tokens::Algorithm::ES256);
    header.typ = Some("JWT".into());
    header.kid = Some("batch-1".into());
    header.crit = Some(vec!["x-unknown".into()]);
    header.extras.insert("x-unknown", true);
    let key = jsonwebtoken::EncodingKey::from_ec_der(config.batch_key.pkcs8());
    let critical =
        jsonwebtoken::encode(&header, &assertion_claims(&token_url, "c-1"), &key).unwrap();
    let resp = server
        .post("/oauth2/token", None, &assertion_grant(&critical))
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    header.crit = None;
    let plain = jsonwebtoken::encode(&header, &assertion_claims(&token_url, "c-2"), &key).unwrap();
    let resp = server
        .post("/oauth2/token", None, &assertion_grant(&plain))
        .await;
    assert_eq!(resp.status(), 200, "the same assertion without crit");
}

/// Issue #14 item 1: scopes are split on the space only. A client allowed
/// only the prefix `video_stream_` cannot smuggle scopes behind a tab (or
/// any other byte outside a scope-token): invalid_scope.
#[tokio::test]
async fn scopes_joined_by_other_whitespace_are_invalid_scope() {
    let config = Config::new(ES256_SPEC);
    config.append("---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: viewer}\nspec:\n  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}\n  scopes: [video_stream_]\n  audiences: [orders]\n  allowIntrospection: true\n");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let ask = async |scope: &str| {
        let form = [("grant_type", "client_credentials"), ("scope", scope)];
        let resp = server
            .post("/oauth2/token", Some(("viewer", SECRET)), &form)
            .await;
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    for scope in [
        "video_stream_x\torders:write\tadmin",
        "video_stream_x\norders:write",
        "video_stream_x\u{b}admin",
        "video_stream_x\u{a0}admin",
        "video_stream_\"x",
    ] {
        let (status, body) = ask(scope).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{scope:?}: {body}"
        );
    }
    let (status, body) = ask(" video_stream_x  video_stream_y ").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "video_stream_x video_stream_y");
}

#[tokio::test]
async fn revocation_of_jwts_opaque_tokens_and_grants() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let a = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", &a), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(server.introspect(&a).await, json!({"active": false}));
    assert_eq!(
        server.introspect(&b).await["active"],
        true,
        "only the one token"
    );
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", "unknown")],
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "unknown tokens are fine (RFC 7009 §2.2)"
    );
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", &b), ("revoke", "grant")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(server.introspect(&b).await["active"], false);
    // Someone else's token cannot be revoked.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "poster"),
        ("client_secret", SECRET),
    ];
    let theirs: Value = server
        .post("/oauth2/token", None, &form)
        .await
        .json()
        .await
        .unwrap();
    let theirs = theirs["access_token"].as_str().unwrap();
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", theirs)],
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(server.introspect(theirs).await["active"], true);
}

#[tokio::test]
async fn a_client_past_its_revocation_rate_is_answered_429_with_retry_after() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let limits = ["--revoke-rate", "0.01", "--revoke-burst", "3"].map(String::from);
    let server = Server::start_with(
        &config,
        data.path(),
        limits.to_vec(),
        reqwest::Client::new(),
        "http",
    )
    .await;
    let token = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoke = async |token: &str| {
        server
            .post(
                "/oauth2/revoke",
                Some(("gateway", SECRET)),
                &[("token", token)],
            )
            .await
    };
    for _ in 0..3 {
        assert_eq!(revoke("unknown").await.status(), 200);
    }
    let resp = revoke(&token).await;
    assert_eq!(resp.status(), 429);
    // One more every 100 s (RFC 6585 §4).
    assert_eq!(resp.headers()["retry-after"], "100");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
    assert_eq!(
        server.introspect(&token).await["active"],
        true,
        "not revoked"
    );
    // The budget is per client.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "poster"),
        ("client_secret", SECRET),
    ];
    let theirs: Value = server
        .post("/oauth2/token", None, &form)
        .await
        .json()
        .await
        .unwrap();
    let theirs = theirs["access_token"].as_str().unwrap();
    let form = [
        ("token", theirs),
        ("client_id", "poster"),
        ("client_secret", SECRET),
    ];
    assert_eq!(
        server.post("/oauth2/revoke", None, &form).await.status(),
        200
    );
    assert_eq!(server.introspect(theirs).await["active"], false);
}

#[tokio::test]
async fn opaque_tokens_and_revocations_survive_kill_9() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&config, data.path()).await;
    let mut opaque = Vec::new();
    for jti in ["k-1", "k-2"] {
        let jwt = assertion(&config, &server.url("/oauth2/token"), jti);
        let form = assertion_grant(&jwt);
        let body: Value = server
            .post("/oauth2/token", None, &form)
            .await
            .json()
            .await
            .unwrap();
        opaque.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let jwt = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let jwks_before = server.jwks_text().await;
    let jwt_assertion = assertion(&config, &server.url("/oauth2/revoke"), "k-3");
    let form = [
        ("token", opaque[1].as_str()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", jwt_assertion.as_str()),
    ];
    assert_eq!(
        server.post("/oauth2/revoke", None, &form).await.status(),
        200
    );

    server.kill_and_restart().await;

    assert_eq!(server.introspect(&opaque[0]).await["active"], true);
    assert_eq!(server.introspect(&opaque[1]).await["active"], false);
    assert_eq!(
        server.introspect(&jwt).await["active"],
        true,
        "signing keys persist"
    );
    let jwks_after = server.jwks_text().await;
    assert_eq!(jwks_before, jwks_after);
    let replay = server.post("/oauth2/revoke", None, &form).await;
    assert_eq!(replay.status(), 401, "replay records persist");
}

#[tokio::test]
async fn bad_requests_get_rfc_errors_never_500() {
    let config = Config::new(ES256_SPEC);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let cc = ("grant_type", "client_credentials");
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Option<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            vec![cc, ("scope", "orders:delete")],
            Some(("gateway", SECRET)),
            400,
            "invalid_scope",
        ),
        (
            vec![cc, ("scope", "video_stream_")],
            Some(("gateway", SECRET)),
            400,
            "invalid_scope",
        ),
        (
            vec![cc, ("audience", "billing")],
            Some(("gateway", SECRET)),
            400,
            "invalid_target",
        ),
        (
            vec![("grant_type", "password")],
            Some(("gateway", SECRET)),
            400,
            "unsupported_grant_type",
        ),
        (vec![], Some(("gateway", SECRET)), 400, "invalid_request"),
        (
            vec![cc],
            Some(("gateway", "wrong-secret")),
            401,
            "invalid_client",
        ),
        (vec![cc], Some(("nobody", SECRET)), 401, "invalid_client"),
        (vec![cc], None, 401, "invalid_client"),
        (
            vec![cc, ("client_id", "poster"), ("client_secret", SECRET)],
            Some(("gateway", SECRET)),
            400,
            "invalid_request",
        ),
    ];
    for (form, auth, status, error) in cases {
        let resp = server.post("/oauth2/token", auth, &form).await;
        assert_eq!(resp.status(), status, "{form:?}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        if status == 401 {
            assert!(resp.headers().contains_key("www-authenticate"));
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], error, "{form:?}");
    }
    let raw = |content_type: &'static str, body: Vec<u8>| {
        server
            .http
            .post(server.url("/oauth2/token"))
            .basic_auth("gateway", Some(SECRET))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let form = "application/x-www-form-urlencoded";
    for (content_type, body, status) in [
        (
            form,
            b"grant_type=client_credentials&grant_type=client_credentials".to_vec(),
            400,
        ),
        (
            form,
            b"grant_type=client_credentials&scope=%FF".to_vec(),
            400,
        ),
        (form, vec![b'a'; 200 * 1024], 413),
        (
            "application/json",
            br#"{"grant_type":"client_credentials"}"#.to_vec(),
            400,
        ),
        (form, b"%%%=&&==".to_vec(), 400),
    ] {
        let resp = raw(content_type, body).await.unwrap();
        assert_eq!(resp.status(), status);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert!(!body["error_description"].as_str().unwrap().contains("sqlx"));
    }
    let resp = server
        .http
        .get(server.url("/oauth2/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

/// Introspection remembers opaque-token records (`--opaque-token-cache`);
/// with 0 every introspection reads the store. `/metrics` tells which.
#[tokio::test]
async fn the_opaque_token_cache_spares_store_reads_and_can_be_turned_off() {
    let config = Config::new(ES256_SPEC);
    for (cache, from_store, from_cache) in [("20000", 1, 2), ("0", 3, 0)] {
        let data = tempfile::tempdir().unwrap();
        let extra = vec!["--opaque-token-cache".to_owned(), cache.to_owned()];
        let server =
            Server::start_with(&config, data.path(), extra, reqwest::Client::new(), "http").await;
        let token_url = server.url("/oauth2/token");
        let jwt = assertion(&config, &token_url, "cache-1");
        let form = assertion_grant(&jwt);
        let body: Value = server
            .post("/oauth2/token", None, &form)
            .await
            .json()
            .await
            .unwrap();
        let opaque = body["access_token"].as_str().unwrap();
        for _ in 0..3 {
            assert_eq!(server.introspect(opaque).await["active"], true);
        }
        let (_, metrics) = server.get("/metrics").await;
        let count = |source: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("tokenmesh_opaque_token_lookups_total")
                        && l.contains(&format!("source=\"{source}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map_or(0, |n| n.parse::<u64>().unwrap())
        };
        assert_eq!(
            (count("store"), count("cache")),
            (from_store, from_cache),
            "--opaque-token-cache {cache}: {metrics}"
        );
    }
}
