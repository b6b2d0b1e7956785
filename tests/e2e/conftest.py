"""Fixtures of the end-to-end suite.

The control plane (etcd and kube-apiserver, tests/e2e/control-plane.sh) is
started by run.sh, which exports KUBECONFIG and TOKENMESH_KUBECTL. Here the
suite installs the CRDs, runs the real token server and the real operator as
local processes (the operator outside the cluster, with the kubeconfig), and
gives each test a namespace of its own. No controller-manager runs: namespaces
are never deleted and owner references are not garbage-collected.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from binaries import binary  # noqa: E402  (where cargo put the binaries)
from ports import free_port  # noqa: E402  (shared with the interop and chart harnesses)
from waiting import wait_until  # noqa: E402,F401  (shared with tests/cluster)

CRDS = REPO / "charts" / "tokenmesh" / "crds"
KUBECTL = os.environ.get("TOKENMESH_KUBECTL", "kubectl")
HELM = os.environ.get("TOKENMESH_HELM", "helm")
CHART = REPO / "charts" / "tokenmesh"
SERVER_BIN = str(binary("token-server", "TOKENMESH_SERVER_BIN"))
OPERATOR_BIN = str(binary("tokenmesh-operator", "TOKENMESH_OPERATOR_BIN"))
GROUP = "tokenmesh.dev"
API_VERSION = f"{GROUP}/v1alpha1"
KINDS = {"OAuthClient": "oauthclients", "Scope": "scopes", "ExchangePolicy": "exchangepolicies", "TokenServer": "tokenservers",
         "IdentityProvider": "identityproviders"}
RECONCILE_TIMEOUT = 60


def tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({path}: {err})"


def child_env():
    """The caller's environment without TOKENMESH_* (the binaries read their flags from those)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENMESH_")} | {"NO_COLOR": "1"}


def unique(ns, value):
    """A scope string of this test's own: the token server keeps one scope namespace for the whole cluster
    (a Scope `orders:read` in two namespaces is refused as a duplicate)."""
    return f"{value}.{ns.rsplit('-', 1)[1]}"


def resource(kind, name, spec, namespace=None, **metadata):
    meta = {"name": name, **metadata}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


class Kube:
    """kubectl against the control plane of run.sh."""

    def run(self, *args, input=None, check=True, timeout=60):
        proc = subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def apply(self, *docs, check=True, server_side=False, validate=True):
        """`kubectl apply -f -` of the documents (a List); returns the CompletedProcess.
        validate=False: no validation by kubectl itself, so only the API server judges the documents."""
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
        args = ["apply", "-f", "-"] + (["--server-side"] if server_side else []) + ([] if validate else ["--validate=false"])
        return self.run(*args, input=body, check=check)

    def get(self, kind, name, namespace=None):
        """The object as a dict, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.run(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            pytest.fail(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return json.loads(proc.stdout)

    def json(self, *args):
        return json.loads(self.run(*args, "-o", "json").stdout)


def ready_condition(obj):
    for cond in (obj or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond
    return None


@pytest.fixture(scope="session")
def kube():
    if "KUBECONFIG" not in os.environ:
        pytest.exit("KUBECONFIG is not set: run the suite through tests/e2e/run.sh", returncode=2)
    return Kube()


@pytest.fixture(scope="session")
def crds(kube):
    """The generated CRDs of the chart, installed and Established."""
    kube.run("apply", "--server-side", "-f", str(CRDS))
    names = [f"{plural}.{GROUP}" for plural in KINDS.values()]
    # Polled, not `kubectl wait --for=condition=Established`: that fails at once ("<nil> is of the
    # type <nil>") when a CRD has no status.conditions yet, as happens on a busy machine.
    def established(name):
        conditions = ((kube.get("crd", name) or {}).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    for name in names:
        wait_until(lambda: established(name), 60, f"CRD {name} Established")
    return names


@pytest.fixture
def namespace(kube, request):
    """A namespace of this test's own (never deleted: no namespace controller runs)."""
    name = f"e2e-{request.node.name.lower()}"[:40].rstrip("-")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name) + "-" + uuid.uuid4().hex[:6]
    kube.run("create", "namespace", name)
    return name


class Process:
    """A child process with its log in a file, stopped with SIGTERM. It runs in a process group of its own and
    stop() signals the whole group, so a wrapper's child (the token server under faketime, which forks it and
    does not pass SIGTERM on) is stopped too, not left running after the suite."""

    def __init__(self, name, log):
        self.name, self.log, self.proc = name, Path(log), None

    def spawn(self, args, env=None):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=child_env() | (env or {}), start_new_session=True)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self):
        """Whether any process of the group is left (the leader, or a child it started)."""
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait_http(self, url, timeout=30):
        def ok():
            if not self.alive():
                pytest.fail(f"{self.name} exited ({self.proc.returncode}):\n{tail(self.log)}")
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ok, timeout, lambda: f"{url} of {self.name}:\n{tail(self.log)}")

    def stop(self):
        """SIGTERM to the group; SIGKILL to what is left of it after 15 s."""
        if self.proc is None or (not self.alive() and not self.group_alive()):
            return
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 15
        # Reaped first, so a leader that has exited is no zombie in the group.
        while self.proc.poll() is None or self.group_alive():
            if time.monotonic() > deadline:
                self.signal_group(signal.SIGKILL)
                self.proc.wait()
                break
            time.sleep(0.05)


class TokenServer(Process):
    """The real token server: no resources of its own but a TokenServer (plus `resources`, when given); the
    operator applies the rest. `kubernetes` is the TokenServer's spec.kubernetes; `wrapper` a command the binary
    runs under (faketime), with `env` added to its environment."""

    def __init__(self, root: Path, kubernetes=None, resources=(), wrapper=(), env=None):
        super().__init__("token-server", root / "token-server.log")
        self.wrapper, self.env = list(wrapper), env or {}
        self.root = root
        self.port, self.grpc_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.grpc_url = f"http://127.0.0.1:{self.grpc_port}"
        self.admin_token_file = root / "admin-token"
        self.admin_token_file.write_text(secrets.token_urlsafe(36))
        self.admin_token_file.chmod(0o600)
        self.config = root / "tokenmesh.yaml"
        spec = {"signing": {"algorithm": "ES256"}} | ({"kubernetes": kubernetes} if kubernetes else {})
        docs = [resource("TokenServer", "default", spec), *resources]
        self.config.write_text("\n---\n".join(json.dumps(d) for d in docs))

    def launch(self):
        """Starts the binary without waiting for it to be ready."""
        self.spawn([*self.wrapper, SERVER_BIN, "--config", str(self.config), "--admin-token-file", str(self.admin_token_file),
                    "--http-addr", f"127.0.0.1:{self.port}", "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
                    "--issuer", self.base, "--data-dir", str(self.root / "data")], env=self.env)

    def start(self):
        self.launch()
        self.wait_http(f"{self.base}/readyz")

    def token(self, client_id, secret, **form):
        """POST /oauth2/token with HTTP Basic client authentication (client_credentials by default)."""
        return requests.post(f"{self.base}/oauth2/token", auth=(client_id, secret),
                             data={"grant_type": "client_credentials", **form}, timeout=10)

    def token_by_assertion(self, assertion, client_id=None, **form):
        """POST /oauth2/token authenticated by an RFC 7523 client assertion (a service-account token)."""
        data = {"grant_type": "client_credentials", "client_assertion": assertion,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", **form}
        if client_id:
            data["client_id"] = client_id
        return requests.post(f"{self.base}/oauth2/token", data=data, timeout=10)


# The operator's side of the cluster as the chart renders it for release "tokenmesh" in "tokenmesh-system":
# its ServiceAccount and RBAC, the webhook Service and the MutatingWebhookConfiguration (no caBundle).
RELEASE, RELEASE_NAMESPACE = "tokenmesh", "tokenmesh-system"
OPERATOR_ACCOUNT = "tokenmesh-operator"
OPERATOR_TEMPLATES = ["serviceaccounts.yaml", "operator-rbac.yaml", "webhook-service.yaml", "webhook-configuration.yaml"]
WEBHOOK_NAMESPACE = RELEASE_NAMESPACE
WEBHOOK_SERVICE = "tokenmesh-webhook"
WEBHOOK_CONFIGURATION = "tokenmesh-webhook"
WEBHOOK_SECRET = "tokenmesh-webhook-tls"
TOKEN_AUDIENCE = "tokenmesh-e2e"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
TOKEN_SERVER_ACCOUNT = "tokenmesh-token-server"


def helm(*args, check=True):
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def install_operator_side(kube, webhook_port, root: Path):
    """Applies the chart's templates for the operator, routes the webhook Service's cluster IP to the operator's
    webhook port (tests/e2e/cluster-proxy.py), and returns a kubeconfig for the operator's ServiceAccount, so the
    operator runs with exactly the chart's RBAC."""
    routes = os.environ.get("TOKENMESH_K8S_ROUTES")
    if not routes:
        pytest.exit("TOKENMESH_K8S_ROUTES is not set: start the control plane with tests/e2e/control-plane.sh",
                    returncode=2)
    kube.run("create", "namespace", RELEASE_NAMESPACE, check=False)
    shown = [arg for t in OPERATOR_TEMPLATES for arg in ("-s", f"templates/{t}")]
    manifests = helm("template", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, *shown).stdout
    kube.run("apply", "-n", RELEASE_NAMESPACE, "-f", "-", input=manifests)
    ip = kube.json("get", "service", WEBHOOK_SERVICE, "-n", WEBHOOK_NAMESPACE)["spec"]["clusterIP"]
    with open(routes, "a") as f:
        f.write(f"{ip}:443 127.0.0.1:{webhook_port}\n")

    token = kube.run("create", "token", OPERATOR_ACCOUNT, "-n", RELEASE_NAMESPACE, "--duration", "12h").stdout.strip()
    config = json.loads(kube.run("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config["users"] = [{"name": OPERATOR_ACCOUNT, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = OPERATOR_ACCOUNT
    path = root / "operator.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


class Operator(Process):
    """The real operator, outside the cluster, as its ServiceAccount (the chart's RBAC), with the chart's flags:
    leader election, and the injection webhook with a certificate it generates for the webhook Service."""

    def __init__(self, root: Path, server: TokenServer):
        super().__init__("tokenmesh-operator", root / "operator.log")
        self.root = root
        self.server = server
        self.health = f"http://127.0.0.1:{free_port()}"
        self.webhook_port = free_port()
        self.kubeconfig = None

    def start(self):
        self.spawn([OPERATOR_BIN, "--token-server", self.server.grpc_url,
                    "--admin-token-file", str(self.server.admin_token_file),
                    "--health-addr", self.health.removeprefix("http://"), "--resync", "30s",
                    "--webhook-addr", f"127.0.0.1:{self.webhook_port}", "--webhook-service", WEBHOOK_SERVICE,
                    "--webhook-secret", WEBHOOK_SECRET, "--webhook-configuration", WEBHOOK_CONFIGURATION,
                    "--token-audience", TOKEN_AUDIENCE, "--leader-election",
                    "--log", "info,tokenmesh_operator=debug"],
                   env={"KUBECONFIG": str(self.kubeconfig), "POD_NAME": "tokenmesh-operator-e2e",
                        "TOKENMESH_OPERATOR_LEASE_NAMESPACE": RELEASE_NAMESPACE})
        self.wait_http(f"{self.health}/readyz")

        def webhook_listens():
            try:
                socket.create_connection(("127.0.0.1", self.webhook_port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(webhook_listens, 30, lambda: f"the operator's webhook port:\n{tail(self.log)}")


def service_account_issuer(kube, root: Path):
    """TokenServer spec.kubernetes for a token server outside the cluster: the issuer the API server signs with,
    the audience the operator's webhook projects, discovery at the API server's address with the cluster CA, and
    a token of the chart's token-server ServiceAccount to read it (the API server serves discovery to
    authenticated service accounts: the default RBAC binds system:service-account-issuer-discovery to
    system:serviceaccounts), as in a real cluster."""
    kube.run("create", "namespace", RELEASE_NAMESPACE, check=False)
    kube.run("create", "serviceaccount", TOKEN_SERVER_ACCOUNT, "-n", RELEASE_NAMESPACE, check=False)
    token = kube.run("create", "token", TOKEN_SERVER_ACCOUNT, "-n", RELEASE_NAMESPACE, "--duration", "12h").stdout
    token_file = root / "kubernetes-token"
    token_file.write_text(token.strip())
    token_file.chmod(0o600)
    return {"issuer": SERVICE_ACCOUNT_ISSUER, "audience": TOKEN_AUDIENCE,
            "discoveryUrl": os.environ["TOKENMESH_K8S_SERVER"], "caFile": os.environ["TOKENMESH_K8S_CA"],
            "tokenFile": str(token_file)}


@pytest.fixture(scope="session")
def token_server(kube, tmp_path_factory):
    root = tmp_path_factory.mktemp("token-server")
    server = TokenServer(root, kubernetes=service_account_issuer(kube, root))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def operator(crds, token_server, tmp_path_factory):
    op = Operator(tmp_path_factory.mktemp("operator"), token_server)
    op.kubeconfig = install_operator_side(Kube(), op.webhook_port, op.root)
    op.start()
    yield op
    op.stop()


@pytest.fixture
def reconciled(kube, operator):
    """wait(kind, name, namespace, status="True"): the object once its Ready condition has that status for its
    current generation (status.observedGeneration too when Ready=True)."""

    def wait(kind, name, namespace, status="True", reason=None, timeout=RECONCILE_TIMEOUT):
        last = {}

        def check():
            obj = last["obj"] = kube.get(kind, name, namespace)
            cond = ready_condition(obj)
            if not obj or not cond or cond.get("status") != status:
                return None
            if reason and cond.get("reason") != reason:
                return None
            gen = obj["metadata"]["generation"]
            if cond.get("observedGeneration", gen) != gen:
                return None
            if status == "True" and obj["status"].get("observedGeneration") != gen:
                return None
            return obj

        def what():
            obj = last.get("obj") or {}
            return (f"{kind} {namespace}/{name} Ready={status}{f' ({reason})' if reason else ''}; "
                    f"generation {obj.get('metadata', {}).get('generation')}, status {json.dumps(obj.get('status'))}\n"
                    f"operator log:\n{tail(operator.log)}")

        return wait_until(check, timeout, what)

    return wait
