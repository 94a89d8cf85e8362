# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts
# Shared by start.sh, stop.sh and status.sh (sourced, not run on its own).
#
# Settings, all optional, read from the environment:
#   DEBLUR_LOCAL_STATE     pid files, logs, exports and Ray's temp dir (~/.deblur/local)
#   DEBLUR_NUM_CPUS        CPUs the Ray head offers (all cores)
#   DEBLUR_RAY_PORT        Ray's GCS port, what `RAY_ADDRESS=127.0.0.1:PORT` joins (6379)
#   DEBLUR_DASHBOARD_PORT  dashboard and jobs API (8265)
#   DEBLUR_S3_PORT         local S3 server (9000)
#   DEBLUR_RAY_START_ARGS  more `ray start` flags, split on spaces (e.g. other ports: a second
#                          Ray on this machine already holds the default agent/worker ports)
#   RAY_AUTH_MODE          token (default here) or disabled: Ray's token authentication

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="${DEBLUR_LOCAL_STATE:-$HOME/.deblur/local}"
ray_port="${DEBLUR_RAY_PORT:-6379}"
dashboard_port="${DEBLUR_DASHBOARD_PORT:-8265}"
s3_port="${DEBLUR_S3_PORT:-9000}"
# A temp dir of its own: Ray writes the "current cluster" file there, so a plain `ray.init()`
# elsewhere on this machine (the test suite, a local `deblur train`) starts its own instance
# instead of silently joining this head.
ray_tmp="$state/ray"

# The project's venv when there is one, else whatever is on PATH.
if [ -x "$root/.venv/bin/python" ]; then
    python="$root/.venv/bin/python"
    ray="$root/.venv/bin/ray"
else
    python="$(command -v python3 || true)"
    ray="$(command -v ray || true)"
fi

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# The pid in $state/NAME.pid if that process is alive and is still ours: a pid file left from
# before a reboot may name a pid that now belongs to something else, hence the MARKER, a string
# that our process's command line contains.
running_pid() {  # NAME MARKER
    local file="$state/$1.pid" pid
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [ -n "$pid" ] || return 1
    ps -ww -p "$pid" -o args= 2>/dev/null | grep -q -F -- "$2" || return 1
    echo "$pid"
}

ray_marker="--temp-dir=$ray_tmp"
s3_marker="-m deblur.local_s3"

# Every live descendant of PID (Ray's workers and a job's driver may sit in process groups of
# their own, so a signal to our group alone could miss them).
descendants() {  # PID
    local table queue=("$1") out=() p c
    table="$(ps -e -o pid= -o ppid=)"
    while [ ${#queue[@]} -gt 0 ]; do
        p="${queue[0]}"
        queue=("${queue[@]:1}")
        # shellcheck disable=SC2013  # pids are words
        for c in $(awk -v p="$p" '$2 == p {print $1}' <<<"$table"); do
            out+=("$c")
            queue+=("$c")
        done
    done
    echo "${out[@]}"
}

any_alive() {  # PID...: true if one of them is alive (zombies do not count)
    local p
    for p in "$@"; do
        ps -p "$p" -o stat= 2>/dev/null | grep -q -v '^Z' && return 0
    done
    return 1
}

http_ok() {  # URL: true if it answers 2xx within 2 s
    "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
}

port_in_use() {  # PORT
    "$python" -c 'import socket, sys; s = socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"
}
