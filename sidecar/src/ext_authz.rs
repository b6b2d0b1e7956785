//! Envoy's external authorization API (`envoy.service.auth.v3.Authorization`),
//! so an existing Envoy or Istio mesh can use the sidecar to validate inbound
//! tokens: OK carries the JWT to forward in `authorization`, a refusal the 401.

use std::sync::Arc;

use http_body_util::BodyExt;
use tokenmesh_proto::envoy_auth_v3::authorization_server::AuthorizationServer;
use tokenmesh_proto::envoy_auth_v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse, RpcStatus, authorization_server::Authorization, check_response::HttpResponse,
};
use tonic::{Request, Response, Status, codegen::Service};

use crate::{
    mesh::{Mesh, Refusal},
    proxy::{self, CHALLENGE},
};

/// One HTTP/2 request to the gRPC service, for [`proxy::serve`].
pub async fn serve_grpc(
    mut service: AuthorizationServer<ExtAuthz>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<proxy::Body> {
    // The generated server never fails (its error type is `Infallible`).
    let Ok(()) = std::future::poll_fn(|cx| {
        Service::<http::Request<hyper::body::Incoming>>::poll_ready(&mut service, cx)
    })
    .await;
    let Ok(response) = service.call(request).await;
    response.map(|body| body.map_err(Into::into).boxed_unsync())
}

/// `OVERWRITE_IF_EXISTS_OR_ADD` of Envoy's HeaderAppendAction.
const OVERWRITE: i32 = 2;
/// google.rpc.Code values.
const RPC_OK: i32 = 0;
const RPC_UNAUTHENTICATED: i32 = 16;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_UNAVAILABLE: i32 = 14;

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

/// The `authorization` header, from the header map Envoy sends (either form).
fn authorization(request: &CheckRequest) -> Option<String> {
    let http = request
        .attributes
        .as_ref()?
        .request
        .as_ref()?
        .http
        .as_ref()?;
    if let Some(value) = http
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v)
    {
        return Some(value.clone());
    }
    let map = http.header_map.as_ref()?;
    map.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("authorization"))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
}

fn denied(refusal: &Refusal) -> CheckResponse {
    let (http, rpc, challenge) = match refusal {
        // Every 401 carries the same challenge as the proxy's.
        Refusal::Missing | Refusal::Invalid(_) => (401, RPC_UNAUTHENTICATED, CHALLENGE),
        Refusal::Forbidden(_) => (
            403,
            RPC_PERMISSION_DENIED,
            "Bearer error=\"insufficient_scope\"",
        ),
        Refusal::Unavailable(_) => (503, RPC_UNAVAILABLE, "Bearer"),
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: rpc,
            message: refusal.public(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http }),
            headers: vec![header("www-authenticate", challenge.into())],
            body: format!("{}\n", refusal.public()),
        })),
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let token = authorization(&check).and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        let answer = match token {
            None => denied(&Refusal::Missing),
            Some(token) => match self.mesh.validate(&token).await {
                Ok(verified) => CheckResponse {
                    status: Some(RpcStatus {
                        code: RPC_OK,
                        message: String::new(),
                    }),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers: vec![header("authorization", format!("Bearer {}", verified.jwt))],
                        headers_to_remove: Vec::new(),
                    })),
                },
                // No answer from the token server is an error, not a refusal:
                // Envoy then applies its failure_mode_allow / status_on_error.
                Err(Refusal::Unavailable(detail)) => {
                    tracing::warn!(%detail, "ext_authz check cannot be decided");
                    return Err(Status::unavailable("the token server is unavailable"));
                }
                Err(refusal) => {
                    tracing::debug!(reason = %refusal, "ext_authz check refused");
                    denied(&refusal)
                }
            },
        };
        Ok(Response::new(answer))
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
