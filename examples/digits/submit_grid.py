"""Submit the LogisticRegression half of the digits grid from Python.

Each task's ``args`` hold exactly the fields that job.py's loop command interpolates
(``model``, ``C``, ``scaler``) -- the "no more, no less" rule -- so the same
``labtasker loop -- python job.py ...`` worker runs both halves of the grid.

Usage: python submit_grid.py   (uses the labtasker config in $LABTASKER_ROOT, default
./.labtasker)
"""

from __future__ import annotations

import itertools

import labtasker

C_VALUES = (0.1, 1.0, 10.0)
SCALERS = ("standard", "minmax")


def main() -> None:
    count = 0
    for c, scaler in itertools.product(C_VALUES, SCALERS):
        args = {"model": "logreg", "C": c, "scaler": scaler}
        resp = labtasker.submit_task(args=args, metadata={"submitted_by": "submit_grid.py"})
        print(f"submit: {args} -> task {resp.task_id}")
        count += 1
    print(f"submit_grid.py: submitted {count} tasks")


if __name__ == "__main__":
    main()
