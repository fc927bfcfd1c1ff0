#!/usr/bin/env bash
# Submit the SVC half of the digits grid from the shell: one `labtasker task submit` per
# argument set. Every task gets exactly the args that job.py's loop command uses
# (model, C, scaler) -- no more, no less -- so `labtasker loop` can fetch it.
#
# Usage: bash submit_grid.sh            (uses the labtasker config in $LABTASKER_ROOT,
#                                        default ./.labtasker)
#        LABTASKER=/path/to/labtasker bash submit_grid.sh
set -euo pipefail

labtasker_cli=${LABTASKER:-labtasker}

count=0
for c in 0.1 1.0 10.0; do
    for scaler in standard minmax; do
        echo "submit: --model=svc --C=${c} --scaler=${scaler}"
        "$labtasker_cli" task submit \
            --metadata "{'submitted_by': 'submit_grid.sh'}" \
            -- --model=svc --C="${c}" --scaler="${scaler}"
        count=$((count + 1))
    done
done
echo "submit_grid.sh: submitted ${count} tasks"
