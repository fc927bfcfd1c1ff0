"""Train one classifier on scikit-learn's handwritten-digits data set and record its accuracy.

This is an ordinary command-line program: it knows nothing about labtasker. Run it by hand,

    python job.py --model svc --C 1.0 --scaler standard

or let ``labtasker loop`` run it once per queued argument set:

    labtasker loop -- python job.py --model '%(model)' --C '%(C)' --scaler '%(scaler)'

The data set (1797 8x8 images, 10 classes) ships inside scikit-learn, so nothing is downloaded.
The train/test split is fixed (``random_state=0``, 25 % test), so every argument set is scored
on the same held-out images.

The test accuracy is printed and, when ``$LABTASKER_LOG_DIR`` is set (as it is for every task
run by ``labtasker loop``), written to ``$LABTASKER_LOG_DIR/summary.json``; the loop merges that
file into the summary it reports for the task. ``--summary-path`` overrides the location.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVC

MODELS = ("svc", "logreg")
SCALERS = ("none", "standard", "minmax")
SPLIT_SEED = 0
TEST_SIZE = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, required=True, help="classifier to train")
    parser.add_argument("--C", type=float, required=True, help="inverse regularisation strength")
    parser.add_argument(
        "--scaler", choices=SCALERS, default="none", help="feature scaling before the model"
    )
    parser.add_argument(
        "--summary-path",
        type=Path,
        default=None,
        help="where to write the JSON summary (default: $LABTASKER_LOG_DIR/summary.json)",
    )
    args = parser.parse_args(argv)
    if args.C <= 0:
        parser.error(f"--C must be positive, got {args.C}")
    return args


def build_model(model: str, c: float, scaler: str):
    if model == "svc":
        estimator = SVC(C=c, gamma="scale")
    else:
        estimator = LogisticRegression(C=c, max_iter=5000)
    steps = []
    if scaler == "standard":
        steps.append(StandardScaler())
    elif scaler == "minmax":
        steps.append(MinMaxScaler())
    return make_pipeline(*steps, estimator)


def summary_path(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    log_dir = os.environ.get("LABTASKER_LOG_DIR")
    return Path(log_dir) / "summary.json" if log_dir else None


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )

    started = time.perf_counter()
    clf = build_model(args.model, args.C, args.scaler)
    clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    train_seconds = time.perf_counter() - started

    print(
        f"model={args.model} C={args.C:g} scaler={args.scaler}: "
        f"test accuracy {accuracy:.4f} on {len(y_test)} images "
        f"(trained on {len(y_train)} in {train_seconds:.2f}s)"
    )

    path = summary_path(args.summary_path)
    if path is not None:
        write_json_atomically(
            path,
            {
                "accuracy": accuracy,
                "n_train": int(len(y_train)),
                "n_test": int(len(y_test)),
                "train_seconds": round(train_seconds, 3),
            },
        )
        print(f"summary written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
