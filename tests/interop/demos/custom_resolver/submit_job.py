"""Custom-resolver demo, step 1: tasks whose args are nested groups."""

import labtasker

if __name__ == "__main__":
    for i, (optimizer, lr) in enumerate([("sgd", 0.1), ("adam", 0.001), ("sgd", 0.05)]):
        labtasker.submit_task(
            task_name=f"resolver-{i}",
            args={
                "optim": {"name": optimizer, "lr": lr},
                "data": {"path": f"/data/shard-{i}", "batch_size": 16 * (i + 1)},
            },
        )
