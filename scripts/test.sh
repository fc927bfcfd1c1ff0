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
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    PYTHON_BIN=$(find_python) || exit 1
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

# The suite runs twice: on SQLite (everything) and on PostgreSQL (every test that reaches the
# storage through the server/queue_env/scratch_dbs fixtures, chosen in tests/conftest.py; the
# backend-independent ones, and those marked client_side, ran on SQLite already). PostgreSQL scratch databases are created
# per run on $LABTASKER_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
# The two halves run at the same time (most tests wait on servers, loops and timeouts rather
# than on the CPU); LABTASKER_TEST_SERIAL=1 runs them one after the other. The PostgreSQL
# half's output is printed after the SQLite half's.
# Without PostgreSQL that half is skipped with a message; with LABTASKER_REQUIRE_POSTGRES=1
# (set by .ci/run) a missing PostgreSQL is a failure.

run_pytest() { # label, pytest args...
    local label=$1 rc=0
    shift
    echo "==> [$label] python -m pytest $*"
    "$VPY" -m pytest "$@" || rc=$?
    case $rc in
        0) echo "==> [$label] tests passed" ;;
        5) echo "==> [$label] FAILED: pytest collected no tests (exit code 5)" >&2; rc=1 ;;
        *) echo "==> [$label] FAILED: pytest exit code $rc" >&2 ;;
    esac
    return "$rc"
}

TMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/labtasker-tests.XXXXXX")
trap 'rm -rf "$TMP_ROOT"' EXIT

run_pg_half() {
    LABTASKER_TEST_BACKEND=postgresql run_pytest postgresql -p no:cacheprovider --basetemp "$TMP_ROOT/pg" "$@"
}

pg_status=0
pg_pid=""
if [[ "${LABTASKER_TEST_SKIP_POSTGRES:-0}" == 1 ]]; then
    echo "==> PostgreSQL half skipped (LABTASKER_TEST_SKIP_POSTGRES=1)"
elif "$VPY" - <<'PY'
import os, sys
import psycopg
url = os.environ.get("LABTASKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
try:
    psycopg.connect(url, connect_timeout=3).close()
except Exception as exc:
    print(f"==> PostgreSQL not reachable at {url}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
then
    if [[ "${LABTASKER_TEST_SERIAL:-0}" == 1 ]]; then
        run_pg_half "$@" || pg_status=$?
    else
        echo "==> [postgresql] running in the background; its output follows the SQLite half's"
        run_pg_half "$@" >"$TMP_ROOT/pg.log" 2>&1 &
        pg_pid=$!
    fi
elif [[ "${LABTASKER_REQUIRE_POSTGRES:-0}" == 1 ]]; then
    echo "==> FAILED: PostgreSQL is required (LABTASKER_REQUIRE_POSTGRES=1) but not reachable" >&2
    pg_status=1
else
    echo "==> SKIPPED: the PostgreSQL half of the suite (no PostgreSQL reachable); only SQLite was tested"
fi

status=0
LABTASKER_TEST_BACKEND=sqlite run_pytest sqlite "$@" || status=$?
if [[ -n "$pg_pid" ]]; then
    wait "$pg_pid" || pg_status=$?
    cat "$TMP_ROOT/pg.log"
fi
if [[ $status != 0 ]]; then
    echo "==> FAILED: the SQLite half failed (see above)" >&2
fi
if [[ $pg_status != 0 ]]; then
    echo "==> FAILED: the PostgreSQL half failed (see above)" >&2
    status=$pg_status
fi
exit "$status"
