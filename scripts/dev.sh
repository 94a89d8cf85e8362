#!/usr/bin/env bash
# One entry point for a fresh machine with nothing but Python 3.11:
#   scripts/dev.sh test    set up .venv, lint, run the test suite
#   scripts/dev.sh demo    set up .venv, deblur a sample video (the main job)
#   scripts/dev.sh setup   only set up .venv
# Setup is idempotent: it reinstalls only when pyproject.toml changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${DEBLUR_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

setup() {
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> creating $venv"
        "$python" -m venv "$venv"
    fi
    local stamp="$venv/.deblur-installed" want
    want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    echo "==> installing dependencies into $venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The CPU build of torch first: left to itself pip would pull a multi-GB CUDA build.
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0" \
        || "$venv/bin/python" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    "$venv/bin/python" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup)
        setup
        ;;
    test)
        setup
        echo "==> ruff"
        "$venv/bin/ruff" check .
        echo "==> pytest"
        "$venv/bin/python" -m pytest "$@"
        ;;
    demo)
        setup
        exec "$venv/bin/python" -m deblur.demo "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh {test|demo|setup} [args]" >&2
        exit 2
        ;;
esac
