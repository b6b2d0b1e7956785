"""The shop example as pods: injected sidecars and capture init containers, pods
Ready through the probes the webhook moved to the sidecar, tokens embedded and
exchanged on the way gateway -> orders -> payments as the ExchangePolicies
say, and what must be refused (no token, the way around the sidecar, a revoked
token, a deleted OAuthClient)."""

import base64
import json

from conftest import (
    SHOP,
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
    for app in ("orders", "payments"):
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
