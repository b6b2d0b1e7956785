#!/usr/bin/env bash
# End-to-end tests against a real Kubernetes API server (tests/e2e/control-plane.sh: etcd and
# kube-apiserver as local processes), with the real token server and operator binaries.
#   tests/e2e/run.sh [pytest args...]
# TOKENMESH_SERVER_BIN    token server binary (default: the debug build, where cargo puts it: tests/binaries.py)
# TOKENMESH_OPERATOR_BIN  operator binary (default: the debug build, where cargo puts it: tests/binaries.py)
# TOKENMESH_CACHE         where the venv and the control-plane binaries live (default: ~/.cache/tokenmesh)
# TOKENMESH_E2E_REUSE=1   use the control plane already started in TOKENMESH_K8S_DIR (control-plane.sh start)
#                         and leave it running; otherwise one is started for this run and stopped after it.
# The first run builds kube-apiserver and etcd from source (see docs/testing.md for the timings).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
venv="$cache/venv-e2e"
python="${PYTHON:-python3}"
source "$repo/tests/lib.sh"

require_bins TOKENMESH_SERVER_BIN:token-server TOKENMESH_OPERATOR_BIN:tokenmesh-operator

ensure_venv "$venv" "$here/requirements.txt"

if [[ ${TOKENMESH_E2E_REUSE:-0} == 1 ]]; then
    eval "$("$here/control-plane.sh" env)"
else
    # A state dir of this run's own, so a control plane started by hand is left alone.
    TOKENMESH_K8S_DIR="$(mktemp -u "${TMPDIR:-/tmp}/tokenmesh-k8s.XXXXXX")"
    export TOKENMESH_K8S_DIR
    trap '"$here/control-plane.sh" stop' EXIT
    eval "$("$here/control-plane.sh" start)"
fi

cd "$repo"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/e2e "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run.sh: pytest collected no tests: failing" >&2
fi
if [[ $rc -ne 0 ]]; then
    echo "run.sh: last lines of the API server's log ($TOKENMESH_K8S_DIR/apiserver.log):" >&2
    grep -v 'addrConn.createTransport' "$TOKENMESH_K8S_DIR/apiserver.log" | tail -n 20 >&2 || true
fi
exit "$rc"
