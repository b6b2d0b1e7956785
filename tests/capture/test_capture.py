"""Transparent capture in real network namespaces: a client outside the pod
cannot reach the application around its sidecar, the application's plain
outbound calls are exchanged by policy, the sidecar's own calls do not loop,
and tokenmesh-capture is idempotent and removable."""

import json
import uuid

import pytest

from conftest import (APP_OPEN_PORT, APP_PORTS, AS_SIDECAR, DECOY, EXCLUDED, EXCLUDED6, EXCLUDED_PORT, HERE,
                      INIT_PRIVILEGES, POD, POD6, PYTHON, SIDECAR_UID, SVC, SVC6, claims)


def unique(prefix):
    return f"/{prefix}-{uuid.uuid4().hex[:8]}"


def seen(mesh, log, path):
    return [r for r in mesh.records(log) if r["path"] == path]


# ----------------------------------------------------------------- inbound


def test_the_init_step_prints_what_it_installed(mesh):
    out = mesh.install_output
    assert out.startswith("tokenmesh-capture: installed"), out
    for port in APP_PORTS:
        assert f"-A TOKENMESH_INBOUND -p tcp -m tcp --dport {port} -j REDIRECT --to-ports 15006" in out, out
    assert f"-A TOKENMESH_OUTBOUND -m owner --uid-owner {SIDECAR_UID} -j RETURN" in out, out
    assert "-A PREROUTING -p tcp -j TOKENMESH_INBOUND" in out, out
    assert "-A OUTPUT -p tcp -j TOKENMESH_OUTBOUND" in out, out
    assert ("ip6tables -t filter -A TOKENMESH_OUTBOUND -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN "
            "-j REJECT --reject-with tcp-reset") in out, out
    assert f"ip6tables -t filter -A TOKENMESH_OUTBOUND -d {EXCLUDED6}/128 -j RETURN" in out, out


@pytest.mark.parametrize("port", APP_PORTS)
def test_a_request_without_a_token_never_reaches_the_application(mesh, port):
    path = unique("no-token")
    resp = mesh.client.get(f"http://{POD}:{port}{path}")
    assert resp.get("status") == 401, resp
    # The Bearer challenge first, then the DPoP one (RFC 9449 §7.1), each naming the resource's
    # metadata (RFC 9728 §5.1) at the address the client called.
    challenge = resp["headers"].get("www-authenticate", "")
    metadata = f'resource_metadata="http://{POD}:{port}/.well-known/oauth-protected-resource"'
    assert challenge.startswith(f'Bearer error="invalid_token", {metadata}, DPoP algs='), resp
    resp = mesh.client.get(f"http://{POD}:{port}{path}", headers={"Authorization": "Bearer not-a-token"})
    assert resp.get("status") == 401, resp
    assert seen(mesh, "app", path) == []


@pytest.mark.parametrize("port", APP_PORTS)
def test_a_request_with_a_token_reaches_the_application_on_its_port(mesh, port):
    token = mesh.token()
    before = mesh.metric('tokenmesh_sidecar_requests_total{direction="inbound",status="200"}')
    path = unique("with-token")
    resp = mesh.client.get(f"http://{POD}:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    assert resp.get("status") == 200, resp
    [record] = seen(mesh, "app", path)
    assert record["authorization"] == f"Bearer {token}"
    # Forwarded to the port the client called (SO_ORIGINAL_DST), not to --app-addr's.
    assert record["listener"] == f"[::]:{port}"
    assert mesh.metric('tokenmesh_sidecar_requests_total{direction="inbound",status="200"}') == before + 1


def test_the_sidecar_listener_called_directly_forwards_to_app_addr(mesh):
    token = mesh.token()
    path = unique("direct")
    resp = mesh.client.get(f"http://{POD}:15006{path}", headers={"Authorization": f"Bearer {token}"})
    assert resp.get("status") == 200, resp
    [record] = seen(mesh, "app", path)
    assert record["listener"] == "[::]:8080"


def test_ports_not_listed_are_not_captured(mesh):
    path = unique("open-port")
    resp = mesh.client.get(f"http://{POD}:{APP_OPEN_PORT}{path}")
    assert resp.get("status") == 200, resp
    assert len(seen(mesh, "app", path)) == 1


def test_ipv6_cannot_reach_the_application_around_the_sidecar(mesh):
    path = unique("ipv6")
    # IPv6 works between the namespaces: a port that is not captured answers ...
    resp = mesh.client.get(f"http://[{POD6}]:{APP_OPEN_PORT}{path}")
    assert resp.get("status") == 200, resp
    # ... and the application's captured ports, which it listens on over IPv6 too, refuse.
    for port in APP_PORTS:
        resp = mesh.client.get(f"http://[{POD6}]:{port}{path}-{port}", timeout=5)
        assert "error" in resp, resp
        assert seen(mesh, "app", f"{path}-{port}") == []


# ---------------------------------------------------------------- outbound


def call(mesh, token, target, host, path):
    """The client calls the application, which calls `target` with no proxy settings."""
    headers = {"X-Call": target, "X-Call-Host": host, "X-Call-Path": path}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = mesh.client.get(f"http://{POD}:8080{unique('outbound')}", headers=headers)
    assert resp.get("status") == 200, resp
    return json.loads(resp["body"])


def test_a_plain_outbound_call_is_exchanged_by_policy(mesh):
    token = mesh.token()
    path = unique("to-payments")
    body = call(mesh, token, f"{SVC}:9000", "payments.local", path)
    assert body.get("call_status") == 200, body
    [record] = seen(mesh, "svc", path)
    # It went to payments.local (where the application connected, too), with the Host it sent ...
    assert record["listener"] == f"{SVC}:9000"
    assert record["host"] == "payments.local"
    # ... carrying a token exchanged for the destination, orders-svc acting.
    exchanged = claims(record["authorization"])
    assert exchanged["aud"] == "payments"
    assert exchanged["sub"] == "frontend"
    assert exchanged["act"] == {"sub": "orders-svc", "client_id": "orders-svc"}
    assert exchanged["scope"] == "orders:read"
    assert record["authorization"] != f"Bearer {token}"


def test_a_token_goes_to_the_host_its_policy_names_not_where_the_application_connected(mesh):
    # The application connects to another address and claims to be calling payments.local:
    # the token for payments must not go there.
    token = mesh.token()
    path = unique("decoy")
    body = call(mesh, token, f"{DECOY}:9000", "payments.local", path)
    assert body.get("call_status") == 200, body
    [record] = seen(mesh, "svc", path)
    assert record["listener"] == f"{SVC}:9000", "delivered to payments.local, not the decoy"
    assert claims(record["authorization"])["aud"] == "payments"


def test_a_plain_outbound_call_to_an_unlisted_host_is_refused(mesh):
    token = mesh.token()
    path = unique("unlisted")
    body = call(mesh, token, f"{SVC}:9000", "unknown.local", path)
    assert body.get("call_status") == 403, body
    assert seen(mesh, "svc", path) == [], "the token never leaves"


@pytest.mark.parametrize("target", [f"{SVC}:{EXCLUDED_PORT}", f"{EXCLUDED}:9000",
                                    f"[{SVC6}]:{EXCLUDED_PORT}", f"[{EXCLUDED6}]:9000"],
                         ids=["port", "cidr", "ipv6-port", "ipv6-cidr"])
def test_excluded_destinations_are_not_captured(mesh, target):
    # Over IPv6 they are not refused either.
    token = mesh.token()
    path = unique("excluded")
    # No policy names this host: through the sidecar it would be refused.
    body = call(mesh, token, target, "unknown.local", path)
    assert body.get("call_status") == 200, body
    [record] = seen(mesh, "svc", path)
    assert record["listener"] == target
    assert record["authorization"] == f"Bearer {token}", "untouched: the sidecar was not on the way"


def test_outbound_ipv6_does_not_carry_the_token_around_the_sidecar(mesh):
    # The sidecar is not reached over IPv6: the application's call is refused
    # at once (a client with the IPv4 address too tries it next, captured).
    token = mesh.token()
    path = unique("ipv6-out")
    body = call(mesh, token, f"[{SVC6}]:9000", "payments.local", path)
    assert "call_status" not in body and "refused" in body.get("call_error", "").lower(), body
    assert seen(mesh, "svc", path) == [], "the raw token never left over IPv6"


def test_the_sidecars_own_ipv6_calls_are_not_refused(mesh):
    # The sidecar forwards to what DNS gives, IPv6 addresses included.
    path = unique("sidecar6")
    url = f"http://[{SVC6}]:9000{path}"
    resp = json.loads(mesh.pod.run([*AS_SIDECAR, PYTHON, HERE / "client.py", "GET", url]).stdout)
    assert resp.get("status") == 200, resp
    assert len(seen(mesh, "svc", path)) == 1
    # The same call as the application (root here) is refused.
    resp = json.loads(mesh.pod.run([PYTHON, HERE / "client.py", "GET", url + "-app"]).stdout)
    assert "error" in resp, resp
    assert seen(mesh, "svc", path + "-app") == []


def test_the_sidecars_own_calls_are_not_looped_back(mesh):
    # The sidecar is ready: it reached the token server (not excluded by address or port)
    # for keys and policies, through the OUTPUT chain, as its own uid.
    before = mesh.metric('tokenmesh_sidecar_requests_total{direction="outbound"')
    exchanges = mesh.metric("tokenmesh_sidecar_exchanges_total")
    token = mesh.token()
    path = unique("loop")
    body = call(mesh, token, f"{SVC}:9000", "payments.local", path)
    assert body.get("call_status") == 200, body
    # One outbound request: the application's. The sidecar's own (Exchange, and the
    # call it forwards) did not come back into its outbound listener.
    assert mesh.metric('tokenmesh_sidecar_requests_total{direction="outbound"') == before + 1
    assert mesh.metric("tokenmesh_sidecar_exchanges_total") == exchanges + 1
    listing = mesh.pod.run(["iptables", "-t", "nat", "-L", "TOKENMESH_OUTBOUND", "-n", "-v", "-x"]).stdout
    [owner] = [line for line in listing.splitlines() if f"owner UID match {SIDECAR_UID}" in line]
    assert int(owner.split()[0]) > 0, listing


# ---------------------------------------------------------- install, remove

FLAGS = ["--inbound-ports", "8080,9090", "--outbound", "--sidecar-uid", str(SIDECAR_UID),
         "--exclude-outbound-ports", "5432,9001", "--exclude-outbound-cidrs", "fd00:746d::5,198.18.0.5/32"]
OTHER_FLAGS = ["--inbound-ports", "7070"]


def foreign_rules(ns, iptables):
    """Rules a CNI plugin might have put there: they must survive install and remove."""
    ip6tables = iptables.replace("iptables", "ip6tables", 1)
    ns.run([iptables, "-t", "nat", "-N", "CNI-HOSTPORT-TEST"])
    ns.run([iptables, "-t", "nat", "-A", "CNI-HOSTPORT-TEST", "-p", "tcp", "--dport", "80", "-j", "RETURN"])
    ns.run([iptables, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "CNI-HOSTPORT-TEST"])
    ns.run([iptables, "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-j", "RETURN"])
    ns.run([ip6tables, "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "ACCEPT"])


def saved(ns, iptables):
    ip6tables = iptables.replace("iptables", "ip6tables", 1)
    return ns.save(iptables) + "\n" + ns.save(ip6tables)


@pytest.mark.parametrize("iptables", ["iptables", "iptables-legacy"])
def test_install_twice_changes_nothing_and_remove_restores(fresh, iptables):
    foreign_rules(fresh, iptables)
    before = saved(fresh, iptables)
    backend = ["--iptables", iptables]

    first = fresh.capture("install", *backend, *FLAGS)
    assert first.stdout.startswith("tokenmesh-capture: installed"), first.stdout
    installed = saved(fresh, iptables)
    assert installed != before
    assert fresh.capture("check", *backend, *FLAGS).returncode == 0

    second = fresh.capture("install", *backend, *FLAGS)
    assert second.stdout.startswith("tokenmesh-capture: already installed, nothing changed"), second.stdout
    assert saved(fresh, iptables) == installed

    # Other settings: the chains follow them; the first ones again: the same rules as before.
    fresh.capture("install", *backend, *OTHER_FLAGS)
    assert fresh.capture("check", *backend, *OTHER_FLAGS).returncode == 0
    differs = fresh.capture("check", *backend, *FLAGS, check=False)
    assert differs.returncode == 1 and "TOKENMESH_OUTBOUND: missing" in differs.stdout, differs.stdout
    fresh.capture("install", *backend, *FLAGS)
    assert saved(fresh, iptables) == installed

    removed = fresh.capture("remove", *backend)
    assert removed.stdout.strip() == "tokenmesh-capture: removed"
    assert saved(fresh, iptables) == before
    again = fresh.capture("remove", *backend)
    assert again.stdout.strip() == "tokenmesh-capture: nothing to remove"
    assert saved(fresh, iptables) == before
    assert fresh.capture("check", *backend, *FLAGS, check=False).returncode == 1


# The last rule of each outbound chain moved first, before the uid, loopback
# and DNS exemptions: the same rules, but every connection (the sidecar's own
# too) captured, or refused.
REORDERED = {
    "ipv4": ("", "nat", ["-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"]),
    "ipv6": ("6", "filter", ["-p", "tcp", "--syn", "-j", "REJECT", "--reject-with", "tcp-reset"]),
}


@pytest.mark.parametrize("family", sorted(REORDERED))
@pytest.mark.parametrize("iptables", ["iptables", "iptables-legacy"])
def test_a_reordered_chain_is_found_and_repaired(fresh, iptables, family):
    backend = ["--iptables", iptables]
    fresh.capture("install", *backend, *FLAGS)
    installed = saved(fresh, iptables)
    six, table, last = REORDERED[family]
    command = iptables.replace("iptables", f"ip{six}tables", 1)
    fresh.run([command, "-t", table, "-D", "TOKENMESH_OUTBOUND", *last])
    fresh.run([command, "-t", table, "-I", "TOKENMESH_OUTBOUND", "1", *last])
    assert saved(fresh, iptables) != installed

    result = fresh.capture("check", *backend, *FLAGS, check=False)
    assert result.returncode == 1, result.stdout
    assert f"{command} {table} TOKENMESH_OUTBOUND: its rules or their order differ" in result.stdout, result.stdout
    repaired = fresh.capture("install", *backend, *FLAGS)
    assert repaired.stdout.startswith("tokenmesh-capture: installed"), repaired.stdout
    assert saved(fresh, iptables) == installed
    assert fresh.capture("check", *backend, *FLAGS).returncode == 0


def test_flags_come_from_the_environment_too(fresh):
    env = {"TOKENMESH_CAPTURE_INBOUND_PORTS": "8080,9090", "TOKENMESH_CAPTURE_OUTBOUND": "1",
           "TOKENMESH_CAPTURE_SIDECAR_UID": str(SIDECAR_UID),
           "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_PORTS": "5432,9001",
           "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_CIDRS": "198.18.0.5/32,fd00:746d::5/128"}
    fresh.capture("install", env=env)
    assert fresh.capture("check", *FLAGS).returncode == 0


def test_without_iptables_the_pod_does_not_start(fresh):
    before = saved(fresh, "iptables")
    for how in (["--iptables", "/nonexistent/iptables"], []):
        env = {} if how else {"PATH": "/nonexistent"}
        result = fresh.capture("install", *how, *FLAGS, env=env, check=False)
        assert result.returncode != 0
        assert "cannot run" in result.stderr and "iptables" in result.stderr, result.stderr
        assert "the pod must not start" in result.stderr, result.stderr
    assert saved(fresh, "iptables") == before


@pytest.mark.parametrize("iptables", ["iptables", "iptables-legacy"])
def test_without_the_capabilities_the_pod_does_not_start(fresh, iptables):
    before = saved(fresh, iptables)
    # NET_RAW is what iptables-legacy lacks here; the nft backend needs NET_ADMIN.
    missing = "net_raw" if iptables == "iptables-legacy" else "net_admin"
    privileges = ["setpriv", f"--bounding-set=-all,+net_admin,+net_raw,-{missing}", "--inh-caps=-all", "--"]
    result = fresh.capture("install", "--iptables", iptables, *FLAGS, privileges=privileges, check=False)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr, result.stderr
    assert "NET_ADMIN and NET_RAW" in result.stderr, result.stderr
    assert saved(fresh, iptables) == before
    assert fresh.capture("install", "--iptables", iptables, *FLAGS, privileges=INIT_PRIVILEGES).returncode == 0


@pytest.mark.parametrize("flags, message", [
    (["--outbound"], "--sidecar-uid"),
    ([], "nothing to capture"),
    (["--inbound-ports", "8080,15006"], "loop"),
    (["--inbound-ports", "8080", "--exclude-outbound-cidrs", "fd00::/129"], "IP address or CIDR"),
])
def test_settings_that_cannot_protect_the_pod_are_refused(fresh, flags, message):
    before = saved(fresh, "iptables")
    result = fresh.capture("install", *flags, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert saved(fresh, "iptables") == before
