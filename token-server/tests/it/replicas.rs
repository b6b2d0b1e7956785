//! Several token-server replicas on one PostgreSQL database.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenmesh_proto::v1::{
    ApplyRequest, WatchRevocationsRequest, control_service_client::ControlServiceClient,
    token_service_client::TokenServiceClient,
};
use tokio::{io::copy_bidirectional, net::TcpListener, task::JoinSet};
use tokio_stream::StreamExt;
use tonic::Request;

use token_server::store::{Store, StoredKey};
use tokenmesh_tokens::signing::SigningKey;

use crate::harness::{ADMIN_TOKEN, Config, SECRET, Server, fresh_database};

const ISSUER: &str = "http://tokenmesh.test";
const ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

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
    let jwks = |s: &Server| {
        let url = s.url("/jwks");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    until("same JWKS", Duration::from_secs(5), async || {
        jwks(&a).await == jwks(&b).await
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
    for replica in [&a, &b] {
        let took = until(
            "the new key published",
            Duration::from_secs(3),
            async || jwks(replica).await.contains("\"successor\""),
        )
        .await;
        assert!(took < Duration::from_secs(1), "took {took:?}");
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

    // A revocation on A reaches a WatchRevocations stream served by B.
    let mut grpc = TokenServiceClient::connect(b.grpc.clone()).await.unwrap();
    let mut watch = Request::new(WatchRevocationsRequest { after_seq: 0 });
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gateway:{SECRET}"));
    watch
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    let mut stream = grpc.watch_revocations(watch).await.unwrap().into_inner();
    let revoked_at = Instant::now();
    let resp = a
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", &jwt)],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let event = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let seen_after = revoked_at.elapsed();
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(event.id, claims["jti"]);
    assert!(
        seen_after < Duration::from_millis(1500),
        "revocation took {seen_after:?} to reach the other replica"
    );
    assert_eq!(b.introspect(&jwt).await["active"], false);

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
    assert!(took < Duration::from_millis(1500), "took {took:?}");

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
    assert!(took < Duration::from_millis(1500), "took {took:?}");

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
    let ready = |s: &Server| {
        let url = s.url("/readyz");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
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
