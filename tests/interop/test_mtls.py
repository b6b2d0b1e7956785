"""Mutual TLS (RFC 8705) with Python `requests` and client certificates made
by `cryptography`: a tls_client_auth client (SPIFFE ID SAN) gets a token
bound to its certificate, which introspection reports; a certificate of
another CA or with another SAN is refused."""

import json

import jwt
import pytest
import requests
from cryptography import x509

from certs import certificate, thumbprint, write_pem
from tokenserver import HTTP_TIMEOUT, TokenServer, resource

SPIFFE = "spiffe://cluster.local/ns/shop/sa/orders"


class MtlsTokenServer(TokenServer):
    """HTTPS with --client-ca, and one tls_client_auth client."""

    def documents(self, signing):
        self.ca = certificate("interop CA", [], ca=True)
        self.other_ca = certificate("other CA", [], ca=True)
        self.ca_file = write_pem(self.root / "ca.crt", self.ca[0])
        server = certificate("localhost", [x509.DNSName("localhost")], issuer=self.ca)
        self.server_pair = write_pem(self.root / "server.crt", *server)
        self.identities = {}
        for label, issuer, san in [("orders", self.ca, SPIFFE), ("forged", self.other_ca, SPIFFE),
                                   ("intruder", self.ca, "spiffe://cluster.local/ns/shop/sa/intruder")]:
            cert, key = certificate(label, [x509.UniformResourceIdentifier(san)], issuer=issuer)
            self.identities[label] = (write_pem(self.root / f"{label}.crt", cert, key), cert)
        return [
            resource("TokenServer", "default", {"signing": {"algorithm": signing}}),
            resource("Scope", "orders-read", {"name": "orders:read"}),
            resource("OAuthClient", "orders", {
                "clientId": "orders",
                "grantTypes": ["client_credentials"],
                "authentication": {"method": "tls_client_auth", "tlsClientAuth": {"sanUri": SPIFFE}},
                "scopes": ["orders:read"],
                "audiences": ["orders"],
                "allowIntrospection": True,
            }),
        ]

    def args(self):
        self.base = f"https://localhost:{self.port}"
        cert, key = self.server_pair
        return super().args() + ["--tls-cert", cert, "--tls-key", key,
                                 "--client-ca", self.ca_file]

    def start(self):
        # The readiness probe of the base class trusts the system CAs only.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("REQUESTS_CA_BUNDLE", self.ca_file)
            return super().start()

    def post_as(self, label, endpoint, data):
        (pair, _) = self.identities[label] if label else (None, None)
        return requests.post(f"{self.base}{endpoint}", data={"client_id": "orders", **data}, cert=pair,
                             verify=self.ca_file, timeout=HTTP_TIMEOUT)


@pytest.fixture(scope="module")
def mtls_server(make_server):
    return make_server(kind=MtlsTokenServer)


def test_requests_with_a_client_certificate_gets_a_bound_token(mtls_server):
    meta = requests.get(f"{mtls_server.base}/.well-known/oauth-authorization-server",
                        verify=mtls_server.ca_file, timeout=HTTP_TIMEOUT).json()
    assert meta["tls_client_certificate_bound_access_tokens"] is True
    assert "tls_client_auth" in meta["token_endpoint_auth_methods_supported"]

    resp = mtls_server.post_as("orders", "/oauth2/token", {"grant_type": "client_credentials"})
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    x5t = thumbprint(mtls_server.identities["orders"][1])
    assert jwt.decode(token, options={"verify_signature": False})["cnf"] == {"x5t#S256": x5t}

    introspected = mtls_server.post_as("orders", "/oauth2/introspect", {"token": token})
    assert introspected.status_code == 200, introspected.text
    assert introspected.json()["cnf"] == {"x5t#S256": x5t}


@pytest.mark.parametrize("label", ["forged", "intruder", None])
def test_a_certificate_of_another_ca_or_name_is_refused(mtls_server, label):
    resp = mtls_server.post_as(label, "/oauth2/token", {"grant_type": "client_credentials"})
    assert resp.status_code == 401, resp.text
    assert json.loads(resp.text)["error"] == "invalid_client"
