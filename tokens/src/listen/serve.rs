//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, or either over TLS) with
//! bounds on every connection.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::Instant,
};

use super::{
    BoxError,
    deadlines::{Activity, Tracked, WriteDeadline},
    tls::Acceptor,
};

/// What a listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the accept to the first request's head: the TLS handshake and
    /// the HTTP/1 head (or HTTP/2 preface and first HEADERS) must come
    /// within it. Also how long a client may stop reading its answer, and
    /// how long a connection asked to close may take before it is dropped.
    pub first_request: Duration,
    /// How long a connection may sit with no request in progress after its
    /// first one (the next HTTP/1 head must come within it too): closed
    /// gracefully (HTTP/2 with a GOAWAY), then dropped.
    pub idle: Duration,
    /// HTTP/2 ping interval, and the wait for the answer before a silent
    /// peer is dropped.
    pub keep_alive: Duration,
    /// Most connections open at once (TLS handshakes included); one more is
    /// closed at once. `None`: no cap.
    pub max_connections: Option<usize>,
    /// Whether to offer vectored writes (`false` makes small HTTP/2 answers
    /// leave in one write: see `tokenmesh_proto::one_write`).
    pub vectored_writes: bool,
}

impl Limits {
    /// One bound for all of it, as the sidecar's --client-timeout.
    pub fn uniform(timeout: Duration) -> Self {
        Self {
            first_request: timeout,
            idle: timeout,
            keep_alive: timeout,
            max_connections: None,
            vectored_writes: true,
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown`, then lets
/// requests in flight finish (10 s at most). With `tls`, connections are
/// TLS (the acceptor's certificate is read at each handshake, so a reloaded
/// one is used from the next connection on).
///
/// `handler_for` is called once per connection, with its socket (for what
/// the requests of that connection should know, like an original
/// destination), and gives the handler of its requests.
///
/// No per-request timers: a connection with no request in progress is
/// closed when [`Limits`] says so (gracefully, then for good), which also
/// covers HTTP/1 heads that never end, TLS handshakes that never finish and
/// connections that never send a byte; a client that stops reading is
/// dropped; HTTP/2 peers are pinged and dropped if they do not answer.
pub async fn serve<M, H, F, B>(
    listener: tokio::net::TcpListener,
    tls: Option<Acceptor>,
    limits: Limits,
    handler_for: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(&TcpStream) -> H,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keep_alive)
        .keep_alive_timeout(limits.keep_alive);
    let builder = Arc::new(builder);
    let permits = limits
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    // Connections hold a receiver: all gone means all closed.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, most often: retrying at
                        // once would spin; a pause lets connections close.
                        tracing::warn!(error = %err, "cannot accept a connection; pausing 100 ms");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let permit = match &permits {
                    None => None,
                    Some(permits) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            // Closed at once: the client can try another replica.
                            tracing::debug!(%peer, "connection cap reached; closing a new connection");
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let handler = handler_for(&stream);
                let activity = Activity::new();
                let builder = builder.clone();
                let stopping = stopping.clone();
                let tls = tls.clone();
                // Not exported at info: a request's span is a root of its own.
                crate::runtime::spawn(tracing::debug_span!("connection", %peer), async move {
                    let _permit = permit;
                    match tls {
                        None => connection(stream, builder, handler, activity, limits, stopping).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(limits.first_request, acceptor.tls.accept(stream));
                            match handshake.await {
                                Ok(Ok(stream)) => {
                                    let peer = acceptor.client_ca.as_ref().and_then(|ca| {
                                        ca.peer(stream.get_ref().1.peer_certificates()?)
                                    });
                                    match peer {
                                        None => connection(stream, builder, handler, activity, limits, stopping).await,
                                        // Every request of the connection learns its certificate.
                                        Some(peer) => {
                                            let handler = move |mut request: Request<Incoming>| {
                                                request.extensions_mut().insert(peer.clone());
                                                handler(request)
                                            };
                                            connection(stream, builder, handler, activity, limits, stopping).await;
                                        }
                                    }
                                }
                                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake too slow; closing"),
                            }
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(stopping);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), stop.closed()).await;
}

/// Serves one connection until it ends, it has been idle too long, or the
/// server stops.
async fn connection<I, H, F, B>(
    io: I,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    activity: Arc<Activity>,
    limits: Limits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = tracker.begin();
        let answer = handler(request);
        async move {
            let response = answer.await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let io = TokioIo::new(WriteDeadline::new(
        io,
        limits.first_request,
        activity.clone(),
        limits.vectored_writes,
    ));
    let connection = builder.serve_connection(io, service).into_owned();
    tokio::pin!(connection);
    // Set once the connection was asked to close: dropped then if idle.
    let mut drop_at: Option<Instant> = None;
    let mut stopped = false;
    loop {
        let wake = drop_at
            .or_else(|| activity.idle_until(limits.first_request, limits.idle))
            // While requests are in progress, look again later.
            .unwrap_or_else(|| Instant::now() + limits.idle);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!(error = %err, "connection ended");
                }
                break;
            }
            _ = stopping.wait_for(|stop| *stop), if !stopped => {
                stopped = true;
                if drop_at.is_none() {
                    connection.as_mut().graceful_shutdown();
                    drop_at = Some(Instant::now() + limits.first_request);
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                match drop_at {
                    // It did not close when asked: drop it, unless a
                    // request is still finishing.
                    Some(_) if !activity.in_flight() => break,
                    Some(_) => drop_at = Some(now + limits.first_request),
                    // Again: a request may have come and gone meanwhile.
                    None => {
                        if activity
                            .idle_until(limits.first_request, limits.idle)
                            .is_some_and(|at| at <= now)
                        {
                            tracing::trace!("closing an idle connection");
                            connection.as_mut().graceful_shutdown();
                            drop_at = Some(now + limits.first_request);
                        }
                    }
                }
            }
        }
    }
}
