"""Protected resource metadata (RFC 9728) on the real sidecar's inbound port, met by clients not
written here. With python `requests`: a call without a token gets 401 whose Bearer and DPoP
challenges both carry `resource_metadata`; that URL gives the document without a token, and the
authorization server it names is the token server (its RFC 8414 metadata has that issuer). With
panva's oauth4webapi (node, tests/interop/dpop/resource.mjs) behind `--resource-url` with a path:
the client reads the challenge, fetches the path-suffixed metadata (its own derivation of the URL
from the resource identifier agrees, and it checks `resource`), discovers the token server from
it, gets a DPoP-bound token with `resource` set to the identifier and is let through with it.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from envoystack import EnvoyTokenServer, Sidecar, Upstream
from test_dpop import claims
from tokenserver import HTTP_TIMEOUT, free_port

CLIENT = Path(__file__).resolve().parent / "dpop" / "resource.mjs"
NODE_TIMEOUT = 60
WELL_KNOWN = "/.well-known/oauth-protected-resource"
# The identifier clients ask tokens for (RFC 8707 `resource`): the sidecar's --resource-url and
# its --audience, with the port it will listen on.
INBOUND = free_port()
RESOURCE = f"http://127.0.0.1:{INBOUND}/orders"


class ResourceTokenServer(EnvoyTokenServer):
    """frontend may also get tokens for RESOURCE."""

    def documents(self, signing):
        docs = super().documents(signing)
        for doc in docs:
            if doc["kind"] == "OAuthClient" and doc["spec"]["clientId"] == "frontend":
                doc["spec"]["audiences"].append(RESOURCE)
        return docs


@pytest.fixture(scope="module")
def stack(make_server, tmp_path_factory):
    server = make_server(kind=ResourceTokenServer)
    app = Upstream()
    plain = Sidecar(tmp_path_factory.mktemp("resource-plain"), server)
    plain.app = app.port
    ingress = Sidecar(tmp_path_factory.mktemp("resource-ingress"), server)
    ingress.app = app.port
    ingress.inbound = INBOUND
    ingress.audience = RESOURCE
    ingress.extra_args = ["--resource-url", RESOURCE]
    try:
        plain.start()
        ingress.start()
        yield server, plain, ingress, app
    finally:
        ingress.stop()
        plain.stop()
        app.stop()


def challenges(resp):
    """The challenges of a 401, one per WWW-Authenticate header (urllib3 keeps them apart)."""
    return resp.raw.headers.getlist("www-authenticate")


def test_requests_follows_resource_metadata_from_a_401_to_the_issuer(stack):
    server, plain, _, app = stack
    base = f"http://127.0.0.1:{plain.inbound}"
    resp = requests.get(f"{base}/orders/7", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 401
    bearer, dpop = challenges(resp)
    metadata_url = f"{base}{WELL_KNOWN}"
    assert bearer == f'Bearer error="invalid_token", resource_metadata="{metadata_url}"'
    assert dpop.startswith("DPoP algs=") and dpop.endswith(f', resource_metadata="{metadata_url}"')

    resp = requests.get(metadata_url, timeout=HTTP_TIMEOUT)  # no token
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    document = resp.json()
    assert document["resource"] == base, "the origin called, RFC 9728 §3.3"
    assert document["authorization_servers"] == [server.base]
    assert document["bearer_methods_supported"] == ["header"]
    assert "ES256" in document["dpop_signing_alg_values_supported"]
    assert document["dpop_bound_access_tokens_required"] is False
    assert "tls_client_certificate_bound_access_tokens" not in document, "a plain HTTP listener"

    issuer = document["authorization_servers"][0]
    resp = requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert resp.json()["issuer"] == issuer
    assert app.requests_to("/orders/7") == [] and app.requests_to(WELL_KNOWN) == []


def test_oauth4webapi_discovers_where_to_get_a_token_and_gets_through(stack):
    server, _, ingress, app = stack
    if shutil.which("node") is None:
        pytest.fail("node is not installed (run.sh installs the client's packages with npm)", pytrace=False)
    secret = server.secret_file("frontend").read_text().strip()
    called = f"{RESOURCE}/items?page=2"
    done = subprocess.run(["node", str(CLIENT), called, "frontend", secret],
                          capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s.lower() for s in out["schemes"]] == ["bearer", "dpop"]
    assert out["metadata_url"] == f"http://127.0.0.1:{INBOUND}{WELL_KNOWN}/orders", "RFC 9728 §3.1"
    assert out["document"]["resource"] == RESOURCE
    assert out["issuer"] == server.base
    token = claims(out["access_token"])
    assert token["aud"] in (RESOURCE, [RESOURCE])
    assert token["cnf"]["jkt"]
    assert out["status"] == 200
    assert len(app.requests_to("/orders/items?page=2")) == 1
