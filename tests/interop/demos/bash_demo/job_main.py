"""Bash demo, the job: an ordinary argparse script that knows nothing about the queue, except
that it records its metrics with ``labtasker.finish`` when it runs under ``labtasker loop``."""

import argparse
import json
import os

import labtasker


def train(lr: float, seed: int, depth: int) -> float:
    """A stand-in for training: a deterministic 'accuracy'."""
    return round(1.0 - lr * depth / (seed + 1), 6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    args = parser.parse_args()
    accuracy = train(args.lr, args.seed, args.depth)
    with open("bash-demo-results.jsonl", "a") as out:
        out.write(
            json.dumps(
                {
                    "task_id": os.environ.get("LABTASKER_TASK_ID"),
                    "lr": args.lr,
                    "seed": args.seed,
                    "depth": args.depth,
                    "accuracy": accuracy,
                }
            )
            + "\n"
        )
    labtasker.finish("success", summary={"accuracy": accuracy})


if __name__ == "__main__":
    main()
