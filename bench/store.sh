#!/usr/bin/env bash
# tokenmesh storage benchmark: opaque-token issuance and introspection
# requests/s on the embedded store (SQLite) and on PostgreSQL, with one and
# with two token-server replicas on one database, in one run. wrk (2 threads,
# one per replica when there are two) over loopback. Markdown on stdout,
# progress on stderr. See bench/README.md ("Storage").
# Env knobs:
#   BENCH_DURATION=10s  BENCH_WARMUP=2s  BENCH_CONNECTIONS=32  BENCH_POOL=10000 (tokens introspected)
#   BENCH_STORE_CASES="embedded pg1 pg2"
#   BENCH_SERVER_CPU=0 (token-server replicas)  BENCH_PG_CPU=0 (PostgreSQL)  BENCH_CLIENT_CPU=1 (wrk)
#   BENCH_DB_MAX_CONNECTIONS (passed as --database-max-connections; default: the server's, 10)
#   BENCH_QUIET_SECS=30 BENCH_QUIET_LOAD=0.5 BENCH_QUIET_MAX=3600 (BENCH_NO_QUIET=1: don't wait)
#   BENCH_RETRIES=2 (measure a case disturbed by other load again)
#   BENCH_PG_SSLMODE=disable (sslmode of the replicas' database URL; e.g. require for TLS)
#   TOKEN_SERVER_BIN (skip cargo)  BENCH_SKIP_BUILD=1
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNS=${BENCH_CONNECTIONS:-32}
POOL=${BENCH_POOL:-10000}
CASES=" ${BENCH_STORE_CASES:-embedded pg1 pg2} "
SCPU=${BENCH_SERVER_CPU:-0}
PGCPU=${BENCH_PG_CPU:-$SCPU}
CCPU=${BENCH_CLIENT_CPU:-1}
SECRET=bench-store-secret-0123456789abcdefgh
PG_SSLMODE=${BENCH_PG_SSLMODE:-disable} # the throwaway cluster speaks TLS too; loopback figures without it by default
RETRIES=${BENCH_RETRIES:-2} # a case disturbed by other load (> 10% of a core) is measured again, up to this often
ISSUE_BODY='grant_type=client_credentials&scope=orders:read'

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenmesh-store-bench.XXXXXX")
pids=()
source "$here/lib.sh"

# --- prerequisites ----------------------------------------------------------
apt_install wrk wrk
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v curl >/dev/null || die "curl is required"
ensure_benchapp
bin=${TOKEN_SERVER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/token-server}
[[ -n ${TOKEN_SERVER_BIN:-}${BENCH_SKIP_BUILD:-} ]] || release_build -p token-server
[[ -x $bin ]] || die "no token-server binary at $bin"
want() { [[ $CASES == *" $1 "* ]]; }

wait_quiet start # before anything is started or minted

if want pg1 || want pg2; then pg_start "$PGCPU"; fi

# --- configuration: one TokenServer, an opaque-token client, a resource server ---
mkdir -p "$tmp/cfg" "$tmp/secrets/bench"
printf '%s' "$SECRET" >"$tmp/secrets/bench/client_secret"
client() { # name, accessToken, extra spec line
  printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: %s}\nspec:\n  clientId: %s\n  grantTypes: [client_credentials]\n  authentication: {method: client_secret_basic, secretRef: {name: bench, key: client_secret}}\n  scopes: ["orders:read"]\n  audiences: [orders]\n  accessToken: %s\n%s' \
    "$1" "$1" "$2" "${3:-}"
}
basic() { printf 'Basic %s' "$(printf '%s:%s' "$1" "$SECRET" | base64 -w0)"; }

declare -A RPS P50 P99 ERR SCORE PGCORE CCORE OTHER NOTE_OF SBUSY
NOTES=()
flagged=0

# start_replicas case n [database-url [extra flags...]]: n token-server processes on CPU $SCPU
start_replicas() {
  local id=$1 n=$2 url=${3:-} r port extra=("${@:4}")
  [[ -n $url ]] && extra+=(--database-url "$url")
  [[ -n $url && -n ${BENCH_DB_MAX_CONNECTIONS:-} ]] && extra+=(--database-max-connections "$BENCH_DB_MAX_CONNECTIONS")
  REPLICA_PIDS=() REPLICA_ADDRS=()
  local first_port
  first_port=$(free_port)
  iss=http://127.0.0.1:$first_port
  {
    printf 'apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {issuer: "%s", signing: {algorithm: ES256}}\n' "$iss"
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-read}\nspec: {name: "orders:read"}\n'
    client bench-opaque '{format: opaque, ttl: 3600s}'
    client bench-rs '{format: jwt, ttl: 300s}' $'  allowIntrospection: true\n'
  } >"$tmp/cfg/bench.yaml"
  for (( r = 1; r <= n; r++ )); do
    (( r == 1 )) && port=$first_port || port=$(free_port)
    mkdir -p "$tmp/data-$id-$r"
    taskset -c "$SCPU" "$bin" --config "$tmp/cfg" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$(free_port)" \
      --issuer "$iss" --data-dir "$tmp/data-$id-$r" --secrets-dir "$tmp/secrets" "${extra[@]}" \
      >"$tmp/$id-$r.log" 2>&1 &
    pids+=($!) REPLICA_PIDS+=($!) REPLICA_ADDRS+=("127.0.0.1:$port")
    wait_ready "http://127.0.0.1:$port/readyz" "$!" "$tmp/$id-$r.log"
  done
  log "$id: $n replica(s) up on ${REPLICA_ADDRS[*]} (CPU $SCPU)${url:+, PostgreSQL ${url##*/}}"
}
stop_replicas() {
  local p
  for p in "${REPLICA_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
issued_total() { # opaque tokens issued, summed over the replicas' /metrics
  local a s=0 v
  for a in "${REPLICA_ADDRS[@]}"; do
    v=$(curl -s "http://$a/metrics" | awk '/^tokenmesh_tokens_issued_total\{/ && /format="opaque"/ { s += $NF } END { printf "%d", s }')
    s=$(( s + v ))
  done
  echo "$s"
}

# measure key command...: the load (stdout to $tmp/load.out); CPU of the
# replicas, of PostgreSQL (postmaster and its children), of wrk, and the rest.
measure() {
  local key=$1; shift
  local b0 s0 g0 w0 b1 s1 g1 w1 client ms k0 k1
  b0=$(busy_ticks) s0=$(ticks_of "${REPLICA_PIDS[@]}") g0=$(pg_ticks) k0=$(cpu_ticks "$SCPU") w0=$(date +%s%N)
  { TIMEFORMAT='%3U %3S'; time "$@" >"$tmp/load.out"; } 2>"$tmp/load.time" \
    || die "$key: wrk failed: $(tail -n 5 "$tmp/load.time")"
  b1=$(busy_ticks) s1=$(ticks_of "${REPLICA_PIDS[@]}") g1=$(pg_ticks) k1=$(cpu_ticks "$SCPU") w1=$(date +%s%N)
  client=$(awk 'END { print $1 + $2 }' "$tmp/load.time")
  ms=$(( (w1 - w0) / 1000000 ))
  frac() { awk -v t="$1" -v hz="$HZ" -v ms="$ms" 'BEGIN { printf "%.4f", t / hz * 1000 / ms }'; }
  SCORE[$key]=$(frac $(( s1 - s0 ))) PGCORE[$key]=$(frac $(( g1 - g0 ))) SBUSY[$key]=$(frac $(( k1 - k0 )))
  CCORE[$key]=$(awk -v c="$client" -v ms="$ms" 'BEGIN { printf "%.4f", c * 1000 / ms }')
  OTHER[$key]=$(awk -v b=$(( b1 - b0 - (s1 - s0) - (g1 - g0) )) -v hz="$HZ" -v c="$client" -v ms="$ms" \
    'BEGIN { o = (b / hz - c) * 1000 / ms; printf "%.2f", o < 0 ? 0 : o }')
  DISTURBED=0
  awk -v o="${OTHER[$key]}" 'BEGIN { exit !(o > 0.10) }' && DISTURBED=1
  return 0
}

# run_wrk key mode(issue|introspect) path auth
run_wrk() {
  local key=$1 mode=$2 path=$3 auth=$4
  export STORE_MODE=$mode STORE_AUTH=$auth STORE_BODY=$ISSUE_BODY STORE_TOKENS=$tmp/pool.tok
  STORE_ADDRS=$(IFS=,; echo "${REPLICA_ADDRS[*]}"); export STORE_ADDRS
  local url="http://${REPLICA_ADDRS[0]}$path" c0 c1 attempt
  for (( attempt = 0; ; attempt++ )); do
    wait_quiet "$key"
    log "$key: warm-up $WARMUP, then $DURATION, wrk 2 threads × $(( CONNS / 2 )) connections over ${#REPLICA_ADDRS[@]} replica(s)"
    taskset -c "$CCPU" wrk -t2 -c"$CONNS" -d"$WARMUP" --timeout 5s -s "$here/store.lua" "$url" >/dev/null
    c0=$(issued_total)
    measure "$key" taskset -c "$CCPU" wrk -t2 -c"$CONNS" -d"$DURATION" --timeout 5s -s "$here/store.lua" "$url"
    sleep 0.3; c1=$(issued_total)
    (( DISTURBED && attempt < RETRIES )) || break
    log "$key: other load $(pct "${OTHER[$key]}") of a core during the case: measuring again"
  done
  [[ -z $QUIET_NOTE ]] || NOTES+=("$key: $QUIET_NOTE")
  (( attempt == 0 )) || NOTES+=("$key: measured $(( attempt + 1 )) times; the earlier runs were disturbed by other load")
  (( DISTURBED == 0 )) || NOTES+=("$key: other processes used $(pct "${OTHER[$key]}") of a core during the case: figures disturbed")
  local res ok bad
  res=$(grep '^BENCH_RESULT' "$tmp/load.out") || { cat "$tmp/load.out" >&2; die "$key: no result from wrk"; }
  field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p" <<<"$res"; }
  ok=$(field ok) bad=$(( $(field non200) + $(field sockerr) ))
  RPS[$key]=$(field rps) P50[$key]=$(field p50_us) P99[$key]=$(field p99_us) ERR[$key]=$bad
  if (( bad > 0 || ok == 0 )); then
    flagged=1 ERR[$key]="**$bad** ⚠"
    NOTES+=("$key: FLAGGED, $ok ok, $bad not ok (non-200$( [[ $mode == introspect ]] && echo ' or not "active":true') or socket errors); first bad: $(grep '^BENCH_FIRST_BAD' "$tmp/load.out" | cut -c17- || true)")
  fi
  if [[ $mode == issue ]]; then # the replicas' own count against wrk's
    local n=$(( c1 - c0 ))
    if (( n < ok || n > ok + CONNS )); then
      flagged=1 ERR[$key]+=" count ⚠"
      NOTES+=("$key: FLAGGED, the replicas counted $n opaque tokens issued, wrk $ok successful responses (up to $CONNS more in flight)")
    fi
  fi
  log "$key: ${RPS[$key]} req/s, p50 ${P50[$key]} µs, p99 ${P99[$key]} µs, ok $ok, bad $bad; CPU $SCPU busy $(pct "${SBUSY[$key]}"): replicas $(pct "${SCORE[$key]}"), PostgreSQL $(pct "${PGCORE[$key]}"); wrk $(pct "${CCORE[$key]}"), other $(pct "${OTHER[$key]}")"
}
pct() { awk -v f="$1" 'BEGIN { printf "%.0f%%", f * 100 }'; }

# run_case id replicas [database-url]
run_case() {
  local id=$1 n=$2 url=${3:-}
  start_replicas "$id" "$n" "$url"
  run_wrk "$id/issue" issue /oauth2/token "$(basic bench-opaque)"
  # the pool to introspect: opaque tokens issued on the first replica
  log "$id: minting $POOL opaque tokens on ${REPLICA_ADDRS[0]}"
  taskset -c "$CCPU" "$BENCHAPP" mint -url "http://${REPLICA_ADDRS[0]}/oauth2/token" -client bench-opaque -secret "$SECRET" \
    -form "$ISSUE_BODY" -n "$POOL" -c 8 -out "$tmp/pool.tok"
  # preflight: a token from the first replica is active on the last one
  local tok got
  tok=$(tail -n1 "$tmp/pool.tok")
  got=$(curl -s -u "bench-rs:$SECRET" -d "token=$tok" "http://${REPLICA_ADDRS[-1]}/oauth2/introspect")
  [[ $got == *'"active":true'* ]] || die "$id: a pooled token does not introspect as active on ${REPLICA_ADDRS[-1]}: ${got:0:200}"
  run_wrk "$id/introspect" introspect /oauth2/introspect "$(basic bench-rs)"
  # Again with the opaque-token cache off: every introspection reads the
  # store, as the first look at each token does (same data, replicas restarted).
  stop_replicas
  start_replicas "$id" "$n" "$url" --opaque-token-cache 0
  run_wrk "$id/introspect-uncached" introspect /oauth2/introspect "$(basic bench-rs)"
  if [[ -n $url ]]; then
    NOTE_OF[$id]="database $(psql "$url" -Atc 'select pg_size_pretty(pg_database_size(current_database()))')"
  else
    NOTE_OF[$id]="data dir $(du -sh "$tmp/data-$id-1" | cut -f1)"
  fi
  stop_replicas
}

want embedded && run_case embedded 1
for c in pg1 pg2; do
  want "$c" || continue
  psql "$TOKENMESH_TEST_DATABASE_URL" -qc "create database tokenmesh_bench_$c" >/dev/null
  run_case "$c" "${c#pg}" "${TOKENMESH_TEST_DATABASE_URL%/*}/tokenmesh_bench_$c?sslmode=$PG_SSLMODE"
done
[[ ${BENCH_NO_QUIET:-} == 1 ]] && NOTES+=("BENCH_NO_QUIET=1: no case waited for a quiet machine; figures not for the record")

# --- report -------------------------------------------------------------------
ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }
ratio() { [[ -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }' || echo -; }
label() {
  case $1 in
    embedded) echo 'embedded (SQLite), 1 replica' ;;
    pg1) echo 'PostgreSQL, 1 replica' ;;
    pg2) echo 'PostgreSQL, 2 replicas on one database' ;;
  esac
}
echo "### Storage: opaque tokens, embedded against PostgreSQL ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "Machine: $(machine_line). Token-server replicas pinned to CPU $SCPU, PostgreSQL (postmaster and every backend) to CPU $PGCPU, wrk (2 threads, $CONNS connections; with two replicas one thread and $(( CONNS / 2 )) connections each) to CPU $CCPU; $WARMUP warm-up + $DURATION per case. Source $(source_line), release build. $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)${PG_VERSION:+, PostgreSQL $PG_VERSION ($PG_SETTINGS; a pool of ${BENCH_DB_MAX_CONNECTIONS:-10} connections per replica, sslmode=$PG_SSLMODE)}. Before each case: no cargo/rustc/go for ${QUIET_SECS} s and load average < ${QUIET_LOAD}."
echo
echo "| store | operation | req/s | ratio to embedded | p50 | p99 | CPU $SCPU busy | replicas CPU | PostgreSQL CPU | wrk CPU | errors |"
echo '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|'
for id in embedded pg1 pg2; do
  for op in issue introspect introspect-uncached; do
    k=$id/$op
    [[ -n ${RPS[$k]:-} ]] || continue
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$id")" \
      "$(case $op in issue) echo 'issue (`client_credentials`, opaque)' ;; introspect) echo "introspect (pool of $POOL)" ;; *) echo "introspect, cache off (\`--opaque-token-cache 0\`)" ;; esac)" \
      "${RPS[$k]}" "$(ratio "${RPS[$k]}" "${RPS[embedded/$op]:-}")" "$(ms "${P50[$k]}")" "$(ms "${P99[$k]}")" \
      "$(pct "${SBUSY[$k]}")" "$(pct "${SCORE[$k]}")" "$( [[ $id == embedded ]] && echo - || pct "${PGCORE[$k]}")" "$(pct "${CCORE[$k]}")" "${ERR[$k]}"
  done
done
echo
echo "CPU $SCPU busy: /proc/stat for that core over the measured run, interrupt and softirq time included (loopback TCP, between wrk and the replicas and between the replicas and PostgreSQL, is mostly softirq and charged to no process). Replicas and PostgreSQL: utime+stime from /proc/<pid>/stat (PostgreSQL: the postmaster with the children it reaped, e.g. autovacuum workers, plus its live backends)."
echo
for op in introspect introspect-uncached; do
  for id in pg1 pg2; do
    [[ -n ${RPS[$id/$op]:-} && -n ${RPS[embedded/$op]:-} ]] || continue
    r=$(ratio "${RPS[$id/$op]}" "${RPS[embedded/$op]}")
    v=$(awk -v r="$r" 'BEGIN { print (r >= 0.5 ? "met" : "**NOT met**") }')
    [[ ${ERR[$id/$op]}${ERR[embedded/$op]} == 00 ]] || v="$v (⚠ not valid: errors)"
    echo "Introspection$( [[ $op == introspect ]] && echo ' (cache on, the default)' || echo ' with the cache off'), $(label "$id") / embedded: **${r}×** (goal ≥ 0.50: $v)."
    echo
  done
done
for id in embedded pg1 pg2; do [[ -n ${NOTE_OF[$id]:-} ]] && NOTES+=("$(label "$id"): ${NOTE_OF[$id]} after its cases"); done
if (( ${#NOTES[@]} )); then
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi
(( flagged == 0 )) || { log "some cases were flagged: see the notes"; exit 2; }
