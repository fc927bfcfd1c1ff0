#!/usr/bin/env bash
# Interoperability job: drive the labtasker 1.0.1 client from PyPI -- and, with the
# same commands and config, our own client -- against this checkout's server.
#
#   bash scripts/interop.sh                 # everything in tests/interop
#   bash scripts/interop.sh -k v1 -x        # extra arguments go to pytest
#
# Steps:
#   1. <repo>/.venv (this checkout, editable, with pytest) is created/installed if missing;
#   2. the interop venv ($LABTASKER_INTEROP_VENV, default <repo>/.venv-interop) is created if
#      missing and gets labtasker==1.0.1 from the package index unless it already has it;
#   3. `pytest tests/interop` runs in .venv with LABTASKER_INTEROP_VENV pointing at the
#      interop venv (without that variable, e.g. in scripts/test.sh, the interop tests skip
#      themselves). The tests start our server (.venv) on a temporary SQLite file and a free
#      port and run both clients as child processes.
#
# Exit status: pytest's; "no tests collected" (5) is a failure, and so is a missing interop
# venv (LABTASKER_INTEROP_REQUIRED=1: the tests fail instead of skipping).
#
# Environment knobs:
#   PYTHON=python3.11                  interpreter for new venvs (default: first python3 >= 3.10)
#   LABTASKER_INTEROP_VENV=/path       where the 1.0.1 client lives
#   LABTASKER_INTEROP_SKIP_INSTALL=1   no pip at all (both venvs must be ready)
#   LABTASKER_INTEROP_SERVER=v1        run the tests against the 1.0.1 server instead (checks
#                                      the tests themselves; see tests/interop/conftest.py)
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MAIN_VENV="$REPO_DIR/.venv"
INTEROP_VENV="${LABTASKER_INTEROP_VENV:-$REPO_DIR/.venv-interop}"
V1_VERSION=1.0.1
SKIP_INSTALL="${LABTASKER_INTEROP_SKIP_INSTALL:-0}"
cd "$REPO_DIR"
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"
started=$(date +%s)

# pip with its (noisy) output in a log file that is shown only when pip fails
quiet_pip() {
    local venv=$1
    shift
    local log="$venv/pip-install.log"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
        echo "ERROR: pip install $* failed in $venv:" >&2
        grep -v "^WARNING: Location" "$log" | tail -n 40 >&2
        return 1
    fi
}

# The whole run is one function: bash parses it completely before running it, so editing
# this file during a run cannot make bash re-execute parts of it.
main() {
    local python_bin
    # 1. our checkout
    if [[ ! -x "$MAIN_VENV/bin/python" ]]; then
        [[ "$SKIP_INSTALL" == 1 ]] && { echo "ERROR: $MAIN_VENV missing" >&2; exit 1; }
        echo "==> creating $MAIN_VENV"
        python_bin=$(find_python) || exit 1
        "$python_bin" -m venv "$MAIN_VENV"
    fi
    if ! "$MAIN_VENV/bin/python" -c 'import labtasker.server, pytest, httpx' 2>/dev/null; then
        [[ "$SKIP_INSTALL" == 1 ]] && { echo "ERROR: labtasker/pytest not installed in $MAIN_VENV" >&2; exit 1; }
        echo "==> pip install -e '.[dev]' into $MAIN_VENV"
        quiet_pip "$MAIN_VENV" -e "${REPO_DIR}[dev]"
    fi

    # 2. the 1.0.1 client (reused when present)
    installed_v1() {
        "$INTEROP_VENV/bin/python" -c \
            'import importlib.metadata as m; print(m.version("labtasker"))' 2>/dev/null || true
    }
    if [[ ! -x "$INTEROP_VENV/bin/python" ]]; then
        [[ "$SKIP_INSTALL" == 1 ]] && { echo "ERROR: $INTEROP_VENV missing" >&2; exit 1; }
        echo "==> creating $INTEROP_VENV"
        python_bin=$(find_python) || exit 1
        "$python_bin" -m venv "$INTEROP_VENV"
        # keep the venv out of `git status` without touching the repository's .gitignore
        echo '*' >"$INTEROP_VENV/.gitignore"
    fi
    if [[ "$(installed_v1)" != "$V1_VERSION" ]]; then
        [[ "$SKIP_INSTALL" == 1 ]] && { echo "ERROR: labtasker $V1_VERSION not in $INTEROP_VENV" >&2; exit 1; }
        echo "==> pip install labtasker==$V1_VERSION into $INTEROP_VENV"
        quiet_pip "$INTEROP_VENV" "labtasker==$V1_VERSION"
    fi
    echo "==> labtasker $(installed_v1) in $INTEROP_VENV; ours: $("$MAIN_VENV/bin/python" -c \
        'import labtasker; print(labtasker.__version__)') in $MAIN_VENV"

    # 3. the tests
    export LABTASKER_INTEROP_VENV="$INTEROP_VENV"
    export LABTASKER_INTEROP_REQUIRED=1
    local status=0
    "$MAIN_VENV/bin/python" -m pytest tests/interop -p no:cacheprovider -rs "$@" || status=$?
    if [[ $status == 5 ]]; then
        echo "ERROR: no interop tests were collected" >&2
        status=1
    fi
    echo "==> interop run finished in $(($(date +%s) - started)) s (exit $status)"
    return $status
}

main "$@"
exit $?
