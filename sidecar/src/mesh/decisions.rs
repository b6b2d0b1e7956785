//! The mesh's decisions against a fake token server and a manual clock:
//! share, exchange and embed, the caches and what drops them, the keys, and
//! what a token server that cannot answer costs a request.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use serde_json::json;
use tokenmesh_proto::v1::{
    CheckShareResponse, ExchangeResponse, GetJwksResponse, IntrospectResponse, PolicySnapshot,
};
use tokenmesh_tokens::{
    Algorithm,
    clock::{Clock, ManualClock},
    jwk::JwkSet,
    signing::SigningKey,
    verify::VerifyError,
};
use tonic::Status;

use super::*;
use crate::token_server::{Exchanged, Updates};

const ISSUER: &str = "https://tokens.example";
const TOKEN_ENDPOINT: &str = "https://tokens.example/oauth2/token";
const START: u64 = 2_000_000_000;

/// An opaque token's phantom JWT and embedded tokens (audience → token).
type Opaque = (String, BTreeMap<String, String>);

/// A token server that answers from what the test set, and counts calls.
struct Fake {
    keys: Mutex<Vec<SigningKey>>,
    /// Every call answers `Unavailable`.
    down: AtomicBool,
    /// Audiences an exchange is refused for (PermissionDenied).
    refused: Mutex<Vec<String>>,
    /// Hosts a share is allowed to.
    shareable: Mutex<Vec<String>>,
    /// How long an exchanged token lives.
    lifetime: Mutex<i64>,
    /// Opaque tokens: their phantom JWT and their embedded tokens.
    opaque: Mutex<HashMap<String, Opaque>>,
    /// The DPoP proof each exchange came with.
    proofs: Mutex<Vec<Option<String>>>,
    /// The nonce an exchange proof must carry: the first; a success moves
    /// on to the next (the last one stays) and answers with it. None: any
    /// proof.
    nonces: Mutex<Vec<String>>,
    /// A refusal for want of a nonce moves on to the next one too.
    fickle: AtomicBool,
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn new() -> Self {
        Self {
            keys: Mutex::new(vec![key("k1")]),
            down: AtomicBool::new(false),
            refused: Mutex::default(),
            shareable: Mutex::default(),
            lifetime: Mutex::new(300),
            opaque: Mutex::default(),
            proofs: Mutex::default(),
            nonces: Mutex::default(),
            fickle: AtomicBool::new(false),
            calls: Mutex::default(),
        }
    }

    /// Records the call; `Unavailable` while down.
    fn call(&self, name: String) -> Result<(), Status> {
        self.calls.lock().unwrap().push(name);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("token server down"));
        }
        Ok(())
    }

    fn calls(&self, prefix: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.starts_with(prefix)).count()
    }
}

impl TokenService for Fake {
    fn client_id(&self) -> &str {
        "orders-svc"
    }

    async fn exchange(
        &self,
        subject: &str,
        audience: &str,
        proof: Option<&str>,
    ) -> Result<Exchanged, Status> {
        self.call(format!("exchange {audience}"))?;
        self.proofs.lock().unwrap().push(proof.map(str::to_owned));
        if self.refused.lock().unwrap().iter().any(|a| a == audience) {
            return Err(Status::permission_denied("no policy"));
        }
        let mut nonces = self.nonces.lock().unwrap();
        if let (Some(required), Some(proof)) = (nonces.first().cloned(), proof) {
            let request = tokenmesh_tokens::dpop::Request {
                method: "POST",
                url: TOKEN_ENDPOINT,
                access_token: None,
            };
            let window = tokenmesh_tokens::dpop::Window::default();
            let proved = tokenmesh_tokens::dpop::verify(proof, &request, window, START).unwrap();
            if proved.nonce.as_ref() != Some(&required) {
                if self.fickle.load(Ordering::SeqCst) {
                    nonces.remove(0);
                }
                let mut status = Status::invalid_argument("use_dpop_nonce");
                status
                    .metadata_mut()
                    .insert("dpop-nonce", required.parse().unwrap());
                return Err(status);
            }
            if nonces.len() > 1 {
                nonces.remove(0);
            }
        }
        let nonce = nonces.first().cloned();
        drop(nonces);
        let n = self.calls(&format!("exchange {audience}"));
        Ok(Exchanged {
            response: ExchangeResponse {
                access_token: format!("{audience}-token-{n}-for-{}", subject.len()),
                expires_in: *self.lifetime.lock().unwrap(),
                ..Default::default()
            },
            dpop_nonce: nonce.map(String::into_bytes),
        })
    }

    async fn introspect(&self, token: &str) -> Result<IntrospectResponse, Status> {
        self.call("introspect".into())?;
        let opaque = self.opaque.lock().unwrap();
        Ok(match opaque.get(token) {
            Some((phantom, _)) => IntrospectResponse {
                active: true,
                phantom_jwt: phantom.clone(),
                ..Default::default()
            },
            None => IntrospectResponse::default(),
        })
    }

    async fn embedded_token(&self, token: &str, audience: &str) -> Result<String, Status> {
        self.call(format!("embedded {audience}"))?;
        let opaque = self.opaque.lock().unwrap();
        opaque
            .get(token)
            .and_then(|(_, embedded)| embedded.get(audience).cloned())
            .ok_or_else(|| Status::permission_denied("nothing embedded"))
    }

    async fn check_share(&self, _token: &str, host: &str) -> Result<CheckShareResponse, Status> {
        self.call(format!("share {host}"))?;
        let allowed = self.shareable.lock().unwrap().iter().any(|h| h == host);
        Ok(CheckShareResponse {
            allowed,
            ..Default::default()
        })
    }

    async fn jwks(&self) -> Result<GetJwksResponse, Status> {
        self.call("jwks".into())?;
        let keys = self.keys.lock().unwrap();
        let jwks = JwkSet {
            keys: keys.iter().map(SigningKey::public_jwk).collect(),
        };
        Ok(GetJwksResponse {
            issuer: ISSUER.into(),
            jwks_json: serde_json::to_string(&jwks).unwrap(),
            token_endpoint: TOKEN_ENDPOINT.into(),
        })
    }

    async fn watch_policies(&self) -> Result<Updates<PolicySnapshot>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn watch_revocations(&self, _: i64, _: bool) -> Result<Updates<RevocationEvent>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }
}

fn key(kid: &str) -> SigningKey {
    SigningKey::generate(kid.into(), Algorithm::ES256).unwrap()
}

/// A mesh for audience `orders` on a manual clock, with no leeway.
fn mesh() -> (Mesh<Fake>, Arc<ManualClock>) {
    let clock = ManualClock::at_unix(START);
    let mesh = Mesh::with_clock(Fake::new(), clock.clone(), "orders".into(), 0, 100).unwrap();
    (mesh, clock)
}

fn fake(mesh: &Mesh<Fake>) -> &Fake {
    &mesh.token_server
}

/// Claims of an access token for `orders`, issued now, living `ttl`.
fn claims(jti: &str, now: u64, ttl: u64) -> AccessTokenClaims {
    serde_json::from_value(json!({
        "iss": ISSUER, "sub": "frontend", "aud": "orders", "exp": now + ttl,
        "iat": now, "nbf": now, "jti": jti, "client_id": "frontend",
    }))
    .unwrap()
}

fn sign(key: &SigningKey, claims: &AccessTokenClaims) -> String {
    key.sign_jwt(ACCESS_TOKEN_TYP, claims).unwrap()
}

/// A token signed by the fake's first key.
fn token(mesh: &Mesh<Fake>, claims: &AccessTokenClaims) -> String {
    sign(&fake(mesh).keys.lock().unwrap()[0], claims)
}

fn route(audience: &str, mode: Mode, scopes: &str) -> Route {
    Route {
        audience: Arc::from(audience),
        mode,
        scopes: Arc::from(scopes),
        policy: Arc::from("a-policy"),
        binding: Binding::None,
    }
}

/// Lets the fake allow a share to `host`.
fn allow_share(mesh: &Mesh<Fake>, host: &str) {
    fake(mesh).shareable.lock().unwrap().push(host.into());
}

#[tokio::test]
async fn share_asks_once_per_token_and_host_and_refuses_what_no_policy_allows() {
    let (mesh, clock) = mesh();
    allow_share(&mesh, "orders.local");
    let incoming = token(&mesh, &claims("t0", clock.unix(), 600));
    let share = route("orders", Mode::Share, "");
    for _ in 0..3 {
        let passed = mesh.outbound_token("orders.local", &share, &incoming).await;
        assert_eq!(passed.as_deref(), Ok(incoming.as_str()), "the same token");
    }
    assert_eq!(fake(&mesh).calls("share"), 1, "the answer is cached");
    assert_eq!(
        mesh.outbound_token("billing.local", &share, &incoming)
            .await,
        Err(Refusal::Forbidden("billing.local".into()))
    );
    // A refusal is cached too: five minutes at most.
    mesh.outbound_token("billing.local", &share, &incoming)
        .await
        .unwrap_err();
    assert_eq!(fake(&mesh).calls("share billing.local"), 1);
    clock.advance(Duration::from_secs(300));
    mesh.outbound_token("billing.local", &share, &incoming)
        .await
        .unwrap_err();
    assert_eq!(fake(&mesh).calls("share billing.local"), 2);
}

/// Issue #18: sharing a bound token to a next hop that cannot prove the
/// key is refused before any policy is asked, with a message that says so.
#[tokio::test]
async fn a_dpop_bound_token_is_not_shared() {
    let (mesh, clock) = mesh();
    allow_share(&mesh, "orders.local");
    let mut bound = claims("t0", clock.unix(), 600);
    bound.cnf = Some(tokenmesh_tokens::claims::Confirmation {
        jkt: Some("key".into()),
        x5t_s256: None,
    });
    let incoming = token(&mesh, &bound);
    let share = route("orders", Mode::Share, "");
    let refused = mesh
        .outbound_token("orders.local", &share, &incoming)
        .await
        .unwrap_err();
    assert_eq!(refused, Refusal::BoundShare("orders.local".into()));
    assert!(refused.public().contains("DPoP-bound"));
    assert_eq!(fake(&mesh).calls("share"), 0, "no policy was asked");
}

#[tokio::test]
async fn an_exchanged_token_is_reused_until_near_its_expiry() {
    let (mesh, clock) = mesh();
    let incoming = token(&mesh, &claims("t0", clock.unix(), 3600));
    let exchange = route("payments", Mode::Exchange, "pay");
    let first = mesh
        .outbound_token("payments.local", &exchange, &incoming)
        .await
        .unwrap();
    assert!(first.starts_with("payments-token-1"), "{}", first.token);
    let again = mesh.outbound_token("payments.local", &exchange, &incoming);
    assert_eq!(again.await.unwrap(), first);
    assert_eq!(mesh.metrics.cache_hits.get(), 1);
    // Other scopes (a policy that narrowed them) make another exchange.
    let narrower = route("payments", Mode::Exchange, "");
    let other = mesh.outbound_token("payments.local", &narrower, &incoming);
    assert!(other.await.unwrap().starts_with("payments-token-2"));
    // Used until 30 s before its 300 s run out, then exchanged again.
    clock.advance(Duration::from_secs(269));
    let again = mesh.outbound_token("payments.local", &exchange, &incoming);
    assert_eq!(again.await.unwrap(), first);
    clock.advance(Duration::from_secs(1));
    let renewed = mesh.outbound_token("payments.local", &exchange, &incoming);
    assert!(renewed.await.unwrap().starts_with("payments-token-3"));
    assert_eq!(fake(&mesh).calls("exchange"), 3);
}

#[tokio::test]
async fn concurrent_exchanges_of_one_token_make_one_call() {
    let (mesh, clock) = mesh();
    let mesh = Arc::new(mesh);
    let incoming = token(&mesh, &claims("t0", clock.unix(), 3600));
    let exchange = Arc::new(route("payments", Mode::Exchange, ""));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (mesh, exchange, incoming) = (mesh.clone(), exchange.clone(), incoming.clone());
        callers.spawn(async move { mesh.exchange(&exchange, &incoming, false).await });
    }
    while let Some(answer) = callers.join_next().await {
        assert!(answer.unwrap().unwrap().starts_with("payments-token-1"));
    }
    assert_eq!(fake(&mesh).calls("exchange"), 1);
}

#[tokio::test]
async fn a_revocation_drops_the_cached_exchange_and_share() {
    let (mesh, clock) = mesh();
    allow_share(&mesh, "orders.local");
    let now = clock.unix();
    let incoming = token(&mesh, &claims("t0", now, 600));
    let (exchange, share) = (
        route("payments", Mode::Exchange, ""),
        route("orders", Mode::Share, ""),
    );
    let first = mesh.outbound_token("payments.local", &exchange, &incoming);
    first.await.unwrap();
    mesh.outbound_token("orders.local", &share, &incoming)
        .await
        .unwrap();
    mesh.revoke(super::tests::revocation("t0", now + 600));
    // The token server, asked again, decides anew (here: it still allows).
    let second = mesh.outbound_token("payments.local", &exchange, &incoming);
    assert!(second.await.unwrap().starts_with("payments-token-2"));
    mesh.outbound_token("orders.local", &share, &incoming)
        .await
        .unwrap();
    assert_eq!(fake(&mesh).calls("share"), 2);
    // Inbound, the revoked token is refused, cached or not.
    assert_eq!(
        mesh.validate(&incoming).await.unwrap_err(),
        Refusal::Invalid("revoked".into())
    );
}

#[tokio::test]
async fn embed_takes_the_inner_token_for_the_next_audience() {
    let (mesh, clock) = mesh();
    let mut outer = claims("t0", clock.unix(), 600);
    outer
        .embedded_tokens
        .insert("payments".into(), "inner-for-payments".into());
    let outer = token(&mesh, &outer);
    let (payments, billing) = (
        route("payments", Mode::Embed, ""),
        route("billing", Mode::Embed, ""),
    );
    let inner = mesh.outbound_token("payments.local", &payments, &outer);
    assert_eq!(inner.await.as_deref(), Ok("inner-for-payments"));
    assert_eq!(
        mesh.outbound_token("billing.local", &billing, &outer).await,
        Err(Refusal::Forbidden("billing".into())),
        "a JWT carries what it carries: nothing to ask"
    );
    assert_eq!(fake(&mesh).calls(""), 0);
    // An opaque outer token's inner tokens come from the token server.
    let phantom = token(&mesh, &claims("t1", clock.unix(), 600));
    let embedded = BTreeMap::from([("payments".into(), "opaque-inner".into())]);
    fake(&mesh)
        .opaque
        .lock()
        .unwrap()
        .insert("opaque-outer".into(), (phantom, embedded));
    let inner = mesh.outbound_token("payments.local", &payments, "opaque-outer");
    assert_eq!(inner.await.as_deref(), Ok("opaque-inner"));
    let none = mesh.outbound_token("billing.local", &billing, "opaque-outer");
    assert_eq!(none.await, Err(Refusal::Forbidden("billing".into())));
    let unspecified = route("payments", Mode::Unspecified, "");
    let refused = mesh.outbound_token("payments.local", &unspecified, &outer);
    assert_eq!(
        refused.await,
        Err(Refusal::Forbidden("payments.local".into()))
    );
}

#[tokio::test]
async fn an_unavailable_token_server_refuses_as_unavailable_and_a_refusal_as_forbidden() {
    let (mesh, clock) = mesh();
    let incoming = token(&mesh, &claims("t0", clock.unix(), 600));
    fake(&mesh).refused.lock().unwrap().push("payments".into());
    let exchange = route("payments", Mode::Exchange, "");
    assert_eq!(
        mesh.outbound_token("payments.local", &exchange, &incoming)
            .await,
        Err(Refusal::Forbidden("payments".into()))
    );
    fake(&mesh).down.store(true, Ordering::SeqCst);
    let outcomes = [
        mesh.outbound_token("payments.local", &exchange, &incoming)
            .await,
        mesh.outbound_token("orders.local", &route("orders", Mode::Share, ""), &incoming)
            .await,
        mesh.outbound_token("x.local", &route("x", Mode::Embed, ""), "opaque")
            .await,
        mesh.validate(&incoming)
            .await
            .map(|v| Outbound::bearer(Arc::from(v.jwt.as_str()))),
        mesh.validate("opaque")
            .await
            .map(|v| Outbound::bearer(Arc::from(v.jwt.as_str()))),
    ];
    for outcome in outcomes {
        assert!(
            matches!(outcome, Err(Refusal::Unavailable(_))),
            "{outcome:?}"
        );
    }
    assert!(!mesh.ready(), "no keys yet");
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_once_per_interval() {
    let (mesh, clock) = mesh();
    let now = clock.unix();
    let known = token(&mesh, &claims("t0", now, 600));
    assert!(mesh.validate(&known).await.is_ok());
    assert_eq!(fake(&mesh).calls("jwks"), 1);
    // The token server rotates its key: the first token under it fetches.
    let rotated = key("k2");
    clock.advance(JWKS_FRESHNESS.min_interval);
    let under_new = sign(&rotated, &claims("t1", clock.unix(), 600));
    fake(&mesh).keys.lock().unwrap().push(rotated);
    assert!(mesh.validate(&under_new).await.is_ok());
    assert_eq!(fake(&mesh).calls("jwks"), 2);
    assert_eq!(mesh.metrics.jwks_fetches.get(), 2);
    // A flood of made-up kids inside the interval: refused, not fetched.
    for i in 0..50 {
        let stranger = sign(&key(&format!("made-up-{i}")), &claims("t2", now, 600));
        assert!(matches!(
            mesh.validate(&stranger).await,
            Err(Refusal::Invalid(_))
        ));
    }
    assert_eq!(fake(&mesh).calls("jwks"), 2);
    // While the token server is down, a kid nobody could fetch is not the
    // token's fault; known kids still verify.
    clock.advance(JWKS_FRESHNESS.min_interval);
    fake(&mesh).down.store(true, Ordering::SeqCst);
    let stranger = sign(&key("made-up"), &claims("t3", clock.unix(), 600));
    assert!(matches!(
        mesh.validate(&stranger).await,
        Err(Refusal::Unavailable(_))
    ));
    let known = token(&mesh, &claims("t4", clock.unix(), 600));
    assert!(mesh.validate(&known).await.is_ok());
}

#[tokio::test]
async fn validated_tokens_are_cached_until_they_expire() {
    let (mesh, clock) = mesh();
    let incoming = token(&mesh, &claims("t0", clock.unix(), 60));
    let first = mesh.validate(&incoming).await.unwrap();
    assert_eq!(first.claims.jti, "t0");
    clock.advance(Duration::from_secs(59));
    assert!(mesh.validate(&incoming).await.is_ok());
    assert_eq!(mesh.metrics.cache_hits.get(), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        mesh.validate(&incoming).await.unwrap_err(),
        Refusal::Invalid(VerifyError::Expired.to_string())
    );
}

#[tokio::test]
async fn an_opaque_token_is_swapped_for_its_phantom_jwt() {
    let (mesh, clock) = mesh();
    let phantom = token(&mesh, &claims("t0", clock.unix(), 600));
    fake(&mesh)
        .opaque
        .lock()
        .unwrap()
        .insert("opaque".into(), (phantom.clone(), BTreeMap::new()));
    let verified = mesh.validate("opaque").await.unwrap();
    assert_eq!(verified.jwt, phantom);
    assert!(mesh.validate("opaque").await.is_ok());
    assert_eq!(fake(&mesh).calls("introspect"), 1, "cached");
    assert_eq!(
        mesh.validate("unknown").await.unwrap_err(),
        Refusal::Invalid("not active".into())
    );
}

#[tokio::test]
async fn keys_an_hour_old_are_fetched_again_and_a_day_old_set_verifies_nothing() {
    let (mesh, clock) = mesh();
    // The token server replaces its key: the old one is the test's alone.
    let old = fake(&mesh).keys.lock().unwrap().remove(0);
    let new = key("k2");
    fake(&mesh).keys.lock().unwrap().push(copy(&new));
    // Fetched at the first use, while the token server still has both.
    fake(&mesh).keys.lock().unwrap().push(copy(&old));
    assert!(
        mesh.validate(&sign(&old, &claims("t0", clock.unix(), 600)))
            .await
            .is_ok()
    );
    fake(&mesh).keys.lock().unwrap().pop();
    // Within the hour the dropped key still verifies here; after it the
    // keys are fetched again and it does not.
    clock.advance(JWKS_FRESHNESS.max_age);
    let within = sign(&old, &claims("t1", clock.unix(), 600));
    assert!(mesh.validate(&within).await.is_ok());
    assert_eq!(fake(&mesh).calls("jwks"), 1);
    clock.advance(Duration::from_secs(1));
    let after = sign(&old, &claims("t2", clock.unix(), 600));
    assert!(matches!(
        mesh.validate(&after).await,
        Err(Refusal::Invalid(_))
    ));
    assert_eq!(fake(&mesh).calls("jwks"), 2);
    // The token server goes away: the keys fetched last serve for a day.
    fake(&mesh).down.store(true, Ordering::SeqCst);
    clock.advance(JWKS_FRESHNESS.max_stale);
    let current = sign(&new, &claims("t3", clock.unix(), 600));
    assert!(mesh.validate(&current).await.is_ok());
    clock.advance(Duration::from_secs(1));
    let current = sign(&new, &claims("t4", clock.unix(), 600));
    assert!(matches!(
        mesh.validate(&current).await,
        Err(Refusal::Unavailable(_))
    ));
}

/// The same key again (`SigningKey` is not `Clone`).
fn copy(key: &SigningKey) -> SigningKey {
    SigningKey::from_pkcs8(key.kid().into(), key.algorithm(), key.pkcs8().to_vec()).unwrap()
}

/// A route to `payments` whose next hop needs `binding`.
fn bound_route(binding: Binding) -> Route {
    Route {
        binding,
        ..route("payments", Mode::Exchange, "")
    }
}

/// What the exchange proofs the fake received say, verified as the token
/// server verifies them (`htm` POST, `htu` the token endpoint GetJwks names).
fn exchange_proofs(mesh: &Mesh<Fake>) -> Vec<Option<tokenmesh_tokens::dpop::Proof>> {
    let request = tokenmesh_tokens::dpop::Request {
        method: "POST",
        url: TOKEN_ENDPOINT,
        access_token: None,
    };
    let window = tokenmesh_tokens::dpop::Window::default();
    let proofs = fake(mesh).proofs.lock().unwrap().clone();
    proofs
        .iter()
        .map(|p| {
            p.as_ref()
                .map(|p| tokenmesh_tokens::dpop::verify(p, &request, window, START).unwrap())
        })
        .collect()
}

/// Issue #18, outbound: a hop whose policy says `dpop` gets a token bound
/// to this sidecar's key (the exchange carries a proof of it); the bound
/// token is cached with the key and not handed to a bearer hop, which gets
/// its own exchange without a proof.
#[tokio::test]
async fn a_dpop_hop_gets_a_token_bound_to_the_sidecars_key() {
    let (mesh, clock) = mesh();
    mesh.keys.refresh().await.unwrap();
    let incoming = token(&mesh, &claims("t0", clock.unix(), 3600));
    let bound = mesh
        .outbound_token("payments.local", &bound_route(Binding::Dpop), &incoming)
        .await
        .unwrap();
    assert!(bound.dpop, "forwarded with proofs");
    let again = mesh
        .outbound_token("payments.local", &bound_route(Binding::Dpop), &incoming)
        .await
        .unwrap();
    assert_eq!(again, bound, "cached");
    let bearer = mesh
        .outbound_token("payments.local", &bound_route(Binding::None), &incoming)
        .await
        .unwrap();
    assert!(!bearer.dpop);
    assert_ne!(
        bearer.token, bound.token,
        "the bound token is for the key only"
    );
    let proofs = exchange_proofs(&mesh);
    assert_eq!(proofs.len(), 2);
    let proof = proofs[0]
        .as_ref()
        .expect("the binding exchange carries a proof");
    assert_eq!(proof.jkt, mesh.signer.jkt());
    assert_eq!(proof.iat, START, "iat from the mesh's clock");
    assert!(proofs[1].is_none(), "a bearer hop's exchange carries none");
}

/// A DPoP-bound subject token stays bound: exchanged for any hop, with a
/// proof of the sidecar's key (the token server refuses it otherwise).
/// A hop that needs certificate-bound tokens is refused, saying why.
#[tokio::test]
async fn a_bound_subject_is_exchanged_with_a_proof_and_an_mtls_hop_is_refused() {
    let (mesh, clock) = mesh();
    mesh.keys.refresh().await.unwrap();
    let mut bound = claims("t0", clock.unix(), 3600);
    bound.cnf = Some(tokenmesh_tokens::claims::Confirmation {
        jkt: Some("the-clients-key".into()),
        x5t_s256: None,
    });
    let incoming = token(&mesh, &bound);
    let outbound = mesh
        .outbound_token("payments.local", &bound_route(Binding::None), &incoming)
        .await
        .unwrap();
    assert!(outbound.dpop);
    assert_eq!(
        exchange_proofs(&mesh)[0].as_ref().unwrap().jkt,
        mesh.signer.jkt()
    );
    let refused = mesh
        .outbound_token("payments.local", &bound_route(Binding::Mtls), &incoming)
        .await
        .unwrap_err();
    assert_eq!(refused, Refusal::NoCertificate("payments.local".into()));
}

/// RFC 9449 §8 at the token server: asked for a nonce, the exchange is
/// tried once more with it; the nonce (and the newer one each answer
/// brings) is used from then on. A server that asks again is not retried
/// for ever.
#[tokio::test]
async fn an_exchange_asked_for_a_nonce_is_retried_once_with_it() {
    let (mesh, clock) = mesh();
    mesh.keys.refresh().await.unwrap();
    *fake(&mesh).nonces.lock().unwrap() = vec!["n1".into(), "n2".into()];
    let first = token(&mesh, &claims("t0", clock.unix(), 3600));
    let outbound = mesh
        .outbound_token("payments.local", &bound_route(Binding::Dpop), &first)
        .await
        .unwrap();
    assert!(outbound.dpop);
    let nonces: Vec<_> = exchange_proofs(&mesh)
        .into_iter()
        .map(|p| p.unwrap().nonce)
        .collect();
    assert_eq!(nonces, [None, Some("n1".into())]);
    // The answer handed out n2: the next exchange carries it at once.
    let second = token(&mesh, &claims("t1", clock.unix(), 3600));
    mesh.outbound_token("payments.local", &bound_route(Binding::Dpop), &second)
        .await
        .unwrap();
    let proofs = exchange_proofs(&mesh);
    assert_eq!(proofs.len(), 3, "no refusal this time");
    assert_eq!(proofs[2].as_ref().unwrap().nonce.as_deref(), Some("n2"));
    assert_eq!(mesh.metrics.dpop_nonce_retries.get(), 1);

    // A server that wants a new nonce every time: one retry, then refused.
    *fake(&mesh).nonces.lock().unwrap() = vec!["a".into(), "b".into(), "c".into()];
    fake(&mesh).fickle.store(true, Ordering::SeqCst);
    let third = token(&mesh, &claims("t2", clock.unix(), 3600));
    let refused = mesh
        .outbound_token("payments.local", &bound_route(Binding::Dpop), &third)
        .await;
    assert_eq!(refused, Err(Refusal::Forbidden("payments".into())));
    assert_eq!(exchange_proofs(&mesh).len(), 5);
}
