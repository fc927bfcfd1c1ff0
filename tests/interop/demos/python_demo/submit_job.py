"""Python demo, step 1: submit a grid with the Python API."""

import labtasker

if __name__ == "__main__":
    for lr in (0.1, 0.01):
        for seed in (1, 2):
            resp = labtasker.submit_task(
                task_name=f"py-lr{str(lr).replace('.', 'p')}-seed{seed}",
                args={"lr": lr, "seed": seed, "model": {"depth": 2, "width": 16}},
                metadata={"demo": "python"},
            )
            print(f"submitted {resp.task_id}")
