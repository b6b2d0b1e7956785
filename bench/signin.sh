#!/usr/bin/env bash
# tokenmesh sign-in benchmark (issue #17): whole authorization code flows per
# second with an existing SSO session (GET /authorize → code → POST /token,
# PKCE S256, no consent page), against panva's oidc-provider doing the same
# in the same run, and refresh_token grants per second, on the embedded store
# and on PostgreSQL. The load generator is bench/benchapp (Go, GOMAXPROCS=1)
# on its own core. Markdown on stdout, progress on stderr. See
# bench/README.md ("Sign-in benchmark").
# Env knobs:
#   BENCH_DURATION=10s  BENCH_WARMUP=2s  BENCH_CONNECTIONS=32
#   BENCH_SIGNIN_CASES="flow flow-peer flow-pg refresh refresh-peer refresh-pg" (subset to run)
#   BENCH_REFRESH_WARM=3000 (refresh tokens for the warm-up, whose rate sizes the measured pool)
#   BENCH_REFRESH_MAX=100000 (most refresh tokens minted for one measured case)
#   BENCH_SERVER_CPU=0 (token server, PostgreSQL, the peer)  BENCH_CLIENT_CPU=1 (benchapp)
#   BENCH_QUIET_SECS=30 BENCH_QUIET_LOAD=0.5 BENCH_QUIET_MAX=3600 (BENCH_NO_QUIET=1: don't wait)
#   BENCH_PG_SSLMODE=disable (sslmode of the token server's database URL)
#   TOKEN_SERVER_BIN=path (skip cargo)  BENCH_SKIP_BUILD=1  PEER_NODE_ENV=production
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNS=${BENCH_CONNECTIONS:-32}
CASES=" ${BENCH_SIGNIN_CASES:-flow flow-peer flow-pg refresh refresh-peer refresh-pg} "
SCPU=${BENCH_SERVER_CPU:-0}
CCPU=${BENCH_CLIENT_CPU:-1}
REFRESH_WARM=${BENCH_REFRESH_WARM:-3000}
REFRESH_MAX=${BENCH_REFRESH_MAX:-100000}
PG_SSLMODE=${BENCH_PG_SSLMODE:-disable}
CLIENT=bench-web
REDIRECT=http://127.0.0.1:3000/callback # never called: the load generator reads the code from Location
SCOPE='openid orders:read'              # access token for `orders` and an ID token; no refresh token
MINT_SCOPE='openid offline_access orders:read'
USER_NAME=alice PASSWORD=alice-quickstart-password # examples/secrets/people/users.yaml
PEER_RESOURCE=urn:tokenmesh:bench:orders           # bench/peer/signin.mjs: the JWT access token for `orders`

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenmesh-signin-bench.XXXXXX")
pids=()
source "$here/lib.sh"
want() { [[ $CASES == *" $1 "* ]]; }
want_pg() { want flow-pg || want refresh-pg; }
want_peer() { want flow-peer || want refresh-peer; }

# --- prerequisites ----------------------------------------------------------
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v curl >/dev/null || die "curl is required"
ensure_benchapp
if want flow || want refresh || want_pg; then
  bin=${TOKEN_SERVER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/token-server}
  [[ -n ${TOKEN_SERVER_BIN:-}${BENCH_SKIP_BUILD:-} ]] || release_build -p token-server
  [[ -x $bin ]] || die "no token-server binary at $bin"
fi
peer_ver=-
if want_peer; then
  command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required for the peer"
  if [[ ! -d $here/peer/node_modules/oidc-provider ]]; then
    log "npm ci in bench/peer"
    (cd "$here/peer" && npm ci --no-audit --no-fund) >&2
  fi
  peer_ver=$(node -p "require('$here/peer/node_modules/oidc-provider/package.json').version")
fi
want_pg && { command -v psql >/dev/null || die "psql is required for the PostgreSQL cases"; }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A RPS P50 P99 AP50 AP99 TP50 TP99 ERR SFRAC CFRAC OTHER
NOTES=()
flagged=0
flag() { ERR[$1]="**$2** ⚠" flagged=1; NOTES+=("$1: FLAGGED, $3"); }
pct() { awk -v f="$1" 'BEGIN { printf "%.0f%%", f * 100 }'; }
ms() { [[ -n ${1:-} ]] && awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }' || echo -; }
ratio() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }' || echo -; }
per_core() { [[ -n ${RPS[$1]:-} ]] && awk -v r="${RPS[$1]}" -v f="${SFRAC[$1]}" 'BEGIN { if (f > 0) printf "%.0f", r / f; else printf "-" }' || echo -; }

# --- servers ----------------------------------------------------------------
mkdir -p "$tmp/secrets/people"
cp "$root/examples/secrets/people/users.yaml" "$tmp/secrets/people/users.yaml"

# tm_config dir issuer: the store-independent config of the token server
tm_config() {
  mkdir -p "$1"
  cat >"$1/bench.yaml" <<EOF
apiVersion: tokenmesh.dev/v1alpha1
kind: TokenServer
metadata: {name: default}
spec: {issuer: "$2", signing: {algorithm: ES256}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: Scope
metadata: {name: orders-read}
spec: {name: "orders:read"}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: IdentityProvider
metadata: {name: people}
spec:
  type: static
  static: {usersSecretRef: {name: people, key: users.yaml}}
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {name: $CLIENT}
spec:
  clientId: $CLIENT
  grantTypes: [authorization_code, refresh_token]
  authentication: {method: none}
  redirectUris: ["$REDIRECT"]
  identityProviders: [people]
  consent: implicit
  scopes: ["orders:read"]
  audiences: [orders]
  accessToken: {format: jwt, ttl: 300s}
  idToken: {algorithm: ES256}
EOF
}

# start_tm id [database-url]: the token server on CPU $SCPU; sets SPIDS, ISS,
# KIND, and OFFLINE_CLIENT (the client whose flows get refresh tokens)
start_tm() {
  local id=$1 url=${2:-} port extra=()
  [[ -n $url ]] && extra+=(--database-url "$url")
  port=$(free_port) ISS=http://127.0.0.1:$port KIND=tm OFFLINE_CLIENT=$CLIENT
  tm_config "$tmp/cfg-$id" "$ISS"
  taskset -c "$SCPU" "$bin" --config "$tmp/cfg-$id" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$(free_port)" \
    --issuer "$ISS" --data-dir "$tmp/data-$id" --secrets-dir "$tmp/secrets" "${extra[@]}" >"$tmp/$id.log" 2>&1 &
  pids+=($!) SPIDS=($!)
  wait_ready "$ISS/readyz" "$!" "$tmp/$id.log"
  log "$id: token server up on $ISS (CPU $SCPU)${url:+, PostgreSQL ${url##*/}}"
}
# start_peer: oidc-provider (bench/peer/signin.mjs) on CPU $SCPU
start_peer() {
  local port
  port=$(free_port) ISS=http://127.0.0.1:$port KIND=peer OFFLINE_CLIENT=$CLIENT-offline
  NODE_ENV=${PEER_NODE_ENV:-production} PEER_USER_PASSWORD=$PASSWORD taskset -c "$SCPU" \
    node "$here/peer/signin.mjs" "$port" >"$tmp/peer.log" 2>&1 &
  pids+=($!) SPIDS=($!)
  wait_ready "$ISS/.well-known/openid-configuration" "$!" "$tmp/peer.log"
  log "peer: oidc-provider $peer_ver up on $ISS (CPU $SCPU)"
}
stop_server() {
  local p
  for p in "${SPIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

bapp() { GOMAXPROCS=1 taskset -c "$CCPU" "$BENCHAPP" "$@"; }
# flags_for scope [client]: benchapp's flags for the running server's authorization request, in FLAGS
flags_for() {
  FLAGS=(-issuer "$ISS" -client "${2:-$CLIENT}" -redirect "$REDIRECT" -scope "$1" -c "$CONNS")
  [[ $KIND == peer ]] && FLAGS+=(-param "resource=$PEER_RESOURCE")
  return 0
}
# sign_in: one sign-in through the server's login form (benchapp login checks
# the tokens of that flow); the session's cookies in $tmp/$KIND.cookie
sign_in() {
  flags_for "$SCOPE"
  bapp login "${FLAGS[@]}" -user "$USER_NAME" -password "$PASSWORD" -out "$tmp/$KIND.cookie" 2>"$tmp/login.err" \
    || die "sign-in through the login form failed on $ISS: $(tail -n 3 "$tmp/login.err")"
  log "$(tail -n 1 "$tmp/login.err")"
}
# issued grant-type: the token server's count of access tokens it issued for that grant
issued() {
  curl -s "$ISS/metrics" | awk -v g="grant_type=\"$1\"" '/^tokenmesh_tokens_issued_total\{/ && index($0, g) { n += $NF } END { printf "%d", n }'
}

# --- measuring ----------------------------------------------------------------
server_ticks() { echo $(( $(ticks_of "${SPIDS[@]}") + $(pg_ticks) )); }
# measure key command...: the load (stdout to $tmp/load.out); the share of a
# core the server (with PostgreSQL) and benchapp used, and the other load.
measure() {
  local key=$1; shift
  local b0 s0 t0 b1 s1 t1 client wall
  b0=$(busy_ticks) s0=$(server_ticks) t0=$(date +%s%N)
  { TIMEFORMAT='%3U %3S'; time "$@" >"$tmp/load.out"; } 2>"$tmp/load.time" \
    || die "$key: benchapp failed: $(tail -n 5 "$tmp/load.time")"
  b1=$(busy_ticks) s1=$(server_ticks) t1=$(date +%s%N)
  client=$(awk 'END { print $1 + $2 }' "$tmp/load.time")
  wall=$(( (t1 - t0) / 1000000 ))
  SFRAC[$key]=$(awk -v t=$(( s1 - s0 )) -v hz="$HZ" -v ms="$wall" 'BEGIN { printf "%.4f", t / hz * 1000 / ms }')
  CFRAC[$key]=$(awk -v c="$client" -v ms="$wall" 'BEGIN { printf "%.4f", c * 1000 / ms }')
  OTHER[$key]=$(awk -v b=$(( b1 - b0 - (s1 - s0) )) -v hz="$HZ" -v c="$client" -v ms="$wall" \
    'BEGIN { o = (b / hz - c) * 1000 / ms; printf "%.2f", o < 0 ? 0 : o }')
  awk -v o="${OTHER[$key]}" 'BEGIN { exit !(o > 0.10) }' \
    && NOTES+=("$key: other processes used $(pct "${OTHER[$key]}") of a core during the case: figures disturbed")
  awk -v c="${CFRAC[$key]}" 'BEGIN { exit !(c > 0.8) }' \
    && NOTES+=("$key: benchapp used $(pct "${CFRAC[$key]}") of its core: the load generator may have been the limit")
  return 0
}

# result key file: benchapp's BENCH_RESULT line into the table; any failed
# flow or grant flags the case. Sets OK.
result() {
  local key=$1 res bad
  res=$(grep '^BENCH_RESULT' "$2") || { cat "$2" >&2; die "$key: no result from benchapp"; }
  field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p" <<<"$res"; }
  RPS[$key]=$(field rps) P50[$key]=$(field p50_us) P99[$key]=$(field p99_us)
  AP50[$key]=$(field authorize_p50_us) AP99[$key]=$(field authorize_p99_us)
  TP50[$key]=$(field token_p50_us) TP99[$key]=$(field token_p99_us)
  OK=$(field ok) bad=$(field bad) ERR[$key]=$bad
  if (( bad > 0 || OK == 0 )); then
    flag "$key" "$bad" "$OK ok, $bad failed; first: $(sed -n 's/^BENCH_FIRST_BAD //p' "$2")"
  fi
  [[ $(field exhausted) == 1 ]] && NOTES+=("$key: the pool ran out after $(field elapsed_s) s of $DURATION; the rate counts the time it lasted")
  return 0
}

# count_check key grant-type before after: the token server's own count
# against benchapp's successes; up to $CONNS operations in flight when
# benchapp stopped may have been served and counted too.
count_check() {
  local key=$1 n=$(( $4 - $3 ))
  if (( n < OK || n > OK + CONNS )); then
    flag "$key" "count" "the token server counted $n access tokens of grant type $2, benchapp $OK successes (up to $CONNS more in flight)"
  fi
}

# quiet key: wait for a quiet machine, note when it did not come
quiet() {
  wait_quiet "$1"
  [[ -z $QUIET_NOTE ]] || NOTES+=("$1: $QUIET_NOTE")
}

# run_flows key: code flows on the running server
run_flows() {
  local key=$1 c0=0
  quiet "$key"
  flags_for "$SCOPE"
  log "$key: warm-up $WARMUP, then $DURATION, $CONNS connections (benchapp flows)"
  bapp flows "${FLAGS[@]}" -cookies "$tmp/$KIND.cookie" -d "$WARMUP" >"$tmp/warm.out"
  [[ $KIND == tm ]] && c0=$(issued authorization_code)
  measure "$key" bapp flows "${FLAGS[@]}" -cookies "$tmp/$KIND.cookie" -d "$DURATION"
  result "$key" "$tmp/load.out"
  if [[ $KIND == tm ]]; then sleep 0.3; count_check "$key" authorization_code "$c0" "$(issued authorization_code)"; fi
  log "$key: ${RPS[$key]} flows/s, p50 ${P50[$key]} µs, p99 ${P99[$key]} µs; server $(pct "${SFRAC[$key]}"), benchapp $(pct "${CFRAC[$key]}"), other $(pct "${OTHER[$key]}")"
}

# mint n file: n refresh tokens, each from a code flow of its own
mint() {
  flags_for "$MINT_SCOPE" "$OFFLINE_CLIENT"
  log "$KIND: minting $1 refresh tokens (a code flow each, client $OFFLINE_CLIENT)"
  bapp flows "${FLAGS[@]}" -cookies "$tmp/$KIND.cookie" -mint "$1" -out "$2" 2>"$tmp/mint.err" \
    || die "minting refresh tokens failed: $(tail -n 3 "$tmp/mint.err")"
}

# run_refresh key: refresh_token grants, each token of the pool used once
run_refresh() {
  local key=$1 rate n c0=0
  mint "$REFRESH_WARM" "$tmp/warm.tok"
  log "$key: warm-up on $REFRESH_WARM refresh tokens (at most $WARMUP)"
  bapp refresh -issuer "$ISS" -client "$OFFLINE_CLIENT" -pool "$tmp/warm.tok" -c "$CONNS" -d "$WARMUP" >"$tmp/warm.out"
  rate=$(sed -nE 's/.* rps=([0-9]+).*/\1/p' "$tmp/warm.out")
  grep -q ' bad=0 ' "$tmp/warm.out" || die "$key: the warm-up's refresh grants failed: $(grep BENCH_ "$tmp/warm.out")"
  # 1.5 times what $DURATION needs at the warm-up's rate
  n=$(( rate * $(dur_s "$DURATION") * 3 / 2 + 1000 ))
  (( n <= REFRESH_MAX )) || n=$REFRESH_MAX
  mint "$n" "$tmp/pool.tok"
  quiet "$key"
  [[ $KIND == tm ]] && c0=$(issued refresh_token)
  log "$key: $DURATION on $n refresh tokens, $CONNS connections (benchapp refresh)"
  measure "$key" bapp refresh -issuer "$ISS" -client "$OFFLINE_CLIENT" -pool "$tmp/pool.tok" -c "$CONNS" -d "$DURATION"
  result "$key" "$tmp/load.out"
  if [[ $KIND == tm ]]; then sleep 0.3; count_check "$key" refresh_token "$c0" "$(issued refresh_token)"; fi
  log "$key: ${RPS[$key]} grants/s, p50 ${P50[$key]} µs, p99 ${P99[$key]} µs; server $(pct "${SFRAC[$key]}"), benchapp $(pct "${CFRAC[$key]}"), other $(pct "${OTHER[$key]}")"
}

# --- the cases ------------------------------------------------------------------
quiet start
if want flow || want refresh; then
  start_tm embedded
  sign_in
  want flow && run_flows flow
  want refresh && run_refresh refresh
  NOTES+=("embedded store: data dir $(du -sh "$tmp/data-embedded" | cut -f1) after its cases")
  stop_server
fi
if want_peer; then
  start_peer
  sign_in
  want flow-peer && run_flows flow-peer
  want refresh-peer && run_refresh refresh-peer
  stop_server
fi
if want_pg; then
  pg_start "$SCPU"
  psql "$TOKENMESH_TEST_DATABASE_URL" -qc 'create database tokenmesh_bench_signin' >/dev/null
  db=${TOKENMESH_TEST_DATABASE_URL%/*}/tokenmesh_bench_signin?sslmode=$PG_SSLMODE
  start_tm pg "$db"
  sign_in
  want flow-pg && run_flows flow-pg
  want refresh-pg && run_refresh refresh-pg
  NOTES+=("PostgreSQL: database $(psql "$db" -Atc 'select pg_size_pretty(pg_database_size(current_database()))') after its cases")
  stop_server
fi
[[ ${BENCH_NO_QUIET:-} == 1 ]] && NOTES+=("BENCH_NO_QUIET=1: no case waited for a quiet machine; figures not for the record")

# --- report -------------------------------------------------------------------
echo "### Sign-in: code flows and refresh grants ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "Machine: $(machine_line). The token server (and PostgreSQL, postmaster and backends) or the peer pinned to CPU $SCPU; \`bench/benchapp\` ($(go version | cut -d' ' -f3), GOMAXPROCS=1, $CONNS connections, one worker each in a closed loop) to CPU $CCPU; $WARMUP warm-up + $DURATION per case. Source $(source_line), token-server binary ${TOKEN_SERVER_BIN:-release build}$( [[ $peer_ver != - ]] && echo "; oidc-provider $peer_ver on node $(node -v)")${PG_VERSION:+; PostgreSQL $PG_VERSION ($PG_SETTINGS, sslmode=$PG_SSLMODE)}. Load average (1, 5, 15 min) at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| case | server | per second | p50 | p99 | authorize p50 / p99 | token p50 / p99 | server core | per server core | benchapp core | other load | errors |"
echo '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|'
for key in flow flow-peer flow-pg refresh refresh-peer refresh-pg; do
  [[ -n ${RPS[$key]:-} ]] || continue
  case $key in
    flow) what='code flow (SSO session)' server='tokenmesh, embedded store' ;;
    flow-peer) what='code flow (SSO session)' server="oidc-provider $peer_ver, in memory" ;;
    flow-pg) what='code flow (SSO session)' server='tokenmesh, PostgreSQL' ;;
    refresh) what='`refresh_token` grant' server='tokenmesh, embedded store' ;;
    refresh-peer) what='`refresh_token` grant' server="oidc-provider $peer_ver, in memory" ;;
    refresh-pg) what='`refresh_token` grant' server='tokenmesh, PostgreSQL' ;;
  esac
  legs=- tlegs=-
  [[ -n ${AP50[$key]} ]] && legs="$(ms "${AP50[$key]}") / $(ms "${AP99[$key]}")" tlegs="$(ms "${TP50[$key]}") / $(ms "${TP99[$key]}")"
  printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$what" "$server" "${RPS[$key]}" \
    "$(ms "${P50[$key]}")" "$(ms "${P99[$key]}")" "$legs" "$tlegs" "$(pct "${SFRAC[$key]}")" "$(per_core "$key")" \
    "$(pct "${CFRAC[$key]}")" "$(pct "${OTHER[$key]}")" "${ERR[$key]}"
done
echo
echo "A code flow: \`GET\` the authorization endpoint with the session cookie, a new PKCE pair (S256), \`state\` and \`nonce\` (\`scope=$SCOPE\`; the peer also \`resource=$PEER_RESOURCE\`), the code from the redirect, then \`POST\` the token endpoint with the code and the verifier: an ES256 JWT access token for \`orders\` and an ES256 ID token, no refresh token. Latency is the whole flow's; the authorize and token columns are its two requests. A refresh grant: \`grant_type=refresh_token\` of a token minted before, each used once (one code flow per token: with \`offline_access\` on tokenmesh; on oidc-provider by its client \`bench-web-offline\`, the same with the \`refresh_token\` grant, since it drops \`offline_access\` without \`prompt=consent\`): a new access token, ID token and (rotated) refresh token. Server core: utime+stime of the server process (with PostgreSQL's postmaster, its backends and reaped children) over the measured run; per server core = per second ÷ that share."
echo
# ratio_line label key base: key / base, raw and per server core
ratio_line() {
  [[ -n ${RPS[$2]:-} && -n ${RPS[$3]:-} ]] || return 0
  echo "$1: **$(ratio "${RPS[$2]}" "${RPS[$3]}")×**, per server core $(ratio "$(per_core "$2")" "$(per_core "$3")")×$( [[ ${ERR[$2]}${ERR[$3]} == 00 ]] || echo ' (⚠ not valid: errors)')."
  echo
}
ratio_line 'Code flows, tokenmesh (embedded store) / oidc-provider' flow flow-peer
ratio_line 'Refresh grants, tokenmesh (embedded store) / oidc-provider' refresh refresh-peer
ratio_line 'Code flows, PostgreSQL / embedded store' flow-pg flow
ratio_line 'Refresh grants, PostgreSQL / embedded store' refresh-pg refresh
if (( ${#NOTES[@]} )); then
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi
(( flagged == 0 )) || { log "some cases were flagged: see the notes"; exit 2; }
