"""Interoperability of the real token-server with authlib, PyJWT and requests."""

import secrets
import signal
import time
from urllib.parse import parse_qsl

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tokenserver import CLIENTS, HTTP_TIMEOUT, JWT_BEARER, PAYMENTS

ENDPOINTS = ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint")
AT_JWT = ("at+jwt", "application/at+jwt")
INTROSPECTION_JWT = "application/token-introspection+jwt"
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}


def audiences(claims):
    aud = claims["aud"]
    return {aud} if isinstance(aud, str) else set(aud)


def issue(srv, kind, **params):
    """An access token string: `jwt` from gateway (client_secret_basic), `opaque` from batch (private_key_jwt)."""
    return srv.fetch_token("gateway" if kind == "jwt" else "batch", **params)["access_token"]


def assert_oauth_error(resp, status, error):
    assert resp.status_code == status, resp.text
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    assert resp.json()["error"] == error, resp.text
    assert "no-store" in resp.headers.get("Cache-Control", ""), resp.headers


# ---------------------------------------------------------------- discovery


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"])
def test_discovery_document(server, path):
    resp = requests.get(server.base + path, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["issuer"] == server.base
    for name in ENDPOINTS:
        assert doc[name].startswith(server.base + "/"), (name, doc.get(name))
    assert "client_credentials" in doc["grant_types_supported"]
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt"} <= set(
        doc["token_endpoint_auth_methods_supported"])
    # Every POST endpoint is routed: without credentials it answers with an OAuth error, not 404/405.
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        resp = requests.post(doc[name], data={"grant_type": "client_credentials", "token": "x"}, timeout=HTTP_TIMEOUT)
        assert resp.status_code in (400, 401), (name, resp.status_code, resp.text)
        assert "error" in resp.json(), (name, resp.text)


def test_jwks_publishes_public_keys_only(server):
    keys = server.jwks()["keys"]
    assert keys and all(key.get("kid") for key in keys), keys
    assert any(key["kty"] == "EC" and key.get("crv") == "P-256" for key in keys), keys
    assert not any(PRIVATE_JWK_MEMBERS & set(key) for key in keys), "private key material in the JWKS"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics(server, path):
    resp = requests.get(server.base + path, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    if path == "/metrics":
        assert "# TYPE" in resp.text, resp.text[:500]


# ---------------------------------------------------------------- JWT access tokens


@pytest.mark.parametrize("client", ["gateway", "portal"])  # client_secret_basic, client_secret_post
def test_jwt_access_token_verifies_with_pyjwt(server, client):
    token = server.fetch_token(client, audience="orders")
    assert token["token_type"].lower() == "bearer"
    assert token["expires_in"] == CLIENTS[client][2]
    header, claims = server.verify(token["access_token"], audience="orders")
    assert header["alg"] == "ES256" and header["typ"] in AT_JWT and header["kid"], header
    assert audiences(claims) == {"orders"}
    assert claims["sub"] == claims["client_id"] == client
    assert claims["scope"] == "orders:read"
    assert claims["exp"] - claims["iat"] == CLIENTS[client][2]
    assert claims["nbf"] <= claims["iat"] <= time.time() + 5


@pytest.mark.parametrize("params, expected", [
    pytest.param({}, {"orders", PAYMENTS}, id="default-all"),
    pytest.param({"audience": "orders"}, {"orders"}, id="audience"),
    pytest.param({"resource": PAYMENTS}, {PAYMENTS}, id="resource"),
])
def test_audience_and_resource_select_aud(server, params, expected):
    _, claims = server.verify(issue(server, "jwt", **params), audience=sorted(expected)[0])
    assert audiences(claims) == expected


def test_prefix_scope_with_ttl(server):
    access_token = issue(server, "jwt", scope="orders:read video_stream_movie123")
    _, claims = server.verify(access_token, audience="orders")
    assert set(claims["scope"].split()) == {"orders:read", "video_stream_movie123"}
    assert set(claims["scope_exp"]) == {"video_stream_movie123"}, claims
    assert abs(claims["scope_exp"]["video_stream_movie123"] - (claims["iat"] + 60)) <= 1, claims
    info = server.introspect(access_token)  # scope expiry is reported at introspection too
    assert (info["scope"], info["scope_exp"]) == (claims["scope"], claims["scope_exp"]), info


# ---------------------------------------------------------------- private_key_jwt and opaque tokens


def test_private_key_jwt_opaque_token_and_assertion_replay(server):
    sess, sent = server.session("batch"), []
    sess.register_compliance_hook("access_token_response", lambda resp: sent.append(resp.request.body) or resp)
    token = sess.fetch_token(server.meta["token_endpoint"], grant_type="client_credentials", scope="orders:read")
    opaque = token["access_token"]
    assert opaque.count(".") != 2 and len(opaque) >= 43, "expected an opaque token of >= 256 bits"
    assert token["expires_in"] == 600

    info = server.introspect(opaque)
    assert info["active"] is True, info
    assert info["client_id"] == info["sub"] == "batch"
    assert info["scope"] == "orders:read"
    assert info["iss"] == server.base
    assert info["exp"] - info["iat"] == 600

    form = dict(parse_qsl(sent[0]))
    assert form["client_assertion_type"] == JWT_BEARER
    assert_oauth_error(requests.post(server.meta["token_endpoint"], data=form, timeout=HTTP_TIMEOUT),
                       401, "invalid_client")


@pytest.mark.parametrize("claims, accepted", [
    pytest.param(lambda srv: {"aud": srv.base}, True, id="aud-is-issuer"),
    pytest.param(lambda srv: {"aud": srv.base + "/elsewhere"}, False, id="aud-wrong"),
    pytest.param(lambda srv: {"exp": None}, False, id="exp-missing"),
    pytest.param(lambda srv: {"exp": int(time.time()) - 120}, False, id="expired"),
    pytest.param(lambda srv: {"iss": "gateway"}, False, id="iss-not-sub"),
    pytest.param(lambda srv: {"key": ec.generate_private_key(ec.SECP256R1())}, False, id="unregistered-key"),
])
def test_client_assertion_claims(server, claims, accepted):
    data = {"grant_type": "client_credentials", "scope": "orders:read", "client_assertion_type": JWT_BEARER,
            "client_assertion": server.assertion(**claims(server))}
    resp = requests.post(server.meta["token_endpoint"], data=data, timeout=HTTP_TIMEOUT)
    if accepted:
        assert resp.status_code == 200, resp.text
    else:
        assert_oauth_error(resp, 401, "invalid_client")


# ---------------------------------------------------------------- introspection


def test_introspect_jwt_matches_its_claims(server):
    access_token = issue(server, "jwt", audience="orders")
    _, claims = server.verify(access_token, audience="orders")
    info = server.introspect(access_token)
    assert info["active"] is True, info
    for name in ("iss", "sub", "client_id", "scope", "jti", "exp", "iat"):
        assert info[name] == claims[name], name
    assert audiences(info) == {"orders"}
    assert info["token_type"]


@pytest.mark.parametrize("kind", ["jwt", "opaque"])
def test_introspection_as_signed_jwt(server, kind):
    """RFC 9701: the phantom-token answer, verified against the JWKS."""
    access_token = issue(server, kind)
    resp = server.post("introspection_endpoint", {"token": access_token}, "gateway",
                       headers={"Accept": INTROSPECTION_JWT})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith(INTROSPECTION_JWT), resp.headers
    header, claims = server.verify(resp.text, audience="gateway", require=("iat", "iss", "aud"))
    assert header["typ"] in ("token-introspection+jwt", INTROSPECTION_JWT), header
    inner = claims["token_introspection"]
    assert inner["active"] is True, inner
    assert inner["client_id"] == ("gateway" if kind == "jwt" else "batch")
    assert inner["scope"] == "orders:read"


def forged_jwt(srv):
    """A well-formed at+jwt with the server's kid and real claims, signed by another key."""
    header, claims = srv.verify(issue(srv, "jwt"), audience="orders")
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                      headers={"kid": header["kid"], "typ": "at+jwt"})


def tampered_jwt(srv):
    head, body, sig = issue(srv, "jwt").split(".")
    return ".".join([head, body, sig[::-1]])


@pytest.mark.parametrize("make_token", [lambda srv: secrets.token_urlsafe(32), forged_jwt, tampered_jwt],
                         ids=["unknown", "forged", "tampered"])
def test_introspection_of_bad_tokens_is_inactive(server, make_token):
    assert server.introspect(make_token(server)) == {"active": False}


@pytest.mark.parametrize("client", ["portal", "batch"])
def test_introspection_refused_without_permission(server, client):
    resp = server.post("introspection_endpoint", {"token": issue(server, "jwt")}, client)
    assert resp.status_code in (401, 403), resp.text
    assert "error" in resp.json() and "active" not in resp.json(), resp.text


# ---------------------------------------------------------------- revocation


@pytest.mark.parametrize("kind", ["jwt", "opaque"])
def test_revocation_with_authlib(server, kind):
    client = "gateway" if kind == "jwt" else "batch"
    revoked, kept = issue(server, kind), issue(server, kind)
    assert server.introspect(revoked)["active"] is True
    resp = server.session(client).revoke_token(server.meta["revocation_endpoint"], token=revoked,
                                               token_type_hint="access_token")
    assert resp.status_code == 200, resp.text
    assert server.introspect(revoked) == {"active": False}
    assert server.introspect(kept)["active"] is True, "revoking one token revoked another"


def test_revocation_of_unknown_token_succeeds(server):
    resp = server.session("gateway").revoke_token(server.meta["revocation_endpoint"], token=secrets.token_urlsafe(32))
    assert resp.status_code == 200, resp.text


def test_revocation_by_another_client_has_no_effect(server):
    access_token = issue(server, "jwt")
    server.session("portal").revoke_token(server.meta["revocation_endpoint"], token=access_token)
    assert server.introspect(access_token)["active"] is True, "portal revoked a token of gateway"


def test_revoke_whole_grant(server):
    access_token = issue(server, "opaque")
    resp = server.session("batch").revoke_token(server.meta["revocation_endpoint"], token=access_token,
                                                body="revoke=grant")
    assert resp.status_code == 200, resp.text
    assert server.introspect(access_token) == {"active": False}


# ---------------------------------------------------------------- errors


CC = {"grant_type": "client_credentials"}


WRONG = "wrong-" + "x" * 32


@pytest.mark.parametrize("client, secret, form, status, error", [
    pytest.param("gateway", WRONG, CC, 401, "invalid_client", id="basic-wrong-secret"),
    pytest.param("portal", WRONG, CC, 401, "invalid_client", id="post-wrong-secret"),
    pytest.param("nobody", None, CC, 401, "invalid_client", id="unknown-client"),
    pytest.param(None, None, CC, 401, "invalid_client", id="no-client-auth"),
    pytest.param("gateway", None, {**CC, "scope": "orders:nope"}, 400, "invalid_scope", id="unknown-scope"),
    pytest.param("gateway", None, {**CC, "scope": "orders:write"}, 400, "invalid_scope", id="scope-not-allowed"),
    pytest.param("gateway", None, {**CC, "scope": "video_stream"}, 400, "invalid_scope", id="scope-not-under-prefix"),
    pytest.param("gateway", None, {**CC, "audience": "billing"}, 400, "invalid_target", id="unknown-audience"),
    pytest.param("gateway", None, {**CC, "resource": "https://unknown.example.com"}, 400, "invalid_target",
                 id="unknown-resource"),
    pytest.param("batch", None, {**CC, "resource": PAYMENTS}, 400, "invalid_target", id="audience-of-another-client"),
    pytest.param("gateway", None, {"grant_type": "urn:example:no-such-grant"}, 400, "unsupported_grant_type",
                 id="unsupported-grant-type"),
    pytest.param("gateway", None, {}, 400, "invalid_request", id="no-grant-type"),
])
def test_token_endpoint_errors(server, client, secret, form, status, error):
    resp = server.post("token_endpoint", form, client, secret=secret)
    assert_oauth_error(resp, status, error)
    if status == 401 and client and CLIENTS.get(client, ("client_secret_basic",))[0] == "client_secret_basic":
        assert resp.headers.get("WWW-Authenticate", "").lower().startswith("basic"), resp.headers


def test_token_response_is_not_cached(server):
    resp = server.post("token_endpoint", {**CC, "scope": "orders:read"}, "gateway")
    assert resp.status_code == 200, resp.text
    assert "no-store" in resp.headers.get("Cache-Control", ""), resp.headers


# ---------------------------------------------------------------- other servers


@pytest.mark.parametrize("alg, kty, crv", [("EdDSA", "OKP", "Ed25519"), ("RS256", "RSA", None), ("PS256", "RSA", None)])
def test_server_signing_algorithm(make_server, alg, kty, crv):
    srv = make_server(signing=alg)
    access_token = issue(srv, "jwt")
    assert jwt.get_unverified_header(access_token)["alg"] == alg, "signed with the TokenServer's algorithm"
    header, claims = srv.verify(access_token, audience="orders", algorithms=[alg])
    assert header["typ"] in AT_JWT
    key = next(k for k in srv.jwks()["keys"] if k["kid"] == header["kid"])
    assert (key["kty"], key.get("crv")) == (kty, crv) and not PRIVATE_JWK_MEMBERS & set(key), key
    assert claims["client_id"] == "gateway"


def test_state_survives_a_crash(make_server):
    srv = make_server()
    kept, signed = issue(srv, "opaque"), issue(srv, "jwt")
    revoked = {"batch": issue(srv, "opaque"), "gateway": issue(srv, "jwt")}
    for client, access_token in revoked.items():
        resp = srv.session(client).revoke_token(srv.meta["revocation_endpoint"], token=access_token)
        assert resp.status_code == 200, resp.text

    srv.stop(signal.SIGKILL)
    srv.start()

    assert srv.introspect(kept)["active"] is True
    assert srv.introspect(signed)["active"] is True
    srv.verify(signed, audience="orders")  # the signing key survived too
    for access_token in revoked.values():
        assert srv.introspect(access_token) == {"active": False}
