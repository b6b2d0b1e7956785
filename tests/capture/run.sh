#!/usr/bin/env bash
# Capture tests: tokenmesh-capture's iptables rules, the sidecar and the token server in real
# network namespaces (ip netns, veth pairs, a bridge), as root. They create their own namespaces
# only (tmcap<pid>-*), delete them at the end, and fail (never skip) where namespaces cannot be made.
#   tests/capture/run.sh [pytest args...]
# Needs: root, iproute2, iptables (its iptables-nft and iptables-legacy), setpriv (util-linux),
# and the binaries built: cargo build --workspace --bins
# TOKENMESH_CAPTURE_BIN  default: the debug tokenmesh-capture (tests/binaries.py)
# TOKENMESH_SIDECAR_BIN  default: the debug tokenmesh-sidecar (tests/binaries.py)
# TOKENMESH_SERVER_BIN   default: the debug token-server (tests/binaries.py)
# TOKENMESH_CACHE        where the venv lives (default: ~/.cache/tokenmesh)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
venv="$cache/venv-capture"
python="${PYTHON:-python3}"
source "$repo/tests/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "run.sh: the capture tests make network namespaces: run them as root" >&2
    exit 1
fi
for tool in ip iptables iptables-legacy ip6tables ip6tables-legacy iptables-save setpriv; do
    if ! command -v "$tool" >/dev/null; then
        echo "run.sh: $tool is missing (apt-get install iproute2 iptables util-linux)" >&2
        exit 1
    fi
done
require_bins TOKENMESH_CAPTURE_BIN:tokenmesh-capture TOKENMESH_SIDECAR_BIN:tokenmesh-sidecar TOKENMESH_SERVER_BIN:token-server

ensure_venv "$venv" "$here/requirements.txt"

cd "$repo"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/capture "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run.sh: pytest collected no tests: failing" >&2
fi
exit "$rc"
