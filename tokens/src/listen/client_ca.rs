//! Client certificates on a listener (RFC 8705): the CA bundle that a
//! presented chain is checked against, read again when its file changes,
//! so a CA added to a mounted ConfigMap or Secret is trusted from the next
//! connection on, without a restart.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};

use super::{
    reload::{self, Files, Reload},
    tls::TlsError,
};
use crate::clock::SharedClock;

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

/// The bundle's verifier, swapped whole when the file changes.
struct Roots(Arc<dyn ClientCertVerifier>);

/// Client certificates on a listener: asked for, never required (bearer
/// clients connect as before). Any certificate whose key signs the
/// handshake is accepted, so that `self_signed_tls_client_auth` works; the
/// chain is checked against the CA bundle after the handshake and the
/// verdict travels with the requests, for client authentication to decide.
pub struct ClientCa {
    path: PathBuf,
    webpki: ArcSwap<Roots>,
    files: Files,
    clock: SharedClock,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The verifier of a PEM bundle of CA certificates; an empty or unusable
/// bundle is an error.
fn roots(path: &Path, pem: &[u8]) -> Result<Roots, TlsError> {
    let file = |message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| file(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| file(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file("no CA certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map(Roots)
        .map_err(|e| file(e.to_string()))
}

impl ClientCa {
    /// Reads the PEM CA bundle; the clock dates the chain checks.
    pub fn load(path: &Path, clock: SharedClock) -> Result<Arc<Self>, TlsError> {
        let (files, contents) = Files::read(&[path])?;
        let pem = contents.first().map(Vec::as_slice).unwrap_or_default();
        Ok(Arc::new(Self {
            path: path.to_owned(),
            webpki: ArcSwap::from_pointee(roots(path, pem)?),
            files,
            clock,
        }))
    }

    /// Checks the file every `every`, for as long as the runtime runs.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        reload::watch(self.clone(), every);
    }

    /// The bundle's verifier in use now.
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.webpki.load().0.clone()
    }

    /// The certificate a client presented, with the CA's verdict on its
    /// chain (end entity first).
    pub fn peer(&self, chain: &[CertificateDer<'_>]) -> Option<PeerCertificate> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = UnixTime::since_unix_epoch(Duration::from_secs(self.clock.unix()));
        let chain_verified = self
            .verifier()
            .verify_client_cert(end_entity, intermediates, now)
            .is_ok();
        Some(PeerCertificate {
            der: end_entity.clone().into_owned(),
            chain_verified,
        })
    }
}

impl Reload for ClientCa {
    /// Trusts the file's CAs from the next connection on when it changed
    /// and holds at least one; the previous bundle stays in use otherwise.
    fn reload(&self) -> Result<bool, TlsError> {
        self.files.reload(|contents| {
            let pem = contents.first().map(Vec::as_slice).unwrap_or_default();
            self.webpki.store(Arc::new(roots(&self.path, pem)?));
            Ok(())
        })
    }

    fn what(&self) -> &'static str {
        "client CA bundle"
    }

    fn file(&self) -> String {
        self.files.name()
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
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;
    use crate::clock::SystemClock;

    /// A CA's PEM and the DER of a client certificate it issued.
    fn ca_and_client() -> (String, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let params = CertificateParams::new(vec!["orders".to_owned()]).unwrap();
        let client = params
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        (ca_pem, client.der().clone())
    }

    fn verified(ca: &ClientCa, client: &CertificateDer<'static>) -> bool {
        ca.peer(std::slice::from_ref(client))
            .unwrap()
            .chain_verified
    }

    #[test]
    fn a_changed_bundle_is_trusted_and_an_invalid_one_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let (old_pem, old_client) = ca_and_client();
        let (new_pem, new_client) = ca_and_client();
        std::fs::write(&path, &old_pem).unwrap();
        let ca = ClientCa::load(&path, SystemClock::shared()).unwrap();
        assert!(verified(&ca, &old_client));
        assert!(
            !verified(&ca, &new_client),
            "a client of a CA not in the bundle"
        );
        assert!(!ca.reload().unwrap(), "nothing changed");

        // Kubernetes swaps a symlink to a new file: a bundle of both CAs.
        let next = dir.path().join("next.crt");
        std::fs::write(&next, format!("{old_pem}{new_pem}")).unwrap();
        let link = dir.path().join("link.crt");
        std::os::unix::fs::symlink(&next, &link).unwrap();
        std::fs::rename(&link, &path).unwrap();
        assert!(ca.reload().unwrap());
        assert!(verified(&ca, &new_client), "the new CA is trusted");
        assert!(verified(&ca, &old_client));

        // A file caught half-written, or with no CA: the bundle in use stays.
        for invalid in ["-----BEGIN CERTIFICATE-----\nMII", ""] {
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, invalid).unwrap();
            assert!(ca.reload().is_err(), "{invalid:?} is refused");
            assert!(
                verified(&ca, &new_client),
                "the previous bundle stays in use"
            );
        }
        std::fs::write(&path, &new_pem).unwrap();
        assert!(ca.reload().unwrap());
        assert!(
            !verified(&ca, &old_client),
            "a CA taken out is no longer trusted"
        );
    }
}
