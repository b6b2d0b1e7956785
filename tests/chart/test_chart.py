"""Offline checks of charts/tokenmesh and examples/kubernetes (run by run.sh).

Environment: TOKENMESH_HELM (Helm 4), TOKENMESH_HELM3 (Helm 3, optional);
kubernetes-validate, jsonschema, cel-python and PyYAML in the interpreter.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "tokenmesh"
CRDS = CHART / "crds"
EXAMPLES = REPO / "examples" / "kubernetes"
INVALID = HERE / "invalid-resources"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
import crdcheck  # noqa: E402
from binaries import binary  # noqa: E402  (where cargo put the binaries)
from ports import free_port  # noqa: E402  (shared with the interop and e2e harnesses)

HELM4 = os.environ.get("TOKENMESH_HELM") or shutil.which("helm") or "helm"
HELM3 = os.environ.get("TOKENMESH_HELM3", "")
HELMS = {"helm4": HELM4, **({"helm3": HELM3} if HELM3 else {})}
KUBE_VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))
# The chart's kubeVersion floor and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
RELEASE, NAMESPACE = "tm", "tokenmesh"
FULLNAME = "tm-tokenmesh"

# name -> (values files, --set values)
VALUE_SETS = {
    "default": ([], []),
    "postgres": ([HERE / "values-postgres.yaml"], []),
    "secret-cert": ([HERE / "values-secret-cert.yaml"], []),
    "cert-manager": ([HERE / "values-cert-manager.yaml"], []),
    "financial-grade": ([HERE / "values-financial-grade.yaml"], []),
    "cert-manager-selfsigned": ([], ["webhook.certificate.source=certManager"]),
    "no-workload-identity": ([], ["tokenServer.workloadIdentity.enabled=false"]),
    "tracing": ([], ["tracing.otlpEndpoint=http://otel-collector.observability:4317",
                     "tracing.sampler=parentbased_traceidratio", "tracing.samplerArg=0.25"]),
}

TOKEN_SERVER_BIN = binary("token-server", "TOKENMESH_SERVER_BIN")
OPERATOR_BIN = binary("tokenmesh-operator", "TOKENMESH_OPERATOR_BIN")


# --------------------------------------------------------------------------
# helpers


def run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def template_args(values: list[Path] = (), sets: list[str] = (), extra: list[str] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


@functools.cache
def render(name: str, helm: str = "helm4") -> str:
    files, sets = VALUE_SETS[name]
    return run(HELMS[helm], *template_args(files, sets)).stdout


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def manifests(name: str, helm: str = "helm4") -> tuple:
    return tuple(documents(render(name, helm)))


def find(docs, kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(docs, deployment: str) -> dict:
    return one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict) -> dict:
    return {e["name"]: e for e in c.get("env", [])}


def kubernetes_validate(path: Path) -> str:
    """kubernetes-validate --strict for every version; its report."""
    args = [KUBE_VALIDATE, "--strict"]
    for version in KUBE_VERSIONS:
        args += ["-k", version]
    result = run(*args, str(path), check=False)
    assert result.returncode == 0, f"kubernetes-validate failed:\n{result.stdout}{result.stderr}"
    return result.stdout


# cert-manager's kinds have no schema in kubernetes-validate, and its CRDs are
# not part of this repository: these are the fields of the cert-manager.io/v1
# API that the chart may use, strict, so a misspelled field or value fails.
_name = {"type": "string", "pattern": crdcheck.DNS_SUBDOMAIN.pattern, "maxLength": 253}
_meta = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _name, "namespace": _name, "labels": {"type": "object"}, "annotations": {"type": "object"}},
    "additionalProperties": False,
}
_go_duration = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
CERT_MANAGER_SCHEMAS = {
    "Issuer": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _meta,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {"type": "object", "additionalProperties": False,
                                   "properties": {"crlDistributionPoints": {"type": "array"}}},
                    "ca": {"type": "object", "required": ["secretName"]},
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _meta,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "additionalProperties": False,
                "properties": {
                    "secretName": _name,
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "duration": _go_duration,
                    "renewBefore": _go_duration,
                    "isCA": {"type": "boolean"},
                    "usages": {"type": "array", "items": {"enum": [
                        "signing", "digital signature", "content commitment", "key encipherment",
                        "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
                        "decipher only", "any", "server auth", "client auth", "code signing",
                        "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
                        "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {"name": _name, "kind": {"type": "string"}, "group": {"type": "string"}},
                    },
                },
            },
        },
    },
}


def validate_rendered(text: str, tmp_path: Path) -> None:
    """Every manifest in `text`: built-in kinds by kubernetes-validate
    --strict, tokenmesh kinds against the CRDs, cert-manager kinds by the
    schemas above; nothing unchecked."""
    docs = documents(text)
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    report = kubernetes_validate(path)
    passed = set(re.findall(r"passed for resource (\S+) against version (\S+)", report))
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if doc["apiVersion"].startswith("tokenmesh.dev/"):
            assert crdcheck.validate(doc, crds()) == [], f"{kind}/{name}"
            continue
        if doc["apiVersion"] == "cert-manager.io/v1":
            schema = CERT_MANAGER_SCHEMAS.get(kind)
            assert schema, f"no schema for cert-manager kind {kind}"
            jsonschema.validate(doc, schema)
            continue
        for version in KUBE_VERSIONS:
            key = (f"{kind.lower()}/{name}", version.rsplit(".", 1)[0])
            assert key in passed, f"{kind}/{name} was not validated for {version}:\n{report}"


# --------------------------------------------------------------------------
# the chart renders, lints and validates


@pytest.mark.parametrize("helm", sorted(HELMS))
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint(helm, values):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    files, sets = VALUE_SETS[values]
    for path in files:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    out = run(HELMS[helm], *args).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_manifests_validate_strictly(values, tmp_path):
    validate_rendered(render(values), tmp_path)


def test_strict_validation_refuses_unknown_fields(tmp_path):
    """kubernetes-validate --strict really refuses a misspelled field."""
    deployment = json.loads(json.dumps(one(manifests("default"), "Deployment", f"{FULLNAME}-token-server")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = run(KUBE_VALIDATE, "--strict", str(path), check=False)
    assert result.returncode != 0 and "imagePullPolicyy" in result.stdout, result.stdout


def test_crds_are_in_the_chart_and_validate():
    rendered = documents(run(HELM4, *template_args(extra=["--include-crds"])).stdout)
    names = {d["metadata"]["name"] for d in rendered if d["kind"] == "CustomResourceDefinition"}
    assert names == {"oauthclients.tokenmesh.dev", "scopes.tokenmesh.dev",
                     "exchangepolicies.tokenmesh.dev", "tokenservers.tokenmesh.dev",
                     "identityproviders.tokenmesh.dev"}
    for path in sorted(CRDS.glob("*.yaml")):
        report = kubernetes_validate(path)
        assert report.count("passed for resource customresourcedefinition/") == len(KUBE_VERSIONS), report


@pytest.mark.skipif(not HELM3, reason="no Helm 3 (TOKENMESH_HELM3)")
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm3_renders_what_helm4_renders(values):
    def normal(docs):
        out = []
        for doc in docs:
            doc = json.loads(json.dumps(doc))
            if doc["kind"] == "Secret":
                doc.pop("data", None)  # random admin token
            out.append(json.dumps(doc, sort_keys=True))
        return sorted(out)

    assert normal(manifests(values, "helm3")) == normal(manifests(values, "helm4"))


def test_kube_version_floor():
    run(HELM4, *template_args(extra=["--kube-version", "1.30.0"]))
    result = run(HELM4, *template_args(extra=["--kube-version", "1.29.9"]), check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr, result.stderr


def notes(*sets: str) -> str:
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    for item in sets:
        args += ["--set", item]
    out = run(HELM4, *args).stdout
    return out[out.index("NOTES:"):]


def test_notes_tell_what_to_do_next():
    text = notes()
    for expected in [
        f"rollout status deployment/{FULLNAME}-token-server",
        f"MutatingWebhookConfiguration {FULLNAME}-webhook",
        "kubectl label namespace <namespace> tokenmesh.dev/inject=true",
        "examples/kubernetes/oauthclients.yaml",
        "kubectl apply --server-side -f charts/tokenmesh/crds/",
        "tokenServer.storage.type=postgres",
        # The images are not published: where they come from.
        "ghcr.io/tokenmesh/token-server:0.1.0", "ghcr.io/tokenmesh/sidecar:0.1.0", 'docs/install.md, "Images"',
    ]:
        assert expected in text, f"NOTES lack {expected!r}:\n{text}"


def test_notes_walk_the_shop_example_to_an_exchange_in_the_cluster():
    """Every step from the example's resources to the sidecar's exchange: the
    gateway's Secret made before its client is applied, the workloads, a
    token read with that secret, the exchange as orders (its service
    account's token for the sidecars' audience), and a call through orders."""
    text = notes()
    steps = [
        "kubectl -n shop create secret generic gateway-oauth",
        "-f examples/kubernetes/oauthclients.yaml",
        "kubectl apply -f examples/kubernetes/app.yaml",
        "rollout status deployment/orders deployment/payments",
        f"port-forward service/{FULLNAME}-token-server 8080:8080",
        "kubectl -n shop get secret gateway-oauth -o jsonpath='{.data.client_secret}'",
        "-d client_id=shop/gateway",
        """.embedded_tokens["shop/orders"]""",
        "kubectl -n shop create token orders --audience tokenmesh",
        "-d audience=shop/payments",
        "port-forward service/orders 8081:80",
        "http://127.0.0.1:8081/charge",
    ]
    at = 0
    for step in steps:
        found = text.find(step, at)
        assert found >= 0, f"NOTES lack {step!r} (after the step before):\n{text}"
        at = found
    # TLS by default: curl trusts the token server's CA and reaches it by its Service name.
    host = f"{FULLNAME}-token-server.{NAMESPACE}.svc"
    assert f"TOKEN_URL=https://{host}:8080/oauth2/token" in text
    assert f"--cacert tokenmesh-ca.crt --resolve {host}:8080:127.0.0.1" in text
    assert 'GATEWAY="$($CURL "$TOKEN_URL"' in text
    assert "TOKEN_URL=http://127.0.0.1:8080/oauth2/token" in notes("tokenServer.tls.enabled=false")
    # The secret the client reads is the one the example's OAuthClient names.
    gateway = next(d for _, d in example_documents() if d["kind"] == "OAuthClient" and d["metadata"]["name"] == "gateway")
    assert gateway["spec"]["authentication"]["secretRef"] == {"name": "gateway-oauth", "key": "client_secret"}
    # The audience of the projected token follows the value.
    assert "--audience mesh" in notes("sidecar.tokenAudience=mesh")
    # Without workload identity the meshed clients cannot sign in: no exchange step.
    assert "create token orders" not in notes("tokenServer.workloadIdentity.enabled=false")


def test_one_registry_and_tag_for_every_image():
    docs = documents(run(HELM4, *template_args(sets=["image.registry=localhost/tokenmesh", "image.tag=dev-1",
                                                     "image.pullPolicy=Never"])).stdout)
    ts, op = container(docs, f"{FULLNAME}-token-server"), container(docs, f"{FULLNAME}-operator")
    assert ts["image"] == "localhost/tokenmesh/token-server:dev-1"
    assert op["image"] == "localhost/tokenmesh/operator:dev-1"
    assert "--sidecar-image=localhost/tokenmesh/sidecar:dev-1" in op["args"]
    assert ts["imagePullPolicy"] == op["imagePullPolicy"] == "Never"
    # A component's own values still win.
    docs = documents(run(HELM4, *template_args(sets=["image.registry=localhost/tokenmesh", "image.tag=dev-1",
                                                     "operator.image.repository=registry.example/op",
                                                     "operator.image.tag=v7", "tokenServer.image.pullPolicy=Always",
                                                     "sidecar.image.tag=dev-2"])).stdout)
    ts, op = container(docs, f"{FULLNAME}-token-server"), container(docs, f"{FULLNAME}-operator")
    assert ts["image"] == "localhost/tokenmesh/token-server:dev-1" and ts["imagePullPolicy"] == "Always"
    assert op["image"] == "registry.example/op:v7" and op["imagePullPolicy"] == "IfNotPresent"
    assert "--sidecar-image=localhost/tokenmesh/sidecar:dev-2" in op["args"]
    result = run(HELM4, *template_args(sets=["image.registry=Not A Registry"]), check=False)
    assert result.returncode != 0 and "registry" in result.stderr, result.stderr


def flag_defaults(help_text: str) -> dict[str, str]:
    """--flag -> its default, from clap's --help."""
    defaults = {}
    for block in re.split(r"\n(?=\s+(?:-\w, )?--[a-z-]+(?: <[A-Z_]+>)?\n)", help_text):
        name = re.match(r"\s+(?:-\w, )?--([a-z-]+)(?: <[A-Z_]+>)?\n", block)
        default = re.search(r"\[default: ([^\]]+)\]", block)
        if name and default:
            defaults[name.group(1)] = default.group(1)
    return defaults


def test_operator_defaults_match_the_chart():
    """Run by hand without the chart's flags, the operator looks for the
    MutatingWebhookConfiguration and webhook Secret the chart makes for
    release "tokenmesh", and its health port is not one of the token
    server's (8080, 8081 by default) should both run on one machine."""
    if not OPERATOR_BIN.exists():
        pytest.fail(f"{OPERATOR_BIN} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    help_text = run(str(OPERATOR_BIN), "--help", env={"PATH": os.environ.get("PATH", "")}).stdout
    defaults = flag_defaults(help_text)
    docs = documents(run(HELM4, "template", "tokenmesh", str(CHART), "--namespace", NAMESPACE).stdout)
    [webhook] = find(docs, "MutatingWebhookConfiguration")
    assert defaults["webhook-configuration"] == webhook["metadata"]["name"], defaults
    secret_arg = next(a for a in container(docs, "tokenmesh-operator")["args"] if a.startswith("--webhook-secret="))
    assert defaults["webhook-secret"] == secret_arg.split("=", 1)[1]
    token_server_help = run(str(TOKEN_SERVER_BIN), "--help", env={"PATH": os.environ.get("PATH", "")}).stdout
    token_server_ports = set(re.findall(r"\[default: [0-9.]+:([0-9]+)\]", token_server_help))
    assert token_server_ports >= {"8080", "8081"}, token_server_help
    assert defaults["health-addr"].rsplit(":", 1)[1] not in token_server_ports, defaults
    # Every flag is a TOKENMESH_OPERATOR_* variable; durations take units as the sidecar's do.
    assert set(re.findall(r"\[env: ([A-Z_]+)=", help_text)) and all(
        v.startswith("TOKENMESH_OPERATOR_") for v in re.findall(r"\[env: ([A-Z_]+)=", help_text)), help_text
    assert (defaults["resync"], defaults["secret-grace"]) == ("5m", "1h"), defaults


# --------------------------------------------------------------------------
# what the manifests say


def pod_specs(docs):
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_security_contexts_everywhere(values):
    specs = list(pod_specs(manifests(values)))
    assert len(specs) == 2
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("runAsUser", 1) != 0, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], name
            assert c["livenessProbe"] and c["readinessProbe"], name


def test_default_values():
    docs = manifests("default")
    ts = one(docs, "Deployment", f"{FULLNAME}-token-server")
    assert ts["spec"]["replicas"] == 1
    assert ts["spec"]["strategy"]["type"] == "Recreate"
    spec = ts["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert c["image"] == "ghcr.io/tokenmesh/token-server:0.1.0"
    args = c["args"]
    assert "--config=/etc/tokenmesh/config" in args
    assert "--http-addr=0.0.0.0:8080" in args and "--grpc-addr=0.0.0.0:8081" in args
    assert f"--issuer=https://{FULLNAME}-token-server.{NAMESPACE}.svc:8080" in args
    assert "--admin-token-file=/etc/tokenmesh/admin/token" in args
    assert "--data-dir=/var/lib/tokenmesh/data" in args
    assert "--insecure-http" not in args
    assert "TOKENMESH_DATABASE_URL" not in env_of(c)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-token-server-data"
    assert volumes["admin-token"]["secret"]["secretName"] == f"{FULLNAME}-admin-token"
    pvc = one(docs, "PersistentVolumeClaim", f"{FULLNAME}-token-server-data")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not find(docs, "HorizontalPodAutoscaler")
    assert one(docs, "PodDisruptionBudget", f"{FULLNAME}-token-server")["spec"]["maxUnavailable"] == 1

    service = one(docs, "Service", f"{FULLNAME}-token-server")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("http", 8080), ("grpc", 8081)}

    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])
    assert config["kind"] == "TokenServer"
    assert config["spec"]["signing"]["algorithm"] == "ES256"
    assert crdcheck.validate(config, crdcheck.load_crds(CRDS)) == []
    # Workload identity: the token server expects the audience the webhook projects for sidecars, and reads
    # discovery with a projected token and the cluster CA at the in-pod defaults of caFile and tokenFile. No
    # issuer: the one the API server's discovery names (kubeadm, kind and minikube use another than most).
    assert config["spec"]["kubernetes"] == {"audience": "tokenmesh"}
    assert "--token-audience=tokenmesh" in container(docs, f"{FULLNAME}-operator")["args"]
    sources = volumes["kube-api-access"]["projected"]["sources"]
    assert {"path": "token", "expirationSeconds": 3600} in [s.get("serviceAccountToken") for s in sources]
    assert [s["configMap"]["name"] for s in sources if "configMap" in s] == ["kube-root-ca.crt"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["kube-api-access"] == "/var/run/secrets/kubernetes.io/serviceaccount"

    op = container(docs, f"{FULLNAME}-operator")
    assert op["image"] == "ghcr.io/tokenmesh/operator:0.1.0"
    args = op["args"]
    assert f"--token-server=https://{FULLNAME}-token-server.{NAMESPACE}.svc:8081" in args
    assert "--admin-token-file=/etc/tokenmesh/admin/token" in args
    assert "--webhook-addr=0.0.0.0:9443" in args
    # The operator makes the webhook certificate and publishes its CA.
    assert f"--webhook-service={FULLNAME}-webhook" in args
    assert f"--webhook-secret={FULLNAME}-webhook-tls" in args
    assert f"--webhook-configuration={FULLNAME}-webhook" in args
    assert not any(a.startswith("--webhook-cert") for a in args)
    assert "--sidecar-image=ghcr.io/tokenmesh/sidecar:0.1.0" in args
    assert "--leader-election" in args
    assert not any(a.startswith("--namespaces") or a.startswith("--capture") for a in args)
    env = env_of(op)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["TOKENMESH_OPERATOR_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "--resync=300s" in args and "--secret-grace=3600s" in args
    assert [m["name"] for m in op["volumeMounts"]] == ["admin-token", "tmp"]
    mwc_role = one(docs, "ClusterRole", f"{FULLNAME}-operator-webhook")
    assert mwc_role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                                  "resources": ["mutatingwebhookconfigurations"],
                                  "resourceNames": [f"{FULLNAME}-webhook"], "verbs": ["get", "update"]}]
    assert not find(docs, "TokenServer")
    assert "keyDirectory" not in config["spec"]["signing"]

    assert find(docs, "ClusterRole", f"{FULLNAME}-operator")
    assert not find(docs, "NetworkPolicy")

    webhook = one(docs, "MutatingWebhookConfiguration", f"{FULLNAME}-webhook")
    assert "annotations" not in webhook["metadata"]
    hook = webhook["webhooks"][0]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["namespaceSelector"] == {"matchLabels": {"tokenmesh.dev/inject": "true"}}
    assert hook["objectSelector"] == {"matchLabels": {"tokenmesh.dev/inject": "true"}}
    assert hook["clientConfig"]["service"] == {"name": f"{FULLNAME}-webhook", "namespace": NAMESPACE,
                                               "path": "/mutate", "port": 443}
    assert "caBundle" not in hook["clientConfig"]  # the operator's to write
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert not find(docs, "Certificate") and not find(docs, "Issuer")
    webhook_service = one(docs, "Service", f"{FULLNAME}-webhook")
    assert webhook_service["spec"]["ports"][0]["targetPort"] == "webhook"


def test_admin_token_generated_on_install():
    """48 random characters, new on every install (`helm template` has no
    cluster, so lookup finds nothing: exactly the install case)."""
    tokens = []
    for _ in range(2):
        secret = one(documents(run(HELM4, *template_args()).stdout), "Secret", f"{FULLNAME}-admin-token")
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{48}", token), token
        tokens.append(token)
    assert tokens[0] != tokens[1]
    source = (CHART / "templates" / "admin-token-secret.yaml").read_text()
    assert "lookup" in source and "randAlphaNum 48" in source


def test_workload_identity_can_be_turned_off_or_pointed_elsewhere():
    docs = manifests("no-workload-identity")
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])
    assert "kubernetes" not in config["spec"]
    spec = one(docs, "Deployment", f"{FULLNAME}-token-server")["spec"]["template"]["spec"]
    assert "kube-api-access" not in {v["name"] for v in spec["volumes"]}

    sets = ["tokenServer.workloadIdentity.issuer=https://oidc.example/id/ABC",
            "tokenServer.workloadIdentity.discoveryUrl=https://oidc.example/id/ABC", "sidecar.tokenAudience=mesh"]
    docs = documents(run(HELMS["helm4"], *template_args(sets=sets)).stdout)
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])
    assert config["spec"]["kubernetes"] == {"issuer": "https://oidc.example/id/ABC", "audience": "mesh",
                                            "discoveryUrl": "https://oidc.example/id/ABC"}
    assert crdcheck.validate(config, crdcheck.load_crds(CRDS)) == []
    assert not token_review_bindings(docs), "no TokenReview permission unless asked for"


def test_trace_export_is_off_by_default_and_one_endpoint_serves_every_component():
    collector = "http://otel-collector.observability:4317"
    for name, expected in [("default", None), ("tracing", collector)]:
        docs = manifests(name)
        ts, op = container(docs, f"{FULLNAME}-token-server"), container(docs, f"{FULLNAME}-operator")
        exports = [a for a in ts["args"] + op["args"] if "otlp-endpoint" in a]
        if expected is None:
            assert exports == [] and "OTEL_TRACES_SAMPLER" not in env_of(ts) | env_of(op)
            continue
        assert f"--otlp-endpoint={expected}" in ts["args"]
        # The operator's own spans, and the sidecars it injects (their env).
        assert f"--otlp-endpoint={expected}" in op["args"]
        assert f"--sidecar-otlp-endpoint={expected}" in op["args"]
        for c in (ts, op):
            assert literal_env(c)["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
            assert literal_env(c)["OTEL_TRACES_SAMPLER_ARG"] == "0.25"


def test_token_review_is_switched_on_with_its_permission_only():
    docs = documents(run(HELMS["helm4"], *template_args(sets=["tokenServer.workloadIdentity.tokenReview=true"])).stdout)
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])
    assert config["spec"]["kubernetes"]["tokenReview"] is True
    assert crdcheck.validate(config, crdcheck.load_crds(CRDS)) == []
    binding = one(docs, "ClusterRoleBinding", f"{FULLNAME}-token-server-token-review")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": f"{FULLNAME}-token-server-token-review"}
    # Only TokenReviews: system:auth-delegator would grant SubjectAccessReviews too.
    role = one(docs, "ClusterRole", f"{FULLNAME}-token-server-token-review")
    assert role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                              "verbs": ["create"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-token-server",
                                    "namespace": NAMESPACE}]
    off = documents(run(HELMS["helm4"], *template_args(sets=["tokenServer.workloadIdentity.tokenReview=true",
                                                             "tokenServer.workloadIdentity.enabled=false"])).stdout)
    assert not token_review_bindings(off)


def token_review_bindings(docs):
    return [b for b in find(docs, "ClusterRoleBinding") if b["metadata"]["name"].endswith("-token-review")]


def test_oauthclient_client_ids_are_checked_at_admission():
    """The ValidatingAdmissionPolicy's rule, evaluated with cel-python (tests/e2e proves it on the real API
    server): a namespaced OAuthClient's spec.clientId begins with `<namespace>/`."""
    docs = manifests("default")
    name = f"{FULLNAME}-oauthclient-client-id"
    policy = one(docs, "ValidatingAdmissionPolicy", name)
    binding = one(docs, "ValidatingAdmissionPolicyBinding", name)
    assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["tokenmesh.dev"], ["oauthclients"], ["CREATE", "UPDATE"])
    [validation] = policy["spec"]["validations"]
    env = celpy.Environment()
    allows = env.program(env.compile(validation["expression"]))
    message = env.program(env.compile(validation["messageExpression"]))

    def review(namespace, client_id, operation="CREATE", old_client_id=None):
        spec = {"authentication": {"method": "none"}} | ({"clientId": client_id} if client_id else {})
        old = None
        if operation == "UPDATE":
            old = {"spec": {"authentication": {"method": "none"}}
                   | ({"clientId": old_client_id} if old_client_id else {})}
        activation = {"object": celpy.json_to_cel({"spec": spec}), "oldObject": celpy.json_to_cel(old),
                      "request": celpy.json_to_cel({"namespace": namespace, "operation": operation})}
        return bool(allows.evaluate(activation)), activation

    for client_id in [None, "shop/orders", "shop/orders/v2"]:
        assert review("shop", client_id)[0], client_id
    for squat in ["bank/orders", "orders", "shop", "shop/", "shopping/orders"]:
        allowed, activation = review("shop", squat)
        assert not allowed, squat
        assert "must begin with `shop/`" in str(message.evaluate(activation))
    assert not review("shop", "bank/orders", "UPDATE", "shop/orders")[0], "changed to a squat"
    # Admitted before the policy existed: it can still lose its finalizer.
    assert review("shop", "bank/orders", "UPDATE", "bank/orders")[0]

    off = documents(run(HELM4, *template_args(sets=["admissionPolicy.enabled=false"])).stdout)
    assert not find(off, "ValidatingAdmissionPolicy") and not find(off, "ValidatingAdmissionPolicyBinding")


def test_postgres_values():
    docs = manifests("postgres")
    ts = one(docs, "Deployment", f"{FULLNAME}-token-server")
    assert "replicas" not in ts["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert ts["spec"]["strategy"]["type"] == "RollingUpdate"
    c = ts["spec"]["template"]["spec"]["containers"][0]
    url = env_of(c)["TOKENMESH_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "tokenmesh-database", "key": "url"}
    assert "--database-max-connections=20" in c["args"]
    assert "--issuer=https://auth.example.com" in c["args"]
    assert not any(a.startswith("--data-dir") for a in c["args"])
    assert not find(docs, "PersistentVolumeClaim")
    assert not any(v["name"] == "data" for v in ts["spec"]["template"]["spec"]["volumes"])
    hpa = one(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-token-server")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert one(docs, "PodDisruptionBudget", f"{FULLNAME}-token-server")["spec"] == {
        "minAvailable": 2,
        "selector": ts["spec"]["selector"],
    }
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])
    assert config["spec"]["signing"] == {"algorithm": "EdDSA", "rotationPeriod": "12h"}
    # The admin token is the user's Secret: the chart creates none.
    assert not find(docs, "Secret")
    admin = {v["name"]: v for v in ts["spec"]["template"]["spec"]["volumes"]}["admin-token"]["secret"]
    assert admin["secretName"] == "tokenmesh-admin"
    assert admin["items"] == [{"key": "credential", "path": "token"}]

    op = one(docs, "Deployment", f"{FULLNAME}-operator")
    assert op["spec"]["replicas"] == 2
    c = op["spec"]["template"]["spec"]["containers"][0]
    assert "--namespaces=shop,billing" in c["args"]
    assert "--sidecar-image=ghcr.io/tokenmesh/sidecar@sha256:" + "0123456789abcdef" * 4 in c["args"]
    assert "--capture" in c["args"] and "--capture-outbound" in c["args"]
    assert "--exclude-outbound-cidrs=10.96.0.0/12,169.254.169.254/32" in c["args"]
    assert "--leader-election" in c["args"]

    # A Role per watched namespace; at home the Lease, the generated webhook
    # certificate and the token server's; cluster-wide only this chart's
    # webhook's caBundle.
    assert [r["metadata"]["name"] for r in find(docs, "ClusterRole")] == [f"{FULLNAME}-operator-webhook"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find(docs, "Role")}
    assert roles == {("shop", f"{FULLNAME}-operator"), ("billing", f"{FULLNAME}-operator"),
                     (NAMESPACE, f"{FULLNAME}-operator-leader-election"),
                     (NAMESPACE, f"{FULLNAME}-operator-webhook-certificate"),
                     (NAMESPACE, f"{FULLNAME}-operator-token-server-certificate")}
    assert one(docs, "Role", f"{FULLNAME}-operator-webhook-certificate")["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{FULLNAME}-webhook-tls"], "verbs": ["get"]},
    ]
    for binding in find(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-operator", "namespace": NAMESPACE}]

    hook = one(docs, "MutatingWebhookConfiguration", f"{FULLNAME}-webhook")["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 5
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["shop", "billing"]

    policies = {p["metadata"]["name"]: p for p in find(docs, "NetworkPolicy")}
    ts_policy = policies[f"{FULLNAME}-token-server"]["spec"]["ingress"][0]
    assert {p["port"] for p in ts_policy["ports"]} == {"http", "grpc"}
    assert ts_policy["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert ts_policy["from"][1] == {"namespaceSelector": {"matchLabels": {"tokenmesh.dev/inject": "true"}}}
    op_ingress = policies[f"{FULLNAME}-operator"]["spec"]["ingress"]
    assert op_ingress[0] == {"ports": [{"port": "webhook", "protocol": "TCP"}]}  # from anywhere: the API server
    assert op_ingress[1]["ports"] == [{"port": "health", "protocol": "TCP"}]

    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]


def test_secret_cert_values():
    docs = manifests("secret-cert")
    assert not find(docs, "Certificate") and not find(docs, "Issuer")
    webhook = one(docs, "MutatingWebhookConfiguration", "tm-webhook")
    assert "cert-manager.io/inject-ca-from" not in webhook["metadata"]["annotations"]
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"].startswith("LS0tLS1CRUdJTi")
    op = one(docs, "Deployment", "tm-operator")["spec"]["template"]["spec"]
    assert op["serviceAccountName"] == "tokenmesh-operator"
    tls = {v["name"]: v for v in op["volumes"]}["webhook-tls"]["secret"]
    assert tls["secretName"] == "tokenmesh-webhook-tls"
    assert "TOKENMESH_OPERATOR_LEADER_ELECTION" not in env_of(op["containers"][0])
    assert not any(r["metadata"]["name"].endswith("leader-election") for r in find(docs, "Role"))
    ts = one(docs, "Deployment", "tm-token-server")["spec"]["template"]["spec"]
    assert ts["serviceAccountName"] == "tokenmesh"
    assert [sa["metadata"]["name"] for sa in find(docs, "ServiceAccount")] == ["tokenmesh-operator"]
    args = ts["containers"][0]["args"]
    assert "--tls-cert=/etc/tokenmesh/tls/tls.crt" in args and "--insecure-http" not in args
    assert "--issuer=https://tm-token-server.tokenmesh.svc:8080" in args
    assert ts["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert ts["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert one(docs, "PersistentVolumeClaim", "tm-token-server-data")["spec"]["storageClassName"] == "fast-ssd"
    assert not find(docs, "PodDisruptionBudget")
    op_args = op["containers"][0]["args"]
    assert "--webhook-cert=/etc/tokenmesh/webhook/tls.crt" in op_args
    assert "--webhook-key=/etc/tokenmesh/webhook/tls.key" in op_args
    assert not any(a.startswith("--webhook-service") or a == "--leader-election" for a in op_args)
    assert not find(docs, "ClusterRole", "tm-operator-webhook")
    # Signing keys from the operator: the TokenServer resource, its Secret mounted.
    server = one(docs, "TokenServer", "tm")
    config = yaml.safe_load(one(docs, "ConfigMap", "tm-token-server")["data"]["tokenserver.yaml"])
    assert config["spec"] == server["spec"]
    assert server["spec"]["signing"]["keyDirectory"] == "/etc/tokenmesh/signing-keys"
    keys = {v["name"]: v for v in ts["volumes"]}["signing-keys"]["secret"]
    assert keys == {"secretName": "tm-signing-keys", "defaultMode": 0o444, "optional": True}
    assert {"name": "signing-keys", "mountPath": "/etc/tokenmesh/signing-keys", "readOnly": True} in ts["containers"][0]["volumeMounts"]


def test_cert_manager_values():
    docs = manifests("cert-manager")
    webhook = one(docs, "MutatingWebhookConfiguration", f"{FULLNAME}-webhook")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-webhook"
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    certificate = one(docs, "Certificate", f"{FULLNAME}-webhook")
    assert certificate["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert certificate["spec"]["secretName"] == f"{FULLNAME}-webhook-tls"
    assert f"{FULLNAME}-webhook.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["duration"] == "2160h"
    assert not find(docs, "Issuer")
    assert not find(docs, "ClusterRole", f"{FULLNAME}-operator-webhook")
    op = one(docs, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]
    tls = {v["name"]: v for v in op["volumes"]}["webhook-tls"]["secret"]
    assert tls["secretName"] == f"{FULLNAME}-webhook-tls"
    assert "--webhook-cert=/etc/tokenmesh/webhook/tls.crt" in op["containers"][0]["args"]
    assert one(docs, "TokenServer", FULLNAME)["spec"]["signing"]["keyDirectory"] == "/etc/tokenmesh/signing-keys"
    # NetworkPolicies with their defaults: the token server open to any pod on
    # its two ports, the operator's webhook open, its metrics closed.
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    assert policies[f"{FULLNAME}-token-server"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]}]
    assert policies[f"{FULLNAME}-operator"]["ingress"] == [{"ports": [{"port": "webhook", "protocol": "TCP"}]}]

    selfsigned = manifests("cert-manager-selfsigned")
    issuer = one(selfsigned, "Issuer", f"{FULLNAME}-selfsigned")
    assert issuer["spec"] == {"selfSigned": {}}
    certificate = one(selfsigned, "Certificate", f"{FULLNAME}-webhook")
    assert certificate["spec"]["issuerRef"] == {"name": f"{FULLNAME}-selfsigned", "kind": "Issuer", "group": "cert-manager.io"}
    assert certificate["spec"]["privateKey"]["encoding"] == "PKCS8"


def test_tls_is_the_default_with_the_operators_certificate():
    docs = manifests("default")
    ts = one(docs, "Deployment", f"{FULLNAME}-token-server")["spec"]["template"]["spec"]
    c = ts["containers"][0]
    assert "--tls-cert=/etc/tokenmesh/tls/tls.crt" in c["args"] and "--tls-key=/etc/tokenmesh/tls/tls.key" in c["args"]
    assert "--insecure-http" not in c["args"]
    assert all(c[p]["httpGet"]["scheme"] == "HTTPS" for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    tls = {v["name"]: v for v in ts["volumes"]}["tls"]["secret"]
    assert tls["secretName"] == f"{FULLNAME}-token-server-tls"
    # Never the CA's key: only the serving pair reaches the token server.
    assert [i["key"] for i in tls["items"]] == ["tls.crt", "tls.key"]
    op = one(docs, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    grpc = f"https://{FULLNAME}-token-server.{NAMESPACE}.svc:8081"
    assert f"--token-server={grpc}" in op and f"--sidecar-token-server={grpc}" in op
    assert f"--token-server-service={FULLNAME}-token-server" in op
    assert f"--token-server-tls-secret={FULLNAME}-token-server-tls" in op
    assert f"--token-server-ca-secret={FULLNAME}-token-server-ca" in op
    assert not any(a.startswith("--token-server-ca=") for a in op)
    assert not find(docs, "Certificate")
    text = notes()
    assert "WARNING" not in text
    assert f"certificate issued and renewed by the operator (Secret {FULLNAME}-token-server-tls" in text


def test_plaintext_needs_the_value_and_the_notes_warn():
    sets = ["tokenServer.tls.enabled=false"]
    docs = documents(run(HELM4, *template_args(sets=sets)).stdout)
    c = one(docs, "Deployment", f"{FULLNAME}-token-server")["spec"]["template"]["spec"]["containers"][0]
    assert "--insecure-http" in c["args"] and not any(a.startswith("--tls-") for a in c["args"])
    assert f"--issuer=http://{FULLNAME}-token-server.{NAMESPACE}.svc:8080" in c["args"]
    assert "tls" not in {m["name"] for m in c["volumeMounts"]}
    op = one(docs, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--token-server=http://{FULLNAME}-token-server.{NAMESPACE}.svc:8081" in op
    assert not any(a.startswith("--token-server-service") or a.startswith("--token-server-ca") for a in op)
    text = notes(*sets)
    assert "WARNING: TLS is off (tokenServer.tls.enabled=false)" in text, text
    assert "cross it in clear" in text


def test_tls_from_cert_manager_or_a_secret_is_trusted_through_its_ca():
    sets = ["tokenServer.tls.source=certManager"]
    docs = documents(run(HELM4, *template_args(sets=sets)).stdout)
    name = f"{FULLNAME}-token-server"
    certificate = one(docs, "Certificate", name)["spec"]
    assert certificate["secretName"] == f"{name}-tls"
    assert f"{name}.{NAMESPACE}.svc" in certificate["dnsNames"] and name in certificate["dnsNames"]
    assert certificate["issuerRef"] == {"name": f"{name}-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert one(docs, "Certificate", f"{name}-ca")["spec"]["isCA"] is True
    assert one(docs, "Issuer", f"{name}-ca")["spec"] == {"ca": {"secretName": f"{name}-ca"}}
    assert one(docs, "Issuer", f"{name}-selfsigned")["spec"] == {"selfSigned": {}}
    op = one(docs, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]
    assert "--token-server-ca=/etc/tokenmesh/token-server-ca/ca.crt" in op["containers"][0]["args"]
    ca = {v["name"]: v for v in op["volumes"]}["token-server-ca"]["secret"]
    assert ca == {"secretName": f"{name}-tls", "defaultMode": 0o440, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    own = documents(run(HELM4, *template_args(sets=sets + ["tokenServer.tls.certManager.issuerRef.name=corp-ca",
                                                             "tokenServer.tls.certManager.issuerRef.kind=ClusterIssuer"])).stdout)
    assert one(own, "Certificate", name)["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer",
                                                                  "group": "cert-manager.io"}
    assert not find(own, "Certificate", f"{name}-ca")

    secret = manifests("secret-cert")
    ts = one(secret, "Deployment", "tm-token-server")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in ts["volumes"]}["tls"]["secret"]["secretName"] == "tokenmesh-token-server-tls"
    op = one(secret, "Deployment", "tm-operator")["spec"]["template"]["spec"]
    assert "--token-server-ca=/etc/tokenmesh/token-server-ca/ca.crt" in op["containers"][0]["args"]


def test_client_ca_and_dpop_nonces_for_a_financial_grade_mesh():
    """docs/financial-grade.md: the client CA bundle mounted from a ConfigMap or a Secret as a directory (no
    subPath: kubelet's updates reach the pod and the token server reloads the bundle), --client-ca given, and
    DPoP nonces required in the TokenServer spec."""
    name = f"{FULLNAME}-token-server"

    def token_server(docs):
        spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        c = spec["containers"][0]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        return c["args"], mounts, {v["name"]: v for v in spec["volumes"]}

    args, mounts, volumes = token_server(manifests("default"))
    assert not any(a.startswith("--client-ca") for a in args) and "client-ca" not in volumes
    config = yaml.safe_load(one(manifests("default"), "ConfigMap", name)["data"]["tokenserver.yaml"])
    assert config["spec"]["dpop"] == {"requireNonce": False}

    docs = manifests("financial-grade")
    args, mounts, volumes = token_server(docs)
    assert "--client-ca=/etc/tokenmesh/client-ca/ca.crt" in args
    assert mounts["client-ca"] == {"name": "client-ca", "mountPath": "/etc/tokenmesh/client-ca", "readOnly": True}
    assert volumes["client-ca"]["secret"] == {"secretName": "mesh-client-ca", "defaultMode": 0o440,
                                              "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    config = yaml.safe_load(one(docs, "ConfigMap", name)["data"]["tokenserver.yaml"])
    assert config["spec"]["dpop"] == {"requireNonce": True}
    assert crdcheck.validate(config, crdcheck.load_crds(CRDS)) == []
    # The injected sidecars ask inbound DPoP proofs for their nonce only when the value says so.
    nonce_flag = "--sidecar-dpop-require-nonce"
    assert nonce_flag in container(docs, f"{FULLNAME}-operator")["args"]
    assert nonce_flag not in container(manifests("default"), f"{FULLNAME}-operator")["args"]

    from_map = documents(run(HELM4, *template_args(sets=["tokenServer.tls.clientCa.configMapName=mesh-client-ca",
                                                         "tokenServer.tls.clientCa.key=bundle.pem"])).stdout)
    args, mounts, volumes = token_server(from_map)
    assert "--client-ca=/etc/tokenmesh/client-ca/ca.crt" in args and "subPath" not in mounts["client-ca"]
    assert volumes["client-ca"]["configMap"] == {"name": "mesh-client-ca",
                                                 "items": [{"key": "bundle.pem", "path": "ca.crt"}]}


def test_a_namespaced_operator_may_keep_the_token_servers_certificate():
    docs = documents(run(HELM4, *template_args(sets=["operator.namespaces={shop}"])).stdout)
    role = one(docs, "Role", f"{FULLNAME}-operator-token-server-certificate")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"],
            "resourceNames": [f"{FULLNAME}-token-server-tls", f"{FULLNAME}-token-server-ca"]} in role["rules"]
    binding = one(docs, "RoleBinding", f"{FULLNAME}-operator-token-server-certificate")
    assert binding["subjects"][0]["name"] == f"{FULLNAME}-operator"


def test_rbac_is_what_the_docs_list():
    """The operator's rules are exactly the table in docs/kubernetes.md."""
    text = (REPO / "docs" / "kubernetes.md").read_text()
    table = text[text.index("## RBAC the operator needs"):]
    documented: set[tuple[str, str, str]] = set()
    previous: list[tuple[str, str]] = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("resource", "---") or not cells[0]:
            continue
        verbs = [v.strip() for v in cells[1].split(",")]
        group_match = re.search(r"\(([a-z0-9.]+)\)", cells[0])
        names = re.findall(r"`([a-z/]+)`", cells[0])
        if names == ["/status"]:  # "their `/status`": the row above's resources
            resources = [(g, f"{r}/status") for g, r in previous]
        else:
            group = group_match.group(1) if group_match else ""
            group = "" if group == "core" else group
            resources = [(group, r) for r in names]
            previous = resources
        for group, resource in resources:
            for verb in verbs:
                documented.add((group, resource, verb))
    assert documented, "no RBAC table in docs/kubernetes.md"

    def granted(docs) -> set[tuple[str, str, str]]:
        out = set()
        for role in find(docs, "ClusterRole") + find(docs, "Role"):
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.add((group, resource, verb))
        return out

    # With the generated webhook certificate (default), all of it.
    assert granted(manifests("default")) == documented
    assert granted(manifests("postgres")) == documented
    # Without it, nothing on MutatingWebhookConfigurations.
    webhook = {r for r in documented if r[1] == "mutatingwebhookconfigurations"}
    assert webhook
    assert granted(manifests("cert-manager")) == documented - webhook


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_token_server_accepts_its_configmap(values, tmp_path):
    if not TOKEN_SERVER_BIN.exists():
        pytest.fail(f"{TOKEN_SERVER_BIN} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    docs = manifests(values)
    config = one(docs, "ConfigMap", next(d["metadata"]["name"] for d in find(docs, "ConfigMap")))
    (tmp_path / "tokenserver.yaml").write_text(config["data"]["tokenserver.yaml"])
    result = run(str(TOKEN_SERVER_BIN), "--config", str(tmp_path / "tokenserver.yaml"), "--check-config",
                 "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert "configuration is valid" in result.stdout


def literal_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
@pytest.mark.parametrize("component,binary", [("token-server", TOKEN_SERVER_BIN), ("operator", OPERATOR_BIN)])
def test_binaries_accept_the_rendered_arguments(values, component, binary, tmp_path):
    """The real binary parses the container's args and env (it then stops on
    a missing file of the pod: /etc/tokenmesh/...). A clap usage error exits 2."""
    if not binary.exists():
        pytest.fail(f"{binary} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    docs = manifests(values)
    deployment = next(d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith(component))
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **literal_env(c)}
    if component == "token-server" and "TOKENMESH_DATABASE_URL" in env_of(c):
        env["TOKENMESH_DATABASE_URL"] = "postgres://tokenmesh@127.0.0.1:1/tokenmesh"
    result = subprocess.run([str(binary), *c["args"]], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode not in (0, 2), output
    assert "unexpected argument" not in output and "invalid value" not in output, output
    assert "/etc/tokenmesh/" in output, output


# --------------------------------------------------------------------------
# wrong values are refused

# (--set values, what the error must say). The schema speaks first; the
# templates' `fail` messages are checked below with the schema switched off.
WRONG_VALUES = {
    "replicas on embedded storage": (["tokenServer.replicas=2"], r"replicas"),
    "autoscaling on embedded storage": (["tokenServer.autoscaling.enabled=true"], r"autoscaling"),
    "discovery URL not a URL": (["tokenServer.workloadIdentity.discoveryUrl=kubernetes"], r"discoveryUrl"),
    "misspelled key": (["tokenServer.replica=2"], r"replica"),
    "misspelled nested key": (["webhook.failurepolicy=Fail"], r"failurepolicy"),
    "failure policy not in enum": (["webhook.failurePolicy=Sometimes"], r"failurePolicy"),
    "storage type not in enum": (["tokenServer.storage.type=mysql"], r"type"),
    "postgres without URL Secret": (["tokenServer.storage.type=postgres", "tokenServer.replicas=2"], r"name"),
    "operator replicas without leader election": (["operator.replicas=2", "operator.leaderElection=false"], r"leaderElection"),
    "webhook Secret without name": (["webhook.certificate.source=secret"], r"secret"),
    "TLS from a Secret without its name": (["tokenServer.tls.source=secret"], r"secretName"),
    "TLS source not in enum": (["tokenServer.tls.source=vault"], r"source"),
    "the old plaintext value": (["tokenServer.insecureHttp=true"], r"insecureHttp"),
    "HMAC signing": (["tokenServer.spec.signing.algorithm=HS256"], r"algorithm"),
    "storage in the TokenServer spec": (["tokenServer.spec.storage.type=postgres"], r"storage"),
    "duration with spaces": (["tokenServer.spec.defaultAccessTokenTtl=5 minutes"], r"defaultAccessTokenTtl"),
    "issuer with trailing slash": (["tokenServer.issuer=https://auth.example.com/"], r"issuer"),
    "namespace not a DNS label": (["operator.namespaces={Shop}"], r"namespaces"),
    "replicas as a string": (["tokenServer.replicas=one"], r"replicas"),
    "root user": (["securityContext.runAsUser=0"], r"runAsUser"),
    "OTLP endpoint without a scheme": (["tracing.otlpEndpoint=otel-collector:4317"], r"otlpEndpoint"),
    "sampler not in enum": (["tracing.sampler=sometimes"], r"sampler"),
    "sidecar nonce not a boolean": (["sidecar.dpop.requireNonce=yes"], r"requireNonce"),
    "privileged webhook port": (["webhook.port=443"], r"port"),
    "webhook timeout too long": (["webhook.timeoutSeconds=60"], r"timeoutSeconds"),
    "certificate source not in enum": (["webhook.certificate.source=vault"], r"source"),
    "operator keys with a namespaced operator": (["tokenServer.signingKeys=operator", "operator.namespaces={shop}"],
                                                 r"namespaces"),
    "key encryption of operator keys": (["tokenServer.signingKeys=operator", "tokenServer.keyEncryption.secretName=kek"],
                                        r"signingKeys"),
    "key encryption key with a slash": (["tokenServer.keyEncryption.secretName=kek", "tokenServer.keyEncryption.key=a/b"],
                                        r"key"),
    "previous key encryption without a current one": (["tokenServer.keyEncryption.previous[0].secretName=old",
                                                       "tokenServer.keyEncryption.previous[0].key=key"], r"secretName"),
}


@pytest.mark.parametrize("helm", sorted(HELMS))
@pytest.mark.parametrize("case", sorted(WRONG_VALUES))
def test_wrong_values_are_refused(helm, case):
    sets, expected = WRONG_VALUES[case]
    result = run(HELMS[helm], *template_args(sets=sets), check=False)
    assert result.returncode != 0, f"{case}: rendered anyway"
    assert "schema" in result.stderr, result.stderr
    assert re.search(expected, result.stderr), result.stderr


FAIL_MESSAGES = {
    "replicas on embedded storage": (["tokenServer.replicas=2"],
                                     "tokenServer.replicas=2 needs tokenServer.storage.type=postgres"),
    "autoscaling on embedded storage": (["tokenServer.autoscaling.enabled=true"],
                                        "tokenServer.autoscaling.enabled needs tokenServer.storage.type=postgres"),
    "postgres without URL Secret": (["tokenServer.storage.type=postgres"],
                                    "needs tokenServer.storage.postgres.urlSecret.name"),
    "operator replicas without leader election": (["operator.replicas=2", "operator.leaderElection=false"],
                                                  "operator.replicas > 1 needs operator.leaderElection=true"),
    "webhook Secret without name": (["webhook.certificate.source=secret"], "needs webhook.certificate.secret.name"),
    "webhook Secret without CA": (["webhook.certificate.source=secret", "webhook.certificate.secret.name=x"],
                                  "needs webhook.certificate.secret.caBundle"),
    "TLS from a Secret without its name": (["tokenServer.tls.source=secret"], "needs tokenServer.tls.secretName"),
    "client CA from a ConfigMap and a Secret": (["tokenServer.tls.clientCa.configMapName=a",
                                                 "tokenServer.tls.clientCa.secretName=b"],
                                                "set configMapName or secretName, not both"),
    "client CA without TLS": (["tokenServer.tls.enabled=false", "tokenServer.tls.clientCa.secretName=b"],
                              "tokenServer.tls.clientCa needs tokenServer.tls.enabled=true"),
    "operator keys with a namespaced operator": (["tokenServer.signingKeys=operator", "operator.namespaces={shop}"],
                                                 "tokenServer.signingKeys=operator needs the cluster-wide operator"),
    "key encryption of operator keys": (["tokenServer.signingKeys=operator", "tokenServer.keyEncryption.secretName=kek"],
                                        "tokenServer.keyEncryption.secretName needs tokenServer.signingKeys=store"),
    "previous key encryption without a current one": (["tokenServer.keyEncryption.previous[0].secretName=old",
                                                       "tokenServer.keyEncryption.previous[0].key=key"],
                                                      "tokenServer.keyEncryption.previous needs tokenServer.keyEncryption.secretName"),
}


@pytest.mark.parametrize("helm", sorted(HELMS))
@pytest.mark.parametrize("case", sorted(FAIL_MESSAGES))
def test_templates_refuse_without_the_schema(helm, case):
    """`fail` in the templates, for a chart whose schema was skipped
    (helm --skip-schema-validation) or edited."""
    sets, expected = FAIL_MESSAGES[case]
    result = run(HELMS[helm], *template_args(sets=sets, extra=["--skip-schema-validation"]), check=False)
    assert result.returncode != 0, f"{case}: rendered anyway"
    assert expected in result.stderr, result.stderr


# --------------------------------------------------------------------------
# values.yaml and values.schema.json


def test_values_schema_is_strict():
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}/{index}")

    # Conditionals (if/then) only add constraints to properties declared strictly elsewhere.
    walk({k: v for k, v in schema.items() if k != "allOf"}, "")
    loose = [p for p in loose if "/allOf/" not in p]
    assert loose == [], f"objects without additionalProperties: false: {loose}"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    for files, _ in VALUE_SETS.values():
        merged = yaml.safe_load((CHART / "values.yaml").read_text())
        for extra in files:
            merge(merged, yaml.safe_load(extra.read_text()))
        jsonschema.Draft7Validator(schema).validate(merged)


def merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def test_every_value_is_documented():
    """Every key of values.yaml with a value has a comment block above it, or
    sits inside a value documented as a whole (a "# -- " block above it)."""
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented as a whole)
    block: list[str] = []  # the comment lines right above
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"^([A-Za-z0-9_./-]+|\"[^\"]+\"):(.*)$", stripped)
        if match:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            inherited = any(whole for _, whole in stack)
            is_leaf = match.group(2).strip() != ""
            if is_leaf and not block and not inherited:
                undocumented.append(f"line {number}: {stripped}")
            stack.append((indent, bool(block) and block[0].startswith("# --") or inherited))
        block = []
    assert undocumented == [], "\n".join(undocumented)


# --------------------------------------------------------------------------
# example resources and the CRD schemas


@functools.cache
def crds():
    return crdcheck.load_crds(CRDS)


def example_documents():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in documents(path.read_text()):
            yield path.name, doc


def test_examples_exist():
    kinds = {doc["kind"] for _, doc in example_documents()}
    assert {"OAuthClient", "Scope", "ExchangePolicy", "IdentityProvider"} <= kinds


@pytest.mark.parametrize("name,doc", list(example_documents()),
                         ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in example_documents()])
def test_example_is_valid(name, doc, tmp_path):
    if doc["apiVersion"].startswith("tokenmesh.dev/"):
        assert crdcheck.validate(doc, crds()) == []
    else:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc))
        report = kubernetes_validate(path)
        assert report.count("passed for resource") == len(KUBE_VERSIONS), report


def test_examples_load_in_the_token_server(tmp_path):
    """The same documents through the token server's own loader (CEL
    conditions compiled, references checked), with the secret hashes the
    operator would push for generated secrets and a file for secretRefs,
    next to the TokenServer the chart renders (workload identity on, for the
    kubernetes_service_account clients)."""
    if not TOKEN_SERVER_BIN.exists():
        pytest.fail(f"{TOKEN_SERVER_BIN} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    secret = "x" * 44
    digest = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()).decode().rstrip("=")
    docs = [yaml.safe_load(one(manifests("default"), "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])]
    for _, doc in example_documents():
        if doc["kind"] == "Secret":
            # Where the token server reads a secretRef standalone (the operator inlines it).
            for key, value in doc.get("stringData", {}).items():
                (tmp_path / "secrets" / doc["metadata"]["name"]).mkdir(parents=True, exist_ok=True)
                (tmp_path / "secrets" / doc["metadata"]["name"] / key).write_text(value)
        if not doc["apiVersion"].startswith("tokenmesh.dev/"):
            continue
        auth = doc.get("spec", {}).get("authentication", {})
        if auth.get("method", "").startswith("client_secret"):
            if "secretRef" in auth:
                ref = auth["secretRef"]
                (tmp_path / "secrets" / ref["name"]).mkdir(parents=True, exist_ok=True)
                (tmp_path / "secrets" / ref["name"] / ref["key"]).write_text(secret)
            else:
                auth["secretHashes"] = [f"sha256:{digest}"]
        docs.append(doc)
    (tmp_path / "examples.yaml").write_text(yaml.safe_dump_all(docs))
    result = run(str(TOKEN_SERVER_BIN), "--config", str(tmp_path / "examples.yaml"), "--check-config",
                 "--secrets-dir", str(tmp_path / "secrets"), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert "configuration is valid" in result.stdout


def invalid_documents():
    for path in sorted(INVALID.glob("*.yaml")):
        for doc in documents(path.read_text()):
            yield doc


@pytest.mark.parametrize("doc", list(invalid_documents()), ids=[d["metadata"]["name"] for d in invalid_documents()])
def test_invalid_resource_is_refused(doc):
    expected = doc["metadata"]["annotations"]["test.tokenmesh.dev/expect"]
    errors = crdcheck.validate(doc, crds())
    assert errors, "accepted"
    assert any(expected in e for e in errors), errors


def test_every_cel_rule_has_an_invalid_example():
    """Each x-kubernetes-validations rule of the CRDs is broken by at least
    one resource in invalid-resources/, which the validator refuses with the
    rule's message; so a new rule needs a new example here."""
    rules = crdcheck.all_rules(crds())
    assert rules, "the CRDs have no x-kubernetes-validations: is crdcheck reading them?"
    refused = set()
    for doc in invalid_documents():
        for error in crdcheck.validate(doc, crds()):
            refused.add((doc["kind"], error.split(": ", 1)[-1]))
    missing = [(kind, path, message) for kind, path, message in rules if (kind, message) not in refused]
    assert missing == [], f"rules without a refused example: {missing}"


# --------------------------------------------------------------------------
# the token server started as its pod would start it


# The CA of the certificate start_like_the_pod made for the pod's TLS volume.
POD_CA: list[Path] = []


def http_get(url: str) -> tuple[int, str]:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(POD_CA[-1])) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def wait_for(condition, seconds: float, what: str, process: subprocess.Popen | None = None):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited ({process.returncode}) while waiting for {what}:\n{process.stderr.read()}")
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def start_like_the_pod(docs, root: Path) -> tuple[subprocess.Popen, str]:
    """The token-server container's args, with its mounts laid out under
    `root` (ConfigMap, admin token, volume; a certificate for 127.0.0.1 in
    the TLS volume) and loopback ports; the base URL."""
    deployment = next(d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("token-server"))
    spec = deployment["spec"]["template"]["spec"]
    c = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in c["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            config = one(docs, "ConfigMap", volume["configMap"]["name"])
            for key, text in config["data"].items():
                # Paths inside the configuration point into the pod too.
                (target / key).write_text(re.sub(r"(?<=[ :])/(etc|var)/", lambda m: f"{root}/{m.group(1)}/", text))
        elif mount["name"] == "tls":
            run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(target / "tls.key"), "-out", str(target / "tls.crt"))
            POD_CA.append(target / "tls.crt")
        elif "secret" in volume and volume["secret"].get("items"):
            for item in volume["secret"]["items"]:
                (target / item["path"]).write_text("a" * 48)
    http, grpc = free_port(), free_port()
    args = []
    for arg in c["args"]:
        if arg.startswith("--http-addr="):
            arg = f"--http-addr=127.0.0.1:{http}"
        elif arg.startswith("--grpc-addr="):
            arg = f"--grpc-addr=127.0.0.1:{grpc}"
        else:
            arg = re.sub(r"=/(etc|var)/", lambda m: f"={root}/{m.group(1)}/", arg)
        args.append(arg)
    process = subprocess.Popen([str(TOKEN_SERVER_BIN), *args], cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={"PATH": os.environ.get("PATH", "")})
    scheme = "https" if "--tls-cert=/etc/tokenmesh/tls/tls.crt" in c["args"] else "http"
    return process, f"{scheme}://127.0.0.1:{http}"


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def test_token_server_starts_as_its_pod_would(tmp_path):
    if not TOKEN_SERVER_BIN.exists():
        pytest.fail(f"{TOKEN_SERVER_BIN} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    docs = manifests("default")
    process, base = start_like_the_pod(docs, tmp_path)
    try:
        wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "/readyz", process)
        assert http_get(f"{base}/healthz")[0] == 200
        status, body = http_get(f"{base}/.well-known/oauth-authorization-server")
        assert status == 200
        assert base.startswith("https://"), "TLS by default"
        assert json.loads(body)["issuer"] == f"https://{FULLNAME}-token-server.{NAMESPACE}.svc:8080"
        # The embedded store in its own owner-only folder inside the volume.
        data = tmp_path / "var/lib/tokenmesh/data"
        assert (data / "tokenmesh.db").exists()
        assert data.stat().st_mode & 0o777 == 0o700
    finally:
        err = stop(process)
    assert process.returncode == 0, err


def test_token_server_waits_for_operator_keys(tmp_path):
    """signingKeys=operator: the optional Secret is not there yet, so the pod
    starts with an empty key folder and is alive but not ready; the first key
    the operator writes makes it ready (the folder is read every 30 s)."""
    if not TOKEN_SERVER_BIN.exists():
        pytest.fail(f"{TOKEN_SERVER_BIN} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    if not shutil.which("openssl"):
        pytest.fail("no openssl to make a key (.ci/run installs it)")
    docs = documents(run(HELM4, *template_args(sets=["tokenServer.signingKeys=operator"])).stdout)
    process, base = start_like_the_pod(docs, tmp_path)
    try:
        wait_for(lambda: http_get(f"{base}/healthz")[0] == 200, 60, "/healthz", process)
        assert http_get(f"{base}/readyz")[0] == 503
        import time

        key = tmp_path / "etc/tokenmesh/signing-keys" / f"{int(time.time()) - 5}-k1.pem"
        run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, 45, "/readyz after the first key", process)
        jwks = json.loads(http_get(f"{base}/jwks")[1])
        assert [k["kid"] for k in jwks["keys"]] == ["k1"]
    finally:
        err = stop(process)
    assert process.returncode == 0, err


def test_token_server_encrypts_its_keys_as_its_pod_would(tmp_path):
    """keyEncryption: the Secret is mounted where the rendered
    keyEncryptionKeyRef points under --secrets-dir, and the keys in the
    embedded store are sealed, not PKCS#8."""
    if not TOKEN_SERVER_BIN.exists():
        pytest.fail(f"{TOKEN_SERVER_BIN} not built: run `cargo build --workspace --bins` first (.ci/run does)")
    sets = ["tokenServer.keyEncryption.secretName=tokenmesh-kek",
            # An earlier key of the same Secret, and one of another Secret.
            "tokenServer.keyEncryption.previous[0].secretName=tokenmesh-kek",
            "tokenServer.keyEncryption.previous[0].key=before",
            "tokenServer.keyEncryption.previous[1].secretName=old-kek",
            "tokenServer.keyEncryption.previous[1].key=key"]
    docs = documents(run(HELM4, *template_args(sets=sets)).stdout)
    config = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-token-server")["data"]["tokenserver.yaml"])
    assert config["spec"]["signing"]["keyEncryptionKeyRef"] == {"name": "tokenmesh-kek", "key": "key"}
    assert config["spec"]["signing"]["previousKeyEncryptionKeyRefs"] == [
        {"name": "tokenmesh-kek", "key": "before"}, {"name": "old-kek", "key": "key"}]
    pod = one(docs, "Deployment", f"{FULLNAME}-token-server")["spec"]["template"]["spec"]
    secrets = {v["secret"]["secretName"]: [i["key"] for i in v["secret"]["items"]]
               for v in pod["volumes"] if v["name"].startswith("key-encryption")}
    assert secrets == {"tokenmesh-kek": ["key", "before"], "old-kek": ["key"]}, "one volume per Secret"
    mounts = sorted(m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("key-encryption"))
    assert mounts == ["/etc/tokenmesh/secrets/old-kek", "/etc/tokenmesh/secrets/tokenmesh-kek"]
    process, base = start_like_the_pod(docs, tmp_path)
    try:
        wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "/readyz", process)
        assert json.loads(http_get(f"{base}/jwks")[1])["keys"]
    finally:
        err = stop(process)
    assert process.returncode == 0, err
    import sqlite3

    with sqlite3.connect(tmp_path / "var/lib/tokenmesh/data/tokenmesh.db") as db:
        rows = [row[0] for row in db.execute("SELECT pkcs8 FROM signing_keys")]
    assert rows and all(row.startswith(b"tmkw1.") for row in rows), rows


def test_the_values_in_install_md_render(tmp_path):
    """docs/install.md's values-ha.yaml renders and validates."""
    text = (REPO / "docs" / "install.md").read_text()
    block = re.search(r"```yaml\n(\s*# values-ha\.yaml\n.*?)```", text, re.S)
    assert block, "no values-ha.yaml example in docs/install.md"
    values = tmp_path / "values-ha.yaml"
    values.write_text(textwrap.dedent(block.group(1)))
    rendered = run(HELM4, *template_args([values])).stdout
    validate_rendered(rendered, tmp_path)
    ts = one(documents(rendered), "Deployment", f"{FULLNAME}-token-server")
    assert ts["spec"]["replicas"] == 3
