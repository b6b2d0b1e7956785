"""DPoP (RFC 9449) with a client not written here: panva's oauth4webapi (node, tests/interop/dpop)
gets a DPoP-bound token from the real token server and calls an application through the real
sidecar's inbound proxy with it, and through a real Envoy whose ext_authz is the sidecar, signing a
fresh proof for each call. The application receives the
JWT as a Bearer token and never the proof; the same token sent as a plain Bearer token is refused
with the DPoP challenge. A second token server requires nonces: the client's retry on
use_dpop_nonce (its DPoP handle keeps the DPoP-Nonce) gets the token.
"""

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from envoystack import AUDIENCE, LISTENERS, Envoy, EnvoyTokenServer, Sidecar, Upstream
from tokenserver import resource

CLIENT = Path(__file__).resolve().parent / "dpop" / "client.mjs"
NODE_TIMEOUT = 60


class NonceTokenServer(EnvoyTokenServer):
    """The same clients, with `spec.dpop.requireNonce`."""

    def documents(self, signing):
        docs = super().documents(signing)
        docs[0] = resource("TokenServer", "default", {"signing": {"algorithm": signing},
                                                      "dpop": {"requireNonce": True}})
        return docs


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def run_client(server, resource_url):
    if shutil.which("node") is None:
        pytest.fail("node is not installed (run.sh installs the client's packages with npm)", pytrace=False)
    secret = server.secret_file("frontend").read_text().strip()
    done = subprocess.run(["node", str(CLIENT), server.base, "frontend", secret, AUDIENCE, resource_url],
                          capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stack(make_server, tmp_path_factory):
    server = make_server(kind=EnvoyTokenServer)
    app = Upstream()
    side = Sidecar(tmp_path_factory.mktemp("dpop-sidecar"), server)
    side.app = app.port
    try:
        side.start()
        yield server, side, app
    finally:
        side.stop()
        app.stop()


def test_oauth4webapi_gets_a_bound_token_and_calls_through_the_sidecar(stack):
    server, side, app = stack
    out = run_client(server, f"http://127.0.0.1:{side.inbound}/dpop?x=1")
    assert "ES256" in out["metadata_algs"]
    assert out["token_type"] == "dpop"  # oauth4webapi lower-cases it
    assert out["nonce_retries"] == 0
    bound = claims(out["access_token"])
    assert bound["cnf"]["jkt"]
    assert out["resource_status"] == [200, 200], "a fresh proof for each call"
    assert out["bearer_status"] == 401
    assert out["bearer_challenge"].startswith('DPoP error="invalid_dpop_proof"')
    received = app.requests_to("/dpop?x=1")
    assert len(received) == 2
    for authorization in received:
        assert authorization == [f"Bearer {out['access_token']}"], "the JWT, as Bearer"
    assert all(not values for path, values in app.dpop_seen if path == "/dpop?x=1"), "no proof upstream"


@pytest.fixture(scope="module")
def envoy(stack, tmp_path_factory):
    _, side, app = stack
    proxy = Envoy(tmp_path_factory.mktemp("dpop-envoy"), side.ext_authz, app.port)
    try:
        yield proxy.start()
    finally:
        proxy.stop()


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_a_real_envoy_checks_the_proof_with_ext_authz(stack, envoy, listener):
    """The same checks from Envoy's CheckRequest (method, scheme, host, path and the dpop header);
    Envoy removes the proof before the application."""
    server, _, app = stack
    path = f"/envoy-dpop-{listener}"
    out = run_client(server, envoy.url(listener, path))
    assert out["resource_status"] == [200, 200]
    assert out["bearer_status"] == 401
    assert out["bearer_challenge"].startswith('DPoP error="invalid_dpop_proof"')
    assert app.requests_to(path) == [[f"Bearer {out['access_token']}"]] * 2
    assert all(not values for p, values in app.dpop_seen if p == path), "no proof upstream"


def test_oauth4webapi_retries_with_the_servers_nonce(make_server):
    server = make_server(kind=NonceTokenServer)
    out = run_client(server, f"{server.base}/.well-known/oauth-authorization-server")
    assert out["nonce_retries"] == 1
    assert out["token_type"] == "dpop"
    assert claims(out["access_token"])["cnf"]["jkt"]
