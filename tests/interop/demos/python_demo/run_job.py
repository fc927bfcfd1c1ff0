"""Python demo, step 2: ``@labtasker.loop`` runs the function once per matching task.

``Required()`` parameters are filled from the task's args (and are the fields the loop asks
for: lr, seed, and -- through ``required_fields`` -- the whole ``model`` subtree). Returning
normally reports success; ``finish`` attaches a summary.
"""

import json

import labtasker
from labtasker import Required


@labtasker.loop(required_fields=["model"])
def train(lr=Required(), seed=Required()):
    task = labtasker.task_info()
    model = task.args["model"]
    accuracy = round(1.0 - lr * model["depth"] / (seed + model["width"]), 6)
    with open("python-demo-results.jsonl", "a") as out:
        out.write(
            json.dumps(
                {
                    "task_id": task.task_id,
                    "name": task.task_name,
                    "lr": lr,
                    "seed": seed,
                    "accuracy": accuracy,
                }
            )
            + "\n"
        )
    labtasker.finish("success", summary={"accuracy": accuracy})


if __name__ == "__main__":
    train()
