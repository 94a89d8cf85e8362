#!/usr/bin/env bash
# Say what of the local stack runs (infra/local/start.sh): the Ray head and its jobs API, the
# local S3 server, and the exports to use them. Exit status 0 when both run, 3 otherwise.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ -n "$python" ] || die "no python3 found"
up=0

if pid="$(running_pid ray "$ray_marker")"; then
    url="http://127.0.0.1:$dashboard_port"
    if http_ok "$url/api/gcs_healthz"; then answer="jobs API answering on $url"; else answer="jobs API NOT answering on $url"; fi
    echo "Ray head: running (pid $pid), $answer; log $state/ray.log"
    up=$((up + 1))
else
    echo "Ray head: not running"
fi

if pid="$(running_pid s3 "$s3_marker")"; then
    url="http://127.0.0.1:$s3_port"
    if http_ok "$url/moto-api/"; then answer="answering on $url"; else answer="NOT answering on $url"; fi
    echo "local S3: running (pid $pid), $answer; log $state/s3.log"
    up=$((up + 1))
else
    echo "local S3: not running"
fi

if [ "$up" -eq 2 ] && [ -f "$state/env.sh" ]; then
    echo
    echo "# source $state/env.sh"
    cat "$state/env.sh"
fi
[ "$up" -eq 2 ] || exit 3
