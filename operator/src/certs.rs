//! Serving certificates the operator issues. The webhook's: a CA and a
//! certificate for the webhook Service, kept in a Secret so every replica
//! serves the same one, and the CA written into the
//! MutatingWebhookConfiguration. The token server's: issued by a lasting CA
//! of the operator's own (kept in a Secret only the operator reads), renewed
//! well before it expires; the token server reloads it from its mounted
//! Secret, and sidecars and the operator trust the CA.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokenmesh_tokens::clock::Clock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {0}: {1}")]
    Stored(String, String),
}

/// The names a Service answers to inside the cluster.
fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// A CA and a serving certificate for `service` in `namespace`.
pub fn generate(service: &str, namespace: &str) -> Result<WebhookCerts, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tokenmesh webhook CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut params = CertificateParams::new(service_names(service, namespace))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    let key = KeyPair::generate()?;
    let cert_pem = params.signed_by(&key, &issuer)?.pem();
    Ok(WebhookCerts {
        ca_pem,
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The common name of the token server's CA.
const TOKEN_SERVER_CA: &str = "tokenmesh token server CA";
/// Lifetime of the token server's CA: sidecars trust it from injection on,
/// so it outlives any pod.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of the token server's certificate, and how long before its
/// end it is renewed.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Annotation of the serving Secret: when its certificate expires (Unix
/// seconds), so renewal needs no certificate parsing.
pub const NOT_AFTER: &str = "tokenmesh.dev/not-after";

/// Unix seconds as a certificate time (any time this code sees is in range).
fn at(unix: u64) -> time::OffsetDateTime {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// What makes the token server's CA: the same each time, so a CA rebuilt
/// from its stored key issues certificates that chain to the stored one.
fn authority_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, TOKEN_SERVER_CA);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// The operator's CA for the token server's certificate.
pub struct Authority {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    pub fn generate(now: u64) -> Result<(Self, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = authority_params()?;
        params.not_before = at(now.saturating_sub(3600));
        params.not_after = at(now + CA_LIFETIME.as_secs());
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok((Self::open(cert_pem, &key_pem)?, key_pem))
    }

    fn open(cert_pem: String, key_pem: &str) -> Result<Self, rcgen::Error> {
        let issuer = Issuer::new(authority_params()?, KeyPair::from_pem(key_pem)?);
        Ok(Self { cert_pem, issuer })
    }

    /// A certificate for `service` in `namespace`, valid from an hour ago
    /// (clock skew) for [`SERVING_LIFETIME`]: (certificate, key, not after).
    pub fn issue(
        &self,
        service: &str,
        namespace: &str,
        now: u64,
    ) -> Result<(String, String, u64), rcgen::Error> {
        let mut params = CertificateParams::new(service_names(service, namespace))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let not_after = now + SERVING_LIFETIME.as_secs();
        params.not_before = at(now.saturating_sub(3600));
        params.not_after = at(not_after);
        let key = KeyPair::generate()?;
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok((cert_pem, key.serialize_pem(), not_after))
    }
}

/// The token server's CA, kept in `secret_name` (ca.crt, ca.key);
/// generated (valid from `clock`'s now) and stored when missing.
pub async fn ensure_authority(
    client: Client,
    namespace: &str,
    secret_name: &str,
    clock: &dyn Clock,
) -> Result<Authority, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let stored = |secret: &Secret| -> Option<Result<Authority, CertError>> {
        let (cert, key) = (field(secret, "ca.crt")?, field(secret, "ca.key")?);
        Some(Authority::open(cert, &key).map_err(|e| {
            CertError::Stored(secret_name.into(), format!("the CA does not open: {e}"))
        }))
    };
    if let Some(secret) = secrets.get_opt(secret_name).await?
        && let Some(authority) = stored(&secret)
    {
        return authority;
    }
    let (authority, key_pem) = Authority::generate(clock.unix())?;
    let secret = owned_secret(
        secret_name,
        namespace,
        None,
        BTreeMap::new(),
        [
            ("ca.crt", authority.cert_pem.as_str()),
            ("ca.key", &key_pem),
        ],
    );
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(authority),
        // Another replica stored one first: use it.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets.get(secret_name).await?;
            stored(&secret).unwrap_or_else(|| {
                Err(CertError::Stored(
                    secret_name.into(),
                    "no ca.crt and ca.key".into(),
                ))
            })
        }
        Err(err) => Err(err.into()),
    }
}

fn owned_secret<'a>(
    name: &str,
    namespace: &str,
    type_: Option<&str>,
    annotations: BTreeMap<String, String>,
    data: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "tokenmesh-operator".to_owned(),
            )])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        type_: type_.map(str::to_owned),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Whether a serving Secret's certificate has to be (re)issued at `now`:
/// missing, from another CA, or within [`RENEW_BEFORE`] of its end.
pub fn needs_issue(secret: Option<&Secret>, ca_pem: &str, now: u64) -> bool {
    let Some(secret) = secret else { return true };
    let not_after = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER))
        .and_then(|v| v.parse::<u64>().ok());
    field(secret, "tls.crt").is_none()
        || field(secret, "tls.key").is_none()
        || field(secret, "ca.crt").as_deref() != Some(ca_pem)
        || not_after.is_none_or(|end| end.saturating_sub(now) < RENEW_BEFORE.as_secs())
}

/// Issues the token server's certificate into `secret_name` (tls.crt,
/// tls.key, ca.crt) when [`needs_issue`] at `clock`'s now; `Ok(true)` when
/// it did. The write is conditional on the Secret's version, so two
/// replicas renewing at once leave one certificate, not a mix.
pub async fn ensure_serving(
    client: Client,
    namespace: &str,
    secret_name: &str,
    service: &str,
    authority: &Authority,
    clock: &dyn Clock,
) -> Result<bool, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let current = secrets.get_opt(secret_name).await?;
    let now = clock.unix();
    if !needs_issue(current.as_ref(), &authority.cert_pem, now) {
        return Ok(false);
    }
    let (cert_pem, key_pem, not_after) = authority.issue(service, namespace, now)?;
    let annotations = BTreeMap::from([(NOT_AFTER.to_owned(), not_after.to_string())]);
    let mut secret = owned_secret(
        secret_name,
        namespace,
        Some("kubernetes.io/tls"),
        annotations,
        [
            ("tls.crt", cert_pem.as_str()),
            ("tls.key", &key_pem),
            ("ca.crt", &authority.cert_pem),
        ],
    );
    match current {
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
        Some(current) => {
            secret.metadata.resource_version = current.metadata.resource_version;
            secrets
                .patch(secret_name, &PatchParams::default(), &Patch::Merge(&secret))
                .await?;
        }
    }
    Ok(true)
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// The certificates in `secret_name`, generated and stored when missing.
pub async fn ensure(
    client: Client,
    namespace: &str,
    secret_name: &str,
    service: &str,
) -> Result<WebhookCerts, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(secret) = secrets.get_opt(secret_name).await?
        && let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (
            field(&secret, "ca.crt"),
            field(&secret, "tls.crt"),
            field(&secret, "tls.key"),
        )
    {
        return Ok(WebhookCerts {
            ca_pem,
            cert_pem,
            key_pem,
        });
    }
    let certs = generate(service, namespace)?;
    let data = BTreeMap::from([
        (
            "ca.crt".to_owned(),
            ByteString(certs.ca_pem.clone().into_bytes()),
        ),
        (
            "tls.crt".to_owned(),
            ByteString(certs.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(certs.key_pem.clone().into_bytes()),
        ),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(certs),
        // Another replica stored one first: use it.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let stored = secrets.get(secret_name).await?;
            match (
                field(&stored, "ca.crt"),
                field(&stored, "tls.crt"),
                field(&stored, "tls.key"),
            ) {
                (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Ok(WebhookCerts {
                    ca_pem,
                    cert_pem,
                    key_pem,
                }),
                _ => Ok(certs),
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// Writes the CA into every webhook of the configuration (so the API
/// server trusts the webhook); a missing configuration is left alone.
pub async fn publish_ca_bundle(
    client: Client,
    configuration: &str,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let Some(mut config) = api.get_opt(configuration).await? else {
        return Ok(false);
    };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
            webhook.client_config.ca_bundle = Some(bundle.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(configuration, &PostParams::default(), &config)
            .await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn the_serving_certificate_names_the_service_and_chains_to_the_ca() {
        let certs = generate("tokenmesh-webhook", "tokenmesh").unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(certs.key_pem.contains("PRIVATE KEY"));
        // rustls accepts the pair, and trusts the CA for the Service's name.
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let leaf =
            rustls_pki_types::CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .unwrap();
        let name =
            rustls_pki_types::ServerName::try_from("tokenmesh-webhook.tokenmesh.svc").unwrap();
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .unwrap();
    }

    fn verify(ca_pem: &str, cert_pem: &str, host: &str, at: u64) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let leaf = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(at));
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], time)
            .map(|_| ())
    }

    #[test]
    fn a_ca_reopened_from_its_stored_key_issues_certificates_its_certificate_verifies() {
        let now = tokenmesh_tokens::clock::SystemClock.unix();
        let (authority, key_pem) = Authority::generate(now).unwrap();
        // What a later operator (a restart, another replica) rebuilds.
        let reopened = Authority::open(authority.cert_pem.clone(), &key_pem).unwrap();
        let (cert, key, not_after) = reopened
            .issue("tokenmesh-token-server", "tokenmesh", now)
            .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert_eq!(not_after, now + SERVING_LIFETIME.as_secs());
        for host in [
            "tokenmesh-token-server.tokenmesh.svc",
            "tokenmesh-token-server.tokenmesh.svc.cluster.local",
            "tokenmesh-token-server.tokenmesh",
            "tokenmesh-token-server",
        ] {
            verify(&authority.cert_pem, &cert, host, now).unwrap();
        }
        assert!(verify(&authority.cert_pem, &cert, "other.tokenmesh.svc", now).is_err());
        assert!(
            verify(
                &authority.cert_pem,
                &cert,
                "tokenmesh-token-server",
                not_after + 60
            )
            .is_err(),
            "the certificate expires, so it must be renewed"
        );
        let (other, _) = Authority::generate(now).unwrap();
        assert!(verify(&other.cert_pem, &cert, "tokenmesh-token-server", now).is_err());
    }

    #[test]
    fn a_serving_secret_is_renewed_before_it_expires_or_when_the_ca_changed() {
        let now = 1_800_000_000;
        let (authority, _) = Authority::generate(now).unwrap();
        let (cert, key, not_after) = authority.issue("ts", "ns", now).unwrap();
        let secret = |not_after: Option<u64>, ca: &str| {
            owned_secret(
                "ts-tls",
                "ns",
                Some("kubernetes.io/tls"),
                not_after
                    .map(|t| BTreeMap::from([(NOT_AFTER.to_owned(), t.to_string())]))
                    .unwrap_or_default(),
                [
                    ("tls.crt", cert.as_str()),
                    ("tls.key", &key),
                    ("ca.crt", ca),
                ],
            )
        };
        let ca = authority.cert_pem.as_str();
        assert!(needs_issue(None, ca, now));
        assert!(!needs_issue(Some(&secret(Some(not_after), ca)), ca, now));
        let renew_at = not_after - RENEW_BEFORE.as_secs();
        assert!(!needs_issue(
            Some(&secret(Some(not_after), ca)),
            ca,
            renew_at - 1
        ));
        assert!(needs_issue(
            Some(&secret(Some(not_after), ca)),
            ca,
            renew_at + 1
        ));
        assert!(needs_issue(Some(&secret(None, ca)), ca, now));
        assert!(needs_issue(
            Some(&secret(Some(not_after), "another CA")),
            ca,
            now
        ));
    }

    /// The serving Secret as the API server returns it: `written` (a
    /// create's or merge patch's body) at resourceVersion `version`.
    fn stored(mut written: serde_json::Value, version: &str) -> serde_json::Value {
        written["metadata"]["resourceVersion"] = version.into();
        written
    }

    fn data(secret: &serde_json::Value, key: &str) -> String {
        String::from_utf8(crate::fixtures::secret_data(secret, key)).unwrap()
    }

    fn not_after(secret: &serde_json::Value) -> u64 {
        secret["metadata"]["annotations"][NOT_AFTER]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn the_token_servers_ca_is_valid_from_the_clocks_now() {
        use crate::fixtures::{api_server, expect, expect_status, not_found};
        use http::Method;
        use tokenmesh_tokens::clock::ManualClock;
        // Far from the machine's time, so only the clock can have dated it.
        let clock = ManualClock::at_unix(2_500_000_000);
        let (client, mut api) = api_server();
        let path = "/api/v1/namespaces/tokenmesh/secrets/ts-ca";
        let (authority, created) = tokio::join!(
            ensure_authority(client, "tokenmesh", "ts-ca", clock.as_ref()),
            async {
                expect_status(&mut api, Method::GET, path, 404, not_found()).await;
                expect(
                    &mut api,
                    Method::POST,
                    "/api/v1/namespaces/tokenmesh/secrets",
                    serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ts-ca"}}),
                )
                .await
            }
        );
        let authority = authority.unwrap();
        assert_eq!(data(&created, "ca.crt"), authority.cert_pem);
        // Its validity, as DER times (a trust anchor's dates are not checked
        // by verifiers, so they are read here): from an hour before the
        // clock's now (2049-03-22T04:26:40Z) for CA_LIFETIME.
        let der = rustls_pki_types::CertificateDer::from_pem_slice(authority.cert_pem.as_bytes())
            .unwrap();
        let has = |time: &[u8]| der.windows(time.len()).any(|w| w == time);
        assert!(has(b"490322032640Z"), "not before");
        assert!(has(b"20590320042640Z"), "not after");
    }

    #[tokio::test]
    async fn the_token_servers_certificate_is_renewed_near_its_end_and_not_before() {
        use crate::fixtures::{api_server, expect, expect_status, not_found};
        use http::Method;
        use tokenmesh_tokens::clock::ManualClock;
        let clock = ManualClock::at_unix(1_800_000_000);
        let (authority, _) = Authority::generate(clock.unix()).unwrap();
        let (client, mut api) = api_server();
        let path = "/api/v1/namespaces/tokenmesh/secrets/ts-tls";
        let ensure = || {
            ensure_serving(
                client.clone(),
                "tokenmesh",
                "ts-tls",
                "ts",
                &authority,
                clock.as_ref(),
            )
        };

        // None yet: issued for SERVING_LIFETIME from the clock's now.
        let (issued, first) = tokio::join!(ensure(), async {
            expect_status(&mut api, Method::GET, path, 404, not_found()).await;
            let body = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ts-tls"}});
            expect(
                &mut api,
                Method::POST,
                "/api/v1/namespaces/tokenmesh/secrets",
                body,
            )
            .await
        });
        assert!(issued.unwrap());
        let end = not_after(&first);
        assert_eq!(end, clock.unix() + SERVING_LIFETIME.as_secs());
        let first = stored(first, "1");

        // Far from its end (RENEW_BEFORE and a day left): kept, nothing written.
        clock.advance(SERVING_LIFETIME - RENEW_BEFORE - Duration::from_secs(86_400));
        let (issued, ()) = tokio::join!(ensure(), async {
            expect(&mut api, Method::GET, path, first.clone()).await;
        });
        assert!(!issued.unwrap(), "renewed a month and a day before its end");

        // Near its end: a new certificate, written over the version read.
        clock.advance(Duration::from_secs(2 * 86_400));
        let (issued, renewed) = tokio::join!(ensure(), async {
            expect(&mut api, Method::GET, path, first.clone()).await;
            expect(&mut api, Method::PATCH, path, first.clone()).await
        });
        assert!(issued.unwrap());
        assert_eq!(renewed["metadata"]["resourceVersion"], "1");
        assert_eq!(
            not_after(&renewed),
            clock.unix() + SERVING_LIFETIME.as_secs()
        );
        let cert = data(&renewed, "tls.crt");
        assert_ne!(cert, data(&first, "tls.crt"));
        // The new certificate outlives the old one.
        verify(&authority.cert_pem, &cert, "ts.tokenmesh.svc", end + 60).unwrap();
    }
}
