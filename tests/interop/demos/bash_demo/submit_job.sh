#!/usr/bin/env bash
# Bash demo, step 1: submit a small grid. Every (learning rate, seed) pair becomes one task;
# everything after `--` is the task's args (`--model.depth 2` nests: {"model": {"depth": 2}}).
set -euo pipefail

for lr in 0.1 0.01; do
    for seed in 1 2; do
        labtasker task submit --task-name "lr${lr//./p}-seed${seed}" \
            -- --lr "$lr" --seed "$seed" --model.depth 2
    done
done
