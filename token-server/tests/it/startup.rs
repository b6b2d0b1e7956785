//! What the binary does with bad configuration and unsafe settings.

use crate::harness::{
    Config, Server, TestCa, binary, free_port, fresh_database, jwt_part, run_to_exit,
};

#[test]
fn invalid_configuration_names_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: s}\nspec: {name: a}\n---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: gw}\nspec:\n  authentication: {method: client_secret_basic}\n  audiences: [x]\n  accessToken: {format: paper}\n",
    )
    .unwrap();
    let (ok, stderr) = run_to_exit(&[
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.yaml, document 2 (OAuthClient gw)"),
        "{stderr}"
    );
    assert!(stderr.contains("spec.accessToken.format"), "{stderr}");
    assert!(!dir.path().join("d").exists(), "nothing half-starts");
}

#[test]
fn missing_and_short_secrets_are_refused() {
    let config = Config::new("{}");
    let path = config.dir.path().join("secrets/shared/client_secret");
    std::fs::write(&path, "short").unwrap();
    let (ok, stderr) = run_to_exit(&[
        "--config",
        config.file().to_str().unwrap(),
        "--check-config",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("spec.authentication.secretRef") && stderr.contains("shorter than 32"),
        "{stderr}"
    );
    // Hex, not base64: a base64 `+` sent form-encoded arrives as a space.
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    std::fs::remove_file(&path).unwrap();
    let (ok, stderr) = run_to_exit(&[
        "--config",
        config.file().to_str().unwrap(),
        "--check-config",
    ]);
    assert!(!ok);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn plain_http_off_loopback_is_refused() {
    let config = Config::new("{}");
    let addr = format!("0.0.0.0:{}", free_port());
    let (ok, stderr) = run_to_exit(&[
        "--config",
        config.file().to_str().unwrap(),
        "--http-addr",
        &addr,
        "--check-config",
    ]);
    assert!(ok, "--check-config only checks the files: {stderr}");
    let data = tempfile::tempdir().unwrap();
    let (ok, stderr) = run_to_exit(&[
        "--config",
        config.file().to_str().unwrap(),
        "--http-addr",
        &addr,
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    // Said once: not in the log and again on stderr.
    assert_eq!(stderr.matches("refusing plain HTTP").count(), 1, "{stderr}");
}

#[test]
fn help_explains_every_flag() {
    let out = std::process::Command::new(crate::harness::binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Usage: token-server --config <PATH>"),
        "--config is required: {help}"
    );
    for flag in [
        "--config",
        "--http-addr",
        "--grpc-addr",
        "--data-dir",
        "--secrets-dir",
        "--issuer",
        "--tls-cert",
        "--tls-key",
        "--header-read-timeout",
        "--request-body-timeout",
        "--idle-timeout",
        "--max-connections",
        "--http2-keepalive",
        "TOKENMESH_HTTP_ADDR",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[tokio::test]
async fn serves_https_with_rustls() {
    let config = Config::new("{}");
    let dir = config.dir.path();
    let ca = TestCa::new(dir);
    let (cert, key) = ca.issue("tls");
    let http = ca.client();
    let data = tempfile::tempdir().unwrap();
    let extra = vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    let server = Server::start_with(&config, data.path(), extra, http, "https").await;
    let token = server.token(&[]).await;
    assert!(token["access_token"].as_str().is_some());
    assert!(server.base.starts_with("https://"));
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_the_data_dir_is_private() {
    let config = Config::new("{}");
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&config, &data.path().join("d")).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    if crate::harness::postgres() {
        return; // the data directory belongs to the embedded store
    }
    let db = data.path().join("d");
    assert!(
        !db.join("tokenmesh.db-wal").exists(),
        "the store was closed and checkpointed"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "signing keys live here");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    if crate::harness::postgres() {
        return; // replicas on PostgreSQL share no data directory
    }
    let config = Config::new("{}");
    let data = tempfile::tempdir().unwrap();
    let mut first = Server::start(&config, &data.path().join("d")).await;
    let stderr = first.second_on_same_data_dir();
    assert!(
        stderr.contains("is in use by another token server")
            && stderr.contains(&format!("(pid {})", first.pid())),
        "{stderr}"
    );
    // The first one serves on, and its lock goes with it.
    let (status, _) = first.get("/readyz").await;
    assert_eq!(status, 200);
    first.kill();
    first.restart().await;
}

/// `token-server migrate` says what it applied, reads the URL from
/// `--database-url` or from the configuration's `spec.storage`, and names
/// the real cause when the database is away.
#[tokio::test]
async fn migrate_reports_what_it_did_and_reads_spec_storage() {
    let url = fresh_database().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = run(&["migrate", "--database-url", &url]);
    assert!(ok && out.contains("applied 3 migration(s)"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets/db")).unwrap();
    std::fs::write(dir.path().join("secrets/db/url"), format!("{url}\n")).unwrap();
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec:\n  issuer: http://127.0.0.1:8080\n  storage: {type: postgres, databaseUrlSecretRef: {name: db, key: url}}\n",
    )
    .unwrap();
    let (ok, out) = run(&["migrate", "--config", config.to_str().unwrap()]);
    assert!(ok && out.contains("up to date (version 3)"), "{out}");

    let away = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let (ok, out) = run(&["migrate", "--database-url", &away]);
    assert!(!ok && out.contains("Connection refused"), "{out}");
}

/// With `keyEncryptionKeyRef` no generated key is stored in clear: keys
/// from before are sealed in place (the same kids stay published), and a
/// server without the secret, or with another one, refuses to start.
// Multi-threaded: the gRPC client's connection closes on another thread
// while this one waits for the server to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_keys_are_encrypted_at_rest_and_need_their_secret() {
    const KEK_REF: &str = "{signing: {keyEncryptionKeyRef: {name: kek, key: key}}}";
    let config = Config::new("{}");
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&config, &data.path().join("d")).await;
    let published = published_kids(&server).await;
    server.terminate();
    let clear: Vec<Vec<u8>> = stored_keys(&server).await;
    assert!(
        clear.iter().all(|der| der.first() == Some(&0x30)),
        "PKCS#8 DER before"
    );

    let yaml = std::fs::read_to_string(config.file()).unwrap();
    let set_spec = |spec: &str| {
        std::fs::write(
            config.file(),
            yaml.replacen("spec: {}", &format!("spec: {spec}"), 1),
        )
        .unwrap();
    };
    let write_secret = |name: &str, value: &str| config.write_secret(name, "key", value);
    let set_secret = |value: &str| write_secret("kek", value);
    set_spec(KEK_REF);
    set_secret("q0Vd3Jp1mH8sXw4uTz6bNc9eLk2yRa7fGi5oPj1SxUA=\n");
    server.restart().await;
    assert_eq!(published_kids(&server).await, published, "the same keys");
    let token = server
        .token(&[("scope", "orders:read"), ("audience", "orders")])
        .await;
    assert!(
        published.contains(
            &jwt_part(token["access_token"].as_str().unwrap(), 0)["kid"]
                .as_str()
                .unwrap()
                .to_owned()
        )
    );
    if !crate::harness::postgres() {
        // Sealed in place, while the server runs: neither the database file
        // nor its write-ahead log keeps the clear keys.
        for file in ["tokenmesh.db", "tokenmesh.db-wal"] {
            let bytes = std::fs::read(data.path().join("d").join(file)).unwrap_or_default();
            for der in &clear {
                assert!(
                    !bytes.windows(der.len()).any(|w| w == der.as_slice()),
                    "a clear key is left in {file}"
                );
            }
        }
    }
    // A TokenServer applied through the ControlService that could not open
    // the keys is refused, not stored (stored, it would stop every restart).
    let mut control = tokenmesh_proto::v1::control_service_client::ControlServiceClient::connect(
        server.grpc.clone(),
    )
    .await
    .unwrap();
    let mut apply = tonic::Request::new(tokenmesh_proto::v1::ApplyRequest {
        document: format!(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {{name: default}}\nspec: {{issuer: \"{}\"}}\n",
            server.issuer
        ),
    });
    apply.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", crate::harness::ADMIN_TOKEN)
            .parse()
            .unwrap(),
    );
    let refused = control.apply(apply).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("stored encrypted"),
        "{}",
        refused.message()
    );
    drop(control); // an open connection would hold up the graceful stop
    server.terminate();
    let sealed = stored_keys(&server).await;
    assert_eq!(sealed.len(), clear.len());
    for (der, row) in clear.iter().zip(&sealed) {
        assert!(row.starts_with(b"tmkw1."), "sealed");
        assert!(
            !row.windows(der.len()).any(|w| w == der.as_slice()),
            "no clear key left"
        );
    }
    if !crate::harness::postgres() {
        // Nor in the database file's free space (PostgreSQL keeps old row
        // versions until VACUUM; docs/configuration.md says so).
        let file = std::fs::read(data.path().join("d/tokenmesh.db")).unwrap();
        for der in &clear {
            assert!(
                !file.windows(der.len()).any(|w| w == der.as_slice()),
                "a clear key is left in tokenmesh.db"
            );
        }
    }

    set_spec("{}");
    let stderr = server.start_refused();
    assert!(
        stderr.contains("stored encrypted") && stderr.contains("keyEncryptionKeyRef"),
        "{stderr}"
    );
    set_spec(KEK_REF);
    set_secret("another-secret-of-at-least-thirty-two-bytes");
    let stderr = server.start_refused();
    assert!(stderr.contains("does not decrypt"), "{stderr}");
    set_secret("too short");
    let stderr = server.start_refused();
    assert!(
        stderr.contains("spec.signing.keyEncryptionKeyRef") && stderr.contains("at least 32"),
        "{stderr}"
    );

    set_secret("q0Vd3Jp1mH8sXw4uTz6bNc9eLk2yRa7fGi5oPj1SxUA=\n");
    server.restart().await;
    assert_eq!(published_kids(&server).await, published);
    server.terminate();

    // A new secret: the old one named as previous opens the keys, which
    // are sealed again under the new one; then the old one can go.
    write_secret("kek2", "a-new-key-encryption-secret-0123456789abcdef");
    set_spec("{signing: {previousKeyEncryptionKeyRefs: [{name: kek, key: key}]}}");
    let stderr = server.start_refused();
    assert!(
        stderr.contains("spec.signing.previousKeyEncryptionKeyRefs")
            && stderr.contains("needs keyEncryptionKeyRef"),
        "{stderr}"
    );
    set_spec(
        "{signing: {keyEncryptionKeyRef: {name: kek2, key: key}, previousKeyEncryptionKeyRefs: [{name: kek, key: key}]}}",
    );
    server.restart().await;
    assert_eq!(published_kids(&server).await, published);
    server.terminate();
    let resealed = stored_keys(&server).await;
    assert!(
        sealed.iter().zip(&resealed).all(|(a, b)| a != b),
        "sealed again"
    );
    set_spec(KEK_REF);
    assert!(
        server.start_refused().contains("does not decrypt"),
        "the old secret alone no longer opens them"
    );
    set_spec("{signing: {keyEncryptionKeyRef: {name: kek2, key: key}}}");
    server.restart().await;
    assert_eq!(published_kids(&server).await, published);
}

async fn published_kids(server: &Server) -> Vec<String> {
    let mut kids: Vec<String> = server
        .jwks()
        .await
        .keys
        .into_iter()
        .map(|k| k.kid.unwrap())
        .collect();
    kids.sort();
    kids
}

/// The stored private keys, in kid order.
async fn stored_keys(server: &Server) -> Vec<Vec<u8>> {
    let mut keys = server.open_store().await.signing_keys().await.unwrap();
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    keys.into_iter().map(|k| k.pkcs8).collect()
}
