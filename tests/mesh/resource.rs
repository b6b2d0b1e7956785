//! Protected resource metadata (RFC 9728) on the sidecar's inbound port: a
//! refused client follows `resource_metadata` to the document, which names
//! the token server as the authorization server; answered without a token
//! and never by the application.

use serde_json::{Value, json};

use crate::harness::{App, Sidecar, TokenServer, free_port};

/// The status and every `WWW-Authenticate` value of a GET of `url` with
/// one header per (name, value).
async fn refusal(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<String>) {
    let mut call = reqwest::Client::new().get(url);
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    let resp = call.send().await.unwrap();
    let values = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (resp.status().as_u16(), values)
}

/// The `resource_metadata` of a challenge, the same in each.
fn metadata_url(challenges: &[String]) -> String {
    let urls: Vec<&str> = challenges
        .iter()
        .map(|c| {
            let (_, rest) = c
                .split_once(", resource_metadata=\"")
                .unwrap_or_else(|| panic!("no resource_metadata in {c:?}"));
            rest.strip_suffix('"').unwrap()
        })
        .collect();
    assert!(urls.iter().all(|url| *url == urls[0]), "{challenges:?}");
    urls[0].to_owned()
}

async fn json_at(url: &str) -> (u16, Option<String>, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        content_type,
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The token server, and an application behind the gateway's sidecar started with `flags`.
async fn gateway(flags: &[String]) -> (TokenServer, App, Sidecar) {
    let server = TokenServer::start().await;
    let app = App::start(None).await;
    let sidecar = Sidecar::start_with(
        &server,
        "gateway-svc",
        "gateway",
        app.addr,
        &[],
        free_port(),
        flags,
    )
    .await;
    (server, app, sidecar)
}

#[tokio::test]
async fn a_refused_client_finds_the_issuer_through_the_resource_metadata() {
    let (server, app, sidecar) = gateway(&[]).await;
    let inbound = sidecar.inbound;
    let expected = format!("http://{inbound}/.well-known/oauth-protected-resource");
    for authorization in [None, Some("Bearer not-a-token"), Some("DPoP not-a-token")] {
        let headers: Vec<_> = authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let (status, challenges) = refusal(&format!("http://{inbound}/orders/7"), &headers).await;
        assert_eq!(status, 401, "{authorization:?}");
        assert_eq!(challenges.len(), 2, "Bearer, then DPoP: {challenges:?}");
        assert!(challenges[0].starts_with("Bearer error=\"invalid_token\", "));
        assert!(challenges[1].starts_with("DPoP algs="));
        assert_eq!(metadata_url(&challenges), expected, "{authorization:?}");
    }

    let (status, content_type, document) = json_at(&expected).await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(
        document,
        json!({
            "resource": format!("http://{inbound}"),
            "authorization_servers": [server.http],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
            "dpop_bound_access_tokens_required": false,
        })
    );
    // The authorization server it names is the token server (RFC 8414).
    let issuer = document["authorization_servers"][0].as_str().unwrap();
    let (status, _, metadata) =
        json_at(&format!("{issuer}/.well-known/oauth-authorization-server")).await;
    assert_eq!(status, 200);
    assert_eq!(metadata["issuer"], issuer);

    // The Host the client called names the resource.
    let resp = reqwest::Client::new()
        .get(&expected)
        .header("host", "orders.example:8080")
        .send()
        .await
        .unwrap();
    let document: Value = resp.json().await.unwrap();
    assert_eq!(document["resource"], "http://orders.example:8080");
    let (_, challenges) = refusal(
        &format!("http://{inbound}/"),
        &[("host", "orders.example:8080")],
    )
    .await;
    assert_eq!(
        metadata_url(&challenges),
        "http://orders.example:8080/.well-known/oauth-protected-resource"
    );

    let resp = reqwest::Client::new().post(&expected).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    // A path below it that is not the resource's is the application's, behind a token.
    let (status, _) = refusal(&format!("{expected}/other"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(app.hits(), 0, "the sidecar answered everything itself");
}

#[tokio::test]
async fn behind_an_ingress_the_resource_url_flag_names_the_resource_and_its_path() {
    let public = "https://api.example/orders";
    let (server, app, sidecar) = gateway(&["--resource-url".into(), format!("{public}/")]).await;
    let inbound = sidecar.inbound;
    let (status, challenges) = refusal(&format!("http://{inbound}/items"), &[]).await;
    assert_eq!(status, 401);
    // RFC 9728 §3.1: the well-known path between the host and the resource's path.
    assert_eq!(
        metadata_url(&challenges),
        "https://api.example/.well-known/oauth-protected-resource/orders"
    );
    // What the ingress passes on: the path-suffixed form, and the plain one.
    for path in [
        "/.well-known/oauth-protected-resource/orders",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, _, document) = json_at(&format!("http://{inbound}{path}")).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(document["resource"], public, "{path}");
        assert_eq!(document["authorization_servers"], json!([server.http]));
    }
    let (status, _) = refusal(
        &format!("http://{inbound}/.well-known/oauth-protected-resource/payments"),
        &[],
    )
    .await;
    assert_eq!(status, 401, "another resource's path is not this one's");
    assert_eq!(app.hits(), 0);
}
