# Proof-of-possession issuance for bench/run.sh (sourced): client_credentials
# over HTTPS as a bearer client, with a DPoP proof per request, and with a
# client certificate (tls_client_auth), on one token server with --client-ca.
# All three under vegeta (wrk and h2load cannot present a client
# certificate), HTTP/1.1, $CONNS workers in a closed loop, so the rows compare.
# Uses run.sh's measure, flag, log, want and the result arrays.

POP_FORM='grant_type=client_credentials&scope=orders:read'

# pop_pki: a CA, the server's certificate (IP 127.0.0.1) and bench-mtls's, in $tmp/pki
pop_pki() {
  local d=$tmp/pki name ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  mkdir -p "$d"
  openssl req -x509 -days 1 -subj /CN=bench-ca "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$d/ext"
  for name in server bench-mtls; do
    openssl req -subj "/CN=$name" "${ec[@]}" -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
    openssl x509 -req -days 1 -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -extfile "$d/ext" -out "$d/$name.crt" 2>/dev/null
  done
}

# pop_config: bench-bearer (secret), bench-dpop (secret, accessToken.binding: dpop),
# bench-mtls (tls_client_auth, CN=bench-mtls); the same ES256 JWTs for orders
pop_config() {
  local name auth
  mkdir -p "$tmp/cfg-pop"
  {
    printf 'apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {signing: {algorithm: ES256}}\n'
    printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: orders-read}\nspec: {name: "orders:read"}\n'
    for name in bench-bearer bench-dpop bench-mtls; do
      auth='{method: client_secret_basic, secretRef: {name: bench, key: client_secret}}'
      [[ $name == bench-mtls ]] && auth='{method: tls_client_auth, tlsClientAuth: {subjectDn: "CN=bench-mtls"}}'
      printf -- '---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: %s}\nspec:\n  clientId: %s\n  grantTypes: [client_credentials]\n  authentication: %s\n  scopes: ["orders:read"]\n  audiences: [orders]\n  accessToken: {format: jwt, ttl: 300s%s}\n' \
        "$name" "$name" "$auth" "$( [[ $name == bench-dpop ]] && echo ', binding: dpop')"
    done
  } >"$tmp/cfg-pop/bench.yaml"
}

# pop_attack targets duration|- lazy(0|1) output [vegeta flags...]
pop_attack() {
  local targets=$1 dur=$2 lazy=$3 out=$4; shift 4
  local args=(-format=json -targets="$targets" -timeout=5s -http2=false -root-certs="$tmp/pki/ca.crt"
    -rate=0 -workers="$CONNS" -max-workers="$CONNS" -output="$out")
  [[ $lazy == 1 ]] && args+=(-lazy)
  [[ $dur != - ]] && args+=(-duration="$dur")
  taskset -c "$CCPU" "$VEGETA" attack "${args[@]}" "$@"
}

# pop_result id results-file: req/s (successful responses over the attack's
# time), p50 and p99 of the 200s, errors; a lazy attack that ran out of
# targets ends with a pseudo-result "no targets to attack", not a request.
pop_result() {
  local id=$1 res=$2 n p50 p90 p99 pmax total
  "$VEGETA" encode --to csv "$res" | grep -v ',no targets to attack,' >"$tmp/pop.csv" || true
  read -r n p50 p90 p99 pmax < <(awk -F, '$2 == 200 { printf "%d\n", $3 / 1000 }' "$tmp/pop.csv" | percentiles)
  total=$(wc -l <"$tmp/pop.csv")
  RPS[$id]=$("$VEGETA" report -type=json "$res" | python3 -c 'import sys, json; print("%.1f" % json.load(sys.stdin)["throughput"])')
  P50[$id]=$p50 P99[$id]=$p99 ERR[$id]=0
  if (( total - n > 0 || n == 0 )); then
    flag "$id" "$(( total - n )) not 200" "$(( total - n )) of $total responses were not 200; first: $(awk -F, '$2 != 200 { print $2, $6; exit }' "$tmp/pop.csv" | cut -c1-200)"
  fi
  log "$id: $n ok, ${RPS[$id]} req/s, p50 ${p50}us, p99 ${p99}us; $MEASURE_LOG"
}

# pop_preflight id expect-token-type expect-cnf-member curl-args...: one request; the
# token must come back with token_type and cnf as the case promises
pop_preflight() {
  local id=$1 type=$2 cnf=$3 body; shift 3
  body=$(curl -s --cacert "$tmp/pki/ca.crt" "$@" "$pop_tok") || true
  python3 -c '
import base64, json, sys
body, want_type, want_cnf = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
assert body["token_type"] == want_type, body["token_type"]
assert (want_cnf == "-" and "cnf" not in claims) or want_cnf in claims.get("cnf", {}), claims
' "$body" "$type" "$cnf" 2>"$tmp/pre.err" \
    && log "$id preflight: token_type $type, cnf ${cnf}" \
    || NOTES+=("$id: preflight failed: $(head -c 300 <<<"$body") $(tail -n1 "$tmp/pre.err")")
}

run_pop() {
  local port basic n rate
  pop_pki
  pop_config
  port=$(free_port) pop_iss=https://127.0.0.1:$port pop_tok=https://127.0.0.1:$port/oauth2/token
  log "starting $bin on $pop_iss with --client-ca (CPU $SCPU)"
  taskset -c "$SCPU" "$bin" --config "$tmp/cfg-pop" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$(free_port)" \
    --issuer "$pop_iss" --data-dir "$tmp/data-pop" --secrets-dir "$tmp/secrets" \
    --tls-cert "$tmp/pki/server.crt" --tls-key "$tmp/pki/server.key" --client-ca "$tmp/pki/ca.crt" >"$tmp/token-server-pop.log" 2>&1 &
  pids+=($!) spids=($!)
  wait_ready_tls "$pop_iss/readyz" "$!" "$tmp/token-server-pop.log"
  basic=$(printf '%s:%s' bench-bearer "$SECRET" | base64 -w0)
  static() { # client-id auth-header-or-empty: one vegeta target line
    printf '{"method":"POST","url":"%s","body":"%s","header":{"Content-Type":["application/x-www-form-urlencoded"]%s}}\n' \
      "$pop_tok" "$(printf '%s' "$POP_FORM${1:+&client_id=$1}" | base64 -w0)" "${2:+,\"Authorization\":[\"$2\"]}"
  }
  if want bearer-tls; then
    static "" "Basic $basic" >"$tmp/bearer.t"
    pop_preflight bearer-tls Bearer - -u "bench-bearer:$SECRET" -d "$POP_FORM"
    log "bearer-tls: warm-up $WARMUP, then $DURATION, $CONNS workers (vegeta, HTTPS)"
    pop_attack "$tmp/bearer.t" "$WARMUP" 0 "$tmp/warm.bin"
    measure bearer-tls pop_attack "$tmp/bearer.t" "$DURATION" 0 "$tmp/pop.bin"
    pop_result bearer-tls "$tmp/pop.bin"
  fi
  if want mtls; then
    static bench-mtls "" >"$tmp/mtls.t"
    local cert=(-cert="$tmp/pki/bench-mtls.crt" -key="$tmp/pki/bench-mtls.key")
    pop_preflight mtls Bearer 'x5t#S256' --cert "$tmp/pki/bench-mtls.crt" --key "$tmp/pki/bench-mtls.key" -d "$POP_FORM&client_id=bench-mtls"
    log "mtls: warm-up $WARMUP, then $DURATION, $CONNS workers (vegeta, HTTPS with a client certificate)"
    pop_attack "$tmp/mtls.t" "$WARMUP" 0 "$tmp/warm.bin" "${cert[@]}"
    measure mtls pop_attack "$tmp/mtls.t" "$DURATION" 0 "$tmp/pop.bin" "${cert[@]}"
    pop_result mtls "$tmp/pop.bin"
  fi
  if want dpop; then
    dpop_targets() { # n file: fresh proofs (iat now, a new jti each), signed before the load
      taskset -c "$CCPU" "$BENCHAPP" dpop -url "$pop_tok" -client bench-dpop -secret "$SECRET" -form "$POP_FORM" -n "$1" -out "$2"
    }
    dpop_targets 1 "$tmp/dpop.pre"
    pop_preflight dpop DPoP jkt -u "bench-dpop:$SECRET" -d "$POP_FORM" \
      -H "DPoP: $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["header"]["DPoP"][0])' "$tmp/dpop.pre")"
    # Warm-up on 20,000 proofs (or $WARMUP, whichever ends first); its rate sizes the
    # measured set: 1.5 times what $DURATION would use, every proof used within 60 s.
    dpop_targets 20000 "$tmp/dpop.warm"
    log "dpop: warm-up $WARMUP, then $DURATION, $CONNS workers (vegeta, HTTPS, a new DPoP proof per request)"
    pop_attack "$tmp/dpop.warm" "$WARMUP" 1 "$tmp/warm.bin"
    rate=$("$VEGETA" report -type=json "$tmp/warm.bin" | python3 -c 'import sys, json; print(int(json.load(sys.stdin)["throughput"]))')
    n=$(( rate * $(dur_s "$DURATION") * 3 / 2 + 1000 ))
    log "dpop: $rate req/s in the warm-up; signing $n proofs"
    dpop_targets "$n" "$tmp/dpop.t"
    measure dpop pop_attack "$tmp/dpop.t" "$DURATION" 1 "$tmp/pop.bin"
    pop_result dpop "$tmp/pop.bin"
    if grep -q 'no targets to attack' < <("$VEGETA" encode --to csv "$tmp/pop.bin"); then
      NOTES+=("dpop: the $n proofs ran out before $DURATION; the rate counts the time they lasted")
    fi
  fi
  NOTES+=("proof of possession: $(grep -c . "$tmp/token-server-pop.log") token-server log lines")
  stop_servers
}

wait_ready_tls() { # url pid logfile: wait_ready over HTTPS with the bench CA
  local i
  for i in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$3" >&2; die "process exited while starting ($3)"; }
    [[ $(curl -s --cacert "$tmp/pki/ca.crt" -o /dev/null -w '%{http_code}' "$1" || true) == 200 ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$3" >&2
  die "$1 not 200 after 30 s"
}

pop_report() {
  local id label
  echo "#### Proof of possession: issuance over HTTPS, bearer, DPoP and mTLS"
  echo
  echo "Requests per server core: req/s ÷ the share of its core the token server used, what one CPU-second of the server issues whatever the load generator or other processes left it (the bearer and mTLS rows are often bound by the load generator's core, the DPoP row by the server's)."
  echo
  echo "One token server with \`--tls-cert\` and \`--client-ca\`, ES256 JWTs; vegeta $VEGETA_VERSION (HTTP/1.1 over TLS, $CONNS workers in a closed loop, keep-alive) on CPU $CCPU for all three rows. DPoP: a proof of its own per request, signed before the measured time by \`benchapp dpop\`; mTLS: \`tls_client_auth\`, the certificate presented once per connection."
  echo
  echo '| case | req/s | p50 | p99 | ratio to bearer | server core | req/s per server core | ratio to bearer | client core | errors |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|'
  for id in bearer-tls dpop mtls; do
    [[ -n ${RPS[$id]:-} ]] || continue
    case $id in
      bearer-tls) label='bearer: `client_secret_basic`' ;;
      dpop) label='DPoP: `client_secret_basic` + a `DPoP` proof (ES256), `cnf.jkt`' ;;
      mtls) label='mTLS: `tls_client_auth`, `cnf.x5t#S256`' ;;
    esac
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "${RPS[$id]}" "$(ms "${P50[$id]}")" "$(ms "${P99[$id]}")" \
      "$(ratio "${RPS[$id]}" "${RPS[bearer-tls]:-}")" "${SCPU_PCT[$id]}" "$(per_core "$id")" \
      "$( [[ -n ${RPS[bearer-tls]:-} ]] && ratio "$(per_core "$id")" "$(per_core bearer-tls)" || echo -)" "${CCPU_PCT[$id]}" "${ERR[$id]}"
  done
}
