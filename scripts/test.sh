#!/bin/sh
# The whole test suite: installs what it needs (system packages too), then lint, types and tests.
set -eu
cd "$(dirname "$0")/.."
. scripts/setup-env.sh
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on coremesh)"
mypy
mypy --ignore-missing-imports node relay bootstrap
echo "== pytest"
python -m pytest -q "$@"
