"""Workload identity against this API server: `kubectl create token --audience` issues a JWT that verifies
against the keys the API server publishes through OIDC discovery of its issuer, and the token server, which
fetches those keys the way it would in a cluster (discovery at the API server's address with the cluster CA,
authenticated by a service-account token of its own: conftest.service_account_issuer), accepts it as the
client assertion of the OAuthClient of that service account (applied with kubectl, pushed by the operator).
A token for another audience, of another service account, or expired is refused; with TokenReview, so is the
token of a service account deleted since."""

import json
import shutil

import jwt
import pytest
import requests

from conftest import (CHART, RELEASE, RELEASE_NAMESPACE, SERVICE_ACCOUNT_ISSUER, TOKEN_AUDIENCE, TOKEN_SERVER_ACCOUNT, TokenServer,
                      helm, resource, service_account_issuer, tail, wait_until)

ISSUER = SERVICE_ACCOUNT_ISSUER


def keys(kube):
    discovery = json.loads(kube.run("get", "--raw", "/.well-known/openid-configuration").stdout)
    assert discovery["issuer"] == ISSUER
    assert discovery["jwks_uri"].endswith("/openid/v1/jwks")
    return jwt.PyJWKSet.from_dict(json.loads(kube.run("get", "--raw", "/openid/v1/jwks").stdout))


def test_a_token_for_an_audience_verifies_against_the_published_keys(kube, namespace):
    ns = namespace
    kube.run("create", "serviceaccount", "orders", "-n", ns)
    token = kube.run("create", "token", "orders", "-n", ns, "--audience", "tokenmesh-e2e",
                     "--duration", "10m").stdout.strip()
    jwks = keys(kube)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="tokenmesh-e2e", issuer=ISSUER)
    assert claims["sub"] == f"system:serviceaccount:{ns}:orders"
    assert claims["kubernetes.io"]["namespace"] == ns
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "orders"
    assert 540 <= claims["exp"] - claims["iat"] <= 660

    other = kube.run("create", "token", "orders", "-n", ns, "--audience", "someone-else").stdout.strip()
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(other, key, algorithms=["RS256"], audience="tokenmesh-e2e", issuer=ISSUER)


def test_no_token_for_a_service_account_that_does_not_exist(kube, namespace):
    proc = kube.run("create", "token", "nobody", "-n", namespace, "--audience", "tokenmesh-e2e", check=False)
    assert proc.returncode != 0 and "not found" in proc.stderr, proc.stderr


def service_account_client(ns, name):
    """The OAuthClient `<ns>/<name>` of the service account `<name>` in `<ns>` (namespace defaulted)."""
    return resource("OAuthClient", name, {
        "authentication": {"method": "kubernetes_service_account", "serviceAccount": {"name": name}},
        "audiences": ["orders-api"],
    }, namespace=ns)


def create_token(kube, ns, account, audience=TOKEN_AUDIENCE, duration="10m"):
    return kube.run("create", "token", account, "-n", ns, "--audience", audience,
                    "--duration", duration).stdout.strip()


def refused(response):
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client", response.text
    return response.json()["error_description"]


@pytest.fixture
def orders_client(kube, namespace, reconciled):
    """Service accounts `orders` (with its OAuthClient, Ready) and `payments` (none) in the test's namespace."""
    for account in ("orders", "payments"):
        kube.run("create", "serviceaccount", account, "-n", namespace)
    kube.apply(service_account_client(namespace, "orders"))
    reconciled("OAuthClient", "orders", namespace)
    return f"{namespace}/orders"


def test_the_token_server_accepts_a_service_account_token_as_the_client_assertion(
        kube, namespace, orders_client, token_server):
    token = create_token(kube, namespace, "orders")
    for client_id in (orders_client, None):
        response = token_server.token_by_assertion(token, client_id=client_id)
        assert response.status_code == 200, response.text
        claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == orders_client
        assert claims["aud"] == "orders-api"


def test_another_audience_or_another_service_account_is_refused(kube, namespace, orders_client, token_server):
    wrong_audience = create_token(kube, namespace, "orders", audience="someone-else")
    assert "aud" in refused(token_server.token_by_assertion(wrong_audience, client_id=orders_client))
    assert "aud" in refused(token_server.token_by_assertion(wrong_audience))

    payments = create_token(kube, namespace, "payments")
    refused(token_server.token_by_assertion(payments, client_id=orders_client))
    refused(token_server.token_by_assertion(payments))

    # The token server's own service account (any other token of this API server) names no client either.
    ours = create_token(kube, RELEASE_NAMESPACE, "tokenmesh-token-server")
    refused(token_server.token_by_assertion(ours, client_id=orders_client))


@pytest.fixture
def later_token_server(kube, namespace, tmp_path):
    """A second token server, standalone, with the same OAuthClient in its --config and the same view of the
    cluster, whose clock runs 15 minutes ahead (libfaketime; monotonic time untouched)."""
    faketime = shutil.which("faketime")
    # A missing tool fails the test: a skipped expiry check must not pass as one.
    assert faketime, "faketime is not installed (apt-get install faketime; .ci/run installs it)"
    server = TokenServer(tmp_path, kubernetes=service_account_issuer(kube, tmp_path),
                         resources=[service_account_client(namespace, "orders")],
                         wrapper=[faketime, "-f", "+15m"], env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    server.start()
    yield server
    server.stop()


def test_the_issuer_is_discovered_when_none_is_set(kube, namespace, tmp_path):
    """No spec.kubernetes.issuer: the token server takes the one the API server's discovery document names, and
    accepts its tokens."""
    kubernetes = service_account_issuer(kube, tmp_path)
    del kubernetes["issuer"]
    for account in ("orders", "payments"):
        kube.run("create", "serviceaccount", account, "-n", namespace)
    server = TokenServer(tmp_path, kubernetes=kubernetes, resources=[service_account_client(namespace, "orders")])
    server.start()
    try:
        response = server.token_by_assertion(create_token(kube, namespace, "orders"))
        assert response.status_code == 200, response.text
        assert f"issuer={ISSUER}" in server.log.read_text(), "the discovered issuer is in the log"
        refused(server.token_by_assertion(create_token(kube, namespace, "payments")))
    finally:
        server.stop()


def test_an_issuer_the_api_server_does_not_name_keeps_the_server_unready(kube, namespace, tmp_path):
    """kubeadm, kind and minikube sign with https://kubernetes.default.svc.cluster.local: configured with it while
    this API server signs as https://kubernetes.default.svc, the token server says so and never becomes ready,
    and a refused token's debug line names the issuer expected and the one received."""
    configured = "https://kubernetes.default.svc.cluster.local"
    kubernetes = service_account_issuer(kube, tmp_path) | {"issuer": configured}
    kube.run("create", "serviceaccount", "orders", "-n", namespace)
    server = TokenServer(tmp_path, kubernetes=kubernetes, resources=[service_account_client(namespace, "orders")],
                         env={"TOKENMESH_LOG": "info,token_server=debug,tokenmesh_core=debug"})
    server.launch()
    try:
        last = []

        def unready():
            try:
                response = requests.get(f"{server.base}/readyz", timeout=2)
            except requests.RequestException as err:
                last[:] = [err]
                return None
            last[:] = [f"{response.status_code} {response.text}"]
            # (A 503 Response is falsy: return its parts.)
            return (response.status_code, response.text) if configured in response.text else None

        status, text = wait_until(unready, 30, lambda: f"/readyz to name the issuers (last: {last}):\n{tail(server.log)}")
        assert status == 503, text
        assert f"`{ISSUER}`" in text and f"`{configured}`" in text, text
        log = server.log.read_text()
        assert "ERROR" in log and f"`{ISSUER}`" in log and f"`{configured}`" in log, log

        description = refused(server.token_by_assertion(create_token(kube, namespace, "orders")))
        assert "issuer" in description, description
        wait_until(lambda: f"received={ISSUER}" in server.log.read_text(), 10,
                   lambda: f"the refusal's debug line:\n{tail(server.log)}")
        assert f"expected={configured}" in server.log.read_text()
        assert requests.get(f"{server.base}/readyz", timeout=2).status_code == 503
    finally:
        server.stop()


def test_an_expired_service_account_token_is_refused(kube, namespace, orders_client, token_server,
                                                     later_token_server):
    """The API server issues no token shorter than 10 minutes, and signing one here would not be its token.
    So the token is real and the clock moves instead: a 10-minute token, accepted by the token server, is
    presented to a token server whose clock reads 15 minutes later (past exp and the 30 s leeway), which refuses
    it as expired. Everything else about the two servers is the same, so expiry is the only reason."""
    token = create_token(kube, namespace, "orders", duration="10m")
    assert token_server.token_by_assertion(token, client_id=orders_client).status_code == 200
    assert "expired" in refused(later_token_server.token_by_assertion(token, client_id=orders_client))


@pytest.fixture
def reviewing_token_server(kube, namespace, tmp_path):
    """A standalone token server with spec.kubernetes.tokenReview and the `orders` OAuthClient in its --config;
    its ServiceAccount bound by the chart's own RBAC (tokenServer.workloadIdentity.tokenReview: a ClusterRole
    that may only create tokenreviews), so this proves that role is enough."""
    rbac = helm("template", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "-s", "templates/token-server-rbac.yaml",
                "--set", "tokenServer.workloadIdentity.tokenReview=true").stdout
    # A control plane reused from before bound system:auth-delegator under this name (roleRef is immutable).
    kube.run("delete", "clusterrolebinding", "tokenmesh-token-server-token-review", "--ignore-not-found")
    kube.run("apply", "-f", "-", input=rbac)
    kubernetes = service_account_issuer(kube, tmp_path) | {"tokenReview": True}
    server = TokenServer(tmp_path, kubernetes=kubernetes, resources=[service_account_client(namespace, "orders")])
    server.start()
    yield server
    server.stop()


def test_token_review_refuses_the_token_of_a_deleted_service_account(kube, namespace, orders_client, token_server,
                                                                     reviewing_token_server):
    """The API server invalidates a token whose service account is gone; its signature still checks out, so
    only a token server that asks the API server (TokenReview) refuses it before it expires."""
    token = create_token(kube, namespace, "orders")
    assert reviewing_token_server.token_by_assertion(token, client_id=orders_client).status_code == 200
    kube.run("delete", "serviceaccount", "orders", "-n", namespace)
    assert token_server.token_by_assertion(token, client_id=orders_client).status_code == 200, \
        "without TokenReview the token is good until it expires"
    # At the latest once the remembered answer (5 s) is gone.
    wait_until(lambda: reviewing_token_server.token_by_assertion(token, client_id=orders_client).status_code != 200,
               20, "the reviewing token server to refuse the deleted account's token")
    assert "TokenReview" in refused(reviewing_token_server.token_by_assertion(token, client_id=orders_client))
