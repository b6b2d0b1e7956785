//! TLS on both listeners, and certificate renewal without a restart: the
//! files are swapped the way the kubelet updates a mounted Secret (a new
//! timestamped folder, then the `..data` symlink replaced), and new
//! handshakes see the new certificate while the same process keeps serving.

use std::{path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::time::Instant;
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::harness::{Config, Server, TestCa};

/// The certificate the server at `addr` presents, and the protocol it chose.
async fn presented(
    ca: &Path,
    addr: &str,
    alpn: &[&[u8]],
) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    let chain = session.peer_certificates().unwrap();
    (
        chain[0].clone().into_owned(),
        session.alpn_protocol().map(<[u8]>::to_vec),
    )
}

/// Publishes `cert` and `key` in `dir` as the kubelet does: the files live
/// in a new folder and `..data` is swapped to it in one rename.
fn publish(dir: &Path, generation: u32, cert: &Path, key: &Path) {
    let folder = format!("..{generation}");
    std::fs::create_dir(dir.join(&folder)).unwrap();
    std::fs::copy(cert, dir.join(&folder).join("tls.crt")).unwrap();
    std::fs::copy(key, dir.join(&folder).join("tls.key")).unwrap();
    std::os::unix::fs::symlink(&folder, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let config = Config::new("{}");
    let ca = TestCa::new(config.dir.path());
    let (first_cert, first_key) = ca.issue("first");
    let (second_cert, second_key) = ca.issue("second");
    let mounted = tempfile::tempdir().unwrap();
    publish(mounted.path(), 1, &first_cert, &first_key);

    let http = ca.client();
    let data = tempfile::tempdir().unwrap();
    let extra = vec![
        "--tls-cert".into(),
        mounted.path().join("tls.crt").display().to_string(),
        "--tls-key".into(),
        mounted.path().join("tls.key").display().to_string(),
        "--header-read-timeout".into(),
        "1s".into(),
    ];
    let server = Server::start_with(&config, data.path(), extra, http, "https").await;
    let http_addr = format!("127.0.0.1:{}", server.port);
    let grpc_addr = server.grpc.rsplit_once("://").unwrap().1.to_owned();

    let (cert, alpn) = presented(&ca.cert, &http_addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(cert, der(&first_cert));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (cert, alpn) = presented(&ca.cert, &grpc_addr, &[b"h2"]).await;
    assert_eq!(cert, der(&first_cert), "gRPC serves TLS too");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    publish(mounted.path(), 2, &second_cert, &second_key);
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in [&http_addr, &grpc_addr] {
        loop {
            let (cert, _) = presented(&ca.cert, addr, &[b"h2"]).await;
            if cert == der(&second_cert) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} still serves the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The same process: a token over the new certificate.
    let token = server.token(&[]).await;
    assert!(token["access_token"].as_str().is_some());

    // A TCP connection that never starts its handshake is cut.
    let mut silent = TcpStream::connect(&http_addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 64];
        while let Ok(n) = silent.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection without a handshake stayed open"
    );
}

#[tokio::test]
async fn a_broken_certificate_pair_is_refused_at_start() {
    let config = Config::new("{}");
    let ca = TestCa::new(config.dir.path());
    let (cert, _) = ca.issue("one");
    let (_, other_key) = ca.issue("two");
    let (ok, stderr) = crate::harness::run_to_exit(&[
        "--config",
        config.file().to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        other_key.to_str().unwrap(),
        "--data-dir",
        config.dir.path().join("data").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
