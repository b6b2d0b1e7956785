//! The tokenmesh operator: reconciles OAuthClient, Scope, ExchangePolicy
//! and IdentityProvider resources into the token server, manages client secrets, and serves the
//! sidecar-injection webhook.

pub mod certs;
pub mod cli;
pub mod control;
pub mod desired;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod references;
pub mod secrets;
pub mod signing;
pub mod webhook;

use std::{process::ExitCode, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        watcher,
    },
};
use tokenmesh_crds::{ExchangePolicy, IdentityProvider, OAuthClient, Scope, TokenServer};
use tokenmesh_tokens::clock::SystemClock;
use tokenmesh_tokens::runtime::{self, Drain, LogFormat, Telemetry};
use tracing::{Instrument, info_span};

use crate::{
    cli::Args,
    control::Control,
    reconcile::{Context, Managed, error_policy, reconcile},
    webhook::InjectConfig,
};

pub fn run(args: Args) -> ExitCode {
    let telemetry = Telemetry {
        format: LogFormat::Json,
        filter: args.log.clone(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        service_name: "tokenmesh-operator".into(),
    };
    runtime::run("tokenmesh-operator", &telemetry, start(args))
}

/// Runs one controller per watched namespace (or one cluster-wide) for kind
/// `K`; Secrets are watched in the same scope, so a namespaced operator
/// needs no cluster-wide rights.
async fn controllers<K, R, F>(ctx: Arc<Context>, namespaces: &[String], drain: &Drain, reconcile: R)
where
    K: Managed,
    R: FnMut(Arc<K>, Arc<Context>) -> F + Clone,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action, reconcile::Error>>
        + Send
        + 'static,
{
    let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(Some).collect()
    };
    let runs = scopes.into_iter().map(|namespace| {
        let (api, secrets, named): (Api<K>, Api<Secret>, Api<PartialObjectMeta<Secret>>) =
            match namespace {
                None => (
                    Api::all(ctx.client.clone()),
                    Api::all(ctx.client.clone()),
                    Api::all(ctx.client.clone()),
                ),
                Some(ns) => (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                ),
            };
        let controller = Controller::new(api, watcher::Config::default());
        // A Secret it owns deleted or changed brings its resource back.
        let controller = if matches!(K::kind(&()).as_ref(), "OAuthClient" | "TokenServer") {
            controller.owns(
                secrets,
                watcher::Config::default()
                    .labels("app.kubernetes.io/managed-by=tokenmesh-operator"),
            )
        } else {
            controller
        };
        // So does a Secret it names in a secretRef (references.rs); only
        // metadata is watched, no Secret's value travels for it.
        let controller = if matches!(K::kind(&()).as_ref(), "OAuthClient" | "IdentityProvider") {
            let objects = controller.store();
            controller.watches(named, watcher::Config::default(), move |secret| {
                references::naming(
                    &objects.state(),
                    secret.namespace().as_deref(),
                    &secret.name_any(),
                )
            })
        } else {
            controller
        };
        // At the signal, reconciliations in progress finish first.
        controller
            .graceful_shutdown_on(drain.signaled())
            .run(reconcile.clone(), error_policy::<K>, ctx.clone())
            .for_each(|_| futures::future::ready(()))
    });
    futures::future::join_all(runs).await;
}

async fn start(args: Args) -> Result<(), StartError> {
    let admin = std::fs::read_to_string(&args.admin_token_file).map_err(|e| {
        format!(
            "--admin-token-file {}: {e}",
            args.admin_token_file.display()
        )
    })?;
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let token_server_ca = token_server_trust(&args, &client).await?;
    let control = Control::new(&args.token_server, &admin, token_server_ca.as_deref())?;
    let reporter = Reporter {
        controller: "tokenmesh-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client,
        control,
        recorder,
        args.resync,
        args.secret_grace,
        SystemClock::shared(),
    ));

    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(ctx): State<Arc<Context>>| async move { ctx.metrics.render() }),
        )
        .with_state(ctx.clone());
    let health_listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.health_addr))?;
    runtime::spawn(
        info_span!("health server", addr = %args.health_addr),
        async move {
            let _ = axum::serve(health_listener, health).await;
        },
    );

    if let Some(addr) = args.webhook_addr {
        let config = InjectConfig {
            image: args.sidecar_image.clone(),
            token_server: args
                .sidecar_token_server
                .clone()
                .unwrap_or_else(|| args.token_server.clone()),
            token_audience: args.token_audience.clone(),
            token_server_ca: token_server_ca.clone(),
            capture: args.capture,
            capture_outbound: args.capture_outbound,
            exclude_outbound_cidrs: args.exclude_outbound_cidrs.clone(),
            otlp_endpoint: args.sidecar_otlp_endpoint.clone(),
            dpop_require_nonce: args.sidecar_dpop_require_nonce,
        };
        let tls = match (&args.webhook_cert, &args.webhook_key, &args.webhook_service) {
            (Some(cert), Some(key), _) => axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await,
            (_, _, Some(service)) => {
                let namespace = args.lease_namespace.clone().unwrap_or_else(|| "default".into());
                let certs = certs::ensure(ctx.client.clone(), &namespace, &args.webhook_secret, service)
                    .await
                    .map_err(|e| e.to_string())?;
                match certs::publish_ca_bundle(ctx.client.clone(), &args.webhook_configuration, &certs.ca_pem).await {
                    Ok(true) => tracing::info!(configuration = %args.webhook_configuration, "CA bundle published"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(error = %err, "cannot publish the CA bundle"),
                }
                axum_server::tls_rustls::RustlsConfig::from_pem(certs.cert_pem.into_bytes(), certs.key_pem.into_bytes()).await
            }
            _ => return Err(StartError::Refused("--webhook-addr needs --webhook-cert and --webhook-key, or --webhook-service".into())),
        }
        .map_err(|e| format!("webhook certificate: {e}"))?;
        let app = Router::new().route(
            "/mutate",
            post(move |Json(body): Json<serde_json::Value>| {
                let config = config.clone();
                async move { Json(webhook::review(&body, &config)) }
            }),
        );
        runtime::spawn(info_span!("injection webhook", %addr), async move {
            if let Err(err) = axum_server::bind_rustls(addr, tls)
                .serve(app.into_make_service())
                .await
            {
                tracing::error!(error = %err, "webhook server failed");
            }
        });
        tracing::info!(%addr, "injection webhook listening");
    }

    let elector = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let me = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("operator-{}", std::process::id()));
        let elector = leader::Elector::new(
            ctx.client.clone(),
            &namespace,
            "tokenmesh-operator",
            &me,
            ctx.clock.clone(),
        );
        loop {
            match elector.try_lead().await {
                Ok(true) => break,
                Ok(false) => tracing::info!("another replica leads; waiting"),
                Err(err) => tracing::warn!(error = %err, "leader election failed"),
            }
            tokio::time::sleep(leader::RENEW_EVERY).await;
        }
        tracing::info!(%me, "leading");
        Some(elector)
    } else {
        None
    };
    // Unable to renew for a lease's length, or the lease taken: another
    // replica may lead now, so this one stops at once with the reason.
    let leadership = async {
        match &elector {
            Some(elector) => {
                let lease =
                    std::time::Duration::from_secs(leader::LEASE_SECONDS.unsigned_abs().into());
                leader::keep_leading(|| elector.try_lead(), leader::RENEW_EVERY, lease)
                    .instrument(info_span!("leader lease"))
                    .await
            }
            None => std::future::pending().await,
        }
    };
    tracing::info!(namespaces = ?args.namespaces, "controllers starting");
    let drain = Drain::on_signal();
    let (namespaces, drain) = (&args.namespaces, &drain);
    let work = async {
        tokio::join!(
            controllers::<TokenServer, _, _>(
                ctx.clone(),
                namespaces,
                drain,
                reconcile::reconcile_keys
            ),
            controllers::<OAuthClient, _, _>(
                ctx.clone(),
                namespaces,
                drain,
                reconcile::<OAuthClient>
            ),
            controllers::<Scope, _, _>(ctx.clone(), namespaces, drain, reconcile::<Scope>),
            controllers::<ExchangePolicy, _, _>(
                ctx.clone(),
                namespaces,
                drain,
                reconcile::<ExchangePolicy>
            ),
            controllers::<IdentityProvider, _, _>(
                ctx.clone(),
                namespaces,
                drain,
                reconcile::<IdentityProvider>
            ),
        );
    };
    while_leading(work, leadership).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    LeaseLost(#[from] leader::LeaseLost),
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        Self::Refused(message)
    }
}

/// Runs `work` while `leadership` lasts: the lease lost ends it with the
/// reason, which `main` reports once before exiting non-zero.
async fn while_leading(
    work: impl Future<Output = ()>,
    leadership: impl Future<Output = leader::LeaseLost>,
) -> Result<(), leader::LeaseLost> {
    tokio::select! {
        () = work => Ok(()),
        lost = leadership => Err(lost),
    }
}

/// How often the token server's certificate is checked for renewal.
const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// The CA (PEM) the token server's certificate chains to: with
/// --token-server-service the operator's own, after issuing the
/// certificate (and renewing it from then on); else --token-server-ca.
async fn token_server_trust(args: &Args, client: &Client) -> Result<Option<String>, String> {
    let Some(service) = args.token_server_service.clone() else {
        return match &args.token_server_ca {
            Some(path) => std::fs::read_to_string(path)
                .map(Some)
                .map_err(|e| format!("--token-server-ca {}: {e}", path.display())),
            None => Ok(None),
        };
    };
    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let authority = certs::ensure_authority(
        client.clone(),
        &namespace,
        &args.token_server_ca_secret,
        &SystemClock,
    )
    .await
    .map_err(|e| format!("the token server's CA: {e}"))?;
    let ca_pem = authority.cert_pem.clone();
    let (client, secret) = (client.clone(), args.token_server_tls_secret.clone());
    // Issued before anything calls the token server, which waits for the
    // Secret to start; renewed in the background (the token server reloads it).
    renew_certificate(&client, &namespace, &secret, &service, &authority).await;
    runtime::spawn(info_span!("certificate renewal", %secret), async move {
        loop {
            tokio::time::sleep(RENEWAL_CHECK).await;
            renew_certificate(&client, &namespace, &secret, &service, &authority).await;
        }
    });
    Ok(Some(ca_pem))
}

async fn renew_certificate(
    client: &Client,
    namespace: &str,
    secret: &str,
    service: &str,
    authority: &certs::Authority,
) {
    match certs::ensure_serving(
        client.clone(),
        namespace,
        secret,
        service,
        authority,
        &SystemClock,
    )
    .await
    {
        Ok(true) => tracing::info!(%secret, %service, "token server certificate issued"),
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(%secret, error = %err, "cannot issue the token server certificate")
        }
    }
}

/// Ready when the token server answers.
async fn readyz(State(ctx): State<Arc<Context>>) -> (StatusCode, &'static str) {
    if ctx.control.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "token server unavailable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lost_lease_stops_the_work_with_its_reason() {
        let stopped =
            while_leading(std::future::pending(), async { leader::LeaseLost::Taken }).await;
        assert_eq!(stopped, Err(leader::LeaseLost::Taken));
    }
}
