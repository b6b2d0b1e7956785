//! Command-line flags; each is also a `TOKENMESH_*` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use tokenmesh_tokens::duration::parse_positive_flag;

/// The tokenmesh OAuth 2.0 authorization server.
///
/// Reads tokenmesh resources (TokenServer, OAuthClient, Scope,
/// ExchangePolicy) from YAML files, keeps signing keys, opaque tokens and
/// revocations in an embedded store under --data-dir (or in PostgreSQL with
/// --database-url, for several replicas), and serves the OAuth endpoints over
/// HTTP(S) and the gRPC API. Every endpoint is listed at
/// /.well-known/oauth-authorization-server.
#[derive(Parser, Debug, Clone)]
// clap cannot require a global flag (`migrate` may go without it): the
// usage line says it.
#[command(
    name = "token-server",
    version,
    override_usage = "token-server --config <PATH>... [OPTIONS]\n       token-server migrate [--database-url <URL> | --config <PATH>]\n       token-server hash-password < password.txt"
)]
pub struct Args {
    /// Required: a YAML file or a folder of YAML files (*.yaml, *.yml)
    /// holding resources; repeat for several. Multi-document files are read
    /// whole.
    #[arg(
        long = "config",
        env = "TOKENMESH_CONFIG",
        value_name = "PATH",
        value_delimiter = ',',
        global = true
    )]
    pub config: Vec<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// PostgreSQL URL (`postgres://user:pass@host/db?sslmode=verify-full`):
    /// use PostgreSQL instead of the embedded store, for several replicas.
    /// TLS to the database follows `sslmode` (rustls); without it TLS is
    /// tried but plaintext accepted, so across a network give
    /// `sslmode=verify-full&sslrootcert=<CA file>`. Overrides
    /// TokenServer.spec.storage.
    #[arg(
        long,
        env = "TOKENMESH_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Most connections to PostgreSQL this replica opens. A request waits at
    /// most 3 s for one, a statement runs at most 5 s, a lock wait 2 s.
    #[arg(
        long,
        env = "TOKENMESH_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub database_max_connections: u32,

    /// Address of the OAuth HTTP endpoints. Plain HTTP is only allowed on a
    /// loopback address unless --tls-cert/--tls-key or --insecure-http.
    #[arg(long, env = "TOKENMESH_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address of the gRPC API for sidecars and the operator.
    #[arg(long, env = "TOKENMESH_GRPC_ADDR", default_value = "127.0.0.1:8081")]
    pub grpc_addr: SocketAddr,

    /// How many opaque-token records introspection keeps in memory (a few
    /// hundred bytes each, until the token expires), so a token introspected
    /// again costs no store round trip; revocation is still checked on every
    /// call. 0 turns the cache off.
    #[arg(long, env = "TOKENMESH_OPAQUE_TOKEN_CACHE", default_value_t = 20_000)]
    pub opaque_token_cache: usize,

    /// Revocations each client may make per second at /oauth2/revoke, on
    /// average (a token bucket per client and replica); past it the answer
    /// is 429 with `Retry-After`. Every revocation reaches every sidecar and
    /// stays in its memory until the token would have expired. 0: no limit.
    #[arg(long, env = "TOKENMESH_REVOKE_RATE", default_value_t = 10.0, value_parser = revoke_rate)]
    pub revoke_rate: f64,

    /// Revocations a client may make at once before --revoke-rate applies.
    #[arg(long, env = "TOKENMESH_REVOKE_BURST", default_value_t = 100)]
    pub revoke_burst: u32,

    /// Revoked ids this replica keeps in memory (about 150 bytes each, until
    /// the token would have expired). Past it the ids that expire soonest
    /// are dropped from memory, and a token that may be one of them is
    /// checked in the store: never accepted on memory's word.
    #[arg(long, env = "TOKENMESH_MAX_REVOCATIONS", default_value_t = 1_000_000)]
    pub max_revocations: usize,

    /// Where the embedded store keeps keys, opaque tokens and revocations
    /// (unused with PostgreSQL).
    #[arg(long, env = "TOKENMESH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where `secretRef: {name, key}` resolves, as the file <dir>/<name>/<key>
    /// (the layout of a mounted Kubernetes Secret). Default: `secrets/`
    /// beside the first --config.
    #[arg(long, env = "TOKENMESH_SECRETS_DIR", global = true)]
    pub secrets_dir: Option<PathBuf>,

    /// The issuer URL (`iss`); overrides TokenServer.spec.issuer. Default:
    /// http(s)://<http-addr>.
    #[arg(long, env = "TOKENMESH_ISSUER")]
    pub issuer: Option<String>,

    /// PEM certificate chain: serve HTTPS (and gRPC over TLS) with rustls.
    /// Both files are read again every 5 s: a renewed certificate (a
    /// Secret's files swapped by the kubelet, cert-manager, the operator) is
    /// served from the next connection on, without a restart.
    #[arg(long, env = "TOKENMESH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TOKENMESH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle of client certificates (RFC 8705): the HTTPS and gRPC
    /// listeners ask for a client certificate (optional: bearer clients
    /// connect as before). `tls_client_auth` clients need one that chains
    /// to this bundle; `self_signed_tls_client_auth` clients are matched by
    /// key, whoever issued it. Read again every 5 s: a changed bundle is
    /// trusted from the next connection on (an invalid one is logged and
    /// the previous one kept).
    #[arg(long, env = "TOKENMESH_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    #[command(flatten)]
    pub limits: ClientLimits,

    /// Allow plain HTTP on a non-loopback address (development only: tokens
    /// and secrets then cross the network in clear).
    #[arg(long, env = "TOKENMESH_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// File holding the admin credential of the gRPC ControlService (at least
    /// 32 characters; callers send `authorization: Bearer <it>`). Without it
    /// ControlService refuses every call.
    #[arg(long, env = "TOKENMESH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "TOKENMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax, for example `info` or
    /// `token_server=debug,tokenmesh_core=debug`: the OAuth decisions log
    /// under the core crate's target).
    #[arg(long, env = "TOKENMESH_LOG", default_value = "info")]
    pub log: String,

    /// Export trace spans over OTLP/gRPC to this collector
    /// (`http://collector:4317`). Off by default; the standard `OTEL_*`
    /// variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
    /// `OTEL_TRACES_SAMPLER`, ...) are honoured too.
    #[arg(long, env = "TOKENMESH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Check the configuration, print what it holds, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Bounds on the clients of the HTTP and the gRPC listener (each).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientLimits {
    /// How long a new connection has to finish its TLS handshake and send
    /// its first request's headers; a client that stops reading an answer
    /// this long is dropped too.
    #[arg(long, env = "TOKENMESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_flag)]
    pub header_read_timeout: Duration,

    /// How long a request's body may take to arrive, all of it, once its
    /// headers came (gRPC requests included: each is one message).
    #[arg(long, env = "TOKENMESH_REQUEST_BODY_TIMEOUT", default_value = "10s", value_parser = parse_positive_flag)]
    pub request_body_timeout: Duration,

    /// How long a connection may stay open with no request in progress
    /// (the next request's headers must come within it): then it is closed,
    /// HTTP/2 with a GOAWAY. Open gRPC watch streams are requests in
    /// progress.
    #[arg(long, env = "TOKENMESH_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_flag)]
    pub idle_timeout: Duration,

    /// Most connections each listener holds at once; a connection beyond
    /// that is closed as soon as it is accepted. Sidecars hold one gRPC
    /// connection each.
    #[arg(long, env = "TOKENMESH_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// HTTP/2 ping interval, and how long a ping may go unanswered before
    /// the connection is dropped (a vanished sidecar's watch streams end).
    #[arg(long, env = "TOKENMESH_HTTP2_KEEPALIVE", default_value = "30s", value_parser = parse_positive_flag)]
    pub http2_keepalive: Duration,
}

impl ClientLimits {
    /// The listener bounds (`vectored_writes: false` for gRPC: see
    /// `tokenmesh_proto::one_write`).
    pub fn listener(&self, vectored_writes: bool) -> tokenmesh_tokens::listen::Limits {
        tokenmesh_tokens::listen::Limits {
            first_request: self.header_read_timeout,
            idle: self.idle_timeout,
            keep_alive: self.http2_keepalive,
            max_connections: usize::try_from(self.max_connections).ok(),
            vectored_writes,
        }
    }
}

/// Revocations per second: a finite number, 0 or more (`nan` or `inf` would
/// turn the limit off without saying so).
fn revoke_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}`: give a number of revocations per second, 0 or more (0: no limit)"
        )),
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Apply the PostgreSQL schema migrations and exit (the server also
    /// applies them on start). The database is --database-url, else the
    /// --config's TokenServer spec.storage.
    Migrate,
    /// Read a password from standard input and print its argon2id hash
    /// (PHC string) for a `static` IdentityProvider's users:
    /// `printf %s "$PASSWORD" | token-server hash-password`.
    HashPassword,
}

pub use tokenmesh_tokens::runtime::LogFormat;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["token-server", "--config", "x.yaml"].iter().chain(extra))
    }

    #[test]
    fn listener_bounds_take_the_duration_form_of_every_tokenmesh_flag() {
        let args = parse(&["--idle-timeout", "2m", "--header-read-timeout", "15"]).unwrap();
        assert_eq!(args.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(args.limits.header_read_timeout, Duration::from_secs(15));
        assert!(
            parse(&["--request-body-timeout", "0s"]).is_err(),
            "a zero bound"
        );
    }

    #[test]
    fn a_revoke_rate_that_is_not_a_finite_number_is_refused() {
        for bad in ["nan", "inf", "-1", "ten"] {
            assert!(parse(&["--revoke-rate", bad]).is_err(), "{bad}");
        }
        assert_eq!(parse(&["--revoke-rate", "0"]).unwrap().revoke_rate, 0.0);
    }
}
