"""Sign-in with clients not written here: panva openid-client 6.9 (OpenID Certified) and oauth4webapi
(node, tests/interop/signin) run the OpenID Connect code flow with PKCE against the real token server,
through its login and consent pages (driven with plain HTTP: the form's hidden fields, its CSRF token
and the credentials), then UserInfo, refresh with rotation and RP-initiated logout; a reused refresh
token and a replayed code are refused. Discovery is the clients' own. oauth4webapi also asks for claims
with the `claims` parameter (an essential acr among them), uses its own DPoP proofs for the token and
UserInfo, and validates a signed UserInfo answer. Federation: Chromium signs in through an upstream
OpenID Provider that is not tokenmesh (panva oidc-provider, tests/interop/upstream).
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tokenserver import SERVER_BIN, TokenServer, free_port, resource

HERE = Path(__file__).resolve().parent / "signin"
ARTIFACTS = Path(__file__).resolve().parents[2] / "target" / "artifacts" / "signin"
NODE_TIMEOUT = 60
PASSWORD = "interop-password-0123"
CALLBACK = "http://127.0.0.1/callback"
BYE = "https://app.example/signed-out"


def password_hash(password):
    done = subprocess.run([str(SERVER_BIN), "hash-password"], input=password, capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


class SignInTokenServer(TokenServer):
    """A static provider with alice and a public web client, beside the usual clients."""

    def documents(self, signing):
        return super().documents(signing) + [
            resource("IdentityProvider", "dev-users", {
                "type": "static",
                "displayName": "Dev users",
                "static": {"users": [{
                    "username": "alice",
                    "passwordHash": password_hash(PASSWORD),
                    "claims": {"name": "Alice Example", "email": "alice@example.com", "email_verified": True},
                }]},
            }),
            resource("OAuthClient", "spa", {
                "clientId": "spa",
                "grantTypes": ["authorization_code", "refresh_token"],
                "authentication": {"method": "none"},
                "scopes": ["orders:read"],
                "audiences": ["orders"],
                "redirectUris": [CALLBACK, "http://127.0.0.1/shop/callback"],
                "postLogoutRedirectUris": [BYE],
                "identityProviders": ["dev-users"],
                "branding": {"displayName": "Interop SPA"},
            }),
            # OpenID Connect scopes listed without Scope resources; DPoP-bound
            # tokens; UserInfo answers signed ES256.
            resource("OAuthClient", "signed", {
                "clientId": "signed",
                "grantTypes": ["authorization_code"],
                "authentication": {"method": "none"},
                "scopes": ["orders:read", "openid", "profile", "email"],
                "audiences": ["orders"],
                "redirectUris": [CALLBACK],
                "identityProviders": ["dev-users"],
                "accessToken": {"binding": "dpop"},
                "userInfo": {"algorithm": "ES256"},
            }),
            # A second, first-party app: SSO and no consent page.
            resource("OAuthClient", "spa2", {
                "clientId": "spa2",
                "grantTypes": ["authorization_code"],
                "authentication": {"method": "none"},
                "scopes": ["orders:read"],
                "audiences": ["orders"],
                "redirectUris": ["http://127.0.0.1/admin/callback"],
                "identityProviders": ["dev-users"],
                "consent": "implicit",
                "branding": {"displayName": "Interop Admin"},
            }),
        ]


UPSTREAM = Path(__file__).resolve().parent / "upstream"
UPSTREAM_SECRET = "interop-upstream-secret-0123456789abcdef"


def local_subject(issuer, subject):
    """tokenmesh's `sub` for an upstream user (docs/configuration.md, oidc upstreams)."""
    data = b"".join(len(p.encode()).to_bytes(8, "big") + p.encode() for p in (issuer, subject))
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class FederatedTokenServer(SignInTokenServer):
    """Beside the static provider: `corp`, an upstream oidc-provider (started with the server, `jane`
    signs in with any password), and `offline`, an upstream nobody listens for; client `fed` offers all
    three."""

    def __init__(self, root, signing="ES256"):
        self.upstream_port, self.closed_port = free_port(), free_port()
        self.upstream_issuer = f"http://127.0.0.1:{self.upstream_port}"
        self.upstream = None
        super().__init__(root, signing)

    def documents(self, signing):
        return super().documents(signing) + [
            resource("IdentityProvider", "corp", {
                "type": "oidc",
                "displayName": "Corp account",
                "oidc": {"issuer": self.upstream_issuer, "clientId": "tokenmesh", "clientSecret": UPSTREAM_SECRET,
                         "scopes": ["openid", "email", "profile"]},
            }),
            resource("IdentityProvider", "offline", {
                "type": "oidc",
                "displayName": "Offline directory",
                "oidc": {"issuer": f"http://127.0.0.1:{self.closed_port}", "clientId": "tokenmesh"},
            }),
            resource("OAuthClient", "fed", {
                "clientId": "fed",
                "grantTypes": ["authorization_code"],
                "authentication": {"method": "none"},
                "scopes": ["orders:read"],
                "audiences": ["orders"],
                "redirectUris": ["http://127.0.0.1/fed/callback"],
                "identityProviders": ["dev-users", "corp", "offline"],
                "branding": {"displayName": "Interop Federated", "primaryColor": "#7b3fe4"},
            }),
        ]

    def start(self):
        super().start()
        if shutil.which("node") is None:
            pytest.fail("node is not installed (run.sh installs the upstream's packages with npm)", pytrace=False)
        log = self.root / "upstream.log"
        with log.open("ab") as out:
            self.upstream = subprocess.Popen(
                ["node", str(UPSTREAM / "server.mjs"), str(self.upstream_port), f"{self.base}/oauth2/callback"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                env=dict(os.environ, UPSTREAM_CLIENT_SECRET=UPSTREAM_SECRET))
        deadline = time.monotonic() + 20
        while "listening" not in log.read_text(errors="replace"):
            if self.upstream.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"oidc-provider did not start:\n{log.read_text(errors='replace')}", pytrace=False)
            time.sleep(0.1)
        return self

    def stop(self, *args, **kwargs):
        if self.upstream is not None and self.upstream.poll() is None:
            self.upstream.terminate()
            self.upstream.wait(10)
        super().stop(*args, **kwargs)


def node(server, script, *args, client="spa"):
    if shutil.which("node") is None:
        pytest.fail("node is not installed (run.sh installs the clients' packages with npm)", pytrace=False)
    command = ["node", str(HERE / script), server.base, *([client] if client else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False)
    assert done.returncode == 0, f"{done.stderr}\n{server.log_tail()}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def signin_server(make_server):
    return make_server(signing="ES256", kind=SignInTokenServer)


def test_openid_client_runs_the_code_flow_refresh_userinfo_and_logout(signin_server):
    # A loopback redirect URI on the port the app picked (RFC 8252 §7.3).
    out = node(signin_server, "client.mjs", "http://127.0.0.1:43117/callback", "alice", PASSWORD, BYE)
    assert out["pages"] == ["login", "consent"]
    assert out["second_pages"] == [], "SSO and remembered consent: straight back"
    claims = out["claims"]
    assert claims["iss"] == signin_server.base
    assert claims["sub"] == "alice"
    assert claims["aud"] == "spa"
    assert claims["email"] == "alice@example.com"
    assert claims["amr"] == ["pwd"] and claims["sid"]
    assert out["userinfo"] == {"sub": "alice", "name": "Alice Example", "email": "alice@example.com",
                               "email_verified": True}
    assert out["refresh_token_prefix"] == "tmr_"
    assert out["refreshed_differs"] and out["refreshed_id_token"]
    assert out["reused_refresh"] == "invalid_grant"
    assert out["after_reuse"] == "invalid_grant", "the reuse revoked the whole grant"
    assert out["replayed_code"] == "invalid_grant"
    assert out["logout_status"] == 302
    assert out["logout_location"] == f"{BYE}?state=bye-1"
    assert not out["session_cookie_after_logout"]


def test_oauth4webapi_runs_the_code_flow_with_userinfo_and_refresh(signin_server):
    out = node(signin_server, "webapi.mjs", CALLBACK, "alice", PASSWORD)
    # A new browser signs in; consent was remembered if the other test ran first.
    assert out["pages"][0] == "login"
    assert out["claims"]["sub"] == "alice"
    assert out["userinfo"]["email"] == "alice@example.com"
    assert "name" not in out["userinfo"], "no profile scope, no name"
    assert out["refreshed"]
    assert out["reused"] == "invalid_grant"


PASSWORD_ACR = "urn:tokenmesh:acr:password"


def test_oauth4webapi_asks_claims_and_acr_and_reads_signed_userinfo_with_a_dpop_bound_token(signin_server):
    claims = json.dumps({
        "id_token": {"email": {"essential": True}, "acr": {"essential": True, "values": [PASSWORD_ACR]}},
        "userinfo": {"name": None, "email_verified": None},
    })
    out = node(signin_server, "claims.mjs", CALLBACK, "alice", PASSWORD, claims, client="signed")
    assert out["claims_parameter_supported"] is True
    assert out["acr_values_supported"] == [PASSWORD_ACR]
    assert out["pages"] == ["login", "consent"]
    assert out["token_type"] == "dpop"
    id_token = out["claims"]
    assert id_token["email"] == "alice@example.com", "asked for the ID token"
    assert id_token["acr"] == PASSWORD_ACR
    assert "name" not in id_token, "asked for UserInfo only"
    # Validated and signature-checked by oauth4webapi: a JWT for this client.
    assert out["userinfo_content_type"] == "application/jwt"
    info = out["userinfo"]
    assert (info["iss"], info["aud"], info["sub"]) == (signin_server.base, "signed", "alice")
    assert info["name"] == "Alice Example" and info["email_verified"] is True
    assert "email" not in info, "asked for the ID token only"
    assert out["unmet_error"] == "unmet_authentication_requirements"
    assert out["unmet_pages"] == [], "refused before any page"
    assert out["bearer_status"] == 401
    assert out["bearer_challenge"].startswith('DPoP error="invalid_token"')


def test_chromium_signs_in_through_the_pages_and_a_second_app_gets_sso(make_server):
    """Debian's Chromium, headless (Playwright): login and consent for the first app, then the second
    app straight through on the session. The screenshots are artifacts (REPO/target/artifacts/signin)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (run.sh installs Debian's chromium)", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # A server of its own: no consent remembered from the other tests.
    fresh = make_server(kind=SignInTokenServer)
    out = node(fresh, "chromium.mjs", chromium, str(ARTIFACTS), "alice", PASSWORD, client=None)
    assert out["shop"] == "Signed in as alice"
    assert out["admin"] == "Signed in as alice"
    assert out["second_pages"] == ["/admin/callback"], "no page of the token server: SSO, no consent"
    for shot in ("login.png", "consent.png", "shop-signed-in.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000, shot


def test_chromium_signs_in_through_an_upstream_openid_provider_and_a_down_one_shows_an_error(make_server):
    """Debian's Chromium (Playwright) presses the button of an upstream that is down (the login page says
    so, nothing else happens), then the one of oidc-provider: its own login and consent pages, back to the
    token server's consent page, and to the app with an ID token whose `sub` is the local subject."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (run.sh installs Debian's chromium)", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    fed = make_server(kind=FederatedTokenServer)
    out = node(fed, "federation.mjs", chromium, str(ARTIFACTS), "jane", client=None)
    assert out["down_alert"] == "Offline directory could not sign you in just now. Try again in a moment."
    assert out["down_path"] == "/oauth2/authorize", "still the token server's login page"
    assert out["upstream"] == fed.upstream_issuer, "the person signed in at the upstream's own pages"
    assert out["who"] == f"Signed in as {local_subject(fed.upstream_issuer, 'jane')}"
    assert out["email"] == "jane@corp.example"
    assert out["amr"] == "fed"
    log = (fed.root / "server.log").read_text(errors="replace")
    assert "cannot be reached" in log and "sign-in at the upstream could not start" in log
    assert "user signed in at the upstream" in log
    assert UPSTREAM_SECRET not in log and "code=" not in log and "verifier" not in log
    for shot in ("login-federated.png", "upstream-down.png", "upstream-login.png", "consent-federated.png",
                 "fed-signed-in.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000, shot
