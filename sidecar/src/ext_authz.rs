//! Envoy's external authorization API (`envoy.service.auth.v3.Authorization`),
//! so an existing Envoy or Istio mesh can use the sidecar to validate inbound
//! tokens: OK carries the JWT to forward in `authorization`, a refusal the 401.
//!
//! Every Check is answered with a decision, never a gRPC error: Envoy lets a
//! request through on an error when `failure_mode_allow` is set, so an
//! error a caller can provoke (a token the sidecar cannot introspect, a
//! token server that is away or slow) would be a way around the check. A
//! missing decision source is a denied 503 instead.

mod wire;

use std::sync::Arc;

use tokenmesh_proto::envoy_auth_v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse, RpcStatus, check_response::HttpResponse,
};

pub use self::wire::serve_grpc;
use crate::{
    mesh::{
        Mesh, Refusal,
        proof::{AuthScheme, Presented},
    },
    proxy::{
        CHALLENGE, DPOP_HEADER, DPOP_INVALID_PROOF, DPOP_USE_NONCE, INVALID_REQUEST,
        MANY_CREDENTIALS, NONCE_HEADER, credential_in,
    },
};

/// `OVERWRITE_IF_EXISTS_OR_ADD` of Envoy's HeaderAppendAction.
const OVERWRITE: i32 = 2;
/// google.rpc.Code values.
const RPC_OK: i32 = 0;
const RPC_INVALID_ARGUMENT: i32 = 3;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_UNAVAILABLE: i32 = 14;
const RPC_UNAUTHENTICATED: i32 = 16;

pub struct ExtAuthz {
    pub mesh: Arc<Mesh>,
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: OVERWRITE,
    }
}

/// The client certificate Envoy terminated TLS with
/// (`attributes.source.certificate`: URL-encoded PEM, with the ext_authz
/// filter's `include_peer_certificate`), as DER.
fn source_certificate(request: &CheckRequest) -> Option<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let encoded = &request.attributes.as_ref()?.source.as_ref()?.certificate;
    let pem = percent_encoding::percent_decode_str(encoded).collect::<Vec<u8>>();
    CertificateDer::from_pem_slice(&pem)
        .ok()
        .map(|der| der.to_vec())
}

fn http_of(
    request: &CheckRequest,
) -> Option<&tokenmesh_proto::envoy_auth_v3::attribute_context::HttpRequest> {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
}

/// Every `authorization` value in the header maps Envoy sends (the
/// `headers` map, or `header_map` with `encode_raw_headers`).
fn authorizations(request: &CheckRequest) -> Vec<&[u8]> {
    header_values(request, "authorization")
}

/// Every value of header `name` in either map.
fn header_values<'a>(request: &'a CheckRequest, name: &str) -> Vec<&'a [u8]> {
    let Some(http) = http_of(request) else {
        return Vec::new();
    };
    let named = |key: &str| key.eq_ignore_ascii_case(name);
    let mut values: Vec<&[u8]> = http
        .headers
        .iter()
        .filter(|(k, _)| named(k))
        .map(|(_, v)| v.as_bytes())
        .collect();
    let listed = http.header_map.iter().flat_map(|m| &m.headers);
    values.extend(listed.filter(|h| named(&h.key)).map(|h| {
        if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        }
    }));
    values
}

/// More than one credential came: which one is checked and which one the
/// application reads need not agree.
#[derive(Debug, PartialEq, Eq)]
struct ManyCredentials;

/// The Bearer or DPoP token of the one Authorization value, if it is one.
fn only_credential<'a>(
    values: &[&'a [u8]],
) -> Result<Option<(AuthScheme, &'a str)>, ManyCredentials> {
    let credential = match values {
        [] => None,
        [value] => credential_in(value),
        _ => return Err(ManyCredentials),
    };
    // Envoy joins repeated headers with a comma, which no bearer token
    // holds (RFC 6750's b64token): a comma means a second credential.
    match credential {
        Some((_, token)) if token.contains(',') => Err(ManyCredentials),
        credential => Ok(credential),
    }
}

/// The URL the client called, from Envoy's attributes (query dropped).
fn called_url(request: &CheckRequest) -> String {
    let Some(http) = http_of(request) else {
        return String::new();
    };
    let scheme = if http.scheme.is_empty() {
        "http"
    } else {
        &http.scheme
    };
    let path = http.path.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{}{path}", http.host)
}

/// A denied answer: the HTTP status Envoy sends, the gRPC code, the
/// challenge (if any) and the body.
fn denied_with(http: i32, rpc: i32, challenge: Option<&str>, message: String) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: rpc,
            message: message.clone(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http }),
            headers: challenge
                .map(|c| header("www-authenticate", c.into()))
                .into_iter()
                .collect(),
            body: format!("{message}\n"),
        })),
    }
}

fn denied(refusal: &Refusal) -> CheckResponse {
    let message = refusal.public();
    match refusal {
        // Every 401 carries the same challenge as the proxy's.
        Refusal::Missing | Refusal::Invalid(_) => {
            denied_with(401, RPC_UNAUTHENTICATED, Some(CHALLENGE), message)
        }
        Refusal::Proof(_) => {
            denied_with(401, RPC_UNAUTHENTICATED, Some(DPOP_INVALID_PROOF), message)
        }
        Refusal::UseNonce(nonce) => {
            let mut response = denied_with(401, RPC_UNAUTHENTICATED, Some(DPOP_USE_NONCE), message);
            if let Some(HttpResponse::DeniedResponse(denied)) = &mut response.http_response {
                denied.headers.push(header(NONCE_HEADER, nonce.clone()));
            }
            response
        }
        Refusal::NoCertificate(_) => denied_with(502, RPC_UNAVAILABLE, None, message),
        Refusal::Forbidden(_) | Refusal::BoundShare(_) => denied_with(
            403,
            RPC_PERMISSION_DENIED,
            Some("Bearer error=\"insufficient_scope\""),
            message,
        ),
        // Not the token's fault, and not a transport error either.
        Refusal::Unavailable(_) => denied_with(503, RPC_UNAVAILABLE, None, message),
    }
}

/// 400 for a request that cannot be checked as it is.
fn malformed(message: &str) -> CheckResponse {
    denied_with(400, RPC_INVALID_ARGUMENT, None, message.into())
}

impl ExtAuthz {
    /// The decision on one request: OK with the JWT the application gets,
    /// or a denial.
    pub async fn check(&self, check: &CheckRequest) -> CheckResponse {
        let (scheme, token) = match only_credential(&authorizations(check)) {
            Err(ManyCredentials) => {
                return denied_with(
                    400,
                    RPC_INVALID_ARGUMENT,
                    Some(INVALID_REQUEST),
                    MANY_CREDENTIALS.into(),
                );
            }
            Ok(None) => return denied(&Refusal::Missing),
            Ok(Some(credential)) => credential,
        };
        let proofs = header_values(check, DPOP_HEADER);
        let url = called_url(check);
        let presented = Presented {
            scheme,
            token,
            proofs: &proofs,
            method: http_of(check).map_or("", |http| http.method.as_str()),
            url: &url,
        };
        // A certificate-bound token: Envoy's peer certificate must be its.
        let verified = self
            .mesh
            .validate_presented(&presented)
            .await
            .and_then(|verified| {
                let der = source_certificate(check);
                crate::binding::check_certificate_der(&verified.claims, der.as_deref())
                    .map(|()| verified)
            });
        match verified {
            Ok(verified) => CheckResponse {
                status: Some(RpcStatus {
                    code: RPC_OK,
                    message: String::new(),
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("authorization", format!("Bearer {}", verified.jwt))],
                    // The proof stays here: the application could replay it.
                    headers_to_remove: vec![DPOP_HEADER.into()],
                })),
            },
            Err(refusal) => {
                tracing::debug!(reason = %refusal, "ext_authz check refused");
                denied(&refusal)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(answer: &CheckResponse) -> (i32, String) {
        let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
            return (0, String::new());
        };
        let value = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "www-authenticate")
            .map(|h| h.value.clone())
            .unwrap_or_default();
        (denied.status.as_ref().map_or(0, |s| s.code), value)
    }

    fn request(headers: &[(&str, &str)], raw: &[(&str, &[u8])]) -> CheckRequest {
        use tokenmesh_proto::envoy_auth_v3::{
            AttributeContext, HeaderMap,
            attribute_context::{HttpRequest, Request},
        };
        let header_map = HeaderMap {
            headers: raw
                .iter()
                .map(|(key, value)| HeaderValue {
                    key: (*key).into(),
                    value: String::new(),
                    raw_value: value.to_vec(),
                })
                .collect(),
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).into(), (*v).into()))
                            .collect(),
                        header_map: Some(header_map),
                        ..Default::default()
                    }),
                }),
                source: None,
            }),
        }
    }

    #[test]
    fn envoys_peer_certificate_is_read_from_url_encoded_pem() {
        use tokenmesh_proto::envoy_auth_v3::{AttributeContext, attribute_context::Peer};
        let with = |certificate: &str| CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    certificate: certificate.into(),
                }),
                request: None,
            }),
        };
        // Envoy's encoding: the PEM with its newlines, `+`, `/` and `=` escaped.
        let pem = "-----BEGIN%20CERTIFICATE-----%0AAQID%2B%2F8%3D%0A-----END%20CERTIFICATE-----%0A";
        assert_eq!(
            source_certificate(&with(pem)),
            Some(vec![1, 2, 3, 251, 255])
        );
        assert_eq!(source_certificate(&with("")), None);
        assert_eq!(source_certificate(&CheckRequest::default()), None);
    }

    #[test]
    fn every_authorization_value_is_counted_in_either_map() {
        assert!(authorizations(&CheckRequest::default()).is_empty());
        let one = request(&[("authorization", "Bearer a")], &[]);
        assert_eq!(authorizations(&one), [&b"Bearer a"[..]]);
        let two = request(
            &[],
            &[
                ("authorization", b"Bearer a"),
                ("Authorization", b"Basic b"),
            ],
        );
        assert_eq!(authorizations(&two).len(), 2);
        let both = request(
            &[("authorization", "Bearer a")],
            &[("authorization", b"Bearer b"), ("cookie", b"c")],
        );
        assert_eq!(authorizations(&both).len(), 2);
    }

    #[test]
    fn one_credential_or_a_refusal() {
        assert_eq!(only_credential(&[]), Ok(None));
        assert_eq!(
            only_credential(&[b"Bearer a.b.c"]),
            Ok(Some((AuthScheme::Bearer, "a.b.c")))
        );
        assert_eq!(
            only_credential(&[b"DPoP a.b.c"]),
            Ok(Some((AuthScheme::Dpop, "a.b.c")))
        );
        assert_eq!(only_credential(&[b"Basic eA=="]), Ok(None));
        // A Digest credential has commas of its own: not a bearer token.
        assert_eq!(only_credential(&[b"Digest a=1, b=2"]), Ok(None));
        assert_eq!(
            only_credential(&[b"Bearer a", b"Bearer a"]),
            Err(ManyCredentials)
        );
        // As Envoy joins two headers into one value.
        assert_eq!(
            only_credential(&[b"Bearer a.b.c,Basic eA=="]),
            Err(ManyCredentials)
        );
        assert_eq!(
            only_credential(&[b"Bearer a.b.c, Bearer x"]),
            Err(ManyCredentials)
        );
    }

    #[test]
    fn an_undecided_check_is_a_denied_503_without_challenge() {
        let answer = denied(&Refusal::Unavailable("down".into()));
        assert_eq!(challenge(&answer), (503, String::new()));
        assert_ne!(answer.status.map(|s| s.code), Some(RPC_OK));
    }

    /// `--dpop-require-nonce` behind Envoy: the denial carries the DPoP
    /// challenge and the nonce, as the proxy's 401 does.
    #[test]
    fn a_nonce_refusal_hands_out_the_nonce() {
        let answer = denied(&Refusal::UseNonce("n1".into()));
        assert_eq!(challenge(&answer), (401, DPOP_USE_NONCE.to_owned()));
        let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
            panic!("not denied");
        };
        let nonce = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == NONCE_HEADER);
        assert_eq!(nonce.map(|h| h.value.as_str()), Some("n1"));
    }

    #[test]
    fn every_401_says_invalid_token() {
        for refusal in [Refusal::Missing, Refusal::Invalid("expired".into())] {
            assert_eq!(
                challenge(&denied(&refusal)),
                (401, "Bearer error=\"invalid_token\"".to_owned()),
                "{refusal:?}"
            );
        }
    }
}
