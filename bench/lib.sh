# Shared by bench/run.sh, bench/sidecar.sh, bench/store.sh and bench/signin.sh (sourced, not run).
# Needs: $here (bench/), $root (repository), $tmp (scratch dir), `pids` array;
# sets the EXIT trap (cleanup) and runs the script's cleanup_more from it.

# On exit or interrupt: kill and reap every process in $pids, stop the
# throwaway PostgreSQL if pg_start started one, run the script's cleanup_more
# if it has one, remove $tmp.
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pg_stop
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CACHE=${TOKENMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmesh}
QUIET_SECS=${BENCH_QUIET_SECS:-30}     # no cargo/rustc/go for this long ...
QUIET_LOAD=${BENCH_QUIET_LOAD:-0.5}    # ... and the 1-minute load average below this
QUIET_MAX=${BENCH_QUIET_MAX:-3600}     # give up waiting after this (the case is then marked)
HZ=$(getconf CLK_TCK)

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }
sudo_() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
apt_install() { # command package
  command -v "$1" >/dev/null && return 0
  log "installing $2"
  sudo_ apt-get install -y "$2" >&2 || { sudo_ apt-get update >&2 && sudo_ apt-get install -y "$2" >&2; }
}

free_port() { # first port from a random start that nothing answers on
  local p=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

wait_ready() { # url pid logfile
  local i
  for i in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$3" >&2; die "process exited while starting ($3)"; }
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" || true) == 200 ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$3" >&2
  die "$1 not 200 after 30 s"
}

dur_s() { # 10, 10s, 2m -> seconds
  local n=${1%[smh]}
  case $1 in *m) echo $(( n * 60 )) ;; *h) echo $(( n * 3600 )) ;; *) echo "$n" ;; esac
}
# Busy ticks of all CPUs that processes are charged for (user, nice, system):
# what is left after the processes a script accounts for is other load.
# Interrupt and softirq time (loopback TCP is mostly softirq) is charged to no
# process, so it is left out here and shown by cpu_ticks instead.
busy_ticks() { local a; a=($(head -n1 /proc/stat)); echo $(( a[1] + a[2] + a[3] )); }
# The same with interrupt and softirq time: bench/run.sh counts it as other load.
all_busy_ticks() { local a; a=($(head -n1 /proc/stat)); echo $(( a[1] + a[2] + a[3] + a[6] + a[7] + a[8] )); }
cpu_ticks() { # N: all busy ticks of CPU N (user, nice, system, irq, softirq, steal)
  local a; a=($(grep "^cpu$1 " /proc/stat)); echo $(( a[1] + a[2] + a[3] + a[6] + a[7] + a[8] ))
}
proc_ticks() { # utime + stime of a process, all its threads (0 once it is gone)
  local f; f=($(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || echo x x x x x x x x x x x 0 0))
  echo $(( f[11] + f[12] ))
}
ticks_of() { local p s=0; for p; do s=$(( s + $(proc_ticks "$p") )); done; echo "$s"; }
vm_kib() { sed -nE "s/^$2:[[:space:]]+([0-9]+) kB/\1/p" "/proc/$1/status" 2>/dev/null || echo 0; } # pid VmRSS|VmHWM
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cpu_busy() { # percent of all CPUs busy over 1 s
  local a b
  a=($(head -n1 /proc/stat)); sleep 1; b=($(head -n1 /proc/stat))
  local idle=$(( b[4] + b[5] - a[4] - a[5] )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

# wait_quiet label: block until no cargo, rustc or go process has been seen for
# QUIET_SECS and the 1-minute load average is below QUIET_LOAD. Sets
# QUIET_NOTE (empty when quiet was reached) and returns 0 either way; after
# QUIET_MAX it gives up and says so in QUIET_NOTE.
wait_quiet() {
  QUIET_NOTE=
  [[ ${BENCH_NO_QUIET:-} == 1 ]] && return 0
  local start=$SECONDS since=$SECONDS last=0 busy load
  QUIET_NOTE=
  while :; do
    busy=$(pgrep -x cargo; pgrep -x rustc; pgrep -x go) || true
    [[ -n $busy ]] && since=$SECONDS
    load=$(cut -d' ' -f1 /proc/loadavg)
    if (( SECONDS - since >= QUIET_SECS )) && awk -v l="$load" -v m="$QUIET_LOAD" 'BEGIN { exit !(l < m) }'; then
      (( SECONDS - start > 5 )) && log "$1: quiet after $(( SECONDS - start )) s (load $load)"
      return 0
    fi
    if (( SECONDS - start >= QUIET_MAX )); then
      QUIET_NOTE="not quiet after ${QUIET_MAX}s (load $load$( [[ -n $busy ]] && echo ", cargo/rustc/go running"))"
      log "$1: $QUIET_NOTE; measuring anyway, marked"
      return 0
    fi
    if (( SECONDS - last >= 60 )); then
      last=$SECONDS
      log "$1: waiting for a quiet machine (load $load, $( [[ -n $busy ]] && echo "cargo/rustc/go running" || echo "no build for $(( SECONDS - since )) s"))"
    fi
    sleep 2
  done
}

# cargo build --release of the given packages, after waiting until no other
# cargo runs (two builds on 2 cores would both crawl and fight over the lock).
release_build() {
  local i=0
  while pgrep -x cargo >/dev/null; do
    (( i++ % 30 == 0 )) && log "waiting for another cargo to finish before the release build"
    sleep 2
  done
  log "cargo build --release $* (no-op when up to date)"
  (cd "$root" && cargo build --release "$@" >&2)
}

ensure_vegeta() { # sets VEGETA
  VEGETA=$CACHE/bin/vegeta
  if [[ ! -x $VEGETA ]]; then
    command -v go >/dev/null || die "go is required to build vegeta"
    log "building vegeta into $CACHE/bin (once; cached)"
    mkdir -p "$CACHE/bin"
    GOBIN=$CACHE/bin go install github.com/tsenart/vegeta/v12@latest >&2
  fi
  VEGETA_VERSION=$(go version -m "$VEGETA" 2>/dev/null | awk '$1 == "mod" { print $3; exit }')
  VEGETA_VERSION=${VEGETA_VERSION:-unknown}
}

ensure_benchapp() { # sets BENCHAPP: bench/benchapp built once per source version
  command -v go >/dev/null || die "go is required to build bench/benchapp"
  local stamp
  stamp=$(cat "$here/benchapp/go.mod" "$here"/benchapp/*.go | sha256sum | cut -c1-12)
  BENCHAPP=$CACHE/bin/benchapp-$stamp
  if [[ ! -x $BENCHAPP ]]; then
    log "building bench/benchapp into $BENCHAPP"
    mkdir -p "$CACHE/bin"
    (cd "$here/benchapp" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$BENCHAPP" .) >&2
  fi
}

machine_line() {
  local cpu
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
  echo "$(nproc) CPUs, ${cpu:-unknown CPU}, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
}
source_line() {
  local rev dirty
  rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$root" status --porcelain -- token-server sidecar tokens proto 2>/dev/null | wc -l)
  (( dirty > 0 )) && echo "$rev + $dirty uncommitted changes in token-server/sidecar/tokens/proto" || echo "$rev"
}

# Exact nearest-rank percentiles of the numbers on stdin: prints n p50 p90 p99 max
percentiles() {
  sort -n | awk 'function rank(p,  r) { r = int(NR * p); if (r < NR * p) r++; return r < 1 ? 1 : r }
    { v[NR] = $1 } END { if (NR == 0) { print 0, 0, 0, 0, 0; exit }
      print NR, v[rank(0.50)], v[rank(0.90)], v[rank(0.99)], v[NR] }'
}

# pg_start cpu: a throwaway PostgreSQL (tests/pg/throwaway.sh) with the
# postmaster and its children pinned to `cpu` (backends forked later inherit
# it). Exports TOKENMESH_TEST_DATABASE_URL; sets PG_VERSION, PG_SETTINGS.
pg_started=
pg_start() {
  log "starting a throwaway PostgreSQL (tests/pg/throwaway.sh)"
  eval "$("$root/tests/pg/throwaway.sh" start)"
  pg_started=1
  PG_VERSION=$(psql "$TOKENMESH_TEST_DATABASE_URL" -Atc 'show server_version')
  PG_SETTINGS=$(psql "$TOKENMESH_TEST_DATABASE_URL" -Atc "select string_agg(name || '=' || setting, ', ' order by name) from pg_settings where name in ('fsync', 'wal_init_zero', 'synchronous_commit', 'shared_buffers', 'max_connections')")
  postmaster=$(head -n1 "$TOKENMESH_TEST_PGDATA/postmaster.pid")
  local p
  for p in "$postmaster" $(pgrep -P "$postmaster"); do taskset -a -p -c "$1" "$p" >/dev/null; done
}
pg_stop() {
  [[ -n $pg_started ]] || return 0
  "$root/tests/pg/throwaway.sh" stop >&2 || true
  pg_started=
}
# PostgreSQL's CPU ticks: the postmaster's own and those of the children it
# reaped (cutime, cstime: autovacuum workers come and go), plus its live
# children; 0 when none runs.
pg_ticks() {
  [[ -n $pg_started ]] || { echo 0; return; }
  local f c s
  f=($(sed 's/^.*) //' "/proc/$postmaster/stat"))
  s=$(( f[11] + f[12] + f[13] + f[14] ))
  for c in $(pgrep -P "$postmaster"); do s=$(( s + $(proc_ticks "$c") )); done
  echo "$s"
}
