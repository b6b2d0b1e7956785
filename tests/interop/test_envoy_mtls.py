"""Certificate-bound tokens (RFC 8705) through a real Envoy that terminates TLS.

    client ──TLS, client certificate──▶ Envoy ──ext_authz (include_peer_certificate)──▶ tokenmesh-sidecar
                                          │
                                          ▼
                                       Upstream

Envoy's listener requires a client certificate of the test's own CA (`require_client_certificate`,
`validation_context.trusted_ca`) and passes it to the sidecar's ext_authz service
(`attributes.source.certificate`). The client `orders` gets a token bound to its certificate from the
token server over mutual TLS (tls_client_auth): through Envoy it passes with that certificate, and is
refused with another certificate of the same CA; a certificate of another CA, or none, does not get
through Envoy's handshake.
"""

import jwt
import pytest
import requests
from cryptography import x509

from certs import certificate, thumbprint, write_pem
from envoystack import AUDIENCE, Envoy, EnvoyTokenServer, Sidecar, Upstream
from tokenserver import HTTP_TIMEOUT, resource

SPIFFE = "spiffe://cluster.local/ns/shop/sa/orders"
LISTENERS = {"tls": {"include_peer_certificate": True}}


class MtlsEnvoyTokenServer(EnvoyTokenServer):
    """HTTPS and gRPC over TLS with --client-ca; `orders` authenticates with its certificate, the
    sidecar (gateway-svc) with its secret. Certificates for `orders`, `intruder` (same CA, another
    name), `forged` (another CA) and the servers (localhost)."""

    def documents(self, signing):
        self.ca = certificate("interop CA", [], ca=True)
        other_ca = certificate("other CA", [], ca=True)
        self.ca_file = write_pem(self.root / "ca.crt", self.ca[0])
        self.server_pair = write_pem(self.root / "server.crt",
                                     *certificate("localhost", [x509.DNSName("localhost")], issuer=self.ca))
        self.identities = {}
        for label, issuer, san in [("orders", self.ca, SPIFFE),
                                   ("intruder", self.ca, "spiffe://cluster.local/ns/shop/sa/intruder"),
                                   ("forged", other_ca, SPIFFE)]:
            cert, key = certificate(label, [x509.UniformResourceIdentifier(san)], issuer=issuer)
            self.identities[label] = (write_pem(self.root / f"{label}.crt", cert, key), cert)
        documents = super().documents(signing)
        return documents + [resource("OAuthClient", "orders", {
            "clientId": "orders",
            "grantTypes": ["client_credentials"],
            "authentication": {"method": "tls_client_auth", "tlsClientAuth": {"sanUri": SPIFFE}},
            "scopes": ["orders:read"],
            "audiences": [AUDIENCE],
        })]

    def args(self):
        self.base = f"https://localhost:{self.port}"
        cert, key = self.server_pair
        return super().args() + ["--tls-cert", cert, "--tls-key", key, "--client-ca", self.ca_file]

    def start(self):
        # The readiness probe of the base class trusts the system CAs only.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("REQUESTS_CA_BUNDLE", self.ca_file)
            return super().start()

    def sidecar_args(self):
        return ["--token-server", f"https://localhost:{self.grpc_port}", "--token-server-ca", self.ca_file]

    def bound_token(self):
        """A client_credentials token for `orders`, authenticated by and bound to its certificate."""
        pair, _ = self.identities["orders"]
        resp = requests.post(f"{self.base}/oauth2/token", cert=pair, verify=self.ca_file, timeout=HTTP_TIMEOUT,
                             data={"grant_type": "client_credentials", "client_id": "orders",
                                   "scope": "orders:read", "audience": AUDIENCE})
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]


@pytest.fixture(scope="module")
def stack(make_server, tmp_path_factory):
    """Token server, sidecar, upstream and Envoy with one TLS listener; stopped in reverse order."""
    server = make_server(kind=MtlsEnvoyTokenServer)
    sidecar = Sidecar(tmp_path_factory.mktemp("sidecar-mtls"), server)
    upstream = Upstream()
    envoy = None
    try:
        sidecar.start()
        cert, key = server.server_pair
        envoy = Envoy(tmp_path_factory.mktemp("envoy-mtls"), sidecar.ext_authz, upstream.port,
                      listeners=LISTENERS, tls={"cert": cert, "key": key, "ca": server.ca_file})
        envoy.start()
        yield server, envoy, upstream
    finally:
        if envoy:
            envoy.stop()
        upstream.stop()
        sidecar.stop()


def call(stack, label, token, path):
    server, envoy, _ = stack
    pair = server.identities[label][0] if label else None
    return requests.get(envoy.url("tls", path), cert=pair, verify=server.ca_file, timeout=HTTP_TIMEOUT,
                        headers={"authorization": f"Bearer {token}"})


def listener_stats(envoy):
    """The TLS counters of Envoy's listener (`listener.<address>.ssl.*`), by their last name."""
    return {name.rsplit(".", 1)[1]: value for name, value in envoy.stats("listener.").items()
            if ".ssl." in name and not name.startswith("listener.admin")}


def test_metadata_says_tokens_are_bound(stack):
    server, _, _ = stack
    meta = requests.get(f"{server.base}/.well-known/oauth-authorization-server", verify=server.ca_file,
                        timeout=HTTP_TIMEOUT).json()
    assert meta["tls_client_certificate_bound_access_tokens"] is True


def test_bound_token_passes_with_its_certificate(stack):
    server, _, upstream = stack
    token = server.bound_token()
    x5t = thumbprint(server.identities["orders"][1])
    assert jwt.decode(token, options={"verify_signature": False})["cnf"] == {"x5t#S256": x5t}
    resp = call(stack, "orders", token, "/bound-own")
    assert resp.status_code == 200, resp.text
    assert upstream.requests_to("/bound-own") == [[f"Bearer {token}"]]


def test_bound_token_is_refused_with_another_certificate_of_the_same_ca(stack):
    server, _, upstream = stack
    token = server.bound_token()
    resp = call(stack, "intruder", token, "/bound-other")
    assert resp.status_code == 401, resp.text
    assert 'error="invalid_token"' in resp.headers.get("www-authenticate", "")
    assert upstream.requests_to("/bound-other") == []


@pytest.mark.parametrize("label, counter", [("forged", "fail_verify_error"), (None, "fail_verify_no_cert")])
def test_handshake_fails_with_a_certificate_of_another_ca_or_none(stack, label, counter):
    server, envoy, upstream = stack
    token = server.bound_token()
    before = listener_stats(envoy).get(counter, 0)
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        call(stack, label, token, f"/handshake-{counter}")
    assert listener_stats(envoy).get(counter, 0) == before + 1, listener_stats(envoy)
    assert upstream.requests_to(f"/handshake-{counter}") == []
