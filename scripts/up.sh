#!/usr/bin/env bash
# The main job: install what is needed, then run `auditcast up` on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/auditcast up "$@"
