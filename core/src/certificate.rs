//! The TLS client certificate of a request (RFC 8705), as client
//! authentication and token binding see it: its SHA-256 thumbprint, its
//! subject and SANs, and its public key as a JWK.

use std::net::IpAddr;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tokenmesh_crds::TokenBinding;
use tokenmesh_tokens::{
    claims::{AccessTokenClaims, Confirmation},
    jwk::Jwk,
};
use x509_parser::{
    certificate::X509Certificate,
    extensions::GeneralName,
    objects::{oid_registry, oid2abbrev},
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519},
    prelude::FromDer,
    public_key::PublicKey,
    x509::X509Name,
};

use crate::{
    error::OAuthError,
    registry::{Client, ClientAuth},
};

/// The end-entity certificate a client presented in the TLS handshake
/// (which proved it holds the private key).
#[derive(Clone)]
pub struct ClientCertificate {
    der: Vec<u8>,
    /// Whether its chain verified against the listener's client CA bundle.
    chain_verified: bool,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint())
            .field("chain_verified", &self.chain_verified)
            .finish()
    }
}

/// The one name a `tls_client_auth` client is registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateName {
    /// RFC 4514 order (most specific first): attribute type (upper case)
    /// and value.
    SubjectDn(Vec<(String, String)>),
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

impl ClientCertificate {
    pub fn new(der: Vec<u8>, chain_verified: bool) -> Self {
        Self {
            der,
            chain_verified,
        }
    }

    pub fn chain_verified(&self) -> bool {
        self.chain_verified
    }

    /// `x5t#S256`: base64url of the SHA-256 of the DER (RFC 8705 §3.1).
    pub fn thumbprint(&self) -> String {
        thumbprint_of(&self.der)
    }

    fn parsed(&self) -> Option<X509Certificate<'_>> {
        X509Certificate::from_der(&self.der)
            .ok()
            .map(|(_, cert)| cert)
    }

    /// Whether the certificate carries `name` (the subject DN, or one SAN).
    pub fn has_name(&self, name: &CertificateName) -> bool {
        let Some(cert) = self.parsed() else {
            return false;
        };
        if let CertificateName::SubjectDn(expected) = name {
            return dn_attributes(cert.subject()).as_ref() == Some(expected);
        }
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        san.value
            .general_names
            .iter()
            .any(|general| match (general, name) {
                (GeneralName::DNSName(dns), CertificateName::Dns(want)) => {
                    dns.eq_ignore_ascii_case(want)
                }
                (GeneralName::URI(uri), CertificateName::Uri(want)) => uri == want,
                (GeneralName::RFC822Name(email), CertificateName::Email(want)) => email == want,
                (GeneralName::IPAddress(bytes), CertificateName::Ip(want)) => {
                    ip_of(bytes) == Some(*want)
                }
                _ => false,
            })
    }

    /// The certificate's public key as a JWK (key members only).
    pub fn public_jwk(&self) -> Option<Jwk> {
        let cert = self.parsed()?;
        let spki = cert.public_key();
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match spki.parsed().ok()? {
            PublicKey::RSA(rsa) => Some(Jwk {
                kty: "RSA".into(),
                n: Some(b64(strip_zeros(rsa.modulus))),
                e: Some(b64(strip_zeros(rsa.exponent))),
                ..Jwk::default()
            }),
            PublicKey::EC(point) if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
                let (crv, len) = if curve == OID_EC_P256 {
                    ("P-256", 32)
                } else if curve == OID_NIST_EC_P384 {
                    ("P-384", 48)
                } else {
                    return None;
                };
                // Uncompressed point: 0x04 || x || y.
                let data = point.data();
                if data.len() != 1 + 2 * len || data.first() != Some(&4) {
                    return None;
                }
                Some(Jwk {
                    kty: "EC".into(),
                    crv: Some(crv.into()),
                    x: Some(b64(data.get(1..1 + len)?)),
                    y: Some(b64(data.get(1 + len..)?)),
                    ..Jwk::default()
                })
            }
            _ if spki.algorithm.algorithm == OID_SIG_ED25519 => Some(Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(b64(&spki.subject_public_key.data)),
                ..Jwk::default()
            }),
            _ => None,
        }
    }
}

/// base64url(SHA-256(der)).
pub fn thumbprint_of(der: &[u8]) -> String {
    tokenmesh_tokens::claims::x5t_s256(der)
}

/// Whether two JWKs are the same public key (their key members match).
pub fn same_key(a: &Jwk, b: &Jwk) -> bool {
    a.kty == b.kty && a.crv == b.crv && a.x == b.x && a.y == b.y && a.n == b.n && a.e == b.e
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes.get(start..).unwrap_or(bytes)
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The subject's attributes in RFC 4514 order (the reverse of the DER's);
/// `None` when one is not a string or of an unknown type.
fn dn_attributes(name: &X509Name<'_>) -> Option<Vec<(String, String)>> {
    let mut attributes = Vec::new();
    for attribute in name.iter_attributes() {
        let kind = oid2abbrev(attribute.attr_type(), oid_registry()).ok()?;
        let value = attribute.as_str().ok()?;
        attributes.push((kind.to_ascii_uppercase(), value.to_owned()));
    }
    attributes.reverse();
    Some(attributes)
}

/// Parses a configured RFC 4514 DN (`CN=orders,O=shop`): attribute types
/// upper case, values unescaped; `None` when malformed.
pub fn parse_dn(text: &str) -> Option<Vec<(String, String)>> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut()?;
        match c {
            '\\' => {
                current.push(c);
                current.push(chars.next()?);
            }
            ',' => parts.push(String::new()),
            _ => current.push(c),
        }
    }
    parts
        .iter()
        .map(|part| {
            let (kind, value) = part.split_once('=')?;
            let kind = kind.trim().to_ascii_uppercase();
            (!kind.is_empty()).then(|| (kind, unescape(value.trim())))
        })
        .collect()
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

/// The `cnf` of a new token of `client`: the certificate's thumbprint when
/// the client's tokens are certificate-bound (`accessToken.binding: mtls`,
/// or it authenticated with a certificate) or, with `bind_presented`,
/// whenever it presented one. A bound client without a certificate is
/// refused.
pub fn confirmation(
    client: &Client,
    certificate: Option<&ClientCertificate>,
    bind_presented: bool,
) -> Result<Option<Confirmation>, OAuthError> {
    let bound = bind_presented
        || client.binding == TokenBinding::Mtls
        || matches!(
            client.auth,
            ClientAuth::Certificate(_) | ClientAuth::SelfSignedCertificate { .. }
        );
    match certificate {
        Some(certificate) if bound => Ok(Some(Confirmation {
            x5t_s256: Some(certificate.thumbprint()),
            jkt: None,
        })),
        None if client.binding == TokenBinding::Mtls => Err(OAuthError::InvalidRequest(
            "this client's tokens are bound to its TLS client certificate: present one".into(),
        )),
        _ => Ok(None),
    }
}

/// RFC 8705 §3: a certificate-bound token is honoured only from the holder
/// of its certificate. `name` names the token in the refusal.
pub fn check_holder(
    claims: &AccessTokenClaims,
    certificate: Option<&ClientCertificate>,
    name: &'static str,
) -> Result<(), OAuthError> {
    let held =
        Confirmation::holds_certificate(claims.cnf.as_ref(), certificate.map(|c| c.der.as_slice()));
    if held {
        Ok(())
    } else {
        tracing::debug!(parameter = name, jti = %claims.jti, "bound token refused: the caller does not hold its certificate");
        Err(OAuthError::InvalidGrant(
            format!("the {name} is bound to a TLS client certificate the caller did not present")
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;
    use crate::{
        client_auth::{Credentials, authenticate, refused},
        testing::{FakePorts, ISSUER, NOW, doc, registry, scopes},
    };

    /// A self-signed certificate `CN=orders, O=shop` with a SAN of each kind.
    fn certificate(key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["orders.shop.svc".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "shop");
        params.distinguished_name.push(DnType::CommonName, "orders");
        params.subject_alt_names.extend([
            SanType::URI(
                "spiffe://cluster.local/ns/shop/sa/orders"
                    .try_into()
                    .unwrap(),
            ),
            SanType::Rfc822Name("orders@shop.example".try_into().unwrap()),
            SanType::IpAddress("10.0.0.7".parse().unwrap()),
        ]);
        params.self_signed(key).unwrap().der().to_vec()
    }

    fn mtls_registry(jwk: &Jwk, name: &str) -> crate::registry::Registry {
        let jwk = serde_json::to_string(jwk).unwrap();
        let client = |id: &str, auth: &str, binding: &str| {
            doc(
                "OAuthClient",
                id,
                &format!(
                    "  clientId: {id}\n  authentication: {auth}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  accessToken: {{binding: {binding}}}\n"
                ),
            )
        };
        registry(
            &(scopes()
                + &client(
                    "orders",
                    &format!("{{method: tls_client_auth, tlsClientAuth: {{{name}}}}}"),
                    "none",
                )
                + &client(
                    "device",
                    &format!("{{method: self_signed_tls_client_auth, jwks: {{keys: [{jwk}]}}}}"),
                    "none",
                )
                + &client(
                    "bound",
                    "{method: client_secret_basic, secretRef: {name: s, key: k}}",
                    "mtls",
                )),
        )
    }

    async fn authenticate_with(
        reg: &crate::registry::Registry,
        id: &str,
        certificate: &ClientCertificate,
    ) -> Result<String, OAuthError> {
        let credentials = Credentials::Certificate {
            id: id.into(),
            certificate: certificate.clone(),
        };
        let audience = crate::client_auth::Audience {
            issuer: ISSUER,
            token_endpoint: ISSUER,
            endpoint: ISSUER,
        };
        authenticate(&FakePorts::default(), reg, &credentials, audience, NOW)
            .await
            .map(|client| client.id.clone())
    }

    #[tokio::test]
    async fn tls_client_auth_needs_the_ca_and_the_registered_name() {
        let key = KeyPair::generate().unwrap();
        let der = certificate(&key);
        let verified = ClientCertificate::new(der.clone(), true);
        let jwk = verified.public_jwk().unwrap();
        for name in [
            "subjectDn: \"CN=orders, O=shop\"",
            "sanDns: orders.shop.svc",
            "sanUri: \"spiffe://cluster.local/ns/shop/sa/orders\"",
            "sanEmail: orders@shop.example",
            "sanIp: 10.0.0.7",
        ] {
            let reg = mtls_registry(&jwk, name);
            assert_eq!(
                authenticate_with(&reg, "orders", &verified).await.unwrap(),
                "orders",
                "{name}"
            );
            // The same certificate, not chained to the client CA.
            let unverified = ClientCertificate::new(der.clone(), false);
            assert_eq!(
                authenticate_with(&reg, "orders", &unverified).await,
                Err(refused(
                    "the client certificate is not issued by a trusted client CA"
                )),
                "{name}"
            );
        }
        for other in [
            "subjectDn: \"CN=payments, O=shop\"",
            "subjectDn: \"O=shop, CN=orders\"",
            "sanDns: payments.shop.svc",
            "sanUri: \"spiffe://cluster.local/ns/shop/sa/payments\"",
            "sanEmail: payments@shop.example",
            "sanIp: 10.0.0.8",
        ] {
            let reg = mtls_registry(&jwk, other);
            assert_eq!(
                authenticate_with(&reg, "orders", &verified).await,
                Err(refused(
                    "the client certificate does not identify this client"
                )),
                "{other}"
            );
        }
    }

    #[tokio::test]
    async fn self_signed_tls_client_auth_matches_the_key() {
        let key = KeyPair::generate().unwrap();
        let own = ClientCertificate::new(certificate(&key), false);
        let reg = mtls_registry(&own.public_jwk().unwrap(), "sanDns: x");
        assert_eq!(
            authenticate_with(&reg, "device", &own).await.unwrap(),
            "device"
        );
        let other = ClientCertificate::new(certificate(&KeyPair::generate().unwrap()), true);
        assert_eq!(
            authenticate_with(&reg, "device", &other).await,
            Err(refused(
                "the client certificate does not identify this client"
            ))
        );
        // A certificate is not a secret: a secret client is not authenticated by one.
        assert_eq!(
            authenticate_with(&reg, "bound", &own).await,
            Err(refused("the client authenticates with another method"))
        );
    }

    #[test]
    fn tokens_are_bound_and_honoured_only_from_the_holder() {
        let key = KeyPair::generate().unwrap();
        let own = ClientCertificate::new(certificate(&key), true);
        let other = ClientCertificate::new(certificate(&KeyPair::generate().unwrap()), true);
        let reg = mtls_registry(&own.public_jwk().unwrap(), "sanDns: orders.shop.svc");
        let client = |id: &str| reg.client(id).unwrap().clone();
        let x5t = |c: Option<Confirmation>| c.and_then(|c| c.x5t_s256);

        // A certificate client's tokens are bound; binding: mtls needs one.
        assert_eq!(
            x5t(confirmation(&client("orders"), Some(&own), false).unwrap()),
            Some(own.thumbprint())
        );
        assert!(matches!(
            confirmation(&client("bound"), None, false),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert_eq!(
            x5t(confirmation(&client("bound"), Some(&own), false).unwrap()),
            Some(own.thumbprint())
        );

        let mut claims = AccessTokenClaims {
            iss: ISSUER.into(),
            sub: "orders".into(),
            aud: tokenmesh_tokens::claims::Audience::One("orders".into()),
            exp: NOW + 60,
            iat: NOW,
            nbf: NOW,
            jti: "jti".into(),
            client_id: "orders".into(),
            scope: "orders:read".into(),
            scope_exp: Default::default(),
            grant_id: None,
            act: None,
            may_act: None,
            embedded_tokens: Default::default(),
            cnf: None,
            extra: Default::default(),
        };
        claims.cnf = Some(Confirmation {
            x5t_s256: Some(own.thumbprint()),
            jkt: None,
        });
        assert!(check_holder(&claims, Some(&own), "subject_token").is_ok());
        for presented in [None, Some(&other)] {
            assert!(matches!(
                check_holder(&claims, presented, "subject_token"),
                Err(OAuthError::InvalidGrant(_))
            ));
        }
        claims.cnf = None;
        assert!(check_holder(&claims, None, "subject_token").is_ok());
    }
}
