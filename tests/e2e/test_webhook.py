"""Sidecar injection through the real API server: the operator publishes its CA
into the MutatingWebhookConfiguration, the API server calls the webhook over
TLS through the webhook's Service, and the stored Pod holds the sidecar. No
kubelet runs: the Pod object is what is checked."""

import base64

from conftest import (TOKEN_AUDIENCE, WEBHOOK_CONFIGURATION, WEBHOOK_NAMESPACE, WEBHOOK_SECRET, wait_until)

SIDECAR = "tokenmesh-sidecar"


def pod(ns, name, labels=None, annotations=None, account=None):
    spec = {"containers": [{"name": "app", "image": "registry.example/shop/orders:1",
                            "ports": [{"containerPort": 8080}]}]}
    if account:
        spec["serviceAccountName"] = account
    meta = {"name": name, "namespace": ns, "labels": labels or {}, "annotations": annotations or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def injection_namespace(kube, ns):
    kube.run("label", "namespace", ns, "tokenmesh.dev/inject=true")
    # No controller-manager creates service accounts; the ServiceAccount admission plugin needs them.
    for account in ("default", "orders"):
        kube.run("create", "serviceaccount", account, "-n", ns)


def published_bundle(kube):
    mwc = kube.json("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
    return mwc["webhooks"][0]["clientConfig"].get("caBundle")


def test_the_webhook_is_registered_with_the_operators_ca_bundle(kube, operator):
    bundle = wait_until(lambda: published_bundle(kube), 30, "the operator to publish the CA bundle")
    secret = kube.get("secret", WEBHOOK_SECRET, WEBHOOK_NAMESPACE)
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(bundle) == base64.b64decode(secret["data"]["ca.crt"])
    assert b"BEGIN CERTIFICATE" in base64.b64decode(bundle)


def test_a_labelled_pod_is_stored_with_the_sidecar_token_volume_and_environment(kube, operator, namespace):
    ns = namespace
    injection_namespace(kube, ns)
    wait_until(lambda: published_bundle(kube), 30, "the operator to publish the CA bundle")
    kube.apply(pod(ns, "orders", labels={"tokenmesh.dev/inject": "true"}, account="orders"))
    stored = kube.get("pod", "orders", ns)

    containers = {c["name"]: c for c in stored["spec"]["containers"]}
    assert list(containers) == ["app", SIDECAR], list(containers)
    assert stored["metadata"]["annotations"].get("tokenmesh.dev/injected") == "true"
    sidecar = containers[SIDECAR]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["TOKENMESH_SIDECAR_CLIENT_ID"] == f"{ns}/orders"
    # The audience is the client id: it names the namespace, so another namespace's "orders" is another audience.
    assert env["TOKENMESH_SIDECAR_AUDIENCE"] == f"{ns}/orders"
    assert env["TOKENMESH_SIDECAR_TOKEN_SERVER"] == operator.server.grpc_url
    assert env["TOKENMESH_SIDECAR_APP_ADDR"] == "127.0.0.1:8080"
    token_file = env["TOKENMESH_SIDECAR_SERVICE_ACCOUNT_TOKEN_FILE"]
    security = sidecar["securityContext"]
    assert security["runAsUser"] == 1337 and security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    # The projected service-account token, for the token server's audience, mounted where the env says.
    volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    [token_volume] = [name for name, v in volumes.items()
                      if any("serviceAccountToken" in s and s["serviceAccountToken"].get("audience") == TOKEN_AUDIENCE
                             for s in v.get("projected", {}).get("sources", []))]
    projection = next(s["serviceAccountToken"] for s in volumes[token_volume]["projected"]["sources"])
    assert token_file == f"{mounts[token_volume]}/{projection['path']}", (token_file, mounts, projection)

    # The application goes out through the sidecar.
    app_env = {e["name"]: e.get("value") for e in containers["app"].get("env", [])}
    assert app_env.get("HTTP_PROXY") == "http://127.0.0.1:15001", app_env


def test_opted_out_and_unlabelled_pods_are_stored_untouched(kube, operator, namespace):
    ns = namespace
    injection_namespace(kube, ns)
    wait_until(lambda: published_bundle(kube), 30, "the operator to publish the CA bundle")
    kube.apply(pod(ns, "opted-out", labels={"tokenmesh.dev/inject": "true"},
                   annotations={"tokenmesh.dev/inject": "false"}),
               pod(ns, "unlabelled"))
    for name in ("opted-out", "unlabelled"):
        stored = kube.get("pod", name, ns)
        assert [c["name"] for c in stored["spec"]["containers"]] == ["app"], (name, stored["spec"]["containers"])
        assert "tokenmesh.dev/injected" not in (stored["metadata"].get("annotations") or {}), name
        assert not any(e["name"] == "HTTP_PROXY" for e in stored["spec"]["containers"][0].get("env", [])), name


def test_a_pod_naming_an_inbound_tls_secret_gets_it_mounted_for_the_sidecar_only(kube, operator, namespace):
    """tokenmesh.dev/inbound-tls-secret (docs/financial-grade.md): the API server stores the patched Pod, its
    Secret volume valid as written (items, mode), mounted into the sidecar alone."""
    ns = namespace
    injection_namespace(kube, ns)
    wait_until(lambda: published_bundle(kube), 30, "the operator to publish the CA bundle")
    kube.apply(pod(ns, "payments", labels={"tokenmesh.dev/inject": "true"},
                   annotations={"tokenmesh.dev/inbound-tls-secret": "payments-tls"}, account="orders"))
    stored = kube.get("pod", "payments", ns)
    containers = {c["name"]: c for c in stored["spec"]["containers"]}
    sidecar = containers[SIDECAR]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    tls = mounts["tokenmesh-inbound-tls"]
    assert tls["readOnly"] is True
    assert env["TOKENMESH_SIDECAR_INBOUND_TLS_CERT"] == f"{tls['mountPath']}/tls.crt"
    assert env["TOKENMESH_SIDECAR_INBOUND_TLS_KEY"] == f"{tls['mountPath']}/tls.key"
    assert env["TOKENMESH_SIDECAR_INBOUND_CLIENT_CA"] == f"{tls['mountPath']}/ca.crt"
    volume = {v["name"]: v for v in stored["spec"]["volumes"]}["tokenmesh-inbound-tls"]
    assert volume["secret"]["secretName"] == "payments-tls"
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    assert not any(m["name"] == "tokenmesh-inbound-tls" for m in containers["app"].get("volumeMounts", []))
