#!/usr/bin/env bash
# Runs receiver.py (an OTLP/gRPC trace receiver built from the opentelemetry-proto
# package) in its own venv, made or remade first when requirements.txt changed.
#   tests/otlp/receiver.sh PORT_FILE SPANS_FILE
#   tests/otlp/receiver.sh --venv-only      (makes the venv and exits: .ci/run, before the tests)
# TOKENMESH_CACHE  where the venv lives (default: ~/.cache/tokenmesh); about 10 s to make.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
python="${PYTHON:-python3}"
source "$repo/tests/lib.sh"

ensure_venv "$cache/venv-otlp" "$here/requirements.txt"
[[ "${1:-}" == --venv-only ]] && exit 0
exec "$cache/venv-otlp/bin/python" "$here/receiver.py" "$@"
