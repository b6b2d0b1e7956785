//! Check as a unary gRPC call, framed here rather than by tonic's server so
//! that whatever comes in gets a `CheckResponse`: tonic answers an
//! oversized or undecodable message with a gRPC error, which Envoy with
//! `failure_mode_allow` lets through. Each answer is also due before the
//! caller's `grpc-timeout`, for the same reason: a check that outlives
//! Envoy's timeout is an error to Envoy.

use std::{sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::{BodyExt, Empty, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message;
use tokenmesh_proto::envoy_auth_v3::{CheckRequest, CheckResponse};

use super::{ExtAuthz, denied, malformed};
use crate::{
    mesh::Refusal,
    proxy::{Body, BoxError},
};

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";
/// The largest CheckRequest read (tonic's default limit). Envoy's own
/// header limit is 60 KiB by default; only a large `with_request_body`
/// comes near.
const MAX_MESSAGE: usize = 4 << 20;
/// How long a check may take when the caller sets no deadline: more than
/// one call to the token server (5 s each).
const NO_DEADLINE: Duration = Duration::from_secs(12);
/// gRPC's length-prefixed message: a compression flag and a u32 length.
const PREFIX: usize = 5;
const GRPC_UNIMPLEMENTED: &str = "12";

/// One HTTP/2 request to the ext_authz listener, for [`crate::proxy::serve`].
pub async fn serve_grpc(
    authz: Arc<ExtAuthz>,
    request: http::Request<Incoming>,
) -> http::Response<Body> {
    if request.uri().path() != CHECK {
        return unimplemented();
    }
    let budget = budget(request.headers());
    let answer = match tokio::time::timeout(budget, decide(&authz, request)).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::debug!(
                ?budget,
                "ext_authz check not decided within the caller's deadline"
            );
            denied(&Refusal::Unavailable("no decision in time".into()))
        }
    };
    answer_with(&answer)
}

async fn decide(authz: &ExtAuthz, request: http::Request<Incoming>) -> CheckResponse {
    let body = match Limited::new(request.into_body(), PREFIX + MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return super::denied_with(
                413,
                super::RPC_INVALID_ARGUMENT,
                None,
                "the request is too large to check".into(),
            );
        }
        // The caller reset the stream: nobody reads this answer.
        Err(_) => return malformed("the request did not arrive whole"),
    };
    match message(&body).map(CheckRequest::decode) {
        Some(Ok(check)) => authz.check(&check).await,
        _ => malformed("not a CheckRequest"),
    }
}

/// The one uncompressed message of a unary request body.
fn message(body: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = body.split_first_chunk::<PREFIX>()?;
    let [compressed, length @ ..] = *prefix;
    let length = usize::try_from(u32::from_be_bytes(length)).ok()?;
    (compressed == 0 && message.len() == length).then_some(message)
}

/// `grpc-timeout` (`1-8 digits` and a unit, gRPC over HTTP/2).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match value.get(digits.len()..)? {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long the decision may take: the caller's deadline less the time the
/// answer needs to get back (a tenth, 10 ms at least, half at most).
fn budget(headers: &HeaderMap) -> Duration {
    let Some(timeout) = grpc_timeout(headers) else {
        return NO_DEADLINE;
    };
    let margin = (timeout / 10)
        .max(Duration::from_millis(10))
        .min(timeout / 2);
    (timeout - margin).min(NO_DEADLINE)
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// OK with one message: the answer, then `grpc-status: 0`.
fn answer_with(answer: &CheckResponse) -> Response<Body> {
    let length = answer.encoded_len();
    let mut framed = BytesMut::with_capacity(PREFIX + length);
    framed.put_u8(0);
    // A CheckResponse is a few hundred bytes: far from u32::MAX.
    framed.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    answer.encode_raw(&mut framed);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, BoxError>(Frame::data(framed.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    grpc_response(StreamBody::new(tokio_stream::iter(frames)).boxed_unsync())
}

/// A trailers-only UNIMPLEMENTED: Envoy only ever calls Check.
fn unimplemented() -> Response<Body> {
    let body = Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = grpc_response(body);
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static(GRPC_UNIMPLEMENTED));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_str(timeout).unwrap());
        headers
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        for (value, expected) in [
            ("200m", Some(Duration::from_millis(200))),
            ("5S", Some(Duration::from_secs(5))),
            ("1M", Some(Duration::from_secs(60))),
            ("1H", Some(Duration::from_secs(3600))),
            ("250000u", Some(Duration::from_millis(250))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789m", None),
            ("m", None),
            ("+5S", None),
            ("5s", None),
            ("", None),
        ] {
            assert_eq!(grpc_timeout(&headers(value)), expected, "{value:?}");
        }
    }

    #[test]
    fn the_answer_is_due_before_the_callers_deadline() {
        assert_eq!(budget(&headers("200m")), Duration::from_millis(180));
        assert_eq!(budget(&headers("50m")), Duration::from_millis(40));
        assert_eq!(budget(&headers("10m")), Duration::from_millis(5));
        assert_eq!(budget(&headers("1H")), NO_DEADLINE);
        assert_eq!(budget(&HeaderMap::new()), NO_DEADLINE);
    }

    #[test]
    fn only_one_whole_uncompressed_message_is_read() {
        let message_of = |bytes: &[u8]| message(bytes).map(<[u8]>::to_vec);
        assert_eq!(message_of(&[0, 0, 0, 0, 2, 7, 8]), Some(vec![7, 8]));
        assert_eq!(message_of(&[0, 0, 0, 0, 0]), Some(vec![]));
        assert_eq!(message_of(&[1, 0, 0, 0, 2, 7, 8]), None, "compressed");
        assert_eq!(message_of(&[0, 0, 0, 0, 3, 7, 8]), None, "cut short");
        assert_eq!(message_of(&[0, 0, 0, 0, 1, 7, 8]), None, "more after it");
        assert_eq!(message_of(&[0, 0, 0]), None);
    }
}
