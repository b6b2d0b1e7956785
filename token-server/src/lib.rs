//! The tokenmesh token server: OAuth 2.0 endpoints over resources read from
//! YAML, with signing keys, opaque tokens and revocations in a store.

mod bounded_body;
pub mod change;
pub mod cli;
pub mod config;
pub mod grpc;
mod hash_password;
pub mod http;
pub mod keys;
pub mod kubernetes_issuer;
pub mod metrics;
pub mod oauth;
pub mod ports;
pub mod rate_limit;
pub mod revocations;
pub mod state;
pub mod store;
pub mod traced;
pub mod upstream;

// The domain, from the protocol-free core.
pub use tokenmesh_core::{key_wrap, policy, registry};

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use tokenmesh_tokens::listen::tls::{self, ReloadingCertificate};
use tokenmesh_tokens::runtime::{self, Drain};
use tokenmesh_tokens::{clock::SystemClock, secret::SecretHash};

use crate::{
    cli::Args,
    config::Document,
    registry::{FileSecrets, Registry},
    state::AppState,
    store::{DataDirLock, PgStore, SqliteStore, Store},
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
    if args.command == Some(cli::Command::HashPassword) {
        return hash_password::run();
    }
    let telemetry = runtime::Telemetry {
        format: args.log_format,
        filter: args.log.clone(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        service_name: "token-server".into(),
    };
    runtime::run("token-server", &telemetry, async {
        match args.command {
            Some(cli::Command::Migrate) => migrate(&args).await,
            // Answered above, without a runtime or logs.
            Some(cli::Command::HashPassword) => Ok(()),
            None => start(args).await,
        }
    })
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

/// What the registry is built from: the files, and the command line.
pub struct RegistrySource {
    pub documents: Vec<Document>,
    pub default_issuer: String,
    pub issuer_override: Option<String>,
}

impl RegistrySource {
    /// The files' resources, then the stored ones (ControlService) on top:
    /// one code path. A stored resource that no longer fits is skipped, loudly.
    pub fn build(
        &self,
        secrets: &dyn registry::SecretSource,
        stored: &[(String, String)],
    ) -> Result<Registry, config::ConfigError> {
        let mut registry = Registry::new(self.default_issuer.clone(), self.issuer_override.clone())
            .from_documents(&self.documents, secrets)?;
        for (key, document) in stored {
            let mut next = registry.clone();
            let applied = if document.is_empty() {
                let (kind, name) = key.split_once('/').unwrap_or((key, ""));
                next.delete(kind, name);
                next.validate()
            } else {
                config::parse_documents(None, document).and_then(|docs| {
                    for doc in &docs {
                        next.apply(doc, secrets)?;
                    }
                    next.validate()
                })
            };
            match applied {
                Ok(()) => registry = next,
                Err(err) => {
                    tracing::error!(resource = %key, error = %err, "stored resource skipped")
                }
            }
        }
        Ok(registry)
    }
}

/// Reads the configuration files; nothing starts if they are wrong.
pub fn load_source(args: &Args) -> Result<RegistrySource, StartError> {
    if args.config.is_empty() {
        return Err(StartError::Refused(
            "--config is required (a file or folder of resources)".into(),
        ));
    }
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(RegistrySource {
        documents: config::load_paths(&args.config)?,
        default_issuer: format!("{scheme}://{}", args.http_addr),
        issuer_override: args.issuer.clone(),
    })
}

/// The store: PostgreSQL when a database URL is given (flag, or the
/// TokenServer's storage Secret), else SQLite in the data directory.
/// The PostgreSQL URL: `--database-url`, else the TokenServer's
/// `spec.storage` secret; none means the embedded store.
fn database_url(
    args: &Args,
    registry: &Registry,
    secrets: &dyn registry::SecretSource,
) -> Result<Option<String>, StartError> {
    match (&args.database_url, &registry.server.database) {
        (Some(url), _) => Ok(Some(url.clone())),
        (None, Some(secret)) => {
            let bytes = secrets
                .read(secret)
                .map_err(|e| StartError::Refused(format!("the database URL secret: {e}")))?;
            let url = String::from_utf8(bytes)
                .map_err(|_| StartError::Refused("the database URL is not UTF-8".into()))?;
            Ok(Some(url.trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// With the embedded store, the lock that keeps other servers off the data
/// directory comes with it; hold it until the end.
async fn open_store(
    args: &Args,
    registry: &Registry,
    secrets: &dyn registry::SecretSource,
) -> Result<(Arc<dyn Store>, Option<DataDirLock>), StartError> {
    Ok(match database_url(args, registry, secrets)? {
        Some(url) => (
            Arc::new(PgStore::connect(&url, args.database_max_connections).await?),
            None,
        ),
        None => {
            let lock = DataDirLock::acquire(&args.data_dir)?;
            (
                Arc::new(SqliteStore::open(&args.data_dir).await?),
                Some(lock),
            )
        }
    })
}

/// `token-server migrate`: the PostgreSQL schema, from `--database-url` or
/// the configuration's `spec.storage`.
async fn migrate(args: &Args) -> Result<(), StartError> {
    let url = if args.config.is_empty() {
        args.database_url.clone()
    } else {
        let secrets = FileSecrets {
            dir: secrets_dir(args),
        };
        let registry = load_source(args)?.build(&secrets, &[])?;
        database_url(args, &registry, &secrets)?
    };
    let url = url.ok_or_else(|| {
        StartError::Refused(
            "migrate needs --database-url (or TOKENMESH_DATABASE_URL), or a --config whose TokenServer has spec.storage of type postgres".into(),
        )
    })?;
    let store = PgStore::open(&url, 1).await?;
    let applied = store.migrate().await?;
    let version = PgStore::SCHEMA_VERSION;
    if applied == 0 {
        println!("database schema is up to date (version {version})");
    } else {
        println!("applied {applied} migration(s); database schema is at version {version}");
    }
    store.close().await;
    Ok(())
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
    let source = load_source(&args)?;
    let secrets = FileSecrets {
        dir: secrets_dir(&args),
    };
    let registry = source.build(&secrets, &[])?;
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
    let tls = match args.tls_cert.as_deref().zip(args.tls_key.as_deref()) {
        None => None,
        Some((cert, key)) => {
            let certificate =
                ReloadingCertificate::load(cert, key).map_err(http::ServeError::Tls)?;
            certificate.watch(TLS_RELOAD_EVERY);
            Some(certificate)
        }
    };
    let http_listener = bind(args.http_addr)?;
    let grpc_listener = bind(args.grpc_addr)?;
    let (store, _data_dir_lock) = open_store(&args, &registry, &secrets).await?;
    // Before reading anything: a change from here on is seen by the sync.
    let marks = store.change_marks().await?;
    let stored = store.resources().await?;
    let registry = if stored.is_empty() {
        registry
    } else {
        source.build(&secrets, &stored)?
    };
    tracing::info!("{}", registry.summary());
    let clock = SystemClock::shared();
    let client_ca = args
        .client_ca
        .as_deref()
        .map(|path| tls::ClientCa::load(path, clock.clone()))
        .transpose()
        .map_err(http::ServeError::Tls)?;
    if let Some(client_ca) = &client_ca {
        client_ca.watch(TLS_RELOAD_EVERY);
    }
    let parts = state::Parts {
        source,
        secrets: Box::new(secrets),
        stored,
        clock,
        admin,
        max_revocations: args.max_revocations,
        revoke_rate: args.revoke_rate,
        revoke_burst: args.revoke_burst,
        opaque_token_cache: args.opaque_token_cache,
        client_certificates: client_ca.is_some(),
    };
    let state = AppState::start(registry, store, parts).await?;
    warm_up_service_account_keys(&state)?;
    state
        .revocations
        .sync(state.store.as_ref(), state.now())
        .await?;
    spawn_maintenance(state.clone(), marks);
    let acceptor = |alpn: &[&[u8]]| {
        tls.as_ref()
            .map(|certificate| certificate.acceptor(alpn, client_ca.as_ref()))
            .transpose()
            .map_err(http::ServeError::Tls)
    };
    let (http_tls, grpc_tls) = (acceptor(tls::ALPN_HTTP)?, acceptor(tls::ALPN_H2)?);
    let http_addr = http_listener.local_addr().map_err(http::ServeError::Io)?;
    let grpc_addr = grpc_listener.local_addr().map_err(http::ServeError::Io)?;
    tracing::info!(http = %http_addr, grpc = %grpc_addr, tls = tls.is_some(), "listening");
    let drain = Drain::on_signal();
    let body_timeout = args.limits.request_body_timeout;
    let http = http::serve(
        http::bounded(
            http::router(state.clone()),
            body_timeout,
            Some(state.clone()),
        ),
        http_listener,
        http_tls,
        args.limits.listener(true),
        drain.signaled(),
    );
    let grpc = http::serve(
        http::bounded(grpc::router(state.clone()).await?, body_timeout, None),
        grpc_listener,
        grpc_tls,
        args.limits.listener(false),
        drain.signaled(),
    );
    // Watch streams never end by themselves: after the signal, requests in
    // flight get a grace period, then the server exits anyway.
    let grace = drain.grace_over(SHUTDOWN_GRACE);
    tokio::select! {
        (http, grpc) = async { tokio::join!(http, grpc) } => {
            http?;
            grpc?;
        }
        () = grace => tracing::warn!("streams still open after the grace period; stopping anyway"),
    }
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Builds the service-account verifier (a bad `caFile` stops the start),
/// which fetches discovery and the keys in the background: an API server
/// that is down only delays `kubernetes_service_account` clients, and says
/// so in the log; one that names another issuer keeps the server unready.
fn warm_up_service_account_keys(state: &Arc<AppState>) -> Result<(), StartError> {
    let registry = state.registry.load();
    let Some(settings) = &registry.server.kubernetes else {
        return Ok(());
    };
    state
        .service_accounts
        .verifier(settings)
        .map_err(|e| StartError::Refused(format!("TokenServer spec.kubernetes: {e}")))?;
    Ok(())
}

/// How often the TLS certificate files are read again.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(5);

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a replica looks for other replicas' revocations and resource changes.
const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Key rotation every 30 s (every second until a signing key exists),
/// expired-row purge every 5 min, and the sync with other replicas.
fn spawn_maintenance(state: Arc<AppState>, marks: store::ChangeMarks) {
    let keys = state.clone();
    runtime::spawn(tracing::info_span!("key rotation and purge"), async move {
        let mut last_purge = keys.clock.instant();
        loop {
            let registry = keys.registry.load();
            let now = keys.now();
            if let Err(err) = keys
                .keys
                .refresh(
                    keys.store.as_ref(),
                    &registry.server,
                    &registry.algorithms_in_use(),
                    now,
                )
                .await
            {
                tracing::error!(error = %err, "key rotation failed");
            }
            if keys.clock.instant().saturating_duration_since(last_purge)
                >= Duration::from_secs(300)
            {
                last_purge = keys.clock.instant();
                keys.revocations.purge(now);
                match keys.store.purge_expired(now).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "purged expired records"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "purge failed"),
                }
            }
            let signing = keys
                .keys
                .snapshot()
                .signer(keys::jose_algorithm(registry.server.algorithm))
                .is_some();
            tokio::time::sleep(if signing {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(1)
            })
            .await;
        }
    });
    runtime::spawn(tracing::info_span!("replica sync"), async move {
        let mut seen = marks;
        loop {
            tokio::time::sleep(SYNC_INTERVAL).await;
            let marks = match state.store.change_marks().await {
                Ok(marks) => marks,
                Err(err) => {
                    tracing::debug!(error = %err, "sync: store unavailable");
                    continue;
                }
            };
            // Memory first, so a stream reader woken next finds it consistent.
            if let Err(err) = state
                .revocations
                .sync(state.store.as_ref(), state.now())
                .await
            {
                tracing::debug!(error = %err, "sync: revocations unavailable");
            }
            if marks.revoked != seen.revoked {
                state.revoked.notify_waiters();
                seen.revoked = marks.revoked;
            }
            // A mark moves on only once its change is in force: a failure is
            // retried at the next turn.
            if marks.resources != seen.resources {
                match state.reload().await {
                    Ok(version) => {
                        if let Some(version) = version {
                            tracing::info!(version, "resources changed in the store; reloaded");
                        }
                        seen.resources = marks.resources;
                    }
                    Err(err) => tracing::error!(error = %err, "reload failed"),
                }
            }
            // Another replica rotated: publish what it published now, not at
            // this replica's next rotation check.
            if marks.keys != seen.keys {
                let registry = state.registry.load();
                match state
                    .keys
                    .load(state.store.as_ref(), &registry.server, state.now())
                    .await
                {
                    Ok(()) => seen.keys = marks.keys,
                    Err(err) => tracing::warn!(error = %err, "sync: signing keys unavailable"),
                }
            }
        }
    });
}
