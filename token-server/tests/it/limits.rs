//! Slow and idle clients against the real binary (issue #14, item 4): a
//! connection that only trickles headers, a request body trickled a byte at
//! a time, an idle HTTP/2 connection on the gRPC port and one connection
//! over the cap are all cut off; a gRPC watch stream is not idle.

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenmesh_proto::v1::{
    ApplyRequest, WatchPoliciesRequest, control_service_client::ControlServiceClient,
    token_service_client::TokenServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Request, metadata::MetadataValue};

use crate::harness::{ADMIN_TOKEN, Config, Server, basic_auth, next_message};

/// Long enough to tell a bound that worked from one that never fires.
const CUT_WITHIN: Duration = Duration::from_secs(10);

async fn server(flags: &[&str]) -> (Server, tempfile::TempDir, Config) {
    let config = Config::new("{}");
    let data = tempfile::tempdir().unwrap();
    let extra = flags.iter().map(|f| (*f).to_owned()).collect();
    let server =
        Server::start_with(&config, data.path(), extra, reqwest::Client::new(), "http").await;
    (server, data, config)
}

fn addr(url: &str) -> String {
    url.rsplit_once("://").unwrap().1.to_owned()
}

/// Reads until the server closes (or resets) the connection; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `head`, then one of `pieces` every 200 ms until the server closes
/// the connection; whether it did within [`CUT_WITHIN`], and what it
/// answered.
async fn trickle(addr: &str, head: &[u8], pieces: Vec<Vec<u8>>) -> (bool, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head).await.unwrap();
    let feeder = tokio::spawn(async move {
        for piece in pieces {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(&piece).await.is_err() {
                break;
            }
        }
        // Never more than `pieces`: the request stays unfinished.
        std::future::pending::<()>().await;
    });
    let read = tokio::time::timeout(CUT_WITHIN, async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    feeder.abort();
    match read {
        Ok(seen) => (true, seen),
        Err(_) => (false, Vec::new()),
    }
}

#[tokio::test]
async fn connections_that_only_trickle_headers_are_cut() {
    let (server, _data, _config) =
        server(&["--header-read-timeout", "1s", "--idle-timeout", "60s"]).await;
    let http = addr(&server.base);
    let (cut, _) = trickle(
        &http,
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n",
        vec![b"X-Slow: 1\r\n".to_vec(); 1000],
    )
    .await;
    assert!(cut, "an HTTP connection trickling headers stayed open");
    // The gRPC port: the HTTP/2 preface, a byte at a time.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let bytes = preface.iter().map(|b| vec![*b]).collect();
    let (cut, _) = trickle(&addr(&server.grpc), b"", bytes).await;
    assert!(cut, "a gRPC connection trickling its preface stayed open");
    // And one that sends nothing at all.
    let mut silent = TcpStream::connect(&http).await.unwrap();
    let closed = tokio::time::timeout(CUT_WITHIN, read_to_close(&mut silent)).await;
    assert!(closed.is_ok(), "a silent connection stayed open");
}

#[tokio::test]
async fn a_request_body_trickled_a_byte_at_a_time_is_cut() {
    let (server, _data, _config) = server(&[
        "--request-body-timeout",
        "2s",
        "--header-read-timeout",
        "30s",
        "--idle-timeout",
        "60s",
    ])
    .await;
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\ngrant_type=client_credentials&pad=",
        basic_auth("gateway")
    );
    // A byte every 200 ms never pauses long: only the deadline stops it.
    let (cut, answer) = trickle(
        &addr(&server.base),
        head.as_bytes(),
        vec![b"x".to_vec(); 3000],
    )
    .await;
    assert!(cut, "a trickled request body held its connection open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    assert!(!answer.contains("access_token"), "{answer}");
}

#[tokio::test]
async fn idle_http2_connections_on_the_grpc_port_are_closed_and_watches_are_not() {
    let (server, _data, _config) =
        server(&["--idle-timeout", "1s", "--header-read-timeout", "5s"]).await;
    // A connection that made one call, then idles.
    let stream = TcpStream::connect(addr(&server.grpc)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("{}/grpc.health.v1.Health/Check", server.grpc))
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let ended = tokio::time::timeout(CUT_WITHIN, connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");

    // A watch stream is a request in progress: it outlives the idle bound.
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = Request::new(WatchPoliciesRequest {});
    watch.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(basic_auth("gateway")).unwrap(),
    );
    let mut stream = TokenServiceClient::new(channel.clone())
        .watch_policies(watch)
        .await
        .unwrap()
        .into_inner();
    next_message(&mut stream, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut apply = Request::new(ApplyRequest {
        document: "apiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: later}\nspec:\n  mode: exchange\n  actor: {clients: [gateway]}\n  to: {audience: payments, hosts: [payments.local]}\n".into(),
    });
    apply.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {ADMIN_TOKEN}")).unwrap(),
    );
    ControlServiceClient::new(channel)
        .apply(apply)
        .await
        .unwrap();
    let snapshot = next_message(&mut stream, Duration::from_secs(10)).await;
    assert!(
        snapshot.routes.iter().any(|r| r.host == "payments.local"),
        "{snapshot:?}"
    );
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_at_once() {
    // The gRPC port: the harness keeps its own HTTP connection open.
    let (server, _data, _config) =
        server(&["--max-connections", "2", "--header-read-timeout", "60s"]).await;
    let grpc = addr(&server.grpc);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(&grpc).await.unwrap());
    }
    let mut third = TcpStream::connect(&grpc).await.unwrap();
    let closed = tokio::time::timeout(CUT_WITHIN, read_to_close(&mut third)).await;
    assert!(closed.is_ok(), "a third connection was kept");
    // The two held are still served.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = tokio::time::timeout(CUT_WITHIN, read_to_close(&mut held[0]))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // With one gone, a new connection is served again (once the server has
    // seen the close).
    let deadline = Instant::now() + CUT_WITHIN;
    loop {
        let mut next = TcpStream::connect(&grpc).await.unwrap();
        next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut next).await;
        if answer.starts_with(b"HTTP/1.1 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
