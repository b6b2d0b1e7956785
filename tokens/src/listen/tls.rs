//! A serving certificate read from PEM files and read again when they
//! change, so a renewed certificate (cert-manager, the operator, or kubelet
//! swapping a mounted Secret's files) is served from the next handshake on,
//! without a restart.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

pub use super::client_ca::{ClientCa, PeerCertificate};
use super::reload::{self, Files, Reload};

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
    files: Files,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    /// Reads the PEM chain and key; an unusable pair is an error.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let (files, contents) = Files::read(&[cert, key])?;
        let certified = certified_key(cert, key, &contents)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(certified),
            files,
        }))
    }

    /// Checks the files every `every`, for as long as the runtime runs.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        reload::watch(self.clone(), every);
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

impl Reload for ReloadingCertificate {
    /// Swaps the certificate in when the files changed and make a usable
    /// pair. A pair caught half-written fails here and is tried again at
    /// the next call, while the current certificate stays in use.
    fn reload(&self) -> Result<bool, TlsError> {
        self.files.reload(|contents| {
            let certified = certified_key(&self.cert, &self.key, contents)?;
            self.current.store(Arc::new(certified));
            Ok(())
        })
    }

    fn what(&self) -> &'static str {
        "TLS certificate"
    }

    fn file(&self) -> String {
        self.files.name()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// `contents`: the certificate file's, then the key file's.
fn certified_key(cert: &Path, key: &Path, contents: &[Vec<u8>]) -> Result<CertifiedKey, TlsError> {
    let pair = |message: String| TlsError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        message,
    };
    let [cert_pem, key_pem] = contents else {
        return Err(pair("expected a certificate and a key".into()));
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
