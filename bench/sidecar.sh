#!/usr/bin/env bash
# tokenmesh sidecar benchmark: latency the sidecar adds per hop (inbound and
# outbound, cache hit and cache miss) against a direct call to the same
# application in the same run, next to what a bare hyper proxy adds
# (bench/bare-proxy: the floor of any proxy built on the same stack), at one connection (closed loop) and at a fixed
# rate (open loop, vegeta); requests/s through one sidecar (wrk); CPU per
# 1,000 req/s and resident memory. Markdown on stdout, progress on stderr.
# See bench/README.md ("Sidecar").
# Env knobs:
#   BENCH_DURATION=10s  BENCH_RATE=1000  BENCH_RATE_DURATION=20s  BENCH_WARMUP=2s
#   BENCH_MISS_REQUESTS=20000 (closed-loop miss cases)  BENCH_CONNECTIONS=32 (max)
#   BENCH_MODES="c1 rate max"   BENCH_SERVER_CPU=0  BENCH_CLIENT_CPU=1
#   BENCH_CASES="bare in-hit out-hit out-dpop-hit in-dpop-hit in-miss out-miss" (the paths; direct
#     and direct2, the reference of the added columns, always run)
#   BENCH_QUIET_SECS=30 BENCH_QUIET_LOAD=0.5 BENCH_QUIET_MAX=3600 (BENCH_NO_QUIET=1: don't wait)
#   BENCH_RETRIES=2 (measure a case disturbed by other load again)
#   TOKEN_SERVER_BIN / SIDECAR_BIN / BARE_PROXY_BIN (skip cargo)  BENCH_SKIP_BUILD=1
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
RATE=${BENCH_RATE:-1000}
RATE_DURATION=${BENCH_RATE_DURATION:-20s}
WARMUP=${BENCH_WARMUP:-2s}
MISS_N=${BENCH_MISS_REQUESTS:-20000}
WARM_N=1000 # distinct tokens for a miss case's warm-up
RETRIES=${BENCH_RETRIES:-2} # a case disturbed by other load (> 10% of a core) is measured again, up to this often
CONNS=${BENCH_CONNECTIONS:-32}
MODES=" ${BENCH_MODES:-c1 rate max} "
CASES=" ${BENCH_CASES:-bare in-hit out-hit out-dpop-hit in-dpop-hit in-miss out-miss} direct direct2 "
want() { [[ $CASES == *" $1 "* ]]; }
SCPU=${BENCH_SERVER_CPU:-0} # the sidecar and the application: the "pod"
CCPU=${BENCH_CLIENT_CPU:-1} # the load generator and the token server
SECRET=bench-sidecar-secret-0123456789abcdef
SUBJECT_TTL=86400 # a whole run, quiet waits included, stays within it (the server's max ttl)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenmesh-sidecar-bench.XXXXXX")
pids=()
source "$here/lib.sh"

# --- prerequisites ----------------------------------------------------------
apt_install wrk wrk
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v curl >/dev/null || die "curl is required"
command -v python3 >/dev/null || die "python3 is required (JSON and JWT decoding)"
ensure_vegeta
ensure_benchapp
ts_bin=${TOKEN_SERVER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/token-server}
sc_bin=${SIDECAR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/tokenmesh-sidecar}
bare_bin=${BARE_PROXY_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/bare-proxy}
if [[ -z ${TOKEN_SERVER_BIN:-}${SIDECAR_BIN:-}${BARE_PROXY_BIN:-}${BENCH_SKIP_BUILD:-} ]]; then
  release_build -p token-server -p tokenmesh-sidecar -p bare-proxy
fi
[[ -x $ts_bin ]] || die "no token-server binary at $ts_bin"
[[ -x $sc_bin ]] || die "no tokenmesh-sidecar binary at $sc_bin"
! want bare || [[ -x $bare_bin ]] || die "no bare-proxy binary at $bare_bin"
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs; everything shares one core"

wait_quiet start # before anything is started or minted

# --- the mesh: token server, application, sidecar ------------------------------
port=$(free_port); grpc=$(free_port); iss=http://127.0.0.1:$port
mkdir -p "$tmp/cfg" "$tmp/data" "$tmp/secrets/bench"
printf '%s' "$SECRET" >"$tmp/secrets/bench/client_secret"
client() { # name, audiences, grant types, ttl
  printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: %s}\nspec:\n  clientId: %s\n  grantTypes: [%s]\n  authentication: {method: client_secret_basic, secretRef: {name: bench, key: client_secret}}\n  scopes: ["orders:read"]\n  audiences: [%s]\n  accessToken: {format: jwt, ttl: %ss}\n' \
    "$1" "$1" "$3" "$2" "$4"
}
{
  printf 'apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {issuer: "%s", signing: {algorithm: ES256}}\n' "$iss"
  printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-read}\nspec: {name: "orders:read"}\n'
  # the caller: its tokens (aud orders) are what the application receives and propagates
  client frontend orders client_credentials "$SUBJECT_TTL"
  # the workload behind the sidecar: accepts aud orders, calls payments.local
  client orders-svc payments 'client_credentials, "urn:ietf:params:oauth:grant-type:token-exchange"' 300
  printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: orders-to-payments}\nspec:\n  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders-svc]}\n  to: {audience: payments, scopes: ["orders:read"], hosts: [payments.local]}\n  ttl: %ss\n' "$SUBJECT_TTL"
  # the same hop needing DPoP: the sidecar binds the token to its key and signs a proof per call
  printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: orders-to-payments-dpop}\nspec:\n  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders-svc]}\n  to: {audience: payments, scopes: ["orders:read"], hosts: [payments-dpop.local], binding: dpop}\n  ttl: %ss\n' "$SUBJECT_TTL"
} >"$tmp/cfg/bench.yaml"

log "starting token-server on $iss, gRPC 127.0.0.1:$grpc (CPU $CCPU)"
taskset -c "$CCPU" "$ts_bin" --config "$tmp/cfg" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$grpc" \
  --issuer "$iss" --data-dir "$tmp/data" --secrets-dir "$tmp/secrets" >"$tmp/token-server.log" 2>&1 &
pids+=($!) ts_pid=$!
wait_ready "$iss/readyz" "$ts_pid" "$tmp/token-server.log"

app_port=$(free_port); app=127.0.0.1:$app_port
log "starting the application (benchapp serve, GOMAXPROCS=1) on $app (CPU $SCPU)"
GOMAXPROCS=1 taskset -c "$SCPU" "$BENCHAPP" serve "$app" >"$tmp/app.log" 2>&1 &
pids+=($!) app_pid=$!
wait_ready "http://$app/" "$app_pid" "$tmp/app.log"

in_port=$(free_port); out_port=$(free_port); admin_port=$(free_port)
inbound=127.0.0.1:$in_port outbound=127.0.0.1:$out_port admin=127.0.0.1:$admin_port
log "starting tokenmesh-sidecar: inbound $inbound, outbound $outbound, admin $admin (CPU $SCPU)"
taskset -c "$SCPU" "$sc_bin" --token-server "http://127.0.0.1:$grpc" --client-id orders-svc \
  --client-secret-file "$tmp/secrets/bench/client_secret" --audience orders \
  --inbound-addr "$inbound" --app-addr "$app" --outbound-addr "$outbound" --admin-addr "$admin" \
  --resolve "payments.local=$app" --resolve "payments-dpop.local=$app" >"$tmp/sidecar.log" 2>&1 &
pids+=($!) sc_pid=$!
wait_ready "http://$admin/readyz" "$sc_pid" "$tmp/sidecar.log"
bare=127.0.0.1:$(free_port) bare_pid=
if want bare; then
  log "starting the reference bare-proxy on $bare -> $app (CPU $SCPU)"
  taskset -c "$SCPU" "$bare_bin" "$bare" "$app" >"$tmp/bare.log" 2>&1 &
  pids+=($!) bare_pid=$!
  wait_ready "http://$bare/" "$bare_pid" "$tmp/bare.log"
fi
sleep 3
RSS_IDLE=$(vm_kib "$sc_pid" VmRSS)
log "sidecar idle: VmRSS $(mib "$RSS_IDLE") MiB, $(awk '/^Threads/ { print $2 }' "/proc/$sc_pid/status") threads"

# --- tokens ---------------------------------------------------------------------
mint() { # n outfile
  taskset -c "$CCPU" "$BENCHAPP" mint -url "$iss/oauth2/token" -client frontend -secret "$SECRET" \
    -form 'grant_type=client_credentials&scope=orders:read' -n "$1" -c 8 -out "$2"
}
log "minting the hit token (frontend, aud orders, ${SUBJECT_TTL} s)"
mint 1 "$tmp/hit.tok"
HIT=$(<"$tmp/hit.tok")

claims() { # JWT -> its payload as JSON
  python3 -c 'import sys, json, base64; p = sys.argv[1].split(".")[1]; print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))))' "$1"
}
NOTES=()
flagged=0
# preflight: the paths do what the benchmark assumes
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$app/")
[[ $code == 200 ]] || die "direct call to the application: HTTP $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$inbound/")
[[ $code == 401 ]] || die "inbound without a token should be 401, got $code"
got=$(curl -s -H "Authorization: Bearer $HIT" "http://$inbound/echo")
[[ $got == "Bearer $HIT" ]] || die "inbound: the application did not receive the caller's JWT: ${got:0:120}"
got=$(curl -s -H "Authorization: Bearer $HIT" -H 'Host: payments.local' "http://$outbound/echo")
ex=${got#Bearer }
[[ $ex != "$got" && $ex != "$HIT" && $ex == *.*.* ]] || die "outbound: no exchanged token reached payments.local: ${got:0:160}"
exc=$(claims "$ex")
python3 -c 'import sys, json; c = json.loads(sys.argv[1]); a = c["aud"]; a = a if isinstance(a, list) else [a]
assert "payments" in a, c; assert c.get("act", {}).get("sub") == "orders-svc", c' "$exc" \
  || die "outbound: the exchanged token is not for payments with act orders-svc: $exc"
got=$(curl -s -H "Authorization: Bearer $HIT" -H 'Host: payments-dpop.local' "http://$outbound/echo")
[[ $got == DPoP\ *.*.* ]] || die "outbound DPoP: no DPoP-bound token reached payments-dpop.local: ${got:0:160}"
python3 -c 'import sys, json; assert json.loads(sys.argv[1]).get("cnf", {}).get("jkt"), sys.argv[1]' "$(claims "${got#DPoP }")" \
  || die "outbound DPoP: the token carries no cnf.jkt"
# inbound DPoP: a DPoP-bound frontend token with a proof of benchapp's key
# passes as the JWT; the same proof again is a replay
dpop_targets() { # n outfile [path]: n GETs of the inbound proxy, one fresh proof each
  taskset -c "$CCPU" "$BENCHAPP" dpop-resource -token-url "$iss/oauth2/token" -client frontend -secret "$SECRET" \
    -form 'grant_type=client_credentials&scope=orders:read' -url "http://$inbound${3:-/}" -n "$1" -out "$2"
}
dpop_targets 1 "$tmp/dpop-pre.t" /echo
dpop_curl() { # the curl arguments of the one target in $tmp/dpop-pre.t
  python3 -c 'import sys, json; t = json.load(open(sys.argv[1]))
for name, values in t["header"].items(): print("-H"); print(name + ": " + values[0])
print(t["url"])' "$tmp/dpop-pre.t"
}
mapfile -t dpop_args < <(dpop_curl)
got=$(curl -s "${dpop_args[@]}")
[[ $got == Bearer\ *.*.* ]] || die "inbound DPoP: the application did not receive the JWT: ${got:0:160}"
python3 -c 'import sys, json; assert json.loads(sys.argv[1]).get("cnf", {}).get("jkt"), sys.argv[1]' "$(claims "${got#Bearer }")" \
  || die "inbound DPoP: the token carries no cnf.jkt"
code=$(curl -s -o /dev/null -w '%{http_code}' "${dpop_args[@]}")
[[ $code == 401 ]] || die "inbound DPoP: a replayed proof should be 401, got $code"
log "preflight: inbound passes the JWT; inbound DPoP checks the proof (a replay is 401); outbound exchanges it (aud payments, act.sub orders-svc, exp in $(( $(python3 -c 'import sys, json; print(json.loads(sys.argv[1])["exp"])' "$exc") - $(date +%s) )) s)"

# vegeta targets (JSON lines)
target() { # url token [host]
  if [[ -n ${3:-} ]]; then
    printf '{"method":"GET","url":"%s","header":{"Authorization":["Bearer %s"],"Host":["%s"]}}\n' "$1" "$2" "$3"
  elif [[ -n $2 ]]; then
    printf '{"method":"GET","url":"%s","header":{"Authorization":["Bearer %s"]}}\n' "$1" "$2"
  else
    printf '{"method":"GET","url":"%s"}\n' "$1"
  fi
}
target "http://$app/" "" >"$tmp/direct.t"
target "http://$bare/" "$HIT" >"$tmp/bare.t"
target "http://$inbound/" "$HIT" >"$tmp/in-hit.t"
target "http://$outbound/" "$HIT" payments.local >"$tmp/out-hit.t"
target "http://$outbound/" "$HIT" payments-dpop.local >"$tmp/out-dpop-hit.t"
# make_miss path mode: fresh frontend tokens for one miss case (each used
# once), minted right before it (and again when it is measured again):
# $tmp/<path>.<mode>.warm ($WARM_N targets) and $tmp/<path>.<mode> (the case).
make_miss() {
  local path=$1 mode=$2 n url host=""
  [[ $mode == c1 ]] && n=$MISS_N || n=$(( RATE * $(dur_s "$RATE_DURATION") ))
  [[ $path == in-miss ]] && url=http://$inbound/ || { url=http://$outbound/ host=payments.local; }
  log "$path/$mode: minting $(( WARM_N + n )) fresh frontend tokens"
  mint $(( WARM_N + n )) "$tmp/miss.tok"
  awk -v url="$url" -v host="$host" -v p="$tmp/$path.$mode" -v w="$WARM_N" '
    { line = "{\"method\":\"GET\",\"url\":\"" url "\",\"header\":{\"Authorization\":[\"Bearer " $0 "\"]" (host != "" ? ",\"Host\":[\"" host "\"]" : "") "}}"
      print line > (NR <= w ? p ".warm" : p) }' "$tmp/miss.tok"
}

# make_dpop mode: a DPoP-bound frontend token and a proof for each request of
# the in-dpop-hit case ($WARM_N warm-up, then as many as the case sends), made
# right before it: a sidecar takes a proof only within 60 s of its iat, and once.
make_dpop() {
  local n
  [[ $1 == c1 ]] && n=$MISS_N || n=$(( RATE * $(dur_s "$RATE_DURATION") ))
  log "in-dpop-hit/$1: one DPoP-bound token, $(( WARM_N + n )) proofs"
  dpop_targets $(( WARM_N + n )) "$tmp/dpop.all"
  head -n "$WARM_N" "$tmp/dpop.all" >"$tmp/in-dpop-hit.$1.warm"
  tail -n +"$(( WARM_N + 1 ))" "$tmp/dpop.all" >"$tmp/in-dpop-hit.$1"
}

# --- measuring ------------------------------------------------------------------
sc_metric() { # sum of the sidecar's samples whose line starts with $1
  curl -s "http://$admin/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%d", s }'
}
ts_exchanges() {
  curl -s "$iss/metrics" | awk '/^tokenmesh_tokens_issued_total\{/ && /grant_type="token_exchange"/ { s += $NF } END { printf "%d", s }'
}
declare -A N RPS P50 P90 P99 PMAX ERRS SCORE ACORE TSCORE CCORE RSSMAX HITS EXCH OTHER
# measure key command...: runs the load (stdout to $tmp/load.out) and accounts
# CPU from /proc: the proxy (the sidecar, or bare-proxy for bare/*),
# application and token server by their utime+stime,
# the load generator by its user+sys; all CPUs' busy time minus those is other
# load (> 10% of a core marks the case). VmRSS of the sidecar sampled every 0.2 s.
measure() {
  local key=$1; shift
  local b0 s0 a0 t0 w0 b1 s1 a1 t1 w1 h0 e0 client ms proxy=$sc_pid
  [[ $key == bare/* ]] && proxy=$bare_pid
  h0=$(sc_metric tokenmesh_sidecar_cache_hits) e0=$(sc_metric tokenmesh_sidecar_exchanges)
  ( max=0; while kill -0 "$proxy" 2>/dev/null; do r=$(vm_kib "$proxy" VmRSS); (( r > max )) && { max=$r; echo "$max" >"$tmp/rss.max"; }; sleep 0.2; done ) &
  local sampler=$!
  b0=$(busy_ticks) s0=$(proc_ticks "$proxy") a0=$(proc_ticks "$app_pid") t0=$(proc_ticks "$ts_pid") w0=$(date +%s%N)
  { TIMEFORMAT='%3U %3S'; time "$@" >"$tmp/load.out"; } 2>"$tmp/load.time" \
    || die "$key: load generator failed: $(tail -n 5 "$tmp/load.time")"
  b1=$(busy_ticks) s1=$(proc_ticks "$proxy") a1=$(proc_ticks "$app_pid") t1=$(proc_ticks "$ts_pid") w1=$(date +%s%N)
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  RSSMAX[$key]=$(cat "$tmp/rss.max" 2>/dev/null || echo 0); rm -f "$tmp/rss.max"
  client=$(awk 'END { print $1 + $2 }' "$tmp/load.time")
  ms=$(( (w1 - w0) / 1000000 ))
  frac() { awk -v t="$1" -v hz="$HZ" -v ms="$ms" 'BEGIN { printf "%.4f", t / hz * 1000 / ms }'; }
  SCORE[$key]=$(frac $(( s1 - s0 ))) ACORE[$key]=$(frac $(( a1 - a0 ))) TSCORE[$key]=$(frac $(( t1 - t0 )))
  CCORE[$key]=$(awk -v c="$client" -v ms="$ms" 'BEGIN { printf "%.4f", c * 1000 / ms }')
  OTHER[$key]=$(awk -v b=$(( b1 - b0 - (s1 - s0) - (a1 - a0) - (t1 - t0) )) -v hz="$HZ" -v c="$client" -v ms="$ms" \
    'BEGIN { o = (b / hz - c) * 1000 / ms; printf "%.2f", o < 0 ? 0 : o }')
  HITS[$key]=$(( $(sc_metric tokenmesh_sidecar_cache_hits) - h0 ))
  EXCH[$key]=$(( $(sc_metric tokenmesh_sidecar_exchanges) - e0 ))
  DISTURBED=0
  awk -v o="${OTHER[$key]}" 'BEGIN { exit !(o > 0.10) }' && DISTURBED=1
  return 0
}

# retry_or_note key attempt: 0 (measure again) when the case was disturbed
# and retries are left; else 1, after noting what happened.
retry_or_note() {
  if (( DISTURBED && $2 < RETRIES )); then
    log "$1: other load $(pct "${OTHER[$1]}") of a core during the case: measuring again"
    return 0
  fi
  [[ -z $QUIET_NOTE ]] || NOTES+=("$1: $QUIET_NOTE")
  (( $2 == 0 )) || NOTES+=("$1: measured $(( $2 + 1 )) times; the earlier runs were disturbed by other load")
  (( DISTURBED == 0 )) || NOTES+=("$1: other processes used $(pct "${OTHER[$1]}") of a core during the case: figures disturbed")
  return 1
}

vegeta_attack() { # targets-file mode(c1|rate) duration|- lazy(0|1) output
  local args=(-format=json -targets="$1" -timeout=5s -max-body=256 -output="$5")
  [[ $4 == 1 ]] && args+=(-lazy)
  [[ $3 != - ]] && args+=(-duration="$3")
  if [[ $2 == c1 ]]; then args+=(-rate=0 -workers=1 -max-workers=1); else args+=(-rate="$RATE/1s"); fi
  taskset -c "$CCPU" "$VEGETA" attack "${args[@]}"
}

# run_vegeta key targets-prefix mode fresh(0|1|dpop): 1, every request a token
# never seen before (a miss); dpop, every request a proof never seen before
run_vegeta() {
  local key=$1 t=$2 mode=$3 miss=$4 dur attempt
  want "${key%/*}" || return 0
  [[ $mode == c1 ]] && dur=$DURATION || dur=$RATE_DURATION
  for (( attempt = 0; ; attempt++ )); do
    if [[ $miss == dpop ]]; then
      wait_quiet "$key"
      make_dpop "$mode"
      log "$key: warm-up $WARM_N requests, then $( [[ $mode == c1 ]] && echo "$MISS_N requests, one connection" || echo "$RATE req/s for $dur") (vegeta, every request a new proof)"
      vegeta_attack "$t.$mode.warm" "$mode" - 1 "$tmp/warm.bin"
      measure "$key" vegeta_attack "$t.$mode" "$mode" "$( [[ $mode == c1 ]] && echo - || echo "$dur")" 1 "$tmp/res.bin"
    elif (( miss )); then
      make_miss "${key%/*}" "$mode"
      wait_quiet "$key"
      log "$key: warm-up $WARM_N fresh tokens, then $( [[ $mode == c1 ]] && echo "$MISS_N requests, one connection" || echo "$RATE req/s for $dur") (vegeta, every request a new token)"
      vegeta_attack "$t.$mode.warm" "$mode" - 1 "$tmp/warm.bin"
      measure "$key" vegeta_attack "$t.$mode" "$mode" "$( [[ $mode == c1 ]] && echo - || echo "$dur")" 1 "$tmp/res.bin"
    else
      wait_quiet "$key"
      log "$key: warm-up $WARMUP, then $dur $( [[ $mode == c1 ]] && echo "one connection, closed loop" || echo "at $RATE req/s") (vegeta)"
      vegeta_attack "$t" "$mode" "$WARMUP" 0 "$tmp/warm.bin"
      measure "$key" vegeta_attack "$t" "$mode" "$dur" 0 "$tmp/res.bin"
    fi
    retry_or_note "$key" "$attempt" || break
  done
  local n p50 p90 p99 pmax total rps
  # A lazy (miss) attack ends with one pseudo-result "no targets to attack": not a request.
  "$VEGETA" encode --to csv "$tmp/res.bin" | grep -v ',no targets to attack,' >"$tmp/res.csv" || true
  read -r n p50 p90 p99 pmax < <(awk -F, '$2 == 200 { printf "%.1f\n", $3 / 1000 }' "$tmp/res.csv" | percentiles)
  total=$(wc -l <"$tmp/res.csv")
  rps=$("$VEGETA" report -type=json "$tmp/res.bin" | python3 -c 'import sys, json; print("%.1f" % json.load(sys.stdin)["rate"])')
  N[$key]=$n RPS[$key]=$rps P50[$key]=$p50 P90[$key]=$p90 P99[$key]=$p99 PMAX[$key]=$pmax ERRS[$key]=$(( total - n ))
  if (( total - n > 0 || n == 0 )); then
    flagged=1
    NOTES+=("$key: FLAGGED, $(( total - n )) of $total responses were not 200; first: $(awk -F, '$2 != 200 { print $2, $6; exit }' "$tmp/res.csv" | cut -c1-200)")
  fi
  log "$key: $n ok at $rps req/s, p50 ${p50} µs, p90 ${p90} µs, p99 ${p99} µs; sidecar $(pct "${SCORE[$key]}"), token server $(pct "${TSCORE[$key]}"), client $(pct "${CCORE[$key]}"), other $(pct "${OTHER[$key]}"); cache hits ${HITS[$key]}, exchanges ${EXCH[$key]}, RSS max $(mib "${RSSMAX[$key]}") MiB"
}

# run_wrk key url [host]: wrk, one thread; $CONNS connections (throughput),
# or one for the c1w cases (one connection, closed loop, a C client)
run_wrk() {
  local key=$1 url=$2 host=${3:-} auth="" hdr=() attempt conns=$CONNS
  want "${key%/*}" || return 0
  [[ $key == */c1w ]] && conns=1
  [[ $key != direct* ]] && auth="Bearer $HIT"
  [[ -n $host ]] && hdr=(-H "Host: $host")
  export BENCH_METHOD=GET BENCH_BODY= BENCH_AUTH=$auth
  for (( attempt = 0; ; attempt++ )); do
    wait_quiet "$key"
    log "$key: warm-up $WARMUP, then $DURATION with $conns connection(s) (wrk)"
    taskset -c "$CCPU" wrk -t1 -c"$conns" -d"$WARMUP" --timeout 5s -s "$here/token.lua" "${hdr[@]}" "$url" >/dev/null
    measure "$key" taskset -c "$CCPU" wrk -t1 -c"$conns" -d"$DURATION" --timeout 5s -s "$here/token.lua" "${hdr[@]}" "$url"
    retry_or_note "$key" "$attempt" || break
  done
  local res ok bad
  res=$(grep '^BENCH_RESULT' "$tmp/load.out") || { cat "$tmp/load.out" >&2; die "$key: no result from wrk"; }
  field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p" <<<"$res"; }
  ok=$(field ok) bad=$(( $(field non200) + $(field sockerr) ))
  N[$key]=$ok RPS[$key]=$(field rps) P50[$key]=$(field p50_us) P90[$key]=$(field p90_us) P99[$key]=$(field p99_us) PMAX[$key]=- ERRS[$key]=$bad
  if (( bad > 0 || ok == 0 )); then
    flagged=1
    NOTES+=("$key: FLAGGED, $ok ok, $bad non-200 or socket errors; first bad: $(grep '^BENCH_FIRST_BAD' "$tmp/load.out" | cut -c17- || true)")
  fi
  log "$key: ${RPS[$key]} req/s, p50 ${P50[$key]} µs, p90 ${P90[$key]} µs, p99 ${P99[$key]} µs; sidecar $(pct "${SCORE[$key]}"), app $(pct "${ACORE[$key]}"), client $(pct "${CCORE[$key]}"), other $(pct "${OTHER[$key]}"); cache hits ${HITS[$key]}, RSS max $(mib "${RSSMAX[$key]}") MiB"
}
pct() { awk -v f="$1" 'BEGIN { printf "%.0f%%", f * 100 }'; }

for mode in c1 rate; do
  [[ $MODES == *" $mode "* ]] || continue
  run_vegeta "direct/$mode" "$tmp/direct.t" "$mode" 0
  run_vegeta "bare/$mode" "$tmp/bare.t" "$mode" 0
  run_vegeta "in-hit/$mode" "$tmp/in-hit.t" "$mode" 0
  run_vegeta "out-hit/$mode" "$tmp/out-hit.t" "$mode" 0
  run_vegeta "out-dpop-hit/$mode" "$tmp/out-dpop-hit.t" "$mode" 0
  run_vegeta "in-dpop-hit/$mode" "$tmp/in-dpop-hit" "$mode" dpop
  run_vegeta "in-miss/$mode" "$tmp/in-miss" "$mode" 1
  run_vegeta "out-miss/$mode" "$tmp/out-miss" "$mode" 1
  run_vegeta "direct2/$mode" "$tmp/direct.t" "$mode" 0
done
# the direct calls are measured for the wrk tables only when a path is
any_wanted() { local p; for p in "$@"; do want "$p" && return 0; done; return 1; }
if [[ $MODES == *" c1 "* ]] && any_wanted bare in-hit out-hit out-dpop-hit; then
  # One connection again with a C client: vegeta's own wait for an answer
  # grows with the answer's latency (a Go runtime parked longer), which
  # inflates every proxied path's figure; wrk's does not (see bench/README.md).
  # Not in-dpop-hit: wrk sends one fixed request, and a proof passes once.
  run_wrk direct/c1w "http://$app/"
  run_wrk bare/c1w "http://$bare/"
  run_wrk in-hit/c1w "http://$inbound/"
  run_wrk out-hit/c1w "http://$outbound/" payments.local
  run_wrk out-dpop-hit/c1w "http://$outbound/" payments-dpop.local
  run_wrk direct2/c1w "http://$app/"
fi
if [[ $MODES == *" max "* ]] && any_wanted in-hit out-hit out-dpop-hit; then
  run_wrk direct/max "http://$app/"
  run_wrk in-hit/max "http://$inbound/"
  run_wrk out-hit/max "http://$outbound/" payments.local
  run_wrk out-dpop-hit/max "http://$outbound/" payments-dpop.local
fi
sleep 5
RSS_AFTER=$(vm_kib "$sc_pid" VmRSS) HWM=$(vm_kib "$sc_pid" VmHWM)

# --- sanity: what each case really exercised ------------------------------------
for key in "${!N[@]}"; do
  n=${N[$key]} h=${HITS[$key]} e=${EXCH[$key]}
  case $key in
    *-hit/*) # every request a cache hit, no exchange
      (( e == 0 && h >= n )) || { NOTES+=("$key: expected only cache hits: $h hits, $e exchanges for $n requests"); } ;;
    out-miss/*) # every request an exchange
      (( e >= n )) || { flagged=1; NOTES+=("$key: FLAGGED, expected one exchange per request: $e exchanges for $n requests"); } ;;
    in-miss/*) # every request a signature check
      (( h == 0 )) || { flagged=1; NOTES+=("$key: FLAGGED, expected no cache hits: $h for $n requests"); } ;;
  esac
done
[[ ${BENCH_NO_QUIET:-} == 1 ]] && NOTES+=("BENCH_NO_QUIET=1: no case waited for a quiet machine; figures not for the record")
loglines=$(wc -l <"$tmp/sidecar.log")
(( loglines < 50 )) || NOTES+=("the sidecar wrote $loglines log lines during the run")

# --- report -----------------------------------------------------------------------
us() { [[ $1 == - ]] && echo - || awk -v u="$1" 'BEGIN { printf "%.0f µs", u }'; }
added() { # key percentile-array-name mode: path's percentile minus the mean of the two direct runs
  local -n arr=$2
  local a=${arr[$1]:-} d1=${arr[direct/$3]:-} d2=${arr[direct2/$3]:-$d1}
  [[ -n $a && $a != - && -n $d1 && $d1 != - ]] || { echo -; return; }
  awk -v a="$a" -v d1="$d1" -v d2="$d2" 'BEGIN { printf "%+.0f", a - (d1 + d2) / 2 }'
}
per_k() { awk -v c="$1" -v r="$2" 'BEGIN { if (r > 0) printf "%.3f", c / (r / 1000); else printf "-" }'; }
goal_le() { awk -v v="$1" -v g="$2" 'BEGIN { if (v != "-" && v <= g) print "met"; else print "**NOT met**" }'; }
label() {
  case $1 in
    direct) echo 'direct to the application' ;;
    direct2) echo 'direct again (drift check)' ;;
    bare) echo 'reference: bare hyper proxy (bench/bare-proxy), no checks' ;;
    in-hit) echo 'inbound, cache hit (JWT verified before)' ;;
    out-hit) echo 'outbound, cache hit (exchange cached)' ;;
    out-dpop-hit) echo 'outbound, cache hit, DPoP hop (a fresh ES256 proof per call)' ;;
    in-dpop-hit) echo 'inbound, cache hit, DPoP-bound token (its ES256 proof verified per request)' ;;
    in-miss) echo 'inbound, miss (new JWT each request: ES256 verify)' ;;
    out-miss) echo 'outbound, miss (new subject each request: gRPC Exchange)' ;;
  esac
}
echo "### Sidecar: added latency, CPU and memory ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "Machine: $(machine_line). Sidecar and application (benchapp, Go, GOMAXPROCS=1) pinned to CPU $SCPU; load generator and token server to CPU $CCPU. Source $(source_line), release build. vegeta $VEGETA_VERSION ($(go version | cut -d' ' -f3)), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2). Before each case: no cargo/rustc/go for ${QUIET_SECS} s and load average < ${QUIET_LOAD}."
echo
for mode in c1 c1w rate; do
  [[ -n ${N[direct/$mode]:-} ]] || continue
  if [[ $mode == c1w ]]; then
    echo "**One connection, closed loop, C client** (wrk \`-t1 -c1\`, $DURATION after $WARMUP warm-up, cache hits; percentiles from wrk's histogram). The same hop as above, measured by a client whose own wait does not grow with the answer's latency; the one-connection goal is judged on this table."
  elif [[ $mode == c1 ]]; then
    echo "**One connection, closed loop, Go client** (vegeta \`-rate=0 -max-workers=1\`; hits and direct: $DURATION after $WARMUP warm-up; misses: $MISS_N requests with a token never seen before, after $WARM_N such warm-up requests). Added = the path's percentile minus the mean of the two direct runs' percentile."
  else
    echo "**Fixed $RATE req/s, open loop** (vegeta \`-rate=$RATE/1s\`, $RATE_DURATION after warm-up; misses: a token never seen before on every request). CPU per 1,000 req/s = the sidecar's utime+stime over the run ÷ wall time ÷ (req/s ÷ 1,000)."
  fi
  echo
  echo '| path | requests | req/s | p50 | p90 | p99 | max | added p50 | added p90 | added p99 | sidecar CPU | per 1,000 req/s | token server CPU | sidecar RSS (max) | errors |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|'
  for p in direct bare in-hit out-hit out-dpop-hit in-dpop-hit in-miss out-miss direct2; do
    k=$p/$mode
    [[ -n ${N[$k]:-} ]] || continue
    if [[ $p == direct* ]]; then a50=- a90=- a99=- sc=- pk=-; else
      a50=$(added "$k" P50 "$mode") a90=$(added "$k" P90 "$mode") a99=$(added "$k" P99 "$mode")
      sc=$(pct "${SCORE[$k]}") pk=$(per_k "${SCORE[$k]}" "${RPS[$k]}")
    fi
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$p")" "${N[$k]}" "${RPS[$k]}" \
      "$(us "${P50[$k]}")" "$(us "${P90[$k]}")" "$(us "${P99[$k]}")" "$(us "${PMAX[$k]}")" "$a50" "$a90" "$a99" "$sc" "$pk" \
      "$( [[ $p == out-miss ]] && pct "${TSCORE[$k]}" || echo -)" "$( [[ $p == direct* ]] && echo - || echo "$(mib "${RSSMAX[$k]}") MiB")" "${ERRS[$k]}"
  done
  echo
done
if [[ -n ${N[direct/max]:-} ]]; then
  echo "**Requests/s through one sidecar** (wrk, 1 thread, $CONNS connections, $DURATION after $WARMUP warm-up; cache hits). The sidecar and the application share CPU $SCPU, so the last column divides out the application: requests/s ÷ the sidecar's share of a core."
  echo
  echo '| path | req/s | p50 | p99 | sidecar CPU | application CPU | wrk CPU | req/s per sidecar core | sidecar RSS (max) | errors |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|'
  for p in direct in-hit out-hit out-dpop-hit; do
    k=$p/max
    [[ -n ${N[$k]:-} ]] || continue
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$p")" "${RPS[$k]}" "$(us "${P50[$k]}")" "$(us "${P99[$k]}")" \
      "$( [[ $p == direct ]] && echo - || pct "${SCORE[$k]}")" "$(pct "${ACORE[$k]}")" "$(pct "${CCORE[$k]}")" \
      "$( [[ $p == direct ]] && echo - || awk -v r="${RPS[$k]}" -v f="${SCORE[$k]}" 'BEGIN { printf "%.0f", (f > 0 ? r / f : 0) }')" \
      "$( [[ $p == direct ]] && echo - || echo "$(mib "${RSSMAX[$k]}") MiB")" "${ERRS[$k]}"
  done
  echo
fi
echo "**Memory** (sidecar VmRSS): idle after start, before any request, $(mib "$RSS_IDLE") MiB; the highest value during each case is in the tables (it only grows: the caches hold up to 10,000 entries each, and the miss cases fill them); 5 s after the last case $(mib "$RSS_AFTER") MiB; peak (VmHWM) $(mib "$HWM") MiB."
echo
echo '| goal (cache hit) | inbound | outbound | |'
echo '|---|---:|---:|---|'
g() { # label value-in value-out limit
  local v
  v=$(goal_le "$2" "$4"); [[ $v == met ]] && v=$(goal_le "$3" "$4")
  echo "| $1 | $2 | $3 | $v |"
}
[[ -n ${N[in-hit/c1w]:-} ]] && g "added p50 at one connection ≤ 60 µs (wrk)" "$(added in-hit/c1w P50 c1w)" "$(added out-hit/c1w P50 c1w)" 60
[[ -n ${N[in-hit/c1]:-} ]] && g "the same measured with vegeta (a Go client: its own wait grows with the answer's latency)" "$(added in-hit/c1 P50 c1)" "$(added out-hit/c1 P50 c1)" 60
over_bare() { # key percentile-array-name mode: path's percentile minus the bare proxy's
  local -n arr=$2
  awk -v a="${arr[$1]:--}" -v b="${arr[bare/$3]:--}" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+.0f", a - b }'
}
for mode in c1w c1 rate; do
  [[ -n ${N[bare/$mode]:-} && -n ${N[in-hit/$mode]:-} ]] || continue
  echo "| for reference, $(case $mode in c1w) echo "one connection (wrk)" ;; c1) echo "one connection (vegeta)" ;; *) echo "$RATE req/s" ;; esac): the bare hyper proxy adds p50 $(added "bare/$mode" P50 "$mode"); the sidecar adds over it | $(over_bare "in-hit/$mode" P50 "$mode") | $(over_bare "out-hit/$mode" P50 "$mode") | |"
done
if [[ -n ${N[in-hit/rate]:-} ]]; then
  g "added p50 at $RATE req/s ≤ 100 µs" "$(added in-hit/rate P50 rate)" "$(added out-hit/rate P50 rate)" 100
  g "added p90 at $RATE req/s ≤ 100 µs" "$(added in-hit/rate P90 rate)" "$(added out-hit/rate P90 rate)" 100
  g "core per 1,000 req/s ≤ 0.10" "$(per_k "${SCORE[in-hit/rate]}" "${RPS[in-hit/rate]}")" "$(per_k "${SCORE[out-hit/rate]}" "${RPS[out-hit/rate]}")" 0.10
fi
echo "| idle RSS ≤ 15 MiB | $(mib "$RSS_IDLE") MiB (one process) | | $(goal_le "$(mib "$RSS_IDLE")" 15) |"
if (( ${#NOTES[@]} )); then
  echo
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi
(( flagged == 0 )) || { log "some cases were flagged: see the notes"; exit 2; }
