"""Mutual TLS (RFC 8705) with Python `requests` and client certificates made
by `cryptography`: a tls_client_auth client (SPIFFE ID SAN) gets a token
bound to its certificate, which introspection reports; a certificate of
another CA or with another SAN is refused."""

import base64
import datetime
import hashlib
import json

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tokenserver import HTTP_TIMEOUT, TokenServer, resource

SPIFFE = "spiffe://cluster.local/ns/shop/sa/orders"


def write_pem(path, cert, key=None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(path), str(key_path)
    return str(path)


def certificate(name, sans, issuer=None, ca=False):
    """A certificate for CN=name with `sans`, signed by `issuer` (cert, key) or self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


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


def thumbprint(cert):
    der = cert.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


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
