"""The token server goes down: the operator reports it in the status
(Ready=False, TokenServerUnavailable) and recovers when it comes back.

This restarts the session's token server (same ports and data dir); the resources
of other tests come back with the operator's resync."""

import base64

from conftest import unique
from test_operator import client, scope


def test_token_server_down_is_reported_and_recovered_from(kube, token_server, operator, reconciled, namespace):
    ns = namespace
    kube.apply(scope(ns, "orders-read", "orders:read"), client(ns))
    reconciled("OAuthClient", "orders", ns)

    token_server.stop()
    try:
        # A change while it is down: the operator cannot apply it and says why.
        kube.apply(client(ns, audiences=["payments", "orders"]))
        down = reconciled("OAuthClient", "orders", ns, status="False", reason="TokenServerUnavailable")
        assert down["metadata"]["generation"] == 2
        cond = next(c for c in down["status"]["conditions"] if c["type"] == "Ready")
        assert cond["message"], cond
    finally:
        token_server.start()

    # Back up (the same data dir and ports): the retry applies generation 2.
    up = reconciled("OAuthClient", "orders", ns, timeout=120)
    assert up["status"]["observedGeneration"] == 2
    secret = kube.get("secret", "orders-client-secret", ns)
    value = base64.b64decode(secret["data"]["client_secret"]).decode()
    resp = token_server.token(f"{ns}/orders", value, scope=unique(ns, "orders:read"), resource="orders")
    assert resp.status_code == 200, resp.text
