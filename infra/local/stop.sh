#!/usr/bin/env bash
# Stop exactly what infra/local/start.sh started: the Ray head and the local S3 server, each by
# its pid file (SIGTERM; after 30 s SIGTERM to its process group and descendants; SIGKILL after
# 40 s). Not `ray stop`: that stops every Ray process on the machine, other people's too. The
# local S3 server keeps objects in memory: they are gone after this. Idempotent.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

wait_gone() {  # SECONDS PID...: true once none of the pids is alive
    local deadline=$((SECONDS + $1))
    shift
    while any_alive "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

stop_one() {  # NAME MARKER LABEL
    local pid kids
    if ! pid="$(running_pid "$1" "$2")"; then
        echo "$3: not running"
        rm -f "$state/$1.pid"
        return 0
    fi
    kids="$(descendants "$pid")"
    # The leader first: `ray start --block` and deblur.local_s3 shut their children down
    # themselves on SIGTERM. Signalling the whole group at once would kill the GCS under the
    # head's own shutdown, which then hangs.
    kill -TERM "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086  # $kids is a list of pids
    if ! wait_gone 30 "$pid" $kids; then
        echo "$3: still running after 30 s, sending SIGTERM to the rest"
        kill -TERM -- "-$pid" $kids 2>/dev/null || true
        if ! wait_gone 10 "$pid" $kids; then
            echo "$3: killing what is left"
            kill -KILL -- "-$pid" $kids 2>/dev/null || true
        fi
    fi
    rm -f "$state/$1.pid"
    echo "$3: stopped (pid $pid)"
}

[ -n "$python" ] || die "no python3 found"
stop_one ray "$ray_marker" "Ray head"
stop_one s3 "$s3_marker" "local S3"
rm -f "$state/env.sh"
