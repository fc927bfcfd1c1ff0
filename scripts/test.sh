#!/usr/bin/env bash
# Install the development dependencies into <repo>/.venv (created if missing) and run the
# whole test suite with pytest. Extra arguments are passed to pytest:
#
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -x -k loop       # stop at the first failure, only tests matching "loop"
#
# Exit status: pytest's, except that "no tests collected" (pytest exit code 5) is a failure.
#
# Environment knobs:
#   PYTHON=python3.12                interpreter used to create .venv (default: first python3.x >= 3.10)
#   LABTASKER_TEST_SKIP_INSTALL=1    do not run pip (the venv must already be set up)
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_DIR="$REPO_DIR/.venv"
cd "$REPO_DIR"

find_python() {
    local candidates=()
    if [[ -n "${PYTHON:-}" ]]; then
        candidates=("$PYTHON")
    else
        candidates=(python3 python3.14 python3.13 python3.12 python3.11 python3.10 python)
    fi
    local py
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    PYTHON_BIN=$(find_python) || {
        echo "ERROR: no Python >= 3.10 found (set PYTHON=/path/to/python3)" >&2
        exit 1
    }
    echo "==> creating $VENV_DIR with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv "$VENV_DIR"
fi
VPY="$VENV_DIR/bin/python"

if [[ "${LABTASKER_TEST_SKIP_INSTALL:-0}" != 1 ]]; then
    echo "==> pip install -e '.[dev,demo]' into $VENV_DIR"
    "$VPY" -m pip install --quiet --disable-pip-version-check -e "${REPO_DIR}[dev,demo]"
fi

# The suite starts its own servers and client roots; do not leak a surrounding labtasker
# task context into it.
unset LABTASKER_TASK_ID LABTASKER_WORKER_ID LABTASKER_LOG_DIR
export PATH="$VENV_DIR/bin:$PATH"

echo "==> python -m pytest $*"
status=0
"$VPY" -m pytest "$@" || status=$?

case $status in
    0) echo "==> tests passed" ;;
    5)
        echo "==> FAILED: pytest collected no tests (exit code 5)" >&2
        status=1
        ;;
    *) echo "==> FAILED: pytest exit code $status" >&2 ;;
esac
exit "$status"
