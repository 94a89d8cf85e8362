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

# The browser tests drive Debian's chromium (Playwright's own browser download does not work here).
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's chromium for the browser tests"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    else
        echo "==> chromium not found: the browser tests will fail (install Debian's chromium package)" >&2
    fi
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup)
        setup
        ;;
    test)
        setup
        ensure_chromium
        echo "==> ruff"
        "$venv/bin/ruff" check --no-cache .  # a stale cache once hid an import-order error that CI found
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
