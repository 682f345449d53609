#!/usr/bin/env bash
# The demo on the bundled corpus: set-up, then the pipeline on jobs/demo.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
miniplm run jobs/demo.yaml "$@"
