#!/usr/bin/env bash
# The mesh tour, in one command: the token server on its embedded store and
# three services (gateway -> orders -> payments), each behind a
# tokenmesh-sidecar, all on loopback; then requests through the mesh and a
# hop-by-hop report of the token each service received. Exits 0 only if every
# hop got the expected token, so it doubles as a smoke test.
#
#   examples/mesh/run.sh              # debug binaries (built if needed)
#   examples/mesh/run.sh --release    # release binaries
#   examples/mesh/run.sh --bin-dir D  # use D/token-server and D/tokenmesh-sidecar, no build
#   examples/mesh/run.sh --keep       # leave the mesh running after the report (Ctrl-C stops it)
#
# Needs bash, curl and python3 (and cargo, unless --bin-dir).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PROFILE=debug
BIN_DIR=
KEEP=0
READY_TIMEOUT=${READY_TIMEOUT:-30} # seconds, per component

usage() { sed -n '2,13s/^# \{0,1\}//p' "$0"; }
while (($#)); do
  case $1 in
    --release) PROFILE=release ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 2; }
done
# Settings from the caller's shell must not leak into the mesh (a
# TOKENMESH_DATABASE_URL would move the token server to PostgreSQL).
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^TOKENMESH_' || true)
CURL=(curl --silent --show-error --noproxy '*' --max-time 20)

# --- binaries ---------------------------------------------------------------
if [[ -z $BIN_DIR ]]; then
  command -v cargo >/dev/null || { echo "run.sh: cargo is required (or give --bin-dir)" >&2; exit 2; }
  flags=(-p token-server -p tokenmesh-sidecar --bins)
  [[ $PROFILE == release ]] && flags+=(--release)
  # The report comes first: cargo's ~240 "Compiling" lines go to a log, shown only if the build fails.
  build_log=$(mktemp "${TMPDIR:-/tmp}/tokenmesh-mesh-build.XXXXXX")
  echo "building: cargo build ${flags[*]} (a first build takes a few minutes)" >&2
  if ! (cd "$ROOT" && cargo build --color never "${flags[@]}") >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    echo "run.sh: the build failed (whole output in $build_log)" >&2
    exit 2
  fi
  rm -f "$build_log"
  target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  BIN_DIR=$target/$PROFILE
fi
for bin in token-server tokenmesh-sidecar; do
  [[ -x $BIN_DIR/$bin ]] || { echo "run.sh: $BIN_DIR/$bin is missing" >&2; exit 2; }
done

# --- run directory, cleanup -------------------------------------------------
RUN=$(mktemp -d "${TMPDIR:-/tmp}/tokenmesh-mesh.XXXXXX")
mkdir -p "$RUN/logs" "$RUN/secrets" "$RUN/tour"
PIDS=()
NAMES=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  # Give them 5 s to stop, then insist.
  for _ in $(seq 50); do
    local alive=0
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((status != 0)); then
    echo >&2
    echo "run.sh: failed (exit $status). Logs of each process (last 30 lines; all in $RUN/logs):" >&2
    for log in "$RUN"/logs/*.log; do
      [[ -e $log ]] || continue
      echo "----- ${log##*/}" >&2
      tail -n 30 "$log" >&2
    done
  else
    rm -rf "$RUN"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND...: runs it in the background, output to logs/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$RUN/logs/$name.log" 2>&1 &
  PIDS+=("$!")
  NAMES+=("$name")
}

# wait_ok NAME URL: until URL answers 200, at most READY_TIMEOUT seconds; fails
# at once if the process NAME has exited.
wait_ok() {
  local name=$1 url=$2 deadline=$((SECONDS + READY_TIMEOUT)) i pid
  for i in ${NAMES[@]+"${!NAMES[@]}"}; do [[ ${NAMES[$i]} == "$name" ]] && pid=${PIDS[$i]}; done
  until curl --silent --noproxy '*' --max-time 2 --fail --output /dev/null "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: $name exited before it was ready" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "run.sh: $name not ready at $url after ${READY_TIMEOUT}s" >&2
      return 1
    fi
    sleep 0.1
  done
}

# --- secrets: random, for this run only ---------------------------------------
for client in frontend partner gateway-svc orders-svc payments-svc; do
  mkdir -p "$RUN/secrets/$client"
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$RUN/secrets/$client/client_secret"
done
chmod -R go-rwx "$RUN/secrets"
secret() { cat "$RUN/secrets/$1/client_secret"; }

# --- ports: all free loopback ports, chosen at once so they differ ----------
read -r HTTP GRPC \
  GW_APP GW_IN GW_OUT GW_ADMIN \
  OR_APP OR_IN OR_OUT OR_ADMIN \
  PA_APP PA_IN PA_OUT PA_ADMIN < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(14)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
L=127.0.0.1
SERVER=http://$L:$HTTP

# --- the token server -------------------------------------------------------
start token-server "$BIN_DIR/token-server" \
  --config "$HERE/tokenmesh.yaml" --secrets-dir "$RUN/secrets" --data-dir "$RUN/data" \
  --http-addr "$L:$HTTP" --grpc-addr "$L:$GRPC" --issuer "$SERVER"
wait_ok token-server "$SERVER/readyz"

# --- the services and their sidecars ----------------------------------------
# sidecar NAME CLIENT AUDIENCE APP IN OUT ADMIN [--resolve HOST=ADDR ...]
sidecar() {
  local name=$1 client=$2 audience=$3 app=$4 in=$5 out=$6 admin=$7
  shift 7
  start "$name-sidecar" "$BIN_DIR/tokenmesh-sidecar" \
    --token-server "http://$L:$GRPC" \
    --client-id "$client" --client-secret-file "$RUN/secrets/$client/client_secret" \
    --audience "$audience" --app-addr "$L:$app" \
    --inbound-addr "$L:$in" --outbound-addr "$L:$out" --admin-addr "$L:$admin" "$@"
}
for svc in gateway:$GW_APP:$GW_OUT orders:$OR_APP:$OR_OUT payments:$PA_APP:$PA_OUT; do
  IFS=: read -r name app out <<<"$svc"
  start "$name" python3 "$HERE/services.py" "$name" --port "$app" --proxy "$L:$out"
done
sidecar gateway gateway-svc gateway "$GW_APP" "$GW_IN" "$GW_OUT" "$GW_ADMIN" \
  --resolve "orders.local=$L:$OR_IN" --resolve "payments.local=$L:$PA_IN"
sidecar orders orders-svc orders "$OR_APP" "$OR_IN" "$OR_OUT" "$OR_ADMIN" \
  --resolve "payments.local=$L:$PA_IN"
sidecar payments payments-svc payments "$PA_APP" "$PA_IN" "$PA_OUT" "$PA_ADMIN"
wait_ok gateway "http://$L:$GW_APP/healthz"
wait_ok orders "http://$L:$OR_APP/healthz"
wait_ok payments "http://$L:$PA_APP/healthz"
wait_ok gateway-sidecar "http://$L:$GW_ADMIN/readyz"
wait_ok orders-sidecar "http://$L:$OR_ADMIN/readyz"
wait_ok payments-sidecar "http://$L:$PA_ADMIN/readyz"

cat <<EOF
tokenmesh mesh tour
  token server  $SERVER (gRPC $L:$GRPC), embedded store in a temporary directory
  gateway       sidecar $L:$GW_IN  -> app $L:$GW_APP   (outbound proxy $L:$GW_OUT)
  orders        sidecar $L:$OR_IN  -> app $L:$OR_APP   (outbound proxy $L:$OR_OUT)
  payments      sidecar $L:$PA_IN  -> app $L:$PA_APP   (outbound proxy $L:$PA_OUT)

EOF

# --- tokens for the callers, over HTTP --------------------------------------
# token CLIENT: a client_credentials token for the gateway and payments audiences.
token() {
  local client=$1 answer
  answer=$("${CURL[@]}" --user "$client:$(secret "$client")" \
    --data grant_type=client_credentials --data audience=gateway --data audience=payments \
    "$SERVER/oauth2/token")
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])["access_token"])' "$answer" \
    >"$RUN/tour/$client.token" || {
    echo "run.sh: no token for $client: $answer" >&2
    return 1
  }
}
for client in frontend partner; do
  token "$client"
  echo "$client: POST /oauth2/token grant_type=client_credentials audience=gateway audience=payments -> a JWT"
done
echo

# --- the requests ------------------------------------------------------------
# send SCENARIO CLIENT PATH: GET PATH at the gateway's sidecar with CLIENT's token.
send() {
  "${CURL[@]}" --header "Authorization: Bearer $(cat "$RUN/tour/$2.token")" \
    --output "$RUN/tour/$1.json" --write-out '%{http_code}' \
    "http://$L:$GW_IN$3" >"$RUN/tour/$1.status"
}
send checkout frontend /checkout
send balance frontend /balance
send partner-balance partner /balance

python3 "$HERE/report.py" "$RUN"

if ((KEEP)); then
  cat <<EOF

The mesh keeps running; Ctrl-C stops it. Try (tokens live 5 minutes):
  S=$RUN/secrets
  TOKEN=\$(curl -s -u frontend:\$(cat \$S/frontend/client_secret) -d grant_type=client_credentials \\
    -d audience=gateway -d audience=payments $SERVER/oauth2/token |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer \$TOKEN" http://$L:$GW_IN/checkout | python3 -m json.tool
  curl -s http://$L:$OR_ADMIN/metrics | grep tokenmesh_sidecar_exchanges
Logs are in $RUN/logs.
EOF
  trap 'exit 0' INT TERM
  wait
fi
