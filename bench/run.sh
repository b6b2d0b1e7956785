#!/usr/bin/env bash
# tokenmesh token-issuance benchmark: wrk over loopback, server pinned to one
# core and wrk to the other. Prints a markdown table on stdout (progress on
# stderr). See bench/README.md. Env knobs:
#   BENCH_DURATION=10s  BENCH_WARMUP=2s  BENCH_CONNECTIONS=32
#   BENCH_CASES="healthz opaque es256 eddsa peer"   (subset to run)
#   BENCH_SERVER_CPU=0  BENCH_CLIENT_CPU=1
#   TOKEN_SERVER_BIN=path (skip cargo build)   BENCH_SKIP_BUILD=1
#   PEER_NODE_ENV=production (the peer's NODE_ENV; "development" is its default mode)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNS=${BENCH_CONNECTIONS:-32}
CASES=" ${BENCH_CASES:-healthz opaque es256 eddsa peer} "
SCPU=${BENCH_SERVER_CPU:-0}
CCPU=${BENCH_CLIENT_CPU:-1}
SECRET=bench-client-secret-0123456789abcdef # >= 32 chars, shared by all clients
PEER_RESOURCE=urn:tokenmesh:bench:orders
TOKEN_BODY='grant_type=client_credentials&scope=orders:read'

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ $CASES == *" $1 "* ]]; }
sudo_() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenmesh-bench.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ----------------------------------------------------------
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  sudo_ apt-get install -y wrk >&2 || { sudo_ apt-get update >&2 && sudo_ apt-get install -y wrk >&2; }
fi
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v curl >/dev/null || die "curl is required"
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs; server and wrk will share a core"

cpu_busy() { # percent of all CPUs busy over 1 s, from /proc/stat
  local a b
  a=($(head -n1 /proc/stat)); sleep 1; b=($(head -n1 /proc/stat))
  local idle=$(( b[4] + b[5] - a[4] - a[5] )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
if want healthz || want opaque || want es256 || want eddsa; then
  bin=${TOKEN_SERVER_BIN:-}
  if [[ -z $bin ]]; then
    if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
      log "cargo build --release -p token-server (no-op when up to date)"
      (cd "$root" && cargo build --release -p token-server >&2)
    fi
    bin=${CARGO_TARGET_DIR:-$root/target}/release/token-server
  fi
  [[ -x $bin ]] || die "no token-server binary at $bin"
fi
if want peer; then
  command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required for the peer"
  if [[ ! -d $here/peer/node_modules/oidc-provider ]]; then
    log "npm install in bench/peer"
    (cd "$here/peer" && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) >&2
  fi
fi
busy=$(cpu_busy)
if (( busy > 10 )); then
  log "warning: CPUs already ${busy}% busy before the benchmark (a build running?); figures will be noisy"
fi

busy_ticks() { local a; a=($(head -n1 /proc/stat)); echo $(( a[1] + a[2] + a[3] + a[6] + a[7] + a[8] )); }
proc_ticks() { # utime + stime of a process, all its threads (0 once it is gone)
  local f; f=($(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || echo x x x x x x x x x x x 0 0))
  echo $(( f[11] + f[12] ))
}

free_port() { # first port from a random start that nothing answers on
  local p=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

wait_ready() { # url pid logfile
  local i
  for i in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$3" >&2; die "server exited while starting ($3)"; }
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" || true) == 200 ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$3" >&2
  die "$1 not 200 after 30 s"
}

# --- one case ------------------------------------------------------------------
declare -A RPS P50 P99 ERR SCPU_PCT
NOTES=()
(( busy <= 10 )) || NOTES+=("CPUs were ${busy}% busy before the run started: other load, figures not trustworthy")
flagged=0
# run_case id url method body client_id expect(opaque|ES256|EdDSA|-) issuer audience
run_case() {
  local id=$1 url=$2 method=$3 body=$4 client=$5 expect=$6 issuer=$7 aud=$8 auth="" out res
  [[ -n $client ]] && auth="Basic $(printf '%s:%s' "$client" "$SECRET" | base64 -w0)"
  if [[ $expect != - ]]; then # preflight: one request, status + content sanity
    local code
    code=$(curl -s -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' -u "$client:$SECRET" -d "$body" "$url")
    [[ $code == 200 ]] || NOTES+=("$id: preflight got HTTP $code: $(head -c 200 "$tmp/b")")
    if [[ $code == 200 ]] && command -v node >/dev/null; then
      local line
      while IFS= read -r line; do
        log "$id preflight $line"
        [[ $line == WARN:* ]] && NOTES+=("$id: ${line#WARN: }")
      done < <(node "$here/check-token.mjs" "$issuer" "$expect" "$aud" "$tmp/h" "$tmp/b")
    fi
  fi
  export BENCH_METHOD=$method BENCH_BODY=$body BENCH_AUTH=$auth
  log "$id: warm-up $WARMUP, then $DURATION with $CONNS connections"
  taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"$WARMUP" --timeout 5s -s "$here/token.lua" "$url" >/dev/null
  # CPU accounting: all CPUs' busy time, minus the server's, minus wrk's, is
  # other load that disturbed the case.
  local b0 s0 t0 b1 s1 t1 wrk_cpu
  b0=$(busy_ticks) s0=$(proc_ticks "$spid") t0=$(date +%s%N)
  { TIMEFORMAT='%3U %3S'; time taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s \
      -s "$here/token.lua" "$url" >"$tmp/wrk.out"; } 2>"$tmp/wrk.time" || die "$id: wrk failed: $(<"$tmp/wrk.time")"
  b1=$(busy_ticks) s1=$(proc_ticks "$spid") t1=$(date +%s%N)
  out=$(<"$tmp/wrk.out") wrk_cpu=$(awk 'END { print $1 + $2 }' "$tmp/wrk.time")
  local hz wall server_pct other_pct
  hz=$(getconf CLK_TCK) wall=$(( (t1 - t0) / 1000000 )) # ms
  server_pct=$(( (s1 - s0) * 100000 / hz / wall ))
  other_pct=$(awk -v b=$(( b1 - b0 )) -v s=$(( s1 - s0 )) -v hz="$hz" -v w="$wrk_cpu" -v ms="$wall" \
    'BEGIN { o = ((b - s) / hz - w) * 100000 / ms; printf "%d", o < 0 ? 0 : o }')
  SCPU_PCT[$id]=$server_pct%
  if (( other_pct > 10 )); then
    SCPU_PCT[$id]+=" ⚠" NOTES+=("$id: other processes used ${other_pct}% of a core during the case: figures disturbed")
  fi
  res=$(grep '^BENCH_RESULT' <<<"$out") || { echo "$out" >&2; die "$id: no result from wrk"; }
  field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p" <<<"$res"; }
  local rps p50 p99 ok non200 sockerr
  rps=$(field rps) p50=$(field p50_us) p99=$(field p99_us)
  ok=$(field ok) non200=$(field non200) sockerr=$(field sockerr)
  RPS[$id]=$rps P50[$id]=$p50 P99[$id]=$p99
  if (( non200 + sockerr == 0 && ok > 0 )); then ERR[$id]=0; else
    ERR[$id]="**${non200} non-200, ${sockerr} socket** ⚠" flagged=1
    NOTES+=("$id: FLAGGED, ${ok} ok / ${non200} non-200 / ${sockerr} socket errors; first bad: $(grep '^BENCH_FIRST_BAD' <<<"$out" | cut -c17- || true)")
  fi
  log "$id: $rps req/s, p50 ${p50}us, p99 ${p99}us, ok $ok, non-200 $non200, socket errors $sockerr; server ${server_pct}% of its core, other load ${other_pct}% of a core"
}

# --- tokenmesh ------------------------------------------------------------------
if want healthz || want opaque || want es256 || want eddsa; then
  port=$(free_port); iss=http://127.0.0.1:$port
  mkdir -p "$tmp/cfg" "$tmp/data" "$tmp/secrets/bench"
  printf '%s' "$SECRET" >"$tmp/secrets/bench/client_secret"
  client() { # name, accessToken mapping
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: %s}\nspec:\n  clientId: %s\n  grantTypes: [client_credentials]\n  authentication: {method: client_secret_basic, secretRef: {name: bench, key: client_secret}}\n  scopes: ["orders:read"]\n  audiences: [orders]\n  accessToken: %s\n' "$1" "$1" "$2"
  }
  {
    printf 'apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {issuer: "%s", signing: {algorithm: ES256}}\n' "$iss"
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-read}\nspec: {name: "orders:read"}\n'
    client bench-es256 '{format: jwt, ttl: 300s}'
    client bench-eddsa '{format: jwt, algorithm: EdDSA, ttl: 300s}'
    client bench-opaque '{format: opaque, ttl: 300s}'
  } >"$tmp/cfg/bench.yaml"
  extra=() # keep the gRPC listener off its fixed default port
  "$bin" --help 2>/dev/null | grep -q -- --grpc-addr && extra=(--grpc-addr "127.0.0.1:$(free_port)")
  log "starting $bin on $iss (CPU $SCPU)"
  taskset -c "$SCPU" "$bin" --config "$tmp/cfg" --http-addr "127.0.0.1:$port" --issuer "$iss" \
    --data-dir "$tmp/data" --secrets-dir "$tmp/secrets" "${extra[@]}" >"$tmp/token-server.log" 2>&1 &
  pids+=($!) spid=$!
  wait_ready "$iss/readyz" "$!" "$tmp/token-server.log"
  tok=$iss/oauth2/token
  want healthz && run_case healthz "$iss/healthz" GET "" "" - "$iss" -
  want opaque && run_case opaque "$tok" POST "$TOKEN_BODY" bench-opaque opaque "$iss" orders
  want es256 && run_case es256 "$tok" POST "$TOKEN_BODY" bench-es256 ES256 "$iss" orders
  want eddsa && run_case eddsa "$tok" POST "$TOKEN_BODY" bench-eddsa EdDSA "$iss" orders
  NOTES+=("token-server data dir after its cases: $(du -sh "$tmp/data" | cut -f1) ($(cd "$tmp/data" && ls -s --block-size=M | tail -n +2 | awk '{ printf "%s%s %s", sep, $2, $1; sep = ", " }'))")
  loglines=$(wc -l <"$tmp/token-server.log")
  (( loglines < 100 )) || NOTES+=("token-server wrote $loglines log lines during the run")
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
fi

# --- peer: oidc-provider ------------------------------------------------------
peer_ver=-
if want peer; then
  peer_ver=$(node -p "require('$here/peer/node_modules/oidc-provider/package.json').version")
  pport=$(free_port); piss=http://127.0.0.1:$pport
  log "starting oidc-provider $peer_ver on $piss (CPU $SCPU)"
  NODE_ENV=${PEER_NODE_ENV:-production} PEER_CLIENT_SECRET=$SECRET taskset -c "$SCPU" node "$here/peer/server.mjs" "$pport" >"$tmp/peer.log" 2>&1 &
  pids+=($!) spid=$!
  wait_ready "$piss/healthz" "$!" "$tmp/peer.log"
  run_case peer_healthz "$piss/healthz" GET "" "" - "$piss" -
  run_case peer "$piss/token" POST "$TOKEN_BODY&resource=$PEER_RESOURCE" bench-es256 ES256 "$piss" orders
fi

# --- report -------------------------------------------------------------------
ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }
ratio() { [[ -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }' || echo -; }
row() { # id label ceiling-id
  [[ -n ${RPS[$1]:-} ]] || return 0
  printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "$2" "${RPS[$1]}" "$(ms "${P50[$1]}")" "$(ms "${P99[$1]}")" \
    "$(ratio "${RPS[$1]}" "${RPS[$3]:-}")" "${SCPU_PCT[$1]}" "${ERR[$1]}"
}
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
echo "### Token issuance, loopback HTTP ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r). Server pinned to CPU $SCPU, wrk (1 thread, $CONNS connections) to CPU $CCPU; $WARMUP warm-up + $DURATION per case. $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)$(command -v node >/dev/null && echo ", node $(node -v)")$( [[ $peer_ver != - ]] && echo ", oidc-provider $peer_ver")."
echo
echo '| case | req/s | p50 | p99 | ratio to (a) | server core | errors |'
echo '|---|---:|---:|---:|---:|---:|---|'
row healthz '(a) tokenmesh `GET /healthz` (ceiling)' healthz
row opaque '(b) tokenmesh opaque token' healthz
row es256 '(c) tokenmesh JWT ES256' healthz
row eddsa '(d) tokenmesh JWT EdDSA' healthz
row peer "(e) oidc-provider ${peer_ver} JWT ES256 (1 Node process)" healthz
row peer_healthz '(e0) oidc-provider process `GET /healthz` (Node ceiling)' healthz
echo
if [[ -n ${RPS[es256]:-} && -n ${RPS[peer]:-} ]]; then
  echo -n "ES256 tokenmesh / ES256 oidc-provider: **$(ratio "${RPS[es256]}" "${RPS[peer]}")×** requests/s"
  [[ ${ERR[es256]}${ERR[peer]} == 00 ]] && echo . || echo " (⚠ NOT VALID: a case had errors)."
fi
if [[ -n ${RPS[peer]:-} && -n ${RPS[peer_healthz]:-} ]]; then
  echo "oidc-provider ES256 / its own Node \`/healthz\`: $(ratio "${RPS[peer]}" "${RPS[peer_healthz]}")."
fi
if (( ${#NOTES[@]} )); then
  echo
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi
(( flagged == 0 )) || { log "some cases returned errors: see the table"; exit 2; }
