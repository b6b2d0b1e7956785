#!/usr/bin/env bash
# Interop tests: the real token-server binary against authlib, PyJWT and requests (HTTP),
# and grpcio, grpcio-health-checking and grpcurl (gRPC; stubs made from proto/ at test time).
#   tests/interop/run.sh [pytest args...]
# TOKENMESH_SERVER_BIN  binary to test (default: target/debug/token-server)
# TOKENMESH_CACHE       where the venv lives (default: ~/.cache/tokenmesh)
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
