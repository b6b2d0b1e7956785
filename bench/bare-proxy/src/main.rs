//! The floor a proxying sidecar is measured against (bench/sidecar.sh): the
//! same hyper server and pooled hyper client as `tokenmesh-sidecar`, on a
//! multi-threaded tokio runtime, forwarding every request to one address
//! unchanged. No token checks, timeouts, metrics or header rewriting.
//!
//! Usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR

use std::{convert::Infallible, net::SocketAddr, process::ExitCode};

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse::<SocketAddr>())
    else {
        eprintln!("bare-proxy: addresses are IP:PORT");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bare-proxy: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bare-proxy: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let client = client.clone();
            async move {
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let response = match format!("http://{upstream}{path}").parse::<Uri>() {
                    Ok(uri) => {
                        *request.uri_mut() = uri;
                        match client.request(request).await {
                            Ok(response) => response.map(Either::Left),
                            Err(_) => status(StatusCode::BAD_GATEWAY),
                        }
                    }
                    Err(_) => status(StatusCode::BAD_REQUEST),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = Either<Incoming, Empty<Bytes>>;

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}
