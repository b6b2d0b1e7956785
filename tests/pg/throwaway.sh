#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on a loopback port, for the tests.
#   eval "$(tests/pg/throwaway.sh start)"   # exports TOKENMESH_TEST_DATABASE_URL and TOKENMESH_TEST_PGDATA
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
    as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $port -h 127.0.0.1 -k $data -c fsync=off -c max_connections=200" start >/dev/null
    echo "export TOKENMESH_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
    echo "export TOKENMESH_TEST_PGDATA=$data"
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
