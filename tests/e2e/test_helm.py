"""`helm install` of charts/tokenmesh against the real API server creates what
the chart renders; `helm uninstall` removes it again (but the PVC the chart
marks `helm.sh/resource-policy: keep`). No kubelet runs, so the Deployments are
only stored, never rolled out: nothing here waits for Pods."""

import json
import subprocess

from conftest import CHART, KUBECTL, helm

RELEASE = "tm-e2e"


def rendered(ns):
    """Every object of the chart's templates (not of crds/), as JSON (kubectl reads Helm's YAML stream)."""
    out = helm("template", RELEASE, str(CHART), "-n", ns).stdout
    proc = subprocess.run([KUBECTL, "create", "--dry-run=client", "-o", "json", "-f", "-"], input=out,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # One JSON document per object, one after the other.
    decoder, text, pos, objects = json.JSONDecoder(), proc.stdout, 0, []
    while pos < len(text.rstrip()):
        doc, end = decoder.raw_decode(text, pos)
        objects += doc["items"] if doc.get("kind") == "List" else [doc]
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return objects


def kind_of(obj):
    """`kind.group` as kubectl get takes it (-n is ignored for cluster-scoped kinds)."""
    group = obj["apiVersion"].rpartition("/")[0]
    return obj["kind"].lower() + (f".{group}" if group else "")


def test_helm_install_creates_the_charts_objects_and_uninstall_removes_them(kube, crds, namespace):
    ns = namespace
    objects = rendered(ns)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "MutatingWebhookConfiguration"} <= kinds, kinds

    install = helm("install", RELEASE, str(CHART), "-n", ns, "--timeout", "2m")
    uninstalled = False
    try:
        assert "STATUS: deployed" in install.stdout, install.stdout
        for obj in objects:
            name = obj["metadata"]["name"]
            stored = kube.get(kind_of(obj), name, ns)
            assert stored is not None, f"{obj['kind']} {name} was not created"
            annotations = stored["metadata"].get("annotations") or {}
            assert annotations.get("meta.helm.sh/release-name") == RELEASE, (obj["kind"], name, annotations)
        # The CRDs were installed by the suite already: Helm leaves them as they are.
        for name in crds:
            assert kube.get("crd", name) is not None

        helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
        uninstalled = True
        for obj in objects:
            name = obj["metadata"]["name"]
            stored = kube.get(kind_of(obj), name, ns)
            if (obj["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep":
                assert stored is not None, f"{obj['kind']} {name} (resource-policy keep) was deleted"
            else:
                assert stored is None, f"{obj['kind']} {name} is still there after helm uninstall"
        assert helm("status", RELEASE, "-n", ns, check=False).returncode != 0, "the release is still there"
    finally:
        if not uninstalled:
            helm("uninstall", RELEASE, "-n", ns, check=False)
