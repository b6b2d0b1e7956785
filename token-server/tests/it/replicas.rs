//! Several token-server replicas on one PostgreSQL database.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use tokenmesh_proto::v1::{
    ApplyRequest, ExchangeRequest, RevocationEvent, WatchRevocationsRequest,
    control_service_client::ControlServiceClient, revocation_event::Kind,
    token_service_client::TokenServiceClient,
};
use tokio::{io::copy_bidirectional, net::TcpListener, task::JoinSet};
use tokio_stream::StreamExt;
use tonic::{Request, Streaming};

use token_server::store::{Store, StoredKey};
use tokenmesh_tokens::signing::SigningKey;

use crate::harness::{
    ADMIN_TOKEN, Config, SECRET, Server, basic_auth, fresh_database, jwt_part, next_message, now,
};

const ISSUER: &str = "http://tokenmesh.test";
const ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// What the issue asks of every cross-replica change (the store sync runs every 250 ms).
const WITHIN: Duration = Duration::from_secs(1);

fn assertion(config: &Config, jti: &str) -> String {
    let claims =
        json!({"iss": "batch", "sub": "batch", "aud": ISSUER, "jti": jti, "exp": now() + 60});
    config.batch_key.sign_jwt("JWT", &claims).unwrap()
}

async fn opaque(server: &Server, config: &Config, jti: &str) -> reqwest::Response {
    let jwt = assertion(config, jti);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION),
        ("client_assertion", jwt.as_str()),
    ];
    server.post("/oauth2/token", None, &form).await
}

/// The shared configuration plus `orders-svc`, a client with the token-exchange
/// grant (opaque tokens, so what it is issued lives in the database), and a
/// policy letting it trade tokens for `orders` for ones for `payments`.
fn exchange_config() -> Config {
    let config = Config::new("{}");
    let mut yaml = std::fs::read_to_string(config.file()).unwrap();
    yaml += &format!(
        "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: orders-svc}}\nspec:\n  grantTypes: [client_credentials, \"{EXCHANGE}\"]\n  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}\n  scopes: [\"orders:read\"]\n  audiences: [payments]\n  accessToken: {{format: opaque, ttl: 300s}}\n"
    );
    yaml += "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: orders-to-payments}\nspec:\n  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders-svc]}\n  to: {audience: payments, scopes: [\"orders:read\"]}\n  ttl: 120s\n";
    std::fs::write(config.file(), yaml).unwrap();
    config
}

/// A `WatchRevocations` stream served by `server`, after `after_seq`.
async fn watch(server: &Server, after_seq: i64) -> Streaming<RevocationEvent> {
    let mut grpc = TokenServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let mut request = Request::new(WatchRevocationsRequest {
        after_seq,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", basic_auth("gateway").parse().unwrap());
    grpc.watch_revocations(request).await.unwrap().into_inner()
}

/// A fresh JWT of `gateway` from `server`, and its jti.
async fn gateway_jwt(server: &Server) -> (String, String) {
    let jwt = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let jti = jwt_part(&jwt, 1)["jti"].as_str().unwrap().to_owned();
    (jwt, jti)
}

/// `gateway` revokes one of its tokens on `server`.
async fn revoke(server: &Server, token: &str) {
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", token)],
        )
        .await;
    assert_eq!(resp.status(), 200);
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn replicas_share_tokens_revocations_resources_keys_and_replay_records() {
    let config = Config::new("{}");
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_replica(&config, da.path(), &url, ISSUER).await;
    let b = Server::start_replica(&config, db.path(), &url, ISSUER).await;

    // One JWKS.
    until("same JWKS", Duration::from_secs(5), async || {
        a.jwks_text().await == b.jwks_text().await
    })
    .await;

    // A key the rotating replica adds (here: written straight to the
    // database, as that replica would) is published by both within a second,
    // not at their next rotation check.
    let store = token_server::store::PgStore::connect(&url, 1)
        .await
        .unwrap();
    let successor =
        SigningKey::generate("successor".into(), tokenmesh_tokens::Algorithm::ES256).unwrap();
    let stored = StoredKey {
        kid: "successor".into(),
        alg: "ES256".into(),
        pkcs8: successor.pkcs8().to_vec(),
        created_at: now(),
        activates_at: now() + 3600,
        retires_at: None,
        publish_until: None,
    };
    store.save_signing_key(&stored).await.unwrap();
    let saved = Instant::now();
    for replica in [&a, &b] {
        until(
            "the new key published",
            Duration::from_secs(3),
            async || replica.jwks_text().await.contains("\"successor\""),
        )
        .await;
        let took = saved.elapsed();
        assert!(took < WITHIN, "took {took:?}");
    }
    store.close().await;

    // A token from one replica introspects, and revokes, on the other.
    let token: Value = opaque(&a, &config, "r-1").await.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(b.introspect(&token).await["active"], true);
    let jwt = a.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.introspect(&jwt).await["active"], true);

    // A revocation on A is in force on B within a second (the streams of
    // every replica: a_revocation_reaches_the_streams_of_every_replica).
    revoke(&a, &jwt).await;
    let took = until(
        "JWT revocation in force on B",
        Duration::from_secs(3),
        async || b.introspect(&jwt).await["active"] == false,
    )
    .await;
    assert!(took < WITHIN, "took {took:?}");

    // B remembers the opaque token it introspected; revoking it on A still counts.
    assert_eq!(b.introspect(&token).await["active"], true);
    let by_owner = assertion(&config, "r-revoke");
    let resp = a
        .post(
            "/oauth2/revoke",
            None,
            &[
                ("token", token.as_str()),
                ("client_assertion_type", ASSERTION),
                ("client_assertion", by_owner.as_str()),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let took = until(
        "opaque revocation in force on B",
        Duration::from_secs(3),
        async || b.introspect(&token).await["active"] == false,
    )
    .await;
    assert!(took < WITHIN, "took {took:?}");

    // A resource applied on A is in force on B.
    let mut control = ControlServiceClient::connect(a.grpc.clone()).await.unwrap();
    let hash = tokenmesh_tokens::secret::SecretHash::of(SECRET.as_bytes()).encode();
    let document = format!(
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: late}}\nspec:\n  authentication: {{method: client_secret_basic, secretHashes: [\"{hash}\"]}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n"
    );
    let mut apply = Request::new(ApplyRequest { document });
    apply.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    control.apply(apply).await.unwrap();
    let took = until(
        "applied client in force on B",
        Duration::from_secs(3),
        async || {
            b.post(
                "/oauth2/token",
                Some(("late", SECRET)),
                &[("grant_type", "client_credentials")],
            )
            .await
            .status()
                == 200
        },
    )
    .await;
    assert!(took < WITHIN, "took {took:?}");

    // An assertion used on A is refused when replayed on B.
    let jwt = assertion(&config, "once");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION),
        ("client_assertion", jwt.as_str()),
    ];
    assert_eq!(a.post("/oauth2/token", None, &form).await.status(), 200);
    assert_eq!(b.post("/oauth2/token", None, &form).await.status(), 401);
}

#[tokio::test]
async fn a_token_from_one_replica_exchanges_on_the_other() {
    let config = exchange_config();
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_replica(&config, da.path(), &url, ISSUER).await;
    let b = Server::start_replica(&config, db.path(), &url, ISSUER).await;

    // A JWT issued by A, exchanged on B over HTTP (RFC 8693).
    let subject = a
        .token(&[("audience", "orders"), ("scope", "orders:read")])
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", "payments"),
    ];
    let resp = b
        .post("/oauth2/token", Some(("orders-svc", SECRET)), &form)
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["scope"], "orders:read");
    let exchanged = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        exchanged.split('.').count(),
        1,
        "opaque: kept in the database"
    );
    // B stored it; A finds it, with the subject and the actor.
    let info = a.introspect(&exchanged).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "gateway");
    assert_eq!(info["aud"], "payments");
    assert_eq!(info["client_id"], "orders-svc");
    assert_eq!(info["act"]["sub"], "orders-svc");

    // An opaque token issued by A (only in the database), exchanged on B over gRPC.
    let opaque_subject: Value = opaque(&a, &config, "x-1").await.json().await.unwrap();
    let opaque_subject = opaque_subject["access_token"].as_str().unwrap().to_owned();
    let mut grpc = TokenServiceClient::connect(b.grpc.clone()).await.unwrap();
    let mut request = Request::new(ExchangeRequest {
        subject_token: opaque_subject.clone(),
        audience: "payments".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", basic_auth("orders-svc").parse().unwrap());
    let from_opaque = grpc.exchange(request).await.unwrap().into_inner();
    assert_eq!(from_opaque.scopes, vec!["orders:read"]);
    let info = a.introspect(&from_opaque.access_token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "batch");
    assert_eq!(info["act"]["sub"], "orders-svc");

    // Revoking the subject's whole grant on B ends, on A, the token exchanged
    // on B; A no longer exchanges the subject.
    let resp = b
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", subject.as_str()), ("revoke", "grant")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let took = until(
        "grant revocation in force on A",
        Duration::from_secs(3),
        async || a.introspect(&exchanged).await["active"] == false,
    )
    .await;
    assert!(took < WITHIN, "took {took:?}");
    let resp = a
        .post("/oauth2/token", Some(("orders-svc", SECRET)), &form)
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    // The token exchanged on B is revoked by its holder on A, and is inactive on B.
    assert_eq!(
        b.introspect(&from_opaque.access_token).await["active"],
        true
    );
    let resp = a
        .post(
            "/oauth2/revoke",
            Some(("orders-svc", SECRET)),
            &[("token", from_opaque.access_token.as_str())],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let took = until(
        "revocation of the exchanged token in force on B",
        Duration::from_secs(3),
        async || b.introspect(&from_opaque.access_token).await["active"] == false,
    )
    .await;
    assert!(took < WITHIN, "took {took:?}");
    // Its subject is untouched.
    assert_eq!(b.introspect(&opaque_subject).await["active"], true);
}

#[tokio::test]
async fn a_revocation_reaches_the_streams_of_every_replica() {
    let config = Config::new("{}");
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_replica(&config, da.path(), &url, ISSUER).await;
    let b = Server::start_replica(&config, db.path(), &url, ISSUER).await;
    let mut on_a = watch(&a, 0).await;
    let mut on_b = watch(&b, 0).await;

    // Revoked on one replica, then on the other: each stream gets both, in
    // the same order with the same cursors, within a second.
    let mut seen = Vec::new();
    for (n, by) in [&a, &b].into_iter().enumerate() {
        let (jwt, jti) = gateway_jwt(by).await;
        let revoked_at = Instant::now();
        revoke(by, &jwt).await;
        let timed = async |stream: &mut Streaming<RevocationEvent>| {
            let event = next_message(stream, Duration::from_secs(3)).await;
            (event, revoked_at.elapsed())
        };
        let ((from_a, took_a), (from_b, took_b)) = tokio::join!(timed(&mut on_a), timed(&mut on_b));
        for (event, took, served_by) in [(&from_a, took_a, "A"), (&from_b, took_b, "B")] {
            assert_eq!(event.kind, Kind::Token as i32);
            assert_eq!(event.id, jti, "revocation {n} on the stream of {served_by}");
            assert!(
                took < WITHIN,
                "revocation {n} took {took:?} to reach the stream of {served_by}"
            );
        }
        assert_eq!(from_a.seq, from_b.seq);
        seen.push(from_a.seq);
    }
    assert!(seen[0] < seen[1], "{seen:?}");
}

#[tokio::test]
async fn the_revocation_cursor_survives_a_replica_restart() {
    let config = Config::new("{}");
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_replica(&config, da.path(), &url, ISSUER).await;
    let mut b = Server::start_replica(&config, db.path(), &url, ISSUER).await;

    // A client of B's stream has seen two revocations made on A.
    let mut stream = watch(&b, 0).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (jwt, jti) = gateway_jwt(&a).await;
        revoke(&a, &jwt).await;
        let event = next_message(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(event.id, jti);
        seen.push(jti);
    }
    let mut cursor = 0;
    let mut replay = watch(&a, 0).await;
    for jti in &seen {
        let event = next_message(&mut replay, Duration::from_secs(3)).await;
        assert_eq!(&event.id, jti);
        cursor = event.seq;
    }
    drop(replay);

    // B is killed with its stream open; revocations go on on A meanwhile,
    // and after B is back.
    b.kill();
    assert!(
        tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .expect("the stream of a killed replica ends")
            .is_none_or(|item| item.is_err()),
        "no event from a killed replica"
    );
    let mut missed = Vec::new();
    for _ in 0..3 {
        let (jwt, jti) = gateway_jwt(&a).await;
        revoke(&a, &jwt).await;
        missed.push(jti);
    }
    b.restart().await;
    let (jwt, jti) = gateway_jwt(&a).await;
    revoke(&a, &jwt).await;
    missed.push(jti);

    // Resuming on the restarted B from the cursor: exactly the missed ones,
    // in order, and then nothing more.
    let mut resumed = watch(&b, cursor).await;
    let mut last = cursor;
    for jti in &missed {
        let event = next_message(&mut resumed, Duration::from_secs(3)).await;
        assert_eq!(&event.id, jti, "after seq {last}");
        assert!(event.seq > last, "{} after {last}", event.seq);
        last = event.seq;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(700), resumed.next())
            .await
            .is_err(),
        "more than the missed revocations"
    );
    // The stream stays live: one more, on B itself.
    let (jwt, jti) = gateway_jwt(&b).await;
    revoke(&b, &jwt).await;
    let event = next_message(&mut resumed, WITHIN).await;
    assert_eq!(event.id, jti);
    assert!(event.seq > last);
}

#[tokio::test]
async fn a_replica_killed_mid_request_loses_nothing_acknowledged() {
    let config = Config::new("{}");
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Server::start_replica(&config, da.path(), &url, ISSUER).await;
    let b = Server::start_replica(&config, db.path(), &url, ISSUER).await;
    let mut load = JoinSet::new();
    for worker in 0..8 {
        let (http, endpoint) = (reqwest::Client::new(), a.url("/oauth2/token"));
        let assertions: Vec<String> = (0..200)
            .map(|i| assertion(&config, &format!("k-{worker}-{i}")))
            .collect();
        load.spawn(async move {
            let mut acknowledged = Vec::new();
            for jwt in assertions {
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION),
                    ("client_assertion", jwt.as_str()),
                ];
                match http.post(&endpoint).form(&form).send().await {
                    Ok(resp) if resp.status() == 200 => match resp.json::<Value>().await {
                        Ok(body) => {
                            acknowledged.push(body["access_token"].as_str().unwrap().to_owned())
                        }
                        Err(_) => break,
                    },
                    _ => break,
                }
            }
            acknowledged
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    let mut acknowledged = Vec::new();
    while let Some(done) = load.join_next().await {
        acknowledged.extend(done.unwrap());
    }
    assert!(!acknowledged.is_empty(), "the load never got going");
    for token in &acknowledged {
        assert_eq!(
            b.introspect(token).await["active"],
            true,
            "an acknowledged token was lost"
        );
    }
}

/// A TCP relay to the database that can be cut and restored.
struct Relay {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    target: String,
}

impl Relay {
    async fn start(target: String) -> Self {
        let port = crate::harness::free_port();
        let mut relay = Self {
            port,
            task: None,
            target,
        };
        relay.restore().await;
        relay
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Drops the listener and every relayed connection.
    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[tokio::test]
async fn the_database_going_away_and_coming_back() {
    let config = Config::new("{}");
    let url = fresh_database().await;
    let (prefix, rest) = url.split_once("@").unwrap();
    let (target, database) = rest.split_once('/').unwrap();
    let mut relay = Relay::start(target.to_owned()).await;
    let relayed = format!("{prefix}@127.0.0.1:{}/{database}", relay.port);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_replica(&config, data.path(), &relayed, ISSUER).await;
    let ready = async |s: &Server| s.get("/readyz").await.0;
    let resp = opaque(&server, &config, "d-1").await;
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(server.introspect(&token).await["active"], true);

    relay.cut();
    // Remembered opaque tokens are not vouched for once revocations cannot be
    // followed: 503 after at most the freshness window, never a wrong answer.
    until(
        "introspection unavailable",
        Duration::from_secs(6),
        async || {
            let resp = server
                .post(
                    "/oauth2/introspect",
                    Some(("gateway", SECRET)),
                    &[("token", &token)],
                )
                .await;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            assert!(status == 503 || body["active"] == true, "{status} {body}");
            status == 503
        },
    )
    .await;
    // JWTs for secret clients need no stored state: still issued.
    assert_eq!(server.token(&[]).await["token_type"], "Bearer");
    // Opaque issuance needs the store: a clear 503, never a wrong answer.
    let resp = opaque(&server, &config, "d-2").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "temporarily_unavailable"
    );
    assert_eq!(ready(&server).await, 503);

    relay.restore().await;
    until("ready again", Duration::from_secs(15), async || {
        ready(&server).await == 200
    })
    .await;
    until(
        "opaque issuance again",
        Duration::from_secs(15),
        async || {
            opaque(&server, &config, &format!("d-3-{}", now()))
                .await
                .status()
                == 200
        },
    )
    .await;
}

/// During a change of the key-encryption secret, a replica still on the old
/// secret alone cannot open keys another replica sealed under the new one:
/// it keeps signing with the keys it has, and says so in `/readyz`.
#[tokio::test]
async fn a_replica_that_cannot_open_the_stored_keys_is_not_ready() {
    let with_secrets = |spec: &str| {
        let config = Config::new(spec);
        for (name, value) in [
            ("old", "the-old-key-encryption-secret-0123456789"),
            ("new", "the-new-key-encryption-secret-0123456789"),
        ] {
            config.write_secret(name, "key", value);
        }
        config
    };
    let old = with_secrets("{signing: {keyEncryptionKeyRef: {name: old, key: key}}}");
    let new = with_secrets(
        "{signing: {keyEncryptionKeyRef: {name: new, key: key}, previousKeyEncryptionKeyRefs: [{name: old, key: key}]}}",
    );
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_replica(&old, da.path(), &url, ISSUER).await;
    let ready = async |server: &Server| server.get("/readyz").await.0;
    assert_eq!(ready(&a).await, 200);
    let b = Server::start_replica(&new, db.path(), &url, ISSUER).await;
    until(
        "the old-secret replica not ready",
        Duration::from_secs(5),
        async || ready(&a).await == 503,
    )
    .await;
    assert_eq!(ready(&b).await, 200);
    let (_, body) = a.get("/readyz").await;
    assert!(body.contains("cannot be opened"), "{body}");
    // It still signs with the keys it had.
    assert_eq!(
        a.token(&[("audience", "orders")]).await["token_type"],
        "Bearer"
    );
}

/// DPoP across replicas without shared state but the database: a proof used
/// on A is a replay on B (the store's use_once table), and a nonce A hands
/// out is good on B (both derive it from the same signing keys).
#[tokio::test]
async fn a_dpop_proof_is_used_once_across_replicas_and_their_nonces_agree() {
    use tokenmesh_tokens::{
        Algorithm,
        clock::{Clock, SystemClock},
        dpop::create::ProofKey,
    };
    let config = Config::new("{dpop: {requireNonce: true}}");
    let url = fresh_database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_replica(&config, da.path(), &url, ISSUER).await;
    let b = Server::start_replica(&config, db.path(), &url, ISSUER).await;
    until("same JWKS", Duration::from_secs(5), async || {
        a.jwks_text().await == b.jwks_text().await
    })
    .await;
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let endpoint = format!("{ISSUER}/oauth2/token");
    let proof = |nonce: Option<&str>| {
        key.proof("POST", &endpoint, None, nonce, SystemClock.unix())
            .unwrap()
    };
    let send = async |server: &Server, proof: &str| {
        let resp = server
            .http
            .post(server.url("/oauth2/token"))
            .basic_auth("gateway", Some(crate::harness::SECRET))
            .header("DPoP", proof)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        let nonce = resp
            .headers()
            .get("dpop-nonce")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            resp.status().as_u16(),
            nonce,
            resp.json::<Value>().await.unwrap(),
        )
    };

    let (status, nonce, body) = send(&a, &proof(None)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
    let nonce = nonce.unwrap();
    let used = proof(Some(&nonce));
    let (status, _, body) = send(&b, &used).await;
    assert_eq!(status, 200, "A's nonce on B: {body}");
    assert_eq!(body["token_type"], "DPoP");
    let (status, _, body) = send(&a, &used).await;
    assert_eq!(status, 400, "replayed on A: {body}");
    assert_eq!(body["error"], "invalid_dpop_proof");
}
