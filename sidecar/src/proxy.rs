//! The inbound and outbound HTTP proxies and the admin endpoints.

// A refusal is the response to send; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Either, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::{Body as _, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use tokenmesh_tokens::listen::tls::PeerCertificate;
use tracing::Instrument;

use crate::{
    deadlines::Stall,
    hop,
    mesh::{
        Mesh, Refusal,
        proof::{AuthScheme, Presented},
    },
    metrics::RequestLabels,
    redirect::{self, OriginalDst},
    resource::{self, ProtectedResource},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Unsync: tonic's answers (ext_authz) are not `Sync`, and hyper needs only `Send`.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// What is forwarded: the caller's body as it streams, or one kept in
/// memory so that it can be sent again (a DPoP nonce retry).
type Upstream = Either<Incoming, Full<Bytes>>;

/// The largest request body kept to be sent again when the next hop asks
/// for a DPoP nonce; a larger or unsized one streams, and the call that was
/// refused is not made again (the nonce is used from the next call on).
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// How long idle pooled upstream connections are kept: under the 30 s
/// default --client-timeout, so a peer sidecar is not the one to close a
/// connection just as this one reuses it.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "upgrade",
    "transfer-encoding",
];

/// A kubelet probe the admin listener answers with the application's answer.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The application's port.
    pub port: u16,
    /// The path and query asked of the application, whatever the caller asked.
    pub target: PathAndQuery,
    /// The headers the probe definition names (its `httpHeaders`).
    pub headers: Vec<HeaderName>,
}

/// What kubelet sends with every probe besides the probe's own headers;
/// applications tell probes apart by `User-Agent: kube-probe/...`.
const KUBELET_HEADERS: [HeaderName; 2] = [header::USER_AGENT, header::ACCEPT];

pub struct Proxy {
    pub mesh: Arc<Mesh>,
    pub app_addr: SocketAddr,
    /// `app_addr` as a URI authority, made once rather than per request.
    app_authority: Authority,
    /// --resolve: where a destination host is reached, as a URI authority.
    resolve: HashMap<String, Authority>,
    pub allow_unlisted: bool,
    pub timeout: Duration,
    /// The longest pause inside a body: see [`Stall`].
    pub stream_idle: Duration,
    /// Admin path → where it goes: kubelet probes.
    probes: HashMap<String, Probe>,
    /// The inbound listener's scheme: `https` with --inbound-tls-cert.
    inbound_scheme: &'static str,
    /// Its protected-resource metadata (RFC 9728).
    resource: ProtectedResource,
    http1: Client<HttpConnector, Stall<Upstream>>,
    http2: Client<HttpConnector, Stall<Upstream>>,
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    answer(status, "text/plain; charset=utf-8", message.into() + "\n")
}

/// An answer of the sidecar's own, with its content type. Never stored
/// by a cache in front: a refusal's `resource_metadata` and the metadata
/// document may be derived from the request's Host, which a client picks.
fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let body = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The challenge of every 401. RFC 6750 allows a bare `Bearer` when no
/// token came, but the sidecar's contract is `error="invalid_token"` on any
/// refusal, and clients test it literally.
pub const CHALLENGE: &str = "Bearer error=\"invalid_token\"";

/// The DPoP challenge (RFC 9449 §7.1) offered next to the Bearer one.
pub const DPOP_CHALLENGE: &str = "DPoP algs=\"ES256 EdDSA RS256 PS256\"";
/// The challenge of a DPoP-bound token without a valid proof.
pub const DPOP_INVALID_PROOF: &str =
    "DPoP error=\"invalid_dpop_proof\", algs=\"ES256 EdDSA RS256 PS256\"";

/// The challenge of a DPoP proof without the nonce this sidecar requires.
pub const DPOP_USE_NONCE: &str = "DPoP error=\"use_dpop_nonce\", algs=\"ES256 EdDSA RS256 PS256\"";

/// The request header carrying a DPoP proof.
pub const DPOP_HEADER: &str = "dpop";
pub use tokenmesh_tokens::dpop::nonce::NONCE_HEADER;

/// 401 with the RFC 6750 challenge, then the DPoP one; the reason stays in
/// the body, bounded. Inbound, every challenge names the resource's
/// metadata (`metadata_url`, RFC 9728 §5.1).
fn unauthorized(refusal: &Refusal, metadata_url: Option<&str>) -> Response<Body> {
    let mut response = text(StatusCode::UNAUTHORIZED, refusal.public());
    let headers = response.headers_mut();
    let challenge = |challenge: &'static str| {
        metadata_url
            .and_then(|url| HeaderValue::try_from(resource::with_metadata(challenge, url)).ok())
            .unwrap_or(HeaderValue::from_static(challenge))
    };
    if let Refusal::UseNonce(nonce) = refusal {
        headers.insert(header::WWW_AUTHENTICATE, challenge(DPOP_USE_NONCE));
        if let Ok(nonce) = HeaderValue::try_from(nonce.as_str()) {
            headers.insert(NONCE_HEADER, nonce);
        }
    } else if matches!(refusal, Refusal::Proof(_)) {
        headers.insert(header::WWW_AUTHENTICATE, challenge(DPOP_INVALID_PROOF));
    } else {
        headers.insert(header::WWW_AUTHENTICATE, challenge(CHALLENGE));
        headers.append(header::WWW_AUTHENTICATE, challenge(DPOP_CHALLENGE));
    }
    response
}

/// The challenge of a 400 for a request that carries more than one
/// credential (RFC 6750 §3.1: "uses more than one method").
pub const INVALID_REQUEST: &str = "Bearer error=\"invalid_request\"";
pub const MANY_CREDENTIALS: &str = "more than one Authorization header";

/// 400 for a request with several Authorization headers: which one the
/// sidecar checked and which one the application reads need not agree.
fn many_credentials() -> Response<Body> {
    let mut response = text(StatusCode::BAD_REQUEST, MANY_CREDENTIALS);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(INVALID_REQUEST),
    );
    response
}

fn refused(refusal: &Refusal) -> Response<Body> {
    refused_naming(refusal, None)
}

/// [`refused`], a 401's challenges naming `metadata_url` (inbound).
fn refused_naming(refusal: &Refusal, metadata_url: Option<&str>) -> Response<Body> {
    match refusal {
        Refusal::Missing | Refusal::Invalid(_) | Refusal::Proof(_) | Refusal::UseNonce(_) => {
            unauthorized(refusal, metadata_url)
        }
        Refusal::Forbidden(_) | Refusal::BoundShare(_) => {
            text(StatusCode::FORBIDDEN, refusal.public())
        }
        // The sidecar cannot give the next hop what it needs: a gateway's fault.
        Refusal::NoCertificate(_) => text(StatusCode::BAD_GATEWAY, refusal.public()),
        Refusal::Unavailable(_) => text(StatusCode::SERVICE_UNAVAILABLE, refusal.public()),
    }
}

/// The bearer token of an Authorization header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_in(headers.get(header::AUTHORIZATION)?.as_bytes())
}

/// The bearer token of one Authorization value (`Bearer <token>`, the
/// scheme in any case; visible ASCII only, as `HeaderValue::to_str`).
pub fn bearer_in(value: &[u8]) -> Option<&str> {
    credential_in(value)
        .filter(|(scheme, _)| *scheme == AuthScheme::Bearer)
        .map(|(_, token)| token)
}

pub use tokenmesh_tokens::authorization::credential_in;

/// The URL the client called, as a DPoP proof's `htu` names it: the
/// request's own scheme and authority when it has them (HTTP/2, absolute
/// form), else `scheme` (the listener's) and the Host header.
fn called_url<B>(request: &Request<B>, scheme: &str) -> Option<String> {
    let uri = request.uri();
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let scheme = uri.scheme_str().unwrap_or(scheme);
    Some(format!("{scheme}://{authority}{}", uri.path()))
}

/// Inbound: the one Authorization value, if any; `Err` if there are more.
fn only_authorization(headers: &HeaderMap) -> Result<Option<HeaderValue>, Response<Body>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    // A copy of the value (a reference count) so the request stays free to change.
    let first = values.next().cloned();
    match values.next() {
        Some(_) => Err(many_credentials()),
        None => Ok(first),
    }
}

/// Outbound: the first bearer token among the Authorization values. Once a
/// token is set, every other value goes, so none of them travels unchanged.
fn outbound_bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .find_map(|value| bearer_in(value.as_bytes()))
        .map(str::to_owned)
}

/// Whether an answer asks for a DPoP nonce (RFC 9449 §9: 401 with a `DPoP`
/// challenge `error="use_dpop_nonce"`; §8 answers 400 at a token endpoint).
fn asks_for_nonce<B>(response: &Response<B>) -> bool {
    matches!(
        response.status(),
        StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
    ) && response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .any(|challenge| {
            let challenge = challenge.as_bytes();
            challenge.len() > 4
                && challenge[..4].eq_ignore_ascii_case(b"dpop")
                && challenge
                    .windows(b"use_dpop_nonce".len())
                    .any(|w| w == b"use_dpop_nonce")
        })
}

/// An address as a URI authority (`[v6]:port` for IPv6).
fn authority_of(addr: SocketAddr) -> Authority {
    // A socket address always makes a valid authority. Were one ever not,
    // port 0 cannot be connected to: a 502, never a wrong destination.
    Authority::try_from(addr.to_string()).unwrap_or_else(|_| Authority::from_static("0.0.0.0:0"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

/// Makes `Authorization: Bearer <token>` the one Authorization header
/// (left as it is when it already is exactly that).
fn set_bearer(headers: &mut HeaderMap, token: &str) -> Result<(), Response<Body>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    if values
        .next()
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|sent| sent == token.as_bytes())
        && values.next().is_none()
    {
        return Ok(());
    }
    set_authorization(headers, "Bearer", token)
}

/// Makes `Authorization: <scheme> <token>` the one Authorization header.
fn set_authorization(
    headers: &mut HeaderMap,
    scheme: &str,
    token: &str,
) -> Result<(), Response<Body>> {
    let value = HeaderValue::try_from(format!("{scheme} {token}")).map_err(|_| {
        text(
            StatusCode::BAD_GATEWAY,
            "the token cannot be sent as a header",
        )
    })?;
    headers.insert(header::AUTHORIZATION, value);
    Ok(())
}

impl Proxy {
    pub fn new(
        mesh: Arc<Mesh>,
        app_addr: SocketAddr,
        resolve: HashMap<String, SocketAddr>,
        allow_unlisted: bool,
        timeout: Duration,
        stream_idle: Duration,
        probes: HashMap<String, Probe>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .http2_only(true)
            .build(connector);
        Self {
            mesh,
            app_addr,
            app_authority: authority_of(app_addr),
            resolve: resolve
                .into_iter()
                .map(|(host, addr)| (host, authority_of(addr)))
                .collect(),
            allow_unlisted,
            timeout,
            stream_idle,
            probes,
            inbound_scheme: "http",
            resource: ProtectedResource::default(),
            http1,
            http2,
        }
    }

    /// The inbound listener's protected-resource metadata, and whether it
    /// speaks TLS (then the URL clients call is `https`).
    pub fn with_resource(mut self, resource: ProtectedResource, tls: bool) -> Self {
        self.resource = resource;
        self.inbound_scheme = if tls { "https" } else { "http" };
        self
    }

    /// Sends `request` to `target`. --upstream-timeout bounds the wait for
    /// the answer's head; a pause of --stream-idle-timeout inside either
    /// body cuts it off.
    async fn forward(&self, mut request: Request<Upstream>, target: Authority) -> Response<Body> {
        strip_hop_by_hop(request.headers_mut());
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(target.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        match Uri::from_parts(uri) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return text(StatusCode::BAD_REQUEST, "malformed request target"),
        }
        let client = if request.version() == Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        };
        if request.version() != Version::HTTP_2 {
            *request.version_mut() = Version::HTTP_11;
        }
        let request = request.map(|body| Stall::new(body, self.stream_idle));
        match tokio::time::timeout(self.timeout, client.request(request)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Stall::new(body, self.stream_idle).boxed_unsync())
            }
            Ok(Err(err)) => {
                tracing::debug!(%target, error = %err, "upstream failed");
                text(StatusCode::BAD_GATEWAY, format!("cannot reach {target}"))
            }
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{target} did not answer in time"),
            ),
        }
    }

    /// Inbound: only requests with a valid token reach the application, with
    /// the token as a JWT. A connection redirected by the capture rules goes
    /// to the application's host on the port it was for; any other to
    /// `--app-addr`.
    pub async fn inbound(&self, mut request: Request<Incoming>) -> Response<Body> {
        let span = hop::inbound(request.headers());
        // The application's own calls carry this hop on as their parent.
        hop::pass_on(&span, request.headers_mut());
        let response = self.inbound_inner(request).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        self.mesh
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                direction: "inbound",
                status: response.status().as_u16(),
            })
            .inc();
        response
    }

    async fn inbound_inner(&self, mut request: Request<Incoming>) -> Response<Body> {
        if self.resource.serves(request.uri().path()) {
            return self.resource_metadata(&request).await;
        }
        // Only for refusals: a valid request never builds it.
        let metadata_url = |request: &Request<Incoming>| {
            self.resource
                .resource(request, self.inbound_scheme)
                .map(|resource| resource.metadata_url())
        };
        let authorization = match only_authorization(request.headers()) {
            Ok(value) => value,
            Err(response) => return response,
        };
        let Some((scheme, token)) = authorization
            .as_ref()
            .and_then(|value| credential_in(value.as_bytes()))
        else {
            return unauthorized(&Refusal::Missing, metadata_url(&request).as_deref());
        };
        let proofs: Vec<&[u8]> = request
            .headers()
            .get_all(DPOP_HEADER)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let url = called_url(&request, self.inbound_scheme).unwrap_or_default();
        let presented = Presented {
            scheme,
            token,
            proofs: &proofs,
            method: request.method().as_str(),
            url: &url,
        };
        let verified = match self.mesh.validate_presented(&presented).await {
            Ok(verified) => verified,
            Err(refusal) => {
                tracing::debug!(reason = %refusal, "inbound request refused");
                return refused_naming(&refusal, metadata_url(&request).as_deref());
            }
        };
        let peer = request.extensions().get::<PeerCertificate>();
        if let Err(refusal) = crate::binding::check_certificate(&verified.claims, peer) {
            tracing::debug!(reason = %refusal, "inbound request refused");
            return refused_naming(&refusal, metadata_url(&request).as_deref());
        }
        // The proof stays here: the application could replay it elsewhere.
        request.headers_mut().remove(DPOP_HEADER);
        if let Err(response) = set_bearer(request.headers_mut(), &verified.jwt) {
            return response;
        }
        let app = match request.extensions().get::<OriginalDst>() {
            Some(OriginalDst(original)) => {
                authority_of(SocketAddr::new(self.app_addr.ip(), original.port()))
            }
            None => self.app_authority.clone(),
        };
        let mut response = self.forward(request.map(Either::Left), app).await;
        // A fresh nonce with every answer to a DPoP request (RFC 9449 §8).
        if scheme == AuthScheme::Dpop
            && let Some(nonce) = self.mesh.fresh_nonce()
            && let Ok(nonce) = HeaderValue::try_from(nonce)
        {
            response.headers_mut().insert(NONCE_HEADER, nonce);
        }
        response
    }

    /// Outbound: the destination from the absolute URI (HTTP proxy) or the
    /// Host header; its token by the policy for that host. A connection
    /// redirected by the capture rules goes where it was for.
    pub async fn outbound(&self, mut request: Request<Incoming>) -> Response<Body> {
        let span = hop::outbound(request.headers());
        let response = self
            .outbound_inner(&mut request)
            .instrument(span.clone())
            .await;
        let response = match response {
            Ok((target, None)) => {
                hop::pass_on(&span, request.headers_mut());
                self.forward(request.map(Either::Left), target)
                    .instrument(span.clone())
                    .await
            }
            Ok((target, Some(bound))) => {
                hop::pass_on(&span, request.headers_mut());
                self.forward_bound(request, target, &bound)
                    .instrument(span.clone())
                    .await
            }
            Err(response) => response,
        };
        span.record("http.response.status_code", response.status().as_u16());
        self.mesh
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                direction: "outbound",
                status: response.status().as_u16(),
            })
            .inc();
        response
    }

    /// Where the request goes, and the DPoP-bound token it carries (then
    /// it needs a proof of this sidecar's key).
    async fn outbound_inner(
        &self,
        request: &mut Request<Incoming>,
    ) -> Result<(Authority, Option<Arc<str>>), Response<Body>> {
        if request.method() == http::Method::CONNECT {
            return Err(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not proxied: tokens cannot be added inside TLS; call http:// through the sidecar",
            ));
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                text(
                    StatusCode::BAD_REQUEST,
                    "no destination: give an absolute URI or a Host header",
                )
            })?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => (host.to_ascii_lowercase(), Some(port)),
                Err(_) => (authority.to_ascii_lowercase(), None),
            },
            None => (authority.to_ascii_lowercase(), None),
        };
        let mut carries_token = false;
        let mut bound = None;
        let route = self.mesh.route(&host);
        hop::record_route(&host, route.as_deref());
        match (route, outbound_bearer(request.headers())) {
            (Some(route), Some(token)) => {
                carries_token = true;
                let outbound = self
                    .mesh
                    .outbound_token(&host, &route, &token)
                    .await
                    .map_err(|refusal| {
                        tracing::debug!(%host, reason = %refusal, "outbound request refused");
                        refused(&refusal)
                    })?;
                if outbound.dpop {
                    set_authorization(request.headers_mut(), "DPoP", &outbound.token)?;
                    bound = Some(outbound.token);
                } else {
                    // The application's own proofs are not for this token.
                    request.headers_mut().remove(DPOP_HEADER);
                    set_bearer(request.headers_mut(), &outbound.token)?;
                }
            }
            // No bearer token to pass on (at most the application's own
            // credential for the destination): the destination decides.
            (Some(_), None) => {}
            (None, _) if self.allow_unlisted => {
                // Never leak a token to a destination no policy names.
                request.headers_mut().remove(header::AUTHORIZATION);
            }
            (None, _) => return Err(refused(&Refusal::Forbidden(host))),
        }
        let host_header = request.headers().get(header::HOST);
        if host_header.is_none_or(|h| h.as_bytes() != authority.as_bytes())
            && let Ok(value) = HeaderValue::try_from(authority.as_str())
        {
            request.headers_mut().insert(header::HOST, value);
        }
        let original = request
            .extensions()
            .get::<OriginalDst>()
            .map(|OriginalDst(addr)| *addr);
        let target = match (self.resolve.get(&host), original) {
            // A token goes only to the host its policy names: a captured
            // connection to some other address with this Host goes to the
            // host, never to where the application connected.
            (Some(resolved), _) if carries_token => return Ok((resolved.clone(), bound)),
            (Some(resolved), None) => return Ok((resolved.clone(), bound)),
            (None, Some(addr)) if carries_token => {
                format!("{host}:{}", port.unwrap_or(addr.port()))
            }
            (_, Some(addr)) => return Ok((authority_of(addr), bound)),
            (None, None) => format!("{host}:{}", port.unwrap_or(80)),
        };
        let target = Authority::try_from(target)
            .map_err(|_| text(StatusCode::BAD_REQUEST, "malformed destination host"))?;
        Ok((target, bound))
    }

    /// Forwards a call whose token is bound to this sidecar's key, with a
    /// fresh DPoP proof (RFC 9449 §7): `htm` its method, `htu` the URL as
    /// the next hop sees it called, `ath` of the token. Asked for a nonce
    /// (§9), the call is made once more with it when its body was small
    /// enough to keep ([`MAX_REPLAY_BODY`]); the nonce is remembered for
    /// the origin either way, as is any newer one an answer brings.
    async fn forward_bound(
        &self,
        request: Request<Incoming>,
        target: Authority,
        token: &str,
    ) -> Response<Body> {
        // What the next hop reads as the URL called: the Host header over
        // HTTP/1.1; over HTTP/2 the `:authority` forward() sends, the
        // address connected to.
        let url = if request.version() == Version::HTTP_2 {
            Some(format!("http://{target}{}", request.uri().path()))
        } else {
            called_url(&request, "http")
        };
        let Some(url) = url else {
            return text(StatusCode::BAD_REQUEST, "no destination host");
        };
        let (parts, body) = request.into_parts();
        let kept = match self.keep(&parts.headers, body).await {
            Ok(kept) => kept,
            Err(response) => return response,
        };
        let (body, replay) = match kept {
            Kept::Bytes(bytes) => (Either::Right(Full::new(bytes.clone())), Some(bytes)),
            Kept::Stream(body) => (Either::Left(body), None),
        };
        let attempt = |body: Upstream| {
            let proof = self
                .mesh
                .call_proof(parts.method.as_str(), &url, token)
                .and_then(|proof| {
                    HeaderValue::try_from(proof)
                        .map_err(|_| Refusal::Unavailable("a DPoP proof is not a header".into()))
                });
            let mut request = Request::new(body);
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            let target = target.clone();
            async move {
                match proof {
                    Ok(proof) => {
                        request.headers_mut().insert(DPOP_HEADER, proof);
                        self.forward(request, target).await
                    }
                    Err(refusal) => refused(&refusal),
                }
            }
        };
        let response = attempt(body).await;
        let renewed = response
            .headers()
            .get(NONCE_HEADER)
            .is_some_and(|nonce| self.mesh.signer.remember(&url, nonce.as_bytes()));
        match replay {
            Some(bytes) if renewed && asks_for_nonce(&response) => {
                self.mesh.metrics.dpop_nonce_retries.inc();
                let response = attempt(Either::Right(Full::new(bytes))).await;
                if let Some(nonce) = response.headers().get(NONCE_HEADER) {
                    self.mesh.signer.remember(&url, nonce.as_bytes());
                }
                response
            }
            _ => response,
        }
    }

    /// The body of a call that may have to be made again: kept when it is
    /// empty or declares at most [`MAX_REPLAY_BODY`] bytes, else streamed.
    async fn keep(&self, headers: &HeaderMap, body: Incoming) -> Result<Kept, Response<Body>> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !body.is_end_stream() && declared.is_none_or(|length| length > MAX_REPLAY_BODY) {
            return Ok(Kept::Stream(body));
        }
        let limit = usize::try_from(MAX_REPLAY_BODY).unwrap_or(usize::MAX);
        let read = Limited::new(Stall::new(body, self.stream_idle), limit).collect();
        match read.await {
            Ok(collected) => Ok(Kept::Bytes(collected.to_bytes())),
            Err(_) => Err(text(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )),
        }
    }

    /// The protected-resource metadata (RFC 9728 §3), without a token: the
    /// token server's issuer is the one authorization server.
    async fn resource_metadata(&self, request: &Request<Incoming>) -> Response<Body> {
        if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "metadata is GET");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let Some(resource) = self.resource.resource(request, self.inbound_scheme) else {
            return text(StatusCode::BAD_REQUEST, "no valid Host names the resource");
        };
        let issuer = match self.mesh.issuer().await {
            Ok(issuer) => issuer,
            Err(refusal) => return refused(&refusal),
        };
        let document = self.resource.document(&resource, &issuer);
        answer(StatusCode::OK, "application/json", document.to_string())
    }

    /// `/healthz`, `/readyz`, `/metrics`, and the application's probes.
    pub async fn admin(&self, mut request: Request<Incoming>) -> Response<Body> {
        if let Some(probe) = self.probes.get(request.uri().path()) {
            if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
                return text(StatusCode::METHOD_NOT_ALLOWED, "probes are GET");
            }
            if !request.body().is_end_stream() {
                return text(StatusCode::BAD_REQUEST, "probes carry no body");
            }
            // Only the configured path, never the caller's: no way around the token checks.
            *request.uri_mut() = Uri::from(probe.target.clone());
            // Only the headers the probe names: anyone who reaches the admin
            // port could otherwise hand the application a credential
            // (Authorization, Cookie) the inbound checks never saw.
            let headers = probe_headers(request.headers(), &probe.headers);
            *request.headers_mut() = headers;
            let app = SocketAddr::new(self.app_addr.ip(), probe.port);
            return self
                .forward(request.map(Either::Left), authority_of(app))
                .await;
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok"),
            "/readyz" if self.mesh.ready() => text(StatusCode::OK, "ready"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the token server's keys and policies",
            ),
            "/metrics" => text(StatusCode::OK, self.mesh.metrics.render()),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// A request body as [`Proxy::keep`] leaves it.
enum Kept {
    Bytes(Bytes),
    Stream(Incoming),
}

/// The headers of a probe request that pass on: the ones its definition
/// names and kubelet's own, nothing else.
fn probe_headers(sent: &HeaderMap, named: &[HeaderName]) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in named.iter().chain(&KUBELET_HEADERS) {
        if kept.contains_key(name) {
            continue;
        }
        for value in sent.get_all(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Serves HTTP/1.1 and HTTP/2 (h2c) on `listener` until `shutdown`, then
/// lets requests in flight finish (10 s at most). The requests of a
/// connection that was redirected to `listener` carry its [`OriginalDst`].
///
/// `client_timeout` bounds slow and idle clients ([`tokenmesh_tokens::listen::Limits::uniform`]):
/// a connection with no request in progress for that long is closed
/// (gracefully, then for good after as long again), which also covers
/// HTTP/1 headers that never end and a connection that never finishes its
/// first bytes; a client that stops reading for that long is dropped;
/// HTTP/2 peers are pinged at that interval and dropped if they do not
/// answer within it. `vectored_writes: false` makes small HTTP/2 answers
/// leave in one write (see `tokenmesh_proto::one_write`).
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    client_timeout: Duration,
    vectored_writes: bool,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_tls(
        listener,
        None,
        handler,
        shutdown,
        client_timeout,
        vectored_writes,
    )
    .await;
}

/// [`serve`], with TLS when `tls` is given (the inbound listener's
/// `--inbound-tls-cert`; client certificates with `--inbound-client-ca`).
pub async fn serve_tls<H, F>(
    listener: tokio::net::TcpListener,
    tls: Option<tokenmesh_tokens::listen::tls::Acceptor>,
    handler: H,
    shutdown: impl Future<Output = ()>,
    client_timeout: Duration,
    vectored_writes: bool,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let limits = tokenmesh_tokens::listen::Limits {
        vectored_writes,
        ..tokenmesh_tokens::listen::Limits::uniform(client_timeout)
    };
    let handler_for = move |stream: &tokio::net::TcpStream| {
        let original = redirect::original_destination(stream);
        let handler = handler.clone();
        move |mut request: Request<Incoming>| {
            if let Some(original) = original {
                request.extensions_mut().insert(OriginalDst(original));
            }
            handler(request)
        }
    };
    tokenmesh_tokens::listen::serve(listener, tls, limits, handler_for, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
        assert_eq!(
            bearer_in("Bearer t\u{e9}".as_bytes()),
            None,
            "not visible ASCII"
        );
        assert_eq!(bearer_in(b"Bearer \xff"), None);
    }

    #[test]
    fn the_application_gets_exactly_bearer_and_the_jwt() {
        let mut headers = HeaderMap::new();
        for (sent, token, expected) in [
            ("Bearer abc", "abc", "Bearer abc"),
            ("bearer abc", "abc", "Bearer abc"),
            ("Bearer  abc ", "abc", "Bearer abc"),
            ("Bearer opaque", "a.b.c", "Bearer a.b.c"),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(sent));
            assert!(set_bearer(&mut headers, token).is_ok());
            assert_eq!(headers[header::AUTHORIZATION], expected, "sent {sent:?}");
        }
        assert!(
            set_bearer(&mut headers, "bad\ntoken").is_err(),
            "a token that is not a header value is refused, not sent"
        );
    }

    #[test]
    fn set_bearer_leaves_exactly_one_authorization() {
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer smuggled"),
        );
        assert!(set_bearer(&mut headers, "t").is_ok());
        let values: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(values, ["Bearer t"]);
    }

    #[test]
    fn inbound_takes_one_authorization_header_or_none() {
        let mut headers = HeaderMap::new();
        assert!(matches!(only_authorization(&headers), Ok(None)));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert!(matches!(only_authorization(&headers), Ok(Some(v)) if v == "Bearer a"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Basic b"));
        let refused = only_authorization(&headers).err().unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], INVALID_REQUEST);
    }

    #[test]
    fn outbound_finds_the_bearer_token_behind_another_credential() {
        let mut headers = HeaderMap::new();
        assert_eq!(outbound_bearer(&headers), None);
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Basic b"));
        assert_eq!(outbound_bearer(&headers), None);
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert_eq!(outbound_bearer(&headers).as_deref(), Some("a"));
    }

    #[test]
    fn probes_keep_only_the_named_and_kubelets_headers() {
        let mut sent = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer stolen"),
            ("cookie", "session=1"),
            ("x-probe", "1"),
            ("x-probe", "2"),
            ("user-agent", "kube-probe/1.35"),
            ("accept", "*/*"),
            ("host", "10.0.0.1:15020"),
        ] {
            sent.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let kept = probe_headers(&sent, &[HeaderName::from_static("x-probe")]);
        let mut names: Vec<_> = kept.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "user-agent", "x-probe"]);
        assert_eq!(kept.get_all("x-probe").iter().count(), 2);
        // A name given twice (or one of kubelet's) is kept once.
        let kept = probe_headers(&sent, &[header::USER_AGENT, header::USER_AGENT]);
        assert_eq!(kept.get_all(header::USER_AGENT).iter().count(), 1);
    }

    #[test]
    fn upstream_authorities_are_made_from_socket_addresses() {
        assert_eq!(
            authority_of("127.0.0.1:8080".parse().unwrap()).as_str(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            authority_of("[::1]:80".parse().unwrap()).as_str(),
            "[::1]:80"
        );
    }

    #[test]
    fn hop_by_hop_headers_do_not_travel() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-app", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(
            headers.get("connection").is_none() && headers.get("proxy-authorization").is_none()
        );
        assert_eq!(
            headers.get("te").unwrap(),
            "trailers",
            "gRPC needs te: trailers"
        );
        assert_eq!(headers.get("x-app").unwrap(), "1");
    }

    /// RFC 9449 §9: a 401 (or 400) with a DPoP challenge naming
    /// `use_dpop_nonce` asks for a nonce; nothing else does.
    #[test]
    fn an_answer_asks_for_a_nonce_only_with_a_dpop_use_dpop_nonce_challenge() {
        let answer = |status: StatusCode, challenges: &[&'static str]| {
            let mut response = text(status, "");
            for challenge in challenges {
                response.headers_mut().append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            asks_for_nonce(&response)
        };
        assert!(answer(StatusCode::UNAUTHORIZED, &[DPOP_USE_NONCE]));
        assert!(answer(
            StatusCode::UNAUTHORIZED,
            &[CHALLENGE, "dpop error=\"use_dpop_nonce\""]
        ));
        assert!(answer(StatusCode::BAD_REQUEST, &[DPOP_USE_NONCE]));
        assert!(!answer(StatusCode::OK, &[DPOP_USE_NONCE]));
        assert!(!answer(StatusCode::UNAUTHORIZED, &[DPOP_INVALID_PROOF]));
        assert!(!answer(
            StatusCode::UNAUTHORIZED,
            &["Bearer error=\"use_dpop_nonce\""]
        ));
        assert!(!answer(StatusCode::UNAUTHORIZED, &[]));
        let refused = refused(&Refusal::UseNonce("n1".into()));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], DPOP_USE_NONCE);
        assert_eq!(refused.headers()[NONCE_HEADER], "n1");
    }

    #[test]
    fn refusals_map_to_statuses_and_challenges() {
        let r = refused(&Refusal::Invalid("expired".into()));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(
            refused(&Refusal::Missing).headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\"",
            "the contract: every 401 says invalid_token, even without a token"
        );
        assert_eq!(
            refused(&Refusal::Forbidden("x".into())).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            refused(&Refusal::Unavailable("down".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn every_inbound_401_challenge_names_the_resource_metadata() {
        let url = "https://api.example/.well-known/oauth-protected-resource/orders";
        let param = format!(", resource_metadata=\"{url}\"");
        let challenges = |refusal: &Refusal| {
            let response = refused_naming(refusal, Some(url));
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refusal}");
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
            response
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            challenges(&Refusal::Missing),
            [
                CHALLENGE.to_owned() + &param,
                DPOP_CHALLENGE.to_owned() + &param
            ]
        );
        assert_eq!(
            challenges(&Refusal::Invalid("expired".into())),
            [
                CHALLENGE.to_owned() + &param,
                DPOP_CHALLENGE.to_owned() + &param
            ]
        );
        assert_eq!(
            challenges(&Refusal::Proof("no proof".into())),
            [DPOP_INVALID_PROOF.to_owned() + &param]
        );
        assert_eq!(
            challenges(&Refusal::UseNonce("n".into())),
            [DPOP_USE_NONCE.to_owned() + &param]
        );
        // Not a 401: no challenge to carry it.
        let forbidden = refused_naming(&Refusal::Forbidden("x".into()), Some(url));
        assert!(forbidden.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn the_called_url_has_the_listeners_scheme_unless_the_request_names_one() {
        let request = |uri: &str| {
            Request::builder()
                .uri(uri)
                .header(header::HOST, "orders.local:15006")
                .body(())
                .unwrap()
        };
        assert_eq!(
            called_url(&request("/a?b=1"), "https").as_deref(),
            Some("https://orders.local:15006/a"),
            "HTTP/1.1 over the TLS listener: the proof's htu is https"
        );
        assert_eq!(
            called_url(&request("/a"), "http").as_deref(),
            Some("http://orders.local:15006/a")
        );
        assert_eq!(
            called_url(&request("http://other:1/a"), "https").as_deref(),
            Some("http://other:1/a")
        );
    }

    use tokio::time::Instant;

    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(1);
    /// What "closed by the timeout" allows: the timeout plus a loaded
    /// machine's delays, well under the 10 s after which a connection
    /// counts as held open.
    const CLOSED_WITHIN: Duration = Duration::from_secs(6);

    /// A listener served with `TIMEOUT`; answers "ok" after `delay`.
    async fn listener(delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            move |_request| async move {
                tokio::time::sleep(delay).await;
                text(StatusCode::OK, "ok")
            },
            std::future::pending(),
            TIMEOUT,
            true,
        ));
        addr
    }

    /// Writes `bytes`, then reads until the server closes; how long that took.
    async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> (Duration, String) {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "still open after 10 s");
        (
            started.elapsed(),
            String::from_utf8_lossy(&seen).into_owned(),
        )
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_disconnected() {
        let addr = listener(Duration::ZERO).await;
        // Closed gracefully after one timeout, for good after another: a
        // connection polled meanwhile (hyper flushes on every poll) must
        // not count as active. Three of each, at once, so a close that
        // comes late only some of the time is seen.
        let bound = TIMEOUT * 2 + Duration::from_millis(1500);
        let mut cases = tokio::task::JoinSet::new();
        for (name, bytes) in [
            ("partial headers", &b"GET / HTTP/1.1\r\nHost: x\r\n"[..]),
            ("nothing at all", b""),
            ("a few bytes", b"GE"),
            ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
            // An idle keep-alive connection, after its answer.
            ("idle keep-alive", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ] {
            for _ in 0..3 {
                cases.spawn(async move { (name, closed_after(addr, bytes).await) });
            }
        }
        while let Some(case) = cases.join_next().await {
            let (name, (took, answer)) = case.unwrap();
            assert!(took < bound, "{name}: open for {took:?}");
            if name == "idle keep-alive" {
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
        }
    }

    #[tokio::test]
    async fn a_request_in_progress_outlives_the_client_timeout() {
        let addr = listener(TIMEOUT * 2 + Duration::from_millis(500)).await;
        let (_, answer) = closed_after(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }

    #[tokio::test]
    async fn idle_http2_connections_are_closed() {
        let addr = listener(Duration::ZERO).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let connection = tokio::spawn(connection);
        let response = sender
            .send_request(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
        assert!(started.elapsed() < CLOSED_WITHIN, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped() {
        const SIZE: usize = 32 << 20;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            |_request| async {
                // Streamed, so the answer is in progress until the end.
                let chunk = Bytes::from(vec![b'x'; 1 << 16]);
                let frames =
                    (0..SIZE >> 16).map(move |_| Ok(hyper::body::Frame::data(chunk.clone())));
                let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
                Response::new(body.boxed_unsync())
            },
            std::future::pending(),
            TIMEOUT,
            true,
        ));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Not reading: the answer fills the socket buffers and stops.
        tokio::time::sleep(TIMEOUT * 3).await;
        let mut received = 0;
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received += n;
            }
        })
        .await;
        assert!(read.is_ok(), "still open");
        assert!(
            received < SIZE,
            "the whole answer came: the client was waited for"
        );
    }
}
