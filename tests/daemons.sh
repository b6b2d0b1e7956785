# Processes a test script starts and stops (sourced by tests/e2e/control-plane.sh and
# tests/cluster/cluster.sh). Needs: $state (where pid files and logs go), log and die.

# start_daemon NAME CMD...: runs CMD in its own session, its output in $state/NAME.log.
start_daemon() {
    local name=$1
    shift
    setsid "$@" >"$state/$name.log" 2>&1 </dev/null &
    echo $! >"$state/$name.pid"
}

# A pid that runs (an exited daemon may stay a zombie until init reaps it).
running() { kill -0 "$1" 2>/dev/null && [[ $(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) != Z ]]; }
alive() { [[ -f $state/$1.pid ]] && running "$(cat "$state/$1.pid")"; }

# free_port: a TCP port free on loopback now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready NAME TIMEOUT CHECK...: until CHECK succeeds, while daemon NAME runs (NAME -: no daemon to watch).
wait_ready() {
    local name=$1 timeout=$2 deadline=$((SECONDS + $2)) log="$state/$1.log"
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [[ $name != - ]] && ! alive "$name"; then
            tail -n 30 "$log" >&2
            die "$name exited while starting (log: $log)"
        fi
        if ((SECONDS > deadline)); then
            [[ $name == - ]] || tail -n 30 "$log" >&2
            die "not ready after $timeout s: ${name/#-/$*} (logs: $state)"
        fi
        sleep 0.5
    done
}

# stop_one NAME: SIGTERM, at most 30 s, then SIGKILL.
stop_one() {
    local name=$1 pid i
    [[ -f $state/$name.pid ]] || return 0
    pid="$(cat "$state/$name.pid")"
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            log "$name ($pid) did not stop in 30 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$state/$name.pid"
}
