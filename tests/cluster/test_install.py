"""helm install of charts/tokenmesh on a real node: the images built here run, the
Deployments roll out and become Ready, the webhook gets its CA bundle, the CRDs
are established."""

import base64

from conftest import CHART, NS, RELEASE, TOKEN_SERVER, kjson, kubectl, wait_until

WEBHOOK = f"{RELEASE}-webhook"


def test_deployments_roll_out_and_become_ready(release):
    for deployment in (TOKEN_SERVER, f"{RELEASE}-operator"):
        kubectl("-n", NS, "rollout", "status", f"deployment/{deployment}", "--timeout=120s", timeout=150)
        status = kjson("-n", NS, "get", "deployment", deployment)["status"]
        assert status.get("readyReplicas") == status["replicas"] == 1, status


def test_pods_run_the_local_images_as_the_dockerfiles_promise(release):
    pods = kjson("-n", NS, "get", "pods")["items"]
    images = {c["image"]: c for p in pods for c in p["status"]["containerStatuses"]}
    for name in ("token-server", "operator"):
        status = next(c for image, c in images.items() if image.startswith(f"ghcr.io/tokenmesh/{name}:"))
        assert status["ready"] and status["restartCount"] == 0, status
    for pod in pods:
        # The chart's pods run as the images' user (65532) on a read-only root filesystem.
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_webhook_gets_the_operators_ca_bundle(release):
    def bundle():
        mwc = kjson("get", "mutatingwebhookconfiguration", WEBHOOK)
        return mwc["webhooks"][0]["clientConfig"].get("caBundle")

    published = wait_until(bundle, 60, "the operator to publish the webhook's CA bundle")
    secret = kjson("-n", NS, "get", "secret", f"{WEBHOOK}-tls")
    assert base64.b64decode(published) == base64.b64decode(secret["data"]["ca.crt"])


def test_crds_are_established(release):
    names = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert names
    for crd in kjson("get", "crds")["items"]:
        if crd["spec"]["group"] != "tokenmesh.dev":
            continue
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]
    served = kubectl("api-resources", "--api-group", "tokenmesh.dev", "-o", "name").split()
    assert {"oauthclients.tokenmesh.dev", "scopes.tokenmesh.dev", "exchangepolicies.tokenmesh.dev",
            "tokenservers.tokenmesh.dev"} <= set(served)
