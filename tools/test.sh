#!/usr/bin/env bash
# Install what is needed, then lint and run the whole test suite.
#   tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
