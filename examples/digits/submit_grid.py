"""Submit the LogisticRegression half of the digits grid from Python, as one sweep.

Each task's ``args`` hold exactly the fields that job.py's loop command interpolates
(``model``, ``C``, ``scaler``) -- the "no more, no less" rule -- so the same
``labtasker loop -- python job.py ...`` worker runs both halves of the grid. ``unique=True``:
running this script again adds no duplicates.

Usage: python submit_grid.py   (uses the labtasker config in $LABTASKER_ROOT, default
./.labtasker)
"""

from __future__ import annotations

import labtasker

C_VALUES = [0.1, 1.0, 10.0]
SCALERS = ["standard", "minmax"]


def main() -> None:
    result = labtasker.submit_sweep(
        grid={"C": C_VALUES, "scaler": SCALERS},
        fixed={"model": "logreg"},
        unique=True,
        name="digits-logreg",
        metadata={"submitted_by": "submit_grid.py"},
    )
    for args, task_id in zip(result.sweep, result.task_ids, strict=True):
        print(f"submit: {args} -> task {task_id}")
    print(f"submit_grid.py: submitted {len(result.created_ids)} tasks "
          f"({len(result.existing_ids)} already in the queue)")


if __name__ == "__main__":
    main()
