//! A serving certificate read from PEM files and read again when they
//! change, so a renewed certificate (cert-manager, the operator, or kubelet
//! swapping a mounted Secret's files) is served from the next handshake on,
//! without a restart.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};

use crate::clock::SharedClock;

/// ALPN of a listener that speaks HTTP/2 and HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of a gRPC listener: HTTP/2 only (gRPC clients insist on it).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{cert} and {key} do not make a serving certificate: {message}")]
    Pair {
        cert: String,
        key: String,
        message: String,
    },
}

/// The certificate chain and key of a listener, swapped in place when the
/// files change.
pub struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The bytes the current certificate was made from.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl ReloadingCertificate {
    /// Reads the PEM chain and key; an unusable pair is an error.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let certified = certified_key(cert, key, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(certified),
            seen: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Reads the files again; swaps the certificate in when they changed and
    /// make a usable pair. `Ok(true)`: a new certificate is served. A pair
    /// caught half-written fails here and is tried again at the next call,
    /// while the current certificate stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0 == cert_pem && seen.1 == key_pem {
            return Ok(false);
        }
        let certified = certified_key(&self.cert, &self.key, &cert_pem, &key_pem)?;
        self.current.store(Arc::new(certified));
        *seen = (cert_pem, key_pem);
        Ok(true)
    }

    /// Checks the files every `every`, for as long as the runtime runs.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let this = self.clone();
        let span = tracing::info_span!("TLS reload", cert = %self.cert.display());
        crate::runtime::spawn(span, async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                match this.reload() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(cert = %this.cert.display(), "TLS certificate reloaded");
                    }
                    Ok(false) => failing = false,
                    // Once per failing stretch: a renewal in progress is normal.
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(error = %err, "TLS certificate not reloaded; serving the previous one");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// A TLS acceptor serving this certificate, offering `alpn`; with
    /// `client_ca`, clients may present a certificate.
    pub fn acceptor(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        client_ca: Option<&Arc<ClientCa>>,
    ) -> Result<Acceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.pair_error(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(ca.clone()),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            client_ca: client_ca.cloned(),
        })
    }

    fn pair_error(&self, message: String) -> TlsError {
        TlsError::Pair {
            cert: self.cert.display().to_string(),
            key: self.key.display().to_string(),
            message,
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(
    cert: &Path,
    key: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let pair = |message: String| TlsError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pair(format!("the certificate is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pair("no certificate in the file".into()));
    }
    // The key's own parse error could quote it: say only what is wrong.
    let der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| pair("the key is not a PEM private key".into()))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|_| pair("the key is not an RSA, ECDSA or Ed25519 key".into()))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A key that cannot tell its public half is not checked.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(pair("the key does not belong to the certificate".into())),
    }
}

/// A listener's TLS: the acceptor, and the client CA whose verdict on a
/// presented certificate the requests learn ([`PeerCertificate`]).
#[derive(Clone)]
pub struct Acceptor {
    pub tls: tokio_rustls::TlsAcceptor,
    pub client_ca: Option<Arc<ClientCa>>,
}

/// The client certificate of the connection a request came on (RFC 8705),
/// a request extension. The TLS handshake proved its key.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The end-entity certificate.
    pub der: CertificateDer<'static>,
    /// Whether the presented chain verified against the client CA bundle
    /// at the handshake; false for a self-signed certificate or one of
    /// another CA (which `self_signed_tls_client_auth` may still accept).
    pub chain_verified: bool,
}

/// Client certificates on a listener: asked for, never required (bearer
/// clients connect as before). Any certificate whose key signs the
/// handshake is accepted, so that `self_signed_tls_client_auth` works; the
/// chain is checked against the CA bundle after the handshake and the
/// verdict travels with the requests, for client authentication to decide.
pub struct ClientCa {
    path: PathBuf,
    webpki: Arc<dyn ClientCertVerifier>,
    clock: SharedClock,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Reads the PEM CA bundle; the clock dates the chain checks.
    pub fn load(path: &Path, clock: SharedClock) -> Result<Arc<Self>, TlsError> {
        let file = |message: String| TlsError::File {
            path: path.display().to_string(),
            message,
        };
        let pem = read(path)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| file(format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| file(format!("not a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(file("no CA certificate in the file".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| file(e.to_string()))?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            webpki,
            clock,
        }))
    }

    /// The certificate a client presented, with the CA's verdict on its
    /// chain (end entity first).
    pub fn peer(&self, chain: &[CertificateDer<'_>]) -> Option<PeerCertificate> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = UnixTime::since_unix_epoch(Duration::from_secs(self.clock.unix()));
        let chain_verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
            .is_ok();
        Some(PeerCertificate {
            der: end_entity.clone().into_owned(),
            chain_verified,
        })
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: a client with a self-signed certificate must not be led
    /// to withhold it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Decided per client after the handshake (see `peer`).
        Ok(ClientCertVerified::assertion())
    }

    /// The proof that the client holds the certificate's key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
