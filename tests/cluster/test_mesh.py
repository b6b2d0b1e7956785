"""The shop example as pods: injected sidecars and capture init containers, pods
Ready through the probes the webhook moved to the sidecar, tokens embedded,
exchanged and shared on the way gateway -> orders -> payments -> ledger as the
ExchangePolicies say, and what must be refused (no token, the way around the sidecar, a revoked
token, a deleted OAuthClient)."""

import base64
import contextlib
import json
import subprocess

from conftest import (
    APPS,
    KUBECTL,
    NS,
    SHOP,
    TOKEN_SERVER,
    TOKEN_SERVER_HOST,
    claims,
    example,
    get_from,
    kjson,
    kubectl,
    ready,
    token_request,
    wait_until,
)

ORDERS = f"http://orders.{SHOP}.svc/charge"


def orders_token(gateway_token) -> str:
    """What the gateway sends to orders: the token embedded for shop/orders in its own."""
    token = wait_until(gateway_token, 60, "a token for the gateway")
    return claims(token)["embedded_tokens"]["shop/orders"]


def test_pods_are_injected_and_ready_through_moved_probes(shop):
    for app in APPS:
        (pod,) = kjson("-n", SHOP, "get", "pods", "-l", f"app={app}")["items"]
        containers = [c["name"] for c in pod["spec"]["containers"]]
        assert containers == [app, "tokenmesh-sidecar"], containers
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["tokenmesh-capture"]
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0, init
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
        # The application's readiness probe (tests/cluster: the port is captured) now asks the sidecar's
        # admin port, which asks the application on loopback.
        probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe["port"] == 15020, probe


def test_a_request_carries_the_embedded_then_the_exchanged_token(client_pod, gateway_token):
    token = orders_token(gateway_token)
    status, body = get_from(client_pod, ORDERS, token)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["received"]["aud"] == "shop/orders"
    assert answer["received"]["client_id"] == "shop/gateway"
    # orders' sidecar exchanged it for payments under orders-to-payments.
    forwarded = answer["payments"]["received"]
    assert forwarded["aud"] == "shop/payments"
    assert forwarded["act"]["client_id"] == "shop/orders"
    assert forwarded["via"] == "shop/orders"
    assert forwarded["scope"] == "payments:charge"


def test_payments_shares_the_token_it_received_with_ledger(client_pod, gateway_token):
    status, body = get_from(client_pod, ORDERS, orders_token(gateway_token))
    assert status == 200, body
    payments = json.loads(body)["payments"]
    # payments-shares-with-ledger: payments' sidecar passed the very token on (same jti, nothing
    # exchanged), and ledger's sidecar accepted it for the audience it serves (shop/payments).
    assert payments["ledger"]["service"] == "ledger"
    assert payments["ledger"]["received"] == payments["received"]
    assert payments["ledger"]["received"]["aud"] == "shop/payments"


def test_a_request_without_a_token_is_refused(client_pod):
    status, body = get_from(client_pod, ORDERS)
    assert status == 401, body


def test_the_gateways_own_token_is_not_for_orders(client_pod, gateway_token):
    status, body = get_from(client_pod, ORDERS, wait_until(gateway_token, 60, "a gateway token"))
    assert status == 401, body


def test_no_way_around_the_sidecar_to_the_application_port(client_pod, gateway_token):
    (pod,) = kjson("-n", SHOP, "get", "pods", "-l", "app=orders")["items"]
    ip = pod["status"]["podIP"]
    token = orders_token(gateway_token)
    # Straight to the application's port on the pod's address, even with a valid token: the capture
    # rules send it through the sidecar, which wants a token; the application itself never answers.
    status, body = get_from(client_pod, f"http://{ip}:8080/charge")
    assert status in (0, 401), (status, body)
    status, body = get_from(client_pod, f"http://{ip}:8080/charge", token)
    if status == 200:
        assert json.loads(body)["received"]["aud"] == "shop/orders"  # it went through the sidecar's check


def test_a_revoked_token_stops_at_the_next_hop(client_pod, gateway_token, shop, token_server_ca):
    token = orders_token(gateway_token)
    status, body = get_from(client_pod, ORDERS, token)
    assert status == 200, body
    secret = kjson("-n", SHOP, "get", "secret", "gateway-oauth")["data"]["client_secret"]
    status, answer = token_request(token_server_ca, {
        "client_id": "shop/gateway", "client_secret": base64.b64decode(secret).decode(), "token": token},
        path="/oauth2/revoke")
    assert status == 200, answer
    wait_until(lambda: get_from(client_pod, ORDERS, token)[0] == 401, 30,
               "orders' sidecar to refuse the revoked token")


def test_deleting_an_oauthclient_stops_its_pods_calls(client_pod, gateway_token, shop):
    kubectl("-n", SHOP, "delete", "oauthclient", "orders", "--timeout=60s")
    try:
        def refused():
            # A new subject token each time: the sidecar cannot have an exchange of it cached.
            status, body = get_from(client_pod, ORDERS, orders_token(gateway_token))
            return status == 502 and "received" not in json.loads(body)["payments"]

        wait_until(refused, 60, "orders' calls to payments to fail without its OAuthClient")
    finally:
        kubectl("apply", "-f", "-", input=example("oauthclients.yaml"))
        wait_until(lambda: ready("oauthclient", "orders", SHOP), 120, "the orders OAuthClient back")
    wait_until(lambda: get_from(client_pod, ORDERS, orders_token(gateway_token))[0] == 200, 60,
               "orders' calls to work again with its OAuthClient back")


def test_a_token_travels_through_port_forwards_as_install_md_shows(shop, gateway_token, token_server_ca):
    """docs/install.md's "Try it on a local cluster", step 4, from outside the cluster: a gateway token
    through a port-forward to the token server (TLS, its Service's name), then orders through a
    port-forward to its Service."""
    with port_forward(NS, f"service/{TOKEN_SERVER}", 8080) as token_port, \
            port_forward(SHOP, "service/orders", 80) as orders_port:
        host = f"{TOKEN_SERVER_HOST}:{token_port}"
        secret = base64.b64decode(kjson("-n", SHOP, "get", "secret", "gateway-oauth")["data"]["client_secret"])
        answer = subprocess.run(
            ["curl", "-sS", "--max-time", "15", "--cacert", str(token_server_ca), "--resolve", f"{host}:127.0.0.1",
             f"https://{host}/oauth2/token", "-d", "grant_type=client_credentials", "-d", "client_id=shop/gateway",
             "--data-urlencode", f"client_secret={secret.decode()}", "-d", "scope=orders:read payments:charge"],
            capture_output=True, text=True, timeout=30, check=True)
        orders = claims(json.loads(answer.stdout)["access_token"])["embedded_tokens"]["shop/orders"]
        url = f"http://127.0.0.1:{orders_port}/charge"
        body = json.loads(curl(url, orders))
        assert body["received"]["aud"] == "shop/orders"
        assert body["payments"]["received"]["aud"] == "shop/payments"
        assert body["payments"]["ledger"]["received"]["jti"] == body["payments"]["received"]["jti"]
        assert curl(url, None, status_only=True) == "401"


def curl(url: str, token: str | None, status_only: bool = False) -> str:
    args = ["curl", "-sS", "--max-time", "15", url]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    if status_only:
        args += ["-o", "/dev/null", "-w", "%{http_code}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout


@contextlib.contextmanager
def port_forward(namespace: str, target: str, port: int):
    """kubectl port-forward to a free local port, for as long as the block runs; yields the port."""
    proc = subprocess.Popen([KUBECTL, "-n", namespace, "port-forward", target, f":{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # "Forwarding from 127.0.0.1:PORT -> 8080" once it listens.
        line = proc.stdout.readline()
        assert line.startswith("Forwarding from 127.0.0.1:"), line + proc.stderr.read()
        yield int(line.split("127.0.0.1:", 1)[1].split()[0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
