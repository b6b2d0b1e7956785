//! Flags; each is also a `TOKENMESH_OPERATOR_*` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use tokenmesh_tokens::duration::{parse_flag, parse_positive_flag};

/// The tokenmesh operator.
///
/// Watches OAuthClient, Scope, ExchangePolicy and IdentityProvider
/// resources and applies them to the token server through its gRPC
/// ControlService; reports Ready in
/// their status; generates client secrets into Secrets it owns; serves the
/// sidecar-injection webhook.
#[derive(Parser, Debug, Clone)]
#[command(name = "tokenmesh-operator", version)]
pub struct Args {
    /// The token server's gRPC URL (ControlService).
    #[arg(long, env = "TOKENMESH_OPERATOR_TOKEN_SERVER")]
    pub token_server: String,

    /// PEM CA certificate(s) an https:// token server's certificate is
    /// verified against (besides the system roots), and that injected
    /// sidecars are given to trust (mounted as a file from a pod
    /// annotation). Not needed with --token-server-service: the operator's
    /// own CA is trusted then.
    #[arg(long, env = "TOKENMESH_OPERATOR_TOKEN_SERVER_CA")]
    pub token_server_ca: Option<PathBuf>,

    /// The token server's Service (in the operator's namespace): the
    /// operator issues its serving certificate (the Service's names, 90
    /// days, renewed 30 days before the end) into --token-server-tls-secret,
    /// from a CA of its own kept in --token-server-ca-secret.
    #[arg(long, env = "TOKENMESH_OPERATOR_TOKEN_SERVER_SERVICE")]
    pub token_server_service: Option<String>,

    /// Secret (kubernetes.io/tls: tls.crt, tls.key, ca.crt) the token
    /// server's certificate is written to; the token server mounts it.
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_TOKEN_SERVER_TLS_SECRET",
        default_value = "tokenmesh-token-server-tls"
    )]
    pub token_server_tls_secret: String,

    /// Secret holding the CA (ca.crt, ca.key) that issues the token
    /// server's certificate; only the operator reads it.
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_TOKEN_SERVER_CA_SECRET",
        default_value = "tokenmesh-token-server-ca"
    )]
    pub token_server_ca_secret: String,

    /// File holding the token server's admin credential.
    #[arg(long, env = "TOKENMESH_OPERATOR_ADMIN_TOKEN_FILE")]
    pub admin_token_file: PathBuf,

    /// Namespaces to watch (comma-separated); empty means cluster-wide.
    #[arg(long, env = "TOKENMESH_OPERATOR_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// /healthz, /readyz and /metrics. Not 8080 or 8081: the token
    /// server's HTTP and gRPC ports, when both run on one machine.
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_HEALTH_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub health_addr: SocketAddr,

    /// How often every resource is applied again, so a token server that
    /// restarted empty converges (a duration: 30s, 5m, 1h; bare seconds too).
    #[arg(long, env = "TOKENMESH_OPERATOR_RESYNC", default_value = "5m", value_parser = parse_positive_flag)]
    pub resync: Duration,

    /// How long a rotated client secret keeps working (a duration: 30s, 5m,
    /// 1h; bare seconds too).
    #[arg(long, env = "TOKENMESH_OPERATOR_SECRET_GRACE", default_value = "1h", value_parser = parse_flag)]
    pub secret_grace: Duration,

    /// Serve the sidecar-injection webhook here (HTTPS).
    #[arg(long, env = "TOKENMESH_OPERATOR_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,

    /// The webhook's Service name: the operator generates its certificate
    /// (kept in --webhook-secret) and publishes the CA in
    /// --webhook-configuration. Not needed with --webhook-cert/--webhook-key.
    #[arg(long, env = "TOKENMESH_OPERATOR_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,

    /// Secret (in the operator's namespace) holding the generated webhook certificate.
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_WEBHOOK_SECRET",
        default_value = "tokenmesh-webhook-tls"
    )]
    pub webhook_secret: String,

    /// The MutatingWebhookConfiguration whose caBundle the operator sets
    /// (the chart names it `<fullname>-webhook`: this default for release
    /// "tokenmesh").
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "tokenmesh-webhook"
    )]
    pub webhook_configuration: String,

    /// PEM certificate of the webhook (from cert-manager or a mounted Secret).
    #[arg(long, env = "TOKENMESH_OPERATOR_WEBHOOK_CERT")]
    pub webhook_cert: Option<PathBuf>,

    /// PEM private key of the webhook certificate.
    #[arg(long, env = "TOKENMESH_OPERATOR_WEBHOOK_KEY")]
    pub webhook_key: Option<PathBuf>,

    /// Image of the injected sidecar.
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_SIDECAR_IMAGE",
        default_value = "ghcr.io/tokenmesh/sidecar:0.1.0"
    )]
    pub sidecar_image: String,

    /// The token server's gRPC URL as injected sidecars reach it (default: --token-server).
    #[arg(long, env = "TOKENMESH_OPERATOR_SIDECAR_TOKEN_SERVER")]
    pub sidecar_token_server: Option<String>,

    /// Audience of the projected service-account token the sidecars present.
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_TOKEN_AUDIENCE",
        default_value = "tokenmesh"
    )]
    pub token_audience: String,

    /// Run only while holding the `tokenmesh-operator` Lease, so several
    /// replicas can run (identity: the POD_NAME environment variable).
    #[arg(long, env = "TOKENMESH_OPERATOR_LEADER_ELECTION")]
    pub leader_election: bool,

    /// The operator's own namespace: where its leader-election Lease and
    /// the generated webhook certificate (--webhook-secret) live. Default:
    /// "default". The chart sets it from the pod's namespace.
    #[arg(long, env = "TOKENMESH_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Inject the capture init container (iptables redirection through the sidecar).
    #[arg(long, env = "TOKENMESH_OPERATOR_CAPTURE")]
    pub capture: bool,

    /// Capture outbound traffic too, unless a pod's annotation says otherwise.
    #[arg(long, env = "TOKENMESH_OPERATOR_CAPTURE_OUTBOUND")]
    pub capture_outbound: bool,

    /// CIDRs never captured outbound (the token server's Service, at least).
    #[arg(
        long,
        env = "TOKENMESH_OPERATOR_EXCLUDE_OUTBOUND_CIDRS",
        value_delimiter = ','
    )]
    pub exclude_outbound_cidrs: Vec<String>,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "TOKENMESH_OPERATOR_LOG", default_value = "info")]
    pub log: String,

    /// Export the operator's trace spans over OTLP/gRPC to this collector
    /// (`http://collector:4317`). Off by default; the standard `OTEL_*`
    /// variables are honoured too.
    #[arg(long, env = "TOKENMESH_OPERATOR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Injected sidecars require a nonce of theirs in inbound DPoP proofs
    /// (their --dpop-require-nonce, RFC 9449 §9), unless a pod's annotation
    /// tokenmesh.dev/dpop-require-nonce says "false"; without this flag only
    /// pods annotated "true" do.
    #[arg(long, env = "TOKENMESH_OPERATOR_SIDECAR_DPOP_REQUIRE_NONCE")]
    pub sidecar_dpop_require_nonce: bool,

    /// The OTLP/gRPC collector injected sidecars export their spans to
    /// (their TOKENMESH_SIDECAR_OTLP_ENDPOINT). Default: none, no export.
    #[arg(long, env = "TOKENMESH_OPERATOR_SIDECAR_OTLP_ENDPOINT")]
    pub sidecar_otlp_endpoint: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let required = [
            "tokenmesh-operator",
            "--token-server",
            "http://127.0.0.1:8081",
        ];
        let file = ["--admin-token-file", "/dev/null"];
        Args::try_parse_from(required.iter().chain(&file).chain(extra)).unwrap()
    }

    #[test]
    fn every_flag_is_a_tokenmesh_operator_variable() {
        let command = Args::command();
        let mut missing = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or("");
            if !env.starts_with("TOKENMESH_OPERATOR_") {
                missing.push(format!("--{id}: {env:?}"));
            }
        }
        assert!(missing.is_empty(), "{missing:?}");
        let lease = command
            .get_arguments()
            .find(|a| a.get_id() == "lease_namespace")
            .unwrap();
        assert_eq!(
            lease.get_env().unwrap(),
            "TOKENMESH_OPERATOR_LEASE_NAMESPACE"
        );
    }

    #[test]
    fn defaults_match_the_chart_and_leave_the_token_server_ports_alone() {
        let args = parse(&[]);
        // The chart's MutatingWebhookConfiguration for release "tokenmesh".
        assert_eq!(args.webhook_configuration, "tokenmesh-webhook");
        assert_eq!(args.webhook_secret, "tokenmesh-webhook-tls");
        // The token server listens on 8080 (HTTP) and 8081 (gRPC) by default.
        assert!(![8080, 8081].contains(&args.health_addr.port()));
        assert_eq!(args.resync, Duration::from_secs(300));
        assert_eq!(args.secret_grace, Duration::from_secs(3600));
    }

    #[test]
    fn durations_take_units_like_the_sidecars_and_bare_seconds() {
        let args = parse(&["--resync", "90s", "--secret-grace", "2h"]);
        assert_eq!(args.resync, Duration::from_secs(90));
        assert_eq!(args.secret_grace, Duration::from_secs(7200));
        let args = parse(&["--resync", "300", "--secret-grace", "1m30s"]);
        assert_eq!(args.resync, Duration::from_secs(300));
        assert_eq!(args.secret_grace, Duration::from_secs(90));
        let required = [
            "tokenmesh-operator",
            "--token-server",
            "x",
            "--admin-token-file",
            "f",
        ];
        for bad in [["--resync", "0s"], ["--resync", "5 minutes"]] {
            let argv = required.iter().chain(&bad);
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
