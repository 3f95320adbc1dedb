#!/usr/bin/env bash
# The whole test suite: install what is needed, then run pytest against real parts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
