#!/usr/bin/env bash
# Start the local stack and print the `export` lines a shell needs to use it:
#   - a Ray head with the dashboard and jobs API on http://127.0.0.1:8265 (`ray job submit`);
#   - the local S3 server (python -m deblur.local_s3: moto, objects in memory) on 127.0.0.1:9000.
# Nothing else is created (no bucket, no data). Idempotent: what already runs is left alone and
# said so. infra/local/stop.sh stops exactly these two; infra/local/status.sh says what runs.
# Settings: see common.sh (ports, CPUs, state dir, RAY_AUTH_MODE).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [ -z "$python" ] || [ -z "$ray" ]; then die "no python3 and ray found: run scripts/dev.sh setup first"; fi
auth_mode="${RAY_AUTH_MODE:-token}"
case "$auth_mode" in
    token | disabled) ;;
    *) die "RAY_AUTH_MODE=$auth_mode: use token or disabled" ;;
esac
num_cpus="${DEBLUR_NUM_CPUS:-$(getconf _NPROCESSORS_ONLN)}"
mkdir -p "$state"

# The local server's settings come from the package itself (deblur.local_s3), shell-quoted.
s3_exports="$("$python" - "$s3_port" <<'EOF'
import shlex
import sys

from deblur.local_s3 import LocalS3Server

for key, value in LocalS3Server(port=int(sys.argv[1])).environment().items():
    print(f"export {key}={shlex.quote(value)}")
EOF
)" || die "the deblur package is not importable with $python: run scripts/dev.sh setup first"

# Run "$@" in the background in a session (and so a process group) of its own, so that stop.sh
# can end it and, if need be, its whole group, without touching anything else on the machine.
detach() {
    "$python" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" </dev/null &
    started=$!
}

wait_until_answering() {  # URL SECONDS PID LOG
    local deadline=$((SECONDS + $2))
    until http_ok "$1"; do
        any_alive "$3" || die "it exited; see $4"
        [ $SECONDS -lt $deadline ] || die "no answer from $1 within $2 s; see $4"
        sleep 0.5
    done
}

# --- local S3 server ---------------------------------------------------------------------------
if pid="$(running_pid s3 "$s3_marker")"; then
    echo "local S3: already running (pid $pid)"
else
    ! port_in_use "$s3_port" || die "port $s3_port is taken by another program: set DEBLUR_S3_PORT"
    detach "$python" -m deblur.local_s3 --port "$s3_port" >"$state/s3.log" 2>&1
    echo "$started" >"$state/s3.pid"
    wait_until_answering "http://127.0.0.1:$s3_port/moto-api/" 30 "$started" "$state/s3.log"
    echo "local S3: started on http://127.0.0.1:$s3_port (pid $started, log $state/s3.log)"
fi

# --- Ray head ----------------------------------------------------------------------------------
if pid="$(running_pid ray "$ray_marker")"; then
    echo "Ray head: already running (pid $pid)"
else
    for port in "$ray_port" "$dashboard_port"; do
        ! port_in_use "$port" || die "port $port is taken (another Ray?): set DEBLUR_RAY_PORT / DEBLUR_DASHBOARD_PORT"
    done
    if [ "$auth_mode" = token ]; then
        # Creates ~/.ray/auth_token if there is none; `ray job submit` and the dashboard use it.
        "$ray" get-auth-token --generate >/dev/null || die "cannot create a Ray auth token"
    fi
    # shellcheck disable=SC2086  # DEBLUR_RAY_START_ARGS is a list of flags
    (
        # `python jobs/X.py` entrypoints of submitted jobs must find this interpreter and the
        # project; and the head's jobs reach the local S3 server without any runtime env.
        PATH="$(dirname "$python"):$PATH"
        export PATH RAY_AUTH_MODE="$auth_mode"
        # On SIGTERM (stop.sh) tear down at once: the 30 s drain is for Serve behind a load
        # balancer, not for a single local node.
        export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
        eval "$s3_exports"
        detach "$ray" start --head --block --disable-usage-stats \
            --num-cpus="$num_cpus" --port="$ray_port" \
            --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" \
            --temp-dir="$ray_tmp" ${DEBLUR_RAY_START_ARGS:-}
        echo "$started" >"$state/ray.pid"
    ) >"$state/ray.log" 2>&1
    pid="$(cat "$state/ray.pid")"
    wait_until_answering "http://127.0.0.1:$dashboard_port/api/gcs_healthz" 90 "$pid" "$state/ray.log"
    echo "Ray head: started, jobs API on http://127.0.0.1:$dashboard_port (pid $pid, log $state/ray.log)"
fi

{
    echo "$s3_exports"
    # Where `ray job submit/status/logs` go. Not RAY_ADDRESS=http://...: Ray 2.60's ray.init()
    # rejects an HTTP RAY_ADDRESS, so a `deblur train` run in the same shell would fail.
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dashboard_port"
    # The same for `serve deploy/status/shutdown`, which read their own variable.
    echo "export RAY_DASHBOARD_ADDRESS=http://127.0.0.1:$dashboard_port"
    echo "export RAY_AUTH_MODE=$auth_mode"
    echo "# Optional: make \`deblur synth|train|...\` run here join this head instead of starting Ray:"
    echo "# export RAY_ADDRESS=127.0.0.1:$ray_port"
} >"$state/env.sh"
echo
echo "# Paste these lines, or: source $state/env.sh"
cat "$state/env.sh"
