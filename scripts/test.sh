#!/usr/bin/env bash
# The test suite: set-up (with the local teacher server the server tests start), then pytest (extra
# arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_server.sh
. .venv/bin/activate
python -m pytest -q "$@"
