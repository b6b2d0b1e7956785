//! Sign-in through an `oidc` IdentityProvider, in process: the router with
//! a cookie jar and a manual clock (as `sign_in.rs`), against a real
//! upstream that is not tokenmesh, panva's oidc-provider (as `upstream.rs`
//! starts it), whose own login and consent pages are filled in over HTTP.

use http::StatusCode;
use serde_json::json;
use std::time::Duration;
use tokenmesh_core::upstream::local_subject;

use crate::{
    harness::{Config, jwt_part},
    in_process::ISSUER,
    sign_in::{Answer, Browser, CALLBACK, authorize_url, config, redeem, userinfo},
    upstream::{Peer, SECRET, peer_returning_to, sign_in_at_peer},
};

/// Where the upstream sends people back: the redirect URI registered there.
fn our_callback() -> String {
    format!("{ISSUER}/oauth2/callback")
}

/// The sign-in config with two oidc providers, `corp` (the peer) and
/// `offline` (nothing listens there), offered to `web` after `dev-users`.
fn federated(peer: &Peer) -> Config {
    let config = config();
    let closed = tokenmesh_e2e::free_port();
    config.append(&format!(
        r##"---
apiVersion: tokenmesh.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: corp}}
spec:
  type: oidc
  displayName: Corp account
  oidc:
    issuer: "{issuer}"
    clientId: tokenmesh
    clientSecret: {SECRET}
    scopes: [openid, email, profile, roles]
    claimMappings:
      email: claims.email
      name: claims.name
---
apiVersion: tokenmesh.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: offline}}
spec:
  type: oidc
  displayName: Offline directory
  oidc:
    issuer: "http://127.0.0.1:{closed}"
    clientId: tokenmesh
"##,
        issuer = peer.issuer,
    ));
    let yaml = std::fs::read_to_string(config.file()).unwrap();
    let offered = "identityProviders: [dev-users]\n  branding: {displayName: Example Web";
    assert!(yaml.contains(offered));
    std::fs::write(
        config.file(),
        yaml.replace(
            offered,
            "identityProviders: [dev-users, corp, offline]\n  branding: {displayName: Example Web",
        ),
    )
    .unwrap();
    config
}

/// Presses the button of upstream provider `idp` on the login page.
async fn choose(browser: &mut Browser, login: &Answer, idp: &str) -> Answer {
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    // The first form's fields (every form carries the same request).
    let mut form: Vec<(String, String)> = Vec::new();
    for (name, value) in login.hidden() {
        if name != "action" && name != "idp" && !form.iter().any(|(n, _)| *n == name) {
            form.push((name, value));
        }
    }
    form.push(("action".into(), "upstream".into()));
    form.push(("idp".into(), idp.into()));
    browser.post("/oauth2/authorize", &form).await
}

/// The path and query of our callback URL, for the router.
fn path_of(url: &reqwest::Url) -> String {
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// Starts at `corp` and signs jane in at the peer, taking `wait` seconds
/// there: the callback URL.
async fn through_the_upstream(browser: &mut Browser, wait: u64) -> reqwest::Url {
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let sent = choose(browser, &login, "corp").await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    browser.app.clock.advance(Duration::from_secs(wait));
    sign_in_at_peer(sent.location().as_str(), &our_callback()).await
}

/// The upstream's `error` answer to the sign-in it was `sent` to.
async fn answer_error(browser: &mut Browser, sent: &Answer, error: &str) -> Answer {
    let state = sent
        .location()
        .query_pairs()
        .find(|(n, _)| n == "state")
        .unwrap()
        .1
        .into_owned();
    browser
        .get(&format!("/oauth2/callback?error={error}&state={state}"))
        .await
}

#[tokio::test]
async fn a_person_signs_in_at_the_upstream_and_the_app_gets_the_local_subject() {
    let peer = peer_returning_to(&our_callback());
    let mut browser = Browser::with(federated(&peer)).await;

    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    for button in [
        "Continue with Corp account",
        "Continue with Offline directory",
    ] {
        assert!(login.body.contains(button), "{button}: {}", login.body);
    }
    assert!(
        login.body.contains("<h2>Dev users</h2>"),
        "the password form names its provider beside the buttons"
    );

    let sent = choose(&mut browser, &login, "corp").await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    let to = sent.location();
    assert!(to.as_str().starts_with(&peer.issuer), "{to}");
    let query: std::collections::BTreeMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(query["redirect_uri"], our_callback());
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(query["state"].len() >= 43 && query["nonce"].len() >= 43);

    let back = sign_in_at_peer(to.as_str(), &our_callback()).await;
    let consent = browser.get(&path_of(&back)).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(consent.body.contains("Example Web wants to"));
    let subject = local_subject(&peer.issuer, "jane");
    assert!(
        consent.body.contains(&subject),
        "signed in as the local subject"
    );
    assert!(browser.cookies.contains_key("tokenmesh_session"));

    let answer = browser.submit(&consent, &[("decision", "allow")]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.param("state").as_deref(), Some("st-1"));
    let (status, tokens) = redeem(&browser, &answer.param("code").unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = jwt_part(tokens["access_token"].as_str().unwrap(), 1);
    assert_eq!(access["sub"], subject.as_str());
    let id = jwt_part(tokens["id_token"].as_str().unwrap(), 1);
    assert_eq!(id["sub"], subject.as_str());
    assert_eq!(id["amr"], json!(["fed"]), "oidc-provider names no amr");
    assert_eq!(id["email"], "jane@corp.example");
    assert_eq!(id["name"], "Jane Doe");
    let auth_time = id["auth_time"].as_u64().unwrap();
    assert!(
        auth_time <= browser.app.state.now(),
        "the upstream's auth_time"
    );
    let (status, info) = userinfo(&browser, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["sub"], subject.as_str());

    // The callback counts once.
    let again = browser.get(&path_of(&back)).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert!(
        again.body.contains("expired or was already used"),
        "{}",
        again.body
    );

    // SSO: the next request goes straight back, without the upstream.
    let sso = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    assert_eq!(sso.status, StatusCode::FOUND, "{}", sso.body);
    assert!(sso.param("code").is_some());
}

#[tokio::test]
async fn a_callback_counts_only_in_the_browser_that_started_it_and_for_ten_minutes() {
    let peer = peer_returning_to(&our_callback());
    let mut browser = Browser::with(federated(&peer)).await;

    // The callback URL in another browser (login CSRF): refused, and used up.
    let back = through_the_upstream(&mut browser, 0).await;
    let mine = std::mem::take(&mut browser.cookies);
    let elsewhere = browser.get(&path_of(&back)).await;
    assert_eq!(
        elsewhere.status,
        StatusCode::FORBIDDEN,
        "{}",
        elsewhere.body
    );
    assert!(elsewhere.body.contains("started in another browser"));
    assert!(!browser.cookies.contains_key("tokenmesh_session"));
    browser.cookies = mine;
    let after = browser.get(&path_of(&back)).await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST, "{}", after.body);
    assert!(!browser.cookies.contains_key("tokenmesh_session"));

    // Ten minutes to come back: not after them, within them it counts.
    for (wait, counts) in [(601, false), (590, true)] {
        let back = through_the_upstream(&mut browser, wait).await;
        let answer = browser.get(&path_of(&back)).await;
        if counts {
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert!(answer.body.contains("Example Web wants to"));
            browser.cookies.remove("tokenmesh_session");
        } else {
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
            assert!(answer.body.contains("expired or was already used"));
            assert!(!browser.cookies.contains_key("tokenmesh_session"));
        }
    }

    // The button's form needs the CSRF token like every form.
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    browser.cookies.remove("tokenmesh_csrf");
    let forged = choose(&mut browser, &login, "corp").await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
}

#[tokio::test]
async fn a_refusal_an_error_a_mix_up_or_a_down_upstream_signs_nobody_in() {
    let peer = peer_returning_to(&our_callback());
    let mut browser = Browser::with(federated(&peer)).await;

    // The person refused at the upstream: access_denied to the client.
    // What the client asked of the sign-in is asked of the upstream too.
    let login = browser
        .get(&authorize_url(
            "web",
            CALLBACK,
            &[("prompt", "login"), ("max_age", "300")],
        ))
        .await;
    let sent = choose(&mut browser, &login, "corp").await;
    let asked: std::collections::BTreeMap<_, _> =
        sent.location().query_pairs().into_owned().collect();
    assert_eq!(asked["prompt"], "login");
    assert_eq!(asked["max_age"], "300");
    let refused = answer_error(&mut browser, &sent, "access_denied").await;
    assert_eq!(refused.status, StatusCode::FOUND, "{}", refused.body);
    assert!(refused.location().as_str().starts_with(CALLBACK));
    assert_eq!(refused.param("error").as_deref(), Some("access_denied"));
    assert_eq!(refused.param("state").as_deref(), Some("st-1"));
    assert_eq!(refused.param("iss").as_deref(), Some(ISSUER));

    // A refusal that names another issuer is not this provider's (RFC 9207):
    // no access_denied to the client on a mixed-up answer's word.
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let sent = choose(&mut browser, &login, "corp").await;
    let foreign = answer_error(
        &mut browser,
        &sent,
        "access_denied&iss=https%3A%2F%2Fevil.example",
    )
    .await;
    assert_eq!(foreign.status, StatusCode::BAD_GATEWAY, "{}", foreign.body);
    assert!(!foreign.headers.contains_key(http::header::LOCATION));

    // A state this server never issued (wrong length or characters) is
    // refused before the store is asked.
    for state in [
        "short",
        &"A".repeat(44),
        &format!("{}%20", "A".repeat(42)),
        &"A".repeat(5000),
    ] {
        let bogus = browser
            .get(&format!("/oauth2/callback?code=c&state={state}"))
            .await;
        assert_eq!(
            bogus.status,
            StatusCode::BAD_REQUEST,
            "{state}: {}",
            bogus.body
        );
    }

    // Another error: the login page again, with a message.
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let sent = choose(&mut browser, &login, "corp").await;
    let failed = answer_error(&mut browser, &sent, "server_error").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.body);
    assert!(
        failed
            .body
            .contains("Corp account could not sign you in just now")
    );
    assert!(
        failed.body.contains("Continue with Corp account"),
        "can try again"
    );

    // RFC 9207: an answer naming another issuer (a mix-up) is not redeemed.
    let back = through_the_upstream(&mut browser, 0).await;
    let mut mixed = back.clone();
    let pairs: Vec<(String, String)> = back
        .query_pairs()
        .into_owned()
        .filter(|(n, _)| n != "iss")
        .chain([("iss".into(), "https://evil.example".into())])
        .collect();
    mixed.query_pairs_mut().clear().extend_pairs(&pairs);
    let mix_up = browser.get(&path_of(&mixed)).await;
    assert_eq!(mix_up.status, StatusCode::BAD_GATEWAY, "{}", mix_up.body);

    // An upstream that does not answer: the login page with a message.
    let login = browser.get(&authorize_url("web", CALLBACK, &[])).await;
    let down = choose(&mut browser, &login, "offline").await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{}", down.body);
    assert!(!down.headers.contains_key(http::header::LOCATION));
    assert!(
        down.body
            .contains("Offline directory could not sign you in just now")
    );

    // The upstream goes down while the person is there.
    let back = through_the_upstream(&mut browser, 0).await;
    drop(peer);
    let gone = browser.get(&path_of(&back)).await;
    assert_eq!(gone.status, StatusCode::BAD_GATEWAY, "{}", gone.body);
    assert!(
        gone.body
            .contains("Corp account could not sign you in just now")
    );

    assert!(
        !browser.cookies.contains_key("tokenmesh_session"),
        "no session from any of these"
    );
}
