#!/usr/bin/env bash
# Lint (ruff check), format check (ruff format --check) and type-check the package with mypy (configuration: [tool.mypy] in pyproject.toml: every module
# checked, strict on the vocabulary, wire, filter and literal modules). Extra arguments are
# passed to mypy. Uses <repo>/.venv (see scripts/test.sh).
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
echo "==> ruff check and ruff format --check (src, tests, bench)"
"$REPO_DIR/.venv/bin/python" -m ruff check -q src tests bench
"$REPO_DIR/.venv/bin/python" -m ruff format --check -q src tests bench
echo "==> mypy (pyproject.toml [tool.mypy])"
exec "$REPO_DIR/.venv/bin/python" -m mypy "$@"
