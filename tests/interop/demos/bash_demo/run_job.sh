#!/usr/bin/env bash
# Bash demo, step 2: run every matching task. `%(name)` is replaced by the task's args; the
# loop exits when no pending task with exactly these fields (lr, seed, model.depth) is left.
# Start one such loop per GPU or machine.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

labtasker loop -- python "$here/job_main.py" --lr '%(lr)' --seed '%(seed)' \
    --depth '%(model.depth)'
