# Helpers shared by scripts/demo.sh, scripts/test.sh and scripts/interop.sh.
# Source it (`source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`); it defines functions only.

# find_python: print the path of the first Python >= 3.10 among $PYTHON (when set, the only
# candidate) or python3, python3.14 ... python3.10, python. When there is none, print an
# error naming $PYTHON on stderr and return 1, so callers can write
#   PYTHON_BIN=$(find_python) || exit 1
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
    echo "ERROR: no Python >= 3.10 found (set PYTHON=/path/to/python3)" >&2
    return 1
}
