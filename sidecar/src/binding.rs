//! Certificate-bound tokens inbound (RFC 8705 §3): a token with
//! `cnf.x5t#S256` is honoured only over a TLS connection whose client
//! certificate has that thumbprint.

use tokenmesh_tokens::{
    claims::{AccessTokenClaims, Confirmation},
    listen::tls::PeerCertificate,
};

use crate::mesh::Refusal;

/// Refuses a certificate-bound token that came without its certificate.
pub fn check_certificate(
    claims: &AccessTokenClaims,
    peer: Option<&PeerCertificate>,
) -> Result<(), Refusal> {
    check_certificate_der(claims, peer.map(|p| p.der.as_ref()))
}

/// [`check_certificate`] with the certificate's DER (Envoy's ext_authz
/// passes it as PEM).
pub fn check_certificate_der(
    claims: &AccessTokenClaims,
    der: Option<&[u8]>,
) -> Result<(), Refusal> {
    if Confirmation::holds_certificate(claims.cnf.as_ref(), der) {
        Ok(())
    } else {
        Err(Refusal::Invalid(
            "the token is bound to a client certificate this connection did not present".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rustls_pki_types::CertificateDer;
    use tokenmesh_tokens::claims::{Audience, x5t_s256};

    use super::*;

    fn claims(cnf: Option<Confirmation>) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://issuer.test".into(),
            sub: "orders".into(),
            aud: Audience::One("payments".into()),
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "jti".into(),
            client_id: "orders".into(),
            scope: String::new(),
            scope_exp: BTreeMap::new(),
            grant_id: None,
            act: None,
            may_act: None,
            embedded_tokens: BTreeMap::new(),
            cnf,
            extra: serde_json::Map::new(),
        }
    }

    fn peer(der: &[u8]) -> PeerCertificate {
        PeerCertificate {
            der: CertificateDer::from(der.to_vec()),
            chain_verified: true,
        }
    }

    #[test]
    fn a_bound_token_needs_its_certificate_on_the_connection() {
        let bound = claims(Some(Confirmation {
            x5t_s256: Some(x5t_s256(b"holder's certificate")),
            jkt: None,
        }));
        assert!(check_certificate(&bound, Some(&peer(b"holder's certificate"))).is_ok());
        for presented in [None, Some(peer(b"another certificate"))] {
            assert!(matches!(
                check_certificate(&bound, presented.as_ref()),
                Err(Refusal::Invalid(_))
            ));
        }
        // A bearer token, with or without a certificate.
        assert!(check_certificate(&claims(None), None).is_ok());
        assert!(check_certificate(&claims(None), Some(&peer(b"any"))).is_ok());
    }
}
