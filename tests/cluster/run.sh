#!/usr/bin/env bash
# The whole Kubernetes path on a real single-node cluster (tests/cluster/cluster.sh): images built here
# from the release binaries (images.py), helm install of charts/tokenmesh, the shop example as injected
# pods, and day-2 operations. Needs root (kubelet, containerd, kube-proxy).
#   tests/cluster/run.sh [pytest args...]
# TOKENMESH_IMAGE_PROFILE   which cargo profile the images take their binaries from (default: release;
#                           build it first: cargo build --release --bins)
# TOKENMESH_CACHE           k8s binaries, .deb files, image archives and the venv (default ~/.cache/tokenmesh)
# TOKENMESH_CLUSTER_REUSE=1 use the cluster already started (cluster.sh start) and leave it running
# The first run builds the node binaries and CoreDNS (build-k8s.sh; see docs/testing.md for the timings).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
venv="$cache/venv-cluster"
python="${PYTHON:-python3}"
source "$repo/tests/lib.sh"

t0=$SECONDS
"$here/cluster.sh" deps
"$here/build-k8s.sh"
ensure_venv "$venv" "$here/requirements.txt"
if [[ ${TOKENMESH_CLUSTER_REUSE:-0} == 1 ]]; then
    eval "$("$here/cluster.sh" env)"
else
    "$here/images.py" --no-import
    TOKENMESH_CLUSTER_DIR="$(mktemp -u "${TMPDIR:-/tmp}/tokenmesh-cluster.XXXXXX")"
    export TOKENMESH_CLUSTER_DIR
    # Teardown must leave nothing behind: checked after every run.
    teardown() {
        local rc=$?
        # A failed run keeps the components' logs (in $TOKENMESH_CLUSTER_DIR.logs).
        TOKENMESH_CLUSTER_KEEP=$((rc != 0)) "$here/cluster.sh" stop || rc=1
        "$here/cluster.sh" check-clean || rc=1
        exit "$rc"
    }
    trap teardown EXIT
    eval "$("$here/cluster.sh" start)"
fi
echo "run.sh: cluster up after $((SECONDS - t0)) s" >&2

cd "$repo"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/cluster "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run.sh: pytest collected no tests: failing" >&2
fi
echo "run.sh: done after $((SECONDS - t0)) s" >&2
exit "$rc"
