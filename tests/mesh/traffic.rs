//! Requests through the mesh.

use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde_json::{Value, json};
use tokenmesh_tokens::{Algorithm, secret::SecretHash, signing::SigningKey};

use crate::harness::{
    App, Mesh, ORDERS_TO_PAYMENTS, Sidecar, TokenServer, claims, free_port, policy,
};

#[tokio::test]
async fn three_hops_carry_the_right_token_by_share_exchange_and_embed() {
    let mesh = Mesh::start().await;
    let t0 = mesh.server.token("frontend", None).await;
    let (status, body, _) = mesh.call(Some(&t0)).await;
    assert_eq!(status, 200, "{body}");
    // gateway: the caller's token.
    assert_eq!(body["received"], format!("Bearer {t0}"));
    // orders: the same token, shared.
    assert_eq!(body["next_status"], 200, "{body}");
    assert_eq!(body["next"]["received"], format!("Bearer {t0}"));
    // payments: a token exchanged for its audience, with orders-svc as actor.
    let at_payments = &body["next"]["next"];
    assert_eq!(body["next"]["next_status"], 200, "{body}");
    let t1 = claims(&at_payments["received"]);
    assert_eq!(t1["aud"], "payments");
    assert_eq!(t1["sub"], "frontend");
    assert_eq!(t1["client_id"], "orders-svc");
    assert_eq!(
        t1["act"],
        json!({"sub": "orders-svc", "client_id": "orders-svc"})
    );
    assert_eq!(t1["scope"], "orders:read", "narrowed by the policy");
    // ledger: the token embedded for it in the payments token.
    assert_eq!(at_payments["next_status"], 200, "{body}");
    let t2 = claims(&at_payments["next"]["received"]);
    assert_eq!(t2["aud"], "ledger");
    assert_eq!(t2["sub"], "frontend");
    assert_eq!(t2["scope"], "orders:read");
    assert_eq!(
        format!(
            "Bearer {}",
            t1["embedded_tokens"]["ledger"].as_str().unwrap()
        ),
        at_payments["next"]["received"]
    );

    // Again: every decision comes from the caches; the token server is not asked.
    let exchanges = mesh.server.issued("token_exchange").await;
    let sidecar_exchanges = mesh.sidecars[1]
        .metric("tokenmesh_sidecar_exchanges_total")
        .await;
    let (status, again, _) = mesh.call(Some(&t0)).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["next"]["next"]["received"], at_payments["received"],
        "the cached exchanged token"
    );
    assert_eq!(mesh.server.issued("token_exchange").await, exchanges);
    assert_eq!(
        mesh.sidecars[1]
            .metric("tokenmesh_sidecar_exchanges_total")
            .await,
        sidecar_exchanges
    );
    assert!(
        mesh.sidecars[0]
            .metric("tokenmesh_sidecar_cache_hits_total")
            .await
            >= 2
    );
}

#[tokio::test]
async fn a_policy_that_changes_scopes_is_not_answered_from_the_exchange_cache() {
    let mesh = Mesh::start().await;
    let t0 = mesh.server.token("frontend", None).await;
    let scope_at_payments =
        |body: &Value| claims(&body["next"]["next"]["received"])["scope"].clone();
    let (status, body, _) = mesh.call(Some(&t0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(scope_at_payments(&body), "orders:read");

    let narrowed =
        ORDERS_TO_PAYMENTS.replace("scopes: [\"orders:read\"]", "scopes: [\"orders:write\"]");
    assert_ne!(narrowed, ORDERS_TO_PAYMENTS);
    mesh.server
        .apply(policy("orders-to-payments", &narrowed))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = mesh.call(Some(&t0)).await;
        assert_eq!(status, 200, "{body}");
        if scope_at_payments(&body) == "orders:write" {
            break;
        }
        assert_eq!(scope_at_payments(&body), "orders:read", "{body}");
        assert!(
            Instant::now() < deadline,
            "the cached token for the old scopes is still sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `url` through `sidecar`'s outbound proxy, as its application would.
async fn through(sidecar: &Sidecar, url: &str, token: &str) -> u16 {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", sidecar.outbound)).unwrap())
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_revoked_subject_token_is_not_exchanged_or_shared_from_the_caches() {
    let mesh = Mesh::start().await;
    let t0 = mesh.server.token("frontend", None).await;
    let (status, body, _) = mesh.call(Some(&t0)).await;
    assert_eq!(body["next"]["next_status"], 200, "{body}");
    assert_eq!(status, 200);
    // Cached now: the gateway's share check and orders' exchange of t0.
    let (gateway, orders) = (&mesh.sidecars[0], &mesh.sidecars[1]);
    assert_eq!(through(orders, "http://payments.local/hop", &t0).await, 200);

    mesh.server.revoke("frontend", &t0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for sidecar in [gateway, orders] {
        while sidecar.metric("tokenmesh_sidecar_revocations_total").await == 0 {
            assert!(
                Instant::now() < deadline,
                "the revocation did not stream in"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Asked again, the token server refuses (403): no token derived from t0
    // leaves. From the caches, the exchanged token went out to payments and
    // t0 to orders, each refused there (401).
    assert_eq!(through(orders, "http://payments.local/hop", &t0).await, 403);
    assert_eq!(through(gateway, "http://orders.local/hop", &t0).await, 403);
}

#[tokio::test]
async fn opaque_tokens_reach_the_application_as_their_phantom_jwt() {
    let mesh = Mesh::start().await;
    let opaque = mesh.server.token("frontend-opaque", None).await;
    assert_eq!(opaque.matches('.').count(), 0);
    let (status, body, _) = mesh.call(Some(&opaque)).await;
    assert_eq!(status, 200, "{body}");
    let phantom = claims(&body["received"]);
    assert_eq!(phantom["client_id"], "frontend-opaque");
    assert_eq!(phantom["aud"], json!(["gateway", "orders"]));
    assert_eq!(claims(&body["next"]["next"]["received"])["aud"], "payments");
}

fn forge(header: Value, body: &Value, signature: &[u8]) -> String {
    let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    format!(
        "{}.{}.{}",
        b(header.to_string().as_bytes()),
        b(body.to_string().as_bytes()),
        b(signature)
    )
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    *SecretHash::of(bytes).as_bytes()
}

/// HMAC-SHA256 (RFC 2104), from the SHA-256 the tokens crate has.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = sha256(&[pad(0x36), message.to_vec()].concat());
    sha256(&[pad(0x5c), inner.to_vec()].concat())
}

#[test]
fn hmac_matches_rfc_4231() {
    // Test cases 2 and 6 (a key longer than the block).
    let hex = |bytes: [u8; 32]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

/// HS256 tokens with `claims`, keyed with each form of the token server's
/// public key an HS/RS confused verifier might use as the HMAC secret:
/// the SPKI PEM (with and without its final newline), the SPKI DER, the
/// SEC1 point, the JWK's x||y, and the JWK's JSON.
async fn hs256_with_the_public_key(server: &TokenServer, claims: &Value) -> Vec<(String, String)> {
    let metadata: Value = reqwest::get(format!(
        "{}/.well-known/oauth-authorization-server",
        server.http
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let jwks: Value = reqwest::get(metadata["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for jwk in jwks["keys"].as_array().unwrap() {
        assert_eq!(
            jwk["kty"], "EC",
            "the forms below are for P-256 keys: {jwk}"
        );
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let xy = [coordinate("x"), coordinate("y")].concat();
        let point = [&[0x04][..], &xy].concat();
        // SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 }, BIT STRING of the point.
        let spki_prefix: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let der = [&spki_prefix[..], &point].concat();
        let b64 = STANDARD.encode(&der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        let forms = [
            ("PEM", pem.as_bytes().to_vec()),
            (
                "PEM without its last newline",
                pem.trim_end().as_bytes().to_vec(),
            ),
            ("DER", der.clone()),
            ("SEC1 point", point.clone()),
            ("x||y", xy.clone()),
            ("JWK JSON", jwk.to_string().into_bytes()),
        ];
        for (form, secret) in forms {
            let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": jwk["kid"]});
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let mac = hmac_sha256(&secret, signing_input.as_bytes());
            tokens.push((
                format!("HS256 with the public key as {form}"),
                forge(header, claims, &mac),
            ));
        }
    }
    assert!(!tokens.is_empty());
    tokens
}

#[tokio::test]
async fn bad_tokens_never_reach_the_application() {
    let mesh = Mesh::start().await;
    let real = mesh.server.token("frontend", None).await;
    let real_claims = claims(&json!(format!("Bearer {real}")));
    let stranger = SigningKey::generate("stranger".into(), Algorithm::ES256).unwrap();
    let kid = {
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(real.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        header["kid"].clone()
    };
    let short = mesh.server.token("short-lived", None).await;
    let wrong_audience = mesh.server.token("frontend", Some("orders")).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // `short` expires (1 s, no skew in tests)
    let mut cases = vec![
        ("no token".to_owned(), None),
        ("garbage".to_owned(), Some("not-a-token".to_owned())),
        (
            "alg none".to_owned(),
            Some(forge(
                json!({"alg": "none", "typ": "at+jwt"}),
                &real_claims,
                b"",
            )),
        ),
        (
            "HS256 without a kid".to_owned(),
            Some(forge(
                json!({"alg": "HS256", "typ": "at+jwt"}),
                &real_claims,
                &hmac_sha256(b"any", b"mac"),
            )),
        ),
        (
            "unknown kid".to_owned(),
            Some(stranger.sign_jwt("at+jwt", &real_claims).unwrap()),
        ),
        ("wrong audience".to_owned(), Some(wrong_audience)),
        ("expired".to_owned(), Some(short)),
    ];
    let forged = hs256_with_the_public_key(&mesh.server, &real_claims).await;
    let header_of = |token: &str| -> Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert!(
        forged
            .iter()
            .any(|(_, token)| header_of(token)["kid"] == kid),
        "one key signed the real token, so its forgeries name its kid"
    );
    cases.extend(forged.into_iter().map(|(name, token)| (name, Some(token))));
    let hits = mesh.apps[0].hits();
    for (name, token) in cases {
        let (status, body, challenge) = mesh.call(token.as_deref()).await;
        assert_eq!(status, 401, "{name}: {body}");
        // The contract: every refusal, even with no token at all.
        let metadata = format!(
            "http://{}/.well-known/oauth-protected-resource",
            mesh.sidecars[0].inbound
        );
        assert_eq!(
            challenge,
            Some(format!(
                "Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\""
            )),
            "{name}"
        );
    }
    assert_eq!(
        mesh.apps[0].hits(),
        hits,
        "no bad request reached the application"
    );

    // Revoked: refused at the next request once the revocation streams in.
    let (status, _, _) = mesh.call(Some(&real)).await;
    assert_eq!(status, 200);
    mesh.server.revoke("frontend", &real).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = mesh.call(Some(&real)).await;
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked token still got through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A destination no policy names is refused, and the token does not leave.
    let fresh = mesh.server.token("frontend", None).await;
    let (status, body, _) = mesh
        .call_with(Some(&fresh), Some("http://elsewhere.local/hop"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["next_status"], 403, "{body}");
}

#[tokio::test]
async fn the_token_server_going_down_and_coming_back() {
    let mut mesh = Mesh::start().await;
    let warm = mesh.server.token("frontend", None).await;
    let cold = mesh.server.token("frontend", None).await;
    assert_eq!(mesh.call(Some(&warm)).await.0, 200);
    mesh.server.stop();

    // Cached decisions keep working.
    let (status, body, _) = mesh.call(Some(&warm)).await;
    assert_eq!(status, 200);
    assert_eq!(body["next"]["next"]["next_status"], 200, "{body}");
    // A new one needs the token server: a fast, clear 503.
    let started = Instant::now();
    let (status, body, _) = mesh.call(Some(&cold)).await;
    assert_eq!(status, 200, "the gateway itself verifies locally");
    assert_eq!(body["next_status"], 503, "{body}");
    assert!(
        body["next"]
            .as_str()
            .unwrap_or_default()
            .contains("unavailable"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    mesh.server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body, _) = mesh.call(Some(&cold)).await;
        if body["next"]["next"]["next_status"] == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mesh did not recover: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The streams resumed: a revocation made now still arrives.
    mesh.server.revoke("frontend", &cold).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.call(Some(&cold)).await.0 != 401 {
        assert!(
            Instant::now() < deadline,
            "revocation after reconnect not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kubelet_probes_reach_the_application_only_by_their_configured_path() {
    let server = TokenServer::start().await;
    let app = App::start(None).await;
    let probe = format!("/app-health/app/livez={}/healthz?deep=1", app.addr.port());
    let sidecar = Sidecar::start_with(
        &server,
        "orders-svc",
        "orders",
        app.addr,
        &[],
        free_port(),
        &[
            "--app-probe".into(),
            probe,
            "--app-probe-header".into(),
            "/app-health/app/livez=X-Probe".into(),
        ],
    )
    .await;
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);
    let client = reqwest::Client::new();

    // Anyone who reaches the admin port may call it: only the headers the
    // probe names (and kubelet's own) reach the application.
    let resp = client
        .get(admin("/app-health/app/livez"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .header("cookie", "session=stolen")
        .header("proxy-authorization", "Basic YWRtaW46YWRtaW4=")
        .header("x-forwarded-user", "admin")
        .header("x-probe", "kubelet")
        .header("user-agent", "kube-probe/1.35")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["path"], "/healthz?deep=1",
        "the configured target, not the caller's path"
    );
    assert_eq!(
        body["received"],
        Value::Null,
        "no token needed, none passed on"
    );
    let headers = body["headers"].as_object().unwrap();
    assert_eq!(headers["x-probe"], json!(["kubelet"]));
    assert_eq!(headers["user-agent"], json!(["kube-probe/1.35"]));
    for name in ["cookie", "proxy-authorization", "x-forwarded-user"] {
        assert!(!headers.contains_key(name), "{name} passed on: {body}");
    }

    let resp = client
        .post(admin("/app-health/app/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = client
        .get(admin("/app-health/app/livez/../../orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Only the exact path: nothing below it reaches the application.
    let hits_before = app.hits();
    let resp = client
        .get(admin("/app-health/app/livez/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(app.hits(), hits_before);
    let hits = app.hits();
    let resp = client
        .get(format!("http://{}/healthz?deep=1", sidecar.inbound))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the application's port still wants a token"
    );
    assert_eq!(app.hits(), hits);
}

/// Writes `bytes` to `addr`, then reads until the peer closes; how long that took.
async fn open_for(addr: SocketAddr, bytes: &[u8]) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 512];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{addr} still open after 20 s");
    started.elapsed()
}

#[tokio::test]
async fn slow_clients_are_disconnected_and_stalled_answers_cut_off() {
    let server = TokenServer::start().await;
    // An application that sends its head and a first piece, then nothing.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let ext_authz = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sidecar = Sidecar::start_with(
        &server,
        "gateway-svc",
        "gateway",
        app_addr,
        &[],
        free_port(),
        &[
            "--client-timeout".into(),
            "1s".into(),
            "--stream-idle-timeout".into(),
            "1s".into(),
            "--ext-authz-addr".into(),
            ext_authz.to_string(),
        ],
    )
    .await;
    // The 1 s timeouts plus a loaded machine's delays; without them the
    // connections stay open for the 20 s guards below.
    let bound = Duration::from_secs(8);
    for listener in [sidecar.inbound, sidecar.outbound, ext_authz] {
        // Headers begun and never finished.
        let took = open_for(listener, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        assert!(
            took < bound,
            "{listener}: open {took:?} after a partial request"
        );
        // HTTP/2 (gRPC to ext_authz): the preface, then nothing.
        let took = open_for(listener, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        assert!(took < bound, "{listener}: open {took:?} after the preface");
        // Nothing sent at all.
        let took = open_for(listener, b"").await;
        assert!(took < bound, "{listener}: open {took:?} with nothing sent");
    }

    // The application stalls mid-answer: the client gets its head and
    // first piece, then the answer is cut off, not held open.
    let token = server.token("frontend", None).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/slow", sidecar.inbound))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.bytes()).await;
    let body = body.expect("the stalled answer was held open");
    assert!(body.is_err(), "a cut-off answer is not a complete one");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
}
