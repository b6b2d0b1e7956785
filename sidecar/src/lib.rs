//! The tokenmesh sidecar: inbound token validation, outbound embed /
//! exchange / share, caching, and Envoy's ext_authz API.

pub mod binding;
pub mod cli;
pub mod deadlines;
pub mod ext_authz;
pub mod hop;
pub mod mesh;
pub mod metrics;
pub mod proxy;
pub mod redirect;
pub mod resource;
pub mod token_server;

use std::{collections::HashMap, process::ExitCode, sync::Arc};

use tokenmesh_tokens::runtime::{self, Drain, Telemetry};
use tracing::info_span;

use crate::{
    cli::Args,
    mesh::Mesh,
    proxy::{Probe, Proxy},
    token_server::TokenServer,
};

pub fn run(args: Args) -> ExitCode {
    let telemetry = Telemetry {
        format: args.log_format,
        filter: args.log.clone(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        // In a trace, each hop shows whose sidecar it is.
        service_name: args.client_id.clone(),
    };
    runtime::run("tokenmesh-sidecar", &telemetry, start(args))
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// The inbound listener's TLS (`--inbound-tls-cert`), asking for client
/// certificates with `--inbound-client-ca` (RFC 8705 bound tokens).
fn inbound_tls(
    args: &Args,
    clock: &tokenmesh_tokens::clock::SharedClock,
) -> Result<Option<tokenmesh_tokens::listen::tls::Acceptor>, String> {
    use tokenmesh_tokens::listen::tls::{ALPN_HTTP, ClientCa, ReloadingCertificate};
    let Some((cert, key)) = args
        .inbound_tls_cert
        .as_deref()
        .zip(args.inbound_tls_key.as_deref())
    else {
        return Ok(None);
    };
    let certificate = ReloadingCertificate::load(cert, key).map_err(|e| e.to_string())?;
    let every = std::time::Duration::from_secs(5);
    certificate.watch(every);
    let client_ca = args
        .inbound_client_ca
        .as_deref()
        .map(|path| ClientCa::load(path, clock.clone()))
        .transpose()
        .map_err(|e| e.to_string())?;
    if let Some(client_ca) = &client_ca {
        client_ca.watch(every);
    }
    certificate
        .acceptor(ALPN_HTTP, client_ca.as_ref())
        .map(Some)
        .map_err(|e| e.to_string())
}

async fn start(args: Args) -> Result<(), String> {
    let clock = tokenmesh_tokens::clock::SystemClock::shared();
    let token_server = TokenServer::new(&args)
        .map_err(|e| e.to_string())?
        .with_clock(clock.clone());
    let inbound_tls = inbound_tls(&args, &clock)?;
    let mut mesh = Mesh::with_clock(
        token_server,
        clock,
        args.audience.clone(),
        args.clock_skew.as_secs(),
        usize::try_from(args.max_revocations).unwrap_or(usize::MAX),
    )
    .map_err(|e| format!("cannot make the sidecar's DPoP key: {e}"))?;
    if args.dpop_require_nonce {
        mesh = mesh
            .requiring_nonces()
            .map_err(|e| format!("cannot make the DPoP nonce key: {e}"))?;
    }
    let mesh = Arc::new(mesh);
    let resolve = args
        .resolve
        .iter()
        .map(|r| (r.host.clone(), r.addr))
        .collect();
    let proxy = Arc::new(
        Proxy::new(
            mesh.clone(),
            args.app_addr,
            resolve,
            args.allow_unlisted_destinations,
            args.upstream_timeout,
            args.stream_idle_timeout,
            probes(&args)?,
        )
        .with_resource(
            resource::ProtectedResource::new(
                args.resource_url.clone(),
                args.inbound_client_ca.is_some(),
            ),
            inbound_tls.is_some(),
        ),
    );
    let inbound = bind(args.inbound_addr).await?;
    let outbound = bind(args.outbound_addr).await?;
    let admin = bind(args.admin_addr).await?;
    let ext_authz = match args.ext_authz_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    runtime::spawn(info_span!("token server keys"), mesh.clone().load_keys());
    runtime::spawn(info_span!("policy watch"), mesh.clone().follow_policies());
    runtime::spawn(
        info_span!("revocation watch"),
        mesh.clone().follow_revocations(),
    );
    tracing::info!(
        client_id = mesh.token_server.client_id(),
        inbound = %args.inbound_addr,
        app = %args.app_addr,
        outbound = %args.outbound_addr,
        admin = %args.admin_addr,
        ext_authz = ?args.ext_authz_addr,
        "sidecar listening"
    );
    let drain = Drain::on_signal();
    let inbound_proxy = proxy.clone();
    let inbound = proxy::serve_tls(
        inbound,
        inbound_tls,
        move |request| {
            let proxy = inbound_proxy.clone();
            async move { proxy.inbound(request).await }
        },
        drain.signaled(),
        args.client_timeout,
        true,
    );
    let outbound_proxy = proxy.clone();
    let outbound = proxy::serve(
        outbound,
        move |request| {
            let proxy = outbound_proxy.clone();
            async move { proxy.outbound(request).await }
        },
        drain.signaled(),
        args.client_timeout,
        true,
    );
    let admin_proxy = proxy.clone();
    let admin = proxy::serve(
        admin,
        move |request| {
            let proxy = admin_proxy.clone();
            async move { proxy.admin(request).await }
        },
        drain.signaled(),
        args.client_timeout,
        true,
    );
    // The same bounds on slow and idle clients as the proxies, which
    // tonic's own server does not give.
    let ext_authz = async {
        if let Some(listener) = ext_authz {
            let authz = Arc::new(ext_authz::ExtAuthz { mesh: mesh.clone() });
            proxy::serve(
                listener,
                move |request| ext_authz::serve_grpc(authz.clone(), request),
                drain.signaled(),
                args.client_timeout,
                false,
            )
            .await;
        }
    };
    tokio::join!(inbound, outbound, admin, ext_authz);
    tracing::info!("stopped");
    Ok(())
}

/// --app-probe and --app-probe-header, by admin path.
fn probes(args: &Args) -> Result<HashMap<String, Probe>, String> {
    let mut probes: HashMap<String, Probe> = args
        .app_probes
        .iter()
        .map(|p| {
            let probe = Probe {
                port: p.port,
                target: p.target.clone(),
                headers: Vec::new(),
            };
            (p.path.clone(), probe)
        })
        .collect();
    for header in &args.app_probe_headers {
        probes
            .get_mut(&header.path)
            .ok_or_else(|| format!("--app-probe-header: no --app-probe for {}", header.path))?
            .headers
            .push(header.name.clone());
    }
    Ok(probes)
}
