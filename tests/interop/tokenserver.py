"""The real token-server binary, driven with third-party clients.

`TokenServer` writes a config, secrets and a client key pair into a directory,
runs the binary on a free loopback port and offers small helpers (discovery,
raw requests with client authentication, authlib sessions, JWT verification
against the published JWKS) so the tests stay short.
"""

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from binaries import binary  # noqa: E402  (where cargo put the binaries)
from ports import free_port  # noqa: E402  (shared with the chart and e2e harnesses)

SERVER_BIN = binary("token-server", "TOKENMESH_SERVER_BIN")
READY_TIMEOUT = 20
HTTP_TIMEOUT = 10
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PAYMENTS = "https://payments.example.com"
BATCH_KID = "batch-test-1"

# client id -> (authentication method, access token format, ttl in seconds)
CLIENTS = {
    "gateway": ("client_secret_basic", "jwt", 300),
    "portal": ("client_secret_post", "jwt", 120),
    "batch": ("private_key_jwt", "opaque", 600),
}


def resource(kind, name, spec):
    return {"apiVersion": "tokenmesh.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def client_resource(client_id, scopes, audiences, introspection=False, jwks=None):
    method, fmt, ttl = CLIENTS[client_id]
    auth = {"jwks": jwks} if jwks else {"secretRef": {"name": client_id, "key": "client_secret"}}
    return resource("OAuthClient", client_id, {
        "clientId": client_id,
        "grantTypes": ["client_credentials"],
        "authentication": {"method": method, **auth},
        "scopes": scopes,
        "audiences": audiences,
        "allowIntrospection": introspection,
        "accessToken": {"format": fmt, "ttl": f"{ttl}s"},
    })


class TokenServer:
    def __init__(self, root: Path, signing: str = "ES256"):
        self.root = root
        self.port, self.grpc_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc = None
        self.secrets = {}
        self.config = root / "tokenmesh.yaml"
        # JSON is YAML: one document per resource.
        self.config.write_text("\n---\n".join(json.dumps(doc, indent=2) for doc in self.documents(signing)) + "\n")

    def add_secret(self, client_id):
        """A fresh client secret, written where `secretRef: {name: client_id, key: client_secret}` finds it."""
        secret = self.secrets[client_id] = secrets.token_urlsafe(32)
        path = self.root / "secrets" / client_id / "client_secret"
        path.parent.mkdir(parents=True)
        path.write_text(secret)
        path.chmod(0o600)
        return secret

    def documents(self, signing):
        """The resources of --config (subclasses serve other ones)."""
        for cid, (method, _, _) in CLIENTS.items():
            if method != "private_key_jwt":
                self.add_secret(cid)
        self.batch_key = ec.generate_private_key(ec.SECP256R1())
        batch_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(self.batch_key.public_key(), as_dict=True),
                     "kid": BATCH_KID, "alg": "ES256", "use": "sig"}
        return [
            # The issuer here must lose against --issuer.
            resource("TokenServer", "default", {"issuer": "http://config-issuer.invalid", "signing": {"algorithm": signing}}),
            resource("Scope", "orders-read", {"name": "orders:read"}),
            resource("Scope", "orders-write", {"name": "orders:write"}),
            resource("Scope", "video-stream", {"prefix": "video_stream_", "ttl": "60s"}),
            client_resource("gateway", ["orders:read", "video_stream_"], ["orders", PAYMENTS], introspection=True),
            client_resource("portal", ["orders:read"], ["orders"]),
            client_resource("batch", ["orders:read"], ["orders"], jwks={"keys": [batch_jwk]}),
        ]

    def args(self):
        """The command line of the server."""
        return [str(SERVER_BIN), "--config", str(self.config), "--http-addr", f"127.0.0.1:{self.port}",
                "--grpc-addr", f"127.0.0.1:{self.grpc_port}", "--issuer", self.base,
                "--data-dir", str(self.root / "data"), "--secrets-dir", str(self.root / "secrets")]

    # ---------------------------------------------------------------- process

    def start(self):
        cmd = self.args()
        # Flags only: no TOKENMESH_* setting of the caller's environment reaches the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMESH_")} | {"NO_COLOR": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"token-server exited with {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                if requests.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return self
            # Listening but still starting (an RSA key for ID tokens is being made).
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        pytest.fail(f"token-server not ready within {READY_TIMEOUT}s:\n{self.log_tail()}", pytrace=False)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines=60):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- HTTP

    @cached_property
    def meta(self):
        """The RFC 8414 metadata: every endpoint is found through it."""
        resp = requests.get(f"{self.base}/.well-known/oauth-authorization-server", timeout=HTTP_TIMEOUT)
        resp.raise_for_status()
        return resp.json()

    def assertion(self, key=None, **claims):
        """An RFC 7523 client assertion for `batch`; a claim set to None is left out."""
        now = int(time.time())
        payload = {"iss": "batch", "sub": "batch", "aud": self.meta["token_endpoint"],
                   "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(16), **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or self.batch_key, algorithm="ES256", headers={"kid": BATCH_KID})

    def post(self, endpoint, data, client=None, secret=None, headers=None):
        """POST a form to a discovered endpoint, authenticated as `client` the way it is configured."""
        data, auth = dict(data), None
        method = CLIENTS.get(client, ("client_secret_basic",))[0]
        if client is None:
            pass
        elif method == "private_key_jwt":
            data.update(client_assertion_type=JWT_BEARER, client_assertion=self.assertion())
        elif method == "client_secret_post":
            data.update(client_id=client, client_secret=secret or self.secrets[client])
        else:
            auth = (client, secret or self.secrets.get(client, "not-a-client-secret"))
        return requests.post(self.meta[endpoint], data=data, auth=auth, headers=headers, timeout=HTTP_TIMEOUT)

    def introspect(self, token, client="gateway"):
        resp = self.post("introspection_endpoint", {"token": token}, client)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def session(self, client):
        """An authlib OAuth2Session that authenticates as `client` with its configured method."""
        method = CLIENTS[client][0]
        if method == "private_key_jwt":
            pem = self.batch_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
            credential = ECKey.import_key(pem)
        else:
            credential = self.secrets[client]
        sess = OAuth2Session(client, credential, token_endpoint_auth_method=method,
                             revocation_endpoint_auth_method=method, default_timeout=HTTP_TIMEOUT)
        if method == "private_key_jwt":
            sess.register_client_auth_method(
                PrivateKeyJWT(self.meta["token_endpoint"], alg="ES256", headers={"kid": BATCH_KID}))
        return sess

    def fetch_token(self, client, **params):
        params.setdefault("scope", "orders:read")
        return self.session(client).fetch_token(self.meta["token_endpoint"], grant_type="client_credentials", **params)

    def jwks(self):
        resp = requests.get(self.meta["jwks_uri"], timeout=HTTP_TIMEOUT)
        resp.raise_for_status()
        return resp.json()

    def verify(self, token, audience, algorithms=("ES256",), require=("exp", "iat", "nbf", "iss", "aud", "jti")):
        """Check signature (key found by kid in the JWKS), iss, aud and times; return (header, claims)."""
        key = jwt.PyJWKClient(self.meta["jwks_uri"], cache_jwk_set=False).get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key, algorithms=list(algorithms), audience=audience, issuer=self.base,
                            options={"require": list(require)})
        return jwt.get_unverified_header(token), claims


# ---------------------------------------------------------------- gRPC

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AUDITOR_KID = "auditor-test-1"
GRPC_TIMEOUT = 10  # deadline of every unary call, seconds


def policy_resource(name, mode, to, from_=None, actor=None, ttl=None):
    spec = {"mode": mode, "to": to}
    if from_:
        spec["from"] = from_
    if actor:
        spec["actor"] = actor
    if ttl:
        spec["ttl"] = ttl
    return resource("ExchangePolicy", name, spec)


class GrpcTokenServer(TokenServer):
    """A token server with the exchange/share setup of the gRPC tests, an admin token, and stubs to call it.

    gateway (client_credentials only) gets tokens for `orders`; orders-svc may exchange them for `payments`
    (policy orders-to-payments, host payments.local); gateway's tokens may be passed on unchanged to
    orders.local (share policy share-to-orders). auditor authenticates with private_key_jwt and may not introspect.
    """

    def __init__(self, root: Path, signing: str = "ES256"):
        super().__init__(root, signing)
        self.admin_token = secrets.token_urlsafe(48)
        self.admin_token_file = root / "admin-token"
        self.admin_token_file.write_text(self.admin_token + "\n")
        self.admin_token_file.chmod(0o600)
        self.channel = None

    def documents(self, signing):
        def client(cid, grants, scopes, audiences):
            self.add_secret(cid)
            return resource("OAuthClient", cid, {
                "clientId": cid,
                "grantTypes": grants,
                "authentication": {"method": "client_secret_basic",
                                   "secretRef": {"name": cid, "key": "client_secret"}},
                "scopes": scopes,
                "audiences": audiences,
                "allowIntrospection": True,
                "accessToken": {"format": "jwt", "ttl": "300s"},
            })

        # auditor authenticates with private_key_jwt (x-client-assertion metadata) and may not introspect.
        self.auditor_key = ec.generate_private_key(ec.SECP256R1())
        auditor_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(self.auditor_key.public_key(), as_dict=True),
                       "kid": AUDITOR_KID, "alg": "ES256", "use": "sig"}
        return [
            resource("TokenServer", "default", {"signing": {"algorithm": signing}}),
            resource("Scope", "orders-read", {"name": "orders:read"}),
            resource("Scope", "orders-write", {"name": "orders:write"}),
            client("gateway", ["client_credentials"], ["orders:read", "orders:write"], ["orders"]),
            client("orders-svc", ["client_credentials", TOKEN_EXCHANGE], ["orders:read"], ["payments"]),
            resource("OAuthClient", "auditor", {
                "clientId": "auditor", "grantTypes": ["client_credentials"],
                "authentication": {"method": "private_key_jwt", "jwks": {"keys": [auditor_jwk]}},
                "scopes": ["orders:read"], "audiences": ["orders"], "accessToken": {"format": "jwt", "ttl": "60s"},
            }),
            policy_resource("orders-to-payments", "exchange",
                            {"audience": "payments", "scopes": ["orders:read"], "hosts": ["payments.local"]},
                            from_={"audiences": ["orders"]}, actor={"clients": ["orders-svc"]}, ttl="120s"),
            policy_resource("share-to-orders", "share", {"audience": "orders", "hosts": ["orders.local"]},
                            from_={"clients": ["gateway"]}),
        ]

    def args(self):
        return super().args() + ["--admin-token-file", str(self.admin_token_file)]

    @property
    def grpc_target(self):
        return f"127.0.0.1:{self.grpc_port}"

    def start(self):
        import grpc  # only the gRPC tests need it

        super().start()
        self.channel = grpc.insecure_channel(self.grpc_target)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=READY_TIMEOUT)
        except grpc.FutureTimeoutError:
            self.stop(signal.SIGKILL)
            pytest.fail(f"no gRPC listener on {self.grpc_target} within {READY_TIMEOUT}s:\n{self.log_tail()}",
                        pytrace=False)
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        super().stop(sig)

    # metadata

    def basic(self, client, secret=None):
        """gRPC metadata authenticating `client` with client_secret_basic."""
        raw = f"{client}:{secret or self.secrets.get(client, 'not-a-client-secret')}".encode()
        return (("authorization", "Basic " + base64.b64encode(raw).decode()),)

    def client_assertion(self, key=None, **claims):
        """gRPC metadata with an RFC 7523 assertion of `auditor`, its audience the issuer."""
        now = int(time.time())
        payload = {"iss": "auditor", "sub": "auditor", "aud": self.base, "iat": now, "exp": now + 60,
                   "jti": secrets.token_urlsafe(16), **claims}
        assertion = jwt.encode(payload, key or self.auditor_key, algorithm="ES256", headers={"kid": AUDITOR_KID})
        return (("x-client-assertion", assertion),)

    def admin(self, token=None):
        return (("authorization", f"Bearer {token or self.admin_token}"),)

    # HTTP helpers

    def client_token(self, client="gateway", scope="orders:read orders:write", audience="orders"):
        """A client_credentials access token from the HTTP token endpoint."""
        resp = self.post("token_endpoint", {"grant_type": "client_credentials", "scope": scope,
                                            "audience": audience}, client)
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def revoke(self, token, client="gateway", **form):
        resp = self.post("revocation_endpoint", {"token": token, **form}, client)
        assert resp.status_code == 200, resp.text
