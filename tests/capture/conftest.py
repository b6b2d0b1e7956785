"""Real network namespaces for the capture tests.

`Netns` creates (and, at the end, deletes) one namespace; every namespace,
link and rule the tests use is created here, inside namespaces of their own:
nothing of the machine's own namespace is touched. `Mesh` is the whole
picture, wired with veth pairs to a bridge in a namespace of its own:

    client 198.18.0.3 ──┐
    pod    198.18.0.2 ──┤ br0 (namespace "net")
    svc    198.18.0.4 ──┘ 198.18.0.5: the token server, 198.18.0.6: an excluded host
           fd00:746d::4, fd00:746d::6 (excluded): the same service over IPv6

The pod runs an application (app.py, as root) and the sidecar (as
SIDECAR_UID), with tokenmesh-capture installed first, as the init container
would, holding only NET_ADMIN and NET_RAW. Addresses are from 198.18.0.0/15,
the range reserved for network tests, and fd00:746d::/64 for IPv6.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


sys.path.insert(0, str(REPO / "tests"))
from binaries import binary  # noqa: E402  (where cargo put the binaries)

CAPTURE_BIN = binary("tokenmesh-capture", "TOKENMESH_CAPTURE_BIN")
SIDECAR_BIN = binary("tokenmesh-sidecar", "TOKENMESH_SIDECAR_BIN")
SERVER_BIN = binary("token-server", "TOKENMESH_SERVER_BIN")
PYTHON = sys.executable

SIDECAR_UID = 15337  # a user of its own, as in a pod; no account is needed for a uid
SECRET = "capture-test-client-secret-0123456789abcdef"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

POD, CLIENT, SVC, TOKEN_SERVER, EXCLUDED = "198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"
DECOY = "198.18.0.7"  # captured, but not the address of any host a policy names
POD6, CLIENT6, SVC6, EXCLUDED6 = "fd00:746d::2", "fd00:746d::3", "fd00:746d::4", "fd00:746d::6"
APP_PORTS = (8080, 8090)  # captured
APP_OPEN_PORT = 8099  # the application listens here too, not captured
EXCLUDED_PORT = 9001
# Only NET_ADMIN and NET_RAW, as the init container has: no other capability.
IP = shutil.which("ip") or "ip"
SETPRIV = shutil.which("setpriv") or "setpriv"
INIT_PRIVILEGES = [SETPRIV, "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all", "--"]
AS_SIDECAR = [SETPRIV, f"--reuid={SIDECAR_UID}", f"--regid={SIDECAR_UID}", "--clear-groups", "--"]


def run(argv, check=True, **kwargs):
    argv = [str(a) for a in argv]
    argv[0] = shutil.which(argv[0]) or argv[0]  # found on this PATH, whatever env= says
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


class Netns:
    """A network namespace made by the tests, deleted by `delete`."""

    def __init__(self, name):
        if len(name) > 40:
            raise ValueError(name)
        self.name = name
        # No skip: the tests fail where namespaces cannot be made.
        run(["ip", "netns", "add", name])
        self.deleted = False

    def ip(self, *args, check=True):
        return run(["ip", "-n", self.name, *args], check=check)

    def run(self, argv, check=True, **kwargs):
        return run(["ip", "netns", "exec", self.name, *argv], check=check, **kwargs)

    def spawn(self, argv, log, prefix=(), env=None):
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.name, *prefix, *[str(a) for a in argv]],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)

    def request(self, method, url, headers=None, data=None, timeout=10):
        argv = [PYTHON, HERE / "client.py", method, url, "--timeout", str(timeout)]
        for name, value in (headers or {}).items():
            argv += ["--header", f"{name}:{value}"]
        if data is not None:
            argv += ["--data", data]
        return json.loads(self.run(argv).stdout)

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def save(self, command="iptables"):
        """`iptables-save` (or `ip6tables-save`…) of every table, counters and comments left out."""
        text = self.run([command + "-save"] if not command.endswith("-save") else [command]).stdout
        lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]
        return "\n".join(lines)

    def capture(self, *args, privileges=INIT_PRIVILEGES, env=None, check=True):
        full_env = None if env is None else {**os.environ, **env}
        return self.run([*privileges, CAPTURE_BIN, *args], check=check, env=full_env)

    def delete(self):
        if not self.deleted:
            run(["ip", "netns", "del", self.name], check=False)
            self.deleted = True


class Namespaces:
    """Namespaces of one test run, named after its process so runs never meet."""

    def __init__(self):
        self.made = []

    def new(self, role):
        ns = Netns(f"tmcap{os.getpid()}-{role}")
        self.made.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def delete_all(self):
        for ns in reversed(self.made):
            ns.delete()


def wait_for(what, probe, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} did not become ready: {last}")


def claims(authorization):
    token = authorization.removeprefix("Bearer ")
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def config():
    def client(name, audiences):
        return {"apiVersion": "tokenmesh.dev/v1alpha1", "kind": "OAuthClient", "metadata": {"name": name}, "spec": {
            "grantTypes": ["client_credentials", EXCHANGE],
            "authentication": {"method": "client_secret_basic", "secretRef": {"name": "shared", "key": "client_secret"}},
            "scopes": ["orders:read", "orders:write"],
            "audiences": audiences,
            "allowIntrospection": True,
            "accessToken": {"format": "jwt", "ttl": "300s"},
        }}

    docs = [
        {"apiVersion": "tokenmesh.dev/v1alpha1", "kind": "Scope", "metadata": {"name": "orders-read"}, "spec": {"name": "orders:read"}},
        {"apiVersion": "tokenmesh.dev/v1alpha1", "kind": "Scope", "metadata": {"name": "orders-write"}, "spec": {"name": "orders:write"}},
        client("frontend", ["orders"]),
        client("orders-svc", ["internal"]),
        {"apiVersion": "tokenmesh.dev/v1alpha1", "kind": "ExchangePolicy", "metadata": {"name": "orders-to-payments"}, "spec": {
            "mode": "exchange",
            "from": {"audiences": ["orders"]},
            "actor": {"clients": ["orders-svc"]},
            "to": {"audience": "payments", "scopes": ["orders:read"], "hosts": ["payments.local"]},
            "ttl": "120s",
        }},
    ]
    return "\n---\n".join(json.dumps(doc) for doc in docs) + "\n"


class Mesh:
    def __init__(self, namespaces, workdir):
        self.dir = workdir
        self.procs = []
        self.net = namespaces.new("net")
        self.pod = namespaces.new("pod")
        self.client = namespaces.new("client")
        self.svc = namespaces.new("svc")
        self.net.ip("link", "add", "br0", "type", "bridge")
        self.net.ip("link", "set", "br0", "up")
        for ns, v4, v6 in [(self.pod, [POD], [POD6]), (self.client, [CLIENT], [CLIENT6]),
                           (self.svc, [SVC, TOKEN_SERVER, EXCLUDED, DECOY], [SVC6, EXCLUDED6])]:
            leg = "v-" + ns.name.rsplit("-", 1)[1]
            self.net.ip("link", "add", leg, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            self.net.ip("link", "set", leg, "master", "br0", "up")
            for addr in v4:
                ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
            for addr in v6:
                ns.ip("addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
            ns.ip("link", "set", "eth0", "up")

    def spawn(self, ns, name, argv, prefix=()):
        proc = ns.spawn(argv, self.dir / f"{name}.log", prefix=prefix)
        self.procs.append((name, proc))
        return proc

    def log(self, name):
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self, name):
        path = self.dir / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def start(self):
        # The token server, the destination service and a host outbound capture leaves alone.
        secrets = self.dir / "secrets" / "shared"
        secrets.mkdir(parents=True)
        (secrets / "client_secret").write_text(SECRET)
        (self.dir / "tokenmesh.yaml").write_text(config())
        self.spawn(self.svc, "token-server", [
            SERVER_BIN, "--config", self.dir / "tokenmesh.yaml", "--secrets-dir", self.dir / "secrets",
            "--http-addr", f"{TOKEN_SERVER}:8081", "--grpc-addr", f"{TOKEN_SERVER}:8082",
            "--issuer", f"http://{TOKEN_SERVER}:8081", "--data-dir", self.dir / "data", "--insecure-http"])
        self.spawn(self.svc, "svc", [PYTHON, HERE / "app.py", "--log", self.dir / "svc.jsonl",
                                     "--listen", f"{SVC}:9000", "--listen", f"{SVC}:{EXCLUDED_PORT}",
                                     "--listen", f"{EXCLUDED}:9000", "--listen", f"{DECOY}:9000",
                                     "--listen", f"[{SVC6}]:9000", "--listen", f"[{SVC6}]:{EXCLUDED_PORT}",
                                     "--listen", f"[{EXCLUDED6}]:9000"])
        # The init step, as the webhook runs it: settings in the environment, NET_ADMIN and NET_RAW only.
        self.install_output = self.pod.capture("install", env={
            "TOKENMESH_CAPTURE_INBOUND_PORTS": ",".join(map(str, APP_PORTS)),
            "TOKENMESH_CAPTURE_OUTBOUND": "true",
            "TOKENMESH_CAPTURE_SIDECAR_UID": str(SIDECAR_UID),
            "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_PORTS": str(EXCLUDED_PORT),
            "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_CIDRS": f"{EXCLUDED}/32,{EXCLUDED6}/128",
        }).stdout
        # The application: dual-stack, on its captured ports and one that is not.
        self.spawn(self.pod, "app", [PYTHON, HERE / "app.py", "--log", self.dir / "app.jsonl",
                                     *[arg for port in (*APP_PORTS, APP_OPEN_PORT) for arg in ("--listen", f"[::]:{port}")]])
        # The sidecar, as its own uid, reading a secret only that uid can read.
        own = self.dir / "sidecar"
        own.mkdir()
        secret = own / "client_secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        for path in (own, secret):
            os.chown(path, SIDECAR_UID, SIDECAR_UID)
        self.spawn(self.pod, "sidecar", [
            SIDECAR_BIN, "--token-server", f"http://{TOKEN_SERVER}:8082", "--client-id", "orders-svc",
            "--client-secret-file", secret, "--audience", "orders",
            "--app-addr", "127.0.0.1:8080", "--inbound-addr", "0.0.0.0:15006",
            "--outbound-addr", "127.0.0.1:15001", "--admin-addr", "127.0.0.1:15020", "--clock-skew", "0s",
            # Where DNS would send payments.local in a cluster.
            "--resolve", f"payments.local={SVC}:9000"],
            prefix=AS_SIDECAR)
        self.wait_ready()

    def wait_ready(self):
        def ok(ns, url):
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.log(name)}")
            resp = ns.get(url, timeout=2)
            return resp if resp.get("status") == 200 else False

        wait_for("the token server", lambda: ok(self.svc, f"http://{TOKEN_SERVER}:8081/readyz"))
        wait_for("the service", lambda: ok(self.svc, f"http://{SVC}:9000/__ping"))
        wait_for("the service over IPv6", lambda: ok(self.svc, f"http://[{EXCLUDED6}]:9000/__ping"))
        wait_for("the application", lambda: ok(self.pod, "http://127.0.0.1:8080/__ping"))
        wait_for("the sidecar", lambda: ok(self.pod, "http://127.0.0.1:15020/readyz"))

    def token(self, client="frontend", audience="orders"):
        basic = base64.b64encode(f"{client}:{SECRET}".encode()).decode()
        resp = self.client.request("POST", f"http://{TOKEN_SERVER}:8081/oauth2/token",
                                   headers={"Authorization": f"Basic {basic}",
                                            "Content-Type": "application/x-www-form-urlencoded"},
                                   data=f"grant_type=client_credentials&audience={audience}")
        assert resp.get("status") == 200, resp
        return json.loads(resp["body"])["access_token"]

    def metric(self, prefix):
        text = self.pod.get("http://127.0.0.1:15020/metrics")["body"]
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def stop(self):
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def namespaces():
    # A CI stop (SIGTERM) still runs the teardowns: no namespace is left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    made = Namespaces()
    try:
        yield made
    finally:
        made.delete_all()


@pytest.fixture(scope="session")
def mesh(namespaces):
    workdir = Path(tempfile.mkdtemp(prefix="tokenmesh-capture-"))
    workdir.chmod(0o755)  # the sidecar's uid reaches its own directory inside
    mesh = Mesh(namespaces, workdir)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.stop()
        for name in ("sidecar", "token-server", "app", "svc"):
            print(f"--- {name} log\n{mesh.log(name)[-4000:]}")
        for ns in (mesh.client, mesh.svc, mesh.pod, mesh.net):
            ns.delete()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def fresh(namespaces, request):
    """An empty namespace of one test, deleted after it."""
    ns = namespaces.new(re.sub(r"[^a-z0-9]", "", request.node.name.lower())[-12:])
    try:
        yield ns
    finally:
        ns.delete()
