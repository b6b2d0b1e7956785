"""Sign-in with clients not written here: panva openid-client 6.9 (OpenID Certified) and oauth4webapi
(node, tests/interop/signin) run the OpenID Connect code flow with PKCE against the real token server,
through its login and consent pages (driven with plain HTTP: the form's hidden fields, its CSRF token
and the credentials), then UserInfo, refresh with rotation and RP-initiated logout; a reused refresh
token and a replayed code are refused. Discovery is the clients' own.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tokenserver import SERVER_BIN, TokenServer, resource

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
