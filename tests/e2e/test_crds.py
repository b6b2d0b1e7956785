"""The generated CRDs in the real API server: they install, valid resources are
accepted by `kubectl apply`, invalid ones are refused with the OpenAPI schema's
or the CEL rule's message and are not stored."""

import pytest

from conftest import GROUP, KINDS, REPO, resource, unique


def test_the_generated_crds_install_and_are_established(kube, crds):
    for name in crds:
        crd = kube.json("get", "crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, crd["status"])
        assert conditions.get("NamesAccepted") == "True", (name, crd["status"])
        # A structural schema: the API server would report NonStructuralSchema otherwise.
        assert "NonStructuralSchema" not in conditions, (name, crd["status"])
    served = kube.run("api-resources", "--api-group", GROUP, "-o", "name").stdout.split()
    assert sorted(served) == sorted(crds)


def valid_resources(ns):
    return [
        resource("Scope", "orders-read", {"name": unique(ns, "orders:read"), "description": "Read orders"}, ns),
        resource("Scope", "video-stream", {"prefix": unique(ns, "video_stream_"), "ttl": "60s"}, ns),
        resource("OAuthClient", "orders", {
            "grantTypes": ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"],
            "authentication": {"method": "client_secret_basic"},
            "scopes": [unique(ns, "orders:read")],
            "audiences": ["payments"],
            "accessToken": {"format": "jwt", "ttl": "300s"},
            # x-kubernetes-preserve-unknown-fields keeps arbitrary claims.
            "claims": {"team": "sales", "nested": {"any": ["json"]}},
        }, ns),
        resource("ExchangePolicy", "orders-to-payments", {
            "mode": "exchange",
            "from": {"audiences": ["orders"]},
            "actor": {"clients": [f"{ns}/orders"]},
            "to": {"audience": "payments", "scopes": [unique(ns, "orders:read")]},
            "ttl": "120s",
            "maxDelegationDepth": 2,
            "condition": "'payments:charge' in request.scopes || size(request.scopes) == 0",
            "claims": {"via": "actor.clientId"},
        }, ns),
        resource("IdentityProvider", "people", {
            "type": "static",
            "displayName": "Staff",
            "static": {"users": [{"username": "alice", "passwordHash": ARGON2ID,
                                  "claims": {"email": "alice@example.com", "groups": ["admins"]}}]},
        }, ns),
        resource("IdentityProvider", "corp", {
            "type": "oidc",
            "oidc": {"issuer": "https://login.corp.example", "clientId": "tokenmesh",
                     "clientSecretRef": {"name": "corp-oidc", "key": "client_secret"},
                     "scopes": ["openid", "email"], "claimMappings": {"email": "claims.mail"}},
        }, ns),
        resource("OAuthClient", "spa", {
            "grantTypes": ["authorization_code", "refresh_token"],
            "authentication": {"method": "none"},
            "audiences": ["orders"],
            "redirectUris": ["https://shop.example/callback", "http://127.0.0.1/callback"],
            "postLogoutRedirectUris": ["https://shop.example/"],
            "identityProviders": ["people", "corp"],
            "consent": "implicit",
            "idToken": {"ttl": "5m", "algorithm": "RS256"},
            "refreshToken": {"ttl": "720h", "idleTtl": "24h"},
            "branding": {"displayName": "Shop", "logoUrl": "https://shop.example/logo.svg",
                         "primaryColor": "#0a66c2", "backgroundColor": "#f5f7fa"},
        }, ns),
    ]


ARGON2ID = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"


# Defaults the schema gives fields inside an object the test sends.
DEFAULTS = {("OAuthClient", "accessToken"): {"binding": "none"}}


def test_valid_resources_are_accepted_by_kubectl_apply(kube, crds, namespace):
    docs = valid_resources(namespace)
    out = kube.apply(*docs).stdout
    singular = {"Scope": "scope", "OAuthClient": "oauthclient", "ExchangePolicy": "exchangepolicy",
                "IdentityProvider": "identityprovider"}
    for doc in docs:
        assert f"{singular[doc['kind']]}.{GROUP}/{doc['metadata']['name']} created" in out, out
        stored = kube.get(KINDS[doc["kind"]], doc["metadata"]["name"], namespace)
        for field, value in doc["spec"].items():
            # The API server fills in schema defaults, inside objects too.
            expected = value | DEFAULTS.get((doc["kind"], field), {}) if isinstance(value, dict) else value
            assert stored["spec"][field] == expected, (doc["kind"], field, stored["spec"])
    # Schema defaults are filled in by the API server.
    orders = kube.get("oauthclients", "orders", namespace)
    assert orders["spec"]["accessToken"]["binding"] == "none"
    assert orders["spec"]["subjectType"] == "public"
    assert orders["spec"]["allowIntrospection"] is False
    assert orders["spec"]["claims"] == {"team": "sales", "nested": {"any": ["json"]}}
    # A second apply of the same documents changes nothing.
    again = kube.apply(*docs).stdout
    assert again.count(" unchanged") == len(docs), again


JWK = {"kty": "EC", "crv": "P-256", "x": "cqYxZSrtR64jYxe851WCIjJ0csjmZQz4rRGbQ0e11t8",
       "y": "r6l6-sdRpI1ATMflrMac6WPZbgBccDxpIeydLDbGdco"}
RSA_JWK = {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "e": "AQAB",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}


def test_a_private_key_jwt_client_with_inline_ec_and_rsa_keys_is_accepted(kube, crds, namespace):
    """The JWK members `y` (EC) and `n` (RSA) are YAML 1.1 booleans when unquoted: kubectl and Helm read
    the CRD files with a YAML 1.1 parser, so the files must quote them or the API server drops both."""
    crd = kube.json("get", "crd", f"oauthclients.{GROUP}")
    items = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "authentication"]["properties"]["jwks"]["properties"]["keys"]["items"]["properties"]
    assert {"x", "y", "n", "e"} <= set(items), f"JWK members in the installed CRD: {sorted(items)}"
    doc = resource("OAuthClient", "batch", {
        "grantTypes": ["client_credentials"],
        "authentication": {"method": "private_key_jwt", "jwks": {"keys": [{**JWK, "kid": "ec-1", "alg": "ES256"}, RSA_JWK]}},
        "scopes": [],
        "audiences": ["orders"],
    }, namespace)
    kube.apply(doc)
    stored = kube.get("oauthclients", "batch", namespace)
    assert stored["spec"]["authentication"]["jwks"] == doc["spec"]["authentication"]["jwks"]
    assert stored["spec"]["accessToken"] == {"format": "jwt", "binding": "none"}, "the schema defaults"

INVALID = {
    # CEL rules (x-kubernetes-validations)
    "scope-name-and-prefix": ("Scope", {"name": "a:b", "prefix": "a_"}, "set exactly one of name and prefix"),
    "scope-neither": ("Scope", {"description": "nothing"}, "set exactly one of name and prefix"),
    "client-secret-with-jwks": ("OAuthClient", {"authentication": {"method": "client_secret_basic", "jwks": {"keys": [JWK]}}},
                                "a secret method takes no jwks"),
    "client-jwt-without-keys": ("OAuthClient", {"authentication": {"method": "private_key_jwt"}},
                                "private_key_jwt needs jwks or jwksUri"),
    "client-pairwise": ("OAuthClient", {"authentication": {"method": "none"}, "subjectType": "pairwise"},
                        "subjectType pairwise needs a sectorIdentifier"),
    # OpenAPI schema
    "client-no-authentication": ("OAuthClient", {"scopes": ["a"]}, "spec.authentication: Required value"),
    "client-unknown-method": ("OAuthClient", {"authentication": {"method": "magic"}},
                              'spec.authentication.method: Unsupported value: "magic"'),
    "client-unknown-grant": ("OAuthClient", {"authentication": {"method": "none"}, "grantTypes": ["password"]},
                             'spec.grantTypes[0]: Unsupported value: "password"'),
    "client-bad-ttl": ("OAuthClient", {"authentication": {"method": "none"}, "accessToken": {"ttl": "5 minutes"}},
                       "spec.accessToken.ttl: Invalid value"),
    "scope-space-in-name": ("Scope", {"name": "orders read"}, "spec.name: Invalid value"),
    "policy-unknown-mode": ("ExchangePolicy", {"mode": "teleport", "to": {"audience": "x"}},
                            'spec.mode: Unsupported value: "teleport"'),
    "policy-no-to": ("ExchangePolicy", {"mode": "exchange"}, "spec.to: Required value"),
    "policy-too-deep": ("ExchangePolicy", {"mode": "exchange", "to": {"audience": "x"}, "maxDelegationDepth": 17},
                        "spec.maxDelegationDepth: Invalid value: 17: spec.maxDelegationDepth in body should be less than or equal to 16"),
    "policy-empty-audience": ("ExchangePolicy", {"mode": "embed", "to": {"audience": ""}},
                              "spec.to.audience: Invalid value"),
    # Sign-in (issue #17)
    "public-client-credentials": ("OAuthClient", {"authentication": {"method": "none"}, "grantTypes": ["client_credentials"]},
                                  "a public client (method none) cannot use client_credentials"),
    "public-no-grant-types": ("OAuthClient", {"authentication": {"method": "none"}},
                              "a public client (method none) cannot use client_credentials"),
    "public-without-pkce": ("OAuthClient", {"authentication": {"method": "none"}, "grantTypes": ["authorization_code"],
                                            "requirePkce": False}, "a public client (method none) always needs PKCE"),
    "client-bad-colour": ("OAuthClient", {"authentication": {"method": "client_secret_basic"}, "branding": {"primaryColor": "red"}},
                          "spec.branding.primaryColor: Invalid value"),
    "idp-static-without-block": ("IdentityProvider", {"type": "static"}, "type static needs the static block"),
    "idp-oidc-with-static-block": ("IdentityProvider", {"type": "oidc", "static": {"users": []}},
                                   "type oidc needs the oidc block (and no static block)"),
    "idp-users-and-ref": ("IdentityProvider", {"type": "static", "static": {"users": [], "usersSecretRef": {"name": "a", "key": "b"}}},
                          "set exactly one of usersSecretRef and users"),
    "idp-inline-client-secret": ("IdentityProvider", {"type": "oidc", "oidc": {"issuer": "https://x.example", "clientId": "a",
                                                                                "clientSecret": "hunter2"}},
                                 "put the client secret in a Secret and name it in clientSecretRef"),
    "idp-unknown-type": ("IdentityProvider", {"type": "ldap"}, 'spec.type: Unsupported value: "ldap"'),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_resources_are_refused_with_the_schema_or_cel_message(kube, crds, namespace, case):
    kind, spec, message = INVALID[case]
    # No validation by kubectl: the API server is the one that refuses.
    proc = kube.apply(resource(kind, case, spec, namespace), check=False, validate=False)
    assert proc.returncode != 0, f"{case} was accepted:\n{proc.stdout}"
    # The API server's Status (reason Invalid), as kubectl prints it.
    assert f'The {kind} "{case}" is invalid:' in proc.stderr and message in proc.stderr, proc.stderr
    assert kube.get(KINDS[kind], case, namespace) is None, "a refused resource was stored"


EXAMPLES = REPO / "examples" / "kubernetes"


@pytest.mark.parametrize("example", ["scopes.yaml", "oauthclients.yaml", "exchangepolicies.yaml", "app.yaml",
                                     "sign-in.yaml"])
def test_the_kubernetes_examples_pass_the_api_servers_validation(kube, crds, example):
    """examples/kubernetes/ as a user applies it (YAML read by kubectl), judged by the API server with a
    server-side dry run: nothing is stored, so the operator never sees these."""
    kube.run("apply", "-f", str(EXAMPLES / "namespace.yaml"))
    proc = kube.run("apply", "--dry-run=server", "-f", str(EXAMPLES / example), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "(server dry run)" in proc.stdout, proc.stdout
