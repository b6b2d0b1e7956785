#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on a loopback port, for the tests.
#   eval "$(tests/pg/throwaway.sh start)"   # exports TOKENMESH_TEST_DATABASE_URL, TOKENMESH_TEST_PGDATA
#                                            # and TOKENMESH_TEST_PG_CA (TLS is on, with a CA of its own)
#   tests/pg/throwaway.sh stop
# Installs Debian's postgresql if it is missing. As root it runs the server as
# the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z $dir ]]; then
    echo "throwaway.sh: installing postgresql" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
  echo "$dir"
}

as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    bin=$(bindir)
    data=$(mktemp -d /tmp/tokenmesh-pg.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [[ $(id -u) == 0 ]] && chown postgres: "$data"
    as_owner "$bin/initdb" -D "$data" -U postgres -A trust --no-sync >/dev/null
    # TLS with a CA of its own, for the tests of sslmode=verify-full: the
    # server certificate names 127.0.0.1 and localhost.
    command -v openssl >/dev/null || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >&2; }
    tls=$data/tls
    mkdir -p "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=tokenmesh-test-ca \
      -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
      -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 2 \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n') \
      -out "$tls/server.crt" 2>/dev/null
    chmod 600 "$tls/server.key"
    [[ $(id -u) == 0 ]] && chown -R postgres: "$tls"
    # wal_init_zero=off: a new cluster zero-fills each new 16 MB WAL segment inside the commit that
    # needs one (a cluster in service recycles its segments); in bench/run.sh those were 30 ms stalls,
    # the whole p99 of opaque issuance on PostgreSQL (docs/performance.md, issue #20).
    as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $port -h 127.0.0.1 -k $data -c fsync=off -c wal_init_zero=off -c max_connections=200 -c ssl=on -c ssl_cert_file=$tls/server.crt -c ssl_key_file=$tls/server.key" start >/dev/null
    echo "export TOKENMESH_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
    echo "export TOKENMESH_TEST_PGDATA=$data"
    echo "export TOKENMESH_TEST_PG_CA=$tls/ca.crt"
    ;;
  stop)
    data=${TOKENMESH_TEST_PGDATA:?start first}
    as_owner "$(bindir)/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
    rm -rf "$data"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
