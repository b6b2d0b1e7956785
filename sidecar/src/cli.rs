//! Flags; each is also a `TOKENMESH_SIDECAR_*` environment variable (the
//! injection webhook sets those). Durations are written as in the resources
//! and the operator's flags (`30s`, `5m`, `1h30m`), or as bare seconds.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{ArgGroup, Parser};
use tokenmesh_tokens::duration::{parse_flag, parse_positive_flag};

/// The tokenmesh sidecar.
///
/// Runs next to an application. Inbound, every request must carry a valid
/// access token for --audience (JWTs are verified against the token server's
/// keys, opaque tokens are introspected and swapped for their phantom JWT);
/// the application sees only requests with a valid JWT. Outbound (as an HTTP
/// proxy: HTTP_PROXY=http://<outbound-addr>), the token the application
/// propagates is shared, exchanged or replaced by its embedded token for the
/// destination, as the ExchangePolicy resources say.
#[derive(Parser, Debug, Clone)]
#[command(name = "tokenmesh-sidecar", version)]
#[command(group(ArgGroup::new("credential").required(true).args(["client_secret_file", "service_account_token_file", "private_key_file"])))]
pub struct Args {
    /// The token server's gRPC URL. https:// uses rustls (the system roots
    /// plus --token-server-ca); the chart's default. http:// is plaintext:
    /// meant for loopback, but accepted for any host (an install with the
    /// chart's tokenServer.tls.enabled=false uses it); to a host that is
    /// not loopback the sidecar then logs a warning at startup, as its
    /// credential and every token it sends cross the network in clear.
    #[arg(long, env = "TOKENMESH_SIDECAR_TOKEN_SERVER")]
    pub token_server: String,

    /// PEM CA certificate(s) to trust for an https:// token server, in
    /// addition to the system roots. The injection webhook sets it to the
    /// token server's CA, mounted from the pod's annotation.
    #[arg(long, env = "TOKENMESH_SIDECAR_TOKEN_SERVER_CA")]
    pub token_server_ca: Option<PathBuf>,

    /// This workload's OAuth client id.
    #[arg(long, env = "TOKENMESH_SIDECAR_CLIENT_ID")]
    pub client_id: String,

    /// File holding the client secret.
    #[arg(long, env = "TOKENMESH_SIDECAR_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// Projected service-account token, sent as a client assertion; read
    /// again on every use, so rotation needs no restart.
    #[arg(long, env = "TOKENMESH_SIDECAR_SERVICE_ACCOUNT_TOKEN_FILE")]
    pub service_account_token_file: Option<PathBuf>,

    /// PKCS#8 PEM private key for private_key_jwt (needs --issuer): each
    /// call carries a fresh assertion signed with it.
    #[arg(long, env = "TOKENMESH_SIDECAR_PRIVATE_KEY_FILE", requires = "issuer")]
    pub private_key_file: Option<PathBuf>,

    /// The `kid` of --private-key-file's public key in the OAuthClient's
    /// jwks, sent in the assertion header so the token server picks that
    /// key. Without it the header's kid is empty, which matches only a
    /// registered key that has no kid.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_PRIVATE_KEY_ID",
        value_name = "KID",
        requires = "private_key_file"
    )]
    pub private_key_id: Option<String>,

    /// The token server's issuer URL, the `aud` of private_key_jwt assertions.
    #[arg(long, env = "TOKENMESH_SIDECAR_ISSUER")]
    pub issuer: Option<String>,

    /// The audience this workload accepts inbound.
    #[arg(long, env = "TOKENMESH_SIDECAR_AUDIENCE")]
    pub audience: String,

    /// The URL clients call this service by, its resource identifier in
    /// the protected-resource metadata (RFC 9728) served on the inbound
    /// port at /.well-known/oauth-protected-resource (and that path
    /// followed by this URL's path) and named by every 401's
    /// `resource_metadata`. Give it where the one the sidecar derives (the
    /// scheme and Host a request came with) is not what clients call, e.g.
    /// behind an ingress: `https://api.example.com/orders`.
    #[arg(long, env = "TOKENMESH_SIDECAR_RESOURCE_URL", value_name = "URL")]
    pub resource_url: Option<crate::resource::ResourceUrl>,

    /// Where requests for the application arrive. With traffic capture
    /// (tokenmesh-capture), listen where redirected connections arrive: on
    /// the pod's address, e.g. 0.0.0.0:15006.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_INBOUND_ADDR",
        default_value = "127.0.0.1:15006"
    )]
    pub inbound_addr: SocketAddr,

    /// PEM certificate chain: the inbound listener speaks TLS (read again
    /// every 5 s, so a renewed certificate needs no restart).
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_INBOUND_TLS_CERT",
        requires = "inbound_tls_key"
    )]
    pub inbound_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --inbound-tls-cert.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_INBOUND_TLS_KEY",
        requires = "inbound_tls_cert"
    )]
    pub inbound_tls_key: Option<std::path::PathBuf>,

    /// PEM CA bundle: the inbound TLS listener asks callers for a client
    /// certificate (optional), which a certificate-bound token
    /// (`cnf.x5t#S256`, RFC 8705) must match. Read again every 5 s, like
    /// the certificate.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_INBOUND_CLIENT_CA",
        requires = "inbound_tls_cert"
    )]
    pub inbound_client_ca: Option<std::path::PathBuf>,

    /// The application's own address (what inbound forwards to). A
    /// connection that the capture rules redirected goes to this host on the
    /// port it was originally for.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_APP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub app_addr: SocketAddr,

    /// The outbound proxy the application calls other services through
    /// (keep it on loopback). With outbound capture, connections redirected
    /// here go to their original destination.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_OUTBOUND_ADDR",
        default_value = "127.0.0.1:15001"
    )]
    pub outbound_addr: SocketAddr,

    /// /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "TOKENMESH_SIDECAR_ADMIN_ADDR",
        default_value = "127.0.0.1:15020"
    )]
    pub admin_addr: SocketAddr,

    /// Also serve Envoy's envoy.service.auth.v3.Authorization (ext_authz) here.
    #[arg(long, env = "TOKENMESH_SIDECAR_EXT_AUTHZ_ADDR")]
    pub ext_authz_addr: Option<SocketAddr>,

    /// HOST=ADDR: connect to ADDR for HOST instead of resolving it (repeat,
    /// or comma-separate in the environment).
    #[arg(
        long = "resolve",
        env = "TOKENMESH_SIDECAR_RESOLVE",
        value_delimiter = ','
    )]
    pub resolve: Vec<Resolve>,

    /// PATH=PORT/TARGET: answer `GET PATH` on the admin listener with the
    /// application's answer to `GET TARGET` on PORT, no token needed. The
    /// injection webhook rewrites kubelet HTTP probes of captured ports to
    /// these, since a probe carries no token (repeat, or comma-separate in
    /// the environment).
    #[arg(
        long = "app-probe",
        env = "TOKENMESH_SIDECAR_APP_PROBES",
        value_delimiter = ','
    )]
    pub app_probes: Vec<AppProbe>,

    /// PATH=NAME: the request header NAME of the probe at PATH (an
    /// --app-probe) passes on to the application, as named in the probe's
    /// `httpHeaders`. A probe passes on only these, kubelet's `User-Agent`
    /// and `Accept`: never the caller's Authorization or Cookie (repeat, or
    /// comma-separate in the environment).
    #[arg(
        long = "app-probe-header",
        env = "TOKENMESH_SIDECAR_APP_PROBE_HEADERS",
        value_delimiter = ','
    )]
    pub app_probe_headers: Vec<AppProbeHeader>,

    /// Forward calls to destinations no policy names, without any token.
    /// Default: refuse them (403).
    #[arg(long, env = "TOKENMESH_SIDECAR_ALLOW_UNLISTED")]
    pub allow_unlisted_destinations: bool,

    /// How long an upstream (application or destination) may take to
    /// start its answer: connecting and sending the status and headers.
    /// The body that follows is bounded by --stream-idle-timeout.
    #[arg(long, env = "TOKENMESH_SIDECAR_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_flag)]
    pub upstream_timeout: Duration,

    /// The longest a body may pause between two pieces once it has
    /// started: an upstream's answer, or a client's request. A stalled body
    /// is cut off (its connection or HTTP/2 stream reset). Streams that
    /// stay quiet longer (gRPC watches, server-sent events) need a larger
    /// value or their own heartbeats.
    #[arg(long, env = "TOKENMESH_SIDECAR_STREAM_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_positive_flag)]
    pub stream_idle_timeout: Duration,

    /// Bounds on clients of every listener (inbound, outbound, admin and
    /// ext_authz): how long a connection may sit with no request in
    /// progress (a request whose headers have not all arrived is not in
    /// progress yet) before it is closed (HTTP/1, HTTP/2 with a GOAWAY;
    /// dropped after as long again if it does not close); how long a client
    /// may stop reading its answer before it is dropped; and the HTTP/2
    /// ping interval and ping-answer deadline that drop dead peers.
    #[arg(long, env = "TOKENMESH_SIDECAR_CLIENT_TIMEOUT", default_value = "30s", value_parser = parse_positive_flag)]
    pub client_timeout: Duration,

    /// Clock skew accepted on a token's `exp` and `nbf` (whole seconds count).
    #[arg(long, env = "TOKENMESH_SIDECAR_CLOCK_SKEW", default_value = "10s", value_parser = parse_flag)]
    pub clock_skew: Duration,

    /// Inbound DPoP proofs must carry a nonce of this sidecar's (RFC 9449
    /// §9): a proof without a current one gets 401 `use_dpop_nonce` with the
    /// nonce in `DPoP-Nonce`, and every answer to a DPoP request carries a
    /// fresh one. Nonces are an HMAC of a 2-minute window under a key made
    /// at start, so they cost no memory; a proof's replay is refused with or
    /// without them.
    #[arg(long, env = "TOKENMESH_SIDECAR_DPOP_REQUIRE_NONCE")]
    pub dpop_require_nonce: bool,

    /// Revoked token and grant ids kept in memory (about 150 bytes each,
    /// each until the token it concerns would have expired). When full, the
    /// one that expires soonest is dropped and every token that expires by
    /// then is refused as possibly revoked (401): newer tokens still pass,
    /// a revoked one never does. Metric tokenmesh_sidecar_revocations_dropped.
    #[arg(long, env = "TOKENMESH_SIDECAR_MAX_REVOCATIONS", default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_revocations: u64,

    /// Log format.
    #[arg(long, env = "TOKENMESH_SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "TOKENMESH_SIDECAR_LOG", default_value = "info")]
    pub log: String,

    /// Export trace spans over OTLP/gRPC to this collector
    /// (`http://collector:4317`): one span per hop, continuing the
    /// `traceparent` a request brings. Off by default; the standard `OTEL_*`
    /// variables are honoured too (`OTEL_SERVICE_NAME` defaults to the
    /// client id).
    #[arg(long, env = "TOKENMESH_SIDECAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

pub use tokenmesh_tokens::runtime::LogFormat;

/// `HOST=ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    pub host: String,
    pub addr: SocketAddr,
}

impl FromStr for Resolve {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, addr) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: write HOST=ADDR"))?;
        let addr = addr.parse().map_err(|e| format!("`{addr}`: {e}"))?;
        Ok(Self {
            host: host.to_ascii_lowercase(),
            addr,
        })
    }
}

/// `PATH=PORT/TARGET`: a probe path of the admin listener and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    pub path: String,
    pub port: u16,
    pub target: http::uri::PathAndQuery,
}

impl FromStr for AppProbe {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage =
            || format!("`{text}`: write PATH=PORT/TARGET, like /app-health/web/livez=8080/healthz");
        let (path, to) = text.split_once('=').ok_or_else(usage)?;
        let (port, target) = to.split_at(to.find('/').unwrap_or(to.len()));
        let port = port.parse::<u16>().map_err(|_| usage())?;
        if !path.starts_with('/') || port == 0 {
            return Err(usage());
        }
        let target = if target.is_empty() { "/" } else { target };
        Ok(Self {
            path: path.to_owned(),
            port,
            target: target.parse().map_err(|_| usage())?,
        })
    }
}

/// `PATH=NAME`: a header a probe passes on to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbeHeader {
    pub path: String,
    pub name: http::HeaderName,
}

impl FromStr for AppProbeHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || format!("`{text}`: write PATH=NAME, like /app-health/web/livez=x-probe");
        let (path, name) = text.split_once('=').ok_or_else(usage)?;
        if !path.starts_with('/') {
            return Err(usage());
        }
        let name: http::HeaderName = name.trim().parse().map_err(|_| usage())?;
        // The value comes from whoever calls the admin port: a credential
        // header would hand the application a credential no check has seen.
        if is_credential(&name) {
            return Err(format!(
                "`{text}`: a probe cannot pass `{name}` on: the admin port takes no credentials"
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            name,
        })
    }
}

/// Headers that carry credentials, which probes never pass on.
pub fn is_credential(name: &http::HeaderName) -> bool {
    [
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        http::header::COOKIE,
    ]
    .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_cannot_pass_a_credential_header_on() {
        for name in ["Authorization", "cookie", "Proxy-Authorization"] {
            let text = format!("/app-health/web/livez={name}");
            assert!(text.parse::<AppProbeHeader>().is_err(), "{name}");
        }
        let ok: AppProbeHeader = "/app-health/web/livez=X-Probe".parse().unwrap();
        assert_eq!(ok.name, "x-probe");
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let required = [
            "tokenmesh-sidecar",
            "--token-server",
            "http://127.0.0.1:8081",
            "--client-id",
            "shop/orders",
            "--client-secret-file",
            "/dev/null",
            "--audience",
            "shop/orders",
        ];
        Args::try_parse_from(required.iter().chain(extra))
    }

    #[test]
    fn durations_take_the_operators_form_and_bare_seconds() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(args.client_timeout, Duration::from_secs(30));
        let args = parse(&[
            "--stream-idle-timeout",
            "10m",
            "--upstream-timeout",
            "1m30s",
        ])
        .unwrap();
        assert_eq!(args.stream_idle_timeout, Duration::from_secs(600));
        assert_eq!(args.upstream_timeout, Duration::from_secs(90));
        let args = parse(&["--client-timeout", "45", "--clock-skew", "5"]).unwrap();
        assert_eq!(args.client_timeout, Duration::from_secs(45));
        assert_eq!(args.clock_skew, Duration::from_secs(5));
        assert!(parse(&["--client-timeout", "0s"]).is_err());
        assert!(parse(&["--upstream-timeout", "30 s"]).is_err());
    }
}
