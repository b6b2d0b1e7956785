"""Fixtures of the cluster suite (tests/cluster/run.sh starts the cluster).

The suite works as a user would: `helm install` of charts/tokenmesh with the
images images.py loaded (pull policy Never), then the shop example
(examples/kubernetes/) applied with kubectl, its Python image swapped for the
one built here. Requests come from a pod without a sidecar ("client", the
Python image) through `kubectl exec`, or from the node itself, which reaches
cluster IPs through kube-proxy's rules like any node does.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import waiting  # noqa: E402  (shared with tests/e2e)

HERE = Path(__file__).resolve().parent
KUBECTL = os.environ.get("TOKENMESH_KUBECTL", "kubectl")
HELM = os.environ.get("TOKENMESH_HELM", "helm")
CHART = REPO / "charts" / "tokenmesh"
EXAMPLE = REPO / "examples" / "kubernetes"
STATE = Path(os.environ.get("TOKENMESH_CLUSTER_DIR", "/nonexistent"))
NS = "tokenmesh"
RELEASE = "tokenmesh"
SHOP = "shop"
# The example's meshed workloads (app.yaml).
APPS = ("orders", "payments", "ledger")
TOKEN_SERVER = f"{RELEASE}-token-server"
TOKEN_SERVER_HOST = f"{TOKEN_SERVER}.{NS}.svc"
# What examples/kubernetes/app.yaml runs, and the image built here that stands in for it.
EXAMPLE_PYTHON = "docker.io/library/python:3.13-alpine"
LOCAL_PYTHON = "localhost/tokenmesh-test/python:3.11"
VALUES = HERE / "values.yaml"
ROLLOUT = "300s"
PROBE = """\
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
"""


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 180) -> str:
    result = subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result.stdout


def kjson(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def helm(*args: str, timeout: float = 600) -> str:
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}{result.stdout}\n{diagnose()}")
    return result.stdout


def diagnose() -> str:
    """What a failure report needs: pods everywhere, recent events, the tokenmesh logs."""
    out = [kubectl("get", "pods", "-A", "-o", "wide", check=False)]
    out.append(kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)[-4000:])
    for ns, deployment in [(NS, TOKEN_SERVER), (NS, f"{RELEASE}-operator")]:
        out.append(kubectl("-n", ns, "logs", f"deployment/{deployment}", "--all-containers", "--tail", "30", check=False))
    return "\n".join(out)


def wait_until(check, timeout: float, what, interval: float = 0.5):
    """tests/waiting.py's, reporting the cluster's state (diagnose) when it times out."""
    return waiting.wait_until(check, timeout, what, interval, diagnose)


def ready(kind: str, name: str, namespace: str) -> bool:
    out = kubectl("-n", namespace, "get", kind, name, "-o",
                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return out == "True"


@pytest.fixture(scope="session")
def storage():
    """A hostPath PersistentVolume for the token server's claim: the node has no provisioner."""
    path = STATE / "volumes" / "token-server"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "token-server-data"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path), "type": "Directory"}},
    }))
    return path


@pytest.fixture(scope="session")
def release(storage):
    """charts/tokenmesh installed with the local images (tests/cluster/values.yaml)."""
    helm("install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace", "-f", str(VALUES),
         "--wait", "--timeout", "5m")
    return RELEASE


@pytest.fixture(scope="session")
def token_server_ca(release) -> Path:
    """The CA sidecars trust for the token server (the operator's, published in its TLS Secret)."""
    secret = kjson("-n", NS, "get", "secret", f"{TOKEN_SERVER}-tls")
    path = Path(tempfile.mkdtemp(prefix="tokenmesh-ca-")) / "ca.crt"
    path.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    return path


def example(name: str) -> str:
    return (EXAMPLE / name).read_text().replace(EXAMPLE_PYTHON, LOCAL_PYTHON)


@pytest.fixture(scope="session")
def shop(release):
    """The shop example, applied as docs/kubernetes.md's walk-through does."""
    kubectl("apply", "-f", "-", input=example("namespace.yaml"))
    kubectl("-n", SHOP, "create", "secret", "generic", "gateway-oauth",
            f"--from-literal=client_secret={os.urandom(32).hex()}")
    for name in ["scopes.yaml", "oauthclients.yaml", "exchangepolicies.yaml"]:
        kubectl("apply", "-f", "-", input=example(name))
    for kind, name in [("oauthclient", "orders"), ("oauthclient", "payments"), ("oauthclient", "ledger"),
                       ("oauthclient", "gateway"), ("exchangepolicy", "gateway-embeds-orders"),
                       ("exchangepolicy", "orders-to-payments"), ("exchangepolicy", "payments-shares-with-ledger")]:
        wait_until(lambda: ready(kind, name, SHOP), 120, f"{kind} {name} Ready")
    # A readiness probe on the application's port, which the capture rules make unreachable for the
    # kubelet: the webhook moves it to the sidecar's admin port.
    port = "              containerPort: 8080\n"
    app = example("app.yaml")
    assert app.count(port) == len(APPS)
    kubectl("apply", "-f", "-", input=app.replace(port, port + PROBE))
    for name in APPS:
        kubectl("-n", SHOP, "rollout", "status", f"deployment/{name}", f"--timeout={ROLLOUT}", timeout=330)
    return SHOP


@pytest.fixture(scope="session")
def client_pod(shop) -> str:
    """A pod of the shop namespace without the sidecar (no inject label), to call from."""
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": SHOP},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10002, "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "client", "image": LOCAL_PYTHON,
                "command": ["python3", "-c", "import time\nwhile True: time.sleep(3600)"],
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    kubectl("-n", SHOP, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s", timeout=150)
    pod = kjson("-n", SHOP, "get", "pod", "client")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["client"], "the client pod must not be injected"
    return "client"


# The HTTP client that runs inside a pod: GET url with optional headers; prints {"status", "body"} as JSON.
GET = r"""
import json, sys, urllib.error, urllib.request
url, headers = sys.argv[1], json.loads(sys.argv[2])
try:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=15) as r:
        status, body = r.status, r.read().decode()
except urllib.error.HTTPError as err:
    status, body = err.code, err.read().decode()
except OSError as err:
    status, body = 0, f"{type(err).__name__}: {err}"
print(json.dumps({"status": status, "body": body}))
"""


def get_from(pod: str, url: str, token: str | None = None, namespace: str = SHOP) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = kubectl("-n", namespace, "exec", pod, "-c", pod, "--", "python3", "-c", GET, url, json.dumps(headers),
                  timeout=60)
    answer = json.loads(out)
    return answer["status"], answer["body"]


def cluster_ip(service: str, namespace: str) -> str:
    return kubectl("-n", namespace, "get", "service", service, "-o", "jsonpath={.spec.clusterIP}")


CURL_COULDNT_CONNECT = 7


class Unreachable(Exception):
    """Nothing accepted the connection: right after a token server pod is replaced, kube-proxy may still route
    the Service to no endpoint (refused) until it syncs the new one."""


def token_request(ca: Path, form: dict[str, str], path: str = "/oauth2/token") -> tuple[int, dict]:
    """POST to the token server (/oauth2/token) from the node, to the token server's Service under its own name (kube-proxy routes
    the cluster IP), verifying its certificate against the operator's CA."""
    ip = cluster_ip(TOKEN_SERVER, NS)
    args = ["curl", "-sS", "--max-time", "15", "--cacert", str(ca), "--resolve", f"{TOKEN_SERVER_HOST}:8080:{ip}",
            "-o", "-", "-w", "\n%{http_code}", f"https://{TOKEN_SERVER_HOST}:8080{path}"]
    for key, value in form.items():
        args += ["--data-urlencode", f"{key}={value}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if out.returncode == CURL_COULDNT_CONNECT:
        raise Unreachable(out.stderr)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(body) if body.strip() else {}


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="session")
def gateway_token(shop, token_server_ca):
    """A token of the gateway (client_secret_post), with the embedded token for orders."""
    secret = kjson("-n", SHOP, "get", "secret", "gateway-oauth")
    value = base64.b64decode(secret["data"]["client_secret"]).decode()

    def issue():
        """The token, or None while the token server cannot be reached or refuses (callers poll)."""
        try:
            status, body = token_request(token_server_ca, {
                "grant_type": "client_credentials", "client_id": "shop/gateway", "client_secret": value,
                "scope": "orders:read payments:charge"})
        except Unreachable:
            return None
        return body.get("access_token") if status == 200 else None

    return issue
