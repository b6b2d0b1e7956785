"""The operator (a process outside the cluster) reconciles OAuthClient, Scope,
ExchangePolicy and IdentityProvider resources of the real API server into the
real token server."""

import base64
import contextlib
import json
import uuid

import jwt
import requests

from conftest import CHART, RELEASE, RELEASE_NAMESPACE, helm, ready_condition, resource, unique, wait_until

METHOD_SECRET = {"method": "client_secret_basic"}


def client(ns, name="orders", scopes=("orders:read",), audiences=("payments",)):
    """An OAuthClient with a generated secret; scopes are made unique()."""
    return resource("OAuthClient", name, {
        "grantTypes": ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"],
        "authentication": METHOD_SECRET,
        "scopes": [unique(ns, s) for s in scopes],
        "audiences": list(audiences),
        "accessToken": {"format": "jwt", "ttl": "300s"},
    }, ns)


def scope(ns, name, value):
    return resource("Scope", name, {"name": unique(ns, value)}, ns)


def generated_secret(kube, ns, name):
    """The client secret the operator generated into the Secret <name>-client-secret."""
    secret = kube.get("secret", f"{name}-client-secret", ns)
    assert secret is not None, f"no Secret {ns}/{name}-client-secret"
    return secret, base64.b64decode(secret["data"]["client_secret"]).decode()


def test_resources_become_ready_and_the_client_gets_a_token_with_its_generated_secret(
        kube, token_server, reconciled, namespace):
    ns = namespace
    docs = [
        scope(ns, "orders-read", "orders:read"),
        client(ns),
        resource("ExchangePolicy", "orders-to-payments", {
            "mode": "exchange",
            "from": {"audiences": ["orders"]},
            "actor": {"clients": [f"{ns}/orders"]},
            "to": {"audience": "payments", "scopes": [unique(ns, "orders:read")]},
            "ttl": "120s",
        }, ns),
    ]
    kube.apply(*docs)
    for doc in docs:
        obj = reconciled(doc["kind"], doc["metadata"]["name"], ns)
        cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert cond["reason"] == "Applied", cond
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
        assert "tokenmesh.dev/token-server" in obj["metadata"].get("finalizers", []), obj["metadata"]

    owner = kube.get("oauthclients", "orders", ns)
    secret, value = generated_secret(kube, ns, "orders")
    refs = secret["metadata"].get("ownerReferences") or []
    assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("OAuthClient", "orders", owner["metadata"]["uid"])], refs
    assert len(value) >= 32

    resp = token_server.token(f"{ns}/orders", value, scope=unique(ns, "orders:read"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"].lower() == "bearer" and body["scope"] == unique(ns, "orders:read"), body
    meta = requests.get(f"{token_server.base}/.well-known/oauth-authorization-server", timeout=10).json()
    key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(body["access_token"])
    claims = jwt.decode(body["access_token"], key, algorithms=["ES256"], options={"verify_aud": False})
    assert claims["iss"] == token_server.base
    assert claims.get("client_id", claims.get("sub")) == f"{ns}/orders", claims

    wrong = token_server.token(f"{ns}/orders", value[::-1], scope=unique(ns, "orders:read"))
    assert wrong.status_code == 401, wrong.text


def test_an_edit_changes_what_the_token_server_grants_and_a_delete_goes_through_the_finalizer(
        kube, token_server, reconciled, namespace):
    ns = namespace
    kube.apply(scope(ns, "orders-read", "orders:read"), scope(ns, "orders-write", "orders:write"),
               client(ns, scopes=["orders:read", "orders:write"]))
    reconciled("OAuthClient", "orders", ns)
    _, value = generated_secret(kube, ns, "orders")
    assert token_server.token(f"{ns}/orders", value, scope=unique(ns, "orders:write")).status_code == 200

    # Remove a scope from the client: the token server refuses it from then on.
    kube.apply(client(ns, scopes=["orders:read"]))
    obj = reconciled("OAuthClient", "orders", ns)
    assert obj["metadata"]["generation"] == 2
    refused = token_server.token(f"{ns}/orders", value, scope=unique(ns, "orders:write"))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope", refused.text
    assert token_server.token(f"{ns}/orders", value, scope=unique(ns, "orders:read")).status_code == 200

    # Delete the client: the operator removes it from the token server, then its finalizer.
    kube.run("delete", "oauthclient", "orders", "-n", ns, "--timeout=60s")
    assert kube.get("oauthclients", "orders", ns) is None
    gone = token_server.token(f"{ns}/orders", value, scope=unique(ns, "orders:read"))
    assert gone.status_code == 401, gone.text

    # A Scope no client uses any more is deleted the same way.
    kube.run("delete", "scope", "orders-write", "-n", ns, "--timeout=60s")
    assert kube.get("scopes", "orders-write", ns) is None


def test_a_client_with_a_secret_of_its_own(kube, token_server, reconciled, namespace):
    ns = namespace
    kube.run("create", "secret", "generic", "gateway-oauth", "-n", ns,
             "--from-literal=client_secret=gateway-secret-0123456789abcdefghijklmnopqrstuvwxyz")
    kube.apply(scope(ns, "orders-read", "orders:read"), resource("OAuthClient", "gateway", {
        "grantTypes": ["client_credentials"],
        "authentication": {"method": "client_secret_post", "secretRef": {"name": "gateway-oauth", "key": "client_secret"}},
        "scopes": [unique(ns, "orders:read")],
        "audiences": ["orders"],
        "accessToken": {"format": "opaque"},
    }, ns))
    reconciled("OAuthClient", "gateway", ns)
    assert kube.get("secret", "gateway-client-secret", ns) is None, "a Secret was generated for a client with secretRef"

    def token():
        return requests.post(f"{token_server.base}/oauth2/token", timeout=10, data={
            "grant_type": "client_credentials", "client_id": f"{ns}/gateway",
            "client_secret": "gateway-secret-0123456789abcdefghijklmnopqrstuvwxyz",
            "scope": unique(ns, "orders:read")})

    resp = wait_until(lambda: (r := token()).status_code == 200 and r, 10, lambda: token().text)
    assert "." not in resp.json()["access_token"], "an opaque token was asked for"


def gateway(ns):
    """An OAuthClient whose client_secret_basic secret is the key client_secret of the Secret gateway-oauth."""
    return resource("OAuthClient", "gateway", {
        "grantTypes": ["client_credentials"],
        "authentication": {"method": "client_secret_basic", "secretRef": {"name": "gateway-oauth", "key": "client_secret"}},
        "scopes": [unique(ns, "orders:read")],
        "audiences": ["orders"],
    }, ns)


def test_a_new_value_of_a_referenced_secret_applies_within_seconds(kube, token_server, reconciled, namespace):
    ns = namespace
    old, new = "first-gateway-secret-0123456789abcdefghijkl", "second-gateway-secret-0123456789abcdefghijk"
    kube.run("create", "secret", "generic", "gateway-oauth", "-n", ns, f"--from-literal=client_secret={old}")
    kube.apply(scope(ns, "orders-read", "orders:read"), gateway(ns))
    reconciled("OAuthClient", "gateway", ns)

    def status(secret):
        return token_server.token(f"{ns}/gateway", secret, scope=unique(ns, "orders:read")).status_code

    assert status(old) == 200
    kube.run("patch", "secret", "gateway-oauth", "-n", ns, "--type=merge",
             "-p", json.dumps({"stringData": {"client_secret": new}}))
    # Well before the operator's resync (30 s here): the Secret is watched, not polled.
    wait_until(lambda: status(new) == 200, 10, "the new value of the referenced Secret to work")
    assert status(old) == 401, "the old value still works"


def test_a_missing_referenced_secret_is_named_in_the_status(kube, token_server, reconciled, namespace):
    ns = namespace
    kube.apply(scope(ns, "orders-read", "orders:read"), gateway(ns))
    obj = reconciled("OAuthClient", "gateway", ns, status="False", reason="SecretUnavailable")
    message = ready_condition(obj)["message"]
    assert "Secret `gateway-oauth` (key `client_secret`)" in message and "does not exist" in message, message
    assert "ErrorResponse" not in message and "Status {" not in message, message

    value = "late-gateway-secret-0123456789abcdefghijklmn"
    kube.run("create", "secret", "generic", "gateway-oauth", "-n", ns, f"--from-literal=client_secret={value}")
    reconciled("OAuthClient", "gateway", ns)
    assert token_server.token(f"{ns}/gateway", value, scope=unique(ns, "orders:read")).status_code == 200

    # Deleting the Secret cuts the client off within seconds: the last value
    # pushed stops working, not only the status changes.
    kube.run("delete", "secret", "gateway-oauth", "-n", ns)
    wait_until(lambda: token_server.token(f"{ns}/gateway", value, scope=unique(ns, "orders:read")).status_code == 401,
               timeout=15, what="the deleted Secret's value refused")
    reconciled("OAuthClient", "gateway", ns, status="False", reason="SecretUnavailable")


def test_a_secret_of_the_generated_name_made_by_someone_else_is_left_alone(kube, token_server, reconciled,
                                                                         namespace):
    ns = namespace
    theirs = "someone-elses-secret-0123456789abcdefghijkl"
    kube.run("create", "secret", "generic", "orders-client-secret", "-n", ns, f"--from-literal=client_secret={theirs}")
    before = kube.get("secret", "orders-client-secret", ns)
    kube.apply(scope(ns, "orders-read", "orders:read"), client(ns))
    obj = reconciled("OAuthClient", "orders", ns, status="False", reason="SecretConflict")
    assert "`orders-client-secret`" in ready_condition(obj)["message"]
    after = kube.get("secret", "orders-client-secret", ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "the Secret was written"
    assert "ownerReferences" not in after["metadata"]
    refused = token_server.token(f"{ns}/orders", theirs, scope=unique(ns, "orders:read"))
    assert refused.status_code == 401, "the client took over a Secret it did not create"


@contextlib.contextmanager
def admission_policy(kube):
    """The chart's ValidatingAdmissionPolicy and its binding, for the duration (cluster-wide: removed after)."""
    manifests = helm("template", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE,
                     "-s", "templates/oauthclient-admission-policy.yaml").stdout
    kube.run("apply", "-f", "-", input=manifests)
    try:
        yield
    finally:
        kube.run("delete", "--ignore-not-found", "-f", "-", input=manifests)


def test_a_client_id_of_another_namespace_is_rejected_by_the_operator_and_at_admission(
        kube, token_server, reconciled, namespace):
    shop = namespace
    evil = f"e2e-evil-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", evil)
    squatter = client(evil, name="innocent")
    squatter["spec"]["clientId"] = f"{shop}/orders"

    # Without the admission policy the API server takes it; the operator reports it and writes nothing.
    kube.apply(squatter)
    obj = reconciled("OAuthClient", "innocent", evil, status="False", reason="Rejected")
    assert f"must begin with `{evil}/`" in ready_condition(obj)["message"], obj["status"]
    assert obj["status"]["clientId"] == f"{shop}/orders"
    assert kube.get("secret", "innocent-client-secret", evil) is None

    # The id stays with its namespace: the legitimate client gets it, and tokens.
    kube.apply(scope(shop, "orders-read", "orders:read"), client(shop))
    obj = reconciled("OAuthClient", "orders", shop)
    assert obj["status"]["clientId"] == f"{shop}/orders"
    _, value = generated_secret(kube, shop, "orders")
    assert token_server.token(f"{shop}/orders", value, scope=unique(shop, "orders:read")).status_code == 200
    # `kubectl get` shows the default id, which spec.clientId does not hold.
    header, row = kube.run("get", "oauthclients", "orders", "-n", shop).stdout.splitlines()[:2]
    assert "CLIENT ID" in header and f"{shop}/orders" in row.split(), (header, row)

    with admission_policy(kube):
        another = client(evil, name="innocent-too")
        another["spec"]["clientId"] = f"{shop}/orders"
        body = json.dumps(another)

        def refused():
            # A dry run goes through admission and creates nothing, so every try is a CREATE.
            proc = kube.run("apply", "--dry-run=server", "-f", "-", input=body, check=False)
            return proc.returncode != 0 and proc

        proc = wait_until(refused, 30, "the ValidatingAdmissionPolicy to refuse a squatting OAuthClient")
        assert "ValidatingAdmissionPolicy" in proc.stderr, proc.stderr
        assert f"must begin with `{evil}/`" in proc.stderr, proc.stderr
        assert kube.apply(another, check=False).returncode != 0
        assert kube.get("oauthclients", "innocent-too", evil) is None
        # Its own namespace's ids pass.
        own = client(evil, name="orders-v2")
        own["spec"]["clientId"] = f"{evil}/orders/v2"
        kube.run("apply", "--dry-run=server", "-f", "-", input=json.dumps(own))
        # A client admitted before the policy keeps working with the API server: its finalizer comes off.
        kube.run("delete", "oauthclient", "innocent", "-n", evil, "--timeout=60s")
        assert kube.get("oauthclients", "innocent", evil) is None


ARGON2ID = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"


def test_an_identity_provider_takes_its_users_from_a_secret_and_clients_may_name_only_existing_ones(
        kube, token_server, reconciled, namespace):
    ns = namespace
    kube.apply(resource("IdentityProvider", "people", {
        "type": "static",
        "static": {"usersSecretRef": {"name": "people", "key": "users.yaml"}},
    }, ns))
    obj = reconciled("IdentityProvider", "people", ns, status="False", reason="SecretUnavailable")
    message = ready_condition(obj)["message"]
    assert "spec.static.usersSecretRef names the Secret `people` (key `users.yaml`)" in message, message

    # The Secret arrives: watched, so the provider is applied within seconds.
    users = f"- username: alice\n  passwordHash: \"{ARGON2ID}\"\n  claims: {{email: alice@example.com}}\n"
    kube.run("create", "secret", "generic", "people", "-n", ns, f"--from-literal=users.yaml={users}")
    obj = reconciled("IdentityProvider", "people", ns, timeout=15)
    assert "tokenmesh.dev/token-server" in obj["metadata"].get("finalizers", []), obj["metadata"]

    def spa(name, providers):
        return resource("OAuthClient", name, {
            "grantTypes": ["authorization_code", "refresh_token"],
            "authentication": {"method": "none"},
            "audiences": ["orders"],
            "redirectUris": ["https://shop.example/callback"],
            "identityProviders": providers,
        }, ns)

    kube.apply(spa("spa", ["people"]), spa("lost", ["nobody"]))
    reconciled("OAuthClient", "spa", ns)
    obj = reconciled("OAuthClient", "lost", ns, status="False", reason="Rejected")
    message = ready_condition(obj)["message"]
    assert "no IdentityProvider `nobody`" in message, message
