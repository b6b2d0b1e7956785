#!/usr/bin/env bash
# tokenmesh token-issuance benchmark: wrk (HTTP/1.1) and h2load (gRPC) over
# loopback, server pinned to one core and the load generator to the other.
# Prints a markdown table on stdout (progress on stderr). See bench/README.md.
# Env knobs:
#   BENCH_DURATION=10s  BENCH_WARMUP=2s  BENCH_CONNECTIONS=32
#   BENCH_CASES="healthz opaque es256 eddsa exchange-http exchange-grpc introspect opaque-pg es256-pg introspect-pg bearer-tls dpop mtls bare peer"
#               (subset to run; the *-pg cases start a throwaway PostgreSQL; bearer-tls, dpop
#               and mtls run on HTTPS with --client-ca, under vegeta)
#   BENCH_POOL=10000 (opaque tokens minted for the introspection cases)
#   BENCH_SERVER_CPU=0  BENCH_CLIENT_CPU=1
#   TOKEN_SERVER_BIN=path (skip cargo build)   BENCH_SKIP_BUILD=1
#   PEER_NODE_ENV=production (the peer's NODE_ENV; "development" is its default mode)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNS=${BENCH_CONNECTIONS:-32}
TM_CASES="healthz opaque es256 eddsa exchange-http exchange-grpc introspect" # token-server, embedded store
PG_CASES="opaque-pg es256-pg introspect-pg"                                   # token-server replicas on PostgreSQL
POP_CASES="bearer-tls dpop mtls"                                              # proof of possession: HTTPS, vegeta
CASES=" ${BENCH_CASES:-$TM_CASES $PG_CASES $POP_CASES bare peer} "
POOL=${BENCH_POOL:-10000}
SCPU=${BENCH_SERVER_CPU:-0}
CCPU=${BENCH_CLIENT_CPU:-1}
SECRET=bench-client-secret-0123456789abcdef # >= 32 chars, shared by all clients
PEER_RESOURCE=urn:tokenmesh:bench:orders
PEER_OPAQUE_RESOURCE=urn:tokenmesh:bench:orders-opaque # the same, opaque (bench/peer/server.mjs)
TOKEN_BODY='grant_type=client_credentials&scope=orders:read'
SUBJECT_TTL=3600 # bench-es256's tokens: the exchange cases' subject token must outlive them
EXCHANGE_TTL=60  # the ExchangePolicy's ttl
ACTOR=bench-actor
# RFC 8693 request; the subject token (a JWT: [A-Za-z0-9_.-]) is appended as is.
EXCHANGE_BODY='grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&audience=payments&subject_token='
GRPC_PATH=/tokenmesh.v1.TokenService/Exchange

want() { [[ $CASES == *" $1 "* ]]; }
want_tm() { local c; for c in $TM_CASES $PG_CASES $POP_CASES; do want "$c" && return 0; done; return 1; }
want_embedded() { local c; for c in $TM_CASES; do want "$c" && return 0; done; return 1; }
want_pg() { local c; for c in $PG_CASES; do want "$c" && return 0; done; return 1; }
want_pop() { local c; for c in $POP_CASES; do want "$c" && return 0; done; return 1; }
want_exchange() { want exchange-http || want exchange-grpc; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenmesh-bench.XXXXXX")
pids=()
source "$here/lib.sh"

# --- prerequisites ----------------------------------------------------------
apt_install wrk wrk
want exchange-grpc && apt_install h2load nghttp2-client
if want exchange-grpc; then # grpcio, for one real gRPC call before the load
  command -v python3 >/dev/null || die "python3 is required for exchange-grpc"
  venv=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmesh/venv-bench}
  stamp=$( { cat "$here/requirements.txt"; python3 -VV; } | sha256sum | cut -d' ' -f1)
  if [[ ! -x $venv/bin/python || $(cat "$venv/.stamp" 2>/dev/null) != "$stamp" ]]; then
    log "creating $venv (pip install -r bench/requirements.txt)"
    rm -rf "$venv" && mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$stamp" >"$venv/.stamp"
  fi
fi
command -v taskset >/dev/null || die "taskset (util-linux) is required"
if want introspect || want introspect-pg || want dpop; then ensure_benchapp; fi # benchapp mint, benchapp dpop
if want_pop; then # vegeta: client certificates (wrk and h2load have none)
  ensure_vegeta
  command -v openssl >/dev/null || die "openssl is required for the TLS cases"
fi
want_pg && { command -v psql >/dev/null || die "psql is required for the PostgreSQL cases"; }
command -v curl >/dev/null || die "curl is required"
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs; server and wrk will share a core"

if want_tm; then
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
if want bare; then
  bare_bin=${CARGO_TARGET_DIR:-$root/target}/release/bare-signer
  [[ -n ${BENCH_SKIP_BUILD:-} ]] || (cd "$root" && cargo build --release -p bare-signer >&2)
  [[ -x $bare_bin ]] || die "no bare-signer binary at $bare_bin"
fi
if want peer; then
  command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required for the peer"
  if [[ ! -d $here/peer/node_modules/oidc-provider ]]; then
    log "npm install in bench/peer"
    (cd "$here/peer" && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) >&2
  fi
fi
busy=$(cpu_busy)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if (( busy > 10 )); then
  log "warning: CPUs already ${busy}% busy before the benchmark (a build running?); figures will be noisy"
fi


# --- one case ------------------------------------------------------------------
declare -A RPS P50 P99 ERR SCPU_PCT SFRAC CCPU_PCT
NOTES=()
(( busy <= 10 )) || NOTES+=("CPUs were ${busy}% busy before the run started: other load, figures not trustworthy")
flagged=0
flag() { ERR[$1]="**$2** ⚠" flagged=1; NOTES+=("$1: FLAGGED, $3"); }

# measure id command...: runs the measured load (its stdout to $tmp/load.out)
# and accounts CPU from /proc: the server's time (all threads of the processes
# in $spids, and PostgreSQL's backends when it runs) is the `server core`
# column, the load generator's user+sys the `client core`; all CPUs' busy time
# minus both is other load that disturbed the case.
server_ticks() { echo $(( $(ticks_of "${spids[@]}") + $(pg_ticks) )); }
measure() {
  local id=$1; shift
  local b0 s0 t0 b1 s1 t1 client_cpu hz wall server_pct other_pct
  b0=$(all_busy_ticks) s0=$(server_ticks) t0=$(date +%s%N)
  { TIMEFORMAT='%3U %3S'; time "$@" >"$tmp/load.out"; } 2>"$tmp/load.time" \
    || die "$id: load generator failed: $(tail -n 5 "$tmp/load.time")"
  b1=$(all_busy_ticks) s1=$(server_ticks) t1=$(date +%s%N)
  client_cpu=$(awk 'END { print $1 + $2 }' "$tmp/load.time")
  hz=$(getconf CLK_TCK) wall=$(( (t1 - t0) / 1000000 )) # ms
  server_pct=$(( (s1 - s0) * 100000 / hz / wall ))
  SFRAC[$id]=$(awk -v s=$(( s1 - s0 )) -v hz="$hz" -v ms="$wall" 'BEGIN { printf "%.4f", s / hz * 1000 / ms }')
  CCPU_PCT[$id]=$(awk -v c="$client_cpu" -v ms="$wall" 'BEGIN { printf "%d%%", c * 100000 / ms }')
  other_pct=$(awk -v b=$(( b1 - b0 )) -v s=$(( s1 - s0 )) -v hz="$hz" -v w="$client_cpu" -v ms="$wall" \
    'BEGIN { o = ((b - s) / hz - w) * 100000 / ms; printf "%d", o < 0 ? 0 : o }')
  SCPU_PCT[$id]=$server_pct%
  if (( other_pct > 10 )); then
    SCPU_PCT[$id]+=" ⚠" NOTES+=("$id: other processes used ${other_pct}% of a core during the case: figures disturbed")
  fi
  MEASURE_LOG="server ${server_pct}% of its core, client ${CCPU_PCT[$id]}, other load ${other_pct}% of a core"
}

# check_token id issuer expect audience headers-file body-file [ttl actor]: preflight content check
check_token() {
  local id=$1 line; shift
  command -v node >/dev/null || return 0
  while IFS= read -r line; do
    log "$id preflight $line"
    [[ $line == WARN:* ]] && NOTES+=("$id: ${line#WARN: }")
  done < <(node "$here/check-token.mjs" "$@")
  return 0
}

# token_count: tokenmesh_tokens_issued_total{grant_type="token_exchange",format="jwt"} now
exchange_count() {
  curl -s "$iss/metrics" | awk '/^tokenmesh_tokens_issued_total\{/ && /grant_type="token_exchange"/ && /format="jwt"/ { n = $NF }
    END { print n + 0 }'
}
# count_check id tool ok in-flight before after: the server's own count of
# exchanges against the load generator's successful responses. Requests still
# in flight when the load generator stopped may have been served (and
# counted) too, so the server may be up to <in-flight> ahead; beyond that, or
# behind, by more than 1% of ok flags the case.
count_check() {
  local id=$1 tool=$2 ok=$3 inflight=$4 issued=$(( $6 - $5 )) diff dev
  diff=$(awk -v a="$issued" -v b="$ok" 'BEGIN { if (b > 0) printf "%+.2f", 100 * (a - b) / b; else printf "n/a" }')
  dev=$(awk -v a="$issued" -v b="$ok" -v f="$inflight" \
    'BEGIN { d = a < b ? a - b : (a > b + f ? a - b - f : 0); if (b > 0) printf "%.2f", 100 * d / b; else printf "100" }')
  NOTES+=("$id: the server counted $issued exchanged tokens (tokens_issued_total{grant_type=\"token_exchange\",format=\"jwt\"} in /metrics), $tool $ok successful responses with up to $inflight more in flight when it stopped: $diff%, $dev% outside that allowance")
  if awk -v d="$dev" 'BEGIN { exit !(d > 1 || d < -1) }'; then
    flag "$id" "issued ≠ ok by ${dev}%" "the server's token count and the successful responses differ by more than 1% (${dev}% beyond the requests in flight)"
  fi
}

# run_case id url method body client_id expect(opaque|ES256|EdDSA|-) issuer audience [ttl actor]
run_case() {
  local id=$1 url=$2 method=$3 body=$4 client=$5 expect=$6 issuer=$7 aud=$8 ttl=${9:-300} actor=${10:-} auth="" out res
  [[ -n $client ]] && auth="Basic $(printf '%s:%s' "$client" "$SECRET" | base64 -w0)"
  if [[ $expect != - ]]; then # preflight: one request, status + content sanity
    local code
    code=$(curl -s -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' -u "$client:$SECRET" -d "$body" "$url")
    [[ $code == 200 ]] || NOTES+=("$id: preflight got HTTP $code: $(head -c 200 "$tmp/b")")
    [[ $code == 200 ]] && check_token "$id" "$issuer" "$expect" "$aud" "$tmp/h" "$tmp/b" "$ttl" $actor
  fi
  export BENCH_METHOD=$method BENCH_BODY=$body BENCH_AUTH=$auth
  log "$id: warm-up $WARMUP, then $DURATION with $CONNS connections (wrk)"
  taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"$WARMUP" --timeout 5s -s "$here/token.lua" "$url" >/dev/null
  local c0=0
  [[ -n $actor ]] && c0=$(exchange_count)
  measure "$id" taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s -s "$here/token.lua" "$url"
  wrk_result "$id"
  if [[ -n $actor ]]; then sleep 0.3; count_check "$id" wrk "$WRK_OK" "$CONNS" "$c0" "$(exchange_count)"; fi
}

# wrk_result id: reads wrk's BENCH_RESULT line from $tmp/load.out into the
# table, flags the case on any bad response; sets WRK_OK.
wrk_result() {
  local id=$1 out res rps p50 p99 ok non200 sockerr
  out=$(<"$tmp/load.out")
  res=$(grep '^BENCH_RESULT' <<<"$out") || { echo "$out" >&2; die "$id: no result from wrk"; }
  field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p" <<<"$res"; }
  rps=$(field rps) p50=$(field p50_us) p99=$(field p99_us)
  ok=$(field ok) non200=$(field non200) sockerr=$(field sockerr)
  RPS[$id]=$rps P50[$id]=$p50 P99[$id]=$p99 WRK_OK=$ok
  if (( non200 + sockerr == 0 && ok > 0 )); then ERR[$id]=0; else
    flag "$id" "${non200} non-200, ${sockerr} socket" \
      "${ok} ok / ${non200} non-200 / ${sockerr} socket errors; first bad: $(grep '^BENCH_FIRST_BAD' <<<"$out" | cut -c17- || true)"
  fi
  log "$id: $rps req/s, p50 ${p50}us, p99 ${p99}us, ok $ok, non-200 $non200, socket errors $sockerr; $MEASURE_LOG"
}

# mint_pool addr: $POOL opaque tokens of bench-opaque from the token server at
# addr, into $tmp/pool.tok (benchapp mint, on the client's core).
mint_pool() {
  log "minting $POOL opaque tokens on $1"
  taskset -c "$CCPU" "$BENCHAPP" mint -url "http://$1/oauth2/token" -client bench-opaque -secret "$SECRET" \
    -form "$TOKEN_BODY" -n "$POOL" -c 8 -out "$tmp/pool.tok"
}

# run_introspect id addr: RFC 7662 introspection of the pooled opaque tokens
# at addr (client bench-rs), cycling through the pool (bench/store.lua); a
# response counts only with 200 and "active":true. Preflight: the last pooled
# token is active there.
run_introspect() {
  local id=$1 addr=$2 got
  got=$(curl -s -u "bench-rs:$SECRET" -d "token=$(tail -n1 "$tmp/pool.tok")" "http://$addr/oauth2/introspect")
  [[ $got == *'"active":true'* ]] || NOTES+=("$id: preflight: a pooled token is not active on $addr: ${got:0:200}")
  export STORE_MODE=introspect STORE_ADDRS=$addr STORE_TOKENS=$tmp/pool.tok
  STORE_AUTH="Basic $(printf '%s:%s' bench-rs "$SECRET" | base64 -w0)"; export STORE_AUTH
  log "$id: warm-up $WARMUP, then $DURATION with $CONNS connections (wrk, $POOL tokens)"
  taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"$WARMUP" --timeout 5s -s "$here/store.lua" "http://$addr/oauth2/introspect" >/dev/null
  measure "$id" taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s -s "$here/store.lua" "http://$addr/oauth2/introspect"
  wrk_result "$id"
}

# start_server id port data-dir [flags...]: a token-server on CPU $SCPU with
# the bench configuration and issuer $iss; sets addr and adds its pid to $spids.
start_server() {
  local id=$1 port=$2 data=$3; shift 3
  addr=127.0.0.1:$port
  mkdir -p "$data"
  log "starting $id on $addr (CPU $SCPU)"
  taskset -c "$SCPU" "$bin" --config "$tmp/cfg" --http-addr "$addr" --issuer "$iss" \
    --data-dir "$data" --secrets-dir "$tmp/secrets" "$@" >"$tmp/$id.log" 2>&1 &
  pids+=($!) spids+=($!)
  wait_ready "http://$addr/readyz" "$!" "$tmp/$id.log"
}
stop_servers() {
  local p
  for p in "${spids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  spids=()
}

# run_grpc id target body-file: TokenService/Exchange over h2c with h2load,
# $CONNS connections with one stream each (the same 32 requests in flight on
# 32 connections as wrk). h2load calls a stream good on HTTP :status 200 even
# when grpc-status says otherwise, hence the real gRPC call before the load and
# the server's token count after it.
run_grpc() {
  local id=$1 target=$2 body=$3 auth code
  auth="Basic $(printf '%s:%s' "$ACTOR" "$SECRET" | base64 -w0)"
  if "$venv/bin/python" "$here/grpc-exchange.py" check "$target" "$auth" "$body" >"$tmp/gb" 2>"$tmp/ge"; then
    log "$id preflight gRPC call: $(head -c 160 "$tmp/gb")…"
    check_token "$id" "$iss" ES256 payments - "$tmp/gb" "$EXCHANGE_TTL" "$ACTOR"
  else
    RPS[$id]=0 P50[$id]=0 P99[$id]=0 SCPU_PCT[$id]=- CCPU_PCT[$id]=- SFRAC[$id]=0
    flag "$id" "preflight gRPC error, not run" "the one real gRPC call with the request body failed, so h2load was not run: $(head -c 300 "$tmp/ge")"
    return 0
  fi
  h2() {
    taskset -c "$CCPU" h2load -t1 -c"$CONNS" -m1 -d "$body" -H 'content-type: application/grpc' \
      -H 'te: trailers' -H "authorization: $auth" "$@" "http://$target$GRPC_PATH"
  }
  log "$id: warm-up $WARMUP, then $DURATION with $CONNS connections × 1 stream (h2load)"
  h2 -D "$WARMUP" >"$tmp/h2warm.out" || die "$id: h2load warm-up failed: $(tail -n 5 "$tmp/h2warm.out")"
  local c0 c1
  c0=$(exchange_count)
  rm -f "$tmp/h2.log"
  measure "$id" h2 -D "$DURATION" --log-file="$tmp/h2.log"
  sleep 0.3; c1=$(exchange_count)
  local out rps started done ok failed errored timeout s2xx sother logged p50 p99
  out=$(<"$tmp/load.out")
  rps=$(sed -nE 's/^finished in [0-9.]+[a-z]*, ([0-9.]+) req\/s.*/\1/p' <<<"$out")
  read -r started done ok failed errored timeout < <(sed -nE \
    's/^requests: [0-9]+ total, ([0-9]+) started, ([0-9]+) done, ([0-9]+) succeeded, ([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout.*/\1 \2 \3 \4 \5 \6/p' <<<"$out")
  # 2xx counts a stream at its response headers, so it includes those still in flight at the stop
  read -r s2xx sother < <(sed -nE 's/^status codes: ([0-9]+) 2xx, ([0-9]+) 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx.*/\1 \2+\3+\4/p' <<<"$out")
  [[ -n $rps && -n $ok && -n $s2xx ]] || { echo "$out" >&2; die "$id: cannot read h2load's summary"; }
  sother=$(( sother ))
  # Latency percentiles (nearest rank) from h2load's per-request log: column 3
  # is the time from the request's start to the end of its response, in µs.
  read -r logged p50 p99 < <(awk -F'\t' '$2 == 200 { print $3 }' "$tmp/h2.log" | sort -n |
    awk 'function rank(p,  r) { r = int(NR * p); if (r < NR * p) r++; return r < 1 ? 1 : r }
      { v[NR] = $1 } END { print NR, v[rank(0.50)] + 0, v[rank(0.99)] + 0 }')
  RPS[$id]=$rps P50[$id]=$p50 P99[$id]=$p99 ERR[$id]=0
  if (( failed + errored + timeout + sother > 0 || ok == 0 )); then
    flag "$id" "${failed} failed, ${errored} errored, ${timeout} timeout, ${sother} non-2xx" \
      "h2load: ${started} started, ${done} done, ${ok} succeeded, ${failed} failed, ${errored} errored, ${timeout} timeout; status ${s2xx} 2xx, ${sother} other"
  fi
  (( logged == ok )) || NOTES+=("$id: h2load's log holds $logged requests with status 200, its summary $ok succeeded")
  count_check "$id" h2load "$ok" $(( started - done )) "$c0" "$c1"
  log "$id: $rps req/s, p50 ${P50[$id]}us, p99 ${P99[$id]}us, ok $ok, failed $failed, errored $errored, timeout $timeout; server counted $(( c1 - c0 )) exchanges; $MEASURE_LOG"
}

# --- tokenmesh ------------------------------------------------------------------
if want_tm; then
  port=$(free_port); iss=http://127.0.0.1:$port
  mkdir -p "$tmp/cfg" "$tmp/data" "$tmp/secrets/bench"
  printf '%s' "$SECRET" >"$tmp/secrets/bench/client_secret"
  client() { # name, accessToken mapping[, grant types, audience]
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: %s}\nspec:\n  clientId: %s\n  grantTypes: [%s]\n  authentication: {method: client_secret_basic, secretRef: {name: bench, key: client_secret}}\n  scopes: ["orders:read"]\n  audiences: [%s]\n  accessToken: %s\n' \
      "$1" "$1" "${3:-client_credentials}" "${4:-orders}" "$2"
  }
  {
    printf 'apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {issuer: "%s", signing: {algorithm: ES256}}\n' "$iss"
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-read}\nspec: {name: "orders:read"}\n'
    client bench-es256 "{format: jwt, ttl: ${SUBJECT_TTL}s}"
    client bench-eddsa '{format: jwt, algorithm: EdDSA, ttl: 300s}'
    client bench-opaque '{format: opaque, ttl: 300s}'
    # the resource server that introspects them
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: bench-rs}\nspec:\n  clientId: bench-rs\n  grantTypes: [client_credentials]\n  authentication: {method: client_secret_basic, secretRef: {name: bench, key: client_secret}}\n  scopes: ["orders:read"]\n  audiences: [orders]\n  allowIntrospection: true\n'
    # token exchange: bench-actor trades a bench-es256 token (aud orders) for one for payments
    client "$ACTOR" '{format: jwt, ttl: 300s}' 'client_credentials, "urn:ietf:params:oauth:grant-type:token-exchange"' payments
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: orders-to-payments}\nspec:\n  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [%s]}\n  to: {audience: payments, scopes: ["orders:read"]}\n  ttl: %ss\n' \
      "$ACTOR" "$EXCHANGE_TTL"
  } >"$tmp/cfg/bench.yaml"
fi
if want_embedded; then
  extra=() # the gRPC listener: a free port rather than its fixed default
  if "$bin" --help 2>/dev/null | grep -q -- --grpc-addr; then
    gport=$(free_port); extra=(--grpc-addr "127.0.0.1:$gport")
  elif want exchange-grpc; then
    die "$bin has no --grpc-addr: no gRPC API to benchmark (drop exchange-grpc from BENCH_CASES)"
  fi
  log "starting $bin on $iss (CPU $SCPU)"
  taskset -c "$SCPU" "$bin" --config "$tmp/cfg" --http-addr "127.0.0.1:$port" --issuer "$iss" \
    --data-dir "$tmp/data" --secrets-dir "$tmp/secrets" "${extra[@]}" >"$tmp/token-server.log" 2>&1 &
  pids+=($!) spids=($!)
  wait_ready "$iss/readyz" "$!" "$tmp/token-server.log"
  tok=$iss/oauth2/token
  want healthz && run_case healthz "$iss/healthz" GET "" "" - "$iss" -
  want opaque && run_case opaque "$tok" POST "$TOKEN_BODY" bench-opaque opaque "$iss" orders
  want es256 && run_case es256 "$tok" POST "$TOKEN_BODY" bench-es256 ES256 "$iss" orders "$SUBJECT_TTL"
  want eddsa && run_case eddsa "$tok" POST "$TOKEN_BODY" bench-eddsa EdDSA "$iss" orders
  if want_exchange; then
    # One subject token for both exchange cases: an ES256 JWT of bench-es256, aud orders.
    subject_json=$(curl -s -u "bench-es256:$SECRET" -d "$TOKEN_BODY" "$tok")
    subject=$(sed -nE 's/.*"access_token":"([A-Za-z0-9_.-]+)".*/\1/p' <<<"$subject_json")
    [[ -n $subject ]] || die "no subject token from bench-es256: $subject_json"
    life=$(sed -nE 's/.*"expires_in":([0-9]+).*/\1/p' <<<"$subject_json")
    need=$(( 2 * ($(dur_s "$WARMUP") + $(dur_s "$DURATION")) + 30 ))
    (( ${life:-0} >= need )) || die "the subject token lives ${life:-?} s, the exchange cases need about $need s: raise SUBJECT_TTL"
    want exchange-http && run_case exchange-http "$tok" POST "$EXCHANGE_BODY$subject" "$ACTOR" ES256 "$iss" payments "$EXCHANGE_TTL" "$ACTOR"
    if want exchange-grpc; then
      python3 "$here/grpc-exchange.py" encode "$subject" payments "$tmp/exchange.grpc"
      run_grpc exchange-grpc "127.0.0.1:$gport" "$tmp/exchange.grpc"
    fi
  fi
  NOTES+=("token-server data dir after its cases: $(du -sh "$tmp/data" | cut -f1) ($(cd "$tmp/data" && ls -s --block-size=M | tail -n +2 | awk '{ printf "%s%s %s", sep, $2, $1; sep = ", " }'))")
  loglines=$(wc -l <"$tmp/token-server.log")
  (( loglines < 100 )) || NOTES+=("token-server wrote $loglines log lines during the run")
  if want introspect; then
    # The first look at each token, which no cache answers: the same data,
    # the server restarted with the opaque-token cache off.
    mint_pool "127.0.0.1:$port"
    stop_servers
    start_server token-server-nocache "$(free_port)" "$tmp/data" --grpc-addr "127.0.0.1:$(free_port)" --opaque-token-cache 0
    run_introspect introspect "$addr"
  fi
  stop_servers
fi

# --- tokenmesh on PostgreSQL: two replicas on one database ---------------------
if want_pg; then
  pg_start "$SCPU" # PostgreSQL shares the server's core: one core for everything server-side
  psql "$TOKENMESH_TEST_DATABASE_URL" -qc "create database tokenmesh_bench" >/dev/null
  db="${TOKENMESH_TEST_DATABASE_URL%/*}/tokenmesh_bench?sslmode=disable"
  port=$(free_port); iss=http://127.0.0.1:$port # the replicas' issuer: the first one's address
  start_server replica-1 "$port" "$tmp/data-pg-1" --grpc-addr "127.0.0.1:$(free_port)" --database-url "$db"
  first=$addr first_pid=${spids[-1]}
  want opaque-pg && run_case opaque-pg "http://$first/oauth2/token" POST "$TOKEN_BODY" bench-opaque opaque "$iss" orders
  want es256-pg && run_case es256-pg "http://$first/oauth2/token" POST "$TOKEN_BODY" bench-es256 ES256 "$iss" orders "$SUBJECT_TTL"
  if want introspect-pg; then
    # Introspected on a replica that did not issue them, with its cache off:
    # every introspection reads the database.
    mint_pool "$first"
    start_server replica-2 "$(free_port)" "$tmp/data-pg-2" --grpc-addr "127.0.0.1:$(free_port)" --database-url "$db" --opaque-token-cache 0
    second=$addr
    spids=("${spids[-1]}") # the measured server: the second replica (and PostgreSQL)
    run_introspect introspect-pg "$second"
    spids+=("$first_pid")
  fi
  NOTES+=("PostgreSQL $PG_VERSION ($PG_SETTINGS), database $(psql "$db" -Atc 'select pg_size_pretty(pg_database_size(current_database()))') after its cases; the PostgreSQL rows' server core counts the replica and PostgreSQL's backends, all on CPU $SCPU")
  stop_servers
  pg_stop
fi

# --- proof of possession: bearer, DPoP and mTLS issuance over HTTPS (vegeta) ------
if want_pop; then
  source "$here/pop.sh"
  run_pop
fi

# --- reference: the bare signer (bench/bare-signer), ES256 and EdDSA -------------
if want bare; then
  for alg in ES256 EdDSA; do
    id=bare; [[ $alg == EdDSA ]] && id=bare-eddsa
    bport=$(free_port); biss=http://127.0.0.1:$bport
    log "starting bare-signer ($alg) on $biss (CPU $SCPU)"
    taskset -c "$SCPU" "$bare_bin" "127.0.0.1:$bport" "$biss" "$alg" >"$tmp/$id.log" 2>&1 &
    pids+=($!) spids=($!)
    wait_ready "$biss/healthz" "$!" "$tmp/$id.log"
    # The same request as (c), Basic header included; nothing checks it.
    run_case "$id" "$biss/oauth2/token" POST "$TOKEN_BODY" bench-es256 - "$biss" -
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
fi

# --- peer: oidc-provider ------------------------------------------------------
peer_ver=-
if want peer; then
  peer_ver=$(node -p "require('$here/peer/node_modules/oidc-provider/package.json').version")
  pport=$(free_port); piss=http://127.0.0.1:$pport
  log "starting oidc-provider $peer_ver on $piss (CPU $SCPU)"
  NODE_ENV=${PEER_NODE_ENV:-production} PEER_CLIENT_SECRET=$SECRET taskset -c "$SCPU" node "$here/peer/server.mjs" "$pport" >"$tmp/peer.log" 2>&1 &
  pids+=($!) spids=($!)
  wait_ready "$piss/healthz" "$!" "$tmp/peer.log"
  run_case peer_healthz "$piss/healthz" GET "" "" - "$piss" -
  run_case peer "$piss/token" POST "$TOKEN_BODY&resource=$PEER_RESOURCE" bench-es256 ES256 "$piss" orders
  run_case peer-opaque "$piss/token" POST "$TOKEN_BODY&resource=$PEER_OPAQUE_RESOURCE" bench-es256 opaque "$piss" orders
fi

# --- report -------------------------------------------------------------------
ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }
ratio() { [[ -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }' || echo -; }
row() { # id label ceiling-id
  [[ -n ${RPS[$1]:-} ]] || return 0
  printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$2" "${RPS[$1]}" "$(ms "${P50[$1]}")" "$(ms "${P99[$1]}")" \
    "$(ratio "${RPS[$1]}" "${RPS[$3]:-}")" "${SCPU_PCT[$1]}" "${CCPU_PCT[$1]}" "${ERR[$1]}"
}
valid() { local i; for i; do [[ ${ERR[$i]:-x} == 0 ]] || return 1; done; }
goal() { # value lo hi: "met" when lo <= value <= hi
  awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN { if (v != "-" && v >= lo && v <= hi) print "met"; else print "**NOT met**" }'
}
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
echo "### Token issuance and exchange, loopback HTTP and gRPC ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
h2v=; [[ -n ${RPS[exchange-grpc]:-} ]] && h2v=", $(h2load --version | head -n1) (1 thread, $CONNS connections × 1 stream)"
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r). Server pinned to CPU $SCPU, wrk (1 thread, $CONNS connections) or h2load to CPU $CCPU; $WARMUP warm-up + $DURATION per case. $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)$h2v$(command -v node >/dev/null && echo ", node $(node -v)")$( [[ $peer_ver != - ]] && echo ", oidc-provider $peer_ver"). Source $(source_line), $( [[ -n ${TOKEN_SERVER_BIN:-} ]] && echo "token-server binary $TOKEN_SERVER_BIN" || echo "release build"). Load average (1, 5, 15 min) at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
echo
if want_embedded || want_pg || want bare || want peer; then
echo '| case | req/s | p50 | p99 | ratio to (a) | server core | client core | errors |'
echo '|---|---:|---:|---:|---:|---:|---:|---|'
fi
row healthz '(a) tokenmesh `GET /healthz` (ceiling)' healthz
row opaque '(b) tokenmesh opaque token (embedded store)' healthz
row es256 '(c) tokenmesh JWT ES256' healthz
row eddsa '(d) tokenmesh JWT EdDSA' healthz
row bare '(c0) reference: bare signer (parse the form, sign one ES256 JWT; bench/bare-signer)' healthz
row bare-eddsa '(d0) reference: the same bare signer signing one EdDSA JWT' healthz
row peer "(e) oidc-provider ${peer_ver} JWT ES256 (1 Node process)" healthz
row peer_healthz '(e0) oidc-provider process `GET /healthz` (Node ceiling)' healthz
row exchange-http '(f) tokenmesh token exchange (RFC 8693) → JWT ES256, HTTP `POST /oauth2/token` (wrk)' healthz
row exchange-grpc '(g) tokenmesh token exchange → JWT ES256, gRPC `TokenService/Exchange` over h2c (h2load)' healthz
row introspect "(h) tokenmesh introspection of opaque tokens, embedded store, cache off (\`--opaque-token-cache 0\`, $POOL tokens)" healthz
row opaque-pg '(b1) tokenmesh opaque token, PostgreSQL (replica and PostgreSQL on one core)' healthz
row es256-pg '(c1) tokenmesh JWT ES256, the same PostgreSQL replica' healthz
row introspect-pg '(h1) tokenmesh introspection of opaque tokens on a second PostgreSQL replica that did not issue them, cache off' healthz
row peer-opaque "(e1) oidc-provider ${peer_ver} opaque token (its in-memory adapter)" healthz
echo
# per_core id: requests per second of server CPU time (req/s ÷ server-core fraction)
per_core() { awk -v r="${RPS[$1]}" -v f="${SFRAC[$1]:-0}" 'BEGIN { if (f > 0) printf "%.0f", r / f; else printf "0" }'; }
if want_pop; then pop_report; echo; fi
# goal_line label num den lo hi: "label (num)/(den): **r×** (goal: met)", valid only when both
# cases had no errors; then the same per server core (what one CPU-second of the server does,
# whatever share of its core other processes left it)
goal_line() {
  [[ -n ${RPS[$2]:-} && -n ${RPS[$3]:-} ]] || return 0
  local r c; r=$(ratio "${RPS[$2]}" "${RPS[$3]}") c=$(ratio "$(per_core "$2")" "$(per_core "$3")")
  echo -n "$1: **${r}×** requests/s (goal $( [[ $5 == 1e9 ]] && echo "≥ $4" || echo "$4–$5"): $(goal "$r" "$4" "$5")); per server core $(per_core "$2") / $(per_core "$3") = ${c}× ($(goal "$c" "$4" "$5"))"
  valid "$2" "$3" && echo . || echo "; ⚠ NOT VALID: a case had errors."
}
# p99_line label id ref: the p99 of id against the reference's (goal ≤ 2×)
p99_line() {
  [[ -n ${P99[$2]:-} && -n ${P99[$3]:-} ]] || return 0
  local r; r=$(ratio "${P99[$2]}" "${P99[$3]}")
  echo "$1: $(ms "${P99[$2]}") / $(ms "${P99[$3]}") = **${r}×** (goal ≤ 2: $(goal "$r" 0 2))."
}
goal_line 'Opaque / ES256 JWT issuance, embedded store (b)/(c)' opaque es256 0.8 1e9
p99_line 'Opaque / ES256 JWT p99, embedded store (b)/(c)' opaque es256
goal_line 'Opaque / ES256 JWT issuance, PostgreSQL (b1)/(c1)' opaque-pg es256-pg 0.6 1e9
p99_line 'Opaque / ES256 JWT p99, PostgreSQL (b1)/(c1)' opaque-pg es256-pg
goal_line 'Introspection without a cache hit, PostgreSQL replica that did not issue / embedded (h1)/(h)' introspect-pg introspect 0.7 1e9
goal_line 'tokenmesh ES256 / bare ES256 signer (c)/(c0)' es256 bare 0.9 1e9
goal_line 'tokenmesh EdDSA / bare EdDSA signer (d)/(d0)' eddsa bare-eddsa 0.9 1e9
if [[ -n ${RPS[opaque]:-} && -n ${RPS[peer-opaque]:-} ]]; then
  echo "Opaque tokenmesh (embedded store) / opaque oidc-provider (b)/(e1): **$(ratio "${RPS[opaque]}" "${RPS[peer-opaque]}")×**$( [[ -n ${RPS[opaque-pg]:-} ]] && echo "; on PostgreSQL (b1)/(e1): $(ratio "${RPS[opaque-pg]}" "${RPS[peer-opaque]}")×") requests/s (oidc-provider keeps them in process memory, lost on a restart)."
fi
if [[ -n ${RPS[es256]:-} && -n ${RPS[peer]:-} ]]; then
  echo -n "ES256 tokenmesh / ES256 oidc-provider: **$(ratio "${RPS[es256]}" "${RPS[peer]}")×** requests/s"
  [[ ${ERR[es256]}${ERR[peer]} == 00 ]] && echo . || echo " (⚠ NOT VALID: a case had errors)."
fi
if [[ -n ${RPS[bare]:-} && -n ${RPS[peer]:-} ]]; then
  echo "Bare signer / ES256 oidc-provider: $(ratio "${RPS[bare]}" "${RPS[peer]}")× requests/s; tokenmesh ES256 / bare signer: $(ratio "${RPS[es256]:-0}" "${RPS[bare]}")."
fi
if [[ -n ${RPS[bare-eddsa]:-} && -n ${RPS[peer]:-} ]]; then
  echo "Bare EdDSA signer / ES256 oidc-provider: $(ratio "${RPS[bare-eddsa]}" "${RPS[peer]}")×; bare EdDSA signer / ceiling (a): $(ratio "${RPS[bare-eddsa]}" "${RPS[healthz]:-0}"); tokenmesh EdDSA / bare EdDSA signer: $(ratio "${RPS[eddsa]:-0}" "${RPS[bare-eddsa]}"); tokenmesh EdDSA / ES256 oidc-provider: $(ratio "${RPS[eddsa]:-0}" "${RPS[peer]}")×."
fi
if [[ -n ${RPS[peer]:-} && -n ${RPS[peer_healthz]:-} ]]; then
  echo "oidc-provider ES256 / its own Node \`/healthz\`: $(ratio "${RPS[peer]}" "${RPS[peer_healthz]}")."
fi
if [[ -n ${RPS[exchange-grpc]:-} && -n ${RPS[es256]:-} ]]; then
  r=$(ratio "${RPS[exchange-grpc]}" "${RPS[es256]}")
  echo -n "gRPC exchange / ES256 \`client_credentials\` (g)/(c): **${r}×** requests/s (goal ≥ 0.35: $(goal "$r" 0.35 1e9))"
  valid exchange-grpc es256 && echo . || echo "; ⚠ NOT VALID: a case had errors."
fi
if [[ -n ${RPS[exchange-grpc]:-} && -n ${RPS[exchange-http]:-} ]]; then
  g=$(awk -v r="${RPS[exchange-grpc]}" -v f="${SFRAC[exchange-grpc]}" 'BEGIN { if (f > 0) printf "%.0f", r / f; else printf "0" }')
  h=$(awk -v r="${RPS[exchange-http]}" -v f="${SFRAC[exchange-http]}" 'BEGIN { if (f > 0) printf "%.0f", r / f; else printf "0" }')
  r=$(ratio "$g" "$h")
  echo -n "Exchange per server core, gRPC / HTTP (g)/(f): (${RPS[exchange-grpc]} ÷ ${SFRAC[exchange-grpc]}) / (${RPS[exchange-http]} ÷ ${SFRAC[exchange-http]}) = $g / $h req/s per core = **${r}×** (goal 0.90–1.10: $(goal "$r" 0.90 1.10))"
  valid exchange-grpc exchange-http && echo . || echo "; ⚠ NOT VALID: a case had errors."
fi
if (( ${#NOTES[@]} )); then
  echo
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi
(( flagged == 0 )) || { log "some cases returned errors: see the table"; exit 2; }
