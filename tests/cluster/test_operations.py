"""Day-2 operations under traffic: a load loop in the client pod calls orders,
which calls payments through its sidecar, and counts every failure.

- helm upgrade with a changed value rolls the token server and the operator
  out: no request fails;
- signing keys rotate (values.yaml: every 30 s) while fresh tokens flow: no
  verification fails;
- the token server's pod is killed: the sidecars serve their cached
  exchanges, and new exchanges work once it is back.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from conftest import (
    CHART,
    KUBECTL,
    NS,
    RELEASE,
    SHOP,
    TOKEN_SERVER,
    TOKEN_SERVER_HOST,
    VALUES,
    get_from,
    helm,
    kjson,
    kubectl,
    wait_until,
)
from test_mesh import ORDERS, orders_token

LOAD = (Path(__file__).parent / "load.py").read_text()


class Load:
    """load.py running in a pod until stop()."""

    def __init__(self, pod: str, config: dict):
        self.proc = subprocess.Popen(
            [KUBECTL, "-n", SHOP, "exec", "-i", pod, "-c", pod, "--", "python3", "-c", LOAD, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "started":
            self.proc.kill()
            pytest.fail(f"the load loop did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> dict:
        out, err = self.proc.communicate("stop\n", timeout=120)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


def pod_uids(component: str) -> set[str]:
    """The component's live pods: one the upgrade replaced may still be
    draining (Terminating) when the rollout is complete."""
    pods = kjson("-n", NS, "get", "pods", "-l", f"app.kubernetes.io/component={component}")["items"]
    return {p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}


def gateway_config(token_server_ca: Path) -> dict:
    secret = kjson("-n", SHOP, "get", "secret", "gateway-oauth")["data"]["client_secret"]
    return {"url": ORDERS, "token_url": f"https://{TOKEN_SERVER_HOST}:8080/oauth2/token",
            "client_id": "shop/gateway", "client_secret": base64.b64decode(secret).decode(),
            "ca": token_server_ca.read_text()}


def test_helm_upgrade_rolls_out_without_failed_requests(client_pod, gateway_token):
    before = {c: pod_uids(c) for c in ("token-server", "operator")}
    assert all(before.values()), before
    load = Load(client_pod, {"url": ORDERS, "token": orders_token(gateway_token)})
    try:
        helm("upgrade", RELEASE, str(CHART), "--namespace", NS, "-f", str(VALUES),
             "--set", "tokenServer.logLevel=debug", "--set", "operator.logLevel=debug", "--wait", "--timeout", "5m")
        for deployment in (TOKEN_SERVER, f"{RELEASE}-operator"):
            kubectl("-n", NS, "rollout", "status", f"deployment/{deployment}", "--timeout=180s", timeout=200)
    finally:
        result = load.stop()
    after = {c: pod_uids(c) for c in ("token-server", "operator")}
    assert all(not before[c] & after[c] for c in before), "the upgrade replaced the pods"
    assert result["failed"] == 0 and result["ok"] > 0, result


def test_key_rotation_under_traffic_fails_no_verification(client_pod, token_server_ca, gateway_token):
    load = Load(client_pod, gateway_config(token_server_ca) | {"fresh": 1, "pause": 0.1})
    try:
        first = header_kid(wait_until(gateway_token, 60, "a gateway token"))
        wait_until(lambda: header_kid(gateway_token() or "") not in (None, first), 150,
                   "the token server to sign with its successor key (rotationPeriod 30s)", interval=2)
        # Some traffic under the new key as well.
        wait_until(lambda: header_kid(gateway_token() or "") not in (None, first), 10, "the new key", interval=2)
    finally:
        result = load.stop()
    assert result["failed"] == 0 and result["issue_errors"] == 0, result
    assert len(result["kids"]) >= 2, f"no rotation seen by the load: {result}"


def header_kid(token: str) -> str | None:
    if token.count(".") != 2:
        return None
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid")


def test_token_server_killed_mid_traffic_sidecars_serve_cached_exchanges_and_recover(client_pod, gateway_token):
    load = Load(client_pod, {"url": ORDERS, "token": orders_token(gateway_token)})
    try:
        old = pod_uids("token-server")
        kubectl("-n", NS, "delete", "pod", "-l", "app.kubernetes.io/component=token-server",
                "--grace-period=0", "--force", "--wait=false")
        wait_until(lambda: (new := pod_uids("token-server")) and not new & old, 60, "a new token server pod")
        kubectl("-n", NS, "rollout", "status", f"deployment/{TOKEN_SERVER}", "--timeout=180s", timeout=200)
    finally:
        result = load.stop()
    assert result["failed"] == 0 and result["ok"] > 0, result
    # Recovered: a new subject token needs a new exchange from the new pod.
    wait_until(lambda: get_from(client_pod, ORDERS, orders_token(gateway_token))[0] == 200, 60,
               "a new exchange through the restarted token server")
