#!/usr/bin/env bash
# End-to-end demo of labtasker on a real experiment (examples/digits), from a fresh clone.
#
#   bash scripts/demo.sh
#
# What it does, printing each step:
#   1. creates (or reuses) the virtualenv .venv-demo and installs `.[demo]` into it
#      (a regular, non-editable install: the demo runs what a user would get);
#   2. starts `labtasker-server serve` on a free port with a throw-away SQLite database in a
#      temporary directory;
#   3. runs `labtasker init` non-interactively into a temporary LABTASKER_ROOT;
#   4. submits a 12-task grid: half with `labtasker task submit --grid` (submit_grid.sh), half
#      with `labtasker.submit_sweep` (submit_grid.py);
#   5. runs one `labtasker loop --parallel 2` (two slots, each a worker) until the queue is
#      drained, printing the dashboard's URL (log in with the queue name and password
#      shown) to watch them live;
#   6. prints the results table and stops the server.
# Exit status 0 only if every task ended `success`.
#
# Environment knobs:
#   PYTHON=python3.12          interpreter used to create the venv (default: first python3.x >= 3.10)
#   LABTASKER_DEMO_VENV=DIR    venv location (default: <repo>/.venv-demo)
#   LABTASKER_DEMO_TIMEOUT=S   give up on the workers after S seconds (default 600)
#   LABTASKER_DEMO_KEEP=1      keep the temporary directory (database, logs) for inspection
#   LABTASKER_DEMO_HOLD=S      keep the server up S seconds after the grid, to look at the dashboard
#   LABTASKER_DEMO_SCREENSHOTS=DIR  save dashboard screenshots into DIR: the overview 20 s into
#                              the grid (LABTASKER_DEMO_SCREENSHOT_DELAY), the plot after it
#                              (scripts/dashboard_screenshots.py; needs the dev extra's
#                              Playwright and /usr/bin/chromium)
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXAMPLE_DIR="$REPO_DIR/examples/digits"
VENV_DIR=${LABTASKER_DEMO_VENV:-$REPO_DIR/.venv-demo}
WORKER_TIMEOUT=${LABTASKER_DEMO_TIMEOUT:-600}
QUEUE_NAME=digits-demo
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n==> [%d] %s\n' "$step_no" "$*"
}
info() { printf '    %s\n' "$*"; }
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# State shared with the cleanup trap.
TMP_DIR=""
SERVER_PID=""
WORKER_PIDS=()

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            info "server did not stop on SIGTERM, sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

any_alive() {
    local pid
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then return 0; fi
    done
    return 1
}

# Interrupted while the loop runs: ask it to stop (it stops its jobs and hands their tasks
# back) while the server is still up, then SIGKILL whatever is left after 30 s.
stop_workers() {
    local live=() pid
    for pid in "${WORKER_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then live+=("$pid"); fi
    done
    WORKER_PIDS=()
    ((${#live[@]})) || return 0
    printf '\n==> stopping the workers (pids %s)\n' "${live[*]}"
    kill -TERM "${live[@]}" 2>/dev/null || true
    for _ in $(seq 1 300); do
        any_alive "${live[@]}" || return 0
        sleep 0.1
    done
    printf '    workers still running after 30 s, sending SIGKILL\n'
    kill -KILL "${live[@]}" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_workers
    if [[ -n "$SERVER_PID" ]]; then
        if ((status != 0)) && [[ -n "$TMP_DIR" && -f "$TMP_DIR/server.log" ]]; then
            printf '\n--- last lines of the server log ---\n' >&2
            tail -n 30 "$TMP_DIR/server.log" >&2 || true
        fi
        printf '\n==> stopping the server (pid %s)\n' "$SERVER_PID"
        stop_server
    fi
    if [[ -n "$TMP_DIR" && -d "$TMP_DIR" ]]; then
        if [[ "${LABTASKER_DEMO_KEEP:-0}" == 1 ]]; then
            printf '==> kept the temporary directory %s\n' "$TMP_DIR"
        else
            rm -rf "$TMP_DIR"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
step "Finding a Python >= 3.10"
PYTHON_BIN=$(find_python) || exit 1
info "using $PYTHON_BIN ($("$PYTHON_BIN" -c 'import sys; print(sys.version.split()[0])'))"

# ---------------------------------------------------------------------------------------
step "Preparing the virtualenv $VENV_DIR"
if [[ -x "$VENV_DIR/bin/python" ]] && "$VENV_DIR/bin/python" -c 'import sys' 2>/dev/null; then
    info "reusing the existing virtualenv"
else
    rm -rf "$VENV_DIR"
    "$PYTHON_BIN" -m venv "$VENV_DIR" ||
        die "could not create a virtualenv (on Debian/Ubuntu: apt-get install python3-venv)"
    info "created"
fi
# Keep the demo venv out of `git status` without touching the repository's .gitignore.
[[ -f "$VENV_DIR/.gitignore" ]] || printf '*\n' >"$VENV_DIR/.gitignore"
VPY="$VENV_DIR/bin/python"

step "Installing labtasker with the demo extra (pip install '.[demo]')"
TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/labtasker-demo.XXXXXX")
info "temporary directory (database, client config, logs): $TMP_DIR"
info "pip install ... (the first run downloads the dependencies and can take a minute)"
# pip always rebuilds and reinstalls a local directory, so a re-run picks up the current
# checkout; already-satisfied dependencies are not downloaded again. Its chatter goes to a
# log file that is shown only if the installation fails.
if ! "$VPY" -m pip install --disable-pip-version-check "${REPO_DIR}[demo]" \
    >"$TMP_DIR/pip.log" 2>&1; then
    tail -n 40 "$TMP_DIR/pip.log" >&2
    die "pip install failed (last 40 lines of its log above)"
fi
for tool in labtasker labtasker-server; do
    [[ -x "$VENV_DIR/bin/$tool" ]] || die "$tool was not installed into $VENV_DIR/bin"
done
info "labtasker $("$VPY" -c 'import labtasker; print(labtasker.__version__)'), scikit-learn $("$VPY" -c 'import sklearn; print(sklearn.__version__)')"

# Everything below runs the venv's tools; `python` in the loop command is the venv's python.
export PATH="$VENV_DIR/bin:$PATH"
unset LABTASKER_TASK_ID LABTASKER_WORKER_ID LABTASKER_LOG_DIR

# ---------------------------------------------------------------------------------------
step "Starting labtasker-server with a temporary SQLite database"
PORT=$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
DB_URL="sqlite:///$TMP_DIR/demo.db"
API_URL="http://127.0.0.1:$PORT"
info "labtasker-server serve --host 127.0.0.1 --port $PORT --db-url $DB_URL"
(cd "$TMP_DIR" && exec labtasker-server serve --host 127.0.0.1 --port "$PORT" --db-url "$DB_URL") \
    >"$TMP_DIR/server.log" 2>&1 &
SERVER_PID=$!

info "waiting for $API_URL/health ..."
healthy=0
for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        die "the server exited during start-up"
    fi
    if "$VPY" - "$API_URL/health" <<'PY' 2>/dev/null; then
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=1) as resp:
    sys.exit(0 if resp.status == 200 else 1)
PY
        healthy=1
        break
    fi
    sleep 0.1
done
((healthy)) || die "the server did not become healthy within 30 s"
info "server is up (pid $SERVER_PID)"

# ---------------------------------------------------------------------------------------
step "Initialising the client config (labtasker init, non-interactive)"
export LABTASKER_ROOT="$TMP_DIR/labtasker-root"
PASSWORD=$("$VPY" -c 'import secrets; print(secrets.token_hex(12))')
info "LABTASKER_ROOT=$LABTASKER_ROOT"
info "labtasker init --api-base-url $API_URL --queue-name $QUEUE_NAME --password ****** --create-queue"
labtasker init --api-base-url "$API_URL" --queue-name "$QUEUE_NAME" --password "$PASSWORD" \
    --create-queue
[[ -f "$LABTASKER_ROOT/client.toml" ]] || die "labtasker init did not write $LABTASKER_ROOT/client.toml"

# ---------------------------------------------------------------------------------------
cd "$EXAMPLE_DIR"

step "Submitting the SVC half of the grid from the shell (examples/digits/submit_grid.sh)"
bash submit_grid.sh

step "Submitting the LogisticRegression half from Python (examples/digits/submit_grid.py)"
python submit_grid.py

# ---------------------------------------------------------------------------------------
# Two slots share this machine's cores: keep each job's numpy/BLAS to one thread so they do
# not slow each other down by oversubscribing the CPU.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
LOOP_CMD=(python job.py --model '%(model)' --C '%(C)' --scaler '%(scaler)')
step "Running two slots in parallel: labtasker loop --parallel 2 -- ${LOOP_CMD[*]}"
info "watch them live in the dashboard: $API_URL/ui  (queue $QUEUE_NAME, password $PASSWORD)"
labtasker loop --parallel 2 -- "${LOOP_CMD[@]}" &
WORKER_PIDS+=($!)
info "loop started (pid $!): two slots, each a worker of its own; output prefixed [slot0]/[slot1]"

SHOT_PY=${LABTASKER_SCREENSHOT_PYTHON:-$REPO_DIR/.venv/bin/python}
if [[ -n "${LABTASKER_DEMO_SCREENSHOTS:-}" ]]; then
    # the overview while the grid runs: after the first results are in
    (sleep "${LABTASKER_DEMO_SCREENSHOT_DELAY:-20}" &&
        "$SHOT_PY" "$REPO_DIR/scripts/dashboard_screenshots.py" "$API_URL" "$QUEUE_NAME" \
            "$PASSWORD" "$LABTASKER_DEMO_SCREENSHOTS" --only overview) &
fi

deadline=$((SECONDS + WORKER_TIMEOUT))
while :; do
    any_alive "${WORKER_PIDS[@]}" || break
    if ((SECONDS >= deadline)); then
        die "loop still running after ${WORKER_TIMEOUT}s (LABTASKER_DEMO_TIMEOUT)"
    fi
    sleep 0.5
done
worker_failures=0
if wait "${WORKER_PIDS[0]}"; then
    info "loop finished (exit 0): every slot ran out of tasks"
else
    rc=$?
    info "loop exited with status $rc"
    worker_failures=1
fi
WORKER_PIDS=()

# ---------------------------------------------------------------------------------------
step "Results (examples/digits/report.py)"
report_status=0
python report.py --require-success || report_status=$?

if [[ -n "${LABTASKER_DEMO_SCREENSHOTS:-}" ]]; then
    step "Dashboard screenshot of the results plot into $LABTASKER_DEMO_SCREENSHOTS"
    "$SHOT_PY" "$REPO_DIR/scripts/dashboard_screenshots.py" "$API_URL" "$QUEUE_NAME" "$PASSWORD" \
        "$LABTASKER_DEMO_SCREENSHOTS" --only plot --metric accuracy --x C --color model ||
        info "screenshots failed (see above); the demo goes on"
fi
if [[ -n "${LABTASKER_DEMO_HOLD:-}" ]]; then
    step "Holding the server for ${LABTASKER_DEMO_HOLD} s: $API_URL/ui (queue $QUEUE_NAME, password $PASSWORD)"
    sleep "$LABTASKER_DEMO_HOLD"
fi

step "Stopping the server"
stop_server
info "stopped"

if ((report_status != 0 || worker_failures != 0)); then
    printf '\nDEMO FAILED: not every task succeeded (report exit %s, loop failed %s)\n' \
        "$report_status" "$worker_failures" >&2
    exit 1
fi
printf '\nDEMO OK: every task succeeded.\n'
