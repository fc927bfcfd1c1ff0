#!/usr/bin/env bash
# Submit the SVC half of the digits grid from the shell, as one sweep: 3 values of C x 2
# scalers = 6 tasks. Every task gets exactly the args that job.py's loop command uses
# (model, C, scaler) -- no more, no less -- so `labtasker loop` can fetch it. With --unique,
# running this script again (or on several machines at once) adds no duplicates.
#
# Usage: bash submit_grid.sh            (uses the labtasker config in $LABTASKER_ROOT,
#                                        default ./.labtasker)
#        LABTASKER=/path/to/labtasker bash submit_grid.sh
set -euo pipefail

labtasker_cli=${LABTASKER:-labtasker}

"$labtasker_cli" task submit --unique --sweep-name digits-svc \
    --grid C=0.1,1.0,10.0 --grid scaler=standard,minmax \
    --metadata "{'submitted_by': 'submit_grid.sh'}" \
    -- --model=svc
