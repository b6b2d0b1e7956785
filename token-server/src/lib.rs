//! The tokenmesh token server: OAuth 2.0 endpoints over resources read from
//! YAML, with signing keys, opaque tokens and revocations in a store.

pub mod cli;
pub mod config;
pub mod exchange;
pub mod grpc;
pub mod http;
pub mod issue;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod registry;
pub mod state;
pub mod store;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokenmesh_tokens::secret::SecretHash;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{Args, LogFormat},
    keys::KeyRing,
    metrics::Metrics,
    registry::{FileSecrets, Registry},
    state::{AppState, Endpoints, system_now},
    store::{SqliteStore, Store},
};

/// Why the server did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Serve(#[from] http::ServeError),
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
}

pub fn run(args: Args) -> ExitCode {
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("token-server: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("token-server: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &Args) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn secrets_dir(args: &Args) -> PathBuf {
    args.secrets_dir.clone().unwrap_or_else(|| {
        let first = args.config.first().cloned().unwrap_or_default();
        let base = if first.is_dir() {
            first
        } else {
            first.parent().map(PathBuf::from).unwrap_or_default()
        };
        base.join("secrets")
    })
}

/// Loads the configuration into a registry; nothing starts if it fails.
pub fn load_registry(args: &Args) -> Result<Registry, StartError> {
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let default_issuer = format!("{scheme}://{}", args.http_addr);
    let docs = config::load_paths(&args.config)?;
    let secrets = FileSecrets {
        dir: secrets_dir(args),
    };
    Ok(Registry::new(default_issuer, args.issuer.clone()).from_documents(&docs, &secrets)?)
}

/// Reads the admin credential of ControlService (kept only as a digest).
fn admin_credential(args: &Args) -> Result<Option<SecretHash>, StartError> {
    let Some(path) = &args.admin_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Refused(format!("--admin-token-file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < registry::MIN_SECRET_LEN {
        return Err(StartError::Refused(format!(
            "--admin-token-file {}: the credential is shorter than {} characters",
            path.display(),
            registry::MIN_SECRET_LEN
        )));
    }
    Ok(Some(SecretHash::of(token.as_bytes())))
}

fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, StartError> {
    std::net::TcpListener::bind(addr)
        .map_err(|source| http::ServeError::Bind { addr, source }.into())
}

async fn start(args: Args) -> Result<(), StartError> {
    let registry = load_registry(&args)?;
    if args.check_config {
        println!("configuration is valid: {}", registry.summary());
        return Ok(());
    }
    let plain = args.tls_cert.is_none() && !args.insecure_http;
    for addr in [args.http_addr, args.grpc_addr] {
        if plain && !addr.ip().is_loopback() {
            return Err(StartError::Refused(format!(
                "refusing plain HTTP on {addr}: give --tls-cert and --tls-key, or --insecure-http for development"
            )));
        }
    }
    let admin = admin_credential(&args)?;
    let http_listener = bind(args.http_addr)?;
    let grpc_listener = bind(args.grpc_addr)?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&args.data_dir).await?);
    let now = system_now();
    let keys = KeyRing::start(
        store.as_ref(),
        &registry.server,
        &registry.algorithms_in_use(),
        now,
    )
    .await?;
    let endpoints = Endpoints::for_issuer(&registry.server.issuer);
    tracing::info!("{}", registry.summary());
    let state = Arc::new(AppState {
        registry: ArcSwap::from_pointee(registry),
        keys,
        store,
        metrics: Metrics::new(),
        endpoints,
        clock: system_now,
        secrets: Box::new(FileSecrets {
            dir: secrets_dir(&args),
        }),
        changes: tokio::sync::Mutex::new(()),
        version: tokio::sync::watch::Sender::new(1),
        revoked: tokio::sync::Notify::new(),
        admin,
    });
    spawn_maintenance(state.clone());
    let tls = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let http_addr = http_listener.local_addr().map_err(http::ServeError::Io)?;
    let grpc_addr = grpc_listener.local_addr().map_err(http::ServeError::Io)?;
    tracing::info!(http = %http_addr, grpc = %grpc_addr, tls = tls.is_some(), "listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http = http::serve(
        http::router(state.clone()),
        http_listener,
        tls,
        until_stopped(stopped.clone()),
    );
    let grpc = grpc::serve(state.clone(), grpc_listener, tls, until_stopped(stopped));
    let (http, grpc) = tokio::join!(http, grpc);
    http?;
    grpc?;
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Key rotation every 30 s, expired-row purge every 5 min.
fn spawn_maintenance(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        let mut round: u64 = 0;
        loop {
            tick.tick().await;
            round += 1;
            let registry = state.registry.load();
            let now = state.now();
            if let Err(err) = state
                .keys
                .refresh(
                    state.store.as_ref(),
                    &registry.server,
                    &registry.algorithms_in_use(),
                    now,
                )
                .await
            {
                tracing::error!(error = %err, "key rotation failed");
            }
            if round.is_multiple_of(10) {
                match state.store.purge_expired(now).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "purged expired records"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "purge failed"),
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
